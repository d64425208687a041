//! `mesh-agent status --watch` in a pseudo-terminal: the binary runs against an
//! in-process node (its control endpoint and `control.json`), its output is fed to a
//! terminal emulator (`vt100`), and the screen is checked — peers and stories shown, a
//! new story redrawn in place (same rows, not scrolled), the terminal restored (cursor
//! shown, normal screen) on SIGINT, and exit code 1 with a clear line when the node goes
//! away. Off a terminal it refuses with exit code 2.

use crate::common::*;
use libp2p::identity::Keypair;
use mesh_agent::core::model::NewStory;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROWS: u16 = 40;
const COLS: u16 = 140;

/// The binary's terminal: the emulator fed from the pty's master side, and news of each
/// chunk (false) and of the end of output (true).
struct Term {
    screen: Arc<Mutex<vt100::Parser>>,
    news: mpsc::Receiver<bool>,
    child: Child,
    ended: bool,
}

impl Term {
    /// Runs `mesh-agent --data-dir DIR status --watch ARGS` on a new pty.
    fn spawn(dir: &std::path::Path, args: &[&str]) -> Term {
        let (mut master, mut slave) = (0, 0);
        let ws = libc::winsize {
            ws_row: ROWS,
            ws_col: COLS,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two new descriptors into `master` and `slave`.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &ws,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors are ours alone from here on.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mesh-agent"));
        cmd.env_remove("MESH_DATA_DIR")
            .arg("--data-dir")
            .arg(dir)
            .args(["status", "--watch"])
            .args(args)
            .stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave));
        let child = cmd.spawn().expect("spawn");
        // Our copies of the slave side close here: the master reads EOF once the child
        // is gone.
        drop(cmd);
        let rows = std::num::NonZeroU16::new(ROWS).expect("rows");
        let cols = std::num::NonZeroU16::new(COLS).expect("cols");
        let screen = Arc::new(Mutex::new(vt100::Parser::new(rows, cols, 0)));
        let (tx, news) = mpsc::channel();
        let s = screen.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(master);
            let mut buf = [0u8; 8192];
            loop {
                match f.read(&mut buf) {
                    // EIO on Linux once the slave side has no process left.
                    Ok(0) | Err(_) => {
                        let _ = tx.send(true);
                        return;
                    }
                    Ok(n) => {
                        s.lock().expect("screen").process(&buf[..n]);
                        let _ = tx.send(false);
                    }
                }
            }
        });
        Term {
            screen,
            news,
            child,
            ended: false,
        }
    }

    /// Waits (on output, never on a timer) until the screen satisfies `cond`; a generous
    /// bound is the safety net.
    fn wait<T>(&mut self, what: &str, mut cond: impl FnMut(&vt100::Screen) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = cond(self.screen.lock().expect("screen").screen()) {
                return v;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.news.recv_timeout(left) {
                Ok(true) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.ended = true;
                    if let Some(v) = cond(self.screen.lock().expect("screen").screen()) {
                        return v;
                    }
                    panic!("output ended before {what}:\n{}", self.contents());
                }
                Ok(false) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("timed out waiting for {what}:\n{}", self.contents())
                }
            }
        }
    }

    /// Waits for the process to end and its output with it: its exit code.
    fn exit(&mut self) -> i32 {
        while !self.ended {
            match self.news.recv_timeout(Duration::from_secs(30)) {
                Ok(false) => {}
                Ok(true) | Err(mpsc::RecvTimeoutError::Disconnected) => self.ended = true,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("the watch did not exit"),
            }
        }
        self.child.wait().expect("wait").code().unwrap_or(-1)
    }

    fn contents(&self) -> String {
        self.screen.lock().expect("screen").screen().contents()
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The row whose text starts with `prefix`.
fn row_of(s: &vt100::Screen, prefix: &str) -> Option<usize> {
    s.rows(0, COLS).position(|r| r.starts_with(prefix))
}

fn story(title: &str) -> NewStory {
    NewStory {
        title: title.into(),
        ..Default::default()
    }
}

#[test]
fn status_watch_redraws_in_place_and_restores_the_terminal() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let keys: Vec<_> = (0..2).map(|_| Keypair::generate_ed25519()).collect();
    let dir = dirs[0].path();
    let (a, b, api) = rt.block_on(async {
        let a = start_with(dir, &keys[0], None, |_| {}, None).await;
        let b = start_with(dirs[1].path(), &keys[1], Some(&a), |_| {}, None).await;
        wait_all_alive(&[&a, &b]).await;
        let (_info, api) = mesh_agent::api::serve(
            "127.0.0.1:0".parse().expect("addr"),
            dir,
            a.peer_id.to_string(),
            a.api(),
        )
        .await
        .expect("control endpoint");
        a.add_story(story("watch me")).await.expect("story added");
        (a, b, api)
    });
    let peer_b = b.peer_id.to_string();

    let mut t = Term::spawn(dir, &["--interval-ms", "200"]);
    let (stories_row, header_row) = t.wait("the peer and the story on screen", |s| {
        let text = s.contents();
        (s.alternate_screen()
            && s.hide_cursor()
            && s.rows(0, COLS)
                .any(|r| r.contains(&peer_b) && r.contains(" alive "))
            && text.contains("S-0001"))
        .then(|| row_of(s, "stories: 1 ").zip(row_of(s, "mesh-agent status --watch")))
        .flatten()
    });
    assert_eq!(header_row, 0, "drawn from the top:\n{}", t.contents());

    rt.block_on(a.add_story(story("and me too")))
        .expect("story added");
    let (row, header) = t.wait("the second story redrawn", |s| {
        s.contents()
            .contains("S-0002")
            .then(|| row_of(s, "stories: 2 ").zip(row_of(s, "mesh-agent status --watch")))
            .flatten()
    });
    assert_eq!(row, stories_row, "redrawn in place:\n{}", t.contents());
    assert_eq!(header, 0, "not scrolled:\n{}", t.contents());

    // SAFETY: signalling our own child.
    unsafe { libc::kill(t.child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(t.exit(), 0, "{}", t.contents());
    {
        let p = t.screen.lock().expect("screen");
        assert!(!p.screen().hide_cursor(), "cursor shown again");
        assert!(!p.screen().alternate_screen(), "normal screen back");
    }

    // The node goes away under a watch: one clear line, exit code 1, terminal restored.
    let mut t = Term::spawn(dir, &[]);
    t.wait("the first frame", |s| {
        s.contents().contains("S-0002").then_some(())
    });
    rt.block_on(a.shutdown());
    assert_eq!(t.exit(), 1, "{}", t.contents());
    let p = t.screen.lock().expect("screen");
    assert!(
        p.screen().contents().contains("went away"),
        "{}",
        p.screen().contents()
    );
    assert!(!p.screen().hide_cursor());
    drop(p);
    api.abort();
    rt.block_on(b.shutdown());
}

#[test]
fn status_watch_off_a_terminal_points_to_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .env_remove("MESH_DATA_DIR")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["status", "--watch"])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("status --json"), "{err}");
}
