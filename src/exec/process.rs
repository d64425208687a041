//! The child-process runner shared by the command executor ([`super::command`]) and the
//! merge gate's test command ([`crate::git`]): one place that knows how to start a
//! program and make sure it, and everything it started, is gone when we are done.
//!
//! - the program runs in the given directory, stdin empty, in **its own process group**;
//! - its environment is the node's, or (`env: Some`) exactly the variables given;
//! - stdout and stderr are read as they come: copied to a log file, kept in memory (all
//!   of it or a tail, possibly one tail for both streams, interleaved), and over a cap the
//!   run fails ([`ProcessError::OutputCap`]);
//! - past its timeout the run fails ([`ProcessError::TimedOut`]);
//! - the whole process group is killed (SIGKILL) when the run ends however it ends: the
//!   program exited (stray background processes die with it), the timeout, the cap, a
//!   stop signal, or the future being dropped (the caller lost interest).
//!
//! This is a shell (it spawns and blocks); it decides nothing.

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// How often [`run_blocking`] looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(10);
/// How long a killed program is waited for (reaped) before the run returns anyway.
const REAP_WAIT: Duration = Duration::from_secs(1);
/// The read buffer of each stream.
const READ_CHUNK: usize = 64 * 1024;

/// What to run and how.
#[derive(Debug)]
pub struct Spec {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// The working directory.
    pub dir: PathBuf,
    /// `None`: the node's own environment. `Some`: a clean environment holding exactly
    /// these variables.
    pub env: Option<Vec<(OsString, OsString)>>,
    /// How long the program may run (until both its streams end and it exited).
    pub timeout: Duration,
    pub stdout: Capture,
    pub stderr: Capture,
}

/// What happens to one output stream.
#[derive(Debug, Default)]
pub struct Capture {
    /// Where the stream is copied as it comes (at most `cap` bytes of it), with its path
    /// for error messages.
    pub log: Option<(tokio::fs::File, PathBuf)>,
    /// What is kept in memory.
    pub keep: Keep,
    /// Over this many bytes the run fails with [`ProcessError::OutputCap`] (and the
    /// process group is killed). `None`: no cap (keep a tail, then).
    pub cap: Option<u64>,
}

/// What of a stream is kept in memory.
#[derive(Debug, Default)]
pub enum Keep {
    /// Nothing.
    #[default]
    Nothing,
    /// All of it (bound it with a cap).
    All,
    /// Its last bytes, at least this many (between n and 2n are kept).
    Tail(usize),
    /// Its bytes go into this tail, which the caller may share between both streams
    /// (interleaved) and reads even when the run fails (a timeout).
    Shared(SharedTail),
}

/// The last `cap` bytes written to it.
#[derive(Debug)]
pub struct Tail {
    cap: usize,
    bytes: Vec<u8>,
}

/// A [`Tail`] that both pumps and the caller hold.
pub type SharedTail = Arc<Mutex<Tail>>;

impl Tail {
    pub fn new(cap: usize) -> Tail {
        Tail {
            cap,
            bytes: Vec::new(),
        }
    }

    /// A tail of `cap` bytes to share.
    pub fn shared(cap: usize) -> SharedTail {
        Arc::new(Mutex::new(Tail::new(cap)))
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
        if self.bytes.len() > self.cap {
            let cut = self.bytes.len() - self.cap;
            self.bytes.drain(..cut);
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A program that ran to its end.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// What [`Capture::keep`] kept of each stream (empty for `Nothing` and `Shared`).
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Why a run did not finish. Each message says what happened; callers add the program's
/// name and where its logs are.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: OsString,
        source: std::io::Error,
    },
    #[error("timed out after {}s", .after.as_secs_f64())]
    TimedOut { after: Duration },
    #[error("stopped")]
    Stopped,
    #[error("{stream} exceeded {cap} bytes")]
    OutputCap { stream: &'static str, cap: u64 },
    #[error("cannot read the program's {stream}: {source}")]
    Read {
        stream: &'static str,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", .path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot wait for the program: {0}")]
    Wait(std::io::Error),
    #[error("cannot start a runtime for the program: {0}")]
    Runtime(std::io::Error),
}

/// Runs `spec` to its end. Dropping the future kills the process group.
pub async fn run(spec: Spec) -> Result<Finished, ProcessError> {
    run_until(spec, std::future::pending()).await
}

/// [`run`] from blocking code (a `spawn_blocking` task or a plain thread): on a runtime
/// of its own, stopped ([`ProcessError::Stopped`]) when `stop` is set.
pub fn run_blocking(spec: Spec, stop: &AtomicBool) -> Result<Finished, ProcessError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProcessError::Runtime)?;
    rt.block_on(run_until(spec, async {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(STOP_POLL).await;
        }
    }))
}

/// Runs `spec` until it ends or `stop` completes ([`ProcessError::Stopped`]).
pub async fn run_until(
    spec: Spec,
    stop: impl Future<Output = ()>,
) -> Result<Finished, ProcessError> {
    let Spec {
        program,
        args,
        dir,
        env,
        timeout,
        stdout: out_cap,
        stderr: err_cap,
    } = spec;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(vars) = env {
        cmd.env_clear().envs(vars);
    }
    let mut child = cmd
        .spawn()
        .map_err(|source| ProcessError::Spawn { program, source })?;
    // From here on, however this ends (dropped included), the process group dies.
    let mut guard = GroupGuard::new(child.id());
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(ProcessError::Read {
            stream: "stdout/stderr",
            source: std::io::Error::other("not captured"),
        });
    };
    let ended = {
        let guard = &mut guard;
        let child = &mut child;
        let waiter = async move {
            let status = child.wait().await;
            // Stray background processes die with the program, and their ends of the
            // pipes close, so the pumps see the end of the output.
            guard.kill();
            status.map_err(ProcessError::Wait)
        };
        let work = async {
            tokio::try_join!(
                pump(stdout, out_cap, "stdout"),
                pump(stderr, err_cap, "stderr"),
                waiter,
            )
        };
        tokio::select! {
            done = tokio::time::timeout(timeout, work) => match done {
                Err(_) => Err(ProcessError::TimedOut { after: timeout }),
                Ok(r) => r,
            },
            () = stop => Err(ProcessError::Stopped),
        }
    };
    match ended {
        Ok((stdout, stderr, status)) => Ok(Finished {
            status,
            stdout,
            stderr,
        }),
        Err(e) => {
            guard.kill();
            // Reap it (bounded: a process stuck in the kernel is left to tokio).
            let _ = tokio::time::timeout(REAP_WAIT, child.wait()).await;
            Err(e)
        }
    }
}

/// Kills a process group with SIGKILL when dropped (or on [`GroupGuard::kill`]), once.
struct GroupGuard {
    pgid: Option<libc::pid_t>,
}

impl GroupGuard {
    /// `pid` leads its own group (spawned with `process_group(0)`).
    fn new(pid: Option<u32>) -> GroupGuard {
        let pgid = pid
            .and_then(|p| libc::pid_t::try_from(p).ok())
            .filter(|&p| p > 1);
        GroupGuard { pgid }
    }

    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            kill_group(pgid);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends SIGKILL to every process in group `pgid` (> 1, so never our own group or every
/// process). Errors (the group is already gone) are ignored.
fn kill_group(pgid: libc::pid_t) {
    debug_assert!(pgid > 1);
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Reads a stream to its end as [`Capture`] says. Over the cap it stops and fails: the
/// caller's drop of the other futures kills the process group.
async fn pump<R: AsyncRead + Unpin>(
    mut from: R,
    capture: Capture,
    stream: &'static str,
) -> Result<Vec<u8>, ProcessError> {
    let Capture { mut log, keep, cap } = capture;
    let log_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ProcessError::Log { path, source }
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut total: u64 = 0;
    loop {
        let n = from
            .read(&mut buf)
            .await
            .map_err(|source| ProcessError::Read { stream, source })?;
        if n == 0 {
            break;
        }
        let room = match cap {
            Some(cap) => usize::try_from(cap.saturating_sub(total)).unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        let chunk = &buf[..n.min(room)];
        if let Some((file, path)) = log.as_mut() {
            file.write_all(chunk).await.map_err(log_err(path))?;
        }
        match &keep {
            Keep::Nothing => {}
            Keep::All => kept.extend_from_slice(chunk),
            Keep::Tail(tail) => {
                kept.extend_from_slice(chunk);
                if kept.len() > 2 * tail {
                    kept.drain(..kept.len() - tail);
                }
            }
            Keep::Shared(tail) => {
                if let Ok(mut t) = tail.lock() {
                    t.push(chunk);
                }
            }
        }
        total += n as u64;
        if let Some(cap) = cap.filter(|&cap| total > cap) {
            if let Some((file, path)) = log.as_mut() {
                file.flush().await.map_err(log_err(path))?;
            }
            return Err(ProcessError::OutputCap { stream, cap });
        }
    }
    if let Some((file, path)) = log.as_mut() {
        file.flush().await.map_err(log_err(path))?;
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn sh(script: &str, dir: &Path) -> Spec {
        Spec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            dir: dir.to_path_buf(),
            env: None,
            timeout: Duration::from_secs(60),
            stdout: Capture {
                keep: Keep::All,
                ..Default::default()
            },
            stderr: Capture {
                keep: Keep::All,
                ..Default::default()
            },
        }
    }

    fn alive(pid: libc::pid_t) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    /// Waits (generously) for `pid` to be gone; a zombie still answers kill(0), so the
    /// check reads its state.
    fn gone(pid: libc::pid_t) -> bool {
        for _ in 0..500 {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
            let zombie = state
                .as_deref()
                .and_then(|s| s.rsplit_once(')'))
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            if !alive(pid) || zombie {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn read_pid(path: &Path) -> libc::pid_t {
        for _ in 0..500 {
            if let Ok(s) = std::fs::read_to_string(path) {
                if let Ok(pid) = s.trim().parse() {
                    return pid;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no pid in {}", path.display());
    }

    #[tokio::test]
    async fn the_exit_status_and_both_streams_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let done = run(sh("echo out; echo err >&2; exit 3", dir.path()))
            .await
            .unwrap();
        assert_eq!(done.status.code(), Some(3));
        assert_eq!(done.stdout, b"out\n");
        assert_eq!(done.stderr, b"err\n");
        let done = run(sh("kill -TERM $$", dir.path())).await.unwrap();
        assert_eq!(done.status.signal(), Some(libc::SIGTERM));
    }

    #[tokio::test]
    async fn the_program_runs_in_its_directory_with_stdin_empty() {
        let dir = tempfile::tempdir().unwrap();
        let done = run(sh("pwd -P; cat; echo end", dir.path())).await.unwrap();
        let want = format!("{}\nend\n", dir.path().canonicalize().unwrap().display());
        assert_eq!(String::from_utf8_lossy(&done.stdout), want);
    }

    #[tokio::test]
    async fn a_clean_environment_holds_exactly_the_given_variables() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = sh("", dir.path());
        spec.program = "/usr/bin/env".into();
        spec.args = Vec::new();
        spec.env = Some(vec![("ONLY".into(), "this".into())]);
        let done = run(spec).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&done.stdout), "ONLY=this\n");
        // `None` passes the node's environment on.
        let mut spec = sh("", dir.path());
        spec.program = "/usr/bin/env".into();
        spec.args = Vec::new();
        let done = run(spec).await.unwrap();
        let env = String::from_utf8_lossy(&done.stdout).into_owned();
        assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    }

    #[tokio::test]
    async fn the_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("bg.pid");
        let mut spec = sh("sleep 600 & echo $! > bg.pid; wait", dir.path());
        spec.timeout = Duration::from_millis(300);
        let err = run(spec).await.unwrap_err();
        assert!(matches!(err, ProcessError::TimedOut { .. }), "{err}");
        assert!(gone(read_pid(&pid_file)), "the background sleep survived");
    }

    #[tokio::test]
    async fn the_programs_exit_ends_the_run_and_kills_what_it_left_running() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("bg.pid");
        // The background sleep holds sh's stdout open: the run still ends when sh exits.
        let mut spec = sh("sleep 600 & echo $! > bg.pid", dir.path());
        spec.timeout = Duration::from_secs(20);
        let done = run(spec).await.unwrap();
        assert!(done.status.success());
        assert!(gone(read_pid(&pid_file)), "the background sleep survived");
    }

    #[tokio::test]
    async fn dropping_the_run_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("bg.pid");
        let spec = sh("sleep 600 & echo $! > bg.pid; wait", dir.path());
        let task = tokio::spawn(run(spec));
        let pid = tokio::task::spawn_blocking({
            let p = pid_file.clone();
            move || read_pid(&p)
        })
        .await
        .unwrap();
        task.abort();
        let _ = task.await;
        assert!(gone(pid), "the background sleep survived");
    }

    #[tokio::test]
    async fn output_over_the_cap_fails_the_run_and_the_log_holds_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("out.log");
        let mut spec = sh("yes mesh", dir.path());
        spec.stdout = Capture {
            log: Some((
                tokio::fs::File::create(&log_path).await.unwrap(),
                log_path.clone(),
            )),
            keep: Keep::All,
            cap: Some(1000),
        };
        let err = run(spec).await.unwrap_err();
        assert!(
            matches!(
                err,
                ProcessError::OutputCap {
                    stream: "stdout",
                    cap: 1000
                }
            ),
            "{err}"
        );
        assert_eq!(std::fs::metadata(&log_path).unwrap().len(), 1000);
    }

    #[tokio::test]
    async fn a_tail_keeps_the_last_bytes_and_a_shared_one_interleaves_both_streams() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = sh("seq 1 20000; echo last >&2", dir.path());
        spec.stdout.keep = Keep::Tail(100);
        let done = run(spec).await.unwrap();
        assert!(done.stdout.len() >= 100 && done.stdout.len() <= 200);
        assert!(done.stdout.ends_with(b"19999\n20000\n"));

        let tail = Tail::shared(16);
        let mut spec = sh("echo one >&2; seq 1 1000", dir.path());
        spec.stdout.keep = Keep::Shared(tail.clone());
        spec.stderr.keep = Keep::Shared(tail.clone());
        let done = run(spec).await.unwrap();
        assert!(done.stdout.is_empty() && done.stderr.is_empty());
        assert_eq!(tail.lock().unwrap().bytes(), b"97\n998\n999\n1000\n");

        let tail = Tail::shared(64);
        let mut spec = sh("echo one; echo two >&2", dir.path());
        spec.stdout.keep = Keep::Shared(tail.clone());
        spec.stderr.keep = Keep::Shared(tail.clone());
        run(spec).await.unwrap();
        let both = String::from_utf8_lossy(tail.lock().unwrap().bytes()).into_owned();
        assert!(both.contains("one\n") && both.contains("two\n"), "{both:?}");
    }

    #[test]
    fn a_blocking_run_stops_when_asked_and_its_group_dies() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("bg.pid");
        let stop = Arc::new(AtomicBool::new(false));
        let spec = sh("sleep 600 & echo $! > bg.pid; wait", dir.path());
        let runner = {
            let stop = stop.clone();
            std::thread::spawn(move || run_blocking(spec, &stop))
        };
        let pid = read_pid(&pid_file);
        stop.store(true, Ordering::Relaxed);
        let err = runner.join().unwrap().unwrap_err();
        assert!(matches!(err, ProcessError::Stopped), "{err}");
        assert!(gone(pid), "the background sleep survived");
    }

    #[test]
    fn a_program_that_cannot_start_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = sh("", dir.path());
        spec.program = "/nonexistent/mesh-agent-no-such-program".into();
        let err = run_blocking(spec, &AtomicBool::new(false)).unwrap_err();
        assert!(matches!(err, ProcessError::Spawn { .. }), "{err}");
    }
}
