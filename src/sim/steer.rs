//! The simulator's operator (`SimConfig::steer`, `--steer`): a human steering the mesh
//! while it runs (docs/DESIGN.md §14).
//!
//! The mesh has one operator, [`OPERATOR`]; node0 carries its admission of every node
//! before anyone connects (the roster of a closed mesh). During the chaos window, at
//! seeded moments, the operator walks up to a random node that is up (on either side of
//! a partition) and gives one random command through it, as `mesh-agent` does: the
//! draft resolved against that node's view by [`resolve_command`] (a refused draft is
//! dropped), signed with the node's wall clock as `at_ms` (clocks are skewed), written as
//! a durable write. The commands: pause or resume a story, a node or the whole mesh,
//! prioritize, context, assign (to a node or to anyone), approve or dismiss attention
//! items, and — a few per run — cancel, request changes and unblock. A third of the
//! backlog carries the `approval` label, so its plans wait at a gate for an approval,
//! and a sixth `sim:confidence=30`, so every result of it is under the confidence
//! trigger and holds its gate (implement, and merge in every round).
//!
//! Once the faults stop, the operator attends to the mesh every [`ATTEND_MS`]: it resumes
//! every pause the node it uses shows and approves every open gate item, signing with a
//! clock past everything it signed before (so a resume wins over a pause signed on a
//! clock that ran ahead). Liveness then holds as before, a cancelled story counting as
//! finished.
//!
//! The invariants (checked here, as effects are carried out): a node starts no phase of
//! a story its view has cancelled, paused or held at a gate, nor any phase while its view
//! has the node or the mesh paused; and no node lands a story its view has cancelled.
//! (A landing elsewhere, before the cancel arrived, is the partition's right: the view
//! then shows the story done.) `SimConfig::broken_job_queue` breaks the shell so that
//! they fail.
//!
//! The operator has its own generator, so the other faults of a seed stay the same.

use super::{Ev, Sim, SimConfig};
use crate::core::model::{AlertKind, StoryStatus, PRIORITY_MAX, PRIORITY_MIN};
use crate::core::state::{admit_key, command_key, CommandFact, Doc, Op, RosterFact, Target, View};
use crate::core::trust::Signer;
use crate::core::{resolve_command, Core, Job};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use smol_str::SmolStr;
use std::collections::BTreeMap;

/// The mesh's one operator (a test name: its key derives from it).
pub const OPERATOR: &str = "OP";
/// How often the operator attends to the mesh once the faults stop.
pub const ATTEND_MS: u64 = 250;
/// Most request-changes, and most unblocks, one run issues (each adds steps to a story).
pub const MAX_SEND_BACKS: usize = 2;
/// The fraction of backlog stories labelled `approval` (their plans wait for a human).
const APPROVAL_RATE: f64 = 0.3;
/// The fraction whose simulated results report a confidence under the trigger's 40:
/// every result needs a human before the gate after it (implement, merge).
const LOW_CONFIDENCE_RATE: f64 = 0.15;
/// How long a closed pause (or assignment) is still taken to hold nodes back: a resume
/// written through a node that crashed reaches the others when it is back (a restart
/// within 4 s, then its join).
const HOLD_SLACK_MS: u64 = 6_000;

/// What the operator holds back: a story (paused or assigned), a node, or everything.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Hold {
    Story(String),
    Assigned(String),
    Node(String),
    All,
}

/// One stretch of a hold: from (true time), the highest `at_ms` of the commands that
/// opened or renewed it, and when a command that wins over all of them undid it.
#[derive(Debug, Clone)]
struct Stretch {
    from: u64,
    max_at: u64,
    to: Option<u64>,
}

/// The operator: its generator, its budgets, and what it signed (ghost state).
#[derive(Debug)]
pub(super) struct Operator {
    rng: StdRng,
    cancels: usize,
    send_backs: usize,
    unblocks: usize,
    /// The highest `at_ms` it ever signed.
    last_at: u64,
    holds: BTreeMap<Hold, Vec<Stretch>>,
    /// Commands written, drafts its node refused, and pauses or resumes that did not
    /// take in the view of the node they were written through (an earlier command on
    /// the target was signed on a clock ahead of this one).
    pub(super) issued: u64,
    pub(super) refused: u64,
    pub(super) outvoted: u64,
}

impl Operator {
    pub(super) fn new(seed: u64) -> Operator {
        Operator {
            rng: StdRng::seed_from_u64(seed ^ 0x57ee_0b5e_57ee_0b5e),
            cancels: 0,
            send_backs: 0,
            unblocks: 0,
            last_at: 0,
            holds: BTreeMap::new(),
            issued: 0,
            refused: 0,
            outvoted: 0,
        }
    }

    /// A random draft command on what `view` shows, or none (nothing to do it on, or a
    /// budget spent). `names`: the nodes; `running`: the stories the node runs now.
    fn draft(
        &mut self,
        view: &View,
        names: &[String],
        running: &[String],
        cfg: &SimConfig,
    ) -> Option<(Target, Op)> {
        let rng = &mut self.rng;
        let keys: Vec<&SmolStr> = view.stories.keys().collect();
        let any_story = |rng: &mut StdRng| -> Option<Target> {
            let k = keys.get(rng.gen_range(0..keys.len().max(1)))?;
            Some(Target::Story {
                story: k.to_string(),
            })
        };
        // A story that matches, else none.
        let pick = |rng: &mut StdRng, f: &dyn Fn(&crate::core::state::StoryView) -> bool| {
            let fit: Vec<&SmolStr> = view
                .stories
                .values()
                .filter(|s| f(s))
                .map(|s| &s.key)
                .collect();
            fit.get(rng.gen_range(0..fit.len().max(1)))
                .map(|k| Target::Story {
                    story: k.to_string(),
                })
        };
        let node = |rng: &mut StdRng| Target::Node {
            peer: names[rng.gen_range(0..names.len())].clone(),
        };
        let reason = "sim".to_string();
        let roll = rng.gen_range(0..100u32);
        Some(match roll {
            0..=14 => (any_story(rng)?, Op::Pause { reason }),
            15..=26 => {
                let t = pick(rng, &|s| s.more.paused.is_some()).or_else(|| any_story(rng))?;
                (t, Op::Resume)
            }
            27..=34 => (node(rng), Op::Pause { reason }),
            35..=42 => {
                let paused: Vec<&String> = view.steering.nodes.keys().collect();
                let t = match paused.get(rng.gen_range(0..paused.len().max(1))) {
                    Some(p) => Target::Node { peer: (*p).clone() },
                    None => node(rng),
                };
                (t, Op::Resume)
            }
            43..=47 => (Target::All, Op::Pause { reason }),
            48..=54 => (Target::All, Op::Resume),
            55..=61 => (
                any_story(rng)?,
                Op::Prioritize {
                    priority: rng.gen_range(PRIORITY_MIN..=PRIORITY_MAX.min(20)),
                },
            ),
            // Rarely: at most one story in eight is cancelled; half of the time one the
            // node runs (its work must stop before it lands anything).
            62..=66 if self.cancels < cfg.stories.div_ceil(8) && rng.gen_bool(0.5) => {
                self.cancels += 1;
                let here = running.get(rng.gen_range(0..running.len().max(1)));
                let t = match here.filter(|_| rng.gen_bool(0.5)) {
                    Some(story) => Target::Story {
                        story: story.clone(),
                    },
                    None => any_story(rng)?,
                };
                (t, Op::Cancel { reason })
            }
            67..=72 => (
                any_story(rng)?,
                Op::Context {
                    text: format!("note {}", rng.gen_range(0..1000u32)),
                },
            ),
            73..=79 => {
                let to = rng
                    .gen_bool(0.75)
                    .then(|| names[rng.gen_range(0..names.len())].clone());
                (
                    any_story(rng)?,
                    Op::Assign {
                        node: to,
                        role: None,
                    },
                )
            }
            80..=87 => {
                let t = pick(rng, &|s| !s.more.attention.is_empty())?;
                let Target::Story { story } = &t else {
                    return None;
                };
                let s = view.stories.get(story.as_str())?;
                match s
                    .more
                    .attention
                    .iter()
                    .find(|a| a.kind != AlertKind::Blocked)
                {
                    // All open gate items (the node fills them in).
                    Some(_) if rng.gen_bool(0.8) => (t, Op::Approve { items: Vec::new() }),
                    _ => {
                        let a = &s.more.attention[rng.gen_range(0..s.more.attention.len())];
                        let item = a.id.clone();
                        (t, Op::Dismiss { item })
                    }
                }
            }
            88..=93 if self.send_backs < MAX_SEND_BACKS => {
                let t = pick(rng, &|s| !s.history.is_empty())?;
                self.send_backs += 1;
                let text = "another pass, please".to_string();
                // The node fills in the result it sends back.
                (
                    t,
                    Op::RequestChanges {
                        result: String::new(),
                        text,
                    },
                )
            }
            94.. if self.unblocks < MAX_SEND_BACKS => {
                let t = pick(rng, &|s| s.status == StoryStatus::Blocked)?;
                self.unblocks += 1;
                let (phase, round) = (crate::core::model::Phase::Research, 0);
                (
                    t,
                    Op::Unblock {
                        phase,
                        round,
                        grant: 1,
                    },
                )
            }
            _ => return None,
        })
    }

    /// Records a command written at `now` (true time) in the holds it opens or undoes.
    fn record(&mut self, now: u64, fact: &CommandFact) {
        self.last_at = self.last_at.max(fact.at_ms);
        let (hold, opens) = match (&fact.target, &fact.op) {
            (Target::All, Op::Pause { .. }) => (Hold::All, true),
            (Target::All, _) => (Hold::All, false),
            (Target::Node { peer }, op) => {
                (Hold::Node(peer.clone()), matches!(op, Op::Pause { .. }))
            }
            (Target::Story { story }, Op::Pause { .. }) => (Hold::Story(story.clone()), true),
            (Target::Story { story }, Op::Resume) => (Hold::Story(story.clone()), false),
            (Target::Story { story }, Op::Assign { node, role }) => (
                Hold::Assigned(story.clone()),
                node.is_some() || role.is_some(),
            ),
            _ => return,
        };
        let stretches = self.holds.entry(hold).or_default();
        let open = stretches.last_mut().filter(|s| s.to.is_none());
        match (open, opens) {
            (Some(s), true) => s.max_at = s.max_at.max(fact.at_ms),
            (None, true) => stretches.push(Stretch {
                from: now,
                max_at: fact.at_ms,
                to: None,
            }),
            // Undone only by a command ordered after every one that opened it.
            (Some(s), false) if fact.at_ms > s.max_at => s.to = Some(now),
            _ => {}
        }
    }

    /// Whether the operator may have held `node` back from `story` at some time in
    /// [from, to]: the story paused or assigned, the node or the mesh paused.
    pub(super) fn held_back(&self, node: &str, story: &str, from: u64, to: u64) -> bool {
        [
            Hold::Story(story.to_string()),
            Hold::Assigned(story.to_string()),
            Hold::Node(node.to_string()),
            Hold::All,
        ]
        .iter()
        .filter_map(|h| self.holds.get(h))
        .flatten()
        .any(|s| s.from <= to && s.to.is_none_or(|end| end + HOLD_SLACK_MS >= from))
    }
}

/// A document of the run: closed (the operator's) when the run steers.
pub(super) fn closed(doc: Doc, cfg: &SimConfig) -> Doc {
    if cfg.closed() {
        doc.with_operators([OPERATOR.to_string()].into())
    } else {
        doc
    }
}

/// A node describes itself in the document at every start, as the node shell does
/// (`node/<peer>`: operators name nodes by it). Only when the run steers: the runs of
/// before never wrote it.
pub(super) fn announce(core: &mut Core, cfg: &SimConfig) {
    // (As a real node always does: a new epoch is cut only with every announced node.)
    if cfg.closed() || cfg.epoch_after > 0 {
        core.announce_node("sim");
    }
}

impl Sim {
    /// Node0 carries the operator's admission of every node (before anyone connects);
    /// then every node describes itself.
    pub(super) fn admit_all(&mut self) {
        if self.operator.is_none() {
            // (No roster: with epochs on, the nodes still describe themselves.)
            for i in 0..self.nodes.len() {
                if let Some(core) = self.nodes[i].core.as_mut() {
                    announce(core, &self.cfg);
                }
                self.drain(i);
            }
            return;
        }
        let signer = Signer::for_test(OPERATOR);
        for name in self.names.clone() {
            let key = admit_key(&name);
            let fact = RosterFact {
                peer: name.clone(),
                note: "admitted by the simulator's operator".into(),
                at_ms: 0,
            };
            let Ok(json) = serde_json::to_string(&fact) else {
                continue;
            };
            let sealed = signer.seal(&key, &json);
            if let Err(e) = self.write_signed(0, &key, &sealed) {
                self.violation(format!("node0 refused the admission of {name}: {e}"));
            }
        }
        // (Only node0 has the roster yet: the others' descriptions are refused, as a
        // real node's are when it starts before its admission reached it.)
        for i in 0..self.nodes.len() {
            if let Some(core) = self.nodes[i].core.as_mut() {
                announce(core, &self.cfg);
            }
            self.drain(i);
        }
        self.set_budget();
    }

    /// The operator's part of the run's schedule: the labels that gate part of the
    /// backlog, the moments it gives commands, and its attending from `heal` on.
    pub(super) fn plan_steering(&mut self, heal: u64) {
        let Some(op) = self.operator.as_mut().filter(|_| self.cfg.steer) else {
            return;
        };
        for (new, _) in &mut self.backlog {
            if op.rng.gen_bool(APPROVAL_RATE) {
                new.labels
                    .push(crate::core::state::APPROVAL_LABEL.to_string());
            }
            if op.rng.gen_bool(LOW_CONFIDENCE_RATE) {
                let label = crate::core::sim_handoff::CONFIDENCE_LABEL;
                new.labels.push(format!("{label}30"));
            }
        }
        let mut times = Vec::new();
        let mut t = 200;
        while t < self.cfg.chaos_ms {
            t += op.rng.gen_range(300..1_200);
            times.push(t);
        }
        for t in times {
            self.at(t, Ev::Command);
        }
        self.at(heal, Ev::Attend);
    }

    /// An operator's sealed fact written through node `i` as the node shell writes it
    /// (`durable_write`): appended and flushed before it is acknowledged.
    pub(super) fn write_signed(
        &mut self,
        i: usize,
        key: &str,
        sealed: &str,
    ) -> Result<String, String> {
        self.drain(i);
        let Some(core) = self.nodes[i].core.as_mut() else {
            return Err("node down".into());
        };
        core.begin_durable_write();
        let res = core.put_signed(key, sealed);
        let chunks = core.take_write_chunks();
        core.commit_durable_write();
        let now = self.now;
        let store = &mut self.nodes[i].store;
        for c in chunks {
            if self.cfg.storage_faults {
                store.append(now, c);
            } else {
                store.durable.push(c);
            }
        }
        store.flush();
        self.drain(i);
        res
    }

    /// Nodes the operator can reach: up, not frozen, not stopping.
    fn reachable(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.up(i) && !self.nodes[i].paused && self.nodes[i].handover.is_none())
            .collect()
    }

    /// The operator gives one random command through a random node it can reach.
    pub(super) fn command(&mut self) {
        let nodes = self.reachable();
        let names = self.names.clone();
        let Some(op) = self.operator.as_mut() else {
            return;
        };
        let Some(&i) = nodes.get(op.rng.gen_range(0..nodes.len().max(1))) else {
            return;
        };
        let now = self.now;
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let view = core.view();
        let running: Vec<String> = core
            .held(now)
            .into_iter()
            .filter(|h| h.running)
            .map(|h| h.story)
            .collect();
        let Some((target, op)) = op.draft(&view, &names, &running, &self.cfg) else {
            return;
        };
        let at_ms = self.wall(i);
        self.give(i, target, op, at_ms);
    }

    /// Once the faults stop: every pause the node's view shows is resumed and every open
    /// gate item approved, signed past everything signed before.
    pub(super) fn attend(&mut self) {
        let nodes = self.reachable();
        let Some(op) = self.operator.as_mut() else {
            return;
        };
        let Some(&i) = nodes.get(op.rng.gen_range(0..nodes.len().max(1))) else {
            return;
        };
        let floor = op.last_at + 1;
        let Some(view) = self.nodes[i].core.as_mut().map(|c| c.view()) else {
            return;
        };
        let mut todo: Vec<(Target, Op)> = Vec::new();
        if view.steering.all.is_some() {
            todo.push((Target::All, Op::Resume));
        }
        for peer in view.steering.nodes.keys() {
            todo.push((Target::Node { peer: peer.clone() }, Op::Resume));
        }
        for s in view.stories.values() {
            let story = || Target::Story {
                story: s.key.to_string(),
            };
            if s.more.paused.is_some() {
                todo.push((story(), Op::Resume));
            }
            if s.more
                .attention
                .iter()
                .any(|a| a.kind != AlertKind::Blocked)
            {
                todo.push((story(), Op::Approve { items: Vec::new() }));
            }
        }
        for (target, op) in todo {
            let at_ms = self.wall(i).max(floor);
            self.give(i, target, op, at_ms);
        }
        let next = self.now + ATTEND_MS;
        self.at(next, Ev::Attend);
    }

    /// Resolves, signs and writes one command through node `i`.
    fn give(&mut self, i: usize, target: Target, op: Op, at_ms: u64) {
        let Some(view) = self.nodes[i].core.as_mut().map(|c| c.view()) else {
            return;
        };
        let draft = CommandFact { target, op, at_ms };
        let fact = match resolve_command(&view, draft.clone()) {
            Ok(f) => f,
            Err(why) => {
                if let Some(o) = self.operator.as_mut() {
                    o.refused += 1;
                }
                self.note(|| format!("node{i} refused {}: {why}", draft.describe()));
                return;
            }
        };
        let Ok(json) = serde_json::to_string(&fact) else {
            return;
        };
        let key = command_key(OPERATOR, &json);
        let sealed = Signer::for_test(OPERATOR).seal(&key, &json);
        match self.write_signed(i, &key, &sealed) {
            Ok(what) => self.note(|| format!("node{i} operator: {what} (at {at_ms})")),
            Err(e) => {
                self.violation(format!(
                    "node{i} refused the operator's {}: {e}",
                    fact.describe()
                ));
                return;
            }
        }
        let now = self.now;
        let after = self.nodes[i].core.as_mut().map(|c| c.view());
        let Some(o) = self.operator.as_mut() else {
            return;
        };
        o.issued += 1;
        o.record(now, &fact);
        // Did a pause or resume take in this node's view?
        let paused = after.as_ref().and_then(|v| match &fact.target {
            Target::All => Some(v.steering.all.is_some()),
            Target::Node { peer } => Some(v.steering.nodes.contains_key(peer)),
            Target::Story { story } => v
                .stories
                .get(story.as_str())
                .map(|s| s.more.paused.is_some()),
        });
        let wanted = match fact.op {
            Op::Pause { .. } => Some(true),
            Op::Resume => Some(false),
            _ => None,
        };
        if wanted.is_some() && paused.is_some() && wanted != paused {
            o.outvoted += 1;
        }
    }

    /// A job starts on node `i`: the operator's invariant holds (the node's view has
    /// neither the story cancelled, paused or held at its gate, nor the node or the
    /// mesh paused), then the job runs. A broken job queue (`broken_job_queue`) starts
    /// it half a phase later without asking the core again.
    pub(super) fn start_or_queue(&mut self, i: usize, job: Box<Job>) {
        if self.cfg.broken_job_queue {
            let (t, incarnation) = (self.now + self.cfg.phase_ms / 2, self.nodes[i].incarnation);
            self.at(
                t,
                Ev::StartLate {
                    node: i,
                    incarnation,
                    job,
                },
            );
            return;
        }
        self.check_start(i, &job);
        self.start_work(i, job);
    }

    /// The broken job queue starts a job it queued (if its node did not restart since).
    pub(super) fn start_late(&mut self, i: usize, incarnation: u64, job: Box<Job>) {
        if self.up(i) && self.nodes[i].incarnation == incarnation {
            self.check_start(i, &job);
            self.start_work(i, job);
        }
    }

    fn check_start(&mut self, i: usize, job: &Job) {
        let Some(view) = self.nodes[i].core.as_mut().map(|c| c.view()) else {
            return;
        };
        let s = view.stories.get(job.story.as_str());
        let why = if let Some(c) = s.and_then(|s| s.more.cancelled.as_ref()) {
            format!("the story cancelled (at {})", c.at_ms)
        } else if let Some(p) = s.and_then(|s| s.more.paused.as_ref()) {
            format!("the story paused (at {})", p.at_ms)
        } else if let Some(p) = view.steering.node_paused(&self.names[i]) {
            let whom = if view.steering.all.is_some() {
                "the mesh"
            } else {
                "the node"
            };
            format!("{whom} paused (at {})", p.at_ms)
        } else if s.is_some_and(|s| s.held && s.next_phase == Some(job.phase)) {
            "the story held for an approval".to_string()
        } else {
            return;
        };
        self.violation(format!(
            "node{i} started {} {} round {} though its view has {why}",
            job.display_id, job.phase, job.round
        ));
    }

    /// Node `i` is about to land `story` at the origin: its view must not have it
    /// cancelled.
    pub(super) fn check_landing(&mut self, i: usize, story: &str) {
        let cancelled = self.nodes[i].core.as_mut().map(|c| c.view()).and_then(|v| {
            v.stories
                .get(story)
                .map(|s| (s.id.clone(), s.more.cancelled.clone()))
        });
        if let Some((id, Some(c))) = cancelled {
            self.violation(format!(
                "node{i} landed {id}, which its view has cancelled (at {})",
                c.at_ms
            ));
        }
    }
}
