//! The CLI as a script meets it: a 3-node mesh set up and watched with `init --json`,
//! `id --json`, `config set` and `status --json` alone — no text scraped — and the ids
//! every JSON output uses agree (one story id, one node label).

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mesh-agent"));
    c.env_remove("MESH_DATA_DIR").arg("--data-dir").arg(dir);
    c
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = bin(dir).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(dir: &Path, args: &[&str]) -> Value {
    let out = ok(dir, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// A `mesh-agent run` process, killed when dropped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a node with nothing but its config file, and waits until `id --json` says it
/// runs (its control endpoint answers).
fn start(dir: &Path) -> Node {
    let child = bin(dir)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn node");
    let node = Node(child);
    poll("the node to run", 30, || {
        json(dir, &["id", "--json"])["running"] == true
    });
    node
}

/// Polls `cond` until it holds (a safety-net deadline, not a timing assertion).
fn poll(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn set(dir: &Path, key: &str, value: &str) {
    let out = ok(dir, &["config", "set", key, value]);
    assert!(out.starts_with(&format!("{key} = ")), "{out}");
}

#[test]
fn three_nodes_set_up_and_watched_with_id_config_and_status_json_alone() {
    let root = tempfile::tempdir().expect("tmp");
    let dirs: Vec<_> = (1..=3).map(|i| root.path().join(format!("n{i}"))).collect();
    let first = json(&dirs[0], &["init", "--json", "--psk"]);
    let psk = first["psk_file"].as_str().expect("psk_file").to_string();
    let mut peers = vec![first["peer_id"].as_str().expect("peer_id").to_string()];
    for d in &dirs[1..] {
        let v = json(d, &["init", "--json", "--psk-from", &psk]);
        assert_eq!(v["psk_fingerprint"], first["psk_fingerprint"]);
        peers.push(v["peer_id"].as_str().expect("peer_id").to_string());
    }
    for (d, peer) in dirs.iter().zip(&peers) {
        let id = json(d, &["id", "--json"]);
        assert_eq!(id["peer_id"], peer.as_str());
        assert_eq!(
            id["node"],
            &peer[peer.len() - 8..],
            "the label is the id's tail"
        );
        assert_eq!(id["running"], false);
        assert_eq!(
            ok(d, &["id"]).trim(),
            peer,
            "plain `id` prints the peer id alone"
        );
        set(d, "listen", "/ip4/127.0.0.1/tcp/0");
        set(d, "heartbeat_ms", "200");
        set(d, "dead_after_ms", "3000");
        set(d, "sim_phase_ms", "40");
        set(d, "join_wait_ms", "1000");
    }
    // A bad value or an unknown key is refused with exit code 2 and leaves the file as
    // it was.
    let before = std::fs::read_to_string(dirs[0].join("config.toml")).expect("config");
    for (args, says) in [
        (["config", "set", "heartbeat_ms", "soon"], "whole number"),
        (["config", "set", "hearbeat_ms", "5"], "unknown config key"),
        (["config", "set", "bootstrap", "nowhere"], "multiaddr"),
    ] {
        let out = bin(&dirs[0]).args(args).output().expect("spawn");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let after = std::fs::read_to_string(dirs[0].join("config.toml")).expect("config");
    assert_eq!(before, after);
    assert!(after.contains("# Private network"), "comments are kept");
    assert_eq!(
        ok(&dirs[0], &["config", "get", "heartbeat_ms"]).trim(),
        "200"
    );

    let _n1 = start(&dirs[0]);
    let id = json(&dirs[0], &["id", "--json"]);
    let addr = id["addrs"][0]
        .as_str()
        .expect("a listen address")
        .to_string();
    assert!(addr.ends_with(&format!("/p2p/{}", peers[0])), "{addr}");
    let mut nodes = vec![_n1];
    for d in &dirs[1..] {
        set(d, "bootstrap", &addr);
        nodes.push(start(d));
    }
    let status = |i: usize| json(&dirs[i], &["status", "--json"]);
    poll("every node to see the other two alive", 60, || {
        (0..3).all(|i| {
            let s = status(i);
            s["peers"]
                .as_array()
                .is_some_and(|p| p.iter().filter(|p| p["state"] == "alive").count() == 2)
        })
    });
    let mut ids = BTreeSet::new();
    for t in ["one", "two", "three", "four"] {
        let s = json(&dirs[1], &["story", "add", "--title", t, "--json"]);
        ids.insert(s["id"].as_str().expect("id").to_string());
    }
    // Whatever a script samples while the mesh works, claims carry the story's display
    // id and phase as fields.
    let mut claims_seen = 0;
    poll(
        "the mesh to finish the four stories and go idle",
        120,
        || {
            (0..3).all(|i| {
                let s = status(i);
                for c in s["claims"].as_array().into_iter().flatten() {
                    claims_seen += 1;
                    let id = c["id"].as_str().unwrap_or_default();
                    assert!(ids.contains(id), "claim names {id:?}: {c}");
                    assert!(c["phase"].is_string(), "{c}");
                    assert!(peers.iter().any(|p| c["holder"] == p.as_str()), "{c}");
                }
                s["idle"] == true && s["open"] == 0 && s["story_counts"]["merged"] == 4
            })
        },
    );
    let s = status(2);
    let listed: BTreeSet<String> = s["stories"]
        .as_array()
        .expect("stories")
        .iter()
        .map(|s| {
            assert_eq!(s["status"], "merged");
            s["id"].as_str().expect("id").to_string()
        })
        .collect();
    assert_eq!(listed, ids);
    // The timeline names the same stories and nodes.
    let events = ok(&dirs[2], &["events", "--json"]);
    let mut finished = 0;
    for line in events.lines() {
        let e: Value = serde_json::from_str(line).expect("one JSON object per line");
        if let Some(story) = e["story"].as_str().filter(|s| !s.is_empty()) {
            assert!(ids.contains(story), "event story {story:?}");
        }
        assert!(peers.iter().any(|p| e["node"] == p.as_str()), "{e}");
        finished += usize::from(e["kind"] == "story_completed");
    }
    assert_eq!(finished, 4, "{events}");
    eprintln!("claims sampled mid-run: {claims_seen}");
}
