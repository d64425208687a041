//! The mesh-wide event timeline: a bounded, deduplicated log of [`Event`]s in time order,
//! merged from this node's own events, gossip, peers' logs (exchanged on sync) and disk.
//! Pure: no clock, no I/O.
//!
//! Identity: an event is `(node, seq)`. A node's shared events number from its
//! incarnation × 1000 (so a restart never reuses a number, like claim ids) and its
//! local-only observations (peer joined, peer dead) carry [`LOCAL_SEQ_BIT`], so the seqs
//! of a node's shared events stay contiguous and a peer's summary of them stays short.
//!
//! Order: by `(at_ms, node, seq)` — the origin's wall clock, then the id — so every node
//! that holds the same events lists them the same way. When full, the oldest by that
//! order goes first.
//!
//! Exchange: a node asks a peer for what it lacks with an [`EventsHave`] (per origin, the
//! seq ranges it holds, and a floor below which it would drop events anyway); the peer
//! answers with up to [`MAX_EVENTS_PER_FRAME`] events not covered, oldest first, and
//! whether more remain. Events from peers are hostile input: [`accept_remote`] validates
//! and cuts them; duplicates merge by id (first copy wins).

use crate::core::model::{Event, EventKind, MAX_EVENT_DETAIL};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Set in the seq of a node's local-only events (never shared).
pub const LOCAL_SEQ_BIT: u64 = 1 << 63;
/// Most events in one sync answer.
pub const MAX_EVENTS_PER_FRAME: usize = 1000;
/// Most seq ranges in one summary (a longer one is cut: the peer resends a little).
pub const MAX_SUMMARY_RANGES: usize = 2048;
/// Events stamped further ahead of our wall clock than this are refused.
pub const MAX_EVENT_FUTURE_MS: u64 = 24 * 3600 * 1000;
/// Longest node id or story id accepted in an event from a peer.
pub const MAX_EVENT_ID_LEN: usize = 128;

/// The time-order key of an event.
type Key = (u64, String, u64);

fn key(ev: &Event) -> Key {
    (ev.at_ms, ev.node.clone(), ev.seq)
}

/// What a node holds, sent to a peer to ask for the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsHave {
    /// The requester's log is full: it would drop anything at or before this key.
    pub floor: Option<(u64, String, u64)>,
    /// Per origin node, the inclusive seq ranges held, ascending.
    pub held: Vec<(String, Vec<(u64, u64)>)>,
}

/// Whether an event is a local observation (peer joined or dead) that never leaves its
/// node.
pub fn is_local_only(ev: &Event) -> bool {
    ev.seq & LOCAL_SEQ_BIT != 0 || matches!(ev.kind, EventKind::PeerJoined | EventKind::PeerDead)
}

/// Cuts an event's detail to [`MAX_EVENT_DETAIL`] bytes (at a char boundary).
pub fn cut_detail(ev: &mut Event) {
    if ev.detail.len() > MAX_EVENT_DETAIL {
        let mut cut = MAX_EVENT_DETAIL;
        while !ev.detail.is_char_boundary(cut) {
            cut -= 1;
        }
        ev.detail.truncate(cut);
    }
}

/// Validates an event that came from a peer (gossip or sync) against this node's wall
/// clock `now_wall`: it must name a node, carry short ids, be shareable, and not come
/// from the far future (it would sort after everything and never be evicted). Cuts its
/// detail. `None`: refused.
pub fn accept_remote(mut ev: Event, now_wall: u64) -> Option<Event> {
    if ev.node.is_empty()
        || ev.node.len() > MAX_EVENT_ID_LEN
        || ev.story.len() > MAX_EVENT_ID_LEN
        || is_local_only(&ev)
        || ev.at_ms > now_wall.saturating_add(MAX_EVENT_FUTURE_MS)
    {
        return None;
    }
    cut_detail(&mut ev);
    Some(ev)
}

/// Roughly the bytes an event takes on the wire.
fn approx_size(ev: &Event) -> usize {
    ev.node.len() + ev.story.len() + ev.detail.len() + 48
}

/// The bounded, deduplicated, time-ordered log.
#[derive(Debug, Clone)]
pub struct Timeline {
    cap: usize,
    /// Time order: event and its arrival position.
    by_time: BTreeMap<Key, (u64, Event)>,
    /// Ids held, with their time key (dedup, summaries).
    by_id: BTreeMap<(String, u64), u64>,
    /// Arrival order: position → time key (for "what is new since").
    arrivals: BTreeMap<u64, Key>,
    last_pos: u64,
    /// The last [`Timeline::summary`], until an insert changes what is held (every
    /// sync session sends one; building it walks every event kept).
    summary_memo: Option<EventsHave>,
}

impl Timeline {
    /// An empty timeline keeping at most `cap` events.
    pub fn new(cap: usize) -> Timeline {
        Timeline {
            cap: cap.max(1),
            by_time: BTreeMap::new(),
            by_id: BTreeMap::new(),
            arrivals: BTreeMap::new(),
            last_pos: 0,
            summary_memo: None,
        }
    }

    pub fn len(&self) -> usize {
        self.by_time.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_time.is_empty()
    }

    /// The arrival position of the newest event (0: none yet). Grows with every insert.
    pub fn last_pos(&self) -> u64 {
        self.last_pos
    }

    /// Whether the event with this id is held.
    pub fn contains(&self, node: &str, seq: u64) -> bool {
        self.by_id.contains_key(&(node.to_string(), seq))
    }

    /// Adds an event; true if it was new and is kept (not a duplicate, not evicted at
    /// once as the oldest of a full log).
    pub fn insert(&mut self, mut ev: Event) -> bool {
        let id = (ev.node.clone(), ev.seq);
        if self.by_id.contains_key(&id) {
            return false;
        }
        cut_detail(&mut ev);
        let k = key(&ev);
        if self.by_time.len() >= self.cap && self.by_time.keys().next().is_some_and(|f| k < *f) {
            return false;
        }
        self.last_pos += 1;
        self.summary_memo = None;
        self.by_id.insert(id, ev.at_ms);
        self.arrivals.insert(self.last_pos, k.clone());
        self.by_time.insert(k, (self.last_pos, ev));
        while self.by_time.len() > self.cap {
            if let Some(((_, node, seq), (pos, _))) = self.by_time.pop_first() {
                self.by_id.remove(&(node, seq));
                self.arrivals.remove(&pos);
            }
        }
        true
    }

    /// Every event in time order with its arrival position, the newest `limit` of them.
    pub fn ordered(&self, limit: usize) -> Vec<(u64, Event)> {
        let skip = self.by_time.len().saturating_sub(limit);
        self.by_time.values().skip(skip).cloned().collect()
    }

    /// Events that arrived after position `after`, in arrival order, at most `limit`.
    pub fn arrived_after(&self, after: u64, limit: usize) -> Vec<(u64, Event)> {
        self.arrivals
            .range(after.saturating_add(1)..)
            .filter_map(|(_, k)| self.by_time.get(k).cloned())
            .take(limit)
            .collect()
    }

    /// The highest seq held from `node` in the shared (`local` false) or local-only
    /// seq space.
    pub fn max_seq(&self, node: &str, local: bool) -> Option<u64> {
        self.by_id
            .range((node.to_string(), 0)..=(node.to_string(), u64::MAX))
            .map(|((_, s), _)| *s)
            .filter(|s| (s & LOCAL_SEQ_BIT != 0) == local)
            .max()
    }

    /// What this log holds, to ask a peer for the rest.
    pub fn summary(&mut self) -> EventsHave {
        if let Some(memo) = &self.summary_memo {
            return memo.clone();
        }
        let mut held: Vec<(String, Vec<(u64, u64)>)> = Vec::new();
        let mut ranges = 0;
        for (node, seq) in self.by_id.keys() {
            if seq & LOCAL_SEQ_BIT != 0 {
                continue;
            }
            match held.last_mut() {
                Some((n, rs)) if n == node => match rs.last_mut() {
                    Some((_, hi)) if hi.checked_add(1) == Some(*seq) => *hi = *seq,
                    _ => {
                        if ranges >= MAX_SUMMARY_RANGES {
                            continue;
                        }
                        ranges += 1;
                        rs.push((*seq, *seq));
                    }
                },
                _ => {
                    if ranges >= MAX_SUMMARY_RANGES {
                        continue;
                    }
                    ranges += 1;
                    held.push((node.clone(), vec![(*seq, *seq)]));
                }
            }
        }
        let floor = if self.by_time.len() >= self.cap {
            self.by_time.keys().next().cloned()
        } else {
            None
        };
        let summary = EventsHave { floor, held };
        self.summary_memo = Some(summary.clone());
        summary
    }

    /// The shareable events a peer that holds `have` lacks, oldest first: at most
    /// `max_events` and about `max_bytes`; true if more remain. `have` is hostile input
    /// (unsorted or overlapping ranges only cost resends).
    pub fn missing(
        &self,
        have: &EventsHave,
        max_events: usize,
        max_bytes: usize,
    ) -> (Vec<Event>, bool) {
        let held: BTreeMap<&str, &[(u64, u64)]> = have
            .held
            .iter()
            .take(MAX_SUMMARY_RANGES)
            .map(|(n, rs)| (n.as_str(), rs.as_slice()))
            .collect();
        // Walk, author by author, only the seqs between the ranges the peer holds (not
        // every event kept: at 1,000 nodes each answer walked the thousand local
        // peer-joined observations, and every event the peer already had).
        let mut lacking: Vec<(u64, &str, u64)> = Vec::new();
        let mut next = self.by_id.keys().next();
        while let Some((node, _)) = next {
            let mut rs: Vec<(u64, u64)> = held
                .get(node.as_str())
                .map(|rs| rs.iter().filter(|(lo, hi)| lo <= hi).copied().collect())
                .unwrap_or_default();
            rs.sort_unstable();
            let mut from = 0u64;
            let mut gaps = Vec::new();
            for (lo, hi) in rs {
                if lo > from {
                    gaps.push((from, lo));
                }
                from = from.max(hi.saturating_add(1));
            }
            gaps.push((from, LOCAL_SEQ_BIT));
            for (lo, end) in gaps.into_iter().filter(|(lo, end)| lo < end) {
                let seqs = self.by_id.range((node.clone(), lo)..(node.clone(), end));
                lacking.extend(seqs.map(|((n, seq), at)| (*at, n.as_str(), *seq)));
            }
            next = self
                .by_id
                .range((
                    std::ops::Bound::Excluded((node.clone(), u64::MAX)),
                    std::ops::Bound::Unbounded,
                ))
                .next()
                .map(|(k, _)| k);
        }
        if let Some((at, node, seq)) = &have.floor {
            lacking.retain(|k| *k > (*at, node.as_str(), *seq));
        }
        lacking.sort_unstable();
        let mut out = Vec::new();
        let mut bytes = 0;
        for (at, node, seq) in lacking {
            let Some((_, ev)) = self.by_time.get(&(at, node.to_string(), seq)) else {
                continue;
            };
            if is_local_only(ev) {
                continue;
            }
            let size = approx_size(ev);
            if out.len() >= max_events || (bytes + size > max_bytes && !out.is_empty()) {
                return (out, true);
            }
            if bytes + size > max_bytes {
                // One event larger than the whole budget: skip it rather than stall.
                continue;
            }
            bytes += size;
            out.push(ev.clone());
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(node: &str, seq: u64, at_ms: u64) -> Event {
        Event {
            node: node.into(),
            seq,
            at_ms,
            kind: EventKind::PhaseStarted,
            story: "S-0001".into(),
            phase: None,
            round: 0,
            detail: format!("{node}#{seq}"),
        }
    }

    fn order(t: &Timeline) -> Vec<(String, u64)> {
        t.ordered(usize::MAX)
            .into_iter()
            .map(|(_, e)| (e.node, e.seq))
            .collect()
    }

    /// Pulls from `from` into `to` until nothing is missing; returns the rounds taken.
    fn pull(to: &mut Timeline, from: &Timeline, per_frame: usize) -> usize {
        for round in 1..100 {
            let (evs, more) = from.missing(&to.summary(), per_frame, 1 << 20);
            for e in evs {
                to.insert(e);
            }
            if !more {
                return round;
            }
        }
        panic!("pull did not finish");
    }

    #[test]
    fn two_logs_merge_in_time_order_without_duplicates() {
        // Each side of a partition saw half the story (and both saw a few events).
        let (mut a, mut b) = (Timeline::new(100), Timeline::new(100));
        for (n, s, t) in [("A", 1, 10), ("A", 2, 30), ("B", 1, 20), ("A", 3, 50)] {
            a.insert(ev(n, s, t));
        }
        for (n, s, t) in [("B", 1, 20), ("B", 2, 40), ("A", 1, 10), ("C", 7, 30)] {
            b.insert(ev(n, s, t));
        }
        // Duplicates merge by id, whatever the copy says.
        assert!(!a.insert(ev("A", 2, 30)));
        assert!(!a.insert(ev("A", 2, 999)));
        pull(&mut a, &b, 2);
        pull(&mut b, &a, 2);
        let want: Vec<(String, u64)> = [("A", 1), ("B", 1), ("A", 2), ("C", 7), ("B", 2), ("A", 3)]
            .iter()
            .map(|(n, s)| (n.to_string(), *s))
            .collect();
        assert_eq!(order(&a), want);
        assert_eq!(order(&b), want);
        // Nothing more to send either way.
        assert!(a.missing(&b.summary(), 10, 1 << 20).0.is_empty());
        assert!(b.missing(&a.summary(), 10, 1 << 20).0.is_empty());
    }

    #[test]
    fn a_summary_covers_holes_so_only_the_missing_middle_is_sent() {
        let mut a = Timeline::new(1000);
        for s in 1..=100 {
            a.insert(ev("A", s, s));
        }
        let mut b = Timeline::new(1000);
        for s in (1..=10).chain(60..=100) {
            b.insert(ev("A", s, s));
        }
        assert_eq!(
            b.summary().held,
            vec![("A".into(), vec![(1, 10), (60, 100)])]
        );
        let (sent, more) = a.missing(&b.summary(), 1000, 1 << 20);
        assert!(!more);
        assert_eq!(
            sent.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (11..60).collect::<Vec<_>>()
        );
    }

    /// What `missing` must answer, by its definition: every kept event in time order,
    /// after the floor, shareable, in no range the peer holds, within the budget.
    fn missing_by_definition(t: &Timeline, have: &EventsHave, max: usize) -> Vec<Event> {
        let held: BTreeMap<&str, &[(u64, u64)]> = have
            .held
            .iter()
            .map(|(n, rs)| (n.as_str(), rs.as_slice()))
            .collect();
        t.by_time
            .iter()
            .filter(|(k, _)| have.floor.as_ref().is_none_or(|f| *k > f))
            .map(|(_, (_, ev))| ev)
            .filter(|ev| !is_local_only(ev))
            .filter(|ev| {
                !held
                    .get(ev.node.as_str())
                    .is_some_and(|rs| rs.iter().any(|(lo, hi)| (*lo..=*hi).contains(&ev.seq)))
            })
            .take(max)
            .cloned()
            .collect()
    }

    #[test]
    fn missing_sends_exactly_what_the_peer_lacks_whatever_its_summary_says() {
        // A small LCG: many shapes of logs and summaries, hostile ones included.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = |n: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        for _ in 0..300 {
            let mut t = Timeline::new(40 + rnd(40) as usize);
            for _ in 0..rnd(120) {
                let node = ["A", "B", "C", "D"][rnd(4) as usize];
                let mut e = ev(node, 1 + rnd(60), rnd(1000));
                if rnd(5) == 0 {
                    e.seq |= LOCAL_SEQ_BIT;
                    e.kind = EventKind::PeerJoined;
                }
                t.insert(e);
            }
            let mut held = Vec::new();
            for node in ["A", "B", "C", "E"] {
                if rnd(3) == 0 {
                    continue;
                }
                // Unsorted, overlapping, reversed and unbounded ranges all occur.
                let rs = (0..rnd(5))
                    .map(|_| match rnd(8) {
                        0 => (rnd(70), u64::MAX),
                        1 => (40 + rnd(30), rnd(40)),
                        _ => {
                            let lo = rnd(70);
                            (lo, lo + rnd(12))
                        }
                    })
                    .collect();
                held.push((node.to_string(), rs));
            }
            let floor = (rnd(3) == 0).then(|| (rnd(1000), "B".to_string(), rnd(60)));
            let have = EventsHave { floor, held };
            let want = missing_by_definition(&t, &have, usize::MAX);
            let (sent, more) = t.missing(&have, usize::MAX, usize::MAX);
            assert_eq!(sent, want);
            assert!(!more);
            let cap = 1 + rnd(10) as usize;
            let (sent, more) = t.missing(&have, cap, usize::MAX);
            assert_eq!(sent, missing_by_definition(&t, &have, cap));
            assert_eq!(more, want.len() > cap);
        }
    }

    #[test]
    fn a_full_log_keeps_the_newest_and_asks_for_nothing_it_would_drop() {
        let mut full = Timeline::new(3);
        for s in 1..=5 {
            full.insert(ev("A", s, s * 10));
        }
        assert_eq!(
            order(&full).iter().map(|x| x.1).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        // An event older than everything kept is not taken (it would go at once).
        assert!(!full.insert(ev("B", 1, 5)));
        let mut peer = Timeline::new(100);
        for s in 1..=6 {
            peer.insert(ev("A", s, s * 10));
        }
        peer.insert(ev("B", 1, 5));
        let (sent, more) = peer.missing(&full.summary(), 100, 1 << 20);
        assert!(!more);
        assert_eq!(sent.iter().map(|e| e.seq).collect::<Vec<_>>(), [6]);
    }

    #[test]
    fn answers_are_capped_and_say_more_remains() {
        let mut a = Timeline::new(10_000);
        for s in 1..=2500 {
            a.insert(ev("A", s, s));
        }
        let mut b = Timeline::new(10_000);
        assert_eq!(pull(&mut b, &a, MAX_EVENTS_PER_FRAME), 3);
        assert_eq!(b.len(), 2500);
        // A byte budget below one event still makes progress, one event at a time.
        let (sent, more) = a.missing(&EventsHave::default(), 10, 1);
        assert!(
            sent.is_empty() && !more,
            "nothing fits: nothing sent, no loop"
        );
        let (sent, more) = a.missing(&EventsHave::default(), 10, 70);
        assert_eq!((sent.len(), more), (1, true));
    }

    #[test]
    fn local_only_and_hostile_events_are_never_shared_nor_accepted() {
        let mut a = Timeline::new(100);
        let mut joined = ev("A", LOCAL_SEQ_BIT | 1, 5);
        joined.kind = EventKind::PeerJoined;
        a.insert(joined.clone());
        a.insert(ev("A", 1, 6));
        assert!(a.summary().held == vec![("A".into(), vec![(1, 1)])]);
        let (sent, _) = a.missing(&EventsHave::default(), 10, 1 << 20);
        assert_eq!(sent.len(), 1, "the peer-joined observation stays local");
        let now = 1_000_000;
        assert!(accept_remote(joined, now).is_none());
        assert!(accept_remote(ev("", 1, 1), now).is_none());
        assert!(accept_remote(ev(&"x".repeat(200), 1, 1), now).is_none());
        assert!(accept_remote(ev("B", 1, u64::MAX), now).is_none());
        let mut long = ev("B", 1, 1);
        long.detail = "é".repeat(MAX_EVENT_DETAIL);
        let cut = accept_remote(long, now).unwrap();
        assert!(cut.detail.len() <= MAX_EVENT_DETAIL);
        // A summary with unsorted, overlapping ranges costs resends, never a panic.
        let bad = EventsHave {
            floor: Some((u64::MAX, String::new(), 0)),
            held: vec![("A".into(), vec![(9, 1), (0, u64::MAX), (3, 2)])],
        };
        let _ = a.missing(&bad, 10, 1 << 20);
        let bad = EventsHave {
            floor: None,
            held: vec![("A".into(), vec![(9, 1), (5, 3)])],
        };
        let _ = a.missing(&bad, 10, 1 << 20);
    }
}
