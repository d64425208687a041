//! Executors: what runs one phase of one story (DESIGN.md §7). An executor gets a
//! [`Job`] (story, phase, earlier handoffs, knowledge, earlier failures) and a
//! [`Workspace`] (the story's git worktree and a log directory) and returns a handoff or
//! a failure reason. Two implementations:
//!
//! - [`sim::SimExecutor`]: built in, deterministic from a seed: a duration per phase, a
//!   failure rate, plausible handoffs and real edits of the planned files during
//!   implement/rework, so merges and conflicts are real;
//! - [`command::CommandExecutor`]: runs a configured program per phase (any agent CLI).
//!
//! Executors are I/O shells: they may sleep, spawn and touch files; the core only sees the
//! handoff (or the failure reason). Cancellation is dropping the future: an executor
//! must stop its work (kill its processes) when that happens.

pub mod command;
pub mod process;
pub mod prompt;
pub mod sim;

pub use crate::core::Job;
pub use sim::SimExecutor;

use crate::core::model::Handoff;
use futures::future::BoxFuture;
use std::path::PathBuf;

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
    fn run(&self, job: Job, ws: Workspace) -> BoxFuture<'static, Result<Handoff, String>>;
}
