//! Story worktrees on `mesh/<story>`, recycled through `<home>/worktree-pool/`, and
//! `commit_all`.

use super::repo::clone_lock;
use super::*;
use git2::build::CheckoutBuilder;
use git2::{ErrorCode, IndexAddOption, ObjectType, Oid, Repository, WorktreeAddOptions};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Files this module keeps in git's metadata directory of each story worktree.
const KEY_FILE: &str = "mesh-story-key";
const BASE_FILE: &str = "mesh-base";
/// The per-clone lock under which worktrees move between the pool and stories.
fn pool_lock(dir: &Path) -> std::sync::Arc<std::sync::Mutex<()>> {
    clone_lock(&dir.join("worktree-pool"))
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

impl NodeRepo {
    /// Where the worktree of `story_key` lives (whether or not it exists).
    pub fn worktree_path(&self, story_key: &str) -> Result<PathBuf, GitError> {
        Ok(self.worktrees.join(story_names(story_key)?.dir))
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
    pub(super) fn checkout_detached(
        &self,
        story_key: &str,
        commit: Oid,
    ) -> Result<PathBuf, GitError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::testkit::*;

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
}
