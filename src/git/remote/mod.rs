//! A git origin on another machine, reached by running the `git` binary (issue 14, first
//! slice: a library, not yet used by the node, the work shell or the gate).
//!
//! Network operations go through `git` itself, not libgit2's transports: the CLI brings
//! the user's ssh (`~/.ssh/config`, ssh-agent, known_hosts), credential helpers, and
//! `git push --atomic` with `--force-with-lease`, which the fence needs and libgit2 cannot
//! express (docs/ARCHITECTURE.md, "Remote origins"). Local object work (the fence blob,
//! ancestry) stays on git2.
//!
//! Every run: `LC_ALL=C` (messages are parsed), `GIT_TERMINAL_PROMPT=0` (a missing
//! credential fails instead of waiting for a prompt nobody sees), ssh in `BatchMode`
//! unless the user set `GIT_SSH_COMMAND` or [`Credentials::ssh_command`], the child in its
//! own process group with a timeout ([`crate::exec::process`]). Failures become a
//! [`RemoteError`] that says what to do; every string in it and every log line went
//! through [`redact`].
//!
//! # Credentials
//!
//! ssh: whatever the user's ssh uses; an unknown or changed host key is an error
//! ([`RemoteError::HostKey`]), never trusted here (`StrictHostKeyChecking` stays as the
//! user's ssh config says). https: a token from `MESH_GIT_TOKEN` (user name from
//! `MESH_GIT_USERNAME`, or the URL's), or a password written in the URL, is handed to
//! git by an inline credential helper that reads it from the child's environment — never
//! on a command line, in a config file or in a log. Without a token git's own credential
//! helpers apply.
//!
//! # Refs
//!
//! [`Remote::fetch`] brings `main` to `refs/remotes/origin/main` and `refs/mesh/*` to
//! `refs/remotes/origin/mesh/*`, pruning what the origin deleted, incrementally into one
//! bare clone. The fenced landing is in `land.rs`.

use crate::exec::process::{self, Capture, Keep, ProcessError, Spec};
use git2::Oid;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

mod land;
mod url;

pub use land::{FenceView, LandPlan, Landing, MAX_LEASE_TRIES};
pub use url::{redact, RemoteUrl, Secret, Transport};

/// The environment variable holding an https token.
pub const TOKEN_ENV: &str = "MESH_GIT_TOKEN";
/// The environment variable holding the user name sent with the token.
pub const USERNAME_ENV: &str = "MESH_GIT_USERNAME";
/// Set to `0` to open one ssh connection per git command instead of sharing one.
pub const SSH_MULTIPLEX_ENV: &str = "MESH_GIT_SSH_MULTIPLEX";
/// How long a shared ssh connection outlives its last git command, in seconds.
const SSH_PERSIST_SECS: u32 = 60;
/// The user name sent with a token when neither the URL nor `MESH_GIT_USERNAME` give one
/// (GitHub and Gitea accept any name with a token; GitLab wants `oauth2` or the user).
pub const DEFAULT_TOKEN_USER: &str = "mesh-agent";
/// How long one git command may run by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Where the origin's refs are mirrored in the clone.
pub const TRACKING_PREFIX: &str = "refs/remotes/origin/";
/// Most of git's output kept in memory per stream.
const OUTPUT_CAP: u64 = 4 << 20;
/// Longest part of git's stderr quoted in an error.
const DETAIL_CHARS: usize = 600;

/// The inline credential helper: answers `get` from the child's environment, so the
/// secret is never on a command line. (Set only when a token is configured; an empty
/// `credential.helper` first clears the user's helpers for this run.)
const CREDENTIAL_HELPER: &str = "!f() { test \"$1\" = get || exit 0; \
     printf 'username=%s\\npassword=%s\\n' \"$MESH_GIT_USERNAME\" \"$MESH_GIT_TOKEN\"; }; f";

/// Where credentials come from.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The user name sent with [`Credentials::token`] over https.
    pub username: Option<String>,
    /// An https token (or password); used only for http(s) origins.
    pub token: Option<Secret>,
    /// The ssh command git runs (`GIT_SSH_COMMAND`). `None`: the user's `GIT_SSH_COMMAND`
    /// if set, else `ssh -o BatchMode=yes` (which reads `~/.ssh/config` and uses the
    /// agent and known_hosts as always; it takes precedence over a `core.sshCommand` in
    /// git config, so put a custom command in `GIT_SSH_COMMAND` or here).
    pub ssh_command: Option<String>,
    /// With the default ssh command: share one ssh connection per origin host among git
    /// commands (OpenSSH `ControlMaster`, sockets in a private directory, the connection
    /// kept [`SSH_PERSIST_SECS`] after the last use). A handshake per command costs
    /// ~0.1 s of CPU and a round trip; a merge runs several commands in a row.
    pub ssh_multiplex: bool,
}

impl Credentials {
    /// `MESH_GIT_TOKEN` and `MESH_GIT_USERNAME` from this process's environment.
    pub fn from_env() -> Credentials {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Credentials {
            username: var(USERNAME_ENV),
            token: var(TOKEN_ENV).map(Secret::new),
            ssh_command: None,
            ssh_multiplex: var(SSH_MULTIPLEX_ENV).as_deref() != Some("0"),
        }
    }
}

/// A failure talking to the origin. Each says what to do; none holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// A story key, claim id or holder that cannot name a ref (the message says why).
    #[error("{0}")]
    BadName(String),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{url:?} is not an origin mesh-agent can use: {why}; write ssh://user@host[:port]/path.git, user@host:path.git, https://host/path.git, git://host/path.git, file:///path or a local path")]
    BadUrl { url: String, why: &'static str },
    #[error("cannot reach {url} to {op}: {detail}; check the host, the port and the network (retrying later may help)")]
    Unreachable {
        op: &'static str,
        url: String,
        detail: String,
    },
    #[error("{url} did not accept our credentials to {op}: {detail}; over ssh check the key (ssh-agent, ~/.ssh/config, the key authorized on the server), over https set {TOKEN_ENV} (and {USERNAME_ENV}) or a git credential helper")]
    Auth {
        op: &'static str,
        url: String,
        detail: String,
    },
    #[error("the ssh host key of {url} is unknown or changed: {detail}; mesh-agent never trusts a host key by itself: check the server's fingerprint and add its key to known_hosts (ssh-keyscan prints it)")]
    HostKey { url: String, detail: String },
    #[error("{url} has no git repository at that path ({detail}); check the path and that the account may read it")]
    NotFound { url: String, detail: String },
    #[error("{url} has no ref the {op} needs ({detail}); a new origin needs an initial commit on its main branch")]
    MissingRef {
        op: &'static str,
        url: String,
        detail: String,
    },
    #[error("the server at {url} failed to {op}: {detail}; it may be overloaded or down, try again later")]
    Server {
        op: &'static str,
        url: String,
        detail: String,
    },
    #[error("the git server at {url} does not support atomic push (`git push --atomic`), which the fence needs to move main and the fence ref in one step; use a server that does (git ≥ 2.4 with receive.advertiseAtomic on, GitHub, GitLab, Gitea), mesh-agent will not land without it")]
    NoAtomicPush { url: String },
    #[error("{url} rejected the push of {reference}: {reason}; check the server's branch protection and hooks allow mesh-agent to push it")]
    Rejected {
        url: String,
        reference: String,
        reason: String,
    },
    #[error("git timed out after {secs} s trying to {op} on {url}; the network or the server is slow or stuck, try again later")]
    TimedOut {
        op: &'static str,
        url: String,
        secs: u64,
    },
    #[error("cannot run git to {op}: {source}; install git (≥ 2.4) and put it on PATH")]
    Spawn {
        op: &'static str,
        source: ProcessError,
    },
    #[error("git failed to {op} on {url} ({status}): {detail}")]
    Failed {
        op: &'static str,
        url: String,
        status: String,
        detail: String,
    },
    #[error("{reference} at {url} is unreadable ({why}); it was not written by mesh-agent, inspect it in a clone with `git cat-file -p`")]
    Corrupt {
        url: String,
        reference: String,
        why: String,
    },
    #[error("git error while trying to {op} in {path}: {source}")]
    Local {
        op: &'static str,
        path: PathBuf,
        source: git2::Error,
    },
    #[error("the landing at {url} lost the race {tries} times (the fence or main moved each time); the origin is busy, try again later")]
    Contended { url: String, tries: u32 },
}

impl RemoteError {
    /// Whether the origin, not the work, is to blame: it cannot be reached, fails, is
    /// busy, or refuses us (credentials, host key, path, branch protection). A job that
    /// ends so is handed back without counting an attempt; some need a human (the
    /// `git_unavailable` event says which), and every one clears without touching the
    /// story.
    pub fn is_outage(&self) -> bool {
        self.is_transient()
            || matches!(
                self,
                RemoteError::Auth { .. }
                    | RemoteError::HostKey { .. }
                    | RemoteError::NotFound { .. }
                    | RemoteError::Rejected { .. }
            )
    }

    /// Whether trying again later may succeed without anyone changing anything
    /// (the network, a busy or restarting server).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RemoteError::Unreachable { .. }
                | RemoteError::Server { .. }
                | RemoteError::TimedOut { .. }
                | RemoteError::Contended { .. }
        )
    }
}

/// The default ssh command with connection sharing, or `None` (one connection per
/// command) when no private socket directory can be had: `$XDG_RUNTIME_DIR/mesh-agent-ssh`
/// or `/tmp/mesh-agent-ssh-<uid>`, created 0700 and used only if it is a directory owned
/// by this user that nobody else may enter (a socket there is a live login to the origin).
fn multiplexed_ssh() -> Option<String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("mesh-agent-ssh"),
        None => PathBuf::from(format!("/tmp/mesh-agent-ssh-{uid}")),
    };
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    let private = meta.is_dir() && meta.uid() == uid && meta.permissions().mode() & 0o077 == 0;
    // ssh's socket paths are limited to ~104 bytes; %C is 40 hex digits.
    let usable = private && dir.as_os_str().len() <= 56;
    if !usable {
        tracing::debug!(dir = %dir.display(), "no private directory for shared ssh connections; one connection per git command");
        return None;
    }
    let dir = dir.to_str()?;
    if dir.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
        return None;
    }
    Some(format!(
        "ssh -o BatchMode=yes -o ControlMaster=auto -o ControlPath={dir}/%C -o ControlPersist={SSH_PERSIST_SECS}"
    ))
}

/// One update line of `git push --porcelain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// `' '` fast-forward, `+` forced, `-` deleted, `*` new, `=` up to date, `!` rejected.
    pub flag: char,
    pub reference: String,
    pub summary: String,
}

impl RefUpdate {
    fn rejected(&self) -> bool {
        self.flag == '!'
    }

    /// Rejected because a `--force-with-lease` expectation no longer holds.
    fn stale(&self) -> bool {
        self.rejected() && self.summary.contains("stale info")
    }
}

/// Reads `git push --porcelain`'s stdout: `<flag>\t<from>:<to>\t<summary>` lines.
fn parse_porcelain(stdout: &str) -> Vec<RefUpdate> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, '\t');
            let flag = parts.next()?.chars().next()?;
            let refspec = parts.next()?;
            let summary = parts.next().unwrap_or("").to_string();
            let reference = refspec.rsplit_once(':').map_or(refspec, |(_, to)| to);
            Some(RefUpdate {
                flag,
                reference: reference.to_string(),
                summary,
            })
        })
        .collect()
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Every ref was updated (or already was).
    Done,
    /// A `--force-with-lease` expectation failed: someone moved that ref (with
    /// `--atomic`, nothing was updated).
    LeaseLost { reference: String },
}

/// A finished git run.
struct Output {
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// The origin and how to reach it.
#[derive(Debug, Clone)]
pub struct Remote {
    url: RemoteUrl,
    credentials: Credentials,
    timeout: Duration,
    git: OsString,
}

impl Remote {
    /// An origin at `url` (see [`RemoteUrl::parse`]). A password in the URL becomes the
    /// token unless `credentials` carry one.
    pub fn new(url: &str, credentials: Credentials) -> Result<Remote, RemoteError> {
        let url = RemoteUrl::parse(url).map_err(|why| RemoteError::BadUrl {
            url: redact(url, &[]),
            why,
        })?;
        let mut credentials = credentials;
        if credentials.token.is_none() {
            credentials.token = url.password().cloned();
        }
        if credentials.username.is_none() {
            credentials.username = url.user().map(str::to_string);
        }
        Ok(Remote {
            url,
            credentials,
            timeout: DEFAULT_TIMEOUT,
            git: "git".into(),
        })
    }

    /// Sets how long one git command may run (default 5 min).
    pub fn with_timeout(mut self, timeout: Duration) -> Remote {
        self.timeout = timeout;
        self
    }

    pub fn url(&self) -> &RemoteUrl {
        &self.url
    }

    fn secrets(&self) -> Vec<&Secret> {
        self.credentials.token.iter().collect()
    }

    /// `text` fit for an error or a log line.
    fn clean(&self, text: &str) -> String {
        redact(text, &self.secrets())
    }

    /// Runs `git <args>` in `dir`, with this remote's credentials and environment.
    fn git(&self, op: &'static str, dir: &Path, args: &[&str]) -> Result<Output, RemoteError> {
        let mut argv: Vec<OsString> = vec!["-c".into(), "protocol.ext.allow=never".into()];
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| {
                !matches!(
                    k.to_str(),
                    Some(TOKEN_ENV | USERNAME_ENV | "LC_ALL" | "LANG" | "LANGUAGE")
                )
            })
            .collect();
        let mut set = |k: &str, v: &str| env.push((k.into(), v.into()));
        set("LC_ALL", "C");
        set("GIT_TERMINAL_PROMPT", "0");
        let https = matches!(self.url.transport(), Transport::Https | Transport::Http);
        if let (Some(token), true) = (&self.credentials.token, https) {
            argv.extend(["-c".into(), "credential.helper=".into()]);
            argv.extend([
                "-c".into(),
                format!("credential.helper={CREDENTIAL_HELPER}").into(),
            ]);
            let user = self.credentials.username.as_deref();
            set(USERNAME_ENV, user.unwrap_or(DEFAULT_TOKEN_USER));
            set(TOKEN_ENV, token.expose());
        }
        match &self.credentials.ssh_command {
            Some(cmd) => set("GIT_SSH_COMMAND", cmd),
            None if std::env::var_os("GIT_SSH_COMMAND").is_none() => {
                let ssh = match self.url.transport() {
                    Transport::Ssh if self.credentials.ssh_multiplex => {
                        static SHARED: std::sync::OnceLock<Option<String>> =
                            std::sync::OnceLock::new();
                        SHARED.get_or_init(multiplexed_ssh).clone()
                    }
                    _ => None,
                };
                set(
                    "GIT_SSH_COMMAND",
                    ssh.as_deref().unwrap_or("ssh -o BatchMode=yes"),
                )
            }
            None => {}
        }
        argv.extend(args.iter().map(OsString::from));
        tracing::debug!(op, dir = %dir.display(), args = %self.clean(&args.join(" ")), "git");
        let capture = || Capture {
            log: None,
            keep: Keep::All,
            cap: Some(OUTPUT_CAP),
        };
        let spec = Spec {
            program: self.git.clone(),
            args: argv,
            dir: dir.to_path_buf(),
            env: Some(env),
            timeout: self.timeout,
            stdout: capture(),
            stderr: capture(),
        };
        let url = self.url.to_string();
        match process::run_blocking(spec, &AtomicBool::new(false)) {
            Ok(done) => {
                let out = Output {
                    ok: done.status.success(),
                    status: done.status.to_string(),
                    stdout: String::from_utf8_lossy(&done.stdout).into_owned(),
                    stderr: self.clean(&String::from_utf8_lossy(&done.stderr)),
                };
                if !out.ok {
                    tracing::debug!(op, url, status = %out.status, stderr = %out.stderr, "git failed");
                }
                Ok(out)
            }
            Err(ProcessError::TimedOut { after }) => Err(RemoteError::TimedOut {
                op,
                url,
                secs: after.as_secs(),
            }),
            Err(source) => Err(RemoteError::Spawn { op, source }),
        }
    }

    /// Runs git and turns a failure into the matching [`RemoteError`].
    fn git_ok(&self, op: &'static str, dir: &Path, args: &[&str]) -> Result<Output, RemoteError> {
        let out = self.git(op, dir, args)?;
        if out.ok {
            Ok(out)
        } else {
            Err(self.classify(op, &out))
        }
    }

    /// What a failed run's stderr means.
    fn classify(&self, op: &'static str, out: &Output) -> RemoteError {
        let url = self.url.to_string();
        let detail = detail(&out.stderr);
        let text = out.stderr.to_ascii_lowercase();
        let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
        if has(&["does not support --atomic"]) {
            RemoteError::NoAtomicPush { url }
        } else if has(&[
            "host key verification failed",
            "host key is known",
            "remote host identification has changed",
        ]) {
            RemoteError::HostKey { url, detail }
        } else if has(&[
            "permission denied",
            "authentication failed",
            "could not read username",
            "could not read password",
            "terminal prompts disabled",
            "returned error: 401",
            "returned error: 403",
            "too many authentication failures",
        ]) {
            RemoteError::Auth { op, url, detail }
        } else if has(&["couldn't find remote ref"]) {
            RemoteError::MissingRef { op, url, detail }
        } else if has(&["returned error: 5", "internal server error", "bad gateway"]) {
            RemoteError::Server { op, url, detail }
        } else if has(&[
            "does not appear to be a git repository",
            "repository not found",
            "returned error: 404",
            "not a git repository",
        ]) {
            RemoteError::NotFound { url, detail }
        } else if has(&[
            "could not resolve",
            "connection refused",
            "failed to connect",
            "couldn't connect",
            "no route to host",
            "timed out",
            "network is unreachable",
            "connection reset",
            "connection closed",
            "unable to access",
            "could not read from remote repository",
            "the remote end hung up",
        ]) {
            RemoteError::Unreachable { op, url, detail }
        } else {
            RemoteError::Failed {
                op,
                url,
                status: out.status.clone(),
                detail,
            }
        }
    }

    /// Clones the origin into `dir` (a new bare repository, objects copied: never
    /// alternates), then fetches `branch_ref` and `refs/mesh/*` as [`Remote::fetch`] does.
    pub fn clone_into(&self, dir: &Path, branch_ref: &str) -> Result<(), RemoteError> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|source| RemoteError::Io {
            op: "create the directory of the clone",
            path: parent.to_path_buf(),
            source,
        })?;
        let target = dir.to_string_lossy();
        let args = [
            "clone",
            "--bare",
            "--quiet",
            "--no-tags",
            "--",
            self.url.as_str(),
            &target,
        ];
        self.git_ok("clone", parent, &args)?;
        self.fetch(dir, branch_ref)
    }

    /// Fetches `branch_ref` and `refs/mesh/*` into the clone's tracking refs
    /// ([`tracking_ref`]), deleting the tracking refs of what the origin deleted.
    pub fn fetch(&self, clone: &Path, branch_ref: &str) -> Result<(), RemoteError> {
        let branch = format!("+{branch_ref}:{}", tracking_ref(branch_ref));
        let mesh = format!("+refs/mesh/*:{TRACKING_PREFIX}mesh/*");
        let args = [
            "fetch",
            "--quiet",
            "--prune",
            "--no-tags",
            "--no-write-fetch-head",
        ];
        let mut args = args.to_vec();
        args.extend(["--", self.url.as_str(), &branch, &mesh]);
        self.git_ok("fetch", clone, &args).map(drop)
    }

    /// The origin's current value of each of `refs` (absent refs are left out).
    pub fn ls_remote(
        &self,
        dir: &Path,
        refs: &[&str],
    ) -> Result<BTreeMap<String, Oid>, RemoteError> {
        let mut args = vec!["ls-remote", "--", self.url.as_str()];
        args.extend(refs);
        let out = self.git_ok("read refs", dir, &args)?;
        let mut found = BTreeMap::new();
        for line in out.stdout.lines() {
            let Some((oid, name)) = line.split_once('\t') else {
                continue;
            };
            if !refs.contains(&name) {
                continue;
            }
            let oid = Oid::from_str(oid).map_err(|_| RemoteError::Corrupt {
                url: self.url.to_string(),
                reference: name.to_string(),
                why: format!("ls-remote answered {oid:?}, not an object id"),
            })?;
            found.insert(name.to_string(), oid);
        }
        Ok(found)
    }

    /// Pushes `commit` (in the clone) to `refs/mesh/work/<story>/<claim>`, replacing what
    /// an earlier push of the same claim left there.
    pub fn push_work(
        &self,
        clone: &Path,
        story: &str,
        claim: &str,
        commit: Oid,
    ) -> Result<(), RemoteError> {
        let reference = work_ref(story, claim)?;
        let spec = format!("+{commit}:{reference}");
        self.push(clone, "push a work ref", &[], &[&spec]).map(drop)
    }

    /// Deletes `reference` at the origin; a ref that is already gone is fine.
    pub fn delete_ref(&self, clone: &Path, reference: &str) -> Result<(), RemoteError> {
        self.push(clone, "delete a ref", &[], &[&format!(":{reference}")])
            .map(drop)
    }

    /// Whether the origin takes atomic pushes (a dry run: nothing is written). The fence
    /// needs them; call this at start to fail early and clearly.
    pub fn check_atomic(&self, clone: &Path, any_commit: Oid) -> Result<(), RemoteError> {
        let spec = format!("{any_commit}:refs/mesh/probe/atomic");
        self.push(
            clone,
            "check atomic push",
            &["--dry-run", "--atomic"],
            &[&spec],
        )
        .map(drop)
    }

    /// `git push --porcelain <flags> <url> <specs>`; a rejection other than a lost lease
    /// is an error.
    fn push(
        &self,
        clone: &Path,
        op: &'static str,
        flags: &[&str],
        specs: &[&str],
    ) -> Result<PushOutcome, RemoteError> {
        let mut args = vec!["push", "--porcelain", "--no-verify"];
        args.extend(flags);
        args.push(self.url.as_str());
        args.extend(specs);
        let out = self.git(op, clone, &args)?;
        let updates = parse_porcelain(&out.stdout);
        if let Some(stale) = updates.iter().find(|u| u.stale()) {
            return Ok(PushOutcome::LeaseLost {
                reference: stale.reference.clone(),
            });
        }
        if let Some(rejected) = updates.iter().find(|u| u.rejected()) {
            return Err(RemoteError::Rejected {
                url: self.url.to_string(),
                reference: rejected.reference.clone(),
                reason: self.clean(&format!("{} {}", rejected.summary, detail(&out.stderr))),
            });
        }
        if out.ok && !updates.is_empty() {
            Ok(PushOutcome::Done)
        } else if out.ok {
            Err(RemoteError::Failed {
                op,
                url: self.url.to_string(),
                status: out.status,
                detail: "git push reported no ref update".into(),
            })
        } else {
            Err(self.classify(op, &out))
        }
    }
}

/// The tracking ref of an origin ref in the clone: `refs/heads/x` →
/// `refs/remotes/origin/x`, `refs/mesh/x` → `refs/remotes/origin/mesh/x`.
pub fn tracking_ref(remote_ref: &str) -> String {
    let name = remote_ref
        .strip_prefix("refs/heads/")
        .unwrap_or_else(|| remote_ref.strip_prefix("refs/").unwrap_or(remote_ref));
    format!("{TRACKING_PREFIX}{name}")
}

/// `refs/mesh/work/<story>/<claim>`, both checked like every ref name of the git shell.
pub fn work_ref(story: &str, claim: &str) -> Result<String, RemoteError> {
    let bad = |e: super::GitError| RemoteError::BadName(e.to_string());
    super::story_names(story).map_err(bad)?;
    super::check_component("claim id", claim).map_err(bad)?;
    Ok(format!("{}{story}/{claim}", super::WORK_REF_PREFIX))
}

/// The last lines of git's stderr, at most [`DETAIL_CHARS`], on one line.
fn detail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
        .collect();
    let joined = lines.join(" / ");
    if joined.is_empty() {
        return "no message".into();
    }
    let start = joined.len().saturating_sub(DETAIL_CHARS);
    let start = (start..joined.len())
        .find(|&i| joined.is_char_boundary(i))
        .unwrap_or(0);
    joined[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_ssh_shares_one_connection_through_a_private_socket_directory() {
        let Some(cmd) = multiplexed_ssh() else {
            panic!("no private socket directory could be made");
        };
        assert!(
            cmd.starts_with("ssh -o BatchMode=yes -o ControlMaster=auto"),
            "{cmd}"
        );
        let path = cmd
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ControlPath="))
            .expect("a ControlPath");
        let dir = Path::new(path).parent().expect("a directory");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is open to others", dir.display());
        assert!(
            path.len() + 40 <= 104,
            "socket path too long for ssh: {path}"
        );
    }

    fn remote() -> Remote {
        let creds = Credentials {
            token: Some(Secret::new("tok-xyz")),
            ..Credentials::default()
        };
        Remote::new("https://example.org/r.git", creds).unwrap()
    }

    fn failed(stderr: &str) -> RemoteError {
        let r = remote();
        let out = Output {
            ok: false,
            status: "exit status: 128".into(),
            stdout: String::new(),
            stderr: r.clean(stderr),
        };
        r.classify("fetch", &out)
    }

    #[test]
    fn git_failures_are_told_apart_by_their_messages() {
        /// git's stderr, and whether the error it gives is the right kind.
        type Case = (&'static str, fn(&RemoteError) -> bool);
        let cases: [Case; 8] = [
            ("fatal: the receiving end does not support --atomic push", |e| matches!(e, RemoteError::NoAtomicPush { .. })),
            ("No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\nHost key verification failed.\nfatal: Could not read from remote repository.", |e| matches!(e, RemoteError::HostKey { .. })),
            ("git@h: Permission denied (publickey).\nfatal: Could not read from remote repository.", |e| matches!(e, RemoteError::Auth { .. })),
            ("fatal: Authentication failed for 'https://example.org/r.git/'", |e| matches!(e, RemoteError::Auth { .. })),
            ("fatal: unable to access 'https://example.org/r.git/': The requested URL returned error: 502", |e| matches!(e, RemoteError::Server { .. })),
            ("fatal: '/srv/x.git' does not appear to be a git repository", |e| matches!(e, RemoteError::NotFound { .. })),
            ("ssh: connect to host 127.0.0.1 port 9: Connection refused\nfatal: Could not read from remote repository.", |e| matches!(e, RemoteError::Unreachable { .. })),
            ("error: something new", |e| matches!(e, RemoteError::Failed { .. })),
        ];
        for (stderr, want) in cases {
            let err = failed(stderr);
            assert!(want(&err), "{stderr:?} → {err:?}");
        }
        assert!(failed("Connection refused").is_transient());
        assert!(!failed("Permission denied (publickey)").is_transient());
    }

    #[test]
    fn a_token_in_git_output_never_reaches_the_error() {
        let err = failed(
            "fatal: Authentication failed for 'https://bot:tok-xyz@example.org/r.git/' tok-xyz",
        );
        let text = format!("{err} {err:?}");
        assert!(!text.contains("tok-xyz"), "{text}");
    }

    #[test]
    fn porcelain_push_lines_are_read_per_ref() {
        let out = "To h:r.git\n!\tabc:refs/heads/main\t[rejected] (stale info)\n\
                   !\tdef:refs/mesh/fence/S\t[rejected] (atomic push failed)\nDone\n";
        let updates = parse_porcelain(out);
        assert_eq!(updates.len(), 2);
        assert!(updates[0].stale() && !updates[1].stale());
        assert_eq!(updates[1].reference, "refs/mesh/fence/S");
        let ok = parse_porcelain("To h\n*\tabc:refs/mesh/work/S/c\t[new reference]\nDone\n");
        assert_eq!(ok[0].flag, '*');
        assert!(!ok[0].rejected());
    }

    #[test]
    fn tracking_refs_mirror_main_and_the_mesh_namespace() {
        assert_eq!(tracking_ref("refs/heads/main"), "refs/remotes/origin/main");
        assert_eq!(
            tracking_ref("refs/mesh/fence/S-1@a"),
            "refs/remotes/origin/mesh/fence/S-1@a"
        );
        assert_eq!(work_ref("S-1@a", "c1").unwrap(), "refs/mesh/work/S-1@a/c1");
        let err = work_ref("S-1@a", "c/1").unwrap_err();
        assert!(err.to_string().contains("claim id \"c/1\""), "{err}");
        assert!(work_ref("a..b", "c1").is_err());
    }
}
