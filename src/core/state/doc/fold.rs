//! How values become facts: every root value of every new change is read, admitted or
//! refused (counted per author and kind), and each key's fact is chosen among its
//! admitted values whose authors count on the roster.

use super::*;
use std::borrow::Cow;
use std::collections::HashMap;

/// A root value read from a change: key, kind, the value (`None`: not a string), the
/// operation that wrote it, its change.
type Value<'a> = (&'a str, FactKind, Option<&'a str>, OpId, ChangeHash);

/// A seal read from a change (see `trust::vouch`): its change, key and value.
type Seal<'a> = (ChangeHash, &'a str, &'a str);

/// Fewer values than this are checked one by one even with a `Checker`: a batch is
/// worth it for a load or a join, not for one change.
const BATCH_CHECK_MIN: usize = 256;

/// Maps smaller than this are not worth rebuilding (`Doc::repack`).
const REPACK_MIN: usize = 1024;

/// The values a change puts at root keys, in order: the operation that wrote each
/// (counter, actor), its key and its value. (Deletes and anything else change no fact.)
pub(super) fn root_puts(
    ex: &automerge::ExpandedChange,
) -> impl Iterator<Item = (OpId, &str, &ScalarValue)> + '_ {
    let actor: Arc<[u8]> = ex.actor_id.to_bytes().into();
    ex.operations.iter().enumerate().filter_map(move |(i, op)| {
        if op.obj != automerge::legacy::ObjectId::Root {
            return None;
        }
        match (&op.key, &op.action) {
            (automerge::legacy::Key::Map(key), automerge::legacy::OpType::Put(value)) => Some((
                (ex.start_op.get().saturating_add(i as u64), actor.clone()),
                key.as_str(),
                value,
            )),
            _ => None,
        }
    })
}

impl Doc {
    /// Brings the decoded facts up to date with the document: reads every root value
    /// written by the changes since the last call (the first call reads them all), admits
    /// or refuses each, and re-chooses the fact of every key that gained a candidate.
    pub(in crate::core::state) fn refresh(&mut self) {
        let heads = self.inner.get_heads();
        if heads == self.scanned {
            return;
        }
        let changes = self.inner.get_changes(&self.scanned);
        self.scanned = heads;
        let decoded: Vec<(ChangeHash, automerge::ExpandedChange)> =
            changes.iter().map(|c| (c.hash(), c.decode())).collect();
        // Every root value, in order, and the seals beside them (no facts themselves).
        let mut values: Vec<Value<'_>> = Vec::new();
        let mut seals: Vec<Seal<'_>> = Vec::new();
        for (hash, ex) in &decoded {
            for (op, key, value) in root_puts(ex) {
                let Some(kind) = FactKind::of_key(key) else {
                    if let (true, ScalarValue::Str(v)) =
                        (key.starts_with(trust::SEAL_PREFIX), value)
                    {
                        seals.push((*hash, key, v.as_str()));
                    }
                    continue;
                };
                let value = match value {
                    ScalarValue::Str(v) => Some(v.as_str()),
                    _ => None,
                };
                values.push((key, kind, value, op, *hash));
            }
        }
        let verdicts = self.verdicts(&values, &seals);
        // Keys borrowed from the decoded changes, not copied: they outlive the pass.
        let mut touched: BTreeSet<Cow<'_, str>> = BTreeSet::new();
        for ((key, kind, value, op, hash), verdict) in values.into_iter().zip(verdicts) {
            let Some(value) = value else {
                self.reject(key, kind, None, Refusal::Malformed);
                continue;
            };
            self.consider(key, kind, value, op, hash, verdict, &mut touched);
        }
        let roster_touched = touched
            .iter()
            .any(|k| k.starts_with(ADMIT_PREFIX) || k.starts_with(REVOKE_PREFIX));
        self.choose_all(touched.iter().map(|k| k.as_ref()));
        if roster_touched && self.rebuild_roster() {
            // Who counts changed: every key is chosen again.
            let keys: Vec<FactKey> = self.candidates.keys().cloned().collect();
            self.choose_all(keys.iter().map(FactKey::as_str));
        }
        self.repack();
    }

    /// Rebuilds `candidates` with full nodes once it has doubled since the last time.
    /// Keys mostly arrive in order (a load, a join, a bulk write), and a map filled in
    /// order leaves its nodes half empty. Amortised, a key costs O(1) more.
    fn repack(&mut self) {
        let len = self.candidates.len();
        if len < REPACK_MIN || len < self.packed.saturating_mul(2) {
            return;
        }
        self.candidates = std::mem::take(&mut self.candidates).into_iter().collect();
        self.changes.shrink_to_fit();
        self.packed = len;
    }

    /// Chooses the fact of each key, releases last (whether a claim is finished depends
    /// on its results and merges as chosen).
    pub(super) fn choose_all<'a>(&mut self, keys: impl Iterator<Item = &'a str> + Clone) {
        for key in keys.clone().filter(|k| !k.starts_with(RELEASE_PREFIX)) {
            self.choose(key);
        }
        for key in keys.filter(|k| k.starts_with(RELEASE_PREFIX)) {
            self.choose(key);
        }
    }

    /// Folds the roster from the chosen roster facts; whether it changed.
    pub(super) fn rebuild_roster(&mut self) -> bool {
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
                by: c.author.to_string(),
                note: f.note.clone(),
                at_ms: f.at_ms,
            };
            if matches!(c.fact, Fact::Admit(_)) {
                admitted.insert(f.peer.clone(), entry);
            } else {
                revoked_at.push((entry, *self.change_of(c)));
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
    pub(super) fn past_of(&mut self, change: &ChangeHash) -> Arc<HashSet<ChangeHash>> {
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
    pub(super) fn rescan(&mut self) {
        self.changed = None;
        self.candidates.clear();
        self.packed = 0;
        self.authors.clear();
        self.actors.clear();
        self.paths.clear();
        self.changes.clear();
        self.finished.clear();
        self.roster.admitted.clear();
        self.roster.revoked.clear();
        self.rejected.clear();
        self.refused.clear();
        self.scanned.clear();
        self.refresh();
    }

    /// The signature verdict of each value known before it is admitted (see
    /// [`admit_with`]): spared for a value of a checked snapshot ([`Doc::load_stored`])
    /// and for a local write read back (admitted as it was written, `Doc::put_sealed`);
    /// for a vouched value, whether a seal of its own change vouches for it (each seal
    /// checked once); and with a `Checker` and many values, all checked in one batch
    /// (the shell's checker may use several cores).
    fn verdicts(&self, values: &[Value<'_>], seals: &[Seal<'_>]) -> Vec<Option<bool>> {
        let spared = |op: &OpId| {
            self.trusted
                .as_ref()
                .is_some_and(|recheck| !recheck.contains(op))
        };
        let mut verdicts: Vec<Option<bool>> = values
            .iter()
            .map(|(_, _, _, op, change)| {
                (spared(op) || self.local_change == Some(*change)).then_some(true)
            })
            .collect();
        self.vouched_verdicts(values, seals, &mut verdicts);
        let Some(checker) = &self.checker else {
            return verdicts;
        };
        let (mut at, mut checks) = (Vec::new(), Vec::new());
        for (i, (key, _, value, _, _)) in values.iter().enumerate() {
            if verdicts[i].is_some() {
                continue;
            }
            // A value that fails before its signature is left to `admit`.
            if let Some(c) = value.and_then(|v| trust::sig_check(key, v, self.scheme)) {
                at.push(i);
                checks.push(c);
            }
        }
        if checks.len() < BATCH_CHECK_MIN {
            return verdicts;
        }
        let held = (checker.0)(&checks);
        for (i, ok) in at.into_iter().zip(held) {
            verdicts[i] = Some(ok);
        }
        verdicts
    }

    /// The verdicts of the vouched values among `values` not decided yet: held if a
    /// seal in the value's own change checks and lists it (a function of that change
    /// alone, so every node gives the same). A value that fails before its proof is left
    /// to `admit`, which says why.
    fn vouched_verdicts(
        &self,
        values: &[Value<'_>],
        seals: &[Seal<'_>],
        verdicts: &mut [Option<bool>],
    ) {
        let vouched: Vec<usize> = (0..values.len())
            .filter(|&i| {
                let (key, _, value, _, _) = &values[i];
                verdicts[i].is_none()
                    && value.is_some_and(|v| trust::needs_seal(key, v, self.scheme))
            })
            .collect();
        if vouched.is_empty() {
            return;
        }
        let changes: HashSet<&ChangeHash> = vouched.iter().map(|&i| &values[i].4).collect();
        // The seals of those changes, each signature checked once (by the checker if
        // there is one: a join may bring a hundred).
        let mut opened: Vec<(ChangeHash, trust::OpenedSeal<'_>)> = seals
            .iter()
            .filter(|(c, _, _)| changes.contains(c))
            .filter_map(|(c, k, v)| Some((*c, trust::open_seal(k, v, self.scheme)?)))
            .collect();
        let checks: Vec<trust::SigCheck> =
            opened.iter().filter_map(|(_, s)| s.check.clone()).collect();
        let mut held = match &self.checker {
            Some(checker) if !checks.is_empty() => (checker.0)(&checks),
            _ => checks.iter().map(trust::SigCheck::holds).collect(),
        }
        .into_iter();
        opened.retain(|(_, s)| s.check.is_none() || held.next() == Some(true));
        let mut by_change: HashMap<ChangeHash, Vec<&trust::OpenedSeal<'_>>> = HashMap::new();
        for (c, s) in &opened {
            by_change.entry(*c).or_default().push(s);
        }
        for i in vouched {
            let (key, _, value, _, change) = &values[i];
            let holds = value.is_some_and(|v| {
                by_change
                    .get(change)
                    .is_some_and(|seals| seals.iter().any(|s| s.vouches(key, v)))
            });
            verdicts[i] = Some(holds);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn consider<'a>(
        &mut self,
        key: &'a str,
        kind: FactKind,
        value: &str,
        mut op: OpId,
        change: ChangeHash,
        verdict: Option<bool>,
        touched: &mut BTreeSet<Cow<'a, str>>,
    ) {
        match admit_with(
            kind,
            key,
            value,
            self.scheme,
            &self.roster.operators,
            verdict,
        ) {
            Ok((author, mut fact)) => {
                let claim = match &fact {
                    Fact::Result(f) => Some(f.claim.clone()),
                    Fact::Merge(f) => Some(f.claim.clone()),
                    _ => None,
                };
                if let Some(claim) = claim {
                    // A finished claim's takeover release no longer counts.
                    touched.insert(Cow::Owned(format!("{RELEASE_PREFIX}{claim}")));
                    self.finished
                        .entry(claim)
                        .or_default()
                        .insert(key.to_string());
                }
                let author = match self.authors.get(author.as_str()) {
                    Some(known) => known.clone(),
                    None => {
                        let new: Arc<str> = author.into();
                        self.authors.insert(new.clone());
                        new
                    }
                };
                if let Fact::Story(s) = &mut fact {
                    let s = Arc::make_mut(s);
                    // Its creator is its author (`admit` checked): one shared copy.
                    s.created_by = author.clone();
                    // Kept out of memory: read from the document when shown (`body.rs`).
                    s.body = Box::default();
                    // Decoded into room for four (serde cannot know JSON's lengths): most
                    // stories plan one file (~6 MB at 100,000 stories).
                    s.files.shrink_to_fit();
                    for f in s.files.iter_mut() {
                        match self.paths.get(&**f) {
                            Some(known) => *f = known.clone(),
                            None => {
                                self.paths.insert(f.clone());
                            }
                        }
                    }
                    s.labels.shrink_to_fit();
                    s.depends_on.shrink_to_fit();
                }
                match self.actors.get(&op.1) {
                    Some(known) => op.1 = known.clone(),
                    None => {
                        self.actors.insert(op.1.clone());
                    }
                }
                // A change's values are read one after another.
                if self.changes.last() != Some(&change) {
                    self.changes.push(change);
                }
                let change = u32::try_from(self.changes.len() - 1).unwrap_or(u32::MAX);
                let all = &mut self.candidates.entry(FactKey::from(key)).or_default().all;
                if !all.iter().any(|c| c.op == op) {
                    all.push(Candidate {
                        op,
                        change,
                        author,
                        fact,
                    });
                }
                touched.insert(Cow::Borrowed(key));
            }
            Err(why) => {
                if why == Refusal::Unsealed(trust::Unsealed::BadSignature) {
                    self.bad_signatures.insert(op);
                }
                self.reject(key, kind, trust::claimed_author(value), why)
            }
        }
    }

    /// Counts a refused value against the author it names, and says so once per author.
    pub(super) fn reject(&mut self, key: &str, kind: FactKind, author: Option<&str>, why: Refusal) {
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

    /// The change that wrote candidate `c`.
    pub(super) fn change_of(&self, c: &Candidate) -> &ChangeHash {
        // Every index was pushed with its candidate (`consider`); none can be missing.
        static NONE: ChangeHash = ChangeHash([0; 32]);
        self.changes.get(c.change as usize).unwrap_or(&NONE)
    }

    /// The fact key `key` shows, among its admitted candidates whose authors count (see
    /// [`Roster::counts`]): a node's description is its latest; everything else is
    /// write-once, so the first write stands (a second one by the same author cannot
    /// replace it) — and a takeover's release of a claim that has a counted result or
    /// merge does not count at all, so the holder's own release stands. "First" and
    /// "latest" are by the writing operation's id, which every node orders alike.
    pub(super) fn chosen(&self, key: &str) -> Option<&Candidate> {
        let i = self.chosen_at(key)?;
        self.candidates.get(key)?.all.get(i)
    }

    /// [`Doc::chosen`]'s index among the key's candidates.
    fn chosen_at(&self, key: &str) -> Option<usize> {
        let all = self.candidates.get(key)?.all.iter().enumerate();
        let kind = FactKind::of_key(key);
        let roster = kind.is_some_and(FactKind::by_operator);
        let counts = |(_, c): &(usize, &Candidate)| {
            roster || self.roster.counts(&c.author, self.change_of(c))
        };
        let first = |(_, a): &(usize, &Candidate), (_, b): &(usize, &Candidate)| a.op.cmp(&b.op);
        let chosen = match kind {
            // The latest run's, then the latest write's: an older run's value replayed
            // (re-put by anyone, as it is validly signed) never comes back.
            Some(FactKind::Node) => all
                .filter(counts)
                .max_by_key(|(_, c)| (node_incarnation(&c.fact), &c.op)),
            Some(FactKind::Release) => {
                let id = key.strip_prefix(RELEASE_PREFIX).unwrap_or(key);
                let holder = claim_id_holder(id);
                let finished = self
                    .finished
                    .get(id)
                    .is_some_and(|keys| keys.iter().any(|k| self.facts().contains_key(k.as_str())));
                all.filter(counts)
                    .filter(|(_, c)| Some(&*c.author) == holder || !finished)
                    .min_by(first)
            }
            _ => all.filter(counts).min_by(first),
        };
        chosen.map(|(i, _)| i)
    }

    pub(super) fn choose(&mut self, key: &str) {
        let chosen = self.chosen_at(key).and_then(|i| u32::try_from(i).ok());
        let Some(e) = self.candidates.get_mut(key) else {
            return;
        };
        let old = e.fact().cloned();
        e.chosen = chosen;
        // A different value, not a different candidate with the same one.
        if old.as_ref() != e.fact() {
            self.note_changed(key);
        }
    }

    /// Records that the fact of `key` changed (see `Doc::changed`).
    fn note_changed(&mut self, key: &str) {
        if let Some(keys) = self.changed.as_mut() {
            if keys.len() >= MAX_CHANGED {
                self.changed = None;
            } else if !keys.contains(key) {
                keys.insert(key.to_string());
            }
        }
    }
}

/// The incarnation a node description carries (0 for any other fact).
fn node_incarnation(f: &Fact) -> u64 {
    match f {
        Fact::Node(n) => n.incarnation,
        _ => 0,
    }
}
