//! Fuzz-style tests of every decoder that takes bytes from the network or the disk
//! (issue 15, acceptance 3): arbitrary bytes and mutated valid encodings never panic, and
//! a decoder with a cap refuses an over-cap input — including a length prefix of
//! `u64::MAX` — without allocating the length it announces.
//!
//! Allocation is measured, not assumed: this test binary's global allocator records the
//! largest single allocation each thread makes, and the tests bound it around a decode.
//! Proptest runs a bounded number of cases (`CASES`) so `cargo test` stays fast; a
//! failure prints the shrunk input to reproduce.
//!
//! Covered here (through the public API): the wire codec (sync frames, heartbeats,
//! events), the node state machine fed raw sync frames and gossip, the sync protocol's
//! frame reader (`net::read_frame`), and the store's load path (`Store::load_doc` +
//! `Doc::load`). Decoders with private entry points have their own proptests beside
//! them: the fence record blob (`src/fence.rs`), the handoff reader
//! (`src/exec/handoff.rs`), config parsing (`src/config.rs`) and `control.json`
//! (`src/api.rs`).

use mesh_agent::core::codec::{self, CodecError, WIRE_VERSION};
use mesh_agent::core::lease::LeaseConfig;
use mesh_agent::core::membership::MembershipConfig;
use mesh_agent::core::model::{Event, EventKind, Heartbeat, NewStory, Phase, Suspicion};
use mesh_agent::core::state::Doc;
use mesh_agent::core::{Core, CoreConfig, Effect, Input, SyncFrame};
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;

const CASES: u32 = 256;

/// The system allocator, noting the largest single allocation of each thread.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size);
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; `note` only touches a
// const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Runs `f` and returns its result with the largest single allocation it made.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    let r = f();
    (r, LARGEST.with(Cell::get))
}

/// The most a decode may allocate at once for input it cannot trust: serde preallocates
/// a sequence up to 1 MiB whatever length it announces (then grows as elements arrive),
/// and the codec lets strings claim less than 32 times the message's
/// length. Well below any length a hostile prefix announces in these tests.
const MAX_PREALLOC: usize = 1 << 20;

/// The sync cap of a node with the default config (`max_sync_message_bytes`, 32 MiB).
const SYNC_CAP: usize = 32 * 1024 * 1024 + 64;
const GOSSIP_CAP: usize = 64 * 1024;

/// bincode's varint for a u64 that needs eight bytes.
fn varint_u64(v: u64) -> Vec<u8> {
    let mut out = vec![0xfd];
    out.extend_from_slice(&v.to_le_bytes());
    out
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        incarnation: 7,
        seq: 3,
        roles: vec!["implement".into(), "review".into()],
        free_capacity: 2,
        heads_digest: [9; 32],
        sent_at_ms: 1_700_000_000_000,
        claims: vec![7001],
        suspects: vec![Suspicion {
            peer: "12D3KooWother".into(),
            incarnation: 5,
            seq: 2,
            silent_ms: 3_000,
        }],
        members: 12,
        epoch: Some([8; 32]),
    }
}

fn event() -> Event {
    Event {
        node: "12D3KooWpeer".into(),
        seq: 7001,
        at_ms: 1_700_000_000_000,
        kind: EventKind::PhaseFinished,
        story: "S-0001".into(),
        phase: Some(Phase::Implement),
        round: 1,
        detail: "done: tests pass".into(),
    }
}

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
            check_view: false,
            stall_after_ms: 0,
            origin_breaker: Default::default(),
            merge_gate: None,
            epoch_after: 0,
            limits: Default::default(),
            triggers: Default::default(),
            budget: Default::default(),
        },
        Doc::new([actor; 16]).with_test_names(),
        1,
    )
}

fn story(title: &str) -> NewStory {
    NewStory {
        title: title.into(),
        body: "body".into(),
        priority: None,
        depends_on: vec![],
        files: vec!["src/lib.rs".into()],
        labels: vec![],
        imported: None,
    }
}

/// A real session's first frame (A, with two stories, to B) and B's answer.
fn session_frames() -> (Vec<u8>, Vec<u8>) {
    let mut a = core("A", 1);
    a.add_story(&story("one"), 1).unwrap();
    a.add_story(&story("two"), 2).unwrap();
    while a.poll_effect().is_some() {}
    a.handle(0, Input::Connected("B".into()));
    let mut request = None;
    while let Some(e) = a.poll_effect() {
        if let Effect::SendSync { data, .. } = e {
            request.get_or_insert(data);
        }
    }
    let request = request.expect("a new connection opens a sync session");
    let mut b = core("B", 2);
    b.handle(
        0,
        Input::SyncRequest {
            from: "A".into(),
            data: request.clone(),
            reply: 1,
        },
    );
    let mut response = None;
    while let Some(e) = b.poll_effect() {
        if let Effect::Respond { data, .. } = e {
            response.get_or_insert(data);
        }
    }
    (request, response.expect("B answers"))
}

/// Byte-level mutations of a valid encoding: overwrite some bytes, then cut or extend.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    (
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        prop::option::of(0..=len),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(move |(writes, cut, tail)| {
            let mut v = valid.clone();
            for (at, byte) in writes {
                if !v.is_empty() {
                    let i = at.index(v.len());
                    v[i] = byte;
                }
            }
            if let Some(cut) = cut {
                v.truncate(cut);
            }
            v.extend(tail);
            v
        })
}

/// Bytes that start with the wire version (so decoding gets past it) or not at all.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        prop::collection::vec(any::<u8>(), 0..512).prop_map(|mut v| {
            v.insert(0, WIRE_VERSION);
            v
        }),
    ]
}

#[test]
fn length_prefixes_beyond_the_message_are_refused_before_allocating() {
    let huge = [
        u64::MAX,
        1 << 40,
        60 * 1024 * 1024,
        16 * 1024 * 1024,
        100_000,
    ];
    for announced in huge {
        // SyncFrame: `start`, then `msg`'s length.
        let mut frame = vec![WIRE_VERSION, 1];
        frame.extend(varint_u64(announced));
        frame.extend([0xab; 32]);
        let (res, largest) = largest_allocation(|| codec::decode::<SyncFrame>(&frame, SYNC_CAP));
        assert!(matches!(res, Err(CodecError::Malformed(_))), "{res:?}");
        assert!(
            largest < 64 * 1024,
            "sync frame announcing {announced}: {largest} B"
        );
        // Event: `node`'s length first.
        let mut ev = vec![WIRE_VERSION];
        ev.extend(varint_u64(announced));
        ev.extend(b"12D3KooW");
        let (res, largest) = largest_allocation(|| codec::decode::<Event>(&ev, GOSSIP_CAP));
        assert!(res.is_err());
        assert!(
            largest < 64 * 1024,
            "event announcing {announced}: {largest} B"
        );
        // Heartbeat: incarnation, seq, then one role of the announced length.
        let mut beat = vec![WIRE_VERSION, 1, 1, 1];
        beat.extend(varint_u64(announced));
        beat.extend(b"implement");
        let (res, largest) = largest_allocation(|| codec::decode::<Heartbeat>(&beat, GOSSIP_CAP));
        assert!(res.is_err());
        assert!(
            largest < 64 * 1024,
            "heartbeat announcing {announced}: {largest} B"
        );
    }
    // Over the cap: refused on length alone.
    let big = vec![WIRE_VERSION; GOSSIP_CAP + 1];
    assert!(matches!(
        codec::decode::<Heartbeat>(&big, GOSSIP_CAP),
        Err(CodecError::TooLarge { .. })
    ));
}

#[test]
fn honest_messages_still_decode_under_the_codec_limit() {
    // A frame whose message is nearly all one byte string: the worst case for the limit.
    for len in [0, 1, 100, 255, 256, 1000, 70_000, 3 << 20] {
        let frame = SyncFrame {
            start: true,
            msg: vec![7; len],
            push: vec![serde_bytes::ByteBuf::from(vec![1; len / 3])],
            events_have: None,
            events: vec![event(); 3],
            events_more: false,
            fresh: true,
            snapshot: Some(serde_bytes::ByteBuf::from(vec![2; len / 2])),
            heads_digest: Some([3; 32]),
            same: true,
            mine: Some([4; 32]),
            covered: Some(vec![[5; 32]; 64]),
            need: vec![[6; 32]; 64],
            epoch: Some([7; 32]),
            adopt: true,
        };
        let bytes = codec::encode(&frame);
        let back: SyncFrame = codec::decode(&bytes, SYNC_CAP).unwrap();
        assert_eq!(back.msg.len(), len);
        assert_eq!(back.push[0].len(), len / 3);
        assert_eq!(back.snapshot.map(|s| s.len()), Some(len / 2));
        assert_eq!((back.heads_digest, back.same), (Some([3; 32]), true));
        assert_eq!(back.mine, Some([4; 32]));
        assert_eq!((back.epoch, back.adopt), (Some([7; 32]), true));
        assert_eq!(back.covered.map(|c| c.len()), Some(64));
        assert_eq!(back.need.len(), 64);
    }
    let beat = heartbeat();
    assert_eq!(
        codec::decode::<Heartbeat>(&codec::encode(&beat), GOSSIP_CAP).unwrap(),
        beat
    );
}

#[test]
fn a_frame_reader_refuses_over_cap_frames_and_grows_only_with_the_bytes_that_arrive() {
    use futures::executor::block_on;
    use futures::io::Cursor;
    let cap = 32 * 1024 * 1024;
    // Announces u32::MAX: refused on the prefix.
    let mut over = u32::MAX.to_be_bytes().to_vec();
    over.extend([0; 100]);
    let (res, largest) =
        largest_allocation(|| block_on(mesh_agent::net::read_frame(&mut Cursor::new(over), cap)));
    assert_eq!(res.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    assert!(largest < 64 * 1024, "{largest}");
    // Announces 30 MiB (under the cap) and sends ten bytes: an error, and nothing near
    // 30 MiB was allocated.
    let mut short = (30u32 << 20).to_be_bytes().to_vec();
    short.extend([1; 10]);
    let (res, largest) =
        largest_allocation(|| block_on(mesh_agent::net::read_frame(&mut Cursor::new(short), cap)));
    assert_eq!(res.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(largest <= 128 * 1024, "{largest}");
    // A whole frame reads back.
    let mut whole = 200_000u32.to_be_bytes().to_vec();
    whole.extend((0..200_000u32).map(|i| i as u8));
    let got = block_on(mesh_agent::net::read_frame(
        &mut Cursor::new(whole.clone()),
        cap,
    ))
    .unwrap();
    assert_eq!(got, whole[4..]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_codec(bytes in wire_bytes()) {
        let (_, largest) = largest_allocation(|| {
            let _ = codec::decode::<SyncFrame>(&bytes, SYNC_CAP);
            let _ = codec::decode::<Heartbeat>(&bytes, GOSSIP_CAP);
            let _ = codec::decode::<Event>(&bytes, GOSSIP_CAP);
        });
        prop_assert!(largest <= MAX_PREALLOC, "{} B", largest);
    }

    #[test]
    fn mutated_heartbeats_and_events_never_panic(
        beat in mutated(codec::encode(&heartbeat())),
        ev in mutated(codec::encode(&event())),
    ) {
        let (_, largest) = largest_allocation(|| {
            let _ = codec::decode::<Heartbeat>(&beat, GOSSIP_CAP);
            let _ = codec::decode::<Event>(&ev, GOSSIP_CAP);
        });
        prop_assert!(largest <= MAX_PREALLOC, "{} B", largest);
    }

    #[test]
    fn a_frame_reader_never_panics_and_never_returns_more_than_the_cap(
        stream in prop::collection::vec(any::<u8>(), 0..2048),
        cap in 0usize..4096,
    ) {
        let (res, largest) = largest_allocation(|| {
            futures::executor::block_on(mesh_agent::net::read_frame(
                &mut futures::io::Cursor::new(stream.clone()),
                cap,
            ))
        });
        if let Ok(frame) = res {
            prop_assert!(frame.len() <= cap);
            prop_assert_eq!(&frame[..], &stream[4..4 + frame.len()]);
        }
        prop_assert!(largest <= 128 * 1024, "{} B", largest);
    }
}

/// [`session_frames`], made once.
fn frames() -> &'static (Vec<u8>, Vec<u8>) {
    static FRAMES: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    FRAMES.get_or_init(session_frames)
}

/// A snapshot of a document with one story, and the chunk of a second story's write.
fn stored_doc() -> &'static (Vec<u8>, Vec<u8>) {
    static DOC: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let mut a = core("A", 1);
        a.add_story(&story("one"), 1).unwrap();
        while a.poll_effect().is_some() {}
        let snapshot = a.doc_mut().save();
        a.add_story(&story("two"), 2).unwrap();
        let mut chunk = Vec::new();
        while let Some(e) = a.poll_effect() {
            if let Effect::Persist { chunk: c } = e {
                chunk.extend(c);
            }
        }
        assert!(!chunk.is_empty());
        (snapshot, chunk)
    })
}

proptest! {
    // Each case runs a node state machine: fewer cases, same inputs.
    #![proptest_config(ProptestConfig { cases: CASES / 2, ..ProptestConfig::default() })]

    #[test]
    fn a_node_fed_mutated_or_arbitrary_frames_and_gossip_never_panics(
        request in mutated(frames().0.clone()),
        response in mutated(frames().1.clone()),
        beat in mutated(codec::encode(&heartbeat())),
        ev in mutated(codec::encode(&event())),
        arbitrary in wire_bytes(),
    ) {
        let mut b = core("B", 2);
        b.handle(0, Input::Connected("A".into()));
        for data in [request, response, beat, ev, arbitrary] {
            b.handle(1, Input::SyncRequest { from: "A".into(), data: data.clone(), reply: 1 });
            b.handle(2, Input::SyncResponse { from: "A".into(), data: data.clone() });
            b.handle(3, Input::Heartbeat { from: "A".into(), data: data.clone() });
            b.handle(4, Input::Event { from: "A".into(), data });
            while b.poll_effect().is_some() {}
        }
        // The node still works: a local write goes through.
        prop_assert!(b.add_story(&story("after"), 5).is_ok());
    }

    #[test]
    fn garbage_or_mutated_snapshots_and_chunks_load_as_errors_not_panics(
        snapshot in mutated(stored_doc().0.clone()),
        chunk in mutated(stored_doc().1.clone()),
        garbage in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        // Whatever the bytes, loading answers (a valid prefix may even load).
        let _ = Doc::load_test_names([3; 16], &snapshot, &[]);
        let _ = Doc::load_test_names([3; 16], &garbage, &[]);
        let _ = Doc::load_test_names([3; 16], &[], std::slice::from_ref(&garbage));
        let _ = Doc::load_test_names([3; 16], &stored_doc().0, std::slice::from_ref(&chunk));
        let _ = Doc::load_test_names([3; 16], &snapshot, &[chunk, garbage]);
    }
}

#[test]
fn a_store_holding_garbage_chunks_fails_to_load_instead_of_panicking() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = mesh_agent::store::Store::open(dir.path()).unwrap();
        store
            .append_chunk(b"\x85\x6f\x4a\x83 not an automerge chunk")
            .unwrap();
        store.flush_blocking().unwrap();
    }
    let store = mesh_agent::store::Store::open(dir.path()).unwrap();
    let (snapshot, chunks) = store.load_doc().unwrap();
    assert!(Doc::load([1; 16], &snapshot, &chunks).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    /// Any value at any key of a known kind — unsigned, signed by a real key over other
    /// text, or a valid seal around mutated JSON — is refused or admitted, never a panic,
    /// and a refused one never reaches the view.
    #[test]
    fn any_value_a_peer_puts_in_the_document_is_admitted_or_refused_never_a_panic(
        kind in prop::sample::select(vec!["story/", "node/", "claim/", "release/", "result/", "merge/", "knowledge/"]),
        rest in "[ -~]{0,40}",
        json in prop_oneof![
            Just("{}".to_string()),
            "[ -~]{0,200}",
            Just(r#"{"number":1,"created_by":"A","created_at_ms":0,"title":"t","priority":0}"#.to_string()),
            Just(r#"{"resources":[["story:S-0001@A/research",18446744073709551615]],"holder":"A","ttl_ms":1,"written_at_ms":0,"attempt":1}"#.to_string()),
        ],
        sealed in any::<bool>(),
        author in prop::sample::select(vec!["A", "B", "", "12D3KooWAAAA"]),
    ) {
        use mesh_agent::core::trust::Signer;
        let key = format!("{kind}{rest}");
        let value = if sealed && !author.is_empty() {
            Signer::for_test(author).seal(&key, &json)
        } else {
            json.clone()
        };
        let mut doc = Doc::new([1; 16]).with_test_names();
        doc.raw_put(&key, value);
        let view = doc.view();
        if !sealed {
            prop_assert!(view.stories.is_empty() && view.claims.is_empty() && view.nodes.is_empty());
        }
        prop_assert!(view.claims.values().all(|c| c.resources.iter().all(|(_, t)| *t < u64::MAX)));
    }
}
