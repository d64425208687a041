//! The simulated executor's work, as pure functions: the handoff it returns for a job and
//! the file a story without planned files edits. Shared by the built-in `sim` executor
//! (`exec::sim`, which adds real file edits and a duration) and the deterministic
//! simulator (`sim`), which must not depend on a shell.

use crate::core::model::{Handoff, KnowledgeKind, Learning, Phase, Verdict};
use crate::core::Job;

/// Labels that steer the simulated executor, for tests and demos of the escalation
/// triggers (a real executor ignores them): `sim:confidence=N` reports confidence N in
/// every phase; `sim:secret` plants a credential in the change; `sim:fail=PHASE` fails
/// every attempt at that phase.
pub const CONFIDENCE_LABEL: &str = "sim:confidence=";
pub const SECRET_LABEL: &str = "sim:secret";
pub const FAIL_LABEL: &str = "sim:fail=";

/// The line `sim:secret` plants in each edited file (the default security patterns find
/// it: a hard-coded credential; a comment, so the demo project's tests still pass).
pub const PLANTED_SECRET: &str = "# api_key = \"sk_live_0123456789abcdef\"";

fn label_value<'a>(job: &'a Job, prefix: &str) -> Option<&'a str> {
    job.fact.labels.iter().find_map(|l| l.strip_prefix(prefix))
}

/// Whether a `sim:fail=PHASE` label fails this job.
pub fn sim_fails(job: &Job) -> bool {
    label_value(job, FAIL_LABEL) == Some(job.phase.as_str())
}

/// Whether a `sim:secret` label plants a credential in this job's change.
pub fn sim_plants_secret(job: &Job) -> bool {
    job.fact.labels.iter().any(|l| l == SECRET_LABEL)
}

/// The file a story with no planned files edits.
pub fn default_file(job: &Job) -> String {
    format!("changes/{}.txt", job.display_id)
}

/// What a simulated job uses: tokens by phase, like an agent's (a research or review
/// reads much, an implement writes most), ±50 % by the job, priced like a mid-size model
/// ($3 per million tokens in, $15 out). Under $0.70 always: below the default
/// reservation of $1, as a reservation must be a real cap.
pub fn sim_usage(job: &Job) -> crate::core::state::Usage {
    let base: u64 = match job.phase {
        Phase::Refine => 12_000,
        Phase::Research => 40_000,
        Phase::Plan => 30_000,
        Phase::PlanReview => 20_000,
        Phase::Implement => 80_000,
        Phase::Review => 50_000,
        Phase::Rework => 60_000,
        Phase::Merge => 6_000,
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in job.claim.bytes().chain(job.story.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let tokens_in = base / 2 + base * (h % 1000) / 1000;
    let tokens_out = tokens_in / 8;
    crate::core::state::Usage {
        tokens_in,
        tokens_out,
        tokens: tokens_in + tokens_out,
        cost_micro_usd: tokens_in * 3 + tokens_out * 15,
    }
}

/// The handoff the simulated executor returns for a job (no verdict randomness: reviews
/// approve).
pub fn sim_handoff(job: &Job) -> Handoff {
    let title = &job.fact.title;
    let mut h = Handoff {
        summary: format!("{} of {:?} done (simulated)", job.phase, title),
        confidence: Some(
            label_value(job, CONFIDENCE_LABEL)
                .and_then(|v| v.parse::<u8>().ok())
                .map_or(90, |c| c.min(100)),
        ),
        files: job.fact.planned_files(),
        ..Default::default()
    };
    let u = sim_usage(job);
    (h.tokens_in, h.tokens_out, h.tokens, h.cost_micro_usd) =
        (u.tokens_in, u.tokens_out, u.tokens, u.cost_micro_usd);
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
        Phase::Review | Phase::PlanReview => h.verdict = Some(Verdict::Approve),
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
