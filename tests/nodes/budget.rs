//! Money on a live mesh (issue 17): four nodes on loopback, a real git origin, the demo
//! backlog and the `sim` executor (which reports realistic token counts and costs). An
//! operator sets a daily budget split into the four allowances, then the mesh is cut in
//! two: each side spends its own allowances and stops, out of allowance and saying so,
//! and when it heals the mesh has spent no more than the budget. A story with a cost
//! limit is held for a human once it spends it.

use crate::common::*;
use libp2p::identity::Keypair;
use mesh_agent::config::Config;
use mesh_agent::core::model::AlertKind;
use mesh_agent::core::state::{day_of, Op, Target, View};
use mesh_agent::core::trust::Signer;
use mesh_agent::demo;
use mesh_agent::node::NodeHandle;

/// The daily budget: about a fifth of what the demo backlog costs.
const DAILY: u64 = 6_000_000;
/// What a job reserves (the default).
const RESERVE: u64 = 1_000_000;

async fn command(node: &NodeHandle, key: &Signer, target: Target, op: Op) -> String {
    operator_command(node, key, target, op)
        .await
        .expect("command written")
}

fn today() -> u64 {
    day_of(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_mesh_stops_at_its_allowances_and_a_story_at_its_limit() {
    let tmp = tempfile::tempdir().expect("tmp");
    let origin = tmp.path().join("origin.git");
    demo::create_origin(&origin).expect("origin");
    let op = Signer::from_key(ed25519_dalek::SigningKey::from_bytes(&rand::random()));
    let operator = op.author().to_string();
    let keys: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
    let ids: Vec<String> = keys
        .iter()
        .map(|k| k.public().to_peer_id().to_string())
        .collect();
    let cfg = |c: &mut Config| {
        fast_leases(c);
        c.capacity = 1;
        c.origin = origin.display().to_string();
        c.test_command = vec!["sh".into(), "test.sh".into()];
        c.operators = vec![operator.clone()];
    };
    let dir = |i: usize| tmp.path().join(format!("n{i}"));
    let first = start_with(&dir(0), &keys[0], None, cfg, None).await;
    admit_all(&first, &op, &ids).await;
    let mut nodes = vec![first];
    for (i, key) in keys.iter().enumerate().skip(1) {
        nodes.push(start_with(&dir(i), key, nodes.first(), cfg, None).await);
    }
    let refs: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all_alive(&refs).await;
    // Nothing runs until the budget and the backlog are in: the mesh is paused.
    command(
        &nodes[0],
        &op,
        Target::All,
        Op::Pause {
            reason: "loading".into(),
        },
    )
    .await;
    // (The split covers every admitted node.)
    wait_view(&nodes[3], "every admission arrived", 30, |v| {
        v.roster.admitted.len() == ids.len()
    })
    .await;
    let set = command(
        &nodes[3],
        &op,
        Target::All,
        Op::Budget {
            daily_micro_usd: Some(DAILY),
            shares: Default::default(),
        },
    )
    .await;
    assert!(set.contains("$6.00 a day in 4 allowances"), "{set}");
    for s in demo::backlog() {
        nodes[0].add_story(s).await.expect("story added");
    }
    wait_converged(&refs).await;
    // S-0001's limit is 10 cents: its first job (research, 12 to 37 cents) passes it.
    command(
        &nodes[1],
        &op,
        Target::Story {
            story: "S-0001".into(),
        },
        Op::Limit {
            micro_usd: Some(100_000),
        },
    )
    .await;
    wait_converged(&refs).await;

    // Cut {n0, n1} from {n2, n3}, wait until each side sees the other dead, then resume.
    let (left, right) = ([0usize, 1], [2usize, 3]);
    cut(&nodes, &left, &right).await;
    command(&nodes[0], &op, Target::All, Op::Resume).await;
    command(&nodes[2], &op, Target::All, Op::Resume).await;

    // Each side works until its allowances run out, and says so.
    let day = today();
    for (i, node) in nodes.iter().enumerate() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
        loop {
            let s = node.status().await.expect("status");
            if s.spend.short.is_some() && s.held.is_empty() {
                let why = s.spend.short.unwrap_or_default();
                assert!(why.contains("out of allowance"), "{why}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {i} never ran out of allowance: {:?}, held {:?}, claims {:?}, stories {:?}, waiting {:?}, clock {:?}",
                s.spend,
                s.held,
                s.claims,
                s.story_counts,
                s.stories.iter().map(|x| format!("{} {} {:?}", x.id, x.status, x.waiting)).collect::<Vec<_>>(),
                s.clock
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    let charged = |v: &View, side: &[usize]| -> u64 {
        side.iter()
            .map(|&i| {
                let b = v.steering.budget.as_ref();
                v.ledger.allowance(b, &ids[i], day).charged
            })
            .sum()
    };
    for (side, other) in [(left, right), (right, left)] {
        let v = nodes[side[0]].view().await.expect("view");
        let spent = charged(&v, &side);
        // A side spends at most its two allowances ($3), and no node goes below zero.
        assert!(spent <= DAILY / 2, "side {side:?} spent {spent}");
        assert!(
            spent > DAILY / 2 - 2 * RESERVE,
            "side {side:?} stopped early: {spent}"
        );
        for &i in &side {
            let a = v.ledger.allowance(v.steering.budget.as_ref(), &ids[i], day);
            assert!(
                a.balance >= 0 && a.balance < RESERVE as i64,
                "node {i}: {a:?}"
            );
        }
        let crossed = v.ledger.gives.keys().any(|(from, to, _, _)| {
            other.iter().any(|&j| ids[j] == *from) || other.iter().any(|&j| ids[j] == *to)
        });
        assert!(!crossed, "a gift crossed the partition");
        assert_eq!(charged(&v, &other), 0, "{side:?} saw the other side spend");
    }

    // The story over its limit waits for a human.
    let v = nodes[0].view().await.expect("view");
    let s1 = v
        .stories
        .values()
        .find(|s| s.id == "S-0001")
        .expect("S-0001");
    assert_ne!(s1.status, mesh_agent::core::model::StoryStatus::Merged);
    if s1.usage().cost_micro_usd > 0 {
        assert!(
            s1.more
                .attention
                .iter()
                .any(|a| a.kind == AlertKind::Budget)
                && s1.held,
            "{:?}",
            s1.more.attention
        );
    }

    // Healed, the mesh agrees it spent no more than the budget.
    heal(&nodes, &left, &right).await;
    wait_converged(&refs).await;
    let v = nodes[3].view().await.expect("view");
    let total = v.ledger.charged_on(day);
    assert!(total <= DAILY, "the mesh spent {total} of {DAILY}");
    assert!(total > DAILY - 4 * RESERVE, "the mesh spent only {total}");
    let status = nodes[3].status().await.expect("status");
    assert_eq!(status.spend.daily_micro_usd, Some(DAILY));
    for n in nodes {
        n.shutdown().await;
    }
}
