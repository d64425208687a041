//! The `command` executor: runs a configured program per phase (any agent CLI, usually
//! through a small wrapper such as `examples/executors/claude.sh`) in the story's
//! worktree, and reads a JSON handoff back (docs/DESIGN.md §7).
//!
//! The contract with the program (examples/executors/README.md says it for users):
//!
//! - **in**: the job as JSON in `$MESH_JOB_FILE`, a markdown prompt in
//!   `$MESH_PROMPT_FILE`, the other `MESH_*` variables (see [`MESH_VARS`]), and the
//!   argument template with `{job_file}`, `{handoff_file}`, `{prompt_file}`, `{phase}`,
//!   `{story}` and `{worktree}` substituted. The working directory is the worktree, stdin
//!   is empty, and the environment is clean apart from `command.env_allow`.
//! - **out**: exit 0 and a handoff as JSON, written to `$MESH_HANDOFF_FILE` or printed as
//!   the last JSON object on stdout.
//! - anything else (a non-zero exit, a signal, the timeout, too much output, no JSON,
//!   invalid JSON, a review without a verdict) is a failed attempt whose reason a human
//!   can act on, never a crash of the node.
//!
//! The job, prompt and handoff files and the program's stdout/stderr are kept in the
//! node's log directory, one set per job ([`log_stem`]), never in the worktree (which
//! gets committed). The program runs in its own process group; dropping the future (the
//! node lost the claim), the timeout and an output overflow kill the whole group, and so
//! does the program's own exit (no stray background processes outlive a job).
//!
//! This module owns the process and its files; it never decides anything about claims
//! or stories.

use super::handoff::{check_handoff, read_handoff_file};
pub use super::handoff::{handoff_from_stdout, MAX_HANDOFF_BYTES};
use super::process::{self, Keep, ProcessError};
pub use super::prompt::prompt;
use super::{ExecError, Executor, Job, Workspace};
use crate::core::model::{Handoff, Phase};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

/// Default for `command.timeout_secs`: how long one phase may run.
pub const DEFAULT_TIMEOUT_SECS: u64 = 1800;
/// Default for `command.max_output_bytes`: the cap on each of stdout and stderr.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 1024 * 1024;
/// The largest `command.max_output_bytes` accepted (stdout is kept in memory).
pub const MAX_OUTPUT_BYTES_LIMIT: u64 = 256 * 1024 * 1024;
/// Default for `command.env_allow`.
pub const DEFAULT_ENV_ALLOW: [&str; 5] = ["PATH", "HOME", "USER", "LANG", "TERM"];
/// The placeholders substituted in `command.args`, written `{name}`.
pub const PLACEHOLDERS: [&str; 6] = [
    "job_file",
    "handoff_file",
    "prompt_file",
    "phase",
    "story",
    "worktree",
];
/// The environment variables the executor sets for the program.
pub const MESH_VARS: [&str; 12] = [
    "MESH_JOB_FILE",
    "MESH_HANDOFF_FILE",
    "MESH_PROMPT_FILE",
    "MESH_PHASE",
    "MESH_STORY",
    "MESH_STORY_KEY",
    "MESH_CLAIM",
    "MESH_TOKEN",
    "MESH_ROUND",
    "MESH_ATTEMPT",
    "MESH_WORKTREE",
    "MESH_NODE",
];

/// How much of stderr is kept in memory for the failure reason (all of it is logged).
const STDERR_KEEP_BYTES: usize = 64 * 1024;
/// How many lines of stderr a failure reason quotes, and at most how many characters.
const STDERR_TAIL_LINES: usize = 15;
const STDERR_TAIL_CHARS: usize = 2000;

/// The `[command]` section of a node's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandConfig {
    /// The program every phase runs unless `phases.<phase>.program` says otherwise: a
    /// name looked up in the allowlisted `PATH`, or a path (a relative path is taken
    /// from the node's working directory).
    pub program: String,
    /// Its arguments, a template: `{job_file}`, `{handoff_file}`, `{prompt_file}`,
    /// `{phase}`, `{story}` and `{worktree}` are substituted.
    pub args: Vec<String>,
    /// Per-phase overrides, keyed by phase name (`research`, `plan_review`, ...).
    pub phases: BTreeMap<String, PhaseCommand>,
    /// How long one phase may run before its process group is killed.
    pub timeout_secs: u64,
    /// The cap on each of stdout and stderr, in bytes; over it the job is killed.
    pub max_output_bytes: u64,
    /// The variables passed on from the node's environment; `NAME_*` passes every
    /// variable starting with `NAME_`. The `MESH_*` variables are always set.
    pub env_allow: Vec<String>,
    /// The exit code by which the program says its provider rate-limited it (75,
    /// EX_TEMPFAIL, by default); a JSON object `{"rate_limited": true, "retry_after_s":
    /// N}` on stdout says the same with any exit code. Not a failed attempt: the node
    /// backs off and claims more slowly.
    pub rate_limit_exit_code: Option<i32>,
}

impl Default for CommandConfig {
    fn default() -> CommandConfig {
        CommandConfig {
            program: String::new(),
            args: Vec::new(),
            phases: BTreeMap::new(),
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            env_allow: DEFAULT_ENV_ALLOW.iter().map(|s| s.to_string()).collect(),
            rate_limit_exit_code: Some(75),
        }
    }
}

/// One phase's override of the program and/or its arguments (a missing one is
/// inherited from the top of `[command]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhaseCommand {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
}

impl CommandConfig {
    /// Checks the section; the error names the key, the problem and the fix.
    pub fn validate(&self) -> Result<(), String> {
        let phase_names = || {
            Phase::ALL
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for name in self.phases.keys() {
            if Phase::parse(name).is_none() {
                return Err(format!(
                    "command.phases.{name} is not a phase: use one of {}",
                    phase_names()
                ));
            }
        }
        for (name, pc) in &self.phases {
            if pc.program.as_deref().is_some_and(|p| p.trim().is_empty()) {
                return Err(format!(
                    "command.phases.{name}.program is empty: remove it to run command.program, \
                     or name the program this phase runs"
                ));
            }
        }
        if self.program.trim().is_empty() {
            let uncovered: Vec<&str> = Phase::ALL
                .iter()
                .filter(|p| {
                    self.phases
                        .get(p.as_str())
                        .and_then(|c| c.program.as_ref())
                        .is_none()
                })
                .map(|p| p.as_str())
                .collect();
            if !uncovered.is_empty() {
                return Err(format!(
                    "command.program is empty: set it to an agent CLI, e.g. \
                     examples/executors/claude.sh (no program for: {})",
                    uncovered.join(", ")
                ));
            }
        }
        check_template("command.args", &self.args)?;
        for (name, pc) in &self.phases {
            if let Some(args) = &pc.args {
                check_template(&format!("command.phases.{name}.args"), args)?;
            }
        }
        if self.timeout_secs == 0 {
            return Err(format!(
                "command.timeout_secs is 0: give the longest one phase may run, in seconds \
                 (default {DEFAULT_TIMEOUT_SECS})"
            ));
        }
        if self.max_output_bytes == 0 || self.max_output_bytes > MAX_OUTPUT_BYTES_LIMIT {
            return Err(format!(
                "command.max_output_bytes is {}: use 1..={MAX_OUTPUT_BYTES_LIMIT} \
                 (default {DEFAULT_MAX_OUTPUT_BYTES}, per stream)",
                self.max_output_bytes
            ));
        }
        for e in &self.env_allow {
            let name = e.strip_suffix('*').unwrap_or(e);
            if name.is_empty() && e != "*" || name.contains(['=', '\0', '*']) {
                return Err(format!(
                    "command.env_allow entry {e:?} is not a variable name: use NAME, or NAME_* \
                     for every variable starting with NAME_"
                ));
            }
            if e == "*" {
                return Err(
                    "command.env_allow entry \"*\" would pass the whole environment: list the \
                     variables the program needs (e.g. ANTHROPIC_API_KEY)"
                        .to_string(),
                );
            }
            if name.starts_with("MESH_") {
                return Err(format!(
                    "command.env_allow entry {e:?}: MESH_* variables are set by the executor; \
                     remove it"
                ));
            }
        }
        Ok(())
    }

    /// The program and argument template `phase` runs.
    pub fn command_for(&self, phase: Phase) -> (&str, &[String]) {
        let o = self.phases.get(phase.as_str());
        let program = o
            .and_then(|c| c.program.as_deref())
            .unwrap_or(&self.program);
        let args = o.and_then(|c| c.args.as_deref()).unwrap_or(&self.args);
        (program, args)
    }
}

/// The `{name}` placeholders in `s`: names of lowercase letters and `_`. Other braces,
/// such as JSON in an argument, and shell parameter expansions (`${name}`, in a
/// `sh -c` script) are left alone.
fn placeholders_in(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((_, name, after)) = next_placeholder(rest) {
        out.push(name);
        rest = after;
    }
    out
}

/// The next `{name}` in `s`: the text before it, the name, and the text after it.
fn next_placeholder(s: &str) -> Option<(&str, &str, &str)> {
    let mut from = 0;
    while let Some(i) = s[from..].find('{').map(|i| from + i) {
        let after = &s[i + 1..];
        let j = after.find('}')?;
        let name = &after[..j];
        let is_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        if is_name && !s[..i].ends_with('$') {
            return Some((&s[..i], name, &after[j + 1..]));
        }
        from = i + 1;
    }
    None
}

fn check_template(key: &str, args: &[String]) -> Result<(), String> {
    for a in args {
        for name in placeholders_in(a) {
            if !PLACEHOLDERS.contains(&name) {
                let known: Vec<String> = PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect();
                return Err(format!(
                    "{key}: unknown placeholder {{{name}}} in {a:?}; known: {}",
                    known.join(" ")
                ));
            }
        }
    }
    Ok(())
}

/// Substitutes the known placeholders in one pass (a substituted value is never
/// substituted again).
fn substitute(arg: &str, vars: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some((before, name, after)) = next_placeholder(rest) {
        out.push_str(before);
        match vars.iter().find(|(k, _)| *k == name) {
            Some((_, v)) => out.push_str(v),
            None => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Runs a configured program per phase; see the module documentation for the contract.
#[derive(Debug, Clone)]
pub struct CommandExecutor {
    cfg: Arc<CommandConfig>,
}

impl CommandExecutor {
    /// Validates the config and resolves relative program paths against the node's
    /// working directory; a program given as a path must exist and be executable.
    pub fn new(cfg: CommandConfig) -> Result<CommandExecutor, String> {
        cfg.validate()?;
        let mut cfg = cfg;
        let cwd = std::env::current_dir()
            .map_err(|e| format!("cannot read the working directory: {e}"))?;
        cfg.program = resolve_program("command.program", &cfg.program, &cwd)?;
        for (name, pc) in cfg.phases.iter_mut() {
            if let Some(p) = &pc.program {
                let key = format!("command.phases.{name}.program");
                pc.program = Some(resolve_program(&key, p, &cwd)?);
            }
        }
        Ok(CommandExecutor { cfg: Arc::new(cfg) })
    }

    /// The config in use (program paths resolved).
    pub fn config(&self) -> &CommandConfig {
        &self.cfg
    }
}

/// A program containing `/` is a path: made absolute against `cwd` (the child runs in
/// the worktree, where a relative path would mean something else) and checked.
fn resolve_program(key: &str, program: &str, cwd: &Path) -> Result<String, String> {
    if program.is_empty() || !program.contains('/') {
        return Ok(program.to_string());
    }
    let path = cwd.join(program);
    let meta = std::fs::metadata(&path).map_err(|e| {
        format!(
            "{key} = {program:?}: cannot use {}: {e}; give an existing script or binary",
            path.display()
        )
    })?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "{key} = {program:?}: {} is not an executable file; chmod +x it",
            path.display()
        ));
    }
    Ok(path.to_string_lossy().into_owned())
}

/// The file name stem of a job's files in the log directory:
/// `<display id>-<phase>-<first 8 hex digits of SHA-256(claim)>` (a claim id starts with
/// the node's peer id, so its own prefix would be the same for every job).
pub fn log_stem(job: &Job) -> String {
    let id: String = job
        .display_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let digest = Sha256::digest(job.claim.as_bytes());
    format!("{id}-{}-{}", job.phase.as_str(), hex::encode(&digest[..4]))
}

/// A job's files in the log directory.
struct JobFiles {
    /// `<log dir>/<stem>`, for failure reasons.
    stem: PathBuf,
    job: PathBuf,
    prompt: PathBuf,
    handoff: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl JobFiles {
    fn new(job: &Job, log_dir: &Path) -> JobFiles {
        let stem = log_stem(job);
        let f = |ext: &str| log_dir.join(format!("{stem}.{ext}"));
        JobFiles {
            stem: log_dir.join(&stem),
            job: f("job.json"),
            prompt: f("prompt.md"),
            handoff: f("handoff.json"),
            stdout: f("stdout"),
            stderr: f("stderr"),
        }
    }

    /// Where to look, for a failure reason.
    fn logs(&self) -> String {
        format!("logs: {}.stdout/.stderr", self.stem.display())
    }
}

impl Executor for CommandExecutor {
    fn run(&self, job: Job, ws: Workspace) -> BoxFuture<'static, Result<Handoff, ExecError>> {
        let cfg = Arc::clone(&self.cfg);
        Box::pin(async move { run_job(&cfg, job, ws).await })
    }
}

/// The variables passed on from this process's environment.
fn allowed_env(allow: &[String]) -> Vec<(OsString, OsString)> {
    let matches = |name: &str| {
        allow.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == a,
        })
    };
    std::env::vars_os()
        .filter(|(k, _)| {
            k.to_str()
                .is_some_and(|k| !k.starts_with("MESH_") && matches(k))
        })
        .collect()
}

/// The `MESH_*` variables for a job, in [`MESH_VARS`] order.
fn mesh_env(job: &Job, ws: &Workspace, files: &JobFiles) -> Vec<(&'static str, OsString)> {
    let values: [OsString; 12] = [
        files.job.clone().into(),
        files.handoff.clone().into(),
        files.prompt.clone().into(),
        job.phase.as_str().into(),
        job.display_id.clone().into(),
        job.story.clone().into(),
        job.claim.clone().into(),
        job.token.to_string().into(),
        job.round.to_string().into(),
        job.attempt.to_string().into(),
        ws.dir.clone().into(),
        ws.node.clone().into(),
    ];
    MESH_VARS.into_iter().zip(values).collect()
}

/// The program's name for failure reasons (its file name, not a long path).
fn short_name(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

async fn run_job(cfg: &CommandConfig, job: Job, ws: Workspace) -> Result<Handoff, ExecError> {
    let (program, args) = cfg.command_for(job.phase);
    let name = short_name(program).to_string();
    if !ws.dir.is_dir() {
        return Err(ExecError::Setup(format!(
            "the worktree {} does not exist; the node must create it before the job",
            ws.dir.display()
        )));
    }
    tokio::fs::create_dir_all(&ws.log_dir).await.map_err(|e| {
        ExecError::Setup(format!(
            "cannot create log directory {}: {e}",
            ws.log_dir.display()
        ))
    })?;
    let files = JobFiles::new(&job, &ws.log_dir);

    let job_json = serde_json::to_vec_pretty(&job)
        .map_err(|e| ExecError::Setup(format!("cannot encode the job as JSON: {e}")))?;
    write_file(&files.job, &job_json).await?;
    write_file(&files.prompt, prompt(&job, &files.handoff).as_bytes()).await?;
    match tokio::fs::remove_file(&files.handoff).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ExecError::Setup(format!(
                "cannot remove the stale handoff file {}: {e}",
                files.handoff.display()
            )))
        }
    }
    let out_log = create_file(&files.stdout).await?;
    let err_log = create_file(&files.stderr).await?;

    let path_str = |p: &Path| p.to_string_lossy().into_owned();
    let vars = [
        ("job_file", path_str(&files.job)),
        ("handoff_file", path_str(&files.handoff)),
        ("prompt_file", path_str(&files.prompt)),
        ("phase", job.phase.as_str().to_string()),
        ("story", job.display_id.clone()),
        ("worktree", path_str(&ws.dir)),
    ];
    let capture = |log: (tokio::fs::File, PathBuf), keep| process::Capture {
        log: Some(log),
        keep,
        cap: Some(cfg.max_output_bytes),
    };
    let spec = process::Spec {
        program: program.into(),
        args: args.iter().map(|a| substitute(a, &vars).into()).collect(),
        dir: ws.dir.clone(),
        env: Some(
            allowed_env(&cfg.env_allow)
                .into_iter()
                .chain(
                    mesh_env(&job, &ws, &files)
                        .into_iter()
                        .map(|(k, v)| (k.into(), v)),
                )
                .collect(),
        ),
        timeout: Duration::from_secs(cfg.timeout_secs),
        stdout: capture((out_log, files.stdout.clone()), Keep::All),
        stderr: capture(
            (err_log, files.stderr.clone()),
            Keep::Tail(STDERR_KEEP_BYTES),
        ),
    };
    // Dropping this future (the claim was lost) kills the program's process group.
    let (out, err, status) = match process::run(spec).await {
        Ok(done) => (done.stdout, done.stderr, done.status),
        Err(ProcessError::Spawn { source, .. }) => {
            return Err(ExecError::Spawn {
                program: program.to_string(),
                source,
            })
        }
        Err(ProcessError::TimedOut { .. }) => {
            return Err(ExecError::TimedOut {
                program: name,
                secs: cfg.timeout_secs,
                logs: files.logs(),
            })
        }
        Err(ProcessError::OutputCap { stream, cap }) => {
            return Err(ExecError::OutputCap {
                program: name,
                stream,
                cap,
                logs: files.logs(),
            })
        }
        Err(source) => {
            return Err(ExecError::Process {
                program: name,
                source,
                logs: files.logs(),
            })
        }
    };
    if let Some(retry_after_ms) = super::handoff::rate_limit_from_stdout(&out).or_else(|| {
        (status.code().is_some() && status.code() == cfg.rate_limit_exit_code).then_some(None)
    }) {
        return Err(ExecError::RateLimited {
            program: name,
            retry_after_ms,
            detail: exit_reason(status, &err),
        });
    }
    if !status.success() {
        return Err(ExecError::Exited {
            program: name,
            status,
            detail: exit_reason(status, &err),
            logs: files.logs(),
        });
    }
    let bad = |reason: String| ExecError::BadHandoff {
        program: name.clone(),
        reason,
    };
    let from_file = read_handoff_file(&files.handoff).await.map_err(bad)?;
    let handoff = match from_file {
        Some(h) => h,
        None => handoff_from_stdout(&out).map_err(|e| bad(format!("{e}; {}", files.logs())))?,
    };
    let mut handoff = check_handoff(job.phase, handoff).map_err(bad)?;
    // The agent CLI's own report of what it used (claude's and codex's JSON output),
    // where the handoff does not say.
    if handoff.tokens == 0 && handoff.cost_micro_usd == 0 {
        if let Some(u) = super::handoff::usage_from_stdout(&out) {
            (handoff.tokens_in, handoff.tokens_out, handoff.tokens) =
                (u.tokens_in, u.tokens_out, u.tokens);
            handoff.cost_micro_usd = u.cost_micro_usd;
        }
    }
    Ok(handoff)
}

async fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ExecError> {
    tokio::fs::write(path, bytes)
        .await
        .map_err(|e| ExecError::Setup(format!("cannot write {}: {e}", path.display())))
}

async fn create_file(path: &Path) -> Result<tokio::fs::File, ExecError> {
    tokio::fs::File::create(path)
        .await
        .map_err(|e| ExecError::Setup(format!("cannot create {}: {e}", path.display())))
}

/// Why a finished program failed: its exit code or signal, and the end of its stderr.
fn exit_reason(status: ExitStatus, stderr: &[u8]) -> String {
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!(
            "was killed by signal {sig} ({}){}",
            signal_name(sig),
            if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            }
        ),
        (None, None) => format!("failed ({status})"),
    };
    format!("{how}; {}", stderr_tail(stderr))
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// The last lines of stderr, for a failure reason.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim_end();
    if text.trim().is_empty() {
        return "stderr was empty".to_string();
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut tail = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n");
    let n = tail.chars().count();
    if n > STDERR_TAIL_CHARS {
        tail = format!(
            "...{}",
            tail.chars().skip(n - STDERR_TAIL_CHARS).collect::<String>()
        );
    }
    format!("stderr (last lines):\n{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_substituted_once_and_json_braces_are_left_alone() {
        let vars = [
            ("phase", "{story}".to_string()),
            ("story", "S-1".to_string()),
        ];
        assert_eq!(
            substitute("--x={phase}/{story}/{\"a\":1}/{nope}", &vars),
            "--x={story}/S-1/{\"a\":1}/{nope}"
        );
        assert_eq!(
            placeholders_in("{a_b} {\"x\":1} {} {Job} ${shell} {{phase}}"),
            vec!["a_b", "phase"]
        );
        assert_eq!(substitute("${story} {{story}}", &vars), "${story} {S-1}");
    }

    #[test]
    fn the_config_names_the_bad_key() {
        let ok = CommandConfig {
            program: "agent".into(),
            ..Default::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let e = CommandConfig::default().validate().unwrap_err();
        assert!(e.starts_with("command.program is empty"), "{e}");
        let mut c = ok.clone();
        c.phases.insert("deploy".into(), PhaseCommand::default());
        assert!(c.validate().unwrap_err().contains("command.phases.deploy"));
        let mut c = ok.clone();
        c.args = vec!["{jobfile}".into()];
        let e = c.validate().unwrap_err();
        assert!(e.contains("unknown placeholder {jobfile}"), "{e}");
        let mut c = ok.clone();
        c.timeout_secs = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .contains("command.timeout_secs is 0"));
        let mut c = ok.clone();
        c.env_allow = vec!["MESH_X".into()];
        assert!(c.validate().unwrap_err().contains("MESH_*"));
        let mut c = ok;
        c.env_allow = vec!["*".into()];
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_config_reads_from_toml_with_defaults() {
        let c: CommandConfig = toml::from_str(
            r#"
            program = "claude.sh"
            [phases.review]
            args = ["--read-only"]
            "#,
        )
        .unwrap();
        assert_eq!(c.timeout_secs, DEFAULT_TIMEOUT_SECS);
        assert_eq!(c.command_for(Phase::Review).1, ["--read-only".to_string()]);
        assert_eq!(c.command_for(Phase::Plan), ("claude.sh", &[][..]));
        assert!(toml::from_str::<CommandConfig>("programme = \"x\"").is_err());
    }
}
