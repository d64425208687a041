//! "What should this node do next?" (DESIGN.md §6). A pure ranking of the work this node
//! may claim now, from the view, the claim fold and a freeness test the caller supplies
//! (which carries lease expiry and grace). Never reads a clock, never does I/O.
//!
//! Order: merge, then review/rework/implement, then plan/research, then refine; then
//! story priority (lower first); then continuations (the next phase of a story whose
//! last phase this node ran: finish what is started before starting more, and no other
//! node ranks it first, so nobody races for it); then age. Among the first few equals
//! each node prefers items by a rendezvous hash of (its id, the story), so nodes spread
//! out instead of racing for the same item.

use crate::lease::{predict_conflict, Claims, CoChange, Conflict, Resource};
use crate::model::Phase;
use crate::state::View;
use sha2::{Digest, Sha256};

/// One piece of work this node could claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Work {
    pub story: String,
    pub phase: Phase,
    /// The round of the phase (see [`View`]'s rounds of review/rework/merge).
    pub round: u32,
    /// The story-phase resource first, then any file locks (implement and rework).
    pub resources: Vec<Resource>,
    /// Which attempt this would be (1 for the first).
    pub attempt: u32,
    /// Soft conflicts with work in flight: the claim proceeds, flagged.
    pub soft_conflicts: Vec<String>,
}

fn phase_rank(p: Phase) -> u8 {
    match p {
        Phase::Merge => 0,
        Phase::Review | Phase::Rework | Phase::Implement => 1,
        Phase::Plan | Phase::PlanReview | Phase::Research => 2,
        Phase::Refine => 3,
    }
}

/// Rendezvous (highest random weight) hash of a node and a story.
pub fn rendezvous(node: &str, story: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update([0]);
    h.update(story.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// The files an implement (or rework) claim locks: the plan's files, else the story's.
pub fn planned_files(view: &View, story: &str) -> Vec<String> {
    if let Some(plan) = view.counted_result(story, Phase::Plan) {
        if !plan.handoff.files.is_empty() {
            return plan.handoff.files.clone();
        }
    }
    view.stories
        .get(story)
        .map(|s| s.fact.files.clone())
        .unwrap_or_default()
}

/// Whether `me` ran the story's latest counted phase (its next phase continues that).
fn continues(view: &View, s: &crate::state::StoryView, me: &str) -> bool {
    s.history
        .last()
        .and_then(|k| view.results.get(k))
        .is_some_and(|r| r.holder == me)
}

/// Stories with a counted implement that have not landed and are not blocked, with the
/// files they change.
fn unlanded_changes(view: &View) -> impl Iterator<Item = (&str, Vec<String>)> {
    view.stories
        .values()
        .filter(|s| {
            s.merged.is_none()
                && s.blocked_reason.is_none()
                && s.phases_done.contains(&Phase::Implement)
        })
        .map(|s| (s.key.as_str(), planned_files(view, &s.key)))
}

/// Files locked by active claims of other stories, by story.
fn files_in_flight(claims: &Claims, except: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (_, c) in claims.active() {
        let story = c
            .resources
            .iter()
            .find_map(|(r, _)| r.story_key().map(str::to_string));
        let Some(story) = story else { continue };
        if story == except {
            continue;
        }
        let files = c.files();
        if !files.is_empty() {
            out.push((story, files));
        }
    }
    out
}

/// Ranks the work `me` may claim now. `spread` is how many of the top items to shuffle
/// by rendezvous hash (about the number of nodes competing). `is_free` says whether a
/// resource may be claimed (never claimed, released, or its lease expired past grace).
/// `self_review` lets the implementer review its own change: only for a node that is
/// alone (a mesh of one would otherwise stop at every review).
#[allow(clippy::too_many_arguments)] // a pure function of named inputs; a struct would only rename them
pub fn rank(
    view: &View,
    claims: &Claims,
    me: &str,
    roles: &[String],
    spread: usize,
    cochange: &CoChange,
    self_review: bool,
    mut is_free: impl FnMut(&Resource) -> bool,
) -> Vec<Work> {
    let mut out: Vec<((u8, u32, u8), u32, Work)> = Vec::new();
    let unlanded: Vec<(&str, Vec<String>)> = unlanded_changes(view).collect();
    for s in view.stories.values() {
        let Some(phase) = s.next_phase else { continue };
        if !roles.iter().any(|r| r == phase.as_str()) {
            continue;
        }
        if !s
            .fact
            .depends_on
            .iter()
            .all(|d| view.stories.get(d).is_some_and(|x| x.merged.is_some()))
        {
            continue;
        }
        if phase == Phase::Review && !self_review && s.implementer.as_deref() == Some(me) {
            continue; // review runs on a node other than the implementer
        }
        let Ok(story_res) = Resource::story_round(&s.key, phase, s.round) else {
            continue;
        };
        if !is_free(&story_res) {
            continue;
        }
        let mut resources = vec![story_res];
        let mut soft_conflicts = Vec::new();
        if matches!(phase, Phase::Implement | Phase::Rework) {
            let files = planned_files(view, &s.key);
            let mut blocked = false;
            for f in &files {
                match Resource::file(f) {
                    Ok(r) => {
                        if !is_free(&r) {
                            blocked = true; // hard conflict: wait
                            break;
                        }
                        resources.push(r);
                    }
                    Err(_) => continue, // rejected when written; never lock a bad path
                }
            }
            if blocked {
                continue;
            }
            // A story changed but not landed yet owns its files until it lands (or is
            // blocked): a second change to them now would only conflict at merge.
            if unlanded
                .iter()
                .any(|(k, f)| *k != s.key.as_str() && files.iter().any(|x| f.contains(x)))
            {
                continue;
            }
            match predict_conflict(&files, &files_in_flight(claims, &s.key), cochange) {
                Conflict::Hard { .. } => continue,
                Conflict::Soft { reasons } => soft_conflicts = reasons,
                Conflict::None => {}
            }
        }
        out.push((
            (
                phase_rank(phase),
                s.fact.priority,
                u8::from(!continues(view, s, me)),
            ),
            s.fact.number,
            Work {
                story: s.key.clone(),
                phase,
                round: s.round,
                resources,
                attempt: s.attempts + 1,
                soft_conflicts,
            },
        ));
    }
    out.sort_by(|a, b| (a.0, a.1, &a.2.story).cmp(&(b.0, b.1, &b.2.story)));
    // Spread: among the first `spread` items equal in phase rank, priority and continuation,
    // prefer by rendezvous hash, so two nodes rarely reach for the same story at once.
    let n = match out.first() {
        Some(first) => out
            .iter()
            .take(spread.max(1))
            .take_while(|x| x.0 == first.0)
            .count(),
        None => 0,
    };
    out[..n].sort_by_key(|x| std::cmp::Reverse(rendezvous(me, &x.2.story)));
    out.into_iter().map(|(_, _, w)| w).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NewStory;
    use crate::state::tests::step;
    use crate::state::Doc;

    const A: &str = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaaaa";
    const B: &str = "12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBbbbbbb";

    fn all_roles() -> Vec<String> {
        Phase::ALL.iter().map(|p| p.as_str().to_string()).collect()
    }

    #[test]
    fn a_node_continues_the_story_it_just_worked_on_before_new_work() {
        let mut d = Doc::new([1; 16]);
        let mut keys = Vec::new();
        for i in 1..=6 {
            let new = NewStory {
                title: format!("story {i}"),
                ..Default::default()
            };
            keys.push(d.add_story(&new, B, 0).unwrap());
        }
        // Node A (the `step` helper) researched story 5 and planned story 4.
        step(&mut d, &keys[4], Phase::Research, 0, None);
        for p in [Phase::Research, Phase::Plan] {
            step(&mut d, &keys[3], p, 0, None);
        }
        let v = d.view();
        let c = v.claims();
        let order = |me: &str| -> Vec<(usize, Phase)> {
            rank(
                &v,
                &c,
                me,
                &all_roles(),
                8,
                &CoChange::default(),
                false,
                |_| true,
            )
            .iter()
            .map(|w| {
                (
                    keys.iter().position(|k| *k == w.story).unwrap() + 1,
                    w.phase,
                )
            })
            .collect()
        };
        // A: its own implement first (group 1), then its own plan before the older
        // stories' research.
        let a = order(A);
        assert_eq!(a[0], (4, Phase::Implement), "{a:?}");
        assert_eq!(a[1], (5, Phase::Plan), "{a:?}");
        // B did not run story 5's research: the plan is one of the equals it spreads
        // over by rendezvous hash, not a must-take.
        let b = order(B);
        assert_eq!(b[0], (4, Phase::Implement), "{b:?}");
        let mut rest: Vec<usize> = b[1..].iter().map(|(n, _)| *n).collect();
        rest.sort_unstable();
        assert_eq!(rest, vec![1, 2, 3, 5, 6], "{b:?}");
    }
}
