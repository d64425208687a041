//! The roster on live nodes: in a mesh with an operator, an operator's revoke cuts a node
//! off, its claim is taken over, and what it writes afterwards never counts — not even
//! on a node that took it in before it heard of the revoke.

use crate::common::*;
use libp2p::identity::Keypair;
use mesh_agent::config::Config;
use mesh_agent::core::lease::Resource;
use mesh_agent::core::model::NewStory;
use mesh_agent::core::state::{admit_key, revoke_key, RosterFact};
use mesh_agent::core::trust::Signer;
use mesh_agent::node::NodeHandle;
use std::sync::Arc;
use tokio::sync::mpsc;

fn story(title: &str) -> NewStory {
    NewStory {
        title: title.into(),
        ..Default::default()
    }
}

/// The operator's sealed roster fact about `peer`.
fn sealed(op: &Signer, admit: bool, peer: &str) -> (String, String) {
    let key = if admit {
        admit_key(peer)
    } else {
        revoke_key(peer)
    };
    let json = serde_json::to_string(&RosterFact {
        peer: peer.into(),
        note: "test".into(),
        at_ms: 1,
    })
    .expect("json");
    let value = op.seal(&key, &json);
    (key, value)
}

fn titles(v: &mesh_agent::core::state::View) -> Vec<String> {
    let mut t: Vec<String> = v
        .stories
        .values()
        .map(|s| s.fact.title.to_string())
        .collect();
    t.sort();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_cut_off_its_claim_taken_over_and_what_it_writes_later_ignored() {
    let op = Signer::from_key(ed25519_dalek::SigningKey::from_bytes(&rand::random()));
    let operator = op.author().to_string();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let keys: Vec<_> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
    let ids: Vec<String> = keys
        .iter()
        .map(|k| k.public().to_peer_id().to_string())
        .collect();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (cancelled_tx, _cancelled) = mpsc::unbounded_channel();
    // Leases and death take 60 s here: within the test's net, a takeover can only come
    // from the revoke.
    let tweak = |c: &mut Config| {
        fast_leases(c);
        c.lease_ttl_ms = 60_000;
        c.dead_after_ms = 60_000;
        c.operators = vec![operator.clone()];
    };
    let exec = |i: usize| -> Arc<dyn mesh_agent::exec::Executor> {
        Arc::new(Holding {
            node: ids[i].clone(),
            started: started_tx.clone(),
            cancelled: cancelled_tx.clone(),
        })
    };
    // The first node carries the operator's admissions of all four before the others
    // start (any member can carry them: the operator's signature is what counts).
    let first = start_with(dirs[0].path(), &keys[0], None, tweak, Some(exec(0))).await;
    let unknown = sealed(
        &Signer::from_key(ed25519_dalek::SigningKey::from_bytes(&[9; 32])),
        true,
        &ids[1],
    );
    let e = first
        .put_roster(&unknown.0, &unknown.1)
        .await
        .expect_err("only an operator admits");
    assert!(e.contains("not an operator"), "{e}");
    for id in &ids {
        let (k, v) = sealed(&op, true, id);
        first.put_roster(&k, &v).await.expect("admitted");
    }
    let mut nodes: Vec<NodeHandle> = vec![first];
    for i in 1..4 {
        let n = start_with(
            dirs[i].path(),
            &keys[i],
            nodes.first(),
            tweak,
            Some(exec(i)),
        )
        .await;
        nodes.push(n);
    }
    wait_all_alive(&nodes.iter().collect::<Vec<_>>()).await;
    let key = nodes[0]
        .add_story(story("held"))
        .await
        .expect("write accepted")
        .key;
    wait_converged(&nodes.iter().collect::<Vec<_>>()).await;
    let (holder_id, held) = within("a node starts the first phase", 30, started.recv())
        .await
        .expect("a job");
    let h = ids
        .iter()
        .position(|i| *i == holder_id)
        .expect("one of ours");
    // The others: R revokes, W is a witness, D stays with the revoked node only.
    let rest: Vec<usize> = (0..4).filter(|&i| i != h).collect();
    let (r, w, d) = (rest[0], rest[1], rest[2]);
    let peer = |i: usize| nodes[i].peer_id;

    // The holder and D are cut off from R and W (a partition both ways), so neither
    // hears of the revoke: the holder keeps working, D keeps listening to it.
    for (a, b) in [(h, r), (h, w), (d, r), (d, w)] {
        nodes[a].block(&[peer(b)]).await;
        nodes[b].block(&[peer(a)]).await;
    }
    let (k, v) = sealed(&op, false, &ids[h]);
    assert!(nodes[r]
        .put_roster(&k, &v)
        .await
        .expect("revoked")
        .contains("revoked"));

    // R and W refuse the holder at once (not after a lease or `dead_after`) and take
    // its claim over with a higher token.
    for i in [r, w] {
        let id = ids[h].clone();
        within("the revoked node refused", 30, async {
            nodes[i]
                .wait_for(|o| o.refused.contains(&id) && o.dead.contains(&id))
                .await
                .expect("running")
        })
        .await;
    }
    let (taker, next) = within("another node takes the work over", 30, started.recv())
        .await
        .expect("a job");
    assert!(taker == ids[r] || taker == ids[w], "taken by {taker}");
    assert_eq!((&next.story, next.phase), (&held.story, held.phase));
    assert!(next.token > held.token, "{} <= {}", next.token, held.token);

    // The revoked node writes on; D, which never heard of the revoke, counts it.
    nodes[h]
        .add_story(story("written after the revoke"))
        .await
        .expect("its own node still writes");
    wait_view(&nodes[d], "D counts the revoked node's story", 30, |v| {
        titles(v).contains(&"written after the revoke".to_string())
    })
    .await;

    // D rejoins R and W: it learns of the revoke, stops counting the story, refuses
    // the revoked node; R and W get the story's bytes from D and never count it.
    for b in [r, w] {
        nodes[d].unblock(&[peer(b)]).await;
        nodes[b].unblock(&[peer(d)]).await;
        if let Some(a) = nodes[b].addr() {
            nodes[d].dial(a).await;
        }
    }
    let id = ids[h].clone();
    within("D refuses the revoked node", 30, async {
        nodes[d]
            .wait_for(|o| o.refused.contains(&id))
            .await
            .expect("running")
    })
    .await;
    wait_converged(&[&nodes[r], &nodes[w], &nodes[d]]).await;
    let res = Resource::story(&key, held.phase).expect("resource");
    for i in [r, w, d] {
        let v = wait_view(&nodes[i], "the taker's claim winning", 30, |v| {
            v.claims().winner(&res) == Some(next.claim.as_str())
        })
        .await;
        assert_eq!(titles(&v), ["held"], "node {i}");
        assert!(v.roster.is_revoked(&ids[h]));
    }

    // Healed everywhere, the members still refuse it: no connection, no heartbeat.
    for b in [r, w] {
        nodes[h].unblock(&[peer(b)]).await;
        nodes[b].unblock(&[peer(h)]).await;
        if let Some(a) = nodes[b].addr() {
            nodes[h].dial(a).await;
        }
    }
    // A heartbeat round trip between the members shows the mesh moved on meanwhile.
    let seen = observation(&nodes[r]).heartbeats_received;
    within("more heartbeats", 30, async {
        nodes[r]
            .wait_for(|o| o.heartbeats_received >= seen + 6)
            .await
            .expect("running")
    })
    .await;
    for i in [r, w, d] {
        let o = observation(&nodes[i]);
        assert!(!o.connected_peers.contains(&ids[h]), "node {i}: {o:?}");
        assert!(!o.alive.contains(&ids[h]), "node {i}: {o:?}");
    }
    for n in nodes {
        n.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_a_closed_mesh_refuses_does_not_flood_it() {
    // `status --bootstrap` against a closed mesh (the testnet): the member refuses the
    // observer, closing each connection as it opens. The observer probed each loss at
    // once, which dialled again at once: ~870 sync sessions and 1.1 MB a second, until
    // it gave up. Now its connections follow its probe period.
    let op = Signer::from_key(ed25519_dalek::SigningKey::from_bytes(&rand::random()));
    let operator = op.author().to_string();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let keys: Vec<_> = (0..2).map(|_| Keypair::generate_ed25519()).collect();
    let member = keys[0].public().to_peer_id();
    let tweak = |c: &mut Config| c.operators = vec![operator.clone()];
    let first = start_with(dirs[0].path(), &keys[0], None, tweak, None).await;
    let (k, v) = sealed(&op, true, &member.to_string());
    first.put_roster(&k, &v).await.expect("admitted");
    let mut cfg = test_config(first.addr().map(|a| a.to_string()));
    tweak(&mut cfg);
    let observer = mesh_agent::node::start(mesh_agent::node::NodeOptions {
        config: cfg,
        data_dir: Some(dirs[1].path().to_path_buf()),
        keypair: keys[1].clone(),
        psk: Some(psk(7)),
        passive: true,
        executor: None,
    })
    .await
    .expect("observer starts");
    let id = observer.peer_id.to_string();
    within("the member refuses the observer", 30, async {
        first
            .wait_for(|o| o.refused.contains(&id))
            .await
            .expect("node running")
    })
    .await;
    // What it sends over a few seconds once refused (a measure, not a wait).
    let before = observer.status().await.expect("status").counters;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let after = observer.status().await.expect("status").counters;
    let sessions = after.sync_sessions_started - before.sync_sessions_started;
    let sent = after.bytes_out - before.bytes_out;
    assert!(
        sessions <= 100,
        "{sessions} sync sessions in 3 s with a peer that refuses"
    );
    assert!(
        sent <= 200_000,
        "{sent} bytes sent in 3 s to a peer that refuses"
    );
    observer.shutdown().await;
    first.shutdown().await;
}
