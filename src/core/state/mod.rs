//! The replicated document and its typed reads and writes. Owns the automerge document;
//! derives [`View`], a pure and deterministic fold of it.
//!
//! Invariants:
//! - Facts, not status: every fact is a JSON value written once under a root key that
//!   exactly one writer can create (`story/<number>@<creator tag>`, `node/<peer>`), so
//!   no two nodes ever race to create the same container.
//! - Heartbeats and progress never enter the document.
//! - Never reads a clock and never does I/O: callers pass the time and persist the bytes
//!   this module hands back.

use crate::core::lease::{ClaimFact, Claims, Floor, ReleaseFact, ReleaseReason, Resource};
use crate::core::model::{
    InputError, KnowledgeFact, KnowledgeKind, MergeFact, NewStory, NodeFact, Phase, ResultFact,
    StoryFact, StoryStatus, Verdict, MAX_ATTEMPTS, MAX_TAKEOVERS,
};
use crate::core::trust::{self, KeyScheme, Signer};
use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ReadDoc, ScalarValue, ROOT};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

pub use automerge::ChangeHash;

/// A root key of the document, as the decoded facts hold it: inline up to 23 bytes (a
/// story's key, `story/S-0042@tag12345`, needs no allocation), shared when longer.
pub(crate) type FactKey = smol_str::SmolStr;

const STORY_PREFIX: &str = "story/";
const NODE_PREFIX: &str = "node/";
const CLAIM_PREFIX: &str = "claim/";
const RELEASE_PREFIX: &str = "release/";
const RESULT_PREFIX: &str = "result/";
const MERGE_PREFIX: &str = "merge/";
const KNOWLEDGE_PREFIX: &str = "knowledge/";
/// `notified/<hash of a trigger id>` (see [`crate::core::notify`]).
pub const NOTIFIED_PREFIX: &str = "notified/";
/// Longest knowledge entry, in bytes.
pub const MAX_KNOWLEDGE_BYTES: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("document data is corrupt: {0}")]
    Corrupt(String),
    #[error("sync message rejected: {0}")]
    Sync(String),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("this node is a passive observer and never writes")]
    Passive,
    /// Writing a fact into the document failed (nothing was written).
    #[error("writing {key} failed: {why}")]
    Write { key: String, why: String },
    /// A knowledge entry that is empty or over [`MAX_KNOWLEDGE_BYTES`].
    #[error("knowledge entry refused: empty or over {MAX_KNOWLEDGE_BYTES} bytes")]
    KnowledgeRefused,
    /// The document is at its size cap (`max_document_bytes`): nothing more is written
    /// or taken in.
    #[error(
        "the document is at its size cap ({} of {} MiB stored): nothing more is written \
         or taken in from peers; raise max_document_bytes on every node (the cap guards \
         against a member flooding the mesh)",
        .stored / (1 << 20), .cap / (1 << 20)
    )]
    Full { stored: u64, cap: u64 },
    /// This node's user asked for more writes than `max_writes_per_minute`.
    #[error(
        "too many writes: this node takes at most {per_minute} a minute from its users \
         (max_writes_per_minute); try again in {} s",
        .retry_ms.div_ceil(1000)
    )]
    RateLimited { per_minute: u32, retry_ms: u64 },
}

/// Per-peer automerge sync state (one for each direction of a peer pair).
pub type SyncState = sync::State;

/// Resets a sync state for a new session: keeps what is known of the peer's heads but
/// forgets in-flight bookkeeping, so a fresh session always makes progress.
pub fn reset_sync_state(state: &SyncState) -> SyncState {
    SyncState::decode(&state.encode()).unwrap_or_default()
}

/// The short tag of a peer id used in story keys: its last six characters.
pub fn peer_tag(peer: &str) -> &str {
    let n = peer.len();
    &peer[n.saturating_sub(6)..]
}

mod admit;
mod audit;
mod base;
mod budget;
mod command;
mod doc;
mod roster;
mod view;
mod walk;

use admit::{admit, admit_as, admit_with};
pub use admit::{claim_id_holder, FactKind, Refusal, MAX_FACT_BYTES};
use audit::{Admitted, RefusedLog};
pub use audit::{AuditEntry, LogQuery, Standing, MAX_REFUSED_KEY_BYTES, REFUSED_KEPT};
pub use base::{Base, EpochFact, Retired, BASE_KEY, EPOCH_PREFIX, MAX_CUT_HEADS};
pub use budget::{
    day_of, usd, Allowance, AskEntry, BudgetFact, Entry, Ledger, MeshBudget, Usage, DAY_MS,
};
pub use command::{
    command_key, Assignment, CommandEntry, CommandFact, Note, Op, Steering, Stop, StorySteer,
    Target, MAX_COMMAND_TEXT, MAX_UNBLOCK_GRANT,
};
pub use doc::{
    BatchError, Doc, Rebase, Seed, Taken, BATCH_REF_PREFIX, MAX_BATCH_STORIES, VOUCH_FROM,
};
use doc::{Fact, Facts};
pub use roster::{admit_key, revoke_key, RosterEntry, RosterFact, RosterView};
pub use view::*;
pub use walk::{Attention, APPROVAL_LABEL, MAX_REWORKS, PLAN_REVIEW_LABEL, REFINE_LABEL};

#[cfg(test)]
pub(crate) mod tests;
