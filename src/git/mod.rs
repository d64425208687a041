//! The per-node git shell: the node's clone of the shared origin, one worktree per story,
//! commits with `Mesh-*` trailers, and the merge gate that lands a story on main through
//! the fence (docs/DESIGN.md §5 and §8.2).
//!
//! This module does I/O (disk, child processes) and blocks; the node calls it from
//! `tokio::task::spawn_blocking`. It decides nothing about who may work: the claim rules
//! live in `lease`, and the only rule enforced here, "the origin takes one writer per
//! story", is [`crate::fence`]'s. A [`NodeRepo`] holds paths only and opens the
//! repository per call, so it is cheap to clone and can be used from several threads.
//!
//! # Layout
//!
//! ```text
//! <home>/clone/                   bare clone of the origin (the `dir` given to open_or_clone);
//!                                 of a local origin it borrows the objects
//!                                 (objects/info/alternates), of a remote one it fetches
//! <home>/worktrees/<story>/       the worktree of each story in flight, on branch mesh/<story key>
//! <home>/worktree-pool/<wt-id>/   idle worktrees, detached, lent to the next story
//! <home>/clone/worktrees/<wt-id>/ git's worktree metadata, plus mesh-story-key and mesh-base
//!                                 while lent to a story
//! ```
//!
//! Worktrees are recycled: removing a story's worktree moves its directory to the pool,
//! and the next story's worktree is an idle one moved back (its git metadata re-pointed),
//! so a phase checks out only the files that differ from the directory's last use. A
//! full checkout (inode allocation for every file of the project) happens only when the
//! pool is empty, which is at most once per job slot of the node.
//!
//! # Files
//!
//! `repo.rs` (the clone, fetch), `worktree.rs` (story worktrees, the pool, commits),
//! `objects.rs` (object copy and refs at the origin, `main_log`), `gate.rs` (the merge
//! gate); this file holds the public face and what they share.
//!
//! # Refs in the origin
//!
//! - `refs/heads/main`: moved only by the fenced gate ([`NodeRepo::land`]).
//! - `refs/mesh/work/<story key>/<claim>`: a phase's result, pushed by [`NodeRepo::push_work`]
//!   so that the reviewer and the merger (other nodes) can fetch it; dropped by
//!   [`NodeRepo::drop_work_refs`] once the story landed.
//! - `refs/mesh/land/<story key>/<token>`: the squash commit a gate is about to land; it
//!   keeps the objects reachable whether or not the land succeeds (local origins only: a
//!   remote landing is one push that carries its objects).
//! - `refs/mesh/fence/<story key>`: the fence ([`crate::fence`]).
//!
//! # Two kinds of origin
//!
//! A **local** origin (a path or `file://`) is opened directly: objects are pushed by copying them from the clone's object database into the origin's,
//! children before parents (so an object present in the origin always has its whole
//! closure), and then writing the ref under git's ref lock. Nothing is fetched: the clone
//! lists the origin's object directory as an alternate (as `git clone --shared` does), so
//! what any node pushed is readable at once, and "fetching main" reads the origin's ref.
//!
//! A **remote** origin (`ssh://`, scp-like `user@host:path`, `https://`, `git://`) is
//! reached through the `git` binary ([`remote`]): the clone is a real one, fetched
//! incrementally (main and `refs/mesh/*`), work refs are pushed with `git push`, and the
//! gate lands with one atomic push that moves main and the fence ref under a lease each
//! ([`remote::Remote::land`]), so the server itself refuses a stale token or a second
//! landing. No file of the origin is ever opened, so no disk is shared. The same
//! [`NodeRepo`] methods serve both.
//!
//! # The merge gate
//!
//! [`NodeRepo::land`]: fetch main; three-way merge of the change onto main (git's merge
//! base); a conflict goes back to the caller with the conflicting paths; otherwise one
//! squash commit whose only parent is main, checked out detached in a worktree of the pool,
//! tested, pushed, and landed through [`Fence::land`]. When main moved in between, the
//! gate starts over from the fetch, up to `max_tries` times with jittered backoff.
//!
//! Gates at a local origin take turns: each holds `<origin>/mesh-gate.lock` (an advisory
//! `flock`, dropped by the kernel if its holder dies) from its fetch to its land, so a
//! busy mesh forms a queue instead of racing and re-testing (at 8 nodes: 2 tries per
//! landing → 1). The lock is an optimisation only: a gate that cannot take it, or waited
//! past its test timeout plus a minute, goes on without it and the fence still decides.
//! Gates at a remote origin do not queue yet (a turn taken through the mesh is issue 14's
//! next step): they race, and the remote's leases decide.
use crate::core::model::Phase;
use crate::fence::{self, FenceError, Refused};
use git2::{ErrorCode, Oid, Reference, Signature};
use rand::Rng;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod gate;
mod objects;
pub mod remote;
mod repo;
#[cfg(test)]
mod testkit;
mod worktree;

pub use gate::{run_test, Gate, LandRequest, TestRun, TEST_OUTPUT_CAP};
pub use objects::{main_log, read_trailers, LandedCommit};

/// Where phase results are pushed in the origin: `refs/mesh/work/<story key>/<claim>`.
pub const WORK_REF_PREFIX: &str = "refs/mesh/work/";
/// Where the gate pushes the commit it is about to land: `refs/mesh/land/<story key>/<token>`.
pub const LAND_REF_PREFIX: &str = "refs/mesh/land/";
/// The branch prefix of story worktrees: `refs/heads/mesh/<story key>`.
pub const STORY_BRANCH_PREFIX: &str = "refs/heads/mesh/";
/// The name of the origin remote in the node's clone.
pub const REMOTE: &str = "origin";
/// How long a ref write waits for another writer's lock before giving up.
const REF_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// The `Mesh-*` trailers every commit made by a node carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailers {
    /// The story's display id (`S-0042`): `Mesh-Story`.
    pub story: String,
    /// The story's unique key (`S-0042@1a2b3c4d`): `Mesh-Story-Key`.
    pub story_key: String,
    /// The phase that produced the commit: `Mesh-Phase`.
    pub phase: Phase,
    /// The fencing token of the claim the commit was made under: `Mesh-Fence` (a
    /// merge's is its fence token, `core::fence::fence_token`).
    pub fence: crate::core::fence::FenceToken,
    /// The node (peer id) that made the commit: `Mesh-Node`.
    pub node: String,
}

impl Trailers {
    /// The trailer block, one `Key: value` per line, no trailing newline. Line breaks in
    /// values are replaced by spaces so that a value cannot forge another trailer.
    pub fn render(&self) -> String {
        let one_line = |s: &str| s.replace(['\r', '\n'], " ");
        format!(
            "Mesh-Story: {}\nMesh-Story-Key: {}\nMesh-Phase: {}\nMesh-Fence: {}\nMesh-Node: {}",
            one_line(&self.story),
            one_line(&self.story_key),
            self.phase.as_str(),
            self.fence,
            one_line(&self.node),
        )
    }
}

/// A failure of the git shell. Each names what was being done, on what, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{dir} exists but is not a clone of {origin}: {why}; remove it or give the node another directory")]
    NotAClone {
        dir: PathBuf,
        origin: String,
        why: String,
    },
    #[error("cannot clone {origin} into {dir}: {source}; the origin must be a git repository (a local path, a file:// URL, or a remote URL such as ssh://host/repo.git)")]
    Clone {
        origin: String,
        dir: PathBuf,
        source: git2::Error,
    },
    #[error("cannot fetch from {origin}: {source}; check the origin still exists and is readable")]
    Fetch { origin: String, source: git2::Error },
    #[error("the origin {origin} has no branch {branch}; push an initial commit to it")]
    NoMain { origin: String, branch: String },
    #[error("commit {commit} is neither in this clone nor in {origin} (main or refs/mesh/work/*); the node that made it has not pushed it")]
    MissingCommit { commit: Oid, origin: String },
    #[error("story key {key:?} cannot be used: {why}")]
    BadStoryKey { key: String, why: String },
    #[error("{what} {value:?} cannot name a ref: {why}")]
    BadRefName {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{path} is not a story worktree of this clone; call prepare_worktree first")]
    NotAWorktree { path: PathBuf },
    #[error(
        "the test command is empty; configure an argv such as [\"cargo\", \"test\"], or no test"
    )]
    EmptyTest,
    #[error("cannot start the test command {program:?} in {dir}: {source}; check it is installed and on PATH")]
    TestSpawn {
        program: String,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the test command failed to run in {dir}: {source}")]
    TestRun {
        dir: PathBuf,
        source: crate::exec::process::ProcessError,
    },
    #[error("I/O error while trying to {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("git error while trying to {op} in {path}: {source}")]
    Git {
        op: &'static str,
        path: PathBuf,
        source: git2::Error,
    },
    #[error("{reference} in {path} stayed locked for {waited_ms} ms; another writer holds it, or one crashed: if no mesh-agent or git process is writing, delete {path}/{reference}.lock")]
    Busy {
        reference: String,
        path: PathBuf,
        waited_ms: u128,
    },
    #[error(transparent)]
    Fence(#[from] FenceError),
    /// The fence refused the caller: its claim is stale or the story already landed.
    #[error("{0}")]
    Fenced(Refused),
    #[error("main moved under us on each of {tries} tries (last seen at {main}); the origin is busy, try again later")]
    Contended { tries: u32, main: Oid },
    #[error("cancelled")]
    Cancelled,
    /// Talking to a remote origin failed (the message says what to do; no secret in it).
    #[error(transparent)]
    Remote(#[from] remote::RemoteError),
}

/// Shorthand for a git2 error mapper naming the operation and the repository.
fn git_err<'a>(op: &'static str, path: &'a Path) -> impl Fn(git2::Error) -> GitError + 'a {
    move |source| GitError::Git {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> GitError + 'a {
    move |source| GitError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The names derived from a story key.
struct StoryNames {
    key: String,
    /// Directory and git worktree name.
    dir: String,
    /// `refs/heads/mesh/<key>`.
    branch: String,
}

/// Checks a story key (it must also be valid for the fence) and derives its names.
fn story_names(key: &str) -> Result<StoryNames, GitError> {
    fence::fence_ref(key).map_err(|e| GitError::BadStoryKey {
        key: key.to_string(),
        why: match e {
            FenceError::BadStory { why, .. } => why.to_string(),
            other => other.to_string(),
        },
    })?;
    let branch = format!("{STORY_BRANCH_PREFIX}{key}");
    if !Reference::is_valid_name(&branch) {
        return Err(GitError::BadStoryKey {
            key: key.to_string(),
            why: format!("{branch} is not a valid branch name"),
        });
    }
    Ok(StoryNames {
        key: key.to_string(),
        dir: safe_dir_name(key),
        branch,
    })
}

/// A directory name for a story key: the key itself when it only has `[A-Za-z0-9._@-]`,
/// otherwise the other characters become `_` and a hash of the key is appended, so two
/// keys never share a directory.
pub fn safe_dir_name(key: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    if !key.is_empty() && key.chars().all(safe) && !key.starts_with('.') {
        return key.to_string();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut name: String = key
        .chars()
        .take(64)
        .map(|c| if safe(c) { c } else { '_' })
        .collect();
    if name.starts_with('.') {
        name.replace_range(0..1, "_");
    }
    format!("{name}-{}", hex::encode(&digest[..4]))
}

/// A ref name component (a claim id): non-empty, no `/`, valid in a ref.
fn check_component(what: &'static str, value: &str) -> Result<(), GitError> {
    let bad = |why| GitError::BadRefName {
        what,
        value: value.to_string(),
        why,
    };
    if value.is_empty() {
        return Err(bad("it is empty"));
    }
    if value.len() > fence::MAX_NAME_BYTES {
        return Err(bad("it is longer than 256 bytes"));
    }
    if value.contains('/') {
        return Err(bad("it contains `/`"));
    }
    if !Reference::is_valid_name(&format!("refs/x/{value}")) {
        return Err(bad(
            "git refuses it in a ref name (no spaces, `..`, `~^:?*[\\`, `@{` or control characters)",
        ));
    }
    Ok(())
}

/// Retries `f` while it fails because a ref is locked by someone else.
fn retry_locked<T>(
    reference: &str,
    path: &Path,
    mut f: impl FnMut() -> Result<T, git2::Error>,
    map: impl Fn(git2::Error) -> GitError,
) -> Result<T, GitError> {
    let started = Instant::now();
    let mut backoff_ms = 1u64;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if e.code() == ErrorCode::Locked => {
                if started.elapsed() >= REF_LOCK_TIMEOUT {
                    return Err(GitError::Busy {
                        reference: reference.to_string(),
                        path: path.to_path_buf(),
                        waited_ms: started.elapsed().as_millis(),
                    });
                }
                let ms = rand::thread_rng().gen_range(backoff_ms..=backoff_ms * 2);
                std::thread::sleep(Duration::from_millis(ms));
                backoff_ms = (backoff_ms * 2).min(50);
            }
            Err(e) => return Err(map(e)),
        }
    }
}

/// The signature of commits made by mesh-agent (who made it is in `Mesh-Node`).
fn signature(path: &Path) -> Result<Signature<'static>, GitError> {
    Signature::now("mesh-agent", "mesh-agent@localhost").map_err(git_err("make a signature", path))
}

/// `message` (trimmed) followed by a blank line and the trailer block.
fn with_trailers(message: &str, t: &Trailers) -> String {
    let message = message.trim_end();
    if message.is_empty() {
        format!("{}\n", t.render())
    } else {
        format!("{message}\n\n{}\n", t.render())
    }
}

/// Where the origin is, and so how it is reached.
#[derive(Debug, Clone)]
enum Origin {
    /// A repository on this machine (canonical path): opened directly.
    Local(PathBuf),
    /// Anywhere else: through the `git` binary.
    Remote(std::sync::Arc<remote::Remote>),
}

/// The node's clone of the shared origin and its story worktrees.
#[derive(Debug, Clone)]
pub struct NodeRepo {
    /// The bare clone (canonical path).
    dir: PathBuf,
    /// The origin, and the URL given for it (without any password).
    origin: Origin,
    origin_url: String,
    /// Where story worktrees live: `<dir>/../worktrees`.
    worktrees: PathBuf,
    /// Idle worktrees waiting to be lent to the next story: `<dir>/../worktree-pool`.
    pool: PathBuf,
    /// The branch stories land on in the origin, and its remote-tracking ref here.
    branch: String,
    tracking: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::testkit::*;

    #[test]
    fn odd_story_keys_get_safe_distinct_directories() {
        assert_eq!(safe_dir_name(KEY_A), KEY_A);
        let odd = safe_dir_name("S-1@x'y");
        assert!(odd.starts_with("S-1@x_y-"), "{odd}");
        assert_ne!(odd, safe_dir_name("S-1@x\"y"));
        let w = world();
        let node = w.node("a");
        let wt = node.prepare_worktree("S-1@x'y", w.root).unwrap();
        assert_eq!(node.leftover_worktrees().unwrap(), vec!["S-1@x'y"]);
        assert!(wt
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("S-1@x_y-"));
        for bad in ["", "a/b", "a..b", "x@{1}", "a b"] {
            assert!(
                matches!(
                    node.prepare_worktree(bad, w.root),
                    Err(GitError::BadStoryKey { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
