//! `POST /v1/hooks/github`: GitHub issue webhooks in, on the control address (or the
//! dashboard's, `serve_on = "dashboard"`) but outside their bearer-token and session
//! layers (GitHub cannot send a token; the HMAC stands in for it).
//!
//! Every request is checked in this order, and nothing is written unless all pass:
//! no secret configured → 404; a declared body over `max_body_bytes` → 413 before
//! anything is read, and a body that turns out longer → 413 once the cap is reached;
//! `X-Hub-Signature-256` missing, malformed or not the HMAC-SHA256 of the raw body under
//! the secret → 401 (compared in constant time by `hmac`'s `verify_slice`). Then:
//!
//! * `issues` `opened` with the configured label, or `labeled` with it: a story (the
//!   issue's title, its body and a link to it), its source `github:<owner>/<repo>#<n>`
//!   recorded in the fact. A story with that source already in the document makes the
//!   delivery a no-op (200), so a redelivery, or a second node receiving the same
//!   issue once the first one's story has reached it, writes nothing.
//! * `issues` `closed`: cancelling a story is an operator command. With
//!   `operator_key` configured the hook signs `cancel` with it (200 `cancelled`; a
//!   redelivery finds the story cancelled and writes nothing); without, it answers 202
//!   `not-cancelled` naming the story and the command to run (`mesh-agent cancel
//!   S-0042`), and logs it. A story that already landed is left alone (202 `merged`).
//! * `ping` → 200; any other event or action → 202, ignored.

use crate::core::model::{NewStory, MAX_BODY_BYTES, MAX_LABELS, MAX_LABEL_CHARS, MAX_TITLE_CHARS};
use crate::core::state::{CommandFact, Op, Target};
use crate::core::Sourced;
use crate::node::{ApiRequest, WriteError};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

type HmacSha256 = hmac::Hmac<hmac_sha2::Sha256>;

/// The path GitHub posts to.
pub const HOOK_PATH: &str = "/v1/hooks/github";

/// The hook's settings and the node it writes through.
#[derive(Clone)]
pub struct GithubHook {
    /// None: the hook is off (404).
    secret: Option<Arc<[u8]>>,
    label: String,
    max_body: usize,
    node: mpsc::Sender<ApiRequest>,
    /// Signs the cancellation of a closed issue's story (none: a human cancels it).
    operator: Option<crate::core::trust::Signer>,
}

impl GithubHook {
    pub fn new(
        secret: Option<Vec<u8>>,
        cfg: &super::config::GithubConfig,
        node: mpsc::Sender<ApiRequest>,
    ) -> GithubHook {
        GithubHook {
            secret: secret.map(Arc::from),
            label: cfg.label.trim().to_string(),
            max_body: cfg.max_body_bytes,
            node,
            operator: None,
        }
    }

    /// Closed issues cancel their stories, signed by this operator.
    pub fn with_operator(mut self, operator: Option<crate::core::trust::Signer>) -> GithubHook {
        self.operator = operator;
        self
    }
}

/// The hook's route, to be merged outside the control endpoint's token layer.
pub fn router(hook: GithubHook) -> Router {
    Router::new()
        .route(HOOK_PATH, post(handle))
        .with_state(hook)
        .layer(axum::middleware::map_response(crate::api::close_after_413))
}

/// What the hook did, as it answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HookAnswer {
    /// added, exists, ignored, cancelled, not-cancelled, merged, pong.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub story: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

fn answer(code: StatusCode, result: &str, story: Option<String>, detail: String) -> Response {
    let body = HookAnswer {
        result: result.into(),
        story,
        detail,
    };
    (code, Json(body)).into_response()
}

fn refuse(code: StatusCode, why: &str) -> Response {
    (code, Json(serde_json::json!({ "error": why }))).into_response()
}

/// 413 (the layer from [`router`] closes its connection).
fn too_large() -> Response {
    refuse(StatusCode::PAYLOAD_TOO_LARGE, "body over max_body_bytes")
}

/// Whether `sig` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`.
pub fn signature_ok(secret: &[u8], sig: Option<&[u8]>, body: &[u8]) -> bool {
    let Some(hex_sig) = sig.and_then(|s| s.strip_prefix(b"sha256=")) else {
        return false;
    };
    let Ok(tag) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

/// `sha256=<hex>` of `body` under `secret`: what GitHub sends (for tests and tools).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        // HMAC takes a key of any length.
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn declared_len(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn handle(State(h): State<GithubHook>, req: Request) -> Response {
    let Some(secret) = h.secret.clone() else {
        return refuse(
            StatusCode::NOT_FOUND,
            "the GitHub hook is off: set [intake.github] secret or secret_file",
        );
    };
    if declared_len(req.headers()).is_some_and(|n| n > h.max_body as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, h.max_body).await else {
        return too_large();
    };
    let sig = parts
        .headers
        .get("x-hub-signature-256")
        .map(|v| v.as_bytes());
    if !signature_ok(&secret, sig, &bytes) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-Hub-Signature-256",
        );
    }
    let event = parts
        .headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let delivery = parts
        .headers
        .get("x-github-delivery")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    match event {
        "ping" => answer(StatusCode::OK, "pong", None, String::new()),
        "issues" => issues(&h, &bytes, &delivery).await,
        other => answer(
            StatusCode::ACCEPTED,
            "ignored",
            None,
            format!("event {other:?} is not taken"),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct IssuesEvent {
    action: String,
    issue: Issue,
    repository: Repo,
    #[serde(default)]
    label: Option<Label>,
}

#[derive(Debug, Deserialize)]
struct Issue {
    number: u64,
    title: String,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    html_url: String,
    #[serde(default)]
    labels: Vec<Label>,
}

#[derive(Debug, Deserialize)]
struct Label {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Repo {
    full_name: String,
}

/// What an `issues` event asks of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write this story once, under this source.
    Add {
        source: String,
        story: Box<NewStory>,
    },
    /// The issue of this source was closed.
    Closed { source: String },
    /// Nothing to do, and why.
    Ignore(String),
}

/// The source recorded for issue `number` of `repo` (`owner/name`).
pub fn issue_source(repo: &str, number: u64) -> String {
    format!("github:{repo}#{number}")
}

/// Decides what an `issues` event's JSON asks for, with `label` the configured one.
pub fn decide(body: &[u8], label: &str) -> Decision {
    let ev: IssuesEvent = match serde_json::from_slice(body) {
        Ok(ev) => ev,
        Err(e) => return Decision::Ignore(format!("not an issues event: {e}")),
    };
    let source = issue_source(&ev.repository.full_name, ev.issue.number);
    let has_label = |l: &Label| l.name.trim().eq_ignore_ascii_case(label);
    match ev.action.as_str() {
        "opened" | "reopened" if ev.issue.labels.iter().any(has_label) => Decision::Add {
            story: Box::new(story_of(&ev.issue)),
            source,
        },
        "labeled" if ev.label.as_ref().is_some_and(has_label) => Decision::Add {
            story: Box::new(story_of(&ev.issue)),
            source,
        },
        "closed" => Decision::Closed { source },
        "opened" | "reopened" | "labeled" => {
            Decision::Ignore(format!("issue without the label {label:?}"))
        }
        other => Decision::Ignore(format!("action {other:?} is not taken")),
    }
}

/// The story of an issue: its title (cut to the limit, one line), its body (cut, on a
/// character boundary, to leave room for the link) and the link, its labels that fit.
fn story_of(issue: &Issue) -> NewStory {
    let title: String = issue
        .title
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_TITLE_CHARS)
        .collect();
    let title = if title.trim().is_empty() {
        format!("GitHub issue #{}", issue.number)
    } else {
        title
    };
    let link = format!("\n\nGitHub issue: {}", issue.html_url);
    let mut body = issue.body.clone().unwrap_or_default();
    let room = MAX_BODY_BYTES.saturating_sub(link.len());
    if body.len() > room {
        let mut cut = room;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
    }
    body.push_str(&link);
    let labels = issue
        .labels
        .iter()
        .map(|l| l.name.trim().to_string())
        .filter(|l| !l.is_empty() && l.chars().count() <= MAX_LABEL_CHARS)
        .take(MAX_LABELS)
        .collect();
    NewStory {
        title,
        body,
        labels,
        ..NewStory::default()
    }
}

async fn ask<T>(
    node: &mpsc::Sender<ApiRequest>,
    make: impl FnOnce(oneshot::Sender<T>) -> ApiRequest,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    node.send(make(tx)).await.ok()?;
    rx.await.ok()
}

async fn issues(h: &GithubHook, body: &Bytes, delivery: &str) -> Response {
    let stopping = || refuse(StatusCode::SERVICE_UNAVAILABLE, "node is stopping");
    match decide(body, &h.label) {
        Decision::Ignore(why) => answer(StatusCode::ACCEPTED, "ignored", None, why),
        Decision::Add { source, story } => {
            let Some(res) = ask(&h.node, |tx| {
                ApiRequest::AddSourced(*story, source.clone(), tx)
            })
            .await
            else {
                return stopping();
            };
            match res {
                Ok(Sourced::Added(s)) => {
                    tracing::info!(%source, story = %s.id, %delivery, "story from a GitHub issue");
                    answer(StatusCode::CREATED, "added", Some(s.id.to_string()), source)
                }
                Ok(Sourced::Exists(s)) => {
                    answer(StatusCode::OK, "exists", Some(s.id.to_string()), source)
                }
                Err(e @ WriteError::Refused(_)) => {
                    refuse(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string())
                }
                Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        Decision::Closed { source } => closed(h, source, delivery).await,
    }
}

/// A closed issue: its story is cancelled when the hook holds an operator key (once: a
/// redelivery finds it cancelled), else the answer names the command to run.
async fn closed(h: &GithubHook, source: String, delivery: &str) -> Response {
    let stopping = || refuse(StatusCode::SERVICE_UNAVAILABLE, "node is stopping");
    let Some(view) = ask(&h.node, ApiRequest::View).await else {
        return stopping();
    };
    let Some(s) = view.stories.values().find(|s| s.fact.source == source) else {
        return answer(
            StatusCode::ACCEPTED,
            "ignored",
            None,
            format!("no story from {source}"),
        );
    };
    let id = s.id.clone();
    match s.status {
        crate::core::model::StoryStatus::Cancelled => {
            return answer(StatusCode::OK, "cancelled", Some(id.to_string()), source)
        }
        crate::core::model::StoryStatus::Merged => {
            return answer(
                StatusCode::ACCEPTED,
                "merged",
                Some(id.to_string()),
                format!("{source} was closed after its story landed: nothing to cancel"),
            )
        }
        _ => {}
    }
    let Some(signer) = &h.operator else {
        tracing::warn!(%source, story = %id, %delivery, "issue closed: story not cancelled (no intake.github.operator_key)");
        return answer(
            StatusCode::ACCEPTED,
            "not-cancelled",
            Some(id.to_string()),
            format!(
                "{source} was closed; cancelling {id} is an operator command this node cannot \
                 sign (set intake.github.operator_key): run `mesh-agent cancel {id}`"
            ),
        );
    };
    let draft = CommandFact {
        target: Target::Story {
            story: s.key.to_string(),
        },
        op: Op::Cancel {
            reason: format!("{source} was closed"),
        },
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    let sealed = match crate::api::SealedFact::resolved(&view, signer, draft) {
        Ok(s) => s,
        Err(why) => return refuse(StatusCode::UNPROCESSABLE_ENTITY, &why),
    };
    match ask(&h.node, |tx| {
        ApiRequest::PutRoster(sealed.key, sealed.value, tx)
    })
    .await
    {
        None => stopping(),
        Some(Ok(_)) => {
            tracing::info!(%source, story = %id, %delivery, "issue closed: story cancelled");
            answer(StatusCode::OK, "cancelled", Some(id.to_string()), source)
        }
        Some(Err(e @ WriteError::Refused(_))) => {
            refuse(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string())
        }
        Some(Err(e)) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &str, labels: &[&str], label: Option<&str>) -> Vec<u8> {
        let labels: Vec<_> = labels
            .iter()
            .map(|l| serde_json::json!({"name": l}))
            .collect();
        let mut v = serde_json::json!({
            "action": action,
            "issue": {"number": 7, "title": "Fix\tthe login", "body": null,
                      "html_url": "https://github.com/o/r/issues/7", "labels": labels},
            "repository": {"full_name": "o/r"},
        });
        if let Some(l) = label {
            v["label"] = serde_json::json!({"name": l});
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }

    #[test]
    fn the_label_filter_and_the_actions() {
        match decide(&event("opened", &["bug", "Mesh"], None), "mesh") {
            Decision::Add { source, story } => {
                assert_eq!(source, "github:o/r#7");
                assert_eq!(story.title, "Fix the login");
                assert!(story
                    .body
                    .ends_with("GitHub issue: https://github.com/o/r/issues/7"));
                assert!(story.validate().is_ok());
            }
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            decide(&event("opened", &["bug"], None), "mesh"),
            Decision::Ignore(_)
        ));
        assert!(matches!(
            decide(&event("labeled", &["bug", "mesh"], Some("bug")), "mesh"),
            Decision::Ignore(_)
        ));
        assert!(matches!(
            decide(&event("labeled", &["mesh"], Some("mesh")), "mesh"),
            Decision::Add { .. }
        ));
        assert_eq!(
            decide(&event("closed", &[], None), "mesh"),
            Decision::Closed {
                source: "github:o/r#7".into()
            }
        );
        assert!(matches!(decide(b"{}", "mesh"), Decision::Ignore(_)));
    }

    #[test]
    fn signatures() {
        let body = b"{\"a\":1}";
        let sig = sign(b"s3cret", body);
        assert!(signature_ok(b"s3cret", Some(sig.as_bytes()), body));
        assert!(!signature_ok(b"other", Some(sig.as_bytes()), body));
        assert!(!signature_ok(b"s3cret", Some(sig.as_bytes()), b"{\"a\":2}"));
        assert!(!signature_ok(b"s3cret", None, body));
        assert!(!signature_ok(b"s3cret", Some(b"sha1=00"), body));
        assert!(!signature_ok(b"s3cret", Some(b"sha256=zz"), body));
    }
}
