//! The `mesh-agent` binary: argument parsing, logging setup and the edges of every
//! command. Library errors become one clear line here; config errors exit with code 2.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use mesh_agent::api;
use mesh_agent::config::{Config, ConfigError};
use mesh_agent::identity;
use mesh_agent::intake::config::HookListener;
use mesh_agent::node::{self, NodeOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod cli;
use cli::commands::{
    claims, demo, events, knowledge, log, operator, roster, roster_change, status, story,
};
use cli::steer;

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
    /// Print this node's peer id (with --json: its label, data dir, whether it runs, and
    /// the addresses to bootstrap through), read from the data dir: no scraping of `init`.
    Id {
        #[arg(long)]
        json: bool,
    },
    /// Read or change one key of this node's config.toml (validated, comments kept):
    /// `config get KEY`, `config set KEY VALUE`, `config unset KEY`.
    #[command(subcommand)]
    Config(cli::setup::ConfigCommand),
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
    /// Print the audit trail: who wrote which fact of the shared document, when, and
    /// whether it counts — refused values included — as the local running node has it.
    #[command(long_about = LOG_ABOUT)]
    Log(LogArgs),
    /// The shared knowledge base: conventions, patterns, testing strategies and pitfalls
    /// learned on earlier stories, handed to every later job.
    #[command(subcommand)]
    Knowledge(KnowledgeCommand),
    /// A human operator's key: operators admit and revoke nodes (list their ids in every
    /// node's config, `operators = [...]`, or `init --operator ID`).
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Admit a node to the mesh's roster, signed with the operator key: from then on
    /// its facts count and members accept its connections. Sent to the local running
    /// node, which passes it on. The node's id is what `mesh-agent init` printed.
    Admit(RosterArgs),
    /// Revoke a node, signed with the operator key: members close its connections, take
    /// its claims over, and ignore everything it writes from now on (what it finished
    /// before stays). Final: a revoked key cannot be admitted again.
    Revoke(RosterArgs),
    /// Show the roster: the operators, the admitted nodes and the revoked ones.
    Roster {
        #[arg(long)]
        json: bool,
    },
    /// List what waits for a human, oldest first: plans and changes an escalation
    /// trigger holds (low confidence, many files, a security concern, the `approval`
    /// label) and blocked stories, each with the commands that clear it.
    Attention {
        #[arg(long)]
        json: bool,
    },
    /// Show the books: the daily budget, each node's allowance (share, received, given,
    /// left) and tokens today, and what each story cost against its limit. `budget set`
    /// and `budget limit` are operator commands.
    Budget {
        #[command(subcommand)]
        cmd: Option<cli::budget::BudgetCommand>,
        #[arg(long)]
        json: bool,
    },
    /// Operator: set a story's priority (lower runs first), signed with the operator key.
    Prioritize(steer::PrioritizeArgs),
    /// Operator: pause a story, a node (--node) or the whole mesh (--all): no new phase
    /// starts there (running work finishes). Undo with `resume`.
    #[command(long_about = PAUSE_ABOUT)]
    Pause(steer::PauseArgs),
    /// Operator: undo a pause of a story, a node (--node) or the mesh (--all).
    Resume(steer::PauseArgs),
    /// Operator: cancel a story for good: its running work stops, its worktree and work
    /// refs are removed, nothing of it lands, and stories depending on it are blocked.
    Cancel(steer::CancelArgs),
    /// Operator: only this node (--node) or role (--role) runs the story's phases, but
    /// review, which never runs on the implementer; --anyone undoes it.
    Assign(steer::AssignArgs),
    /// Operator: add a note every later job of the story receives in its context.
    Context(steer::TextArgs),
    /// Operator: approve what holds a story at a gate (all its items, or those named):
    /// the held phase (implement, or merge) may start.
    Approve(steer::ApproveArgs),
    /// Operator: send a story back one phase with TEXT as the next job's context: a plan
    /// is planned again, a change is reworked.
    RequestChanges(steer::TextArgs),
    /// Operator: give a blocked story one more attempt at the step it is blocked on
    /// (--reset-attempts: a full set).
    Unblock(steer::UnblockArgs),
    /// Operator: clear one attention item of a story (by kind or id) as no concern; a
    /// gate it held opens.
    Dismiss(steer::DismissArgs),
    /// Bring an ai-sdlc backlog in: every .ai-sdlc/stories/<id>/story.md under DIR, in
    /// one change. Ids are kept where free; research and plan done there carry over; done
    /// stays done. A file that cannot be a story is skipped and named with the reason
    /// (exit 1 once the rest is in); what cannot be mapped is noted by path. A second
    /// import changes nothing.
    #[command(long_about = IMPORT_ABOUT)]
    Import(cli::intake::ImportArgs),
    /// Write the mesh's stories as ai-sdlc story folders under DIR, with their progress
    /// (status, phase flags, branch, merge commit), so ai-sdlc reads them.
    Export(cli::intake::ExportArgs),
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

#[derive(Subcommand)]
pub(crate) enum OperatorCommand {
    /// Create an operator key (mode 0600) and print its id. Default place:
    /// $MESH_OPERATOR_KEY, else ~/.config/mesh-agent/operator.key — never inside a node's
    /// data dir (it is a person's key, not a machine's).
    Init {
        /// Where to write the key.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Replace an existing key (its id changes: update every node's `operators`).
        #[arg(long)]
        force: bool,
    },
    /// Print the id of an operator key (what goes into `operators = [...]`).
    Id {
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
}

#[derive(Args)]
pub(crate) struct RosterArgs {
    /// The node's peer id (12D3KooW...), as `mesh-agent init` or `status` print it.
    pub peer: String,
    /// Why, in a few words (kept on the roster and in the audit trail).
    #[arg(long, default_value = "")]
    pub note: String,
    /// The operator key (default: $MESH_OPERATOR_KEY, else
    /// ~/.config/mesh-agent/operator.key).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
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

const PAUSE_ABOUT: &str = "\
Pause a story, a node (--node PEER) or the whole mesh (--all), signed with the operator
key and written through the local running node; every node honours it once it arrives.

A paused story starts no new phase; a paused node (or mesh) claims nothing new. Work
already running finishes and lands: pausing is not cancelling (`mesh-agent cancel`).
A claim that was settling when the pause arrived is handed back before it starts.

Commands on one target apply in the order of the operators' clocks when they signed, so
the later of a pause and a resume wins on every node, whichever arrives first. An
operator cut off by a partition can still pause: it applies when it arrives.

  mesh-agent pause S-0007 --reason \"waiting for the API freeze\"
  mesh-agent pause --node 3xYkQp --reason \"disk almost full\"
  mesh-agent pause --all
  mesh-agent resume --all";

const LOG_ABOUT: &str = "\
Print the audit trail: who wrote which fact of the shared document, when, and whether it
counts, as the local running node has it.

Every fact in the document is signed by its author, and the node checks the signature
before the fact counts. Each line is one fact (or one refused value):

  TIME                     AUTHOR   STORY    STANDING    ACTION
  2026-05-04 09:12:03.114  Xk3Qp9aB S-0003   counts      claimed implement token 2

  TIME      the author's own clock when it wrote the fact, UTC, as the fact carries it;
            `-` for facts that carry none (node descriptions, releases) and for refused
            values, whose content is not trusted
  AUTHOR    the verified author: the end of the peer id whose signature opened the fact
            (`mesh-agent status` shows whole peer ids); for a refused value, the author
            it claims, or `?`
  STANDING  counts: the value its key shows, what the mesh acts on;
            superseded: a later write to a write-once key, an older node description or
            a takeover's release of a finished claim: kept, never counted;
            NOT MEMBER: signed and valid, but the mesh has operators and the author is
            not admitted (or was revoked before it wrote this);
            REFUSED: unsigned, mis-signed, invalid or not its author's to write
  ACTION    story added, claimed <phase> token N, released <phase> (reason), result
            <phase> [approve|reject], merged <commit>, knowledge added, node description,
            admitted/revoked <peer> (an operator's roster change), refused <kind> (reason)

Order: node descriptions first, then by time (a release at its claim's time), then the
refused values in the order this node met them. Only the most recent 1000 refused values
are kept (a hostile peer must not grow memory without end); `mesh-agent status` counts
all of them per author.

Examples:
  mesh-agent log --story S-0003        everything about one story
  mesh-agent log --tail 20             the last 20 entries
  mesh-agent log --json | jq 'select(.standing == \"refused\")'";

#[derive(Args)]
struct LogArgs {
    /// Only the entries about this story (display id like S-0003, or its key).
    #[arg(long, value_name = "ID")]
    story: Option<String>,
    /// One JSON object per line (fields: at_ms, author, action, story, standing, kind,
    /// key, reason).
    #[arg(long)]
    json: bool,
    /// Only the last N entries (after --story).
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
pub(crate) struct InitArgs {
    /// Also create a new private-network key (swarm.key) and use it.
    #[arg(long)]
    pub psk: bool,
    /// Use this existing pre-shared key file (copied into the data dir as swarm.key).
    #[arg(long, value_name = "FILE", conflicts_with = "psk")]
    pub psk_from: Option<PathBuf>,
    /// Listen multiaddr to write into the config (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Bootstrap multiaddr to write into the config (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// An operator of the mesh (repeatable): its id, as `mesh-agent operator init`
    /// prints it. Every node of a mesh lists the same operators; without any, the mesh
    /// is open (any holder of the mesh key is a member).
    #[arg(long, value_name = "ID")]
    pub operator: Vec<String>,
    /// Replace an existing key and config (the node gets a new identity).
    #[arg(long)]
    pub force: bool,
    /// Print one JSON object (peer_id, node, data_dir, config, psk_file,
    /// psk_fingerprint, operators) instead of text.
    #[arg(long)]
    pub json: bool,
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
    /// Serve the web dashboard on this address, e.g. 127.0.0.1:8080 (config:
    /// `[dashboard] addr`). Actions need a login; off loopback they also need TLS.
    #[arg(long, value_name = "IP:PORT")]
    dashboard: Option<String>,
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
    /// Log filter: error, warn, info, debug, trace, or e.g. mesh_agent=debug
    /// (automerge logs warnings only unless the filter names it: automerge=debug).
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
    /// Redraw a live view in place (peers, work in flight, recent events) until Ctrl-C;
    /// needs a terminal.
    #[arg(long, conflicts_with_all = ["json", "bootstrap"])]
    watch: bool,
    /// How often --watch redraws.
    #[arg(long, value_name = "N", default_value_t = 1000, requires = "watch")]
    interval_ms: u64,
}

#[derive(Subcommand)]
enum StoryCommand {
    /// Add a story to the backlog, or many at once with --from.
    Add {
        #[arg(long, required_unless_present = "from")]
        title: Option<String>,
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
        /// Add every story of a JSON-lines file (`-`: stdin) in one change: one story per
        /// line with the fields of the flags (title, body, priority, depends, files,
        /// labels; `depends` may name an earlier line as "#N"). Every line is checked
        /// first: bad lines are reported by number and nothing is added.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["title", "body", "priority", "depends", "files", "label"])]
        from: Option<PathBuf>,
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

const IMPORT_ABOUT: &str = "Bring an ai-sdlc backlog into the mesh.\n\n\
DIR is the project root (holding .ai-sdlc/), its .ai-sdlc/ folder, or the stories folder. Every\n\
<id>/story.md (YAML frontmatter + Markdown body) is read; the stories go in as one change, through\n\
the running node or, when none runs, straight into its store.\n\n\
Mapping:\n  \
id             kept (S-0042 stays S-0042) unless a mesh story has that number\n  \
title, priority, labels, dependencies, body   as written (priority brought into 1..=999)\n  \
research_complete, plan_complete, plan_review_complete   the story starts after them\n  \
status: done   merged (merge_sha, merged_at kept)\n  \
implementation or reviews complete, not done   noted: the change is on ai-sdlc's branch,\n                 \
not in the mesh's origin, so the mesh implements again\n  \
research.md, plan.md, plan_review.md, review.md   appended to the body under their headings\n  \
slug, type, epic, estimated_effort, created, branch, ...   kept for `mesh-agent export`\n\n\
A file that cannot be a story (no frontmatter, bad YAML, no id, a duplicate id, no title) is\n\
skipped and named with the reason; a field that cannot be mapped (unknown, a status outside\n\
backlog/ready/in-progress/done/blocked, ai-sdlc's run history) is noted. Exit 0 when every story\n\
file went in (or was already there), 1 when some were skipped (the rest is in), 2 on bad usage.\n\
Stories imported before are left alone: a second import changes nothing. --dry-run writes nothing.";

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
        Command::Init(a) => cli::setup::init(&dir, a),
        Command::Id { json } => cli::setup::id(&dir, json),
        Command::Config(c) => cli::setup::config(&dir, c),
        Command::Run(a) => run(&dir, a),
        Command::Status(a) if a.watch => cli::watch::run(&dir, &a),
        Command::Status(a) => status(&dir, a),
        Command::Story(c) => story(&dir, c),
        Command::Import(a) => cli::intake::import(&dir, a),
        Command::Export(a) => cli::intake::export(&dir, a),
        Command::Claims { json } => claims(&dir, json),
        Command::Events(a) => events(&dir, a),
        Command::Log(a) => log(&dir, a),
        Command::Knowledge(c) => knowledge(&dir, c),
        Command::Demo(c) => demo(&dir, c),
        Command::Operator(c) => operator(c),
        Command::Admit(a) => roster_change(&dir, true, a),
        Command::Revoke(a) => roster_change(&dir, false, a),
        Command::Roster { json } => roster(&dir, json),
        Command::Attention { json } => steer::attention(&dir, json),
        Command::Budget { cmd, json } => cli::budget::run(&dir, cmd, json),
        Command::Prioritize(a) => steer::prioritize(&dir, a),
        Command::Pause(a) => steer::pause(&dir, a),
        Command::Resume(a) => steer::resume(&dir, a),
        Command::Cancel(a) => steer::cancel(&dir, a),
        Command::Assign(a) => steer::assign(&dir, a),
        Command::Context(a) => steer::context(&dir, a),
        Command::Approve(a) => steer::approve(&dir, a),
        Command::RequestChanges(a) => steer::request_changes(&dir, a),
        Command::Unblock(a) => steer::unblock(&dir, a),
        Command::Dismiss(a) => steer::dismiss(&dir, a),
    }
}

fn load_config(dir: &Path) -> Result<Config> {
    let cfg = Config::load(dir, std::env::vars())?;
    Ok(cfg)
}

fn init_logging(cfg: &Config, file: Option<&Path>) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(cfg.log_filter()).map_err(usage)?;
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
    if let Some(v) = a.dashboard {
        cfg.dashboard.addr = v;
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
        let dashboard = cfg.dashboard.clone();
        let hook_cfg = cfg.intake.github.clone();
        let hook_secret = hook_cfg.load_secret(dir).map_err(usage)?;
        let hook_operator = hook_cfg.load_operator(dir).map_err(usage)?;
        let handle = node::start(NodeOptions {
            config: cfg,
            data_dir: Some(dir.to_path_buf()),
            keypair,
            psk,
            passive: false,
            executor: None,
        })
        .await?;
        let hooks = mesh_agent::intake::github::router(
            mesh_agent::intake::github::GithubHook::new(hook_secret, &hook_cfg, handle.api())
                .with_operator(hook_operator),
        );
        let on_dashboard = hook_cfg.serve_on == HookListener::Dashboard;
        let (control_hooks, dashboard_hooks) = if on_dashboard {
            (axum::Router::new(), hooks)
        } else {
            (hooks, axum::Router::new())
        };
        let (_info, api_task) = api::serve_with(
            control,
            dir,
            handle.peer_id.to_string(),
            handle.api(),
            control_hooks,
        )
        .await
        .context("cannot start the control endpoint")?;
        for a in &handle.listen_addrs {
            println!("listening {}/p2p/{}", a, handle.peer_id);
        }
        let dashboard = match dashboard.socket_addr() {
            Some(addr) => {
                let d = mesh_agent::dashboard::serve_with(
                    addr,
                    dir,
                    handle.api(),
                    handle.observe(),
                    &dashboard,
                    dashboard_hooks,
                )
                .await?;
                println!("dashboard {}", d.url());
                if let mesh_agent::dashboard::Actions::Unavailable(why) = &d.actions {
                    println!("dashboard actions unavailable: {why}");
                }
                Some(d.task)
            }
            None => None,
        };
        wait_for_signal().await;
        tracing::info!("stopping: handing claims back (a second Ctrl-C or SIGTERM exits at once)");
        api_task.abort();
        if let Some(t) = dashboard {
            t.abort();
        }
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
