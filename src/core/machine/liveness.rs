//! Liveness, SWIM-style (docs/DESIGN.md §4): each period a probe to one peer (and to the
//! silent and the suspect), a beat published only when what it says changes, suspicions
//! named in it and refuted by a newer one, and leases renewed while their holder is alive.

use super::*;
use crate::core::model::Suspicion;

/// A connection that closes sooner than this after it opened was refused, not lost.
const BRIEF_CONNECTION_MS: u64 = 2_000;

/// The least time between two looks for the rest of the mesh ([`Effect::Discover`]).
pub(super) const DISCOVER_EVERY_MS: u64 = 30_000;
/// How long a peer must keep counting more members than this node before it looks.
pub(super) const WIDER_FOR_MS: u64 = 10_000;

/// What a published beat says that its peers act on (the heads digest and the wall clock
/// travel with probes; a change of theirs alone is not news).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Said {
    roles: Vec<String>,
    free_capacity: u32,
    claims: Vec<u64>,
    suspects: Vec<(String, u64, u64)>,
}

impl Core {
    /// This node's beat as of now, under the sequence number of its last publication.
    fn current_beat(&self, now_ms: u64) -> Heartbeat {
        // None free while it claims nothing (work off, off the roster, out of allowance):
        // a peer's first-claimer pick skips it (`news.rs`).
        let may_claim = self.cfg.work && self.may_work_on_roster() && !self.out_of_allowance();
        let free = self.cfg.capacity.saturating_sub(self.local.len() as u32);
        Heartbeat {
            incarnation: self.incarnation,
            seq: self.hb_seq,
            roles: self.cfg.roles.clone(),
            free_capacity: if may_claim { free } else { 0 },
            heads_digest: self.digest,
            sent_at_ms: self.last_wall,
            claims: self
                .local
                .keys()
                .map(String::as_str)
                .chain(self.proposal())
                .filter_map(|id| claim_number(&self.peer, id))
                .collect(),
            suspects: self.membership.suspicions(now_ms),
            members: self.members(now_ms),
            epoch: self.doc.epoch_root(),
        }
    }

    /// Alive peers whose latest beat named another epoch than this node's.
    pub fn other_epoch_peers(&self, now_ms: u64) -> Vec<String> {
        let alive = self.membership.alive(now_ms);
        self.other_epoch
            .iter()
            .filter(|p| alive.contains(p))
            .cloned()
            .collect()
    }

    /// Members this node counts alive or suspect, itself included.
    fn members(&self, now_ms: u64) -> u32 {
        u32::try_from(self.membership.not_dead(now_ms) + 1).unwrap_or(u32::MAX)
    }

    /// A peer that keeps counting more members than this node, on contacts at least
    /// [`WIDER_FOR_MS`] apart, knows someone this node does not (two nodes that joined
    /// through a third at the same moment): ask the shell to look for the rest of the
    /// mesh, at most every [`DISCOVER_EVERY_MS`]. (Counts differ for a few seconds while a
    /// mesh forms or a death is seen at slightly different times: no reason to look.)
    fn compare_members(&mut self, from: &str, theirs: u32, now_ms: u64) {
        if theirs <= self.members(now_ms) {
            self.wider.remove(from);
            return;
        }
        let since = *self.wider.entry(from.to_string()).or_insert(now_ms);
        if now_ms.saturating_sub(since) < WIDER_FOR_MS {
            return;
        }
        self.wider.remove(from);
        let due = self
            .discovered_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= DISCOVER_EVERY_MS);
        if due {
            self.discovered_ms = Some(now_ms);
            tracing::info!(peer = %from, members = theirs, "a peer knows more of the mesh: looking for the rest");
            self.effects.push_back(Effect::Discover);
        }
    }

    /// What a probe or its answer carries: this node's beat, or nothing from a passive
    /// observer or a stopping node (it is not, or no longer, a member).
    fn probe_body(&self, now_ms: u64) -> Vec<u8> {
        let beat = (!self.cfg.passive && !self.stopping).then(|| self.current_beat(now_ms));
        codec::encode(&beat)
    }

    /// One probe period (the shell calls it every `heartbeat_ms`): probes out, and the
    /// beat published if what it says changed.
    pub fn heartbeat(&mut self, now_ms: u64, wall_ms: u64) {
        self.last_now = self.last_now.max(now_ms);
        self.last_wall = wall_ms;
        // A stopping node said goodbye; a beat now would revive it on its peers.
        if self.stopping {
            return;
        }
        self.send_probes(now_ms, true);
        self.publish_beat(now_ms, false);
    }

    /// Sends the probes due now (`period`: the round robin's next too).
    pub(super) fn send_probes(&mut self, now_ms: u64, period: bool) {
        if self.stopping {
            return;
        }
        let targets = self.membership.due_probes(&self.peer, now_ms, period);
        if targets.is_empty() {
            return;
        }
        let body = self.probe_body(now_ms);
        for to in targets {
            if !self.refused.contains(&to) {
                self.counters.probes_sent += 1;
                self.probe_delays.sent(&to, now_ms);
                self.effects.push_back(Effect::Probe {
                    to,
                    data: body.clone(),
                });
            }
        }
    }

    /// Publishes the beat if what it says changed since the last one (or `force`: a
    /// refutation), under the next sequence number.
    pub(super) fn publish_beat(&mut self, now_ms: u64, force: bool) {
        if self.cfg.passive || self.stopping {
            return;
        }
        let beat = self.current_beat(now_ms);
        let said = Said {
            roles: beat.roles.clone(),
            free_capacity: beat.free_capacity,
            claims: beat.claims.clone(),
            suspects: beat
                .suspects
                .iter()
                .map(|s| (s.peer.clone(), s.incarnation, s.seq))
                .collect(),
        };
        if !force {
            if self.said.as_ref() == Some(&said) || self.unsaid.as_ref() == Some(&said) {
                return;
            }
            if self
                .said
                .as_ref()
                .is_some_and(|old| self.no_news(old, &said, now_ms))
            {
                self.unsaid = Some(said);
                return;
            }
        }
        self.unsaid = None;
        self.said = Some(said);
        self.hb_seq += 1;
        let beat = Heartbeat {
            seq: self.hb_seq,
            ..beat
        };
        self.counters.heartbeats_sent += 1;
        self.effects.push_back(Effect::Publish {
            topic: Topic::Heartbeat,
            data: codec::encode(&beat),
        });
    }

    /// Whether `new` differs from what was last published only by suspicions that are no
    /// news: gone (refuted, or the peer dead: every node finds that on its own clock), or
    /// named already by an alive peer's latest beat. Every node that hears a suspicion
    /// probes the suspect itself and soon suspects it too; if each then published, one
    /// crash would cost N beats sent to N peers (2 × 10⁶ messages at 1,000 nodes). The
    /// first suspecter's beat is the news; the others' suspicions ride along with their
    /// next beat.
    fn no_news(&self, old: &Said, new: &Said, now_ms: u64) -> bool {
        (&old.roles, old.free_capacity, &old.claims) == (&new.roles, new.free_capacity, &new.claims)
            && new.suspects.iter().all(|s| {
                old.suspects.contains(s) || self.membership.named_by_another(&s.0, s.1, s.2, now_ms)
            })
    }

    /// A connection to `p` opened.
    pub(super) fn connection_opened(&mut self, p: String, now_ms: u64) {
        self.connected.insert(p.clone());
        self.connected_at.insert(p.clone(), now_ms);
        if !self.membership.knows(&p) {
            self.strangers.insert(p.clone());
        }
        if self.refused_on_connect(&p) {
            return;
        }
        // A new connection also merges event timelines (each side pulls), and syncs in
        // full: after a partition or a restart the peer holds what its authors could not
        // push to us.
        self.events_pull.insert(p.clone());
        self.full_sync(&p);
        self.probe_now(&p, now_ms);
    }

    /// The connection to `p` closed.
    pub(super) fn connection_lost(&mut self, p: String, now_ms: u64) {
        self.connected.remove(&p);
        self.strangers.remove(&p);
        if !self.settle_checked.is_empty() {
            self.settle_dirty.insert(p.clone());
        }
        self.sessions.remove(&p);
        self.awaiting.remove(&p);
        // The ingress allowance is per connection (and this keeps the map as small as
        // the set of connected peers).
        self.ingress.remove(&p);
        // Gone, or only this connection: a probe tells (it dials again). Not one that
        // closed as soon as it opened: the peer refuses this node (a closed mesh it is
        // not a member of, a revoke), and probed at once it was dialled again at once,
        // ~900 times a second; the probes of each period go on.
        let opened = self.connected_at.remove(&p);
        if opened.is_none_or(|t| now_ms.saturating_sub(t) >= BRIEF_CONNECTION_MS) {
            self.probe_now(&p, now_ms);
        } else {
            self.counters.closed_on_open += 1;
        }
    }

    /// Probes `peer` now (a new connection, a lost one), outside the period.
    pub(super) fn probe_now(&mut self, peer: &str, now_ms: u64) {
        if self.stopping || self.refused.contains(peer) {
            return;
        }
        self.membership.probing(peer, now_ms);
        self.counters.probes_sent += 1;
        self.probe_delays.sent(peer, now_ms);
        let data = self.probe_body(now_ms);
        self.effects.push_back(Effect::Probe {
            to: peer.to_string(),
            data,
        });
    }

    /// A peer's probe: its beat taken as contact, this node's in answer.
    pub(super) fn answer_probe(&mut self, from: String, data: &[u8], reply: u64, now_ms: u64) {
        let answer = if self.refused.contains(&from) {
            codec::encode(&None::<Heartbeat>)
        } else {
            if let Some(Some(beat)) = self.decode_beat(&from, data) {
                self.take_beat(from, beat, now_ms);
            }
            self.probe_body(now_ms)
        };
        self.effects.push_back(Effect::ProbeAnswer {
            reply,
            data: answer,
        });
    }

    /// The answer to this node's probe.
    pub(super) fn probe_answered(&mut self, from: String, data: &[u8], now_ms: u64) {
        self.probe_delays.answered(&from, now_ms);
        match self.decode_beat(&from, data) {
            Some(Some(beat)) => self.take_beat(from, beat, now_ms),
            // A passive observer or a stopping node: no member, but no silence either.
            Some(None) => self.membership.answered(&from),
            None => {}
        }
    }

    fn decode_beat(&mut self, from: &str, data: &[u8]) -> Option<Option<Heartbeat>> {
        match codec::decode(data, MAX_GOSSIP_BYTES) {
            Ok(b) => Some(b),
            Err(e) => {
                self.counters.malformed_dropped += 1;
                tracing::debug!(peer = %from, error = %e, "malformed probe dropped");
                None
            }
        }
    }

    /// A published beat.
    pub(super) fn beat_published(&mut self, from: String, data: &[u8], now_ms: u64) {
        let beat: Heartbeat = match codec::decode(data, MAX_GOSSIP_BYTES) {
            Ok(b) => b,
            Err(e) => {
                self.counters.malformed_dropped += 1;
                tracing::debug!(peer = %from, error = %e, "malformed heartbeat dropped");
                return;
            }
        };
        self.take_beat(from, beat, now_ms);
    }

    /// A beat straight from its sender (gossip is never relayed, and the link
    /// authenticates the sender).
    fn take_beat(&mut self, from: String, beat: Heartbeat, now_ms: u64) {
        if from == self.peer || self.refused.contains(&from) {
            return;
        }
        self.counters.heartbeats_received += 1;
        let seen = self.membership.observe(&from, &beat, now_ms);
        if seen == Observed::New || seen == Observed::Revived {
            tracing::info!(peer = %from, "peer joined");
            self.emit(EventKind::PeerJoined, None, None, 0, from.clone());
        }
        if seen == Observed::Stale {
            return;
        }
        // Our wall clock (the shell sets it with each input) against the sender's: our
        // offset plus the one-way delay.
        let offset = i128::from(self.last_wall) - i128::from(beat.sent_at_ms);
        let offset = offset.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        self.membership.clock_sample(&from, offset, CLOCK_SAMPLES);
        renew_claims_of(&self.doc, &mut self.observer, &from, &beat.claims, now_ms);
        self.compare_members(&from, beat.members, now_ms);
        // What it suspects counts once per beat (a probe repeats the same one).
        if seen != Observed::Refreshed {
            self.take_suspicions(&beat.suspects, now_ms);
        }
        self.heard_epoch(&from, beat.epoch);
        // A peer on another epoch holds another document: no digest of its compares.
        if beat.epoch != self.doc.epoch_root() {
            self.hb_mismatch.remove(&from);
            self.other_epoch.insert(from);
            return;
        }
        self.other_epoch.remove(&from);
        // Writers push their changes; a digest that differs is only acted on when the
        // next contact shows the same digest (the peer went quiet and still differs):
        // the backstop for a lost push.
        if beat.heads_digest == self.digest {
            self.hb_mismatch.remove(&from);
        } else if self.hb_mismatch.get(&from) == Some(&beat.heads_digest) {
            self.hb_mismatch.remove(&from);
            self.start_sync(&from);
        } else {
            self.hb_mismatch.insert(from, beat.heads_digest);
        }
    }

    fn take_suspicions(&mut self, suspects: &[Suspicion], now_ms: u64) {
        let mut refute = false;
        for s in suspects {
            if s.peer == self.peer {
                // About our newest beat: refute with a newer one (an older one is
                // refuted already).
                refute |= (s.incarnation, s.seq) == (self.incarnation, self.hb_seq);
            } else if self.membership.suspect(s, now_ms) {
                tracing::debug!(peer = %s.peer, silent_ms = s.silent_ms, "peer suspected by a peer");
            }
        }
        if refute {
            self.publish_beat(now_ms, true);
        }
    }

    /// Leases live while their holder does: every alive peer's announced claims are
    /// renewed on each tick (its beat is published only when they change).
    pub(super) fn renew_alive_claims(&mut self, now_ms: u64) {
        // One pass, nothing copied (every tick, over every alive peer).
        for (holder, beat) in self.membership.alive_beats(now_ms) {
            renew_claims_of(&self.doc, &mut self.observer, holder, &beat.claims, now_ms);
        }
    }
}

/// A holder renews only its own claims. (From the decoded facts: a beat must not cost a
/// view fold.)
fn renew_claims_of(
    doc: &Doc,
    observer: &mut LeaseObserver,
    holder: &str,
    claims: &[u64],
    now_ms: u64,
) {
    for n in claims {
        let id = claim_id(holder, *n);
        if doc.claim_holder(&id) == Some(holder) {
            observer.renew(&id, now_ms);
        }
    }
}
