//! What the node makes durable, and when (the store's half of the event loop): the
//! core's changes appended as they come and flushed before anything leaves the node
//! (see `runtime.rs`), a joined snapshot or a new epoch's document put in place of what
//! was stored, compaction, and the writes a caller waits on.

use super::*;

/// A stored chunk this large (a bulk write: ~3,000 stories) is compacted into the
/// snapshot at once (see `Runtime::compact_if`).
const BIG_CHUNK: usize = 256 * 1024;

impl Runtime {
    pub(super) fn persist(&mut self, chunk: &[u8]) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if !self.unpersisted.is_empty() {
            // Keep the order: this change may depend on the ones waiting.
            self.unpersisted.push_back(chunk.to_vec());
            return;
        }
        if let Err(e) = store.append_chunk(chunk) {
            tracing::error!(error = %e, "cannot persist document change; nothing leaves the node until it is");
            self.unpersisted.push_back(chunk.to_vec());
            return;
        }
        self.unflushed = true;
        self.compact_if(chunk.len() >= BIG_CHUNK);
    }

    /// A new node joined from a peer's snapshot: the store keeps that snapshot (and the
    /// node's own changes after it) in place of what it held, so a join does not encode
    /// the whole document again (~1 s at 100,000 stories). If that fails, the pieces are
    /// appended like any change.
    pub(super) fn rebase(&mut self, r: &crate::core::state::Rebase) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        match store.rebase(&r.snapshot, &r.checked, &r.tail) {
            Ok(()) => {
                // Everything waiting to be appended is in the new content.
                self.unpersisted.clear();
                tracing::debug!(bytes = r.snapshot.len(), "stored the snapshot joined from");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store the snapshot joined from; appending it");
                self.persist(&r.snapshot);
                self.persist(&r.tail);
            }
        }
    }

    /// The mesh moved to a new epoch: the store archives the old document whole and
    /// keeps the new one with its root, flushed. If that fails the store keeps the old
    /// document, and a restart opens it and moves again (the cut is in it).
    pub(super) fn begin_epoch(&mut self, s: &crate::core::EpochSwitch) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        match store.begin_epoch(s.epoch, &s.snapshot, s.root) {
            Ok(()) => {
                // What waited to be appended belongs to the archived document.
                self.unpersisted.clear();
                self.unflushed = false;
                tracing::info!(
                    epoch = s.epoch,
                    bytes = s.snapshot.len(),
                    "stored the new epoch's document; the old one is archived"
                );
            }
            Err(e) => {
                tracing::error!(epoch = s.epoch, error = %e, "cannot store the new epoch's document; a restart moves again");
            }
        }
    }

    /// Hands the core the document the move to `epoch` archived (a peer is still on
    /// it: `Effect::LoadPrevious`).
    pub(super) fn load_previous(&mut self, epoch: u64) {
        let bytes = match self.store.as_ref().map(|s| s.archived(epoch)) {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => {
                tracing::error!(epoch, error = %e, "cannot read the archived document");
                None
            }
            None => None,
        };
        self.core.previous_loaded(bytes.as_deref());
    }

    /// Replaces the stored chunks with a snapshot of the document once there are
    /// `snapshot_every` of them, or at once when `now` (and there are any). A load
    /// replays chunks change by change, and automerge applies a large change to a large
    /// document slowly (a restart with two 10,000-story batches stored as chunks took
    /// 18 s at 20,000 stories and ran out of memory at 100,000); a snapshot loads in one
    /// pass.
    pub(super) fn compact_if(&mut self, now: bool) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let chunks = store.chunks();
        let due = chunks >= u64::from(self.cfg.snapshot_every) || (now && chunks > 0);
        if !due {
            return;
        }
        let (snap, checked) = self.core.doc_mut().save_checked();
        match store.compact(&snap, &checked) {
            Ok(()) => tracing::debug!(bytes = snap.len(), "document compacted"),
            Err(e) => tracing::error!(error = %e, "snapshot failed"),
        }
    }

    /// Makes every change persisted so far durable (retrying appends that failed, then
    /// flushing); false if it could not, and then no sync frame may leave and no job
    /// may start.
    pub(super) async fn durable_before_leaving(&mut self) -> bool {
        let Some(store) = self.store.as_mut() else {
            return true;
        };
        while let Some(chunk) = self.unpersisted.front() {
            if let Err(e) = store.append_chunk(chunk) {
                tracing::error!(error = %e, waiting = self.unpersisted.len(), "cannot persist document changes; nothing leaves the node");
                return false;
            }
            self.unpersisted.pop_front();
            self.unflushed = true;
        }
        if !self.unflushed {
            return true;
        }
        match store.flush().await {
            Ok(()) => {
                self.unflushed = false;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "flush failed; nothing leaves the node");
                false
            }
        }
    }

    pub(super) async fn flush(&self) {
        if let Some(s) = &self.store {
            if let Err(e) = s.flush().await {
                tracing::error!(error = %e, "flush failed");
            }
        }
    }

    /// A local write its caller waits on: acknowledged only once it is on disk, and
    /// once observers can see the new heads (a caller may wait for convergence right
    /// after). Its chunks are appended and flushed before anything about it leaves the
    /// node; if either fails, the chunks are taken back out of the store and the core
    /// puts its document back as it was, so the write leaves no fact behind.
    pub(super) async fn durable_write<T>(
        &mut self,
        write: impl FnOnce(&mut Core) -> Result<T, String>,
    ) -> Result<T, WriteError> {
        self.drain_effects().await;
        self.core.begin_durable_write();
        let made = write(&mut self.core);
        let chunks = self.core.take_write_chunks();
        let res = match made {
            Ok(v) => match self.make_durable(&chunks).await {
                Ok(()) => {
                    // A bulk write is kept as a snapshot (see `compact_if`).
                    self.compact_if(chunks.iter().any(|c| c.len() >= BIG_CHUNK));
                    Ok(v)
                }
                Err(e) => Err(WriteError::NotDurable(e)),
            },
            Err(e) => match self.make_durable(&chunks).await {
                // A refused write normally wrote nothing; whatever it did write is kept
                // only if it is durable.
                Ok(()) => Err(WriteError::Refused(e)),
                Err(d) => Err(WriteError::NotDurable(format!("{e}; {d}"))),
            },
        };
        if matches!(res, Err(WriteError::NotDurable(_))) {
            tracing::error!(error = %res.as_ref().err().map(ToString::to_string).unwrap_or_default(), "local write undone");
            self.core.abort_durable_write();
        } else {
            self.core.commit_durable_write();
        }
        self.drain_effects().await;
        self.publish_observation();
        res
    }

    /// Appends `chunks` and flushes; on failure removes what was appended.
    pub(super) async fn make_durable(&mut self, chunks: &[Vec<u8>]) -> Result<(), String> {
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        if chunks.is_empty() {
            return Ok(());
        }
        let mark = store.chunk_mark();
        let mut res = Ok(());
        for c in chunks {
            res = store.append_chunk(c);
            if res.is_err() {
                break;
            }
        }
        if res.is_ok() {
            res = store.flush().await;
        }
        let Err(e) = res else {
            return Ok(());
        };
        if let Err(undo) = store.discard_chunks_from(mark) {
            tracing::error!(error = %undo, "cannot take an undone write back out of the store");
        }
        Err(e.to_string())
    }
}
