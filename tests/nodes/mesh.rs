//! Real nodes on loopback in one process: discovery from one bootstrap peer, convergence
//! under concurrent writes, failure detection, crash recovery from the data dir, and the
//! private-network key as the admission gate.

use crate::common::*;
use futures::future::join_all;
use libp2p::identity::Keypair;
use mesh_agent::core::model::NewStory;
use mesh_agent::node::NodeHandle;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn story(title: String) -> NewStory {
    NewStory {
        title,
        ..Default::default()
    }
}

async fn mesh(n: usize, dirs: &[tempfile::TempDir], keys: &[Keypair]) -> Vec<NodeHandle> {
    let first = start(dirs[0].path(), &keys[0], Some(psk(7)), None).await;
    let mut nodes = vec![first];
    for i in 1..n {
        let node = start(dirs[i].path(), &keys[i], Some(psk(7)), Some(&nodes[0])).await;
        nodes.push(node);
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_bootstrapped_from_one_peer_converge_on_concurrent_writes() {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let keys: Vec<_> = (0..5).map(|_| Keypair::generate_ed25519()).collect();
    let nodes = mesh(5, &dirs, &keys).await;
    let refs: Vec<&NodeHandle> = nodes.iter().collect();
    // Only node 1 was given as bootstrap: everyone learning everyone is discovery.
    wait_all_alive(&refs).await;

    let writes = nodes.iter().enumerate().flat_map(|(i, n)| {
        (0..4).map(move |j| n.add_story(story(format!("story {j} from node {i}"))))
    });
    let written = join_all(writes).await;
    let written: Vec<_> = written
        .into_iter()
        .map(|r| r.expect("write accepted"))
        .collect();
    assert_eq!(written.len(), 20);

    wait_converged(&refs).await;
    let views = join_all(nodes.iter().map(|n| n.view())).await;
    let first = views[0].clone().expect("view");
    for v in &views[1..] {
        assert_eq!(
            v.as_ref().expect("view"),
            &first,
            "every node derives the same view"
        );
    }
    assert_eq!(first.stories.len(), 20);
    let ids: BTreeSet<&str> = first.stories.values().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids.len(),
        20,
        "display ids are unique even when allocated concurrently"
    );
    for w in &written {
        assert!(
            first.stories.contains_key(w.key.as_str()),
            "{} missing",
            w.key
        );
    }
    for n in nodes {
        n.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_marked_dead_then_recovers_its_stories_and_resyncs() {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let keys: Vec<_> = (0..5).map(|_| Keypair::generate_ed25519()).collect();
    let mut nodes = mesh(5, &dirs, &keys).await;
    wait_all_alive(&nodes.iter().collect::<Vec<_>>()).await;

    let victim = 3;
    for i in 0..3 {
        nodes[victim]
            .add_story(story(format!("victim story {i}")))
            .await
            .expect("write accepted");
    }
    wait_converged(&nodes.iter().collect::<Vec<_>>()).await;
    let before = nodes[victim].view().await.expect("view");

    // Drop it with no goodbye.
    let dead = nodes.remove(victim);
    let dead_id = dead.peer_id.to_string();
    dead.kill().await;
    let t0 = Instant::now();
    for n in &nodes {
        within(
            "dead detection",
            30,
            n.wait_for(|o| o.dead.contains(&dead_id)),
        )
        .await;
    }
    let took = t0.elapsed();
    // Generous bound: dead_after plus two heartbeat periods of detection slack and
    // scheduling noise on a loaded 2-core machine.
    assert!(
        took <= Duration::from_millis(DEAD_AFTER_MS + 2_000),
        "dead after {took:?}, bound {DEAD_AFTER_MS} ms"
    );

    // The mesh moves on without it.
    nodes[0]
        .add_story(story("written while node 4 was down".into()))
        .await
        .expect("write accepted");
    nodes[2]
        .add_story(story("also written while down".into()))
        .await
        .expect("write accepted");
    wait_converged(&nodes.iter().collect::<Vec<_>>()).await;

    // Restart from its data dir with the same identity.
    let back = start(
        dirs[victim].path(),
        &keys[victim],
        Some(psk(7)),
        Some(&nodes[0]),
    )
    .await;
    let recovered = back.view().await.expect("view");
    for key in before.stories.keys() {
        assert!(
            recovered.stories.contains_key(key),
            "lost {key} across the crash"
        );
    }
    nodes.insert(victim, back);
    let refs: Vec<&NodeHandle> = nodes.iter().collect();
    wait_converged(&refs).await;
    let v = nodes[victim].view().await.expect("view");
    assert_eq!(v.stories.len(), 5, "resynced what it missed");
    for (i, n) in nodes.iter().enumerate() {
        if i != victim {
            within("revival", 30, n.wait_for(|o| o.alive.contains(&dead_id))).await;
        }
    }
    for n in nodes {
        n.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_or_no_mesh_key_is_refused_and_the_mesh_is_unaffected() {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let keys: Vec<_> = (0..5).map(|_| Keypair::generate_ed25519()).collect();
    let nodes = mesh(3, &dirs, &keys).await;
    let refs: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all_alive(&refs).await;

    let wrong = start(dirs[3].path(), &keys[3], Some(psk(9)), Some(&nodes[0])).await;
    let none = start(dirs[4].path(), &keys[4], None, Some(&nodes[0])).await;
    within(
        "wrong-key handshake failure",
        30,
        wrong.wait_for(|o| o.handshake_failures > 0),
    )
    .await;
    within(
        "no-key handshake failure",
        30,
        none.wait_for(|o| o.handshake_failures > 0),
    )
    .await;
    // The bootstrap peer saw (and logged) the refused handshakes too.
    within(
        "refusals counted by the bootstrap peer",
        30,
        nodes[0].wait_for(|o| o.handshake_failures >= 2),
    )
    .await;

    nodes[1]
        .add_story(story("only for the mesh".into()))
        .await
        .expect("write accepted");
    wait_converged(&refs).await;
    let outsiders = [wrong.peer_id.to_string(), none.peer_id.to_string()];
    for n in &nodes {
        let o = observation(n);
        assert_eq!(o.alive.len(), 2, "mesh members still see each other");
        for x in &outsiders {
            assert!(
                !o.alive.contains(x) && !o.dead.contains(x),
                "outsider admitted"
            );
        }
        assert_eq!(n.view().await.expect("view").stories.len(), 1);
    }
    for x in [&wrong, &none] {
        let o = observation(x);
        assert_eq!(o.connected, 0, "outsider holds no connection");
        assert!(o.alive.is_empty());
        assert!(x.view().await.expect("view").stories.is_empty());
    }
    for n in nodes.into_iter().chain([wrong, none]) {
        n.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_in_process_a_hundred_times_keeps_its_data_and_never_finds_its_store_locked(
) {
    // An in-process restart reopens the store the instant the previous node let go of it
    // (sled lets go of its own file lock a moment after the drop, later still when a
    // flush was in flight): every start must succeed, and every acknowledged write must
    // be there after it. Half the stops are clean; the other half kill the node while
    // writes (and their flushes) are still in flight.
    use mesh_agent::node::ApiRequest;
    let dir = tempfile::tempdir().unwrap();
    let key = Keypair::generate_ed25519();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    for i in 0..100usize {
        let node = mesh_agent::node::start(mesh_agent::node::NodeOptions {
            config: test_config(None),
            data_dir: Some(dir.path().to_path_buf()),
            keypair: key.clone(),
            psk: Some(psk(7)),
            passive: false,
            executor: None,
        })
        .await
        .unwrap_or_else(|e| panic!("start {i} after an in-process restart: {e}"));
        let view = node.view().await.expect("view");
        for k in &acked {
            assert!(
                view.stories.contains_key(k.as_str()),
                "start {i}: acknowledged {k} lost"
            );
        }
        let mut answers = Vec::new();
        for j in 0..3 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let req = ApiRequest::AddStory(story(format!("run {i} write {j}")), tx);
            node.api().send(req).await.expect("node running");
            answers.push(rx);
        }
        if i % 2 == 0 {
            for rx in answers {
                let s = rx.await.expect("answered").expect("write accepted");
                acked.insert(s.key.to_string());
            }
            node.shutdown().await;
        } else {
            // Kill as soon as the first write is acknowledged: the others may be
            // mid-flush. Whatever was acknowledged must survive.
            let mut answers = answers.into_iter();
            if let Some(first) = answers.next() {
                let s = first.await.expect("answered").expect("write accepted");
                acked.insert(s.key.to_string());
            }
            node.kill().await;
            for rx in answers {
                if let Ok(Ok(s)) = rx.await {
                    acked.insert(s.key.to_string());
                }
            }
        }
    }
    assert!(acked.len() >= 200, "most writes were acknowledged");
}

/// Heartbeats are gossip, never document: an idle mesh's history does not grow with time
/// (docs/DESIGN.md §1.5). Three nodes that hold a story but claim no work keep exactly
/// the same document heads while every node receives many heartbeats from the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_mesh_writes_nothing_while_heartbeats_flow() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let keys: Vec<_> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    let nodes = mesh(3, &dirs, &keys).await;
    let refs: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all_alive(&refs).await;
    // test_config claims no work: the story stays ready, nothing runs.
    nodes[0]
        .add_story(story("idle backlog".into()))
        .await
        .expect("story added");
    wait_converged(&refs).await;
    let before: Vec<[u8; 32]> = nodes.iter().map(|n| observation(n).heads_digest).collect();
    let heads_before = nodes[0].status().await.expect("status").heads;

    // Each node hears at least 20 more beats (10 from each peer, at least) while idle.
    for n in &nodes {
        let from = observation(n).heartbeats_received;
        within("twenty more heartbeats", 60, async {
            n.wait_for(|o| o.heartbeats_received >= from + 20)
                .await
                .expect("node running")
        })
        .await;
    }

    let after: Vec<[u8; 32]> = nodes.iter().map(|n| observation(n).heads_digest).collect();
    assert_eq!(
        before, after,
        "an idle mesh's document changed while heartbeats flowed"
    );
    assert_eq!(
        nodes[0].status().await.expect("status").heads,
        heads_before,
        "the document's heads moved on an idle mesh"
    );
    for n in nodes {
        n.shutdown().await;
    }
}
