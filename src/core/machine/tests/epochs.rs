//! Sync is scoped by epoch (DESIGN.md §3.5): a node never takes in changes from another
//! epoch's document, and opens no session with a peer whose beat names another epoch.

use super::*;

/// Two nodes on epoch 1 (seeded from one document with a story), and one still on the
/// document the epoch was cut from.
fn mesh() -> (Core, Core, Core) {
    let mut d = Doc::new([1; 16]).with_test_names();
    d.add_story(&titled("before the cut"), "O", 1).unwrap();
    let seed = d.seed(1).unwrap();
    let epoch = |actor: u8| {
        Doc::load_test_names([actor; 16], &seed.bytes, &[])
            .and_then(|e| e.with_epoch_root(&seed.root))
            .unwrap()
    };
    let a = core_with("A", epoch(2));
    let b = core_with("B", epoch(3));
    (a, b, core_with("O", d))
}

/// Carries the sync frames `src` addresses to `dst`, and the answers back, until `src`
/// sends `dst` nothing more; what `src` addresses to others is dropped.
fn route(src: &mut Core, dst: &mut Core) -> usize {
    let mut frames = 0;
    for _ in 0..100 {
        let effects: Vec<Effect> = std::iter::from_fn(|| src.poll_effect()).collect();
        let mut moved = false;
        for e in effects {
            let Effect::SendSync { to, data } = e else {
                continue;
            };
            if to != dst.peer() {
                continue;
            }
            (moved, frames) = (true, frames + 1);
            round_trip(src, dst, 0, data);
        }
        if !moved {
            return frames;
        }
    }
    panic!("no quiescence");
}

fn sessions_opened(c: &mut Core) -> usize {
    std::iter::from_fn(|| c.poll_effect())
        .filter(|e| matches!(e, Effect::SendSync { .. }))
        .count()
}

/// `from` publishes a beat at `now`, and `to` hears it.
fn hear_beat(from: &mut Core, to: &mut Core, now: u64) {
    from.publish_beat(now, true);
    while let Some(e) = from.poll_effect() {
        if let Effect::Publish {
            topic: Topic::Heartbeat,
            data,
        } = e
        {
            let from = from.peer().to_string();
            to.handle(now, Input::Heartbeat { from, data });
        }
    }
}

#[test]
fn a_frame_of_another_epoch_is_dropped_and_one_epoch_syncs_as_before() {
    let (mut a, mut b, mut old) = mesh();
    assert_eq!(a.doc().epoch_root(), b.doc().epoch_root());
    assert!(a.doc().epoch_root().is_some() && old.doc().epoch_root().is_none());
    old.add_story(&titled("old epoch"), 1).unwrap();
    a.add_story(&titled("new epoch"), 1).unwrap();
    // Neither document takes in the other's changes, whichever side opens the session.
    old.start_sync("A");
    assert!(route(&mut old, &mut a) > 0);
    a.start_sync("O");
    assert!(route(&mut a, &mut old) > 0);
    assert!(a.counters().other_epoch_dropped > 0);
    assert!(old.counters().other_epoch_dropped > 0);
    assert_eq!(titles(&a), ["before the cut", "new epoch"]);
    assert_eq!(titles(&old), ["before the cut", "old epoch"]);
    // Within the epoch, sync goes on.
    a.start_sync("B");
    assert!(route(&mut a, &mut b) > 0);
    assert_eq!(titles(&b), ["before the cut", "new epoch"]);
    assert_eq!(b.counters().other_epoch_dropped, 0);
}

#[test]
fn a_peer_whose_beat_names_another_epoch_gets_no_session_until_it_moves() {
    let (mut a, _, mut old) = mesh();
    hear_beat(&mut old, &mut a, 0);
    a.start_sync("O");
    assert_eq!(sessions_opened(&mut a), 0, "a peer on another epoch");
    assert_eq!(a.other_epoch_peers(0), ["O"], "shown in status");
    // Its next beat names this epoch (it moved): sessions open again. (Its first beat
    // repeats the sequence number `a` heard already.)
    let mut moved = core_with("O", a.doc().clone());
    hear_beat(&mut moved, &mut a, 0);
    hear_beat(&mut moved, &mut a, 0);
    a.start_sync("O");
    assert_eq!(sessions_opened(&mut a), 1);
    assert!(a.other_epoch_peers(0).is_empty());
}

/// `c` works: every role, and one story to claim.
fn ready_to_work(c: &mut Core) {
    c.cfg.work = true;
    c.cfg.roles = Phase::ALL.iter().map(|p| p.as_str().to_string()).collect();
    c.add_story(&titled("work"), 1).unwrap();
}

/// `steps` ticks of `c`, 100 ms apart from `*now`, with `peer`'s beat heard every
/// `beat_every` ms; `check` after each tick.
fn tick_beside(
    c: &mut Core,
    peer: &mut Core,
    now: &mut u64,
    (steps, beat_every): (usize, u64),
    mut check: impl FnMut(&mut Core, u64),
) {
    for _ in 0..steps {
        *now += 100;
        if now.is_multiple_of(beat_every) {
            hear_beat(peer, c, *now);
        }
        c.tick(*now, *now);
        while c.poll_effect().is_some() {}
        check(c, *now);
    }
}

/// Claims `holder` wrote, in `c`'s view.
fn claims_by(c: &Core, holder: &str) -> usize {
    let view = c.doc().view();
    view.claims.values().filter(|f| f.holder == holder).count()
}

#[test]
fn a_node_claims_nothing_while_an_alive_peer_is_on_another_epoch() {
    let (mut a, _, mut old) = mesh();
    ready_to_work(&mut a);
    // Ten seconds with the old node beating: long past the warm-up, no claim written.
    let mut now = 0;
    tick_beside(&mut a, &mut old, &mut now, (100, 500), |a, now| {
        assert!(a.doc().view().claims.is_empty(), "a claim at {now} ms");
    });
    // It moves to this epoch (its beat says so): the node claims again.
    let mut moved = core_with("O", a.doc().clone());
    tick_beside(&mut a, &mut moved, &mut now, (30, 100), |_, _| {});
    assert!(a.other_epoch_peers(now).is_empty());
    assert!(
        !a.doc().view().claims.is_empty(),
        "claims again once the peer moved"
    );
}

#[test]
fn a_node_claims_nothing_while_a_peer_proposes_the_next_epoch() {
    let (mut a, mut b, _) = mesh();
    ready_to_work(&mut a);
    // B proposes epoch 2: while that claim is open and B alive, A claims nothing (nor
    // takes anything over), so the cut B waits for comes.
    let proposal = ClaimFact {
        resources: vec![(Resource::Epoch(2), 1)],
        holder: "B".into(),
        ttl_ms: 10_000,
        written_at_ms: 0,
        attempt: 1,
        after: None,
    };
    b.next_claim += 1;
    let id = claim_id("B", b.next_claim);
    b.doc.put_claim(&id, &proposal).unwrap();
    b.local_write();
    b.start_sync("A");
    route(&mut b, &mut a);
    assert!(a.derived().1.holds(&id), "the proposal reached A");

    let mut now = 0;
    tick_beside(&mut a, &mut b, &mut now, (100, 500), |a, now| {
        assert_eq!(claims_by(a, "A"), 0, "a claim at {now} ms");
    });
    // B gives the proposal up: A claims again.
    b.release(&id, ReleaseReason::Abandoned, "the mesh did not go quiet");
    b.start_sync("A");
    route(&mut b, &mut a);
    tick_beside(&mut a, &mut b, &mut now, (30, 100), |_, _| {});
    assert!(
        claims_by(&a, "A") > 0,
        "claims again once the proposal ended"
    );
}

/// Ticks `c` for `steps` × 100 ms from `*now`, hearing every one of `peers` beat each
/// 500 ms; returns the requests for a document whole it sent (`SyncFrame::adopt`), by
/// peer.
fn tick_hearing(
    c: &mut Core,
    peers: &mut [&mut Core],
    now: &mut u64,
    steps: usize,
) -> Vec<(String, Vec<u8>)> {
    let mut sent = Vec::new();
    for _ in 0..steps {
        *now += 100;
        if now.is_multiple_of(500) {
            for p in peers.iter_mut() {
                hear_beat(p, c, *now);
            }
        }
        c.tick(*now, *now);
        while let Some(e) = c.poll_effect() {
            if let Effect::SendSync { to, data } = e {
                if codec::decode::<SyncFrame>(&data, 1 << 20).is_ok_and(|f| f.adopt) {
                    sent.push((to, data));
                }
            }
        }
    }
    sent
}

#[test]
fn a_new_node_takes_up_the_epoch_most_alive_peers_name_with_its_own_facts() {
    let (mut a, mut b, mut old) = mesh();
    let mut new = core_with("N", Doc::new([5; 16]).with_test_names());
    new.add_story(&titled("the new node's own"), 1).unwrap();
    while new.poll_effect().is_some() {}
    // One of two alive peers names epoch 1: not most of them, nothing asked.
    let mut now = 0;
    let sent = tick_hearing(&mut new, &mut [&mut a, &mut old], &mut now, 60);
    assert!(sent.is_empty(), "asked with one of two peers on the epoch");
    assert_eq!(new.doc().epoch_root(), None);
    // Two of three: it asks one of them for the document whole.
    let sent = tick_hearing(&mut new, &mut [&mut a, &mut b, &mut old], &mut now, 10);
    let [(to, data)] = &sent[..] else {
        panic!("one request, not {sent:?}");
    };
    assert_eq!(to, "A");
    let frame: SyncFrame = codec::decode(data, 1 << 20).unwrap();
    assert!(frame.adopt && frame.start);
    assert_eq!(frame.epoch, a.doc().epoch_root());
    // A's answer: its document, which the new node takes up with its own facts.
    round_trip(&mut new, &mut a, now, data.clone());
    assert_eq!(new.doc().epoch_root(), a.doc().epoch_root());
    assert_eq!(new.epoch(), 1);
    assert_eq!(new.counters().epochs_joined, 1);
    assert_eq!(titles(&new), ["before the cut", "the new node's own"]);
    // Stored, and a session opened with the peers on it.
    let effects: Vec<Effect> = std::iter::from_fn(|| new.poll_effect()).collect();
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::BeginEpoch(s) if s.epoch == 1)),
        "the new epoch's document goes to the store"
    );
    let opened = effects.into_iter().find_map(|e| match e {
        Effect::SendSync { to, data } if to == "A" => Some(data),
        _ => None,
    });
    // The mesh sees it on its epoch and syncs with it: its own fact reaches A.
    let data = opened.expect("a session with A");
    round_trip(&mut new, &mut a, now, data);
    route(&mut new, &mut a);
    assert_eq!(titles(&a), ["before the cut", "the new node's own"]);
    hear_beat(&mut new, &mut a, now + 100);
    hear_beat(&mut new, &mut a, now + 200);
    assert!(a.other_epoch_peers(now + 200).is_empty());
    // Nothing more is asked.
    let sent = tick_hearing(&mut new, &mut [&mut a, &mut b], &mut now, 200);
    assert!(sent.is_empty(), "asked again: {sent:?}");
}

#[test]
fn a_new_node_builds_a_document_too_large_to_send_whole_round_by_round() {
    let (mut a, mut b, _) = mesh();
    // A's document does not fit one of its frames: A answers the request as any first
    // frame, and the new node syncs it into an empty document, then takes it up.
    a.cfg.max_sync_bytes = 256;
    let mut new = core_with("N", Doc::new([5; 16]).with_test_names());
    new.add_story(&titled("the new node's own"), 1).unwrap();
    while new.poll_effect().is_some() {}
    let mut now = 0;
    let sent = tick_hearing(&mut new, &mut [&mut a, &mut b], &mut now, 60);
    let [(to, data)] = &sent[..] else {
        panic!("one request, not {sent:?}");
    };
    assert_eq!(to, "A");
    round_trip(&mut new, &mut a, now, data.clone());
    assert!(route(&mut new, &mut a) > 0, "rounds after the first");
    assert_eq!(a.counters().snapshots_sent, 0);
    assert_eq!(new.doc().epoch_root(), a.doc().epoch_root());
    assert_eq!(new.counters().epochs_joined, 1);
    assert_eq!(titles(&new), ["before the cut", "the new node's own"]);
}

#[test]
fn a_due_move_names_the_known_node_it_waits_for_and_proposes_once_it_is_back() {
    use crate::core::model::{Verdict, PIPELINE};
    use crate::core::state::tests::{step, A};
    let mut d = Doc::new([1; 16]).with_test_names();
    let key = d.add_story(&titled("landed"), A, 1).unwrap();
    for phase in PIPELINE {
        step(
            &mut d,
            &key,
            phase,
            0,
            (phase == Phase::Review).then_some(Verdict::Approve),
        );
    }
    let mut a = core_with(A, d);
    a.cfg.work = true;
    let mut b = core_with("B", Doc::new([2; 16]).with_test_names());
    b.announce_node("test");
    // They sync (A has joined a mesh), then B falls silent: the move is due, and waits.
    hear_beat(&mut b, &mut a, 0);
    a.start_sync("B");
    route(&mut a, &mut b);
    let proposed = |a: &mut Core| !a.derived().1.naming(&Resource::Epoch(1)).is_empty();
    let mut now: u64 = 0;
    for i in 0..300 {
        if i == 200 {
            a.cfg.epoch_after = 1; // B is dead by now
        }
        now += 100;
        if now.is_multiple_of(500) {
            a.heartbeat(now, now);
        }
        a.tick(now, now);
        // B answers no probe.
        while let Some(e) = a.poll_effect() {
            if let Effect::Probe { to, .. } = e {
                a.handle(now, Input::ProbeFailed { peer: to });
            }
        }
    }
    assert_eq!(a.membership.state("B", now), Some(PeerState::Dead));
    assert_eq!(a.epoch_waits_for(), ["B"]);
    assert!(!proposed(&mut a), "proposed with a known node down");
    // B is back: nothing is missing, and A proposes the next epoch.
    tick_beside(&mut a, &mut b, &mut now, (40, 100), |_, _| {});
    assert!(a.epoch_waits_for().is_empty());
    assert!(
        proposed(&mut a),
        "no proposal once every known node is back"
    );
}

#[test]
fn an_observer_that_hears_no_beat_takes_the_epoch_its_peers_frames_name() {
    let (mut a, _, _) = mesh();
    // A passive observer (`status --bootstrap`) probes no one, and an idle mesh beats
    // rarely: what it learns of A's epoch is the frame A's session opened with.
    let mut obs = core_with("N", Doc::new([5; 16]).with_test_names());
    obs.cfg.passive = true;
    obs.handle(0, Input::Connected("A".into()));
    a.start_sync("N");
    route(&mut a, &mut obs);
    assert!(obs.counters().other_epoch_dropped > 0);
    let mut now: u64 = 0;
    let mut request = None;
    while request.is_none() && now < 20_000 {
        now += 100;
        obs.tick(now, now);
        while let Some(e) = obs.poll_effect() {
            if let Effect::SendSync { to, data } = e {
                let adopt = codec::decode::<SyncFrame>(&data, 1 << 20).is_ok_and(|f| f.adopt);
                if adopt && to == "A" {
                    request = Some(data);
                }
            }
        }
    }
    let data = request.expect("the observer asked A for its epoch's document");
    round_trip(&mut obs, &mut a, now, data);
    assert_eq!(obs.doc().epoch_root(), a.doc().epoch_root());
    assert_eq!(titles(&obs), ["before the cut"]);
}

/// `a` (on epoch 1) claims epoch 2 and writes its cut at its heads; returns the cut and
/// the root of the seed it builds.
fn write_cut(a: &mut Core) -> (Vec<ChangeHash>, ChangeHash) {
    let id = claim_id(a.peer(), 1);
    let claim = ClaimFact {
        resources: vec![(Resource::Epoch(2), 1)],
        holder: a.peer().to_string(),
        ttl_ms: 10_000,
        written_at_ms: 0,
        attempt: 1,
        after: None,
    };
    a.doc.put_claim(&id, &claim).unwrap();
    let cut = a.doc.heads();
    let root = a.doc.seed_at(2, &cut).unwrap().root;
    let fact = crate::core::state::EpochFact {
        epoch: 2,
        claim: id,
        holder: a.peer().to_string(),
        cut: cut.iter().map(|h| h.to_string()).collect(),
        root: root.to_string(),
        at_ms: 0,
    };
    a.doc.put_epoch(&fact).unwrap();
    (cut, root)
}

#[test]
fn a_node_holding_the_cut_moves_though_a_new_node_on_the_first_document_is_alive() {
    // A (on epoch 1) cut epoch 2 and moved; B holds the cut, still on epoch 1. N, new,
    // beats from the first document: it is behind, not on another cut, and waits for
    // most of its peers to name one epoch. Were B to wait for N, neither would move.
    let (mut a, mut b, _) = mesh();
    let (cut, root) = write_cut(&mut a);
    a.start_sync("B");
    route(&mut a, &mut b);
    assert!(b.doc.holds_all(&cut));
    let moved = a.doc.next_epoch(2, &cut, &root).unwrap();
    let mut a = core_with(a.peer(), moved);
    let mut new = core_with("N", Doc::new([5; 16]).with_test_names());
    let mut now = 0;
    tick_hearing(&mut b, &mut [&mut new, &mut a], &mut now, 20);
    assert_eq!(b.counters().epochs_moved, 1, "B waited for the new node");
    assert_eq!(b.doc().epoch_root(), Some(root.0));
    // Both peers name epoch 2 now: the new node asks for it.
    let sent = tick_hearing(&mut new, &mut [&mut a, &mut b], &mut now, 40);
    assert!(!sent.is_empty(), "the new node asked for no document");
}

#[test]
fn a_restarted_node_serves_the_archived_document_it_moved_from_to_a_peer_still_on_it() {
    // A cut epoch 2 and moved while B was down, then restarted: the document it moved
    // from is in its store's archive only. B comes back on epoch 1 without the cut; A
    // reads the archive and serves it, and B moves. (Seed 88 of `sim --nodes 3
    // --late-join --epoch-after 2` in hostile mode: no node had it in memory, and two
    // of three nodes stayed on the old epoch for good.)
    let (mut a, mut b, _) = mesh();
    let (cut, root) = write_cut(&mut a);
    let archived = a.doc.save();
    let moved = a.doc.next_epoch(2, &cut, &root).unwrap();
    let mut a = core_with(a.peer(), moved);
    let mut now: u64 = 0;
    let mut asked = Vec::new();
    for _ in 0..20 {
        now += 100;
        if now.is_multiple_of(500) {
            hear_beat(&mut b, &mut a, now);
        }
        a.tick(now, now);
        while let Some(e) = a.poll_effect() {
            if let Effect::LoadPrevious { epoch } = e {
                asked.push(epoch);
            }
        }
    }
    assert_eq!(asked, [2], "the archive of the move to epoch 2, asked once");
    a.previous_loaded(Some(&archived));
    now += 1_000;
    a.tick(now, now);
    assert!(route(&mut a, &mut b) > 0, "A served B nothing");
    assert!(b.doc.holds_all(&cut));
    tick_hearing(&mut b, &mut [&mut a], &mut now, 20);
    assert_eq!(b.doc().epoch_root(), Some(root.0));
    assert_eq!(b.counters().epochs_moved, 1);
}

#[test]
fn a_new_node_refuses_the_document_a_peer_moved_from_and_takes_up_the_peers_epoch() {
    // A moved to epoch 1 and serves the first document to nodes still on it. Taken in by
    // a new node, that document would leave it on the first epoch with history of the
    // mesh's, unable to take an epoch up, and two epochs behind once the mesh moves again
    // (seed 93 of `sim --nodes 3 --late-join --epoch-after 2`, clean: a restarted node on
    // epoch 1 served it its archive while another node was on epoch 2).
    let mut first = Doc::new([1; 16]).with_test_names();
    first.add_story(&titled("before the cut"), "O", 1).unwrap();
    let seed = first.seed(1).unwrap();
    let moved = Doc::load_test_names([2; 16], &seed.bytes, &[])
        .and_then(|e| e.with_epoch_root(&seed.root))
        .unwrap();
    let (mut served, mut a) = (core_with("A", first), core_with("A", moved));
    let mut new = core_with("N", Doc::new([5; 16]).with_test_names());
    new.add_story(&titled("the new node's own"), 1).unwrap();
    while new.poll_effect().is_some() {}
    hear_beat(&mut a, &mut new, 0);
    served.start_sync("N");
    route(&mut served, &mut new);
    assert!(new.counters().other_epoch_dropped > 0);
    assert_eq!(titles(&new), ["the new node's own"]);
    // It takes up the epoch A names instead.
    let mut now = 0;
    let sent = tick_hearing(&mut new, &mut [&mut a], &mut now, 40);
    let [(to, data)] = &sent[..] else {
        panic!("one request, not {sent:?}");
    };
    assert_eq!(to, "A");
    round_trip(&mut new, &mut a, now, data.clone());
    assert_eq!(new.doc().epoch_root(), Some(seed.root.0));
    assert_eq!(titles(&new), ["before the cut", "the new node's own"]);
}
