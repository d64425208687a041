//! Latency histograms the core records for `/metrics`: how long this node's claims took
//! from being written to settling (or losing at settle), and how long its runs took, by
//! phase. Bucket counts only, with fixed bounds, so memory stays bounded however long
//! the node runs; time comes in as an argument like everywhere in the core.

use super::*;

/// Upper bounds (ms) of the settle-latency buckets: loopback settles in milliseconds, a
/// partitioned peer holds a claim up to the settle timeout.
pub const SETTLE_BOUNDS_MS: [u64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
];

/// Upper bounds (ms) of the phase-duration buckets: the simulated executor's phases take
/// milliseconds, real agents minutes to an hour.
pub const PHASE_BOUNDS_MS: [u64; 14] = [
    10, 50, 100, 500, 1_000, 5_000, 10_000, 30_000, 60_000, 300_000, 600_000, 1_800_000, 3_600_000,
    7_200_000,
];

/// A histogram with fixed bucket bounds: `counts[i]` observations at most `bounds_ms[i]`
/// (and above the bound before it); the last count is above every bound.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Histogram {
    pub bounds_ms: Vec<u64>,
    /// Per bucket, not cumulative: `bounds_ms.len() + 1` entries.
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum_ms: u64,
}

impl Histogram {
    pub fn new(bounds_ms: &[u64]) -> Histogram {
        Histogram {
            bounds_ms: bounds_ms.to_vec(),
            counts: vec![0; bounds_ms.len() + 1],
            count: 0,
            sum_ms: 0,
        }
    }

    pub fn observe(&mut self, ms: u64) {
        let i = self.bounds_ms.partition_point(|&b| b < ms);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.count += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }
}

/// How a claim's settle ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SettleOutcome {
    /// It won and its work started.
    Settled,
    /// It was released at settle (another claim won, peers unreachable, the story moved
    /// on or was paused).
    Lost,
}

impl SettleOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SettleOutcome::Settled => "settled",
            SettleOutcome::Lost => "lost",
        }
    }
}

/// The core's latency histograms (in [`Counters`], so `status --json` has them too).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Latency {
    /// Claim written → settled or lost, by outcome.
    pub settle: BTreeMap<SettleOutcome, Histogram>,
    /// Settled → the job's outcome reported (ok or failed), by phase. A run cancelled
    /// before it reports (claim lost, story cancelled, shutdown) is not counted.
    pub phases: BTreeMap<Phase, Histogram>,
}

impl Latency {
    pub fn settled(&mut self, outcome: SettleOutcome, ms: u64) {
        self.settle
            .entry(outcome)
            .or_insert_with(|| Histogram::new(&SETTLE_BOUNDS_MS))
            .observe(ms);
    }

    pub fn ran(&mut self, phase: Phase, ms: u64) {
        self.phases
            .entry(phase)
            .or_insert_with(|| Histogram::new(&PHASE_BOUNDS_MS))
            .observe(ms);
    }

    /// Runs whose outcome was reported, over all phases.
    pub fn runs(&self) -> u64 {
        self.phases.values().map(|h| h.count).sum()
    }
}

impl Core {
    /// When each of these settling claims was written (before `check_settling` decides).
    pub(super) fn settle_marks(&self, ids: &[(String, bool)]) -> Vec<(String, u64)> {
        ids.iter()
            .filter_map(|(id, _)| self.local.get(id).map(|c| (id.clone(), c.written_ms)))
            .collect()
    }

    /// Records how the settles of `marks` ended: running now, or released.
    pub(super) fn record_settles(&mut self, now_ms: u64, marks: Vec<(String, u64)>) {
        for (id, written) in marks {
            let outcome = match self.local.get(&id).map(|c| &c.state) {
                Some(LocalState::Running) => SettleOutcome::Settled,
                Some(_) => continue,
                None => SettleOutcome::Lost,
            };
            let ms = now_ms.saturating_sub(written);
            self.counters.latency.settled(outcome, ms);
        }
    }

    /// A job of ours reported its outcome: how long it ran.
    pub(super) fn record_run_end(&mut self, now_ms: u64, claim: &str) {
        if !self
            .local
            .get(claim)
            .is_some_and(|c| c.state == LocalState::Running)
        {
            return;
        }
        if let Some(r) = self.runs.iter().rev().find(|r| r.claim == claim) {
            let (phase, ms) = (r.phase, now_ms.saturating_sub(r.started_ms));
            self.counters.latency.ran(phase, ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_at_or_above_them() {
        let mut h = Histogram::new(&[10, 100]);
        for ms in [0, 10, 11, 100, 101, u64::MAX] {
            h.observe(ms);
        }
        assert_eq!(h.counts, vec![2, 2, 2]);
        assert_eq!(h.count, 6);
        assert_eq!(h.sum_ms, u64::MAX, "the sum saturates");
    }

    #[test]
    fn latency_keys_are_bounded_by_outcomes_and_phases() {
        let mut l = Latency::default();
        for i in 0..1000 {
            l.settled(SettleOutcome::Settled, i);
            l.ran(Phase::ALL[i as usize % Phase::ALL.len()], i);
        }
        assert_eq!(l.settle.len(), 1);
        assert_eq!(l.phases.len(), Phase::ALL.len());
        assert_eq!(l.runs(), 1000);
        assert!(l
            .phases
            .values()
            .all(|h| h.counts.len() == PHASE_BOUNDS_MS.len() + 1));
    }
}
