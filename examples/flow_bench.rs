//! Flow benchmark (issue 4, acceptance 5): stories per hour carried all the way to main by
//! 1, 2, 4, 8 nodes, the scaling efficiency against ideal, and what coordination costs
//! per story.
//!
//! For each mesh size N: N nodes in this one process on loopback (as tests/nodes/flow.rs), each
//! with its own data dir, a fresh bare origin holding the demo project
//! (`demo::create_origin`), the `sim` executor with a fixed phase duration and the merge
//! gate running the project's `sh test.sh` before every landing. The backlog is generated:
//! `--per-node` × N independent stories, each planning its own file (gen/fNNNN.txt,
//! outside src/ and docs/, which test.sh scans),
//! so nothing serializes the mesh but the one origin's main. Every story runs research,
//! plan, implement, review, merge (no rejections unless --reject-rate), so the ideal
//! throughput is N × capacity stories per 5 phase durations.
//!
//! A mesh of one node reviews its own changes (review runs on another node whenever one
//! is alive, src/scheduler.rs), so N = 1 runs the same pipeline. The scaling efficiency
//! is given two ways: against the ideal (N × the best a single node could do, `capacity`
//! stories per 5 phases) and against the measured 1-node run
//! (throughput_N / (N × throughput_1)).
//!
//! Measured from the moment the backlog is written until every story is merged:
//! - stories/hour = stories / wall time;
//! - efficiency = throughput_N / (N × ideal_1) and throughput_N / (N × throughput_1);
//! - per phase, the mean wait for a claim and the mean claim → result time (stderr).
//! - CPU seconds of this process (utime + stime from /proc/self/stat) per story: the
//!   nodes' coordination (replication, claims, settle, scheduling) plus their git work
//!   (worktrees, commits, pushes and fetches through libgit2) — the sim executor itself
//!   only sleeps; with --no-git the origin is off (merges simulated) and what is left is
//!   the coordination alone. The merge gate's `sh test.sh` runs are child processes,
//!   reported separately (cutime + cstime);
//! - bytes sent per story: the sum of every node's `bytes_out` counter over the run.
//!
//! `--origins local,ssh,ssh-mux` runs every mesh size once per origin, one after the
//! other: the origin as a local path, then the same kind of origin served over ssh
//! (issue 14, acceptance 5) with a new ssh connection per git command (`ssh`, what the
//! node's default ssh command does) and with each node's git commands multiplexed over
//! one ssh connection of its own (`ssh-mux`, ControlMaster). The ssh origin is a real
//! OpenSSH `sshd` started by this process on a free port of 127.0.0.1 (its own host key
//! and config in a tempdir, one client key restricted to `git-shell`, as the
//! remote-origin tests use: `tests/remote_git/sshd.rs`), one server for the whole
//! process; every node's origin is `ssh://<user>@127.0.0.1:<port>/…` and the nodes' git
//! reaches it through `GIT_SSH_COMMAND` (that key, that known_hosts, strict host key
//! checking; see [`SshOrigin`]), which the node honours like a user's own setting. Over
//! ssh, also per story:
//! - bytes fetched and pushed, on the wire: an nftables counter (a table of this
//!   process's own, `inet mesh_flow_bench_<pid>`, deleted at exit) in the output hook on
//!   tcp sport / dport = sshd's port counts every IP packet between the nodes' ssh and
//!   sshd on loopback, TCP/IP headers included; from sshd = fetched, to sshd = pushed
//!   (each direction also carries its side of the key exchange, authentication and git's
//!   negotiation). Needs root (CAP_NET_ADMIN) and `nft`; without them the bytes are
//!   left out and the reason printed;
//! - ssh connections (sshd's "Accepted publickey" log lines: one per git command that
//!   talks to the origin, unless the ssh command multiplexes);
//! - the server side's CPU (sshd, its session processes, git-shell, upload-pack and
//!   receive-pack: /proc/<sshd>/stat with its reaped children); the nodes' own git and
//!   ssh processes are this process's children, counted with test.sh.
//!
//! Run it through `scripts/bench --flow` (release build).

use clap::Parser;
use futures::future::join_all;
use mesh_agent::config::Config;
use mesh_agent::core::model::{NewStory, StoryStatus};
use mesh_agent::demo;
use mesh_agent::node::{NodeHandle, NodeOptions};

#[path = "common/mesh.rs"]
mod meshkit;
#[path = "../tests/remote_git/sshd.rs"]
mod sshd;
use anyhow::Context;
use std::time::{Duration, Instant};

/// Where the nodes' origin is.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OriginKind {
    /// A bare repository on this machine, by path.
    Local,
    /// The same, served by an sshd on 127.0.0.1 (ssh:// URL): a new ssh connection per
    /// git command, as the node's default ssh command does.
    Ssh,
    /// The same sshd, every node's git commands multiplexed over one ssh connection of
    /// its own (ControlMaster, ControlPersist): what a node would do with multiplexing.
    SshMux,
}

impl OriginKind {
    fn name(self) -> &'static str {
        match self {
            OriginKind::Local => "local",
            OriginKind::Ssh => "ssh",
            OriginKind::SshMux => "ssh-mux",
        }
    }
}

#[derive(Parser, Debug)]
#[command(about = "Stories/hour to main for 1, 2, 4, 8 in-process nodes (sim executor)")]
struct Args {
    /// Mesh sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    nodes: Vec<usize>,
    /// Stories per node in each run (the backlog is per_node × N stories).
    #[arg(long, default_value_t = 6)]
    per_node: usize,
    /// Sim executor: duration of one phase.
    #[arg(long, default_value_t = 1000)]
    phase_ms: u64,
    /// Pieces of work each node runs at once.
    #[arg(long, default_value_t = 2)]
    capacity: u32,
    /// Share of first reviews that reject (0: every story takes exactly 5 phases).
    #[arg(long, default_value_t = 0.0)]
    reject_rate: f64,
    /// No origin: merges are simulated (isolates the coordination cost from git's).
    #[arg(long, conflicts_with = "origins")]
    no_git: bool,
    /// Origins to run every mesh size with, in this order: `local` (a path) and/or `ssh`
    /// (the same served by an sshd on 127.0.0.1).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "local")]
    origins: Vec<OriginKind>,
    /// Over ssh: more options for the nodes' ssh command (e.g. "-o KexAlgorithms=…" or
    /// ControlMaster settings), appended to it; to find where the time goes.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    ssh_options: String,
    /// Give up on one run after this long.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// This process's CPU time so far: (self utime + stime, children cutime + cstime), seconds.
/// CPU time every process of the machine used so far (/proc/stat: all but idle and
/// iowait), seconds.
fn machine_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return f64::NAN;
    };
    // user nice system idle iowait irq softirq steal (guest time is in user already).
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let busy: f64 = f
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy / tick
}

fn cpu_secs() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" that ends the command name: state is field 3; utime 14,
    // stime 15, cutime 16, cstime 17.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let at = |i: usize| f.get(i - 3).copied().unwrap_or(0.0) / tick;
    (at(14) + at(15), at(16) + at(17))
}

fn story(i: usize) -> NewStory {
    NewStory {
        title: format!("Generated feature {i}"),
        body: "An independent change on its own file.".into(),
        priority: Some(100),
        depends_on: vec![],
        // Outside src/ and docs/: the demo test.sh checks every file there, so its cost
        // would grow with the backlog and drown the coordination being measured.
        files: vec![format!("gen/f{i:04}.txt")],
        labels: vec!["bench".into()],
        imported: None,
    }
}

fn config(a: &Args, origin: Option<&str>, bootstrap: Option<String>) -> Config {
    let mut c = Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap: bootstrap.into_iter().collect(),
        work: true,
        capacity: a.capacity,
        sim_phase_ms: a.phase_ms,
        sim_review_reject_rate: a.reject_rate,
        log_level: "warn".into(),
        ..Config::default()
    };
    if let Some(o) = origin {
        c.origin = o.to_string();
        c.test_command = vec!["sh".into(), "test.sh".into()];
    }
    c
}

struct Run {
    n: usize,
    origin: OriginKind,
    stories: usize,
    merged: usize,
    wall: Duration,
    cpu: f64,
    child_cpu: f64,
    /// Every process of the machine (/proc/stat), seconds.
    machine_cpu: f64,
    bytes_out: u64,
    latency_p50_ms: f64,
    latency_max_ms: f64,
    /// Per phase (in walk order): mean ms from the previous step's result (or the story's
    /// creation) to this phase's claim, and from the claim to its result.
    phases: Vec<(String, f64, f64)>,
    /// Mean merge-gate tries (fetch, rebase, test, push) per landing.
    merge_tries: f64,
    /// Claim written → settled (work started), over every claim that ran.
    settle_p50_ms: u64,
    settle_p90_ms: u64,
    /// Over ssh: connections, wire bytes and sshd's CPU during the run.
    ssh: Option<SshSample>,
}

/// What the ssh origin saw: counters at a moment, or their growth over a run.
#[derive(Debug, Clone, Copy, Default)]
struct SshSample {
    connections: u64,
    /// Wire bytes (IP packets) to and from sshd's port; `None`: not counted.
    to_server: Option<u64>,
    from_server: Option<u64>,
    /// sshd with its reaped children, s.
    server_cpu: f64,
}

impl std::ops::Sub for SshSample {
    type Output = SshSample;
    fn sub(self, o: SshSample) -> SshSample {
        let d = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        SshSample {
            connections: self.connections.saturating_sub(o.connections),
            to_server: d(self.to_server, o.to_server),
            from_server: d(self.from_server, o.from_server),
            server_cpu: self.server_cpu - o.server_cpu,
        }
    }
}

/// An nftables table of this process's own counting the IP packets to and from one tcp
/// port in the output hook (on loopback both directions pass it once). Deleted on drop.
struct WireCounter {
    table: String,
    port: u16,
}

impl WireCounter {
    fn start(port: u16) -> anyhow::Result<WireCounter> {
        let table = format!("mesh_flow_bench_{}", std::process::id());
        let script = format!(
            "table inet {table} {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    \
             tcp dport {port} counter\n    tcp sport {port} counter\n  }}\n}}\n"
        );
        nft(&["-f", "-"], Some(&script))?;
        Ok(WireCounter { table, port })
    }

    /// Bytes so far: (to the port, from the port).
    fn read(&self) -> anyhow::Result<(u64, u64)> {
        let text = nft(&["list", "table", "inet", &self.table], None)?;
        let bytes = |dir: &str| -> anyhow::Result<u64> {
            let rule = format!("tcp {dir} {} counter", self.port);
            let line = text
                .lines()
                .find(|l| l.contains(&rule))
                .with_context(|| format!("no `{rule}` rule in nft's listing:\n{text}"))?;
            let n = line
                .split_whitespace()
                .skip_while(|w| *w != "bytes")
                .nth(1)
                .with_context(|| format!("no byte count in {line:?}"))?;
            n.parse()
                .with_context(|| format!("bad byte count in {line:?}"))
        };
        Ok((bytes("dport")?, bytes("sport")?))
    }
}

impl Drop for WireCounter {
    fn drop(&mut self) {
        if let Err(e) = nft(&["delete", "table", "inet", &self.table], None) {
            eprintln!(
                "flow_bench: could not delete nft table inet {}: {e:#}",
                self.table
            );
        }
    }
}

/// Runs `nft <args>` (with `stdin` fed to it) and returns its stdout.
fn nft(args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let program =
        sshd::which("nft").context("`nft` is not installed (apt-get install nftables)")?;
    let mut child = Command::new(&program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .context("write nft's script")?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().context("wait for nft")?;
    anyhow::ensure!(
        out.status.success(),
        "nft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The ssh origin's server, started once for the whole process.
///
/// Every run's nodes use the same URL (`ssh://<user>@127.0.0.1:<port>/…`, as nodes of one
/// mesh would: the remote merge gate is named after it) and the same ssh command: a shell
/// snippet, which git runs through `sh -c` with the node's clone (or its parent) as the
/// working directory, and which finds there the node's data dir `n<i>` and its run's
/// directory. When that directory holds the file [`MUX_MARKER`] (an `ssh-mux` run) it
/// adds ControlMaster auto, ControlPath <sshd dir>/cm-n<i> and ControlPersist to ssh's
/// options, so each node's git commands share one master connection of the node's own,
/// as on its own machine; otherwise (`ssh`) every git command opens a new connection,
/// as the node's default ssh command does. Only shell builtins run in the snippet.
struct SshOrigin {
    /// Dropped first: its nft table goes before anything else.
    wire: Option<WireCounter>,
    server: sshd::Sshd,
    /// The nodes' ssh command (GIT_SSH_COMMAND), with --ssh-options.
    command: String,
    /// Holds the keys, config, log and control sockets; removed last.
    dir: tempfile::TempDir,
}

/// The file in a run's directory that makes its nodes' ssh multiplex.
const MUX_MARKER: &str = "ssh-mux";

impl Drop for SshOrigin {
    /// Multiplexing masters outlive the git commands that started them: stop any left.
    fn drop(&mut self) {
        self.stop_masters();
    }
}

impl SshOrigin {
    fn start(options: &str) -> anyhow::Result<SshOrigin> {
        let need = |name: &str, package: &str| {
            sshd::which(name)
                .with_context(|| format!("--origins ssh needs `{name}`: apt-get install {package}"))
        };
        let sshd_bin = need("sshd", "openssh-server")?;
        let keygen = need("ssh-keygen", "openssh-client")?;
        need("ssh", "openssh-client")?;
        let dir = tempfile::Builder::new()
            .prefix("mesh-flow-bench-sshd-")
            .tempdir()?;
        let server = sshd::Sshd::start(&sshd_bin, &keygen, dir.path())
            .context("cannot start the ssh origin's sshd")?;
        let wire = match WireCounter::start(server.port) {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("flow_bench: ssh bytes on the wire not counted: {e:#}");
                None
            }
        };
        // r: the run's directory (PWD up to "/n<digits>"), n: the node's dir name.
        let command = format!(
            "r=${{PWD%%/n[0-9]*}}; n=${{PWD#\"$r\"/}}; n=${{n%%/*}}; \
             if [ -e \"$r/{MUX_MARKER}\" ]; then set -- -o ControlMaster=auto \
             -o \"ControlPath={dir}/cm-$n\" -o ControlPersist=600 \"$@\"; fi; {ssh} {options}",
            dir = dir.path().display(),
            ssh = server.ssh_command(),
        )
        .trim_end()
        .to_string();
        Ok(SshOrigin {
            wire,
            server,
            command,
            dir,
        })
    }

    /// Stops the multiplexing masters that run (`ssh -O exit`), and waits for them to go.
    fn stop_masters(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with("cm-") {
                continue;
            }
            let socket = entry.path();
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "{} -o ControlPath={} -O exit -p {} {}@127.0.0.1",
                    self.server.ssh_command(),
                    socket.display(),
                    self.server.port,
                    self.server.user
                ))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while socket.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// sshd's CPU so far, with the children it reaped (sessions, git-shell, git), s.
    fn cpu_secs(&self) -> f64 {
        let path = format!("/proc/{}/stat", self.server.pid());
        let stat = std::fs::read_to_string(path).unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<f64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (14..=17)
            .map(|i| f.get(i - 3).copied().unwrap_or(0.0))
            .sum::<f64>()
            / tick
    }

    /// The counters now.
    fn sample(&self) -> anyhow::Result<SshSample> {
        let wire = self.wire.as_ref().map(WireCounter::read).transpose()?;
        Ok(SshSample {
            connections: self.server.connections()?,
            to_server: wire.map(|w| w.0),
            from_server: wire.map(|w| w.1),
            server_cpu: self.cpu_secs(),
        })
    }
}

/// Where a story's time goes, phase by phase: waiting for a claim, then claim → result
/// (settle, worktree, the executor's fixed duration, git, the merge gate).
fn phase_breakdown(view: &mesh_agent::core::state::View) -> Vec<(String, f64, f64)> {
    let mut acc: Vec<(String, f64, f64, u32)> = Vec::new();
    for s in view.stories.values().filter(|s| s.more.merged.is_some()) {
        let mut prev = s.fact.created_at_ms;
        for key in &s.history {
            let Some(r) = view.results.get(key) else {
                continue;
            };
            let Some(c) = view.claims.get(&r.claim) else {
                continue;
            };
            let wait = c.written_at_ms.saturating_sub(prev) as f64;
            let run = r.written_at_ms.saturating_sub(c.written_at_ms) as f64;
            prev = r.written_at_ms;
            let name = r.phase.as_str().to_string();
            match acc.iter_mut().find(|x| x.0 == name) {
                Some(x) => {
                    x.1 += wait;
                    x.2 += run;
                    x.3 += 1;
                }
                None => acc.push((name, wait, run, 1)),
            }
        }
    }
    acc.into_iter()
        .map(|(p, w, r, n)| (p, w / n as f64, r / n as f64))
        .collect()
}

async fn bytes_out(nodes: &[NodeHandle]) -> u64 {
    join_all(nodes.iter().map(|n| n.status()))
        .await
        .into_iter()
        .flatten()
        .map(|s| s.counters.bytes_out)
        .sum()
}

async fn one(a: &Args, n: usize, kind: OriginKind, ssh: Option<&SshOrigin>) -> anyhow::Result<Run> {
    let tmp = tempfile::Builder::new()
        .prefix("mesh-flow-bench-")
        .tempdir()?;
    let origin_dir = tmp.path().join("origin.git");
    if !a.no_git {
        demo::create_origin(&origin_dir)?;
    }
    let ssh = match kind {
        OriginKind::Ssh | OriginKind::SshMux => Some(ssh.context("no sshd for the ssh origin")?),
        OriginKind::Local => None,
    };
    let origin = match ssh {
        _ if a.no_git => None,
        Some(s) => Some(s.server.url(&origin_dir)),
        None => Some(origin_dir.display().to_string()),
    };
    if kind == OriginKind::SshMux {
        std::fs::write(tmp.path().join(MUX_MARKER), "")?;
    }
    let nodes = meshkit::start_nodes(n, |i, boot| {
        let cfg = config(a, origin.as_deref(), boot);
        cfg.validate()?;
        Ok(NodeOptions {
            config: cfg,
            data_dir: Some(tmp.path().join(format!("n{i}"))),
            keypair: libp2p::identity::Keypair::generate_ed25519(),
            psk: None,
            passive: false,
            executor: None,
        })
    })
    .await?;
    anyhow::ensure!(
        meshkit::wait_alive(&nodes, Instant::now() + Duration::from_secs(60)).await,
        "the {n}-node mesh did not form within 60 s"
    );
    // Let every node's claim warm-up (a few heartbeats after its first tick) pass, so
    // that the run measures work, not start-up.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let total = a.per_node * n;
    let b0 = bytes_out(&nodes).await;
    let s0 = ssh.map(SshOrigin::sample).transpose()?;
    let (c0, k0) = cpu_secs();
    let m0 = machine_cpu_secs();
    let t0 = Instant::now();
    // All on node 0: stories written at once on different nodes would get disambiguated
    // ids (S-0001-xxxxxx), which the demo project's test.sh rejects as malformed lines.
    for i in 0..total {
        nodes[0]
            .add_story(story(i + 1))
            .await
            .map_err(|e| anyhow::anyhow!("add_story: {e}"))?;
    }
    let end = t0 + Duration::from_secs(a.timeout_secs);
    let mut rx = nodes[0].observe();
    let view = loop {
        let v = nodes[0]
            .view()
            .await
            .ok_or_else(|| anyhow::anyhow!("node 0 stopped"))?;
        let settled = v.stories.len() == total
            && v.stories
                .values()
                .all(|s| matches!(s.status, StoryStatus::Merged | StoryStatus::Blocked));
        if settled || Instant::now() >= end {
            break v;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
    };
    let wall = t0.elapsed();
    let (c1, k1) = cpu_secs();
    let m1 = machine_cpu_secs();
    let b1 = bytes_out(&nodes).await;
    // The last connection's closing packets (and sshd reaping its session, for its
    // CPU) trail the client's answer by a moment: let them pass (nothing else talks to
    // sshd now).
    let s1 = match ssh {
        Some(s) => {
            // A multiplexing master's connection is counted (bytes of its closing, and
            // sshd's CPU for its session, reaped then) when it ends: end them now.
            s.stop_masters();
            tokio::time::sleep(Duration::from_millis(300)).await;
            Some(s.sample()?)
        }
        None => None,
    };
    let mut lat: Vec<f64> = view
        .stories
        .values()
        .filter_map(|s| {
            s.more
                .merged
                .as_ref()
                .map(|m| m.written_at_ms.saturating_sub(s.fact.created_at_ms) as f64)
        })
        .collect();
    lat.sort_by(|x, y| x.total_cmp(y));
    let phases = phase_breakdown(&view);
    // The merge gate's tries per landing, from the merge handoffs ("after N fetches").
    let tries: Vec<u32> = view
        .stories
        .values()
        .filter_map(|s| s.history.last())
        .filter_map(|k| view.results.get(k))
        .filter(|r| r.phase == mesh_agent::core::model::Phase::Merge)
        .filter_map(|r| {
            let t = r.handoff.summary.split("(after ").nth(1)?;
            t.split(' ').next()?.parse().ok()
        })
        .collect();
    let merge_tries = tries.iter().sum::<u32>() as f64 / tries.len().max(1) as f64;
    let mut settle: Vec<u64> = join_all(nodes.iter().map(|h| h.runs()))
        .await
        .into_iter()
        .flatten()
        .flatten()
        .map(|r| r.started_ms.saturating_sub(r.claimed_ms))
        .collect();
    settle.sort_unstable();
    let merged = view
        .stories
        .values()
        .filter(|s| s.status == StoryStatus::Merged)
        .count();
    for h in nodes {
        h.shutdown().await;
    }
    let ssh = match (s0, s1) {
        (Some(s0), Some(s1)) => Some(s1 - s0),
        _ => None,
    };
    Ok(Run {
        n,
        origin: kind,
        ssh,
        stories: total,
        merged,
        wall,
        cpu: c1 - c0,
        child_cpu: k1 - k0,
        machine_cpu: m1 - m0,
        bytes_out: b1.saturating_sub(b0),
        latency_p50_ms: lat.get(lat.len() / 2).copied().unwrap_or(f64::NAN),
        latency_max_ms: lat.last().copied().unwrap_or(f64::NAN),
        phases,
        merge_tries,
        settle_p50_ms: settle.get(settle.len() / 2).copied().unwrap_or(0),
        settle_p90_ms: settle.get(settle.len() * 9 / 10).copied().unwrap_or(0),
    })
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        a.nodes.iter().all(|&n| n >= 1),
        "--nodes: sizes must be >= 1"
    );
    anyhow::ensure!(!a.origins.is_empty(), "--origins: name at least one");
    let origins = if a.no_git {
        vec![OriginKind::Local]
    } else {
        a.origins.clone()
    };
    // Before any thread exists: the server, and the ssh command every node's git runs
    // (the node reads GIT_SSH_COMMAND like a user's own setting; set once, here, while
    // this process has one thread).
    let ssh = if origins.iter().any(|&k| k != OriginKind::Local) {
        let s = SshOrigin::start(&a.ssh_options)?;
        std::env::set_var("GIT_SSH_COMMAND", &s.command);
        // The command starts with shell code, not `ssh`: say it is OpenSSH, or git would
        // run it with -G first to find out, on every connection.
        std::env::set_var("GIT_SSH_VARIANT", "ssh");
        eprintln!(
            "flow_bench: ssh origin: sshd on 127.0.0.1:{}, GIT_SSH_COMMAND={}",
            s.server.port, s.command
        );
        Some(s)
    } else {
        None
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    for &n in &a.nodes {
        for &kind in &origins {
            let label = format!("{n} node(s), {} origin", kind.name());
            eprintln!(
                "flow_bench: {label}: {} stories, phase {} ms, capacity {}{}",
                a.per_node * n,
                a.phase_ms,
                a.capacity,
                if a.no_git { ", no git" } else { "" }
            );
            let r = rt.block_on(one(&a, n, kind, ssh.as_ref()))?;
            eprintln!(
                "flow_bench: {label}: {}/{} merged in {:.1} s",
                r.merged,
                r.stories,
                r.wall.as_secs_f64()
            );
            let steps: Vec<String> = r
                .phases
                .iter()
                .map(|(p, w, run)| format!("{p} {:.2}+{:.2}", w / 1000.0, run / 1000.0))
                .collect();
            eprintln!(
                "flow_bench: {label}: mean s waiting for a claim + claim to result, per phase: {}; merge gate tries per landing {:.2}; settle p50 {} ms, p90 {} ms",
                steps.join(", "),
                r.merge_tries,
                r.settle_p50_ms,
                r.settle_p90_ms
            );
            runs.push(r);
        }
    }
    drop(rt);
    report(&a, &runs);
    Ok(())
}

fn stories_per_hour(r: &Run) -> f64 {
    r.merged as f64 * 3600.0 / r.wall.as_secs_f64()
}

fn report(a: &Args, runs: &[Run]) {
    // The ideal: every node keeps `capacity` stories in flight, 5 phases each.
    let per_story_s = 5.0 * a.phase_ms as f64 / 1000.0;
    let ideal_per_node = a.capacity as f64 * 3600.0 / per_story_s;
    let base1 = |origin: OriginKind| {
        runs.iter()
            .find(|r| r.n == 1 && r.origin == origin)
            .map(stories_per_hour)
    };
    println!();
    println!(
        "Flow: in-process nodes, sim executor {} ms/phase, capacity {}, {} stories per node on distinct files, {}",
        a.phase_ms,
        a.capacity,
        a.per_node,
        if a.no_git {
            "no origin (merges simulated)".to_string()
        } else {
            "one bare origin per run, merge gate `sh test.sh`".to_string()
        }
    );
    println!(
        "{:>5} {:>6} {:>8} {:>8} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10} {:>11}",
        "nodes",
        "origin",
        "stories",
        "wall s",
        "stories/h",
        "ideal/h",
        "eff",
        "vs 1",
        "lat p50 s",
        "CPU s",
        "child",
        "KiB sent"
    );
    println!(
        "{:>5} {:>6} {:>8} {:>8} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10} {:>11}",
        "", "", "merged", "", "", "", "ideal", "N×1", "(max)", "/story", "CPU s/st", "/story"
    );
    for r in runs {
        let tput = stories_per_hour(r);
        let ideal = ideal_per_node * r.n as f64;
        let vs1 = base1(r.origin)
            .map(|b| format!("{:.0} %", 100.0 * tput / (r.n as f64 * b)))
            .unwrap_or_else(|| "-".into());
        let per = |x: f64| x / r.merged.max(1) as f64;
        println!(
            "{:>5} {:>6} {:>8} {:>8.1} {:>10.0} {:>10.0} {:>8} {:>8} {:>10} {:>10.3} {:>10.3} {:>11.1}",
            r.n,
            if a.no_git { "-" } else { r.origin.name() },
            format!("{}/{}", r.merged, r.stories),
            r.wall.as_secs_f64(),
            tput,
            ideal,
            format!("{:.0} %", 100.0 * tput / ideal),
            vs1,
            format!(
                "{:.1} ({:.1})",
                r.latency_p50_ms / 1000.0,
                r.latency_max_ms / 1000.0
            ),
            per(r.cpu),
            per(r.child_cpu),
            per(r.bytes_out as f64) / 1024.0
        );
    }
    println!();
    println!(
        "stories/h: merged stories / wall time from the first story written until every story is merged."
    );
    println!(
        "ideal/h: N x capacity x 3600 / (5 phases x {} ms); eff: throughput against it",
        a.phase_ms
    );
    println!("vs 1: throughput_N / (N x throughput_1), against the measured 1-node run with the same origin.");
    println!(
        "lat: story written -> its merge fact written (p50, max). CPU s/story: this process (all nodes), utime+stime;"
    );
    println!(
        "child CPU: this process's children: the merge gate's test.sh, and over ssh the nodes' git and ssh clients."
    );
    println!("KiB sent: all nodes' bytes_out (mesh traffic) / merged stories.");
    let ssh_runs: Vec<&Run> = runs.iter().filter(|r| r.ssh.is_some()).collect();
    if ssh_runs.is_empty() {
        return;
    }
    println!();
    println!(
        "Origin over ssh against the local path, same run and phase length (sshd on 127.0.0.1, ed25519 key, git-shell{}):",
        if a.ssh_options.is_empty() {
            String::new()
        } else {
            format!("; ssh options added: {}", a.ssh_options)
        }
    );
    println!(
        "{:>5} {:>8} {:>10} {:>10} {:>8} {:>9} {:>10} {:>10} {:>9} {:>9} {:>13}",
        "nodes",
        "origin",
        "local",
        "over ssh",
        "ssh /",
        "ssh conns",
        "KiB",
        "KiB",
        "sshd CPU",
        "child CPU",
        "machine CPU"
    );
    println!(
        "{:>5} {:>8} {:>10} {:>10} {:>8} {:>9} {:>10} {:>10} {:>9} {:>9} {:>13}",
        "",
        "",
        "stories/h",
        "stories/h",
        "local",
        "/story",
        "fetched/st",
        "pushed/st",
        "s/story",
        "s/st (+)",
        "s/st loc|ssh"
    );
    for r in ssh_runs {
        let Some(t) = r.ssh else {
            continue;
        };
        let tput = stories_per_hour(r);
        let local = runs
            .iter()
            .find(|l| l.n == r.n && l.origin == OriginKind::Local);
        let per = |x: f64| x / r.merged.max(1) as f64;
        let kib = |b: Option<u64>| {
            b.map_or("-".to_string(), |b| {
                format!("{:.1}", per(b as f64) / 1024.0)
            })
        };
        // What ssh adds to the children's CPU: git and ssh (test.sh runs in both).
        let extra_child = local.map_or(f64::NAN, |l| {
            per(r.child_cpu) - l.child_cpu / l.merged.max(1) as f64
        });
        let machine = format!(
            "{}|{:.2}",
            local.map_or("-".to_string(), |l| format!(
                "{:.2}",
                l.machine_cpu / l.merged.max(1) as f64
            )),
            per(r.machine_cpu)
        );
        println!(
            "{:>5} {:>8} {:>10} {:>10.0} {:>8} {:>9.1} {:>10} {:>10} {:>9.3} {:>9.3} {:>13}",
            r.n,
            r.origin.name(),
            local.map_or("-".to_string(), |l| format!("{:.0}", stories_per_hour(l))),
            tput,
            local.map_or("-".to_string(), |l| format!(
                "{:.0} %",
                100.0 * tput / stories_per_hour(l)
            )),
            per(t.connections as f64),
            kib(t.from_server),
            kib(t.to_server),
            per(t.server_cpu),
            extra_child,
            machine
        );
    }
    println!();
    println!("origin ssh: a new ssh connection per git command (the node's default ssh command); ssh-mux: each node's git");
    println!("commands share one ssh connection of its own (ControlMaster auto, ControlPersist; the master connects when the");
    println!("node clones, before the clock starts). ssh / local: stories/h over ssh / over the local path, same mesh size.");
    println!(
        "KiB fetched / pushed: IP packets from / to sshd's port on loopback, TCP/IP headers included, counted by an"
    );
    println!(
        "nftables counter in the output hook (each direction also carries its side of the ssh handshake and of git's"
    );
    println!(
        "negotiation); \"-\": not counted (needs root and nft, see stderr). ssh conns: sshd's accepted logins. sshd CPU:"
    );
    println!(
        "sshd with its reaped children (sessions, git-shell, upload-pack, receive-pack). child CPU (+): this process's"
    );
    println!("children's CPU over ssh minus over the local path, per story: the nodes' git and ssh clients. machine CPU:");
    println!("every process on the machine (/proc/stat busy time) during the run, per story, local and ssh runs: includes");
    println!("any other load on the machine and the ssh-mux masters, which are nobody's children.");
}
