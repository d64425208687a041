//! The merge gate: `land`, under a local origin's gate lock, with its retry and the test
//! command. The fence it lands through is the origin's: `crate::fence` on a local origin,
//! one atomic push under leases on a remote one (`remote::land`).

use super::objects::first_parent_log;
use super::repo::clone_lock;
use super::*;
use crate::core::fence::token_check;
use crate::exec::process::{self, Capture, Keep, ProcessError, Spec, Tail};
use crate::fence::{Fence, FenceRecord, Refused};
use git2::{Oid, Repository};
use rand::Rng;
use std::collections::BTreeSet;
use std::path::Path;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How much of a test command's output (stdout and stderr interleaved) is kept: the tail.
pub const TEST_OUTPUT_CAP: usize = 16 * 1024;
/// How many of main's latest first-parent commits the gate searches for its own squash
/// commit when a land was interrupted after main moved.
const RECOVERY_SEARCH_DEPTH: usize = 1000;
/// Shortest and longest pause between two tries of the gate.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(2000);
/// The origin's gate lock file, polled every [`GATE_LOCK_POLL`]; a gate waits for it at
/// most its test timeout plus [`GATE_LOCK_SLACK`].
const GATE_LOCK_FILE: &str = "mesh-gate.lock";
const GATE_LOCK_POLL: Duration = Duration::from_millis(5);
const GATE_LOCK_SLACK: Duration = Duration::from_secs(60);
/// What the merge gate should land.
#[derive(Debug, Clone)]
pub struct LandRequest {
    /// The story's key; also names its fence and its worktree.
    pub story_key: String,
    /// The reviewed change: a commit whose history forks from some earlier main.
    pub change: Oid,
    /// The fence token of the caller's claim (`core::fence::fence_token`: round, then
    /// the merge claim's token).
    pub token: crate::core::fence::FenceToken,
    /// The caller's peer id, as recorded at the fence.
    pub holder: String,
    /// The squash commit's message (subject, blank line, body); trailers are appended.
    pub message: String,
    pub trailers: Trailers,
    /// The test command (argv), run in the worktree with the squash commit checked out.
    /// `None` lands without testing.
    pub test: Option<Vec<String>>,
    /// How long the test command may run before it is killed and counted as failed.
    pub test_timeout: Duration,
    /// How many times to fetch and try again when main moved under us (at least 1).
    pub max_tries: u32,
}

/// How the merge gate ended, when it did its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Main now is `commit`, the squash commit of the change; `tries` counts the fetches.
    Landed { commit: Oid, tries: u32 },
    /// The change does not merge onto `main`; `files` are the conflicting paths, sorted.
    Conflict { files: Vec<String>, main: Oid },
    /// The test command failed on `commit` (not landed). `exit_code` is `None` when the
    /// command was killed (by a signal or for running past its timeout).
    TestsFailed {
        output_tail: String,
        commit: Oid,
        exit_code: Option<i32>,
        timed_out: bool,
    },
    /// Main already contains the change: the merge changes nothing.
    Empty { main: Oid },
    /// The story already landed as `commit` with this very token and holder (a repeated
    /// call, say after a crash): nothing was done.
    AlreadyLanded { commit: Oid },
}

/// The fence a gate lands through: the origin's own.
enum GateFence<'a> {
    Local(Fence),
    Remote(&'a super::remote::Remote),
}

/// The result of merging a change onto main.
enum Squash {
    Conflict(Vec<String>),
    Empty,
    Commit(Oid),
}

fn check(cancel: &AtomicBool) -> Result<(), GitError> {
    if cancel.load(Ordering::Relaxed) {
        Err(GitError::Cancelled)
    } else {
        Ok(())
    }
}

/// Takes the origin's gate lock (`<origin git dir>/mesh-gate.lock`, an advisory `flock`
/// that the kernel drops when its holder dies), waiting up to `max_wait` and stopping
/// when `cancel` is set. `None` (go on without it) when the lock file cannot be used or
/// the wait ran out: a gate that hangs past its test timeout must not stop the others.
fn gate_lock(
    git_dir: &Path,
    max_wait: Duration,
    cancel: &AtomicBool,
) -> Result<Option<std::fs::File>, GitError> {
    let path = git_dir.join(GATE_LOCK_FILE);
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "no gate lock; landing without it");
            return Ok(None);
        }
    };
    let until = Instant::now() + max_wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::debug!(path = %path.display(), error = %e, "gate lock unsupported; landing without it");
                return Ok(None);
            }
        }
        check(cancel)?;
        if Instant::now() >= until {
            tracing::warn!(path = %path.display(), waited_s = max_wait.as_secs(), "the gate lock stayed held; landing without it");
            return Ok(None);
        }
        std::thread::sleep(GATE_LOCK_POLL);
    }
}

/// Sleeps before try number `tries` (from 2): jittered, 50 ms growing to 2 s.
fn backoff(tries: u32, cancel: &AtomicBool) -> Result<(), GitError> {
    let min = BACKOFF_MIN.as_millis() as u64;
    let max = BACKOFF_MAX.as_millis() as u64;
    let ceiling = min.saturating_mul(1u64 << (tries - 1).min(16)).min(max);
    let sleep = Duration::from_millis(rand::thread_rng().gen_range(min..=ceiling.max(min)));
    let until = Instant::now() + sleep;
    while Instant::now() < until {
        check(cancel)?;
        std::thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
    }
    Ok(())
}

/// How a test command ended.
pub struct TestRun {
    pub passed: bool,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The tail of stdout and stderr, interleaved, plus a last line saying how it ended.
    pub output: String,
}

/// Runs `argv` in `dir` (the node's environment, stdin closed) on the shared runner
/// ([`process`]): stdout and stderr interleaved into one tail of [`TEST_OUTPUT_CAP`]
/// bytes, the whole process group killed after `timeout`, when `cancel` is set, or when
/// the command exits.
pub fn run_test(
    argv: &[String],
    dir: &Path,
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<TestRun, GitError> {
    let (program, args) = argv.split_first().ok_or(GitError::EmptyTest)?;
    let tail = Tail::shared(TEST_OUTPUT_CAP);
    let capture = || Capture {
        log: None,
        keep: Keep::Shared(tail.clone()),
        cap: None,
    };
    let spec = Spec {
        program: program.into(),
        args: args.iter().map(Into::into).collect(),
        dir: dir.to_path_buf(),
        env: None,
        timeout,
        stdout: capture(),
        stderr: capture(),
    };
    let (status, timed_out) = match process::run_blocking(spec, cancel) {
        Ok(done) => (Some(done.status), false),
        Err(ProcessError::TimedOut { .. }) => (None, true),
        Err(ProcessError::Stopped) => return Err(GitError::Cancelled),
        Err(ProcessError::Spawn { source, .. }) => {
            return Err(GitError::TestSpawn {
                program: program.clone(),
                dir: dir.to_path_buf(),
                source,
            })
        }
        Err(source) => {
            return Err(GitError::TestRun {
                dir: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut output = tail
        .lock()
        .map(|t| String::from_utf8_lossy(t.bytes()).into_owned())
        .unwrap_or_default();
    let exit_code = status.and_then(|s| s.code());
    let passed = status.is_some_and(|s| s.success());
    let how = match (status, timed_out) {
        (_, true) => format!("killed after the {} s timeout", timeout.as_secs_f64()),
        (Some(s), _) => match s.code() {
            Some(code) => format!("exited with status {code}"),
            None => format!("was killed ({s})"),
        },
        (None, false) => "was stopped".to_string(),
    };
    if !output.is_empty() && !output.ends_with('\n') {
        output.push('\n');
    }
    output.push_str(&format!("[mesh-agent: the test command {how}]"));
    Ok(TestRun {
        passed,
        exit_code,
        timed_out,
        output,
    })
}

impl NodeRepo {
    /// The merge gate: lands the reviewed `req.change` on main as one squash commit,
    /// fenced by `req.token` (see the module doc). Blocking; checks `cancel` between steps
    /// and while the test runs.
    ///
    /// `Ok` outcomes are the gate doing its job ([`Gate`]); `Err(GitError::Fenced(_))`
    /// means the caller's claim is stale or the story already landed under another claim:
    /// stop and release. Other errors mean nothing is known to have landed.
    pub fn land(&self, req: &LandRequest, cancel: &AtomicBool) -> Result<Gate, GitError> {
        story_names(&req.story_key)?;
        if matches!(&req.test, Some(argv) if argv.is_empty()) {
            return Err(GitError::EmptyTest);
        }
        let fence = self.gate_fence()?;
        // A cheap early answer; the land below decides under the fence's locks anyway.
        if let Some(done) = self.early_answer(&fence, req)? {
            return Ok(done);
        }
        let max_tries = req.max_tries.max(1);
        let mut main = Oid::ZERO_SHA1;
        // One gate at a time at this origin: without it, gates of a busy mesh race, and
        // every loser pays for its squash, checkout and test again (2 tries per landing
        // at 8 nodes). Only an optimisation: the fence decides either way.
        let _gate = match &fence {
            GateFence::Local(f) => gate_lock(
                f.repository().path(),
                req.test_timeout + GATE_LOCK_SLACK,
                cancel,
            )?,
            GateFence::Remote(_) => None,
        };
        for tries in 1..=max_tries {
            check(cancel)?;
            if tries > 1 {
                backoff(tries, cancel)?;
            }
            main = self.fetch_main()?;
            self.ensure_commit(req.change)?;
            let repo = self.open()?;
            let step = self.squash(&repo, req, main)?;
            let commit = match step {
                Squash::Conflict(files) => return Ok(Gate::Conflict { files, main }),
                Squash::Empty => return self.empty(&fence, &repo, req, main, tries),
                Squash::Commit(c) => c,
            };
            check(cancel)?;
            // Another landing since our fetch dooms this try: do not pay for the test
            // (or the push) of a commit the fence would refuse as not fast-forward.
            if self.main_moved(&fence, main) {
                tracing::debug!(story = %req.story_key, tries, "main moved before the test, trying again");
                continue;
            }
            if let Some(argv) = &req.test {
                let dir = self.checkout_detached(&req.story_key, commit)?;
                let run = run_test(argv, &dir, req.test_timeout, cancel)?;
                check(cancel)?;
                if !run.passed {
                    return Ok(Gate::TestsFailed {
                        output_tail: run.output,
                        commit,
                        exit_code: run.exit_code,
                        timed_out: run.timed_out,
                    });
                }
                if self.main_moved(&fence, main) {
                    tracing::debug!(story = %req.story_key, tries, "main moved during the test, trying again");
                    continue;
                }
            }
            if let GateFence::Local(_) = &fence {
                // (A remote landing's one push carries the objects.)
                let land_ref = format!("{LAND_REF_PREFIX}{}/{}", req.story_key, req.token);
                self.push(commit, &land_ref)?;
            }
            check(cancel)?;
            match self.fence_land(&fence, req, commit)? {
                Ok(()) => return Ok(Gate::Landed { commit, tries }),
                Err(Refused::NotFastForward { main: now }) => {
                    tracing::debug!(story = %req.story_key, tries, %now, "main moved, trying again");
                }
                Err(refused) => return self.refused(&fence, req, refused),
            }
        }
        Err(GitError::Contended {
            tries: max_tries,
            main,
        })
    }

    /// Whether the origin's main is known to have moved away from `main` (a cheap ref
    /// read of a local origin; unknown, and a remote origin, count as not moved and the
    /// fence decides).
    fn main_moved(&self, fence: &GateFence, main: Oid) -> bool {
        match fence {
            GateFence::Local(f) => f
                .repository()
                .refname_to_id(&self.branch)
                .is_ok_and(|now| now != main),
            GateFence::Remote(_) => false,
        }
    }

    fn gate_fence(&self) -> Result<GateFence<'_>, GitError> {
        Ok(match &self.origin {
            Origin::Local(path) => GateFence::Local(Fence::open(path)?),
            Origin::Remote(remote) => GateFence::Remote(remote),
        })
    }

    /// The story's fence record at the origin (a remote one is fetched first).
    fn read_record(&self, fence: &GateFence, story: &str) -> Result<Option<FenceRecord>, GitError> {
        match fence {
            GateFence::Local(f) => Ok(f.read_record(story)?),
            GateFence::Remote(remote) => {
                let lock = clone_lock(&self.dir);
                let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
                Ok(remote.read_fence(&self.dir, story, &self.branch)?.record)
            }
        }
    }

    /// Lands `commit` on the branch through the origin's fence under the request's token.
    fn fence_land(
        &self,
        fence: &GateFence,
        req: &LandRequest,
        commit: Oid,
    ) -> Result<Result<(), Refused>, GitError> {
        let (story, token, holder) = (&req.story_key, req.token, &req.holder);
        match fence {
            GateFence::Local(f) => Ok(f.land(story, token, holder, &self.branch, commit)?),
            GateFence::Remote(remote) => {
                let lock = clone_lock(&self.dir);
                let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
                Ok(remote.land(&self.dir, story, token, holder, &self.branch, commit)?)
            }
        }
    }

    /// What the story's fence record, if any, says before we start: `Some` ends the gate.
    ///
    /// Kept out of `land` on purpose: inlined there, rustc 1.95's LLVM (MemCpyOpt's
    /// call-slot optimisation, llvm/llvm-project#208092) gave the returned error a stack
    /// slot of alignment 8 but stored it with 16-byte aligned `movaps`, and release
    /// builds crashed (SIGSEGV) whenever the fence refused a token. `scripts/check-codegen`
    /// scans a build for that pattern.
    #[inline(never)]
    fn early_answer(&self, fence: &GateFence, req: &LandRequest) -> Result<Option<Gate>, GitError> {
        match self.read_record(fence, &req.story_key)? {
            Some(rec) => self.judge_record(&rec, req),
            None => Ok(None),
        }
    }

    /// What an existing fence record means before we start: `Some` ends the gate. The
    /// fence's own rule (`core::fence::token_check`) decides; the rule lets our own token
    /// through even after it landed, and a landed record with our token is our earlier
    /// land, finished.
    fn judge_record(&self, rec: &FenceRecord, req: &LandRequest) -> Result<Option<Gate>, GitError> {
        if let Some(refused) = token_check(Some(rec), req.token, &req.holder) {
            return Err(GitError::Fenced(refused));
        }
        Ok(rec.landed.map(|commit| Gate::AlreadyLanded { commit }))
    }

    /// A refusal from the fence: our own earlier land is an outcome, the rest errors.
    fn refused(
        &self,
        fence: &GateFence,
        req: &LandRequest,
        refused: Refused,
    ) -> Result<Gate, GitError> {
        if let Refused::AlreadyLanded { .. } = refused {
            if let Some(rec) = self.read_record(fence, &req.story_key)? {
                if let Some(done) = self.judge_record(&rec, req)? {
                    return Ok(done);
                }
            }
        }
        Err(GitError::Fenced(refused))
    }

    /// The change is already on main. If main holds our own squash commit (a land cut
    /// short between main and the fence), finish that land; else report `Empty`.
    fn empty(
        &self,
        fence: &GateFence,
        repo: &Repository,
        req: &LandRequest,
        main: Oid,
        tries: u32,
    ) -> Result<Gate, GitError> {
        let token = req.token.to_string();
        let ours = first_parent_log(repo, &self.dir, main, RECOVERY_SEARCH_DEPTH)?
            .into_iter()
            .find(|c| {
                c.trailer("Mesh-Story-Key") == Some(req.story_key.as_str())
                    && c.trailer("Mesh-Fence") == Some(token.as_str())
            });
        let Some(ours) = ours else {
            return Ok(Gate::Empty { main });
        };
        match self.fence_land(fence, req, ours.oid)? {
            Ok(()) => Ok(Gate::Landed {
                commit: ours.oid,
                tries,
            }),
            Err(refused) => self.refused(fence, req, refused),
        }
    }

    /// Merges the change onto `main` and, if that is clean and not empty, writes the
    /// squash commit (parent: main only).
    fn squash(&self, repo: &Repository, req: &LandRequest, main: Oid) -> Result<Squash, GitError> {
        let err = |op| git_err(op, &self.dir);
        let main_commit = repo.find_commit(main).map_err(err("read main"))?;
        let change = repo
            .find_commit(req.change)
            .map_err(err("read the change"))?;
        let mut index = repo
            .merge_commits(&main_commit, &change, None)
            .map_err(err("merge the change onto main"))?;
        if index.has_conflicts() {
            let mut files = BTreeSet::new();
            for conflict in index.conflicts().map_err(err("list conflicts"))? {
                let conflict = conflict.map_err(err("list conflicts"))?;
                for entry in [conflict.our, conflict.their, conflict.ancestor]
                    .into_iter()
                    .flatten()
                {
                    files.insert(String::from_utf8_lossy(&entry.path).into_owned());
                }
            }
            return Ok(Squash::Conflict(files.into_iter().collect()));
        }
        let tree_id = index
            .write_tree_to(repo)
            .map_err(err("write the merged tree"))?;
        if tree_id == main_commit.tree_id() {
            return Ok(Squash::Empty);
        }
        let tree = repo
            .find_tree(tree_id)
            .map_err(err("read the merged tree"))?;
        let committer = signature(&self.dir)?;
        let commit = repo
            .commit(
                None,
                &change.author(),
                &committer,
                &with_trailers(&req.message, &req.trailers),
                &tree,
                &[&main_commit],
            )
            .map_err(err("write the squash commit"))?;
        Ok(Squash::Commit(commit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::testkit::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn a_story_lands_as_one_squash_commit_on_main() {
        let w = world();
        let node = w.node("a");
        let change = implement(&node, KEY_A, &[("feature.txt", "x\n")]);
        let mut req = request(KEY_A, change, 3, "peerA");
        req.test = Some(vec!["sh".into(), "-c".into(), "test -f feature.txt".into()]);
        let gate = node.land(&req, &no_cancel()).unwrap();
        let Gate::Landed { commit, tries } = gate else {
            panic!("{gate:?}")
        };
        assert_eq!(tries, 1);
        assert_eq!(w.main(), commit);
        let log = main_log(&w.origin).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].oid, commit);
        assert_eq!(log[0].subject, "S-0001@aaaa1111: land");
        assert_eq!(log[0].trailer("Mesh-Story-Key"), Some(KEY_A));
        assert_eq!(log[0].trailer("mesh-phase"), Some("merge"));
        assert_eq!(log[0].trailer("Mesh-Fence"), Some("3"));
        let origin = Repository::open(&w.origin).unwrap();
        let squash = origin.find_commit(commit).unwrap();
        assert_eq!(squash.parent_ids().collect::<Vec<_>>(), vec![w.root]);
        let fence = fence::Fence::open(&w.origin).unwrap();
        assert_eq!(
            fence.read_record(KEY_A).unwrap().unwrap().landed,
            Some(commit)
        );
        // The same land again is recognised, not repeated.
        assert_eq!(
            node.land(&req, &no_cancel()).unwrap(),
            Gate::AlreadyLanded { commit }
        );
        // Another holder cannot land the story again.
        let err = node
            .land(&request(KEY_A, change, 4, "peerB"), &no_cancel())
            .unwrap_err();
        assert!(
            matches!(err, GitError::Fenced(Refused::AlreadyLanded { .. })),
            "{err}"
        );
    }

    #[test]
    fn two_stories_changing_the_same_line_conflict_and_the_second_is_told_which_file() {
        let w = world();
        let a = w.node("a");
        let b = w.node("b");
        let change_a = implement(&a, KEY_A, &[("README", "line one\nA\n")]);
        let change_b = implement(&b, KEY_B, &[("README", "line one\nB\n"), ("b.txt", "b\n")]);
        b.push_work(KEY_B, "c", change_b).unwrap();
        assert!(matches!(
            a.land(&request(KEY_A, change_a, 1, "peerA"), &no_cancel())
                .unwrap(),
            Gate::Landed { .. }
        ));
        let main = w.main();
        let gate = b
            .land(&request(KEY_B, change_b, 1, "peerB"), &no_cancel())
            .unwrap();
        assert_eq!(
            gate,
            Gate::Conflict {
                files: vec!["README".to_string()],
                main
            }
        );
        assert_eq!(w.main(), main);
    }

    #[test]
    fn appends_to_the_same_file_from_the_same_base_conflict() {
        let w = world();
        let a = w.node("a");
        let change_a = implement(&a, KEY_A, &[("README", "line one\nline two\nA\n")]);
        let change_b = implement(&a, KEY_B, &[("README", "line one\nline two\nB\n")]);
        assert!(matches!(
            a.land(&request(KEY_A, change_a, 1, "peerA"), &no_cancel())
                .unwrap(),
            Gate::Landed { .. }
        ));
        let gate = a
            .land(&request(KEY_B, change_b, 1, "peerA"), &no_cancel())
            .unwrap();
        assert!(
            matches!(&gate, Gate::Conflict { files, .. } if files == &["README"]),
            "{gate:?}"
        );
    }

    #[test]
    fn failing_tests_stop_the_land_and_report_their_output() {
        let w = world();
        let node = w.node("a");
        let change = implement(&node, KEY_A, &[("feature.txt", "x\n")]);
        let mut req = request(KEY_A, change, 1, "peerA");
        req.test = Some(vec![
            "sh".into(),
            "-c".into(),
            "echo out; echo boom >&2; exit 3".into(),
        ]);
        let gate = node.land(&req, &no_cancel()).unwrap();
        let Gate::TestsFailed {
            output_tail,
            commit,
            exit_code,
            timed_out,
        } = gate
        else {
            panic!("{gate:?}")
        };
        assert_eq!(exit_code, Some(3));
        assert!(!timed_out);
        assert!(
            output_tail.contains("out") && output_tail.contains("boom"),
            "{output_tail}"
        );
        assert!(output_tail.contains("status 3"), "{output_tail}");
        assert_eq!(w.main(), w.root);
        // The tested commit is checked out, detached, in the worktree.
        let wt = Repository::open(node.worktree_path(KEY_A).unwrap()).unwrap();
        assert!(wt.head_detached().unwrap());
        assert_eq!(wt.head().unwrap().target(), Some(commit));
    }

    #[test]
    fn a_test_running_past_its_timeout_is_killed_and_fails() {
        let w = world();
        let node = w.node("a");
        let change = implement(&node, KEY_A, &[("feature.txt", "x\n")]);
        let mut req = request(KEY_A, change, 1, "peerA");
        req.test = Some(vec![
            "sh".into(),
            "-c".into(),
            "echo started; sleep 30".into(),
        ]);
        req.test_timeout = Duration::from_millis(200);
        let started = Instant::now();
        let gate = node.land(&req, &no_cancel()).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(&gate, Gate::TestsFailed { timed_out: true, exit_code: None, output_tail, .. }
                if output_tail.contains("started") && output_tail.contains("timeout")),
            "{gate:?}"
        );
        assert_eq!(w.main(), w.root);
    }

    #[test]
    fn a_stale_token_is_fenced_and_main_stays() {
        let w = world();
        let node = w.node("a");
        let change = implement(&node, KEY_A, &[("feature.txt", "x\n")]);
        let fence = fence::Fence::open(node.origin_path().unwrap()).unwrap();
        assert_eq!(fence.record(KEY_A, 9, "peerB").unwrap(), Ok(()));
        let err = node
            .land(&request(KEY_A, change, 5, "peerA"), &no_cancel())
            .unwrap_err();
        assert!(
            matches!(err, GitError::Fenced(Refused::StaleToken { recorded: 9 })),
            "{err}"
        );
        assert_eq!(w.main(), w.root);
    }

    #[test]
    fn a_change_already_on_main_is_empty() {
        let w = world();
        let node = w.node("a");
        let change = implement(&node, KEY_A, &[("feature.txt", "x\n")]);
        assert!(matches!(
            node.land(&request(KEY_A, change, 1, "peerA"), &no_cancel())
                .unwrap(),
            Gate::Landed { .. }
        ));
        let main = w.main();
        let gate = node
            .land(&request(KEY_B, change, 1, "peerA"), &no_cancel())
            .unwrap();
        assert_eq!(gate, Gate::Empty { main });
    }

    #[test]
    fn a_land_cut_short_after_main_moved_is_completed_by_repeating_it() {
        let w = world();
        let node = w.node("a");
        let change = implement(&node, KEY_A, &[("feature.txt", "x\n")]);
        let req = request(KEY_A, change, 2, "peerA");
        let Gate::Landed { commit, .. } = node.land(&req, &no_cancel()).unwrap() else {
            panic!()
        };
        // Rewind the fence to "recorded, not landed", as a crash between the two ref
        // writes leaves it.
        let origin = Repository::open(&w.origin).unwrap();
        origin
            .find_reference(&fence::fence_ref(KEY_A).unwrap())
            .unwrap()
            .delete()
            .unwrap();
        assert_eq!(fence::record(&w.origin, KEY_A, 2, "peerA").unwrap(), Ok(()));
        let gate = node.land(&req, &no_cancel()).unwrap();
        assert_eq!(gate, Gate::Landed { commit, tries: 1 });
        assert_eq!(w.main(), commit);
        let rec = fence::Fence::open(&w.origin)
            .unwrap()
            .read_record(KEY_A)
            .unwrap();
        assert_eq!(rec.unwrap().landed, Some(commit));
    }

    #[test]
    fn a_gate_that_loses_the_race_to_main_fetches_and_lands_on_top() {
        // B's test waits for A to land, so B's first land is refused as non-fast-forward.
        let w = world();
        let a = w.node("a");
        // A's change must be in the origin for A to land it by hand below.
        let b = w.node("b");
        let change_a = implement(&a, KEY_A, &[("a.txt", "a\n")]);
        a.push_work(KEY_A, "c1", change_a).unwrap();
        let change_b = implement(&b, KEY_B, &[("b.txt", "b\n")]);
        let marks = w.home.path().join("marks");
        std::fs::create_dir_all(&marks).unwrap();
        let m = marks.display();
        let script = format!(
            "touch {m}/b-testing; i=0; while [ ! -e {m}/a-landed ] && [ $i -lt 500 ]; \
             do sleep 0.01; i=$((i+1)); done"
        );
        let mut req_b = request(KEY_B, change_b, 1, "peerB");
        req_b.test = Some(vec!["sh".into(), "-c".into(), script]);
        let gate_b = std::thread::spawn(move || b.land(&req_b, &no_cancel()).unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !marks.join("b-testing").exists() {
            assert!(Instant::now() < deadline, "B's test never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        // A lands without the gate lock B holds (a writer that does not take it, such
        // as an older node): straight through the fence, as the gate would.
        let origin = Repository::open(&w.origin).unwrap();
        let tree = origin.find_commit(change_a).unwrap().tree().unwrap();
        let root = origin.find_commit(w.root).unwrap();
        let sig = Signature::now("t", "t@t").unwrap();
        let commit_a = origin
            .commit(None, &sig, &sig, "A", &tree, &[&root])
            .unwrap();
        Fence::open(&w.origin)
            .unwrap()
            .land(KEY_A, 1, "peerA", MAIN, commit_a)
            .unwrap()
            .unwrap();
        std::fs::write(marks.join("a-landed"), "").unwrap();
        let gate_b = gate_b.join().unwrap();
        let Gate::Landed {
            commit: commit_b,
            tries: 2,
        } = gate_b
        else {
            panic!("{gate_b:?}")
        };
        let log = main_log(&w.origin).unwrap();
        let oids: Vec<Oid> = log.iter().map(|c| c.oid).collect();
        assert_eq!(oids, vec![commit_b, commit_a, w.root]);
        let origin = Repository::open(&w.origin).unwrap();
        let tree = origin.find_commit(commit_b).unwrap().tree().unwrap();
        assert!(tree.get_path(Path::new("a.txt")).is_ok());
        assert!(tree.get_path(Path::new("b.txt")).is_ok());
    }

    /// Lands one change per key at once, each from its own node and thread, started
    /// together; `test` is each gate's test command. Returns the gates' outcomes.
    fn land_at_once(w: &World, keys: &[&str], test: Option<Vec<String>>) -> Vec<Gate> {
        let barrier = Arc::new(Barrier::new(keys.len()));
        let handles: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let node = w.node(&format!("n{i}"));
                let change = implement(&node, key, &[(&format!("f{i}.txt"), "x\n")]);
                let mut req = request(key, change, 1, &format!("peer{i}"));
                req.test = test.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    node.land(&req, &no_cancel()).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn nodes_landing_different_stories_at_once_all_land_exactly_once() {
        let w = world();
        let keys = ["S-0011@11111111", "S-0012@22222222", "S-0013@33333333"];
        for gate in land_at_once(&w, &keys, None) {
            assert!(matches!(gate, Gate::Landed { .. }), "{gate:?}");
        }
        let log = main_log(&w.origin).unwrap();
        assert_eq!(log.len(), keys.len() + 1);
        for key in keys {
            let landed = log
                .iter()
                .filter(|c| c.trailer("Mesh-Story-Key") == Some(key))
                .count();
            assert_eq!(landed, 1, "{key}");
        }
    }

    #[test]
    fn gates_at_one_origin_take_turns_instead_of_racing() {
        // Each gate's test takes a while: gates racing from the same main would all but
        // one find main moved after their test and try again.
        let w = world();
        let keys = [
            "S-0021@11111111",
            "S-0022@22222222",
            "S-0023@33333333",
            "S-0024@44444444",
        ];
        let test = Some(vec!["sh".into(), "-c".into(), "sleep 0.1".into()]);
        for gate in land_at_once(&w, &keys, test) {
            assert!(matches!(gate, Gate::Landed { tries: 1, .. }), "{gate:?}");
        }
        assert_eq!(main_log(&w.origin).unwrap().len(), keys.len() + 1);
    }

    #[test]
    fn a_gate_waiting_for_the_gate_lock_can_be_cancelled() {
        let w = world();
        let node = w.node("a");
        let change = implement(&node, KEY_A, &[("a.txt", "a\n")]);
        let held = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(w.origin.join(GATE_LOCK_FILE))
            .unwrap();
        held.lock().unwrap();
        let cancel = Arc::new(AtomicBool::new(false));
        let gate = {
            let (node, cancel) = (node.clone(), cancel.clone());
            let req = request(KEY_A, change, 1, "peerA");
            std::thread::spawn(move || node.land(&req, &cancel))
        };
        cancel.store(true, Ordering::SeqCst);
        assert!(matches!(gate.join().unwrap(), Err(GitError::Cancelled)));
        assert_eq!(w.main(), w.root, "nothing landed");
        drop(held);
        let gate = node
            .land(&request(KEY_A, change, 1, "peerA"), &no_cancel())
            .unwrap();
        assert!(matches!(gate, Gate::Landed { tries: 1, .. }), "{gate:?}");
    }

    #[test]
    fn one_node_landing_two_stories_from_two_threads_lands_both() {
        let w = world();
        let node = w.node("a");
        let change_a = implement(&node, KEY_A, &[("a.txt", "a\n")]);
        let change_b = implement(&node, KEY_B, &[("b.txt", "b\n")]);
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = [(KEY_A, change_a), (KEY_B, change_b)]
            .into_iter()
            .map(|(key, change)| {
                let node = node.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut req = request(key, change, 1, "peerA");
                    req.test = Some(vec!["sh".into(), "test.sh".into()]);
                    barrier.wait();
                    node.land(&req, &no_cancel()).unwrap()
                })
            })
            .collect();
        for h in handles {
            let gate = h.join().unwrap();
            assert!(matches!(gate, Gate::Landed { .. }), "{gate:?}");
        }
        assert_eq!(main_log(&w.origin).unwrap().len(), 3);
    }

    #[test]
    fn a_cancelled_gate_stops_before_landing() {
        let w = world();
        let node = w.node("a");
        let change = implement(&node, KEY_A, &[("feature.txt", "x\n")]);
        let cancel = AtomicBool::new(true);
        let err = node
            .land(&request(KEY_A, change, 1, "peerA"), &cancel)
            .unwrap_err();
        assert!(matches!(err, GitError::Cancelled), "{err}");
        assert_eq!(w.main(), w.root);
    }
}
