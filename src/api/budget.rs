//! The money report `GET /v1/budget` and `mesh-agent budget` show (DESIGN.md §16): each
//! node's allowance, reservations and usage today, each story's cost, the days before.

use serde::{Deserialize, Serialize};

/// One node's money today, as `GET /v1/budget` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeMoney {
    pub peer: String,
    pub allowance: crate::core::state::Allowance,
    pub usage: crate::core::state::Usage,
}

/// One story's money, over all days.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoryMoney {
    pub story: String,
    pub title: String,
    pub usage: crate::core::state::Usage,
    /// What counts against its limit: usage, and reservations of jobs not yet booked.
    pub charged_micro_usd: u64,
    pub limit_micro_usd: Option<u64>,
}

/// The books today (`mesh-agent budget`): the budget, every node's allowance and usage,
/// and every story that cost something or has a limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BudgetReport {
    /// Days since the epoch (UTC).
    pub day: u64,
    pub daily_micro_usd: Option<u64>,
    pub set_by: Option<String>,
    pub charged_micro_usd: u64,
    pub nodes: Vec<NodeMoney>,
    pub stories: Vec<StoryMoney>,
    /// What each node's jobs used on each of the last seven days (today included), by
    /// (day, node).
    pub days: Vec<DayMoney>,
}

/// One node's usage on one day.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DayMoney {
    pub day: u64,
    pub peer: String,
    pub usage: crate::core::state::Usage,
}

/// The books of `view` on `day`.
pub fn budget_report(view: &crate::core::state::View, day: u64) -> BudgetReport {
    let budget = view.steering.budget.as_ref();
    let usage = view.ledger.by_node_day();
    let peers: std::collections::BTreeSet<&String> = view
        .nodes
        .keys()
        .chain(budget.iter().flat_map(|b| b.shares.keys()))
        .chain(usage.keys().filter(|(_, d)| *d == day).map(|(p, _)| p))
        .collect();
    let nodes = peers
        .into_iter()
        .map(|p| NodeMoney {
            peer: p.clone(),
            allowance: view.ledger.allowance(budget, p, day),
            usage: usage.get(&(p.clone(), day)).copied().unwrap_or_default(),
        })
        .collect();
    let stories = view
        .stories_ordered()
        .into_iter()
        .filter_map(|s| {
            let (usage, charged) = view.ledger.story(&s.key);
            let limit = view.steering.story(&s.key).and_then(|st| st.limit);
            (charged > 0 || usage.tokens > 0 || limit.is_some()).then(|| StoryMoney {
                story: s.id.to_string(),
                title: s.fact.title.to_string(),
                usage,
                charged_micro_usd: charged,
                limit_micro_usd: limit,
            })
        })
        .collect();
    BudgetReport {
        day,
        daily_micro_usd: budget.map(|b| b.daily_micro_usd),
        set_by: budget.map(|b| b.by.clone()),
        charged_micro_usd: view.ledger.charged_on(day),
        nodes,
        stories,
        days: usage
            .iter()
            .filter(|((_, d), _)| *d + 7 > day && *d <= day)
            .map(|((p, d), u)| DayMoney {
                day: *d,
                peer: p.clone(),
                usage: *u,
            })
            .collect(),
    }
}
