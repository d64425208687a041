//! The git origin as the simulator models it: main's history, the bases changes were
//! made on (for rebase conflicts), and the fence, through which a merge lands.
//!
//! The fence is the product's: one [`FenceRecord`] per story, and a merge lands under
//! `fence_token(round, merge token)` with its node as the holder only if the run's
//! [`Rule`] ([`crate::core::fence::token_check`] unless a test breaks it) lets it
//! through, exactly as `work` and `fence` land. Implement and rework record nothing at
//! the fence (the product only pushes their commits to a work ref; a stale change is
//! fenced out of the views, and its merge at the origin). A landed commit is named by
//! main's length after it landed.
//!
//! One difference, on purpose: the product's `land` also refuses a second commit for a
//! story the record says landed, a backstop behind the rule. The model trusts the rule
//! alone (a token it lets through lands), so a broken rule shows as a story landed twice.

use super::Sim;
use crate::core::fence::{fence_token, FenceRecord, FenceToken, Refused, Rule};
use crate::core::model::Phase;
use crate::core::sim_handoff::sim_handoff;
use crate::core::Job;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// The git origin as the fence sees it.
#[derive(Debug)]
pub(super) struct Origin {
    /// The rule the fence applies.
    rule: Rule<usize>,
    /// The fence record per story.
    fence: BTreeMap<String, FenceRecord<usize>>,
    /// Every landing per story: (node, fence token).
    pub(super) landed: BTreeMap<String, Vec<(usize, FenceToken)>>,
    /// The synthetic commit each story landed as (its landing merge's).
    commits: BTreeMap<String, String>,
    /// Main's history: the landed stories in order, with the files they changed.
    main: Vec<(String, Vec<String>)>,
    /// The main each change was made on (its length then), by the change's claim.
    bases: BTreeMap<String, usize>,
    /// Remote origins: the windows [from, to) it is down, and their own generator, so
    /// the other faults of a seed stay the same.
    down: Vec<(u64, u64)>,
    rng: StdRng,
    pub(super) deferred: u64,
    pub(super) lost_answers: u64,
}

impl Origin {
    pub(super) fn new(rule: Rule<usize>) -> Origin {
        Origin {
            rule,
            fence: BTreeMap::new(),
            landed: BTreeMap::new(),
            commits: BTreeMap::new(),
            main: Vec::new(),
            bases: BTreeMap::new(),
            down: Vec::new(),
            rng: StdRng::seed_from_u64(0),
            deferred: 0,
            lost_answers: 0,
        }
    }

    /// One to three outages of 0.3–3 s within the chaos window.
    pub(super) fn schedule_outages(&mut self, seed: u64, chaos_ms: u64) {
        self.rng = StdRng::seed_from_u64(seed ^ 0x0d0e_c0de_0d0e_c0de);
        for _ in 0..self.rng.gen_range(1..=3) {
            let from = self.rng.gen_range(300..chaos_ms.max(301));
            let to = (from + self.rng.gen_range(300..3_000)).min(chaos_ms);
            self.down.push((from, to));
        }
    }

    /// `t`, moved past the end of every outage that starts before `t + bound` (and so on,
    /// for outages that start before the moved deadline): when a bound that starts at `t`
    /// should start, with the origin's downtime not counted.
    pub(super) fn outages_end(&self, t: u64, bound: u64) -> u64 {
        windows_end(&self.down, t, bound)
    }

    /// Whether the origin is down at `t`.
    pub(super) fn is_down(&self, t: u64) -> bool {
        self.down.iter().any(|&(from, to)| (from..to).contains(&t))
    }

    /// The base of a new implement or rework: main now, except for a rework after a
    /// rejecting review, which amends the reviewed change on that change's base (as
    /// `work` does).
    fn base_of(&self, job: &Job) -> usize {
        if job.phase == Phase::Rework {
            let last_reject = job
                .handoffs
                .iter()
                .rev()
                .find(|h| h.handoff.verdict == Some(crate::core::model::Verdict::Reject));
            if last_reject.is_some_and(|h| h.phase == Phase::Review) {
                if let Some(b) = Self::change(job).and_then(|c| self.bases.get(&c.claim)) {
                    return *b;
                }
            }
        }
        self.main.len()
    }

    /// The change a review or merge works on: the latest implement or rework.
    fn change(job: &Job) -> Option<&crate::core::model::ResultFact> {
        job.handoffs
            .iter()
            .rev()
            .find(|h| matches!(h.phase, Phase::Implement | Phase::Rework))
    }

    /// A file of the job's story that main changed since its change's base, if any.
    fn conflict(&self, job: &Job) -> Option<String> {
        let base = Self::change(job)
            .and_then(|c| self.bases.get(&c.claim))
            .copied()
            .unwrap_or(0);
        self.main.get(base..)?.iter().find_map(|(story, files)| {
            (*story != job.story)
                .then(|| {
                    files
                        .iter()
                        .find(|f| job.fact.files.iter().any(|g| **g == ***f))
                        .cloned()
                })
                .flatten()
        })
    }
}
impl Sim {
    /// A job's outcome at a remote origin that may be down: an outage fails it (after
    /// landing, for a third of the merges: the answer was lost), else the executor's.
    pub(super) fn remote_outcome(
        &mut self,
        i: usize,
        job: &Job,
    ) -> Result<crate::core::model::Handoff, crate::core::JobFailure> {
        if !self.origin.is_down(self.now) {
            return self.outcome(i, job).map_err(crate::core::JobFailure::Work);
        }
        self.origin.deferred += 1;
        if job.phase == Phase::Merge && self.origin.rng.gen_bool(1.0 / 3.0) {
            // Landed (or refused) at the origin; the node never hears.
            if self.outcome(i, job).is_ok() {
                self.origin.lost_answers += 1;
            }
        }
        Err(crate::core::JobFailure::Origin(
            "cannot reach the origin (simulated outage)".into(),
        ))
    }

    /// The executor's outcome; a merge lands through the origin's fence.
    pub(super) fn outcome(
        &mut self,
        i: usize,
        job: &Job,
    ) -> Result<crate::core::model::Handoff, String> {
        match job.phase {
            Phase::Implement | Phase::Rework => {
                let base = self.origin.base_of(job);
                self.origin.bases.insert(job.claim.clone(), base);
                Ok(sim_handoff(job))
            }
            Phase::Merge => {
                if !job.handoffs.iter().any(|h| h.phase == Phase::Implement) {
                    return Err("nothing implemented to land".into());
                }
                let token = fence_token(job.round, job.token);
                let holder = self.names[i].clone();
                let current = self.origin.fence.get(&job.story);
                match (self.origin.rule)(current, token, &holder) {
                    // Landed under another claim (an earlier holder that stopped before
                    // its result counted, or a newer one): the merge is done, as work.rs
                    // answers a fenced `AlreadyLanded`: with the commit it landed as.
                    Some(Refused::AlreadyLanded { .. }) => {
                        let mut h = sim_handoff(job);
                        h.summary = "already landed".into();
                        h.commit = self.origin.commits.get(&job.story).cloned();
                        h.verdict = Some(crate::core::model::Verdict::Approve);
                        return Ok(h);
                    }
                    Some(refused) => return Err(refused.to_string()),
                    None => {}
                }
                if let Some(file) = self.origin.conflict(job) {
                    let mut h = sim_handoff(job);
                    h.verdict = Some(crate::core::model::Verdict::Reject);
                    h.summary = format!("rebase conflict in {file} (simulated)");
                    return Ok(h);
                }
                self.check_landing(i, &job.story);
                self.origin
                    .main
                    .push((job.story.clone(), job.fact.planned_files()));
                let record = FenceRecord {
                    token,
                    holder,
                    landed: Some(self.origin.main.len()),
                };
                self.origin.fence.insert(job.story.clone(), record);
                self.origin
                    .landed
                    .entry(job.story.clone())
                    .or_default()
                    .push((i, token));
                let h = sim_handoff(job);
                self.origin
                    .commits
                    .insert(job.story.clone(), h.summary.clone());
                Ok(h)
            }
            Phase::Review if job.round == 0 && self.rng.gen_bool(self.cfg.review_reject_rate) => {
                let mut h = sim_handoff(job);
                h.verdict = Some(crate::core::model::Verdict::Reject);
                h.summary = "needs another pass (simulated)".into();
                Ok(h)
            }
            _ => Ok(sim_handoff(job)),
        }
    }
}

/// `t`, moved past the end of every window (from, to) that starts before `t + bound`,
/// and so on for windows that start before the moved deadline.
pub(super) fn windows_end(windows: &[(u64, u64)], t: u64, bound: u64) -> u64 {
    let mut start = t;
    loop {
        let moved = windows
            .iter()
            .filter(|&&(from, to)| from <= start + bound && to > start)
            .map(|&(_, to)| to)
            .max();
        match moved {
            Some(to) if to > start => start = to,
            _ => return start,
        }
    }
}
