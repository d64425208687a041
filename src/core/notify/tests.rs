use super::*;
use crate::core::model::NodeFact;
use crate::core::state::{Doc, View};
use crate::core::trust::Signer;

const DAY: u64 = 86_400_000;

fn node(roles: &[TriggerKind]) -> NodeFact {
    NodeFact {
        roles: roles.iter().map(|k| k.role()).collect(),
        capacity: 1,
        version: String::new(),
        incarnation: 1,
    }
}

/// A view with `peers` that all send every kind, and one story with one attention item
/// of `kind`.
fn view(peers: &[&str], kind: &str) -> View {
    let mut v = View::default();
    for p in peers {
        v.nodes.insert(p.to_string(), node(&TriggerKind::ALL));
    }
    let story: crate::core::state::StoryView = serde_json::from_value(serde_json::json!({
        "key": "S-0001@abcdef", "id": "S-0001", "status": "blocked",
        "depends_on_ids": [], "phases_done": [], "round": 0, "history": [],
        "attempts": 3, "failures": [], "priority": 1,
        "fact": { "number": 1, "created_by": "A", "created_at_ms": 1_000, "title": "Parse",
                  "priority": 1 },
        "attention": [{ "id": format!("{kind}@implement.0"), "kind": kind,
                        "detail": "implement failed 3 attempts", "since_ms": 5_000,
                        "holds": null, "actions": [] }],
    }))
    .expect("story view");
    v.stories.insert(story.key.clone(), Box::new(story));
    v
}

fn sender() -> Notifier {
    Notifier::new(NotifyConfig {
        kinds: TriggerKind::ALL.into_iter().collect(),
        warmup_ms: 1_000,
        max_age_ms: DAY,
        ..Default::default()
    })
}

/// `due` right after the warm-up (at 1.2 s), at wall time 10 s, with `dead` peers dead.
fn due_on(n: &mut Notifier, v: &View, me: &str, dead: &[&str]) -> Vec<Trigger> {
    for t in [0, 600, 1_200] {
        n.tick(t);
    }
    n.due(v, me, 1_200, 10_000, true, &[], |p| !dead.contains(&p))
}

#[test]
fn every_node_picks_the_same_owner_and_owners_spread() {
    let peers = ["A", "B", "C", "D", "E"];
    let mut owners = BTreeMap::new();
    for i in 0..200 {
        let id = format!("attention/S-{i}@x/blocked@implement.0/1");
        let picks: BTreeSet<&str> = peers
            .iter()
            .map(|me| {
                let v = view(&peers, "blocked");
                let c = candidates(&v, TriggerKind::StoryBlocked, me, true, |_| true);
                owner(&id, c).expect("an owner").to_string()
            })
            .map(|o| *peers.iter().find(|p| **p == o).expect("a peer"))
            .collect();
        assert_eq!(picks.len(), 1, "every node picks one owner for {id}");
        *owners.entry(picks.into_iter().next()).or_insert(0) += 1;
    }
    assert_eq!(owners.len(), 5, "every node owns some: {owners:?}");
}

#[test]
fn exactly_one_node_sends_and_the_next_by_hash_takes_over_when_it_dies() {
    let peers = ["A", "B", "C", "D", "E"];
    let v = view(&peers, "blocked");
    let sent: Vec<(&str, Vec<Trigger>)> = peers
        .iter()
        .map(|me| (*me, due_on(&mut sender(), &v, me, &[])))
        .collect();
    let senders: Vec<&str> = sent
        .iter()
        .filter(|(_, d)| d.iter().any(|t| t.kind == TriggerKind::StoryBlocked))
        .map(|(me, _)| *me)
        .collect();
    assert_eq!(senders.len(), 1, "one owner: {senders:?}");
    let first = senders[0];
    let t = &sent.iter().find(|(me, _)| *me == first).expect("owner").1[0];
    assert_eq!(t.id, "attention/S-0001@abcdef/blocked@implement.0/5000");
    assert_eq!(t.story.as_deref(), Some("S-0001"));
    // The owner dies: exactly one of the others takes over, the same for all of them.
    let takers: Vec<&str> = peers
        .iter()
        .filter(|p| **p != first)
        .filter(|me| {
            due_on(&mut sender(), &v, me, &[first])
                .iter()
                .any(|x| x.id == t.id)
        })
        .copied()
        .collect();
    assert_eq!(takers.len(), 1, "one takes over: {takers:?}");
    assert_ne!(takers[0], first);
    // A node that sends no such kind owns none.
    let mut v2 = v.clone();
    v2.nodes
        .insert(takers[0].to_string(), node(&[TriggerKind::Digest]));
    let c = candidates(&v2, TriggerKind::StoryBlocked, "A", false, |p| p != first);
    assert!(!c.contains(&takers[0]), "{c:?}");
}

#[test]
fn a_notified_trigger_is_never_due_again_anywhere_and_failures_back_off() {
    let v = view(&["A"], "low_confidence");
    let mut n = sender();
    let due = due_on(&mut n, &v, "A", &[]);
    let t = due
        .iter()
        .find(|t| t.kind == TriggerKind::NeedsAttention)
        .expect("due")
        .clone();
    // In flight: not handed out twice.
    assert!(n
        .due(&v, "A", 1_201, 10_000, true, &[], |_| true)
        .is_empty());
    // A 500: retried, but not before the backoff (1 s base, jitter ≤ 25 %).
    let r = n.finished(
        &t.id,
        SendResult::Failed("HTTP 500".into()),
        "A",
        1_201,
        10_000,
        7,
    );
    assert_eq!(r, None);
    assert!(n
        .status()
        .last_error
        .is_some_and(|e| e.contains("HTTP 500")));
    assert!(!n
        .due(&v, "A", 1_700, 10_000, true, &[], |_| true)
        .iter()
        .any(|x| x.id == t.id));
    let again = n.due(&v, "A", 2_300, 10_000, true, &[], |_| true);
    assert!(
        again.iter().any(|x| x.id == t.id),
        "retried after the backoff"
    );
    let fact = n
        .finished(&t.id, SendResult::Delivered, "A", 2_400, 11_000, 0)
        .expect("a record");
    assert_eq!(
        (fact.attempts, fact.outcome, fact.by.as_str(), fact.at_ms),
        (2, Outcome::Delivered, "A", 11_000)
    );
    assert_eq!(fact.story, "S-0001@abcdef");
    // Recorded: due nowhere, whoever owns it now.
    let mut v2 = v.clone();
    v2.notified.insert(notified_hash(&t.id), fact);
    for me in ["A", "B"] {
        let mut other = sender();
        assert!(!due_on(&mut other, &v2, me, &[])
            .iter()
            .any(|x| x.id == t.id));
    }
}

#[test]
fn nothing_is_sent_during_the_warm_up_too_old_or_unowned() {
    let v = view(&["A"], "security");
    let mut n = sender();
    n.tick(0);
    assert!(
        n.due(&v, "A", 50, 10_000, true, &[], |_| true).is_empty(),
        "warming up"
    );
    assert_eq!(n.status().pending, 1, "the security item is pending");
    assert!(
        n.due(&v, "A", 1_100, 10_000, false, &[], |_| true)
            .is_empty(),
        "joining"
    );
    let due = n.due(&v, "A", 1_100, 10_000, true, &[], |_| true);
    assert!(due.iter().any(|t| t.kind == TriggerKind::SecurityConcern));
    // A day and more later, the item is too old to send (a joiner does not replay).
    let mut late = sender();
    late.tick(0);
    let old = late.due(&v, "A", 1_100, 5_000 + DAY + 1, true, &[], |_| true);
    assert!(!old.iter().any(|t| t.kind == TriggerKind::SecurityConcern));
    // A node with no sinks sends nothing.
    let mut none = Notifier::new(NotifyConfig::default());
    none.tick(0);
    assert!(none
        .due(&v, "A", 10_000, 10_000, true, &[], |_| true)
        .is_empty());
}

#[test]
fn a_digest_per_period_and_its_figures() {
    let period = 2_000;
    let mut v = View::default();
    let mut s: crate::core::state::StoryView = serde_json::from_value(serde_json::json!({
        "key": "S-0001@abcdef", "id": "S-0001", "status": "done",
        "depends_on_ids": [], "phases_done": [], "round": 0, "history": [],
        "attempts": 0, "failures": [], "priority": 1,
        "fact": { "number": 1, "created_by": "A", "created_at_ms": 4_000, "title": "Parse",
                  "priority": 1 },
    }))
    .expect("story view");
    s.more.merged = Some(Box::new(crate::core::model::MergeFact {
        story: s.key.to_string(),
        round: 0,
        claim: "A-1".into(),
        token: 1,
        holder: "A".into(),
        commit: "c".into(),
        written_at_ms: 5_000,
    }));
    v.stories.insert(s.key.clone(), Box::new(s));
    let d = digest(&v, 2, period);
    assert_eq!(d.id, "digest/2");
    assert_eq!(d.at_ms, 6_000);
    let stats = d.digest.expect("figures");
    assert_eq!((stats.completed, stats.average_ms), (1, Some(1_000)));
    assert_eq!(digest(&v, 1, period).digest.expect("figures").completed, 0);
    // The digest due at a wall time is the last period that ended.
    let n = Notifier::new(NotifyConfig {
        digest_period_ms: period,
        ..Default::default()
    });
    let ids = |wall: u64| -> Vec<String> {
        n.derive(&v, wall, &[])
            .into_iter()
            .filter(|t| t.kind == TriggerKind::Digest)
            .map(|t| t.id)
            .collect()
    };
    assert_eq!(ids(6_000), ["digest/2"]);
    assert_eq!(ids(7_999), ["digest/2"]);
    assert_eq!(ids(8_000), ["digest/3"]);
    assert!(ids(1_999).is_empty(), "no period ended yet");
    // Sent with its figures (computed only then).
    let mut n = Notifier::new(NotifyConfig {
        kinds: [TriggerKind::Digest].into_iter().collect(),
        digest_period_ms: period,
        warmup_ms: 0,
        ..Default::default()
    });
    n.tick(0);
    let due = n.due(&v, "A", 10, 6_500, true, &[], |_| true);
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].id.as_str(), due[0].at_ms), ("digest/2", 6_000));
    assert_eq!(due[0].digest.as_ref().map(|d| d.completed), Some(1));
    assert!(due[0].detail.contains("completed 1"), "{}", due[0].detail);
}

#[test]
fn budget_and_git_triggers_go_through_the_same_pipeline() {
    let v = view(&["A"], "approval");
    let mut n = sender();
    n.tick(0);
    let ev = Event {
        node: "B".into(),
        seq: 7001,
        at_ms: 9_000,
        kind: EventKind::GitUnavailable,
        story: String::new(),
        phase: None,
        round: 0,
        detail: "3 jobs in a row".into(),
    };
    n.read_events(&[
        (4, ev.clone()),
        (
            5,
            Event {
                kind: EventKind::Claimed,
                ..ev
            },
        ),
    ]);
    assert_eq!(n.events_pos(), 5);
    let b = budget_exhausted("mesh/2026-12-01", None, "spent 10.00 of 10.00", 9_500);
    let due = n.due(&v, "A", 1_100, 10_000, true, &[b], |_| true);
    let kinds: BTreeSet<TriggerKind> = due.iter().map(|t| t.kind).collect();
    assert!(kinds.contains(&TriggerKind::BudgetExhausted), "{kinds:?}");
    assert!(
        due.iter().any(|t| t.id == "git_unavailable/B/7001"),
        "{due:?}"
    );
    assert!(!due
        .iter()
        .any(|t| t.id.contains("7001") && t.kind != TriggerKind::GitUnavailable));
    // A refusal for good is recorded too, so it is never retried.
    let fact = n
        .finished(
            "budget/mesh/2026-12-01",
            SendResult::Refused("HTTP 404".into()),
            "A",
            300,
            10_100,
            0,
        )
        .expect("recorded");
    assert_eq!(fact.outcome, Outcome::Refused);
}

#[test]
fn backoff_doubles_to_its_cap_with_bounded_jitter() {
    assert_eq!(backoff_ms(1, 1_000, 60_000, 0), 1_000);
    assert_eq!(backoff_ms(2, 1_000, 60_000, 0), 2_000);
    assert_eq!(backoff_ms(3, 1_000, 60_000, 0), 4_000);
    assert_eq!(backoff_ms(30, 1_000, 60_000, 0), 60_000);
    assert_eq!(backoff_ms(u32::MAX, u64::MAX, u64::MAX, u64::MAX), u64::MAX);
    for j in [0, 1, 249, 250, 251, u64::MAX] {
        let w = backoff_ms(1, 1_000, 60_000, j);
        assert!((1_000..=1_250).contains(&w), "{w}");
    }
}

#[test]
fn a_notified_fact_counts_only_from_its_sender_under_its_hash() {
    let mut doc = Doc::new([1; 16]).with_test_names();
    let fact = NotifiedFact {
        id: "digest/7".into(),
        kind: TriggerKind::Digest,
        story: String::new(),
        by: "A".into(),
        at_ms: 1,
        attempts: 1,
        outcome: Outcome::Delivered,
    };
    assert!(doc.put_notified(&fact).expect("written"));
    assert!(!doc.put_notified(&fact).expect("no second write"));
    assert!(doc.view().notified.contains_key(&notified_hash("digest/7")));
    // B forges A's record, and A's record under another id's key: neither counts.
    let forged = NotifiedFact {
        id: "digest/8".into(),
        ..fact.clone()
    };
    let json = serde_json::to_string(&forged).expect("json");
    let key = format!("notified/{}", notified_hash("digest/8"));
    doc.raw_put(&key, Signer::for_test("B").seal(&key, &json));
    let wrong = format!("notified/{}", notified_hash("digest/9"));
    doc.raw_put(&wrong, Signer::for_test("A").seal(&wrong, &json));
    let v = doc.view();
    assert_eq!(v.notified.len(), 1, "{:?}", v.notified);
    assert_eq!(v.malformed, 2);
}
