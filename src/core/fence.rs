//! The fencing rule at the git origin, pure: the one place that decides whether a
//! holder's token may write a story's fence (and so land the story on main).
//!
//! Leases only decide who *should* work; a holder that paused past its lease can still
//! wake up and push. The fence shell (`crate::fence`) keeps one [`FenceRecord`] per story
//! in the origin and asks [`token_check`] before every record and land; the work shell
//! lands a merge under [`fence_token`]; the simulator's origin model asks the same rule
//! (it takes the rule as a parameter, so a test can hand it a broken one and watch the
//! invariants catch it).
//!
//! The record is generic over the commit id `C`: git's `Oid` in the shell, a stand-in in
//! the simulator. Nothing here touches git.
//!
//! # The rule
//!
//! Given what the fence records now, a token from a holder may proceed when:
//! - nothing is recorded; or
//! - the story has not landed and the recorded token is lower, or the same token was
//!   recorded by the same holder (an idempotent repeat);
//! - the story landed, and this is the same holder repeating that land with the same
//!   token (so an interrupted land can be completed).
//!
//! Otherwise it is [`Refused`]: a higher recorded token ([`Refused::StaleToken`]), the
//! same token recorded by another holder ([`Refused::TokenTaken`]), or the story already
//! landed under another claim ([`Refused::AlreadyLanded`]).

use std::fmt::Display;

/// What the fence of a story says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceRecord<C> {
    pub token: u64,
    /// Peer id of the holder that recorded the token.
    pub holder: String,
    /// The commit main was fast-forwarded to, once the story landed.
    pub landed: Option<C>,
}

/// An expected refusal: the fence did its job. Carries what is recorded now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused<C: Display> {
    #[error("fence refused: token {recorded} is already recorded for this story, higher than ours; our claim is stale, stop and release it")]
    StaleToken { recorded: u64 },
    #[error("fence refused: token {token} is already recorded by {holder}; another claim won this token, stop and release ours")]
    TokenTaken { token: u64, holder: String },
    #[error("fence refused: main is at {main}, which the new commit does not descend from; fetch, rebase and land again")]
    NotFastForward { main: C },
    #[error("fence refused: the story already landed as {commit} with token {token}")]
    AlreadyLanded { token: u64, commit: C },
}

/// A fencing rule: what is recorded, the token and the holder → `None` (proceed) or the
/// refusal. [`token_check`] is the one the product runs.
pub type Rule<C> = fn(Option<&FenceRecord<C>>, u64, &str) -> Option<Refused<C>>;

/// The token rules shared by record and land (see the module doc); `None` means the
/// token may proceed.
pub fn token_check<C: Clone + Display>(
    current: Option<&FenceRecord<C>>,
    token: u64,
    holder: &str,
) -> Option<Refused<C>> {
    let rec = current?;
    if let Some(commit) = &rec.landed {
        if rec.token == token && rec.holder == holder {
            return None;
        }
        return Some(Refused::AlreadyLanded {
            token: rec.token,
            commit: commit.clone(),
        });
    }
    if rec.token > token {
        return Some(Refused::StaleToken {
            recorded: rec.token,
        });
    }
    if rec.token == token && rec.holder != holder {
        return Some(Refused::TokenTaken {
            token,
            holder: rec.holder.clone(),
        });
    }
    None
}

/// The token recorded at the origin's fence for a merge: rounds restart the merge
/// resource's tokens at 1, so the round goes in the high bits to keep fence tokens
/// increasing across rounds.
pub fn fence_token(round: u32, token: u64) -> u64 {
    (u64::from(round) << 32) | (token & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(token: u64, holder: &str, landed: Option<u64>) -> FenceRecord<u64> {
        FenceRecord {
            token,
            holder: holder.to_string(),
            landed,
        }
    }

    /// A case of the rule: what it shows, the record, the token, the holder, the answer.
    type Case = (
        &'static str,
        Option<FenceRecord<u64>>,
        u64,
        &'static str,
        Option<Refused<u64>>,
    );

    /// The rule's specification, case by case: the first case a rule gets wrong, or
    /// `Ok` if it gets them all right. The product's rule must pass; a broken one must
    /// not (so these cases can fail).
    fn obeys_the_fence_rules(rule: Rule<u64>) -> Result<(), String> {
        let cases: [Case; 8] = [
            ("a first token proceeds", None, 3, "A", None),
            (
                "a higher token replaces a lower one",
                Some(rec(3, "A", None)),
                4,
                "B",
                None,
            ),
            (
                "the same token by the same holder is an idempotent repeat",
                Some(rec(3, "A", None)),
                3,
                "A",
                None,
            ),
            (
                "a lower token is stale",
                Some(rec(5, "B", None)),
                4,
                "A",
                Some(Refused::StaleToken { recorded: 5 }),
            ),
            (
                "the same token by another holder is taken",
                Some(rec(3, "A", None)),
                3,
                "B",
                Some(Refused::TokenTaken {
                    token: 3,
                    holder: "A".into(),
                }),
            ),
            (
                "a landed story refuses a higher token",
                Some(rec(3, "A", Some(9))),
                7,
                "B",
                Some(Refused::AlreadyLanded {
                    token: 3,
                    commit: 9,
                }),
            ),
            (
                "a landed story refuses its own holder under another token",
                Some(rec(3, "A", Some(9))),
                4,
                "A",
                Some(Refused::AlreadyLanded {
                    token: 3,
                    commit: 9,
                }),
            ),
            (
                "the landing holder may repeat its land",
                Some(rec(3, "A", Some(9))),
                3,
                "A",
                None,
            ),
        ];
        for (what, current, token, holder, want) in cases {
            let got = rule(current.as_ref(), token, holder);
            if got != want {
                return Err(format!("{what}: got {got:?}, want {want:?}"));
            }
        }
        Ok(())
    }

    #[test]
    fn the_product_rule_obeys_every_fence_rule() {
        assert_eq!(obeys_the_fence_rules(token_check::<u64>), Ok(()));
    }

    #[test]
    fn a_rule_that_accepts_any_token_fails_the_fence_rules() {
        let broken: Rule<u64> = |_, _, _| None;
        let err = obeys_the_fence_rules(broken).unwrap_err();
        assert!(err.starts_with("a lower token is stale"), "{err}");
    }

    #[test]
    fn a_rule_that_ignores_the_holder_fails_the_fence_rules() {
        let blind: Rule<u64> = |current, token, _| {
            token_check(current, token, current.map_or("", |r| r.holder.as_str()))
        };
        let err = obeys_the_fence_rules(blind).unwrap_err();
        assert!(
            err.starts_with("the same token by another holder is taken"),
            "{err}"
        );
    }

    #[test]
    fn fence_tokens_grow_across_rounds() {
        assert!(fence_token(1, 1) > fence_token(0, 7));
        assert!(fence_token(0, 2) > fence_token(0, 1));
        assert!(fence_token(2, 1) > fence_token(1, 900));
    }
}
