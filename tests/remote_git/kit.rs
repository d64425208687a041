//! The test kit of `remote_git.rs`: a bare origin served on a free loopback port by a real
//! OpenSSH `sshd` (its own host key, config and authorized_keys in a tempdir; the key is
//! restricted to `git-shell -c "$SSH_ORIGINAL_COMMAND"`) or by `git http-backend` behind a
//! real lighttpd (basic auth, `http.receivepack` on), and nodes with their own bare clone.
//!
//! A missing `sshd`, `lighttpd` or `ssh-keygen` fails the test naming the package
//! `.ci/run` should have installed — unless the test is not running as root, then it
//! prints one line saying why it is skipped (CI runs as root).
//!
//! Shared by several test binaries, each using part of it.

#![allow(dead_code)]

use git2::{Oid, Repository, Signature};
use mesh_agent::fence::{Fence, FenceRecord};
use mesh_agent::git::remote::{tracking_ref, Credentials, Remote, Secret};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MAIN: &str = "refs/heads/main";
pub const HTTP_USER: &str = "mesh";
/// How long a server may take to listen.
const START_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Ssh,
    Http,
}

/// A bare origin served over `via`; the server dies with it.
pub struct GitHost {
    pub dir: tempfile::TempDir,
    /// The bare repository being served.
    pub origin: PathBuf,
    pub url: String,
    credentials: Credentials,
    /// ssh only: the client key and the known_hosts file the test wrote.
    pub user_key: PathBuf,
    pub known_hosts: PathBuf,
    /// http only: the token the server accepts.
    pub token: String,
    server: Child,
    /// How the server was started, to start it again after [`GitHost::stop`].
    program: PathBuf,
    args: Vec<String>,
    /// Where the server's output goes, and the log that says `marker` once it listens.
    out: PathBuf,
    ready: PathBuf,
    marker: &'static str,
}

impl Drop for GitHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `name` on PATH or in the sbin directories (sshd lives in /usr/sbin).
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The program, or `None` (skip) when it is missing and we are not root; missing as root
/// (CI) is a failure naming the package.
fn require(name: &str, package: &str) -> Option<PathBuf> {
    if let Some(p) = which(name) {
        return Some(p);
    }
    assert!(
        !is_root(),
        "`{name}` is not installed: .ci/run should have installed the `{package}` package \
         (apt-get install {package})"
    );
    eprintln!(
        "skipped: `{name}` is not installed (package `{package}`) and this test is not \
         root to install it; CI installs it and runs this test as root"
    );
    None
}

fn git_exec_path() -> PathBuf {
    let out = Command::new("git").arg("--exec-path").output().unwrap();
    assert!(out.status.success(), "git --exec-path failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a server on a free loopback port: `configure(port)` writes its config, and it
/// is ready when its own logs (`logs`) say `marker`, so a port someone else took in
/// between is never mistaken for ours: our server fails to bind, exits, and another port
/// is tried.
fn serve(
    program: &Path,
    args: &[&str],
    logs: &[&Path],
    marker: &str,
    configure: impl Fn(u16),
) -> (Child, u16) {
    const ATTEMPTS: u32 = 5;
    for _ in 0..ATTEMPTS {
        let port = free_port();
        configure(port);
        for log in logs {
            let _ = std::fs::remove_file(log);
        }
        let mut server = spawn(program, args, logs[0]);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let text: String = logs
                .iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect();
            if text.contains(marker) {
                return (server, port);
            }
            if let Ok(Some(status)) = server.try_wait() {
                assert!(
                    text.contains("in use"),
                    "{} exited ({status}) before listening on {port}:\n{text}",
                    program.display()
                );
                break;
            }
            if Instant::now() >= deadline {
                let _ = server.kill();
                panic!("{} did not listen on {port}:\n{text}", program.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!(
        "{} found no free port in {ATTEMPTS} tries",
        program.display()
    );
}

fn spawn(program: &Path, args: &[&str], log: &Path) -> Child {
    let log_file = std::fs::File::create(log).unwrap();
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
}

/// A bare repository at `path` with one commit on main.
fn seed_origin(path: &Path) -> Oid {
    let repo = Repository::init_bare(path).unwrap();
    repo.set_head(MAIN).unwrap();
    let mut config = repo.config().unwrap();
    config.set_bool("http.receivepack", true).unwrap();
    let blob = repo.blob(b"# project\n").unwrap();
    let mut tree = repo.treebuilder(None).unwrap();
    tree.insert("README.md", blob, 0o100644).unwrap();
    let tree = repo.find_tree(tree.write().unwrap()).unwrap();
    let sig = Signature::now("test", "test@localhost").unwrap();
    repo.commit(Some(MAIN), &sig, &sig, "root", &tree, &[])
        .unwrap()
}

impl GitHost {
    /// A served origin, or `None` when the test must be skipped (see the module doc).
    pub fn start(via: Via) -> Option<GitHost> {
        match via {
            Via::Ssh => GitHost::start_ssh(),
            Via::Http => GitHost::start_http(),
        }
    }

    fn start_ssh() -> Option<GitHost> {
        let sshd = require("sshd", "openssh-server")?;
        let keygen = require("ssh-keygen", "openssh-client")?;
        let git_shell = which("git-shell").unwrap_or_else(|| git_exec_path().join("git-shell"));
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let origin = d.join("repos/origin.git");
        seed_origin(&origin);
        for key in ["host_key", "user_key"] {
            let path = d.join(key);
            run(Command::new(&keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                .arg(&path));
        }
        let read = |f: &str| {
            std::fs::read_to_string(d.join(f))
                .unwrap()
                .trim()
                .to_string()
        };
        let restrict = format!(
            "command=\"{} -c \\\"$SSH_ORIGINAL_COMMAND\\\"\",restrict",
            git_shell.display()
        );
        std::fs::write(
            d.join("authorized_keys"),
            format!("{restrict} {}\n", read("user_key.pub")),
        )
        .unwrap();
        let host_pub: Vec<String> = read("host_key.pub")
            .split(' ')
            .take(2)
            .map(String::from)
            .collect();
        let known_hosts = d.join("known_hosts");
        let user =
            String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
        let user = user.trim().to_string();
        if is_root() {
            // sshd's privilege separation directory (a package install creates it too).
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let config_path = d.join("sshd_config");
        let configure = |port: u16| {
            let line = format!("[127.0.0.1]:{port} {}\n", host_pub.join(" "));
            std::fs::write(&known_hosts, line).unwrap();
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {ak}\n\
                 PidFile none\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nUsePAM no\nStrictModes no\nAllowUsers {user}\n\
                 PermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
                host = d.join("host_key").display(),
                ak = d.join("authorized_keys").display(),
            );
            std::fs::write(&config_path, config).unwrap();
        };
        let log = d.join("sshd.log");
        let args = ["-D", "-e", "-f", config_path.to_str().unwrap()];
        let marker = "Server listening";
        let (server, port) = serve(&sshd, &args, &[&log], marker, configure);
        let user_key = d.join("user_key");
        let credentials = Credentials {
            ssh_command: Some(ssh_command(&user_key, &known_hosts)),
            ..Credentials::default()
        };
        Some(GitHost {
            url: format!("ssh://{user}@127.0.0.1:{port}{}", origin.display()),
            origin,
            credentials,
            user_key,
            known_hosts,
            token: String::new(),
            server,
            program: sshd,
            args: args.map(String::from).to_vec(),
            out: log.clone(),
            ready: log,
            marker,
            dir,
        })
    }

    fn start_http() -> Option<GitHost> {
        let lighttpd = require("lighttpd", "lighttpd")?;
        let backend = git_exec_path().join("git-http-backend");
        assert!(
            backend.is_file(),
            "{} is missing: install git",
            backend.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let repos = d.join("repos");
        let origin = repos.join("origin.git");
        seed_origin(&origin);
        let token = format!("tok-{:016x}", rand::random::<u64>());
        std::fs::write(d.join("htpasswd"), format!("{HTTP_USER}:{token}\n")).unwrap();
        let config_path = d.join("lighttpd.conf");
        let errorlog = d.join("lighttpd.err");
        let configure = |port: u16| {
            let config = format!(
                r#"server.bind = "127.0.0.1"
server.port = {port}
server.document-root = "{repos}"
server.errorlog = "{errorlog}"
server.modules = ( "mod_auth", "mod_authn_file", "mod_alias", "mod_setenv", "mod_cgi" )
auth.backend = "plain"
auth.backend.plain.userfile = "{d}/htpasswd"
auth.require = ( "/git/" => ( "method" => "basic", "realm" => "git", "require" => "valid-user" ) )
alias.url = ( "/git/" => "{backend}/" )
$HTTP["url"] =~ "^/git/" {{
  cgi.assign = ( "" => "" )
  setenv.add-environment = ( "GIT_PROJECT_ROOT" => "{repos}", "GIT_HTTP_EXPORT_ALL" => "1" )
}}
"#,
                repos = repos.display(),
                d = d.display(),
                errorlog = errorlog.display(),
                backend = backend.display(),
            );
            std::fs::write(&config_path, config).unwrap();
        };
        let log = d.join("lighttpd.log");
        let args = ["-D", "-f", config_path.to_str().unwrap()];
        let logs: [&Path; 2] = [&log, &errorlog];
        let marker = "server started";
        let (server, port) = serve(&lighttpd, &args, &logs, marker, configure);
        let credentials = Credentials {
            username: Some(HTTP_USER.into()),
            token: Some(Secret::new(token.clone())),
            ssh_command: None,
        };
        Some(GitHost {
            url: format!("http://127.0.0.1:{port}/git/origin.git"),
            origin,
            credentials,
            user_key: PathBuf::new(),
            known_hosts: PathBuf::new(),
            token,
            server,
            program: lighttpd,
            args: args.map(String::from).to_vec(),
            out: log,
            ready: errorlog,
            marker,
            dir,
        })
    }

    /// Stops the server (the origin is down): every connection is refused until
    /// [`GitHost::restart`].
    pub fn stop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }

    /// Starts the server again on the same port and waits until it listens.
    pub fn restart(&mut self) {
        let _ = std::fs::remove_file(&self.ready);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.server = spawn(&self.program, &args, &self.out);
        let deadline = Instant::now() + START_DEADLINE;
        while !std::fs::read_to_string(&self.ready)
            .unwrap_or_default()
            .contains(self.marker)
        {
            if let Ok(Some(status)) = self.server.try_wait() {
                panic!("{} exited ({status}) on restart", self.program.display());
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen again",
                self.program.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The credentials a node of this host uses.
    pub fn credentials(&self) -> Credentials {
        self.credentials.clone()
    }

    pub fn remote(&self) -> Remote {
        Remote::new(&self.url, self.credentials()).unwrap()
    }

    /// A node with its own bare clone of the origin.
    pub fn node(&self) -> Node {
        Node::clone_of(self.remote())
    }

    /// What a ref points to in the served repository (read directly, not over the wire).
    pub fn target(&self, name: &str) -> Option<Oid> {
        Repository::open_bare(&self.origin)
            .unwrap()
            .refname_to_id(name)
            .ok()
    }

    pub fn main(&self) -> Oid {
        self.target(MAIN).unwrap()
    }

    /// The story's fence as the local fence shell (`mesh_agent::fence`) reads it in the
    /// served repository: proves both write the same format.
    pub fn fence(&self, story: &str) -> Option<FenceRecord> {
        Fence::open(&self.origin)
            .unwrap()
            .read_record(story)
            .unwrap()
    }

    pub fn set_config(&self, key: &str, value: &str) {
        let repo = Repository::open_bare(&self.origin).unwrap();
        repo.config().unwrap().set_str(key, value).unwrap();
    }
}

/// The ssh command of the tests: only this key, only this known_hosts, strict checking,
/// no user config or agent.
pub fn ssh_command(key: &Path, known_hosts: &Path) -> String {
    format!(
        "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityAgent=none -i {} \
         -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
        key.display(),
        known_hosts.display()
    )
}

/// A node: its own bare clone, made with `Remote::clone_into`.
pub struct Node {
    /// Holds the clone; removed with the node.
    _dir: tempfile::TempDir,
    pub clone: PathBuf,
    pub remote: Remote,
}

impl Node {
    pub fn clone_of(remote: Remote) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let clone = dir.path().join("clone");
        remote.clone_into(&clone, MAIN).unwrap();
        Node {
            _dir: dir,
            clone,
            remote,
        }
    }

    pub fn repo(&self) -> Repository {
        Repository::open_bare(&self.clone).unwrap()
    }

    /// The clone's tracking ref of an origin ref (after the last fetch).
    pub fn tracking(&self, remote_ref: &str) -> Option<Oid> {
        self.repo().refname_to_id(&tracking_ref(remote_ref)).ok()
    }

    /// A new commit on `parent` adding `<what>.txt` (no ref moves).
    pub fn commit_on(&self, parent: Oid, what: &str) -> Oid {
        let repo = self.repo();
        let parent = repo.find_commit(parent).unwrap();
        let mut tree = repo.treebuilder(Some(&parent.tree().unwrap())).unwrap();
        let blob = repo.blob(what.as_bytes()).unwrap();
        tree.insert(format!("{}.txt", what.replace(' ', "-")), blob, 0o100644)
            .unwrap();
        let tree = repo.find_tree(tree.write().unwrap()).unwrap();
        let sig = Signature::now("test", "test@localhost").unwrap();
        repo.commit(None, &sig, &sig, what, &tree, &[&parent])
            .unwrap()
    }
}
