//! The loopback control endpoint: a small authenticated HTTP/JSON API that the CLI
//! (`status`, `story`, `events`, `log`, ...) uses to talk to the running node, and the
//! blocking client for it.
//!
//! The node writes `control.json` (address and a random bearer token, mode 0600) into its
//! data dir; only someone who can read the data dir can steer the node. The server only
//! forwards requests to the node loop: it never touches the document itself.

use crate::core::model::{Event, KnowledgeFact, KnowledgeKind, NewStory};
use crate::core::state::{AuditEntry, CommandFact, LogQuery, RosterView, StoryView};
use crate::identity::write_private;
use crate::node::{ApiRequest, StatusReport, WriteError};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

mod budget;
pub use budget::{budget_report, BudgetReport, DayMoney, NodeMoney, StoryMoney};

pub const CONTROL_FILE: &str = "control.json";

/// Where a running node's control endpoint is, and how to authenticate to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlInfo {
    pub addr: SocketAddr,
    pub token: String,
    pub pid: u32,
    pub peer_id: String,
}

#[derive(Clone)]
struct AppState {
    node: mpsc::Sender<ApiRequest>,
}

#[derive(Serialize, Deserialize)]
struct ErrorBody {
    error: String,
}

fn err(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(ErrorBody { error: msg.into() })).into_response()
}

/// A write that was not made: bad input is the caller's (400); a write the node could
/// not store is the node's (500), and the client reports it as a failure, not a usage
/// error.
fn write_err(e: WriteError) -> Response {
    let code = match e {
        WriteError::Refused(_) => StatusCode::BAD_REQUEST,
        WriteError::NotDurable(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    err(code, e.to_string())
}

/// SHA-256 of an `authorization` header value.
fn digest(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

/// Whether the request carries the control token: the SHA-256 digests of the presented
/// header and of the expected one are compared in constant time, so neither the time
/// taken nor an early exit on a length mismatch tells a caller how much of a guess was
/// right, or how long the token is.
fn authorized(headers: &HeaderMap, want: &[u8; 32]) -> bool {
    // A missing header is an empty one: the same path as a wrong token (the expected
    // value is never empty).
    let given = headers
        .get(header::AUTHORIZATION)
        .map_or(&b""[..], |v| v.as_bytes());
    bool::from(digest(given).ct_eq(want))
}

/// The expected token, checked before anything else runs: before routing, and before an
/// extractor reads or parses a body. A request without the right token gets 401 and its
/// body is never read.
async fn require_token(State(want): State<Arc<[u8; 32]>>, req: Request, next: Next) -> Response {
    if !authorized(req.headers(), &want) {
        return unauthorized();
    }
    next.run(req).await
}

fn unauthorized() -> Response {
    err(StatusCode::UNAUTHORIZED, "missing or wrong control token")
}

/// A story as `story show` gets it: the story's view and, while it is neither merged nor
/// blocked, why it is not moving (see [`crate::core::scheduler::waiting`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoryDetail {
    #[serde(flatten)]
    pub story: StoryView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<crate::core::scheduler::Waiting>,
}

impl StoryDetail {
    pub fn of(view: &crate::core::state::View, s: &StoryView) -> StoryDetail {
        let waiting =
            crate::core::scheduler::waiting(view, &view.claims(), &s.key).filter(|w| w.is_open());
        StoryDetail {
            story: s.clone(),
            waiting,
        }
    }
}

async fn ask<T>(
    st: &AppState,
    make: impl FnOnce(oneshot::Sender<T>) -> ApiRequest,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    st.node
        .send(make(tx))
        .await
        .map_err(|_| err(StatusCode::SERVICE_UNAVAILABLE, "node is stopping"))?;
    rx.await
        .map_err(|_| err(StatusCode::SERVICE_UNAVAILABLE, "node is stopping"))
}

async fn status(State(st): State<AppState>) -> Response {
    match ask(&st, ApiRequest::Status).await {
        Ok(s) => Json(s).into_response(),
        Err(r) => r,
    }
}

async fn list_stories(State(st): State<AppState>) -> Response {
    match ask(&st, ApiRequest::View).await {
        Ok(v) => {
            let mut list: Vec<StoryView> = v.stories_ordered().into_iter().cloned().collect();
            if let Err(r) = with_bodies(&st, &mut list).await {
                return r;
            }
            Json(list).into_response()
        }
        Err(r) => r,
    }
}

async fn show_story(State(st): State<AppState>, UrlPath(id): UrlPath<String>) -> Response {
    match ask(&st, ApiRequest::View).await {
        Ok(v) => match v.resolve(&id) {
            Ok(s) => {
                let mut d = StoryDetail::of(&v, s);
                if let Err(r) = with_bodies(&st, std::slice::from_mut(&mut d.story)).await {
                    return r;
                }
                Json(d).into_response()
            }
            // Merged and retired by an epoch: the archive has it.
            Err(e) => match v.retired_key(&id).map(str::to_string) {
                Some(key) => match ask(&st, |tx| ApiRequest::Archived(key, tx)).await {
                    Ok(Some(d)) => Json(d).into_response(),
                    Ok(None) => err(StatusCode::NOT_FOUND, e.to_string()),
                    Err(r) => r,
                },
                None => err(StatusCode::NOT_FOUND, e.to_string()),
            },
        },
        Err(r) => r,
    }
}

/// Gives the stories their bodies, read from the node's document (the view keeps none).
async fn with_bodies(st: &AppState, stories: &mut [StoryView]) -> Result<(), Response> {
    let keys = stories.iter().map(|s| s.key.to_string()).collect();
    let mut bodies = ask(st, |tx| ApiRequest::Bodies(keys, tx)).await?;
    for s in stories {
        if let Some(body) = bodies.remove(s.key.as_str()) {
            s.set_body(body);
        }
    }
    Ok(())
}

async fn add_story(State(st): State<AppState>, Json(new): Json<NewStory>) -> Response {
    match ask(&st, |tx| ApiRequest::AddStory(new, tx)).await {
        Ok(Ok(s)) => (StatusCode::CREATED, Json(s)).into_response(),
        Ok(Err(e)) => write_err(e),
        Err(r) => r,
    }
}

/// Stories in one change (`story add --from FILE`): 201 with each story's id, key and
/// title in order, or 400 naming the line at fault (nothing written).
async fn add_stories(
    State(st): State<AppState>,
    Json(batch): Json<crate::intake::StoryBatch>,
) -> Response {
    match ask(&st, |tx| ApiRequest::AddStories(batch, tx)).await {
        Ok(Ok(list)) => {
            let added: Vec<crate::intake::bulk::Added> =
                list.iter().map(crate::intake::bulk::Added::of).collect();
            (StatusCode::CREATED, Json(added)).into_response()
        }
        Ok(Err(e)) => write_err(e),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
}

/// The node's event timeline with arrival positions: after 0, the whole merged history in
/// time order; after a position, what arrived since (at most 1000).
async fn events(
    State(st): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<EventsQuery>,
) -> Response {
    match ask(&st, |tx| ApiRequest::Events(q.after, tx)).await {
        Ok(list) => Json(list).into_response(),
        Err(r) => r,
    }
}

/// The audit trail: every fact of the document with its verified author, its time and
/// whether it counts, and the most recent refused values (`?story=ID&tail=N`). An
/// unknown story is 404, naming it.
async fn log(
    State(st): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<LogQuery>,
) -> Response {
    match ask(&st, |tx| ApiRequest::Log(q, tx)).await {
        Ok(Ok(list)) => Json(list).into_response(),
        Ok(Err(e)) => err(StatusCode::NOT_FOUND, e),
        Err(r) => r,
    }
}

/// A knowledge entry to add.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewKnowledge {
    pub kind: KnowledgeKind,
    pub text: String,
}

async fn list_knowledge(State(st): State<AppState>) -> Response {
    match ask(&st, ApiRequest::View).await {
        Ok(v) => Json(v.knowledge).into_response(),
        Err(r) => r,
    }
}

async fn add_knowledge(State(st): State<AppState>, Json(new): Json<NewKnowledge>) -> Response {
    match ask(&st, |tx| ApiRequest::AddKnowledge(new.kind, new.text, tx)).await {
        Ok(Ok(id)) => (StatusCode::CREATED, Json(id)).into_response(),
        Ok(Err(e)) => write_err(e),
        Err(r) => r,
    }
}

/// A roster fact sealed by an operator's key (`mesh-agent admit` / `revoke`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealedFact {
    pub key: String,
    pub value: String,
}

impl SealedFact {
    /// An operator's command, as the node resolved it (`POST /v1/command/prepare`),
    /// sealed with the operator's key under its content's key: what `POST /v1/command`
    /// takes. The CLI and the dashboard both sign through here.
    pub fn command(
        signer: &crate::core::trust::Signer,
        fact: &CommandFact,
    ) -> Result<SealedFact, serde_json::Error> {
        let json = serde_json::to_string(fact)?;
        let key = crate::core::state::command_key(signer.author(), &json);
        Ok(SealedFact {
            value: signer.seal(&key, &json),
            key,
        })
    }

    /// A draft command resolved against `view` and sealed: what a holder of the
    /// operator key inside the node's process (the dashboard, the GitHub hook) writes.
    pub fn resolved(
        view: &crate::core::state::View,
        signer: &crate::core::trust::Signer,
        draft: CommandFact,
    ) -> Result<SealedFact, String> {
        let fact = crate::core::resolve_command(view, draft)?;
        SealedFact::command(signer, &fact).map_err(|e| e.to_string())
    }
}

async fn show_roster(State(st): State<AppState>) -> Response {
    match ask(&st, ApiRequest::View).await {
        Ok(v) => Json(v.roster).into_response(),
        Err(r) => r,
    }
}

async fn put_roster(State(st): State<AppState>, Json(f): Json<SealedFact>) -> Response {
    match ask(&st, |tx| ApiRequest::PutRoster(f.key, f.value, tx)).await {
        Ok(Ok(done)) => (StatusCode::CREATED, Json(done)).into_response(),
        Ok(Err(e)) => write_err(e),
        Err(r) => r,
    }
}

/// Resolves an operator's draft command against this node's view: the exact fact the
/// operator then signs (or why it cannot apply now, 400).
async fn prepare_command(State(st): State<AppState>, Json(draft): Json<CommandFact>) -> Response {
    match ask(&st, ApiRequest::View).await {
        Ok(v) => match crate::core::resolve_command(&v, draft) {
            Ok(fact) => Json(fact).into_response(),
            Err(e) => err(StatusCode::BAD_REQUEST, e),
        },
        Err(r) => r,
    }
}

/// One attention item with its story, as `GET /v1/attention` lists it (oldest first).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttentionRow {
    /// The story's display id and key.
    pub story: String,
    pub key: String,
    pub title: String,
    pub status: crate::core::model::StoryStatus,
    pub item: crate::core::state::Attention,
}

async fn attention(State(st): State<AppState>) -> Response {
    match ask(&st, ApiRequest::View).await {
        Ok(v) => {
            let rows: Vec<AttentionRow> = v
                .attention()
                .into_iter()
                .map(|(s, a)| AttentionRow {
                    story: s.id.to_string(),
                    key: s.key.to_string(),
                    title: s.fact.title.to_string(),
                    status: s.status,
                    item: a.clone(),
                })
                .collect();
            Json(rows).into_response()
        }
        Err(r) => r,
    }
}

async fn budget(State(st): State<AppState>) -> Response {
    match ask(&st, ApiRequest::View).await {
        Ok(v) => {
            let day = crate::core::state::day_of(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            );
            Json(budget_report(&v, day)).into_response()
        }
        Err(r) => r,
    }
}

/// Binds the control endpoint and writes `control.json` into `data_dir`. The server runs
/// until the returned task is aborted or the node's API channel closes.
pub async fn serve(
    bind: SocketAddr,
    data_dir: &Path,
    peer_id: String,
    node: mpsc::Sender<ApiRequest>,
) -> std::io::Result<(ControlInfo, tokio::task::JoinHandle<()>)> {
    serve_with(bind, data_dir, peer_id, node, Router::new()).await
}

/// [`serve`], with `hooks` — routes that carry their own authentication (the GitHub
/// hook's HMAC) — merged outside the token layer.
pub async fn serve_with(
    bind: SocketAddr,
    data_dir: &Path,
    peer_id: String,
    node: mpsc::Sender<ApiRequest>,
    hooks: Router,
) -> std::io::Result<(ControlInfo, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let mut raw = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let info = ControlInfo {
        addr,
        token: hex::encode(raw),
        pid: std::process::id(),
        peer_id,
    };
    let json = serde_json::to_vec_pretty(&info).map_err(std::io::Error::other)?;
    write_private(&data_dir.join(CONTROL_FILE), &json).map_err(std::io::Error::other)?;
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/stories", get(list_stories).post(add_story))
        .route(
            "/v1/stories/batch",
            post(add_stories).layer(axum::extract::DefaultBodyLimit::max(
                crate::intake::bulk::MAX_BATCH_BODY_BYTES,
            )),
        )
        .route("/v1/stories/{id}", get(show_story))
        .route("/v1/events", get(events))
        .route("/v1/log", get(log))
        .route("/v1/knowledge", get(list_knowledge).post(add_knowledge))
        .route("/v1/roster", get(show_roster).post(put_roster))
        // An operator's sealed command goes through the same path as a roster fact.
        .route("/v1/command", post(put_roster))
        .route("/v1/command/prepare", post(prepare_command))
        .route("/v1/attention", get(attention))
        .route("/v1/budget", get(budget))
        .with_state(AppState { node })
        // Outermost: the token is checked before routing and before any extractor.
        .layer(middleware::from_fn_with_state(
            Arc::new(digest(format!("Bearer {}", info.token).as_bytes())),
            require_token,
        ))
        .layer(middleware::map_response(close_after_413))
        // Outside the token layer: these check their own signatures.
        .merge(hooks);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "control endpoint stopped");
        }
    });
    tracing::info!(%addr, "control endpoint listening");
    Ok((info, task))
}

/// Any 413 closes its connection: the refused body was not read to its end, so the
/// connection cannot carry another request, and a client that pooled it would fail its
/// next one. A layer on every router that refuses bodies by size.
pub async fn close_after_413(mut resp: Response) -> Response {
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// Removes `control.json` (on clean shutdown).
pub fn remove_control_file(data_dir: &Path) {
    let _ = std::fs::remove_file(data_dir.join(CONTROL_FILE));
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no node is running with data dir {dir} (start one with `mesh-agent run --data-dir {dir}`)"
    )]
    NotRunning { dir: String },
    #[error("{path}: {why}")]
    BadControlFile { path: PathBuf, why: String },
    #[error("the node refused the request: {0}")]
    Refused(String),
    /// The node took the request but failed to carry it out (500: e.g. its store).
    #[error("the node failed: {0}")]
    Failed(String),
    #[error("talking to the node at {addr} failed: {why}")]
    Transport { addr: SocketAddr, why: String },
}

/// The largest `control.json` read (the node writes a few hundred bytes).
const MAX_CONTROL_BYTES: usize = 64 * 1024;

/// Reads `control.json`'s content; the error says what is wrong with it.
pub fn parse_control(bytes: &[u8]) -> Result<ControlInfo, String> {
    if bytes.len() > MAX_CONTROL_BYTES {
        return Err(format!("larger than {MAX_CONTROL_BYTES} bytes"));
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// Blocking client for the control endpoint.
pub struct ControlClient {
    info: ControlInfo,
    agent: ureq::Agent,
}

impl ControlClient {
    /// Finds the running node of `data_dir`. `Ok(None)` when none is running.
    pub fn for_data_dir(data_dir: &Path) -> Result<Option<ControlClient>, ClientError> {
        let path = data_dir.join(CONTROL_FILE);
        let bad = |why: String| ClientError::BadControlFile {
            path: path.clone(),
            why,
        };
        let mut bytes = Vec::new();
        match std::fs::File::open(&path) {
            Ok(f) => {
                use std::io::Read;
                f.take(MAX_CONTROL_BYTES as u64 + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|e| bad(e.to_string()))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(e.to_string())),
        }
        let info = parse_control(&bytes).map_err(bad)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let client = ControlClient { info, agent };
        // A control file left by a crashed node points at nothing: treat as not running.
        if std::net::TcpStream::connect_timeout(&client.info.addr, Duration::from_secs(2)).is_err()
        {
            return Ok(None);
        }
        Ok(Some(client))
    }

    pub fn info(&self) -> &ControlInfo {
        &self.info
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.info.addr, path)
    }

    fn transport(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Transport {
            addr: self.info.addr,
            why: e.to_string(),
        }
    }

    fn finish<T: serde::de::DeserializeOwned>(
        &self,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut resp = resp.map_err(|e| self.transport(e))?;
        let status = resp.status();
        let ok = status.is_success();
        let body = resp
            .body_mut()
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| self.transport(e))?;
        if !ok {
            let msg = serde_json::from_str::<ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or(body);
            if status == ureq::http::StatusCode::INTERNAL_SERVER_ERROR {
                return Err(ClientError::Failed(msg));
            }
            return Err(ClientError::Refused(msg));
        }
        serde_json::from_str(&body).map_err(|e| self.transport(e))
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.info.token)
    }

    pub fn status(&self) -> Result<StatusReport, ClientError> {
        let r = self
            .agent
            .get(self.url("/v1/status"))
            .header("authorization", self.auth())
            .call();
        self.finish(r)
    }

    pub fn stories(&self) -> Result<Vec<StoryView>, ClientError> {
        let r = self
            .agent
            .get(self.url("/v1/stories"))
            .header("authorization", self.auth())
            .call();
        self.finish(r)
    }

    pub fn story(&self, id: &str) -> Result<StoryDetail, ClientError> {
        let r = self
            .agent
            .get(self.url(&format!("/v1/stories/{id}")))
            .header("authorization", self.auth())
            .call();
        self.finish(r)
    }

    /// The node's event timeline: `after` 0, the merged history in time order; otherwise
    /// what arrived after that position, in arrival order.
    pub fn events(&self, after: u64) -> Result<Vec<(u64, Event)>, ClientError> {
        let r = self
            .agent
            .get(self.url(&format!("/v1/events?after={after}")))
            .header("authorization", self.auth())
            .call();
        self.finish(r)
    }

    /// The audit trail, filtered and cut as `q` asks (see [`LogQuery`]).
    pub fn log(&self, q: &LogQuery) -> Result<Vec<AuditEntry>, ClientError> {
        let mut r = self
            .agent
            .get(self.url("/v1/log"))
            .header("authorization", self.auth());
        if let Some(story) = &q.story {
            r = r.query("story", story);
        }
        if let Some(n) = q.tail {
            r = r.query("tail", n.to_string());
        }
        self.finish(r.call())
    }

    pub fn knowledge(&self) -> Result<BTreeMap<String, KnowledgeFact>, ClientError> {
        let r = self
            .agent
            .get(self.url("/v1/knowledge"))
            .header("authorization", self.auth())
            .call();
        self.finish(r)
    }

    /// Adds a knowledge entry; returns its id.
    pub fn add_knowledge(&self, kind: KnowledgeKind, text: &str) -> Result<String, ClientError> {
        let r = self
            .agent
            .post(self.url("/v1/knowledge"))
            .header("authorization", self.auth())
            .send_json(&NewKnowledge {
                kind,
                text: text.to_string(),
            });
        self.finish(r)
    }

    /// The roster as the node sees it.
    pub fn roster(&self) -> Result<RosterView, ClientError> {
        let r = self
            .agent
            .get(self.url("/v1/roster"))
            .header("authorization", self.auth())
            .call();
        self.finish(r)
    }

    /// The exact command fact to sign for `draft` (see `core::resolve_command`).
    pub fn prepare_command(&self, draft: &CommandFact) -> Result<CommandFact, ClientError> {
        let r = self
            .agent
            .post(self.url("/v1/command/prepare"))
            .header("authorization", self.auth())
            .send_json(draft);
        self.finish(r)
    }

    /// Writes an operator's sealed command; what it asks, in one line.
    pub fn put_command(&self, fact: &SealedFact) -> Result<String, ClientError> {
        let r = self
            .agent
            .post(self.url("/v1/command"))
            .header("authorization", self.auth())
            .send_json(fact);
        self.finish(r)
    }

    /// What needs a human, oldest first.
    pub fn attention(&self) -> Result<Vec<AttentionRow>, ClientError> {
        let r = self
            .agent
            .get(self.url("/v1/attention"))
            .header("authorization", self.auth())
            .call();
        self.finish(r)
    }

    /// The books today: budget, allowances, usage by node and story.
    pub fn budget(&self) -> Result<BudgetReport, ClientError> {
        let r = self
            .agent
            .get(self.url("/v1/budget"))
            .header("authorization", self.auth())
            .call();
        self.finish(r)
    }

    /// Writes an operator's sealed roster fact; what the node did, in one line.
    pub fn put_roster(&self, fact: &SealedFact) -> Result<String, ClientError> {
        let r = self
            .agent
            .post(self.url("/v1/roster"))
            .header("authorization", self.auth())
            .send_json(fact);
        self.finish(r)
    }

    pub fn add_story(&self, new: &NewStory) -> Result<StoryView, ClientError> {
        let r = self
            .agent
            .post(self.url("/v1/stories"))
            .header("authorization", self.auth())
            .send_json(new);
        self.finish(r)
    }

    /// Adds stories in one change (`story add --from FILE`).
    pub fn add_stories(
        &self,
        batch: &crate::intake::StoryBatch,
    ) -> Result<Vec<crate::intake::bulk::Added>, ClientError> {
        let r = self
            .agent
            .post(self.url("/v1/stories/batch"))
            .header("authorization", self.auth())
            .send_json(batch);
        self.finish(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_the_exact_header_is_authorized() {
        let want = digest(b"Bearer abc123");
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert!(authorized(&with("Bearer abc123"), &want));
        for wrong in [
            "Bearer abc124",
            "Bearer abc12",
            "Bearer abc1234",
            "bearer abc123",
            "",
        ] {
            assert!(!authorized(&with(wrong), &want), "{wrong:?}");
        }
        assert!(!authorized(&HeaderMap::new(), &want), "no header");
    }

    /// Sends `head` (and no body) to the endpoint and returns the status line of the
    /// answer, which must come without the body ever being sent.
    async fn status_line_without_body(addr: SocketAddr, head: String) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        // A bound so that a regression fails instead of hanging: the server, waiting
        // for a body that never comes, would not answer at all.
        let read = async {
            while !buf.windows(2).any(|w| w == b"\r\n") {
                let n = conn.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .expect("the server answered before the body arrived");
        let text = String::from_utf8_lossy(&buf).to_string();
        text.lines().next().unwrap_or_default().to_string()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn control_files_of_any_content_parse_or_fail_cleanly(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            byte in proptest::prelude::any::<u8>(),
        ) {
            let _ = parse_control(&bytes);
            let valid = serde_json::to_vec(&ControlInfo {
                addr: "127.0.0.1:4000".parse().unwrap(),
                token: "ab".repeat(24),
                pid: 1,
                peer_id: "12D3KooW".into(),
            })
            .unwrap();
            let mut mutated = valid.clone();
            mutated[at.index(valid.len())] = byte;
            let _ = parse_control(&mutated);
            mutated.truncate(at.index(valid.len()));
            proptest::prop_assert!(parse_control(&mutated).is_err());
        }
    }

    #[test]
    fn an_oversized_control_file_is_refused() {
        let big = vec![b' '; MAX_CONTROL_BYTES + 1];
        assert!(parse_control(&big).unwrap_err().contains("larger than"));
    }

    #[tokio::test]
    async fn a_wrong_token_is_refused_before_the_body_is_read_or_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (info, task) = serve(bind, dir.path(), "peer".into(), tx).await.unwrap();
        let post = |auth: &str, len: usize| {
            format!(
                "POST /v1/stories HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: {len}\r\n\r\n"
            )
        };
        // A 100 MB body announced and never sent: 401 at once, without waiting for it.
        for auth in [
            String::new(),
            "authorization: Bearer wrong\r\n".to_string(),
            format!("authorization: Bearer {}x\r\n", info.token),
        ] {
            let line = status_line_without_body(info.addr, post(&auth, 100_000_000)).await;
            assert!(line.contains(" 401 "), "{auth:?}: {line}");
        }
        // Garbage JSON with a wrong token: 401, not a parse error.
        let mut conn = tokio::net::TcpStream::connect(info.addr).await.unwrap();
        let body = "{not json";
        let req = format!(
            "{}{body}",
            post("authorization: Bearer nope\r\n", body.len())
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 64];
        let n = conn.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
        // The same garbage with the right token reaches the body parser (and is refused
        // there): the token check comes first, and only it.
        let mut conn = tokio::net::TcpStream::connect(info.addr).await.unwrap();
        let auth = format!("authorization: Bearer {}\r\n", info.token);
        let req = format!("{}{body}", post(&auth, body.len()));
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 64];
        let n = conn.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        // Nothing reached the node.
        assert!(rx.try_recv().is_err());
        task.abort();
    }
}
