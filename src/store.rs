//! Durable node-local storage in sled: the document as a compacted snapshot plus the
//! incremental change chunks saved since, and the data-dir lock. The one place that
//! writes to sled.
//!
//! Crash safety: a chunk is appended (and, for writes we acknowledge, flushed) before
//! the write is reported done. Compaction writes the snapshot and drops the chunks it
//! covers in one atomic batch; loading is snapshot + chunks, and reapplying a change the
//! snapshot already holds is a no-op, so a crash at any point loses nothing flushed.

use crate::model::Event;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

const SNAPSHOT_KEY: &[u8] = b"snapshot";
const CHUNK_PREFIX: &[u8] = b"c/";
pub const LOCK_FILE: &str = "node.lock";
const DB_DIR: &str = "db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data dir {dir} is in use by another mesh-agent (pid {pid}); stop it first, or use another --data-dir")]
    Locked { dir: PathBuf, pid: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {path}: {source}")]
    Db { path: PathBuf, source: sled::Error },
}

pub struct Store {
    dir: PathBuf,
    tree: sled::Tree,
    db: sled::Db,
    next_chunk: u64,
    chunks: u64,
    _lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

/// Takes the data dir's exclusive lock, recording our pid in the lock file.
fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| StoreError::Io {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
                pid: pid.trim().to_string(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    f.set_len(0).map_err(io)?;
    f.rewind().map_err(io)?;
    write!(f, "{}", std::process::id()).map_err(io)?;
    Ok(f)
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, failing clearly if another process
    /// holds it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock = lock(dir)?;
        let db_path = dir.join(DB_DIR);
        let db_err = |source| StoreError::Db {
            path: db_path.clone(),
            source,
        };
        let db = sled::Config::new()
            .path(&db_path)
            .flush_every_ms(Some(200))
            .open()
            .map_err(db_err)?;
        let tree = db.open_tree("doc").map_err(db_err)?;
        let mut next_chunk = 0;
        let mut chunks = 0;
        for item in tree.scan_prefix(CHUNK_PREFIX) {
            let (k, _) = item.map_err(db_err)?;
            if let Some(seq) = chunk_seq(&k) {
                next_chunk = next_chunk.max(seq + 1);
                chunks += 1;
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            tree,
            db,
            next_chunk,
            chunks,
            _lock: lock,
        })
    }

    fn db_err(&self) -> impl Fn(sled::Error) -> StoreError + '_ {
        move |source| StoreError::Db {
            path: self.dir.join(DB_DIR),
            source,
        }
    }

    /// The stored snapshot (empty if none) and every chunk saved after it, in order.
    pub fn load_doc(&self) -> Result<(Vec<u8>, Vec<Vec<u8>>), StoreError> {
        let snapshot = self
            .tree
            .get(SNAPSHOT_KEY)
            .map_err(self.db_err())?
            .map(|v| v.to_vec())
            .unwrap_or_default();
        let mut chunks = Vec::new();
        for item in self.tree.scan_prefix(CHUNK_PREFIX) {
            let (_, v) = item.map_err(self.db_err())?;
            chunks.push(v.to_vec());
        }
        Ok((snapshot, chunks))
    }

    /// Appends one incremental chunk. Durable after the next [`Store::flush`] (or sled's
    /// own periodic flush, every 200 ms).
    pub fn append_chunk(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let key = chunk_key(self.next_chunk);
        self.tree.insert(key, bytes).map_err(self.db_err())?;
        self.next_chunk += 1;
        self.chunks += 1;
        Ok(())
    }

    /// Number of chunks since the last snapshot.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Replaces the snapshot and drops every chunk it covers, atomically.
    pub fn compact(&mut self, snapshot: &[u8]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.insert(SNAPSHOT_KEY, snapshot);
        for item in self.tree.scan_prefix(CHUNK_PREFIX) {
            let (k, _) = item.map_err(self.db_err())?;
            batch.remove(k);
        }
        self.tree.apply_batch(batch).map_err(self.db_err())?;
        self.chunks = 0;
        self.tree.flush().map_err(self.db_err())?;
        Ok(())
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await.map_err(self.db_err())?;
        Ok(())
    }

    /// Blocking flush, for the CLI's offline paths.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(self.db_err())?;
        Ok(())
    }

    /// Bytes the store occupies on disk (approximate).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// The event log's tree (separate from the document's).
const EVENTS_TREE: &str = "events";

/// The durable event log: the node's timeline (its own events and those merged from
/// peers), bounded to the newest `cap` by time, deduplicated by event id. Keys sort by
/// (time, node, seq) like the core's timeline, so trimming drops the same oldest events.
pub struct EventLog {
    dir: PathBuf,
    tree: sled::Tree,
    cap: usize,
    len: usize,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("dir", &self.dir)
            .field("len", &self.len)
            .finish()
    }
}

impl Store {
    /// The event log kept beside the document, holding at most `cap` events. Durable with
    /// the store's flushes (sled's periodic one, every 200 ms, and [`Store::flush`]).
    pub fn events(&self, cap: usize) -> Result<EventLog, StoreError> {
        let tree = self.db.open_tree(EVENTS_TREE).map_err(self.db_err())?;
        let len = tree.len();
        Ok(EventLog {
            dir: self.dir.clone(),
            tree,
            cap: cap.max(1),
            len,
        })
    }
}

impl EventLog {
    fn db_err(&self) -> impl Fn(sled::Error) -> StoreError + '_ {
        move |source| StoreError::Db {
            path: self.dir.join(DB_DIR),
            source,
        }
    }

    /// Every stored event, oldest first, and how many entries could not be decoded
    /// (skipped: written by a newer or broken version).
    pub fn load(&self) -> Result<(Vec<Event>, usize), StoreError> {
        let mut out = Vec::new();
        let mut bad = 0;
        for item in self.tree.iter() {
            let (_, v) = item.map_err(self.db_err())?;
            match serde_json::from_slice::<Event>(&v) {
                Ok(e) => out.push(e),
                Err(_) => bad += 1,
            }
        }
        Ok((out, bad))
    }

    /// Adds events (one already stored is kept once), then drops the oldest beyond the cap.
    pub fn append(&mut self, events: &[Event]) -> Result<(), StoreError> {
        for e in events {
            let Ok(v) = serde_json::to_vec(e) else {
                continue;
            };
            if self
                .tree
                .insert(event_key(e), v)
                .map_err(self.db_err())?
                .is_none()
            {
                self.len += 1;
            }
        }
        if self.len > self.cap {
            let mut batch = sled::Batch::default();
            let mut dropped = 0;
            for item in self.tree.iter().take(self.len - self.cap) {
                let (k, _) = item.map_err(self.db_err())?;
                batch.remove(k);
                dropped += 1;
            }
            self.tree.apply_batch(batch).map_err(self.db_err())?;
            self.len -= dropped;
        }
        Ok(())
    }

    /// Events stored.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `at_ms ‖ node ‖ 0 ‖ seq`, big-endian: sorts by time, then node, then seq.
fn event_key(e: &Event) -> Vec<u8> {
    let mut k = Vec::with_capacity(e.node.len() + 17);
    k.extend_from_slice(&e.at_ms.to_be_bytes());
    k.extend_from_slice(e.node.as_bytes());
    k.push(0);
    k.extend_from_slice(&e.seq.to_be_bytes());
    k
}

fn chunk_key(seq: u64) -> Vec<u8> {
    let mut k = CHUNK_PREFIX.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn chunk_seq(key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(CHUNK_PREFIX)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_opener_gets_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let _s = Store::open(d.path()).unwrap();
        let e = Store::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("in use by another mesh-agent"), "{e}");
        assert!(e.contains(&std::process::id().to_string()), "{e}");
    }

    #[test]
    fn the_event_log_survives_reopen_deduplicated_and_trimmed_to_the_newest() {
        use crate::model::EventKind;
        let ev = |node: &str, seq: u64, at_ms: u64| Event {
            node: node.into(),
            seq,
            at_ms,
            kind: EventKind::Claimed,
            story: "S-0001".into(),
            phase: None,
            round: 0,
            detail: String::new(),
        };
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            let mut log = s.events(3).unwrap();
            log.append(&[ev("B", 1, 20), ev("A", 1, 10), ev("A", 2, 30)])
                .unwrap();
            log.append(&[ev("A", 2, 30)]).unwrap();
            assert_eq!(log.len(), 3, "a duplicate is stored once");
            log.append(&[ev("C", 9, 40)]).unwrap();
            s.db.flush().unwrap();
        }
        let s = Store::open(d.path()).unwrap();
        let log = s.events(3).unwrap();
        let (events, bad) = log.load().unwrap();
        assert_eq!(bad, 0);
        let ids: Vec<(&str, u64)> = events.iter().map(|e| (e.node.as_str(), e.seq)).collect();
        assert_eq!(
            ids,
            [("B", 1), ("A", 2), ("C", 9)],
            "oldest dropped, time order"
        );
        // The document's tree is untouched by the event log.
        assert_eq!(s.load_doc().unwrap(), (vec![], vec![]));
    }

    #[test]
    fn chunks_and_snapshots_survive_reopen_and_compaction() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(d.path()).unwrap();
            s.append_chunk(b"one").unwrap();
            s.append_chunk(b"two").unwrap();
            s.db.flush().unwrap();
        }
        let mut s = Store::open(d.path()).unwrap();
        assert_eq!(
            s.load_doc().unwrap(),
            (vec![], vec![b"one".to_vec(), b"two".to_vec()])
        );
        s.compact(b"snap").unwrap();
        s.append_chunk(b"three").unwrap();
        s.db.flush().unwrap();
        drop(s);
        let s = Store::open(d.path()).unwrap();
        assert_eq!(
            s.load_doc().unwrap(),
            (b"snap".to_vec(), vec![b"three".to_vec()])
        );
        assert_eq!(s.chunks(), 1);
    }
}
