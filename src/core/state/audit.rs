//! The audit trail: who wrote what, and when, read from the signed facts of the document
//! (`mesh-agent log`).
//!
//! Every admitted value of every key — the grow-only set [`Doc`] keeps, overwritten
//! values included — is one [`AuditEntry`] with its *verified* author (the peer id whose
//! signature opened it), the time the fact itself carries, what it did, the story it
//! concerns, and whether it is the value its key shows ([`Standing::Counts`]), a value
//! whose author's facts do not count ([`Standing::NotMember`]: not admitted to the
//! roster, or written outside a revoked member's past), or another value of that key
//! that does not count ([`Standing::Superseded`]: a second write to a write-once key, an
//! older node description, a takeover's release of a finished claim).
//!
//! Refused values are entries too ([`Standing::Refused`]), with the author they *claim*
//! (or `?`) and why they were refused. A document keeps only the most recent
//! [`REFUSED_KEPT`] of them ([`RefusedLog`]), each with its key cut to
//! [`MAX_REFUSED_KEY_BYTES`]: a hostile peer can write refused values without end, and
//! must not grow this node's memory with them. `status` still counts every refusal per
//! author and kind.
//!
//! Order: facts that carry no time and belong to nothing that does (node descriptions)
//! first; then the rest by time, then key, then writing operation — a release, which
//! carries no time, at the time of the claim it releases; then the refused values in the
//! order this node met them (their content is not trusted, so neither is a time in it).
//! Every node holding the same document lists its facts identically.
//!
//! Pure: nothing here reads a clock or does I/O.

use super::doc::Fact;
use super::*;
use crate::core::model::InputError;

/// How many refused values a document remembers for the audit trail: the most recent.
pub const REFUSED_KEPT: usize = 1000;
/// Longest key remembered for a refused value, in bytes (a hostile peer picks the key).
pub const MAX_REFUSED_KEY_BYTES: usize = 200;
/// Longest free text (title, note, lesson) quoted in an entry's action, in characters.
const MAX_QUOTE_CHARS: usize = 80;

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The author's wall clock when it wrote the fact (ms since the epoch), as the fact
    /// itself carries it; `None` when it carries none (a node description, a release) and
    /// for refused values, whose content is not trusted.
    pub at_ms: Option<u64>,
    /// The verified author: the peer id whose signature opened the value. For a refused
    /// value, the author it names (unverified), or `?` when it names none.
    pub author: String,
    /// What it did, for people: `claimed implement token 3`, `released review (failed:
    /// tests failed)`, `refused claim (bad signature)`, ...
    pub action: String,
    /// The display id (`S-0003`) of the story it concerns, or the story key when the view
    /// knows no such story; `None` when it concerns none.
    pub story: Option<String>,
    pub standing: Standing,
    pub kind: FactKind,
    /// The document key it was written under (cut to [`MAX_REFUSED_KEY_BYTES`] when
    /// refused).
    pub key: String,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Whether a value counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// The value its key shows: what the view folds.
    Counts,
    /// Admitted, but another value of the same key counts (or, for a takeover's release
    /// of a finished claim, none of them).
    Superseded,
    /// Signed and valid, but its author's facts do not count: the mesh has operators and
    /// the author is not admitted, or was revoked and this value is not in the revoke's
    /// causal past.
    NotMember,
    /// Not admitted: unsigned, mis-signed, invalid or not its author's to write.
    Refused,
}

impl Standing {
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Counts => "counts",
            Standing::Superseded => "superseded",
            Standing::NotMember => "not_member",
            Standing::Refused => "refused",
        }
    }
}

/// What `mesh-agent log` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    /// Only entries about this story (display id or key).
    #[serde(default)]
    pub story: Option<String>,
    /// Only the last N entries (after the story filter).
    #[serde(default)]
    pub tail: Option<usize>,
}

/// One refused value, as remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RefusedValue {
    key: String,
    kind: FactKind,
    author: String,
    why: Refusal,
}

/// The most recent refused values of a document, at most [`REFUSED_KEPT`], oldest first.
#[derive(Debug, Clone, Default)]
pub(super) struct RefusedLog {
    recent: VecDeque<RefusedValue>,
}

impl RefusedLog {
    /// Remembers one refused value, forgetting the oldest beyond [`REFUSED_KEPT`].
    pub(super) fn push(&mut self, key: &str, kind: FactKind, author: &str, why: Refusal) {
        if self.recent.len() >= REFUSED_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(RefusedValue {
            key: cut(key, MAX_REFUSED_KEY_BYTES).to_string(),
            kind,
            author: cut(author, trust::MAX_AUTHOR_BYTES).to_string(),
            why,
        });
    }

    pub(super) fn clear(&mut self) {
        self.recent.clear();
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.recent.len()
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Free text from a fact as one short line: control characters (a newline, a terminal
/// escape in a hostile note) become spaces, and long text is cut with `…`.
fn quote(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_QUOTE_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(MAX_QUOTE_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// An admitted value of a key, as the document hands it over ([`Doc::candidates`]).
pub(super) struct Admitted<'a> {
    pub(super) key: &'a str,
    /// The verified author.
    pub(super) author: &'a str,
    pub(super) fact: &'a Fact,
    /// The operation that wrote it (counter, actor).
    pub(super) op: (u64, &'a [u8]),
    /// Whether it is the value its key shows.
    pub(super) chosen: bool,
    /// Whether its author's facts count (the roster; always in an open mesh).
    pub(super) member: bool,
}

/// What a claim id says about the work it claimed.
struct ClaimInfo {
    story: Option<String>,
    /// `implement`, `review.1`, ...
    phase: String,
    at_ms: u64,
}

/// The story resource (or else the first resource) of a claim, as the action names it.
fn claim_info(c: &ClaimFact) -> (ClaimInfo, u64) {
    let story = c.resources.iter().find_map(|(r, t)| match r {
        Resource::Story {
            story,
            phase,
            round,
        } => Some((story.clone(), phase_round(*phase, *round), *t)),
        _ => None,
    });
    let (story, phase, token) = match story {
        Some((s, p, t)) => (Some(s), p, t),
        None => match c.resources.first() {
            Some((r, t)) => (None, r.to_string(), *t),
            None => (None, "nothing".to_string(), 0),
        },
    };
    (
        ClaimInfo {
            story,
            phase,
            at_ms: c.written_at_ms,
        },
        token,
    )
}

fn phase_round(phase: Phase, round: u32) -> String {
    if round == 0 {
        phase.to_string()
    } else {
        format!("{phase}.{round}")
    }
}

/// The story key a refused value's key names, where the key names one.
fn story_of_key(key: &str, kind: FactKind) -> Option<&str> {
    let rest = match kind {
        FactKind::Story => key.strip_prefix(STORY_PREFIX)?,
        FactKind::Result => key.strip_prefix(RESULT_PREFIX)?.split('/').next()?,
        FactKind::Merge => key.strip_prefix(MERGE_PREFIX)?.split('/').next()?,
        _ => return None,
    };
    (!rest.is_empty()).then_some(rest)
}

/// Where an entry goes in the trail: section (undated, dated, refused), time, key, then
/// the writing operation or the refusal's arrival.
type SortKey = (u8, u64, String, (u64, Vec<u8>));

impl Doc {
    /// The audit trail of this document as `view` (its fold) names stories: every
    /// admitted value of every key and the most recent refused values, in trail order
    /// (see the module's documentation), filtered and cut as `q` asks. An unknown
    /// `q.story` is an error naming it.
    pub fn audit(&self, view: &View, q: &LogQuery) -> Result<Vec<AuditEntry>, InputError> {
        let want = match q.story.as_deref() {
            Some(id) => Some(view.resolve(id.trim())?.key.to_string()),
            None => None,
        };
        let values: Vec<Admitted> = self.candidates().collect();
        // Claims (by id) for their releases: the value the key shows, or else the first.
        let mut claims: BTreeMap<&str, ClaimInfo> = BTreeMap::new();
        for v in &values {
            if let Fact::Claim(c) = v.fact {
                let id = v.key.strip_prefix(CLAIM_PREFIX).unwrap_or(v.key);
                if v.chosen {
                    claims.insert(id, claim_info(c).0);
                } else {
                    claims.entry(id).or_insert_with(|| claim_info(c).0);
                }
            }
        }
        let display = |skey: &str| match view.stories.get(skey) {
            Some(s) => s.id.to_string(),
            None => skey.to_string(),
        };
        let mut out: Vec<(SortKey, Option<String>, AuditEntry)> = Vec::new();
        for v in &values {
            let Some(kind) = FactKind::of_key(v.key) else {
                continue;
            };
            let (at_ms, order_ms, story, action) = describe(v, &claims);
            let standing = if v.chosen {
                Standing::Counts
            } else if !v.member {
                Standing::NotMember
            } else {
                Standing::Superseded
            };
            let section = if order_ms.is_some() { 1 } else { 0 };
            let sort = (
                section,
                order_ms.unwrap_or(0),
                v.key.to_string(),
                (v.op.0, v.op.1.to_vec()),
            );
            out.push((
                sort,
                story.clone(),
                AuditEntry {
                    at_ms,
                    author: v.author.to_string(),
                    action,
                    story: story.as_deref().map(display),
                    standing,
                    kind,
                    key: v.key.to_string(),
                    reason: None,
                },
            ));
        }
        for (n, r) in self.refused.recent.iter().enumerate() {
            let story = story_of_key(&r.key, r.kind).map(str::to_string);
            out.push((
                (2, n as u64, String::new(), (0, Vec::new())),
                story.clone(),
                AuditEntry {
                    at_ms: None,
                    author: r.author.clone(),
                    action: format!("refused {} ({})", r.kind.as_str(), r.why.as_str()),
                    story: story.as_deref().map(display),
                    standing: Standing::Refused,
                    kind: r.kind,
                    key: r.key.clone(),
                    reason: Some(r.why.as_str().to_string()),
                },
            ));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        let mut entries: Vec<AuditEntry> = out
            .into_iter()
            .filter(|(_, story, _)| want.is_none() || *story == want)
            .map(|(_, _, e)| e)
            .collect();
        if let Some(n) = q.tail {
            entries.drain(..entries.len().saturating_sub(n));
        }
        Ok(entries)
    }
}

/// An admitted value's own time, the time it is ordered at, the story key it concerns,
/// and what it did.
fn describe(
    v: &Admitted,
    claims: &BTreeMap<&str, ClaimInfo>,
) -> (Option<u64>, Option<u64>, Option<String>, String) {
    let key = v.key;
    match v.fact {
        Fact::Story(s) => {
            let story = key.strip_prefix(STORY_PREFIX).map(str::to_string);
            let action = format!("story added: {}", quote(&s.title));
            (Some(s.created_at_ms), Some(s.created_at_ms), story, action)
        }
        Fact::Node(n) => {
            let roles = if n.roles.is_empty() {
                "none".to_string()
            } else {
                quote(&n.roles.join(","))
            };
            let mut action = format!("node description: roles {roles}, capacity {}", n.capacity);
            if !n.version.is_empty() {
                action.push_str(&format!(", version {}", quote(&n.version)));
            }
            (None, None, None, action)
        }
        Fact::Claim(c) => {
            let (info, token) = claim_info(c);
            let files = c.files().len();
            let mut action = format!("claimed {} token {token}", info.phase);
            if files > 0 {
                action.push_str(&format!(" (+{files} file lock(s))"));
            }
            (
                Some(c.written_at_ms),
                Some(c.written_at_ms),
                info.story,
                action,
            )
        }
        Fact::Release(r) => {
            let id = key.strip_prefix(RELEASE_PREFIX).unwrap_or(key);
            let info = claims.get(id);
            let what = info.map_or("a claim not seen", |c| c.phase.as_str());
            let mut why = r.why.as_str().to_string();
            if !r.note.is_empty() {
                why.push_str(": ");
                why.push_str(&quote(&r.note));
            }
            let action = match claim_id_holder(id) {
                Some(holder) if holder != v.author => {
                    format!("released {what} of {} ({why})", peer_tag(holder))
                }
                _ => format!("released {what} ({why})"),
            };
            (
                None,
                info.map(|c| c.at_ms),
                info.and_then(|c| c.story.clone()),
                action,
            )
        }
        Fact::Result(r) => {
            let mut action = format!("result {}", phase_round(r.phase, r.round));
            match r.handoff.verdict {
                Some(Verdict::Approve) => action.push_str(" approve"),
                Some(Verdict::Reject) => action.push_str(" reject"),
                None => {}
            }
            if let Some(c) = &r.handoff.commit {
                action.push_str(&format!(" (commit {})", quote(cut(c, 12))));
            }
            (
                Some(r.written_at_ms),
                Some(r.written_at_ms),
                Some(r.story.clone()),
                action,
            )
        }
        Fact::Merge(m) => (
            Some(m.written_at_ms),
            Some(m.written_at_ms),
            Some(m.story.clone()),
            format!("merged {}", quote(cut(&m.commit, 12))),
        ),
        Fact::Knowledge(k) => {
            let story = (!k.story.is_empty()).then(|| k.story.clone());
            let action = format!("knowledge added ({}): {}", k.kind, quote(&k.text));
            (Some(k.written_at_ms), Some(k.written_at_ms), story, action)
        }
        Fact::Admit(f) | Fact::Revoke(f) => {
            let verb = if matches!(v.fact, Fact::Admit(_)) {
                "admitted"
            } else {
                "revoked"
            };
            let mut action = format!("{verb} {}", quote(&f.peer));
            if !f.note.is_empty() {
                action.push_str(&format!(" ({})", quote(&f.note)));
            }
            (Some(f.at_ms), Some(f.at_ms), None, action)
        }
        Fact::Budget(b) => {
            let at = match &**b {
                BudgetFact::Reserve { at_ms, .. }
                | BudgetFact::Usage { at_ms, .. }
                | BudgetFact::Ask { at_ms, .. }
                | BudgetFact::Give { at_ms, .. } => *at_ms,
            };
            let story = match &**b {
                BudgetFact::Reserve { story, .. } | BudgetFact::Usage { story, .. } => {
                    Some(story.clone())
                }
                _ => None,
            };
            (Some(at), Some(at), story, b.describe())
        }
        Fact::Command(c) => (
            Some(c.at_ms),
            Some(c.at_ms),
            c.story().map(str::to_string),
            format!("operator command: {}", quote(&c.describe())),
        ),
        Fact::Epoch(e) => (
            Some(e.at_ms),
            Some(e.at_ms),
            None,
            format!(
                "the move to epoch {} (claim {}): cut at {} head(s), root {}",
                e.epoch,
                e.claim,
                e.cut.len(),
                e.root.get(..12).unwrap_or(&e.root)
            ),
        ),
        Fact::Notified(n) => (
            Some(n.at_ms),
            Some(n.at_ms),
            (!n.story.is_empty()).then(|| n.story.clone()),
            format!(
                "notification {} ({}, {} attempt(s)): {}",
                match n.outcome {
                    crate::core::notify::Outcome::Delivered => "sent",
                    crate::core::notify::Outcome::Refused => "refused by a sink",
                },
                n.kind.as_str(),
                n.attempts,
                quote(&n.id)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{NewStory, ResultFact};

    const ALICE: &str = "alice";
    const BOB: &str = "bob";
    const MALLORY: &str = "mallory";

    fn new_story(title: &str) -> NewStory {
        NewStory {
            title: title.into(),
            ..Default::default()
        }
    }

    fn log(d: &Doc, story: Option<&str>, tail: Option<usize>) -> Vec<AuditEntry> {
        let q = LogQuery {
            story: story.map(str::to_string),
            tail,
        };
        d.audit(&d.view(), &q).unwrap()
    }

    /// The JSON a writer seals.
    fn json<T: Serialize>(fact: &T) -> String {
        serde_json::to_string(fact).unwrap()
    }

    fn claim(d: &mut Doc, holder: &str, n: u64, story: &str, phase: Phase, at: u64) -> String {
        let res = Resource::story(story, phase).unwrap();
        let token = d.view().claims().next_token(&res);
        let id = format!("{holder}-{n}");
        d.put_claim(
            &id,
            &ClaimFact {
                resources: vec![(res, token)],
                holder: holder.into(),
                ttl_ms: 1000,
                written_at_ms: at,
                attempt: 1,
                after: None,
            },
        )
        .unwrap();
        id
    }

    fn result(d: &mut Doc, holder: &str, id: &str, story: &str, phase: Phase, at: u64) {
        d.put_result(&ResultFact {
            story: story.into(),
            phase,
            round: 0,
            claim: id.into(),
            token: 1,
            holder: holder.into(),
            written_at_ms: at,
            handoff: Default::default(),
            escalations: vec![],
        })
        .unwrap();
    }

    fn release(d: &mut Doc, by: &str, id: &str, why: ReleaseReason, note: &str) {
        d.put_release(
            id,
            &ReleaseFact {
                why,
                note: note.into(),
            },
            by,
        )
        .unwrap();
    }

    /// A story's life, told by its facts: who added it, claimed it, finished and released
    /// it, with the facts' own times and the claim's time for its release.
    #[test]
    fn the_trail_names_each_facts_verified_author_time_and_story_in_order() {
        let mut d = Doc::new([1; 16]).with_test_names();
        d.put_node(
            BOB,
            &NodeFact {
                roles: vec!["implement".into()],
                capacity: 2,
                version: "0.1.0".into(),
                incarnation: 0,
            },
        )
        .unwrap();
        let s1 = d.add_story(&new_story("lexer"), ALICE, 1_000).unwrap();
        let id = claim(&mut d, BOB, 1001, &s1, Phase::Research, 2_000);
        result(&mut d, BOB, &id, &s1, Phase::Research, 3_000);
        release(&mut d, BOB, &id, ReleaseReason::Done, "");
        let entries = log(&d, None, None);
        type Line<'a> = (Option<u64>, &'a str, &'a str, Option<&'a str>, Standing);
        let lines: Vec<Line> = entries
            .iter()
            .map(|e| {
                (
                    e.at_ms,
                    e.author.as_str(),
                    e.action.as_str(),
                    e.story.as_deref(),
                    e.standing,
                )
            })
            .collect();
        use Standing::Counts;
        assert_eq!(
            lines,
            vec![
                (
                    None,
                    BOB,
                    "node description: roles implement, capacity 2, version 0.1.0",
                    None,
                    Counts
                ),
                (
                    Some(1_000),
                    ALICE,
                    "story added: lexer",
                    Some("S-0001"),
                    Counts
                ),
                (
                    Some(2_000),
                    BOB,
                    "claimed research token 1",
                    Some("S-0001"),
                    Counts
                ),
                // A release carries no time: it is listed at its claim's.
                (
                    None,
                    BOB,
                    "released research (done)",
                    Some("S-0001"),
                    Counts
                ),
                (Some(3_000), BOB, "result research", Some("S-0001"), Counts),
            ]
        );
        assert_eq!(log(&d, None, Some(2)), entries[3..].to_vec(), "tail");
        assert_eq!(log(&d, None, Some(0)), vec![]);
        assert_eq!(log(&d, None, Some(99)), entries);
    }

    /// A value signed by one author under another's name counts nowhere; the trail shows it
    /// as refused, with the author it claims and why.
    #[test]
    fn a_forged_value_is_in_the_trail_as_refused_with_its_reason() {
        let mut d = Doc::new([1; 16]).with_test_names();
        let s1 = d.add_story(&new_story("lexer"), ALICE, 1_000).unwrap();
        let key = format!("{STORY_PREFIX}{s1}");
        let mut fact = (*d.view().stories[s1.as_str()].fact).clone();
        fact.title = "rewritten".into();
        let forged = Signer::for_test(MALLORY)
            .seal(&key, &json(&fact))
            .replacen(MALLORY, ALICE, 1);
        d.raw_put(&key, forged);
        // And one that names no author at all.
        d.raw_put("claim/x-1", "not sealed".into());
        let entries = log(&d, None, None);
        let refused: Vec<&AuditEntry> = entries
            .iter()
            .filter(|e| e.standing == Standing::Refused)
            .collect();
        assert_eq!(refused.len(), 2, "{entries:#?}");
        assert_eq!(refused[0].author, ALICE, "the author it claims");
        assert_eq!(refused[0].action, "refused story (bad signature)");
        assert_eq!(refused[0].reason.as_deref(), Some("bad signature"));
        assert_eq!(refused[0].story.as_deref(), Some("S-0001"));
        assert_eq!(
            refused[0].at_ms, None,
            "a refused value's time is not trusted"
        );
        assert_eq!(refused[0].key, key);
        assert_eq!(refused[1].author, "?");
        assert_eq!(refused[1].action, "refused claim (unsigned)");
        // Refused values come after the facts, in the order they arrived.
        assert_eq!(entries.last(), Some(refused[1]));
        // The real story still counts, under its real author.
        let real: Vec<&AuditEntry> = entries.iter().filter(|e| e.key == key).collect();
        assert_eq!(real[0].standing, Standing::Counts);
        assert_eq!(real[0].action, "story added: lexer");
    }

    /// A second write to a write-once key by its own author is kept and listed, but the
    /// first stands; a node's older description is superseded by its latest; a takeover
    /// release of a finished claim never counts.
    #[test]
    fn overwrites_and_ignored_takeovers_are_in_the_trail_as_superseded() {
        let mut d = Doc::new([1; 16]).with_test_names();
        let s1 = d.add_story(&new_story("lexer"), ALICE, 1_000).unwrap();
        let key = format!("{STORY_PREFIX}{s1}");
        let mut fact = (*d.view().stories[s1.as_str()].fact).clone();
        fact.title = "second thoughts".into();
        fact.created_at_ms = 5_000;
        d.raw_put(&key, Signer::for_test(ALICE).seal(&key, &json(&fact)));
        for capacity in [1, 2] {
            let node = NodeFact {
                roles: vec![],
                capacity,
                version: String::new(),
                incarnation: 0,
            };
            d.put_node(BOB, &node).unwrap();
        }
        let id = claim(&mut d, ALICE, 1001, &s1, Phase::Research, 2_000);
        result(&mut d, ALICE, &id, &s1, Phase::Research, 3_000);
        release(&mut d, ALICE, &id, ReleaseReason::Done, "");
        let rkey = format!("{RELEASE_PREFIX}{id}");
        let takeover = ReleaseFact {
            why: ReleaseReason::Expired,
            note: "taken\nover\u{1b}[31m".into(),
        };
        d.raw_put(&rkey, Signer::for_test(BOB).seal(&rkey, &json(&takeover)));
        assert!(d.rejected().is_empty(), "all of them are admitted");

        let entries = log(&d, None, None);
        let of = |key: &str| -> Vec<(String, Standing)> {
            entries
                .iter()
                .filter(|e| e.key == key)
                .map(|e| (e.action.clone(), e.standing))
                .collect()
        };
        assert_eq!(
            of(&key),
            vec![
                ("story added: lexer".into(), Standing::Counts),
                ("story added: second thoughts".into(), Standing::Superseded),
            ]
        );
        assert_eq!(
            of(&format!("{NODE_PREFIX}{BOB}")),
            vec![
                (
                    "node description: roles none, capacity 1".into(),
                    Standing::Superseded
                ),
                (
                    "node description: roles none, capacity 2".into(),
                    Standing::Counts
                ),
            ]
        );
        assert_eq!(
            of(&rkey),
            vec![
                ("released research (done)".into(), Standing::Counts),
                (
                    // Control characters from a peer's note never reach a terminal.
                    "released research of alice (expired: taken over [31m)".into(),
                    Standing::Superseded
                ),
            ]
        );
        // Exactly one value counts for every key the document shows, and it is the
        // value the document chose.
        for k in d.fact_keys() {
            let counting: Vec<&AuditEntry> = entries
                .iter()
                .filter(|e| e.key == k && e.standing == Standing::Counts)
                .collect();
            assert_eq!(counting.len(), 1, "{k}");
        }
    }

    #[test]
    fn the_trail_of_one_story_holds_only_that_storys_facts() {
        let mut d = Doc::new([1; 16]).with_test_names();
        let s1 = d.add_story(&new_story("lexer"), ALICE, 1_000).unwrap();
        let s2 = d.add_story(&new_story("parser"), ALICE, 1_001).unwrap();
        let a = claim(&mut d, BOB, 1001, &s1, Phase::Research, 2_000);
        result(&mut d, BOB, &a, &s1, Phase::Research, 3_000);
        release(&mut d, BOB, &a, ReleaseReason::Done, "");
        let b = claim(&mut d, BOB, 1002, &s2, Phase::Research, 2_500);
        release(&mut d, BOB, &b, ReleaseReason::Failed, "tests failed");
        d.put_knowledge(&KnowledgeFact {
            kind: KnowledgeKind::Pitfall,
            text: "tests need TZ=UTC".into(),
            story: s2.clone(),
            author: BOB.into(),
            written_at_ms: 2_600,
        })
        .unwrap();
        let forged = format!("{RESULT_PREFIX}{s2}/research/{BOB}-1002");
        d.raw_put(&forged, "m1 bob junk {}".into());

        let two = log(&d, Some("s-2"), None);
        let actions: Vec<&str> = two.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            vec![
                "story added: parser",
                "claimed research token 1",
                "released research (failed: tests failed)",
                "knowledge added (pitfall): tests need TZ=UTC",
                "refused result (bad signature)",
            ]
        );
        assert!(two.iter().all(|e| e.story.as_deref() == Some("S-0002")));
        // By key too, and with a tail.
        assert_eq!(log(&d, Some(&s2), Some(1)), two[4..].to_vec());
        let one = log(&d, Some("S-0001"), None);
        assert_eq!(one.len(), 4);
        assert!(one.iter().all(|e| e.story.as_deref() == Some("S-0001")));
        // An unknown story is an error naming it.
        let q = LogQuery {
            story: Some("S-0099".into()),
            tail: None,
        };
        let err = d.audit(&d.view(), &q).unwrap_err();
        assert!(err.to_string().contains("S-0099"), "{err}");
    }

    /// With operators, a signed and valid fact whose author is not admitted is listed as
    /// not counting; the admission itself is the operator's entry.
    #[test]
    fn a_non_members_facts_are_in_the_trail_as_not_counting() {
        let mut d = Doc::new([1; 16])
            .with_test_names()
            .with_operators(["op".to_string()].into());
        let key = admit_key(ALICE);
        let fact = RosterFact {
            peer: ALICE.into(),
            note: "laptop".into(),
            at_ms: 500,
        };
        d.put_signed(&key, &Signer::for_test("op").seal(&key, &json(&fact)))
            .unwrap();
        d.add_story(&new_story("lexer"), ALICE, 1_000).unwrap();
        // A non-member's own document refuses its write; a rogue copy that ignores the
        // roster (same history, no operators) makes it, and it reaches `d` as a push.
        assert!(d.add_story(&new_story("parser"), BOB, 1_001).is_err());
        let mut rogue = Doc::load_test_names([2; 16], &d.save(), &[]).unwrap();
        let s2 = rogue.add_story(&new_story("parser"), BOB, 1_001).unwrap();
        let (pushed, _) = rogue.local_changes_after(0, usize::MAX);
        assert!(d.apply_pushed(pushed).unwrap());
        let entries = log(&d, None, None);
        let lines: Vec<(&str, &str, Standing, Option<&str>)> = entries
            .iter()
            .map(|e| {
                (
                    e.author.as_str(),
                    e.action.as_str(),
                    e.standing,
                    e.story.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            lines,
            vec![
                ("op", "admitted alice (laptop)", Standing::Counts, None),
                (
                    "alice",
                    "story added: lexer",
                    Standing::Counts,
                    Some("S-0001")
                ),
                // Not in the view: named by its key.
                (
                    "bob",
                    "story added: parser",
                    Standing::NotMember,
                    Some(s2.as_str())
                ),
            ]
        );
    }

    /// A peer writing refused values without end costs at most [`REFUSED_KEPT`] entries
    /// of [`MAX_REFUSED_KEY_BYTES`]-byte keys; the counts per author stay exact.
    #[test]
    fn the_record_of_refused_values_stays_bounded() {
        let mut d = Doc::new([1; 16]).with_test_names();
        let n = REFUSED_KEPT * 3;
        for i in 0..n {
            let key = format!("{CLAIM_PREFIX}{MALLORY}-{i}");
            d.inner
                .put(ROOT, key.as_str(), format!("junk {i}"))
                .unwrap();
        }
        let huge = format!("{CLAIM_PREFIX}{}", "é".repeat(100_000));
        d.inner.put(ROOT, huge.as_str(), "junk").unwrap();
        d.inner.commit();
        d.refresh();
        assert_eq!(d.refused.len(), REFUSED_KEPT);
        assert_eq!(d.rejected()["?"][&FactKind::Claim], n as u64 + 1);
        let entries = log(&d, None, None);
        assert_eq!(entries.len(), REFUSED_KEPT);
        assert!(entries.iter().all(|e| e.standing == Standing::Refused));
        assert!(entries.iter().all(|e| e.key.len() <= MAX_REFUSED_KEY_BYTES));
        // The most recent are kept: the oldest kept is the (n - KEPT + 1)-th junk value.
        let last = entries.last().unwrap();
        assert!(last.key.starts_with("claim/éé"), "{}", last.key);
        assert_eq!(
            entries[0].key,
            format!("{CLAIM_PREFIX}{MALLORY}-{}", n + 1 - REFUSED_KEPT)
        );
        // A reload reads every change again and keeps the same bound.
        let reloaded = Doc::load_test_names([2; 16], &d.save(), &[]).unwrap();
        assert_eq!(reloaded.refused.len(), REFUSED_KEPT);
    }
}
