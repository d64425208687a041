//! The `command` executor against real processes: where the handoff comes from, every
//! way a program can fail (each with the reason a human will read), the clean
//! environment, the process group dying with the future, and the example wrappers in
//! examples/executors/ (shell-sim.sh for real; claude.sh and codex.sh against fake CLIs).

use mesh_agent::core::model::{
    Handoff, KnowledgeFact, KnowledgeKind, Phase, ResultFact, StoryFact, Verdict,
};
use mesh_agent::exec::command::{log_stem, CommandConfig, CommandExecutor, PhaseCommand};
use mesh_agent::exec::{ExecError, Executor, Job, Workspace};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A job for story S-0001 ("Add login") planning to change `files`.
fn job(phase: Phase, files: &[&str]) -> Job {
    let files: Vec<String> = files.iter().map(|f| f.to_string()).collect();
    Job {
        claim: "12D3KooWtestpeer-7".into(),
        story: "S-0001@ab12".into(),
        display_id: "S-0001".into(),
        phase,
        round: 0,
        token: 3,
        attempt: 1,
        fact: StoryFact {
            number: 1,
            created_by: "12D3KooWtestpeer".into(),
            created_at_ms: 0,
            title: "Add login".into(),
            body: "Users log in with a password.".into(),
            priority: 100,
            depends_on: Default::default(),
            files: files.iter().map(|f| f.as_str().into()).collect(),
            labels: Default::default(),
            source: Default::default(),
            imported: None,
        },
        handoffs: vec![],
        files,
        knowledge: vec![],
        failures: vec![],
        notes: vec![],
    }
}

/// A temporary worktree (`<tmp>/work`) and log directory (`<tmp>/logs`).
fn workspace() -> (TempDir, Workspace) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("work");
    std::fs::create_dir_all(&dir).expect("worktree");
    let ws = Workspace {
        dir,
        log_dir: tmp.path().join("logs"),
        node: "12D3KooWtestpeer".into(),
    };
    (tmp, ws)
}

/// Runs `script` with `sh -c`; `extra` become `$0`, `$1`, ...
fn sh(script: &str, extra: &[&str]) -> CommandConfig {
    let mut args = vec!["-c".to_string(), script.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    CommandConfig {
        program: "sh".into(),
        args,
        timeout_secs: 60,
        ..CommandConfig::default()
    }
}

async fn run(cfg: CommandConfig, job: Job, ws: &Workspace) -> Result<Handoff, ExecError> {
    CommandExecutor::new(cfg)
        .expect("valid config")
        .run(job, ws.clone())
        .await
}

fn log_file(ws: &Workspace, job: &Job, ext: &str) -> PathBuf {
    ws.log_dir.join(format!("{}.{ext}", log_stem(job)))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Polls `cond` until it holds, failing after a generous deadline (a loaded machine is
/// slow; the condition, not the time, is what is waited for).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process is gone: no /proc entry, or a zombie (dead, not yet reaped).
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state == 'Z' || state == 'X'),
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn example(name: &str) -> String {
    format!("{}/examples/executors/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn the_last_json_object_on_stdout_is_the_handoff_and_output_is_logged() {
    let (_tmp, ws) = workspace();
    let job = job(Phase::Research, &[]);
    let script = r#"
        echo "reading the code..."
        echo "a warning for the log" >&2
        echo '{"summary": "an earlier draft"}'
        printf '{"summary": "done in %s", "findings": ["f1"], "confidence": 250}\n' "$(pwd)"
        echo "bye"
    "#;
    let h = run(sh(script, &[]), job.clone(), &ws)
        .await
        .expect("handoff");
    assert_eq!(h.summary, format!("done in {}", ws.dir.display()));
    assert_eq!(h.findings, vec!["f1"]);
    assert_eq!(h.confidence, Some(100), "confidence is capped at 100");

    let stdout = read(&log_file(&ws, &job, "stdout"));
    assert!(stdout.starts_with("reading the code...\n"), "{stdout}");
    assert!(stdout.ends_with("bye\n"), "{stdout}");
    assert_eq!(
        read(&log_file(&ws, &job, "stderr")),
        "a warning for the log\n"
    );
    assert!(log_file(&ws, &job, "job.json").is_file());
    assert!(log_file(&ws, &job, "prompt.md").is_file());
    let stem = log_stem(&job);
    assert!(stem.starts_with("S-0001-research-"), "{stem}");
    assert_eq!(
        std::fs::read_dir(&ws.dir).expect("worktree").count(),
        0,
        "nothing is written into the worktree"
    );
}

#[tokio::test]
async fn a_handoff_written_to_the_handoff_file_wins_over_stdout() {
    let (_tmp, ws) = workspace();
    let job = job(Phase::Review, &[]);
    // `{handoff_file}` in the arguments and $MESH_HANDOFF_FILE name the same file.
    let script = r#"
        [ "$0" = "$MESH_HANDOFF_FILE" ] || { echo "template and env disagree" >&2; exit 9; }
        echo '{"summary": "from file", "verdict": "reject", "warnings": ["add a test"]}' > "$0"
        echo '{"summary": "from stdout", "verdict": "approve"}'
    "#;
    let h = run(sh(script, &["{handoff_file}"]), job.clone(), &ws)
        .await
        .expect("handoff");
    assert_eq!(h.summary, "from file");
    assert_eq!(h.verdict, Some(Verdict::Reject));
    assert_eq!(h.warnings, vec!["add a test"]);
    assert!(log_file(&ws, &job, "handoff.json").is_file());
}

#[tokio::test]
async fn a_hanging_program_times_out_and_its_process_group_is_killed() {
    let (tmp, ws) = workspace();
    let pid_file = tmp.path().join("leader.pid");
    let mut cfg = sh(
        r#"echo $$ > "$0"; sleep 1000"#,
        &[pid_file.to_str().unwrap()],
    );
    cfg.timeout_secs = 1;
    let started = Instant::now();
    let err = run(cfg, job(Phase::Plan, &[]), &ws).await.unwrap_err();
    assert!(
        matches!(err, ExecError::TimedOut { secs: 1, .. }),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(
        err.starts_with("sh: timed out after 1s (command.timeout_secs); killed its process group"),
        "{err}"
    );
    assert!(err.contains("logs: "), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let pid = read_pid(&pid_file).expect("the script wrote its pid");
    eventually("the timed-out program to die", || is_dead(pid)).await;
}

#[tokio::test]
async fn output_that_is_not_json_is_no_handoff() {
    let (_tmp, ws) = workspace();
    let err = run(
        sh("echo 'I refactored everything, trust me'", &[]),
        job(Phase::Implement, &[]),
        &ws,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ExecError::BadHandoff { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.starts_with(
            "sh: no handoff: expected JSON on stdout or in $MESH_HANDOFF_FILE; got: \
             \"I refactored everything, trust me\""
        ),
        "{err}"
    );

    let err = run(sh("true", &[]), job(Phase::Implement, &[]), &ws)
        .await
        .unwrap_err();
    assert!(matches!(err, ExecError::BadHandoff { .. }), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("got: nothing (stdout was empty)"), "{err}");

    // JSON, but not a handoff: no handoff field at all.
    let err = run(
        sh(r#"echo '{"level": "info", "msg": "done"}'"#, &[]),
        job(Phase::Implement, &[]),
        &ws,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ExecError::BadHandoff { .. }), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("none of the handoff fields"), "{err}");

    // A handoff with a field of the wrong type.
    let err = run(
        sh(r#"echo '{"summary": "x", "verdict": "maybe"}'"#, &[]),
        job(Phase::Implement, &[]),
        &ws,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ExecError::BadHandoff { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.contains("invalid handoff on stdout: unknown variant `maybe`"),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_json_in_the_handoff_file_is_reported_as_such() {
    let (_tmp, ws) = workspace();
    let err = run(
        sh(
            r#"echo 'summary: done' > "$MESH_HANDOFF_FILE"; echo '{"summary": "ok"}'"#,
            &[],
        ),
        job(Phase::Plan, &[]),
        &ws,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ExecError::BadHandoff { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.starts_with("sh: invalid handoff in $MESH_HANDOFF_FILE ("),
        "{err}"
    );
    assert!(err.contains("got: \"summary: done\""), "{err}");
}

#[tokio::test]
async fn a_non_zero_exit_reports_the_code_and_the_end_of_stderr() {
    let (_tmp, ws) = workspace();
    let script = r#"
        i=0; while [ $i -lt 40 ]; do echo "noise $i" >&2; i=$((i+1)); done
        echo "fatal: the API key is invalid" >&2
        echo '{"summary": "a handoff does not rescue a failed run"}'
        exit 3
    "#;
    let err = run(sh(script, &[]), job(Phase::Implement, &[]), &ws)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ExecError::Exited { status, .. } if status.code() == Some(3)),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(
        err.starts_with("sh: exited with code 3; stderr (last lines):\n"),
        "{err}"
    );
    assert!(
        err.contains("noise 39\nfatal: the API key is invalid"),
        "{err}"
    );
    assert!(!err.contains("noise 1\n"), "only the tail is quoted: {err}");
}

#[tokio::test]
async fn death_by_signal_is_reported_with_its_name() {
    let (_tmp, ws) = workspace();
    let err = run(
        sh("echo dying >&2; kill -TERM $$", &[]),
        job(Phase::Implement, &[]),
        &ws,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ExecError::Exited { status, .. } if status.signal() == Some(15)),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(
        err.starts_with("sh: was killed by signal 15 (SIGTERM); stderr (last lines):\ndying"),
        "{err}"
    );
}

#[tokio::test]
async fn output_over_the_cap_stops_the_job_quickly() {
    let (_tmp, ws) = workspace();
    let job = job(Phase::Implement, &[]);
    let started = Instant::now();
    let err = run(sh("yes | head -c 50000000", &[]), job.clone(), &ws)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExecError::OutputCap {
                stream: "stdout",
                ..
            }
        ),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(
        err.starts_with("sh: stdout exceeded 1048576 bytes (command.max_output_bytes)"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    let logged = std::fs::metadata(log_file(&ws, &job, "stdout"))
        .expect("stdout log")
        .len();
    assert_eq!(logged, 1048576, "the log keeps exactly the cap");

    let mut cfg = sh("yes 'an error' | head -c 500000 >&2", &[]);
    cfg.max_output_bytes = 1000;
    let err = run(cfg, job, &ws).await.unwrap_err();
    assert!(
        matches!(
            err,
            ExecError::OutputCap {
                stream: "stderr",
                cap: 1000,
                ..
            }
        ),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(err.starts_with("sh: stderr exceeded 1000 bytes"), "{err}");
}

#[tokio::test]
async fn the_environment_is_clean_apart_from_the_allowlist_and_the_mesh_variables() {
    // Set once, before any program of this test runs; no other test reads these.
    std::env::set_var("CMDEXEC_TEST_SECRET", "s3cret");
    std::env::set_var("CMDEXEC_TEST_OK_1", "passed");
    let (_tmp, ws) = workspace();
    let job = job(Phase::Research, &["src/a.rs"]);
    let mut cfg = sh(r#"env >&2; echo '{"summary": "env dumped"}'"#, &[]);
    cfg.env_allow.push("CMDEXEC_TEST_OK_*".into());
    run(cfg, job.clone(), &ws).await.expect("handoff");

    let env = read(&log_file(&ws, &job, "stderr"));
    let vars: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    assert_eq!(get("CMDEXEC_TEST_SECRET"), None, "not allowlisted: {env}");
    assert_eq!(get("CMDEXEC_TEST_OK_1"), Some("passed"), "{env}");
    assert!(get("PATH").is_some(), "{env}");
    let logs = ws.log_dir.to_str().unwrap();
    let stem = log_stem(&job);
    assert_eq!(
        get("MESH_JOB_FILE"),
        Some(&*format!("{logs}/{stem}.job.json"))
    );
    assert_eq!(
        get("MESH_HANDOFF_FILE"),
        Some(&*format!("{logs}/{stem}.handoff.json"))
    );
    assert_eq!(
        get("MESH_PROMPT_FILE"),
        Some(&*format!("{logs}/{stem}.prompt.md"))
    );
    assert_eq!(get("MESH_PHASE"), Some("research"));
    assert_eq!(get("MESH_STORY"), Some("S-0001"));
    assert_eq!(get("MESH_STORY_KEY"), Some("S-0001@ab12"));
    assert_eq!(get("MESH_CLAIM"), Some("12D3KooWtestpeer-7"));
    assert_eq!(get("MESH_TOKEN"), Some("3"));
    assert_eq!(get("MESH_ROUND"), Some("0"));
    assert_eq!(get("MESH_ATTEMPT"), Some("1"));
    assert_eq!(get("MESH_WORKTREE"), ws.dir.to_str());
    assert_eq!(get("MESH_NODE"), Some("12D3KooWtestpeer"));
    // Nothing else comes through: the allowlist, the MESH_* set, and what sh adds itself.
    let allowed = |n: &str| {
        [
            "PATH", "HOME", "USER", "LANG", "TERM", "PWD", "OLDPWD", "SHLVL", "_",
        ]
        .contains(&n)
            || n.starts_with("MESH_")
            || n.starts_with("CMDEXEC_TEST_OK_")
    };
    for (name, _) in &vars {
        assert!(
            allowed(name),
            "{name} leaked into the program's environment"
        );
    }
}

#[tokio::test]
async fn dropping_the_future_kills_the_whole_process_group() {
    let (tmp, ws) = workspace();
    let dir = tmp.path().to_str().unwrap().to_string();
    let script = r#"
        sleep 1000 &
        echo $! > "$0/child.pid.tmp" && mv "$0/child.pid.tmp" "$0/child.pid"
        echo $$ > "$0/leader.pid.tmp" && mv "$0/leader.pid.tmp" "$0/leader.pid"
        wait
    "#;
    let exec = CommandExecutor::new(sh(script, &[&dir])).expect("valid config");
    let fut = exec.run(job(Phase::Implement, &[]), ws.clone());
    let (child_file, leader_file) = (tmp.path().join("child.pid"), tmp.path().join("leader.pid"));
    // Run the job until both processes exist, then drop its future (what the node does
    // when it loses the claim: it aborts the task holding the future).
    tokio::select! {
        outcome = fut => panic!("the job ended on its own: {outcome:?}"),
        () = eventually("both pid files", || child_file.exists() && leader_file.exists()) => {}
    }
    let child = read_pid(&child_file).expect("child pid");
    let leader = read_pid(&leader_file).expect("leader pid");
    eventually("the background sleep to die", || is_dead(child)).await;
    eventually("the script to die", || is_dead(leader)).await;
}

#[tokio::test]
async fn stray_background_processes_die_when_the_program_exits() {
    let (tmp, ws) = workspace();
    let pid_file = tmp.path().join("stray.pid");
    // The stray keeps stdout open: without the group kill the job would hang until the
    // timeout waiting for the end of its output.
    let script = r#"sleep 1000 & echo $! > "$0"; echo '{"summary": "left a stray"}'"#;
    let started = Instant::now();
    let h = run(
        sh(script, &[pid_file.to_str().unwrap()]),
        job(Phase::Plan, &[]),
        &ws,
    )
    .await
    .expect("handoff");
    assert_eq!(h.summary, "left a stray");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let pid = read_pid(&pid_file).expect("stray pid");
    eventually("the stray to die", || is_dead(pid)).await;
}

#[tokio::test]
async fn a_review_must_decide() {
    let (_tmp, ws) = workspace();
    let err = run(
        sh(r#"echo '{"summary": "looks fine"}'"#, &[]),
        job(Phase::Review, &[]),
        &ws,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ExecError::BadHandoff { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.contains("review must return verdict approve or reject"),
        "{err}"
    );
}

#[tokio::test]
async fn the_job_and_prompt_files_carry_the_context() {
    let (_tmp, ws) = workspace();
    let mut j = job(Phase::Implement, &["src/login.rs"]);
    j.handoffs = vec![ResultFact {
        story: j.story.clone(),
        phase: Phase::Plan,
        round: 0,
        claim: "other-1".into(),
        token: 1,
        holder: "other".into(),
        written_at_ms: 0,
        handoff: Handoff {
            summary: "hash passwords with argon2".into(),
            decisions: vec!["reuse the session module".into()],
            warnings: vec!["the login form has no CSRF token".into()],
            ..Handoff::default()
        },
        escalations: vec![],
    }];
    j.knowledge = vec![KnowledgeFact {
        kind: KnowledgeKind::Testing,
        text: "integration tests live in tests/".into(),
        story: String::new(),
        author: "human".into(),
        written_at_ms: 0,
    }];
    j.failures = vec!["claude.sh: exited with code 1; rate limited".into()];
    j.notes = vec!["keep the old login form working until March".into()];
    // Each phase may run its own program: implement runs this one.
    let mut cfg = sh("exit 7", &[]);
    cfg.phases.insert(
        "implement".into(),
        PhaseCommand {
            program: None,
            args: Some(vec![
                "-c".into(),
                r#"[ "$0" = "$MESH_PROMPT_FILE" ] && echo '{"summary": "ok"}'"#.into(),
                "{prompt_file}".into(),
            ]),
        },
    );
    run(cfg, j.clone(), &ws).await.expect("handoff");

    let prompt = read(&log_file(&ws, &j, "prompt.md"));
    for needle in [
        "# S-0001: Add login",
        "Users log in with a password.",
        "- `src/login.rs`",
        "## Your phase: implement",
        "Do not commit",
        "### plan",
        "hash passwords with argon2",
        "- reuse the session module",
        "- the login form has no CSRF token",
        "- testing: integration tests live in tests/",
        "rate limited",
        "## From the humans who steer this mesh",
        "- keep the old login form working until March",
        "\"verdict\": \"approve or reject",
        "\"learnings\": [{\"kind\"",
        &log_file(&ws, &j, "handoff.json").display().to_string(),
    ] {
        assert!(
            prompt.contains(needle),
            "prompt lacks {needle:?}:\n{prompt}"
        );
    }
    let job_json: serde_json::Value =
        serde_json::from_str(&read(&log_file(&ws, &j, "job.json"))).expect("job JSON");
    assert_eq!(job_json["fact"]["title"], "Add login");
    assert_eq!(job_json["phase"], "implement");
    assert_eq!(
        job_json["notes"][0],
        "keep the old login form working until March"
    );
    assert_eq!(
        job_json["handoffs"][0]["handoff"]["summary"],
        "hash passwords with argon2"
    );
}

#[tokio::test]
async fn a_bad_config_is_refused_with_the_key_named() {
    let err = CommandExecutor::new(CommandConfig::default()).unwrap_err();
    assert!(
        err.starts_with(
            "command.program is empty: set it to an agent CLI, e.g. examples/executors/claude.sh"
        ),
        "{err}"
    );
    let err = CommandExecutor::new(CommandConfig {
        program: "examples/executors/no-such-agent.sh".into(),
        ..CommandConfig::default()
    })
    .unwrap_err();
    assert!(
        err.starts_with("command.program = \"examples/executors/no-such-agent.sh\""),
        "{err}"
    );
    let err = CommandExecutor::new(CommandConfig {
        program: "sh".into(),
        phases: [("deploy".to_string(), PhaseCommand::default())].into(),
        ..CommandConfig::default()
    })
    .unwrap_err();
    assert!(
        err.starts_with("command.phases.deploy is not a phase"),
        "{err}"
    );
}

#[tokio::test]
async fn a_program_that_cannot_start_is_a_failed_attempt() {
    let (_tmp, ws) = workspace();
    let cfg = CommandConfig {
        program: "mesh-agent-no-such-program".into(),
        ..CommandConfig::default()
    };
    let err = run(cfg, job(Phase::Plan, &[]), &ws).await.unwrap_err();
    assert!(matches!(err, ExecError::Spawn { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.starts_with("cannot start \"mesh-agent-no-such-program\""),
        "{err}"
    );
}

fn shell_sim() -> CommandConfig {
    CommandConfig {
        program: example("shell-sim.sh"),
        timeout_secs: 60,
        ..CommandConfig::default()
    }
}

#[tokio::test]
async fn shell_sim_edits_the_planned_files_and_returns_valid_handoffs() {
    let (_tmp, ws) = workspace();
    let files = ["src/a.txt", "docs/with space.md"];
    let h = run(shell_sim(), job(Phase::Implement, &files), &ws)
        .await
        .expect("implement handoff");
    assert_eq!(h.summary, "implement of S-0001 done (shell-sim)");
    assert_eq!(h.files, files);
    for f in files {
        assert_eq!(
            read(&ws.dir.join(f)),
            "S-0001: edited by shell-sim (round 0)\n",
            "{f}"
        );
    }

    let h = run(shell_sim(), job(Phase::Review, &files), &ws)
        .await
        .expect("review handoff");
    assert_eq!(h.verdict, Some(Verdict::Approve));
    let h = run(shell_sim(), job(Phase::Research, &files), &ws)
        .await
        .expect("research handoff");
    assert_eq!(h.learnings[0].kind, KnowledgeKind::Convention);
    let h = run(shell_sim(), job(Phase::Plan, &files), &ws)
        .await
        .expect("plan handoff");
    assert_eq!(h.suggested_approach, "small, tested steps");

    // A story with no planned files gets one, as with the built-in sim.
    run(shell_sim(), job(Phase::Implement, &[]), &ws)
        .await
        .expect("implement handoff");
    assert!(read(&ws.dir.join("changes/S-0001.txt")).starts_with("S-0001: edited"));
}

#[tokio::test]
async fn shell_sim_reads_the_planned_files_without_jq() {
    std::env::set_var("SHELL_SIM_NO_JQ", "1");
    let (_tmp, ws) = workspace();
    let mut cfg = shell_sim();
    cfg.env_allow.push("SHELL_SIM_NO_JQ".into());
    let mut j = job(Phase::Rework, &["a/b.txt", "quote\"d.txt", "c.txt"]);
    j.round = 2;
    let h = run(cfg, j, &ws).await.expect("rework handoff");
    assert_eq!(h.files, ["a/b.txt", "quote\"d.txt", "c.txt"]);
    for f in ["a/b.txt", "quote\"d.txt", "c.txt"] {
        assert_eq!(
            read(&ws.dir.join(f)),
            "S-0001: edited by shell-sim (round 2)\n"
        );
    }
}

/// Writes an executable script `name` into `dir`.
fn fake_cli(dir: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write fake CLI");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Runs the example wrapper `name` with `bin` first on its PATH.
fn wrapper(name: &str, bin: &Path, extra: &[&str]) -> CommandConfig {
    let mut args = vec![
        "-c".to_string(),
        r#"PATH="$0:$PATH"; export PATH; exec "$@""#.to_string(),
        bin.to_str().unwrap().to_string(),
        example(name),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    CommandConfig {
        program: "sh".into(),
        args,
        timeout_secs: 60,
        ..CommandConfig::default()
    }
}

#[tokio::test]
async fn claude_sh_passes_the_prompt_and_returns_the_handoff_with_its_cost() {
    let (tmp, ws) = workspace();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    fake_cli(
        &bin,
        "claude",
        r#"#!/bin/sh
printf '%s\n' "$@" > "$(dirname "$0")/claude.args"
cat <<'JSON'
{"type":"result","subtype":"success","is_error":false,"result":"Reviewed the diff.\n\n```json\n{\"summary\": \"looks right\", \"verdict\": \"approve\"}\n```","total_cost_usd":0.25,"usage":{"input_tokens":100,"output_tokens":20}}
JSON
"#,
    );
    let j = job(Phase::Review, &[]);
    let h = run(
        wrapper("claude.sh", &bin, &["--model", "sonnet"]),
        j.clone(),
        &ws,
    )
    .await
    .expect("handoff");
    assert_eq!(h.summary, "looks right");
    assert_eq!(h.verdict, Some(Verdict::Approve));
    assert_eq!(h.tokens, 120);
    assert_eq!((h.tokens_in, h.tokens_out), (100, 20));
    assert_eq!(h.cost_micro_usd, 250_000);

    let args = read(&bin.join("claude.args"));
    let prompt = read(&log_file(&ws, &j, "prompt.md"));
    assert!(args.starts_with(&format!("-p\n{prompt}")), "{args}");
    assert!(args.contains("\n--output-format\njson\n"), "{args}");
    assert!(
        args.contains("\n--disallowedTools\nEdit,Write,NotebookEdit\n"),
        "{args}"
    );
    assert!(args.ends_with("\n--model\nsonnet\n"), "{args}");
}

#[tokio::test]
async fn claude_sh_fails_when_claude_reports_an_error() {
    let (tmp, ws) = workspace();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    fake_cli(
        &bin,
        "claude",
        r#"#!/bin/sh
echo '{"type":"result","subtype":"error_max_turns","is_error":true,"result":"Credit balance is too low"}'
"#,
    );
    let err = run(
        wrapper("claude.sh", &bin, &[]),
        job(Phase::Implement, &[]),
        &ws,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ExecError::Exited { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.starts_with("sh: exited with code 1; stderr (last lines):\n"),
        "{err}"
    );
    assert!(
        err.contains("claude.sh: claude reported an error: Credit balance is too low"),
        "{err}"
    );
}

#[tokio::test]
async fn claude_sh_reports_a_rate_limit_as_one_not_as_a_failure() {
    let (tmp, ws) = workspace();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    fake_cli(
        &bin,
        "claude",
        r#"#!/bin/sh
echo '{"type":"result","subtype":"error","is_error":true,"result":"API Error: 429 rate_limit_error: Rate limit reached"}'
"#,
    );
    let err = run(wrapper("claude.sh", &bin, &[]), job(Phase::Plan, &[]), &ws)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ExecError::RateLimited { .. }),
        "a rate limit is not a failed attempt: {err:?}"
    );
    assert!(err.to_string().contains("rate-limited"), "{err}");
}

#[tokio::test]
async fn codex_sh_feeds_the_prompt_on_stdin_and_returns_the_last_message() {
    let (tmp, ws) = workspace();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    fake_cli(
        &bin,
        "codex",
        r#"#!/bin/sh
dir=$(dirname "$0")
printf '%s\n' "$@" > "$dir/codex.args"
cat > "$dir/codex.stdin"
last=""; prev=""
for a in "$@"; do [ "$prev" = "--output-last-message" ] && last=$a; prev=$a; done
echo "thinking..."
printf 'Changed the login.\n{"summary": "implemented login", "files": ["src/login.rs"]}\n' > "$last"
"#,
    );
    let j = job(Phase::Implement, &["src/login.rs"]);
    let h = run(wrapper("codex.sh", &bin, &[]), j.clone(), &ws)
        .await
        .expect("handoff");
    assert_eq!(h.summary, "implemented login");
    assert_eq!(h.files, ["src/login.rs"]);

    let args = read(&bin.join("codex.args"));
    assert!(
        args.starts_with("exec\n--sandbox\nworkspace-write\n"),
        "{args}"
    );
    assert!(args.ends_with("\n-\n"), "{args}");
    assert_eq!(
        read(&bin.join("codex.stdin")),
        read(&log_file(&ws, &j, "prompt.md"))
    );
    assert!(read(&log_file(&ws, &j, "stderr")).contains("thinking..."));
}
