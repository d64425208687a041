//! `git::remote` against real servers on loopback: OpenSSH `sshd` with `git-shell`, and
//! smart HTTP (`git http-backend` behind lighttpd). Each scenario runs over ssh, the key
//! ones over http too; each test starts its own server on a free port (see
//! `remote_git/kit.rs`, which also says when a test is skipped).

#[path = "remote_git/kit.rs"]
mod kit;

use git2::Oid;
use kit::{GitHost, Node, Via, MAIN};
use mesh_agent::core::model::Phase;
use mesh_agent::fence::{fence_ref, FenceRecord, Refused};
use mesh_agent::git::remote::{Credentials, Landing, Remote, RemoteError, Secret};
use mesh_agent::git::{Gate, GitError, LandRequest, NodeRepo, Trailers};
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const STORY: &str = "S-0001@ab12cd";
const OTHER: &str = "S-0002@ab12cd";

fn over(via: Via, scenario: fn(&GitHost)) {
    if let Some(host) = GitHost::start(via) {
        scenario(&host);
    }
}

fn landed(token: u128, holder: &str, commit: Oid) -> Option<FenceRecord> {
    Some(FenceRecord {
        token,
        holder: holder.into(),
        landed: Some(commit),
    })
}

// ---- clone, work refs, fetch ----

fn clone_push_fetch_delete(h: &GitHost) {
    let a = h.node();
    let b = h.node();
    let main = h.main();
    assert_eq!(
        a.tracking(MAIN),
        Some(main),
        "the clone tracks the origin's main"
    );
    assert!(
        a.repo().find_commit(main).is_ok(),
        "the clone holds main's objects"
    );
    assert!(
        !a.clone.join("objects/info/alternates").exists(),
        "a clone of a remote origin borrows no object store"
    );

    let work = a.commit_on(main, "work of a");
    a.remote.push_work(&a.clone, STORY, "c1", work).unwrap();
    let work_ref = format!("refs/mesh/work/{STORY}/c1");
    assert_eq!(h.target(&work_ref), Some(work));

    b.remote.fetch(&b.clone, MAIN).unwrap();
    assert_eq!(
        b.tracking(&work_ref),
        Some(work),
        "another clone fetches the work"
    );
    assert!(b.repo().find_commit(work).is_ok());

    // A rework under the same claim replaces the ref, fast-forward or not.
    let rework = a.commit_on(main, "rework of a");
    a.remote.push_work(&a.clone, STORY, "c1", rework).unwrap();
    assert_eq!(h.target(&work_ref), Some(rework));
    let seen = b.remote.ls_remote(&b.clone, &[MAIN, &work_ref]).unwrap();
    assert_eq!(seen.get(&work_ref), Some(&rework));
    assert_eq!(seen.get(MAIN), Some(&main));

    // Deleted when the story ends; deleting again is fine; fetch prunes it.
    a.remote.delete_ref(&a.clone, &work_ref).unwrap();
    a.remote.delete_ref(&a.clone, &work_ref).unwrap();
    assert_eq!(h.target(&work_ref), None);
    b.remote.fetch(&b.clone, MAIN).unwrap();
    assert_eq!(
        b.tracking(&work_ref),
        None,
        "fetch drops refs the origin deleted"
    );
    let seen = b.remote.ls_remote(&b.clone, &[MAIN, &work_ref]).unwrap();
    assert_eq!(seen.len(), 1);
}

#[test]
fn a_clone_gets_main_and_a_pushed_work_ref_reaches_another_clone_over_ssh() {
    over(Via::Ssh, clone_push_fetch_delete);
}

#[test]
fn a_clone_gets_main_and_a_pushed_work_ref_reaches_another_clone_over_http() {
    over(Via::Http, clone_push_fetch_delete);
}

// ---- the fenced landing ----

fn fenced_landing(h: &GitHost) {
    let a = h.node();
    let main = h.main();
    a.remote.check_atomic(&a.clone, main).unwrap();
    let change = a.commit_on(main, "story one");
    assert_eq!(
        a.remote
            .land(&a.clone, STORY, 2, "peerA", MAIN, change)
            .unwrap(),
        Ok(())
    );
    assert_eq!(h.main(), change);
    assert_eq!(
        h.fence(STORY),
        landed(2, "peerA", change),
        "main and fence moved together"
    );
    // Repeating the same landing is a success that changes nothing.
    let fence_blob = h.target(&fence_ref(STORY).unwrap());
    assert_eq!(
        a.remote
            .land(&a.clone, STORY, 2, "peerA", MAIN, change)
            .unwrap(),
        Ok(())
    );
    assert_eq!(h.target(&fence_ref(STORY).unwrap()), fence_blob);
    // The same claim cannot land the story a second time with another commit.
    let more = a.commit_on(change, "more of story one");
    assert_eq!(
        a.remote
            .land(&a.clone, STORY, 2, "peerA", MAIN, more)
            .unwrap(),
        Err(Refused::AlreadyLanded {
            token: 2,
            commit: change
        })
    );
    assert_eq!(h.target(&fence_ref(STORY).unwrap()), fence_blob);
    assert_eq!(h.main(), change);
}

#[test]
fn a_fenced_landing_moves_main_and_the_fence_ref_together_over_ssh() {
    over(Via::Ssh, fenced_landing);
}

#[test]
fn a_fenced_landing_moves_main_and_the_fence_ref_together_over_http() {
    over(Via::Http, fenced_landing);
}

fn stale_token(h: &GitHost) {
    let a = h.node();
    let b = h.node();
    let main = h.main();
    assert_eq!(
        b.remote.record(&b.clone, STORY, 9, "peerB").unwrap(),
        Ok(())
    );
    let change = a.commit_on(main, "stale work");
    assert_eq!(
        a.remote
            .land(&a.clone, STORY, 5, "peerA", MAIN, change)
            .unwrap(),
        Err(Refused::StaleToken { recorded: 9 })
    );
    assert_eq!(h.main(), main);

    // The race: a reads the fence (empty), b records a higher token, a pushes. The
    // server refuses the whole push on the fence's lease, main included.
    let plan = a
        .remote
        .prepare_landing(&a.clone, OTHER, 5, "peerA", MAIN)
        .unwrap()
        .unwrap();
    assert_eq!(
        b.remote.record(&b.clone, OTHER, 9, "peerB").unwrap(),
        Ok(())
    );
    let lost = a.remote.push_landing(&a.clone, &plan, change).unwrap();
    assert_eq!(
        lost,
        Landing::LeaseLost {
            reference: fence_ref(OTHER).unwrap()
        }
    );
    assert_eq!(
        h.main(),
        main,
        "an atomic push refused on one ref moves no ref"
    );
    assert_eq!(h.fence(OTHER).map(|r| r.token), Some(9));
    assert_eq!(
        a.remote
            .land(&a.clone, OTHER, 5, "peerA", MAIN, change)
            .unwrap(),
        Err(Refused::StaleToken { recorded: 9 })
    );
}

#[test]
fn a_stale_token_is_refused_by_the_remote_over_ssh() {
    over(Via::Ssh, stale_token);
}

#[test]
fn a_stale_token_is_refused_by_the_remote_over_http() {
    over(Via::Http, stale_token);
}

fn second_landing(h: &GitHost) {
    let a = h.node();
    let b = h.node();
    let main = h.main();
    let first = a.commit_on(main, "first landing");
    assert_eq!(
        a.remote
            .land(&a.clone, STORY, 2, "peerA", MAIN, first)
            .unwrap(),
        Ok(())
    );
    b.remote.fetch(&b.clone, MAIN).unwrap();
    let again = b.commit_on(first, "second landing");
    let refused = Err(Refused::AlreadyLanded {
        token: 2,
        commit: first,
    });
    assert_eq!(
        b.remote
            .land(&b.clone, STORY, 3, "peerB", MAIN, again)
            .unwrap(),
        refused
    );
    assert_eq!(h.main(), first);

    // The race: b plans its landing of OTHER, a lands OTHER first; b's push is refused.
    let plan = b
        .remote
        .prepare_landing(&b.clone, OTHER, 3, "peerB", MAIN)
        .unwrap()
        .unwrap();
    a.remote.fetch(&a.clone, MAIN).unwrap();
    let a_other = a.commit_on(first, "a lands other");
    assert_eq!(
        a.remote
            .land(&a.clone, OTHER, 2, "peerA", MAIN, a_other)
            .unwrap(),
        Ok(())
    );
    let b_other = b.commit_on(first, "b lands other");
    let lost = b.remote.push_landing(&b.clone, &plan, b_other).unwrap();
    assert!(matches!(lost, Landing::LeaseLost { .. }), "{lost:?}");
    assert_eq!(h.main(), a_other);
    assert_eq!(h.fence(OTHER), landed(2, "peerA", a_other));
    assert_eq!(
        b.remote
            .land(&b.clone, OTHER, 3, "peerB", MAIN, b_other)
            .unwrap(),
        Err(Refused::AlreadyLanded {
            token: 2,
            commit: a_other
        })
    );
}

#[test]
fn a_second_landing_of_the_same_story_is_refused_over_ssh() {
    over(Via::Ssh, second_landing);
}

#[test]
fn a_second_landing_of_the_same_story_is_refused_over_http() {
    over(Via::Http, second_landing);
}

fn racing_landings(h: &GitHost) {
    let a = h.node();
    let b = h.node();
    let main = h.main();
    let b_change = b.commit_on(main, "b's story");
    let plan = b
        .remote
        .prepare_landing(&b.clone, OTHER, 4, "peerB", MAIN)
        .unwrap()
        .unwrap();
    assert_eq!(plan.main, Some(main));
    // a lands its story between b's read and b's push.
    let a_change = a.commit_on(main, "a's story");
    assert_eq!(
        a.remote
            .land(&a.clone, STORY, 3, "peerA", MAIN, a_change)
            .unwrap(),
        Ok(())
    );
    let lost = b.remote.push_landing(&b.clone, &plan, b_change).unwrap();
    assert_eq!(
        lost,
        Landing::LeaseLost {
            reference: MAIN.into()
        }
    );
    assert_eq!(
        h.fence(OTHER),
        None,
        "the fence ref did not move without main"
    );
    // Landing again reads the moved main: rebase first.
    assert_eq!(
        b.remote
            .land(&b.clone, OTHER, 4, "peerB", MAIN, b_change)
            .unwrap(),
        Err(Refused::NotFastForward { main: a_change })
    );
    let rebased = b.commit_on(a_change, "b's story");
    assert_eq!(
        b.remote
            .land(&b.clone, OTHER, 4, "peerB", MAIN, rebased)
            .unwrap(),
        Ok(())
    );
    assert_eq!(h.main(), rebased);
    assert_eq!(h.fence(STORY), landed(3, "peerA", a_change));
    assert_eq!(h.fence(OTHER), landed(4, "peerB", rebased));
}

#[test]
fn a_landing_racing_another_is_refused_on_the_moved_main_then_lands_after_a_rebase_over_ssh() {
    over(Via::Ssh, racing_landings);
}

#[test]
fn a_landing_racing_another_is_refused_on_the_moved_main_then_lands_after_a_rebase_over_http() {
    over(Via::Http, racing_landings);
}

// ---- what goes wrong, said clearly ----

fn no_atomic_push(h: &GitHost) {
    h.set_config("receive.advertiseAtomic", "false");
    let a = h.node();
    let main = h.main();
    let err = a.remote.check_atomic(&a.clone, main).unwrap_err();
    assert!(matches!(err, RemoteError::NoAtomicPush { .. }), "{err:?}");
    assert!(
        err.to_string().contains("does not support atomic push"),
        "{err}"
    );
    let change = a.commit_on(main, "work");
    let err = a
        .remote
        .land(&a.clone, STORY, 1, "peerA", MAIN, change)
        .unwrap_err();
    assert!(matches!(err, RemoteError::NoAtomicPush { .. }), "{err:?}");
    assert_eq!(
        h.main(),
        main,
        "no silent downgrade to a non-atomic landing"
    );
    assert_eq!(h.fence(STORY), None);
}

#[test]
fn a_server_without_atomic_push_is_a_clear_error_and_nothing_lands_over_ssh() {
    over(Via::Ssh, no_atomic_push);
}

#[test]
fn a_server_without_atomic_push_is_a_clear_error_and_nothing_lands_over_http() {
    over(Via::Http, no_atomic_push);
}

fn unknown_host_key(h: &GitHost) {
    let empty = h.dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let creds = Credentials {
        ssh_command: Some(kit::ssh_command(&h.user_key, &empty)),
        ..Credentials::default()
    };
    let remote = Remote::new(&h.url, creds).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = remote
        .clone_into(&dir.path().join("clone"), MAIN)
        .unwrap_err();
    assert!(matches!(err, RemoteError::HostKey { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("known_hosts") && text.contains("never trusts"),
        "{text}"
    );
    assert!(!err.is_transient());
    assert_eq!(
        std::fs::read_to_string(&empty).unwrap(),
        "",
        "the key was not added"
    );
}

#[test]
fn an_unknown_ssh_host_key_is_a_clear_error_and_never_trusted() {
    over(Via::Ssh, unknown_host_key);
}

fn unauthorized_key(h: &GitHost) {
    let other = h.dir.path().join("other_key");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success());
    let creds = Credentials {
        ssh_command: Some(kit::ssh_command(&other, &h.known_hosts)),
        ..Credentials::default()
    };
    let remote = Remote::new(&h.url, creds).unwrap();
    let err = remote.ls_remote(h.dir.path(), &[MAIN]).unwrap_err();
    assert!(matches!(err, RemoteError::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("check the key"), "{err}");
}

#[test]
fn an_ssh_key_the_server_does_not_accept_is_an_authentication_error() {
    over(Via::Ssh, unauthorized_key);
}

/// Collects every log line emitted on this thread while it lives.
struct Logs {
    buf: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> Logs {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        Logs {
            buf,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }
}

#[test]
fn https_credentials_never_appear_in_errors_logs_or_the_clone() {
    let Some(h) = GitHost::start(Via::Http) else {
        return;
    };
    let logs = Logs::capture();
    let wrong = "wrong-Secret-4711";
    let mut texts = Vec::new();

    // A wrong token from the credentials, then a wrong password written in the URL.
    let creds = Credentials {
        username: Some(kit::HTTP_USER.into()),
        token: Some(Secret::new(wrong)),
        ssh_command: None,
        ..Credentials::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let err = Remote::new(&h.url, creds)
        .unwrap()
        .clone_into(&dir.path().join("c1"), MAIN)
        .unwrap_err();
    assert!(matches!(err, RemoteError::Auth { .. }), "{err:?}");
    texts.push(format!("{err} {err:?}"));
    let in_url = h
        .url
        .replacen("http://", &format!("http://{}:{wrong}@", kit::HTTP_USER), 1);
    let remote = Remote::new(&in_url, Credentials::default()).unwrap();
    texts.push(format!("{remote:?} {}", remote.url()));
    let err = remote.ls_remote(dir.path(), &[MAIN]).unwrap_err();
    assert!(matches!(err, RemoteError::Auth { .. }), "{err:?}");
    texts.push(format!("{err} {err:?}"));

    // The right token in the URL works, and lands, and is written nowhere.
    let in_url = h.url.replacen(
        "http://",
        &format!("http://{}:{}@", kit::HTTP_USER, h.token),
        1,
    );
    let node = Node::clone_of(Remote::new(&in_url, Credentials::default()).unwrap());
    let change = node.commit_on(h.main(), "work");
    assert_eq!(
        node.remote
            .land(&node.clone, STORY, 1, "peerA", MAIN, change)
            .unwrap(),
        Ok(())
    );
    let config = std::fs::read_to_string(node.clone.join("config")).unwrap();
    assert!(
        !config.contains(&h.token),
        "the clone's config holds the token:\n{config}"
    );
    texts.push(format!("{:?}", node.remote));

    let logged = logs.text();
    assert!(logged.contains("git"), "the runs were logged: {logged}");
    texts.push(logged);
    for text in texts {
        assert!(!text.contains(wrong), "a secret leaked: {text}");
        assert!(!text.contains(&h.token), "a secret leaked: {text}");
    }
}

#[test]
fn an_unreachable_remote_is_a_clear_transient_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    for url in [
        format!("http://127.0.0.1:{port}/git/origin.git"),
        format!("ssh://nobody@127.0.0.1:{port}/srv/origin.git"),
    ] {
        let creds = Credentials {
            ssh_command: Some("ssh -F /dev/null -o BatchMode=yes".into()),
            ..Credentials::default()
        };
        let err = Remote::new(&url, creds)
            .unwrap()
            .ls_remote(dir.path(), &[MAIN])
            .unwrap_err();
        assert!(
            matches!(err, RemoteError::Unreachable { .. }),
            "{url}: {err:?}"
        );
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string().contains("check the host, the port"),
            "{err}"
        );
    }
}

// ---- the node's own git shell (`NodeRepo`) over a remote origin ----

fn land_request(story: &str, change: Oid, token: u128, holder: &str) -> LandRequest {
    LandRequest {
        story_key: story.into(),
        change,
        token,
        holder: holder.into(),
        message: format!("{story}: land\n\nSquashed."),
        trailers: Trailers {
            story: story.split('@').next().unwrap_or(story).into(),
            story_key: story.into(),
            phase: Phase::Merge,
            fence: token,
            node: holder.into(),
        },
        test: Some(vec!["sh".into(), "-c".into(), "test -f story.txt".into()]),
        test_timeout: Duration::from_secs(30),
        max_tries: 5,
    }
}

/// Prepares `story`'s worktree on `node` at the origin's main, writes `file` and commits.
fn implement(node: &NodeRepo, story: &str, file: &str) -> Oid {
    let base = node.fetch_main().unwrap();
    let wt = node.prepare_worktree(story, base).unwrap();
    std::fs::write(wt.join(file), format!("{story}\n")).unwrap();
    let mut t = land_request(story, base, 1, "peerA").trailers;
    t.phase = Phase::Implement;
    node.commit_all(&wt, "implement", "", &t).unwrap().unwrap()
}

fn node_repo_lands_through_the_remote_fence(h: &GitHost) {
    let home = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        NodeRepo::open_or_clone_remote(h.remote(), &home.path().join(name).join("clone")).unwrap()
    };
    let (a, b) = (open("a"), open("b"));
    assert!(a.is_remote() && a.origin_path().is_none());
    assert!(
        !a.clone_dir().join("objects/info/alternates").exists(),
        "no object store is borrowed from a remote origin"
    );
    a.check_atomic_push().unwrap();
    let main = h.main();
    assert_eq!(b.fetch_main().unwrap(), main);

    // a implements and pushes its work; b, another machine, fetches it and lands it.
    let change = implement(&a, STORY, "story.txt");
    a.push_work(STORY, "A-1001", change).unwrap();
    assert_eq!(
        h.target(&format!("refs/mesh/work/{STORY}/A-1001")),
        Some(change)
    );
    b.ensure_commit(change).unwrap();
    let cancel = AtomicBool::new(false);
    let landed_as = match b.land(&land_request(STORY, change, 2, "peerB"), &cancel) {
        Ok(Gate::Landed { commit, .. }) => commit,
        other => panic!("the land over the remote: {other:?}"),
    };
    assert_eq!(h.main(), landed_as, "main moved at the origin");
    assert_eq!(
        h.fence(STORY),
        landed(2, "peerB", landed_as),
        "with the fence, in one push"
    );

    // Landed: its work refs go.
    assert_eq!(b.drop_work_refs(STORY).unwrap(), 1);
    assert_eq!(h.target(&format!("refs/mesh/work/{STORY}/A-1001")), None);
    // The repeat of that landing (say after a crash) finds it done.
    assert!(matches!(
        b.land(&land_request(STORY, change, 2, "peerB"), &cancel),
        Ok(Gate::AlreadyLanded { commit }) if commit == landed_as
    ));
    // A second landing of the story, under an older or a newer claim, is refused by the
    // remote's fence, and main stays.
    for token in [1, 3] {
        match a.land(&land_request(STORY, change, token, "peerA"), &cancel) {
            Err(GitError::Fenced(Refused::AlreadyLanded { token: 2, .. })) => {}
            other => panic!("a second landing under token {token}: {other:?}"),
        }
    }
    assert_eq!(h.main(), landed_as);
    // A stale holder: a newer claim recorded its token at the fence first.
    const THIRD: &str = "S-0003@ab12cd";
    let third = implement(&a, THIRD, "third.txt");
    let newer = h.remote().record(b.clone_dir(), THIRD, 5, "peerB").unwrap();
    assert_eq!(newer, Ok(()));
    match a.land(&land_request(THIRD, third, 4, "peerA"), &cancel) {
        Err(GitError::Fenced(Refused::StaleToken { .. })) => {}
        other => panic!("a stale token: {other:?}"),
    }
    assert_eq!(h.main(), landed_as);

    // a's next story was based on the old main: the gate merges it onto the new one.
    let other = {
        let wt = a.prepare_worktree(OTHER, main).unwrap();
        std::fs::write(wt.join("story.txt"), "not the same story\n").unwrap();
        std::fs::write(wt.join("other.txt"), "other\n").unwrap();
        let mut t = land_request(OTHER, main, 1, "peerA").trailers;
        t.phase = Phase::Implement;
        a.commit_all(&wt, "implement", "", &t).unwrap().unwrap()
    };
    match a.land(&land_request(OTHER, other, 1, "peerA"), &cancel) {
        Ok(Gate::Conflict { files, .. }) => assert_eq!(files, vec!["story.txt"]),
        other => panic!("two stories adding one file: {other:?}"),
    }

    // The clone is reopened on restart, and a clone of another origin is refused.
    let again = open("a");
    assert_eq!(again.fetch_main().unwrap(), landed_as);
    let elsewhere = Remote::new("ssh://git@198.18.0.1/elsewhere.git", h.credentials()).unwrap();
    match NodeRepo::open_or_clone_remote(elsewhere, &home.path().join("a/clone")) {
        Err(GitError::NotAClone { why, .. }) => assert!(why.contains("its origin is"), "{why}"),
        other => panic!("another origin's clone: {other:?}"),
    }
}

#[test]
fn a_node_repo_lands_through_the_remote_fence_over_ssh() {
    over(Via::Ssh, node_repo_lands_through_the_remote_fence);
}

#[test]
fn a_node_repo_lands_through_the_remote_fence_over_http() {
    over(Via::Http, node_repo_lands_through_the_remote_fence);
}

#[test]
fn an_origin_url_git_cannot_be_trusted_with_is_refused_with_the_accepted_forms() {
    let dir = tempfile::tempdir().unwrap();
    let err = NodeRepo::open_or_clone("ext::sh -c evil", &dir.path().join("c")).unwrap_err();
    assert!(err.to_string().contains("is not an origin"), "{err}");
    let err = NodeRepo::open_or_clone("ftp://host/repo.git", &dir.path().join("c")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("is not an origin") && msg.contains("ssh://"),
        "{msg}"
    );
}

// ---- the work shell's merge over a remote origin ----

/// A merge holder landed a story, dropped its work refs and died before recording the
/// landing; the node taking the merge over cannot fetch the change any more (its refs
/// are gone) and must still learn from the fence that the story landed — not fail the
/// attempt on the missing commit (three such failures blocked a landed story in chaos
/// run seed 406).
fn takeover_of_a_landed_merge_whose_work_is_gone(h: &GitHost) {
    use mesh_agent::core::fence::fence_token;
    use mesh_agent::core::model::{Handoff, ResultFact, StoryFact, Verdict};
    use mesh_agent::work::{GateConfig, WorkShell};
    let home = tempfile::tempdir().unwrap();
    let open = |name: &str| {
        NodeRepo::open_or_clone_remote(h.remote(), &home.path().join(name).join("clone")).unwrap()
    };
    let (a, b) = (open("a"), open("b"));
    let change = implement(&a, STORY, "story.txt");
    a.push_work(STORY, "A-1001", change).unwrap();
    let cancel = AtomicBool::new(false);
    let landed_as = match a.land(
        &land_request(STORY, change, fence_token(0, 1), "peerA"),
        &cancel,
    ) {
        Ok(Gate::Landed { commit, .. }) => commit,
        other => panic!("the first landing: {other:?}"),
    };
    assert_eq!(a.drop_work_refs(STORY).unwrap(), 1);
    // ... and a dies. b holds the merge now, with the next token.
    let shell = Arc::new(WorkShell::new(
        Arc::new(mesh_agent::exec::sim::SimExecutor::default()),
        Some(b),
        home.path().join("b/work"),
        "peerB".into(),
        GateConfig {
            test: None,
            test_timeout: Duration::from_secs(30),
            max_tries: 3,
        },
    ));
    let implemented = ResultFact {
        story: STORY.into(),
        phase: Phase::Implement,
        round: 0,
        claim: "peerA-1000".into(),
        token: 1,
        holder: "peerA".into(),
        written_at_ms: 0,
        handoff: Handoff {
            commit: Some(change.to_string()),
            ..Default::default()
        },
        escalations: vec![],
    };
    let job = mesh_agent::core::Job {
        claim: "peerB-1001".into(),
        story: STORY.into(),
        display_id: "S-0001".into(),
        phase: Phase::Merge,
        round: 0,
        token: 2,
        attempt: 1,
        fact: StoryFact {
            number: 1,
            created_by: "peerA".into(),
            created_at_ms: 0,
            title: "a story".into(),
            body: Default::default(),
            priority: 100,
            depends_on: Default::default(),
            files: Default::default(),
            labels: Default::default(),
            source: Default::default(),
            imported: None,
        },
        handoffs: vec![implemented],
        files: vec![],
        knowledge: vec![],
        notes: vec![],
        failures: vec![],
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let handoff = rt
        .block_on(shell.run(job))
        .unwrap_or_else(|e| panic!("the merge of a landed story whose work is gone: {e:?}"));
    assert_eq!(
        handoff.verdict,
        Some(Verdict::Approve),
        "{}",
        handoff.summary
    );
    assert_eq!(
        handoff.commit,
        Some(landed_as.to_string()),
        "{}",
        handoff.summary
    );
    assert_eq!(h.main(), landed_as, "nothing landed twice");
}

#[test]
fn a_merge_taken_over_after_a_landing_whose_work_refs_are_gone_reports_it_landed() {
    over(Via::Ssh, takeover_of_a_landed_merge_whose_work_is_gone);
}
