//! The deterministic simulator: many pure [`Core`]s driven by a virtual clock over a
//! virtual network that delays, reorders, duplicates and drops messages, partitions and
//! heals, crashes and restarts nodes (keeping what they persisted), stops them cleanly
//! (claims handed back first), pauses nodes past their lease, and runs each node on its
//! own wall clock (within the drift bound; in hostile mode one may jump beyond it for a
//! while). The cores run with node.rs's joining and clock-skew guards. One seed reproduces one run exactly; invariants are checked after every
//! event, and a failure carries the seed and a trace.
//!
//! It owns no I/O and reads no clock: it is a shell whose "network" is a priority queue.
//! The git origin is modelled as a fence register per story (the contract of `fence`):
//! an implementation records its token, and a landing is refused when a newer
//! implementation recorded a higher token or the story already landed.
//!
//! Two fault modes:
//! - clean: delays, reordering, duplicates, crashes, clean stops and restarts. Here the claim protocol
//!   promises mutual exclusion: at most one up node runs a given phase at any instant.
//! - hostile: everything, plus drops, partitions, pauses past the lease and a wall clock
//!   beyond the drift bound. The mesh is
//!   available rather than consistent here (DESIGN.md §5): two sides may both work, but at
//!   most one result per phase counts and no story lands twice.
//!
//! In both: tokens per resource never go backwards in any view; a node that judges its
//! clock skewed claims nothing; a counted result is always from the resource's highest
//! claim; a story whose holder died is taken over within the bound (clean mode; a clean
//! stop released its claims, so it owes none); and once the network heals and faults
//! stop, every node derives the same view and every story is merged or blocked.

use crate::core::lease::{LeaseConfig, Resource};
use crate::core::membership::MembershipConfig;
use crate::core::model::{NewStory, Phase, StoryStatus, Topic, MAX_ATTEMPTS, MAX_TAKEOVERS};
use crate::core::sim_handoff::sim_handoff;
use crate::core::state::{Doc, MAX_REWORKS};
use crate::core::{Core, CoreConfig, Effect, Guards, Handover, Input, Job};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

/// Which faults a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Clean,
    Hostile,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    pub stories: usize,
    /// Planned files are drawn from a pool of this many names (`src/f0.txt`, ...): each
    /// story plans one file or two, so stories share files (with the default of 2, most
    /// do: changes made on the two sides of a partition meet at merge), and a fifth depend
    /// on an earlier story. The origin then models rebase conflicts: a merge whose change was
    /// based on a main that has since landed another story touching one of its files is
    /// refused (verdict reject). 0: no files, no dependencies, no conflicts (the backlog
    /// of issue 3).
    pub files: usize,
    pub mode: Mode,
    /// Virtual time with faults; then faults stop and the network heals. (Everything must
    /// then finish within [`SimConfig::liveness_bound_ms`].)
    pub chaos_ms: u64,
    pub phase_ms: u64,
    pub max_delay_ms: u64,
    pub membership: MembershipConfig,
    pub lease: LeaseConfig,
    pub capacity: u32,
    /// Probability that a first-round review rejects, sending the story through a
    /// rework round (fresh resources and tokens per round).
    pub review_reject_rate: f64,
    /// Make the cores start work without checking they win (to prove the checks bite).
    pub broken_winner_rule: bool,
    /// Keep a trace of every event (costly; for replaying one seed).
    pub trace: bool,
    /// Clean stops, the cores' joining and clock-skew guards, and skewed wall clocks.
    /// false: none of them, so a seed replays the run it made before they existed (for
    /// regression seeds found then).
    pub stops_guards_clocks: bool,
}

impl SimConfig {
    pub fn new(mode: Mode) -> SimConfig {
        SimConfig {
            nodes: 4,
            stories: 6,
            files: 2,
            mode,
            chaos_ms: 6_000,
            phase_ms: 150,
            max_delay_ms: 20,
            membership: MembershipConfig {
                heartbeat_ms: 200,
                suspect_after_missed: 3,
                dead_after_ms: 1_000,
            },
            lease: LeaseConfig {
                ttl_ms: 1_200,
                grace_ms: 200,
                settle_timeout_ms: 400,
                max_clock_drift_ms: 100,
                message_timeout_ms: 200,
            },
            capacity: 2,
            review_reject_rate: 0.2,
            broken_winner_rule: false,
            trace: false,
            stops_guards_clocks: true,
        }
    }
}

/// Counted steps a story can take at most: research, plan, implement, then rounds of
/// [rework,] review, merge — [`MAX_REWORKS`] of them after the first.
pub const MAX_STEPS_PER_STORY: u64 = 3 + 2 + 3 * MAX_REWORKS as u64;

impl SimConfig {
    /// How long a node that knows of a mesh waits to sync with it before it claims
    /// anyway: a lease expiry (node.rs's default is longer; the sim's leases are short).
    pub fn join_wait_ms(&self) -> u64 {
        if self.stops_guards_clocks {
            self.membership.dead_after_ms
        } else {
            0
        }
    }

    /// How long after the network heals and faults stop every story must be merged or
    /// blocked (with a reason): the liveness invariant. Derived from the config, for the
    /// worst case where every story waits for the one before it (all share files, or
    /// depend on each other in a chain), so nothing runs in parallel:
    ///
    /// * warm-up: the restarted nodes claim nothing for `suspect_after` beats, nor before
    ///   they synced with a peer (at most the join wait);
    /// * one lease expiry for a claim from before the heal: `dead_after + ttl + grace`;
    /// * then `stories × MAX_STEPS_PER_STORY` steps one after the other, each taking up to
    ///   `MAX_ATTEMPTS` attempts (a lost settle, a refused stale change), and each attempt
    ///   up to a settle timeout, the longest phase (`phase_ms × 3/2`), a tick
    ///   (`heartbeat/4`) and four network delays to spread the claim and the result.
    ///
    /// Capacity and node count only shorten this (stories that share nothing run in
    /// parallel), so they do not appear in the worst case.
    pub fn liveness_bound_ms(&self) -> u64 {
        let m = self.membership;
        let l = self.lease;
        let warm_up = (m.heartbeat_ms * u64::from(m.suspect_after_missed)).max(self.join_wait_ms());
        let expiry = m.dead_after_ms + l.ttl_ms + l.grace_ms;
        let attempt = l.settle_timeout_ms
            + self.phase_ms * 3 / 2
            + m.heartbeat_ms / 4
            + 4 * self.max_delay_ms;
        let steps = self.stories as u64 * MAX_STEPS_PER_STORY * u64::from(MAX_ATTEMPTS);
        warm_up + expiry + steps * attempt
    }
}

/// The outcome of one seed.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    pub events: u64,
    pub merged: usize,
    pub blocked: usize,
    pub end_ms: u64,
    /// Clean stops carried out (claims handed back, then down).
    pub shutdowns: u64,
    /// Ticks at which a node judged its own wall clock skewed (and so claimed nothing).
    pub skewed_ticks: u64,
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
    Crash(usize),
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
}

#[derive(Debug, Clone)]
enum Msg {
    Beat(Vec<u8>),
    SyncReq { req: u64, data: Vec<u8> },
    SyncResp { req: u64, data: Vec<u8> },
}

struct Node {
    core: Option<Core>,
    persisted: Vec<Vec<u8>>,
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

/// The git origin as the fence sees it.
#[derive(Debug, Default)]
struct Origin {
    fence: BTreeMap<String, u64>,
    landed: BTreeMap<String, Vec<(usize, u64)>>,
    /// Main's history: the landed stories in order, with the files they changed.
    main: Vec<(String, Vec<String>)>,
    /// The main each change was made on (its length then), by the change's claim.
    bases: BTreeMap<String, usize>,
}

impl Origin {
    /// The base of a new implement or rework: main now, except for a rework after a
    /// rejecting review, which amends the reviewed change on that change's base (as
    /// `work` does).
    fn base_of(&self, job: &Job) -> usize {
        if job.phase == Phase::Rework {
            let last_reject = job
                .handoffs
                .iter()
                .rev()
                .find(|h| h.handoff.verdict == Some(crate::core::model::Verdict::Reject));
            if last_reject.is_some_and(|h| h.phase == Phase::Review) {
                if let Some(b) = Self::change(job).and_then(|c| self.bases.get(&c.claim)) {
                    return *b;
                }
            }
        }
        self.main.len()
    }

    /// The change a review or merge works on: the latest implement or rework.
    fn change(job: &Job) -> Option<&crate::core::model::ResultFact> {
        job.handoffs
            .iter()
            .rev()
            .find(|h| matches!(h.phase, Phase::Implement | Phase::Rework))
    }

    /// A file of the job's story that main changed since its change's base, if any.
    fn conflict(&self, job: &Job) -> Option<String> {
        let base = Self::change(job)
            .and_then(|c| self.bases.get(&c.claim))
            .copied()
            .unwrap_or(0);
        self.main.get(base..)?.iter().find_map(|(story, files)| {
            (*story != job.story)
                .then(|| files.iter().find(|f| job.fact.files.contains(f)).cloned())
                .flatten()
        })
    }
}

/// A crash: the node, when, the phases it was running as (resource, token), and the
/// claims it was settling that would have won in its view (resource, token, written at).
#[derive(Debug, Clone)]
struct Crash {
    node: usize,
    at: u64,
    running: Vec<(Resource, u64)>,
    settling: Vec<(Resource, u64, u64)>,
}

struct Sim {
    cfg: SimConfig,
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
    next_req: u64,
    violations: Vec<String>,
    trace: Vec<String>,
    events: u64,
    /// Highest token seen per (node, resource) in that node's view.
    tokens: BTreeMap<(usize, Resource), u64>,
    crashes: Vec<Crash>,
    /// Every start of work: (node, resource, token, time).
    starts: Vec<(usize, Resource, u64, u64)>,
    healed_at: Option<u64>,
    /// The document digest each node's view was last checked at.
    checked: Vec<[u8; 32]>,
    /// Restarts: (node, time).
    restarts: Vec<(usize, u64)>,
    shutdowns: u64,
    skewed_ticks: u64,
}

fn core_config(cfg: &SimConfig) -> CoreConfig {
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
        stall_after_ms: 0,
    }
}

/// The guards node.rs sets: the joining rule (a node that remembers peers, after a
/// restart, claims nothing before it synced with one or the join wait passed) and the
/// clock-skew rule.
fn guards(cfg: &SimConfig, remembers_peers: bool) -> Guards {
    Guards {
        join_wait_ms: cfg.join_wait_ms(),
        remembers_peers,
        clock_skew: true,
    }
}

impl Sim {
    fn new(seed: u64, cfg: SimConfig) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let names: Vec<String> = (0..cfg.nodes).map(|i| format!("node{i}")).collect();
        let mut nodes = Vec::new();
        // Every wall clock is off true time by up to 40% of the drift bound, so any two
        // are within it.
        let drift = i64::try_from(cfg.lease.max_clock_drift_ms * 2 / 5).unwrap_or(0);
        for name in &names {
            let actor: [u8; 16] = rng.gen();
            let mut core = Core::new(name.clone(), core_config(&cfg), Doc::new(actor), 1);
            let mut offset = 0;
            if cfg.stops_guards_clocks {
                offset = rng.gen_range(-drift..=drift);
                core.set_guards(guards(&cfg, false));
            }
            nodes.push(Node {
                core: Some(core),
                persisted: Vec::new(),
                incarnation: 1,
                paused: false,
                backlog: Vec::new(),
                jobs: BTreeSet::new(),
                offset,
                base_offset: offset,
                handover: None,
            });
        }
        let groups = vec![0; cfg.nodes];
        Sim {
            cfg,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            names,
            groups,
            origin: Origin::default(),
            pending: BTreeMap::new(),
            next_req: 1,
            violations: Vec::new(),
            trace: Vec::new(),
            events: 0,
            tokens: BTreeMap::new(),
            crashes: Vec::new(),
            starts: Vec::new(),
            healed_at: None,
            checked: Vec::new(),
            restarts: Vec::new(),
            shutdowns: 0,
            skewed_ticks: 0,
        }
    }

    /// Whether node `n` was up (and past its warm-up) for the whole of [from, to].
    fn up_throughout(&self, n: usize, from: u64, to: u64) -> bool {
        let m = self.cfg.membership;
        let warm =
            (m.heartbeat_ms * u64::from(m.suspect_after_missed)).max(self.cfg.join_wait_ms());
        let crashed = self
            .crashes
            .iter()
            .any(|c| c.node == n && c.at <= to && c.at >= from.saturating_sub(warm));
        let restarted = self
            .restarts
            .iter()
            .any(|&(r, at)| r == n && at <= to && at + warm >= from);
        // Down before `from` and not back: the last event before `from` was a crash.
        let last_crash = self
            .crashes
            .iter()
            .filter(|c| c.node == n && c.at < from)
            .map(|c| c.at)
            .max();
        let last_restart = self
            .restarts
            .iter()
            .filter(|&&(r, _)| r == n)
            .map(|&(_, at)| at)
            .filter(|&at| at < from)
            .max();
        let down_at_from = match (last_crash, last_restart) {
            (Some(c), Some(r)) => c > r,
            (Some(_), None) => true,
            _ => false,
        };
        !crashed && !restarted && !down_at_from
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    fn note(&mut self, f: impl FnOnce() -> String) {
        if self.cfg.trace {
            let line = format!("{:>7} {}", self.now, f());
            self.trace.push(line);
        }
    }

    fn violation(&mut self, what: String) {
        let line = format!("t={} {what}", self.now);
        if self.cfg.trace {
            self.trace.push(format!("{:>7} VIOLATION {what}", self.now));
        }
        if !self.violations.contains(&line) {
            self.violations.push(line);
        }
    }

    /// Node `i`'s wall clock now.
    fn wall(&self, i: usize) -> u64 {
        u64::try_from(i64::try_from(self.now).unwrap_or(i64::MAX) + self.nodes[i].offset)
            .unwrap_or(0)
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        self.up(a) && self.up(b) && self.groups[a] == self.groups[b]
    }

    fn faults(&self) -> bool {
        self.healed_at.is_none()
    }

    /// Sends with delay, and in chaos time duplicates and (hostile) drops.
    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if !self.linked(from, to) {
            return;
        }
        let chaos = self.faults();
        if chaos && self.cfg.mode == Mode::Hostile && self.rng.gen_bool(0.05) {
            self.note(|| format!("drop {from}->{to}"));
            return;
        }
        let d = self.rng.gen_range(1..=self.cfg.max_delay_ms.max(1));
        let t = self.now + d;
        if chaos && self.rng.gen_bool(0.03) {
            let d2 = self.rng.gen_range(1..=self.cfg.max_delay_ms.max(1) * 3);
            let t2 = self.now + d2;
            self.at(
                t2,
                Ev::Deliver {
                    to,
                    from,
                    msg: msg.clone(),
                },
            );
        }
        self.at(t, Ev::Deliver { to, from, msg });
    }

    /// Carries out every effect node `i` produced.
    fn drain(&mut self, i: usize) {
        while let Some(e) = self.nodes[i].core.as_mut().and_then(|c| c.poll_effect()) {
            match e {
                Effect::Publish {
                    topic: Topic::Heartbeat,
                    data,
                } => {
                    for j in 0..self.nodes.len() {
                        if j != i {
                            self.send(i, j, Msg::Beat(data.clone()));
                        }
                    }
                }
                Effect::Publish { .. } => {}
                Effect::SendSync { to, data } => {
                    let Some(j) = self.names.iter().position(|n| *n == to) else {
                        continue;
                    };
                    let req = self.next_req;
                    self.next_req += 1;
                    self.pending.insert(req, (i, j));
                    self.send(i, j, Msg::SyncReq { req, data });
                    let t = self.now + 1_000;
                    self.at(t, Ev::SyncTimeout { req });
                }
                Effect::Respond { reply, data } => {
                    if let Some(&(requester, _)) = self.pending.get(&reply) {
                        self.send(i, requester, Msg::SyncResp { req: reply, data });
                    }
                }
                Effect::Persist { chunk } => self.nodes[i].persisted.push(chunk),
                Effect::PersistEvents { .. } => {}
                Effect::StartWork(job) => self.start_work(i, job),
                Effect::CancelWork { claim } => {
                    self.nodes[i].jobs.remove(&claim);
                }
            }
        }
    }

    fn start_work(&mut self, i: usize, job: Box<Job>) {
        let res = Resource::story_round(&job.story, job.phase, job.round).ok();
        if let Some(r) = res {
            self.starts.push((i, r, job.token, self.now));
        }
        self.note(|| {
            format!(
                "node{i} starts {} {} token {}",
                job.story, job.phase, job.token
            )
        });
        self.nodes[i].jobs.insert(job.claim.clone());
        let d = self
            .rng
            .gen_range(self.cfg.phase_ms / 2..=self.cfg.phase_ms * 3 / 2);
        let t = self.now + d.max(1);
        let incarnation = self.nodes[i].incarnation;
        self.at(
            t,
            Ev::WorkDone {
                node: i,
                incarnation,
                job,
            },
        );
    }

    /// The executor's outcome, through the origin's fence for implement and merge.
    fn outcome(&mut self, i: usize, job: &Job) -> Result<crate::core::model::Handoff, String> {
        match job.phase {
            Phase::Implement => {
                let recorded = self.origin.fence.get(&job.story).copied().unwrap_or(0);
                if job.token < recorded {
                    return Err(format!("fence refused token {} < {recorded}", job.token));
                }
                self.origin.fence.insert(job.story.clone(), job.token);
                let base = self.origin.base_of(job);
                self.origin.bases.insert(job.claim.clone(), base);
                Ok(sim_handoff(job))
            }
            Phase::Rework => {
                let base = self.origin.base_of(job);
                self.origin.bases.insert(job.claim.clone(), base);
                Ok(sim_handoff(job))
            }
            Phase::Merge => {
                let implemented = job
                    .handoffs
                    .iter()
                    .find(|h| h.phase == Phase::Implement)
                    .map(|h| h.token);
                let Some(token) = implemented else {
                    return Err("nothing implemented to land".into());
                };
                let recorded = self.origin.fence.get(&job.story).copied().unwrap_or(0);
                if token < recorded {
                    return Err(format!("fence refused token {token} < {recorded}"));
                }
                // Landed by an earlier holder that stopped before recording it: the
                // gate answers "already landed" and the merge is done (as work.rs does).
                if self.origin.landed.contains_key(&job.story) {
                    let mut h = sim_handoff(job);
                    h.summary = "already landed".into();
                    h.verdict = Some(crate::core::model::Verdict::Approve);
                    return Ok(h);
                }
                if let Some(file) = self.origin.conflict(job) {
                    let mut h = sim_handoff(job);
                    h.verdict = Some(crate::core::model::Verdict::Reject);
                    h.summary = format!("rebase conflict in {file} (simulated)");
                    return Ok(h);
                }
                self.origin
                    .main
                    .push((job.story.clone(), job.fact.files.clone()));
                self.origin
                    .landed
                    .entry(job.story.clone())
                    .or_default()
                    .push((i, token));
                Ok(sim_handoff(job))
            }
            Phase::Review if job.round == 0 && self.rng.gen_bool(self.cfg.review_reject_rate) => {
                let mut h = sim_handoff(job);
                h.verdict = Some(crate::core::model::Verdict::Reject);
                h.summary = "needs another pass (simulated)".into();
                Ok(h)
            }
            _ => Ok(sim_handoff(job)),
        }
    }

    fn handle(&mut self, ev: Ev) {
        // A paused node's inputs wait until it resumes (its buffers fill, as a process
        // stopped by SIGSTOP or a long GC pause would).
        let target = match &ev {
            Ev::Tick(i) | Ev::Beat(i) | Ev::AntiEntropy(i) => Some(*i),
            Ev::Deliver { to, .. } => Some(*to),
            Ev::WorkDone { node, .. } => Some(*node),
            _ => None,
        };
        if let Some(i) = target {
            if self.nodes[i].paused {
                self.nodes[i].backlog.push(ev);
                return;
            }
        }
        let now = self.now;
        // The core reads its wall clock when it handles an input (heartbeat offsets).
        // (Before skewed clocks it saw the wall time of its last tick or beat.)
        if let Some(i) = target.filter(|_| self.cfg.stops_guards_clocks) {
            let wall = self.wall(i);
            if let Some(c) = self.nodes[i].core.as_mut() {
                c.set_wall(wall);
            }
        }
        match ev {
            Ev::Tick(i) => {
                let wall = self.wall(i);
                let mut skewed = false;
                if let Some(c) = self.nodes[i].core.as_mut() {
                    let before = c.clock_skew(now).skewed;
                    c.tick(now, wall);
                    // A node that judges its clock skewed claims nothing.
                    skewed = before && c.clock_skew(now).skewed;
                    if skewed && c.held(now).iter().any(|h| h.age_ms == 0) {
                        let name = self.names[i].clone();
                        self.violation(format!("{name} claimed while its clock was skewed"));
                    }
                    let t = now + self.cfg.membership.heartbeat_ms / 4;
                    self.at(t, Ev::Tick(i));
                }
                self.skewed_ticks += u64::from(skewed);
                self.drain(i);
            }
            Ev::Beat(i) => {
                let wall = self.wall(i);
                if let Some(c) = self.nodes[i].core.as_mut() {
                    c.heartbeat(wall);
                    let t = now + self.cfg.membership.heartbeat_ms;
                    self.at(t, Ev::Beat(i));
                }
                self.drain(i);
            }
            Ev::AntiEntropy(i) => {
                let pick: u64 = self.rng.gen();
                if let Some(c) = self.nodes[i].core.as_mut() {
                    c.anti_entropy(now, pick);
                    self.at(now + 1_000, Ev::AntiEntropy(i));
                }
                self.drain(i);
            }
            Ev::Deliver { to, from, msg } => {
                if !self.linked(from, to) {
                    return; // cut while in flight
                }
                let from_name = self.names[from].clone();
                let input = match msg {
                    Msg::Beat(data) => Input::Heartbeat {
                        from: from_name,
                        data,
                    },
                    Msg::SyncReq { req, data } => Input::SyncRequest {
                        from: from_name,
                        data,
                        reply: req,
                    },
                    Msg::SyncResp { req, data } => {
                        if self.pending.remove(&req).is_none() {
                            return; // duplicate or after the timeout
                        }
                        Input::SyncResponse {
                            from: from_name,
                            data,
                        }
                    }
                };
                if let Some(c) = self.nodes[to].core.as_mut() {
                    c.handle(now, input);
                }
                self.drain(to);
            }
            Ev::SyncTimeout { req } => {
                if let Some((requester, responder)) = self.pending.remove(&req) {
                    let from = self.names[responder].clone();
                    if self.nodes[requester].paused {
                        // A paused requester learns of the failure once it resumes.
                        self.pending.insert(req, (requester, responder));
                        self.at(now + 100, Ev::SyncTimeout { req });
                        return;
                    }
                    if let Some(c) = self.nodes[requester].core.as_mut() {
                        c.handle(now, Input::SyncFailed { from });
                    }
                    self.drain(requester);
                }
            }
            Ev::WorkDone {
                node,
                incarnation,
                job,
            } => {
                if self.nodes[node].incarnation != incarnation
                    || !self.nodes[node].jobs.remove(&job.claim)
                {
                    return; // crashed meanwhile, or cancelled
                }
                let outcome = self.outcome(node, &job);
                self.note(|| {
                    format!(
                        "node{node} finished {} {}: {:?}",
                        job.story,
                        job.phase,
                        outcome.as_ref().map(|_| "ok")
                    )
                });
                if let Some(c) = self.nodes[node].core.as_mut() {
                    c.handle(
                        now,
                        Input::WorkFinished {
                            claim: job.claim.clone(),
                            outcome,
                        },
                    );
                }
                self.drain(node);
            }
            Ev::Crash(i) => self.take_down(i, "crash"),
            Ev::Shutdown(i) => {
                if self.nodes[i].paused || self.nodes[i].handover.is_some() {
                    return;
                }
                let wall = self.wall(i);
                let Some(c) = self.nodes[i].core.as_mut() else {
                    return;
                };
                c.set_wall(wall);
                let handover = c.begin_shutdown(now);
                self.note(|| format!("shutdown node{i}: {handover:?}"));
                self.shutdowns += 1;
                let stop = handover.is_some();
                self.nodes[i].handover = handover;
                // The releases and the goodbye go out before the node goes down.
                self.drain(i);
                if stop {
                    let deadline = now + HANDOVER_MAX_MS;
                    self.at(now + 1, Ev::Stop { node: i, deadline });
                } else {
                    self.take_down(i, "stop");
                }
            }
            Ev::Stop { node, deadline } => {
                let Some(h) = self.nodes[node].handover.clone() else {
                    return;
                };
                let done = self.nodes[node]
                    .core
                    .as_ref()
                    .is_none_or(|c| c.handed_over(&h));
                if done || now >= deadline {
                    self.take_down(
                        node,
                        if done {
                            "stop"
                        } else {
                            "stop (handover timed out)"
                        },
                    );
                } else {
                    self.at(now + 10, Ev::Stop { node, deadline });
                }
            }
            Ev::Skew(i, offset) => {
                self.note(|| format!("node{i} wall clock offset {offset} ms"));
                self.nodes[i].offset = offset;
            }
            Ev::Restart(i) => {
                if self.up(i) {
                    return;
                }
                let actor: [u8; 16] = self.rng.gen();
                let doc = match Doc::load(actor, &[], &self.nodes[i].persisted) {
                    Ok(d) => d,
                    Err(e) => {
                        self.violation(format!("node{i} cannot reload what it persisted: {e}"));
                        return;
                    }
                };
                self.nodes[i].incarnation += 1;
                let inc = now.max(1) + self.nodes[i].incarnation;
                let mut core = Core::new(self.names[i].clone(), core_config(&self.cfg), doc, inc);
                if self.cfg.stops_guards_clocks {
                    core.set_guards(guards(&self.cfg, true));
                }
                self.nodes[i].core = Some(core);
                self.note(|| format!("restart node{i}"));
                self.restarts.push((i, now));
                self.schedule_timers(i);
                self.reconnect(i);
            }
            Ev::Pause(i, until) => {
                if !self.up(i) || self.nodes[i].paused {
                    return;
                }
                self.note(|| format!("pause node{i} until {until}"));
                self.nodes[i].paused = true;
                self.at(until, Ev::Resume(i));
            }
            Ev::Resume(i) => {
                if !self.nodes[i].paused {
                    return;
                }
                self.note(|| format!("resume node{i}"));
                self.nodes[i].paused = false;
                // The overdue tick fires first, then the buffered inputs in order.
                let wall = self.wall(i);
                if let Some(c) = self.nodes[i].core.as_mut() {
                    c.tick(now, wall);
                }
                self.drain(i);
                let backlog = std::mem::take(&mut self.nodes[i].backlog);
                for ev in backlog {
                    if let Ev::Tick(_) | Ev::Beat(_) | Ev::AntiEntropy(_) = ev {
                        // Timers re-arm from now.
                        let t = now + 1;
                        self.at(t, ev);
                        continue;
                    }
                    self.handle(ev);
                }
            }
            Ev::Partition(groups) => {
                self.note(|| format!("partition {groups:?}"));
                let old = std::mem::replace(&mut self.groups, groups);
                self.regroup(&old);
            }
            Ev::Heal => {
                self.note(|| "heal".to_string());
                let old = std::mem::replace(&mut self.groups, vec![0; self.nodes.len()]);
                self.regroup(&old);
            }
        }
    }

    /// Takes node `i` down (a crash, or the end of a clean stop), noting what it was
    /// running and settling: a crash owes those a takeover; a clean stop released them
    /// all first (so there is nothing to note).
    fn take_down(&mut self, i: usize, why: &'static str) {
        let now = self.now;
        let Some(core) = self.nodes[i].core.take() else {
            return;
        };
        let running: Vec<(Resource, u64)> = core
            .runs()
            .iter()
            .filter(|r| {
                core.held(now)
                    .iter()
                    .any(|h| h.claim == r.claim && h.running)
            })
            .filter_map(|r| {
                Resource::story_round(&r.story, r.phase, r.round)
                    .ok()
                    .map(|x| (x, r.token))
            })
            .collect();
        // A takeover claim whose holder dies while settling it hands the work on
        // (its own crash then owes a takeover): remember those that would win.
        let claims = core.doc().view_and_claims().1;
        let settling: Vec<(Resource, u64, u64)> = core
            .held(now)
            .iter()
            .filter(|h| !h.running && claims.holds(&h.claim))
            .filter_map(|h| claims.claim(&h.claim).map(|c| (c, now - h.age_ms)))
            .flat_map(|(c, written)| {
                c.resources
                    .iter()
                    .filter(|(r, _)| matches!(r, Resource::Story { .. }))
                    .map(move |(r, t)| (r.clone(), *t, written))
            })
            .collect();
        self.note(|| format!("{why} node{i} running {running:?} settling {settling:?}"));
        self.crashes.push(Crash {
            node: i,
            at: now,
            running,
            settling,
        });
        self.nodes[i].jobs.clear();
        self.nodes[i].handover = None;
        self.nodes[i].paused = false;
        self.nodes[i].backlog.clear();
        for j in 0..self.nodes.len() {
            if j != i {
                let name = self.names[i].clone();
                if let Some(c) = self.nodes[j].core.as_mut() {
                    c.handle(now, Input::Disconnected(name));
                }
                self.drain(j);
            }
        }
    }

    fn schedule_timers(&mut self, i: usize) {
        let hb = self.cfg.membership.heartbeat_ms;
        let a = self.rng.gen_range(0..hb);
        let b = self.rng.gen_range(0..hb);
        let c = self.rng.gen_range(0..1_000);
        self.at(self.now + a / 4 + 1, Ev::Tick(i));
        self.at(self.now + b + 1, Ev::Beat(i));
        self.at(self.now + c + 1, Ev::AntiEntropy(i));
    }

    fn reconnect(&mut self, i: usize) {
        let now = self.now;
        for j in 0..self.nodes.len() {
            if j != i && self.linked(i, j) {
                let (ni, nj) = (self.names[i].clone(), self.names[j].clone());
                if let Some(c) = self.nodes[i].core.as_mut() {
                    c.handle(now, Input::Connected(nj));
                }
                if let Some(c) = self.nodes[j].core.as_mut() {
                    c.handle(now, Input::Connected(ni));
                }
                self.drain(i);
                self.drain(j);
            }
        }
    }

    /// Tells every node about connections gained or lost by a change of groups.
    fn regroup(&mut self, old: &[u8]) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            for j in 0..self.nodes.len() {
                if i == j || !self.up(i) || !self.up(j) {
                    continue;
                }
                let was = old[i] == old[j];
                let is = self.groups[i] == self.groups[j];
                if was == is {
                    continue;
                }
                let name = self.names[j].clone();
                if let Some(c) = self.nodes[i].core.as_mut() {
                    c.handle(
                        now,
                        if is {
                            Input::Connected(name)
                        } else {
                            Input::Disconnected(name)
                        },
                    );
                }
                self.drain(i);
            }
        }
    }

    /// Safety invariants, checked after every event.
    fn check(&mut self) {
        let now = self.now;
        // Tokens never go backwards in any node's view (rechecked when a view changes).
        let mut seen: Vec<((usize, Resource), u64)> = Vec::new();
        let n = self.nodes.len();
        self.checked.resize(n, [0; 32]);
        for i in 0..n {
            let Some(core) = self.nodes[i].core.as_mut() else {
                continue;
            };
            let d = core.digest();
            if self.checked[i] == d {
                continue;
            }
            self.checked[i] = d;
            let view = core.view();
            for c in view.claims.values() {
                for (r, t) in &c.resources {
                    seen.push(((i, r.clone()), *t));
                }
            }
        }
        let mut top: BTreeMap<(usize, Resource), u64> = BTreeMap::new();
        for (k, t) in seen {
            let e = top.entry(k).or_default();
            *e = (*e).max(t);
        }
        for (k, t) in top {
            let prev = self.tokens.insert(k.clone(), t).unwrap_or(0);
            if t < prev {
                self.violation(format!(
                    "node{} saw the top token of {} fall from {prev} to {t}",
                    k.0, k.1
                ));
            }
        }
        // Clean mode: at most one up node runs a phase at any instant.
        if self.cfg.mode == Mode::Clean {
            let mut running: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for i in 0..self.nodes.len() {
                let Some(core) = self.nodes[i].core.as_ref() else {
                    continue;
                };
                for h in core.held(now).into_iter().filter(|h| h.running) {
                    running
                        .entry(format!("{}/{}", h.story, h.phase))
                        .or_default()
                        .push(i);
                }
            }
            for (r, who) in running {
                if who.len() > 1 {
                    self.violation(format!("{r} runs on nodes {who:?} at once"));
                }
            }
        }
        // No story lands twice at the origin.
        let twice: Vec<String> = self
            .origin
            .landed
            .iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(s, v)| format!("{s} landed {} times: {v:?}", v.len()))
            .collect();
        for t in twice {
            self.violation(t);
        }
    }

    /// End-of-run checks: convergence, counted results, liveness, takeover bound.
    fn finish(&mut self) -> (usize, usize) {
        let mut digests = BTreeSet::new();
        let mut views = Vec::new();
        for i in 0..self.nodes.len() {
            if let Some(c) = self.nodes[i].core.as_mut() {
                digests.insert(c.digest());
                views.push((i, (*c.view()).clone()));
            }
        }
        if digests.len() > 1 {
            self.violation(format!(
                "{} different documents after healing",
                digests.len()
            ));
        }
        if views.windows(2).any(|w| w[0].1 != w[1].1) {
            self.violation("views differ after healing".into());
        }
        let Some((_, view)) = views.first().cloned() else {
            return (0, 0);
        };
        let claims = view.claims();
        // A counted result is from its resource's highest claim.
        for ((story, p, round), rkey) in &view.counted {
            let Some(r) = view.results.get(rkey) else {
                continue;
            };
            let Ok(res) = Resource::story_round(story, *p, *round) else {
                continue;
            };
            let highest = view
                .claims
                .values()
                .filter_map(|c| c.token_of(&res))
                .max()
                .unwrap_or(0);
            if r.token < highest && claims.top(&res) != Some(r.claim.as_str()) {
                let id = view
                    .stories
                    .get(story)
                    .map_or(story.as_str(), |s| s.id.as_str());
                self.violation(format!(
                    "{id} {res}: counted result under token {} below {highest}",
                    r.token
                ));
            }
        }
        let merged = view
            .stories
            .values()
            .filter(|s| s.status == StoryStatus::Done)
            .count();
        let blocked = view
            .stories
            .values()
            .filter(|s| s.status == StoryStatus::Blocked)
            .count();
        if self.cfg.trace {
            for (id, c) in &view.claims {
                let rel = view
                    .releases
                    .get(id)
                    .map(|r| format!("{:?} {}", r.why, r.note))
                    .unwrap_or_default();
                let res: Vec<String> = c
                    .resources
                    .iter()
                    .map(|(r, t)| format!("{r}#{t}"))
                    .collect();
                self.trace.push(format!(
                    "{:>7} claim {id} by {} at {}: {} released: {rel}",
                    self.now,
                    c.holder,
                    c.written_at_ms,
                    res.join(",")
                ));
            }
            for st in view.stories.values() {
                if let Some(why) = &st.blocked_reason {
                    self.trace
                        .push(format!("{:>7} {} blocked: {why}", self.now, st.id));
                }
            }
        }
        if merged + blocked != view.stories.len() {
            // Each unfinished story, its next phase and what it waits for.
            let stuck: Vec<String> = view
                .stories
                .values()
                .filter(|s| !matches!(s.status, StoryStatus::Done | StoryStatus::Blocked))
                .map(|s| {
                    let why = crate::core::scheduler::waiting(&view, &claims, &s.key)
                        .map(|w| w.to_string())
                        .unwrap_or_default();
                    let next = s
                        .next_phase
                        .map_or_else(|| "none".to_string(), |p| format!("{p} round {}", s.round));
                    format!("{} (next {next}): {why}", s.id)
                })
                .collect();
            self.violation(format!(
                "stories neither merged nor blocked {} ms after healing: {}",
                self.cfg.liveness_bound_ms(),
                stuck.join("; ")
            ));
        }
        for s in view.stories.values() {
            if s.merged.is_some() && !self.origin.landed.contains_key(&s.key) {
                self.violation(format!("{} merged in the view but never landed", s.id));
            }
        }
        // Clean mode: a dead holder's work is taken over within the bound.
        if self.cfg.mode == Mode::Clean {
            let l = self.cfg.lease;
            let bound = l.ttl_ms
                + self.cfg.membership.dead_after_ms
                + l.settle_timeout_ms
                + l.grace_ms
                + 2 * self.cfg.membership.heartbeat_ms;
            let crashes = self.crashes.clone();
            for Crash {
                node,
                at: t,
                running,
                settling,
            } in &crashes
            {
                let (node, t) = (*node, *t);
                let owed = running
                    .iter()
                    .cloned()
                    .chain(settling.iter().map(|(r, tk, _)| (r.clone(), *tk)));
                for (res, token) in owed {
                    // Crashes record story resources only.
                    let Resource::Story {
                        story,
                        phase,
                        round,
                    } = &res
                    else {
                        continue;
                    };
                    let (phase, round) = (*phase, *round);
                    let counted = view.counted_result_round(story, phase, round);
                    let sv = view.stories.get(story);
                    // The bound runs once an eligible node is up: someone other than the
                    // crashed holder (and, for a review, other than the author of the
                    // change that round reviews: its rework, else the implement — not
                    // whoever implemented a later round, seed 90060 clean).
                    let implementer = (phase == Phase::Review)
                        .then(|| {
                            (1..=round)
                                .rev()
                                .find_map(|r| view.counted_result_round(story, Phase::Rework, r))
                                .or_else(|| view.counted_result_round(story, Phase::Implement, 0))
                                .map(|f| f.holder.clone())
                        })
                        .flatten();
                    let eligible = (0..self.nodes.len()).any(|n| {
                        n != node
                            && implementer.as_deref() != Some(self.names[n].as_str())
                            && self.up_throughout(n, t, t + bound)
                    });
                    if !eligible {
                        continue;
                    }
                    let taken = self.starts.iter().any(|(n, r, tk, at)| {
                        // By another node, or by the crashed node's next incarnation:
                        // either way a newer claim runs the work and fences the old.
                        (*n != node || *at > t) && *r == res && *tk > token && *at <= t + bound
                    }) || crashes.iter().any(|c| {
                        // Or claimed in time by a node that died settling it: that
                        // crash owes the takeover now, within its own bound (seed 94391).
                        c.settling.iter().any(|(r, tk, written)| {
                            (c.node != node || *written > t)
                                && *r == res
                                && *tk > token
                                && *written <= t + bound
                        })
                    });
                    // Done at this token or below, in this round (a later round's
                    // result says nothing about this one: seed 5544 clean, where the
                    // crashed claim had lost a tie the dead node never heard of). A
                    // landing writes its merge result in the same change.
                    let done_before = counted.is_some_and(|c| c.token <= token);
                    // Attempts used up blocks the story for a human by design: failed
                    // attempts, or takeovers (crashes of its holders: a story that keeps
                    // killing nodes must stop).
                    let escalated = sv.is_some_and(|s| {
                        s.status == StoryStatus::Blocked
                            && (s.failed_attempts >= MAX_ATTEMPTS || s.takeovers >= MAX_TAKEOVERS)
                    });
                    // Work the story no longer needs is owed to no one: a crashed claim
                    // on a round the finished story never took (the review before it was
                    // taken over and went the other way: seed 877 clean).
                    let moot = counted.is_none()
                        && sv.is_some_and(|s| {
                            matches!(s.status, StoryStatus::Done | StoryStatus::Blocked)
                        });
                    // An implement or rework yields its files when its claim expires: a
                    // change of another story to one of them, started within the bound,
                    // owns them until it lands, and the story rightly waits for that
                    // (seed 215 clean, with files).
                    let files = |k: &str| {
                        view.stories
                            .get(k)
                            .map(|s| s.fact.files.clone())
                            .unwrap_or_default()
                    };
                    let mine = files(story);
                    let yielded = matches!(phase, Phase::Implement | Phase::Rework)
                        && self.starts.iter().any(|(_, r, _, at)| {
                            matches!(r, Resource::Story { story: o, phase: p, .. }
                                if o != story
                                    && matches!(p, Phase::Implement | Phase::Rework)
                                    && files(o).iter().any(|f| mine.contains(f)))
                                && *at >= t
                                && *at <= t + bound
                        });
                    if !taken
                        && !done_before
                        && !escalated
                        && !moot
                        && !yielded
                        && t + bound < self.now
                    {
                        self.violation(format!(
                            "{res} (token {token}) of node{node}, crashed at {t}, not taken over within {bound} ms"
                        ));
                    }
                }
            }
        }
        (merged, blocked)
    }
}

/// Runs one seed.
pub fn run(seed: u64, cfg: &SimConfig) -> Report {
    let mut sim = Sim::new(seed, cfg.clone());
    // Everyone connects, then the backlog is written on different nodes.
    for i in 0..sim.nodes.len() {
        sim.schedule_timers(i);
    }
    for i in 0..sim.nodes.len() {
        sim.reconnect(i);
    }
    // The backlog's shape has its own generator, so the faults of a seed do not depend
    // on it (and `files: 0` replays the runs of issue 3 exactly).
    let mut shape = StdRng::seed_from_u64(seed ^ 0x5eed_f11e_5eed_f11e);
    let mut keys: Vec<Option<String>> = Vec::new();
    for k in 0..cfg.stories {
        let i = k % cfg.nodes;
        let mut new = NewStory {
            title: format!("story {k}"),
            ..Default::default()
        };
        if cfg.files > 0 {
            let first = shape.gen_range(0..cfg.files);
            new.files.push(format!("src/f{first}.txt"));
            if cfg.files > 1 && shape.gen_bool(0.3) {
                let second = (first + shape.gen_range(1..cfg.files)) % cfg.files;
                new.files.push(format!("src/f{second}.txt"));
            }
            // A dependency on an earlier story of the same creator (which it knows).
            if k >= cfg.nodes && shape.gen_bool(0.2) {
                if let Some(dep) = keys[k - cfg.nodes].clone() {
                    new.depends_on.push(dep);
                }
            }
        }
        let key = sim.nodes[i]
            .core
            .as_mut()
            .and_then(|c| c.add_story(&new, 0).ok())
            .map(|s| s.key);
        keys.push(key);
        sim.drain(i);
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
    let chaos_end = cfg.chaos_ms + 4_000;
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
                )
            });
        }
        sim.now = time;
        sim.events += 1;
        sim.handle(ev);
        sim.check();
        if !sim.violations.is_empty() {
            break;
        }
        // Stop early once all is settled after healing.
        if healed && sim.events.is_multiple_of(64) && sim.all_settled() {
            break;
        }
    }
    let (merged, blocked) = if sim.violations.is_empty() {
        sim.finish()
    } else {
        (0, 0)
    };
    Report {
        seed,
        violations: sim.violations,
        trace: sim.trace,
        events: sim.events,
        merged,
        blocked,
        end_ms: sim.now,
        shutdowns: sim.shutdowns,
        skewed_ticks: sim.skewed_ticks,
    }
}

impl Sim {
    /// Every node up, every story merged or blocked, and all documents equal.
    fn all_settled(&mut self) -> bool {
        let mut digest = None;
        for i in 0..self.nodes.len() {
            let Some(c) = self.nodes[i].core.as_mut() else {
                return false;
            };
            if !c.held(0).is_empty() {
                return false;
            }
            let d = c.digest();
            if digest.is_some_and(|x| x != d) {
                return false;
            }
            digest = Some(d);
            if !c
                .view()
                .stories
                .values()
                .all(|s| matches!(s.status, StoryStatus::Done | StoryStatus::Blocked))
            {
                return false;
            }
        }
        true
    }
}
