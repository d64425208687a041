//! Stories in bulk (`story add --from FILE`, `POST /v1/stories/batch`, issues from a
//! webhook): many story facts validated, sealed and written in one change — one
//! automerge commit, one durable write, one push — all or none.

use super::*;
use std::collections::HashMap;

/// The most stories one batch may hold: a batch is one change, held in memory and sent
/// to every peer whole.
pub const MAX_BATCH_STORIES: usize = 100_000;

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
            let sealed = self
                .seal_checked(&doc_key, &fact.for_document(), creator)
                .map_err(|e| BatchError::at(i, e))?;
            values.push((doc_key, sealed));
            keys.push(key);
        }
        if !values.is_empty() {
            self.put_sealed(&values).map_err(BatchError::whole)?;
        }
        Ok(keys)
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
