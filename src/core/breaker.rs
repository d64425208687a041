//! The origin's circuit breaker: how a node stops hammering a git origin that is down and
//! finds out, by itself, when it is back (docs/DESIGN.md §8.4).
//!
//! Every job needs the origin (each phase starts from a fetch, implement pushes its work,
//! merge lands there), so an outage shows up as jobs the shell reports as
//! [`JobFailure::Origin`](crate::core::JobFailure): not the work's fault, so no attempt is
//! counted and the claim is released for anyone to take again. This breaker decides when
//! this node may claim again:
//!
//! - after the k-th origin failure in a row the node claims nothing for a backoff that
//!   doubles with k (from `base_ms` up to `max_ms`, jittered by ±25 % so the nodes of a mesh
//!   do not come back in step);
//! - at `open_after` failures in a row the breaker *opens*: the node raises one
//!   `git_unavailable` event, and from then on claims at most one job at a time, once per
//!   backoff (the job is the probe: it fetches first, so it fails fast while the origin is
//!   down);
//! - the first job that finishes with a handoff closes it (`git_available`, with how long
//!   the origin was gone); a node with nothing to claim asks its shell to probe the origin
//!   (a fetch) once per backoff instead, so it too finds out.
//!
//! Pure: time comes in as an argument, and the jitter is a hash of the node and the
//! failure count, so the simulator replays it exactly.

use crate::core::scheduler::rendezvous;

/// The breaker's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Origin failures in a row that open the breaker (at least 1).
    pub open_after: u32,
    /// The pause after the first failure; each further one doubles it.
    pub base_ms: u64,
    /// The longest pause.
    pub max_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            open_after: 3,
            base_ms: 1_000,
            max_ms: 60_000,
        }
    }
}

/// A change of the breaker's state that the node announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The breaker just opened: claims pause, one probe per `retry_in_ms`.
    Opened { failures: u32, retry_in_ms: u64 },
    /// A job succeeded while the breaker was open: the origin is back after `down_ms`.
    Closed { down_ms: u64 },
}

/// What `status` shows about the origin.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct OriginHealth {
    /// Origin failures in a row (0: healthy).
    pub failures: u32,
    /// The breaker is open: the origin has been unavailable since this node clock (ms).
    pub open_since_ms: Option<u64>,
    /// No claim before this much longer (ms from now).
    pub retry_in_ms: u64,
    /// The last failure's reason.
    pub last_error: Option<String>,
}

/// The breaker's state on one node.
#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    /// Salts the jitter, so nodes differ.
    node: String,
    failures: u32,
    first_failure_ms: Option<u64>,
    open_since_ms: Option<u64>,
    /// Claim nothing before this node clock.
    hold_until_ms: u64,
    last_error: Option<String>,
}

impl Breaker {
    pub fn new(node: &str, cfg: BreakerConfig) -> Breaker {
        Breaker {
            cfg: BreakerConfig {
                open_after: cfg.open_after.max(1),
                base_ms: cfg.base_ms.max(1),
                max_ms: cfg.max_ms.max(cfg.base_ms.max(1)),
            },
            node: node.to_string(),
            failures: 0,
            first_failure_ms: None,
            open_since_ms: None,
            hold_until_ms: 0,
            last_error: None,
        }
    }

    /// Whether the node may claim a job now. `running` is how many jobs it runs: while the
    /// breaker is open, one at a time (the probe).
    pub fn may_claim(&self, now_ms: u64, running: usize) -> bool {
        now_ms >= self.hold_until_ms && (self.open_since_ms.is_none() || running == 0)
    }

    /// The node claimed a job. While open, that job is the probe: the next one waits a
    /// full backoff (or for the probe to succeed).
    pub fn claimed(&mut self, now_ms: u64) {
        if self.open_since_ms.is_some() {
            self.hold_until_ms = now_ms.saturating_add(self.backoff_ms());
        }
    }

    /// A job failed because the origin was unavailable.
    pub fn failed(&mut self, now_ms: u64, reason: &str) -> Option<Transition> {
        self.failures = self.failures.saturating_add(1);
        self.first_failure_ms.get_or_insert(now_ms);
        self.last_error = Some(reason.to_string());
        let pause = self.backoff_ms();
        self.hold_until_ms = now_ms.saturating_add(pause);
        if self.open_since_ms.is_none() && self.failures >= self.cfg.open_after {
            self.open_since_ms = self.first_failure_ms;
            return Some(Transition::Opened {
                failures: self.failures,
                retry_in_ms: pause,
            });
        }
        None
    }

    /// A job finished with a handoff: the origin answers.
    pub fn succeeded(&mut self, now_ms: u64) -> Option<Transition> {
        let was_open = self.open_since_ms.take();
        self.failures = 0;
        self.first_failure_ms = None;
        self.hold_until_ms = 0;
        self.last_error = None;
        was_open.map(|since| Transition::Closed {
            down_ms: now_ms.saturating_sub(since),
        })
    }

    /// Whether to probe the origin now without a job: the breaker is open, its pause is
    /// over, and no job runs to find out (a node with nothing to claim still learns the
    /// origin is back, and says so). The caller then calls [`Breaker::claimed`].
    pub fn probe_due(&self, now_ms: u64, running: usize) -> bool {
        self.is_open() && self.may_claim(now_ms, running)
    }

    pub fn is_open(&self) -> bool {
        self.open_since_ms.is_some()
    }

    pub fn health(&self, now_ms: u64) -> OriginHealth {
        OriginHealth {
            failures: self.failures,
            open_since_ms: self.open_since_ms,
            retry_in_ms: self.hold_until_ms.saturating_sub(now_ms),
            last_error: self.last_error.clone(),
        }
    }

    /// The pause after the current run of failures: `base · 2^(failures-1)`, capped,
    /// times a factor in [0.75, 1.25) drawn from a hash of the node and the count.
    fn backoff_ms(&self) -> u64 {
        let n = self.failures.max(1) - 1;
        let raw = self
            .cfg
            .base_ms
            .saturating_mul(1u64 << n.min(32))
            .min(self.cfg.max_ms);
        let h = rendezvous(&self.node, &format!("origin-backoff/{}", self.failures));
        // 0..=1023 → 768..1280 per 1024.
        let factor = 768 + (h % 512);
        raw.saturating_mul(factor) / 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            open_after: 3,
            base_ms: 1_000,
            max_ms: 8_000,
        }
    }

    #[test]
    fn failures_back_off_exponentially_with_jitter_and_open_after_the_threshold() {
        let mut b = Breaker::new("n1", cfg());
        assert!(b.may_claim(0, 5));
        assert_eq!(b.failed(0, "down"), None);
        let first = b.health(0).retry_in_ms;
        assert!((750..1250).contains(&first), "{first}");
        assert!(!b.may_claim(first - 1, 0));
        assert!(b.may_claim(first, 3), "closed: capacity is the node's own");
        assert_eq!(b.failed(first, "down"), None);
        let second = b.health(first).retry_in_ms;
        assert!((1500..2500).contains(&second), "{second}");
        let t = first + second;
        let Some(Transition::Opened {
            failures,
            retry_in_ms,
        }) = b.failed(t, "down")
        else {
            panic!("the third failure in a row opens the breaker");
        };
        assert_eq!(failures, 3);
        assert!((3000..5000).contains(&retry_in_ms), "{retry_in_ms}");
        assert_eq!(
            b.health(t).open_since_ms,
            Some(0),
            "down since the first failure"
        );
        // Open: one probe at a time, once per backoff.
        let t = t + retry_in_ms;
        assert!(!b.may_claim(t, 1));
        assert!(b.may_claim(t, 0));
        b.claimed(t);
        assert!(!b.may_claim(t + 1, 0));
        // Capped at max_ms (±25 %).
        for _ in 0..10 {
            b.failed(t, "down");
        }
        let r = b.health(t).retry_in_ms;
        assert!((6000..10_000).contains(&r), "{r}");
        // Two nodes draw different pauses.
        let mut other = Breaker::new("n2", cfg());
        let mut mine = Breaker::new("n1", cfg());
        let differ = (0..5).any(|_| {
            other.failed(0, "x");
            mine.failed(0, "x");
            other.health(0).retry_in_ms != mine.health(0).retry_in_ms
        });
        assert!(differ);
    }

    #[test]
    fn a_success_closes_it_and_says_how_long_the_origin_was_gone() {
        let mut b = Breaker::new("n1", cfg());
        assert_eq!(
            b.succeeded(5),
            None,
            "a success while healthy announces nothing"
        );
        b.failed(1_000, "down");
        b.failed(3_000, "down");
        assert!(matches!(
            b.failed(6_000, "down"),
            Some(Transition::Opened { .. })
        ));
        assert_eq!(b.failed(20_000, "down"), None, "opens once");
        assert_eq!(
            b.succeeded(31_000),
            Some(Transition::Closed { down_ms: 30_000 })
        );
        assert!(!b.is_open());
        assert!(b.may_claim(31_000, 7));
        assert_eq!(b.health(31_000), OriginHealth::default());
        // A success before the threshold resets the count: failures must be in a row.
        b.failed(40_000, "down");
        b.failed(42_000, "down");
        b.succeeded(44_000);
        assert_eq!(b.failed(45_000, "down"), None);
    }
}
