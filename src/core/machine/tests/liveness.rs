//! SWIM-style liveness in the running core (docs/DESIGN.md §4): suspicions named in
//! beats, refuted by a newer one; probes answered with the current beat; discovery when
//! a peer counts more members.

use super::*;
use crate::core::model::Suspicion;

fn hb(seq: u64, members: u32, suspects: Vec<Suspicion>) -> Vec<u8> {
    codec::encode(&Heartbeat {
        incarnation: 1,
        seq,
        roles: vec![],
        free_capacity: 0,
        heads_digest: [0; 32],
        sent_at_ms: 0,
        claims: vec![],
        suspects,
        members,
        epoch: None,
    })
}

/// The beats `c` published (decoded), other effects dropped.
fn published(c: &mut Core) -> Vec<Heartbeat> {
    let mut out = Vec::new();
    while let Some(e) = c.poll_effect() {
        if let Effect::Publish {
            topic: Topic::Heartbeat,
            data,
        } = e
        {
            out.push(codec::decode(&data, MAX_GOSSIP_BYTES).unwrap());
        }
    }
    out
}

#[test]
fn a_suspicion_counts_everywhere_until_the_suspect_refutes_it_with_a_newer_beat() {
    let mut a = core("A", 1);
    let mut c = core("C", 3);
    a.handle(
        0,
        Input::Heartbeat {
            from: "B".into(),
            data: hb(1, 3, vec![]),
        },
    );
    c.heartbeat(0, 0);
    let first = published(&mut c);
    assert_eq!(first.len(), 1, "C's first beat");
    let data = codec::encode(&first[0]);
    a.handle(
        0,
        Input::Heartbeat {
            from: "C".into(),
            data,
        },
    );
    assert_eq!(a.peer_state("C", 0), Some(PeerState::Alive));
    // B has had no answer from C for 4 s, about C's newest beat.
    let suspicion = Suspicion {
        peer: "C".into(),
        incarnation: first[0].incarnation,
        seq: first[0].seq,
        silent_ms: 4_000,
    };
    let b_says = hb(2, 3, vec![suspicion.clone()]);
    a.handle(
        100,
        Input::Heartbeat {
            from: "B".into(),
            data: b_says.clone(),
        },
    );
    assert_eq!(a.peer_state("C", 100), Some(PeerState::Suspect));
    // A probes the suspect itself.
    a.tick(100, 100);
    let probed: Vec<String> = std::iter::from_fn(|| a.poll_effect())
        .filter_map(|e| match e {
            Effect::Probe { to, .. } => Some(to),
            _ => None,
        })
        .collect();
    assert!(probed.contains(&"C".to_string()), "{probed:?}");
    // C hears B's beat naming it: it refutes with a newer beat at once.
    c.handle(
        100,
        Input::Heartbeat {
            from: "B".into(),
            data: b_says,
        },
    );
    let refuted = published(&mut c);
    assert_eq!(refuted.len(), 1, "one refutation");
    assert!(refuted[0].seq > first[0].seq);
    a.handle(
        150,
        Input::Heartbeat {
            from: "C".into(),
            data: codec::encode(&refuted[0]),
        },
    );
    assert_eq!(a.peer_state("C", 150), Some(PeerState::Alive));
    // The same suspicion arriving late (another suspecter) no longer counts.
    let late = hb(1, 3, vec![suspicion]);
    a.handle(
        200,
        Input::Heartbeat {
            from: "D".into(),
            data: late,
        },
    );
    assert_eq!(a.peer_state("C", 10_000), Some(PeerState::Alive));
}

/// Runs `n`'s ticks and periods from `from` to `to` (ms): B answers its probes with its
/// beat 1, C answers none. The beats `n` published, and whether a probe of its to B
/// named C suspect.
fn silent_c(n: &mut Core, from: u64, to: u64) -> (Vec<Heartbeat>, bool) {
    let (mut beats, mut named) = (Vec::new(), false);
    for t in (from..to).step_by(100) {
        if t % 1_000 == 0 {
            n.heartbeat(t, t);
        }
        n.tick(t, t);
        let effects: Vec<Effect> = std::iter::from_fn(|| n.poll_effect()).collect();
        for e in effects {
            match e {
                Effect::Publish {
                    topic: Topic::Heartbeat,
                    data,
                } => beats.push(codec::decode(&data, MAX_GOSSIP_BYTES).unwrap()),
                Effect::Probe { to, data } if to == "B" => {
                    let said: Option<Heartbeat> = codec::decode(&data, MAX_GOSSIP_BYTES).unwrap();
                    named |= said.is_some_and(|b| b.suspects.iter().any(|s| s.peer == "C"));
                    let beat = codec::decode::<Heartbeat>(&hb(1, 4, vec![]), MAX_GOSSIP_BYTES);
                    n.handle(
                        t,
                        Input::ProbeAnswer {
                            from: "B".into(),
                            data: codec::encode(&Some(beat.unwrap())),
                        },
                    );
                }
                _ => {}
            }
        }
    }
    (beats, named)
}

#[test]
fn a_suspicion_an_alive_peer_named_already_is_no_news_and_is_not_published_again() {
    // A and D know B and C; C falls silent. B names C suspect to A only.
    let (mut a, mut d) = (core("A", 1), core("D", 4));
    for n in [&mut a, &mut d] {
        for p in ["B", "C"] {
            n.handle(
                0,
                Input::Heartbeat {
                    from: p.into(),
                    data: hb(1, 4, vec![]),
                },
            );
        }
        n.heartbeat(0, 0);
        published(n);
    }
    let suspicion = Suspicion {
        peer: "C".into(),
        incarnation: 1,
        seq: 1,
        silent_ms: 1_500,
    };
    a.handle(
        50,
        Input::Heartbeat {
            from: "B".into(),
            data: hb(2, 4, vec![suspicion]),
        },
    );
    let (from_a, a_named) = silent_c(&mut a, 100, 9_000);
    let (from_d, _) = silent_c(&mut d, 100, 9_000);
    // D heard of no suspicion: its own is news, published once; C's death later is not.
    let names_c = |b: &Heartbeat| b.suspects.iter().any(|s| s.peer == "C");
    assert_eq!(from_d.len(), 1, "{from_d:?}");
    assert!(names_c(&from_d[0]), "{from_d:?}");
    assert_eq!(d.peer_state("C", 9_000), Some(PeerState::Dead));
    // A suspects C on its own misses too, but B's beat said so already: A publishes
    // nothing, and its suspicion rides along with what it sends anyway (its probes).
    assert!(from_a.is_empty(), "{from_a:?}");
    assert_eq!(a.peer_state("C", 9_000), Some(PeerState::Dead));
    assert!(a_named);
}

#[test]
fn a_probe_is_answered_with_this_nodes_beat_and_a_passive_one_with_none() {
    let mut a = core("A", 1);
    a.handle(
        0,
        Input::Probe {
            from: "B".into(),
            data: codec::encode(&Some(
                codec::decode::<Heartbeat>(&hb(1, 2, vec![]), MAX_GOSSIP_BYTES).unwrap(),
            )),
            reply: 7,
        },
    );
    assert_eq!(
        a.peer_state("B", 0),
        Some(PeerState::Alive),
        "a probe is contact"
    );
    let answer = std::iter::from_fn(|| a.poll_effect()).find_map(|e| match e {
        Effect::ProbeAnswer { reply: 7, data } => Some(data),
        _ => None,
    });
    let beat: Option<Heartbeat> =
        codec::decode(&answer.expect("answered"), MAX_GOSSIP_BYTES).unwrap();
    let beat = beat.expect("A is a member: its beat");
    assert_eq!(beat.members, 2, "A and B");
    // A passive observer's probe carries no beat: answered, never a member.
    a.handle(
        10,
        Input::Probe {
            from: "P".into(),
            data: codec::encode(&None::<Heartbeat>),
            reply: 8,
        },
    );
    assert_eq!(a.peer_state("P", 10), None);
    assert!(std::iter::from_fn(|| a.poll_effect())
        .any(|e| matches!(e, Effect::ProbeAnswer { reply: 8, .. })));
}

#[test]
fn a_peer_counting_more_members_for_ten_seconds_makes_this_node_look_for_them() {
    let mut a = core("A", 1);
    let discovers = |a: &mut Core| {
        std::iter::from_fn(|| a.poll_effect())
            .filter(|e| matches!(e, Effect::Discover))
            .count()
    };
    let answer = |t: u64, members: u32| Input::ProbeAnswer {
        from: "B".into(),
        data: codec::encode(&Some(
            codec::decode::<Heartbeat>(&hb(t, members, vec![]), MAX_GOSSIP_BYTES).unwrap(),
        )),
    };
    // B knows three members; A knows B and itself. For a few seconds that is a mesh
    // forming, or a death seen at different times: nothing.
    for t in [0, 3_000, 6_000, 9_000] {
        a.handle(t, answer(t + 1, 3));
        assert_eq!(discovers(&mut a), 0, "at {t}");
    }
    a.handle(10_000, answer(10_001, 3));
    assert_eq!(discovers(&mut a), 1, "still more after 10 s: look");
    // Not again within 30 s, whatever B says.
    for t in [11_000, 21_000, 30_000] {
        a.handle(t, answer(t + 1, 3));
    }
    assert_eq!(discovers(&mut a), 0);
    a.handle(40_000, answer(40_001, 3));
    assert_eq!(discovers(&mut a), 1, "looked again after 30 s");
    // B counting no more than A resets the wait.
    a.handle(50_000, answer(50_001, 3));
    a.handle(55_000, answer(55_001, 2));
    a.handle(61_000, answer(61_001, 3));
    a.handle(70_000, answer(70_001, 3));
    assert_eq!(discovers(&mut a), 0);
}

#[test]
fn a_lost_connection_is_probed_at_once_but_not_one_the_peer_closed_as_it_opened() {
    // A peer that refuses this node (a closed mesh it is not a member of, a revoke)
    // closes each connection as it opens. Probing that loss at once dialled it again at
    // once: ~900 connections a second from `status --bootstrap` against the testnet.
    let mut a = core("A", 1);
    let probes = |c: &mut Core| {
        std::iter::from_fn(|| c.poll_effect())
            .filter(|e| matches!(e, Effect::Probe { to, .. } if to == "B"))
            .count()
    };
    a.handle(1_000, Input::Connected("B".into()));
    assert_eq!(probes(&mut a), 1, "a new connection is probed");
    a.handle(1_010, Input::Disconnected("B".into()));
    assert_eq!(probes(&mut a), 0, "refused: not dialled again at once");
    a.handle(2_000, Input::Connected("B".into()));
    probes(&mut a);
    a.handle(9_000, Input::Disconnected("B".into()));
    assert_eq!(
        probes(&mut a),
        1,
        "a connection that lasted is probed when lost"
    );
}
