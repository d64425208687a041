//! The automerge document of write-once facts: typed writes, the decoded facts kept in
//! step with automerge's patches, eager-push changes, sync, save and load.

use super::*;

/// The replicated document.
///
/// Beside the automerge document it keeps every root fact decoded ([`Fact`]), updated
/// from automerge's patches after each write or sync: the view is rebuilt from decoded
/// facts, never by re-reading and re-parsing the whole document (which cost a quarter
/// of an 8-node mesh's CPU).
///
/// Cloning copies the whole document: the core keeps a clone while a caller waits for
/// a local write to be made durable, to put back if it is not.
#[derive(Clone)]
pub struct Doc {
    pub(super) inner: AutoCommit,
    pub(super) facts: BTreeMap<String, Fact>,
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
pub(super) enum Fact {
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
    pub(super) fn decode(key: &str, value: &Value<'_>) -> Option<Fact> {
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

    /// Writes one fact at a root key and commits it. On error nothing was written.
    pub(super) fn put_fact<T: Serialize>(&mut self, key: &str, fact: &T) -> Result<(), StateError> {
        let write_err = |why: String| StateError::Write {
            key: key.to_string(),
            why,
        };
        let json = serde_json::to_string(fact).map_err(|e| write_err(e.to_string()))?;
        // Writing a scalar at the root only fails on a corrupt op set.
        if let Err(e) = self.inner.put(ROOT, key, json) {
            self.inner.rollback();
            return Err(write_err(e.to_string()));
        }
        self.inner.commit();
        self.log_local_change();
        self.refresh();
        Ok(())
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
        self.put_fact(&format!("{STORY_PREFIX}{key}"), &fact)?;
        Ok(key)
    }

    /// Records this node's description, only when it differs from what the document has.
    /// Returns whether a write happened.
    pub fn put_node(&mut self, peer: &str, fact: &NodeFact) -> Result<bool, StateError> {
        let key = format!("{NODE_PREFIX}{peer}");
        if matches!(self.facts.get(&key), Some(Fact::Node(f)) if f == fact) {
            return Ok(false);
        }
        self.put_fact(&key, fact)?;
        Ok(true)
    }

    /// Writes a claim fact. Claim ids are unique per writer, so the key has one writer.
    pub fn put_claim(&mut self, id: &str, fact: &ClaimFact) -> Result<(), StateError> {
        self.put_fact(&format!("{CLAIM_PREFIX}{id}"), fact)
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
    pub fn put_release(&mut self, id: &str, fact: &ReleaseFact) -> Result<(), StateError> {
        let key = format!("{RELEASE_PREFIX}{id}");
        if matches!(self.facts.get(&key), Some(Fact::Release(_))) {
            return Ok(());
        }
        self.put_fact(&key, fact)
    }

    /// Writes a phase result under its claim.
    pub fn put_result(&mut self, fact: &ResultFact) -> Result<(), StateError> {
        let key = format!(
            "{RESULT_PREFIX}{}/{}/{}",
            fact.story,
            fact.phase.as_str(),
            fact.claim
        );
        self.put_fact(&key, fact)
    }

    /// Records a landing on main.
    pub fn put_merge(&mut self, fact: &MergeFact) -> Result<(), StateError> {
        let key = format!("{MERGE_PREFIX}{}/{}", fact.story, fact.claim);
        self.put_fact(&key, fact)
    }

    /// Writes a knowledge entry under the hash of its kind and normalised text, so the
    /// same lesson learned twice (by any nodes) is one entry. Returns its id; an entry
    /// already present is left as first written. Over-long or empty text is refused.
    pub fn put_knowledge(&mut self, fact: &KnowledgeFact) -> Result<String, StateError> {
        let text = fact.text.trim();
        if text.is_empty() || text.len() > MAX_KNOWLEDGE_BYTES {
            return Err(StateError::KnowledgeRefused);
        }
        let id = knowledge_id(fact.kind, text);
        let key = format!("{KNOWLEDGE_PREFIX}{id}");
        if self.inner.get(ROOT, key.as_str()).ok().flatten().is_none() {
            let mut f = fact.clone();
            f.text = text.to_string();
            self.put_fact(&key, &f)?;
        }
        Ok(id)
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
