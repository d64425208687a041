//! The node runtime: the shell around the pure [`Core`]. One task owns the core and the
//! store; it reads the clock and passes the time in, turns network events and API
//! requests into core inputs, and carries out the core's effects (publish, send, respond,
//! persist). Writes that a caller is told about are flushed to disk first.

use crate::config::Config;
use crate::core::membership::{MembershipConfig, PeerState, PeerStatus};
use crate::core::model::{Event, KnowledgeKind};
use crate::core::model::{Handoff, NewStory, Topic};
use crate::core::state::{Doc, StoryView, View};
pub use crate::core::Counters;
use crate::core::{
    ClaimRow, ClockSkew, Core, CoreConfig, Effect, Guards, Handover, HeldClaim, Input, RunRecord,
    EVENT_LOG_CAPACITY,
};
use crate::exec::command::CommandExecutor;
use crate::exec::{Executor, SimExecutor};
use crate::git::NodeRepo;
use crate::net::{self, NetClient, NetCommand, NetConfig, NetEvent};
use crate::store::{EventLog, KnownPeer, Store, StoreError};
use crate::work::{GateConfig, WorkShell};
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Net(#[from] net::NetError),
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

/// Requests from the control API (and tests) into the node loop.
#[derive(Debug)]
pub enum ApiRequest {
    AddStory(NewStory, oneshot::Sender<Result<StoryView, String>>),
    Status(oneshot::Sender<StatusReport>),
    View(oneshot::Sender<View>),
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
    /// Adds a knowledge entry by hand; answers its id.
    AddKnowledge(
        KnowledgeKind,
        String,
        oneshot::Sender<Result<String, String>>,
    ),
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
    pub doc_bytes: u64,
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
    pub sync_sessions_completed: u64,
    /// Node clock (ms since start) at which it first completed a sync with a peer.
    pub joined_at_ms: Option<u64>,
    /// Arrival position of the newest event in the timeline (grows with each new one).
    pub events: u64,
}

/// A running node, in this process.
pub struct NodeHandle {
    pub peer_id: PeerId,
    pub listen_addrs: Vec<Multiaddr>,
    observe: watch::Receiver<Observation>,
    api: mpsc::Sender<ApiRequest>,
    net: NetClient,
    task: tokio::task::JoinHandle<()>,
    net_task: tokio::task::JoinHandle<()>,
}

impl NodeHandle {
    pub fn api(&self) -> mpsc::Sender<ApiRequest> {
        self.api.clone()
    }

    /// A receiver of this node's [`Observation`]s.
    pub fn observe(&self) -> watch::Receiver<Observation> {
        self.observe.clone()
    }

    /// Waits until `cond` holds for this node's observation; `None` if the node stopped.
    pub async fn wait_for(
        &self,
        mut cond: impl FnMut(&Observation) -> bool,
    ) -> Option<Observation> {
        let mut rx = self.observe.clone();
        let r = rx.wait_for(|o| cond(o)).await.ok()?;
        Some(r.clone())
    }

    /// Cuts this node's links to `peers` (a partition, for tests and chaos drills): open
    /// connections close and new ones either way are refused until [`Self::unblock`].
    /// Call it on both sides for a clean cut.
    pub async fn block(&self, peers: &[PeerId]) {
        for p in peers {
            self.net.send(NetCommand::Block(*p, true)).await;
        }
    }

    /// Lets `peers` connect again (the heal of [`Self::block`]); nothing redials by
    /// itself at once, so pair it with [`Self::dial`].
    pub async fn unblock(&self, peers: &[PeerId]) {
        for p in peers {
            self.net.send(NetCommand::Block(*p, false)).await;
        }
    }

    /// Dials an address (a peer's [`Self::addr`]).
    pub async fn dial(&self, addr: Multiaddr) {
        self.net.send(NetCommand::Dial(addr)).await;
    }

    /// A dialable address with the peer id, for bootstrapping others.
    pub fn addr(&self) -> Option<Multiaddr> {
        let a = self.listen_addrs.first()?.clone();
        Some(a.with(libp2p::multiaddr::Protocol::P2p(self.peer_id)))
    }

    pub async fn add_story(&self, s: NewStory) -> Result<StoryView, String> {
        let (tx, rx) = oneshot::channel();
        self.api
            .send(ApiRequest::AddStory(s, tx))
            .await
            .map_err(|_| "node stopped".to_string())?;
        rx.await.map_err(|_| "node stopped".to_string())?
    }

    pub async fn status(&self) -> Option<StatusReport> {
        let (tx, rx) = oneshot::channel();
        self.api.send(ApiRequest::Status(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Freezes the node loop for `d` (as SIGSTOP would): it stops heartbeating, ticking
    /// and syncing; its executor's jobs keep running. Returns at once.
    pub async fn pause(&self, d: Duration) -> Option<()> {
        self.api.send(ApiRequest::Pause(d)).await.ok()
    }

    /// Starts or stops claiming new work (running work continues).
    pub async fn set_work(&self, on: bool) -> Option<()> {
        let (tx, rx) = oneshot::channel();
        self.api.send(ApiRequest::SetWork(on, tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn runs(&self) -> Option<Vec<RunRecord>> {
        let (tx, rx) = oneshot::channel();
        self.api.send(ApiRequest::Runs(tx)).await.ok()?;
        rx.await.ok()
    }

    /// The node's event timeline: `after` 0, the merged history in time order; otherwise
    /// what arrived after that position.
    pub async fn events(&self, after: u64) -> Option<Vec<(u64, Event)>> {
        let (tx, rx) = oneshot::channel();
        self.api.send(ApiRequest::Events(after, tx)).await.ok()?;
        rx.await.ok()
    }

    /// Adds a knowledge entry; returns its id.
    pub async fn add_knowledge(&self, kind: KnowledgeKind, text: &str) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.api
            .send(ApiRequest::AddKnowledge(kind, text.to_string(), tx))
            .await
            .map_err(|_| "node stopped".to_string())?;
        rx.await.map_err(|_| "node stopped".to_string())?
    }

    pub async fn view(&self) -> Option<View> {
        let (tx, rx) = oneshot::channel();
        self.api.send(ApiRequest::View(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Stops the node with no goodbye (as a crash would, minus the OS): the tasks are
    /// aborted and this returns once they are gone and the data dir is unlocked.
    pub async fn kill(self) {
        self.task.abort();
        self.net_task.abort();
        let _ = self.task.await;
        let _ = self.net_task.await;
    }

    /// Stops the node cleanly: running jobs cancelled, every claim released (`Shutdown`)
    /// and pushed to the alive peers (waiting at most [`HANDOVER_MAX`] for them to sync
    /// it), every change flushed to disk, then the tasks end.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.api.send(ApiRequest::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
        self.net_task.abort();
        let _ = self.net_task.await;
    }
}

/// The longest a clean shutdown waits for its peers to sync the claims it hands back.
pub const HANDOVER_MAX: Duration = Duration::from_secs(2);

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts a node: opens the store, loads the document, binds the network.
pub async fn start(opts: NodeOptions) -> Result<NodeHandle, NodeError> {
    let cfg = opts.config;
    let store = match &opts.data_dir {
        Some(dir) if !opts.passive => Some(Store::open(dir)?),
        _ => None,
    };
    let mut actor = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut actor);
    let doc = match &store {
        Some(s) => {
            let (snap, chunks) = s.load_doc()?;
            Doc::load(actor, &snap, &chunks)?
        }
        None => Doc::new(actor),
    };
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
            roles: cfg.roles.clone(),
            capacity: cfg.capacity,
            role_limits: cfg.role_limits.clone(),
            max_sync_bytes: cfg.max_sync_message_bytes,
            passive: opts.passive,
            lease: cfg.lease(),
            work: cfg.work && !opts.passive,
            broken_winner_rule: false,
            stall_after_ms: cfg.stall_after_ms,
        },
        doc,
        wall_ms(),
    );
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
                NodeRepo::open_or_clone(&origin, &clone)
                    .and_then(|r| r.with_branch(&format!("refs/heads/{branch}")))
            })
            .await??;
            Some(r)
        }
        _ => None,
    };
    let shell = Arc::new(WorkShell::new(
        executor,
        repo,
        work_dir,
        peer.to_string(),
        GateConfig {
            test: (!cfg.test_command.is_empty()).then(|| cfg.test_command.clone()),
            test_timeout: Duration::from_secs(cfg.test_timeout_secs),
            max_tries: cfg.merge_max_tries,
        },
    ));
    if !opts.passive {
        let s = shell.clone();
        let _ = tokio::task::spawn_blocking(move || s.clean_leftovers()).await;
    }
    let (work_tx, work_rx) = mpsc::channel(256);
    let (obs_tx, obs_rx) = watch::channel(Observation {
        heads_digest: core.digest(),
        ..Default::default()
    });
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
        shell,
        jobs: HashMap::new(),
        work_tx,
        known,
    };
    rt.core.announce_node(env!("CARGO_PKG_VERSION"));
    rt.drain_effects().await;
    rt.flush().await;
    tracing::info!(peer = %peer, passive = opts.passive, "node started");
    let (api_tx, api_rx) = mpsc::channel(256);
    let task = tokio::spawn(rt.run(net_rx, api_rx, Some(work_rx)));
    Ok(NodeHandle {
        peer_id: net.local_peer_id,
        listen_addrs,
        observe: obs_rx,
        api: api_tx,
        net: net.clone(),
        task,
        net_task,
    })
}

struct Runtime {
    core: Core,
    cfg: Config,
    store: Option<Store>,
    /// The durable event timeline (beside the document in the same store).
    event_log: Option<EventLog>,
    net: NetClient,
    started: Instant,
    listen_addrs: Vec<String>,
    observe: Option<watch::Sender<Observation>>,
    /// Sync requests awaiting our answer, by the reply token given to the core.
    replies: HashMap<u64, ResponseChannel<Vec<u8>>>,
    next_reply: u64,
    shell: Arc<WorkShell>,
    jobs: HashMap<String, tokio::task::JoinHandle<()>>,
    work_tx: mpsc::Sender<(String, Result<Handoff, String>)>,
    /// Peers this node was connected to (persisted; redialled on the next start).
    known: BTreeMap<String, KnownPeer>,
}

/// The addresses to redial for remembered peers, each ending in `/p2p/<peer>`.
fn dial_addrs(known: &BTreeMap<String, KnownPeer>) -> Vec<Multiaddr> {
    let mut out = Vec::new();
    for p in known.values() {
        let Ok(id) = p.peer.parse::<PeerId>() else {
            continue;
        };
        for a in &p.addrs {
            if let Ok(a) = a.parse::<Multiaddr>() {
                out.push(a.with(libp2p::multiaddr::Protocol::P2p(id)));
            }
        }
    }
    out
}

impl Runtime {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Publishes the current observation (only when it changed).
    fn publish_observation(&self) {
        let Some(tx) = &self.observe else { return };
        let now = self.now_ms();
        let c = self.core.counters();
        let mut o = Observation {
            heads_digest: self.core.digest(),
            connected: self.core.connected().len(),
            handshake_failures: c.handshake_failures,
            sync_sessions_completed: c.sync_sessions_completed,
            joined_at_ms: self.core.joined_at_ms(),
            events: self.core.events_pos(),
            ..Default::default()
        };
        for p in self.core.peers(now) {
            match p.state {
                PeerState::Alive => o.alive.push(p.peer),
                PeerState::Suspect => o.suspect.push(p.peer),
                PeerState::Dead => o.dead.push(p.peer),
            }
        }
        tx.send_if_modified(|cur| {
            if *cur == o {
                false
            } else {
                *cur = o;
                true
            }
        });
    }

    async fn run(
        mut self,
        mut net_rx: mpsc::Receiver<NetEvent>,
        mut api_rx: mpsc::Receiver<ApiRequest>,
        mut work_rx: Option<mpsc::Receiver<(String, Result<Handoff, String>)>>,
    ) {
        let hb_period = Duration::from_millis(self.cfg.heartbeat_ms);
        let mut hb = tokio::time::interval(hb_period);
        let mut tick = tokio::time::interval(hb_period / 4);
        let mut ae = tokio::time::interval(Duration::from_millis(self.cfg.anti_entropy_ms));
        for t in [&mut hb, &mut tick, &mut ae] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut stopped: Option<oneshot::Sender<()>> = None;
        // A clean shutdown handing claims back: what it waits for, who to answer, until when.
        let mut handover: Option<(Handover, oneshot::Sender<()>, tokio::time::Instant)> = None;
        let Some(mut work_rx) = work_rx.take() else {
            return;
        };
        loop {
            tokio::select! {
                done = work_rx.recv() => if let Some((claim, outcome)) = done {
                    self.jobs.remove(&claim);
                    let now = self.now_ms();
                    self.core.set_wall(wall_ms());
                    self.core.handle(now, Input::WorkFinished { claim, outcome });
                },
                ev = net_rx.recv() => match ev {
                    Some(ev) => self.on_net(ev).await,
                    None => break,
                },
                req = api_rx.recv() => match req {
                    Some(ApiRequest::Shutdown(done)) => {
                        if handover.is_some() {
                            // A second request: stop at once.
                            stopped = Some(done);
                            break;
                        }
                        let now = self.now_ms();
                        self.core.set_wall(wall_ms());
                        match self.core.begin_shutdown(now) {
                            Some(h) => {
                                tracing::info!(claims = h.released.len(), peers = h.peers.len(), "stopping: handing claims back");
                                handover = Some((h, done, tokio::time::Instant::now() + HANDOVER_MAX));
                            }
                            None => {
                                stopped = Some(done);
                                break;
                            }
                        }
                    }
                    Some(ApiRequest::Pause(d)) => {
                        tracing::warn!(?d, "node loop paused");
                        tokio::time::sleep(d).await;
                    }
                    Some(req) => self.on_api(req).await,
                    None => break,
                },
                _ = hb.tick() => self.core.heartbeat(wall_ms()),
                _ = tick.tick() => {
                    let now = self.now_ms();
                    for t in self.core.tick(now, wall_ms()) {
                        match t.to {
                            PeerState::Dead => tracing::warn!(peer = %t.peer, "peer is dead"),
                            PeerState::Suspect => tracing::info!(peer = %t.peer, "peer is suspect"),
                            PeerState::Alive => tracing::info!(peer = %t.peer, "peer is alive again"),
                        }
                    }
                }
                _ = ae.tick() => {
                    let now = self.now_ms();
                    self.core.anti_entropy(now, rand::random());
                }
                _ = sleep_until_handover(handover.as_ref().map(|h| h.2)) => {
                    tracing::warn!("stopping: not every peer synced the released claims in time; they will see them through anti-entropy or expiry");
                    if let Some((_, done, _)) = handover.take() {
                        stopped = Some(done);
                    }
                    break;
                }
            }
            self.drain_effects().await;
            self.publish_observation();
            if handover
                .as_ref()
                .is_some_and(|(h, _, _)| self.core.handed_over(h))
            {
                if let Some((h, done, _)) = handover.take() {
                    tracing::info!(claims = h.released.len(), "claims handed back; stopping");
                    stopped = Some(done);
                }
                break;
            }
        }
        self.drain_effects().await;
        for (_, t) in self.jobs.drain() {
            t.abort();
        }
        self.flush().await;
        tracing::info!("node stopped");
        if let Some(done) = stopped {
            let _ = done.send(());
        }
    }

    /// Remembers a peer's listen addresses (persisted, and redialled while alone).
    async fn remember(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let Some(store) = &self.store else { return };
        let addrs: Vec<String> = addrs
            .iter()
            .filter(|a| {
                !a.iter()
                    .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
            })
            .map(|a| a.to_string())
            .take(crate::store::MAX_PEER_ADDRS)
            .collect();
        if addrs.is_empty() {
            return;
        }
        let entry = KnownPeer {
            peer: peer.to_string(),
            addrs,
            seen_ms: wall_ms(),
        };
        let changed = self
            .known
            .get(&entry.peer)
            .is_none_or(|k| k.addrs != entry.addrs);
        self.known.insert(entry.peer.clone(), entry);
        if self.known.len() > crate::store::MAX_KNOWN_PEERS {
            if let Some(oldest) = self
                .known
                .values()
                .min_by_key(|k| k.seen_ms)
                .map(|k| k.peer.clone())
            {
                self.known.remove(&oldest);
            }
        }
        let all: Vec<KnownPeer> = self.known.values().cloned().collect();
        if let Err(e) = store.save_known_peers(&all) {
            tracing::warn!(error = %e, "cannot remember peers");
        }
        if changed {
            self.net
                .send(NetCommand::Remember(dial_addrs(&self.known)))
                .await;
        }
    }

    /// Carries out everything the core asked for.
    async fn drain_effects(&mut self) {
        while let Some(e) = self.core.poll_effect() {
            match e {
                Effect::Publish { topic, data } => {
                    self.net.send(NetCommand::Publish { topic, data }).await;
                }
                Effect::SendSync { to, data } => match to.parse::<PeerId>() {
                    Ok(peer) => {
                        self.net.send(NetCommand::SendSync { peer, data }).await;
                    }
                    Err(_) => tracing::error!(%to, "core addressed an invalid peer id"),
                },
                Effect::Respond { reply, data } => {
                    if let Some(channel) = self.replies.remove(&reply) {
                        self.net.send(NetCommand::Respond { channel, data }).await;
                    }
                }
                Effect::Persist { chunk } => self.persist(&chunk),
                Effect::PersistEvents { events } => {
                    if let Some(log) = self.event_log.as_mut() {
                        if let Err(e) = log.append(&events) {
                            tracing::error!(error = %e, "cannot persist events");
                        }
                    }
                }
                Effect::StartWork(job) => {
                    let claim = job.claim.clone();
                    let fut = self.shell.run(*job);
                    let tx = self.work_tx.clone();
                    let c = claim.clone();
                    let task = tokio::spawn(async move {
                        let outcome = fut.await;
                        let _ = tx.send((c, outcome)).await;
                    });
                    self.jobs.insert(claim, task);
                }
                Effect::CancelWork { claim } => {
                    if let Some(t) = self.jobs.remove(&claim) {
                        t.abort();
                    }
                }
            }
        }
    }

    async fn on_net(&mut self, ev: NetEvent) {
        if let NetEvent::PeerAddrs { peer, addrs } = ev {
            self.remember(peer, addrs).await;
            return;
        }
        let now = self.now_ms();
        self.core.set_wall(wall_ms());
        let input = match ev {
            NetEvent::Gossip {
                topic: Topic::Heartbeat,
                from,
                data,
            } => Input::Heartbeat {
                from: from.to_string(),
                data,
            },
            NetEvent::Gossip {
                topic: Topic::Events,
                from,
                data,
            } => Input::Event {
                from: from.to_string(),
                data,
            },
            NetEvent::SyncRequest {
                peer,
                data,
                channel,
            } => {
                let reply = self.next_reply;
                self.next_reply += 1;
                self.replies.insert(reply, channel);
                Input::SyncRequest {
                    from: peer.to_string(),
                    data,
                    reply,
                }
            }
            NetEvent::SyncResponse { peer, data } => Input::SyncResponse {
                from: peer.to_string(),
                data,
            },
            NetEvent::SyncFailed { peer, error } => {
                tracing::debug!(%peer, %error, "sync request failed");
                Input::SyncFailed {
                    from: peer.to_string(),
                }
            }
            NetEvent::Connected(p) => Input::Connected(p.to_string()),
            NetEvent::Disconnected(p) => Input::Disconnected(p.to_string()),
            NetEvent::HandshakeFailed { .. } => {
                self.core.counters_mut().handshake_failures += 1;
                return;
            }
            NetEvent::PeerAddrs { .. } => return,
            NetEvent::Listening(a) => {
                let a = a.to_string();
                if !self.listen_addrs.contains(&a) {
                    self.listen_addrs.push(a);
                }
                return;
            }
        };
        self.core.handle(now, input);
    }

    fn persist(&mut self, chunk: &[u8]) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if let Err(e) = store.append_chunk(chunk) {
            tracing::error!(error = %e, "cannot persist document change");
            return;
        }
        if store.chunks() >= u64::from(self.cfg.snapshot_every) {
            let snap = self.core.doc_mut().save();
            if let Err(e) = store.compact(&snap) {
                tracing::error!(error = %e, "snapshot failed");
            } else {
                tracing::debug!(bytes = snap.len(), "document compacted");
            }
        }
    }

    async fn flush(&self) {
        if let Some(s) = &self.store {
            if let Err(e) = s.flush().await {
                tracing::error!(error = %e, "flush failed");
            }
        }
    }

    async fn on_api(&mut self, req: ApiRequest) {
        match req {
            ApiRequest::AddStory(new, reply) => {
                let res = self.core.add_story(&new, wall_ms());
                // Acknowledge only once the change is on disk, and once observers can see
                // the new heads (a caller may wait for convergence right after).
                self.drain_effects().await;
                self.flush().await;
                self.publish_observation();
                let _ = reply.send(res.map_err(|e| e.to_string()));
            }
            ApiRequest::Status(reply) => {
                let _ = reply.send(self.status());
            }
            ApiRequest::Events(after, reply) => {
                // From the start: the whole merged history; following: what is new.
                let limit = if after == 0 { EVENT_LOG_CAPACITY } else { 1000 };
                let _ = reply.send(self.core.events_after(after, limit));
            }
            ApiRequest::AddKnowledge(kind, text, reply) => {
                let res = self.core.add_knowledge(kind, &text, wall_ms());
                self.drain_effects().await;
                self.flush().await;
                self.publish_observation();
                let _ = reply.send(res);
            }
            ApiRequest::View(reply) => {
                let _ = reply.send((*self.core.view()).clone());
            }
            ApiRequest::SetWork(on, reply) => {
                let now = self.now_ms();
                self.core.set_work(on, now, wall_ms());
                let _ = reply.send(());
            }
            ApiRequest::Runs(reply) => {
                let _ = reply.send(self.core.runs().to_vec());
            }
            // Handled by the loop itself.
            ApiRequest::Shutdown(_) | ApiRequest::Pause(_) => {}
        }
    }

    fn status(&mut self) -> StatusReport {
        let now = self.now_ms();
        let view = self.core.doc().view();
        let claims = view.claims();
        let m = &self.net.metrics;
        let mut counters = self.core.counters().clone();
        counters.bytes_in = m.bytes_in.load(Ordering::Relaxed);
        counters.bytes_out = m.bytes_out.load(Ordering::Relaxed);
        let doc = self.core.doc_mut();
        let heads = doc.heads_hex();
        let doc_bytes = doc.save().len() as u64;
        StatusReport {
            peer_id: self.core.peer().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            passive: self.core.is_passive(),
            uptime_ms: now,
            listen_addrs: self.listen_addrs.clone(),
            connected: self.core.connected().len(),
            peers: self.core.peers(now),
            story_counts: view
                .count_by_status()
                .into_iter()
                .map(|(k, v)| (k.as_str().to_string(), v))
                .collect(),
            stories: view
                .stories_ordered()
                .into_iter()
                .map(|s| StorySummary {
                    id: s.id.clone(),
                    title: s.fact.title.clone(),
                    status: s.status.as_str().to_string(),
                    priority: s.fact.priority,
                    waiting: crate::core::scheduler::waiting(&view, &claims, &s.key)
                        .filter(|w| w.is_open()),
                })
                .collect(),
            heads,
            heads_digest: hex::encode(&self.core.digest()[..8]),
            doc_bytes,
            store_bytes: self.store.as_ref().map_or(0, |s| s.size_on_disk()),
            counters,
            held: self.core.held(now),
            claims: self.core.claim_rows(now),
            joining_ms_left: self.core.joining(now),
            joined_at_ms: self.core.joined_at_ms(),
            clock: self.core.clock_skew(now),
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_handover(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Adds a story straight into the store of a node that is not running (the CLI's path
/// when no control endpoint answers). Fails clearly if the data dir is locked.
pub fn offline_add_story(
    data_dir: &std::path::Path,
    creator: &str,
    new: &NewStory,
) -> Result<StoryView, NodeError> {
    let mut store = Store::open(data_dir)?;
    let (snap, chunks) = store.load_doc()?;
    let mut actor = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut actor);
    let mut doc = Doc::load(actor, &snap, &chunks)?;
    let key = doc.add_story(new, creator, wall_ms())?;
    store.append_chunk(&doc.save_incremental())?;
    store.flush_blocking()?;
    doc.view()
        .stories
        .get(&key)
        .cloned()
        .ok_or(NodeError::Vanished)
}

/// Reads the view from the store of a node that is not running.
pub fn offline_view(data_dir: &std::path::Path) -> Result<View, NodeError> {
    let store = Store::open(data_dir)?;
    let (snap, chunks) = store.load_doc()?;
    Ok(Doc::load([0; 16], &snap, &chunks)?.view())
}
