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

use crate::codec;
use crate::lease::{
    claim_id, resource_free, ClaimFact, Claims, CoChange, LeaseConfig, LeaseObserver, ReleaseFact,
    ReleaseReason, Resource,
};
use crate::membership::{
    Membership, MembershipConfig, Observed, PeerState, PeerStatus, Transition,
};
use crate::model::{
    Event, EventKind, Handoff, Heartbeat, KnowledgeFact, MergeFact, NewStory, NodeFact, Phase,
    ResultFact, StoryFact, Topic, Verdict, MAX_EVENT_DETAIL,
};
use crate::scheduler;
use crate::state::{
    relevant_knowledge, reset_sync_state, ChangeHash, Doc, StateError, StoryView, SyncState, View,
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
    pub knowledge: Vec<crate::model::KnowledgeFact>,
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
    /// The local event log: (local position, event), bounded.
    events: VecDeque<(u64, Event)>,
    events_logged: u64,
    /// This node's own event counter.
    event_seq: u64,
    /// Stories that stopped moving (`stalled` events), and when it last looked.
    stalls: crate::scheduler::StallWatch,
    stalls_checked_ms: Option<u64>,
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
            events: VecDeque::new(),
            events_logged: 0,
            event_seq: 0,
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
            self.release(&id, ReleaseReason::Abandoned, "holder restarted");
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

    /// Starts or stops claiming new work. Starting claims at once.
    pub fn set_work(&mut self, on: bool, now_ms: u64, wall_ms: u64) {
        self.cfg.work = on && !self.cfg.passive;
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
        if self.cfg.passive {
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
    /// [`crate::scheduler::StallWatch`]); looks once per heartbeat period at most.
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
                self.log_event(ev);
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
        self.effects.push_back(Effect::SendSync {
            to: peer.to_string(),
            data: codec::encode(&SyncFrame {
                start: true,
                msg,
                push: pushed.into_iter().map(serde_bytes::ByteBuf::from).collect(),
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
        codec::encode(&SyncFrame {
            start: false,
            msg,
            push: Vec::new(),
        })
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
                    data: codec::encode(&SyncFrame {
                        start: false,
                        msg,
                        push: Vec::new(),
                    }),
                });
            }
            Some(_) => {
                tracing::warn!(%peer, "sync session exceeded {MAX_SYNC_ROUNDS} rounds; abandoned");
            }
            None => {
                self.counters.sync_sessions_completed += 1;
                self.completed.insert(peer.to_string(), session.id);
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
        // A takeover: the expired winners of these resources are released on their behalf.
        let mut taken_from = Vec::new();
        for (r, _) in &fact.resources {
            if let Some(old) = claims.winner(r) {
                let old = old.to_string();
                if let Some(h) = view.claims.get(&old) {
                    taken_from.push(crate::state::peer_tag(&h.holder).to_string());
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
                self.release(claim, ReleaseReason::Abandoned, &reason);
                self.emit(
                    EventKind::PhaseFailed,
                    Some(&c.story),
                    Some(c.phase),
                    c.round,
                    reason,
                );
            }
        }
        let blocked = self
            .view()
            .stories
            .get(&c.story)
            .and_then(|s| s.blocked_reason.clone());
        if let Some(why) = blocked {
            self.emit(EventKind::StoryBlocked, Some(&c.story), None, c.round, why);
        }
        self.observer.forget(claim);
        let _ = now_ms;
    }

    fn log_event(&mut self, mut ev: Event) {
        if ev.detail.len() > MAX_EVENT_DETAIL {
            let mut cut = MAX_EVENT_DETAIL;
            while !ev.detail.is_char_boundary(cut) {
                cut -= 1;
            }
            ev.detail.truncate(cut);
        }
        self.events_logged += 1;
        self.events.push_back((self.events_logged, ev));
        while self.events.len() > EVENT_LOG_CAPACITY {
            self.events.pop_front();
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
        self.event_seq += 1;
        let ev = Event {
            node: self.peer.clone(),
            seq: self.event_seq,
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
        kind: crate::model::KnowledgeKind,
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
        if text.len() > crate::state::MAX_KNOWLEDGE_BYTES {
            return Err(format!(
                "knowledge text is {} bytes; the limit is {}",
                text.len(),
                crate::state::MAX_KNOWLEDGE_BYTES
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

    /// Events logged after local position `after` (0 for all kept), oldest first, with
    /// their positions.
    pub fn events_after(&self, after: u64, limit: usize) -> Vec<(u64, Event)> {
        self.events
            .iter()
            .filter(|(n, _)| *n > after)
            .take(limit)
            .cloned()
            .collect()
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

    #[test]
    fn garbage_from_the_network_is_dropped_and_counted_never_a_panic() {
        let mut a = core("A", 1);
        let garbage: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xff; 10],
            vec![codec::WIRE_VERSION, 1, 2, 3],
            codec::encode(&SyncFrame {
                start: true,
                msg: vec![9; 40],
                push: Vec::new(),
            }),
            codec::encode(&SyncFrame {
                start: true,
                msg: Vec::new(),
                push: vec![serde_bytes::ByteBuf::from(vec![7; 64])],
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

    #[test]
    fn a_story_without_progress_past_stall_after_raises_one_stalled_event() {
        let mut c = core("a", 9);
        c.cfg.stall_after_ms = 5_000;
        let new = crate::model::NewStory {
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
