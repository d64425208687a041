//! Claim rules: who wins a resource, when a lease has expired, when another node may take
//! it over, and which planned work would collide with work in flight.
//!
//! This module owns the one place that decides winners (docs/DESIGN.md §5.2). It never reads a
//! clock and never does I/O: time always comes in as `now_ms`, a reading of the
//! *observer's* monotonic clock, so the simulator can drive it with a virtual clock. The
//! holder's wall clock (`ClaimFact::written_at_ms`) is for display only and never decides
//! anything.
//!
//! The pieces:
//! - [`Resource`], [`ClaimFact`], [`ReleaseFact`]: the facts stored in the document under
//!   `claim/<claim-id>` and `release/<claim-id>`.
//! - [`Claims`]: a pure, order-independent fold of those facts: fencing tokens, winners,
//!   all-or-nothing holds.
//! - [`LeaseObserver`]: node-local memory of when each claim was first seen and last
//!   renewed, which turns heartbeats into expiry and takeover decisions.
//! - [`LeaseConfig`]: the timing knobs and the rule that keeps them sane.
//! - [`predict_conflict`] and [`CoChange`]: will planned files collide with work in flight?

use crate::core::model::{normalize_repo_path, InputError, Phase};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

mod claims;
mod conflict;
mod expiry;

pub use claims::{Claims, Floor};
pub use conflict::*;
pub use expiry::*;

// ---------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------

/// Something a claim can hold: one phase of one story, one file of the repository, the
/// merge gate of an origin branch, or the move to a new epoch.
///
/// Written as `story:<key>/<phase>` (`story:S-0042@ab12cd/implement`), `file:<path>`
/// (`file:src/lease.rs`), `gate:<origin>#<branch>` (`gate:ssh://git@host/r.git#main`) or
/// `epoch:<n>`, in the document and on the wire. Review, rework and merge repeat
/// in rounds after a rejection; round r > 0 is written `story:<key>/<phase>.<r>`, so each
/// round is a fresh resource with its own tokens.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Story {
        story: String,
        phase: Phase,
        round: u32,
    },
    /// A normalised, repo-relative path (see [`Resource::file`]).
    File(String),
    /// The merge gate of one origin branch (see [`Resource::gate`]): merge claims on a
    /// remote origin hold it, so landings take turns through the mesh.
    Gate(String),
    /// The move to epoch `n` (docs/DESIGN.md §3.5): one proposer wins it through settle,
    /// and while it is open no node claims or takes over anything else.
    Epoch(u64),
}

/// Longest gate name, in bytes.
pub const MAX_GATE_NAME: usize = 512;

/// Why a resource string was rejected. Each names the input and what a valid one is.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("resource {0:?} has no known kind; write `story:<key>/<phase>`, `file:<path>`, `gate:<origin>#<branch>` or `epoch:<n>`")]
    UnknownKind(String),
    #[error("resource {0:?} names no phase; write `story:<key>/<phase>`, e.g. `story:S-0042@ab12cd/implement`")]
    MissingPhase(String),
    #[error("resource {input:?} names unknown phase {phase:?}; use one of refine, research, plan, plan_review, implement, review, rework, merge")]
    UnknownPhase { input: String, phase: String },
    #[error("resource {0:?} has an invalid story key; a key is non-empty, without `/`, whitespace or control characters")]
    BadStory(String),
    #[error("resource {input:?}: {source}")]
    BadPath { input: String, source: InputError },
    #[error("resource {0:?} has an invalid gate name; a gate is `gate:<origin>#<branch>`, non-empty, at most 512 bytes, without whitespace or control characters")]
    BadGate(String),
    #[error("resource {0:?} names no epoch; an epoch is `epoch:<n>`, n from 1")]
    BadEpoch(String),
}

impl Resource {
    /// A story phase. Fails if `story` could not round-trip through the string form.
    pub fn story(story: &str, phase: Phase) -> Result<Resource, ResourceError> {
        Resource::story_round(story, phase, 0)
    }

    /// A story phase in a given round (0 is the first).
    pub fn story_round(story: &str, phase: Phase, round: u32) -> Result<Resource, ResourceError> {
        if !valid_story_key(story) {
            return Err(ResourceError::BadStory(story.to_string()));
        }
        Ok(Resource::Story {
            story: story.to_string(),
            phase,
            round,
        })
    }

    /// A file lock on `path`, normalised (`./a/../b` becomes `b`). Absolute paths and paths
    /// escaping the repository are rejected with the error `normalize_repo_path` gives.
    pub fn file(path: &str) -> Result<Resource, InputError> {
        Ok(Resource::File(normalize_repo_path(path)?))
    }

    /// The merge gate of `branch` at `origin` (an origin URL without credentials):
    /// `gate:<origin>#<branch>`.
    pub fn gate(origin: &str, branch: &str) -> Result<Resource, ResourceError> {
        let name = format!("{origin}#{branch}");
        if !valid_gate_name(&name) {
            return Err(ResourceError::BadGate(name));
        }
        Ok(Resource::Gate(name))
    }

    /// The story this resource belongs to, if it is a story phase.
    pub fn story_key(&self) -> Option<&str> {
        match self {
            Resource::Story { story, .. } => Some(story),
            Resource::File(_) | Resource::Gate(_) | Resource::Epoch(_) => None,
        }
    }

    /// The epoch this resource moves to, if it is an epoch's.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Resource::Epoch(n) => Some(*n),
            _ => None,
        }
    }
}

fn valid_gate_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_GATE_NAME
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn valid_story_key(key: &str) -> bool {
    !key.is_empty()
        && !key
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Story {
                story,
                phase,
                round: 0,
            } => write!(f, "story:{story}/{phase}"),
            Resource::Story {
                story,
                phase,
                round,
            } => write!(f, "story:{story}/{phase}.{round}"),
            Resource::File(path) => write!(f, "file:{path}"),
            Resource::Gate(name) => write!(f, "gate:{name}"),
            Resource::Epoch(n) => write!(f, "epoch:{n}"),
        }
    }
}

impl FromStr for Resource {
    type Err = ResourceError;

    fn from_str(s: &str) -> Result<Resource, ResourceError> {
        if let Some(rest) = s.strip_prefix("story:") {
            let (story, phase) = rest
                .rsplit_once('/')
                .ok_or_else(|| ResourceError::MissingPhase(s.to_string()))?;
            let unknown = || ResourceError::UnknownPhase {
                input: s.to_string(),
                phase: phase.to_string(),
            };
            let (name, round) = match phase.split_once('.') {
                Some((name, r)) => match r.parse::<u32>() {
                    Ok(n) if n > 0 && !r.starts_with('0') => (name, n),
                    _ => return Err(unknown()),
                },
                None => (phase, 0),
            };
            let phase = Phase::parse(name).ok_or_else(unknown)?;
            if !valid_story_key(story) {
                return Err(ResourceError::BadStory(s.to_string()));
            }
            Ok(Resource::Story {
                story: story.to_string(),
                phase,
                round,
            })
        } else if let Some(path) = s.strip_prefix("file:") {
            Resource::file(path).map_err(|source| ResourceError::BadPath {
                input: s.to_string(),
                source,
            })
        } else if let Some(name) = s.strip_prefix("gate:") {
            if !valid_gate_name(name) {
                return Err(ResourceError::BadGate(s.to_string()));
            }
            Ok(Resource::Gate(name.to_string()))
        } else if let Some(n) = s.strip_prefix("epoch:") {
            match n.parse::<u64>() {
                Ok(n) if n >= 1 && n.to_string() == s["epoch:".len()..] => Ok(Resource::Epoch(n)),
                _ => Err(ResourceError::BadEpoch(s.to_string())),
            }
        } else {
            Err(ResourceError::UnknownKind(s.to_string()))
        }
    }
}

impl Serialize for Resource {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Resource, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------
// Facts
// ---------------------------------------------------------------------------------------

/// A claim as stored in the document under `claim/<claim-id>`, written once by its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimFact {
    /// Every resource claimed, with its fencing token (one more than the highest token the
    /// holder had seen for that resource when it wrote the claim).
    pub resources: Vec<(Resource, u64)>,
    /// The holder's peer id.
    pub holder: String,
    /// The lease length the holder asked for, in ms.
    pub ttl_ms: u64,
    /// The holder's wall clock when it wrote the claim, ms since the epoch. Display only.
    pub written_at_ms: u64,
    /// Which attempt at this work this is (1 for the first).
    pub attempt: u32,
    /// The claim whose counted result this work builds on (the story's previous step when
    /// the claim was written); `None` for a story's first step. In a token tie between
    /// finished claims, the one later work built on wins: see [`Claims::winner`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

impl ClaimFact {
    /// The repo-relative paths of the `file:` resources this claim locks.
    pub fn files(&self) -> Vec<String> {
        self.resources
            .iter()
            .filter_map(|(r, _)| match r {
                Resource::File(f) => Some(f.clone()),
                _ => None,
            })
            .collect()
    }

    /// The token this claim carries for `resource`: the highest it lists, if any.
    pub fn token_of(&self, resource: &Resource) -> Option<u64> {
        self.resources
            .iter()
            .filter(|(r, _)| r == resource)
            .map(|(_, t)| *t)
            .max()
    }
}

/// Why a claim ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The work finished and its result was written.
    Done,
    /// The claim lost a resource after settling (another claim won).
    Lost,
    /// The holder gave the work up for a reason that is not the work's fault (shutting
    /// down, or restarted: a restarting node releases what its previous run held).
    Abandoned,
    /// The holder's lease expired (it died, stalled or was partitioned away) and another
    /// node took the work over, or the holder noticed its own lease had expired.
    Expired,
    /// Never started: lost at settle, or could not sync with every alive peer in time.
    /// Not an attempt at the work.
    Unsettled,
    /// The holder stopped cleanly (SIGTERM, Ctrl-C) and handed the work back. Not a
    /// failed attempt: the work itself did nothing wrong.
    Shutdown,
    /// The work itself failed: the executor failed, tests failed, it made no change, or
    /// the fence refused it. The note says why.
    Failed,
    /// The git origin was unavailable (unreachable, failing, refusing our credentials):
    /// not an attempt at the work, and it blames nobody.
    Unavailable,
}

impl ReleaseReason {
    /// Its name, as the wire, the audit trail and `/metrics` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Done => "done",
            ReleaseReason::Lost => "lost",
            ReleaseReason::Abandoned => "abandoned",
            ReleaseReason::Expired => "expired",
            ReleaseReason::Unsettled => "unsettled",
            ReleaseReason::Shutdown => "shutdown",
            ReleaseReason::Failed => "failed",
            ReleaseReason::Unavailable => "unavailable",
        }
    }

    /// The attempt failed because of the work (counts toward `MAX_ATTEMPTS`).
    pub fn blames_work(self) -> bool {
        self == ReleaseReason::Failed
    }

    /// The attempt ended because its holder went away, not because of the work: it died,
    /// stalled, restarted or lost the lease (counts toward `MAX_TAKEOVERS`). A clean
    /// shutdown is neither: it blames nobody.
    pub fn blames_holder(self) -> bool {
        matches!(
            self,
            ReleaseReason::Abandoned | ReleaseReason::Expired | ReleaseReason::Lost
        )
    }
}

/// A release as stored in the document under `release/<claim-id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseFact {
    pub why: ReleaseReason,
    /// Free text for humans: a failure reason, who took the work over.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// A claim id, unique per writer: `<peer>-<n>`.
///
/// The full peer id is used (not a short tag) because two writers creating the same
/// document key would silently lose one of the two facts. `n` must never repeat for this
/// peer, across restarts too (a persisted counter, or one seeded from the start time).
pub fn claim_id(peer: &str, n: u64) -> String {
    format!("{peer}-{n}")
}

/// The number of `peer`'s claim `id` (the inverse of [`claim_id`]); `None` for another
/// peer's claim or an id not of that form.
pub fn claim_number(peer: &str, id: &str) -> Option<u64> {
    id.strip_prefix(peer)?.strip_prefix('-')?.parse().ok()
}

#[cfg(test)]
mod tests;
