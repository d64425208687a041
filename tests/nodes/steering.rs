//! Humans steer a live mesh (issue 16): four nodes on loopback carry the demo backlog to
//! a real git origin while an operator pauses a node and a story, bumps a priority,
//! cancels a story whose change is under review, assigns one to a named node, adds
//! context, approves a gated plan and requests changes on another — each command given
//! through a different node, signed with the operator's key. A key that is no operator's
//! changes nothing, and every command is in the audit trail.

use crate::common::*;
use libp2p::identity::Keypair;
use mesh_agent::config::Config;
use mesh_agent::core::model::{Phase, StoryStatus};
use mesh_agent::core::resolve_command;
use mesh_agent::core::state::{
    admit_key, command_key, CommandFact, LogQuery, Op, RosterFact, Target, View,
};
use mesh_agent::core::trust::Signer;
use mesh_agent::core::Job;
use mesh_agent::demo;
use mesh_agent::exec::{ExecError, Executor, SimExecutor, Workspace};
use mesh_agent::node::NodeHandle;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The story whose review is held until the operator cancels it.
const CANCELLED: &str = "Write a changelog entry";

/// Every job started, by node index, with whether node 3 had been resumed by then.
type Started = Arc<Mutex<Vec<(usize, bool, Job)>>>;

/// The sim executor, recording every job; the review of [`CANCELLED`] never finishes on
/// its own (it waits to be cancelled).
struct Recording {
    node: usize,
    inner: SimExecutor,
    started: Started,
    resumed: Arc<AtomicBool>,
    held: mpsc::UnboundedSender<Job>,
}

impl Executor for Recording {
    fn run(
        &self,
        job: Job,
        ws: Workspace,
    ) -> futures::future::BoxFuture<'static, Result<mesh_agent::core::model::Handoff, ExecError>>
    {
        self.started.lock().expect("lock").push((
            self.node,
            self.resumed.load(Ordering::SeqCst),
            job.clone(),
        ));
        if &*job.fact.title == CANCELLED && job.phase == Phase::Review {
            let _ = self.held.send(job);
            return Box::pin(async {
                std::future::pending::<()>().await;
                Err(ExecError::failed("unreachable"))
            });
        }
        self.inner.run(job, ws)
    }
}

/// The operator's command, resolved against `node`'s view as the CLI does, signed with
/// `key` and written through `node`; what the node said.
async fn command(
    node: &NodeHandle,
    key: &Signer,
    target: Target,
    op: Op,
) -> Result<String, String> {
    operator_command(node, key, target, op).await
}

fn story(id: &str) -> Target {
    Target::Story { story: id.into() }
}

fn by_title<'a>(v: &'a View, title: &str) -> &'a mesh_agent::core::state::StoryView {
    v.stories
        .values()
        .find(|s| &*s.fact.title == title)
        .unwrap_or_else(|| panic!("no story {title:?}"))
}

fn flow_config(c: &mut Config, origin: &Path, operator: &str) {
    fast_leases(c);
    c.capacity = 2;
    c.origin = origin.display().to_string();
    c.test_command = vec!["sh".into(), "test.sh".into()];
    c.test_timeout_secs = 60;
    c.operators = vec![operator.to_string()];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_steers_a_live_mesh_and_a_stranger_cannot() {
    let tmp = tempfile::tempdir().expect("tmp");
    let origin = tmp.path().join("origin.git");
    demo::create_origin(&origin).expect("origin");
    let op = Signer::from_key(ed25519_dalek::SigningKey::from_bytes(&rand::random()));
    let operator = op.author().to_string();
    let keys: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
    let ids: Vec<String> = keys
        .iter()
        .map(|k| k.public().to_peer_id().to_string())
        .collect();
    let started: Started = Arc::default();
    let resumed = Arc::new(AtomicBool::new(false));
    let (held_tx, mut held) = mpsc::unbounded_channel();
    let exec = |i: usize| -> Arc<dyn Executor> {
        Arc::new(Recording {
            node: i,
            inner: SimExecutor {
                phase_ms: 100,
                ..SimExecutor::default()
            },
            started: started.clone(),
            resumed: resumed.clone(),
            held: held_tx.clone(),
        })
    };
    let dir = |i: usize| tmp.path().join(format!("n{i}"));
    let first = start_with(
        &dir(0),
        &keys[0],
        None,
        |c| flow_config(c, &origin, &operator),
        Some(exec(0)),
    )
    .await;
    // The operator admits the four nodes, and pauses node 3 before it has any work.
    admit_all(&first, &op, &ids).await;
    let mut nodes = vec![first];
    for (i, key) in keys.iter().enumerate().skip(1) {
        let n = start_with(
            &dir(i),
            key,
            nodes.first(),
            |c| flow_config(c, &origin, &operator),
            Some(exec(i)),
        )
        .await;
        nodes.push(n);
    }
    let refs: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all_alive(&refs).await;
    let paused = |why: &str| Op::Pause { reason: why.into() };
    command(
        &nodes[0],
        &op,
        Target::Node {
            peer: ids[3].clone(),
        },
        paused("maintenance"),
    )
    .await
    .expect("node paused");
    // The mesh is paused while the backlog goes in, so the story commands below land
    // before anything starts.
    command(&nodes[1], &op, Target::All, paused("loading the backlog"))
        .await
        .expect("mesh paused");
    wait_converged(&refs).await;
    let mut backlog = demo::backlog();
    for s in &mut backlog {
        if s.title == "Explain syntax errors with a caret" || s.title == "Report unknown characters"
        {
            s.labels.push("approval".into());
        }
    }
    for s in &backlog {
        nodes[0].add_story(s.clone()).await.expect("story added");
    }
    let total = backlog.len();
    wait_converged(&refs).await;
    command(
        &nodes[1],
        &op,
        story("S-0024"),
        Op::Prioritize { priority: 1 },
    )
    .await
    .expect("prioritized");
    command(
        &nodes[2],
        &op,
        story("S-0019"),
        paused("decimals wait for the spec"),
    )
    .await
    .expect("story paused");
    command(
        &nodes[0],
        &op,
        story("S-0014"),
        Op::Assign {
            node: Some(ids[2][ids[2].len() - 6..].to_string()),
            role: None,
        },
    )
    .await
    .expect("assigned by the short id");
    command(
        &nodes[3],
        &op,
        story("S-0004"),
        Op::Context {
            text: "print a usage line when argv is empty".into(),
        },
    )
    .await
    .expect("context added, through the paused node");

    // A stranger's key: refused at the node, and nothing when written raw.
    let stranger = Signer::from_key(ed25519_dalek::SigningKey::from_bytes(&rand::random()));
    let e = command(
        &nodes[2],
        &stranger,
        story("S-0001"),
        Op::Cancel {
            reason: "mine".into(),
        },
    )
    .await
    .expect_err("a stranger's command is refused");
    assert!(e.contains("not an operator"), "{e}");
    let before = nodes[1].view().await.expect("view");
    let draft = resolve_command(
        &before,
        CommandFact {
            target: story("S-0002"),
            op: Op::Cancel {
                reason: "forged".into(),
            },
            at_ms: 1,
        },
    )
    .expect("resolves");
    let json = serde_json::to_string(&draft).expect("json");
    let k = command_key(stranger.author(), &json);
    let sealed = stranger.seal(&k, &json);
    nodes[1]
        .hostile(move |d| d.raw_put(&k, sealed))
        .await
        .expect("written raw");

    command(&nodes[0], &op, Target::All, Op::Resume)
        .await
        .expect("mesh resumed");

    // The bumped story goes first: its research is in the first wave of jobs (one per
    // working node).
    let s24 = wait_view(&nodes[0], "the bumped story starts", 60, |v| {
        !by_title(v, "Add a --version flag").history.is_empty()
    })
    .await;
    let key24 = by_title(&s24, "Add a --version flag").key.clone();
    {
        let jobs = started.lock().expect("lock");
        let first = jobs.iter().position(|(_, _, j)| j.story == key24);
        assert!(
            first.is_some_and(|p| p < 3),
            "the priority-1 story was not among the first claims: {:?}",
            jobs.iter()
                .map(|(_, _, j)| &j.display_id)
                .take(6)
                .collect::<Vec<_>>()
        );
    }

    // The changelog story's change is under review: cancel it there.
    let review = within("the changelog story reaches review", 120, held.recv())
        .await
        .expect("held review");
    command(
        &nodes[1],
        &op,
        story(&review.display_id),
        Op::Cancel {
            reason: "not for this release".into(),
        },
    )
    .await
    .expect("cancelled");

    // The gated plans wait for a human; one is approved, the other sent back.
    let gated = wait_view(&nodes[2], "both gated plans wait for a human", 120, |v| {
        [
            "Explain syntax errors with a caret",
            "Report unknown characters",
        ]
        .iter()
        .all(|t| by_title(v, t).held)
    })
    .await;
    let approve = by_title(&gated, "Explain syntax errors with a caret")
        .id
        .clone();
    let send_back = by_title(&gated, "Report unknown characters").id.clone();
    let item = &by_title(&gated, "Report unknown characters").more.attention[0];
    assert_eq!(item.holds, Some(Phase::Implement));
    assert_eq!(
        item.actions,
        ["approve", "request-changes", "dismiss", "cancel"]
    );
    command(
        &nodes[2],
        &op,
        story(&approve),
        Op::Approve { items: vec![] },
    )
    .await
    .expect("approved");
    command(
        &nodes[3],
        &op,
        story(&send_back),
        Op::RequestChanges {
            result: String::new(),
            text: "report the column too".into(),
        },
    )
    .await
    .expect("sent back");
    wait_view(&nodes[0], "the re-plan waits for a human again", 120, |v| {
        let s = by_title(v, "Report unknown characters");
        s.held && s.round == 0 && s.history.len() >= 3
    })
    .await;
    command(
        &nodes[0],
        &op,
        story(&send_back),
        Op::Approve { items: vec![] },
    )
    .await
    .expect("approved after the re-plan");

    // Everything but the paused and the cancelled stories (and what depends on them)
    // lands; then node 3 and the paused story are resumed and the rest lands.
    let waiting = ["Lex decimals", "Evaluate decimals exactly", CANCELLED];
    wait_view(&nodes[0], "every other story merged", 400, |v| {
        v.stories
            .values()
            .filter(|s| !waiting.contains(&&*s.fact.title))
            .all(|s| s.status == StoryStatus::Merged)
    })
    .await;
    let v = nodes[0].view().await.expect("view");
    assert!(
        by_title(&v, "Lex decimals").history.is_empty(),
        "a paused story started"
    );
    resumed.store(true, Ordering::SeqCst);
    command(
        &nodes[2],
        &op,
        Target::Node {
            peer: ids[3].clone(),
        },
        Op::Resume,
    )
    .await
    .expect("node resumed");
    command(&nodes[2], &op, story("S-0019"), Op::Resume)
        .await
        .expect("story resumed");
    let view = wait_view(&nodes[0], "every story merged or cancelled", 400, |v| {
        v.stories.len() == total
            && v.stories
                .values()
                .all(|s| matches!(s.status, StoryStatus::Merged | StoryStatus::Cancelled))
    })
    .await;
    wait_converged(&refs).await;

    // The stranger's forged cancel changed nothing; it was refused and counted.
    assert_eq!(by_title(&view, "Parse sums").status, StoryStatus::Merged);
    assert!(view.malformed >= 1);
    // Node 3 ran nothing while paused.
    let jobs = started.lock().expect("lock").clone();
    let early: Vec<&str> = jobs
        .iter()
        .filter(|(n, resumed, _)| *n == 3 && !resumed)
        .map(|(_, _, j)| j.display_id.as_str())
        .collect();
    assert!(early.is_empty(), "paused node 3 started {early:?}");
    // The assigned story ran on node 2 (but its review, which never runs there).
    let s14 = by_title(&view, "Document the operators");
    for r in view.history(&s14.key) {
        if r.phase != Phase::Review {
            assert_eq!(r.holder, ids[2], "{} ran on another node", r.phase);
        }
    }
    // The context reached every job of its story.
    let s4 = by_title(&view, "Read an expression from argv").key.clone();
    let s4_jobs: Vec<&Job> = jobs
        .iter()
        .map(|(_, _, j)| j)
        .filter(|j| j.story == s4)
        .collect();
    assert!(!s4_jobs.is_empty());
    for j in s4_jobs {
        assert_eq!(
            j.notes,
            ["print a usage line when argv is empty"],
            "{} lacks the note",
            j.phase
        );
    }
    // The re-plan had the operator's request in its context; it planned twice.
    let sb = by_title(&view, "Report unknown characters");
    let plans: Vec<&Job> = jobs
        .iter()
        .map(|(_, _, j)| j)
        .filter(|j| j.story == sb.key && j.phase == Phase::Plan)
        .collect();
    assert!(plans.len() >= 2, "{} plan jobs", plans.len());
    assert!(plans
        .last()
        .is_some_and(|j| j.notes.contains(&"report the column too".to_string())));
    // The cancelled story: nothing landed, no work ref, no worktree anywhere.
    let cancelled = by_title(&view, CANCELLED);
    assert_eq!(cancelled.status, StoryStatus::Cancelled);
    assert!(cancelled.more.merged.is_none());
    let log = mesh_agent::git::main_log(&origin).expect("main log");
    assert!(
        !log.iter()
            .any(|c| c.trailer("Mesh-Story-Key") == Some(cancelled.key.as_str())),
        "the cancelled story landed"
    );
    let repo = git2::Repository::open_bare(&origin).expect("origin");
    let refs_left = || -> Vec<String> {
        repo.references_glob(&format!("refs/mesh/work/{}/*", cancelled.key))
            .expect("refs")
            .filter_map(|r| r.ok()?.name().ok().map(str::to_string))
            .collect()
    };
    // (The implementer drops them at the origin once it sees the cancel: an effect on
    // another repository, with no event to await, so this polls, bounded.)
    within("the cancelled story's work refs are dropped", 30, async {
        while !refs_left().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    for i in 0..4 {
        let wt = dir(i).join("git/worktrees");
        let left: Vec<_> = std::fs::read_dir(&wt)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "node {i} left worktrees: {left:?}");
    }
    // Every command is in the audit trail, signed by the operator.
    let trail = nodes[3]
        .log(LogQuery {
            story: None,
            tail: None,
        })
        .await
        .expect("running")
        .expect("log");
    let commands: Vec<&str> = trail
        .iter()
        .filter(|e| e.action.starts_with("operator command") && e.author == operator)
        .map(|e| e.action.as_str())
        .collect();
    for verb in [
        "pause node",
        "pause the whole mesh",
        "prioritize",
        "pause story",
        "assign",
        "context",
        "resume the whole mesh",
        "cancel",
        "approve",
        "request-changes",
        "resume node",
        "resume story",
    ] {
        assert!(
            commands.iter().any(|c| c.contains(verb)),
            "no {verb:?} in the trail: {commands:#?}"
        );
    }
    for n in nodes {
        n.shutdown().await;
    }
}

/// Each escalation trigger, driven by the sim executor on one node (it reviews its own
/// change): the attention item, the story's state and the actions; `approve`, `dismiss`
/// and `unblock` clear them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_trigger_holds_its_story_for_a_human_and_approve_or_dismiss_clears_it() {
    use mesh_agent::core::model::{AlertKind, NewStory};
    let tmp = tempfile::tempdir().expect("tmp");
    let origin = tmp.path().join("origin.git");
    demo::create_origin(&origin).expect("origin");
    let op = Signer::from_key(ed25519_dalek::SigningKey::from_bytes(&rand::random()));
    let operator = op.author().to_string();
    let key = Keypair::generate_ed25519();
    let id = key.public().to_peer_id().to_string();
    let node = start_with(
        &tmp.path().join("n0"),
        &key,
        None,
        |c| {
            flow_config(c, &origin, &operator);
            c.sim_phase_ms = 50;
            c.min_confidence = 50;
            c.max_planned_files = 3;
            c.max_changed_files = 3;
            // An external scanner too: it fails on a word one story writes.
            c.security_scanner = vec![
                "sh".into(),
                "-c".into(),
                "! grep -rqs FORBIDDEN scan".into(),
            ];
        },
        None,
    )
    .await;
    let k = admit_key(&id);
    let json = serde_json::to_string(&RosterFact {
        peer: id.clone(),
        note: String::new(),
        at_ms: 1,
    })
    .expect("json");
    node.put_roster(&k, &op.seal(&k, &json))
        .await
        .expect("admitted");
    let add = |title: &str, files: &[&str], labels: &[&str]| NewStory {
        title: title.into(),
        files: files.iter().map(|f| f.to_string()).collect(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        ..Default::default()
    };
    for s in [
        add("unsure", &["docs/unsure.txt"], &["sim:confidence=20"]),
        add("wide", &["src/a.txt", "src/b.txt", "src/c.txt"], &[]),
        add("leaky", &["src/config.txt"], &["sim:secret"]),
        add("doomed", &["src/doomed.txt"], &["sim:fail=implement"]),
        add("FORBIDDEN words", &["scan/words.txt"], &[]),
    ] {
        node.add_story(s).await.expect("added");
    }
    let items = |v: &View, t: &str| -> Vec<(AlertKind, Option<Phase>)> {
        by_title(v, t)
            .more
            .attention
            .iter()
            .map(|a| (a.kind, a.holds))
            .collect()
    };
    // Low confidence: research and plan hold implement.
    let v = wait_view(&node, "the unsure plan is held", 60, |v| {
        by_title(v, "unsure").held
    })
    .await;
    let s = by_title(&v, "unsure");
    assert_eq!(s.next_phase, Some(Phase::Implement));
    assert_eq!(
        items(&v, "unsure"),
        [
            (AlertKind::LowConfidence, Some(Phase::Implement)),
            (AlertKind::LowConfidence, Some(Phase::Implement))
        ]
    );
    assert!(
        s.more.attention[0]
            .detail
            .contains("confidence 20, under 50"),
        "{}",
        s.more.attention[0].detail
    );
    // Many files: the plan holds implement.
    let v = wait_view(&node, "the wide plan is held", 60, |v| {
        by_title(v, "wide").held
    })
    .await;
    assert_eq!(
        items(&v, "wide"),
        [(AlertKind::LargeChange, Some(Phase::Implement))]
    );
    // Retries: three failed implements block it, with the actions a human has.
    let v = wait_view(&node, "the doomed story is blocked", 60, |v| {
        by_title(v, "doomed").status == StoryStatus::Blocked
    })
    .await;
    let s = by_title(&v, "doomed");
    assert_eq!(s.more.attention.len(), 1);
    assert_eq!(s.more.attention[0].kind, AlertKind::Blocked);
    assert_eq!(s.more.attention[0].holds, None);
    assert_eq!(
        s.more.attention[0].actions,
        ["unblock", "unblock --reset-attempts", "cancel", "dismiss"]
    );
    // A planted secret: the change holds merge (review still runs).
    let v = wait_view(&node, "the leaky change is held before merge", 60, |v| {
        let s = by_title(v, "leaky");
        s.held && s.next_phase == Some(Phase::Merge)
    })
    .await;
    let s = by_title(&v, "leaky");
    assert_eq!(
        items(&v, "leaky"),
        [(AlertKind::Security, Some(Phase::Merge))]
    );
    assert!(
        s.more.attention[0]
            .detail
            .contains("src/config.txt: # api_key"),
        "{}",
        s.more.attention[0].detail
    );
    // The external scanner's verdict: the change holds merge, naming the scanner.
    let v = wait_view(&node, "the scanned change is held before merge", 60, |v| {
        let s = by_title(v, "FORBIDDEN words");
        s.held && s.next_phase == Some(Phase::Merge)
    })
    .await;
    let s = by_title(&v, "FORBIDDEN words");
    assert_eq!(
        items(&v, "FORBIDDEN words"),
        [(AlertKind::Security, Some(Phase::Merge))]
    );
    assert!(
        s.more.attention[0]
            .detail
            .contains("the security scanner sh flagged the change"),
        "{}",
        s.more.attention[0].detail
    );
    // The queue lists them all, oldest first.
    let queue: Vec<(u64, &str)> = v
        .attention()
        .iter()
        .map(|(s, a)| (a.since_ms, &*s.fact.title))
        .collect();
    assert_eq!(queue.len(), 6, "{queue:?}");
    assert!(queue.windows(2).all(|w| w[0].0 <= w[1].0), "{queue:?}");

    // Clear them: approve the unsure and wide plans, dismiss the secret, unblock the
    // doomed story once (it fails again) and then dismiss its block.
    let unsure = by_title(&v, "unsure").id.clone();
    let wide = by_title(&v, "wide").id.clone();
    let leaky = by_title(&v, "leaky").id.clone();
    let doomed = by_title(&v, "doomed").id.clone();
    command(&node, &op, story(&unsure), Op::Approve { items: vec![] })
        .await
        .expect("approved");
    command(
        &node,
        &op,
        story(&wide),
        Op::Approve {
            items: vec!["large_change".into()],
        },
    )
    .await
    .expect("approved");
    command(
        &node,
        &op,
        story(&leaky),
        Op::Dismiss {
            item: "security".into(),
        },
    )
    .await
    .expect("dismissed");
    let grant = Op::Unblock {
        phase: Phase::Research,
        round: 0,
        grant: 1,
    };
    command(&node, &op, story(&doomed), grant)
        .await
        .expect("unblocked");
    let v = node.view().await.expect("view");
    assert_eq!(
        by_title(&v, "doomed").status,
        StoryStatus::InProgress,
        "one more attempt"
    );
    let v = wait_view(&node, "the doomed story is blocked again", 60, |v| {
        by_title(v, "doomed").status == StoryStatus::Blocked
    })
    .await;
    assert_eq!(by_title(&v, "doomed").failed_attempts, 4);
    command(
        &node,
        &op,
        story(&doomed),
        Op::Dismiss {
            item: "blocked".into(),
        },
    )
    .await
    .expect("dismissed");
    // The unsure story's later phases are unsure too: approve each gate as it comes.
    // (The wide change touches three files: it is held before merge once more.)
    let landed = |v: &View| {
        ["unsure", "wide", "leaky", "FORBIDDEN words"]
            .iter()
            .all(|t| by_title(v, t).status == StoryStatus::Merged)
    };
    let view = loop {
        let v = wait_view(&node, "a gate to clear, or the rest landed", 60, |v| {
            landed(v) || v.stories.values().any(|s| s.held)
        })
        .await;
        if landed(&v) {
            break v;
        }
        for s in v.stories.values().filter(|s| s.held) {
            command(&node, &op, story(&s.id), Op::Approve { items: vec![] })
                .await
                .expect("approved");
        }
    };
    assert!(view.attention().is_empty(), "{:?}", view.attention());
    assert_eq!(by_title(&view, "doomed").status, StoryStatus::Blocked);
    node.shutdown().await;
}
