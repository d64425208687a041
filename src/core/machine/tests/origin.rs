//! The origin as the core sees it: outages, probes, and work dropped once its story is
//! finished.

use super::*;

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
    assert!(a.view().stories[key.as_str()].more.failures.is_empty());
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
    a.pushed.push((key.to_string(), "A-stale".into()));
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
    assert!(a.view().stories[&key].more.merged.is_some());
    for _ in 0..3 {
        now += 100;
        a.tick(now, now);
        collect(&mut a, &mut drops);
    }
    assert_eq!(drops, vec![key], "once per story, whatever pushed it");
    assert!(a.pushed.is_empty());
}
