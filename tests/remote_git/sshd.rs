//! A real OpenSSH `sshd` on a free loopback port serving git over ssh: its own host key,
//! config and authorized_keys in a directory of the caller's; one client key, allowed
//! nothing but `git-shell -c "$SSH_ORIGINAL_COMMAND"`; a known_hosts holding the host key.
//! Shared by the remote-origin tests (`kit.rs`) and the flow benchmark
//! (`examples/flow_bench.rs`), each including this file with `#[path]`; neither uses
//! every item.
//!
//! Errors are returned, never panicked on: the benchmark reports them, the tests unwrap.
#![allow(dead_code)]

use anyhow::{bail, ensure, Context};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to listen.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A server process: killed and reaped when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server started by [`serve`], and how to start it again.
pub struct Served {
    pub server: Server,
    program: PathBuf,
    args: Vec<String>,
    /// Where the server's output goes, and the log that says `marker` once it listens.
    out: PathBuf,
    ready: PathBuf,
    marker: String,
}

impl Served {
    /// Stops the server (the origin is down): every connection is refused until
    /// [`Served::restart`].
    pub fn stop(&mut self) {
        let _ = self.server.0.kill();
        let _ = self.server.0.wait();
    }

    /// Starts the server again with the same config (so on the same port) and waits
    /// until it listens.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(&self.ready);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.server = spawn(&self.program, &args, &self.out)?;
        let deadline = Instant::now() + START_DEADLINE;
        while !std::fs::read_to_string(&self.ready)
            .unwrap_or_default()
            .contains(&self.marker)
        {
            if let Ok(Some(status)) = self.server.0.try_wait() {
                bail!("{} exited ({status}) on restart", self.program.display());
            }
            ensure!(
                Instant::now() < deadline,
                "{} did not listen again",
                self.program.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `name` on PATH or in the sbin directories (sshd lives in /usr/sbin).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// git's exec path (where `git-shell` and `git-http-backend` live).
pub fn git_exec_path() -> anyhow::Result<PathBuf> {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .context("cannot run `git --exec-path`")?;
    ensure!(out.status.success(), "`git --exec-path` failed");
    let text = String::from_utf8(out.stdout).context("`git --exec-path` is not UTF-8")?;
    Ok(PathBuf::from(text.trim()))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn spawn(program: &Path, args: &[&str], log: &Path) -> anyhow::Result<Server> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    Ok(Server(child))
}

/// Starts a server on a free loopback port: `configure(port)` writes its config, and it
/// is ready when its own logs (`logs`; the first one gets its stdout and stderr) say
/// `marker`, so a port someone else took in between is never mistaken for ours: our
/// server fails to bind, exits, and another port is tried. A restart waits for `marker`
/// in the last of `logs`.
pub fn serve(
    program: &Path,
    args: &[&str],
    logs: &[&Path],
    marker: &str,
    configure: impl Fn(u16) -> anyhow::Result<()>,
) -> anyhow::Result<(Served, u16)> {
    const ATTEMPTS: u32 = 5;
    let first = logs.first().context("serve: no log file")?;
    for _ in 0..ATTEMPTS {
        let port = free_port()?;
        configure(port)?;
        for log in logs {
            let _ = std::fs::remove_file(log);
        }
        let mut server = spawn(program, args, first)?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let text: String = logs
                .iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect();
            if text.contains(marker) {
                let served = Served {
                    server,
                    program: program.to_path_buf(),
                    args: args.iter().map(|a| a.to_string()).collect(),
                    out: first.to_path_buf(),
                    ready: logs.last().unwrap_or(first).to_path_buf(),
                    marker: marker.to_string(),
                };
                return Ok((served, port));
            }
            if let Ok(Some(status)) = server.0.try_wait() {
                ensure!(
                    text.contains("in use"),
                    "{} exited ({status}) before listening on {port}:\n{text}",
                    program.display()
                );
                break;
            }
            if Instant::now() >= deadline {
                bail!("{} did not listen on {port}:\n{text}", program.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    bail!(
        "{} found no free port in {ATTEMPTS} tries",
        program.display()
    )
}

/// The ssh command of a client of this server: only this key, only this known_hosts,
/// strict host key checking, no user config or agent.
pub fn ssh_command(key: &Path, known_hosts: &Path) -> String {
    format!(
        "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none -i {} \
         -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
        key.display(),
        known_hosts.display()
    )
}

/// An `sshd` serving the repositories under its directory over ssh; dies when dropped.
pub struct Sshd {
    pub port: u16,
    /// The account the client logs in as (this process's user).
    pub user: String,
    /// The client's private key and the known_hosts holding the server's key.
    pub user_key: PathBuf,
    pub known_hosts: PathBuf,
    /// sshd's log (`-e`, LogLevel VERBOSE).
    pub log: PathBuf,
    pub served: Served,
}

impl Sshd {
    /// Writes the keys, config and authorized_keys into `dir` and starts `sshd` (found
    /// with [`which`]) on a free port of 127.0.0.1, listening only there.
    pub fn start(sshd: &Path, keygen: &Path, dir: &Path) -> anyhow::Result<Sshd> {
        let git_shell = match which("git-shell") {
            Some(p) => p,
            None => git_exec_path()?.join("git-shell"),
        };
        for key in ["host_key", "user_key"] {
            run(Command::new(keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                .arg(dir.join(key)))?;
        }
        let read = |f: &str| -> anyhow::Result<String> {
            let path = dir.join(f);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))?;
            Ok(text.trim().to_string())
        };
        let restrict = format!(
            "command=\"{} -c \\\"$SSH_ORIGINAL_COMMAND\\\"\",restrict",
            git_shell.display()
        );
        let authorized = dir.join("authorized_keys");
        std::fs::write(
            &authorized,
            format!("{restrict} {}\n", read("user_key.pub")?),
        )
        .with_context(|| format!("write {}", authorized.display()))?;
        let host_pub: Vec<String> = read("host_key.pub")?
            .split(' ')
            .take(2)
            .map(String::from)
            .collect();
        let known_hosts = dir.join("known_hosts");
        let id = Command::new("id")
            .arg("-un")
            .output()
            .context("cannot run `id -un`")?;
        ensure!(id.status.success(), "`id -un` failed");
        let user = String::from_utf8(id.stdout)
            .context("`id -un` is not UTF-8")?
            .trim()
            .to_string();
        if is_root() {
            // sshd's privilege separation directory (a package install creates it too).
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let config_path = dir.join("sshd_config");
        // The session's HOME is an empty directory: sshd runs the forced command through
        // the account's login shell, which would otherwise read the account's rc files
        // (bash reads ~/.bashrc when started by sshd; one that runs `pyenv init` costs
        // 100 ms of CPU per connection), and git would read its ~/.gitconfig. A git
        // host's account has git-shell as its shell and nothing of the sort.
        let home = dir.join("home");
        std::fs::create_dir_all(&home).with_context(|| format!("create {}", home.display()))?;
        // MaxStartups: a benchmark's nodes open many connections at once, and the
        // default (10:30:100) drops unauthenticated ones at random past 10.
        let configure = |port: u16| -> anyhow::Result<()> {
            let line = format!("[127.0.0.1]:{port} {}\n", host_pub.join(" "));
            std::fs::write(&known_hosts, line)
                .with_context(|| format!("write {}", known_hosts.display()))?;
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {ak}\n\
                 PidFile none\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nUsePAM no\nStrictModes no\nAllowUsers {user}\n\
                 PermitRootLogin prohibit-password\nLogLevel VERBOSE\n\
                 MaxStartups 100:30:200\nSetEnv HOME={home}\n",
                host = dir.join("host_key").display(),
                ak = authorized.display(),
                home = home.display(),
            );
            std::fs::write(&config_path, config)
                .with_context(|| format!("write {}", config_path.display()))
        };
        let log = dir.join("sshd.log");
        let config_arg = config_path
            .to_str()
            .context("the sshd config path is not UTF-8")?;
        let args = ["-D", "-e", "-f", config_arg];
        let (served, port) = serve(sshd, &args, &[&log], "Server listening", configure)?;
        Ok(Sshd {
            port,
            user,
            user_key: dir.join("user_key"),
            known_hosts,
            log,
            served,
        })
    }

    /// The ssh:// URL of the repository at `repo` (an absolute path) on this server.
    pub fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repo.display()
        )
    }

    /// The ssh command a client of this server runs ([`ssh_command`]).
    pub fn ssh_command(&self) -> String {
        ssh_command(&self.user_key, &self.known_hosts)
    }

    /// sshd's pid (its CPU, and its children's once reaped, is in /proc/<pid>/stat).
    pub fn pid(&self) -> u32 {
        self.served.server.0.id()
    }

    /// How many connections sshd let in so far (its "Accepted publickey" log lines).
    pub fn connections(&self) -> anyhow::Result<u64> {
        let text = std::fs::read_to_string(&self.log)
            .with_context(|| format!("read {}", self.log.display()))?;
        Ok(text.matches("Accepted publickey for ").count() as u64)
    }
}
