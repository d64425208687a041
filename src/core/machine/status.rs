//! What the core reports about itself: the claims it holds, the mesh's active claims,
//! the runs it started, its counters and its peers.

use super::*;

/// A claim this node holds, for status output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldClaim {
    pub claim: String,
    /// The story's key (`S-0007@a1b2c3`).
    pub story: String,
    /// The story's display id (`S-0007`), what every command prints.
    #[serde(default)]
    pub id: String,
    pub phase: Phase,
    #[serde(default)]
    pub round: u32,
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
    /// The story it claims a phase of: display id (`S-0007`), key, phase, round and the
    /// phase's fencing token — the structured form of the `story:` resource.
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub phase: Option<Phase>,
    #[serde(default)]
    pub round: u32,
    #[serde(default)]
    pub token: u64,
    /// The files it locks (repo-relative paths).
    #[serde(default)]
    pub files: Vec<String>,
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
    /// Probes this node sent, and those that failed at once in the shell (no route).
    /// (Absent from an older node's report: zero.)
    #[serde(default)]
    pub probes_sent: u64,
    #[serde(default)]
    pub probes_failed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The sync protocol's share of the bytes (frames with their length prefix, before
    /// encryption and muxing), filled in by the shell.
    #[serde(default)]
    pub sync_bytes_in: u64,
    #[serde(default)]
    pub sync_bytes_out: u64,
    pub handshake_failures: u64,
    /// Connections a peer closed as they opened (within 2 s): it refuses this node (a
    /// mesh with operators refuses a node not on its roster).
    #[serde(default)]
    pub closed_on_open: u64,
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
    /// Sync frames dropped for naming another epoch's document (DESIGN.md §3.5).
    #[serde(default)]
    pub other_epoch_dropped: u64,
    /// Moves to a new epoch this node made.
    #[serde(default)]
    pub epochs_moved: u64,
    /// Epochs this node took up whole from a peer: it was new, and the mesh had moved.
    #[serde(default)]
    pub epochs_joined: u64,
    /// Sessions this node ended because the peer was new and takes its document whole.
    #[serde(default)]
    pub sync_sessions_deferred: u64,
    /// Whole documents this node saved for a joining peer, and took in as one.
    #[serde(default)]
    pub snapshots_sent: u64,
    #[serde(default)]
    pub snapshots_taken: u64,
    /// Sessions a peer answered `covered` (it held our pushed changes; no automerge
    /// sync), and those of them whose heads did not reach this node in time (a full
    /// sync ran instead).
    #[serde(default)]
    pub sync_covered: u64,
    #[serde(default)]
    pub sync_covered_late: u64,
    /// `covered` answers that were settle evidence before the peer's heads arrived: this
    /// node held the peer's own latest change (DESIGN.md §5.3).
    #[serde(default)]
    pub covered_vouched: u64,
    /// `need` answers this node sent (a peer's latest change or its dependencies
    /// missing), rounds it sent in reply to one, and sessions that fell back to a full
    /// sync after too many rounds.
    #[serde(default)]
    pub need_answers: u64,
    #[serde(default)]
    pub need_rounds: u64,
    #[serde(default)]
    pub need_fallbacks: u64,
    /// Of `need_answers`: the latest change had arrived but waited in automerge's queue
    /// for dependencies this node lacked (the rest: it had not arrived).
    #[serde(default)]
    pub need_queued: u64,
    /// Sessions this node opened with a push of its own changes (the rest: anti-entropy,
    /// a new connection, a digest that differed, a `covered` answer's late heads), and
    /// those a peer answered `same`.
    #[serde(default)]
    pub sync_push_sessions: u64,
    #[serde(default)]
    pub sync_same: u64,
    /// Bytes of changes this node sent inside automerge sync messages, and pushed.
    #[serde(default)]
    pub sync_change_bytes_out: u64,
    #[serde(default)]
    pub push_bytes_out: u64,
    /// First frames this node answered with automerge's sync, by why not `covered` or
    /// `need`: the frame named no latest change (a new peer, a fallback), this node
    /// lacked more than `MAX_NEED` changes on the way back to it, or this node had more
    /// than `MAX_COVERED_HEADS` heads.
    #[serde(default)]
    pub full_no_mine: u64,
    #[serde(default)]
    pub full_mine_missing: u64,
    #[serde(default)]
    pub full_many_heads: u64,
    /// Claim checks that claimed nothing because the mesh ran behind (`overloaded`).
    #[serde(default)]
    pub overload_holds: u64,
    /// Times the view was brought up to date with a peer's facts in place, and times
    /// it was folded from the whole document (see `View::apply_changes`).
    #[serde(default)]
    pub view_updates: u64,
    #[serde(default)]
    pub view_folds: u64,
    /// Settle latency and run durations (`/metrics` histograms).
    #[serde(default)]
    pub latency: super::Latency,
}

impl Core {
    /// Claims this node holds (settling or running).
    pub fn held(&self, now_ms: u64) -> Vec<HeldClaim> {
        // The cached view names display ids; without one (never folded yet), the key's
        // number is the display id.
        let view = self.view.as_ref().map(|(_, v, _)| v);
        self.local
            .iter()
            .filter(|(_, c)| c.epoch.is_none())
            .map(|(id, c)| HeldClaim {
                claim: id.clone(),
                story: c.story.clone(),
                id: view
                    .and_then(|v| v.stories.get(c.story.as_str()))
                    .map_or_else(|| display_of(&c.story).to_string(), |s| s.id.to_string()),
                phase: c.phase,
                round: c.round,
                running: c.state == LocalState::Running,
                age_ms: now_ms.saturating_sub(c.written_ms),
            })
            .collect()
    }

    /// The phases this node runs now, as (story key, phase), in claim order: [`Core::held`]'s
    /// running ones without copying anything (the simulator asks after every event).
    pub fn running(&self) -> impl Iterator<Item = (&str, Phase)> + '_ {
        self.local
            .values()
            .filter(|c| c.state == LocalState::Running)
            .map(|c| (c.story.as_str(), c.phase))
    }

    /// Every active (winning, unreleased) claim, with its lease as this node sees it.
    pub fn claim_rows(&mut self, now_ms: u64) -> Vec<ClaimRow> {
        let (view, claims) = self.derived();
        let mut rows = Vec::new();
        for (id, c) in claims.active() {
            let story = c.resources.iter().find_map(|(r, t)| match r {
                Resource::Story {
                    story,
                    phase,
                    round,
                } => Some((story.clone(), *phase, *round, *t)),
                _ => None,
            });
            let files = c.files();
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
                id: story.as_ref().map_or_else(String::new, |(k, ..)| {
                    view.stories
                        .get(k.as_str())
                        .map_or_else(|| display_of(k).to_string(), |s| s.id.to_string())
                }),
                key: story.as_ref().map_or_else(String::new, |(k, ..)| k.clone()),
                phase: story.as_ref().map(|(_, p, ..)| *p),
                round: story.as_ref().map_or(0, |(_, _, r, _)| *r),
                token: story.as_ref().map_or(0, |(.., t)| *t),
                files,
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

    /// Every known peer and its state, in peer order, without building a
    /// [`PeerStatus`] for each.
    pub fn peer_states(&self, now_ms: u64) -> impl Iterator<Item = (&str, PeerState)> + '_ {
        self.membership.states(now_ms)
    }

    pub fn peer_state(&self, peer: &str, now_ms: u64) -> Option<PeerState> {
        self.membership.state(peer, now_ms)
    }
}

/// A story key's display id when no view names it: the part before `@`.
fn display_of(key: &str) -> &str {
    key.split('@').next().unwrap_or(key)
}
