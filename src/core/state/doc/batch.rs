//! Stories in bulk (`story add --from FILE`, `POST /v1/stories/batch`, issues from a
//! webhook): many story facts validated, sealed and written in one change — one
//! automerge commit, one durable write, one push — all or none.

use super::*;
use crate::core::trust::{self, Vouched};
use std::collections::HashMap;

/// The most stories one batch may hold: a batch is one change, held in memory and sent
/// to every peer whole.
pub const MAX_BATCH_STORIES: usize = 100_000;

/// A write of this many stories or more is vouched for by seals (`trust::vouch`): one
/// signature per 1 024 instead of one each. A story written alone keeps its own (a seal
/// would cost it ~110 bytes more).
pub const VOUCH_FROM: usize = 2;

/// Where a batch's dependency names a story written earlier in the same batch by its
/// position: `#N` is the batch's N-th story (from 1).
pub const BATCH_REF_PREFIX: char = '#';

/// Why a batch was not written; `index` is the story at fault (from 0), if one is.
#[derive(Debug, thiserror::Error)]
#[error("{}{error}", .index.map(|i| format!("story {} of the batch: ", i + 1)).unwrap_or_default())]
pub struct BatchError {
    pub index: Option<usize>,
    pub error: StateError,
}

impl BatchError {
    /// An error of the whole batch, not of one story in it.
    pub fn whole(error: StateError) -> BatchError {
        BatchError { index: None, error }
    }

    fn at(index: usize, error: impl Into<StateError>) -> BatchError {
        BatchError {
            index: Some(index),
            error: error.into(),
        }
    }
}

impl Doc {
    /// Validates and writes `news` in one change, numbered in order after the highest
    /// number in the document: all or none. A dependency names a story already in the
    /// document (display id or key) or one earlier in the batch — by the display id it
    /// gets here (`S-<number>`, numbers assigned in order) or by its position
    /// (`#N`, see [`BATCH_REF_PREFIX`]). `source` is recorded in every fact. Returns the
    /// keys in order.
    pub fn add_story_batch(
        &mut self,
        news: &[NewStory],
        source: &str,
        creator: &str,
        now_ms: u64,
    ) -> Result<Vec<String>, BatchError> {
        let view = self.view();
        self.add_story_batch_in(&view, news, source, creator, now_ms)
    }

    /// [`Doc::add_story_batch`] against `view`, this document's current view (the
    /// running core keeps one cached: a fold costs time linear in the document, and a
    /// write should not pay for one before it and one after).
    pub fn add_story_batch_in(
        &mut self,
        view: &View,
        news: &[NewStory],
        source: &str,
        creator: &str,
        now_ms: u64,
    ) -> Result<Vec<String>, BatchError> {
        if news.len() > MAX_BATCH_STORIES {
            return Err(BatchError::whole(StateError::Write {
                key: STORY_PREFIX.into(),
                why: format!(
                    "{} stories in one batch; the limit is {MAX_BATCH_STORIES}",
                    news.len()
                ),
            }));
        }
        // Display id → key, built once and only for a dependency named by display id:
        // resolving each by a scan would make a large batch quadratic, and building it
        // for every write would make each write linear in the document.
        let mut by_id: Option<HashMap<String, Option<String>>> = None;
        let mut numbers = Numbers::of(view, news);
        // Number → key of the batch's stories, for dependencies naming them by display id.
        let mut in_batch: HashMap<u32, String> = HashMap::new();
        let (mut keys, mut values) = (Vec::with_capacity(news.len()), Vec::new());
        for (i, new) in news.iter().enumerate() {
            let valid = new.validate().map_err(|e| BatchError::at(i, e))?;
            let mut depends_on = Vec::new();
            for d in &new.depends_on {
                let key = resolve_in_batch(d.trim(), &keys, &in_batch, &mut by_id, view)
                    .map_err(|e| BatchError::at(i, e))?;
                if !depends_on.contains(&key) {
                    depends_on.push(key);
                }
            }
            let number = numbers.take(valid.imported.as_ref().and_then(|i| i.number()));
            let key = story_key(number, creator);
            in_batch.insert(number, key.clone());
            let fact = StoryFact {
                number,
                created_by: creator.into(),
                created_at_ms: now_ms,
                title: valid.title.into(),
                body: valid.body.into(),
                priority: valid.priority,
                depends_on: depends_on.into(),
                files: valid.files.into_iter().map(Arc::from).collect(),
                labels: valid.labels.into(),
                source: valid
                    .imported
                    .as_ref()
                    .map_or_else(|| source.into(), |i| i.source().into()),
                imported: valid.imported.map(Box::new),
            };
            let doc_key = format!("{STORY_PREFIX}{key}");
            let json = serde_json::to_string(&fact.for_document()).map_err(|e| {
                BatchError::at(
                    i,
                    StateError::Write {
                        key: doc_key.clone(),
                        why: e.to_string(),
                    },
                )
            })?;
            values.push((doc_key, json));
            keys.push(key);
        }
        let values = self.seal_batch(values, creator)?;
        if !values.is_empty() {
            self.put_sealed(&values).map_err(BatchError::whole)?;
        }
        Ok(keys)
    }

    /// `values` (document key, JSON) sealed in `author`'s name and checked as every
    /// peer will check them: fewer than [`VOUCH_FROM`] each with its own signature, more
    /// vouched for by a seal per `trust::MAX_VOUCHED` of them (one signature each), the
    /// seals last. What to write in one change.
    fn seal_batch(
        &mut self,
        values: Vec<(String, String)>,
        author: &str,
    ) -> Result<Vec<(String, String)>, BatchError> {
        let whole = |why: String| {
            BatchError::whole(StateError::Write {
                key: STORY_PREFIX.into(),
                why,
            })
        };
        if values.len() < self.vouch_from {
            let mut sealed = Vec::with_capacity(values.len());
            for (i, (key, json)) in values.into_iter().enumerate() {
                let value = self
                    .seal_json_checked(&key, &json, author)
                    .map_err(|e| BatchError::at(i, e))?;
                sealed.push((key, value));
            }
            return Ok(sealed);
        }
        let sealer = self.sealer(author).map_err(whole)?;
        self.may_write(author).map_err(whole)?;
        let own = sealer.is_own();
        let refs: Vec<(&str, &str)> = values
            .iter()
            .map(|(k, j)| (k.as_str(), j.as_str()))
            .collect();
        let vouched = trust::vouch(author, &refs, |k, j| sealer.seal(k, j));
        // Every check a peer makes but the proof, value by value; then each seal's
        // signature, and that it vouches for its values.
        for (i, ((key, _), value)) in values.iter().zip(&vouched.values).enumerate() {
            let kind = FactKind::of_key(key).unwrap_or(FactKind::Story);
            admit_as(kind, key, value, self.scheme, &self.roster.operators, false).map_err(
                |why| {
                    BatchError::at(
                        i,
                        StateError::Write {
                            key: key.clone(),
                            why: format!("peers would refuse it: {}", why.as_str()),
                        },
                    )
                },
            )?;
        }
        let check = self.check_own(own);
        for (n, (key, seal)) in vouched.seals.iter().enumerate() {
            let opened = trust::open_seal(key, seal, self.scheme)
                .filter(|s| !check || s.check.as_ref().is_none_or(trust::SigCheck::holds))
                .ok_or_else(|| whole("peers would refuse its seal: bad signature".into()))?;
            let first = n * trust::MAX_VOUCHED;
            let chunk = values.iter().zip(&vouched.values).skip(first);
            if !chunk
                .take(trust::MAX_VOUCHED)
                .all(|((k, _), v)| opened.vouches(k, v))
            {
                return Err(whole(
                    "peers would refuse its seal: it does not list its values".into(),
                ));
            }
        }
        if own {
            self.own_seals_hold = Some(self.scheme);
        }
        let Vouched {
            values: sealed,
            seals,
        } = vouched;
        Ok(values
            .into_iter()
            .zip(sealed)
            .map(|((key, _), value)| (key, value))
            .chain(seals)
            .collect())
    }

    /// [`Doc::add_story_batch_in`], then `view` (this document's view before the write,
    /// with `claims` its claim fold) brought up to date with the new stories without a
    /// fold where [`View::add_new_stories`] can. Returns the keys and whether `view` is
    /// now this document's view; when false, `view` is unspecified and must be folded
    /// again. On an error nothing was written and `view` is untouched.
    pub fn add_story_batch_onto(
        &mut self,
        view: &mut View,
        claims: &Claims,
        news: &[NewStory],
        source: &str,
        creator: &str,
        now_ms: u64,
    ) -> Result<(Vec<String>, bool), BatchError> {
        let refused = self.rejected_total();
        let keys = self.add_story_batch_in(view, news, source, creator, now_ms)?;
        // A value refused by the write (or another key chosen again) changes more than
        // the new stories.
        let added: Option<Vec<(String, Arc<StoryFact>)>> = keys
            .iter()
            .map(|k| match self.fact(&format!("{STORY_PREFIX}{k}")) {
                Some(Fact::Story(f)) => Some((k.clone(), f.clone())),
                _ => None,
            })
            .collect();
        let current = self.rejected_total() == refused
            && added.is_some_and(|a| view.add_new_stories(claims, &a));
        Ok((keys, current))
    }

    /// The story whose fact records `source` (an issue from a tracker, say), if one
    /// was written: the lookup that makes a redelivered issue a no-op.
    pub fn story_from_source(&self, source: &str) -> Option<String> {
        self.facts().iter().find_map(|(k, f)| match f {
            Fact::Story(s) if s.source == source => k.strip_prefix(STORY_PREFIX).map(String::from),
            _ => None,
        })
    }
}

/// The numbers a write gives its new stories: in order after the highest in the
/// document, or the number an imported story had in its tracker when no story has it.
/// Numbers wanted by stories of the same write are kept for them: a story renumbered
/// earlier in the write does not take the number a later one keeps.
struct Numbers {
    taken: std::collections::HashSet<u32>,
    reserved: std::collections::HashSet<u32>,
    next: u32,
}

impl Numbers {
    /// The numbers free in `view` for `news`, in the order they will be taken.
    fn of(view: &View, news: &[NewStory]) -> Numbers {
        // Only a story that wants its number needs to know which are taken: the others
        // take numbers past the highest.
        let wants = news
            .iter()
            .any(|n| n.imported.as_ref().is_some_and(|i| i.number().is_some()));
        let taken: std::collections::HashSet<u32> = if wants {
            let retired = view.base().into_iter().flat_map(Base::numbers);
            view.stories
                .values()
                .map(|s| s.fact.number)
                .chain(retired)
                .collect()
        } else {
            Default::default()
        };
        let reserved = news
            .iter()
            .filter_map(|n| n.imported.as_ref()?.number())
            .filter(|n| !taken.contains(n))
            .collect();
        Numbers {
            taken,
            reserved,
            next: view.max_number(),
        }
    }

    /// `wanted` if free, else the next number after every one taken and not kept for
    /// another story of the write.
    fn take(&mut self, wanted: Option<u32>) -> u32 {
        let n = match wanted {
            Some(w) if !self.taken.contains(&w) => w,
            _ => {
                let mut n = self.next.saturating_add(1);
                while self.taken.contains(&n) || self.reserved.contains(&n) {
                    n = n.saturating_add(1);
                }
                n
            }
        };
        self.taken.insert(n);
        self.next = self.next.max(n);
        n
    }
}

/// The key of dependency `d` of a story in a batch whose earlier stories have `keys`
/// (`in_batch`: the same by number).
fn resolve_in_batch(
    d: &str,
    keys: &[String],
    in_batch: &HashMap<u32, String>,
    by_id: &mut Option<HashMap<String, Option<String>>>,
    view: &View,
) -> Result<String, InputError> {
    if let Some(n) = d.strip_prefix(BATCH_REF_PREFIX) {
        return match n.parse::<usize>() {
            Ok(n) if n >= 1 && n <= keys.len() => Ok(keys[n - 1].clone()),
            _ => Err(InputError::UnknownStory(format!(
                "{d} (not an earlier story of this batch)"
            ))),
        };
    }
    let retired = view.base().map(|b| &b.retired);
    if view.stories.contains_key(d)
        || keys.iter().any(|k| k == d)
        || retired.is_some_and(|r| r.contains_key(d))
    {
        return Ok(d.to_string());
    }
    let id = super::super::view::normalize_display_id(d);
    if let Some(key) = id
        .strip_prefix("S-")
        .and_then(|n| n.parse::<u32>().ok())
        .and_then(|n| in_batch.get(&n))
    {
        return Ok(key.clone());
    }
    let by_id = by_id.get_or_insert_with(|| {
        let mut m: HashMap<String, Option<String>> = HashMap::new();
        let live = view
            .stories
            .values()
            .map(|s| (s.id.as_str(), s.key.as_str()));
        // A story merged in an earlier epoch is a dependency as good as any.
        let gone = retired
            .into_iter()
            .flatten()
            .map(|(key, r)| (r.id.as_str(), key.as_str()));
        for (id, key) in live.chain(gone) {
            m.entry(id.to_string())
                .and_modify(|k| *k = None)
                .or_insert_with(|| Some(key.to_string()));
        }
        m
    });
    match by_id.get(&id) {
        Some(Some(key)) => Ok(key.clone()),
        Some(None) => Err(InputError::AmbiguousStory(d.to_string())),
        None => Err(InputError::UnknownStory(d.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaaaa";

    fn story(title: &str, depends: &[&str]) -> NewStory {
        NewStory {
            title: title.into(),
            depends_on: depends.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Puts `puts` at root keys in one change, unchecked: a hostile peer's change.
    fn hostile(d: &mut Doc, puts: &[(&str, &str)]) {
        for (k, v) in puts {
            d.inner.put(automerge::ROOT, *k, *v).unwrap();
        }
        d.inner.commit();
        d.refresh();
    }

    /// The root keys of `d` under `prefix`.
    fn keys_under(d: &Doc, prefix: &str) -> Vec<String> {
        d.inner
            .keys(automerge::ROOT)
            .filter(|k| k.starts_with(prefix))
            .collect()
    }

    /// A batch carries one signature per `trust::MAX_VOUCHED` stories: a seal beside
    /// them in their change, listing their digests. A reader admits a story only beside
    /// a seal of its own change, by its author, that checks and lists it: copied alone
    /// into another change, moved, edited, relabelled, or beside a seal someone else
    /// signed at its author's key, it is refused as a bad signature.
    #[test]
    fn a_batch_is_vouched_for_by_one_seal_and_counts_only_beside_it() {
        let mut a = Doc::new([1; 16]).with_test_names();
        let news: Vec<NewStory> = (0..3).map(|i| story(&format!("s{i}"), &[])).collect();
        let keys = a.add_stories(&news, "A", 1).unwrap();
        let seals = keys_under(&a, trust::SEAL_PREFIX);
        assert_eq!(seals.len(), 1, "one seal for the batch: {seals:?}");
        let seal = a.raw_get(&seals[0]).unwrap();
        let key = format!("{STORY_PREFIX}{}", keys[0]);
        let value = a.raw_get(&key).unwrap();
        assert!(value.starts_with("m2 A "), "{value}");
        // One story alone keeps its own signature.
        let one = a.add_stories(&news[..1], "A", 2).unwrap();
        let single = a.raw_get(&format!("{STORY_PREFIX}{}", one[0])).unwrap();
        assert!(single.starts_with("m1 A "), "{single}");

        let b = Doc::load_test_names([2; 16], &a.save(), &[]).unwrap();
        assert_eq!(b.rejected_total(), 0);
        for k in keys.iter().chain(&one) {
            assert!(
                b.facts()
                    .contains_key(format!("{STORY_PREFIX}{k}").as_str()),
                "{k}"
            );
        }

        let edited = value.replacen("\"s0\"", "\"forged\"", 1);
        assert_ne!(edited, value);
        let relabelled = value.replacen("m2 A ", "m2 B ", 1);
        let key_b = format!("{STORY_PREFIX}{}", keys[0].replace("@A", "@B"));
        let by_b = {
            let json = seal.split_once(' ').unwrap().1.split_once(' ').unwrap().1;
            let json = json.split_once(' ').unwrap().1;
            Signer::for_test("B").seal(&seals[0], json)
        };
        let other = format!("{STORY_PREFIX}S-0099@A");
        for (what, puts) in [
            (
                "copied alone into another change",
                vec![(key.as_str(), value.as_str())],
            ),
            (
                "moved to another key beside its seal",
                vec![
                    (other.as_str(), value.as_str()),
                    (seals[0].as_str(), seal.as_str()),
                ],
            ),
            (
                "edited beside its seal",
                vec![
                    (key.as_str(), edited.as_str()),
                    (seals[0].as_str(), seal.as_str()),
                ],
            ),
            (
                "relabelled beside its seal",
                vec![
                    (key_b.as_str(), relabelled.as_str()),
                    (seals[0].as_str(), seal.as_str()),
                ],
            ),
            (
                "beside a seal at its author's key signed by another",
                vec![
                    (key.as_str(), value.as_str()),
                    (seals[0].as_str(), by_b.as_str()),
                ],
            ),
        ] {
            let mut m = Doc::new([3; 16]).with_test_names();
            hostile(&mut m, &puts);
            assert_eq!(m.rejected_total(), 1, "{what}");
            assert_eq!(m.facts().iter().count(), 0, "{what}: nothing counts");
            assert_eq!(m.bad_signatures.len(), 1, "{what}: a bad signature");
        }
        // Its seal copied beside it, it counts (an epoch's copy, say).
        let mut m = Doc::new([3; 16]).with_test_names();
        hostile(
            &mut m,
            &[
                (key.as_str(), value.as_str()),
                (seals[0].as_str(), seal.as_str()),
            ],
        );
        assert_eq!(m.rejected_total(), 0);
        assert!(m.facts().contains_key(key.as_str()));
    }

    /// A batch is one change, all or none; dependencies name the document's stories or
    /// earlier ones of the batch (by position or by the id they get); a later one, or an
    /// unknown one, refuses the batch naming the story.
    #[test]
    fn a_batch_is_one_change_all_or_none_with_dependencies_inside_it() {
        let mut d = Doc::new([1; 16]).with_test_names();
        d.add_story(&story("first", &[]), A, 1).unwrap();
        let heads = d.heads_hex();

        for (bad, at) in [
            (
                vec![story("a", &[]), story("b", &["#3"]), story("c", &[])],
                1,
            ),
            (vec![story("a", &[]), story("b", &["S-0003"])], 1),
            (vec![story("a", &[]), story("", &[])], 1),
            (vec![story("a", &["S-0099"])], 0),
        ] {
            let e = d.add_story_batch(&bad, "cli", A, 2).unwrap_err();
            assert_eq!(e.index, Some(at), "{e}");
            assert_eq!(d.heads_hex(), heads, "nothing written");
        }

        let keys = d
            .add_story_batch(
                &[
                    story("a", &["S-0001"]),
                    story("b", &["#1"]),
                    story("c", &["S-0003", "s-2", "#2"]),
                ],
                "cli",
                A,
                3,
            )
            .unwrap();
        let after = d.heads_hex();
        assert_eq!(after.len(), 1);
        assert_ne!(after, heads);
        let view = d.view();
        let ids = |k: &str| view.stories[k].depends_on_ids.clone();
        assert_eq!(view.stories[keys[0].as_str()].id, "S-0002");
        assert_eq!(ids(&keys[0]), vec!["S-0001"]);
        assert_eq!(ids(&keys[1]), vec!["S-0002"]);
        assert_eq!(ids(&keys[2]), vec!["S-0003", "S-0002"]);
        // One change for the three: loading the document replays one commit after the
        // first story's.
        assert_eq!(d.inner.get_changes(&[]).len(), 2);
        assert!(d.story_from_source("cli").is_some());
        assert_eq!(d.story_from_source("github:o/r#1"), None);
    }
}
