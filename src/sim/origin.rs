//! The git origin as the simulator models it: main's history, the bases changes were
//! made on (for rebase conflicts), and the fence, through which implement and merge go.

use super::Sim;
use crate::core::model::Phase;
use crate::core::sim_handoff::sim_handoff;
use crate::core::Job;
use rand::Rng;
use std::collections::BTreeMap;

/// The git origin as the fence sees it.
#[derive(Debug, Default)]
pub(super) struct Origin {
    fence: BTreeMap<String, u64>,
    pub(super) landed: BTreeMap<String, Vec<(usize, u64)>>,
    /// Main's history: the landed stories in order, with the files they changed.
    main: Vec<(String, Vec<String>)>,
    /// The main each change was made on (its length then), by the change's claim.
    bases: BTreeMap<String, usize>,
}

impl Origin {
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
                .then(|| files.iter().find(|f| job.fact.files.contains(f)).cloned())
                .flatten()
        })
    }
}
impl Sim {
    /// The executor's outcome, through the origin's fence for implement and merge.
    pub(super) fn outcome(
        &mut self,
        i: usize,
        job: &Job,
    ) -> Result<crate::core::model::Handoff, String> {
        match job.phase {
            Phase::Implement => {
                let recorded = self.origin.fence.get(&job.story).copied().unwrap_or(0);
                if job.token < recorded {
                    return Err(format!("fence refused token {} < {recorded}", job.token));
                }
                self.origin.fence.insert(job.story.clone(), job.token);
                let base = self.origin.base_of(job);
                self.origin.bases.insert(job.claim.clone(), base);
                Ok(sim_handoff(job))
            }
            Phase::Rework => {
                let base = self.origin.base_of(job);
                self.origin.bases.insert(job.claim.clone(), base);
                Ok(sim_handoff(job))
            }
            Phase::Merge => {
                let implemented = job
                    .handoffs
                    .iter()
                    .find(|h| h.phase == Phase::Implement)
                    .map(|h| h.token);
                let Some(token) = implemented else {
                    return Err("nothing implemented to land".into());
                };
                let recorded = self.origin.fence.get(&job.story).copied().unwrap_or(0);
                if token < recorded {
                    return Err(format!("fence refused token {token} < {recorded}"));
                }
                // Landed by an earlier holder that stopped before recording it: the
                // gate answers "already landed" and the merge is done (as work.rs does).
                if self.origin.landed.contains_key(&job.story) {
                    let mut h = sim_handoff(job);
                    h.summary = "already landed".into();
                    h.verdict = Some(crate::core::model::Verdict::Approve);
                    return Ok(h);
                }
                if let Some(file) = self.origin.conflict(job) {
                    let mut h = sim_handoff(job);
                    h.verdict = Some(crate::core::model::Verdict::Reject);
                    h.summary = format!("rebase conflict in {file} (simulated)");
                    return Ok(h);
                }
                self.origin
                    .main
                    .push((job.story.clone(), job.fact.files.clone()));
                self.origin
                    .landed
                    .entry(job.story.clone())
                    .or_default()
                    .push((i, token));
                Ok(sim_handoff(job))
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
