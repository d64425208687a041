//! Money: what jobs cost, and a budget that fails closed without a coordinator
//! (docs/DESIGN.md §16).
//!
//! An operator sets a daily budget for the mesh (`mesh-agent budget set`), split into
//! per-node *allowances* in the command itself (escrow): every node reads the same split.
//! A node spends only its own allowance. Before a job starts it writes a *reservation*
//! (an estimate, `budget_reserve_usd`) in the same change as its claim, and only if its
//! allowance still covers it; when the job ends it writes the *usage* the executor
//! reported, which replaces the reservation in the books. A node short of allowance
//! writes an *ask*; a peer with spare answers with a *give*, debited from its own
//! allowance. All four are facts under keys only their writer can create:
//!
//! - `budget/reserve/<claim>` and `budget/usage/<claim>`: the claim's holder;
//! - `budget/ask/<peer>/<day>/<n>`: that peer;
//! - `budget/give/<from>/<to>/<day>/<n>`: `from`, at most once per ask.
//!
//! Why the mesh never spends more than its budget: node `p`'s debits on day `d` (its
//! reservations and usage, its gives) are all facts `p` wrote itself, so `p`'s own view
//! always has every one of them; its credits (its share, gives to it) are a subset of
//! what was written. `p` writes a debit only when its view's balance covers it, so its
//! debits never exceed its share plus what it was given, and the shares sum to the
//! budget. No partition, crash or race changes that: a side cut off from the rest simply
//! spends its own allowances and stops. Two limits, stated in docs/DESIGN.md: a job that
//! reports more than it reserved is charged what it reports (the reservation must be a
//! real cap), and a node that dies mid-job keeps its reservation charged (it may have
//! spent it) — the story itself is taken over and reserved afresh by its new holder.

use super::*;
use crate::core::model::{AlertKind, Phase};
use crate::core::state::walk::Attention;

pub(super) const BUDGET_PREFIX: &str = "budget/";
/// A budget day, in ms of wall clock (UTC days).
pub const DAY_MS: u64 = 86_400_000;
/// The largest amount one fact may carry, in micro-USD ($10 million).
pub const MAX_MICRO_USD: u64 = 10_000_000_000_000;
/// Most nodes one budget splits into.
pub const MAX_SHARES: usize = 1024;

/// The day (since the epoch, UTC) a wall-clock reading falls in.
pub fn day_of(wall_ms: u64) -> u64 {
    wall_ms / DAY_MS
}

/// What a job used, as its executor reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Total tokens (in + out where those are known).
    pub tokens: u64,
    pub cost_micro_usd: u64,
}

impl Usage {
    pub fn add(&mut self, o: &Usage) {
        self.tokens_in = self.tokens_in.saturating_add(o.tokens_in);
        self.tokens_out = self.tokens_out.saturating_add(o.tokens_out);
        self.tokens = self.tokens.saturating_add(o.tokens);
        self.cost_micro_usd = self.cost_micro_usd.saturating_add(o.cost_micro_usd);
    }
}

/// One budget fact (see the module doc for keys and writers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "budget", rename_all = "snake_case")]
pub enum BudgetFact {
    /// Before a job: `micro_usd` of the holder's allowance for `day` set aside.
    Reserve {
        claim: String,
        story: String,
        phase: Phase,
        day: u64,
        micro_usd: u64,
        at_ms: u64,
    },
    /// After a job (or a claim that never ran: zero): what it used.
    Usage {
        claim: String,
        story: String,
        phase: Phase,
        day: u64,
        usage: Usage,
        at_ms: u64,
    },
    /// `peer` is short of allowance on `day` and asks for `micro_usd` (`n`: its asks
    /// that day, from 1).
    Ask {
        peer: String,
        day: u64,
        n: u32,
        micro_usd: u64,
        at_ms: u64,
    },
    /// `from` gives `micro_usd` of its allowance on `day` to `to`, answering ask `n`.
    Give {
        from: String,
        to: String,
        day: u64,
        n: u32,
        micro_usd: u64,
        at_ms: u64,
    },
}

impl BudgetFact {
    /// The document key this fact goes under.
    pub fn key(&self) -> String {
        match self {
            BudgetFact::Reserve { claim, .. } => format!("{BUDGET_PREFIX}reserve/{claim}"),
            BudgetFact::Usage { claim, .. } => format!("{BUDGET_PREFIX}usage/{claim}"),
            BudgetFact::Ask { peer, day, n, .. } => format!("{BUDGET_PREFIX}ask/{peer}/{day}/{n}"),
            BudgetFact::Give {
                from, to, day, n, ..
            } => format!("{BUDGET_PREFIX}give/{from}/{to}/{day}/{n}"),
        }
    }

    /// Who alone may write it.
    pub fn writer(&self) -> Option<&str> {
        match self {
            BudgetFact::Reserve { claim, .. } | BudgetFact::Usage { claim, .. } => {
                claim_id_holder(claim)
            }
            BudgetFact::Ask { peer, .. } => Some(peer),
            BudgetFact::Give { from, .. } => Some(from),
        }
    }

    /// One line for the audit trail.
    pub fn describe(&self) -> String {
        match self {
            BudgetFact::Reserve {
                story,
                phase,
                micro_usd,
                ..
            } => format!("reserved {} for {phase} of {story}", usd(*micro_usd)),
            BudgetFact::Usage {
                story,
                phase,
                usage,
                ..
            } => format!(
                "{phase} of {story} used {} tokens ({} in, {} out), {}",
                usage.tokens,
                usage.tokens_in,
                usage.tokens_out,
                usd(usage.cost_micro_usd)
            ),
            BudgetFact::Ask { micro_usd, n, .. } => {
                format!("asks peers for {} of allowance (ask {n})", usd(*micro_usd))
            }
            BudgetFact::Give { to, micro_usd, .. } => {
                format!("gives {} of its allowance to {to}", usd(*micro_usd))
            }
        }
    }
}

/// `micro` millionths of a dollar, for people: `$1.25`.
pub fn usd(micro: u64) -> String {
    format!("${}.{:02}", micro / 1_000_000, (micro % 1_000_000) / 10_000)
}

/// The admission rule of a budget fact: under the key it names, by its writer, amounts
/// within bounds.
pub(super) fn check_budget(key: &str, author: &str, f: &BudgetFact) -> Result<(), Refusal> {
    if f.writer() != Some(author) {
        return Err(Refusal::NotEntitled);
    }
    if key != f.key() {
        return Err(Refusal::Invalid("budget key does not name its content"));
    }
    let name = |s: &str| !s.is_empty() && s.len() <= 128 && !s.contains(['/', ' ']);
    let ok = match f {
        BudgetFact::Reserve {
            story, micro_usd, ..
        } => name(story) && *micro_usd <= MAX_MICRO_USD,
        BudgetFact::Usage { story, usage, .. } => {
            name(story) && usage.cost_micro_usd <= MAX_MICRO_USD
        }
        BudgetFact::Ask {
            peer, micro_usd, ..
        } => name(peer) && *micro_usd <= MAX_MICRO_USD,
        BudgetFact::Give {
            from,
            to,
            micro_usd,
            ..
        } => name(from) && name(to) && from != to && *micro_usd <= MAX_MICRO_USD,
    };
    if !ok {
        return Err(Refusal::Invalid("budget fact field out of bounds"));
    }
    Ok(())
}

/// The mesh's daily budget, as the latest `budget set` command says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshBudget {
    pub daily_micro_usd: u64,
    /// Each node's allowance per day, by peer id (they sum to the budget).
    pub shares: BTreeMap<String, u64>,
    pub by: String,
    pub at_ms: u64,
}

/// One job's line in the books.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub node: String,
    pub story: String,
    pub phase: Phase,
    /// The day it is charged to (the reservation's, else the usage's).
    pub day: u64,
    pub reserved: Option<u64>,
    pub usage: Option<Usage>,
    pub at_ms: u64,
}

impl Entry {
    /// What it counts against the allowance: what it used once known, else what it
    /// reserved.
    pub fn charge(&self) -> u64 {
        match (&self.usage, self.reserved) {
            (Some(u), _) => u.cost_micro_usd,
            (None, Some(r)) => r,
            (None, None) => 0,
        }
    }
}

/// An ask, as the latest of its asker that day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AskEntry {
    pub n: u32,
    pub micro_usd: u64,
    pub at_ms: u64,
}

/// The books: every job's reservation and usage, every ask and give. A pure fold of the
/// budget facts, the same on every node that has the same facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ledger {
    /// By claim id.
    pub entries: BTreeMap<String, Entry>,
    /// The latest ask of each (peer, day).
    pub asks: BTreeMap<(String, u64), AskEntry>,
    /// Gives: (from, to, day, n) → amount.
    pub gives: BTreeMap<(String, String, u64, u32), u64>,
    /// The claim ids of each story's entries: whether a story has books, and what they
    /// say, is a lookup (a write that adds a story, or an update, changes the view
    /// without a fold, see `View::add_new_stories` and `View::apply_changes`).
    #[serde(skip)]
    stories: BTreeMap<String, BTreeSet<String>>,
}

/// One node's standing on one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    pub share: u64,
    pub received: u64,
    pub given: u64,
    /// Reservations and usage charged (jobs).
    pub charged: u64,
    /// What is left (negative: a job reported more than it reserved).
    pub balance: i64,
}

impl Ledger {
    pub(super) fn add(&mut self, f: &BudgetFact) {
        match f {
            BudgetFact::Reserve {
                claim,
                story,
                phase,
                day,
                micro_usd,
                at_ms,
            } => {
                let e = self.entry(claim, story, *phase, *day, *at_ms);
                e.reserved = Some(*micro_usd);
                e.day = *day;
            }
            BudgetFact::Usage {
                claim,
                story,
                phase,
                day,
                usage,
                at_ms,
            } => {
                let e = self.entry(claim, story, *phase, *day, *at_ms);
                e.usage = Some(*usage);
                e.at_ms = e.at_ms.max(*at_ms);
            }
            BudgetFact::Ask {
                peer,
                day,
                n,
                micro_usd,
                at_ms,
            } => {
                let slot = self.asks.entry((peer.clone(), *day)).or_insert(AskEntry {
                    n: 0,
                    micro_usd: 0,
                    at_ms: 0,
                });
                if *n > slot.n {
                    *slot = AskEntry {
                        n: *n,
                        micro_usd: *micro_usd,
                        at_ms: *at_ms,
                    };
                }
            }
            BudgetFact::Give {
                from,
                to,
                day,
                n,
                micro_usd,
                ..
            } => {
                self.gives
                    .insert((from.clone(), to.clone(), *day, *n), *micro_usd);
            }
        }
    }

    /// Whether any entry is about story `key`.
    pub fn names_story(&self, key: &str) -> bool {
        self.stories.contains_key(key)
    }

    /// The entries about story `key`, by claim id.
    pub fn of_story<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.stories
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|claim| self.entries.get(claim))
    }

    /// Whether adding `f` to the books now gives what a fold would, which adds every
    /// budget fact in key order (a reservation before its usage): an update of the view
    /// adds it only then.
    pub(super) fn adds_in_order(&self, f: &BudgetFact) -> bool {
        match f {
            BudgetFact::Reserve { claim, .. } => !self.entries.contains_key(claim),
            BudgetFact::Usage { claim, .. } => {
                self.entries.get(claim).is_none_or(|e| e.usage.is_none())
            }
            BudgetFact::Ask { peer, day, n, .. } => self
                .asks
                .get(&(peer.clone(), *day))
                .is_none_or(|a| a.n < *n),
            BudgetFact::Give {
                from, to, day, n, ..
            } => !self
                .gives
                .contains_key(&(from.clone(), to.clone(), *day, *n)),
        }
    }

    fn entry(&mut self, claim: &str, story: &str, phase: Phase, day: u64, at: u64) -> &mut Entry {
        // An entry's story is the one its first fact named; so is the index's.
        if !self.entries.contains_key(claim) {
            self.stories
                .entry(story.to_string())
                .or_default()
                .insert(claim.to_string());
        }
        self.entries
            .entry(claim.to_string())
            .or_insert_with(|| Entry {
                node: claim_id_holder(claim).unwrap_or_default().to_string(),
                story: story.to_string(),
                phase,
                day,
                reserved: None,
                usage: None,
                at_ms: at,
            })
    }

    /// `node`'s standing on `day` under `budget` (its share 0 when the split leaves it
    /// out, or with no budget).
    pub fn allowance(&self, budget: Option<&MeshBudget>, node: &str, day: u64) -> Allowance {
        let share = budget
            .and_then(|b| b.shares.get(node))
            .copied()
            .unwrap_or(0);
        let mut a = Allowance {
            share,
            ..Allowance::default()
        };
        for ((from, to, d, _), amount) in &self.gives {
            if *d != day {
                continue;
            }
            if to == node {
                a.received = a.received.saturating_add(*amount);
            }
            if from == node {
                a.given = a.given.saturating_add(*amount);
            }
        }
        a.charged = self
            .entries
            .values()
            .filter(|e| e.node == node && e.day == day)
            .map(Entry::charge)
            .fold(0u64, u64::saturating_add);
        let credit = i128::from(a.share) + i128::from(a.received);
        let debit = i128::from(a.given) + i128::from(a.charged);
        a.balance = (credit - debit).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        a
    }

    /// Whether `from` already answered `to`'s ask `n` of `day`.
    pub fn gave(&self, from: &str, to: &str, day: u64, n: u32) -> bool {
        self.gives
            .contains_key(&(from.to_string(), to.to_string(), day, n))
    }

    /// The mesh's charges on `day`, all nodes.
    pub fn charged_on(&self, day: u64) -> u64 {
        self.entries
            .values()
            .filter(|e| e.day == day)
            .map(Entry::charge)
            .fold(0u64, u64::saturating_add)
    }

    /// What `story` used (and charged, reservations included) over all days.
    pub fn story(&self, story: &str) -> (Usage, u64) {
        let mut u = Usage::default();
        let mut charged = 0u64;
        for e in self.entries.values().filter(|e| e.story == story) {
            if let Some(x) = &e.usage {
                u.add(x);
            }
            charged = charged.saturating_add(e.charge());
        }
        (u, charged)
    }

    /// Usage per (node, day), summed from the jobs' usage facts.
    pub fn by_node_day(&self) -> BTreeMap<(String, u64), Usage> {
        let mut out: BTreeMap<(String, u64), Usage> = BTreeMap::new();
        for e in self.entries.values() {
            if let Some(u) = &e.usage {
                out.entry((e.node.clone(), e.day)).or_default().add(u);
            }
        }
        out
    }
}

/// Sets each story's usage and charges, and holds every story whose jobs reported more
/// than its cost limit (see [`hold_story`]).
pub(super) fn hold_over_limit(
    stories: &mut BTreeMap<smol_str::SmolStr, Box<StoryView>>,
    ledger: &Ledger,
    steering: &Steering,
) {
    for s in stories.values_mut() {
        hold_story(s, ledger, steering);
    }
}

/// Sets one story's usage and charges from its books, and holds it when its jobs
/// reported more than its cost limit: an attention item of kind budget holds its next
/// phase until an operator raises the limit or dismisses the item (which names the
/// limit, so a later, lower limit holds it again).
pub(super) fn hold_story(s: &mut StoryView, ledger: &Ledger, steering: &Steering) {
    let mut since = 0;
    if ledger.names_story(&s.key) {
        let (mut usage, mut charged) = (Usage::default(), 0u64);
        for e in ledger.of_story(&s.key) {
            if let Some(u) = &e.usage {
                usage.add(u);
            }
            charged = charged.saturating_add(e.charge());
            since = since.max(e.at_ms);
        }
        s.set_spend(usage, charged);
    }
    let Some(st) = steering.stories.get(s.key.as_str()) else {
        return;
    };
    let Some(limit) = st.limit else {
        return;
    };
    if matches!(s.status, StoryStatus::Merged | StoryStatus::Cancelled) {
        return;
    }
    // What its jobs reported, not what running ones reserved: a reservation above
    // the limit would hold the story before its first job could start.
    let charged = s.usage().cost_micro_usd;
    if charged < limit {
        return;
    }
    let id = format!("{}@limit-{limit}", AlertKind::Budget);
    if st.cleared.contains(&id) {
        return;
    }
    s.more.attention.push(Attention {
        id,
        kind: AlertKind::Budget,
        detail: format!(
            "spent {} of its {} limit: no phase starts until an operator raises the \
             limit (`mesh-agent budget limit {} USD`) or dismisses this",
            usd(charged),
            usd(limit),
            s.id
        ),
        since_ms: since,
        holds: s.next_phase,
        actions: vec!["budget limit".into(), "dismiss".into(), "cancel".into()],
    });
    s.held = s.next_phase.is_some();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserve(claim: &str, day: u64, micro: u64) -> BudgetFact {
        BudgetFact::Reserve {
            claim: claim.into(),
            story: "S-1@aaaaaa".into(),
            phase: Phase::Plan,
            day,
            micro_usd: micro,
            at_ms: 1,
        }
    }

    #[test]
    fn a_balance_is_share_plus_gifts_minus_gives_and_charges() {
        let budget = MeshBudget {
            daily_micro_usd: 10_000_000,
            shares: [("A".to_string(), 6_000_000), ("B".to_string(), 4_000_000)].into(),
            by: "OP".into(),
            at_ms: 0,
        };
        let mut l = Ledger::default();
        l.add(&reserve("A-1", 5, 1_000_000));
        l.add(&reserve("A-2", 5, 1_000_000));
        // A-1 finished under its reservation: charged what it used.
        l.add(&BudgetFact::Usage {
            claim: "A-1".into(),
            story: "S-1@aaaaaa".into(),
            phase: Phase::Plan,
            day: 6, // finished after midnight: still charged to the reservation's day
            usage: Usage {
                tokens_in: 100,
                tokens_out: 10,
                tokens: 110,
                cost_micro_usd: 250_000,
            },
            at_ms: 2,
        });
        l.add(&BudgetFact::Give {
            from: "A".into(),
            to: "B".into(),
            day: 5,
            n: 1,
            micro_usd: 500_000,
            at_ms: 3,
        });
        let a = l.allowance(Some(&budget), "A", 5);
        assert_eq!(a.charged, 1_250_000);
        assert_eq!(a.balance, 6_000_000 - 1_250_000 - 500_000);
        let b = l.allowance(Some(&budget), "B", 5);
        assert_eq!(b.balance, 4_500_000);
        assert_eq!(l.allowance(Some(&budget), "A", 6).balance, 6_000_000);
        assert_eq!(l.allowance(None, "C", 5).balance, 0);
        assert!(l.gave("A", "B", 5, 1) && !l.gave("A", "B", 5, 2));
        assert_eq!(l.charged_on(5), 1_250_000);
        assert_eq!(l.story("S-1@aaaaaa").1, 1_250_000);
    }

    #[test]
    fn only_the_writer_may_write_a_budget_fact_under_its_own_key() {
        let f = reserve("A-1", 5, 1);
        assert!(check_budget(&f.key(), "A", &f).is_ok());
        assert_eq!(check_budget(&f.key(), "B", &f), Err(Refusal::NotEntitled));
        assert!(check_budget("budget/reserve/A-2", "A", &f).is_err());
        let g = BudgetFact::Give {
            from: "A".into(),
            to: "A".into(),
            day: 1,
            n: 1,
            micro_usd: 1,
            at_ms: 0,
        };
        assert!(
            check_budget(&g.key(), "A", &g).is_err(),
            "a give to oneself"
        );
        let big = reserve("A-1", 5, MAX_MICRO_USD + 1);
        assert!(check_budget(&big.key(), "A", &big).is_err());
    }
}
