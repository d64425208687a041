//! Actions from the dashboard's forms: an operator command drafted as the CLI drafts
//! it, resolved against the node's view, sealed with the operator key and written through
//! the node. Only in a session, with its CSRF token, where actions are available.

use super::pages::{message, now_ms, why};
use super::{auth, Actions, Shared};
use crate::api::SealedFact;
use crate::core::state::{CommandFact, Op, Target};
use crate::node::ApiRequest;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use serde::Deserialize;
use std::sync::Arc;

/// An action form: a verb, what it acts on, and its words.
#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
    verb: String,
    /// `story` (default), `node` or `all`.
    #[serde(default)]
    scope: String,
    #[serde(default)]
    story: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    item: String,
    #[serde(default)]
    text: String,
    /// The page to go back to (a local path).
    #[serde(default)]
    back: String,
}

/// The command a form asks for, as the CLI would draft it.
fn draft(f: &ActionForm) -> Result<(Target, Op), String> {
    let story = || {
        let s = f.story.trim();
        if s.is_empty() {
            Err(format!("{} needs a story", f.verb))
        } else {
            Ok(Target::Story {
                story: s.to_string(),
            })
        }
    };
    let target = match f.scope.as_str() {
        "all" if matches!(f.verb.as_str(), "pause" | "resume") => Target::All,
        "node" if matches!(f.verb.as_str(), "pause" | "resume") => Target::Node {
            peer: f.node.trim().to_string(),
        },
        "" | "story" => story()?,
        other => return Err(format!("{} cannot act on {other:?}", f.verb)),
    };
    let text = f.text.trim().to_string();
    let op = match f.verb.as_str() {
        "pause" => Op::Pause { reason: text },
        "resume" => Op::Resume,
        "cancel" => Op::Cancel { reason: text },
        "approve" => Op::Approve {
            items: [f.item.trim()]
                .into_iter()
                .filter(|i| !i.is_empty())
                .map(String::from)
                .collect(),
        },
        "dismiss" => Op::Dismiss {
            item: f.item.trim().to_string(),
        },
        "unblock" => Op::unblock(false),
        "unblock-reset" => Op::unblock(true),
        "request-changes" if !text.is_empty() => Op::RequestChanges {
            result: String::new(),
            text,
        },
        "request-changes" => {
            return Err("request changes needs a note saying what to change".into())
        }
        v => return Err(format!("unknown action {v:?}")),
    };
    Ok((target, op))
}

/// A local path to go back to after an action (anything else: the overview).
fn back_to(b: &str) -> &str {
    let local = b.starts_with('/')
        && !b.starts_with("//")
        && !b.contains('\\')
        && b.chars().all(|c| c.is_ascii_graphic());
    if local {
        b
    } else {
        "/"
    }
}

/// An action from a form: only in a session, with its CSRF token, where actions are
/// available; the session and the transport are checked before the body is read. The
/// draft is resolved against the node's view, signed with the operator key and written
/// through the node — the CLI's path (`POST /v1/command/prepare`, then `/v1/command`).
pub(super) async fn action(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let Some((sid, session)) = sh.sessions.of(req.headers()) else {
        return message(
            &sh,
            StatusCode::FORBIDDEN,
            "Log in first",
            "Actions need a session: log in with the node's control token.",
        );
    };
    let (Actions::Available, Some(signer)) = (&sh.actions, &sh.signer) else {
        let w = why(&sh).unwrap_or_default();
        return message(&sh, StatusCode::FORBIDDEN, "Actions unavailable", &w);
    };
    let Ok(Form(f)) = Form::<ActionForm>::from_request(req, &()).await else {
        return message(
            &sh,
            StatusCode::BAD_REQUEST,
            "Bad form",
            "The action form was not understood.",
        );
    };
    if !auth::same_secret(&f.csrf, &session.csrf) {
        tracing::warn!("dashboard: an action without its session's CSRF token was refused");
        return message(
            &sh,
            StatusCode::FORBIDDEN,
            "Refused",
            "The form's CSRF token does not match this session: reload the page and try again.",
        );
    }
    let done = match draft(&f) {
        Ok((target, op)) => {
            let verb = op.verb();
            let r = command(
                &sh,
                signer,
                CommandFact {
                    target,
                    op,
                    at_ms: now_ms(),
                },
            )
            .await;
            match r {
                Ok(d) => {
                    tracing::info!(verb, "dashboard: operator command written: {d}");
                    d
                }
                Err(e) => format!("{verb} was not done: {e}"),
            }
        }
        Err(e) => e,
    };
    sh.sessions.set_flash(&sid, done);
    super::pages::see_other(back_to(&f.back), None)
}

/// Resolve, sign, write: what `mesh-agent <verb>` does through the control endpoint.
async fn command(
    sh: &Shared,
    signer: &crate::core::trust::Signer,
    draft: CommandFact,
) -> Result<String, String> {
    let view = super::pages::ask(sh, ApiRequest::View).await?;
    let sealed = SealedFact::resolved(&view, signer, draft)?;
    super::pages::ask(sh, |tx| ApiRequest::PutRoster(sealed.key, sealed.value, tx))
        .await?
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(verb: &str, scope: &str, story: &str) -> ActionForm {
        ActionForm {
            csrf: String::new(),
            verb: verb.into(),
            scope: scope.into(),
            story: story.into(),
            node: "peer".into(),
            item: String::new(),
            text: String::new(),
            back: String::new(),
        }
    }

    #[test]
    fn forms_draft_the_cli_commands() {
        assert!(matches!(
            draft(&form("pause", "all", "")),
            Ok((Target::All, Op::Pause { .. }))
        ));
        assert!(matches!(
            draft(&form("resume", "node", "")),
            Ok((Target::Node { .. }, Op::Resume))
        ));
        assert!(matches!(
            draft(&form("approve", "", "S-0001")),
            Ok((Target::Story { .. }, Op::Approve { .. }))
        ));
        assert!(
            draft(&form("approve", "all", "")).is_err(),
            "only pause and resume act on the mesh"
        );
        assert!(
            draft(&form("cancel", "", " ")).is_err(),
            "a story is needed"
        );
        assert!(
            draft(&form("request-changes", "", "S-0001")).is_err(),
            "a note is needed"
        );
        assert!(draft(&form("rm -rf", "", "S-0001")).is_err());
    }

    #[test]
    fn only_local_paths_are_gone_back_to() {
        assert_eq!(back_to("/story/S-0001"), "/story/S-0001");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "",
            "/a b",
            "/\u{e9}",
            "/a\r\nlocation: x",
        ] {
            assert_eq!(back_to(bad), "/", "{bad}");
        }
    }
}
