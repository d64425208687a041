//! How values become facts: every root value of every new change is read, admitted or
//! refused (counted per author and kind), and each key's fact is chosen among its
//! admitted values whose authors count on the roster.

use super::*;

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
    pub(super) fn choose_all<'a>(&mut self, keys: impl Iterator<Item = &'a String> + Clone) {
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

    pub(super) fn consider(
        &mut self,
        key: &str,
        kind: FactKind,
        value: &str,
        op: (u64, Vec<u8>),
        change: ChangeHash,
        touched: &mut BTreeSet<String>,
    ) {
        let verify = self
            .trusted
            .as_ref()
            .is_none_or(|recheck| recheck.contains(&op));
        match admit_as(
            kind,
            key,
            value,
            self.scheme,
            &self.roster.operators,
            verify,
        ) {
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

    /// The fact key `key` shows, among its admitted candidates whose authors count (see
    /// [`Roster::counts`]): a node's description is its latest; everything else is
    /// write-once, so the first write stands (a second one by the same author cannot
    /// replace it) — and a takeover's release of a claim that has a counted result or
    /// merge does not count at all, so the holder's own release stands. "First" and
    /// "latest" are by the writing operation's id, which every node orders alike.
    pub(super) fn chosen(&self, key: &str) -> Option<&Candidate> {
        let all = self.candidates.get(key)?;
        let kind = FactKind::of_key(key);
        let roster = kind.is_some_and(FactKind::by_operator);
        let counts = |c: &&Candidate| roster || self.roster.counts(&c.author, &c.change);
        match kind {
            // The latest run's, then the latest write's: an older run's value replayed
            // (re-put by anyone, as it is validly signed) never comes back.
            Some(FactKind::Node) => all
                .iter()
                .filter(counts)
                .max_by_key(|c| (node_incarnation(&c.fact), &c.op)),
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

    pub(super) fn choose(&mut self, key: &str) {
        match self.chosen(key).map(|c| c.fact.clone()) {
            Some(fact) => {
                self.facts.insert(key.to_string(), fact);
            }
            None => {
                self.facts.remove(key);
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
