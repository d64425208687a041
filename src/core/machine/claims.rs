//! The claim lifecycle: claim → settle → run → finish, takeover, cancellation and
//! release, and the `story_blocked` announcement.

use super::settle::{settle_count, settle_peers, settles_with};
use super::*;

impl Core {
    /// The claim lifecycle, run on every tick: notice new claims, settle ours, cancel
    /// what we lost, and claim new work while there is capacity.
    pub(super) fn check_claims(&mut self, now_ms: u64, wall_ms: u64) {
        if self.cfg.passive {
            // An observer (`mesh-agent status`) takes the mesh's epoch up as a new node
            // does; it claims, proposes and cuts nothing.
            self.adopt_tick(now_ms);
            return;
        }
        // Our own leases are live while we run.
        let mine: Vec<String> = self
            .local
            .keys()
            .map(String::as_str)
            .chain(self.proposal())
            .map(str::to_string)
            .collect();
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
        self.epoch_tick(now_ms, wall_ms);
        self.cancel_lost();
        self.drop_stale_pushes();
        if self.cfg.work {
            self.claim_next(now_ms, wall_ms);
            self.budget_tick(now_ms, wall_ms);
            self.probe_origin_if_due(now_ms);
        }
    }

    /// Running claims we no longer hold — taken over after expiry, or superseded by a
    /// higher token we just learned of (one written where we could not see it, even if
    /// since released: a released winner frees the resource for a new claim, it does not
    /// give it back to ours): stop them. Runs on every tick and on every peer's news
    /// while something runs, so the work stops before our next answer can settle the
    /// claim that replaces it (simulator seed 12084, clean).
    ///
    /// Also stopped: running work the story no longer needs. Two sides of a partition can
    /// each build a different chain of steps on one story; when they meet, the chain
    /// later work built on counts (see `Claims::winner`) and a step of the other chain
    /// still running holds its own resource, so no token stops it, yet its result would
    /// be a second merge of the story (simulator seed 78990, clean).
    pub(super) fn cancel_lost(&mut self) {
        if !self.local.values().any(|c| c.state == LocalState::Running) {
            return;
        }
        let (view, claims) = self.derived();
        let check_needed = !self.cfg.broken_winner_rule;
        let lost: Vec<(String, &'static str)> = self
            .local
            .iter()
            .filter(|(_, c)| c.state == LocalState::Running)
            .filter_map(|(id, c)| {
                let why = if !claims.holds(id) {
                    "lost the lease while running"
                } else if view
                    .stories
                    .get(c.story.as_str())
                    .is_some_and(|s| s.more.cancelled.is_some())
                {
                    "an operator cancelled the story"
                } else if check_needed && !still_needed(&view, &c.story, c.phase, c.round) {
                    "the story no longer needs this step"
                } else {
                    return None;
                };
                Some((id.clone(), why))
            })
            .collect();
        for (id, why) in lost {
            tracing::warn!(claim = %id, why, "cancelling a running claim's work");
            self.local.remove(&id);
            self.effects
                .push_back(Effect::CancelWork { claim: id.clone() });
            self.release(&id, ReleaseReason::Lost, why);
        }
    }

    /// Claims the best available work, if capacity allows (one claim per call).
    pub(super) fn claim_next(&mut self, now_ms: u64, wall_ms: u64) {
        if self.local.len() >= self.cfg.capacity as usize {
            return;
        }
        // The origin is unavailable: back off (one probe at a time once the breaker is open).
        if !self.origin.may_claim(now_ms, self.local.len()) {
            return;
        }
        if !self.may_claim_now(now_ms) {
            return;
        }
        // A provider rate-limited us: back off; and only with the job's cost reserved
        // from this node's own allowance (with a budget set).
        if self.paced(now_ms) {
            return;
        }
        let (membership, connected, refused) = (&self.membership, &self.connected, &self.refused);
        // Our last claim could not settle: wait for the peers that did not answer.
        let with = |p: &str| settles_with(membership, connected, refused, p, now_ms);
        if self.settle_backoff.waits(now_ms, with, &self.completed) {
            return;
        }
        let peers = settle_count(membership, connected, &self.strangers, refused, now_ms);
        if self.overloaded() {
            return;
        }
        // The mesh moves to a new epoch: nothing is claimed or taken over meanwhile.
        if self.moving(now_ms) {
            return;
        }
        let lease = self.cfg.lease;
        let me = self.peer.clone();
        let roles = self.cfg.roles.clone();
        let (view, claims) = self.derived();
        // A revoked holder is as good as dead: its claims are taken over.
        let membership = &self.membership;
        let dead = |p: &str| {
            membership.is_dead(p, now_ms) || view.roster.revoked.iter().any(|e| e.peer == p)
        };
        let observer = &mut self.observer;
        let local = &self.local;
        let work = scheduler::rank(
            &view,
            &claims,
            &me,
            &roles,
            peers + 1,
            &self.cochange,
            peers == 0,
            self.cfg.merge_gate.as_ref(),
            |r| {
                // Never "take over" a claim of our own from a stale view.
                !claims.winner(r).is_some_and(|w| local.contains_key(w))
                    && resource_free(&claims, observer, r, now_ms, &lease, dead)
            },
        );
        let busy = |phase: Phase| {
            let mine = self.local.values();
            mine.filter(|c| c.phase == phase && c.epoch.is_none())
                .count() as u32
        };
        let limit = |phase: Phase| {
            self.cfg
                .role_limits
                .get(phase.as_str())
                .copied()
                .unwrap_or(self.cfg.capacity)
        };
        let Some(w) = work.into_iter().find(|w| busy(w.phase) < limit(w.phase)) else {
            self.spending.idle = true;
            return;
        };
        self.spending.idle = false;
        if self.on_news && !self.first_on_news(&view, &w, now_ms) {
            return; // another node reaches for it first; our tick claims it if not
        }
        let Ok(reserve) = self.budget_check(wall_ms) else {
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
            after: built_on(&view, &w.story),
        };
        if !w.soft_conflicts.is_empty() {
            tracing::info!(story = %w.story, conflicts = ?w.soft_conflicts, "claiming despite soft conflicts");
        }
        // The story's MAX_TAKEOVERS-th takeover: release the gone holder's claim but claim
        // nothing, so the story stops for a human instead of killing holders forever.
        if self.takeover_limit_reached(&view, &claims, &w.story, w.phase, w.round) {
            return;
        }
        // A takeover: the expired winners of these resources are released on their behalf.
        let mut taken_from = Vec::new();
        for (r, _) in &fact.resources {
            if let Some(old) = claims.winner(r) {
                let old = old.to_string();
                if let Some(h) = view.claims.get(&old) {
                    taken_from.push(crate::core::state::peer_tag(&h.holder).to_string());
                }
                let taken = self.doc.put_release(
                    &old,
                    &ReleaseFact {
                        why: ReleaseReason::Expired,
                        note: format!("lease expired; taken over by {}", self.peer),
                    },
                    &self.peer,
                );
                if let Err(e) = taken {
                    // Without the release the claim below would not win: write nothing.
                    tracing::error!(claim = %old, error = %e, "cannot release an expired claim");
                    return;
                }
            }
        }
        let written = match reserve {
            Some(m) => {
                let r = self.reservation(&id, &w.story, w.phase, m, wall_ms);
                self.doc.put_claim_reserved(&id, &fact, &r)
            }
            None => self.doc.put_claim(&id, &fact),
        };
        if let Err(e) = written {
            tracing::error!(claim = %id, error = %e, "cannot write a claim");
            return;
        }
        self.claimed_at(now_ms);
        let change = self.doc.last_local_change();
        self.origin.claimed(now_ms);
        // Pushed to every alive peer with the next effect; sessions opened from here on
        // count for settling.
        self.local_write();
        self.observer.observe_claim(&id, now_ms);
        let mark = self.session_mark();
        tracing::info!(claim = %id, story = %w.story, phase = %w.phase, "claimed; settling");
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
                epoch: None,
                state: LocalState::Settling {
                    mark,
                    waiting: settle_peers(&self.membership, &self.connected, &self.refused, now_ms)
                        .into_iter()
                        .map(str::to_string)
                        .collect(),
                    deadline_ms: now_ms.saturating_add(self.settle_timeout()),
                    change,
                },
                written_ms: now_ms,
            },
        );
        // With no peers there is nothing to wait for.
        self.check_settling(now_ms);
    }

    /// The gates every claim passes, work or an epoch's proposal.
    pub(super) fn may_claim_now(&mut self, now_ms: u64) -> bool {
        // Warm-up: a node that just started does not yet know who is alive (nor what
        // they claimed), so settling with "everyone alive" would be settling with no
        // one. Wait until every live peer has had time to heartbeat.
        let started = *self.started_ms.get_or_insert(now_ms);
        let m = self.cfg.membership;
        if now_ms.saturating_sub(started) < m.heartbeat_ms * u64::from(m.suspect_after_missed) {
            return false;
        }
        // Joining: a node that knows of a mesh claims nothing before it has synced with it
        // (what it would claim may be done or held already). Skewed: its wall clock is off.
        if self.joining(now_ms).is_some() || self.clock_skew().skewed {
            return false;
        }
        // An alive peer on another epoch: no session with it opens, so nothing claimed
        // could settle (DESIGN.md §3.5); claim nothing until it has moved or died.
        if !self.other_epoch.is_empty() && !self.other_epoch_peers(now_ms).is_empty() {
            return false;
        }
        // Not a member: nothing it claimed would count.
        if !self.may_work_on_roster() {
            return false;
        }
        // An operator paused this node or the whole mesh.
        if self.paused_here().is_some() {
            return false;
        }
        true
    }

    /// If taking over `story`'s `phase` (in `round`) from its gone holder would be the
    /// [`MAX_TAKEOVERS`]-th takeover, releases that holder's claim as expired, claims
    /// nothing, announces the block and returns true.
    pub(super) fn takeover_limit_reached(
        &mut self,
        view: &View,
        claims: &Claims,
        story: &str,
        phase: Phase,
        round: u32,
    ) -> bool {
        let Ok(res) = Resource::story_round(story, phase, round) else {
            return false;
        };
        let Some(old) = claims.winner(&res).map(str::to_string) else {
            return false;
        };
        let granted = view
            .steering
            .story(story)
            .and_then(|s| s.granted.get(&(phase, round)))
            .copied()
            .unwrap_or(0);
        let at_limit = view.stories.get(story).is_some_and(|s| {
            s.next_phase == Some(phase)
                && s.round == round
                && s.takeovers.saturating_add(1) >= MAX_TAKEOVERS.saturating_add(granted)
        });
        if !at_limit {
            return false;
        }
        tracing::warn!(%story, %phase, claim = %old, "takeover limit reached; not claiming");
        self.release(
            &old,
            ReleaseReason::Expired,
            &format!(
                "lease expired; released by {} (takeover limit reached)",
                self.peer
            ),
        );
        self.announce_if_blocked(story, false);
        true
    }

    pub(super) fn release(&mut self, id: &str, why: ReleaseReason, note: &str) {
        let fact = ReleaseFact {
            why,
            note: note.to_string(),
        };
        if let Err(e) = self.doc.put_release(id, &fact, &self.peer) {
            tracing::error!(claim = %id, error = %e, "cannot write a release");
            return;
        }
        self.local_write();
        // A claim of ours that never ran spent nothing: its reservation is freed.
        if why == ReleaseReason::Unsettled {
            let entry = self.view().ledger.entries.get(id).cloned();
            if let Some(e) = entry.filter(|e| e.node == self.peer) {
                self.book_usage(id, &e.story, e.phase, Default::default());
            }
        }
    }

    /// Records the outcome of a job: a result (or merge) and a release. A job whose claim
    /// this node no longer holds is still recorded; fencing in the view ignores it.
    pub(super) fn finish_work(
        &mut self,
        now_ms: u64,
        claim: &str,
        outcome: Result<Handoff, JobFailure>,
    ) {
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
        let was_blocked = self.is_blocked(&c.story);
        let wall = self.last_wall;
        let outcome_ok = outcome.is_ok();
        match outcome {
            Ok(handoff) => {
                let usage = crate::core::state::Usage {
                    tokens_in: handoff.tokens_in,
                    tokens_out: handoff.tokens_out,
                    tokens: handoff
                        .tokens
                        .max(handoff.tokens_in.saturating_add(handoff.tokens_out)),
                    cost_micro_usd: handoff.cost_micro_usd,
                };
                self.book_usage(claim, &c.story, c.phase, usage);
                self.ran_clean();
                // A merge that did not reject landed: its commit is the landing (the
                // sim core, with no git, names a synthetic one).
                if c.phase == Phase::Merge && handoff.verdict != Some(Verdict::Reject) {
                    let commit = handoff
                        .commit
                        .clone()
                        .unwrap_or_else(|| handoff.summary.clone());
                    let merge = self.doc.put_merge(&MergeFact {
                        story: c.story.clone(),
                        round: c.round,
                        claim: claim.to_string(),
                        token,
                        holder: self.peer.clone(),
                        commit,
                        written_at_ms: wall,
                    });
                    if let Err(e) = merge {
                        tracing::error!(%claim, error = %e, "cannot write a merge");
                    }
                }
                for l in &handoff.learnings {
                    let learned = self.doc.put_knowledge(&KnowledgeFact {
                        kind: l.kind,
                        text: l.text.clone(),
                        story: c.story.clone(),
                        author: self.peer.clone(),
                        written_at_ms: wall,
                    });
                    match learned {
                        // Empty or over-long learnings are skipped, as ever.
                        Ok(_) | Err(StateError::KnowledgeRefused) => {}
                        Err(e) => tracing::error!(%claim, error = %e, "cannot write a learning"),
                    }
                }
                let result = self.doc.put_result(&ResultFact {
                    story: c.story.clone(),
                    phase: c.phase,
                    round: c.round,
                    claim: claim.to_string(),
                    token,
                    holder: self.peer.clone(),
                    written_at_ms: wall,
                    escalations: crate::core::attention::escalations(
                        &self.cfg.triggers,
                        c.phase,
                        &handoff,
                    ),
                    handoff: handoff.clone(),
                });
                if let Err(e) = result {
                    tracing::error!(%claim, error = %e, "cannot write a result");
                }
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
            Err(JobFailure::Work(reason)) => {
                tracing::warn!(%claim, story = %c.story, phase = %c.phase, %reason, "phase attempt failed");
                self.release(claim, ReleaseReason::Failed, &reason);
                self.emit(
                    EventKind::PhaseFailed,
                    Some(&c.story),
                    Some(c.phase),
                    c.round,
                    reason,
                );
            }
            Err(JobFailure::RateLimited {
                reason,
                retry_after_ms,
            }) => {
                self.release(claim, ReleaseReason::Unavailable, &reason);
                self.book_usage(claim, &c.story, c.phase, Default::default());
                self.rate_limited(now_ms, retry_after_ms, &reason);
                self.emit(
                    EventKind::PhaseDeferred,
                    Some(&c.story),
                    Some(c.phase),
                    c.round,
                    format!("rate-limited by the provider, not counted as an attempt: {reason}"),
                );
            }
            Err(JobFailure::Origin(reason)) => {
                tracing::warn!(%claim, story = %c.story, phase = %c.phase, %reason, "the origin is unavailable; the work is handed back, no attempt counted");
                self.release(claim, ReleaseReason::Unavailable, &reason);
                self.emit(
                    EventKind::PhaseDeferred,
                    Some(&c.story),
                    Some(c.phase),
                    c.round,
                    format!("origin unavailable, not counted as an attempt: {reason}"),
                );
                let opened = self.origin.failed(now_ms, &reason);
                if let Some(OriginTransition::Opened {
                    failures,
                    retry_in_ms,
                }) = opened
                {
                    tracing::error!(failures, retry_in_ms, %reason, "the origin is unavailable: claims paused, one probe per backoff");
                    self.emit(
                        EventKind::GitUnavailable,
                        None,
                        None,
                        0,
                        format!(
                            "{failures} jobs in a row could not reach the origin; this node claims one job at a time to probe it (next in {:.1} s): {reason}",
                            retry_in_ms as f64 / 1000.0
                        ),
                    );
                }
            }
        }
        if outcome_ok {
            self.origin_answers(now_ms);
        }
        self.announce_if_blocked(&c.story, was_blocked);
        self.observer.forget(claim);
    }

    /// Whether the view has `story` blocked for a human.
    pub(super) fn is_blocked(&mut self, story: &str) -> bool {
        self.view()
            .stories
            .get(story)
            .is_some_and(|s| s.status == StoryStatus::Blocked)
    }

    /// Emits `story_blocked` when this node's own write just moved `story` to blocked in
    /// the view (`was_blocked`: its state before the write). Only the writer of the
    /// change that blocked it announces it, once: never for a story that is not blocked
    /// in the view, nor again for one that already was.
    pub(super) fn announce_if_blocked(&mut self, story: &str, was_blocked: bool) {
        if was_blocked {
            return;
        }
        let view = self.view();
        let Some(s) = view.stories.get(story) else {
            return;
        };
        if s.status != StoryStatus::Blocked {
            return;
        }
        let why = s.more.blocked_reason.clone().unwrap_or_default();
        self.emit(EventKind::StoryBlocked, Some(story), None, s.round, why);
        self.effects.push_back(Effect::DropWorkRefs {
            story: story.to_string(),
        });
    }
}

/// Whether `story` still needs `phase` of `round` next: false once the step counted
/// (from this claim or another) or the story went another way.
pub(super) fn still_needed(view: &View, story: &str, phase: Phase, round: u32) -> bool {
    view.stories
        .get(story)
        .is_some_and(|s| s.next_phase == Some(phase) && s.round == round)
}

/// The claim whose counted result the story's next step builds on (the last in its
/// history), if any: what a new claim records in `after`.
pub(super) fn built_on(view: &View, story: &str) -> Option<String> {
    let last = view.stories.get(story)?.history.last()?;
    view.results.get(last).map(|r| r.claim.clone())
}
