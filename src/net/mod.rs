//! The network shell: one task owns the libp2p `Swarm`; everything else talks to it
//! through a bounded [`NetCommand`] channel and hears from it through [`NetEvent`]s.
//!
//! Transport: TCP, then (optionally) the libp2p private-network handshake with the mesh's
//! pre-shared key, then noise and yamux. Behaviours: gossipsub (heartbeat and event
//! topics), identify + kademlia (a node that knows one peer learns the rest), a
//! request-response protocol that carries automerge sync messages, another for membership
//! probes (`probe`), and connection
//! limits. Every inbound size is capped here or in `codec`; this module never decodes
//! application payloads and never panics on what a peer sends.

use futures::StreamExt;
use libp2p::core::upgrade;
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::pnet::PreSharedKey;
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    allow_block_list, connection_limits, identify, kad, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

mod codec;
mod gossip;
mod probe;
mod transport;
#[doc(hidden)]
pub use codec::read_frame;
use codec::SyncCodec;
pub use probe::PROBE_PROTOCOL;
use transport::build_transport;

pub const HEARTBEAT_TOPIC: &str = "mesh-agent/heartbeat/1";
pub const EVENTS_TOPIC: &str = "mesh-agent/events/1";
pub const SYNC_PROTOCOL: &str = "/mesh-agent/sync/1";
pub const KAD_PROTOCOL: &str = "/mesh-agent/kad/1";
pub const IDENTIFY_PROTOCOL: &str = "/mesh-agent/id/1";
/// Cap on one gossip message (heartbeat or event).
pub const MAX_GOSSIP_BYTES: usize = 64 * 1024;
/// Concurrent sync streams (inbound + outbound) per connection. The core runs at most
/// one sync session per peer at a time in each direction, and a session has one request
/// in flight (the next round waits for the answer): two streams, plus slack for a
/// timed-out stream that is still closing while the next session starts. A peer that
/// opens more is refused (its extra inbound streams are dropped, our extra outbound
/// requests fail as `SyncFailed`), so one peer cannot hold hundreds of frame buffers.
pub const SYNC_STREAMS_PER_CONNECTION: usize = 8;
/// Concurrent yamux streams per connection, every protocol together: gossipsub (one
/// each way), identify (one each way, plus pushes), probes (one or two), kademlia (a few
/// queries in flight), and the sync streams above. 32 leaves room for bursts of
/// kademlia queries; yamux's default (512) let one peer open hundreds of streams, each
/// with its own receive window.
pub const YAMUX_STREAMS_PER_CONNECTION: usize = 32;

/// Counters shared by the network task and whoever reports on it.
#[derive(Debug, Default)]
pub struct NetMetrics {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub oversized_dropped: AtomicU64,
    pub sync_failures: AtomicU64,
    /// Sync frames' bytes (length prefix included, before encryption and muxing).
    pub sync_bytes_in: AtomicU64,
    pub sync_bytes_out: AtomicU64,
}

pub use crate::core::model::Topic;

fn ident(t: Topic) -> IdentTopic {
    IdentTopic::new(match t {
        Topic::Heartbeat => HEARTBEAT_TOPIC,
        Topic::Events => EVENTS_TOPIC,
    })
}

pub struct NetConfig {
    pub keypair: libp2p::identity::Keypair,
    pub psk: Option<PreSharedKey>,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub max_sync_bytes: usize,
    pub max_peers: u32,
    pub request_timeout: Duration,
    /// Test hook: the author this node's gossip names (a forger); `None`: its own id.
    pub gossip_author: Option<PeerId>,
}

/// Commands into the network task.
#[derive(Debug)]
pub enum NetCommand {
    Publish {
        topic: Topic,
        data: Vec<u8>,
    },
    /// Sends one sync request; the answer arrives as [`NetEvent::SyncResponse`] or
    /// [`NetEvent::SyncFailed`].
    SendSync {
        peer: PeerId,
        data: Vec<u8>,
    },
    Respond {
        channel: ResponseChannel<Vec<u8>>,
        data: Vec<u8>,
    },
    /// Sends one probe; the answer arrives as [`NetEvent::ProbeAnswer`] (or, when it
    /// cannot be delivered, [`NetEvent::ProbeFailed`]).
    Probe {
        peer: PeerId,
        data: Vec<u8>,
    },
    ProbeAnswer {
        channel: ResponseChannel<Vec<u8>>,
        data: Vec<u8>,
    },
    Dial(Multiaddr),
    /// Looks for peers this node does not know (a kademlia bootstrap).
    Discover,
    /// Blocks (true) or unblocks (false) a peer: while blocked, its connections close
    /// and new ones are denied (a partition for tests and chaos drills).
    Block(PeerId, bool),
    /// Refuses (true) a peer that is not on the mesh's roster, or accepts it again
    /// (false): blocked like `Block`, kept apart from a test's partitions.
    Refuse(PeerId, bool),
    /// Replaces the remembered peers' addresses (with `/p2p/<peer>`) dialled, with the
    /// bootstrap addresses, while this node has no connection.
    Remember(Vec<Multiaddr>),
    Info(oneshot::Sender<NetInfo>),
}

/// What the network task reports about itself.
#[derive(Debug, Clone, Default)]
pub struct NetInfo {
    pub listen_addrs: Vec<Multiaddr>,
    pub connected: Vec<PeerId>,
}

/// Events out of the network task.
#[derive(Debug)]
pub enum NetEvent {
    Listening(Multiaddr),
    Gossip {
        topic: Topic,
        from: PeerId,
        data: Vec<u8>,
    },
    SyncRequest {
        peer: PeerId,
        data: Vec<u8>,
        channel: ResponseChannel<Vec<u8>>,
    },
    SyncResponse {
        peer: PeerId,
        data: Vec<u8>,
    },
    SyncFailed {
        peer: PeerId,
        error: String,
    },
    Probe {
        peer: PeerId,
        data: Vec<u8>,
        channel: ResponseChannel<Vec<u8>>,
    },
    ProbeAnswer {
        peer: PeerId,
        data: Vec<u8>,
    },
    ProbeFailed {
        peer: PeerId,
        error: String,
    },
    Connected(PeerId),
    Disconnected(PeerId),
    /// A peer told us (identify) the addresses it listens on.
    PeerAddrs {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    /// A connection failed in the secure handshake (most likely a mesh key mismatch).
    HandshakeFailed {
        who: String,
        error: String,
    },
}

/// Cheap handle to the network task.
#[derive(Clone, Debug)]
pub struct NetClient {
    tx: mpsc::Sender<NetCommand>,
    pub local_peer_id: PeerId,
    pub metrics: Arc<NetMetrics>,
}

impl NetClient {
    /// Sends a command; returns false if the network task is gone.
    pub async fn send(&self, cmd: NetCommand) -> bool {
        self.tx.send(cmd).await.is_ok()
    }

    pub async fn info(&self) -> NetInfo {
        let (tx, rx) = oneshot::channel();
        if !self.send(NetCommand::Info(tx)).await {
            return NetInfo::default();
        }
        rx.await.unwrap_or_default()
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    sync: request_response::Behaviour<SyncCodec>,
    probe: probe::Probe,
}

/// An error and all its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network setup failed: {0}")]
    Setup(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
}

fn build_swarm(cfg: &NetConfig, metrics: Arc<NetMetrics>) -> Result<Swarm<Behaviour>, NetError> {
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let psk = cfg.psk;
    let max_sync = cfg.max_sync_bytes;
    let max_peers = cfg.max_peers;
    let timeout = cfg.request_timeout;
    let codec_metrics = metrics.clone();
    let probe_metrics = metrics.clone();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone())
        .with_tokio()
        .with_other_transport(|key| {
            build_transport(key, psk, metrics)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .map_err(|e| setup(&e))?
        .with_behaviour(|key| {
            let local = key.public().to_peer_id();
            let gossip_cfg = gossip::config()?;
            let gossipsub = gossipsub::Behaviour::new(
                MessageAuthenticity::Author(cfg.gossip_author.unwrap_or(local)),
                gossip_cfg,
            )?;
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_push_listen_addr_updates(true),
            );
            let mut kad_cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
            // A bootstrap on the first connection, then only when a peer counts more
            // members than this node knows (`Effect::Discover`): a periodic one (every
            // 30 s) cost each node ~20 KB/s at 30 nodes, ten times all else when idle.
            kad_cfg.set_periodic_bootstrap_interval(None);
            let mut kad =
                kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), kad_cfg);
            kad.set_mode(Some(kad::Mode::Server));
            let sync = request_response::Behaviour::with_codec(
                SyncCodec {
                    max: max_sync,
                    metrics: codec_metrics,
                },
                [(StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(timeout)
                    .with_max_concurrent_streams(SYNC_STREAMS_PER_CONNECTION),
            );
            let limits = connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established(Some(max_peers * 2))
                    .with_max_established_per_peer(Some(2))
                    .with_max_pending_incoming(Some(max_peers))
                    .with_max_pending_outgoing(Some(max_peers)),
            );
            Ok(Behaviour {
                limits,
                blocked: allow_block_list::Behaviour::default(),
                gossipsub,
                identify,
                kad,
                sync,
                probe: probe::behaviour(probe_metrics),
            })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| {
            // Every node of the mesh speaks what another proposes, so a substream's first
            // message rides with the proposal instead of a round trip after it (V1Lazy;
            // a claim's settle waits on sync requests).
            c.with_idle_connection_timeout(Duration::from_secs(60))
                .with_substream_upgrade_protocol_override(upgrade::Version::V1Lazy)
        })
        .build();
    Ok(swarm)
}

/// Starts the network task. Returns once every listen address is bound.
pub async fn spawn(
    cfg: NetConfig,
) -> Result<
    (
        NetClient,
        mpsc::Receiver<NetEvent>,
        tokio::task::JoinHandle<()>,
    ),
    NetError,
> {
    let metrics = Arc::new(NetMetrics::default());
    let mut swarm = build_swarm(&cfg, metrics.clone())?;
    for t in [Topic::Heartbeat, Topic::Events] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&ident(t))
            .map_err(|e| NetError::Setup(e.to_string()))?;
    }
    let (ev_tx, ev_rx) = mpsc::channel(4096);
    for addr in &cfg.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
    }
    // Wait until every listener is bound (or failed), so callers can print real ports.
    let mut listening = Vec::new();
    while listening.len() < cfg.listen.len() {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                listening.push(address.clone());
                let _ = ev_tx.try_send(NetEvent::Listening(address));
            }
            SwarmEvent::ListenerClosed { reason, .. } => {
                return Err(NetError::Listen {
                    addr: cfg.listen[0].clone(),
                    reason: format!("{reason:?}"),
                });
            }
            SwarmEvent::ListenerError { error, .. } => {
                return Err(NetError::Listen {
                    addr: cfg.listen[0].clone(),
                    reason: error.to_string(),
                });
            }
            _ => {}
        }
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let local_peer_id = *swarm.local_peer_id();
    let client = NetClient {
        tx: cmd_tx,
        local_peer_id,
        metrics: metrics.clone(),
    };
    let lp = EventLoop {
        swarm,
        cmd_rx,
        ev_tx,
        bootstrap: cfg.bootstrap,
        remembered: Vec::new(),
        max_peers: cfg.max_peers as usize,
        metrics,
        connected: HashMap::new(),
        lost_brief: false,
        refused: HashSet::new(),
        test_blocked: HashSet::new(),
    };
    let handle = tokio::spawn(lp.run());
    Ok((client, ev_rx, handle))
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    cmd_rx: mpsc::Receiver<NetCommand>,
    ev_tx: mpsc::Sender<NetEvent>,
    bootstrap: Vec<Multiaddr>,
    /// Remembered peers (from the node's store), dialled like bootstrap addresses.
    remembered: Vec<Multiaddr>,
    max_peers: usize,
    metrics: Arc<NetMetrics>,
    /// Connected peers, and when each one's first connection opened.
    connected: HashMap<PeerId, Instant>,
    /// The last peer lost had been connected for less than [`BRIEF`]: it closes this
    /// node's connections at once (a closed mesh refusing a non-member, a revoked node).
    lost_brief: bool,
    /// Peers refused as not on the roster (the core decides), and peers blocked by a
    /// test's partition: a peer is blocked while it is in either.
    refused: HashSet<PeerId>,
    test_blocked: HashSet<PeerId>,
}

/// Redial backoff while this node has no connection: from the first to the last.
pub const REDIAL_FIRST: Duration = Duration::from_millis(250);
pub const REDIAL_MAX: Duration = Duration::from_secs(5);
/// A connection closed sooner than this was refused, not lost: its peer is not dialled
/// again at once (kademlia forgets it; the redial backoff goes on doubling). Dialled at
/// once, a refusing peer took ~400 connections a second (3.4 MB sent in 10 s).
pub const BRIEF: Duration = Duration::from_secs(2);

impl EventLoop {
    async fn run(mut self) {
        self.dial_bootstrap();
        // While alone, redial every bootstrap and remembered address with backoff
        // (250 ms doubling to 5 s); any connection resets it.
        let mut backoff = REDIAL_FIRST;
        let mut next = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(cmd) => self.handle_command(cmd),
                    None => break,
                },
                ev = self.swarm.select_next_some() => {
                    let lost_all = matches!(
                        &ev,
                        SwarmEvent::ConnectionClosed { num_established: 0, .. }
                    );
                    self.handle_event(ev).await;
                    if lost_all && self.connected.is_empty() && !self.lost_brief {
                        backoff = REDIAL_FIRST;
                        next = tokio::time::Instant::now() + backoff;
                    }
                }
                _ = tokio::time::sleep_until(next) => {
                    if self.connected.is_empty() {
                        self.dial_bootstrap();
                        next = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(REDIAL_MAX);
                    } else {
                        backoff = REDIAL_FIRST;
                        next = tokio::time::Instant::now() + REDIAL_MAX;
                    }
                }
            }
        }
        tracing::debug!("network task stopped");
    }

    fn dial_bootstrap(&mut self) {
        for addr in self.bootstrap.clone() {
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
            }
        }
        for addr in self.remembered.clone() {
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "cannot dial remembered peer");
            }
        }
    }

    fn handle_command(&mut self, cmd: NetCommand) {
        let b = self.swarm.behaviour_mut();
        match cmd {
            NetCommand::Publish { topic, data } => {
                if let Err(e) = b.gossipsub.publish(ident(topic), data) {
                    // No subscribed peers yet, or a duplicate: gossip is best effort and
                    // the automerge sync is the reliable path.
                    tracing::trace!(?topic, error = %e, "publish skipped");
                }
            }
            NetCommand::SendSync { peer, data } => {
                b.sync.send_request(&peer, data);
            }
            NetCommand::Respond { channel, data } => {
                if b.sync.send_response(channel, data).is_err() {
                    tracing::debug!("sync response dropped: requester gone");
                }
            }
            NetCommand::Probe { peer, data } => {
                b.probe.send_request(&peer, data);
            }
            NetCommand::ProbeAnswer { channel, data } => {
                let _ = b.probe.send_response(channel, data);
            }
            NetCommand::Discover => {
                if let Err(e) = b.kad.bootstrap() {
                    tracing::debug!(error = %e, "no peer to look for the rest of the mesh through");
                }
            }
            NetCommand::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::warn!(%addr, error = %e, "dial failed");
                }
            }
            NetCommand::Block(peer, true) => {
                tracing::info!(%peer, "peer blocked: its connections close");
                self.test_blocked.insert(peer);
                b.blocked.block_peer(peer);
            }
            NetCommand::Block(peer, false) => {
                tracing::info!(%peer, "peer unblocked");
                self.test_blocked.remove(&peer);
                if !self.refused.contains(&peer) {
                    b.blocked.unblock_peer(peer);
                }
            }
            NetCommand::Refuse(peer, true) => {
                self.refused.insert(peer);
                b.blocked.block_peer(peer);
            }
            NetCommand::Refuse(peer, false) => {
                self.refused.remove(&peer);
                if !self.test_blocked.contains(&peer) {
                    b.blocked.unblock_peer(peer);
                }
            }
            NetCommand::Remember(addrs) => {
                let me = *self.swarm.local_peer_id();
                self.remembered = addrs
                    .into_iter()
                    .filter(|a| !a.iter().any(|p| p == libp2p::multiaddr::Protocol::P2p(me)))
                    .collect();
                if self.connected.is_empty() {
                    for addr in self.remembered.clone() {
                        if let Err(e) = self.swarm.dial(addr.clone()) {
                            tracing::debug!(%addr, error = %e, "cannot dial remembered peer");
                        }
                    }
                }
            }
            NetCommand::Info(tx) => {
                let _ = tx.send(NetInfo {
                    listen_addrs: self.swarm.listeners().cloned().collect(),
                    connected: self.connected.keys().copied().collect(),
                });
            }
        }
    }

    async fn emit(&mut self, ev: NetEvent) {
        // Bounded: if the node loop is far behind we wait, which backpressures the swarm.
        let _ = self.ev_tx.send(ev).await;
    }

    async fn handle_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.emit(NetEvent::Listening(address)).await;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if num_established.get() == 1 {
                    tracing::info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "peer connected");
                    self.connected.insert(peer_id, Instant::now());
                    self.emit(NetEvent::Connected(peer_id)).await;
                }
                if endpoint.is_dialer() {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, endpoint.get_remote_address().clone());
                    if self.connected.len() == 1 {
                        let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                tracing::info!(peer = %peer_id, "peer disconnected");
                let up = self.connected.remove(&peer_id);
                self.lost_brief = up.is_some_and(|t| t.elapsed() < BRIEF);
                if self.lost_brief {
                    // Kademlia would dial it again at once (its queries, the
                    // routing update): it comes back only through a later dial.
                    self.swarm.behaviour_mut().kad.remove_peer(&peer_id);
                }
                self.emit(NetEvent::Disconnected(peer_id)).await;
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                let who = peer_id.map_or_else(|| "unknown peer".to_string(), |p| p.to_string());
                self.connection_error(who, error_chain(&error)).await;
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                self.connection_error(send_back_addr.to_string(), error_chain(&error))
                    .await;
            }
            SwarmEvent::Behaviour(ev) => self.handle_behaviour(ev).await,
            _ => {}
        }
    }

    async fn connection_error(&mut self, who: String, error: String) {
        let lower = error.to_lowercase();
        // A refused or reset TCP connection is a down peer, not a key mismatch.
        let unreachable = lower.contains("connection refused") || lower.contains("timed out");
        if !unreachable
            && (lower.contains("negotiate transport")
                || lower.contains("noise")
                || lower.contains("handshake")
                || lower.contains("decrypt")
                || lower.contains("multistream")
                || lower.contains("protocol negotiation")
                || lower.contains("invalid data"))
        {
            self.metrics
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                peer = %who,
                error,
                "connection refused during the secure handshake: the pre-shared mesh keys differ (or one side has none); check psk_file on both nodes"
            );
            self.emit(NetEvent::HandshakeFailed { who, error }).await;
        } else {
            tracing::debug!(peer = %who, error, "connection failed");
        }
    }

    async fn handle_behaviour(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                message_id,
                propagation_source,
            }) => {
                // Never forwarded (`gossip.rs`): handled here, then ignored.
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        gossipsub::MessageAcceptance::Ignore,
                    );
                let topic = if message.topic == ident(Topic::Heartbeat).hash() {
                    Topic::Heartbeat
                } else if message.topic == ident(Topic::Events).hash() {
                    Topic::Events
                } else {
                    return;
                };
                // The link authenticates the author: nothing is relayed (`gossip.rs`).
                let Some(from) = message.source.filter(|s| *s == propagation_source) else {
                    tracing::debug!(peer = %propagation_source, "gossip not from its author dropped");
                    return;
                };
                self.emit(NetEvent::Gossip {
                    topic,
                    from,
                    data: message.data,
                })
                .await;
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            }) => {
                // Gossip this node could not hand to the peer's connection in time (beats, events).
                tracing::warn!(peer = %peer_id, ?failed_messages, "gossip to a slow peer dropped");
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                for addr in &info.listen_addrs {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, addr.clone());
                }
                self.emit(NetEvent::PeerAddrs {
                    peer: peer_id,
                    addrs: info.listen_addrs,
                })
                .await;
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, .. })
                if !self.connected.contains_key(&peer) && self.connected.len() < self.max_peers =>
            {
                let _ = self.swarm.dial(peer);
            }
            BehaviourEvent::Sync(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        self.emit(NetEvent::SyncRequest {
                            peer,
                            data: request,
                            channel,
                        })
                        .await;
                    }
                    request_response::Message::Response { response, .. } => {
                        self.emit(NetEvent::SyncResponse {
                            peer,
                            data: response,
                        })
                        .await;
                    }
                }
            }
            BehaviourEvent::Sync(request_response::Event::OutboundFailure {
                peer, error, ..
            }) => {
                self.metrics.sync_failures.fetch_add(1, Ordering::Relaxed);
                self.emit(NetEvent::SyncFailed {
                    peer,
                    error: error.to_string(),
                })
                .await;
            }
            BehaviourEvent::Sync(request_response::Event::InboundFailure {
                peer, error, ..
            }) => {
                self.metrics.sync_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, %error, "inbound sync failed");
            }
            BehaviourEvent::Probe(ev) => {
                if let Some(ev) = probe::event(ev) {
                    self.emit(ev).await;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
