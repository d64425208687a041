//! Never alone, never holding on: a restarted bootstrap node (no bootstrap address of its
//! own) finds its mesh again through the peers it remembers and claims nothing before it
//! has synced with it; a holder stopped cleanly hands its claims back, so another node
//! takes the work at once instead of after the lease and the dead timeout.

use crate::common::*;
use libp2p::identity::Keypair;
use mesh_agent::config::Config;
use mesh_agent::core::lease::{ReleaseReason, Resource};
use mesh_agent::core::model::{EventKind, NewStory, StoryStatus};
use mesh_agent::node::NodeHandle;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

fn story(title: String) -> NewStory {
    NewStory {
        title,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_bootstrap_node_rejoins_through_remembered_peers_and_claims_nothing_before_it_synced(
) {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let keys: Vec<_> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    let tweak = |c: &mut Config| {
        fast_leases(c);
        c.sim_phase_ms = 150;
        // A loaded machine can starve a node for a second; the lease must not expire
        // under a live holder.
        c.lease_ttl_ms = 4_000;
        // Long enough that only a sync, never the wait running out, lets it claim.
        c.join_wait_ms = 60_000;
    };
    // Node 0 is the bootstrap node: it has no bootstrap address of its own.
    let boot = start_with(dirs[0].path(), &keys[0], None, tweak, None).await;
    let mut others = Vec::new();
    for i in 1..3 {
        others.push(start_with(dirs[i].path(), &keys[i], Some(&boot), tweak, None).await);
    }
    let mut all: Vec<&NodeHandle> = vec![&boot];
    all.extend(others.iter());
    wait_all_alive(&all).await;
    for i in 0..12 {
        boot.add_story(story(format!("story {i}")))
            .await
            .expect("write accepted");
    }
    // Work is under way everywhere, then the bootstrap node dies.
    wait_view(&others[0], "a story merged", 60, |v| {
        v.stories.values().any(|s| s.status == StoryStatus::Merged)
    })
    .await;
    let boot_id = boot.peer_id;
    boot.kill().await;

    // It restarts with the same data dir and still no bootstrap address (and a new
    // port: the others could not redial it even if they tried).
    let t0 = Instant::now();
    let boot = start_with(dirs[0].path(), &keys[0], None, tweak, None).await;
    assert_eq!(boot.peer_id, boot_id);
    let joined = within("the restarted node connects and syncs", 30, async {
        boot.wait_for(|o| o.connected >= 1 && o.joined_at_ms.is_some())
            .await
            .expect("node running")
    })
    .await;
    let rejoin = t0.elapsed();
    eprintln!("rejoin (start to connected and synced): {rejoin:?}");
    let joined_at = joined.joined_at_ms.expect("joined");

    // The mesh finishes the backlog, the restarted node included.
    wait_view(&others[0], "every story merged", 180, |v| {
        v.stories.values().all(|s| s.status == StoryStatus::Merged)
    })
    .await;
    let mut all: Vec<&NodeHandle> = vec![&boot];
    all.extend(others.iter());
    wait_converged(&all).await;

    // Nothing was claimed before the sync: no run, no claim event.
    let runs = boot.runs().await.expect("running");
    for r in &runs {
        assert!(
            r.claimed_ms >= joined_at,
            "claimed at {} ms, before joining at {joined_at} ms: {r:?}",
            r.claimed_ms
        );
    }
    let events = boot.events(0).await.expect("running");
    let status = boot.status().await.expect("running");
    assert_eq!(status.joining_ms_left, None);
    assert_eq!(status.joined_at_ms, Some(joined_at));
    assert!(!status.clock.skewed, "{:?}", status.clock);
    eprintln!(
        "restarted node: {} runs after joining, {} events",
        runs.len(),
        events
            .iter()
            .filter(|(_, e)| e.kind == EventKind::Claimed)
            .count()
    );
    boot.kill().await;
    for n in others {
        n.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_shut_down_cleanly_hands_its_claim_back_and_another_node_takes_it_at_once() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let keys: Vec<_> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (cancelled_tx, mut cancelled) = mpsc::unbounded_channel();
    // Leases and death take 30 s here: a takeover within the test's net can only come
    // from the holder's release.
    let tweak = |c: &mut Config| {
        fast_leases(c);
        c.lease_ttl_ms = 30_000;
        c.dead_after_ms = 30_000;
    };
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for i in 0..3 {
        let exec = Arc::new(Holding {
            node: keys[i].public().to_peer_id().to_string(),
            started: started_tx.clone(),
            cancelled: cancelled_tx.clone(),
        });
        let n = start_with(dirs[i].path(), &keys[i], nodes.first(), tweak, Some(exec)).await;
        nodes.push(n);
    }
    wait_all_alive(&nodes.iter().collect::<Vec<_>>()).await;
    let key = nodes[0]
        .add_story(story("held".into()))
        .await
        .expect("write accepted")
        .key;
    wait_converged(&nodes.iter().collect::<Vec<_>>()).await;

    // Every node works (past its warm-up): one claims the first phase and runs it
    // (forever); the others wait for the resource.
    let (holder_id, first) = within("a node starts the first phase", 30, started.recv())
        .await
        .expect("a job");
    let ix = nodes
        .iter()
        .position(|n| n.peer_id.to_string() == holder_id)
        .expect("a node of ours");
    let holder = nodes.remove(ix);

    // A clean stop: the job is cancelled, the claim released, and another node takes it.
    let t0 = Instant::now();
    holder.shutdown().await;
    let stopped = t0.elapsed();
    let dropped = within("the held job is cancelled", 10, cancelled.recv())
        .await
        .expect("a cancellation");
    assert_eq!(dropped, first.claim);
    let (taker, next) = within("another node takes the work", 20, started.recv())
        .await
        .expect("a job");
    let taken = t0.elapsed();
    eprintln!("shutdown returned after {stopped:?}; work taken over after {taken:?}");
    assert_ne!(taker, holder_id);
    assert_eq!((&next.story, next.phase), (&first.story, first.phase));
    assert!(
        next.token > first.token,
        "{} <= {}",
        next.token,
        first.token
    );

    // Every view: the old claim released as a shutdown, not counted as an attempt.
    for n in &nodes {
        let res = Resource::story(&key, first.phase).expect("resource");
        // A node may briefly see its own losing claim as the winner before the taker's
        // (a tie on the token) reaches it: wait until the view has settled on the claim
        // that runs; the safety net fails the test if it never does.
        let v = wait_view(n, "the release and the taker's claim winning", 10, |v| {
            let c = v.claims();
            c.release_reason(&first.claim).is_some() && c.winner(&res) == Some(next.claim.as_str())
        })
        .await;
        assert_eq!(
            v.claims().release_reason(&first.claim),
            Some(ReleaseReason::Shutdown)
        );
    }
    assert_eq!(
        next.attempt, first.attempt,
        "the shutdown was not an attempt"
    );
    for n in nodes {
        n.kill().await;
    }
}
