//! What a fact must be to count: sealed by its author ([`crate::core::trust`]), decodable,
//! as strict as a local write in every field, under the key its content names, and
//! written by an author entitled to that key. A value that is not is rejected and
//! counted against the author it names; it never reaches the view.
//!
//! Who may write what:
//! - `story/<S-n@tag>`: its creator (`created_by`, whose tag is in the key);
//! - `node/<peer>`: that peer;
//! - `claim/<peer>-<n>`: that peer, as the holder;
//! - `result/<story>/<phase>/<claim>` and `merge/<story>/<claim>`: the claim's holder
//!   (the peer in the claim id);
//! - `release/<claim>`: the claim's holder, or any author with reason `expired` (a
//!   takeover) — and a takeover never un-counts a finished claim (see
//!   [`super::doc`]'s choice among candidates);
//! - `knowledge/<hash>`: anyone, under the hash of its own kind and text;
//! - `roster/admit/<peer>` and `roster/revoke/<peer>`: an operator (one of the mesh's
//!   trust anchors, [`super::roster`]); in an open mesh, no one;
//! - `budget/…`: reservations and usage by the claim's holder, asks and gives by their
//!   asker and giver ([`super::budget`]);
//! - `command/<operator>/<hash>`: that operator, under the hash of the command's JSON
//!   ([`super::command`]); in an open mesh, no one;
//! - `notified/<hash>`: the node that sent the notification (`by`), under the hash of
//!   the trigger's id ([`crate::core::notify`]).
//!
//! Whether an admitted value then counts also depends on its author being a member
//! ([`super::roster::Roster::counts`]), which the roster decides, not this module.

use super::budget::{check_budget, BudgetFact, BUDGET_PREFIX};
use super::command::{check_command, CommandFact, COMMAND_PREFIX};
use super::doc::Fact;
use super::roster::{RosterFact, ADMIT_PREFIX, REVOKE_PREFIX};
use super::*;
use crate::core::model::{normalize_repo_path, Handoff, MAX_DEPENDS, MAX_FILES};
use crate::core::notify::{notified_hash, NotifiedFact, MAX_ID_BYTES};
use crate::core::trust::{self, KeyScheme, Unsealed};

/// Longest sealed value accepted, in bytes (a story's 64 KiB body and its sealing fit).
pub const MAX_FACT_BYTES: usize = 128 * 1024;
/// Most resources one claim may hold (a story phase, its files and a gate).
const MAX_CLAIM_RESOURCES: usize = MAX_FILES + 2;
/// Longest free-text field of a fact that has no tighter rule (notes, versions, roles).
const MAX_SHORT_TEXT: usize = 1024;
/// Most roles a node may announce.
const MAX_ROLES: usize = 32;

/// The kinds of fact, by key prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactKind {
    Story,
    Node,
    Claim,
    Release,
    Result,
    Merge,
    Knowledge,
    Admit,
    Revoke,
    Command,
    Budget,
    Notified,
    Epoch,
}

impl FactKind {
    /// The kind of the fact at `key`; `None` for keys this version does not know (they
    /// are ignored, not counted: a newer peer may write them).
    pub fn of_key(key: &str) -> Option<FactKind> {
        Some(match key {
            k if k.starts_with(STORY_PREFIX) => FactKind::Story,
            k if k.starts_with(NODE_PREFIX) => FactKind::Node,
            k if k.starts_with(CLAIM_PREFIX) => FactKind::Claim,
            k if k.starts_with(RELEASE_PREFIX) => FactKind::Release,
            k if k.starts_with(RESULT_PREFIX) => FactKind::Result,
            k if k.starts_with(MERGE_PREFIX) => FactKind::Merge,
            k if k.starts_with(KNOWLEDGE_PREFIX) => FactKind::Knowledge,
            k if k.starts_with(ADMIT_PREFIX) => FactKind::Admit,
            k if k.starts_with(REVOKE_PREFIX) => FactKind::Revoke,
            k if k.starts_with(COMMAND_PREFIX) => FactKind::Command,
            k if k.starts_with(BUDGET_PREFIX) => FactKind::Budget,
            k if k.starts_with(NOTIFIED_PREFIX) => FactKind::Notified,
            k if k.starts_with(EPOCH_PREFIX) => FactKind::Epoch,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FactKind::Story => "story",
            FactKind::Node => "node",
            FactKind::Claim => "claim",
            FactKind::Release => "release",
            FactKind::Result => "result",
            FactKind::Merge => "merge",
            FactKind::Knowledge => "knowledge",
            FactKind::Admit => "admit",
            FactKind::Revoke => "revoke",
            FactKind::Command => "command",
            FactKind::Budget => "budget",
            FactKind::Notified => "notified",
            FactKind::Epoch => "epoch",
        }
    }

    /// Facts an operator writes (the roster, commands): they count by the operator's
    /// signature alone, not by the roster's members.
    pub fn by_operator(self) -> bool {
        matches!(self, FactKind::Admit | FactKind::Revoke | FactKind::Command)
    }
}

/// Why a value was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    Unsealed(Unsealed),
    /// Larger than [`MAX_FACT_BYTES`].
    TooLarge,
    /// Signed, but not JSON of the fact its key names.
    Malformed,
    /// A field outside what a local write accepts, or a key its content does not name.
    Invalid(&'static str),
    /// Signed by an author who may not write this key.
    NotEntitled,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unsealed(u) => u.as_str(),
            Refusal::TooLarge => "too large",
            Refusal::Malformed => "malformed",
            Refusal::Invalid(why) => why,
            Refusal::NotEntitled => "not entitled",
        }
    }
}

/// The holder named in a claim id (`<peer>-<n>`).
pub fn claim_id_holder(id: &str) -> Option<&str> {
    let (peer, n) = id.rsplit_once('-')?;
    (!peer.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && n.len() <= 20)
        .then_some(peer)
}

/// Opens, decodes and checks the value at `key`; the fact and its author, or why not.
/// `operators` are the mesh's trust anchors (who may write roster facts).
pub(super) fn admit(
    kind: FactKind,
    key: &str,
    value: &str,
    scheme: KeyScheme,
    operators: &BTreeSet<String>,
) -> Result<(String, Fact), Refusal> {
    admit_as(kind, key, value, scheme, operators, true)
}

/// [`admit`] with the signature's verdict known: `Some(true)` it holds (checked
/// already, see [`trust::sig_check`], or on this node's own disk before), `Some(false)`
/// it does not, `None` check it here.
pub(super) fn admit_with(
    kind: FactKind,
    key: &str,
    value: &str,
    scheme: KeyScheme,
    operators: &BTreeSet<String>,
    verdict: Option<bool>,
) -> Result<(String, Fact), Refusal> {
    match verdict {
        None => admit_as(kind, key, value, scheme, operators, true),
        Some(true) => admit_as(kind, key, value, scheme, operators, false),
        // What `admit` says of a well-formed value whose signature fails.
        Some(false) if value.len() > MAX_FACT_BYTES => Err(Refusal::TooLarge),
        Some(false) => Err(Refusal::Unsealed(trust::Unsealed::BadSignature)),
    }
}

/// [`admit`], checking the signature only when `verify` (see [`trust::open_as`]).
pub(super) fn admit_as(
    kind: FactKind,
    key: &str,
    value: &str,
    scheme: KeyScheme,
    operators: &BTreeSet<String>,
    verify: bool,
) -> Result<(String, Fact), Refusal> {
    if value.len() > MAX_FACT_BYTES {
        return Err(Refusal::TooLarge);
    }
    let opened = trust::open_as(key, value, scheme, verify).map_err(Refusal::Unsealed)?;
    let author = opened.author;
    fn json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Refusal> {
        serde_json::from_str(text).map_err(|_| Refusal::Malformed)
    }
    let fact = match kind {
        FactKind::Story => {
            let f: StoryFact = json(opened.json)?;
            check_story(key, author, &f)?;
            Fact::Story(Arc::new(f))
        }
        FactKind::Node => {
            let f: NodeFact = json(opened.json)?;
            entitled(key.strip_prefix(NODE_PREFIX) == Some(author))?;
            valid(
                f.roles.len() <= MAX_ROLES
                    && f.roles.iter().all(|r| short(r) && !r.is_empty())
                    && short(&f.version),
                "node roles or version out of bounds",
            )?;
            Fact::Node(Arc::new(f))
        }
        FactKind::Claim => {
            let f: ClaimFact = json(opened.json)?;
            let id = key.strip_prefix(CLAIM_PREFIX).unwrap_or(key);
            entitled(f.holder == author && claim_id_holder(id) == Some(author))?;
            valid(
                !f.resources.is_empty()
                    && f.resources.len() <= MAX_CLAIM_RESOURCES
                    && f.resources.iter().all(|(_, t)| *t >= 1),
                "claim resources empty, too many, or with token 0",
            )?;
            valid(
                f.resources.len() == 1 || f.resources.iter().all(|(r, _)| r.epoch().is_none()),
                "an epoch's claim names other resources",
            )?;
            valid(
                f.after
                    .as_deref()
                    .is_none_or(|a| claim_id_holder(a).is_some()),
                "claim `after` is not a claim id",
            )?;
            Fact::Claim(Arc::new(f))
        }
        FactKind::Release => {
            let f: ReleaseFact = json(opened.json)?;
            let id = key.strip_prefix(RELEASE_PREFIX).unwrap_or(key);
            let holder = claim_id_holder(id).ok_or(Refusal::Invalid("release of no claim id"))?;
            entitled(holder == author || f.why == ReleaseReason::Expired)?;
            valid(short(&f.note), "release note too long")?;
            Fact::Release(Arc::new(f))
        }
        FactKind::Result => {
            let f: ResultFact = json(opened.json)?;
            entitled(f.holder == author && claim_id_holder(&f.claim) == Some(author))?;
            let expected = format!(
                "{RESULT_PREFIX}{}/{}/{}",
                f.story,
                f.phase.as_str(),
                f.claim
            );
            valid(
                key == expected,
                "result key does not name its story, phase and claim",
            )?;
            valid(f.token >= 1, "result token 0")?;
            check_handoff(&f.handoff)?;
            Fact::Result(Arc::new(f))
        }
        FactKind::Merge => {
            let f: MergeFact = json(opened.json)?;
            entitled(f.holder == author && claim_id_holder(&f.claim) == Some(author))?;
            let expected = format!("{MERGE_PREFIX}{}/{}", f.story, f.claim);
            valid(
                key == expected,
                "merge key does not name its story and claim",
            )?;
            // A landing's commit is a hash from git; the simulator names synthetic ones.
            valid(
                f.token >= 1 && short(&f.commit) && !f.commit.chars().any(char::is_control),
                "merge token 0 or commit malformed",
            )?;
            Fact::Merge(Arc::new(f))
        }
        FactKind::Knowledge => {
            let f: KnowledgeFact = json(opened.json)?;
            entitled(f.author == author)?;
            let text = f.text.trim();
            valid(
                !text.is_empty() && text.len() <= MAX_KNOWLEDGE_BYTES && text == f.text,
                "knowledge text empty, too long or not trimmed",
            )?;
            valid(
                key.strip_prefix(KNOWLEDGE_PREFIX) == Some(knowledge_id(f.kind, text).as_str()),
                "knowledge key is not the hash of its text",
            )?;
            valid(short(&f.story), "knowledge story too long")?;
            Fact::Knowledge(Arc::new(f))
        }
        FactKind::Budget => {
            let f: BudgetFact = json(opened.json)?;
            check_budget(key, author, &f)?;
            Fact::Budget(Arc::new(f))
        }
        FactKind::Command => {
            let f: CommandFact = json(opened.json)?;
            check_command(key, author, opened.json, &f, operators)?;
            Fact::Command(Arc::new(f))
        }
        FactKind::Notified => {
            let f: NotifiedFact = json(opened.json)?;
            entitled(f.by == author)?;
            valid(
                !f.id.is_empty()
                    && f.id.len() <= MAX_ID_BYTES
                    && !f.id.chars().any(char::is_control)
                    && short(&f.story),
                "notified id empty, too long or with control characters",
            )?;
            valid(
                key.strip_prefix(NOTIFIED_PREFIX) == Some(notified_hash(&f.id).as_str()),
                "notified key is not the hash of its id",
            )?;
            Fact::Notified(Arc::new(f))
        }
        FactKind::Epoch => {
            let f: EpochFact = json(opened.json)?;
            entitled(f.holder == author && claim_id_holder(&f.claim) == Some(author))?;
            valid(
                f.epoch >= 1 && key == f.key(),
                "epoch key does not name its epoch and claim",
            )?;
            valid(
                !f.cut.is_empty() && f.cut.len() <= MAX_CUT_HEADS && f.hashes().is_some(),
                "epoch cut empty, too long, or not change hashes",
            )?;
            Fact::Epoch(Arc::new(f))
        }
        FactKind::Admit | FactKind::Revoke => {
            let f: RosterFact = json(opened.json)?;
            entitled(operators.contains(author))?;
            let prefix = if kind == FactKind::Admit {
                ADMIT_PREFIX
            } else {
                REVOKE_PREFIX
            };
            valid(
                key.strip_prefix(prefix) == Some(f.peer.as_str())
                    && trust::key_of(&f.peer, scheme).is_some(),
                "roster key does not name its peer, or the peer is no peer id",
            )?;
            valid(
                short(&f.note) && !f.note.chars().any(char::is_control),
                "roster note too long or with control characters",
            )?;
            if kind == FactKind::Admit {
                Fact::Admit(Arc::new(f))
            } else {
                Fact::Revoke(Arc::new(f))
            }
        }
    };
    Ok((author.to_string(), fact))
}

fn entitled(ok: bool) -> Result<(), Refusal> {
    ok.then_some(()).ok_or(Refusal::NotEntitled)
}

fn valid(ok: bool, why: &'static str) -> Result<(), Refusal> {
    ok.then_some(()).ok_or(Refusal::Invalid(why))
}

fn short(text: &str) -> bool {
    text.len() <= MAX_SHORT_TEXT
}

/// A story from a peer passes what `story add` checks, and its key is its own.
fn check_story(key: &str, author: &str, f: &StoryFact) -> Result<(), Refusal> {
    entitled(*f.created_by == *author)?;
    valid(
        f.number >= 1
            && key.strip_prefix(STORY_PREFIX) == Some(story_key(f.number, author).as_str()),
        "story key does not name its number and creator",
    )?;
    let new = NewStory {
        title: f.title.to_string(),
        body: f.body.to_string(),
        priority: Some(f.priority),
        files: f.planned_files(),
        labels: f.labels.to_vec(),
        imported: f.imported.as_deref().cloned(),
        ..Default::default()
    };
    let ok = new
        .validate()
        .map_err(|_| Refusal::Invalid("story field out of bounds"))?;
    valid(
        *ok.title == *f.title
            && f.files
                .iter()
                .map(|f| &**f)
                .eq(ok.files.iter().map(String::as_str))
            && f.labels == ok.labels,
        "story title, files or labels not in normal form",
    )?;
    valid(
        f.depends_on.len() <= MAX_DEPENDS
            && f.depends_on.iter().all(|d| {
                d.split_once('@').is_some_and(|(n, tag)| {
                    n.starts_with("S-") && !tag.is_empty() && !d.contains('/') && short(d)
                })
            })
            && short(&f.source),
        "story dependencies or source malformed",
    )
}

/// A handoff from a peer within what a local executor's handoff may hold.
fn check_handoff(h: &Handoff) -> Result<(), Refusal> {
    let lists = [&h.findings, &h.decisions, &h.warnings];
    valid(
        lists.iter().all(|l| l.len() <= MAX_FILES)
            && h.files.len() <= MAX_FILES
            && h.learnings.len() <= MAX_FILES
            && h.confidence.is_none_or(|c| c <= 100)
            && h.commit
                .as_deref()
                .is_none_or(|c| short(c) && !c.chars().any(char::is_control)),
        "handoff out of bounds",
    )?;
    for f in &h.files {
        normalize_repo_path(f)
            .map_err(|_| Refusal::Invalid("handoff file path escapes the repository"))?;
    }
    Ok(())
}
