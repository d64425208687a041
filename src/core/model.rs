//! Plain data shared by every module: stories, phases, statuses, node facts and the
//! heartbeat. No I/O, no clocks, no automerge: just types, their limits and validation.
//!
//! The vocabulary (ids like `S-0042`, statuses, phase names) follows ai-sdlc so a team
//! importing a backlog from it sees the same words.

pub use super::imported::Imported;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
pub use thin_vec::ThinVec;

/// Longest story title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest story body, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most planned files on one story.
pub const MAX_FILES: usize = 256;
/// Longest planned file path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Most dependencies on one story.
pub const MAX_DEPENDS: usize = 64;
/// Most labels on one story, and the longest label.
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_CHARS: usize = 64;
/// Story priority range: lower runs first.
pub const PRIORITY_MIN: u32 = 1;
pub const PRIORITY_MAX: u32 = 999;
pub const PRIORITY_DEFAULT: u32 = 100;

/// The gossip topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    Heartbeat,
    Events,
}

/// The phases a story moves through, in ai-sdlc's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Refine,
    Research,
    Plan,
    PlanReview,
    Implement,
    Review,
    Rework,
    Merge,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Refine,
        Phase::Research,
        Phase::Plan,
        Phase::PlanReview,
        Phase::Implement,
        Phase::Review,
        Phase::Rework,
        Phase::Merge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Refine => "refine",
            Phase::Research => "research",
            Phase::Plan => "plan",
            Phase::PlanReview => "plan_review",
            Phase::Implement => "implement",
            Phase::Review => "review",
            Phase::Rework => "rework",
            Phase::Merge => "merge",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A story's derived status (never stored: the view computes it from facts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoryStatus {
    Backlog,
    Ready,
    InProgress,
    /// Landed on main. (Called `done` before 0.2; still read under that name.)
    #[serde(alias = "done")]
    Merged,
    Blocked,
    /// An operator cancelled it: nothing more of it runs or lands.
    Cancelled,
}

impl StoryStatus {
    pub const ALL: [StoryStatus; 6] = [
        StoryStatus::Backlog,
        StoryStatus::Ready,
        StoryStatus::InProgress,
        StoryStatus::Merged,
        StoryStatus::Blocked,
        StoryStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StoryStatus::Backlog => "backlog",
            StoryStatus::Ready => "ready",
            StoryStatus::InProgress => "in-progress",
            StoryStatus::Merged => "merged",
            StoryStatus::Blocked => "blocked",
            StoryStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for StoryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a user asks for when adding a story, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewStory {
    pub title: String,
    pub body: String,
    pub priority: Option<u32>,
    /// Story ids (display ids like `S-0042`, or full keys) this one depends on.
    pub depends_on: Vec<String>,
    pub files: Vec<String>,
    pub labels: Vec<String>,
    /// Progress and fields from the tracker it is imported from (`mesh-agent import`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<Imported>,
}

/// The story fact as stored in the document, written once by its creator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoryFact {
    /// Number allocated by the creator (max seen + 1).
    pub number: u32,
    /// Creator's peer id. (Shared: a document's decoded facts hold one copy of each
    /// author's id, ~70 bytes a story.)
    pub created_by: Arc<str>,
    /// Creator's wall clock, milliseconds since the epoch: display and age ordering only.
    pub created_at_ms: u64,
    pub title: Box<str>,
    #[serde(default)]
    pub body: Box<str>,
    pub priority: u32,
    /// Story keys (not display ids) this one depends on.
    #[serde(default)]
    pub depends_on: ThinVec<String>,
    #[serde(default)]
    pub files: ThinVec<Arc<str>>,
    #[serde(default)]
    pub labels: ThinVec<String>,
    /// Where it came from (`cli`, `github:owner/repo#7`, ...): inline when short, as most
    /// are (no allocation).
    #[serde(default)]
    pub source: smol_str::SmolStr,
    /// Progress and fields from the tracker it was imported from, if it was. (Boxed:
    /// most stories are not, and inline it took 128 of the fact's 312 bytes.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<Box<Imported>>,
}

impl StoryFact {
    /// Its planned files, as owned paths.
    pub fn planned_files(&self) -> Vec<String> {
        self.files.iter().map(|f| f.to_string()).collect()
    }

    /// The fact as its creator writes it into the document: fields at their defaults
    /// left out (every reader, since the first, defaults them), ~40 bytes of a typical
    /// story's ~560 that every replica keeps in memory, on disk and on the wire. The
    /// API serializes the fact itself, every field present.
    pub fn for_document(&self) -> impl Serialize + '_ {
        StoryInDocument {
            number: self.number,
            created_by: &self.created_by,
            created_at_ms: self.created_at_ms,
            title: &self.title,
            body: &self.body,
            priority: self.priority,
            depends_on: &self.depends_on,
            files: &self.files,
            labels: &self.labels,
            source: &self.source,
            imported: self.imported.as_deref(),
        }
    }
}

/// [`StoryFact::for_document`]: the same fields, in the same order.
#[derive(Serialize)]
struct StoryInDocument<'a> {
    number: u32,
    created_by: &'a str,
    created_at_ms: u64,
    title: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    body: &'a str,
    priority: u32,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    depends_on: &'a [String],
    #[serde(skip_serializing_if = "<[Arc<str>]>::is_empty")]
    files: &'a [Arc<str>],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    labels: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    imported: Option<&'a Imported>,
}

/// A node's slow-changing description, written on join or change (never per heartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFact {
    pub roles: Vec<String>,
    pub capacity: u32,
    pub version: String,
    /// The writing run's incarnation (its start time): the description of the latest run
    /// counts, so a replay of an older one by anyone changes nothing (0: written before
    /// the field existed).
    #[serde(default)]
    pub incarnation: u64,
}

/// The gossip heartbeat (never stored in the document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Changes on every restart (the sender's start time); with `seq` it orders beats.
    pub incarnation: u64,
    pub seq: u64,
    pub roles: Vec<String>,
    /// Jobs the sender would take now: 0 while it claims nothing (work off, off the
    /// roster, out of allowance).
    pub free_capacity: u32,
    /// SHA-256 of the sender's sorted document heads.
    pub heads_digest: [u8; 32],
    /// Sender's wall clock in ms, for display only.
    pub sent_at_ms: u64,
    /// Claims the sender holds and is working on, by number (the claim id is
    /// `claim_id(sender, n)`: a beat names only its sender's claims, and a number takes a
    /// few bytes where an id takes ~70): each beat renews their leases.
    pub claims: Vec<u64>,
    /// Peers whose last `suspect_after_missed` probes by the sender went unanswered
    /// (docs/DESIGN.md §4): its peers probe them too, and a named peer refutes with a
    /// newer beat.
    pub suspects: Vec<Suspicion>,
    /// How many members the sender counts alive or suspect, itself included: a peer that
    /// keeps counting more than this node knows someone it does not (discovery).
    pub members: u32,
    /// The sender's epoch (`Doc::epoch_root`; `None`: a mesh's first document). A peer
    /// on another epoch is alive, but no node syncs with it (DESIGN.md §3.5).
    pub epoch: Option<[u8; 32]>,
}

/// "I have had no answer from `peer` for `silent_ms`", about the peer's beat
/// (`incarnation`, `seq`) the sender knew: a newer beat refutes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspicion {
    pub peer: String,
    pub incarnation: u64,
    pub seq: u64,
    pub silent_ms: u64,
}

/// What happened, on the events topic (docs/DESIGN.md §1.5, §9: progress is gossip, never document).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Claimed,
    PhaseStarted,
    PhaseFinished,
    PhaseFailed,
    Progress,
    StoryCompleted,
    StoryBlocked,
    RebaseNeeded,
    MainUpdated,
    PatternDiscovered,
    /// A story made no progress (no counted result, nothing worked on along its chain of
    /// waits) for longer than `stall_after_ms`; the detail says what it waits for.
    Stalled,
    /// Local only: a peer this node saw join or die.
    PeerJoined,
    PeerDead,
    /// Local only: a peer this node refuses (not on the roster, or revoked), or takes
    /// back once admitted.
    PeerRefused,
    /// The sender is stopping cleanly (its claims are released): count it dead now.
    NodeLeft,
    /// A job could not reach the origin: handed back, no attempt counted.
    PhaseDeferred,
    /// The sender's origin breaker opened: jobs in a row could not reach the origin, so
    /// it claims one job at a time to probe it.
    GitUnavailable,
    /// The origin answers the sender again after an outage.
    GitAvailable,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Claimed => "claimed",
            EventKind::PhaseStarted => "phase_started",
            EventKind::PhaseFinished => "phase_finished",
            EventKind::PhaseFailed => "phase_failed",
            EventKind::Progress => "progress",
            EventKind::StoryCompleted => "story_completed",
            EventKind::StoryBlocked => "story_blocked",
            EventKind::RebaseNeeded => "rebase_needed",
            EventKind::MainUpdated => "main_updated",
            EventKind::PatternDiscovered => "pattern_discovered",
            EventKind::Stalled => "stalled",
            EventKind::PeerJoined => "peer_joined",
            EventKind::PeerDead => "peer_dead",
            EventKind::PeerRefused => "peer_refused",
            EventKind::NodeLeft => "node_left",
            EventKind::PhaseDeferred => "phase_deferred",
            EventKind::GitUnavailable => "git_unavailable",
            EventKind::GitAvailable => "git_available",
        }
    }
}

/// One event of the mesh-wide timeline. `(node, seq)` identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The node it happened on.
    pub node: String,
    /// That node's event number: from incarnation × 1000, so never reused across
    /// restarts; local-only observations carry `timeline::LOCAL_SEQ_BIT`.
    pub seq: u64,
    /// The node's wall clock, ms since the epoch.
    pub at_ms: u64,
    pub kind: EventKind,
    /// The story's display id, if about a story.
    #[serde(default)]
    pub story: String,
    #[serde(default)]
    pub phase: Option<Phase>,
    #[serde(default)]
    pub round: u32,
    /// One line for humans.
    #[serde(default)]
    pub detail: String,
}

/// Longest event detail, in bytes (longer ones are cut).
pub const MAX_EVENT_DETAIL: usize = 1024;

/// A reviewer's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approve,
    Reject,
}

/// What a phase hands to the next one (docs/DESIGN.md §7).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Handoff {
    pub summary: String,
    pub findings: Vec<String>,
    pub decisions: Vec<String>,
    pub warnings: Vec<String>,
    pub suggested_approach: String,
    pub files: Vec<String>,
    pub verdict: Option<Verdict>,
    /// 0..=100.
    pub confidence: Option<u8>,
    /// Tokens the job used in all (`tokens_in + tokens_out` when those are given).
    pub tokens: u64,
    /// Tokens read (prompt, context) and written (completion), where the agent says.
    #[serde(skip_serializing_if = "is_zero")]
    pub tokens_in: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub tokens_out: u64,
    /// What the job cost, in millionths of a US dollar.
    pub cost_micro_usd: u64,
    /// Conventions, patterns, testing strategies and pitfalls learned on the way: they
    /// become knowledge facts that later jobs receive.
    pub learnings: Vec<Learning>,
    /// The commit this phase produced or landed (filled in by the node's git shell, not
    /// by the executor).
    pub commit: Option<String>,
    /// The files the commit changed (filled in by the node's git shell for implement and
    /// rework).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed_files: Vec<String>,
    /// What the node's security scan found in the change's added lines, one line each
    /// (filled in by the node's git shell, never by the executor).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub concerns: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What kind of thing needs a human (an attention item's kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The executor's confidence was below the threshold.
    LowConfidence,
    /// The plan or the change touches at least the configured number of files (an
    /// architecture decision).
    LargeChange,
    /// The security scan found something in the change.
    Security,
    /// The story is labelled `approval`: its plan needs a human before implement.
    Approval,
    /// Attempts, takeovers or review rounds ran out: the story is blocked.
    Blocked,
    /// The story spent its cost limit: no phase of it starts until an operator raises
    /// the limit or dismisses the item.
    Budget,
}

impl AlertKind {
    pub const ALL: [AlertKind; 6] = [
        AlertKind::LowConfidence,
        AlertKind::LargeChange,
        AlertKind::Security,
        AlertKind::Approval,
        AlertKind::Blocked,
        AlertKind::Budget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::LowConfidence => "low_confidence",
            AlertKind::LargeChange => "large_change",
            AlertKind::Security => "security",
            AlertKind::Approval => "approval",
            AlertKind::Blocked => "blocked",
            AlertKind::Budget => "budget",
        }
    }

    pub fn parse(s: &str) -> Option<AlertKind> {
        let s = s.replace('-', "_");
        AlertKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a result needs a human before its story goes on: recorded in the result by the
/// node that wrote it, from that node's thresholds (`core::attention`), so every node
/// holds the same gate whatever its own config says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    pub kind: AlertKind,
    pub detail: String,
}

/// What kind of thing a knowledge entry teaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnowledgeKind {
    Convention,
    Pattern,
    Testing,
    Pitfall,
}

impl KnowledgeKind {
    pub const ALL: [KnowledgeKind; 4] = [
        KnowledgeKind::Convention,
        KnowledgeKind::Pattern,
        KnowledgeKind::Testing,
        KnowledgeKind::Pitfall,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KnowledgeKind::Convention => "convention",
            KnowledgeKind::Pattern => "pattern",
            KnowledgeKind::Testing => "testing",
            KnowledgeKind::Pitfall => "pitfall",
        }
    }

    pub fn parse(s: &str) -> Option<KnowledgeKind> {
        KnowledgeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for KnowledgeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing learned, as a handoff carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learning {
    pub kind: KnowledgeKind,
    pub text: String,
}

/// A knowledge entry in the document: `knowledge/<content hash>`, so the same lesson
/// learned twice is one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnowledgeFact {
    pub kind: KnowledgeKind,
    pub text: String,
    /// The story it was learned on (empty when a human added it).
    #[serde(default)]
    pub story: String,
    pub author: String,
    pub written_at_ms: u64,
}

/// A phase result, written once under its claim: `result/<story>/<phase>/<claim-id>`.
/// It counts only if its claim is the resource's top claim (fencing in the view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultFact {
    pub story: String,
    pub phase: Phase,
    /// Review/rework/merge repeat in rounds: 0 first, one more after each rejection.
    #[serde(default)]
    pub round: u32,
    pub claim: String,
    pub token: u64,
    pub holder: String,
    pub written_at_ms: u64,
    pub handoff: Handoff,
    /// What needs a human before the story goes on past this result (empty: nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalations: Vec<Escalation>,
}

/// A landing on main, written by the merge holder: `merge/<story>/<claim-id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeFact {
    pub story: String,
    /// The merge round this landing was made in.
    #[serde(default)]
    pub round: u32,
    pub claim: String,
    pub token: u64,
    pub holder: String,
    pub commit: String,
    pub written_at_ms: u64,
}

/// The phases every story runs, in order, in this release (refine and plan review are
/// optional and off; rework follows a rejecting review once the executors land).
pub const PIPELINE: [Phase; 5] = [
    Phase::Research,
    Phase::Plan,
    Phase::Implement,
    Phase::Review,
    Phase::Merge,
];

/// After this many failed attempts at one step (the work failed: executor, tests, no
/// change, fence refusal), a story is blocked and needs a human.
pub const MAX_ATTEMPTS: u32 = 3;

/// After this many takeovers at one step (its holder died, stalled, restarted or shut
/// down: not the work's fault), a story is blocked too: a story that keeps killing its
/// holders must stop.
pub const MAX_TAKEOVERS: u32 = 10;

/// Errors in user-provided story input. Each names the field, the problem and the limit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("title is empty: give a short summary with --title")]
    EmptyTitle,
    #[error("title is {0} characters; the limit is {MAX_TITLE_CHARS}")]
    TitleTooLong(usize),
    #[error("title contains a control character; use a single line of text")]
    TitleControl,
    #[error("body is {0} bytes; the limit is {MAX_BODY_BYTES}")]
    BodyTooLong(usize),
    #[error(
        "priority {0} is out of range; use {PRIORITY_MIN}..={PRIORITY_MAX} (lower runs first)"
    )]
    Priority(u32),
    #[error("{0} planned files; the limit is {MAX_FILES}")]
    TooManyFiles(usize),
    #[error("{0} dependencies; the limit is {MAX_DEPENDS}")]
    TooManyDepends(usize),
    #[error(
        "{0} labels (or a label over {MAX_LABEL_CHARS} characters); the limit is {MAX_LABELS}"
    )]
    Labels(usize),
    #[error("file path {path:?} {why}")]
    BadPath { path: String, why: &'static str },
    #[error("unknown story {0:?}: see `mesh-agent story list`")]
    UnknownStory(String),
    #[error("story id {0:?} is ambiguous: use the full id shown by `story show`")]
    AmbiguousStory(String),
    #[error("{0}")]
    Imported(&'static str),
}

/// Normalises a repo-relative path: strips `./`, collapses `a/../b`, and rejects absolute
/// paths and anything that escapes the repository root.
pub fn normalize_repo_path(path: &str) -> Result<String, InputError> {
    let bad = |why| InputError::BadPath {
        path: path.to_string(),
        why,
    };
    if path.is_empty() {
        return Err(bad("is empty"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(bad("is longer than 1024 bytes"));
    }
    if path.starts_with('/') || path.starts_with('\\') || path.contains(':') {
        return Err(bad(
            "is absolute; use a path relative to the repository root",
        ));
    }
    if path.chars().any(|c| c.is_control()) {
        return Err(bad("contains a control character"));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(bad("escapes the repository root"));
                }
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(bad("names the repository root, not a file"));
    }
    Ok(parts.join("/"))
}

/// A story's fields after validation (dependencies are resolved against the view later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidStory {
    pub title: String,
    pub body: String,
    pub priority: u32,
    pub files: Vec<String>,
    pub labels: Vec<String>,
    pub imported: Option<Imported>,
}

impl NewStory {
    /// Checks every field against its limit and normalises file paths. Dependencies are
    /// resolved later, against the view.
    pub fn validate(&self) -> Result<ValidStory, InputError> {
        let title = self.title.trim().to_string();
        if title.is_empty() {
            return Err(InputError::EmptyTitle);
        }
        let n = title.chars().count();
        if n > MAX_TITLE_CHARS {
            return Err(InputError::TitleTooLong(n));
        }
        if title.chars().any(|c| c.is_control()) {
            return Err(InputError::TitleControl);
        }
        if self.body.len() > MAX_BODY_BYTES {
            return Err(InputError::BodyTooLong(self.body.len()));
        }
        let priority = self.priority.unwrap_or(PRIORITY_DEFAULT);
        if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&priority) {
            return Err(InputError::Priority(priority));
        }
        if self.files.len() > MAX_FILES {
            return Err(InputError::TooManyFiles(self.files.len()));
        }
        if self.depends_on.len() > MAX_DEPENDS {
            return Err(InputError::TooManyDepends(self.depends_on.len()));
        }
        if self.labels.len() > MAX_LABELS
            || self
                .labels
                .iter()
                .any(|l| l.chars().count() > MAX_LABEL_CHARS)
        {
            return Err(InputError::Labels(self.labels.len()));
        }
        let mut files = Vec::with_capacity(self.files.len());
        for f in &self.files {
            let f = normalize_repo_path(f.trim())?;
            if !files.contains(&f) {
                files.push(f);
            }
        }
        let labels = self
            .labels
            .iter()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if let Some(i) = &self.imported {
            i.check().map_err(InputError::Imported)?;
        }
        Ok(ValidStory {
            title,
            body: self.body.clone(),
            priority,
            files,
            labels,
            imported: self.imported.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_story_in_the_document_leaves_out_its_defaults_and_reads_back_the_same() {
        let full = StoryFact {
            number: 7,
            created_by: "alice".into(),
            created_at_ms: 1_000,
            title: "Add login".into(),
            body: "the body".into(),
            priority: 3,
            depends_on: ["S-0001@aaaa".to_string()].into_iter().collect(),
            files: ["src/a.rs".into()].into_iter().collect(),
            labels: ["ui".to_string()].into_iter().collect(),
            source: "github:o/r#7".into(),
            imported: Some(Box::default()),
        };
        // Every field set: the same bytes as the fact itself (no field forgotten, same
        // order).
        let doc = serde_json::to_string(&full.for_document()).unwrap();
        assert_eq!(doc, serde_json::to_string(&full).unwrap());
        let bare = StoryFact {
            body: Default::default(),
            depends_on: ThinVec::new(),
            files: ThinVec::new(),
            labels: ThinVec::new(),
            source: "".into(),
            imported: None,
            ..full
        };
        let doc = serde_json::to_string(&bare.for_document()).unwrap();
        for absent in [
            "body",
            "depends_on",
            "files",
            "labels",
            "source",
            "imported",
        ] {
            assert!(!doc.contains(&format!("\"{absent}\"")), "{absent} in {doc}");
        }
        let read: StoryFact = serde_json::from_str(&doc).unwrap();
        assert_eq!(read, bare);
    }

    #[test]
    fn paths_are_normalised_and_escapes_rejected() {
        assert_eq!(normalize_repo_path("./src//a/../b.rs").unwrap(), "src/b.rs");
        assert_eq!(normalize_repo_path("src\\lib.rs").unwrap(), "src/lib.rs");
        for bad in ["", "/etc/passwd", "../x", "a/../../x", ".", "C:/x", "a/\n"] {
            assert!(normalize_repo_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn story_input_limits_name_the_field() {
        let ok = NewStory {
            title: "  Add login  ".into(),
            files: vec!["src/a.rs".into(), "./src/a.rs".into()],
            ..Default::default()
        };
        let v = ok.validate().unwrap();
        assert_eq!(v.title, "Add login");
        assert_eq!(v.priority, PRIORITY_DEFAULT);
        assert_eq!(v.files, vec!["src/a.rs"], "duplicate paths collapse");

        let long = NewStory {
            title: "x".repeat(MAX_TITLE_CHARS + 1),
            ..Default::default()
        };
        assert!(long
            .validate()
            .unwrap_err()
            .to_string()
            .contains("limit is 200"));
        let empty = NewStory::default();
        assert_eq!(empty.validate().unwrap_err(), InputError::EmptyTitle);
        let prio = NewStory {
            title: "t".into(),
            priority: Some(0),
            ..Default::default()
        };
        assert!(prio.validate().unwrap_err().to_string().contains("1..=999"));
        let esc = NewStory {
            title: "t".into(),
            files: vec!["../../etc/passwd".into()],
            ..Default::default()
        };
        assert!(esc
            .validate()
            .unwrap_err()
            .to_string()
            .contains("escapes the repository root"));
    }

    #[test]
    fn phase_names_round_trip() {
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
        assert_eq!(Phase::parse("deploy"), None);
    }
}
