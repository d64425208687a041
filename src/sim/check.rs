//! The invariants: safety after every event (tokens never go backwards, mutual
//! exclusion in clean mode, no story lands twice) and at the end of a run (convergence,
//! counted results from the highest claim, liveness within the bound, takeover of a dead
//! holder's work within the bound).

use super::{Crash, Mode, Sim, Titles};
use crate::core::lease::{Claims, Resource};
use crate::core::model::{Phase, StoryStatus, MAX_ATTEMPTS, MAX_TAKEOVERS};
use crate::core::state::{ChangeHash, Doc, View};
use std::collections::{BTreeMap, BTreeSet};

impl Sim {
    /// Whether node `n` was up (and past its warm-up) for the whole of [from, to].
    fn up_throughout(&self, n: usize, from: u64, to: u64) -> bool {
        let m = self.cfg.membership;
        let warm =
            (m.heartbeat_ms * u64::from(m.suspect_after_missed)).max(self.cfg.join_wait_ms());
        let crashed = self
            .crashes
            .iter()
            .any(|c| c.node == n && c.at <= to && c.at >= from.saturating_sub(warm));
        let restarted = self
            .restarts
            .iter()
            .any(|&(r, at)| r == n && at <= to && at + warm >= from);
        // Down before `from` and not back: the last event before `from` was a crash.
        let last_crash = self
            .crashes
            .iter()
            .filter(|c| c.node == n && c.at < from)
            .map(|c| c.at)
            .max();
        let last_restart = self
            .restarts
            .iter()
            .filter(|&&(r, _)| r == n)
            .map(|&(_, at)| at)
            .filter(|&at| at < from)
            .max();
        let down_at_from = match (last_crash, last_restart) {
            (Some(c), Some(r)) => c > r,
            (Some(_), None) => true,
            // The late node (`SimConfig::late_join`) is down until it first comes up.
            (None, None) => self.late == Some(n),
            _ => false,
        };
        !crashed && !restarted && !down_at_from
    }
    /// Whether claim `id`, which node `n` was settling when it crashed at `t`, was in
    /// another node's view before `n` restarted.
    fn reached_another(&self, n: usize, t: u64, id: &str) -> bool {
        let back = self
            .restarts
            .iter()
            .filter(|&&(r, at)| r == n && at > t)
            .map(|&(_, at)| at)
            .min();
        self.claim_known
            .get(id)
            .is_some_and(|&k| back.is_none_or(|b| k < b))
    }

    /// Node `i`'s claims not checked yet: their tokens must be above every token its
    /// frames ever acknowledged on those resources, crashes or not (a peer settled, or
    /// built, on that acknowledgement: docs/DESIGN.md §1.6). Called after every event and
    /// before a frame's acknowledgements are recorded, so a claim is judged by what was
    /// acknowledged before it was written.
    pub(super) fn check_own_tokens(&mut self, i: usize, view: &crate::core::state::View) {
        let mut reused = Vec::new();
        for (id, c) in &view.claims {
            if c.holder != self.names[i] || self.own_checked.contains(id) {
                continue;
            }
            self.own_checked.insert(id.clone());
            let acked = self.frames_acked.get(i);
            for (r, t) in &c.resources {
                let mut known = acked.and_then(|a| a.get(r)).into_iter().flatten();
                if let Some((other, ot)) = known.find(|(o, ot)| *o != id && *ot >= t) {
                    reused.push(format!(
                        "node{i} claimed {r} with token {t} ({id}) after its frames acknowledged {other} with token {ot}: a token handed out again"
                    ));
                }
            }
        }
        for v in reused {
            self.violation(v);
        }
    }

    /// What node `i`'s frame about to leave acknowledges: every claim in its document.
    pub(super) fn record_acked(&mut self, i: usize) {
        let n = self.nodes.len();
        self.frames_acked.resize_with(n, BTreeMap::new);
        self.acked_at.resize(n, [0; 32]);
        self.acked_claims.resize(n, usize::MAX);
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let d = core.digest();
        if self.acked_at[i] == d {
            return;
        }
        self.acked_at[i] = d;
        // Counted in the document: bringing the view up to date for every frame after
        // a change was 7 % of a 700-node run, and most changes add no claim.
        let count = core.doc().claim_count();
        if self.acked_claims[i] == count {
            return;
        }
        self.acked_claims[i] = count;
        let view = core.view();
        self.check_own_tokens(i, &view);
        // A claim's resources are all recorded at once: one lookup tells (no clone of
        // any claim already recorded, which most are).
        let acked = &mut self.frames_acked[i];
        for (id, c) in &view.claims {
            let recorded = c
                .resources
                .first()
                .and_then(|(r, _)| acked.get(r))
                .is_some_and(|ids| ids.contains_key(id));
            if recorded {
                continue;
            }
            for (r, t) in &c.resources {
                match acked.get_mut(r) {
                    Some(ids) => {
                        if !ids.contains_key(id) {
                            ids.insert(id.clone(), *t);
                        }
                    }
                    None => {
                        acked.insert(r.clone(), BTreeMap::from([(id.clone(), *t)]));
                    }
                }
            }
        }
    }

    /// Safety invariants, checked after every event.
    ///
    /// `scope`: the one node the event could change ([`Ev::node`]); None: any of them.
    /// Only a node an event handled can change its view or what it runs, so the others
    /// keep what the last check found (which at 1,000 nodes is most of the cost saved).
    pub(super) fn check(&mut self, scope: Option<usize>) {
        let now = self.now;
        // Tokens never go backwards in any node's view (rechecked when a view changes).
        let n = self.nodes.len();
        self.checked.resize(n, [0; 32]);
        self.tokens.resize_with(n, BTreeMap::new);
        self.running.resize_with(n, Vec::new);
        let nodes = scope.map_or(0..n, |i| i..i + 1);
        let mut fell: Vec<String> = Vec::new();
        for i in nodes.clone() {
            let Some(core) = self.nodes[i].core.as_mut() else {
                continue;
            };
            let d = core.digest();
            if self.checked[i] == d {
                continue;
            }
            self.checked[i] = d;
            if self.cfg.epoch_after > 0 {
                self.moving_since.resize(n, None);
                match (core.is_moving(now), self.moving_since[i]) {
                    (true, None) => self.moving_since[i] = Some(now),
                    (false, Some(from)) => {
                        self.pauses.push((from, now));
                        self.moving_since[i] = None;
                    }
                    _ => {}
                }
            }
            let view = core.view();
            let leaked: Vec<String> = self
                .aborted
                .iter()
                .filter(|t| view.has_story_titled(t))
                .cloned()
                .collect();
            let mut top: BTreeMap<&Resource, u64> = BTreeMap::new();
            for (id, c) in &view.claims {
                for (r, t) in &c.resources {
                    let e = top.entry(r).or_default();
                    *e = (*e).max(*t);
                }
                if c.holder != self.names[i] && !self.claim_known.contains_key(id) {
                    self.claim_known.insert(id.clone(), now);
                }
            }
            // An epoch's floors stand for the claims it left behind.
            for (r, f) in view.base().map(|b| &b.floors).into_iter().flatten() {
                if let Some(e) = top.get_mut(r) {
                    *e = (*e).max(f.token);
                }
            }
            let known = &mut self.tokens[i];
            for (r, t) in top {
                match known.get_mut(r) {
                    Some(prev) if t < *prev => {
                        fell.push(format!(
                            "node{i} saw the top token of {r} fall from {prev} to {t}"
                        ));
                        *prev = t;
                    }
                    Some(prev) => *prev = t,
                    None => {
                        known.insert(r.clone(), t);
                    }
                }
            }
            self.check_own_tokens(i, &view);
            for key in leaked {
                self.violation(format!(
                    "node{i} sees story {key:?}, whose write was aborted"
                ));
            }
        }
        for v in fell {
            self.violation(v);
        }
        // Clean mode: at most one up node runs a phase at any instant.
        if self.cfg.mode == Mode::Clean {
            for i in nodes {
                // Compared in place: most events change nothing a node runs (copying
                // its held claims after every event was a tenth of a 400-node run).
                let core = self.nodes[i].core.as_ref();
                let same = match core {
                    Some(c) => c
                        .running()
                        .eq(self.running[i].iter().map(|(s, p)| (s.as_str(), *p))),
                    None => self.running[i].is_empty(),
                };
                if same {
                    continue;
                }
                let now_running: Vec<(String, Phase)> = core.map_or_else(Vec::new, |c| {
                    c.running().map(|(s, p)| (s.to_string(), p)).collect()
                });
                let was = std::mem::replace(&mut self.running[i], now_running);
                for r in &was {
                    if let Some(on) = self.running_on.get_mut(r) {
                        on.remove(&i);
                        if on.is_empty() {
                            self.running_on.remove(r);
                        }
                    }
                }
                for r in &self.running[i] {
                    self.running_on.entry(r.clone()).or_default().insert(i);
                }
            }
            let twice: Vec<String> = self
                .running_on
                .iter()
                .filter(|(_, who)| who.len() > 1)
                .map(|((s, p), who)| format!("{s}/{p} runs on nodes {who:?} at once"))
                .collect();
            for t in twice {
                self.violation(t);
            }
        }
        // No story lands twice at the origin.
        let twice: Vec<String> = self
            .origin
            .landed
            .iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(s, v)| format!("{s} landed {} times: {v:?}", v.len()))
            .collect();
        for t in twice {
            self.violation(t);
        }
    }

    /// End-of-run checks: convergence, counted results, liveness, takeover bound. Returns
    /// the stories merged, blocked and cancelled.
    pub(super) fn finish(&mut self) -> (usize, usize, usize) {
        let mut digests = BTreeSet::new();
        let mut views = Vec::new();
        for i in 0..self.nodes.len() {
            if let Some(c) = self.nodes[i].core.as_mut() {
                digests.insert(c.digest());
                views.push((i, (*c.view()).clone()));
            }
        }
        if digests.len() > 1 {
            self.violation(format!(
                "{} different documents after healing",
                digests.len()
            ));
        }
        if views.windows(2).any(|w| w[0].1 != w[1].1) {
            self.violation("views differ after healing".into());
        }
        let Some((first, view)) = views.first().cloned() else {
            return (0, 0, 0);
        };
        if self.cfg.check_seed {
            // (The new epoch itself is not needed after the run.)
            let _ = self.check_seed(first, &view);
        }
        // Every acknowledged write reached every node.
        let missing: Vec<String> = self
            .acked
            .iter()
            .filter(|(_, title)| {
                let key = self.acked_keys.get(title);
                views.iter().any(|(_, v)| !v.holds_story(title, key))
            })
            .map(|(n, title)| format!("node{n}'s acknowledged story {title:?}"))
            .collect();
        for m in missing {
            self.violation(format!("{m} did not reach every node after healing"));
        }
        let claims = view.claims();
        // A counted result is from its resource's highest claim.
        for ((story, p, round), rkey) in &view.counted {
            let Some(r) = view.results.get(rkey) else {
                continue;
            };
            let Ok(res) = Resource::story_round(story, *p, *round) else {
                continue;
            };
            let highest = view
                .claims
                .values()
                .filter_map(|c| c.token_of(&res))
                .max()
                .unwrap_or(0);
            if r.token < highest && claims.top(&res) != Some(r.claim.as_str()) {
                let id = view
                    .stories
                    .get(story.as_str())
                    .map_or(story.as_str(), |s| s.id.as_str());
                self.violation(format!(
                    "{id} {res}: counted result under token {} below {highest}",
                    r.token
                ));
            }
        }
        let merged = view
            .stories
            .values()
            .filter(|s| s.status == StoryStatus::Merged)
            .count();
        let blocked = view
            .stories
            .values()
            .filter(|s| s.status == StoryStatus::Blocked)
            .count();
        // Cancelled by an operator: finished too (its dependents are blocked, with the
        // reason).
        let cancelled = view
            .stories
            .values()
            .filter(|s| s.status == StoryStatus::Cancelled)
            .count();
        if self.cfg.trace {
            for (id, c) in &view.claims {
                let rel = view
                    .releases
                    .get(id)
                    .map(|r| format!("{:?} {}", r.why, r.note))
                    .unwrap_or_default();
                let res: Vec<String> = c
                    .resources
                    .iter()
                    .map(|(r, t)| format!("{r}#{t}"))
                    .collect();
                self.trace.push(format!(
                    "{:>7} claim {id} by {} at {}: {} released: {rel}",
                    self.now,
                    c.holder,
                    c.written_at_ms,
                    res.join(",")
                ));
            }
            for st in view.stories.values() {
                if let Some(why) = &st.more.blocked_reason {
                    self.trace
                        .push(format!("{:>7} {} blocked: {why}", self.now, st.id));
                }
            }
        }
        let unfinished = merged + blocked + cancelled != view.stories.len();
        // With a budget, the money may run out first: then what is unfinished waits.
        self.ran_out = unfinished && (0..self.nodes.len()).any(|i| self.out_of_money(i));
        if unfinished && !self.ran_out {
            // Each unfinished story, its next phase and what it waits for.
            let stuck: Vec<String> = view
                .stories
                .values()
                .filter(|s| !finished(s.status))
                .map(|s| {
                    let why = crate::core::scheduler::waiting(&view, &claims, &s.key)
                        .map(|w| w.to_string())
                        .unwrap_or_default();
                    let next = s
                        .next_phase
                        .map_or_else(|| "none".to_string(), |p| format!("{p} round {}", s.round));
                    format!("{} (next {next}): {why}", s.id)
                })
                .collect();
            self.violation(format!(
                "stories neither merged, blocked nor cancelled {} ms after healing: {}",
                self.cfg.liveness_bound_ms(),
                stuck.join("; ")
            ));
        }
        for s in view.stories.values() {
            if s.more.merged.is_some() && !self.origin.landed.contains_key(s.key.as_str()) {
                self.violation(format!("{} merged in the view but never landed", s.id));
            }
        }
        // Clean mode: a dead holder's work is taken over within the bound.
        if self.cfg.mode == Mode::Clean {
            let l = self.cfg.lease;
            // A remote origin's outages may hold every node's breaker back (its longest
            // pause, jitter included) and, once open, let each run one job at a time (the
            // probe, up to the longest phase) before it may take over (seeds 49 and 77
            // clean, --remote).
            let breaker = if self.cfg.remote {
                self.cfg.origin_breaker().max_ms * 5 / 4 + self.cfg.phase_ms * 3 / 2
            } else {
                0
            };
            let bound = l.ttl_ms
                + self.cfg.membership.dead_after_ms
                + l.settle_timeout_ms
                + l.grace_ms
                + 2 * self.cfg.membership.heartbeat_ms
                + breaker;
            let crashes = self.crashes.clone();
            for Crash {
                node,
                at: t,
                running,
                settling,
            } in &crashes
            {
                // An origin outage holds every node back (probing one job at a time, on
                // whatever story): the bound runs from the end of the outages that began
                // before it would run out (seeds 335 and 530 clean, --remote).
                let (node, t) = (*node, *t);
                let from = self.origin.outages_end(t, bound);
                // A move to a new epoch holds claims back too (DESIGN.md §3.5).
                let from = self.pauses_end(from, bound);
                // A claim it was settling is owed only if it reached another node
                // before this one came back: one that never left (its push queued
                // behind a running session) is known to no one, and the restart
                // releases it (seeds 5009 and 56960 clean).
                let owed = running.iter().cloned().chain(
                    settling
                        .iter()
                        .filter(|(_, _, _, id)| self.reached_another(node, t, id))
                        .map(|(r, tk, _, _)| (r.clone(), *tk)),
                );
                let owed: Vec<(Resource, u64)> = owed.collect();
                for (res, token) in owed {
                    // Crashes record story resources only.
                    let Resource::Story {
                        story,
                        phase,
                        round,
                    } = &res
                    else {
                        continue;
                    };
                    let (phase, round) = (*phase, *round);
                    let counted = view.counted_result_round(story, phase, round);
                    let sv = view.stories.get(story.as_str());
                    // The bound runs once an eligible node is up: someone other than the
                    // crashed holder (and, for a review, other than the author of the
                    // change that round reviews: its rework, else the implement — not
                    // whoever implemented a later round, seed 90060 clean).
                    let implementer = (phase == Phase::Review)
                        .then(|| {
                            (1..=round)
                                .rev()
                                .find_map(|r| view.counted_result_round(story, Phase::Rework, r))
                                .or_else(|| view.counted_result_round(story, Phase::Implement, 0))
                                .map(|f| f.holder.clone())
                        })
                        .flatten();
                    // (Nor one an operator may have held back from the story meanwhile: the
                    // story or the node paused or the story assigned elsewhere.)
                    let eligible = (0..self.nodes.len()).any(|n| {
                        n != node
                            && implementer.as_deref() != Some(self.names[n].as_str())
                            && self.up_throughout(n, from, from + bound)
                            && !self.operator.as_ref().is_some_and(|o| {
                                o.held_back(&self.names[n], story, t, from + bound)
                            })
                    });
                    if !eligible {
                        continue;
                    }
                    let taken = self.starts.iter().any(|(n, r, tk, at)| {
                        // By another node, or by the crashed node's next incarnation:
                        // either way a newer claim runs the work and fences the old.
                        (*n != node || *at > t) && *r == res && *tk > token && *at <= from + bound
                    }) || crashes.iter().any(|c| {
                        // Or claimed in time by a node that died settling it: that
                        // crash owes the takeover now, within its own bound (seed 94391).
                        c.settling.iter().any(|(r, tk, written, id)| {
                            self.reached_another(c.node, c.at, id)
                                && (c.node != node || *written > t)
                                && *r == res
                                && *tk > token
                                && *written <= from + bound
                        })
                    });
                    // Done at this token or below, in this round (a later round's
                    // result says nothing about this one: seed 5544 clean, where the
                    // crashed claim had lost a tie the dead node never heard of). A
                    // landing writes its merge result in the same change.
                    let done_before = counted.is_some_and(|c| c.token <= token);
                    // Attempts used up blocks the story for a human by design: failed
                    // attempts, or takeovers (crashes of its holders: a story that keeps
                    // killing nodes must stop).
                    let escalated = sv.is_some_and(|s| {
                        s.status == StoryStatus::Blocked
                            && (s.failed_attempts >= MAX_ATTEMPTS || s.takeovers >= MAX_TAKEOVERS)
                    });
                    // Work the story no longer needs is owed to no one: a crashed claim
                    // on a round the finished story never took (the review before it was
                    // taken over and went the other way: seed 877 clean).
                    // So is a story an epoch retired: it landed.
                    let moot = (counted.is_none() && sv.is_some_and(|s| finished(s.status)))
                        || view.base().is_some_and(|b| b.retired.contains_key(story));
                    // An implement or rework yields its files when its claim expires: a
                    // change of another story to one of them, started within the bound,
                    // owns them until it lands, and the story rightly waits for that
                    // (seed 215 clean, with files).
                    let files = |k: &str| {
                        view.stories
                            .get(k)
                            .map(|s| s.fact.files.clone())
                            .unwrap_or_default()
                    };
                    let mine = files(story);
                    let yielded = matches!(phase, Phase::Implement | Phase::Rework)
                        && self.starts.iter().any(|(_, r, _, at)| {
                            matches!(r, Resource::Story { story: o, phase: p, .. }
                                if o != story
                                    && matches!(p, Phase::Implement | Phase::Rework)
                                    && files(o).iter().any(|f| mine.contains(f)))
                                && *at >= t
                                && *at <= from + bound
                        });
                    if !taken
                        && !done_before
                        && !escalated
                        && !moot
                        && !yielded
                        // (Nor with a budget: a taker short of allowance waits for a
                        // gift, or for good once the money is gone; the run's liveness
                        // check still holds every story to finishing or the money
                        // running out.)
                        && self.cfg.budget.is_none()
                        && from + bound < self.now
                    {
                        self.violation(format!(
                            "{res} (token {token}) of node{node}, crashed at {t}, not taken over within {bound} ms"
                        ));
                    }
                }
            }
        }
        // Stories an epoch retired had merged.
        let retired = view.base().map_or(0, |b| b.retired.len());
        (merged + retired, blocked, cancelled)
    }

    /// Every node up, every story merged or blocked, and all documents equal.
    pub(super) fn all_settled(&mut self) -> bool {
        let mut digest = None;
        for i in 0..self.nodes.len() {
            let Some(c) = self.nodes[i].core.as_mut() else {
                return false;
            };
            if !c.held(0).is_empty() {
                return false;
            }
            let d = c.digest();
            if digest.is_some_and(|x| x != d) {
                return false;
            }
            digest = Some(d);
            if !c.view().stories.values().all(|s| finished(s.status)) {
                return false;
            }
        }
        true
    }
}

/// Merged, blocked (with a reason) or cancelled: nothing more will happen to it.
impl Sim {
    /// A new epoch cut from node `i`'s document keeps the live mesh: every story not
    /// merged folds to the same view, every merged one still reads merged (in the view
    /// with the same counted merge, or retired with the same id and commit), every
    /// resource's next token is the same, and the roster and knowledge are the same.
    /// [`Sim::check_seed`] of node `i` against its own document's view now; with
    /// `check_carry` the epoch is kept, and the end of the run carries what node `i`
    /// hears later into it.
    pub(super) fn check_seed_now(&mut self, i: usize) {
        if let Some(view) = self.nodes[i].core.as_mut().map(|c| c.doc_mut().view()) {
            let epoch = self.check_seed(i, &view);
            if self.cfg.check_carry {
                self.epoch = epoch;
            }
        }
    }

    /// A new epoch cut from node `i`'s document keeps the live mesh (see
    /// [`Sim::same_mesh`]); and with `check_carry`, the epoch cut at the heal, with the
    /// facts written since carried into it (`Doc::carry_from`), reads as node `i` does
    /// now. Returns the new epoch's cut and document.
    fn check_seed(&mut self, i: usize, before: &View) -> Option<(Vec<ChangeHash>, Doc)> {
        let mut doc = self.nodes[i].core.as_mut()?.doc_mut().clone();
        if let Some((cut, mut epoch)) = self.epoch.take() {
            match epoch.carry_from(&mut doc, &cut) {
                Ok(_) => {
                    let after = super::steer::closed(epoch, &self.cfg).view();
                    self.same_mesh(
                        i,
                        before,
                        &after,
                        "the heal's epoch with what followed carried",
                        true,
                    );
                }
                Err(e) => self.violation(format!("node{i}: carrying into the heal's epoch: {e}")),
            }
        }
        let seed = match doc.seed(1) {
            Ok(s) => s,
            Err(e) => {
                self.violation(format!("node{i} cannot seed a new epoch: {e}"));
                return None;
            }
        };
        let opened = Doc::load_test_names([0xE5; 16], &seed.bytes, &[])
            .and_then(|d| d.with_epoch_root(&seed.root));
        let epoch = match opened {
            Ok(d) => super::steer::closed(d, &self.cfg),
            Err(e) => {
                self.violation(format!("node{i}'s epoch seed does not load: {e}"));
                return None;
            }
        };
        let after = epoch.view();
        let what = format!(
            "epoch seed ({} of {} facts kept)",
            seed.kept,
            seed.kept + seed.retired
        );
        self.same_mesh(i, before, &after, &what, false);
        Some((seed.cut, epoch))
    }

    /// Whether `after`, a new epoch's view, keeps the live mesh `before` showed: every
    /// story not merged folds to the same view, every merged one still reads merged (in
    /// the view with the same counted merge, or retired with the same id and commit),
    /// every resource's next token is the same, and the roster and knowledge are the
    /// same. With `carried`, `after` is an epoch cut earlier, with what followed carried
    /// in: a claim naming a story it retired, written before the cut and heard after,
    /// counts in `before` but never in `after` (the story landed; DESIGN.md §3.5), so the
    /// next tokens `after` must give are those of `before`'s other claims, or above its
    /// floors; a retired story keeps the display id it had at the cut, so two stories
    /// given one number concurrently may show their ids the other way round; and of two
    /// nodes that wrote one knowledge entry, the one credited may differ (the first
    /// write stands, and a copy is written later).
    fn same_mesh(&mut self, i: usize, before: &View, after: &View, what: &str, carried: bool) {
        let retired = after.base().map(|b| &b.retired);
        let mut numbers: BTreeMap<u32, usize> = BTreeMap::new();
        for s in before.stories.values() {
            *numbers.entry(s.fact.number).or_default() += 1;
        }
        let shared = |n: u32| carried && numbers.get(&n).is_some_and(|c| *c > 1);
        let any_shared = numbers.keys().any(|n| shared(*n));
        let mut wrong = Vec::new();
        for (key, s) in &before.stories {
            let same_id = |id: &str| id == s.id || shared(s.fact.number);
            let same = match (
                after.stories.get(key),
                retired.and_then(|r| r.get(key.as_str())),
            ) {
                (Some(_), Some(_)) | (None, None) => false,
                (None, Some(r)) => {
                    s.status == StoryStatus::Merged
                        && same_id(&r.id)
                        && s.more.merged.as_ref().is_some_and(|m| m.commit == r.commit)
                }
                (Some(a), None) if s.status == StoryStatus::Merged => {
                    a.status == StoryStatus::Merged
                        && a.more.merged == s.more.merged
                        && same_id(&a.id)
                }
                (Some(a), None) if any_shared => {
                    let mut a = (**a).clone();
                    if same_id(&a.id) {
                        a.id = s.id.clone();
                    }
                    a.depends_on_ids = s.depends_on_ids.clone();
                    a == **s
                }
                (Some(a), None) => **a == **s,
            };
            if !same {
                wrong.push(s.id.clone());
            }
        }
        if !wrong.is_empty() {
            self.violation(format!("node{i}'s {what} changes stories {wrong:?}"));
        }
        // Fencing goes on: no resource a live story or a file can be claimed on goes
        // back to a lower token.
        let gone = |r: &Resource| {
            r.story_key()
                .is_some_and(|k| retired.is_some_and(|m| m.contains_key(k)))
        };
        let was = if carried {
            let mut kept = before.claims.clone();
            kept.retain(|_, c| !c.resources.iter().any(|(r, _)| gone(r)));
            Claims::new(&kept, &before.releases)
        } else {
            before.claims()
        };
        let now = after.claims();
        let want = |r: &Resource| match after.base() {
            Some(b) if carried => was.next_token(r).max(b.floor(r) + 1),
            _ => was.next_token(r),
        };
        let back: BTreeSet<String> = before
            .claims
            .values()
            .flat_map(|c| &c.resources)
            .filter(|(r, _)| !gone(r) && now.next_token(r) != want(r))
            .map(|(r, _)| format!("{r}: {} then {}", want(r), now.next_token(r)))
            .collect();
        if !back.is_empty() {
            self.violation(format!("node{i}'s {what} moves next tokens: {back:?}"));
        }
        let stories = after.stories.len() + retired.map_or(0, |r| r.len());
        let entries = |v: &View| -> Vec<(String, String, String)> {
            v.knowledge
                .iter()
                .map(|(k, f)| (k.clone(), format!("{:?}", f.kind), f.text.clone()))
                .collect()
        };
        let same_knowledge = if carried {
            entries(after) == entries(before)
        } else {
            after.knowledge == before.knowledge
        };
        if stories != before.stories.len() || after.roster != before.roster || !same_knowledge {
            self.violation(format!(
                "node{i}'s {what} changes the mesh: {stories} stories (was {}), roster or knowledge",
                before.stories.len()
            ));
        }
    }
}

fn finished(status: StoryStatus) -> bool {
    matches!(
        status,
        StoryStatus::Merged | StoryStatus::Blocked | StoryStatus::Cancelled
    )
}

impl Sim {
    /// `t`, or the end of the moves to a new epoch that began before `bound` from it
    /// ran out (each holds every node's claims back while it lasts), as
    /// `Origin::outages_end` does for outages.
    fn pauses_end(&self, t: u64, bound: u64) -> u64 {
        let open = self.moving_since.iter().flatten().map(|&f| (f, self.now));
        let pauses: Vec<(u64, u64)> = self.pauses.iter().copied().chain(open).collect();
        super::origin::windows_end(&pauses, t, bound)
    }
}
