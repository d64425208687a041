//! Shared helpers for the in-process multi-node tests: fast membership timings, node
//! start-up on loopback, and waits that await node observations (never sleeps).

#![allow(dead_code)]

use futures::future::select_all;
use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;
use mesh_agent::config::Config;
use mesh_agent::node::{self, NodeHandle, NodeOptions, Observation};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

pub const HEARTBEAT_MS: u64 = 200;
pub const DEAD_AFTER_MS: u64 = 1500;

/// A config with short timings, listening on an ephemeral loopback port.
pub fn test_config(bootstrap: Option<String>) -> Config {
    Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap: bootstrap.into_iter().collect(),
        heartbeat_ms: HEARTBEAT_MS,
        suspect_after_missed: 3,
        dead_after_ms: DEAD_AFTER_MS,
        anti_entropy_ms: 1000,
        // Replication tests do not claim work unless they ask for it.
        work: false,
        ..Config::default()
    }
}

/// Fast lease timings that satisfy ttl >= 2*drift + 4*message_timeout.
pub fn fast_leases(c: &mut Config) {
    c.work = true;
    c.lease_ttl_ms = 1_000;
    c.max_clock_drift_ms = 100;
    c.message_timeout_ms = 200;
    c.lease_grace_ms = 300;
    c.settle_timeout_ms = 500;
    c.sim_phase_ms = 100;
}

/// Starts a node with a config tweak and an optional executor.
pub async fn start_with(
    dir: &Path,
    key: &Keypair,
    bootstrap: Option<&NodeHandle>,
    tweak: impl FnOnce(&mut Config),
    executor: Option<std::sync::Arc<dyn mesh_agent::exec::Executor>>,
) -> NodeHandle {
    init_tracing();
    let mut cfg = test_config(bootstrap.and_then(|b| b.addr()).map(|a| a.to_string()));
    tweak(&mut cfg);
    cfg.validate().expect("valid test config");
    node::start(NodeOptions {
        config: cfg,
        data_dir: Some(dir.to_path_buf()),
        keypair: key.clone(),
        psk: Some(psk(7)),
        passive: false,
        executor,
    })
    .await
    .expect("node starts")
}

/// Copies a directory tree (a fixture, or a stopped node's data directory as a backup).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).expect("copy");
        }
    }
}

/// Waits until `cond` holds for the node's view (re-checked on every document change).
pub async fn wait_view(
    n: &NodeHandle,
    what: &str,
    secs: u64,
    mut cond: impl FnMut(&mesh_agent::core::state::View) -> bool,
) -> mesh_agent::core::state::View {
    let mut rx = n.observe();
    within(what, secs, async {
        loop {
            let v = n.view().await.expect("node running");
            if cond(&v) {
                return v;
            }
            rx.changed().await.expect("node running");
        }
    })
    .await
}

pub fn psk(byte: u8) -> PreSharedKey {
    PreSharedKey::new([byte; 32])
}

/// Logs to the test output when RUST_LOG is set (e.g. RUST_LOG=mesh_agent=debug).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub async fn start(
    dir: &Path,
    key: &Keypair,
    psk: Option<PreSharedKey>,
    bootstrap: Option<&NodeHandle>,
) -> NodeHandle {
    init_tracing();
    let cfg = test_config(bootstrap.and_then(|b| b.addr()).map(|a| a.to_string()));
    node::start(NodeOptions {
        config: cfg,
        data_dir: Some(dir.to_path_buf()),
        keypair: key.clone(),
        psk,
        passive: false,
        executor: None,
    })
    .await
    .expect("node starts")
}

/// Safety net for awaits that should finish: a generous bound, never a synchronisation.
pub async fn within<T>(what: &str, secs: u64, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s waiting for {what}"),
    }
}

/// Waits until every node in `nodes` sees exactly `peers` (and they are alive).
pub async fn wait_all_alive(nodes: &[&NodeHandle]) {
    for n in nodes {
        let want: Vec<String> = nodes
            .iter()
            .filter(|m| m.peer_id != n.peer_id)
            .map(|m| m.peer_id.to_string())
            .collect();
        within("all peers alive", 30, async {
            n.wait_for(|o| want.iter().all(|p| o.alive.contains(p)))
                .await
                .expect("node running")
        })
        .await;
    }
}

/// Waits until all nodes report the same document heads.
pub async fn wait_converged(nodes: &[&NodeHandle]) {
    let mut rxs: Vec<_> = nodes.iter().map(|n| n.observe()).collect();
    within("document convergence", 30, async {
        loop {
            let digests: Vec<[u8; 32]> = rxs
                .iter_mut()
                .map(|r| r.borrow_and_update().heads_digest)
                .collect();
            if digests.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            let changed = select_all(rxs.iter_mut().map(|r| Box::pin(r.changed()))).await;
            changed.0.expect("node running");
        }
    })
    .await;
}

pub fn observation(n: &NodeHandle) -> Observation {
    n.observe().borrow().clone()
}

/// An executor whose jobs never finish on their own: each start is reported (with the
/// node's peer id), and a dropped (cancelled) job too.
pub struct Holding {
    pub node: String,
    pub started: tokio::sync::mpsc::UnboundedSender<(String, mesh_agent::core::Job)>,
    pub cancelled: tokio::sync::mpsc::UnboundedSender<String>,
}

/// Reports the job's cancellation when the executor future is dropped.
struct OnDrop(Option<(tokio::sync::mpsc::UnboundedSender<String>, String)>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some((tx, claim)) = self.0.take() {
            let _ = tx.send(claim);
        }
    }
}

impl mesh_agent::exec::Executor for Holding {
    fn run(
        &self,
        job: mesh_agent::core::Job,
        _ws: mesh_agent::exec::Workspace,
    ) -> futures::future::BoxFuture<
        'static,
        Result<mesh_agent::core::model::Handoff, mesh_agent::exec::ExecError>,
    > {
        let guard = OnDrop(Some((self.cancelled.clone(), job.claim.clone())));
        let _ = self.started.send((self.node.clone(), job));
        Box::pin(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Err(mesh_agent::exec::ExecError::failed("unreachable"))
        })
    }
}

/// The operator `op` admits every peer of `ids` to the roster, through `node`.
pub async fn admit_all(node: &NodeHandle, op: &mesh_agent::core::trust::Signer, ids: &[String]) {
    use mesh_agent::core::state::{admit_key, RosterFact};
    for id in ids {
        let k = admit_key(id);
        let json = serde_json::to_string(&RosterFact {
            peer: id.clone(),
            note: "admitted by the test's operator".into(),
            at_ms: 1,
        })
        .expect("json");
        node.put_roster(&k, &op.seal(&k, &json))
            .await
            .expect("admitted");
    }
}

/// An operator's command as the CLI gives it: resolved against `node`'s view, signed
/// with `key` on the wall clock, written through `node`; what the node said.
pub async fn operator_command(
    node: &NodeHandle,
    key: &mesh_agent::core::trust::Signer,
    target: mesh_agent::core::state::Target,
    op: mesh_agent::core::state::Op,
) -> Result<String, String> {
    use mesh_agent::core::state::{command_key, CommandFact};
    let view = node.view().await.expect("running");
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let fact = mesh_agent::core::resolve_command(&view, CommandFact { target, op, at_ms })?;
    let json = serde_json::to_string(&fact).expect("json");
    let k = command_key(key.author(), &json);
    node.put_roster(&k, &key.seal(&k, &json)).await
}

/// Cuts `left` from `right` (indices into `nodes`), both ways, and waits until each side
/// sees every node of the other dead.
pub async fn cut(nodes: &[NodeHandle], left: &[usize], right: &[usize]) {
    for (side, other) in [(left, right), (right, left)] {
        let peers: Vec<_> = other.iter().map(|&j| nodes[j].peer_id).collect();
        for &i in side {
            nodes[i].block(&peers).await;
        }
    }
    for (side, other) in [(left, right), (right, left)] {
        for &i in side {
            let gone: Vec<String> = other
                .iter()
                .map(|&j| nodes[j].peer_id.to_string())
                .collect();
            within(
                "the other side marked dead",
                30,
                nodes[i].wait_for(|o| gone.iter().all(|p| o.dead.contains(p))),
            )
            .await;
        }
    }
}

/// Undoes [`cut`].
pub async fn heal(nodes: &[NodeHandle], left: &[usize], right: &[usize]) {
    for (side, other) in [(left, right), (right, left)] {
        let peers: Vec<_> = other.iter().map(|&j| nodes[j].peer_id).collect();
        for &i in side {
            nodes[i].unblock(&peers).await;
        }
    }
}
