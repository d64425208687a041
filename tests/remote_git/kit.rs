//! The test kit of `remote_git.rs`: a bare origin served on a free loopback port by a real
//! OpenSSH `sshd` (its own host key, config and authorized_keys in a tempdir; the key is
//! restricted to `git-shell -c "$SSH_ORIGINAL_COMMAND"`) or by `git http-backend` behind a
//! real lighttpd (basic auth, `http.receivepack` on), and nodes with their own bare clone.
//!
//! The sshd part is `sshd.rs`, shared with `examples/flow_bench.rs`.
//!
//! A missing `sshd`, `lighttpd` or `ssh-keygen` fails the test naming the package
//! `.ci/run` should have installed — unless the test is not running as root, then it
//! prints one line saying why it is skipped (CI runs as root).
//!
//! Shared by several test binaries, each using part of it.

#![allow(dead_code)]

#[path = "sshd.rs"]
mod sshd;

use git2::{Oid, Repository, Signature};
use mesh_agent::fence::{Fence, FenceRecord};
use mesh_agent::git::remote::{tracking_ref, Credentials, Remote, Secret};
use sshd::{git_exec_path, is_root, serve, which, Served, Sshd};
use std::path::{Path, PathBuf};

pub use sshd::ssh_command;

pub const MAIN: &str = "refs/heads/main";
pub const HTTP_USER: &str = "mesh";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Ssh,
    Http,
}

/// The server process of a [`GitHost`] (stopped when the host is dropped).
enum Serving {
    Ssh(Sshd),
    Http(Served),
}

impl Serving {
    fn served(&mut self) -> &mut Served {
        match self {
            Serving::Ssh(s) => &mut s.served,
            Serving::Http(s) => s,
        }
    }
}

/// A bare origin served over `via`; the server dies with it (before its directory goes).
pub struct GitHost {
    server: Serving,
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
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("repos/origin.git");
        seed_origin(&origin);
        let server = Sshd::start(&sshd, &keygen, dir.path())
            .unwrap_or_else(|e| panic!("cannot serve the origin over ssh: {e:#}"));
        let credentials = Credentials {
            ssh_command: Some(server.ssh_command()),
            ..Credentials::default()
        };
        Some(GitHost {
            url: server.url(&origin),
            origin,
            credentials,
            user_key: server.user_key.clone(),
            known_hosts: server.known_hosts.clone(),
            token: String::new(),
            server: Serving::Ssh(server),
            dir,
        })
    }

    fn start_http() -> Option<GitHost> {
        let lighttpd = require("lighttpd", "lighttpd")?;
        let backend = git_exec_path().unwrap().join("git-http-backend");
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
            std::fs::write(&config_path, config).map_err(Into::into)
        };
        let log = d.join("lighttpd.log");
        let args = ["-D", "-f", config_path.to_str().unwrap()];
        let logs: [&Path; 2] = [&log, &errorlog];
        let (server, port) = serve(&lighttpd, &args, &logs, "server started", configure)
            .unwrap_or_else(|e| panic!("cannot serve the origin over http: {e:#}"));
        let credentials = Credentials {
            username: Some(HTTP_USER.into()),
            token: Some(Secret::new(token.clone())),
            ssh_command: None,
            ..Credentials::default()
        };
        Some(GitHost {
            url: format!("http://127.0.0.1:{port}/git/origin.git"),
            origin,
            credentials,
            user_key: PathBuf::new(),
            known_hosts: PathBuf::new(),
            token,
            server: Serving::Http(server),
            dir,
        })
    }

    /// Stops the server (the origin is down): every connection is refused until
    /// [`GitHost::restart`].
    pub fn stop(&mut self) {
        self.server.served().stop();
    }

    /// Starts the server again on the same port and waits until it listens.
    pub fn restart(&mut self) {
        self.server
            .served()
            .restart()
            .unwrap_or_else(|e| panic!("cannot restart the server: {e:#}"));
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
