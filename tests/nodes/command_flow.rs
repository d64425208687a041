//! The `command` executor inside real nodes (issue 4): two nodes on loopback configured
//! with `executor = "command"` through their config.toml, a bare origin holding the demo
//! project, and per-phase scripts. A well-behaved run (examples/executors/shell-sim.sh,
//! one phase answering through `$MESH_HANDOFF_FILE`) lands a story on main; an implement
//! phase that hangs, prints garbage, exits non-zero or floods its output is a failed
//! attempt with a reason a human can act on, the story is blocked after `MAX_ATTEMPTS`,
//! no process outlives its job, and the node goes on landing other work.

use crate::common::*;
use libp2p::identity::Keypair;
use mesh_agent::config::Config;
use mesh_agent::core::model::{EventKind, NewStory, Phase, StoryStatus, Verdict, MAX_ATTEMPTS};
use mesh_agent::core::state::{StoryView, View};
use mesh_agent::demo;
use mesh_agent::git::main_log;
use mesh_agent::node::NodeHandle;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one phase may run (the hanging script is killed after this).
const TIMEOUT_SECS: u64 = 2;
/// The cap on each of stdout and stderr (the flooding script goes over it).
const MAX_OUTPUT: u64 = 64 * 1024;

fn shell_sim() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/executors/shell-sim.sh")
}

fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("script written");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The implement phase: misbehaves by story title, or hands over to shell-sim.sh. The
/// hanging and flooding variants record their pids in `<pids>/<kind>` so the test can
/// check that nothing outlives the job.
fn implement_script(dir: &Path, pids: &Path) -> PathBuf {
    let path = dir.join("implement.sh");
    let text = format!(
        r#"#!/bin/sh
# The story's title, from the pretty-printed job JSON.
title=$(sed -n 's/^ *"title": "\([^"]*\)".*/\1/p' "$MESH_JOB_FILE" | head -n 1)
pids={pids}
case "$title" in
*hang*)
    echo $$ >>"$pids/hang"
    sleep 600 &
    echo $! >>"$pids/hang"
    wait
    ;;
*garbage*)
    echo "Sure! I changed the code as you asked."
    echo "Everything is done, have a nice day."
    ;;
*fail*)
    echo "compiling..."
    echo "implement.sh: cannot build: missing dependency libfoo" >&2
    exit 3
    ;;
*flood*)
    echo $$ >>"$pids/flood"
    exec yes "a line of output that never ends"
    ;;
*)
    exec {sim}
    ;;
esac
"#,
        pids = shell_quote(pids),
        sim = shell_quote(&shell_sim()),
    );
    write_script(&path, &text);
    path
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// A node's config as a user writes it (config.toml in its data directory, read with
/// `Config::load`); `command` is the `[command]` table and its subtables.
fn load_config(dir: &Path, origin: &Path, command: &str) -> Config {
    std::fs::create_dir_all(dir).expect("node dir");
    let text = format!(
        r#"executor = "command"
origin = {origin:?}
test_command = ["sh", "test.sh"]
test_timeout_secs = 60
capacity = 2

{command}
"#,
        origin = origin.display().to_string(),
    );
    std::fs::write(dir.join("config.toml"), text).expect("config written");
    Config::load(dir, Vec::<(String, String)>::new()).expect("config.toml loads")
}

/// Starts a node whose executor comes from its loaded config (no Executor object).
async fn start_node(
    dir: &Path,
    key: &Keypair,
    boot: Option<&NodeHandle>,
    file: &Config,
) -> NodeHandle {
    let file = file.clone();
    start_with(
        dir,
        key,
        boot,
        move |c| {
            fast_leases(c);
            c.executor = file.executor;
            c.command = file.command;
            c.origin = file.origin;
            c.test_command = file.test_command;
            c.test_timeout_secs = file.test_timeout_secs;
            c.capacity = file.capacity;
        },
        None,
    )
    .await
}

/// Two nodes (review must run on a node other than the implementer) sharing `command`.
async fn two_nodes(tmp: &Path, origin: &Path, command: &str) -> Vec<NodeHandle> {
    let keys: Vec<Keypair> = (0..2).map(|_| Keypair::generate_ed25519()).collect();
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let dir = tmp.join(format!("n{i}"));
        let cfg = load_config(&dir, origin, command);
        assert_eq!(cfg.executor, "command");
        assert_eq!(cfg.command.timeout_secs, TIMEOUT_SECS);
        let n = start_node(&dir, k, nodes.first(), &cfg).await;
        nodes.push(n);
    }
    let refs: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all_alive(&refs).await;
    nodes
}

fn story(title: &str, file: &str) -> NewStory {
    NewStory {
        title: title.into(),
        body: format!("{title}: a story for the command executor tests."),
        priority: None,
        depends_on: vec![],
        files: vec![file.into()],
        labels: vec![],
        imported: None,
    }
}

fn by_title<'a>(v: &'a View, title: &str) -> Option<&'a StoryView> {
    v.stories
        .values()
        .map(|s| &**s)
        .find(|s| &*s.fact.title == title)
}

/// Whether the story with `key` landed on main (a commit with its `Mesh-Story-Key`).
fn landed(origin: &Path, key: &str) -> usize {
    main_log(origin)
        .expect("main log")
        .iter()
        .filter(|c| c.trailer("Mesh-Story-Key") == Some(key))
        .count()
}

/// A file's content on the origin's main.
fn on_main(origin: &Path, file: &str) -> String {
    let repo = git2::Repository::open_bare(origin).expect("origin opens");
    let tree = repo
        .find_reference("refs/heads/main")
        .and_then(|r| r.peel_to_tree())
        .expect("main");
    let entry = tree.get_path(Path::new(file)).expect("file on main");
    let blob = repo.find_blob(entry.id()).expect("blob");
    String::from_utf8_lossy(blob.content()).into_owned()
}

/// A process is gone: no /proc entry, or a zombie waiting to be reaped.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X'))
        }
    }
}

fn pids_in(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A well-behaved run through the command executor lands a story: every phase runs
/// shell-sim.sh, research answers through `$MESH_HANDOFF_FILE` (its stdout redirected
/// there), the others on stdout; the handoffs reach the document, the change reaches
/// main with its trailers, and review ran on the node that did not implement.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_well_behaved_command_run_lands_a_story() {
    let tmp = tempfile::tempdir().expect("tmp");
    let origin = tmp.path().join("origin.git");
    demo::create_origin(&origin).expect("origin");
    let sim = shell_sim();
    let command = format!(
        r#"[command]
program = {sim:?}
timeout_secs = {TIMEOUT_SECS}
max_output_bytes = {MAX_OUTPUT}

[command.phases.research]
program = "sh"
args = ['-c', 'exec "$0" >"$1"', {sim:?}, '{{handoff_file}}']
"#,
        sim = sim.display().to_string(),
    );
    let nodes = two_nodes(tmp.path(), &origin, &command).await;
    let added = nodes[0]
        .add_story(story("Read an expression from argv", "src/cli.txt"))
        .await
        .expect("story added");
    let view = wait_view(&nodes[0], "the story merged or blocked", 60, |v| {
        v.stories
            .get(added.key.as_str())
            .is_some_and(|s| matches!(s.status, StoryStatus::Merged | StoryStatus::Blocked))
    })
    .await;
    let s = &view.stories[added.key.as_str()];
    assert_eq!(
        s.status,
        StoryStatus::Merged,
        "not merged: blocked_reason={:?} failures={:?}",
        s.more.blocked_reason,
        s.more.failures
    );
    assert!(s.more.blocked_reason.is_none());

    // Main holds the change once, with its trailers, and the edit shell-sim made.
    assert_eq!(landed(&origin, &s.key), 1, "{} not on main once", s.key);
    let log = main_log(&origin).expect("main log");
    let c = log
        .iter()
        .find(|c| c.trailer("Mesh-Story-Key") == Some(s.key.as_str()))
        .expect("landing");
    assert_eq!(c.trailer("Mesh-Story"), Some(s.id.as_str()));
    assert_eq!(c.trailer("Mesh-Phase"), Some("merge"));
    let cli = on_main(&origin, "src/cli.txt");
    let line = format!("{}: edited by shell-sim (round 0)", s.id);
    assert!(cli.contains(&line), "src/cli.txt on main: {cli:?}");
    assert_eq!(
        s.more.merged.as_ref().map(|m| m.commit.clone()),
        Some(c.oid.to_string())
    );

    // The handoffs came back from the program into the document.
    let result = |p: Phase| {
        view.results
            .values()
            .find(|r| r.story == s.key && r.phase == p)
            .unwrap_or_else(|| panic!("no {p} result for {}", s.id))
    };
    let research = result(Phase::Research);
    assert_eq!(
        research.handoff.summary,
        format!("research of {} done (shell-sim)", s.id)
    );
    assert_eq!(research.handoff.files, vec!["src/cli.txt".to_string()]);
    assert_eq!(research.handoff.learnings.len(), 1);
    assert!(
        view.knowledge
            .values()
            .any(|k| k.text == "changes append one line per story"),
        "research's learning is not in the knowledge: {:?}",
        view.knowledge
    );
    let plan = result(Phase::Plan);
    assert_eq!(plan.handoff.suggested_approach, "small, tested steps");
    let implement = result(Phase::Implement);
    assert_eq!(
        implement.handoff.summary,
        format!("implement of {} done (shell-sim)", s.id)
    );
    assert_eq!(implement.handoff.confidence, Some(90));
    assert!(
        implement.handoff.commit.is_some(),
        "the node names the commit"
    );
    let review = result(Phase::Review);
    assert_eq!(review.handoff.verdict, Some(Verdict::Approve));
    assert_ne!(
        review.holder, implement.holder,
        "review ran on the implementer"
    );
    assert_eq!(
        s.more.implementer.as_deref(),
        Some(implement.holder.as_str())
    );

    // Research answered through the handoff file: it is in the node's logs, and its
    // stdout (redirected into the file) is empty.
    let idx = nodes
        .iter()
        .position(|n| n.peer_id.to_string() == research.holder)
        .expect("research ran on one of the nodes");
    let logs = tmp.path().join(format!("n{idx}/work/logs"));
    let stem_prefix = format!("{}-research-", s.id);
    let names: Vec<String> = std::fs::read_dir(&logs)
        .expect("log dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&stem_prefix))
        .collect();
    let handoff_file = names
        .iter()
        .find(|n| n.ends_with(".handoff.json"))
        .unwrap_or_else(|| panic!("no research handoff file in {}: {names:?}", logs.display()));
    let written = std::fs::read_to_string(logs.join(handoff_file)).expect("handoff file");
    assert!(written.contains("research of"), "{written}");
    let stdout = handoff_file.replace(".handoff.json", ".stdout");
    assert_eq!(
        std::fs::read_to_string(logs.join(&stdout)).expect("stdout log"),
        "",
        "research printed on stdout"
    );
    let job = handoff_file.replace(".handoff.json", ".job.json");
    let job = std::fs::read_to_string(logs.join(&job)).expect("job file");
    assert!(
        job.contains("\"title\": \"Read an expression from argv\""),
        "{job}"
    );

    for n in &nodes {
        let st = within("status", 10, n.status())
            .await
            .expect("status answers");
        assert!(st.held.is_empty(), "claims still held: {:?}", st.held);
    }
    for n in nodes {
        n.shutdown().await;
    }
}

/// Each way an implement program can misbehave: the title selects it, the marker is what
/// the blocked reason must say.
const MISBEHAVIOURS: [(&str, &str, &[&str]); 4] = [
    (
        "Misbehave: hang",
        "src/lexer.txt",
        &["timed out after 2s", "command.timeout_secs"],
    ),
    (
        "Misbehave: garbage",
        "src/parser.txt",
        &["no handoff", "Sure! I changed the code"],
    ),
    (
        "Misbehave: fail",
        "src/eval.txt",
        &["exited with code 3", "missing dependency libfoo"],
    ),
    (
        "Misbehave: flood",
        "src/errors.txt",
        &["stdout exceeded 65536 bytes", "command.max_output_bytes"],
    ),
];

/// An implement program that hangs, prints no JSON, exits non-zero or floods its output
/// fails each attempt with a clear reason; after `MAX_ATTEMPTS` the story is blocked with
/// that reason, its processes are dead, and the node stays healthy: it answers and lands
/// a well-behaved story added afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_misbehaving_program_blocks_its_story_and_the_node_carries_on() {
    let tmp = tempfile::tempdir().expect("tmp");
    let origin = tmp.path().join("origin.git");
    demo::create_origin(&origin).expect("origin");
    let scripts = tmp.path().join("scripts");
    let pids = tmp.path().join("pids");
    std::fs::create_dir_all(&scripts).expect("scripts dir");
    std::fs::create_dir_all(&pids).expect("pids dir");
    let implement = implement_script(&scripts, &pids);
    let command = format!(
        r#"[command]
program = {sim:?}
timeout_secs = {TIMEOUT_SECS}
max_output_bytes = {MAX_OUTPUT}

[command.phases.implement]
program = {implement:?}
"#,
        sim = shell_sim().display().to_string(),
        implement = implement.display().to_string(),
    );
    let nodes = two_nodes(tmp.path(), &origin, &command).await;
    let mut keys = Vec::new();
    for (title, file, _) in MISBEHAVIOURS {
        let s = nodes[0]
            .add_story(story(title, file))
            .await
            .expect("story added");
        keys.push(s.key);
    }
    let settled = |v: &View| {
        keys.iter().all(|k| {
            v.stories
                .get(k)
                .is_some_and(|s| matches!(s.status, StoryStatus::Merged | StoryStatus::Blocked))
        })
    };
    let view = wait_view(&nodes[0], "every misbehaving story blocked", 60, settled).await;

    for (title, _, markers) in MISBEHAVIOURS {
        let s = by_title(&view, title).expect("story");
        assert_eq!(
            s.status,
            StoryStatus::Blocked,
            "{title} is {} (failures {:?})",
            s.status,
            s.more.failures
        );
        let reason = s.more.blocked_reason.as_deref().expect("a blocked reason");
        assert!(
            reason.starts_with("implement failed"),
            "{title}: blocked reason {reason:?}"
        );
        for m in markers {
            assert!(
                reason.contains(m),
                "{title}: blocked reason lacks {m:?}: {reason}"
            );
        }
        assert!(
            s.attempts >= MAX_ATTEMPTS,
            "{title}: {} attempts",
            s.attempts
        );
        assert!(!s.more.failures.is_empty(), "{title}: no failures listed");
        // Every failure is the program's (or, on a loaded machine, a lost lease); the
        // program's reason names the logs to read. A git error here ("reference ... not
        // found", "already checked out") means the next attempt raced the removal of the
        // previous attempt's worktree: an attempt wasted by the node, not the program.
        let own = s
            .more
            .failures
            .iter()
            .filter(|f| f.contains(markers[0]))
            .count();
        assert!(own >= 1, "{title}: failures {:?}", s.more.failures);
        for f in &s.more.failures {
            assert!(
                f.contains(markers[0]) || f.contains("lease"),
                "{title}: unexpected failure {f:?}"
            );
        }
        assert!(
            s.more
                .failures
                .iter()
                .any(|f| f.contains("logs: ") && f.contains(".stdout/.stderr")),
            "{title}: no failure names its logs: {:?}",
            s.more.failures
        );
        assert_eq!(s.phases_done, vec![Phase::Research, Phase::Plan]);
        assert!(s.next_phase.is_none());
        assert_eq!(landed(&origin, &s.key), 0, "{title} landed");
    }

    // Nothing a timed-out or flooding program started outlives its job.
    for kind in ["hang", "flood"] {
        let ps = pids_in(&pids.join(kind));
        assert!(!ps.is_empty(), "the {kind} script never ran");
        within(&format!("the {kind} processes to die"), 10, async {
            while ps.iter().any(|&p| alive(p)) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }

    // The node that ran the last attempt reported the story blocked, with the reason
    // (events name stories by display id).
    let mut events = Vec::new();
    for n in &nodes {
        events.extend(n.events(0).await.expect("events"));
    }
    for key in &keys {
        let s = &view.stories[key];
        let blocked = events
            .iter()
            .find(|(_, e)| e.kind == EventKind::StoryBlocked && e.story == s.id)
            .unwrap_or_else(|| panic!("no story_blocked event for {}", s.id));
        // The detail is the reason (cut at MAX_EVENT_DETAIL bytes).
        let reason = s.more.blocked_reason.as_deref().unwrap_or_default();
        let detail = &blocked.1.detail;
        let common = detail
            .bytes()
            .zip(reason.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        assert!(
            detail.starts_with("implement failed") && common >= detail.len().min(200),
            "{}: event detail {detail:?} is not the blocked reason {reason:?}",
            s.id
        );
        let failed = events
            .iter()
            .filter(|(_, e)| {
                e.kind == EventKind::PhaseFailed
                    && e.story == s.id
                    && e.phase == Some(Phase::Implement)
            })
            .count();
        assert!(failed >= 1, "no phase_failed event for {}", s.id);
    }

    // The nodes are healthy: they answer, hold nothing, and land a well-behaved story.
    for n in &nodes {
        wait_view(n, "this node sees every story blocked", 30, |v| {
            keys.iter().all(|k| {
                v.stories
                    .get(k)
                    .is_some_and(|s| s.status == StoryStatus::Blocked)
            })
        })
        .await;
        let st = within("status", 10, n.status())
            .await
            .expect("status answers");
        assert!(st.held.is_empty(), "claims still held: {:?}", st.held);
        assert_eq!(
            st.story_counts.get("blocked").copied(),
            Some(4),
            "{:?}",
            st.story_counts
        );
    }
    let good = nodes[1]
        .add_story(story("Read an expression from argv", "src/cli.txt"))
        .await
        .expect("story added");
    let view = wait_view(
        &nodes[0],
        "the well-behaved story merged or blocked",
        60,
        |v| {
            v.stories
                .get(good.key.as_str())
                .is_some_and(|s| matches!(s.status, StoryStatus::Merged | StoryStatus::Blocked))
        },
    )
    .await;
    let s = &view.stories[good.key.as_str()];
    assert_eq!(
        s.status,
        StoryStatus::Merged,
        "not merged: {:?} {:?}",
        s.more.blocked_reason,
        s.more.failures
    );
    assert_eq!(landed(&origin, &good.key), 1);
    let cli = on_main(&origin, "src/cli.txt");
    assert!(
        cli.contains(&format!("{}: edited by shell-sim (round 0)", s.id)),
        "{cli:?}"
    );
    for key in &keys {
        assert_eq!(landed(&origin, key), 0);
        assert_eq!(view.stories[key].status, StoryStatus::Blocked);
    }
    for n in nodes {
        n.shutdown().await;
    }
}
