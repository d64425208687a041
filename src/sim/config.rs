//! The scenario a run plays: its size, fault mode, timings, and the liveness bound
//! derived from them.

use super::steer::{ATTEND_MS, MAX_SEND_BACKS};
use crate::core::fence::{token_check, Rule};
use crate::core::lease::LeaseConfig;
use crate::core::membership::MembershipConfig;
use crate::core::model::MAX_ATTEMPTS;
use crate::core::state::MAX_REWORKS;

/// Which faults a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Clean,
    Hostile,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    pub stories: usize,
    /// Planned files are drawn from a pool of this many names (`src/f0.txt`, ...): each
    /// story plans one file or two, so stories share files (with the default of 2, most
    /// do: changes made on the two sides of a partition meet at merge), and a fifth depend
    /// on an earlier story. The origin then models rebase conflicts: a merge whose change was
    /// based on a main that has since landed another story touching one of its files is
    /// refused (verdict reject). 0: no files, no dependencies, no conflicts (the backlog
    /// of issue 3).
    pub files: usize,
    pub mode: Mode,
    /// Virtual time with faults; then faults stop and the network heals. (Everything must
    /// then finish within [`SimConfig::liveness_bound_ms`].)
    pub chaos_ms: u64,
    pub phase_ms: u64,
    pub max_delay_ms: u64,
    pub membership: MembershipConfig,
    pub lease: LeaseConfig,
    pub capacity: u32,
    /// How often each node syncs with a random alive peer (the node's `anti_entropy_ms`).
    pub anti_entropy_ms: u64,
    /// How long a sync request waits for its answer (the transport's request timeout).
    pub sync_timeout_ms: u64,
    /// Count sync frames' bytes by field (`cost::FrameParts`; decodes every frame).
    pub count_frames: bool,
    /// Probability that a first-round review rejects, sending the story through a
    /// rework round (fresh resources and tokens per round).
    pub review_reject_rate: f64,
    /// Make the cores start work without checking they win (to prove the checks bite).
    pub broken_winner_rule: bool,
    /// Check every view a core updates in place against a fold (`CoreConfig::check_view`).
    pub check_view: bool,
    /// At the heal and at the end of a run, cut a new epoch's seed from a node's
    /// document (`Doc::seed`) and check it keeps the live mesh (`Sim::same_mesh`).
    pub check_seed: bool,
    /// With `check_seed`, also carry what node0 heard after the heal into the epoch cut
    /// at the heal (`Doc::carry_from`) and check it reads as node0 then does (but for
    /// what DESIGN.md §3.5 says an epoch may show otherwise: see `Sim::same_mesh`). The
    /// heal is no quiet cut: a release racing a takeover across it could be chosen the
    /// other way round (none has been seen).
    pub check_carry: bool,
    /// Nodes propose a new epoch once this many merged stories are live (0: never):
    /// the mesh moves while it works (`CoreConfig::epoch_after`).
    pub epoch_after: u32,
    /// node1 starts late, with an empty store, at a seeded moment in the second half of
    /// the chaos window: a new node meeting a mesh that has (with `epoch_after`) moved.
    /// With epochs, half the seeds bring it up instead as the first node moves to epoch 2
    /// (its peers on two epochs), or once faults stop if none did by then.
    pub late_join: bool,
    /// The rule the origin's fence applies to a landing: the product's
    /// [`token_check`]; a test swaps in a broken one to prove the invariants catch it.
    pub fence_rule: Rule<usize>,
    /// Keep a trace of every event (costly; for replaying one seed).
    pub trace: bool,
    /// Clean stops, the cores' joining and clock-skew guards, and skewed wall clocks.
    /// false: none of them, so a seed replays the run it made before they existed (for
    /// regression seeds found then).
    pub stops_guards_clocks: bool,
    /// Storage faults (see `sim::store`): the core's own writes reach the disk only at
    /// the store's background flush, so a crash loses the unflushed tail (and sometimes
    /// tears its first chunk); the backlog is added as user writes spread over the first
    /// half of the chaos window, each flushed before it is acknowledged, and a seeded
    /// [`WRITE_FAIL_RATE`] of them fail to append or flush and are aborted. false: every
    /// write is durable at once and the backlog is written at the start (the runs of
    /// before storage faults).
    pub storage_faults: bool,
    /// A broken shell that acknowledges a user write before flushing it (to prove the
    /// invariants catch a lost acknowledged write).
    pub ack_before_flush: bool,
    /// A broken shell that reports a failed user write but keeps it (no abort), to prove
    /// the invariants catch an aborted write that is seen.
    pub keep_failed_writes: bool,
    /// A broken shell that sends sync frames before what their heads hold is flushed (to
    /// prove the invariants catch a fencing token a crash can take back and hand out
    /// again: seed 1577 clean, with `start_before_flush` too).
    pub send_before_flush: bool,
    /// A broken shell that starts jobs before their claims are flushed (the same class:
    /// seed 2362 hostile, frames flushed).
    pub start_before_flush: bool,
    /// A remote origin: merge claims also hold the gate resource in the document, the
    /// origin is down for a few seeded windows of the chaos (a job ending then fails as
    /// an outage, `JobFailure::Origin`; a merge ending then has landed first in a third
    /// of the cases: the push went through, its answer was lost), and the cores' origin
    /// breakers run on the sim's timings. false: the runs of before (no gate, no
    /// outages; the schedule of other faults is the same either way).
    pub remote: bool,
    /// Byzantine-lite: the last node also forges during the chaos window — overwrites
    /// and deletes other nodes' facts, signs values in their names with its own key,
    /// replays facts, claims with inflated tokens and releases others' claims as a
    /// takeover would (`sim::byzantine`). Its core is honest otherwise; every invariant
    /// must still hold for every node. false: the runs of before.
    pub byzantine: bool,
    /// An operator steers (`sim::steer`): the mesh is closed (every node admitted by
    /// the operator at the start), part of the backlog waits at gates for approvals
    /// (the `approval` label, and results under the confidence trigger), and at random
    /// moments of the chaos the operator gives a random command through a random node
    /// that is up — pause and resume (a story, a node, the mesh), prioritize, context,
    /// assign, approve, dismiss, and a few cancels, requests for changes and unblocks;
    /// once the faults stop it resumes everything and approves what waits. Checked: no
    /// phase starts on a node whose view has it paused (story, node or mesh), held or
    /// cancelled, and no node lands a story its view has cancelled. Its own generator,
    /// so the other faults of a seed stay the same. false: the runs of before (an open
    /// mesh).
    pub steer: bool,
    /// A broken shell whose job queue starts each job half a phase after the core asked,
    /// without asking again: it starts work an operator paused or cancelled meanwhile
    /// (to prove the steering invariants catch that).
    pub broken_job_queue: bool,
    /// A broken shell that does not stop a job the core cancels (a lost claim, a
    /// cancelled story): it lets a cancelled story's merge land (to prove the landing
    /// check catches that).
    pub broken_cancel: bool,
    /// The operator sets this daily budget (micro-USD), split evenly into the nodes'
    /// allowances (`sim::budget`): the mesh must never spend more. Closes the mesh, as
    /// `steer` does. None: no budget.
    pub budget: Option<u64>,
    /// What a job reserves (micro-USD). Below what simulated jobs cost (up to $0.70), the
    /// reservation is no cap and the budget invariant must catch the overspend.
    pub reserve_micro_usd: u64,
}

/// The fraction of user writes whose append or flush fails (with storage faults).
pub const WRITE_FAIL_RATE: f64 = 0.1;
/// The fraction of crashes losing a tail whose first lost chunk reaches the disk torn.
pub const TEAR_RATE: f64 = 0.3;

impl SimConfig {
    pub fn new(mode: Mode) -> SimConfig {
        SimConfig {
            nodes: 4,
            stories: 6,
            files: 2,
            mode,
            chaos_ms: 6_000,
            phase_ms: 150,
            max_delay_ms: 20,
            membership: MembershipConfig {
                heartbeat_ms: 200,
                suspect_after_missed: 3,
                dead_after_ms: 1_000,
            },
            lease: LeaseConfig {
                ttl_ms: 1_200,
                grace_ms: 200,
                settle_timeout_ms: 400,
                max_clock_drift_ms: 100,
                message_timeout_ms: 200,
            },
            capacity: 2,
            anti_entropy_ms: 1_000,
            sync_timeout_ms: 1_000,
            count_frames: false,
            review_reject_rate: 0.2,
            broken_winner_rule: false,
            check_view: false,
            check_seed: false,
            check_carry: false,
            epoch_after: 0,
            late_join: false,
            fence_rule: token_check,
            trace: false,
            stops_guards_clocks: true,
            storage_faults: true,
            ack_before_flush: false,
            keep_failed_writes: false,
            send_before_flush: false,
            start_before_flush: false,
            remote: false,
            byzantine: false,
            steer: false,
            broken_job_queue: false,
            broken_cancel: false,
            budget: None,
            reserve_micro_usd: crate::core::BudgetConfig::default().reserve_micro_usd,
        }
    }

    /// The breaker the cores run with: open after two outages in a row, pauses of a
    /// phase doubling to four.
    /// Whether the mesh is closed (an operator admits every node).
    pub fn closed(&self) -> bool {
        self.steer || self.budget.is_some()
    }

    pub fn origin_breaker(&self) -> crate::core::breaker::BreakerConfig {
        crate::core::breaker::BreakerConfig {
            open_after: 2,
            base_ms: self.phase_ms,
            max_ms: 4 * self.phase_ms,
        }
    }
}

/// Counted steps a story can take at most: research, plan, implement, then rounds of
/// [rework,] review, merge — [`MAX_REWORKS`] of them after the first.
pub const MAX_STEPS_PER_STORY: u64 = 3 + 2 + 3 * MAX_REWORKS as u64;

impl SimConfig {
    /// How long a node that knows of a mesh waits to sync with it before it claims
    /// anyway: a lease expiry (the node's default is longer; the sim's leases are short).
    pub fn join_wait_ms(&self) -> u64 {
        if self.stops_guards_clocks {
            self.membership.dead_after_ms
        } else {
            0
        }
    }

    /// How long after the network heals and faults stop every story must be merged or
    /// blocked (with a reason): the liveness invariant. Derived from the config, for the
    /// worst case where every story waits for the one before it (all share files, or
    /// depend on each other in a chain), so nothing runs in parallel:
    ///
    /// * warm-up: the restarted nodes claim nothing for `suspect_after` beats, nor before
    ///   they synced with a peer (at most the join wait);
    /// * one lease expiry for a claim from before the heal: `dead_after + ttl + grace`;
    /// * then `stories × MAX_STEPS_PER_STORY` steps one after the other, each taking up to
    ///   `MAX_ATTEMPTS` attempts (a lost settle, a refused stale change), and each attempt
    ///   up to a settle timeout, the longest phase (`phase_ms × 3/2`), a tick
    ///   (`heartbeat/4`) and four network delays to spread the claim and the result.
    ///
    /// * with a remote origin, the longest breaker pause: outages stop with the faults.
    /// * with an operator (`steer`): the steps its requests for changes and unblocks add
    ///   ([`MAX_SEND_BACKS`] each, a round of rework, review and merge at most), and an
    ///   [`ATTEND_MS`] wait per gate — before implement, and before merge in every round
    ///   ([`MAX_REWORKS`] + 1, and one more per send-back) — and for the pauses to be
    ///   resumed.
    ///
    /// Capacity and node count only shorten this (stories that share nothing run in
    /// parallel), so they do not appear in the worst case. Nor does the store's flush
    /// cadence: writes are lost only in crashes, and crashes stop with the other faults,
    /// so a claim or result lost before the heal is one more claim from before the heal
    /// (covered by the lease expiry) or a step not yet done (covered by the steps).
    pub fn liveness_bound_ms(&self) -> u64 {
        let m = self.membership;
        let l = self.lease;
        let warm_up = (m.heartbeat_ms * u64::from(m.suspect_after_missed)).max(self.join_wait_ms());
        let expiry = m.dead_after_ms + l.ttl_ms + l.grace_ms;
        let attempt = l.settle_timeout_ms
            + self.phase_ms * 3 / 2
            + m.heartbeat_ms / 4
            + 4 * self.max_delay_ms;
        let mut steps = self.stories as u64 * MAX_STEPS_PER_STORY * u64::from(MAX_ATTEMPTS);
        let mut attend = 0;
        if self.steer {
            steps += 2 * MAX_SEND_BACKS as u64 * 3 * u64::from(MAX_ATTEMPTS);
            let gates = 2 + u64::from(MAX_REWORKS);
            attend = ATTEND_MS * (1 + self.stories as u64 * gates + 2 * MAX_SEND_BACKS as u64);
        }
        // A remote origin's breaker may still hold a node back after the heal: its longest
        // pause (+25 % jitter) before the probe that closes it.
        let breaker = if self.remote {
            self.origin_breaker().max_ms * 5 / 4
        } else {
            0
        };
        warm_up + expiry + breaker + attend + steps * attempt
    }
}

/// On odd seeds every story a node writes is vouched for by a seal (`trust::vouch`), as
/// a bulk write's are, on even ones signed alone, as a single story is: a sweep takes
/// both down every path (admission, forgeries, restarts, epochs).
pub(super) fn vouch_from(seed: u64) -> usize {
    if seed % 2 == 1 {
        1
    } else {
        crate::core::state::VOUCH_FROM
    }
}
