use super::*;
use crate::core::model::KnowledgeKind;

fn core(name: &str, actor: u8) -> Core {
    Core::new(
        name.to_string(),
        CoreConfig {
            membership: MembershipConfig::default(),
            roles: vec!["implement".into()],
            capacity: 1,
            role_limits: BTreeMap::new(),
            max_sync_bytes: 1 << 20,
            passive: false,
            lease: LeaseConfig::default(),
            work: false,
            broken_winner_rule: false,
            stall_after_ms: 0,
            origin_breaker: Default::default(),
            merge_gate: None,
            limits: Default::default(),
            triggers: Default::default(),
            budget: Default::default(),
        },
        Doc::new([actor; 16]).with_test_names(),
        1,
    )
}

/// Carries `src`'s effects to `dst` (replies come straight back). True if any moved.
fn deliver(src: &mut Core, dst: &mut Core) -> bool {
    exchange(src, dst, &mut Vec::new())
}

/// Like [`deliver`], collecting the work either side cancels.
fn exchange(src: &mut Core, dst: &mut Core, cancelled: &mut Vec<String>) -> bool {
    let mut moved = false;
    while let Some(e) = src.poll_effect() {
        moved = true;
        match e {
            Effect::SendSync { data, .. } => {
                let from = src.peer().to_string();
                dst.handle(
                    0,
                    Input::SyncRequest {
                        from,
                        data,
                        reply: 0,
                    },
                );
                while let Some(r) = dst.poll_effect() {
                    match r {
                        Effect::Respond { data, .. } => {
                            let from = dst.peer().to_string();
                            src.handle(0, Input::SyncResponse { from, data });
                        }
                        Effect::CancelWork { claim } => cancelled.push(claim),
                        _ => {}
                    }
                }
            }
            Effect::CancelWork { claim } => cancelled.push(claim),
            _ => {}
        }
    }
    moved
}

/// Delivers every message between two cores until both are quiet.
fn pump(a: &mut Core, b: &mut Core) {
    for _ in 0..1000 {
        let ab = deliver(a, b);
        let ba = deliver(b, a);
        if !ab && !ba {
            return;
        }
    }
    panic!("no quiescence");
}

#[test]
fn two_cores_converge_through_sync_sessions() {
    let (mut a, mut b) = (core("A", 1), core("B", 2));
    a.add_story(
        &NewStory {
            title: "a".into(),
            ..Default::default()
        },
        1,
    )
    .unwrap();
    b.add_story(
        &NewStory {
            title: "b".into(),
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let mark = a.session_mark();
    a.handle(0, Input::Connected("B".into()));
    pump(&mut a, &mut b);
    assert_eq!(a.digest(), b.digest());
    assert_eq!(a.doc().view(), b.doc().view());
    assert!(a.synced_since("B", mark));
}

#[test]
fn a_restart_releases_the_previous_runs_claims_before_anything_leaves() {
    // Node A's previous run wrote a claim and died before it reached anyone; B
    // claimed the same work with the same token and ran it. A's old claim would win
    // the tie (lowest holder id) the moment the restarted A syncs.
    let r = Resource::story("s1", Phase::Research).unwrap();
    let fact = |holder: &str| ClaimFact {
        resources: vec![(r.clone(), 1)],
        holder: holder.to_string(),
        ttl_ms: 10_000,
        written_at_ms: 0,
        attempt: 1,
        after: None,
    };
    let mut doc = Doc::new([1; 16]).with_test_names();
    doc.put_claim("A-1001", &fact("A")).unwrap();
    doc.put_claim("B-1001", &fact("B")).unwrap();
    let persisted = doc.save();
    let cfg = core("A", 1).cfg;
    let restarted = Doc::load_test_names([3; 16], &persisted, &[]).unwrap();
    let mut a = Core::new("A".into(), cfg.clone(), restarted, 2);
    assert!(
        matches!(a.poll_effect(), Some(Effect::Persist { .. })),
        "the release is persisted first"
    );
    let claims = a.doc().view().claims();
    assert_eq!(
        claims.release_reason("A-1001"),
        Some(ReleaseReason::Abandoned)
    );
    assert!(!claims.is_released("B-1001"), "only its own claims");
    assert_eq!(claims.winner(&r), Some("B-1001"));
    // Nothing of its own left to release: a second restart writes nothing.
    let again = Doc::load_test_names([4; 16], &a.doc_mut().save(), &[]).unwrap();
    let mut a2 = Core::new("A".into(), cfg.clone(), again, 3);
    assert!(a2.poll_effect().is_none());
    // A passive observer of the same document writes nothing either.
    let mut passive = cfg;
    passive.passive = true;
    let doc = Doc::load_test_names([5; 16], &persisted, &[]).unwrap();
    let mut p = Core::new("A".into(), passive, doc, 4);
    assert!(p.poll_effect().is_none());
    assert!(!p.doc().view().claims().is_released("A-1001"));
}

#[test]
fn a_claim_of_a_previous_run_that_comes_back_from_a_peer_is_released() {
    // A's previous run (incarnation 1) pushed its claim and died before flushing it: its
    // store lost the claim, B has it. A restarted (incarnation 2) is alive, so the claim
    // would never expire and its story would wait forever: A releases it once it arrives.
    let r = Resource::story("s1", Phase::Research).unwrap();
    let mut b = core("B", 2);
    b.doc
        .put_claim(
            "A-1001",
            &ClaimFact {
                resources: vec![(r.clone(), 1)],
                holder: "A".into(),
                ttl_ms: 10_000,
                written_at_ms: 0,
                attempt: 1,
                after: None,
            },
        )
        .unwrap();
    b.doc_changed();
    let cfg = core("A", 1).cfg;
    let mut a = Core::new("A".into(), cfg, Doc::new([3; 16]).with_test_names(), 2);
    a.handle(0, Input::Connected("B".into()));
    b.handle(0, Input::Connected("A".into()));
    pump(&mut a, &mut b);
    assert_eq!(
        a.doc().view().claims().release_reason("A-1001"),
        Some(ReleaseReason::Abandoned)
    );
    pump(&mut a, &mut b);
    assert!(b.doc().view().claims().is_released("A-1001"));
}

/// A core that works every phase, with the guards on.
fn worker(name: &str, doc: Doc, guards: Guards) -> Core {
    let mut cfg = core(name, 9).cfg;
    cfg.roles = Phase::ALL.iter().map(|p| p.as_str().to_string()).collect();
    cfg.work = true;
    let mut c = Core::new(name.to_string(), cfg, doc, 1);
    c.set_guards(guards);
    c
}

fn beat(seq: u64, sent_at_ms: u64) -> Vec<u8> {
    codec::encode(&Heartbeat {
        incarnation: 1,
        seq,
        roles: vec![],
        free_capacity: 0,
        heads_digest: [0; 32],
        sent_at_ms,
        claims: vec![],
    })
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
    let guards = Guards {
        clock_skew: true,
        ..Guards::default()
    };
    let mut a = worker("A", Doc::new([1; 16]).with_test_names(), guards);
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
    let one = a.clock_skew(100);
    assert_eq!(
        (one.median_ms, one.peers, one.skewed),
        (Some(5_000), 1, false)
    );
    // Two peers: A is 2.5 s ahead of both (more than drift + one-way delay).
    beats(&mut a, WARM_MS, &[("B", 2_500), ("C", 2_600)]);
    a.tick(WARM_MS + 1, wall + WARM_MS);
    assert!(a.clock_skew(WARM_MS + 1).skewed);
    assert!(a.held(WARM_MS + 1).is_empty(), "claimed while skewed");
    // 1.5 s behind is beyond the bound too (a delay cannot make a clock look behind).
    beats(&mut a, WARM_MS + 200, &[("B", -1_500), ("C", -1_400)]);
    a.tick(WARM_MS + 201, wall + WARM_MS + 200);
    assert!(a.clock_skew(WARM_MS + 201).skewed);
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
    let back = a.clock_skew(now + 1);
    assert_eq!((back.median_ms, back.skewed), (Some(300), false));
    assert_eq!(a.held(now + 1).len(), 1, "claims once back in bounds");
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
    a.heartbeat(0);
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
fn garbage_from_the_network_is_dropped_and_counted_never_a_panic() {
    let mut a = core("A", 1);
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 10],
        vec![codec::WIRE_VERSION, 1, 2, 3],
        codec::encode(&SyncFrame::msg(true, vec![9; 40])),
        codec::encode(&SyncFrame {
            push: vec![serde_bytes::ByteBuf::from(vec![7; 64])],
            ..SyncFrame::msg(true, Vec::new())
        }),
        vec![0; MAX_GOSSIP_BYTES + 1],
    ];
    for g in &garbage {
        a.handle(
            0,
            Input::Heartbeat {
                from: "X".into(),
                data: g.clone(),
            },
        );
        a.handle(
            0,
            Input::SyncRequest {
                from: "X".into(),
                data: g.clone(),
                reply: 7,
            },
        );
    }
    assert!(a.counters().malformed_dropped >= 9, "{:?}", a.counters());
    // Every request still got an answer, so the requester is not left hanging.
    let responds = std::iter::from_fn(|| a.poll_effect())
        .filter(|e| matches!(e, Effect::Respond { reply: 7, .. }))
        .count();
    assert_eq!(responds, garbage.len());
    assert!(
        a.membership().alive(0).is_empty(),
        "garbage never admits a peer"
    );
}

/// A core that claims work of every phase, alone (claims settle at once).
fn worker_alone(name: &str, actor: u8) -> Core {
    let mut c = core(name, actor);
    c.cfg.work = true;
    c.cfg.roles = Phase::ALL.iter().map(|p| p.as_str().to_string()).collect();
    c
}

/// Ticks past the warm-up until the core starts a job; returns its claim.
fn next_job(c: &mut Core, now: &mut u64) -> String {
    for _ in 0..100 {
        *now += 100;
        c.tick(*now, *now);
        while let Some(e) = c.poll_effect() {
            if let Effect::StartWork(job) = e {
                return job.claim;
            }
        }
    }
    panic!("no job started");
}

fn kinds(c: &Core) -> Vec<EventKind> {
    c.events_after(0, usize::MAX)
        .into_iter()
        .map(|(_, e)| e.kind)
        .collect()
}

#[test]
fn story_blocked_fires_once_when_the_third_failure_blocks_the_story() {
    let mut a = worker_alone("A", 1);
    let key = a
        .add_story(
            &NewStory {
                title: "fails".into(),
                ..Default::default()
            },
            1,
        )
        .unwrap()
        .key;
    let mut now = 0;
    for i in 1..=crate::core::model::MAX_ATTEMPTS {
        let claim = next_job(&mut a, &mut now);
        a.handle(
            now,
            Input::WorkFinished {
                claim,
                outcome: Err("tests failed".into()),
            },
        );
        let blocked = kinds(&a)
            .iter()
            .filter(|k| **k == EventKind::StoryBlocked)
            .count();
        let want = usize::from(i == crate::core::model::MAX_ATTEMPTS);
        assert_eq!(blocked, want, "after failure {i}");
    }
    // The node whose write blocked the story has its work refs dropped, once.
    let mut drops = Vec::new();
    while let Some(e) = a.poll_effect() {
        if let Effect::DropWorkRefs { story } = e {
            drops.push(story);
        }
    }
    assert_eq!(drops, vec![key.clone()]);
    let v = a.view();
    let s = &v.stories[&key];
    assert_eq!(s.status, StoryStatus::Blocked);
    assert_eq!((s.failed_attempts, s.takeovers), (3, 0));
    let ev = a
        .events_after(0, usize::MAX)
        .into_iter()
        .map(|(_, e)| e)
        .find(|e| e.kind == EventKind::StoryBlocked)
        .unwrap();
    assert!(
        ev.detail.starts_with("research failed 3 attempts"),
        "{ev:?}"
    );
    // Nothing more happens to a blocked story: no second announcement.
    for _ in 0..20 {
        now += 100;
        a.tick(now, now);
        while let Some(e) = a.poll_effect() {
            assert!(!matches!(e, Effect::DropWorkRefs { .. }), "dropped again");
        }
    }
    let n = kinds(&a)
        .iter()
        .filter(|k| **k == EventKind::StoryBlocked)
        .count();
    assert_eq!(n, 1);
}

#[test]
fn restarts_of_the_holder_are_takeovers_and_block_only_at_the_takeover_limit() {
    let mut a = worker_alone("A", 1);
    a.add_story(
        &NewStory {
            title: "unlucky".into(),
            ..Default::default()
        },
        1,
    )
    .unwrap();
    let cfg = a.cfg.clone();
    let mut now = 0;
    for inc in 2..(2 + crate::core::model::MAX_ATTEMPTS as u64) {
        next_job(&mut a, &mut now);
        // The process dies mid-job and comes back over its persisted document.
        let doc = Doc::load_test_names([inc as u8; 16], &a.doc_mut().save(), &[]).unwrap();
        a = Core::new("A".into(), cfg.clone(), doc, inc);
    }
    let v = a.view();
    let s = v.stories.values().next().unwrap();
    assert_eq!(s.status, StoryStatus::Ready, "{:?}", s.blocked_reason);
    assert_eq!((s.failed_attempts, s.takeovers), (0, 3));
    // And the work goes on... until the story has lost its holder MAX_TAKEOVERS
    // times: then the restart that makes it so blocks it, and says so once.
    for inc in 10..(10 + u64::from(MAX_TAKEOVERS - 3)) {
        assert!(!kinds(&a).contains(&EventKind::StoryBlocked));
        next_job(&mut a, &mut now);
        let doc = Doc::load_test_names([inc as u8; 16], &a.doc_mut().save(), &[]).unwrap();
        a = Core::new("A".into(), cfg.clone(), doc, inc);
    }
    let v = a.view();
    let s = v.stories.values().next().unwrap();
    assert_eq!(s.status, StoryStatus::Blocked);
    assert_eq!((s.failed_attempts, s.takeovers), (0, MAX_TAKEOVERS));
    let blocked: Vec<Event> = a
        .events_after(0, usize::MAX)
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| e.kind == EventKind::StoryBlocked)
        .collect();
    assert_eq!(blocked.len(), 1);
    assert!(
        blocked[0]
            .detail
            .starts_with("research lost its holder 10 times"),
        "{blocked:?}"
    );
}

#[test]
fn both_sides_of_a_healed_partition_show_the_same_history() {
    let (mut a, mut b) = (core("A", 1), core("B", 2));
    // Each side logs its half while apart (gossip never crossed).
    for t in [10, 20, 30, 40] {
        let c = if t % 20 == 10 { &mut a } else { &mut b };
        c.set_wall(t);
        c.emit(EventKind::PhaseStarted, None, None, 0, format!("at {t}"));
    }
    b.set_wall(45);
    b.emit(EventKind::PeerDead, None, None, 0, "A");
    // B also heard one of A's events by gossip before the split.
    let first = a.events_after(0, 10)[0].1.clone();
    b.handle(
        0,
        Input::Event {
            from: "A".into(),
            data: codec::encode(&first),
        },
    );
    // The partition heals: they connect and sync.
    // (One side at a time: `pump` drops a responder's own requests.)
    a.handle(0, Input::Connected("B".into()));
    pump(&mut a, &mut b);
    b.handle(0, Input::Connected("A".into()));
    pump(&mut b, &mut a);
    let shared = |c: &Core| -> Vec<(String, u64, u64)> {
        c.events_after(0, usize::MAX)
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.kind != EventKind::PeerDead)
            .map(|e| (e.node, e.seq, e.at_ms))
            .collect()
    };
    let (ha, hb) = (shared(&a), shared(&b));
    assert_eq!(ha, hb);
    let times: Vec<u64> = ha.iter().map(|x| x.2).collect();
    assert_eq!(times, [10, 20, 30, 40], "in time order, no duplicates");
    // B's own observation of A's death stayed on B.
    assert!(kinds(&b).contains(&EventKind::PeerDead));
    assert!(!kinds(&a).contains(&EventKind::PeerDead));
}

#[test]
fn hostile_events_in_a_sync_answer_are_dropped_never_a_panic() {
    let mut a = core("A", 1);
    a.set_wall(1_000);
    a.handle(0, Input::Connected("B".into()));
    let mut good = Event {
        node: "B".into(),
        seq: 1,
        at_ms: 900,
        kind: EventKind::Claimed,
        story: String::new(),
        phase: None,
        round: 0,
        detail: "x".repeat(10 * crate::core::model::MAX_EVENT_DETAIL),
    };
    let mut future = good.clone();
    future.seq = 2;
    future.at_ms = u64::MAX;
    let mut local = good.clone();
    local.seq = LOCAL_SEQ_BIT | 3;
    let nameless = Event {
        node: String::new(),
        ..good.clone()
    };
    let answer = SyncFrame {
        events: vec![good.clone(), good.clone(), future, local, nameless],
        events_more: true,
        ..SyncFrame::msg(false, Vec::new())
    };
    a.handle(
        0,
        Input::SyncResponse {
            from: "B".into(),
            data: codec::encode(&answer),
        },
    );
    let got = a.events_after(0, 100);
    assert_eq!(got.len(), 1, "{got:?}");
    good.detail.truncate(crate::core::model::MAX_EVENT_DETAIL);
    assert_eq!(got[0].1, good);
    assert!(a.counters().malformed_dropped >= 3);
}

#[test]
fn a_story_without_progress_past_stall_after_raises_one_stalled_event() {
    let mut c = core("a", 9);
    c.cfg.stall_after_ms = 5_000;
    let new = crate::core::model::NewStory {
        title: "nobody here can research".into(),
        ..Default::default()
    };
    c.add_story(&new, 0).unwrap();
    let stalled = |c: &Core| -> Vec<Event> {
        c.events_after(0, 1_000)
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e.kind == EventKind::Stalled)
            .collect()
    };
    for t in [0, 2_000, 4_000, 5_000] {
        c.tick(t, t);
    }
    assert!(stalled(&c).is_empty(), "not past the bound yet");
    c.tick(6_000, 6_000);
    let ev = stalled(&c);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].story, "S-0001");
    assert_eq!(ev[0].phase, Some(Phase::Research));
    // This node only implements: nobody has the research role.
    assert_eq!(
        ev[0].detail,
        "ready for research, no node with role research"
    );
    for t in [10_000, 60_000, 600_000] {
        c.tick(t, t);
    }
    assert_eq!(stalled(&c).len(), 1, "one event per stall");
}

fn titled(title: &str) -> NewStory {
    NewStory {
        title: title.into(),
        ..Default::default()
    }
}

fn titles(c: &Core) -> Vec<String> {
    crate::core::state::tests::titles(c.doc())
}

#[test]
fn a_write_that_could_not_be_made_durable_leaves_no_fact_and_nothing_leaves_the_node() {
    let (mut a, mut b) = (core("A", 1), core("B", 2));
    a.add_story(&titled("kept"), 1).unwrap();
    a.handle(0, Input::Connected("B".into()));
    pump(&mut a, &mut b);
    let digest = a.digest();

    a.begin_durable_write();
    a.add_story(&titled("lost"), 2).unwrap();
    a.add_knowledge(KnowledgeKind::Pitfall, "a lesson never stored", 2)
        .unwrap();
    let chunks = a.take_write_chunks();
    assert!(!chunks.is_empty(), "the write has chunks to persist");
    a.abort_durable_write();

    assert!(a.poll_effect().is_none(), "no push, beat or event leaves");
    assert_eq!(titles(&a), ["kept"]);
    assert!(a.doc().view().knowledge.is_empty());
    assert_eq!(a.digest(), digest);
    assert!(
        a.events_after(0, 100)
            .iter()
            .all(|(_, e)| e.kind != EventKind::PatternDiscovered),
        "the aborted write's event was never raised"
    );
    a.start_sync("B");
    pump(&mut a, &mut b);
    assert_eq!(titles(&b), ["kept"], "the peer never hears of it");

    // The next write succeeds and travels as usual.
    a.begin_durable_write();
    a.add_story(&titled("next"), 3).unwrap();
    a.add_knowledge(KnowledgeKind::Pitfall, "a lesson stored", 3)
        .unwrap();
    assert!(!a.take_write_chunks().is_empty());
    a.commit_durable_write();
    assert!(a
        .events_after(0, 100)
        .iter()
        .any(|(_, e)| e.kind == EventKind::PatternDiscovered));
    a.start_sync("B");
    pump(&mut a, &mut b);
    assert_eq!(titles(&b), ["kept", "next"]);
    assert_eq!(a.digest(), b.digest());
    assert_eq!(b.doc().view().knowledge.len(), 1);
}

#[test]
fn a_settled_claim_whose_job_cannot_be_built_is_released_never_left_running_without_a_job() {
    // A claim of ours on a story the view does not have: settling it cannot build a
    // job. It must not stay "running" (holding capacity with nothing running).
    let mut c = core("A", 1);
    let story = crate::core::state::story_key(99, "A");
    let r = Resource::story_round(&story, Phase::Research, 0).unwrap();
    let id = claim_id("A", 1001);
    c.doc_mut()
        .put_claim(
            &id,
            &ClaimFact {
                resources: vec![(r, 1)],
                holder: "A".into(),
                ttl_ms: 10_000,
                written_at_ms: 0,
                attempt: 1,
                after: None,
            },
        )
        .unwrap();
    c.local.insert(
        id.clone(),
        LocalClaim {
            story,
            phase: Phase::Research,
            round: 0,
            state: LocalState::Settling {
                mark: 0,
                waiting: BTreeSet::new(),
                deadline_ms: 1_000,
                change: None,
            },
            written_ms: 0,
        },
    );
    c.check_settling(0);
    let mut started = false;
    while let Some(e) = c.poll_effect() {
        started |= matches!(e, Effect::StartWork(_));
    }
    assert!(!started, "no job can be built");
    assert!(
        c.held(0).iter().all(|h| !h.running),
        "no claim is running without a job: {:?}",
        c.held(0)
    );
    assert!(c.held(0).is_empty(), "the claim was let go");
    assert!(
        c.doc().view().releases.contains_key(&id),
        "and released, so no one waits on it"
    );
}

#[test]
fn a_running_claim_superseded_by_a_peers_higher_token_is_cancelled_on_the_news_not_at_the_next_tick(
) {
    // Simulator seed 12084 (clean): a node ran a merge while the claims that superseded
    // it sat on nodes that were down; when they came back it learned of a higher token,
    // but stopped only at its next tick — and meanwhile its own answer settled a new
    // claim elsewhere, so two nodes ran the merge at once.
    let mut a = worker_alone("A", 1);
    a.add_story(&titled("contested"), 1).unwrap();
    let cfg = a.cfg.clone();
    // B works from the same backlog where A cannot see it: its first claim (token 1)
    // dies with a restart, its second (token 2) runs.
    let doc = Doc::load_test_names([2; 16], &a.doc_mut().save(), &[]).unwrap();
    let mut b = Core::new("B".into(), cfg.clone(), doc, 1);
    let mut now = 0;
    let mine = next_job(&mut a, &mut now);
    let mut bnow = 0;
    next_job(&mut b, &mut bnow);
    let doc = Doc::load_test_names([3; 16], &b.doc_mut().save(), &[]).unwrap();
    let mut b = Core::new("B".into(), cfg, doc, 2);
    let theirs = next_job(&mut b, &mut bnow);
    assert!(a.view().claims.contains_key(&mine));
    // B syncs with A; A hears the news and gets no tick.
    b.start_sync("A");
    let mut seen = Vec::new();
    for _ in 0..100 {
        let mut moved = false;
        while let Some(e) = b.poll_effect() {
            let Effect::SendSync { data, .. } = e else {
                continue;
            };
            moved = true;
            a.handle(
                now,
                Input::SyncRequest {
                    from: "B".into(),
                    data,
                    reply: 0,
                },
            );
            while let Some(r) = a.poll_effect() {
                if let Effect::Respond { data, .. } = &r {
                    b.handle(
                        bnow,
                        Input::SyncResponse {
                            from: "A".into(),
                            data: data.clone(),
                        },
                    );
                }
                seen.push(r);
            }
        }
        if !moved {
            break;
        }
    }
    assert!(a.view().claims.contains_key(&theirs), "B's claim reached A");
    assert!(
        seen.contains(&Effect::CancelWork {
            claim: mine.clone()
        }),
        "A kept running a claim B's higher token superseded: {seen:?}"
    );
    assert!(a.held(now).iter().all(|h| h.claim != mine || !h.running));
}

/// Starts `c`'s next job, checks it is `phase` in `round`, and finishes it with `verdict`.
fn run_step(c: &mut Core, now: &mut u64, phase: Phase, round: u32, verdict: Option<Verdict>) {
    let claim = next_job(c, now);
    let want = Resource::story_round(c.view().stories.keys().next().unwrap(), phase, round);
    let fact = c.view().claims[&claim].clone();
    assert_eq!(
        fact.resources.first().map(|(r, _)| r.clone()),
        want.ok(),
        "{}'s next job",
        c.peer()
    );
    c.handle(
        *now,
        Input::WorkFinished {
            claim,
            outcome: Ok(Handoff {
                summary: format!("{phase} {round} by {}", c.peer()),
                verdict,
                ..Handoff::default()
            }),
        },
    );
}

#[test]
fn running_work_the_story_no_longer_needs_is_cancelled_when_two_sides_meet() {
    // Simulator seed 78990 (clean): two sides of a partition both review round 0 of a
    // story under token 1. A approves and starts its merge of round 0; B rejects, reworks
    // and reviews round 1 and runs the merge of round 1. When they meet, B's review counts
    // (later work built on it) and the story's next step is B's merge: A's merge of round
    // 0 still holds its own resource but must stop, or the story merges twice at once.
    let mut a = worker_alone("A", 1);
    a.add_story(&titled("contested"), 1).unwrap();
    let mut now = 0;
    // Without the review role until B has its copy, or A would claim the review first.
    let roles = std::mem::take(&mut a.cfg.roles);
    a.cfg.roles = ["research", "plan", "implement"].map(String::from).to_vec();
    for p in [Phase::Research, Phase::Plan, Phase::Implement] {
        run_step(&mut a, &mut now, p, 0, None);
    }
    a.cfg.roles = roles;
    let cfg = a.cfg.clone();
    let doc = Doc::load_test_names([2; 16], &a.doc_mut().save(), &[]).unwrap();
    let mut b = Core::new("B".into(), cfg, doc, 1);
    let mut bnow = 0;
    run_step(&mut a, &mut now, Phase::Review, 0, Some(Verdict::Approve));
    let merge0 = next_job(&mut a, &mut now);
    run_step(&mut b, &mut bnow, Phase::Review, 0, Some(Verdict::Reject));
    run_step(&mut b, &mut bnow, Phase::Rework, 1, None);
    run_step(&mut b, &mut bnow, Phase::Review, 1, Some(Verdict::Approve));
    let merge1 = next_job(&mut b, &mut bnow);
    let key = a.view().stories.keys().next().cloned().unwrap();
    // Their claims on the two merges hold different resources: no token decides.
    assert_eq!(a.view().stories[&key].round, 0);
    // A dials B: its sync sessions carry both sides' changes.
    a.handle(now, Input::Connected("B".into()));
    let mut cancelled = Vec::new();
    for _ in 0..100 {
        let ab = exchange(&mut a, &mut b, &mut cancelled);
        let ba = exchange(&mut b, &mut a, &mut cancelled);
        if !ab && !ba {
            break;
        }
    }
    let v = a.view();
    let s = &v.stories[&key];
    assert_eq!(s, &b.view().stories[&key], "the sides met");
    assert_eq!(
        (s.next_phase, s.round),
        (Some(Phase::Merge), 1),
        "the review later work built on counts: {s:?}"
    );
    assert_eq!(
        cancelled,
        vec![merge0.clone()],
        "A's merge of round 0 stops"
    );
    assert!(a.held(now).iter().all(|h| h.claim != merge0));
    assert!(b.held(bnow).iter().any(|h| h.claim == merge1 && h.running));
    let released = &v.releases[&merge0];
    assert_eq!(released.note, "the story no longer needs this step");
}

#[test]
fn an_unavailable_origin_burns_no_attempt_backs_off_and_work_resumes_when_it_answers() {
    let mut a = worker_alone("A", 1);
    a.cfg.capacity = 3;
    a.origin = Breaker::new(
        "A",
        crate::core::breaker::BreakerConfig {
            open_after: 3,
            base_ms: 200,
            max_ms: 1_000,
        },
    );
    let key = a.add_story(&titled("over ssh"), 1).unwrap().key;
    a.add_story(&titled("another"), 1).unwrap();
    let mut now = 0;
    // Far more outages than MAX_ATTEMPTS: none is an attempt, the story never blocks.
    let outages = 3 * crate::core::model::MAX_ATTEMPTS;
    let mut last_end = 0;
    for i in 1..=outages {
        let claim = next_job(&mut a, &mut now);
        let fact = a.view().claims[&claim].clone();
        assert_eq!(fact.attempt, 1, "outage {i}: still the first attempt");
        if i > 1 {
            assert!(
                now >= last_end + 150,
                "outage {i}: claimed {} ms after the last failure, before the backoff",
                now - last_end
            );
        }
        if i > 3 {
            // Open: the probe is the only job; nothing else is claimed beside it.
            for _ in 0..30 {
                now += 100;
                a.tick(now, now);
                while let Some(e) = a.poll_effect() {
                    assert!(
                        !matches!(e, Effect::StartWork(_)),
                        "a second job beside the probe"
                    );
                }
            }
        }
        a.handle(
            now,
            Input::WorkFinished {
                claim,
                outcome: Err(JobFailure::Origin("cannot reach ssh://git@h/r.git".into())),
            },
        );
        last_end = now;
        let opened = kinds(&a)
            .iter()
            .filter(|k| **k == EventKind::GitUnavailable)
            .count();
        assert_eq!(opened, usize::from(i >= 3), "after outage {i}");
    }
    let v = a.view();
    for s in v.stories.values() {
        assert_ne!(s.status, StoryStatus::Blocked, "{}", s.id);
        assert_eq!((s.failed_attempts, s.takeovers), (0, 0), "{}", s.id);
    }
    let health = a.origin_health(now);
    assert_eq!(health.failures, outages);
    assert!(health.open_since_ms.is_some());
    let deferred = kinds(&a)
        .iter()
        .filter(|k| **k == EventKind::PhaseDeferred)
        .count();
    assert_eq!(deferred as u32, outages);
    // The origin is back: the probe succeeds, the breaker closes, work flows again.
    let claim = next_job(&mut a, &mut now);
    a.handle(
        now,
        Input::WorkFinished {
            claim,
            outcome: Ok(Handoff::default()),
        },
    );
    assert_eq!(
        kinds(&a)
            .iter()
            .filter(|k| **k == EventKind::GitAvailable)
            .count(),
        1
    );
    assert_eq!(a.origin_health(now), Default::default());
    // Closed: the node fills its capacity again at once.
    let mut started = 0;
    for _ in 0..5 {
        now += 100;
        a.tick(now, now);
        while let Some(e) = a.poll_effect() {
            started += usize::from(matches!(e, Effect::StartWork(_)));
        }
    }
    assert_eq!(started, 2, "both stories' next steps run side by side");
    assert!(a.view().stories[&key].failures.is_empty());
}

#[test]
fn a_node_with_nothing_to_claim_probes_the_unavailable_origin_and_says_when_it_is_back() {
    let mut a = worker_alone("A", 1);
    a.origin = Breaker::new(
        "A",
        crate::core::breaker::BreakerConfig {
            open_after: 1,
            base_ms: 200,
            max_ms: 400,
        },
    );
    a.add_story(&titled("only"), 1).unwrap();
    let mut now = 0;
    let claim = next_job(&mut a, &mut now);
    a.handle(
        now,
        Input::WorkFinished {
            claim,
            outcome: Err(JobFailure::Origin("connection refused".into())),
        },
    );
    // Nothing to claim from now on (say a human took the role away): probes only.
    a.cfg.roles.clear();
    let mut probes = Vec::new();
    for _ in 0..40 {
        now += 50;
        a.tick(now, now);
        while let Some(e) = a.poll_effect() {
            if e == Effect::ProbeOrigin {
                probes.push(now);
                a.handle(now, Input::OriginProbed(Err("connection refused".into())));
            }
        }
    }
    assert!(probes.len() >= 3, "{probes:?}");
    assert!(
        probes.windows(2).all(|w| w[1] - w[0] >= 150),
        "at most one probe per backoff: {probes:?}"
    );
    assert!(a.origin_health(now).open_since_ms.is_some());
    // The origin is back: the next probe says so.
    let mut closed = false;
    for _ in 0..40 {
        now += 50;
        a.tick(now, now);
        while let Some(e) = a.poll_effect() {
            if e == Effect::ProbeOrigin {
                a.handle(now, Input::OriginProbed(Ok(())));
                closed = true;
            }
        }
        if closed {
            break;
        }
    }
    assert!(closed, "probed again");
    assert_eq!(a.origin_health(now), Default::default());
    assert_eq!(
        kinds(&a)
            .iter()
            .filter(|k| matches!(k, EventKind::GitUnavailable | EventKind::GitAvailable))
            .count(),
        2
    );
}

#[test]
fn work_this_node_pushed_is_dropped_once_the_story_is_finished_even_a_late_push() {
    let mut a = worker_alone("A", 1);
    a.add_story(&titled("pushed twice"), 1).unwrap();
    let key = a.view().stories.keys().next().unwrap().clone();
    let mut now = 0;
    for p in [Phase::Research, Phase::Plan] {
        run_step(&mut a, &mut now, p, 0, None);
    }
    // Implement pushes its commit (the handoff names it).
    let claim = next_job(&mut a, &mut now);
    a.handle(
        now,
        Input::WorkFinished {
            claim,
            outcome: Ok(Handoff {
                commit: Some("1111111111111111111111111111111111111111".into()),
                ..Handoff::default()
            }),
        },
    );
    // A stale push of an earlier claim of ours, taken over while it ran (say).
    a.pushed.push((key.clone(), "A-stale".into()));
    let mut drops = Vec::new();
    let collect = |a: &mut Core, drops: &mut Vec<String>| {
        while let Some(e) = a.poll_effect() {
            if let Effect::DropWorkRefs { story } = e {
                drops.push(story);
            }
        }
    };
    run_step(&mut a, &mut now, Phase::Review, 0, Some(Verdict::Approve));
    assert_eq!(
        a.pushed.len(),
        2,
        "nothing dropped while the story is in flight"
    );
    run_step(&mut a, &mut now, Phase::Merge, 0, None);
    assert!(a.view().stories[&key].merged.is_some());
    for _ in 0..3 {
        now += 100;
        a.tick(now, now);
        collect(&mut a, &mut drops);
    }
    assert_eq!(drops, vec![key], "once per story, whatever pushed it");
    assert!(a.pushed.is_empty());
}

/// A core whose caps are `limits`.
fn capped(name: &str, actor: u8, limits: crate::core::limits::Limits) -> Core {
    let mut c = core(name, actor);
    c.cfg.limits = limits;
    c.writes = limits.writes_bucket(0);
    c.doc =
        std::mem::replace(&mut c.doc, Doc::new([0; 16])).with_size_cap(limits.max_document_bytes);
    c
}

#[test]
fn a_user_hears_why_a_write_waits_past_the_write_rate() {
    let limits = crate::core::limits::Limits {
        max_writes_per_minute: 3,
        ..Default::default()
    };
    let mut a = capped("A", 1, limits);
    let new = |t: &str| NewStory {
        title: t.into(),
        ..Default::default()
    };
    for i in 0..3 {
        a.add_story(&new(&format!("s{i}")), 1_000).unwrap();
    }
    let err = a.add_story(&new("one too many"), 1_000).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::RateLimited {
                per_minute: 3,
                retry_ms: 20_000
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("max_writes_per_minute") && msg.contains("try again in 20 s"),
        "{msg}"
    );
    let err = a
        .add_knowledge(KnowledgeKind::Pattern, "x", 1_000)
        .unwrap_err();
    assert!(err.contains("too many writes"), "{err}");
    // Nothing refused was written; a minute later one write a 20 s passes again.
    assert_eq!(a.view().stories.len(), 3);
    a.add_story(&new("later"), 21_000).unwrap();
    assert_eq!(a.view().stories.len(), 4);
}

#[test]
fn a_full_document_refuses_user_writes_first_and_peers_changes_at_the_cap() {
    let mut a = core("A", 1);
    for i in 0..20 {
        a.add_story(
            &NewStory {
                title: format!("story {i} with a title long enough to take some room"),
                ..Default::default()
            },
            1,
        )
        .unwrap();
    }
    // B's cap is below even the compressed changes A sends: they are refused whole and
    // counted. (A message is measured as it arrives, compressed: a document can pass its
    // cap by what one accepted message takes once stored.)
    let limits = crate::core::limits::Limits {
        max_document_bytes: 200,
        ..Default::default()
    };
    let mut b = capped("B", 2, limits);
    a.handle(0, Input::Connected("B".into()));
    b.handle(0, Input::Connected("A".into()));
    a.start_sync("B");
    pump(&mut a, &mut b);
    assert!(
        b.view().stories.is_empty(),
        "a capped replica took changes in"
    );
    assert!(b.counters().full_dropped > 0, "{:?}", b.counters());
    assert_eq!(b.counters().malformed_dropped, 0);
    // Past 90 % of its own cap, a node refuses its user's stories, saying why; what it
    // wrote before stays within the cap.
    let tight = crate::core::limits::Limits {
        max_document_bytes: 4_000,
        ..Default::default()
    };
    let mut c = capped("C", 3, tight);
    let mut refused = None;
    for i in 0..100 {
        let story = NewStory {
            title: format!("story {i} with a title long enough to take some room"),
            ..Default::default()
        };
        if let Err(e) = c.add_story(&story, 1) {
            refused = Some((i, e));
            break;
        }
    }
    let (written, err) = refused.expect("the cap never refused a write");
    assert!(written > 0, "refused the first write");
    assert!(matches!(err, StateError::Full { .. }), "{err:?}");
    assert!(err.to_string().contains("max_document_bytes"), "{err}");
    assert!(
        c.doc().stored_bytes() <= 4_000,
        "{}",
        c.doc().stored_bytes()
    );
    assert_eq!(c.view().stories.len(), written);
}

#[test]
fn a_peer_over_its_ingress_rate_is_dropped_counted_and_heard_again_later() {
    let limits = crate::core::limits::Limits {
        max_ingress_bytes_per_sec: 64 << 10,
        ..Default::default()
    };
    let mut b = capped("B", 2, limits);
    // Burst: twice the sync cap (1 MiB here). Junk frames cost their bytes all the same.
    let frame = vec![0u8; 1 << 20];
    for _ in 0..2 {
        b.handle(
            0,
            Input::SyncRequest {
                from: "A".into(),
                data: frame.clone(),
                reply: 0,
            },
        );
    }
    assert_eq!(b.counters().malformed_dropped, 2);
    assert_eq!(b.counters().ingress_dropped, 0);
    b.handle(
        0,
        Input::SyncRequest {
            from: "A".into(),
            data: frame.clone(),
            reply: 0,
        },
    );
    assert_eq!(
        b.counters().ingress_dropped,
        1,
        "over the rate: dropped undecoded"
    );
    assert_eq!(b.counters().malformed_dropped, 2);
    // Another peer has its own allowance; A's refills at the rate (64 KiB/s: 16 s).
    b.handle(
        0,
        Input::SyncRequest {
            from: "C".into(),
            data: frame.clone(),
            reply: 0,
        },
    );
    assert_eq!(b.counters().ingress_dropped, 1);
    let mut a = core("A", 1);
    a.add_story(
        &NewStory {
            title: "heard later".into(),
            ..Default::default()
        },
        1,
    )
    .unwrap();
    b.handle(16_001, Input::Connected("A".into()));
    a.handle(16_001, Input::Connected("B".into()));
    a.start_sync("B");
    // The answers to the junk frames (this harness routes answers by order, not by
    // request id): out of the way.
    while b.poll_effect().is_some() {}
    pump(&mut a, &mut b);
    assert_eq!(b.view().stories.len(), 1, "{:?}", b.counters());
}

/// A core that works every phase, in a mesh whose operator is OP (it admitted the core
/// and B).
fn steered(name: &str) -> Core {
    use crate::core::state::{admit_key, RosterFact};
    let mut doc = Doc::new([7; 16])
        .with_test_names()
        .with_operators(["OP".to_string()].into());
    for peer in [name, "B"] {
        let key = admit_key(peer);
        let json = serde_json::to_string(&RosterFact {
            peer: peer.into(),
            note: String::new(),
            at_ms: 1,
        })
        .unwrap();
        doc.put_signed(
            &key,
            &crate::core::trust::Signer::for_test("OP").seal(&key, &json),
        )
        .unwrap();
    }
    let mut cfg = worker_alone(name, 7).cfg;
    cfg.work = true;
    Core::new(name.to_string(), cfg, doc, 1)
}

/// OP's command, resolved against `c`'s view as the CLI does, signed and written
/// through `c`.
fn operate(
    c: &mut Core,
    target: crate::core::state::Target,
    op: crate::core::state::Op,
    at_ms: u64,
) {
    use crate::core::state::{command_key, CommandFact};
    let fact = resolve_command(&c.view(), CommandFact { target, op, at_ms }).unwrap();
    let json = serde_json::to_string(&fact).unwrap();
    let key = command_key("OP", &json);
    let sealed = crate::core::trust::Signer::for_test("OP").seal(&key, &json);
    c.put_command(&key, &sealed).unwrap();
}

fn on(story: &str) -> crate::core::state::Target {
    crate::core::state::Target::Story {
        story: story.into(),
    }
}

/// Ticks `n` times, returning the jobs started.
fn ticks(c: &mut Core, now: &mut u64, n: usize) -> Vec<Job> {
    let mut jobs = Vec::new();
    for _ in 0..n {
        *now += 100;
        c.tick(*now, *now);
        while let Some(e) = c.poll_effect() {
            if let Effect::StartWork(job) = e {
                jobs.push(*job);
            }
        }
    }
    jobs
}

/// Ticks `a` `n` times, carrying every message between `a` and `b`; the jobs `a` started.
fn ticks_with(a: &mut Core, b: &mut Core, now: &mut u64, n: usize) -> Vec<Job> {
    let mut jobs = Vec::new();
    for _ in 0..n {
        *now += 100;
        // Each hears the other's heartbeat (B is alive to A: A pushes to it).
        a.handle(
            *now,
            Input::Heartbeat {
                from: "B".into(),
                data: beat(*now, *now),
            },
        );
        b.handle(
            *now,
            Input::Heartbeat {
                from: "A".into(),
                data: beat(*now, *now),
            },
        );
        a.tick(*now, *now);
        b.tick(*now, *now);
        for _ in 0..50 {
            let mut moved = false;
            while let Some(e) = a.poll_effect() {
                moved = true;
                match e {
                    Effect::StartWork(job) => jobs.push(*job),
                    Effect::SendSync { data, .. } => {
                        b.handle(
                            *now,
                            Input::SyncRequest {
                                from: "A".into(),
                                data,
                                reply: 0,
                            },
                        );
                        while let Some(r) = b.poll_effect() {
                            if let Effect::Respond { data, .. } = r {
                                a.handle(
                                    *now,
                                    Input::SyncResponse {
                                        from: "B".into(),
                                        data,
                                    },
                                );
                            }
                        }
                    }
                    _ => {}
                }
            }
            moved |= deliver(b, a);
            if !moved {
                break;
            }
        }
    }
    jobs
}

#[test]
fn a_paused_node_claims_nothing_and_a_pause_that_arrives_while_a_claim_settles_stops_it_before_it_starts(
) {
    use crate::core::state::{Op, Target};
    let mut a = steered("A");
    let key = a.add_story(&titled("steered"), 1).unwrap().key;
    // B is a member that works nothing: A's claims settle only once B has them.
    let mut cfg = a.cfg.clone();
    cfg.work = false;
    let doc = Doc::load_test_names([8; 16], &a.doc_mut().save(), &[])
        .unwrap()
        .with_operators(["OP".to_string()].into());
    let mut b = Core::new("B".into(), cfg, doc, 1);
    a.handle(0, Input::Connected("B".into()));
    b.handle(0, Input::Connected("A".into()));
    let mut now = 0;
    // One tick at a time until A has written a claim, which waits for B (settling).
    for _ in 0..100 {
        now += 100;
        a.tick(now, now);
        if !a.held(now).is_empty() {
            break;
        }
        ticks_with(&mut a, &mut b, &mut now, 1);
    }
    let claim = a.held(now)[0].claim.clone();
    assert!(!a.held(now)[0].running, "still settling");
    // The pause reaches the node now: the claim is handed back, the phase never starts.
    operate(
        &mut a,
        on("S-0001"),
        Op::Pause {
            reason: "freeze".into(),
        },
        10,
    );
    assert!(
        ticks_with(&mut a, &mut b, &mut now, 30).is_empty(),
        "a paused story starts nothing"
    );
    let release = &a.view().releases[&claim];
    assert_eq!(release.why, ReleaseReason::Unsettled, "not an attempt");
    assert!(
        release.note.contains("paused by an operator"),
        "{}",
        release.note
    );
    assert_eq!(
        b.view().stories[&key].paused,
        a.view().stories[&key].paused,
        "B has it too"
    );
    // The story resumed, but the node itself paused: still nothing.
    operate(&mut a, on("S-0001"), Op::Resume, 20);
    operate(
        &mut a,
        Target::Node { peer: "A".into() },
        Op::Pause {
            reason: String::new(),
        },
        21,
    );
    assert!(
        ticks_with(&mut a, &mut b, &mut now, 30).is_empty(),
        "a paused node claims nothing"
    );
    assert!(a.held(now).is_empty());
    // The whole mesh paused, then the node resumed: the mesh's pause still holds.
    operate(
        &mut a,
        Target::All,
        Op::Pause {
            reason: "release day".into(),
        },
        22,
    );
    operate(&mut a, Target::Node { peer: "A".into() }, Op::Resume, 23);
    assert!(ticks_with(&mut a, &mut b, &mut now, 30).is_empty());
    let w = crate::core::scheduler::waiting(&a.view(), &a.view().claims(), &key).unwrap();
    assert!(
        w.to_string().contains("paused by operator") && w.for_human(),
        "{w}"
    );
    operate(&mut a, Target::All, Op::Resume, 24);
    let jobs = ticks_with(&mut a, &mut b, &mut now, 30);
    assert_eq!(jobs.len(), 1, "resumed: the phase starts");
    assert_eq!(jobs[0].phase, Phase::Research);
}

#[test]
fn a_cancel_stops_the_running_work_and_nothing_of_it_counts() {
    use crate::core::state::Op;
    let mut a = steered("A");
    let key = a.add_story(&titled("doomed"), 1).unwrap().key;
    let mut now = 0;
    let claim = next_job(&mut a, &mut now);
    operate(
        &mut a,
        on("S-0001"),
        Op::Cancel {
            reason: "duplicate".into(),
        },
        10,
    );
    let mut cancelled = Vec::new();
    // No tick: the cancel is acted on as soon as the write's effects are out (a merge
    // running here must not get one more tick to land).
    while let Some(e) = a.poll_effect() {
        match e {
            Effect::CancelWork { claim } => cancelled.push(claim),
            Effect::StartWork(_) => panic!("a cancelled story starts nothing"),
            _ => {}
        }
    }
    assert_eq!(
        cancelled,
        vec![claim.clone()],
        "its running work is stopped"
    );
    // The job's answer arrives anyway: it is not recorded.
    a.handle(
        now,
        Input::WorkFinished {
            claim: claim.clone(),
            outcome: Ok(Handoff::default()),
        },
    );
    let v = a.view();
    assert!(v.results.is_empty(), "nothing of it counts");
    assert_eq!(v.stories[&key].status, StoryStatus::Cancelled);
    assert!(
        v.releases[&claim].note.contains("cancelled"),
        "{:?}",
        v.releases[&claim]
    );
    assert!(ticks(&mut a, &mut now, 20).is_empty());
    // And the operator is told why a second command cannot apply.
    let e = resolve_command(
        &a.view(),
        crate::core::state::CommandFact {
            target: on("S-0001"),
            op: Op::Context { text: "x".into() },
            at_ms: 11,
        },
    )
    .unwrap_err();
    assert_eq!(e, "S-0001 was cancelled");
}

#[test]
fn a_low_confidence_plan_holds_implement_until_an_operator_approves_it_and_context_reaches_the_job()
{
    use crate::core::model::AlertKind;
    use crate::core::state::Op;
    let mut a = steered("A");
    let key = a.add_story(&titled("unsure"), 1).unwrap().key;
    let mut now = 0;
    run_step(&mut a, &mut now, Phase::Research, 0, None);
    let claim = next_job(&mut a, &mut now);
    a.handle(
        now,
        Input::WorkFinished {
            claim,
            outcome: Ok(Handoff {
                summary: "a guess".into(),
                confidence: Some(10),
                ..Handoff::default()
            }),
        },
    );
    let v = a.view();
    let plan = v.counted_result(&key, Phase::Plan).unwrap();
    assert_eq!(plan.escalations.len(), 1, "the writer recorded the trigger");
    assert_eq!(plan.escalations[0].kind, AlertKind::LowConfidence);
    assert!(v.stories[&key].held);
    assert!(
        ticks(&mut a, &mut now, 30).is_empty(),
        "implement waits for a human"
    );
    // Approving with a kind that holds nothing is refused with the reason.
    let e = resolve_command(
        &v,
        crate::core::state::CommandFact {
            target: on("S-0001"),
            op: Op::Approve {
                items: vec!["security".into()],
            },
            at_ms: 5,
        },
    )
    .unwrap_err();
    assert!(e.contains("nothing to approve of security"), "{e}");
    operate(
        &mut a,
        on("S-0001"),
        Op::Context {
            text: "prefer the small change".into(),
        },
        6,
    );
    operate(&mut a, on("S-0001"), Op::Approve { items: vec![] }, 7);
    let jobs = ticks(&mut a, &mut now, 30);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].phase, Phase::Implement);
    assert_eq!(jobs[0].notes, vec!["prefer the small change".to_string()]);
}
