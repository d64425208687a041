//! A minimal Chrome DevTools Protocol client over `--remote-debugging-pipe`: chromium
//! reads NUL-terminated JSON commands on fd 3 and writes answers and events on fd 4. No
//! websocket and no extra crate (the maintained CDP crates pull in a websocket stack and
//! more than a minute of cold compile on CI's two cores); the few commands the test
//! needs fit here. Blocking: call it from `block_in_place`.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any one step may take before the test fails (a safety net, not a wait).
const STEP: Duration = Duration::from_secs(60);

pub struct Browser {
    child: Child,
    to: std::fs::File,
    from: mpsc::Receiver<Value>,
    next: u64,
    session: String,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints; on success both are open and ours.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// JavaScript that resolves true once `cond` holds (checked on every DOM change), or
/// false after 30 s.
pub fn wait_js(cond: &str) -> String {
    format!(
        "new Promise(resolve => {{
            const ok = () => {{ try {{ return {cond}; }} catch (e) {{ return false; }} }};
            if (ok()) return resolve(true);
            const mo = new MutationObserver(() => {{ if (ok()) {{ mo.disconnect(); resolve(true); }} }});
            mo.observe(document.documentElement, {{ subtree: true, childList: true, characterData: true, attributes: true }});
            setTimeout(() => {{ mo.disconnect(); resolve(ok()); }}, 30000);
        }})"
    )
}

impl Browser {
    /// Starts headless chromium with a fresh profile in `profile` and opens one tab.
    pub fn launch(chrome: &Path, profile: &Path) -> Result<Browser, String> {
        let (to_read, to_write) = pipe().map_err(|e| e.to_string())?;
        let (from_read, from_write) = pipe().map_err(|e| e.to_string())?;
        let (r3, w4) = (
            std::os::fd::AsRawFd::as_raw_fd(&to_read),
            std::os::fd::AsRawFd::as_raw_fd(&from_write),
        );
        let mut cmd = Command::new(chrome);
        cmd.args([
            "--headless=new",
            "--remote-debugging-pipe",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Chromium's sandbox refuses to run as root.
            cmd.arg("--no-sandbox");
        }
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. The
        // pipe ends move above 10 first so that one already at 3 or 4 is not clobbered.
        unsafe {
            cmd.pre_exec(move || {
                let a = libc::fcntl(r3, libc::F_DUPFD_CLOEXEC, 10);
                let b = libc::fcntl(w4, libc::F_DUPFD_CLOEXEC, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.arg("about:blank");
        let child = cmd
            .spawn()
            .map_err(|e| format!("{}: {e}", chrome.display()))?;
        drop(to_read);
        drop(from_write);
        let (tx, rx) = mpsc::channel();
        let reader = std::fs::File::from(from_read);
        std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            loop {
                let mut buf = Vec::new();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        buf.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to: std::fs::File::from(to_write),
            from: rx,
            next: 0,
            session: String::new(),
        };
        let target = b.call_on(None, "Target.createTarget", json!({ "url": "about:blank" }))?;
        let id = target["targetId"]
            .as_str()
            .ok_or("no target id")?
            .to_string();
        let att = b.call_on(
            None,
            "Target.attachToTarget",
            json!({ "targetId": id, "flatten": true }),
        )?;
        b.session = att["sessionId"]
            .as_str()
            .ok_or("no session id")?
            .to_string();
        b.call("Page.enable", json!({}))?;
        Ok(b)
    }

    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<u64, String> {
        self.next += 1;
        let mut msg = json!({ "id": self.next, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
        bytes.push(0);
        self.to.write_all(&bytes).map_err(|e| e.to_string())?;
        Ok(self.next)
    }

    /// Reads messages until `pick` accepts one; events in between are dropped.
    fn until<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Value) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self
                .from
                .recv_timeout(left)
                .map_err(|e| format!("{what}: no answer from chromium ({e})"))?;
            if let Some(t) = pick(&msg) {
                return Ok(t);
            }
        }
    }

    fn call_on(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.send(session, method, params)?;
        let msg = self.until(method, |m| {
            (m["id"].as_u64() == Some(id)).then(|| m.clone())
        })?;
        if let Some(e) = msg.get("error") {
            return Err(format!("{method}: {e}"));
        }
        Ok(msg["result"].clone())
    }

    fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let s = self.session.clone();
        self.call_on(Some(&s), method, params)
    }

    /// Waits for the tab's next `load` event.
    fn loaded(&mut self) -> Result<(), String> {
        let s = self.session.clone();
        self.until("page load", |m| {
            (m["method"] == "Page.loadEventFired" && m["sessionId"] == s.as_str()).then_some(())
        })
    }

    /// Opens `url` and waits until it has loaded.
    pub fn goto(&mut self, url: &str) -> Result<(), String> {
        let r = self.call("Page.navigate", json!({ "url": url }))?;
        if let Some(e) = r.get("errorText") {
            return Err(format!("{url}: {e}"));
        }
        self.loaded()
    }

    /// Runs `js` that navigates (a form submit, a click) and waits for the new page.
    pub fn submit(&mut self, js: &str) -> Result<(), String> {
        self.eval(js)?;
        self.loaded()
    }

    fn evaluate(&mut self, js: &str, await_promise: bool) -> Result<Value, String> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true, "awaitPromise": await_promise }),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(format!("{js}: {e}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// The value of a JavaScript expression.
    pub fn eval(&mut self, js: &str) -> Result<Value, String> {
        self.evaluate(js, false)
    }

    /// Awaits a promise of a boolean (see [`wait_js`]).
    pub fn eval_await(&mut self, js: String) -> Result<bool, String> {
        Ok(self.evaluate(&js, true)? == Value::Bool(true))
    }

    /// A PNG of the viewport at `width`×`height` (as a phone when `mobile`).
    pub fn screenshot(
        &mut self,
        width: u32,
        height: u32,
        mobile: bool,
        to: &Path,
    ) -> Result<(), String> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )?;
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }))?;
        let data = r["data"].as_str().ok_or("no screenshot data")?;
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| e.to_string())?;
        std::fs::write(to, png).map_err(|e| format!("{}: {e}", to.display()))
    }

    pub fn close(mut self) {
        let _ = self.call_on(None, "Browser.close", json!({}));
        let _ = self.child.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
