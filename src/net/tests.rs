//! The network shell against a peer that lies about who wrote its gossip.

use super::*;

fn config(listen: &str, bootstrap: Vec<Multiaddr>, author: Option<PeerId>) -> NetConfig {
    NetConfig {
        keypair: libp2p::identity::Keypair::generate_ed25519(),
        psk: None,
        listen: vec![listen.parse().expect("multiaddr")],
        bootstrap,
        max_sync_bytes: 1 << 20,
        max_peers: 16,
        request_timeout: Duration::from_secs(10),
        gossip_author: author,
    }
}

/// Publishes a heartbeat-topic message every 20 ms until the task is aborted.
fn keep_publishing(client: NetClient) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Each message differs (a message's id is its author and bytes: a repeat is
        // not published again).
        for n in 0u64.. {
            let data = n.to_be_bytes().to_vec();
            let topic = Topic::Heartbeat;
            if !client.send(NetCommand::Publish { topic, data }).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_that_names_an_author_other_than_the_sender_is_dropped() {
    // Gossip is never relayed, so the connection a message comes over names its author;
    // messages carry no signature. A member that names someone else as the author (here
    // a peer that is not even in the mesh) must not be heard as that peer, nor as itself.
    let (listener, mut events, _task) = spawn(config("/ip4/127.0.0.1/tcp/0", vec![], None))
        .await
        .expect("listener");
    let addr = listener.info().await.listen_addrs[0].clone();
    let victim = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let (forger, _fe, _ft) = spawn(config(
        "/ip4/127.0.0.1/tcp/0",
        vec![addr.clone()],
        Some(victim),
    ))
    .await
    .expect("forger");
    let forging = keep_publishing(forger.clone());
    // An honest peer joins after the forger and publishes the same way: by the time a few
    // of its messages arrived, the forger's (sent all along) would have too.
    let (honest, _he, _ht) = spawn(config("/ip4/127.0.0.1/tcp/0", vec![addr], None))
        .await
        .expect("honest");
    let publishing = keep_publishing(honest.clone());
    let mut heard = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while heard < 5 {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the honest peer's gossip arrives within 30 s")
            .expect("the network task runs");
        if let NetEvent::Gossip { from, .. } = ev {
            assert_ne!(from, victim, "a forged author was believed");
            assert_ne!(from, forger.local_peer_id, "a forger heard as itself");
            assert_eq!(from, honest.local_peer_id);
            heard += 1;
        }
    }
    forging.abort();
    publishing.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_refuses_this_node_is_dialled_ever_more_rarely_not_in_a_loop() {
    // A closed mesh refuses a node not on its roster (`status --bootstrap` against the
    // testnet), as it does a revoked one: each connection closes right after it opens.
    // Dialled again at once (kademlia's queries, the redial reset), a refused node made
    // ~400 connections a second and sent 3.4 MB in 10 s; with its backoff doubling from
    // 250 ms, it makes a handful in a few seconds, and still tries.
    let (listener, mut events, _task) = spawn(config("/ip4/127.0.0.1/tcp/0", vec![], None))
        .await
        .expect("listener");
    let addr = listener.info().await.listen_addrs[0].clone();
    let (refused, mut refused_events, _rt) =
        spawn(config("/ip4/127.0.0.1/tcp/0", vec![addr], None))
            .await
            .expect("refused node");
    let id = refused.local_peer_id;
    let first = async {
        while let Some(ev) = events.recv().await {
            if matches!(ev, NetEvent::Connected(p) if p == id) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .expect("the node connects within 30 s");
    assert!(listener.send(NetCommand::Refuse(id, true)).await);
    // Count its connections over a window (a measure, not a wait for an event).
    let window = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut connections = 0;
    while let Ok(ev) = tokio::time::timeout_at(window, refused_events.recv()).await {
        match ev {
            Some(NetEvent::Connected(_)) => connections += 1,
            Some(_) => {}
            None => break,
        }
    }
    assert!(
        (1..=12).contains(&connections),
        "{connections} connections in 4 s to a peer that refuses each at once"
    );
    let sent = refused.metrics.bytes_out.load(Ordering::Relaxed);
    assert!(sent < 64 * 1024, "{sent} bytes sent to a refusing peer");
}
