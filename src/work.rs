//! The work shell: runs one job end to end around an executor (docs/DESIGN.md §7–§8). It owns
//! the glue between a settled claim and git:
//!
//! 1. pick the base commit: research, plan and implement start from the origin's latest
//!    main; review, and rework after a rejecting review, start from the change under
//!    review (the latest implement/rework commit named in the history); rework after a
//!    refused merge (rebase conflict, failing tests) starts again from the latest main,
//!    with the refused change and the reason in its context. Every phase starts from a
//!    fresh fetch, so work in flight is rebased at each phase boundary;
//! 2. prepare the story's worktree on `mesh/<story>` at that base;
//! 3. run the executor in it (merge runs no executor: the gate is built in);
//! 4. after implement/rework, commit everything with the `Mesh-*` trailers and push it to
//!    the origin as `refs/mesh/work/<story>/<claim>` so whichever node runs the next phase
//!    can fetch it; the handoff names the commit;
//! 5. merge: the fenced gate of [`crate::git`]: squash onto main, run the tests, land under
//!    the claim's token. A conflict or failing tests is a merge result with verdict
//!    `reject` (the story goes to rework with the reason); a fence refusal is a failed
//!    attempt (this holder is stale);
//! 6. remove the worktree when the job ends, however it ends (finished, failed or
//!    cancelled because the claim was lost): the next phase may run on another node.
//!
//! Without an origin configured, jobs run in a scratch directory and nothing touches git
//! (the mesh still runs every phase; merges are simulated).

use crate::core::fence::fence_token;
use crate::core::model::{Handoff, Phase, ResultFact, Verdict};
use crate::core::{Job, JobFailure};
use crate::exec::{ExecError, Executor, Workspace};
use crate::fence::Refused;
use crate::git::{Gate, GitError, LandRequest, NodeRepo, Trailers};
use futures::future::BoxFuture;
use git2::Oid;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How the merge gate lands.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// The project's test command (argv), run on every squash commit before it lands.
    pub test: Option<Vec<String>>,
    pub test_timeout: Duration,
    /// Fetch-rebase-push attempts when main keeps moving.
    pub max_tries: u32,
}

/// Runs jobs for one node.
pub struct WorkShell {
    executor: Arc<dyn Executor>,
    git: Option<Arc<NodeRepo>>,
    /// Scratch directories for jobs when there is no git origin.
    scratch: PathBuf,
    /// Per-job logs (the executor's stdout/stderr, job and prompt files).
    logs: PathBuf,
    node: String,
    gate: GateConfig,
    /// The security scan's patterns, matched against a change's added lines.
    security: Arc<Vec<regex::Regex>>,
    /// An external scanner run in the worktree after each implement or rework commit
    /// (argv; a non-zero exit is a concern).
    scanner: Option<Arc<Vec<String>>>,
}

/// Removes a story's worktree if the job is dropped mid-way (cancelled because the claim
/// was lost). The normal path removes it before reporting the outcome and disarms this
/// guard, so the next attempt (often on this very node) never races a removal.
struct WorktreeGuard {
    git: Arc<NodeRepo>,
    story: String,
    armed: bool,
}

impl Drop for WorktreeGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Synchronous on purpose: a removal finishing after the next attempt prepared
        // the same worktree would delete it. Cancellation is rare and this is file work.
        if let Err(e) = self.git.remove_worktree(&self.story) {
            tracing::warn!(story = %self.story, error = %e, "could not remove the story's worktree");
        }
    }
}

/// Why a job ended without a handoff. Its message is the failure reason the core
/// records ([`WorkShell::run`] hands it over as text).
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// The executor failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A git step (fetch, worktree, commit, push, the gate) failed.
    #[error(transparent)]
    Git(#[from] GitError),
    /// A blocking git task panicked or was cancelled.
    #[error("git task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot create {}: {source}", .path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The history names no implement/rework commit for a phase that needs one.
    #[error("{story}: no implemented commit in the history to {what}")]
    NoChange { story: String, what: String },
    /// Implement or rework left the worktree as it found it.
    #[error("{phase} made no change to the worktree: nothing to review")]
    NothingChanged { phase: Phase },
}

impl WorkError {
    /// Whether the origin, not the work, is to blame (it is unreachable, failing, or
    /// refusing our credentials): the job is handed back without counting an attempt.
    pub fn is_outage(&self) -> bool {
        matches!(self, WorkError::Git(GitError::Remote(e)) if e.is_outage())
    }

    fn is_transient(&self) -> bool {
        matches!(self, WorkError::Git(GitError::Remote(e)) if e.is_transient())
    }

    /// The failure as the core records it.
    pub fn into_failure(self) -> JobFailure {
        if let WorkError::Exec(ExecError::RateLimited { retry_after_ms, .. }) = &self {
            return JobFailure::RateLimited {
                retry_after_ms: *retry_after_ms,
                reason: self.to_string(),
            };
        }
        if self.is_outage() {
            JobFailure::Origin(self.to_string())
        } else {
            JobFailure::Work(self.to_string())
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, GitError> + Send + 'static,
) -> Result<T, WorkError> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

/// Runs the external scanner `argv` in `dir`; the concern it raises, if any.
fn scan_with(argv: &[String], dir: &Path, timeout: Duration) -> Option<String> {
    let name = argv.first().map_or("scanner", String::as_str);
    let never = AtomicBool::new(false);
    match crate::git::run_test(argv, dir, timeout, &never) {
        Ok(run) if run.passed => None,
        Ok(run) => {
            let tail: Vec<&str> = run.output.lines().rev().take(4).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Some(format!(
                "the security scanner {name} flagged the change: {}",
                tail.join(" | ")
            ))
        }
        Err(e) => Some(format!("the security scanner {name} could not run: {e}")),
    }
}

/// Tries of an idempotent step against the origin (fetch, push of a work ref) when it
/// fails transiently (unreachable, a 5xx, a timeout), and the pause before the second.
const STEP_TRIES: u32 = 3;
const STEP_BACKOFF: Duration = Duration::from_millis(500);

/// Runs an idempotent git step, trying again after a transient origin failure with a
/// jittered pause that doubles (0.5 s, 1 s, ±25 %). What still fails is the job's failure,
/// an outage if the origin is to blame ([`WorkError::is_outage`]).
async fn step<T: Send + 'static>(
    what: &'static str,
    f: impl Fn() -> Result<T, GitError> + Send + Sync + Clone + 'static,
) -> Result<T, WorkError> {
    let mut pause = STEP_BACKOFF;
    for tries in 1.. {
        let g = f.clone();
        match blocking(g).await {
            Err(e) if tries < STEP_TRIES && e.is_transient() => {
                let jittered =
                    pause.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.75..1.25));
                tracing::info!(step = what, tries, error = %e, retry_in_ms = jittered.as_millis() as u64, "the origin failed transiently; trying again");
                tokio::time::sleep(jittered).await;
                pause *= 2;
            }
            out => return out,
        }
    }
    unreachable!("the loop returns")
}

/// Work refs of a finished story are dropped again after an outage, every pause (5 s
/// doubling to 5 min) for up to [`DROP_RETRY_FOR`].
const DROP_RETRY_FIRST: Duration = Duration::from_secs(5);
const DROP_RETRY_MAX: Duration = Duration::from_secs(300);
const DROP_RETRY_FOR: Duration = Duration::from_secs(3600);

/// The story is on main (or blocked): its work refs at the origin are no longer needed.
/// Returns the failure, logged, if the origin was unavailable (the caller retries later).
async fn drop_work_refs(git: &Arc<NodeRepo>, story: &str) -> Option<WorkError> {
    let (g, key) = (git.clone(), story.to_string());
    match blocking(move || g.drop_work_refs(&key)).await {
        Ok(n) => {
            tracing::debug!(%story, refs = n, "dropped the story's work refs");
            None
        }
        Err(e) if e.is_outage() => {
            tracing::info!(%story, error = %e, "could not drop the story's work refs yet; trying again later");
            Some(e)
        }
        Err(e) => {
            tracing::warn!(%story, error = %e, "could not drop the story's work refs");
            None
        }
    }
}

/// [`drop_work_refs`] in the background, trying again while the origin is unavailable
/// (a landing just before an outage must not leave its refs behind: chaos seed 306).
fn drop_work_refs_retrying(git: Arc<NodeRepo>, story: String, first_try: bool) {
    tokio::spawn(async move {
        let until = tokio::time::Instant::now() + DROP_RETRY_FOR;
        let mut pause = DROP_RETRY_FIRST;
        if !first_try {
            tokio::time::sleep(pause).await;
        }
        while drop_work_refs(&git, &story).await.is_some() {
            if tokio::time::Instant::now() + pause > until {
                tracing::warn!(%story, "gave up dropping the story's work refs; delete refs/mesh/work/<story>/* at the origin by hand");
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(DROP_RETRY_MAX);
        }
    });
}

/// The commit of the latest counted implement or rework.
fn change_commit(job: &Job) -> Option<Oid> {
    job.handoffs
        .iter()
        .rev()
        .find(|r| matches!(r.phase, Phase::Implement | Phase::Rework))
        .and_then(|r| r.handoff.commit.as_deref())
        .and_then(|c| Oid::from_str(c).ok())
}

/// The latest rejection in the history, if any.
fn last_rejection(job: &Job) -> Option<&ResultFact> {
    job.handoffs
        .iter()
        .rev()
        .find(|r| r.handoff.verdict == Some(Verdict::Reject))
}

impl WorkShell {
    pub fn new(
        executor: Arc<dyn Executor>,
        git: Option<NodeRepo>,
        work_dir: PathBuf,
        node: String,
        gate: GateConfig,
    ) -> WorkShell {
        WorkShell {
            executor,
            git: git.map(Arc::new),
            scratch: work_dir.join("scratch"),
            logs: work_dir.join("logs"),
            node,
            gate,
            security: Arc::new(Vec::new()),
            scanner: None,
        }
    }

    /// Runs `argv` in the worktree after every implement and rework commit (with the
    /// gate's test timeout): a non-zero exit, a timeout or a failure to start it is a
    /// security concern (fail closed), naming the scanner and the end of its output.
    pub fn with_security_scanner(mut self, argv: Vec<String>) -> WorkShell {
        self.scanner = (!argv.is_empty()).then(|| Arc::new(argv));
        self
    }

    /// Scans every implement and rework change for these patterns (a match is a
    /// security concern: the change needs a human before merge).
    pub fn with_security_patterns(mut self, patterns: Vec<regex::Regex>) -> WorkShell {
        self.security = Arc::new(patterns);
        self
    }

    /// The node's clone, if an origin is configured.
    pub fn repo(&self) -> Option<&NodeRepo> {
        self.git.as_deref()
    }

    /// Removes worktrees a previous run of this node left behind (a crash mid-job): their
    /// claims are gone with the old incarnation, so the work will be claimed afresh.
    /// Returns the story keys cleaned.
    pub fn clean_leftovers(&self) -> Vec<String> {
        let Some(git) = &self.git else {
            let _ = std::fs::remove_dir_all(&self.scratch);
            return Vec::new();
        };
        let left = match git.leftover_worktrees() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "could not list leftover worktrees");
                return Vec::new();
            }
        };
        let mut cleaned = Vec::new();
        for story in left {
            match git.remove_worktree(&story) {
                Ok(()) => cleaned.push(story),
                Err(e) => tracing::warn!(%story, error = %e, "could not clean a leftover worktree"),
            }
        }
        if !cleaned.is_empty() {
            tracing::info!(stories = ?cleaned, "cleaned worktrees left by a previous run");
        }
        cleaned
    }

    /// Runs one job. The future may be dropped at any point (the claim was lost): the
    /// executor's processes are killed by the executor, the worktree is removed here.
    /// A failure comes back as the reason the core records.
    pub fn run(self: &Arc<Self>, job: Job) -> BoxFuture<'static, Result<Handoff, JobFailure>> {
        let shell = self.clone();
        Box::pin(async move { shell.run_job(job).await.map_err(WorkError::into_failure) })
    }

    /// Drops a finished story's work refs at the origin in the background, retried while
    /// the origin is unavailable: a blocked story's (nothing of it will land; a human who
    /// unblocks it gets fresh work) or a push of ours that did not count.
    pub fn drop_work_refs_later(&self, story: String) {
        if let Some(git) = self.git.clone() {
            drop_work_refs_retrying(git, story, true);
        }
    }

    /// Tries to reach the origin (a fetch of main, retried like any step): `Err` with
    /// the reason when the origin is unavailable. Without an origin, or when something
    /// else fails (this node's disk), the origin is not to blame: `Ok`.
    pub fn probe(self: &Arc<Self>) -> BoxFuture<'static, Result<(), String>> {
        let git = self.git.clone();
        Box::pin(async move {
            let Some(git) = git else { return Ok(()) };
            match step("probe the origin", move || git.fetch_main()).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_outage() => Err(e.to_string()),
                Err(e) => {
                    tracing::warn!(error = %e, "probing the origin failed here, not there");
                    Ok(())
                }
            }
        })
    }

    async fn run_job(&self, job: Job) -> Result<Handoff, WorkError> {
        std::fs::create_dir_all(&self.logs).map_err(|source| WorkError::Create {
            path: self.logs.clone(),
            source,
        })?;
        let Some(git) = self.git.clone() else {
            return self.run_scratch(job).await;
        };
        let mut guard = WorktreeGuard {
            git: git.clone(),
            story: job.story.clone(),
            armed: true,
        };
        let story = job.story.clone();
        let out = if job.phase == Phase::Merge {
            self.merge(git.clone(), job).await
        } else {
            self.run_in_worktree(git.clone(), job).await
        };
        // The outcome is reported only once the worktree is gone.
        if let Err(e) = blocking(move || git.remove_worktree(&story)).await {
            tracing::warn!(error = %e, "could not remove the story's worktree");
        }
        guard.armed = false;
        out
    }

    async fn run_scratch(&self, job: Job) -> Result<Handoff, WorkError> {
        let safe = crate::git::safe_dir_name(&job.story);
        let dir = self.scratch.join(safe);
        std::fs::create_dir_all(&dir).map_err(|source| WorkError::Create {
            path: dir.clone(),
            source,
        })?;
        let ws = Workspace {
            dir: dir.clone(),
            log_dir: self.logs.clone(),
            node: self.node.clone(),
        };
        let out = self.executor.run(job, ws).await;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(out?)
    }

    async fn run_in_worktree(&self, git: Arc<NodeRepo>, job: Job) -> Result<Handoff, WorkError> {
        let change = change_commit(&job);
        let from_main = match job.phase {
            Phase::Review => false,
            Phase::Rework => {
                // After a refused merge, start again from main; after a rejecting review,
                // build on the change under review.
                last_rejection(&job).is_some_and(|r| r.phase == Phase::Merge) || change.is_none()
            }
            _ => true,
        };
        let base = if from_main {
            let g = git.clone();
            step("fetch main", move || g.fetch_main()).await?
        } else {
            let Some(c) = change else {
                return Err(WorkError::NoChange {
                    story: job.display_id.clone(),
                    what: job.phase.to_string(),
                });
            };
            let g = git.clone();
            step("fetch the change", move || g.ensure_commit(c)).await?;
            c
        };
        let (g, story) = (git.clone(), job.story.clone());
        let dir = blocking(move || g.prepare_worktree(&story, base)).await?;
        let ws = Workspace {
            dir: dir.clone(),
            log_dir: self.logs.clone(),
            node: self.node.clone(),
        };
        let mut handoff = self.executor.run(job.clone(), ws).await?;
        match job.phase {
            Phase::Implement | Phase::Rework => {
                let trailers = Trailers {
                    story: job.display_id.clone(),
                    story_key: job.story.clone(),
                    phase: job.phase,
                    fence: u128::from(job.token),
                    node: self.node.clone(),
                };
                let subject = format!("{} ({})", job.fact.title, job.display_id);
                let body = handoff.summary.clone();
                let g = git.clone();
                let worktree = dir.clone();
                let committed =
                    blocking(move || g.commit_all(&dir, &subject, &body, &trailers)).await?;
                let Some(oid) = committed else {
                    return Err(WorkError::NothingChanged { phase: job.phase });
                };
                let (g, story, claim) = (git.clone(), job.story.clone(), job.claim.clone());
                step("push the work", move || g.push_work(&story, &claim, oid)).await?;
                handoff.commit = Some(oid.to_string());
                // What the change touched and what the scan finds in it: the node's own
                // record, never the executor's (the triggers read them).
                let (g, patterns) = (git.clone(), self.security.clone());
                let (files, concerns) = blocking(move || {
                    let c = g.change_summary(oid)?;
                    let concerns = crate::core::attention::scan(
                        &patterns,
                        c.added.iter().map(|(f, l)| (f.as_str(), l.as_str())),
                    );
                    Ok::<_, GitError>((c.files, concerns))
                })
                .await?;
                handoff.changed_files = files;
                handoff.concerns = concerns;
                if let Some(argv) = self.scanner.clone() {
                    let timeout = self.gate.test_timeout;
                    let found =
                        tokio::task::spawn_blocking(move || scan_with(&argv, &worktree, timeout))
                            .await
                            .map_err(WorkError::from)?;
                    handoff.concerns.extend(found);
                }
            }
            _ => handoff.commit = Some(base.to_string()),
        }
        Ok(handoff)
    }

    async fn merge(&self, git: Arc<NodeRepo>, job: Job) -> Result<Handoff, WorkError> {
        let Some(change) = change_commit(&job) else {
            return Err(WorkError::NoChange {
                story: job.display_id.clone(),
                what: "merge".to_string(),
            });
        };
        let g = git.clone();
        match step("fetch the change", move || g.ensure_commit(change)).await {
            // The change is gone from the origin: its work refs are dropped once a story
            // lands, so an earlier holder may have landed it and died before recording
            // it. The gate reads the fence first and says so; if it did not land, the
            // gate fails on the same missing commit.
            Err(WorkError::Git(GitError::MissingCommit { .. })) => {
                tracing::info!(story = %job.story, %change, "the change is not at the origin; asking the fence whether it landed");
            }
            other => other?,
        }
        let summary = job
            .handoffs
            .iter()
            .rev()
            .find(|r| matches!(r.phase, Phase::Implement | Phase::Rework))
            .map(|r| r.handoff.summary.clone())
            .unwrap_or_default();
        let fence = fence_token(job.round, job.token);
        let req = LandRequest {
            story_key: job.story.clone(),
            change,
            token: fence,
            holder: self.node.clone(),
            message: format!("{} ({})\n\n{summary}", job.fact.title, job.display_id),
            trailers: Trailers {
                story: job.display_id.clone(),
                story_key: job.story.clone(),
                phase: Phase::Merge,
                fence,
                node: self.node.clone(),
            },
            test: self.gate.test.clone(),
            test_timeout: self.gate.test_timeout,
            max_tries: self.gate.max_tries.max(1),
        };
        // Cancelled (the claim was lost) → the gate stops between steps.
        let cancel = Arc::new(AtomicBool::new(false));
        struct Cancel(Arc<AtomicBool>);
        impl Drop for Cancel {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _cancel_on_drop = Cancel(cancel.clone());
        let g = git.clone();
        let gate = match tokio::task::spawn_blocking(move || g.land(&req, &cancel)).await {
            Ok(Ok(gate)) => gate,
            // Landed already, by an earlier holder that died before recording it (or by
            // a newer holder, in which case this result is fenced out of every view).
            Ok(Err(GitError::Fenced(Refused::AlreadyLanded { commit, token }))) => {
                if drop_work_refs(&git, &job.story).await.is_some() {
                    drop_work_refs_retrying(git.clone(), job.story.clone(), false);
                }
                return Ok(Handoff {
                    summary: format!(
                        "{} had already landed as {commit} (fence token {token})",
                        job.display_id
                    ),
                    verdict: Some(Verdict::Approve),
                    commit: Some(commit.to_string()),
                    ..Default::default()
                });
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(e.into()),
        };
        let landed = matches!(
            gate,
            Gate::Landed { .. } | Gate::AlreadyLanded { .. } | Gate::Empty { .. }
        );
        if landed && drop_work_refs(&git, &job.story).await.is_some() {
            drop_work_refs_retrying(git.clone(), job.story.clone(), false);
        }
        let id = &job.display_id;
        let h = match gate {
            Gate::Landed { commit, tries } => Handoff {
                summary: format!(
                    "landed {id} on main as {commit} (after {tries} fetch{})",
                    if tries == 1 { "" } else { "es" }
                ),
                verdict: Some(Verdict::Approve),
                commit: Some(commit.to_string()),
                ..Default::default()
            },
            Gate::AlreadyLanded { commit } => Handoff {
                summary: format!("{id} had already landed as {commit}"),
                verdict: Some(Verdict::Approve),
                commit: Some(commit.to_string()),
                ..Default::default()
            },
            Gate::Empty { main } => Handoff {
                summary: format!("main already contains {id}'s change; nothing to land"),
                verdict: Some(Verdict::Approve),
                commit: Some(main.to_string()),
                ..Default::default()
            },
            Gate::Conflict { files, main } => Handoff {
                summary: format!(
                    "rebase onto main {main} conflicts in {}: rework on the latest main",
                    files.join(", ")
                ),
                warnings: files.iter().map(|f| format!("conflict in {f}")).collect(),
                files,
                verdict: Some(Verdict::Reject),
                ..Default::default()
            },
            Gate::TestsFailed {
                output_tail,
                exit_code,
                timed_out,
                ..
            } => {
                let how = if timed_out {
                    "timed out".to_string()
                } else {
                    match exit_code {
                        Some(c) => format!("exited with code {c}"),
                        None => "was killed".to_string(),
                    }
                };
                Handoff {
                    summary: format!(
                        "tests failed on {id} rebased onto main: the test command {how}"
                    ),
                    warnings: vec![output_tail],
                    verdict: Some(Verdict::Reject),
                    ..Default::default()
                }
            }
        };
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::StoryFact;

    fn job(handoffs: Vec<ResultFact>, phase: Phase) -> Job {
        Job {
            claim: "c".into(),
            story: "S-0001@ab".into(),
            display_id: "S-0001".into(),
            phase,
            round: 1,
            token: 1,
            attempt: 1,
            fact: StoryFact {
                number: 1,
                created_by: "n".into(),
                created_at_ms: 0,
                title: "t".into(),
                body: Default::default(),
                priority: 100,
                depends_on: crate::core::model::ThinVec::new(),
                files: crate::core::model::ThinVec::new(),
                labels: crate::core::model::ThinVec::new(),
                source: Default::default(),
                imported: None,
            },
            handoffs,
            files: vec![],
            knowledge: vec![],
            failures: vec![],
            notes: vec![],
        }
    }

    fn result(phase: Phase, commit: Option<&str>, verdict: Option<Verdict>) -> ResultFact {
        ResultFact {
            story: "S-0001@ab".into(),
            phase,
            round: 0,
            claim: "x".into(),
            token: 1,
            holder: "n".into(),
            written_at_ms: 0,
            handoff: Handoff {
                commit: commit.map(str::to_string),
                verdict,
                ..Default::default()
            },
            escalations: vec![],
        }
    }

    #[test]
    fn the_change_under_review_is_the_latest_implement_or_rework() {
        let a = "1111111111111111111111111111111111111111";
        let b = "2222222222222222222222222222222222222222";
        let j = job(
            vec![
                result(Phase::Implement, Some(a), None),
                result(Phase::Review, Some(a), Some(Verdict::Reject)),
                result(Phase::Rework, Some(b), None),
            ],
            Phase::Review,
        );
        assert_eq!(change_commit(&j).map(|o| o.to_string()).as_deref(), Some(b));
        assert_eq!(last_rejection(&j).map(|r| r.phase), Some(Phase::Review));
        assert_eq!(change_commit(&job(vec![], Phase::Merge)), None);
    }
}
