//! Durable node-local storage in sled: the document as a compacted snapshot plus the
//! incremental change chunks saved since, and the data-dir lock. The one place that
//! writes to sled.
//!
//! Crash safety: a chunk is appended (and, for writes we acknowledge, flushed) before
//! the write is reported done. Compaction writes the snapshot and drops the chunks it
//! covers in one atomic batch; loading is snapshot + chunks, and reapplying a change the
//! snapshot already holds is a no-op, so a crash at any point loses nothing flushed.
//!
//! Two locks guard a data dir: ours (`node.lock`, flock, with the holder's pid: the
//! clear "in use" error) and sled's own on `db/db`. Sled releases its lock only when the
//! last of its background threads lets go of the files, a moment *after* the `Db` is
//! dropped; so a store reopened in the same process right after a drop (an in-process
//! restart) may find sled's lock still held. Holding `node.lock` proves no other live
//! process uses the dir, so `open` then waits for sled's lock (bounded) instead of
//! failing. `node.lock` itself can outlive its store for a moment in the same process
//! (a drop still in progress, or a child being forked by another thread holding a copy
//! of the descriptor until it execs): when the pid in it is ours, `open` waits for it
//! too (bounded).

use crate::core::model::Event;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod snapshot;

/// The generation of the snapshot file in force (u64, big-endian; `snapshot.rs`).
const SNAPSHOT_FILE_KEY: &[u8] = b"snapshot-file";
/// Where stores written before snapshot files kept the snapshot, and the record of its
/// signature checks (`Doc::save_checked`): read until the next compaction moves them.
const SNAPSHOT_KEY: &[u8] = b"snapshot";
const SNAPSHOT_CHECKED_KEY: &[u8] = b"snapshot-checked";
const CHUNK_PREFIX: &[u8] = b"c/";
/// The hash of the epoch's root change the stored document is opened with (absent: a
/// mesh's first document; DESIGN.md §3.5).
const EPOCH_ROOT_KEY: &[u8] = b"epoch-root";
/// Earlier epochs' documents, each saved whole (snapshot and chunks, concatenated: what
/// automerge loads as one), by the number of the epoch that retired them.
const ARCHIVE_TREE: &str = "archive";
pub const LOCK_FILE: &str = "node.lock";
const DB_DIR: &str = "db";
/// How long `open` waits for sled's lock once it holds the data-dir lock (see the
/// module doc); a dropped store of this process lets go within milliseconds.
const DB_LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long `open` waits for `node.lock` while the pid in it is this process's (a store
/// of ours being dropped; see the module docs). A second store opened on purpose in the
/// same process fails after this long with the clear "in use" error.
const NODE_LOCK_WAIT: Duration = Duration::from_secs(2);

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
    /// A fault injected through [`Faults`] (tests and drills).
    #[error("store {path}: injected fault: {what} failed")]
    Injected { path: PathBuf, what: &'static str },
    /// Something the store holds is not what it wrote.
    #[error("store {path}: corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
}

/// Switches that make the store's next append or flush fail, for tests and drills of the
/// write path (a full disk, a failing device). Clones share the switches.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct Faults {
    append: Arc<AtomicBool>,
    flush: Arc<AtomicBool>,
}

impl Faults {
    /// The next [`Store::append_chunk`] fails (once).
    pub fn fail_next_append(&self) {
        self.append.store(true, Ordering::SeqCst);
    }

    /// The next [`Store::flush`] fails (once).
    pub fn fail_next_flush(&self) {
        self.flush.store(true, Ordering::SeqCst);
    }
}

pub struct Store {
    dir: PathBuf,
    tree: sled::Tree,
    db: sled::Db,
    next_chunk: u64,
    chunks: u64,
    /// Bytes of the document as stored: the snapshot plus every chunk since, kept up to
    /// date by each write so `status` never has to save the document to measure it.
    doc_bytes: u64,
    /// The directory of snapshot files, and the generation in force (`None`: the
    /// snapshot is still in sled, or there is none yet).
    snapshots: PathBuf,
    generation: Option<u64>,
    faults: Faults,
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
    let deadline = Instant::now() + NODE_LOCK_WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        match f.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = f.rewind().and_then(|()| f.read_to_string(&mut pid));
                let pid = pid.trim().to_string();
                // Our own pid: a store of this process being dropped (an in-process
                // restart) still holds it — or a child another thread is forking
                // holds a copy of its descriptor until it execs. Either lets go in a
                // moment: wait (bounded), as for sled's lock.
                if pid == std::process::id().to_string() && Instant::now() < deadline {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                    continue;
                }
                return Err(StoreError::Locked {
                    dir: dir.to_path_buf(),
                    pid,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
    }
    f.set_len(0).map_err(io)?;
    f.rewind().map_err(io)?;
    write!(f, "{}", std::process::id()).map_err(io)?;
    Ok(f)
}

/// Whether sled failed to take its own lock on the database file. Sled 0.34 reports
/// it only as an `Io` error of kind `Other` with this message.
fn is_sled_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Opens the sled database, waiting (bounded, with backoff) while sled's lock is still
/// held by a store of this process that is being dropped. Only called with the
/// data-dir lock held.
fn open_db(path: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = Instant::now() + DB_LOCK_WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        match sled::Config::new()
            .path(path)
            .flush_every_ms(Some(200))
            .open()
        {
            Err(e) if is_sled_lock_error(&e) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, failing clearly if another process
    /// holds it.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let mut create = std::fs::DirBuilder::new();
        create.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut create, 0o700);
        create.create(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock = lock(dir)?;
        let db_path = dir.join(DB_DIR);
        let db_err = |source| StoreError::Db {
            path: db_path.clone(),
            source,
        };
        let db = open_db(&db_path).map_err(db_err)?;
        let tree = db.open_tree("doc").map_err(db_err)?;
        let snapshots = dir.join(snapshot::DIR);
        let generation = match tree.get(SNAPSHOT_FILE_KEY).map_err(db_err)? {
            None => None,
            Some(v) => Some(u64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                StoreError::Corrupt {
                    path: db_path.clone(),
                    what: format!("the snapshot generation is {} bytes, not 8", v.len()),
                }
            })?)),
        };
        // Files a crash left before sled pointed at them, and generations replaced.
        snapshot::remove_others(&snapshots, generation);
        let mut doc_bytes = match generation {
            Some(g) => snapshot::snapshot_len(&snapshots, g).map_err(snapshot_err)?,
            None => tree
                .get(SNAPSHOT_KEY)
                .map_err(db_err)?
                .map_or(0, |v| v.len() as u64),
        };
        let mut next_chunk = 0;
        let mut chunks = 0;
        for item in tree.scan_prefix(CHUNK_PREFIX) {
            let (k, v) = item.map_err(db_err)?;
            if let Some(seq) = chunk_seq(&k) {
                next_chunk = next_chunk.max(seq + 1);
                chunks += 1;
                doc_bytes += v.len() as u64;
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            tree,
            db,
            next_chunk,
            chunks,
            doc_bytes,
            snapshots,
            generation,
            faults: Faults::default(),
            _lock: lock,
        })
    }

    fn db_err(&self) -> impl Fn(sled::Error) -> StoreError + '_ {
        move |source| StoreError::Db {
            path: self.dir.join(DB_DIR),
            source,
        }
    }

    /// The fault switches of this store (see [`Faults`]).
    #[doc(hidden)]
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    fn injected(&self, switch: &AtomicBool, what: &'static str) -> Result<(), StoreError> {
        if switch.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Injected {
                path: self.dir.join(DB_DIR),
                what,
            });
        }
        Ok(())
    }

    /// The stored snapshot (empty if none) and every chunk saved after it, in order.
    pub fn load_doc(&self) -> Result<(Vec<u8>, Vec<Vec<u8>>), StoreError> {
        let snapshot = match self.generation {
            Some(g) => snapshot::snapshot(&self.snapshots, g).map_err(snapshot_err)?,
            None => self
                .tree
                .get(SNAPSHOT_KEY)
                .map_err(self.db_err())?
                .map(|v| v.to_vec())
                .unwrap_or_default(),
        };
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
        self.injected(&self.faults.append, "append")?;
        let key = chunk_key(self.next_chunk);
        self.tree.insert(key, bytes).map_err(self.db_err())?;
        self.next_chunk += 1;
        self.chunks += 1;
        self.doc_bytes += bytes.len() as u64;
        Ok(())
    }

    /// The position the next appended chunk takes: a mark for [`Store::discard_chunks_from`].
    pub fn chunk_mark(&self) -> u64 {
        self.next_chunk
    }

    /// Removes the chunks appended since `mark` (a write that could not be made durable
    /// must not come back at the next start), then flushes the removal.
    pub fn discard_chunks_from(&mut self, mark: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let (mut removed, mut removed_bytes) = (0, 0);
        for seq in mark..self.next_chunk {
            let key = chunk_key(seq);
            if let Some(v) = self.tree.get(&key).map_err(self.db_err())? {
                removed += 1;
                removed_bytes += v.len() as u64;
            }
            batch.remove(key);
        }
        self.tree.apply_batch(batch).map_err(self.db_err())?;
        self.next_chunk = self.next_chunk.min(mark);
        self.chunks = self.chunks.saturating_sub(removed);
        self.doc_bytes = self.doc_bytes.saturating_sub(removed_bytes);
        self.tree.flush().map_err(self.db_err())?;
        Ok(())
    }

    /// Number of chunks since the last snapshot.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// The record of the stored snapshot's signature checks (empty if none).
    pub fn snapshot_checked(&self) -> Result<Vec<u8>, StoreError> {
        if let Some(g) = self.generation {
            return snapshot::checked(&self.snapshots, g).map_err(snapshot_err);
        }
        Ok(self
            .tree
            .get(SNAPSHOT_CHECKED_KEY)
            .map_err(self.db_err())?
            .map(|v| v.to_vec())
            .unwrap_or_default())
    }

    /// Puts `snapshot` (with its check record) in force in one atomic step with `batch`
    /// (which drops the chunks it covers): the next generation's file is written and
    /// synced, the batch switches sled to it, and once that is flushed the old file goes.
    fn switch(
        &mut self,
        snapshot: &[u8],
        checked: &[u8],
        mut batch: sled::Batch,
    ) -> Result<(), StoreError> {
        let next = self.generation.map_or(1, |g| g + 1);
        snapshot::write(&self.snapshots, next, snapshot, checked).map_err(snapshot_err)?;
        batch.insert(SNAPSHOT_FILE_KEY, &next.to_be_bytes()[..]);
        batch.remove(SNAPSHOT_KEY);
        batch.remove(SNAPSHOT_CHECKED_KEY);
        if let Err(e) = self.tree.apply_batch(batch) {
            // Nothing switched: the new file goes again.
            snapshot::remove_others(&self.snapshots, self.generation);
            return Err(self.db_err()(e));
        }
        // Sled reads the new generation from now on; until the switch is flushed, both
        // files stay (the next open keeps the one sled holds and removes the other).
        self.generation = Some(next);
        self.tree.flush().map_err(self.db_err())?;
        snapshot::remove_others(&self.snapshots, self.generation);
        Ok(())
    }

    /// Replaces the snapshot and drops every chunk it covers, atomically; `checked` is
    /// the record of its signature checks (empty for none), replaced with it.
    pub fn compact(&mut self, snapshot: &[u8], checked: &[u8]) -> Result<(), StoreError> {
        self.rebase(snapshot, checked, &[])
    }

    /// Like [`Store::compact`], with `tail` (changes the snapshot does not hold; none if
    /// empty) stored as the one chunk after it, in the same atomic batch: a new node
    /// keeps the document a peer sent it whole as its snapshot, and its own few changes
    /// after it, without encoding the document again.
    /// Moves the store to a new epoch's document: the document held so far is archived
    /// whole under `epoch` (first, and flushed: a crash before the switch leaves the old
    /// document in place and an archive written again next time), then `seed` becomes
    /// the snapshot with no chunks and `root` the epoch's root, in one atomic batch.
    pub fn begin_epoch(
        &mut self,
        epoch: u64,
        seed: &[u8],
        root: [u8; 32],
    ) -> Result<(), StoreError> {
        let (snapshot, chunks) = self.load_doc()?;
        let mut old = snapshot;
        for c in chunks {
            old.extend_from_slice(&c);
        }
        let archive = self.db.open_tree(ARCHIVE_TREE).map_err(self.db_err())?;
        archive
            .insert(epoch.to_be_bytes(), old)
            .map_err(self.db_err())?;
        archive.flush().map_err(self.db_err())?;
        let mut batch = sled::Batch::default();
        batch.insert(EPOCH_ROOT_KEY, &root[..]);
        for item in self.tree.scan_prefix(CHUNK_PREFIX) {
            let (k, _) = item.map_err(self.db_err())?;
            batch.remove(k);
        }
        self.switch(seed, &[], batch)?;
        self.chunks = 0;
        self.doc_bytes = seed.len() as u64;
        Ok(())
    }

    /// The root the stored document is an epoch of (`None`: a mesh's first document).
    pub fn epoch_root(&self) -> Result<Option<[u8; 32]>, StoreError> {
        let Some(v) = self.tree.get(EPOCH_ROOT_KEY).map_err(self.db_err())? else {
            return Ok(None);
        };
        let root: [u8; 32] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
            path: self.dir.join(DB_DIR),
            what: format!("the epoch root is {} bytes, not 32", v.len()),
        })?;
        Ok(Some(root))
    }

    /// The document epoch `epoch` retired, saved whole (`None`: no such epoch here).
    pub fn archived(&self, epoch: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let archive = self.db.open_tree(ARCHIVE_TREE).map_err(self.db_err())?;
        Ok(archive
            .get(epoch.to_be_bytes())
            .map_err(self.db_err())?
            .map(|v| v.to_vec()))
    }

    pub fn rebase(
        &mut self,
        snapshot: &[u8],
        checked: &[u8],
        tail: &[u8],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for item in self.tree.scan_prefix(CHUNK_PREFIX) {
            let (k, _) = item.map_err(self.db_err())?;
            batch.remove(k);
        }
        let tail_key = (!tail.is_empty()).then(|| chunk_key(self.next_chunk));
        if let Some(k) = &tail_key {
            batch.insert(k.as_slice(), tail);
        }
        self.switch(snapshot, checked, batch)?;
        self.chunks = 0;
        self.doc_bytes = snapshot.len() as u64;
        if tail_key.is_some() {
            self.next_chunk += 1;
            self.chunks = 1;
            self.doc_bytes += tail.len() as u64;
        }
        Ok(())
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.injected(&self.faults.flush, "flush")?;
        // Not sled's `flush_async`: with several databases in one process, futures of
        // flushes that start at nearly the same moment can stay unwoken for good (sled
        // issue #1241), and the node's loop with them (seen as in-process meshes whose
        // nodes stopped beating after a write all of them persisted at once). A blocking
        // flush on tokio's blocking pool always ends.
        let db = self.db.clone();
        let flushed = tokio::task::spawn_blocking(move || db.flush())
            .await
            .unwrap_or_else(|e| Err(sled::Error::Io(std::io::Error::other(e.to_string()))));
        flushed.map_err(self.db_err())?;
        Ok(())
    }

    /// Blocking flush, for the CLI's offline paths.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(self.db_err())?;
        Ok(())
    }

    /// Bytes of the document as stored: the last snapshot plus the chunks appended since
    /// (an upper bound of a fresh save's size, which compaction brings back down).
    /// Tracked on every write: reading it costs nothing.
    pub fn doc_bytes(&self) -> u64 {
        self.doc_bytes
    }

    /// Bytes the store occupies on disk (approximate).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + snapshot::size_on_disk(&self.snapshots)
    }
}

impl Drop for Store {
    /// Flushes what sled still buffers (a clean stop loses nothing that was appended),
    /// then lets sled go; the data-dir lock is released last (field order).
    fn drop(&mut self) {
        if let Err(e) = self.db.flush() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "store: flush on close failed");
        }
    }
}

/// The tree and key of the remembered peers.
const PEERS_TREE: &str = "peers";
const KNOWN_PEERS_KEY: &[u8] = b"known";
/// Most peers remembered, and addresses per peer.
pub const MAX_KNOWN_PEERS: usize = 64;
pub const MAX_PEER_ADDRS: usize = 8;

/// A peer this node was connected to, remembered across restarts so a node with no
/// bootstrap address (or a stale one) can find its mesh again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KnownPeer {
    pub peer: String,
    /// Its listen addresses (multiaddrs, without the `/p2p/` suffix).
    pub addrs: Vec<String>,
    /// Wall clock (ms since the epoch) when last connected: the most recent are kept.
    pub seen_ms: u64,
}

impl Store {
    /// Replaces the remembered peers (the most recently seen [`MAX_KNOWN_PEERS`], at most
    /// [`MAX_PEER_ADDRS`] addresses each). Durable after the next flush.
    pub fn save_known_peers(&self, peers: &[KnownPeer]) -> Result<(), StoreError> {
        let mut peers = peers.to_vec();
        peers.sort_by(|a, b| b.seen_ms.cmp(&a.seen_ms).then(a.peer.cmp(&b.peer)));
        peers.truncate(MAX_KNOWN_PEERS);
        for p in &mut peers {
            p.addrs.truncate(MAX_PEER_ADDRS);
        }
        let bytes = serde_json::to_vec(&peers).unwrap_or_default();
        let tree = self.db.open_tree(PEERS_TREE).map_err(self.db_err())?;
        tree.insert(KNOWN_PEERS_KEY, bytes).map_err(self.db_err())?;
        Ok(())
    }

    /// The remembered peers (none if never saved; an unreadable record is ignored, it is
    /// only a hint).
    pub fn load_known_peers(&self) -> Result<Vec<KnownPeer>, StoreError> {
        let tree = self.db.open_tree(PEERS_TREE).map_err(self.db_err())?;
        let Some(bytes) = tree.get(KNOWN_PEERS_KEY).map_err(self.db_err())? else {
            return Ok(Vec::new());
        };
        let mut peers: Vec<KnownPeer> = serde_json::from_slice(&bytes).unwrap_or_default();
        peers.truncate(MAX_KNOWN_PEERS);
        Ok(peers)
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

fn snapshot_err(e: snapshot::Error) -> StoreError {
    match e {
        snapshot::Error::Io(path, source) => StoreError::Io { path, source },
        snapshot::Error::Corrupt(path, what) => StoreError::Corrupt {
            path,
            what: format!("snapshot file: {what}"),
        },
    }
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

    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(snapshot::DIR))
            .map(|es| {
                es.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn the_snapshot_lives_in_one_file_and_a_crash_before_the_switch_keeps_the_old_one() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(d.path()).unwrap();
            s.compact(b"snapshot one", b"checks one").unwrap();
            s.append_chunk(b"a chunk").unwrap();
            assert_eq!(s.doc_bytes(), 12 + 7);
        }
        assert_eq!(snapshot_files(d.path()), ["snapshot-0000000000000001"]);
        // A crash while the next compaction wrote its file: sled never pointed at it.
        let snapshots = d.path().join(snapshot::DIR);
        snapshot::write(&snapshots, 2, b"never switched", b"").unwrap();
        std::fs::write(snapshots.join("snapshot-0000000000000003.tmp"), b"torn").unwrap();
        let mut s = Store::open(d.path()).unwrap();
        assert_eq!(
            s.load_doc().unwrap(),
            (b"snapshot one".to_vec(), vec![b"a chunk".to_vec()])
        );
        assert_eq!(s.snapshot_checked().unwrap(), b"checks one");
        assert_eq!(s.doc_bytes(), 12 + 7);
        assert_eq!(snapshot_files(d.path()), ["snapshot-0000000000000001"]);
        // The next compaction switches, and the old file goes.
        s.compact(b"snapshot two", b"").unwrap();
        assert_eq!(snapshot_files(d.path()), ["snapshot-0000000000000002"]);
        drop(s);
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.load_doc().unwrap(), (b"snapshot two".to_vec(), vec![]));
        assert!(s.snapshot_checked().unwrap().is_empty());
    }

    #[test]
    fn a_snapshot_kept_in_sled_by_an_older_store_is_read_then_moved_to_a_file() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            // What a store written before snapshot files holds.
            s.tree.insert(SNAPSHOT_KEY, &b"old snapshot"[..]).unwrap();
            s.tree
                .insert(SNAPSHOT_CHECKED_KEY, &b"old checks"[..])
                .unwrap();
            s.flush_blocking().unwrap();
        }
        let mut s = Store::open(d.path()).unwrap();
        assert_eq!(s.doc_bytes(), 12);
        assert_eq!(s.load_doc().unwrap().0, b"old snapshot");
        assert_eq!(s.snapshot_checked().unwrap(), b"old checks");
        s.compact(b"new snapshot", b"new checks").unwrap();
        assert_eq!(s.tree.get(SNAPSHOT_KEY).unwrap(), None);
        assert_eq!(s.tree.get(SNAPSHOT_CHECKED_KEY).unwrap(), None);
        drop(s);
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.load_doc().unwrap().0, b"new snapshot");
        assert_eq!(s.snapshot_checked().unwrap(), b"new checks");
    }

    #[test]
    fn a_damaged_snapshot_file_is_reported_corrupt_not_loaded() {
        let d = tempfile::tempdir().unwrap();
        Store::open(d.path())
            .unwrap()
            .compact(b"a snapshot", b"its checks")
            .unwrap();
        let file = snapshot::path(&d.path().join(snapshot::DIR), 1);
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.load_doc().unwrap().0, b"a snapshot");
        let err = s.snapshot_checked().unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains("digest"), "{err}");
        drop(s);
        // Cut short: the header no longer matches.
        std::fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
        let err = Store::open(d.path()).unwrap_err().to_string();
        assert!(err.contains("length does not match"), "{err}");
        // Gone: the error names the file.
        std::fs::remove_file(&file).unwrap();
        let err = Store::open(d.path()).unwrap_err().to_string();
        assert!(err.contains("snapshot-0000000000000001"), "{err}");
    }

    #[test]
    fn a_story_is_read_from_the_newest_archived_document_that_holds_it() {
        use crate::core::model::NewStory;
        use crate::core::state::Doc;
        use crate::core::trust::Signer;
        use std::collections::BTreeSet;
        let d = tempfile::tempdir().unwrap();
        let signer = Signer::from_key(ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
        let me = signer.author().to_string();
        let mut doc = Doc::new([1; 16]).with_signer(signer.clone());
        let titled = |t: &str| NewStory {
            title: t.into(),
            ..Default::default()
        };
        let early = doc.add_story(&titled("early"), &me, 1).unwrap();
        let mut s = Store::open(d.path()).unwrap();
        s.compact(&doc.save(), &[]).unwrap();
        // Epoch 1 (the archive keeps the first document), and a story written in it.
        let seed = doc.seed(1).unwrap();
        s.begin_epoch(1, &seed.bytes, seed.root.0).unwrap();
        let mut e = Doc::load([2; 16], &seed.bytes, &[])
            .unwrap()
            .with_signer(signer);
        let late = e.add_story(&titled("late"), &me, 2).unwrap();
        s.append_chunk(&e.save_incremental()).unwrap();
        let seed = e.seed(2).unwrap();
        s.begin_epoch(2, &seed.bytes, seed.root.0).unwrap();
        let ops = BTreeSet::new();
        let show = |key: &str| crate::node::archived_story(&s, 2, key, &ops).unwrap();
        assert_eq!(
            show(&early).map(|d| d.story.fact.title.clone()),
            Some("early".into())
        );
        assert_eq!(
            show(&late).map(|d| d.story.fact.title.clone()),
            Some("late".into())
        );
        assert!(show("S-0099@nobody").is_none());
        // Only the epochs this store went through are read.
        assert!(crate::node::archived_story(&s, 1, &late, &ops)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_new_epoch_archives_the_old_document_and_reopens_with_its_root() {
        use crate::core::model::NewStory;
        use crate::core::state::Doc;
        use std::collections::BTreeSet;
        let d = tempfile::tempdir().unwrap();
        let mut old = Doc::new([1; 16]).with_test_names();
        let story = NewStory {
            title: "kept".into(),
            ..Default::default()
        };
        old.add_story(&story, "A", 1).unwrap();
        let seed = old.seed(1).unwrap();
        {
            let mut s = Store::open(d.path()).unwrap();
            s.compact(&old.save(), &[]).unwrap();
            s.append_chunk(b"a chunk after the snapshot").unwrap();
            assert_eq!(s.epoch_root().unwrap(), None);
            s.begin_epoch(1, &seed.bytes, seed.root.0).unwrap();
            assert_eq!(s.doc_bytes(), seed.bytes.len() as u64);
            // The epoch's own writes go on as chunks after the seed.
            let mut e = Doc::load_test_names([2; 16], &seed.bytes, &[]).unwrap();
            e.add_story(
                &NewStory {
                    title: "after".into(),
                    ..Default::default()
                },
                "A",
                2,
            )
            .unwrap();
            s.append_chunk(&e.save_incremental()).unwrap();
        }
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.epoch_root().unwrap(), Some(seed.root.0));
        let (snap, chunks) = s.load_doc().unwrap();
        assert_eq!((snap, chunks.len()), (seed.bytes.clone(), 1));
        let mut archived = old.save();
        archived.extend_from_slice(b"a chunk after the snapshot");
        assert_eq!(s.archived(1).unwrap(), Some(archived));
        assert_eq!(s.archived(2).unwrap(), None);
        // A node opens it as the epoch's document: the base read from its root.
        let doc = crate::node::load_stored_doc(&s, [3; 16], BTreeSet::new()).unwrap();
        assert_eq!(doc.base().map(|b| b.epoch), Some(1));
        assert_eq!(doc.epoch_root(), Some(seed.root.0));
    }

    #[test]
    fn a_second_opener_gets_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let _s = Store::open(d.path()).unwrap();
        let e = Store::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("in use by another mesh-agent"), "{e}");
        assert!(e.contains(&std::process::id().to_string()), "{e}");
    }

    #[test]
    fn an_opener_in_the_same_process_waits_for_a_store_still_being_dropped() {
        let d = tempfile::tempdir().unwrap();
        let first = Store::open(d.path()).unwrap();
        let dropper = std::thread::spawn(move || {
            // A drop that finishes late (the delay is the scenario, not a wait for
            // anything): without the wait the second open fails at once.
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        let second = Store::open(d.path());
        dropper.join().unwrap();
        assert!(second.is_ok(), "{:?}", second.err());
    }

    #[test]
    fn stores_reopened_at_once_a_hundred_times_never_find_the_lock_held() {
        // Several stores at once, as in a test run or an in-process mesh: sled's shared
        // background threads are busy, so a dropped store lets go of its lock late.
        let workers: Vec<_> = (0..4)
            .map(|w| {
                std::thread::spawn(move || {
                    let d = tempfile::tempdir().unwrap();
                    for i in 0..100u32 {
                        // No explicit flush: dropping the store must make the chunk
                        // durable and let the next open in at once.
                        let mut s = Store::open(d.path())
                            .unwrap_or_else(|e| panic!("store {w}, reopen {i}: {e}"));
                        assert_eq!(s.load_doc().unwrap().1.len(), i as usize, "reopen {i}");
                        s.append_chunk(&i.to_be_bytes()).unwrap();
                        if i % 3 == 0 {
                            s.flush_blocking().unwrap(); // what a node does before an ack
                        }
                    }
                    let s = Store::open(d.path()).unwrap();
                    let want: Vec<Vec<u8>> =
                        (0..100u32).map(|i| i.to_be_bytes().to_vec()).collect();
                    assert_eq!(s.load_doc().unwrap().1, want, "every chunk, in order");
                })
            })
            .collect();
        for w in workers {
            if let Err(e) = w.join() {
                std::panic::resume_unwind(e);
            }
        }
    }

    #[test]
    fn doc_bytes_follow_appends_undone_writes_compaction_rebase_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        let stored = |s: &Store| {
            let (snap, chunks) = s.load_doc().unwrap();
            (snap.len() + chunks.iter().map(Vec::len).sum::<usize>()) as u64
        };
        {
            let mut s = Store::open(d.path()).unwrap();
            assert_eq!(s.doc_bytes(), 0);
            s.append_chunk(&[1; 10]).unwrap();
            s.append_chunk(&[2; 7]).unwrap();
            assert_eq!(s.doc_bytes(), 17);
            let mark = s.chunk_mark();
            s.append_chunk(&[3; 100]).unwrap();
            s.append_chunk(&[4; 5]).unwrap();
            assert_eq!(s.doc_bytes(), 122);
            s.discard_chunks_from(mark).unwrap();
            assert_eq!(
                s.doc_bytes(),
                17,
                "an undone write's chunks no longer count"
            );
            assert_eq!(s.doc_bytes(), stored(&s));
            s.compact(&[9; 12], &[]).unwrap();
            assert_eq!(s.doc_bytes(), 12, "compaction: the snapshot alone");
            s.append_chunk(&[5; 3]).unwrap();
            assert_eq!(s.doc_bytes(), stored(&s));
        }
        let mut s = Store::open(d.path()).unwrap();
        assert_eq!(s.doc_bytes(), 15, "reopened: snapshot + chunks, as stored");
        assert_eq!(s.doc_bytes(), stored(&s));
        // A join: a peer's snapshot and our changes after it replace everything.
        s.rebase(&[7; 20], b"record", &[8; 4]).unwrap();
        assert_eq!(s.doc_bytes(), 24);
        assert_eq!(s.load_doc().unwrap(), (vec![7; 20], vec![vec![8; 4]]));
        assert_eq!(s.snapshot_checked().unwrap(), b"record");
        s.append_chunk(&[6; 2]).unwrap();
        drop(s);
        let s = Store::open(d.path()).unwrap();
        assert_eq!(
            s.load_doc().unwrap(),
            (vec![7; 20], vec![vec![8; 4], vec![6; 2]]),
            "the tail first, then what came after"
        );
        assert_eq!(s.doc_bytes(), 26);
        assert_eq!(s.chunks(), 2);
    }

    /// The event log and the remembered peers are read back from disk: whatever bytes
    /// an entry holds (a newer version's, a torn write's), it is skipped or ignored,
    /// never a panic and never an error that stops the node.
    #[test]
    fn garbage_events_and_peer_records_are_skipped_not_fatal() {
        use proptest::prelude::*;
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let log = s.events(100).unwrap();
        let peers = s.db.open_tree(PEERS_TREE).unwrap();
        let valid = serde_json::to_vec(&Event {
            node: "12D3KooWpeer".into(),
            seq: 1,
            at_ms: 2,
            kind: crate::core::model::EventKind::Claimed,
            story: "S-0001".into(),
            phase: None,
            round: 0,
            detail: String::new(),
        })
        .unwrap();
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
        let garbage = (
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<proptest::sample::Index>(),
            any::<u8>(),
        );
        runner
            .run(&garbage, |(bytes, at, byte)| {
                let mut mutated = valid.clone();
                mutated[at.index(valid.len())] = byte;
                log.tree.clear().unwrap();
                log.tree.insert(b"a", bytes.clone()).unwrap();
                log.tree.insert(b"b", mutated).unwrap();
                let (events, bad) = log.load().unwrap();
                prop_assert_eq!(events.len() + bad, 2);
                peers.insert(KNOWN_PEERS_KEY, bytes).unwrap();
                prop_assert!(s.load_known_peers().unwrap().len() <= MAX_KNOWN_PEERS);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn known_peers_survive_reopen_most_recent_first_and_bounded() {
        let d = tempfile::tempdir().unwrap();
        let peer = |i: u64| KnownPeer {
            peer: format!("p{i}"),
            addrs: (0..20).map(|a| format!("/ip4/127.0.0.1/tcp/{a}")).collect(),
            seen_ms: i,
        };
        {
            let s = Store::open(d.path()).unwrap();
            assert_eq!(s.load_known_peers().unwrap(), vec![]);
            let many: Vec<KnownPeer> = (0..100).map(peer).collect();
            s.save_known_peers(&many).unwrap();
            s.flush_blocking().unwrap();
        }
        let s = Store::open(d.path()).unwrap();
        let known = s.load_known_peers().unwrap();
        assert_eq!(known.len(), MAX_KNOWN_PEERS);
        assert_eq!(known[0].peer, "p99", "most recently seen first");
        assert!(known.iter().all(|p| p.addrs.len() == MAX_PEER_ADDRS));
        // The document is untouched by it.
        assert_eq!(s.load_doc().unwrap(), (vec![], vec![]));
    }

    #[test]
    fn the_event_log_survives_reopen_deduplicated_and_trimmed_to_the_newest() {
        use crate::core::model::EventKind;
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
        s.compact(b"snap", b"rec").unwrap();
        s.append_chunk(b"three").unwrap();
        s.db.flush().unwrap();
        drop(s);
        let s = Store::open(d.path()).unwrap();
        assert_eq!(
            s.load_doc().unwrap(),
            (b"snap".to_vec(), vec![b"three".to_vec()])
        );
        assert_eq!(s.chunks(), 1);
        // The snapshot's record of checks comes and goes with it.
        assert_eq!(s.snapshot_checked().unwrap(), b"rec".to_vec());
        let mut s = s;
        s.compact(b"snap2", &[]).unwrap();
        assert_eq!(s.snapshot_checked().unwrap(), Vec::<u8>::new());
    }
}
