use super::*;

mod hostile;

pub(crate) const A: &str = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaaaa";
pub(crate) const B: &str = "12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBbbbbbb";

fn story(title: &str) -> NewStory {
    NewStory {
        title: title.into(),
        ..Default::default()
    }
}

/// A document read incrementally (local writes, syncs in any order, concurrent writes
/// to one key) holds exactly the facts a fresh load of the same changes holds: what a
/// key shows depends on the set of values written, never on the order they arrived in.
#[test]
fn decoded_facts_track_the_document() {
    fn check(d: &mut Doc) {
        let fresh = Doc::load_test_names([9; 16], &d.save(), &[]).unwrap();
        assert_eq!(
            d.facts().iter().collect::<Vec<_>>(),
            fresh.facts().iter().collect::<Vec<_>>(),
            "incremental facts differ from a fresh load"
        );
        assert_eq!(d.rejected(), fresh.rejected());
    }
    let names = ["A", "B", "C"];
    let mut docs = [
        Doc::new([1; 16]).with_test_names(),
        Doc::new([2; 16]).with_test_names(),
        Doc::new([3; 16]).with_test_names(),
    ];
    let node = |n: u32| NodeFact {
        roles: vec![format!("r{n}")],
        capacity: n,
        version: String::new(),
        incarnation: 0,
    };
    let mut step = 0u32;
    for round in 0..6u32 {
        for (i, d) in docs.iter_mut().enumerate() {
            step += 1;
            let me = names[i];
            // Each node re-describes itself (the latest description stands) ...
            d.put_node(me, &node(step)).unwrap();
            // ... every node learns the same lesson in the same round (one key, written
            // concurrently by three authors) ...
            d.put_knowledge(&KnowledgeFact {
                kind: KnowledgeKind::Pitfall,
                text: format!("lesson {round}"),
                story: String::new(),
                author: me.into(),
                written_at_ms: u64::from(step),
            })
            .unwrap();
            // ... and a raw unsigned value is refused and counted.
            d.inner
                .put(
                    ROOT,
                    format!("{CLAIM_PREFIX}{me}-{round}").as_str(),
                    "not sealed",
                )
                .unwrap();
            d.inner.commit();
            d.refresh();
            check(d);
        }
        let (a, rest) = docs.split_at_mut(1);
        let (b, c) = rest.split_at_mut(1);
        sync_pair(&mut a[0], &mut b[0]);
        check(&mut a[0]);
        check(&mut b[0]);
        if round % 2 == 1 {
            sync_pair(&mut b[0], &mut c[0]);
            sync_pair(&mut a[0], &mut c[0]);
        }
        for d in docs.iter_mut() {
            check(d);
        }
    }
    let views: Vec<View> = docs.iter().map(Doc::view).collect();
    assert_eq!(views[0], views[1]);
    assert_eq!(views[0], views[2]);
    assert_eq!(
        views[0].malformed, 18,
        "every unsealed value is counted once"
    );
    assert_eq!(
        views[0].nodes["A"].capacity, 16,
        "a node's latest description stands"
    );
    assert_eq!(views[0].knowledge.len(), 6);
}

/// `operator` admits `peer` to `d`'s roster (a test document whose operators include
/// `operator`).
pub(crate) fn admit(d: &mut Doc, operator: &str, peer: &str) {
    let key = admit_key(peer);
    let json = serde_json::to_string(&RosterFact {
        peer: peer.into(),
        note: String::new(),
        at_ms: 1,
    })
    .unwrap();
    d.put_signed(
        &key,
        &crate::core::trust::Signer::for_test(operator).seal(&key, &json),
    )
    .unwrap();
}

/// `by` signs `op` on `target` at `at_ms` and writes it through `d`.
pub(crate) fn command(
    d: &mut Doc,
    by: &str,
    target: Target,
    op: Op,
    at_ms: u64,
) -> Result<(), StateError> {
    let json = serde_json::to_string(&CommandFact { target, op, at_ms }).unwrap();
    let key = command_key(by, &json);
    d.put_signed(
        &key,
        &crate::core::trust::Signer::for_test(by).seal(&key, &json),
    )
}

pub(crate) fn sync_pair(a: &mut Doc, b: &mut Doc) {
    let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
    for _ in 0..10 {
        let m1 = a.sync_generate(&mut sa);
        if let Some(m) = &m1 {
            b.sync_receive(&mut sb, m).unwrap();
        }
        let m2 = b.sync_generate(&mut sb);
        if let Some(m) = &m2 {
            a.sync_receive(&mut sa, m).unwrap();
        }
        if m1.is_none() && m2.is_none() {
            return;
        }
    }
    panic!("sync did not finish");
}

/// Runs one step of a story's pipeline: claims (story, phase, round), writes its result
/// with `verdict`, releases. Returns the claim id.
/// Claims, finishes and releases one phase of a story as node A.
pub(crate) fn step(
    d: &mut Doc,
    key: &str,
    phase: Phase,
    round: u32,
    verdict: Option<Verdict>,
) -> String {
    step_files(d, key, phase, round, verdict, &[])
}

/// A first attempt's claim by `A` on `resources`, written at 0.
pub(crate) fn claim_by_a(resources: Vec<(Resource, u64)>) -> ClaimFact {
    ClaimFact {
        resources,
        holder: A.into(),
        ttl_ms: 1000,
        written_at_ms: 0,
        attempt: 1,
        after: None,
    }
}

/// [`step`], its claim also naming `files` (each at its next token).
pub(crate) fn step_files(
    d: &mut Doc,
    key: &str,
    phase: Phase,
    round: u32,
    verdict: Option<Verdict>,
    files: &[&str],
) -> String {
    use crate::core::lease::ReleaseReason;
    let v = d.view();
    let claims = v.claims();
    let res = Resource::story_round(key, phase, round).unwrap();
    let token = claims.next_token(&res);
    let mut resources = vec![(res, token)];
    for f in files {
        let r = Resource::file(f).unwrap();
        resources.push((r.clone(), claims.next_token(&r)));
    }
    // One past this holder's highest claim number (a seeded document holds fewer
    // claims than numbers used).
    let mine = format!("{CLAIM_PREFIX}{A}-");
    let n = d
        .fact_keys()
        .filter_map(|k| k.strip_prefix(&mine)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    let id = format!("{A}-{}", n + 1);
    d.put_claim(&id, &claim_by_a(resources)).unwrap();
    let handoff = crate::core::model::Handoff {
        summary: format!("{phase} {round}"),
        verdict,
        ..Default::default()
    };
    d.put_result(&ResultFact {
        story: key.into(),
        phase,
        round,
        claim: id.clone(),
        token,
        holder: A.into(),
        written_at_ms: 0,
        handoff,
        escalations: vec![],
    })
    .unwrap();
    if phase == Phase::Merge && verdict != Some(Verdict::Reject) {
        d.put_merge(&MergeFact {
            story: key.into(),
            round,
            claim: id.clone(),
            token,
            holder: A.into(),
            commit: "c0ffee00".repeat(5),
            written_at_ms: 0,
        })
        .unwrap();
    }
    d.put_release(
        &id,
        &crate::core::lease::ReleaseFact {
            why: ReleaseReason::Done,
            note: String::new(),
        },
        A,
    )
    .unwrap();
    id
}

fn next(d: &Doc, key: &str) -> (Option<Phase>, u32, StoryStatus) {
    let v = d.view();
    let s = &v.stories[key];
    (s.next_phase, s.round, s.status)
}

#[test]
fn a_rejected_review_opens_a_rework_round_then_review_again() {
    let mut d = Doc::new([1; 16]).with_test_names();
    let k = d.add_story(&story("rework me"), A, 1).unwrap();
    for p in [Phase::Research, Phase::Plan, Phase::Implement] {
        assert_eq!(next(&d, &k).0, Some(p));
        step(&mut d, &k, p, 0, None);
    }
    assert_eq!(
        next(&d, &k),
        (Some(Phase::Review), 0, StoryStatus::InProgress)
    );
    step(&mut d, &k, Phase::Review, 0, Some(Verdict::Reject));
    assert_eq!(
        next(&d, &k),
        (Some(Phase::Rework), 1, StoryStatus::InProgress)
    );
    step(&mut d, &k, Phase::Rework, 1, None);
    assert_eq!(
        next(&d, &k),
        (Some(Phase::Review), 1, StoryStatus::InProgress)
    );
    step(&mut d, &k, Phase::Review, 1, Some(Verdict::Approve));
    assert_eq!(
        next(&d, &k),
        (Some(Phase::Merge), 1, StoryStatus::InProgress)
    );
    // The merge gate hit a conflict: another round.
    step(&mut d, &k, Phase::Merge, 1, Some(Verdict::Reject));
    assert_eq!(
        next(&d, &k),
        (Some(Phase::Rework), 2, StoryStatus::InProgress)
    );
    step(&mut d, &k, Phase::Rework, 2, None);
    step(&mut d, &k, Phase::Review, 2, Some(Verdict::Approve));
    step(&mut d, &k, Phase::Merge, 2, None);
    let v = d.view();
    let s = &v.stories[k.as_str()];
    assert_eq!(s.status, StoryStatus::Merged);
    assert_eq!(s.next_phase, None);
    assert_eq!(s.more.merged.as_ref().map(|m| m.round), Some(2));
    // History keeps every counted step in order, rejections included.
    let h: Vec<(Phase, u32)> = v.history(&k).iter().map(|r| (r.phase, r.round)).collect();
    assert_eq!(h.len(), 10);
    assert_eq!(h[3], (Phase::Review, 0));
    assert_eq!(h[4], (Phase::Rework, 1));
    assert_eq!(h[9], (Phase::Merge, 2));
    assert_eq!(v.counted_result(&k, Phase::Review).unwrap().round, 2);
}

/// Writes a claim on the story's research (by B) and releases it with `why`.
pub(crate) fn ended_attempt(
    d: &mut Doc,
    key: &str,
    why: crate::core::lease::ReleaseReason,
    note: &str,
) {
    let v = d.view();
    let res = Resource::story(key, Phase::Research).unwrap();
    let token = v.claims().next_token(&res);
    let id = format!("{B}-{}", v.claims.len() + 1);
    d.put_claim(
        &id,
        &ClaimFact {
            resources: vec![(res, token)],
            holder: B.into(),
            ttl_ms: 1000,
            written_at_ms: v.claims.len() as u64,
            attempt: 1,
            after: None,
        },
    )
    .unwrap();
    d.put_release(
        &id,
        &crate::core::lease::ReleaseFact {
            why,
            note: note.into(),
        },
        B,
    )
    .unwrap();
}

#[test]
fn takeovers_of_a_gone_holder_do_not_count_as_failed_attempts() {
    use crate::core::lease::ReleaseReason::{Abandoned, Expired, Lost};
    let mut d = Doc::new([1; 16]).with_test_names();
    let k = d.add_story(&story("unlucky holders"), A, 1).unwrap();
    ended_attempt(&mut d, &k, Expired, "lease expired; taken over by A");
    ended_attempt(&mut d, &k, Abandoned, "holder restarted");
    ended_attempt(&mut d, &k, Lost, "lost the lease while running");
    let v = d.view();
    let s = &v.stories[k.as_str()];
    assert_eq!((s.attempts, s.failed_attempts, s.takeovers), (3, 0, 3));
    assert_eq!(s.status, StoryStatus::Ready);
    assert_eq!(s.more.blocked_reason, None);
    assert_eq!(s.next_phase, Some(Phase::Research));
}

#[test]
fn three_failed_attempts_block_the_story_and_the_reason_says_the_work_failed() {
    use crate::core::lease::ReleaseReason::{Expired, Failed};
    let mut d = Doc::new([1; 16]).with_test_names();
    let k = d.add_story(&story("broken work"), A, 1).unwrap();
    ended_attempt(&mut d, &k, Failed, "implement made no change");
    ended_attempt(&mut d, &k, Expired, "lease expired; taken over by A");
    ended_attempt(&mut d, &k, Failed, "tests failed");
    assert_eq!(d.view().stories[k.as_str()].status, StoryStatus::Ready);
    ended_attempt(&mut d, &k, Failed, "tests failed");
    let v = d.view();
    let s = &v.stories[k.as_str()];
    assert_eq!((s.attempts, s.failed_attempts, s.takeovers), (4, 3, 1));
    assert_eq!(s.status, StoryStatus::Blocked);
    let why = s.more.blocked_reason.clone().unwrap();
    assert_eq!(
        why,
        "research failed 3 attempts: implement made no change; tests failed"
    );
}

#[test]
fn a_started_story_whose_dependency_is_blocked_is_blocked_too() {
    // Found by the simulator (seed 1065, hostile, 8 stories, before clean stops):
    // only stories not yet started were blocked with their dependency, so one that
    // had started waited forever.
    use crate::core::lease::ReleaseReason::Failed;
    let mut d = Doc::new([1; 16]).with_test_names();
    let first = d.add_story(&story("the dependency"), A, 1).unwrap();
    let second = d
        .add_story(
            &NewStory {
                title: "the dependant".into(),
                depends_on: vec![first.clone()],
                ..Default::default()
            },
            A,
            2,
        )
        .unwrap();
    // The dependant has started (its research is done; how it got there before its
    // dependency landed does not matter here) and nobody works on it now.
    step(&mut d, &second, Phase::Research, 0, None);
    assert_eq!(
        d.view().stories[second.as_str()].status,
        StoryStatus::InProgress
    );
    for _ in 0..MAX_ATTEMPTS {
        ended_attempt(&mut d, &first, Failed, "tests failed");
    }
    let v = d.view();
    assert_eq!(v.stories[first.as_str()].status, StoryStatus::Blocked);
    let s = &v.stories[second.as_str()];
    assert_eq!(s.status, StoryStatus::Blocked);
    assert_eq!(
        s.more.blocked_reason.as_deref(),
        Some("depends on S-0001, which is blocked")
    );
    assert_eq!(s.next_phase, None);
}

#[test]
fn a_story_that_keeps_losing_its_holders_is_blocked_at_the_takeover_limit() {
    use crate::core::lease::ReleaseReason::{Abandoned, Expired};
    let mut d = Doc::new([1; 16]).with_test_names();
    let k = d.add_story(&story("kills its holders"), A, 1).unwrap();
    for i in 0..MAX_TAKEOVERS {
        assert_eq!(
            d.view().stories[k.as_str()].more.blocked_reason,
            None,
            "after {i}"
        );
        if i % 2 == 0 {
            ended_attempt(&mut d, &k, Expired, "lease expired; taken over by A");
        } else {
            ended_attempt(&mut d, &k, Abandoned, "holder restarted");
        }
    }
    let v = d.view();
    let s = &v.stories[k.as_str()];
    assert_eq!(s.status, StoryStatus::Blocked);
    assert_eq!(s.takeovers, MAX_TAKEOVERS);
    let why = s.more.blocked_reason.clone().unwrap();
    assert!(
        why.starts_with(&format!("research lost its holder {MAX_TAKEOVERS} times: ")),
        "{why}"
    );
    assert!(why.contains("holder restarted"), "{why}");
    assert!(!why.contains("failed"), "{why}");
}

#[test]
fn too_many_rejections_block_the_story_with_the_last_reason() {
    let mut d = Doc::new([1; 16]).with_test_names();
    let k = d.add_story(&story("never good"), A, 1).unwrap();
    for p in [Phase::Research, Phase::Plan, Phase::Implement] {
        step(&mut d, &k, p, 0, None);
    }
    for r in 0..=MAX_REWORKS {
        if r > 0 {
            step(&mut d, &k, Phase::Rework, r, None);
        }
        assert_eq!(next(&d, &k).0, Some(Phase::Review));
        step(&mut d, &k, Phase::Review, r, Some(Verdict::Reject));
    }
    let v = d.view();
    let s = &v.stories[k.as_str()];
    assert_eq!(s.status, StoryStatus::Blocked);
    let why = s.more.blocked_reason.clone().unwrap();
    assert!(why.contains("review rejected the change 4 times"), "{why}");
    assert!(why.contains("review 3"), "{why}");
}

#[test]
fn knowledge_is_deduplicated_by_content_and_ranked_by_relevance() {
    use crate::core::model::{KnowledgeFact, KnowledgeKind};
    let mut d = Doc::new([1; 16]).with_test_names();
    let k = d
        .add_story(
            &NewStory {
                title: "Parser handles unicode".into(),
                files: vec!["src/parser.rs".into()],
                ..Default::default()
            },
            A,
            1,
        )
        .unwrap();
    let fact = |text: &str, kind| KnowledgeFact {
        kind,
        text: text.into(),
        story: String::new(),
        author: B.into(),
        written_at_ms: 1,
    };
    let a = d
        .put_knowledge(&fact("The parser must reject BOMs", KnowledgeKind::Pitfall))
        .unwrap();
    let b = d
        .put_knowledge(&fact(
            "  the PARSER must   reject boms ",
            KnowledgeKind::Pitfall,
        ))
        .unwrap();
    assert_eq!(a, b, "same lesson, one entry");
    d.put_knowledge(&fact(
        "Run cargo fmt before committing",
        KnowledgeKind::Convention,
    ))
    .unwrap();
    assert!(d
        .put_knowledge(&fact("   ", KnowledgeKind::Pattern))
        .is_err());
    let v = d.view();
    assert_eq!(v.knowledge.len(), 2);
    let rel = relevant_knowledge(&v, &v.stories[k.as_str()], 5);
    assert_eq!(rel[0].text, "The parser must reject BOMs");
    assert_eq!(relevant_knowledge(&v, &v.stories[k.as_str()], 1).len(), 1);
}

/// The log of local changes kept for pushes is bounded in bytes, not only in count:
/// after three bulk writes of ~3.5 MB the oldest is left to sync, and what is pushed
/// still starts right after what the peer has.
#[test]
fn the_push_log_keeps_bulk_writes_within_its_byte_bound() {
    let mut d = Doc::new([1; 16]).with_test_names();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut body = || {
        (0..crate::core::model::MAX_BODY_BYTES / 16)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{x:016x}")
            })
            .collect::<String>()
    };
    for batch in 0..3 {
        let news: Vec<NewStory> = (0..55)
            .map(|i| NewStory {
                body: body(),
                ..story(&format!("bulk {batch}.{i}"))
            })
            .collect();
        d.add_story_batch(&news, "cli", A, 1).unwrap();
    }
    let (all, _) = d.local_changes_after(0, usize::MAX);
    assert!(all.is_empty(), "the first bulk change is still kept");
    let (rest, upto) = d.local_changes_after(1, usize::MAX);
    assert_eq!((rest.len(), upto), (2, 3));
    let kept: usize = rest.iter().map(Vec::len).sum();
    assert!(kept > 6 << 20, "{kept} bytes: the bodies compressed");
    d.add_story(&story("small"), A, 2).unwrap();
    let (last, upto) = d.local_changes_after(3, usize::MAX);
    assert_eq!((last.len(), upto), (1, 4));
}

#[test]
fn ids_are_sequential_on_one_node() {
    let mut d = Doc::new([1; 16]).with_test_names();
    let k1 = d.add_story(&story("one"), A, 1).unwrap();
    let k2 = d.add_story(&story("two"), A, 2).unwrap();
    let v = d.view();
    assert_eq!(v.stories[k1.as_str()].id, "S-0001");
    assert_eq!(v.stories[k2.as_str()].id, "S-0002");
    assert_eq!(v.resolve("s-2").unwrap().key, k2);
    assert_eq!(v.resolve("S-0002").unwrap().key, k2);
}

#[test]
fn concurrent_adds_get_distinct_ids_and_the_same_view_everywhere() {
    let mut a = Doc::new([1; 16]).with_test_names();
    let mut b = Doc::new([2; 16]).with_test_names();
    let ka = a.add_story(&story("from a"), A, 10).unwrap();
    let kb = b.add_story(&story("from b"), B, 10).unwrap();
    assert_ne!(ka, kb, "keys never collide");
    sync_pair(&mut a, &mut b);
    let (va, vb) = (a.view(), b.view());
    assert_eq!(va, vb);
    assert_eq!(
        va.stories[ka.as_str()].id,
        "S-0001",
        "lowest creator keeps the short id"
    );
    assert_eq!(va.stories[kb.as_str()].id, "S-0001-bbbbbb");
    assert!(matches!(
        va.resolve("S-0001-bbbbbb"),
        Ok(s) if s.key == kb
    ));
    // Both nodes then allocate past the collision.
    let k3 = b.add_story(&story("next"), B, 11).unwrap();
    assert_eq!(b.view().stories[k3.as_str()].id, "S-0002");
}

#[test]
fn duplicate_and_out_of_order_delivery_fold_to_the_same_view() {
    let mut a = Doc::new([1; 16]).with_test_names();
    a.add_story(&story("one"), A, 1).unwrap();
    let c1 = a.save_incremental();
    let k2 = a
        .add_story(
            &NewStory {
                title: "two".into(),
                depends_on: vec!["S-0001".into()],
                ..Default::default()
            },
            A,
            2,
        )
        .unwrap();
    let c2 = a.save_incremental();
    // Deliver the second change first, then the first twice.
    let b = Doc::load_test_names([2; 16], &[], &[c2.clone(), c1.clone(), c1, c2]).unwrap();
    assert_eq!(b.view(), a.view());
    assert_eq!(
        b.view().stories[k2.as_str()].depends_on_ids,
        vec!["S-0001".to_string()]
    );
    assert_eq!(b.view().stories[k2.as_str()].status, StoryStatus::Backlog);
}

#[test]
fn depends_on_unknown_story_is_refused() {
    let mut a = Doc::new([1; 16]).with_test_names();
    let err = a
        .add_story(
            &NewStory {
                title: "t".into(),
                depends_on: vec!["S-0099".into()],
                ..Default::default()
            },
            A,
            1,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown story \"S-0099\""),
        "{err}"
    );
}

#[test]
fn malformed_facts_are_skipped_and_counted() {
    let mut a = Doc::new([1; 16]).with_test_names();
    a.inner
        .put(ROOT, "story/S-0001@zzzzzz", "not json")
        .unwrap();
    a.inner.put(ROOT, "node/x", "{}").unwrap();
    // Signed by x, but not a node fact.
    let sealed = Signer::for_test("x").seal("node/x", "[1]");
    a.inner.put(ROOT, "node/x", sealed).unwrap();
    a.inner.commit();
    a.add_story(&story("fine"), A, 1).unwrap();
    let v = a.view();
    assert_eq!(v.malformed, 3);
    assert_eq!(v.stories.len(), 1);
    assert_eq!(a.rejected()["?"][&FactKind::Story], 1);
    assert_eq!(a.rejected()["?"][&FactKind::Node], 1);
    assert_eq!(a.rejected()["x"][&FactKind::Node], 1);
}

#[test]
fn node_fact_is_written_only_on_change() {
    let mut a = Doc::new([1; 16]).with_test_names();
    let f = NodeFact {
        roles: vec!["implement".into()],
        capacity: 2,
        version: "0.1.0".into(),
        incarnation: 1,
    };
    assert!(a.put_node(A, &f).unwrap());
    assert!(
        !a.put_node(A, &f).unwrap(),
        "rewriting the same fact would grow history"
    );
    // A restart with the same description writes nothing.
    let restarted = NodeFact {
        incarnation: 2,
        ..f.clone()
    };
    assert!(!a.put_node(A, &restarted).unwrap());
    assert!(a
        .put_node(
            A,
            &NodeFact {
                capacity: 3,
                incarnation: 3,
                ..f.clone()
            }
        )
        .unwrap());
    // Anyone may put the older run's signed value again: it stays the older one.
    let old_key = format!("{NODE_PREFIX}{A}");
    let old = Signer::for_test(A).seal(&old_key, &json(&f));
    a.raw_put(&old_key, old);
    assert_eq!(
        a.view().nodes[A].capacity,
        3,
        "a replayed description never wins"
    );
}

#[test]
fn snapshot_plus_incrementals_restore_everything() {
    let mut a = Doc::new([1; 16]).with_test_names();
    a.add_story(&story("one"), A, 1).unwrap();
    let snap = a.save();
    a.add_story(&story("two"), A, 2).unwrap();
    let inc = a.save_incremental();
    let mut b = Doc::load_test_names([3; 16], &snap, &[inc]).unwrap();
    assert_eq!(b.view(), a.view());
    assert_eq!(b.heads_digest(), a.heads_digest());
}

/// The JSON a writer seals.
fn json<T: Serialize>(fact: &T) -> String {
    serde_json::to_string(fact).unwrap()
}

/// The titles of a document's stories, sorted.
pub(crate) fn titles(d: &Doc) -> Vec<String> {
    let mut t: Vec<String> = d
        .view()
        .stories
        .values()
        .map(|s| s.fact.title.to_string())
        .collect();
    t.sort();
    t
}

/// The fold's allocation-free key check agrees with the key a story is written under.
#[test]
fn story_keys_are_checked_without_being_built() {
    use super::view::names_story;
    const A: &str = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaaaa";
    for n in [1, 7, 42, 999, 1000, 9999, 10_000, 123_456, u32::MAX] {
        assert!(names_story(&story_key(n, A), n, A), "{n}");
        assert!(!names_story(&story_key(n, A), n.wrapping_add(1), A), "{n}");
        assert!(
            !names_story(&story_key(n, A), n, "12D3KooWBBBBBBbbbbbb"),
            "{n}"
        );
    }
    for bad in [
        "S-42@aaaaaa",
        "S-00042@aaaaaa",
        "S-0042",
        "0042@aaaaaa",
        "S-+042@aaaaaa",
        "S-0042@",
    ] {
        assert!(!names_story(bad, 42, A), "{bad}");
    }
}
