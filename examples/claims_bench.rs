//! Claim benchmark (issue 3): how fast a claim settles, and what a central lock costs on
//! the same machine for comparison. Two subcommands:
//!
//! - `claims`: N nodes in this one process on loopback (as `examples/bench.rs`), with the
//!   sim executor and phases that never finish, so that every claim stays held. It
//!   measures write → settled latency of story claims:
//!   - (a) uncontended: one claimer among N; the others replicate and are the peers it
//!     must settle with. Each sample: the claimer's work is off, a story is written and
//!     reaches every node, then `set_work(true)` makes the claimer claim it at once;
//!   - (b) contended: every node works; each round a burst of stories reaches every node
//!     and all nodes are switched on at the same instant, so they claim the same story
//!     first. The latency of the claims that won, and how many lost at settle;
//!   - (c) tick-driven: the claimer works all the time and a story is written on another
//!     node; from `add_story()` until the claimer's run starts (what a user sees).
//!
//!   Latencies come from the claiming node's own records (`RunRecord::started_ms -
//!   claimed_ms`, 1 ms resolution) and, for (a), also from this process's clock:
//!   `set_work(true)` called → the run visible in `runs()` (µs resolution, an upper bound).
//! - `locks`: a Redis `SET NX PX` and an etcd lock (v3 JSON gateway: txn "create revision
//!   = 0 → put with lease"), uncontended and with `--clients` clients racing for one key
//!   per round; the same against an etcd cluster of five members (`--etcd-cluster`: as
//!   many processes on the same cores as a 5-node mesh, a write committed on a quorum of
//!   three). The servers are started (and stopped) by `scripts/bench --locks`; this only
//!   speaks to them (RESP by hand over TcpStream, etcd through ureq).
//!
//! Run it through `scripts/bench --claims` / `--locks` (release build).

use clap::{Parser, Subcommand};
use futures::future::join_all;
use mesh_agent::config::Config;
use mesh_agent::core::lease::ReleaseReason;
use mesh_agent::core::model::NewStory;
use mesh_agent::core::RunRecord;
use mesh_agent::node::{NodeHandle, NodeOptions};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[path = "common/mesh.rs"]
mod meshkit;
#[path = "common/stats.rs"]
mod stats;
use stats::{f, ms, pct};

#[derive(Parser, Debug)]
#[command(about = "Claim latency (in-process mesh) and Redis / etcd lock latency")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write → settled latency of claims in an in-process mesh.
    Claims(ClaimArgs),
    /// Acquire latency of a Redis SET NX PX and an etcd lock (servers already running).
    Locks(LockArgs),
}

#[derive(clap::Args, Debug)]
struct ClaimArgs {
    /// Nodes in the mesh.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Uncontended samples (one claimer among --nodes).
    #[arg(long, default_value_t = 50)]
    samples: usize,
    /// Contended rounds (every node claims at the same instant).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Stories per contended round.
    #[arg(long, default_value_t = 5)]
    burst: usize,
    /// Tick-driven samples: story written on another node → the claimer's run starts.
    #[arg(long, default_value_t = 20)]
    tick_samples: usize,
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    #[arg(long, default_value_t = 5000)]
    dead_after_ms: u64,
    /// Give up on the mesh forming after this long.
    #[arg(long, default_value_t = 60)]
    form_timeout_secs: u64,
}

#[derive(clap::Args, Debug)]
struct LockArgs {
    /// Redis at this address (host:port); omitted: Redis is skipped.
    #[arg(long)]
    redis: Option<String>,
    /// etcd client URL (http://host:port); omitted: etcd is skipped.
    #[arg(long)]
    etcd: Option<String>,
    /// Client URL of a member of an etcd cluster of five on this machine (the same
    /// processes and cores as a 5-node mesh; a write commits on a quorum of three, each
    /// fsyncing its log); omitted: skipped.
    #[arg(long)]
    etcd_cluster: Option<String>,
    /// Uncontended acquires per server.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// Contended rounds: every client tries the same fresh key at once.
    #[arg(long, default_value_t = 300)]
    rounds: usize,
    /// Contending clients.
    #[arg(long, default_value_t = 5)]
    clients: usize,
    /// Lock lease / PX in ms.
    #[arg(long, default_value_t = 10_000)]
    ttl_ms: u64,
}

// ---- small helpers ------------------------------------------------------------------------

/// One table row: a label, the sample count, p50 / p99 / max (ms), and a note.
fn row(label: &str, v: &[f64], prec: usize, note: &str) {
    println!(
        "{:<46} {:>7} {:>9} {:>9} {:>9}  {}",
        label,
        v.len(),
        f(pct(v, 50.0), prec),
        f(pct(v, 99.0), prec),
        f(pct(v, 100.0), prec),
        note
    );
}

fn header(title: &str) {
    println!();
    println!("{title}");
    println!(
        "{:<46} {:>7} {:>9} {:>9} {:>9}  note",
        "", "samples", "p50 ms", "p99 ms", "max ms"
    );
}

// ---- claims: in-process mesh ----------------------------------------------------------------

struct Mesh {
    nodes: Vec<NodeHandle>,
    _dirs: Vec<tempfile::TempDir>,
}

fn node_config(a: &ClaimArgs, bootstrap: Option<String>) -> Config {
    Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap: bootstrap.into_iter().collect(),
        heartbeat_ms: a.heartbeat_ms,
        dead_after_ms: a.dead_after_ms,
        // On from the start: a node's claim warm-up (heartbeat × suspect_after_missed)
        // starts at its first claiming tick, and must be over before we measure.
        work: true,
        // Every claim stays held (phases never finish during the run), so capacity must
        // cover every story this benchmark writes.
        capacity: 1024,
        sim_phase_ms: 3_600_000,
        ..Config::default()
    }
}

async fn start_mesh(a: &ClaimArgs) -> anyhow::Result<Mesh> {
    let dirs = (0..a.nodes)
        .map(|_| {
            tempfile::Builder::new()
                .prefix("mesh-claims-bench-")
                .tempdir()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let nodes = meshkit::start_nodes(a.nodes, |i, boot| {
        let config = node_config(a, boot);
        config.validate()?;
        Ok(NodeOptions {
            config,
            data_dir: Some(dirs[i].path().to_path_buf()),
            keypair: libp2p::identity::Keypair::generate_ed25519(),
            psk: None,
            passive: false,
            executor: None,
        })
    })
    .await?;
    Ok(Mesh { nodes, _dirs: dirs })
}

/// Waits until `node` has a run for `story` (woken by its observation changing, which
/// includes every completed sync session, and at the latest every millisecond). Pushes to
/// `synced` the time since `t0` of each sync session the node completed meanwhile.
async fn wait_run(
    node: &NodeHandle,
    story: &str,
    t0: Instant,
    deadline: Instant,
    synced: &mut Vec<f64>,
) -> Option<RunRecord> {
    let mut rx = node.observe();
    let mut done = rx.borrow_and_update().sync_sessions_completed;
    loop {
        let now = rx.borrow_and_update().sync_sessions_completed;
        for _ in done..now {
            synced.push(ms(t0.elapsed()));
        }
        done = done.max(now);
        if let Some(r) = node
            .runs()
            .await?
            .into_iter()
            .rev()
            .find(|r| r.story == story)
        {
            return Some(r);
        }
        if Instant::now() >= deadline {
            return None;
        }
        let _ = tokio::time::timeout(Duration::from_millis(1), rx.changed()).await;
    }
}

fn story(title: String) -> NewStory {
    NewStory {
        title,
        body: "written by examples/claims_bench.rs".into(),
        ..Default::default()
    }
}

/// (claims written, lost at settle, unsettled: peers unreachable) in a node's view.
async fn claim_counts(node: &NodeHandle) -> (usize, usize, usize) {
    let Some(v) = node.view().await else {
        return (0, 0, 0);
    };
    let unsettled = v
        .releases
        .values()
        .filter(|r| r.why == ReleaseReason::Unsettled);
    let (mut lost, mut unreachable) = (0, 0);
    for r in unsettled {
        if r.note.contains("could not settle") {
            unreachable += 1;
        } else {
            lost += 1;
        }
    }
    (v.claims.len(), lost, unreachable)
}

fn core_latency(r: &RunRecord) -> f64 {
    r.started_ms.saturating_sub(r.claimed_ms) as f64
}

#[derive(Default)]
struct ClaimResults {
    unc_core: Vec<f64>,
    unc_wall: Vec<f64>,
    unc_missed: usize,
    /// set_work(true) round trip (the claim is written inside it).
    unc_ack: Vec<f64>,
    /// Since set_work(true): the claimer's first / last completed sync session before the run.
    unc_first_sync: Vec<f64>,
    unc_last_sync: Vec<f64>,
    /// Sync sessions the claimer started per claim.
    unc_sessions: Vec<f64>,
    unc_lost: usize,
    unc_unreachable: usize,
    con_core: Vec<f64>,
    con_claims: usize,
    con_lost: usize,
    con_unreachable: usize,
    con_stories: usize,
    con_unsettled_stories: usize,
    tick_wall: Vec<f64>,
    tick_core: Vec<f64>,
    tick_missed: usize,
}

async fn uncontended(a: &ClaimArgs, mesh: &Mesh, r: &mut ClaimResults) {
    let n = mesh.nodes.len();
    let claimer = &mesh.nodes[0];
    let (c0, l0, u0) = claim_counts(claimer).await;
    for i in 0..a.samples {
        claimer.set_work(false).await;
        // Written on a rotating node, so the claimer sometimes learns it by sync.
        let writer = &mesh.nodes[i % n];
        let Ok(s) = writer.add_story(story(format!("uncontended {i}"))).await else {
            r.unc_missed += 1;
            continue;
        };
        if !meshkit::wait_same_doc(&mesh.nodes, Instant::now() + Duration::from_secs(10)).await {
            eprintln!("  sample {i}: the mesh did not converge in 10 s");
        }
        let before = claimer.status().await.map(|s| s.counters);
        let t0 = Instant::now();
        claimer.set_work(true).await;
        r.unc_ack.push(ms(t0.elapsed()));
        let mut synced = Vec::new();
        match wait_run(
            claimer,
            &s.key,
            t0,
            t0 + Duration::from_secs(10),
            &mut synced,
        )
        .await
        {
            Some(run) => {
                r.unc_wall.push(ms(t0.elapsed()));
                r.unc_core.push(core_latency(&run));
                if let (Some(&first), Some(&last)) = (synced.first(), synced.last()) {
                    r.unc_first_sync.push(first);
                    r.unc_last_sync.push(last);
                }
                if let (Some(b), Some(a)) = (before, claimer.status().await.map(|s| s.counters)) {
                    r.unc_sessions
                        .push((a.sync_sessions_started - b.sync_sessions_started) as f64);
                }
            }
            None => {
                r.unc_missed += 1;
                eprintln!("  sample {i}: no run for {} within 10 s", s.id);
            }
        }
    }
    claimer.set_work(false).await;
    meshkit::wait_same_doc(&mesh.nodes, Instant::now() + Duration::from_secs(10)).await;
    let (_, l1, u1) = claim_counts(claimer).await;
    let _ = c0;
    r.unc_lost = l1 - l0;
    r.unc_unreachable = u1 - u0;
}

async fn contended(a: &ClaimArgs, mesh: &Mesh, r: &mut ClaimResults) {
    let n = mesh.nodes.len();
    let (c0, l0, u0) = claim_counts(&mesh.nodes[0]).await;
    let mut keys: BTreeSet<String> = BTreeSet::new();
    for round in 0..a.rounds {
        join_all(mesh.nodes.iter().map(|h| h.set_work(false))).await;
        let adds = (0..a.burst).map(|j| {
            mesh.nodes[(round + j) % n].add_story(story(format!("contended {round}.{j}")))
        });
        let mut round_keys = Vec::new();
        for s in join_all(adds).await.into_iter().flatten() {
            round_keys.push(s.key);
        }
        if !meshkit::wait_same_doc(&mesh.nodes, Instant::now() + Duration::from_secs(10)).await {
            eprintln!("  round {round}: the mesh did not converge in 10 s");
        }
        // Everyone at once: each node claims the best story it sees, the same one.
        join_all(mesh.nodes.iter().map(|h| h.set_work(true))).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let runs: Vec<RunRecord> = join_all(mesh.nodes.iter().map(|h| h.runs()))
                .await
                .into_iter()
                .flatten()
                .flatten()
                .collect();
            let done = round_keys
                .iter()
                .all(|k| runs.iter().any(|x| &x.story == k));
            if done || Instant::now() >= deadline {
                if !done {
                    eprintln!("  round {round}: not every story settled within 20 s");
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        keys.extend(round_keys.iter().map(|k| k.to_string()));
    }
    join_all(mesh.nodes.iter().map(|h| h.set_work(false))).await;
    // Let the releases of the losers reach node 0, then count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    meshkit::wait_same_doc(&mesh.nodes, Instant::now() + Duration::from_secs(10)).await;
    let (c1, l1, u1) = claim_counts(&mesh.nodes[0]).await;
    r.con_claims = c1 - c0;
    r.con_lost = l1 - l0;
    r.con_unreachable = u1 - u0;
    r.con_stories = keys.len();
    let mut started: BTreeSet<String> = BTreeSet::new();
    for runs in join_all(mesh.nodes.iter().map(|h| h.runs()))
        .await
        .into_iter()
        .flatten()
    {
        for x in runs.iter().filter(|x| keys.contains(&x.story)) {
            r.con_core.push(core_latency(x));
            started.insert(x.story.clone());
        }
    }
    r.con_unsettled_stories = keys.len() - started.len();
}

async fn tick_driven(a: &ClaimArgs, mesh: &Mesh, r: &mut ClaimResults) {
    let n = mesh.nodes.len();
    let claimer = &mesh.nodes[0];
    claimer.set_work(true).await;
    for i in 0..a.tick_samples {
        // A random pause over one whole claim-tick period (heartbeat / 4), so that the
        // writes land at a uniformly random point of the claimer's tick cycle (right after
        // a settle they would be in step with it).
        let pause = rand::random::<u64>() % (a.heartbeat_ms / 4).max(1);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let writer = &mesh.nodes[1 + i % (n - 1)];
        let t0 = Instant::now();
        let Ok(s) = writer.add_story(story(format!("tick {i}"))).await else {
            r.tick_missed += 1;
            continue;
        };
        let mut synced = Vec::new();
        match wait_run(
            claimer,
            &s.key,
            t0,
            t0 + Duration::from_secs(10),
            &mut synced,
        )
        .await
        {
            Some(run) => {
                r.tick_wall.push(ms(t0.elapsed()));
                r.tick_core.push(core_latency(&run));
            }
            None => r.tick_missed += 1,
        }
    }
    claimer.set_work(false).await;
}

async fn claims(a: &ClaimArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.nodes >= 2, "--nodes must be at least 2");
    let mut r = ClaimResults::default();
    eprintln!("[claims] starting {} nodes", a.nodes);
    let t0 = Instant::now();
    let mut mesh = start_mesh(a).await?;
    let deadline = t0 + Duration::from_secs(a.form_timeout_secs);
    if !meshkit::wait_alive(&mesh.nodes, deadline).await
        || !meshkit::wait_same_doc(&mesh.nodes, deadline).await
    {
        anyhow::bail!("the mesh did not form within {} s", a.form_timeout_secs);
    }
    // Warm-up: nodes claim nothing until heartbeat × suspect_after_missed after their
    // first tick; wait that out (plus a heartbeat) before the first sample.
    let warm = Duration::from_millis(a.heartbeat_ms * 4);
    eprintln!(
        "[claims] formed in {} ms; claim warm-up {} ms",
        t0.elapsed().as_millis(),
        warm.as_millis()
    );
    tokio::time::sleep(warm).await;
    join_all(mesh.nodes.iter().skip(1).map(|h| h.set_work(false))).await;

    eprintln!("[claims] (a) uncontended: {} samples", a.samples);
    uncontended(a, &mesh, &mut r).await;
    eprintln!(
        "[claims] (a) p50 {} ms (core), {} ms (wall)",
        f(pct(&r.unc_core, 50.0), 0),
        f(pct(&r.unc_wall, 50.0), 2)
    );
    eprintln!(
        "[claims] (b) contended: {} rounds of {} stories, all {} nodes claiming",
        a.rounds, a.burst, a.nodes
    );
    contended(a, &mesh, &mut r).await;
    eprintln!(
        "[claims] (b) winners p50 {} ms; {} claims, {} lost at settle",
        f(pct(&r.con_core, 50.0), 0),
        r.con_claims,
        r.con_lost
    );
    eprintln!("[claims] (c) tick-driven: {} samples", a.tick_samples);
    tick_driven(a, &mesh, &mut r).await;
    for h in mesh.nodes.drain(..) {
        let _ = tokio::time::timeout(Duration::from_secs(10), h.shutdown()).await;
    }

    println!();
    println!(
        "Claims, in-process: {} nodes in one process, loopback TCP, no psk; heartbeat {} ms (claim tick every {} ms), \
         lease ttl {} ms, settle_timeout {} ms; sim phases never finish (every claim stays held)",
        a.nodes,
        a.heartbeat_ms,
        a.heartbeat_ms / 4,
        Config::default().lease_ttl_ms,
        Config::default().settle_timeout_ms,
    );
    header("claim latency");
    row(
        "(a) uncontended, write → settled (core clock)",
        &r.unc_core,
        0,
        &format!(
            "1 claimer among {}; {} missed, {} lost, {} unreachable",
            a.nodes, r.unc_missed, r.unc_lost, r.unc_unreachable
        ),
    );
    row(
        "(a) uncontended, set_work → run visible",
        &r.unc_wall,
        2,
        "this process's clock: claim write + settle + one API round trip",
    );
    row(
        "(a) where: set_work round trip (claim written)",
        &r.unc_ack,
        2,
        "",
    );
    row(
        "(a) where: first sync session completed",
        &r.unc_first_sync,
        2,
        "since set_work was called; the claimer settles after the last of its peers",
    );
    row(
        "(a) where: last sync session completed",
        &r.unc_last_sync,
        2,
        "",
    );
    row(
        "(a) sync sessions started per claim (count)",
        &r.unc_sessions,
        0,
        &format!("{} peers to settle with", a.nodes - 1),
    );
    row(
        "(b) contended, winners write → settled",
        &r.con_core,
        0,
        &format!(
            "{} stories, {} claims written, {} lost at settle, {} unreachable, {} stories unsettled",
            r.con_stories, r.con_claims, r.con_lost, r.con_unreachable, r.con_unsettled_stories
        ),
    );
    row(
        "(c) tick-driven, add_story → run started",
        &r.tick_wall,
        1,
        &format!(
            "story written on another node; includes sync + the wait for a claim tick; {} missed",
            r.tick_missed
        ),
    );
    row(
        "(c) tick-driven, write → settled (core clock)",
        &r.tick_core,
        0,
        "",
    );
    println!();
    println!("core clock: the claiming node's RunRecord.started_ms - claimed_ms, whole milliseconds (each figure ±1 ms).");
    println!("Target: settled-claim p50 <= 2 ms at 5 nodes on loopback.");
    Ok(())
}

// ---- locks: Redis and etcd -------------------------------------------------------------------

/// A minimal RESP client: enough for SET NX PX and DEL.
struct Redis {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

#[derive(Debug, PartialEq)]
enum Reply {
    Ok,
    Nil,
    Int(i64),
    Other(String),
}

impl Redis {
    fn connect(addr: &str) -> std::io::Result<Redis> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Redis {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    fn cmd(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
        }
        self.w.write_all(out.as_bytes())?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let line = line.trim_end();
        Ok(match line.as_bytes().first() {
            Some(b'+') if line == "+OK" => Reply::Ok,
            Some(b'$') if line == "$-1" => Reply::Nil,
            Some(b'$') => {
                let n: usize = line[1..].parse().unwrap_or(0);
                let mut buf = vec![0; n + 2];
                self.r.read_exact(&mut buf)?;
                Reply::Other(String::from_utf8_lossy(&buf[..n]).into_owned())
            }
            Some(b':') => Reply::Int(line[1..].parse().unwrap_or(0)),
            _ => Reply::Other(line.to_string()),
        })
    }
}

/// A lock service under test: acquire one key (true: won), release it.
trait Lock: Send {
    fn acquire(&mut self, key: &str, me: &str) -> anyhow::Result<bool>;
    fn release(&mut self, key: &str) -> anyhow::Result<()>;
}

struct RedisLock {
    c: Redis,
    px: String,
}

impl Lock for RedisLock {
    fn acquire(&mut self, key: &str, me: &str) -> anyhow::Result<bool> {
        match self.c.cmd(&["SET", key, me, "NX", "PX", &self.px])? {
            Reply::Ok => Ok(true),
            Reply::Nil => Ok(false),
            other => anyhow::bail!("SET NX PX answered {other:?}"),
        }
    }
    fn release(&mut self, key: &str) -> anyhow::Result<()> {
        self.c.cmd(&["DEL", key])?;
        Ok(())
    }
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An etcd lock as etcd's own `concurrency.Mutex` takes it: one session lease per client
/// (granted once, kept alive), and per acquire one txn "key not created yet → put it
/// with the lease". The key's create revision is the fencing token.
struct EtcdLock {
    agent: ureq::Agent,
    url: String,
    lease: String,
}

impl EtcdLock {
    fn connect(url: &str, ttl_ms: u64) -> anyhow::Result<EtcdLock> {
        let agent = ureq::Agent::new_with_defaults();
        let mut l = EtcdLock {
            agent,
            url: url.trim_end_matches('/').to_string(),
            lease: String::new(),
        };
        l.lease = l.grant(ttl_ms)?;
        Ok(l)
    }

    fn post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let mut resp = self
            .agent
            .post(&format!("{}{}", self.url, path))
            .send_json(body)?;
        Ok(resp.body_mut().read_json::<serde_json::Value>()?)
    }

    /// Grants a lease; its id.
    fn grant(&self, ttl_ms: u64) -> anyhow::Result<String> {
        let v = self.post(
            "/v3/lease/grant",
            serde_json::json!({ "TTL": ttl_ms.div_ceil(1000).max(1) }),
        )?;
        v.get("ID")
            .and_then(|x| {
                x.as_str()
                    .map(str::to_string)
                    .or(x.as_i64().map(|i| i.to_string()))
            })
            .ok_or_else(|| anyhow::anyhow!("lease grant answered {v}"))
    }
}

impl Lock for EtcdLock {
    fn acquire(&mut self, key: &str, me: &str) -> anyhow::Result<bool> {
        let k = b64(key.as_bytes());
        let v = self.post(
            "/v3/kv/txn",
            serde_json::json!({
                "compare": [{ "key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0" }],
                "success": [{ "request_put": { "key": k, "value": b64(me.as_bytes()), "lease": self.lease } }],
            }),
        )?;
        if v.get("header").is_none() {
            anyhow::bail!("txn answered {v}");
        }
        Ok(v.get("succeeded")
            .and_then(|x| x.as_bool())
            .unwrap_or(false))
    }
    fn release(&mut self, key: &str) -> anyhow::Result<()> {
        self.post(
            "/v3/kv/deleterange",
            serde_json::json!({ "key": b64(key.as_bytes()) }),
        )?;
        Ok(())
    }
}

struct LockResults {
    unc: Vec<f64>,
    /// Fresh lease + txn (etcd only): a lock with its own TTL, as SET NX PX gives.
    unc_with_lease: Vec<f64>,
    con_won: Vec<f64>,
    con_lost: Vec<f64>,
    rounds_without_winner: usize,
    errors: usize,
}

fn run_locks(
    name: &str,
    a: &LockArgs,
    mut connect: impl FnMut() -> anyhow::Result<Box<dyn Lock>>,
    fresh_lease: Option<&dyn Fn() -> anyhow::Result<()>>,
) -> anyhow::Result<LockResults> {
    let run = format!("{}-{}", name, std::process::id());
    let mut res = LockResults {
        unc: Vec::new(),
        unc_with_lease: Vec::new(),
        con_won: Vec::new(),
        con_lost: Vec::new(),
        rounds_without_winner: 0,
        errors: 0,
    };
    let mut c = connect()?;
    // Warm the connection and the server.
    for i in 0..50 {
        let k = format!("{run}:warm:{i}");
        c.acquire(&k, "warm")?;
        c.release(&k)?;
    }
    for i in 0..a.samples {
        let k = format!("{run}:u:{i}");
        let t0 = Instant::now();
        let won = c.acquire(&k, "me")?;
        res.unc.push(ms(t0.elapsed()));
        if !won {
            res.errors += 1;
        }
        c.release(&k)?;
    }
    if let Some(grant) = fresh_lease {
        for i in 0..a.samples.min(500) {
            let k = format!("{run}:ul:{i}");
            let t0 = Instant::now();
            grant()?;
            c.acquire(&k, "me")?;
            res.unc_with_lease.push(ms(t0.elapsed()));
            c.release(&k)?;
        }
    }
    // Contended: every client tries the same fresh key the moment the barrier opens.
    let barrier = Arc::new(Barrier::new(a.clients));
    let mut threads = Vec::new();
    for id in 0..a.clients {
        let mut c = connect()?;
        let barrier = barrier.clone();
        let rounds = a.rounds;
        let run = run.clone();
        threads.push(std::thread::spawn(move || {
            let mut out: Vec<(usize, bool, f64)> = Vec::new();
            let mut errors = 0;
            for r in 0..rounds {
                let k = format!("{run}:c:{r}");
                barrier.wait();
                let t0 = Instant::now();
                match c.acquire(&k, &format!("client{id}")) {
                    Ok(won) => out.push((r, won, ms(t0.elapsed()))),
                    Err(_) => errors += 1,
                }
                barrier.wait();
                if id == 0 {
                    let _ = c.release(&k);
                }
            }
            (out, errors)
        }));
    }
    let mut winners = vec![0usize; a.rounds];
    for t in threads {
        let (out, errors) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        res.errors += errors;
        for (r, won, l) in out {
            if won {
                winners[r] += 1;
                res.con_won.push(l);
            } else {
                res.con_lost.push(l);
            }
        }
    }
    res.rounds_without_winner = winners.iter().filter(|&&w| w != 1).count();
    Ok(res)
}

fn print_lock(name: &str, what: &str, a: &LockArgs, r: &LockResults) {
    row(&format!("{name} uncontended acquire"), &r.unc, 3, what);
    if !r.unc_with_lease.is_empty() {
        row(
            &format!("{name} uncontended, lease grant + txn"),
            &r.unc_with_lease,
            3,
            "a fresh lease per lock (own TTL, as SET NX PX has)",
        );
    }
    row(
        &format!("{name} {} contending, winners", a.clients),
        &r.con_won,
        3,
        &format!(
            "{} rounds, one fresh key each; rounds without exactly one winner: {}; errors: {}",
            a.rounds, r.rounds_without_winner, r.errors
        ),
    );
    row(
        &format!("{name} {} contending, losers", a.clients),
        &r.con_lost,
        3,
        "the refused attempts",
    );
}

fn locks(a: &LockArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.clients >= 1, "--clients must be at least 1");
    header(&format!(
        "Locks on this machine, one client per thread, loopback; ttl {} ms",
        a.ttl_ms
    ));
    match &a.redis {
        Some(addr) => {
            eprintln!("[locks] redis at {addr}");
            let px = a.ttl_ms.to_string();
            let r = run_locks(
                "redis",
                a,
                || {
                    Ok(Box::new(RedisLock {
                        c: Redis::connect(addr)?,
                        px: px.clone(),
                    }) as Box<dyn Lock>)
                },
                None,
            )?;
            print_lock("redis", "SET k v NX PX ttl (one round trip)", a, &r);
        }
        None => println!("redis: skipped (no --redis address)"),
    }
    match &a.etcd {
        Some(url) => etcd_locks("etcd", url, a)?,
        None => println!("etcd: skipped (no --etcd URL)"),
    }
    match &a.etcd_cluster {
        Some(url) => etcd_locks("etcd-5", url, a)?,
        None => println!("etcd-5: skipped (no --etcd-cluster URL)"),
    }
    Ok(())
}

/// The etcd rows, as `name`, against the etcd whose client URL is `url`.
fn etcd_locks(name: &str, url: &str, a: &LockArgs) -> anyhow::Result<()> {
    eprintln!("[locks] {name} at {url}");
    let grant_client = EtcdLock::connect(url, a.ttl_ms)?;
    let grant = || grant_client.grant(a.ttl_ms).map(|_| ());
    let r = run_locks(
        name,
        a,
        || Ok(Box::new(EtcdLock::connect(url, a.ttl_ms)?) as Box<dyn Lock>),
        Some(&grant),
    )?;
    print_lock(
        name,
        "txn create_revision=0 → put with a session lease (etcd's Mutex)",
        a,
        &r,
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os("BENCH_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("BENCH_LOG"))
            .with_writer(std::io::stderr)
            .init();
    }
    match &args.cmd {
        Cmd::Claims(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let r = rt.block_on(claims(a));
            rt.shutdown_timeout(Duration::from_secs(5));
            r
        }
        Cmd::Locks(a) => locks(a),
    }
}
