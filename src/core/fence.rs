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
//! # Fence tokens
//!
//! A merge claim's token restarts at 1 in every review round (the resource of round 2 is
//! a fresh one), so the fence orders merges by `(round, token)`, lexicographically. A
//! [`FenceToken`] packs the pair losslessly into a `u128` — the round in bits 64..96,
//! the whole 64-bit claim token below — so comparing the numbers is comparing the pairs,
//! and no token, however large, wraps onto another. (Versions before this one packed
//! `round << 32 | token & 0xffff_ffff` into a `u64`, which wrapped a token above
//! `u32::MAX` onto a small one; [`from_legacy`] reads a record they wrote.)
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

/// A fence token: `(round, claim token)` packed so that numeric order is the pair's
/// lexicographic order (see the module doc). Build one with [`fence_token`].
pub type FenceToken = u128;

/// What the fence of a story says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceRecord<C> {
    pub token: FenceToken,
    /// Peer id of the holder that recorded the token.
    pub holder: String,
    /// The commit main was fast-forwarded to, once the story landed.
    pub landed: Option<C>,
}

/// An expected refusal: the fence did its job. Carries what is recorded now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused<C: Display> {
    #[error("fence refused: token {} is already recorded for this story, higher than ours; our claim is stale, stop and release it", Shown(*.recorded))]
    StaleToken { recorded: FenceToken },
    #[error("fence refused: token {} is already recorded by {holder}; another claim won this token, stop and release ours", Shown(*.token))]
    TokenTaken { token: FenceToken, holder: String },
    #[error("fence refused: main is at {main}, which the new commit does not descend from; fetch, rebase and land again")]
    NotFastForward { main: C },
    #[error("fence refused: the story already landed as {commit} with token {}", Shown(*.token))]
    AlreadyLanded { token: FenceToken, commit: C },
}

/// A fencing rule: what is recorded, the token and the holder → `None` (proceed) or the
/// refusal. [`token_check`] is the one the product runs.
pub type Rule<C> = fn(Option<&FenceRecord<C>>, FenceToken, &str) -> Option<Refused<C>>;

/// The token rules shared by record and land (see the module doc); `None` means the
/// token may proceed.
pub fn token_check<C: Clone + Display>(
    current: Option<&FenceRecord<C>>,
    token: FenceToken,
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

/// The token recorded at the origin's fence for a merge: the round, then the merge
/// claim's token (rounds restart the merge resource's tokens at 1), losslessly.
pub fn fence_token(round: u32, token: u64) -> FenceToken {
    (u128::from(round) << 64) | u128::from(token)
}

/// The round and claim token of a fence token (bits above the round are dropped: a
/// [`fence_token`] has none).
pub fn fence_parts(token: FenceToken) -> (u32, u64) {
    ((token >> 64) as u32, token as u64)
}

/// A fence token as the records of earlier versions held it (`round << 32 | token &
/// 0xffff_ffff`), read back as the pair it stood for.
pub fn from_legacy(old: u64) -> FenceToken {
    fence_token((old >> 32) as u32, old & 0xffff_ffff)
}

/// The earlier versions' `u64` form of a token, for their readers of a record written
/// now: a claim token above `u32::MAX` saturates instead of wrapping, so an earlier
/// reader never sees it lower than it is within its round.
pub fn to_legacy(token: FenceToken) -> u64 {
    let (round, claim) = fence_parts(token);
    (u64::from(round) << 32) | claim.min(0xffff_ffff)
}

/// A fence token for people: the claim token alone in round 0 (as before rounds were
/// packed), else `<claim token> (round <n>)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown(pub FenceToken);

impl Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match fence_parts(self.0) {
            (0, claim) => write!(f, "{claim}"),
            (round, claim) => write!(f, "{claim} (round {round})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(token: FenceToken, holder: &str, landed: Option<u64>) -> FenceRecord<u64> {
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
        FenceToken,
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
        assert!(
            fence_token(1, 0) > fence_token(0, u64::MAX),
            "a round beats any token"
        );
        assert!(fence_token(u32::MAX, 0) > fence_token(u32::MAX - 1, u64::MAX));
    }

    #[test]
    fn fence_tokens_are_lossless_and_ordered_like_their_pairs() {
        let samples = [
            0,
            1,
            2,
            0xffff_fffe,
            0xffff_ffff,
            1 << 32,
            (1 << 32) + 1,
            u64::MAX,
        ];
        let rounds = [0, 1, 2, u32::MAX];
        for &r in &rounds {
            for &t in &samples {
                assert_eq!(fence_parts(fence_token(r, t)), (r, t));
                for &r2 in &rounds {
                    for &t2 in &samples {
                        assert_eq!(
                            fence_token(r, t).cmp(&fence_token(r2, t2)),
                            (r, t).cmp(&(r2, t2)),
                            "({r}, {t}) vs ({r2}, {t2})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_token_above_u32_max_is_fenced_not_wrapped() {
        // The old encoding kept 32 bits: (0, 2^32 + 1) became 1 and passed a fence that
        // recorded 5. Now it is above 5, and 5 below it is stale.
        let big = fence_token(0, (1 << 32) + 1);
        assert_eq!(
            token_check(Some(&rec(fence_token(0, 5), "A", None)), big, "B"),
            None
        );
        assert_eq!(
            token_check(Some(&rec(big, "B", None)), fence_token(0, 5), "A"),
            Some(Refused::StaleToken { recorded: big })
        );
        assert_eq!(
            token_check(Some(&rec(big, "B", None)), fence_token(0, 1), "A"),
            Some(Refused::StaleToken { recorded: big }),
            "the token the old encoding wrapped it onto is stale too"
        );
        assert_eq!(
            token_check(Some(&rec(big, "B", None)), fence_token(1, 1), "A"),
            None,
            "a later round still wins"
        );
    }

    #[test]
    fn legacy_records_keep_their_order() {
        // What an earlier version wrote for (round 2, token 7).
        let old = (2u64 << 32) | 7;
        assert_eq!(from_legacy(old), fence_token(2, 7));
        assert_eq!(to_legacy(fence_token(2, 7)), old);
        let recorded = rec(from_legacy(old), "A", None);
        for (lower, want_stale) in [
            (fence_token(2, 6), true),
            (fence_token(1, 900), true),
            (fence_token(2, 8), false),
            (fence_token(3, 1), false),
        ] {
            let got = token_check(Some(&recorded), lower, "B");
            assert_eq!(
                matches!(got, Some(Refused::StaleToken { .. })),
                want_stale,
                "{lower:#x}: {got:?}"
            );
        }
        // An earlier reader of a record written now never sees a big token as small.
        assert_eq!(
            to_legacy(fence_token(1, (1 << 32) + 1)),
            (1 << 32) | 0xffff_ffff
        );
    }

    #[test]
    fn tokens_read_as_pairs() {
        assert_eq!(Shown(fence_token(0, 7)).to_string(), "7");
        assert_eq!(Shown(fence_token(2, 7)).to_string(), "7 (round 2)");
        let e = Refused::<u64>::StaleToken {
            recorded: fence_token(1, 3),
        };
        assert!(
            e.to_string().contains("token 3 (round 1) is already"),
            "{e}"
        );
    }
}
