//! The replicated document and its typed reads and writes. Owns the automerge document;
//! derives [`View`], a pure and deterministic fold of it.
//!
//! Invariants:
//! - Facts, not status: every fact is a JSON value written once under a root key that
//!   exactly one writer can create (`story/<number>@<creator tag>`, `node/<peer>`), so
//!   no two nodes ever race to create the same container.
//! - Heartbeats and progress never enter the document.
//! - Never reads a clock and never does I/O: callers pass the time and persist the bytes
//!   this module hands back.

use crate::core::lease::{ClaimFact, Claims, ReleaseFact, ReleaseReason, Resource};
use crate::core::model::{
    InputError, KnowledgeFact, KnowledgeKind, MergeFact, NewStory, NodeFact, Phase, ResultFact,
    StoryFact, StoryStatus, Verdict, MAX_ATTEMPTS, MAX_TAKEOVERS,
};
use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjId, PatchAction, ReadDoc, ScalarValue, Value, ROOT};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

pub use automerge::ChangeHash;

const STORY_PREFIX: &str = "story/";
const NODE_PREFIX: &str = "node/";
const CLAIM_PREFIX: &str = "claim/";
const RELEASE_PREFIX: &str = "release/";
const RESULT_PREFIX: &str = "result/";
const MERGE_PREFIX: &str = "merge/";
const KNOWLEDGE_PREFIX: &str = "knowledge/";
/// Longest knowledge entry, in bytes.
pub const MAX_KNOWLEDGE_BYTES: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("document data is corrupt: {0}")]
    Corrupt(String),
    #[error("sync message rejected: {0}")]
    Sync(String),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("this node is a passive observer and never writes")]
    Passive,
}

/// Per-peer automerge sync state (one for each direction of a peer pair).
pub type SyncState = sync::State;

/// Resets a sync state for a new session: keeps what is known of the peer's heads but
/// forgets in-flight bookkeeping, so a fresh session always makes progress.
pub fn reset_sync_state(state: &SyncState) -> SyncState {
    SyncState::decode(&state.encode()).unwrap_or_default()
}

/// The short tag of a peer id used in story keys: its last six characters.
pub fn peer_tag(peer: &str) -> &str {
    let n = peer.len();
    &peer[n.saturating_sub(6)..]
}

/// The replicated document.
///
/// Beside the automerge document it keeps every root fact decoded ([`Fact`]), updated
/// from automerge's patches after each write or sync: the view is rebuilt from decoded
/// facts, never by re-reading and re-parsing the whole document (which cost a quarter
/// of an 8-node mesh's CPU).
pub struct Doc {
    inner: AutoCommit,
    facts: BTreeMap<String, Fact>,
    /// This actor's recent changes (oldest first), for eager pushes to peers.
    local_log: VecDeque<LocalChange>,
}

/// How many of its own recent changes a document keeps for eager pushes.
const LOCAL_LOG_LEN: usize = 512;

/// One change this node made, as pushed to peers.
#[derive(Debug, Clone)]
struct LocalChange {
    seq: u64,
    hash: ChangeHash,
    bytes: Vec<u8>,
}

/// One root fact, decoded from its JSON. Keys outside the known prefixes are not kept.
#[derive(Debug, Clone, PartialEq)]
enum Fact {
    Story(StoryFact),
    Node(NodeFact),
    Claim(ClaimFact),
    Release(ReleaseFact),
    Result(Arc<ResultFact>),
    Merge(MergeFact),
    Knowledge(KnowledgeFact),
    /// Under a known prefix but not decodable (a newer or buggy peer): counted, skipped.
    Malformed,
}

impl Fact {
    /// Decodes the value at a root key; `None` for keys this version does not know.
    fn decode(key: &str, value: &Value<'_>) -> Option<Fact> {
        fn json<T: serde::de::DeserializeOwned>(value: &Value<'_>) -> Option<T> {
            match value {
                Value::Scalar(s) => match s.as_ref() {
                    ScalarValue::Str(text) => serde_json::from_str(text).ok(),
                    _ => None,
                },
                _ => None,
            }
        }
        fn or_malformed<T>(f: Option<T>, wrap: fn(T) -> Fact) -> Fact {
            f.map_or(Fact::Malformed, wrap)
        }
        Some(if key.starts_with(STORY_PREFIX) {
            or_malformed(json(value), Fact::Story)
        } else if key.starts_with(NODE_PREFIX) {
            or_malformed(json(value), Fact::Node)
        } else if key.starts_with(CLAIM_PREFIX) {
            or_malformed(json(value), Fact::Claim)
        } else if key.starts_with(RELEASE_PREFIX) {
            or_malformed(json(value), Fact::Release)
        } else if key.starts_with(RESULT_PREFIX) {
            or_malformed(json(value).map(Arc::new), Fact::Result)
        } else if key.starts_with(KNOWLEDGE_PREFIX) {
            or_malformed(json(value), Fact::Knowledge)
        } else if key.starts_with(MERGE_PREFIX) {
            or_malformed(json(value), Fact::Merge)
        } else {
            return None;
        })
    }
}

impl std::fmt::Debug for Doc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doc").finish_non_exhaustive()
    }
}

impl Doc {
    /// An empty document with a fresh actor id. Every process start uses a new actor, so
    /// a node that lost unflushed changes in a crash can never reuse a sequence number.
    pub fn new(actor: [u8; 16]) -> Doc {
        Doc {
            inner: AutoCommit::new().with_actor(ActorId::from(actor.as_slice())),
            facts: BTreeMap::new(),
            local_log: VecDeque::new(),
        }
    }

    /// The hash of this actor's latest change, if it made one.
    pub fn last_local_change(&self) -> Option<ChangeHash> {
        self.local_log.back().map(|c| c.hash)
    }

    /// This actor's changes with a sequence number above `after`, oldest first, and the
    /// highest sequence number among them. Empty when they would exceed `max_bytes` or
    /// the log no longer reaches back to `after` (the sync protocol carries them then).
    pub fn local_changes_after(&self, after: u64, max_bytes: usize) -> (Vec<Vec<u8>>, u64) {
        let Some(first) = self.local_log.front() else {
            return (Vec::new(), after);
        };
        if first.seq > after.saturating_add(1) {
            return (Vec::new(), after);
        }
        let mut out = Vec::new();
        let (mut size, mut upto) = (0, after);
        for c in self.local_log.iter().filter(|c| c.seq > after) {
            size += c.bytes.len();
            if size > max_bytes {
                return (Vec::new(), after);
            }
            out.push(c.bytes.clone());
            upto = c.seq;
        }
        (out, upto)
    }

    /// Applies changes a peer pushed outside a sync exchange (changes whose dependencies
    /// are missing wait in automerge's queue until the sync protocol brings them).
    /// Returns whether the document changed.
    pub fn apply_pushed(&mut self, changes: Vec<Vec<u8>>) -> Result<bool, StateError> {
        let mut decoded = Vec::with_capacity(changes.len());
        for c in changes {
            decoded.push(
                automerge::Change::from_bytes(c)
                    .map_err(|e| StateError::Sync(format!("pushed change: {e}")))?,
            );
        }
        let before = self.inner.get_heads();
        self.inner
            .apply_changes(decoded)
            .map_err(|e| StateError::Sync(format!("pushed change: {e}")))?;
        let changed = self.inner.get_heads() != before;
        if changed {
            self.refresh();
        }
        Ok(changed)
    }

    /// Whether a peer whose document had the heads `their_heads` had `change`, and this
    /// document has everything that peer had: all of its heads are known here and
    /// `change` is among their ancestors.
    pub fn peer_has(&mut self, their_heads: &[ChangeHash], change: &ChangeHash) -> bool {
        if their_heads.is_empty() {
            return false;
        }
        for h in their_heads {
            if self.inner.get_change_meta_by_hash(h).is_none() {
                return false;
            }
        }
        if their_heads.contains(change) {
            return true;
        }
        !self
            .inner
            .get_changes_meta(their_heads)
            .iter()
            .any(|m| m.hash == *change)
    }

    /// Records the change a local write just committed.
    fn log_local_change(&mut self) {
        let Some(c) = self.inner.get_last_local_change() else {
            return;
        };
        if self.local_log.back().is_some_and(|l| l.seq >= c.seq()) {
            return;
        }
        self.local_log.push_back(LocalChange {
            seq: c.seq(),
            hash: c.hash(),
            bytes: c.raw_bytes().to_vec(),
        });
        while self.local_log.len() > LOCAL_LOG_LEN {
            self.local_log.pop_front();
        }
    }

    /// Brings the decoded facts up to date with the document: applies the patches of
    /// every change since the last call (the first call sees the whole state).
    fn refresh(&mut self) {
        for patch in self.inner.diff_incremental() {
            if patch.obj != ObjId::Root {
                continue;
            }
            match patch.action {
                PatchAction::PutMap { key, value, .. } => match Fact::decode(&key, &value.0) {
                    Some(f) => {
                        self.facts.insert(key, f);
                    }
                    None => {
                        self.facts.remove(&key);
                    }
                },
                PatchAction::DeleteMap { key } => {
                    self.facts.remove(&key);
                }
                _ => {}
            }
        }
    }

    /// Loads a document from a snapshot (possibly empty) plus incremental chunks.
    pub fn load(actor: [u8; 16], snapshot: &[u8], chunks: &[Vec<u8>]) -> Result<Doc, StateError> {
        let mut inner = if snapshot.is_empty() {
            AutoCommit::new()
        } else {
            AutoCommit::load(snapshot).map_err(|e| StateError::Corrupt(e.to_string()))?
        };
        for c in chunks {
            inner
                .load_incremental(c)
                .map_err(|e| StateError::Corrupt(e.to_string()))?;
        }
        inner.set_actor(ActorId::from(actor.as_slice()));
        let mut doc = Doc {
            inner,
            facts: BTreeMap::new(),
            local_log: VecDeque::new(),
        };
        // The first refresh sees the whole loaded state; later ones only what changed.
        doc.refresh();
        Ok(doc)
    }

    /// Bytes of every change since the last save (empty when nothing changed).
    pub fn save_incremental(&mut self) -> Vec<u8> {
        self.inner.save_incremental()
    }

    /// A compacted snapshot of the whole document.
    pub fn save(&mut self) -> Vec<u8> {
        self.inner.save()
    }

    /// SHA-256 over the sorted heads: equal digests mean equal documents.
    pub fn heads_digest(&mut self) -> [u8; 32] {
        let mut heads = self.inner.get_heads();
        heads.sort();
        let mut h = Sha256::new();
        for head in &heads {
            h.update(head.as_ref());
        }
        h.finalize().into()
    }

    pub fn heads_hex(&mut self) -> Vec<String> {
        let mut heads: Vec<String> = self
            .inner
            .get_heads()
            .iter()
            .map(|h| h.to_string())
            .collect();
        heads.sort();
        heads
    }

    /// The next sync message for a peer, or `None` when that peer has everything.
    pub fn sync_generate(&mut self, state: &mut SyncState) -> Option<Vec<u8>> {
        self.inner
            .sync()
            .generate_sync_message(state)
            .map(|m| m.encode())
    }

    /// Applies a sync message from a peer. Returns whether the document changed.
    pub fn sync_receive(
        &mut self,
        state: &mut SyncState,
        bytes: &[u8],
    ) -> Result<bool, StateError> {
        let msg = sync::Message::decode(bytes).map_err(|e| StateError::Sync(e.to_string()))?;
        let before = self.inner.get_heads();
        self.inner
            .sync()
            .receive_sync_message(state, msg)
            .map_err(|e| StateError::Sync(e.to_string()))?;
        let changed = self.inner.get_heads() != before;
        if changed {
            self.refresh();
        }
        Ok(changed)
    }

    fn put_fact<T: Serialize>(&mut self, key: &str, fact: &T) {
        // Serialising our own plain structs to JSON cannot fail.
        let json = serde_json::to_string(fact).unwrap_or_default();
        // Writing a scalar at the root only fails on a corrupt op set; nothing useful to
        // do but report, which the caller sees as "nothing changed".
        if let Err(e) = self.inner.put(ROOT, key, json) {
            tracing::error!(key, error = %e, "document write failed");
        }
        self.inner.commit();
        self.log_local_change();
        self.refresh();
    }

    /// Validates and writes a new story fact. `now_ms` is the creator's wall clock,
    /// recorded for display and age ordering only.
    pub fn add_story(
        &mut self,
        new: &NewStory,
        creator: &str,
        now_ms: u64,
    ) -> Result<String, StateError> {
        let valid = new.validate()?;
        let view = self.view();
        let mut depends_on = Vec::new();
        for d in &new.depends_on {
            let key = view.resolve(d.trim())?.key.clone();
            if !depends_on.contains(&key) {
                depends_on.push(key);
            }
        }
        let number = view.max_number() + 1;
        let key = story_key(number, creator);
        let fact = StoryFact {
            number,
            created_by: creator.to_string(),
            created_at_ms: now_ms,
            title: valid.title,
            body: valid.body,
            priority: valid.priority,
            depends_on,
            files: valid.files,
            labels: valid.labels,
            source: "cli".into(),
        };
        self.put_fact(&format!("{STORY_PREFIX}{key}"), &fact);
        Ok(key)
    }

    /// Records this node's description, only when it differs from what the document has.
    /// Returns whether a write happened.
    pub fn put_node(&mut self, peer: &str, fact: &NodeFact) -> bool {
        let key = format!("{NODE_PREFIX}{peer}");
        if matches!(self.facts.get(&key), Some(Fact::Node(f)) if f == fact) {
            return false;
        }
        self.put_fact(&key, fact);
        true
    }

    /// Writes a claim fact. Claim ids are unique per writer, so the key has one writer.
    pub fn put_claim(&mut self, id: &str, fact: &ClaimFact) {
        self.put_fact(&format!("{CLAIM_PREFIX}{id}"), fact);
    }

    /// The holder of claim `id` as written in the document (winning or not), without
    /// folding a view.
    pub fn claim_holder(&self, id: &str) -> Option<&str> {
        match self.facts.get(&format!("{CLAIM_PREFIX}{id}")) {
            Some(Fact::Claim(c)) => Some(&c.holder),
            _ => None,
        }
    }

    /// Writes a release fact for a claim (by its holder, or by a node that took it over).
    /// Rewriting an existing release is skipped: the first reason stands.
    pub fn put_release(&mut self, id: &str, fact: &ReleaseFact) {
        let key = format!("{RELEASE_PREFIX}{id}");
        if matches!(self.facts.get(&key), Some(Fact::Release(_))) {
            return;
        }
        self.put_fact(&key, fact);
    }

    /// Writes a phase result under its claim.
    pub fn put_result(&mut self, fact: &ResultFact) {
        let key = format!(
            "{RESULT_PREFIX}{}/{}/{}",
            fact.story,
            fact.phase.as_str(),
            fact.claim
        );
        self.put_fact(&key, fact);
    }

    /// Records a landing on main.
    pub fn put_merge(&mut self, fact: &MergeFact) {
        let key = format!("{MERGE_PREFIX}{}/{}", fact.story, fact.claim);
        self.put_fact(&key, fact);
    }

    /// Writes a knowledge entry under the hash of its kind and normalised text, so the
    /// same lesson learned twice (by any nodes) is one entry. Returns its id; an entry
    /// already present is left as first written. Over-long or empty text is refused.
    pub fn put_knowledge(&mut self, fact: &KnowledgeFact) -> Option<String> {
        let text = fact.text.trim();
        if text.is_empty() || text.len() > MAX_KNOWLEDGE_BYTES {
            return None;
        }
        let id = knowledge_id(fact.kind, text);
        let key = format!("{KNOWLEDGE_PREFIX}{id}");
        if self.inner.get(ROOT, key.as_str()).ok().flatten().is_none() {
            let mut f = fact.clone();
            f.text = text.to_string();
            self.put_fact(&key, &f);
        }
        Some(id)
    }

    /// The current view: a pure function of the document.
    pub fn view(&self) -> View {
        View::fold(&self.facts).0
    }

    /// The current view and its claim fold (what `view().claims()` gives, without
    /// folding the claims twice).
    pub fn view_and_claims(&self) -> (View, Claims) {
        View::fold(&self.facts)
    }
}

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
}

/// The pipeline as a walk: research, plan, implement, then rounds of [rework,] review,
/// merge. A rejecting review, or a merge that hit a rebase conflict or failing tests
/// (verdict reject), opens the next round with a rework; after [`MAX_REWORKS`] rounds the
/// story is blocked for a human with the last reason.
fn walk_story(key: &str, counted: &BTreeMap<(String, Phase, u32), (&String, &ResultFact)>) -> Walk {
    let mut w = Walk {
        steps: Vec::new(),
        next: None,
        round: 0,
        blocked: None,
    };
    let get = |p: Phase, r: u32| counted.get(&(key.to_string(), p, r)).copied();
    for p in [Phase::Research, Phase::Plan, Phase::Implement] {
        match get(p, 0) {
            Some((k, _)) => w.steps.push((p, 0, k.clone())),
            None => {
                w.next = Some((p, 0));
                return w;
            }
        }
    }
    let mut r = 0;
    loop {
        w.round = r;
        let mut seq = vec![Phase::Review, Phase::Merge];
        if r > 0 {
            seq.insert(0, Phase::Rework);
        }
        let mut rejected = None;
        for p in seq {
            match get(p, r) {
                None => {
                    w.next = Some((p, r));
                    return w;
                }
                Some((k, f)) => {
                    w.steps.push((p, r, k.clone()));
                    if matches!(p, Phase::Review | Phase::Merge)
                        && f.handoff.verdict == Some(Verdict::Reject)
                    {
                        rejected = Some((p, f.handoff.summary.clone()));
                        break;
                    }
                }
            }
        }
        match rejected {
            // A merge result that did not reject: the story landed (or is landing).
            None => return w,
            Some((p, why)) => {
                if r + 1 > MAX_REWORKS {
                    let what = if p == Phase::Review {
                        "review rejected the change"
                    } else {
                        "the merge gate refused the change"
                    };
                    w.blocked = Some(format!("{what} {} times; last: {why}", r + 1));
                    return w;
                }
                r += 1;
            }
        }
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
}

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
    /// Facts that could not be decoded (from a newer or buggy peer); skipped, counted.
    pub malformed: u64,
}

impl View {
    /// The view and the claim fold it was derived with (built once, used by both).
    fn fold(all: &BTreeMap<String, Fact>) -> (View, Claims) {
        let mut view = View::default();
        let mut facts: Vec<(String, StoryFact)> = Vec::new();
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
                Fact::Malformed => view.malformed += 1,
            }
        }
        let claims = Claims::new(&view.claims, &view.releases);
        // Fencing in the view: a result (or merge) counts only if written under the top
        // claim of its resource (story, phase, round), whatever arrived first.
        let mut counted: BTreeMap<(String, Phase, u32), (&String, &ResultFact)> = BTreeMap::new();
        for (rkey, r) in view.results.iter() {
            let Ok(res) = Resource::story_round(&r.story, r.phase, r.round) else {
                continue;
            };
            if claims.top(&res) == Some(r.claim.as_str())
                && claims.token_of(&r.claim, &res) == Some(r.token)
            {
                counted.insert((r.story.clone(), r.phase, r.round), (rkey, r));
            }
        }
        let mut merged: BTreeMap<String, MergeFact> = BTreeMap::new();
        for m in view.merges.values() {
            let Ok(res) = Resource::story_round(&m.story, Phase::Merge, m.round) else {
                continue;
            };
            if claims.top(&res) == Some(m.claim.as_str()) {
                merged.insert(m.story.clone(), m.clone());
            }
        }
        // Display ids: a number allocated once reads `S-0042`; when nodes allocated the
        // same number concurrently, the lowest creator keeps the short id and the others
        // carry their creator's tag.
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
        let key_to_id: BTreeMap<&str, &str> = facts
            .iter()
            .zip(&ids)
            .map(|((k, _), id)| (k.as_str(), id.as_str()))
            .collect();
        // Indexes over the claims, built once (a per-story scan made the fold quadratic).
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
        let active_stories: std::collections::BTreeSet<&str> = claims
            .active()
            .flat_map(|(_, c)| c.resources.iter().filter_map(|(r, _)| r.story_key()))
            .collect();
        let mut stories = BTreeMap::new();
        for ((key, fact), id) in facts.iter().zip(&ids) {
            let deps_done = fact.depends_on.iter().all(|d| merged.contains_key(d));
            let walk = walk_story(key, &counted);
            let phases_done: Vec<Phase> = Phase::ALL
                .iter()
                .copied()
                .filter(|p| walk.steps.iter().any(|(q, _, _)| q == p))
                .collect();
            let mut next_phase = walk.next.map(|(p, _)| p);
            let round = walk.next.map_or(walk.round, |(_, r)| r);
            let mut blocked_reason = walk.blocked;
            let mut attempts = 0;
            let (mut failed_attempts, mut takeovers) = (0, 0);
            let mut failures = Vec::new();
            if let Some((p, r)) = walk.next {
                if let Ok(res) = Resource::story_round(key, p, r) {
                    // Attempts: claims that started work (not those that never settled).
                    let on_it: Vec<(&str, &ClaimFact)> = by_resource
                        .get(&res)
                        .into_iter()
                        .flatten()
                        .copied()
                        .filter(|(id, _)| {
                            !matches!(
                                claims.release_reason(id),
                                Some(ReleaseReason::Unsettled | ReleaseReason::Shutdown)
                            )
                        })
                        .collect();
                    attempts = on_it.len() as u32;
                    // Blame: the work failed, or its holder went away (the weather).
                    for (id, _) in &on_it {
                        match claims.release_reason(id) {
                            Some(r) if r.blames_work() => failed_attempts += 1,
                            Some(r) if r.blames_holder() => takeovers += 1,
                            _ => {}
                        }
                    }
                    let mut on_it_sorted = on_it.clone();
                    on_it_sorted.sort_by_key(|(_, c)| c.written_at_ms);
                    failures = on_it_sorted
                        .iter()
                        .filter_map(|(id, _)| view.releases.get(*id))
                        .filter(|r| r.why != ReleaseReason::Done)
                        .map(release_text)
                        .collect();
                    let active = claims.winner(&res).is_some();
                    if !active && blocked_reason.is_none() {
                        // The reasons of the kind that blocked, oldest first.
                        let reasons = |work: bool| {
                            let mut r: Vec<String> = on_it_sorted
                                .iter()
                                .filter_map(|(id, _)| view.releases.get(*id))
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
                        if failed_attempts >= MAX_ATTEMPTS {
                            blocked_reason = Some(format!(
                                "{p} failed {failed_attempts} attempts: {}",
                                reasons(true)
                            ));
                        } else if takeovers >= MAX_TAKEOVERS {
                            blocked_reason = Some(format!(
                                "{p} lost its holder {takeovers} times: {}",
                                reasons(false)
                            ));
                        }
                    }
                }
            }
            let is_merged = merged.get(key).cloned();
            if is_merged.is_some() {
                next_phase = None;
                blocked_reason = None;
            } else if blocked_reason.is_some() {
                next_phase = None;
            }
            let started = !phases_done.is_empty() || active_stories.contains(key.as_str());
            let status = if is_merged.is_some() {
                StoryStatus::Done
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
                .and_then(|(p, r, _)| counted.get(&(key.clone(), *p, *r)))
                .map(|(_, f)| f.holder.clone());
            let depends_on = fact
                .depends_on
                .iter()
                .map(|d| {
                    key_to_id
                        .get(d.as_str())
                        .map_or(d.clone(), |s| s.to_string())
                })
                .collect();
            stories.insert(
                key.clone(),
                StoryView {
                    key: key.clone(),
                    id: id.clone(),
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
                },
            );
        }
        // A story waiting on a blocked dependency is blocked too (it would wait forever):
        // say so, naming the dependency, until a human unblocks it.
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
                let dep = s.fact.depends_on.iter().find_map(|d| {
                    stories
                        .get(d)
                        .filter(|x| x.blocked_reason.is_some())
                        .map(|x| x.id.clone())
                });
                if let Some(dep) = dep {
                    if let Some(s) = stories.get_mut(&k) {
                        s.status = StoryStatus::Blocked;
                        s.blocked_reason = Some(format!("depends on {dep}, which is blocked"));
                        s.next_phase = None;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let counted_keys = counted
            .into_iter()
            .map(|(k, (rkey, _))| (k, rkey.clone()))
            .collect();
        view.stories = stories;
        view.counted = counted_keys;
        (view, claims)
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
            (a.fact.priority, a.fact.number, &a.id).cmp(&(b.fact.priority, b.fact.number, &b.id))
        });
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every root fact of an automerge document, decoded by a full scan (what the
    /// patch-driven facts must always equal).
    fn scan_facts(doc: &AutoCommit) -> BTreeMap<String, Fact> {
        doc.map_range(ROOT, ..)
            .filter_map(|item| {
                let key = item.key.to_string();
                Fact::decode(&key, &Value::from(item.value)).map(|f| (key, f))
            })
            .collect()
    }

    const A: &str = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaaaa";
    const B: &str = "12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBbbbbbb";

    fn story(title: &str) -> NewStory {
        NewStory {
            title: title.into(),
            ..Default::default()
        }
    }

    /// The decoded facts follow the document through patches exactly as a full scan
    /// would see it: local writes, concurrent writes to one key (automerge picks the
    /// same winner everywhere), malformed values, syncs and reloads.
    #[test]
    fn decoded_facts_track_the_document() {
        fn check(d: &Doc) {
            assert_eq!(
                d.facts,
                scan_facts(&d.inner),
                "facts diverged from the document"
            );
        }
        let mut docs = [Doc::new([1; 16]), Doc::new([2; 16]), Doc::new([3; 16])];
        let node = |n: u32| NodeFact {
            roles: vec![format!("r{n}")],
            capacity: n,
            version: String::new(),
        };
        let mut step = 0u32;
        for round in 0..6u32 {
            for (i, d) in docs.iter_mut().enumerate() {
                step += 1;
                // The same key from every doc in the same round: a real conflict.
                d.put_fact(&format!("{NODE_PREFIX}shared{round}"), &node(step));
                d.put_fact(&format!("{NODE_PREFIX}own{i}-{round}"), &node(step));
                d.put_fact(&format!("{CLAIM_PREFIX}bad{round}"), &"not a claim");
                d.put_fact(&format!("other/{round}"), &step);
                check(d);
            }
            let (a, rest) = docs.split_at_mut(1);
            let (b, c) = rest.split_at_mut(1);
            sync_pair(&mut a[0], &mut b[0]);
            check(&a[0]);
            check(&b[0]);
            if round % 2 == 1 {
                sync_pair(&mut b[0], &mut c[0]);
                sync_pair(&mut a[0], &mut c[0]);
            }
            for d in docs.iter() {
                check(d);
            }
        }
        let views: Vec<View> = docs.iter().map(Doc::view).collect();
        assert_eq!(views[0], views[1]);
        assert_eq!(views[0], views[2]);
        assert!(views[0].malformed >= 6, "malformed claims are counted");
        let snapshot = docs[0].save();
        let mut loaded = Doc::load([9; 16], &snapshot, &[]).unwrap();
        check(&loaded);
        assert_eq!(loaded.view(), views[0]);
        loaded.put_fact(&format!("{NODE_PREFIX}after-load"), &node(99));
        check(&loaded);
    }

    fn sync_pair(a: &mut Doc, b: &mut Doc) {
        let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
        for _ in 0..10 {
            let m1 = a.sync_generate(&mut sa);
            if let Some(m) = &m1 {
                b.sync_receive(&mut sb, m).unwrap();
            }
            let m2 = b.sync_generate(&mut sb);
            if let Some(m) = &m2 {
                a.sync_receive(&mut sa, m).unwrap();
            }
            if m1.is_none() && m2.is_none() {
                return;
            }
        }
        panic!("sync did not finish");
    }

    /// Runs one step of a story's pipeline: claims (story, phase, round), writes its result
    /// with `verdict`, releases. Returns the claim id.
    /// Claims, finishes and releases one phase of a story as node A.
    pub(crate) fn step(
        d: &mut Doc,
        key: &str,
        phase: Phase,
        round: u32,
        verdict: Option<Verdict>,
    ) -> String {
        use crate::core::lease::ReleaseReason;
        let v = d.view();
        let res = Resource::story_round(key, phase, round).unwrap();
        let token = v.claims().next_token(&res);
        let id = format!("{A}:{}", v.claims.len() + 1);
        d.put_claim(
            &id,
            &ClaimFact {
                resources: vec![(res, token)],
                holder: A.into(),
                ttl_ms: 1000,
                written_at_ms: 0,
                attempt: 1,
            },
        );
        let handoff = crate::core::model::Handoff {
            summary: format!("{phase} {round}"),
            verdict,
            ..Default::default()
        };
        d.put_result(&ResultFact {
            story: key.into(),
            phase,
            round,
            claim: id.clone(),
            token,
            holder: A.into(),
            written_at_ms: 0,
            handoff,
        });
        if phase == Phase::Merge && verdict != Some(Verdict::Reject) {
            d.put_merge(&MergeFact {
                story: key.into(),
                round,
                claim: id.clone(),
                token,
                holder: A.into(),
                commit: "c0ffee".into(),
                written_at_ms: 0,
            });
        }
        d.put_release(
            &id,
            &crate::core::lease::ReleaseFact {
                why: ReleaseReason::Done,
                note: String::new(),
            },
        );
        id
    }

    fn next(d: &Doc, key: &str) -> (Option<Phase>, u32, StoryStatus) {
        let v = d.view();
        let s = &v.stories[key];
        (s.next_phase, s.round, s.status)
    }

    #[test]
    fn a_rejected_review_opens_a_rework_round_then_review_again() {
        let mut d = Doc::new([1; 16]);
        let k = d.add_story(&story("rework me"), A, 1).unwrap();
        for p in [Phase::Research, Phase::Plan, Phase::Implement] {
            assert_eq!(next(&d, &k).0, Some(p));
            step(&mut d, &k, p, 0, None);
        }
        assert_eq!(
            next(&d, &k),
            (Some(Phase::Review), 0, StoryStatus::InProgress)
        );
        step(&mut d, &k, Phase::Review, 0, Some(Verdict::Reject));
        assert_eq!(
            next(&d, &k),
            (Some(Phase::Rework), 1, StoryStatus::InProgress)
        );
        step(&mut d, &k, Phase::Rework, 1, None);
        assert_eq!(
            next(&d, &k),
            (Some(Phase::Review), 1, StoryStatus::InProgress)
        );
        step(&mut d, &k, Phase::Review, 1, Some(Verdict::Approve));
        assert_eq!(
            next(&d, &k),
            (Some(Phase::Merge), 1, StoryStatus::InProgress)
        );
        // The merge gate hit a conflict: another round.
        step(&mut d, &k, Phase::Merge, 1, Some(Verdict::Reject));
        assert_eq!(
            next(&d, &k),
            (Some(Phase::Rework), 2, StoryStatus::InProgress)
        );
        step(&mut d, &k, Phase::Rework, 2, None);
        step(&mut d, &k, Phase::Review, 2, Some(Verdict::Approve));
        step(&mut d, &k, Phase::Merge, 2, None);
        let v = d.view();
        let s = &v.stories[&k];
        assert_eq!(s.status, StoryStatus::Done);
        assert_eq!(s.next_phase, None);
        assert_eq!(s.merged.as_ref().map(|m| m.round), Some(2));
        // History keeps every counted step in order, rejections included.
        let h: Vec<(Phase, u32)> = v.history(&k).iter().map(|r| (r.phase, r.round)).collect();
        assert_eq!(h.len(), 10);
        assert_eq!(h[3], (Phase::Review, 0));
        assert_eq!(h[4], (Phase::Rework, 1));
        assert_eq!(h[9], (Phase::Merge, 2));
        assert_eq!(v.counted_result(&k, Phase::Review).unwrap().round, 2);
    }

    /// Writes a claim on the story's research (by B) and releases it with `why`.
    fn ended_attempt(d: &mut Doc, key: &str, why: crate::core::lease::ReleaseReason, note: &str) {
        let v = d.view();
        let res = Resource::story(key, Phase::Research).unwrap();
        let token = v.claims().next_token(&res);
        let id = format!("{B}-{}", v.claims.len() + 1);
        d.put_claim(
            &id,
            &ClaimFact {
                resources: vec![(res, token)],
                holder: B.into(),
                ttl_ms: 1000,
                written_at_ms: v.claims.len() as u64,
                attempt: 1,
            },
        );
        d.put_release(
            &id,
            &crate::core::lease::ReleaseFact {
                why,
                note: note.into(),
            },
        );
    }

    #[test]
    fn takeovers_of_a_gone_holder_do_not_count_as_failed_attempts() {
        use crate::core::lease::ReleaseReason::{Abandoned, Expired, Lost};
        let mut d = Doc::new([1; 16]);
        let k = d.add_story(&story("unlucky holders"), A, 1).unwrap();
        ended_attempt(&mut d, &k, Expired, "lease expired; taken over by A");
        ended_attempt(&mut d, &k, Abandoned, "holder restarted");
        ended_attempt(&mut d, &k, Lost, "lost the lease while running");
        let v = d.view();
        let s = &v.stories[&k];
        assert_eq!((s.attempts, s.failed_attempts, s.takeovers), (3, 0, 3));
        assert_eq!(s.status, StoryStatus::Ready);
        assert_eq!(s.blocked_reason, None);
        assert_eq!(s.next_phase, Some(Phase::Research));
    }

    #[test]
    fn three_failed_attempts_block_the_story_and_the_reason_says_the_work_failed() {
        use crate::core::lease::ReleaseReason::{Expired, Failed};
        let mut d = Doc::new([1; 16]);
        let k = d.add_story(&story("broken work"), A, 1).unwrap();
        ended_attempt(&mut d, &k, Failed, "implement made no change");
        ended_attempt(&mut d, &k, Expired, "lease expired; taken over by A");
        ended_attempt(&mut d, &k, Failed, "tests failed");
        assert_eq!(d.view().stories[&k].status, StoryStatus::Ready);
        ended_attempt(&mut d, &k, Failed, "tests failed");
        let v = d.view();
        let s = &v.stories[&k];
        assert_eq!((s.attempts, s.failed_attempts, s.takeovers), (4, 3, 1));
        assert_eq!(s.status, StoryStatus::Blocked);
        let why = s.blocked_reason.clone().unwrap();
        assert_eq!(
            why,
            "research failed 3 attempts: implement made no change; tests failed"
        );
    }

    #[test]
    fn a_started_story_whose_dependency_is_blocked_is_blocked_too() {
        // Found by the simulator (seed 1065, hostile, 8 stories, before clean stops):
        // only stories not yet started were blocked with their dependency, so one that
        // had started waited forever.
        use crate::core::lease::ReleaseReason::Failed;
        let mut d = Doc::new([1; 16]);
        let first = d.add_story(&story("the dependency"), A, 1).unwrap();
        let second = d
            .add_story(
                &NewStory {
                    title: "the dependant".into(),
                    depends_on: vec![first.clone()],
                    ..Default::default()
                },
                A,
                2,
            )
            .unwrap();
        // The dependant has started (its research is done; how it got there before its
        // dependency landed does not matter here) and nobody works on it now.
        step(&mut d, &second, Phase::Research, 0, None);
        assert_eq!(d.view().stories[&second].status, StoryStatus::InProgress);
        for _ in 0..MAX_ATTEMPTS {
            ended_attempt(&mut d, &first, Failed, "tests failed");
        }
        let v = d.view();
        assert_eq!(v.stories[&first].status, StoryStatus::Blocked);
        let s = &v.stories[&second];
        assert_eq!(s.status, StoryStatus::Blocked);
        assert_eq!(
            s.blocked_reason.as_deref(),
            Some("depends on S-0001, which is blocked")
        );
        assert_eq!(s.next_phase, None);
    }

    #[test]
    fn a_story_that_keeps_losing_its_holders_is_blocked_at_the_takeover_limit() {
        use crate::core::lease::ReleaseReason::{Abandoned, Expired};
        let mut d = Doc::new([1; 16]);
        let k = d.add_story(&story("kills its holders"), A, 1).unwrap();
        for i in 0..MAX_TAKEOVERS {
            assert_eq!(d.view().stories[&k].blocked_reason, None, "after {i}");
            if i % 2 == 0 {
                ended_attempt(&mut d, &k, Expired, "lease expired; taken over by A");
            } else {
                ended_attempt(&mut d, &k, Abandoned, "holder restarted");
            }
        }
        let v = d.view();
        let s = &v.stories[&k];
        assert_eq!(s.status, StoryStatus::Blocked);
        assert_eq!(s.takeovers, MAX_TAKEOVERS);
        let why = s.blocked_reason.clone().unwrap();
        assert!(
            why.starts_with(&format!("research lost its holder {MAX_TAKEOVERS} times: ")),
            "{why}"
        );
        assert!(why.contains("holder restarted"), "{why}");
        assert!(!why.contains("failed"), "{why}");
    }

    #[test]
    fn too_many_rejections_block_the_story_with_the_last_reason() {
        let mut d = Doc::new([1; 16]);
        let k = d.add_story(&story("never good"), A, 1).unwrap();
        for p in [Phase::Research, Phase::Plan, Phase::Implement] {
            step(&mut d, &k, p, 0, None);
        }
        for r in 0..=MAX_REWORKS {
            if r > 0 {
                step(&mut d, &k, Phase::Rework, r, None);
            }
            assert_eq!(next(&d, &k).0, Some(Phase::Review));
            step(&mut d, &k, Phase::Review, r, Some(Verdict::Reject));
        }
        let v = d.view();
        let s = &v.stories[&k];
        assert_eq!(s.status, StoryStatus::Blocked);
        let why = s.blocked_reason.clone().unwrap();
        assert!(why.contains("review rejected the change 4 times"), "{why}");
        assert!(why.contains("review 3"), "{why}");
    }

    #[test]
    fn knowledge_is_deduplicated_by_content_and_ranked_by_relevance() {
        use crate::core::model::{KnowledgeFact, KnowledgeKind};
        let mut d = Doc::new([1; 16]);
        let k = d
            .add_story(
                &NewStory {
                    title: "Parser handles unicode".into(),
                    files: vec!["src/parser.rs".into()],
                    ..Default::default()
                },
                A,
                1,
            )
            .unwrap();
        let fact = |text: &str, kind| KnowledgeFact {
            kind,
            text: text.into(),
            story: String::new(),
            author: B.into(),
            written_at_ms: 1,
        };
        let a = d.put_knowledge(&fact("The parser must reject BOMs", KnowledgeKind::Pitfall));
        let b = d.put_knowledge(&fact(
            "  the PARSER must   reject boms ",
            KnowledgeKind::Pitfall,
        ));
        assert_eq!(a, b, "same lesson, one entry");
        d.put_knowledge(&fact(
            "Run cargo fmt before committing",
            KnowledgeKind::Convention,
        ));
        assert!(d
            .put_knowledge(&fact("   ", KnowledgeKind::Pattern))
            .is_none());
        let v = d.view();
        assert_eq!(v.knowledge.len(), 2);
        let rel = relevant_knowledge(&v, &v.stories[&k], 5);
        assert_eq!(rel[0].text, "The parser must reject BOMs");
        assert_eq!(relevant_knowledge(&v, &v.stories[&k], 1).len(), 1);
    }

    #[test]
    fn ids_are_sequential_on_one_node() {
        let mut d = Doc::new([1; 16]);
        let k1 = d.add_story(&story("one"), A, 1).unwrap();
        let k2 = d.add_story(&story("two"), A, 2).unwrap();
        let v = d.view();
        assert_eq!(v.stories[&k1].id, "S-0001");
        assert_eq!(v.stories[&k2].id, "S-0002");
        assert_eq!(v.resolve("s-2").unwrap().key, k2);
        assert_eq!(v.resolve("S-0002").unwrap().key, k2);
    }

    #[test]
    fn concurrent_adds_get_distinct_ids_and_the_same_view_everywhere() {
        let mut a = Doc::new([1; 16]);
        let mut b = Doc::new([2; 16]);
        let ka = a.add_story(&story("from a"), A, 10).unwrap();
        let kb = b.add_story(&story("from b"), B, 10).unwrap();
        assert_ne!(ka, kb, "keys never collide");
        sync_pair(&mut a, &mut b);
        let (va, vb) = (a.view(), b.view());
        assert_eq!(va, vb);
        assert_eq!(
            va.stories[&ka].id, "S-0001",
            "lowest creator keeps the short id"
        );
        assert_eq!(va.stories[&kb].id, "S-0001-bbbbbb");
        assert!(matches!(
            va.resolve("S-0001-bbbbbb"),
            Ok(s) if s.key == kb
        ));
        // Both nodes then allocate past the collision.
        let k3 = b.add_story(&story("next"), B, 11).unwrap();
        assert_eq!(b.view().stories[&k3].id, "S-0002");
    }

    #[test]
    fn duplicate_and_out_of_order_delivery_fold_to_the_same_view() {
        let mut a = Doc::new([1; 16]);
        a.add_story(&story("one"), A, 1).unwrap();
        let c1 = a.save_incremental();
        let k2 = a
            .add_story(
                &NewStory {
                    title: "two".into(),
                    depends_on: vec!["S-0001".into()],
                    ..Default::default()
                },
                A,
                2,
            )
            .unwrap();
        let c2 = a.save_incremental();
        // Deliver the second change first, then the first twice.
        let b = Doc::load([2; 16], &[], &[c2.clone(), c1.clone(), c1, c2]).unwrap();
        assert_eq!(b.view(), a.view());
        assert_eq!(
            b.view().stories[&k2].depends_on_ids,
            vec!["S-0001".to_string()]
        );
        assert_eq!(b.view().stories[&k2].status, StoryStatus::Backlog);
    }

    #[test]
    fn depends_on_unknown_story_is_refused() {
        let mut a = Doc::new([1; 16]);
        let err = a
            .add_story(
                &NewStory {
                    title: "t".into(),
                    depends_on: vec!["S-0099".into()],
                    ..Default::default()
                },
                A,
                1,
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown story \"S-0099\""),
            "{err}"
        );
    }

    #[test]
    fn malformed_facts_are_skipped_and_counted() {
        let mut a = Doc::new([1; 16]);
        a.inner
            .put(ROOT, "story/S-0001@zzzzzz", "not json")
            .unwrap();
        a.inner.put(ROOT, "node/x", "{}").unwrap();
        a.add_story(&story("fine"), A, 1).unwrap();
        let v = a.view();
        assert_eq!(v.malformed, 2);
        assert_eq!(v.stories.len(), 1);
    }

    #[test]
    fn node_fact_is_written_only_on_change() {
        let mut a = Doc::new([1; 16]);
        let f = NodeFact {
            roles: vec!["implement".into()],
            capacity: 2,
            version: "0.1.0".into(),
        };
        assert!(a.put_node(A, &f));
        assert!(
            !a.put_node(A, &f),
            "rewriting the same fact would grow history"
        );
        assert!(a.put_node(A, &NodeFact { capacity: 3, ..f }));
    }

    #[test]
    fn snapshot_plus_incrementals_restore_everything() {
        let mut a = Doc::new([1; 16]);
        a.add_story(&story("one"), A, 1).unwrap();
        let snap = a.save();
        a.add_story(&story("two"), A, 2).unwrap();
        let inc = a.save_incremental();
        let mut b = Doc::load([3; 16], &snap, &[inc]).unwrap();
        assert_eq!(b.view(), a.view());
        assert_eq!(b.heads_digest(), a.heads_digest());
    }
}
