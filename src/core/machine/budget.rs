//! Money in the running core (docs/DESIGN.md §16): a job starts only with its cost
//! reserved from this node's own allowance (in the claim's change), its usage is booked
//! when it ends, a node short of allowance asks its peers and one with spare gives; and
//! a provider's rate limit makes this node back off and claim more slowly.
//!
//! The books and why they never let the mesh overspend are in
//! [`crate::core::state::Ledger`]'s module; this file only decides when to write.

use super::*;
use crate::core::state::{day_of, usd, BudgetFact, Usage};
use sha2::{Digest, Sha256};

/// The knobs (config keys of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetConfig {
    /// What one job reserves before it starts (`budget_reserve_usd`): its worst cost. A
    /// job that reports more is charged what it reports.
    pub reserve_micro_usd: u64,

    /// Back-off after a provider's rate limit: the first wait, doubled on each one in a
    /// row up to `rate_limit_max_ms`.
    pub rate_limit_base_ms: u64,
    pub rate_limit_max_ms: u64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            reserve_micro_usd: 1_000_000,
            rate_limit_base_ms: 2_000,
            rate_limit_max_ms: 120_000,
        }
    }
}

/// This node's spending state: why it last could not claim for money, its asks, and its
/// rate-limit back-off.
#[derive(Debug, Clone, Default)]
pub(super) struct Spending {
    /// Why the last claim attempt found no allowance (cleared when one is found).
    short: Option<String>,
    /// The last claim attempt found no work for this node (its allowance is spare).
    pub(super) idle: bool,

    /// Rate limits in a row (0: none since the last job that ran clean).
    limited: u32,
    /// No claim before this (mono ms).
    backoff_until: u64,
    /// At least this long between two claims (mono ms; 0: no pacing).
    claim_gap_ms: u64,
    last_claim_ms: u64,
    /// Rate limits reported in all, and the latest reason.
    limits_seen: u64,
    last_limit: String,
}

/// What `status` shows of this node's money and pacing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendStatus {
    /// Today's allowance, with a budget set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowance: Option<crate::core::state::Allowance>,
    /// The mesh's budget today and what every node charged to it (as this node knows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_micro_usd: Option<u64>,
    pub mesh_charged_micro_usd: u64,
    /// Why this node claims nothing for lack of allowance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short: Option<String>,
    /// The rate-limit back-off in force: ms left, and the least time between claims.
    pub backoff_ms: u64,
    pub claim_gap_ms: u64,
    pub rate_limits: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_rate_limit: String,
}

impl Core {
    /// The last claim attempt found no allowance for a job (and none arrived since).
    pub(super) fn out_of_allowance(&self) -> bool {
        self.spending.short.is_some()
    }

    /// The reservation this node's next job must make, or why it may not claim: `None`
    /// with no budget set. Also says why, once, when the answer changes.
    pub(super) fn budget_check(&mut self, wall_ms: u64) -> Result<Option<u64>, String> {
        let view = self.view();
        let Some(budget) = view.steering.budget.as_ref() else {
            self.spending.short = None;
            return Ok(None);
        };
        let reserve = self.cfg.budget.reserve_micro_usd;
        let day = day_of(wall_ms);
        let a = view.ledger.allowance(Some(budget), &self.peer, day);
        if a.balance >= reserve as i64 {
            if self.spending.short.take().is_some() {
                tracing::info!(balance = a.balance, "allowance available again: claiming");
            }
            return Ok(Some(reserve));
        }
        let why = format!(
            "out of allowance: {} left of today's {} (share {}, given {}, received {}), a \
             job reserves {}; asking peers",
            usd(a.balance.max(0) as u64),
            usd(budget.daily_micro_usd),
            usd(a.share),
            usd(a.given),
            usd(a.received),
            usd(reserve)
        );
        if self.spending.short.as_deref() != Some(why.as_str()) {
            tracing::warn!(%why, "claiming nothing");
            self.spending.short = Some(why.clone());
        }
        Err(why)
    }

    /// The reservation fact for a claim about to be written.
    pub(super) fn reservation(
        &self,
        claim: &str,
        story: &str,
        phase: Phase,
        micro_usd: u64,
        wall_ms: u64,
    ) -> BudgetFact {
        BudgetFact::Reserve {
            claim: claim.to_string(),
            story: story.to_string(),
            phase,
            day: day_of(wall_ms),
            micro_usd,
            at_ms: wall_ms,
        }
    }

    /// Books what a job of ours used: always when it reserved (a claim that never ran
    /// books zero, freeing its reservation), and whenever the executor reported usage.
    pub(super) fn book_usage(&mut self, claim: &str, story: &str, phase: Phase, usage: Usage) {
        let view = self.view();
        let reserved = view.ledger.entries.get(claim).and_then(|e| e.reserved);
        if reserved.is_none() && usage == Usage::default() {
            return;
        }
        if view
            .ledger
            .entries
            .get(claim)
            .is_some_and(|e| e.usage.is_some())
        {
            return;
        }
        let wall = self.last_wall;
        let fact = BudgetFact::Usage {
            claim: claim.to_string(),
            story: story.to_string(),
            phase,
            day: day_of(wall),
            usage,
            at_ms: wall,
        };
        if let Some(r) = reserved.filter(|r| usage.cost_micro_usd > *r) {
            tracing::warn!(%claim, reserved = r, cost = usage.cost_micro_usd,
                "a job cost more than it reserved: raise budget_reserve_usd");
        }
        match self.doc.put_budget(&fact, &self.peer) {
            Ok(()) => self.local_write(),
            Err(e) => tracing::error!(%claim, error = %e, "cannot book a job's usage"),
        }
    }

    /// Asks for allowance when short with work waiting, and gives spare allowance to
    /// alive peers' open asks. Runs on every tick.
    pub(super) fn budget_tick(&mut self, now_ms: u64, wall_ms: u64) {
        if self.cfg.passive || !self.cfg.work || self.stopping {
            return;
        }
        let view = self.view();
        let Some(budget) = view.steering.budget.clone() else {
            return;
        };
        let day = day_of(wall_ms);
        let reserve = self.cfg.budget.reserve_micro_usd;
        let mine = view.ledger.allowance(Some(&budget), &self.peer, day);
        let want = (reserve.saturating_mul(u64::from(self.cfg.capacity.max(1))) as i64)
            .saturating_sub(mine.balance);
        let waiting = view
            .stories
            .values()
            .any(|s| matches!(s.status, StoryStatus::Ready | StoryStatus::InProgress));
        // Ask: short of one job's reservation with work waiting, and no ask of ours
        // standing. An ask stands until a give answers it (then, still short, this node
        // asks again): one that no one can answer yet waits in the document for a peer
        // that comes to have spare, so an idle, penniless mesh writes nothing.
        if self.spending.idle {
            self.spending.short = None;
        }
        if self.spending.short.is_some() && waiting && want > 0 {
            let n = view
                .ledger
                .asks
                .get(&(self.peer.clone(), day))
                .map_or(0, |a| a.n);
            let answered = n == 0
                || view
                    .ledger
                    .gives
                    .keys()
                    .any(|(_, to, d, k)| to == &self.peer && *d == day && *k == n);
            if answered {
                let fact = BudgetFact::Ask {
                    peer: self.peer.clone(),
                    day,
                    n: n + 1,
                    micro_usd: want as u64,
                    at_ms: wall_ms,
                };
                match self.doc.put_budget(&fact, &self.peer) {
                    Ok(()) => {
                        tracing::info!(want, ask = n + 1, "asking peers for allowance");
                        self.local_write();
                    }
                    Err(e) => tracing::error!(error = %e, "cannot write an ask"),
                }
            }
        }
        // Give, once per ask, to alive peers' latest asks today: a node with work keeps
        // its capacity's worth of reservations and gives the rest; an idle one gives all.
        // A node itself short gives what it has to the asker with the lowest id below
        // its own, so scraps too small for a job each gather on one node instead of
        // waiting on each other.
        let alive: BTreeSet<String> = self.membership.alive(now_ms).into_iter().collect();
        let keep = if self.spending.idle {
            0
        } else {
            reserve.saturating_mul(u64::from(self.cfg.capacity.max(1))) as i64
        };
        let short = mine.balance < reserve as i64 && !self.spending.idle;
        let mut spare = if short {
            mine.balance
        } else {
            mine.balance.saturating_sub(keep)
        };
        let mut asks: Vec<(String, u32, u64)> = view
            .ledger
            .asks
            .iter()
            .filter(|((p, d), _)| *d == day && p != &self.peer && alive.contains(p))
            .filter(|((p, _), a)| !view.ledger.gave(&self.peer, p, day, a.n))
            // Only to a peer that is short as far as we know: a member that asks while
            // it has a job's worth left gets nothing (it cannot drain its peers).
            .filter(|((p, _), _)| {
                view.ledger.allowance(Some(&budget), p, day).balance < reserve as i64
            })
            .filter(|((p, _), _)| !short || *p < self.peer)
            .map(|((p, _), a)| (p.clone(), a.n, a.micro_usd))
            .collect();
        if short {
            asks.truncate(1);
        }
        for (to, n, wanted) in asks {
            if spare <= 0 {
                break;
            }
            let amount = if short {
                spare as u64
            } else {
                wanted.min(spare as u64)
            };
            let fact = BudgetFact::Give {
                from: self.peer.clone(),
                to: to.clone(),
                day,
                n,
                micro_usd: amount,
                at_ms: wall_ms,
            };
            match self.doc.put_budget(&fact, &self.peer) {
                Ok(()) => {
                    tracing::info!(%to, amount, "gave allowance to a peer that asked");
                    spare -= amount as i64;
                    self.local_write();
                }
                Err(e) => tracing::error!(error = %e, "cannot write a give"),
            }
        }
    }

    /// A provider rate-limited a job of ours: no claim for a while (doubling with each
    /// limit in a row, jittered so nodes do not return together, at least as long as
    /// the provider asked) and claims spaced further apart from then on.
    pub(super) fn rate_limited(&mut self, now_ms: u64, retry_after_ms: Option<u64>, why: &str) {
        let b = self.cfg.budget;
        let s = &mut self.spending;
        s.limited = s.limited.saturating_add(1);
        s.limits_seen += 1;
        s.last_limit = why.to_string();
        let exp = b
            .rate_limit_base_ms
            .saturating_mul(1u64 << s.limited.saturating_sub(1).min(20))
            .min(b.rate_limit_max_ms);
        // Jitter in [1/2, 1] of the wait, from this node's id and count (the core draws
        // no randomness; nodes still differ).
        let mut h = Sha256::new();
        h.update(self.peer.as_bytes());
        h.update(s.limits_seen.to_le_bytes());
        let r = u64::from(h.finalize()[0]);
        let wait = (exp / 2 + exp / 2 * r / 255).max(retry_after_ms.unwrap_or(0));
        s.backoff_until = now_ms.saturating_add(wait);
        s.claim_gap_ms = (s.claim_gap_ms.saturating_mul(2)).clamp(1_000, 60_000);
        tracing::warn!(wait_ms = wait, claim_gap_ms = s.claim_gap_ms, %why,
            "rate-limited by the provider: backing off");
    }

    /// A job ran clean: the back-off resets and the claim rate recovers a step.
    pub(super) fn ran_clean(&mut self) {
        let s = &mut self.spending;
        s.limited = 0;
        s.claim_gap_ms = if s.claim_gap_ms <= 250 {
            0
        } else {
            s.claim_gap_ms * 3 / 4
        };
    }

    /// Whether rate-limit pacing lets this node claim now.
    pub(super) fn paced(&self, now_ms: u64) -> bool {
        let s = &self.spending;
        now_ms < s.backoff_until
            || (s.claim_gap_ms > 0 && now_ms.saturating_sub(s.last_claim_ms) < s.claim_gap_ms)
    }

    pub(super) fn claimed_at(&mut self, now_ms: u64) {
        self.spending.last_claim_ms = now_ms;
    }

    /// This node's money and pacing, for `status`.
    pub fn spend_status(&mut self) -> SpendStatus {
        let view = self.view();
        let day = day_of(self.last_wall);
        let budget = view.steering.budget.as_ref();
        let s = &self.spending;
        SpendStatus {
            allowance: budget.map(|b| view.ledger.allowance(Some(b), &self.peer, day)),
            daily_micro_usd: budget.map(|b| b.daily_micro_usd),
            mesh_charged_micro_usd: view.ledger.charged_on(day),
            short: s.short.clone(),
            backoff_ms: s.backoff_until.saturating_sub(self.last_now),
            claim_gap_ms: s.claim_gap_ms,
            rate_limits: s.limits_seen,
            last_rate_limit: s.last_limit.clone(),
        }
    }
}
