//! The web dashboard in a real browser (issue 18): a four-node in-process mesh mid-way
//! through the demo backlog (every node holding a job, one story waiting at its approval
//! gate), its dashboard served by one node and driven in headless Chromium over the
//! DevTools protocol. The page's figures match the node's status and each node's job has
//! its bar; a story added on another node shows up without a reload; an action without
//! a session (or without its CSRF token) is refused and changes nothing; after login,
//! approving the gated story and pausing the mesh from the page reach another node. Off
//! loopback, only TLS allows a login.
//!
//! Chromium is Debian's `chromium` (.ci/run installs it). Missing, the test fails as
//! root (CI) and is skipped with one line otherwise. `MESH_DASHBOARD_SCREENSHOTS=1`
//! (scripts/screenshots) also saves docs/dashboard-desktop.png and -phone.png.

#[path = "dashboard/cdp.rs"]
mod cdp;
#[path = "common/mod.rs"]
mod common;

use common::*;
use libp2p::identity::Keypair;
use mesh_agent::config::Config;
use mesh_agent::core::model::{Handoff, NewStory, Phase, StoryStatus};
use mesh_agent::core::state::{Op, Target};
use mesh_agent::core::Job;
use mesh_agent::dashboard::{self, Actions, DashboardConfig};
use mesh_agent::exec::{ExecError, Executor, SimExecutor, Workspace};
use mesh_agent::node::{NodeHandle, StatusReport};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The story that runs to its approval gate and waits there for an operator.
const GATED: &str = "Rename the binary (needs an operator's approval)";

/// Runs the gated story's phases with the sim executor; holds every other job forever,
/// reporting its start (with the node's index).
struct GatedOrHeld {
    node: usize,
    started: tokio::sync::mpsc::UnboundedSender<(usize, Phase)>,
}

impl Executor for GatedOrHeld {
    fn run(
        &self,
        job: Job,
        ws: Workspace,
    ) -> futures::future::BoxFuture<'static, Result<Handoff, ExecError>> {
        if &*job.fact.title == GATED {
            let sim = SimExecutor {
                phase_ms: 50,
                failure_rate: 0.0,
                review_reject_rate: 0.0,
                seed: 1,
            };
            return sim.run(job, ws);
        }
        let _ = self.started.send((self.node, job.phase));
        Box::pin(async {
            std::future::pending::<()>().await;
            Err(ExecError::failed("unreachable"))
        })
    }
}

/// Where Debian's chromium is, or `None` (skip) when it is not installed and we are not
/// root; as root (CI, which installs it) a missing browser is a failure.
fn chromium() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            !root,
            "chromium is missing: .ci/run installs it (apt-get install chromium)"
        );
        eprintln!("skipped: no chromium (apt-get install chromium)");
    }
    found
}

/// Runs a blocking browser step without stalling the runtime's other tasks.
fn bl<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// One HTTP/1.1 request without a browser: the status code and the body.
async fn http(addr: SocketAddr, head: &str, body: &str) -> (u16, String, String) {
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{head}\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (code, headers.to_string(), body.to_string())
}

/// The header figures as `mesh-agent status` would count them.
fn figures_of(s: &StatusReport) -> Value {
    let n = |k: StoryStatus| s.story_counts.get(k.as_str()).copied().unwrap_or(0);
    let alive = s
        .peers
        .iter()
        .filter(|p| p.state == mesh_agent::core::membership::PeerState::Alive)
        .count();
    serde_json::json!({
        "alive": (alive + 1).to_string(),
        "total": (s.peers.len() + 1).to_string(),
        "queue": (n(StoryStatus::Backlog) + n(StoryStatus::Ready)).to_string(),
        "in_progress": n(StoryStatus::InProgress).to_string(),
    })
}

const READ_FIGURES: &str = r#"JSON.stringify(Object.fromEntries(
    ["alive", "total", "queue", "in_progress"].map(k => {
        const e = document.querySelector('[data-figure="' + k + '"]');
        return [k, e ? e.textContent.trim() : null];
    })))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_a_live_mesh_and_acts_only_after_login() {
    let Some(chrome) = chromium() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let key_path = tmp.path().join("operator.key");
    let op = mesh_agent::identity::create_operator_key(&key_path, false).expect("operator key");
    let operator = op.author().to_string();
    let keys: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
    let ids: Vec<String> = keys
        .iter()
        .map(|k| k.public().to_peer_id().to_string())
        .collect();
    let cfg = |c: &mut Config| {
        fast_leases(c);
        c.capacity = 1;
        c.operators = vec![operator.clone()];
    };
    // Jobs never finish on their own (the mesh stays mid-run, each node on one phase),
    // but those of the story that needs an operator's approval: it runs to its gate.
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let holding = |i: usize| -> Option<Arc<dyn mesh_agent::exec::Executor>> {
        Some(Arc::new(GatedOrHeld {
            node: i,
            started: started_tx.clone(),
        }))
    };
    let dir = |i: usize| tmp.path().join(format!("n{i}"));
    let first = start_with(&dir(0), &keys[0], None, cfg, holding(0)).await;
    admit_all(&first, &op, &ids).await;
    let mut nodes: Vec<NodeHandle> = vec![first];
    for (i, key) in keys.iter().enumerate().skip(1) {
        nodes.push(start_with(&dir(i), key, nodes.first(), cfg, holding(i)).await);
    }
    let refs: Vec<&NodeHandle> = nodes.iter().collect();
    wait_all_alive(&refs).await;
    for n in &nodes {
        wait_view(n, "every admission", 30, |v| {
            v.roster.admitted.len() == ids.len()
        })
        .await;
    }
    // Loaded while paused, so that the gated story (first by priority) is claimed first.
    let pause = Op::Pause {
        reason: "loading".into(),
    };
    operator_command(&nodes[0], &op, Target::All, pause)
        .await
        .expect("paused");
    for n in &nodes {
        wait_view(n, "the loading pause", 30, |v| v.steering.all.is_some()).await;
    }
    for s in mesh_agent::demo::backlog().into_iter().take(12) {
        nodes[0].add_story(s).await.expect("story added");
    }
    let gated = nodes[0]
        .add_story(NewStory {
            title: GATED.into(),
            priority: Some(1),
            labels: vec!["approval".into()],
            ..Default::default()
        })
        .await
        .expect("story added");
    wait_converged(&refs).await;
    operator_command(&nodes[0], &op, Target::All, Op::Resume)
        .await
        .expect("resumed");
    // Mid-run: the gated story waits for a human, every node holds one running job.
    let mut running = std::collections::BTreeSet::new();
    within("a job held on every node", 60, async {
        while running.len() < nodes.len() {
            let (node, _) = started.recv().await.expect("executor alive");
            running.insert(node);
        }
    })
    .await;
    wait_view(&nodes[0], "the gated story's approval item", 30, |v| {
        v.stories
            .get(gated.key.as_str())
            .is_some_and(|s| !s.more.attention.is_empty())
    })
    .await;
    wait_converged(&refs).await;

    // The control endpoint (its token opens sessions) and the dashboard of node 0.
    let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let (info, _api) =
        mesh_agent::api::serve(local, &dir(0), nodes[0].peer_id.to_string(), nodes[0].api())
            .await
            .expect("control endpoint");
    let dash = dashboard::serve(
        local,
        &dir(0),
        nodes[0].api(),
        nodes[0].observe(),
        &DashboardConfig {
            addr: "127.0.0.1:0".into(),
            operator_key: Some(key_path.clone()),
            ..Default::default()
        },
    )
    .await
    .expect("dashboard");
    assert_eq!(dash.actions, Actions::Available);
    let base = dash.url();

    let browser_dir = tmp.path().join("chromium");
    let mut b = bl(|| cdp::Browser::launch(&chrome, &browser_dir)).expect("chromium starts");

    // The page renders, and its figures are the node's status (re-read until both come
    // from the same moment: claims may still settle between the two reads).
    bl(|| b.goto(&base)).expect("overview loads");
    let title = bl(|| b.eval("document.title")).expect("title");
    assert!(title.as_str().unwrap_or("").contains("Overview"), "{title}");
    let mut last = (Value::Null, Value::Null);
    for _ in 0..10 {
        let page: Value = serde_json::from_str(
            bl(|| b.eval(READ_FIGURES))
                .expect("figures")
                .as_str()
                .unwrap_or("{}"),
        )
        .expect("json");
        let want = figures_of(&nodes[0].status().await.expect("status"));
        if page == want {
            last = (page, want);
            break;
        }
        last = (page, want);
        bl(|| b.goto(&base)).expect("reload");
    }
    assert_eq!(last.0, last.1, "the page's figures against status");

    // Work per node: a progress bar for each node's running phase (the events of the
    // others' starts may still be on their way: wait for them, not for a time).
    let bars = cdp::wait_js("document.querySelectorAll('#live progress').length === 4");
    assert!(
        bl(|| b.eval_await(bars)).expect("bars"),
        "one bar per running job"
    );

    // A story's page: its events and who did what.
    bl(|| b.goto(&format!("{base}story/S-0001"))).expect("story page");
    let h1 = bl(|| b.eval("document.querySelector('h1').textContent")).expect("h1");
    assert!(h1.as_str().unwrap_or("").starts_with("S-0001"), "{h1}");
    // Its description, which the node reads from its document (the view keeps none).
    let text = bl(|| b.eval("document.querySelector('main').textContent")).expect("page");
    assert!(
        text.as_str()
            .unwrap_or("")
            .contains("Lex integers. Keep the change small"),
        "{text}"
    );
    let rows = bl(|| {
        b.eval(
            "[...document.querySelectorAll('table tbody tr')].map(r => r.textContent).join('\\n')",
        )
    })
    .expect("rows");
    let rows = rows.as_str().unwrap_or("");
    assert!(
        rows.contains("story_added") || rows.contains("story added"),
        "{rows}"
    );
    bl(|| b.goto(&base)).expect("back to the overview");

    // Live: a story added on another node appears without a reload.
    let on = bl(|| {
        b.eval_await(cdp::wait_js(
            "document.body.getAttribute('data-live') === 'on'",
        ))
    });
    assert!(on.expect("live"), "live updates connected");
    bl(|| b.eval("window.__no_reload = 42")).expect("mark the page");
    let queue: u64 = last.0["queue"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("queue");
    nodes[2]
        .add_story(NewStory {
            title: "Added while the dashboard watches <script>alert(1)</script>".into(),
            ..Default::default()
        })
        .await
        .expect("story added");
    let want = format!(
        "document.querySelector('[data-figure=\"queue\"]').textContent.trim() === '{}'",
        queue + 1
    );
    assert!(
        bl(|| b.eval_await(cdp::wait_js(&want))).expect("evaluate"),
        "the queue figure went to {} without a reload",
        queue + 1
    );
    assert_eq!(
        bl(|| b.eval("window.__no_reload")).expect("mark"),
        42,
        "no reload"
    );

    // Peer-written text is escaped: the title shows as text, no script element from it.
    bl(|| b.goto(&format!("{base}backlog?q=watches"))).expect("backlog");
    let shown = bl(|| b.eval("document.querySelector('tbody tr td').textContent")).expect("row");
    assert!(
        shown
            .as_str()
            .unwrap_or("")
            .contains("<script>alert(1)</script>"),
        "{shown}"
    );
    assert_eq!(
        bl(|| b.eval("document.scripts.length")).expect("scripts"),
        1
    );

    // Without a session, or with one but without its CSRF token: refused, nothing done.
    let addr = dash.addr;
    let pause = "csrf=&verb=pause&scope=all&text=nope&back=%2F";
    let form = "content-type: application/x-www-form-urlencoded";
    let (code, _, _) = http(addr, &format!("POST /action HTTP/1.1\r\n{form}"), pause).await;
    assert_eq!(code, 403, "no session");
    let (code, _, _) = http(
        addr,
        &format!("POST /action HTTP/1.1\r\n{form}\r\ncookie: mesh_dashboard=forged"),
        pause,
    )
    .await;
    assert_eq!(code, 403, "a forged session");
    let (code, _, _) = http(
        addr,
        &format!("POST /login HTTP/1.1\r\n{form}"),
        "token=wrong",
    )
    .await;
    assert_eq!(code, 401, "a wrong token opens no session");
    let login = format!("token={}", info.token);
    let (code, headers, _) = http(addr, &format!("POST /login HTTP/1.1\r\n{form}"), &login).await;
    assert_eq!(code, 303, "{headers}");
    let cookie = headers
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_string();
    let (code, _, _) = http(
        addr,
        &format!("POST /action HTTP/1.1\r\n{form}\r\ncookie: {cookie}"),
        pause,
    )
    .await;
    assert_eq!(code, 403, "a session without its CSRF token");
    for n in [&nodes[0], &nodes[3]] {
        let v = n.view().await.expect("view");
        assert!(v.steering.all.is_none(), "nothing was paused");
    }

    // Log in from the page, then pause the mesh from it: another node sees the pause.
    bl(|| b.goto(&format!("{base}login"))).expect("login page");
    bl(|| {
        b.eval(&format!(
            "document.getElementById('token').value = '{}'",
            info.token
        ))
    })
    .expect("type the token");
    bl(|| b.submit("document.querySelector('form[action=\"/login\"]').submit()"))
        .expect("logged in");
    let pause_button =
        "document.querySelector('button[data-verb=\"pause\"][aria-label=\"Pause the mesh (whole mesh)\"]')";
    assert_eq!(
        bl(|| b.eval(&format!("!!{pause_button}"))).expect("button"),
        true,
        "after login the overview offers the mesh's pause"
    );
    if std::env::var_os("MESH_DASHBOARD_SCREENSHOTS").is_some() {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs");
        bl(|| b.screenshot(1280, 800, false, &docs.join("dashboard-desktop.png")))
            .expect("desktop screenshot");
        bl(|| b.screenshot(390, 844, true, &docs.join("dashboard-phone.png")))
            .expect("phone screenshot");
        bl(|| b.screenshot(1280, 800, false, &tmp.path().join("back.png")))
            .expect("back to desktop");
    }
    // Approve the gated story from its attention item: another node sees it cleared.
    let approve = format!(
        "document.querySelector('button[data-verb=\"approve\"][aria-label=\"Approve {}\"]')",
        gated.id
    );
    assert_eq!(
        bl(|| b.eval(&format!("!!{approve}"))).expect("approve"),
        true
    );
    bl(|| b.submit(&format!("{approve}.click()"))).expect("approved");
    wait_view(&nodes[3], "the approval on another node", 30, |v| {
        v.stories
            .get(gated.key.as_str())
            .is_some_and(|s| s.more.attention.is_empty())
    })
    .await;
    bl(|| {
        b.eval("document.querySelector('form.act input[name=text]').value = 'from the dashboard'")
    })
    .expect("reason");
    bl(|| b.submit(&format!("{pause_button}.click()"))).expect("paused");
    let flash =
        bl(|| b.eval("(document.querySelector('.flash') || {}).textContent || ''")).expect("flash");
    assert!(flash.as_str().unwrap_or("").contains("pause"), "{flash}");
    let v = wait_view(&nodes[3], "the pause on another node", 30, |v| {
        v.steering.all.is_some()
    })
    .await;
    assert_eq!(
        v.steering.all.as_ref().map(|s| s.reason.as_str()),
        Some("from the dashboard")
    );
    let st = nodes[3].status().await.expect("status");
    assert!(st.paused.contains_key("all"), "{:?}", st.paused);

    b.close();
    dash.task.abort();
    for n in nodes {
        n.shutdown().await;
    }
}

/// A self-signed certificate for `localhost` made by the openssl CLI: (cert, key) paths.
fn self_signed(dir: &std::path::Path) -> Option<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        // SAFETY: geteuid has no preconditions.
        assert!(unsafe { libc::geteuid() } != 0, "openssl is missing");
        eprintln!("skipped the TLS half: no openssl");
        return None;
    }
    Some((cert, key))
}

/// One request over TLS to `addr`, trusting only `cert` for `localhost`.
async fn https(addr: SocketAddr, cert: &std::path::Path, head: &str, body: &str) -> String {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self, RootCertStore};
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).expect("pem") {
        roots.add(c.expect("cert")).expect("root");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the dashboard's certificate");
    let req = format!(
        "{head}\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    // A server may close without close_notify after `connection: close`: keep what came.
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_dashboard_acts_only_over_tls() {
    let tmp = tempfile::tempdir().expect("tmp");
    let key_path = tmp.path().join("operator.key");
    mesh_agent::identity::create_operator_key(&key_path, false).expect("operator key");
    let dir = tmp.path().join("n0");
    let node = start_with(&dir, &Keypair::generate_ed25519(), None, |_| {}, None).await;
    let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let (info, _api) = mesh_agent::api::serve(local, &dir, node.peer_id.to_string(), node.api())
        .await
        .expect("control endpoint");
    // All interfaces (not loopback), no TLS: readable, but no login and no action.
    let any: SocketAddr = "0.0.0.0:0".parse().expect("addr");
    let cfg = DashboardConfig {
        addr: any.to_string(),
        operator_key: Some(key_path.clone()),
        ..Default::default()
    };
    let plain = dashboard::serve(any, &dir, node.api(), node.observe(), &cfg)
        .await
        .expect("dashboard");
    let Actions::Unavailable(why) = &plain.actions else {
        panic!("actions offered without TLS off loopback");
    };
    assert!(why.contains("not a loopback address, without TLS"), "{why}");
    let at = SocketAddr::from(([127, 0, 0, 1], plain.addr.port()));
    let (code, _, page) = http(at, "GET / HTTP/1.1", "").await;
    assert_eq!(code, 200);
    assert!(page.contains("Actions unavailable"), "the page says so");
    let form = "content-type: application/x-www-form-urlencoded";
    let login = format!("token={}", info.token);
    let (code, headers, _) = http(at, &format!("POST /login HTTP/1.1\r\n{form}"), &login).await;
    assert_eq!(code, 403, "no login in clear: {headers}");
    assert!(!headers.contains("set-cookie"), "{headers}");
    plain.task.abort();

    // With a certificate: HTTPS, and a login gives a Secure session cookie.
    let Some((cert, key)) = self_signed(tmp.path()) else {
        return;
    };
    let cfg = DashboardConfig {
        tls_cert: Some(cert.clone()),
        tls_key: Some(key),
        ..cfg
    };
    let tls = dashboard::serve(any, &dir, node.api(), node.observe(), &cfg)
        .await
        .expect("dashboard over TLS");
    assert_eq!(tls.actions, Actions::Available);
    assert!(tls.url().starts_with("https://"), "{}", tls.url());
    let at = SocketAddr::from(([127, 0, 0, 1], tls.addr.port()));
    let page = https(at, &cert, "GET / HTTP/1.1", "").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(!page.contains("Actions unavailable"), "{page}");
    let answer = https(
        at,
        &cert,
        &format!("POST /login HTTP/1.1\r\n{form}"),
        &login,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    let cookie = answer
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    tls.task.abort();
    node.shutdown().await;
}
