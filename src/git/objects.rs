//! Objects and refs at the origin: copying objects into it, pushing work refs, and
//! reading main's history (`main_log`).

use super::*;
use crate::fence;
use git2::{ObjectType, Oid, Repository};
use std::collections::HashSet;
use std::path::Path;

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

pub(super) fn first_parent_log(
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

/// What one commit changed, for the escalation triggers: the paths it touched and the
/// lines it added (path, line), at most [`MAX_SCANNED_LINES`] lines of at most
/// [`MAX_SCANNED_LINE`] bytes each (a generated file must not make the scan slow).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSummary {
    pub files: Vec<String>,
    pub added: Vec<(String, String)>,
}

/// Most added lines one change's scan reads.
pub const MAX_SCANNED_LINES: usize = 50_000;
/// Longest added line the scan reads (longer ones are cut).
pub const MAX_SCANNED_LINE: usize = 4096;

impl NodeRepo {
    /// What `commit` changed against its first parent (all of it, for a root commit).
    pub fn change_summary(&self, commit: Oid) -> Result<ChangeSummary, GitError> {
        let err = |op| git_err(op, &self.dir);
        let repo = Repository::open(&self.dir).map_err(err("open the clone"))?;
        let c = repo.find_commit(commit).map_err(err("read the change"))?;
        let tree = c.tree().map_err(err("read the change's tree"))?;
        let parent = match c.parent(0) {
            Ok(p) => Some(p.tree().map_err(err("read the parent's tree"))?),
            Err(_) => None,
        };
        let diff = repo
            .diff_tree_to_tree(parent.as_ref(), Some(&tree), None)
            .map_err(err("diff the change"))?;
        let mut out = ChangeSummary::default();
        for d in diff.deltas() {
            if let Some(p) = d.new_file().path().or_else(|| d.old_file().path()) {
                out.files.push(p.to_string_lossy().into_owned());
            }
        }
        diff.foreach(
            &mut |_, _| true,
            None,
            None,
            Some(&mut |delta, _, line| {
                if line.origin() == '+' && out.added.len() < MAX_SCANNED_LINES {
                    let path = delta
                        .new_file()
                        .path()
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let bytes = line.content();
                    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_SCANNED_LINE)]);
                    out.added.push((path, text.trim_end().to_string()));
                }
                true
            }),
        )
        .map_err(err("read the change's lines"))?;
        Ok(out)
    }

    /// Pushes `oid` to the origin as `refs/mesh/work/<story_key>/<claim>`, so that other
    /// nodes can fetch it for review and merge. Overwrites an earlier push of that claim.
    pub fn push_work(&self, story_key: &str, claim: &str, oid: Oid) -> Result<(), GitError> {
        let names = story_names(story_key)?;
        check_component("claim id", claim)?;
        if let Origin::Remote(remote) = &self.origin {
            remote.push_work(&self.dir, &names.key, claim, oid)?;
            return Ok(());
        }
        let name = format!("{WORK_REF_PREFIX}{}/{claim}", names.key);
        self.push(oid, &name)
    }

    /// Deletes the story's work refs at the origin (`refs/mesh/work/<story_key>/*`), once
    /// the story landed: nothing needs them, and a busy mesh would otherwise pile up a
    /// ref per phase. Returns how many were deleted; refs already gone are fine.
    pub fn drop_work_refs(&self, story_key: &str) -> Result<usize, GitError> {
        let names = story_names(story_key)?;
        let prefix = format!("{WORK_REF_PREFIX}{}/", names.key);
        match &self.origin {
            Origin::Local(path) => {
                let origin = Repository::open(path).map_err(git_err("open the origin", path))?;
                let mut refs = Vec::new();
                for r in origin
                    .references_glob(&format!("{prefix}*"))
                    .map_err(git_err("list work refs", path))?
                {
                    let r = r.map_err(git_err("list work refs", path))?;
                    if let Ok(name) = r.name() {
                        refs.push(name.to_string());
                    }
                }
                for name in &refs {
                    match origin.find_reference(name) {
                        Ok(mut r) => r.delete().map_err(git_err("delete a work ref", path))?,
                        Err(e) if e.code() == git2::ErrorCode::NotFound => {}
                        Err(e) => return Err(git_err("delete a work ref", path)(e)),
                    }
                }
                Ok(refs.len())
            }
            Origin::Remote(remote) => {
                // What the origin holds, as of a fresh fetch (tracking refs mirror it).
                self.fetch_main()?;
                let repo = self.open()?;
                let tracked = super::remote::tracking_ref(&prefix);
                let mut refs = Vec::new();
                for r in repo
                    .references_glob(&format!("{tracked}*"))
                    .map_err(git_err("list work refs", &self.dir))?
                {
                    let r = r.map_err(git_err("list work refs", &self.dir))?;
                    if let Some(claim) =
                        r.name().ok().and_then(|n| n.strip_prefix(tracked.as_str()))
                    {
                        refs.push(format!("{prefix}{claim}"));
                    }
                }
                for name in &refs {
                    remote.delete_ref(&self.dir, name)?;
                }
                Ok(refs.len())
            }
        }
    }

    /// Copies `oid` and everything it reaches that a local origin lacks into it, then
    /// points `ref_name` there. (A remote origin gets objects with its pushes.)
    pub(super) fn push(&self, oid: Oid, ref_name: &str) -> Result<(), GitError> {
        let Origin::Local(origin_path) = &self.origin else {
            return Ok(());
        };
        let local = self.open()?;
        let origin =
            Repository::open(origin_path).map_err(git_err("open the origin", origin_path))?;
        copy_objects(&local, &self.dir, &origin, origin_path, oid)?;
        retry_locked(
            ref_name,
            origin_path,
            || origin.reference(ref_name, oid, true, "mesh-agent: push"),
            git_err("write a ref", origin_path),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::testkit::*;

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
    fn a_landed_storys_work_refs_are_dropped_at_the_origin_and_no_other_storys() {
        let w = world();
        let a = w.node("a");
        let change = implement(&a, KEY_A, &[("a.txt", "a\n")]);
        a.push_work(KEY_A, "c1", change).unwrap();
        a.push_work(KEY_A, "c2", change).unwrap();
        a.push_work(KEY_B, "c3", change).unwrap();
        let origin = Repository::open(&w.origin).unwrap();
        let work = |key: &str| {
            origin
                .references_glob(&format!("{WORK_REF_PREFIX}{key}/*"))
                .unwrap()
                .count()
        };
        assert_eq!((work(KEY_A), work(KEY_B)), (2, 1));
        assert_eq!(a.drop_work_refs(KEY_A).unwrap(), 2);
        assert_eq!((work(KEY_A), work(KEY_B)), (0, 1));
        assert_eq!(a.drop_work_refs(KEY_A).unwrap(), 0, "again: nothing left");
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
}
