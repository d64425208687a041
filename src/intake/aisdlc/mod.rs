//! ai-sdlc backlogs in and out: `mesh-agent import DIR` reads an ai-sdlc project's
//! `.ai-sdlc/stories/<id>/story.md` files (YAML frontmatter + Markdown body) into the
//! mesh, `mesh-agent export DIR` ([`export`]) writes the mesh's stories back in the same
//! format with their progress.
//!
//! Real backlogs are messy, so reading never aborts for one file: each story file is
//! read on its own, a file that cannot be a story (no frontmatter, bad YAML, no id, a
//! duplicate id, no title) is skipped with its path and reason, and a field that
//! cannot be mapped (an unknown field, a status outside ai-sdlc's set, a run history,
//! a priority out of range, a body over the limit) is noted with the story's path. What
//! the mesh does not use but ai-sdlc does (slug, type, epic, created, branch, …) rides
//! along in the story fact ([`Imported::fields`]) so export gives it back.
//!
//! Mapping: the id is kept where no mesh story has its number; `research_complete`,
//! `plan_complete` and `plan_review_complete` carry over (the walk starts after them);
//! `status: done` is a landing (merged, with `merge_sha`); implementation and reviews
//! done without a landing do not carry over — the change is on a branch of the ai-sdlc
//! repository, not in the mesh's origin — so the mesh implements again, and says so.
//! ai-sdlc's section files (`research.md`, `plan.md`, `plan_review.md`, `review.md`)
//! are appended to the body under the headings ai-sdlc itself falls back to, so the
//! mesh's later phases read the research and plan.

pub mod export;
mod plan;

pub use plan::{imported_ids, plan, Plan};

use crate::core::imported::{Imported, PriorMerge, AI_SDLC, MAX_FIELDS, MAX_ID};
use crate::core::model::{
    NewStory, Phase, MAX_BODY_BYTES, MAX_LABELS, MAX_LABEL_CHARS, MAX_TITLE_CHARS, PRIORITY_MAX,
    PRIORITY_MIN,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use yaml_serde::Value;

/// The file a story folder holds.
pub const STORY_FILE: &str = "story.md";
/// The largest story file read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// ai-sdlc's section files, and the heading each goes under in the body.
pub const SECTIONS: [(&str, &str); 4] = [
    ("research.md", "Research"),
    ("plan.md", "Implementation Plan"),
    ("plan_review.md", "Plan Review"),
    ("review.md", "Review Notes"),
];

/// Fields ai-sdlc uses that the mesh keeps verbatim for the way back.
pub const KEPT: [&str; 17] = [
    "slug",
    "type",
    "created",
    "updated",
    "assignee",
    "epic",
    "estimated_effort",
    "branch",
    "pr_url",
    "pr_merged",
    "content_type",
    "requires_source_changes",
    "plan_review_iteration",
    "ticket_provider",
    "ticket_id",
    "ticket_url",
    "ticket_synced_at",
];

/// Fields the mesh maps onto its own.
const USED: [&str; 13] = [
    "id",
    "title",
    "priority",
    "status",
    "labels",
    "dependencies",
    "research_complete",
    "plan_complete",
    "plan_review_complete",
    "implementation_complete",
    "reviews_complete",
    "merge_sha",
    "merged_at",
];

/// ai-sdlc's record of its own runs: meaningless to the mesh, which keeps its own.
const HISTORY: [&str; 21] = [
    "refinement_iterations",
    "refinement_count",
    "max_refinement_attempts",
    "retry_count",
    "max_retries",
    "last_restart_reason",
    "last_restart_timestamp",
    "review_history",
    "implementation_retry_count",
    "max_implementation_retries",
    "total_recovery_attempts",
    "blocked_reason",
    "blocked_at",
    "blocked_diagnostic",
    "error_history",
    "tdd_enabled",
    "tdd_current_test",
    "tdd_test_history",
    "last_test_run",
    "last_error",
    "worktree_path",
];

/// ai-sdlc's statuses.
pub const STATUSES: [&str; 5] = ["backlog", "ready", "in-progress", "done", "blocked"];

/// A story file read and mapped.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The story file.
    pub path: PathBuf,
    /// The story as the mesh takes it (dependencies not yet resolved: see `depends`).
    pub story: NewStory,
    /// The ai-sdlc ids it depends on.
    pub depends: Vec<String>,
    /// What could not be mapped, one sentence each.
    pub notes: Vec<String>,
}

impl Found {
    /// Its ai-sdlc id.
    pub fn id(&self) -> &str {
        self.story.imported.as_ref().map_or("", |i| i.id.as_str())
    }
}

/// A file or folder that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: PathBuf,
    pub why: String,
}

/// Everything read from a stories folder.
#[derive(Debug, Default)]
pub struct Scan {
    /// The stories folder read.
    pub root: PathBuf,
    pub found: Vec<Found>,
    /// Story files and folders that could not be imported.
    pub skipped: Vec<Problem>,
    /// Other files found (beside the story folders or a story file): not imported.
    pub strays: Vec<Problem>,
}

/// The stories folder of `dir`: the project root (holding `.ai-sdlc/`), its `.ai-sdlc/`,
/// or the stories folder itself.
pub fn stories_dir(dir: &Path) -> Result<PathBuf, String> {
    let candidates = [
        dir.join(".ai-sdlc").join("stories"),
        dir.join("stories"),
        dir.to_path_buf(),
    ];
    for c in &candidates[..2] {
        if c.is_dir() {
            return Ok(c.clone());
        }
    }
    if dir.is_dir() && holds_story_folders(dir) {
        return Ok(dir.to_path_buf());
    }
    if !dir.exists() {
        return Err(format!("{}: no such directory", dir.display()));
    }
    Err(format!(
        "{}: no ai-sdlc stories here (looked for .ai-sdlc/stories/, stories/ and */story.md)",
        dir.display()
    ))
}

fn holds_story_folders(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.filter_map(Result::ok)
            .any(|e| e.path().join(STORY_FILE).is_file())
    })
}

/// Reads every story folder under `dir` (see [`stories_dir`]), in path order. Fails
/// only when there is no stories folder to read; every problem with one story is in
/// [`Scan::skipped`] or its notes.
pub fn scan(dir: &Path) -> Result<Scan, String> {
    let root = stories_dir(dir)?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| format!("{}: {e}", root.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    let mut scan = Scan {
        root,
        ..Scan::default()
    };
    for path in entries {
        if !path.is_dir() {
            scan.strays.push(Problem {
                why: "a file beside the story folders, not a story: not imported".into(),
                path,
            });
            continue;
        }
        let file = path.join(STORY_FILE);
        if !file.is_file() {
            scan.skipped.push(Problem {
                path,
                why: format!("no {STORY_FILE} in this folder: not a story"),
            });
            continue;
        }
        match read_folder(&path, &file) {
            Ok((found, strays)) => {
                scan.found.push(found);
                scan.strays.extend(strays);
            }
            Err(why) => scan.skipped.push(Problem { path: file, why }),
        }
    }
    drop_duplicates(&mut scan);
    Ok(scan)
}

/// One folder: its story file parsed, section files appended, stray files named.
fn read_folder(dir: &Path, file: &Path) -> Result<(Found, Vec<Problem>), String> {
    let text = read_text(file)?;
    let mut found = parse(&text)?;
    found.path = file.to_path_buf();
    let folder = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if folder != found.id() {
        found.notes.push(format!(
            "the folder is named {folder:?} but the story's id is {:?}: imported by its id",
            found.id()
        ));
    }
    let mut strays = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    names.sort();
    let mut sections = Vec::new();
    for p in names {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == STORY_FILE {
            continue;
        }
        match SECTIONS.iter().find(|(f, _)| *f == name) {
            Some((_, heading)) if p.is_file() => match read_text(&p) {
                Ok(t) => sections.push((*heading, t)),
                Err(why) => strays.push(Problem { path: p, why }),
            },
            _ => strays.push(Problem {
                path: p,
                why: "not a story file or an ai-sdlc section: not imported".into(),
            }),
        }
    }
    sections.sort_by_key(|(h, _)| SECTIONS.iter().position(|(_, x)| x == h));
    let mut body = std::mem::take(&mut found.story.body);
    for (heading, text) in sections {
        let text = text.trim();
        if text.is_empty() || body.contains(&format!("## {heading}\n")) {
            continue;
        }
        if !body.is_empty() {
            body.push_str("\n\n");
        }
        body.push_str(&format!("## {heading}\n\n{text}"));
    }
    found.story.body = fit_body(body, &mut found.notes);
    Ok((found, strays))
}

fn read_text(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "larger than {} KiB: not a story file",
            MAX_FILE_BYTES >> 10
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (byte {}): not imported",
            e.utf8_error().valid_up_to()
        )
    })
}

/// The body within the mesh's limit: cut at a character boundary, with a line that
/// says so, and a note.
fn fit_body(body: String, notes: &mut Vec<String>) -> String {
    if body.len() <= MAX_BODY_BYTES {
        return body;
    }
    let marker = format!(
        "\n\n[cut by mesh-agent import: the body was {} bytes]",
        body.len()
    );
    let mut end = MAX_BODY_BYTES - marker.len();
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    notes.push(format!(
        "the body is {} bytes; the mesh keeps {} KiB: the rest is cut",
        body.len(),
        MAX_BODY_BYTES >> 10
    ));
    format!("{}{marker}", &body[..end])
}

/// Several folders with one id: the one in the folder named by the id is kept (else the
/// first by path); the others are skipped, naming the one kept.
fn drop_duplicates(scan: &mut Scan) {
    let named = |f: &Found| {
        f.path
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n.to_string_lossy() == f.id())
    };
    let mut keep: BTreeMap<String, usize> = BTreeMap::new();
    for (i, f) in scan.found.iter().enumerate() {
        let better = match keep.get(f.id()) {
            None => true,
            Some(&j) => !named(&scan.found[j]) && named(f),
        };
        if better {
            keep.insert(f.id().to_string(), i);
        }
    }
    let kept: BTreeMap<String, PathBuf> = keep
        .iter()
        .map(|(id, &j)| (id.clone(), scan.found[j].path.clone()))
        .collect();
    let found = std::mem::take(&mut scan.found);
    for (i, f) in found.into_iter().enumerate() {
        if keep.get(f.id()) == Some(&i) {
            scan.found.push(f);
            continue;
        }
        let other = kept.get(f.id()).map(|p| p.display().to_string());
        scan.skipped.push(Problem {
            why: format!(
                "duplicate id {:?} (kept {}): skipped",
                f.id(),
                other.unwrap_or_default()
            ),
            path: f.path,
        });
    }
    scan.skipped.sort_by(|a, b| a.path.cmp(&b.path));
}

/// Splits a story file into its YAML frontmatter and its body.
pub fn split(text: &str) -> Result<(&str, &str), String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let rest = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
        .ok_or("no YAML frontmatter (the file must start with a line `---`)")?;
    let mut at = 0;
    for line in rest.split_inclusive('\n') {
        let l = line.trim_end_matches(['\r', '\n']);
        if l == "---" || l == "..." {
            return Ok((&rest[..at], &rest[at + line.len()..]));
        }
        at += line.len();
    }
    Err("the YAML frontmatter is not closed (no line `---` after it)".into())
}

/// One story file's text mapped onto a story (path left empty).
pub fn parse(text: &str) -> Result<Found, String> {
    let (yaml, body) = split(text)?;
    let value: Value = yaml_serde::from_str(yaml).map_err(|e| format!("bad YAML: {e}"))?;
    let Value::Mapping(map) = value else {
        return Err("the frontmatter is not a set of `key: value` fields".into());
    };
    let mut fm: BTreeMap<String, Value> = BTreeMap::new();
    let mut notes = Vec::new();
    for (k, v) in map {
        match k {
            Value::String(k) => {
                fm.insert(k, v);
            }
            other => notes.push(format!(
                "a field named {} is not text: ignored",
                show(&other)
            )),
        }
    }
    let id = match fm.get("id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err("`id` is not text".into()),
        None => return Err("no `id` in the frontmatter".into()),
    };
    if id.len() > MAX_ID || id.chars().any(|c| c.is_control() || c == '/' || c == '\\') {
        return Err(format!(
            "id {id:?} is over {MAX_ID} bytes or holds a control character or slash"
        ));
    }
    let body = body.trim().to_string();
    let title = match fm.get("title") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => body
            .lines()
            .find_map(|l| l.strip_prefix("# "))
            .map(str::to_string)
            .ok_or("no `title` in the frontmatter and no `# heading` in the body")?,
    };
    let title = clean_title(&title, &mut notes);
    let priority = priority(fm.get("priority"), &mut notes);
    let labels = strings(fm.get("labels"), "labels", &mut notes);
    let labels = fit_labels(labels, &mut notes);
    let depends = strings(fm.get("dependencies"), "dependencies", &mut notes);
    let flag = |name: &str, notes: &mut Vec<String>| match fm.get(name) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            notes.push(format!(
                "{name} is {} (not true or false): taken as false",
                show(v)
            ));
            false
        }
    };
    let status = match fm.get("status") {
        Some(Value::String(s)) if STATUSES.contains(&s.as_str()) => s.clone(),
        None => {
            notes.push("no status: taken from the phase flags".into());
            String::new()
        }
        Some(v) => {
            notes.push(format!(
                "status {} is not one of {}: taken from the phase flags",
                show(v),
                STATUSES.join(", ")
            ));
            String::new()
        }
    };
    let mut done = Vec::new();
    for (name, phase) in [
        ("research_complete", Phase::Research),
        ("plan_complete", Phase::Plan),
        ("plan_review_complete", Phase::PlanReview),
    ] {
        if flag(name, &mut notes) {
            done.push(phase);
        }
    }
    let implemented = flag("implementation_complete", &mut notes);
    let reviewed = flag("reviews_complete", &mut notes);
    let merged = (status == "done").then(|| PriorMerge {
        commit: match fm.get("merge_sha") {
            Some(Value::String(s)) if s.len() <= MAX_ID * 2 => s.trim().to_string(),
            _ => String::new(),
        },
        at_ms: match fm.get("merged_at") {
            Some(Value::String(s)) => parse_time(s).unwrap_or(0),
            _ => 0,
        },
    });
    if merged.is_none() && (implemented || reviewed) {
        notes.push(format!(
            "{} done in ai-sdlc but not landed: the change is on the ai-sdlc repository's \
             branch{}, not in the mesh's origin, so the mesh implements it again",
            if reviewed {
                "implementation and review"
            } else {
                "implementation"
            },
            match fm.get("branch") {
                Some(Value::String(b)) => format!(" {b}"),
                _ => String::new(),
            }
        ));
    }
    if status == "blocked" {
        let why = match fm.get("blocked_reason") {
            Some(Value::String(r)) => format!(" ({r})"),
            _ => String::new(),
        };
        notes.push(format!(
            "blocked in ai-sdlc{why}: the mesh does not carry a block over; it runs again \
             (pause it with `mesh-agent pause` if it must wait)"
        ));
    }
    let mut fields = BTreeMap::new();
    for (k, v) in &fm {
        let k = k.as_str();
        if USED.contains(&k) {
            continue;
        }
        if HISTORY.contains(&k) {
            let said = status == "blocked" && matches!(k, "blocked_reason" | "blocked_at");
            if !matches!(v, Value::Null) && !said {
                notes.push(format!("{k}: ai-sdlc's run history, not carried"));
            }
            continue;
        }
        if !KEPT.contains(&k) {
            notes.push(format!("unknown field {k:?}: not imported"));
            continue;
        }
        match scalar_text(v) {
            Some(t) if t.len() <= crate::core::imported::MAX_FIELD_VALUE => {
                fields.insert(k.to_string(), t);
            }
            Some(_) => notes.push(format!("{k} is too long to keep: not carried")),
            None => notes.push(format!("{k} is not a single value: not carried")),
        }
    }
    if let Some(original) = priority.1 {
        fields.insert("priority".into(), original);
    }
    debug_assert!(fields.len() <= MAX_FIELDS);
    Ok(Found {
        path: PathBuf::new(),
        story: NewStory {
            title,
            body,
            priority: Some(priority.0),
            depends_on: Vec::new(),
            files: Vec::new(),
            labels,
            imported: Some(Imported {
                from: AI_SDLC.into(),
                id,
                done,
                merged,
                fields,
            }),
        },
        depends,
        notes,
    })
}

/// A YAML value in a note.
fn show(v: &Value) -> String {
    scalar_text(v).unwrap_or_else(|| "a list or a map".into())
}

/// A scalar as YAML text (what [`export`] parses back); None for lists and maps.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            yaml_serde::to_string(v)
                .ok()
                .map(|t| t.trim_end().to_string())
        }
        Value::Tagged(t) => scalar_text(&t.value),
        _ => None,
    }
}

fn clean_title(title: &str, notes: &mut Vec<String>) -> String {
    let cleaned: String = title
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut cleaned = cleaned.trim().to_string();
    if cleaned.chars().count() > MAX_TITLE_CHARS {
        cleaned = cleaned.chars().take(MAX_TITLE_CHARS).collect();
        notes.push(format!(
            "the title is over {MAX_TITLE_CHARS} characters: cut"
        ));
    } else if cleaned != title {
        notes.push("the title held control characters or spaces at its ends: cleaned".into());
    }
    cleaned
}

/// The mesh's priority, and ai-sdlc's when it had to change (kept for export).
fn priority(v: Option<&Value>, notes: &mut Vec<String>) -> (u32, Option<String>) {
    let default = crate::core::model::PRIORITY_DEFAULT;
    match v {
        None => (default, None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(p) if (i64::from(PRIORITY_MIN)..=i64::from(PRIORITY_MAX)).contains(&p) => {
                (p as u32, None)
            }
            Some(p) => {
                let c = p.clamp(i64::from(PRIORITY_MIN), i64::from(PRIORITY_MAX)) as u32;
                notes.push(format!(
                    "priority {p} is outside the mesh's {PRIORITY_MIN}..={PRIORITY_MAX}: runs at {c}"
                ));
                (c, Some(p.to_string()))
            }
            None => {
                notes.push(format!(
                    "priority {n} is not a whole number: runs at {default}"
                ));
                (default, scalar_text(&Value::Number(n.clone())))
            }
        },
        Some(v) => {
            notes.push(format!(
                "priority {} is not a number: runs at {default}",
                show(v)
            ));
            (default, scalar_text(v))
        }
    }
}

/// A list of text (one text is a list of one); other items are noted and left out.
fn strings(v: Option<&Value>, name: &str, notes: &mut Vec<String>) -> Vec<String> {
    let one = |v: &Value| match v {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let mut out = Vec::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(items)) => {
            for i in items {
                match one(i) {
                    Some(s) if !s.is_empty() => {
                        if !out.contains(&s) {
                            out.push(s)
                        }
                    }
                    Some(_) => {}
                    None => notes.push(format!("an item of {name} is not text: left out")),
                }
            }
        }
        Some(v) => match one(v) {
            Some(s) if !s.is_empty() => out.push(s),
            _ => notes.push(format!("{name} is not a list: left out")),
        },
    }
    out
}

fn fit_labels(labels: Vec<String>, notes: &mut Vec<String>) -> Vec<String> {
    let (ok, long): (Vec<String>, Vec<String>) = labels
        .into_iter()
        .partition(|l| l.chars().count() <= MAX_LABEL_CHARS && !l.chars().any(char::is_control));
    for l in long {
        notes.push(format!(
            "label {l:?} is over {MAX_LABEL_CHARS} characters or not printable: left out"
        ));
    }
    if ok.len() > MAX_LABELS {
        notes.push(format!(
            "{} labels; the mesh keeps the first {MAX_LABELS}",
            ok.len()
        ));
    }
    ok.into_iter().take(MAX_LABELS).collect()
}

/// `2026-01-05`, `2026-01-05T10:20:30Z` or `…T10:20:30.123Z` as ms since the epoch
/// (UTC; an offset other than Z is refused).
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, time) = s.split_once('T').unwrap_or((s, ""));
    let mut d = date.splitn(3, '-').map(|x| x.parse::<u64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || y < 1970 {
        return None;
    }
    let mut ms = crate::core::calendar::days_from_civil(y, m, day) * 86_400_000;
    if !time.is_empty() {
        let time = time.strip_suffix('Z')?;
        let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
        let mut t = hms.splitn(3, ':').map(|x| x.parse::<u64>().ok());
        let (h, mi, sec) = (t.next()??, t.next()??, t.next().flatten().unwrap_or(0));
        if h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        let millis = match frac.len() {
            0 => 0,
            n => frac.get(..n.min(3))?.parse::<u64>().ok()? * 10u64.pow(3 - n.min(3) as u32),
        };
        ms += ((h * 60 + mi) * 60 + sec) * 1000 + millis;
    }
    Some(ms)
}

#[cfg(test)]
mod tests;
