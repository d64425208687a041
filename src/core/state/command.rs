//! Operator commands: how humans steer the mesh (docs/DESIGN.md §14).
//!
//! A command is a fact like any other — write-once, sealed — but sealed by an operator
//! (one of the config's `operators`, the mesh's trust anchors), written through any node
//! (`mesh-agent pause S-3`, `approve`, …: the CLI signs with the local operator key and
//! the node only carries the sealed value). Its key names the operator and a hash of the
//! command's own JSON, `command/<operator>/<hash>`, so one operator's commands never
//! collide and a replay is the same fact.
//!
//! What the commands mean is folded here into [`Steering`], a pure function of the set
//! of admitted commands: every node with the same commands steers the same way, whatever
//! order they arrived in. Commands on one target are applied in the order of the
//! operator's wall clock when it signed (`at_ms`), then the operator's id, then the key:
//! the later pause or resume wins, the later priority or assignment wins; a cancel is
//! final; context notes, approvals, dismissals, requested changes and unblocks
//! accumulate. A command from an operator cut off by a partition applies when it arrives,
//! in its place in that order.
//!
//! Commands that name a thing of the moment name it exactly, so a late arrival does what
//! its operator saw: `approve` and `dismiss` name attention items (`<kind>@<result key>`),
//! `request-changes` names the result it sends back, `unblock` names the step (phase and
//! round) it grants more attempts at.

use super::*;
use crate::core::model::{PRIORITY_MAX, PRIORITY_MIN};
use std::fmt;

pub(super) const COMMAND_PREFIX: &str = "command/";

/// Longest note an operator may attach (context, requested changes).
pub const MAX_COMMAND_TEXT: usize = 8 * 1024;
/// Longest reason (pause, cancel).
const MAX_REASON: usize = 1024;
/// Most attention items one approval names.
const MAX_ITEMS: usize = 64;
/// Most attempts one unblock grants.
pub const MAX_UNBLOCK_GRANT: u32 = 10;

/// What a command is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// One story, by its document key (`S-0042@tag`).
    Story { story: String },
    /// One node, by peer id (pause and resume only).
    Node { peer: String },
    /// The whole mesh (pause and resume only).
    All,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Story { story } => write!(f, "story {story}"),
            Target::Node { peer } => write!(f, "node {peer}"),
            Target::All => f.write_str("the whole mesh"),
        }
    }
}

/// What an operator asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Sets the story's priority (lower runs first).
    Prioritize { priority: u32 },
    /// No new phase of the target starts (running work finishes).
    Pause {
        #[serde(default)]
        reason: String,
    },
    /// Undoes a pause of the same target.
    Resume,
    /// The story stops for good: running work is stopped, nothing of it lands.
    Cancel {
        #[serde(default)]
        reason: String,
    },
    /// Only this node (or only nodes with this role) runs the story's phases — but
    /// review, which never runs on the implementer. Both empty: anyone again.
    Assign {
        #[serde(default)]
        node: Option<String>,
        #[serde(default)]
        role: Option<String>,
    },
    /// A note every later job of the story receives in its context.
    Context { text: String },
    /// Clears attention items (`<kind>@<result key>`): the gate they hold opens.
    Approve { items: Vec<String> },
    /// Sends the story back one phase from `result` (a result key), with `text` as the
    /// next job's context: a plan is planned again, a change is reworked.
    RequestChanges { result: String, text: String },
    /// Grants `grant` more attempts (or rounds) at a blocked step.
    Unblock {
        phase: Phase,
        round: u32,
        grant: u32,
    },
    /// Clears one attention item: the operator says it is no concern (a gate it held
    /// opens, as with an approval).
    Dismiss { item: String },
    /// The mesh's daily budget (`None`: no budget), split into per-node allowances that
    /// sum to it (docs/DESIGN.md §16). The whole mesh only.
    Budget {
        daily_micro_usd: Option<u64>,
        #[serde(default)]
        shares: BTreeMap<String, u64>,
    },
    /// The story's cost limit (`None`: no limit): past it, no phase starts.
    Limit { micro_usd: Option<u64> },
}

impl Op {
    /// `unblock` as an operator gives it: one more attempt, or (`reset_attempts`) a full
    /// set again; the node fills in the blocked step when it resolves the draft.
    pub fn unblock(reset_attempts: bool) -> Op {
        Op::Unblock {
            phase: crate::core::model::Phase::Research,
            round: 0,
            grant: if reset_attempts {
                crate::core::model::MAX_ATTEMPTS.min(MAX_UNBLOCK_GRANT)
            } else {
                1
            },
        }
    }

    /// The verb, as the CLI spells it.
    pub fn verb(&self) -> &'static str {
        match self {
            Op::Prioritize { .. } => "prioritize",
            Op::Pause { .. } => "pause",
            Op::Resume => "resume",
            Op::Cancel { .. } => "cancel",
            Op::Assign { .. } => "assign",
            Op::Context { .. } => "context",
            Op::Approve { .. } => "approve",
            Op::RequestChanges { .. } => "request-changes",
            Op::Unblock { .. } => "unblock",
            Op::Dismiss { .. } => "dismiss",
            Op::Budget { .. } => "budget set",
            Op::Limit { .. } => "budget limit",
        }
    }
}

/// An operator's command: `command/<operator>/<hash of this JSON>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandFact {
    pub target: Target,
    pub op: Op,
    /// The operator's wall clock when it signed: orders commands on one target.
    pub at_ms: u64,
}

impl CommandFact {
    /// One line for people: "pause story S-0042@ab12cd: flaky tests".
    pub fn describe(&self) -> String {
        let what = match &self.op {
            Op::Prioritize { priority } => format!("priority {priority}"),
            Op::Pause { reason } | Op::Cancel { reason } => reason.clone(),
            Op::Resume => String::new(),
            Op::Assign { node, role } => match (node, role) {
                (Some(n), _) => format!("to node {n}"),
                (None, Some(r)) => format!("to role {r}"),
                (None, None) => "to anyone".into(),
            },
            Op::Context { text } => text.clone(),
            Op::Approve { items } => items.join(", "),
            Op::RequestChanges { result, text } => format!("{result}: {text}"),
            Op::Unblock {
                phase,
                round,
                grant,
            } => format!("{grant} more at {phase} round {round}"),
            Op::Dismiss { item } => item.clone(),
            Op::Budget {
                daily_micro_usd: Some(d),
                shares,
            } => format!("{} a day in {} allowances", super::usd(*d), shares.len()),
            Op::Budget { .. } | Op::Limit { micro_usd: None } => "none".into(),
            Op::Limit { micro_usd: Some(m) } => super::usd(*m),
        };
        let head = format!("{} {}", self.op.verb(), self.target);
        if what.is_empty() {
            head
        } else {
            format!("{head}: {what}")
        }
    }

    /// The story this command is about, if any.
    pub fn story(&self) -> Option<&str> {
        match &self.target {
            Target::Story { story } => Some(story),
            _ => None,
        }
    }
}

/// The document key of `operator`'s command whose JSON is `json` (the exact text sealed).
pub fn command_key(operator: &str, json: &str) -> String {
    let mut h = Sha256::new();
    h.update(json.as_bytes());
    format!(
        "{COMMAND_PREFIX}{operator}/{}",
        hex::encode(&h.finalize()[..12])
    )
}

/// The admission rule of a command (see [`super::admit`]): sealed by an operator under
/// the key its JSON names, every field within bounds, the op one its target takes.
pub(super) fn check_command(
    key: &str,
    author: &str,
    json: &str,
    f: &CommandFact,
    operators: &BTreeSet<String>,
) -> Result<(), Refusal> {
    if !operators.contains(author) {
        return Err(Refusal::NotEntitled);
    }
    if key != command_key(author, json) {
        return Err(Refusal::Invalid(
            "command key does not name its operator and content",
        ));
    }
    let short = |s: &str| s.len() <= MAX_REASON;
    let name = |s: &str| !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_whitespace);
    let on_story =
        matches!(&f.target, Target::Story { story } if name(story) && !story.contains('/'));
    let ok = match &f.target {
        Target::Story { .. } if !on_story => false,
        Target::Node { peer } if !name(peer) => false,
        _ => true,
    };
    if !ok {
        return Err(Refusal::Invalid("command target malformed"));
    }
    let fits = match &f.op {
        Op::Pause { reason } => short(reason),
        Op::Resume => true,
        Op::Budget {
            daily_micro_usd,
            shares,
        } => {
            matches!(f.target, Target::All)
                && shares.len() <= super::budget::MAX_SHARES
                && shares.keys().all(|p| name(p))
                && match daily_micro_usd {
                    None => shares.is_empty(),
                    Some(d) => {
                        *d <= super::budget::MAX_MICRO_USD
                            && shares.values().try_fold(0u64, |a, s| a.checked_add(*s)) == Some(*d)
                    }
                }
        }
        _ if !on_story => return Err(Refusal::Invalid("command takes a story")),
        Op::Prioritize { priority } => (PRIORITY_MIN..=PRIORITY_MAX).contains(priority),
        Op::Cancel { reason } => short(reason),
        Op::Assign { node, role } => {
            node.as_deref().is_none_or(name) && role.as_deref().is_none_or(name)
        }
        Op::Context { text } => !text.trim().is_empty() && text.len() <= MAX_COMMAND_TEXT,
        Op::Approve { items } => {
            !items.is_empty() && items.len() <= MAX_ITEMS && items.iter().all(|i| short(i))
        }
        Op::RequestChanges { result, text } => {
            short(result) && !text.trim().is_empty() && text.len() <= MAX_COMMAND_TEXT
        }
        Op::Unblock { grant, .. } => (1..=MAX_UNBLOCK_GRANT).contains(grant),
        Op::Dismiss { item } => !item.is_empty() && short(item),
        Op::Limit { micro_usd } => micro_usd.is_none_or(|m| m <= super::budget::MAX_MICRO_USD),
    };
    if !fits {
        return Err(Refusal::Invalid("command field out of bounds"));
    }
    Ok(())
}

/// Who paused or cancelled, when, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    pub by: String,
    pub at_ms: u64,
    pub reason: String,
}

/// An operator's note to a story's later jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub by: String,
    pub at_ms: u64,
    pub text: String,
}

/// A story handed to one node or one role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub node: Option<String>,
    pub role: Option<String>,
    pub by: String,
}

/// What operators asked of one story.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorySteer {
    pub paused: Option<Stop>,
    pub cancelled: Option<Stop>,
    pub priority: Option<u32>,
    pub assigned: Option<Assignment>,
    /// Context notes, in command order.
    pub notes: Vec<Note>,
    /// Attention items approved or dismissed (`<kind>@<result key>`).
    pub cleared: BTreeSet<String>,
    /// Results sent back, by result key: the operator's note.
    pub changes_requested: BTreeMap<String, Note>,
    /// More attempts granted at a step (phase, round), summed.
    pub granted: BTreeMap<(Phase, u32), u32>,
    /// Its cost limit, in micro-USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// One command as listed (`mesh-agent log` has the same from the audit trail).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandEntry {
    pub key: String,
    pub operator: String,
    pub fact: CommandFact,
}

/// Everything operators asked, folded: identical on every node with the same commands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Steering {
    /// The whole mesh is paused.
    pub all: Option<Stop>,
    /// Paused nodes, by peer id.
    pub nodes: BTreeMap<String, Stop>,
    /// By story key.
    pub stories: BTreeMap<String, StorySteer>,
    /// The daily budget and its split, if an operator set one.
    pub budget: Option<super::MeshBudget>,
    /// Every command, in the order applied.
    pub commands: Vec<CommandEntry>,
}

impl Steering {
    /// Folds the commands (key → fact; the operator is in the key) in their order.
    pub(super) fn fold<'a>(commands: impl Iterator<Item = (&'a str, &'a CommandFact)>) -> Steering {
        let mut all: Vec<CommandEntry> = commands
            .map(|(key, fact)| CommandEntry {
                operator: key
                    .strip_prefix(COMMAND_PREFIX)
                    .and_then(|r| r.split_once('/'))
                    .map_or("", |(op, _)| op)
                    .to_string(),
                key: key.to_string(),
                fact: fact.clone(),
            })
            .collect();
        all.sort_by(|a, b| {
            (a.fact.at_ms, &a.operator, &a.key).cmp(&(b.fact.at_ms, &b.operator, &b.key))
        });
        let mut s = Steering::default();
        for c in &all {
            let stop = |reason: &str| Stop {
                by: c.operator.clone(),
                at_ms: c.fact.at_ms,
                reason: reason.to_string(),
            };
            let note = |text: &str| Note {
                by: c.operator.clone(),
                at_ms: c.fact.at_ms,
                text: text.to_string(),
            };
            match (&c.fact.target, &c.fact.op) {
                (Target::All, Op::Pause { reason }) => s.all = Some(stop(reason)),
                (Target::All, Op::Resume) => s.all = None,
                (Target::Node { peer }, Op::Pause { reason }) => {
                    s.nodes.insert(peer.clone(), stop(reason));
                }
                (Target::Node { peer }, Op::Resume) => {
                    s.nodes.remove(peer);
                }
                (
                    Target::All,
                    Op::Budget {
                        daily_micro_usd,
                        shares,
                    },
                ) => {
                    s.budget = daily_micro_usd.map(|d| super::MeshBudget {
                        daily_micro_usd: d,
                        shares: shares.clone(),
                        by: c.operator.clone(),
                        at_ms: c.fact.at_ms,
                    })
                }
                (Target::Story { story }, op) => {
                    let st = s.stories.entry(story.clone()).or_default();
                    match op {
                        Op::Pause { reason } => st.paused = Some(stop(reason)),
                        Op::Resume => st.paused = None,
                        Op::Cancel { reason } => {
                            st.cancelled.get_or_insert_with(|| stop(reason));
                        }
                        Op::Prioritize { priority } => st.priority = Some(*priority),
                        Op::Assign { node, role } => {
                            st.assigned = (node.is_some() || role.is_some()).then(|| Assignment {
                                node: node.clone(),
                                role: role.clone(),
                                by: c.operator.clone(),
                            })
                        }
                        Op::Context { text } => st.notes.push(note(text)),
                        Op::Approve { items } => st.cleared.extend(items.iter().cloned()),
                        Op::Dismiss { item } => {
                            st.cleared.insert(item.clone());
                        }
                        Op::RequestChanges { result, text } => {
                            st.changes_requested
                                .entry(result.clone())
                                .or_insert_with(|| note(text));
                        }
                        Op::Unblock {
                            phase,
                            round,
                            grant,
                        } => {
                            let g = st.granted.entry((*phase, *round)).or_default();
                            *g = g.saturating_add(*grant);
                        }
                        Op::Limit { micro_usd } => st.limit = *micro_usd,
                        Op::Budget { .. } => {}
                    }
                }
                // Admission refuses other ops on nodes and the mesh.
                _ => {}
            }
        }
        s.commands = all;
        s
    }

    /// Why `node` must not start a phase now (the mesh or the node is paused).
    pub fn node_paused(&self, node: &str) -> Option<&Stop> {
        self.all.as_ref().or_else(|| self.nodes.get(node))
    }

    /// What operators asked of `story`.
    pub fn story(&self, story: &str) -> Option<&StorySteer> {
        self.stories.get(story)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::AlertKind;
    use crate::core::state::tests::{admit, command, step, sync_pair};
    use crate::core::trust::Signer;

    const A: &str = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaaaa";

    /// A document of a mesh whose operators are OP and OQ, with node A admitted.
    fn doc(actor: u8) -> Doc {
        let mut d = Doc::new([actor; 16])
            .with_test_names()
            .with_operators(["OP".to_string(), "OQ".to_string()].into());
        admit(&mut d, "OP", A);
        d
    }

    fn on(story: &str) -> Target {
        Target::Story {
            story: story.into(),
        }
    }

    fn pause(reason: &str) -> Op {
        Op::Pause {
            reason: reason.into(),
        }
    }

    fn new_story(title: &str, labels: &[&str]) -> crate::core::model::NewStory {
        crate::core::model::NewStory {
            title: title.into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_an_operator_commands_and_a_forged_or_misfiled_command_counts_nowhere() {
        let mut d = doc(1);
        let k = d.add_story(&new_story("s", &[]), A, 1).unwrap();
        // A member that is no operator is refused at the writer, with the reason.
        let e = command(&mut d, A, on(&k), pause(""), 5).unwrap_err();
        assert!(e.to_string().contains("not an operator"), "{e}");
        // Taken in anyway (a hostile peer writes raw), it is refused and counted.
        let json = serde_json::to_string(&CommandFact {
            target: on(&k),
            op: pause(""),
            at_ms: 5,
        })
        .unwrap();
        let key = command_key(A, &json);
        let before = d.view().malformed;
        d.raw_put(&key, Signer::for_test(A).seal(&key, &json));
        // An operator's command copied under another key (or another operator's) too.
        let op_key = command_key("OP", &json);
        let sealed = Signer::for_test("OP").seal(&op_key, &json);
        d.raw_put(&command_key("OQ", &json), sealed.clone());
        d.raw_put(&format!("{COMMAND_PREFIX}OP/0000"), sealed);
        let v = d.view();
        assert!(v.stories[k.as_str()].more.paused.is_none());
        assert!(v.steering.commands.is_empty());
        assert_eq!(
            v.malformed,
            before + 3,
            "each forgery is refused and counted"
        );
        // Ops a node or the mesh cannot take are refused too.
        let e = command(&mut d, "OP", Target::All, Op::Prioritize { priority: 1 }, 6).unwrap_err();
        assert!(e.to_string().contains("command takes a story"), "{e}");
        // In an open mesh no one commands.
        let mut open = Doc::new([2; 16]).with_test_names();
        let k2 = open.add_story(&new_story("s", &[]), A, 1).unwrap();
        let e = command(&mut open, "OP", on(&k2), pause(""), 5).unwrap_err();
        assert!(e.to_string().contains("no one may steer it"), "{e}");
    }

    #[test]
    fn concurrent_commands_resolve_by_the_operators_clocks_on_every_node_alike() {
        let (mut a, mut b) = (doc(1), doc(2));
        let k = a.add_story(&new_story("s", &[]), A, 1).unwrap();
        sync_pair(&mut a, &mut b);
        // Two operators on the two sides of a partition: OQ resumes later than OP
        // paused, but OP's pause arrives last on b.
        command(&mut a, "OP", on(&k), pause("freeze"), 100).unwrap();
        command(&mut b, "OQ", on(&k), Op::Resume, 200).unwrap();
        command(&mut a, "OP", on(&k), Op::Prioritize { priority: 5 }, 150).unwrap();
        command(&mut b, "OQ", on(&k), Op::Prioritize { priority: 7 }, 150).unwrap();
        command(&mut a, "OP", Target::All, pause("all"), 10).unwrap();
        sync_pair(&mut a, &mut b);
        let (va, vb) = (a.view(), b.view());
        assert_eq!(va, vb);
        let s = &va.stories[k.as_str()];
        assert!(s.more.paused.is_none(), "the later resume wins");
        // Equal clocks: the operator id breaks the tie (OQ after OP).
        assert_eq!(s.priority, 7);
        assert_eq!(
            va.steering.node_paused("anyone").map(|p| p.reason.as_str()),
            Some("all")
        );
        // A pause signed after the resume, arriving now, pauses it again.
        command(&mut a, "OP", on(&k), pause("again"), 300).unwrap();
        assert_eq!(
            a.view().stories[k.as_str()]
                .more
                .paused
                .as_ref()
                .map(|p| p.reason.as_str()),
            Some("again")
        );
        // A cancel is final: a later resume or pause changes nothing about it.
        command(
            &mut b,
            "OQ",
            on(&k),
            Op::Cancel {
                reason: "dup".into(),
            },
            250,
        )
        .unwrap();
        sync_pair(&mut a, &mut b);
        let v = a.view();
        assert_eq!(v.stories[k.as_str()].status, StoryStatus::Cancelled);
        assert_eq!(v.stories[k.as_str()].next_phase, None);
        assert_eq!(v, b.view());
    }

    #[test]
    fn a_cancelled_story_runs_nothing_and_blocks_its_dependents() {
        let mut d = doc(1);
        let k = d.add_story(&new_story("base", &[]), A, 1).unwrap();
        let dep = crate::core::model::NewStory {
            title: "on top".into(),
            depends_on: vec![k.clone()],
            ..Default::default()
        };
        let k2 = d.add_story(&dep, A, 2).unwrap();
        step(&mut d, &k, Phase::Research, 0, None);
        command(
            &mut d,
            "OP",
            on(&k),
            Op::Cancel {
                reason: "not needed".into(),
            },
            9,
        )
        .unwrap();
        let v = d.view();
        assert_eq!(v.stories[k.as_str()].status, StoryStatus::Cancelled);
        assert!(v.stories[k.as_str()].more.attention.is_empty());
        let s2 = &v.stories[k2.as_str()];
        assert_eq!(s2.status, StoryStatus::Blocked);
        assert_eq!(
            s2.more.blocked_reason.as_deref(),
            Some("depends on S-0001, which was cancelled")
        );
    }

    #[test]
    fn the_approval_label_holds_implement_until_approved_and_request_changes_replans() {
        let mut d = doc(1);
        let k = d
            .add_story(&new_story("gated", &["approval"]), A, 1)
            .unwrap();
        step(&mut d, &k, Phase::Research, 0, None);
        let plan = step(&mut d, &k, Phase::Plan, 0, None);
        let v = d.view();
        let s = &v.stories[k.as_str()];
        assert_eq!(s.next_phase, Some(Phase::Implement));
        assert!(s.held, "the plan waits for a human");
        assert_eq!(s.more.attention.len(), 1);
        let item = s.more.attention[0].clone();
        assert_eq!(item.kind, AlertKind::Approval);
        assert_eq!(item.holds, Some(Phase::Implement));
        assert!(item.id.contains(&plan), "{}", item.id);
        assert_eq!(
            item.actions,
            ["approve", "request-changes", "dismiss", "cancel"]
        );
        // Changes requested on the plan: it is planned again (round 1) with the note.
        let rkey = v.stories[k.as_str()].history.last().unwrap().clone();
        command(
            &mut d,
            "OP",
            on(&k),
            Op::RequestChanges {
                result: rkey,
                text: "split it in two".into(),
            },
            20,
        )
        .unwrap();
        let v = d.view();
        let s = &v.stories[k.as_str()];
        assert_eq!((s.next_phase, s.round), (Some(Phase::Plan), 1));
        assert!(!s.held);
        assert_eq!(
            s.more
                .notes
                .iter()
                .map(|n| n.text.as_str())
                .collect::<Vec<_>>(),
            ["split it in two"]
        );
        // The new plan is held again; approving it lets implement start.
        step(&mut d, &k, Phase::Plan, 1, None);
        let v = d.view();
        let s = &v.stories[k.as_str()];
        assert!(s.held);
        let items: Vec<String> = s.more.attention.iter().map(|a| a.id.clone()).collect();
        command(&mut d, "OP", on(&k), Op::Approve { items }, 30).unwrap();
        let v = d.view();
        let s = &v.stories[k.as_str()];
        assert!(!s.held && s.more.attention.is_empty());
        assert_eq!(s.next_phase, Some(Phase::Implement));
    }

    #[test]
    fn request_changes_on_a_change_reworks_it_without_spending_a_rework() {
        let mut d = doc(1);
        let k = d.add_story(&new_story("s", &[]), A, 1).unwrap();
        for p in [Phase::Research, Phase::Plan, Phase::Implement] {
            step(&mut d, &k, p, 0, None);
        }
        step(
            &mut d,
            &k,
            Phase::Review,
            0,
            Some(crate::core::model::Verdict::Approve),
        );
        let last = d.view().stories[k.as_str()].history.last().unwrap().clone();
        command(
            &mut d,
            "OP",
            on(&k),
            Op::RequestChanges {
                result: last,
                text: "use the helper".into(),
            },
            5,
        )
        .unwrap();
        let v = d.view();
        assert_eq!(
            (
                v.stories[k.as_str()].next_phase,
                v.stories[k.as_str()].round
            ),
            (Some(Phase::Rework), 1)
        );
        // Three machine rejections still block it (the human's round is not counted).
        for r in 1..=3 {
            step(&mut d, &k, Phase::Rework, r, None);
            step(
                &mut d,
                &k,
                Phase::Review,
                r,
                Some(crate::core::model::Verdict::Reject),
            );
        }
        let v = d.view();
        let s = &v.stories[k.as_str()];
        assert_eq!(
            s.next_phase,
            Some(Phase::Rework),
            "{:?}",
            s.more.blocked_reason
        );
        step(&mut d, &k, Phase::Rework, 4, None);
        step(
            &mut d,
            &k,
            Phase::Review,
            4,
            Some(crate::core::model::Verdict::Reject),
        );
        let v = d.view();
        let s = &v.stories[k.as_str()];
        assert_eq!(s.status, StoryStatus::Blocked);
        assert_eq!(s.more.blocked_step, Some((Phase::Rework, 5)));
        let item = s
            .more
            .attention
            .iter()
            .find(|a| a.kind == AlertKind::Blocked)
            .unwrap();
        assert_eq!(item.id, "blocked@rework.5");
        assert!(item.actions.contains(&"unblock".to_string()));
        // Unblock grants one more round.
        command(
            &mut d,
            "OP",
            on(&k),
            Op::Unblock {
                phase: Phase::Rework,
                round: 5,
                grant: 1,
            },
            50,
        )
        .unwrap();
        let v = d.view();
        let s = &v.stories[k.as_str()];
        assert_eq!(
            (s.status, s.next_phase, s.round),
            (StoryStatus::InProgress, Some(Phase::Rework), 5)
        );
        assert!(s.more.attention.is_empty());
    }

    #[test]
    fn an_escalated_change_holds_merge_until_dismissed_and_assign_and_context_show_in_the_view() {
        let mut d = doc(1);
        let k = d.add_story(&new_story("s", &[]), A, 1).unwrap();
        for p in [Phase::Research, Phase::Plan] {
            step(&mut d, &k, p, 0, None);
        }
        // The implement result carries a security escalation (as its writer recorded).
        let v = d.view();
        let res = crate::core::lease::Resource::story_round(&k, Phase::Implement, 0).unwrap();
        let token = v.claims().next_token(&res);
        let id = format!("{A}-77");
        d.put_claim(
            &id,
            &crate::core::lease::ClaimFact {
                resources: vec![(res, token)],
                holder: A.into(),
                ttl_ms: 1000,
                written_at_ms: 0,
                attempt: 1,
                after: None,
            },
        )
        .unwrap();
        d.put_result(&crate::core::model::ResultFact {
            story: k.clone(),
            phase: Phase::Implement,
            round: 0,
            claim: id.clone(),
            token,
            holder: A.into(),
            written_at_ms: 42,
            handoff: Default::default(),
            escalations: vec![crate::core::model::Escalation {
                kind: AlertKind::Security,
                detail: "a.py: eval(x)".into(),
            }],
        })
        .unwrap();
        let v = d.view();
        let s = &v.stories[k.as_str()];
        assert_eq!(s.next_phase, Some(Phase::Review));
        assert!(!s.held, "review runs; the item holds merge");
        assert_eq!(s.more.attention[0].holds, Some(Phase::Merge));
        assert_eq!(s.more.attention[0].since_ms, 42);
        step(
            &mut d,
            &k,
            Phase::Review,
            0,
            Some(crate::core::model::Verdict::Approve),
        );
        let v = d.view();
        assert!(v.stories[k.as_str()].held);
        assert_eq!(v.attention().len(), 1);
        let item = v.stories[k.as_str()].more.attention[0].id.clone();
        command(&mut d, "OP", on(&k), Op::Dismiss { item }, 60).unwrap();
        command(
            &mut d,
            "OP",
            on(&k),
            Op::Context {
                text: "ship it".into(),
            },
            61,
        )
        .unwrap();
        command(
            &mut d,
            "OP",
            on(&k),
            Op::Assign {
                node: Some(A.into()),
                role: None,
            },
            62,
        )
        .unwrap();
        let v = d.view();
        let s = &v.stories[k.as_str()];
        assert!(!s.held && s.more.attention.is_empty());
        assert_eq!(s.next_phase, Some(Phase::Merge));
        assert_eq!(s.more.notes[0].text, "ship it");
        assert_eq!(
            s.more.assigned.as_ref().and_then(|a| a.node.as_deref()),
            Some(A)
        );
        // Every command is in the audit trail, signed by its operator.
        let log = d
            .audit(
                &v,
                &crate::core::state::LogQuery {
                    story: Some(k.clone()),
                    tail: None,
                },
            )
            .unwrap();
        let cmds: Vec<&str> = log
            .iter()
            .filter(|e| e.action.starts_with("operator command"))
            .map(|e| e.action.as_str())
            .collect();
        assert_eq!(cmds.len(), 3, "{cmds:?}");
        assert!(cmds[0].contains("dismiss"), "{cmds:?}");
    }

    #[test]
    fn labelled_stories_refine_first_and_have_their_plans_reviewed_until_one_passes() {
        use crate::core::model::Verdict;
        let mut d = doc(1);
        let k = d
            .add_story(&new_story("s", &["refine", "plan-review"]), A, 1)
            .unwrap();
        let next = |d: &Doc| {
            let v = d.view();
            let s = &v.stories[k.as_str()];
            (s.next_phase, s.round)
        };
        assert_eq!(next(&d), (Some(Phase::Refine), 0));
        step(&mut d, &k, Phase::Refine, 0, None);
        step(&mut d, &k, Phase::Research, 0, None);
        step(&mut d, &k, Phase::Plan, 0, None);
        assert_eq!(next(&d), (Some(Phase::PlanReview), 0));
        step(&mut d, &k, Phase::PlanReview, 0, Some(Verdict::Reject));
        assert_eq!(
            next(&d),
            (Some(Phase::Plan), 1),
            "a rejected plan is planned again"
        );
        step(&mut d, &k, Phase::Plan, 1, None);
        step(&mut d, &k, Phase::PlanReview, 1, Some(Verdict::Approve));
        assert_eq!(next(&d), (Some(Phase::Implement), 0));
        // Without the labels: research, plan, implement.
        let k2 = d.add_story(&new_story("plain", &[]), A, 2).unwrap();
        step(&mut d, &k2, Phase::Research, 0, None);
        step(&mut d, &k2, Phase::Plan, 0, None);
        assert_eq!(
            d.view().stories[k2.as_str()].next_phase,
            Some(Phase::Implement)
        );
    }
}
