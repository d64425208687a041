//! `GET /metrics` against real nodes: three nodes on loopback carry a few stories to
//! merged with the sim executor; each node's `metrics::router` is served on a loopback
//! port, scraped over HTTP, parsed strictly as OpenMetrics text, and checked against
//! what the node itself reports (`StatusReport`, its runs).

use crate::common::*;
use libp2p::identity::Keypair;
use mesh_agent::core::model::{NewStory, StoryStatus};
use mesh_agent::node::{NodeHandle, StatusReport};
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// A parsed exposition: each family's type, and every sample.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
    }

    /// The sum over every sample of `name` whatever its labels.
    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|s| s.2)
            .sum()
    }
}

/// Parses the OpenMetrics text format strictly enough for these checks: `# HELP`,
/// `# TYPE` and `# UNIT` lines, samples `name{k="v",...} value` whose name is a declared
/// family's (plus the suffixes its type allows), and `# EOF` last.
fn parse(text: &str) -> Exposition {
    let mut e = Exposition::default();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF");
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name, val) = (parts.next(), parts.next(), parts.next());
            let (Some(kw), Some(name), Some(val)) = (kw, name, val) else {
                panic!("bad comment line {line:?}");
            };
            assert!(name.starts_with("mesh_agent_"), "{name}");
            match kw {
                "TYPE" => {
                    assert!(["gauge", "counter", "histogram"].contains(&val), "{line}");
                    assert!(e.types.insert(name.into(), val.into()).is_none(), "{line}");
                }
                "HELP" | "UNIT" => {}
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = value.parse().expect("a number");
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels close");
                let mut labels = BTreeMap::new();
                for pair in body.split(',') {
                    let (k, v) = pair.split_once('=').expect("k=v");
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .expect("quoted value");
                    assert!(labels.insert(k.to_string(), v.to_string()).is_none());
                }
                (name.to_string(), labels)
            }
        };
        let family = e
            .types
            .iter()
            .find(|(f, t)| {
                let suffixes: &[&str] = match t.as_str() {
                    "counter" => &["_total"],
                    "histogram" => &["_bucket", "_count", "_sum"],
                    _ => &[""],
                };
                suffixes.iter().any(|s| name == format!("{f}{s}"))
            })
            .map(|(f, _)| f.clone());
        assert!(family.is_some(), "{name} belongs to no declared family");
        e.samples.push((name, labels, value));
    }
    e
}

/// `GET /metrics` over a plain HTTP/1.1 connection: (content type, body).
async fn scrape(addr: std::net::SocketAddr) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .expect("a content type");
    (ctype, body.to_string())
}

async fn serve(n: &NodeHandle) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = mesh_agent::metrics::router(n.api());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Waits until the node holds no claim (every run it started has reported).
async fn idle(n: &NodeHandle) -> StatusReport {
    let mut rx = n.observe();
    within("the node to hold no claim", 30, async {
        loop {
            let r = n.status().await.expect("node running");
            if r.held.is_empty() {
                return r;
            }
            rx.changed().await.expect("node running");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_what_the_nodes_report() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let keys: Vec<_> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    let n0 = start_with(dirs[0].path(), &keys[0], None, fast_leases, None).await;
    let mut nodes = vec![n0];
    for i in 1..3 {
        let n = start_with(dirs[i].path(), &keys[i], Some(&nodes[0]), fast_leases, None).await;
        nodes.push(n);
    }
    let refs: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all_alive(&refs).await;
    for i in 0..3 {
        nodes[0]
            .add_story(NewStory {
                title: format!("metrics story {i}"),
                ..Default::default()
            })
            .await
            .expect("story added");
    }
    for n in &nodes {
        wait_view(n, "every story merged", 60, |v| {
            v.stories.len() == 3 && v.stories.values().all(|s| s.status == StoryStatus::Merged)
        })
        .await;
    }
    wait_converged(&refs).await;
    let mut total_runs = 0;
    for n in &nodes {
        idle(n).await;
        let addr = serve(n).await;
        let (ctype, body) = scrape(addr).await;
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        let m = parse(&body);
        let r = n.status().await.expect("node running");
        let runs = n.runs().await.expect("node running").len() as f64;
        total_runs += runs as u64;

        let alive = r
            .peers
            .iter()
            .filter(|p| p.state.as_str() == "alive")
            .count();
        assert_eq!(alive, 2);
        assert_eq!(
            m.value("mesh_agent_peers", &[("state", "alive")]),
            Some(2.0),
            "{body}"
        );
        assert_eq!(m.types["mesh_agent_peers"], "gauge");
        for s in StoryStatus::ALL {
            let want = r.story_counts.get(s.as_str()).copied().unwrap_or(0) as f64;
            assert_eq!(
                m.value("mesh_agent_stories", &[("state", s.as_str())]),
                Some(want),
                "{s}"
            );
        }
        assert_eq!(
            m.value("mesh_agent_stories", &[("state", "merged")]),
            Some(3.0)
        );
        assert_eq!(m.value("mesh_agent_landings_total", &[]), Some(3.0));
        assert_eq!(m.types["mesh_agent_sync_sessions_completed"], "counter");
        let synced = m
            .value("mesh_agent_sync_sessions_completed_total", &[])
            .expect("sync sessions");
        assert!(synced > 0.0, "{body}");
        assert!(synced <= r.counters.sync_sessions_completed as f64);
        assert_eq!(m.value("mesh_agent_claims_held", &[]), Some(0.0));
        assert_eq!(
            m.value("mesh_agent_peers_connected", &[]),
            Some(r.connected as f64)
        );
        // Every run started at a settle and reported its outcome.
        assert_eq!(m.types["mesh_agent_phase_duration_seconds"], "histogram");
        assert_eq!(
            m.sum("mesh_agent_phase_duration_seconds_count"),
            runs,
            "{body}"
        );
        assert_eq!(
            m.value(
                "mesh_agent_settle_latency_seconds_count",
                &[("outcome", "settled")]
            )
            .unwrap_or(0.0),
            runs
        );
        // Buckets are cumulative and end at the count.
        for (name, labels, count) in m
            .samples
            .iter()
            .filter(|s| s.0 == "mesh_agent_phase_duration_seconds_count")
        {
            let phase = &labels["phase"];
            let inf = m.value(
                "mesh_agent_phase_duration_seconds_bucket",
                &[("phase", phase), ("le", "+Inf")],
            );
            assert_eq!(inf, Some(*count), "{name} {phase}");
        }
    }
    // Five phases per story, each run once on a clean mesh.
    assert!(total_runs >= 15, "{total_runs} runs");
    for n in nodes {
        n.shutdown().await;
    }
}
