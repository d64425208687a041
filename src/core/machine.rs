//! The node's pure core: the document, membership and the automerge sync sessions, as a
//! state machine. Inputs come in with the time (`now_ms`, the node's monotonic clock)
//! through [`Core::handle`] and friends; effects (messages to send, bytes to persist) go
//! out through [`Core::poll_effect`]. It never reads a clock, never does I/O and never
//! draws randomness: the shells (`node`, and the deterministic simulator in tests) carry
//! the effects out.
//!
//! Sync protocol (per peer, per direction): the initiator resets its sync state, sends
//! `SyncFrame { start: true }`; the responder resets its own state for that peer on
//! `start`, applies the message and answers with its own; the initiator applies the
//! answer and sends the next message until automerge has nothing more to say. One session
//! per peer at a time; a reason to sync that arrives mid-session runs one more after it.
//!
//! Eager push: after a local write the core opens a session with every alive peer, and
//! the first frame carries this node's own changes the peer has not acknowledged
//! (`push`), so the peer applies them before answering and one round trip usually ends
//! the exchange. Heartbeat digests are only the backstop: a peer whose digest differs
//! from ours on two beats in a row, unchanged, gets a session.
//!
//! Settle evidence: a claim is settled with a peer once a sync message from that peer
//! shows heads that contain the claim's change and that this node fully has: the peer
//! had the claim, and we have every claim the peer wrote before it (any it writes later
//! sees ours).

use crate::core::codec;
use crate::core::lease::{
    claim_id, resource_free, ClaimFact, Claims, CoChange, LeaseConfig, LeaseObserver, ReleaseFact,
    ReleaseReason, Resource,
};
use crate::core::membership::{
    Membership, MembershipConfig, Observed, PeerState, PeerStatus, Transition,
};
use crate::core::model::{
    Event, EventKind, Handoff, Heartbeat, KnowledgeFact, MergeFact, NewStory, NodeFact, Phase,
    ResultFact, StoryFact, StoryStatus, Topic, Verdict, MAX_TAKEOVERS,
};
use crate::core::scheduler;
use crate::core::state::{
    relevant_knowledge, reset_sync_state, ChangeHash, Doc, StateError, StoryView, SyncState, View,
};
use crate::core::timeline::{
    accept_remote, EventsHave, Timeline, LOCAL_SEQ_BIT, MAX_EVENTS_PER_FRAME,
};

/// Most knowledge entries handed to one job.
pub const MAX_JOB_KNOWLEDGE: usize = 12;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Most request/response rounds in one sync session before it is abandoned.
pub const MAX_SYNC_ROUNDS: u32 = 64;
/// Cap on one gossip message (heartbeat or event).
pub const MAX_GOSSIP_BYTES: usize = 64 * 1024;

/// One sync frame on the wire (inside the codec's version byte).
#[derive(Debug, Serialize, Deserialize)]
pub struct SyncFrame {
    /// First message of a session: the responder resets its state for us.
    pub start: bool,
    #[serde(with = "serde_bytes")]
    pub msg: Vec<u8>,
    /// The sender's own changes the receiver may lack (first frame only), applied
    /// before `msg`.
    pub push: Vec<serde_bytes::ByteBuf>,
    /// First frame only: the sender asks for the events it lacks (see `timeline`).
    pub events_have: Option<EventsHave>,
    /// In an answer: events the requester lacked, oldest first.
    pub events: Vec<Event>,
    /// In an answer: more events remain for the requester (it asks again).
    pub events_more: bool,
}

impl SyncFrame {
    /// A frame carrying only an automerge message.
    fn msg(start: bool, msg: Vec<u8>) -> SyncFrame {
        SyncFrame {
            start,
            msg,
            push: Vec::new(),
            events_have: None,
            events: Vec::new(),
            events_more: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub membership: MembershipConfig,
    pub roles: Vec<String>,
    pub capacity: u32,
    /// Per-role concurrency (roles not listed may use the whole capacity).
    pub role_limits: BTreeMap<String, u32>,
    pub max_sync_bytes: usize,
    /// A passive observer never writes to the document and never heartbeats.
    pub passive: bool,
    pub lease: LeaseConfig,
    /// Whether this node claims work at all (tests and observers may not).
    pub work: bool,
    /// Test hook: start work at settle without checking the claim wins. Exists only so
    /// the simulator can prove it catches a broken winner rule; never set it otherwise.
    #[doc(hidden)]
    pub broken_winner_rule: bool,
    /// Raise a `stalled` event for a story that made no progress for this long (0: never).
    pub stall_after_ms: u64,
}

/// Inputs from the network. Peers are identified by their peer id string.
#[derive(Debug)]
pub enum Input {
    Heartbeat {
        from: String,
        data: Vec<u8>,
    },
    SyncRequest {
        from: String,
        data: Vec<u8>,
        reply: u64,
    },
    SyncResponse {
        from: String,
        data: Vec<u8>,
    },
    SyncFailed {
        from: String,
    },
    /// A message on the events topic.
    Event {
        from: String,
        data: Vec<u8>,
    },
    Connected(String),
    Disconnected(String),
    /// The executor finished a job (or failed it, with a reason).
    WorkFinished {
        claim: String,
        outcome: Result<Handoff, String>,
    },
}

/// A job for an executor: one phase of one story under one claim. Serialised as JSON
/// for external executors (the `command` executor writes it to a file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    pub claim: String,
    /// The story's document key (`S-0042@tag`).
    pub story: String,
    /// The story's display id (`S-0042`).
    pub display_id: String,
    pub phase: Phase,
    /// Review/rework/merge round (0 until a review rejects or a merge needs rework).
    pub round: u32,
    /// The fencing token of the story-phase resource.
    pub token: u64,
    pub attempt: u32,
    pub fact: StoryFact,
    /// The counted results of earlier phases, in pipeline order.
    pub handoffs: Vec<ResultFact>,
    /// File locks held with this claim.
    pub files: Vec<String>,
    /// Knowledge entries relevant to this story, most relevant first.
    pub knowledge: Vec<crate::core::model::KnowledgeFact>,
    /// Why earlier attempts at this phase failed, oldest first.
    pub failures: Vec<String>,
}

/// What the core asks its shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Publish {
        topic: Topic,
        data: Vec<u8>,
    },
    SendSync {
        to: String,
        data: Vec<u8>,
    },
    /// Answer the sync request that came with `reply`.
    Respond {
        reply: u64,
        data: Vec<u8>,
    },
    /// Append these document bytes to durable storage.
    Persist {
        chunk: Vec<u8>,
    },
    /// Add these events to the durable event log (no flush needed: progress, not facts).
    PersistEvents {
        events: Vec<Event>,
    },
    /// A claim settled and won: run the job.
    StartWork(Box<Job>),
    /// The claim was lost (taken over after expiry, or released): stop the job.
    CancelWork {
        claim: String,
    },
}

/// The state of a claim this node wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LocalState {
    /// Written; waiting to sync with every alive peer (or the settle timeout).
    Settling {
        mark: u64,
        waiting: BTreeSet<String>,
        deadline_ms: u64,
        /// The change that wrote the claim (settle evidence: a peer's heads contain it).
        change: Option<ChangeHash>,
    },
    /// Settled and winning: the executor runs it.
    Running,
}

#[derive(Debug, Clone)]
struct LocalClaim {
    story: String,
    phase: Phase,
    round: u32,
    state: LocalState,
    written_ms: u64,
}

/// A claim this node holds, for status output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldClaim {
    pub claim: String,
    pub story: String,
    pub phase: Phase,
    pub running: bool,
    pub age_ms: u64,
}

/// One active claim in the mesh, for `status` and `claims`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRow {
    pub claim: String,
    pub holder: String,
    /// `resource=token` for each resource.
    pub resources: Vec<String>,
    pub attempt: u32,
    /// Since this node first saw the claim.
    pub age_ms: u64,
    /// Since the last renewal this node saw.
    pub renewed_ago_ms: u64,
    /// Left until the lease expires on this node's clock (0: expired).
    pub expires_in_ms: u64,
    /// Holds every resource it names (false: it lost one and will be released).
    pub holds: bool,
}

/// A claim this node settled and ran (for tests and the simulator's invariants).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub claim: String,
    pub story: String,
    pub phase: Phase,
    pub round: u32,
    pub token: u64,
    /// Core clock when the claim settled and work started.
    pub started_ms: u64,
    /// Core clock when this node wrote the claim: `started_ms - claimed_ms` is the
    /// write → settled latency.
    pub claimed_ms: u64,
}

/// The guards against claiming from a partial picture of the mesh, set by the shell
/// (off by default: the simulator drives cores without them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Guards {
    /// Joining: a node that knows of a mesh (it remembers peers, or its document names
    /// other nodes) claims nothing until it completed a sync with a peer, or until this
    /// long after its first tick (so a mesh of one still works). 0: no wait.
    pub join_wait_ms: u64,
    /// The shell remembers peers from an earlier run.
    pub remembers_peers: bool,
    /// Compare this node's wall clock with its peers' heartbeats and claim nothing while
    /// it is off the mesh median by more than `max_clock_drift_ms`.
    pub clock_skew: bool,
}

/// This node's wall clock against its alive peers' (from their heartbeats).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockSkew {
    /// Median over alive peers of (our wall clock at receipt − the beat's send time),
    /// per peer the smallest of its last [`CLOCK_SAMPLES`] beats: our offset plus the
    /// one-way delay. None without samples.
    pub median_ms: Option<i64>,
    /// Alive peers with a sample.
    pub peers: usize,
    /// Beyond the bound (allowing up to `message_timeout_ms` of one-way delay) with at
    /// least two peers agreeing: with one peer there is no telling which clock is wrong.
    pub skewed: bool,
    /// The bound: `max_clock_drift_ms`.
    pub bound_ms: u64,
}

/// What a clean shutdown waits for: the peers the releases were pushed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// Sessions at or after this mark carry the releases.
    pub mark: u64,
    pub peers: Vec<String>,
    /// The claims handed back.
    pub released: Vec<String>,
}

/// Core-level counters.
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

#[derive(Debug)]
struct Session {
    /// Sequence number of this session (for "synced since" questions).
    id: u64,
    rounds: u32,
    /// A newer reason to sync arrived while this session ran: run another after it.
    again: bool,
    /// That next session carries an eager push.
    again_push: bool,
    /// The highest own change sequence number this session pushed.
    pushed_upto: u64,
}

pub struct Core {
    peer: String,
    cfg: CoreConfig,
    doc: Doc,
    digest: [u8; 32],
    membership: Membership,
    out_sync: BTreeMap<String, SyncState>,
    in_sync: BTreeMap<String, SyncState>,
    sessions: BTreeMap<String, Session>,
    next_session: u64,
    /// Per peer, the id of the last session that completed.
    completed: BTreeMap<String, u64>,
    /// Per peer, the highest own change sequence number it is known to have.
    push_acked: BTreeMap<String, u64>,
    /// A local write happened: push it to every alive peer before the next effect.
    push_pending: bool,
    /// A sync message was handled and the settle check and claim-on-news it may call for
    /// wait until the effects it produced (the reply, the next round) are out: the
    /// digest before the first such message. See [`Core::poll_effect`].
    news_before: Option<[u8; 32]>,
    /// Per peer, a heartbeat digest that differed from ours (sync if the next is the same).
    hb_mismatch: BTreeMap<String, [u8; 32]>,
    connected: BTreeSet<String>,
    incarnation: u64,
    hb_seq: u64,
    /// The latest time the core was given (for calls that carry no time).
    last_now: u64,
    /// When the claim machinery first ran (warm-up starts there).
    started_ms: Option<u64>,
    /// The previous tick, to notice that this node itself stalled.
    last_tick_ms: Option<u64>,
    counters: Counters,
    effects: VecDeque<Effect>,
    view: Option<([u8; 32], Arc<View>, Arc<Claims>)>,
    observer: LeaseObserver,
    local: BTreeMap<String, LocalClaim>,
    next_claim: u64,
    cochange: CoChange,
    runs: Vec<RunRecord>,
    /// The latest wall clock the core was given (ms since the epoch): for timestamps on
    /// facts and events only, never for decisions.
    last_wall: u64,
    /// The event timeline: this node's events and every peer's it heard of, bounded.
    timeline: Timeline,
    /// This node's last shared event number (from incarnation × 1000: never reused).
    event_seq: u64,
    guards: Guards,
    /// When the join wait started (the first tick).
    join_from_ms: Option<u64>,
    /// When the first sync session this node started completed: it has joined.
    joined_ms: Option<u64>,
    /// The join wait ran out without a sync (logged once).
    join_gave_up: bool,
    /// Per peer, our wall clock at receipt of its latest beats minus their send times
    /// (at most [`CLOCK_SAMPLES`]).
    clock_offsets: BTreeMap<String, VecDeque<i64>>,
    /// The skew warning is up (logged on each change).
    skew_warned: bool,
    /// A clean shutdown began: claim nothing more.
    stopping: bool,
    /// This node's last local-only event number (under `LOCAL_SEQ_BIT`).
    local_event_seq: u64,
    /// Peers to ask for the events we lack at the next session we open with them.
    events_pull: BTreeSet<String>,
    /// Stories that stopped moving (`stalled` events), and when it last looked.
    stalls: crate::core::scheduler::StallWatch,
    stalls_checked_ms: Option<u64>,
}

/// Heartbeats per peer whose clock offsets are kept: a peer's offset is the smallest,
/// the one least inflated by delivery delay.
pub const CLOCK_SAMPLES: usize = 8;

/// Events kept in the local log.
pub const EVENT_LOG_CAPACITY: usize = 10_000;

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A core for `peer` over `doc`. `incarnation` must grow across restarts (the wall
    /// clock at start is fine); it orders this node's heartbeats.
    pub fn new(peer: String, cfg: CoreConfig, mut doc: Doc, incarnation: u64) -> Core {
        let digest = doc.heads_digest();
        let mut core = Core {
            membership: Membership::new(cfg.membership),
            peer,
            cfg,
            doc,
            digest,
            out_sync: BTreeMap::new(),
            in_sync: BTreeMap::new(),
            sessions: BTreeMap::new(),
            next_session: 1,
            completed: BTreeMap::new(),
            push_acked: BTreeMap::new(),
            push_pending: false,
            news_before: None,
            hb_mismatch: BTreeMap::new(),
            connected: BTreeSet::new(),
            incarnation,
            hb_seq: 0,
            last_now: 0,
            last_wall: incarnation,
            timeline: Timeline::new(EVENT_LOG_CAPACITY),
            event_seq: incarnation.saturating_mul(1000).min(LOCAL_SEQ_BIT / 2),
            local_event_seq: 0,
            events_pull: BTreeSet::new(),
            started_ms: None,
            last_tick_ms: None,
            counters: Counters::default(),
            effects: VecDeque::new(),
            view: None,
            observer: LeaseObserver::new(),
            local: BTreeMap::new(),
            // Claim ids never repeat across restarts: start from the incarnation.
            next_claim: incarnation.saturating_mul(1000),
            cochange: CoChange::default(),
            runs: Vec::new(),
            guards: Guards::default(),
            join_from_ms: None,
            joined_ms: None,
            join_gave_up: false,
            clock_offsets: BTreeMap::new(),
            skew_warned: false,
            stopping: false,
            stalls: Default::default(),
            stalls_checked_ms: None,
        };
        core.release_previous_incarnations();
        core
    }

    /// A claim of this peer's that the document holds unreleased but this core does not
    /// was written by an earlier incarnation: its work died with that process. Released
    /// in the first change, before any sync, so peers only ever see it released. Left
    /// standing, a claim that never left the dying process would arrive with the restart
    /// and could win a token tie (lowest holder id) against the claim another node
    /// settled and ran meanwhile, voiding that work.
    fn release_previous_incarnations(&mut self) {
        if self.cfg.passive {
            return;
        }
        let claims = self.doc.view_and_claims().1;
        let stale: Vec<String> = claims
            .all()
            .filter(|(id, c)| c.holder == self.peer && !claims.is_released(id))
            .map(|(id, _)| id.to_string())
            .collect();
        for id in stale {
            tracing::info!(claim = %id, "releasing a claim of this node's previous run");
            let story = claims
                .claim(&id)
                .and_then(|c| c.resources.iter().find_map(|(r, _)| r.story_key()))
                .map(str::to_string);
            let was_blocked = story.as_deref().is_some_and(|s| self.is_blocked(s));
            self.release(&id, ReleaseReason::Abandoned, "holder restarted");
            // The restart may have been the story's last allowed takeover.
            if let Some(s) = story {
                self.announce_if_blocked(&s, was_blocked);
            }
        }
    }

    /// The view of the current document (cached until the document changes).
    pub fn view(&mut self) -> Arc<View> {
        self.derived().0
    }

    /// The view and its claim fold, cached until the document changes.
    fn derived(&mut self) -> (Arc<View>, Arc<Claims>) {
        if self
            .view
            .as_ref()
            .is_some_and(|(d, _, _)| *d != self.digest)
        {
            self.view = None;
        }
        let (digest, doc) = (self.digest, &self.doc);
        let (_, v, c) = self.view.get_or_insert_with(|| {
            let (v, c) = doc.view_and_claims();
            (digest, Arc::new(v), Arc::new(c))
        });
        (v.clone(), c.clone())
    }

    /// Historic co-change statistics for soft-conflict prediction (from the git shell).
    pub fn set_cochange(&mut self, c: CoChange) {
        self.cochange = c;
    }

    /// Claims this node holds (settling or running).
    pub fn held(&self, now_ms: u64) -> Vec<HeldClaim> {
        self.local
            .iter()
            .map(|(id, c)| HeldClaim {
                claim: id.clone(),
                story: c.story.clone(),
                phase: c.phase,
                running: c.state == LocalState::Running,
                age_ms: now_ms.saturating_sub(c.written_ms),
            })
            .collect()
    }

    /// Every active (winning, unreleased) claim, with its lease as this node sees it.
    pub fn claim_rows(&mut self, now_ms: u64) -> Vec<ClaimRow> {
        let claims = self.derived().1;
        let mut rows = Vec::new();
        for (id, c) in claims.active() {
            let first = self.observer.first_seen_ms(id).unwrap_or(now_ms);
            let renewed = self.observer.last_renewed_ms(id).unwrap_or(first);
            let dead = c.holder != self.peer
                && self.membership.state(&c.holder, now_ms) == Some(PeerState::Dead);
            let left = if dead {
                0
            } else {
                renewed.saturating_add(c.ttl_ms).saturating_sub(now_ms)
            };
            rows.push(ClaimRow {
                claim: id.to_string(),
                holder: c.holder.clone(),
                resources: c
                    .resources
                    .iter()
                    .map(|(r, t)| format!("{r}={t}"))
                    .collect(),
                attempt: c.attempt,
                age_ms: now_ms.saturating_sub(first),
                renewed_ago_ms: now_ms.saturating_sub(renewed),
                expires_in_ms: left,
                holds: claims.holds(id),
            });
        }
        rows
    }

    /// Starts or stops claiming new work. Starting claims at once (not once a clean
    /// shutdown began).
    pub fn set_work(&mut self, on: bool, now_ms: u64, wall_ms: u64) {
        self.cfg.work = on && !self.cfg.passive && !self.stopping;
        if self.cfg.work {
            self.check_claims(now_ms, wall_ms);
        }
    }

    /// Every claim this node settled and started, in order.
    pub fn runs(&self) -> &[RunRecord] {
        &self.runs
    }

    pub fn observer(&self) -> &LeaseObserver {
        &self.observer
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    pub fn doc_mut(&mut self) -> &mut Doc {
        &mut self.doc
    }

    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    pub fn connected(&self) -> &BTreeSet<String> {
        &self.connected
    }

    pub fn is_passive(&self) -> bool {
        self.cfg.passive
    }

    /// The wall clock (ms since the epoch) for timestamps on facts and events written
    /// by the next inputs; never used for decisions. The tick sets it too.
    pub fn set_wall(&mut self, wall_ms: u64) {
        self.last_wall = wall_ms;
    }

    /// The next effect for the shell to carry out.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        // What a sync message calls for (settling our claims on its evidence, claiming
        // on its news) runs once the reply and the session's next round are out: the
        // peer waiting on that reply to settle its own claim should not wait for our
        // view fold and scheduler.
        if self.effects.is_empty() {
            if let Some(before) = self.news_before.take() {
                let now = self.last_now;
                self.check_settling(now);
                self.claim_on_news(now, before);
            }
        }
        if self.push_pending {
            self.push_pending = false;
            // The pushes go out right after the writes are persisted, ahead of the events
            // and beats the same step queued: a claim settles on the peers' replies to
            // them, and each gossip message costs every receiver a signature check first.
            let queued = std::mem::take(&mut self.effects);
            let (persist, rest): (VecDeque<Effect>, VecDeque<Effect>) = queued
                .into_iter()
                .partition(|e| matches!(e, Effect::Persist { .. }));
            self.effects = persist;
            let now = self.last_now;
            for p in self.membership.alive(now) {
                self.open_session(&p, true);
            }
            self.effects.extend(rest);
        }
        self.effects.pop_front()
    }

    /// Records this node's description in the document (only when it changed).
    pub fn announce_node(&mut self, version: &str) {
        if self.cfg.passive {
            return;
        }
        let fact = NodeFact {
            roles: self.cfg.roles.clone(),
            capacity: self.cfg.capacity,
            version: version.to_string(),
        };
        let peer = self.peer.clone();
        if self.doc.put_node(&peer, &fact) {
            self.local_write();
        }
    }

    /// Adds a story written by this node. The caller must make the `Persist` effects
    /// durable before acknowledging.
    pub fn add_story(&mut self, new: &NewStory, wall_ms: u64) -> Result<StoryView, StateError> {
        if self.cfg.passive {
            return Err(StateError::Passive);
        }
        let peer = self.peer.clone();
        let key = self.doc.add_story(new, &peer, wall_ms)?;
        self.local_write();
        // Announce the new heads now rather than at the next beat.
        self.heartbeat(wall_ms);
        self.doc
            .view()
            .stories
            .get(&key)
            .cloned()
            .ok_or(StateError::Corrupt("story vanished after write".into()))
    }

    /// Publishes a heartbeat (not for passive observers).
    pub fn heartbeat(&mut self, wall_ms: u64) {
        self.last_wall = wall_ms;
        // A stopping node said goodbye; a beat now would revive it on its peers.
        if self.cfg.passive || self.stopping {
            return;
        }
        self.hb_seq += 1;
        let beat = Heartbeat {
            incarnation: self.incarnation,
            seq: self.hb_seq,
            roles: self.cfg.roles.clone(),
            free_capacity: self.cfg.capacity.saturating_sub(self.local.len() as u32),
            heads_digest: self.digest,
            sent_at_ms: wall_ms,
            claims: self.local.keys().cloned().collect(),
        };
        self.counters.heartbeats_sent += 1;
        self.effects.push_back(Effect::Publish {
            topic: Topic::Heartbeat,
            data: codec::encode(&beat),
        });
    }

    /// Advances membership and the claim machinery; returns membership state changes.
    pub fn tick(&mut self, now_ms: u64, wall_ms: u64) -> Vec<Transition> {
        self.last_now = self.last_now.max(now_ms);
        self.last_wall = wall_ms;
        // A node that stalled past a lease (SIGSTOP, GC, suspend) knows nothing current
        // about the mesh: warm up again before claiming anything.
        let stalled = self
            .last_tick_ms
            .is_some_and(|l| now_ms.saturating_sub(l) > self.cfg.lease.ttl_ms);
        if stalled && self.started_ms.is_some() {
            tracing::warn!("stalled past the lease ttl; warming up again before claiming");
            self.started_ms = Some(now_ms);
        }
        self.last_tick_ms = Some(now_ms);
        self.join_from_ms.get_or_insert(now_ms);
        self.report_guards(now_ms);
        let t = self.membership.tick(now_ms);
        for tr in &t {
            if tr.to == PeerState::Dead {
                self.emit(EventKind::PeerDead, None, None, 0, tr.peer.clone());
            }
        }
        self.check_claims(now_ms, wall_ms);
        self.check_stalls(now_ms);
        t
    }

    /// Raises one `stalled` event per story that stopped moving (see
    /// [`crate::core::scheduler::StallWatch`]); looks once per heartbeat period at most.
    fn check_stalls(&mut self, now_ms: u64) {
        let after = self.cfg.stall_after_ms;
        if after == 0
            || self.cfg.passive
            || self
                .stalls_checked_ms
                .is_some_and(|t| now_ms.saturating_sub(t) < self.cfg.membership.heartbeat_ms)
        {
            return;
        }
        self.stalls_checked_ms = Some(now_ms);
        let (view, claims) = self.derived();
        for (key, why) in self.stalls.observe(&view, &claims, now_ms, after) {
            let (phase, round) = view
                .stories
                .get(&key)
                .map_or((None, 0), |s| (s.next_phase, s.round));
            tracing::warn!(story = %key, %why, "story stalled");
            self.emit(
                EventKind::Stalled,
                Some(&key),
                phase,
                round,
                why.to_string(),
            );
        }
    }

    /// Anti-entropy: syncs with one alive peer (or, with none, one connected peer),
    /// chosen by `pick` (a random number from the shell).
    pub fn anti_entropy(&mut self, now_ms: u64, pick: u64) {
        let mut candidates = self.membership.alive(now_ms);
        if candidates.is_empty() {
            candidates = self.connected.iter().cloned().collect();
        }
        if candidates.is_empty() {
            return;
        }
        let p = candidates[(pick % candidates.len() as u64) as usize].clone();
        // The backstop for events gossip lost (a partition, a restart): pull them too.
        self.events_pull.insert(p.clone());
        self.start_sync(&p);
    }

    pub fn handle(&mut self, now_ms: u64, input: Input) {
        self.last_now = self.last_now.max(now_ms);
        match input {
            Input::Event { from, data } => {
                let ev: Event = match codec::decode(&data, MAX_GOSSIP_BYTES) {
                    Ok(e) => e,
                    Err(e) => {
                        self.counters.malformed_dropped += 1;
                        tracing::debug!(peer = %from, error = %e, "malformed event dropped");
                        return;
                    }
                };
                // An event speaks for its sender only.
                if ev.node != from || from == self.peer {
                    self.counters.malformed_dropped += 1;
                    return;
                }
                match accept_remote(ev, self.last_wall) {
                    Some(ev) => {
                        let left = ev.kind == EventKind::NodeLeft;
                        self.log_event(ev);
                        if left && self.membership.left(&from) {
                            // It released its claims first: nothing of it to wait for or
                            // renew.
                            tracing::info!(peer = %from, "peer left the mesh");
                            self.check_settling(now_ms);
                        }
                    }
                    None => self.counters.malformed_dropped += 1,
                }
            }
            Input::Heartbeat { from, data } => {
                let beat: Heartbeat = match codec::decode(&data, MAX_GOSSIP_BYTES) {
                    Ok(b) => b,
                    Err(e) => {
                        self.counters.malformed_dropped += 1;
                        tracing::debug!(peer = %from, error = %e, "malformed heartbeat dropped");
                        return;
                    }
                };
                if from == self.peer {
                    return;
                }
                self.counters.heartbeats_received += 1;
                let seen = self.membership.observe(&from, &beat, now_ms);
                if seen == Observed::New || seen == Observed::Revived {
                    tracing::info!(peer = %from, "peer joined");
                    self.emit(EventKind::PeerJoined, None, None, 0, from.clone());
                }
                if seen != Observed::Stale {
                    // Our wall clock (the shell sets it with each input) against the
                    // sender's: our offset plus the one-way delay.
                    let offset = i128::from(self.last_wall) - i128::from(beat.sent_at_ms);
                    let offset = offset.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
                    let samples = self.clock_offsets.entry(from.clone()).or_default();
                    samples.push_back(offset);
                    while samples.len() > CLOCK_SAMPLES {
                        samples.pop_front();
                    }
                    // A holder renews only its own claims.
                    // (From the decoded facts: a beat must not cost a view fold.)
                    for id in &beat.claims {
                        if self.doc.claim_holder(id) == Some(from.as_str()) {
                            self.observer.renew(id, now_ms);
                        }
                    }
                    // Writers push their changes; a digest that differs is only acted on
                    // when the next beat shows the same digest (the peer went quiet and
                    // still differs): the backstop for a lost push.
                    if beat.heads_digest == self.digest {
                        self.hb_mismatch.remove(&from);
                    } else if self.hb_mismatch.get(&from) == Some(&beat.heads_digest) {
                        self.hb_mismatch.remove(&from);
                        self.start_sync(&from);
                    } else {
                        self.hb_mismatch.insert(from.clone(), beat.heads_digest);
                    }
                }
            }
            Input::SyncRequest { from, data, reply } => {
                let before = self.digest;
                let data = self.answer_sync(&from, &data);
                self.effects.push_back(Effect::Respond { reply, data });
                self.news_before.get_or_insert(before);
            }
            Input::SyncResponse { from, data } => {
                let before = self.digest;
                self.continue_sync(&from, &data);
                self.news_before.get_or_insert(before);
            }
            Input::SyncFailed { from } => {
                self.counters.sync_failures += 1;
                self.sessions.remove(&from);
                self.check_settling(now_ms);
            }
            Input::WorkFinished { claim, outcome } => {
                self.finish_work(now_ms, &claim, outcome);
                // Capacity just freed: claim the next piece of work now, not at the tick.
                let wall = self.last_wall;
                self.check_claims(now_ms, wall);
            }
            Input::Connected(p) => {
                self.connected.insert(p.clone());
                // A new connection also merges event timelines (each side pulls).
                self.events_pull.insert(p.clone());
                self.start_sync(&p);
            }
            Input::Disconnected(p) => {
                self.connected.remove(&p);
                self.sessions.remove(&p);
            }
        }
    }

    /// Opens a sync session with `peer` unless one is running (then one more runs after).
    pub fn start_sync(&mut self, peer: &str) {
        self.open_session(peer, false);
    }

    /// Opens a sync session, with an eager push of our own unacknowledged changes when
    /// `push`. With a session running, one more (pushing if either asked) runs after it.
    fn open_session(&mut self, peer: &str, push: bool) {
        if peer == self.peer {
            return;
        }
        if let Some(s) = self.sessions.get_mut(peer) {
            s.again = true;
            s.again_push |= push;
            return;
        }
        let state = self.out_sync.entry(peer.to_string()).or_default();
        *state = reset_sync_state(state);
        let Some(msg) = self.doc.sync_generate(state) else {
            return;
        };
        let acked = self.push_acked.get(peer).copied().unwrap_or(0);
        let (pushed, pushed_upto) = if push {
            self.doc
                .local_changes_after(acked, self.cfg.max_sync_bytes / 2)
        } else {
            (Vec::new(), acked)
        };
        self.counters.sync_sessions_started += 1;
        let id = self.next_session;
        self.next_session += 1;
        self.sessions.insert(
            peer.to_string(),
            Session {
                id,
                rounds: 0,
                again: false,
                again_push: false,
                pushed_upto,
            },
        );
        let events_have = self
            .events_pull
            .remove(peer)
            .then(|| self.timeline.summary());
        self.effects.push_back(Effect::SendSync {
            to: peer.to_string(),
            data: codec::encode(&SyncFrame {
                push: pushed.into_iter().map(serde_bytes::ByteBuf::from).collect(),
                events_have,
                ..SyncFrame::msg(true, msg)
            }),
        });
    }

    /// A sync message from `peer` was applied: its heads are settle evidence for our
    /// claims waiting on that peer (see the module docs).
    fn saw_heads(&mut self, peer: &str, outgoing: bool) {
        let waiting: Vec<(String, ChangeHash)> = self
            .local
            .iter()
            .filter_map(|(id, c)| match &c.state {
                LocalState::Settling {
                    waiting,
                    change: Some(h),
                    ..
                } if waiting.contains(peer) => Some((id.clone(), *h)),
                _ => None,
            })
            .collect();
        if waiting.is_empty() {
            return;
        }
        let states = if outgoing {
            &self.out_sync
        } else {
            &self.in_sync
        };
        let Some(heads) = states.get(peer).and_then(|s| s.their_heads.clone()) else {
            return;
        };
        for (id, h) in waiting {
            if self.doc.peer_has(&heads, &h) {
                if let Some(LocalState::Settling { waiting, .. }) =
                    self.local.get_mut(&id).map(|c| &mut c.state)
                {
                    waiting.remove(peer);
                }
            }
        }
    }

    /// The id the next sync session will get: a session with an id at least this was
    /// started after now.
    pub fn session_mark(&self) -> u64 {
        self.next_session
    }

    /// Whether a sync session with `peer` that started at or after `mark` has completed.
    pub fn synced_since(&self, peer: &str, mark: u64) -> bool {
        self.completed.get(peer).is_some_and(|&id| id >= mark)
    }

    fn decode_frame(&mut self, peer: &str, data: &[u8]) -> Option<SyncFrame> {
        match codec::decode::<SyncFrame>(data, self.cfg.max_sync_bytes + 64) {
            Ok(f) => Some(f),
            Err(e) => {
                self.counters.malformed_dropped += 1;
                tracing::debug!(%peer, error = %e, "malformed sync frame dropped");
                None
            }
        }
    }

    /// Responder side: apply the peer's message, answer with ours (empty when none).
    fn answer_sync(&mut self, peer: &str, data: &[u8]) -> Vec<u8> {
        let Some(frame) = self.decode_frame(peer, data) else {
            return Vec::new();
        };
        let state = self.in_sync.entry(peer.to_string()).or_default();
        if frame.start {
            *state = reset_sync_state(state);
        }
        if !frame.push.is_empty() {
            let pushed = frame.push.into_iter().map(|b| b.into_vec()).collect();
            match self.doc.apply_pushed(pushed) {
                Ok(true) => self.doc_changed(),
                Ok(false) => {}
                Err(e) => {
                    self.counters.malformed_dropped += 1;
                    tracing::debug!(%peer, error = %e, "bad pushed changes dropped");
                }
            }
        }
        if !self.apply_sync(false, peer, &frame.msg) {
            self.in_sync.insert(peer.to_string(), SyncState::new());
            return Vec::new();
        }
        self.saw_heads(peer, false);
        let state = self.in_sync.entry(peer.to_string()).or_default();
        let msg = self.doc.sync_generate(state).unwrap_or_default();
        let mut answer = SyncFrame::msg(false, msg);
        if let (true, Some(have)) = (frame.start, &frame.events_have) {
            // What the peer lacks, within what is left of the frame cap.
            let budget = self.cfg.max_sync_bytes.saturating_sub(answer.msg.len()) / 2;
            let (events, more) = self.timeline.missing(have, MAX_EVENTS_PER_FRAME, budget);
            answer.events = events;
            answer.events_more = more;
        }
        codec::encode(&answer)
    }

    /// Applies a peer's sync message under the session state of one direction
    /// (`outgoing`: a session we started). False if the message was bad (dropped, counted).
    fn apply_sync(&mut self, outgoing: bool, peer: &str, msg: &[u8]) -> bool {
        if msg.is_empty() {
            return true;
        }
        let states = if outgoing {
            &mut self.out_sync
        } else {
            &mut self.in_sync
        };
        let state = states.entry(peer.to_string()).or_default();
        match self.doc.sync_receive(state, msg) {
            Ok(true) => {
                self.doc_changed();
                true
            }
            Ok(false) => true,
            Err(e) => {
                self.counters.malformed_dropped += 1;
                tracing::debug!(%peer, error = %e, "bad sync message dropped");
                false
            }
        }
    }

    /// Initiator side: apply the answer, send the next message or end the session.
    fn continue_sync(&mut self, peer: &str, data: &[u8]) {
        let Some(mut session) = self.sessions.remove(peer) else {
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
        if !frame.events.is_empty() {
            let added = self.merge_events(frame.events);
            // More where those came from: ask again right after this session.
            if frame.events_more && added > 0 {
                self.events_pull.insert(peer.to_string());
                session.again = true;
            }
        }
        if !self.apply_sync(true, peer, &frame.msg) {
            return;
        }
        self.saw_heads(peer, true);
        let state = self.out_sync.entry(peer.to_string()).or_default();
        match self.doc.sync_generate(state) {
            Some(msg) if session.rounds < MAX_SYNC_ROUNDS => {
                session.rounds += 1;
                self.sessions.insert(peer.to_string(), session);
                self.effects.push_back(Effect::SendSync {
                    to: peer.to_string(),
                    data: codec::encode(&SyncFrame::msg(false, msg)),
                });
            }
            Some(_) => {
                tracing::warn!(%peer, "sync session exceeded {MAX_SYNC_ROUNDS} rounds; abandoned");
            }
            None => {
                self.counters.sync_sessions_completed += 1;
                self.completed.insert(peer.to_string(), session.id);
                if self.joined_ms.is_none() {
                    tracing::info!(%peer, "synced with the mesh; joined");
                    self.joined_ms = Some(self.last_now);
                }
                let acked = self.push_acked.entry(peer.to_string()).or_default();
                *acked = (*acked).max(session.pushed_upto);
                if session.again {
                    self.open_session(peer, session.again_push);
                }
            }
        }
    }

    /// This node wrote to the document: persist, and push the change to every alive peer
    /// (at the next `poll_effect`, so several writes in one step travel together).
    fn local_write(&mut self) {
        self.doc_changed();
        self.push_pending = true;
    }

    /// The document changed (locally or from a peer): persist and refresh the digest.
    fn doc_changed(&mut self) {
        let chunk = self.doc.save_incremental();
        if !chunk.is_empty() {
            self.effects.push_back(Effect::Persist { chunk });
        }
        self.digest = self.doc.heads_digest();
    }

    /// The claim lifecycle, run on every tick: notice new claims, settle ours, cancel
    /// what we lost, and claim new work while there is capacity.
    fn check_claims(&mut self, now_ms: u64, wall_ms: u64) {
        if self.cfg.passive {
            return;
        }
        // Our own leases are live while we run.
        let mine: Vec<String> = self.local.keys().cloned().collect();
        for id in &mine {
            self.observer.renew(id, now_ms);
        }
        // First sight of every active claim starts its lease on our clock.
        let ids: Vec<String> = self
            .derived()
            .1
            .active()
            .map(|(id, _)| id.to_string())
            .collect();
        for id in &ids {
            self.observer.observe_claim(id, now_ms);
        }
        self.check_settling(now_ms);
        // Running claims we no longer hold (taken over after expiry): stop them.
        let claims = self.derived().1;
        let lost: Vec<String> = self
            .local
            .iter()
            .filter(|(id, c)| c.state == LocalState::Running && !claims.holds(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in lost {
            tracing::warn!(claim = %id, "lost a running claim; cancelling its work");
            self.local.remove(&id);
            self.effects
                .push_back(Effect::CancelWork { claim: id.clone() });
            self.release(&id, ReleaseReason::Lost, "lost the lease while running");
        }
        if self.cfg.work {
            self.claim_next(now_ms, wall_ms);
        }
    }

    /// A peer's changes arrived (the digest moved from `before`): with free capacity,
    /// look for work now (a result may have made a next phase claimable) rather than at
    /// the next tick. Not while one of our claims is settling: claims stack one at a
    /// time, or a burst of news would have every node reach for everything at once.
    fn claim_on_news(&mut self, now_ms: u64, before: [u8; 32]) {
        if self.digest != before
            && self.cfg.work
            && !self.cfg.passive
            && self.local.len() < self.cfg.capacity as usize
            && self.local.values().all(|c| c.state == LocalState::Running)
        {
            let wall = self.last_wall;
            self.check_claims(now_ms, wall);
        }
    }

    /// Claims the best available work, if capacity allows (one claim per call).
    fn claim_next(&mut self, now_ms: u64, wall_ms: u64) {
        if self.local.len() >= self.cfg.capacity as usize {
            return;
        }
        // Warm-up: a node that just started does not yet know who is alive (nor what
        // they claimed), so settling with "everyone alive" would be settling with no
        // one. Wait until every live peer has had time to heartbeat.
        let started = *self.started_ms.get_or_insert(now_ms);
        let m = self.cfg.membership;
        if now_ms.saturating_sub(started) < m.heartbeat_ms * u64::from(m.suspect_after_missed) {
            return;
        }
        // Joining: a node that knows of a mesh claims nothing before it has synced with it
        // (what it would claim may be done or held already). Skewed: its wall clock is off.
        if self.joining(now_ms).is_some() || self.clock_skew(now_ms).skewed {
            return;
        }
        // Settle with every peer that is alive, or connected and not known dead (a
        // frozen process keeps its TCP connections; waiting for it would stall everyone).
        let mut alive = self.membership.alive(now_ms);
        for p in &self.connected {
            if !alive.contains(p) && self.membership.state(p, now_ms) != Some(PeerState::Dead) {
                alive.push(p.clone());
            }
        }
        let lease = self.cfg.lease;
        let me = self.peer.clone();
        let roles = self.cfg.roles.clone();
        let (view, claims) = self.derived();
        let dead: BTreeSet<String> = self
            .membership
            .snapshot(now_ms)
            .into_iter()
            .filter(|p| p.state == PeerState::Dead)
            .map(|p| p.peer)
            .collect();
        let observer = &mut self.observer;
        let local = &self.local;
        let work = scheduler::rank(
            &view,
            &claims,
            &me,
            &roles,
            alive.len() + 1,
            &self.cochange,
            alive.is_empty(),
            |r| {
                // Never "take over" a claim of our own from a stale view.
                !claims.winner(r).is_some_and(|w| local.contains_key(w))
                    && resource_free(&claims, observer, r, now_ms, &lease, |p| dead.contains(p))
            },
        );
        let busy = |phase: Phase| self.local.values().filter(|c| c.phase == phase).count() as u32;
        let limit = |phase: Phase| {
            self.cfg
                .role_limits
                .get(phase.as_str())
                .copied()
                .unwrap_or(self.cfg.capacity)
        };
        let Some(w) = work.into_iter().find(|w| busy(w.phase) < limit(w.phase)) else {
            return;
        };
        let resources: Vec<(Resource, u64)> = w
            .resources
            .iter()
            .map(|r| (r.clone(), claims.next_token(r)))
            .collect();
        self.next_claim += 1;
        let id = claim_id(&self.peer, self.next_claim);
        let fact = ClaimFact {
            resources,
            holder: self.peer.clone(),
            ttl_ms: lease.ttl_ms,
            written_at_ms: wall_ms,
            attempt: w.attempt,
        };
        if !w.soft_conflicts.is_empty() {
            tracing::info!(story = %w.story, conflicts = ?w.soft_conflicts, "claiming despite soft conflicts");
        }
        // The story's MAX_TAKEOVERS-th takeover: release the gone holder's claim but claim
        // nothing, so the story stops for a human instead of killing holders forever.
        if self.takeover_limit_reached(&view, &claims, &w.story, w.phase, w.round) {
            return;
        }
        // A takeover: the expired winners of these resources are released on their behalf.
        let mut taken_from = Vec::new();
        for (r, _) in &fact.resources {
            if let Some(old) = claims.winner(r) {
                let old = old.to_string();
                if let Some(h) = view.claims.get(&old) {
                    taken_from.push(crate::core::state::peer_tag(&h.holder).to_string());
                }
                self.doc.put_release(
                    &old,
                    &ReleaseFact {
                        why: ReleaseReason::Expired,
                        note: format!("lease expired; taken over by {}", self.peer),
                    },
                );
            }
        }
        self.doc.put_claim(&id, &fact);
        let change = self.doc.last_local_change();
        // Pushed to every alive peer with the next effect; sessions opened from here on
        // count for settling.
        self.local_write();
        self.observer.observe_claim(&id, now_ms);
        let mark = self.session_mark();
        tracing::debug!(claim = %id, story = %w.story, phase = %w.phase, "claimed; settling");
        let token = fact.resources.first().map_or(0, |(_, t)| *t);
        let mut detail = format!("token {token}, attempt {}", w.attempt);
        if !taken_from.is_empty() {
            detail.push_str(&format!("; taking over from {}", taken_from.join(", ")));
        }
        if !w.soft_conflicts.is_empty() {
            detail.push_str(&format!(
                "; soft conflicts: {}",
                w.soft_conflicts.join(", ")
            ));
        }
        self.emit(
            EventKind::Claimed,
            Some(&w.story),
            Some(w.phase),
            w.round,
            detail,
        );
        self.local.insert(
            id,
            LocalClaim {
                story: w.story,
                phase: w.phase,
                round: w.round,
                state: LocalState::Settling {
                    mark,
                    waiting: alive.into_iter().collect(),
                    deadline_ms: now_ms.saturating_add(lease.settle_timeout_ms),
                    change,
                },
                written_ms: now_ms,
            },
        );
        // With no peers there is nothing to wait for.
        self.check_settling(now_ms);
    }

    /// Settles claims whose peers have all synced (or whose settle timeout passed): the
    /// winner starts work, a loser releases.
    fn check_settling(&mut self, now_ms: u64) {
        // (claim, whether every alive peer synced with us since the claim was written)
        let ready: Vec<(String, bool)> = {
            let mut alive: BTreeSet<String> = self.membership.alive(now_ms).into_iter().collect();
            let membership = &self.membership;
            alive.extend(
                self.connected
                    .iter()
                    .filter(|p| membership.state(p, now_ms) != Some(PeerState::Dead))
                    .cloned(),
            );
            let completed = &self.completed;
            let mut ready = Vec::new();
            for (id, c) in self.local.iter_mut() {
                if let LocalState::Settling {
                    mark,
                    waiting,
                    deadline_ms,
                    ..
                } = &mut c.state
                {
                    waiting.retain(|p| {
                        alive.contains(p) && completed.get(p).is_none_or(|&s| s < *mark)
                    });
                    if waiting.is_empty() {
                        ready.push((id.clone(), true));
                    } else if now_ms >= *deadline_ms {
                        ready.push((id.clone(), false));
                    }
                }
            }
            ready
        };
        if ready.is_empty() {
            return;
        }
        let (view, claims) = self.derived();
        for (id, synced) in ready {
            if !synced {
                // An alive peer we could not sync with may hold a competing claim we
                // cannot see: starting could double the work. Give up; retry later.
                tracing::debug!(claim = %id, "could not settle in time; releasing");
                self.local.remove(&id);
                self.release(
                    &id,
                    ReleaseReason::Unsettled,
                    "could not settle: peers unreachable",
                );
                continue;
            }
            // (A claim written from a stale view that ties a finished claim does not
            // hold: a finished claim wins a token tie, see `Claims::winner`.)
            if claims.holds(&id) || self.cfg.broken_winner_rule {
                let Some(c) = self.local.get_mut(&id) else {
                    continue;
                };
                c.state = LocalState::Running;
                let (story, phase, round, claimed_ms) =
                    (c.story.clone(), c.phase, c.round, c.written_ms);
                let Some(fact) = view.claims.get(&id) else {
                    continue;
                };
                let token = Resource::story_round(&story, phase, round)
                    .ok()
                    .and_then(|r| fact.token_of(&r))
                    .unwrap_or(0);
                let files = fact.files();
                let Some(sv) = view.stories.get(&story) else {
                    continue;
                };
                let handoffs = view.history(&story).into_iter().cloned().collect();
                let knowledge = relevant_knowledge(&view, sv, MAX_JOB_KNOWLEDGE);
                self.runs.push(RunRecord {
                    claim: id.clone(),
                    story: story.clone(),
                    phase,
                    round,
                    token,
                    started_ms: now_ms,
                    claimed_ms,
                });
                tracing::info!(claim = %id, %story, %phase, token, "claim settled; starting work");
                let detail = if files.is_empty() {
                    format!("token {token}")
                } else {
                    format!("token {token}, locks {}", files.join(", "))
                };
                self.emit(
                    EventKind::PhaseStarted,
                    Some(&story),
                    Some(phase),
                    round,
                    detail,
                );
                self.effects.push_back(Effect::StartWork(Box::new(Job {
                    claim: id,
                    story,
                    display_id: sv.id.clone(),
                    phase,
                    round,
                    token,
                    attempt: fact.attempt,
                    fact: sv.fact.clone(),
                    handoffs,
                    files,
                    knowledge,
                    failures: sv.failures.clone(),
                })));
            } else {
                tracing::debug!(claim = %id, "claim lost at settle; releasing");
                self.local.remove(&id);
                self.release(&id, ReleaseReason::Unsettled, "another claim won at settle");
            }
        }
    }

    /// If taking over `story`'s `phase` (in `round`) from its gone holder would be the
    /// [`MAX_TAKEOVERS`]-th takeover, releases that holder's claim as expired, claims
    /// nothing, announces the block and returns true.
    fn takeover_limit_reached(
        &mut self,
        view: &View,
        claims: &Claims,
        story: &str,
        phase: Phase,
        round: u32,
    ) -> bool {
        let Ok(res) = Resource::story_round(story, phase, round) else {
            return false;
        };
        let Some(old) = claims.winner(&res).map(str::to_string) else {
            return false;
        };
        let at_limit = view.stories.get(story).is_some_and(|s| {
            s.next_phase == Some(phase)
                && s.round == round
                && s.takeovers.saturating_add(1) >= MAX_TAKEOVERS
        });
        if !at_limit {
            return false;
        }
        tracing::warn!(%story, %phase, claim = %old, "takeover limit reached; not claiming");
        self.release(
            &old,
            ReleaseReason::Expired,
            &format!(
                "lease expired; released by {} (takeover limit reached)",
                self.peer
            ),
        );
        self.announce_if_blocked(story, false);
        true
    }

    fn release(&mut self, id: &str, why: ReleaseReason, note: &str) {
        self.doc.put_release(
            id,
            &ReleaseFact {
                why,
                note: note.to_string(),
            },
        );
        self.local_write();
    }

    /// Records the outcome of a job: a result (or merge) and a release. A job whose claim
    /// this node no longer holds is still recorded; fencing in the view ignores it.
    fn finish_work(&mut self, now_ms: u64, claim: &str, outcome: Result<Handoff, String>) {
        let Some(c) = self.local.remove(claim) else {
            tracing::debug!(%claim, "finished work for a claim no longer held; ignored");
            return;
        };
        let token = self
            .view()
            .claims
            .get(claim)
            .and_then(|f| {
                Resource::story_round(&c.story, c.phase, c.round)
                    .ok()
                    .and_then(|r| f.token_of(&r))
            })
            .unwrap_or(0);
        let was_blocked = self.is_blocked(&c.story);
        let wall = self.last_wall;
        match outcome {
            Ok(handoff) => {
                // A merge that did not reject landed: its commit is the landing (the
                // sim core, with no git, names a synthetic one).
                if c.phase == Phase::Merge && handoff.verdict != Some(Verdict::Reject) {
                    let commit = handoff
                        .commit
                        .clone()
                        .unwrap_or_else(|| handoff.summary.clone());
                    self.doc.put_merge(&MergeFact {
                        story: c.story.clone(),
                        round: c.round,
                        claim: claim.to_string(),
                        token,
                        holder: self.peer.clone(),
                        commit,
                        written_at_ms: wall,
                    });
                }
                for l in &handoff.learnings {
                    self.doc.put_knowledge(&KnowledgeFact {
                        kind: l.kind,
                        text: l.text.clone(),
                        story: c.story.clone(),
                        author: self.peer.clone(),
                        written_at_ms: wall,
                    });
                }
                self.doc.put_result(&ResultFact {
                    story: c.story.clone(),
                    phase: c.phase,
                    round: c.round,
                    claim: claim.to_string(),
                    token,
                    holder: self.peer.clone(),
                    written_at_ms: wall,
                    handoff: handoff.clone(),
                });
                self.release(claim, ReleaseReason::Done, "");
                tracing::info!(%claim, story = %c.story, phase = %c.phase, round = c.round, summary = %handoff.summary, "phase finished");
                let (p, r) = (Some(c.phase), c.round);
                let rejected = handoff.verdict == Some(Verdict::Reject);
                let mut detail = handoff.summary.clone();
                if c.phase == Phase::Review {
                    let v = if rejected { "rejected" } else { "approved" };
                    detail = format!("{v}: {detail}");
                }
                self.emit(EventKind::PhaseFinished, Some(&c.story), p, r, detail);
                for l in &handoff.learnings {
                    self.emit(
                        EventKind::PatternDiscovered,
                        Some(&c.story),
                        p,
                        r,
                        format!("{}: {}", l.kind, l.text),
                    );
                }
                if c.phase == Phase::Merge {
                    if rejected {
                        self.emit(
                            EventKind::RebaseNeeded,
                            Some(&c.story),
                            p,
                            r,
                            handoff.summary.clone(),
                        );
                    } else {
                        let commit = handoff.commit.clone().unwrap_or_default();
                        self.emit(
                            EventKind::MainUpdated,
                            Some(&c.story),
                            p,
                            r,
                            format!("main is now {commit}"),
                        );
                        self.emit(
                            EventKind::StoryCompleted,
                            Some(&c.story),
                            p,
                            r,
                            format!("landed as {commit}"),
                        );
                    }
                }
            }
            Err(reason) => {
                tracing::warn!(%claim, story = %c.story, phase = %c.phase, %reason, "phase attempt failed");
                self.release(claim, ReleaseReason::Failed, &reason);
                self.emit(
                    EventKind::PhaseFailed,
                    Some(&c.story),
                    Some(c.phase),
                    c.round,
                    reason,
                );
            }
        }
        self.announce_if_blocked(&c.story, was_blocked);
        self.observer.forget(claim);
        let _ = now_ms;
    }

    /// Whether the view has `story` blocked for a human.
    fn is_blocked(&mut self, story: &str) -> bool {
        self.view()
            .stories
            .get(story)
            .is_some_and(|s| s.status == StoryStatus::Blocked)
    }

    /// Emits `story_blocked` when this node's own write just moved `story` to blocked in
    /// the view (`was_blocked`: its state before the write). Only the writer of the
    /// change that blocked it announces it, once: never for a story that is not blocked
    /// in the view, nor again for one that already was.
    fn announce_if_blocked(&mut self, story: &str, was_blocked: bool) {
        if was_blocked {
            return;
        }
        let view = self.view();
        let Some(s) = view.stories.get(story) else {
            return;
        };
        if s.status != StoryStatus::Blocked {
            return;
        }
        let why = s.blocked_reason.clone().unwrap_or_default();
        self.emit(EventKind::StoryBlocked, Some(story), None, s.round, why);
    }

    /// Adds an event to the timeline; a new one is persisted. True if it was new.
    fn log_event(&mut self, ev: Event) -> bool {
        if !self.timeline.insert(ev.clone()) {
            return false;
        }
        self.effects
            .push_back(Effect::PersistEvents { events: vec![ev] });
        true
    }

    /// Merges events a peer sent (hostile input: validated, cut, deduplicated); persists
    /// the new ones in one effect. Returns how many were new.
    fn merge_events(&mut self, events: Vec<Event>) -> usize {
        let mut fresh = Vec::new();
        for ev in events.into_iter().take(MAX_EVENTS_PER_FRAME) {
            match accept_remote(ev, self.last_wall) {
                Some(ev) => {
                    if self.timeline.insert(ev.clone()) {
                        fresh.push(ev);
                    }
                }
                None => self.counters.malformed_dropped += 1,
            }
        }
        let n = fresh.len();
        if n > 0 {
            self.effects
                .push_back(Effect::PersistEvents { events: fresh });
        }
        n
    }

    /// Loads events persisted by an earlier run (not persisted again). Own event numbers
    /// continue above the restored ones.
    pub fn restore_events(&mut self, events: Vec<Event>) {
        for ev in events {
            self.timeline.insert(ev);
        }
        if let Some(s) = self.timeline.max_seq(&self.peer, false) {
            self.event_seq = self.event_seq.max(s);
        }
        if let Some(s) = self.timeline.max_seq(&self.peer, true) {
            self.local_event_seq = self.local_event_seq.max(s & !LOCAL_SEQ_BIT);
        }
    }

    /// Records an event of this node in the local log and, unless `local_only`,
    /// publishes it on the events topic.
    pub fn emit(
        &mut self,
        kind: EventKind,
        story: Option<&str>,
        phase: Option<Phase>,
        round: u32,
        detail: impl Into<String>,
    ) {
        let local_only = matches!(kind, EventKind::PeerJoined | EventKind::PeerDead);
        if self.cfg.passive && !local_only {
            return;
        }
        // Display ids rarely change (only when two stories share a number), so an event
        // uses the last folded view when it knows the story rather than folding again.
        let story = story
            .map(|k| {
                let cached = self
                    .view
                    .as_ref()
                    .and_then(|(_, v, _)| v.stories.get(k).map(|s| s.id.clone()));
                cached.unwrap_or_else(|| {
                    self.view()
                        .stories
                        .get(k)
                        .map_or_else(|| k.to_string(), |s| s.id.clone())
                })
            })
            .unwrap_or_default();
        let seq = if local_only {
            self.local_event_seq += 1;
            LOCAL_SEQ_BIT | self.local_event_seq
        } else {
            self.event_seq += 1;
            self.event_seq
        };
        let ev = Event {
            node: self.peer.clone(),
            seq,
            at_ms: self.last_wall,
            kind,
            story,
            phase,
            round,
            detail: detail.into(),
        };
        if !local_only {
            self.effects.push_back(Effect::Publish {
                topic: Topic::Events,
                data: codec::encode(&ev),
            });
        }
        self.log_event(ev);
    }

    /// Adds a knowledge entry by hand (an operator's lesson); returns its id.
    pub fn add_knowledge(
        &mut self,
        kind: crate::core::model::KnowledgeKind,
        text: &str,
        wall_ms: u64,
    ) -> Result<String, String> {
        if self.cfg.passive {
            return Err(StateError::Passive.to_string());
        }
        self.last_wall = wall_ms;
        let text = text.trim();
        if text.is_empty() {
            return Err("knowledge text is empty: say what was learned".into());
        }
        if text.len() > crate::core::state::MAX_KNOWLEDGE_BYTES {
            return Err(format!(
                "knowledge text is {} bytes; the limit is {}",
                text.len(),
                crate::core::state::MAX_KNOWLEDGE_BYTES
            ));
        }
        let id = self
            .doc
            .put_knowledge(&KnowledgeFact {
                kind,
                text: text.to_string(),
                story: String::new(),
                author: self.peer.clone(),
                written_at_ms: wall_ms,
            })
            .ok_or_else(|| "knowledge entry refused".to_string())?;
        self.local_write();
        self.emit(
            EventKind::PatternDiscovered,
            None,
            None,
            0,
            format!("{kind}: {text}"),
        );
        Ok(id)
    }

    /// The timeline with each event's arrival position. `after` 0: the merged history
    /// in time order (the newest `limit`); otherwise what arrived after that position, in
    /// arrival order (for following: an event a peer held may be older than ours).
    pub fn events_after(&self, after: u64, limit: usize) -> Vec<(u64, Event)> {
        if after == 0 {
            self.timeline.ordered(limit)
        } else {
            self.timeline.arrived_after(after, limit)
        }
    }

    /// The arrival position of the newest event in the timeline (grows on every new one).
    pub fn events_pos(&self) -> u64 {
        self.timeline.last_pos()
    }

    /// Turns the joining and clock-skew guards on (see [`Guards`]).
    pub fn set_guards(&mut self, guards: Guards) {
        self.guards = guards;
    }

    /// Core clock when this node first completed a sync it started (None: not yet).
    pub fn joined_at_ms(&self) -> Option<u64> {
        self.joined_ms
    }

    /// While joining (it knows of a mesh it has not synced with, and the join wait is
    /// not over), how long the wait has left; None once it may claim.
    pub fn joining(&mut self, now_ms: u64) -> Option<u64> {
        let wait = self.guards.join_wait_ms;
        if wait == 0 || self.joined_ms.is_some() || self.cfg.passive {
            return None;
        }
        let from = self.join_from_ms.unwrap_or(now_ms);
        let left = from.saturating_add(wait).saturating_sub(now_ms);
        if left == 0 {
            return None;
        }
        let me = self.peer.clone();
        let knows_mesh = self.guards.remembers_peers || self.view().nodes.keys().any(|p| *p != me);
        knows_mesh.then_some(left)
    }

    /// This node's wall clock against the median of its alive peers' (see [`ClockSkew`]).
    pub fn clock_skew(&self, now_ms: u64) -> ClockSkew {
        let bound_ms = self.cfg.lease.max_clock_drift_ms;
        let mut samples: Vec<i64> = self
            .membership
            .alive(now_ms)
            .iter()
            .filter_map(|p| self.clock_offsets.get(p)?.iter().min().copied())
            .collect();
        samples.sort_unstable();
        let n = samples.len();
        let median_ms = match n {
            0 => None,
            _ if n % 2 == 1 => Some(samples[n / 2]),
            _ => Some(((i128::from(samples[n / 2 - 1]) + i128::from(samples[n / 2])) / 2) as i64),
        };
        // offset = skew + delay with 0 <= delay <= message_timeout: the skew is certainly
        // beyond the bound only past it on either side, delay included.
        let ahead = i128::from(bound_ms) + i128::from(self.cfg.lease.message_timeout_ms);
        let behind = -i128::from(bound_ms);
        let skewed = self.guards.clock_skew
            && n >= 2
            && median_ms.is_some_and(|m| i128::from(m) > ahead || i128::from(m) < behind);
        ClockSkew {
            median_ms,
            peers: n,
            skewed,
            bound_ms,
        }
    }

    /// Logs the guards' changes: the join wait running out, the clock going off the
    /// mesh's and coming back.
    fn report_guards(&mut self, now_ms: u64) {
        if !self.join_gave_up
            && self.joined_ms.is_none()
            && self.guards.join_wait_ms > 0
            && self
                .join_from_ms
                .is_some_and(|f| now_ms >= f.saturating_add(self.guards.join_wait_ms))
        {
            self.join_gave_up = true;
            tracing::warn!(
                wait_ms = self.guards.join_wait_ms,
                "no known peer synced within join_wait_ms; working alone until one does"
            );
        }
        if !self.guards.clock_skew {
            return;
        }
        let skew = self.clock_skew(now_ms);
        if skew.skewed != self.skew_warned {
            self.skew_warned = skew.skewed;
            let median_ms = skew.median_ms.unwrap_or(0);
            if skew.skewed {
                tracing::error!(
                    median_ms,
                    bound_ms = skew.bound_ms,
                    peers = skew.peers,
                    "CLOCK SKEW: this node's wall clock is off the mesh median by more than max_clock_drift_ms; claiming no new work until it is fixed (check NTP)"
                );
            } else {
                tracing::warn!(
                    median_ms,
                    "clock back within max_clock_drift_ms of the mesh; claiming again"
                );
            }
        }
    }

    /// A clean shutdown: claim nothing more, cancel the running jobs, release every
    /// claim this node holds (`Shutdown`: not a failed attempt), pushed to every alive
    /// peer with the next effects, and tell the peers it is leaving (`NodeLeft`: they
    /// count it dead at once, so their claims do not wait to settle with it), then beat
    /// no more. None when there is no one to hand anything to.
    pub fn begin_shutdown(&mut self, now_ms: u64) -> Option<Handover> {
        self.cfg.work = false;
        if self.cfg.passive || self.stopping {
            self.stopping = true;
            return None;
        }
        self.stopping = true;
        let peers = self.membership.alive(now_ms);
        let mark = self.session_mark();
        if self.local.is_empty() {
            if peers.is_empty() {
                return None;
            }
            self.emit(EventKind::NodeLeft, None, None, 0, "stopping");
            // Nothing to push: a session with each peer shows the goodbye had time to go.
            for p in &peers {
                self.start_sync(p);
            }
            return Some(Handover {
                mark,
                peers,
                released: Vec::new(),
            });
        }
        let held = std::mem::take(&mut self.local);
        let mut released = Vec::new();
        for (id, c) in held {
            if c.state == LocalState::Running {
                self.effects
                    .push_back(Effect::CancelWork { claim: id.clone() });
            }
            tracing::info!(claim = %id, story = %c.story, phase = %c.phase, "shutting down; handing the claim back");
            self.release(&id, ReleaseReason::Shutdown, "holder shut down");
            self.observer.forget(&id);
            released.push(id);
        }
        // The goodbye leaves ahead of the pushes (not after them, as `poll_effect` would
        // order a step's effects): once a peer answered the push, it has had the goodbye
        // too, and the shell may stop.
        self.push_pending = false;
        self.emit(
            EventKind::NodeLeft,
            None,
            None,
            0,
            format!("stopping; released {}", released.join(", ")),
        );
        for p in &peers {
            self.open_session(p, true);
        }
        Some(Handover {
            mark,
            peers,
            released,
        })
    }

    /// Whether every peer the releases went to (and still connected) has synced them.
    pub fn handed_over(&self, h: &Handover) -> bool {
        h.peers
            .iter()
            .all(|p| !self.connected.contains(p) || self.synced_since(p, h.mark))
    }

    /// Peers by membership state.
    pub fn peers(&self, now_ms: u64) -> Vec<PeerStatus> {
        self.membership.snapshot(now_ms)
    }

    pub fn peer_state(&self, peer: &str, now_ms: u64) -> Option<PeerState> {
        self.membership.state(peer, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(name: &str, actor: u8) -> Core {
        Core::new(
            name.to_string(),
            CoreConfig {
                membership: MembershipConfig::default(),
                roles: vec!["implement".into()],
                capacity: 1,
                role_limits: BTreeMap::new(),
                max_sync_bytes: 1 << 20,
                passive: false,
                lease: LeaseConfig::default(),
                work: false,
                broken_winner_rule: false,
                stall_after_ms: 0,
            },
            Doc::new([actor; 16]),
            1,
        )
    }

    /// Carries `src`'s effects to `dst` (replies come straight back). True if any moved.
    fn deliver(src: &mut Core, dst: &mut Core) -> bool {
        let mut moved = false;
        while let Some(e) = src.poll_effect() {
            moved = true;
            if let Effect::SendSync { data, .. } = e {
                let from = src.peer().to_string();
                dst.handle(
                    0,
                    Input::SyncRequest {
                        from,
                        data,
                        reply: 0,
                    },
                );
                while let Some(r) = dst.poll_effect() {
                    if let Effect::Respond { data, .. } = r {
                        let from = dst.peer().to_string();
                        src.handle(0, Input::SyncResponse { from, data });
                    }
                }
            }
        }
        moved
    }

    /// Delivers every message between two cores until both are quiet.
    fn pump(a: &mut Core, b: &mut Core) {
        for _ in 0..1000 {
            let ab = deliver(a, b);
            let ba = deliver(b, a);
            if !ab && !ba {
                return;
            }
        }
        panic!("no quiescence");
    }

    #[test]
    fn two_cores_converge_through_sync_sessions() {
        let (mut a, mut b) = (core("A", 1), core("B", 2));
        a.add_story(
            &NewStory {
                title: "a".into(),
                ..Default::default()
            },
            1,
        )
        .unwrap();
        b.add_story(
            &NewStory {
                title: "b".into(),
                ..Default::default()
            },
            1,
        )
        .unwrap();
        let mark = a.session_mark();
        a.handle(0, Input::Connected("B".into()));
        pump(&mut a, &mut b);
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.doc().view(), b.doc().view());
        assert!(a.synced_since("B", mark));
    }

    #[test]
    fn a_restart_releases_the_previous_runs_claims_before_anything_leaves() {
        // Node A's previous run wrote a claim and died before it reached anyone; B
        // claimed the same work with the same token and ran it. A's old claim would win
        // the tie (lowest holder id) the moment the restarted A syncs.
        let r = Resource::story("s1", Phase::Research).unwrap();
        let fact = |holder: &str| ClaimFact {
            resources: vec![(r.clone(), 1)],
            holder: holder.to_string(),
            ttl_ms: 10_000,
            written_at_ms: 0,
            attempt: 1,
        };
        let mut doc = Doc::new([1; 16]);
        doc.put_claim("A-1001", &fact("A"));
        doc.put_claim("B-1001", &fact("B"));
        let persisted = doc.save();
        let cfg = core("A", 1).cfg;
        let restarted = Doc::load([3; 16], &persisted, &[]).unwrap();
        let mut a = Core::new("A".into(), cfg.clone(), restarted, 2);
        assert!(
            matches!(a.poll_effect(), Some(Effect::Persist { .. })),
            "the release is persisted first"
        );
        let claims = a.doc().view().claims();
        assert_eq!(
            claims.release_reason("A-1001"),
            Some(ReleaseReason::Abandoned)
        );
        assert!(!claims.is_released("B-1001"), "only its own claims");
        assert_eq!(claims.winner(&r), Some("B-1001"));
        // Nothing of its own left to release: a second restart writes nothing.
        let again = Doc::load([4; 16], &a.doc_mut().save(), &[]).unwrap();
        let mut a2 = Core::new("A".into(), cfg.clone(), again, 3);
        assert!(a2.poll_effect().is_none());
        // A passive observer of the same document writes nothing either.
        let mut passive = cfg;
        passive.passive = true;
        let doc = Doc::load([5; 16], &persisted, &[]).unwrap();
        let mut p = Core::new("A".into(), passive, doc, 4);
        assert!(p.poll_effect().is_none());
        assert!(!p.doc().view().claims().is_released("A-1001"));
    }

    /// A core that works every phase, with the guards on.
    fn worker(name: &str, doc: Doc, guards: Guards) -> Core {
        let mut cfg = core(name, 9).cfg;
        cfg.roles = Phase::ALL.iter().map(|p| p.as_str().to_string()).collect();
        cfg.work = true;
        let mut c = Core::new(name.to_string(), cfg, doc, 1);
        c.set_guards(guards);
        c
    }

    fn beat(seq: u64, sent_at_ms: u64) -> Vec<u8> {
        codec::encode(&Heartbeat {
            incarnation: 1,
            seq,
            roles: vec![],
            free_capacity: 0,
            heads_digest: [0; 32],
            sent_at_ms,
            claims: vec![],
        })
    }

    /// Warm-up with the default membership config (3 beats of 1 s).
    const WARM_MS: u64 = 3_000;

    #[test]
    fn a_node_that_knows_of_a_mesh_claims_nothing_before_it_synced_with_it() {
        // B wrote a story and its node fact; A restarts over that document, alone.
        let mut b = core("B", 2);
        b.announce_node("test");
        b.add_story(
            &NewStory {
                title: "s".into(),
                ..Default::default()
            },
            1,
        )
        .unwrap();
        let guards = Guards {
            join_wait_ms: 10_000,
            ..Guards::default()
        };
        let doc = Doc::load([1; 16], &b.doc_mut().save(), &[]).unwrap();
        let mut a = worker("A", doc, guards);
        a.tick(0, 0);
        a.tick(WARM_MS + 1, 0);
        assert!(a.held(WARM_MS + 1).is_empty(), "claimed before joining");
        assert_eq!(a.joining(WARM_MS + 1), Some(10_000 - WARM_MS - 1));
        // It connects and completes a sync with B: joined, it claims at the next tick.
        a.handle(WARM_MS + 2, Input::Connected("B".into()));
        pump(&mut a, &mut b);
        assert_eq!(a.joined_at_ms(), Some(WARM_MS + 2));
        assert_eq!(a.joining(WARM_MS + 3), None);
        a.tick(WARM_MS + 3, 0);
        assert_eq!(a.held(WARM_MS + 3).len(), 1, "claims once joined");
    }

    #[test]
    fn the_join_wait_is_bounded_and_a_mesh_of_one_does_not_wait() {
        let story = NewStory {
            title: "s".into(),
            ..Default::default()
        };
        // Remembers peers, none answers: it claims once the wait is over.
        let guards = Guards {
            join_wait_ms: 5_000,
            remembers_peers: true,
            clock_skew: false,
        };
        let mut a = worker("A", Doc::new([1; 16]), guards);
        a.add_story(&story, 1).unwrap();
        a.tick(0, 0);
        a.tick(4_999, 0);
        assert!(a.held(4_999).is_empty());
        a.tick(5_000, 0);
        assert_eq!(a.joining(5_000), None);
        assert_eq!(a.held(5_000).len(), 1, "claims after the bounded wait");
        // Knows of no mesh (a document with no other node, no remembered peers): no wait
        // beyond the warm-up.
        let mut solo = worker(
            "S",
            Doc::new([2; 16]),
            Guards {
                remembers_peers: false,
                ..guards
            },
        );
        solo.announce_node("test");
        solo.add_story(&story, 1).unwrap();
        solo.tick(0, 0);
        assert_eq!(solo.joining(WARM_MS), None);
        solo.tick(WARM_MS, 0);
        assert_eq!(solo.held(WARM_MS).len(), 1);
    }

    #[test]
    fn a_node_whose_clock_is_off_the_mesh_median_claims_nothing_until_it_is_back() {
        // Defaults: max_clock_drift_ms 1000, message_timeout_ms 1000.
        let guards = Guards {
            clock_skew: true,
            ..Guards::default()
        };
        let mut a = worker("A", Doc::new([1; 16]), guards);
        for i in 0..4 {
            a.add_story(
                &NewStory {
                    title: format!("s{i}"),
                    ..Default::default()
                },
                1,
            )
            .unwrap();
        }
        let wall = 1_000_000;
        let mut seq = 0;
        let mut beats = |a: &mut Core, now: u64, peers: &[(&str, i64)]| {
            seq += 1;
            a.set_wall(wall + now);
            for (p, ahead) in peers {
                let sent = (wall + now) as i64 - ahead;
                let input = Input::Heartbeat {
                    from: p.to_string(),
                    data: beat(seq, sent as u64),
                };
                a.handle(now, input);
            }
        };
        a.tick(0, wall);
        // One peer disagrees by 5 s: reported, but one peer cannot say whose clock is
        // wrong.
        beats(&mut a, 100, &[("B", 5_000)]);
        let one = a.clock_skew(100);
        assert_eq!(
            (one.median_ms, one.peers, one.skewed),
            (Some(5_000), 1, false)
        );
        // Two peers: A is 2.5 s ahead of both (more than drift + one-way delay).
        beats(&mut a, WARM_MS, &[("B", 2_500), ("C", 2_600)]);
        a.tick(WARM_MS + 1, wall + WARM_MS);
        assert!(a.clock_skew(WARM_MS + 1).skewed);
        assert!(a.held(WARM_MS + 1).is_empty(), "claimed while skewed");
        // 1.5 s behind is beyond the bound too (a delay cannot make a clock look behind).
        beats(&mut a, WARM_MS + 200, &[("B", -1_500), ("C", -1_400)]);
        a.tick(WARM_MS + 201, wall + WARM_MS + 200);
        assert!(a.clock_skew(WARM_MS + 201).skewed);
        assert!(a.held(WARM_MS + 201).is_empty(), "claimed while skewed");
        // Fixed: once the behind beats are out of the window, within drift + delay (a
        // beat 1.8 s old may be 1 s of drift and 0.8 s of delivery), and one wild peer
        // does not move the median: it claims again.
        let mut now = WARM_MS + 200;
        for _ in 0..CLOCK_SAMPLES {
            now += 100;
            beats(&mut a, now, &[("B", 1_800), ("C", 300), ("D", -60_000)]);
        }
        a.tick(now + 1, wall + now);
        let back = a.clock_skew(now + 1);
        assert_eq!((back.median_ms, back.skewed), (Some(300), false));
        assert_eq!(a.held(now + 1).len(), 1, "claims once back in bounds");
    }

    #[test]
    fn a_clean_shutdown_releases_every_claim_as_shutdown_and_claims_nothing_more() {
        let mut a = worker("A", Doc::new([1; 16]), Guards::default());
        a.add_story(
            &NewStory {
                title: "s".into(),
                ..Default::default()
            },
            1,
        )
        .unwrap();
        a.tick(0, 0);
        a.tick(WARM_MS, 0);
        let held = a.held(WARM_MS);
        assert!(held.len() == 1 && held[0].running, "{held:?}");
        while a.poll_effect().is_some() {}
        let h = a.begin_shutdown(WARM_MS + 1).expect("a claim to hand back");
        assert_eq!(h.released, vec![held[0].claim.clone()]);
        let effects: Vec<Effect> = std::iter::from_fn(|| a.poll_effect()).collect();
        assert!(effects.contains(&Effect::CancelWork {
            claim: held[0].claim.clone()
        }));
        let left = effects.iter().any(|e| match e {
            Effect::Publish {
                topic: Topic::Events,
                data,
            } => codec::decode::<Event>(data, MAX_GOSSIP_BYTES)
                .is_ok_and(|ev| ev.kind == EventKind::NodeLeft),
            _ => false,
        });
        assert!(left, "the peers are told it is leaving");
        a.heartbeat(0);
        assert!(a.poll_effect().is_none(), "no beat after the goodbye");
        let view = a.view();
        assert_eq!(
            view.claims().release_reason(&held[0].claim),
            Some(ReleaseReason::Shutdown)
        );
        // Not an attempt: the story is free again, at attempt 0.
        let s = view.stories.values().next().unwrap();
        assert_eq!(s.attempts, 0, "{s:?}");
        assert!(a.handed_over(&h), "no peer to wait for");
        // It claims nothing more, even if asked to work.
        a.set_work(true, WARM_MS + 2, 0);
        a.tick(WARM_MS + 10, 0);
        assert!(a.held(WARM_MS + 10).is_empty());
        assert!(a.begin_shutdown(WARM_MS + 11).is_none(), "nothing left");
    }

    #[test]
    fn a_peer_that_says_it_left_is_dead_at_once_until_it_beats_again() {
        let mut a = core("A", 1);
        a.handle(
            0,
            Input::Heartbeat {
                from: "B".into(),
                data: beat(1, 0),
            },
        );
        assert_eq!(a.peer_state("B", 10), Some(PeerState::Alive));
        let bye = |node: &str| Event {
            node: node.to_string(),
            seq: 1,
            at_ms: 0,
            kind: EventKind::NodeLeft,
            story: String::new(),
            phase: None,
            round: 0,
            detail: "stopping".into(),
        };
        // Only B can say B left.
        a.handle(
            20,
            Input::Event {
                from: "C".into(),
                data: codec::encode(&bye("B")),
            },
        );
        assert_eq!(a.peer_state("B", 20), Some(PeerState::Alive));
        a.handle(
            30,
            Input::Event {
                from: "B".into(),
                data: codec::encode(&bye("B")),
            },
        );
        assert_eq!(a.peer_state("B", 30), Some(PeerState::Dead));
        assert!(a.membership().alive(30).is_empty());
        // Back (a newer beat): alive again.
        a.handle(
            40,
            Input::Heartbeat {
                from: "B".into(),
                data: beat(2, 0),
            },
        );
        assert_eq!(a.peer_state("B", 40), Some(PeerState::Alive));
    }

    #[test]
    fn garbage_from_the_network_is_dropped_and_counted_never_a_panic() {
        let mut a = core("A", 1);
        let garbage: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xff; 10],
            vec![codec::WIRE_VERSION, 1, 2, 3],
            codec::encode(&SyncFrame::msg(true, vec![9; 40])),
            codec::encode(&SyncFrame {
                push: vec![serde_bytes::ByteBuf::from(vec![7; 64])],
                ..SyncFrame::msg(true, Vec::new())
            }),
            vec![0; MAX_GOSSIP_BYTES + 1],
        ];
        for g in &garbage {
            a.handle(
                0,
                Input::Heartbeat {
                    from: "X".into(),
                    data: g.clone(),
                },
            );
            a.handle(
                0,
                Input::SyncRequest {
                    from: "X".into(),
                    data: g.clone(),
                    reply: 7,
                },
            );
        }
        assert!(a.counters().malformed_dropped >= 9, "{:?}", a.counters());
        // Every request still got an answer, so the requester is not left hanging.
        let responds = std::iter::from_fn(|| a.poll_effect())
            .filter(|e| matches!(e, Effect::Respond { reply: 7, .. }))
            .count();
        assert_eq!(responds, garbage.len());
        assert!(
            a.membership().alive(0).is_empty(),
            "garbage never admits a peer"
        );
    }

    /// A core that claims work of every phase, alone (claims settle at once).
    fn worker_alone(name: &str, actor: u8) -> Core {
        let mut c = core(name, actor);
        c.cfg.work = true;
        c.cfg.roles = Phase::ALL.iter().map(|p| p.as_str().to_string()).collect();
        c
    }

    /// Ticks past the warm-up until the core starts a job; returns its claim.
    fn next_job(c: &mut Core, now: &mut u64) -> String {
        for _ in 0..100 {
            *now += 100;
            c.tick(*now, *now);
            while let Some(e) = c.poll_effect() {
                if let Effect::StartWork(job) = e {
                    return job.claim;
                }
            }
        }
        panic!("no job started");
    }

    fn kinds(c: &Core) -> Vec<EventKind> {
        c.events_after(0, usize::MAX)
            .into_iter()
            .map(|(_, e)| e.kind)
            .collect()
    }

    #[test]
    fn story_blocked_fires_once_when_the_third_failure_blocks_the_story() {
        let mut a = worker_alone("A", 1);
        let key = a
            .add_story(
                &NewStory {
                    title: "fails".into(),
                    ..Default::default()
                },
                1,
            )
            .unwrap()
            .key;
        let mut now = 0;
        for i in 1..=crate::core::model::MAX_ATTEMPTS {
            let claim = next_job(&mut a, &mut now);
            a.handle(
                now,
                Input::WorkFinished {
                    claim,
                    outcome: Err("tests failed".into()),
                },
            );
            let blocked = kinds(&a)
                .iter()
                .filter(|k| **k == EventKind::StoryBlocked)
                .count();
            let want = usize::from(i == crate::core::model::MAX_ATTEMPTS);
            assert_eq!(blocked, want, "after failure {i}");
        }
        let v = a.view();
        let s = &v.stories[&key];
        assert_eq!(s.status, StoryStatus::Blocked);
        assert_eq!((s.failed_attempts, s.takeovers), (3, 0));
        let ev = a
            .events_after(0, usize::MAX)
            .into_iter()
            .map(|(_, e)| e)
            .find(|e| e.kind == EventKind::StoryBlocked)
            .unwrap();
        assert!(
            ev.detail.starts_with("research failed 3 attempts"),
            "{ev:?}"
        );
        // Nothing more happens to a blocked story: no second announcement.
        for _ in 0..20 {
            now += 100;
            a.tick(now, now);
            while a.poll_effect().is_some() {}
        }
        let n = kinds(&a)
            .iter()
            .filter(|k| **k == EventKind::StoryBlocked)
            .count();
        assert_eq!(n, 1);
    }

    #[test]
    fn restarts_of_the_holder_are_takeovers_and_block_only_at_the_takeover_limit() {
        let mut a = worker_alone("A", 1);
        a.add_story(
            &NewStory {
                title: "unlucky".into(),
                ..Default::default()
            },
            1,
        )
        .unwrap();
        let cfg = a.cfg.clone();
        let mut now = 0;
        for inc in 2..(2 + crate::core::model::MAX_ATTEMPTS as u64) {
            next_job(&mut a, &mut now);
            // The process dies mid-job and comes back over its persisted document.
            let doc = Doc::load([inc as u8; 16], &a.doc_mut().save(), &[]).unwrap();
            a = Core::new("A".into(), cfg.clone(), doc, inc);
        }
        let v = a.view();
        let s = v.stories.values().next().unwrap();
        assert_eq!(s.status, StoryStatus::Ready, "{:?}", s.blocked_reason);
        assert_eq!((s.failed_attempts, s.takeovers), (0, 3));
        // And the work goes on... until the story has lost its holder MAX_TAKEOVERS
        // times: then the restart that makes it so blocks it, and says so once.
        for inc in 10..(10 + u64::from(MAX_TAKEOVERS - 3)) {
            assert!(!kinds(&a).contains(&EventKind::StoryBlocked));
            next_job(&mut a, &mut now);
            let doc = Doc::load([inc as u8; 16], &a.doc_mut().save(), &[]).unwrap();
            a = Core::new("A".into(), cfg.clone(), doc, inc);
        }
        let v = a.view();
        let s = v.stories.values().next().unwrap();
        assert_eq!(s.status, StoryStatus::Blocked);
        assert_eq!((s.failed_attempts, s.takeovers), (0, MAX_TAKEOVERS));
        let blocked: Vec<Event> = a
            .events_after(0, usize::MAX)
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.kind == EventKind::StoryBlocked)
            .collect();
        assert_eq!(blocked.len(), 1);
        assert!(
            blocked[0]
                .detail
                .starts_with("research lost its holder 10 times"),
            "{blocked:?}"
        );
    }

    #[test]
    fn both_sides_of_a_healed_partition_show_the_same_history() {
        let (mut a, mut b) = (core("A", 1), core("B", 2));
        // Each side logs its half while apart (gossip never crossed).
        for t in [10, 20, 30, 40] {
            let c = if t % 20 == 10 { &mut a } else { &mut b };
            c.set_wall(t);
            c.emit(EventKind::PhaseStarted, None, None, 0, format!("at {t}"));
        }
        b.set_wall(45);
        b.emit(EventKind::PeerDead, None, None, 0, "A");
        // B also heard one of A's events by gossip before the split.
        let first = a.events_after(0, 10)[0].1.clone();
        b.handle(
            0,
            Input::Event {
                from: "A".into(),
                data: codec::encode(&first),
            },
        );
        // The partition heals: they connect and sync.
        // (One side at a time: `pump` drops a responder's own requests.)
        a.handle(0, Input::Connected("B".into()));
        pump(&mut a, &mut b);
        b.handle(0, Input::Connected("A".into()));
        pump(&mut b, &mut a);
        let shared = |c: &Core| -> Vec<(String, u64, u64)> {
            c.events_after(0, usize::MAX)
                .into_iter()
                .map(|(_, e)| e)
                .filter(|e| e.kind != EventKind::PeerDead)
                .map(|e| (e.node, e.seq, e.at_ms))
                .collect()
        };
        let (ha, hb) = (shared(&a), shared(&b));
        assert_eq!(ha, hb);
        let times: Vec<u64> = ha.iter().map(|x| x.2).collect();
        assert_eq!(times, [10, 20, 30, 40], "in time order, no duplicates");
        // B's own observation of A's death stayed on B.
        assert!(kinds(&b).contains(&EventKind::PeerDead));
        assert!(!kinds(&a).contains(&EventKind::PeerDead));
    }

    #[test]
    fn hostile_events_in_a_sync_answer_are_dropped_never_a_panic() {
        let mut a = core("A", 1);
        a.set_wall(1_000);
        a.handle(0, Input::Connected("B".into()));
        let mut good = Event {
            node: "B".into(),
            seq: 1,
            at_ms: 900,
            kind: EventKind::Claimed,
            story: String::new(),
            phase: None,
            round: 0,
            detail: "x".repeat(10 * crate::core::model::MAX_EVENT_DETAIL),
        };
        let mut future = good.clone();
        future.seq = 2;
        future.at_ms = u64::MAX;
        let mut local = good.clone();
        local.seq = LOCAL_SEQ_BIT | 3;
        let nameless = Event {
            node: String::new(),
            ..good.clone()
        };
        let answer = SyncFrame {
            events: vec![good.clone(), good.clone(), future, local, nameless],
            events_more: true,
            ..SyncFrame::msg(false, Vec::new())
        };
        a.handle(
            0,
            Input::SyncResponse {
                from: "B".into(),
                data: codec::encode(&answer),
            },
        );
        let got = a.events_after(0, 100);
        assert_eq!(got.len(), 1, "{got:?}");
        good.detail.truncate(crate::core::model::MAX_EVENT_DETAIL);
        assert_eq!(got[0].1, good);
        assert!(a.counters().malformed_dropped >= 3);
    }

    #[test]
    fn a_story_without_progress_past_stall_after_raises_one_stalled_event() {
        let mut c = core("a", 9);
        c.cfg.stall_after_ms = 5_000;
        let new = crate::core::model::NewStory {
            title: "nobody here can research".into(),
            ..Default::default()
        };
        c.add_story(&new, 0).unwrap();
        let stalled = |c: &Core| -> Vec<Event> {
            c.events_after(0, 1_000)
                .into_iter()
                .map(|(_, e)| e)
                .filter(|e| e.kind == EventKind::Stalled)
                .collect()
        };
        for t in [0, 2_000, 4_000, 5_000] {
            c.tick(t, t);
        }
        assert!(stalled(&c).is_empty(), "not past the bound yet");
        c.tick(6_000, 6_000);
        let ev = stalled(&c);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].story, "S-0001");
        assert_eq!(ev[0].phase, Some(Phase::Research));
        // This node only implements: nobody has the research role.
        assert_eq!(
            ev[0].detail,
            "ready for research, no node with role research"
        );
        for t in [10_000, 60_000, 600_000] {
            c.tick(t, t);
        }
        assert_eq!(stalled(&c).len(), 1, "one event per stall");
    }
}
