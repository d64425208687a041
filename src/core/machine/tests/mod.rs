use super::*;
use crate::core::model::KnowledgeKind;

fn core(name: &str, actor: u8) -> Core {
    core_with(name, Doc::new([actor; 16]).with_test_names())
}

/// A core named `name` over `doc`.
fn core_with(name: &str, doc: Doc) -> Core {
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
            check_view: false,
            stall_after_ms: 0,
            origin_breaker: Default::default(),
            merge_gate: None,
            epoch_after: 0,
            limits: Default::default(),
            triggers: Default::default(),
            budget: Default::default(),
        },
        doc,
        1,
    )
}

/// Carries `src`'s effects to `dst` (replies come straight back). True if any moved.
fn deliver(src: &mut Core, dst: &mut Core) -> bool {
    exchange(src, dst, &mut Vec::new())
}

/// One sync frame from `src` handled by `dst` at `now`, and `dst`'s answer back.
fn round_trip(src: &mut Core, dst: &mut Core, now: u64, data: Vec<u8>) {
    let from = src.peer().to_string();
    dst.handle(
        now,
        Input::SyncRequest {
            from,
            data,
            reply: 0,
        },
    );
    while let Some(r) = dst.poll_effect() {
        if let Effect::Respond { data, .. } = r {
            let from = dst.peer().to_string();
            src.handle(now, Input::SyncResponse { from, data });
        }
    }
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

/// A published beat, encoded.
fn beat(seq: u64, sent_at_ms: u64) -> Vec<u8> {
    codec::encode(&heartbeat(seq, sent_at_ms))
}

/// A probe's answer carrying a beat, encoded.
fn probe_answer(seq: u64, sent_at_ms: u64) -> Vec<u8> {
    codec::encode(&Some(heartbeat(seq, sent_at_ms)))
}

fn heartbeat(seq: u64, sent_at_ms: u64) -> Heartbeat {
    Heartbeat {
        incarnation: 1,
        seq,
        roles: vec![],
        free_capacity: 0,
        heads_digest: [0; 32],
        sent_at_ms,
        claims: vec![],
        suspects: vec![],
        members: 1,
        epoch: None,
    }
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
    let s = &v.stories[key.as_str()];
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
    assert_eq!(s.status, StoryStatus::Ready, "{:?}", s.more.blocked_reason);
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
            epoch: None,
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

mod epochs;
mod jobs;
mod joining;
mod limits;
mod liveness;
mod origin;
mod sessions;
mod settling;
mod steering;
