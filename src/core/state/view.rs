//! `View`, the pure fold of the decoded facts: stories with display ids, status, phase
//! progress, claims, results, merges, and which result counts; knowledge relevance.

use super::command::{Assignment, CommandFact, Note, Steering, Stop, StorySteer};
use super::*;
use crate::core::model::AlertKind;

/// The label that makes a story's plan wait for a human's `approve` before implement.
pub const APPROVAL_LABEL: &str = "approval";
/// The label that adds a `refine` phase before research (ai-sdlc's refinement).
pub const REFINE_LABEL: &str = "refine";
/// The label that adds a `plan_review` phase after plan: an agent reviews the plan, and
/// a rejection plans again.
pub const PLAN_REVIEW_LABEL: &str = "plan-review";

/// The id of a knowledge entry: a hash of its kind and its whitespace-normalised,
/// lower-cased text.
pub fn knowledge_id(kind: KnowledgeKind, text: &str) -> String {
    let norm: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    let mut h = Sha256::new();
    h.update(kind.as_str().as_bytes());
    h.update([0]);
    h.update(norm.join(" ").as_bytes());
    hex::encode(&h.finalize()[..8])
}

fn words(s: &str) -> std::collections::BTreeSet<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() >= 3)
        .map(str::to_lowercase)
        .collect()
}

/// The knowledge entries most relevant to a story, best first: entries learned on the
/// story itself, then by words shared with its title, body, files and labels, then the
/// most recent; pitfalls break ties. At most `limit`.
pub fn relevant_knowledge(view: &View, story: &StoryView, limit: usize) -> Vec<KnowledgeFact> {
    let f = &story.fact;
    let mut mine = words(&f.title);
    mine.extend(words(&f.body));
    for x in f.files.iter().chain(&f.labels) {
        mine.extend(words(x));
    }
    let mut scored: Vec<(u32, u64, &KnowledgeFact)> = view
        .knowledge
        .values()
        .map(|k| {
            let shared = words(&k.text).intersection(&mine).count() as u32;
            let own = u32::from(k.story == story.key) * 100;
            let pitfall = u32::from(k.kind == KnowledgeKind::Pitfall);
            (own + shared * 2 + pitfall, k.written_at_ms, k)
        })
        .collect();
    scored.sort_by(|a, b| (b.0, b.1, &b.2.text).cmp(&(a.0, a.1, &a.2.text)));
    scored
        .into_iter()
        .take(limit)
        .map(|(_, _, k)| k.clone())
        .collect()
}

/// Most rework rounds before a story needs a human.
pub const MAX_REWORKS: u32 = 3;

/// Where a story stands, from its counted results alone.
struct Walk {
    /// Counted steps in order: (phase, round, result key).
    steps: Vec<(Phase, u32, String)>,
    /// The step to run next, unless blocked or merged.
    next: Option<(Phase, u32)>,
    /// The last round reached.
    round: u32,
    blocked: Option<String>,
    /// The step a human's `unblock` grants more rounds at, when the rounds ran out.
    blocked_step: Option<(Phase, u32)>,
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
fn walk_story(
    key: &str,
    labels: &[String],
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

/// A release for humans: its note, or its reason when it has none.
fn release_text(r: &ReleaseFact) -> String {
    if r.note.is_empty() {
        format!("{:?}", r.why).to_lowercase()
    } else {
        r.note.clone()
    }
}

/// The document key of a story: unique without coordination because it carries its
/// creator's tag, and a creator never reuses a number.
pub fn story_key(number: u32, creator: &str) -> String {
    format!("S-{number:04}@{}", peer_tag(creator))
}

/// One story as every node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoryView {
    /// The immutable document key (`S-0042@tag`).
    pub key: String,
    /// The display id (`S-0042`, or `S-0042-tag` when two nodes allocated one number).
    pub id: String,
    pub status: StoryStatus,
    /// Display ids of the stories this one depends on (keys when not yet known).
    pub depends_on_ids: Vec<String>,
    /// The fact as written by its creator.
    pub fact: StoryFact,
    /// Phases with a counted result, in pipeline order.
    pub phases_done: Vec<Phase>,
    /// The phase to run next (None once merged or blocked).
    pub next_phase: Option<Phase>,
    /// The round of the next phase (0 until a review rejects or a merge needs rework).
    pub round: u32,
    /// Counted results in the order they happened: keys into `View::results`.
    pub history: Vec<String>,
    /// Attempts so far at the next phase (claims that started work on it, running or
    /// ended).
    pub attempts: u32,
    /// Of those, the ones that failed because of the work (blocked at [`MAX_ATTEMPTS`]).
    #[serde(default)]
    pub failed_attempts: u32,
    /// Of those, the ones that ended because their holder went away: died, stalled,
    /// restarted or shut down (blocked at [`MAX_TAKEOVERS`]).
    #[serde(default)]
    pub takeovers: u32,
    /// Why earlier attempts at the next phase failed, oldest first.
    pub failures: Vec<String>,
    /// Why a human is needed, when blocked.
    pub blocked_reason: Option<String>,
    /// The counted landing, once merged.
    pub merged: Option<MergeFact>,
    /// Who implemented it (the counted implement result's holder): never its reviewer.
    pub implementer: Option<String>,
    /// The priority it runs at: an operator's `prioritize`, else the creator's.
    pub priority: u32,
    /// An operator paused it: no new phase starts (running work finishes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Stop>,
    /// An operator cancelled it (status `cancelled` unless it had landed already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<Stop>,
    /// An operator handed it to one node or role (review still runs elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned: Option<Assignment>,
    /// Operators' notes for its later jobs: context, and the changes they requested.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<Note>,
    /// What needs a human about it now, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attention: Vec<Attention>,
    /// Its next phase waits for an attention item to be approved or dismissed.
    #[serde(default)]
    pub held: bool,
    /// The step (phase, round) an `unblock` grants more attempts at, when blocked by its
    /// own limits (not by a dependency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_step: Option<(Phase, u32)>,
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
const GATE_ACTIONS: [&str; 4] = ["approve", "request-changes", "dismiss", "cancel"];
/// The actions on a blocked story.
const BLOCKED_ACTIONS: [&str; 4] = ["unblock", "unblock --reset-attempts", "cancel", "dismiss"];

/// The derived state of the mesh: identical on every node that folded the same document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct View {
    /// Stories by key.
    pub stories: BTreeMap<String, StoryView>,
    /// Node descriptions by peer id.
    pub nodes: BTreeMap<String, NodeFact>,
    /// Claim facts by claim id.
    pub claims: BTreeMap<String, ClaimFact>,
    /// Release facts by claim id.
    pub releases: BTreeMap<String, ReleaseFact>,
    /// Every phase result written, counted or not, by document key.
    pub results: BTreeMap<String, Arc<ResultFact>>,
    /// Every merge fact written, by document key.
    pub merges: BTreeMap<String, MergeFact>,
    /// The counted result of each (story, phase, round): its key in `results`.
    pub counted: BTreeMap<(String, Phase, u32), String>,
    /// Knowledge entries by id (a content hash).
    pub knowledge: BTreeMap<String, KnowledgeFact>,
    /// Values refused (unsigned, mis-signed, undecodable, invalid, or written by an
    /// author not entitled to their key: `Doc::rejected` has them by author and kind);
    /// skipped, counted.
    pub malformed: u64,
    /// Who may write facts that count, and who may change that.
    pub roster: RosterView,
    /// What operators asked (commands, folded).
    pub steering: Steering,
}

/// Fencing tokens cannot be inflated: a claim counts only if each of its tokens is 1 or
/// follows an unbroken run of tokens 1, 2, … on that resource among the document's
/// claims. Honest nodes always claim one above the highest token they see (and what they
/// see passed this rule), so their claims always do; a claim that jumps ahead (token
/// `u64::MAX`, say) is dropped and counted, and reaching token `t` takes `t` signed
/// claims, which the document's caps bound. Returns how many were dropped.
fn drop_inflated_claims(claims: &mut BTreeMap<String, ClaimFact>) -> u64 {
    let mut tokens: BTreeMap<&Resource, BTreeSet<u64>> = BTreeMap::new();
    for c in claims.values() {
        for (r, t) in &c.resources {
            tokens.entry(r).or_default().insert(*t);
        }
    }
    // The highest token of each resource reached without a gap from 1.
    let reach: BTreeMap<Resource, u64> = tokens
        .into_iter()
        .map(|(r, ts)| {
            let mut top = 0u64;
            for t in ts {
                if t != top.saturating_add(1) {
                    break;
                }
                top = t;
            }
            (r.clone(), top)
        })
        .collect();
    let before = claims.len();
    claims.retain(|_, c| {
        c.resources
            .iter()
            .all(|(r, t)| reach.get(r).is_some_and(|top| t <= top))
    });
    (before - claims.len()) as u64
}

impl View {
    /// The view and the claim fold it was derived with (built once, used by both).
    pub(super) fn fold(all: &BTreeMap<String, Fact>) -> (View, Claims) {
        let (mut view, facts) = View::sort_facts(all);
        view.malformed += drop_inflated_claims(&mut view.claims);
        let claims = Claims::new(&view.claims, &view.releases);
        let counted = counted_results(&view.results, &claims);
        let merged = counted_merges(&view.merges, &claims);
        let ids = display_ids(&facts);
        let key_to_id: BTreeMap<&str, &str> = facts
            .iter()
            .zip(&ids)
            .map(|((k, _), id)| (k.as_str(), id.as_str()))
            .collect();
        let index = ClaimIndex::new(&claims);
        let fold = StoryFold {
            claims: &claims,
            releases: &view.releases,
            counted: &counted,
            merged: &merged,
            index: &index,
            key_to_id: &key_to_id,
            steering: &view.steering,
        };
        let mut stories = BTreeMap::new();
        for ((key, fact), id) in facts.iter().zip(&ids) {
            stories.insert(key.clone(), fold.story(key, fact, id));
        }
        block_dependents_of_blocked(&mut stories, &index.active_stories);
        let counted_keys = counted
            .into_iter()
            .map(|(k, (rkey, _))| (k, rkey.clone()))
            .collect();
        view.stories = stories;
        view.counted = counted_keys;
        (view, claims)
    }

    /// Step 1 of the fold: every decoded fact into its map; story facts whose key does
    /// not match their content are malformed.
    fn sort_facts(all: &BTreeMap<String, Fact>) -> (View, Vec<(String, StoryFact)>) {
        let mut view = View::default();
        let mut facts: Vec<(String, StoryFact)> = Vec::new();
        let mut commands: Vec<(&String, &CommandFact)> = Vec::new();
        for (key, fact) in all {
            match fact {
                Fact::Story(f) => match key.strip_prefix(STORY_PREFIX) {
                    Some(skey) if story_key(f.number, &f.created_by) == skey => {
                        facts.push((skey.to_string(), f.clone()))
                    }
                    _ => view.malformed += 1,
                },
                Fact::Node(f) => {
                    let peer = key.strip_prefix(NODE_PREFIX).unwrap_or(key);
                    view.nodes.insert(peer.to_string(), f.clone());
                }
                Fact::Claim(f) => {
                    let id = key.strip_prefix(CLAIM_PREFIX).unwrap_or(key);
                    view.claims.insert(id.to_string(), f.clone());
                }
                Fact::Release(f) => {
                    let id = key.strip_prefix(RELEASE_PREFIX).unwrap_or(key);
                    view.releases.insert(id.to_string(), f.clone());
                }
                Fact::Result(f) => {
                    view.results.insert(key.clone(), f.clone());
                }
                Fact::Knowledge(f) => {
                    let id = key.strip_prefix(KNOWLEDGE_PREFIX).unwrap_or(key);
                    view.knowledge.insert(id.to_string(), f.clone());
                }
                Fact::Merge(f) => {
                    view.merges.insert(key.clone(), f.clone());
                }
                // The document folds the roster itself (it needs the changes).
                Fact::Admit(_) | Fact::Revoke(_) => {}
                Fact::Command(f) => commands.push((key, f)),
            }
        }
        view.steering = Steering::fold(commands.into_iter());
        (view, facts)
    }

    /// The claim fold (winners, tokens) of this view.
    pub fn claims(&self) -> Claims {
        Claims::new(&self.claims, &self.releases)
    }

    /// The counted result of one phase of a story in its latest round, if any.
    pub fn counted_result(&self, story: &str, phase: Phase) -> Option<&ResultFact> {
        let lo = (story.to_string(), phase, 0);
        let hi = (story.to_string(), phase, u32::MAX);
        let (_, key) = self.counted.range(lo..=hi).next_back()?;
        self.results.get(key).map(Arc::as_ref)
    }

    /// The counted result of one phase of a story in one round, if any.
    pub fn counted_result_round(
        &self,
        story: &str,
        phase: Phase,
        round: u32,
    ) -> Option<&ResultFact> {
        let key = self.counted.get(&(story.to_string(), phase, round))?;
        self.results.get(key).map(Arc::as_ref)
    }

    /// A story's counted results in the order they happened (research first).
    pub fn history(&self, story: &str) -> Vec<&ResultFact> {
        self.stories
            .get(story)
            .map(|s| {
                s.history
                    .iter()
                    .filter_map(|k| self.results.get(k).map(Arc::as_ref))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn max_number(&self) -> u32 {
        self.stories
            .values()
            .map(|s| s.fact.number)
            .max()
            .unwrap_or(0)
    }

    /// Finds a story by display id (`S-0042`, `s-42`) or by key.
    pub fn resolve(&self, id: &str) -> Result<&StoryView, InputError> {
        if let Some(s) = self.stories.get(id) {
            return Ok(s);
        }
        let wanted = normalize_display_id(id);
        let found: Vec<&StoryView> = self.stories.values().filter(|s| s.id == wanted).collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(InputError::UnknownStory(id.to_string())),
            _ => Err(InputError::AmbiguousStory(id.to_string())),
        }
    }

    /// Stories in backlog order: priority (lower first), then age, then id.
    pub fn stories_ordered(&self) -> Vec<&StoryView> {
        let mut v: Vec<&StoryView> = self.stories.values().collect();
        v.sort_by(|a, b| {
            (a.priority, a.fact.number, &a.id).cmp(&(b.priority, b.fact.number, &b.id))
        });
        v
    }

    /// Every attention item of every story, oldest first: (story, item).
    pub fn attention(&self) -> Vec<(&StoryView, &Attention)> {
        let mut v: Vec<(&StoryView, &Attention)> = self
            .stories
            .values()
            .flat_map(|s| s.attention.iter().map(move |a| (s, a)))
            .collect();
        v.sort_by(|a, b| (a.1.since_ms, &a.0.id, &a.1.id).cmp(&(b.1.since_ms, &b.0.id, &b.1.id)));
        v
    }

    /// Story counts per status, every status present (zero when empty).
    pub fn count_by_status(&self) -> BTreeMap<StoryStatus, usize> {
        let mut m: BTreeMap<StoryStatus, usize> =
            StoryStatus::ALL.iter().map(|s| (*s, 0)).collect();
        for s in self.stories.values() {
            *m.entry(s.status).or_default() += 1;
        }
        m
    }
}

/// The counted results: by (story, phase, round), the result's key and the result.
type Counted<'a> = BTreeMap<(String, Phase, u32), (&'a String, &'a ResultFact)>;

/// Step 2 of the fold, fencing in the view: a result counts only if written under the
/// top claim of its resource (story, phase, round), whatever arrived first.
fn counted_results<'a>(
    results: &'a BTreeMap<String, Arc<ResultFact>>,
    claims: &Claims,
) -> Counted<'a> {
    let mut counted: Counted<'a> = BTreeMap::new();
    for (rkey, r) in results.iter() {
        let Ok(res) = Resource::story_round(&r.story, r.phase, r.round) else {
            continue;
        };
        if claims.top(&res) == Some(r.claim.as_str())
            && claims.token_of(&r.claim, &res) == Some(r.token)
        {
            counted.insert((r.story.clone(), r.phase, r.round), (rkey, r));
        }
    }
    counted
}

/// Step 3 of the fold: the counted landing of each story (a merge written under the
/// top claim of its merge resource).
fn counted_merges(
    merges: &BTreeMap<String, MergeFact>,
    claims: &Claims,
) -> BTreeMap<String, MergeFact> {
    let mut merged: BTreeMap<String, MergeFact> = BTreeMap::new();
    for m in merges.values() {
        let Ok(res) = Resource::story_round(&m.story, Phase::Merge, m.round) else {
            continue;
        };
        if claims.top(&res) == Some(m.claim.as_str()) {
            merged.insert(m.story.clone(), m.clone());
        }
    }
    merged
}

/// Step 4 of the fold, display ids: a number allocated once reads `S-0042`; when nodes
/// allocated the same number concurrently, the lowest creator keeps the short id and
/// the others carry their creator's tag. One id per story fact, in order.
fn display_ids(facts: &[(String, StoryFact)]) -> Vec<String> {
    let mut by_number: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, (_, f)) in facts.iter().enumerate() {
        by_number.entry(f.number).or_default().push(i);
    }
    let mut ids = vec![String::new(); facts.len()];
    for group in by_number.values_mut() {
        group.sort_by(|&a, &b| {
            (&facts[a].1.created_by, &facts[a].0).cmp(&(&facts[b].1.created_by, &facts[b].0))
        });
        for (rank, &i) in group.iter().enumerate() {
            let f = &facts[i].1;
            ids[i] = if rank == 0 {
                format!("S-{:04}", f.number)
            } else {
                format!("S-{:04}-{}", f.number, peer_tag(&f.created_by))
            };
        }
    }
    ids
}

/// Step 5 of the fold: indexes over the claims, built once (a per-story scan made the
/// fold quadratic).
struct ClaimIndex<'a> {
    /// The claims naming each resource (a claim naming one resource twice once).
    by_resource: BTreeMap<&'a Resource, Vec<(&'a str, &'a ClaimFact)>>,
    /// Stories with an active claim.
    active_stories: BTreeSet<&'a str>,
}

impl<'a> ClaimIndex<'a> {
    fn new(claims: &'a Claims) -> ClaimIndex<'a> {
        let mut by_resource: BTreeMap<&Resource, Vec<(&str, &ClaimFact)>> = BTreeMap::new();
        for (id, c) in claims.all() {
            for (r, _) in &c.resources {
                let on = by_resource.entry(r).or_default();
                // A claim naming one resource twice still counts once.
                if on.last().is_none_or(|(last, _)| *last != id) {
                    on.push((id, c));
                }
            }
        }
        let active_stories: BTreeSet<&str> = claims
            .active()
            .flat_map(|(_, c)| c.resources.iter().filter_map(|(r, _)| r.story_key()))
            .collect();
        ClaimIndex {
            by_resource,
            active_stories,
        }
    }
}

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
struct StoryFold<'a> {
    claims: &'a Claims,
    releases: &'a BTreeMap<String, ReleaseFact>,
    counted: &'a Counted<'a>,
    merged: &'a BTreeMap<String, MergeFact>,
    index: &'a ClaimIndex<'a>,
    key_to_id: &'a BTreeMap<&'a str, &'a str>,
    steering: &'a Steering,
}

impl StoryFold<'_> {
    /// One story's view (before its dependencies' blocks are followed).
    fn story(&self, key: &String, fact: &StoryFact, id: &str) -> StoryView {
        let steer = self.steering.story(key);
        let deps_done = fact.depends_on.iter().all(|d| self.merged.contains_key(d));
        let walk = walk_story(key, &fact.labels, self.counted, steer);
        let phases_done: Vec<Phase> = Phase::ALL
            .iter()
            .copied()
            .filter(|p| walk.steps.iter().any(|(q, _, _)| q == p))
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
        let is_merged = self.merged.get(key).cloned();
        let cancelled = steer.and_then(|s| s.cancelled.clone());
        if is_merged.is_some() || cancelled.is_some() {
            next_phase = None;
            blocked_reason = None;
            blocked_step = None;
        } else if blocked_reason.is_some() {
            next_phase = None;
        }
        let started = !phases_done.is_empty() || self.index.active_stories.contains(key.as_str());
        let status = if is_merged.is_some() {
            StoryStatus::Done
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
                    .map_or(d.clone(), |s| s.to_string())
            })
            .collect();
        let mut attention = Vec::new();
        if status != StoryStatus::Done && status != StoryStatus::Cancelled {
            attention = self.gate_items(key, fact, &walk, next_phase);
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
            key: key.clone(),
            id: id.to_string(),
            status,
            depends_on_ids: depends_on,
            fact: fact.clone(),
            phases_done,
            next_phase,
            round,
            history: walk.steps.iter().map(|(_, _, k)| k.clone()).collect(),
            attempts,
            failed_attempts,
            takeovers,
            failures,
            blocked_reason,
            merged: is_merged,
            implementer,
            priority: steer.and_then(|s| s.priority).unwrap_or(fact.priority),
            paused: steer.and_then(|s| s.paused.clone()),
            cancelled,
            assigned: steer.and_then(|s| s.assigned.clone()),
            notes,
            attention,
            held,
            blocked_step,
        }
    }

    /// The items that hold a story's next gate: before implement, the escalations of its
    /// latest research and plan (and the `approval` label); before merge, those of the
    /// current round's implement or rework and review. Uncleared ones only matter to the
    /// caller; this lists them all.
    fn gate_items(
        &self,
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
            let Some((_, f)) = self.counted.get(&(key.to_string(), *p, *r)) else {
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

/// Step 7 of the fold: a story waiting on a blocked dependency is blocked too (it would
/// wait forever): say so, naming the dependency, until a human unblocks it.
fn block_dependents_of_blocked(
    stories: &mut BTreeMap<String, StoryView>,
    active_stories: &BTreeSet<&str>,
) {
    loop {
        let mut changed = false;
        let keys: Vec<String> = stories.keys().cloned().collect();
        for k in keys {
            let Some(s) = stories.get(&k) else { continue };
            // (A story already started is blocked too unless a node is working on
            // it: the scheduler never runs a phase of a story whose dependencies have
            // not landed, so it would wait forever — seed 1065 hostile, 2 files.)
            if s.merged.is_some()
                || s.blocked_reason.is_some()
                || active_stories.contains(k.as_str())
            {
                continue;
            }
            if s.cancelled.is_some() {
                continue;
            }
            let dep = s.fact.depends_on.iter().find_map(|d| {
                let x = stories.get(d)?;
                if x.status == StoryStatus::Cancelled {
                    Some((x.id.clone(), "was cancelled"))
                } else {
                    x.blocked_reason
                        .is_some()
                        .then(|| (x.id.clone(), "is blocked"))
                }
            });
            if let Some((dep, what)) = dep {
                if let Some(s) = stories.get_mut(&k) {
                    s.status = StoryStatus::Blocked;
                    s.blocked_reason = Some(format!("depends on {dep}, which {what}"));
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

/// `s-42` → `S-0042`; anything else is returned upper-cased as given.
fn normalize_display_id(id: &str) -> String {
    let up = id.trim().to_uppercase();
    let Some(rest) = up.strip_prefix("S-") else {
        return up;
    };
    let (num, suffix) = match rest.split_once('-') {
        Some((n, s)) => (n, Some(s)),
        None => (rest, None),
    };
    match num.parse::<u32>() {
        Ok(n) => match suffix {
            // Tags are case-sensitive base58; keep the suffix as the user typed it.
            Some(_) => {
                let orig_suffix = id.trim().rsplit_once('-').map_or("", |(_, s)| s);
                format!("S-{n:04}-{orig_suffix}")
            }
            None => format!("S-{n:04}"),
        },
        Err(_) => up,
    }
}
