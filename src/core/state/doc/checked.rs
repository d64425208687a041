//! A restart that does not check every signature again.
//!
//! Loading a document reads every fact and checks its signature: at 100,000 stories that
//! is 100,000 ed25519 checks, ~5 s of a 5.5 s restart. But a node's snapshot holds only
//! facts it has already checked, when they first reached it. So with each snapshot it
//! keeps a record of that check: the heads the snapshot covers (its facts all read) and
//! the operations whose signature failed. A load whose snapshot has exactly those heads
//! checks the signatures of those operations only — they fail again, as before — and
//! makes every other check (format, author, entitlement, roster) as usual; the chunks
//! stored after the snapshot are checked in full. A record that does not match (another
//! snapshot, an older format, bytes that do not decode) is ignored: the load then checks
//! everything, as before. The node's disk is inside its trust boundary (it holds the
//! node's key; docs/SECURITY.md).

use super::*;

/// What a snapshot's facts went through when this node read them.
#[derive(Debug, Serialize, Deserialize)]
struct Checked {
    /// The snapshot's heads, sorted: the record speaks for that snapshot only.
    heads: Vec<[u8; 32]>,
    /// Operations (counter, actor) whose signature failed.
    bad: Vec<(u64, Vec<u8>)>,
}

/// Bounds a record read from disk (a bad signature costs its writer a change, so the
/// list is bounded by the document's own cap; this is the decoder's).
const MAX_CHECKED_BYTES: usize = 64 << 20;

/// The record's own format version (it is on disk, not on the wire).
const RECORD_VERSION: u8 = 1;

fn encode(r: &Checked) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    match bincode::serde::encode_to_vec(r, bincode::config::standard()) {
        Ok(body) => out.extend(body),
        // Plain data cannot fail to encode; no record is always safe.
        Err(_) => return Vec::new(),
    }
    out
}

fn decode(bytes: &[u8]) -> Result<Checked, String> {
    let (&version, body) = bytes.split_first().ok_or("empty")?;
    if version != RECORD_VERSION {
        return Err(format!("format {version}, not {RECORD_VERSION}"));
    }
    let cfg = bincode::config::standard().with_limit::<MAX_CHECKED_BYTES>();
    bincode::serde::decode_from_slice(body, cfg)
        .map(|(r, _)| r)
        .map_err(|e| e.to_string())
}

fn sorted(mut heads: Vec<ChangeHash>) -> Vec<[u8; 32]> {
    heads.sort();
    heads.into_iter().map(|h| h.0).collect()
}

impl Doc {
    /// A compacted snapshot (see [`Doc::save`]) and the record of its checks, for
    /// [`Doc::load_stored`]; the record is empty when some change is not read yet.
    pub fn save_checked(&mut self) -> (Vec<u8>, Vec<u8>) {
        let snapshot = self.save();
        let heads = self.inner.get_heads();
        let record = self.record_for(heads);
        (snapshot, record)
    }

    /// The record for a snapshot with `heads` (one this document holds): empty unless
    /// every change of this document has been read.
    pub(super) fn record_for(&mut self, heads: Vec<ChangeHash>) -> Vec<u8> {
        if sorted(self.inner.get_heads()) != sorted(self.scanned.clone()) {
            return Vec::new();
        }
        encode(&Checked {
            heads: sorted(heads),
            bad: self
                .bad_signatures
                .iter()
                .map(|(n, a)| (*n, a.to_vec()))
                .collect(),
        })
    }

    /// [`Doc::load_with_operators`] from what a node stored: its snapshot, the record
    /// [`Doc::save_checked`] made with it (empty for none), the chunks since; the
    /// signatures it must check checked by `checker` in batches (the shell's may use several cores).
    pub fn load_stored(
        actor: [u8; 16],
        snapshot: &[u8],
        checked: &[u8],
        chunks: &[Vec<u8>],
        operators: BTreeSet<String>,
        checker: Option<crate::core::trust::Checker>,
    ) -> Result<Doc, StateError> {
        Doc::load_as(
            actor,
            snapshot,
            checked,
            chunks,
            KeyScheme::PeerIds,
            operators,
            checker,
        )
    }

    /// Whether `record` speaks for the document as loaded so far (its snapshot): then
    /// the signatures to check again during the first read.
    pub(super) fn trusted_by(&mut self, record: &[u8]) -> Option<BTreeSet<OpId>> {
        if record.is_empty() {
            return None;
        }
        if record.len() > MAX_CHECKED_BYTES {
            tracing::warn!(
                "the stored record of checked signatures is too large; checking every one"
            );
            return None;
        }
        let r = match decode(record) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "the stored record of checked signatures does not decode; checking every one");
                return None;
            }
        };
        if r.heads != sorted(self.inner.get_heads()) {
            tracing::warn!(
                "the stored record of checked signatures is not the snapshot's; checking every one"
            );
            return None;
        }
        Some(r.bad.into_iter().map(|(n, a)| (n, a.into())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::trust::Signer;

    fn story(n: u32, by: &str) -> (String, String) {
        let key = format!("{STORY_PREFIX}{}", crate::core::state::story_key(n, by));
        let fact = StoryFact {
            number: n,
            created_by: by.into(),
            created_at_ms: 0,
            title: format!("story {n}").into(),
            body: Default::default(),
            priority: crate::core::model::PRIORITY_DEFAULT,
            depends_on: crate::core::model::ThinVec::new(),
            files: crate::core::model::ThinVec::new(),
            labels: crate::core::model::ThinVec::new(),
            source: Default::default(),
            imported: None,
        };
        (key, serde_json::to_string(&fact).expect("json"))
    }

    /// A node's snapshot with a good fact by A and a forged one (B's name, A's key).
    fn stored() -> (Vec<u8>, Vec<u8>) {
        let mut d = Doc::new([1; 16]).with_test_names();
        let (k, v) = story(1, "A");
        let good = Signer::for_test("A").seal(&k, &v);
        let (k2, v2) = story(2, "B");
        let forged = Signer::for_test("A")
            .seal(&k2, &v2)
            .replacen("m1 A ", "m1 B ", 1);
        d.inner.put(automerge::ROOT, &k, good).expect("put");
        d.inner.put(automerge::ROOT, &k2, forged).expect("put");
        d.inner.commit();
        d.refresh();
        assert!(d.facts().contains_key(k.as_str()), "the good fact counts");
        assert!(!d.facts().contains_key(k2.as_str()), "the forgery does not");
        d.save_checked()
    }

    fn load(snapshot: &[u8], record: &[u8]) -> Doc {
        Doc::load_as(
            [2; 16],
            snapshot,
            record,
            &[],
            KeyScheme::TestNames,
            BTreeSet::new(),
            None,
        )
        .expect("load")
    }

    #[test]
    fn a_restart_from_a_checked_snapshot_keeps_refusing_what_failed_its_check() {
        let (snapshot, record) = stored();
        assert!(!record.is_empty(), "every change was read: a record");
        for (record, what) in [(&record[..], "with the record"), (&[][..], "without")] {
            let d = load(&snapshot, record);
            let stories: Vec<&FactKey> = d
                .facts()
                .keys()
                .filter(|k| k.starts_with(STORY_PREFIX))
                .collect();
            assert_eq!(stories.len(), 1, "{what}: only the good fact counts");
            assert_eq!(
                d.rejected_total(),
                1,
                "{what}: the forgery is refused again"
            );
            assert_eq!(
                d.bad_signatures.len(),
                1,
                "{what}: and recorded for the next"
            );
        }
        // The record is what spares the checks: one that forgot the failure lets the
        // forgery through (which is why only this node's own disk may hold one).
        let forgetful = encode(&Checked {
            heads: sorted(load(&snapshot, &[]).inner.get_heads()),
            bad: Vec::new(),
        });
        let d = load(&snapshot, &forgetful);
        assert_eq!(d.rejected_total(), 0, "no signature was checked");
    }

    #[test]
    fn a_batch_checker_gives_the_verdicts_checking_one_by_one_gives() {
        use crate::core::trust::{Checker, SigCheck};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let mut d = Doc::new([1; 16]).with_test_names();
        let a = Signer::for_test("A");
        for n in 1..=300 {
            let (k, v) = story(n, "A");
            d.inner
                .put(automerge::ROOT, &k, a.seal(&k, &v))
                .expect("put");
        }
        let (k, v) = story(301, "B");
        let forged = a.seal(&k, &v).replacen("m1 A ", "m1 B ", 1);
        d.inner.put(automerge::ROOT, &k, forged).expect("put");
        d.inner.commit();
        let snapshot = d.save();
        let checked = Arc::new(AtomicUsize::new(0));
        let seen = checked.clone();
        let checker = Checker(Arc::new(move |checks: &[SigCheck]| {
            seen.fetch_add(checks.len(), Ordering::SeqCst);
            checks.iter().map(SigCheck::holds).collect()
        }));
        let load = |checker| {
            Doc::load_as(
                [2; 16],
                &snapshot,
                &[],
                &[],
                KeyScheme::TestNames,
                BTreeSet::new(),
                checker,
            )
            .expect("load")
        };
        let (with, without) = (load(Some(checker)), load(None));
        assert_eq!(
            checked.load(Ordering::SeqCst),
            301,
            "one batch of every value"
        );
        assert_eq!(with.facts().iter().count(), 300);
        assert_eq!(
            with.facts().keys().collect::<Vec<_>>(),
            without.facts().keys().collect::<Vec<_>>()
        );
        assert_eq!((with.rejected_total(), without.rejected_total()), (1, 1));
        assert_eq!(with.bad_signatures, without.bad_signatures);
    }

    /// A node's own write is admitted (signature included) as it is made, so reading
    /// its change back checks no signature again; the same change reaching a peer is
    /// checked there in full, and both hold the same facts.
    #[test]
    fn a_local_write_is_not_checked_again_as_it_is_read_back_but_a_peers_copy_is() {
        use crate::core::model::NewStory;
        use crate::core::trust::{Checker, SigCheck};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let counted = |n: &Arc<AtomicUsize>| {
            let seen = n.clone();
            Some(Checker(Arc::new(move |checks: &[SigCheck]| {
                seen.fetch_add(checks.len(), Ordering::SeqCst);
                checks.iter().map(SigCheck::holds).collect()
            })))
        };
        let (at_a, at_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut a = Doc::new([1; 16])
            .with_test_names()
            .with_signer(Signer::for_test("A"));
        a.checker = counted(&at_a);
        let mut b = Doc::new([2; 16]).with_test_names();
        b.checker = counted(&at_b);
        let news: Vec<NewStory> = (1..=300)
            .map(|n| NewStory {
                title: format!("story {n}"),
                ..Default::default()
            })
            .collect();
        let keys = a.add_stories(&news, "A", 0).expect("written");
        assert_eq!(keys.len(), 300);
        assert_eq!(at_a.load(Ordering::SeqCst), 0, "no signature checked again");
        let (changes, _) = a.local_changes_after(0, usize::MAX);
        assert!(b.apply_pushed(changes).expect("applied"));
        assert_eq!(
            at_b.load(Ordering::SeqCst),
            1,
            "the peer checks the one seal that vouches for all 300 (trust::vouch)"
        );
        let stories = |d: &Doc| {
            d.facts()
                .keys()
                .filter(|k| k.starts_with(STORY_PREFIX))
                .map(|k| k.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(stories(&a).len(), 300);
        assert_eq!(stories(&a), stories(&b), "the same facts on both");
        assert_eq!((a.rejected_total(), b.rejected_total()), (0, 0));
    }

    #[test]
    fn a_loaded_document_saves_only_its_changes_since_the_load() {
        let (snapshot, record) = stored();
        let mut d = load(&snapshot, &record);
        assert!(
            d.save_incremental().is_empty(),
            "nothing new since the load"
        );
        let (k, v) = story(3, "A");
        d.inner
            .put(automerge::ROOT, &k, Signer::for_test("A").seal(&k, &v))
            .expect("put");
        d.inner.commit();
        let chunk = d.save_incremental();
        assert!(
            !chunk.is_empty() && chunk.len() < snapshot.len(),
            "one change, not the document"
        );
        let mut again = load(&snapshot, &record);
        again.inner.load_incremental(&chunk).expect("chunk");
        assert_eq!(again.heads(), d.heads(), "snapshot + chunk is the document");
    }

    #[test]
    fn a_record_is_used_only_for_the_snapshot_it_was_made_with() {
        let (snapshot, record) = stored();
        let mut d = load(&snapshot, &[]);
        assert!(d.trusted_by(&record).is_some(), "the same heads");
        let (k, v) = story(3, "A");
        d.inner
            .put(automerge::ROOT, &k, Signer::for_test("A").seal(&k, &v))
            .expect("put");
        d.inner.commit();
        assert!(d.trusted_by(&record).is_none(), "other heads");
        assert!(d.trusted_by(b"\x04garbage").is_none(), "undecodable");
        // A change not yet read: no record at all.
        assert!(d.save_checked().1.is_empty());
        d.refresh();
        assert!(!d.save_checked().1.is_empty());
    }
}
