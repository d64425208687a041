//! The event timeline on real nodes: it survives a restart (kept on disk beside the
//! document), and a node that joins later is given the history from before it joined —
//! including that of a node already gone — in the same order every node shows.

use crate::common::*;
use libp2p::identity::Keypair;
use mesh_agent::core::model::{Event, EventKind, KnowledgeKind};
use mesh_agent::node::NodeHandle;

/// The node's timeline from the start (time order), once `cond` holds for it.
async fn wait_events(
    n: &NodeHandle,
    what: &str,
    mut cond: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let mut rx = n.observe();
    within(what, 30, async {
        loop {
            let evs: Vec<Event> = n
                .events(0)
                .await
                .expect("node running")
                .into_iter()
                .map(|(_, e)| e)
                .collect();
            if cond(&evs) {
                return evs;
            }
            rx.changed().await.expect("node running");
        }
    })
    .await
}

/// Events every node shares (not a node's own peer joined/dead observations), by id.
fn shared(evs: &[Event]) -> Vec<(String, u64, String)> {
    evs.iter()
        .filter(|e| !matches!(e.kind, EventKind::PeerJoined | EventKind::PeerDead))
        .map(|e| (e.node.clone(), e.seq, e.detail.clone()))
        .collect()
}

fn has(evs: &[Event], detail: &str) -> bool {
    evs.iter().any(|e| e.detail.contains(detail))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_still_shows_the_history_from_before_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = Keypair::generate_ed25519();
    let a = start(dir.path(), &key, Some(psk(7)), None).await;
    for t in ["lesson one", "lesson two"] {
        a.add_knowledge(KnowledgeKind::Pattern, t)
            .await
            .expect("accepted");
    }
    let before = wait_events(&a, "two events", |e| has(e, "lesson two")).await;
    assert_eq!(shared(&before).len(), 2, "{before:?}");
    a.shutdown().await;

    let a = start(dir.path(), &key, Some(psk(7)), None).await;
    let after = a.events(0).await.expect("node running");
    let after: Vec<Event> = after.into_iter().map(|(_, e)| e).collect();
    assert_eq!(
        shared(&after),
        shared(&before),
        "the history from before the restart, same ids, same order"
    );
    // New events do not reuse the old ids and come after them.
    a.add_knowledge(KnowledgeKind::Pattern, "lesson three")
        .await
        .expect("accepted");
    let now = wait_events(&a, "third event", |e| has(e, "lesson three")).await;
    let now = shared(&now);
    assert_eq!(now.len(), 3, "{now:?}");
    assert_eq!(&now[..2], &shared(&before)[..]);
    assert!(now[2].1 > now[1].1, "a restart never reuses an event id");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_later_sees_the_events_from_before_it_joined() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let keys: Vec<_> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    let a = start(dirs[0].path(), &keys[0], Some(psk(7)), None).await;
    let b = start(dirs[1].path(), &keys[1], Some(psk(7)), Some(&a)).await;
    wait_all_alive(&[&a, &b]).await;
    a.add_knowledge(KnowledgeKind::Convention, "from a, early")
        .await
        .expect("accepted");
    b.add_knowledge(KnowledgeKind::Testing, "from b, early")
        .await
        .expect("accepted");
    let both = |e: &[Event]| has(e, "from a, early") && has(e, "from b, early");
    wait_events(&a, "a has both", both).await;
    wait_events(&b, "b has both", both).await;
    // B leaves (its goodbye is an event too): its history now lives on in A's timeline
    // only.
    let b_peer = b.peer_id.to_string();
    b.shutdown().await;
    let on_a = wait_events(&a, "a heard b leave", |e| {
        e.iter()
            .any(|x| x.kind == EventKind::NodeLeft && x.node == b_peer)
    })
    .await;

    // C joins afterwards, knowing only A: gossip does not replay what it missed.
    let c = start(dirs[2].path(), &keys[2], Some(psk(7)), Some(&a)).await;
    let on_c = wait_events(&c, "c has the history", |e| {
        both(e) && e.iter().any(|x| x.kind == EventKind::NodeLeft)
    })
    .await;
    assert_eq!(
        shared(&on_c),
        shared(&on_a),
        "the joiner shows the same history, in the same order"
    );
    for n in [a, c] {
        n.shutdown().await;
    }
}
