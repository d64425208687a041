//! A local write of new stories brings the cached view up to date without a fold.
//!
//! A fold costs time linear in the document (tens of milliseconds at 10,000 stories), and
//! a write that paid for one made loading a backlog quadratic. A story this node has just
//! written usually touches nothing else in the view: its number is past every other (no
//! display id changes), nothing names its key yet (no claim, result, merge, command,
//! budget entry or dependency), and its dependencies are stories the view already holds.
//! Then its view is what the fold would give it, built from those dependencies alone, and
//! every other story's view is unchanged. When any of that does not hold,
//! [`View::add_new_stories`] says so and the caller folds the document again: the
//! result is always exactly the fold's (debug builds check it on every write).

use super::*;

/// What a write of new stories must know about every story (see `add_new_stories`),
/// and an update about the stories that depend on one (see `apply_changes`): the highest
/// number, and the stories depending on each key some story depends on. Maintained
/// wherever `stories` grows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(in crate::core::state) struct StoryIndex {
    pub(in crate::core::state) max_number: u32,
    /// By the key depended on: the keys of the stories depending on it.
    pub(in crate::core::state) dependents: BTreeMap<String, BTreeSet<String>>,
}

impl StoryIndex {
    pub(in crate::core::state) fn add(&mut self, key: &str, fact: &StoryFact) {
        self.max_number = self.max_number.max(fact.number);
        for d in &fact.depends_on {
            match self.dependents.get_mut(d) {
                Some(on) => {
                    on.insert(key.to_string());
                }
                None => {
                    self.dependents
                        .insert(d.clone(), BTreeSet::from([key.to_string()]));
                }
            }
        }
    }
}

impl View {
    /// Adds the views of `added` — story facts (document key without the `story/`
    /// prefix, fact) that a write has just put into the document this view was folded
    /// from, in the order written — as the fold would. `claims` is the claim fold of the
    /// same document (story facts change no claim). Returns false, with the view left
    /// in an unspecified state, when the shortcut does not apply: fold again then.
    pub fn add_new_stories(&mut self, claims: &Claims, added: &[(String, Arc<StoryFact>)]) -> bool {
        let keys: BTreeSet<&str> = added.iter().map(|(k, _)| k.as_str()).collect();
        if keys.len() != added.len() {
            return false;
        }
        // From the story index, not a pass over the stories: the highest number, and
        // whether any story already depends on one of the new keys (its dependency ids
        // and blocks would change).
        let max = self.story_index.max_number;
        if keys
            .iter()
            .any(|k| self.story_index.dependents.contains_key(*k))
        {
            return false;
        }
        let mut numbers = BTreeSet::new();
        for (key, fact) in added {
            let named_elsewhere = self.stories.contains_key(key.as_str())
                || self.steering.story(key).is_some()
                || claims.names_story(key)
                || self.ledger.names_story(key);
            if named_elsewhere
                || !names_story(key, fact.number, &fact.created_by)
                // An imported story may carry its landing, which the fold counts.
                || fact.imported.is_some()
                || fact.number <= max
                || !numbers.insert(fact.number)
            {
                return false;
            }
        }
        // No claim names a new story, so none has a counted result, a counted merge or
        // an attempt: the fold's per-story inputs are empty but for its dependencies.
        let counted = Counted::new();
        let index = ClaimIndex::default();
        for (key, fact) in added {
            let mut merged = BTreeMap::new();
            let mut ids: BTreeMap<&str, &str> = BTreeMap::new();
            for d in &fact.depends_on {
                let Some(dep) = self.stories.get(d.as_str()) else {
                    // Merged in an earlier epoch: the base answers for it.
                    if self
                        .base
                        .as_ref()
                        .is_some_and(|b| b.retired.contains_key(d))
                    {
                        continue;
                    }
                    return false;
                };
                // A dependency blocked or cancelled blocks its dependents, in a fixpoint
                // whose reasons depend on the order it runs in: left to the fold.
                if dep.more.blocked_reason.is_some() || dep.status == StoryStatus::Cancelled {
                    return false;
                }
                if let Some(m) = &dep.more.merged {
                    merged.insert(d.clone(), (**m).clone());
                }
                ids.insert(d.as_str(), dep.id.as_str());
            }
            let fold = StoryFold {
                claims,
                releases: &self.releases,
                counted: &counted,
                merged: &merged,
                index: &index,
                key_to_id: &ids,
                steering: &self.steering,
                base: self.base.as_deref(),
            };
            // The number is past every other: the short display id is its own.
            let story = fold.story(key, fact, &format!("S-{:04}", fact.number));
            self.story_index.add(key, fact);
            self.stories.insert(key.as_str().into(), Box::new(story));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lease::ReleaseReason;
    use crate::core::state::command::{Op, Target};
    use crate::core::state::tests::{admit, command, ended_attempt, step};
    use crate::core::state::{BudgetFact, Usage};

    const A: &str = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaaaa";
    const B: &str = "12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBbbbbbb";

    /// A document with operator OP and nodes A and B admitted.
    fn doc() -> Doc {
        let mut d = Doc::new([1; 16])
            .with_test_names()
            .with_operators(["OP".to_string()].into());
        for peer in [A, B] {
            admit(&mut d, "OP", peer);
        }
        d
    }

    fn new(title: &str, depends: &[&str]) -> NewStory {
        NewStory {
            title: title.into(),
            depends_on: depends.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Writes `news` by A as the running core does — onto the current view — and
    /// returns the keys and whether the view was brought up to date in place; when it
    /// was, it must be exactly the fold of the document.
    fn add(d: &mut Doc, news: &[NewStory]) -> (Vec<String>, bool) {
        let (mut view, claims) = d.view_and_claims();
        let (keys, current) = d
            .add_story_batch_onto(&mut view, &claims, news, "cli", A, 7)
            .unwrap();
        if current {
            assert_eq!(view, d.view(), "in place differs from the fold");
        }
        (keys, current)
    }

    /// The key A's next story will get.
    fn next_key(d: &Doc) -> String {
        story_key(d.view().max_number() + 1, A)
    }

    fn operator(d: &mut Doc, story: &str, op: Op) {
        let target = Target::Story {
            story: story.into(),
        };
        command(d, "OP", target, op, 3).unwrap();
    }

    #[test]
    fn a_new_story_updates_the_view_in_place_exactly_as_a_fold() {
        let mut d = doc();
        let (k, current) = add(&mut d, &[new("first", &[])]);
        assert!(current);
        let first = k[0].clone();
        // On a story not landed yet: waits in the backlog, its dependency by display id.
        let (k, current) = add(&mut d, &[new("after first", &["S-0001"])]);
        assert!(current);
        assert_eq!(d.view().stories[k[0].as_str()].status, StoryStatus::Backlog);
        assert_eq!(d.view().stories[k[0].as_str()].depends_on_ids, ["S-0001"]);
        // On a story in progress, and on one that landed (ready at once).
        step(&mut d, &first, Phase::Research, 0, None);
        assert!(add(&mut d, &[new("on in progress", &[&first])]).1);
        for p in [Phase::Plan, Phase::Implement] {
            step(&mut d, &first, p, 0, None);
        }
        step(&mut d, &first, Phase::Review, 0, Some(Verdict::Approve));
        step(&mut d, &first, Phase::Merge, 0, None);
        let (k, current) = add(&mut d, &[new("on landed", &[&first])]);
        assert!(current);
        assert_eq!(d.view().stories[k[0].as_str()].status, StoryStatus::Ready);
        // A batch whose stories depend on each other, by position and by display id.
        let (k, current) = add(
            &mut d,
            &[
                new("b1", &[]),
                new("b2", &["#1"]),
                new("b3", &["#2", &first]),
            ],
        );
        assert!(current);
        assert_eq!(d.view().stories[k[2].as_str()].depends_on_ids.len(), 2);
        // Operators' commands on other stories change nothing of a new one.
        operator(&mut d, &first, Op::Prioritize { priority: 5 });
        assert!(add(&mut d, &[new("after a command", &[])]).1);
        assert_eq!(d.view().stories.len(), 8);
    }

    #[test]
    fn a_new_story_the_view_cannot_take_in_place_is_left_to_the_fold() {
        let mut d = doc();
        let (k, _) = add(&mut d, &[new("will block", &[]), new("will cancel", &[])]);
        for _ in 0..MAX_ATTEMPTS {
            ended_attempt(&mut d, &k[0], ReleaseReason::Failed, "tests failed");
        }
        operator(
            &mut d,
            &k[1],
            Op::Cancel {
                reason: String::new(),
            },
        );
        // On a blocked or a cancelled story: blocked too, by the fold.
        for dep in &k {
            let (n, current) = add(&mut d, &[new("dependant", &[dep])]);
            assert!(!current);
            assert_eq!(d.view().stories[n[0].as_str()].status, StoryStatus::Blocked);
        }
        // Something in the document already names the key the story will get: a
        // claim (on its first phase or its last), a budget entry, a command, another
        // story's dependency.
        for (n, phase) in [(901, Phase::Refine), (902, Phase::Merge)] {
            let key = next_key(&d);
            let claim = ClaimFact {
                resources: vec![(Resource::story(&key, phase).unwrap(), 1)],
                holder: B.into(),
                ttl_ms: 1000,
                written_at_ms: 1,
                attempt: 1,
                after: None,
            };
            d.put_claim(&format!("{B}-{n}"), &claim).unwrap();
            assert!(!add(&mut d, &[new("claimed before written", &[])]).1);
        }
        let key = next_key(&d);
        let usage = BudgetFact::Usage {
            claim: format!("{B}-99"),
            story: key,
            phase: Phase::Research,
            day: 1,
            usage: Usage::default(),
            at_ms: 1,
        };
        d.put_budget(&usage, B).unwrap();
        assert!(!add(&mut d, &[new("booked before written", &[])]).1);
        let key = next_key(&d);
        operator(&mut d, &key, Op::Prioritize { priority: 1 });
        let (k, current) = add(&mut d, &[new("commanded before written", &[])]);
        assert!(!current);
        assert_eq!(d.view().stories[k[0].as_str()].priority, 1);
        let key = next_key(&d);
        let waiting = StoryFact {
            number: 1,
            created_by: B.into(),
            created_at_ms: 1,
            title: "waits for a story not written yet".into(),
            body: Default::default(),
            priority: 100,
            depends_on: thin_vec::thin_vec![key.clone()],
            files: crate::core::model::ThinVec::new(),
            labels: crate::core::model::ThinVec::new(),
            source: Default::default(),
            imported: None,
        };
        d.put_fact(&format!("{STORY_PREFIX}{}", story_key(1, B)), &waiting, B)
            .unwrap();
        assert!(!add(&mut d, &[new("awaited", &[])]).1);
        let v = d.view();
        assert_eq!(
            v.stories[story_key(1, B).as_str()].depends_on_ids,
            [v.stories[key.as_str()].id.clone()]
        );
    }
}
