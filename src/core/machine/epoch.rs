//! Moving the mesh to a new epoch (docs/DESIGN.md §3.5).
//!
//! A node whose document holds `epoch_after` merged stories proposes epoch n + 1 by
//! claiming `epoch:<n+1>`, through settle like any claim, so one proposer wins. From the
//! moment a node has seen an open proposal (its holder not dead) it claims and takes over
//! nothing; jobs in flight finish. The winner waits for the mesh to go quiet — no other
//! claim open (a dead holder's it releases, as a takeover would) — then cuts at its own
//! heads: it builds the seed, writes `epoch/<n+1>/<claim>` {cut, root} and waits until
//! every alive peer has synced with it since, so each holds the cut before anyone moves.
//! Then it moves; every other node moves once it holds the cut and the cut's writer has
//! moved (its beat names the new root) or died. Moving: build the seed at the cut
//! itself, refuse a root that differs, open it, carry in what the old document admitted
//! after the cut, store the new document and archive the old one
//! ([`Effect::BeginEpoch`]), and sync afresh (sync is scoped by epoch).
//!
//! The cut is quiet because settle heard every alive peer after the proposal was
//! written: a claim written concurrently with it was heard too, and nothing is claimed
//! after. So what follows the cut is results, releases and merges (heard before the cut:
//! no claim may be open) and facts that are not work (stories, knowledge, commands),
//! which carry over as they are.

use super::settle::{settle_peers, settles_with};
use super::*;
use crate::core::state::EpochFact;

/// A new epoch's document for the store: archive the old one and keep this one, with
/// its root (`Store::begin_epoch`), atomically and flushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochSwitch {
    pub epoch: u64,
    /// The new document, saved whole.
    pub snapshot: Vec<u8>,
    /// Its root change's hash (what a restart opens it with).
    pub root: [u8; 32],
    /// Taken up whole from a peer (a new node, [`Core::adopt_tick`]), not built here.
    pub whole: bool,
}

/// What this node knows of the move (see the module's documentation).
#[derive(Debug, Default)]
pub(super) struct Moving {
    /// This node's proposal, settled and won.
    cutting: Option<Cutting>,
    /// Per peer, the epoch root its latest beat named.
    pub(super) roots: BTreeMap<String, Option<[u8; 32]>>,
    /// A cut this node could not build as written (its key): not tried again.
    refused: Option<String>,
    /// No proposal from this node before then (mono ms): the last gave up, or the
    /// document was looked at.
    quiet_until: u64,
    /// A move is due, and waits for these nodes ([`Core::epoch_waits_for`]).
    waits_for: Vec<String>,
    /// The document this node moved from, served to peers still on it: kept from the
    /// move, or read from the store's archive after a restart (once per start).
    prev: Option<Prev>,
    /// The archived document was asked for, or the previous one let go: not again.
    prev_done: bool,
    /// When peers on the previous epoch were last looked for (mono ms).
    prev_checked_ms: u64,
    /// A new node's request for the document of the epoch the mesh is on.
    pub(super) adopt: super::adopt::Adopt,
}

/// The previous epoch's document, kept while a node that announced itself is not on
/// this one: a node that missed the move (it crashed after the cut) gets the cut from
/// it, then moves itself. Sessions on it are opened by this node only (the peer's own
/// frames to this node are of another epoch and dropped) and sync in full.
struct Prev {
    doc: Doc,
    root: Option<[u8; 32]>,
    /// Per peer, the session's sync state and rounds.
    sessions: BTreeMap<String, (SyncState, u32)>,
}

impl std::fmt::Debug for Prev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prev")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Cutting {
    claim: String,
    epoch: u64,
    /// It gives up (releases the proposal) if the mesh is not quiet by then.
    deadline_ms: u64,
    /// The cut written, and the session mark after it.
    written: Option<(EpochFact, u64)>,
}

/// How long a settled proposal waits for the mesh to go quiet, in leases.
const QUIET_LEASES: u64 = 10;

impl Core {
    /// This document's epoch (0: a mesh's first document).
    pub fn epoch(&self) -> u64 {
        self.doc.base().map_or(0, |b| b.epoch)
    }

    /// Whether this node holds its claims back for a move to a new epoch (see
    /// [`Core::moving`]): the simulator's liveness bounds allow for it.
    pub fn is_moving(&mut self, now_ms: u64) -> bool {
        self.moving(now_ms)
    }

    /// The claim of this node's settled proposal, if it holds one (renewed as running
    /// claims are).
    pub(super) fn proposal(&self) -> Option<&str> {
        self.moving.cutting.as_ref().map(|c| c.claim.as_str())
    }

    /// Gives this node's settled proposal up (a clean stop, a revoke): released with
    /// `why` unless `why` is `None` (a revoked node's releases would not count).
    pub(super) fn drop_proposal(&mut self, why: Option<ReleaseReason>, note: &str) {
        if let Some(c) = self.moving.cutting.take() {
            self.observer.forget(&c.claim);
            if let Some(why) = why {
                self.release(&c.claim, why, note);
            }
        }
    }

    /// Remembers the epoch a peer's beat named.
    pub(super) fn heard_epoch(&mut self, from: &str, root: Option<[u8; 32]>) {
        if self.moving.roots.get(from) != Some(&root) {
            self.moving.roots.insert(from.to_string(), root);
        }
    }

    /// Whether the mesh is moving as this node sees it: a proposal for the next epoch is
    /// open and its holder not dead, a cut is written, or this node proposed. Nothing
    /// is claimed or taken over meanwhile.
    pub(super) fn moving(&mut self, now_ms: u64) -> bool {
        if self.moving.cutting.is_some() {
            return true;
        }
        let n = self.epoch();
        let (view, claims) = self.derived();
        // A cut written and not yet moved on: nothing more is claimed in this epoch.
        if view.epochs.values().any(|e| e.epoch > n) {
            return true;
        }
        // (A proposal names its own resource: a lookup, not a scan of every claim.)
        let membership = &self.membership;
        let open = claims
            .naming(&Resource::Epoch(n + 1))
            .iter()
            .filter(|id| claims.holds(id))
            .filter_map(|id| claims.claim(id))
            .any(|c| {
                !membership.is_dead(&c.holder, now_ms)
                    && !view.roster.revoked.iter().any(|e| e.peer == c.holder)
            });
        open
    }

    /// Whether every node this one knows of (its members, every node that announced
    /// itself, every admitted node), but the revoked, is alive and on this epoch: a
    /// cut is made only then, so no node misses two moves, and one that misses one (it
    /// crashed right after the cut) is served the cut from the previous document
    /// ([`Prev`]). A node that left for good must be revoked, or no new epoch is cut.
    fn all_here(&mut self, now_ms: u64) -> bool {
        self.every_known(now_ms, true)
    }

    /// Whether every node this one knows of but the revoked last named this epoch in a
    /// beat, and, with `alive`, is alive. (In a closed mesh every admitted node counts:
    /// one stopped before its own description counted is known by its admission.)
    fn every_known(&mut self, now_ms: u64, alive: bool) -> bool {
        self.not_here(now_ms, alive, 1).is_empty()
    }

    /// Up to `max` of the nodes [`Core::every_known`] waits for.
    fn not_here(&mut self, now_ms: u64, alive: bool, max: usize) -> Vec<String> {
        let here = self.doc.epoch_root();
        let view = self.derived().0;
        let (membership, roots) = (&self.membership, &self.moving.roots);
        let revoked = |p: &str| view.roster.revoked.iter().any(|e| e.peer == p);
        let here_now = |p: &str| {
            p == self.peer
                || revoked(p)
                || ((!alive || membership.state(p, now_ms) == Some(PeerState::Alive))
                    && roots.get(p) == Some(&here))
        };
        let mut missing: Vec<String> = membership
            .states(now_ms)
            .map(|(p, _)| p)
            .chain(view.nodes.keys().map(String::as_str))
            .chain(view.roster.admitted.iter().map(|e| e.peer.as_str()))
            .filter(|p| !here_now(p))
            .take(max.saturating_mul(3))
            .map(str::to_string)
            .collect();
        missing.sort();
        missing.dedup();
        missing.truncate(max);
        missing
    }

    /// The nodes a due move waits for (`status`): this node's view holds `epoch_after`
    /// merged stories, and these known nodes are down or on another epoch (a node that
    /// left for good must be revoked). Empty when no move is due or none is missing.
    pub fn epoch_waits_for(&self) -> &[String] {
        &self.moving.waits_for
    }

    /// Serves the previous document to peers still on it, and drops it once every node
    /// this one knows of has named this epoch (a node down since before the move keeps
    /// it: it comes back on the old one). Once a beat period.
    fn serve_prev(&mut self, now_ms: u64) {
        if now_ms < self.moving.prev_checked_ms + self.cfg.membership.heartbeat_ms {
            return;
        }
        self.moving.prev_checked_ms = now_ms;
        if self.moving.prev.is_none() {
            self.ask_previous(now_ms);
            return;
        }
        if self.every_known(now_ms, false) {
            tracing::info!("every node is on this epoch; the previous document is let go");
            (self.moving.prev, self.moving.prev_done) = (None, true);
            return;
        }
        let Some(prev) = self.moving.prev.as_mut() else {
            return;
        };
        let behind: Vec<String> = self
            .moving
            .roots
            .iter()
            .filter(|(p, r)| {
                **r == prev.root
                    && !prev.sessions.contains_key(*p)
                    && self.membership.state(p, now_ms) == Some(PeerState::Alive)
            })
            .map(|(p, _)| p.clone())
            .collect();
        for p in behind {
            let mut state = SyncState::new();
            let Some(msg) = prev.doc.sync_generate(&mut state) else {
                continue;
            };
            tracing::info!(peer = %p, "a peer is on the previous epoch: serving it the cut");
            let data = codec::encode(&SyncFrame {
                heads_digest: Some(prev.doc.heads_digest()),
                epoch: prev.root,
                ..SyncFrame::msg(true, msg)
            });
            prev.sessions.insert(p.clone(), (state, 0));
            self.effects.push_back(Effect::SendSync { to: p, data });
        }
    }

    /// After a restart, the document this node moved from is in the store's archive
    /// only: read it once an alive peer's beat names another epoch (a straggler that
    /// crashed after the cut comes back on the previous one, and no node that moved may
    /// be up with it in memory: without it, that peer never moves).
    fn ask_previous(&mut self, now_ms: u64) {
        let epoch = self.epoch();
        if self.moving.prev_done || epoch == 0 {
            return;
        }
        // (Past epoch 1, a peer on the first document is a new node: see `adopt_tick`.)
        let (here, membership) = (self.doc.epoch_root(), &self.membership);
        let behind = self.moving.roots.iter().any(|(p, r)| {
            *r != here
                && (r.is_some() || epoch == 1)
                && membership.state(p, now_ms) == Some(PeerState::Alive)
        });
        if behind {
            self.moving.prev_done = true;
            self.effects.push_back(Effect::LoadPrevious { epoch });
        }
    }

    /// The shell's answer to [`Effect::LoadPrevious`]: the archived document, served to
    /// peers still on it as if this node had just moved.
    pub fn previous_loaded(&mut self, bytes: Option<&[u8]>) {
        let epoch = self.epoch();
        let Some(bytes) = bytes else {
            tracing::warn!(
                epoch,
                "a peer is on an earlier epoch, and this node archived no document it moved from"
            );
            return;
        };
        match self.doc.previous(bytes, epoch) {
            // (A node that took its epoch up archived its own first document instead.)
            Ok(doc) if epoch > 1 && doc.base().map(|b| b.epoch) != Some(epoch - 1) => {}
            Ok(doc) => {
                tracing::info!(epoch, "a peer is on an earlier epoch: serving it the archived document this node moved from");
                let root = doc.epoch_root();
                self.moving.prev = Some(Prev {
                    doc,
                    root,
                    sessions: BTreeMap::new(),
                });
                self.moving.prev_checked_ms = 0;
            }
            Err(e) => {
                tracing::error!(epoch, error = %e, "cannot open the archived document this node moved from")
            }
        }
    }

    /// An answer in a session on the previous document, or to a request for this
    /// epoch's: true if it was one.
    pub(super) fn prev_answered(&mut self, peer: &str, data: &[u8]) -> bool {
        if self.adopt_answered(peer, data) {
            return true;
        }
        let Some(prev) = self.moving.prev.as_mut() else {
            return false;
        };
        let Some((mut state, rounds)) = prev.sessions.remove(peer) else {
            return false;
        };
        let frame = match codec::decode::<SyncFrame>(data, self.cfg.max_sync_bytes + 64) {
            Ok(f) if f.epoch == prev.root => f,
            _ => return false,
        };
        if frame.same || frame.msg.is_empty() || rounds >= 64 {
            return true;
        }
        if prev.doc.sync_receive(&mut state, &frame.msg).is_err() {
            return true;
        }
        if let Some(msg) = prev.doc.sync_generate(&mut state) {
            let data = codec::encode(&SyncFrame {
                epoch: prev.root,
                ..SyncFrame::msg(false, msg)
            });
            prev.sessions.insert(peer.to_string(), (state, rounds + 1));
            self.effects.push_back(Effect::SendSync {
                to: peer.to_string(),
                data,
            });
        }
        true
    }

    /// A session on the previous document failed: the next look opens another.
    pub(super) fn prev_failed(&mut self, peer: &str) {
        self.adopt_failed(peer);
        if let Some(prev) = self.moving.prev.as_mut() {
            prev.sessions.remove(peer);
        }
    }

    /// The move's part of a tick: propose, cut, or follow a cut.
    pub(super) fn epoch_tick(&mut self, now_ms: u64, wall_ms: u64) {
        self.serve_prev(now_ms);
        self.adopt_tick(now_ms);
        if self.moving.cutting.is_some() {
            self.cut(now_ms, wall_ms);
        } else {
            self.follow(now_ms);
            if self.cfg.work && self.cfg.epoch_after > 0 {
                self.propose(now_ms, wall_ms);
            }
        }
    }

    /// Proposes epoch n + 1 once this document holds `epoch_after` merged stories.
    fn propose(&mut self, now_ms: u64, wall_ms: u64) {
        if now_ms < self.moving.quiet_until
            || self.stopping
            || self.local.values().any(|c| c.epoch.is_some())
        {
            return;
        }
        // Counting merged stories reads every story: once a beat period.
        self.moving.quiet_until = now_ms + self.cfg.membership.heartbeat_ms;
        // Not before this node has synced with a peer since it started: alone, it may
        // not know of the mesh it will meet (a new node cut off from it by a partition
        // worked alone, moved alone, and its history and the mesh's never met again).
        if self.joined_ms.is_none() || !self.may_claim_now(now_ms) || self.moving(now_ms) {
            return;
        }
        let next = self.epoch() + 1;
        let view = self.derived().0;
        if view.epochs.values().any(|e| e.epoch >= next) {
            return;
        }
        let merged = view
            .stories
            .values()
            .filter(|s| s.status == StoryStatus::Merged)
            .count();
        if merged < self.cfg.epoch_after as usize {
            self.moving.waits_for.clear();
            return;
        }
        let missing = self.not_here(now_ms, true, 8);
        if missing != self.moving.waits_for && !missing.is_empty() {
            tracing::info!(epoch = next, merged, waits_for = ?missing,
                "a new epoch is due; waiting for every known node to be up and here (revoke a node that left for good)");
        }
        self.moving.waits_for = missing;
        if !self.moving.waits_for.is_empty() {
            return;
        }
        let claims = self.derived().1;
        let resource = Resource::Epoch(next);
        // A dead proposer's claim is released for it, as a takeover does.
        if let Some(old) = claims.winner(&resource).map(str::to_string) {
            let note = format!("lease expired; proposal taken over by {}", self.peer);
            let fact = ReleaseFact {
                why: ReleaseReason::Expired,
                note,
            };
            if let Err(e) = self.doc.put_release(&old, &fact, &self.peer) {
                tracing::error!(claim = %old, error = %e, "cannot release a dead proposer's claim");
                return;
            }
        }
        self.next_claim += 1;
        let id = claim_id(&self.peer, self.next_claim);
        let fact = ClaimFact {
            resources: vec![(resource.clone(), claims.next_token(&resource))],
            holder: self.peer.clone(),
            ttl_ms: self.cfg.lease.ttl_ms,
            written_at_ms: wall_ms,
            attempt: 1,
            after: None,
        };
        if let Err(e) = self.doc.put_claim(&id, &fact) {
            tracing::error!(claim = %id, error = %e, "cannot write an epoch proposal");
            return;
        }
        let change = self.doc.last_local_change();
        self.local_write();
        self.observer.observe_claim(&id, now_ms);
        tracing::info!(claim = %id, epoch = next, merged, "proposing a new epoch; settling");
        let mark = self.session_mark();
        let waiting = settle_peers(&self.membership, &self.connected, &self.refused, now_ms)
            .into_iter()
            .map(str::to_string)
            .collect();
        self.local.insert(
            id,
            LocalClaim {
                story: String::new(),
                phase: Phase::Merge,
                round: 0,
                epoch: Some(next),
                state: LocalState::Settling {
                    mark,
                    waiting,
                    deadline_ms: now_ms.saturating_add(self.settle_timeout()),
                    change,
                },
                written_ms: now_ms,
            },
        );
        self.check_settling(now_ms);
    }

    /// A proposal settled: won, it waits for the mesh to go quiet; lost, it is released.
    pub(super) fn proposal_settled(&mut self, id: String, epoch: u64, now_ms: u64) {
        self.local.remove(&id);
        if !self.derived().1.holds(&id) {
            tracing::info!(claim = %id, epoch, "another proposal won the new epoch; released");
            self.release(&id, ReleaseReason::Unsettled, "another proposal won");
            return;
        }
        tracing::info!(claim = %id, epoch, "proposal settled; waiting for every claim to end");
        let deadline_ms = now_ms.saturating_add(self.cfg.lease.ttl_ms.saturating_mul(QUIET_LEASES));
        self.moving.cutting = Some(Cutting {
            claim: id,
            epoch,
            deadline_ms,
            written: None,
        });
    }

    /// The winner: once the mesh is quiet, write the cut; once every alive peer holds
    /// it, move.
    fn cut(&mut self, now_ms: u64, wall_ms: u64) {
        let Some(c) = self.moving.cutting.as_ref() else {
            return;
        };
        let (claim, epoch, deadline_ms) = (c.claim.clone(), c.epoch, c.deadline_ms);
        let written = c.written.clone();
        // A cut once written is final: this node moves on it once every alive peer on
        // this epoch has synced with it since (each holds the cut), whatever became of
        // the proposal (a restart releases it).
        if let Some((fact, mark)) = written {
            let (membership, connected, refused) =
                (&self.membership, &self.connected, &self.refused);
            let elsewhere = |p: &str| self.other_epoch.contains(p);
            let behind = settle_peers(membership, connected, refused, now_ms)
                .into_iter()
                .any(|p| {
                    !elsewhere(p)
                        && settles_with(membership, connected, refused, p, now_ms)
                        && !self.synced_since(p, mark)
                });
            if !behind && self.chosen_cut(now_ms).as_ref() == Some(&fact) {
                self.move_to(&fact, now_ms);
            } else if !behind {
                // Another cut of this epoch is the one to take (see `chosen_cut`).
                self.moving.cutting = None;
            }
            return;
        }
        let (view, claims) = self.derived();
        if !claims.holds(&claim) || view.epochs.values().any(|e| e.epoch == epoch) {
            tracing::warn!(claim = %claim, epoch, "lost the epoch proposal (taken over, or another cut it)");
            self.moving.cutting = None;
            return;
        }
        // A node down or on another epoch: no cut is made without it (see `all_here`),
        // and claims must not wait for it.
        let absent = !self.all_here(now_ms);
        if now_ms >= deadline_ms || absent {
            tracing::warn!(claim = %claim, epoch, absent, "the mesh did not go quiet for the new epoch; giving the proposal up");
            self.moving.cutting = None;
            self.moving.quiet_until = now_ms.saturating_add(self.cfg.lease.ttl_ms * QUIET_LEASES);
            self.release(
                &claim,
                ReleaseReason::Abandoned,
                "the mesh did not go quiet",
            );
            return;
        }
        // Quiet: no other claim open. A dead holder's is released here, as a takeover
        // would; its work is claimed again in the new epoch.
        let membership = &self.membership;
        let dead = |p: &str| {
            membership.is_dead(p, now_ms) || view.roster.revoked.iter().any(|e| e.peer == p)
        };
        let (mut open, mut expired) = (false, Vec::new());
        for (id, f) in claims.active().filter(|(id, _)| *id != claim) {
            if dead(&f.holder)
                && self
                    .observer
                    .takeover_allowed(id, &self.cfg.lease, now_ms, true)
            {
                expired.push(id.to_string());
            } else {
                open = true;
            }
        }
        for id in &expired {
            let note = format!("lease expired; released by {} for epoch {epoch}", self.peer);
            self.release(id, ReleaseReason::Expired, &note);
        }
        if open || !expired.is_empty() {
            return;
        }
        let cut = self.doc.heads();
        let seed = match self.doc.seed_at(epoch, &cut) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(epoch, error = %e, "cannot build the new epoch's seed; giving the proposal up");
                self.moving.cutting = None;
                self.release(
                    &claim,
                    ReleaseReason::Abandoned,
                    "the seed could not be built",
                );
                return;
            }
        };
        let fact = EpochFact {
            epoch,
            claim: claim.clone(),
            holder: self.peer.clone(),
            cut: cut.iter().map(|h| h.to_string()).collect(),
            root: seed.root.to_string(),
            at_ms: wall_ms,
        };
        if let Err(e) = self.doc.put_epoch(&fact) {
            tracing::error!(epoch, error = %e, "cannot write the new epoch's cut");
            return;
        }
        self.local_write();
        tracing::info!(epoch, root = %seed.root, kept = seed.kept, retired = seed.retired, stories = seed.stories, "cut the new epoch; waiting until every alive peer holds it");
        let mark = self.session_mark();
        if let Some(c) = self.moving.cutting.as_mut() {
            c.written = Some((fact, mark));
        }
    }

    /// The cut of the next epoch this node would move on, if it holds one, and if no
    /// alive peer is on an epoch that is neither this one nor that cut's (then it
    /// waits to learn more: that peer moved on another cut). A cut is written by the
    /// holder of a claim on `epoch:<n+1>`; of two (a proposal taken over from a holder
    /// thought dead, which had cut where no one saw), the higher claim's.
    fn chosen_cut(&mut self, now_ms: u64) -> Option<EpochFact> {
        let next = self.epoch() + 1;
        let (view, claims) = self.derived();
        if view.epochs.is_empty() {
            return None;
        }
        let resource = Resource::Epoch(next);
        let refused = self.moving.refused.as_deref();
        let fact = view
            .epochs
            .values()
            .filter(|e| e.epoch == next && refused != Some(e.key().as_str()))
            .filter_map(|e| {
                let c = claims.claim(&e.claim)?;
                let token = c.token_of(&resource).filter(|_| c.holder == e.holder)?;
                Some(((token, e.claim.clone()), e))
            })
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, e)| e.clone())?;
        let (here, there) = (self.doc.epoch_root(), fact.hashes().map(|(_, r)| r.0));
        let membership = &self.membership;
        // A peer on the first document (no root) is not on another cut: it is new, and
        // takes up the epoch most of its peers name (`adopt_tick`) — this one's, once
        // it moved. Waiting for it, neither would move.
        let foreign = self.moving.roots.iter().any(|(p, r)| {
            r.is_some()
                && *r != here
                && *r != there
                && membership.state(p, now_ms) == Some(PeerState::Alive)
        });
        (!foreign).then_some(fact)
    }

    /// Every other node: moves on the chosen cut once its writer has moved or died. Its
    /// writer, back from a restart before it moved, takes it up again as its own.
    fn follow(&mut self, now_ms: u64) {
        let Some(fact) = self.chosen_cut(now_ms) else {
            return;
        };
        if fact.holder == self.peer {
            tracing::info!(epoch = fact.epoch, "this node cut the next epoch before it restarted; moving once every peer holds the cut");
            let mark = self.session_mark();
            let deadline_ms = now_ms;
            self.moving.cutting = Some(Cutting {
                claim: fact.claim.clone(),
                epoch: fact.epoch,
                deadline_ms,
                written: Some((fact, mark)),
            });
            return;
        }
        let root = fact.hashes().map(|(_, r)| r.0);
        let moved = (root.is_some() && self.moving.roots.get(&fact.holder) == Some(&root))
            || self.membership.is_dead(&fact.holder, now_ms);
        if moved {
            self.move_to(&fact, now_ms);
        }
    }

    /// Opens the epoch `fact` cuts, if this node builds the same root from it.
    fn move_to(&mut self, fact: &EpochFact, now_ms: u64) {
        let Some((cut, root)) = fact.hashes() else {
            return;
        };
        if !self.doc.holds_all(&cut) {
            return; // the cut's changes come with the fact; sync brings them
        }
        let doc = match self.doc.next_epoch(fact.epoch, &cut, &root) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(epoch = fact.epoch, by = %fact.holder, error = %e, "refusing to move to the new epoch");
                self.moving.refused = Some(fact.key());
                return;
            }
        };
        self.counters.epochs_moved += 1;
        tracing::info!(epoch = fact.epoch, %root, cut_by = %fact.holder, "moved to the new epoch");
        self.switch_to(doc, fact.epoch, root, true, now_ms);
    }

    /// Makes `doc`, epoch `epoch`'s opened at `root`, this node's document: stored
    /// (the old one archived), the old one kept to serve peers still on it when
    /// `keep_prev`, sync state reset, the beat published, sessions opened with the
    /// peers already there.
    pub(super) fn switch_to(
        &mut self,
        mut doc: Doc,
        epoch: u64,
        root: ChangeHash,
        keep_prev: bool,
        now_ms: u64,
    ) {
        let snapshot = doc.save();
        self.effects
            .push_back(Effect::BeginEpoch(Box::new(EpochSwitch {
                epoch,
                snapshot,
                root: root.0,
                whole: !keep_prev,
            })));
        let old = std::mem::replace(&mut self.doc, doc);
        // A node that took its epoch up holds no document the mesh moved from.
        self.moving.prev_done = !keep_prev;
        if keep_prev {
            self.moving.prev = Some(Prev {
                root: old.epoch_root(),
                doc: old,
                sessions: BTreeMap::new(),
            });
            self.moving.prev_checked_ms = now_ms;
        }
        // The old document's sync state means nothing in the new one.
        self.out_sync.clear();
        self.in_sync.clear();
        self.sessions.clear();
        self.awaiting.clear();
        self.push_acked.clear();
        self.hb_mismatch.clear();
        self.join_snapshot = None;
        self.settle_checked.clear();
        self.view = None;
        self.digest = self.doc.heads_digest();
        let here = Some(root.0);
        self.other_epoch = self
            .moving
            .roots
            .iter()
            .filter(|(_, r)| **r != here)
            .map(|(p, _)| p.clone())
            .collect();
        self.moving.cutting = None;
        self.moving.refused = None;
        self.local.retain(|_, c| c.epoch.is_none());
        // Its peers learn it from the beat; sync with those already there.
        self.publish_beat(now_ms, true);
        let mut peers: Vec<String> = self.membership.alive(now_ms);
        peers.retain(|p| !self.other_epoch.contains(p));
        for p in &peers {
            self.start_sync(p);
        }
    }
}
