//! How the CLI prints what a node reports: the status page, the claims table, one line
//! per timeline event or audit-trail entry, one story. Plain text for people; `--json`
//! bypasses all of this.

use mesh_agent::core::model::{
    Event, EventKind, KnowledgeFact, KnowledgeKind, MAX_ATTEMPTS, MAX_TAKEOVERS,
};
use mesh_agent::core::state::{AuditEntry, FactKind, Standing, StoryView};
use mesh_agent::node::StatusReport;
use std::collections::BTreeMap;

pub(crate) fn fmt_ago(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 120_000 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}m", ms / 60_000)
    }
}

pub(crate) fn fmt_bytes(b: u64) -> String {
    if b < 1024 {
        format!("{b} B")
    } else if b < 1024 * 1024 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
    }
}

pub(crate) fn render_status(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "node {} ({}, v{}{}, up {})",
        short(&r.peer_id),
        r.peer_id,
        r.version,
        if r.passive { ", passive observer" } else { "" },
        fmt_ago(r.uptime_ms)
    );
    for a in &r.listen_addrs {
        let _ = writeln!(o, "  listening {a}");
    }
    if super::commands::observer_cut_off(r) {
        let _ = writeln!(
            o,
            "  its peers closed this observer's connections after it synced: this is the mesh as\n  \
             first synced (peers and claims as of then). For a live view run `mesh-agent status`\n  \
             on a member's machine, or open its dashboard"
        );
    }
    let count = |s: &str| r.peers.iter().filter(|p| p.state.as_str() == s).count();
    let _ = writeln!(
        o,
        "\npeers: {} ({} alive, {} suspect, {} dead), {} connected",
        r.peers.len(),
        count("alive"),
        count("suspect"),
        count("dead"),
        r.connected
    );
    if !r.peers.is_empty() {
        let _ = writeln!(
            o,
            "  {:<8} {:<8} {:>9}  {:<24} PEER ID",
            "NODE", "STATE", "LAST SEEN", "ROLES"
        );
        for p in &r.peers {
            let _ = writeln!(
                o,
                "  {:<8} {:<8} {:>9}  {:<24} {}",
                short(&p.peer),
                p.state.as_str(),
                fmt_ago(p.last_seen_ago_ms),
                roles(&p.roles),
                p.peer
            );
        }
    }
    if r.epoch > 0 {
        let _ = writeln!(
            o,
            "epoch: {} ({} merged stories retired to the archive; story show still reads them)",
            r.epoch, r.retired
        );
    }
    if r.moving {
        let _ = writeln!(
            o,
            "moving to epoch {}: no new claims until every node has moved (or the move is given up)",
            r.epoch + 1
        );
    }
    if !r.epoch_waits_for.is_empty() {
        let peers: Vec<&str> = r.epoch_waits_for.iter().map(|p| short(p)).collect();
        let _ = writeln!(
            o,
            "epoch {} is due but waits for: {} (down or on another epoch; revoke a node that left for good)",
            r.epoch + 1,
            peers.join(", ")
        );
    }
    if !r.other_epoch.is_empty() {
        let peers: Vec<&str> = r.other_epoch.iter().map(|p| short(p)).collect();
        let _ = writeln!(
            o,
            "on another epoch: {} (not synced with; claims wait until they move or die)",
            peers.join(", ")
        );
    }
    if let Some(left) = r.joining_ms_left {
        let _ = writeln!(
            o,
            "joining: waiting to sync with a known mesh, {} s left (no new work until then)",
            left.div_ceil(1000)
        );
    }
    if let Some(m) = r.clock.median_ms {
        let (side, by) = if m >= 0 {
            ("ahead of", m)
        } else {
            ("behind", -m)
        };
        let verdict = if r.clock.skewed {
            format!(
                "beyond max_clock_drift_ms = {}: CLAIMING NO NEW WORK, fix this node's clock (NTP)",
                r.clock.bound_ms
            )
        } else {
            "within bounds".to_string()
        };
        let _ = writeln!(
            o,
            "clock: {by} ms {side} the median of {} peer(s) (including delivery delay, up to {} ms of it allowed for), {verdict}",
            r.clock.peers,
            r.clock.delay_ms
        );
    }
    let g = &r.origin;
    if g.failures > 0 {
        let state = match g.open_since_ms {
            Some(since) => format!(
                "UNAVAILABLE for {} s, probing with one job at a time",
                r.uptime_ms.saturating_sub(since) / 1000
            ),
            None => "failing".to_string(),
        };
        let _ = writeln!(
            o,
            "git origin: {state}: {} job(s) in a row could not reach it (no attempt counted), next claim in {:.1} s; last error: {}",
            g.failures,
            g.retry_in_ms as f64 / 1000.0,
            g.last_error.as_deref().unwrap_or("-")
        );
    }
    let total: usize = r.story_counts.values().sum();
    let counts: Vec<String> = mesh_agent::core::model::StoryStatus::ALL
        .iter()
        .map(|s| format!("{s} {}", r.story_counts.get(s.as_str()).unwrap_or(&0)))
        .collect();
    let _ = writeln!(o, "\nstories: {total} ({})", counts.join(", "));
    if r.idle && total > 0 {
        let _ = if r.open == 0 {
            writeln!(o, "idle: every story is finished")
        } else {
            writeln!(
                o,
                "idle: nothing running or claimable; {} open stor{} wait, each says why below (`attention` lists what a human can clear)",
                r.open,
                if r.open == 1 { "y" } else { "ies" }
            )
        };
    }
    for (who, why) in &r.paused {
        let who = if who == "all" {
            "the whole mesh".to_string()
        } else if *who == r.peer_id {
            format!("this node ({})", short(who))
        } else {
            format!("node {}", short(who))
        };
        let _ = writeln!(o, "PAUSED by an operator: {who}{}", reason(why));
    }
    if r.attention > 0 {
        let _ = writeln!(
            o,
            "{} item(s) need a human: `mesh-agent attention` lists them",
            r.attention
        );
    }
    let sp = &r.spend;
    let usd = mesh_agent::core::state::usd;
    if let (Some(d), Some(a)) = (sp.daily_micro_usd, &sp.allowance) {
        let _ = writeln!(
            o,
            "budget: {} of {} a day spent or reserved; this node: {} left of its {} share \
             ({} received, {} given)",
            usd(sp.mesh_charged_micro_usd),
            usd(d),
            usd(a.balance.max(0) as u64),
            usd(a.share),
            usd(a.received),
            usd(a.given)
        );
    } else if sp.mesh_charged_micro_usd > 0 {
        let _ = writeln!(
            o,
            "spent today: {} (no budget set)",
            usd(sp.mesh_charged_micro_usd)
        );
    }
    if let Some(why) = &sp.short {
        let _ = writeln!(o, "NOT CLAIMING: {why}");
    }
    if sp.backoff_ms > 0 || sp.claim_gap_ms > 0 {
        let _ = writeln!(
            o,
            "RATE-LIMITED: {} rate limit(s) from the provider; no claim for {:.1} s, then at \
             most one per {:.1} s until jobs run clean (last: {})",
            sp.rate_limits,
            sp.backoff_ms as f64 / 1000.0,
            sp.claim_gap_ms as f64 / 1000.0,
            sp.last_rate_limit
        );
    }
    if r.notify.pending > 0 || r.notify.last_error.is_some() {
        let _ = writeln!(
            o,
            "notifications: {} this node owns not sent yet{}",
            r.notify.pending,
            r.notify
                .last_error
                .as_ref()
                .map_or_else(String::new, |e| format!("; last failure: {e}"))
        );
    }
    if !r.stories.is_empty() {
        let _ = writeln!(o, "  {:<14} {:<12} {:>4}  TITLE", "ID", "STATUS", "PRIO");
        for s in &r.stories {
            let _ = writeln!(
                o,
                "  {:<14} {:<12} {:>4}  {}",
                s.id, s.status, s.priority, s.title
            );
            // Why an open story is not moving, unless a node is working on it.
            if let Some(w) = s.waiting.as_ref().filter(|w| !w.behind_work()) {
                let _ = writeln!(o, "  {:<14} {w}", "");
            }
        }
    }
    render_claims(r, &mut o);
    let _ = writeln!(
        o,
        "\ndocument: {} head(s), digest {}, {} of {} cap (store {})",
        r.heads.len(),
        r.heads_digest,
        fmt_bytes(r.doc_bytes),
        fmt_bytes(r.doc_cap),
        fmt_bytes(r.store_bytes)
    );
    if r.doc_cap > 0 && r.doc_bytes > r.doc_cap - r.doc_cap / 10 {
        let _ = writeln!(
            o,
            "  NEAR ITS SIZE CAP: new stories and knowledge are refused past 90 %, changes \
             from peers past 100 %; raise max_document_bytes on every node"
        );
    }
    let c = &r.counters;
    let _ = writeln!(
        o,
        "traffic: {} in, {} out; sync sessions {}/{} done; malformed dropped {}; oversized frames {}; \
         over the ingress rate {}; refused at the size cap {}; of another epoch {}; handshake failures {}; \
         closed by the peer as they opened {}",
        fmt_bytes(c.bytes_in),
        fmt_bytes(c.bytes_out),
        c.sync_sessions_completed,
        c.sync_sessions_started,
        c.malformed_dropped,
        c.oversized_frames,
        c.ingress_dropped,
        c.full_dropped,
        c.other_epoch_dropped,
        c.handshake_failures,
        c.closed_on_open
    );
    if r.roster.enforced {
        let revoked = r.roster.revoked.len();
        let members = r
            .roster
            .admitted
            .iter()
            .filter(|e| !r.roster.is_revoked(&e.peer))
            .count();
        let me = if r.roster.is_member(&r.peer_id) {
            "a member".to_string()
        } else if r.passive {
            "an observer, not on it (members refuse it)".to_string()
        } else if r.roster.is_revoked(&r.peer_id) {
            "REVOKED: nothing it writes counts".to_string()
        } else {
            format!(
                "NOT ADMITTED: it claims nothing until an operator runs `mesh-agent admit {}`",
                r.peer_id
            )
        };
        let _ = writeln!(
            o,
            "roster: {members} member(s), {revoked} revoked, {} operator(s); this node is {me}",
            r.roster.operators.len()
        );
    }
    if !r.rejected.is_empty() {
        let total: u64 = r.rejected.iter().map(|x| x.count).sum();
        let each: Vec<String> = r
            .rejected
            .iter()
            .map(|x| format!("{} {} by {}", x.count, x.kind.as_str(), short(&x.author)))
            .collect();
        let _ = writeln!(
            o,
            "refused facts: {total} ({}): unsigned, mis-signed, invalid or not the author's to write",
            each.join(", ")
        );
        let operators_only = [FactKind::Admit, FactKind::Revoke, FactKind::Command];
        if r.roster.operators.is_empty()
            && r.rejected.iter().any(|x| operators_only.contains(&x.kind))
        {
            let _ = writeln!(
                o,
                "  roster facts and commands count only by an operator this node's config names\n  \
                 (`operators` in config.toml): it has none, so it takes the mesh for an open one"
            );
        }
    }
    o
}

/// A node's roles for a table: `all` when it takes every phase (the default, eight names
/// wide), else their names.
pub(crate) fn roles(roles: &[String]) -> String {
    let every = mesh_agent::core::model::Phase::ALL
        .iter()
        .all(|p| roles.iter().any(|r| r == p.as_str()));
    if every {
        "all".to_string()
    } else {
        roles.join(",")
    }
}

pub(crate) fn short(peer: &str) -> &str {
    &peer[peer.len().saturating_sub(8)..]
}

pub(crate) fn render_claims(r: &StatusReport, o: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(o, "\nclaims: {} active", r.claims.len());
    if !r.claims.is_empty() {
        let _ = writeln!(
            o,
            "  {:<8} {:<7} {:<12} {:>5} {:>7} {:>9} {:>10}  FILES",
            "NODE", "STORY", "PHASE", "TOKEN", "AGE", "RENEWED", "EXPIRES IN"
        );
        for c in &r.claims {
            // A claim without a story resource (none today) shows its raw resources.
            let (story, phase) = match c.phase {
                Some(p) => (c.id.clone(), phase_label(p, c.round)),
                None => (c.resources.join(" "), String::new()),
            };
            let _ = writeln!(
                o,
                "  {:<8} {:<7} {:<12} {:>5} {:>7} {:>9} {:>10}  {}{}",
                short(&c.holder),
                story,
                phase,
                c.token,
                fmt_ago(c.age_ms),
                fmt_ago(c.renewed_ago_ms),
                if c.expires_in_ms == 0 {
                    "expired".to_string()
                } else {
                    fmt_ago(c.expires_in_ms)
                },
                if c.files.is_empty() {
                    "-".to_string()
                } else {
                    c.files.join(",")
                },
                if c.holds { "" } else { "  (lost a resource)" }
            );
        }
    }
    if !r.held.is_empty() {
        let held: Vec<String> = r
            .held
            .iter()
            .map(|h| {
                format!(
                    "{} {} ({})",
                    h.id,
                    phase_label(h.phase, h.round),
                    if h.running { "running" } else { "settling" }
                )
            })
            .collect();
        let _ = writeln!(o, "  this node: {}", held.join(", "));
    }
}

/// A phase and its round as every command prints them: `implement`, `rework.2`.
pub(crate) fn phase_label(p: mesh_agent::core::model::Phase, round: u32) -> String {
    if round > 0 {
        format!("{p}.{round}")
    } else {
        p.to_string()
    }
}

/// One line of the timeline: time, node, story, phase, what happened.
pub(crate) fn event_line(e: &Event) -> String {
    let secs = e.at_ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let what = match e.kind {
        EventKind::Claimed => "claimed",
        EventKind::PhaseStarted => "started",
        EventKind::PhaseFinished => "finished",
        EventKind::PhaseFailed => "FAILED",
        EventKind::Progress => "progress",
        EventKind::StoryCompleted => "COMPLETED",
        EventKind::StoryBlocked => "BLOCKED",
        EventKind::RebaseNeeded => "REBASE NEEDED",
        EventKind::MainUpdated => "main updated",
        EventKind::PatternDiscovered => "learned",
        EventKind::Stalled => "STALLED",
        EventKind::PeerJoined => "peer joined",
        EventKind::PeerDead => "peer dead",
        EventKind::PeerRefused => "peer refused",
        EventKind::NodeLeft => "left the mesh",
        EventKind::PhaseDeferred => "deferred",
        EventKind::GitUnavailable => "GIT UNAVAILABLE",
        EventKind::GitAvailable => "git available",
    };
    let phase = e
        .phase
        .map_or_else(String::new, |p| phase_label(p, e.round));
    let mut line = format!(
        "{h:02}:{m:02}:{s:02}.{:03} {:<8} {:<7} {:<12} {what}",
        e.at_ms % 1000,
        short(&e.node),
        e.story,
        phase
    );
    if !e.detail.is_empty() {
        let detail = match e.kind {
            EventKind::PeerJoined | EventKind::PeerDead => short(&e.detail).to_string(),
            EventKind::PeerRefused => e.detail.clone(),
            _ => e.detail.replace('\n', " "),
        };
        line.push_str(": ");
        line.push_str(&detail);
    }
    line
}

/// A wall-clock time in ms since the epoch as `YYYY-MM-DD HH:MM:SS.mmm` (UTC).
pub(crate) fn fmt_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = mesh_agent::core::calendar::civil(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        ms % 1000
    )
}

/// One line of the audit trail: time (UTC), author, story, standing, what it did.
pub(crate) fn audit_line(e: &AuditEntry) -> String {
    let at = e.at_ms.map_or_else(|| "-".to_string(), fmt_utc);
    let standing = match e.standing {
        Standing::Counts => "counts",
        Standing::Superseded => "superseded",
        Standing::NotMember => "NOT MEMBER",
        Standing::Refused => "REFUSED",
    };
    format!(
        "{at:<23}  {:<8} {:<8} {standing:<10}  {}",
        short(&e.author),
        e.story.as_deref().unwrap_or("-"),
        e.action
    )
}

pub(crate) fn print_story(s: &StoryView) {
    println!("{}  {}", s.id, s.fact.title);
    println!("  status     {}", s.status);
    if s.priority != s.fact.priority {
        println!(
            "  priority   {} (set by an operator; created at {})",
            s.priority, s.fact.priority
        );
    } else {
        println!("  priority   {}", s.priority);
    }
    if let Some(c) = &s.more.cancelled {
        println!(
            "  cancelled  by operator {}{}",
            short(&c.by),
            reason(&c.reason)
        );
    }
    if s.charged_micro_usd() > 0 || s.usage().tokens > 0 {
        println!(
            "  cost       {} ({} tokens: {} in, {} out)",
            mesh_agent::core::state::usd(s.charged_micro_usd()),
            s.usage().tokens,
            s.usage().tokens_in,
            s.usage().tokens_out
        );
    }
    if let Some(p) = &s.more.paused {
        println!(
            "  paused     by operator {}{}",
            short(&p.by),
            reason(&p.reason)
        );
    }
    if let Some(a) = &s.more.assigned {
        let to = match (&a.node, &a.role) {
            (Some(n), _) => format!("node {n}"),
            (None, Some(r)) => format!("role {r}"),
            (None, None) => "anyone".into(),
        };
        println!("  assigned   to {to} by operator {}", short(&a.by));
    }
    for n in &s.more.notes {
        println!("  note       {} (operator {})", n.text, short(&n.by));
    }
    for a in &s.more.attention {
        let holds = a.holds.map_or(String::new(), |p| format!(", holds {p}"));
        println!("  attention  {}: {}{holds}", a.kind, a.detail);
        println!(
            "             id {}; actions: {}",
            a.id,
            a.actions.join(", ")
        );
    }
    if !s.depends_on_ids.is_empty() {
        println!("  depends on {}", s.depends_on_ids.join(", "));
    }
    if !s.fact.files.is_empty() {
        println!("  files      {}", s.fact.files.join(", "));
    }
    if !s.fact.labels.is_empty() {
        println!("  labels     {}", s.fact.labels.join(", "));
    }
    if !s.phases_done.is_empty() {
        let done: Vec<&str> = s.phases_done.iter().map(|p| p.as_str()).collect();
        println!("  done       {}", done.join(", "));
    }
    if let Some(p) = s.next_phase {
        let round = if s.round > 0 {
            format!(", round {}", s.round)
        } else {
            String::new()
        };
        println!("  phase      {p} (attempts so far: {}{round})", s.attempts);
    }
    if s.attempts > 0 {
        println!(
            "  attempts   {} failed (blocks at {MAX_ATTEMPTS}), {} lost their holder (blocks at {MAX_TAKEOVERS})",
            s.failed_attempts, s.takeovers
        );
        for f in &s.more.failures {
            println!("  failed     {f}");
        }
    }
    if let Some(why) = &s.more.blocked_reason {
        println!("  blocked    {why}");
    }
    if let Some(i) = &s.fact.imported {
        let done: Vec<&str> = i.done.iter().map(|p| p.as_str()).collect();
        println!(
            "  imported   from {} {}{}",
            i.from,
            i.id,
            if done.is_empty() {
                String::new()
            } else {
                format!(" ({} done there)", done.join(", "))
            }
        );
    }
    match &s.more.merged {
        Some(m) if m.claim.is_empty() => println!(
            "  merged     {} (before it was imported)",
            if m.commit.is_empty() { "-" } else { &m.commit }
        ),
        Some(m) => println!(
            "  merged     {} (token {}, by {})",
            m.commit,
            m.token,
            short(&m.holder)
        ),
        None => {}
    }
    println!("  created by {} (key {})", s.fact.created_by, s.key);
    if !s.fact.body.is_empty() {
        println!();
        for line in s.fact.body.lines() {
            println!("  {line}");
        }
    }
}

/// ": why" for a non-empty reason.
fn reason(r: &str) -> String {
    if r.is_empty() {
        String::new()
    } else {
        format!(": {r}")
    }
}

/// `story list`: the backlog in order, one story per line.
pub(crate) fn print_story_list(list: &[StoryView]) {
    if list.is_empty() {
        println!("no stories yet: add one with `mesh-agent story add --title ...`");
        return;
    }
    println!("{:<14} {:<12} {:>4}  TITLE", "ID", "STATUS", "PRIO");
    for s in list {
        println!(
            "{:<14} {:<12} {:>4}  {}",
            s.id,
            s.status.as_str(),
            s.priority,
            s.fact.title
        );
    }
}

/// `knowledge list`: the entries grouped by kind, oldest first, with where each came from.
pub(crate) fn print_knowledge(all: &BTreeMap<String, KnowledgeFact>) {
    if all.is_empty() {
        println!(
            "no knowledge yet: phases add what they learn; add one with `mesh-agent knowledge add`"
        );
        return;
    }
    for kind in KnowledgeKind::ALL {
        let mut of: Vec<(&String, &KnowledgeFact)> =
            all.iter().filter(|(_, k)| k.kind == kind).collect();
        if of.is_empty() {
            continue;
        }
        of.sort_by_key(|(_, k)| k.written_at_ms);
        println!("{kind}:");
        for (id, k) in of {
            let from = if k.story.is_empty() {
                format!("by {}", short(&k.author))
            } else {
                format!("on {}", k.story.split('@').next().unwrap_or(&k.story))
            };
            println!("  {id}  {}  ({from})", k.text);
        }
    }
}

pub(crate) fn print_roster(r: &mesh_agent::core::state::RosterView) {
    if !r.enforced {
        println!("open mesh: no operators, so any holder of the mesh key is a member");
        println!("(list operator ids in every node's `operators` to turn the roster on)");
        return;
    }
    println!("operators");
    for o in &r.operators {
        println!("  {o}");
    }
    println!(
        "members ({})",
        r.admitted.len() - r.admitted.iter().filter(|e| r.is_revoked(&e.peer)).count()
    );
    for e in r.admitted.iter().filter(|e| !r.is_revoked(&e.peer)) {
        let note = if e.note.is_empty() {
            String::new()
        } else {
            format!("  {}", e.note)
        };
        println!("  {}  admitted by {}{note}", e.peer, short(&e.by));
    }
    if !r.revoked.is_empty() {
        println!("revoked ({})", r.revoked.len());
        for e in &r.revoked {
            let note = if e.note.is_empty() {
                String::new()
            } else {
                format!("  {}", e.note)
            };
            println!("  {}  revoked by {}{note}", e.peer, short(&e.by));
        }
    }
}
