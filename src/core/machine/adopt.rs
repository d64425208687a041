//! A new node meeting a mesh that moved to a later epoch (docs/DESIGN.md §3.5, step 7).
//!
//! A node whose first document holds only its own values cannot build a later epoch's
//! seed: it lacks the history below the cut. It takes the root most alive peers' beats
//! name, asks one of them for that epoch's document — whole if it fits a frame, else
//! synced round by round into an empty document — opens it at that root with its own
//! values carried in, and moves onto it as a move would (without keeping the old one).
//! The root is a hash: whoever answers, what opens there is the seed every node that
//! moved built, and every value after it is checked as any change's.

use super::sync::SyncFrame;
use super::*;

/// A new node's requests for a moved mesh's document.
#[derive(Debug, Default)]
pub(super) struct Adopt {
    current: Option<Adopting>,
    /// Per peer, the epoch its latest sync frame of another epoch named: a passive
    /// observer probes no one, and an idle mesh beats rarely, so frames tell it too.
    framed: BTreeMap<String, [u8; 32]>,
    /// Requests sent so far (the next goes to the next peer naming the epoch).
    tries: usize,
}

/// A new node asked `peer` for epoch `root`'s document (see [`Core::adopt_tick`]): whole,
/// or, too large for a frame, synced into `doc` (empty at first) round by round.
struct Adopting {
    peer: String,
    root: [u8; 32],
    /// When the latest frame went (a silent peer is given up after `ADOPT_WAIT_MS`).
    sent_ms: u64,
    doc: Doc,
    state: SyncState,
    rounds: u32,
}

impl std::fmt::Debug for Adopting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adopting")
            .field("peer", &self.peer)
            .field("rounds", &self.rounds)
            .finish_non_exhaustive()
    }
}

/// Sync rounds a new node's request may take before it asks another peer.
const ADOPT_MAX_ROUNDS: u32 = 256;

/// How long a new node waits for a peer's document before it asks another.
const ADOPT_WAIT_MS: u64 = 10_000;

impl Core {
    /// A new node that holds nothing of the mesh's but its own facts (a first document)
    /// while most peers it hears from (alive, or connected) name one later epoch in their
    /// beats or, for an observer that probes no one, their sync frames: it cannot build that
    /// epoch's seed (it lacks the history), so it asks one of them for that epoch's
    /// document (`SyncFrame::adopt`) and takes it up at that root ([`Doc::take_up`]).
    /// Until then the mesh claims nothing (an alive peer on another epoch), so this waits
    /// only for the warm-up in which every alive peer has beaten once. Most of them, not
    /// one: a single peer's word (the bootstrap's) does not choose the root a node takes.
    pub(super) fn adopt_tick(&mut self, now_ms: u64) {
        if self.doc.epoch_root().is_some() || !self.is_fresh() {
            self.moving.adopt.current = None;
            return;
        }
        if let Some(a) = &self.moving.adopt.current {
            if now_ms < a.sent_ms + ADOPT_WAIT_MS {
                return;
            }
            tracing::warn!(peer = %a.peer, "no answer with the mesh's document; asking another peer");
            self.moving.adopt.current = None;
        }
        let started = *self.started_ms.get_or_insert(now_ms);
        let m = self.cfg.membership;
        if now_ms.saturating_sub(started) < m.heartbeat_ms * u64::from(m.suspect_after_missed) {
            return;
        }
        // The peers it hears from: alive, or connected (an observer probes no one).
        let mut alive = self.membership.alive(now_ms);
        alive.extend(self.connected.iter().cloned());
        alive.sort();
        alive.dedup();
        let mut named: BTreeMap<[u8; 32], Vec<String>> = BTreeMap::new();
        for p in &alive {
            let beat = self.moving.roots.get(p).copied().flatten();
            if let Some(root) = beat.or_else(|| self.moving.adopt.framed.get(p).copied()) {
                named.entry(root).or_default().push(p.clone());
            }
        }
        let Some((root, peers)) = named.into_iter().find(|(_, ps)| ps.len() * 2 > alive.len())
        else {
            return;
        };
        if !self.doc.holds_only_own(&self.peer) {
            return; // it synced with nodes on the first document: it moves as they do
        }
        let peer = peers[self.moving.adopt.tries % peers.len()].clone();
        self.moving.adopt.tries += 1;
        tracing::info!(%peer, of = alive.len(), naming = peers.len(),
            "the mesh is on a later epoch; asking for its document");
        let (mut doc, mut state) = (self.doc.empty_sibling(), SyncState::new());
        let msg = doc.sync_generate(&mut state).unwrap_or_default();
        let data = codec::encode(&SyncFrame {
            adopt: true,
            fresh: true,
            epoch: Some(root),
            ..SyncFrame::msg(true, msg)
        });
        self.moving.adopt.current = Some(Adopting {
            peer: peer.clone(),
            root,
            sent_ms: now_ms,
            doc,
            state,
            rounds: 0,
        });
        self.effects.push_back(Effect::SendSync { to: peer, data });
    }

    /// Whether a frame of this node's first document from `peer`, whose beat names a
    /// later epoch, is one a new node refuses: the peer serves the document it moved
    /// from to nodes still on it (`serve_prev`). Taken in, it would give the new node
    /// that epoch's history without the later cuts: it could neither follow the mesh
    /// (two epochs behind) nor take its epoch up (no longer only its own). It takes up
    /// the epoch most peers name instead ([`Core::adopt_tick`]).
    pub(super) fn served_the_past(&mut self, peer: &str) -> bool {
        let later = self.moving.roots.get(peer).is_some_and(Option::is_some);
        later
            && self.doc.epoch_root().is_none()
            && self.is_fresh()
            && self.doc.holds_only_own(&self.peer)
    }

    /// An answer to a new node's request for a moved mesh's document: the document
    /// whole, taken up at once, or a sync message for the document being built, answered
    /// until the peer has nothing more to send. False if `data` was no such answer.
    pub(super) fn adopt_answered(&mut self, peer: &str, data: &[u8]) -> bool {
        let max = self.cfg.max_sync_bytes + 64;
        let Some(a) = self
            .moving
            .adopt
            .current
            .as_mut()
            .filter(|a| a.peer == peer)
        else {
            return false;
        };
        let frame = match codec::decode::<SyncFrame>(data, max) {
            Ok(f) if f.epoch == Some(a.root) => f,
            _ => return false,
        };
        let root = ChangeHash(a.root);
        if let Some(snapshot) = frame.snapshot {
            self.moving.adopt.current = None;
            let taken = self.doc.join_epoch(&snapshot, &root);
            self.took_up(peer, taken);
            return true;
        }
        // Too large for one frame: automerge's sync into the document being built.
        let applied = frame.msg.is_empty() || a.doc.sync_receive(&mut a.state, &frame.msg).is_ok();
        let next = if applied && a.rounds < ADOPT_MAX_ROUNDS {
            a.doc.sync_generate(&mut a.state)
        } else {
            None
        };
        if let Some(msg) = next {
            a.rounds += 1;
            a.sent_ms = self.last_now;
            let data = codec::encode(&SyncFrame {
                epoch: Some(a.root),
                ..SyncFrame::msg(false, msg)
            });
            self.effects.push_back(Effect::SendSync {
                to: peer.to_string(),
                data,
            });
            return true;
        }
        let Some(a) = self.moving.adopt.current.take() else {
            return true;
        };
        if !applied || a.rounds >= ADOPT_MAX_ROUNDS {
            tracing::warn!(%peer, rounds = a.rounds, "the peer's document did not sync; asking another peer");
            return true;
        }
        let taken = self.doc.take_up(a.doc, &root);
        self.took_up(peer, taken);
        true
    }

    /// Makes the document a new node took of the mesh's epoch its own.
    fn took_up(&mut self, peer: &str, taken: Result<Doc, StateError>) {
        let doc = match taken {
            Ok(doc) => doc,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "refusing the peer's document of the mesh's epoch");
                return;
            }
        };
        let (epoch, Some(root)) = (doc.base().map_or(0, |b| b.epoch), doc.epoch_root()) else {
            return;
        };
        tracing::info!(%peer, epoch, "took up the mesh's epoch");
        self.counters.epochs_joined += 1;
        self.switch_to(doc, epoch, ChangeHash(root), false, self.last_now);
    }

    /// A new node's request ([`Core::adopt_tick`]) from `peer`: answered with this
    /// document whole if it fits a frame; `None`: answer it as any first frame (the
    /// new node builds the document round by round).
    pub(super) fn answer_adopt(&mut self, peer: &str) -> Option<Vec<u8>> {
        let snapshot = self.whole_document()?;
        tracing::info!(%peer, bytes = snapshot.len(), "a new node takes this epoch's document whole");
        self.counters.snapshots_sent += 1;
        Some(self.encode_frame(SyncFrame {
            snapshot: Some(snapshot),
            ..SyncFrame::msg(false, Vec::new())
        }))
    }

    /// `peer` sent a sync frame of epoch `root`, not this node's.
    pub(super) fn framed_epoch(&mut self, peer: &str, root: Option<[u8; 32]>) {
        if let (Some(root), true) = (root, self.doc.epoch_root().is_none() && self.is_fresh()) {
            self.moving.adopt.framed.insert(peer.to_string(), root);
        }
    }

    /// A request's session with `peer` failed: the next tick asks again.
    pub(super) fn adopt_failed(&mut self, peer: &str) {
        if self
            .moving
            .adopt
            .current
            .as_ref()
            .is_some_and(|a| a.peer == peer)
        {
            self.moving.adopt.current = None;
        }
    }
}
