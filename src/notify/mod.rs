//! The notification shell: sends the triggers the core hands it (`Core::notify_due`) to
//! this node's sinks and reports how each send ended (`Core::notify_finished`). HTTP
//! through `ureq` on a blocking thread (with a timeout), commands through tokio with
//! the JSON on stdin; nothing here decides who sends what (the core does).
//!
//! Every request carries `X-Mesh-Notification-Id: <trigger id>` (the same on every node
//! and every retry, so a sink can drop a duplicate: a crash between a send and its
//! record, or two sides of a partition, send again) and `X-Mesh-Node: <peer id>`.
//! A 2xx (exit 0) is delivered; a 4xx other than 408 and 429 is refused for good
//! (recorded, never retried: the request will not get better); anything else is
//! retried with backoff. Sink URLs are secrets: they are never logged.

use crate::core::notify::{SendResult, Trigger};
use std::sync::Arc;
use std::time::Duration;

mod config;
pub mod payload;

pub use config::{NotifyConfig, SinkConfig, SinkKind};

/// The header naming the notification: the trigger's id.
pub const ID_HEADER: &str = "X-Mesh-Notification-Id";
/// The header naming the sending node.
pub const NODE_HEADER: &str = "X-Mesh-Node";
/// Most bytes of a sink's answer read (and of a command's output kept).
const MAX_ANSWER: u64 = 64 * 1024;

/// The system's CA certificates for https sinks: `$SSL_CERT_FILE`, else the first of
/// the usual bundles that holds any.
fn root_certs() -> Vec<ureq::tls::Certificate<'static>> {
    let paths = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/ca-bundle.pem",
                "/etc/ssl/cert.pem",
            ]
            .map(std::path::PathBuf::from),
        );
    for p in paths {
        let Ok(pem) = std::fs::read(&p) else { continue };
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if !certs.is_empty() {
            return certs;
        }
    }
    Vec::new()
}

/// This node's sinks.
pub struct Sinks {
    sinks: Vec<SinkConfig>,
    node: String,
    timeout: Duration,
    agent: ureq::Agent,
}

impl Sinks {
    pub fn new(cfg: &NotifyConfig, node: &str) -> Arc<Sinks> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let https = cfg.sink.iter().any(|s| s.url.starts_with("https://"));
        let roots = if https { root_certs() } else { Vec::new() };
        if https && roots.is_empty() {
            tracing::error!(
                "no CA certificates found for the https sinks (looked at $SSL_CERT_FILE and \
                 the usual system bundles): their sends will fail until one is installed"
            );
        }
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .tls_config(tls)
            .build()
            .into();
        Arc::new(Sinks {
            sinks: cfg.sink.clone(),
            node: node.to_string(),
            timeout,
            agent,
        })
    }

    /// Sends `t` to every sink that takes its kind, one after the other. Any failure
    /// makes the whole send fail (and retry: sinks that took it get it again, with the
    /// same id header); otherwise any refusal refuses it.
    pub async fn send(self: Arc<Self>, t: Trigger) -> SendResult {
        let mut refused = None;
        for (i, s) in self.sinks.iter().enumerate() {
            if !s.kinds().contains(&t.kind) {
                continue;
            }
            let r = match s.kind {
                SinkKind::Webhook | SinkKind::Slack => {
                    let body = if s.kind == SinkKind::Slack {
                        payload::slack(&t)
                    } else {
                        payload::webhook(&t, &self.node)
                    };
                    let me = self.clone();
                    let id = t.id.clone();
                    let url = s.url.clone();
                    match tokio::task::spawn_blocking(move || me.post(&url, &id, &body)).await {
                        Ok(r) => r,
                        Err(e) => SendResult::Failed(format!("the send task failed: {e}")),
                    }
                }
                SinkKind::Command => self.run(&s.argv, &t).await,
            };
            match r {
                SendResult::Delivered => {}
                SendResult::Refused(why) => refused = Some(format!("sink {i}: {why}")),
                SendResult::Failed(why) => {
                    tracing::warn!(id = %t.id, sink = i, %why, "notification not sent; will retry");
                    return SendResult::Failed(format!("sink {i}: {why}"));
                }
            }
        }
        match refused {
            Some(why) => {
                tracing::error!(id = %t.id, %why, "a sink refused the notification; not retried");
                SendResult::Refused(why)
            }
            None => {
                tracing::info!(id = %t.id, kind = t.kind.as_str(), "notification sent");
                SendResult::Delivered
            }
        }
    }

    /// One POST (blocking). The URL never appears in what it returns.
    fn post(&self, url: &str, id: &str, body: &serde_json::Value) -> SendResult {
        let bytes = match serde_json::to_vec(body) {
            Ok(b) => b,
            Err(e) => return SendResult::Refused(format!("cannot encode: {e}")),
        };
        let resp = self
            .agent
            .post(url)
            .header("Content-Type", "application/json")
            .header(ID_HEADER, id)
            .header(NODE_HEADER, &self.node)
            .send(&bytes[..]);
        let mut resp = match resp {
            Ok(r) => r,
            Err(e) => return SendResult::Failed(e.to_string().replace(url, "<sink url>")),
        };
        let status = resp.status().as_u16();
        let answer = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
            .unwrap_or_default();
        let answer: String = answer.chars().take(200).collect();
        match status {
            200..=299 => SendResult::Delivered,
            408 | 429 => SendResult::Failed(format!("HTTP {status}")),
            400..=499 => SendResult::Refused(format!("HTTP {status}: {answer}")),
            _ => SendResult::Failed(format!("HTTP {status}")),
        }
    }

    /// Runs a command sink with the trigger's JSON on stdin.
    async fn run(&self, argv: &[String], t: &Trigger) -> SendResult {
        use tokio::io::AsyncWriteExt;
        let Some((program, args)) = argv.split_first() else {
            return SendResult::Refused("empty argv".into());
        };
        let body = match serde_json::to_vec(&payload::webhook(t, &self.node)) {
            Ok(b) => b,
            Err(e) => return SendResult::Refused(format!("cannot encode: {e}")),
        };
        let child = tokio::process::Command::new(program)
            .args(args)
            .env("MESH_NOTIFICATION_ID", &t.id)
            .env("MESH_NOTIFICATION_KIND", t.kind.as_str())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => return SendResult::Failed(format!("cannot start {program}: {e}")),
        };
        let run = async {
            if let Some(mut stdin) = child.stdin.take() {
                // A program that does not read its input still gets to answer.
                let _ = stdin.write_all(&body).await;
            }
            child.wait_with_output().await
        };
        match tokio::time::timeout(self.timeout, run).await {
            Err(_) => SendResult::Failed(format!("{program} timed out")),
            Ok(Err(e)) => SendResult::Failed(format!("{program}: {e}")),
            Ok(Ok(out)) if out.status.success() => SendResult::Delivered,
            Ok(Ok(out)) => {
                let err = String::from_utf8_lossy(
                    &out.stderr[..out.stderr.len().min(MAX_ANSWER as usize)],
                );
                let err: String = err.trim().chars().take(200).collect();
                SendResult::Failed(format!("{program} exited with {}: {err}", out.status))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::notify::TriggerKind;
    use std::io::{Read, Write};

    fn trigger() -> Trigger {
        Trigger {
            id: "digest/1".into(),
            kind: TriggerKind::Digest,
            story: None,
            title: "mesh digest".into(),
            detail: "completed 0".into(),
            at_ms: 1,
            digest: None,
            story_key: String::new(),
        }
    }

    fn sinks(sink: SinkConfig) -> Arc<Sinks> {
        Sinks::new(
            &NotifyConfig {
                sink: vec![sink],
                timeout_ms: 5_000,
                ..Default::default()
            },
            "node-a",
        )
    }

    /// A one-shot server: answers the first connection with `answer` (raw bytes).
    fn serve_once(answer: &'static [u8]) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer);
            }
        });
        addr.to_string()
    }

    fn web(url: String) -> SinkConfig {
        SinkConfig {
            kind: SinkKind::Webhook,
            url,
            argv: vec![],
            triggers: vec![],
        }
    }

    #[tokio::test]
    async fn answers_sort_into_delivered_refused_and_failed_and_the_url_stays_secret() {
        let ok = serve_once(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n");
        let r = sinks(web(format!("http://{ok}/hook")))
            .send(trigger())
            .await;
        assert_eq!(r, SendResult::Delivered);
        let gone = serve_once(b"HTTP/1.1 404 Not Found\r\ncontent-length: 4\r\n\r\nnope");
        let r = sinks(web(format!("http://{gone}/hook")))
            .send(trigger())
            .await;
        assert!(
            matches!(&r, SendResult::Refused(w) if w.contains("404")),
            "{r:?}"
        );
        let busy = serve_once(b"HTTP/1.1 429 Too Many\r\ncontent-length: 0\r\n\r\n");
        let r = sinks(web(format!("http://{busy}/hook")))
            .send(trigger())
            .await;
        assert!(
            matches!(&r, SendResult::Failed(w) if w.contains("429")),
            "{r:?}"
        );
        // Not TLS on the other end: a failure to retry, never a panic, and no URL in it.
        let plain = serve_once(b"HTTP/1.1 200 OK\r\n\r\n");
        let url = format!("https://{plain}/services/T000/SECRET");
        let r = sinks(web(url)).send(trigger()).await;
        assert!(
            matches!(&r, SendResult::Failed(w) if !w.contains("SECRET")),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn a_command_sink_gets_the_json_on_stdin_and_its_exit_decides() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("got.json");
        let cmd = |script: String| SinkConfig {
            kind: SinkKind::Command,
            url: String::new(),
            argv: vec!["sh".into(), "-c".into(), script],
            triggers: vec!["digest".into()],
        };
        let r = sinks(cmd(format!("cat > {}", out.display())))
            .send(trigger())
            .await;
        assert_eq!(r, SendResult::Delivered);
        let got: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out).expect("written")).expect("json");
        assert_eq!(
            (got["id"].as_str(), got["node"].as_str()),
            (Some("digest/1"), Some("node-a"))
        );
        let r = sinks(cmd("echo no mail server >&2; exit 3".into()))
            .send(trigger())
            .await;
        assert!(
            matches!(&r, SendResult::Failed(w) if w.contains("no mail server")),
            "{r:?}"
        );
    }
}
