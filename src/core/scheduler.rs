//! "What should this node do next?" (docs/DESIGN.md §6). A pure ranking of the work this node
//! may claim now, from the view, the claim fold and a freeness test the caller supplies
//! (which carries lease expiry and grace). Never reads a clock, never does I/O.
//!
//! Order: merge, then review/rework/implement, then plan/research, then refine; then
//! story priority (lower first); then continuations (the next phase of a story whose
//! last phase this node ran: finish what is started before starting more, and no other
//! node ranks it first, so nobody races for it); then age. Among the first few equals
//! each node prefers items by a rendezvous hash of (its id, the story), so nodes spread
//! out instead of racing for the same item.

use crate::core::lease::{predict_conflict, Claims, CoChange, Conflict, Resource};
use crate::core::model::Phase;
use crate::core::state::{StoryView, View};
use serde::{Deserialize, Serialize};
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
        .map(|s| s.fact.planned_files())
        .unwrap_or_default()
}

/// Whether `me` ran the story's latest counted phase (its next phase continues that).
fn continues(view: &View, s: &crate::core::state::StoryView, me: &str) -> bool {
    s.history
        .last()
        .and_then(|k| view.results.get(k))
        .is_some_and(|r| r.holder == me)
}

/// Who reaches for `story`'s next phase first when a peer's news makes it claimable:
/// among `candidates` (this node and the alive peers with free capacity for the phase),
/// the node that ran the story's previous phase (it continues with its context), else
/// the one with the highest rendezvous hash; a review never goes to the implementer
/// unless no one else is there. Only that node claims on the news; the others wait for
/// their claim tick, by when its claim is usually in sight — every idle node reaching
/// for the one story that just opened would only lose at settle.
pub fn first_claimer<'a>(
    view: &View,
    story: &str,
    phase: Phase,
    candidates: &[&'a str],
) -> Option<&'a str> {
    let s = view.stories.get(story);
    let implementer = s.and_then(|s| s.more.implementer.as_deref());
    let may = |c: &&str| phase != Phase::Review || Some(*c) != implementer;
    let mut eligible: Vec<&'a str> = candidates.iter().copied().filter(may).collect();
    if eligible.is_empty() {
        eligible = candidates.to_vec(); // alone: a node reviews its own change
    }
    let previous = s
        .and_then(|s| s.history.last())
        .and_then(|k| view.results.get(k))
        .map(|r| r.holder.as_str());
    eligible
        .iter()
        .find(|c| Some(**c) == previous)
        .or_else(|| eligible.iter().max_by_key(|c| rendezvous(c, story)))
        .copied()
}

/// A story with a counted implement that has not landed and is not blocked: a change in
/// flight, which owns its planned files until it lands or is blocked.
struct Unlanded<'a> {
    story: &'a StoryView,
    files: Vec<String>,
}

/// The order in which changes to shared files go first: story priority (lower first),
/// then story number, then key. A total order every node derives from the same view.
fn change_order(s: &StoryView) -> (u32, u32, &str) {
    (s.priority, s.fact.number, s.key.as_str())
}

/// Stories changed but not landed (and not blocked), with the files they change.
fn unlanded_changes(view: &View) -> Vec<Unlanded<'_>> {
    view.stories
        .values()
        .filter(|s| {
            s.more.merged.is_none()
                && s.more.blocked_reason.is_none()
                && s.more.cancelled.is_none()
                && s.phases_done.contains(&Phase::Implement)
        })
        .map(|s| Unlanded {
            story: s,
            files: planned_files(view, &s.key),
        })
        .collect()
}

/// The unlanded change a story's implement or rework must wait for, and the shared file:
/// waits between changes that cannot cycle. A story with no counted change yet waits for
/// every unlanded change sharing one of its files (as a new change would only conflict at
/// merge); a story with a change of its own waits only for changes sharing a file that are
/// ahead of it in [`change_order`]. So the first of any set of changes to one file never
/// waits for another, proceeds to review and merge and lands (or is blocked), and the
/// others rework on top of it — whatever order their reviews and merges failed in (the
/// stall of issue 11: two changes to one file made on the two sides of a partition, each
/// in rework waiting for the other to land). Review and merge never wait on ownership.
fn owner_ahead<'a>(
    unlanded: &'a [Unlanded<'a>],
    s: &StoryView,
    files: &[String],
) -> Option<(&'a Unlanded<'a>, String)> {
    let changed = s.phases_done.contains(&Phase::Implement);
    unlanded
        .iter()
        .filter(|u| u.story.key != s.key)
        .filter(|u| !changed || change_order(u.story) < change_order(s))
        .find_map(|u| {
            files
                .iter()
                .find(|f| u.files.contains(f))
                .map(|f| (u, f.clone()))
        })
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
/// alone (a mesh of one would otherwise stop at every review). `gate`, when the origin
/// is remote, is the merge gate every merge claim also holds: a merge waits while another
/// holds it, so landings take turns in this order (phase, priority, number), the same
/// on every node.
#[allow(clippy::too_many_arguments)] // a pure function of named inputs; a struct would only rename them
pub fn rank(
    view: &View,
    claims: &Claims,
    me: &str,
    roles: &[String],
    spread: usize,
    cochange: &CoChange,
    self_review: bool,
    gate: Option<&Resource>,
    mut is_free: impl FnMut(&Resource) -> bool,
) -> Vec<Work> {
    let mut out: Vec<((u8, u32, u8), u32, Work)> = Vec::new();
    let unlanded = unlanded_changes(view);
    for s in view.stories.values() {
        let Some(phase) = s.next_phase else { continue };
        if !roles.iter().any(|r| r == phase.as_str()) {
            continue;
        }
        // Operators: a paused story starts nothing; a held one waits for an approval; an
        // assigned one runs on its node or role (review excepted: never the implementer).
        if s.more.paused.is_some() || s.held {
            continue;
        }
        if let Some(a) = s.more.assigned.as_ref().filter(|_| phase != Phase::Review) {
            if a.node.as_deref().is_some_and(|n| n != me)
                || a.role
                    .as_deref()
                    .is_some_and(|r| !roles.iter().any(|x| x == r))
            {
                continue;
            }
        }
        if !s.fact.depends_on.iter().all(|d| view.landed(d)) {
            continue;
        }
        if phase == Phase::Review && !self_review && s.more.implementer.as_deref() == Some(me) {
            continue; // review runs on a node other than the implementer
        }
        let Ok(story_res) = Resource::story_round(&s.key, phase, s.round) else {
            continue;
        };
        if !is_free(&story_res) {
            continue;
        }
        let mut resources = vec![story_res];
        if let (Phase::Merge, Some(g)) = (phase, gate) {
            if !is_free(g) {
                continue; // another landing holds the gate: wait for it
            }
            resources.push(g.clone());
        }
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
            // blocked): a second change to them now would only conflict at merge. Among
            // changes in flight, only the ones ahead in the order are waited for.
            if owner_ahead(&unlanded, s, &files).is_some() {
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
                s.priority,
                u8::from(!continues(view, s, me)),
            ),
            s.fact.number,
            Work {
                story: s.key.to_string(),
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

/// Why a story is not moving (or that it is done): what `story show` and `status` print,
/// what the `stalled` event names and what the simulator reports when a story does not
/// finish. A pure function of the view and the claim fold, so every node with the same
/// view says the same thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Waiting {
    /// Landed: nothing to wait for.
    Merged,
    /// Needs a human.
    Blocked { reason: String },
    /// An operator cancelled it.
    Cancelled { by: String, reason: String },
    /// An operator paused it (or the whole mesh): no new phase starts.
    Paused { by: String, reason: String },
    /// Its next phase waits for an operator to approve or dismiss these items.
    Approval { phase: Phase, items: Vec<String> },
    /// Assigned by an operator to a node or role (`to`) that is not in the mesh.
    Assigned { phase: Phase, to: String },
    /// A node holds the claim on its next phase and is working on it.
    Claimed {
        node: String,
        phase: Phase,
        round: u32,
        /// The holder's wall clock when it wrote the claim (ms since the epoch).
        since_ms: u64,
    },
    /// A dependency has not landed yet (display id and its own wait).
    Dependency { story: String, then: Box<Waiting> },
    /// A planned file is locked by another story's running implement or rework.
    FileLocked {
        file: String,
        story: String,
        node: String,
    },
    /// A planned file is owned by another story's change that has not landed yet.
    FileOwned {
        file: String,
        owner: String,
        then: Box<Waiting>,
    },
    /// Ready to land, while another story's merge holds the origin's merge gate.
    Gate { story: String, node: String },
    /// A wait that leads back to a story already on the chain (the rule in
    /// [`owner_ahead`] is meant to make this impossible; shown rather than looped).
    Cycle { story: String },
    /// A story this node's view does not have (yet).
    Unknown,
    /// The review needs a node other than the implementer, and no other node has the role.
    NoReviewer { phase: Phase, implementer: String },
    /// No node in the mesh has the role for the next phase.
    NoRole { phase: Phase },
    /// Free to be claimed by a node with the role (and free capacity).
    Ready { phase: Phase, round: u32 },
}

impl Waiting {
    /// Whether the story is still expected to move (neither merged nor blocked).
    pub fn is_open(&self) -> bool {
        !matches!(
            self,
            Waiting::Merged | Waiting::Blocked { .. } | Waiting::Cancelled { .. }
        )
    }

    /// Whether it waits for a human's command (paused, or at an approval gate): not a
    /// stall, and no fault.
    pub fn for_human(&self) -> bool {
        match self {
            Waiting::Paused { .. } | Waiting::Approval { .. } => true,
            Waiting::Dependency { then, .. } | Waiting::FileOwned { then, .. } => then.for_human(),
            _ => false,
        }
    }
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiting::Merged => write!(f, "merged"),
            Waiting::Blocked { reason } => write!(f, "blocked: {reason}"),
            Waiting::Cancelled { by, reason } => {
                write!(f, "cancelled by operator {}", short_peer(by))?;
                if !reason.is_empty() {
                    write!(f, ": {reason}")?;
                }
                Ok(())
            }
            Waiting::Paused { by, reason } => {
                write!(f, "paused by operator {}", short_peer(by))?;
                if !reason.is_empty() {
                    write!(f, ": {reason}")?;
                }
                Ok(())
            }
            Waiting::Approval { phase, items } => write!(
                f,
                "{phase} waits for an operator to approve or dismiss {}",
                items.join(", ")
            ),
            Waiting::Assigned { phase, to } => {
                write!(
                    f,
                    "ready for {phase}, assigned to {to}, which is not in the mesh"
                )
            }
            Waiting::Claimed {
                node,
                phase,
                round,
                since_ms,
            } => {
                write!(f, "claimed by node {node} ({phase}")?;
                if *round > 0 {
                    write!(f, " round {round}")?;
                }
                // The holder's wall clock, as a UTC time of day (display only).
                let secs = since_ms / 1000;
                let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
                write!(f, ", since {h:02}:{m:02}:{s:02} UTC)")
            }
            Waiting::Dependency { story, then } => {
                write!(f, "waits for dependency {story}, which {}", Chained(then))
            }
            Waiting::FileLocked { file, story, node } => write!(
                f,
                "waits for {file}, locked by {story}'s running claim on node {node}"
            ),
            Waiting::FileOwned { file, owner, then } => write!(
                f,
                "waits for {file}, owned by {owner} (changed, not landed), which {}",
                Chained(then)
            ),
            Waiting::Gate { story, node } => write!(
                f,
                "ready to merge, waits for the merge gate: {story} is landing on node {node}"
            ),
            Waiting::Cycle { story } => write!(f, "waits in a cycle back to {story}"),
            Waiting::Unknown => write!(f, "not in this node's view yet"),
            Waiting::NoReviewer { phase, implementer } => write!(
                f,
                "{phase} needs a node other than the implementer {implementer}; none has the role"
            ),
            Waiting::NoRole { phase } => write!(f, "ready for {phase}, no node with role {phase}"),
            Waiting::Ready { phase, round } => {
                write!(f, "ready for {phase}")?;
                if *round > 0 {
                    write!(f, " round {round}")?;
                }
                Ok(())
            }
        }
    }
}

/// A wait as the tail of a sentence ("…, which is ready for review").
struct Chained<'a>(&'a Waiting);

impl std::fmt::Display for Chained<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            w @ (Waiting::Dependency { .. }
            | Waiting::FileLocked { .. }
            | Waiting::FileOwned { .. }
            | Waiting::Cycle { .. }) => write!(f, "{w}"),
            w => write!(f, "is {w}"),
        }
    }
}

/// Why the story `key` is not moving, from the view and its claim fold: the claim on its
/// next phase, else the first wait `rank` would skip it for (an unlanded dependency, a
/// file locked by a running claim, a file owned by a change ahead of it — followed along
/// the chain), else a missing role, else ready. `None` for an unknown story.
pub fn waiting(view: &View, claims: &Claims, key: &str) -> Option<Waiting> {
    Waits::new(view, claims).of(key)
}

/// [`waiting`] for many stories of one view (a status lists every story): what every
/// answer needs is gathered once, so asking for each of N stories costs O(N) in all,
/// not O(N²) — which made `status` of a 20,000-story backlog take seconds.
pub struct Waits<'a> {
    view: &'a View,
    claims: &'a Claims,
    unlanded: Vec<Unlanded<'a>>,
}

impl<'a> Waits<'a> {
    pub fn new(view: &'a View, claims: &'a Claims) -> Waits<'a> {
        Waits {
            view,
            claims,
            unlanded: unlanded_changes(view),
        }
    }

    /// Why story `key` is not moving ([`waiting`]).
    pub fn of(&self, key: &str) -> Option<Waiting> {
        let mut chain = Vec::new();
        self.view
            .stories
            .get(key)
            .map(|s| waiting_on(self.view, self.claims, &self.unlanded, s, &mut chain))
    }
}

fn waiting_on(
    view: &View,
    claims: &Claims,
    unlanded: &[Unlanded<'_>],
    s: &StoryView,
    chain: &mut Vec<String>,
) -> Waiting {
    if s.more.merged.is_some() {
        return Waiting::Merged;
    }
    if let Some(c) = &s.more.cancelled {
        return Waiting::Cancelled {
            by: c.by.clone(),
            reason: c.reason.clone(),
        };
    }
    if let Some(reason) = &s.more.blocked_reason {
        return Waiting::Blocked {
            reason: reason.clone(),
        };
    }
    let Some(phase) = s.next_phase else {
        return Waiting::Merged; // a merge result that did not reject: landing
    };
    if chain.iter().any(|k| *k == s.key) {
        return Waiting::Cycle {
            story: s.id.to_string(),
        };
    }
    chain.push(s.key.to_string());
    let follow = |other: &StoryView, chain: &mut Vec<String>| -> Box<Waiting> {
        Box::new(waiting_on(view, claims, unlanded, other, chain))
    };
    if let Ok(res) = Resource::story_round(&s.key, phase, s.round) {
        if let Some(c) = claims
            .winner(&res)
            .filter(|id| claims.holds(id))
            .and_then(|id| claims.claim(id))
        {
            return Waiting::Claimed {
                node: c.holder.clone(),
                phase,
                round: s.round,
                since_ms: c.written_at_ms,
            };
        }
    }
    if let Some(d) = s.fact.depends_on.iter().find(|d| !view.landed(d)) {
        return match view.stories.get(d.as_str()) {
            Some(dep) => Waiting::Dependency {
                story: dep.id.to_string(),
                then: follow(dep, chain),
            },
            None => Waiting::Dependency {
                story: d.clone(),
                then: Box::new(Waiting::Unknown),
            },
        };
    }
    if matches!(phase, Phase::Implement | Phase::Rework) {
        let files = planned_files(view, &s.key);
        for (_, c) in claims.active() {
            let Some(other) = c.resources.iter().find_map(|(r, _)| r.story_key()) else {
                continue;
            };
            if other == s.key {
                continue;
            }
            if let Some(f) = c.files().into_iter().find(|f| files.contains(f)) {
                return Waiting::FileLocked {
                    file: f,
                    story: view.stories.get(other).map_or(other, |o| &o.id).to_string(),
                    node: c.holder.clone(),
                };
            }
        }
        if let Some((u, file)) = owner_ahead(unlanded, s, &files) {
            return Waiting::FileOwned {
                file,
                owner: u.story.id.to_string(),
                then: follow(u.story, chain),
            };
        }
    }
    if phase == Phase::Merge {
        for (_, c) in claims.active() {
            if !c
                .resources
                .iter()
                .any(|(r, _)| matches!(r, Resource::Gate(_)))
            {
                continue;
            }
            let Some(other) = c.resources.iter().find_map(|(r, _)| r.story_key()) else {
                continue;
            };
            if other != s.key {
                return Waiting::Gate {
                    story: view.stories.get(other).map_or(other, |o| &o.id).to_string(),
                    node: c.holder.clone(),
                };
            }
        }
    }
    if let Some(p) = s.more.paused.as_deref().or(view.steering.all.as_ref()) {
        return Waiting::Paused {
            by: p.by.clone(),
            reason: p.reason.clone(),
        };
    }
    if s.held {
        return Waiting::Approval {
            phase,
            items: s
                .more
                .attention
                .iter()
                .filter(|a| a.holds == Some(phase))
                .map(|a| a.id.clone())
                .collect(),
        };
    }
    let role = |n: &crate::core::model::NodeFact| n.roles.iter().any(|r| r == phase.as_str());
    if !view.nodes.values().any(role) {
        return Waiting::NoRole { phase };
    }
    if let Some(a) = s.more.assigned.as_ref().filter(|_| phase != Phase::Review) {
        let there = match (&a.node, &a.role) {
            (Some(n), _) => view.nodes.contains_key(n),
            (None, Some(r)) => view.nodes.values().any(|n| n.roles.iter().any(|x| x == r)),
            (None, None) => true,
        };
        if !there {
            let to = match (&a.node, &a.role) {
                (Some(n), _) => format!("node {}", short_peer(n)),
                (None, Some(r)) => format!("role {r}"),
                (None, None) => String::new(),
            };
            return Waiting::Assigned { phase, to };
        }
    }
    if phase == Phase::Review {
        if let Some(imp) = &s.more.implementer {
            // (A node alone reviews its own change.)
            if view.nodes.len() > 1 && !view.nodes.iter().any(|(id, n)| id != imp && role(n)) {
                return Waiting::NoReviewer {
                    phase,
                    implementer: imp.clone(),
                };
            }
        }
    }
    Waiting::Ready {
        phase,
        round: s.round,
    }
}

/// A peer id cut for a sentence (its last 6 characters, as story keys tag it).
fn short_peer(p: &str) -> &str {
    crate::core::state::peer_tag(p)
}

impl Waiting {
    /// Whether something on the chain of waits is being worked on right now (a claim on
    /// the story or on what it waits for, or a running claim locking its file): then the
    /// story is queued behind progress, not stalled.
    pub fn behind_work(&self) -> bool {
        match self {
            Waiting::Claimed { .. } | Waiting::FileLocked { .. } | Waiting::Gate { .. } => true,
            Waiting::Dependency { then, .. } | Waiting::FileOwned { then, .. } => {
                then.behind_work()
            }
            _ => false,
        }
    }
}

/// A story's entry in the [`StallWatch`].
type Seen = (usize, u64, bool, Option<Box<Waiting>>);

/// Notices stories that stopped moving: no new counted result and nothing worked on along
/// their chain of waits for longer than `stall_after_ms` (on the caller's clock, passed
/// in). Each stall is reported once; progress re-arms it.
///
/// What each story waits for depends on the document alone, so it is worked out again
/// only when the document changed (`digest`); between changes a look only moves the
/// clocks — what made an idle node with a large backlog spend a fold's worth of CPU
/// every heartbeat.
#[derive(Debug, Default)]
pub struct StallWatch {
    /// Per story: (counted results, when that count was first seen or work last seen,
    /// reported, what it waits for when that is a stall in the making). Boxed: most
    /// stories wait for nothing that can stall, and inline every entry had room for it
    /// (~50 bytes a story); keyed inline, as the view is.
    seen: std::collections::BTreeMap<smol_str::SmolStr, Seen>,
    /// The document the waits were worked out for.
    digest: Option<[u8; 32]>,
}

impl StallWatch {
    /// The stories that just became stalled at `now_ms`, with what each waits for;
    /// `digest` names the document `view` and `claims` come from.
    pub fn observe(
        &mut self,
        view: &View,
        claims: &Claims,
        digest: [u8; 32],
        now_ms: u64,
        stall_after_ms: u64,
    ) -> Vec<(String, Waiting)> {
        let mut out = Vec::new();
        if self.digest == Some(digest) {
            for (key, e) in self.seen.iter_mut() {
                match &e.3 {
                    None => e.1 = now_ms,
                    Some(w) => {
                        if !e.2 && now_ms.saturating_sub(e.1) > stall_after_ms {
                            e.2 = true;
                            out.push((key.to_string(), (**w).clone()));
                        }
                    }
                }
            }
            return out;
        }
        self.digest = Some(digest);
        self.seen
            .retain(|k, _| view.stories.contains_key(k.as_str()));
        let unlanded = unlanded_changes(view);
        for s in view.stories.values() {
            if s.more.merged.is_some() || s.more.blocked_reason.is_some() {
                self.seen.remove(s.key.as_str());
                continue;
            }
            let w = waiting_on(view, claims, &unlanded, s, &mut Vec::new());
            let steps = s.history.len();
            let e = self
                .seen
                .entry(s.key.clone())
                .or_insert((steps, now_ms, false, None));
            if !w.is_open() || w.behind_work() || w.for_human() || e.0 != steps {
                *e = (steps, now_ms, false, None);
                continue;
            }
            if !e.2 && now_ms.saturating_sub(e.1) > stall_after_ms {
                e.2 = true;
                out.push((s.key.to_string(), w.clone()));
            }
            e.3 = Some(Box::new(w));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{NewStory, Verdict};
    use crate::core::state::tests::step;
    use crate::core::state::Doc;

    const A: &str = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaaaa";
    const B: &str = "12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBbbbbbb";

    fn all_roles() -> Vec<String> {
        Phase::ALL.iter().map(|p| p.as_str().to_string()).collect()
    }

    #[test]
    fn a_node_continues_the_story_it_just_worked_on_before_new_work() {
        let mut d = Doc::new([1; 16]).with_test_names();
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
                None,
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

    #[test]
    fn on_news_the_node_that_ran_the_previous_phase_claims_first_else_one_hash_pick() {
        let mut d = Doc::new([1; 16]).with_test_names();
        let new = |t: &str| NewStory {
            title: t.into(),
            ..Default::default()
        };
        let fresh = d.add_story(&new("fresh"), B, 0).unwrap();
        let planned = d.add_story(&new("planned"), B, 0).unwrap();
        step(&mut d, &planned, Phase::Research, 0, None); // by A
        let v = d.view();
        const C: &str = "12D3KooWCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCcccccc";
        // A ran the research: it continues, whoever else is free, in any order.
        for cands in [[A, B, C], [C, B, A]] {
            assert_eq!(first_claimer(&v, &planned, Phase::Plan, &cands), Some(A));
        }
        // A busy (not a candidate): one pick, the same from every node's list.
        let pick = first_claimer(&v, &planned, Phase::Plan, &[B, C]);
        assert!(pick.is_some());
        assert_eq!(first_claimer(&v, &planned, Phase::Plan, &[C, B]), pick);
        // A story no one worked on: the highest rendezvous hash, whatever the order.
        let best = [A, B, C]
            .into_iter()
            .max_by_key(|n| rendezvous(n, &fresh))
            .unwrap();
        assert_eq!(
            first_claimer(&v, &fresh, Phase::Research, &[C, A, B]),
            Some(best)
        );
        assert_eq!(first_claimer(&v, &fresh, Phase::Research, &[]), None);
        // A implemented it: the review goes to another node, the same one from any list;
        // only alone does A review its own change.
        let mut d = d;
        let built = d.add_story(&new("built"), B, 0).unwrap();
        for p in [Phase::Research, Phase::Plan, Phase::Implement] {
            step(&mut d, &built, p, 0, None);
        }
        let v = d.view();
        let other = [B, C]
            .into_iter()
            .max_by_key(|n| rendezvous(n, &built))
            .unwrap();
        for cands in [[A, B, C], [C, A, B]] {
            assert_eq!(
                first_claimer(&v, &built, Phase::Review, &cands),
                Some(other)
            );
        }
        assert_eq!(first_claimer(&v, &built, Phase::Review, &[A]), Some(A));
    }

    /// The stall of issue 11: two stories planning one file were implemented on the two
    /// sides of a partition; after the heal one review rejected and the other's merge hit
    /// a rebase conflict, so both are in rework round 1, each owning the file as a change
    /// not landed. Story 1 and 2 here; a third story, not yet implemented, shares it too.
    fn the_partition_stall() -> (Doc, Vec<String>) {
        let mut d = Doc::new([2; 16]).with_test_names();
        for n in [A, B] {
            d.put_node(
                n,
                &crate::core::model::NodeFact {
                    roles: all_roles(),
                    capacity: 2,
                    version: "test".into(),
                    incarnation: 0,
                },
            )
            .unwrap();
        }
        let mut keys = Vec::new();
        for i in 1..=3 {
            let new = NewStory {
                title: format!("story {i}"),
                files: vec!["src/lexer.txt".into()],
                ..Default::default()
            };
            keys.push(d.add_story(&new, B, 0).unwrap());
        }
        for k in &keys[..2] {
            for p in [Phase::Research, Phase::Plan, Phase::Implement] {
                step(&mut d, k, p, 0, None);
            }
        }
        step(&mut d, &keys[0], Phase::Review, 0, Some(Verdict::Reject));
        step(&mut d, &keys[1], Phase::Review, 0, Some(Verdict::Approve));
        step(&mut d, &keys[1], Phase::Merge, 0, Some(Verdict::Reject));
        step(&mut d, &keys[2], Phase::Research, 0, None);
        step(&mut d, &keys[2], Phase::Plan, 0, None);
        (d, keys)
    }

    fn ranked(d: &mut Doc, me: &str) -> Vec<(String, Phase, u32)> {
        let v = d.view();
        let c = v.claims();
        rank(
            &v,
            &c,
            me,
            &all_roles(),
            8,
            &CoChange::default(),
            false,
            None,
            |_| true,
        )
        .into_iter()
        .map(|w| (w.story, w.phase, w.round))
        .collect()
    }

    #[test]
    fn two_unlanded_changes_to_one_file_do_not_wait_for_each_other() {
        let (mut d, keys) = the_partition_stall();
        let v = d.view();
        for k in &keys[..2] {
            assert_eq!(v.stories[k.as_str()].next_phase, Some(Phase::Rework));
            assert_eq!(v.stories[k.as_str()].round, 1);
        }
        // On every node: the first change in the order (story 1) reworks; story 2 and the
        // new story 3 wait for it.
        for me in [A, B] {
            let work = ranked(&mut d, me);
            assert_eq!(work, vec![(keys[0].clone(), Phase::Rework, 1)], "{me}");
        }
        let c = v.claims();
        let w2 = waiting(&v, &c, &keys[1]).unwrap();
        assert_eq!(
            w2.to_string(),
            "waits for src/lexer.txt, owned by S-0001 (changed, not landed), which is ready for rework round 1"
        );
        let w3 = waiting(&v, &c, &keys[2]).unwrap();
        assert!(
            matches!(&w3, Waiting::FileOwned { owner, .. } if owner == "S-0001"),
            "{w3}"
        );
        assert_eq!(
            waiting(&v, &c, &keys[0]),
            Some(Waiting::Ready {
                phase: Phase::Rework,
                round: 1
            })
        );
    }

    #[test]
    fn once_the_first_change_lands_the_next_in_order_reworks_and_new_changes_still_wait() {
        let (mut d, keys) = the_partition_stall();
        step(&mut d, &keys[0], Phase::Rework, 1, None);
        // Story 1 in review: it still owns the file; story 2 still waits (not a cycle:
        // story 1 waits for nothing).
        assert!(ranked(&mut d, A)
            .iter()
            .all(|(k, p, _)| !(k == &keys[1] && *p == Phase::Rework)));
        step(&mut d, &keys[0], Phase::Review, 1, Some(Verdict::Approve));
        step(&mut d, &keys[0], Phase::Merge, 1, Some(Verdict::Approve));
        let work = ranked(&mut d, A);
        assert_eq!(work, vec![(keys[1].clone(), Phase::Rework, 1)]);
        // Story 3 (no change yet) waits for story 2, the remaining change to its file.
        let v = d.view();
        let w3 = waiting(&v, &v.claims(), &keys[2]).unwrap();
        assert!(
            matches!(&w3, Waiting::FileOwned { owner, .. } if owner == "S-0002"),
            "{w3}"
        );
        assert_eq!(waiting(&v, &v.claims(), &keys[0]), Some(Waiting::Merged));
    }

    #[test]
    fn a_higher_priority_change_goes_first_whatever_its_number() {
        let mut d = Doc::new([3; 16]).with_test_names();
        let mut keys = Vec::new();
        for (i, prio) in [(1, 100), (2, 10)] {
            let new = NewStory {
                title: format!("story {i}"),
                priority: Some(prio),
                files: vec!["src/a.txt".into(), format!("src/only{i}.txt")],
                ..Default::default()
            };
            keys.push(d.add_story(&new, B, 0).unwrap());
        }
        for k in &keys {
            for p in [Phase::Research, Phase::Plan, Phase::Implement] {
                step(&mut d, k, p, 0, None);
            }
            step(&mut d, k, Phase::Review, 0, Some(Verdict::Reject));
        }
        assert_eq!(ranked(&mut d, A), vec![(keys[1].clone(), Phase::Rework, 1)]);
    }

    #[test]
    fn merges_on_a_remote_origin_take_turns_through_the_gate() {
        let mut d = Doc::new([5; 16]).with_test_names();
        let mut keys = Vec::new();
        for i in 1..=2 {
            let new = NewStory {
                title: format!("story {i}"),
                ..Default::default()
            };
            let k = d.add_story(&new, B, 0).unwrap();
            for p in [Phase::Research, Phase::Plan, Phase::Implement] {
                step(&mut d, &k, p, 0, None);
            }
            step(&mut d, &k, Phase::Review, 0, Some(Verdict::Approve));
            keys.push(k);
        }
        let gate = Resource::gate("ssh://git@h/r.git", "main").unwrap();
        let merges = |d: &mut Doc, gate: Option<&Resource>| {
            let v = d.view();
            let c = v.claims();
            let work = rank(
                &v,
                &c,
                A,
                &all_roles(),
                1,
                &CoChange::default(),
                false,
                gate,
                |r| c.winner(r).is_none(),
            );
            work.into_iter()
                .map(|w| (w.story, w.resources))
                .collect::<Vec<_>>()
        };
        // Free gate: both stories may merge, each claim also takes the gate.
        let free = merges(&mut d, Some(&gate));
        assert_eq!(free.len(), 2);
        assert!(free.iter().all(|(_, r)| r.contains(&gate)), "{free:?}");
        // Story 1's merge holds the gate: story 2 waits, and says for what.
        let res = Resource::story_round(&keys[0], Phase::Merge, 0).unwrap();
        d.put_claim(
            &format!("{B}-901"),
            &crate::core::lease::ClaimFact {
                resources: vec![(res, 1), (gate.clone(), 1)],
                holder: B.into(),
                ttl_ms: 1000,
                written_at_ms: 0,
                attempt: 1,
                after: None,
            },
        )
        .unwrap();
        assert!(merges(&mut d, Some(&gate)).is_empty());
        let v = d.view();
        let w = waiting(&v, &v.claims(), &keys[1]).unwrap();
        assert_eq!(
            w,
            Waiting::Gate {
                story: "S-0001".into(),
                node: B.into()
            }
        );
        assert!(w.behind_work() && w.is_open());
        // A local origin takes no gate in the document: story 2 may merge beside it.
        let local = merges(&mut d, None);
        assert_eq!(local.len(), 1);
        assert_eq!(local[0].1.len(), 1, "only the story resource");
    }

    #[test]
    fn a_story_waiting_shows_the_claim_or_the_dependency_it_waits_for() {
        let mut d = Doc::new([4; 16]).with_test_names();
        let first = d
            .add_story(
                &NewStory {
                    title: "first".into(),
                    ..Default::default()
                },
                B,
                0,
            )
            .unwrap();
        let second = d
            .add_story(
                &NewStory {
                    title: "second".into(),
                    depends_on: vec![first.clone()],
                    ..Default::default()
                },
                B,
                0,
            )
            .unwrap();
        let res = Resource::story_round(&first, Phase::Research, 0).unwrap();
        d.put_claim(
            &format!("{B}-902"),
            &crate::core::lease::ClaimFact {
                resources: vec![(res, 1)],
                holder: B.into(),
                ttl_ms: 1000,
                written_at_ms: 42,
                attempt: 1,
                after: None,
            },
        )
        .unwrap();
        let v = d.view();
        let c = v.claims();
        let w = waiting(&v, &c, &second).unwrap();
        assert_eq!(
            w,
            Waiting::Dependency {
                story: "S-0001".into(),
                then: Box::new(Waiting::Claimed {
                    node: B.into(),
                    phase: Phase::Research,
                    round: 0,
                    since_ms: 42
                })
            }
        );
        assert_eq!(
            w.to_string(),
            format!(
                "waits for dependency S-0001, which is claimed by node {B} (research, since 00:00:00 UTC)"
            )
        );
        // Along a chain, each link reads on from the last.
        let chain = Waiting::Dependency {
            story: "S-0002".into(),
            then: Box::new(w),
        };
        assert!(
            chain.to_string().starts_with(
                "waits for dependency S-0002, which waits for dependency S-0001, which is claimed"
            ),
            "{chain}"
        );
        // No node has announced any role yet.
        d.put_release(
            &format!("{B}-902"),
            &crate::core::lease::ReleaseFact {
                why: crate::core::lease::ReleaseReason::Abandoned,
                note: String::new(),
            },
            B,
        )
        .unwrap();
        let v = d.view();
        assert_eq!(
            waiting(&v, &v.claims(), &first),
            Some(Waiting::NoRole {
                phase: Phase::Research
            })
        );
    }

    #[test]
    fn a_story_with_nothing_moving_on_its_chain_is_reported_stalled_once() {
        let (mut d, keys) = the_partition_stall();
        let v = d.view();
        let c = v.claims();
        let mut watch = StallWatch::default();
        // The first look works the waits out; the next ones, on the same document, only
        // move the clocks.
        let digest = d.heads_digest();
        assert!(watch.observe(&v, &c, digest, 1_000, 5_000).is_empty());
        assert!(
            watch.observe(&v, &c, digest, 6_000, 5_000).is_empty(),
            "not past the bound"
        );
        let stalled = watch.observe(&v, &c, digest, 6_001, 5_000);
        let who: Vec<&String> = stalled.iter().map(|(k, _)| k).collect();
        assert_eq!(who, vec![&keys[0], &keys[1], &keys[2]]);
        assert!(stalled[1].1.to_string().contains("owned by S-0001"));
        assert!(
            watch.observe(&v, &c, digest, 60_000, 5_000).is_empty(),
            "once"
        );
        // Story 1 moves: it is re-armed; the others, now behind work, are not stalled.
        step(&mut d, &keys[0], Phase::Rework, 1, None);
        let res = Resource::story_round(&keys[0], Phase::Review, 1).unwrap();
        d.put_claim(
            &format!("{B}-903"),
            &crate::core::lease::ClaimFact {
                resources: vec![(res, 1)],
                holder: B.into(),
                ttl_ms: 1000,
                written_at_ms: 0,
                attempt: 1,
                after: None,
            },
        )
        .unwrap();
        let v = d.view();
        let c = v.claims();
        let digest = d.heads_digest();
        assert!(watch.observe(&v, &c, digest, 120_000, 5_000).is_empty());
    }
}
