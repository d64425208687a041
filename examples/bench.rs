//! In-process mesh benchmark: N nodes in this one process, on loopback, each with its own
//! store in a temporary directory, driven through the library API (`node::start`).
//!
//! For every N it measures
//! - formation: time until every node sees the N-1 others alive and holds the same document;
//! - propagation: a story written on one node (the writer rotates) until every node's
//!   heads digest equals the writer's, p50/p99/max over `--writes` writes, and the write
//!   acknowledgement (add_story returning: change applied, flushed to disk, announced);
//! - idle traffic: TCP bytes in+out per node per second over `--idle-secs` of quiet;
//! - memory: this process's RSS with N nodes running, and its growth per node;
//! - dead detection: a node is killed without goodbye (`kill()`), and the time until every
//!   other node lists it as dead is compared with the configured `dead_after_ms`.
//!
//! Run it through `scripts/bench` (release build); `--help` lists the knobs. Every wait is
//! bounded: a wait that times out is reported, never hangs the run.

use clap::Parser;
use futures::future::join_all;
use mesh_agent::config::Config;
use mesh_agent::core::model::NewStory;
use mesh_agent::node::{self, NodeHandle, NodeOptions, Observation};
use rand::Rng;
use std::time::{Duration, Instant};

#[path = "common/mesh.rs"]
mod meshkit;
#[path = "common/stats.rs"]
mod stats;
use stats::{f, ms, pct};

#[derive(Parser, Debug)]
#[command(about = "In-process mesh benchmark (propagation, dead detection, idle traffic, RSS)")]
struct Args {
    /// Mesh sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "3,10,30")]
    nodes: Vec<usize>,
    /// Stories written per mesh size (the writer rotates over the nodes).
    #[arg(long, default_value_t = 100)]
    writes: usize,
    /// Seconds of quiet over which idle traffic is measured.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Nodes killed (one after the other) per mesh size for dead detection.
    #[arg(long, default_value_t = 3)]
    kills: usize,
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    #[arg(long, default_value_t = 5000)]
    dead_after_ms: u64,
    /// Give up on one story reaching every node after this long.
    #[arg(long, default_value_t = 10_000)]
    write_timeout_ms: u64,
    /// Let the nodes claim and run the benchmark's stories (the `work` config key). Off by
    /// default: propagation is measured alone, executors writing claims and results
    /// would be counted in it.
    #[arg(long)]
    work: bool,
    /// Give up on the mesh forming after this long.
    #[arg(long, default_value_t = 120)]
    form_timeout_secs: u64,
    /// Seconds to wait after the mesh formed before the writes, so that the repairs of
    /// its formation (every new connection syncs) are not counted in the writes' bytes.
    #[arg(long, default_value_t = 0)]
    settle_secs: u64,
}

#[derive(Debug, Default)]
struct Row {
    nodes: usize,
    form_ms: Option<u128>,
    writes_ok: usize,
    writes_timed_out: usize,
    prop_ms: Vec<f64>,
    ack_ms: Vec<f64>,
    idle_bytes_per_node_s: Option<f64>,
    rss_total_kb: Option<u64>,
    rss_growth_per_node_kb: Option<u64>,
    /// Per kill: (first observer, last observer) in ms; None if not every observer saw it.
    dead_ms: Vec<Option<(f64, f64)>>,
    /// Counter deltas summed over all nodes during the write phase.
    write_phase: Option<node::Counters>,
    /// Process CPU time (user+sys) per wall second while idle, in cores.
    idle_cpu_cores: Option<f64>,
}

/// Sums the counters of every node that answers.
/// The counters the write phase reports, combined field by field (sum, difference).
macro_rules! counter_fields {
    ($c:expr, $t:expr, $op:expr) => {{
        let op = $op;
        $t.sync_sessions_started = op($t.sync_sessions_started, $c.sync_sessions_started);
        $t.sync_sessions_completed = op($t.sync_sessions_completed, $c.sync_sessions_completed);
        $t.sync_failures = op($t.sync_failures, $c.sync_failures);
        $t.heartbeats_received = op($t.heartbeats_received, $c.heartbeats_received);
        $t.bytes_in = op($t.bytes_in, $c.bytes_in);
        $t.bytes_out = op($t.bytes_out, $c.bytes_out);
        $t.sync_bytes_out = op($t.sync_bytes_out, $c.sync_bytes_out);
        $t.sync_push_sessions = op($t.sync_push_sessions, $c.sync_push_sessions);
        $t.push_bytes_out = op($t.push_bytes_out, $c.push_bytes_out);
        $t.sync_change_bytes_out = op($t.sync_change_bytes_out, $c.sync_change_bytes_out);
        $t.sync_covered = op($t.sync_covered, $c.sync_covered);
        $t.sync_same = op($t.sync_same, $c.sync_same);
        $t.need_answers = op($t.need_answers, $c.need_answers);
        $t.full_no_mine = op($t.full_no_mine, $c.full_no_mine);
        $t.full_mine_missing = op($t.full_mine_missing, $c.full_mine_missing);
        $t.full_many_heads = op($t.full_many_heads, $c.full_many_heads);
    }};
}

async fn counters(mesh: &Mesh) -> node::Counters {
    let mut t = node::Counters::default();
    for s in join_all(mesh.nodes.iter().map(|h| h.status()))
        .await
        .into_iter()
        .flatten()
    {
        let c = s.counters;
        counter_fields!(c, t, |a, b| a + b);
    }
    t
}

/// This process's CPU time (user + system) in seconds, from /proc/self/stat.
fn cpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn rss_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(6)..]
}

struct Mesh {
    nodes: Vec<NodeHandle>,
    _dirs: Vec<tempfile::TempDir>,
}

fn node_options(args: &Args, bootstrap: Option<String>, dir: &std::path::Path) -> NodeOptions {
    let config = Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap: bootstrap.into_iter().collect(),
        heartbeat_ms: args.heartbeat_ms,
        dead_after_ms: args.dead_after_ms,
        work: args.work,
        ..Config::default()
    };
    NodeOptions {
        config,
        data_dir: Some(dir.to_path_buf()),
        keypair: libp2p::identity::Keypair::generate_ed25519(),
        psk: None,
        passive: false,
        executor: None,
    }
}

async fn start_mesh(args: &Args, n: usize) -> anyhow::Result<Mesh> {
    let dirs = (0..n)
        .map(|_| tempfile::Builder::new().prefix("mesh-bench-").tempdir())
        .collect::<Result<Vec<_>, _>>()?;
    let nodes =
        meshkit::start_nodes(n, |i, boot| Ok(node_options(args, boot, dirs[i].path()))).await?;
    Ok(Mesh { nodes, _dirs: dirs })
}

/// Waits until every node sees all others alive and all hold one document. Bounded.
async fn wait_formed(mesh: &Mesh, deadline: Instant) -> bool {
    meshkit::wait_alive(&mesh.nodes, deadline).await
        && meshkit::wait_same_doc(&mesh.nodes, deadline).await
}

async fn propagation(args: &Args, mesh: &Mesh, row: &mut Row) {
    let n = mesh.nodes.len();
    let timeout = Duration::from_millis(args.write_timeout_ms);
    for w in 0..args.writes {
        // A random pause, so writes do not fall into step with the heartbeat timers.
        let pause = rand::thread_rng().gen_range(0..50);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let writer = &mesh.nodes[w % n];
        let before = writer.observe().borrow().heads_digest;
        let t0 = Instant::now();
        let res = writer
            .add_story(NewStory {
                title: format!("bench story {w}"),
                body: "written by examples/bench.rs".into(),
                ..Default::default()
            })
            .await;
        let ack = t0.elapsed();
        if let Err(e) = res {
            eprintln!("  write {w} on node {w_n} failed: {e}", w_n = w % n);
            row.writes_timed_out += 1;
            continue;
        }
        // The writer's own digest after the write (its observation follows the reply).
        let Ok(Some(obs)) = tokio::time::timeout(
            timeout,
            writer.wait_for(move |o: &Observation| o.heads_digest != before),
        )
        .await
        else {
            row.writes_timed_out += 1;
            continue;
        };
        let target = obs.heads_digest;
        let arrivals = tokio::time::timeout_at(
            (t0 + timeout).into(),
            join_all(mesh.nodes.iter().map(|h| async move {
                h.wait_for(move |o| o.heads_digest == target).await;
                Instant::now()
            })),
        )
        .await;
        match arrivals {
            Ok(times) => {
                let last = times.into_iter().max().unwrap_or(t0);
                row.prop_ms.push(ms(last - t0));
                row.ack_ms.push(ms(ack));
                row.writes_ok += 1;
            }
            Err(_) => {
                row.writes_timed_out += 1;
                eprintln!(
                    "  write {w}: not on every node after {} ms",
                    args.write_timeout_ms
                );
                // Let the mesh catch up before the next sample.
                meshkit::wait_same_doc(&mesh.nodes, Instant::now() + timeout).await;
            }
        }
    }
}

async fn idle_traffic(args: &Args, mesh: &Mesh) -> Option<f64> {
    let total = |v: Vec<Option<node::StatusReport>>| -> Option<u64> {
        v.into_iter()
            .map(|s| s.map(|s| s.counters.bytes_in + s.counters.bytes_out))
            .sum()
    };
    let a = total(join_all(mesh.nodes.iter().map(|h| h.status())).await)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let b = total(join_all(mesh.nodes.iter().map(|h| h.status())).await)?;
    let secs = t0.elapsed().as_secs_f64();
    Some(b.saturating_sub(a) as f64 / mesh.nodes.len() as f64 / secs)
}

async fn dead_detection(args: &Args, mesh: &mut Mesh, row: &mut Row) {
    let limit = Duration::from_millis(args.dead_after_ms + 30_000);
    for _ in 0..args.kills {
        if mesh.nodes.len() < 3 {
            break;
        }
        // Kill the newest node; never the bootstrap node, so the mesh stays joinable.
        let victim = mesh.nodes.pop().expect("at least 3 nodes");
        let id = victim.peer_id.to_string();
        let t0 = Instant::now();
        victim.kill().await;
        let seen = tokio::time::timeout(
            limit,
            join_all(mesh.nodes.iter().map(|h| {
                let id = id.clone();
                async move {
                    h.wait_for(move |o| o.dead.contains(&id)).await;
                    Instant::now()
                }
            })),
        )
        .await;
        match seen {
            Ok(times) => {
                let first = times.iter().min().copied().unwrap_or(t0);
                let last = times.iter().max().copied().unwrap_or(t0);
                eprintln!(
                    "  killed …{}: first observer {:.0} ms, all {} observers {:.0} ms",
                    short(&id),
                    ms(first - t0),
                    mesh.nodes.len(),
                    ms(last - t0)
                );
                row.dead_ms.push(Some((ms(first - t0), ms(last - t0))));
            }
            Err(_) => {
                eprintln!(
                    "  killed …{}: not dead everywhere after {:?}",
                    short(&id),
                    limit
                );
                row.dead_ms.push(None);
            }
        }
    }
}

async fn run_one(args: &Args, n: usize) -> anyhow::Result<Row> {
    let mut row = Row {
        nodes: n,
        ..Default::default()
    };
    let rss0 = rss_kb();
    eprintln!("[N={n}] starting {n} nodes");
    let t0 = Instant::now();
    let mut mesh = start_mesh(args, n).await?;
    let formed = wait_formed(&mesh, t0 + Duration::from_secs(args.form_timeout_secs)).await;
    if !formed {
        eprintln!(
            "[N={n}] mesh did not form within {} s; skipping",
            args.form_timeout_secs
        );
        for h in mesh.nodes.drain(..) {
            h.shutdown().await;
        }
        return Ok(row);
    }
    row.form_ms = Some(t0.elapsed().as_millis());
    eprintln!(
        "[N={n}] formed in {} ms; {} writes",
        t0.elapsed().as_millis(),
        args.writes
    );
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let c0 = counters(&mesh).await;
    propagation(args, &mesh, &mut row).await;
    let c1 = counters(&mesh).await;
    let mut phase = c1;
    counter_fields!(c0, phase, |a: u64, b: u64| a.saturating_sub(b));
    row.write_phase = Some(phase);
    eprintln!(
        "[N={n}] propagation p50 {:.1} ms, p99 {:.1} ms; idle traffic for {} s",
        pct(&row.prop_ms, 50.0).unwrap_or(f64::NAN),
        pct(&row.prop_ms, 99.0).unwrap_or(f64::NAN),
        args.idle_secs
    );
    // Let the last syncs finish before measuring quiet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, w0) = (cpu_secs(), Instant::now());
    row.idle_bytes_per_node_s = idle_traffic(args, &mesh).await;
    if let (Some(a), Some(b)) = (cpu0, cpu_secs()) {
        row.idle_cpu_cores = Some((b - a) / w0.elapsed().as_secs_f64());
    }
    row.rss_total_kb = rss_kb();
    if let (Some(a), Some(b)) = (rss0, row.rss_total_kb) {
        row.rss_growth_per_node_kb = Some(b.saturating_sub(a) / n as u64);
    }
    eprintln!(
        "[N={n}] dead detection: {} kill(s), dead_after {} ms",
        args.kills.min(n.saturating_sub(2)),
        args.dead_after_ms
    );
    dead_detection(args, &mut mesh, &mut row).await;
    let stop = Instant::now();
    for h in mesh.nodes.drain(..) {
        if tokio::time::timeout(Duration::from_secs(10), h.shutdown())
            .await
            .is_err()
        {
            eprintln!("[N={n}] a node did not shut down within 10 s");
        }
    }
    eprintln!("[N={n}] stopped in {} ms", stop.elapsed().as_millis());
    Ok(row)
}

fn print_table(args: &Args, rows: &[Row]) {
    println!();
    println!(
        "In-process: all nodes in one process, loopback TCP, stores in a temp dir; heartbeat {} ms, dead_after {} ms, work {}",
        args.heartbeat_ms,
        args.dead_after_ms,
        if args.work { "on" } else { "off (replication only)" }
    );
    println!(
        "{:>5} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>11} {:>11} {:>10} {:>10}",
        "nodes",
        "form ms",
        "writes",
        "prop p50",
        "prop p99",
        "prop max",
        "ack p50",
        "ack p99",
        "dead 1st",
        "dead all",
        "idle B/s",
        "RSS MB"
    );
    println!(
        "{:>5} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>11} {:>11} {:>10} {:>10}",
        "",
        "",
        "ok/total",
        "ms",
        "ms",
        "ms",
        "ms",
        "ms",
        "ms (worst)",
        "ms (worst)",
        "per node",
        "total/+node"
    );
    for r in rows {
        let firsts: Vec<f64> = r.dead_ms.iter().flatten().map(|x| x.0).collect();
        let alls: Vec<f64> = r.dead_ms.iter().flatten().map(|x| x.1).collect();
        let missed = r.dead_ms.iter().filter(|x| x.is_none()).count();
        let dead_all = if missed > 0 {
            format!("{} missed", missed)
        } else {
            f(pct(&alls, 100.0), 0)
        };
        let rss = match (r.rss_total_kb, r.rss_growth_per_node_kb) {
            (Some(t), Some(g)) => format!("{:.0}/{:.1}", t as f64 / 1024.0, g as f64 / 1024.0),
            _ => "-".into(),
        };
        println!(
            "{:>5} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>11} {:>11} {:>10} {:>10}",
            r.nodes,
            r.form_ms.map_or("-".into(), |x| x.to_string()),
            format!("{}/{}", r.writes_ok, r.writes_ok + r.writes_timed_out),
            f(pct(&r.prop_ms, 50.0), 1),
            f(pct(&r.prop_ms, 99.0), 1),
            f(pct(&r.prop_ms, 100.0), 1),
            f(pct(&r.ack_ms, 50.0), 1),
            f(pct(&r.ack_ms, 99.0), 1),
            f(pct(&firsts, 100.0), 0),
            dead_all,
            f(r.idle_bytes_per_node_s, 0),
            rss,
        );
    }
    println!();
    println!(
        "{:>5} {:>14} {:>14} {:>16} {:>16} {:>16}",
        "nodes", "sync sessions", "sync failures", "bytes in+out", "sync bytes", "idle CPU"
    );
    println!(
        "{:>5} {:>14} {:>14} {:>16} {:>16} {:>16}",
        "", "per write", "in the writes", "per write", "per write", "cores (process)"
    );
    for r in rows {
        let Some(c) = &r.write_phase else { continue };
        let w = r.writes_ok.max(1) as f64;
        println!(
            "{:>5} {:>14.1} {:>14} {:>16.0} {:>16.0} {:>16}",
            r.nodes,
            c.sync_sessions_started as f64 / w,
            c.sync_failures,
            (c.bytes_in + c.bytes_out) as f64 / w,
            c.sync_bytes_out as f64 / w,
            f(r.idle_cpu_cores, 2),
        );
    }
    println!();
    println!(
        "{:>5} {:>9} {:>9} {:>10} {:>10} {:>8} {:>6} {:>6} {:>16}",
        "nodes", "push", "other", "pushed", "in sync", "covered", "same", "need", "full answers"
    );
    println!(
        "{:>5} {:>9} {:>9} {:>10} {:>10} {:>8} {:>6} {:>6} {:>16}",
        "", "sessions", "sessions", "KB", "msgs KB", "", "", "", "new/miss/heads"
    );
    for r in rows {
        let Some(c) = &r.write_phase else { continue };
        let w = r.writes_ok.max(1) as f64;
        let per = |x: u64| x as f64 / w;
        println!(
            "{:>5} {:>9.1} {:>9.1} {:>10.2} {:>10.2} {:>8.1} {:>6.1} {:>6.1} {:>16}",
            r.nodes,
            per(c.sync_push_sessions),
            per(c.sync_sessions_started - c.sync_push_sessions.min(c.sync_sessions_started)),
            per(c.push_bytes_out) / 1000.0,
            per(c.sync_change_bytes_out) / 1000.0,
            per(c.sync_covered),
            per(c.sync_same),
            per(c.need_answers),
            format!(
                "{:.1}/{:.1}/{:.1}",
                per(c.full_no_mine),
                per(c.full_mine_missing),
                per(c.full_many_heads)
            ),
        );
    }
    println!();
    println!("prop: from add_story() on the writer until every node's heads digest equals the writer's (p50/p99/max over the writes).");
    println!("ack: add_story() round trip (change applied, flushed to disk, heads announced).");
    println!(
        "dead 1st/all: from kill() (no goodbye) until the first / every other node lists the node as dead, worst of {} kill(s); target <= dead_after + 1000 = {} ms.",
        args.kills,
        args.dead_after_ms + 1000
    );
    println!(
        "idle B/s: TCP bytes in+out per node per second over {} s with no writes.",
        args.idle_secs
    );
    println!("RSS: this whole process with N nodes / its growth per node since before the nodes started (not per-process figures).");
    println!("sync sessions / bytes per write: summed over all nodes during the write phase (includes heartbeats and gossip meanwhile).");
    println!("sync bytes per write: sync frames sent by all nodes during the write phase (once each, before encryption; anti-entropy meanwhile included).");
    println!("push/other sessions, pushed KB, in sync msgs KB (changes inside automerge sync messages), covered/same/need answers, full answers (automerge sync: a peer new to the responder / the latest change missing / too many heads): per write, all nodes, during the write phase.");
    println!("idle CPU: CPU time of this process (all N nodes) per wall-clock second during the idle window; 1.00 = one core.");
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os("BENCH_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("BENCH_LOG"))
            .with_writer(std::io::stderr)
            .init();
    }
    if args.nodes.iter().any(|&n| n < 2) {
        anyhow::bail!("--nodes: every mesh size must be at least 2");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let rows = rt.block_on(async {
        let mut rows = Vec::new();
        for &n in &args.nodes {
            match run_one(&args, n).await {
                Ok(r) => rows.push(r),
                Err(e) => {
                    eprintln!("[N={n}] failed: {e:#}");
                    rows.push(Row {
                        nodes: n,
                        ..Default::default()
                    });
                }
            }
            // Give sockets and temp dirs a moment to go away between sizes.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        rows
    });
    print_table(&args, &rows);
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}
