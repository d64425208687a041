//! The cost model's measurements: what the protocol sends, by kind, counted on the
//! simulator's network (payload bytes: the frames the cores hand their shell; the real
//! transport adds its own framing, see docs/PERFORMANCE.md "Cost model").
//!
//! [`measure`] runs one mesh of `nodes` with the product's timings and no faults: it
//! forms, stays idle for a window (bytes per node per second), then takes story writes
//! one at a time on rotating nodes with no node claiming (bytes per write, over the
//! idle rate, and the time until every node holds it). [`lifecycle`] carries a backlog
//! to merge with the same timings (bytes per story, claims and results included).

use super::*;
use crate::core::lease::LeaseConfig;
use crate::core::membership::MembershipConfig;
use crate::core::SyncFrame;

/// What the network carried, by message kind: (messages, payload bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub beat: (u64, u64),
    pub sync_req: (u64, u64),
    pub sync_resp: (u64, u64),
    pub probe: (u64, u64),
    pub probe_answer: (u64, u64),
    /// Where sync frames' bytes go (only when counting them is asked for).
    pub parts: Option<FrameParts>,
}

/// Sync frames' bytes by field (the rest is the encoding's own: flags, lengths).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameParts {
    /// Automerge's sync messages.
    pub msg: u64,
    /// Changes pushed (eager push, `need` rounds).
    pub push: u64,
    /// Heads named: `covered` answers' heads, `need` lists, `mine`, digests.
    pub heads: u64,
    /// Events and event summaries.
    pub events: u64,
    /// Whole documents for new nodes.
    pub snapshot: u64,
}

impl Traffic {
    pub(super) fn count(&mut self, msg: &Msg) {
        let (slot, len) = match msg {
            Msg::Beat(d) => (&mut self.beat, d.len()),
            Msg::SyncReq { data, .. } => (&mut self.sync_req, data.len()),
            Msg::SyncResp { data, .. } => (&mut self.sync_resp, data.len()),
            Msg::Probe { data, .. } => (&mut self.probe, data.len()),
            Msg::ProbeAnswer { data } => (&mut self.probe_answer, data.len()),
        };
        slot.0 += 1;
        slot.1 += len as u64;
        if let (Some(parts), Msg::SyncReq { data, .. } | Msg::SyncResp { data, .. }) =
            (self.parts.as_mut(), msg)
        {
            let Ok(f) = crate::core::codec::decode::<SyncFrame>(data, usize::MAX) else {
                return;
            };
            parts.msg += f.msg.len() as u64;
            parts.push += f.push.iter().map(|c| c.len() as u64).sum::<u64>();
            let named = f.covered.map_or(0, |c| c.len())
                + f.need.len()
                + usize::from(f.mine.is_some())
                + usize::from(f.heads_digest.is_some());
            parts.heads += 32 * named as u64;
            let events = f.events.len() + usize::from(f.events_have.is_some());
            if events > 0 {
                parts.events += crate::core::codec::encode(&(f.events, f.events_have)).len() as u64;
            }
            parts.snapshot += f.snapshot.map_or(0, |s| s.len() as u64);
        }
    }

    fn kinds(&self) -> [(u64, u64); 5] {
        [
            self.beat,
            self.sync_req,
            self.sync_resp,
            self.probe,
            self.probe_answer,
        ]
    }

    pub fn messages(&self) -> u64 {
        self.kinds().iter().map(|k| k.0).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.kinds().iter().map(|k| k.1).sum()
    }

    /// Sync frames both ways: (messages, bytes).
    pub fn sync(&self) -> (u64, u64) {
        (
            self.sync_req.0 + self.sync_resp.0,
            self.sync_req.1 + self.sync_resp.1,
        )
    }

    /// Probes and their answers: (messages, bytes).
    pub fn probes(&self) -> (u64, u64) {
        (
            self.probe.0 + self.probe_answer.0,
            self.probe.1 + self.probe_answer.1,
        )
    }

    /// What was sent since `before`.
    pub fn since(&self, before: &Traffic) -> Traffic {
        let d = |a: (u64, u64), b: (u64, u64)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1));
        Traffic {
            beat: d(self.beat, before.beat),
            sync_req: d(self.sync_req, before.sync_req),
            sync_resp: d(self.sync_resp, before.sync_resp),
            probe: d(self.probe, before.probe),
            probe_answer: d(self.probe_answer, before.probe_answer),
            parts: match (self.parts, before.parts) {
                (Some(a), Some(b)) => Some(FrameParts {
                    msg: a.msg - b.msg,
                    push: a.push - b.push,
                    heads: a.heads - b.heads,
                    events: a.events - b.events,
                    snapshot: a.snapshot - b.snapshot,
                }),
                (a, _) => a,
            },
        }
    }
}

/// One mesh's costs (see [`measure`]).
#[derive(Debug, Clone)]
pub struct Cost {
    pub nodes: usize,
    /// Virtual time until every node counted every other alive.
    pub formed_ms: Option<u64>,
    pub idle_ms: u64,
    /// Everything sent in the idle window, all nodes.
    pub idle: Traffic,
    pub writes: u64,
    pub write_window_ms: u64,
    /// Everything sent in the writes' windows, all nodes (the idle rate included).
    pub written: Traffic,
    /// Sync sessions the cores opened in the idle window and in the writes' windows.
    pub idle_sessions: u64,
    pub sessions: u64,
    /// Sessions that pushed changes, in the writes' windows (none push while idle).
    pub pushes: u64,
    /// Per write, virtual ms until every node's heads held it (None: one never did).
    pub spread_ms: Vec<Option<u64>>,
}

impl Cost {
    /// Bytes per node per second while idle.
    pub fn idle_bytes_per_node_s(&self) -> f64 {
        self.idle.bytes() as f64 * 1000.0 / self.idle_ms.max(1) as f64 / self.nodes.max(1) as f64
    }

    /// Messages per node per second while idle.
    pub fn idle_msgs_per_node_s(&self) -> f64 {
        self.idle.messages() as f64 * 1000.0 / self.idle_ms.max(1) as f64 / self.nodes.max(1) as f64
    }

    /// The writes' windows over the idle window.
    fn scale(&self) -> f64 {
        (self.writes * self.write_window_ms) as f64 / self.idle_ms.max(1) as f64
    }

    /// Sync sessions one write opened, over the idle rate (anti-entropy).
    pub fn sessions_per_write(&self) -> f64 {
        (self.sessions as f64 - self.idle_sessions as f64 * self.scale()).max(0.0)
            / self.writes.max(1) as f64
    }

    /// What one write added over the idle rate: (messages, bytes), of `pick`'s kinds.
    pub fn per_write(&self, pick: impl Fn(&Traffic) -> (u64, u64)) -> (f64, f64) {
        let w = self.writes.max(1) as f64;
        let scale = self.scale();
        let (m, b) = pick(&self.written);
        let (im, ib) = pick(&self.idle);
        (
            (m as f64 - im as f64 * scale).max(0.0) / w,
            (b as f64 - ib as f64 * scale).max(0.0) / w,
        )
    }
}

/// The product's timings (`config.toml` defaults), no faults, no storage faults.
pub fn product_config(nodes: usize) -> SimConfig {
    let mut c = SimConfig::new(Mode::Clean);
    c.nodes = nodes;
    c.chaos_ms = 0;
    c.storage_faults = false;
    c.membership = MembershipConfig::default();
    c.lease = LeaseConfig::default();
    c.anti_entropy_ms = 5_000;
    c.sync_timeout_ms = 10_000;
    c.phase_ms = 1_000;
    c
}

/// Forms a mesh of `nodes`, measures `idle_ms` of idle traffic, then `writes` story
/// writes, one every `window_ms` on rotating nodes, with no node claiming (capacity 0).
pub fn measure(seed: u64, nodes: usize, idle_ms: u64, writes: u64, window_ms: u64) -> Cost {
    let mut cfg = product_config(nodes);
    cfg.capacity = 0;
    cfg.stories = 0;
    let mut sim = Sim::connected(seed, cfg);
    // Formed: every node counts every other alive (checked once a virtual second).
    let mut formed_ms = None;
    let give_up = 120_000;
    let mut t = 1_000;
    while t <= give_up {
        sim.run_until(t);
        if (0..nodes).all(|i| {
            sim.nodes[i]
                .core
                .as_ref()
                .is_some_and(|c| c.membership().alive_iter(t).count() + 1 >= nodes)
        }) {
            formed_ms = Some(t);
            break;
        }
        t += 1_000;
    }
    // Let the formation's sessions and beats die down before the idle window.
    let quiet = sim.now + 10_000;
    sim.run_until(quiet);
    let before = sim.traffic;
    let sessions_idle = sessions(&sim);
    sim.run_until(quiet + idle_ms);
    let idle_sessions = sessions(&sim) - sessions_idle;
    let idle = sim.traffic.since(&before);
    let before = sim.traffic;
    let sessions_before = sessions(&sim);
    let pushes_before = pushes(&sim);
    let mut spread_ms = Vec::new();
    for w in 0..writes {
        let start = sim.now;
        let writer = sim.write_story(format!("cost {w}"));
        let target = sim.nodes[writer].core.as_ref().map(|c| c.digest());
        spread_ms.push(sim.run_until_all_hold(target, start + window_ms));
        sim.run_until(start + window_ms);
    }
    let written = sim.traffic.since(&before);
    Cost {
        nodes,
        formed_ms,
        idle_ms,
        idle,
        writes,
        write_window_ms: window_ms,
        written,
        idle_sessions,
        sessions: sessions(&sim) - sessions_before,
        pushes: pushes(&sim) - pushes_before,
        spread_ms,
    }
}

/// What carrying a backlog cost (see [`lifecycle`]).
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Sent from the first story's write until every story finished.
    pub traffic: Traffic,
    pub merged: usize,
    /// Claims written (settled or lost at settle), all nodes.
    pub claims: u64,
    /// Virtual ms from the first write until every node agreed all finished.
    pub took_ms: u64,
    pub violations: Vec<String>,
    /// The first node's document at the end, saved whole, and the seed of a new epoch
    /// cut from it (`Doc::seed`: merged stories' work left behind), in bytes.
    pub doc_bytes: usize,
    pub seed_bytes: usize,
}

/// A backlog of `stories` (no files, no dependencies), written on rotating nodes once
/// the mesh of `nodes` formed, carried to merge with the product's timings and no faults;
/// the invariants are checked after every event.
pub fn lifecycle(seed: u64, nodes: usize, stories: usize) -> Lifecycle {
    let cfg = product_config(nodes);
    let mut sim = Sim::connected(seed, cfg);
    // Formation (every pair syncs in full on connecting) is not the backlog's cost.
    sim.run_until(15_000);
    let before = sim.traffic;
    let start = sim.now;
    for k in 0..stories {
        sim.write_story(format!("story {k}"));
    }
    let deadline = start + 60_000 + stories as u64 * 10_000;
    while let Some(node) = sim.step(deadline) {
        sim.check(node);
        if !sim.violations.is_empty() || (sim.events.is_multiple_of(64) && sim.all_settled()) {
            break;
        }
    }
    let traffic = sim.traffic.since(&before);
    let took_ms = sim.now - start;
    let (merged, ..) = sim.finish();
    let claims = sim
        .nodes
        .iter()
        .filter_map(|n| n.core.as_ref())
        .flat_map(|c| c.counters().latency.settle.values())
        .map(|h| h.count)
        .sum();
    let (doc_bytes, seed_bytes) = sim
        .nodes
        .iter_mut()
        .find_map(|n| n.core.as_mut())
        .map(|c| {
            let mut doc = c.doc_mut().clone();
            let seed = doc.seed(1).map_or(0, |s| s.bytes.len());
            (doc.save().len(), seed)
        })
        .unwrap_or_default();
    Lifecycle {
        traffic,
        merged,
        claims,
        took_ms,
        violations: sim.violations,
        doc_bytes,
        seed_bytes,
    }
}

fn pushes(sim: &Sim) -> u64 {
    sim.nodes
        .iter()
        .filter_map(|n| n.core.as_ref())
        .map(|c| c.counters().sync_push_sessions)
        .sum()
}

fn sessions(sim: &Sim) -> u64 {
    sim.nodes
        .iter()
        .filter_map(|n| n.core.as_ref())
        .map(|c| c.counters().sync_sessions_started)
        .sum()
}

impl Sim {
    /// A simulator with every node connected to every other, frames counted by field.
    fn connected(seed: u64, mut cfg: SimConfig) -> Sim {
        cfg.count_frames = true;
        let nodes = cfg.nodes;
        let mut sim = Sim::new(seed, cfg);
        for i in 0..nodes {
            sim.schedule_timers(i);
        }
        for i in 0..nodes {
            sim.reconnect(i);
        }
        sim
    }

    /// Adds a story to the backlog and writes it on its node (story k on node k % N,
    /// so writers rotate); returns the writer.
    fn write_story(&mut self, title: String) -> usize {
        let k = self.backlog.len();
        self.backlog.push((
            NewStory {
                title,
                ..Default::default()
            },
            None,
        ));
        self.keys.push(None);
        self.user_write(k);
        k % self.nodes.len()
    }

    /// Handles the next event if it is due by `deadline`: None if none is, else the
    /// one node it could change ([`Ev::node`]).
    fn step(&mut self, deadline: u64) -> Option<Option<usize>> {
        let entry = self.queue.first_entry()?;
        if entry.key().0 > deadline {
            return None;
        }
        let ((time, _), ev) = entry.remove_entry();
        self.now = time;
        self.events += 1;
        let node = ev.node();
        self.handle(ev);
        Some(node)
    }

    /// Handles every event due by `t` (no invariant checks: a cost run has no faults);
    /// the clock ends at `t`.
    fn run_until(&mut self, t: u64) {
        while self.step(t).is_some() {}
        self.now = self.now.max(t);
    }

    /// Runs until every up node's heads digest is `target` (or `deadline`); the virtual
    /// ms that took from now.
    fn run_until_all_hold(&mut self, target: Option<[u8; 32]>, deadline: u64) -> Option<u64> {
        let target = target?;
        let start = self.now;
        let holds = |s: &Sim, i: usize| {
            s.nodes[i]
                .core
                .as_ref()
                .is_none_or(|c| c.digest() == target)
        };
        let mut missing: BTreeSet<usize> =
            (0..self.nodes.len()).filter(|&i| !holds(self, i)).collect();
        while !missing.is_empty() {
            if let Some(to) = self.step(deadline)? {
                if holds(self, to) {
                    missing.remove(&to);
                }
            }
        }
        Some(self.now - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_opens_one_session_per_peer_and_reaches_every_node() {
        let c = measure(1, 6, 20_000, 3, 3_000);
        assert_eq!(c.formed_ms, Some(1_000));
        assert_eq!(c.pushes, 3 * 5, "one push session per peer and write");
        assert!(c.spread_ms.iter().all(Option::is_some), "{:?}", c.spread_ms);
        let (_, bytes) = c.per_write(Traffic::sync);
        assert!(
            bytes > 0.0 && bytes < 5.0 * 1024.0,
            "{bytes} bytes per write"
        );
    }

    #[test]
    fn idle_traffic_per_node_does_not_grow_with_the_mesh() {
        let small = measure(2, 4, 30_000, 0, 0).idle_bytes_per_node_s();
        let large = measure(2, 16, 30_000, 0, 0).idle_bytes_per_node_s();
        assert!(small > 0.0);
        assert!(
            large < small * 1.1,
            "{small:.0} B/s per node at 4, {large:.0} at 16"
        );
    }

    #[test]
    fn a_backlog_carried_after_formation_sends_next_to_no_automerge_messages() {
        let l = lifecycle(3, 4, 8);
        assert!(l.violations.is_empty(), "{:?}", l.violations);
        assert_eq!(l.merged, 8);
        let parts = l.traffic.parts.unwrap_or_default();
        let (_, sync) = l.traffic.sync();
        assert!(parts.push > 0);
        assert!(
            parts.msg * 20 < sync,
            "automerge {} of {sync} sync bytes: pushes name our latest change",
            parts.msg
        );
    }
}
