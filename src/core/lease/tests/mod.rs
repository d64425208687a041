use super::*;

fn story(key: &str, phase: Phase) -> Resource {
    Resource::story(key, phase).unwrap()
}

fn file(path: &str) -> Resource {
    Resource::file(path).unwrap()
}

fn claim(holder: &str, resources: &[(Resource, u64)]) -> ClaimFact {
    ClaimFact {
        resources: resources.to_vec(),
        holder: holder.to_string(),
        ttl_ms: 10_000,
        written_at_ms: 0,
        attempt: 1,
        after: None,
    }
}

fn released(why: ReleaseReason) -> ReleaseFact {
    ReleaseFact {
        why,
        note: String::new(),
    }
}

fn fold(claims: &[(&str, ClaimFact)], releases: &[(&str, ReleaseReason)]) -> Claims {
    let c = claims
        .iter()
        .map(|(id, f)| (id.to_string(), f.clone()))
        .collect();
    let r = releases
        .iter()
        .map(|(id, why)| (id.to_string(), released(*why)))
        .collect();
    Claims::new(&c, &r)
}

// --- resources -----------------------------------------------------------------

#[test]
fn resources_round_trip_through_their_string_form() {
    for r in [
        story("S-0042@ab12cd", Phase::PlanReview),
        story("S-0001@zzzzzz", Phase::Merge),
        file("./src/../src/lease.rs"),
        Resource::gate("ssh://git@h:2222/srv/r.git", "main").unwrap(),
        Resource::Epoch(7),
    ] {
        let s = r.to_string();
        assert_eq!(s.parse::<Resource>().unwrap(), r, "{s}");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<Resource>(&json).unwrap(), r);
    }
    assert_eq!(
        file("./src/../src/lease.rs").to_string(),
        "file:src/lease.rs"
    );
    assert_eq!(
        story("S-0042@ab12cd", Phase::PlanReview).to_string(),
        "story:S-0042@ab12cd/plan_review"
    );
}

#[test]
fn file_resources_escaping_the_repository_are_rejected() {
    let err = Resource::file("../etc/passwd").unwrap_err();
    assert!(
        err.to_string().contains("escapes the repository root"),
        "{err}"
    );
    let err = Resource::file("/etc/passwd").unwrap_err();
    assert!(err.to_string().contains("is absolute"), "{err}");
    let err = "file:a/../../b".parse::<Resource>().unwrap_err();
    assert!(
        err.to_string().contains("escapes the repository root"),
        "{err}"
    );
    assert!(serde_json::from_str::<Resource>("\"file:../x\"").is_err());
}

#[test]
fn malformed_resource_strings_are_rejected_with_the_expected_form() {
    let err = "stroy:S-1/plan".parse::<Resource>().unwrap_err();
    assert!(err.to_string().contains("story:<key>/<phase>"), "{err}");
    let err = "story:S-1".parse::<Resource>().unwrap_err();
    assert!(matches!(err, ResourceError::MissingPhase(_)), "{err}");
    let err = "story:S-1/coding".parse::<Resource>().unwrap_err();
    assert!(err.to_string().contains("implement"), "{err}");
    assert!("story:/plan".parse::<Resource>().is_err());
    assert!(Resource::story("S-1/x", Phase::Plan).is_err());
    for bad in [
        "story:S-1/review.0",
        "story:S-1/review.01",
        "story:S-1/review.x",
    ] {
        assert!(bad.parse::<Resource>().is_err(), "{bad} accepted");
    }
    for bad in ["gate:", "gate:a b#main", "gate:x\n#main"] {
        let err = bad.parse::<Resource>().unwrap_err();
        assert!(matches!(err, ResourceError::BadGate(_)), "{bad}: {err}");
    }
    assert!(Resource::gate(&"x".repeat(MAX_GATE_NAME), "main").is_err());
    for bad in ["epoch:", "epoch:0", "epoch:07", "epoch:+7", "epoch:x"] {
        let err = bad.parse::<Resource>().unwrap_err();
        assert!(matches!(err, ResourceError::BadEpoch(_)), "{bad}: {err}");
    }
    assert_eq!(
        Resource::gate("git@h:r.git", "main").unwrap().to_string(),
        "gate:git@h:r.git#main"
    );
}

#[test]
fn rounds_are_distinct_resources_that_round_trip() {
    let r2 = Resource::story_round("S-1@ab", Phase::Review, 2).unwrap();
    assert_eq!(r2.to_string(), "story:S-1@ab/review.2");
    assert_eq!("story:S-1@ab/review.2".parse::<Resource>().unwrap(), r2);
    let r0 = Resource::story("S-1@ab", Phase::Review).unwrap();
    assert_eq!(r0.to_string(), "story:S-1@ab/review");
    assert_ne!(r0, r2);
}

#[test]
fn claim_facts_are_stored_as_json_and_read_back() {
    let c = claim(
        "peerA",
        &[(story("S-1@a", Phase::Implement), 3), (file("src/a.rs"), 7)],
    );
    let json = serde_json::to_string(&c).unwrap();
    assert!(json.contains("\"story:S-1@a/implement\""), "{json}");
    assert_eq!(serde_json::from_str::<ClaimFact>(&json).unwrap(), c);
    let r = released(ReleaseReason::Abandoned);
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(json, r#"{"why":"abandoned"}"#);
    assert_eq!(serde_json::from_str::<ReleaseFact>(&json).unwrap(), r);
}

#[test]
fn claim_ids_are_unique_per_writer() {
    assert_eq!(claim_id("12D3KooWabc", 7), "12D3KooWabc-7");
    assert_ne!(claim_id("peerA", 1), claim_id("peerB", 1));
    assert_eq!(claim_number("12D3KooWabc", "12D3KooWabc-7"), Some(7));
    assert_eq!(claim_number("12D3KooWab", "12D3KooWabc-7"), None);
    assert_eq!(claim_number("peerA", &claim_id("peerB", 1)), None);
}

// --- tokens and winners -----------------------------------------------------------

#[test]
fn a_never_claimed_resource_gets_token_one_and_has_no_winner() {
    let c = fold(&[], &[]);
    let r = story("S-1@a", Phase::Plan);
    assert_eq!(c.next_token(&r), 1);
    assert_eq!(c.winner(&r), None);
    assert!(!c.ever_claimed(&r));
}

#[test]
fn the_next_token_is_one_more_than_the_highest_ever_seen_including_released() {
    let r = story("S-1@a", Phase::Plan);
    let c = fold(
        &[
            ("a-1", claim("a", &[(r.clone(), 1)])),
            ("b-1", claim("b", &[(r.clone(), 5)])),
            ("c-1", claim("c", &[(r.clone(), 3)])),
        ],
        &[("b-1", ReleaseReason::Done)],
    );
    assert_eq!(c.next_token(&r), 6);
    assert_eq!(c.next_token(&file("other.rs")), 1);
}

#[test]
fn the_highest_token_wins() {
    let r = story("S-1@a", Phase::Plan);
    let c = fold(
        &[
            ("a-1", claim("a", &[(r.clone(), 1)])),
            ("b-1", claim("b", &[(r.clone(), 2)])),
        ],
        &[],
    );
    assert_eq!(c.winner(&r), Some("b-1"));
    assert_eq!(c.winner_holder(&r), Some("b"));
    assert!(c.holds("b-1"));
    assert!(!c.holds("a-1"));
    assert_eq!(c.losing().map(|(id, _)| id).collect::<Vec<_>>(), ["a-1"]);
}

#[test]
fn equal_tokens_tie_to_the_lowest_holder_id_whatever_the_claim_ids() {
    let r = story("S-1@a", Phase::Plan);
    // The lower holder has the higher claim id: the holder decides, not the id.
    let c = fold(
        &[
            ("zzz-1", claim("alice", &[(r.clone(), 4)])),
            ("aaa-1", claim("bob", &[(r.clone(), 4)])),
        ],
        &[],
    );
    assert_eq!(c.winner(&r), Some("zzz-1"));
    assert_eq!(c.winner_holder(&r), Some("alice"));
}

#[test]
fn equal_tokens_and_holders_tie_to_the_lowest_claim_id() {
    let r = story("S-1@a", Phase::Plan);
    let c = fold(
        &[
            ("alice-2", claim("alice", &[(r.clone(), 4)])),
            ("alice-1", claim("alice", &[(r.clone(), 4)])),
        ],
        &[],
    );
    assert_eq!(c.winner(&r), Some("alice-1"));
}

#[test]
fn a_released_winner_frees_the_resource_and_a_lower_stale_claim_does_not_resurrect() {
    let r = story("S-1@a", Phase::Implement);
    let c = fold(
        &[
            ("a-1", claim("a", &[(r.clone(), 1)])),
            ("b-1", claim("b", &[(r.clone(), 2)])),
        ],
        &[("b-1", ReleaseReason::Done)],
    );
    assert_eq!(c.winner(&r), None);
    assert!(!c.holds("a-1"), "the superseded claim must stay dead");
    assert!(!c.holds("b-1"));
    assert!(c.is_released("b-1"));
    assert_eq!(c.release_reason("b-1"), Some(ReleaseReason::Done));
    assert_eq!(c.active().count(), 0);
    assert_eq!(c.next_token(&r), 3);
    let mut obs = LeaseObserver::new();
    assert!(resource_free(
        &c,
        &mut obs,
        &r,
        0,
        &LeaseConfig::default(),
        |_| false
    ));
}

#[test]
fn in_a_token_tie_finished_beats_open_beats_released_without_a_result() {
    let r = story("S-1@a", Phase::Review);
    let tie = |releases: &[(&str, ReleaseReason)]| {
        fold(
            &[
                ("a-1", claim("a", &[(r.clone(), 2)])),
                ("b-1", claim("b", &[(r.clone(), 2)])),
            ],
            releases,
        )
    };
    // No releases: the lowest holder.
    assert_eq!(tie(&[]).winner(&r), Some("a-1"));
    // a-1 never ran (its holder crashed, restarted and released it; or it lost at
    // settle): b-1, which may be running, wins instead of being voided.
    for why in [
        ReleaseReason::Abandoned,
        ReleaseReason::Unsettled,
        ReleaseReason::Lost,
    ] {
        let c = tie(&[("a-1", why)]);
        assert_eq!(c.winner(&r), Some("b-1"), "{why:?}");
        assert!(c.holds("b-1"));
        assert_eq!(c.top(&r), Some("b-1"));
    }
    // a-1 taken over (a release any member may write, forged or not): its holder may
    // still be running until it hears of it, so b-1 does not win the tie and start
    // beside it; the resource is free for a claim with the next token.
    let c = tie(&[("a-1", ReleaseReason::Expired)]);
    assert_eq!(c.top(&r), Some("a-1"));
    assert_eq!(c.winner(&r), None);
    assert!(!c.holds("b-1"));
    assert_eq!(c.next_token(&r), 3);
    // b-1 finished: a tying claim from a stale view never un-counts its result,
    // released or not.
    let c = tie(&[("b-1", ReleaseReason::Done)]);
    assert_eq!(c.top(&r), Some("b-1"));
    assert_eq!(c.winner(&r), None, "finished: the resource is free");
    assert!(!c.holds("a-1"));
    let c = tie(&[
        ("b-1", ReleaseReason::Done),
        ("a-1", ReleaseReason::Unsettled),
    ]);
    assert_eq!(c.top(&r), Some("b-1"));
    // Both released without a result: the lowest holder, released, frees it.
    let c = tie(&[
        ("a-1", ReleaseReason::Lost),
        ("b-1", ReleaseReason::Unsettled),
    ]);
    assert_eq!(c.top(&r), Some("a-1"));
    assert_eq!(c.winner(&r), None);
    // The rank only breaks ties: a higher token still wins whatever its release.
    let c = fold(
        &[
            ("a-1", claim("a", &[(r.clone(), 2)])),
            ("b-1", claim("b", &[(r.clone(), 3)])),
        ],
        &[("b-1", ReleaseReason::Abandoned)],
    );
    assert_eq!(c.top(&r), Some("b-1"));
    assert!(!c.holds("a-1"), "a superseded claim never comes back");
}

#[test]
fn in_a_tie_between_finished_claims_the_one_later_work_built_on_counts() {
    // Two sides of a partition both reviewed round 0 of S-1 under token 1. Side b went
    // on: a rework of round 1 built on b's review, then a merge of round 1 is running.
    // When the sides meet, b's review must keep counting (the lowest holder, a, would
    // flip round 0 back and start a second merge of the story: seed 78990, clean).
    let review = story("S-1@a", Phase::Review);
    let rework = Resource::story_round("S-1@a", Phase::Rework, 1).unwrap();
    let merge = Resource::story_round("S-1@a", Phase::Merge, 1).unwrap();
    let after = |holder: &str, r: &Resource, parent: &str| ClaimFact {
        after: Some(parent.to_string()),
        ..claim(holder, &[(r.clone(), 1)])
    };
    let claims = |child: ClaimFact| {
        vec![
            ("a-1", claim("a", &[(review.clone(), 1)])),
            ("b-1", claim("b", &[(review.clone(), 1)])),
            ("c-1", child),
        ]
    };
    let done = [("a-1", ReleaseReason::Done), ("b-1", ReleaseReason::Done)];
    // Nothing built on either: the lowest holder, as before.
    let c = fold(&claims(claim("c", &[(rework.clone(), 1)])), &done);
    assert_eq!(c.top(&review), Some("a-1"));
    // A running (open) or finished step built on b-1: b-1 counts.
    let c = fold(&claims(after("c", &rework, "b-1")), &done);
    assert_eq!(c.top(&review), Some("b-1"));
    let mut finished = done.to_vec();
    finished.push(("c-1", ReleaseReason::Done));
    let c = fold(&claims(after("c", &rework, "b-1")), &finished);
    assert_eq!(c.top(&review), Some("b-1"));
    // The longer chain wins: a has one step built on it, b two.
    let mut chain = claims(after("c", &rework, "b-1"));
    chain.push(("d-1", after("d", &merge, "c-1")));
    chain.push((
        "a-2",
        after(
            "a",
            &Resource::story_round("S-1@a", Phase::Merge, 0).unwrap(),
            "a-1",
        ),
    ));
    let c = fold(&chain, &done);
    assert_eq!(c.top(&review), Some("b-1"));
    // Work that never ran builds nothing: released without a result, it is no chain.
    for why in [
        ReleaseReason::Unsettled,
        ReleaseReason::Lost,
        ReleaseReason::Abandoned,
    ] {
        let mut void = done.to_vec();
        void.push(("c-1", why));
        let c = fold(&claims(after("c", &rework, "b-1")), &void);
        assert_eq!(c.top(&review), Some("a-1"), "{why:?}");
    }
    // A link to another story, or to a later or the same step, is no chain (so a
    // hostile cycle cannot make one).
    let other = Resource::story_round("S-2@a", Phase::Rework, 1).unwrap();
    let c = fold(&claims(after("c", &other, "b-1")), &done);
    assert_eq!(c.top(&review), Some("a-1"));
    let c = fold(
        &claims(after("c", &story("S-1@a", Phase::Plan), "b-1")),
        &done,
    );
    assert_eq!(c.top(&review), Some("a-1"));
    let c = fold(&claims(after("c", &review, "b-1")), &done);
    assert_eq!(c.top(&review), Some("a-1"));
    // The chain only breaks ties: a higher token, or a better rank, still wins.
    let mut higher = claims(after("c", &rework, "b-1"));
    higher[0].1 = claim("a", &[(review.clone(), 2)]);
    let c = fold(&higher, &done);
    assert_eq!(c.top(&review), Some("a-1"));
    let c = fold(
        &claims(after("c", &rework, "b-1")),
        &[("a-1", ReleaseReason::Done), ("b-1", ReleaseReason::Lost)],
    );
    assert_eq!(c.top(&review), Some("a-1"));
}

#[test]
fn a_claim_losing_one_resource_holds_nothing() {
    let s = story("S-1@a", Phase::Implement);
    let f1 = file("src/a.rs");
    let f2 = file("src/b.rs");
    let c = fold(
        &[
            (
                "a-1",
                claim("a", &[(s.clone(), 1), (f1.clone(), 1), (f2.clone(), 1)]),
            ),
            ("b-1", claim("b", &[(f2.clone(), 2)])),
        ],
        &[],
    );
    // a-1 still tops the story and f1, but lost f2: it holds none of them.
    assert_eq!(c.winner(&s), Some("a-1"));
    assert_eq!(c.winner(&f2), Some("b-1"));
    assert!(!c.holds("a-1"));
    assert!(c.holds("b-1"));
    assert_eq!(c.active().map(|(id, _)| id).collect::<Vec<_>>(), ["b-1"]);
    assert_eq!(c.active_of("a").count(), 0);
    assert_eq!(c.losing().map(|(id, _)| id).collect::<Vec<_>>(), ["a-1"]);
}

#[test]
fn two_claims_crossing_on_two_resources_both_lose_so_neither_waits_on_the_other() {
    let r1 = file("a.rs");
    let r2 = file("b.rs");
    let c = fold(
        &[
            ("a-1", claim("a", &[(r1.clone(), 1), (r2.clone(), 2)])),
            ("b-1", claim("b", &[(r1.clone(), 2), (r2.clone(), 1)])),
        ],
        &[],
    );
    assert!(!c.holds("a-1"));
    assert!(!c.holds("b-1"));
    assert_eq!(c.losing().count(), 2);
}

#[test]
fn an_empty_or_unknown_claim_holds_nothing() {
    let c = fold(&[("a-1", claim("a", &[]))], &[]);
    assert!(!c.holds("a-1"));
    assert!(!c.holds("nope"));
    assert_eq!(c.token_of("nope", &file("a.rs")), None);
}

#[test]
fn token_of_reports_the_token_a_claim_carries_per_resource() {
    let s = story("S-1@a", Phase::Implement);
    let f = file("src/a.rs");
    let c = fold(
        &[("a-1", claim("a", &[(s.clone(), 4), (f.clone(), 9)]))],
        &[],
    );
    assert_eq!(c.token_of("a-1", &s), Some(4));
    assert_eq!(c.token_of("a-1", &f), Some(9));
    assert_eq!(c.token_of("a-1", &file("src/b.rs")), None);
}

fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let first = rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, first.clone());
            out.push(p);
        }
    }
    out
}

/// Everything observable about a fold, as plain data.
fn summary(c: &Claims, resources: &[Resource]) -> Vec<String> {
    let mut out = Vec::new();
    for r in resources {
        out.push(format!(
            "{r} next={} winner={:?}",
            c.next_token(r),
            c.winner(r)
        ));
    }
    out.extend(c.active().map(|(id, _)| format!("active {id}")));
    out.extend(c.losing().map(|(id, _)| format!("losing {id}")));
    out
}

#[test]
fn the_fold_is_the_same_under_every_insertion_order() {
    let s = story("S-1@a", Phase::Implement);
    let f = file("src/a.rs");
    let g = file("src/b.rs");
    let facts: Vec<(&str, ClaimFact)> = vec![
        ("a-1", claim("a", &[(s.clone(), 1), (f.clone(), 1)])),
        ("b-1", claim("b", &[(s.clone(), 2), (f.clone(), 2)])),
        ("c-1", claim("c", &[(s.clone(), 2), (g.clone(), 1)])),
        ("a-2", claim("a", &[(g.clone(), 1)])),
        ("d-1", claim("d", &[(f.clone(), 3)])),
    ];
    let releases = [("d-1", ReleaseReason::Lost), ("a-1", ReleaseReason::Lost)];
    let resources = [s, f, g];
    let mut expected: Option<Vec<String>> = None;
    for order in permutations(&facts) {
        for rel_order in permutations(&releases) {
            let mut cm = BTreeMap::new();
            for (id, fact) in &order {
                cm.insert(id.to_string(), fact.clone());
            }
            let mut rm = BTreeMap::new();
            for (id, why) in &rel_order {
                rm.insert(id.to_string(), released(*why));
            }
            let got = summary(&Claims::new(&cm, &rm), &resources);
            match &expected {
                None => expected = Some(got),
                Some(e) => assert_eq!(&got, e),
            }
        }
    }
    let expected = expected.unwrap();
    // b-1 and c-1 tie on the story at token 2: b < c, so b-1 wins it, and c-1 (which
    // also tops b.rs, tied with a-2 at 1: c > a) holds nothing. d-1 topped a.rs and was
    // released, so a.rs is free and b-1 holds nothing either.
    assert!(expected.contains(&"story:S-1@a/implement next=3 winner=Some(\"b-1\")".to_string()));
    assert!(expected.contains(&"file:src/a.rs next=4 winner=None".to_string()));
    assert!(expected.contains(&"file:src/b.rs next=2 winner=Some(\"a-2\")".to_string()));
    assert!(expected.contains(&"active a-2".to_string()));
    assert!(!expected
        .iter()
        .any(|l| l == "active b-1" || l == "active c-1"));
}

/// An earlier epoch's claims folded as [`Floor`]s decide every live claim as the whole
/// fold does (DESIGN.md §3.5), and an update of a fold with floors is that fold: random
/// claims on shared files, some stories retired whole once all their claims are released.
#[test]
fn floors_rank_as_the_claims_they_stand_for_and_updates_agree() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let files: Vec<Resource> = (0..3).map(|i| file(&format!("src/f{i}.rs"))).collect();
    let reasons = [
        ReleaseReason::Done,
        ReleaseReason::Lost,
        ReleaseReason::Abandoned,
        ReleaseReason::Expired,
    ];
    let mut floors_seen = 0;
    for _ in 0..2000 {
        let mut claims: BTreeMap<String, ClaimFact> = BTreeMap::new();
        let mut story_of: BTreeMap<String, u64> = BTreeMap::new();
        let mut releases: BTreeMap<String, ReleaseFact> = BTreeMap::new();
        for k in 0..1 + rnd(12) {
            let holder = ["a", "b", "c"][rnd(3) as usize];
            let st = rnd(5);
            let mut resources = vec![(story(&format!("S-{st}@a"), Phase::Implement), 1 + rnd(3))];
            for f in &files {
                if rnd(2) == 0 {
                    resources.push((f.clone(), 1 + rnd(6)));
                }
            }
            let id = format!("{holder}-{k}");
            claims.insert(id.clone(), claim(holder, &resources));
            story_of.insert(id.clone(), st);
            if rnd(3) > 0 {
                releases.insert(id, released(reasons[rnd(4) as usize]));
            }
        }
        // Stories retire whole, and only when every claim of theirs is released.
        let retired: BTreeSet<u64> = (0..5)
            .filter(|_| rnd(2) == 0)
            .filter(|st| {
                story_of
                    .iter()
                    .all(|(id, s)| s != st || releases.contains_key(id))
            })
            .collect();
        let gone = |id: &str| retired.contains(&story_of[id]);
        let full = Claims::new(&claims, &releases);
        let mut floors: BTreeMap<Resource, Floor> = BTreeMap::new();
        for id in claims.keys().filter(|id| gone(id)) {
            for f in &files {
                if let Some(floor) = full.floor_of(id, f) {
                    if floors.get(f).is_none_or(|old| floor.beats(old)) {
                        floors.insert(f.clone(), floor);
                    }
                }
            }
        }
        floors_seen += floors.len();
        let kept: BTreeMap<String, ClaimFact> = claims
            .iter()
            .filter(|(id, _)| !gone(id))
            .map(|(id, c)| (id.clone(), c.clone()))
            .collect();
        let kept_releases: BTreeMap<String, ReleaseFact> = releases
            .iter()
            .filter(|(id, _)| !gone(id))
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect();
        let epoch = Claims::new(&kept, &kept_releases).with_floors(floors.clone());
        for f in &files {
            assert_eq!(epoch.top(f), full.top(f), "{f}: {claims:#?} {releases:#?}");
            assert_eq!(epoch.winner(f), full.winner(f));
            assert_eq!(epoch.next_token(f), full.next_token(f));
        }
        for id in kept.keys() {
            assert_eq!(epoch.holds(id), full.holds(id), "{id}");
        }
        // Built up by updates: half the claims and releases first, the rest after.
        let half = |m: &BTreeMap<String, ClaimFact>, first: bool| -> BTreeMap<String, ClaimFact> {
            m.iter()
                .enumerate()
                .filter(|(i, _)| (i % 2 == 0) == first)
                .map(|(_, (k, v))| (k.clone(), v.clone()))
                .collect()
        };
        let (early, late) = (half(&kept, true), half(&kept, false));
        let early_releases: BTreeMap<String, ReleaseFact> = kept_releases
            .iter()
            .filter(|(id, _)| early.contains_key(*id))
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect();
        let mut updated = Claims::new(&early, &early_releases).with_floors(floors);
        updated.update(
            late.into_iter().collect(),
            kept_releases
                .iter()
                .filter(|(id, _)| !early.contains_key(*id))
                .map(|(id, r)| (id.clone(), Some(r.why)))
                .collect(),
        );
        assert!(
            updated == epoch,
            "an update of a fold with floors is that fold"
        );
    }
    assert!(
        floors_seen > 1000,
        "only {floors_seen} floors: the test retires too little"
    );
}

// --- config -------------------------------------------------------------------------

#[test]
fn the_default_config_satisfies_its_own_rule() {
    assert_eq!(LeaseConfig::default().validate(), Ok(()));
}

#[test]
fn a_ttl_shorter_than_drift_and_message_delays_is_rejected_naming_the_rule() {
    let cfg = LeaseConfig {
        ttl_ms: 3000,
        ..LeaseConfig::default()
    };
    let err = cfg.validate().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "invalid config: lease_ttl_ms = 3000 must be at least \
             2*max_clock_drift_ms + 4*message_timeout_ms = 6000"
        ),
        "{msg}"
    );
    assert!(msg.contains("max_clock_drift_ms = 1000"), "{msg}");
    let exact = LeaseConfig {
        ttl_ms: 6000,
        ..LeaseConfig::default()
    };
    assert_eq!(exact.validate(), Ok(()));
}

#[test]
fn zero_grace_and_overflowing_or_inverted_timings_are_rejected() {
    let zero = LeaseConfig {
        grace_ms: 0,
        ..LeaseConfig::default()
    };
    assert_eq!(
        zero.validate().unwrap_err().to_string(),
        "invalid config: lease_grace_ms = 0 must be greater than 0"
    );
    let huge = LeaseConfig {
        message_timeout_ms: u64::MAX,
        ..LeaseConfig::default()
    };
    assert!(matches!(
        huge.validate(),
        Err(LeaseConfigError::Overflow { .. })
    ));
    let slow_settle = LeaseConfig {
        settle_timeout_ms: 10_000,
        ..LeaseConfig::default()
    };
    let msg = slow_settle.validate().unwrap_err().to_string();
    assert!(msg.contains("settle_timeout_ms = 10000"), "{msg}");
}

mod conflict;
mod expiry;
