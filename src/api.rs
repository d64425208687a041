//! The loopback control endpoint: a small authenticated HTTP/JSON API that the CLI
//! (`status`, `story`) uses to talk to the running node, and the blocking client for it.
//!
//! The node writes `control.json` (address and a random bearer token, mode 0600) into its
//! data dir; only someone who can read the data dir can steer the node. The server only
//! forwards requests to the node loop: it never touches the document itself.

use crate::core::model::{Event, KnowledgeFact, KnowledgeKind, NewStory};
use crate::core::state::StoryView;
use crate::identity::write_private;
use crate::node::{ApiRequest, StatusReport, WriteError};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

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
    token: String,
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

fn authorized(headers: &HeaderMap, st: &AppState) -> bool {
    let want = format!("Bearer {}", st.token);
    headers
        .get("authorization")
        .is_some_and(|v| same_secret(v.as_bytes(), want.as_bytes()))
}

/// Compares a presented secret with the expected one in time that depends only on their
/// lengths (the expected length is public: a fixed-size hex token), so response timing
/// tells a caller nothing about how much of a guess was right.
fn same_secret(given: &[u8], want: &[u8]) -> bool {
    if given.len() != want.len() {
        return false;
    }
    given
        .iter()
        .zip(want)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
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

async fn status(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &st) {
        return unauthorized();
    }
    match ask(&st, ApiRequest::Status).await {
        Ok(s) => Json(s).into_response(),
        Err(r) => r,
    }
}

async fn list_stories(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &st) {
        return unauthorized();
    }
    match ask(&st, ApiRequest::View).await {
        Ok(v) => {
            let list: Vec<StoryView> = v.stories_ordered().into_iter().cloned().collect();
            Json(list).into_response()
        }
        Err(r) => r,
    }
}

async fn show_story(
    State(st): State<AppState>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if !authorized(&headers, &st) {
        return unauthorized();
    }
    match ask(&st, ApiRequest::View).await {
        Ok(v) => match v.resolve(&id) {
            Ok(s) => Json(StoryDetail::of(&v, s)).into_response(),
            Err(e) => err(StatusCode::NOT_FOUND, e.to_string()),
        },
        Err(r) => r,
    }
}

async fn add_story(
    State(st): State<AppState>,
    headers: HeaderMap,
    Json(new): Json<NewStory>,
) -> Response {
    if !authorized(&headers, &st) {
        return unauthorized();
    }
    match ask(&st, |tx| ApiRequest::AddStory(new, tx)).await {
        Ok(Ok(s)) => (StatusCode::CREATED, Json(s)).into_response(),
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
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<EventsQuery>,
) -> Response {
    if !authorized(&headers, &st) {
        return unauthorized();
    }
    match ask(&st, |tx| ApiRequest::Events(q.after, tx)).await {
        Ok(list) => Json(list).into_response(),
        Err(r) => r,
    }
}

/// A knowledge entry to add.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewKnowledge {
    pub kind: KnowledgeKind,
    pub text: String,
}

async fn list_knowledge(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &st) {
        return unauthorized();
    }
    match ask(&st, ApiRequest::View).await {
        Ok(v) => Json(v.knowledge).into_response(),
        Err(r) => r,
    }
}

async fn add_knowledge(
    State(st): State<AppState>,
    headers: HeaderMap,
    Json(new): Json<NewKnowledge>,
) -> Response {
    if !authorized(&headers, &st) {
        return unauthorized();
    }
    match ask(&st, |tx| ApiRequest::AddKnowledge(new.kind, new.text, tx)).await {
        Ok(Ok(id)) => (StatusCode::CREATED, Json(id)).into_response(),
        Ok(Err(e)) => write_err(e),
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
        .route("/v1/stories/{id}", get(show_story))
        .route("/v1/events", get(events))
        .route("/v1/knowledge", get(list_knowledge).post(add_knowledge))
        .with_state(AppState {
            token: info.token.clone(),
            node,
        });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "control endpoint stopped");
        }
    });
    tracing::info!(%addr, "control endpoint listening");
    Ok((info, task))
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

/// Blocking client for the control endpoint.
pub struct ControlClient {
    info: ControlInfo,
    agent: ureq::Agent,
}

impl ControlClient {
    /// Finds the running node of `data_dir`. `Ok(None)` when none is running.
    pub fn for_data_dir(data_dir: &Path) -> Result<Option<ControlClient>, ClientError> {
        let path = data_dir.join(CONTROL_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ClientError::BadControlFile {
                    path,
                    why: e.to_string(),
                })
            }
        };
        let info: ControlInfo =
            serde_json::from_str(&text).map_err(|e| ClientError::BadControlFile {
                path: path.clone(),
                why: e.to_string(),
            })?;
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

    pub fn add_story(&self, new: &NewStory) -> Result<StoryView, ClientError> {
        let r = self
            .agent
            .post(self.url("/v1/stories"))
            .header("authorization", self.auth())
            .send_json(new);
        self.finish(r)
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn a_secret_matches_only_byte_for_byte_at_the_same_length() {
        assert!(same_secret(b"Bearer abc123", b"Bearer abc123"));
        assert!(!same_secret(b"Bearer abc124", b"Bearer abc123"));
        assert!(!same_secret(b"Bearer abc12", b"Bearer abc123"));
        assert!(!same_secret(b"Bearer abc1234", b"Bearer abc123"));
        assert!(!same_secret(b"", b"Bearer abc123"));
        assert!(!same_secret(b"bearer abc123", b"Bearer abc123"));
    }
}
