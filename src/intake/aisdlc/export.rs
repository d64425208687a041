//! `mesh-agent export DIR`: the mesh's stories as ai-sdlc story folders
//! (`.ai-sdlc/stories/<id>/story.md`), with the mesh's progress — status, phase flags,
//! branch, merge commit — and the ai-sdlc fields an imported story brought along. Other
//! files in a story folder (ai-sdlc's section files) are left as they are; stories that
//! are not in the mesh are not touched.
//!
//! Export then import is the identity: a story read back from its exported file maps
//! onto the same title, body, priority, labels, dependencies, progress and fields.

use super::{Problem, STORY_FILE};
use crate::core::model::{Phase, StoryStatus, PRIORITY_MAX, PRIORITY_MIN};
use crate::core::state::StoryView;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use yaml_serde::{Mapping, Value};

/// One story file written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Written {
    pub path: PathBuf,
    /// Its id in the mesh.
    pub story: String,
    /// Its id (and folder) in ai-sdlc.
    pub id: String,
}

/// What an export wrote.
#[derive(Debug, Default, Serialize)]
pub struct ExportReport {
    /// The stories folder written to.
    pub root: PathBuf,
    pub written: Vec<Written>,
    pub notes: Vec<Problem>,
}

/// The stories folder to write under `dir`: its `.ai-sdlc/stories/` (created when
/// missing), or `dir` itself when it is a `.ai-sdlc` or `stories` folder.
pub fn target_dir(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.as_str() {
        ".ai-sdlc" => dir.join("stories"),
        "stories" => dir.to_path_buf(),
        _ => dir.join(".ai-sdlc").join("stories"),
    }
}

/// A folder name that stays inside the stories folder.
fn safe_folder(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Each story's folder (its ai-sdlc id): the id it was imported with, else its mesh
/// id; when that is taken or unsafe as a folder name, a name from its key.
pub fn folders(stories: &[&StoryView], notes: &mut Vec<Problem>) -> BTreeMap<String, String> {
    let mut order: Vec<&&StoryView> = stories.iter().collect();
    // Imported ids first: they name their folders in the project already.
    order.sort_by_key(|s| (s.fact.imported.is_none(), s.fact.number, s.key.clone()));
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for s in order {
        let wanted = s
            .fact
            .imported
            .as_ref()
            .map_or_else(|| s.id.to_string(), |i| i.id.clone());
        let name = if safe_folder(&wanted) && !taken.contains_key(wanted.as_str()) {
            wanted
        } else {
            let fallback: String = s
                .key
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            notes.push(Problem {
                path: PathBuf::from(&fallback),
                why: format!(
                    "{} cannot use the folder {wanted:?} ({}): written as {fallback}",
                    s.id,
                    if taken.contains_key(wanted.as_str()) {
                        "another story has it"
                    } else {
                        "not a safe folder name"
                    }
                ),
            });
            fallback
        };
        taken.insert(name.clone(), s.key.to_string());
        out.insert(s.key.to_string(), name);
    }
    out
}

/// `YYYY-MM-DD` of a time in ms since the epoch.
fn date(ms: u64) -> String {
    crate::core::calendar::iso_date(ms / 86_400_000)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, as ai-sdlc writes `merged_at`.
fn timestamp(ms: u64) -> String {
    let t = ms % 86_400_000;
    format!(
        "{}T{:02}:{:02}:{:02}.{:03}Z",
        date(ms),
        t / 3_600_000,
        t / 60_000 % 60,
        t / 1000 % 60,
        t % 1000
    )
}

/// A kept field's text back as YAML.
fn field_value(text: &str) -> Value {
    yaml_serde::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// The text of `s`'s story file: frontmatter in ai-sdlc's field order, then the body.
pub fn render(s: &StoryView, folders: &BTreeMap<String, String>) -> String {
    let imported = s.fact.imported.as_ref();
    let kept = |k: &str| {
        imported
            .and_then(|i| i.fields.get(k))
            .map(|t| field_value(t))
    };
    let done = |p: Phase| s.phases_done.contains(&p);
    let landed = s.more.merged.is_some();
    let mut m = Mapping::new();
    let mut put = |k: &str, v: Value| {
        m.insert(Value::String(k.to_string()), v);
    };
    let text = |t: &str| Value::String(t.to_string());
    put(
        "id",
        text(
            folders
                .get(s.key.as_str())
                .map_or(s.id.as_str(), String::as_str),
        ),
    );
    put("title", text(&s.fact.title));
    put(
        "slug",
        kept("slug").unwrap_or_else(|| text(&slugify(&s.fact.title))),
    );
    // ai-sdlc's own priority when the mesh had to bring it into range and nobody
    // changed it since.
    let priority = kept("priority")
        .filter(|v| {
            v.as_i64().is_some_and(|p| {
                p.clamp(i64::from(PRIORITY_MIN), i64::from(PRIORITY_MAX)) == i64::from(s.priority)
            }) || (v.as_i64().is_none() && s.priority == crate::core::model::PRIORITY_DEFAULT)
        })
        .unwrap_or_else(|| Value::Number(s.priority.into()));
    put("priority", priority);
    let (status, blocked) = match s.status {
        StoryStatus::Merged => ("done", None),
        StoryStatus::Cancelled => (
            "blocked",
            Some(format!(
                "cancelled in the mesh: {}",
                s.more.cancelled.as_ref().map_or("", |c| c.reason.as_str())
            )),
        ),
        StoryStatus::Blocked => ("blocked", s.more.blocked_reason.clone()),
        StoryStatus::InProgress => ("in-progress", None),
        StoryStatus::Ready => ("ready", None),
        StoryStatus::Backlog => ("backlog", None),
    };
    put("status", text(status));
    put("type", kept("type").unwrap_or_else(|| text("feature")));
    put(
        "created",
        kept("created").unwrap_or_else(|| text(&date(s.fact.created_at_ms))),
    );
    for k in ["updated", "assignee"] {
        if let Some(v) = kept(k) {
            put(k, v);
        }
    }
    put(
        "labels",
        Value::Sequence(s.fact.labels.iter().map(|l| text(l)).collect()),
    );
    if let Some(v) = kept("estimated_effort") {
        put("estimated_effort", v);
    }
    let deps: Vec<Value> = s
        .fact
        .depends_on
        .iter()
        .filter_map(|k| folders.get(k).map(|f| text(f)))
        .collect();
    if !deps.is_empty() {
        put("dependencies", Value::Sequence(deps));
    }
    if let Some(v) = kept("epic") {
        put("epic", v);
    }
    put("research_complete", Value::Bool(done(Phase::Research)));
    put("plan_complete", Value::Bool(done(Phase::Plan)));
    if done(Phase::PlanReview) || kept("plan_review_complete").is_some() {
        put("plan_review_complete", Value::Bool(done(Phase::PlanReview)));
    }
    put(
        "implementation_complete",
        Value::Bool(landed || done(Phase::Implement)),
    );
    put(
        "reviews_complete",
        Value::Bool(landed || done(Phase::Review)),
    );
    for k in ["plan_review_iteration", "pr_url", "pr_merged"] {
        if let Some(v) = kept(k) {
            put(k, v);
        }
    }
    if let Some(mf) = &s.more.merged {
        if !mf.commit.is_empty() {
            put("merge_sha", text(&mf.commit));
        }
        if mf.written_at_ms > 0 {
            put("merged_at", text(&timestamp(mf.written_at_ms)));
        }
    }
    let mesh_branch =
        done(Phase::Implement) && s.more.merged.as_ref().is_none_or(|m| !m.claim.is_empty());
    if mesh_branch {
        put(
            "branch",
            text(&format!(
                "{}{}",
                crate::git::STORY_BRANCH_PREFIX.trim_start_matches("refs/heads/"),
                s.key
            )),
        );
    } else if let Some(v) = kept("branch") {
        put("branch", v);
    }
    for k in [
        "content_type",
        "requires_source_changes",
        "ticket_provider",
        "ticket_id",
        "ticket_url",
        "ticket_synced_at",
    ] {
        if let Some(v) = kept(k) {
            put(k, v);
        }
    }
    if let Some(why) = blocked {
        put("blocked_reason", text(&why));
    }
    let yaml = quote_dates(&yaml_serde::to_string(&Value::Mapping(m)).unwrap_or_default());
    let body = s.fact.body.trim();
    if body.is_empty() {
        format!("---\n{yaml}---\n")
    } else {
        format!("---\n{yaml}---\n\n{body}\n")
    }
}

/// Dates and timestamps single-quoted, as ai-sdlc writes them: YAML 1.2 (this side)
/// reads `2026-01-05` as text, but ai-sdlc's YAML 1.1 reader would make it a date.
/// Only top-level `key: value` lines are touched (nested and continued lines are
/// indented).
fn quote_dates(yaml: &str) -> String {
    let looks_like_date = |v: &str| {
        let b = v.as_bytes();
        b.len() >= 10
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..7].iter().all(u8::is_ascii_digit)
            && b[7] == b'-'
            && b[8..10].iter().all(u8::is_ascii_digit)
            && v[10..]
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, 'T' | ':' | '.' | 'Z' | '+' | '-'))
    };
    let mut out = String::with_capacity(yaml.len() + 16);
    for line in yaml.lines() {
        match line.split_once(": ") {
            Some((k, v))
                if !line.starts_with([' ', '-'])
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && looks_like_date(v) =>
            {
                out.push_str(&format!("{k}: '{v}'"));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// ai-sdlc's slug: lower case, runs of other characters as one `-`, at most 50.
pub fn slugify(title: &str) -> String {
    let mut out = String::new();
    for c in title.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-');
    out.chars().take(50).collect::<String>()
}

/// Writes every story of `stories` under `dir` (see [`target_dir`]): one folder each,
/// `story.md` replaced atomically; nothing else in the folder is touched.
pub fn export(dir: &Path, stories: &[&StoryView]) -> Result<ExportReport, String> {
    let root = target_dir(dir);
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let mut report = ExportReport {
        root: root.clone(),
        ..ExportReport::default()
    };
    let folders = folders(stories, &mut report.notes);
    for s in stories {
        let Some(name) = folders.get(s.key.as_str()) else {
            continue;
        };
        let folder = root.join(name);
        let path = folder.join(STORY_FILE);
        write_atomic(&folder, &path, render(s, &folders).as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        report.written.push(Written {
            path,
            story: s.id.to_string(),
            id: name.clone(),
        });
    }
    Ok(report)
}

fn write_atomic(folder: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(folder)?;
    let tmp = folder.join(format!(".{STORY_FILE}.mesh-agent.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
