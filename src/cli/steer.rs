//! Steering the mesh from the command line: the operator commands (`pause`, `approve`,
//! …), each signed with the local operator key and written through the local running
//! node, and `attention`, what waits for a human.
//!
//! A command goes in two steps: the node resolves the draft against its view into the
//! exact fact to sign (the story's key, the items an approval clears, the result a
//! request for changes sends back), then the CLI signs that fact and hands it back. The
//! node carries the signature; every node checks it, and only an operator's counts.

use super::commands::running;
use anyhow::{bail, Result};
use clap::Args;
use mesh_agent::api::{self, AttentionRow};
use mesh_agent::core::state::{CommandFact, Op, Target};
use mesh_agent::identity;
use std::path::{Path, PathBuf};

/// The operator key a command is signed with.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct KeyArg {
    /// The operator key (default: $MESH_OPERATOR_KEY, else
    /// ~/.config/mesh-agent/operator.key; `mesh-agent operator init` makes one).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct PrioritizeArgs {
    /// The story (S-0042, or its key).
    pub story: String,
    /// The new priority, 1..=999: lower runs first (the default is 100).
    pub priority: u32,
    #[command(flatten)]
    pub key: KeyArg,
}

/// What `pause` and `resume` act on: one story, one node, or the whole mesh.
#[derive(Args, Debug)]
pub(crate) struct PauseArgs {
    /// The story (S-0042, or its key); or give --node or --all.
    #[arg(required_unless_present_any = ["node", "all"], conflicts_with_all = ["node", "all"])]
    pub story: Option<String>,
    /// A node (its peer id, or a unique end of it as `status` shows it).
    #[arg(long, value_name = "PEER", conflicts_with = "all")]
    pub node: Option<String>,
    /// The whole mesh.
    #[arg(long)]
    pub all: bool,
    /// Why, in a few words (shown in `status`, `story show` and the audit trail).
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub key: KeyArg,
}

#[derive(Args, Debug)]
pub(crate) struct CancelArgs {
    /// The story (S-0042, or its key).
    pub story: String,
    /// Why, in a few words.
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub key: KeyArg,
}

#[derive(Args, Debug)]
pub(crate) struct AssignArgs {
    /// The story (S-0042, or its key).
    pub story: String,
    /// Only this node runs the story's phases (peer id, or a unique end of it).
    #[arg(long, value_name = "PEER", required_unless_present_any = ["role", "anyone"])]
    pub node: Option<String>,
    /// Only nodes with this role run them.
    #[arg(long, value_name = "ROLE", conflicts_with = "node")]
    pub role: Option<String>,
    /// Undo an assignment: any node again.
    #[arg(long, conflicts_with_all = ["node", "role"])]
    pub anyone: bool,
    #[command(flatten)]
    pub key: KeyArg,
}

#[derive(Args, Debug)]
pub(crate) struct TextArgs {
    /// The story (S-0042, or its key).
    pub story: String,
    /// The text (quote it), handed to every later job of the story.
    pub text: String,
    #[command(flatten)]
    pub key: KeyArg,
}

#[derive(Args, Debug)]
pub(crate) struct ApproveArgs {
    /// The story (S-0042, or its key).
    pub story: String,
    /// Only these items: kinds (low_confidence, large_change, security, approval) or
    /// item ids as `attention` prints them. Default: every item holding the story.
    pub items: Vec<String>,
    #[command(flatten)]
    pub key: KeyArg,
}

#[derive(Args, Debug)]
pub(crate) struct UnblockArgs {
    /// The story (S-0042, or its key).
    pub story: String,
    /// Grant a full set of attempts (three) again; default: one more.
    #[arg(long)]
    pub reset_attempts: bool,
    #[command(flatten)]
    pub key: KeyArg,
}

#[derive(Args, Debug)]
pub(crate) struct DismissArgs {
    /// The story (S-0042, or its key).
    pub story: String,
    /// The item: its kind (low_confidence, large_change, security, approval, blocked) or
    /// its id as `attention` prints it.
    pub alert: String,
    #[command(flatten)]
    pub key: KeyArg,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn story(s: &str) -> Target {
    Target::Story {
        story: s.trim().to_string(),
    }
}

/// The target of `pause`/`resume`.
fn scope(a: &PauseArgs) -> Target {
    match (&a.story, &a.node, a.all) {
        (_, _, true) => Target::All,
        (_, Some(n), _) => Target::Node {
            peer: n.trim().to_string(),
        },
        (Some(s), _, _) => story(s),
        (None, None, false) => Target::All, // clap requires one; never reached
    }
}

pub(crate) fn prioritize(dir: &Path, a: PrioritizeArgs) -> Result<()> {
    if !(1..=999).contains(&a.priority) {
        bail!(crate::usage(format!(
            "priority {} is out of range; use 1..=999 (lower runs first)",
            a.priority
        )));
    }
    send(
        dir,
        &a.key,
        story(&a.story),
        Op::Prioritize {
            priority: a.priority,
        },
    )
}

pub(crate) fn pause(dir: &Path, a: PauseArgs) -> Result<()> {
    let op = Op::Pause {
        reason: a.reason.clone(),
    };
    send(dir, &a.key, scope(&a), op)
}

pub(crate) fn resume(dir: &Path, a: PauseArgs) -> Result<()> {
    send(dir, &a.key, scope(&a), Op::Resume)
}

pub(crate) fn cancel(dir: &Path, a: CancelArgs) -> Result<()> {
    send(
        dir,
        &a.key,
        story(&a.story),
        Op::Cancel { reason: a.reason },
    )
}

pub(crate) fn assign(dir: &Path, a: AssignArgs) -> Result<()> {
    let op = Op::Assign {
        node: a.node.map(|n| n.trim().to_string()),
        role: a.role.map(|r| r.trim().to_string()),
    };
    send(dir, &a.key, story(&a.story), op)
}

pub(crate) fn context(dir: &Path, a: TextArgs) -> Result<()> {
    send(dir, &a.key, story(&a.story), Op::Context { text: a.text })
}

pub(crate) fn request_changes(dir: &Path, a: TextArgs) -> Result<()> {
    let op = Op::RequestChanges {
        result: String::new(),
        text: a.text,
    };
    send(dir, &a.key, story(&a.story), op)
}

pub(crate) fn approve(dir: &Path, a: ApproveArgs) -> Result<()> {
    send(dir, &a.key, story(&a.story), Op::Approve { items: a.items })
}

pub(crate) fn unblock(dir: &Path, a: UnblockArgs) -> Result<()> {
    let op = Op::unblock(a.reset_attempts);
    send(dir, &a.key, story(&a.story), op)
}

pub(crate) fn dismiss(dir: &Path, a: DismissArgs) -> Result<()> {
    send(dir, &a.key, story(&a.story), Op::Dismiss { item: a.alert })
}

/// Resolves the draft on the local node, signs the fact with the operator key, and
/// writes it through the node.
pub(crate) fn send(dir: &Path, key: &KeyArg, target: Target, op: Op) -> Result<()> {
    let verb = op.verb();
    let path = key
        .key
        .clone()
        .unwrap_or_else(identity::default_operator_key_path);
    let signer = identity::load_operator_key(&path).map_err(|e| {
        crate::usage(format!(
            "{e} ({verb} is an operator command, signed with an operator key: --key FILE or \
             $MESH_OPERATOR_KEY; `mesh-agent operator init` makes one)"
        ))
    })?;
    let client = running(dir)?;
    let draft = CommandFact {
        target,
        op,
        at_ms: now_ms(),
    };
    let fact = client
        .prepare_command(&draft)
        .map_err(super::commands::usage_if_refused)?;
    let done = client
        .put_command(&api::SealedFact::command(&signer, &fact)?)
        .map_err(super::commands::usage_if_refused)?;
    println!("{done}");
    Ok(())
}

pub(crate) fn attention(dir: &Path, json: bool) -> Result<()> {
    let rows = running(dir)?.attention()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    print_attention(&rows);
    Ok(())
}

fn print_attention(rows: &[AttentionRow]) {
    if rows.is_empty() {
        println!("nothing needs a human");
        return;
    }
    for r in rows {
        let holds = r
            .item
            .holds
            .map_or(String::new(), |p| format!(", holds {p}"));
        println!(
            "{:<8} {:<14} {} ({}{holds})",
            r.story,
            r.item.kind.as_str(),
            r.title,
            r.status
        );
        println!("         {}", r.item.detail);
        println!("         id      {}", r.item.id);
        println!(
            "         actions {}",
            r.item
                .actions
                .iter()
                .map(|a| format!("mesh-agent {a} {}", r.story))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
}
