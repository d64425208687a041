//! The pipeline a story walks, from its counted results and what operators asked: the
//! steps (refine and plan review when labelled, plan rounds, review rounds, the changes
//! operators requested), the gates that hold it for a human (attention items), and the
//! blocks that follow a blocked or cancelled dependency. Part of the view's fold
//! ([`super::view`]).

use super::command::StorySteer;
use super::view::Counted;
use super::*;
use crate::core::model::AlertKind;

/// The label that makes a story's plan wait for a human's `approve` before implement.
pub const APPROVAL_LABEL: &str = "approval";
/// The label that adds a `refine` phase before research (ai-sdlc's refinement).
pub const REFINE_LABEL: &str = "refine";
/// The label that adds a `plan_review` phase after plan: an agent reviews the plan, and
/// a rejection plans again.
pub const PLAN_REVIEW_LABEL: &str = "plan-review";

/// Most rework rounds before a story needs a human.
pub const MAX_REWORKS: u32 = 3;

/// Where a story stands, from its counted results alone.
pub(super) struct Walk {
    /// Counted steps in order: (phase, round, result key).
    pub(super) steps: Vec<(Phase, u32, String)>,
    /// The step to run next, unless blocked or merged.
    pub(super) next: Option<(Phase, u32)>,
    /// The last round reached.
    pub(super) round: u32,
    pub(super) blocked: Option<String>,
    /// The step a human's `unblock` grants more rounds at, when the rounds ran out.
    pub(super) blocked_step: Option<(Phase, u32)>,
}

/// The pipeline as a walk: research, plan, implement, then rounds of [rework,] review,
/// merge. A rejecting review, or a merge that hit a rebase conflict or failing tests
/// (verdict reject), opens the next round with a rework; after [`MAX_REWORKS`] such
/// rounds (plus what operators granted with `unblock`) the story is blocked for a human
/// with the last reason. An operator's `request-changes` on a result acts as a rejection
/// that counts toward no limit: on a plan, the plan runs again (its next round); on an
/// implement, rework or review, the next round reworks the change.
///
/// Stories labelled [`REFINE_LABEL`] start with a refine phase; stories labelled
/// [`PLAN_REVIEW_LABEL`] have each plan reviewed, and a rejecting plan review plans
/// again (after [`MAX_REWORKS`] rejections the story is blocked, as for changes).
///
/// An imported story passes over the phases done in its tracker (`prior`, first round
/// only; see [`crate::core::imported::CARRIED`]).
pub(super) fn walk_story(
    key: &str,
    labels: &[String],
    prior: Option<&crate::core::imported::Imported>,
    counted: &Counted<'_>,
    steer: Option<&StorySteer>,
) -> Walk {
    let mut w = Walk {
        steps: Vec::new(),
        next: None,
        round: 0,
        blocked: None,
        blocked_step: None,
    };
    let get = |p: Phase, r: u32| counted.get(&(key.to_string(), p, r)).copied();
    // Done in the tracker it was imported from: passed over, with no step of its own.
    let before = |p: Phase, r: u32| r == 0 && prior.is_some_and(|i| i.did(p));
    let requested = |k: &str| steer.is_some_and(|s| s.changes_requested.contains_key(k));
    let labelled = |l: &str| labels.iter().any(|x| x == l);
    let granted_at = |phase: Phase| -> u32 {
        steer.map_or(0, |s| {
            s.granted
                .iter()
                .filter(|((p, _), _)| *p == phase)
                .fold(0u32, |a, (_, g)| a.saturating_add(*g))
        })
    };
    let mut first = vec![Phase::Research];
    if labelled(REFINE_LABEL) {
        first.insert(0, Phase::Refine);
    }
    for p in first {
        match get(p, 0) {
            Some((k, _)) => w.steps.push((p, 0, k.clone())),
            None if before(p, 0) => {}
            None => {
                w.next = Some((p, 0));
                return w;
            }
        }
    }
    let reviewed = labelled(PLAN_REVIEW_LABEL);
    let mut pr = 0;
    let mut plan_rejections = 0u32;
    'plans: loop {
        let seq: &[Phase] = if reviewed {
            &[Phase::Plan, Phase::PlanReview]
        } else {
            &[Phase::Plan]
        };
        for &p in seq {
            match get(p, pr) {
                None if before(p, pr) => {}
                None => {
                    w.next = Some((p, pr));
                    return w;
                }
                Some((k, f)) => {
                    w.steps.push((p, pr, k.clone()));
                    if requested(k) {
                        pr = pr.saturating_add(1);
                        continue 'plans;
                    }
                    if p == Phase::PlanReview && f.handoff.verdict == Some(Verdict::Reject) {
                        plan_rejections += 1;
                        if plan_rejections > MAX_REWORKS.saturating_add(granted_at(Phase::Plan)) {
                            w.blocked = Some(format!(
                                "plan review rejected the plan {plan_rejections} times; last: {}",
                                f.handoff.summary
                            ));
                            w.blocked_step = Some((Phase::Plan, pr + 1));
                            return w;
                        }
                        pr = pr.saturating_add(1);
                        continue 'plans;
                    }
                }
            }
        }
        break;
    }
    let granted = granted_at(Phase::Rework);
    let mut r = 0;
    let mut rejections = 0u32;
    loop {
        w.round = r;
        let first = if r == 0 {
            Phase::Implement
        } else {
            Phase::Rework
        };
        let mut rejected = None;
        for p in [first, Phase::Review, Phase::Merge] {
            match get(p, r) {
                None => {
                    w.next = Some((p, r));
                    return w;
                }
                Some((k, f)) => {
                    w.steps.push((p, r, k.clone()));
                    if p != Phase::Merge && requested(k) {
                        rejected = Some((p, None));
                        break;
                    }
                    if matches!(p, Phase::Review | Phase::Merge)
                        && f.handoff.verdict == Some(Verdict::Reject)
                    {
                        rejected = Some((p, Some(f.handoff.summary.clone())));
                        break;
                    }
                }
            }
        }
        match rejected {
            // A merge result that did not reject: the story landed (or is landing).
            None => return w,
            // An operator asked for changes: the next round, counted toward no limit.
            Some((_, None)) => {}
            Some((p, Some(why))) => {
                rejections += 1;
                if rejections > MAX_REWORKS.saturating_add(granted) {
                    let what = if p == Phase::Review {
                        "review rejected the change"
                    } else {
                        "the merge gate refused the change"
                    };
                    w.blocked = Some(format!("{what} {rejections} times; last: {why}"));
                    w.blocked_step = Some((Phase::Rework, r + 1));
                    return w;
                }
            }
        }
        r += 1;
    }
}

/// Something that needs a human (`mesh-agent attention`): a result an escalation
/// trigger fired on, a story labelled `approval` whose plan is ready, or a blocked story.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attention {
    /// `<kind>@<result key>`, or `blocked@<phase>.<round>`: what `approve` and `dismiss`
    /// name.
    pub id: String,
    pub kind: AlertKind,
    pub detail: String,
    /// When it arose (the result's or the last attempt's wall clock).
    pub since_ms: u64,
    /// The phase that waits for it to be cleared (none for a blocked story).
    pub holds: Option<Phase>,
    /// What an operator may do about it, as CLI verbs.
    pub actions: Vec<String>,
}

/// The actions on a gate's attention item.
pub(super) const GATE_ACTIONS: [&str; 4] = ["approve", "request-changes", "dismiss", "cancel"];
/// The actions on a blocked story.
pub(super) const BLOCKED_ACTIONS: [&str; 4] =
    ["unblock", "unblock --reset-attempts", "cancel", "dismiss"];

/// The items that hold a story's next gate: before implement, the escalations of its
/// latest research and plan (and the `approval` label); before merge, those of the
/// current round's implement or rework and review. Uncleared ones only matter to the
/// caller; this lists them all.
pub(super) fn gate_items(
    counted: &Counted<'_>,
    key: &str,
    fact: &StoryFact,
    walk: &Walk,
    next: Option<Phase>,
) -> Vec<Attention> {
    let Some(next) = next else {
        return Vec::new();
    };
    let before_implement = matches!(
        next,
        Phase::Refine | Phase::Research | Phase::Plan | Phase::PlanReview | Phase::Implement
    );
    let mut latest: BTreeMap<Phase, (u32, &String)> = BTreeMap::new();
    for (p, r, k) in &walk.steps {
        latest.insert(*p, (*r, k));
    }
    let mut out = Vec::new();
    let mut item = |kind: AlertKind, rkey: &str, detail: String, since: u64, holds: Phase| {
        out.push(Attention {
            id: format!("{kind}@{rkey}"),
            kind,
            detail,
            since_ms: since,
            holds: Some(holds),
            actions: GATE_ACTIONS.iter().map(|a| a.to_string()).collect(),
        })
    };
    for (p, (r, k)) in &latest {
        let current = if before_implement {
            matches!(
                p,
                Phase::Refine | Phase::Research | Phase::Plan | Phase::PlanReview
            )
        } else {
            matches!(p, Phase::Implement | Phase::Rework | Phase::Review) && *r == walk.round
        };
        let Some((_, f)) = counted.get(&(key.to_string(), *p, *r)) else {
            continue;
        };
        if !current {
            continue;
        }
        let Some(holds) = crate::core::attention::holds(*p) else {
            continue;
        };
        for e in &f.escalations {
            item(e.kind, k, e.detail.clone(), f.written_at_ms, holds);
        }
        if *p == Phase::Plan && fact.labels.iter().any(|l| l == APPROVAL_LABEL) {
            item(
                AlertKind::Approval,
                k,
                format!("labelled {APPROVAL_LABEL}: the plan needs a human before implement"),
                f.written_at_ms,
                Phase::Implement,
            );
        }
    }
    out
}

/// Step 7 of the fold: a story waiting on a blocked dependency is blocked too (it would
/// wait forever): say so, naming the dependency, until a human unblocks it.
pub(super) fn block_dependents_of_blocked(
    stories: &mut BTreeMap<smol_str::SmolStr, Box<StoryView>>,
    active_stories: &BTreeSet<&str>,
) {
    // Only stories with dependencies can be blocked by one: most have none.
    let keys: Vec<smol_str::SmolStr> = stories
        .iter()
        .filter(|(_, s)| !s.fact.depends_on.is_empty())
        .map(|(k, _)| k.clone())
        .collect();
    loop {
        let mut changed = false;
        for k in &keys {
            let Some(s) = stories.get(k.as_str()) else {
                continue;
            };
            // (A story already started is blocked too unless a node is working on
            // it: the scheduler never runs a phase of a story whose dependencies have
            // not landed, so it would wait forever — seed 1065 hostile, 2 files.)
            if s.more.merged.is_some()
                || s.more.blocked_reason.is_some()
                || active_stories.contains(k.as_str())
            {
                continue;
            }
            if s.more.cancelled.is_some() {
                continue;
            }
            let dep = s.fact.depends_on.iter().find_map(|d| {
                let x = stories.get(d.as_str())?;
                if x.status == StoryStatus::Cancelled {
                    Some((x.id.clone(), "was cancelled"))
                } else {
                    x.more
                        .blocked_reason
                        .is_some()
                        .then(|| (x.id.clone(), "is blocked"))
                }
            });
            if let Some((dep, what)) = dep {
                if let Some(s) = stories.get_mut(k.as_str()) {
                    s.status = StoryStatus::Blocked;
                    s.more.blocked_reason = Some(format!("depends on {dep}, which {what}"));
                    s.next_phase = None;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
}
