//! The mesh's roster: which nodes' facts count (admitted members) and who may change that
//! (operators).
//!
//! Operators are the mesh's trust anchors: the public keys every node's config lists
//! (`operators`, the same list on every node; an empty list is an open mesh where any
//! holder of the mesh key is a member, as before rosters existed). The roster itself is
//! facts in the document, each sealed by an operator:
//! - `roster/admit/<peer>`: the peer is a member from now on (admission is not dated:
//!   what it wrote before it was admitted counts too once the admission arrives);
//! - `roster/revoke/<peer>`: the peer is a member no more. What it wrote in the revoke's
//!   causal past (every change the operator's node had when it wrote the revoke) still
//!   counts — its finished work stays finished — and nothing else it ever writes does:
//!   not what it writes later, nor what it wrote concurrently, wherever it arrives from.
//!   A revoke is final; a node that should come back gets a new key and a new admission.
//!
//! Both are write-once like every fact, so a revoked member cannot be re-admitted under
//! the same key and no member can unsay a revoke. Which change holds what is decided by
//! automerge's dependency graph, which every node has alike, so every node folds the same
//! roster and the same facts from the same document.

use super::*;
use std::collections::HashSet;

pub(super) const ADMIT_PREFIX: &str = "roster/admit/";
pub(super) const REVOKE_PREFIX: &str = "roster/revoke/";

/// An operator's admission or revocation of one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterFact {
    /// The peer admitted or revoked (its key names it too).
    pub peer: String,
    /// Why, in a few words (shown in `roster` and the audit trail).
    #[serde(default)]
    pub note: String,
    /// The operator's wall clock when it signed, for display only.
    pub at_ms: u64,
}

/// The document key of an admission of `peer`.
pub fn admit_key(peer: &str) -> String {
    format!("{ADMIT_PREFIX}{peer}")
}

/// The document key of a revocation of `peer`.
pub fn revoke_key(peer: &str) -> String {
    format!("{REVOKE_PREFIX}{peer}")
}

/// One roster entry as the view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    pub peer: String,
    /// The operator who signed it.
    pub by: String,
    pub note: String,
    pub at_ms: u64,
}

/// The roster as folded from the document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterView {
    /// True when the mesh has operators: only admitted, unrevoked nodes' facts count.
    pub enforced: bool,
    pub operators: Vec<String>,
    /// Admitted peers (revoked ones included; see `revoked`).
    pub admitted: Vec<RosterEntry>,
    pub revoked: Vec<RosterEntry>,
}

impl RosterView {
    /// Whether `peer`'s new facts count: always in an open mesh; else admitted and not
    /// revoked.
    pub fn is_member(&self, peer: &str) -> bool {
        !self.enforced
            || (self.admitted.iter().any(|e| e.peer == peer)
                && !self.revoked.iter().any(|e| e.peer == peer))
    }

    /// Whether `peer` was revoked.
    pub fn is_revoked(&self, peer: &str) -> bool {
        self.revoked.iter().any(|e| e.peer == peer)
    }
}

/// What the document needs to decide whether an author's fact counts.
#[derive(Debug, Clone, Default)]
pub(super) struct Roster {
    /// The trust anchors (empty: an open mesh).
    pub(super) operators: BTreeSet<String>,
    pub(super) admitted: BTreeMap<String, RosterEntry>,
    /// Revoked peers: the entry and the revoke's causal past (the changes whose facts by
    /// that peer still count).
    pub(super) revoked: BTreeMap<String, (RosterEntry, Arc<HashSet<ChangeHash>>)>,
}

impl Roster {
    pub(super) fn enforced(&self) -> bool {
        !self.operators.is_empty()
    }

    /// Whether `peer`'s new facts count (always, in an open mesh).
    pub(super) fn is_member(&self, peer: &str) -> bool {
        !self.enforced() || (self.admitted.contains_key(peer) && !self.revoked.contains_key(peer))
    }

    /// Whether a fact `author` wrote in `change` counts.
    pub(super) fn counts(&self, author: &str, change: &ChangeHash) -> bool {
        if !self.enforced() {
            return true;
        }
        if !self.admitted.contains_key(author) {
            return false;
        }
        match self.revoked.get(author) {
            None => true,
            Some((_, past)) => past.contains(change),
        }
    }

    pub(super) fn view(&self) -> RosterView {
        RosterView {
            enforced: self.enforced(),
            operators: self.operators.iter().cloned().collect(),
            admitted: self.admitted.values().cloned().collect(),
            revoked: self.revoked.values().map(|(e, _)| e.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lease::ReleaseReason;
    use crate::core::state::tests::{sync_pair as sync, titles};

    fn doc(actor: u8) -> Doc {
        Doc::new([actor; 16])
            .with_test_names()
            .with_operators(["OP".to_string()].into())
    }

    fn story(title: &str) -> NewStory {
        NewStory {
            title: title.into(),
            ..Default::default()
        }
    }

    /// An operator-sealed roster fact about `peer` (`admit` or `revoke`), signed by `by`.
    fn roster_fact(d: &mut Doc, admit: bool, peer: &str, by: &str) -> Result<(), StateError> {
        let key = if admit {
            admit_key(peer)
        } else {
            revoke_key(peer)
        };
        let fact = RosterFact {
            peer: peer.into(),
            note: "test".into(),
            at_ms: 1,
        };
        let json = serde_json::to_string(&fact).unwrap();
        d.put_signed(&key, &Signer::for_test(by).seal(&key, &json))
    }

    #[test]
    fn only_an_operator_writes_the_roster_and_only_members_facts_count() {
        let mut d = doc(1);
        // A non-member's write is refused at the writer, and counts nowhere when a peer
        // takes it in anyway.
        let e = d
            .add_story(&story("before admission"), "N1", 1)
            .unwrap_err();
        assert!(e.to_string().contains("mesh-agent admit N1"), "{e}");
        let mut open = Doc::new([3; 16]).with_test_names();
        open.add_story(&story("before admission"), "N1", 1).unwrap();
        let mut state = SyncState::new();
        let mut back = SyncState::new();
        while let Some(m) = open.sync_generate(&mut back) {
            d.sync_receive(&mut state, &m).unwrap();
            match d.sync_generate(&mut state) {
                Some(r) => open.sync_receive(&mut back, &r).unwrap(),
                None => break,
            };
        }
        assert_eq!(
            d.view().stories.len(),
            0,
            "not a member yet: nothing counts"
        );
        assert!(d.fact_keys().next().is_none());

        // A member cannot admit anyone, itself included: refused at the writer...
        let e = roster_fact(&mut d, true, "N1", "N1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an operator"), "{e}");
        // ...and refused and counted at every reader when written raw.
        let key = admit_key("N1");
        let json = r#"{"peer":"N1","note":"","at_ms":1}"#;
        d.raw_put(&key, Signer::for_test("N1").seal(&key, json));
        assert!(titles(&d).is_empty());
        assert_eq!(d.rejected()["N1"][&FactKind::Admit], 1);

        // The operator admits it: what it wrote before counts now too.
        roster_fact(&mut d, true, "N1", "OP").unwrap();
        assert_eq!(titles(&d), ["before admission"]);
        let r = d.roster();
        assert!(r.enforced && r.is_member("N1") && !r.is_member("N2"));
        assert_eq!(r.admitted[0].by, "OP");

        // An open mesh has no roster to write.
        let mut open = Doc::new([2; 16]).with_test_names();
        let e = roster_fact(&mut open, true, "N1", "OP")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no operators"), "{e}");
        open.add_story(&story("open"), "anyone", 1).unwrap();
        assert_eq!(titles(&open), ["open"]);
    }

    /// A revoked member's facts in the revoke's causal past keep counting (its finished
    /// work stays finished); what it wrote concurrently, or after, never counts — on a
    /// node that learns both in either order, and after a reload.
    #[test]
    fn a_revoke_keeps_the_past_and_ignores_everything_concurrent_or_later() {
        let mut op_node = doc(1);
        roster_fact(&mut op_node, true, "N2", "OP").unwrap();
        roster_fact(&mut op_node, true, "N3", "OP").unwrap();
        let mut n2 = doc(2);
        sync(&mut op_node, &mut n2);
        n2.add_story(&story("done before the revoke"), "N2", 1)
            .unwrap();
        let claim = "N2-1001";
        let key = n2.view().stories.keys().next().cloned().unwrap();
        let res = crate::core::lease::Resource::story(&key, Phase::Research).unwrap();
        n2.put_claim(
            claim,
            &ClaimFact {
                resources: vec![(res.clone(), 1)],
                holder: "N2".into(),
                ttl_ms: 1000,
                written_at_ms: 1,
                attempt: 1,
                after: None,
            },
        )
        .unwrap();
        sync(&mut op_node, &mut n2);
        // The operator revokes N2 while N2, not knowing, writes on.
        roster_fact(&mut op_node, false, "N2", "OP").unwrap();
        n2.add_story(&story("concurrent with the revoke"), "N2", 2)
            .unwrap();
        // (N2 does not know yet: its writes are accepted by its own document.)
        n2.put_release(
            claim,
            &ReleaseFact {
                why: ReleaseReason::Done,
                note: String::new(),
            },
            "N2",
        )
        .unwrap();

        // A third node hears N2 first, then the operator's node.
        let mut n3 = doc(3);
        sync(&mut n3, &mut n2);
        assert_eq!(
            titles(&n3),
            ["concurrent with the revoke", "done before the revoke"],
            "before the revoke reaches it, N2 is a member like any other"
        );
        sync(&mut n3, &mut op_node);
        sync(&mut op_node, &mut n2);
        // N2 now has the revoke: its own document refuses its writes, so a hostile N2
        // writes through a copy that ignores the roster (same history, no operators).
        let e = n2
            .add_story(&story("after the revoke"), "N2", 3)
            .unwrap_err();
        assert!(e.to_string().contains("revoked"), "{e}");
        let mut rogue = Doc::load_test_names([7; 16], &n2.save(), &[]).unwrap();
        rogue
            .add_story(&story("after the revoke"), "N2", 3)
            .unwrap();
        sync(&mut n2, &mut rogue);
        sync(&mut n3, &mut n2);
        sync(&mut op_node, &mut n3);
        for d in [&op_node, &n2, &n3] {
            assert_eq!(titles(d), ["done before the revoke"]);
            let v = d.view();
            assert!(
                v.claims.contains_key(claim),
                "the claim before the revoke counts"
            );
            assert!(
                !v.releases.contains_key(claim),
                "its release after the revoke does not"
            );
            assert!(v.roster.is_revoked("N2") && !v.roster.is_member("N2"));
        }
        // Any member may take the revoked holder's claim over.
        n3.put_release(
            claim,
            &ReleaseFact {
                why: ReleaseReason::Expired,
                note: "revoked holder".into(),
            },
            "N3",
        )
        .unwrap();
        assert!(n3.view().releases.contains_key(claim));

        // A reload folds the same roster and facts.
        let bytes = n3.save();
        let again = Doc::load_test_names([9; 16], &bytes, &[])
            .unwrap()
            .with_operators(["OP".to_string()].into());
        assert_eq!(titles(&again), titles(&n3));
        assert_eq!(again.view().releases.len(), n3.view().releases.len());

        // Final: no re-admission under the same key, no un-revoke.
        let e = roster_fact(&mut op_node, true, "N2", "OP");
        assert!(e.is_ok(), "the fact itself may be written…");
        assert!(
            op_node.view().roster.is_revoked("N2"),
            "…but a revoked peer stays revoked"
        );
    }
}
