//! Real work flows end to end (issue 4): nodes on loopback with the `sim` executor, a
//! bare origin holding the demo project, the demo backlog. Every story must end merged or
//! blocked with a reason; main must hold each story exactly once with its trailers; the
//! project's tests must pass at every landing; stories sharing a file never implement at
//! once; crashes and pauses lose nothing and land nothing twice.

use crate::common::*;
use libp2p::identity::Keypair;
use mesh_agent::config::Config;
use mesh_agent::core::model::{Event, EventKind, NewStory, Phase, StoryStatus, Verdict};
use mesh_agent::core::state::View;
use mesh_agent::demo;
use mesh_agent::git::main_log;
use mesh_agent::node::NodeHandle;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

fn flow_config(c: &mut Config, origin: &Path) {
    fast_leases(c);
    c.capacity = 2;
    c.sim_phase_ms = 150;
    c.origin = origin.display().to_string();
    c.test_command = vec!["sh".into(), "test.sh".into()];
    c.test_timeout_secs = 60;
}

/// Every story is merged, or blocked with a reason.
fn all_settled(v: &View, n: usize) -> bool {
    v.stories.len() == n
        && v.stories.values().all(|s| match s.status {
            StoryStatus::Merged => true,
            StoryStatus::Blocked => s.more.blocked_reason.is_some(),
            _ => false,
        })
}

async fn add_backlog(n: &NodeHandle) -> usize {
    let b = demo::backlog();
    for s in &b {
        n.add_story(s.clone()).await.expect("story added");
    }
    b.len()
}

/// Writes a commit's tree to `dir` and runs the project's tests there.
fn run_tests_at(origin: &Path, commit: git2::Oid, dir: &Path) -> std::process::Output {
    let repo = git2::Repository::open_bare(origin).expect("origin opens");
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .expect("commit");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("dir");
    tree.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
        if let Some(git2::ObjectType::Blob) = entry.kind() {
            let path = dir.join(root).join(entry.name().unwrap_or("unnamed"));
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p).expect("dir");
            }
            let blob = repo.find_blob(entry.id()).expect("blob");
            std::fs::write(&path, blob.content()).expect("write");
        }
        git2::TreeWalkResult::Ok
    })
    .expect("walk");
    std::process::Command::new("sh")
        .arg("test.sh")
        .current_dir(dir)
        .output()
        .expect("sh runs")
}

/// Checks main: each merged story landed exactly once, with its trailers, and the
/// project's tests pass at every landing.
fn check_main(origin: &Path, view: &View, scratch: &Path) {
    let log = main_log(origin).expect("main log");
    let mut landed: BTreeMap<String, usize> = BTreeMap::new();
    for c in &log {
        if c.trailers.is_empty() {
            continue; // the initial commit, or a human's
        }
        let key = c
            .trailer("Mesh-Story-Key")
            .unwrap_or_else(|| panic!("commit {} has no Mesh-Story-Key", c.oid));
        *landed.entry(key.to_string()).or_default() += 1;
        for t in ["Mesh-Story", "Mesh-Phase", "Mesh-Fence", "Mesh-Node"] {
            assert!(c.trailer(t).is_some(), "commit {} lacks {t}", c.oid);
        }
        assert_eq!(c.trailer("Mesh-Phase"), Some("merge"));
        let out = run_tests_at(origin, c.oid, scratch);
        assert!(
            out.status.success(),
            "tests fail at {} ({}): {}",
            c.oid,
            c.subject,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    for s in view.stories.values() {
        let n = landed.get(s.key.as_str()).copied().unwrap_or(0);
        match s.status {
            StoryStatus::Merged => assert_eq!(n, 1, "{} landed {n} times", s.id),
            _ => assert_eq!(n, 0, "{} is {} but landed {n} times", s.id, s.status),
        }
        if let Some(m) = &s.more.merged {
            assert!(
                log.iter().any(|c| c.oid.to_string() == m.commit),
                "{}'s merge fact names {} which is not on main",
                s.id,
                m.commit
            );
        }
    }
    // A landed story's work refs are dropped at the origin.
    let repo = git2::Repository::open_bare(origin).expect("origin");
    for key in landed.keys() {
        let left: Vec<String> = repo
            .references_glob(&format!("refs/mesh/work/{key}/*"))
            .expect("list work refs")
            .filter_map(|r| r.ok()?.name().ok().map(str::to_string))
            .collect();
        assert!(left.is_empty(), "{key} landed but left work refs: {left:?}");
    }
    assert_eq!(
        landed.len(),
        view.count_by_status()
            .get(&StoryStatus::Merged)
            .copied()
            .unwrap_or(0)
    );
}

/// Implement runs (start, end) per story from the event timeline; stories planned on one
/// file must never overlap.
fn check_file_exclusion(events: &[(u64, Event)], view: &View) {
    let mut open: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut spans: Vec<(String, u64, u64)> = Vec::new();
    for (_, e) in events {
        if !matches!(e.phase, Some(Phase::Implement) | Some(Phase::Rework)) {
            continue;
        }
        let k = (e.node.clone(), e.story.clone());
        match e.kind {
            EventKind::PhaseStarted => {
                open.insert(k, e.at_ms);
            }
            EventKind::PhaseFinished | EventKind::PhaseFailed => {
                if let Some(start) = open.remove(&k) {
                    spans.push((e.story.clone(), start, e.at_ms));
                }
            }
            _ => {}
        }
    }
    let files: BTreeMap<&str, BTreeSet<&str>> = view
        .stories
        .values()
        .map(|s| (s.id.as_str(), s.fact.files.iter().map(|f| &**f).collect()))
        .collect();
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            if a.0 == b.0 {
                continue;
            }
            let shared = files[a.0.as_str()]
                .intersection(&files[b.0.as_str()])
                .count()
                > 0;
            // Strictly overlapping intervals (a shared millisecond at the edges is the
            // release of one and the start of the next).
            if shared && a.1 < b.2 && b.1 < a.2 {
                panic!(
                    "{} and {} share a file and implemented at once: {a:?} {b:?}",
                    a.0, b.0
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_nodes_carry_the_demo_backlog_to_main() {
    let tmp = tempfile::tempdir().expect("tmp");
    let origin = tmp.path().join("origin.git");
    demo::create_origin(&origin).expect("origin");
    let keys: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
    let first = start_with(
        &tmp.path().join("n0"),
        &keys[0],
        None,
        |c| {
            flow_config(c, &origin);
            c.sim_review_reject_rate = 0.25;
        },
        None,
    )
    .await;
    let mut nodes = vec![first];
    for (i, k) in keys.iter().enumerate().skip(1) {
        let n = start_with(
            &tmp.path().join(format!("n{i}")),
            k,
            Some(&nodes[0]),
            |c| {
                flow_config(c, &origin);
                c.sim_review_reject_rate = 0.25;
            },
            None,
        )
        .await;
        nodes.push(n);
    }
    let refs: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all_alive(&refs).await;
    let total = add_backlog(&nodes[0]).await;
    let view = wait_view(&nodes[0], "every story merged or blocked", 400, |v| {
        all_settled(v, total)
    })
    .await;
    wait_converged(&refs).await;
    let merged = view
        .count_by_status()
        .get(&StoryStatus::Merged)
        .copied()
        .unwrap_or(0);
    assert!(
        merged >= total - 2,
        "only {merged} of {total} merged: {:?}",
        view.count_by_status()
    );
    check_main(&origin, &view, &tmp.path().join("check"));
    // Reviews rejected some changes: they went through rework and still landed.
    let reworked: Vec<&str> = view
        .stories
        .values()
        .filter(|s| s.round > 0 && s.status == StoryStatus::Merged)
        .map(|s| s.id.as_str())
        .collect();
    assert!(!reworked.is_empty(), "no story went through rework");
    let events = nodes[1].events(0).await.expect("events");
    check_file_exclusion(&events, &view);
    assert!(events
        .iter()
        .any(|(_, e)| e.kind == EventKind::StoryCompleted));
    // Knowledge learned in research reached later jobs' context (the view has it).
    assert!(!view.knowledge.is_empty(), "no knowledge recorded");
    // No worktree left behind anywhere once the mesh is idle.
    for i in 0..4 {
        let wt = tmp.path().join(format!("n{i}/git/worktrees"));
        let left: Vec<_> = std::fs::read_dir(&wt)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "node {i} left worktrees: {left:?}");
        // Recycled worktrees wait in the pool, detached: no story branch is left.
        let clone =
            git2::Repository::open(tmp.path().join(format!("n{i}/git/clone"))).expect("clone");
        let branches: Vec<String> = clone
            .references_glob("refs/heads/mesh/*")
            .expect("refs")
            .flatten()
            .filter_map(|r| r.name().ok().map(str::to_string))
            .collect();
        assert!(branches.is_empty(), "node {i} left branches: {branches:?}");
    }
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_and_a_paused_node_lose_nothing_and_land_nothing_twice() {
    let tmp = tempfile::tempdir().expect("tmp");
    let origin = tmp.path().join("origin.git");
    demo::create_origin(&origin).expect("origin");
    let keys: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
    let cfg = |c: &mut Config| {
        flow_config(c, &origin);
        c.sim_phase_ms = 400;
    };
    let mut nodes: Vec<Option<NodeHandle>> = Vec::new();
    nodes.push(Some(
        start_with(&tmp.path().join("n0"), &keys[0], None, cfg, None).await,
    ));
    for (i, k) in keys.iter().enumerate().skip(1) {
        let boot = nodes[0].as_ref().expect("n0");
        let n = start_with(&tmp.path().join(format!("n{i}")), k, Some(boot), cfg, None).await;
        nodes.push(Some(n));
    }
    {
        let refs: Vec<&NodeHandle> = nodes.iter().flatten().collect();
        wait_all_alive(&refs).await;
    }
    let n0 = nodes[0].take().expect("n0");
    let total = add_backlog(&n0).await;
    // Kill node 3 while it implements something.
    let victim = nodes[3].as_ref().expect("n3").peer_id.to_string();
    let implementing = |v: &View, who: &str| {
        v.claims().active().any(|(_, c)| {
            c.holder == who
                && c.resources.iter().any(|(r, _)| {
                    matches!(
                        r,
                        mesh_agent::core::lease::Resource::Story {
                            phase: Phase::Implement,
                            ..
                        }
                    )
                })
        })
    };
    wait_view(&n0, "node 3 implementing", 120, |v| {
        implementing(v, &victim)
    })
    .await;
    let killed = nodes[3].take().expect("n3");
    // A worktree of its implement exists at the moment it dies.
    killed.kill().await;
    let leftover: Vec<_> = std::fs::read_dir(tmp.path().join("n3/git/worktrees"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    // Pause node 2 past its lease while it implements.
    let paused = nodes[2].as_ref().expect("n2").peer_id.to_string();
    wait_view(&n0, "node 2 implementing", 120, |v| {
        implementing(v, &paused)
    })
    .await;
    nodes[2]
        .as_ref()
        .expect("n2")
        .pause(Duration::from_millis(3_000))
        .await
        .expect("paused");
    // Restart the killed node: it cleans what it left.
    let restarted = start_with(&tmp.path().join("n3"), &keys[3], Some(&n0), cfg, None).await;
    let after: Vec<_> = std::fs::read_dir(tmp.path().join("n3/git/worktrees"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    for l in &leftover {
        assert!(!after.contains(l), "restart left {l:?} behind");
    }
    let view = wait_view(&n0, "every story merged or blocked", 600, |v| {
        all_settled(v, total)
    })
    .await;
    check_main(&origin, &view, &tmp.path().join("check"));
    let merged = view
        .count_by_status()
        .get(&StoryStatus::Merged)
        .copied()
        .unwrap_or(0);
    assert!(merged >= total - 2, "only {merged} of {total} merged");
    // Some work was taken over from the dead or paused node: one of their claims ended
    // by the holder's fault — released by the node that took it over (expired), or by the
    // holder itself once it came back (lost, or abandoned on restart). A takeover's
    // release of a claim that had already written its result does not count (the
    // holder's own release stands), so which of them shows depends on timing.
    let victims = [victim.as_str(), paused.as_str()];
    assert!(
        view.releases.iter().any(|(id, r)| {
            r.why.blames_holder()
                && view
                    .claims
                    .get(id)
                    .is_some_and(|c| victims.contains(&c.holder.as_str()))
        }),
        "no claim was taken over"
    );
    n0.shutdown().await;
    restarted.shutdown().await;
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
}

/// Commits `line` appended to `file` straight onto the origin's main (a human pushing).
fn push_to_main(origin: &Path, file: &str, line: &str) {
    let repo = git2::Repository::open_bare(origin).expect("origin");
    let main = repo
        .find_reference("refs/heads/main")
        .and_then(|r| r.peel_to_commit())
        .expect("main");
    let tree = main.tree().expect("tree");
    let old = tree
        .get_path(Path::new(file))
        .and_then(|e| e.to_object(&repo))
        .and_then(|o| o.peel_to_blob())
        .map(|b| b.content().to_vec())
        .expect("file on main");
    let mut new = old;
    new.extend_from_slice(line.as_bytes());
    new.push(b'\n');
    let blob = repo.blob(&new).expect("blob");
    let (dir, name) = file.split_once('/').expect("a file in a directory");
    let sub = tree
        .get_path(Path::new(dir))
        .and_then(|e| e.to_object(&repo))
        .and_then(|o| o.peel_to_tree())
        .expect("dir");
    let mut tb = repo.treebuilder(Some(&sub)).expect("tb");
    tb.insert(name, blob, 0o100644).expect("insert");
    let sub_oid = tb.write().expect("write");
    let mut root = repo.treebuilder(Some(&tree)).expect("root");
    root.insert(dir, sub_oid, 0o040000).expect("insert dir");
    let new_tree = repo.find_tree(root.write().expect("root")).expect("tree");
    let sig = git2::Signature::now("a human", "human@example.invalid").expect("sig");
    repo.commit(
        Some("refs/heads/main"),
        &sig,
        &sig,
        "hotfix straight on main",
        &new_tree,
        &[&main],
    )
    .expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebase_conflict_sends_the_story_to_rework_with_the_conflict_and_it_lands() {
    let tmp = tempfile::tempdir().expect("tmp");
    let origin = tmp.path().join("origin.git");
    demo::create_origin(&origin).expect("origin");
    let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    // Two workers that never merge, so the story waits at the gate.
    let no_merge = |c: &mut Config| {
        flow_config(c, &origin);
        c.roles = ["research", "plan", "implement", "review", "rework"]
            .map(String::from)
            .to_vec();
    };
    let a = start_with(&tmp.path().join("a"), &keys[0], None, no_merge, None).await;
    let b = start_with(&tmp.path().join("b"), &keys[1], Some(&a), no_merge, None).await;
    wait_all_alive(&[&a, &b]).await;
    let story = a
        .add_story(mesh_agent::core::model::NewStory {
            title: "Lex hexadecimal literals".into(),
            files: vec!["src/lexer.txt".into()],
            ..Default::default()
        })
        .await
        .expect("story");
    wait_view(&a, "the story reviewed and waiting to merge", 60, |v| {
        v.stories[story.key.as_str()].next_phase == Some(Phase::Merge)
    })
    .await;
    // Meanwhile a human lands a change to the same place of the same file.
    push_to_main(
        &origin,
        "src/lexer.txt",
        "S-0999: hand-made hotfix (round 0)",
    );
    // A merger joins.
    let merger = start_with(
        &tmp.path().join("m"),
        &keys[2],
        Some(&a),
        |c| {
            flow_config(c, &origin);
            c.roles = vec!["merge".into()];
        },
        None,
    )
    .await;
    let view = wait_view(&a, "the story merged", 120, |v| {
        v.stories[story.key.as_str()].status == StoryStatus::Merged
    })
    .await;
    let h = view.history(&story.key);
    let refused = h
        .iter()
        .find(|r| r.phase == Phase::Merge && r.round == 0)
        .expect("a first merge");
    assert_eq!(refused.handoff.verdict, Some(Verdict::Reject));
    assert!(
        refused
            .handoff
            .summary
            .contains("conflicts in src/lexer.txt"),
        "{}",
        refused.handoff.summary
    );
    let rework = h
        .iter()
        .find(|r| r.phase == Phase::Rework && r.round == 1)
        .expect("a rework round");
    // The rework job had the conflict in its context (the sim executor quotes it).
    assert!(
        rework
            .handoff
            .summary
            .contains("conflicts in src/lexer.txt"),
        "{}",
        rework.handoff.summary
    );
    assert!(h.iter().any(|r| r.phase == Phase::Review && r.round == 1));
    let merged = view.stories[story.key.as_str()]
        .more
        .merged
        .clone()
        .expect("merged");
    assert_eq!(merged.round, 1);
    // Main has the hotfix and the story, each once, and its tests pass.
    check_main(&origin, &view, &tmp.path().join("check"));
    let repo = git2::Repository::open_bare(&origin).expect("origin");
    let lexer = repo
        .find_reference("refs/heads/main")
        .and_then(|r| r.peel_to_tree())
        .and_then(|t| t.get_path(Path::new("src/lexer.txt")))
        .and_then(|e| e.to_object(&repo))
        .and_then(|o| o.peel_to_blob())
        .map(|b| String::from_utf8_lossy(b.content()).to_string())
        .expect("lexer on main");
    assert!(lexer.contains("S-0999: hand-made hotfix"), "{lexer}");
    assert!(
        lexer.contains(&format!("{}: Lex hexadecimal literals (round 1)", story.id)),
        "{lexer}"
    );
    for n in [a, b, merger] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_reviews_its_own_change_and_lands_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let origin = tmp.path().join("origin.git");
    demo::create_origin(&origin).expect("origin");
    let key = Keypair::generate_ed25519();
    let n = start_with(
        &tmp.path().join("n"),
        &key,
        None,
        |c| flow_config(c, &origin),
        None,
    )
    .await;
    let s = n
        .add_story(mesh_agent::core::model::NewStory {
            title: "Lex integers".into(),
            files: vec!["src/lexer.txt".into()],
            ..Default::default()
        })
        .await
        .expect("story");
    let view = wait_view(&n, "the story merged by a mesh of one", 60, |v| {
        v.stories[s.key.as_str()].status == StoryStatus::Merged
    })
    .await;
    check_main(&origin, &view, &tmp.path().join("check"));
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_during_two_implements_of_one_file_heals_and_both_land_once() {
    // Two sides of a 2|2 partition each implement a story on the same file. The merge
    // gate's test is held until after the heal, so both changes are made from the same
    // main and meet only when the mesh is whole again: the first lands, the second hits a
    // rebase conflict, reworks on top of it and lands too. Nothing lands twice.
    let tmp = tempfile::tempdir().expect("tmp");
    let origin = tmp.path().join("origin.git");
    demo::create_origin(&origin).expect("origin");
    let hold = tmp.path().join("hold-merges");
    std::fs::write(&hold, "").expect("hold file");
    let gate = format!(
        "while [ -e '{}' ]; do sleep 0.05; done; sh test.sh",
        hold.display()
    );
    let cfg = |c: &mut Config| {
        flow_config(c, &origin);
        c.sim_phase_ms = 200;
        c.test_command = vec!["sh".into(), "-c".into(), gate.clone()];
    };
    let keys: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
    let mut nodes = vec![start_with(&tmp.path().join("n0"), &keys[0], None, cfg, None).await];
    for (i, k) in keys.iter().enumerate().skip(1) {
        let n = start_with(
            &tmp.path().join(format!("n{i}")),
            k,
            Some(&nodes[0]),
            cfg,
            None,
        )
        .await;
        nodes.push(n);
    }
    let refs: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all_alive(&refs).await;

    // Cut {n0, n1} from {n2, n3}, both ways, and wait until each side sees the other dead.
    let (left, right) = ([0usize, 1], [2usize, 3]);
    cut(&nodes, &left, &right).await;

    let lexer = |title: &str| mesh_agent::core::model::NewStory {
        title: title.into(),
        files: vec!["src/lexer.txt".into()],
        ..Default::default()
    };
    let a = nodes[0]
        .add_story(lexer("Lex hex literals"))
        .await
        .expect("a added");
    let b = nodes[2]
        .add_story(lexer("Lex octal literals"))
        .await
        .expect("b added");
    fn implemented(key: &str) -> impl Fn(&View) -> bool + '_ {
        move |v| {
            v.stories
                .get(key)
                .is_some_and(|s| s.phases_done.contains(&Phase::Implement))
        }
    }
    wait_view(
        &nodes[0],
        "left side implemented its story",
        120,
        implemented(&a.key),
    )
    .await;
    wait_view(
        &nodes[2],
        "right side implemented its story",
        120,
        implemented(&b.key),
    )
    .await;

    // Heal: unblock, redial across, let the merges through.
    heal(&nodes, &left, &right).await;
    for &i in &left {
        for &j in &right {
            nodes[i].dial(nodes[j].addr().expect("addr")).await;
        }
    }
    wait_all_alive(&refs).await;
    std::fs::remove_file(&hold).expect("release the merges");

    let view = wait_view(&nodes[0], "both stories merged", 240, |v| {
        [&a.key, &b.key].iter().all(|k| {
            v.stories
                .get(*k)
                .is_some_and(|s| s.status == StoryStatus::Merged)
        })
    })
    .await;
    wait_converged(&refs).await;
    check_main(&origin, &view, &tmp.path().join("check"));
    let reworked: Vec<&str> = [&a.key, &b.key]
        .iter()
        .filter_map(|k| view.stories.get(*k))
        .filter(|s| s.round > 0)
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(
        reworked.len(),
        1,
        "exactly one of the two went through rework after the heal: {reworked:?}"
    );
    for n in nodes {
        n.shutdown().await;
    }
}

/// A member gone bad (issue 15): a node built from the library that, while three honest
/// nodes carry the demo backlog to main, forges facts in their names, overwrites and
/// deletes theirs, claims with token `u64::MAX`, writes values no local write accepts and
/// 10,000 junk values. No honest view counts any of it, every refusal is counted against
/// the forger, and main holds each story exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_member_changes_no_honest_view_and_the_backlog_still_lands_once() {
    use mesh_agent::core::lease::{ClaimFact, Resource};
    use mesh_agent::core::trust::claimed_author;
    let tmp = tempfile::tempdir().expect("tmp");
    let origin = tmp.path().join("origin.git");
    demo::create_origin(&origin).expect("origin");
    let keys: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let n = start_with(
            &tmp.path().join(format!("n{i}")),
            k,
            nodes.first(),
            |c| {
                flow_config(c, &origin);
                // The last node only replicates: it takes no work, it forges.
                c.work = i < 3;
            },
            None,
        )
        .await;
        nodes.push(n);
    }
    let refs: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all_alive(&refs).await;
    let evil = nodes.pop().expect("four nodes");
    let me = evil.peer_id.to_string();
    let honest: Vec<String> = nodes.iter().map(|n| n.peer_id.to_string()).collect();
    let total = add_backlog(&nodes[0]).await;
    wait_view(&evil, "the backlog reached the forger", 30, |v| {
        v.stories.len() == total
    })
    .await;

    // Forgeries, each from the forger's own document, travelling like any change.
    let victim = honest[0].clone();
    let (me2, victim2) = (me.clone(), victim.clone());
    evil.hostile(move |doc| {
        let keys: Vec<String> = doc.fact_keys().map(str::to_string).collect();
        for key in keys.iter().filter(|k| k.starts_with("story/")).take(6) {
            let Some(value) = doc.raw_get(key) else {
                continue;
            };
            // The value re-signed by the forger but labelled as its author: a bad
            // signature; then signed as itself: not its key to write; then deleted.
            let json = value.splitn(4, ' ').nth(3).unwrap_or("{}");
            let json = json.replacen("\"title\":\"", "\"title\":\"forged ", 1);
            let mine = mesh_agent::core::trust::Signer::for_test("x").seal(key, &json);
            if let Some(author) = claimed_author(&value) {
                doc.raw_put(key, mine.replacen("x", author, 1));
            }
            doc.raw_delete(key);
        }
        // A story in the victim's name, and a claim with an inflated token in its own.
        let story = keys.iter().find(|k| k.starts_with("story/")).cloned();
        if let Some(story) = story {
            let s = story.trim_start_matches("story/").to_string();
            let res =
                Resource::story(&s, mesh_agent::core::model::Phase::Research).expect("resource");
            let claim = ClaimFact {
                resources: vec![(res, u64::MAX)],
                holder: me2.clone(),
                ttl_ms: 600_000,
                written_at_ms: 1,
                attempt: 1,
                after: None,
            };
            let json = serde_json::to_string(&claim).expect("json");
            let key = format!("claim/{me2}-1");
            doc.raw_put(&key, format!("m1 {me2} AAAA {json}"));
            let forged = format!("claim/{victim2}-99");
            doc.raw_put(&forged, format!("m1 {victim2} AAAA {json}"));
        }
        // A story signed in its own name whose priority is 0 (a local write refuses it).
        doc.raw_put(
            "story/S-0999@bad",
            format!("m1 {me2} AAAA {{\"number\":999,\"priority\":0}}"),
        );
        for i in 0..10_000 {
            doc.raw_put(&format!("knowledge/junk{i}"), format!("junk {i}"));
        }
    })
    .await
    .expect("the forger runs");

    // The honest mesh lands the backlog, exactly once, with nothing of the forger's.
    let view = wait_view(&nodes[0], "every story merged or blocked", 400, |v| {
        all_settled(v, total)
    })
    .await;
    check_main(&origin, &view, &tmp.path().join("check"));
    for n in &nodes {
        let v = wait_view(n, "every story settled here too", 60, |v| {
            all_settled(v, total)
        })
        .await;
        assert_eq!(v.stories.len(), total, "no story was added, none removed");
        assert!(v
            .stories
            .values()
            .all(|s| !s.fact.title.starts_with("forged")));
        assert!(
            v.claims.values().all(|c| c.holder != me),
            "a forged claim counted"
        );
        assert!(v.knowledge.keys().all(|k| !k.starts_with("junk")));
        let s = n.status().await.expect("running");
        let refused: u64 = s
            .rejected
            .iter()
            .filter(|r| r.author == me)
            .map(|r| r.count)
            .sum();
        assert!(
            refused > 0,
            "the forger's refusals are counted: {:?}",
            s.rejected
        );
        assert!(
            s.rejected.iter().any(|r| r.author == victim),
            "{:?}",
            s.rejected
        );
    }
    for n in nodes {
        n.shutdown().await;
    }
    evil.kill().await;
}

/// Every story is merged or blocked with a reason, counting those an epoch retired
/// (merged, and gone from the live document).
fn all_settled_across_epochs(v: &View, n: usize) -> bool {
    let retired = v.base().map_or(0, |b| b.retired.len());
    retired + v.stories.len() == n
        && v.stories.values().all(|s| match s.status {
            StoryStatus::Merged => true,
            StoryStatus::Blocked => s.more.blocked_reason.is_some(),
            _ => false,
        })
}

/// Checks that main holds each merged story (retired by an epoch, or live) exactly once;
/// returns how many merged.
fn landed_once_across_epochs(origin: &Path, view: &View) -> usize {
    let merged = view.base().map_or(0, |b| b.retired.len())
        + view
            .count_by_status()
            .get(&StoryStatus::Merged)
            .copied()
            .unwrap_or(0);
    let mut landed: BTreeMap<String, usize> = BTreeMap::new();
    for commit in main_log(origin).expect("main log") {
        if let Some(key) = commit.trailer("Mesh-Story-Key") {
            *landed.entry(key.to_string()).or_default() += 1;
        }
    }
    assert!(landed.values().all(|&n| n == 1), "landed twice: {landed:?}");
    assert_eq!(landed.len(), merged);
    merged
}

fn epoch_of(v: &View) -> u64 {
    v.base().map_or(0, |b| b.epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_node_joins_a_mesh_that_moved_to_a_new_epoch_and_the_backlog_lands_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let origin = tmp.path().join("origin.git");
    demo::create_origin(&origin).expect("origin");
    let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    let cfg = |c: &mut Config| {
        flow_config(c, &origin);
        c.epoch_after = 10;
    };
    let first = start_with(&tmp.path().join("n0"), &keys[0], None, cfg, None).await;
    let second = start_with(&tmp.path().join("n1"), &keys[1], Some(&first), cfg, None).await;
    wait_all_alive(&[&first, &second]).await;
    let total = add_backlog(&first).await;
    // Each ten stories merged, the mesh moves to a new epoch and they leave the live
    // document. (Right after a move, a node on the first document is served the cut
    // from the document the mesh moved from, and moves itself: two moves on, no node
    // holds the first document any more.)
    wait_view(&first, "the mesh moved to epoch 2", 300, |v| {
        epoch_of(v) >= 2
    })
    .await;
    // A node with an empty store joins: it cannot build the seed (it lacks the history);
    // it takes the epoch's document up whole from a peer, and the mesh, which claims
    // nothing while an alive peer is on another epoch, goes on.
    let new = start_with(&tmp.path().join("n2"), &keys[2], Some(&first), cfg, None).await;
    wait_view(&new, "the new node on the mesh's epoch", 120, |v| {
        epoch_of(v) >= 2
    })
    .await;
    let status = new.status().await.expect("status");
    assert_eq!(status.counters.epochs_joined, 1);
    assert_eq!(status.counters.epochs_moved, 0);
    let nodes = [first, second, new];
    let refs: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all_alive(&refs).await;
    let view = wait_view(&nodes[2], "every story merged or blocked", 400, |v| {
        all_settled_across_epochs(v, total)
    })
    .await;
    wait_converged(&refs).await;
    // Each landed once: on main as many stories as merged, retired or live, none twice.
    let merged = landed_once_across_epochs(&origin, &view);
    assert!(merged >= total - 2, "only {merged} of {total} merged");
    for n in nodes {
        n.shutdown().await;
    }
}

/// A story whose body is `len` bytes of text that compresses poorly (so a few of them
/// make a document of a known stored size).
fn bulky(i: usize, len: usize) -> NewStory {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ i as u64;
    let body: String = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                    [(x % 62) as usize],
            )
        })
        .collect();
    NewStory {
        title: format!("bulky story {i}"),
        body,
        files: vec![format!("src/bulky{i}.txt")],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_back_on_the_document_its_peers_moved_from_is_served_their_archive_and_moves_itself()
{
    // A, B and C move to epoch 1 together, and all stop: the document they moved from
    // is in their stores' archives only. C comes back with its store as it was before
    // the cut (a backup taken then: a node that crashed right after the cut, before it
    // synced it). A restarted peer reads its archive (`Effect::LoadPrevious`) and serves
    // it the cut, and C builds the seed itself and moves. No node holds the previous
    // document in memory any more, so C can only move if a peer read its archive. (C
    // holds more than a new node's few KiB: no new node, which would take the epoch up
    // whole instead; it claims no work, so its backup lacks none of its own claims.)
    let tmp = tempfile::tempdir().expect("tmp");
    let origin = tmp.path().join("origin.git");
    demo::create_origin(&origin).expect("origin");
    let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    let dirs: Vec<_> = (0..3).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let backup = tmp.path().join("n2-before-the-cut");
    let cfg = |c: &mut Config| {
        flow_config(c, &origin);
        c.epoch_after = 10;
    };
    let idle = |c: &mut Config| {
        cfg(c);
        c.work = false;
    };
    let a = start_with(&dirs[0], &keys[0], None, cfg, None).await;
    let b = start_with(&dirs[1], &keys[1], Some(&a), cfg, None).await;
    let c = start_with(&dirs[2], &keys[2], Some(&a), idle, None).await;
    wait_all_alive(&[&a, &b, &c]).await;
    let bulky: Vec<NewStory> = (0..3).map(|i| bulky(i, 60_000)).collect();
    for s in &bulky {
        a.add_story(s.clone()).await.expect("story added");
    }
    wait_view(&c, "C holds the first stories", 60, |v| {
        v.stories.len() == bulky.len()
    })
    .await;
    c.shutdown().await;
    copy_tree(&dirs[2], &backup);
    let c = start_with(&dirs[2], &keys[2], Some(&a), idle, None).await;
    wait_all_alive(&[&a, &b, &c]).await;
    // Nine more: the mesh moves once ten are merged, and not again (two merged since).
    for i in 0..9 {
        a.add_story(NewStory {
            title: format!("story {i} after the backup"),
            body: "A story carried to a move.".into(),
            files: vec![format!("src/after{i}.txt")],
            ..Default::default()
        })
        .await
        .expect("story added");
    }
    let total = bulky.len() + 9;
    for n in [&a, &b, &c] {
        wait_view(n, "the backlog settled on epoch 1", 300, |v| {
            epoch_of(v) == 1 && all_settled_across_epochs(v, total)
        })
        .await;
    }
    for n in [a, b, c] {
        n.shutdown().await;
    }
    let a = start_with(&dirs[0], &keys[0], None, cfg, None).await;
    let b = start_with(&dirs[1], &keys[1], Some(&a), cfg, None).await;
    for n in [&a, &b] {
        wait_view(n, "a restarted node on epoch 1", 60, |v| epoch_of(v) == 1).await;
    }
    let c = start_with(&backup, &keys[2], Some(&a), idle, None).await;
    let view = wait_view(&c, "C on epoch 1", 120, |v| {
        epoch_of(v) == 1 && all_settled_across_epochs(v, total)
    })
    .await;
    let status = c.status().await.expect("status");
    assert_eq!(
        (status.counters.epochs_moved, status.counters.epochs_joined),
        (1, 0),
        "C (its counters are this process's: it started on epoch 0) built the seed at the \
         cut itself, not took the epoch up whole"
    );
    let nodes = [a, b, c];
    let refs: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all_alive(&refs).await;
    wait_converged(&refs).await;
    // Nothing landed twice across the move and the restarts.
    landed_once_across_epochs(&origin, &view);
    for n in nodes {
        n.shutdown().await;
    }
}
