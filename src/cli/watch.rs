//! `status --watch`: a live view of the local node, redrawn in place like `top` — peers
//! with their state, the stories, work in flight with its progress (elapsed against the
//! phase's usual duration on this node) and the last events.
//!
//! It draws on the terminal's alternate screen with the cursor hidden, each frame from
//! the top-left corner, every line cleared to its end and the rest of the screen below;
//! the terminal is put back (cursor shown, the normal screen restored) however it ends:
//! Ctrl-C, SIGTERM, or the node going away (then one line says so, exit code 1). Off a
//! terminal it refuses: scripts use `status --json`. [`render_frame`] builds a frame
//! from plain data, so it is tested without a terminal.

use super::render::{event_line, fmt_ago, short};
use crate::{usage, StatusArgs};
use anyhow::{anyhow, Result};
use mesh_agent::api::ControlClient;
use mesh_agent::core::model::{Event, EventKind, Phase, StoryStatus};
use mesh_agent::node::StatusReport;
use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Events kept for the bottom of the screen.
pub(crate) const RECENT_EVENTS: usize = 10;
/// Stories listed (open ones first).
const STORY_LINES: usize = 8;
/// (node, story) pairs the work-in-flight fold keeps at most (events come from peers).
const MAX_TRACKED: usize = 4096;

/// The terminal's size (rows, columns) behind `fd`, if it is one.
pub(crate) fn terminal_size(fd: libc::c_int) -> Option<(usize, usize)> {
    // SAFETY: TIOCGWINSZ writes a `winsize` into the struct we pass, nothing else.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row as usize, ws.ws_col as usize))
}

/// A phase running somewhere, as the timeline tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InFlight {
    pub node: String,
    pub story: String,
    pub phase: Phase,
    pub round: u32,
    /// The node's wall clock when it started.
    pub started_ms: u64,
}

/// The timeline folded for the screen: what runs now and the last events.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// By (node, story): the newest event's time and the phase it started, if running.
    runs: BTreeMap<(String, String), (u64, Option<InFlight>)>,
    recent: VecDeque<Event>,
    /// Arrival position of the newest event read.
    pub after: u64,
}

impl Tracker {
    pub(crate) fn add(&mut self, batch: Vec<(u64, Event)>) {
        for (pos, e) in batch {
            self.after = self.after.max(pos);
            self.fold(&e);
            self.recent.push_back(e);
            if self.recent.len() > RECENT_EVENTS {
                self.recent.pop_front();
            }
        }
        if self.runs.len() > MAX_TRACKED {
            self.runs.retain(|_, (_, r)| r.is_some());
        }
    }

    fn fold(&mut self, e: &Event) {
        let running = match e.kind {
            EventKind::PhaseStarted => e.phase.map(|phase| InFlight {
                node: e.node.clone(),
                story: e.story.clone(),
                phase,
                round: e.round,
                started_ms: e.at_ms,
            }),
            EventKind::PhaseFinished
            | EventKind::PhaseFailed
            | EventKind::PhaseDeferred
            | EventKind::StoryCompleted
            | EventKind::StoryBlocked => None,
            EventKind::NodeLeft | EventKind::PeerDead => {
                let gone = if e.kind == EventKind::PeerDead {
                    &e.detail
                } else {
                    &e.node
                };
                for ((node, _), (_, r)) in self.runs.iter_mut() {
                    if node == gone {
                        *r = None;
                    }
                }
                return;
            }
            _ => return,
        };
        if e.story.is_empty() {
            return;
        }
        let slot = self
            .runs
            .entry((e.node.clone(), e.story.clone()))
            .or_insert((0, None));
        // Events merged from peers may arrive after newer ones: the newest counts.
        if e.at_ms >= slot.0 {
            *slot = (e.at_ms, running);
        }
    }

    pub(crate) fn in_flight(&self) -> Vec<&InFlight> {
        let mut v: Vec<&InFlight> = self.runs.values().filter_map(|(_, r)| r.as_ref()).collect();
        v.sort_by_key(|r| (r.started_ms, r.node.clone(), r.story.clone()));
        v
    }

    pub(crate) fn recent(&self) -> Vec<&Event> {
        let mut v: Vec<&Event> = self.recent.iter().collect();
        v.sort_by_key(|e| (e.at_ms, e.node.clone(), e.seq));
        v
    }
}

/// A phase's usual duration on this node: the mean of its runs (`None` before the first).
fn usual_ms(r: &StatusReport, phase: Phase) -> Option<u64> {
    let h = r.counters.latency.phases.get(&phase)?;
    (h.count > 0).then(|| h.sum_ms / h.count)
}

/// `[#####.....]  52%` of the usual duration; past it, how far over.
fn progress(elapsed: u64, usual: Option<u64>) -> String {
    let Some(usual) = usual.filter(|&u| u > 0) else {
        return "(no runs of this phase here yet)".to_string();
    };
    let pct = elapsed.saturating_mul(100) / usual;
    let filled = (pct.min(100) / 10) as usize;
    let bar = format!("[{}{}]", "#".repeat(filled), ".".repeat(10 - filled));
    if pct > 100 {
        format!("{bar} {pct}%, over the usual")
    } else {
        format!("{bar} {pct:>3}%")
    }
}

/// One frame: at most `rows` lines, each at most `cols` characters, control characters
/// (a peer's event detail may carry some) replaced.
pub(crate) fn render_frame(
    r: &StatusReport,
    t: &Tracker,
    now_wall_ms: u64,
    interval_ms: u64,
    (rows, cols): (usize, usize),
) -> Vec<String> {
    let mut o: Vec<String> = Vec::new();
    o.push(format!(
        "mesh-agent status --watch  node {} (up {})  every {:.1}s, Ctrl-C quits",
        short(&r.peer_id),
        fmt_ago(r.uptime_ms),
        interval_ms as f64 / 1000.0
    ));
    o.push(String::new());
    let count = |s: &str| r.peers.iter().filter(|p| p.state.as_str() == s).count();
    o.push(format!(
        "peers: {} ({} alive, {} suspect, {} dead), {} connected",
        r.peers.len(),
        count("alive"),
        count("suspect"),
        count("dead"),
        r.connected
    ));
    for p in &r.peers {
        o.push(format!(
            "  {:<54} {:<8} {:>7}  {}",
            p.peer,
            p.state.as_str(),
            fmt_ago(p.last_seen_ago_ms),
            super::render::roles(&p.roles)
        ));
    }
    o.push(String::new());
    let total: usize = r.story_counts.values().sum();
    let counts: Vec<String> = StoryStatus::ALL
        .iter()
        .map(|s| format!("{s} {}", r.story_counts.get(s.as_str()).unwrap_or(&0)))
        .collect();
    o.push(format!("stories: {total} ({})", counts.join(", ")));
    let open = |s: &&mesh_agent::node::StorySummary| {
        !matches!(s.status.as_str(), "merged" | "blocked" | "cancelled")
    };
    let mut listed: Vec<_> = r.stories.iter().filter(open).collect();
    listed.extend(r.stories.iter().filter(|s| !open(s)));
    for s in listed.iter().take(STORY_LINES) {
        o.push(format!(
            "  {:<14} {:<12} {:>4}  {}",
            s.id, s.status, s.priority, s.title
        ));
    }
    if listed.len() > STORY_LINES {
        o.push(format!("  … {} more", listed.len() - STORY_LINES));
    }
    o.push(String::new());
    let flying = t.in_flight();
    o.push(format!("work in flight: {}", flying.len()));
    for f in &flying {
        let elapsed = now_wall_ms.saturating_sub(f.started_ms);
        let phase = if f.round > 0 {
            format!("{}.{}", f.phase, f.round)
        } else {
            f.phase.to_string()
        };
        let usual = usual_ms(r, f.phase);
        o.push(format!(
            "  {:<14} {:<12} {:<8} {:>7} of ~{:<7} {}",
            f.story,
            phase,
            short(&f.node),
            fmt_ago(elapsed),
            usual.map_or_else(|| "?".to_string(), fmt_ago),
            progress(elapsed, usual)
        ));
    }
    o.push(String::new());
    o.push("recent events:".to_string());
    for e in t.recent() {
        o.push(format!("  {}", event_line(e)));
    }
    o.truncate(rows);
    o.into_iter()
        .map(|l| {
            l.chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .take(cols)
                .collect()
        })
        .collect()
}

/// The alternate screen with the cursor hidden, put back when dropped (also on a panic).
struct Screen;

impl Screen {
    fn enter() -> Screen {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J");
        let _ = out.flush();
        Screen
    }

    /// Draws a frame from the top-left corner, over the previous one.
    fn draw(&self, lines: &[String]) {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\x1b[H{}\x1b[K\x1b[J", lines.join("\x1b[K\r\n"));
        let _ = out.flush();
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the node answered for one frame.
type Fetched = Result<(StatusReport, Vec<(u64, Event)>), mesh_agent::api::ClientError>;

/// `status --watch`.
pub(crate) fn run(dir: &Path, a: &StatusArgs) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        return Err(usage(
            "status --watch redraws a terminal and stdout is not one; for scripts use `mesh-agent status --json`",
        ));
    }
    let client = Arc::new(super::commands::running(dir)?);
    let interval = Duration::from_millis(a.interval_ms.max(100));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let res = rt.block_on(watch(client, interval));
    // A request still in flight must not hold the exit up.
    rt.shutdown_background();
    res
}

async fn watch(client: Arc<ControlClient>, interval: Duration) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tracker = Tracker::default();
    let screen = Screen::enter();
    let gone = loop {
        let c = client.clone();
        let after = tracker.after;
        let fetch = tokio::task::spawn_blocking(move || -> Fetched {
            let report = c.status()?;
            let events = c.events(after)?;
            Ok((report, events))
        });
        let fetched = tokio::select! {
            f = fetch => f,
            _ = int.recv() => break None,
            _ = term.recv() => break None,
        };
        let (report, events) = match fetched {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => break Some(e.to_string()),
            Err(e) => break Some(e.to_string()),
        };
        tracker.add(events);
        let size = terminal_size(libc::STDOUT_FILENO).unwrap_or((24, 80));
        screen.draw(&render_frame(
            &report,
            &tracker,
            wall_ms(),
            interval.as_millis() as u64,
            size,
        ));
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = int.recv() => break None,
            _ = term.recv() => break None,
        }
    };
    drop(screen);
    match gone {
        None => Ok(()),
        Some(why) => Err(anyhow!("the node went away: {why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_agent::core::membership::{PeerState, PeerStatus};

    fn report() -> StatusReport {
        let json = serde_json::json!({
            "peer_id": "12D3KooWself0000", "version": "0.1.0", "passive": false,
            "uptime_ms": 5000, "listen_addrs": [], "connected": 1, "peers": [],
            "story_counts": {"ready": 1}, "stories": [
                {"id": "S-0001", "title": "Add login", "status": "ready", "priority": 100}
            ], "heads": [], "heads_digest": "", "doc_bytes": 0, "store_bytes": 0,
            "counters": {"malformed_dropped": 0, "sync_sessions_started": 0,
                "sync_sessions_completed": 0, "sync_failures": 0, "heartbeats_sent": 0,
                "heartbeats_received": 0, "bytes_in": 0, "bytes_out": 0,
                "handshake_failures": 0},
            "held": [], "claims": []
        });
        let mut r: StatusReport = serde_json::from_value(json).expect("a status report");
        r.peers.push(PeerStatus {
            peer: "12D3KooWpeer1111".into(),
            state: PeerState::Alive,
            last_seen_ago_ms: 100,
            roles: vec![],
            free_capacity: 1,
            heads_digest: String::new(),
        });
        r.counters.latency.ran(Phase::Plan, 10_000);
        r
    }

    fn event(kind: EventKind, node: &str, story: &str, at_ms: u64, detail: &str) -> Event {
        Event {
            node: node.into(),
            seq: at_ms,
            at_ms,
            kind,
            story: story.into(),
            phase: Some(Phase::Plan),
            round: 0,
            detail: detail.into(),
        }
    }

    #[test]
    fn a_node_taking_every_phase_shows_its_roles_as_all() {
        let mut r = report();
        r.peers[0].roles = vec!["research".into(), "merge".into()];
        let text = super::super::render::render_status(&r);
        assert!(text.contains(" research,merge "), "{text}");
        r.peers[0].roles = Phase::ALL.iter().map(|p| p.as_str().to_string()).collect();
        let text = super::super::render::render_status(&r);
        assert!(
            text.contains(" all ") && !text.contains("refine,"),
            "{text}"
        );
    }

    #[test]
    fn an_observer_cut_off_after_it_synced_says_its_report_is_not_live() {
        let mut r = report();
        assert!(!super::super::render::render_status(&r).contains("as first synced"));
        r.passive = true;
        r.connected = 0;
        let text = super::super::render::render_status(&r);
        assert!(
            text.contains("closed this observer's connections after it synced")
                && text.contains("the mesh as\n  first synced"),
            "{text}"
        );
    }

    #[test]
    fn a_node_without_the_operators_says_why_it_refused_their_roster_facts() {
        use mesh_agent::core::state::FactKind;
        use mesh_agent::node::RejectedFacts;
        let mut r = report();
        let fact = |kind| RejectedFacts {
            author: "12D3KooWoperator".into(),
            kind,
            count: 2,
        };
        r.rejected = vec![fact(FactKind::Story)];
        let hint = "it has none, so it takes the mesh for an open one";
        assert!(!super::super::render::render_status(&r).contains(hint));
        r.rejected.push(fact(FactKind::Admit));
        let text = super::super::render::render_status(&r);
        assert!(text.contains(hint), "{text}");
        r.roster.operators = vec!["12D3KooWoperator".into()];
        assert!(!super::super::render::render_status(&r).contains(hint));
    }

    #[test]
    fn status_names_this_nodes_epoch_and_the_peers_on_another() {
        let mut r = report();
        let plain = super::super::render::render_status(&r);
        assert!(
            !plain.contains("epoch: ") && !plain.contains("on another epoch"),
            "{plain}"
        );
        r.epoch = 2;
        r.other_epoch = vec!["12D3KooWpeer1111".into()];
        r.epoch_waits_for = vec!["12D3KooWgone2222".into()];
        let text = super::super::render::render_status(&r);
        assert!(text.contains("epoch: 2"), "{text}");
        assert!(
            text.contains("epoch 3 is due but waits for: ") && text.contains("revoke"),
            "{text}"
        );
        assert!(
            text.contains("on another epoch: ") && text.contains("claims wait"),
            "{text}"
        );
    }

    #[test]
    fn a_frame_shows_peers_stories_work_in_flight_with_progress_and_events() {
        let mut t = Tracker::default();
        t.add(vec![
            (1, event(EventKind::PhaseStarted, "n1", "S-0001", 1_000, "")),
            (2, event(EventKind::PhaseStarted, "n2", "S-0002", 1_000, "")),
            (
                3,
                event(
                    EventKind::PhaseFinished,
                    "n2",
                    "S-0002",
                    2_000,
                    "\x1b[2Jboom",
                ),
            ),
        ]);
        let f = render_frame(&report(), &t, 6_000, 1000, (40, 100));
        let text = f.join("\n");
        assert!(
            f.iter()
                .any(|l| l.contains("12D3KooWpeer1111") && l.contains(" alive ")),
            "{text}"
        );
        assert!(text.contains("S-0001         ready"), "{text}");
        assert!(text.contains("work in flight: 1"), "{text}");
        assert!(text.contains("[#####.....]  50%"), "{text}");
        assert!(
            !text.contains('\x1b'),
            "control characters are replaced: {text}"
        );
        assert_eq!(t.after, 3);
    }

    #[test]
    fn a_late_start_does_not_bring_back_a_finished_run_and_frames_fit_the_screen() {
        let mut t = Tracker::default();
        t.add(vec![(
            1,
            event(EventKind::PhaseFinished, "n1", "S-0001", 2_000, ""),
        )]);
        t.add(vec![(
            2,
            event(EventKind::PhaseStarted, "n1", "S-0001", 1_000, ""),
        )]);
        assert!(t.in_flight().is_empty());
        let f = render_frame(&report(), &t, 6_000, 1000, (5, 20));
        assert_eq!(f.len(), 5);
        assert!(f.iter().all(|l| l.chars().count() <= 20));
    }
}
