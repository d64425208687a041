//! A paused holder: a node stopped past its lease while implementing (as SIGSTOP or a
//! long GC pause would), then resumed. Another node takes the story over with a higher
//! fencing token; the paused holder's late result is ignored by every view and its late
//! fence write is refused by the git origin (docs/DESIGN.md §1.3, §8.2).

use crate::common::*;
use futures::future::BoxFuture;
use libp2p::identity::Keypair;
use mesh_agent::core::model::{Handoff, NewStory, Phase, StoryStatus};
use mesh_agent::core::sim_handoff::sim_handoff;
use mesh_agent::core::Job;
use mesh_agent::exec::{ExecError, Executor, Workspace};
use mesh_agent::fence::{self, Refused};
use mesh_agent::node::NodeHandle;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Test-controlled pause of the victim's first implement job.
struct Gate {
    /// The token the victim recorded at the fence before implementing.
    recorded: oneshot::Sender<u64>,
    /// Released by the test once another node has taken the story over.
    resume: oneshot::Receiver<()>,
    /// What the origin said to the victim's late fence write.
    late: oneshot::Sender<Result<(), Refused>>,
}

/// One fence write: (holder, token, the origin's answer).
type FenceLog = Arc<Mutex<Vec<(String, u64, Result<(), Refused>)>>>;

/// Runs phases like the sim executor, but implement records its token at the origin's
/// fence first. The victim's first implement job then waits for the test ("paused"), and
/// once released writes to the fence again with its now stale token.
struct FencedExecutor {
    origin: PathBuf,
    holder: String,
    phase_ms: u64,
    log: FenceLog,
    gate: Mutex<Option<Gate>>,
}

fn record(
    origin: &Path,
    log: &FenceLog,
    story: &str,
    token: u64,
    holder: &str,
) -> Result<(), Refused> {
    let r = fence::record(origin, story, u128::from(token), holder).expect("fence works");
    log.lock()
        .unwrap()
        .push((holder.to_string(), token, r.clone()));
    r
}

impl Executor for FencedExecutor {
    fn run(&self, job: Job, _ws: Workspace) -> BoxFuture<'static, Result<Handoff, ExecError>> {
        let gate = if job.phase == Phase::Implement {
            self.gate.lock().unwrap().take()
        } else {
            None
        };
        let (origin, holder, log, ms) = (
            self.origin.clone(),
            self.holder.clone(),
            self.log.clone(),
            self.phase_ms,
        );
        Box::pin(async move {
            if job.phase == Phase::Implement {
                // Before implementing, the holder records its token at the origin.
                if let Err(refused) = record(&origin, &log, &job.story, job.token, &holder) {
                    return Err(ExecError::failed(format!("fence refused: {refused:?}")));
                }
            }
            match gate {
                Some(g) => {
                    let _ = g.recorded.send(job.token);
                    let _ = g.resume.await;
                    // Woken up past its lease: the late write at the origin.
                    let late = record(&origin, &log, &job.story, job.token, &holder);
                    let _ = g.late.send(late);
                }
                None => tokio::time::sleep(Duration::from_millis(ms)).await,
            }
            Ok(sim_handoff(&job))
        })
    }
}

/// A bare origin with one commit on main.
fn origin() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = git2::Repository::init_bare(dir.path()).unwrap();
    let sig = git2::Signature::now("test", "test@example.com").unwrap();
    let tree = repo.treebuilder(None).unwrap().write().unwrap();
    let tree = repo.find_tree(tree).unwrap();
    repo.commit(Some("refs/heads/main"), &sig, &sig, "root", &tree, &[])
        .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_is_fenced_in_every_view_and_at_the_origin() {
    let origin = origin();
    let log: FenceLog = Arc::default();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let keys: Vec<_> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    let (recorded_tx, recorded_rx) = oneshot::channel();
    let (resume_tx, resume_rx) = oneshot::channel();
    let (late_tx, late_rx) = oneshot::channel();
    let mut gate = Some(Gate {
        recorded: recorded_tx,
        resume: resume_rx,
        late: late_tx,
    });
    // Node 1 is the victim. Nobody claims until the test says so.
    let victim_ix = 1;
    let tweak = |c: &mut mesh_agent::config::Config| {
        fast_leases(c);
        c.work = false;
    };
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for i in 0..3 {
        let exec = Arc::new(FencedExecutor {
            origin: origin.path().to_path_buf(),
            holder: keys[i].public().to_peer_id().to_string(),
            phase_ms: 100,
            log: log.clone(),
            gate: Mutex::new(if i == victim_ix { gate.take() } else { None }),
        });
        let n = start_with(dirs[i].path(), &keys[i], nodes.first(), tweak, Some(exec)).await;
        nodes.push(n);
    }
    let all: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all_alive(&all).await;
    let story = nodes[0]
        .add_story(NewStory {
            title: "fenced".into(),
            files: vec!["src/lib.rs".into()],
            ..Default::default()
        })
        .await
        .expect("write accepted")
        .key;
    wait_converged(&all).await;

    // Only the victim works: it runs research and plan, then starts implement and
    // records its token at the fence.
    let victim = &nodes[victim_ix];
    let victim_id = victim.peer_id.to_string();
    victim.set_work(true).await.expect("running");
    let stale = within("the victim records its token", 60, recorded_rx)
        .await
        .expect("gate");
    assert_eq!(
        fence::read(origin.path(), &story).unwrap(),
        Some((u128::from(stale), victim_id.clone()))
    );

    // Pause it well past ttl + grace and past dead_after: no heartbeats, no sync. The
    // takeover needs about ttl + grace + one phase; the rest is slack for a loaded machine.
    let pause = Duration::from_secs(5);
    victim.pause(pause).await.expect("running");
    let paused_at = tokio::time::Instant::now();
    for (i, n) in nodes.iter().enumerate() {
        if i != victim_ix {
            n.set_work(true).await.expect("running");
        }
    }

    // Another node takes implement over with a higher token and finishes it, while the
    // victim is still paused.
    let taken = wait_view(&nodes[0], "implement taken over", 30, |v| {
        v.counted_result(&story, Phase::Implement)
            .is_some_and(|r| r.holder != victim_id)
    })
    .await;
    let taker = taken
        .counted_result(&story, Phase::Implement)
        .unwrap()
        .clone();
    assert!(
        paused_at.elapsed() < pause,
        "taken over only after the victim resumed ({:?})",
        paused_at.elapsed()
    );
    assert!(taker.token > stale, "{} <= {stale}", taker.token);
    assert_eq!(
        fence::read(origin.path(), &story).unwrap(),
        Some((u128::from(taker.token), taker.holder.clone()))
    );

    // The victim wakes up: its late fence write is refused with the taker's token.
    resume_tx.send(()).expect("victim job still running");
    let late = within("the late fence write", 30, late_rx)
        .await
        .expect("late");
    assert_eq!(
        late,
        Err(Refused::StaleToken {
            recorded: u128::from(taker.token)
        })
    );

    // Every node ends up with the same document: the story merged, implement counted
    // from the taker, the victim's late result present but ignored.
    for n in &nodes {
        wait_view(n, "story merged", 60, |v| {
            v.stories
                .get(story.as_str())
                .is_some_and(|s| s.status == StoryStatus::Merged)
        })
        .await;
    }
    wait_converged(&all).await;
    let mut late_written = false;
    for n in &nodes {
        let v = n.view().await.expect("running");
        let counted = v
            .counted_result(&story, Phase::Implement)
            .expect("implement still has a counted result");
        assert_eq!(
            (&counted.holder, counted.token, &counted.claim),
            (&taker.holder, taker.token, &taker.claim)
        );
        for r in v.results.values() {
            if r.story == story && r.phase == Phase::Implement && r.holder == victim_id {
                assert_eq!(r.token, stale);
                late_written = true;
            }
        }
    }
    // The job finished during the pause, so its outcome was queued before anything that
    // could tell the victim it lost: the late result was written, and no view counts it.
    assert!(
        late_written,
        "the victim's late result never reached the views"
    );
    // At the origin: the victim's record, the taker's, the victim's refused late write.
    let fence_writes = log.lock().unwrap().clone();
    assert_eq!(fence_writes.len(), 3, "{fence_writes:?}");
    assert_eq!(
        fence::read(origin.path(), &story).unwrap(),
        Some((u128::from(taker.token), taker.holder.clone()))
    );

    for n in nodes {
        n.kill().await;
    }
}
