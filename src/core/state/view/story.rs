//! Step 6 of the fold: one story's view, from the claims, results and landings that
//! name it, what operators asked, and its dependencies' landings (used by the fold for
//! every story and by an update for the stories it touches).

use super::walk::{gate_items, walk_story, BLOCKED_ACTIONS};
use super::*;
use crate::core::model::AlertKind;

/// The attempts at a story's next step, with the blame and what blocks it.
#[derive(Default)]
struct Attempts {
    attempts: u32,
    failed_attempts: u32,
    takeovers: u32,
    failures: Vec<String>,
    blocked_reason: Option<String>,
    /// The latest attempt's claim time (when a block arose).
    last_ms: u64,
}

/// Step 6 of the fold: what every story's view is built from.
pub(super) struct StoryFold<'a> {
    pub(super) claims: &'a Claims,
    pub(super) releases: &'a BTreeMap<String, ReleaseFact>,
    pub(super) counted: &'a Counted<'a>,
    pub(super) merged: &'a BTreeMap<String, MergeFact>,
    pub(super) index: &'a ClaimIndex<'a>,
    pub(super) key_to_id: &'a BTreeMap<&'a str, &'a str>,
    pub(super) steering: &'a Steering,
    /// What the epoch inherited: stories merged before it count as landed (looked up
    /// here, not copied into `merged` and `key_to_id` on every fold).
    pub(super) base: Option<&'a Base>,
}

impl StoryFold<'_> {
    /// One story's view (before its dependencies' blocks are followed).
    pub(super) fn story(&self, key: &String, fact: &Arc<StoryFact>, id: &str) -> StoryView {
        let steer = self.steering.story(key);
        let retired = |d: &str| self.base.and_then(|b| b.retired.get_key_value(d));
        let deps_done = fact
            .depends_on
            .iter()
            .all(|d| self.merged.contains_key(d) || retired(d).is_some());
        let prior = fact.imported.as_deref();
        let walk = walk_story(key, &fact.labels, prior, self.counted, steer);
        let phases_done: Vec<Phase> = Phase::ALL
            .iter()
            .copied()
            .filter(|p| {
                walk.steps.iter().any(|(q, _, _)| q == p) || prior.is_some_and(|i| i.did(*p))
            })
            .collect();
        let mut next_phase = walk.next.map(|(p, _)| p);
        let round = walk.next.map_or(walk.round, |(_, r)| r);
        let mut blocked_step = walk.blocked_step;
        let Attempts {
            attempts,
            failed_attempts,
            takeovers,
            failures,
            mut blocked_reason,
            last_ms,
        } = match walk.next {
            Some((p, r)) => {
                let granted = steer
                    .and_then(|s| s.granted.get(&(p, r)))
                    .copied()
                    .unwrap_or(0);
                let a = self.attempts(key, p, r, walk.blocked.clone(), granted);
                if a.blocked_reason.is_some() {
                    blocked_step = Some((p, r));
                }
                a
            }
            None => Attempts {
                blocked_reason: walk.blocked.clone(),
                ..Attempts::default()
            },
        };
        let is_merged = self
            .merged
            .get(key)
            .cloned()
            .or_else(|| retired(key).map(|(k, r)| Base::landing(k, r)))
            .map(Box::new);
        let cancelled = steer.and_then(|s| s.cancelled.clone()).map(Box::new);
        if is_merged.is_some() || cancelled.is_some() {
            next_phase = None;
            blocked_reason = None;
            blocked_step = None;
        } else if blocked_reason.is_some() {
            next_phase = None;
        }
        let started = !phases_done.is_empty() || self.index.active_stories.contains(key.as_str());
        let status = if is_merged.is_some() {
            StoryStatus::Merged
        } else if cancelled.is_some() {
            StoryStatus::Cancelled
        } else if blocked_reason.is_some() {
            StoryStatus::Blocked
        } else if started {
            StoryStatus::InProgress
        } else if deps_done {
            StoryStatus::Ready
        } else {
            StoryStatus::Backlog
        };
        // The author of the change under review: the latest implement or rework.
        let implementer = walk
            .steps
            .iter()
            .rev()
            .find(|(p, _, _)| matches!(p, Phase::Implement | Phase::Rework))
            .and_then(|(p, r, _)| self.counted.get(&(key.clone(), *p, *r)))
            .map(|(_, f)| f.holder.clone());
        let depends_on = fact
            .depends_on
            .iter()
            .map(|d| {
                self.key_to_id
                    .get(d.as_str())
                    .copied()
                    .or_else(|| retired(d).map(|(_, r)| r.id.as_str()))
                    .map_or(d.clone(), str::to_string)
            })
            .collect::<ThinVec<String>>();
        let mut attention = Vec::new();
        if status != StoryStatus::Merged && status != StoryStatus::Cancelled {
            attention = gate_items(self.counted, key, fact, &walk, next_phase);
            if let (Some(reason), Some((p, r))) = (&blocked_reason, blocked_step) {
                attention.push(Attention {
                    id: format!("{}@{}.{r}", AlertKind::Blocked, p.as_str()),
                    kind: AlertKind::Blocked,
                    detail: reason.clone(),
                    since_ms: last_ms.max(fact.created_at_ms),
                    holds: None,
                    actions: BLOCKED_ACTIONS.iter().map(|a| a.to_string()).collect(),
                });
            }
            if let Some(st) = steer {
                attention.retain(|a| !st.cleared.contains(&a.id));
            }
            attention.sort_by(|a, b| (a.since_ms, &a.id).cmp(&(b.since_ms, &b.id)));
        }
        let held = next_phase.is_some_and(|p| attention.iter().any(|a| a.holds == Some(p)));
        // Operators' notes for later jobs: context, then the changes they requested on
        // this story's results, in command order.
        let notes = steer.map_or_else(Vec::new, |s| {
            let mut n = s.notes.clone();
            n.extend(s.changes_requested.values().cloned());
            n.sort_by(|a, b| (a.at_ms, &a.by, &a.text).cmp(&(b.at_ms, &b.by, &b.text)));
            n
        });
        StoryView {
            key: key.as_str().into(),
            id: id.into(),
            status,
            depends_on_ids: depends_on,
            fact: fact.clone(),
            phases_done: phases_done.into(),
            next_phase,
            round,
            history: walk.steps.iter().map(|(_, _, k)| k.clone()).collect(),
            attempts,
            failed_attempts,
            takeovers,
            priority: steer.and_then(|s| s.priority).unwrap_or(fact.priority),
            held,
            more: More::new(StoryMore {
                failures: failures.into(),
                blocked_reason,
                merged: is_merged,
                implementer,
                paused: steer.and_then(|s| s.paused.clone()).map(Box::new),
                cancelled,
                assigned: steer.and_then(|s| s.assigned.clone()).map(Box::new),
                notes: notes.into(),
                attention: attention.into(),
                blocked_step,
            }),
            spend: None,
        }
    }

    /// The attempts at step (`p`, round `r`) of story `key`, their blame and failure
    /// reasons, and the block they call for (unless the walk already blocked it).
    fn attempts(
        &self,
        key: &str,
        p: Phase,
        r: u32,
        walk_blocked: Option<String>,
        granted: u32,
    ) -> Attempts {
        let mut out = Attempts {
            blocked_reason: walk_blocked,
            ..Attempts::default()
        };
        let Ok(res) = Resource::story_round(key, p, r) else {
            return out;
        };
        let claims = self.claims;
        // Attempts: claims that started work (not those that never settled).
        let on_it: Vec<(&str, &ClaimFact)> = self
            .index
            .by_resource
            .get(&res)
            .into_iter()
            .flatten()
            .copied()
            .filter(|(id, _)| {
                !matches!(
                    claims.release_reason(id),
                    Some(
                        ReleaseReason::Unsettled
                            | ReleaseReason::Shutdown
                            | ReleaseReason::Unavailable
                    )
                )
            })
            .collect();
        out.attempts = on_it.len() as u32;
        // Blame: the work failed, or its holder went away (the weather).
        for (id, _) in &on_it {
            match claims.release_reason(id) {
                Some(r) if r.blames_work() => out.failed_attempts += 1,
                Some(r) if r.blames_holder() => out.takeovers += 1,
                _ => {}
            }
        }
        let mut on_it_sorted = on_it.clone();
        on_it_sorted.sort_by_key(|(_, c)| c.written_at_ms);
        out.last_ms = on_it_sorted.last().map_or(0, |(_, c)| c.written_at_ms);
        out.failures = on_it_sorted
            .iter()
            .filter_map(|(id, _)| self.releases.get(*id))
            .filter(|r| r.why != ReleaseReason::Done)
            .map(release_text)
            .collect();
        let active = claims.winner(&res).is_some();
        if !active && out.blocked_reason.is_none() {
            // The reasons of the kind that blocked, oldest first.
            let reasons = |work: bool| {
                let mut r: Vec<String> = on_it_sorted
                    .iter()
                    .filter_map(|(id, _)| self.releases.get(*id))
                    .filter(|r| {
                        if work {
                            r.why.blames_work()
                        } else {
                            r.why.blames_holder()
                        }
                    })
                    .map(release_text)
                    .collect();
                r.dedup();
                r.join("; ")
            };
            let (failed_attempts, takeovers) = (out.failed_attempts, out.takeovers);
            if failed_attempts >= MAX_ATTEMPTS.saturating_add(granted) {
                out.blocked_reason = Some(format!(
                    "{p} failed {failed_attempts} attempts: {}",
                    reasons(true)
                ));
            } else if takeovers >= MAX_TAKEOVERS.saturating_add(granted) {
                out.blocked_reason = Some(format!(
                    "{p} lost its holder {takeovers} times: {}",
                    reasons(false)
                ));
            }
        }
        out
    }
}
