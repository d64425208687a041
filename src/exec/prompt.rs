//! The markdown prompt a command executor hands its program (`$MESH_PROMPT_FILE`): the
//! story, the phase and what it must produce, the earlier handoffs, the team's knowledge,
//! earlier failures, and the handoff schema to answer with.

use super::Job;
use crate::core::model::{Phase, ResultFact, Verdict};
use std::fmt::Write as _;
use std::path::Path;

/// How much of each earlier failure reason the prompt repeats.
const PROMPT_FAILURE_CHARS: usize = 1500;

/// What each phase must produce, for the prompt.
fn duty(phase: Phase) -> &'static str {
    match phase {
        Phase::Refine => {
            "Sharpen the story: restate its goal, acceptance criteria and open questions. \
             Put the restated story in `summary`, acceptance criteria and open questions in \
             `findings`. Do not change any file."
        }
        Phase::Research => {
            "Study the code this story touches: the relevant files, code paths, constraints \
             and existing tests. Report facts in `findings`, the relevant files in `files`, \
             and lessons worth keeping for later stories in `learnings`. Do not change any \
             file."
        }
        Phase::Plan => {
            "Decide how to implement the story: the steps and their reasons in `decisions`, \
             the overall approach in `suggested_approach`, the files to change in `files`, \
             risks in `warnings`. Do not change any file."
        }
        Phase::PlanReview => {
            "Review the plan above against the story and the code. Decide: `verdict` \
             \"approve\" or \"reject\" (required); the reasons in `summary`, requested \
             changes in `warnings`. Do not change any file."
        }
        Phase::Implement => {
            "Make the change in the working directory (the story's git worktree), following \
             the plan: edit the files, add or update tests, and run them. Do not commit: the \
             node commits your changes. Report what you changed in `summary` and `files`, \
             anything a reviewer must know in `warnings`."
        }
        Phase::Review => {
            "Review the change in the working directory against the story and the plan: \
             correctness, tests, style. Decide: `verdict` \"approve\" or \"reject\" \
             (required); the reasons in `summary`, each requested change in `warnings`. Do \
             not change any file."
        }
        Phase::Rework => {
            "The last review (or merge) rejected the change; its reasons are above. Fix \
             every point in the working directory and run the tests. Do not commit: the node \
             commits your changes. Report what you changed in `summary` and `files`."
        }
        Phase::Merge => {
            "Check the change is ready to land: it builds and its tests pass. If it cannot \
             land, return `verdict` \"reject\" with the reason in `summary` (the story goes \
             back to rework); otherwise summarise the change in `summary`."
        }
    }
}

/// The exact handoff schema, for the prompt.
const SCHEMA: &str = r#"{
  "summary": "one paragraph: what you did or found (required)",
  "findings": ["a fact about the code or the story"],
  "decisions": ["a decision and its reason"],
  "warnings": ["a risk, a requested change, or a follow-up"],
  "suggested_approach": "how to implement (plan phase)",
  "files": ["repo/relative/path"],
  "verdict": "approve or reject (review phases: required; merge: reject if it cannot land)",
  "confidence": 80,
  "learnings": [{"kind": "convention, pattern, testing or pitfall", "text": "a lesson for later stories"}]
}"#;

fn bullets(p: &mut String, title: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(p, "{title}:");
    for i in items {
        let _ = writeln!(p, "- {i}");
    }
    let _ = writeln!(p);
}

fn earlier(p: &mut String, r: &ResultFact) {
    let h = &r.handoff;
    let _ = write!(p, "\n### {}", r.phase);
    if r.round > 0 {
        let _ = write!(p, " (round {})", r.round);
    }
    let _ = writeln!(p, "\n");
    if let Some(v) = h.verdict {
        let v = match v {
            Verdict::Approve => "approve",
            Verdict::Reject => "reject",
        };
        let _ = writeln!(p, "Verdict: **{v}**\n");
    }
    if !h.summary.is_empty() {
        let _ = writeln!(p, "{}\n", h.summary);
    }
    bullets(p, "Findings", &h.findings);
    bullets(p, "Decisions", &h.decisions);
    bullets(p, "Warnings", &h.warnings);
    if !h.suggested_approach.is_empty() {
        let _ = writeln!(p, "Suggested approach: {}", h.suggested_approach);
    }
    if !h.files.is_empty() {
        let _ = writeln!(p, "Files: {}", h.files.join(", "));
    }
}

/// The markdown prompt for a job: the story, the phase and what it must produce, the
/// earlier phases' handoffs, the relevant knowledge, earlier failures, and the handoff
/// schema to answer with.
pub fn prompt(job: &Job, handoff_file: &Path) -> String {
    let mut p = String::new();
    let _ = writeln!(p, "# {}: {}\n", job.display_id, job.fact.title);
    let _ = writeln!(
        p,
        "You are one agent in a mesh of agents working a shared backlog. Your task is the \
         **{}** phase of story {} (round {}, attempt {}). Your working directory is the \
         story's git worktree.\n",
        job.phase, job.display_id, job.round, job.attempt
    );
    let _ = writeln!(p, "## Story\n");
    if job.fact.body.trim().is_empty() {
        let _ = writeln!(p, "(no description beyond the title)\n");
    } else {
        let _ = writeln!(p, "{}\n", job.fact.body.trim_end());
    }
    if !job.fact.files.is_empty() {
        let _ = writeln!(p, "Planned files:");
        for f in &job.fact.files {
            let _ = writeln!(p, "- `{f}`");
        }
        let _ = writeln!(p);
    }
    let _ = writeln!(p, "## Your phase: {}\n\n{}\n", job.phase, duty(job.phase));
    if !job.handoffs.is_empty() {
        let _ = writeln!(p, "## Earlier phases");
        for r in &job.handoffs {
            earlier(&mut p, r);
        }
        let _ = writeln!(p);
    }
    if !job.notes.is_empty() {
        let _ = writeln!(
            p,
            "## From the humans who steer this mesh\n\nTake these into account; they \
             override earlier handoffs where they disagree:\n"
        );
        for n in &job.notes {
            let _ = writeln!(p, "- {}", n.replace('\n', "\n  "));
        }
        let _ = writeln!(p);
    }
    if !job.knowledge.is_empty() {
        let _ = writeln!(p, "## What the team has learned\n");
        for k in &job.knowledge {
            let _ = writeln!(p, "- {}: {}", k.kind, k.text);
        }
        let _ = writeln!(p);
    }
    if !job.failures.is_empty() {
        let _ = writeln!(
            p,
            "## Earlier attempts at this phase failed\n\nAvoid repeating these:\n"
        );
        for f in &job.failures {
            let short: String = f.chars().take(PROMPT_FAILURE_CHARS).collect();
            let _ = writeln!(p, "- {}", short.replace('\n', "\n  "));
        }
        let _ = writeln!(p);
    }
    let _ = writeln!(
        p,
        "## Your answer\n\nWhen you are done, answer with one JSON object of this shape \
         (omit fields you have nothing for):\n\n```json\n{SCHEMA}\n```\n\nPrint it as the \
         last thing in your reply, or write it to `{}`. Nothing after it.",
        handoff_file.display()
    );
    p
}
