//! One node holding a large backlog: what a write, a restart and a join cost as the
//! document grows (issue 20: a write must not cost time linear in the document).
//!
//! For every size N (`--stories`), a fresh node with its own store in a temporary
//! directory is driven through the library API (`node::start`):
//! - bulk load: N stories added in batches of `--batch` (each batch one change, one
//!   durable write), wall time;
//! - write: `--samples` single stories, each `add_story()` round trip — the change
//!   written, appended and flushed to the store, the view brought up to date, the heads
//!   announced, the answer back — p50/p99/max;
//! - RSS of this process with the node loaded (it holds nothing else of size);
//! - RSS after a restart: a fresh process opens the same store as the node's owner and
//!   reports its RSS once a status holds every story and the node's periodic release of
//!   free memory ran (what a restarted node holds, without the bulk load's allocations);
//! - restart: the node shut down cleanly and started again on the same store, until it
//!   answers a status holding every story;
//! - join: a second node with an empty store bootstraps from the first, until its heads
//!   digest equals the first's (the whole document received, checked and folded);
//! - peer story: then `--samples` stories written on the first node, each timed on the
//!   joiner from holding its change until a status answers (its view brought up to date
//!   with a peer's story), beside a status right after with nothing new.
//!
//! Run it through `scripts/bench --backlog` (release build). Every wait is bounded.

use clap::Parser;
use mesh_agent::config::Config;
use mesh_agent::node::{self, NodeHandle, NodeOptions};
use std::time::{Duration, Instant};

#[path = "common/backlog.rs"]
mod backlog;
use backlog::story;
#[path = "common/stats.rs"]
mod stats;
use stats::{f, ms, pct};

#[derive(Parser, Debug)]
#[command(about = "One node with a large backlog: write latency, bulk load, restart, join, RSS")]
struct Args {
    /// Backlog sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000,100000")]
    stories: Vec<usize>,
    /// Single-story writes timed per size.
    #[arg(long, default_value_t = 50)]
    samples: usize,
    /// Stories per change while loading.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Skip the join (a second node receiving the whole document).
    #[arg(long)]
    no_join: bool,
    /// Join only at sizes up to this.
    #[arg(long, default_value_t = 100_000)]
    join_max: usize,
    /// Let the nodes work the backlog (the sim executor) while they are measured: their
    /// claims, results and releases then reach each other's views too (in place, or by a
    /// fold of the whole view where an update cannot take them).
    #[arg(long)]
    work: bool,
    /// Print only the rows (a script that runs one size per process prints the header
    /// once).
    #[arg(long)]
    no_header: bool,
    /// Give up on a restart or a join after this long.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Internal: open the store in this directory with the key `--key` (hex protobuf),
    /// wait for a status holding `--expect` stories, print this process's RSS in MB.
    #[arg(long, hide = true, requires_all = ["key", "expect"])]
    reopen: Option<std::path::PathBuf>,
    #[arg(long, hide = true)]
    key: Option<String>,
    #[arg(long, hide = true)]
    expect: Option<usize>,
}

fn rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn options(
    dir: &std::path::Path,
    key: &libp2p::identity::Keypair,
    boot: Option<String>,
    work: bool,
) -> NodeOptions {
    NodeOptions {
        config: Config {
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            bootstrap: boot.into_iter().collect(),
            // Generous: a node busy folding a large document must not be declared dead.
            dead_after_ms: 30_000,
            max_writes_per_minute: 1_000_000,
            work,
            ..Config::default()
        },
        data_dir: Some(dir.to_path_buf()),
        keypair: key.clone(),
        psk: None,
        passive: false,
        executor: None,
    }
}

struct Row {
    n: usize,
    load_s: f64,
    writes: Vec<f64>,
    rss_mb: Option<f64>,
    restart_ms: Option<f64>,
    reopened_rss_mb: Option<f64>,
    join_ms: Option<f64>,
    /// After the join: a story written on the first node, once the joiner holds its
    /// change, until a status on the joiner answers (the view brought up to date).
    peer_story: Vec<f64>,
    /// A status on the joiner right after, nothing new: what the status itself costs.
    status_again: Vec<f64>,
}

/// Waits (bounded) until `node`'s status holds `total` stories; the time it took.
async fn holds_all(
    node: &NodeHandle,
    total: usize,
    since: Instant,
    timeout: Duration,
) -> Option<f64> {
    tokio::time::timeout(timeout, async {
        loop {
            if node
                .status()
                .await
                .is_some_and(|s| s.stories.len() == total)
            {
                return ms(since.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .ok()
}

/// The `--reopen` child: the node on an existing store, its RSS once it holds it all.
async fn reopen(args: &Args, dir: &std::path::Path) -> anyhow::Result<()> {
    let (Some(key), Some(expect)) = (&args.key, args.expect) else {
        anyhow::bail!("--reopen needs --key and --expect");
    };
    let key = libp2p::identity::Keypair::from_protobuf_encoding(&hex::decode(key)?)?;
    let node = node::start(options(dir, &key, None, false)).await?;
    let timeout = Duration::from_secs(args.timeout_secs);
    if holds_all(&node, expect, Instant::now(), timeout)
        .await
        .is_none()
    {
        anyhow::bail!("the reopened node did not hold {expect} stories within {timeout:?}");
    }
    // What the node holds once its periodic release of free memory ran (every minute):
    // without it, the RSS includes the last status's transient copies.
    node::release_free_memory();
    println!("{}", f(rss_mb(), 1));
    node.shutdown().await;
    Ok(())
}

/// RSS of a fresh process holding the store in `dir` (see `--reopen`).
fn reopened_rss(
    args: &Args,
    dir: &std::path::Path,
    key: &libp2p::identity::Keypair,
    total: usize,
) -> anyhow::Result<Option<f64>> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("--reopen")
        .arg(dir)
        .arg("--key")
        .arg(hex::encode(key.to_protobuf_encoding()?))
        .arg("--expect")
        .arg(total.to_string())
        .arg("--timeout-secs")
        .arg(args.timeout_secs.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        eprintln!(
            "backlog_bench: the reopening process failed ({})",
            out.status
        );
        return Ok(None);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse().ok())
}

async fn measure(args: &Args, n: usize) -> anyhow::Result<Row> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let dir = tempfile::Builder::new().prefix("mesh-backlog-").tempdir()?;
    let key = libp2p::identity::Keypair::generate_ed25519();
    let a = node::start(options(dir.path(), &key, None, args.work)).await?;
    let t = Instant::now();
    let mut done = 0;
    while done < n {
        let k = args.batch.min(n - done);
        a.add_stories((done..done + k).map(story).collect())
            .await
            .map_err(|e| anyhow::anyhow!("loading: {e}"))?;
        done += k;
        eprintln!(
            "backlog_bench: {done}/{n} stories ({:.1} s, RSS {} MB)",
            t.elapsed().as_secs_f64(),
            f(rss_mb(), 0)
        );
    }
    let load_s = t.elapsed().as_secs_f64();
    let mut writes = Vec::with_capacity(args.samples);
    for i in 0..args.samples {
        let t = Instant::now();
        a.add_story(story(n + i))
            .await
            .map_err(|e| anyhow::anyhow!("write {i}: {e}"))?;
        writes.push(ms(t.elapsed()));
        if std::env::var_os("BENCH_TRACE").is_some() {
            eprintln!(
                "backlog_bench: write {i}: {:.2} ms, RSS {} MB",
                ms(t.elapsed()),
                f(rss_mb(), 0)
            );
        }
    }
    let rss_mb = rss_mb();
    let (join_ms, peer_story, status_again) = if args.no_join || n > args.join_max {
        (None, Vec::new(), Vec::new())
    } else {
        join(&a, timeout, args.work, n + args.samples, args.samples).await?
    };
    let total = n + args.samples + peer_story.len();
    // Restart: a clean stop, then the same store and identity again.
    a.shutdown().await;
    let t = Instant::now();
    let b = node::start(options(dir.path(), &key, None, args.work)).await?;
    eprintln!(
        "backlog_bench: restarted node answers after {:.0} ms",
        ms(t.elapsed())
    );
    let restart_ms = holds_all(&b, total, t, timeout).await;
    b.shutdown().await;
    let reopened_rss_mb = reopened_rss(args, dir.path(), &key, total)?;
    Ok(Row {
        n,
        load_s,
        writes,
        rss_mb,
        restart_ms,
        reopened_rss_mb,
        join_ms,
        peer_story,
        status_again,
    })
}

/// A second node with an empty store joins through `a`: time until it holds `a`'s
/// document (same heads digest). Then `samples` stories (numbered from `next`) written on
/// `a`, each timed on the joiner from holding its change to a status answered.
async fn join(
    a: &NodeHandle,
    timeout: Duration,
    work: bool,
    next: usize,
    samples: usize,
) -> anyhow::Result<(Option<f64>, Vec<f64>, Vec<f64>)> {
    let dir = tempfile::Builder::new()
        .prefix("mesh-backlog-join-")
        .tempdir()?;
    let key = libp2p::identity::Keypair::generate_ed25519();
    let boot = a
        .addr()
        .ok_or_else(|| anyhow::anyhow!("node has no listen address"))?
        .to_string();
    let t = Instant::now();
    let c = node::start(options(dir.path(), &key, Some(boot), work)).await?;
    // The same heads on both: the joiner's own description reaches the first node too.
    let same = || {
        let (x, y) = (
            a.observe().borrow().heads_digest,
            c.observe().borrow().heads_digest,
        );
        x == y && c.observe().borrow().alive.len() == 1
    };
    let got = tokio::time::timeout(timeout, async {
        while !same() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ms(t.elapsed())
    })
    .await
    .ok();
    if got.is_none() {
        eprintln!("backlog_bench: no join within {timeout:?}");
        c.shutdown().await;
        return Ok((None, Vec::new(), Vec::new()));
    }
    // The joiner's view as of the join, so that each sample takes in one story; and a
    // join is one only if the joiner admitted every story the first node holds (the same
    // heads with facts refused would be fast and wrong).
    let held = c.status().await.map(|s| s.stories.len());
    let want = a.status().await.map(|s| s.stories.len());
    if held != want {
        c.shutdown().await;
        anyhow::bail!("the joiner holds {held:?} stories after the join, the first node {want:?}");
    }
    let (mut peer_story, mut again) = (Vec::with_capacity(samples), Vec::new());
    for i in 0..samples {
        a.add_story(story(next + i))
            .await
            .map_err(|e| anyhow::anyhow!("peer write {i}: {e}"))?;
        let arrived = tokio::time::timeout(timeout, async {
            while !same() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        if arrived.is_err() {
            c.shutdown().await;
            anyhow::bail!(
                "story {i} written on the first node did not reach the joiner within {timeout:?}"
            );
        }
        let t = Instant::now();
        let _ = c.status().await;
        peer_story.push(ms(t.elapsed()));
        let t = Instant::now();
        let _ = c.status().await;
        again.push(ms(t.elapsed()));
    }
    c.shutdown().await;
    Ok((got, peer_story, again))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.reopen {
        return reopen(&args, dir).await;
    }
    // Quiet unless asked (RUST_LOG=mesh_agent=info shows a join's snapshot, say).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let mut rows = Vec::new();
    for &n in &args.stories {
        eprintln!("backlog_bench: {n} stories");
        rows.push(measure(&args, n).await?);
    }
    if !args.no_header {
        println!("write: add_story() round trip on a node holding that many stories (appended, flushed, answered).");
        println!("RSS: this process with the node loaded, before the join. restart: clean stop, start on the same store, until a status holds every story; RSS restarted: a fresh process holding that store, after the node released free memory (it does every minute). join: a fresh node bootstraps from it, until the same heads digest. peer story: then a story written on the first node, from the joiner holding its change until a status on the joiner answers (beside a status with nothing new).");
        println!();
        println!(
            "| stories | bulk load s | write p50 / p99 / max ms | RSS MB | RSS restarted MB | restart ms | join ms | peer story p50 / max ms | status alone p50 ms |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
    }
    for r in rows {
        println!(
            "| {} | {:.2} | {} / {} / {} | {} | {} | {} | {} | {} / {} | {} |",
            r.n,
            r.load_s,
            f(pct(&r.writes, 50.0), 2),
            f(pct(&r.writes, 99.0), 2),
            f(pct(&r.writes, 100.0), 2),
            f(r.rss_mb, 0),
            f(r.reopened_rss_mb, 0),
            f(r.restart_ms, 0),
            f(r.join_ms, 0),
            f(pct(&r.peer_story, 50.0), 2),
            f(pct(&r.peer_story, 100.0), 2),
            f(pct(&r.status_again, 50.0), 2),
        );
    }
    Ok(())
}
