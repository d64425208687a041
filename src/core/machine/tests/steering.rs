//! Steering: pauses, cancels and plan gates reaching the core's claims and jobs.

use super::*;

/// A core that works every phase, in a mesh whose operator is OP (it admitted the core
/// and B).
fn steered(name: &str) -> Core {
    steered_with(name, &[])
}

/// [`steered`], with more members on the roster.
fn steered_with(name: &str, more: &[String]) -> Core {
    let mut doc = Doc::new([7; 16])
        .with_test_names()
        .with_operators(["OP".to_string()].into());
    for peer in [name, "B"]
        .into_iter()
        .chain(more.iter().map(String::as_str))
    {
        crate::core::state::tests::admit(&mut doc, "OP", peer);
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

/// B: a member that works nothing, over a copy of `a`'s document, connected to `a` (A's
/// claims settle only once B has them).
fn member_b(a: &mut Core) -> Core {
    let mut cfg = a.cfg.clone();
    cfg.work = false;
    let doc = Doc::load_test_names([8; 16], &a.doc_mut().save(), &[])
        .unwrap()
        .with_operators(["OP".to_string()].into());
    let mut b = Core::new("B".into(), cfg, doc, 1);
    a.handle(0, Input::Connected("B".into()));
    b.handle(0, Input::Connected("A".into()));
    b
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
                    Effect::SendSync { data, .. } => round_trip(a, b, *now, data),
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
    let mut b = member_b(&mut a);
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
        b.view().stories[key.as_str()].more.paused,
        a.view().stories[key.as_str()].more.paused,
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
    assert_eq!(v.stories[key.as_str()].status, StoryStatus::Cancelled);
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
    assert!(v.stories[key.as_str()].held);
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

#[test]
fn a_live_holder_keeps_its_claims_renewed_at_its_peers_and_a_silent_one_does_not() {
    // Not steering, but this module's two-member mesh: A runs a claim and publishes its
    // beat once; B probes A every period. While A answers, the lease never runs out at
    // B (twice the lease); once A stops answering it is suspect, then dead, and its
    // claim is no longer renewed.
    // Twenty more members, so B probes A about every 21 periods: longer than the lease.
    let others: Vec<String> = (0..20).map(|i| format!("C{i}")).collect();
    let mut a = steered_with("A", &others);
    a.add_story(&titled("held"), 1).unwrap();
    let mut b = member_b(&mut a);
    let mut now = 0;
    let mut started = Vec::new();
    while started.is_empty() && now < 60_000 {
        started = ticks_with(&mut a, &mut b, &mut now, 1);
    }
    for c in &others {
        b.handle(
            now,
            Input::Heartbeat {
                from: c.clone(),
                data: beat(1, now),
            },
        );
    }
    let claim = a.held(now)[0].claim.clone();
    // A's beats, numbered past the stand-in beats `ticks_with` sent.
    let lift = |data: &[u8]| {
        let mut hb: Option<Heartbeat> = codec::decode(data, MAX_GOSSIP_BYTES).unwrap();
        if let Some(hb) = hb.as_mut() {
            hb.seq += 1 << 40;
        }
        codec::encode(&hb)
    };
    let ttl = a.cfg.lease.ttl_ms;
    let until = now + 2 * ttl;
    let mut published = 0;
    while now < until {
        now += 1_000;
        a.heartbeat(now, now);
        while let Some(e) = a.poll_effect() {
            if let Effect::Publish {
                topic: Topic::Heartbeat,
                data,
            } = e
            {
                let hb: Heartbeat = codec::decode(&data, MAX_GOSSIP_BYTES).unwrap();
                assert_eq!(hb.claims.len(), 1, "A's beat names its claim");
                published += 1;
                let data = lift(&codec::encode(&Some(hb)));
                let Some(hb) = codec::decode::<Option<Heartbeat>>(&data, MAX_GOSSIP_BYTES).unwrap()
                else {
                    unreachable!()
                };
                let data = codec::encode(&hb);
                b.handle(
                    now,
                    Input::Heartbeat {
                        from: "A".into(),
                        data,
                    },
                );
            }
        }
        b.heartbeat(now, now);
        while let Some(e) = b.poll_effect() {
            let Effect::Probe { to, data } = e else {
                continue;
            };
            if to != "A" {
                let hb: Heartbeat = codec::decode(&beat(1, now), MAX_GOSSIP_BYTES).unwrap();
                let data = codec::encode(&Some(hb));
                b.handle(now + 1, Input::ProbeAnswer { from: to, data });
                continue;
            }
            {
                a.handle(
                    now,
                    Input::Probe {
                        from: "B".into(),
                        data,
                        reply: 1,
                    },
                );
                while let Some(r) = a.poll_effect() {
                    if let Effect::ProbeAnswer { data, .. } = r {
                        let data = lift(&data);
                        b.handle(
                            now + 2,
                            Input::ProbeAnswer {
                                from: "A".into(),
                                data,
                            },
                        );
                    }
                }
            }
        }
        b.tick(now + 250, now + 250);
    }
    assert!(
        published <= 1,
        "A's beat is published on change only: {published}"
    );
    let renewed = |b: &mut Core, now| {
        let row = b.claim_rows(now).into_iter().find(|r| r.claim == claim);
        row.expect("B sees A's claim").renewed_ago_ms
    };
    assert!(
        renewed(&mut b, now + 250) <= 1_000,
        "A answering did not renew its claim at B: renewed {} ms ago",
        renewed(&mut b, now + 250)
    );
    // A goes silent: B's probes go unanswered.
    let silent_from = now;
    while b.peer_state("A", now) != Some(PeerState::Dead) {
        now += 1_000;
        assert!(now < silent_from + 10_000, "A never declared dead at B");
        b.heartbeat(now, now);
        while b.poll_effect().is_some() {}
        b.tick(now + 250, now + 250);
    }
    assert!(
        renewed(&mut b, now) >= 2_000,
        "a silent holder's claim was renewed {} ms ago",
        renewed(&mut b, now)
    );
}

/// Where effects went: the peers sent a sync frame and the peers refused.
fn sent_and_refused(c: &mut Core) -> (Vec<String>, Vec<String>) {
    let (mut sent, mut refused) = (Vec::new(), Vec::new());
    while let Some(e) = c.poll_effect() {
        match e {
            Effect::SendSync { to, .. } => sent.push(to),
            Effect::Refuse { peer, refuse: true } => refused.push(peer),
            _ => {}
        }
    }
    (sent, refused)
}

#[test]
fn a_member_refuses_a_peer_off_the_roster_as_it_connects_before_any_of_the_document_leaves() {
    // The tick refused a non-member, but only after the connection's first sync had handed
    // it the whole document: any mesh-key holder read a closed mesh with a fresh key.
    let mut a = steered("A");
    let mut now = 0;
    ticks(&mut a, &mut now, 2);
    a.handle(now, Input::Connected("C".into()));
    let (sent, refused) = sent_and_refused(&mut a);
    assert_eq!(refused, vec!["C".to_string()]);
    assert!(sent.is_empty(), "sent to a non-member: {sent:?}");
    assert!(a.refused().contains("C"));
    // Its sync frame gets an empty answer (the shell closes the connection).
    let mut c = core("C", 9);
    c.handle(now, Input::Connected("A".into()));
    let frame = std::iter::from_fn(|| c.poll_effect())
        .find_map(|e| match e {
            Effect::SendSync { data, .. } => Some(data),
            _ => None,
        })
        .expect("C's first sync frame");
    a.handle(
        now,
        Input::SyncRequest {
            from: "C".into(),
            data: frame,
            reply: 0,
        },
    );
    let answers: Vec<usize> = std::iter::from_fn(|| a.poll_effect())
        .filter_map(|e| match e {
            Effect::Respond { data, .. } => Some(data.len()),
            _ => None,
        })
        .collect();
    assert_eq!(answers, vec![0], "answered a non-member");
    // A member connects as before: a full sync goes to it.
    a.handle(now, Input::Connected("B".into()));
    let (sent, refused) = sent_and_refused(&mut a);
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(sent, vec!["B".to_string()]);
}

#[test]
fn a_node_not_on_its_own_roster_yet_refuses_no_one_as_it_connects() {
    // A new node's document holds no roster yet: it cannot tell members from strangers,
    // and refusing its bootstrap peer would keep it out for good.
    let mut cfg = worker_alone("N", 5).cfg;
    cfg.work = false;
    let doc = Doc::new([5; 16])
        .with_test_names()
        .with_operators(["OP".to_string()].into());
    let mut n = Core::new("N".into(), cfg, doc, 1);
    n.handle(0, Input::Connected("A".into()));
    let (sent, refused) = sent_and_refused(&mut n);
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(sent, vec!["A".to_string()]);
}
