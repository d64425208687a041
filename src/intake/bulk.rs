//! `story add --from FILE`: one story per line of JSON, the same fields as the flags
//! (`title`, `body`, `priority`, `depends`, `files`, `labels`). Every line is checked
//! before anything is written; the good stories go in as one batch (one change, one
//! durable write, one push: [`crate::core::state::Doc::add_story_batch`]).
//!
//! A dependency names a story already in the mesh (`S-0042` or its key), a story
//! earlier in the file by the display id it will get (numbers are assigned in file
//! order after the highest in the mesh), or an earlier line of the file as `#N` (line
//! N, counted from 1 like an editor counts). Blank lines are skipped.

use crate::core::model::{InputError, NewStory};
use crate::core::state::{BatchError, BATCH_REF_PREFIX, MAX_BATCH_STORIES};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Stories to add in one change, with the line of the file each came from (for error
/// messages; empty when they did not come from a file). Dependencies written `#N` name
/// the batch's N-th story.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoryBatch {
    pub stories: Vec<NewStory>,
    #[serde(default)]
    pub lines: Vec<u64>,
}

impl StoryBatch {
    /// Why the batch was refused, naming the line of the story at fault when known.
    pub fn describe(&self, e: &BatchError) -> String {
        match e.index {
            Some(i) => match self.lines.get(i) {
                Some(line) => format!("line {line}: {}", e.error),
                None => format!("story {} of the batch: {}", i + 1, e.error),
            },
            None => e.error.to_string(),
        }
    }
}

/// The largest batch body the control endpoint reads (`POST /v1/stories/batch`).
pub const MAX_BATCH_BODY_BYTES: usize = 256 << 20;

/// A story of a batch as the node answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    pub id: String,
    pub key: String,
    pub title: String,
}

impl Added {
    pub fn of(s: &crate::core::state::StoryView) -> Added {
        Added {
            id: s.id.to_string(),
            key: s.key.to_string(),
            title: s.fact.title.to_string(),
        }
    }
}

/// One story line as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoryLine {
    title: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    priority: Option<u32>,
    #[serde(default, alias = "depends_on")]
    depends: Vec<String>,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default, alias = "label")]
    labels: Vec<String>,
}

/// A line of the file that cannot be added, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: u64,
    pub why: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.why)
    }
}

/// Parses and checks every line of a JSON-lines file: the batch of its stories, or
/// every bad line with its reason (in line order). What needs the mesh's document —
/// dependencies on stories already in it — is checked by the node, which names the line
/// too (see [`StoryBatch::describe`]).
pub fn parse_jsonl(text: &str) -> Result<StoryBatch, Vec<LineError>> {
    let mut batch = StoryBatch::default();
    let mut errors = Vec::new();
    // Line number → position in the batch (from 1), for `#N` references.
    let mut ordinal: HashMap<u64, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i as u64 + 1;
        if raw.trim().is_empty() {
            continue;
        }
        match parse_line(raw, line, &ordinal) {
            Ok(story) => {
                batch.stories.push(story);
                batch.lines.push(line);
                ordinal.insert(line, batch.stories.len());
            }
            Err(why) => errors.push(LineError { line, why }),
        }
    }
    if batch.stories.len() > MAX_BATCH_STORIES {
        errors.push(LineError {
            line: batch.lines.get(MAX_BATCH_STORIES).copied().unwrap_or(0),
            why: format!("more than {MAX_BATCH_STORIES} stories in one file: split it"),
        });
    }
    if errors.is_empty() {
        Ok(batch)
    } else {
        Err(errors)
    }
}

fn parse_line(raw: &str, line: u64, ordinal: &HashMap<u64, usize>) -> Result<NewStory, String> {
    let s: StoryLine = serde_json::from_str(raw).map_err(|e| format!("not a story: {e}"))?;
    let mut depends_on = Vec::with_capacity(s.depends.len());
    for d in s.depends {
        let d = d.trim();
        match d.strip_prefix(BATCH_REF_PREFIX) {
            Some(n) => {
                let target = n
                    .parse::<u64>()
                    .map_err(|_| format!("dependency {d:?}: write #N with N a line number"))?;
                if target >= line {
                    return Err(format!(
                        "dependency {d:?}: a story may depend only on an earlier line"
                    ));
                }
                let pos = ordinal.get(&target).ok_or_else(|| {
                    format!("dependency {d:?}: line {target} is blank or not a valid story")
                })?;
                depends_on.push(format!("{BATCH_REF_PREFIX}{pos}"));
            }
            None => depends_on.push(d.to_string()),
        }
    }
    let new = NewStory {
        title: s.title,
        body: s.body,
        priority: s.priority,
        depends_on,
        files: s.files,
        labels: s.labels,
        imported: None,
    };
    new.validate().map_err(|e: InputError| e.to_string())?;
    Ok(new)
}

/// Why [`offline_add`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The batch itself was refused (a line names the story at fault).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
}

/// Adds `batch` straight into the store of a node that is not running, in one change
/// (the CLI's path when no control endpoint answers). Fails clearly if the data dir is
/// locked.
pub fn offline_add(
    data_dir: &std::path::Path,
    key: &libp2p::identity::Keypair,
    batch: &StoryBatch,
    operators: &std::collections::BTreeSet<String>,
) -> Result<Vec<Added>, OfflineError> {
    use crate::node::NodeError;
    use rand::RngCore;
    let mut store = crate::store::Store::open(data_dir).map_err(NodeError::from)?;
    let mut actor = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut actor);
    let signer = crate::identity::signer(key).map_err(NodeError::from)?;
    let creator = signer.author().to_string();
    let mut doc =
        crate::node::load_stored_doc(&store, actor, operators.clone())?.with_signer(signer);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let keys = doc
        .add_story_batch(&batch.stories, "cli", &creator, now)
        .map_err(|e| OfflineError::Refused(batch.describe(&e)))?;
    store
        .append_chunk(&doc.save_incremental())
        .map_err(NodeError::from)?;
    store.flush_blocking().map_err(NodeError::from)?;
    let view = doc.view();
    keys.iter()
        .map(|k| view.stories.get(k.as_str()).map(|s| Added::of(s)))
        .collect::<Option<Vec<_>>>()
        .ok_or(OfflineError::Node(NodeError::Vanished))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_line_is_named_and_line_refs_become_positions() {
        let text = "{\"title\":\"a\"}\n\n{\"title\":\"b\",\"depends\":[\"#1\"]}\n\
                    {\"title\":\"\"}\n{\"title\":\"c\",\"depends\":[\"#4\"]}\nnot json\n\
                    {\"title\":\"d\",\"prio\":3}\n{\"title\":\"e\",\"depends\":[\"#9\"]}\n";
        let errs = parse_jsonl(text).unwrap_err();
        let lines: Vec<u64> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![4, 5, 6, 7, 8], "{errs:?}");
        assert!(errs[0].why.contains("title is empty"), "{}", errs[0]);
        assert!(errs[1].why.contains("line 4"), "{}", errs[1]);
        assert!(errs[3].why.contains("prio"), "{}", errs[3]);
        assert!(errs[4].why.contains("earlier line"), "{}", errs[4]);

        let ok = parse_jsonl("{\"title\":\"a\"}\n\n{\"title\":\"b\",\"depends\":[\"#1\",\"S-0007\"],\"labels\":[\"x\"]}\n").unwrap();
        assert_eq!(ok.lines, vec![1, 3]);
        assert_eq!(ok.stories[1].depends_on, vec!["#1", "S-0007"]);
        assert_eq!(ok.stories[1].labels, vec!["x"]);
    }
}
