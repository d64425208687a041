//! A new node takes a large document as a snapshot, not change by change.
//!
//! Sync hands a new node every change of the document: at 100,000 stories loaded in
//! 10,000-story changes, automerge applying them one by one (it splices each run of a
//! change into its columns) ran out of 24 GiB. Loading the same document from a saved
//! snapshot takes a fraction of a second. So a peer answers a new node's first sync
//! with its document saved whole (`machine/sync.rs` decides when), and the new node
//! loads it and applies its own few changes on top. Every value in it is then read and
//! checked like any other peer's: a snapshot is trusted no more than a change.

use super::*;

impl Doc {
    /// This document saved whole, for a new node (the store's save point and size are
    /// not touched: nothing is compacted).
    pub fn snapshot_for_join(&mut self) -> Vec<u8> {
        self.inner.document().save()
    }

    /// Takes in a peer's whole document (its [`Doc::snapshot_for_join`]): loaded, with
    /// this document's own changes applied on top, then read like any change. Meant for
    /// a document that holds next to nothing: its changes are applied one by one.
    pub fn merge_snapshot(&mut self, bytes: &[u8]) -> Result<Taken, StateError> {
        self.room_for(bytes.len() as u64)?;
        let mut merged = AutoCommit::load(bytes).map_err(|e| StateError::Sync(e.to_string()))?;
        let theirs = merged.get_heads();
        let ours = self.inner.document().save();
        merged
            .load_incremental(&ours)
            .map_err(|e| StateError::Sync(e.to_string()))?;
        merged.set_actor(self.inner.get_actor().clone());
        let before = self.inner.get_heads();
        if before
            .iter()
            .any(|h| merged.get_change_by_hash(h).is_none())
        {
            // Cannot happen (ours were just applied); never drop a change of ours.
            return Err(StateError::Sync("a snapshot lost our own changes".into()));
        }
        if merged.get_heads() == before {
            return Ok(Taken {
                theirs,
                stored: None,
            });
        }
        // What the store keeps from now on: their snapshot as it came as its snapshot
        // (no save to encode 100,000 stories again), every change of ours it lacks after
        // it, and the record of the checks the read below makes.
        let tail = merged.document().save_after(&theirs);
        self.inner = merged;
        self.saved = self.inner.get_heads();
        self.stored = (bytes.len() as u64).saturating_add(tail.len() as u64);
        self.refresh();
        let checked = self.record_for(theirs.clone());
        Ok(Taken {
            theirs,
            stored: Some(Rebase {
                snapshot: bytes.to_vec(),
                checked,
                tail,
            }),
        })
    }
}

impl Doc {
    /// Whether every value admitted here was written by `author`: the node never took in
    /// anything of a mesh (a new node's first document holds its own description and
    /// little more). By verified author, not automerge actor: a node writes under a new
    /// actor each time it starts.
    pub fn holds_only_own(&mut self, author: &str) -> bool {
        self.refresh();
        self.candidates
            .values()
            .flat_map(|e| &e.all)
            .all(|c| &*c.author == author)
    }

    /// A new node's way into a mesh that moved on: epoch `root`'s document as a peer
    /// saved it whole, opened with that root ([`Doc::with_epoch_root`]: its first
    /// change, a seed), with every value of this document carried in
    /// ([`Doc::carry_from`]). Meant for a document that [`Doc::holds_only_own`]: no
    /// other author's value could be carried. Same actor, writer, key
    /// scheme, operators, size cap and checker as this one; every value in it is read
    /// and checked as a change's would be. What root to take is the caller's choice
    /// (the machine takes the one most alive peers name, DESIGN.md §3.5).
    pub fn join_epoch(&mut self, bytes: &[u8], root: &ChangeHash) -> Result<Doc, StateError> {
        self.room_for(bytes.len() as u64)?;
        let inner = AutoCommit::load(bytes).map_err(|e| StateError::Sync(e.to_string()))?;
        self.take_up(self.sibling(inner), root)
    }

    /// [`Doc::join_epoch`] of a document synced from a peer into [`Doc::empty_sibling`]
    /// (one too large to send whole).
    pub fn take_up(&mut self, mut doc: Doc, root: &ChangeHash) -> Result<Doc, StateError> {
        doc.refresh();
        let mut doc = doc.with_epoch_root(root)?;
        doc.carry_from(self, &[])?;
        Ok(doc)
    }

    /// An empty document under this one's actor, that writes, checks and caps as this
    /// one does: what a new node syncs a moved mesh's document into.
    pub fn empty_sibling(&self) -> Doc {
        self.sibling(AutoCommit::new())
    }

    /// The document epoch `epoch` (this one's) was cut from, as the store archived it at
    /// the move (`Store::archived`): what a node that moved serves a peer still on it
    /// after a restart (DESIGN.md §3.5, step 6). Opened at its own seed, its one change
    /// without dependencies, or as the first document when `epoch` is 1. Same actor,
    /// writer, checks and cap as this one.
    pub fn previous(&self, bytes: &[u8], epoch: u64) -> Result<Doc, StateError> {
        let corrupt = |why: String| {
            StateError::Corrupt(format!("archived epoch {}: {why}", epoch.saturating_sub(1)))
        };
        let inner = AutoCommit::load(bytes).map_err(|e| corrupt(e.to_string()))?;
        let mut doc = self.sibling(inner);
        doc.refresh();
        if epoch <= 1 {
            return Ok(doc);
        }
        let root = doc
            .inner
            .get_changes(&[])
            .iter()
            .find(|c| c.deps().is_empty())
            .map(|c| c.hash())
            .ok_or_else(|| corrupt("no seed".into()))?;
        doc.with_epoch_root(&root)
    }
}

/// What [`Doc::merge_snapshot`] took in.
#[derive(Debug)]
pub struct Taken {
    /// The snapshot's heads: what the peer that sent it holds.
    pub theirs: Vec<ChangeHash>,
    /// What the store holds from now on, in place of everything it held (none when the
    /// snapshot brought nothing new).
    pub stored: Option<Rebase>,
}

/// A store's whole content after a join (`Store::rebase`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebase {
    /// The peer's document as it came: the store's snapshot.
    pub snapshot: Vec<u8>,
    /// The record of its signature checks (`Doc::load_stored`; empty for none).
    pub checked: Vec<u8>,
    /// This node's changes the snapshot lacks (empty for none): the one chunk after it.
    pub tail: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a store holds after a join, loaded as a restart loads it.
    fn restarted(actor: [u8; 16], kept: &Rebase) -> Doc {
        Doc::load_as(
            actor,
            &kept.snapshot,
            &kept.checked,
            std::slice::from_ref(&kept.tail),
            KeyScheme::TestNames,
            BTreeSet::new(),
            None,
        )
        .expect("reload")
    }

    fn with_stories(actor: u8, by: &str, n: u32) -> Doc {
        let mut d = Doc::new([actor; 16]).with_test_names();
        for i in 0..n {
            let new = NewStory {
                title: format!("story {i} by {by}"),
                ..Default::default()
            };
            d.add_story(&new, by, 0).expect("write");
        }
        d
    }

    #[test]
    fn a_snapshot_brings_the_peers_document_and_keeps_our_own_changes() {
        let mut big = with_stories(1, "A", 20);
        let mut new = with_stories(2, "B", 1);
        assert!(
            !new.save_incremental().is_empty(),
            "B's first change is stored before the join"
        );
        // One change of B's not stored yet when the snapshot comes.
        new.add_story(
            &NewStory {
                title: "late".into(),
                ..Default::default()
            },
            "B",
            0,
        )
        .expect("write");
        let snapshot = big.snapshot_for_join();
        let stored = big.stored_bytes();
        let taken = new.merge_snapshot(&snapshot).expect("merge");
        assert_eq!(taken.theirs, big.heads());
        assert_eq!(new.view().stories.len(), 22, "theirs and ours");
        let kept = taken.stored.expect("the snapshot brought something");
        assert_eq!(kept.snapshot, snapshot, "their snapshot as it came");
        assert!(!kept.tail.is_empty(), "our changes after it");
        assert!(!kept.checked.is_empty(), "every change was read: a record");
        assert_eq!(
            new.stored_bytes(),
            (kept.snapshot.len() + kept.tail.len()) as u64
        );
        assert!(
            new.save_incremental().is_empty(),
            "the store has it all then"
        );
        // The record speaks for the snapshot: a restart checks no signature in it again.
        let mut snapshot_only = Doc::load_test_names([4; 16], &kept.snapshot, &[]).expect("load");
        assert!(snapshot_only.trusted_by(&kept.checked).is_some());
        // What the store then holds loads as the same document (the change stored
        // before the join included: it is in the tail).
        let mut reloaded = restarted([3; 16], &kept);
        assert_eq!(reloaded.heads(), new.heads());
        assert_eq!(reloaded.view(), new.view());
        // B's changes reach A as usual: the two converge.
        big.inner
            .load_incremental(&new.inner.document().save())
            .expect("load");
        big.refresh();
        assert_eq!(big.heads_digest(), new.heads_digest(), "converged");
        assert_eq!(
            big.stored_bytes(),
            stored,
            "a snapshot for a join compacts nothing"
        );
        // Nothing new the second time, nothing to store.
        assert!(new
            .merge_snapshot(&snapshot)
            .expect("again")
            .stored
            .is_none());
    }

    #[test]
    fn a_snapshot_is_checked_like_any_change() {
        let mut a = with_stories(1, "A", 2);
        // A forged value: B's name on A's signature.
        let k = format!("{STORY_PREFIX}{}", story_key(9, "B"));
        let forged = Signer::for_test("A")
            .seal(&k, "{}")
            .replacen("m1 A ", "m1 B ", 1);
        a.inner.put(automerge::ROOT, &k, forged).expect("put");
        a.inner.commit();
        let mut new = Doc::new([2; 16]).with_test_names();
        let kept = new
            .merge_snapshot(&a.snapshot_for_join())
            .expect("merge")
            .stored
            .expect("new facts");
        assert_eq!(new.view().stories.len(), 2);
        assert_eq!(new.rejected_total(), 1, "the forgery is refused");
        // And again after a restart that trusts the record of the join's checks.
        let again = restarted([4; 16], &kept);
        assert!(!kept.checked.is_empty());
        assert_eq!(again.view().stories.len(), 2);
        assert_eq!(again.rejected_total(), 1, "refused again after a restart");
        assert!(new.merge_snapshot(b"not a document").is_err());
        let capped = &mut Doc::new([3; 16]).with_test_names().with_size_cap(10);
        assert!(matches!(
            capped.merge_snapshot(&a.snapshot_for_join()),
            Err(StateError::Full { .. })
        ));
    }

    #[test]
    fn a_new_node_takes_up_a_moved_meshs_document_only_at_its_seed() {
        let mut mesh = with_stories(1, "A", 3);
        let seed = mesh.seed(1).unwrap();
        let moved = Doc::load_test_names([1; 16], &seed.bytes, &[])
            .unwrap()
            .with_epoch_root(&seed.root)
            .unwrap()
            .snapshot_for_join();
        let mut new = with_stories(2, "B", 1);
        assert!(new.holds_only_own("B"));
        // Under another actor (a restart) it is still its own.
        let mut new = Doc::load_test_names([3; 16], &new.save(), &[]).unwrap();
        new.add_story(
            &NewStory {
                title: "after a restart".into(),
                ..Default::default()
            },
            "B",
            0,
        )
        .unwrap();
        assert!(new.holds_only_own("B"));
        // Opened at a root that is not the seed: refused, nothing taken.
        let not_seed = mesh.heads()[0];
        assert!(new.join_epoch(&moved, &not_seed).is_err());
        // At the seed: the mesh's document with the new node's own story carried in.
        let mut joined = new.join_epoch(&moved, &seed.root).unwrap();
        assert_eq!(joined.epoch_root(), Some(seed.root.0));
        assert_eq!(joined.base().map(|b| b.epoch), Some(1));
        assert_eq!(crate::core::state::tests::titles(&joined).len(), 5);
        assert!(!joined.holds_only_own("B"), "it holds the mesh's facts");
        // A node that took in anything of a mesh's is not new.
        crate::core::state::tests::sync_pair(&mut new, &mut mesh);
        assert!(!new.holds_only_own("B"));
    }
}
