//! The roster in the running core: in a mesh with operators, a peer that is not an
//! admitted member (or was revoked) is refused — its connections closed by the shell,
//! its heartbeats, events and sync requests ignored, and it counts as dead, so claims it
//! held are taken over. A node that is not a member itself claims nothing (its facts
//! would not count) and refuses no one (it may simply not have synced the roster yet);
//! a node that learns it was revoked drops its work.
//!
//! The facts a non-member writes never count whatever this module does: that is the
//! document's rule (`state::roster`). This is the liveness half: stop talking to it and
//! stop waiting for it.

use super::*;
use crate::core::state::RosterView;

/// How this node finds itself on the roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    /// An open mesh, or admitted and not revoked.
    Member,
    /// The mesh has operators and none admitted this node (yet).
    NotAdmitted,
    /// An operator revoked this node.
    Revoked,
}

impl Core {
    /// Peers refused as not on the roster (or revoked).
    pub fn refused(&self) -> &BTreeSet<String> {
        &self.refused
    }

    /// Whether this node may claim work: it is a member (always, in an open mesh).
    pub(super) fn may_work_on_roster(&self) -> bool {
        self.standing == Standing::Member
    }

    /// Brings refusals in line with the roster (called on every tick). The document keeps
    /// the roster folded: a fold of the whole view here, on every tick the document had
    /// changed, was a third of a loaded node's CPU.
    pub(super) fn enforce_roster(&mut self) {
        let roster = &self.doc.roster();
        let standing = if roster.is_member(&self.peer) {
            Standing::Member
        } else if roster.is_revoked(&self.peer) {
            Standing::Revoked
        } else {
            Standing::NotAdmitted
        };
        if standing != self.standing {
            self.standing = standing;
            match standing {
                Standing::Member => {
                    tracing::info!("this node is on the mesh's roster");
                    // Admitted after it started: the description it could not write then.
                    if let Some(version) = self.version.clone() {
                        self.announce_node(&version);
                    }
                }
                Standing::NotAdmitted => tracing::warn!(
                    peer = %self.peer,
                    "this node is not on the mesh's roster: it claims nothing until an operator runs `mesh-agent admit {}`",
                    self.peer
                ),
                Standing::Revoked => {
                    tracing::error!(peer = %self.peer, "an operator revoked this node: nothing it writes counts any more; dropping its work");
                    self.drop_all_work();
                }
            }
        }
        // An open mesh refuses no one (and a mesh whose operators were all removed from
        // the config takes back anyone it refused).
        if standing != Standing::Member || (!roster.enforced && self.refused.is_empty()) {
            return;
        }
        let mut known: BTreeSet<String> = self.connected.clone();
        known.extend(
            self.membership
                .snapshot(self.last_now)
                .into_iter()
                .map(|p| p.peer),
        );
        for p in known {
            self.refuse_unless_member(p, roster);
        }
        let admitted: Vec<String> = self
            .refused
            .iter()
            .filter(|p| roster.is_member(p))
            .cloned()
            .collect();
        for p in admitted {
            tracing::info!(peer = %p, "a refused peer was admitted: accepting it again");
            self.refused.remove(&p);
            self.effects.push_back(Effect::Refuse {
                peer: p.clone(),
                refuse: false,
            });
            self.emit(
                EventKind::PeerRefused,
                None,
                None,
                0,
                format!("{p}: admitted, accepted again"),
            );
        }
    }

    /// Refuses `p` if `roster` (enforced, holding this node) does not hold it.
    fn refuse_unless_member(&mut self, p: String, roster: &RosterView) {
        if p == self.peer || roster.is_member(&p) || !self.refused.insert(p.clone()) {
            return;
        }
        let why = if roster.is_revoked(&p) {
            "revoked by an operator"
        } else {
            "not on the roster"
        };
        tracing::warn!(peer = %p, why, "refusing a peer");
        self.membership.left(&p);
        self.sessions.remove(&p);
        self.awaiting.remove(&p);
        self.effects.push_back(Effect::Refuse {
            peer: p.clone(),
            refuse: true,
        });
        self.emit(EventKind::PeerRefused, None, None, 0, format!("{p}: {why}"));
    }

    /// A peer just connected: refused at once, before a byte of the document goes to it,
    /// if this node is a member of a mesh with operators and the roster does not hold the
    /// peer (the tick would refuse it too, but only after a first sync had handed a
    /// non-member — a fresh key, a revoked node under a new one — the whole document).
    /// Whether it was refused.
    pub(super) fn refused_on_connect(&mut self, p: &str) -> bool {
        if self.refused.contains(p) {
            return true;
        }
        let roster = self.doc.roster();
        if !roster.enforced || !roster.is_member(&self.peer) || roster.is_member(p) {
            return false;
        }
        self.refuse_unless_member(p.to_string(), &roster);
        true
    }

    /// This node was revoked: its running jobs stop and it holds nothing (its releases
    /// would not count either; the members take its claims over as a dead node's).
    fn drop_all_work(&mut self) {
        self.cfg.work = false;
        self.drop_proposal(None, "");
        for (id, c) in std::mem::take(&mut self.local) {
            if c.state == LocalState::Running {
                self.effects
                    .push_back(Effect::CancelWork { claim: id.clone() });
            }
            self.observer.forget(&id);
        }
    }
}

impl Core {
    /// Records this node's description in the document (only when it changed). A node
    /// not on the roster yet writes it when it learns of its admission.
    pub fn announce_node(&mut self, version: &str) {
        self.version = Some(version.to_string());
        if self.cfg.passive {
            return;
        }
        if !self.view().roster.is_member(&self.peer) {
            tracing::debug!("this node's description waits for its admission");
            return;
        }
        let fact = NodeFact {
            roles: self.cfg.roles.clone(),
            capacity: self.cfg.capacity,
            version: version.to_string(),
            incarnation: self.incarnation,
        };
        let peer = self.peer.clone();
        match self.doc.put_node(&peer, &fact) {
            Ok(true) => self.local_write(),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot write this node's description"),
        }
    }

    /// Writes an operator's roster fact (`roster/admit/<peer>` or `roster/revoke/<peer>`,
    /// sealed by the operator's key) and pushes it; what it did, in one line. Admitting a
    /// member or revoking a revoked peer again changes nothing and says so.
    pub fn put_roster(&mut self, key: &str, sealed: &str) -> Result<String, String> {
        if self.cfg.passive {
            return Err(StateError::Passive.to_string());
        }
        let roster = self.view().roster.clone();
        let (verb, peer) = if let Some(p) = key.strip_prefix("roster/admit/") {
            ("admitted", p)
        } else if let Some(p) = key.strip_prefix("roster/revoke/") {
            ("revoked", p)
        } else {
            return Err(format!("{key} is not a roster key"));
        };
        if roster.is_revoked(peer) {
            return if verb == "revoked" {
                Ok(format!("{peer} was already revoked"))
            } else {
                Err(format!(
                    "{peer} was revoked, and a revoke is final: give that node a new key \
                     (`mesh-agent init --force` in its data dir) and admit the new peer id"
                ))
            };
        }
        if verb == "admitted" && roster.admitted.iter().any(|e| e.peer == peer) {
            return Ok(format!("{peer} was already admitted"));
        }
        self.doc
            .put_signed(key, sealed)
            .map_err(|e| e.to_string())?;
        self.local_write();
        tracing::info!(%peer, verb, "roster changed");
        Ok(format!("{peer} {verb}"))
    }
}
