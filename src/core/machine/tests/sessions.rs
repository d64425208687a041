//! Sync sessions between two cores: convergence, the one-round-trip end of a session
//! between equal documents, of a push the peer holds (`covered`), and of one whose
//! dependencies it lacks (`need`).

use super::*;

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
fn a_session_between_equal_documents_ends_in_one_round_trip_without_automerge_sync() {
    let (mut a, mut b) = pushing_pair();
    // Anti-entropy between equal documents: `same`, no sync message back.
    let mark = a.session_mark();
    a.start_sync("B");
    assert_eq!(answers(&mut a, &mut b), vec![(true, false, 0, 0)]);
    assert!(a.synced_since("B", mark), "the session completed");
    // A write pushed to B leaves B with A's heads: `same` again, and B has the story.
    let mark = a.session_mark();
    let id = a.add_story(&titled("b"), 1).unwrap().id;
    assert_eq!(answers(&mut a, &mut b), vec![(true, false, 1, 0)]);
    assert!(a.synced_since("B", mark));
    assert_eq!(a.digest(), b.digest());
    assert!(b.doc().view().resolve(&id).is_ok(), "{id} reached B");
}

/// Two cores that synced once, A counting B alive (so A's writes push to it).
fn pushing_pair() -> (Core, Core) {
    let (mut a, mut b) = (core("A", 1), core("B", 2));
    a.add_story(&titled("a"), 1).unwrap();
    a.handle(0, Input::Connected("B".into()));
    pump(&mut a, &mut b);
    a.handle(
        0,
        Input::Heartbeat {
            from: "B".into(),
            data: beat(1, 0),
        },
    );
    while a.poll_effect().is_some() {}
    (a, b)
}

/// A's frames, each answered by B: (the answer `same`, `covered`, changes pushed, bytes
/// of automerge sync message in the answer).
fn answers(a: &mut Core, b: &mut Core) -> Vec<(bool, bool, usize, usize)> {
    rounds(a, b)
        .into_iter()
        .map(|(sent, r)| (r.same, r.covered.is_some(), sent.push.len(), r.msg.len()))
        .collect()
}

/// A pushing pair where B holds a change A lacks (B does not count A alive: nothing
/// pushes it to A), then A's write pushed to B. B answers `covered` with its heads and
/// carries nothing of its own: the change A lacks is its author's to push. Returns the
/// pair and the session mark before A's write.
fn covered_by_b() -> (Core, Core, u64) {
    let (mut a, mut b) = pushing_pair();
    b.add_story(&titled("c"), 1).unwrap();
    while b.poll_effect().is_some() {}
    let mark = a.session_mark();
    a.add_story(&titled("d"), 1).unwrap();
    assert_eq!(answers(&mut a, &mut b), vec![(false, true, 1, 0)]);
    assert_eq!(titles(&b).len(), 3, "the push reached B");
    (a, b, mark)
}

#[test]
fn a_push_the_peer_holds_ends_without_automerge_sync_and_completes_once_the_peers_heads_arrive() {
    let (mut a, mut b, mark) = covered_by_b();
    // A does not hold everything B held when it answered: not settle evidence yet.
    assert!(!a.synced_since("B", mark));
    // B's change arrives (any way: here B's own session with A), and A's session
    // completes with no further message of its own.
    let started = a.counters().sync_sessions_started;
    b.start_sync("A");
    pump(&mut b, &mut a);
    assert!(
        a.synced_since("B", mark),
        "completed once B's heads arrived"
    );
    assert_eq!(a.counters().sync_sessions_started, started);
    assert_eq!(a.digest(), b.digest());
}

#[test]
fn a_session_that_pushes_nothing_is_answered_covered_too_and_its_fallback_syncs_in_full() {
    let (mut a, mut b) = pushing_pair();
    // B writes; its push to A is lost. A's anti-entropy session with B pushes nothing:
    // B holds every change of A's, so it answers `covered` without B's change (its
    // author's push, or the fallback, brings that).
    b.add_story(&titled("c"), 1).unwrap();
    while b.poll_effect().is_some() {}
    let mark = a.session_mark();
    a.start_sync("B");
    assert_eq!(answers(&mut a, &mut b), vec![(false, true, 0, 0)]);
    assert!(!a.synced_since("B", mark), "A lacks B's heads");
    // Half a settle timeout on, the fallback syncs in full: B's change comes with it.
    a.tick(LeaseConfig::default().settle_timeout_ms / 2, 0);
    let full = answers(&mut a, &mut b);
    assert!(
        !full.is_empty() && full.iter().all(|f| !f.1) && full[0].3 > 0,
        "automerge sync, no `covered`: {full:?}"
    );
    pump(&mut a, &mut b);
    assert_eq!(a.digest(), b.digest());
    assert!(a.synced_since("B", mark));
}

#[test]
fn a_covered_answer_whose_heads_never_arrive_falls_back_to_a_full_sync() {
    let (mut a, mut b, mark) = covered_by_b();
    // Half a settle timeout on, still without B's change: A syncs in full with B.
    let late = LeaseConfig::default().settle_timeout_ms / 2;
    let syncs = |a: &mut Core| {
        std::iter::from_fn(|| a.poll_effect())
            .filter(|e| matches!(e, Effect::SendSync { .. }))
            .count()
    };
    a.tick(late - 1, 0);
    assert_eq!(syncs(&mut a), 0, "too early");
    a.tick(late, 0);
    pump(&mut a, &mut b);
    assert!(a.synced_since("B", mark));
    assert_eq!(a.digest(), b.digest());
    assert_eq!(a.counters().sync_covered_late, 1);
}

/// A's frames to B, each answered by B: (what A sent, B's answer).
fn rounds(a: &mut Core, b: &mut Core) -> Vec<(SyncFrame, SyncFrame)> {
    let mut seen = Vec::new();
    while let Some(e) = a.poll_effect() {
        let Effect::SendSync { data, .. } = e else {
            continue;
        };
        let sent: SyncFrame = codec::decode(&data, 1 << 20).unwrap();
        b.handle(
            0,
            Input::SyncRequest {
                from: "A".into(),
                data,
                reply: 0,
            },
        );
        while let Some(r) = b.poll_effect() {
            if let Effect::Respond { data, .. } = r {
                let answer: SyncFrame = codec::decode(&data, 1 << 20).unwrap();
                a.handle(
                    0,
                    Input::SyncResponse {
                        from: "B".into(),
                        data,
                    },
                );
                seen.push((sent, answer));
                break;
            }
        }
    }
    seen
}

/// A pushing pair where A holds a change of C's that B lacks, and the hash of C's change.
fn with_a_change_b_lacks() -> (Core, Core, ChangeHash) {
    let (mut a, b) = pushing_pair();
    let mut c = core("C", 3);
    c.add_story(&titled("c"), 1).unwrap();
    while c.poll_effect().is_some() {}
    let hash = c.doc().last_local_change().unwrap();
    a.handle(0, Input::Connected("C".into()));
    pump(&mut a, &mut c);
    assert_eq!(titles(&a).len(), 2, "C's story reached A");
    (a, b, hash)
}

#[test]
fn a_push_that_depends_on_a_change_the_peer_lacks_fetches_that_change_alone() {
    let (mut a, mut b, c_change) = with_a_change_b_lacks();
    // A's write depends on C's change: B cannot apply the push and asks for what it
    // lacks on the way back (`need`), not for a full sync. A sends C's change alone,
    // and B, now holding A's, answers `covered`.
    let mark = a.session_mark();
    let synced_bytes = |a: &Core, b: &Core| {
        a.counters().sync_change_bytes_out + b.counters().sync_change_bytes_out
    };
    let before = synced_bytes(&a, &b);
    a.add_story(&titled("d"), 1).unwrap();
    let seen = rounds(&mut a, &mut b);
    let shape: Vec<_> = seen
        .iter()
        .map(|(s, r)| {
            (
                s.start,
                s.push.len(),
                r.need.len(),
                r.covered.is_some(),
                r.msg.len(),
            )
        })
        .collect();
    assert_eq!(shape, vec![(true, 1, 1, false, 0), (false, 1, 0, true, 0)]);
    assert_eq!(seen[0].1.need, vec![c_change.0], "B named C's change");
    assert!(
        a.synced_since("B", mark),
        "B held A's write and A holds B's heads"
    );
    assert_eq!(a.digest(), b.digest());
    assert_eq!(titles(&b).len(), 3);
    assert_eq!(
        (b.counters().need_answers, b.counters().need_queued),
        (1, 1)
    );
    assert_eq!(a.counters().need_rounds, 1);
    assert_eq!(
        synced_bytes(&a, &b),
        before,
        "no automerge sync carried changes"
    );
}

#[test]
fn a_need_answer_naming_a_change_the_sender_does_not_hold_falls_back_to_a_full_sync() {
    let (mut a, mut b, _) = with_a_change_b_lacks();
    a.add_story(&titled("d"), 1).unwrap();
    assert!(
        std::iter::from_fn(|| a.poll_effect()).any(|e| matches!(e, Effect::SendSync { .. })),
        "A pushes to B"
    );
    // B (lying, or confused) asks for a change nobody wrote.
    let answer = SyncFrame {
        need: vec![[7; 32]],
        ..SyncFrame::msg(false, Vec::new())
    };
    a.handle(
        0,
        Input::SyncResponse {
            from: "B".into(),
            data: codec::encode(&answer),
        },
    );
    assert_eq!(a.counters().need_fallbacks, 1);
    let seen = rounds(&mut a, &mut b);
    assert!(
        seen[0].0.start && seen[0].0.mine.is_none() && !seen[0].1.msg.is_empty(),
        "a full sync: automerge's message, no latest change named"
    );
    pump(&mut a, &mut b);
    assert_eq!(a.digest(), b.digest());
}

#[test]
fn a_frame_naming_our_latest_change_carries_no_automerge_message_and_a_full_sync_still_ends() {
    let (mut a, mut b) = pushing_pair();
    // B holds more heads than a `covered` answer may name: 65 writers it synced with,
    // none of whose changes A holds.
    for i in 0..65u8 {
        let mut x = core(&format!("X{i}"), 10 + i);
        x.add_story(&titled(&format!("x{i}")), 1).unwrap();
        while x.poll_effect().is_some() {}
        x.handle(0, Input::Connected("B".into()));
        pump(&mut x, &mut b);
    }
    assert!(b.doc_mut().heads().len() > 64);
    let mark = a.session_mark();
    a.add_story(&titled("d"), 1).unwrap();
    let seen = rounds(&mut a, &mut b);
    let (first, answer) = &seen[0];
    assert!(
        first.start && first.mine.is_some() && first.msg.is_empty() && first.push.len() == 1,
        "the push names A's latest change and carries no Bloom filter"
    );
    assert!(
        answer.covered.is_none() && !answer.msg.is_empty(),
        "B syncs in full: its answer opens automerge's exchange"
    );
    assert_eq!(b.counters().full_many_heads, 1);
    pump(&mut a, &mut b);
    assert_eq!(a.digest(), b.digest());
    assert_eq!(titles(&a).len(), 67, "B's writers' stories reached A");
    assert!(a.synced_since("B", mark), "the session completed");
}

#[test]
fn a_sync_asked_for_while_one_was_out_still_goes_when_that_one_fails() {
    // A peer reconnected while a session with it was out (opened while it was down):
    // the new connection's full sync waited behind it, and went down with it when it
    // failed, so the node never synced with the peer until anti-entropy; a claim waiting
    // for that peer to settle waited too (clean seed 85328: a takeover late).
    let mut a = core("A", 1);
    a.handle(0, Input::Connected("B".into()));
    let sent = |a: &mut Core| {
        std::iter::from_fn(|| a.poll_effect())
            .filter(|e| matches!(e, Effect::SendSync { to, .. } if to == "B"))
            .count()
    };
    assert_eq!(sent(&mut a), 1, "the connection's first sync");
    // Asked again while it is out: it waits for the one out.
    a.full_sync("B");
    assert_eq!(sent(&mut a), 0);
    a.handle(10, Input::SyncFailed { from: "B".into() });
    assert_eq!(
        sent(&mut a),
        1,
        "the sync asked for went down with the failed one"
    );
    // Not to a peer that is gone: its next connection syncs in full anyway.
    a.full_sync("B");
    a.handle(20, Input::Disconnected("B".into()));
    a.handle(30, Input::SyncFailed { from: "B".into() });
    assert_eq!(sent(&mut a), 0);
}
