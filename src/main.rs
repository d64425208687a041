//! The `mesh-agent` binary: argument parsing, logging setup and the edges of every
//! command. Library errors become one clear line here; config errors exit with code 2.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use mesh_agent::api::{self, ControlClient};
use mesh_agent::config::{Config, ConfigError, CONFIG_FILE};
use mesh_agent::core::model::{
    Event, EventKind, KnowledgeFact, KnowledgeKind, NewStory, MAX_ATTEMPTS, MAX_TAKEOVERS,
};
use mesh_agent::core::state::StoryView;
use mesh_agent::demo as demo_project;
use mesh_agent::identity;
use mesh_agent::node::{self, NodeOptions, StatusReport};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "mesh-agent",
    version,
    about = "A peer-to-peer mesh of AI coding agents that work one backlog together, with no coordinator",
    long_about = "A peer-to-peer mesh of AI coding agents that work one backlog together, with no coordinator.\n\n\
Every machine runs this same binary. Nodes join through one bootstrap peer, gossip heartbeats\n\
over libp2p and keep an automerge replica of the backlog.\n\n\
Quick start on one machine:\n  \
mesh-agent init --data-dir /tmp/n1 --psk\n  \
mesh-agent run --data-dir /tmp/n1 --listen /ip4/127.0.0.1/tcp/4001 &\n  \
mesh-agent story add --data-dir /tmp/n1 --title \"Add login page\"\n  \
mesh-agent status --data-dir /tmp/n1\n\n\
Or start a local mesh of N nodes: scripts/testnet.sh up 5"
)]
struct Cli {
    /// Node data directory (key, config, store). Defaults to ~/.mesh-agent.
    #[arg(long, global = true, env = "MESH_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node: an ed25519 identity (node.key, mode 0600) and a commented config.toml.
    Init(InitArgs),
    /// Run the node until interrupted (Ctrl-C or SIGTERM stop it cleanly).
    Run(RunArgs),
    /// Show peers, stories and the document, read-only, from the local running node or,
    /// with --bootstrap, by joining a mesh as a passive observer.
    Status(StatusArgs),
    /// Add, list and show stories.
    #[command(subcommand)]
    Story(StoryCommand),
    /// List the active claims in the mesh (holder, fencing tokens, age, lease expiry) and
    /// the file locks, as the local running node sees them.
    Claims {
        #[arg(long)]
        json: bool,
    },
    /// Print the mesh-wide timeline (claims, phases started and finished, landings,
    /// rejections, blocked stories, lessons learned) as the local running node saw it.
    Events(EventsArgs),
    /// The shared knowledge base: conventions, patterns, testing strategies and pitfalls
    /// learned on earlier stories, handed to every later job.
    #[command(subcommand)]
    Knowledge(KnowledgeCommand),
    /// The demo project behind `scripts/testnet.sh up`: a bare git origin with a toy
    /// calculator and its test.sh, and a backlog of stories over it.
    #[command(subcommand)]
    Demo(DemoCommand),
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Create a bare git origin at PATH whose main holds the demo project (set `origin`
    /// to PATH and `test_command = ["sh", "test.sh"]` in each node's config.toml).
    Origin {
        /// A new (or empty) directory.
        path: PathBuf,
    },
    /// Add the demo backlog (24 stories, some sharing files, some depending on earlier
    /// ones) to this node, in order. The mesh's backlog must be empty: dependencies name
    /// S-0001, S-0002, ...
    Backlog {
        /// Only the first N stories.
        #[arg(long, value_name = "N")]
        count: Option<usize>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct EventsArgs {
    /// Keep printing new events as they arrive (Ctrl-C to stop).
    #[arg(long, short)]
    follow: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Only the last N events kept (before following).
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
}

#[derive(Subcommand)]
enum KnowledgeCommand {
    /// List the knowledge entries, grouped by kind.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add an entry by hand, e.g.
    /// `mesh-agent knowledge add --kind pitfall "tests need TZ=UTC"`.
    Add {
        /// convention, pattern, testing or pitfall.
        #[arg(long, value_name = "KIND")]
        kind: String,
        /// What was learned, in one or two sentences.
        text: String,
    },
}

#[derive(Args)]
struct InitArgs {
    /// Also create a new private-network key (swarm.key) and use it.
    #[arg(long)]
    psk: bool,
    /// Use this existing pre-shared key file (copied into the data dir as swarm.key).
    #[arg(long, value_name = "FILE", conflicts_with = "psk")]
    psk_from: Option<PathBuf>,
    /// Listen multiaddr to write into the config (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Bootstrap multiaddr to write into the config (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Replace an existing key and config (the node gets a new identity).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Multiaddr to listen on (repeatable), e.g. /ip4/0.0.0.0/tcp/4001.
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Peer to join through (repeatable), e.g. /ip4/10.0.0.1/tcp/4001/p2p/12D3KooW...
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Pre-shared mesh key file (go-libp2p swarm.key format).
    #[arg(long, value_name = "FILE")]
    psk_file: Option<PathBuf>,
    /// Loopback address of the control endpoint (port 0 picks a free one).
    #[arg(long, value_name = "IP:PORT")]
    control_addr: Option<String>,
    #[arg(long, value_name = "MS")]
    heartbeat_ms: Option<u64>,
    #[arg(long, value_name = "MS")]
    dead_after_ms: Option<u64>,
    /// Raise a `stalled` event for a story with no progress for this long (0: never).
    #[arg(long, value_name = "MS")]
    stall_after_ms: Option<u64>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Log filter: error, warn, info, debug, trace, or e.g. mesh_agent=debug.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Append logs to this file instead of stderr.
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
}

#[derive(Args)]
struct StatusArgs {
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    /// Join the mesh through this peer as a passive observer (writes nothing) instead of
    /// asking the local node. Repeatable.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Pre-shared mesh key for --bootstrap (defaults to the data dir's configured key).
    #[arg(long, value_name = "FILE")]
    psk_file: Option<PathBuf>,
    /// How long the observer waits for the mesh to sync.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout_secs: u64,
}

#[derive(Subcommand)]
enum StoryCommand {
    /// Add a story to the backlog.
    Add {
        #[arg(long)]
        title: String,
        #[arg(long, default_value = "")]
        body: String,
        /// Priority 1..=999, lower runs first (default 100).
        #[arg(long)]
        priority: Option<u32>,
        /// A story this one depends on, e.g. S-0003 (repeatable).
        #[arg(long, value_name = "ID")]
        depends: Vec<String>,
        /// Planned files, comma-separated repo-relative paths.
        #[arg(long, value_delimiter = ',', value_name = "PATHS")]
        files: Vec<String>,
        /// A label (repeatable).
        #[arg(long)]
        label: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// List stories in backlog order.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one story.
    Show {
        /// Story id, e.g. S-0042.
        id: String,
        #[arg(long)]
        json: bool,
    },
}

/// An error that maps to exit code 2 (bad configuration or input).
#[derive(Debug)]
struct UsageError(String);
impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}

fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(UsageError(e.to_string()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() || e.downcast_ref::<ConfigError>().is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".mesh-agent")
}

fn real_main(cli: Cli) -> Result<()> {
    let dir = cli.data_dir.unwrap_or_else(default_data_dir);
    match cli.command {
        Command::Init(a) => init(&dir, a),
        Command::Run(a) => run(&dir, a),
        Command::Status(a) => status(&dir, a),
        Command::Story(c) => story(&dir, c),
        Command::Claims { json } => claims(&dir, json),
        Command::Events(a) => events(&dir, a),
        Command::Knowledge(c) => knowledge(&dir, c),
        Command::Demo(c) => demo(&dir, c),
    }
}

fn load_config(dir: &Path) -> Result<Config> {
    let cfg = Config::load(dir, std::env::vars())?;
    Ok(cfg)
}

fn init(dir: &Path, a: InitArgs) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cfg_path = dir.join(CONFIG_FILE);
    if cfg_path.exists() && !a.force {
        bail!(usage(format!(
            "{} is already initialised ({} exists); pass --force to replace its key and config",
            dir.display(),
            cfg_path.display()
        )));
    }
    let key = identity::create_node_key(dir, a.force).map_err(usage)?;
    let mut cfg = Config::default();
    if !a.listen.is_empty() {
        cfg.listen = a.listen;
    }
    cfg.bootstrap = a.bootstrap;
    if a.psk {
        let p = dir.join(identity::PSK_FILE);
        let psk = identity::create_psk(&p, true)?;
        cfg.psk_file = Some(PathBuf::from(identity::PSK_FILE));
        println!(
            "mesh key: {} (fingerprint {})",
            p.display(),
            psk.fingerprint()
        );
    } else if let Some(src) = a.psk_from {
        let psk = identity::load_psk(&src).map_err(usage)?;
        let p = dir.join(identity::PSK_FILE);
        identity::write_private(&p, psk.to_key_file().as_bytes())?;
        cfg.psk_file = Some(PathBuf::from(identity::PSK_FILE));
        println!(
            "mesh key: {} (fingerprint {})",
            p.display(),
            psk.fingerprint()
        );
    }
    cfg.validate().map_err(usage)?;
    std::fs::write(&cfg_path, cfg.commented_toml())
        .with_context(|| format!("cannot write {}", cfg_path.display()))?;
    println!("node {}", identity::peer_id(&key));
    println!("data dir {}", dir.display());
    println!("config {}", cfg_path.display());
    Ok(())
}

fn init_logging(cfg: &Config, file: Option<&Path>) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&cfg.log_level).map_err(usage)?;
    let writer: tracing_subscriber::fmt::writer::BoxMakeWriter = match file {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open log file {}", p.display()))?;
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(f))
        }
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(file.is_none());
    if cfg.log_format == "json" {
        b.json().init();
    } else {
        b.init();
    }
    Ok(())
}

fn load_psk(cfg: &Config, dir: &Path) -> Result<Option<libp2p::pnet::PreSharedKey>> {
    match cfg.psk_path(dir) {
        Some(p) => Ok(Some(identity::load_psk(&p).map_err(usage)?)),
        None => Ok(None),
    }
}

fn run(dir: &Path, a: RunArgs) -> Result<()> {
    let mut cfg = load_config(dir)?;
    if !a.listen.is_empty() {
        cfg.listen = a.listen;
    }
    if !a.bootstrap.is_empty() {
        cfg.bootstrap = a.bootstrap;
    }
    if let Some(p) = a.psk_file {
        cfg.psk_file = Some(std::path::absolute(&p).unwrap_or(p));
    }
    if let Some(v) = a.control_addr {
        cfg.control_addr = v;
    }
    if let Some(v) = a.heartbeat_ms {
        cfg.heartbeat_ms = v;
    }
    if let Some(v) = a.dead_after_ms {
        cfg.dead_after_ms = v;
    }
    if let Some(v) = a.stall_after_ms {
        cfg.stall_after_ms = v;
    }
    if let Some(v) = a.log_format {
        cfg.log_format = v;
    }
    if let Some(v) = a.log_level {
        cfg.log_level = v;
    }
    cfg.validate()?;
    if !dir.join(identity::KEY_FILE).exists() {
        bail!(usage(format!(
            "no node key in {}: run `mesh-agent init --data-dir {}` first",
            dir.display(),
            dir.display()
        )));
    }
    let keypair = identity::load_node_key(dir).map_err(usage)?;
    let psk = load_psk(&cfg, dir)?;
    init_logging(&cfg, a.log_file.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let control: std::net::SocketAddr = cfg
            .control_addr
            .parse()
            .map_err(|_| usage("control_addr is not ip:port"))?;
        if let Some(psk) = &psk {
            tracing::info!(fingerprint = %psk.fingerprint(), "private network enabled");
        }
        let handle = node::start(NodeOptions {
            config: cfg,
            data_dir: Some(dir.to_path_buf()),
            keypair,
            psk,
            passive: false,
            executor: None,
        })
        .await?;
        let (_info, api_task) = api::serve(control, dir, handle.peer_id.to_string(), handle.api())
            .await
            .context("cannot start the control endpoint")?;
        for a in &handle.listen_addrs {
            println!("listening {}/p2p/{}", a, handle.peer_id);
        }
        wait_for_signal().await;
        tracing::info!("stopping: handing claims back (a second Ctrl-C or SIGTERM exits at once)");
        api_task.abort();
        api::remove_control_file(dir);
        tokio::select! {
            _ = handle.shutdown() => {}
            _ = wait_for_signal() => {
                // Acknowledged writes are on disk already; what is lost is the handover:
                // peers take the claims over after expiry instead.
                tracing::warn!("second signal: exiting at once");
                std::process::exit(130);
            }
        }
        Ok::<(), anyhow::Error>(())
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn status(dir: &Path, a: StatusArgs) -> Result<()> {
    let report = if a.bootstrap.is_empty() {
        let client = ControlClient::for_data_dir(dir)?.ok_or_else(|| {
            anyhow!(
                "no node is running with data dir {} (start one with `mesh-agent run --data-dir {}`, or observe a mesh with --bootstrap <multiaddr>)",
                dir.display(),
                dir.display()
            )
        })?;
        client.status()?
    } else {
        observe(dir, &a)?
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_status(&report));
    }
    Ok(())
}

/// Joins the mesh as a passive observer, waits until it has synced, and reports.
fn observe(dir: &Path, a: &StatusArgs) -> Result<StatusReport> {
    let mut cfg = Config::load(dir, std::env::vars()).unwrap_or_default();
    cfg.bootstrap = a.bootstrap.clone();
    cfg.listen = vec!["/ip4/0.0.0.0/tcp/0".into()];
    if let Some(p) = &a.psk_file {
        cfg.psk_file = Some(std::path::absolute(p).unwrap_or(p.clone()));
    }
    cfg.validate()?;
    let psk = load_psk(&cfg, dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let hb = cfg.heartbeat_ms;
        let handle = node::start(NodeOptions {
            config: cfg,
            data_dir: None,
            keypair: libp2p::identity::Keypair::generate_ed25519(),
            psk,
            passive: true,
            executor: None,
        })
        .await?;
        // Wait until we have synced with the mesh and the document stayed quiet for two
        // heartbeats (or the timeout), re-checking on every change we observe.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(a.timeout_secs);
        let quiet = Duration::from_millis(hb * 2);
        let mut rx = handle.observe();
        loop {
            let o = rx.borrow_and_update().clone();
            let synced = o.sync_sessions_completed > 0 && !o.alive.is_empty();
            let until = if synced {
                (tokio::time::Instant::now() + quiet).min(deadline)
            } else {
                deadline
            };
            // Something changed: look again. Otherwise quiet long enough, timed out, or
            // the node stopped.
            if !matches!(tokio::time::timeout_at(until, rx.changed()).await, Ok(Ok(()))) {
                break;
            }
        }
        let report = handle.status().await;
        handle.kill().await;
        match report {
            Some(r) if r.connected > 0 || !r.peers.is_empty() => Ok(r),
            _ => Err(anyhow!(
                "could not reach the mesh through {} within {}s (check the address and the pre-shared key)",
                a.bootstrap.join(", "),
                a.timeout_secs
            )),
        }
    })
}

fn fmt_ago(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 120_000 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}m", ms / 60_000)
    }
}

fn fmt_bytes(b: u64) -> String {
    if b < 1024 {
        format!("{b} B")
    } else if b < 1024 * 1024 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
    }
}

fn render_status(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "node {} (v{}{}, up {})",
        r.peer_id,
        r.version,
        if r.passive { ", passive observer" } else { "" },
        fmt_ago(r.uptime_ms)
    );
    for a in &r.listen_addrs {
        let _ = writeln!(o, "  listening {a}");
    }
    let count = |s: &str| r.peers.iter().filter(|p| p.state.as_str() == s).count();
    let _ = writeln!(
        o,
        "\npeers: {} ({} alive, {} suspect, {} dead), {} connected",
        r.peers.len(),
        count("alive"),
        count("suspect"),
        count("dead"),
        r.connected
    );
    if !r.peers.is_empty() {
        let _ = writeln!(
            o,
            "  {:<54} {:<8} {:>9}  ROLES",
            "PEER", "STATE", "LAST SEEN"
        );
        for p in &r.peers {
            let _ = writeln!(
                o,
                "  {:<54} {:<8} {:>9}  {}",
                p.peer,
                p.state.as_str(),
                fmt_ago(p.last_seen_ago_ms),
                p.roles.join(",")
            );
        }
    }
    if let Some(left) = r.joining_ms_left {
        let _ = writeln!(
            o,
            "joining: waiting to sync with a known mesh, {} s left (no new work until then)",
            left.div_ceil(1000)
        );
    }
    if let Some(m) = r.clock.median_ms {
        let (side, by) = if m >= 0 {
            ("ahead of", m)
        } else {
            ("behind", -m)
        };
        let verdict = if r.clock.skewed {
            format!(
                "beyond max_clock_drift_ms = {}: CLAIMING NO NEW WORK, fix this node's clock (NTP)",
                r.clock.bound_ms
            )
        } else {
            "within bounds".to_string()
        };
        let _ = writeln!(
            o,
            "clock: {by} ms {side} the median of {} peer(s) (including delivery delay), {verdict}",
            r.clock.peers
        );
    }
    let total: usize = r.story_counts.values().sum();
    let counts: Vec<String> = mesh_agent::core::model::StoryStatus::ALL
        .iter()
        .map(|s| format!("{s} {}", r.story_counts.get(s.as_str()).unwrap_or(&0)))
        .collect();
    let _ = writeln!(o, "\nstories: {total} ({})", counts.join(", "));
    if !r.stories.is_empty() {
        let _ = writeln!(o, "  {:<14} {:<12} {:>4}  TITLE", "ID", "STATUS", "PRIO");
        for s in &r.stories {
            let _ = writeln!(
                o,
                "  {:<14} {:<12} {:>4}  {}",
                s.id, s.status, s.priority, s.title
            );
            // Why an open story is not moving, unless a node is working on it.
            if let Some(w) = s.waiting.as_ref().filter(|w| !w.behind_work()) {
                let _ = writeln!(o, "  {:<14} {w}", "");
            }
        }
    }
    render_claims(r, &mut o);
    let _ = writeln!(
        o,
        "\ndocument: {} head(s), digest {}, {} (store {})",
        r.heads.len(),
        r.heads_digest,
        fmt_bytes(r.doc_bytes),
        fmt_bytes(r.store_bytes)
    );
    let c = &r.counters;
    let _ = writeln!(
        o,
        "traffic: {} in, {} out; sync sessions {}/{} done; malformed dropped {}; handshake failures {}",
        fmt_bytes(c.bytes_in),
        fmt_bytes(c.bytes_out),
        c.sync_sessions_completed,
        c.sync_sessions_started,
        c.malformed_dropped,
        c.handshake_failures
    );
    o
}

fn short(peer: &str) -> &str {
    &peer[peer.len().saturating_sub(8)..]
}

fn render_claims(r: &StatusReport, o: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(o, "\nclaims: {} active", r.claims.len());
    if !r.claims.is_empty() {
        let _ = writeln!(
            o,
            "  {:<10} {:>7} {:>9} {:>10}  RESOURCES (=token)",
            "HOLDER", "AGE", "RENEWED", "EXPIRES IN"
        );
        for c in &r.claims {
            let _ = writeln!(
                o,
                "  {:<10} {:>7} {:>9} {:>10}  {}{}",
                short(&c.holder),
                fmt_ago(c.age_ms),
                fmt_ago(c.renewed_ago_ms),
                if c.expires_in_ms == 0 {
                    "expired".to_string()
                } else {
                    fmt_ago(c.expires_in_ms)
                },
                c.resources.join(" "),
                if c.holds { "" } else { "  (lost a resource)" }
            );
        }
        let locks: Vec<&str> = r
            .claims
            .iter()
            .flat_map(|c| c.resources.iter())
            .filter(|x| x.starts_with("file:"))
            .map(String::as_str)
            .collect();
        if !locks.is_empty() {
            let _ = writeln!(o, "  file locks: {}", locks.join(", "));
        }
    }
    if !r.held.is_empty() {
        let held: Vec<String> = r
            .held
            .iter()
            .map(|h| {
                format!(
                    "{} {} ({})",
                    h.story,
                    h.phase,
                    if h.running { "running" } else { "settling" }
                )
            })
            .collect();
        let _ = writeln!(o, "  this node: {}", held.join(", "));
    }
}

fn claims(dir: &Path, json: bool) -> Result<()> {
    let client = running(dir)?;
    let r = client.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r.claims)?);
    } else {
        let mut o = String::new();
        render_claims(&r, &mut o);
        print!("{}", o.trim_start());
    }
    Ok(())
}

fn running(dir: &Path) -> Result<ControlClient> {
    ControlClient::for_data_dir(dir)?.ok_or_else(|| {
        anyhow!(
            "no node is running with data dir {} (start one with `mesh-agent run --data-dir {}`)",
            dir.display(),
            dir.display()
        )
    })
}

/// One line of the timeline: time, node, story, phase, what happened.
fn event_line(e: &Event) -> String {
    let secs = e.at_ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let what = match e.kind {
        EventKind::Claimed => "claimed",
        EventKind::PhaseStarted => "started",
        EventKind::PhaseFinished => "finished",
        EventKind::PhaseFailed => "FAILED",
        EventKind::Progress => "progress",
        EventKind::StoryCompleted => "COMPLETED",
        EventKind::StoryBlocked => "BLOCKED",
        EventKind::RebaseNeeded => "REBASE NEEDED",
        EventKind::MainUpdated => "main updated",
        EventKind::PatternDiscovered => "learned",
        EventKind::Stalled => "STALLED",
        EventKind::PeerJoined => "peer joined",
        EventKind::PeerDead => "peer dead",
        EventKind::NodeLeft => "left the mesh",
    };
    let phase = match e.phase {
        Some(p) if e.round > 0 => format!("{p}.{}", e.round),
        Some(p) => p.to_string(),
        None => String::new(),
    };
    let mut line = format!(
        "{h:02}:{m:02}:{s:02}.{:03} {:<8} {:<7} {:<12} {what}",
        e.at_ms % 1000,
        short(&e.node),
        e.story,
        phase
    );
    if !e.detail.is_empty() {
        let detail = match e.kind {
            EventKind::PeerJoined | EventKind::PeerDead => short(&e.detail).to_string(),
            _ => e.detail.replace('\n', " "),
        };
        line.push_str(": ");
        line.push_str(&detail);
    }
    line
}

fn events(dir: &Path, a: EventsArgs) -> Result<()> {
    use std::io::Write;
    let client = running(dir)?;
    let mut after = 0;
    let mut first = true;
    loop {
        let mut batch = client.events(after)?;
        if first {
            if let Some(n) = a.tail {
                let skip = batch.len().saturating_sub(n);
                batch.drain(..skip);
            }
            first = false;
        }
        let mut out = std::io::stdout().lock();
        for (pos, e) in &batch {
            after = after.max(*pos);
            let line = if a.json {
                serde_json::to_string(e)?
            } else {
                event_line(e)
            };
            // A closed pipe (`events | head`) ends the command quietly.
            if writeln!(out, "{line}").is_err() {
                return Ok(());
            }
        }
        let _ = out.flush();
        if !a.follow {
            return Ok(());
        }
        if batch.len() < 1000 {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn knowledge(dir: &Path, c: KnowledgeCommand) -> Result<()> {
    let client = running(dir)?;
    match c {
        KnowledgeCommand::List { json } => {
            let all = client.knowledge()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            if all.is_empty() {
                println!("no knowledge yet: phases add what they learn; add one with `mesh-agent knowledge add`");
                return Ok(());
            }
            for kind in KnowledgeKind::ALL {
                let mut of: Vec<(&String, &KnowledgeFact)> =
                    all.iter().filter(|(_, k)| k.kind == kind).collect();
                if of.is_empty() {
                    continue;
                }
                of.sort_by_key(|(_, k)| k.written_at_ms);
                println!("{kind}:");
                for (id, k) in of {
                    let from = if k.story.is_empty() {
                        format!("by {}", short(&k.author))
                    } else {
                        format!("on {}", k.story.split('@').next().unwrap_or(&k.story))
                    };
                    println!("  {id}  {}  ({from})", k.text);
                }
            }
            Ok(())
        }
        KnowledgeCommand::Add { kind, text } => {
            let kind = KnowledgeKind::parse(&kind).ok_or_else(|| {
                usage(format!(
                    "unknown kind {kind:?}: use convention, pattern, testing or pitfall"
                ))
            })?;
            let id = client.add_knowledge(kind, &text).map_err(|e| match e {
                api::ClientError::Refused(m) => usage(m),
                e => e.into(),
            })?;
            println!("{id}");
            Ok(())
        }
    }
}

fn print_story(s: &StoryView) {
    println!("{}  {}", s.id, s.fact.title);
    println!("  status     {}", s.status);
    println!("  priority   {}", s.fact.priority);
    if !s.depends_on_ids.is_empty() {
        println!("  depends on {}", s.depends_on_ids.join(", "));
    }
    if !s.fact.files.is_empty() {
        println!("  files      {}", s.fact.files.join(", "));
    }
    if !s.fact.labels.is_empty() {
        println!("  labels     {}", s.fact.labels.join(", "));
    }
    if !s.phases_done.is_empty() {
        let done: Vec<&str> = s.phases_done.iter().map(|p| p.as_str()).collect();
        println!("  done       {}", done.join(", "));
    }
    if let Some(p) = s.next_phase {
        let round = if s.round > 0 {
            format!(", round {}", s.round)
        } else {
            String::new()
        };
        println!("  phase      {p} (attempts so far: {}{round})", s.attempts);
    }
    if s.attempts > 0 {
        println!(
            "  attempts   {} failed (blocks at {MAX_ATTEMPTS}), {} lost their holder (blocks at {MAX_TAKEOVERS})",
            s.failed_attempts, s.takeovers
        );
        for f in &s.failures {
            println!("  failed     {f}");
        }
    }
    if let Some(why) = &s.blocked_reason {
        println!("  blocked    {why}");
    }
    if let Some(m) = &s.merged {
        println!(
            "  merged     {} (token {}, by {})",
            m.commit,
            m.token,
            short(&m.holder)
        );
    }
    println!("  created by {} (key {})", s.fact.created_by, s.key);
    if !s.fact.body.is_empty() {
        println!();
        for line in s.fact.body.lines() {
            println!("  {line}");
        }
    }
}

fn story(dir: &Path, c: StoryCommand) -> Result<()> {
    let client = ControlClient::for_data_dir(dir)?;
    match c {
        StoryCommand::Add {
            title,
            body,
            priority,
            depends,
            files,
            label,
            json,
        } => {
            let new = NewStory {
                title,
                body,
                priority,
                depends_on: depends,
                files,
                labels: label,
            };
            // Validate locally first so bad input is a usage error either way.
            new.validate().map_err(usage)?;
            let s = match client {
                Some(c) => c.add_story(&new).map_err(|e| match e {
                    api::ClientError::Refused(m) => usage(m),
                    e => e.into(),
                })?,
                None => {
                    let key = identity::load_node_key(dir).map_err(|_| {
                        usage(format!(
                            "no node in {}: run `mesh-agent init --data-dir {}` first",
                            dir.display(),
                            dir.display()
                        ))
                    })?;
                    let peer = identity::peer_id(&key).to_string();
                    node::offline_add_story(dir, &peer, &new).map_err(|e| match e {
                        node::NodeError::State(s) => usage(s),
                        e => e.into(),
                    })?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("added {}  {}", s.id, s.fact.title);
            }
        }
        StoryCommand::List { json } => {
            let list = match client {
                Some(c) => c.stories()?,
                None => node::offline_view(dir)?
                    .stories_ordered()
                    .into_iter()
                    .cloned()
                    .collect(),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no stories yet: add one with `mesh-agent story add --title ...`");
            } else {
                println!("{:<14} {:<12} {:>4}  TITLE", "ID", "STATUS", "PRIO");
                for s in &list {
                    println!(
                        "{:<14} {:<12} {:>4}  {}",
                        s.id,
                        s.status.as_str(),
                        s.fact.priority,
                        s.fact.title
                    );
                }
            }
        }
        StoryCommand::Show { id, json } => {
            let s = match client {
                Some(c) => c.story(&id).map_err(|e| match e {
                    api::ClientError::Refused(m) => usage(m),
                    e => e.into(),
                })?,
                None => {
                    let view = node::offline_view(dir)?;
                    let s = view.resolve(&id).map_err(usage)?;
                    api::StoryDetail::of(&view, s)
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_story(&s.story);
                if let Some(w) = &s.waiting {
                    println!("  waiting    {w}");
                }
            }
        }
    }
    Ok(())
}

fn demo(dir: &Path, c: DemoCommand) -> Result<()> {
    match c {
        DemoCommand::Origin { path } => {
            demo_project::create_origin(&path).map_err(|e| usage(e.message().to_string()))?;
            println!("demo origin {} (branch main)", path.display());
        }
        DemoCommand::Backlog { count, json } => {
            let mut backlog = demo_project::backlog();
            backlog.truncate(count.unwrap_or(backlog.len()));
            let client = ControlClient::for_data_dir(dir)?;
            let existing = match &client {
                Some(c) => c.stories()?.len(),
                None => node::offline_view(dir)?.stories.len(),
            };
            if existing > 0 {
                bail!(usage(format!(
                    "the backlog already has {existing} stories: the demo backlog needs an empty one \
                     (its dependencies name S-0001, S-0002, ...)"
                )));
            }
            let peer = match &client {
                Some(_) => String::new(),
                None => identity::peer_id(&identity::load_node_key(dir).map_err(|_| {
                    usage(format!(
                        "no node in {}: run `mesh-agent init --data-dir {}` first",
                        dir.display(),
                        dir.display()
                    ))
                })?)
                .to_string(),
            };
            let mut added = Vec::new();
            for new in &backlog {
                let s = match &client {
                    Some(c) => c.add_story(new)?,
                    None => node::offline_add_story(dir, &peer, new)?,
                };
                if !json {
                    println!("added {}  {}", s.id, s.fact.title);
                }
                added.push(s);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&added)?);
            }
        }
    }
    Ok(())
}
