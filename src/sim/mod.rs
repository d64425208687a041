//! The deterministic simulator: many pure [`Core`]s driven by a virtual clock over a
//! virtual network that delays, reorders, duplicates and drops messages, partitions and
//! heals, crashes and restarts nodes (keeping what they persisted), stops them cleanly
//! (claims handed back first), pauses nodes past their lease, and runs each node on its
//! own wall clock (within the drift bound; in hostile mode one may jump beyond it for a
//! while). The cores run with the node shell's joining and clock-skew guards. Storage
//! faults (on unless `SimConfig::storage_faults` is off; see `store`): a crash loses what
//! the node appended since its store's last flush, sometimes tearing the first lost
//! chunk, and the backlog is added as users' durable writes while the mesh runs, some
//! failing to append or flush (aborted). One seed reproduces one run exactly; invariants
//! are checked after every event, and a failure carries the seed and a trace.
//!
//! It owns no I/O and reads no clock: it is a shell whose "network" is a priority queue.
//! The git origin is modelled with the product's fence: a merge lands under
//! `fence_token(round, merge token)` only if [`crate::core::fence::token_check`] (or the
//! rule a test swaps in) lets its node's token through; see `origin`.
//!
//! Two fault modes:
//! - clean: delays, reordering, duplicates, crashes, clean stops and restarts. Here the claim protocol
//!   promises mutual exclusion: at most one up node runs a given phase at any instant.
//! - hostile: everything, plus drops, partitions, pauses past the lease and a wall clock
//!   beyond the drift bound. The mesh is
//!   available rather than consistent here (docs/DESIGN.md §5.7): two sides may both work, but at
//!   most one result per phase counts and no story lands twice.
//!
//! In both: tokens per resource never go backwards in any view; a node that judges its
//! clock skewed claims nothing; a counted result is always from the resource's highest
//! claim; a story whose holder died is taken over within the bound (clean mode; a clean
//! stop released its claims, so it owes none); and once the network heals and faults
//! stop, every node derives the same view and every story is merged or blocked. With
//! storage faults: no view ever holds an aborted write, a restarted node reloads every
//! write it acknowledged, and every acknowledged write reaches every node. With an
//! operator steering (`steer`): no node starts a phase its view has paused (the story,
//! the node or the mesh), held at a gate or cancelled, no node lands a story its view
//! has cancelled, and a cancelled story counts as finished.

mod budget;
mod byzantine;
mod check;
mod config;
pub mod cost;
mod origin;
mod steer;
mod store;
mod world;

pub use config::{Mode, SimConfig, MAX_STEPS_PER_STORY, TEAR_RATE, WRITE_FAIL_RATE};
pub use steer::{ATTEND_MS, MAX_SEND_BACKS, OPERATOR};
pub use store::FLUSH_EVERY_MS;

use crate::core::lease::Resource;
use crate::core::model::{NewStory, Phase};
use crate::core::{Core, CoreConfig, Guards, Handover, Job};
use origin::Origin;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

/// The outcome of one seed.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    pub events: u64,
    /// Stories merged (those a new epoch retired included).
    pub merged: usize,
    pub blocked: usize,
    /// Moves to a new epoch nodes made, and the epoch node0 ended on.
    pub moves: u64,
    pub epoch: u64,
    /// Epochs a new node took up whole from a peer (`SimConfig::late_join`).
    pub joins: u64,
    /// Stories an operator cancelled (and that had not landed first).
    pub cancelled: usize,
    pub end_ms: u64,
    /// Clean stops carried out (claims handed back, then down).
    pub shutdowns: u64,
    /// Ticks at which a node judged its own wall clock skewed (and so claimed nothing).
    pub skewed_ticks: u64,
    /// Forgeries the Byzantine-lite node wrote.
    pub forgeries: u64,
    /// Crashes that lost an unflushed tail of the node's store.
    pub lost_tails: u64,
    /// Of those, crashes whose first lost chunk reached the disk torn.
    pub torn_tails: u64,
    /// User writes acknowledged (durable) and aborted (their append or flush failed).
    pub acked_writes: u64,
    pub aborted_writes: u64,
    /// Jobs that ended in an origin outage (remote origin only), and of those, merges
    /// whose push had landed before the answer was lost.
    pub deferred_jobs: u64,
    pub lost_answers: u64,
    /// Operator commands written (`steer`), drafts the node refused, and pauses or
    /// resumes that did not take where they were written (an earlier command on the
    /// target was signed on a clock ahead).
    pub commands: u64,
    pub refused_commands: u64,
    pub outvoted_commands: u64,
    /// With a budget: what the mesh spent (every job started, in full), and whether the
    /// money ran out before every story finished.
    pub spent_micro_usd: u64,
    pub out_of_money: bool,
    /// Asks and gives of allowance in the final view of node0.
    pub asks: u64,
    pub gives: u64,
    /// What the network carried, by message kind (see `cost`).
    pub traffic: cost::Traffic,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

#[derive(Debug)]
enum Ev {
    Tick(usize),
    Beat(usize),
    AntiEntropy(usize),
    Deliver {
        to: usize,
        from: usize,
        msg: Msg,
    },
    SyncTimeout {
        req: u64,
    },
    WorkDone {
        node: usize,
        incarnation: u64,
        job: Box<Job>,
    },
    /// The answer to a node's origin probe arrives.
    Probed {
        node: usize,
        incarnation: u64,
    },
    Crash(usize),
    /// The user adds backlog story `k` on its node (a durable write).
    UserWrite(usize),
    /// A clean stop: the node hands its claims back and says goodbye, then goes down
    /// (at `Ev::Stop`) once its peers synced that, or after [`HANDOVER_MAX_MS`].
    Shutdown(usize),
    Stop {
        node: usize,
        deadline: u64,
    },
    Restart(usize),
    /// The node's wall clock is set this far from true time (ms; negative: behind).
    Skew(usize, i64),
    Pause(usize, u64),
    Resume(usize),
    Partition(Vec<u8>),
    Heal,
    /// The Byzantine-lite node forges once (`byzantine::forge`).
    Forge(usize),
    /// The operator gives a random command (`steer`).
    Command,
    /// The operator resumes what is paused and approves what waits (after the heal).
    Attend,
    /// A broken job queue starts a job the core asked for a while ago.
    StartLate {
        node: usize,
        incarnation: u64,
        job: Box<Job>,
    },
}

impl Ev {
    /// The one node this event can change (its core, its jobs, its store): the others
    /// keep their views and what they run. None: it may change several (a crash, a
    /// partition, a restart, an operator's command, a user's write: the rare ones).
    fn node(&self) -> Option<usize> {
        match self {
            Ev::Tick(i) | Ev::Beat(i) | Ev::AntiEntropy(i) => Some(*i),
            Ev::Deliver { to, .. } => Some(*to),
            Ev::WorkDone { node, .. } | Ev::Probed { node, .. } => Some(*node),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Msg {
    Beat(Vec<u8>),
    SyncReq { req: u64, data: Vec<u8> },
    SyncResp { req: u64, data: Vec<u8> },
    Probe { req: u64, data: Vec<u8> },
    ProbeAnswer { data: Vec<u8> },
}

struct Node {
    core: Option<Core>,
    store: store::SimStore,
    /// Its last crash lost part of its store (its view may forget tokens it saw).
    lost_writes: bool,
    incarnation: u64,
    paused: bool,
    backlog: Vec<Ev>,
    jobs: BTreeSet<String>,
    /// Its wall clock minus true time: what it passes the core as wall time.
    offset: i64,
    /// Its base offset (within `max_clock_drift_ms` of the others), restored at the heal.
    base_offset: i64,
    /// A clean stop in progress: what it waits for its peers to sync.
    handover: Option<Handover>,
}

/// The longest a clean stop waits for its peers to sync the claims it hands back (as
/// `node::HANDOVER_MAX` does in real time).
pub const HANDOVER_MAX_MS: u64 = 2_000;

/// A crash: the node, when, the phases it was running as (resource, token), and the
/// claims it was settling that would have won in its view (resource, token, written at,
/// claim id).
#[derive(Debug, Clone)]
struct Crash {
    node: usize,
    at: u64,
    running: Vec<(Resource, u64)>,
    settling: Vec<(Resource, u64, u64, String)>,
}

struct Sim {
    cfg: SimConfig,
    /// This run's seed (what else it decides is drawn from `rng`).
    seed: u64,
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    nodes: Vec<Node>,
    names: Vec<String>,
    groups: Vec<u8>,
    origin: Origin,
    /// Outstanding sync requests: id → (requester, responder).
    pending: BTreeMap<u64, (usize, usize)>,
    /// Probes in flight: request → the prober (an unanswered one stays: the core counts
    /// the miss by its own period).
    probes: BTreeMap<u64, usize>,
    next_req: u64,
    violations: Vec<String>,
    trace: Vec<String>,
    events: u64,
    /// Highest token seen per resource in each node's view (by node).
    tokens: Vec<BTreeMap<Resource, u64>>,
    crashes: Vec<Crash>,
    /// Every start of work: (node, resource, token, time).
    starts: Vec<(usize, Resource, u64, u64)>,
    healed_at: Option<u64>,
    /// With `check_seed`: the epoch cut at the heal (its cut heads and document), which
    /// the end of the run carries node0's later facts into.
    epoch: Option<(Vec<crate::core::state::ChangeHash>, crate::core::state::Doc)>,
    /// The document digest each node's view was last checked at.
    checked: Vec<[u8; 32]>,
    /// Per node, since when it holds claims back for a move to a new epoch; and every
    /// such pause that ended (from, to): takeovers wait for them.
    moving_since: Vec<Option<u64>>,
    moves: u64,
    /// Epochs a node took up whole from a peer (a new node, `SimConfig::late_join`).
    joins: u64,
    /// The late node (`SimConfig::late_join`), and that it comes up as the first node
    /// moves to epoch 2.
    late: Option<usize>,
    join_on_move: Option<usize>,
    pauses: Vec<(u64, u64)>,
    /// What each node ran when last checked: (story, phase) of its running claims.
    running: Vec<Vec<(String, Phase)>>,
    /// The same by phase: which nodes run it (kept in step with `running`, so a check
    /// after one node's step looks at that node only, not at all 1,000).
    running_on: BTreeMap<(String, Phase), BTreeSet<usize>>,
    /// Per node, the claims (id → token, per resource) its frames have acknowledged: in
    /// its document when a sync frame left, so in the heads a peer read. Ghost state: it
    /// survives the node's crashes, which is the point (see `check`).
    frames_acked: Vec<BTreeMap<Resource, BTreeMap<String, u64>>>,
    /// The digest each node's `frames_acked` was last recorded at.
    acked_at: Vec<[u8; 32]>,
    /// How many claims that node's document held then: a document only ever gains
    /// claims, and its view gains one only with its document (no revokes; an inflated
    /// claim the view dropped never comes back), so the same count is the same claims,
    /// and a frame needs no pass over them. Forgotten when the node restarts.
    acked_claims: Vec<usize>,
    /// The nodes' own claims already checked against `frames_acked`.
    own_checked: BTreeSet<String>,
    /// Restarts: (node, time).
    restarts: Vec<(usize, u64)>,
    /// When each claim was first in the view of a node other than its holder.
    claim_known: BTreeMap<String, u64>,
    shutdowns: u64,
    skewed_ticks: u64,
    forgeries: u64,
    /// The backlog: each story, and the earlier story it depends on (if that was added).
    backlog: Vec<(NewStory, Option<usize>)>,
    /// The key each backlog story got once acknowledged.
    keys: Vec<Option<String>>,
    /// Acknowledged user writes: (node, story title). (Titles, not keys: a story's key
    /// comes from its node's counter, which an aborted write hands to the next one.)
    acked: Vec<(usize, String)>,
    /// The key each acknowledged title got: a new epoch retires a merged story by key.
    acked_keys: BTreeMap<String, String>,
    /// The titles of aborted user writes: never in any view.
    aborted: Vec<String>,
    lost_tails: u64,
    torn_tails: u64,
    /// The operator, when the run steers or has a budget.
    operator: Option<steer::Operator>,
    /// True spend (every job started, its full cost) by budget day, with a budget.
    spent: BTreeMap<u64, u64>,
    /// The liveness check excused unfinished stories: the money ran out.
    ran_out: bool,
    /// Every message sent, by kind.
    traffic: cost::Traffic,
}

pub(crate) fn core_config(cfg: &SimConfig) -> CoreConfig {
    CoreConfig {
        membership: cfg.membership,
        roles: Phase::ALL.iter().map(|p| p.as_str().to_string()).collect(),
        capacity: cfg.capacity,
        role_limits: BTreeMap::new(),
        max_sync_bytes: 64 << 20,
        passive: false,
        lease: cfg.lease,
        work: true,
        broken_winner_rule: cfg.broken_winner_rule,
        check_view: cfg.check_view,
        stall_after_ms: 0,
        origin_breaker: cfg.origin_breaker(),
        merge_gate: cfg
            .remote
            .then(|| crate::core::lease::Resource::gate("sim://origin", "main").ok())
            .flatten(),
        epoch_after: cfg.epoch_after,
        limits: Default::default(),
        triggers: Default::default(),
        budget: crate::core::BudgetConfig {
            reserve_micro_usd: cfg.reserve_micro_usd,
            ..Default::default()
        },
    }
}

/// The guards the node shell sets: the joining rule (a node that remembers peers, after a
/// restart, claims nothing before it synced with one or the join wait passed) and the
/// clock-skew rule.
fn guards(cfg: &SimConfig, remembers_peers: bool) -> Guards {
    Guards {
        join_wait_ms: cfg.join_wait_ms(),
        remembers_peers,
        clock_skew: true,
    }
}
/// Whether a view holds a story with this title (backlog titles are unique), or its
/// epoch retired it (by its key, when known).
trait Titles {
    fn has_story_titled(&self, title: &str) -> bool;
    fn holds_story(&self, title: &str, key: Option<&String>) -> bool;
}

impl Titles for crate::core::state::View {
    fn has_story_titled(&self, title: &str) -> bool {
        self.stories.values().any(|s| &*s.fact.title == title)
    }

    fn holds_story(&self, title: &str, key: Option<&String>) -> bool {
        let retired = |k: &String| self.base().is_some_and(|b| b.retired.contains_key(k));
        self.has_story_titled(title) || key.is_some_and(retired)
    }
}

/// Runs one seed.
pub fn run(seed: u64, cfg: &SimConfig) -> Report {
    // Five nodes on one thread check each value five times and again on each restart.
    crate::core::trust::remember_checks(true);
    let report = run_seed(seed, cfg);
    crate::core::trust::remember_checks(false);
    report
}

fn run_seed(seed: u64, cfg: &SimConfig) -> Report {
    let mut sim = Sim::new(seed, cfg.clone());
    // A closed mesh: node0 carries the operator's admissions before anyone connects.
    sim.admit_all();
    // Everyone connects, then the backlog is written on different nodes.
    // Faults stop (and the network heals) at `chaos_end`.
    let chaos_end = cfg.chaos_ms + 4_000;
    // A late node starts down, its store empty, and comes up once, mid-chaos.
    // With epochs, half the seeds bring it up as the first node moves to epoch 2, while its
    // peers are on two epochs (or, no such move by then, once faults stop).
    let late = (cfg.late_join && cfg.nodes > 1).then(|| {
        let mut when = StdRng::seed_from_u64(seed ^ 0x1a7e_101e_1a7e_101e);
        let at = when.gen_range(cfg.chaos_ms / 2..cfg.chaos_ms.max(2));
        let on_move = cfg.epoch_after > 0 && when.gen_bool(0.5);
        (1, if on_move { chaos_end } else { at }, on_move)
    });
    if let Some((l, at, on_move)) = late {
        sim.nodes[l].core = None;
        sim.late = Some(l);
        sim.join_on_move = on_move.then_some(l);
        sim.at(at, Ev::Restart(l));
    }
    for i in 0..sim.nodes.len() {
        if sim.up(i) {
            sim.schedule_timers(i);
        }
    }
    for i in 0..sim.nodes.len() {
        if sim.up(i) {
            sim.reconnect(i);
        }
    }
    // The backlog's shape has its own generator, so the faults of a seed do not depend
    // on it (and `files: 0` replays the runs of issue 3 exactly).
    let mut shape = StdRng::seed_from_u64(seed ^ 0x5eed_f11e_5eed_f11e);
    for k in 0..cfg.stories {
        let mut new = NewStory {
            title: format!("story {k}"),
            ..Default::default()
        };
        let mut dep = None;
        if cfg.files > 0 {
            let first = shape.gen_range(0..cfg.files);
            new.files.push(format!("src/f{first}.txt"));
            if cfg.files > 1 && shape.gen_bool(0.3) {
                let second = (first + shape.gen_range(1..cfg.files)) % cfg.files;
                new.files.push(format!("src/f{second}.txt"));
            }
            // A dependency on an earlier story of the same creator (which it knows).
            if k >= cfg.nodes && shape.gen_bool(0.2) {
                dep = Some(k - cfg.nodes);
            }
        }
        sim.backlog.push((new, dep));
        sim.keys.push(None);
    }
    sim.plan_steering(chaos_end);
    for k in 0..cfg.stories {
        if cfg.storage_faults {
            // Users add stories while the mesh runs, so crashes meet fresh writes.
            let t = 1 + k as u64 * cfg.chaos_ms / 2 / cfg.stories.max(1) as u64;
            sim.at(t, Ev::UserWrite(k));
        } else {
            sim.user_write(k);
        }
    }
    // Faults during the chaos window.
    let n = cfg.nodes;
    let mut t = 300;
    while t < cfg.chaos_ms {
        t += sim.rng.gen_range(200..1_200);
        let victim = sim.rng.gen_range(0..n);
        let roll: u32 = sim.rng.gen_range(0..100);
        match (cfg.mode, roll) {
            (_, 0..=24) => {
                sim.at(t, Ev::Crash(victim));
                let back = t + sim.rng.gen_range(500..4_000);
                sim.at(back, Ev::Restart(victim));
            }
            (Mode::Hostile, 25..=49) => {
                let groups: Vec<u8> = (0..n).map(|_| sim.rng.gen_range(0..2)).collect();
                sim.at(t, Ev::Partition(groups));
                let heal = t + sim.rng.gen_range(300..3_000);
                sim.at(heal, Ev::Heal);
            }
            (Mode::Hostile, 50..=69) => {
                let long = cfg.lease.ttl_ms + cfg.membership.dead_after_ms;
                let until = t + sim.rng.gen_range(long / 2..long * 2);
                sim.at(t, Ev::Pause(victim, until));
            }
            (_, 70..=84) if cfg.stops_guards_clocks => {
                // A clean stop (claims handed back), then a restart like a crash's.
                sim.at(t, Ev::Shutdown(victim));
                let back = t + HANDOVER_MAX_MS + sim.rng.gen_range(500..4_000);
                sim.at(back, Ev::Restart(victim));
            }
            (Mode::Hostile, 85..=92) if cfg.stops_guards_clocks => {
                // The wall clock jumps well beyond the drift bound (allowing for delays),
                // ahead or behind, for a while.
                let l = cfg.lease;
                let beyond = l.max_clock_drift_ms + l.message_timeout_ms;
                let by = i64::try_from(beyond + sim.rng.gen_range(100..2_000)).unwrap_or(0);
                let by = if sim.rng.gen_bool(0.5) { by } else { -by };
                let base = sim.nodes[victim].base_offset;
                sim.at(t, Ev::Skew(victim, base + by));
                let back = t + sim.rng.gen_range(500..3_000);
                sim.at(back, Ev::Skew(victim, base));
            }
            _ => {}
        }
    }
    if let Some((l, at, _)) = late {
        // No fault brings it up before its time.
        sim.queue
            .retain(|(t, _), e| *t >= at || !matches!(e, Ev::Restart(j) if *j == l));
    }
    if cfg.remote {
        sim.origin.schedule_outages(seed, cfg.chaos_ms);
    }
    if cfg.byzantine {
        // Its own generator: the other faults of a seed are the same with or without it.
        let mut forge = StdRng::seed_from_u64(seed ^ 0xb12a_4711_b12a_4711);
        let mut t = 200;
        while t < cfg.chaos_ms {
            t += forge.gen_range(50..400);
            sim.at(t, Ev::Forge(n - 1));
        }
    }
    let end = chaos_end + cfg.liveness_bound_ms();
    let mut healed = false;
    while let Some(((time, _), ev)) = sim.queue.pop_first() {
        if time > end {
            break;
        }
        if !healed && time >= chaos_end {
            // Faults stop: heal, resume and restart everyone.
            healed = true;
            sim.now = chaos_end;
            sim.healed_at = Some(chaos_end);
            sim.handle(Ev::Heal);
            for i in 0..n {
                sim.nodes[i].offset = sim.nodes[i].base_offset;
                sim.handle(Ev::Resume(i));
                if sim.nodes[i].handover.is_some() {
                    sim.take_down(i, "stop (at the heal)");
                }
                sim.handle(Ev::Restart(i));
            }
            sim.queue.retain(|_, e| {
                !matches!(
                    e,
                    Ev::Crash(_)
                        | Ev::Shutdown(_)
                        | Ev::Stop { .. }
                        | Ev::Skew(..)
                        | Ev::Pause(..)
                        | Ev::Partition(_)
                        | Ev::Heal
                        | Ev::Forge(_)
                        | Ev::Command
                )
            });
            if cfg.check_seed {
                // Mid-flight too: stories half done, claims open, some merged.
                sim.check_seed_now(0);
            }
        }
        sim.now = time;
        sim.events += 1;
        let scope = ev.node();
        sim.handle(ev);
        sim.check(scope);
        if !sim.violations.is_empty() {
            break;
        }
        // Stop early once all is settled after healing.
        if healed && sim.events.is_multiple_of(64) && sim.all_settled() {
            break;
        }
    }
    let (merged, blocked, cancelled) = if sim.violations.is_empty() {
        sim.finish()
    } else {
        (0, 0, 0)
    };
    let ledger = sim.nodes[0].core.as_mut().map(|c| c.view().ledger.clone());
    let op = sim.operator.as_ref();
    let (commands, refused_commands, outvoted_commands) =
        op.map_or((0, 0, 0), |o| (o.issued, o.refused, o.outvoted));
    Report {
        seed,
        violations: sim.violations,
        trace: sim.trace,
        events: sim.events,
        merged,
        blocked,
        cancelled,
        moves: sim.moves,
        joins: sim.joins,
        epoch: sim.nodes[0].core.as_ref().map_or(0, |c| c.epoch()),
        end_ms: sim.now,
        shutdowns: sim.shutdowns,
        skewed_ticks: sim.skewed_ticks,
        forgeries: sim.forgeries,
        lost_tails: sim.lost_tails,
        torn_tails: sim.torn_tails,
        acked_writes: sim.acked.len() as u64,
        aborted_writes: sim.aborted.len() as u64,
        deferred_jobs: sim.origin.deferred,
        lost_answers: sim.origin.lost_answers,
        commands,
        refused_commands,
        outvoted_commands,
        spent_micro_usd: sim.spent.values().sum(),
        out_of_money: sim.ran_out,
        asks: ledger
            .as_ref()
            .map_or(0, |l| l.asks.values().map(|a| u64::from(a.n)).sum()),
        gives: ledger.map_or(0, |l| l.gives.len() as u64),
        traffic: sim.traffic,
    }
}
