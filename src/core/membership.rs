//! Membership: who is alive, SWIM-style. Pure: every call takes the observer's monotonic
//! time in milliseconds; it never reads a clock and never does I/O.
//!
//! Rules (docs/DESIGN.md §4):
//! - a peer is alive from its first beat (or probe, or answer) until it is suspected;
//!   silence alone is not evidence: a peer publishes its beat only when what it says
//!   changes, and each period this node probes one peer (a shuffled round robin); a
//!   probe unanswered for half a period is a miss and goes again at once, and every
//!   suspect is probed too;
//! - `suspect_after_missed` probes in a row unanswered make the peer suspect here, and
//!   this node names it in its beat; a peer's suspicion counts here too when it is about
//!   the peer's newest beat this node knows (a newer beat refutes it);
//! - a suspect peer is dead `dead_after` after it went silent (the first unanswered probe,
//!   or the silence the suspecter reported, never before this node's own last contact);
//! - any direct contact (a beat from it, its probe, its answer) that is not older than
//!   what this node knows clears a suspicion and revives a dead peer;
//! - a beat older than the newest seen from a peer (by incarnation, then sequence) is
//!   ignored, so duplicates and reordering cannot move a peer backwards;
//! - time during which the observer itself did not run (a stall: process paused, laptop
//!   asleep) does not count as a peer's silence;
//! - a clock that appears to go backwards yields an age of zero, never an underflow.

use crate::core::model::{Heartbeat, Suspicion};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipConfig {
    /// The probe period.
    pub heartbeat_ms: u64,
    /// Unanswered probes in a row before a peer is suspect.
    pub suspect_after_missed: u32,
    /// From the start of a suspect peer's silence to its death.
    pub dead_after_ms: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            heartbeat_ms: 1000,
            suspect_after_missed: 3,
            dead_after_ms: 5000,
        }
    }
}

impl MembershipConfig {
    /// A gap between ticks longer than this means the observer stalled.
    fn stall_ms(&self) -> u64 {
        (self.heartbeat_ms * 2).max(self.dead_after_ms / 2)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    Alive,
    Suspect,
    Dead,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Alive => "alive",
            PeerState::Suspect => "suspect",
            PeerState::Dead => "dead",
        }
    }
}

/// What a beat (published, or carried by a probe or its answer) did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// First beat ever seen from this peer.
    New,
    /// A newer beat from a known peer.
    Updated,
    /// The same beat again, straight from the peer (a probe or its answer): contact.
    Refreshed,
    /// A beat from a peer that was dead: it is back.
    Revived,
    /// An older beat; ignored.
    Stale,
}

/// A state change reported by [`Membership::tick`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub peer: String,
    pub from: PeerState,
    pub to: PeerState,
}

#[derive(Debug, Clone)]
struct Entry {
    /// The last direct contact, on the observer's clock.
    last_seen_ms: u64,
    first_seen_ms: u64,
    reported: PeerState,
    beat: Heartbeat,
    /// The peer said it was leaving (a clean shutdown): dead until a newer beat.
    left: bool,
    /// Probes of this node's unanswered in a row.
    missed: u32,
    /// Since when the peer is silent, as far as this node knows (its first unanswered
    /// probe, or a suspecter's report); `None` while answers come.
    silent_since: Option<u64>,
    /// Our wall clock at receipt of its latest beats minus their send times (newest last).
    clock: VecDeque<i64>,
    /// The smallest of them.
    clock_min: Option<i64>,
    /// Suspected (here or by a peer, about its newest beat): dead once silent long enough.
    suspected: bool,
}

/// A peer as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub peer: String,
    pub state: PeerState,
    /// Milliseconds since the last direct contact, on the observer's clock.
    pub last_seen_ago_ms: u64,
    pub roles: Vec<String>,
    pub free_capacity: u32,
    pub heads_digest: String,
}

/// [`Membership::clock_median`]'s last answer, with the `clock_gen` it holds for. (A
/// lock, not a `Cell`: the node's core moves between threads.)
#[derive(Debug, Default)]
struct ClockMemo(Mutex<Option<(u64, Option<i64>, usize)>>);

impl ClockMemo {
    fn get(&self) -> Option<(u64, Option<i64>, usize)> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, v: Option<(u64, Option<i64>, usize)>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }
}

impl Clone for ClockMemo {
    fn clone(&self) -> Self {
        ClockMemo(Mutex::new(self.get()))
    }
}

#[derive(Debug, Clone)]
pub struct Membership {
    cfg: MembershipConfig,
    peers: BTreeMap<String, Entry>,
    /// The peers not plainly alive: left, suspected, with a missed probe or a silence
    /// on record, or last reported other than alive. Every other peer is alive and was
    /// reported so, at any time, so the passes that run on every tick and message walk
    /// only these (at 1,000 peers, counting the members on each probe walked all of
    /// them: a quarter of the simulator's time).
    troubled: BTreeSet<String>,
    /// Changes whenever an alive peer's smallest clock sample may have, or a peer may
    /// have become alive or stopped being so: the key of [`Membership::clock_median`]'s
    /// memo (the node asks for it several times a tick; at 1,000 peers each answer was
    /// a walk and a sort).
    clock_gen: u64,
    clock_memo: ClockMemo,
    last_tick_ms: Option<u64>,
    /// Probes sent and not answered yet: peer → when.
    probing: BTreeMap<String, u64>,
    /// This round's remaining round-robin targets (popped from the back).
    round: Vec<String>,
    rounds: u64,
}

impl Membership {
    pub fn new(cfg: MembershipConfig) -> Membership {
        Membership {
            cfg,
            peers: BTreeMap::new(),
            troubled: BTreeSet::new(),
            clock_gen: 0,
            clock_memo: ClockMemo::default(),
            last_tick_ms: None,
            probing: BTreeMap::new(),
            round: Vec::new(),
            rounds: 0,
        }
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.cfg
    }

    fn state_at(&self, e: &Entry, now_ms: u64) -> PeerState {
        match e.silent_since {
            _ if e.left => PeerState::Dead,
            Some(t) if e.suspected && now_ms.saturating_sub(t) >= self.cfg.dead_after_ms => {
                PeerState::Dead
            }
            _ if e.suspected => PeerState::Suspect,
            _ => PeerState::Alive,
        }
    }

    /// Puts `peer` in [`Membership::troubled`] or takes it out, after a change to its entry.
    fn retrack(&mut self, peer: &str) {
        let Some(e) = self.peers.get(peer) else {
            return;
        };
        let troubled = e.left
            || e.suspected
            || e.missed > 0
            || e.silent_since.is_some()
            || e.reported != PeerState::Alive;
        if !troubled {
            self.troubled.remove(peer);
        } else if !self.troubled.contains(peer) {
            self.troubled.insert(peer.to_string());
        }
    }

    /// A beat straight from `peer`: published, or carried by its probe or its answer.
    pub fn observe(&mut self, peer: &str, beat: &Heartbeat, now_ms: u64) -> Observed {
        self.probing.remove(peer);
        match self.peers.get_mut(peer) {
            None => {
                self.peers.insert(
                    peer.to_string(),
                    Entry {
                        last_seen_ms: now_ms,
                        first_seen_ms: now_ms,
                        reported: PeerState::Alive,
                        beat: beat.clone(),
                        left: false,
                        missed: 0,
                        silent_since: None,
                        suspected: false,
                        clock: VecDeque::new(),
                        clock_min: None,
                    },
                );
                self.clock_gen += 1;
                Observed::New
            }
            Some(e) => {
                let (new, known) = (
                    (beat.incarnation, beat.seq),
                    (e.beat.incarnation, e.beat.seq),
                );
                // A leaver's last words do not bring it back; only a newer beat does.
                if new < known || (new == known && e.left) {
                    return Observed::Stale;
                }
                let was = e.reported;
                if e.left || e.suspected {
                    self.clock_gen += 1;
                }
                e.last_seen_ms = e.last_seen_ms.max(now_ms);
                e.beat = beat.clone();
                e.reported = PeerState::Alive;
                e.left = false;
                e.missed = 0;
                e.silent_since = None;
                e.suspected = false;
                self.retrack(peer);
                if was == PeerState::Dead {
                    Observed::Revived
                } else if new == known {
                    Observed::Refreshed
                } else {
                    Observed::Updated
                }
            }
        }
    }

    pub fn left(&mut self, peer: &str) -> bool {
        match self.peers.get_mut(peer) {
            Some(e) => {
                e.left = true;
                self.clock_gen += 1;
                self.retrack(peer);
                true
            }
            None => false,
        }
    }

    /// A peer's suspicion (from its beat). Counts when it is about the newest beat this
    /// node knows of the suspected peer; returns true if it made the peer suspect here.
    pub fn suspect(&mut self, s: &Suspicion, now_ms: u64) -> bool {
        let Some(e) = self.peers.get_mut(&s.peer) else {
            return false;
        };
        if (s.incarnation, s.seq) < (e.beat.incarnation, e.beat.seq) || e.left {
            return false;
        }
        // Silent since the suspecter's last answer, but not before our own last contact.
        let since = now_ms
            .saturating_sub(s.silent_ms)
            .max(e.last_seen_ms)
            .min(now_ms);
        e.silent_since = Some(e.silent_since.map_or(since, |t| t.min(since)));
        let newly = !e.suspected;
        e.suspected = true;
        self.clock_gen += 1;
        self.retrack(&s.peer);
        newly
    }

    /// Peers to probe now. A probe unanswered for half a period is a miss, and is sent
    /// again at once (with every suspect not being probed yet); `period`: also the next
    /// of a shuffled round robin over all known peers (the dead included: a healed
    /// partition shows that way). Called on every tick and at each period.
    pub fn due_probes(&mut self, me: &str, now_ms: u64, period: bool) -> Vec<String> {
        let stalled = self
            .last_tick_ms
            .is_some_and(|l| now_ms.saturating_sub(l) > self.cfg.stall_ms());
        if stalled {
            // Sent before a stall of ours: the answer may be waiting unread.
            self.probing.clear();
        }
        let timeout = self.cfg.heartbeat_ms / 2;
        let overdue: Vec<(String, u64)> = self
            .probing
            .iter()
            .filter(|(_, sent)| now_ms.saturating_sub(**sent) >= timeout)
            .map(|(p, sent)| (p.clone(), *sent))
            .collect();
        for (peer, sent) in overdue {
            self.probing.remove(&peer);
            self.missed(&peer, sent);
        }
        let mut out: Vec<String> = self
            .troubled_entries()
            .filter(|(p, e)| {
                !e.left && (e.missed > 0 || e.suspected) && !self.probing.contains_key(*p)
            })
            .filter(|(_, e)| self.state_at(e, now_ms) != PeerState::Dead)
            .map(|(p, _)| p.to_string())
            .collect();
        if period {
            if self.round.is_empty() {
                self.rounds += 1;
                let mut all: Vec<(u64, String)> = self
                    .peers
                    .keys()
                    .map(|p| {
                        let mut h = std::hash::DefaultHasher::new();
                        (me, self.rounds, p).hash(&mut h);
                        (h.finish(), p.clone())
                    })
                    .collect();
                all.sort();
                self.round = all.into_iter().map(|(_, p)| p).collect();
            }
            while let Some(p) = self.round.pop() {
                if self.peers.contains_key(&p) {
                    if !out.contains(&p) && !self.probing.contains_key(&p) {
                        out.push(p);
                    }
                    break;
                }
            }
        }
        for p in &out {
            self.probing.insert(p.clone(), now_ms);
        }
        out
    }

    /// A probe sent now (outside the period: a new connection, a lost one).
    pub fn probing(&mut self, peer: &str, now_ms: u64) {
        self.probing.entry(peer.to_string()).or_insert(now_ms);
    }

    /// `peer` answered this node's probe without a beat (a passive observer, a node
    /// stopping): not a member, and not silent either.
    pub fn answered(&mut self, peer: &str) {
        self.probing.remove(peer);
    }

    /// The probe of `peer` failed at once (no connection): missed now.
    pub fn probe_failed(&mut self, peer: &str) {
        if let Some(sent) = self.probing.remove(peer) {
            self.missed(peer, sent);
        }
    }

    fn missed(&mut self, peer: &str, sent_ms: u64) {
        let after = self.cfg.suspect_after_missed.max(1);
        if let Some(e) = self.peers.get_mut(peer) {
            e.missed = e.missed.saturating_add(1);
            e.silent_since.get_or_insert(sent_ms);
            e.suspected |= e.missed >= after;
            self.clock_gen += 1;
        }
        self.retrack(peer);
    }

    /// A sample of our wall clock minus `peer`'s (from its beat); the last `keep` are kept.
    pub fn clock_sample(&mut self, peer: &str, offset: i64, keep: usize) {
        if let Some(e) = self.peers.get_mut(peer) {
            e.clock.push_back(offset);
            while e.clock.len() > keep {
                e.clock.pop_front();
            }
            let min = e.clock.iter().min().copied();
            if min != e.clock_min {
                e.clock_min = min;
                self.clock_gen += 1;
            }
        }
    }

    /// The median over alive peers with clock samples of each one's smallest sample, and
    /// how many there are (`Core::clock_skew`). (Alive is neither left nor suspected,
    /// whatever the time: see `state_at`.)
    pub fn clock_median(&self) -> (Option<i64>, usize) {
        if let Some((gen, median, n)) = self.clock_memo.get() {
            if gen == self.clock_gen {
                // Debug builds (the tests, their simulator runs) check the memo.
                #[cfg(debug_assertions)]
                {
                    self.clock_memo.set(None);
                    assert_eq!(self.clock_median(), (median, n), "stale clock memo");
                }
                return (median, n);
            }
        }
        let mut samples: Vec<i64> = self
            .peers
            .values()
            .filter(|e| !e.left && !e.suspected)
            .filter_map(|e| e.clock_min)
            .collect();
        let n = samples.len();
        let median = match n {
            0 => None,
            _ => {
                let (below, hi, _) = samples.select_nth_unstable(n / 2);
                let hi = *hi;
                match below.iter().max() {
                    Some(&lo) if n.is_multiple_of(2) => {
                        Some(((i128::from(lo) + i128::from(hi)) / 2) as i64)
                    }
                    _ => Some(hi),
                }
            }
        };
        self.clock_memo.set(Some((self.clock_gen, median, n)));
        (median, n)
    }

    /// Whether an alive peer other than `peer` names it suspect, at this incarnation and
    /// sequence number, in its latest beat.
    pub fn named_by_another(&self, peer: &str, incarnation: u64, seq: u64, now_ms: u64) -> bool {
        self.peers.iter().any(|(p, e)| {
            p != peer
                && self.state_at(e, now_ms) == PeerState::Alive
                && e.beat
                    .suspects
                    .iter()
                    .any(|s| s.peer == peer && (s.incarnation, s.seq) == (incarnation, seq))
        })
    }

    /// What this node says about the peers it suspects (for its beat); the dead left out.
    pub fn suspicions(&self, now_ms: u64) -> Vec<Suspicion> {
        let after = self.cfg.suspect_after_missed.max(1);
        self.troubled_entries()
            .filter(|(_, e)| e.missed >= after && self.state_at(e, now_ms) == PeerState::Suspect)
            .map(|(p, e)| Suspicion {
                peer: p.to_string(),
                incarnation: e.beat.incarnation,
                seq: e.beat.seq,
                silent_ms: e.silent_since.map_or(0, |t| now_ms.saturating_sub(t)),
            })
            .collect()
    }

    pub fn tick(&mut self, now_ms: u64) -> Vec<Transition> {
        if let Some(last) = self.last_tick_ms {
            let gap = now_ms.saturating_sub(last);
            if gap > self.cfg.stall_ms() {
                let credit = gap - self.cfg.heartbeat_ms;
                // (A silence on record makes a peer troubled.)
                for p in &self.troubled {
                    if let Some(t) = self.peers.get_mut(p).and_then(|e| e.silent_since.as_mut()) {
                        *t = t.saturating_add(credit).min(now_ms);
                    }
                }
            }
        }
        self.last_tick_ms = Some(self.last_tick_ms.map_or(now_ms, |l| l.max(now_ms)));
        let mut out = Vec::new();
        // Only a troubled peer can be other than alive, or have been reported so.
        let states: Vec<(String, PeerState)> = self
            .troubled_entries()
            .map(|(p, e)| (p.to_string(), self.state_at(e, now_ms)))
            .collect();
        for (peer, state) in states {
            if let Some(e) = self.peers.get_mut(&peer) {
                if e.reported != state {
                    out.push(Transition {
                        peer: peer.clone(),
                        from: e.reported,
                        to: state,
                    });
                    e.reported = state;
                }
            }
            self.retrack(&peer);
        }
        #[cfg(debug_assertions)]
        self.check_troubled(now_ms);
        out
    }

    /// The troubled peers' entries, in peer order.
    fn troubled_entries(&self) -> impl Iterator<Item = (&str, &Entry)> + '_ {
        self.troubled
            .iter()
            .filter_map(|p| self.peers.get(p).map(|e| (p.as_str(), e)))
    }

    /// Debug builds (the tests and their simulator runs): every peer left out of
    /// [`Membership::troubled`] is alive and was reported so.
    #[cfg(debug_assertions)]
    fn check_troubled(&self, now_ms: u64) {
        for (p, e) in &self.peers {
            if !self.troubled.contains(p) {
                assert_eq!(self.state_at(e, now_ms), PeerState::Alive, "{p} untracked");
                assert_eq!(e.reported, PeerState::Alive, "{p} untracked");
            }
        }
    }

    pub fn state(&self, peer: &str, now_ms: u64) -> Option<PeerState> {
        self.peers.get(peer).map(|e| self.state_at(e, now_ms))
    }

    pub fn heartbeat(&self, peer: &str) -> Option<&Heartbeat> {
        self.peers.get(peer).map(|e| &e.beat)
    }

    pub fn first_seen(&self, peer: &str) -> Option<u64> {
        self.peers.get(peer).map(|e| e.first_seen_ms)
    }

    /// Whether `peer` has an entry (entries are never removed).
    pub fn knows(&self, peer: &str) -> bool {
        self.peers.contains_key(peer)
    }

    /// How many peers are alive: all but the troubled ones not alive (walks only those).
    pub fn alive_count(&self, now_ms: u64) -> usize {
        let not_alive = self
            .troubled_entries()
            .filter(|(_, e)| self.state_at(e, now_ms) != PeerState::Alive)
            .count();
        self.peers.len() - not_alive
    }

    /// The troubled peers with their states, in peer order; every other peer is alive.
    pub fn troubled_states(&self, now_ms: u64) -> impl Iterator<Item = (&str, PeerState)> + '_ {
        self.troubled_entries()
            .map(move |(p, e)| (p, self.state_at(e, now_ms)))
    }

    /// How many peers are alive or suspect (not dead).
    pub fn not_dead(&self, now_ms: u64) -> usize {
        let dead = self
            .troubled_entries()
            .filter(|(_, e)| self.state_at(e, now_ms) == PeerState::Dead)
            .count();
        self.peers.len() - dead
    }

    pub fn alive(&self, now_ms: u64) -> Vec<String> {
        self.alive_iter(now_ms).map(str::to_string).collect()
    }

    /// The alive peers, without copying their ids (hot paths run this every tick).
    pub fn alive_iter(&self, now_ms: u64) -> impl Iterator<Item = &str> + '_ {
        self.peers
            .iter()
            .filter(move |(_, e)| self.state_at(e, now_ms) == PeerState::Alive)
            .map(|(p, _)| p.as_str())
    }

    /// Every known peer with its state, in peer order (no allocation: the node publishes
    /// this after every step it takes).
    pub fn states(&self, now_ms: u64) -> impl Iterator<Item = (&str, PeerState)> + '_ {
        self.peers
            .iter()
            .map(move |(p, e)| (p.as_str(), self.state_at(e, now_ms)))
    }

    /// The alive peers with their latest beats.
    pub fn alive_beats(&self, now_ms: u64) -> impl Iterator<Item = (&str, &Heartbeat)> + '_ {
        self.peers
            .iter()
            .filter(move |(_, e)| self.state_at(e, now_ms) == PeerState::Alive)
            .map(|(p, e)| (p.as_str(), &e.beat))
    }

    pub fn is_dead(&self, peer: &str, now_ms: u64) -> bool {
        self.state(peer, now_ms) == Some(PeerState::Dead)
    }

    pub fn snapshot(&self, now_ms: u64) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(p, e)| PeerStatus {
                peer: p.clone(),
                state: self.state_at(e, now_ms),
                last_seen_ago_ms: now_ms.saturating_sub(e.last_seen_ms),
                roles: e.beat.roles.clone(),
                free_capacity: e.beat.free_capacity,
                heads_digest: hex::encode(&e.beat.heads_digest[..8]),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(incarnation: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            incarnation,
            seq,
            roles: vec![],
            free_capacity: 1,
            heads_digest: [0; 32],
            sent_at_ms: 0,
            claims: vec![],
            suspects: vec![],
            members: 1,
            epoch: None,
        }
    }

    fn m() -> Membership {
        Membership::new(MembershipConfig {
            heartbeat_ms: 1000,
            suspect_after_missed: 3,
            dead_after_ms: 5000,
        })
    }

    /// One probe period every second from `from` to `to` inclusive, ticking every 250 ms
    /// and answering no probe; collects transitions.
    fn silent(m: &mut Membership, from: u64, to: u64) -> Vec<(u64, Transition)> {
        let mut out = vec![];
        let mut t = from;
        while t <= to {
            m.due_probes("me", t, t.is_multiple_of(1000));
            out.extend(m.tick(t).into_iter().map(|x| (t, x)));
            t += 250;
        }
        out
    }

    fn suspicion(peer: &str, seq: u64, silent_ms: u64) -> Suspicion {
        Suspicion {
            peer: peer.into(),
            incarnation: 1,
            seq,
            silent_ms,
        }
    }

    #[test]
    fn an_unanswering_peer_goes_suspect_then_dead_at_the_bounds() {
        let mut m = m();
        m.tick(0);
        assert_eq!(m.observe("p", &beat(1, 1), 0), Observed::New);
        // First probed at 1 s; missed at 1.5, 2, 2.5 s (each sent again at once): suspect;
        // dead 5 s after the first.
        let tr = silent(&mut m, 250, 8000);
        assert_eq!(tr.len(), 2, "{tr:?}");
        assert_eq!((tr[0].0, tr[0].1.to), (2500, PeerState::Suspect));
        assert_eq!((tr[1].0, tr[1].1.to), (6000, PeerState::Dead));
        assert!(m.suspicions(8000).is_empty(), "the dead are not named");
    }

    #[test]
    fn silence_alone_is_not_death_and_answers_keep_a_peer_alive() {
        let mut m = m();
        m.tick(0);
        m.observe("p", &beat(1, 1), 0);
        // Nobody probes it (not this node's turn): alive however long.
        for t in (250..60_000).step_by(250) {
            assert!(m.tick(t).is_empty());
        }
        // Probed every period and answering each time: alive.
        for t in (60_000..70_000).step_by(1000) {
            assert_eq!(m.due_probes("me", t, true), vec!["p".to_string()]);
            assert_eq!(m.observe("p", &beat(1, 1), t + 3), Observed::Refreshed);
            for q in [250, 500, 750] {
                assert!(m.due_probes("me", t + q, false).is_empty());
                assert!(m.tick(t + q).is_empty());
            }
        }
    }

    #[test]
    fn the_round_robin_probes_every_peer_once_per_round_and_retries_the_silent() {
        let mut m = m();
        for p in ["a", "b", "c", "d"] {
            m.observe(p, &beat(1, 1), 0);
        }
        let mut seen = vec![];
        for t in 1..=4u64 {
            let got = m.due_probes("me", t * 1000, true);
            assert_eq!(got.len(), 1, "{got:?}");
            m.observe(&got[0], &beat(1, 1), t * 1000 + 5);
            seen.push(got[0].clone());
        }
        seen.sort();
        assert_eq!(seen, ["a", "b", "c", "d"]);
        // Between periods nothing, until a probe goes unanswered for half a period: then
        // it is sent again at once.
        let first = m.due_probes("me", 5000, true);
        assert!(m.due_probes("me", 5250, false).is_empty());
        assert_eq!(m.due_probes("me", 5500, false), first);
        // The next period: the round robin's next beside the one still unanswered.
        let next = m.due_probes("me", 6000, true);
        assert_eq!(next.len(), 2, "{next:?}");
        assert_eq!(m.due_probes("me", 6000, false), Vec::<String>::new());
    }

    #[test]
    fn a_peers_suspicion_counts_from_the_silence_it_reports_and_contact_clears_it() {
        let mut m = m();
        m.tick(0);
        m.observe("p", &beat(1, 4), 0);
        assert!(m.suspect(&suspicion("p", 4, 3000), 3500));
        assert_eq!(m.state("p", 3500), Some(PeerState::Suspect));
        // Silent since 500 (3 500 − 3 000): dead at 5 500.
        assert_eq!(m.state("p", 5499), Some(PeerState::Suspect));
        assert_eq!(m.state("p", 5500), Some(PeerState::Dead));
        // Its answer, same beat: back.
        for t in (250..=5500).step_by(250) {
            m.tick(t);
        }
        assert_eq!(m.observe("p", &beat(1, 4), 5600), Observed::Revived);
        assert_eq!(m.state("p", 9000), Some(PeerState::Alive));
        // Never before our own last contact.
        assert!(m.suspect(&suspicion("p", 4, 60_000), 9000));
        assert_eq!(m.state("p", 10_599), Some(PeerState::Suspect));
        assert_eq!(m.state("p", 10_600), Some(PeerState::Dead));
    }

    #[test]
    fn a_refuted_suspicion_arriving_late_is_ignored() {
        let mut m = m();
        m.observe("p", &beat(1, 4), 0);
        // The peer refuted (a newer beat) before this old suspicion arrived.
        assert_eq!(m.observe("p", &beat(1, 5), 100), Observed::Updated);
        assert!(!m.suspect(&suspicion("p", 4, 3000), 200));
        assert_eq!(m.state("p", 60_000), Some(PeerState::Alive));
        assert!(!m.suspect(&suspicion("nobody", 1, 0), 200));
    }

    #[test]
    fn duplicate_and_reordered_heartbeats_are_stale() {
        let mut m = m();
        m.observe("p", &beat(5, 10), 0);
        assert_eq!(m.observe("p", &beat(5, 10), 100), Observed::Refreshed);
        assert_eq!(m.observe("p", &beat(5, 9), 200), Observed::Stale);
        assert_eq!(m.observe("p", &beat(4, 99), 300), Observed::Stale);
        // Stale beats do not refresh liveness.
        assert_eq!(m.snapshot(300)[0].last_seen_ago_ms, 200);
        assert_eq!(m.observe("p", &beat(5, 11), 400), Observed::Updated);
        // A leaver is dead until a newer beat, whatever repeats its last one.
        assert!(m.left("p"));
        assert_eq!(m.observe("p", &beat(5, 11), 500), Observed::Stale);
        assert_eq!(m.state("p", 500), Some(PeerState::Dead));
        assert_eq!(m.observe("p", &beat(6, 1), 600), Observed::Updated);
        assert_eq!(m.state("p", 600), Some(PeerState::Alive));
    }

    #[test]
    fn observer_stall_does_not_kill_everyone() {
        let mut m = m();
        m.tick(0);
        m.observe("p", &beat(1, 1), 0);
        m.observe("q", &beat(1, 1), 0);
        m.due_probes("me", 1000, true);
        m.tick(1000);
        // The observer is paused for 60 s with its probes out, then runs again.
        m.due_probes("me", 61_000, true);
        assert!(m.tick(61_000).is_empty());
        let tr = m.tick(61_250);
        assert!(tr.is_empty(), "stall must not be blamed on peers: {tr:?}");
        assert_eq!(m.state("p", 61_250), Some(PeerState::Alive));
        // If they then stay silent, they die on the normal schedule after the stall.
        let tr = silent(&mut m, 61_500, 75_000);
        let dead: Vec<u64> = tr
            .iter()
            .filter(|(_, t)| t.to == PeerState::Dead)
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(dead.len(), 2, "{tr:?}");
        assert!(dead.iter().all(|t| *t >= 66_000), "{dead:?}");
    }

    #[test]
    fn clock_going_backwards_never_underflows() {
        let mut m = m();
        m.tick(10_000);
        m.observe("p", &beat(1, 1), 10_000);
        assert!(m.tick(5_000).is_empty());
        assert_eq!(m.state("p", 5_000), Some(PeerState::Alive));
        assert_eq!(m.snapshot(5_000)[0].last_seen_ago_ms, 0);
        // A late beat stamped with an earlier local time does not move last_seen back.
        m.observe("p", &beat(1, 2), 9_000);
        assert_eq!(m.snapshot(10_000)[0].last_seen_ago_ms, 0);
        assert!(m.suspect(&suspicion("p", 2, u64::MAX), 3_000));
        assert_eq!(m.state("p", 3_000), Some(PeerState::Suspect));
    }

    #[test]
    fn alive_lists_only_alive_peers() {
        let mut m = m();
        m.observe("a", &beat(1, 1), 0);
        m.observe("b", &beat(1, 1), 0);
        m.suspect(&suspicion("a", 1, 0), 0);
        assert_eq!(m.alive(4_000), vec!["b".to_string()]);
        assert_eq!(m.state("zz", 0), None);
    }
}
