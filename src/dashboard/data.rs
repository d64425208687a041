//! What the pages show, computed from one snapshot of the node (its status, view and
//! event timeline): plain serializable rows for the templates. Everything a peer wrote
//! (titles, handoffs, reasons) goes out as text; the templates escape it.

use crate::api::budget_report;
use crate::core::membership::PeerState;
use crate::core::model::{Event, EventKind, Phase, StoryStatus};
use crate::core::state::{StoryView, View, DAY_MS};
use crate::node::StatusReport;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One consistent look at the node.
pub(super) struct Snapshot {
    pub status: StatusReport,
    pub view: View,
    pub events: Vec<Event>,
    pub now_ms: u64,
}

/// The end of a peer id, as `status` shows it.
pub(super) fn short(peer: &str) -> String {
    let n = peer.chars().count();
    peer.chars().skip(n.saturating_sub(8)).collect()
}

/// A duration for people: `42s`, `3m 05s`, `2h 10m`.
pub(super) fn dur(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 if ms < 10_000 => format!("{:.1}s", ms as f64 / 1000.0),
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// A wall-clock time, UTC: `2026-05-04 09:12:03`.
pub(super) fn when(ms: u64) -> String {
    let secs = ms / 1000;
    let t = secs % 86_400;
    format!(
        "{} {:02}:{:02}:{:02}",
        crate::core::calendar::iso_date(secs / 86_400),
        t / 3600,
        (t % 3600) / 60,
        t % 60
    )
}

/// The figures in the header.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(super) struct Figures {
    pub alive: usize,
    pub total: usize,
    /// Stories waiting to start (backlog and ready).
    pub queue: usize,
    pub in_progress: usize,
    /// Stories completed in the last hour.
    pub per_hour: usize,
    /// Stories merged since midnight UTC.
    pub merged_today: usize,
}

/// Stories counted from the status report, as `mesh-agent status` shows them.
pub(super) fn figures(s: &Snapshot) -> Figures {
    let count = |st: StoryStatus| s.status.story_counts.get(st.as_str()).copied().unwrap_or(0);
    let since = |ms: u64, kind: EventKind| {
        s.events
            .iter()
            .filter(|e| e.kind == kind && e.at_ms >= ms)
            .map(|e| e.story.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    };
    let me = usize::from(!s.status.passive);
    Figures {
        alive: me
            + s.status
                .peers
                .iter()
                .filter(|p| p.state == PeerState::Alive)
                .count(),
        total: me + s.status.peers.len(),
        queue: count(StoryStatus::Backlog) + count(StoryStatus::Ready),
        in_progress: count(StoryStatus::InProgress),
        per_hour: since(
            s.now_ms.saturating_sub(3_600_000),
            EventKind::StoryCompleted,
        ),
        merged_today: s
            .view
            .merges
            .values()
            .filter(|m| m.written_at_ms >= day_start(s.now_ms))
            .count(),
    }
}

fn day_start(now_ms: u64) -> u64 {
    now_ms - now_ms % DAY_MS
}

/// A finished run of one phase: when it finished and how long it took.
struct Run {
    phase: Phase,
    end_ms: u64,
    took_ms: u64,
}

/// Runs (started → finished on one node) from the timeline, and the starts not finished.
fn runs(events: &[Event]) -> (Vec<Run>, Vec<&Event>) {
    type K<'a> = (&'a str, &'a str, Phase, u32);
    let mut open: HashMap<K<'_>, &Event> = HashMap::new();
    let mut done = Vec::new();
    for e in events {
        let Some(p) = e.phase else { continue };
        let k = (e.node.as_str(), e.story.as_str(), p, e.round);
        match e.kind {
            EventKind::PhaseStarted => {
                open.insert(k, e);
            }
            EventKind::PhaseFinished => {
                if let Some(st) = open.remove(&k) {
                    done.push(Run {
                        phase: p,
                        end_ms: e.at_ms,
                        took_ms: e.at_ms.saturating_sub(st.at_ms),
                    });
                }
            }
            EventKind::PhaseFailed => {
                open.remove(&k);
            }
            _ => {}
        }
    }
    let mut still: Vec<&Event> = open.into_values().collect();
    still.sort_by_key(|e| (e.node.clone(), e.at_ms));
    (done, still)
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

/// The usual duration of each phase: the median of its finished runs.
fn usual(runs: &[Run]) -> BTreeMap<Phase, u64> {
    let mut by: BTreeMap<Phase, Vec<u64>> = BTreeMap::new();
    for r in runs {
        by.entry(r.phase).or_default().push(r.took_ms);
    }
    by.into_iter()
        .filter_map(|(p, v)| Some((p, median(v)?)))
        .collect()
}

/// One job running somewhere.
#[derive(Debug, Serialize)]
pub(super) struct Active {
    pub story: String,
    pub title: String,
    pub phase: &'static str,
    pub round: u32,
    pub elapsed: String,
    /// The phase's usual duration, if any run of it finished yet.
    pub usual: Option<String>,
    /// Elapsed and usual seconds for the progress bar (value capped at max).
    pub value: u64,
    pub max: u64,
    pub over: bool,
}

/// A node of the mesh with what it runs now.
#[derive(Debug, Serialize)]
pub(super) struct NodeRow {
    pub peer: String,
    pub short: String,
    pub me: bool,
    pub state: &'static str,
    pub roles: Vec<String>,
    pub last_seen: String,
    pub claims: usize,
    pub paused: Option<String>,
    pub active: Vec<Active>,
}

/// Every node this one knows (itself first), with its running jobs: the starts in the
/// timeline with no finish yet whose story this node still sees claimed by that node.
pub(super) fn nodes(s: &Snapshot) -> Vec<NodeRow> {
    let (done, open) = runs(&s.events);
    let usual = usual(&done);
    let me = &s.status.peer_id;
    let claims_of = |peer: &str| s.status.claims.iter().filter(|c| c.holder == peer).count();
    let active_of = |peer: &str| -> Vec<Active> {
        open.iter()
            .filter(|e| e.node == peer)
            .filter_map(|e| {
                // Events name stories by display id; claims by key.
                let st = s.view.resolve(&e.story).ok()?;
                let claimed = s.status.claims.iter().any(|c| {
                    c.holder == peer && c.resources.iter().any(|r| r.contains(st.key.as_str()))
                });
                if !claimed {
                    return None;
                }
                let phase = e.phase?;
                let took = s.now_ms.saturating_sub(e.at_ms);
                let u = usual.get(&phase).copied();
                let max = u.map_or(took.max(1), |u| u.max(1)).div_ceil(1000).max(1);
                let value = took.div_ceil(1000).min(max);
                Some(Active {
                    story: st.id.to_string(),
                    title: st.fact.title.to_string(),
                    phase: phase.as_str(),
                    round: e.round,
                    elapsed: dur(took),
                    usual: u.map(dur),
                    value,
                    max,
                    over: u.is_some_and(|u| took > u),
                })
            })
            .collect()
    };
    let paused = |peer: &str| s.view.steering.nodes.get(peer).map(|p| p.reason.clone());
    let mut rows = vec![NodeRow {
        peer: me.clone(),
        short: short(me),
        me: true,
        state: if s.status.passive {
            "observer"
        } else {
            "alive"
        },
        roles: s
            .view
            .nodes
            .get(me)
            .map(|n| n.roles.clone())
            .unwrap_or_default(),
        last_seen: "now".into(),
        claims: claims_of(me),
        paused: paused(me),
        active: active_of(me),
    }];
    for p in &s.status.peers {
        rows.push(NodeRow {
            peer: p.peer.clone(),
            short: short(&p.peer),
            me: false,
            state: p.state.as_str(),
            roles: p.roles.clone(),
            last_seen: format!("{} ago", dur(p.last_seen_ago_ms)),
            claims: claims_of(&p.peer),
            paused: paused(&p.peer),
            active: active_of(&p.peer),
        });
    }
    rows
}

/// Today's numbers (since midnight UTC).
#[derive(Debug, Serialize)]
pub(super) struct Today {
    pub completed: usize,
    pub blocked: usize,
    pub failed: usize,
    /// Mean time from a story's creation to its merge, over today's merges.
    pub average: String,
    pub success_rate: String,
    pub tokens: u64,
    pub cost: String,
}

pub(super) fn today(s: &Snapshot) -> Today {
    let start = day_start(s.now_ms);
    let today: Vec<&Event> = s.events.iter().filter(|e| e.at_ms >= start).collect();
    let stories = |k: EventKind| {
        today
            .iter()
            .filter(|e| e.kind == k)
            .map(|e| e.story.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    };
    let count = |k: EventKind| today.iter().filter(|e| e.kind == k).count();
    let (finished, failed) = (
        count(EventKind::PhaseFinished),
        count(EventKind::PhaseFailed),
    );
    let leads: Vec<u64> = s
        .view
        .merges
        .values()
        .filter(|m| m.written_at_ms >= start)
        .filter_map(|m| {
            let st = s.view.stories.get(m.story.as_str())?;
            Some(m.written_at_ms.saturating_sub(st.fact.created_at_ms))
        })
        .collect();
    let books = budget_report(&s.view, crate::core::state::day_of(s.now_ms));
    let mut usage = crate::core::state::Usage::default();
    for n in &books.nodes {
        usage.add(&n.usage);
    }
    Today {
        completed: stories(EventKind::StoryCompleted),
        blocked: stories(EventKind::StoryBlocked),
        failed,
        average: if leads.is_empty() {
            "–".into()
        } else {
            dur(leads.iter().sum::<u64>() / leads.len() as u64)
        },
        success_rate: (finished * 100)
            .checked_div(finished + failed)
            .map_or_else(|| "–".to_string(), |p| format!("{p}%")),
        tokens: usage.tokens,
        cost: crate::core::state::usd(usage.cost_micro_usd),
    }
}

/// The data of the two charts: phases finished in each of the last `hours` hours (oldest
/// first), and the median duration of each phase run in that window.
pub(super) fn chart_data(s: &Snapshot, hours: u64) -> (Vec<u64>, Vec<(&'static str, u64)>) {
    let (done, _) = runs(&s.events);
    let from = s.now_ms.saturating_sub(hours * 3_600_000);
    let mut per_hour = vec![0u64; hours as usize];
    for r in done
        .iter()
        .filter(|r| r.end_ms >= from && r.end_ms <= s.now_ms)
    {
        let i = ((r.end_ms - from) / 3_600_000).min(hours - 1) as usize;
        per_hour[i] += 1;
    }
    let recent: Vec<Run> = done.into_iter().filter(|r| r.end_ms >= from).collect();
    let latency = usual(&recent)
        .into_iter()
        .map(|(p, ms)| (p.as_str(), ms))
        .collect();
    (per_hour, latency)
}

/// An attention item with the actions the page offers for it.
#[derive(Debug, Serialize)]
pub(super) struct AttentionRow {
    pub story: String,
    pub title: String,
    pub kind: &'static str,
    pub detail: String,
    pub id: String,
    pub holds: Option<&'static str>,
    pub since: String,
    /// (verb, label) pairs: the CLI's actions as the dashboard's forms take them.
    pub actions: Vec<(&'static str, &'static str)>,
}

pub(super) fn attention(s: &Snapshot) -> Vec<AttentionRow> {
    s.view
        .attention()
        .into_iter()
        .map(|(st, a)| AttentionRow {
            story: st.id.to_string(),
            title: st.fact.title.to_string(),
            kind: a.kind.as_str(),
            detail: a.detail.clone(),
            id: a.id.clone(),
            holds: a.holds.map(Phase::as_str),
            since: when(a.since_ms),
            actions: a
                .actions
                .iter()
                .filter_map(|v| match v.as_str() {
                    "approve" => Some(("approve", "Approve")),
                    "request-changes" => Some(("request-changes", "Request changes")),
                    "dismiss" => Some(("dismiss", "Dismiss")),
                    "cancel" => Some(("cancel", "Cancel story")),
                    "unblock" => Some(("unblock", "Unblock (one attempt)")),
                    "unblock --reset-attempts" => {
                        Some(("unblock-reset", "Unblock (reset attempts)"))
                    }
                    _ => None,
                })
                .collect(),
        })
        .collect()
}

/// A story line of the backlog.
#[derive(Debug, Serialize)]
pub(super) struct StoryRow {
    pub id: String,
    pub title: String,
    pub status: &'static str,
    pub priority: u32,
    pub next: Option<&'static str>,
    pub labels: Vec<String>,
    pub paused: bool,
    pub attention: usize,
}

pub(super) fn story_row(s: &StoryView) -> StoryRow {
    StoryRow {
        id: s.id.to_string(),
        title: s.fact.title.to_string(),
        status: s.status.as_str(),
        priority: s.priority,
        next: s.next_phase.map(Phase::as_str),
        labels: s.fact.labels.to_vec(),
        paused: s.more.paused.is_some(),
        attention: s.more.attention.len(),
    }
}

/// An event line.
#[derive(Debug, Serialize)]
pub(super) struct EventRow {
    pub at: String,
    pub node: String,
    pub kind: &'static str,
    pub phase: Option<&'static str>,
    pub round: u32,
    pub detail: String,
}

pub(super) fn event_row(e: &Event) -> EventRow {
    EventRow {
        at: when(e.at_ms),
        node: short(&e.node),
        kind: e.kind.as_str(),
        phase: e.phase.map(Phase::as_str),
        round: e.round,
        detail: e.detail.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_people_write_them() {
        assert_eq!(when(0), "1970-01-01 00:00:00");
        assert_eq!(when(1_709_210_096_000), "2024-02-29 12:34:56");
        assert_eq!(dur(1_500), "1.5s");
        assert_eq!(dur(42_000), "42s");
        assert_eq!(dur(185_000), "3m 05s");
        assert_eq!(dur(7_800_000), "2h 10m");
        assert_eq!(short("12D3KooWabcdefgh12345678"), "12345678");
        assert_eq!(median(vec![5, 1, 3]), Some(3));
        assert_eq!(median(vec![]), None);
    }
}
