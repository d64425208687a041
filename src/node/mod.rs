//! The node runtime: the shell around the pure [`Core`]. One task owns the core and the
//! store; it reads the clock and passes the time in, turns network events and API
//! requests into core inputs, and carries out the core's effects (publish, send, respond,
//! persist). Writes that a caller is told about are flushed to disk first.

use crate::config::Config;
use crate::core::lease::Resource;
use crate::core::membership::{MembershipConfig, PeerState, PeerStatus};
use crate::core::model::{Event, KnowledgeKind};
use crate::core::model::{Handoff, NewStory, Topic};
use crate::core::state::{AuditEntry, Doc, LogQuery, StoryView, View};
use crate::core::trust::{Checker, SigCheck};
pub use crate::core::Counters;
use crate::core::{
    ClaimRow, ClockSkew, Core, CoreConfig, Effect, Guards, Handover, HeldClaim, Input, JobFailure,
    RunRecord, EVENT_LOG_CAPACITY,
};
use crate::exec::command::CommandExecutor;
use crate::exec::{Executor, SimExecutor};
use crate::git::{GitError, NodeRepo};
use crate::net::{self, NetClient, NetCommand, NetConfig, NetEvent};
use crate::store::{EventLog, Faults, KnownPeer, Store, StoreError};
use crate::work::{GateConfig, WorkShell};
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};

mod durable;
mod handle;
mod net_events;
mod runtime;

pub use handle::NodeHandle;
use runtime::{dial_addrs, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error("data dir: {0}")]
    DataDir(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    State(#[from] crate::core::state::StateError),
    #[error("invalid address {0}")]
    Addr(String),
    #[error("the story was written but cannot be read back: the store may be corrupt")]
    Vanished,
    #[error("invalid config: {0}")]
    Executor(String),
    #[error("git origin: {0}")]
    Git(#[from] crate::git::GitError),
    #[error("git origin: the task opening the clone failed: {0}")]
    GitTask(#[from] tokio::task::JoinError),
}

/// Everything needed to start a node.
pub struct NodeOptions {
    pub config: Config,
    /// None: an in-memory node (the passive observer).
    pub data_dir: Option<PathBuf>,
    pub keypair: libp2p::identity::Keypair,
    pub psk: Option<libp2p::pnet::PreSharedKey>,
    /// A passive observer never writes to the document and never heartbeats.
    pub passive: bool,
    /// Runs phases; None picks the one the config names.
    pub executor: Option<Arc<dyn Executor>>,
}

/// A hostile member's raw writes ([`ApiRequest::Hostile`]).
pub struct HostileWrite(pub Box<dyn FnOnce(&mut Doc) + Send>);

impl std::fmt::Debug for HostileWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostileWrite")
    }
}

/// Requests from the control API (and tests) into the node loop.
#[derive(Debug)]
pub enum ApiRequest {
    AddStory(NewStory, oneshot::Sender<Result<StoryView, WriteError>>),
    /// Adds stories in one change, all or none (`story add --from FILE`); answers them
    /// in order, or why not, naming the story's line.
    AddStories(
        crate::intake::StoryBatch,
        oneshot::Sender<Result<Vec<StoryView>, WriteError>>,
    ),
    /// Adds a story from an outside source (an issue from the GitHub hook) unless one
    /// from that source is in the document already.
    AddSourced(
        NewStory,
        String,
        oneshot::Sender<Result<crate::core::Sourced, WriteError>>,
    ),
    Status(oneshot::Sender<StatusReport>),
    View(oneshot::Sender<View>),
    /// The bodies of these stories (by key), read from the document: the view keeps
    /// none (`Doc::story_body`). A key the document has no story for is left out.
    Bodies(Vec<String>, oneshot::Sender<BTreeMap<String, String>>),
    /// A story an epoch retired (by key), read from the store's archive of the documents
    /// before (`story show`); `None` if no archived document has it.
    Archived(String, oneshot::Sender<Option<crate::api::StoryDetail>>),
    /// Start (true) or stop (false) claiming new work; running work continues. Starting
    /// claims at once rather than at the next tick.
    SetWork(bool, oneshot::Sender<()>),
    /// Stop the node loop for this long, as SIGSTOP or a long GC pause would: no
    /// heartbeats, no ticks, no sync; inputs queue up. For tests of stale holders.
    Pause(Duration),
    /// The claims this node settled and ran.
    Runs(oneshot::Sender<Vec<RunRecord>>),
    /// The event timeline with arrival positions: after 0, the whole merged history in
    /// time order; after a position, what arrived since, in arrival order.
    Events(u64, oneshot::Sender<Vec<(u64, Event)>>),
    /// The audit trail of the document (`mesh-agent log`): who wrote which fact, when,
    /// and whether it counts; an unknown story in the query is an error naming it.
    Log(LogQuery, oneshot::Sender<Result<Vec<AuditEntry>, String>>),
    /// Adds a knowledge entry by hand; answers its id.
    AddKnowledge(
        KnowledgeKind,
        String,
        oneshot::Sender<Result<String, WriteError>>,
    ),
    /// Writes an operator's sealed roster fact (key, sealed value); answers what it did.
    PutRoster(String, String, oneshot::Sender<Result<String, WriteError>>),
    /// Tests of a hostile member: writes anything into the document (raw values,
    /// deletes), persisted and pushed like a local write. Never sent by the CLI or API.
    #[doc(hidden)]
    Hostile(HostileWrite, oneshot::Sender<()>),
    /// Flush everything and stop the node loop; answered once stopped.
    Shutdown(oneshot::Sender<()>),
}

/// A story line in the status report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StorySummary {
    pub id: String,
    pub title: String,
    pub status: String,
    pub priority: u32,
    /// Why it is not moving, while neither merged nor blocked (`scheduler::waiting`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<crate::core::scheduler::Waiting>,
}

/// What `mesh-agent status` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReport {
    pub peer_id: String,
    pub version: String,
    pub passive: bool,
    pub uptime_ms: u64,
    pub listen_addrs: Vec<String>,
    pub connected: usize,
    pub peers: Vec<PeerStatus>,
    pub story_counts: BTreeMap<String, usize>,
    pub stories: Vec<StorySummary>,
    pub heads: Vec<String>,
    pub heads_digest: String,
    /// Bytes of the document in the store: the last snapshot plus the chunks appended
    /// since (0 for a node without a store). Tracked by the store, so cheap to ask.
    pub doc_bytes: u64,
    /// The document's size cap (`max_document_bytes`).
    #[serde(default)]
    pub doc_cap: u64,
    pub store_bytes: u64,
    pub counters: Counters,
    /// Claims this node holds.
    pub held: Vec<HeldClaim>,
    /// Every active claim in the mesh, as this node sees it.
    pub claims: Vec<ClaimRow>,
    /// Joining: this node knows of a mesh it has not synced with yet and claims nothing
    /// for at most this much longer.
    #[serde(default)]
    pub joining_ms_left: Option<u64>,
    /// Uptime at which this node first synced with a peer.
    #[serde(default)]
    pub joined_at_ms: Option<u64>,
    /// This node's wall clock against its peers'.
    #[serde(default)]
    pub clock: ClockSkew,
    /// Whether the git origin answers this node (its breaker).
    #[serde(default)]
    pub origin: crate::core::breaker::OriginHealth,
    /// Facts in the document this node refused (unsigned, mis-signed, invalid, or not
    /// the author's to write), by the author they name and kind.
    #[serde(default)]
    pub rejected: Vec<RejectedFacts>,
    /// The mesh's roster (operators, admitted and revoked nodes).
    #[serde(default)]
    pub roster: crate::core::state::RosterView,
    /// Items waiting for a human (`mesh-agent attention` lists them).
    #[serde(default)]
    pub attention: usize,
    /// Operators' pauses of the mesh (`all`) and of nodes (by peer id), with the reason.
    #[serde(default)]
    pub paused: BTreeMap<String, String>,
    /// This node's allowance, the mesh's spend today, and rate-limit pacing.
    #[serde(default)]
    pub spend: crate::core::SpendStatus,
    /// Notifications this node owns and has not sent, and the last failed send.
    #[serde(default)]
    pub notify: crate::core::notify::NotifyStatus,
    /// Nothing is running and nothing can be claimed, as this node sees the mesh: no
    /// active claim anywhere and no story ready for its next phase. What is still open
    /// (`open` > 0) waits for a human (paused, at a gate), a role no node has, or a peer
    /// it cannot see. Never while this node is still joining. For scripts that wait for
    /// the mesh to finish.
    #[serde(default)]
    pub idle: bool,
    /// Stories neither merged, blocked nor cancelled.
    #[serde(default)]
    pub open: usize,
    /// This node's epoch (0: the mesh's first document; DESIGN.md §3.5).
    #[serde(default)]
    pub epoch: u64,
    /// Alive peers whose latest beat named another epoch: no sync with them, and claims
    /// wait for them (settle hears from every alive peer).
    #[serde(default)]
    pub other_epoch: Vec<String>,
    /// The mesh moves to the next epoch as this node sees it (a proposal open or a cut
    /// written): it claims nothing until the move is done or given up.
    #[serde(default)]
    pub moving: bool,
    /// A move to the next epoch is due (`epoch_after` merged stories) and waits for these
    /// known nodes: down, or on another epoch. One that left for good must be revoked.
    #[serde(default)]
    pub epoch_waits_for: Vec<String>,
    /// Merged stories earlier epochs retired (counted as merged in `story_counts`; `story
    /// show` reads them from the archive).
    #[serde(default)]
    pub retired: usize,
}

/// Refused facts of one author and kind (`status`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RejectedFacts {
    /// The author the values name (`?` when they name none).
    pub author: String,
    pub kind: crate::core::state::FactKind,
    pub count: u64,
}

/// What a node currently observes, published on every change so that tests, benchmarks
/// and the observer can await a condition instead of polling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    pub heads_digest: [u8; 32],
    /// Peers in each membership state, sorted.
    pub alive: Vec<String>,
    pub suspect: Vec<String>,
    pub dead: Vec<String>,
    pub connected: usize,
    pub handshake_failures: u64,
    /// Connections a peer closed as they opened (`Counters::closed_on_open`).
    pub closed_on_open: u64,
    pub sync_sessions_completed: u64,
    /// Heartbeats this node has received from peers (grows with time on a live mesh).
    pub heartbeats_received: u64,
    /// Node clock (ms since start) at which it first completed a sync with a peer.
    pub joined_at_ms: Option<u64>,
    /// Arrival position of the newest event in the timeline (grows with each new one).
    pub events: u64,
    /// Peers refused as not on the roster (or revoked), sorted.
    pub refused: Vec<String>,
    /// The connected peers, sorted.
    pub connected_peers: Vec<String>,
}

/// The longest a clean shutdown waits for its peers to sync the claims it hands back.
pub const HANDOVER_MAX: Duration = Duration::from_secs(2);

/// The largest block glibc's allocator serves from its heaps: larger ones are mapped
/// and returned on `free`.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Fixes glibc's allocator thresholds at their defaults (128 KiB) for this process,
/// unless the environment sets its malloc tunables. Left dynamic, each large block freed
/// raises them (up to 32 and 64 MiB): a node's transient large buffers (a snapshot, a
/// load's decoded changes, sync messages) then settle inside the heaps, and a worker
/// thread's arena keeps its freed top for good, as [`release_free_memory`] trims only
/// the main one. Fixed, a restarted 100,000-story node holds 142-150 MB instead of
/// 155-169, one that just bulk-loaded them 308-349 MB instead of 419-444; large blocks
/// are mapped afresh each time, so a join or a restart takes ~10 % longer
/// (docs/PERFORMANCE.md). Setting them again (every node start) changes nothing.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_user = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc"))
            || std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_"));
        if !set_by_user {
            // SAFETY: mallopt takes plain integers and only sets glibc's parameters.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
                libc::mallopt(libc::M_TRIM_THRESHOLD, MMAP_THRESHOLD);
            }
        }
    }
}

/// How often the node hands memory its allocator keeps but no longer uses back to the
/// system (and once right after it loaded its store).
const RELEASE_MEMORY_EVERY: Duration = Duration::from_secs(60);

/// Hands back to the system the memory glibc's allocator holds free inside its heap: a
/// load, a join or a bulk write of 100,000 stories frees ~80–100 MB that glibc would
/// otherwise keep (`free` returns only the top of a heap). Costs ~9 ms on such a heap,
/// ~0.1 ms when there is nothing to hand back; run off the node's loop. Elsewhere
/// (musl, other systems) there is nothing to do.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a write the caller waits on (`story add`, `knowledge add`) was not made. Either
/// way nothing was recorded and nothing reached a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The request itself was refused (bad input, a passive node).
    #[error("{0}")]
    Refused(String),
    /// The write could not be made durable (appending or flushing failed): it was
    /// undone.
    #[error("the write could not be stored, nothing was recorded: {0}")]
    NotDurable(String),
}

/// Checks signatures on every core (up to 8): a load or a join checks one signature per
/// value it has not checked before (~47 µs each here: 100,000 stories are ~4.7 s on one
/// core).
/// The core has no threads; it hands the shell's checker a batch. The batch is taken in
/// pieces of [`CHECK_PIECE`], each thread (the caller's among them) taking the next until
/// none is left: with equal shares, the share of a thread that got less of the machine
/// was left to one core at the end (~0.6 s of a 100,000-story join here).
fn parallel_checker() -> Checker {
    Checker(Arc::new(check_in_pieces))
}

/// Checks handed out at a time by [`parallel_checker`].
const CHECK_PIECE: usize = 256;

fn check_in_pieces(checks: &[SigCheck]) -> Vec<bool> {
    use std::sync::atomic::AtomicUsize;
    let pieces = checks.len().div_ceil(CHECK_PIECE);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get().min(8))
        .min(pieces);
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let at = next.fetch_add(1, Ordering::Relaxed) * CHECK_PIECE;
            if at >= checks.len() {
                return done;
            }
            let piece = &checks[at..(at + CHECK_PIECE).min(checks.len())];
            done.push((at, piece.iter().map(SigCheck::holds).collect::<Vec<bool>>()));
        }
    };
    // A check that panicked holds nothing: the values of its thread's pieces are refused.
    let mut out = vec![false; checks.len()];
    std::thread::scope(|s| {
        let others: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        for done in std::iter::once(mine.ok())
            .chain(others.into_iter().map(|h| h.join().ok()))
            .flatten()
        {
            for (at, verdicts) in done {
                out[at..at + verdicts.len()].copy_from_slice(&verdicts);
            }
        }
    });
    out
}

/// The document a store holds (its snapshot, the record of that snapshot's checks, the
/// chunks since), its signatures checked on every core.
pub(crate) fn load_stored_doc(
    store: &Store,
    actor: [u8; 16],
    operators: BTreeSet<String>,
) -> Result<Doc, NodeError> {
    let (snap, chunks) = store.load_doc()?;
    let checked = store.snapshot_checked()?;
    let doc = Doc::load_stored(
        actor,
        &snap,
        &checked,
        &chunks,
        operators,
        Some(parallel_checker()),
    )?;
    // An epoch's document reads what it inherited from the root it was opened with.
    Ok(match store.epoch_root()? {
        Some(root) => doc.with_epoch_root(&crate::core::state::ChangeHash(root))?,
        None => doc,
    })
}

/// Starts a node: opens the store, loads the document, binds the network.
pub async fn start(opts: NodeOptions) -> Result<NodeHandle, NodeError> {
    tune_allocator();
    let cfg = opts.config;
    if let Some(dir) = &opts.data_dir {
        // Created 0700, or tightened to it (with a warning) if an older version or a
        // hand-made directory left it open.
        crate::identity::ensure_private_dir(dir)?;
    }
    let store = match &opts.data_dir {
        Some(dir) if !opts.passive => Some(Store::open(dir)?),
        _ => None,
    };
    let mut actor = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut actor);
    let doc = match &store {
        Some(s) => load_stored_doc(s, actor, cfg.operator_set())?,
        None => Doc::new(actor).with_operators(cfg.operator_set()),
    }
    .with_signer(crate::identity::signer(&opts.keypair)?);
    // Peers remembered from earlier runs: a hint, so an unreadable record is no reason
    // not to start.
    let known: BTreeMap<String, KnownPeer> = match &store {
        Some(s) => s.load_known_peers().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the remembered peers; starting without");
            Vec::new()
        }),
        None => Vec::new(),
    }
    .into_iter()
    .map(|p| (p.peer.clone(), p))
    .collect();
    let parse = |v: &[String]| -> Result<Vec<Multiaddr>, NodeError> {
        v.iter()
            .map(|a| a.parse().map_err(|_| NodeError::Addr(a.clone())))
            .collect()
    };
    let (net, net_rx, net_task) = net::spawn(NetConfig {
        keypair: opts.keypair.clone(),
        psk: opts.psk,
        listen: parse(&cfg.listen)?,
        bootstrap: parse(&cfg.bootstrap)?,
        max_sync_bytes: cfg.max_sync_message_bytes + 64,
        max_peers: cfg.max_peers,
        request_timeout: Duration::from_secs(10),
        gossip_author: None,
    })
    .await?;
    let listen_addrs = net.info().await.listen_addrs;
    let peer = net.local_peer_id.to_string();
    net.send(NetCommand::Remember(dial_addrs(&known))).await;
    let mut core = Core::new(
        peer.clone(),
        CoreConfig {
            membership: MembershipConfig {
                heartbeat_ms: cfg.heartbeat_ms,
                suspect_after_missed: cfg.suspect_after_missed,
                dead_after_ms: cfg.dead_after_ms,
            },
            // A node with sinks announces the kinds it sends (`notify:<kind>`).
            roles: cfg
                .roles
                .iter()
                .cloned()
                .chain(cfg.notify.roles())
                .collect(),
            capacity: cfg.capacity,
            role_limits: cfg.role_limits.clone(),
            max_sync_bytes: cfg.max_sync_message_bytes,
            passive: opts.passive,
            lease: cfg.lease(),
            work: cfg.work && !opts.passive,
            broken_winner_rule: false,
            check_view: false,
            stall_after_ms: cfg.stall_after_ms,
            origin_breaker: cfg.origin_breaker(),
            merge_gate: None, // set below, once the origin is open
            epoch_after: cfg.epoch_after,
            limits: cfg.limits(),
            triggers: cfg.triggers(),
            budget: cfg.budget(),
        },
        doc,
        wall_ms(),
    );
    // It listens for a dead-after before it sends: a live peer has beaten by then, and a
    // dead owner is known dead.
    core.set_notify(cfg.notify.core(cfg.dead_after_ms));
    core.set_guards(Guards {
        join_wait_ms: cfg.join_wait_ms,
        remembers_peers: !known.is_empty(),
        clock_skew: true,
    });
    if !known.is_empty() {
        tracing::info!(peers = known.len(), "redialling remembered peers");
    }

    // The timeline survives restarts: reload what the previous runs kept.
    let event_log = match &store {
        Some(s) => {
            let log = s.events(EVENT_LOG_CAPACITY)?;
            let (events, bad) = log.load()?;
            if bad > 0 {
                tracing::warn!(bad, "skipped stored events that could not be read");
            }
            core.restore_events(events);
            Some(log)
        }
        None => None,
    };
    let executor: Arc<dyn Executor> = match opts.executor {
        Some(e) => e,
        None if cfg.executor == "command" => {
            Arc::new(CommandExecutor::new(cfg.command.clone()).map_err(NodeError::Executor)?)
        }
        None => Arc::new(SimExecutor {
            phase_ms: cfg.sim_phase_ms,
            failure_rate: cfg.sim_failure_rate,
            review_reject_rate: cfg.sim_review_reject_rate,
            seed: rand::random(),
        }),
    };
    let work_dir = opts
        .data_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("mesh-agent-{peer}")))
        .join("work");
    let repo = match (&opts.data_dir, cfg.origin.is_empty(), opts.passive) {
        (Some(dir), false, false) => {
            let clone = dir.join("git").join("clone");
            let origin = cfg.origin.clone();
            let branch = cfg.branch.clone();
            let r = tokio::task::spawn_blocking(move || {
                let repo = NodeRepo::open_or_clone(&origin, &clone)
                    .and_then(|r| r.with_branch(&format!("refs/heads/{branch}")))?;
                // A server that cannot land atomically is refused now, not at the first
                // merge; one that is merely unreachable is retried by the work itself.
                match repo.check_atomic_push() {
                    Err(GitError::Remote(e)) if e.is_transient() => {
                        tracing::warn!(origin = %repo.origin_url(), error = %e, "cannot check the origin now; going on");
                    }
                    other => other?,
                }
                Ok::<_, GitError>(repo)
            })
            .await??;
            Some(r)
        }
        _ => None,
    };
    // A remote origin has no lock file to take turns through: merges hold its gate in
    // the document instead (the fence at the origin still decides every landing).
    // Named after the repository, not the URL as written, so that nodes reaching it by
    // different forms (scp-like, ssh://, https) still take turns.
    if let Some(name) = repo.as_ref().and_then(|r| r.remote_repository()) {
        match Resource::gate(&name, &cfg.branch) {
            Ok(g) => core.set_merge_gate(Some(g)),
            Err(e) => tracing::warn!(error = %e, "merges take no gate in the document"),
        }
    }
    // (Validated with the config: a pattern that does not compile never gets here.)
    let security = crate::core::attention::compile(&cfg.security_patterns).unwrap_or_default();
    let shell = Arc::new(
        WorkShell::new(
            executor,
            repo,
            work_dir,
            peer.to_string(),
            GateConfig {
                test: (!cfg.test_command.is_empty()).then(|| cfg.test_command.clone()),
                test_timeout: Duration::from_secs(cfg.test_timeout_secs),
                max_tries: cfg.merge_max_tries,
            },
        )
        .with_security_patterns(security)
        .with_security_scanner(cfg.security_scanner.clone()),
    );
    if !opts.passive {
        let s = shell.clone();
        let _ = tokio::task::spawn_blocking(move || s.clean_leftovers()).await;
    }
    let (work_tx, work_rx) = mpsc::channel(256);
    let (probe_tx, probe_rx) = mpsc::channel(4);
    let (notify_tx, notify_rx) = mpsc::channel(64);
    let sinks = (!cfg.notify.sink.is_empty() && !opts.passive)
        .then(|| crate::notify::Sinks::new(&cfg.notify, &peer));
    let (obs_tx, obs_rx) = watch::channel(Observation {
        heads_digest: core.digest(),
        ..Default::default()
    });
    let faults = store.as_ref().map(Store::faults);
    let mut rt = Runtime {
        core,
        cfg,
        store,
        event_log,
        net: net.clone(),
        started: Instant::now(),
        listen_addrs: listen_addrs.iter().map(|a| a.to_string()).collect(),
        observe: Some(obs_tx),
        replies: HashMap::new(),
        next_reply: 0,
        stale_requests: 0,
        shell,
        jobs: HashMap::new(),
        work_tx,
        probe_tx,
        sinks,
        notify_tx,
        known,
        unflushed: false,
        unpersisted: VecDeque::new(),
    };
    rt.core.announce_node(env!("CARGO_PKG_VERSION"));
    rt.drain_effects().await;
    rt.flush().await;
    tracing::info!(peer = %peer, passive = opts.passive, "node started");
    let (api_tx, api_rx) = mpsc::channel(256);
    let task = tokio::spawn(rt.run(net_rx, api_rx, Some(work_rx), probe_rx, notify_rx));
    Ok(NodeHandle {
        peer_id: net.local_peer_id,
        listen_addrs,
        observe: obs_rx,
        api: api_tx,
        net: net.clone(),
        task,
        net_task,
        faults,
    })
}

/// Adds a story straight into the store of a node that is not running (the CLI's path
/// when no control endpoint answers). Fails clearly if the data dir is locked.
pub fn offline_add_story(
    data_dir: &std::path::Path,
    key: &libp2p::identity::Keypair,
    new: &NewStory,
    operators: &BTreeSet<String>,
) -> Result<StoryView, NodeError> {
    let mut store = Store::open(data_dir)?;
    let mut actor = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut actor);
    let signer = crate::identity::signer(key)?;
    let creator = signer.author().to_string();
    let mut doc = load_stored_doc(&store, actor, operators.clone())?.with_signer(signer);
    let key = doc.add_story(new, &creator, wall_ms())?;
    store.append_chunk(&doc.save_incremental())?;
    store.flush_blocking()?;
    doc.view()
        .stories
        .get(key.as_str())
        .map(|s| doc.with_body(s))
        .ok_or(NodeError::Vanished)
}

/// Reads the view from the store of a node that is not running (`operators`: its
/// config's).
/// Story `key` as the newest archived document that holds it shows it (DESIGN.md §3.5:
/// a merged story leaves the live document at an epoch; the store keeps the document
/// before each epoch whole). Reads and folds whole documents: for `story show`, not a
/// hot path. `epoch`: the store's current epoch.
pub(crate) fn archived_story(
    store: &Store,
    epoch: u64,
    key: &str,
    operators: &BTreeSet<String>,
) -> Result<Option<crate::api::StoryDetail>, NodeError> {
    for e in (1..=epoch).rev() {
        let Some(bytes) = store.archived(e)? else {
            continue;
        };
        let doc = Doc::load_with_operators([0; 16], &bytes, &[], operators.clone())?;
        let view = doc.view();
        if let Some(s) = view.stories.get(key) {
            let mut d = crate::api::StoryDetail::of(&view, s);
            doc.fill_body(&mut d.story);
            return Ok(Some(d));
        }
    }
    Ok(None)
}

/// `story show` with no node running: the live document, else the archive.
pub fn offline_story(
    data_dir: &std::path::Path,
    operators: &BTreeSet<String>,
    id: &str,
) -> Result<crate::api::StoryDetail, NodeError> {
    let store = Store::open(data_dir)?;
    let doc = load_stored_doc(&store, [0; 16], operators.clone())?;
    let view = doc.view();
    match view.resolve(id) {
        Ok(s) => {
            let mut d = crate::api::StoryDetail::of(&view, s);
            doc.fill_body(&mut d.story);
            Ok(d)
        }
        Err(e) => {
            let epoch = view.base().map_or(0, |b| b.epoch);
            let found = match view.retired_key(id) {
                Some(k) => archived_story(&store, epoch, k, operators)?,
                None => None,
            };
            found.ok_or_else(|| crate::core::state::StateError::Input(e).into())
        }
    }
}

pub fn offline_view(
    data_dir: &std::path::Path,
    operators: &BTreeSet<String>,
) -> Result<View, NodeError> {
    let store = Store::open(data_dir)?;
    Ok(load_stored_doc(&store, [0; 16], operators.clone())?.view())
}

/// Every story, in display order and with its body, from the store of a node that is
/// not running (what the API's story list answers when one is).
pub fn offline_stories(
    data_dir: &std::path::Path,
    operators: &BTreeSet<String>,
) -> Result<Vec<StoryView>, NodeError> {
    let store = Store::open(data_dir)?;
    let doc = load_stored_doc(&store, [0; 16], operators.clone())?;
    let view = doc.view();
    Ok(view
        .stories_ordered()
        .into_iter()
        .map(|s| doc.with_body(s))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::trust::{self, KeyScheme, Signer};

    /// The checker hands out pieces to threads: every verdict lands at its own value's
    /// place, whatever thread checked it, as checking one by one gives it.
    #[test]
    fn checking_in_pieces_gives_each_value_the_verdict_one_by_one_gives() {
        let a = Signer::for_test("A");
        let n = CHECK_PIECE * 5 + 17;
        let checks: Vec<SigCheck> = (0..n)
            .map(|i| {
                let key = format!("k{i}");
                let mut sealed = a.seal(&key, &format!("{{\"n\":{i}}}"));
                if i % 7 == 3 {
                    // Signed for another value: its check fails.
                    sealed = sealed.replace(&format!("\"n\":{i}"), "\"n\":-1");
                }
                trust::sig_check(&key, &sealed, KeyScheme::TestNames).expect("well formed")
            })
            .collect();
        let one_by_one: Vec<bool> = checks.iter().map(SigCheck::holds).collect();
        let forged = (0..n).filter(|i| i % 7 == 3).count();
        assert_eq!(one_by_one.iter().filter(|ok| !**ok).count(), forged);
        assert_eq!(check_in_pieces(&checks), one_by_one);
        assert!(check_in_pieces(&[]).is_empty());
    }
}
