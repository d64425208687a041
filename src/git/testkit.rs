//! Fixtures shared by the git shell's unit tests.

use super::*;
use crate::core::model::Phase;
use crate::fence;
use git2::{Oid, Repository, Signature};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub(super) const KEY_A: &str = "S-0001@aaaa1111";
pub(super) const KEY_B: &str = "S-0002@bbbb2222";
pub(super) const MAIN: &str = fence::DEFAULT_BRANCH_REF;

/// A home directory holding a bare origin (`origin.git`) whose main has one commit
/// with `README` and `test.sh`.
pub(super) struct World {
    pub(super) home: tempfile::TempDir,
    pub(super) origin: PathBuf,
    pub(super) root: Oid,
}

pub(super) fn world() -> World {
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
    pub(super) fn node(&self, name: &str) -> NodeRepo {
        let dir = self.home.path().join(name).join("clone");
        NodeRepo::open_or_clone(self.origin.to_str().unwrap(), &dir).unwrap()
    }

    pub(super) fn main(&self) -> Oid {
        Repository::open(&self.origin)
            .unwrap()
            .refname_to_id(MAIN)
            .unwrap()
    }
}

pub(super) fn trailers(key: &str, phase: Phase, fence: u128, node: &str) -> Trailers {
    Trailers {
        story: key.split('@').next().unwrap().to_string(),
        story_key: key.to_string(),
        phase,
        fence,
        node: node.to_string(),
    }
}

/// Prepares the story's worktree at main, writes `files` and commits them.
pub(super) fn implement(node: &NodeRepo, key: &str, files: &[(&str, &str)]) -> Oid {
    let base = node.fetch_main().unwrap();
    let wt = node.prepare_worktree(key, base).unwrap();
    for (path, content) in files {
        std::fs::write(wt.join(path), content).unwrap();
    }
    let t = trailers(key, Phase::Implement, 1, "peerA");
    node.commit_all(&wt, "implement", "", &t).unwrap().unwrap()
}

pub(super) fn request(key: &str, change: Oid, token: u128, holder: &str) -> LandRequest {
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

pub(super) fn message_of(repo_dir: &Path, oid: Oid) -> String {
    let repo = Repository::open(repo_dir).unwrap();
    let commit = repo.find_commit(oid).unwrap();
    commit.message().unwrap().to_string()
}

pub(super) fn no_cancel() -> AtomicBool {
    AtomicBool::new(false)
}
