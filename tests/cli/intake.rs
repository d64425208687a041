//! Work brought in from outside, through the binary: `story add --from FILE` (a few
//! hundred stories in one change; a bad line named by its number and nothing written)
//! and the GitHub issues hook (signed, unsigned, wrongly signed, redelivered, the label
//! filter, closed, oversized, and off without a secret).

use mesh_agent::intake::github::sign;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mesh-agent"));
    c.env_remove("MESH_DATA_DIR");
    c
}

pub(super) fn run(args: &[&str], dir: &Path) -> std::process::Output {
    bin()
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("spawn")
}

/// A running node (killed when dropped) and its dashboard's URL if it serves one.
pub(super) struct Running {
    _proc: super::NodeProc,
    dashboard: Option<String>,
}

/// `init`, `extra` appended to the config, then `run` (claiming no work) until its
/// control file is up.
pub(super) fn node(dir: &Path, extra: &str) -> Running {
    node_with(dir, &[], extra)
}

/// [`node`] with more arguments to `init`; waits for the dashboard's URL too when the
/// config has one.
fn node_with(dir: &Path, init: &[&str], extra: &str) -> Running {
    let mut args = vec!["init"];
    args.extend_from_slice(init);
    let out = run(&args, dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = dir.join("config.toml");
    let mut text = std::fs::read_to_string(&cfg).expect("config");
    text.push_str(extra);
    std::fs::write(&cfg, text).expect("write config");
    let (proc, url) = super::spawn(
        dir,
        &[],
        &[("MESH_WORK", "false")],
        extra.contains("[dashboard]"),
    );
    Running {
        _proc: proc,
        dashboard: url,
    }
}

pub(super) fn stories(dir: &Path) -> Vec<serde_json::Value> {
    let out = run(&["story", "list", "--json"], dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("story list json")
}

/// `n` story lines; line 5k+2 depends on line 5k+1 by `#N`, line 5k+3 on the display id
/// that line 5k+1 gets (numbers are assigned in file order from S-0001).
fn backlog(n: usize) -> String {
    let mut text = String::new();
    for i in 1..=n {
        let depends = match i % 5 {
            2 => format!("[\"#{}\"]", i - 1),
            3 => format!("[\"S-{:04}\"]", i - 2),
            _ => "[]".into(),
        };
        text.push_str(&format!(
            "{{\"title\":\"story {i}\",\"body\":\"b\",\"priority\":{},\"depends\":{depends},\
             \"files\":[\"src/f{i}.rs\"],\"labels\":[\"bulk\"]}}\n",
            1 + i % 900
        ));
    }
    text
}

#[test]
fn a_few_hundred_stories_in_one_batch_and_a_bad_line_by_number() {
    let d = tempfile::tempdir().expect("tempdir");
    let _n = node(d.path(), "");
    let good = backlog(300);
    let mut lines: Vec<&str> = good.lines().collect();
    lines[136] = "{\"title\":\"\",\"body\":\"no title\"}";
    let bad = d.path().join("bad.jsonl");
    std::fs::write(&bad, lines.join("\n")).expect("write");
    let out = run(
        &["story", "add", "--from", bad.to_str().expect("path")],
        d.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 137: title is empty"), "{err}");
    assert!(stories(d.path()).is_empty(), "nothing written");

    // A dependency only the node can check (no such story): named by its line too.
    lines[136] = "{\"title\":\"t\",\"depends\":[\"S-9999\"]}";
    std::fs::write(&bad, lines.join("\n")).expect("write");
    let out = run(
        &["story", "add", "--from", bad.to_str().expect("path")],
        d.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 137") && err.contains("S-9999"), "{err}");
    assert!(stories(d.path()).is_empty(), "nothing written");

    // From stdin, without the bad line: all of them, dependencies resolved.
    let mut child = bin()
        .args(["story", "add", "--from", "-", "--json", "--data-dir"])
        .arg(d.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(good.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(added.len(), 300);
    let list = stories(d.path());
    assert_eq!(list.len(), 300);
    let by_title = |t: &str| {
        list.iter()
            .find(|s| s["fact"]["title"] == t)
            .unwrap_or_else(|| panic!("{t} missing"))
    };
    for i in [2usize, 3, 7, 8, 297, 298] {
        let s = by_title(&format!("story {i}"));
        let want = if i % 5 == 2 { i - 1 } else { i - 2 };
        assert_eq!(
            s["depends_on_ids"],
            serde_json::json!([format!("S-{want:04}")]),
            "story {i}"
        );
    }
    assert_eq!(by_title("story 1")["id"], "S-0001");
    assert_eq!(by_title("story 300")["id"], "S-0300");
}

struct Hook {
    agent: ureq::Agent,
    url: String,
}

impl Hook {
    fn of(dir: &Path) -> Hook {
        let control: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("control.json")).expect("control"))
                .expect("control json");
        let addr = control["addr"].as_str().expect("addr").to_string();
        assert!(addr.starts_with("127."), "{addr}");
        Hook {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
            url: format!("http://{addr}"),
        }
    }

    /// Posts `body` as GitHub event `event`, with signature `sig` if any.
    fn post(&self, event: &str, body: &[u8], sig: Option<String>) -> (u16, serde_json::Value) {
        let mut req = self
            .agent
            .post(format!("{}/v1/hooks/github", self.url))
            .header("x-github-event", event)
            .header("x-github-delivery", "d-1")
            .header("content-type", "application/json");
        if let Some(s) = sig {
            req = req.header("x-hub-signature-256", s);
        }
        let mut resp = req.send(body).expect("post");
        let code = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (
            code,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }
}

fn issue(action: &str, number: u64, labels: &[&str], label: Option<&str>) -> Vec<u8> {
    let labels: Vec<_> = labels
        .iter()
        .map(|l| serde_json::json!({ "name": l }))
        .collect();
    let mut v = serde_json::json!({
        "action": action,
        "issue": {
            "number": number,
            "title": format!("Issue {number}"),
            "body": "Steps to reproduce",
            "html_url": format!("https://github.com/acme/app/issues/{number}"),
            "labels": labels,
        },
        "repository": { "full_name": "acme/app" },
        "sender": { "login": "someone" },
    });
    if let Some(l) = label {
        v["label"] = serde_json::json!({ "name": l });
    }
    serde_json::to_vec(&v).expect("json")
}

const SECRET: &str = "It's a Secret to Everybody";

#[test]
fn github_issues_come_in_only_signed_once_each_and_with_the_label() {
    let d = tempfile::tempdir().expect("tempdir");
    std::fs::write(d.path().join("hook.secret"), format!("{SECRET}\n")).expect("secret");
    let _n = node(
        d.path(),
        "[intake.github]\nsecret_file = \"hook.secret\"\nlabel = \"mesh\"\nmax_body_bytes = 65536\n",
    );
    let hook = Hook::of(d.path());
    let opened = issue("opened", 7, &["bug", "mesh"], None);
    let key = SECRET.as_bytes();

    // Unsigned, wrongly signed, signed over other bytes: 401 and nothing written.
    assert_eq!(hook.post("issues", &opened, None).0, 401);
    assert_eq!(
        hook.post("issues", &opened, Some(sign(b"wrong", &opened)))
            .0,
        401
    );
    assert_eq!(hook.post("issues", &opened, Some(sign(key, b"{}"))).0, 401);
    assert_eq!(
        hook.post("issues", &opened, Some("sha256=zz".into())).0,
        401
    );
    assert!(stories(d.path()).is_empty());

    // Signed: a story with the issue's title, body and link.
    let (code, body) = hook.post("issues", &opened, Some(sign(key, &opened)));
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["result"], "added");
    let id = body["story"].as_str().expect("story id").to_string();
    let list = stories(d.path());
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["fact"]["title"], "Issue 7");
    assert_eq!(list[0]["fact"]["source"], "github:acme/app#7");
    let text = list[0]["fact"]["body"].as_str().expect("body");
    assert!(text.contains("Steps to reproduce"), "{text}");
    assert!(
        text.contains("https://github.com/acme/app/issues/7"),
        "{text}"
    );

    // Redelivered (and a `labeled` of the same issue): nothing more written.
    let (code, body) = hook.post("issues", &opened, Some(sign(key, &opened)));
    assert_eq!((code, body["result"].as_str()), (200, Some("exists")));
    assert_eq!(body["story"], id.as_str());
    let labeled = issue("labeled", 7, &["mesh"], Some("mesh"));
    assert_eq!(
        hook.post("issues", &labeled, Some(sign(key, &labeled))).0,
        200
    );
    assert_eq!(stories(d.path()).len(), 1);

    // The label filter: without it nothing; labelled later, a story.
    let plain = issue("opened", 8, &["bug"], None);
    let (code, body) = hook.post("issues", &plain, Some(sign(key, &plain)));
    assert_eq!((code, body["result"].as_str()), (202, Some("ignored")));
    let other = issue("labeled", 8, &["bug", "wontfix"], Some("wontfix"));
    assert_eq!(hook.post("issues", &other, Some(sign(key, &other))).0, 202);
    assert_eq!(stories(d.path()).len(), 1);
    let labeled = issue("labeled", 8, &["bug", "mesh"], Some("mesh"));
    let (code, body) = hook.post("issues", &labeled, Some(sign(key, &labeled)));
    assert_eq!(
        (code, body["result"].as_str()),
        (201, Some("added")),
        "{body}"
    );
    assert_eq!(stories(d.path()).len(), 2);

    // Closed: named, not cancelled (an operator command), nothing written.
    let closed = issue("closed", 7, &["mesh"], None);
    let (code, body) = hook.post("issues", &closed, Some(sign(key, &closed)));
    assert_eq!(
        (code, body["result"].as_str()),
        (202, Some("not-cancelled")),
        "{body}"
    );
    assert_eq!(body["story"], id.as_str());
    assert!(body["detail"]
        .as_str()
        .is_some_and(|d| d.contains("mesh-agent cancel")));

    // Ping; a body over the cap is refused before it is read.
    let ping = b"{\"zen\":\"Keep it logically awesome.\"}";
    assert_eq!(hook.post("ping", ping, Some(sign(key, ping))).0, 200);
    // The refused body is never read, so the 413 closes its connection (a pooled one
    // would fail the client's next request).
    let big = vec![b' '; 70_000];
    let resp = hook
        .agent
        .post(format!("{}/v1/hooks/github", hook.url))
        .header("x-github-event", "issues")
        .header("x-hub-signature-256", sign(key, &big))
        .send(&big[..])
        .expect("post");
    assert_eq!(resp.status().as_u16(), 413);
    assert_eq!(
        resp.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );

    // The rest of the control endpoint still wants its token.
    let resp = hook
        .agent
        .get(format!("{}/v1/status", hook.url))
        .call()
        .expect("get");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(stories(d.path()).len(), 2);
}

#[test]
fn without_a_secret_the_hook_is_not_there() {
    let d = tempfile::tempdir().expect("tempdir");
    let _n = node(d.path(), "");
    let hook = Hook::of(d.path());
    let opened = issue("opened", 1, &["mesh"], None);
    assert_eq!(
        hook.post("issues", &opened, Some(sign(b"", &opened))).0,
        404
    );
    assert_eq!(hook.post("issues", &opened, None).0, 404);
    assert!(stories(d.path()).is_empty());
}

/// With `operator_key`, a closed issue cancels its story, signed by that operator, once
/// (a redelivery finds it cancelled); with `serve_on = "dashboard"` the hook is on the
/// dashboard's listener and not on the control address.
#[test]
fn a_closed_issue_cancels_its_story_on_the_dashboards_listener() {
    let d = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("tempdir");
    let op_key = keys.path().join("op.key");
    let op = op_key.to_str().expect("path");
    let out = run(&["operator", "init", "--key", op], d.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let operator = run(&["operator", "id", "--key", op], d.path());
    let operator = String::from_utf8_lossy(&operator.stdout).trim().to_string();
    std::fs::write(d.path().join("hook.secret"), SECRET).expect("secret");
    let n = node_with(
        d.path(),
        &["--operator", &operator],
        &format!(
            "[dashboard]\naddr = \"127.0.0.1:0\"\n\n[intake.github]\nsecret_file = \"hook.secret\"\n\
             serve_on = \"dashboard\"\noperator_key = {op:?}\n"
        ),
    );
    let me = run(&["id"], d.path());
    let me = String::from_utf8_lossy(&me.stdout).trim().to_string();
    let out = run(&["admit", &me, "--key", op], d.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = SECRET.as_bytes();
    let control = Hook::of(d.path());
    let hook = Hook {
        url: n.dashboard.clone().expect("dashboard url"),
        ..Hook::of(d.path())
    };
    let opened = issue("opened", 12, &["mesh"], None);
    assert_eq!(
        control.post("issues", &opened, Some(sign(key, &opened))).0,
        404,
        "not on the control address"
    );
    let (code, body) = hook.post("issues", &opened, Some(sign(key, &opened)));
    assert_eq!(code, 201, "{body}");
    let id = body["story"].as_str().expect("story").to_string();

    let closed = issue("closed", 12, &["mesh"], None);
    assert_eq!(hook.post("issues", &closed, None).0, 401, "unsigned");
    for _ in 0..2 {
        let (code, body) = hook.post("issues", &closed, Some(sign(key, &closed)));
        assert_eq!(
            (code, body["result"].as_str()),
            (200, Some("cancelled")),
            "{body}"
        );
        assert_eq!(body["story"], id.as_str());
    }
    let list = stories(d.path());
    let s = list.iter().find(|s| s["id"] == id.as_str()).expect("story");
    assert_eq!(s["status"], "cancelled");
    assert_eq!(s["cancelled"]["reason"], "github:acme/app#12 was closed");
    assert_eq!(s["cancelled"]["by"], operator.as_str());
    let log = run(&["log", "--story", &id, "--json"], d.path());
    let log: Vec<serde_json::Value> = String::from_utf8_lossy(&log.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("log json line"))
        .collect();
    let cancels = log
        .iter()
        .filter(|e| e["action"].as_str().is_some_and(|w| w.contains("cancel")))
        .count();
    assert_eq!(cancels, 1, "one cancel for two deliveries: {log:#?}");
}
