//! Claim rules: who wins a resource, when a lease has expired, when another node may take
//! it over, and which planned work would collide with work in flight.
//!
//! This module owns the one place that decides winners (DESIGN.md §5). It never reads a
//! clock and never does I/O: time always comes in as `now_ms`, a reading of the
//! *observer's* monotonic clock, so the simulator can drive it with a virtual clock. The
//! holder's wall clock (`ClaimFact::written_at_ms`) is for display only and never decides
//! anything.
//!
//! The pieces:
//! - [`Resource`], [`ClaimFact`], [`ReleaseFact`]: the facts stored in the document under
//!   `claims/<claim-id>` and `releases/<claim-id>`.
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

// ---------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------

/// Something a claim can hold: one phase of one story, or one file of the repository.
///
/// Written as `story:<key>/<phase>` (`story:S-0042@ab12cd/implement`) or `file:<path>`
/// (`file:src/lease.rs`), in the document and on the wire. Review, rework and merge repeat
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
}

/// Why a resource string was rejected. Each names the input and what a valid one is.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("resource {0:?} has no known kind; write `story:<key>/<phase>` or `file:<path>`")]
    UnknownKind(String),
    #[error("resource {0:?} names no phase; write `story:<key>/<phase>`, e.g. `story:S-0042@ab12cd/implement`")]
    MissingPhase(String),
    #[error("resource {input:?} names unknown phase {phase:?}; use one of refine, research, plan, plan_review, implement, review, rework, merge")]
    UnknownPhase { input: String, phase: String },
    #[error("resource {0:?} has an invalid story key; a key is non-empty, without `/`, whitespace or control characters")]
    BadStory(String),
    #[error("resource {input:?}: {source}")]
    BadPath { input: String, source: InputError },
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

    /// The story this resource belongs to, if it is a story phase.
    pub fn story_key(&self) -> Option<&str> {
        match self {
            Resource::Story { story, .. } => Some(story),
            Resource::File(_) => None,
        }
    }
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

/// A claim as stored in the document under `claims/<claim-id>`, written once by its holder.
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
}

impl ReleaseReason {
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

/// A release as stored in the document under `releases/<claim-id>`.
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

// ---------------------------------------------------------------------------------------
// Claims: the fold that decides winners
// ---------------------------------------------------------------------------------------

/// The highest claim seen for one resource.
#[derive(Debug, Clone)]
struct Top {
    token: u64,
    rank: TieRank,
    holder: String,
    claim: String,
}

/// How a claim fares in a token tie, by its release: a finished claim keeps its result
/// counted, an open claim may be running, and a claim released without a result (it never
/// started, failed, lost, or its holder restarted) gives way to both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TieRank {
    Done,
    Open,
    Void,
}

impl TieRank {
    fn of(release: Option<ReleaseReason>) -> TieRank {
        match release {
            Some(ReleaseReason::Done) => TieRank::Done,
            None => TieRank::Open,
            Some(_) => TieRank::Void,
        }
    }
}

impl Top {
    /// True if (token, rank, holder, claim) beats `self`: higher token, then the better
    /// tie rank, then lower holder id, then lower claim id. A total order, so the fold does
    /// not depend on insertion order.
    fn beaten_by(&self, token: u64, rank: TieRank, holder: &str, claim: &str) -> bool {
        (std::cmp::Reverse(token), rank, holder, claim)
            < (
                std::cmp::Reverse(self.token),
                self.rank,
                self.holder.as_str(),
                self.claim.as_str(),
            )
    }
}

/// Everything the claim and release facts say, folded. Built from the document's maps; the
/// result depends only on their contents, never on the order facts arrived in.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    claims: BTreeMap<String, ClaimFact>,
    released: BTreeMap<String, ReleaseReason>,
    top: BTreeMap<Resource, Top>,
    /// Claim ids with no release, in id order: the only candidates for `active` and
    /// `losing` (most claims of a long-lived mesh are released).
    open: Vec<String>,
}

impl Claims {
    /// Folds the claim facts (by claim id) and the release facts (by claim id).
    pub fn new(
        claims: &BTreeMap<String, ClaimFact>,
        releases: &BTreeMap<String, ReleaseFact>,
    ) -> Claims {
        Claims::from_owned(
            claims.clone(),
            releases
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// Like [`Claims::new`], taking ownership of the maps.
    pub fn from_owned(
        claims: BTreeMap<String, ClaimFact>,
        releases: BTreeMap<String, ReleaseFact>,
    ) -> Claims {
        let released: BTreeMap<String, ReleaseReason> =
            releases.into_iter().map(|(k, v)| (k, v.why)).collect();
        let mut top: BTreeMap<Resource, Top> = BTreeMap::new();
        for (id, claim) in &claims {
            let rank = TieRank::of(released.get(id).copied());
            for (resource, token) in &claim.resources {
                let candidate = || Top {
                    token: *token,
                    rank,
                    holder: claim.holder.clone(),
                    claim: id.clone(),
                };
                match top.get_mut(resource) {
                    Some(t) if !t.beaten_by(*token, rank, &claim.holder, id) => {}
                    Some(t) => *t = candidate(),
                    None => {
                        top.insert(resource.clone(), candidate());
                    }
                }
            }
        }
        let open = claims
            .keys()
            .filter(|id| !released.contains_key(*id))
            .cloned()
            .collect();
        Claims {
            claims,
            released,
            top,
            open,
        }
    }

    /// The token a new claim on `resource` must carry: one more than the highest token ever
    /// seen for it, released claims included; 1 if it was never claimed.
    pub fn next_token(&self, resource: &Resource) -> u64 {
        self.top
            .get(resource)
            .map_or(1, |t| t.token.saturating_add(1))
    }

    /// The claim id that currently wins `resource`: the claim with the highest token; among
    /// equal tokens a finished (`Done`) claim first, then an open one, then one released
    /// without a result; then the lowest holder id, then the lowest claim id. `None` if the
    /// resource was never claimed or that top claim was released: a lower, superseded claim
    /// never comes back.
    ///
    /// The rank in a tie is what keeps work from being voided by a claim that never ran: a
    /// claim written from a stale view, or one a crashing node wrote and its restart
    /// brought back, can tie a claim that settled and ran meanwhile; it must not become
    /// the top claim and un-count that result (seed 96953 of the clean simulation).
    ///
    /// Winning one resource is not holding: see [`Claims::holds`].
    pub fn winner(&self, resource: &Resource) -> Option<&str> {
        let top = self.top.get(resource)?;
        if self.released.contains_key(&top.claim) {
            None
        } else {
            Some(&top.claim)
        }
    }

    /// The top claim of `resource` whether or not it was released: the claim whose result
    /// counts (fencing in the view). A result written under any other claim is stale.
    pub fn top(&self, resource: &Resource) -> Option<&str> {
        self.top.get(resource).map(|t| t.claim.as_str())
    }

    /// The holder (peer id) of the claim that wins `resource`, if any.
    pub fn winner_holder(&self, resource: &Resource) -> Option<&str> {
        let top = self.top.get(resource)?;
        if self.released.contains_key(&top.claim) {
            None
        } else {
            Some(&top.holder)
        }
    }

    /// True if `resource` has ever been claimed (released claims included).
    pub fn ever_claimed(&self, resource: &Resource) -> bool {
        self.top.contains_key(resource)
    }

    /// True if the claim holds: it is not released, names at least one resource, and wins
    /// every resource it names. All-or-nothing: a claim that loses one resource holds none.
    pub fn holds(&self, claim_id: &str) -> bool {
        let Some(claim) = self.claims.get(claim_id) else {
            return false;
        };
        !claim.resources.is_empty()
            && !self.released.contains_key(claim_id)
            && claim
                .resources
                .iter()
                .all(|(r, _)| self.top.get(r).is_some_and(|t| t.claim == claim_id))
    }

    /// True if a release was written for the claim.
    pub fn is_released(&self, claim_id: &str) -> bool {
        self.released.contains_key(claim_id)
    }

    /// Why the claim was released, if it was.
    pub fn release_reason(&self, claim_id: &str) -> Option<ReleaseReason> {
        self.released.get(claim_id).copied()
    }

    /// The token `claim_id` carries for `resource`, if it names it.
    pub fn token_of(&self, claim_id: &str, resource: &Resource) -> Option<u64> {
        self.claims.get(claim_id)?.token_of(resource)
    }

    /// The claim fact with this id.
    pub fn claim(&self, claim_id: &str) -> Option<&ClaimFact> {
        self.claims.get(claim_id)
    }

    /// Every claim fact, by id (released and losing claims included).
    pub fn all(&self) -> impl Iterator<Item = (&str, &ClaimFact)> {
        self.claims.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The claims that hold (see [`Claims::holds`]), in claim id order.
    pub fn active(&self) -> impl Iterator<Item = (&str, &ClaimFact)> {
        self.unreleased().filter(|(id, _)| self.holds(id))
    }

    /// The claims with no release, in claim id order.
    fn unreleased(&self) -> impl Iterator<Item = (&str, &ClaimFact)> {
        self.open
            .iter()
            .filter_map(|id| self.claims.get(id).map(|c| (id.as_str(), c)))
    }

    /// The claims that hold and belong to `holder`, in claim id order.
    pub fn active_of<'a>(
        &'a self,
        holder: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a ClaimFact)> + 'a {
        self.active().filter(move |(_, c)| c.holder == holder)
    }

    /// Claims that are neither released nor holding: they lost a resource (or raced into a
    /// cycle with another claim) and their holder should write a `Lost` release.
    pub fn losing(&self) -> impl Iterator<Item = (&str, &ClaimFact)> {
        self.unreleased().filter(|(id, _)| !self.holds(id))
    }

    /// Each resource with a current winner, and that winning claim id, in resource order.
    pub fn winners(&self) -> impl Iterator<Item = (&Resource, &str)> {
        self.top.iter().filter_map(|(r, t)| {
            (!self.released.contains_key(&t.claim)).then_some((r, t.claim.as_str()))
        })
    }
}

// ---------------------------------------------------------------------------------------
// Timing configuration
// ---------------------------------------------------------------------------------------

/// Lease timing. All values in milliseconds.
///
/// The config file keys are `lease_ttl_ms`, `lease_grace_ms`, `settle_timeout_ms`,
/// `max_clock_drift_ms` and `message_timeout_ms`; errors name them that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// A lease expires when an observer has seen no renewal for this long.
    pub ttl_ms: u64,
    /// After expiry, how much longer an observer waits before taking the work over.
    pub grace_ms: u64,
    /// After writing a claim, how long the holder waits for sync before re-checking it wins.
    pub settle_timeout_ms: u64,
    /// The most two nodes' monotonic clocks may disagree in rate over one ttl.
    pub max_clock_drift_ms: u64,
    /// The longest a heartbeat or sync message is expected to take.
    pub message_timeout_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> LeaseConfig {
        LeaseConfig {
            ttl_ms: 10_000,
            grace_ms: 2_000,
            settle_timeout_ms: 1_000,
            max_clock_drift_ms: 1_000,
            message_timeout_ms: 1_000,
        }
    }
}

/// A lease configuration that breaks a rule. The message names the keys, their values and
/// the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseConfigError {
    #[error("invalid config: lease_ttl_ms = {ttl_ms} must be at least 2*max_clock_drift_ms + 4*message_timeout_ms = {min_ttl_ms} (max_clock_drift_ms = {max_clock_drift_ms}, message_timeout_ms = {message_timeout_ms}); raise lease_ttl_ms or lower the others")]
    TtlTooShort {
        ttl_ms: u64,
        min_ttl_ms: u64,
        max_clock_drift_ms: u64,
        message_timeout_ms: u64,
    },
    #[error("invalid config: 2*max_clock_drift_ms + 4*message_timeout_ms overflows (max_clock_drift_ms = {max_clock_drift_ms}, message_timeout_ms = {message_timeout_ms}); use values in milliseconds")]
    Overflow {
        max_clock_drift_ms: u64,
        message_timeout_ms: u64,
    },
    #[error("invalid config: {key} = 0 must be greater than 0")]
    Zero { key: &'static str },
    #[error("invalid config: settle_timeout_ms = {settle_timeout_ms} must be less than lease_ttl_ms = {ttl_ms}, so a claim settles before its lease could expire")]
    SettleTooLong { settle_timeout_ms: u64, ttl_ms: u64 },
}

impl LeaseConfig {
    /// Checks the rules:
    /// - `lease_ttl_ms >= 2*max_clock_drift_ms + 4*message_timeout_ms`: a lease must outlast
    ///   the worst disagreement of two clocks plus a few lost or slow heartbeats, or healthy
    ///   holders lose their work;
    /// - `lease_grace_ms`, `settle_timeout_ms` and `message_timeout_ms` are not zero;
    /// - `settle_timeout_ms < lease_ttl_ms`.
    pub fn validate(&self) -> Result<(), LeaseConfigError> {
        for (key, value) in [
            ("lease_ttl_ms", self.ttl_ms),
            ("lease_grace_ms", self.grace_ms),
            ("settle_timeout_ms", self.settle_timeout_ms),
            ("message_timeout_ms", self.message_timeout_ms),
        ] {
            if value == 0 {
                return Err(LeaseConfigError::Zero { key });
            }
        }
        let min_ttl_ms = self
            .max_clock_drift_ms
            .checked_mul(2)
            .and_then(|d| self.message_timeout_ms.checked_mul(4)?.checked_add(d))
            .ok_or(LeaseConfigError::Overflow {
                max_clock_drift_ms: self.max_clock_drift_ms,
                message_timeout_ms: self.message_timeout_ms,
            })?;
        if self.ttl_ms < min_ttl_ms {
            return Err(LeaseConfigError::TtlTooShort {
                ttl_ms: self.ttl_ms,
                min_ttl_ms,
                max_clock_drift_ms: self.max_clock_drift_ms,
                message_timeout_ms: self.message_timeout_ms,
            });
        }
        if self.settle_timeout_ms >= self.ttl_ms {
            return Err(LeaseConfigError::SettleTooLong {
                settle_timeout_ms: self.settle_timeout_ms,
                ttl_ms: self.ttl_ms,
            });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Leases on the observer's clock
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    first_seen_ms: u64,
    last_renewed_ms: u64,
    /// When this observer was first told the holder is dead (cleared when it lives again).
    dead_since_ms: Option<u64>,
}

/// One node's memory of the leases it has seen, on its own monotonic clock.
///
/// Nothing here trusts another node's clock. A claim is fresh from the moment this
/// observer first sees it (so a node that joins late, or syncs a claim late, never judges
/// it expired on arrival) and is renewed each time the holder's heartbeat lists it.
///
/// **Grace for a dead holder.** A lease expires `ttl` after its last renewal, or as soon
/// as its holder is judged dead. Takeover waits a further `grace` after expiry, where
/// expiry is the *earlier* of `last_renewed + ttl` and the moment this observer was first
/// told the holder is dead (recorded by [`LeaseObserver::takeover_allowed`], which is
/// why it takes `&mut self`). So a dead holder's work moves `grace` after its death was
/// noticed, never sooner, and never later than a silent holder's would. If the holder
/// comes back (a renewal, or a call with `holder_dead = false`), the death is forgotten.
///
/// Claims must be forgotten when released (see [`LeaseObserver::forget`] and
/// [`LeaseObserver::prune`]) to keep the map bounded.
#[derive(Debug, Clone, Default)]
pub struct LeaseObserver {
    seen: BTreeMap<String, Seen>,
}

impl LeaseObserver {
    pub fn new() -> LeaseObserver {
        LeaseObserver::default()
    }

    /// Notes that the claim exists. Only the first call counts: it starts the lease.
    pub fn observe_claim(&mut self, claim_id: &str, now_ms: u64) {
        self.seen.entry(claim_id.to_string()).or_insert(Seen {
            first_seen_ms: now_ms,
            last_renewed_ms: now_ms,
            dead_since_ms: None,
        });
    }

    /// The holder's heartbeat listed the claim at `now_ms`. Never moves time backwards. A
    /// renewal of a claim not yet seen also counts as its first sight.
    pub fn renew(&mut self, claim_id: &str, now_ms: u64) {
        self.observe_claim(claim_id, now_ms);
        if let Some(s) = self.seen.get_mut(claim_id) {
            s.last_renewed_ms = s.last_renewed_ms.max(now_ms);
            s.dead_since_ms = None;
        }
    }

    /// When this observer first saw the claim.
    pub fn first_seen_ms(&self, claim_id: &str) -> Option<u64> {
        self.seen.get(claim_id).map(|s| s.first_seen_ms)
    }

    /// When this observer last saw the claim renewed (its first sight if never renewed).
    pub fn last_renewed_ms(&self, claim_id: &str) -> Option<u64> {
        self.seen.get(claim_id).map(|s| s.last_renewed_ms)
    }

    /// True if the lease has expired on this observer's clock: no renewal for `ttl_ms`, or
    /// the holder is dead. A claim this observer has never seen is not expired (it is
    /// fresh from first sight). A clock reading earlier than the last renewal counts as no
    /// time passed.
    pub fn expired(&self, claim_id: &str, ttl_ms: u64, now_ms: u64, holder_dead: bool) -> bool {
        let Some(s) = self.seen.get(claim_id) else {
            return false;
        };
        holder_dead || now_ms.saturating_sub(s.last_renewed_ms) >= ttl_ms
    }

    /// When the lease expired (or will expire without renewal), on this observer's clock.
    fn expiry_ms(s: &Seen, ttl_ms: u64) -> u64 {
        let silent = s.last_renewed_ms.saturating_add(ttl_ms);
        match s.dead_since_ms {
            Some(dead) => silent.min(dead),
            None => silent,
        }
    }

    /// True if another node may take the claim's resources over: the lease expired at
    /// least `grace_ms` ago on this observer's clock. See the type's docs for how a dead
    /// holder counts; this call records the first moment the holder was reported dead.
    ///
    /// A claim never seen is observed now, and so is not yet takeable.
    pub fn takeover_allowed(
        &mut self,
        claim_id: &str,
        cfg: &LeaseConfig,
        now_ms: u64,
        holder_dead: bool,
    ) -> bool {
        self.observe_claim(claim_id, now_ms);
        let Some(s) = self.seen.get_mut(claim_id) else {
            return false;
        };
        if holder_dead {
            s.dead_since_ms.get_or_insert(now_ms);
        } else {
            s.dead_since_ms = None;
        }
        let s = *s;
        if !self.expired(claim_id, cfg.ttl_ms, now_ms, holder_dead) {
            return false;
        }
        now_ms >= Self::expiry_ms(&s, cfg.ttl_ms).saturating_add(cfg.grace_ms)
    }

    /// Drops what is known about the claim (after its release).
    pub fn forget(&mut self, claim_id: &str) {
        self.seen.remove(claim_id);
    }

    /// Forgets every claim that is released or no longer in `claims`.
    pub fn prune(&mut self, claims: &Claims) {
        self.seen
            .retain(|id, _| claims.claim(id).is_some() && !claims.is_released(id));
    }

    /// How many claims this observer remembers.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// True if this node may claim `resource` now: it was never claimed, its winner was
/// released, or its winner's lease expired more than `grace` ago on this observer's clock
/// (`is_dead` says whether a peer is judged dead by membership).
///
/// A winner this observer had not yet seen is observed now (fresh from first sight).
pub fn resource_free(
    claims: &Claims,
    observer: &mut LeaseObserver,
    resource: &Resource,
    now_ms: u64,
    cfg: &LeaseConfig,
    is_dead: impl Fn(&str) -> bool,
) -> bool {
    let Some(winner) = claims.winner(resource) else {
        return true;
    };
    let holder_dead = claims.claim(winner).is_some_and(|c| is_dead(&c.holder));
    observer.takeover_allowed(winner, cfg, now_ms, holder_dead)
}

// ---------------------------------------------------------------------------------------
// Conflict prediction
// ---------------------------------------------------------------------------------------

/// Commits touching more files than this are ignored by [`CoChange`]: mass renames and
/// reformatting say nothing about which files belong together, and would cost O(n²).
pub const COCHANGE_MAX_FILES_PER_COMMIT: usize = 64;

/// The most reasons a [`Conflict::Soft`] lists; the rest are summarised in one line.
pub const MAX_SOFT_REASONS: usize = 16;

/// How often pairs of files changed in the same commit. Pure: built from commits' file
/// lists (the git shell reads them), never from a repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoChange {
    pairs: BTreeMap<(String, String), u32>,
    min_support: u32,
}

impl CoChange {
    /// Counts, for each pair of files, the commits that changed both. A pair "changes
    /// together" once it reaches `min_support` commits (at least 1). Commits touching more
    /// than [`COCHANGE_MAX_FILES_PER_COMMIT`] files are skipped.
    pub fn from_commits(commits: &[Vec<String>], min_support: u32) -> CoChange {
        let mut pairs: BTreeMap<(String, String), u32> = BTreeMap::new();
        for files in commits {
            let files: BTreeSet<String> = files.iter().map(|f| normalize_lenient(f)).collect();
            if files.len() > COCHANGE_MAX_FILES_PER_COMMIT {
                continue;
            }
            let files: Vec<&String> = files.iter().collect();
            for (i, a) in files.iter().enumerate() {
                for b in &files[i + 1..] {
                    let n = pairs.entry(((*a).clone(), (*b).clone())).or_insert(0);
                    *n = n.saturating_add(1);
                }
            }
        }
        CoChange {
            pairs,
            min_support: min_support.max(1),
        }
    }

    /// How many commits changed both files.
    pub fn support(&self, a: &str, b: &str) -> u32 {
        let (a, b) = (normalize_lenient(a), normalize_lenient(b));
        let key = if a <= b { (a, b) } else { (b, a) };
        self.pairs.get(&key).copied().unwrap_or(0)
    }

    /// True if the two files changed together in at least `min_support` commits.
    pub fn changes_together(&self, a: &str, b: &str) -> bool {
        a != b && self.support(a, b) >= self.min_support.max(1)
    }
}

/// Normalises a path if it is valid; otherwise compares it as written (prediction is
/// advisory, and bad paths were already rejected when the story was written).
fn normalize_lenient(path: &str) -> String {
    normalize_repo_path(path).unwrap_or_else(|_| path.to_string())
}

/// Would planned work collide with work in flight?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    None,
    /// Likely to conflict at rebase: worth ordering after, not forbidden.
    Soft {
        reasons: Vec<String>,
    },
    /// A planned file is being changed by another story right now: do not start.
    Hard {
        story: String,
        file: String,
    },
}

/// Source roots under which the first directory is the module (`src/net/..` is `src/net`).
const SOURCE_ROOTS: [&str; 9] = [
    "src", "lib", "app", "pkg", "cmd", "internal", "crates", "packages", "tests",
];

/// The directory a file is in, or `None` at the repository root.
fn directory_of(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(dir, _)| dir)
}

/// The top-level module of a file: below a source root, the root plus the next component
/// without its extension (`src/lease.rs` and `src/lease/x.rs` are both `src/lease`);
/// elsewhere the first directory (`docs/a.md` is `docs`). Root-level files have none.
fn module_of(path: &str) -> Option<String> {
    let mut parts = path.split('/');
    let first = parts.next()?;
    let second = parts.next()?;
    if SOURCE_ROOTS.contains(&first) {
        let stem = second.split('.').next().unwrap_or(second);
        Some(format!("{first}/{stem}"))
    } else {
        Some(first.to_string())
    }
}

/// Predicts whether working on `planned` files would collide with `in_flight` work (each
/// other story in flight, with its planned files). The caller leaves the story being
/// planned out of `in_flight`.
///
/// - Hard: a planned file is in flight in another story (the smallest such file and
///   story are named, so the answer does not depend on input order).
/// - Soft: a planned file shares a directory (not the repository root) or a top-level
///   module with a file in flight, or the pair changed together in past commits.
/// - None otherwise.
pub fn predict_conflict(
    planned: &[String],
    in_flight: &[(String, Vec<String>)],
    cochange: &CoChange,
) -> Conflict {
    let planned: BTreeSet<String> = planned.iter().map(|p| normalize_lenient(p)).collect();
    let mut hard: Option<(String, String)> = None;
    let mut reasons: BTreeSet<String> = BTreeSet::new();
    for (story, files) in in_flight {
        for other in files.iter().map(|f| normalize_lenient(f)) {
            for mine in &planned {
                if *mine == other {
                    let candidate = (mine.clone(), story.clone());
                    if hard.as_ref().is_none_or(|h| candidate < *h) {
                        hard = Some(candidate);
                    }
                    continue;
                }
                if let (Some(d1), Some(d2)) = (directory_of(mine), directory_of(&other)) {
                    if d1 == d2 {
                        reasons.insert(format!(
                            "{mine} is in the same directory ({d1}) as {other}, in flight in {story}"
                        ));
                        continue;
                    }
                }
                if let (Some(m1), Some(m2)) = (module_of(mine), module_of(&other)) {
                    if m1 == m2 {
                        reasons.insert(format!(
                            "{mine} is in the same module ({m1}) as {other}, in flight in {story}"
                        ));
                        continue;
                    }
                }
                if cochange.changes_together(mine, &other) {
                    reasons.insert(format!(
                        "{mine} changed together with {other} (in flight in {story}) in {} past commits",
                        cochange.support(mine, &other)
                    ));
                }
            }
        }
    }
    if let Some((file, story)) = hard {
        return Conflict::Hard { story, file };
    }
    if reasons.is_empty() {
        return Conflict::None;
    }
    let total = reasons.len();
    let mut reasons: Vec<String> = reasons.into_iter().take(MAX_SOFT_REASONS).collect();
    if total > MAX_SOFT_REASONS {
        reasons.push(format!("and {} more", total - MAX_SOFT_REASONS));
    }
    Conflict::Soft { reasons }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn story(key: &str, phase: Phase) -> Resource {
        Resource::story(key, phase).unwrap()
    }

    fn file(path: &str) -> Resource {
        Resource::file(path).unwrap()
    }

    fn claim(holder: &str, resources: &[(Resource, u64)]) -> ClaimFact {
        ClaimFact {
            resources: resources.to_vec(),
            holder: holder.to_string(),
            ttl_ms: 10_000,
            written_at_ms: 0,
            attempt: 1,
        }
    }

    fn released(why: ReleaseReason) -> ReleaseFact {
        ReleaseFact {
            why,
            note: String::new(),
        }
    }

    fn fold(claims: &[(&str, ClaimFact)], releases: &[(&str, ReleaseReason)]) -> Claims {
        let c = claims
            .iter()
            .map(|(id, f)| (id.to_string(), f.clone()))
            .collect();
        let r = releases
            .iter()
            .map(|(id, why)| (id.to_string(), released(*why)))
            .collect();
        Claims::new(&c, &r)
    }

    // --- resources -----------------------------------------------------------------

    #[test]
    fn resources_round_trip_through_their_string_form() {
        for r in [
            story("S-0042@ab12cd", Phase::PlanReview),
            story("S-0001@zzzzzz", Phase::Merge),
            file("./src/../src/lease.rs"),
        ] {
            let s = r.to_string();
            assert_eq!(s.parse::<Resource>().unwrap(), r, "{s}");
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Resource>(&json).unwrap(), r);
        }
        assert_eq!(
            file("./src/../src/lease.rs").to_string(),
            "file:src/lease.rs"
        );
        assert_eq!(
            story("S-0042@ab12cd", Phase::PlanReview).to_string(),
            "story:S-0042@ab12cd/plan_review"
        );
    }

    #[test]
    fn file_resources_escaping_the_repository_are_rejected() {
        let err = Resource::file("../etc/passwd").unwrap_err();
        assert!(
            err.to_string().contains("escapes the repository root"),
            "{err}"
        );
        let err = Resource::file("/etc/passwd").unwrap_err();
        assert!(err.to_string().contains("is absolute"), "{err}");
        let err = "file:a/../../b".parse::<Resource>().unwrap_err();
        assert!(
            err.to_string().contains("escapes the repository root"),
            "{err}"
        );
        assert!(serde_json::from_str::<Resource>("\"file:../x\"").is_err());
    }

    #[test]
    fn malformed_resource_strings_are_rejected_with_the_expected_form() {
        let err = "stroy:S-1/plan".parse::<Resource>().unwrap_err();
        assert!(err.to_string().contains("story:<key>/<phase>"), "{err}");
        let err = "story:S-1".parse::<Resource>().unwrap_err();
        assert!(matches!(err, ResourceError::MissingPhase(_)), "{err}");
        let err = "story:S-1/coding".parse::<Resource>().unwrap_err();
        assert!(err.to_string().contains("implement"), "{err}");
        assert!("story:/plan".parse::<Resource>().is_err());
        assert!(Resource::story("S-1/x", Phase::Plan).is_err());
        for bad in [
            "story:S-1/review.0",
            "story:S-1/review.01",
            "story:S-1/review.x",
        ] {
            assert!(bad.parse::<Resource>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn rounds_are_distinct_resources_that_round_trip() {
        let r2 = Resource::story_round("S-1@ab", Phase::Review, 2).unwrap();
        assert_eq!(r2.to_string(), "story:S-1@ab/review.2");
        assert_eq!("story:S-1@ab/review.2".parse::<Resource>().unwrap(), r2);
        let r0 = Resource::story("S-1@ab", Phase::Review).unwrap();
        assert_eq!(r0.to_string(), "story:S-1@ab/review");
        assert_ne!(r0, r2);
    }

    #[test]
    fn claim_facts_are_stored_as_json_and_read_back() {
        let c = claim(
            "peerA",
            &[(story("S-1@a", Phase::Implement), 3), (file("src/a.rs"), 7)],
        );
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"story:S-1@a/implement\""), "{json}");
        assert_eq!(serde_json::from_str::<ClaimFact>(&json).unwrap(), c);
        let r = released(ReleaseReason::Abandoned);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"why":"abandoned"}"#);
        assert_eq!(serde_json::from_str::<ReleaseFact>(&json).unwrap(), r);
    }

    #[test]
    fn claim_ids_are_unique_per_writer() {
        assert_eq!(claim_id("12D3KooWabc", 7), "12D3KooWabc-7");
        assert_ne!(claim_id("peerA", 1), claim_id("peerB", 1));
    }

    // --- tokens and winners -----------------------------------------------------------

    #[test]
    fn a_never_claimed_resource_gets_token_one_and_has_no_winner() {
        let c = fold(&[], &[]);
        let r = story("S-1@a", Phase::Plan);
        assert_eq!(c.next_token(&r), 1);
        assert_eq!(c.winner(&r), None);
        assert!(!c.ever_claimed(&r));
    }

    #[test]
    fn the_next_token_is_one_more_than_the_highest_ever_seen_including_released() {
        let r = story("S-1@a", Phase::Plan);
        let c = fold(
            &[
                ("a-1", claim("a", &[(r.clone(), 1)])),
                ("b-1", claim("b", &[(r.clone(), 5)])),
                ("c-1", claim("c", &[(r.clone(), 3)])),
            ],
            &[("b-1", ReleaseReason::Done)],
        );
        assert_eq!(c.next_token(&r), 6);
        assert_eq!(c.next_token(&file("other.rs")), 1);
    }

    #[test]
    fn the_highest_token_wins() {
        let r = story("S-1@a", Phase::Plan);
        let c = fold(
            &[
                ("a-1", claim("a", &[(r.clone(), 1)])),
                ("b-1", claim("b", &[(r.clone(), 2)])),
            ],
            &[],
        );
        assert_eq!(c.winner(&r), Some("b-1"));
        assert_eq!(c.winner_holder(&r), Some("b"));
        assert!(c.holds("b-1"));
        assert!(!c.holds("a-1"));
        assert_eq!(c.losing().map(|(id, _)| id).collect::<Vec<_>>(), ["a-1"]);
    }

    #[test]
    fn equal_tokens_tie_to_the_lowest_holder_id_whatever_the_claim_ids() {
        let r = story("S-1@a", Phase::Plan);
        // The lower holder has the higher claim id: the holder decides, not the id.
        let c = fold(
            &[
                ("zzz-1", claim("alice", &[(r.clone(), 4)])),
                ("aaa-1", claim("bob", &[(r.clone(), 4)])),
            ],
            &[],
        );
        assert_eq!(c.winner(&r), Some("zzz-1"));
        assert_eq!(c.winner_holder(&r), Some("alice"));
    }

    #[test]
    fn equal_tokens_and_holders_tie_to_the_lowest_claim_id() {
        let r = story("S-1@a", Phase::Plan);
        let c = fold(
            &[
                ("alice-2", claim("alice", &[(r.clone(), 4)])),
                ("alice-1", claim("alice", &[(r.clone(), 4)])),
            ],
            &[],
        );
        assert_eq!(c.winner(&r), Some("alice-1"));
    }

    #[test]
    fn a_released_winner_frees_the_resource_and_a_lower_stale_claim_does_not_resurrect() {
        let r = story("S-1@a", Phase::Implement);
        let c = fold(
            &[
                ("a-1", claim("a", &[(r.clone(), 1)])),
                ("b-1", claim("b", &[(r.clone(), 2)])),
            ],
            &[("b-1", ReleaseReason::Done)],
        );
        assert_eq!(c.winner(&r), None);
        assert!(!c.holds("a-1"), "the superseded claim must stay dead");
        assert!(!c.holds("b-1"));
        assert!(c.is_released("b-1"));
        assert_eq!(c.release_reason("b-1"), Some(ReleaseReason::Done));
        assert_eq!(c.active().count(), 0);
        assert_eq!(c.next_token(&r), 3);
        let mut obs = LeaseObserver::new();
        assert!(resource_free(
            &c,
            &mut obs,
            &r,
            0,
            &LeaseConfig::default(),
            |_| false
        ));
    }

    #[test]
    fn in_a_token_tie_finished_beats_open_beats_released_without_a_result() {
        let r = story("S-1@a", Phase::Review);
        let tie = |releases: &[(&str, ReleaseReason)]| {
            fold(
                &[
                    ("a-1", claim("a", &[(r.clone(), 2)])),
                    ("b-1", claim("b", &[(r.clone(), 2)])),
                ],
                releases,
            )
        };
        // No releases: the lowest holder.
        assert_eq!(tie(&[]).winner(&r), Some("a-1"));
        // a-1 never ran (its holder crashed, restarted and released it; or it lost at
        // settle): b-1, which may be running, wins instead of being voided.
        for why in [
            ReleaseReason::Abandoned,
            ReleaseReason::Unsettled,
            ReleaseReason::Lost,
            ReleaseReason::Expired,
        ] {
            let c = tie(&[("a-1", why)]);
            assert_eq!(c.winner(&r), Some("b-1"), "{why:?}");
            assert!(c.holds("b-1"));
            assert_eq!(c.top(&r), Some("b-1"));
        }
        // b-1 finished: a tying claim from a stale view never un-counts its result,
        // released or not.
        let c = tie(&[("b-1", ReleaseReason::Done)]);
        assert_eq!(c.top(&r), Some("b-1"));
        assert_eq!(c.winner(&r), None, "finished: the resource is free");
        assert!(!c.holds("a-1"));
        let c = tie(&[
            ("b-1", ReleaseReason::Done),
            ("a-1", ReleaseReason::Unsettled),
        ]);
        assert_eq!(c.top(&r), Some("b-1"));
        // Both released without a result: the lowest holder, released, frees it.
        let c = tie(&[
            ("a-1", ReleaseReason::Lost),
            ("b-1", ReleaseReason::Unsettled),
        ]);
        assert_eq!(c.top(&r), Some("a-1"));
        assert_eq!(c.winner(&r), None);
        // The rank only breaks ties: a higher token still wins whatever its release.
        let c = fold(
            &[
                ("a-1", claim("a", &[(r.clone(), 2)])),
                ("b-1", claim("b", &[(r.clone(), 3)])),
            ],
            &[("b-1", ReleaseReason::Abandoned)],
        );
        assert_eq!(c.top(&r), Some("b-1"));
        assert!(!c.holds("a-1"), "a superseded claim never comes back");
    }

    #[test]
    fn a_claim_losing_one_resource_holds_nothing() {
        let s = story("S-1@a", Phase::Implement);
        let f1 = file("src/a.rs");
        let f2 = file("src/b.rs");
        let c = fold(
            &[
                (
                    "a-1",
                    claim("a", &[(s.clone(), 1), (f1.clone(), 1), (f2.clone(), 1)]),
                ),
                ("b-1", claim("b", &[(f2.clone(), 2)])),
            ],
            &[],
        );
        // a-1 still tops the story and f1, but lost f2: it holds none of them.
        assert_eq!(c.winner(&s), Some("a-1"));
        assert_eq!(c.winner(&f2), Some("b-1"));
        assert!(!c.holds("a-1"));
        assert!(c.holds("b-1"));
        assert_eq!(c.active().map(|(id, _)| id).collect::<Vec<_>>(), ["b-1"]);
        assert_eq!(c.active_of("a").count(), 0);
        assert_eq!(c.losing().map(|(id, _)| id).collect::<Vec<_>>(), ["a-1"]);
    }

    #[test]
    fn two_claims_crossing_on_two_resources_both_lose_so_neither_waits_on_the_other() {
        let r1 = file("a.rs");
        let r2 = file("b.rs");
        let c = fold(
            &[
                ("a-1", claim("a", &[(r1.clone(), 1), (r2.clone(), 2)])),
                ("b-1", claim("b", &[(r1.clone(), 2), (r2.clone(), 1)])),
            ],
            &[],
        );
        assert!(!c.holds("a-1"));
        assert!(!c.holds("b-1"));
        assert_eq!(c.losing().count(), 2);
    }

    #[test]
    fn an_empty_or_unknown_claim_holds_nothing() {
        let c = fold(&[("a-1", claim("a", &[]))], &[]);
        assert!(!c.holds("a-1"));
        assert!(!c.holds("nope"));
        assert_eq!(c.token_of("nope", &file("a.rs")), None);
    }

    #[test]
    fn token_of_reports_the_token_a_claim_carries_per_resource() {
        let s = story("S-1@a", Phase::Implement);
        let f = file("src/a.rs");
        let c = fold(
            &[("a-1", claim("a", &[(s.clone(), 4), (f.clone(), 9)]))],
            &[],
        );
        assert_eq!(c.token_of("a-1", &s), Some(4));
        assert_eq!(c.token_of("a-1", &f), Some(9));
        assert_eq!(c.token_of("a-1", &file("src/b.rs")), None);
    }

    fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
        if items.len() <= 1 {
            return vec![items.to_vec()];
        }
        let mut out = Vec::new();
        for i in 0..items.len() {
            let mut rest = items.to_vec();
            let first = rest.remove(i);
            for mut p in permutations(&rest) {
                p.insert(0, first.clone());
                out.push(p);
            }
        }
        out
    }

    /// Everything observable about a fold, as plain data.
    fn summary(c: &Claims, resources: &[Resource]) -> Vec<String> {
        let mut out = Vec::new();
        for r in resources {
            out.push(format!(
                "{r} next={} winner={:?}",
                c.next_token(r),
                c.winner(r)
            ));
        }
        out.extend(c.active().map(|(id, _)| format!("active {id}")));
        out.extend(c.losing().map(|(id, _)| format!("losing {id}")));
        out
    }

    #[test]
    fn the_fold_is_the_same_under_every_insertion_order() {
        let s = story("S-1@a", Phase::Implement);
        let f = file("src/a.rs");
        let g = file("src/b.rs");
        let facts: Vec<(&str, ClaimFact)> = vec![
            ("a-1", claim("a", &[(s.clone(), 1), (f.clone(), 1)])),
            ("b-1", claim("b", &[(s.clone(), 2), (f.clone(), 2)])),
            ("c-1", claim("c", &[(s.clone(), 2), (g.clone(), 1)])),
            ("a-2", claim("a", &[(g.clone(), 1)])),
            ("d-1", claim("d", &[(f.clone(), 3)])),
        ];
        let releases = [("d-1", ReleaseReason::Lost), ("a-1", ReleaseReason::Lost)];
        let resources = [s, f, g];
        let mut expected: Option<Vec<String>> = None;
        for order in permutations(&facts) {
            for rel_order in permutations(&releases) {
                let mut cm = BTreeMap::new();
                for (id, fact) in &order {
                    cm.insert(id.to_string(), fact.clone());
                }
                let mut rm = BTreeMap::new();
                for (id, why) in &rel_order {
                    rm.insert(id.to_string(), released(*why));
                }
                let got = summary(&Claims::new(&cm, &rm), &resources);
                match &expected {
                    None => expected = Some(got),
                    Some(e) => assert_eq!(&got, e),
                }
            }
        }
        let expected = expected.unwrap();
        // b-1 and c-1 tie on the story at token 2: b < c, so b-1 wins it, and c-1 (which
        // also tops b.rs, tied with a-2 at 1: c > a) holds nothing. d-1 topped a.rs and was
        // released, so a.rs is free and b-1 holds nothing either.
        assert!(expected.contains(&"story:S-1@a/implement next=3 winner=Some(\"b-1\")".to_string()));
        assert!(expected.contains(&"file:src/a.rs next=4 winner=None".to_string()));
        assert!(expected.contains(&"file:src/b.rs next=2 winner=Some(\"a-2\")".to_string()));
        assert!(expected.contains(&"active a-2".to_string()));
        assert!(!expected
            .iter()
            .any(|l| l == "active b-1" || l == "active c-1"));
    }

    // --- config -------------------------------------------------------------------------

    #[test]
    fn the_default_config_satisfies_its_own_rule() {
        assert_eq!(LeaseConfig::default().validate(), Ok(()));
    }

    #[test]
    fn a_ttl_shorter_than_drift_and_message_delays_is_rejected_naming_the_rule() {
        let cfg = LeaseConfig {
            ttl_ms: 3000,
            ..LeaseConfig::default()
        };
        let err = cfg.validate().unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "invalid config: lease_ttl_ms = 3000 must be at least \
                 2*max_clock_drift_ms + 4*message_timeout_ms = 6000"
            ),
            "{msg}"
        );
        assert!(msg.contains("max_clock_drift_ms = 1000"), "{msg}");
        let exact = LeaseConfig {
            ttl_ms: 6000,
            ..LeaseConfig::default()
        };
        assert_eq!(exact.validate(), Ok(()));
    }

    #[test]
    fn zero_grace_and_overflowing_or_inverted_timings_are_rejected() {
        let zero = LeaseConfig {
            grace_ms: 0,
            ..LeaseConfig::default()
        };
        assert_eq!(
            zero.validate().unwrap_err().to_string(),
            "invalid config: lease_grace_ms = 0 must be greater than 0"
        );
        let huge = LeaseConfig {
            message_timeout_ms: u64::MAX,
            ..LeaseConfig::default()
        };
        assert!(matches!(
            huge.validate(),
            Err(LeaseConfigError::Overflow { .. })
        ));
        let slow_settle = LeaseConfig {
            settle_timeout_ms: 10_000,
            ..LeaseConfig::default()
        };
        let msg = slow_settle.validate().unwrap_err().to_string();
        assert!(msg.contains("settle_timeout_ms = 10000"), "{msg}");
    }

    // --- leases on the observer's clock ------------------------------------------------

    const TTL: u64 = 10_000;

    #[test]
    fn a_lease_expires_after_ttl_without_renewal_on_the_observers_clock() {
        let mut obs = LeaseObserver::new();
        obs.observe_claim("a-1", 1_000);
        assert!(!obs.expired("a-1", TTL, 1_000, false));
        assert!(!obs.expired("a-1", TTL, 10_999, false));
        assert!(obs.expired("a-1", TTL, 11_000, false));
    }

    #[test]
    fn a_late_joiner_counts_a_claim_as_fresh_from_first_sight() {
        let mut obs = LeaseObserver::new();
        // Written long ago by the holder's clock; this node only sees it at 500_000.
        assert!(!obs.expired("a-1", TTL, 500_000, false), "unseen is fresh");
        obs.observe_claim("a-1", 500_000);
        assert!(!obs.expired("a-1", TTL, 509_999, false));
        assert!(obs.expired("a-1", TTL, 510_000, false));
        // Observing again does not restart the lease.
        obs.observe_claim("a-1", 509_000);
        assert_eq!(obs.first_seen_ms("a-1"), Some(500_000));
        assert!(obs.expired("a-1", TTL, 510_000, false));
    }

    #[test]
    fn renewals_push_expiry_out() {
        let mut obs = LeaseObserver::new();
        obs.observe_claim("a-1", 0);
        obs.renew("a-1", 8_000);
        assert!(!obs.expired("a-1", TTL, 17_999, false));
        assert!(obs.expired("a-1", TTL, 18_000, false));
        assert_eq!(obs.last_renewed_ms("a-1"), Some(8_000));
    }

    #[test]
    fn a_renewal_never_moves_time_backwards() {
        let mut obs = LeaseObserver::new();
        obs.observe_claim("a-1", 0);
        obs.renew("a-1", 8_000);
        obs.renew("a-1", 3_000);
        assert_eq!(obs.last_renewed_ms("a-1"), Some(8_000));
    }

    #[test]
    fn a_clock_that_goes_backwards_counts_as_no_time_passed_and_never_panics() {
        let mut obs = LeaseObserver::new();
        obs.observe_claim("a-1", 50_000);
        assert!(!obs.expired("a-1", TTL, 0, false));
        assert!(!obs.expired("a-1", 0, 0, false) || obs.expired("a-1", 0, 0, false));
        assert!(!obs.takeover_allowed("a-1", &LeaseConfig::default(), 0, false));
        obs.renew("a-1", u64::MAX);
        assert!(!obs.expired("a-1", u64::MAX, u64::MAX, false));
        assert!(!obs.takeover_allowed("a-1", &LeaseConfig::default(), u64::MAX, false));
    }

    #[test]
    fn a_dead_holders_lease_is_expired_at_once() {
        let mut obs = LeaseObserver::new();
        obs.observe_claim("a-1", 0);
        assert!(obs.expired("a-1", TTL, 1, true));
    }

    #[test]
    fn takeover_waits_a_further_grace_after_expiry() {
        let cfg = LeaseConfig::default();
        let mut obs = LeaseObserver::new();
        obs.observe_claim("a-1", 0);
        assert!(
            !obs.takeover_allowed("a-1", &cfg, 10_000, false),
            "expired, in grace"
        );
        assert!(!obs.takeover_allowed("a-1", &cfg, 11_999, false));
        assert!(obs.takeover_allowed("a-1", &cfg, 12_000, false));
    }

    #[test]
    fn a_dead_holders_grace_counts_from_when_this_observer_was_told_it_died() {
        let cfg = LeaseConfig::default();
        let mut obs = LeaseObserver::new();
        obs.observe_claim("a-1", 0);
        obs.renew("a-1", 1_000);
        assert!(
            !obs.takeover_allowed("a-1", &cfg, 6_000, true),
            "just judged dead"
        );
        assert!(!obs.takeover_allowed("a-1", &cfg, 7_999, true));
        assert!(obs.takeover_allowed("a-1", &cfg, 8_000, true));
        // Never later than a silent holder's takeover.
        let mut obs = LeaseObserver::new();
        obs.observe_claim("b-1", 0);
        assert!(obs.takeover_allowed("b-1", &cfg, 12_000, true));
    }

    #[test]
    fn a_holder_that_comes_back_to_life_restarts_its_grace() {
        let cfg = LeaseConfig::default();
        let mut obs = LeaseObserver::new();
        obs.observe_claim("a-1", 0);
        assert!(!obs.takeover_allowed("a-1", &cfg, 5_000, true));
        obs.renew("a-1", 6_000);
        assert!(!obs.takeover_allowed("a-1", &cfg, 7_000, false));
        // Judged dead again later: grace counts from the new death.
        assert!(!obs.takeover_allowed("a-1", &cfg, 9_000, true));
        assert!(!obs.takeover_allowed("a-1", &cfg, 10_999, true));
        assert!(obs.takeover_allowed("a-1", &cfg, 11_000, true));
    }

    #[test]
    fn forgetting_and_pruning_drop_released_claims() {
        let r = file("a.rs");
        let c = fold(
            &[
                ("a-1", claim("a", &[(r.clone(), 1)])),
                ("b-1", claim("b", &[(r.clone(), 2)])),
            ],
            &[("a-1", ReleaseReason::Lost)],
        );
        let mut obs = LeaseObserver::new();
        obs.observe_claim("a-1", 0);
        obs.observe_claim("b-1", 0);
        obs.observe_claim("gone-1", 0);
        obs.prune(&c);
        assert_eq!(obs.len(), 1);
        obs.forget("b-1");
        assert!(obs.is_empty());
    }

    #[test]
    fn a_resource_frees_only_after_its_winners_lease_expires_and_grace_passes() {
        let cfg = LeaseConfig::default();
        let r = story("S-1@a", Phase::Implement);
        let c = fold(&[("a-1", claim("a", &[(r.clone(), 1)]))], &[]);
        let mut obs = LeaseObserver::new();
        assert!(
            !resource_free(&c, &mut obs, &r, 100, &cfg, |_| false),
            "first sight"
        );
        obs.renew("a-1", 5_000);
        assert!(!resource_free(&c, &mut obs, &r, 16_999, &cfg, |_| false));
        assert!(resource_free(&c, &mut obs, &r, 17_000, &cfg, |_| false));
        assert!(resource_free(
            &c,
            &mut obs,
            &file("never.rs"),
            0,
            &cfg,
            |_| false
        ));
    }

    #[test]
    fn a_resource_held_by_a_dead_peer_frees_a_grace_after_the_death_is_seen() {
        let cfg = LeaseConfig::default();
        let r = story("S-1@a", Phase::Implement);
        let c = fold(&[("a-1", claim("a", &[(r.clone(), 1)]))], &[]);
        let mut obs = LeaseObserver::new();
        obs.observe_claim("a-1", 0);
        let dead = |p: &str| p == "a";
        assert!(!resource_free(&c, &mut obs, &r, 3_000, &cfg, dead));
        assert!(resource_free(&c, &mut obs, &r, 5_000, &cfg, dead));
        assert!(
            !resource_free(&c, &mut obs, &r, 5_000, &cfg, |_| false),
            "alive again"
        );
    }

    // --- conflict prediction ------------------------------------------------------------

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_planned_file_in_flight_elsewhere_is_a_hard_conflict() {
        let in_flight = vec![
            ("S-2@b".to_string(), strings(&["docs/x.md", "src/net.rs"])),
            ("S-1@a".to_string(), strings(&["./src/net.rs"])),
        ];
        let got = predict_conflict(
            &strings(&["src/net.rs", "README.md"]),
            &in_flight,
            &CoChange::default(),
        );
        assert_eq!(
            got,
            Conflict::Hard {
                story: "S-1@a".into(),
                file: "src/net.rs".into()
            }
        );
    }

    #[test]
    fn files_in_the_same_directory_or_module_are_a_soft_conflict() {
        let co = CoChange::default();
        let same_dir = predict_conflict(
            &strings(&["src/lease.rs"]),
            &[("S-2@b".into(), strings(&["src/fence.rs"]))],
            &co,
        );
        let Conflict::Soft { reasons } = same_dir else {
            panic!("expected soft, got {same_dir:?}");
        };
        assert_eq!(
            reasons,
            ["src/lease.rs is in the same directory (src) as src/fence.rs, in flight in S-2@b"]
        );
        let same_module = predict_conflict(
            &strings(&["src/net/peer.rs"]),
            &[("S-2@b".into(), strings(&["src/net/proto/codec.rs"]))],
            &co,
        );
        assert!(
            matches!(&same_module, Conflict::Soft { reasons } if reasons[0].contains("same module (src/net)")),
            "{same_module:?}"
        );
        let file_and_its_submodule = predict_conflict(
            &strings(&["src/net.rs"]),
            &[("S-2@b".into(), strings(&["src/net/peer.rs"]))],
            &co,
        );
        assert!(matches!(file_and_its_submodule, Conflict::Soft { .. }));
    }

    #[test]
    fn files_that_historically_change_together_are_a_soft_conflict() {
        let history = vec![
            strings(&["api/handler.go", "web/form.ts"]),
            strings(&["web/form.ts", "api/handler.go", "README.md"]),
            strings(&["api/handler.go"]),
        ];
        let co = CoChange::from_commits(&history, 2);
        assert_eq!(co.support("web/form.ts", "api/handler.go"), 2);
        assert!(co.changes_together("api/handler.go", "web/form.ts"));
        assert!(!co.changes_together("api/handler.go", "README.md"));
        let got = predict_conflict(
            &strings(&["web/form.ts"]),
            &[("S-9@c".into(), strings(&["api/handler.go"]))],
            &co,
        );
        assert_eq!(
            got,
            Conflict::Soft {
                reasons: strings(&[
                    "web/form.ts changed together with api/handler.go (in flight in S-9@c) in 2 past commits"
                ])
            }
        );
    }

    #[test]
    fn unrelated_files_and_root_level_files_do_not_conflict() {
        let co = CoChange::default();
        assert_eq!(
            predict_conflict(
                &strings(&["docs/guide.md", "README.md"]),
                &[("S-2@b".into(), strings(&["src/net.rs", "Cargo.toml"]))],
                &co,
            ),
            Conflict::None
        );
        assert_eq!(
            predict_conflict(&strings(&["a.rs"]), &[], &co),
            Conflict::None
        );
    }

    #[test]
    fn huge_commits_teach_cochange_nothing() {
        let big: Vec<String> = (0..=COCHANGE_MAX_FILES_PER_COMMIT)
            .map(|i| format!("f{i}.rs"))
            .collect();
        let co = CoChange::from_commits(&[big], 1);
        assert_eq!(co.support("f0.rs", "f1.rs"), 0);
    }

    #[test]
    fn soft_reasons_are_capped() {
        let planned: Vec<String> = (0..40).map(|i| format!("src/p{i}.rs")).collect();
        let got = predict_conflict(
            &planned,
            &[("S-2@b".into(), strings(&["src/x.rs"]))],
            &CoChange::default(),
        );
        let Conflict::Soft { reasons } = got else {
            panic!("expected soft");
        };
        assert_eq!(reasons.len(), MAX_SOFT_REASONS + 1);
        assert_eq!(reasons[MAX_SOFT_REASONS], "and 24 more");
    }
}
