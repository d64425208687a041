//! The simulator's money (`SimConfig::budget`, `--budget`): the operator sets a daily
//! budget through node0 before anyone connects, split evenly into every node's allowance;
//! every simulated job costs what the `sim` executor reports for it
//! ([`crate::core::sim_handoff::sim_usage`], always under a job's reservation).
//!
//! The invariant, checked at every job start (the moment money is spent, counted in full
//! however the job ends): the mesh's true spend on each day — every job started, on any
//! node, whatever the partitions, crashes, lost writes and races — never exceeds the
//! budget, and no job starts without a reservation of its own in its node's view.
//!
//! Liveness with a budget: once faults stop, every story finishes, or the money is gone
//! (what is left of the day's budget in the converged view is under two reservations).
//! The takeover bound of the lease checks does not apply: a taker short of allowance
//! waits for a gift first.

use super::steer::OPERATOR;
use super::Sim;
use crate::core::state::{command_key, day_of, usd, CommandFact, Op, Target};
use crate::core::trust::Signer;
use crate::core::Job;

impl Sim {
    /// The operator sets the budget through node0 (after the admissions).
    pub(super) fn set_budget(&mut self) {
        let Some(daily) = self.cfg.budget else {
            return;
        };
        let n = self.names.len().max(1) as u64;
        let shares = self
            .names
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), daily / n + u64::from((i as u64) < daily % n)))
            .collect();
        let fact = CommandFact {
            target: Target::All,
            op: Op::Budget {
                daily_micro_usd: Some(daily),
                shares,
            },
            at_ms: 1,
        };
        let Ok(json) = serde_json::to_string(&fact) else {
            return;
        };
        let key = command_key(OPERATOR, &json);
        let sealed = Signer::for_test(OPERATOR).seal(&key, &json);
        if let Err(e) = self.write_signed(0, &key, &sealed) {
            self.violation(format!("node0 refused the budget: {e}"));
        }
    }

    /// Node `i` starts `job`: its cost is spent now. Checks the job reserved, and that
    /// the day's true spend stays within the budget.
    pub(super) fn spend(&mut self, i: usize, job: &Job) {
        let Some(daily) = self.cfg.budget else {
            return;
        };
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let view = core.view();
        let cost = crate::core::sim_handoff::sim_usage(job).cost_micro_usd;
        let Some(day) = view
            .ledger
            .entries
            .get(&job.claim)
            .filter(|e| e.reserved.is_some())
            .map(|e| e.day)
        else {
            let day = day_of(self.wall(i));
            self.violation(format!(
                "node{i} started {} of {} (claim {}) with no reservation in its view (day {day})",
                job.phase, job.display_id, job.claim
            ));
            return;
        };
        let spent = self.spent.entry(day).or_default();
        *spent = spent.saturating_add(cost);
        let spent = *spent;
        if spent > daily {
            self.violation(format!(
                "node{i} started {} of {}: the mesh has now spent {} on day {day}, over its \
                 budget of {}",
                job.phase,
                job.display_id,
                usd(spent),
                usd(daily)
            ));
        }
    }

    /// Whether the money ran out in the converged view of node `i` (so unfinished stories
    /// are excused): what is left of the day's budget is under one reservation.
    pub(super) fn out_of_money(&mut self, i: usize) -> bool {
        let Some(daily) = self.cfg.budget else {
            return false;
        };
        let day = day_of(self.wall(i));
        let Some(core) = self.nodes[i].core.as_mut() else {
            return false;
        };
        let view = core.view();
        let reserve = self.cfg.reserve_micro_usd;
        daily.saturating_sub(view.ledger.charged_on(day)) < reserve * 2
    }
}
