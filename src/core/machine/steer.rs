//! Operator commands in the running core (docs/DESIGN.md §14): a draft command resolved
//! against the view into the exact fact an operator signs ([`resolve_command`]), the
//! sealed fact written ([`Core::put_command`]), and what the commands ask of this node —
//! claim nothing while it or the mesh is paused, start no phase of a paused story (the
//! settle check), stop the work of a cancelled one (`cancel_lost`).

use super::*;
use crate::core::model::AlertKind;
use crate::core::state::{CommandFact, Op, Target};

/// Finds a node — one that described itself, or one on the roster — by full peer id or
/// by a unique ending of it (the 6-character tag `status` shows is enough).
fn resolve_node(view: &View, given: &str) -> Result<String, String> {
    let known: BTreeSet<&String> = view
        .nodes
        .keys()
        .chain(view.roster.admitted.iter().map(|e| &e.peer))
        .collect();
    if known.contains(&given.to_string()) {
        return Ok(given.to_string());
    }
    let found: Vec<&String> = known.into_iter().filter(|p| p.ends_with(given)).collect();
    match found.as_slice() {
        [one] if !given.is_empty() => Ok((*one).clone()),
        [] | [_] => Err(format!(
            "no node {given:?} in the mesh (`mesh-agent status` lists them; a unique end of the peer id will do)"
        )),
        _ => Err(format!(
            "{given:?} matches {} nodes; give more of the peer id",
            found.len()
        )),
    }
}

/// Resolves a draft command against `view` into the fact an operator signs: the story's
/// display id becomes its key, a node's short id its peer id, and the references that
/// must name exactly what the operator saw are filled in — `approve` with the items
/// holding the story (all of them, or those of the kinds given), `dismiss` with the one
/// item of the kind given, `request-changes` with the result it sends back, `unblock`
/// with the blocked step. Refused, with the reason, when the command cannot apply now.
pub fn resolve_command(view: &View, draft: CommandFact) -> Result<CommandFact, String> {
    let CommandFact { target, op, at_ms } = draft;
    let target = match target {
        Target::Story { story } => Target::Story {
            story: view
                .resolve(&story)
                .map_err(|e| e.to_string())?
                .key
                .to_string(),
        },
        Target::Node { peer } => Target::Node {
            peer: resolve_node(view, &peer)?,
        },
        Target::All => Target::All,
    };
    let story = match &target {
        Target::Story { story } => view.stories.get(story.as_str()),
        _ => None,
    };
    let s = match (&op, story) {
        (Op::Pause { .. } | Op::Resume, _) => None,
        (Op::Budget { .. }, _) if target != Target::All => {
            return Err("a budget is set for the whole mesh (`budget set --daily USD`)".into())
        }
        (Op::Budget { .. }, _) => None,
        (_, Some(s)) => Some(s),
        (op, None) => {
            return Err(format!(
                "{} takes a story (only pause and resume take --node or --all)",
                op.verb()
            ))
        }
    };
    let finished = |s: &StoryView| match s.status {
        StoryStatus::Merged => Err(format!("{} has landed already", s.id)),
        StoryStatus::Cancelled => Err(format!("{} was cancelled", s.id)),
        _ => Ok(()),
    };
    let op = match (op, s) {
        (Op::Assign { node, role }, Some(s)) => {
            finished(s)?;
            let node = node.map(|n| resolve_node(view, &n)).transpose()?;
            Op::Assign { node, role }
        }
        (Op::Approve { items }, Some(s)) => {
            finished(s)?;
            let open: Vec<&str> = s
                .more
                .attention
                .iter()
                .filter(|a| a.kind != AlertKind::Blocked)
                .filter(|a| {
                    items.is_empty()
                        || items
                            .iter()
                            .any(|k| k == &a.id || AlertKind::parse(k) == Some(a.kind))
                })
                .map(|a| a.id.as_str())
                .collect();
            if open.is_empty() {
                return Err(format!(
                    "{} has nothing to approve{} (`mesh-agent attention` lists what waits for a human)",
                    s.id,
                    if items.is_empty() { String::new() } else { format!(" of {}", items.join(", ")) }
                ));
            }
            Op::Approve {
                items: open.into_iter().map(str::to_string).collect(),
            }
        }
        (Op::Dismiss { item }, Some(s)) => {
            let found: Vec<&str> = s
                .more
                .attention
                .iter()
                .filter(|a| a.id == item || AlertKind::parse(&item) == Some(a.kind))
                .map(|a| a.id.as_str())
                .collect();
            match found.as_slice() {
                [one] => Op::Dismiss {
                    item: one.to_string(),
                },
                [] => {
                    let have: Vec<&str> =
                        s.more.attention.iter().map(|a| a.kind.as_str()).collect();
                    return Err(format!(
                        "{} has no attention item {item:?}{}",
                        s.id,
                        if have.is_empty() {
                            String::new()
                        } else {
                            format!(" (it has: {})", have.join(", "))
                        }
                    ));
                }
                _ => {
                    return Err(format!(
                        "{} has {} items of kind {item}; name one by its id: {}",
                        s.id,
                        found.len(),
                        found.join(", ")
                    ))
                }
            }
        }
        (Op::RequestChanges { text, .. }, Some(s)) => {
            finished(s)?;
            let last = s
                .history
                .last()
                .and_then(|k| view.results.get(k).map(|r| (k, r)))
                .filter(|(_, r)| {
                    matches!(
                        r.phase,
                        Phase::Plan
                            | Phase::PlanReview
                            | Phase::Implement
                            | Phase::Rework
                            | Phase::Review
                    )
                });
            let Some((key, _)) = last else {
                return Err(format!(
                    "{} has no plan, change or review to send back yet",
                    s.id
                ));
            };
            Op::RequestChanges {
                result: key.clone(),
                text,
            }
        }
        (Op::Unblock { grant, .. }, Some(s)) => {
            finished(s)?;
            if s.status != StoryStatus::Blocked {
                return Err(format!("{} is not blocked", s.id));
            }
            let Some((phase, round)) = s.more.blocked_step else {
                return Err(format!(
                    "{} is blocked by a dependency ({}): unblock that one",
                    s.id,
                    s.more.blocked_reason.as_deref().unwrap_or("?")
                ));
            };
            Op::Unblock {
                phase,
                round,
                grant,
            }
        }
        (op @ (Op::Cancel { .. } | Op::Prioritize { .. } | Op::Context { .. }), Some(s)) => {
            finished(s)?;
            op
        }
        (
            Op::Budget {
                daily_micro_usd: Some(daily),
                shares,
            },
            _,
        ) if shares.is_empty() => Op::Budget {
            daily_micro_usd: Some(daily),
            shares: split_budget(view, daily)?,
        },
        (op, _) => op,
    };
    Ok(CommandFact { target, op, at_ms })
}

/// A daily budget split evenly into the allowances of every node the view knows (those
/// that described themselves, and the roster's members); the odd micro-dollars go to the
/// first ones. A node that joins later starts with none and asks its peers.
fn split_budget(view: &View, daily: u64) -> Result<BTreeMap<String, u64>, String> {
    let nodes: BTreeSet<&String> = view
        .nodes
        .keys()
        .chain(view.roster.admitted.iter().map(|e| &e.peer))
        .collect();
    let n = nodes.len() as u64;
    if n == 0 {
        return Err("no node has described itself yet: nothing to split the budget among".into());
    }
    Ok(nodes
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), daily / n + u64::from((i as u64) < daily % n)))
        .collect())
}

impl Core {
    /// Writes an operator's sealed fact — a roster change or a command — and pushes it;
    /// what it did, in one line.
    pub fn put_signed(&mut self, key: &str, sealed: &str) -> Result<String, String> {
        if key.starts_with("command/") {
            self.put_command(key, sealed)
        } else {
            self.put_roster(key, sealed)
        }
    }

    /// Writes an operator's sealed command (`command/<operator>/<hash>`) and pushes it.
    pub fn put_command(&mut self, key: &str, sealed: &str) -> Result<String, String> {
        if self.cfg.passive {
            return Err(StateError::Passive.to_string());
        }
        if self.doc.raw_get(key).is_some() {
            return Ok("that command was given already".into());
        }
        let before = self.digest;
        self.doc
            .put_signed(key, sealed)
            .map_err(|e| e.to_string())?;
        self.local_write();
        // Acted on as a peer's news is, once the write's effects are out: a cancel stops
        // the story's running work now, not at the next tick, in which its merge could
        // still land (found by the simulator's operator, `--steer`).
        self.news_before.get_or_insert(before);
        let view = self.view();
        let what = view
            .steering
            .commands
            .iter()
            .find(|c| c.key == key)
            .map_or_else(|| key.to_string(), |c| c.fact.describe());
        tracing::info!(%key, %what, "operator command");
        Ok(what)
    }

    /// Why this node must not start work now: the mesh or this node is paused.
    pub(super) fn paused_here(&mut self) -> Option<String> {
        let view = self.view();
        let s = view.steering.node_paused(&self.peer)?;
        let whom = if view.steering.all.is_some() {
            "the mesh"
        } else {
            "this node"
        };
        Some(if s.reason.is_empty() {
            format!("{whom} is paused by an operator")
        } else {
            format!("{whom} is paused by an operator: {}", s.reason)
        })
    }
}
