//! Money from the command line: `mesh-agent budget` shows the books (the daily budget,
//! every node's allowance and usage today, what each story cost), and the operator
//! commands `budget set` and `budget limit` change them, signed like every operator
//! command (see `steer`).

use super::commands::running;
use super::steer::{send, KeyArg};
use anyhow::{bail, Result};
use clap::Subcommand;
use mesh_agent::api::BudgetReport;
use mesh_agent::core::state::{usd, Op, Target};
use std::path::Path;

#[derive(Subcommand, Debug)]
pub(crate) enum BudgetCommand {
    /// Operator: set the mesh's daily budget in USD, split evenly into the allowances of
    /// every node the local node knows (a node that joins later asks its peers for
    /// some). No node spends beyond its allowance, whatever partitions or crashes
    /// happen: `--off` removes the budget.
    Set {
        /// USD a day (UTC days), e.g. 25 or 12.50.
        #[arg(long, value_name = "USD", required_unless_present = "off")]
        daily: Option<f64>,
        #[arg(long, conflicts_with = "daily")]
        off: bool,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Operator: cap what one story may cost, in USD: past it, no phase of it starts and
    /// it waits in `mesh-agent attention` until the limit is raised (or the item
    /// dismissed). `--none` removes the cap.
    Limit {
        /// The story (S-0042, or its key).
        story: String,
        #[arg(required_unless_present = "none")]
        usd: Option<f64>,
        #[arg(long, conflicts_with = "usd")]
        none: bool,
        #[command(flatten)]
        key: KeyArg,
    },
}

/// Dollars as micro-dollars, refusing what is not a sane amount.
fn micro(what: &str, v: f64) -> Result<u64> {
    if !v.is_finite() || !(0.0..=10_000_000.0).contains(&v) {
        bail!(crate::usage(format!(
            "{what} {v} is not an amount in USD between 0 and 10000000"
        )));
    }
    Ok((v * 1e6).round() as u64)
}

pub(crate) fn run(dir: &Path, cmd: Option<BudgetCommand>, json: bool) -> Result<()> {
    match cmd {
        None => show(dir, json),
        Some(BudgetCommand::Set { daily, off: _, key }) => {
            let op = Op::Budget {
                daily_micro_usd: daily.map(|d| micro("--daily", d)).transpose()?,
                shares: Default::default(),
            };
            send(dir, &key, Target::All, op)
        }
        Some(BudgetCommand::Limit {
            story,
            usd: amount,
            none: _,
            key,
        }) => {
            let op = Op::Limit {
                micro_usd: amount.map(|d| micro("the limit", d)).transpose()?,
            };
            let target = Target::Story {
                story: story.trim().to_string(),
            };
            send(dir, &key, target, op)
        }
    }
}

fn show(dir: &Path, json: bool) -> Result<()> {
    let r = running(dir)?.budget()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    print(&r);
    Ok(())
}

fn print(r: &BudgetReport) {
    match r.daily_micro_usd {
        Some(d) => println!(
            "budget   {} a day (set by {}); spent or reserved today: {}",
            usd(d),
            r.set_by.as_deref().unwrap_or("?"),
            usd(r.charged_micro_usd)
        ),
        None => println!(
            "budget   none (an operator sets one: mesh-agent budget set --daily USD); spent \
             today: {}",
            usd(r.charged_micro_usd)
        ),
    }
    println!(
        "\n{:<10} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "node", "share", "+received", "-given", "left", "tokens"
    );
    for n in &r.nodes {
        let a = &n.allowance;
        let left = if a.balance < 0 {
            format!("-{}", usd(a.balance.unsigned_abs()))
        } else {
            usd(a.balance as u64)
        };
        println!(
            "{:<10} {:>10} {:>10} {:>10} {:>10} {:>12}",
            mesh_agent::core::state::peer_tag(&n.peer),
            usd(a.share),
            usd(a.received),
            usd(a.given),
            left,
            n.usage.tokens
        );
    }
    if !r.days.is_empty() {
        println!(
            "\n{:<12} {:<10} {:>12} {:>12} {:>10}",
            "day (UTC)", "node", "tokens in", "tokens out", "cost"
        );
        let mut days = r.days.clone();
        days.sort_by(|a, b| (b.day, &a.peer).cmp(&(a.day, &b.peer)));
        for d in &days {
            println!(
                "{:<12} {:<10} {:>12} {:>12} {:>10}",
                mesh_agent::core::calendar::iso_date(d.day),
                mesh_agent::core::state::peer_tag(&d.peer),
                d.usage.tokens_in,
                d.usage.tokens_out,
                usd(d.usage.cost_micro_usd)
            );
        }
    }
    if r.stories.is_empty() {
        return;
    }
    println!(
        "\n{:<8} {:>10} {:>10} {:>12}  title",
        "story", "cost", "limit", "tokens"
    );
    for s in &r.stories {
        println!(
            "{:<8} {:>10} {:>10} {:>12}  {}",
            s.story,
            usd(s.charged_micro_usd),
            s.limit_micro_usd.map_or("-".to_string(), usd),
            s.usage.tokens,
            s.title
        );
    }
}
