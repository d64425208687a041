//! A provider's rate limits on a live mesh (issue 17): two nodes on loopback run the
//! `command` executor through a wrapper that answers like a rate-limited agent CLI (exit
//! 75 and `{"rate_limited": true, ...}`) while a flag file exists, and like
//! examples/executors/shell-sim.sh after. While limited, no attempt is counted, each node
//! backs off (status shows it) and claims far fewer jobs; once the limit lifts they
//! recover, and the first story to move is the highest-priority one.

use crate::common::*;
use libp2p::identity::Keypair;
use mesh_agent::core::model::{EventKind, NewStory, StoryStatus};
use mesh_agent::demo;
use mesh_agent::node::NodeHandle;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("script written");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Claims each node made, from its events.
async fn claims(n: &NodeHandle) -> Vec<(u64, String)> {
    n.events(0)
        .await
        .expect("events")
        .into_iter()
        .filter(|(_, e)| e.kind == EventKind::Claimed && e.node == n.peer_id.to_string())
        .map(|(_, e)| (e.at_ms, e.story))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limited_node_backs_off_and_recovers_serving_high_priority_first() {
    let tmp = tempfile::tempdir().expect("tmp");
    let origin = tmp.path().join("origin.git");
    demo::create_origin(&origin).expect("origin");
    let flag = tmp.path().join("limited");
    std::fs::write(&flag, "").expect("flag");
    let sim: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/executors/shell-sim.sh");
    let script = tmp.path().join("agent.sh");
    write_script(
        &script,
        &format!(
            "#!/bin/sh\nif [ -e {flag} ]; then\n  echo '{{\"rate_limited\": true, \"retry_after_s\": 0.5}}'\n  echo 'provider: 429 Too Many Requests' >&2\n  exit 75\nfi\nexec {sim}\n",
            flag = quote(&flag),
            sim = quote(&sim)
        ),
    );
    let keys: Vec<Keypair> = (0..2).map(|_| Keypair::generate_ed25519()).collect();
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let script = script.clone();
        let origin = origin.clone();
        let n = start_with(
            &tmp.path().join(format!("n{i}")),
            k,
            nodes.first(),
            move |c| {
                fast_leases(c);
                c.executor = "command".into();
                c.command.program = script.display().to_string();
                c.command.timeout_secs = 30;
                c.origin = origin.display().to_string();
                c.test_command = vec!["sh".into(), "test.sh".into()];
                c.capacity = 2;
                c.rate_limit_backoff_ms = 1_000;
                c.rate_limit_backoff_max_ms = 4_000;
            },
            None,
        )
        .await;
        nodes.push(n);
    }
    let refs: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all_alive(&refs).await;
    // Ten stories, one of them urgent (priority 1).
    let mut urgent = String::new();
    for k in 0..10 {
        let s = nodes[0]
            .add_story(NewStory {
                title: format!("Story {k}"),
                files: vec![format!("notes/{k}.txt")],
                priority: Some(if k == 7 { 1 } else { 100 }),
                ..Default::default()
            })
            .await
            .expect("story added");
        if k == 7 {
            urgent = s.id.to_string();
        }
    }

    // Limited for 12 s: each node backs off, doubling up to 4 s.
    let limited_from = Instant::now();
    for n in &nodes {
        within("the node reports rate limits and backs off", 60, async {
            loop {
                let s = n.status().await.expect("status");
                if s.spend.rate_limits >= 2 && s.spend.claim_gap_ms > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(limited_from.elapsed())).await;
    let lifted_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let window_ms = limited_from.elapsed().as_millis() as u64;
    std::fs::remove_file(&flag).expect("limit lifted");
    let v = nodes[0].view().await.expect("view");
    assert!(
        v.stories.values().all(|s| s.failed_attempts == 0),
        "a rate limit counted as a failed attempt"
    );
    let mut gaps = Vec::new();
    for n in &nodes {
        let s = n.status().await.expect("status");
        gaps.push(s.spend.claim_gap_ms);
        assert!(
            s.spend.last_rate_limit.contains("rate-limited"),
            "{:?}",
            s.spend
        );
        let c = claims(n).await;
        // Unpaced, a node claims a job every few tens of ms while each fails at once;
        // paced, at most one per back-off (1, 2, 4, 4, ... s).
        assert!(
            (c.len() as u64) <= 2 + window_ms / 1_000,
            "{} claims in {window_ms} ms while rate-limited",
            c.len()
        );
    }

    // Recovered: the backlog lands, the urgent story's first phase first.
    wait_view(&nodes[0], "every story landed", 300, |v| {
        v.stories.values().all(|s| s.status == StoryStatus::Merged)
    })
    .await;
    let mut started: Vec<(u64, String)> = Vec::new();
    for n in &nodes {
        started.extend(
            n.events(0)
                .await
                .expect("events")
                .into_iter()
                .filter(|(_, e)| {
                    e.kind == EventKind::PhaseFinished && e.node == n.peer_id.to_string()
                })
                .map(|(_, e)| (e.at_ms, e.story)),
        );
    }
    started.sort();
    // Up to four jobs (two nodes, capacity two) may have been claimed before the lift and
    // run once it came; the first claim each node makes afterwards is the urgent story's.
    let first: Vec<&String> = started
        .iter()
        .filter(|(at, _)| *at >= lifted_ms)
        .take(4)
        .map(|(_, s)| s)
        .collect();
    assert!(
        first.contains(&&urgent),
        "{urgent} is not among the first phases to finish after the lift: {first:?}"
    );
    // Each job that ran clean shrank the gap between claims (by a quarter, to 0 below
    // 250 ms): it is well below where the limit left it.
    for (n, at_lift) in nodes.iter().zip(gaps) {
        let s = n.status().await.expect("status");
        assert!(
            s.spend.claim_gap_ms <= at_lift / 2,
            "pacing recovered from {at_lift} ms: {:?}",
            s.spend
        );
    }
    for n in nodes {
        n.shutdown().await;
    }
}
