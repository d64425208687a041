//! Executors: what runs one phase of one story (docs/DESIGN.md §7). An executor gets a
//! [`Job`] (story, phase, earlier handoffs, knowledge, earlier failures) and a
//! [`Workspace`] (the story's git worktree and a log directory) and returns a handoff or
//! an [`ExecError`], whose message is the failure reason the mesh records. Two
//! implementations:
//!
//! - [`sim::SimExecutor`]: built in, deterministic from a seed: a duration per phase, a
//!   failure rate, plausible handoffs and real edits of the planned files during
//!   implement/rework, so merges and conflicts are real;
//! - [`command::CommandExecutor`]: runs a configured program per phase (any agent CLI).
//!
//! [`process`] is the child-process runner the command executor and the merge gate's
//! test command share; [`prompt`] writes the command executor's prompt and [`handoff`]
//! reads its program's answer back.
//!
//! Executors are I/O shells: they may sleep, spawn and touch files; the core only sees the
//! handoff (or the failure reason). Cancellation is dropping the future: an executor
//! must stop its work (kill its processes) when that happens.

pub mod command;
pub mod handoff;
pub mod process;
pub mod prompt;
pub mod sim;

pub use crate::core::Job;
pub use sim::SimExecutor;

use crate::core::model::Handoff;
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::process::ExitStatus;

/// Where a job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    /// The story's worktree (checked out on `mesh/<story>`); the executor's working
    /// directory. Edits made here during implement/rework are committed by the node.
    pub dir: PathBuf,
    /// Where the executor keeps logs of this job (created by the caller).
    pub log_dir: PathBuf,
    /// This node's peer id.
    pub node: String,
}

/// Runs jobs. A job's future is dropped (cancelled) when its claim is lost.
pub trait Executor: Send + Sync + 'static {
    fn run(&self, job: Job, ws: Workspace) -> BoxFuture<'static, Result<Handoff, ExecError>>;
}

/// Why a job produced no handoff. The message is the failure reason the mesh records
/// (and shows the next attempt): it names the program, what went wrong and where the
/// logs are, so a human can act on it.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program said its provider rate-limited it (its exit code, or
    /// `"rate_limited": true` on stdout): not the work's fault.
    #[error("{program}: rate-limited by its provider ({detail})")]
    RateLimited {
        program: String,
        retry_after_ms: Option<u64>,
        detail: String,
    },
    /// The job's files or directories could not be made ready; the program did not run.
    #[error("{0}")]
    Setup(String),
    /// The program could not be started.
    #[error("cannot start {program:?}: {source}; check command.program (a name is looked up in the allowlisted PATH)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// The program ran past `command.timeout_secs`; its process group was killed.
    #[error("{program}: timed out after {secs}s (command.timeout_secs); killed its process group; {logs}")]
    TimedOut {
        program: String,
        secs: u64,
        logs: String,
    },
    /// The program wrote more than `command.max_output_bytes` on one stream; its process
    /// group was killed.
    #[error("{program}: {stream} exceeded {cap} bytes (command.max_output_bytes); stopped reading and killed its process group; {logs}")]
    OutputCap {
        program: String,
        stream: &'static str,
        cap: u64,
        logs: String,
    },
    /// Reading, logging or waiting for the program failed.
    #[error("{program}: {source}; {logs}")]
    Process {
        program: String,
        source: process::ProcessError,
        logs: String,
    },
    /// The program exited unsuccessfully or was killed by a signal; `detail` says how and
    /// quotes the end of its stderr.
    #[error("{program}: {detail}; {logs}")]
    Exited {
        program: String,
        status: ExitStatus,
        detail: String,
        logs: String,
    },
    /// The program succeeded but its handoff is missing, invalid, too big, or wrong for
    /// the phase (a review without a verdict).
    #[error("{program}: {reason}")]
    BadHandoff { program: String, reason: String },
    /// Any other executor's failed attempt (the simulated executor, test executors).
    #[error("{0}")]
    Failed(String),
}

impl ExecError {
    /// A failed attempt with this reason.
    pub fn failed(reason: impl Into<String>) -> ExecError {
        ExecError::Failed(reason.into())
    }
}
