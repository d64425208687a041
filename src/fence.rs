//! Fencing at the git origin: the one resource that must never take two writers.
//!
//! Leases only decide who *should* work; a holder that paused past its lease can still
//! wake up and push. So the merge gate lands main only through this module, under the
//! merge claim's token ([`crate::core::fence::fence_token`]), and the fence refuses a
//! token the rule refuses (Kleppmann: a lock without a fence is only advisory). The rule
//! itself, [`crate::core::fence::token_check`], and the record are pure and live in the
//! core, where the simulator's origin model calls the same function; this module is the
//! I/O shell over git2 that keeps the records, takes the locks and moves main.
//! (`record` is the same check without a land; the product lands only, the tests use it
//! to set up fences.)
//!
//! # Storage
//!
//! `refs/mesh/fence/<story>` points directly at a blob (allowed for refs outside
//! `refs/heads/`) whose content is:
//!
//! ```text
//! token 8589934599      (the token as versions before `round`/`claim` read it)
//! round 2
//! claim 7
//! holder 12D3KooW...
//! landed 3f2a...        (only once the story has landed on main)
//! ```
//!
//! `round` and `claim` are the fence token ([`crate::core::fence::FenceToken`]): the
//! merge round and the claim's whole 64-bit token, compared in that order. A record
//! without them was written by an earlier version, whose `token` line packed
//! `round << 32 | token & 0xffff_ffff`; it is read back as that pair
//! ([`crate::core::fence::from_legacy`]), so it still refuses a lower token. Records
//! written now keep the `token` line in that old form (saturated, never wrapped) for
//! earlier readers.
//!
//! A blob keeps the fence out of every branch's history, and the ref keeps the blob alive
//! through `git gc`. Unknown lines are ignored, so a later version can add fields.
//!
//! # Rules
//!
//! - `record`: succeeds if no token is recorded, or the recorded one is lower; re-recording
//!   the same token by the same holder is an idempotent success; the same token by another
//!   holder is refused ([`Refused::TokenTaken`]), a higher recorded token is refused
//!   ([`Refused::StaleToken`]).
//! - `land`: the same token rules, then main must fast-forward to the new commit
//!   ([`Refused::NotFastForward`] otherwise; a main that already contains the commit is
//!   left as is); main moves and the fence records
//!   `landed <commit>`. A story lands at most once: any later land or record, except the
//!   same holder repeating the same land, is refused ([`Refused::AlreadyLanded`]).
//!
//! # Guarantee
//!
//! Every decision is taken while holding git's lock files (`<ref>.lock`, created with
//! `O_EXCL`) on every ref it reads, and the refs are re-read *after* the locks are taken.
//! Two writers going through this module, or through anything else that honours git's
//! ref locks (a `git push` to main does), are therefore serialised per story: the
//! recorded token never decreases, two holders never both record the same token, main
//! only moves by fast-forward from the value read under the lock, and at most one land
//! per story succeeds. A lost race is not an error: the loser waits for the lock (with
//! jittered backoff, up to the lock timeout), re-reads and decides again.
//!
//! What remains:
//! - **A crash mid-land.** Git cannot rename two ref files atomically. Main is written
//!   first, then the fence ref, both while the fence lock is held; a crash between them
//!   leaves main advanced but the fence without `landed`. The same holder repeating the
//!   land completes it (a main that already contains the commit needs no move, even if
//!   others landed on top since); the story is never marked landed while main lacks its
//!   commit. Until then a takeover holder with a higher token may land the story again
//!   (its rebase onto main finds the work already there, so at worst an empty change).
//! - **A stale lock file** left by a crashed writer blocks that ref until removed;
//!   [`FenceError::Busy`] names the file.
//! - **Writers that bypass lock files** (hand-edited refs, a reftable ref store) are not
//!   fenced.
//! - **Remote origins.** This module needs a path git2 can open (the same machine or a
//!   shared filesystem whose exclusive create is honest). A network origin is fenced by
//!   [`crate::git::remote`] instead: one `git push --atomic` with a lease on both refs,
//!   the same record format and the same rule (not wired into the gate yet).

use crate::core::fence::{self, token_check, FenceToken};
use git2::{ErrorCode, ObjectType, Oid, Reference, Repository, Signature};
use rand::Rng;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where story fences live in the origin.
pub const FENCE_REF_PREFIX: &str = "refs/mesh/fence/";
/// The branch the merge gate lands on unless told otherwise.
pub const DEFAULT_BRANCH_REF: &str = "refs/heads/main";
/// How long a writer waits for another writer's ref lock before giving up.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest accepted story key and holder id, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Largest fence blob read back; anything bigger is not ours.
const MAX_FENCE_BLOB_BYTES: usize = 4096;

/// What the fence ref of a story says (the pure record of [`crate::core::fence`], with
/// git commit ids).
pub type FenceRecord = fence::FenceRecord<Oid>;

/// An expected refusal: the fence did its job (see [`crate::core::fence::Refused`]).
pub type Refused = fence::Refused<Oid>;

impl FenceRecord {
    /// The blob content of the record (the format above); `git::remote` pushes the same.
    pub(crate) fn to_blob(&self) -> String {
        let (round, claim) = fence::fence_parts(self.token);
        let mut s = format!(
            "token {}\nround {round}\nclaim {claim}\nholder {}\n",
            fence::to_legacy(self.token),
            self.holder
        );
        if let Some(c) = self.landed {
            s.push_str(&format!("landed {c}\n"));
        }
        s
    }

    /// Reads a fence blob back (the format above); the error says what is wrong with it.
    pub(crate) fn parse(data: &[u8]) -> Result<FenceRecord, String> {
        let text = std::str::from_utf8(data).map_err(|_| "content is not UTF-8".to_string())?;
        let (mut legacy, mut round, mut claim, mut holder, mut landed) =
            (None, None, None, None, None);
        fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
            value
                .parse::<T>()
                .map_err(|_| format!("{key} {value:?} is not a number"))
        }
        for line in text.lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "token" => legacy = Some(number::<u64>(key, value)?),
                "round" => round = Some(number::<u32>(key, value)?),
                "claim" => claim = Some(number::<u64>(key, value)?),
                "holder" => holder = Some(value.to_string()),
                "landed" => {
                    landed = Some(
                        Oid::from_str(value)
                            .map_err(|_| format!("landed {value:?} is not a commit id"))?,
                    )
                }
                _ => {}
            }
        }
        let token: FenceToken = match (round, claim, legacy) {
            (Some(round), Some(claim), _) => fence::fence_token(round, claim),
            (None, None, Some(old)) => fence::from_legacy(old),
            (None, None, None) => return Err("no `token` line".into()),
            _ => return Err("a `round` line without a `claim` line, or the reverse".into()),
        };
        Ok(FenceRecord {
            token,
            holder: holder.filter(|h| !h.is_empty()).ok_or("no `holder` line")?,
            landed,
        })
    }
}

/// A failure: the fence could not be consulted or updated, so nothing is known to have
/// happened. Each names what was being done and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("cannot open the git origin at {origin}: {source}; check the path points to a git repository")]
    Open {
        origin: PathBuf,
        source: git2::Error,
    },
    #[error("story key {story:?} cannot name a fence ref: {why}")]
    BadStory { story: String, why: &'static str },
    #[error("holder {holder:?} is not a peer id: {why}")]
    BadHolder { holder: String, why: &'static str },
    #[error("branch {branch:?} is not a valid ref to land on; use a full ref name such as refs/heads/main")]
    BadBranch { branch: String },
    #[error("commit {commit} is not in the origin at {origin}: {source}; push the commit's objects before landing")]
    MissingCommit {
        commit: Oid,
        origin: PathBuf,
        source: git2::Error,
    },
    #[error("{reference} in {origin} is unreadable ({why}); it was not written by mesh-agent, inspect it with `git cat-file -p {reference}`")]
    Corrupt {
        reference: String,
        origin: PathBuf,
        why: String,
    },
    #[error("{reference} in {origin} stayed locked for {waited_ms} ms; another writer is updating it, or one crashed: if no mesh-agent or git process is writing, delete {lock_file}")]
    Busy {
        reference: String,
        origin: PathBuf,
        waited_ms: u128,
        lock_file: PathBuf,
    },
    #[error("git error while trying to {op} in {origin}: {source}")]
    Git {
        op: &'static str,
        origin: PathBuf,
        source: git2::Error,
    },
}

/// The fence of one git origin.
pub struct Fence {
    repo: Repository,
    origin: PathBuf,
    lock_timeout: Duration,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("origin", &self.origin)
            .field("lock_timeout", &self.lock_timeout)
            .finish_non_exhaustive()
    }
}

/// The fence ref of a story: `refs/mesh/fence/<story>`. Fails for keys that cannot be one
/// path component of a ref name.
pub fn fence_ref(story: &str) -> Result<String, FenceError> {
    let bad = |why| FenceError::BadStory {
        story: story.to_string(),
        why,
    };
    if story.is_empty() {
        return Err(bad("it is empty"));
    }
    if story.len() > MAX_NAME_BYTES {
        return Err(bad("it is longer than 256 bytes"));
    }
    if story.contains('/') {
        return Err(bad("it contains `/`"));
    }
    let name = format!("{FENCE_REF_PREFIX}{story}");
    if !Reference::is_valid_name(&name) {
        return Err(bad(
            "git refuses it as a ref name (no spaces, `..`, `~^:?*[\\`, `@{` or control characters)",
        ));
    }
    Ok(name)
}

pub(crate) fn check_holder(holder: &str) -> Result<(), FenceError> {
    let bad = |why| FenceError::BadHolder {
        holder: holder.to_string(),
        why,
    };
    if holder.is_empty() {
        return Err(bad("it is empty"));
    }
    if holder.len() > MAX_NAME_BYTES {
        return Err(bad("it is longer than 256 bytes"));
    }
    if holder.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains whitespace or control characters"));
    }
    Ok(())
}

/// What a decision taken under the locks wants written.
struct Writes {
    /// New target of the branch, if it moves.
    branch: Option<Oid>,
    /// New fence record, if it changes.
    fence: Option<FenceRecord>,
}

impl Fence {
    /// Opens the origin repository (bare or not) at `origin`.
    pub fn open(origin: impl AsRef<Path>) -> Result<Fence, FenceError> {
        let origin = origin.as_ref().to_path_buf();
        let repo = Repository::open(&origin).map_err(|source| FenceError::Open {
            origin: origin.clone(),
            source,
        })?;
        Ok(Fence {
            repo,
            origin,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        })
    }

    /// Sets how long to wait for another writer's ref lock (default 10 s).
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Fence {
        self.lock_timeout = timeout;
        self
    }

    /// The repository this fence guards.
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    fn git(&self, op: &'static str) -> impl Fn(git2::Error) -> FenceError + '_ {
        move |source| FenceError::Git {
            op,
            origin: self.origin.clone(),
            source,
        }
    }

    /// The full record of a story's fence, if any.
    pub fn read_record(&self, story: &str) -> Result<Option<FenceRecord>, FenceError> {
        let name = fence_ref(story)?;
        self.read_at(&name)
    }

    /// The token and holder recorded for a story, if any.
    pub fn read(&self, story: &str) -> Result<Option<(FenceToken, String)>, FenceError> {
        Ok(self.read_record(story)?.map(|r| (r.token, r.holder)))
    }

    fn read_at(&self, name: &str) -> Result<Option<FenceRecord>, FenceError> {
        let corrupt = |why: String| FenceError::Corrupt {
            reference: name.to_string(),
            origin: self.origin.clone(),
            why,
        };
        let Some(oid) = self.target_of(name)? else {
            return Ok(None);
        };
        let object = self
            .repo
            .find_object(oid, None)
            .map_err(|e| corrupt(format!("its target {oid} is missing: {}", e.message())))?;
        if object.kind() != Some(ObjectType::Blob) {
            return Err(corrupt(format!(
                "it points to a {:?}, not a blob",
                object.kind()
            )));
        }
        let blob = self
            .repo
            .find_blob(oid)
            .map_err(self.git("read a fence blob"))?;
        if blob.size() > MAX_FENCE_BLOB_BYTES {
            return Err(corrupt(format!("its blob is {} bytes", blob.size())));
        }
        FenceRecord::parse(blob.content())
            .map(Some)
            .map_err(corrupt)
    }

    /// The direct target of a ref, or `None` if it does not exist.
    fn target_of(&self, name: &str) -> Result<Option<Oid>, FenceError> {
        match self.repo.find_reference(name) {
            Ok(r) => r.target().map(Some).ok_or_else(|| FenceError::Corrupt {
                reference: name.to_string(),
                origin: self.origin.clone(),
                why: "it is a symbolic ref".to_string(),
            }),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(self.git("read a ref")(e)),
        }
    }

    /// Records `token` for `story` on behalf of `holder`, before implementing.
    ///
    /// `Ok(Ok(()))`: the token is recorded (or already was, by this holder).
    /// `Ok(Err(refused))`: an expected refusal carrying what is recorded.
    pub fn record(
        &self,
        story: &str,
        token: FenceToken,
        holder: &str,
    ) -> Result<Result<(), Refused>, FenceError> {
        let name = fence_ref(story)?;
        check_holder(holder)?;
        self.under_locks(&name, None, |fence| {
            let current = fence.read_at(&name)?;
            if let Some(refused) = token_check(current.as_ref(), token, holder) {
                return Ok(Err(refused));
            }
            if let Some(rec) = &current {
                if rec.landed.is_some() || rec.token == token {
                    // Same holder, same token: already recorded (landed is checked above).
                    return Ok(Ok(None));
                }
            }
            Ok(Ok(Some(Writes {
                branch: None,
                fence: Some(FenceRecord {
                    token,
                    holder: holder.to_string(),
                    landed: None,
                }),
            })))
        })
    }

    /// Lands `new_main` on `branch_ref` for `story`, fenced by `token`.
    ///
    /// `new_main` must already be in the origin's object database. Under the locks of the
    /// fence ref and the branch: the token must pass the same checks as [`Fence::record`],
    /// the story must not have landed already, and `new_main` must descend from the branch
    /// (or equal it). Then the branch moves to `new_main` and the fence records
    /// `token`, `holder` and `landed new_main`. Repeating a successful land (same token,
    /// holder and commit) succeeds again without changes, and completes a land whose
    /// fence write was interrupted.
    pub fn land(
        &self,
        story: &str,
        token: FenceToken,
        holder: &str,
        branch_ref: &str,
        new_main: Oid,
    ) -> Result<Result<(), Refused>, FenceError> {
        let name = fence_ref(story)?;
        check_holder(holder)?;
        if !Reference::is_valid_name(branch_ref)
            || !branch_ref.starts_with("refs/")
            || branch_ref.starts_with(FENCE_REF_PREFIX)
        {
            return Err(FenceError::BadBranch {
                branch: branch_ref.to_string(),
            });
        }
        self.repo
            .find_commit(new_main)
            .map_err(|source| FenceError::MissingCommit {
                commit: new_main,
                origin: self.origin.clone(),
                source,
            })?;
        self.under_locks(&name, Some(branch_ref), |fence| {
            let current = fence.read_at(&name)?;
            if let Some(refused) = token_check(current.as_ref(), token, holder) {
                return Ok(Err(refused));
            }
            if let Some(FenceRecord {
                landed: Some(commit),
                token: recorded,
                ..
            }) = current
            {
                // token_check let it through: same token and holder.
                if commit != new_main {
                    return Ok(Err(Refused::AlreadyLanded {
                        token: recorded,
                        commit,
                    }));
                }
            }
            let main = fence.target_of(branch_ref)?;
            let descends = |commit: Oid, ancestor: Oid| {
                fence
                    .repo
                    .graph_descendant_of(commit, ancestor)
                    .map_err(fence.git("compare commits"))
            };
            let branch = match main {
                None => Some(new_main),
                Some(old) if old == new_main => None,
                Some(old) if descends(new_main, old)? => Some(new_main),
                // Main already contains the commit (a land interrupted after main moved,
                // then others landed on top): the work is on main, only the fence is due.
                Some(old) if descends(old, new_main)? => None,
                Some(old) => return Ok(Err(Refused::NotFastForward { main: old })),
            };
            let record = FenceRecord {
                token,
                holder: holder.to_string(),
                landed: Some(new_main),
            };
            let fence_write = (current.as_ref() != Some(&record)).then_some(record);
            if branch.is_none() && fence_write.is_none() {
                return Ok(Ok(None));
            }
            Ok(Ok(Some(Writes {
                branch,
                fence: fence_write,
            })))
        })
    }

    /// Takes the lock on `fence_name` (and `branch`, if any), retrying with jittered
    /// backoff while another writer holds one, then lets `decide` read and decide, and
    /// writes what it asks: the branch first, then the fence, the fence lock held
    /// throughout.
    fn under_locks(
        &self,
        fence_name: &str,
        branch: Option<&str>,
        decide: impl Fn(&Fence) -> Result<Result<Option<Writes>, Refused>, FenceError>,
    ) -> Result<Result<(), Refused>, FenceError> {
        let started = Instant::now();
        let mut backoff_ms: u64 = 1;
        loop {
            match self.try_once(fence_name, branch, &decide) {
                Err(Locked(reference)) => {
                    let waited = started.elapsed();
                    if waited >= self.lock_timeout {
                        return Err(FenceError::Busy {
                            lock_file: self.repo.path().join(format!("{reference}.lock")),
                            reference,
                            origin: self.origin.clone(),
                            waited_ms: waited.as_millis(),
                        });
                    }
                    let sleep = rand::thread_rng().gen_range(backoff_ms..=backoff_ms * 2);
                    std::thread::sleep(Duration::from_millis(sleep));
                    backoff_ms = (backoff_ms * 2).min(50);
                }
                Ok(outcome) => return outcome,
            }
        }
    }

    /// One attempt: `Err(Locked)` if a lock was busy (nothing was read or written).
    fn try_once(
        &self,
        fence_name: &str,
        branch: Option<&str>,
        decide: &impl Fn(&Fence) -> Result<Result<Option<Writes>, Refused>, FenceError>,
    ) -> Result<Result<Result<(), Refused>, FenceError>, Locked> {
        let lock = |name: &str| -> Result<Result<git2::Transaction<'_>, FenceError>, Locked> {
            let mut tx = match self.repo.transaction() {
                Ok(tx) => tx,
                Err(e) => return Ok(Err(self.git("start a ref transaction")(e))),
            };
            match tx.lock_ref(name) {
                Ok(()) => Ok(Ok(tx)),
                Err(e) if e.code() == ErrorCode::Locked => Err(Locked(name.to_string())),
                Err(e) => Ok(Err(self.git("lock a ref")(e))),
            }
        };
        // One transaction per ref, so each can be committed on its own, in order.
        let fence_tx = match lock(fence_name)? {
            Ok(tx) => tx,
            Err(e) => return Ok(Err(e)),
        };
        let branch_tx = match branch.map(lock).transpose()? {
            Some(Err(e)) => return Ok(Err(e)),
            Some(Ok(tx)) => Some(tx),
            None => None,
        };
        // Both locks held: what we read now cannot change until we let go.
        let writes = match decide(self) {
            Ok(Ok(Some(writes))) => writes,
            Ok(Ok(None)) => return Ok(Ok(Ok(()))),
            Ok(Err(refused)) => return Ok(Ok(Err(refused))),
            Err(e) => return Ok(Err(e)),
        };
        Ok(self.write(fence_name, fence_tx, branch.zip(branch_tx), writes))
    }

    /// Writes the branch (committing its transaction, which releases its lock), then the
    /// fence. Dropping a transaction unwritten releases its lock.
    fn write(
        &self,
        fence_name: &str,
        mut fence_tx: git2::Transaction<'_>,
        branch: Option<(&str, git2::Transaction<'_>)>,
        writes: Writes,
    ) -> Result<Result<(), Refused>, FenceError> {
        let sig = Signature::now("mesh-agent", "mesh-agent@localhost")
            .map_err(self.git("make a reflog signature"))?;
        if let (Some((name, mut tx)), Some(target)) = (branch, writes.branch) {
            tx.set_target(name, target, Some(&sig), "mesh-agent: fenced land")
                .map_err(self.git("stage the branch update"))?;
            tx.commit().map_err(self.git("update the branch"))?;
        }
        if let Some(record) = writes.fence {
            let blob = self
                .repo
                .blob(record.to_blob().as_bytes())
                .map_err(self.git("write the fence blob"))?;
            fence_tx
                .set_target(fence_name, blob, Some(&sig), "mesh-agent: fence")
                .map_err(self.git("stage the fence update"))?;
            fence_tx
                .commit()
                .map_err(self.git("update the fence ref"))?;
        }
        Ok(Ok(()))
    }
}

/// A ref lock held by someone else.
struct Locked(String);

/// Opens `origin` and reads a story's fence: `(token, holder)`, if recorded.
pub fn read(
    origin: impl AsRef<Path>,
    story: &str,
) -> Result<Option<(FenceToken, String)>, FenceError> {
    Fence::open(origin)?.read(story)
}

/// Opens `origin` and records a token for a story: see [`Fence::record`].
pub fn record(
    origin: impl AsRef<Path>,
    story: &str,
    token: FenceToken,
    holder: &str,
) -> Result<Result<(), Refused>, FenceError> {
    Fence::open(origin)?.record(story, token, holder)
}

/// Opens `origin` and lands a story on `branch_ref`: see [`Fence::land`].
pub fn land(
    origin: impl AsRef<Path>,
    story: &str,
    token: FenceToken,
    holder: &str,
    branch_ref: &str,
    new_main: Oid,
) -> Result<Result<(), Refused>, FenceError> {
    Fence::open(origin)?.land(story, token, holder, branch_ref, new_main)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    const MAIN: &str = DEFAULT_BRANCH_REF;
    const STORY: &str = "S-0042@ab12cd";

    /// A bare origin in a tempdir with one commit on main.
    fn origin() -> (tempfile::TempDir, Oid) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path()).unwrap();
        let root = commit(&repo, None, "root");
        repo.reference(MAIN, root, true, "init").unwrap();
        (dir, root)
    }

    /// A commit in the origin's object database, on top of `parent`, moving no ref.
    fn commit(repo: &Repository, parent: Option<Oid>, msg: &str) -> Oid {
        let blob = repo.blob(msg.as_bytes()).unwrap();
        let mut tb = repo.treebuilder(None).unwrap();
        tb.insert("file.txt", blob, 0o100644).unwrap();
        let tree = repo.find_tree(tb.write().unwrap()).unwrap();
        let sig = Signature::new("t", "t@t", &git2::Time::new(0, 0)).unwrap();
        let parents: Vec<git2::Commit<'_>> = parent
            .map(|p| repo.find_commit(p).unwrap())
            .into_iter()
            .collect();
        let parents: Vec<&git2::Commit<'_>> = parents.iter().collect();
        repo.commit(None, &sig, &sig, msg, &tree, &parents).unwrap()
    }

    fn main_of(dir: &Path) -> Oid {
        Repository::open(dir).unwrap().refname_to_id(MAIN).unwrap()
    }

    fn fence_oid(dir: &Path) -> Option<Oid> {
        Repository::open(dir)
            .unwrap()
            .refname_to_id(&fence_ref(STORY).unwrap())
            .ok()
    }

    #[test]
    fn a_first_record_creates_the_fence_and_read_returns_it() {
        let (dir, _) = origin();
        assert_eq!(read(dir.path(), STORY).unwrap(), None);
        assert_eq!(record(dir.path(), STORY, 3, "peerA").unwrap(), Ok(()));
        assert_eq!(
            read(dir.path(), STORY).unwrap(),
            Some((3, "peerA".to_string()))
        );
        // Stored as a blob pointed to directly by the ref.
        let repo = Repository::open(dir.path()).unwrap();
        let oid = repo.refname_to_id("refs/mesh/fence/S-0042@ab12cd").unwrap();
        let blob = repo.find_blob(oid).unwrap();
        assert_eq!(blob.content(), b"token 3\nround 0\nclaim 3\nholder peerA\n");
    }

    #[test]
    fn re_recording_the_same_token_by_the_same_holder_is_idempotent() {
        let (dir, _) = origin();
        assert_eq!(record(dir.path(), STORY, 3, "peerA").unwrap(), Ok(()));
        let before = fence_oid(dir.path());
        assert_eq!(record(dir.path(), STORY, 3, "peerA").unwrap(), Ok(()));
        assert_eq!(fence_oid(dir.path()), before);
    }

    #[test]
    fn the_same_token_by_another_holder_is_refused() {
        let (dir, _) = origin();
        assert_eq!(record(dir.path(), STORY, 3, "peerA").unwrap(), Ok(()));
        assert_eq!(
            record(dir.path(), STORY, 3, "peerB").unwrap(),
            Err(Refused::TokenTaken {
                token: 3,
                holder: "peerA".into()
            })
        );
    }

    #[test]
    fn a_higher_token_replaces_a_lower_one() {
        let (dir, _) = origin();
        assert_eq!(record(dir.path(), STORY, 3, "peerA").unwrap(), Ok(()));
        assert_eq!(record(dir.path(), STORY, 4, "peerB").unwrap(), Ok(()));
        assert_eq!(
            read(dir.path(), STORY).unwrap(),
            Some((4, "peerB".to_string()))
        );
    }

    #[test]
    fn a_stale_writer_arriving_late_is_refused_and_changes_nothing() {
        let (dir, root) = origin();
        assert_eq!(record(dir.path(), STORY, 5, "peerB").unwrap(), Ok(()));
        let fence_before = fence_oid(dir.path());
        let stale = Fence::open(dir.path()).unwrap();
        assert_eq!(
            stale.record(STORY, 4, "peerA").unwrap(),
            Err(Refused::StaleToken { recorded: 5 })
        );
        let work = commit(stale.repository(), Some(root), "stale work");
        assert_eq!(
            stale.land(STORY, 4, "peerA", MAIN, work).unwrap(),
            Err(Refused::StaleToken { recorded: 5 })
        );
        assert_eq!(fence_oid(dir.path()), fence_before);
        assert_eq!(main_of(dir.path()), root);
    }

    #[test]
    fn two_writers_racing_end_with_the_higher_token() {
        for round in 0..20 {
            let (dir, _) = origin();
            let barrier = Arc::new(Barrier::new(2));
            let handles: Vec<_> = [(7, "peerA"), (9, "peerB")]
                .into_iter()
                .map(|(token, holder)| {
                    let path = dir.path().to_path_buf();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        let fence = Fence::open(&path).unwrap();
                        barrier.wait();
                        (token, fence.record(STORY, token, holder).unwrap())
                    })
                })
                .collect();
            let results: Vec<(FenceToken, Result<(), Refused>)> =
                handles.into_iter().map(|h| h.join().unwrap()).collect();
            for (token, outcome) in &results {
                match (token, outcome) {
                    (9, Ok(())) => {}
                    // The lower writer wins only if it went first; refused otherwise.
                    (7, Ok(())) | (7, Err(Refused::StaleToken { recorded: 9 })) => {}
                    other => panic!("round {round}: unexpected outcome {other:?}"),
                }
            }
            assert_eq!(
                read(dir.path(), STORY).unwrap(),
                Some((9, "peerB".to_string())),
                "round {round}"
            );
        }
    }

    #[test]
    fn many_writers_racing_never_lower_the_token_and_end_at_the_max() {
        let (dir, _) = origin();
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (1..=n as FenceToken)
            .map(|token| {
                let path = dir.path().to_path_buf();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let fence = Fence::open(&path).unwrap();
                    barrier.wait();
                    let holder = format!("peer{token}");
                    (token, fence.record(STORY, token, &holder).unwrap())
                })
            })
            .collect();
        for h in handles {
            let (token, outcome) = h.join().unwrap();
            match outcome {
                Ok(()) => {}
                Err(Refused::StaleToken { recorded }) => assert!(recorded > token),
                Err(other) => panic!("token {token}: {other:?}"),
            }
        }
        assert_eq!(
            read(dir.path(), STORY).unwrap(),
            Some((n as FenceToken, format!("peer{n}")))
        );
    }

    #[test]
    fn land_fast_forwards_main_and_marks_the_story_landed() {
        let (dir, root) = origin();
        let fence = Fence::open(dir.path()).unwrap();
        assert_eq!(fence.record(STORY, 2, "peerA").unwrap(), Ok(()));
        let work = commit(fence.repository(), Some(root), "work");
        assert_eq!(fence.land(STORY, 2, "peerA", MAIN, work).unwrap(), Ok(()));
        assert_eq!(main_of(dir.path()), work);
        assert_eq!(
            fence.read_record(STORY).unwrap(),
            Some(FenceRecord {
                token: 2,
                holder: "peerA".into(),
                landed: Some(work)
            })
        );
    }

    #[test]
    fn a_land_without_a_prior_record_records_its_token() {
        let (dir, root) = origin();
        let fence = Fence::open(dir.path()).unwrap();
        let work = commit(fence.repository(), Some(root), "work");
        assert_eq!(fence.land(STORY, 1, "peerA", MAIN, work).unwrap(), Ok(()));
        assert_eq!(fence.read(STORY).unwrap(), Some((1, "peerA".into())));
    }

    #[test]
    fn a_land_with_a_lower_token_than_recorded_is_refused_and_main_stays() {
        let (dir, root) = origin();
        let fence = Fence::open(dir.path()).unwrap();
        assert_eq!(fence.record(STORY, 6, "peerB").unwrap(), Ok(()));
        let work = commit(fence.repository(), Some(root), "work");
        assert_eq!(
            fence.land(STORY, 5, "peerA", MAIN, work).unwrap(),
            Err(Refused::StaleToken { recorded: 6 })
        );
        assert_eq!(main_of(dir.path()), root);
        assert_eq!(fence.read(STORY).unwrap(), Some((6, "peerB".into())));
    }

    #[test]
    fn a_non_fast_forward_land_is_refused_and_changes_nothing() {
        let (dir, root) = origin();
        let fence = Fence::open(dir.path()).unwrap();
        assert_eq!(fence.record(STORY, 2, "peerA").unwrap(), Ok(()));
        // Main moves on (another story landed) after our branch forked from root.
        let other = commit(fence.repository(), Some(root), "other story");
        assert_eq!(
            land(dir.path(), "S-0001@zzzzzz", 1, "peerC", MAIN, other).unwrap(),
            Ok(())
        );
        let fence_before = fence_oid(dir.path());
        let ours = commit(fence.repository(), Some(root), "ours");
        assert_eq!(
            fence.land(STORY, 2, "peerA", MAIN, ours).unwrap(),
            Err(Refused::NotFastForward { main: other })
        );
        assert_eq!(main_of(dir.path()), other);
        assert_eq!(fence_oid(dir.path()), fence_before);
        // After a rebase onto main it lands.
        let rebased = commit(fence.repository(), Some(other), "ours, rebased");
        assert_eq!(
            fence.land(STORY, 2, "peerA", MAIN, rebased).unwrap(),
            Ok(())
        );
        assert_eq!(main_of(dir.path()), rebased);
    }

    #[test]
    fn a_story_lands_at_most_once() {
        let (dir, root) = origin();
        let fence = Fence::open(dir.path()).unwrap();
        let work = commit(fence.repository(), Some(root), "work");
        assert_eq!(fence.land(STORY, 2, "peerA", MAIN, work).unwrap(), Ok(()));
        let landed = Err(Refused::AlreadyLanded {
            token: 2,
            commit: work,
        });
        let again = commit(fence.repository(), Some(work), "again");
        assert_eq!(fence.land(STORY, 3, "peerB", MAIN, again).unwrap(), landed);
        assert_eq!(fence.land(STORY, 2, "peerA", MAIN, again).unwrap(), landed);
        assert_eq!(fence.record(STORY, 9, "peerB").unwrap(), landed);
        assert_eq!(main_of(dir.path()), work);
    }

    #[test]
    fn repeating_a_land_succeeds_even_after_main_moved_on() {
        let (dir, root) = origin();
        let fence = Fence::open(dir.path()).unwrap();
        let work = commit(fence.repository(), Some(root), "work");
        assert_eq!(fence.land(STORY, 2, "peerA", MAIN, work).unwrap(), Ok(()));
        assert_eq!(fence.land(STORY, 2, "peerA", MAIN, work).unwrap(), Ok(()));
        let next = commit(fence.repository(), Some(work), "next story");
        assert_eq!(
            land(dir.path(), "S-0043@ab12cd", 1, "peerB", MAIN, next).unwrap(),
            Ok(())
        );
        assert_eq!(fence.land(STORY, 2, "peerA", MAIN, work).unwrap(), Ok(()));
        assert_eq!(main_of(dir.path()), next);
    }

    #[test]
    fn a_land_interrupted_after_main_moved_is_completed_by_repeating_it() {
        let (dir, root) = origin();
        let fence = Fence::open(dir.path()).unwrap();
        assert_eq!(fence.record(STORY, 2, "peerA").unwrap(), Ok(()));
        let work = commit(fence.repository(), Some(root), "work");
        // Simulate the crash: main written, fence not.
        fence
            .repository()
            .reference(MAIN, work, true, "crash")
            .unwrap();
        assert_eq!(fence.land(STORY, 2, "peerA", MAIN, work).unwrap(), Ok(()));
        assert_eq!(
            fence.read_record(STORY).unwrap().unwrap().landed,
            Some(work)
        );
    }

    #[test]
    fn racing_lands_on_one_story_land_exactly_once() {
        for round in 0..10 {
            let (dir, root) = origin();
            let n = 6;
            let barrier = Arc::new(Barrier::new(n));
            let handles: Vec<_> = (1..=n as FenceToken)
                .map(|token| {
                    let path = dir.path().to_path_buf();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        let fence = Fence::open(&path).unwrap();
                        let work = commit(fence.repository(), Some(root), &format!("w{token}"));
                        barrier.wait();
                        let holder = format!("peer{token}");
                        let outcome = fence.land(STORY, token, &holder, MAIN, work).unwrap();
                        (work, outcome)
                    })
                })
                .collect();
            let results: Vec<(Oid, Result<(), Refused>)> =
                handles.into_iter().map(|h| h.join().unwrap()).collect();
            let winners: Vec<Oid> = results
                .iter()
                .filter(|(_, o)| o.is_ok())
                .map(|(w, _)| *w)
                .collect();
            assert_eq!(winners.len(), 1, "round {round}: {results:?}");
            assert_eq!(main_of(dir.path()), winners[0], "round {round}");
            let rec = Fence::open(dir.path()).unwrap().read_record(STORY).unwrap();
            assert_eq!(rec.and_then(|r| r.landed), Some(winners[0]));
        }
    }

    #[test]
    fn bad_story_keys_holders_and_branches_are_rejected() {
        let (dir, root) = origin();
        let fence = Fence::open(dir.path()).unwrap();
        for story in ["", "a/b", "a..b", "a b", "x@{1}", "a\nb"] {
            assert!(
                matches!(
                    fence.record(story, 1, "peerA"),
                    Err(FenceError::BadStory { .. })
                ),
                "{story:?}"
            );
        }
        for holder in ["", "peer A", "peer\nA"] {
            assert!(
                matches!(
                    fence.record(STORY, 1, holder),
                    Err(FenceError::BadHolder { .. })
                ),
                "{holder:?}"
            );
        }
        for branch in ["main", "refs/heads/a..b", "refs/mesh/fence/x"] {
            assert!(
                matches!(
                    fence.land(STORY, 1, "peerA", branch, root),
                    Err(FenceError::BadBranch { .. })
                ),
                "{branch:?}"
            );
        }
    }

    #[test]
    fn landing_a_commit_missing_from_the_origin_is_an_error() {
        let (dir, _) = origin();
        let missing = Oid::from_str("1111111111111111111111111111111111111111").unwrap();
        let err = land(dir.path(), STORY, 1, "peerA", MAIN, missing).unwrap_err();
        assert!(matches!(err, FenceError::MissingCommit { .. }), "{err}");
        assert!(err.to_string().contains("push the commit"), "{err}");
        assert_eq!(fence_oid(dir.path()), None);
    }

    #[test]
    fn a_corrupt_fence_ref_is_reported_not_trusted() {
        let (dir, root) = origin();
        let repo = Repository::open(dir.path()).unwrap();
        let name = fence_ref(STORY).unwrap();
        repo.reference(&name, root, true, "not a blob").unwrap();
        let err = read(dir.path(), STORY).unwrap_err();
        assert!(matches!(err, FenceError::Corrupt { .. }), "{err}");
        let junk = repo.blob(b"token seven\nholder x\n").unwrap();
        repo.reference(&name, junk, true, "junk").unwrap();
        let err = record(dir.path(), STORY, 9, "peerA").unwrap_err();
        assert!(err.to_string().contains("not a number"), "{err}");
    }

    #[test]
    fn a_leftover_lock_file_is_reported_as_busy_naming_the_file() {
        let (dir, _) = origin();
        let lock = dir.path().join("refs/mesh/fence/S-0042@ab12cd.lock");
        std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
        std::fs::write(&lock, b"").unwrap();
        let fence = Fence::open(dir.path())
            .unwrap()
            .with_lock_timeout(Duration::from_millis(50));
        let err = fence.record(STORY, 1, "peerA").unwrap_err();
        assert!(matches!(err, FenceError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("S-0042@ab12cd.lock"), "{err}");
        std::fs::remove_file(&lock).unwrap();
        assert_eq!(fence.record(STORY, 1, "peerA").unwrap(), Ok(()));
    }

    #[test]
    fn fence_records_parse_back_and_ignore_unknown_lines() {
        let rec = FenceRecord {
            token: 12,
            holder: "12D3KooWxyz".into(),
            landed: Some(Oid::from_str("2222222222222222222222222222222222222222").unwrap()),
        };
        assert_eq!(
            FenceRecord::parse(rec.to_blob().as_bytes()),
            Ok(rec.clone())
        );
        let extended = format!("{}future field\n", rec.to_blob());
        assert_eq!(FenceRecord::parse(extended.as_bytes()), Ok(rec));
        assert!(FenceRecord::parse(b"holder x\n").is_err());
        assert!(FenceRecord::parse(b"token 1\n").is_err());
        assert!(FenceRecord::parse(b"round 1\nholder x\n").is_err());
        assert!(FenceRecord::parse(b"claim 1\nholder x\n").is_err());
        assert!(FenceRecord::parse(b"round 4294967296\nclaim 1\nholder x\n").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Fence blobs come from the origin, which anyone with push rights can write:
        /// any content parses or is refused, never a panic; what parses writes back the
        /// same.
        #[test]
        fn fence_blobs_of_any_content_parse_or_fail_cleanly(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            round in proptest::prelude::any::<u32>(),
            claim in proptest::prelude::any::<u64>(),
            writes in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
                0..6,
            ),
        ) {
            if let Ok(rec) = FenceRecord::parse(&bytes) {
                proptest::prop_assert_eq!(FenceRecord::parse(rec.to_blob().as_bytes()), Ok(rec));
            }
            let rec = FenceRecord {
                token: fence::fence_token(round, claim),
                holder: "12D3KooWholder".into(),
                landed: Some(Oid::from_str("2222222222222222222222222222222222222222").unwrap()),
            };
            let blob = rec.to_blob().into_bytes();
            proptest::prop_assert_eq!(FenceRecord::parse(&blob), Ok(rec.clone()));
            let mut mutated = blob.clone();
            for (at, byte) in writes {
                let i = at.index(mutated.len());
                mutated[i] = byte;
            }
            if let Ok(back) = FenceRecord::parse(&mutated) {
                proptest::prop_assert_eq!(FenceRecord::parse(back.to_blob().as_bytes()), Ok(back));
            }
        }
    }

    #[test]
    fn tokens_above_u32_max_round_trip_and_fence_lower_ones() {
        let (dir, _) = origin();
        let big = fence::fence_token(1, u64::MAX - 1);
        assert_eq!(record(dir.path(), STORY, big, "peerB").unwrap(), Ok(()));
        assert_eq!(
            read(dir.path(), STORY).unwrap(),
            Some((big, "peerB".into()))
        );
        // The token the old 32-bit encoding would have wrapped it onto is stale.
        let wrapped = fence::fence_token(1, 0xffff_fffe);
        assert_eq!(
            record(dir.path(), STORY, wrapped, "peerA").unwrap(),
            Err(Refused::StaleToken { recorded: big })
        );
        let next_round = fence::fence_token(2, 1);
        assert_eq!(
            record(dir.path(), STORY, next_round, "peerA").unwrap(),
            Ok(())
        );
    }

    #[test]
    fn a_record_written_by_an_earlier_version_still_refuses_a_lower_token() {
        let (dir, _) = origin();
        let repo = Repository::open(dir.path()).unwrap();
        // What the previous version wrote for (round 2, token 7): one packed u64.
        let old = format!("token {}\nholder peerB\n", (2u64 << 32) | 7);
        let blob = repo.blob(old.as_bytes()).unwrap();
        repo.reference(&fence_ref(STORY).unwrap(), blob, true, "old")
            .unwrap();
        let recorded = fence::fence_token(2, 7);
        assert_eq!(
            read(dir.path(), STORY).unwrap(),
            Some((recorded, "peerB".into()))
        );
        for lower in [fence::fence_token(2, 6), fence::fence_token(1, 1 << 40)] {
            assert_eq!(
                record(dir.path(), STORY, lower, "peerA").unwrap(),
                Err(Refused::StaleToken { recorded }),
                "{lower:#x}"
            );
        }
        assert_eq!(
            record(dir.path(), STORY, fence::fence_token(2, 7), "peerA").unwrap(),
            Err(Refused::TokenTaken {
                token: recorded,
                holder: "peerB".into()
            })
        );
        assert_eq!(
            record(dir.path(), STORY, fence::fence_token(2, 8), "peerA").unwrap(),
            Ok(())
        );
        // Rewritten in the new form, with the old line kept for earlier readers.
        let blob = Repository::open(dir.path())
            .unwrap()
            .find_reference(&fence_ref(STORY).unwrap())
            .unwrap()
            .target()
            .unwrap();
        let repo = Repository::open(dir.path()).unwrap();
        let text = String::from_utf8(repo.find_blob(blob).unwrap().content().to_vec()).unwrap();
        assert!(text.contains("round 2\nclaim 8\n"), "{text}");
        assert!(
            text.contains(&format!("token {}\n", (2u64 << 32) | 8)),
            "{text}"
        );
    }
}
