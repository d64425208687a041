//! Flow benchmark (issue 4, acceptance 5): stories per hour carried all the way to main by
//! 1, 2, 4, 8 nodes, the scaling efficiency against ideal, and what coordination costs
//! per story.
//!
//! For each mesh size N: N nodes in this one process on loopback (as tests/flow.rs), each
//! with its own data dir, a fresh bare origin holding the demo project
//! (`demo::create_origin`), the `sim` executor with a fixed phase duration and the merge
//! gate running the project's `sh test.sh` before every landing. The backlog is generated:
//! `--per-node` × N independent stories, each planning its own file (gen/fNNNN.txt,
//! outside src/ and docs/, which test.sh scans),
//! so nothing serializes the mesh but the one origin's main. Every story runs research,
//! plan, implement, review, merge (no rejections unless --reject-rate), so the ideal
//! throughput is N × capacity stories per 5 phase durations.
//!
//! A mesh of one node cannot finish a story: review runs on a node other than the
//! implementer (src/scheduler.rs), so a lone node stops at review. N = 1 is therefore
//! skipped, and the scaling efficiency is given two ways: against the ideal (N × the best
//! a single node could do, `capacity` stories per 5 phases: a lower bound of
//! throughput_N / (N × throughput_1)), and against the 2-node run
//! (throughput_N / (N/2 × throughput_2)).
//!
//! Measured from the moment the backlog is written until every story is merged:
//! - stories/hour = stories / wall time;
//! - efficiency = throughput_N / (N × throughput_1);
//! - CPU seconds of this process (utime + stime from /proc/self/stat) per story: the
//!   nodes' coordination (replication, claims, settle, scheduling) plus their git work
//!   (worktrees, commits, pushes and fetches through libgit2) — the sim executor itself
//!   only sleeps; with --no-git the origin is off (merges simulated) and what is left is
//!   the coordination alone. The merge gate's `sh test.sh` runs are child processes,
//!   reported separately (cutime + cstime);
//! - bytes sent per story: the sum of every node's `bytes_out` counter over the run.
//!
//! Run it through `scripts/bench --flow` (release build).

use clap::Parser;
use futures::future::join_all;
use mesh_agent::config::Config;
use mesh_agent::demo;
use mesh_agent::model::{NewStory, StoryStatus};
use mesh_agent::node::{self, NodeHandle, NodeOptions};
use std::time::{Duration, Instant};

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
    #[arg(long)]
    no_git: bool,
    /// Give up on one run after this long.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

/// This process's CPU time so far: (self utime + stime, children cutime + cstime), seconds.
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
    }
}

fn config(a: &Args, origin: Option<&std::path::Path>, bootstrap: Option<String>) -> Config {
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
        c.origin = o.display().to_string();
        c.test_command = vec!["sh".into(), "test.sh".into()];
    }
    c
}

struct Run {
    n: usize,
    stories: usize,
    merged: usize,
    wall: Duration,
    cpu: f64,
    child_cpu: f64,
    bytes_out: u64,
    latency_p50_ms: f64,
    latency_max_ms: f64,
}

async fn bytes_out(nodes: &[NodeHandle]) -> u64 {
    join_all(nodes.iter().map(|n| n.status()))
        .await
        .into_iter()
        .flatten()
        .map(|s| s.counters.bytes_out)
        .sum()
}

async fn one(a: &Args, n: usize) -> anyhow::Result<Run> {
    let tmp = tempfile::Builder::new()
        .prefix("mesh-flow-bench-")
        .tempdir()?;
    let origin = tmp.path().join("origin.git");
    if !a.no_git {
        demo::create_origin(&origin)?;
    }
    let origin = (!a.no_git).then_some(origin.as_path());
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for i in 0..n {
        let boot = nodes.first().and_then(|h| h.addr()).map(|x| x.to_string());
        let cfg = config(a, origin, boot);
        cfg.validate()?;
        let h = node::start(NodeOptions {
            config: cfg,
            data_dir: Some(tmp.path().join(format!("n{i}"))),
            keypair: libp2p::identity::Keypair::generate_ed25519(),
            psk: None,
            passive: false,
            executor: None,
        })
        .await?;
        nodes.push(h);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let alive = join_all(nodes.iter().map(|h| {
        tokio::time::timeout_at(deadline.into(), h.wait_for(move |o| o.alive.len() >= n - 1))
    }))
    .await;
    anyhow::ensure!(
        alive.iter().all(|x| matches!(x, Ok(Some(_)))),
        "the {n}-node mesh did not form within 60 s"
    );
    // Let every node's claim warm-up (a few heartbeats after its first tick) pass, so
    // that the run measures work, not start-up.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let total = a.per_node * n;
    let b0 = bytes_out(&nodes).await;
    let (c0, k0) = cpu_secs();
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
                .all(|s| matches!(s.status, StoryStatus::Done | StoryStatus::Blocked));
        if settled || Instant::now() >= end {
            break v;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
    };
    let wall = t0.elapsed();
    let (c1, k1) = cpu_secs();
    let b1 = bytes_out(&nodes).await;
    let mut lat: Vec<f64> = view
        .stories
        .values()
        .filter_map(|s| {
            s.merged
                .as_ref()
                .map(|m| m.written_at_ms.saturating_sub(s.fact.created_at_ms) as f64)
        })
        .collect();
    lat.sort_by(|x, y| x.total_cmp(y));
    let merged = view
        .stories
        .values()
        .filter(|s| s.status == StoryStatus::Done)
        .count();
    for h in nodes {
        h.shutdown().await;
    }
    Ok(Run {
        n,
        stories: total,
        merged,
        wall,
        cpu: c1 - c0,
        child_cpu: k1 - k0,
        bytes_out: b1.saturating_sub(b0),
        latency_p50_ms: lat.get(lat.len() / 2).copied().unwrap_or(f64::NAN),
        latency_max_ms: lat.last().copied().unwrap_or(f64::NAN),
    })
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        a.nodes.iter().all(|&n| n >= 1),
        "--nodes: sizes must be >= 1"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    for &n in &a.nodes {
        if n == 1 {
            eprintln!(
                "flow_bench: skipping 1 node: review runs on a node other than the implementer, so a lone node never finishes a story"
            );
            continue;
        }
        eprintln!(
            "flow_bench: {n} node(s), {} stories, phase {} ms, capacity {}{}",
            a.per_node * n,
            a.phase_ms,
            a.capacity,
            if a.no_git { ", no git" } else { "" }
        );
        let r = rt.block_on(one(&a, n))?;
        eprintln!(
            "flow_bench: {n} node(s): {}/{} merged in {:.1} s",
            r.merged,
            r.stories,
            r.wall.as_secs_f64()
        );
        runs.push(r);
    }
    // The ideal: every node keeps `capacity` stories in flight, 5 phases each.
    let per_story_s = 5.0 * a.phase_ms as f64 / 1000.0;
    let ideal_per_node = a.capacity as f64 * 3600.0 / per_story_s;
    let base2 = runs
        .iter()
        .find(|r| r.n == 2)
        .map(|r| r.merged as f64 * 3600.0 / r.wall.as_secs_f64() / 2.0);
    println!();
    println!(
        "Flow: in-process nodes, sim executor {} ms/phase, capacity {}, {} stories per node on distinct files, {}",
        a.phase_ms,
        a.capacity,
        a.per_node,
        if a.no_git {
            "no origin (merges simulated)".to_string()
        } else {
            "one bare origin, merge gate `sh test.sh`".to_string()
        }
    );
    println!(
        "{:>5} {:>8} {:>8} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10} {:>11}",
        "nodes",
        "stories",
        "wall s",
        "stories/h",
        "ideal/h",
        "eff",
        "vs 2",
        "lat p50 s",
        "CPU s",
        "test.sh",
        "KiB sent"
    );
    println!(
        "{:>5} {:>8} {:>8} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10} {:>10} {:>11}",
        "", "merged", "", "", "", "ideal", "N/2×2", "(max)", "/story", "CPU s/st", "/story"
    );
    for r in &runs {
        let tput = r.merged as f64 * 3600.0 / r.wall.as_secs_f64();
        let ideal = ideal_per_node * r.n as f64;
        let vs1 = base2
            .map(|b| format!("{:.0} %", 100.0 * tput / (r.n as f64 * b)))
            .unwrap_or_else(|| "-".into());
        let per = |x: f64| x / r.merged.max(1) as f64;
        println!(
            "{:>5} {:>8} {:>8.1} {:>10.0} {:>10.0} {:>8} {:>8} {:>10} {:>10.3} {:>10.3} {:>11.1}",
            r.n,
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
        "ideal/h: N x capacity x 3600 / (5 phases x {} ms); eff: against it, a lower bound of throughput_N / (N x throughput_1)",
        a.phase_ms
    );
    println!(
        "(a 1-node mesh never finishes: review runs on another node than the implementer). vs 2: throughput_N / (N/2 x throughput_2)."
    );
    println!(
        "lat: story written -> its merge fact written (p50, max). CPU s/story: this process (all nodes), utime+stime;"
    );
    println!(
        "test.sh CPU: the merge gate's child processes. KiB sent: all nodes' bytes_out / merged stories."
    );
    Ok(())
}
