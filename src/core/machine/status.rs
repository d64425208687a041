//! What the core reports about itself: the claims it holds, the mesh's active claims,
//! the runs it started, its counters and its peers.

use super::*;

/// A claim this node holds, for status output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldClaim {
    pub claim: String,
    pub story: String,
    pub phase: Phase,
    pub running: bool,
    pub age_ms: u64,
}

/// One active claim in the mesh, for `status` and `claims`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRow {
    pub claim: String,
    pub holder: String,
    /// `resource=token` for each resource.
    pub resources: Vec<String>,
    pub attempt: u32,
    /// Since this node first saw the claim.
    pub age_ms: u64,
    /// Since the last renewal this node saw.
    pub renewed_ago_ms: u64,
    /// Left until the lease expires on this node's clock (0: expired).
    pub expires_in_ms: u64,
    /// Holds every resource it names (false: it lost one and will be released).
    pub holds: bool,
}

/// A claim this node settled and ran (for tests and the simulator's invariants).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub claim: String,
    pub story: String,
    pub phase: Phase,
    pub round: u32,
    pub token: u64,
    /// Core clock when the claim settled and work started.
    pub started_ms: u64,
    /// Core clock when this node wrote the claim: `started_ms - claimed_ms` is the
    /// write → settled latency.
    pub claimed_ms: u64,
}

/// Core-level counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    pub malformed_dropped: u64,
    pub sync_sessions_started: u64,
    pub sync_sessions_completed: u64,
    pub sync_failures: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub handshake_failures: u64,
    /// Sync frames refused by the network shell for announcing more than the cap
    /// (filled in by the shell, like the byte counts).
    #[serde(default)]
    pub oversized_frames: u64,
    /// Sync frames dropped for coming faster than `max_ingress_bytes_per_sec`.
    #[serde(default)]
    pub ingress_dropped: u64,
    /// Sync messages and pushes refused because the document is at its size cap.
    #[serde(default)]
    pub full_dropped: u64,
    /// Settle latency and run durations (`/metrics` histograms).
    #[serde(default)]
    pub latency: super::Latency,
}

impl Core {
    /// Claims this node holds (settling or running).
    pub fn held(&self, now_ms: u64) -> Vec<HeldClaim> {
        self.local
            .iter()
            .map(|(id, c)| HeldClaim {
                claim: id.clone(),
                story: c.story.clone(),
                phase: c.phase,
                running: c.state == LocalState::Running,
                age_ms: now_ms.saturating_sub(c.written_ms),
            })
            .collect()
    }

    /// Every active (winning, unreleased) claim, with its lease as this node sees it.
    pub fn claim_rows(&mut self, now_ms: u64) -> Vec<ClaimRow> {
        let claims = self.derived().1;
        let mut rows = Vec::new();
        for (id, c) in claims.active() {
            let first = self.observer.first_seen_ms(id).unwrap_or(now_ms);
            let renewed = self.observer.last_renewed_ms(id).unwrap_or(first);
            let dead = c.holder != self.peer
                && self.membership.state(&c.holder, now_ms) == Some(PeerState::Dead);
            let left = if dead {
                0
            } else {
                renewed.saturating_add(c.ttl_ms).saturating_sub(now_ms)
            };
            rows.push(ClaimRow {
                claim: id.to_string(),
                holder: c.holder.clone(),
                resources: c
                    .resources
                    .iter()
                    .map(|(r, t)| format!("{r}={t}"))
                    .collect(),
                attempt: c.attempt,
                age_ms: now_ms.saturating_sub(first),
                renewed_ago_ms: now_ms.saturating_sub(renewed),
                expires_in_ms: left,
                holds: claims.holds(id),
            });
        }
        rows
    }

    /// Peers by membership state.
    pub fn peers(&self, now_ms: u64) -> Vec<PeerStatus> {
        self.membership.snapshot(now_ms)
    }

    pub fn peer_state(&self, peer: &str, now_ms: u64) -> Option<PeerState> {
        self.membership.state(peer, now_ms)
    }
}
