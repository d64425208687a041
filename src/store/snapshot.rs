//! The document's snapshot as a file beside sled. Sled holds only its generation (the
//! `snapshot-file` key), switched in the same atomic batch that drops the chunks the
//! snapshot covers; the file is written and synced under its final name first. So a crash
//! leaves either the old snapshot in force or the new one, and at worst a file nothing
//! points at, removed at the next open.
//!
//! Why not a sled value, as before: sled keeps each value it has read in its page cache
//! for as long as it runs (its cache counts a large value by its pointer, so it is never
//! evicted), and at 100,000 stories the snapshot and its check record were 8 MB of a
//! node's memory held for nothing after the load; each compaction also left the old
//! value's blob file on disk until sled's collector got to it (195 MB of blob files after
//! a 100,000-story bulk load).
//!
//! Layout: `MAGIC`, the snapshot's and the check record's lengths (u64, big-endian), the
//! SHA-256 of each, then both. A file that does not match is reported corrupt, never
//! loaded half.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The directory in a data dir that holds the snapshot files.
pub(super) const DIR: &str = "snapshots";
const MAGIC: &[u8; 8] = b"MASNAP01";
const HEADER: usize = 8 + 8 + 8 + 32 + 32;

/// Why a snapshot file could not be read.
#[derive(Debug)]
pub(super) enum Error {
    Io(PathBuf, std::io::Error),
    Corrupt(PathBuf, &'static str),
}

/// The file of generation `generation` in `dir`.
pub(super) fn path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("snapshot-{generation:016x}"))
}

/// Writes generation `generation` durably: a temporary file, synced, renamed into place,
/// the directory synced.
pub(super) fn write(
    dir: &Path,
    generation: u64,
    snapshot: &[u8],
    checked: &[u8],
) -> Result<(), Error> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| Error::Io(p, e)
    };
    let mut create = std::fs::DirBuilder::new();
    create.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut create, 0o700);
    create.create(dir).map_err(io(dir))?;
    let fin = path(dir, generation);
    let tmp = fin.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(snapshot.len() as u64).to_be_bytes());
    header.extend_from_slice(&(checked.len() as u64).to_be_bytes());
    header.extend_from_slice(&Sha256::digest(snapshot));
    header.extend_from_slice(&Sha256::digest(checked));
    f.write_all(&header).map_err(io(&tmp))?;
    f.write_all(snapshot).map_err(io(&tmp))?;
    f.write_all(checked).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &fin).map_err(io(&fin))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// The two lengths and digests a file's header gives.
struct Header {
    snapshot: (u64, [u8; 32]),
    checked: (u64, [u8; 32]),
}

fn header(f: &mut File, p: &Path) -> Result<Header, Error> {
    let mut h = [0u8; HEADER];
    f.read_exact(&mut h)
        .map_err(|_| Error::Corrupt(p.to_path_buf(), "shorter than its header"))?;
    if &h[..8] != MAGIC {
        return Err(Error::Corrupt(p.to_path_buf(), "not a snapshot file"));
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[i..i + 8]);
        u64::from_be_bytes(b)
    };
    let digest_at = |i: usize| {
        let mut b = [0u8; 32];
        b.copy_from_slice(&h[i..i + 32]);
        b
    };
    let header = Header {
        snapshot: (u64_at(8), digest_at(24)),
        checked: (u64_at(16), digest_at(56)),
    };
    let len = f
        .metadata()
        .map_err(|e| Error::Io(p.to_path_buf(), e))?
        .len();
    let want = (HEADER as u64)
        .checked_add(header.snapshot.0)
        .and_then(|n| n.checked_add(header.checked.0));
    if want != Some(len) {
        return Err(Error::Corrupt(
            p.to_path_buf(),
            "its length does not match its header",
        ));
    }
    Ok(header)
}

/// One part of the file (`at` bytes after the header), checked against its digest.
fn part(f: &mut File, p: &Path, at: u64, (len, digest): (u64, [u8; 32])) -> Result<Vec<u8>, Error> {
    let io = |e| Error::Io(p.to_path_buf(), e);
    f.seek(SeekFrom::Start(HEADER as u64 + at)).map_err(io)?;
    let len = usize::try_from(len).map_err(|_| Error::Corrupt(p.to_path_buf(), "too large"))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).map_err(io)?;
    if Sha256::digest(&buf).as_slice() != digest {
        return Err(Error::Corrupt(
            p.to_path_buf(),
            "its content does not match its digest",
        ));
    }
    Ok(buf)
}

fn open(dir: &Path, generation: u64) -> Result<(File, PathBuf, Header), Error> {
    let p = path(dir, generation);
    let mut f = File::open(&p).map_err(|e| Error::Io(p.clone(), e))?;
    let h = header(&mut f, &p)?;
    Ok((f, p, h))
}

/// The snapshot of generation `generation`.
pub(super) fn snapshot(dir: &Path, generation: u64) -> Result<Vec<u8>, Error> {
    let (mut f, p, h) = open(dir, generation)?;
    part(&mut f, &p, 0, h.snapshot)
}

/// The check record of generation `generation`.
pub(super) fn checked(dir: &Path, generation: u64) -> Result<Vec<u8>, Error> {
    let (mut f, p, h) = open(dir, generation)?;
    part(&mut f, &p, h.snapshot.0, h.checked)
}

/// The snapshot's length in generation `generation` (read from its header).
pub(super) fn snapshot_len(dir: &Path, generation: u64) -> Result<u64, Error> {
    Ok(open(dir, generation)?.2.snapshot.0)
}

/// Bytes the snapshot files in `dir` take.
pub(super) fn size_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Removes every file in `dir` but generation `keep`'s: older generations once a newer
/// one is in force, and files a crash left before sled pointed at them.
pub(super) fn remove_others(dir: &Path, keep: Option<u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let keep = keep.map(|g| path(dir, g));
    for e in entries.flatten() {
        let p = e.path();
        if Some(&p) != keep.as_ref() {
            if let Err(err) = std::fs::remove_file(&p) {
                tracing::warn!(file = %p.display(), error = %err,
                    "store: could not remove a snapshot file no longer in force");
            }
        }
    }
}
