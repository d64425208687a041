//! Membership: heartbeats in, alive/suspect/dead out. Pure: every call takes the
//! observer's monotonic time in milliseconds; it never reads a clock and never does I/O.
//!
//! Rules (docs/DESIGN.md §4):
//! - alive while heartbeats arrive; suspect after `suspect_after_missed` missed intervals;
//!   dead after `dead_after` of silence;
//! - a heartbeat older than the newest seen from a peer (by incarnation, then sequence) is
//!   ignored, so duplicates and reordering cannot move a peer backwards;
//! - time during which the observer itself did not run (a stall: process paused, laptop
//!   asleep) does not count as a peer's silence;
//! - a clock that appears to go backwards yields an age of zero, never an underflow.

use crate::core::model::Heartbeat;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipConfig {
    pub heartbeat_ms: u64,
    pub suspect_after_missed: u32,
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
    fn suspect_after_ms(&self) -> u64 {
        self.heartbeat_ms * u64::from(self.suspect_after_missed)
    }

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

/// What a heartbeat did to the membership table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// First heartbeat ever seen from this peer.
    New,
    /// A newer heartbeat from a known peer.
    Updated,
    /// A newer heartbeat from a peer that was dead: it is back.
    Revived,
    /// A duplicate or older heartbeat; ignored.
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
    last_seen_ms: u64,
    first_seen_ms: u64,
    reported: PeerState,
    beat: Heartbeat,
    /// The peer said it was leaving (a clean shutdown): dead until a newer beat.
    left: bool,
}

/// A peer as shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub peer: String,
    pub state: PeerState,
    /// Milliseconds since the last heartbeat, on the observer's clock.
    pub last_seen_ago_ms: u64,
    pub roles: Vec<String>,
    pub free_capacity: u32,
    pub heads_digest: String,
}

#[derive(Debug, Clone)]
pub struct Membership {
    cfg: MembershipConfig,
    peers: BTreeMap<String, Entry>,
    last_tick_ms: Option<u64>,
}

impl Membership {
    pub fn new(cfg: MembershipConfig) -> Membership {
        Membership {
            cfg,
            peers: BTreeMap::new(),
            last_tick_ms: None,
        }
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.cfg
    }

    fn state_at(&self, e: &Entry, now_ms: u64) -> PeerState {
        let age = now_ms.saturating_sub(e.last_seen_ms);
        if e.left || age >= self.cfg.dead_after_ms {
            PeerState::Dead
        } else if age >= self.cfg.suspect_after_ms() {
            PeerState::Suspect
        } else {
            PeerState::Alive
        }
    }

    /// Feeds one heartbeat from `peer`, received at `now_ms`.
    pub fn observe(&mut self, peer: &str, beat: &Heartbeat, now_ms: u64) -> Observed {
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
                    },
                );
                Observed::New
            }
            Some(e) => {
                if (beat.incarnation, beat.seq) <= (e.beat.incarnation, e.beat.seq) {
                    return Observed::Stale;
                }
                let was = e.reported;
                e.last_seen_ms = e.last_seen_ms.max(now_ms);
                e.beat = beat.clone();
                e.reported = PeerState::Alive;
                e.left = false;
                if was == PeerState::Dead {
                    Observed::Revived
                } else {
                    Observed::Updated
                }
            }
        }
    }

    /// The peer said it is leaving (a clean shutdown): dead now rather than after
    /// `dead_after` of silence, until a newer heartbeat says otherwise. False if unknown.
    pub fn left(&mut self, peer: &str) -> bool {
        match self.peers.get_mut(peer) {
            Some(e) => {
                e.left = true;
                true
            }
            None => false,
        }
    }

    /// Advances the observer's clock. Returns the state changes since the last tick.
    /// Call it regularly (several times per heartbeat interval).
    pub fn tick(&mut self, now_ms: u64) -> Vec<Transition> {
        if let Some(last) = self.last_tick_ms {
            let gap = now_ms.saturating_sub(last);
            if gap > self.cfg.stall_ms() {
                // We were not running: that silence is ours, not the peers'.
                let credit = gap - self.cfg.heartbeat_ms;
                for e in self.peers.values_mut() {
                    e.last_seen_ms = e.last_seen_ms.saturating_add(credit).min(now_ms);
                }
            }
        }
        self.last_tick_ms = Some(self.last_tick_ms.map_or(now_ms, |l| l.max(now_ms)));
        let mut out = Vec::new();
        let states: Vec<(String, PeerState)> = self
            .peers
            .iter()
            .map(|(p, e)| (p.clone(), self.state_at(e, now_ms)))
            .collect();
        for (peer, state) in states {
            if let Some(e) = self.peers.get_mut(&peer) {
                if e.reported != state {
                    out.push(Transition {
                        peer,
                        from: e.reported,
                        to: state,
                    });
                    e.reported = state;
                }
            }
        }
        out
    }

    pub fn state(&self, peer: &str, now_ms: u64) -> Option<PeerState> {
        self.peers.get(peer).map(|e| self.state_at(e, now_ms))
    }

    pub fn heartbeat(&self, peer: &str) -> Option<&Heartbeat> {
        self.peers.get(peer).map(|e| &e.beat)
    }

    /// When this observer first heard of `peer` (for "fresh from when first seen" rules).
    pub fn first_seen(&self, peer: &str) -> Option<u64> {
        self.peers.get(peer).map(|e| e.first_seen_ms)
    }

    /// Peers currently alive, in id order.
    pub fn alive(&self, now_ms: u64) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(_, e)| self.state_at(e, now_ms) == PeerState::Alive)
            .map(|(p, _)| p.clone())
            .collect()
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
        }
    }

    fn m() -> Membership {
        Membership::new(MembershipConfig {
            heartbeat_ms: 1000,
            suspect_after_missed: 3,
            dead_after_ms: 5000,
        })
    }

    /// Ticks every 250 ms from `from` to `to` inclusive, collecting transitions.
    fn run(m: &mut Membership, from: u64, to: u64) -> Vec<(u64, Transition)> {
        let mut out = vec![];
        let mut t = from;
        while t <= to {
            out.extend(m.tick(t).into_iter().map(|x| (t, x)));
            t += 250;
        }
        out
    }

    #[test]
    fn silent_peer_goes_suspect_then_dead_at_the_bounds() {
        let mut m = m();
        m.tick(0);
        assert_eq!(m.observe("p", &beat(1, 1), 0), Observed::New);
        let tr = run(&mut m, 250, 6000);
        assert_eq!(tr.len(), 2);
        assert_eq!((tr[0].0, tr[0].1.to), (3000, PeerState::Suspect));
        assert_eq!((tr[1].0, tr[1].1.to), (5000, PeerState::Dead));
    }

    #[test]
    fn heartbeats_keep_a_peer_alive_and_revive_a_dead_one() {
        let mut m = m();
        m.tick(0);
        m.observe("p", &beat(1, 1), 0);
        for (i, t) in (1000..=10_000).step_by(1000).enumerate() {
            assert!(run(&mut m, t - 750, t).is_empty());
            m.observe("p", &beat(1, 2 + i as u64), t);
        }
        run(&mut m, 10_250, 16_000);
        assert_eq!(m.state("p", 16_000), Some(PeerState::Dead));
        // A restart (new incarnation, seq from 1) revives it.
        assert_eq!(m.observe("p", &beat(2, 1), 16_000), Observed::Revived);
        assert_eq!(m.state("p", 16_000), Some(PeerState::Alive));
    }

    #[test]
    fn duplicate_and_reordered_heartbeats_are_stale() {
        let mut m = m();
        m.observe("p", &beat(5, 10), 0);
        assert_eq!(m.observe("p", &beat(5, 10), 100), Observed::Stale);
        assert_eq!(m.observe("p", &beat(5, 9), 200), Observed::Stale);
        assert_eq!(m.observe("p", &beat(4, 99), 300), Observed::Stale);
        // Stale beats do not refresh liveness.
        assert_eq!(m.snapshot(300)[0].last_seen_ago_ms, 300);
        assert_eq!(m.observe("p", &beat(5, 11), 400), Observed::Updated);
    }

    #[test]
    fn observer_stall_does_not_kill_everyone() {
        let mut m = m();
        m.tick(0);
        m.observe("p", &beat(1, 1), 0);
        m.observe("q", &beat(1, 1), 0);
        // The observer is paused for 60 s, then ticks again.
        let tr = m.tick(60_000);
        assert!(tr.is_empty(), "stall must not be blamed on peers: {tr:?}");
        assert_eq!(m.state("p", 60_000), Some(PeerState::Alive));
        // If they then stay silent, they die on the normal schedule after the stall.
        let tr = run(&mut m, 60_250, 66_000);
        assert_eq!(
            tr.iter().filter(|(_, t)| t.to == PeerState::Dead).count(),
            2
        );
        assert!(tr
            .iter()
            .filter(|(_, t)| t.to == PeerState::Dead)
            .all(|(t, _)| *t >= 64_000));
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
    }

    #[test]
    fn alive_lists_only_alive_peers() {
        let mut m = m();
        m.observe("a", &beat(1, 1), 0);
        m.observe("b", &beat(1, 1), 4_000);
        assert_eq!(m.alive(4_000), vec!["b".to_string()]);
        assert_eq!(m.state("zz", 0), None);
    }
}
