//! The run's world: the virtual clock's event queue, the virtual network (delays,
//! duplicates, drops, partitions), the nodes' lifecycles (crash, clean stop, restart,
//! pause, skewed wall clock) and carrying out each core's effects.

use super::store::{SimStore, Tail, FLUSH_EVERY_MS};
use super::{core_config, guards, Crash, Ev, Msg, Node, Sim, HANDOVER_MAX_MS, TEAR_RATE};
use super::{cost, Mode, Origin, SimConfig, Titles};
use crate::core::lease::Resource;
use crate::core::model::Topic;
use crate::core::state::Doc;
use crate::core::trust::Signer;
use crate::core::{Core, Effect, Input, Job, JobFailure};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};

impl Sim {
    pub(super) fn new(seed: u64, cfg: SimConfig) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let names: Vec<String> = (0..cfg.nodes).map(|i| format!("node{i}")).collect();
        let mut nodes = Vec::new();
        // Every wall clock is off true time by up to 40% of the drift bound, so any two
        // are within it.
        let drift = i64::try_from(cfg.lease.max_clock_drift_ms * 2 / 5).unwrap_or(0);
        for name in &names {
            let actor: [u8; 16] = rng.gen();
            let doc = super::steer::closed(Doc::new(actor).with_test_names(), &cfg)
                .with_signer(Signer::for_test(name))
                .vouching_from(super::config::vouch_from(seed));
            let mut core = Core::new(name.clone(), core_config(&cfg), doc, 1);
            let mut offset = 0;
            if cfg.stops_guards_clocks {
                offset = rng.gen_range(-drift..=drift);
                core.set_guards(guards(&cfg, false));
            }
            let mut store = SimStore::default();
            if cfg.storage_faults {
                store.reopen(rng.gen_range(1..=FLUSH_EVERY_MS));
            }
            nodes.push(Node {
                core: Some(core),
                store,
                lost_writes: false,
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
        let cfg_count_frames = cfg.count_frames;
        let origin = Origin::new(cfg.fence_rule);
        let operator = cfg.closed().then(|| super::steer::Operator::new(seed));
        Sim {
            cfg,
            seed,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            names,
            groups,
            origin,
            pending: BTreeMap::new(),
            probes: BTreeMap::new(),
            next_req: 1,
            violations: Vec::new(),
            trace: Vec::new(),
            events: 0,
            tokens: Vec::new(),
            crashes: Vec::new(),
            starts: Vec::new(),
            healed_at: None,
            epoch: None,
            checked: Vec::new(),
            moving_since: Vec::new(),
            moves: 0,
            joins: 0,
            late: None,
            join_on_move: None,
            pauses: Vec::new(),
            running: Vec::new(),
            running_on: BTreeMap::new(),
            frames_acked: Vec::new(),
            acked_at: Vec::new(),
            acked_claims: Vec::new(),
            own_checked: BTreeSet::new(),
            restarts: Vec::new(),
            claim_known: BTreeMap::new(),
            shutdowns: 0,
            skewed_ticks: 0,
            forgeries: 0,
            backlog: Vec::new(),
            keys: Vec::new(),
            acked: Vec::new(),
            aborted: Vec::new(),
            acked_keys: BTreeMap::new(),
            lost_tails: 0,
            torn_tails: 0,
            operator,
            spent: BTreeMap::new(),
            ran_out: false,
            traffic: cost::Traffic {
                parts: cfg_count_frames.then(cost::FrameParts::default),
                ..Default::default()
            },
        }
    }
    pub(super) fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    pub(super) fn note(&mut self, f: impl FnOnce() -> String) {
        if self.cfg.trace {
            let line = format!("{:>7} {}", self.now, f());
            self.trace.push(line);
        }
    }

    pub(super) fn violation(&mut self, what: String) {
        let line = format!("t={} {what}", self.now);
        if self.cfg.trace {
            self.trace.push(format!("{:>7} VIOLATION {what}", self.now));
        }
        if !self.violations.contains(&line) {
            self.violations.push(line);
        }
    }

    /// Node `i`'s wall clock now.
    pub(super) fn wall(&self, i: usize) -> u64 {
        u64::try_from(i64::try_from(self.now).unwrap_or(i64::MAX) + self.nodes[i].offset)
            .unwrap_or(0)
    }

    pub(super) fn up(&self, i: usize) -> bool {
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
        self.traffic.count(&msg);
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
    /// The node named `name` (`node{i}`): a lookup, not a walk over 1,000 names per
    /// message.
    fn index_of(&self, name: &str) -> Option<usize> {
        let i: usize = name.strip_prefix("node")?.parse().ok()?;
        (self.names.get(i)? == name).then_some(i)
    }

    pub(super) fn drain(&mut self, i: usize) {
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
                    self.flush_before_send(i);
                    let Some(j) = self.index_of(&to) else {
                        continue;
                    };
                    let req = self.next_req;
                    self.next_req += 1;
                    self.pending.insert(req, (i, j));
                    self.send(i, j, Msg::SyncReq { req, data });
                    let t = self.now + self.cfg.sync_timeout_ms;
                    self.at(t, Ev::SyncTimeout { req });
                }
                Effect::Respond { reply, data } => {
                    self.flush_before_send(i);
                    if let Some(&(requester, _)) = self.pending.get(&reply) {
                        self.send(i, requester, Msg::SyncResp { req: reply, data });
                    }
                }
                Effect::Probe { to, data } => {
                    let Some(j) = self.index_of(&to) else {
                        continue;
                    };
                    let req = self.next_req;
                    self.next_req += 1;
                    self.probes.insert(req, i);
                    self.send(i, j, Msg::Probe { req, data });
                }
                Effect::ProbeAnswer { reply, data } => {
                    if let Some(requester) = self.probes.remove(&reply) {
                        self.send(i, requester, Msg::ProbeAnswer { data });
                    }
                }
                // Every simulated node can reach every other: nothing to look for.
                Effect::Discover => {}
                Effect::Persist { chunk } => self.persist(i, chunk),
                Effect::Rebase(r) => {
                    // Atomic and flushed, like the store's batch.
                    let store = &mut self.nodes[i].store;
                    store.flush();
                    store.durable = vec![r.snapshot, r.tail];
                    store.durable.retain(|c| !c.is_empty());
                }
                Effect::BeginEpoch(s) => self.begin_epoch(i, &s),
                Effect::LoadPrevious { epoch } => self.load_previous(i, epoch),
                Effect::PersistEvents { .. } => {}
                Effect::StartWork(job) => {
                    // The job acts outside the node (a merge lands at the origin).
                    if !self.cfg.start_before_flush {
                        self.nodes[i].store.flush();
                    }
                    self.spend(i, &job);
                    self.start_or_queue(i, job)
                }
                // (A broken shell, `broken_cancel`, lets the job run on.)
                Effect::CancelWork { claim } if !self.cfg.broken_cancel => {
                    self.nodes[i].jobs.remove(&claim);
                }
                Effect::CancelWork { .. } => {}
                // Answered a network delay later, as a fetch would be.
                Effect::ProbeOrigin => {
                    let at = self.now + self.cfg.max_delay_ms.max(1);
                    let incarnation = self.nodes[i].incarnation;
                    self.at(
                        at,
                        Ev::Probed {
                            node: i,
                            incarnation,
                        },
                    );
                }
                // The simulated origin keeps no work refs.
                Effect::DropWorkRefs { .. } => {}
                // Every node is admitted (with `steer`; else the mesh is open): the core
                // ignores a peer it refuses until the roster arrives.
                Effect::Refuse { .. } => {}
            }
        }
    }

    /// The shell's rule (`node::runtime`): nothing leaves the node before it is durable.
    /// A sync frame carries this node's heads, which a peer takes as settle evidence (we
    /// hold its claim) and as a base to build on; a job acts outside (a merge lands at
    /// the origin under its claim's token). So everything appended is flushed before a
    /// frame leaves (here) or a job starts (`drain`). Without it a crash could take back a claim a peer
    /// had settled on our word (seed 1577 clean), or a claim whose merge had landed, and
    /// the same fencing token would be handed out again (seed 2362 hostile: the same
    /// holder landed one story twice under one token).
    fn flush_before_send(&mut self, i: usize) {
        if !self.cfg.send_before_flush {
            self.nodes[i].store.flush();
        }
        self.record_acked(i);
    }

    /// The core's own write: appended, durable at the store's next background flush
    /// (at once without storage faults).
    fn persist(&mut self, i: usize, chunk: Vec<u8>) {
        if self.cfg.storage_faults {
            let now = self.now;
            self.nodes[i].store.append(now, chunk);
        } else {
            self.nodes[i].store.durable.push(chunk);
        }
    }

    pub(super) fn start_work(&mut self, i: usize, job: Box<Job>) {
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
    pub(super) fn handle(&mut self, ev: Ev) {
        // A paused node's inputs wait until it resumes (its buffers fill, as a process
        // stopped by SIGSTOP or a long GC pause would).
        let target = match &ev {
            Ev::Tick(i) | Ev::Beat(i) | Ev::AntiEntropy(i) => Some(*i),
            Ev::Deliver { to, .. } => Some(*to),
            Ev::WorkDone { node, .. } | Ev::Probed { node, .. } => Some(*node),
            Ev::UserWrite(k) => Some(*k % self.nodes.len()),
            Ev::Forge(i) => Some(*i),
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
            Ev::Forge(i) => self.forge(i),
            Ev::Command => self.command(),
            Ev::Attend => self.attend(),
            Ev::StartLate {
                node,
                incarnation,
                job,
            } => self.start_late(node, incarnation, job),
            Ev::Tick(i) => {
                let wall = self.wall(i);
                let mut skewed = false;
                if let Some(c) = self.nodes[i].core.as_mut() {
                    let before = c.clock_skew().skewed;
                    c.tick(now, wall);
                    // A node that judges its clock skewed claims nothing.
                    skewed = before && c.clock_skew().skewed;
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
                    c.heartbeat(now, wall);
                    let t = now + self.cfg.membership.heartbeat_ms;
                    self.at(t, Ev::Beat(i));
                }
                self.drain(i);
            }
            Ev::AntiEntropy(i) => {
                let pick: u64 = self.rng.gen();
                if let Some(c) = self.nodes[i].core.as_mut() {
                    c.anti_entropy(now, pick);
                    self.at(now + self.cfg.anti_entropy_ms, Ev::AntiEntropy(i));
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
                    Msg::Probe { req, data } => Input::Probe {
                        from: from_name,
                        data,
                        reply: req,
                    },
                    Msg::ProbeAnswer { data } => Input::ProbeAnswer {
                        from: from_name,
                        data,
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
                let outcome = if self.cfg.remote {
                    self.remote_outcome(node, &job)
                } else {
                    self.outcome(node, &job).map_err(JobFailure::Work)
                };
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
            Ev::Probed { node, incarnation } => {
                if self.nodes[node].incarnation != incarnation {
                    return;
                }
                let answer = if self.origin.is_down(now) {
                    Err("cannot reach the origin (simulated outage)".to_string())
                } else {
                    Ok(())
                };
                if let Some(c) = self.nodes[node].core.as_mut() {
                    c.handle(now, Input::OriginProbed(answer));
                }
                self.drain(node);
            }
            Ev::Crash(i) => self.take_down(i, "crash"),
            Ev::UserWrite(k) => self.user_write(k),
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
                let root = self.nodes[i].store.root;
                let loaded = Doc::load_test_names(actor, &[], &self.nodes[i].store.durable)
                    .and_then(|d| match root {
                        Some(r) => d.with_epoch_root(&crate::core::state::ChangeHash(r)),
                        None => Ok(d),
                    });
                let doc = match loaded {
                    Ok(d) => super::steer::closed(d, &self.cfg)
                        .with_signer(Signer::for_test(&self.names[i]))
                        .vouching_from(super::config::vouch_from(self.seed)),
                    Err(e) => {
                        self.violation(format!("node{i} cannot reload what it persisted: {e}"));
                        return;
                    }
                };
                if self.cfg.storage_faults {
                    let first = now + self.rng.gen_range(1..=FLUSH_EVERY_MS);
                    self.nodes[i].store.reopen(first);
                }
                if std::mem::take(&mut self.nodes[i].lost_writes) {
                    // What it saw and never made durable is gone from its view: its
                    // tokens are tracked afresh from what it reloaded.
                    if let Some(t) = self.tokens.get_mut(i) {
                        t.clear();
                    }
                }
                if let Some(c) = self.acked_claims.get_mut(i) {
                    *c = usize::MAX;
                }
                self.nodes[i].incarnation += 1;
                let inc = now.max(1) + self.nodes[i].incarnation;
                let mut core = Core::new(self.names[i].clone(), core_config(&self.cfg), doc, inc);
                if self.cfg.stops_guards_clocks {
                    core.set_guards(guards(&self.cfg, true));
                }
                // Every write acknowledged here survived the crash.
                let reloaded = core.view().clone();
                let lost: Vec<String> = self
                    .acked
                    .iter()
                    .filter(|(n, title)| {
                        *n == i && !reloaded.holds_story(title, self.acked_keys.get(title))
                    })
                    .map(|(_, title)| title.clone())
                    .collect();
                for title in lost {
                    self.violation(format!(
                        "node{i} lost the acknowledged story {title:?} in a crash"
                    ));
                }
                super::steer::announce(&mut core, &self.cfg);
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
    pub(super) fn take_down(&mut self, i: usize, why: &'static str) {
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
        let settling: Vec<(Resource, u64, u64, String)> = core
            .held(now)
            .iter()
            .filter(|h| !h.running && claims.holds(&h.claim))
            .filter_map(|h| {
                claims
                    .claim(&h.claim)
                    .map(|c| (c, now - h.age_ms, h.claim.clone()))
            })
            .flat_map(|(c, written, id)| {
                c.resources
                    .iter()
                    .filter(|(r, _)| matches!(r, Resource::Story { .. }))
                    .map(move |(r, t)| (r.clone(), *t, written, id.clone()))
            })
            .collect();
        self.note(|| format!("{why} node{i} running {running:?} settling {settling:?}"));
        if why == "crash" && self.cfg.storage_faults {
            match self.nodes[i].store.crash(now, TEAR_RATE, &mut self.rng) {
                Tail::Intact => {}
                tail => {
                    self.lost_tails += 1;
                    self.torn_tails += u64::from(matches!(tail, Tail::Torn(_)));
                    self.nodes[i].lost_writes = true;
                    self.note(|| format!("node{i} lost its unflushed tail: {tail:?}"));
                }
            }
        } else {
            // A clean stop flushes everything first.
            self.nodes[i].store.flush();
        }
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

    pub(super) fn schedule_timers(&mut self, i: usize) {
        let hb = self.cfg.membership.heartbeat_ms;
        let a = self.rng.gen_range(0..hb);
        let b = self.rng.gen_range(0..hb);
        let c = self.rng.gen_range(0..self.cfg.anti_entropy_ms);
        self.at(self.now + a / 4 + 1, Ev::Tick(i));
        self.at(self.now + b + 1, Ev::Beat(i));
        self.at(self.now + c + 1, Ev::AntiEntropy(i));
    }

    pub(super) fn reconnect(&mut self, i: usize) {
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
}
