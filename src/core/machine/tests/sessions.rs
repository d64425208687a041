//! Sync sessions between two cores: convergence, and the one-round-trip end of a
//! session between equal documents.

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
    let (mut a, mut b) = (core("A", 1), core("B", 2));
    let story = |t: &str| NewStory {
        title: t.into(),
        ..Default::default()
    };
    a.add_story(&story("a"), 1).unwrap();
    a.handle(0, Input::Connected("B".into()));
    pump(&mut a, &mut b);
    // B beats, so A pushes its next write to it.
    a.handle(
        0,
        Input::Heartbeat {
            from: "B".into(),
            data: beat(1, 0),
        },
    );
    while a.poll_effect().is_some() {}
    // Each first frame, answered: was the answer `same`, and what did it carry?
    let answer = |a: &mut Core, b: &mut Core| -> Vec<(bool, usize, usize)> {
        let mut seen = Vec::new();
        while let Some(e) = a.poll_effect() {
            let Effect::SendSync { data, .. } = e else {
                continue;
            };
            let first: SyncFrame = codec::decode(&data, 1 << 20).unwrap();
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
                    let f: SyncFrame = codec::decode(&data, 1 << 20).unwrap();
                    seen.push((f.same, first.push.len(), f.msg.len()));
                    a.handle(
                        0,
                        Input::SyncResponse {
                            from: "B".into(),
                            data,
                        },
                    );
                }
            }
        }
        seen
    };
    // Anti-entropy between equal documents: `same`, no sync message back.
    let mark = a.session_mark();
    a.start_sync("B");
    assert_eq!(answer(&mut a, &mut b), vec![(true, 0, 0)]);
    assert!(a.synced_since("B", mark), "the session completed");
    // A write pushed to B leaves B with A's heads: `same` again, and B has the story.
    let mark = a.session_mark();
    let id = a.add_story(&story("b"), 1).unwrap().id;
    assert_eq!(answer(&mut a, &mut b), vec![(true, 1, 0)]);
    assert!(a.synced_since("B", mark));
    assert_eq!(a.digest(), b.digest());
    assert!(b.doc().view().resolve(&id).is_ok(), "{id} reached B");
    // B wrote something A lacks: the push does not make them equal, and the session
    // syncs as before (B's answer a sync message, A's next frame after it).
    b.add_story(&story("c"), 1).unwrap();
    a.add_story(&story("d"), 1).unwrap();
    let got = answer(&mut a, &mut b);
    assert!(matches!(got[0], (false, 1, n) if n > 0), "{got:?}");
    pump(&mut a, &mut b);
    assert_eq!(a.digest(), b.digest());
}
