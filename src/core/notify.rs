//! Notifications, pure: which triggers exist (derived from facts and the event timeline,
//! so every node derives the same id for the same trigger), which node owns each, when
//! to try again, and what a delivered or refused one leaves in the document.
//!
//! Sent once by the mesh (docs/DESIGN.md §15):
//! - every trigger has an id derived from facts (`attention/<story>/<item>/<since>`,
//!   `git_unavailable/<node>/<seq>`, `digest/<period index>`, `budget/<key>`);
//! - its owner is the highest of sha256(id ‖ 0 ‖ peer) over the nodes this node does not
//!   consider dead that announce `notify:<kind>` in their node fact (rendezvous hashing:
//!   every node that sees the same nodes picks the same owner, and when the owner dies
//!   the next one by hash takes over);
//! - the owner sends it to its own sinks and then writes `notified/<hash of id>`
//!   ([`NotifiedFact`], signed by the sender; [`crate::core::state`] admits it only from
//!   `by`); a trigger with a notified fact is never sent again by anyone.
//!
//! Nothing here reads a clock or draws randomness: times and jitter are arguments.

use crate::core::lease::ReleaseReason;
use crate::core::model::{AlertKind, Event, EventKind, StoryStatus};
use crate::core::state::View;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// The role prefix a node with sinks announces, one role per kind it sends.
pub const ROLE_PREFIX: &str = "notify:";
/// Longest trigger id accepted in a notified fact.
pub const MAX_ID_BYTES: usize = 512;
/// Longest text of a trigger's detail as sent (longer is cut).
pub const MAX_DETAIL_BYTES: usize = 2000;

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    /// A story ran out of attempts, takeovers or review rounds.
    StoryBlocked,
    /// An attention item (low confidence, a large change, an approval gate).
    NeedsAttention,
    /// An attention item of kind security (the scan found something in a change).
    SecurityConcern,
    /// A budget ran out (derived by the budget code: see [`budget_exhausted`]).
    BudgetExhausted,
    /// A node's origin breaker opened (`git_unavailable` event).
    GitUnavailable,
    /// The periodic digest.
    Digest,
}

impl TriggerKind {
    pub const ALL: [TriggerKind; 6] = [
        TriggerKind::StoryBlocked,
        TriggerKind::NeedsAttention,
        TriggerKind::SecurityConcern,
        TriggerKind::BudgetExhausted,
        TriggerKind::GitUnavailable,
        TriggerKind::Digest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::StoryBlocked => "story_blocked",
            TriggerKind::NeedsAttention => "needs_attention",
            TriggerKind::SecurityConcern => "security_concern",
            TriggerKind::BudgetExhausted => "budget_exhausted",
            TriggerKind::GitUnavailable => "git_unavailable",
            TriggerKind::Digest => "digest",
        }
    }

    pub fn parse(s: &str) -> Option<TriggerKind> {
        let s = s.replace('-', "_");
        TriggerKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The role a node announces when one of its sinks takes this kind.
    pub fn role(self) -> String {
        format!("{ROLE_PREFIX}{}", self.as_str())
    }
}

/// The periodic digest's figures, computed from the view for one period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestStats {
    pub period_start_ms: u64,
    pub period_end_ms: u64,
    /// Stories that landed in the period.
    pub completed: u32,
    /// Stories blocked at the end of the period (waiting for a human).
    pub blocked: u32,
    /// Attempts started in the period that failed because of the work.
    pub failed: u32,
    /// Mean time from a story's creation to its landing, over those completed (ms).
    pub average_ms: Option<u64>,
    /// Attempts started in the period that finished, over those that finished or
    /// failed, in percent.
    pub success_rate_pct: Option<u32>,
    /// Tokens and cost the results written in the period report.
    pub tokens: u64,
    pub cost_micro_usd: u64,
}

/// One thing to tell humans about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// Derived from facts: the same on every node.
    pub id: String,
    pub kind: TriggerKind,
    /// The story's display id, if about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub story: Option<String>,
    pub title: String,
    pub detail: String,
    /// When it arose (wall clock of the fact or event it comes from).
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<DigestStats>,
    /// The story's document key (for the notified fact; not sent).
    #[serde(skip)]
    pub story_key: String,
}

/// How a delivery ended, as recorded in the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every sink of the sender answered 2xx (or exit 0).
    Delivered,
    /// A sink refused it for good (HTTP 4xx): it will not get better, so it is recorded
    /// and never tried again.
    Refused,
}

/// `notified/<hash of id>`: the trigger was sent (or refused for good) by `by`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifiedFact {
    pub id: String,
    pub kind: TriggerKind,
    /// The story key, if about one (for the audit trail's story filter).
    #[serde(default)]
    pub story: String,
    pub by: String,
    pub at_ms: u64,
    pub attempts: u32,
    pub outcome: Outcome,
}

/// The key part of a trigger id's notified fact: hex of the first 16 bytes of its
/// SHA-256.
pub fn notified_hash(id: &str) -> String {
    hex::encode(&Sha256::digest(id.as_bytes())[..16])
}

/// The rendezvous score of `peer` for trigger `id`.
fn score(id: &str, peer: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update([0]);
    h.update(peer.as_bytes());
    h.finalize().into()
}

/// The owner of trigger `id` among `candidates`: the highest score (then the highest
/// id, for a tie that never happens).
pub fn owner<'a>(id: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates.into_iter().max_by_key(|p| (score(id, p), *p))
}

/// The nodes that may send a trigger of `kind`: this node if it sends that kind, and
/// every node whose description announces it and that `not_dead` accepts.
pub fn candidates<'a>(
    view: &'a View,
    kind: TriggerKind,
    me: &'a str,
    i_send: bool,
    not_dead: impl Fn(&str) -> bool,
) -> Vec<&'a str> {
    let role = kind.role();
    let mut out: Vec<&str> = view
        .nodes
        .iter()
        .filter(|(p, n)| p.as_str() != me && n.roles.contains(&role) && not_dead(p))
        .map(|(p, _)| p.as_str())
        .collect();
    if i_send {
        out.push(me);
    }
    out
}

/// A budget ran out: `key` names what (story or mesh and day, as the budget code
/// chooses, so every node derives the same); the budget code adds these to the derived
/// triggers.
/// The day's budget is spent: what is left of it, as the view's books say, would not
/// cover one job's default reservation anywhere. One trigger per day.
pub fn budget_triggers(view: &View, wall_ms: u64) -> Vec<Trigger> {
    let Some(b) = view.steering.budget.as_ref() else {
        return Vec::new();
    };
    let day = crate::core::state::day_of(wall_ms);
    let charged = view.ledger.charged_on(day);
    let reserve = crate::core::BudgetConfig::default().reserve_micro_usd;
    if b.daily_micro_usd.saturating_sub(charged) >= reserve.min(b.daily_micro_usd) {
        return Vec::new();
    }
    let usd = crate::core::state::usd;
    vec![budget_exhausted(
        &format!("day-{day}"),
        None,
        &format!(
            "the mesh spent or reserved {} of its {} budget today: nodes claim nothing more \
             until tomorrow (UTC) or an operator raises it (`mesh-agent budget set --daily USD`)",
            usd(charged),
            usd(b.daily_micro_usd)
        ),
        wall_ms,
    )]
}

pub fn budget_exhausted(
    key: &str,
    story: Option<(&str, &str)>,
    detail: &str,
    at_ms: u64,
) -> Trigger {
    Trigger {
        id: format!("budget/{key}"),
        kind: TriggerKind::BudgetExhausted,
        story: story.map(|(_, id)| id.to_string()),
        title: "budget exhausted".into(),
        detail: cut(detail),
        at_ms,
        digest: None,
        story_key: story.map_or_else(String::new, |(k, _)| k.to_string()),
    }
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_DETAIL_BYTES {
        return s.to_string();
    }
    let mut end = MAX_DETAIL_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The triggers of the attention queue: a blocked story, a security concern, anything
/// else that needs a human. An item cleared by an operator is gone from the view, and
/// so from here: it is not sent (a human already acted on it).
pub fn attention_triggers(view: &View) -> Vec<Trigger> {
    view.attention()
        .into_iter()
        .map(|(s, a)| {
            let kind = match a.kind {
                AlertKind::Blocked => TriggerKind::StoryBlocked,
                AlertKind::Security => TriggerKind::SecurityConcern,
                _ => TriggerKind::NeedsAttention,
            };
            let title = match kind {
                TriggerKind::StoryBlocked => format!("{} is blocked: {}", s.id, s.fact.title),
                TriggerKind::SecurityConcern => {
                    format!("{} has a security concern: {}", s.id, s.fact.title)
                }
                _ => format!("{} needs attention ({}): {}", s.id, a.kind, s.fact.title),
            };
            Trigger {
                id: format!("attention/{}/{}/{}", s.key, a.id, a.since_ms),
                kind,
                story: Some(s.id.to_string()),
                title,
                detail: cut(&a.detail),
                at_ms: a.since_ms,
                digest: None,
                story_key: s.key.to_string(),
            }
        })
        .collect()
}

/// The trigger of a `git_unavailable` event (`None` for any other event).
pub fn git_trigger(ev: &Event) -> Option<Trigger> {
    (ev.kind == EventKind::GitUnavailable).then(|| Trigger {
        id: format!("git_unavailable/{}/{}", ev.node, ev.seq),
        kind: TriggerKind::GitUnavailable,
        story: None,
        title: format!("git origin unavailable from node {}", ev.node),
        detail: cut(&ev.detail),
        at_ms: ev.at_ms,
        digest: None,
        story_key: String::new(),
    })
}

/// The digest of period `index` (`[index·period, (index+1)·period)` of the wall clock).
pub fn digest(view: &View, index: u64, period_ms: u64) -> Trigger {
    let start = index.saturating_mul(period_ms);
    let end = start.saturating_add(period_ms);
    let within = |t: u64| (start..end).contains(&t);
    let mut d = DigestStats {
        period_start_ms: start,
        period_end_ms: end,
        ..Default::default()
    };
    let mut took = 0u64;
    for s in view.stories.values() {
        if s.status == StoryStatus::Blocked {
            d.blocked += 1;
        }
        if let Some(m) = s.more.merged.as_ref().filter(|m| within(m.written_at_ms)) {
            d.completed += 1;
            took += m.written_at_ms.saturating_sub(s.fact.created_at_ms);
        }
    }
    d.average_ms = took.checked_div(u64::from(d.completed));
    let mut done = 0u32;
    for (id, _) in view.claims.iter().filter(|(_, c)| within(c.written_at_ms)) {
        match view.releases.get(id).map(|r| r.why) {
            Some(ReleaseReason::Done) => done += 1,
            Some(r) if r.blames_work() => d.failed += 1,
            _ => {}
        }
    }
    d.success_rate_pct = (done * 100).checked_div(done + d.failed);
    for r in view.results.values().filter(|r| within(r.written_at_ms)) {
        d.tokens = d.tokens.saturating_add(r.handoff.tokens);
        d.cost_micro_usd = d.cost_micro_usd.saturating_add(r.handoff.cost_micro_usd);
    }
    let rate = d
        .success_rate_pct
        .map_or_else(|| "n/a".to_string(), |p| format!("{p}%"));
    let avg = d.average_ms.map_or_else(
        || "n/a".to_string(),
        |ms| format!("{:.1} min", ms as f64 / 60_000.0),
    );
    let detail = format!(
        "completed {}, blocked {}, failed attempts {}, average time {avg}, success rate {rate}, \
         tokens {}, cost ${:.2}",
        d.completed,
        d.blocked,
        d.failed,
        d.tokens,
        d.cost_micro_usd as f64 / 1_000_000.0
    );
    Trigger {
        id: format!("digest/{index}"),
        kind: TriggerKind::Digest,
        story: None,
        title: "mesh digest".into(),
        detail,
        at_ms: end,
        digest: Some(d),
        story_key: String::new(),
    }
}

/// This node's notification settings (from its sinks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyConfig {
    /// The kinds at least one of this node's sinks takes (empty: it sends nothing).
    pub kinds: BTreeSet<TriggerKind>,
    /// The digest's period (the digest of a period is due once it ended).
    pub digest_period_ms: u64,
    /// Triggers older than this are never sent (a node joining an old mesh does not
    /// replay its history).
    pub max_age_ms: u64,
    /// Retries after a failed send: from `retry_base_ms`, doubling to `retry_max_ms`,
    /// each with up to +25 % jitter.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// Nothing is sent until this long after the first tick, or after a stall of this
    /// node (it must hear from its peers first, or it would own what they own).
    pub warmup_ms: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            kinds: BTreeSet::new(),
            digest_period_ms: 86_400_000,
            max_age_ms: 86_400_000,
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            warmup_ms: 5_000,
        }
    }
}

/// The wait before retry number `attempts` (1 = the first retry): `base · 2^(attempts-1)`
/// capped at `max`, plus `jitter % (wait/4 + 1)` (the caller draws `jitter`).
pub fn backoff_ms(attempts: u32, base: u64, max: u64, jitter: u64) -> u64 {
    let exp = attempts.saturating_sub(1).min(40);
    let wait = base.saturating_mul(1u64 << exp).min(max);
    wait.saturating_add(jitter % (wait / 4 + 1))
}

/// A trigger that failed and waits to be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retry {
    attempts: u32,
    next_ms: u64,
}

/// What the notification pipeline shows in `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyStatus {
    /// Triggers this node owns that are not sent yet.
    pub pending: usize,
    /// Sends in flight now.
    pub in_flight: usize,
    /// Triggers this node delivered (or saw refused) since it started.
    pub delivered: u64,
    /// The last failed send: trigger id and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// How one send ended, as the shell reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    /// Every sink took it.
    Delivered,
    /// A sink refused it for good (4xx): recorded, never retried.
    Refused(String),
    /// A sink failed (5xx, transport, timeout, non-zero exit): try again later.
    Failed(String),
}

/// The pipeline's state on one node: git events seen, retries, sends in flight.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    cfg: NotifyConfig,
    /// When sending may start (after the warm-up).
    ready_ms: Option<u64>,
    last_tick_ms: Option<u64>,
    /// `git_unavailable` triggers from the timeline, by id, and the last position read.
    git: BTreeMap<String, Trigger>,
    events_pos: u64,
    retries: BTreeMap<String, Retry>,
    in_flight: BTreeMap<String, Trigger>,
    status: NotifyStatus,
}

/// Most `git_unavailable` triggers kept (the oldest go first; they age out anyway).
const MAX_GIT_TRIGGERS: usize = 1000;

impl Notifier {
    pub fn new(cfg: NotifyConfig) -> Notifier {
        Notifier {
            cfg,
            ..Default::default()
        }
    }

    pub fn config(&self) -> &NotifyConfig {
        &self.cfg
    }

    /// Whether this node sends anything.
    pub fn enabled(&self) -> bool {
        !self.cfg.kinds.is_empty()
    }

    /// The timeline position up to which events were read.
    pub fn events_pos(&self) -> u64 {
        self.events_pos
    }

    /// Reads events that arrived since the last call (`pos`: the position of the last).
    pub fn read_events<'a>(&mut self, events: impl IntoIterator<Item = &'a (u64, Event)>) {
        for (pos, ev) in events {
            self.events_pos = self.events_pos.max(*pos);
            if let Some(t) = git_trigger(ev) {
                self.git.insert(t.id.clone(), t);
            }
        }
        while self.git.len() > MAX_GIT_TRIGGERS {
            let oldest = self
                .git
                .iter()
                .min_by_key(|(id, t)| (t.at_ms, (*id).clone()))
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => self.git.remove(&id),
                None => break,
            };
        }
    }

    /// Every trigger derived now: the attention queue, git outages, the digest of the
    /// last period that ended, and `extra` (budget triggers).
    pub fn derive(&self, view: &View, wall_ms: u64, extra: &[Trigger]) -> Vec<Trigger> {
        let mut out = attention_triggers(view);
        out.extend(self.git.values().cloned());
        let period = self.cfg.digest_period_ms.max(1);
        if let Some(last) = (wall_ms / period).checked_sub(1) {
            // Its figures cost a pass over the claims and results: computed only when
            // it is sent (see `due`).
            out.push(Trigger {
                id: format!("digest/{last}"),
                kind: TriggerKind::Digest,
                story: None,
                title: "mesh digest".into(),
                detail: String::new(),
                at_ms: last.saturating_add(1).saturating_mul(period),
                digest: None,
                story_key: String::new(),
            });
        }
        out.extend(budget_triggers(view, wall_ms));
        out.extend(extra.iter().cloned());
        out
    }

    /// Advances the clocks: the warm-up starts at the first tick and again after a stall
    /// of this node longer than the warm-up (its peers may have taken its triggers over).
    pub fn tick(&mut self, now_ms: u64) {
        let stalled = self
            .last_tick_ms
            .is_some_and(|l| now_ms.saturating_sub(l) > self.cfg.warmup_ms);
        if self.ready_ms.is_none() || stalled {
            self.ready_ms = Some(now_ms.saturating_add(self.cfg.warmup_ms));
        }
        self.last_tick_ms = Some(now_ms);
    }

    /// The triggers this node should send now, marked in flight: derived, not notified,
    /// owned by `me` among the nodes `not_dead` accepts, younger than the max age, not
    /// in flight, and not waiting for a retry. `ready`: the caller's own guards (joined
    /// the mesh) allow it.
    #[allow(clippy::too_many_arguments)]
    pub fn due(
        &mut self,
        view: &View,
        me: &str,
        now_ms: u64,
        wall_ms: u64,
        ready: bool,
        extra: &[Trigger],
        not_dead: impl Fn(&str) -> bool,
    ) -> Vec<Trigger> {
        if !self.enabled() {
            return Vec::new();
        }
        let mut mine = Vec::new();
        for t in self.derive(view, wall_ms, extra) {
            // (An id its record could not hold would be sent again forever: never sent.)
            if view.notified.contains_key(&notified_hash(&t.id))
                || t.at_ms.saturating_add(self.cfg.max_age_ms) < wall_ms
                || t.id.len() > MAX_ID_BYTES
                || t.id.chars().any(char::is_control)
            {
                continue;
            }
            let sends = self.cfg.kinds.contains(&t.kind);
            let all = candidates(view, t.kind, me, sends, &not_dead);
            if owner(&t.id, all) == Some(me) {
                mine.push(t);
            }
        }
        // Retries of triggers gone (notified, cleared, aged out, owned elsewhere) go.
        let ids: BTreeSet<&str> = mine.iter().map(|t| t.id.as_str()).collect();
        self.retries.retain(|id, _| ids.contains(id.as_str()));
        self.status.pending = mine.len();
        if !ready || self.ready_ms.is_none_or(|r| now_ms < r) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for t in mine {
            if self.in_flight.contains_key(&t.id)
                || self.retries.get(&t.id).is_some_and(|r| now_ms < r.next_ms)
            {
                continue;
            }
            let t = match t.kind {
                TriggerKind::Digest => {
                    let period = self.cfg.digest_period_ms.max(1);
                    digest(view, (t.at_ms / period).saturating_sub(1), period)
                }
                _ => t,
            };
            self.in_flight.insert(t.id.clone(), t.clone());
            out.push(t);
        }
        out
    }

    /// A send ended. The fact to write when it was delivered or refused for good;
    /// otherwise it is tried again after a backoff (`jitter` drawn by the caller).
    pub fn finished(
        &mut self,
        id: &str,
        result: SendResult,
        me: &str,
        now_ms: u64,
        wall_ms: u64,
        jitter: u64,
    ) -> Option<NotifiedFact> {
        let t = self.in_flight.remove(id)?;
        let attempts = self.retries.get(id).map_or(0, |r| r.attempts) + 1;
        let outcome = match result {
            SendResult::Delivered => Outcome::Delivered,
            SendResult::Refused(why) => {
                self.status.last_error = Some(format!("{id}: refused for good: {why}"));
                Outcome::Refused
            }
            SendResult::Failed(why) => {
                self.status.last_error = Some(format!("{id}: {why} (try {attempts})"));
                let wait = backoff_ms(
                    attempts,
                    self.cfg.retry_base_ms,
                    self.cfg.retry_max_ms,
                    jitter,
                );
                self.retries.insert(
                    id.to_string(),
                    Retry {
                        attempts,
                        next_ms: now_ms.saturating_add(wait),
                    },
                );
                return None;
            }
        };
        self.retries.remove(id);
        self.status.delivered += 1;
        Some(NotifiedFact {
            id: t.id,
            kind: t.kind,
            story: t.story_key,
            by: me.to_string(),
            at_ms: wall_ms,
            attempts,
            outcome,
        })
    }

    pub fn status(&self) -> NotifyStatus {
        NotifyStatus {
            in_flight: self.in_flight.len(),
            ..self.status.clone()
        }
    }
}

#[cfg(test)]
mod tests;
