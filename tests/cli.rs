//! The binary as a user meets it: init, config errors (exit code 2, one clear line),
//! a locked data dir, a node killed with SIGKILL that restarts with every story it
//! acknowledged, and the audit trail (`log`) of a live node.

// One binary for the CLI-level tests (each test binary links the whole crate): the
// scripting workflow, the intake paths and ai-sdlc import/export are modules of this one.
#[path = "cli/aisdlc.rs"]
mod aisdlc;
mod common;
#[path = "cli/intake.rs"]
mod intake;
#[path = "cli/scripting.rs"]
mod scripting;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mesh-agent"));
    c.env_remove("MESH_DATA_DIR");
    c
}

fn run_ok(args: &[&str], dir: &Path) -> String {
    let out = bin()
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_err(args: &[&str], dir: &Path) -> (i32, String) {
    let out = bin()
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("spawn");
    assert!(
        !out.status.success(),
        "{args:?} unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running node process, killed when dropped (also when a test fails midway).
struct NodeProc(Child);

impl NodeProc {
    fn sigkill(&mut self) {
        self.0.kill().expect("kill");
        self.0.wait().expect("reap");
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `mesh-agent run` and waits for its first `listening` line and control file.
fn spawn_node(dir: &Path) -> NodeProc {
    spawn_node_with(dir, &[])
}

/// [`spawn_node`] with more `run` flags.
fn spawn_node_with(dir: &Path, extra: &[&str]) -> NodeProc {
    spawn(dir, extra, &[], false).0
}

/// Starts `mesh-agent run` with `flags` and `env`, waits for its first `listening` line,
/// its dashboard's URL when `dashboard` (the line after the listening ones), and its
/// control file.
fn spawn(
    dir: &Path,
    flags: &[&str],
    env: &[(&str, &str)],
    dashboard: bool,
) -> (NodeProc, Option<String>) {
    let mut child = bin()
        .args([
            "run",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--log-level",
            "warn",
        ])
        .args(flags)
        .envs(env.iter().copied())
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn node");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout);
    let mut line = String::new();
    lines.read_line(&mut line).expect("read");
    assert!(
        line.starts_with("listening "),
        "unexpected first line {line:?}"
    );
    let mut url = None;
    if dashboard {
        while line.starts_with("listening ") {
            line.clear();
            lines.read_line(&mut line).expect("read");
        }
        url = line
            .strip_prefix("dashboard ")
            .map(|u| u.trim().trim_end_matches('/').to_string());
        assert!(url.is_some(), "no dashboard line: {line:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("control.json").exists() {
        assert!(Instant::now() < deadline, "control endpoint never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    (NodeProc(child), url)
}

#[test]
fn init_creates_a_private_key_and_a_commented_config() {
    let d = tempfile::tempdir().unwrap();
    let out = run_ok(&["init", "--psk"], d.path());
    assert!(out.contains("node 12D3KooW"), "{out}");
    let cfg = std::fs::read_to_string(d.path().join("config.toml")).unwrap();
    assert!(cfg.contains("# Private network"), "config is commented");
    assert!(cfg.contains("psk_file = \"swarm.key\""));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["node.key", "swarm.key"] {
            let mode = std::fs::metadata(d.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }
    let (code, err) = run_err(&["init"], d.path());
    assert_eq!(code, 2);
    assert!(
        err.contains("already initialised") && err.contains("--force"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn the_data_dir_is_private_from_init_and_tightened_when_a_node_starts() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("node");
    run_ok(&["init"], &dir);
    assert_eq!(mode(&dir), 0o700, "created private");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _node = spawn_node(&dir);
    assert_eq!(mode(&dir), 0o700, "tightened when the node started");
    assert_eq!(mode(&dir.join("node.key")), 0o600);
    assert_eq!(mode(&dir.join("control.json")), 0o600);
}

#[test]
fn invalid_config_is_one_clear_line_and_exit_code_2() {
    let d = tempfile::tempdir().unwrap();
    run_ok(&["init"], d.path());
    let out = bin()
        .args(["run", "--data-dir"])
        .arg(d.path())
        .env("MESH_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "error: invalid config: log_format = \"xml\": allowed values are text, json"
    );
    std::fs::write(d.path().join("config.toml"), "heartbeat_ms = \"fast\"\n").unwrap();
    let (code, err) = run_err(&["run"], d.path());
    assert_eq!(code, 2);
    assert!(
        err.contains("heartbeat_ms") || err.contains("invalid type"),
        "{err}"
    );
    let (code, err) = run_err(
        &["story", "add", "--title", "x", "--priority", "0"],
        d.path(),
    );
    assert_eq!(code, 2);
    assert!(err.contains("1..=999"), "{err}");
}

#[test]
fn status_without_a_running_node_says_how_to_start_one() {
    let d = tempfile::tempdir().unwrap();
    run_ok(&["init"], d.path());
    let (code, err) = run_err(&["status"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("no node is running") && err.contains("mesh-agent run"),
        "{err}"
    );
}

#[test]
fn a_sigkilled_node_restarts_with_every_acknowledged_story_and_the_lock_is_clear() {
    let d = tempfile::tempdir().unwrap();
    run_ok(&["init"], d.path());
    let mut node = spawn_node(d.path());

    // A second node on the same data dir is refused with a clear error.
    let (code, err) = run_err(&["run", "--listen", "/ip4/127.0.0.1/tcp/0"], d.path());
    assert_eq!(code, 1);
    assert!(err.contains("in use by another mesh-agent"), "{err}");

    let mut ids = Vec::new();
    for i in 0..10 {
        let out = run_ok(
            &["story", "add", "--title", &format!("acked {i}")],
            d.path(),
        );
        ids.push(
            out.split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string(),
        );
    }
    // SIGKILL right after the last acknowledgement: no chance to flush on exit.
    node.sigkill();

    let node = spawn_node(d.path());
    let list = run_ok(&["story", "list"], d.path());
    for id in &ids {
        assert!(
            list.contains(id.as_str()),
            "{id} lost after SIGKILL:\n{list}"
        );
    }
    let status = run_ok(&["status", "--json"], d.path());
    let v: serde_json::Value = serde_json::from_str(&status).expect("status json");
    assert_eq!(v["stories"].as_array().map(Vec::len), Some(10));
    drop(node);
}

#[test]
fn story_show_says_what_a_story_waits_for() {
    let d = tempfile::tempdir().unwrap();
    run_ok(&["init"], d.path());
    run_ok(&["story", "add", "--title", "lexer"], d.path());
    run_ok(
        &["story", "add", "--title", "parser", "--depends", "S-0001"],
        d.path(),
    );
    let out = run_ok(&["story", "show", "S-0002"], d.path());
    assert!(
        out.contains("waiting    waits for dependency S-0001, which is ready for research"),
        "{out}"
    );
    let json = run_ok(&["story", "show", "S-0002", "--json"], d.path());
    let v: serde_json::Value = serde_json::from_str(&json).expect("story json");
    assert_eq!(v["id"], "S-0002");
    assert_eq!(v["waiting"]["kind"], "dependency");
    assert_eq!(v["waiting"]["story"], "S-0001");
}

#[test]
fn knowledge_add_list_and_the_event_timeline_through_the_cli() {
    let d = tempfile::tempdir().unwrap();
    run_ok(&["init"], d.path());
    let _node = spawn_node(d.path());
    // A bad kind is a usage error naming the allowed kinds.
    let (code, err) = run_err(&["knowledge", "add", "--kind", "rumour", "x"], d.path());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("convention, pattern, testing or pitfall"),
        "{err}"
    );
    let (code, err) = run_err(&["knowledge", "add", "--kind", "pitfall", "   "], d.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("empty"), "{err}");
    let id = run_ok(
        &["knowledge", "add", "--kind", "pitfall", "tests need TZ=UTC"],
        d.path(),
    );
    // The same lesson (case and spacing aside) is one entry.
    let again = run_ok(
        &[
            "knowledge",
            "add",
            "--kind",
            "pitfall",
            "Tests  need tz=utc",
        ],
        d.path(),
    );
    assert_eq!(id.trim(), again.trim());
    let list = run_ok(&["knowledge", "list"], d.path());
    assert!(list.contains("pitfall:"), "{list}");
    assert!(list.contains("tests need TZ=UTC"), "{list}");
    assert_eq!(list.matches("TZ=UTC").count(), 1, "{list}");
    // The addition is on the timeline.
    let events = run_ok(&["events", "--json"], d.path());
    let kinds: Vec<String> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["kind"].as_str().map(str::to_string))
        .collect();
    assert!(kinds.iter().any(|k| k == "pattern_discovered"), "{events}");
    let text = run_ok(&["events", "--tail", "1"], d.path());
    assert!(text.contains("learned"), "{text}");
}

/// The first `12D3KooW…` id in `text`.
fn first_id(text: &str) -> String {
    let at = text.find("12D3KooW").expect("an id");
    text[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect()
}

#[cfg(unix)]
#[test]
fn an_operator_admits_and_revokes_nodes_through_the_cli() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let op_key = keys.path().join("op.key");
    let op_key = op_key.to_str().expect("utf-8 path");
    let out = run_ok(&["operator", "init", "--key", op_key], d.path());
    let operator = first_id(&out);
    let mode = std::fs::metadata(op_key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        run_ok(&["operator", "id", "--key", op_key], d.path()).trim(),
        operator
    );
    let (code, err) = run_err(&["operator", "init", "--key", op_key], d.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already exists"), "{err}");

    let out = run_ok(&["init", "--operator", &operator], d.path());
    let me = first_id(&out);
    assert!(out.contains(&format!("mesh-agent admit {me}")), "{out}");
    let _node = spawn_node(d.path());
    let status = run_ok(&["status"], d.path());
    assert!(status.contains("NOT ADMITTED"), "{status}");
    let (code, err) = run_err(&["story", "add", "--title", "too early"], d.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("mesh-agent admit {me}")), "{err}");

    // Only an operator's key admits; bad ids are usage errors.
    let stranger = keys.path().join("stranger.key");
    let stranger = stranger.to_str().expect("utf-8 path");
    run_ok(&["operator", "init", "--key", stranger], d.path());
    let (code, err) = run_err(&["admit", &me, "--key", stranger], d.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not an operator"), "{err}");
    let (code, err) = run_err(&["admit", "node-7", "--key", op_key], d.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a node's peer id"), "{err}");

    let out = run_ok(
        &["admit", &me, "--key", op_key, "--note", "first"],
        d.path(),
    );
    assert!(out.contains("admitted"), "{out}");
    let out = run_ok(&["admit", &me, "--key", op_key], d.path());
    assert!(out.contains("already admitted"), "{out}");
    run_ok(
        &["story", "add", "--title", "written once admitted"],
        d.path(),
    );
    let list = run_ok(&["story", "list"], d.path());
    assert!(list.contains("written once admitted"), "{list}");
    let status = run_ok(&["status"], d.path());
    assert!(status.contains("this node is a member"), "{status}");

    // A revoke is final.
    let other = first_id(&run_ok(&["init"], tempfile::tempdir().unwrap().path()));
    run_ok(&["admit", &other, "--key", op_key], d.path());
    let out = run_ok(
        &["revoke", &other, "--key", op_key, "--note", "gone"],
        d.path(),
    );
    assert!(out.contains("revoked"), "{out}");
    let (code, err) = run_err(&["admit", &other, "--key", op_key], d.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("final"), "{err}");
    let roster: serde_json::Value =
        serde_json::from_str(&run_ok(&["roster", "--json"], d.path())).expect("json");
    assert_eq!(roster["enforced"], true);
    assert_eq!(roster["operators"][0], operator.as_str());
    assert_eq!(roster["admitted"].as_array().map(Vec::len), Some(2));
    assert_eq!(roster["revoked"][0]["peer"], other.as_str());
    assert_eq!(roster["revoked"][0]["note"], "gone");
    let text = run_ok(&["roster"], d.path());
    assert!(
        text.contains("members (1)") && text.contains("revoked (1)"),
        "{text}"
    );

    // `status --bootstrap` observes with a fresh key the roster does not hold: the member
    // refuses it as it connects, before any of the document leaves (it used to hand it
    // the whole document in a first sync), and the observer says why at once rather than
    // wait out its timeout.
    let status: serde_json::Value =
        serde_json::from_str(&run_ok(&["status", "--json"], d.path())).expect("json");
    let addr = status["listen_addrs"][0]
        .as_str()
        .expect("a listen address");
    let observer = tempfile::tempdir().unwrap();
    let (code, err) = run_err(
        &[
            "status",
            "--bootstrap",
            &format!("{addr}/p2p/{me}"),
            "--timeout-secs",
            "120",
        ],
        observer.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("closed each connection as it opened"), "{err}");
    assert!(!err.contains("within 120s"), "{err}");
    let status: serde_json::Value =
        serde_json::from_str(&run_ok(&["status", "--json"], d.path())).expect("json");
    assert!(
        status["counters"]["sync_sessions_completed"].as_u64() == Some(0),
        "the member synced with a non-member: {}",
        status["counters"]
    );
}

/// `log --json` names the verified author of each fact: the node that added the story and
/// the node that claimed it (here the same node, by its peer id).
#[test]
fn the_audit_trail_names_who_added_and_who_claimed_a_story() {
    let d = tempfile::tempdir().unwrap();
    let init = run_ok(&["init"], d.path());
    let peer = init
        .lines()
        .find_map(|l| l.strip_prefix("node "))
        .expect("init prints the node's peer id")
        .trim()
        .to_string();
    let (code, err) = run_err(&["log"], d.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("no node is running") && err.contains("mesh-agent run"),
        "{err}"
    );
    // Fast heartbeats: the node's warm-up before its first claim is three of them.
    let _node = spawn_node_with(
        d.path(),
        &["--heartbeat-ms", "100", "--dead-after-ms", "1000"],
    );
    run_ok(&["story", "add", "--title", "lexer"], d.path());
    let parse = |out: &str| -> Vec<serde_json::Value> {
        out.lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    };
    // Poll the trail until the node's claim is in it (it claims after its warm-up).
    let deadline = Instant::now() + Duration::from_secs(60);
    let entries = loop {
        let entries = parse(&run_ok(&["log", "--json"], d.path()));
        if entries.iter().any(|e| e["kind"] == "claim") {
            break entries;
        }
        assert!(
            Instant::now() < deadline,
            "the node never claimed: {entries:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let story = entries
        .iter()
        .find(|e| e["kind"] == "story")
        .expect("the story is in the trail");
    assert_eq!(story["action"], "story added: lexer");
    assert_eq!(story["author"], peer.as_str());
    assert_eq!(story["story"], "S-0001");
    assert_eq!(story["standing"], "counts");
    assert!(story["at_ms"].as_u64().is_some_and(|t| t > 0), "{story}");
    let claim = entries
        .iter()
        .find(|e| e["kind"] == "claim")
        .expect("the claim is in the trail");
    assert_eq!(claim["author"], peer.as_str());
    assert_eq!(claim["story"], "S-0001");
    assert!(
        claim["action"]
            .as_str()
            .is_some_and(|a| a.starts_with("claimed research token 1")),
        "{claim}"
    );
    assert!(
        entries.iter().all(|e| e["standing"] != "refused"),
        "{entries:#?}"
    );
    // Text: the peer id shortened as everywhere in the CLI, one story, a tail.
    let text = run_ok(&["log", "--story", "S-0001", "--tail", "1"], d.path());
    assert_eq!(text.lines().count(), 1, "{text}");
    let all = run_ok(&["log", "--story", "s-1"], d.path());
    let short = &peer[peer.len() - 8..];
    assert!(
        all.lines()
            .any(|l| l.contains(short) && l.contains("story added: lexer")),
        "{all}"
    );
    // An unknown story is a usage error naming it.
    let (code, err) = run_err(&["log", "--story", "S-0099"], d.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("S-0099"), "{err}");
}

/// The operator commands as a user types them: signed with the operator key, refused with
/// a usage error (exit 2) for a stranger's key, a missing key or a command that cannot
/// apply, and shown in `status`, `story show`, `attention` and the audit trail.
#[test]
fn an_operator_steers_through_the_cli() {
    let d = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let op_key = keys.path().join("op.key");
    let op_key = op_key.to_str().expect("utf-8 path");
    let operator = first_id(&run_ok(&["operator", "init", "--key", op_key], d.path()));
    let me = first_id(&run_ok(&["init", "--operator", &operator], d.path()));
    let _node = spawn_node(d.path());
    run_ok(&["admit", &me, "--key", op_key], d.path());
    let out = run_ok(
        &["pause", "--all", "--reason", "loading", "--key", op_key],
        d.path(),
    );
    assert!(out.contains("pause the whole mesh: loading"), "{out}");
    run_ok(&["story", "add", "--title", "steered"], d.path());
    let out = run_ok(
        &[
            "pause",
            "S-1",
            "--reason",
            "wait for the spec",
            "--key",
            op_key,
        ],
        d.path(),
    );
    assert!(out.contains("pause story S-0001@"), "{out}");
    let show = run_ok(&["story", "show", "S-0001"], d.path());
    assert!(show.contains("paused     by operator"), "{show}");
    assert!(show.contains("wait for the spec"), "{show}");
    let status = run_ok(&["status"], d.path());
    assert!(
        status.contains("PAUSED by an operator: the whole mesh: loading"),
        "{status}"
    );
    assert!(
        run_ok(&["attention"], d.path()).contains("nothing needs a human"),
        "an empty queue says so"
    );
    // A stranger's key, no key at all, and a command that cannot apply: usage errors.
    let stranger = keys.path().join("stranger.key");
    let stranger = stranger.to_str().expect("utf-8 path");
    run_ok(&["operator", "init", "--key", stranger], d.path());
    let (code, err) = run_err(&["cancel", "S-0001", "--key", stranger], d.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not an operator"), "{err}");
    let missing = keys.path().join("none.key");
    let (code, err) = run_err(
        &[
            "cancel",
            "S-0001",
            "--key",
            missing.to_str().expect("utf-8"),
        ],
        d.path(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("operator init"), "{err}");
    let (code, err) = run_err(&["approve", "S-0001", "--key", op_key], d.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nothing to approve"), "{err}");
    let (code, err) = run_err(&["prioritize", "S-0001", "0", "--key", op_key], d.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("out of range"), "{err}");
    // Cancel, and the trail says who.
    run_ok(
        &["cancel", "S-0001", "--reason", "dup", "--key", op_key],
        d.path(),
    );
    let show = run_ok(&["story", "show", "S-0001"], d.path());
    assert!(show.contains("status     cancelled"), "{show}");
    let log = run_ok(&["log", "--story", "S-0001"], d.path());
    assert!(log.contains("operator command: cancel story"), "{log}");
    run_ok(&["resume", "--all", "--key", op_key], d.path());
    let status = run_ok(&["status"], d.path());
    assert!(!status.contains("PAUSED"), "{status}");
    // Money: the books, a budget and a story's limit, as the operator sets them.
    assert!(
        run_ok(&["budget"], d.path()).contains("budget   none"),
        "no budget until an operator sets one"
    );
    let out = run_ok(
        &["budget", "set", "--daily", "12.5", "--key", op_key],
        d.path(),
    );
    assert!(out.contains("$12.50 a day in 1 allowances"), "{out}");
    run_ok(&["story", "add", "--title", "priced"], d.path());
    let out = run_ok(
        &["budget", "limit", "S-0002", "2", "--key", op_key],
        d.path(),
    );
    assert!(out.contains("budget limit story S-0002@"), "{out}");
    let books = run_ok(&["budget"], d.path());
    assert!(books.contains("$12.50 a day"), "{books}");
    assert!(books.contains("$12.50"), "the node's share: {books}");
    assert!(books.contains("S-0002"), "the story with a limit: {books}");
    let json: serde_json::Value =
        serde_json::from_str(&run_ok(&["budget", "--json"], d.path())).expect("json");
    assert_eq!(json["daily_micro_usd"], 12_500_000);
    assert_eq!(json["stories"][0]["limit_micro_usd"], 2_000_000);
    let (code, err) = run_err(
        &["budget", "set", "--daily", "-3", "--key", op_key],
        d.path(),
    );
    assert_eq!(code, 2, "{err}");
    let (code, err) = run_err(
        &["budget", "set", "--daily", "5", "--key", stranger],
        d.path(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not an operator"), "{err}");
    let status = run_ok(&["status"], d.path());
    assert!(status.contains("budget: $0.00 of $12.50 a day"), "{status}");
}
