//! `View`, the pure fold of the decoded facts: stories with display ids, status, phase
//! progress, claims, results, merges, and which result counts; knowledge relevance.

use super::command::{Assignment, CommandFact, Note, Steering, Stop};
use super::walk::block_dependents_of_blocked;
use super::*;
use crate::core::model::ThinVec;
use smol_str::SmolStr;

mod extend;
mod story;
mod update;
use extend::StoryIndex;
use story::StoryFold;

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
    for x in f
        .files
        .iter()
        .map(|f| &**f)
        .chain(f.labels.iter().map(String::as_str))
    {
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

/// Whether `key` is [`story_key`]`(number, creator)`, without building it (the fold
/// checks every story's key on every fold).
pub(super) fn names_story(key: &str, number: u32, creator: &str) -> bool {
    let Some((n, tag)) = key.split_once('@') else {
        return false;
    };
    let Some(digits) = n.strip_prefix("S-") else {
        return false;
    };
    tag == peer_tag(creator)
        && digits.len() >= 4
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits.len() == 4 || !digits.starts_with('0'))
        && digits.parse::<u32>() == Ok(number)
}

/// One story as every node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoryView {
    /// The immutable document key (`S-0042@tag`). (This, the id and the view's map key
    /// are inline, no allocation: ~10 MB at 100,000 stories.)
    pub key: SmolStr,
    /// The display id (`S-0042`, or `S-0042-tag` when two nodes allocated one number).
    pub id: SmolStr,
    pub status: StoryStatus,
    /// Display ids of the stories this one depends on (keys when not yet known).
    pub depends_on_ids: ThinVec<String>,
    /// The fact as written by its creator (shared with the document's decoded facts: a
    /// fold copies no story), but for its body: empty here, read from the document when
    /// shown ([`Doc::story_body`], [`StoryView::set_body`]).
    pub fact: Arc<StoryFact>,
    /// Phases with a counted result, in pipeline order.
    pub phases_done: ThinVec<Phase>,
    /// The phase to run next (None once merged or blocked).
    pub next_phase: Option<Phase>,
    /// The round of the next phase (0 until a review rejects or a merge needs rework).
    pub round: u32,
    /// Counted results in the order they happened: keys into `View::results`.
    pub history: ThinVec<String>,
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
    /// The priority it runs at: an operator's `prioritize`, else the creator's.
    pub priority: u32,
    /// Its next phase waits for an attention item to be approved or dismissed.
    #[serde(default)]
    pub held: bool,
    /// What most stories have none of (failures, a block, a landing, an implementer,
    /// operators' marks, notes and attention items): one pointer until a story has any
    /// (inline it took 112 of a story view's 224 bytes). Serialized flat, as fields of
    /// the story.
    #[serde(flatten)]
    pub more: More,
    /// What its jobs used, and what counts against its limit: none until a job of it
    /// reserved or reported something (boxed: most stories of a large backlog have not
    /// run, and inline it took 40 of a story view's 256 bytes). Read through
    /// [`StoryView::usage`] and [`StoryView::charged_micro_usd`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend: Option<Box<StorySpend>>,
}

/// The parts of a story view most stories have none of ([`StoryView::more`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoryMore {
    /// Why earlier attempts at the next phase failed, oldest first.
    pub failures: ThinVec<String>,
    /// Why a human is needed, when blocked.
    pub blocked_reason: Option<String>,
    /// The counted landing, once merged. (Boxed: kept for every landed story.)
    pub merged: Option<Box<MergeFact>>,
    /// Who implemented it (the counted implement result's holder): never its reviewer.
    pub implementer: Option<String>,
    /// An operator paused it: no new phase starts (running work finishes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Box<Stop>>,
    /// An operator cancelled it (status `cancelled` unless it had landed already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<Box<Stop>>,
    /// An operator handed it to one node or role (review still runs elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned: Option<Box<Assignment>>,
    /// Operators' notes for its later jobs: context, and the changes they requested.
    #[serde(default, skip_serializing_if = "ThinVec::is_empty")]
    pub notes: ThinVec<Note>,
    /// What needs a human about it now, oldest first.
    #[serde(default, skip_serializing_if = "ThinVec::is_empty")]
    pub attention: ThinVec<Attention>,
    /// The step (phase, round) an `unblock` grants more attempts at, when blocked by its
    /// own limits (not by a dependency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_step: Option<(Phase, u32)>,
}

/// None of it, for a story that has none ([`More`]'s deref).
static NO_MORE: StoryMore = StoryMore {
    failures: ThinVec::new(),
    blocked_reason: None,
    merged: None,
    implementer: None,
    paused: None,
    cancelled: None,
    assigned: None,
    notes: ThinVec::new(),
    attention: ThinVec::new(),
    blocked_step: None,
};

/// A story's [`StoryMore`], allocated only once it has any: reads see an empty one,
/// writes allocate it. Equal when the contents are equal (an emptied one equals none, so
/// a fold and an update agree).
#[derive(Clone, Default)]
pub struct More(Option<Box<StoryMore>>);

impl More {
    /// `more`, kept only when it holds anything.
    pub fn new(more: StoryMore) -> More {
        More((more != NO_MORE).then(|| Box::new(more)))
    }
}

impl std::ops::Deref for More {
    type Target = StoryMore;
    fn deref(&self) -> &StoryMore {
        self.0.as_deref().unwrap_or(&NO_MORE)
    }
}

impl std::ops::DerefMut for More {
    fn deref_mut(&mut self) -> &mut StoryMore {
        self.0.get_or_insert_with(Box::default)
    }
}

impl PartialEq for More {
    fn eq(&self, other: &More) -> bool {
        **self == **other
    }
}

impl Eq for More {}

impl std::fmt::Debug for More {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl Serialize for More {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for More {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<More, D::Error> {
        StoryMore::deserialize(d).map(More::new)
    }
}

/// What a story's jobs used and what counts against its limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorySpend {
    pub usage: Usage,
    /// Usage, and the reservations of jobs not yet booked, in micro-USD.
    pub charged_micro_usd: u64,
}

impl StoryView {
    /// What its jobs used (zero until one reported).
    pub fn usage(&self) -> Usage {
        self.spend.as_ref().map(|s| s.usage).unwrap_or_default()
    }

    /// What counts against its limit, in micro-USD: usage, and reservations of jobs not
    /// yet booked.
    pub fn charged_micro_usd(&self) -> u64 {
        self.spend.as_ref().map_or(0, |s| s.charged_micro_usd)
    }

    /// Sets what its jobs used and what counts against its limit (nothing kept for
    /// zeros, so a fold and an update hold the same).
    pub fn set_spend(&mut self, usage: Usage, charged_micro_usd: u64) {
        self.spend = (usage != Usage::default() || charged_micro_usd != 0).then(|| {
            Box::new(StorySpend {
                usage,
                charged_micro_usd,
            })
        });
    }

    /// Gives the story its body (read with [`Doc::story_body`]: the view keeps none).
    pub fn set_body(&mut self, body: String) {
        if *body != *self.fact.body {
            Arc::make_mut(&mut self.fact).body = body.into();
        }
    }
}

/// The derived state of the mesh: identical on every node that folded the same document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct View {
    /// Stories by key. Boxed: a story's view is ~620 bytes, and a map filled in key
    /// order leaves its nodes about half full, so inline each story took ~1.2 KB of map
    /// (at 100,000 stories the view took 123 MB, boxed 72 MB).
    pub stories: BTreeMap<SmolStr, Box<StoryView>>,
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
    /// What jobs reserved and used, and what nodes asked and gave (`budget/…` facts).
    pub ledger: Ledger,
    /// Notifications sent (or refused for good), by the hash of their trigger id.
    pub notified: BTreeMap<String, crate::core::notify::NotifiedFact>,
    /// Where the mesh moves to a new epoch (`epoch/<n>/<claim>`), by `<n>/<claim>`.
    #[serde(default)]
    pub epochs: BTreeMap<String, EpochFact>,
    /// Kept with `stories`, so that a write of new stories needs no pass over them.
    #[serde(skip)]
    pub(super) story_index: StoryIndex,
    /// What this epoch inherited: stories merged before it, tokens reached (see
    /// [`Base`]); `None` in a mesh's first document.
    #[serde(skip)]
    pub(super) base: Option<Arc<Base>>,
    /// What the fold found that an update must know.
    #[serde(skip)]
    pub(super) notes: FoldNotes,
}

/// What the fold found that an update of its view must know (see `apply_changes`).
/// Bookkeeping, not content: any two are equal, so views compare by what they say.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct FoldNotes {
    /// What the fold itself counted in `malformed` (the document adds the values it
    /// refused): an update keeps it.
    pub(super) malformed: u64,
    /// Claims the fold dropped as inflated (see `drop_inflated_claims`): an update
    /// cannot tell which of them a new claim would bring back, so it leaves that to a fold.
    pub(super) inflated: u64,
}

impl PartialEq for FoldNotes {
    fn eq(&self, _: &FoldNotes) -> bool {
        true
    }
}

impl Eq for FoldNotes {}

/// Fencing tokens cannot be inflated: a claim counts only if each of its tokens is 1 or
/// follows an unbroken run of tokens 1, 2, … on that resource among the document's
/// claims. Honest nodes always claim one above the highest token they see (and what they
/// see passed this rule), so their claims always do; a claim that jumps ahead (token
/// `u64::MAX`, say) is dropped and counted, and reaching token `t` takes `t` signed
/// claims, which the document's caps bound. Returns how many were dropped.
///
/// In an epoch with a [`Base`], every token up to a resource's floor was reached (in the
/// epoch the floor was left behind by), so the run goes on from it; a claim naming a
/// retired story is dropped too, but the tokens it carries are reached all the same (it
/// was written before the cut and heard after it: in the old epoch it counted, and the
/// claims above it on its files count here as they did there).
fn drop_inflated_claims(claims: &mut BTreeMap<String, ClaimFact>, base: Option<&Base>) -> u64 {
    let before = claims.len();
    let floor = |r: &Resource| base.map_or(0, |b| b.floor(r));
    let mut tokens: BTreeMap<&Resource, BTreeSet<u64>> = BTreeMap::new();
    for c in claims.values() {
        for (r, t) in &c.resources {
            tokens.entry(r).or_default().insert(*t);
        }
    }
    // The highest token of each resource reached without a gap from 1 (or its floor).
    let reach: BTreeMap<Resource, u64> = tokens
        .into_iter()
        .map(|(r, ts)| {
            let from = floor(r);
            let mut top = from;
            for t in ts.into_iter().filter(|t| *t > from) {
                if t != top.saturating_add(1) {
                    break;
                }
                top = t;
            }
            (r.clone(), top)
        })
        .collect();
    claims.retain(|_, c| {
        !base.is_some_and(|b| b.names_retired(c))
            && c.resources
                .iter()
                .all(|(r, t)| reach.get(r).is_some_and(|top| t <= top))
    });
    (before - claims.len()) as u64
}

impl View {
    /// The view and the claim fold it was derived with (built once, used by both).
    pub(super) fn fold(all: Facts<'_>, base: Option<&Arc<Base>>) -> (View, Claims) {
        let (mut view, facts) = View::sort_facts(all);
        view.base = base.cloned();
        let base = base.map(|b| &**b);
        view.notes.inflated = drop_inflated_claims(&mut view.claims, base);
        view.malformed += view.notes.inflated;
        view.notes.malformed = view.malformed;
        let claims = view.claims();
        let counted = counted_results(view.results.iter(), &claims);
        let mut merged = counted_merges(view.merges.values(), &claims);
        for (key, fact) in &facts {
            if let Some(m) = crate::core::imported::Imported::landing(key, fact) {
                merged.entry(key.clone()).or_insert(m);
            }
        }
        let ids = display_ids(&facts, base);
        let key_to_id: BTreeMap<&str, &str> = facts
            .iter()
            .zip(&ids)
            .map(|((k, _), id)| (k.as_str(), id.as_str()))
            .collect();
        if let Some(b) = base {
            view.story_index.max_number = b.max_number();
        }
        let index = ClaimIndex::new(&claims);
        let fold = StoryFold {
            claims: &claims,
            releases: &view.releases,
            counted: &counted,
            merged: &merged,
            index: &index,
            key_to_id: &key_to_id,
            steering: &view.steering,
            base,
        };
        let story_index = &mut view.story_index;
        // Collected, not inserted one by one: a map built from sorted keys fills its
        // nodes, one filled in key order leaves them half empty (~3 MB at 100,000).
        let mut stories: BTreeMap<SmolStr, Box<StoryView>> = facts
            .iter()
            .zip(&ids)
            .map(|((key, fact), id)| {
                story_index.add(key, fact);
                (
                    SmolStr::from(key.as_str()),
                    Box::new(fold.story(key, fact, id)),
                )
            })
            .collect();
        block_dependents_of_blocked(&mut stories, &index.active_stories);
        super::budget::hold_over_limit(&mut stories, &view.ledger, &view.steering);
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
    fn sort_facts(all: Facts<'_>) -> (View, Vec<(String, Arc<StoryFact>)>) {
        let mut view = View::default();
        let mut facts: Vec<(String, Arc<StoryFact>)> = Vec::new();
        let mut commands: Vec<(&str, &CommandFact)> = Vec::new();
        for (key, fact) in all.iter() {
            match fact {
                Fact::Story(f) => match key.strip_prefix(STORY_PREFIX) {
                    Some(skey) if names_story(skey, f.number, &f.created_by) => {
                        facts.push((skey.to_string(), f.clone()))
                    }
                    _ => view.malformed += 1,
                },
                Fact::Node(f) => {
                    let peer = key.strip_prefix(NODE_PREFIX).unwrap_or(key);
                    view.nodes.insert(peer.to_string(), (**f).clone());
                }
                Fact::Claim(f) => {
                    let id = key.strip_prefix(CLAIM_PREFIX).unwrap_or(key);
                    view.claims.insert(id.to_string(), (**f).clone());
                }
                Fact::Release(f) => {
                    let id = key.strip_prefix(RELEASE_PREFIX).unwrap_or(key);
                    view.releases.insert(id.to_string(), (**f).clone());
                }
                Fact::Result(f) => {
                    view.results.insert(key.to_string(), f.clone());
                }
                Fact::Knowledge(f) => {
                    let id = key.strip_prefix(KNOWLEDGE_PREFIX).unwrap_or(key);
                    view.knowledge.insert(id.to_string(), (**f).clone());
                }
                Fact::Merge(f) => {
                    view.merges.insert(key.to_string(), (**f).clone());
                }
                // The document folds the roster itself (it needs the changes).
                Fact::Admit(_) | Fact::Revoke(_) => {}
                Fact::Command(f) => commands.push((key, f)),
                Fact::Budget(f) => view.ledger.add(f),
                Fact::Notified(f) => {
                    let hash = key.strip_prefix(NOTIFIED_PREFIX).unwrap_or(key);
                    view.notified.insert(hash.to_string(), (**f).clone());
                }
                Fact::Epoch(f) => {
                    let id = key.strip_prefix(EPOCH_PREFIX).unwrap_or(key);
                    view.epochs.insert(id.to_string(), (**f).clone());
                }
            }
        }
        view.steering = Steering::fold(commands.into_iter());
        (view, facts)
    }

    /// The claim fold (winners, tokens) of this view.
    pub fn claims(&self) -> Claims {
        let claims = Claims::new(&self.claims, &self.releases);
        match &self.base {
            Some(b) if !b.floors.is_empty() => claims.with_floors(b.floors.clone()),
            _ => claims,
        }
    }

    /// What this epoch inherited from the ones before it (`None` in a mesh's first
    /// document): the stories merged before it are there, not in `stories`.
    pub fn base(&self) -> Option<&Base> {
        self.base.as_deref()
    }

    /// Whether story `key` landed: merged here, or retired by an earlier epoch.
    pub fn landed(&self, key: &str) -> bool {
        self.stories
            .get(key)
            .is_some_and(|s| s.more.merged.is_some())
            || self.base().is_some_and(|b| b.retired.contains_key(key))
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
        self.story_index.max_number
    }

    /// Finds a story by display id (`S-0042`, `s-42`) or by key.
    pub fn resolve(&self, id: &str) -> Result<&StoryView, InputError> {
        if let Some(s) = self.stories.get(id) {
            return Ok(s);
        }
        let wanted = normalize_display_id(id);
        let found: Vec<&StoryView> = self
            .stories
            .values()
            .map(|s| &**s)
            .filter(|s| s.id == wanted)
            .collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(InputError::UnknownStory(id.to_string())),
            _ => Err(InputError::AmbiguousStory(id.to_string())),
        }
    }

    /// The key of the story an earlier epoch retired under `id` (its key or display
    /// id), if one did: it is read from the archive (`story show`).
    pub fn retired_key(&self, id: &str) -> Option<&str> {
        let base = self.base()?;
        if let Some((k, _)) = base.retired.get_key_value(id) {
            return Some(k);
        }
        let wanted = normalize_display_id(id);
        let mut found = base.retired.iter().filter(|(_, r)| r.id == wanted);
        match (found.next(), found.next()) {
            (Some((k, _)), None) => Some(k),
            _ => None,
        }
    }

    /// Stories in backlog order: priority (lower first), then age, then id.
    pub fn stories_ordered(&self) -> Vec<&StoryView> {
        let mut v: Vec<&StoryView> = self.stories.values().map(|s| &**s).collect();
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
            .flat_map(|s| s.more.attention.iter().map(move |a| (&**s, a)))
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
pub(super) type Counted<'a> = BTreeMap<(String, Phase, u32), (&'a String, &'a ResultFact)>;

/// Step 2 of the fold, fencing in the view: a result counts only if written under the
/// top claim of its resource (story, phase, round), whatever arrived first.
fn counted_results<'a>(
    results: impl Iterator<Item = (&'a String, &'a Arc<ResultFact>)>,
    claims: &Claims,
) -> Counted<'a> {
    let mut counted: Counted<'a> = BTreeMap::new();
    for (rkey, r) in results {
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
fn counted_merges<'a>(
    merges: impl Iterator<Item = &'a MergeFact>,
    claims: &Claims,
) -> BTreeMap<String, MergeFact> {
    let mut merged: BTreeMap<String, MergeFact> = BTreeMap::new();
    for m in merges {
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
/// the others carry their creator's tag (and all do when a story retired in an earlier
/// epoch holds the short id). One id per story fact, in order.
fn display_ids(facts: &[(String, Arc<StoryFact>)], base: Option<&Base>) -> Vec<String> {
    // One sort by (number, creator, key): each number's group is a run, its first the
    // short id (a map of groups cost an allocation per story on every fold).
    let mut order: Vec<usize> = (0..facts.len()).collect();
    order.sort_by(|&a, &b| {
        let (fa, fb) = (&facts[a], &facts[b]);
        (fa.1.number, &fa.1.created_by, &fa.0).cmp(&(fb.1.number, &fb.1.created_by, &fb.0))
    });
    let mut ids = vec![String::new(); facts.len()];
    let mut prev = None;
    for i in order {
        let f = &facts[i].1;
        ids[i] = if prev == Some(f.number) || base.is_some_and(|b| b.holds_short_id(f.number)) {
            format!("S-{:04}-{}", f.number, peer_tag(&f.created_by))
        } else {
            format!("S-{:04}", f.number)
        };
        prev = Some(f.number);
    }
    ids
}

/// Step 5 of the fold: indexes over the claims, built once (a per-story scan made the
/// fold quadratic).
#[derive(Default)]
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

/// `s-42` → `S-0042`; anything else is returned upper-cased as given.
pub(in crate::core::state) fn normalize_display_id(id: &str) -> String {
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
