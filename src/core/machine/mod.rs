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
//! the exchange. The first frame carries the initiator's heads digest too: a responder
//! whose heads equal it (after the push) answers `same`, and the session ends without
//! either side running automerge's sync, which walks the whole history on every
//! message it receives. Heartbeat digests are only the backstop: a peer whose digest differs
//! from ours on two beats in a row, unchanged, gets a session.
//!
//! Settle evidence: a claim is settled with a peer once a sync message from that peer
//! shows heads that contain the claim's change and that this node fully has: the peer
//! had the claim, and we have every claim the peer wrote before it (any it writes later
//! sees ours).

use crate::core::breaker::{Breaker, OriginHealth, Transition as OriginTransition};
use crate::core::codec;
use crate::core::lease::{
    claim_id, claim_number, resource_free, ClaimFact, Claims, CoChange, LeaseConfig, LeaseObserver,
    ReleaseFact, ReleaseReason, Resource,
};
use crate::core::limits::Bucket;
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

mod adopt;
mod budget;
mod claims;
mod covered;
mod epoch;
mod events;
mod guards;
mod intake;
mod latency;
mod liveness;
mod news;
mod notify;
mod origin;
mod roster;
mod settle;
mod status;
mod steer;
mod sync;
mod view;
mod write;

pub use budget::{BudgetConfig, SpendStatus};
pub use epoch::EpochSwitch;
use guards::ProbeDelays;
pub use guards::{ClockSkew, Guards, Handover, CLOCK_SAMPLES};
pub use intake::Sourced;
pub use latency::{Histogram, Latency, SettleOutcome, PHASE_BOUNDS_MS, SETTLE_BOUNDS_MS};
pub use origin::JobFailure;
pub use status::{ClaimRow, Counters, HeldClaim, RunRecord};
pub use steer::resolve_command;
use sync::Session;
pub use sync::SyncFrame;

/// Most knowledge entries handed to one job.
pub const MAX_JOB_KNOWLEDGE: usize = 12;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Most request/response rounds in one sync session before it is abandoned.
pub const MAX_SYNC_ROUNDS: u32 = 64;
/// Cap on one gossip message (heartbeat or event).
pub const MAX_GOSSIP_BYTES: usize = 64 * 1024;

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
    /// Check every view updated in place against a fold of the document, and panic on
    /// a difference (debug builds always do). The simulator's `--check-view`.
    pub check_view: bool,
    /// Raise a `stalled` event for a story that made no progress for this long (0: never).
    pub stall_after_ms: u64,
    /// When to stop and resume claiming while the origin is unavailable.
    pub origin_breaker: crate::core::breaker::BreakerConfig,
    /// The merge gate every merge claim also holds (a remote origin's: landings take
    /// turns through the mesh). `None`: merges take no gate in the document (a local
    /// origin's gate is a lock file beside it).
    pub merge_gate: Option<Resource>,
    /// Propose a new epoch once this many merged stories are live in the document
    /// (docs/DESIGN.md §3.5; 0: never).
    pub epoch_after: u32,
    /// Document size, write-rate and ingress caps.
    pub limits: crate::core::limits::Limits,
    /// The escalation thresholds this node records in the results it writes.
    pub triggers: crate::core::attention::Triggers,
    /// What a job reserves, how often to ask for allowance, rate-limit back-off.
    pub budget: BudgetConfig,
}

/// Inputs from the network. Peers are identified by their peer id string.
// (`WorkFinished` carries a whole handoff, once per job; a box would only move it.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Input {
    Heartbeat {
        from: String,
        data: Vec<u8>,
    },
    /// A peer's probe (an encoded `Option<Heartbeat>`), to answer with `reply`.
    Probe {
        from: String,
        data: Vec<u8>,
        reply: u64,
    },
    /// The answer to this node's [`Effect::Probe`].
    ProbeAnswer {
        from: String,
        data: Vec<u8>,
    },
    /// This node's probe could not be delivered or was not answered in the shell's time.
    ProbeFailed {
        peer: String,
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
        outcome: Result<Handoff, JobFailure>,
    },
    /// The answer to [`Effect::ProbeOrigin`]: the origin answered, or why not.
    OriginProbed(Result<(), String>),
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
    /// Operators' notes for the story's jobs (context, changes requested), in order.
    pub notes: Vec<String>,
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
    /// Probe a peer (membership, docs/DESIGN.md §4): the answer comes back as
    /// [`Input::ProbeAnswer`] or [`Input::ProbeFailed`].
    Probe {
        to: String,
        data: Vec<u8>,
    },
    /// Answer the probe that came with `reply`.
    ProbeAnswer {
        reply: u64,
        data: Vec<u8>,
    },
    /// Look for peers this node does not know (a kademlia bootstrap): a peer counts more
    /// members than this node does.
    Discover,
    /// Answer the sync request that came with `reply`.
    Respond {
        reply: u64,
        data: Vec<u8>,
    },
    /// Append these document bytes to durable storage.
    Persist {
        chunk: Vec<u8>,
    },
    /// Replace everything stored of the document with this, atomically (a new node
    /// joined from a peer's snapshot: `Doc::merge_snapshot`).
    Rebase(Box<crate::core::state::Rebase>),
    /// The mesh moved to a new epoch: archive the stored document, keep this one.
    BeginEpoch(Box<EpochSwitch>),
    /// Read the document the move to `epoch` archived and hand it (`None`: none here)
    /// to [`Core::previous_loaded`]: a peer is still on it.
    LoadPrevious {
        epoch: u64,
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
    /// Refuse this peer's connections (not on the roster, or revoked), or accept them
    /// again (`refuse: false`, it was admitted since).
    Refuse {
        peer: String,
        refuse: bool,
    },
    /// The origin was unavailable and no job runs to find out whether it is back: try
    /// to reach it (a fetch) and answer with [`Input::OriginProbed`].
    ProbeOrigin,
    /// This node's write blocked the story: its work refs at the origin
    /// (`refs/mesh/work/<story>/*`) are no longer needed. Best effort.
    DropWorkRefs {
        story: String,
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
    /// A proposal of this epoch (story and phase say nothing then).
    epoch: Option<u64>,
    state: LocalState,
    written_ms: u64,
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
    /// Per peer, sessions answered `covered` that complete once their heads are here.
    awaiting: BTreeMap<String, Vec<covered::Awaiting>>,
    /// Per peer, the highest own change sequence number it is known to have.
    push_acked: BTreeMap<String, u64>,
    /// A local write happened: push it to every alive peer before the next effect.
    push_pending: bool,
    /// A sync message was handled and the settle check and claim-on-news it may call for
    /// wait until the effects it produced (the reply, the next round) are out: the
    /// digest before the first such message. See [`Core::poll_effect`].
    news_before: Option<[u8; 32]>,
    /// A claim check runs on a peer's news: only the story's first claimer claims.
    on_news: bool,
    /// When the last claim check on news that had to fold the view ran.
    news_fold_ms: Option<u64>,
    /// Per peer, a heartbeat digest that differed from ours (sync if the next is the same).
    hb_mismatch: BTreeMap<String, [u8; 32]>,
    /// Peers whose latest beat named another epoch: alive, but no session is opened with
    /// them (their frames would be dropped, as theirs are here).
    other_epoch: BTreeSet<String>,
    moving: epoch::Moving,
    connected: BTreeSet<String>,
    /// When each connected peer's connection opened (mono ms): one that closes at once
    /// was refused (see [`Core::connection_lost`]).
    connected_at: BTreeMap<String, u64>,
    /// Peers the membership did not know when they connected (see `settle::settle_count`).
    strangers: BTreeSet<String>,
    /// Peers with a session completed or a connection lost since settling claims were
    /// last checked, and the claims checked against every peer once (`check_settling`).
    settle_dirty: BTreeSet<String>,
    settle_checked: BTreeSet<String>,
    incarnation: u64,
    hb_seq: u64,
    /// What the last published beat said (it is published again only when that changes).
    said: Option<liveness::Said>,
    /// What it would say now but kept back as no news (judged once, not on every tick).
    unsaid: Option<liveness::Said>,
    /// Peers counting more members than this node knows, since when.
    wider: BTreeMap<String, u64>,
    /// When this node last asked its shell to look for the rest of the mesh.
    discovered_ms: Option<u64>,
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
    /// Claims wait after one could not settle (see `settle.rs`).
    settle_backoff: settle::SettleBackoff,
    /// How long our sync sessions take to complete, smoothed (see `settle_timeout`).
    session_ms: settle::SessionTime,
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
    /// The document saved whole for joining nodes: when (monotonic ms), the bytes, its
    /// heads.
    join_snapshot: Option<(u64, serde_bytes::ByteBuf, Vec<ChangeHash>)>,
    /// The join wait ran out without a sync (logged once).
    join_gave_up: bool,
    /// Probe round trips: the one-way delay the skew rule allows for, and whether the
    /// mesh runs too far behind to claim (`overloaded`).
    probe_delays: ProbeDelays,
    overloaded: bool,
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
    /// A local write waiting for the shell to make it durable (see `write.rs`).
    held: Option<write::HeldWrite>,
    /// Whether the origin answers, and when to claim again if not.
    origin: Breaker,
    /// Work this node may have pushed (implement/rework it started): story, claim.
    pushed: Vec<(String, String)>,
    /// Peers refused as not on the roster (or revoked).
    refused: BTreeSet<String>,
    /// How this node last found itself on the roster (logged on each change).
    standing: roster::Standing,
    /// The version this node describes itself with (`announce_node`), once known.
    version: Option<String>,
    /// Writes a user asked for, against `max_writes_per_minute` (wall-clock ms).
    writes: Bucket,
    /// Sync bytes taken in from each peer, against `max_ingress_bytes_per_sec`; frames
    /// dropped over it (mono ms).
    ingress: BTreeMap<String, Bucket>,
    /// Allowance asks and rate-limit pacing (see `budget.rs`).
    spending: budget::Spending,
    /// Notifications: what this node owns, retries, sends in flight (`notify.rs`).
    notify: crate::core::notify::Notifier,
    notify_extra: Vec<crate::core::notify::Trigger>,
}

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
    pub fn new(peer: String, cfg: CoreConfig, doc: Doc, incarnation: u64) -> Core {
        let mut doc = doc.with_size_cap(cfg.limits.max_document_bytes);
        if let Some(author) = doc.author().filter(|a| *a != peer) {
            // Every fact it wrote would be refused as not its own: say why, loudly.
            tracing::error!(%peer, %author, "the document signs as another node than this core's");
        }
        let digest = doc.heads_digest();
        let origin = Breaker::new(&peer, cfg.origin_breaker);
        let writes = cfg.limits.writes_bucket(incarnation);
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
            awaiting: BTreeMap::new(),
            settle_backoff: Default::default(),
            session_ms: Default::default(),
            push_acked: BTreeMap::new(),
            push_pending: false,
            news_before: None,
            on_news: false,
            news_fold_ms: None,
            hb_mismatch: BTreeMap::new(),
            other_epoch: BTreeSet::new(),
            moving: Default::default(),
            connected: BTreeSet::new(),
            connected_at: BTreeMap::new(),
            strangers: BTreeSet::new(),
            settle_dirty: BTreeSet::new(),
            settle_checked: BTreeSet::new(),
            incarnation,
            hb_seq: 0,
            said: None,
            unsaid: None,
            wider: BTreeMap::new(),
            discovered_ms: None,
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
            join_snapshot: None,
            join_gave_up: false,
            probe_delays: ProbeDelays::default(),
            overloaded: false,
            skew_warned: false,
            stopping: false,
            stalls: Default::default(),
            stalls_checked_ms: None,
            held: None,
            origin,
            pushed: Vec::new(),
            refused: BTreeSet::new(),
            standing: roster::Standing::Member,
            version: None,
            writes,
            ingress: BTreeMap::new(),
            spending: Default::default(),
            notify: Default::default(),
            notify_extra: Vec::new(),
        };
        core.release_previous_incarnations();
        core
    }

    /// Historic co-change statistics for soft-conflict prediction (from the git shell).
    pub fn set_cochange(&mut self, c: CoChange) {
        self.cochange = c;
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
                if self.digest != before {
                    self.cancel_lost();
                }
                self.claim_on_news(now, before);
            }
        }
        if self.push_pending {
            self.push_pending = false;
            // The pushes go out right after the writes are persisted, ahead of the events
            // and beats the same step queued: a claim settles on the peers' replies to
            // them, and each gossip message costs every receiver a signature check first.
            let queued = std::mem::take(&mut self.effects);
            let (persist, rest): (VecDeque<Effect>, VecDeque<Effect>) =
                queued.into_iter().partition(|e| {
                    matches!(
                        e,
                        Effect::Persist { .. } | Effect::Rebase(_) | Effect::BeginEpoch(_)
                    )
                });
            self.effects = persist;
            let now = self.last_now;
            for p in self.membership.alive(now) {
                self.open_session(&p, true);
            }
            self.effects.extend(rest);
        }
        self.effects.pop_front()
    }

    /// Adds a story written by this node. The caller must make the `Persist` effects
    /// durable before acknowledging.
    pub fn add_story(&mut self, new: &NewStory, wall_ms: u64) -> Result<StoryView, StateError> {
        if self.cfg.passive {
            return Err(StateError::Passive);
        }
        // One story is a batch of one: the same checks, numbering and view update.
        let mut added = self
            .add_stories(std::slice::from_ref(new), wall_ms)
            .map_err(|e| e.error)?;
        added
            .pop()
            .ok_or(StateError::Corrupt("no story written".into()))
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
        self.enforce_roster();
        // Unanswered probes are misses (and go again) before the states are read.
        self.send_probes(now_ms, false);
        let t = self.membership.tick(now_ms);
        let membership = &self.membership;
        self.strangers.retain(|p| !membership.knows(p));
        self.renew_alive_claims(now_ms);
        self.expire_awaiting(now_ms);
        // A new suspicion (or claims, capacity) goes out now rather than at the period.
        self.publish_beat(now_ms, false);
        for tr in &t {
            if tr.to == PeerState::Dead {
                self.emit(EventKind::PeerDead, None, None, 0, tr.peer.clone());
            }
        }
        self.check_claims(now_ms, wall_ms);
        self.check_stalls(now_ms);
        t
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
                if ev.node != from || from == self.peer || self.refused.contains(&from) {
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
            Input::Heartbeat { from, data } => self.beat_published(from, &data, now_ms),
            Input::Probe { from, data, reply } => self.answer_probe(from, &data, reply, now_ms),
            Input::ProbeAnswer { from, data } => self.probe_answered(from, &data, now_ms),
            Input::ProbeFailed { peer } => {
                self.counters.probes_failed += 1;
                self.probe_delays.failed(&peer);
                self.membership.probe_failed(&peer);
            }
            Input::SyncRequest {
                ref from, reply, ..
            } if self.refused.contains(from) => {
                // Nothing for a refused peer, nothing from it (its connection closes).
                self.effects.push_back(Effect::Respond {
                    reply,
                    data: Vec::new(),
                });
            }
            Input::SyncRequest { from, data, reply } => {
                let before = self.digest;
                let data = self.answer_sync(&from, &data);
                self.effects.push_back(Effect::Respond { reply, data });
                self.news_before.get_or_insert(before);
            }
            Input::SyncResponse { from, data } if self.prev_answered(&from, &data) => {}
            Input::SyncResponse { from, data } => {
                let before = self.digest;
                self.continue_sync(&from, &data);
                self.news_before.get_or_insert(before);
            }
            Input::SyncFailed { from } => {
                self.counters.sync_failures += 1;
                self.prev_failed(&from);
                // A sync asked for while this one was out (a new connection's full sync, a
                // push) still goes to a peer that is connected: it went down with the
                // failed session, and a node waiting for that peer to settle waited on
                // for anti-entropy or its backoff (clean seed 85328: a takeover late).
                let failed = self.sessions.remove(&from);
                if let Some(s) = failed.filter(|s| s.again && self.connected.contains(&from)) {
                    self.open_session_as(&from, s.again_push, s.again_full);
                }
                self.check_settling(now_ms);
            }
            Input::WorkFinished { claim, outcome } => {
                self.record_run_end(now_ms, &claim);
                self.finish_work(now_ms, &claim, outcome);
                // Capacity just freed: claim the next piece of work now, not at the tick.
                let wall = self.last_wall;
                self.check_claims(now_ms, wall);
            }
            Input::OriginProbed(outcome) => self.origin_probed(now_ms, outcome),
            Input::Connected(p) => self.connection_opened(p, now_ms),
            Input::Disconnected(p) => self.connection_lost(p, now_ms),
        }
    }
}

#[cfg(test)]
mod tests;
