//! A peer's facts bring the cached view up to date without a fold.
//!
//! A fold costs time linear in the document, and a running node needs a current view
//! several times a second (to observe claims, to find work, to stop lost work): on a
//! busy mesh every node folded on nearly every tick, and at 30 processes on one machine
//! that was most of their CPU (issue 20). Most changes are claims, releases, results,
//! merges, budget lines and node descriptions, and each touches few stories: the stories
//! its claims are for and the stories whose claims share a resource with them, and the
//! stories that depend on those. Those stories' views are built again exactly as the
//! fold builds them (`StoryFold::story`), from indexes instead of passes; every other
//! story's view cannot have changed.
//!
//! Anything else — a new or changed story, an operator's command, the roster, a claim
//! whose value changed or vanished, an inflated claim, a block that would spread along
//! dependencies, a budget line that arrived before the one the fold adds first — is
//! left to a fold: [`View::apply_changes`] says so. Debug builds (and the simulator's
//! `--check-view`) check the result against a fold on every update.

use super::super::budget::hold_story;
use super::*;

impl View {
    /// Applies the facts chosen since this view (with `claims`, its claim fold) was
    /// folded or last updated: `keys` are the keys whose fact changed, `facts` the
    /// document's chosen facts now. Returns false, with the view and claims left in an
    /// unspecified state, when an update cannot give what the fold would: fold again then.
    pub(in crate::core::state) fn apply_changes(
        &mut self,
        claims: &mut Claims,
        facts: Facts<'_>,
        keys: &BTreeSet<String>,
    ) -> bool {
        if self.notes.inflated > 0 {
            return false;
        }
        let mut added: Vec<(String, ClaimFact)> = Vec::new();
        let mut released: Vec<(String, Option<ReleaseReason>)> = Vec::new();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let mut new_stories: Vec<(String, Arc<StoryFact>)> = Vec::new();
        for key in keys {
            if !self.take_fact(
                key,
                facts.get(key.as_str()),
                &mut added,
                &mut released,
                &mut touched,
                &mut new_stories,
            ) {
                return false;
            }
        }
        // Stories new to this view (a peer's writes) go in as a local write's do, as
        // if they had come before the rest: a claim of the same batch on one then
        // touches it below like a claim on any story. In number order: one may depend
        // on an earlier one.
        if !new_stories.is_empty() {
            new_stories.sort_by_key(|(_, f)| f.number);
            if !self.add_new_stories(claims, &new_stories) {
                return false;
            }
        }
        // A claim naming a story the epoch retired: the fold drops and counts it.
        if let Some(b) = &self.base {
            if added.iter().any(|(_, c)| b.names_retired(c)) {
                return false;
            }
        }
        let new_ids: Vec<String> = added.iter().map(|(id, _)| id.clone()).collect();
        for (id, c) in &added {
            self.claims.insert(id.clone(), c.clone());
        }
        let resources = claims.update(added, released);
        // A new claim must not jump ahead on any resource it names (the fold would drop
        // it, and maybe bring one back that it dropped before).
        let jumps = new_ids
            .iter()
            .filter_map(|id| claims.claim(id))
            .flat_map(|c| &c.resources)
            .any(|(r, _)| !tokens_unbroken(claims, r));
        if jumps {
            return false;
        }
        // The stories whose claims name a resource whose top may have changed: whether
        // their claims hold (and so whether they are active) and which result counts.
        for r in &resources {
            touched.extend(r.story_key().map(str::to_string));
            for id in claims.naming(r) {
                if let Some(c) = claims.claim(id) {
                    touched.extend(
                        c.resources
                            .iter()
                            .filter_map(|(r, _)| r.story_key())
                            .map(str::to_string),
                    );
                }
            }
        }
        // And the stories depending on those: whether their dependencies landed.
        let mut affected: BTreeSet<String> = BTreeSet::new();
        for key in &touched {
            if let Some(on) = self.story_index.dependents.get(key) {
                affected.extend(on.iter().cloned());
            }
        }
        // (A key with no story still has its counted results, as in the fold.)
        affected.extend(touched);
        self.rebuild_stories(claims, &affected)
    }

    /// Takes one changed fact into the view's maps, collecting the claim and release
    /// changes and the stories it names. False: an update cannot take it.
    fn take_fact(
        &mut self,
        key: &str,
        fact: Option<&Fact>,
        added: &mut Vec<(String, ClaimFact)>,
        released: &mut Vec<(String, Option<ReleaseReason>)>,
        touched: &mut BTreeSet<String>,
        new_stories: &mut Vec<(String, Arc<StoryFact>)>,
    ) -> bool {
        let id = |prefix: &str| key.strip_prefix(prefix).unwrap_or(key).to_string();
        match (FactKind::of_key(key), fact) {
            (_, Some(Fact::Claim(c))) => {
                let id = id(CLAIM_PREFIX);
                match self.claims.get(&id) {
                    Some(old) => old == &**c,
                    None => {
                        added.push((id, (**c).clone()));
                        true
                    }
                }
            }
            (Some(FactKind::Claim), None) => !self.claims.contains_key(&id(CLAIM_PREFIX)),
            (_, Some(Fact::Release(r))) => {
                let id = id(RELEASE_PREFIX);
                if self.releases.get(&id) != Some(&**r) {
                    self.releases.insert(id.clone(), (**r).clone());
                    released.push((id, Some(r.why)));
                }
                true
            }
            (Some(FactKind::Release), None) => {
                let id = id(RELEASE_PREFIX);
                if self.releases.remove(&id).is_some() {
                    released.push((id, None));
                }
                true
            }
            (_, Some(Fact::Result(r))) => match self.results.get(key) {
                Some(old) => old == r,
                None => {
                    self.results.insert(key.to_string(), r.clone());
                    touched.insert(r.story.clone());
                    true
                }
            },
            (_, Some(Fact::Merge(m))) => match self.merges.get(key) {
                Some(old) => old == &**m,
                None => {
                    self.merges.insert(key.to_string(), (**m).clone());
                    touched.insert(m.story.clone());
                    true
                }
            },
            (Some(FactKind::Result), None) => !self.results.contains_key(key),
            (Some(FactKind::Merge), None) => !self.merges.contains_key(key),
            (_, Some(Fact::Node(n))) => {
                self.nodes.insert(id(NODE_PREFIX), (**n).clone());
                true
            }
            (Some(FactKind::Node), None) => {
                self.nodes.remove(&id(NODE_PREFIX));
                true
            }
            (_, Some(Fact::Knowledge(k))) => {
                self.knowledge.insert(id(KNOWLEDGE_PREFIX), (**k).clone());
                true
            }
            (Some(FactKind::Knowledge), None) => {
                self.knowledge.remove(&id(KNOWLEDGE_PREFIX));
                true
            }
            (_, Some(Fact::Notified(n))) => {
                self.notified.insert(id(NOTIFIED_PREFIX), (**n).clone());
                true
            }
            (Some(FactKind::Notified), None) => {
                self.notified.remove(&id(NOTIFIED_PREFIX));
                true
            }
            (_, Some(Fact::Epoch(e))) => {
                self.epochs.insert(id(EPOCH_PREFIX), (**e).clone());
                true
            }
            (Some(FactKind::Epoch), None) => {
                self.epochs.remove(&id(EPOCH_PREFIX));
                true
            }
            (_, Some(Fact::Budget(b))) => {
                if !self.ledger.adds_in_order(b) {
                    return false;
                }
                self.ledger.add(b);
                if let BudgetFact::Reserve { story, .. } | BudgetFact::Usage { story, .. } = &**b {
                    touched.insert(story.clone());
                }
                true
            }
            // A story the view already has as it is (this node's own write, taken in
            // place by `add_new_stories`), or one it has not seen (a peer's write: taken
            // in place once every changed fact is read, where `add_new_stories` can).
            (_, Some(Fact::Story(f))) => match key.strip_prefix(STORY_PREFIX) {
                Some(k) => match self.stories.get(k) {
                    Some(s) => Arc::ptr_eq(&s.fact, f) || s.fact == *f,
                    None => {
                        new_stories.push((k.to_string(), f.clone()));
                        true
                    }
                },
                None => false,
            },
            // Commands, the roster, a story or budget line gone: a fold.
            _ => false,
        }
    }

    /// Builds the views of `affected` again as the fold would, then their counted
    /// results, blocks and books. False when a block would spread along dependencies
    /// (the fold's fixpoint decides those).
    fn rebuild_stories(&mut self, claims: &Claims, affected: &BTreeSet<String>) -> bool {
        let results: Vec<(&String, &Arc<ResultFact>)> = affected
            .iter()
            .flat_map(|s| {
                under(&self.results, RESULT_PREFIX, s).filter(move |(_, r)| r.story == *s)
            })
            .collect();
        let counted = counted_results(results.into_iter(), claims);
        // What landed: the affected stories and what they depend on.
        let mut wanted: BTreeSet<&str> = BTreeSet::new();
        for k in affected {
            wanted.insert(k);
            if let Some(s) = self.stories.get(k.as_str()) {
                wanted.extend(s.fact.depends_on.iter().map(String::as_str));
            }
        }
        let merges: Vec<&MergeFact> = wanted
            .iter()
            .flat_map(|s| under(&self.merges, MERGE_PREFIX, s).filter(move |(_, m)| m.story == *s))
            .map(|(_, m)| m)
            .collect();
        let mut merged = counted_merges(merges.into_iter(), claims);
        for k in &wanted {
            if let Some((key, s)) = self.stories.get_key_value(*k) {
                if let Some(m) = crate::core::imported::Imported::landing(key, &s.fact) {
                    merged.entry(k.to_string()).or_insert(m);
                }
            }
        }
        let key_to_id: BTreeMap<&str, &str> = wanted
            .iter()
            .filter_map(|k| self.stories.get_key_value(*k))
            .map(|(k, s)| (k.as_str(), s.id.as_str()))
            .collect();
        let mut index = ClaimIndex::default();
        for k in affected {
            for (r, ids) in claims.story_resources(k) {
                let on: Vec<(&str, &ClaimFact)> = ids
                    .iter()
                    .filter_map(|id| claims.claim(id).map(|c| (id.as_str(), c)))
                    .collect();
                index.by_resource.insert(r, on);
            }
            if claims.story_active(k) {
                index.active_stories.insert(k.as_str());
            }
        }
        let fold = StoryFold {
            claims,
            releases: &self.releases,
            counted: &counted,
            merged: &merged,
            index: &index,
            key_to_id: &key_to_id,
            steering: &self.steering,
            base: self.base.as_deref(),
        };
        let mut built: Vec<StoryView> = Vec::with_capacity(affected.len());
        for k in affected {
            if let Some(s) = self.stories.get(k.as_str()) {
                built.push(fold.story(k, &s.fact, &s.id));
            }
        }
        let active: BTreeSet<String> = index.active_stories.iter().map(|s| s.to_string()).collect();
        let counted_keys: Vec<((String, Phase, u32), String)> = counted
            .into_iter()
            .map(|(k, (rkey, _))| (k, rkey.clone()))
            .collect();
        // A story that starts or stops blocking its dependents, or one a blocked or
        // cancelled dependency would block: the fold's fixpoint.
        for s in &built {
            let blocks = |v: &StoryView| {
                v.more.blocked_reason.is_some() || v.status == StoryStatus::Cancelled
            };
            let before = self.stories.get(s.key.as_str()).is_some_and(|v| blocks(v));
            if blocks(s) != before && self.story_index.dependents.contains_key(s.key.as_str()) {
                return false;
            }
            let open = s.more.merged.is_none()
                && s.more.blocked_reason.is_none()
                && s.more.cancelled.is_none()
                && !active.contains(s.key.as_str());
            let dep_blocks = s.fact.depends_on.iter().any(|d| {
                let v = if *d == s.key {
                    Some(s)
                } else {
                    built
                        .iter()
                        .find(|b| b.key == *d)
                        .or_else(|| self.stories.get(d.as_str()).map(|v| &**v))
                };
                v.is_some_and(blocks)
            });
            if open && dep_blocks {
                return false;
            }
        }
        for k in affected {
            let lo = (k.clone(), Phase::Refine, 0);
            let stale: Vec<(String, Phase, u32)> = self
                .counted
                .range(lo..)
                .take_while(|(c, _)| c.0 == *k)
                .map(|(c, _)| c.clone())
                .collect();
            for c in stale {
                self.counted.remove(&c);
            }
        }
        self.counted.extend(counted_keys);
        for mut s in built {
            hold_story(&mut s, &self.ledger, &self.steering);
            self.stories.insert(s.key.clone(), Box::new(s));
        }
        true
    }
}

/// The entries of `map` whose keys are `{prefix}{story}/…`: the results or merges
/// written about one story (their keys name it; the caller checks the fact does too).
fn under<'a, V>(
    map: &'a BTreeMap<String, V>,
    prefix: &str,
    story: &str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    let from = format!("{prefix}{story}/");
    map.range(from.clone()..)
        .take_while(move |(k, _)| k.starts_with(&from))
}

/// Whether the tokens of the claims on `resource` run 1, 2, … (or on from its floor:
/// every token up to it was reached) without a gap (what `drop_inflated_claims` keeps).
fn tokens_unbroken(claims: &Claims, resource: &Resource) -> bool {
    let floor = claims.floor(resource);
    let tokens: BTreeSet<u64> = claims
        .naming(resource)
        .iter()
        .filter_map(|id| claims.claim(id))
        .flat_map(|c| c.resources.iter().filter(|(r, _)| r == resource))
        .map(|(_, t)| *t)
        .filter(|t| *t > floor)
        .collect();
    tokens
        .iter()
        .zip(floor.saturating_add(1)..)
        .all(|(t, want)| *t == want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lease::ReleaseReason;
    use crate::core::state::command::{Op, Target};
    use crate::core::state::tests::{admit, command, ended_attempt, step};

    const A: &str = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaaaa";
    const B: &str = "12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBbbbbbb";

    fn new(title: &str, depends: &[&str]) -> NewStory {
        NewStory {
            title: title.into(),
            depends_on: depends.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        }
    }

    /// A document with operator OP, nodes A and B admitted, and two stories by A, the
    /// second depending on the first; with its view and claim fold (changes taken).
    fn doc() -> (Doc, View, Claims, [String; 2]) {
        let mut d = Doc::new([1; 16])
            .with_test_names()
            .with_operators(["OP".to_string()].into());
        for peer in [A, B] {
            admit(&mut d, "OP", peer);
        }
        let first = d.add_story(&new("first", &[]), A, 1).unwrap();
        let second = d.add_story(&new("second", &[&first]), A, 2).unwrap();
        d.take_changes();
        let (v, c) = d.view_and_claims();
        (d, v, c, [first, second])
    }

    /// Brings `v` and `c` up to date as the running core does; when in place, they must
    /// be exactly the fold. Returns whether they were (else they are the fold).
    fn update(d: &mut Doc, v: &mut View, c: &mut Claims) -> bool {
        let in_place = d.update_view(v, c);
        let (fv, fc) = d.view_and_claims();
        if in_place {
            assert_eq!(*v, fv, "in place differs from the fold");
            assert!(*c == fc, "the claim fold in place differs from the fold");
        } else {
            (*v, *c) = (fv, fc);
        }
        in_place
    }

    #[test]
    fn a_peers_claims_results_releases_and_landings_update_the_view_in_place_exactly_as_a_fold() {
        let (mut d, mut v, mut c, [first, second]) = doc();
        // Every step of the first story, each a claim, a result and a release (and the
        // merge its landing): in place, and the dependent story becomes ready.
        for p in [Phase::Research, Phase::Plan, Phase::Implement] {
            step(&mut d, &first, p, 0, None);
            assert!(update(&mut d, &mut v, &mut c), "{p}");
            assert_eq!(v.stories[first.as_str()].status, StoryStatus::InProgress);
        }
        step(&mut d, &first, Phase::Review, 0, Some(Verdict::Approve));
        assert!(update(&mut d, &mut v, &mut c));
        assert_eq!(v.stories[second.as_str()].status, StoryStatus::Backlog);
        step(&mut d, &first, Phase::Merge, 0, None);
        assert!(update(&mut d, &mut v, &mut c));
        assert_eq!(v.stories[first.as_str()].status, StoryStatus::Merged);
        assert_eq!(v.stories[second.as_str()].status, StoryStatus::Ready);
        // Attempts that ended without a result, below the limit; and nothing at all.
        ended_attempt(&mut d, &second, ReleaseReason::Failed, "tests failed");
        assert!(update(&mut d, &mut v, &mut c));
        assert_eq!(v.stories[second.as_str()].failed_attempts, 1);
        assert!(update(&mut d, &mut v, &mut c));
        // Work on a key no story has (yet): its result counts in the view all the same.
        let orphan = story_key(99, B);
        step(&mut d, &orphan, Phase::Research, 0, None);
        assert!(update(&mut d, &mut v, &mut c));
        assert!(v.counted_result(&orphan, Phase::Research).is_some());
    }

    #[test]
    fn a_peers_new_stories_update_the_view_in_place_exactly_as_a_fold() {
        // Every node took a story another node wrote by folding its whole view again:
        // a fold per story per node, ~130 ms at 100,000 stories.
        let (mut d, mut v, mut c, [first, _]) = doc();
        let alone = d.add_story(&new("by B", &[]), B, 3).unwrap();
        assert!(update(&mut d, &mut v, &mut c));
        assert_eq!(v.stories[alone.as_str()].status, StoryStatus::Ready);
        // On a story not landed yet: waits, its dependency by display id.
        let on_first = d.add_story(&new("on first", &[&first]), B, 4).unwrap();
        assert!(update(&mut d, &mut v, &mut c));
        assert_eq!(v.stories[on_first.as_str()].status, StoryStatus::Backlog);
        assert_eq!(v.stories[on_first.as_str()].depends_on_ids, ["S-0001"]);
        // Two in one update, the second on the first.
        let one = d.add_story(&new("one", &[]), B, 5).unwrap();
        let two = d.add_story(&new("two", &[&one]), B, 6).unwrap();
        assert!(update(&mut d, &mut v, &mut c));
        assert_eq!(v.stories[two.as_str()].status, StoryStatus::Backlog);
        // A story with a claim on it, a result and a release, in the same update (the
        // first claimer claims on the news and pushes both at once).
        let claimed = d.add_story(&new("claimed at once", &[]), B, 7).unwrap();
        step(&mut d, &claimed, Phase::Research, 0, None);
        assert!(update(&mut d, &mut v, &mut c));
        assert!(v.counted_result(&claimed, Phase::Research).is_some());
        // A new story depending on one that landed: ready at once.
        for p in [Phase::Research, Phase::Plan, Phase::Implement] {
            step(&mut d, &first, p, 0, None);
        }
        step(&mut d, &first, Phase::Review, 0, Some(Verdict::Approve));
        step(&mut d, &first, Phase::Merge, 0, None);
        assert!(update(&mut d, &mut v, &mut c));
        let on_landed = d.add_story(&new("on landed", &[&first]), B, 8).unwrap();
        assert!(update(&mut d, &mut v, &mut c));
        assert_eq!(v.stories[on_landed.as_str()].status, StoryStatus::Ready);
    }

    #[test]
    fn what_an_update_cannot_take_is_left_to_the_fold() {
        let (mut d, mut v, mut c, [first, second]) = doc();
        // An operator's command.
        let target = Target::Story {
            story: second.clone(),
        };
        command(&mut d, "OP", target, Op::Prioritize { priority: 5 }, 3).unwrap();
        assert!(!update(&mut d, &mut v, &mut c));
        assert_eq!(v.stories[second.as_str()].priority, 5);
        // A block that spreads to a dependent: the fold's fixpoint.
        for _ in 0..MAX_ATTEMPTS {
            ended_attempt(&mut d, &first, ReleaseReason::Failed, "tests failed");
        }
        assert!(!update(&mut d, &mut v, &mut c));
        assert_eq!(v.stories[second.as_str()].status, StoryStatus::Blocked);
        // A new story depending on a blocked one (blocked in turn, by the fixpoint).
        let on_blocked = d.add_story(&new("on blocked", &[&second]), B, 4).unwrap();
        assert!(!update(&mut d, &mut v, &mut c));
        assert_eq!(v.stories[on_blocked.as_str()].status, StoryStatus::Blocked);
        // A claim that jumps ahead on its resource (and every update after it).
        let claim = ClaimFact {
            resources: vec![(Resource::story(&second, Phase::Research).unwrap(), 9)],
            holder: B.into(),
            ttl_ms: 1000,
            written_at_ms: 1,
            attempt: 1,
            after: None,
        };
        d.put_claim(&format!("{B}-900"), &claim).unwrap();
        assert!(!update(&mut d, &mut v, &mut c));
        assert_eq!(v.malformed, 1);
        ended_attempt(&mut d, &second, ReleaseReason::Failed, "tests failed");
        assert!(!update(&mut d, &mut v, &mut c));
    }
}
