//! The web dashboard (`run --dashboard ADDR`, `[dashboard]`): server-rendered pages of
//! what the node sees — the overview (figures, what needs attention, work per node,
//! today's numbers and charts), the backlog, each story, the mesh — live-updated by
//! server-sent events, and the operator's actions (pause, approve, …) signed with the
//! local operator key and written through the node like the CLI's.
//!
//! A shell: it asks the node loop for its status, view, events and audit trail through
//! [`ApiRequest`] and never touches the document. Actions need a session opened with the
//! control token, a CSRF token per form, and — bound to anything but loopback — TLS
//! (docs/SECURITY.md, "The dashboard").

pub mod config;

mod actions;
mod auth;
mod charts;
mod data;
mod pages;
mod tls;

pub use config::DashboardConfig;

use crate::core::trust::Signer;
use crate::node::{ApiRequest, Observation};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("dashboard: cannot listen on {addr}: {why}")]
    Bind { addr: SocketAddr, why: String },
    #[error(
        "dashboard: the control endpoint's file in {dir}: {why} (start the control endpoint first)"
    )]
    Control { dir: String, why: String },
    #[error("dashboard TLS: {0}")]
    Tls(String),
    #[error("dashboard: templates: {0}")]
    Templates(String),
}

/// Whether actions are possible, and if not, why (shown on every page and logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actions {
    Available,
    Unavailable(String),
}

/// A running dashboard.
pub struct Dashboard {
    /// Where it listens (the port chosen when asked for port 0).
    pub addr: SocketAddr,
    /// `https` or `http`.
    pub scheme: &'static str,
    pub actions: Actions,
    pub task: tokio::task::JoinHandle<()>,
}

impl Dashboard {
    pub fn url(&self) -> String {
        format!("{}://{}/", self.scheme, self.addr)
    }
}

/// What the handlers share.
pub(crate) struct Shared {
    node: mpsc::Sender<ApiRequest>,
    observe: watch::Receiver<Observation>,
    sessions: auth::Sessions,
    signer: Option<Signer>,
    actions: Actions,
    /// Login is refused (the token would cross the network in clear), with why.
    login_refused: Option<String>,
    tls: bool,
    env: minijinja::Environment<'static>,
}

/// The operator key the config names (or the default place): the signer, or why there
/// is none.
fn operator_key(cfg: &DashboardConfig) -> Result<Signer, String> {
    let path = cfg
        .operator_key
        .clone()
        .unwrap_or_else(crate::identity::default_operator_key_path);
    if !path.exists() {
        return Err(format!(
            "no operator key at {} (set dashboard.operator_key or $MESH_OPERATOR_KEY; \
             `mesh-agent operator init` makes one)",
            path.display()
        ));
    }
    crate::identity::load_operator_key(&path).map_err(|e| e.to_string())
}

/// Starts the dashboard of a running node on `bind`: `data_dir` holds the control
/// endpoint's file (its token opens sessions), `node` and `observe` are the node's
/// ([`crate::node::NodeHandle::api`], [`crate::node::NodeHandle::observe`]).
pub async fn serve(
    bind: SocketAddr,
    data_dir: &Path,
    node: mpsc::Sender<ApiRequest>,
    observe: watch::Receiver<Observation>,
    cfg: &DashboardConfig,
) -> Result<Dashboard, DashboardError> {
    serve_with(bind, data_dir, node, observe, cfg, axum::Router::new()).await
}

/// [`serve`], with `extra` routes on the same listener (and TLS), outside the pages'
/// sessions and headers: the GitHub hook when `intake.github.serve_on = "dashboard"`.
pub async fn serve_with(
    bind: SocketAddr,
    data_dir: &Path,
    node: mpsc::Sender<ApiRequest>,
    observe: watch::Receiver<Observation>,
    cfg: &DashboardConfig,
    extra: axum::Router,
) -> Result<Dashboard, DashboardError> {
    let control_path = data_dir.join(crate::api::CONTROL_FILE);
    let control_err = |why: String| DashboardError::Control {
        dir: data_dir.display().to_string(),
        why,
    };
    let bytes = std::fs::read(&control_path).map_err(|e| control_err(e.to_string()))?;
    let info = crate::api::parse_control(&bytes).map_err(control_err)?;
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => Some(tls::acceptor(c, k).map_err(DashboardError::Tls)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| DashboardError::Bind {
            addr: bind,
            why: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| DashboardError::Bind {
        addr: bind,
        why: e.to_string(),
    })?;
    let insecure = !addr.ip().is_loopback() && tls.is_none();
    let login_refused = insecure.then(|| {
        format!(
            "the dashboard listens on {addr}, not a loopback address, without TLS: set \
             dashboard.tls_cert and dashboard.tls_key to act from it"
        )
    });
    let signer = operator_key(cfg);
    let actions = match (&login_refused, &signer) {
        (Some(why), _) => Actions::Unavailable(why.clone()),
        (None, Err(why)) => Actions::Unavailable(why.clone()),
        (None, Ok(_)) => Actions::Available,
    };
    if let Actions::Unavailable(why) = &actions {
        tracing::warn!(%addr, "dashboard actions unavailable: {why}");
    }
    let shared = Arc::new(Shared {
        node,
        observe,
        sessions: auth::Sessions::new(&info.token),
        signer: signer.ok(),
        actions: actions.clone(),
        login_refused,
        tls: tls.is_some(),
        env: pages::templates().map_err(|e| DashboardError::Templates(e.to_string()))?,
    });
    let app = router(shared).merge(extra);
    let task = match tls {
        Some(acceptor) => tokio::spawn(tls::serve(listener, acceptor, app)),
        None => tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "dashboard stopped");
            }
        }),
    };
    let scheme = if cfg.tls() { "https" } else { "http" };
    tracing::info!(%addr, scheme, "dashboard listening");
    Ok(Dashboard {
        addr,
        scheme,
        actions,
        task,
    })
}

/// The dashboard's routes, and `/metrics` on the same listener (and its TLS), read-only
/// like the pages and without their headers.
fn router(shared: Arc<Shared>) -> axum::Router {
    let metrics = crate::metrics::router(shared.node.clone());
    pages::routes().with_state(shared).merge(metrics)
}
