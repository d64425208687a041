//! The automerge document of write-once facts: typed writes, the decoded facts kept in
//! step with automerge's patches, eager-push changes, sync, save and load.

use super::roster::{Roster, RosterEntry, ADMIT_PREFIX, REVOKE_PREFIX};
use super::*;
use std::collections::HashSet;

/// The replicated document.
///
/// Beside the automerge document it keeps every admitted root fact decoded ([`Fact`]),
/// read from each new change's operations after each write, sync or push: the view is
/// rebuilt from decoded facts, never by re-reading and re-parsing the whole document.
///
/// Facts are a grow-only set: every value ever written at a root key, in any change, is
/// a candidate ([`super::admit`] decides whether it counts); a later overwrite or a
/// delete of a key removes nothing, and the fact a key shows is chosen among its
/// admitted candidates by a rule every node applies alike ([`Doc::choose`]). So no
/// writer, honest or not, can unsay a fact — and a node that joins after an overwrite
/// reads the same facts as one that saw the original first.
///
/// Cloning copies the whole document: the core keeps a clone while a caller waits for
/// a local write to be made durable, to put back if it is not.
#[derive(Clone)]
pub struct Doc {
    pub(super) inner: AutoCommit,
    /// The chosen fact of each key (what the view folds).
    pub(super) facts: BTreeMap<String, Fact>,
    /// Every admitted value of each key.
    candidates: BTreeMap<String, Vec<Candidate>>,
    /// The result and merge keys written under each claim: a claim with a counted one
    /// is finished, and a takeover never releases it.
    finished: BTreeMap<String, BTreeSet<String>>,
    /// Who the mesh's members and operators are (see [`super::roster`]).
    roster: Roster,
    /// The causal past of each revoke's change, once computed (it never changes).
    revoke_past: BTreeMap<ChangeHash, Arc<HashSet<ChangeHash>>>,
    /// The heads whose changes have been read into `candidates`.
    scanned: Vec<ChangeHash>,
    /// Values refused, by the author they name (`?` when they name none) and kind.
    rejected: BTreeMap<String, BTreeMap<FactKind, u64>>,
    /// The most recent refused values, bounded, for the audit trail ([`super::audit`]).
    pub(super) refused: RefusedLog,
    /// Who signs this document's local writes, and how authors map to keys.
    writer: Writer,
    scheme: KeyScheme,
    /// This actor's recent changes (oldest first), for eager pushes to peers.
    local_log: VecDeque<LocalChange>,
}

/// Who signs the local writes of a document.
#[derive(Debug, Clone)]
enum Writer {
    /// A read-only copy (the CLI's offline reads): writing fails.
    None,
    /// A node: writes only in its own name.
    Node(Box<Signer>),
    /// Tests and the simulator: writes in any plain name's derived key.
    AnyTestName,
}

/// One admitted value of a key.
#[derive(Debug, Clone)]
struct Candidate {
    /// The operation that wrote it (counter, actor): orders candidates alike everywhere.
    op: (u64, Vec<u8>),
    /// The change that wrote it (a revoked author's value counts only in the revoke's
    /// causal past).
    change: ChangeHash,
    author: String,
    fact: Fact,
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

/// One root fact, decoded and admitted.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Fact {
    Story(StoryFact),
    Node(NodeFact),
    Claim(ClaimFact),
    Release(ReleaseFact),
    Result(Arc<ResultFact>),
    Merge(MergeFact),
    Knowledge(KnowledgeFact),
    Admit(RosterFact),
    Revoke(RosterFact),
}

impl std::fmt::Debug for Doc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doc").finish_non_exhaustive()
    }
}

impl Doc {
    /// An empty document with a fresh actor id. Every process start uses a new actor, so
    /// a node that lost unflushed changes in a crash can never reuse a sequence number.
    ///
    /// It verifies authors by peer id and cannot write until [`Doc::with_signer`] gives it
    /// the node's key.
    pub fn new(actor: [u8; 16]) -> Doc {
        Doc::wrap(AutoCommit::new().with_actor(ActorId::from(actor.as_slice())))
    }

    fn wrap(inner: AutoCommit) -> Doc {
        Doc {
            inner,
            facts: BTreeMap::new(),
            candidates: BTreeMap::new(),
            finished: BTreeMap::new(),
            roster: Roster::default(),
            revoke_past: BTreeMap::new(),
            scanned: Vec::new(),
            rejected: BTreeMap::new(),
            refused: RefusedLog::default(),
            writer: Writer::None,
            scheme: KeyScheme::PeerIds,
            local_log: VecDeque::new(),
        }
    }

    /// This document's local writes are signed by `signer`, and only in its name.
    pub fn with_signer(mut self, signer: Signer) -> Doc {
        self.writer = Writer::Node(Box::new(signer));
        self
    }

    /// For tests and the simulator: plain names ("A", "node3") are authors with keys
    /// derived from the name, and local writes may be made in any name. Never for a real
    /// node: anyone can sign as anyone with a plain name.
    pub fn with_test_names(mut self) -> Doc {
        self.writer = Writer::AnyTestName;
        self.scheme = KeyScheme::TestNames;
        self.rescan();
        self
    }

    /// The mesh's operators (its trust anchors; every node of a mesh must list the same):
    /// only members they admit write facts that count, and only they write the roster.
    /// Empty (the default) is an open mesh. Reads every change again.
    pub fn with_operators(mut self, operators: BTreeSet<String>) -> Doc {
        self.roster.operators = operators;
        self.rescan();
        self
    }

    /// The roster as this document has it.
    pub fn roster(&self) -> RosterView {
        self.roster.view()
    }

    /// The author this document writes as, if it writes as one node.
    pub fn author(&self) -> Option<&str> {
        match &self.writer {
            Writer::Node(s) => Some(s.author()),
            Writer::None | Writer::AnyTestName => None,
        }
    }

    /// Values refused so far, by the author they name (`?` when none) and kind.
    pub fn rejected(&self) -> &BTreeMap<String, BTreeMap<FactKind, u64>> {
        &self.rejected
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

    /// Brings the decoded facts up to date with the document: reads every root value
    /// written by the changes since the last call (the first call reads them all), admits
    /// or refuses each, and re-chooses the fact of every key that gained a candidate.
    pub(super) fn refresh(&mut self) {
        let heads = self.inner.get_heads();
        if heads == self.scanned {
            return;
        }
        let changes = self.inner.get_changes(&self.scanned);
        self.scanned = heads;
        let mut touched = BTreeSet::new();
        for change in &changes {
            let hash = change.hash();
            let ex = change.decode();
            let actor = ex.actor_id.to_bytes().to_vec();
            for (i, op) in ex.operations.iter().enumerate() {
                if op.obj != automerge::legacy::ObjectId::Root {
                    continue;
                }
                let (automerge::legacy::Key::Map(key), automerge::legacy::OpType::Put(value)) =
                    (&op.key, &op.action)
                else {
                    // Deletes and anything else change no fact.
                    continue;
                };
                let Some(kind) = FactKind::of_key(key) else {
                    continue;
                };
                let ScalarValue::Str(value) = value else {
                    self.reject(key, kind, None, Refusal::Malformed);
                    continue;
                };
                let op = (ex.start_op.get().saturating_add(i as u64), actor.clone());
                self.consider(key, kind, value, op, hash, &mut touched);
            }
        }
        let roster_touched = touched
            .iter()
            .any(|k| k.starts_with(ADMIT_PREFIX) || k.starts_with(REVOKE_PREFIX));
        self.choose_all(touched.iter());
        if roster_touched && self.rebuild_roster() {
            // Who counts changed: every key is chosen again.
            let keys: Vec<String> = self.candidates.keys().cloned().collect();
            self.choose_all(keys.iter());
        }
    }

    /// Chooses the fact of each key, releases last (whether a claim is finished depends
    /// on its results and merges as chosen).
    fn choose_all<'a>(&mut self, keys: impl Iterator<Item = &'a String> + Clone) {
        for key in keys.clone().filter(|k| !k.starts_with(RELEASE_PREFIX)) {
            self.choose(key);
        }
        for key in keys.filter(|k| k.starts_with(RELEASE_PREFIX)) {
            self.choose(key);
        }
    }

    /// Folds the roster from the chosen roster facts; whether it changed.
    fn rebuild_roster(&mut self) -> bool {
        let mut admitted = BTreeMap::new();
        let mut revoked_at = Vec::new();
        for key in self.candidates.keys() {
            let Some(c) = self.chosen(key) else {
                continue;
            };
            let (Fact::Admit(f) | Fact::Revoke(f)) = &c.fact else {
                continue;
            };
            let entry = RosterEntry {
                peer: f.peer.clone(),
                by: c.author.clone(),
                note: f.note.clone(),
                at_ms: f.at_ms,
            };
            if matches!(c.fact, Fact::Admit(_)) {
                admitted.insert(f.peer.clone(), entry);
            } else {
                revoked_at.push((entry, c.change));
            }
        }
        let mut revoked = BTreeMap::new();
        for (entry, change) in revoked_at {
            let past = self.past_of(&change);
            revoked.insert(entry.peer.clone(), (entry, past));
        }
        let same = admitted == self.roster.admitted
            && revoked.len() == self.roster.revoked.len()
            && revoked
                .iter()
                .zip(&self.roster.revoked)
                .all(|((a, (ea, pa)), (b, (eb, pb)))| a == b && ea == eb && Arc::ptr_eq(pa, pb));
        self.roster.admitted = admitted;
        self.roster.revoked = revoked;
        !same
    }

    /// Every change in the causal past of `change` (itself included). Computed once per
    /// change: its past is fixed once it is applied (automerge applies a change only
    /// after all of its dependencies).
    fn past_of(&mut self, change: &ChangeHash) -> Arc<HashSet<ChangeHash>> {
        if let Some(p) = self.revoke_past.get(change) {
            return p.clone();
        }
        let after: HashSet<ChangeHash> = self
            .inner
            .get_changes_meta(&[*change])
            .iter()
            .map(|m| m.hash)
            .collect();
        let past: HashSet<ChangeHash> = self
            .inner
            .get_changes_meta(&[])
            .iter()
            .map(|m| m.hash)
            .filter(|h| !after.contains(h))
            .collect();
        let past = Arc::new(past);
        self.revoke_past.insert(*change, past.clone());
        past
    }

    /// Reads every change again (after the key scheme changed).
    fn rescan(&mut self) {
        self.facts.clear();
        self.candidates.clear();
        self.finished.clear();
        self.roster.admitted.clear();
        self.roster.revoked.clear();
        self.rejected.clear();
        self.refused.clear();
        self.scanned.clear();
        self.refresh();
    }

    fn consider(
        &mut self,
        key: &str,
        kind: FactKind,
        value: &str,
        op: (u64, Vec<u8>),
        change: ChangeHash,
        touched: &mut BTreeSet<String>,
    ) {
        match admit(kind, key, value, self.scheme, &self.roster.operators) {
            Ok((author, fact)) => {
                let claim = match &fact {
                    Fact::Result(f) => Some(f.claim.clone()),
                    Fact::Merge(f) => Some(f.claim.clone()),
                    _ => None,
                };
                if let Some(claim) = claim {
                    // A finished claim's takeover release no longer counts.
                    touched.insert(format!("{RELEASE_PREFIX}{claim}"));
                    self.finished
                        .entry(claim)
                        .or_default()
                        .insert(key.to_string());
                }
                let all = self.candidates.entry(key.to_string()).or_default();
                if !all.iter().any(|c| c.op == op) {
                    all.push(Candidate {
                        op,
                        change,
                        author,
                        fact,
                    });
                }
                touched.insert(key.to_string());
            }
            Err(why) => self.reject(key, kind, trust::claimed_author(value), why),
        }
    }

    /// Counts a refused value against the author it names, and says so once per author.
    fn reject(&mut self, key: &str, kind: FactKind, author: Option<&str>, why: Refusal) {
        let author = author.unwrap_or("?");
        self.refused.push(key, kind, author, why);
        let first = !self.rejected.contains_key(author);
        *self
            .rejected
            .entry(author.to_string())
            .or_default()
            .entry(kind)
            .or_default() += 1;
        if first {
            tracing::warn!(%author, %key, kind = kind.as_str(), why = why.as_str(),
                "fact refused (logged once per author; `status` counts them)");
        }
    }

    /// The fact key `key` shows, among its admitted candidates whose authors count (see
    /// [`Roster::counts`]): a node's description is its latest; everything else is
    /// write-once, so the first write stands (a second one by the same author cannot
    /// replace it) — and a takeover's release of a claim that has a counted result or
    /// merge does not count at all, so the holder's own release stands. "First" and
    /// "latest" are by the writing operation's id, which every node orders alike.
    fn chosen(&self, key: &str) -> Option<&Candidate> {
        let all = self.candidates.get(key)?;
        let kind = FactKind::of_key(key);
        let roster = matches!(kind, Some(FactKind::Admit | FactKind::Revoke));
        let counts = |c: &&Candidate| roster || self.roster.counts(&c.author, &c.change);
        match kind {
            Some(FactKind::Node) => all.iter().filter(counts).max_by(|a, b| a.op.cmp(&b.op)),
            Some(FactKind::Release) => {
                let id = key.strip_prefix(RELEASE_PREFIX).unwrap_or(key);
                let holder = claim_id_holder(id);
                let finished = self
                    .finished
                    .get(id)
                    .is_some_and(|keys| keys.iter().any(|k| self.facts.contains_key(k)));
                all.iter()
                    .filter(counts)
                    .filter(|c| Some(c.author.as_str()) == holder || !finished)
                    .min_by(|a, b| a.op.cmp(&b.op))
            }
            _ => all.iter().filter(counts).min_by(|a, b| a.op.cmp(&b.op)),
        }
    }

    fn choose(&mut self, key: &str) {
        match self.chosen(key).map(|c| c.fact.clone()) {
            Some(fact) => {
                self.facts.insert(key.to_string(), fact);
            }
            None => {
                self.facts.remove(key);
            }
        }
    }

    /// Loads a document from a snapshot (possibly empty) plus incremental chunks. It
    /// verifies authors by peer id and cannot write until [`Doc::with_signer`].
    pub fn load(actor: [u8; 16], snapshot: &[u8], chunks: &[Vec<u8>]) -> Result<Doc, StateError> {
        Doc::load_as(actor, snapshot, chunks, KeyScheme::PeerIds, BTreeSet::new())
    }

    /// [`Doc::load`] then [`Doc::with_operators`], reading the changes once.
    pub fn load_with_operators(
        actor: [u8; 16],
        snapshot: &[u8],
        chunks: &[Vec<u8>],
        operators: BTreeSet<String>,
    ) -> Result<Doc, StateError> {
        Doc::load_as(actor, snapshot, chunks, KeyScheme::PeerIds, operators)
    }

    /// [`Doc::load`] then [`Doc::with_test_names`], reading the changes once.
    pub fn load_test_names(
        actor: [u8; 16],
        snapshot: &[u8],
        chunks: &[Vec<u8>],
    ) -> Result<Doc, StateError> {
        let mut doc = Doc::load_as(
            actor,
            snapshot,
            chunks,
            KeyScheme::TestNames,
            BTreeSet::new(),
        )?;
        doc.writer = Writer::AnyTestName;
        Ok(doc)
    }

    fn load_as(
        actor: [u8; 16],
        snapshot: &[u8],
        chunks: &[Vec<u8>],
        scheme: KeyScheme,
        operators: BTreeSet<String>,
    ) -> Result<Doc, StateError> {
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
        let mut doc = Doc::wrap(inner);
        doc.scheme = scheme;
        doc.roster.operators = operators;
        // The first refresh reads every change; later ones only the new.
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

    /// Seals one fact in `author`'s name and checks it as every peer will; the sealed
    /// value, or why it cannot be written.
    fn seal_checked<T: Serialize>(
        &self,
        key: &str,
        fact: &T,
        author: &str,
    ) -> Result<String, StateError> {
        let write_err = |why: String| StateError::Write {
            key: key.to_string(),
            why,
        };
        let json = serde_json::to_string(fact).map_err(|e| write_err(e.to_string()))?;
        let sealed = match &self.writer {
            Writer::Node(s) if s.author() == author => s.seal(key, &json),
            Writer::Node(s) => {
                return Err(write_err(format!(
                    "this node signs as {}, not as {author}",
                    s.author()
                )))
            }
            Writer::AnyTestName => Signer::for_test(author).seal(key, &json),
            Writer::None => {
                return Err(write_err(
                    "this copy of the document has no signing key".into(),
                ))
            }
        };
        // What peers would refuse is never written: the writer hears why.
        let kind = FactKind::of_key(key).ok_or_else(|| write_err("unknown kind of fact".into()))?;
        if !self.roster.is_member(author) {
            return Err(write_err(if self.roster.revoked.contains_key(author) {
                format!("{author} was revoked by an operator: nothing it writes counts")
            } else {
                format!(
                    "{author} is not on the mesh's roster, so nothing it writes would count: \
                     an operator must run `mesh-agent admit {author}` first"
                )
            }));
        }
        if let Err(why) = admit(kind, key, &sealed, self.scheme, &self.roster.operators) {
            return Err(write_err(format!(
                "peers would refuse it: {}",
                why.as_str()
            )));
        }
        Ok(sealed)
    }

    /// Seals one fact in `author`'s name, checks it as every peer will, writes it at a
    /// root key and commits it. On error nothing was written.
    pub(super) fn put_fact<T: Serialize>(
        &mut self,
        key: &str,
        fact: &T,
        author: &str,
    ) -> Result<(), StateError> {
        self.put_sealed(&[(key.to_string(), self.seal_checked(key, fact, author)?)])
    }

    /// Writes sealed values in one change. On error nothing was written.
    fn put_sealed(&mut self, values: &[(String, String)]) -> Result<(), StateError> {
        for (key, sealed) in values {
            // Writing a scalar at the root only fails on a corrupt op set.
            if let Err(e) = self.inner.put(ROOT, key.as_str(), sealed.as_str()) {
                self.inner.rollback();
                return Err(StateError::Write {
                    key: key.clone(),
                    why: e.to_string(),
                });
            }
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
        let mut keys = self.add_stories(std::slice::from_ref(new), creator, now_ms)?;
        keys.pop().ok_or_else(|| StateError::Write {
            key: STORY_PREFIX.into(),
            why: "no story written".into(),
        })
    }

    /// Validates and writes new stories, numbered in order, in one change: all or none.
    /// Dependencies name stories already in the document.
    pub fn add_stories(
        &mut self,
        news: &[NewStory],
        creator: &str,
        now_ms: u64,
    ) -> Result<Vec<String>, StateError> {
        let view = self.view();
        let mut number = view.max_number();
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for new in news {
            let valid = new.validate()?;
            let mut depends_on = Vec::new();
            for d in &new.depends_on {
                let key = view.resolve(d.trim())?.key.clone();
                if !depends_on.contains(&key) {
                    depends_on.push(key);
                }
            }
            number += 1;
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
            let doc_key = format!("{STORY_PREFIX}{key}");
            values.push((
                doc_key.clone(),
                self.seal_checked(&doc_key, &fact, creator)?,
            ));
            keys.push(key);
        }
        if !values.is_empty() {
            self.put_sealed(&values)?;
        }
        Ok(keys)
    }

    /// Records this node's description, only when it differs from what the document has.
    /// Returns whether a write happened.
    pub fn put_node(&mut self, peer: &str, fact: &NodeFact) -> Result<bool, StateError> {
        let key = format!("{NODE_PREFIX}{peer}");
        if matches!(self.facts.get(&key), Some(Fact::Node(f)) if f == fact) {
            return Ok(false);
        }
        self.put_fact(&key, fact, peer)?;
        Ok(true)
    }

    /// Writes a claim fact. Claim ids are unique per writer, so the key has one writer.
    pub fn put_claim(&mut self, id: &str, fact: &ClaimFact) -> Result<(), StateError> {
        self.put_fact(&format!("{CLAIM_PREFIX}{id}"), fact, &fact.holder)
    }

    /// The holder of claim `id` as written in the document (winning or not), without
    /// folding a view.
    pub fn claim_holder(&self, id: &str) -> Option<&str> {
        match self.facts.get(&format!("{CLAIM_PREFIX}{id}")) {
            Some(Fact::Claim(c)) => Some(&c.holder),
            _ => None,
        }
    }

    /// Writes a release fact for a claim, by its holder or (`expired`) by a node `by` that
    /// took it over. Rewriting an existing release is skipped: the first reason stands.
    pub fn put_release(
        &mut self,
        id: &str,
        fact: &ReleaseFact,
        by: &str,
    ) -> Result<(), StateError> {
        let key = format!("{RELEASE_PREFIX}{id}");
        if matches!(self.facts.get(&key), Some(Fact::Release(_))) {
            return Ok(());
        }
        self.put_fact(&key, fact, by)
    }

    /// Writes a phase result under its claim.
    pub fn put_result(&mut self, fact: &ResultFact) -> Result<(), StateError> {
        let key = format!(
            "{RESULT_PREFIX}{}/{}/{}",
            fact.story,
            fact.phase.as_str(),
            fact.claim
        );
        self.put_fact(&key, fact, &fact.holder)
    }

    /// Records a landing on main.
    pub fn put_merge(&mut self, fact: &MergeFact) -> Result<(), StateError> {
        let key = format!("{MERGE_PREFIX}{}/{}", fact.story, fact.claim);
        self.put_fact(&key, fact, &fact.holder)
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
            self.put_fact(&key, &f, &fact.author)?;
        }
        Ok(id)
    }

    /// Writes a value sealed elsewhere (an operator's roster fact: the operator's key is
    /// not this node's), after checking it as every peer will. Only roster facts.
    pub fn put_signed(&mut self, key: &str, sealed: &str) -> Result<(), StateError> {
        let write_err = |why: String| StateError::Write {
            key: key.to_string(),
            why,
        };
        let kind = FactKind::of_key(key)
            .filter(|k| matches!(k, FactKind::Admit | FactKind::Revoke))
            .ok_or_else(|| write_err("only roster facts are written pre-signed".into()))?;
        if !self.roster.enforced() {
            return Err(write_err(
                "this mesh has no operators (config `operators` is empty), so it has no roster: \
                 list the operators' ids in every node's config first"
                    .into(),
            ));
        }
        if let Err(why) = admit(kind, key, sealed, self.scheme, &self.roster.operators) {
            let author = trust::claimed_author(sealed).unwrap_or("?");
            return Err(write_err(match why {
                Refusal::NotEntitled => format!(
                    "{author} is not an operator of this mesh (config `operators` lists {})",
                    self.roster
                        .operators
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                why => format!("peers would refuse it: {}", why.as_str()),
            }));
        }
        self.put_sealed(&[(key.to_string(), sealed.to_string())])
    }

    /// Hostile writes for the simulator's Byzantine-lite node and the tests: puts `value`
    /// at root key `key` as is, unchecked and unsigned unless it already is.
    #[doc(hidden)]
    pub fn raw_put(&mut self, key: &str, value: String) {
        if self.inner.put(ROOT, key, value).is_ok() {
            self.inner.commit();
            self.log_local_change();
            self.refresh();
        }
    }

    /// Deletes root key `key` (see [`Doc::raw_put`]).
    #[doc(hidden)]
    pub fn raw_delete(&mut self, key: &str) {
        if self.inner.delete(ROOT, key).is_ok() {
            self.inner.commit();
            self.log_local_change();
            self.refresh();
        }
    }

    /// The value at root key `key` as automerge has it now (sealed text, if a string).
    #[doc(hidden)]
    pub fn raw_get(&self, key: &str) -> Option<String> {
        match self.inner.get(ROOT, key).ok().flatten()? {
            (automerge::Value::Scalar(v), _) => match v.as_ref() {
                ScalarValue::Str(s) => Some(s.to_string()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Every admitted value of every key, chosen or not, as the audit trail reads them
    /// ([`super::audit`]).
    pub(super) fn candidates(&self) -> impl Iterator<Item = Admitted<'_>> {
        self.candidates.iter().flat_map(move |(key, all)| {
            let chosen = self.chosen(key);
            let roster = key.starts_with(ADMIT_PREFIX) || key.starts_with(REVOKE_PREFIX);
            all.iter().map(move |c| Admitted {
                key,
                author: &c.author,
                fact: &c.fact,
                op: (c.op.0, &c.op.1),
                chosen: chosen.is_some_and(|x| std::ptr::eq(x, c)),
                member: roster || self.roster.counts(&c.author, &c.change),
            })
        })
    }

    /// The keys of every admitted fact.
    pub fn fact_keys(&self) -> impl Iterator<Item = &str> {
        self.facts.keys().map(String::as_str)
    }

    /// The current view: a pure function of the document.
    pub fn view(&self) -> View {
        self.view_and_claims().0
    }

    /// The current view and its claim fold (what `view().claims()` gives, without
    /// folding the claims twice).
    pub fn view_and_claims(&self) -> (View, Claims) {
        let (mut view, claims) = View::fold(&self.facts);
        view.malformed += self.rejected.values().flat_map(|k| k.values()).sum::<u64>();
        view.roster = self.roster.view();
        (view, claims)
    }
}
