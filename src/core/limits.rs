//! Bounded resources: what one member can make every node spend.
//!
//! Three caps, each with a clear error where the work is asked for and a counted drop
//! where it arrives:
//! - the stored document ([`Limits::max_document_bytes`], enforced by the document
//!   itself, see [`crate::core::state::Doc::with_size_cap`]);
//! - writes a user asks for (stories, knowledge, roster facts) per minute, at the
//!   writer: an honest node never floods, and its user hears why a write waits;
//! - bytes a peer may hand this node per second, at the receiver: a member that writes
//!   junk as fast as it can (or a peer relaying it) is slowed to the rate, and a frame
//!   over it is dropped whole and counted. The sync protocol asks again later, so an
//!   honest burst is delayed, never lost, and every replica still converges.
//!
//! A receiver cannot cap an *author's* rate without breaking convergence (an author's
//! changes reach it through every peer, and dropping some of them for good would leave
//! replicas different); it caps what each connection costs it instead.
//!
//! Pure: time is an argument.

/// The caps (config keys of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// What the document may take on disk.
    pub max_document_bytes: u64,
    /// Writes a user asks for, per minute (a burst of that many is allowed at once).
    pub max_writes_per_minute: u32,
    /// Sync bytes one peer may hand this node per second, sustained (bursts of twice the
    /// sync message cap pass).
    pub max_ingress_bytes_per_sec: u64,
    /// A node whose stored document is at least this large answers a new node's first
    /// sync with a snapshot of it rather than its changes (`machine/sync.rs`). Not a
    /// config key: tests lower it.
    pub snapshot_join_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_document_bytes: 1 << 30,
            max_writes_per_minute: 6_000,
            max_ingress_bytes_per_sec: 16 << 20,
            snapshot_join_bytes: 1 << 20,
        }
    }
}

impl Limits {
    /// The writes a node's users may ask for, full at `now_ms` (wall clock).
    pub fn writes_bucket(&self, now_ms: u64) -> Bucket {
        let n = self.max_writes_per_minute;
        Bucket::new(u64::from(n), f64::from(n) / 60.0, now_ms)
    }

    /// One connection's ingress allowance, full at `now_ms`: the rate, with bursts of
    /// twice the sync message cap, so the largest frame always fits.
    pub fn ingress_bucket(&self, max_sync_bytes: usize, now_ms: u64) -> Bucket {
        let rate = self.max_ingress_bytes_per_sec;
        let burst = (2 * max_sync_bytes as u64).max(rate);
        Bucket::new(burst, rate as f64, now_ms)
    }
}

/// A token bucket: `capacity` tokens, refilled at `per_sec` a second.
#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: f64,
    per_ms: f64,
    tokens: f64,
    last_ms: u64,
}

impl Bucket {
    /// A full bucket.
    pub fn new(capacity: u64, per_sec: f64, now_ms: u64) -> Bucket {
        Bucket {
            capacity: capacity as f64,
            per_ms: per_sec.max(0.0) / 1000.0,
            tokens: capacity as f64,
            last_ms: now_ms,
        }
    }

    /// Takes `n` tokens if there are that many; otherwise takes none and says how long
    /// until there will be (`u64::MAX` when `n` is over the capacity: never).
    pub fn take(&mut self, n: u64, now_ms: u64) -> Result<(), u64> {
        // A clock that went back refills nothing.
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed as f64 * self.per_ms).min(self.capacity);
        let n = n as f64;
        if n <= self.tokens {
            self.tokens -= n;
            return Ok(());
        }
        if n > self.capacity || self.per_ms <= 0.0 {
            return Err(u64::MAX);
        }
        Err(((n - self.tokens) / self.per_ms).ceil() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_passes_its_burst_then_the_rate() {
        let mut b = Bucket::new(3, 1.0, 0);
        for _ in 0..3 {
            assert_eq!(b.take(1, 0), Ok(()));
        }
        // Empty: the next token comes in a second.
        assert_eq!(b.take(1, 0), Err(1000));
        assert_eq!(b.take(1, 400), Err(600));
        assert_eq!(b.take(1, 1000), Ok(()));
        // A long idle time refills to the capacity, not beyond.
        assert_eq!(b.take(3, 1_000_000), Ok(()));
        assert_eq!(b.take(1, 1_000_000), Err(1000));
        // More than it can ever hold, and a clock going back.
        assert_eq!(b.take(4, 9_000_000), Err(u64::MAX));
        assert_eq!(b.take(1, 5), Ok(()));
        assert_eq!(b.take(3, 5), Err(1000));
    }
}
