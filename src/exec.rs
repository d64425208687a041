//! Executors: what runs one phase of one story. This release has the built-in `sim`
//! executor (deterministic from a seed: a duration per phase, a failure rate and a
//! plausible handoff); the `command` executor that drives real agent CLIs comes next.
//! An executor is an I/O shell: it may sleep, spawn and touch files; the core only sees
//! the handoff (or the failure reason) it returns.

use crate::core::Job;
use crate::model::{Handoff, Phase, Verdict};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Runs jobs. A job's future is dropped (cancelled) when its claim is lost.
pub trait Executor: Send + Sync + 'static {
    fn run(&self, job: Job) -> BoxFuture<'static, Result<Handoff, String>>;
}

/// The built-in simulated executor.
#[derive(Debug, Clone)]
pub struct SimExecutor {
    /// How long each phase takes.
    pub phase_ms: u64,
    /// Probability (0..=1) that an attempt fails.
    pub failure_rate: f64,
    pub seed: u64,
}

/// A deterministic number in [0, 1) from a seed and a job.
fn unit(seed: u64, job: &Job) -> f64 {
    let mut h = Sha256::new();
    h.update(seed.to_be_bytes());
    h.update(job.claim.as_bytes());
    let d = h.finalize();
    let n = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (n >> 11) as f64 / (1u64 << 53) as f64
}

/// The handoff the simulated executor returns for a job.
pub fn sim_handoff(job: &Job) -> Handoff {
    let title = &job.fact.title;
    let mut h = Handoff {
        summary: format!("{} of {:?} done (simulated)", job.phase, title),
        confidence: Some(90),
        files: job.fact.files.clone(),
        ..Default::default()
    };
    match job.phase {
        Phase::Research => h.findings = vec![format!("{title}: the code paths involved are known")],
        Phase::Plan => {
            h.decisions = vec!["change the planned files only".into()];
            h.suggested_approach = "small, tested steps".into();
        }
        Phase::Review => h.verdict = Some(Verdict::Approve),
        Phase::Merge => h.summary = format!("sim-{}-{}", job.story, job.token),
        _ => {}
    }
    h
}

impl Executor for SimExecutor {
    fn run(&self, job: Job) -> BoxFuture<'static, Result<Handoff, String>> {
        let fail = unit(self.seed, &job) < self.failure_rate;
        let ms = self.phase_ms;
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if fail {
                Err(format!("simulated failure in {}", job.phase))
            } else {
                Ok(sim_handoff(&job))
            }
        })
    }
}
