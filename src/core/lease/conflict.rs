//! Conflict prediction: will planned files collide with work in flight? `CoChange`
//! (files that change together) and `predict_conflict`.

use super::*;

// ---------------------------------------------------------------------------------------
// Conflict prediction
// ---------------------------------------------------------------------------------------

/// Commits touching more files than this are ignored by [`CoChange`]: mass renames and
/// reformatting say nothing about which files belong together, and would cost O(n²).
pub const COCHANGE_MAX_FILES_PER_COMMIT: usize = 64;

/// The most reasons a [`Conflict::Soft`] lists; the rest are summarised in one line.
pub const MAX_SOFT_REASONS: usize = 16;

/// How often pairs of files changed in the same commit. Pure: built from commits' file
/// lists (the git shell reads them), never from a repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoChange {
    pairs: BTreeMap<(String, String), u32>,
    min_support: u32,
}

impl CoChange {
    /// Counts, for each pair of files, the commits that changed both. A pair "changes
    /// together" once it reaches `min_support` commits (at least 1). Commits touching more
    /// than [`COCHANGE_MAX_FILES_PER_COMMIT`] files are skipped.
    pub fn from_commits(commits: &[Vec<String>], min_support: u32) -> CoChange {
        let mut pairs: BTreeMap<(String, String), u32> = BTreeMap::new();
        for files in commits {
            let files: BTreeSet<String> = files.iter().map(|f| normalize_lenient(f)).collect();
            if files.len() > COCHANGE_MAX_FILES_PER_COMMIT {
                continue;
            }
            let files: Vec<&String> = files.iter().collect();
            for (i, a) in files.iter().enumerate() {
                for b in &files[i + 1..] {
                    let n = pairs.entry(((*a).clone(), (*b).clone())).or_insert(0);
                    *n = n.saturating_add(1);
                }
            }
        }
        CoChange {
            pairs,
            min_support: min_support.max(1),
        }
    }

    /// How many commits changed both files.
    pub fn support(&self, a: &str, b: &str) -> u32 {
        let (a, b) = (normalize_lenient(a), normalize_lenient(b));
        let key = if a <= b { (a, b) } else { (b, a) };
        self.pairs.get(&key).copied().unwrap_or(0)
    }

    /// True if the two files changed together in at least `min_support` commits.
    pub fn changes_together(&self, a: &str, b: &str) -> bool {
        a != b && self.support(a, b) >= self.min_support.max(1)
    }
}

/// Normalises a path if it is valid; otherwise compares it as written (prediction is
/// advisory, and bad paths were already rejected when the story was written).
fn normalize_lenient(path: &str) -> String {
    normalize_repo_path(path).unwrap_or_else(|_| path.to_string())
}

/// Would planned work collide with work in flight?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    None,
    /// Likely to conflict at rebase: worth ordering after, not forbidden.
    Soft {
        reasons: Vec<String>,
    },
    /// A planned file is being changed by another story right now: do not start.
    Hard {
        story: String,
        file: String,
    },
}

/// Source roots under which the first directory is the module (`src/net/..` is `src/net`).
const SOURCE_ROOTS: [&str; 9] = [
    "src", "lib", "app", "pkg", "cmd", "internal", "crates", "packages", "tests",
];

/// The directory a file is in, or `None` at the repository root.
fn directory_of(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(dir, _)| dir)
}

/// The top-level module of a file: below a source root, the root plus the next component
/// without its extension (`src/lease.rs` and `src/lease/x.rs` are both `src/lease`);
/// elsewhere the first directory (`docs/a.md` is `docs`). Root-level files have none.
fn module_of(path: &str) -> Option<String> {
    let mut parts = path.split('/');
    let first = parts.next()?;
    let second = parts.next()?;
    if SOURCE_ROOTS.contains(&first) {
        let stem = second.split('.').next().unwrap_or(second);
        Some(format!("{first}/{stem}"))
    } else {
        Some(first.to_string())
    }
}

/// Predicts whether working on `planned` files would collide with `in_flight` work (each
/// other story in flight, with its planned files). The caller leaves the story being
/// planned out of `in_flight`.
///
/// - Hard: a planned file is in flight in another story (the smallest such file and
///   story are named, so the answer does not depend on input order).
/// - Soft: a planned file shares a directory (not the repository root) or a top-level
///   module with a file in flight, or the pair changed together in past commits.
/// - None otherwise.
pub fn predict_conflict(
    planned: &[String],
    in_flight: &[(String, Vec<String>)],
    cochange: &CoChange,
) -> Conflict {
    let planned: BTreeSet<String> = planned.iter().map(|p| normalize_lenient(p)).collect();
    let mut hard: Option<(String, String)> = None;
    let mut reasons: BTreeSet<String> = BTreeSet::new();
    for (story, files) in in_flight {
        for other in files.iter().map(|f| normalize_lenient(f)) {
            for mine in &planned {
                if *mine == other {
                    let candidate = (mine.clone(), story.clone());
                    if hard.as_ref().is_none_or(|h| candidate < *h) {
                        hard = Some(candidate);
                    }
                    continue;
                }
                if let (Some(d1), Some(d2)) = (directory_of(mine), directory_of(&other)) {
                    if d1 == d2 {
                        reasons.insert(format!(
                            "{mine} is in the same directory ({d1}) as {other}, in flight in {story}"
                        ));
                        continue;
                    }
                }
                if let (Some(m1), Some(m2)) = (module_of(mine), module_of(&other)) {
                    if m1 == m2 {
                        reasons.insert(format!(
                            "{mine} is in the same module ({m1}) as {other}, in flight in {story}"
                        ));
                        continue;
                    }
                }
                if cochange.changes_together(mine, &other) {
                    reasons.insert(format!(
                        "{mine} changed together with {other} (in flight in {story}) in {} past commits",
                        cochange.support(mine, &other)
                    ));
                }
            }
        }
    }
    if let Some((file, story)) = hard {
        return Conflict::Hard { story, file };
    }
    if reasons.is_empty() {
        return Conflict::None;
    }
    let total = reasons.len();
    let mut reasons: Vec<String> = reasons.into_iter().take(MAX_SOFT_REASONS).collect();
    if total > MAX_SOFT_REASONS {
        reasons.push(format!("and {} more", total - MAX_SOFT_REASONS));
    }
    Conflict::Soft { reasons }
}
