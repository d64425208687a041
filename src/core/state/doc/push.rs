//! Eager pushes: the node's recent changes kept to push to peers, a peer's pushed changes
//! applied, and what a pushing peer holds or asks for.

use super::*;

/// How many of its own recent changes a document keeps for eager pushes.
const LOCAL_LOG_LEN: usize = 512;

/// And at most this many bytes of them (but always the newest): a bulk write's change
/// (10,000 stories are ~6 MB) is pushed while it is the newest, older ones are left to
/// sync. Without the bound, ten bulk loads kept ~63 MB of pushes nobody would ask for.
const LOCAL_LOG_BYTES: usize = 8 << 20;

/// One change this node made, as pushed to peers.
#[derive(Debug, Clone)]
pub(super) struct LocalChange {
    pub(super) seq: u64,
    pub(super) hash: ChangeHash,
    pub(super) bytes: Vec<u8>,
}

impl Doc {
    /// The hash of this actor's latest change, if it made one.
    pub fn last_local_change(&self) -> Option<ChangeHash> {
        self.local_log.back().map(|c| c.hash)
    }

    /// The sequence number of this actor's newest change in the local log (0 for none).
    pub fn last_local_seq(&self) -> u64 {
        self.local_log.back().map_or(0, |c| c.seq)
    }

    /// This actor's changes with a sequence number above `after`, oldest first, and the
    /// highest sequence number among them. Empty when they would exceed `max_bytes` or
    /// the log no longer reaches back to `after` (the sync protocol carries them then).
    pub fn local_changes_after(&self, after: u64, max_bytes: usize) -> (Vec<Vec<u8>>, u64) {
        let Some(first) = self.local_log.front() else {
            return (Vec::new(), after);
        };
        if first.seq > after.saturating_add(1) {
            return (Vec::new(), after);
        }
        let mut out = Vec::new();
        let (mut size, mut upto) = (0, after);
        for c in self.local_log.iter().filter(|c| c.seq > after) {
            size += c.bytes.len();
            if size > max_bytes {
                return (Vec::new(), after);
            }
            out.push(c.bytes.clone());
            upto = c.seq;
        }
        (out, upto)
    }

    /// Applies changes a peer pushed outside a sync exchange (changes whose dependencies
    /// are missing wait in automerge's queue until the sync protocol brings them).
    /// Returns whether the document changed.
    pub fn apply_pushed(&mut self, changes: Vec<Vec<u8>>) -> Result<bool, StateError> {
        self.room_for(changes.iter().map(|c| c.len() as u64).sum())?;
        let mut decoded = Vec::with_capacity(changes.len());
        for c in changes {
            decoded.push(
                automerge::Change::from_bytes(c)
                    .map_err(|e| StateError::Sync(format!("pushed change: {e}")))?,
            );
        }
        let before = self.inner.get_heads();
        self.inner
            .apply_changes(decoded)
            .map_err(|e| StateError::Sync(format!("pushed change: {e}")))?;
        let changed = self.inner.get_heads() != before;
        if changed {
            self.refresh();
        }
        Ok(changed)
    }

    /// Whether a peer whose document had the heads `their_heads` had `change`, and this
    /// document has everything that peer had: all of its heads are known here and
    /// `change` is among their ancestors.
    pub fn peer_has(&mut self, their_heads: &[ChangeHash], change: &ChangeHash) -> bool {
        if their_heads.is_empty() {
            return false;
        }
        for h in their_heads {
            if self.inner.get_change_meta_by_hash(h).is_none() {
                return false;
            }
        }
        if their_heads.contains(change) {
            return true;
        }
        !self
            .inner
            .get_changes_meta(their_heads)
            .iter()
            .any(|m| m.hash == *change)
    }

    /// Whether this document holds every one of `hashes` (applied, not waiting in
    /// automerge's queue for missing dependencies).
    pub fn holds_all(&mut self, hashes: &[ChangeHash]) -> bool {
        hashes
            .iter()
            .all(|h| self.inner.get_change_meta_by_hash(h).is_some())
    }

    /// The first changes this document lacks on each path back from `hashes`, through
    /// changes waiting in automerge's queue (`hashes` themselves when not received).
    pub fn missing_deps(&mut self, hashes: &[ChangeHash]) -> Vec<ChangeHash> {
        self.inner.get_missing_deps(hashes)
    }

    /// The bytes of those of `hashes` this document holds, unless they exceed
    /// `max_bytes` together (None then).
    pub fn changes_by_hash(&self, hashes: &[ChangeHash], max_bytes: usize) -> Option<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut size = 0;
        for h in hashes {
            if let Some(c) = self.inner.get_change_by_hash(h) {
                size += c.raw_bytes().len();
                if size > max_bytes {
                    return None;
                }
                out.push(c.raw_bytes().to_vec());
            }
        }
        Some(out)
    }

    /// Records the change a local write just committed.
    pub(super) fn log_local_change(&mut self) {
        let Some(c) = self.inner.get_last_local_change() else {
            return;
        };
        if self.local_log.back().is_some_and(|l| l.seq >= c.seq()) {
            return;
        }
        self.local_log.push_back(LocalChange {
            seq: c.seq(),
            hash: c.hash(),
            bytes: c.raw_bytes().to_vec(),
        });
        let mut bytes: usize = self.local_log.iter().map(|c| c.bytes.len()).sum();
        while self.local_log.len() > LOCAL_LOG_LEN
            || (bytes > LOCAL_LOG_BYTES && self.local_log.len() > 1)
        {
            if let Some(c) = self.local_log.pop_front() {
                bytes -= c.bytes.len();
            }
        }
    }
}
