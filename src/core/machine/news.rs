//! Claiming on a peer's news: with free capacity, a node looks for work as soon as a
//! peer's changes arrive instead of at its next tick, and only the node that is the
//! first claimer of the story that opened reaches for it (docs/DESIGN.md §6).

use super::*;

impl Core {
    /// A peer's changes arrived (the digest moved from `before`): with free capacity,
    /// look for work now (a result may have made a next phase claimable) rather than at
    /// the next tick. Not while one of our claims is settling: claims stack one at a
    /// time, or a burst of news would have every node reach for everything at once. Not
    /// while the mesh runs behind (`overloaded`): the check would claim nothing, and its
    /// fold of the view on every peer's change was half the CPU of 30 nodes on 2 cores.
    pub(super) fn claim_on_news(&mut self, now_ms: u64, before: [u8; 32]) {
        if self.digest != before
            && self.cfg.work
            && !self.cfg.passive
            && self.local.len() < self.cfg.capacity as usize
            && self.local.values().all(|c| c.state == LocalState::Running)
            && !self.overloaded()
            && self.news_fold_due(now_ms)
        {
            let wall = self.last_wall;
            self.on_news = true;
            self.check_claims(now_ms, wall);
            self.on_news = false;
        }
    }

    /// Whether a claim check on news may run now: its view is current (no fold), or the
    /// last check on news that folded ran a tick period (a quarter beat) ago. Under a
    /// stream of changes every one of them cost a fold of the whole view, on every node;
    /// skipped, the next tick checks.
    fn news_fold_due(&mut self, now_ms: u64) -> bool {
        let current = self.view.as_ref().is_some_and(|(d, ..)| *d == self.digest);
        let gap = self.cfg.membership.heartbeat_ms / 4;
        if current
            || self
                .news_fold_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= gap)
        {
            if !current {
                self.news_fold_ms = Some(now_ms);
            }
            return true;
        }
        false
    }

    /// Whether this node is the first to reach for `w` on news (`first_claimer`).
    pub(super) fn first_on_news(&self, view: &View, w: &scheduler::Work, now_ms: u64) -> bool {
        let mut candidates: Vec<&str> = self
            .membership
            .alive_beats(now_ms)
            .filter(|(p, b)| {
                b.free_capacity > 0
                    && b.roles.iter().any(|r| r == w.phase.as_str())
                    && !self.refused.contains(*p)
            })
            .map(|(p, _)| p)
            .collect();
        candidates.push(&self.peer);
        scheduler::first_claimer(view, &w.story, w.phase, &candidates) == Some(self.peer.as_str())
    }
}
