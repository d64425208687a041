//! automerge's sync protocol, received without its walk of the whole history.
//!
//! automerge 0.12's `receive_sync_message` trims the session's `sent_hashes` (changes
//! sent and not to be sent again) to those the peer's heads do not cover, and it does so
//! by visiting every ancestor of the peer's heads — the whole history, on every message,
//! even when there is nothing to trim. With 30 loaded processes on one machine that walk
//! was half of each node's CPU. The trim is housekeeping: a change the peer's heads cover
//! is never among the changes to send (they are the ones its `have` and `need` say it
//! lacks), so keeping its hash changes no message. `sent_hashes` starts empty with every
//! session (`reset_sync_state`), so what it keeps is one session's sends.
//!
//! [`receive`] hands automerge the message without its heads (so the walk starts from
//! nothing) and then does what automerge does with them. The test below runs whole
//! sync sessions both ways and requires the same messages and the same state (but for
//! the untrimmed `sent_hashes`).

use automerge::sync::{self, MessageFlags, SyncDoc};
use automerge::{AutoCommit, AutomergeError, ChangeHash};
use std::collections::{BTreeSet, HashSet};

/// `automerge::sync::SyncDoc::receive_sync_message` on `doc`, but for the trim of
/// `state.sent_hashes` (see the module docs).
pub(super) fn receive(
    doc: &mut AutoCommit,
    state: &mut sync::State,
    mut msg: sync::Message,
) -> Result<(), AutomergeError> {
    let heads = std::mem::take(&mut msg.heads);
    let reset = msg
        .flags
        .is_some_and(|f| f.contains(MessageFlags::SYNC_RESET));
    let no_changes = msg.changes.is_empty();
    let applies = !no_changes && !state.read_only;
    let before = doc.get_heads();
    let shared = state.shared_heads.clone();
    let last_sent = state.last_sent_heads.clone();
    let sent = std::mem::take(&mut state.sent_hashes);
    doc.sync().receive_sync_message(state, msg)?;
    // automerge took the message as one with no heads (a peer that lost its data): put
    // back what that reset, then do what it does with the heads.
    let after = doc.get_heads();
    state.shared_heads = if applies {
        advance_heads(&before, &after, &shared)
    } else {
        shared
    };
    state.last_sent_heads = last_sent;
    state.sent_hashes = if reset { BTreeSet::new() } else { sent };
    if no_changes && heads == before {
        state.last_sent_heads.clone_from(&heads);
    }
    let known: Vec<ChangeHash> = heads
        .iter()
        .filter(|h| doc.get_change_meta_by_hash(h).is_some())
        .copied()
        .collect();
    if known.len() == heads.len() {
        state.shared_heads.clone_from(&heads);
        if heads.is_empty() {
            state.last_sent_heads = Vec::new();
            state.sent_hashes = BTreeSet::new();
        }
    } else {
        let mut all: Vec<ChangeHash> = state.shared_heads.iter().chain(&known).copied().collect();
        all.sort();
        all.dedup();
        state.shared_heads = all;
    }
    state.their_heads = Some(heads);
    Ok(())
}

/// The shared heads after applying changes: our new heads and the old shared heads
/// still among them, sorted.
fn advance_heads(
    before: &[ChangeHash],
    after: &[ChangeHash],
    shared: &[ChangeHash],
) -> Vec<ChangeHash> {
    let before: HashSet<&ChangeHash> = before.iter().collect();
    let after_set: HashSet<&ChangeHash> = after.iter().collect();
    let mut heads: Vec<ChangeHash> = after
        .iter()
        .filter(|h| !before.contains(h))
        .chain(shared.iter().filter(|h| after_set.contains(h)))
        .copied()
        .collect();
    heads.sort();
    heads.dedup();
    heads
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::ROOT;

    /// A small deterministic generator (no dependency for a test).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn write(doc: &mut AutoCommit, rng: &mut Rng, n: u64) {
        for _ in 0..n {
            let k = rng.next() % 50;
            doc.put(ROOT, format!("k{k}"), rng.next() as i64)
                .expect("put");
            doc.commit();
        }
    }

    /// Everything but `sent_hashes` (which only automerge trims).
    fn same_but_sent(a: &sync::State, b: &sync::State) -> bool {
        let mut a = a.clone();
        a.sent_hashes = b.sent_hashes.clone();
        &a == b
    }

    type Receive =
        fn(&mut AutoCommit, &mut sync::State, sync::Message) -> Result<(), AutomergeError>;

    fn automerge_receive(
        doc: &mut AutoCommit,
        state: &mut sync::State,
        msg: sync::Message,
    ) -> Result<(), AutomergeError> {
        doc.sync().receive_sync_message(state, msg)
    }

    /// One scripted history of two peers syncing: writes on both between sessions,
    /// some sessions interrupted (a message lost), some states reset; every message
    /// generated, in order, and the final documents' heads.
    fn run(
        seed: u64,
        receive: Receive,
    ) -> (Vec<Option<Vec<u8>>>, Vec<sync::State>, Vec<ChangeHash>) {
        let mut rng = Rng(seed | 1);
        let mut a = AutoCommit::new().with_actor(automerge::ActorId::from(vec![1u8; 16]));
        let mut b = AutoCommit::new().with_actor(automerge::ActorId::from(vec![2u8; 16]));
        let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
        let mut log = Vec::new();
        let mut states = Vec::new();
        for _ in 0..12 {
            let (na, nb) = (rng.next() % 6, rng.next() % 6);
            write(&mut a, &mut rng, na);
            write(&mut b, &mut rng, nb);
            if rng.next().is_multiple_of(4) {
                sa = sync::State::decode(&sa.encode()).expect("state");
                sb = sync::State::decode(&sb.encode()).expect("state");
            }
            let cut = rng.next() % 10;
            for round in 0..10 {
                let (from, to, sf, st) = if round % 2 == 0 {
                    (&mut a, &mut b, &mut sa, &mut sb)
                } else {
                    (&mut b, &mut a, &mut sb, &mut sa)
                };
                let msg = from.sync().generate_sync_message(sf);
                log.push(msg.as_ref().map(|m| m.clone().encode()));
                if round == cut {
                    break; // lost on the way
                }
                if let Some(m) = msg {
                    receive(to, st, m).expect("receive");
                    states.push(st.clone());
                }
                if rng.next().is_multiple_of(5) {
                    // A write while a session runs.
                    write(to, &mut rng, 1);
                }
            }
            states.push(sa.clone());
            states.push(sb.clone());
        }
        // Finish: a new session (a lost message leaves one waiting), synced to the end.
        sa = sync::State::decode(&sa.encode()).expect("state");
        sb = sync::State::decode(&sb.encode()).expect("state");
        for _ in 0..20 {
            let ma = a.sync().generate_sync_message(&mut sa);
            let mb = b.sync().generate_sync_message(&mut sb);
            if ma.is_none() && mb.is_none() {
                break;
            }
            log.push(ma.as_ref().map(|m| m.clone().encode()));
            log.push(mb.as_ref().map(|m| m.clone().encode()));
            if let Some(m) = ma {
                receive(&mut b, &mut sb, m).expect("receive");
            }
            if let Some(m) = mb {
                receive(&mut a, &mut sa, m).expect("receive");
            }
        }
        states.push(sa);
        states.push(sb);
        assert_eq!(
            a.get_heads(),
            b.get_heads(),
            "seed {seed}: the peers converge"
        );
        (log, states, a.get_heads())
    }

    #[test]
    fn sessions_send_the_same_messages_and_keep_the_same_state_as_automerges_own_receive() {
        for seed in 1..=200u64 {
            let (log_a, states_a, heads_a) = run(seed, automerge_receive);
            let (log_b, states_b, heads_b) = run(seed, receive);
            assert_eq!(heads_a, heads_b, "seed {seed}");
            assert_eq!(log_a.len(), log_b.len(), "seed {seed}");
            for (i, (x, y)) in log_a.iter().zip(&log_b).enumerate() {
                assert_eq!(x, y, "seed {seed}: message {i} differs");
            }
            for (i, (x, y)) in states_a.iter().zip(&states_b).enumerate() {
                assert!(
                    same_but_sent(x, y),
                    "seed {seed}: state {i}: {x:?} vs {y:?}"
                );
                assert!(
                    y.sent_hashes.is_superset(&x.sent_hashes),
                    "seed {seed}: state {i} keeps at least automerge's sent hashes"
                );
            }
        }
    }
}
