//! Sync sessions: opening them (eager push, anti-entropy), answering and continuing
//! them, the settle evidence they carry, and persisting local writes.

use super::covered::Reply;
use super::*;

/// One sync frame on the wire (inside the codec's version byte).
#[derive(Debug, Serialize, Deserialize)]
pub struct SyncFrame {
    /// First message of a session: the responder resets its state for us.
    pub start: bool,
    #[serde(with = "serde_bytes")]
    pub msg: Vec<u8>,
    /// The sender's own changes the receiver may lack (first frame only), applied
    /// before `msg`.
    pub push: Vec<serde_bytes::ByteBuf>,
    /// First frame only: the sender asks for the events it lacks (see `timeline`).
    pub events_have: Option<EventsHave>,
    /// In an answer: events the requester lacked, oldest first.
    pub events: Vec<Event>,
    /// In an answer: more events remain for the requester (it asks again).
    pub events_more: bool,
    /// The sender is new (it never synced and holds next to nothing). On a first frame:
    /// a large document is better sent to it whole. On an answer: its own first session
    /// takes such a document whole, so a session that would send it change by change
    /// ends instead.
    pub fresh: bool,
    /// In an answer to a fresh sender, when this document is large: the document saved
    /// whole, in place of a sync message (`Doc::merge_snapshot`).
    pub snapshot: Option<serde_bytes::ByteBuf>,
    /// First frame only: the digest of the sender's heads.
    pub heads_digest: Option<[u8; 32]>,
    /// In an answer: after the push, the responder's heads are the sender's (the same
    /// digest). Neither side runs automerge's sync on `msg` then: the session is over.
    pub same: bool,
    /// First frame, once a session with the receiver has completed (and but for a
    /// session that must sync in full): the hash of the sender's latest own change.
    /// In a `covered` answer: the responder's latest own change since it started, if it
    /// made one (settle evidence once the initiator holds it, see
    /// [`Core::covered_answer`]).
    pub mine: Option<[u8; 32]>,
    /// In an answer: the responder holds `mine` (so every own change of the sender's up
    /// to it), and these are its heads. No automerge sync on either side: the sender's
    /// session completes once it holds these heads itself, which the changes' own
    /// authors' pushes normally bring (see [`Core::covered_answer`]).
    pub covered: Option<Vec<[u8; 32]>>,
    /// In an answer: the responder lacks `mine` (or it waits for dependencies), and
    /// these are the first changes it lacks on the way back from it. The sender replies
    /// with a frame carrying them (`push`, and `mine` again, not `start`); the responder
    /// answers that the same way as a first frame: `covered`, or `need` once more. Only
    /// what the sender's own changes depend on crosses, not everything either side
    /// lacks (see [`Core::need_answer`]).
    pub need: Vec<[u8; 32]>,
    /// The sender's epoch (`Doc::epoch_root`; `None`: a mesh's first document). A frame
    /// of another epoch is dropped whole: its changes belong to another document.
    pub epoch: Option<[u8; 32]>,
    /// First frame only, from a new node that holds nothing of the mesh's but its own
    /// facts and whose peers moved on (`epoch` names theirs): it asks for the document
    /// whole, to take that epoch up (`Doc::join_epoch`). Answered with `snapshot`.
    pub adopt: bool,
}

/// One sync session this node opened with a peer.
#[derive(Debug)]
pub(super) struct Session {
    /// Sequence number of this session (for "synced since" questions).
    pub(super) id: u64,
    pub(super) rounds: u32,
    /// A newer reason to sync arrived while this session ran: run another after it.
    pub(super) again: bool,
    /// That next session carries an eager push.
    pub(super) again_push: bool,
    /// That next session syncs in full (no `covered` answer).
    pub(super) again_full: bool,
    /// The highest own change sequence number this session pushed.
    pub(super) pushed_upto: u64,
    /// When it opened (for the settle timeout's estimate of how long a session takes).
    pub(super) opened_ms: u64,
    /// This node's heads when it opened (their digest went in the first frame): what a
    /// `same` answer says the peer holds. Not the heads at the answer: a claim written
    /// meanwhile has not reached the peer.
    pub(super) heads: Vec<ChangeHash>,
    /// The latest own change the first frame named (`SyncFrame::mine`), and how many
    /// `need` rounds the session has run.
    pub(super) mine: Option<[u8; 32]>,
    pub(super) need_rounds: u32,
}

/// A node whose stored document is below this and that never synced asks for a
/// snapshot (its own description and a few releases take a few KiB).
const FRESH_MAX_BYTES: u64 = 64 << 10;

/// How long a document saved whole for joining peers is served again.
const JOIN_SNAPSHOT_KEEP_MS: u64 = 30_000;

impl SyncFrame {
    /// A frame carrying only an automerge message.
    pub(super) fn msg(start: bool, msg: Vec<u8>) -> SyncFrame {
        SyncFrame {
            start,
            msg,
            push: Vec::new(),
            events_have: None,
            events: Vec::new(),
            events_more: false,
            fresh: false,
            snapshot: None,
            heads_digest: None,
            same: false,
            mine: None,
            covered: None,
            need: Vec::new(),
            epoch: None,
            adopt: false,
        }
    }
}

impl Core {
    /// Anti-entropy: syncs with one alive peer (or, with none, one connected peer),
    /// chosen by `pick` (a random number from the shell).
    pub fn anti_entropy(&mut self, now_ms: u64, pick: u64) {
        let mut candidates = self.membership.alive(now_ms);
        if candidates.is_empty() {
            candidates = self.connected.iter().cloned().collect();
        }
        if candidates.is_empty() {
            return;
        }
        let p = candidates[(pick % candidates.len() as u64) as usize].clone();
        // The backstop for events gossip lost (a partition, a restart): pull them too.
        self.events_pull.insert(p.clone());
        self.start_sync(&p);
    }

    /// Opens a sync session with `peer` unless one is running (then one more runs after).
    /// The peer may answer `covered` (see [`Core::covered_answer`]).
    pub fn start_sync(&mut self, peer: &str) {
        self.open_session_as(peer, false, false);
    }

    /// Opens a sync session, with an eager push of our own unacknowledged changes when
    /// `push`. With a session running, one more (pushing if either asked) runs after it.
    pub(super) fn open_session(&mut self, peer: &str, push: bool) {
        self.open_session_as(peer, push, false);
    }

    /// Opens a session that syncs in full: automerge's protocol fetches what either side
    /// lacks, whoever wrote it (a new connection; `covered` heads that did not arrive).
    pub(super) fn full_sync(&mut self, peer: &str) {
        self.open_session_as(peer, false, true);
    }

    pub(super) fn open_session_as(&mut self, peer: &str, push: bool, full: bool) {
        if peer == self.peer || self.other_epoch.contains(peer) {
            return;
        }
        if let Some(s) = self.sessions.get_mut(peer) {
            s.again = true;
            s.again_push |= push;
            s.again_full |= full;
            return;
        }
        let acked = self.push_acked.get(peer).copied();
        // A peer that holds our latest change may answer `covered`: a session of any
        // kind, once one with the peer has completed (a new peer's first sessions and
        // the fallback for `covered` heads that did not arrive sync in full). Anti-entropy
        // and a differing digest synced in full too, and under load each such session
        // carried ~80 changes (~60 KB) the peer's authors were pushing to it anyway.
        let mine = match acked {
            Some(_) if !full => self.doc.last_local_change().map(|h| h.0),
            _ => None,
        };
        let state = self.out_sync.entry(peer.to_string()).or_default();
        *state = reset_sync_state(state);
        // A frame that names `mine` carries no message of automerge's: nearly every
        // such frame is answered `same`, `covered` or `need`, which never read it, and
        // its Bloom filter of every change since the last shared heads was 3 % of a
        // loaded node's time and 16 % of a story's bytes at 50 nodes. A responder
        // that must sync in full then opens automerge's exchange itself (its answer
        // carries its own message), one round trip later.
        let msg = if mine.is_some() {
            Vec::new()
        } else {
            let Some((msg, change_bytes)) = self.doc.sync_generate_sized(state) else {
                return;
            };
            self.counters.sync_change_bytes_out += change_bytes;
            msg
        };
        // Pushed: our changes the peer has not acknowledged, once a session we started
        // with it has completed. Before that (a new peer, or one since our restart) it
        // may hold all of them or none: a node with a large backlog pushed every change
        // of it to a new node, which then applied them one by one instead of taking the
        // snapshot it asked for. The sync protocol finds what it lacks instead.
        // Every session that names our latest change pushes what the peer has not
        // acknowledged, so that the peer can answer `covered`.
        let pushed = match acked {
            Some(acked) if push || !full => {
                self.doc
                    .local_changes_after(acked, self.cfg.max_sync_bytes / 2)
                    .0
            }
            _ => Vec::new(),
        };
        // A completed session leaves the peer with everything we hold when it opens.
        let pushed_upto = self.doc.last_local_seq();
        let heads = self.doc.heads();
        let heads_digest = self.doc.heads_digest();
        self.counters.sync_sessions_started += 1;
        self.counters.sync_push_sessions += u64::from(push);
        self.counters.push_bytes_out += pushed.iter().map(|c| c.len() as u64).sum::<u64>();
        let id = self.next_session;
        self.next_session += 1;
        self.sessions.insert(
            peer.to_string(),
            Session {
                id,
                rounds: 0,
                again: false,
                again_push: false,
                again_full: false,
                pushed_upto,
                opened_ms: self.last_now,
                heads,
                mine,
                need_rounds: 0,
            },
        );
        let events_have = self
            .events_pull
            .remove(peer)
            .then(|| self.timeline.summary());
        let fresh = self.is_fresh();
        let data = self.encode_frame(SyncFrame {
            push: pushed.into_iter().map(serde_bytes::ByteBuf::from).collect(),
            events_have,
            fresh,
            heads_digest: Some(heads_digest),
            mine,
            ..SyncFrame::msg(true, msg)
        });
        self.effects.push_back(Effect::SendSync {
            to: peer.to_string(),
            data,
        });
    }

    /// Whether this node is new: it never synced and holds next to nothing.
    pub(super) fn is_fresh(&self) -> bool {
        self.joined_ms.is_none() && self.doc.stored_bytes() < FRESH_MAX_BYTES
    }

    /// Whether a fresh peer's first session gets this document whole.
    fn large_for_joins(&self) -> bool {
        let stored = self.doc.stored_bytes();
        stored > 0 && stored >= self.cfg.limits.snapshot_join_bytes
    }

    /// This document saved whole for a fresh peer, with its heads, if it is large
    /// enough to be worth it and fits a frame. A save is served again for
    /// `JOIN_SNAPSHOT_KEEP_MS` even if the document changed since (the peer syncs the
    /// rest from its heads): a save costs ~0.5 s at 100,000 stories, and any peer may
    /// say it is new.
    fn snapshot_for_join(&mut self) -> Option<(serde_bytes::ByteBuf, Vec<ChangeHash>)> {
        if !self.large_for_joins() {
            return None;
        }
        self.whole_document()
            .and_then(|snap| Some((snap, self.join_snapshot.as_ref()?.2.clone())))
    }

    /// This document saved whole for new peers (the save kept for
    /// `JOIN_SNAPSHOT_KEEP_MS`), if it fits a frame.
    pub(super) fn whole_document(&mut self) -> Option<serde_bytes::ByteBuf> {
        let now = self.last_now;
        let stale = |at: u64| now.saturating_sub(at) >= JOIN_SNAPSHOT_KEEP_MS;
        if self
            .join_snapshot
            .as_ref()
            .is_none_or(|(at, ..)| stale(*at))
        {
            let snap = self.doc.snapshot_for_join();
            tracing::info!(bytes = snap.len(), "document saved whole for a new node");
            let heads = self.doc.heads();
            self.join_snapshot = Some((now, serde_bytes::ByteBuf::from(snap), heads));
        }
        let (_, snap, _) = self.join_snapshot.as_ref()?;
        (snap.len() <= self.cfg.max_sync_bytes / 2).then(|| snap.clone())
    }

    /// A sync message from `peer` was applied: its heads are settle evidence for our
    /// claims waiting on that peer (see the module docs).
    pub(super) fn saw_heads(&mut self, peer: &str, outgoing: bool) {
        let waiting = self.waiting_on(peer);
        if waiting.is_empty() {
            return;
        }
        let states = if outgoing {
            &self.out_sync
        } else {
            &self.in_sync
        };
        let Some(heads) = states.get(peer).and_then(|s| s.their_heads.clone()) else {
            return;
        };
        self.heads_evidence(peer, &heads, waiting);
    }

    /// `peer` held `heads`: settle evidence for each of `waiting` (claim, its change)
    /// whose change is among them, once this node holds them all.
    pub(super) fn heads_evidence(
        &mut self,
        peer: &str,
        heads: &[ChangeHash],
        waiting: Vec<(String, ChangeHash)>,
    ) {
        for (id, h) in waiting {
            if self.doc.peer_has(heads, &h) {
                if let Some(LocalState::Settling { waiting, .. }) =
                    self.local.get_mut(&id).map(|c| &mut c.state)
                {
                    waiting.remove(peer);
                }
            }
        }
    }

    /// Our settling claims (and their changes) that still wait on `peer`.
    pub(super) fn waiting_on(&self, peer: &str) -> Vec<(String, ChangeHash)> {
        self.local
            .iter()
            .filter_map(|(id, c)| match &c.state {
                LocalState::Settling {
                    waiting,
                    change: Some(h),
                    ..
                } if waiting.contains(peer) => Some((id.clone(), *h)),
                _ => None,
            })
            .collect()
    }

    /// The id the next sync session will get: a session with an id at least this was
    /// started after now.
    pub fn session_mark(&self) -> u64 {
        self.next_session
    }

    /// Whether a sync session with `peer` that started at or after `mark` has completed.
    pub fn synced_since(&self, peer: &str, mark: u64) -> bool {
        self.completed.get(peer).is_some_and(|&id| id >= mark)
    }

    pub(super) fn decode_frame(&mut self, peer: &str, data: &[u8]) -> Option<SyncFrame> {
        match codec::decode::<SyncFrame>(data, self.cfg.max_sync_bytes + 64) {
            Ok(f) if f.epoch != self.doc.epoch_root() => {
                self.framed_epoch(peer, f.epoch);
                self.counters.other_epoch_dropped += 1;
                tracing::debug!(%peer, "sync frame of another epoch dropped");
                None
            }
            Ok(_) if self.served_the_past(peer) => {
                self.counters.other_epoch_dropped += 1;
                None
            }
            Ok(f) => Some(f),
            Err(e) => {
                self.counters.malformed_dropped += 1;
                tracing::debug!(%peer, error = %e, "malformed sync frame dropped");
                None
            }
        }
    }

    /// Whether `peer` may hand this node a frame of `bytes` now (its ingress rate,
    /// [`crate::core::limits`]). A frame over it is dropped whole and counted: the peer's
    /// session fails and the sync protocol brings the same changes again later.
    pub(super) fn ingress_ok(&mut self, peer: &str, bytes: usize) -> bool {
        let now = self.last_now;
        let (limits, max_sync) = (self.cfg.limits, self.cfg.max_sync_bytes);
        // Looked up before any insert: no copy of the peer's id per message.
        if !self.ingress.contains_key(peer) {
            let fresh = limits.ingress_bucket(max_sync, now);
            self.ingress.insert(peer.to_string(), fresh);
        }
        let Some(bucket) = self.ingress.get_mut(peer) else {
            return false;
        };
        if bucket.take(bytes as u64, now).is_ok() {
            return true;
        }
        self.counters.ingress_dropped += 1;
        if self.counters.ingress_dropped.is_power_of_two() {
            tracing::warn!(%peer, bytes, rate = limits.max_ingress_bytes_per_sec,
                dropped = self.counters.ingress_dropped,
                "sync frame over the peer's ingress rate dropped (max_ingress_bytes_per_sec)");
        }
        false
    }

    /// A sync message or push was refused: counted by why.
    fn sync_refused(&mut self, peer: &str, e: &StateError) {
        if let StateError::Full { .. } = e {
            self.counters.full_dropped += 1;
            if self.counters.full_dropped.is_power_of_two() {
                tracing::warn!(%peer, error = %e, "changes from a peer refused");
            }
        } else {
            self.counters.malformed_dropped += 1;
            tracing::debug!(%peer, error = %e, "bad sync message or push dropped");
        }
    }

    /// Responder side: apply the peer's message, answer with ours (empty when none).
    pub(super) fn answer_sync(&mut self, peer: &str, data: &[u8]) -> Vec<u8> {
        if !self.ingress_ok(peer, data.len()) {
            return Vec::new();
        }
        let Some(frame) = self.decode_frame(peer, data) else {
            return Vec::new();
        };
        if frame.start && frame.adopt {
            if let Some(answer) = self.answer_adopt(peer) {
                return answer;
            }
        }
        let state = self.in_sync.entry(peer.to_string()).or_default();
        if frame.start {
            *state = reset_sync_state(state);
        }
        if !frame.push.is_empty() {
            let pushed = frame.push.into_iter().map(|b| b.into_vec()).collect();
            match self.doc.apply_pushed(pushed) {
                Ok(true) => {
                    tracing::debug!(%peer, "changes from a peer applied (pushed)");
                    self.doc_changed();
                    self.release_lost_claims();
                    self.check_awaiting();
                }
                Ok(false) => {}
                Err(e) => self.sync_refused(peer, &e),
            }
        }
        let reply = if frame.start && frame.heads_digest == Some(self.doc.heads_digest()) {
            Reply::Same
        } else {
            self.covers(frame.start, frame.fresh, frame.mine)
        };
        match &reply {
            // Both hold the same changes: no need to walk the history for automerge's
            // sync (it does on every message it receives).
            Reply::Same => {
                let heads = self.doc.heads();
                self.same_heads(false, peer, heads);
            }
            // Nothing of the peer's message needs reading (a first message carries no
            // changes; a `need` round carries none for automerge).
            Reply::Covered(_) | Reply::Need(_) | Reply::GiveUp => {}
            Reply::Sync => {
                if !self.apply_sync(false, peer, &frame.msg) {
                    self.in_sync.insert(peer.to_string(), SyncState::new());
                    return Vec::new();
                }
            }
        }
        self.saw_heads(peer, false);
        let snapshot = match reply {
            Reply::Sync if frame.start && frame.fresh => self.snapshot_for_join(),
            _ => None,
        };
        let mut answer = if let Some((snapshot, heads)) = snapshot {
            // The snapshot instead of our changes. The peer syncs on from what it holds
            // then: both sides know they share the snapshot's heads, so neither sums up
            // (or sends) the changes before them.
            let mut state = SyncState::new();
            state.shared_heads = heads;
            self.in_sync.insert(peer.to_string(), state);
            self.counters.snapshots_sent += 1;
            SyncFrame {
                snapshot: Some(snapshot),
                ..SyncFrame::msg(false, Vec::new())
            }
        } else {
            match reply {
                Reply::Same => SyncFrame {
                    same: true,
                    ..SyncFrame::msg(false, Vec::new())
                },
                Reply::Covered(heads) => SyncFrame {
                    covered: Some(heads.iter().map(|h| h.0).collect()),
                    mine: self.doc.last_local_change().map(|h| h.0),
                    ..SyncFrame::msg(false, Vec::new())
                },
                Reply::Need(missing) => SyncFrame {
                    need: missing.iter().map(|h| h.0).collect(),
                    ..SyncFrame::msg(false, Vec::new())
                },
                Reply::GiveUp => SyncFrame::msg(false, Vec::new()),
                Reply::Sync => {
                    let state = self.in_sync.entry(peer.to_string()).or_default();
                    let (msg, change_bytes) =
                        self.doc.sync_generate_sized(state).unwrap_or_default();
                    self.counters.sync_change_bytes_out += change_bytes;
                    SyncFrame {
                        fresh: self.is_fresh(),
                        ..SyncFrame::msg(false, msg)
                    }
                }
            }
        };
        if let (true, Some(have)) = (frame.start, &frame.events_have) {
            // What the peer lacks, within what is left of the frame cap.
            let budget = self.cfg.max_sync_bytes.saturating_sub(answer.msg.len()) / 2;
            let (events, more) = self.timeline.missing(have, MAX_EVENTS_PER_FRAME, budget);
            answer.events = events;
            answer.events_more = more;
        }
        self.encode_frame(answer)
    }

    /// A frame on the wire, naming this node's epoch.
    pub(super) fn encode_frame(&self, frame: SyncFrame) -> Vec<u8> {
        codec::encode(&SyncFrame {
            epoch: self.doc.epoch_root(),
            ..frame
        })
    }

    /// The peer holds exactly `heads` (its digest said so): the sync state of one
    /// direction records them as shared and as the peer's, as a message of theirs would.
    fn same_heads(&mut self, outgoing: bool, peer: &str, heads: Vec<ChangeHash>) {
        let states = if outgoing {
            &mut self.out_sync
        } else {
            &mut self.in_sync
        };
        let state = states.entry(peer.to_string()).or_default();
        state.shared_heads.clone_from(&heads);
        state.their_heads = Some(heads);
    }

    /// Applies a peer's sync message under the session state of one direction
    /// (`outgoing`: a session we started). False if the message was bad (dropped, counted).
    pub(super) fn apply_sync(&mut self, outgoing: bool, peer: &str, msg: &[u8]) -> bool {
        if msg.is_empty() {
            return true;
        }
        let states = if outgoing {
            &mut self.out_sync
        } else {
            &mut self.in_sync
        };
        let state = states.entry(peer.to_string()).or_default();
        match self.doc.sync_receive(state, msg) {
            Ok(true) => {
                tracing::debug!(%peer, outgoing, "changes from a peer applied");
                self.doc_changed();
                self.release_lost_claims();
                self.check_awaiting();
                true
            }
            Ok(false) => true,
            Err(e) => {
                self.sync_refused(peer, &e);
                false
            }
        }
    }

    /// Initiator side: apply the answer, send the next message or end the session.
    pub(super) fn continue_sync(&mut self, peer: &str, data: &[u8]) {
        let Some(mut session) = self.sessions.remove(peer) else {
            return;
        };
        let frame = if data.is_empty() || !self.ingress_ok(peer, data.len()) {
            None
        } else {
            self.decode_frame(peer, data)
        };
        let Some(mut frame) = frame else {
            self.counters.sync_failures += 1;
            return;
        };
        if let Some(snapshot) = frame.snapshot.take() {
            self.take_snapshot(peer, &snapshot);
        }
        if !frame.events.is_empty() {
            let added = self.merge_events(frame.events);
            // More where those came from: ask again right after this session.
            if frame.events_more && added > 0 {
                self.events_pull.insert(peer.to_string());
                session.again = true;
            }
        }
        if frame.same {
            self.counters.sync_same += 1;
            // Our heads when the session opened, the peer says: it had all we had then,
            // and we have all it had.
            self.same_heads(true, peer, session.heads.clone());
            self.saw_heads(peer, true);
            self.session_completed(peer, session);
            return;
        }
        if let Some(heads) = frame.covered.take() {
            self.covered_answer(peer, session, heads, frame.mine);
            return;
        }
        if !frame.need.is_empty() || session.need_rounds > 0 {
            self.need_answer(peer, session, &frame.need);
            return;
        }
        if !self.apply_sync(true, peer, &frame.msg) {
            return;
        }
        self.saw_heads(peer, true);
        if frame.fresh && self.large_for_joins() {
            // A new node: its own first session takes this document whole (both sides
            // open a session on a new connection). Sending it change by change here
            // would encode all of it (~0.5 s at 100,000 stories) for the new node to
            // apply one by one, racing the snapshot. This session ends, not completed;
            // the next one starts where the snapshot leaves both.
            self.counters.sync_sessions_deferred += 1;
            return;
        }
        let state = self.out_sync.entry(peer.to_string()).or_default();
        match self.doc.sync_generate_sized(state) {
            Some((msg, change_bytes)) if session.rounds < MAX_SYNC_ROUNDS => {
                self.counters.sync_change_bytes_out += change_bytes;
                session.rounds += 1;
                self.sessions.insert(peer.to_string(), session);
                let data = self.encode_frame(SyncFrame::msg(false, msg));
                self.effects.push_back(Effect::SendSync {
                    to: peer.to_string(),
                    data,
                });
            }
            Some(_) => {
                tracing::warn!(%peer, "sync session exceeded {MAX_SYNC_ROUNDS} rounds; abandoned");
            }
            None => self.session_completed(peer, session),
        }
    }

    /// A session this node started ended with nothing more to say either way: the peer
    /// has everything this node held when it opened.
    fn session_completed(&mut self, peer: &str, session: Session) {
        self.record_completion(peer, session.id, session.opened_ms);
        let acked = self.push_acked.entry(peer.to_string()).or_default();
        *acked = (*acked).max(session.pushed_upto);
        if session.again {
            self.open_session_as(peer, session.again_push, session.again_full);
        }
    }

    /// Session `id` with `peer` completed: the peer held every own change of ours up to
    /// the session's opening, and we hold everything it held when it answered.
    pub(super) fn record_completion(&mut self, peer: &str, id: u64, opened_ms: u64) {
        self.counters.sync_sessions_completed += 1;
        let done = self.completed.entry(peer.to_string()).or_default();
        *done = (*done).max(id);
        if !self.settle_checked.is_empty() && !self.settle_dirty.contains(peer) {
            self.settle_dirty.insert(peer.to_string());
        }
        self.session_ms
            .sample(self.last_now.saturating_sub(opened_ms));
        if self.joined_ms.is_none() {
            tracing::info!(%peer, "synced with the mesh; joined");
            self.joined_ms = Some(self.last_now);
        }
    }

    /// A peer answered our first sync with its whole document: merged while ours is
    /// still new (a second one, from another peer joined at the same time, brings
    /// nothing a sync would not), then the session syncs on from the heads both hold.
    fn take_snapshot(&mut self, peer: &str, snapshot: &[u8]) {
        let mut state = SyncState::new();
        if self.doc.stored_bytes() < FRESH_MAX_BYTES {
            let before = self.digest;
            match self.doc.merge_snapshot(snapshot) {
                Ok(taken) => {
                    state.shared_heads = taken.theirs;
                    if let Some(stored) = taken.stored {
                        tracing::info!(%peer, bytes = snapshot.len(), "joined from a snapshot");
                        self.counters.snapshots_taken += 1;
                        self.effects.push_back(Effect::Rebase(Box::new(stored)));
                        self.doc_changed();
                        self.release_lost_claims();
                        self.check_awaiting();
                        self.news_before.get_or_insert(before);
                    }
                }
                Err(e) => self.sync_refused(peer, &e),
            }
        }
        self.out_sync.insert(peer.to_string(), state);
    }

    /// This node wrote to the document: persist, and push the change to every alive peer
    /// (at the next `poll_effect`, so several writes in one step travel together).
    pub(super) fn local_write(&mut self) {
        tracing::debug!("wrote to the document");
        self.doc_changed();
        self.push_pending = true;
    }

    /// The document changed (locally or from a peer): persist and refresh the digest.
    pub(super) fn doc_changed(&mut self) {
        let chunk = self.doc.save_incremental();
        if !chunk.is_empty() {
            self.effects.push_back(Effect::Persist { chunk });
        }
        self.digest = self.doc.heads_digest();
    }
}
