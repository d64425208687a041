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
                persist: Vec::new(),
            });
        }
        // What the store lacks: their snapshot as it came (no save to encode it again),
        // and any change of ours not saved yet.
        let mut persist = vec![bytes.to_vec()];
        let unsaved = self.inner.document().save_after(&self.saved);
        if !unsaved.is_empty() {
            persist.push(unsaved);
        }
        self.inner = merged;
        self.saved = self.inner.get_heads();
        self.stored = persist
            .iter()
            .fold(self.stored, |n, c| n.saturating_add(c.len() as u64));
        self.refresh();
        Ok(Taken { theirs, persist })
    }
}

/// What [`Doc::merge_snapshot`] took in.
#[derive(Debug)]
pub struct Taken {
    /// The snapshot's heads: what the peer that sent it holds.
    pub theirs: Vec<ChangeHash>,
    /// Chunks for the store, in order (none when the snapshot brought nothing new).
    pub persist: Vec<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let stored_first = new.save_incremental();
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
        assert_eq!(
            taken.persist.len(),
            2,
            "their snapshot, then our unsaved change"
        );
        assert!(
            new.save_incremental().is_empty(),
            "the store has it all then"
        );
        // What the store then holds loads as the same document.
        let mut chunks = vec![stored_first];
        chunks.extend(taken.persist);
        let mut reloaded = Doc::load_test_names([3; 16], &[], &chunks).expect("reload");
        assert_eq!(reloaded.heads(), new.heads());
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
            .persist
            .is_empty());
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
        assert!(!new
            .merge_snapshot(&a.snapshot_for_join())
            .expect("merge")
            .persist
            .is_empty());
        assert_eq!(new.view().stories.len(), 2);
        assert_eq!(new.rejected_total(), 1, "the forgery is refused");
        assert!(new.merge_snapshot(b"not a document").is_err());
        let capped = &mut Doc::new([3; 16]).with_test_names().with_size_cap(10);
        assert!(matches!(
            capped.merge_snapshot(&a.snapshot_for_join()),
            Err(StateError::Full { .. })
        ));
    }
}
