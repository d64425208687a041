//! The simulated executor's work, as pure functions: the handoff it returns for a job and
//! the file a story without planned files edits. Shared by the built-in `sim` executor
//! (`exec::sim`, which adds real file edits and a duration) and the deterministic
//! simulator (`sim`), which must not depend on a shell.

use crate::core::model::{Handoff, KnowledgeKind, Learning, Phase, Verdict};
use crate::core::Job;

/// The file a story with no planned files edits.
pub fn default_file(job: &Job) -> String {
    format!("changes/{}.txt", job.display_id)
}

/// The handoff the simulated executor returns for a job (no verdict randomness: reviews
/// approve).
pub fn sim_handoff(job: &Job) -> Handoff {
    let title = &job.fact.title;
    let mut h = Handoff {
        summary: format!("{} of {:?} done (simulated)", job.phase, title),
        confidence: Some(90),
        files: job.fact.files.clone(),
        ..Default::default()
    };
    match job.phase {
        Phase::Research => {
            h.findings = vec![format!("{title}: the code paths involved are known")];
            if let Some(f) = job.fact.files.first() {
                h.learnings = vec![Learning {
                    kind: KnowledgeKind::Convention,
                    text: format!("changes to {f} append one line per story"),
                }];
            }
        }
        Phase::Plan => {
            h.decisions = vec!["change the planned files only".into()];
            h.suggested_approach = "small, tested steps".into();
        }
        Phase::Review => h.verdict = Some(Verdict::Approve),
        Phase::Rework => {
            let why = job
                .handoffs
                .iter()
                .rev()
                .find(|r| r.handoff.verdict == Some(Verdict::Reject))
                .map(|r| r.handoff.summary.clone())
                .unwrap_or_default();
            h.summary = format!("reworked {title:?} (round {}): {why}", job.round);
        }
        Phase::Merge => h.summary = format!("sim-{}-{}", job.story, job.token),
        _ => {}
    }
    h
}
