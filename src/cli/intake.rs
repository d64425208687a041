//! `story add --from FILE`: a JSON-lines file (or `-`, stdin) checked line by line, then
//! added as one batch through the running node, or straight into the store when none
//! runs. Bad lines are all reported, each by its line number, and nothing is written
//! (exit 2).
//!
//! `import DIR` and `export DIR`: an ai-sdlc backlog in (one batch, by the same two
//! paths) and out ([`mesh_agent::intake::aisdlc`]). A file that cannot be imported is
//! named with its reason and the rest goes in (exit 1 says some were skipped).

use super::commands::{offline_key, operators, usage_if_refused};
use crate::usage;
use anyhow::{anyhow, Result};
use mesh_agent::api::ControlClient;
use mesh_agent::core::state::StoryView;
use mesh_agent::intake::aisdlc;
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

/// `mesh-agent import DIR`.
#[derive(clap::Args)]
pub(crate) struct ImportArgs {
    /// The ai-sdlc project: its root (holding .ai-sdlc/), its .ai-sdlc/ folder, or the
    /// stories folder itself.
    pub dir: std::path::PathBuf,
    /// Read and map everything, print what would happen, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object (imported, existing, skipped, notes) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `mesh-agent export DIR`.
#[derive(clap::Args)]
pub(crate) struct ExportArgs {
    /// Where to write: a project root (stories go to DIR/.ai-sdlc/stories/, created if
    /// missing), its .ai-sdlc/ folder, or a stories folder.
    pub dir: std::path::PathBuf,
    /// Print one JSON object (written, notes) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One story file and what it became in the mesh.
#[derive(serde::Serialize)]
struct Row {
    path: std::path::PathBuf,
    /// Its id in ai-sdlc.
    id: String,
    /// Its id in the mesh (empty on a dry run).
    story: String,
}

#[derive(serde::Serialize)]
struct ImportReport {
    root: std::path::PathBuf,
    dry_run: bool,
    imported: Vec<Row>,
    existing: Vec<Row>,
    skipped: Vec<aisdlc::Problem>,
    notes: Vec<aisdlc::Problem>,
}

/// The stories of the mesh as the running node (or, stopped, its store) has them.
fn mesh_stories(dir: &Path) -> Result<Vec<StoryView>> {
    Ok(match ControlClient::for_data_dir(dir)? {
        Some(c) => c.stories()?,
        None => mesh_agent::node::offline_stories(dir, &operators(dir)?)?,
    })
}

pub(crate) fn import(dir: &Path, a: ImportArgs) -> Result<()> {
    let scan = aisdlc::scan(&a.dir).map_err(usage)?;
    let root = scan.root.clone();
    let skipped = scan.skipped.clone();
    let plan = aisdlc::plan(scan, &mesh_stories(dir)?);
    let ids: Vec<String> = plan
        .batch
        .stories
        .iter()
        .map(|s| s.imported.as_ref().map_or(String::new(), |i| i.id.clone()))
        .collect();
    let added: Vec<Added> = if a.dry_run || plan.batch.stories.is_empty() {
        Vec::new()
    } else {
        match ControlClient::for_data_dir(dir)? {
            Some(c) => c.add_stories(&plan.batch).map_err(usage_if_refused)?,
            None => bulk::offline_add(dir, &offline_key(dir)?, &plan.batch, &operators(dir)?)
                .map_err(|e| match e {
                    OfflineError::Refused(why) => usage(why),
                    OfflineError::Node(e) => anyhow!(e),
                })?,
        }
    };
    let report = ImportReport {
        root,
        dry_run: a.dry_run,
        imported: plan
            .paths
            .iter()
            .zip(&ids)
            .enumerate()
            .map(|(i, (path, id))| Row {
                path: path.clone(),
                id: id.clone(),
                story: added.get(i).map_or(String::new(), |s| s.id.clone()),
            })
            .collect(),
        existing: plan
            .existing
            .into_iter()
            .map(|(path, id, story)| Row { path, id, story })
            .collect(),
        skipped,
        notes: plan.notes,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for n in &report.notes {
            eprintln!("note: {}: {}", n.path.display(), n.why);
        }
        for s in &report.skipped {
            eprintln!("skipped: {}: {}", s.path.display(), s.why);
        }
        for r in &report.imported {
            let to = if r.story.is_empty() {
                String::new()
            } else {
                format!(" as {}", r.story)
            };
            println!(
                "{} {}{to}  ({})",
                if a.dry_run {
                    "would import"
                } else {
                    "imported"
                },
                r.id,
                r.path.display()
            );
        }
        println!(
            "{} {} stories from {}; {} already in the mesh; {} files skipped; {} notes",
            if a.dry_run {
                "would import"
            } else {
                "imported"
            },
            report.imported.len(),
            report.root.display(),
            report.existing.len(),
            report.skipped.len(),
            report.notes.len()
        );
    }
    if report.skipped.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "{} file(s) could not be imported (listed above with the reason); everything else {}",
            report.skipped.len(),
            if a.dry_run {
                "would be imported"
            } else {
                "is imported"
            }
        ))
    }
}

pub(crate) fn export(dir: &Path, a: ExportArgs) -> Result<()> {
    let stories = mesh_stories(dir)?;
    let refs: Vec<&StoryView> = stories.iter().collect();
    let report = aisdlc::export::export(&a.dir, &refs).map_err(|e| anyhow!(e))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for n in &report.notes {
            eprintln!("note: {}: {}", n.path.display(), n.why);
        }
        println!(
            "wrote {} stories to {}",
            report.written.len(),
            report.root.display()
        );
    }
    Ok(())
}
