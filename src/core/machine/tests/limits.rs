//! Caps: the write rate, the document's size cap and a peer's ingress rate.

use super::*;

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
