//! The node's bare clone of the origin: opening or cloning it, borrowing a local origin's
//! objects ("fetching" main is then a ref read), or fetching from a remote one.

use super::remote::{Credentials, Remote, RemoteUrl};
use super::*;
use crate::fence;
use git2::build::RepoBuilder;
use git2::{AutotagOption, ErrorCode, FetchOptions, Oid, Reference, Repository};
use std::path::{Path, PathBuf};

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

/// The per-clone lock that serialises tracking-ref updates within this process.
pub(super) fn clone_lock(dir: &Path) -> std::sync::Arc<std::sync::Mutex<()>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let map = LOCKS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    m.entry(dir.to_path_buf()).or_default().clone()
}

/// Whether `dir` is absent or an empty directory (where a clone may be made).
fn is_empty_dir(dir: &Path) -> Result<bool, GitError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io_err("read", dir)(e)),
    }
}

fn tracking_ref(branch: &str) -> String {
    let short = branch.strip_prefix("refs/heads/").unwrap_or(branch);
    format!("refs/remotes/{REMOTE}/{short}")
}

impl NodeRepo {
    /// Opens the node's clone at `dir`, cloning `origin` into it first if `dir` does not
    /// exist or is empty. The clone is bare; story worktrees go to `<dir>/../worktrees`.
    /// A `dir` that holds anything else than a clone of that origin is an error
    /// ([`GitError::NotAClone`]); nothing is touched.
    ///
    /// `origin` is a local path or `file://` URL (opened directly), or a remote URL
    /// (`ssh://`, `user@host:path`, `https://`, `git://`), reached through the `git`
    /// binary with the credentials of [`Credentials::from_env`] and the user's ssh setup
    /// (see [`NodeRepo::open_or_clone_remote`]).
    pub fn open_or_clone(origin: &str, dir: &Path) -> Result<NodeRepo, GitError> {
        match RemoteUrl::parse(origin) {
            Ok(url) if !url.is_local() => {
                let remote = Remote::new(origin, Credentials::from_env())?;
                return NodeRepo::open_or_clone_remote(remote, dir);
            }
            // Neither a path here nor a URL git can be trusted with: say why, rather
            // than "no such path".
            Err(_) if !Path::new(origin.strip_prefix("file://").unwrap_or(origin)).exists() => {
                Remote::new(origin, Credentials::from_env())?;
            }
            _ => {}
        }
        let origin_path = origin_to_path(origin)?;
        if is_empty_dir(dir)? {
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
        share_objects(&repo, &origin_path)?;
        NodeRepo::at(dir, Origin::Local(origin_path), url)
    }

    /// The node repo of the clone at `dir`, landing on main.
    fn at(dir: &Path, origin: Origin, origin_url: String) -> Result<NodeRepo, GitError> {
        let dir = std::fs::canonicalize(dir).map_err(io_err("resolve", dir))?;
        let home = dir.parent().unwrap_or(Path::new("/")).to_path_buf();
        let branch = fence::DEFAULT_BRANCH_REF.to_string();
        Ok(NodeRepo {
            worktrees: home.join("worktrees"),
            pool: home.join("worktree-pool"),
            dir,
            origin,
            origin_url,
            tracking: tracking_ref(&branch),
            branch,
        })
    }

    /// [`NodeRepo::open_or_clone`] for a remote origin, with the given credentials: the
    /// clone is a real one (objects copied, never borrowed), cloned when `dir` is absent
    /// or empty and fetched incrementally after. Checks at once that the server takes
    /// atomic pushes: the fence cannot land without them, and a user learns it at start
    /// rather than at the first merge.
    pub fn open_or_clone_remote(remote: Remote, dir: &Path) -> Result<NodeRepo, GitError> {
        let url = remote.url().to_string();
        if remote.url().is_local() {
            return NodeRepo::open_or_clone(&url, dir);
        }
        let branch = fence::DEFAULT_BRANCH_REF.to_string();
        if is_empty_dir(dir)? {
            if let Err(e) = remote.clone_into(dir, &branch) {
                // The directory was empty or absent: leave nothing half-cloned behind.
                let _ = std::fs::remove_dir_all(dir);
                return Err(e.into());
            }
        }
        let not_a_clone = |why: String| GitError::NotAClone {
            dir: dir.to_path_buf(),
            origin: url.clone(),
            why,
        };
        let repo = Repository::open_bare(dir).map_err(|e| {
            not_a_clone(format!("it is not a bare git repository ({})", e.message()))
        })?;
        let recorded = repo
            .find_remote(REMOTE)
            .map_err(|_| not_a_clone(format!("it has no `{REMOTE}` remote")))?
            .url()
            .ok()
            .map(str::to_string);
        if recorded.as_deref() != Some(url.as_str()) {
            let was = recorded
                .as_deref()
                .map(|u| super::remote::redact(u, &[]))
                .unwrap_or_else(|| "not UTF-8".into());
            return Err(not_a_clone(format!("its origin is {was}")));
        }
        NodeRepo::at(dir, Origin::Remote(std::sync::Arc::new(remote)), url)
    }

    /// Checks that a remote origin takes atomic pushes (a dry run; nothing is written),
    /// from main's commit. Local origins always do (the fence's ref transaction).
    pub fn check_atomic_push(&self) -> Result<(), GitError> {
        let Origin::Remote(remote) = &self.origin else {
            return Ok(());
        };
        let main = self.fetch_main()?;
        remote.check_atomic(&self.dir, main)?;
        Ok(())
    }

    /// Whether the origin is reached over the network (not a path on this machine).
    pub fn is_remote(&self) -> bool {
        matches!(self.origin, Origin::Remote(_))
    }

    /// The remote repository's name as every node writes it, whatever form of URL it
    /// was given ([`super::remote::RemoteUrl::repository`]); `None` for a local origin.
    pub fn remote_repository(&self) -> Option<String> {
        match &self.origin {
            Origin::Local(_) => None,
            Origin::Remote(remote) => remote.url().repository(),
        }
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

    /// A local origin's path, for [`crate::fence::Fence::open`] and [`main_log`]; `None`
    /// for a remote origin.
    pub fn origin_path(&self) -> Option<&Path> {
        match &self.origin {
            Origin::Local(path) => Some(path),
            Origin::Remote(_) => None,
        }
    }

    /// The origin as given (a remote URL without its password).
    pub fn origin_url(&self) -> &str {
        &self.origin_url
    }

    /// The node's clone.
    pub fn clone_dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn open(&self) -> Result<Repository, GitError> {
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

    /// Brings the clone's idea of main (and, from a remote origin, of `refs/mesh/*`) up
    /// to the origin's. A remote origin is fetched with `git fetch` (incremental: only
    /// what the clone lacks travels). A local origin's clone borrows the origin's
    /// object store ([`share_objects`]), so every object the origin has is already
    /// readable here and fetching is one ref read and, when main moved, one ref write:
    /// no pack is negotiated, built or indexed (libgit2's local transport did all three
    /// on every phase boundary, an eighth of an 8-node mesh's CPU).
    fn fetch(&self, repo: &Repository) -> Result<(), GitError> {
        let fetch_err = |source| GitError::Fetch {
            origin: self.origin_url.clone(),
            source,
        };
        let origin_path = match &self.origin {
            Origin::Local(path) => path,
            Origin::Remote(remote) => {
                // Two jobs of one node fetching into one clone would fight over its ref
                // locks: one at a time.
                let lock = clone_lock(&self.dir);
                let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
                return Ok(remote.fetch(&self.dir, &self.branch)?);
            }
        };
        let origin = Repository::open(origin_path).map_err(fetch_err)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::testkit::*;

    #[test]
    fn a_file_url_origin_is_cloned_like_a_path() {
        let w = world();
        let url = format!("file://{}", w.origin.display());
        let node = NodeRepo::open_or_clone(&url, &w.home.path().join("f/clone")).unwrap();
        assert_eq!(node.fetch_main().unwrap(), w.root);
        assert_eq!(
            node.origin_path(),
            Some(std::fs::canonicalize(&w.origin).unwrap().as_path())
        );
        assert!(!node.is_remote());
        let change = implement(&node, KEY_A, &[("a.txt", "a\n")]);
        node.push_work(KEY_A, "c1", change).unwrap();
        let gate = node
            .land(&request(KEY_A, change, 1, "peerA"), &no_cancel())
            .unwrap();
        assert!(matches!(gate, Gate::Landed { .. }), "{gate:?}");
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
}
