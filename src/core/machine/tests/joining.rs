//! Joining and leaving: the join wait, clock skew, clean stops and peers that say they
//! left.

use super::*;

/// A core that works every phase, with the guards on.
fn worker(name: &str, doc: Doc, guards: Guards) -> Core {
    let mut cfg = core(name, 9).cfg;
    cfg.roles = Phase::ALL.iter().map(|p| p.as_str().to_string()).collect();
    cfg.work = true;
    let mut c = Core::new(name.to_string(), cfg, doc, 1);
    c.set_guards(guards);
    c
}

/// A worker with the clock-skew guard on.
fn watching_its_clock(name: &str) -> Core {
    let guards = Guards {
        clock_skew: true,
        ..Guards::default()
    };
    worker(name, Doc::new([1; 16]).with_test_names(), guards)
}

/// Warm-up with the default membership config (3 beats of 1 s).
const WARM_MS: u64 = 3_000;

#[test]
fn a_node_that_knows_of_a_mesh_claims_nothing_before_it_synced_with_it() {
    // B wrote a story and its node fact; A restarts over that document, alone.
    let mut b = core("B", 2);
    b.announce_node("test");
    b.add_story(
        &NewStory {
            title: "s".into(),
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let guards = Guards {
        join_wait_ms: 10_000,
        ..Guards::default()
    };
    let doc = Doc::load_test_names([1; 16], &b.doc_mut().save(), &[]).unwrap();
    let mut a = worker("A", doc, guards);
    a.tick(0, 0);
    a.tick(WARM_MS + 1, 0);
    assert!(a.held(WARM_MS + 1).is_empty(), "claimed before joining");
    assert_eq!(a.joining(WARM_MS + 1), Some(10_000 - WARM_MS - 1));
    // It connects and completes a sync with B: joined, it claims at the next tick.
    a.handle(WARM_MS + 2, Input::Connected("B".into()));
    pump(&mut a, &mut b);
    assert_eq!(a.joined_at_ms(), Some(WARM_MS + 2));
    assert_eq!(a.joining(WARM_MS + 3), None);
    a.tick(WARM_MS + 3, 0);
    assert_eq!(a.held(WARM_MS + 3).len(), 1, "claims once joined");
}

#[test]
fn the_join_wait_is_bounded_and_a_mesh_of_one_does_not_wait() {
    let story = NewStory {
        title: "s".into(),
        ..Default::default()
    };
    // Remembers peers, none answers: it claims once the wait is over.
    let guards = Guards {
        join_wait_ms: 5_000,
        remembers_peers: true,
        clock_skew: false,
    };
    let mut a = worker("A", Doc::new([1; 16]).with_test_names(), guards);
    a.add_story(&story, 1).unwrap();
    a.tick(0, 0);
    a.tick(4_999, 0);
    assert!(a.held(4_999).is_empty());
    a.tick(5_000, 0);
    assert_eq!(a.joining(5_000), None);
    assert_eq!(a.held(5_000).len(), 1, "claims after the bounded wait");
    // Knows of no mesh (a document with no other node, no remembered peers): no wait
    // beyond the warm-up.
    let mut solo = worker(
        "S",
        Doc::new([2; 16]).with_test_names(),
        Guards {
            remembers_peers: false,
            ..guards
        },
    );
    solo.announce_node("test");
    solo.add_story(&story, 1).unwrap();
    solo.tick(0, 0);
    assert_eq!(solo.joining(WARM_MS), None);
    solo.tick(WARM_MS, 0);
    assert_eq!(solo.held(WARM_MS).len(), 1);
}

#[test]
fn a_node_whose_clock_is_off_the_mesh_median_claims_nothing_until_it_is_back() {
    // Defaults: max_clock_drift_ms 1000, message_timeout_ms 1000.
    let mut a = watching_its_clock("A");
    for i in 0..4 {
        a.add_story(
            &NewStory {
                title: format!("s{i}"),
                ..Default::default()
            },
            1,
        )
        .unwrap();
    }
    let wall = 1_000_000;
    let mut seq = 0;
    let mut beats = |a: &mut Core, now: u64, peers: &[(&str, i64)]| {
        seq += 1;
        a.set_wall(wall + now);
        for (p, ahead) in peers {
            let sent = (wall + now) as i64 - ahead;
            let input = Input::Heartbeat {
                from: p.to_string(),
                data: beat(seq, sent as u64),
            };
            a.handle(now, input);
        }
    };
    a.tick(0, wall);
    // One peer disagrees by 5 s: reported, but one peer cannot say whose clock is
    // wrong.
    beats(&mut a, 100, &[("B", 5_000)]);
    let one = a.clock_skew();
    assert_eq!(
        (one.median_ms, one.peers, one.skewed),
        (Some(5_000), 1, false)
    );
    // Two peers: A is 2.5 s ahead of both (more than drift + one-way delay).
    beats(&mut a, WARM_MS, &[("B", 2_500), ("C", 2_600)]);
    a.tick(WARM_MS + 1, wall + WARM_MS);
    assert!(a.clock_skew().skewed);
    assert!(a.held(WARM_MS + 1).is_empty(), "claimed while skewed");
    // 1.5 s behind is beyond the bound too (a delay cannot make a clock look behind).
    beats(&mut a, WARM_MS + 200, &[("B", -1_500), ("C", -1_400)]);
    a.tick(WARM_MS + 201, wall + WARM_MS + 200);
    assert!(a.clock_skew().skewed);
    assert!(a.held(WARM_MS + 201).is_empty(), "claimed while skewed");
    // Fixed: once the behind beats are out of the window, within drift + delay (a
    // beat 1.8 s old may be 1 s of drift and 0.8 s of delivery), and one wild peer
    // does not move the median: it claims again.
    let mut now = WARM_MS + 200;
    for _ in 0..CLOCK_SAMPLES {
        now += 100;
        beats(&mut a, now, &[("B", 1_800), ("C", 300), ("D", -60_000)]);
    }
    a.tick(now + 1, wall + now);
    let back = a.clock_skew();
    assert_eq!((back.median_ms, back.skewed), (Some(300), false));
    assert_eq!(a.held(now + 1).len(), 1, "claims once back in bounds");
}

#[test]
fn a_loaded_node_allows_for_its_probe_round_trips_before_calling_its_clock_skewed() {
    // Defaults: max_clock_drift_ms 1000, message_timeout_ms 1000. Every clock is right;
    // the machine is loaded and beats arrive 2.5 s after they were sent.
    let mut a = watching_its_clock("A");
    let wall = 1_000_000;
    let mut seq = 0;
    let mut beats = |a: &mut Core, now: u64, late: u64| {
        seq += 1;
        a.set_wall(wall + now);
        for p in ["B", "C"] {
            let data = beat(seq, wall + now - late);
            a.handle(
                now,
                Input::Heartbeat {
                    from: p.into(),
                    data,
                },
            );
        }
        seq
    };
    a.tick(0, wall);
    beats(&mut a, 100, 2_500);
    let before = a.clock_skew();
    assert_eq!(before.delay_ms, 1_000);
    assert!(before.skewed, "no round trip measured: late reads as ahead");
    // A probe takes 3 s to come back: beats that late are no sign of a clock ahead.
    while a.poll_effect().is_some() {}
    a.heartbeat(1_000, wall + 1_000);
    let probed: Vec<String> = std::iter::from_fn(|| a.poll_effect())
        .filter_map(|e| match e {
            Effect::Probe { to, .. } => Some(to),
            _ => None,
        })
        .collect();
    assert_eq!(probed.len(), 1, "{probed:?}");
    let s = beats(&mut a, 3_900, 2_500) + 1;
    a.set_wall(wall + 4_000);
    let data = probe_answer(s, wall + 4_000 - 2_500);
    a.handle(
        4_000,
        Input::ProbeAnswer {
            from: probed[0].clone(),
            data,
        },
    );
    let loaded = a.clock_skew();
    assert_eq!((loaded.delay_ms, loaded.peers), (3_000, 2));
    assert_eq!(loaded.median_ms, Some(2_500));
    assert!(
        !loaded.skewed,
        "a late beat judged a clock ahead: {loaded:?}"
    );
    // A clock off by more than drift and that delay is still caught.
    for i in 0..CLOCK_SAMPLES as u64 {
        beats(&mut a, 4_100 + i * 100, 5_000);
    }
    let off = a.clock_skew();
    assert_eq!((off.median_ms, off.skewed), (Some(5_000), true));
}

#[test]
fn a_clean_shutdown_releases_every_claim_as_shutdown_and_claims_nothing_more() {
    let mut a = worker("A", Doc::new([1; 16]).with_test_names(), Guards::default());
    a.add_story(
        &NewStory {
            title: "s".into(),
            ..Default::default()
        },
        1,
    )
    .unwrap();
    a.tick(0, 0);
    a.tick(WARM_MS, 0);
    let held = a.held(WARM_MS);
    assert!(held.len() == 1 && held[0].running, "{held:?}");
    while a.poll_effect().is_some() {}
    let h = a.begin_shutdown(WARM_MS + 1).expect("a claim to hand back");
    assert_eq!(h.released, vec![held[0].claim.clone()]);
    let effects: Vec<Effect> = std::iter::from_fn(|| a.poll_effect()).collect();
    assert!(effects.contains(&Effect::CancelWork {
        claim: held[0].claim.clone()
    }));
    let left = effects.iter().any(|e| match e {
        Effect::Publish {
            topic: Topic::Events,
            data,
        } => codec::decode::<Event>(data, MAX_GOSSIP_BYTES)
            .is_ok_and(|ev| ev.kind == EventKind::NodeLeft),
        _ => false,
    });
    assert!(left, "the peers are told it is leaving");
    a.heartbeat(0, 0);
    assert!(a.poll_effect().is_none(), "no beat after the goodbye");
    let view = a.view();
    assert_eq!(
        view.claims().release_reason(&held[0].claim),
        Some(ReleaseReason::Shutdown)
    );
    // Not an attempt: the story is free again, at attempt 0.
    let s = view.stories.values().next().unwrap();
    assert_eq!(s.attempts, 0, "{s:?}");
    assert!(a.handed_over(&h), "no peer to wait for");
    // It claims nothing more, even if asked to work.
    a.set_work(true, WARM_MS + 2, 0);
    a.tick(WARM_MS + 10, 0);
    assert!(a.held(WARM_MS + 10).is_empty());
    assert!(a.begin_shutdown(WARM_MS + 11).is_none(), "nothing left");
}

#[test]
fn a_peer_that_says_it_left_is_dead_at_once_until_it_beats_again() {
    let mut a = core("A", 1);
    a.handle(
        0,
        Input::Heartbeat {
            from: "B".into(),
            data: beat(1, 0),
        },
    );
    assert_eq!(a.peer_state("B", 10), Some(PeerState::Alive));
    let bye = |node: &str| Event {
        node: node.to_string(),
        seq: 1,
        at_ms: 0,
        kind: EventKind::NodeLeft,
        story: String::new(),
        phase: None,
        round: 0,
        detail: "stopping".into(),
    };
    // Only B can say B left.
    a.handle(
        20,
        Input::Event {
            from: "C".into(),
            data: codec::encode(&bye("B")),
        },
    );
    assert_eq!(a.peer_state("B", 20), Some(PeerState::Alive));
    a.handle(
        30,
        Input::Event {
            from: "B".into(),
            data: codec::encode(&bye("B")),
        },
    );
    assert_eq!(a.peer_state("B", 30), Some(PeerState::Dead));
    assert!(a.membership().alive(30).is_empty());
    // Back (a newer beat): alive again.
    a.handle(
        40,
        Input::Heartbeat {
            from: "B".into(),
            data: beat(2, 0),
        },
    );
    assert_eq!(a.peer_state("B", 40), Some(PeerState::Alive));
}

#[test]
fn a_node_admitted_after_it_started_writes_its_description_then() {
    // A starts in a mesh whose operator has not admitted it yet: its description would
    // not count, so it waits; the admission arrives and the description follows.
    let doc = Doc::new([3; 16])
        .with_test_names()
        .with_operators(["OP".to_string()].into());
    let mut a = worker("A", doc, Guards::default());
    a.announce_node("1.2.3");
    a.tick(0, 0);
    assert!(
        !a.view().nodes.contains_key("A"),
        "a non-member wrote its description"
    );
    let key = crate::core::state::admit_key("A");
    let json = serde_json::to_string(&crate::core::state::RosterFact {
        peer: "A".into(),
        note: String::new(),
        at_ms: 1,
    })
    .unwrap();
    let sealed = crate::core::trust::Signer::for_test("OP").seal(&key, &json);
    a.put_roster(&key, &sealed).unwrap();
    a.tick(1_000, 1_000);
    let view = a.view();
    let node = view.nodes.get("A").expect("the description, once admitted");
    assert_eq!(node.version, "1.2.3");
}

/// A, whose document counts as large (any size does here) with five stories, and B, new.
fn large_and_new() -> (Core, Core) {
    let mut a = core("A", 1);
    a.cfg.limits.snapshot_join_bytes = 1;
    a.announce_node("test");
    for i in 0..5 {
        a.add_story(&titled(&format!("a{i}")), 1).unwrap();
    }
    let mut b = core("B", 2);
    b.announce_node("test");
    (a, b)
}

#[test]
fn a_new_node_takes_a_large_document_as_one_snapshot_and_converges() {
    let (mut a, mut b) = large_and_new();
    let mark = b.session_mark();
    b.handle(0, Input::Connected("A".into()));
    pump(&mut b, &mut a);
    assert_eq!(a.counters().snapshots_sent, 1);
    assert_eq!(
        b.counters().snapshots_taken,
        1,
        "one snapshot, not the changes"
    );
    assert_eq!(a.digest(), b.digest(), "B's own change reached A too");
    assert_eq!(a.doc().view(), b.doc().view());
    assert!(b.synced_since("A", mark), "the session completed");
    // From then on, plain syncs: B is no longer new.
    b.add_story(&titled("b"), 1).unwrap();
    a.add_story(&titled("a5"), 1).unwrap();
    b.handle(0, Input::Connected("A".into()));
    pump(&mut b, &mut a);
    assert_eq!(a.digest(), b.digest());
    assert_eq!(titles(&b).len(), 7);
    assert_eq!(a.counters().snapshots_sent, 1, "no second snapshot");

    // Below the size, a new node gets the changes as before.
    let mut c = core("C", 3);
    a.cfg.limits.snapshot_join_bytes = u64::MAX;
    c.handle(0, Input::Connected("A".into()));
    pump(&mut c, &mut a);
    assert_eq!(c.digest(), a.digest());
    assert_eq!(c.counters().snapshots_taken, 0);

    // A save is served again for a while, though A wrote since: the new node syncs the
    // rest from the snapshot's heads.
    a.cfg.limits.snapshot_join_bytes = 1;
    let mut d = core("D", 4);
    d.handle(0, Input::Connected("A".into()));
    pump(&mut d, &mut a);
    assert_eq!(d.counters().snapshots_taken, 1);
    assert_eq!(
        d.digest(),
        a.digest(),
        "the stories since the save came by sync"
    );
    assert_eq!(titles(&d).len(), 7);
}

#[test]
fn a_large_node_does_not_sync_its_document_change_by_change_to_a_new_node() {
    // Both sides open a session on a new connection. A's reaches B first.
    let (mut a, mut b) = large_and_new();
    a.handle(0, Input::Connected("B".into()));
    deliver(&mut a, &mut b);
    assert!(
        titles(&b).is_empty(),
        "B said it is new: A's session ended before sending its stories one by one"
    );
    assert_eq!(a.counters().sync_sessions_deferred, 1);
    // B's own first session takes the document whole.
    b.handle(0, Input::Connected("A".into()));
    pump(&mut b, &mut a);
    assert_eq!(b.counters().snapshots_taken, 1);
    assert_eq!(a.digest(), b.digest());
    // No longer new: A's next session with B syncs as usual.
    let mark = a.session_mark();
    a.add_story(&titled("a5"), 1).unwrap();
    a.handle(0, Input::Connected("B".into()));
    pump(&mut a, &mut b);
    assert_eq!(a.digest(), b.digest());
    assert!(a.synced_since("B", mark), "completed, not ended");
    assert_eq!(a.counters().sync_sessions_deferred, 1);
}
