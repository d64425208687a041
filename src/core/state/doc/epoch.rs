//! Retiring settled history (DESIGN.md §12): a new epoch's document, seeded with the
//! live facts of this one.
//!
//! Automerge keeps every change forever, so a document only grows; the only way to shed
//! a finished story's work is a new document. What a merged story leaves behind — its
//! claims, their results (with the handoffs, most of a story's bytes), their releases,
//! the merges that did not count — decides nothing any more, so the seed leaves it out
//! (for the archive). It keeps every fact a view of the live mesh reads:
//!
//! - every fact of a story not merged, and every fact of a kind that is not a story's
//!   work (nodes, knowledge, roster, commands, budget, notifications);
//! - every story fact, merged or not: display ids and dependencies read them;
//! - of a merged story, the merge that counted, the claim it was written under and that
//!   claim's release (the story reads merged, and its dependents are free);
//! - every claim that names anything but a merged story (a file, a gate, an open
//!   story), with its release;
//! - below every kept claim, the claims with lower tokens on the same resources: a token
//!   counts only at the end of an unbroken run from 1 (the view drops inflated claims),
//!   so a kept claim's run stays whole. Tokens only grow, so this keeps a file's whole
//!   history of claims: a later epoch format that carries each resource's reached token
//!   instead would let it go.
//!
//! A seed is a function of the document's heads alone. It is one change by an actor
//! derived from the epoch's number, dated 0, the kept keys in order, each holding the
//! value its chosen candidate holds here, byte for byte as its author sealed it: any
//! two nodes at the same heads build the same change (the same hash), so proposals cut
//! at the same heads converge, and every copied value is still checked against its
//! author's signature where it lands. A revoked author's facts that counted are copied
//! into the same change as the revoke, which is its own causal past: they count there
//! too, and nothing the author writes after the seed does.

use super::*;
use automerge::transaction::CommitOptions;
use std::collections::HashMap;

/// A new epoch's document, built by [`Doc::seed`].
#[derive(Debug, Clone)]
pub struct Seed {
    /// The new document, saved whole.
    pub bytes: Vec<u8>,
    /// This document's heads it was cut at.
    pub cut: Vec<ChangeHash>,
    /// Facts copied into the seed, and facts left behind.
    pub kept: usize,
    pub retired: usize,
    /// Merged stories whose work was left behind.
    pub stories: usize,
}

/// The actor that writes epoch `epoch`'s seed, the same on every node: `mesh-epo` and
/// the number, 16 bytes.
fn seed_actor(epoch: u64) -> automerge::ActorId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(b"mesh-epo");
    id[8..].copy_from_slice(&epoch.to_be_bytes());
    automerge::ActorId::from(id.to_vec())
}

impl Doc {
    /// The keys whose facts a new epoch leaves behind: a merged story's work that no
    /// longer decides anything (see the module's documentation for what stays).
    pub fn retired_keys(&self) -> BTreeSet<String> {
        let (view, _) = self.view_and_claims();
        // Each merged story's counted merge, by the claim it was written under.
        let merged: BTreeMap<&str, &str> = view
            .stories
            .iter()
            .filter_map(|(k, s)| Some((k.as_str(), s.merged.as_ref()?.claim.as_str())))
            .collect();
        let merge_claims: BTreeSet<&str> = merged.values().copied().collect();
        let claims: BTreeMap<&str, &ClaimFact> = self
            .facts
            .iter()
            .filter_map(|(k, f)| match &**f {
                Fact::Claim(c) => Some((k.strip_prefix(CLAIM_PREFIX).unwrap_or(k), &**c)),
                _ => None,
            })
            .collect();
        // A claim may go when every resource it names is a merged story's and its merge
        // is not the one that counted. The rest stay, and so does every claim below a
        // kept one's token on the same resource: a token counts only at the end of an
        // unbroken run from 1 (the view drops inflated claims), so the run stays whole.
        let of_merged = |c: &ClaimFact| {
            !c.resources.is_empty()
                && c.resources.iter().all(|(r, _)| match r {
                    Resource::Story { story, .. } => merged.contains_key(story.as_str()),
                    _ => false,
                })
        };
        let mut kept: BTreeSet<&str> = claims
            .iter()
            .filter(|(id, c)| !of_merged(c) || merge_claims.contains(**id))
            .map(|(id, _)| *id)
            .collect();
        loop {
            let mut reach: BTreeMap<&Resource, u64> = BTreeMap::new();
            for id in &kept {
                for (r, t) in &claims[id].resources {
                    let top = reach.entry(r).or_default();
                    *top = (*top).max(*t);
                }
            }
            let more: Vec<&str> = claims
                .iter()
                .filter(|(id, c)| {
                    !kept.contains(**id)
                        && c.resources
                            .iter()
                            .any(|(r, t)| reach.get(r).is_some_and(|top| t <= top))
                })
                .map(|(id, _)| *id)
                .collect();
            if more.is_empty() {
                break;
            }
            kept.extend(more);
        }
        let mut retired = BTreeSet::new();
        for (key, fact) in &self.facts {
            let leave = match &**fact {
                Fact::Result(r) => merged.contains_key(r.story.as_str()),
                Fact::Merge(m) => merged
                    .get(m.story.as_str())
                    .is_some_and(|&counted| counted != m.claim),
                Fact::Claim(_) => !kept.contains(key.strip_prefix(CLAIM_PREFIX).unwrap_or(key)),
                Fact::Release(_) => {
                    let id = key.strip_prefix(RELEASE_PREFIX).unwrap_or(key);
                    claims.contains_key(id) && !kept.contains(id)
                }
                _ => false,
            };
            if leave {
                retired.insert(key.clone());
            }
        }
        retired
    }

    /// The document epoch `epoch` starts from: this one's chosen facts but those
    /// [`Doc::retired_keys`] names, in one deterministic change (see the module's
    /// documentation). Reads the whole history once: for a rare transition, not a write.
    pub fn seed(&mut self, epoch: u64) -> Result<Seed, StateError> {
        self.refresh();
        let retired = self.retired_keys();
        let cut = self.inner.get_heads();
        // The operation that wrote each kept key's chosen value.
        let mut wanted: HashMap<(u64, Vec<u8>), &str> = HashMap::new();
        for key in self.facts.keys() {
            if retired.contains(key) {
                continue;
            }
            if let Some(c) = self.chosen(key) {
                wanted.insert(c.op.clone(), key.as_str());
            }
        }
        let mut values: BTreeMap<&str, String> = BTreeMap::new();
        for change in self.inner.get_changes(&[]) {
            let ex = change.decode();
            let actor = ex.actor_id.to_bytes().to_vec();
            for (i, op) in ex.operations.iter().enumerate() {
                let (automerge::legacy::Key::Map(_), automerge::legacy::OpType::Put(v)) =
                    (&op.key, &op.action)
                else {
                    continue;
                };
                if op.obj != automerge::legacy::ObjectId::Root {
                    continue;
                }
                let id = (ex.start_op.get().saturating_add(i as u64), actor.clone());
                if let (Some(key), ScalarValue::Str(v)) = (wanted.get(&id), v) {
                    values.insert(key, v.to_string());
                }
            }
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
        for (key, value) in &values {
            seed.put(automerge::ROOT, *key, value.as_str())
                .map_err(|e| StateError::Write {
                    key: key.to_string(),
                    why: e.to_string(),
                })?;
        }
        seed.commit_with(CommitOptions::default().with_time(0));
        let stories = retired
            .iter()
            .filter(|k| k.starts_with(MERGE_PREFIX) || k.starts_with(RESULT_PREFIX))
            .filter_map(|k| match self.facts.get(k).map(|f| &**f) {
                Some(Fact::Result(r)) => Some(r.story.clone()),
                Some(Fact::Merge(m)) => Some(m.story.clone()),
                _ => None,
            })
            .collect::<BTreeSet<_>>()
            .len();
        Ok(Seed {
            bytes: seed.save(),
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
    use crate::core::state::tests::{step, sync_pair, A};

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

    /// Carries a story through every phase to a counted merge.
    fn merge(d: &mut Doc, key: &str) {
        for phase in crate::core::model::PIPELINE {
            let verdict = (phase == Phase::Review).then_some(Verdict::Approve);
            step(d, key, phase, 0, verdict);
        }
        assert_eq!(d.view().stories[key].status, StoryStatus::Merged, "{key}");
    }

    #[test]
    fn a_seed_keeps_the_live_mesh_and_leaves_merged_work_behind() {
        let mut a = Doc::new([1; 16]).with_test_names();
        let done = story(&mut a, "done", vec![]);
        merge(&mut a, &done);
        let open = story(&mut a, "half way", vec![]);
        step(&mut a, &open, Phase::Research, 0, None);
        let waiting = story(&mut a, "waits on done", vec![done.clone()]);
        let before = a.view();

        let seed = a.seed(1).unwrap();
        assert_eq!(seed.stories, 1);
        assert!(seed.retired > 0 && seed.kept > 0, "{seed:?}");
        let b = Doc::load_test_names([9; 16], &seed.bytes, &[]).unwrap();
        let after = b.view();
        assert_eq!(
            b.rejected_total(),
            0,
            "every copied value passes its checks"
        );
        // The live stories read exactly as before; the merged one still reads merged.
        assert_eq!(after.stories[&open], before.stories[&open]);
        assert_eq!(after.stories[&waiting], before.stories[&waiting]);
        assert_eq!(after.stories[&done].status, StoryStatus::Merged);
        assert_eq!(after.stories[&done].merged, before.stories[&done].merged);
        assert_eq!(after.stories[&done].id, before.stories[&done].id);
        // Its work is gone: only the counted merge's claim and result-free facts remain.
        assert!(after.results.keys().all(|k| !k.contains(&done)));
        assert_eq!(after.merges.len(), 1);
        assert!(after.claims.len() < before.claims.len());
        assert_eq!(after.knowledge, before.knowledge);
        assert_eq!(after.nodes, before.nodes);
    }

    #[test]
    fn a_kept_claim_keeps_the_run_of_tokens_below_it() {
        use crate::core::lease::{ClaimFact, ReleaseFact, ReleaseReason};
        let mut a = Doc::new([1; 16]).with_test_names();
        let k = story(&mut a, "merged at the second try", vec![]);
        for phase in [Phase::Research, Phase::Plan, Phase::Implement] {
            step(&mut a, &k, phase, 0, None);
        }
        step(&mut a, &k, Phase::Review, 0, Some(Verdict::Approve));
        // A claim on the merge lost at settle (token 1), then the merge under token 2:
        // the counted merge's claim counts only above an unbroken run from 1.
        let lost = format!("{A}-99");
        let res = Resource::story_round(&k, Phase::Merge, 0).unwrap();
        a.put_claim(
            &lost,
            &ClaimFact {
                resources: vec![(res, 1)],
                holder: A.into(),
                ttl_ms: 1000,
                written_at_ms: 0,
                attempt: 1,
                after: None,
            },
        )
        .unwrap();
        let why = ReleaseFact {
            why: ReleaseReason::Unsettled,
            note: String::new(),
        };
        a.put_release(&lost, &why, A).unwrap();
        let winner = step(&mut a, &k, Phase::Merge, 0, None);
        let before = a.view();
        assert_eq!(before.stories[&k].merged.as_ref().unwrap().claim, winner);
        assert_eq!(before.stories[&k].merged.as_ref().unwrap().token, 2);

        let seed = a.seed(1).unwrap();
        let b = Doc::load_test_names([9; 16], &seed.bytes, &[]).unwrap();
        let after = b.view();
        assert_eq!(after.notes.inflated, 0, "no kept claim lost its run");
        assert_eq!(after.stories[&k].status, StoryStatus::Merged);
        assert_eq!(after.stories[&k].merged, before.stories[&k].merged);
        assert!(after.claims.contains_key(&lost) && after.releases.contains_key(&lost));
        // The phases before the merge are gone.
        assert_eq!(after.claims.len(), 2, "{:?}", after.claims.keys());
    }

    #[test]
    fn a_chosen_value_overwritten_since_is_copied_from_the_history() {
        let mut a = Doc::new([1; 16]).with_test_names();
        let k = story(&mut a, "overwritten", vec![]);
        let before = a.view();
        // A hostile writer puts something else at the key: the story stays as written,
        // but automerge now shows the overwrite there.
        a.raw_put(&format!("story/{k}"), "not a sealed value".into());
        assert_eq!(a.view().stories[&k], before.stories[&k]);
        let seed = a.seed(1).unwrap();
        let b = Doc::load_test_names([9; 16], &seed.bytes, &[]).unwrap();
        assert_eq!(b.view().stories[&k], before.stories[&k]);
        assert_eq!(b.rejected_total(), 0, "the overwrite was not copied");
    }

    #[test]
    fn two_replicas_at_the_same_heads_build_the_same_seed() {
        let (mut a, mut b) = (
            Doc::new([1; 16]).with_test_names(),
            Doc::new([2; 16]).with_test_names(),
        );
        let k = story(&mut a, "one", vec![]);
        merge(&mut a, &k);
        story(&mut b, "two", vec![]);
        sync_pair(&mut a, &mut b);
        assert_eq!(a.heads(), b.heads());
        let (sa, sb) = (a.seed(7).unwrap(), b.seed(7).unwrap());
        assert_eq!(sa.bytes, sb.bytes, "the same change, the same hash");
        assert_eq!(sa.cut, sb.cut);
        // Another epoch number is another document.
        assert_ne!(a.seed(8).unwrap().bytes, sa.bytes);
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
        assert!(d.view().stories.contains_key(&before));

        let seed = d.seed(1).unwrap();
        let mut e = Doc::load_test_names([9; 16], &seed.bytes, &[])
            .unwrap()
            .with_operators(ops);
        assert!(
            e.view().stories.contains_key(&before),
            "it counted before the revoke, so it counts in the seed"
        );
        // N1 writes on after the seed (a copy that does not enforce the roster lets it):
        // not in the revoke's past, so it counts nowhere that does.
        let mut n1 = Doc::load_test_names([3; 16], &seed.bytes, &[]).unwrap();
        let late = n1.add_story(&new("after the revoke"), "N1", 3).unwrap();
        sync_pair(&mut n1, &mut e);
        assert!(e.fact_keys().any(|k| k.ends_with(&before)));
        assert!(!e.view().stories.contains_key(&late));
    }

    #[test]
    fn merged_history_shrinks_to_a_small_part_of_the_document() {
        let mut a = Doc::new([1; 16]).with_test_names();
        for i in 0..40 {
            let k = story(&mut a, &format!("story {i}"), vec![]);
            merge(&mut a, &k);
        }
        let whole = a.save().len();
        let seed = a.seed(1).unwrap();
        assert_eq!(seed.stories, 40);
        // Each story keeps its own fact, its counted merge, that claim and its release
        // of ~20 facts; the handoffs here are tiny, so the share is larger than a real
        // story's.
        assert!(
            seed.bytes.len() * 2 < whole,
            "seed {} of {whole} bytes",
            seed.bytes.len()
        );
    }
}
