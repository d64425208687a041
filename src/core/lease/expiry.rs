//! Leases on the observer's clock: the timing knobs (`LeaseConfig`) and their rule,
//! `LeaseObserver` (first sight, renewals, expiry, takeover) and `resource_free`.

use super::*;

// ---------------------------------------------------------------------------------------
// Timing configuration
// ---------------------------------------------------------------------------------------

/// Lease timing. All values in milliseconds.
///
/// The config file keys are `lease_ttl_ms`, `lease_grace_ms`, `settle_timeout_ms`,
/// `max_clock_drift_ms` and `message_timeout_ms`; errors name them that way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// A lease expires when an observer has seen no renewal for this long.
    pub ttl_ms: u64,
    /// After expiry, how much longer an observer waits before taking the work over.
    pub grace_ms: u64,
    /// After writing a claim, how long the holder waits for sync before re-checking it wins.
    pub settle_timeout_ms: u64,
    /// The most two nodes' monotonic clocks may disagree in rate over one ttl.
    pub max_clock_drift_ms: u64,
    /// The longest a heartbeat or sync message is expected to take.
    pub message_timeout_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> LeaseConfig {
        LeaseConfig {
            ttl_ms: 10_000,
            grace_ms: 2_000,
            settle_timeout_ms: 1_000,
            max_clock_drift_ms: 1_000,
            message_timeout_ms: 1_000,
        }
    }
}

/// A lease configuration that breaks a rule. The message names the keys, their values and
/// the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseConfigError {
    #[error("invalid config: lease_ttl_ms = {ttl_ms} must be at least 2*max_clock_drift_ms + 4*message_timeout_ms = {min_ttl_ms} (max_clock_drift_ms = {max_clock_drift_ms}, message_timeout_ms = {message_timeout_ms}); raise lease_ttl_ms or lower the others")]
    TtlTooShort {
        ttl_ms: u64,
        min_ttl_ms: u64,
        max_clock_drift_ms: u64,
        message_timeout_ms: u64,
    },
    #[error("invalid config: 2*max_clock_drift_ms + 4*message_timeout_ms overflows (max_clock_drift_ms = {max_clock_drift_ms}, message_timeout_ms = {message_timeout_ms}); use values in milliseconds")]
    Overflow {
        max_clock_drift_ms: u64,
        message_timeout_ms: u64,
    },
    #[error("invalid config: {key} = 0 must be greater than 0")]
    Zero { key: &'static str },
    #[error("invalid config: settle_timeout_ms = {settle_timeout_ms} must be less than lease_ttl_ms = {ttl_ms}, so a claim settles before its lease could expire")]
    SettleTooLong { settle_timeout_ms: u64, ttl_ms: u64 },
}

impl LeaseConfig {
    /// Checks the rules:
    /// - `lease_ttl_ms >= 2*max_clock_drift_ms + 4*message_timeout_ms`: a lease must outlast
    ///   the worst disagreement of two clocks plus a few lost or slow heartbeats, or healthy
    ///   holders lose their work;
    /// - `lease_grace_ms`, `settle_timeout_ms` and `message_timeout_ms` are not zero;
    /// - `settle_timeout_ms < lease_ttl_ms`.
    pub fn validate(&self) -> Result<(), LeaseConfigError> {
        for (key, value) in [
            ("lease_ttl_ms", self.ttl_ms),
            ("lease_grace_ms", self.grace_ms),
            ("settle_timeout_ms", self.settle_timeout_ms),
            ("message_timeout_ms", self.message_timeout_ms),
        ] {
            if value == 0 {
                return Err(LeaseConfigError::Zero { key });
            }
        }
        let min_ttl_ms = self
            .max_clock_drift_ms
            .checked_mul(2)
            .and_then(|d| self.message_timeout_ms.checked_mul(4)?.checked_add(d))
            .ok_or(LeaseConfigError::Overflow {
                max_clock_drift_ms: self.max_clock_drift_ms,
                message_timeout_ms: self.message_timeout_ms,
            })?;
        if self.ttl_ms < min_ttl_ms {
            return Err(LeaseConfigError::TtlTooShort {
                ttl_ms: self.ttl_ms,
                min_ttl_ms,
                max_clock_drift_ms: self.max_clock_drift_ms,
                message_timeout_ms: self.message_timeout_ms,
            });
        }
        if self.settle_timeout_ms >= self.ttl_ms {
            return Err(LeaseConfigError::SettleTooLong {
                settle_timeout_ms: self.settle_timeout_ms,
                ttl_ms: self.ttl_ms,
            });
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Leases on the observer's clock
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    first_seen_ms: u64,
    last_renewed_ms: u64,
    /// When this observer was first told the holder is dead (cleared when it lives again).
    dead_since_ms: Option<u64>,
}

/// One node's memory of the leases it has seen, on its own monotonic clock.
///
/// Nothing here trusts another node's clock. A claim is fresh from the moment this
/// observer first sees it (so a node that joins late, or syncs a claim late, never judges
/// it expired on arrival) and is renewed each time the holder's heartbeat lists it.
///
/// **Grace for a dead holder.** A lease expires `ttl` after its last renewal, or as soon
/// as its holder is judged dead. Takeover waits a further `grace` after expiry, where
/// expiry is the *earlier* of `last_renewed + ttl` and the moment this observer was first
/// told the holder is dead (recorded by [`LeaseObserver::takeover_allowed`], which is
/// why it takes `&mut self`). So a dead holder's work moves `grace` after its death was
/// noticed, never sooner, and never later than a silent holder's would. If the holder
/// comes back (a renewal, or a call with `holder_dead = false`), the death is forgotten.
///
/// Claims must be forgotten when released (see [`LeaseObserver::forget`] and
/// [`LeaseObserver::prune`]) to keep the map bounded.
#[derive(Debug, Clone, Default)]
pub struct LeaseObserver {
    seen: BTreeMap<String, Seen>,
}

impl LeaseObserver {
    pub fn new() -> LeaseObserver {
        LeaseObserver::default()
    }

    /// Notes that the claim exists. Only the first call counts: it starts the lease.
    pub fn observe_claim(&mut self, claim_id: &str, now_ms: u64) {
        self.seen.entry(claim_id.to_string()).or_insert(Seen {
            first_seen_ms: now_ms,
            last_renewed_ms: now_ms,
            dead_since_ms: None,
        });
    }

    /// The holder's heartbeat listed the claim at `now_ms`. Never moves time backwards. A
    /// renewal of a claim not yet seen also counts as its first sight.
    pub fn renew(&mut self, claim_id: &str, now_ms: u64) {
        self.observe_claim(claim_id, now_ms);
        if let Some(s) = self.seen.get_mut(claim_id) {
            s.last_renewed_ms = s.last_renewed_ms.max(now_ms);
            s.dead_since_ms = None;
        }
    }

    /// When this observer first saw the claim.
    pub fn first_seen_ms(&self, claim_id: &str) -> Option<u64> {
        self.seen.get(claim_id).map(|s| s.first_seen_ms)
    }

    /// When this observer last saw the claim renewed (its first sight if never renewed).
    pub fn last_renewed_ms(&self, claim_id: &str) -> Option<u64> {
        self.seen.get(claim_id).map(|s| s.last_renewed_ms)
    }

    /// True if the lease has expired on this observer's clock: no renewal for `ttl_ms`, or
    /// the holder is dead. A claim this observer has never seen is not expired (it is
    /// fresh from first sight). A clock reading earlier than the last renewal counts as no
    /// time passed.
    pub fn expired(&self, claim_id: &str, ttl_ms: u64, now_ms: u64, holder_dead: bool) -> bool {
        let Some(s) = self.seen.get(claim_id) else {
            return false;
        };
        holder_dead || now_ms.saturating_sub(s.last_renewed_ms) >= ttl_ms
    }

    /// When the lease expired (or will expire without renewal), on this observer's clock.
    fn expiry_ms(s: &Seen, ttl_ms: u64) -> u64 {
        let silent = s.last_renewed_ms.saturating_add(ttl_ms);
        match s.dead_since_ms {
            Some(dead) => silent.min(dead),
            None => silent,
        }
    }

    /// True if another node may take the claim's resources over: the lease expired at
    /// least `grace_ms` ago on this observer's clock. See the type's docs for how a dead
    /// holder counts; this call records the first moment the holder was reported dead.
    ///
    /// A claim never seen is observed now, and so is not yet takeable.
    pub fn takeover_allowed(
        &mut self,
        claim_id: &str,
        cfg: &LeaseConfig,
        now_ms: u64,
        holder_dead: bool,
    ) -> bool {
        self.observe_claim(claim_id, now_ms);
        let Some(s) = self.seen.get_mut(claim_id) else {
            return false;
        };
        if holder_dead {
            s.dead_since_ms.get_or_insert(now_ms);
        } else {
            s.dead_since_ms = None;
        }
        let s = *s;
        if !self.expired(claim_id, cfg.ttl_ms, now_ms, holder_dead) {
            return false;
        }
        now_ms >= Self::expiry_ms(&s, cfg.ttl_ms).saturating_add(cfg.grace_ms)
    }

    /// Drops what is known about the claim (after its release).
    pub fn forget(&mut self, claim_id: &str) {
        self.seen.remove(claim_id);
    }

    /// Forgets every claim that is released or no longer in `claims`.
    pub fn prune(&mut self, claims: &Claims) {
        self.seen
            .retain(|id, _| claims.claim(id).is_some() && !claims.is_released(id));
    }

    /// How many claims this observer remembers.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// True if this node may claim `resource` now: it was never claimed, its winner was
/// released, or its winner's lease expired more than `grace` ago on this observer's clock
/// (`is_dead` says whether a peer is judged dead by membership).
///
/// A winner this observer had not yet seen is observed now (fresh from first sight).
pub fn resource_free(
    claims: &Claims,
    observer: &mut LeaseObserver,
    resource: &Resource,
    now_ms: u64,
    cfg: &LeaseConfig,
    is_dead: impl Fn(&str) -> bool,
) -> bool {
    let Some(winner) = claims.winner(resource) else {
        return true;
    };
    let holder_dead = claims.claim(winner).is_some_and(|c| is_dead(&c.holder));
    observer.takeover_allowed(winner, cfg, now_ms, holder_dead)
}
