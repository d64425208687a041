//! The built-in simulated executor: deterministic from a seed, no model. Each phase takes
//! `phase_ms`, fails with probability `failure_rate`, and returns a plausible handoff;
//! implement and rework append one line per planned file in the worktree (a real edit,
//! so two stories changing one file from the same base really conflict at merge).

use super::{ExecError, Executor, Job, Workspace};
use crate::core::model::{Handoff, Phase, Verdict};
use crate::core::sim_handoff::{
    default_file, sim_fails, sim_handoff, sim_plants_secret, PLANTED_SECRET,
};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// The built-in simulated executor.
#[derive(Debug, Clone)]
pub struct SimExecutor {
    /// How long each phase takes.
    pub phase_ms: u64,
    /// Probability (0..=1) that an attempt fails.
    pub failure_rate: f64,
    /// Probability (0..=1) that a first-round review rejects (later rounds approve), so
    /// rework runs without a human.
    pub review_reject_rate: f64,
    pub seed: u64,
}

impl Default for SimExecutor {
    fn default() -> SimExecutor {
        SimExecutor {
            phase_ms: 200,
            failure_rate: 0.0,
            review_reject_rate: 0.0,
            seed: 0,
        }
    }
}

/// A deterministic number in [0, 1) from a seed, a salt and a job.
fn unit(seed: u64, salt: &str, job: &Job) -> f64 {
    let mut h = Sha256::new();
    h.update(seed.to_be_bytes());
    h.update(salt.as_bytes());
    h.update(job.claim.as_bytes());
    let d = h.finalize();
    let n = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (n >> 11) as f64 / (1u64 << 53) as f64
}

/// Writes the story's line into each planned file under `dir`: appended at the end, or
/// replacing the story's earlier line (a rework amends its own change).
pub fn sim_edit(job: &Job, dir: &Path) -> Result<(), String> {
    let mut files = job.fact.planned_files();
    if files.is_empty() {
        files.push(default_file(job));
    }
    let prefix = format!("{}: ", job.display_id);
    let line = format!("{prefix}{} (round {})", job.fact.title, job.round);
    for f in files {
        let path = dir.join(&f);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("sim: cannot create {}: {e}", parent.display()))?;
        }
        let old = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("sim: cannot read {f}: {e}")),
        };
        let mut out = String::with_capacity(old.len() + line.len() + 1);
        let mut replaced = false;
        for l in old.lines() {
            if l.starts_with(&prefix) {
                if !replaced {
                    out.push_str(&line);
                    out.push('\n');
                    replaced = true;
                }
            } else {
                out.push_str(l);
                out.push('\n');
            }
        }
        if !replaced {
            out.push_str(&line);
            out.push('\n');
        }
        if sim_plants_secret(job) && !out.contains(PLANTED_SECRET) {
            out.push_str(PLANTED_SECRET);
            out.push('\n');
        }
        let mut file =
            std::fs::File::create(&path).map_err(|e| format!("sim: cannot write {f}: {e}"))?;
        file.write_all(out.as_bytes())
            .map_err(|e| format!("sim: cannot write {f}: {e}"))?;
    }
    Ok(())
}

impl Executor for SimExecutor {
    fn run(&self, job: Job, ws: Workspace) -> BoxFuture<'static, Result<Handoff, ExecError>> {
        let fail = unit(self.seed, "fail", &job) < self.failure_rate || sim_fails(&job);
        let reject = job.phase == Phase::Review
            && job.round == 0
            && unit(self.seed, "reject", &job) < self.review_reject_rate;
        let ms = self.phase_ms;
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if fail {
                return Err(ExecError::failed(format!(
                    "simulated failure in {}",
                    job.phase
                )));
            }
            let mut h = sim_handoff(&job);
            match job.phase {
                Phase::Implement | Phase::Rework => {
                    sim_edit(&job, &ws.dir).map_err(ExecError::Failed)?
                }
                Phase::Review if reject => {
                    h.verdict = Some(Verdict::Reject);
                    h.summary = format!("{}: the change needs a test (simulated)", job.display_id);
                    h.warnings = vec!["add a test for the new line".into()];
                }
                _ => {}
            }
            Ok(h)
        })
    }
}
