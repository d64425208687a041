//! The per-node git shell: the node's clone of the shared origin, one worktree per story,
//! commits with `Mesh-*` trailers, and the merge gate that lands a story on main through
//! the fence (DESIGN.md §5 and §8).
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
//!                                 it borrows the origin's objects (objects/info/alternates)
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
//! # Refs in the origin
//!
//! - `refs/heads/main`: moved only by the fenced gate ([`NodeRepo::land`]).
//! - `refs/mesh/work/<story key>/<claim>`: a phase's result, pushed by [`NodeRepo::push_work`]
//!   so that the reviewer and the merger (other nodes) can fetch it.
//! - `refs/mesh/land/<story key>/<token>`: the squash commit a gate is about to land; it
//!   keeps the objects reachable whether or not the land succeeds.
//! - `refs/mesh/fence/<story key>`: the fence ([`crate::fence`]).
//!
//! # Pushing
//!
//! The origin is a path on this machine (or a shared filesystem), as the fence requires.
//! Objects are pushed by copying them from the clone's object database into the origin's,
//! children before parents (so an object present in the origin always has its whole
//! closure), and then writing the ref under git's ref lock. Nothing is fetched: the clone
//! lists the origin's object directory as an alternate (as `git clone --shared` does), so
//! what any node pushed is readable at once, and "fetching main" reads the origin's ref.
//!
//! # The merge gate
//!
//! [`NodeRepo::land`]: fetch main; three-way merge of the change onto main (git's merge
//! base); a conflict goes back to the caller with the conflicting paths; otherwise one
//! squash commit whose only parent is main, checked out detached in a worktree of the pool,
//! tested, pushed, and landed through [`Fence::land`]. When main moved in between, the
//! gate starts over from the fetch, up to `max_tries` times with jittered backoff.
//!
//! Gates at one origin take turns: each holds `<origin>/mesh-gate.lock` (an advisory
//! `flock`, dropped by the kernel if its holder dies) from its fetch to its land, so a
//! busy mesh forms a queue instead of racing and re-testing (at 8 nodes: 2 tries per
//! landing → 1). The lock is an optimisation only: a gate that cannot take it, or waited
//! past its test timeout plus a minute, goes on without it and the fence still decides.

use crate::core::model::Phase;
use crate::fence::{self, Fence, FenceError, FenceRecord, Refused};
use git2::build::{CheckoutBuilder, RepoBuilder};
use git2::{
    AutotagOption, ErrorCode, FetchOptions, IndexAddOption, ObjectType, Oid, Reference, Repository,
    Signature, WorktreeAddOptions,
};
use rand::Rng;
use std::collections::{BTreeSet, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where phase results are pushed in the origin: `refs/mesh/work/<story key>/<claim>`.
pub const WORK_REF_PREFIX: &str = "refs/mesh/work/";
/// Where the gate pushes the commit it is about to land: `refs/mesh/land/<story key>/<token>`.
pub const LAND_REF_PREFIX: &str = "refs/mesh/land/";
/// The branch prefix of story worktrees: `refs/heads/mesh/<story key>`.
pub const STORY_BRANCH_PREFIX: &str = "refs/heads/mesh/";
/// The name of the origin remote in the node's clone.
pub const REMOTE: &str = "origin";
/// How much of a test command's output (stdout and stderr interleaved) is kept: the tail.
pub const TEST_OUTPUT_CAP: usize = 16 * 1024;
/// How many of main's latest first-parent commits the gate searches for its own squash
/// commit when a land was interrupted after main moved.
const RECOVERY_SEARCH_DEPTH: usize = 1000;
/// Shortest and longest pause between two tries of the gate.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(2000);
/// The origin's gate lock file, polled every [`GATE_LOCK_POLL`]; a gate waits for it at
/// most its test timeout plus [`GATE_LOCK_SLACK`].
const GATE_LOCK_FILE: &str = "mesh-gate.lock";
const GATE_LOCK_POLL: Duration = Duration::from_millis(5);
const GATE_LOCK_SLACK: Duration = Duration::from_secs(60);
/// How long a ref write waits for another writer's lock before giving up.
const REF_LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Files this module keeps in git's metadata directory of each story worktree.
const KEY_FILE: &str = "mesh-story-key";
const BASE_FILE: &str = "mesh-base";

/// The `Mesh-*` trailers every commit made by a node carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailers {
    /// The story's display id (`S-0042`): `Mesh-Story`.
    pub story: String,
    /// The story's unique key (`S-0042@1a2b3c4d`): `Mesh-Story-Key`.
    pub story_key: String,
    /// The phase that produced the commit: `Mesh-Phase`.
    pub phase: Phase,
    /// The fencing token of the claim the commit was made under: `Mesh-Fence`.
    pub fence: u64,
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

/// A commit on the origin's main, as [`main_log`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandedCommit {
    pub oid: Oid,
    /// The first line of the message.
    pub subject: String,
    /// The trailers of the message's last paragraph, in order.
    pub trailers: Vec<(String, String)>,
}

impl LandedCommit {
    /// The value of the first trailer named `key` (case-insensitive), if any.
    pub fn trailer(&self, key: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// What the merge gate should land.
#[derive(Debug, Clone)]
pub struct LandRequest {
    /// The story's key; also names its fence and its worktree.
    pub story_key: String,
    /// The reviewed change: a commit whose history forks from some earlier main.
    pub change: Oid,
    /// The fencing token of the caller's claim.
    pub token: u64,
    /// The caller's peer id, as recorded at the fence.
    pub holder: String,
    /// The squash commit's message (subject, blank line, body); trailers are appended.
    pub message: String,
    pub trailers: Trailers,
    /// The test command (argv), run in the worktree with the squash commit checked out.
    /// `None` lands without testing.
    pub test: Option<Vec<String>>,
    /// How long the test command may run before it is killed and counted as failed.
    pub test_timeout: Duration,
    /// How many times to fetch and try again when main moved under us (at least 1).
    pub max_tries: u32,
}

/// How the merge gate ended, when it did its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Main now is `commit`, the squash commit of the change; `tries` counts the fetches.
    Landed { commit: Oid, tries: u32 },
    /// The change does not merge onto `main`; `files` are the conflicting paths, sorted.
    Conflict { files: Vec<String>, main: Oid },
    /// The test command failed on `commit` (not landed). `exit_code` is `None` when the
    /// command was killed (by a signal or for running past its timeout).
    TestsFailed {
        output_tail: String,
        commit: Oid,
        exit_code: Option<i32>,
        timed_out: bool,
    },
    /// Main already contains the change: the merge changes nothing.
    Empty { main: Oid },
    /// The story already landed as `commit` with this very token and holder (a repeated
    /// call, say after a crash): nothing was done.
    AlreadyLanded { commit: Oid },
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
    #[error("cannot clone {origin} into {dir}: {source}; the origin must be a git repository given as a local path or file:// URL")]
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

/// The origin as a filesystem path: `file://` stripped, made absolute.
fn origin_to_path(origin: &str) -> Result<PathBuf, GitError> {
    let raw = origin.strip_prefix("file://").unwrap_or(origin);
    let path = Path::new(raw);
    std::fs::canonicalize(path).map_err(|source| GitError::Io {
        op: "find the origin",
        path: path.to_path_buf(),
        source,
    })
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

/// The trailers of a commit message: the `Key: value` lines of its last paragraph, in
/// order. Keys are letters, digits and `-`; lines of that paragraph that are not trailers
/// are skipped. A message of one paragraph (a subject alone) has no trailers.
pub fn read_trailers(commit_message: &str) -> Vec<(String, String)> {
    let text = commit_message.trim_end();
    let paragraphs: Vec<&str> = text
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .collect();
    if paragraphs.len() < 2 {
        return Vec::new();
    }
    let Some(last) = paragraphs.last() else {
        return Vec::new();
    };
    last.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            let key_ok =
                !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            key_ok.then(|| (key.to_string(), value.trim().to_string()))
        })
        .collect()
}

/// The first-parent history of the origin's main, newest first: each commit's id,
/// subject and trailers. Tests use it to check that each story landed exactly once.
pub fn main_log(origin: &Path) -> Result<Vec<LandedCommit>, GitError> {
    let repo = Repository::open(origin).map_err(git_err("open the origin", origin))?;
    let main = repo
        .refname_to_id(fence::DEFAULT_BRANCH_REF)
        .map_err(git_err("read main", origin))?;
    first_parent_log(&repo, origin, main, usize::MAX)
}

fn first_parent_log(
    repo: &Repository,
    path: &Path,
    from: Oid,
    limit: usize,
) -> Result<Vec<LandedCommit>, GitError> {
    let mut walk = repo.revwalk().map_err(git_err("walk history", path))?;
    walk.push(from).map_err(git_err("walk history", path))?;
    walk.simplify_first_parent()
        .map_err(git_err("walk history", path))?;
    let mut out = Vec::new();
    for oid in walk.take(limit) {
        let oid = oid.map_err(git_err("walk history", path))?;
        let commit = repo
            .find_commit(oid)
            .map_err(git_err("read a commit", path))?;
        let message = String::from_utf8_lossy(commit.message_bytes()).into_owned();
        out.push(LandedCommit {
            oid,
            subject: message.lines().next().unwrap_or("").to_string(),
            trailers: read_trailers(&message),
        });
    }
    Ok(out)
}

/// Makes the clone borrow the origin's object store (git's `objects/info/alternates`, as
/// `git clone --shared` does): objects pushed to the origin by any node are readable in
/// this clone at once, without a fetch. Safe because the origin is a local path the mesh
/// owns and the gate only ever adds to it; do not prune unreachable objects in the origin
/// (`git gc --prune=now`) while nodes run. Idempotent.
fn share_objects(clone: &Repository, origin: &Path) -> Result<(), GitError> {
    let origin_repo = Repository::open(origin).map_err(git_err("open the origin", origin))?;
    let objects = std::fs::canonicalize(origin_repo.path().join("objects"))
        .map_err(io_err("resolve", origin))?;
    let info = clone.path().join("objects").join("info");
    let file = info.join("alternates");
    let want = format!("{}\n", objects.display());
    if std::fs::read_to_string(&file).is_ok_and(|have| have == want) {
        return Ok(());
    }
    std::fs::create_dir_all(&info).map_err(io_err("create", &info))?;
    std::fs::write(&file, want).map_err(io_err("write", &file))
}

/// The per-clone lock under which worktrees move between the pool and stories.
fn pool_lock(dir: &Path) -> std::sync::Arc<std::sync::Mutex<()>> {
    clone_lock(&dir.join("worktree-pool"))
}

/// The per-clone lock that serialises tracking-ref updates within this process.
fn clone_lock(dir: &Path) -> std::sync::Arc<std::sync::Mutex<()>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let map = LOCKS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    m.entry(dir.to_path_buf()).or_default().clone()
}

/// The node's clone of the shared origin and its story worktrees.
#[derive(Debug, Clone)]
pub struct NodeRepo {
    /// The bare clone (canonical path).
    dir: PathBuf,
    /// The origin (canonical path) and the URL given for it.
    origin: PathBuf,
    origin_url: String,
    /// Where story worktrees live: `<dir>/../worktrees`.
    worktrees: PathBuf,
    /// Idle worktrees waiting to be lent to the next story: `<dir>/../worktree-pool`.
    pool: PathBuf,
    /// The branch stories land on in the origin, and its remote-tracking ref here.
    branch: String,
    tracking: String,
}

impl NodeRepo {
    /// Opens the node's clone at `dir`, cloning `origin` (a local path or `file://` URL)
    /// into it first if `dir` does not exist or is empty. The clone is bare; story
    /// worktrees go to `<dir>/../worktrees`. A `dir` that holds anything else than a
    /// clone of that origin is an error ([`GitError::NotAClone`]); nothing is touched.
    pub fn open_or_clone(origin: &str, dir: &Path) -> Result<NodeRepo, GitError> {
        let origin_path = origin_to_path(origin)?;
        let empty = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(io_err("read", dir)(e)),
        };
        if empty {
            std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
            let url = origin_path.to_string_lossy().into_owned();
            let mut fetch = FetchOptions::new();
            fetch.download_tags(AutotagOption::None);
            let cloned = RepoBuilder::new()
                .bare(true)
                .fetch_options(fetch)
                .clone(&url, dir);
            if let Err(source) = cloned {
                // The directory was empty or absent: leave nothing half-cloned behind.
                let _ = std::fs::remove_dir_all(dir);
                return Err(GitError::Clone {
                    origin: origin.to_string(),
                    dir: dir.to_path_buf(),
                    source,
                });
            }
        }
        let not_a_clone = |why: String| GitError::NotAClone {
            dir: dir.to_path_buf(),
            origin: origin.to_string(),
            why,
        };
        let repo = Repository::open(dir)
            .map_err(|e| not_a_clone(format!("it is not a git repository ({})", e.message())))?;
        let remote = repo
            .find_remote(REMOTE)
            .map_err(|_| not_a_clone(format!("it has no `{REMOTE}` remote")))?;
        let url = remote
            .url()
            .map_err(|_| not_a_clone("its origin URL is not UTF-8".to_string()))?
            .to_string();
        match origin_to_path(&url) {
            Ok(p) if p == origin_path => {}
            _ => return Err(not_a_clone(format!("its origin is {url}"))),
        }
        let dir = std::fs::canonicalize(dir).map_err(io_err("resolve", dir))?;
        let home = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
        let branch = fence::DEFAULT_BRANCH_REF.to_string();
        let tracking = tracking_ref(&branch);
        share_objects(&repo, &origin_path)?;
        Ok(NodeRepo {
            worktrees: home.join("worktrees"),
            pool: home.join("worktree-pool"),
            dir,
            origin: origin_path,
            origin_url: url,
            branch,
            tracking,
        })
    }

    /// Lands on `branch` (a full ref such as `refs/heads/master`) instead of
    /// `refs/heads/main`.
    pub fn with_branch(mut self, branch: &str) -> Result<NodeRepo, GitError> {
        let Some(short) = branch.strip_prefix("refs/heads/") else {
            return Err(GitError::BadRefName {
                what: "branch",
                value: branch.to_string(),
                why: "it must be a full branch ref, such as refs/heads/main",
            });
        };
        if short.is_empty() || !Reference::is_valid_name(branch) {
            return Err(GitError::BadRefName {
                what: "branch",
                value: branch.to_string(),
                why: "git refuses it as a branch name",
            });
        }
        self.tracking = tracking_ref(branch);
        self.branch = branch.to_string();
        Ok(self)
    }

    /// The origin as a path, for [`Fence::open`] and [`main_log`].
    pub fn origin_path(&self) -> &Path {
        &self.origin
    }

    /// The node's clone.
    pub fn clone_dir(&self) -> &Path {
        &self.dir
    }

    /// Where the worktree of `story_key` lives (whether or not it exists).
    pub fn worktree_path(&self, story_key: &str) -> Result<PathBuf, GitError> {
        Ok(self.worktrees.join(story_names(story_key)?.dir))
    }

    fn open(&self) -> Result<Repository, GitError> {
        Repository::open(&self.dir).map_err(git_err("open the clone", &self.dir))
    }

    /// Fetches the origin's main and `refs/mesh/work/*` and returns main's commit.
    pub fn fetch_main(&self) -> Result<Oid, GitError> {
        let repo = self.open()?;
        self.fetch(&repo)?;
        self.tracked_main(&repo)
    }

    fn tracked_main(&self, repo: &Repository) -> Result<Oid, GitError> {
        repo.refname_to_id(&self.tracking).map_err(|e| {
            if e.code() == ErrorCode::NotFound {
                GitError::NoMain {
                    origin: self.origin_url.clone(),
                    branch: self.branch.clone(),
                }
            } else {
                git_err("read main", &self.dir)(e)
            }
        })
    }

    /// Brings the clone's idea of main up to the origin's. The clone borrows the origin's
    /// object store ([`share_objects`]), so every object the origin has is already
    /// readable here and fetching is one ref read and, when main moved, one ref write:
    /// no pack is negotiated, built or indexed (libgit2's local transport did all three
    /// on every phase boundary, an eighth of an 8-node mesh's CPU).
    fn fetch(&self, repo: &Repository) -> Result<(), GitError> {
        let fetch_err = |source| GitError::Fetch {
            origin: self.origin_url.clone(),
            source,
        };
        let origin = Repository::open(&self.origin).map_err(fetch_err)?;
        let main = match origin.refname_to_id(&self.branch) {
            Ok(oid) => oid,
            // No main in the origin: tracked_main says so.
            Err(e) if e.code() == ErrorCode::NotFound => return Ok(()),
            Err(e) => return Err(fetch_err(e)),
        };
        if repo.refname_to_id(&self.tracking).ok() == Some(main) {
            return Ok(());
        }
        // Two jobs of one node may both move the tracking ref: one at a time.
        let lock = clone_lock(&self.dir);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        retry_locked(
            &self.tracking,
            &self.dir,
            || repo.reference(&self.tracking, main, true, "mesh-agent: fetch"),
            fetch_err,
        )
        .map(|_| ())
    }

    /// Makes sure `oid` (say, a commit named in another node's handoff) is in the clone,
    /// fetching main and `refs/mesh/work/*` if it is not.
    pub fn ensure_commit(&self, oid: Oid) -> Result<(), GitError> {
        let repo = self.open()?;
        if repo.find_commit(oid).is_ok() {
            return Ok(());
        }
        self.fetch(&repo)?;
        // A fresh handle: the fetch wrote a new pack the old one may not have seen.
        let repo = self.open()?;
        repo.find_commit(oid)
            .map(|_| ())
            .map_err(|_| GitError::MissingCommit {
                commit: oid,
                origin: self.origin_url.clone(),
            })
    }

    /// Makes the worktree of `story_key` at `<clone>/../worktrees/<key>`, on branch
    /// `mesh/<story_key>` pointing at `base`, or resets the story's existing one to that
    /// state: tracked files as in `base`, untracked files removed (ignored files, such as
    /// build output, are kept). The directory is an idle worktree of the pool when there
    /// is one (see [`NodeRepo::remove_worktree`]), so only the files that differ from its
    /// last use are written; a new worktree (a full checkout) is made only when the pool
    /// is empty. A worktree left half-made by a crash is removed and made again. `base`
    /// must be in the clone (see [`NodeRepo::ensure_commit`]).
    pub fn prepare_worktree(&self, story_key: &str, base: Oid) -> Result<PathBuf, GitError> {
        let names = story_names(story_key)?;
        let repo = self.open()?;
        repo.find_commit(base)
            .map_err(|_| GitError::MissingCommit {
                commit: base,
                origin: self.origin_url.clone(),
            })?;
        let (path, name) = self.lend(&repo, &names, base)?;
        repo.reference(&names.branch, base, true, "mesh-agent: prepare worktree")
            .map_err(git_err("move the story branch", &self.dir))?;
        let wt = Repository::open(&path).map_err(git_err("open the worktree", &path))?;
        wt.set_head(&names.branch)
            .map_err(git_err("check out the story branch", &path))?;
        force_checkout(&wt, &path, base)?;
        self.write_meta(&repo, &name, &names, Some(base))?;
        Ok(path)
    }

    /// Git's metadata directory of the worktree named `name`.
    fn admin_dir(&self, repo: &Repository, name: &str) -> PathBuf {
        repo.path().join("worktrees").join(name)
    }

    /// The git name of the worktree at `path` when `path` is a sound worktree of this
    /// clone (its metadata and its directory agree).
    fn worktree_at(&self, repo: &Repository, path: &Path) -> Option<String> {
        let wt_repo = Repository::open(path).ok()?;
        let admin = std::fs::canonicalize(wt_repo.path()).ok()?;
        let admins = std::fs::canonicalize(repo.path().join("worktrees")).ok()?;
        if admin.parent() != Some(admins.as_path()) {
            return None;
        }
        let name = admin.file_name()?.to_str()?.to_string();
        let wt = repo.find_worktree(&name).ok()?;
        wt.validate().ok()?;
        let same_path = match (
            std::fs::canonicalize(wt.path()),
            std::fs::canonicalize(path),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        same_path.then_some(name)
    }

    /// Gives the story a worktree directory at `<worktrees>/<dir>` and returns it with
    /// its git name: the story's own if it has a sound one, else an idle one moved in
    /// from the pool, else a new one on the story branch at `base`. Leftovers of the
    /// story (a broken directory, metadata without a directory) are removed first.
    fn lend(
        &self,
        repo: &Repository,
        names: &StoryNames,
        base: Oid,
    ) -> Result<(PathBuf, String), GitError> {
        let path = self.worktrees.join(&names.dir);
        if let Some(name) = self.worktree_at(repo, &path) {
            return Ok((path, name));
        }
        let lock = pool_lock(&self.dir);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.discard_story(repo, names)?;
        std::fs::create_dir_all(&self.worktrees).map_err(io_err("create", &self.worktrees))?;
        let idle = match std::fs::read_dir(&self.pool) {
            Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("list", &self.pool)(e)),
        };
        for from in idle {
            let Some(name) = self.worktree_at(repo, &from) else {
                // Broken (a crash mid-move, or hands): drop it and its metadata.
                remove_dir_if_present(&from)?;
                if let Some(n) = from.file_name().and_then(|n| n.to_str()) {
                    remove_dir_if_present(&self.admin_dir(repo, n))?;
                }
                continue;
            };
            std::fs::rename(&from, &path).map_err(io_err("move a pooled worktree to", &path))?;
            self.point_admin(repo, &name, &path)?;
            return Ok((path, name));
        }
        let name = format!("wt-{:016x}", rand::random::<u64>());
        let branch = repo
            .reference(&names.branch, base, true, "mesh-agent: prepare worktree")
            .map_err(git_err("create the story branch", &self.dir))?;
        let mut opts = WorktreeAddOptions::new();
        opts.reference(Some(&branch));
        repo.worktree(&name, &path, Some(&opts))
            .map_err(git_err("add a worktree", &self.dir))?;
        Ok((path, name))
    }

    /// Points the metadata of worktree `name` at its directory's new place `path`.
    fn point_admin(&self, repo: &Repository, name: &str, path: &Path) -> Result<(), GitError> {
        let gitdir = self.admin_dir(repo, name).join("gitdir");
        let target = std::fs::canonicalize(path).map_err(io_err("resolve", path))?;
        std::fs::write(&gitdir, format!("{}\n", target.join(".git").display()))
            .map_err(io_err("write", &gitdir))
    }

    /// Records which story worktree `name` is lent to (and its base): what
    /// [`NodeRepo::leftover_worktrees`] finds after a crash.
    fn write_meta(
        &self,
        repo: &Repository,
        name: &str,
        names: &StoryNames,
        base: Option<Oid>,
    ) -> Result<(), GitError> {
        let admin = self.admin_dir(repo, name);
        let key_file = admin.join(KEY_FILE);
        std::fs::write(&key_file, &names.key).map_err(io_err("write", &key_file))?;
        let base_file = admin.join(BASE_FILE);
        match base {
            Some(base) => {
                std::fs::write(&base_file, base.to_string()).map_err(io_err("write", &base_file))
            }
            None => remove_file_if_present(&base_file),
        }
    }

    /// Stages everything in `worktree` (new, modified and deleted files; `.gitignore`
    /// respected) and commits it on the worktree's branch with `subject`, `body` and the
    /// trailers. Returns the new HEAD, or `None` when nothing changed since the worktree
    /// was prepared. Commits the executor made itself stay: with nothing left to stage,
    /// their HEAD is returned.
    pub fn commit_all(
        &self,
        worktree: &Path,
        subject: &str,
        body: &str,
        t: &Trailers,
    ) -> Result<Option<Oid>, GitError> {
        let wt = Repository::open(worktree).map_err(|_| GitError::NotAWorktree {
            path: worktree.to_path_buf(),
        })?;
        if !wt.is_worktree() || wt.is_bare() {
            return Err(GitError::NotAWorktree {
                path: worktree.to_path_buf(),
            });
        }
        let err = |op| git_err(op, worktree);
        let mut index = wt.index().map_err(err("read the index"))?;
        index
            .add_all(["*"], IndexAddOption::DEFAULT, None)
            .map_err(err("stage new and changed files"))?;
        index
            .update_all(["*"], None)
            .map_err(err("stage deleted files"))?;
        index.write().map_err(err("write the index"))?;
        let tree_id = index.write_tree().map_err(err("write the tree"))?;
        let head = wt
            .head()
            .and_then(|h| h.peel_to_commit())
            .map_err(err("read HEAD"))?;
        if tree_id == head.tree_id() {
            let base_file = wt.path().join(BASE_FILE);
            let base = std::fs::read_to_string(&base_file)
                .ok()
                .and_then(|s| Oid::from_str(s.trim()).ok());
            return Ok(match base {
                Some(base) if base != head.id() => Some(head.id()),
                _ => None,
            });
        }
        let tree = wt.find_tree(tree_id).map_err(err("read the tree"))?;
        let mut message = subject.trim().to_string();
        if !body.trim().is_empty() {
            message.push_str("\n\n");
            message.push_str(body.trim());
        }
        let sig = signature(worktree)?;
        let oid = wt
            .commit(
                Some("HEAD"),
                &sig,
                &sig,
                &with_trailers(&message, t),
                &tree,
                &[&head],
            )
            .map_err(err("commit"))?;
        Ok(Some(oid))
    }

    /// Pushes `oid` to the origin as `refs/mesh/work/<story_key>/<claim>`, so that other
    /// nodes can fetch it for review and merge. Overwrites an earlier push of that claim.
    pub fn push_work(&self, story_key: &str, claim: &str, oid: Oid) -> Result<(), GitError> {
        let names = story_names(story_key)?;
        check_component("claim id", claim)?;
        let name = format!("{WORK_REF_PREFIX}{}/{claim}", names.key);
        self.push(oid, &name)
    }

    /// Copies `oid` and everything it reaches that the origin lacks into the origin, then
    /// points `ref_name` there.
    fn push(&self, oid: Oid, ref_name: &str) -> Result<(), GitError> {
        let local = self.open()?;
        let origin =
            Repository::open(&self.origin).map_err(git_err("open the origin", &self.origin))?;
        copy_objects(&local, &self.dir, &origin, &self.origin, oid)?;
        retry_locked(
            ref_name,
            &self.origin,
            || origin.reference(ref_name, oid, true, "mesh-agent: push"),
            git_err("write a ref", &self.origin),
        )?;
        Ok(())
    }

    /// Removes the worktree of `story_key` from `<clone>/../worktrees`: its directory
    /// goes back to the pool (HEAD detached, no story, files left as they are until the
    /// next story's checkout), its branch is deleted. What is left of a broken one is
    /// deleted. Removing a worktree that is not there succeeds.
    pub fn remove_worktree(&self, story_key: &str) -> Result<(), GitError> {
        let names = story_names(story_key)?;
        let repo = self.open()?;
        let path = self.worktrees.join(&names.dir);
        let lock = pool_lock(&self.dir);
        let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = self.worktree_at(&repo, &path) {
            let wt = Repository::open(&path).map_err(git_err("open the worktree", &path))?;
            if let Some(head) = wt.head().ok().and_then(|h| h.target()) {
                wt.set_head_detached(head)
                    .map_err(git_err("detach HEAD", &path))?;
            }
            let admin = self.admin_dir(&repo, &name);
            remove_file_if_present(&admin.join(KEY_FILE))?;
            remove_file_if_present(&admin.join(BASE_FILE))?;
            std::fs::create_dir_all(&self.pool).map_err(io_err("create", &self.pool))?;
            let idle = self.pool.join(&name);
            remove_dir_if_present(&idle)?;
            std::fs::rename(&path, &idle).map_err(io_err("move a worktree to", &idle))?;
            self.point_admin(&repo, &name, &idle)?;
        }
        self.discard_story(&repo, &names)
    }

    /// Deletes whatever of the story's worktree is not a sound worktree in its place: a
    /// directory git does not know, metadata lent to the story whose directory is gone,
    /// and, unless the story has a sound worktree, its branch. Called with the pool lock
    /// held.
    fn discard_story(&self, repo: &Repository, names: &StoryNames) -> Result<(), GitError> {
        let path = self.worktrees.join(&names.dir);
        let sound = self.worktree_at(repo, &path);
        if sound.is_none() {
            remove_dir_if_present(&path)?;
        }
        for (name, key) in self.lent(repo)? {
            if key == names.key && sound.as_ref() != Some(&name) {
                remove_dir_if_present(&self.admin_dir(repo, &name))?;
            }
        }
        if sound.is_some() {
            return Ok(());
        }
        match repo.find_reference(&names.branch) {
            Ok(mut r) => retry_locked(
                &names.branch,
                &self.dir,
                || r.delete(),
                git_err("delete the story branch", &self.dir),
            ),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(git_err("read the story branch", &self.dir)(e)),
        }
    }

    /// The worktrees lent to a story, by git name, with the story key they record.
    fn lent(&self, repo: &Repository) -> Result<Vec<(String, String)>, GitError> {
        let names = repo
            .worktrees()
            .map_err(git_err("list worktrees", &self.dir))?;
        let mut out = Vec::new();
        // Names that are not UTF-8 were not made by us.
        for name in names.iter().flatten().flatten() {
            let key_file = self.admin_dir(repo, name).join(KEY_FILE);
            if let Ok(key) = std::fs::read_to_string(key_file) {
                out.push((name.to_string(), key.trim().to_string()));
            }
        }
        Ok(out)
    }

    /// The story keys of the worktrees on disk or lent in git's metadata, sorted: after a
    /// crash, the node removes those it holds no claim for. A directory whose key is
    /// unknown (no metadata) is reported by its name, which
    /// [`NodeRepo::remove_worktree`] accepts. Idle worktrees of the pool are not listed.
    pub fn leftover_worktrees(&self) -> Result<Vec<String>, GitError> {
        let repo = self.open()?;
        let mut keys = BTreeSet::new();
        match std::fs::read_dir(&self.worktrees) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(io_err("list", &self.worktrees))?;
                    if !entry.path().is_dir() {
                        continue;
                    }
                    let dir = entry.file_name().to_string_lossy().into_owned();
                    let key = self
                        .worktree_at(&repo, &entry.path())
                        .and_then(|name| {
                            std::fs::read_to_string(self.admin_dir(&repo, &name).join(KEY_FILE))
                                .ok()
                        })
                        .map(|k| k.trim().to_string())
                        .filter(|k| story_names(k).is_ok_and(|n| n.dir == dir))
                        .unwrap_or(dir);
                    keys.insert(key);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("list", &self.worktrees)(e)),
        }
        for (_, key) in self.lent(&repo)? {
            if story_names(&key).is_ok() {
                keys.insert(key);
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Checks `commit` out, detached, in the story's worktree (lent from the pool if the
    /// story has none), with untracked files removed.
    fn checkout_detached(&self, story_key: &str, commit: Oid) -> Result<PathBuf, GitError> {
        let names = story_names(story_key)?;
        let repo = self.open()?;
        let (path, name) = self.lend(&repo, &names, commit)?;
        let wt = Repository::open(&path).map_err(git_err("open the worktree", &path))?;
        force_checkout(&wt, &path, commit)?;
        wt.set_head_detached(commit)
            .map_err(git_err("detach HEAD", &path))?;
        self.write_meta(&repo, &name, &names, None)?;
        Ok(path)
    }

    /// The merge gate: lands the reviewed `req.change` on main as one squash commit,
    /// fenced by `req.token` (see the module doc). Blocking; checks `cancel` between steps
    /// and while the test runs.
    ///
    /// `Ok` outcomes are the gate doing its job ([`Gate`]); `Err(GitError::Fenced(_))`
    /// means the caller's claim is stale or the story already landed under another claim:
    /// stop and release. Other errors mean nothing is known to have landed.
    pub fn land(&self, req: &LandRequest, cancel: &AtomicBool) -> Result<Gate, GitError> {
        story_names(&req.story_key)?;
        if matches!(&req.test, Some(argv) if argv.is_empty()) {
            return Err(GitError::EmptyTest);
        }
        let fence = Fence::open(&self.origin)?;
        // A cheap early answer; the land below decides under the fence's locks anyway.
        if let Some(rec) = fence.read_record(&req.story_key)? {
            if let Some(done) = self.judge_record(&rec, req)? {
                return Ok(done);
            }
        }
        let max_tries = req.max_tries.max(1);
        let mut main = Oid::ZERO_SHA1;
        // One gate at a time at this origin: without it, gates of a busy mesh race, and
        // every loser pays for its squash, checkout and test again (2 tries per landing
        // at 8 nodes). Only an optimisation: the fence decides either way.
        let _gate = gate_lock(
            fence.repository().path(),
            req.test_timeout + GATE_LOCK_SLACK,
            cancel,
        )?;
        for tries in 1..=max_tries {
            check(cancel)?;
            if tries > 1 {
                backoff(tries, cancel)?;
            }
            main = self.fetch_main()?;
            self.ensure_commit(req.change)?;
            let repo = self.open()?;
            let step = self.squash(&repo, req, main)?;
            let commit = match step {
                Squash::Conflict(files) => return Ok(Gate::Conflict { files, main }),
                Squash::Empty => return self.empty(&fence, &repo, req, main, tries),
                Squash::Commit(c) => c,
            };
            check(cancel)?;
            // Another landing since our fetch dooms this try: do not pay for the test
            // (or the push) of a commit the fence would refuse as not fast-forward.
            if self.main_moved(&fence, main) {
                tracing::debug!(story = %req.story_key, tries, "main moved before the test, trying again");
                continue;
            }
            if let Some(argv) = &req.test {
                let dir = self.checkout_detached(&req.story_key, commit)?;
                let run = run_test(argv, &dir, req.test_timeout, cancel)?;
                check(cancel)?;
                if !run.passed {
                    return Ok(Gate::TestsFailed {
                        output_tail: run.output,
                        commit,
                        exit_code: run.exit_code,
                        timed_out: run.timed_out,
                    });
                }
                if self.main_moved(&fence, main) {
                    tracing::debug!(story = %req.story_key, tries, "main moved during the test, trying again");
                    continue;
                }
            }
            let land_ref = format!("{LAND_REF_PREFIX}{}/{}", req.story_key, req.token);
            self.push(commit, &land_ref)?;
            check(cancel)?;
            match fence.land(&req.story_key, req.token, &req.holder, &self.branch, commit)? {
                Ok(()) => return Ok(Gate::Landed { commit, tries }),
                Err(Refused::NotFastForward { main: now }) => {
                    tracing::debug!(story = %req.story_key, tries, %now, "main moved, trying again");
                }
                Err(refused) => return self.refused(&fence, req, refused),
            }
        }
        Err(GitError::Contended {
            tries: max_tries,
            main,
        })
    }

    /// Whether the origin's main is known to have moved away from `main` (a cheap ref
    /// read; unknown counts as not moved and the fence decides).
    fn main_moved(&self, fence: &Fence, main: Oid) -> bool {
        fence
            .repository()
            .refname_to_id(&self.branch)
            .is_ok_and(|now| now != main)
    }

    /// What an existing fence record means before we start: `Some` ends the gate.
    fn judge_record(&self, rec: &FenceRecord, req: &LandRequest) -> Result<Option<Gate>, GitError> {
        let ours = rec.token == req.token && rec.holder == req.holder;
        match rec.landed {
            Some(commit) if ours => Ok(Some(Gate::AlreadyLanded { commit })),
            Some(commit) => Err(GitError::Fenced(Refused::AlreadyLanded {
                token: rec.token,
                commit,
            })),
            None if rec.token > req.token => Err(GitError::Fenced(Refused::StaleToken {
                recorded: rec.token,
            })),
            None if rec.token == req.token && !ours => Err(GitError::Fenced(Refused::TokenTaken {
                token: rec.token,
                holder: rec.holder.clone(),
            })),
            None => Ok(None),
        }
    }

    /// A refusal from the fence: our own earlier land is an outcome, the rest errors.
    fn refused(
        &self,
        fence: &Fence,
        req: &LandRequest,
        refused: Refused,
    ) -> Result<Gate, GitError> {
        if let Refused::AlreadyLanded { .. } = refused {
            if let Some(rec) = fence.read_record(&req.story_key)? {
                if let Some(done) = self.judge_record(&rec, req)? {
                    return Ok(done);
                }
            }
        }
        Err(GitError::Fenced(refused))
    }

    /// The change is already on main. If main holds our own squash commit (a land cut
    /// short between main and the fence), finish that land; else report `Empty`.
    fn empty(
        &self,
        fence: &Fence,
        repo: &Repository,
        req: &LandRequest,
        main: Oid,
        tries: u32,
    ) -> Result<Gate, GitError> {
        let token = req.token.to_string();
        let ours = first_parent_log(repo, &self.dir, main, RECOVERY_SEARCH_DEPTH)?
            .into_iter()
            .find(|c| {
                c.trailer("Mesh-Story-Key") == Some(req.story_key.as_str())
                    && c.trailer("Mesh-Fence") == Some(token.as_str())
            });
        let Some(ours) = ours else {
            return Ok(Gate::Empty { main });
        };
        match fence.land(
            &req.story_key,
            req.token,
            &req.holder,
            &self.branch,
            ours.oid,
        )? {
            Ok(()) => Ok(Gate::Landed {
                commit: ours.oid,
                tries,
            }),
            Err(refused) => self.refused(fence, req, refused),
        }
    }

    /// Merges the change onto `main` and, if that is clean and not empty, writes the
    /// squash commit (parent: main only).
    fn squash(&self, repo: &Repository, req: &LandRequest, main: Oid) -> Result<Squash, GitError> {
        let err = |op| git_err(op, &self.dir);
        let main_commit = repo.find_commit(main).map_err(err("read main"))?;
        let change = repo
            .find_commit(req.change)
            .map_err(err("read the change"))?;
        let mut index = repo
            .merge_commits(&main_commit, &change, None)
            .map_err(err("merge the change onto main"))?;
        if index.has_conflicts() {
            let mut files = BTreeSet::new();
            for conflict in index.conflicts().map_err(err("list conflicts"))? {
                let conflict = conflict.map_err(err("list conflicts"))?;
                for entry in [conflict.our, conflict.their, conflict.ancestor]
                    .into_iter()
                    .flatten()
                {
                    files.insert(String::from_utf8_lossy(&entry.path).into_owned());
                }
            }
            return Ok(Squash::Conflict(files.into_iter().collect()));
        }
        let tree_id = index
            .write_tree_to(repo)
            .map_err(err("write the merged tree"))?;
        if tree_id == main_commit.tree_id() {
            return Ok(Squash::Empty);
        }
        let tree = repo
            .find_tree(tree_id)
            .map_err(err("read the merged tree"))?;
        let committer = signature(&self.dir)?;
        let commit = repo
            .commit(
                None,
                &change.author(),
                &committer,
                &with_trailers(&req.message, &req.trailers),
                &tree,
                &[&main_commit],
            )
            .map_err(err("write the squash commit"))?;
        Ok(Squash::Commit(commit))
    }
}

/// The result of merging a change onto main.
enum Squash {
    Conflict(Vec<String>),
    Empty,
    Commit(Oid),
}

fn tracking_ref(branch: &str) -> String {
    let short = branch.strip_prefix("refs/heads/").unwrap_or(branch);
    format!("refs/remotes/{REMOTE}/{short}")
}

fn check(cancel: &AtomicBool) -> Result<(), GitError> {
    if cancel.load(Ordering::Relaxed) {
        Err(GitError::Cancelled)
    } else {
        Ok(())
    }
}

/// Takes the origin's gate lock (`<origin git dir>/mesh-gate.lock`, an advisory `flock`
/// that the kernel drops when its holder dies), waiting up to `max_wait` and stopping
/// when `cancel` is set. `None` (go on without it) when the lock file cannot be used or
/// the wait ran out: a gate that hangs past its test timeout must not stop the others.
fn gate_lock(
    git_dir: &Path,
    max_wait: Duration,
    cancel: &AtomicBool,
) -> Result<Option<std::fs::File>, GitError> {
    let path = git_dir.join(GATE_LOCK_FILE);
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "no gate lock; landing without it");
            return Ok(None);
        }
    };
    let until = Instant::now() + max_wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::debug!(path = %path.display(), error = %e, "gate lock unsupported; landing without it");
                return Ok(None);
            }
        }
        check(cancel)?;
        if Instant::now() >= until {
            tracing::warn!(path = %path.display(), waited_s = max_wait.as_secs(), "the gate lock stayed held; landing without it");
            return Ok(None);
        }
        std::thread::sleep(GATE_LOCK_POLL);
    }
}

/// Sleeps before try number `tries` (from 2): jittered, 50 ms growing to 2 s.
fn backoff(tries: u32, cancel: &AtomicBool) -> Result<(), GitError> {
    let min = BACKOFF_MIN.as_millis() as u64;
    let max = BACKOFF_MAX.as_millis() as u64;
    let ceiling = min.saturating_mul(1u64 << (tries - 1).min(16)).min(max);
    let sleep = Duration::from_millis(rand::thread_rng().gen_range(min..=ceiling.max(min)));
    let until = Instant::now() + sleep;
    while Instant::now() < until {
        check(cancel)?;
        std::thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
    }
    Ok(())
}

/// Makes the worktree's files and index exactly `commit`'s tree, untracked files removed.
fn force_checkout(wt: &Repository, path: &Path, commit: Oid) -> Result<(), GitError> {
    let object = wt
        .find_object(commit, Some(ObjectType::Commit))
        .map_err(git_err("read the commit to check out", path))?;
    let mut co = CheckoutBuilder::new();
    co.force().remove_untracked(true);
    wt.checkout_tree(&object, Some(&mut co))
        .map_err(git_err("check out", path))
}

fn remove_file_if_present(path: &Path) -> Result<(), GitError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

fn remove_dir_if_present(path: &Path) -> Result<(), GitError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Copies `root` and every object it reaches that `to` lacks from `from` into `to`,
/// children first: an object present in `to` always has its whole closure there, so the
/// walk stops at the first object `to` already has.
fn copy_objects(
    from: &Repository,
    from_path: &Path,
    to: &Repository,
    to_path: &Path,
    root: Oid,
) -> Result<(), GitError> {
    let src = from
        .odb()
        .map_err(git_err("open the object database", from_path))?;
    let dst = to
        .odb()
        .map_err(git_err("open the object database", to_path))?;
    let mut seen = HashSet::new();
    // (object, children already pushed)
    let mut stack = vec![(root, false)];
    while let Some((oid, expanded)) = stack.pop() {
        if dst.exists(oid) {
            continue;
        }
        let object = src
            .read(oid)
            .map_err(git_err("read an object to push", from_path))?;
        if expanded {
            dst.write(object.kind(), object.data())
                .map_err(git_err("write a pushed object", to_path))?;
            continue;
        }
        if !seen.insert(oid) {
            continue;
        }
        stack.push((oid, true));
        match object.kind() {
            ObjectType::Commit => {
                let commit = from
                    .find_commit(oid)
                    .map_err(git_err("read a commit to push", from_path))?;
                stack.push((commit.tree_id(), false));
                stack.extend(commit.parent_ids().map(|p| (p, false)));
            }
            ObjectType::Tree => {
                let tree = from
                    .find_tree(oid)
                    .map_err(git_err("read a tree to push", from_path))?;
                for entry in tree.iter() {
                    // Submodule entries (commits of another repository) are not ours.
                    if matches!(entry.kind(), Some(ObjectType::Tree | ObjectType::Blob)) {
                        stack.push((entry.id(), false));
                    }
                }
            }
            ObjectType::Tag => {
                let tag = from
                    .find_tag(oid)
                    .map_err(git_err("read a tag to push", from_path))?;
                stack.push((tag.target_id(), false));
            }
            _ => {}
        }
    }
    Ok(())
}

/// How a test command ended.
struct TestRun {
    passed: bool,
    exit_code: Option<i32>,
    timed_out: bool,
    /// The tail of stdout and stderr, interleaved, plus a last line saying how it ended.
    output: String,
}

/// The last [`TEST_OUTPUT_CAP`] bytes written to it.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > TEST_OUTPUT_CAP {
            let cut = self.0.len() - TEST_OUTPUT_CAP;
            self.0.drain(..cut);
        }
    }
}

/// Runs `argv` in `dir` with stdin closed, stdout and stderr captured (the tail kept),
/// killed (with its whole process group) after `timeout` or when `cancel` is set.
fn run_test(
    argv: &[String],
    dir: &Path,
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<TestRun, GitError> {
    let (program, args) = argv.split_first().ok_or(GitError::EmptyTest)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().map_err(|source| GitError::TestSpawn {
        program: program.clone(),
        dir: dir.to_path_buf(),
        source,
    })?;
    let tail = Arc::new(Mutex::new(Tail::default()));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let mut readers = 0;
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ];
    for mut pipe in pipes.into_iter().flatten() {
        let tail = tail.clone();
        let done = done_tx.clone();
        readers += 1;
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Ok(mut t) = tail.lock() {
                            t.push(&buf[..n]);
                        }
                    }
                }
            }
            let _ = done.send(());
        });
    }
    drop(done_tx);
    let started = Instant::now();
    let mut timed_out = false;
    let mut cancelled = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => {
                kill_group(&mut child);
                return Err(io_err("wait for the test command in", dir)(e));
            }
        }
        if cancel.load(Ordering::Relaxed) {
            cancelled = true;
        } else if started.elapsed() >= timeout {
            timed_out = true;
        }
        if cancelled || timed_out {
            kill_group(&mut child);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if cancelled {
        return Err(GitError::Cancelled);
    }
    // Let the readers drain what is left; a grandchild that escaped the process group
    // and keeps a pipe open is not waited for long.
    let drain_until = Instant::now() + Duration::from_secs(1);
    for _ in 0..readers {
        let left = drain_until.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let mut output = tail
        .lock()
        .map(|t| String::from_utf8_lossy(&t.0).into_owned())
        .unwrap_or_default();
    let exit_code = status.and_then(|s| s.code());
    let passed = status.is_some_and(|s| s.success());
    let how = match (status, timed_out) {
        (_, true) => format!("killed after the {} s timeout", timeout.as_secs_f64()),
        (Some(s), _) => match s.code() {
            Some(code) => format!("exited with status {code}"),
            None => format!("was killed ({s})"),
        },
        (None, false) => "was stopped".to_string(),
    };
    if !output.is_empty() && !output.ends_with('\n') {
        output.push('\n');
    }
    output.push_str(&format!("[mesh-agent: the test command {how}]"));
    Ok(TestRun {
        passed,
        exit_code,
        timed_out,
        output,
    })
}

/// Kills the child and, on unix, its whole process group (it leads one).
fn kill_group(child: &mut std::process::Child) {
    #[cfg(unix)]
    {
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) with a negative pid signals the process group we created
            // for the child; it touches no memory.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
    let _ = child.kill();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    const KEY_A: &str = "S-0001@aaaa1111";
    const KEY_B: &str = "S-0002@bbbb2222";
    const MAIN: &str = fence::DEFAULT_BRANCH_REF;

    /// A home directory holding a bare origin (`origin.git`) whose main has one commit
    /// with `README` and `test.sh`.
    struct World {
        home: tempfile::TempDir,
        origin: PathBuf,
        root: Oid,
    }

    fn world() -> World {
        let home = tempfile::tempdir().unwrap();
        let origin = home.path().join("origin.git");
        let repo = Repository::init_bare(&origin).unwrap();
        let mut tb = repo.treebuilder(None).unwrap();
        let readme = repo.blob(b"line one\nline two\n").unwrap();
        let test = repo.blob(b"test -f README\n").unwrap();
        tb.insert("README", readme, 0o100644).unwrap();
        tb.insert("test.sh", test, 0o100755).unwrap();
        let tree = repo.find_tree(tb.write().unwrap()).unwrap();
        let sig = Signature::new("t", "t@t", &git2::Time::new(0, 0)).unwrap();
        let root = repo
            .commit(Some(MAIN), &sig, &sig, "root", &tree, &[])
            .unwrap();
        repo.set_head(MAIN).unwrap();
        World { home, origin, root }
    }

    impl World {
        fn node(&self, name: &str) -> NodeRepo {
            let dir = self.home.path().join(name).join("clone");
            NodeRepo::open_or_clone(self.origin.to_str().unwrap(), &dir).unwrap()
        }

        fn main(&self) -> Oid {
            Repository::open(&self.origin)
                .unwrap()
                .refname_to_id(MAIN)
                .unwrap()
        }
    }

    fn trailers(key: &str, phase: Phase, fence: u64, node: &str) -> Trailers {
        Trailers {
            story: key.split('@').next().unwrap().to_string(),
            story_key: key.to_string(),
            phase,
            fence,
            node: node.to_string(),
        }
    }

    /// Prepares the story's worktree at main, writes `files` and commits them.
    fn implement(node: &NodeRepo, key: &str, files: &[(&str, &str)]) -> Oid {
        let base = node.fetch_main().unwrap();
        let wt = node.prepare_worktree(key, base).unwrap();
        for (path, content) in files {
            std::fs::write(wt.join(path), content).unwrap();
        }
        let t = trailers(key, Phase::Implement, 1, "peerA");
        node.commit_all(&wt, "implement", "", &t).unwrap().unwrap()
    }

    fn request(key: &str, change: Oid, token: u64, holder: &str) -> LandRequest {
        LandRequest {
            story_key: key.to_string(),
            change,
            token,
            holder: holder.to_string(),
            message: format!("{key}: land\n\nSquashed."),
            trailers: trailers(key, Phase::Merge, token, holder),
            test: None,
            test_timeout: Duration::from_secs(10),
            max_tries: 5,
        }
    }

    fn message_of(repo_dir: &Path, oid: Oid) -> String {
        let repo = Repository::open(repo_dir).unwrap();
        let commit = repo.find_commit(oid).unwrap();
        commit.message().unwrap().to_string()
    }

    fn no_cancel() -> AtomicBool {
        AtomicBool::new(false)
    }

    #[test]
    fn a_story_commit_carries_the_mesh_trailers() {
        let w = world();
        let node = w.node("a");
        assert_eq!(node.fetch_main().unwrap(), w.root);
        let wt = node.prepare_worktree(KEY_A, w.root).unwrap();
        assert_eq!(wt, node.worktree_path(KEY_A).unwrap());
        assert_eq!(
            std::fs::read_to_string(wt.join("README")).unwrap(),
            "line one\nline two\n"
        );
        std::fs::write(wt.join("new.txt"), "new\n").unwrap();
        let t = trailers(KEY_A, Phase::Implement, 7, "peerA");
        let oid = node
            .commit_all(&wt, "Add new.txt", "Because.", &t)
            .unwrap()
            .unwrap();
        let msg = message_of(node.clone_dir(), oid);
        assert_eq!(
            msg,
            "Add new.txt\n\nBecause.\n\nMesh-Story: S-0001\nMesh-Story-Key: S-0001@aaaa1111\n\
             Mesh-Phase: implement\nMesh-Fence: 7\nMesh-Node: peerA\n"
        );
        let got = read_trailers(&msg);
        assert_eq!(got[0], ("Mesh-Story".to_string(), "S-0001".to_string()));
        assert_eq!(got[3], ("Mesh-Fence".to_string(), "7".to_string()));
        // On the story branch, whose parent is the base.
        let repo = Repository::open(node.clone_dir()).unwrap();
        assert_eq!(
            repo.refname_to_id("refs/heads/mesh/S-0001@aaaa1111")
                .unwrap(),
            oid
        );
        assert_eq!(repo.find_commit(oid).unwrap().parent_id(0).unwrap(), w.root);
    }

    #[test]
    fn committing_without_changes_returns_none_but_keeps_the_executors_own_commits() {
        let w = world();
        let node = w.node("a");
        let wt = node.prepare_worktree(KEY_A, w.root).unwrap();
        let t = trailers(KEY_A, Phase::Implement, 1, "peerA");
        assert_eq!(node.commit_all(&wt, "nothing", "", &t).unwrap(), None);
        // The executor commits by itself and leaves a clean tree.
        std::fs::write(wt.join("own.txt"), "own\n").unwrap();
        let repo = Repository::open(&wt).unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new("own.txt")).unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let head = repo.head().unwrap().peel_to_commit().unwrap();
        let sig = Signature::now("exec", "exec@x").unwrap();
        let own = repo
            .commit(Some("HEAD"), &sig, &sig, "own commit", &tree, &[&head])
            .unwrap();
        assert_eq!(node.commit_all(&wt, "x", "", &t).unwrap(), Some(own));
        // More edits on top are committed after it.
        std::fs::write(wt.join("own.txt"), "more\n").unwrap();
        let top = node.commit_all(&wt, "x", "", &t).unwrap().unwrap();
        assert_eq!(repo.find_commit(top).unwrap().parent_id(0).unwrap(), own);
    }

    #[test]
    fn commit_all_stages_deletions_and_respects_gitignore() {
        let w = world();
        let node = w.node("a");
        let wt = node.prepare_worktree(KEY_A, w.root).unwrap();
        std::fs::remove_file(wt.join("test.sh")).unwrap();
        std::fs::write(wt.join(".gitignore"), "target/\n").unwrap();
        std::fs::create_dir_all(wt.join("target")).unwrap();
        std::fs::write(wt.join("target/out.bin"), "junk").unwrap();
        std::fs::create_dir_all(wt.join("src/deep")).unwrap();
        std::fs::write(wt.join("src/deep/lib.rs"), "fn x() {}\n").unwrap();
        let t = trailers(KEY_A, Phase::Implement, 1, "peerA");
        let oid = node.commit_all(&wt, "s", "", &t).unwrap().unwrap();
        let repo = Repository::open(node.clone_dir()).unwrap();
        let tree = repo.find_commit(oid).unwrap().tree().unwrap();
        assert!(tree.get_path(Path::new("test.sh")).is_err());
        assert!(tree.get_path(Path::new("target/out.bin")).is_err());
        assert!(tree.get_path(Path::new("src/deep/lib.rs")).is_ok());
        assert!(tree.get_path(Path::new(".gitignore")).is_ok());
    }

    #[test]
    fn pushed_work_is_fetched_and_checked_out_by_another_node() {
        let w = world();
        let a = w.node("a");
        let b = w.node("b");
        let change = implement(&a, KEY_A, &[("feature.txt", "from a\n")]);
        a.push_work(KEY_A, "claim-1", change).unwrap();
        let origin = Repository::open(&w.origin).unwrap();
        assert_eq!(
            origin
                .refname_to_id("refs/mesh/work/S-0001@aaaa1111/claim-1")
                .unwrap(),
            change
        );
        b.ensure_commit(change).unwrap();
        let wt = b.prepare_worktree(KEY_A, change).unwrap();
        assert_eq!(
            std::fs::read_to_string(wt.join("feature.txt")).unwrap(),
            "from a\n"
        );
        // An unknown commit is a clear error.
        let missing = Oid::from_str("1111111111111111111111111111111111111111").unwrap();
        let err = b.ensure_commit(missing).unwrap_err();
        assert!(matches!(err, GitError::MissingCommit { .. }), "{err}");
        assert!(b.push_work(KEY_A, "a/b", change).is_err());
    }

    #[test]
    fn preparing_again_resets_the_worktree_to_the_new_base() {
        let w = world();
        let node = w.node("a");
        let first = implement(
            &node,
            KEY_A,
            &[("a.txt", "a\n"), (".gitignore", "cache/\n")],
        );
        let wt = node.worktree_path(KEY_A).unwrap();
        std::fs::write(wt.join("README"), "dirty\n").unwrap();
        std::fs::write(wt.join("untracked.txt"), "left over\n").unwrap();
        std::fs::create_dir_all(wt.join("cache")).unwrap();
        std::fs::write(wt.join("cache/x"), "kept\n").unwrap();
        // Reset to the same commit: edits and untracked files go, ignored ones stay.
        assert_eq!(node.prepare_worktree(KEY_A, first).unwrap(), wt);
        assert!(!wt.join("untracked.txt").exists());
        assert_eq!(
            std::fs::read_to_string(wt.join("README")).unwrap(),
            "line one\nline two\n"
        );
        assert!(wt.join("cache/x").exists(), "ignored build output is kept");
        std::fs::remove_dir_all(wt.join("cache")).unwrap();
        // Reset to an older base: files of the newer one go.
        std::fs::write(wt.join("untracked.txt"), "left over\n").unwrap();
        assert_eq!(node.prepare_worktree(KEY_A, w.root).unwrap(), wt);
        assert!(!wt.join("a.txt").exists(), "a file of the old base");
        assert!(!wt.join(".gitignore").exists());
        assert!(!wt.join("untracked.txt").exists());
        let repo = Repository::open(&wt).unwrap();
        assert_eq!(
            repo.head().unwrap().name(),
            Ok("refs/heads/mesh/S-0001@aaaa1111")
        );
        assert_eq!(repo.head().unwrap().target(), Some(w.root));
        let t = trailers(KEY_A, Phase::Implement, 1, "peerA");
        assert_eq!(node.commit_all(&wt, "x", "", &t).unwrap(), None);
        // Back to the first commit: its files return.
        node.prepare_worktree(KEY_A, first).unwrap();
        assert!(wt.join("a.txt").exists());
    }

    #[test]
    fn a_story_lands_as_one_squash_commit_on_main() {
        let w = world();
        let node = w.node("a");
        let change = implement(&node, KEY_A, &[("feature.txt", "x\n")]);
        let mut req = request(KEY_A, change, 3, "peerA");
        req.test = Some(vec!["sh".into(), "-c".into(), "test -f feature.txt".into()]);
        let gate = node.land(&req, &no_cancel()).unwrap();
        let Gate::Landed { commit, tries } = gate else {
            panic!("{gate:?}")
        };
        assert_eq!(tries, 1);
        assert_eq!(w.main(), commit);
        let log = main_log(&w.origin).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].oid, commit);
        assert_eq!(log[0].subject, "S-0001@aaaa1111: land");
        assert_eq!(log[0].trailer("Mesh-Story-Key"), Some(KEY_A));
        assert_eq!(log[0].trailer("mesh-phase"), Some("merge"));
        assert_eq!(log[0].trailer("Mesh-Fence"), Some("3"));
        let origin = Repository::open(&w.origin).unwrap();
        let squash = origin.find_commit(commit).unwrap();
        assert_eq!(squash.parent_ids().collect::<Vec<_>>(), vec![w.root]);
        let fence = fence::Fence::open(&w.origin).unwrap();
        assert_eq!(
            fence.read_record(KEY_A).unwrap().unwrap().landed,
            Some(commit)
        );
        // The same land again is recognised, not repeated.
        assert_eq!(
            node.land(&req, &no_cancel()).unwrap(),
            Gate::AlreadyLanded { commit }
        );
        // Another holder cannot land the story again.
        let err = node
            .land(&request(KEY_A, change, 4, "peerB"), &no_cancel())
            .unwrap_err();
        assert!(
            matches!(err, GitError::Fenced(Refused::AlreadyLanded { .. })),
            "{err}"
        );
    }

    #[test]
    fn two_stories_changing_the_same_line_conflict_and_the_second_is_told_which_file() {
        let w = world();
        let a = w.node("a");
        let b = w.node("b");
        let change_a = implement(&a, KEY_A, &[("README", "line one\nA\n")]);
        let change_b = implement(&b, KEY_B, &[("README", "line one\nB\n"), ("b.txt", "b\n")]);
        b.push_work(KEY_B, "c", change_b).unwrap();
        assert!(matches!(
            a.land(&request(KEY_A, change_a, 1, "peerA"), &no_cancel())
                .unwrap(),
            Gate::Landed { .. }
        ));
        let main = w.main();
        let gate = b
            .land(&request(KEY_B, change_b, 1, "peerB"), &no_cancel())
            .unwrap();
        assert_eq!(
            gate,
            Gate::Conflict {
                files: vec!["README".to_string()],
                main
            }
        );
        assert_eq!(w.main(), main);
    }

    #[test]
    fn appends_to_the_same_file_from_the_same_base_conflict() {
        let w = world();
        let a = w.node("a");
        let change_a = implement(&a, KEY_A, &[("README", "line one\nline two\nA\n")]);
        let change_b = implement(&a, KEY_B, &[("README", "line one\nline two\nB\n")]);
        assert!(matches!(
            a.land(&request(KEY_A, change_a, 1, "peerA"), &no_cancel())
                .unwrap(),
            Gate::Landed { .. }
        ));
        let gate = a
            .land(&request(KEY_B, change_b, 1, "peerA"), &no_cancel())
            .unwrap();
        assert!(
            matches!(&gate, Gate::Conflict { files, .. } if files == &["README"]),
            "{gate:?}"
        );
    }

    #[test]
    fn failing_tests_stop_the_land_and_report_their_output() {
        let w = world();
        let node = w.node("a");
        let change = implement(&node, KEY_A, &[("feature.txt", "x\n")]);
        let mut req = request(KEY_A, change, 1, "peerA");
        req.test = Some(vec![
            "sh".into(),
            "-c".into(),
            "echo out; echo boom >&2; exit 3".into(),
        ]);
        let gate = node.land(&req, &no_cancel()).unwrap();
        let Gate::TestsFailed {
            output_tail,
            commit,
            exit_code,
            timed_out,
        } = gate
        else {
            panic!("{gate:?}")
        };
        assert_eq!(exit_code, Some(3));
        assert!(!timed_out);
        assert!(
            output_tail.contains("out") && output_tail.contains("boom"),
            "{output_tail}"
        );
        assert!(output_tail.contains("status 3"), "{output_tail}");
        assert_eq!(w.main(), w.root);
        // The tested commit is checked out, detached, in the worktree.
        let wt = Repository::open(node.worktree_path(KEY_A).unwrap()).unwrap();
        assert!(wt.head_detached().unwrap());
        assert_eq!(wt.head().unwrap().target(), Some(commit));
    }

    #[test]
    fn a_test_running_past_its_timeout_is_killed_and_fails() {
        let w = world();
        let node = w.node("a");
        let change = implement(&node, KEY_A, &[("feature.txt", "x\n")]);
        let mut req = request(KEY_A, change, 1, "peerA");
        req.test = Some(vec![
            "sh".into(),
            "-c".into(),
            "echo started; sleep 30".into(),
        ]);
        req.test_timeout = Duration::from_millis(200);
        let started = Instant::now();
        let gate = node.land(&req, &no_cancel()).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(&gate, Gate::TestsFailed { timed_out: true, exit_code: None, output_tail, .. }
                if output_tail.contains("started") && output_tail.contains("timeout")),
            "{gate:?}"
        );
        assert_eq!(w.main(), w.root);
    }

    #[test]
    fn a_stale_token_is_fenced_and_main_stays() {
        let w = world();
        let node = w.node("a");
        let change = implement(&node, KEY_A, &[("feature.txt", "x\n")]);
        let fence = fence::Fence::open(node.origin_path()).unwrap();
        assert_eq!(fence.record(KEY_A, 9, "peerB").unwrap(), Ok(()));
        let err = node
            .land(&request(KEY_A, change, 5, "peerA"), &no_cancel())
            .unwrap_err();
        assert!(
            matches!(err, GitError::Fenced(Refused::StaleToken { recorded: 9 })),
            "{err}"
        );
        assert_eq!(w.main(), w.root);
    }

    #[test]
    fn a_change_already_on_main_is_empty() {
        let w = world();
        let node = w.node("a");
        let change = implement(&node, KEY_A, &[("feature.txt", "x\n")]);
        assert!(matches!(
            node.land(&request(KEY_A, change, 1, "peerA"), &no_cancel())
                .unwrap(),
            Gate::Landed { .. }
        ));
        let main = w.main();
        let gate = node
            .land(&request(KEY_B, change, 1, "peerA"), &no_cancel())
            .unwrap();
        assert_eq!(gate, Gate::Empty { main });
    }

    #[test]
    fn a_land_cut_short_after_main_moved_is_completed_by_repeating_it() {
        let w = world();
        let node = w.node("a");
        let change = implement(&node, KEY_A, &[("feature.txt", "x\n")]);
        let req = request(KEY_A, change, 2, "peerA");
        let Gate::Landed { commit, .. } = node.land(&req, &no_cancel()).unwrap() else {
            panic!()
        };
        // Rewind the fence to "recorded, not landed", as a crash between the two ref
        // writes leaves it.
        let origin = Repository::open(&w.origin).unwrap();
        origin
            .find_reference(&fence::fence_ref(KEY_A).unwrap())
            .unwrap()
            .delete()
            .unwrap();
        assert_eq!(fence::record(&w.origin, KEY_A, 2, "peerA").unwrap(), Ok(()));
        let gate = node.land(&req, &no_cancel()).unwrap();
        assert_eq!(gate, Gate::Landed { commit, tries: 1 });
        assert_eq!(w.main(), commit);
        let rec = fence::Fence::open(&w.origin)
            .unwrap()
            .read_record(KEY_A)
            .unwrap();
        assert_eq!(rec.unwrap().landed, Some(commit));
    }

    #[test]
    fn a_gate_that_loses_the_race_to_main_fetches_and_lands_on_top() {
        // B's test waits for A to land, so B's first land is refused as non-fast-forward.
        let w = world();
        let a = w.node("a");
        // A's change must be in the origin for A to land it by hand below.
        let b = w.node("b");
        let change_a = implement(&a, KEY_A, &[("a.txt", "a\n")]);
        a.push_work(KEY_A, "c1", change_a).unwrap();
        let change_b = implement(&b, KEY_B, &[("b.txt", "b\n")]);
        let marks = w.home.path().join("marks");
        std::fs::create_dir_all(&marks).unwrap();
        let m = marks.display();
        let script = format!(
            "touch {m}/b-testing; i=0; while [ ! -e {m}/a-landed ] && [ $i -lt 500 ]; \
             do sleep 0.01; i=$((i+1)); done"
        );
        let mut req_b = request(KEY_B, change_b, 1, "peerB");
        req_b.test = Some(vec!["sh".into(), "-c".into(), script]);
        let gate_b = std::thread::spawn(move || b.land(&req_b, &no_cancel()).unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !marks.join("b-testing").exists() {
            assert!(Instant::now() < deadline, "B's test never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        // A lands without the gate lock B holds (a writer that does not take it, such
        // as an older node): straight through the fence, as the gate would.
        let origin = Repository::open(&w.origin).unwrap();
        let tree = origin.find_commit(change_a).unwrap().tree().unwrap();
        let root = origin.find_commit(w.root).unwrap();
        let sig = Signature::now("t", "t@t").unwrap();
        let commit_a = origin
            .commit(None, &sig, &sig, "A", &tree, &[&root])
            .unwrap();
        Fence::open(&w.origin)
            .unwrap()
            .land(KEY_A, 1, "peerA", MAIN, commit_a)
            .unwrap()
            .unwrap();
        std::fs::write(marks.join("a-landed"), "").unwrap();
        let gate_b = gate_b.join().unwrap();
        let Gate::Landed {
            commit: commit_b,
            tries: 2,
        } = gate_b
        else {
            panic!("{gate_b:?}")
        };
        let log = main_log(&w.origin).unwrap();
        let oids: Vec<Oid> = log.iter().map(|c| c.oid).collect();
        assert_eq!(oids, vec![commit_b, commit_a, w.root]);
        let origin = Repository::open(&w.origin).unwrap();
        let tree = origin.find_commit(commit_b).unwrap().tree().unwrap();
        assert!(tree.get_path(Path::new("a.txt")).is_ok());
        assert!(tree.get_path(Path::new("b.txt")).is_ok());
    }

    /// Lands one change per key at once, each from its own node and thread, started
    /// together; `test` is each gate's test command. Returns the gates' outcomes.
    fn land_at_once(w: &World, keys: &[&str], test: Option<Vec<String>>) -> Vec<Gate> {
        let barrier = Arc::new(Barrier::new(keys.len()));
        let handles: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let node = w.node(&format!("n{i}"));
                let change = implement(&node, key, &[(&format!("f{i}.txt"), "x\n")]);
                let mut req = request(key, change, 1, &format!("peer{i}"));
                req.test = test.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    node.land(&req, &no_cancel()).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn nodes_landing_different_stories_at_once_all_land_exactly_once() {
        let w = world();
        let keys = ["S-0011@11111111", "S-0012@22222222", "S-0013@33333333"];
        for gate in land_at_once(&w, &keys, None) {
            assert!(matches!(gate, Gate::Landed { .. }), "{gate:?}");
        }
        let log = main_log(&w.origin).unwrap();
        assert_eq!(log.len(), keys.len() + 1);
        for key in keys {
            let landed = log
                .iter()
                .filter(|c| c.trailer("Mesh-Story-Key") == Some(key))
                .count();
            assert_eq!(landed, 1, "{key}");
        }
    }

    #[test]
    fn gates_at_one_origin_take_turns_instead_of_racing() {
        // Each gate's test takes a while: gates racing from the same main would all but
        // one find main moved after their test and try again.
        let w = world();
        let keys = [
            "S-0021@11111111",
            "S-0022@22222222",
            "S-0023@33333333",
            "S-0024@44444444",
        ];
        let test = Some(vec!["sh".into(), "-c".into(), "sleep 0.1".into()]);
        for gate in land_at_once(&w, &keys, test) {
            assert!(matches!(gate, Gate::Landed { tries: 1, .. }), "{gate:?}");
        }
        assert_eq!(main_log(&w.origin).unwrap().len(), keys.len() + 1);
    }

    #[test]
    fn a_gate_waiting_for_the_gate_lock_can_be_cancelled() {
        let w = world();
        let node = w.node("a");
        let change = implement(&node, KEY_A, &[("a.txt", "a\n")]);
        let held = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(w.origin.join(GATE_LOCK_FILE))
            .unwrap();
        held.lock().unwrap();
        let cancel = Arc::new(AtomicBool::new(false));
        let gate = {
            let (node, cancel) = (node.clone(), cancel.clone());
            let req = request(KEY_A, change, 1, "peerA");
            std::thread::spawn(move || node.land(&req, &cancel))
        };
        cancel.store(true, Ordering::SeqCst);
        assert!(matches!(gate.join().unwrap(), Err(GitError::Cancelled)));
        assert_eq!(w.main(), w.root, "nothing landed");
        drop(held);
        let gate = node
            .land(&request(KEY_A, change, 1, "peerA"), &no_cancel())
            .unwrap();
        assert!(matches!(gate, Gate::Landed { tries: 1, .. }), "{gate:?}");
    }

    #[test]
    fn one_node_landing_two_stories_from_two_threads_lands_both() {
        let w = world();
        let node = w.node("a");
        let change_a = implement(&node, KEY_A, &[("a.txt", "a\n")]);
        let change_b = implement(&node, KEY_B, &[("b.txt", "b\n")]);
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = [(KEY_A, change_a), (KEY_B, change_b)]
            .into_iter()
            .map(|(key, change)| {
                let node = node.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut req = request(key, change, 1, "peerA");
                    req.test = Some(vec!["sh".into(), "test.sh".into()]);
                    barrier.wait();
                    node.land(&req, &no_cancel()).unwrap()
                })
            })
            .collect();
        for h in handles {
            let gate = h.join().unwrap();
            assert!(matches!(gate, Gate::Landed { .. }), "{gate:?}");
        }
        assert_eq!(main_log(&w.origin).unwrap().len(), 3);
    }

    #[test]
    fn a_file_url_origin_is_cloned_like_a_path() {
        let w = world();
        let url = format!("file://{}", w.origin.display());
        let node = NodeRepo::open_or_clone(&url, &w.home.path().join("f/clone")).unwrap();
        assert_eq!(node.fetch_main().unwrap(), w.root);
        assert_eq!(
            node.origin_path(),
            std::fs::canonicalize(&w.origin).unwrap()
        );
        let change = implement(&node, KEY_A, &[("a.txt", "a\n")]);
        node.push_work(KEY_A, "c1", change).unwrap();
        let gate = node
            .land(&request(KEY_A, change, 1, "peerA"), &no_cancel())
            .unwrap();
        assert!(matches!(gate, Gate::Landed { .. }), "{gate:?}");
    }

    #[test]
    fn removed_worktrees_are_gone_and_leftovers_are_listed() {
        let w = world();
        let node = w.node("a");
        assert_eq!(node.leftover_worktrees().unwrap(), Vec::<String>::new());
        let wt_a = node.prepare_worktree(KEY_A, w.root).unwrap();
        node.prepare_worktree(KEY_B, w.root).unwrap();
        assert_eq!(node.leftover_worktrees().unwrap(), vec![KEY_A, KEY_B]);
        node.remove_worktree(KEY_A).unwrap();
        node.remove_worktree(KEY_A).unwrap();
        assert!(!wt_a.exists());
        assert_eq!(node.leftover_worktrees().unwrap(), vec![KEY_B]);
        let repo = Repository::open(node.clone_dir()).unwrap();
        assert!(repo
            .find_reference("refs/heads/mesh/S-0001@aaaa1111")
            .is_err());
        assert!(repo.find_worktree(&safe_dir_name(KEY_A)).is_err());
        // It can be made again.
        node.prepare_worktree(KEY_A, w.root).unwrap();
        assert!(wt_a.join("README").exists());
    }

    #[test]
    fn a_removed_worktree_is_lent_to_the_next_story_with_exactly_its_base() {
        use std::os::unix::fs::MetadataExt;
        let w = world();
        let node = w.node("a");
        let a = implement(&node, KEY_A, &[("a.txt", "a\n")]);
        let wt_a = node.worktree_path(KEY_A).unwrap();
        std::fs::write(wt_a.join("scratch.txt"), "x").unwrap();
        let readme = std::fs::metadata(wt_a.join("README")).unwrap().ino();
        node.remove_worktree(KEY_A).unwrap();
        assert!(!wt_a.exists());
        assert!(node.leftover_worktrees().unwrap().is_empty());
        // Story B gets the same directory, moved: files equal to its base are not
        // written again, the rest is exactly B's base.
        let wt_b = node.prepare_worktree(KEY_B, w.root).unwrap();
        assert_eq!(
            std::fs::metadata(wt_b.join("README")).unwrap().ino(),
            readme
        );
        assert!(!wt_b.join("a.txt").exists(), "a file of story A's commit");
        assert!(
            !wt_b.join("scratch.txt").exists(),
            "an untracked file of story A"
        );
        let repo = Repository::open(&wt_b).unwrap();
        assert_eq!(
            repo.head().unwrap().name(),
            Ok("refs/heads/mesh/S-0002@bbbb2222")
        );
        assert_eq!(repo.head().unwrap().target(), Some(w.root));
        // Story A again while B holds the only one: a new worktree.
        let wt_a = node.prepare_worktree(KEY_A, a).unwrap();
        assert_eq!(std::fs::read_to_string(wt_a.join("a.txt")).unwrap(), "a\n");
        assert_eq!(node.leftover_worktrees().unwrap(), vec![KEY_A, KEY_B]);
        node.remove_worktree(KEY_A).unwrap();
        node.remove_worktree(KEY_B).unwrap();
        assert!(node.leftover_worktrees().unwrap().is_empty());
        let clone = Repository::open(node.clone_dir()).unwrap();
        assert_eq!(clone.worktrees().unwrap().len(), 2, "both kept, idle");
        assert!(clone
            .find_reference("refs/heads/mesh/S-0002@bbbb2222")
            .is_err());
    }

    #[test]
    fn objects_pushed_by_one_node_are_readable_by_another_without_a_fetch() {
        let w = world();
        let (a, b) = (w.node("a"), w.node("b"));
        let change = implement(&a, KEY_A, &[("a.txt", "a\n")]);
        a.push_work(KEY_A, "c1", change).unwrap();
        let clone_b = Repository::open(b.clone_dir()).unwrap();
        assert!(clone_b.find_commit(change).is_ok());
        // Main is read from the origin when asked, not from a copy.
        let gate = a
            .land(&request(KEY_A, change, 1, "peerA"), &no_cancel())
            .unwrap();
        let Gate::Landed { commit, .. } = gate else {
            panic!("{gate:?}")
        };
        assert_eq!(b.fetch_main().unwrap(), commit);
    }

    #[test]
    fn a_half_made_worktree_left_by_a_crash_is_reported_cleaned_and_remade() {
        let w = world();
        let node = w.node("a");
        // A directory with no git metadata (the crash came before `worktree add`).
        let crashed = node.worktree_path("S-0009@deadbeef").unwrap();
        std::fs::create_dir_all(crashed.join("sub")).unwrap();
        std::fs::write(crashed.join("sub/file"), "x").unwrap();
        // Metadata whose directory is gone.
        let wt = node.prepare_worktree(KEY_A, w.root).unwrap();
        std::fs::remove_dir_all(&wt).unwrap();
        assert_eq!(
            node.leftover_worktrees().unwrap(),
            vec![KEY_A, "S-0009@deadbeef"]
        );
        node.remove_worktree("S-0009@deadbeef").unwrap();
        assert!(!crashed.exists());
        // Preparing over the broken one recreates it.
        let again = node.prepare_worktree(KEY_A, w.root).unwrap();
        assert!(again.join("README").exists());
        node.remove_worktree(KEY_A).unwrap();
        assert!(node.leftover_worktrees().unwrap().is_empty());
    }

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

    #[test]
    fn open_or_clone_reopens_its_clone_and_refuses_anything_else() {
        let w = world();
        let dir = w.home.path().join("a/clone");
        NodeRepo::open_or_clone(w.origin.to_str().unwrap(), &dir).unwrap();
        let url = format!("file://{}", w.origin.display());
        let again = NodeRepo::open_or_clone(&url, &dir).unwrap();
        assert_eq!(again.fetch_main().unwrap(), w.root);

        let junk = w.home.path().join("junk");
        std::fs::create_dir_all(&junk).unwrap();
        std::fs::write(junk.join("notes.txt"), "mine").unwrap();
        let err = NodeRepo::open_or_clone(w.origin.to_str().unwrap(), &junk).unwrap_err();
        assert!(matches!(err, GitError::NotAClone { .. }), "{err}");
        assert!(err.to_string().contains("not a git repository"), "{err}");
        assert!(junk.join("notes.txt").exists());

        let other = w.home.path().join("other.git");
        Repository::init_bare(&other).unwrap();
        let err = NodeRepo::open_or_clone(other.to_str().unwrap(), &dir).unwrap_err();
        assert!(matches!(err, GitError::NotAClone { .. }), "{err}");
        assert!(err.to_string().contains("its origin is"), "{err}");

        let missing = w.home.path().join("nope.git");
        assert!(NodeRepo::open_or_clone(missing.to_str().unwrap(), &junk).is_err());
    }

    #[test]
    fn trailers_are_read_from_the_last_paragraph_only() {
        let msg =
            "Subject: not a trailer\n\nBody: also not\n\nMesh-Story: S-1\nMesh-Fence: 3\n  \n";
        assert_eq!(
            read_trailers(msg),
            vec![
                ("Mesh-Story".to_string(), "S-1".to_string()),
                ("Mesh-Fence".to_string(), "3".to_string())
            ]
        );
        assert!(read_trailers("Subject: only").is_empty());
        assert!(read_trailers("").is_empty());
        let t = Trailers {
            node: "evil\nMesh-Fence: 99".into(),
            ..trailers(KEY_A, Phase::Review, 1, "x")
        };
        let parsed = read_trailers(&with_trailers("s", &t));
        assert_eq!(parsed.iter().filter(|(k, _)| k == "Mesh-Fence").count(), 1);
    }

    #[test]
    fn a_cancelled_gate_stops_before_landing() {
        let w = world();
        let node = w.node("a");
        let change = implement(&node, KEY_A, &[("feature.txt", "x\n")]);
        let cancel = AtomicBool::new(true);
        let err = node
            .land(&request(KEY_A, change, 1, "peerA"), &cancel)
            .unwrap_err();
        assert!(matches!(err, GitError::Cancelled), "{err}");
        assert_eq!(w.main(), w.root);
    }
}
