//! `GET /metrics`: the node's state in the OpenMetrics text format, for Prometheus.
//!
//! Built per scrape from what the node loop answers (`ApiRequest::Status` and
//! `ApiRequest::View`): nothing is kept between scrapes, so the numbers are the node's
//! own (counters since it started, gauges as of now, mesh-wide counts as its view folds
//! them). The encoding is `prometheus-client`'s; this module only chooses names, labels
//! and values. The router carries no listener of its own: whoever serves HTTP (the
//! dashboard's `--dashboard ADDR`, a test) merges it.

use crate::core::model::{Phase, StoryStatus, Verdict};
use crate::core::state::View;
use crate::core::Histogram;
use crate::node::{ApiRequest, StatusReport};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use tokio::sync::{mpsc, oneshot};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric name starts with this (and `_`).
pub const PREFIX: &str = "mesh_agent";

/// `GET /metrics`, answered from the node behind `api`.
pub fn router(api: mpsc::Sender<ApiRequest>) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(api)
}

async fn scrape(State(api): State<mpsc::Sender<ApiRequest>>) -> Response {
    let Some(snap) = Snapshot::ask(&api).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the node is stopping\n").into_response();
    };
    match render(snap) {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn ask<T>(
    api: &mpsc::Sender<ApiRequest>,
    make: impl FnOnce(oneshot::Sender<T>) -> ApiRequest,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    api.send(make(tx)).await.ok()?;
    rx.await.ok()
}

/// What one scrape reports: the status report and the counts folded from the view.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub status: StatusReport,
    /// Stories that landed (a counted merge).
    pub landings: u64,
    /// Released claims by reason.
    pub releases: BTreeMap<&'static str, u64>,
    /// Counted results that rejected, by phase (review, plan review, merge).
    pub rejections: BTreeMap<&'static str, u64>,
}

impl Snapshot {
    /// Asks the node; `None` once it is stopping.
    pub async fn ask(api: &mpsc::Sender<ApiRequest>) -> Option<Snapshot> {
        let status = ask(api, ApiRequest::Status).await?;
        let view = ask(api, ApiRequest::View).await?;
        Some(Snapshot::new(status, &view))
    }

    pub fn new(status: StatusReport, view: &View) -> Snapshot {
        // Landings the mesh made (a story imported as done landed elsewhere: no claim).
        let landings = view
            .stories
            .values()
            .filter(|s| s.more.merged.as_ref().is_some_and(|m| !m.claim.is_empty()))
            .count() as u64;
        let mut releases = BTreeMap::new();
        for r in view.releases.values() {
            *releases.entry(r.why.as_str()).or_insert(0) += 1;
        }
        let mut rejections = BTreeMap::new();
        for key in view.counted.values() {
            if let Some(r) = view.results.get(key) {
                if r.handoff.verdict == Some(Verdict::Reject) {
                    *rejections.entry(r.phase.as_str()).or_insert(0) += 1;
                }
            }
        }
        Snapshot {
            status,
            landings,
            releases,
            rejections,
        }
    }
}

/// Releases that mean a step must run again: the work failed, or its holder went away
/// or could not reach the origin (not `done`, not `unsettled`: that never started).
const RETRY_REASONS: [&str; 5] = ["failed", "lost", "abandoned", "expired", "unavailable"];

/// Encodes a snapshot in the OpenMetrics text format.
pub fn render(snap: Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(snap));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Writes one metric family at a time.
struct Out<'a, 'b>(&'b mut DescriptorEncoder<'a>);

impl Out<'_, '_> {
    fn gauge(&mut self, name: &str, help: &str, v: i64) -> std::fmt::Result {
        let e = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(v).encode(e)
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) -> std::fmt::Result {
        let e = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(v).encode(e)
    }

    fn gauges<'v>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'v str, i64)>,
    ) -> std::fmt::Result {
        let mut e = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (l, v) in values {
            ConstGauge::new(v).encode(e.encode_family(&[(label, l)])?)?;
        }
        Ok(())
    }

    fn counters<'v>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'v str, u64)>,
    ) -> std::fmt::Result {
        let mut e = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (l, v) in values {
            ConstCounter::new(v).encode(e.encode_family(&[(label, l)])?)?;
        }
        Ok(())
    }

    fn histograms<'v>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'v str, &'v Histogram)>,
    ) -> std::fmt::Result {
        let mut e = self
            .0
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (l, h) in values {
            let buckets: Vec<(f64, u64)> = h
                .bounds_ms
                .iter()
                .map(|&b| b as f64 / 1000.0)
                .chain(std::iter::once(f64::INFINITY))
                .zip(h.counts.iter().copied())
                .collect();
            e.encode_family(&[(label, l)])?
                .encode_histogram::<NoLabelSet>(
                    h.sum_ms as f64 / 1000.0,
                    h.count,
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}

fn gauge_of(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let r = &self.status;
        let c = &r.counters;
        let mut o = Out(&mut encoder);
        let in_state = |s: &str| r.peers.iter().filter(|p| p.state.as_str() == s).count();
        o.gauges(
            "peers",
            "Peers this node knows, by membership state.",
            "state",
            ["alive", "suspect", "dead"].map(|s| (s, gauge_of(in_state(s)))),
        )?;
        o.gauge(
            "peers_connected",
            "Peers with an open connection.",
            gauge_of(r.connected),
        )?;
        o.gauges(
            "stories",
            "Stories in the backlog, by state.",
            "state",
            StoryStatus::ALL.map(|s| {
                let n = r.story_counts.get(s.as_str()).copied().unwrap_or(0);
                (s.as_str(), gauge_of(n))
            }),
        )?;
        o.gauge(
            "claims_active",
            "Active claims in the mesh, as this node sees them.",
            gauge_of(r.claims.len()),
        )?;
        o.gauge(
            "claims_held",
            "Claims this node holds (settling or running).",
            gauge_of(r.held.len()),
        )?;
        o.gauge(
            "attention_items",
            "Items waiting for a human.",
            gauge_of(r.attention),
        )?;
        o.gauge(
            "epoch",
            "This node's epoch (0: the mesh's first document).",
            gauge_of(r.epoch),
        )?;
        o.gauge(
            "epoch_moving",
            "1 while the mesh moves to the next epoch as this node sees it (no new claims).",
            i64::from(r.moving),
        )?;
        o.counter(
            "sync_sessions_started",
            "Sync sessions this node started.",
            c.sync_sessions_started,
        )?;
        o.counter(
            "sync_sessions_completed",
            "Sync sessions this node completed.",
            c.sync_sessions_completed,
        )?;
        o.counter(
            "sync_sessions_failed",
            "Sync exchanges that failed.",
            c.sync_failures,
        )?;
        o.counters(
            "network_bytes",
            "Bytes on this node's connections (every protocol, encrypted), by direction.",
            "direction",
            [("in", c.bytes_in), ("out", c.bytes_out)],
        )?;
        o.counters(
            "sync_bytes",
            "Bytes of sync frames (before encryption), by direction.",
            "direction",
            [("in", c.sync_bytes_in), ("out", c.sync_bytes_out)],
        )?;
        o.counters(
            "heartbeats",
            "Heartbeats sent and received.",
            "direction",
            [
                ("sent", c.heartbeats_sent),
                ("received", c.heartbeats_received),
            ],
        )?;
        o.counters(
            "frames_dropped",
            "Messages from peers dropped, by reason.",
            "reason",
            [
                ("malformed", c.malformed_dropped),
                ("oversized", c.oversized_frames),
                ("ingress_rate", c.ingress_dropped),
                ("size_cap", c.full_dropped),
                ("other_epoch", c.other_epoch_dropped),
            ],
        )?;
        o.counter(
            "handshake_failures",
            "Connections refused at the handshake (wrong mesh key, not a member).",
            c.handshake_failures,
        )?;
        o.counter(
            "closed_on_open",
            "Connections a peer closed as they opened: it refuses this node (not on a closed mesh's roster).",
            c.closed_on_open,
        )?;
        o.gauge(
            "document_bytes",
            "Bytes of the document in the store.",
            gauge_of(r.doc_bytes),
        )?;
        o.gauge(
            "document_cap_bytes",
            "The document's size cap (max_document_bytes).",
            gauge_of(r.doc_cap),
        )?;
        o.gauge(
            "store_bytes",
            "Bytes of the store on disk.",
            gauge_of(r.store_bytes),
        )?;
        let mut refused: BTreeMap<&str, u64> = BTreeMap::new();
        for x in &r.rejected {
            *refused.entry(x.kind.as_str()).or_insert(0) += x.count;
        }
        o.counters(
            "refused_facts",
            "Facts in the document this node refused (unsigned, mis-signed, invalid, not the author's), by kind.",
            "kind",
            refused,
        )?;
        o.counter(
            "landings",
            "Stories landed on main (counted merges).",
            self.landings,
        )?;
        o.counters(
            "claim_releases",
            "Released claims in the mesh, by reason.",
            "reason",
            self.releases.iter().map(|(k, v)| (*k, *v)),
        )?;
        o.counter(
            "retries",
            "Steps that must run again: claims released as failed, lost, abandoned, expired or unavailable.",
            RETRY_REASONS
                .iter()
                .filter_map(|k| self.releases.get(k))
                .sum(),
        )?;
        o.counters(
            "rejections",
            "Counted results that rejected (review, plan review, merge), by phase.",
            "phase",
            self.rejections.iter().map(|(k, v)| (*k, *v)),
        )?;
        o.gauge(
            "spend_today_micro_usd",
            "What every node charged to today's budget, in millionths of a dollar.",
            gauge_of(r.spend.mesh_charged_micro_usd),
        )?;
        if let Some(a) = &r.spend.allowance {
            o.gauge(
                "allowance_left_micro_usd",
                "This node's allowance left today (negative: overspent).",
                a.balance,
            )?;
        }
        o.counter(
            "rate_limits",
            "Rate limits the provider answered this node's jobs with.",
            r.spend.rate_limits,
        )?;
        o.gauge(
            "notifications_in_flight",
            "Notification sends in flight.",
            gauge_of(r.notify.in_flight),
        )?;
        o.gauge(
            "notifications_pending",
            "Notifications this node owns and has not sent.",
            gauge_of(r.notify.pending),
        )?;
        let l = &c.latency;
        o.histograms(
            "settle_latency_seconds",
            "This node's claims: written to settled (work started) or lost at settle.",
            "outcome",
            l.settle.iter().map(|(k, h)| (k.as_str(), h)),
        )?;
        o.histograms(
            "phase_duration_seconds",
            "This node's runs: settled to the job's outcome, by phase.",
            "phase",
            Phase::ALL
                .iter()
                .filter_map(|p| l.phases.get(p).map(|h| (p.as_str(), h))),
        )?;
        Ok(())
    }
}
