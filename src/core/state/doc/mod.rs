//! The automerge document of write-once facts: typed writes, the decoded facts kept in
//! step with automerge's patches, eager-push changes, sync, save and load.

use super::budget::BudgetFact;
use super::command::CommandFact;
use super::roster::{Roster, RosterEntry, ADMIT_PREFIX, REVOKE_PREFIX};
use super::*;
use smallvec::SmallVec;
use std::collections::HashSet;

mod batch;
mod body;
mod checked;
mod epoch;
pub use epoch::Seed;
mod join;
mod receive;
pub use batch::{BatchError, BATCH_REF_PREFIX, MAX_BATCH_STORIES, VOUCH_FROM};
pub use join::{Rebase, Taken};
mod fold;
mod push;
use push::LocalChange;
mod write;

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
    /// Every admitted value of each key, and which is its fact (what the view folds:
    /// [`Doc::facts`]). One map, not a second one of chosen facts beside it: ~40 bytes a
    /// key.
    candidates: BTreeMap<FactKey, Entry>,
    /// How many keys `candidates` had when it was last rebuilt with full nodes
    /// (`Doc::repack`).
    packed: usize,
    /// Every author of a candidate, once (each candidate shares its copy: ~70 bytes a
    /// fact saved, 7 MB at 100,000 stories).
    authors: BTreeSet<Arc<str>>,
    /// Every actor of a candidate's operation, once (a node's run has one actor, and
    /// writes many facts).
    actors: BTreeSet<Arc<[u8]>>,
    /// Every file a story plans, once (stories of one codebase plan the same files).
    paths: BTreeSet<Arc<str>>,
    /// The change of each candidate, by index ([`Candidate::change`]): the facts of a
    /// change are read together, and a bulk write's thousand stories share one hash
    /// (32 bytes a candidate otherwise; ~3 MB at 100,000 stories).
    changes: Vec<ChangeHash>,
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
    /// The scheme under which a seal of this document's signer was checked as peers
    /// check it and held: its later seals are made the same way, so their signatures are
    /// not checked again (every other check of a local write still is).
    own_seals_hold: Option<KeyScheme>,
    /// A write of this many stories or more is vouched for by seals (`trust::vouch`),
    /// fewer are signed one by one: [`VOUCH_FROM`], but for the simulator.
    vouch_from: usize,
    /// While [`Doc::put_sealed`] reads its own change back: that change, whose values
    /// were admitted (signatures checked) just before it was written.
    local_change: Option<ChangeHash>,
    /// This actor's recent changes (oldest first), for eager pushes to peers.
    local_log: VecDeque<LocalChange>,
    /// What the document takes on disk: the last snapshot plus every incremental save
    /// since (what [`Doc::load`] read, then what [`Doc::save_incremental`] and
    /// [`Doc::save`] returned).
    stored: u64,
    /// The size cap (see [`Doc::with_size_cap`]).
    cap: u64,
    /// The heads whose changes the store holds: what [`Doc::save_incremental`] saves
    /// after. Ours, not automerge's save cursor: a loaded document starts with that one
    /// empty, and its first incremental save was the whole document again (at 100,000
    /// stories, ~30 MB of changes for the first write after a restart).
    saved: Vec<ChangeHash>,
    /// Checks the signatures of many values at once, if the shell gave one.
    checker: Option<crate::core::trust::Checker>,
    /// Operations (counter, actor) whose signature failed its check (`checked.rs`).
    bad_signatures: BTreeSet<OpId>,
    /// During a load from a checked snapshot: the operations whose signatures are
    /// checked again (every other one passed before, on this node).
    trusted: Option<BTreeSet<OpId>>,
    /// The keys whose chosen fact changed since [`Doc::take_changes`] last ran (`None`:
    /// every key may have, e.g. after a rescan or past [`MAX_CHANGED`]).
    changed: Option<BTreeSet<String>>,
    /// What this document's epoch inherited, read from its root change
    /// ([`Doc::with_epoch_root`]); `None` in a mesh's first document.
    base: Option<Arc<Base>>,
    /// The hash of the change [`Self::base`] was read from: the epoch's identity on the
    /// wire (sync and beats are scoped by it).
    root: Option<ChangeHash>,
}

/// Past this many changed keys not yet taken, a document stops naming them (a view
/// updated from that many is no cheaper than a fold).
const MAX_CHANGED: usize = 4096;

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

/// A key's admitted values, and the one chosen as its fact.
#[derive(Debug, Clone, Default)]
pub(super) struct Entry {
    /// Inline when there is one, as for most keys: a separate allocation took ~110
    /// bytes a story more.
    all: SmallVec<[Candidate; 1]>,
    /// The index in `all` of the chosen candidate ([`Doc::choose`]).
    chosen: Option<u32>,
}

impl Entry {
    fn fact(&self) -> Option<&Fact> {
        let i = usize::try_from(self.chosen?).ok()?;
        self.all.get(i).map(|c| &c.fact)
    }
}

/// The chosen fact of each key, read from [`Doc::candidates`]: what the view folds.
#[derive(Clone, Copy)]
pub(in crate::core::state) struct Facts<'a>(&'a BTreeMap<FactKey, Entry>);

impl<'a> Facts<'a> {
    pub(in crate::core::state) fn get(&self, key: &str) -> Option<&'a Fact> {
        self.0.get(key)?.fact()
    }

    pub(in crate::core::state) fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Every key's chosen fact, in key order.
    pub(in crate::core::state) fn iter(
        &self,
    ) -> impl Iterator<Item = (&'a FactKey, &'a Fact)> + 'a {
        self.0.iter().filter_map(|(k, e)| Some((k, e.fact()?)))
    }

    pub(in crate::core::state) fn keys(&self) -> impl Iterator<Item = &'a FactKey> + 'a {
        self.iter().map(|(k, _)| k)
    }

    /// The chosen facts of the keys starting with `prefix`, in key order.
    pub(in crate::core::state) fn with_prefix<'p>(
        &self,
        prefix: &'p str,
    ) -> impl Iterator<Item = (&'a FactKey, &'a Fact)> + 'p
    where
        'a: 'p,
    {
        self.0
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .filter_map(|(k, e)| Some((k, e.fact()?)))
    }
}

/// An operation's id: its counter and its actor's bytes (interned, [`Doc::actors`]).
pub(super) type OpId = (u64, Arc<[u8]>);

/// One admitted value of a key.
#[derive(Debug, Clone)]
struct Candidate {
    /// The operation that wrote it (counter, actor): orders candidates alike everywhere.
    op: OpId,
    /// The change that wrote it (a revoked author's value counts only in the revoke's
    /// causal past): an index into [`Doc::changes`] ([`Doc::change_of`]).
    change: u32,
    /// Interned ([`Doc::authors`]): a mesh has few authors and many facts.
    author: Arc<str>,
    fact: Fact,
}

/// One root fact, decoded and admitted.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Fact {
    /// Without its body, which is read from the document when shown (`body.rs`).
    Story(Arc<StoryFact>),
    Node(Arc<NodeFact>),
    Claim(Arc<ClaimFact>),
    Release(Arc<ReleaseFact>),
    Result(Arc<ResultFact>),
    Merge(Arc<MergeFact>),
    Knowledge(Arc<KnowledgeFact>),
    Admit(Arc<RosterFact>),
    Revoke(Arc<RosterFact>),
    Command(Arc<CommandFact>),
    Budget(Arc<BudgetFact>),
    Notified(Arc<crate::core::notify::NotifiedFact>),
    Epoch(Arc<EpochFact>),
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
            candidates: BTreeMap::new(),
            packed: 0,
            authors: BTreeSet::new(),
            actors: BTreeSet::new(),
            paths: BTreeSet::new(),
            changes: Vec::new(),
            finished: BTreeMap::new(),
            roster: Roster::default(),
            revoke_past: BTreeMap::new(),
            scanned: Vec::new(),
            rejected: BTreeMap::new(),
            refused: RefusedLog::default(),
            writer: Writer::None,
            scheme: KeyScheme::PeerIds,
            own_seals_hold: None,
            vouch_from: VOUCH_FROM,
            local_change: None,
            local_log: VecDeque::new(),
            stored: 0,
            cap: u64::MAX,
            bad_signatures: BTreeSet::new(),
            trusted: None,
            saved: Vec::new(),
            checker: None,
            changed: None,
            base: None,
            root: None,
        }
    }

    /// Caps what the document may take on disk at `cap` bytes: past it, a local write
    /// fails with [`StateError::Full`] (nothing is written) and a peer's sync message or
    /// push that brings changes is refused whole, with the same error, before automerge
    /// reads it. Nothing is dropped half-way, so replicas stay consistent; a mesh whose
    /// documents reach the cap stops growing and says so (`status`). A message counts
    /// with its bytes as they arrive (compressed), so the document can pass the cap by
    /// what one accepted message takes once stored.
    pub fn with_size_cap(mut self, cap: u64) -> Doc {
        self.cap = cap;
        self
    }

    /// Bytes the document takes on disk (the last snapshot plus later incremental saves).
    pub fn stored_bytes(&self) -> u64 {
        self.stored
    }

    /// The size cap in bytes (`u64::MAX`: none).
    pub fn size_cap(&self) -> u64 {
        self.cap
    }

    /// Refuses `incoming` more bytes when they would take the document past its cap.
    pub(super) fn room_for(&self, incoming: u64) -> Result<(), StateError> {
        if incoming > 0 && self.stored.saturating_add(incoming) > self.cap {
            return Err(StateError::Full {
                stored: self.stored,
                cap: self.cap,
            });
        }
        Ok(())
    }

    /// This document's local writes are signed by `signer`, and only in its name.
    pub fn with_signer(mut self, signer: Signer) -> Doc {
        self.writer = Writer::Node(Box::new(signer));
        self.own_seals_hold = None;
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

    /// How many values were refused, all authors and kinds.
    pub(super) fn rejected_total(&self) -> u64 {
        self.rejected.values().flat_map(|k| k.values()).sum()
    }

    /// Values refused so far, by the author they name (`?` when none) and kind.
    pub fn rejected(&self) -> &BTreeMap<String, BTreeMap<FactKind, u64>> {
        &self.rejected
    }

    /// Loads a document from a snapshot (possibly empty) plus incremental chunks. It
    /// verifies authors by peer id and cannot write until [`Doc::with_signer`].
    pub fn load(actor: [u8; 16], snapshot: &[u8], chunks: &[Vec<u8>]) -> Result<Doc, StateError> {
        Doc::load_with_operators(actor, snapshot, chunks, BTreeSet::new())
    }

    /// [`Doc::load`] then [`Doc::with_operators`], reading the changes once.
    pub fn load_with_operators(
        actor: [u8; 16],
        snapshot: &[u8],
        chunks: &[Vec<u8>],
        operators: BTreeSet<String>,
    ) -> Result<Doc, StateError> {
        Doc::load_as(
            actor,
            snapshot,
            &[],
            chunks,
            KeyScheme::PeerIds,
            operators,
            None,
        )
    }

    /// [`Doc::load`] then [`Doc::with_test_names`], reading the changes once.
    pub fn load_test_names(
        actor: [u8; 16],
        snapshot: &[u8],
        chunks: &[Vec<u8>],
    ) -> Result<Doc, StateError> {
        Doc::load_any_name(actor, snapshot, chunks, KeyScheme::TestNames)
    }

    /// Benchmarks only ([`KeyScheme::Unchecked`]): [`Doc::load_test_names`] with
    /// signatures neither made nor checked, to measure what facts cost without them.
    #[doc(hidden)]
    pub fn load_unchecked(
        actor: [u8; 16],
        snapshot: &[u8],
        chunks: &[Vec<u8>],
    ) -> Result<Doc, StateError> {
        Doc::load_any_name(actor, snapshot, chunks, KeyScheme::Unchecked)
    }

    /// A document that writes in any plain name, under `scheme`.
    fn load_any_name(
        actor: [u8; 16],
        snapshot: &[u8],
        chunks: &[Vec<u8>],
        scheme: KeyScheme,
    ) -> Result<Doc, StateError> {
        let mut doc = Doc::load_as(actor, snapshot, &[], chunks, scheme, BTreeSet::new(), None)?;
        doc.writer = Writer::AnyTestName;
        Ok(doc)
    }

    /// `checked`: the record of the snapshot's checks ([`Doc::save_checked`]; empty for
    /// none); `checker`: checks the signatures of many values at once (a load, a join).
    fn load_as(
        actor: [u8; 16],
        snapshot: &[u8],
        checked: &[u8],
        chunks: &[Vec<u8>],
        scheme: KeyScheme,
        operators: BTreeSet<String>,
        checker: Option<crate::core::trust::Checker>,
    ) -> Result<Doc, StateError> {
        let mut inner = if snapshot.is_empty() {
            AutoCommit::new()
        } else {
            AutoCommit::load(snapshot).map_err(|e| StateError::Corrupt(e.to_string()))?
        };
        inner.set_actor(ActorId::from(actor.as_slice()));
        let mut doc = Doc::wrap(inner);
        doc.scheme = scheme;
        doc.roster.operators = operators;
        doc.checker = checker;
        if let Some(recheck) = doc.trusted_by(checked) {
            // The snapshot's facts first, with the signatures it checked spared.
            doc.trusted = Some(recheck);
            doc.refresh();
            doc.trusted = None;
        }
        for c in chunks {
            doc.inner
                .load_incremental(c)
                .map_err(|e| StateError::Corrupt(e.to_string()))?;
        }
        doc.stored = chunks
            .iter()
            .map(|c| c.len() as u64)
            .sum::<u64>()
            .saturating_add(snapshot.len() as u64);
        // The first refresh reads every change (or those after a checked snapshot);
        // later ones only the new.
        doc.refresh();
        // All of it came from the store.
        doc.saved = doc.inner.get_heads();
        Ok(doc)
    }

    /// Bytes of every change since the last save (empty when nothing changed).
    pub fn save_incremental(&mut self) -> Vec<u8> {
        let chunk = self.inner.document().save_after(&self.saved);
        if !chunk.is_empty() {
            self.saved = self.inner.get_heads();
        }
        self.stored = self.stored.saturating_add(chunk.len() as u64);
        chunk
    }

    /// A compacted snapshot of the whole document (what is stored from now on).
    pub fn save(&mut self) -> Vec<u8> {
        let snapshot = self.inner.save();
        self.saved = self.inner.get_heads();
        self.stored = snapshot.len() as u64;
        snapshot
    }

    /// The document's heads (what [`Doc::rewound`] goes back to).
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.inner.get_heads()
    }

    /// This document as it was at `heads` (its own earlier heads), with the same writer,
    /// key scheme, operators and size cap, `stored` bytes on disk: the automerge history
    /// forked there and every fact read again. That costs a load, paid only on the rare
    /// undo of a local write that could not be made durable; keeping a copy of the
    /// document before every write instead cost a copy per write, as much as a fold.
    pub fn rewound(&mut self, heads: &[ChangeHash], stored: u64) -> Result<Doc, StateError> {
        let inner = self
            .inner
            .fork_at(heads)
            .map_err(|e| StateError::Corrupt(format!("cannot go back to {heads:?}: {e}")))?;
        let mut doc = self.sibling(inner);
        doc.base = self.base.clone();
        doc.root = self.root;
        doc.stored = stored;
        doc.local_log = self
            .local_log
            .iter()
            .filter(|c| doc.inner.get_change_by_hash(&c.hash).is_some())
            .cloned()
            .collect();
        doc.refresh();
        Ok(doc)
    }

    /// The simulator's: a write of `n` stories or more is vouched for by seals (1: every
    /// one, so that its runs take seals down every path a bulk write's take).
    pub(crate) fn vouching_from(mut self, n: usize) -> Doc {
        self.vouch_from = n.max(1);
        self
    }

    /// A document over `inner`, under this one's actor, that writes, checks and caps as
    /// this one does (same writer, key scheme, operators, size cap, checker and the
    /// size from which a write is vouched for).
    pub(super) fn sibling(&self, mut inner: AutoCommit) -> Doc {
        inner.set_actor(self.inner.get_actor().clone());
        let mut doc = Doc::wrap(inner);
        doc.writer = self.writer.clone();
        doc.scheme = self.scheme;
        doc.own_seals_hold = self.own_seals_hold;
        doc.vouch_from = self.vouch_from;
        doc.roster.operators = self.roster.operators.clone();
        doc.cap = self.cap;
        doc.checker = self.checker.clone();
        doc
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
        self.sync_generate_sized(state).map(|(m, _)| m)
    }

    /// [`Doc::sync_generate`], with the bytes of the changes the message carries.
    pub fn sync_generate_sized(&mut self, state: &mut SyncState) -> Option<(Vec<u8>, u64)> {
        self.inner.sync().generate_sync_message(state).map(|m| {
            let changes = m.changes.iter().map(|c| c.len() as u64).sum();
            (m.encode(), changes)
        })
    }

    /// Applies a sync message from a peer. Returns whether the document changed.
    pub fn sync_receive(
        &mut self,
        state: &mut SyncState,
        bytes: &[u8],
    ) -> Result<bool, StateError> {
        let msg = sync::Message::decode(bytes).map_err(|e| StateError::Sync(e.to_string()))?;
        self.room_for(msg.changes.iter().map(|c| c.len() as u64).sum())?;
        let before = self.inner.get_heads();
        receive::receive(&mut self.inner, state, msg)
            .map_err(|e| StateError::Sync(e.to_string()))?;
        let changed = self.inner.get_heads() != before;
        if changed {
            self.refresh();
        }
        Ok(changed)
    }

    /// Every admitted value of every key, chosen or not, as the audit trail reads them
    /// ([`super::audit`]).
    pub(super) fn candidates(&self) -> impl Iterator<Item = Admitted<'_>> {
        self.candidates.iter().flat_map(move |(key, e)| {
            let chosen = self.chosen(key);
            let roster = FactKind::of_key(key).is_some_and(FactKind::by_operator);
            e.all.iter().map(move |c| Admitted {
                key,
                author: &c.author,
                fact: &c.fact,
                op: (c.op.0, &*c.op.1),
                chosen: chosen.is_some_and(|x| std::ptr::eq(x, c)),
                member: roster || self.roster.counts(&c.author, self.change_of(c)),
            })
        })
    }

    /// The chosen fact of `key`, if any.
    pub(super) fn fact(&self, key: &str) -> Option<&Fact> {
        self.facts().get(key)
    }

    /// The chosen fact of every key.
    pub(in crate::core::state) fn facts(&self) -> Facts<'_> {
        Facts(&self.candidates)
    }

    /// How many claims the document holds (a chosen fact per claim key): a walk over
    /// the claim keys, no fold.
    pub fn claim_count(&self) -> usize {
        self.facts().with_prefix(CLAIM_PREFIX).count()
    }

    /// The keys of every admitted fact.
    pub fn fact_keys(&self) -> impl Iterator<Item = &str> {
        self.facts().keys().map(FactKey::as_str)
    }

    /// The current view: a pure function of the document.
    pub fn view(&self) -> View {
        self.view_and_claims().0
    }

    /// Whether `holder` has a claim numbered at most `upto` (ids `{holder}-N`) that no
    /// release names: a lookup over its own claims, not a fold (it runs on every change
    /// a peer brings).
    pub fn has_unreleased_claims_upto(&self, holder: &str, upto: u64) -> bool {
        let prefix = format!("{CLAIM_PREFIX}{holder}-");
        let facts = self.facts();
        let unreleased = facts.with_prefix(&prefix).any(|(k, f)| {
            let n = k[prefix.len()..].parse::<u64>().ok();
            matches!(f, Fact::Claim(c) if c.holder == holder)
                && n.is_some_and(|n| n <= upto)
                && !facts
                    .contains_key(format!("{RELEASE_PREFIX}{}", &k[CLAIM_PREFIX.len()..]).as_str())
        });
        unreleased
    }

    /// The current view and its claim fold (what `view().claims()` gives, without
    /// folding the claims twice).
    pub fn view_and_claims(&self) -> (View, Claims) {
        let (mut view, claims) = View::fold(self.facts(), self.base.as_ref());
        view.malformed += self.rejected_total();
        view.roster = self.roster.view();
        (view, claims)
    }

    /// Forgets which keys changed: whoever folds the view next starts from here.
    pub fn take_changes(&mut self) -> Option<BTreeSet<String>> {
        self.changed.replace(BTreeSet::new())
    }

    /// Brings `view` and `claims` — this document's view and claim fold as they were
    /// when [`Doc::take_changes`] or this last ran — up to date with the facts chosen
    /// since, without a fold where [`View::apply_changes`] can. Returns false when it
    /// cannot (the view and claims are then unspecified: fold again).
    pub fn update_view(&mut self, view: &mut View, claims: &mut Claims) -> bool {
        let Some(keys) = self.take_changes() else {
            return false;
        };
        if !view.apply_changes(claims, self.facts(), &keys) {
            return false;
        }
        view.malformed = view.notes.malformed + self.rejected_total();
        view.roster = self.roster.view();
        true
    }
}
