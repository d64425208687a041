//! The short answers to a sync session's first frame: `covered` (the responder holds
//! the initiator's latest own change; the session completes once the initiator holds
//! the responder's heads, or syncs in full after half a settle timeout) and `need` (the
//! responder lacks that change or what it depends on; the initiator sends exactly that).
//! See DESIGN.md §5.3.

use super::*;

/// A `covered` answer is sent only by a responder with at most this many heads (each
/// is 32 bytes on the wire; a document with more is syncing a storm anyway).
const MAX_COVERED_HEADS: usize = 64;

/// A `need` answer names at most this many changes (more: the responder is far behind,
/// and automerge's sync serves it better).
const MAX_NEED: usize = 64;

/// `need` rounds a session runs before it falls back to a full sync.
const MAX_NEED_ROUNDS: u32 = 8;

/// How many `covered` answers per peer may wait for their heads at once (the newest
/// kept).
const MAX_AWAITING: usize = 4;

/// How a responder answers a first frame (see [`Core::covers`]).
pub(super) enum Reply {
    /// The digests matched: `same`.
    Same,
    /// Automerge's sync.
    Sync,
    Covered(Vec<ChangeHash>),
    Need(Vec<ChangeHash>),
    /// A `need` round that cannot be answered `covered` or `need`: an empty answer.
    GiveUp,
}

/// A session whose peer answered `covered`: it completes once this node holds `heads`.
#[derive(Debug, Clone)]
pub(super) struct Awaiting {
    id: u64,
    opened_ms: u64,
    /// When the answer came (a fallback full sync runs if the heads do not arrive).
    answered_ms: u64,
    heads: Vec<ChangeHash>,
    /// The peer's latest own change when it answered (None: it made none since it
    /// started, or the answer has counted as settle evidence already): once held here,
    /// the answer is settle evidence.
    theirs: Option<ChangeHash>,
}

impl Core {
    /// How to answer a peer's first frame, or its reply to a `need` answer (not a
    /// first frame, and it names `mine`): `covered` with our heads if we hold its latest
    /// own change and our heads are few enough to send, `need` with what we lack on the
    /// way back to that change, or else automerge's sync (a first frame) or nothing (a
    /// `need` round: the peer syncs in full next).
    pub(super) fn covers(&mut self, start: bool, fresh: bool, mine: Option<[u8; 32]>) -> Reply {
        let need_round = !start && mine.is_some();
        let full = if need_round {
            Reply::GiveUp
        } else {
            Reply::Sync
        };
        if !start && !need_round {
            return full;
        }
        let Some(mine) = mine.filter(|_| !fresh) else {
            self.counters.full_no_mine += 1;
            return full;
        };
        let heads = self.doc.heads();
        if heads.len() > MAX_COVERED_HEADS {
            self.counters.full_many_heads += 1;
            return full;
        }
        let mine = ChangeHash(mine);
        if self.doc.holds_all(&[mine]) {
            return Reply::Covered(heads);
        }
        let missing = self.doc.missing_deps(&[mine]);
        if missing.is_empty() || missing.len() > MAX_NEED {
            self.counters.full_mine_missing += 1;
            return full;
        }
        self.counters.need_answers += 1;
        if missing != [mine] {
            self.counters.need_queued += 1;
        }
        Reply::Need(missing)
    }

    /// The peer answered `covered`: it holds our pushed changes, and `heads` are its
    /// heads. The session completes once this node holds those heads too: the changes
    /// behind them are other nodes' (or the peer's own), and their authors push them to
    /// every alive peer, so a session need not carry them again. Under load every
    /// session carried the same third-party changes: 50 nodes on one machine received
    /// each change ~30 times. Heads that do not arrive within half a settle timeout are
    /// fetched by a full sync ([`Core::expire_awaiting`]).
    ///
    /// Settle evidence needs less than the heads: `theirs`, the peer's latest own
    /// change when it answered. Holding it, this node holds every claim the peer wrote
    /// before answering, and any claim the peer writes after sees ours (it held ours to
    /// answer `covered`). Third parties' claims are their own authors' evidence to give.
    /// Waiting for all of the peer's heads made a claim wait on every change in flight
    /// anywhere in the mesh: at 50 processes most failed settles lacked one to three
    /// peers (DESIGN.md §5.3).
    pub(super) fn covered_answer(
        &mut self,
        peer: &str,
        session: Session,
        heads: Vec<[u8; 32]>,
        theirs: Option<[u8; 32]>,
    ) {
        if heads.len() > MAX_COVERED_HEADS {
            self.counters.malformed_dropped += 1;
            self.counters.sync_failures += 1;
            return;
        }
        self.counters.sync_covered += 1;
        let acked = self.push_acked.entry(peer.to_string()).or_default();
        *acked = (*acked).max(session.pushed_upto);
        let list = self.awaiting.entry(peer.to_string()).or_default();
        list.push(Awaiting {
            id: session.id,
            opened_ms: session.opened_ms,
            answered_ms: self.last_now,
            heads: heads.into_iter().map(ChangeHash).collect(),
            theirs: theirs.map(ChangeHash),
        });
        if list.len() > MAX_AWAITING {
            list.remove(0);
        }
        // Only this peer's sessions changed: the others were checked when the document
        // last did (at 1,000 nodes, checking every peer's on each answer was 6 % of the
        // simulator's time).
        self.check_awaiting_of(peer);
        if session.again {
            self.open_session_as(peer, session.again_push, session.again_full);
        }
    }

    /// The peer lacks our latest change (it waits there for dependencies, or never
    /// arrived): `need` names the first changes it lacks on the way back. We send those
    /// and it answers again, until it holds the change (`covered`). Under load a pushed
    /// claim often depends on another node's change still on its way, and a full sync
    /// then carried everything either side lacked (~80 changes, ~60 KB at 50 processes)
    /// where one or two changes were missing. An empty answer, a request for changes we
    /// do not hold, or too many rounds: a full sync.
    pub(super) fn need_answer(&mut self, peer: &str, mut session: Session, need: &[[u8; 32]]) {
        let hashes: Vec<ChangeHash> = need.iter().copied().map(ChangeHash).collect();
        let changes = (need.len() <= MAX_NEED && session.need_rounds < MAX_NEED_ROUNDS)
            .then(|| {
                self.doc
                    .changes_by_hash(&hashes, self.cfg.max_sync_bytes / 2)
            })
            .flatten()
            .filter(|c| !c.is_empty() && session.mine.is_some());
        let Some(changes) = changes else {
            self.counters.need_fallbacks += 1;
            self.full_sync(peer);
            if session.again {
                self.open_session_as(peer, session.again_push, session.again_full);
            }
            return;
        };
        self.counters.need_rounds += 1;
        self.counters.push_bytes_out += changes.iter().map(|c| c.len() as u64).sum::<u64>();
        session.need_rounds += 1;
        let mine = session.mine;
        self.sessions.insert(peer.to_string(), session);
        let data = self.encode_frame(SyncFrame {
            push: changes
                .into_iter()
                .map(serde_bytes::ByteBuf::from)
                .collect(),
            mine,
            ..SyncFrame::msg(false, Vec::new())
        });
        self.effects.push_back(Effect::SendSync {
            to: peer.to_string(),
            data,
        });
    }

    /// Completes the `covered` sessions whose peers' heads this node now holds.
    pub(super) fn check_awaiting(&mut self) {
        if self.awaiting.is_empty() {
            return;
        }
        let peers: Vec<String> = self.awaiting.keys().cloned().collect();
        for peer in peers {
            self.check_awaiting_of(&peer);
        }
    }

    /// [`Core::check_awaiting`] for one peer's sessions.
    fn check_awaiting_of(&mut self, peer: &str) {
        self.vouch_from_own_changes(peer);
        let Some(list) = self.awaiting.get(peer) else {
            return;
        };
        // The newest session whose heads are all here (it vouches for the older).
        let Some(held) = list
            .iter()
            .rev()
            .find(|a| self.doc.holds_all(&a.heads))
            .cloned()
        else {
            return;
        };
        if let Some(list) = self.awaiting.get_mut(peer) {
            list.retain(|a| a.id > held.id);
            if list.is_empty() {
                self.awaiting.remove(peer);
            }
        }
        self.record_completion(peer, held.id, held.opened_ms);
        let waiting = self.waiting_on(peer);
        if !waiting.is_empty() {
            self.heads_evidence(peer, &held.heads, waiting);
        }
    }

    /// The newest `covered` answer of `peer` not yet counted whose `theirs` this node
    /// holds: settle evidence for our claims written before that session opened.
    fn vouch_from_own_changes(&mut self, peer: &str) {
        let Some(list) = self.awaiting.get(peer) else {
            return;
        };
        let Some(pos) = list
            .iter()
            .rposition(|a| a.theirs.is_some_and(|h| self.doc.holds_all(&[h])))
        else {
            return;
        };
        let id = list[pos].id;
        let early = !self.doc.holds_all(&list[pos].heads);
        if let Some(list) = self.awaiting.get_mut(peer) {
            for a in list.iter_mut().take(pos + 1) {
                a.theirs = None;
            }
        }
        let mut vouched = false;
        for c in self.local.values_mut() {
            if let LocalState::Settling { mark, waiting, .. } = &mut c.state {
                if *mark <= id {
                    vouched |= waiting.remove(peer);
                }
            }
        }
        self.counters.covered_vouched += u64::from(vouched && early);
    }

    /// `covered` sessions whose heads did not arrive within half a settle timeout (an
    /// author's push lost, or it does not count this node alive): a full sync with the
    /// peer fetches what they lack.
    pub(super) fn expire_awaiting(&mut self, now_ms: u64) {
        if self.awaiting.is_empty() {
            return;
        }
        let limit = self.settle_timeout() / 2;
        let late = |a: &Awaiting| now_ms.saturating_sub(a.answered_ms) >= limit;
        let peers: Vec<String> = self
            .awaiting
            .iter()
            .filter(|(_, l)| l.iter().any(late))
            .map(|(p, _)| p.clone())
            .collect();
        for peer in peers {
            if let Some(list) = self.awaiting.get_mut(&peer) {
                let before = list.len();
                list.retain(|a| !late(a));
                self.counters.sync_covered_late += (before - list.len()) as u64;
                if list.is_empty() {
                    self.awaiting.remove(&peer);
                }
            }
            self.full_sync(&peer);
        }
    }
}
