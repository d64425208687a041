//! Retiring settled history (DESIGN.md §3.5): a new epoch's document, seeded with the
//! live facts of this one.
//!
//! Automerge keeps every change forever, so a document only grows; the only way to shed
//! a finished story's history is a new document. A merged story decides nothing any
//! more but that it landed, so its whole history stays behind (for the archive): its
//! story fact, its results (with the handoffs, most of a story's bytes) and merges, and
//! the claims naming it with their releases. The new document's [`Base`] says what the
//! live mesh still reads of it: its key, display id and landed commit, and the highest
//! token each file or gate reached among the claims left behind (its floor).
//!
//! The seed keeps every other fact: every fact of a story not merged, every fact of a
//! kind that is not a story's work (nodes, knowledge, roster, commands, budget,
//! notifications), every claim that counts and names no merged story, with its release.
//! A merged story stays live (it retires at a later epoch) while a claim of it that
//! counts is not released. A file's floor ranks with the claims kept on it as the claim
//! it stands for did, so a kept claim below it, or one written before the cut and heard
//! after, counts and fares as it did here. A claim that does not count yet is copied
//! all the same (a late claim filling the gap below it would make it count).
//!
//! A seed is a function of the document's heads alone. It is one change by an actor
//! derived from the epoch's number, dated 0, the kept keys in order, each holding the
//! value its chosen candidate holds here, byte for byte as its author sealed it, and the
//! base under [`BASE_KEY`]: any two nodes at the same heads build the same change (the
//! same hash), so proposals cut at the same heads converge, and every copied value is
//! still checked against its author's signature where it lands. The base is signed by
//! no one: a document trusts it only in the change it knows by hash as its root
//! ([`Doc::with_epoch_root`]). A revoked author's facts that counted are copied into the
//! same change as the revoke, which is its own causal past: they count there too, and
//! nothing the author writes after the seed does.

use super::fold::root_puts;
use super::*;
use automerge::transaction::CommitOptions;
use std::collections::HashMap;

/// A new epoch's document, built by [`Doc::seed`].
#[derive(Debug, Clone)]
pub struct Seed {
    /// The new document, saved whole.
    pub bytes: Vec<u8>,
    /// Its one change: what a node opens it with ([`Doc::with_epoch_root`]).
    pub root: ChangeHash,
    /// This document's heads it was cut at.
    pub cut: Vec<ChangeHash>,
    /// Facts copied into the seed, and facts left behind.
    pub kept: usize,
    pub retired: usize,
    /// Merged stories retired by this seed (their whole history left behind).
    pub stories: usize,
}

/// A change's root values that are strings: the operation, key and value.
fn string_puts(ex: &automerge::ExpandedChange) -> Vec<(OpId, &str, &str)> {
    root_puts(ex)
        .filter_map(|(id, key, value)| match value {
            ScalarValue::Str(v) => Some((id, key, v.as_str())),
            _ => None,
        })
        .collect()
}

/// The seals to copy into a new epoch's change with the vouched values copied there
/// (`trust::vouch`), by key: a vouched value checks only beside a seal of its own change.
#[derive(Default)]
struct Seals(BTreeMap<String, String>);

impl Seals {
    /// For each vouched value of `copied` (key, value), all from the change whose
    /// string root values are `puts`: the first seal of that change that checks and
    /// vouches for it, as `Doc::refresh` found it when it admitted the value.
    fn add(&mut self, puts: &[(OpId, &str, &str)], copied: &[(&str, &str)], scheme: KeyScheme) {
        if !copied.iter().any(|(_, v)| trust::open_vouched(v).is_some()) {
            return;
        }
        let opened: Vec<(&str, &str, trust::OpenedSeal<'_>)> = puts
            .iter()
            .filter(|(_, k, _)| k.starts_with(trust::SEAL_PREFIX))
            .filter_map(|(_, k, v)| Some((*k, *v, trust::open_seal(k, v, scheme)?)))
            .filter(|(_, _, s)| s.check.as_ref().is_none_or(trust::SigCheck::holds))
            .collect();
        for (key, value) in copied {
            if let Some((k, v, _)) = opened.iter().find(|(_, _, s)| s.vouches(key, value)) {
                self.0
                    .entry((*k).to_string())
                    .or_insert_with(|| (*v).to_string());
            }
        }
    }
}

/// The actor that writes epoch `epoch`'s seed, the same on every node: `mesh-epo` and
/// the number, 16 bytes.
fn seed_actor(epoch: u64) -> automerge::ActorId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(b"mesh-epo");
    id[8..].copy_from_slice(&epoch.to_be_bytes());
    automerge::ActorId::from(id.to_vec())
}

/// Whether `claim` proposed a move to epoch `epoch` or an earlier one: such claims (and
/// their releases and cuts) stay behind in the epoch they moved from.
fn moved_here(claim: &ClaimFact, epoch: u64) -> bool {
    claim
        .resources
        .iter()
        .any(|(r, _)| r.epoch().is_some_and(|n| n <= epoch))
}

/// What a new epoch leaves behind, and what it inherits.
struct Retirement {
    /// The keys whose facts the seed does not copy.
    keys: BTreeSet<FactKey>,
    base: Base,
    /// Stories retired now (not by an earlier epoch).
    stories: usize,
}

impl Doc {
    /// Opens this document as an epoch's: `root` is the hash of its seed change (which
    /// this node built itself from the agreed cut, [`Seed::root`]), whose [`Base`] the
    /// view then folds with. Fails when no such change is here or it is not a seed.
    pub fn with_epoch_root(mut self, root: &ChangeHash) -> Result<Doc, StateError> {
        let corrupt = |why: String| StateError::Corrupt(format!("epoch root {root}: {why}"));
        let change = self
            .inner
            .get_change_by_hash(root)
            .ok_or_else(|| corrupt("not in this document".into()))?;
        if !change.deps().is_empty() {
            return Err(corrupt(
                "has dependencies: a seed is a document's first change".into(),
            ));
        }
        let ex = change.decode();
        let json = root_puts(&ex).find_map(|(_, key, value)| match value {
            ScalarValue::Str(v) if key == BASE_KEY => Some(v.to_string()),
            _ => None,
        });
        let json = json.ok_or_else(|| corrupt(format!("writes no {BASE_KEY:?}")))?;
        let base = Base::parse(&json).map_err(|e| corrupt(format!("its base: {e}")))?;
        if ex.actor_id != seed_actor(base.epoch) {
            return Err(corrupt(format!(
                "not written by epoch {}'s seed actor",
                base.epoch
            )));
        }
        self.base = Some(Arc::new(base));
        self.root = Some(*root);
        self.changed = None;
        Ok(self)
    }

    /// What this document's epoch inherited (`None` in a mesh's first document).
    pub fn base(&self) -> Option<&Base> {
        self.base.as_deref()
    }

    /// The hash of this epoch's root change (`None` in a mesh's first document): the
    /// epoch a sync frame or beat names, so that no node takes in another epoch's
    /// changes (DESIGN.md §3.5).
    pub fn epoch_root(&self) -> Option<[u8; 32]> {
        self.root.map(|h| h.0)
    }

    /// What epoch `epoch`'s seed leaves behind (see the module's documentation).
    fn retirement(&self, epoch: u64) -> Result<Retirement, StateError> {
        let (view, counted) = self.view_and_claims();
        let old = self.base.as_deref();
        let was_retired = |k: &str| old.is_some_and(|b| b.retired.contains_key(k));
        let claims: BTreeMap<&str, &ClaimFact> = self
            .facts()
            .iter()
            .filter_map(|(k, f)| match f {
                Fact::Claim(c) => Some((k.strip_prefix(CLAIM_PREFIX).unwrap_or(k), &**c)),
                _ => None,
            })
            .collect();
        let stories_of = |c: &'_ ClaimFact| -> Vec<String> {
            c.resources
                .iter()
                .filter_map(|(r, _)| r.story_key().map(str::to_string))
                .collect()
        };
        // A merged story retires once every claim of it that counts is released: an open
        // one may still hold a file, and only this document can take it over.
        let open: BTreeSet<String> = view
            .claims
            .iter()
            .filter(|(id, _)| !counted.is_released(id))
            .flat_map(|(_, c)| stories_of(c))
            .collect();
        let retire: BTreeSet<&str> = view
            .stories
            .iter()
            .filter(|(k, s)| {
                s.status == StoryStatus::Merged
                    && s.more.merged.is_some()
                    && !open.contains(k.as_str())
            })
            .map(|(k, _)| k.as_str())
            .collect();
        let leaves = |k: &str| retire.contains(k) || was_retired(k);
        // Claims that stay behind: those naming a retired story. Each file's and gate's
        // top claim among those that count is its floor (ranked with the earlier epochs'
        // floors as the fold ranks claims). A claim that does not count stays behind
        // with its story, and no floor stands for it.
        let mut floors = old.map(|b| b.floors.clone()).unwrap_or_default();
        let mut gone: BTreeSet<&str> = BTreeSet::new();
        for (id, c) in &claims {
            // The proposals that moved the mesh here decide nothing in the new epoch.
            if moved_here(c, epoch) {
                gone.insert(id);
                continue;
            }
            if !stories_of(c).iter().any(|k| leaves(k)) {
                continue;
            }
            gone.insert(id);
            if !view.claims.contains_key(*id) {
                continue;
            }
            for (r, _) in c.resources.iter().filter(|(r, _)| r.story_key().is_none()) {
                let floor = counted.floor_of(id, r).ok_or_else(|| StateError::Write {
                    key: BASE_KEY.into(),
                    why: format!("claim {id} on {r} retires unreleased"),
                })?;
                match floors.get(r) {
                    Some(f) if !floor.beats(f) => {}
                    _ => {
                        floors.insert(r.clone(), floor);
                    }
                }
            }
        }
        let mut retired = old.map(|b| b.retired.clone()).unwrap_or_default();
        for k in &retire {
            let s = &view.stories[*k];
            let commit = s
                .more
                .merged
                .as_ref()
                .map(|m| m.commit.clone())
                .unwrap_or_default();
            retired.insert(
                k.to_string(),
                Retired {
                    id: s.id.to_string(),
                    commit,
                },
            );
        }
        let mut keys = BTreeSet::new();
        for (key, fact) in self.facts().iter() {
            let leave = match fact {
                Fact::Story(_) => key.strip_prefix(STORY_PREFIX).is_some_and(leaves),
                Fact::Result(r) => leaves(&r.story),
                Fact::Merge(m) => leaves(&m.story),
                Fact::Claim(_) => gone.contains(key.strip_prefix(CLAIM_PREFIX).unwrap_or(key)),
                Fact::Release(_) => gone.contains(key.strip_prefix(RELEASE_PREFIX).unwrap_or(key)),
                Fact::Epoch(e) => e.epoch <= epoch,
                _ => false,
            };
            if leave {
                keys.insert(key.clone());
            }
        }
        let stories = retire.len();
        // Story keys and display ids of this document's view, tokens of admitted claims
        // (never 0): a base that does not build is a bug, and no seed is better than one
        // that loses the stories it retired.
        let base = Base::new(epoch, retired, floors).map_err(|why| StateError::Write {
            key: BASE_KEY.into(),
            why,
        })?;
        Ok(Retirement {
            keys,
            base,
            stories,
        })
    }

    /// The seed of epoch `epoch` cut at `cut`, heads this document holds (it may have
    /// moved past them): what every node builds, whatever it has heard since, once the
    /// mesh has agreed where to cut. Forks the history there and reads it again (a load).
    pub fn seed_at(&mut self, epoch: u64, cut: &[ChangeHash]) -> Result<Seed, StateError> {
        if !self.holds_all(cut) {
            return Err(StateError::Corrupt(format!(
                "cannot cut epoch {epoch} at heads this document does not hold: {cut:?}"
            )));
        }
        self.rewound(cut, 0)?.seed(epoch)
    }

    /// Epoch `epoch`'s document, moved to from this one: the seed cut at `cut` (heads
    /// this document holds), which must build as `root` — every node builds it itself
    /// and refuses a root that differs, so no peer's word decides what a base retires —
    /// opened with that root, with every value admitted here after the cut carried in
    /// ([`Doc::carry_from`]). Same actor, writer, key scheme, operators, size cap and
    /// checker as this one. Reads the whole history (a load): a rare transition.
    pub fn next_epoch(
        &mut self,
        epoch: u64,
        cut: &[ChangeHash],
        root: &ChangeHash,
    ) -> Result<Doc, StateError> {
        let seed = self.seed_at(epoch, cut)?;
        if seed.root != *root {
            return Err(StateError::Corrupt(format!(
                "epoch {epoch}'s seed, cut at {} head(s), builds as {}, not {root}: not moving",
                cut.len(),
                seed.root
            )));
        }
        let inner = AutoCommit::load(&seed.bytes)
            .map_err(|e| StateError::Corrupt(format!("epoch {epoch}'s seed: {e}")))?;
        let mut doc = self.sibling(inner);
        doc.refresh();
        let mut doc = doc.with_epoch_root(root)?;
        doc.carry_from(self, cut)?;
        Ok(doc)
    }

    /// Copies into this epoch's document, cut from `old` at `cut` ([`Seed::cut`]), every
    /// value `old` admitted after the cut and counts, byte for byte as its author sealed
    /// it (checked again here), in one change; values this document already chose, and
    /// the story facts, results and merges of stories its base retired, are not copied.
    /// A claim naming a retired story is: it never counts here, but the file tokens it
    /// carries were reached in the old epoch, and the claims above them count only if
    /// they are reached here too. Returns how many were.
    ///
    /// The facts written in the old epoch while the mesh moves are carried this way, by
    /// whichever node sees them. A copy has a new operation id, and a key with several
    /// candidates chooses among them by operation id ([`Doc::chosen`]): the new epoch
    /// chooses as the old one did only where the cut was quiet — no claim, release or
    /// takeover in flight across it (see DESIGN.md §3.5).
    pub fn carry_from(&mut self, old: &mut Doc, cut: &[ChangeHash]) -> Result<usize, StateError> {
        old.refresh();
        let base = self.base.clone();
        let epoch = base.as_ref().map_or(0, |b| b.epoch);
        let old_facts = old.facts();
        let retired = |key: &str, fact: &Fact| {
            // The move itself (its proposals, their releases, its cut) stays behind.
            let claim = |id: &str| match old_facts.get(format!("{CLAIM_PREFIX}{id}").as_str()) {
                Some(Fact::Claim(c)) => moved_here(c, epoch),
                _ => false,
            };
            match fact {
                Fact::Epoch(e) if e.epoch <= epoch => return true,
                Fact::Claim(c) if moved_here(c, epoch) => return true,
                Fact::Release(_) if key.strip_prefix(RELEASE_PREFIX).is_some_and(claim) => {
                    return true
                }
                _ => {}
            }
            let Some(b) = &base else { return false };
            let story = match fact {
                Fact::Story(_) => key.strip_prefix(STORY_PREFIX),
                Fact::Result(r) => Some(r.story.as_str()),
                Fact::Merge(m) => Some(m.story.as_str()),
                _ => None,
            };
            story.is_some_and(|k| b.retired.contains_key(k))
        };
        // The admitted values that count in `old`, by the operation that wrote them.
        let mut counting: HashMap<OpId, &Fact> = HashMap::new();
        for (key, e) in &old.candidates {
            let all = &e.all;
            let roster = FactKind::of_key(key).is_some_and(FactKind::by_operator);
            for c in all {
                if (roster || old.roster.counts(&c.author, old.change_of(c)))
                    && !retired(key, &c.fact)
                    && self.facts().get(key) != Some(&c.fact)
                {
                    counting.insert(c.op.clone(), &c.fact);
                }
            }
        }
        let mut values: Vec<(OpId, String, String)> = Vec::new();
        let mut seals = Seals::default();
        for change in old.inner.get_changes(cut) {
            let ex = change.decode();
            let puts = string_puts(&ex);
            let copied: Vec<(&str, &str)> = puts
                .iter()
                .filter(|(id, _, _)| counting.contains_key(id))
                .map(|(id, k, v)| {
                    values.push((id.clone(), k.to_string(), v.to_string()));
                    (*k, *v)
                })
                .collect();
            seals.add(&puts, &copied, old.scheme);
        }
        if values.is_empty() {
            return Ok(0);
        }
        // In the old epoch's order of operations: keys with several candidates keep it.
        values.sort_by(|a, b| a.0.cmp(&b.0));
        // The seals vouching for copied values go with them, into the same change.
        let puts: Vec<(&String, &String)> = values
            .iter()
            .map(|(_, k, v)| (k, v))
            .chain(&seals.0)
            .collect();
        let bytes = puts.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        self.room_for(bytes as u64)?;
        for (key, value) in puts {
            self.inner
                .put(ROOT, key.as_str(), value.as_str())
                .map_err(|e| StateError::Write {
                    key: key.clone(),
                    why: e.to_string(),
                })?;
        }
        self.inner.commit();
        self.log_local_change();
        self.refresh();
        Ok(values.len())
    }

    /// The document epoch `epoch` starts from: this one's chosen facts but the settled
    /// history of its merged stories, and their [`Base`], in one deterministic change
    /// (see the module's documentation). Open it with [`Doc::with_epoch_root`] of
    /// [`Seed::root`]. Reads the whole history once: for a rare transition, not a write.
    pub fn seed(&mut self, epoch: u64) -> Result<Seed, StateError> {
        self.refresh();
        let Retirement {
            keys: retired,
            base,
            stories,
        } = self.retirement(epoch)?;
        let cut = self.inner.get_heads();
        // The operation that wrote each kept key's chosen value.
        let mut wanted: HashMap<OpId, &str> = HashMap::new();
        // (Over the candidates' field alone: the changes are read below.)
        for key in Facts(&self.candidates).keys() {
            if retired.contains(key) {
                continue;
            }
            if let Some(c) = self.chosen(key) {
                wanted.insert(c.op.clone(), key.as_str());
            }
        }
        let mut values: BTreeMap<&str, String> = BTreeMap::new();
        let mut seals = Seals::default();
        for change in self.inner.get_changes(&[]) {
            let ex = change.decode();
            let puts = string_puts(&ex);
            let copied: Vec<(&str, &str)> = puts
                .iter()
                .filter_map(|(id, _, v)| {
                    let key = wanted.get(id)?;
                    values.insert(key, v.to_string());
                    Some((*key, *v))
                })
                .collect();
            seals.add(&puts, &copied, self.scheme);
        }
        if values.len() != wanted.len() {
            // Every chosen candidate was read from these changes: one missing means the
            // decoded facts and the document disagree, and a seed would lose a fact.
            return Err(StateError::Write {
                key: "epoch seed".into(),
                why: format!(
                    "{} of {} chosen values not found in the document's history",
                    wanted.len() - values.len(),
                    wanted.len()
                ),
            });
        }
        let mut seed = AutoCommit::new().with_actor(seed_actor(epoch));
        let put = |seed: &mut AutoCommit, key: &str, value: &str| {
            seed.put(automerge::ROOT, key, value)
                .map_err(|e| StateError::Write {
                    key: key.to_string(),
                    why: e.to_string(),
                })
        };
        for (key, value) in &values {
            put(&mut seed, key, value)?;
        }
        // The seals vouching for copied values (`trust::vouch`), in the same change.
        for (key, value) in &seals.0 {
            put(&mut seed, key, value)?;
        }
        put(&mut seed, BASE_KEY, &base.to_json())?;
        let root = seed
            .commit_with(CommitOptions::default().with_time(0))
            .ok_or_else(|| StateError::Write {
                key: "epoch seed".into(),
                why: "the seed change is empty".into(),
            })?;
        Ok(Seed {
            bytes: seed.save(),
            root,
            cut,
            kept: values.len(),
            retired: retired.len(),
            stories,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{NewStory, Verdict};
    use crate::core::state::tests::{claim_by_a, step, step_files, sync_pair, A, B};

    fn story(d: &mut Doc, title: &str, depends_on: Vec<String>) -> String {
        d.add_story(
            &NewStory {
                title: title.into(),
                body: "a body the archive keeps ".repeat(4),
                depends_on,
                ..Default::default()
            },
            A,
            1,
        )
        .unwrap()
    }

    /// Carries a story through every phase to a counted merge, implement and merge
    /// claims also naming `files`.
    fn merge_files(d: &mut Doc, key: &str, files: &[&str]) {
        for phase in crate::core::model::PIPELINE {
            let verdict = (phase == Phase::Review).then_some(Verdict::Approve);
            let files = if matches!(phase, Phase::Implement | Phase::Merge) {
                files
            } else {
                &[]
            };
            step_files(d, key, phase, 0, verdict, files);
        }
        assert_eq!(d.view().stories[key].status, StoryStatus::Merged, "{key}");
    }

    fn merge(d: &mut Doc, key: &str) {
        merge_files(d, key, &[]);
    }

    /// The seed of `d` opened as epoch `epoch`'s document, by a node that built it.
    fn open(d: &mut Doc, epoch: u64) -> (Seed, Doc) {
        let seed = d.seed(epoch).unwrap();
        let e = Doc::load_test_names([9; 16], &seed.bytes, &[])
            .unwrap()
            .with_epoch_root(&seed.root)
            .unwrap();
        (seed, e)
    }

    fn file(path: &str) -> Resource {
        Resource::file(path).unwrap()
    }

    #[test]
    fn a_seed_keeps_the_live_mesh_and_retires_merged_stories_whole() {
        let mut a = Doc::new([1; 16]).with_test_names();
        let done = story(&mut a, "done", vec![]);
        merge(&mut a, &done);
        let half = story(&mut a, "half way", vec![]);
        step(&mut a, &half, Phase::Research, 0, None);
        let waiting = story(&mut a, "waits on done", vec![done.clone()]);
        let before = a.view();

        let (seed, b) = open(&mut a, 1);
        assert_eq!(
            b.rejected_total(),
            0,
            "every copied value passes its checks"
        );
        assert_eq!(seed.stories, 1);
        assert!(seed.retired > 0 && seed.kept > 0, "{seed:?}");
        let after = b.view();
        // The live stories read exactly as before, the dependent's ready and names its
        // dependency by display id.
        assert_eq!(after.stories[half.as_str()], before.stories[half.as_str()]);
        assert_eq!(
            after.stories[waiting.as_str()],
            before.stories[waiting.as_str()]
        );
        assert_eq!(after.stories[waiting.as_str()].status, StoryStatus::Ready);
        assert_eq!(after.stories[waiting.as_str()].depends_on_ids, ["S-0001"]);
        // The merged one left whole; the base says it landed, as what.
        assert!(!after.stories.contains_key(done.as_str()));
        let base = after.base().unwrap();
        assert_eq!(base.epoch, 1);
        let was = before.stories[done.as_str()].more.merged.as_ref().unwrap();
        assert_eq!(base.retired[&done].id, before.stories[done.as_str()].id);
        assert_eq!(base.retired[&done].commit, was.commit);
        assert!(after.results.keys().all(|k| !k.contains(&done)));
        assert!(after.merges.is_empty());
        assert!(after
            .claims
            .values()
            .all(|c| c.resources[0].0.story_key() == Some(&half)));
        assert_eq!(after.knowledge, before.knowledge);
        assert_eq!(after.nodes, before.nodes);
        // Numbers go on above the retired ones.
        assert!(after.max_number() >= before.stories[done.as_str()].fact.number);
    }

    #[test]
    fn a_story_numbered_like_a_retired_one_keeps_its_display_id() {
        use crate::core::state::tests::B;
        let (mut a, mut b) = (
            Doc::new([1; 16]).with_test_names(),
            Doc::new([2; 16]).with_test_names(),
        );
        // Two nodes number a story 1 at once: A's (the lower creator) reads S-0001.
        let ka = story(&mut a, "by A", vec![]);
        let kb = b
            .add_story(
                &NewStory {
                    title: "by B".into(),
                    ..Default::default()
                },
                B,
                1,
            )
            .unwrap();
        sync_pair(&mut a, &mut b);
        let before = a.view();
        assert_eq!(before.stories[ka.as_str()].id, "S-0001");
        assert_ne!(before.stories[kb.as_str()].id, "S-0001");
        merge(&mut a, &ka);
        let before = a.view();
        let (_, mut e) = open(&mut a, 1);
        let after = e.view();
        assert!(!after.stories.contains_key(ka.as_str()));
        assert_eq!(
            after.stories[kb.as_str()],
            before.stories[kb.as_str()],
            "still suffixed"
        );
        // And the next story is numbered past both; a view takes it in place.
        let (mut cached, claims) = e.view_and_claims();
        let next = story(&mut e, "next", vec![ka.clone()]);
        let v = e.view();
        let fact = v.stories[next.as_str()].fact.clone();
        assert!(cached.add_new_stories(&claims, &[(next.clone(), fact)]));
        assert_eq!(cached, v);
        assert_eq!(v.stories[next.as_str()].fact.number, 2);
        assert_eq!(v.stories[next.as_str()].id, "S-0002");
        assert_eq!(v.stories[next.as_str()].depends_on_ids, ["S-0001"]);
        assert_eq!(v.stories[next.as_str()].status, StoryStatus::Ready);
    }

    #[test]
    fn a_files_claims_retire_below_its_floor_and_new_claims_go_on_above_it() {
        let mut a = Doc::new([1; 16]).with_test_names();
        // X lands first (src/x.rs at tokens 1 and 2), then Y implements on it (3) and
        // waits for review.
        let x = story(&mut a, "x", vec![]);
        merge_files(&mut a, &x, &["src/x.rs", "src/only_x.rs"]);
        let y = story(&mut a, "y", vec![]);
        for p in [Phase::Research, Phase::Plan] {
            step(&mut a, &y, p, 0, None);
        }
        step_files(&mut a, &y, Phase::Implement, 0, None, &["src/x.rs"]);
        let before = a.view();
        let (seed, mut e) = open(&mut a, 1);
        assert_eq!(seed.stories, 1);
        let after = e.view();
        assert_eq!(after.stories[y.as_str()], before.stories[y.as_str()]);
        let base = after.base().unwrap();
        assert_eq!(base.floor(&file("src/x.rs")), 2);
        assert_eq!(base.floor(&file("src/only_x.rs")), 2);
        assert_eq!(
            after.notes.inflated, 0,
            "Y's claim (token 3) runs on from the floor"
        );
        let claims = after.claims();
        assert_eq!(claims.next_token(&file("src/x.rs")), 4);
        assert_eq!(claims.next_token(&file("src/only_x.rs")), 3);
        // Work goes on: Y's review and merge, the merge on the file at token 4.
        step(&mut e, &y, Phase::Review, 0, Some(Verdict::Approve));
        step_files(&mut e, &y, Phase::Merge, 0, None, &["src/x.rs"]);
        let v = e.view();
        assert_eq!(v.stories[y.as_str()].status, StoryStatus::Merged);
        assert_eq!(v.notes.inflated, 0);
        assert_eq!(v.claims().next_token(&file("src/x.rs")), 5);
        // The next epoch inherits this one's base and adds to it.
        let (seed, f) = open(&mut e, 2);
        assert_eq!(seed.stories, 1);
        let v = f.view();
        let base = v.base().unwrap();
        assert_eq!(base.epoch, 2);
        assert_eq!(base.retired.keys().collect::<Vec<_>>(), [&x, &y]);
        assert_eq!(base.floor(&file("src/x.rs")), 4);
        assert_eq!(base.floor(&file("src/only_x.rs")), 2);
        assert!(v.stories.is_empty() && v.claims.is_empty());
    }

    #[test]
    fn a_merged_story_retires_above_a_live_claim_on_its_file_which_still_counts_below_it() {
        let mut a = Doc::new([1; 16]).with_test_names();
        // Y implements on src/x.rs first (token 1) and waits; X lands after it (2, 3).
        let y = story(&mut a, "y", vec![]);
        let y_impl = step_files(&mut a, &y, Phase::Implement, 0, None, &["src/x.rs"]);
        let x = story(&mut a, "x", vec![]);
        merge_files(&mut a, &x, &["src/x.rs"]);
        let before = a.view();
        let (seed, mut e) = open(&mut a, 1);
        assert_eq!(seed.stories, 1, "X retires");
        let after = e.view();
        assert_eq!(after.stories[y.as_str()], before.stories[y.as_str()]);
        assert!(!after.stories.contains_key(x.as_str()));
        assert_eq!(after.notes.inflated, 0);
        assert!(
            after.claims.contains_key(&y_impl),
            "Y's claim counts below the floor"
        );
        let floor = &after.base().unwrap().floors[&file("src/x.rs")];
        assert_eq!((floor.token, floor.why), (3, ReleaseReason::Done));
        let claims = after.claims();
        assert_eq!(claims.next_token(&file("src/x.rs")), 4);
        assert_eq!(claims.top(&file("src/x.rs")), Some(floor.claim.as_str()));
        assert_eq!(
            claims.winner(&file("src/x.rs")),
            None,
            "the floor holds nothing"
        );
        // Once Y has landed too, it retires, and the file's floor is Y's merge.
        for p in [Phase::Review, Phase::Merge] {
            let verdict = (p == Phase::Review).then_some(Verdict::Approve);
            let files: &[&str] = if p == Phase::Merge {
                &["src/x.rs"]
            } else {
                &[]
            };
            step_files(&mut e, &y, p, 0, verdict, files);
        }
        let (seed, f) = open(&mut e, 2);
        assert_eq!(seed.stories, 1);
        let v = f.view();
        assert!(v.stories.is_empty());
        assert_eq!(v.base().unwrap().floor(&file("src/x.rs")), 4);
        assert_eq!(v.claims().next_token(&file("src/x.rs")), 5);
    }

    #[test]
    fn a_merged_story_with_an_open_claim_stays_until_it_is_released() {
        let mut a = Doc::new([1; 16]).with_test_names();
        let x = story(&mut a, "x", vec![]);
        merge_files(&mut a, &x, &["src/x.rs"]);
        // A claim of X's that counts and was never released (a stale node's, say): only
        // this document could take it over.
        let review = Resource::story_round(&x, Phase::Review, 1).unwrap();
        let open_id = format!("{A}-77");
        let claim = claim_by_a(vec![(review, 1), (file("src/x.rs"), 3)]);
        a.put_claim(&open_id, &claim).unwrap();
        assert!(a.view().claims.contains_key(&open_id));
        let (seed, _) = open(&mut a, 1);
        assert_eq!(seed.stories, 0, "X stays while its claim is open");
        let expired = ReleaseFact {
            why: ReleaseReason::Expired,
            note: String::new(),
        };
        a.put_release(&open_id, &expired, A).unwrap();
        let (seed, e) = open(&mut a, 1);
        assert_eq!(seed.stories, 1);
        let v = e.view();
        let floor = &v.base().unwrap().floors[&file("src/x.rs")];
        assert_eq!(
            (floor.token, floor.why, floor.claim.as_str()),
            (3, ReleaseReason::Expired, open_id.as_str()),
            "the file's top claim, as it was released"
        );
    }

    #[test]
    fn claims_written_before_the_cut_and_heard_after_fare_as_in_the_old_epoch() {
        let (mut a, mut b) = (
            Doc::new([1; 16]).with_test_names(),
            Doc::new([2; 16]).with_test_names(),
        );
        let y = story(&mut a, "y", vec![]);
        let x = story(&mut a, "x", vec![]);
        merge_files(&mut a, &x, &["src/x.rs"]);
        sync_pair(&mut a, &mut b);
        // B, behind on what A decided, claims Y's research on the file at a token the
        // floor passed (1), X's review again above it (3: X has landed, B has not heard),
        // and Y's implement above that (4). A cuts before it hears any of them.
        let f = file("src/x.rs");
        let by_b = |d: &mut Doc, n: u32, resources: Vec<(Resource, u64)>| {
            let id = format!("{B}-{n}");
            let claim = ClaimFact {
                holder: B.into(),
                ..claim_by_a(resources)
            };
            d.put_claim(&id, &claim).unwrap();
            id
        };
        let research = Resource::story(&y, Phase::Research).unwrap();
        let below = by_b(&mut b, 1, vec![(research, 1), (f.clone(), 1)]);
        let review = Resource::story_round(&x, Phase::Review, 1).unwrap();
        let stale = by_b(&mut b, 2, vec![(review, 1), (f.clone(), 3)]);
        let implement = Resource::story(&y, Phase::Implement).unwrap();
        let above = by_b(&mut b, 3, vec![(implement, 1), (f.clone(), 4)]);
        let (seed, mut e) = open(&mut a, 1);
        assert_eq!(seed.stories, 1);
        assert_eq!(e.view().base().unwrap().floor(&f), 2);
        // A hears B's claims after the cut; the new epoch carries them in.
        sync_pair(&mut a, &mut b);
        assert_eq!(e.carry_from(&mut a, &seed.cut).unwrap(), 3);
        let (old, new) = (a.view(), e.view());
        assert!(old.claims.contains_key(&stale), "it counts where X is live");
        assert!(
            !new.claims.contains_key(&stale),
            "X retired: it never counts"
        );
        for id in [&below, &above] {
            assert!(new.claims.contains_key(id), "{id} counts in the new epoch");
        }
        assert_eq!(new.stories[y.as_str()], old.stories[y.as_str()]);
        let (oc, nc) = (old.claims(), new.claims());
        assert_eq!(nc.top(&f), Some(above.as_str()));
        assert_eq!(
            (
                nc.top(&f),
                nc.holds(&below),
                nc.holds(&above),
                nc.next_token(&f)
            ),
            (
                oc.top(&f),
                oc.holds(&below),
                oc.holds(&above),
                oc.next_token(&f)
            ),
        );
    }

    #[test]
    fn a_claim_on_a_retired_story_never_counts_and_updates_agree() {
        let mut a = Doc::new([1; 16]).with_test_names();
        let x = story(&mut a, "x", vec![]);
        merge_files(&mut a, &x, &["src/x.rs"]);
        let y = story(&mut a, "y", vec![]);
        let (seed, mut e) = open(&mut a, 1);
        let mut other = Doc::load_test_names([7; 16], &seed.bytes, &[])
            .unwrap()
            .with_epoch_root(&seed.root)
            .unwrap();
        e.take_changes();
        let (mut v, mut c) = e.view_and_claims();
        // An honest claim on from the floor: taken in place, exactly as the fold has it.
        step_files(&mut e, &y, Phase::Implement, 0, None, &["src/x.rs"]);
        assert!(e.update_view(&mut v, &mut c), "in place");
        let (fv, fc) = e.view_and_claims();
        assert_eq!(v, fv);
        assert!(c == fc);
        assert_eq!(v.claims.len(), 1);
        assert_eq!(c.next_token(&file("src/x.rs")), 4);
        // A stale node's claim at a file token the floor already passed counts, and
        // loses the file (in place too).
        let research = Resource::story(&y, Phase::Research).unwrap();
        let stale = format!("{A}-901");
        let claim = claim_by_a(vec![(research, 1), (file("src/x.rs"), 2)]);
        e.put_claim(&stale, &claim).unwrap();
        assert!(e.update_view(&mut v, &mut c), "in place");
        let (fv, fc) = e.view_and_claims();
        assert_eq!(v, fv);
        assert!(c == fc);
        assert!(v.claims.contains_key(&stale) && !c.holds(&stale));
        // The retired story's merge claimed again: never counts, in a fold or an update.
        let merge_again = Resource::story_round(&x, Phase::Merge, 0).unwrap();
        e.put_claim(&format!("{A}-900"), &claim_by_a(vec![(merge_again, 9)]))
            .unwrap();
        assert!(!e.update_view(&mut v, &mut c), "left to the fold");
        let v = e.view();
        assert_eq!(v.claims.len(), 2, "{:?}", v.claims.keys());
        assert_eq!(v.malformed, 1);
        assert!(!v.stories.contains_key(x.as_str()));
        assert_eq!(v.stories[y.as_str()].next_phase, Some(Phase::Research));
        // A replica of the same epoch reads the same.
        sync_pair(&mut e, &mut other);
        assert_eq!(other.view(), v);
    }

    #[test]
    fn a_document_trusts_a_base_only_in_its_known_root() {
        let mut a = Doc::new([1; 16]).with_test_names();
        let x = story(&mut a, "x", vec![]);
        merge(&mut a, &x);
        let seed = a.seed(1).unwrap();
        let load = || Doc::load_test_names([9; 16], &seed.bytes, &[]).unwrap();
        // Not opened as an epoch: the base is no fact, and nothing retires.
        assert!(load().view().base().is_none());
        // A hash that is not in the document, or a change that is not a seed.
        let err = load().with_epoch_root(&a.heads()[0]).err().unwrap();
        assert!(err.to_string().contains("not in this document"), "{err}");
        let mut e = load().with_epoch_root(&seed.root).unwrap();
        let y = story(&mut e, "y", vec![]);
        let later = e.heads()[0];
        let err = load_from(&mut e).with_epoch_root(&later).err().unwrap();
        assert!(err.to_string().contains("has dependencies"), "{err}");
        // A member's own `epoch` value changes nothing: the base is read from the root.
        let forged = Base::new(1, BTreeMap::new(), BTreeMap::new()).unwrap();
        e.raw_put(BASE_KEY, forged.to_json());
        let f = load_from(&mut e).with_epoch_root(&seed.root).unwrap();
        assert!(f.view().base().unwrap().retired.contains_key(&x));
        assert!(f.view().stories.contains_key(y.as_str()));
        assert_eq!(f.rejected_total(), 0, "an unknown key is no refused fact");
    }

    fn load_from(d: &mut Doc) -> Doc {
        Doc::load_test_names([9; 16], &d.save(), &[]).unwrap()
    }

    #[test]
    fn a_chosen_value_overwritten_since_is_copied_from_the_history() {
        let mut a = Doc::new([1; 16]).with_test_names();
        let k = story(&mut a, "overwritten", vec![]);
        let before = a.view();
        // A hostile writer puts something else at the key: the story stays as written,
        // but automerge now shows the overwrite there.
        a.raw_put(&format!("story/{k}"), "not a sealed value".into());
        assert_eq!(a.view().stories[k.as_str()], before.stories[k.as_str()]);
        let (_, b) = open(&mut a, 1);
        assert_eq!(b.view().stories[k.as_str()], before.stories[k.as_str()]);
    }

    #[test]
    fn a_move_leaves_its_proposal_and_cut_behind_and_refuses_a_root_it_does_not_build() {
        let mut a = Doc::new([1; 16]).with_test_names();
        let done = story(&mut a, "one", vec![]);
        merge(&mut a, &done);
        let live = story(&mut a, "two", vec![]);
        // A's proposal of epoch 1 (settled and won), and the cut it writes at its heads.
        let proposal = ClaimFact {
            resources: vec![(Resource::Epoch(1), 1)],
            holder: A.into(),
            ttl_ms: 10_000,
            written_at_ms: 0,
            attempt: 1,
            after: None,
        };
        a.put_claim(&format!("{A}-900"), &proposal).unwrap();
        let cut = a.heads();
        let root = a.seed_at(1, &cut).unwrap().root;
        let fact = EpochFact {
            epoch: 1,
            claim: format!("{A}-900"),
            holder: A.into(),
            cut: cut.iter().map(|h| h.to_string()).collect(),
            root: root.to_string(),
            at_ms: 0,
        };
        assert!(a.put_epoch(&fact).unwrap());
        assert!(!a.put_epoch(&fact).unwrap(), "a cut is written once");
        assert_eq!(
            a.view().epochs.len(),
            1,
            "the cut is in the old document's view"
        );
        // Written after the cut: carried over.
        let after = story(&mut a, "three", vec![]);
        // A root the cut does not build is refused, whoever wrote it.
        let other = a.seed_at(2, &cut).unwrap().root;
        let err = a.next_epoch(1, &cut, &other).unwrap_err().to_string();
        assert!(err.contains("not moving"), "{err}");
        let e = a.next_epoch(1, &cut, &root).unwrap();
        let v = e.view();
        assert_eq!(e.epoch_root(), Some(root.0));
        assert!(
            v.landed(&done) && !v.stories.contains_key(done.as_str()),
            "retired"
        );
        // `story show` finds it in the archive by its key or display id.
        assert_eq!(v.retired_key(&done), Some(done.as_str()));
        assert_eq!(v.retired_key("s-1"), Some(done.as_str()));
        assert_eq!(v.retired_key(&live), None);
        assert!(v.stories.contains_key(live.as_str()) && v.stories.contains_key(after.as_str()));
        // The move itself stays behind: no proposal to release, no cut to move on again.
        assert!(v.epochs.is_empty(), "{:?}", v.epochs);
        assert!(
            !v.claims
                .values()
                .any(|c| c.token_of(&Resource::Epoch(1)).is_some()),
            "the proposal was carried"
        );
        // The next proposal starts afresh on its own resource.
        assert_eq!(v.claims().next_token(&Resource::Epoch(2)), 1);
    }

    #[test]
    fn two_replicas_at_the_same_heads_build_the_same_seed() {
        let (mut a, mut b) = (
            Doc::new([1; 16]).with_test_names(),
            Doc::new([2; 16]).with_test_names(),
        );
        let k = story(&mut a, "one", vec![]);
        merge_files(&mut a, &k, &["src/one.rs"]);
        story(&mut b, "two", vec![]);
        sync_pair(&mut a, &mut b);
        assert_eq!(a.heads(), b.heads());
        let (sa, sb) = (a.seed(7).unwrap(), b.seed(7).unwrap());
        assert_eq!(sa.bytes, sb.bytes, "the same change, the same hash");
        assert_eq!((sa.root, &sa.cut), (sb.root, &sb.cut));
        // Another epoch number is another document.
        assert_ne!(a.seed(8).unwrap().root, sa.root);
    }

    #[test]
    fn a_node_that_moved_past_the_cut_builds_the_same_seed_at_it() {
        let (mut a, mut b) = (
            Doc::new([1; 16]).with_test_names(),
            Doc::new([2; 16]).with_test_names(),
        );
        let k = story(&mut a, "one", vec![]);
        merge_files(&mut a, &k, &["src/one.rs"]);
        sync_pair(&mut a, &mut b);
        let cut = a.heads();
        let at_cut = a.seed(3).unwrap();
        // b hears more before it cuts: another story, and work on a file.
        let later = story(&mut b, "later", vec![]);
        step_files(&mut b, &later, Phase::Implement, 0, None, &["src/one.rs"]);
        let seed = b.seed_at(3, &cut).unwrap();
        assert_eq!(seed.root, at_cut.root);
        assert_eq!(seed.cut, cut);
        assert!(
            b.view().stories.contains_key(later.as_str()),
            "b itself is unchanged"
        );
        // Heads it does not hold: refused.
        let mut c = Doc::new([3; 16]).with_test_names();
        let err = c.seed_at(3, &cut).unwrap_err();
        assert!(err.to_string().contains("does not hold"), "{err}");
    }

    #[test]
    fn facts_written_after_a_quiet_cut_are_carried_into_the_new_epoch() {
        let mut a = Doc::new([1; 16]).with_test_names();
        let done = story(&mut a, "done", vec![]);
        merge_files(&mut a, &done, &["src/a.rs"]);
        let half = story(&mut a, "half way", vec![done.clone()]);
        step(&mut a, &half, Phase::Research, 0, None);
        let (seed, mut e) = open(&mut a, 1);
        // The old epoch goes on: the half-way story lands (on the file the retired one
        // used), a new story arrives.
        for p in [Phase::Plan, Phase::Implement, Phase::Review, Phase::Merge] {
            let verdict = (p == Phase::Review).then_some(Verdict::Approve);
            let files: &[&str] = if p == Phase::Implement {
                &["src/a.rs"]
            } else {
                &[]
            };
            step_files(&mut a, &half, p, 0, verdict, files);
        }
        let new = story(&mut a, "new", vec![half.clone()]);
        let before = a.view();
        let carried = e.carry_from(&mut a, &seed.cut).unwrap();
        assert!(carried > 10, "{carried}");
        assert_eq!(e.rejected_total(), 0);
        let after = e.view();
        assert_eq!(after.stories[half.as_str()], before.stories[half.as_str()]);
        assert_eq!(after.stories[new.as_str()], before.stories[new.as_str()]);
        assert!(!after.stories.contains_key(done.as_str()));
        assert_eq!(
            after.notes.inflated, 0,
            "the file's run goes on from its floor"
        );
        assert_eq!(
            after.claims().next_token(&file("src/a.rs")),
            before.claims().next_token(&file("src/a.rs"))
        );
        // Carrying again copies nothing new.
        assert_eq!(e.carry_from(&mut a, &seed.cut).unwrap(), 0);
    }

    /// Stories written in one batch are vouched for by a seal beside them
    /// (`trust::vouch`): a seed copies the seal with the live ones, a carry with those
    /// written after the cut, and they check where they land as they did.
    #[test]
    fn stories_written_in_a_batch_keep_their_seal_in_a_new_epoch() {
        let news = |t: &str| {
            (0..3)
                .map(|i| NewStory {
                    title: format!("{t} {i}"),
                    ..Default::default()
                })
                .collect::<Vec<_>>()
        };
        let mut a = Doc::new([1; 16]).with_test_names();
        let first = a.add_stories(&news("first"), A, 1).unwrap();
        merge(&mut a, &first[0]);
        let (seed, mut e) = open(&mut a, 1);
        assert_eq!(e.rejected_total(), 0);
        let view = e.view();
        assert!(
            !view.stories.contains_key(first[0].as_str()),
            "merged: retired"
        );
        for k in &first[1..] {
            assert_eq!(
                view.stories[k.as_str()],
                a.view().stories[k.as_str()],
                "{k}"
            );
            let value = e.raw_get(&format!("{STORY_PREFIX}{k}")).unwrap();
            assert!(value.starts_with("m2 "), "copied as written: {value}");
        }
        let later = a.add_stories(&news("later"), A, 2).unwrap();
        assert!(e.carry_from(&mut a, &seed.cut).unwrap() >= later.len());
        assert_eq!(e.rejected_total(), 0);
        for k in &later {
            assert_eq!(
                e.view().stories[k.as_str()],
                a.view().stories[k.as_str()],
                "{k}"
            );
        }
        // A seed that left a seal behind would refuse the stories it vouches for.
        let mut bare = AutoCommit::new();
        for k in &first[1..] {
            let key = format!("{STORY_PREFIX}{k}");
            bare.put(automerge::ROOT, key.as_str(), e.raw_get(&key).unwrap())
                .unwrap();
        }
        bare.commit();
        let lone = Doc::load_test_names([8; 16], &bare.save(), &[]).unwrap();
        assert_eq!(lone.rejected_total(), 2, "no seal beside them: refused");
    }

    #[test]
    fn a_revoked_authors_facts_count_in_the_seed_as_they_did_and_later_ones_do_not() {
        use crate::core::state::roster::{revoke_key, RosterFact};
        use crate::core::state::tests::admit;
        use crate::core::trust::Signer;
        let ops: BTreeSet<String> = ["OP".to_string()].into();
        let new = |title: &str| NewStory {
            title: title.into(),
            ..Default::default()
        };
        let mut d = Doc::new([1; 16])
            .with_test_names()
            .with_operators(ops.clone());
        admit(&mut d, "OP", "N1");
        let before = d.add_story(&new("before the revoke"), "N1", 1).unwrap();
        let key = revoke_key("N1");
        let json = serde_json::to_string(&RosterFact {
            peer: "N1".into(),
            note: String::new(),
            at_ms: 2,
        })
        .unwrap();
        d.put_signed(&key, &Signer::for_test("OP").seal(&key, &json))
            .unwrap();
        assert!(d.view().stories.contains_key(before.as_str()));

        let (seed, e) = open(&mut d, 1);
        let mut e = e.with_operators(ops);
        assert!(
            e.view().stories.contains_key(before.as_str()),
            "it counted before the revoke, so it counts in the seed"
        );
        // N1 writes on after the seed (a copy that does not enforce the roster lets it):
        // not in the revoke's past, so it counts nowhere that does.
        let mut n1 = Doc::load_test_names([3; 16], &seed.bytes, &[]).unwrap();
        let late = n1.add_story(&new("after the revoke"), "N1", 3).unwrap();
        sync_pair(&mut n1, &mut e);
        assert!(e.fact_keys().any(|k| k.ends_with(&before)));
        assert!(!e.view().stories.contains_key(late.as_str()));
    }

    #[test]
    fn merged_history_shrinks_to_a_small_part_of_the_document() {
        let mut a = Doc::new([1; 16]).with_test_names();
        for i in 0..40 {
            let k = story(&mut a, &format!("story {i}"), vec![]);
            merge_files(&mut a, &k, &[&format!("src/{}.rs", i % 5)]);
        }
        let whole = a.save().len();
        let (seed, e) = open(&mut a, 1);
        assert_eq!(seed.stories, 40);
        assert_eq!(seed.kept, 0);
        assert_eq!(e.view().base().unwrap().retired.len(), 40);
        // Each story leaves a key, a display id and a commit of ~20 facts; five files
        // keep a floor each.
        assert!(
            seed.bytes.len() * 10 < whole,
            "seed {} of {whole} bytes",
            seed.bytes.len()
        );
    }
}
