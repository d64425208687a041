//! The node runtime: one task that owns the document, the store and the membership table,
//! feeds them network and API inputs, and carries out what they ask for. It reads the
//! clock (and passes the time into the pure core), runs the automerge sync sessions
//! (per-peer state, one active session per peer), persists every change and publishes
//! heartbeats.

use crate::codec;
use crate::config::Config;
use crate::membership::{Membership, MembershipConfig, Observed, PeerState, PeerStatus};
use crate::model::{Heartbeat, NewStory, NodeFact};
use crate::net::{self, NetClient, NetCommand, NetConfig, NetEvent, Topic};
use crate::state::{reset_sync_state, Doc, StoryView, SyncState, View};
use crate::store::{Store, StoreError};
use libp2p::{Multiaddr, PeerId};
use rand::seq::SliceRandom;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};

/// Most request/response rounds in one sync session before it is abandoned.
const MAX_SYNC_ROUNDS: u32 = 64;

/// One sync frame on the wire (inside the codec's version byte).
#[derive(Debug, Serialize, Deserialize)]
struct SyncFrame {
    /// First message of a session: the responder resets its state for us.
    start: bool,
    #[serde(with = "serde_bytes")]
    msg: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("invalid address {0}")]
    Addr(String),
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
}

/// Requests from the control API (and tests) into the node loop.
#[derive(Debug)]
pub enum ApiRequest {
    AddStory(NewStory, oneshot::Sender<Result<StoryView, String>>),
    Status(oneshot::Sender<StatusReport>),
    View(oneshot::Sender<View>),
    /// Flush everything and stop the node loop; answered once stopped.
    Shutdown(oneshot::Sender<()>),
}

/// Node-level counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    pub malformed_dropped: u64,
    pub sync_sessions_started: u64,
    pub sync_sessions_completed: u64,
    pub sync_failures: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub handshake_failures: u64,
}

/// A story line in the status report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StorySummary {
    pub id: String,
    pub title: String,
    pub status: String,
    pub priority: u32,
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
}

/// A running node, in this process.
pub struct NodeHandle {
    pub peer_id: PeerId,
    pub listen_addrs: Vec<Multiaddr>,
    observe: watch::Receiver<Observation>,
    api: mpsc::Sender<ApiRequest>,
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

    /// Stops the node cleanly: every change flushed to disk, then the tasks end.
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
    let mut doc = match &store {
        Some(s) => {
            let (snap, chunks) = s.load_doc()?;
            Doc::load(actor, &snap, &chunks)?
        }
        None => Doc::new(actor),
    };
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
    let mut rt = Runtime {
        peer: peer.clone(),
        membership: Membership::new(MembershipConfig {
            heartbeat_ms: cfg.heartbeat_ms,
            suspect_after_missed: cfg.suspect_after_missed,
            dead_after_ms: cfg.dead_after_ms,
        }),
        digest: doc.heads_digest(),
        doc,
        store,
        net: net.clone(),
        out_sync: HashMap::new(),
        in_sync: HashMap::new(),
        sessions: HashMap::new(),
        incarnation: wall_ms(),
        hb_seq: 0,
        started: Instant::now(),
        passive: opts.passive,
        counters: Counters::default(),
        listen_addrs: listen_addrs.iter().map(|a| a.to_string()).collect(),
        connected: Vec::new(),
        observe: None,
        cfg,
    };
    if !rt.passive {
        let fact = NodeFact {
            roles: rt.cfg.roles.clone(),
            capacity: rt.cfg.capacity,
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        if rt.doc.put_node(&peer, &fact) {
            rt.persist_changes();
            rt.flush().await;
        }
    }
    tracing::info!(peer = %peer, passive = rt.passive, "node started");
    let (obs_tx, obs_rx) = watch::channel(Observation {
        heads_digest: rt.digest,
        ..Default::default()
    });
    rt.observe = Some(obs_tx);
    let (api_tx, api_rx) = mpsc::channel(256);
    let task = tokio::spawn(rt.run(net_rx, api_rx));
    Ok(NodeHandle {
        peer_id: net.local_peer_id,
        listen_addrs,
        observe: obs_rx,
        api: api_tx,
        task,
        net_task,
    })
}

#[derive(Debug, Default)]
struct Session {
    rounds: u32,
    /// A newer reason to sync arrived while this session ran: run another after it.
    again: bool,
}

struct Runtime {
    peer: String,
    cfg: Config,
    membership: Membership,
    doc: Doc,
    digest: [u8; 32],
    store: Option<Store>,
    net: NetClient,
    out_sync: HashMap<PeerId, SyncState>,
    in_sync: HashMap<PeerId, SyncState>,
    sessions: HashMap<PeerId, Session>,
    incarnation: u64,
    hb_seq: u64,
    started: Instant,
    passive: bool,
    counters: Counters,
    listen_addrs: Vec<String>,
    connected: Vec<PeerId>,
    observe: Option<watch::Sender<Observation>>,
}

impl Runtime {
    /// Publishes the current observation (only when it changed).
    fn publish_observation(&self) {
        let Some(tx) = &self.observe else { return };
        let now = self.now_ms();
        let mut o = Observation {
            heads_digest: self.digest,
            connected: self.connected.len(),
            handshake_failures: self.counters.handshake_failures,
            sync_sessions_completed: self.counters.sync_sessions_completed,
            ..Default::default()
        };
        for p in self.membership.snapshot(now) {
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

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn run(
        mut self,
        mut net_rx: mpsc::Receiver<NetEvent>,
        mut api_rx: mpsc::Receiver<ApiRequest>,
    ) {
        let hb_period = Duration::from_millis(self.cfg.heartbeat_ms);
        let mut hb = tokio::time::interval(hb_period);
        let mut tick = tokio::time::interval(hb_period / 4);
        let mut ae = tokio::time::interval(Duration::from_millis(self.cfg.anti_entropy_ms));
        for t in [&mut hb, &mut tick, &mut ae] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut stopped: Option<oneshot::Sender<()>> = None;
        loop {
            tokio::select! {
                ev = net_rx.recv() => match ev {
                    Some(ev) => self.on_net(ev).await,
                    None => break,
                },
                req = api_rx.recv() => match req {
                    Some(ApiRequest::Shutdown(done)) => {
                        stopped = Some(done);
                        break;
                    }
                    Some(req) => self.on_api(req).await,
                    None => break,
                },
                _ = hb.tick() => self.heartbeat().await,
                _ = tick.tick() => {
                    let now = self.now_ms();
                    for t in self.membership.tick(now) {
                        match t.to {
                            PeerState::Dead => tracing::warn!(peer = %t.peer, "peer is dead"),
                            PeerState::Suspect => tracing::info!(peer = %t.peer, "peer is suspect"),
                            PeerState::Alive => tracing::info!(peer = %t.peer, "peer is alive again"),
                        }
                    }
                }
                _ = ae.tick() => self.anti_entropy().await,
            }
            self.publish_observation();
        }
        self.flush().await;
        tracing::info!("node stopped");
        if let Some(done) = stopped {
            let _ = done.send(());
        }
    }

    async fn heartbeat(&mut self) {
        if self.passive {
            return;
        }
        self.hb_seq += 1;
        let beat = Heartbeat {
            incarnation: self.incarnation,
            seq: self.hb_seq,
            roles: self.cfg.roles.clone(),
            free_capacity: self.cfg.capacity,
            heads_digest: self.digest,
            sent_at_ms: wall_ms(),
        };
        self.counters.heartbeats_sent += 1;
        self.net
            .send(NetCommand::Publish {
                topic: Topic::Heartbeat,
                data: codec::encode(&beat),
            })
            .await;
    }

    async fn anti_entropy(&mut self) {
        let now = self.now_ms();
        let mut candidates: Vec<PeerId> = self
            .membership
            .alive(now)
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        if candidates.is_empty() {
            candidates = self.connected.clone();
        }
        let pick = candidates.choose(&mut rand::thread_rng()).copied();
        if let Some(p) = pick {
            self.start_sync(p).await;
        }
    }

    async fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Gossip {
                topic: Topic::Heartbeat,
                from,
                data,
            } => {
                let beat: Heartbeat = match codec::decode(&data, net::MAX_GOSSIP_BYTES) {
                    Ok(b) => b,
                    Err(e) => {
                        self.counters.malformed_dropped += 1;
                        tracing::debug!(peer = %from, error = %e, "malformed heartbeat dropped");
                        return;
                    }
                };
                self.counters.heartbeats_received += 1;
                let now = self.now_ms();
                let seen = self.membership.observe(&from.to_string(), &beat, now);
                if seen == Observed::New || seen == Observed::Revived {
                    tracing::info!(peer = %from, "peer joined");
                }
                if seen != Observed::Stale && beat.heads_digest != self.digest {
                    self.start_sync(from).await;
                }
            }
            NetEvent::Gossip { .. } => {}
            NetEvent::SyncRequest {
                peer,
                data,
                channel,
            } => {
                let reply = self.answer_sync(peer, &data);
                self.net
                    .send(NetCommand::Respond {
                        channel,
                        data: reply,
                    })
                    .await;
            }
            NetEvent::SyncResponse { peer, data } => self.continue_sync(peer, &data).await,
            NetEvent::SyncFailed { peer, error } => {
                self.counters.sync_failures += 1;
                tracing::debug!(%peer, %error, "sync request failed");
                self.sessions.remove(&peer);
            }
            NetEvent::Connected(p) => {
                if !self.connected.contains(&p) {
                    self.connected.push(p);
                }
                self.start_sync(p).await;
            }
            NetEvent::Disconnected(p) => {
                self.connected.retain(|x| *x != p);
                self.sessions.remove(&p);
            }
            NetEvent::HandshakeFailed { .. } => {
                self.counters.handshake_failures += 1;
            }
            NetEvent::Listening(a) => {
                let a = a.to_string();
                if !self.listen_addrs.contains(&a) {
                    self.listen_addrs.push(a);
                }
            }
        }
    }

    /// Opens a sync session with `peer` unless one is running (then it is re-run after).
    async fn start_sync(&mut self, peer: PeerId) {
        if let Some(s) = self.sessions.get_mut(&peer) {
            s.again = true;
            return;
        }
        let state = self.out_sync.entry(peer).or_default();
        *state = reset_sync_state(state);
        let Some(msg) = self.doc.sync_generate(state) else {
            return;
        };
        self.counters.sync_sessions_started += 1;
        self.sessions.insert(peer, Session::default());
        let frame = SyncFrame { start: true, msg };
        self.net
            .send(NetCommand::SendSync {
                peer,
                data: codec::encode(&frame),
            })
            .await;
    }

    fn decode_frame(&mut self, peer: PeerId, data: &[u8]) -> Option<SyncFrame> {
        match codec::decode::<SyncFrame>(data, self.cfg.max_sync_message_bytes + 64) {
            Ok(f) => Some(f),
            Err(e) => {
                self.counters.malformed_dropped += 1;
                tracing::debug!(%peer, error = %e, "malformed sync frame dropped");
                None
            }
        }
    }

    /// Responder side: apply the peer's message, answer with ours (empty when none).
    fn answer_sync(&mut self, peer: PeerId, data: &[u8]) -> Vec<u8> {
        let Some(frame) = self.decode_frame(peer, data) else {
            return Vec::new();
        };
        let state = self.in_sync.entry(peer).or_default();
        if frame.start {
            *state = reset_sync_state(state);
        }
        if !frame.msg.is_empty() {
            match self.doc.sync_receive(state, &frame.msg) {
                Ok(true) => self.on_doc_changed(),
                Ok(false) => {}
                Err(e) => {
                    self.counters.malformed_dropped += 1;
                    tracing::debug!(%peer, error = %e, "bad sync message dropped");
                    *state = SyncState::new();
                    return Vec::new();
                }
            }
        }
        let state = self.in_sync.entry(peer).or_default();
        let msg = self.doc.sync_generate(state).unwrap_or_default();
        codec::encode(&SyncFrame { start: false, msg })
    }

    /// Initiator side: apply the answer, send the next message or end the session.
    async fn continue_sync(&mut self, peer: PeerId, data: &[u8]) {
        let Some(mut session) = self.sessions.remove(&peer) else {
            return;
        };
        let frame = if data.is_empty() {
            None
        } else {
            self.decode_frame(peer, data)
        };
        let Some(frame) = frame else {
            self.counters.sync_failures += 1;
            return;
        };
        let state = self.out_sync.entry(peer).or_default();
        if !frame.msg.is_empty() {
            match self.doc.sync_receive(state, &frame.msg) {
                Ok(true) => self.on_doc_changed(),
                Ok(false) => {}
                Err(e) => {
                    self.counters.malformed_dropped += 1;
                    tracing::debug!(%peer, error = %e, "bad sync reply dropped");
                    return;
                }
            }
        }
        let state = self.out_sync.entry(peer).or_default();
        match self.doc.sync_generate(state) {
            Some(msg) if session.rounds < MAX_SYNC_ROUNDS => {
                session.rounds += 1;
                self.sessions.insert(peer, session);
                self.net
                    .send(NetCommand::SendSync {
                        peer,
                        data: codec::encode(&SyncFrame { start: false, msg }),
                    })
                    .await;
            }
            Some(_) => {
                tracing::warn!(%peer, "sync session exceeded {MAX_SYNC_ROUNDS} rounds; abandoned");
            }
            None => {
                self.counters.sync_sessions_completed += 1;
                if session.again {
                    self.start_sync(peer).await;
                }
            }
        }
    }

    /// The document changed (locally or from a peer): persist and refresh the digest.
    fn on_doc_changed(&mut self) {
        self.persist_changes();
        self.digest = self.doc.heads_digest();
    }

    fn persist_changes(&mut self) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let chunk = self.doc.save_incremental();
        if let Err(e) = store.append_chunk(&chunk) {
            tracing::error!(error = %e, "cannot persist document change");
            return;
        }
        if store.chunks() >= u64::from(self.cfg.snapshot_every) {
            let snap = self.doc.save();
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
                let res = if self.passive {
                    Err("this node is a passive observer and never writes".to_string())
                } else {
                    match self.doc.add_story(&new, &self.peer, wall_ms()) {
                        Ok(key) => {
                            self.on_doc_changed();
                            // Acknowledge only once the change is on disk.
                            self.flush().await;
                            // Announce the new heads now rather than at the next beat.
                            self.heartbeat().await;
                            self.doc
                                .view()
                                .stories
                                .get(&key)
                                .cloned()
                                .ok_or_else(|| "story vanished after write".to_string())
                        }
                        Err(e) => Err(e.to_string()),
                    }
                };
                let _ = reply.send(res);
            }
            ApiRequest::Status(reply) => {
                let _ = reply.send(self.status());
            }
            ApiRequest::View(reply) => {
                let _ = reply.send(self.doc.view());
            }
            // Handled by the loop itself.
            ApiRequest::Shutdown(_) => {}
        }
    }

    fn status(&mut self) -> StatusReport {
        let now = self.now_ms();
        let view = self.doc.view();
        let m = &self.net.metrics;
        let mut counters = self.counters.clone();
        counters.bytes_in = m.bytes_in.load(Ordering::Relaxed);
        counters.bytes_out = m.bytes_out.load(Ordering::Relaxed);
        StatusReport {
            peer_id: self.peer.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            passive: self.passive,
            uptime_ms: now,
            listen_addrs: self.listen_addrs.clone(),
            connected: self.connected.len(),
            peers: self.membership.snapshot(now),
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
                })
                .collect(),
            heads: self.doc.heads_hex(),
            heads_digest: hex::encode(&self.digest[..8]),
            doc_bytes: self.doc.save().len() as u64,
            store_bytes: self.store.as_ref().map_or(0, |s| s.size_on_disk()),
            counters,
        }
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
        .ok_or_else(|| NodeError::Addr("story vanished after write".into()))
}

/// Reads the view from the store of a node that is not running.
pub fn offline_view(data_dir: &std::path::Path) -> Result<View, NodeError> {
    let store = Store::open(data_dir)?;
    let (snap, chunks) = store.load_doc()?;
    Ok(Doc::load([0; 16], &snap, &chunks)?.view())
}
