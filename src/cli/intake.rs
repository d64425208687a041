//! `story add --from FILE`: a JSON-lines file (or `-`, stdin) checked line by line, then
//! added as one batch through the running node, or straight into the store when none
//! runs. Bad lines are all reported, each by its line number, and nothing is written
//! (exit 2).

use super::commands::{offline_key, operators, usage_if_refused};
use crate::usage;
use anyhow::{anyhow, Result};
use mesh_agent::api::ControlClient;
use mesh_agent::intake::bulk::{self, Added, OfflineError};
use std::io::Read;
use std::path::Path;

/// The largest file read (a batch holds at most 100,000 stories).
const MAX_FILE_BYTES: u64 = 256 << 20;
/// Bad lines printed before the rest are only counted.
const SHOWN_ERRORS: usize = 50;

fn read_input(from: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    let what = from.display().to_string();
    let res = if what == "-" {
        std::io::stdin()
            .lock()
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
    } else {
        std::fs::File::open(from).and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
    };
    res.map_err(|e| usage(format!("{what}: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(usage(format!(
            "{what}: larger than {} MiB: split it",
            MAX_FILE_BYTES >> 20
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        usage(format!(
            "{what}: not UTF-8 text (byte {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

pub(crate) fn add_from(dir: &Path, from: &Path, json: bool) -> Result<()> {
    let text = read_input(from)?;
    let batch = bulk::parse_jsonl(&text).map_err(|errors| {
        for e in errors.iter().take(SHOWN_ERRORS) {
            eprintln!("{}: {e}", from.display());
        }
        if errors.len() > SHOWN_ERRORS {
            eprintln!("... and {} more bad lines", errors.len() - SHOWN_ERRORS);
        }
        usage(format!(
            "{} bad line(s) in {}: nothing was added",
            errors.len(),
            from.display()
        ))
    })?;
    if batch.stories.is_empty() {
        return Err(usage(format!("{}: no stories in it", from.display())));
    }
    let added: Vec<Added> = match ControlClient::for_data_dir(dir)? {
        Some(c) => c.add_stories(&batch).map_err(usage_if_refused)?,
        None => {
            let key = offline_key(dir)?;
            bulk::offline_add(dir, &key, &batch, &operators(dir)?).map_err(|e| match e {
                OfflineError::Refused(why) => usage(why),
                OfflineError::Node(e) => anyhow!(e),
            })?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&added)?);
    } else {
        match (added.first(), added.last()) {
            (Some(a), Some(b)) => println!(
                "added {} stories ({} .. {}) from {}",
                added.len(),
                a.id,
                b.id,
                from.display()
            ),
            _ => println!("added no stories"),
        }
    }
    Ok(())
}
