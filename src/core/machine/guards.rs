//! The guards against claiming from a partial picture of the mesh (joining, clock
//! skew), the clean shutdown's handover, and what an earlier incarnation left claimed.

use super::*;

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
    /// Beyond the bound (allowing for `delay_ms` of one-way delay) with at least two
    /// peers agreeing: with one peer there is no telling which clock is wrong.
    pub skewed: bool,
    /// The bound: `max_clock_drift_ms`.
    pub bound_ms: u64,
    /// The one-way delay allowed for: `message_timeout_ms`, or this node's longest
    /// recent probe round trip if that is longer (a loaded machine delivers beats late,
    /// and a late beat is not a clock ahead).
    #[serde(default)]
    pub delay_ms: u64,
}

/// Probe round trips kept: the delay allowed for is the longest of them.
const DELAY_SAMPLES: usize = 16;

/// A round trip longer than this is not a sample (a probe answered after a pause).
const MAX_DELAY_MS: u64 = 60_000;

/// This node's probe round trips: from the probe leaving the core to its answer
/// reaching it, both sides' queues included, so under load they grow as the delays of
/// beats do.
#[derive(Debug, Default)]
pub(super) struct ProbeDelays {
    /// Per peer, when the earliest unanswered probe to it left (monotonic ms): an
    /// answer to a later one then reads as longer, never shorter.
    out: BTreeMap<String, u64>,
    /// The latest round trips, oldest first.
    rtts: VecDeque<u64>,
}

impl ProbeDelays {
    pub(super) fn sent(&mut self, peer: &str, now_ms: u64) {
        self.out.entry(peer.to_string()).or_insert(now_ms);
    }

    pub(super) fn answered(&mut self, peer: &str, now_ms: u64) {
        let Some(sent) = self.out.remove(peer) else {
            return;
        };
        let rtt = now_ms.saturating_sub(sent);
        if rtt <= MAX_DELAY_MS {
            self.rtts.push_back(rtt);
            while self.rtts.len() > DELAY_SAMPLES {
                self.rtts.pop_front();
            }
        }
    }

    /// The probe will get no answer (the shell says so).
    pub(super) fn failed(&mut self, peer: &str) {
        self.out.remove(peer);
    }

    fn longest(&self) -> u64 {
        self.rtts.iter().copied().max().unwrap_or(0)
    }

    /// The median of the recent round trips (0 with none): what a probe typically takes
    /// now, not moved by one paused peer.
    pub(super) fn median(&self) -> u64 {
        let mut rtts: Vec<u64> = self.rtts.iter().copied().collect();
        rtts.sort_unstable();
        rtts.get(rtts.len() / 2).copied().unwrap_or(0)
    }
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

/// Heartbeats per peer whose clock offsets are kept: a peer's offset is the smallest,
/// the one least inflated by delivery delay.
pub const CLOCK_SAMPLES: usize = 8;

impl Core {
    /// Turns the joining and clock-skew guards on (see [`Guards`]).
    pub fn set_guards(&mut self, guards: Guards) {
        self.guards = guards;
    }

    /// Sets the merge gate merge claims hold (see [`CoreConfig::merge_gate`]): known once
    /// the shell has opened the origin.
    pub fn set_merge_gate(&mut self, gate: Option<Resource>) {
        self.cfg.merge_gate = gate;
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
    pub fn clock_skew(&self) -> ClockSkew {
        let bound_ms = self.cfg.lease.max_clock_drift_ms;
        // (Kept with each peer's membership and computed again only when a sample or
        // who is alive changed: this runs several times a tick.)
        let (median_ms, n) = self.membership.clock_median();
        // offset = skew + delay with 0 <= delay <= the allowance: the skew is certainly
        // beyond the bound only past it on either side, delay included.
        let delay_ms = self
            .cfg
            .lease
            .message_timeout_ms
            .max(self.probe_delays.longest());
        let ahead = i128::from(bound_ms) + i128::from(delay_ms);
        let behind = -i128::from(bound_ms);
        let skewed = self.guards.clock_skew
            && n >= 2
            && median_ms.is_some_and(|m| i128::from(m) > ahead || i128::from(m) < behind);
        ClockSkew {
            median_ms,
            peers: n,
            skewed,
            bound_ms,
            delay_ms,
        }
    }

    /// Logs the guards' changes: the join wait running out, the clock going off the
    /// mesh's and coming back.
    pub(super) fn report_guards(&mut self, now_ms: u64) {
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
        let skew = self.clock_skew();
        if skew.skewed != self.skew_warned {
            self.skew_warned = skew.skewed;
            let median_ms = skew.median_ms.unwrap_or(0);
            if skew.skewed {
                tracing::error!(
                    median_ms,
                    bound_ms = skew.bound_ms,
                    delay_allowed_ms = skew.delay_ms,
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
        self.drop_proposal(Some(ReleaseReason::Shutdown), "holder shut down");
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
}

/// A restart: what an earlier incarnation of this node left claimed.
impl Core {
    /// A claim of this peer's that the document holds unreleased but this core does not
    /// was written by an earlier incarnation: its work died with that process. Released
    /// in the first change, before any sync, so peers only ever see it released. Left
    /// standing, a claim that never left the dying process would arrive with the restart
    /// and could win a token tie (lowest holder id) against the claim another node
    /// settled and ran meanwhile, voiding that work.
    ///
    /// Run again whenever a peer's changes arrive ([`Core::release_lost_claims`]): a
    /// claim the earlier incarnation pushed but never flushed is lost from the store in
    /// the crash and comes back only from a peer, after the restart.
    pub(super) fn release_previous_incarnations(&mut self) {
        self.release_stale_own_claims(false);
    }

    /// A peer's changes arrived: release any claim of an earlier incarnation of this node
    /// among them (numbered below this incarnation's claims). Its holder is alive, so its
    /// lease would never expire and its story would wait for it forever.
    pub(super) fn release_lost_claims(&mut self) {
        // Most changes bring none: a lookup decides that without the view's fold.
        if self
            .doc
            .has_unreleased_claims_upto(&self.peer, self.first_of_this_run())
        {
            self.release_stale_own_claims(true);
        }
    }

    /// Claims of this incarnation are numbered above this; an earlier one's at or below.
    fn first_of_this_run(&self) -> u64 {
        self.incarnation.saturating_mul(1000)
    }

    fn release_stale_own_claims(&mut self, only_earlier_numbers: bool) {
        if self.cfg.passive {
            return;
        }
        let first_of_this_run = self.first_of_this_run();
        let prefix = format!("{}-", self.peer);
        let earlier = |id: &str| {
            id.strip_prefix(&prefix)
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n <= first_of_this_run)
        };
        // The cached fold: after a peer's changes the next step needs it anyway.
        let claims = self.derived().1;
        let stale: Vec<String> = claims
            .all()
            .filter(|(id, c)| c.holder == self.peer && !claims.is_released(id))
            .filter(|(id, _)| !only_earlier_numbers || earlier(id))
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
}
