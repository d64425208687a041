//! Settling a claim: a claim of ours starts its work only once every alive peer has
//! synced with us since it was written (then the winner rule decides); one that cannot
//! settle in time is released, and the node waits before it claims again until the
//! peers that did not answer have answered or died (a bounded backoff), so a partition
//! does not fill the document with claims that cannot settle.

use super::claims::{built_on, still_needed};
use super::*;

/// The longest wait is 2^this settle timeouts.
const MAX_DOUBLINGS: u32 = 4;

/// A settle waits at least this many typical session times (see [`Core::settle_timeout`]).
const SETTLE_SESSIONS: u64 = 4;

/// How long this node's sync sessions take to complete, smoothed like TCP's round-trip
/// estimate (each sample weighs 1/8).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SessionTime {
    smoothed_ms: u64,
}

impl SessionTime {
    pub(super) fn sample(&mut self, ms: u64) {
        // A session of minutes (a paused process) moves the estimate no more than one
        // of 60 s.
        let ms = ms.min(60_000);
        self.smoothed_ms = if self.smoothed_ms == 0 {
            ms
        } else {
            self.smoothed_ms - self.smoothed_ms / 8 + ms / 8
        };
    }
}

/// After a claim of ours could not settle: the peers that did not answer, and until when
/// this node claims nothing new unless each of them has answered since or is no longer
/// alive. Each failure in a row doubles the wait, from the settle timeout up to 16 of
/// them; a settle that succeeds resets it. A partition ends the wait sooner: a silent
/// peer declared dead no longer counts. What the long wait is for is a mesh that runs
/// behind: its peers are alive and answer, only late. Capped at `dead_after_ms` (5 s),
/// 50 processes on one machine each claimed again every 5-7 s, and those failed claims
/// and their releases (15 writes a second, each taken in by 49 peers) were the load
/// that made the next claims fail.
#[derive(Debug, Default)]
pub(super) struct SettleBackoff {
    silent: BTreeSet<String>,
    /// Sessions started at or after this mark count as an answer.
    mark: u64,
    until_ms: u64,
    failures: u32,
}

impl SettleBackoff {
    /// A settle failed at `now_ms`; `silent` did not answer. Returns the wait.
    fn failed(
        &mut self,
        silent: BTreeSet<String>,
        mark: u64,
        now_ms: u64,
        settle_ms: u64,
        me: &str,
    ) -> u64 {
        let doublings = self.failures.min(MAX_DOUBLINGS);
        self.failures = self.failures.saturating_add(1);
        let wait = settle_ms.max(1).saturating_mul(1 << doublings);
        // Up to half again, different on every node: nodes that failed together (an
        // overloaded machine, a partition healing) do not all claim again at once.
        let wait = wait.saturating_add(wait * spread(me, self.failures) / 200);
        self.silent = silent;
        self.mark = mark;
        self.until_ms = now_ms.saturating_add(wait);
        wait
    }

    /// A claim settled: every alive peer answered.
    fn settled(&mut self) {
        *self = SettleBackoff::default();
    }

    /// Whether claiming should wait: the backoff runs and a peer that did not answer is
    /// still among those a claim would settle with, without a session since.
    pub(super) fn waits(
        &mut self,
        now_ms: u64,
        settles_with: impl Fn(&str) -> bool,
        completed: &BTreeMap<String, u64>,
    ) -> bool {
        if now_ms >= self.until_ms || self.silent.is_empty() {
            return false;
        }
        let mark = self.mark;
        self.silent
            .retain(|p| settles_with(p) && completed.get(p).is_none_or(|&s| s < mark));
        !self.silent.is_empty()
    }
}

/// The peers a claim settles with, in peer order: every alive one, and every connected one
/// not known dead (a frozen process keeps its TCP connections; waiting for it would stall
/// everyone), refused peers (not on the roster) left out. One pass over the peers and the
/// connections (both in peer order): it runs on every tick, so no lookup per peer and no
/// string copied (those were 10 % of the simulator's time at 150 nodes).
pub(super) fn settle_peers<'a>(
    membership: &'a Membership,
    connected: &'a BTreeSet<String>,
    refused: &BTreeSet<String>,
    now_ms: u64,
) -> Vec<&'a str> {
    let mut known = membership.states(now_ms).peekable();
    let mut out = Vec::new();
    for c in connected {
        while let Some((p, state)) = known.next_if(|(p, _)| *p < c.as_str()) {
            if state == PeerState::Alive {
                out.push(p);
            }
        }
        match known.next_if(|(p, _)| *p == c.as_str()) {
            Some((_, PeerState::Dead)) => {}
            _ => out.push(c.as_str()),
        }
    }
    out.extend(
        known
            .filter(|(_, s)| *s == PeerState::Alive)
            .map(|(p, _)| p),
    );
    if !refused.is_empty() {
        out.retain(|p| !refused.contains(*p));
    }
    out
}

/// Whether a claim settles with `peer`: [`settle_peers`] for one peer, by lookups (a
/// settling claim's waiting peers are checked on every answer; building the whole list
/// each time cost O(N) per answer, O(N²) per claim).
pub(super) fn settles_with(
    membership: &Membership,
    connected: &BTreeSet<String>,
    refused: &BTreeSet<String>,
    peer: &str,
    now_ms: u64,
) -> bool {
    counted(membership, connected, peer, now_ms) && !refused.contains(peer)
}

/// [`settles_with`] before refused peers are left out.
fn counted(membership: &Membership, connected: &BTreeSet<String>, peer: &str, now_ms: u64) -> bool {
    let state = membership.state(peer, now_ms);
    state == Some(PeerState::Alive) || (connected.contains(peer) && state != Some(PeerState::Dead))
}

/// How many peers a claim settles with: `settle_peers(..).len()` without walking every
/// peer (claiming asks on every tick; at 1,000 peers that walk was a tenth of the
/// simulator's time). Every peer out of the membership's troubled set is alive, so this
/// looks at the troubled ones, the `strangers` (connected peers the membership had not
/// heard of when they connected: a superset of the connected peers it does not know,
/// since it forgets no one) and the refused.
pub(super) fn settle_count(
    membership: &Membership,
    connected: &BTreeSet<String>,
    strangers: &BTreeSet<String>,
    refused: &BTreeSet<String>,
    now_ms: u64,
) -> usize {
    let suspect_connected = membership
        .troubled_states(now_ms)
        .filter(|(p, s)| *s == PeerState::Suspect && connected.contains(*p))
        .count();
    let unknown_connected = strangers
        .iter()
        .filter(|p| connected.contains(*p) && !membership.knows(p))
        .count();
    let refused_counted = refused
        .iter()
        .filter(|p| counted(membership, connected, p, now_ms))
        .count();
    let n =
        membership.alive_count(now_ms) + suspect_connected + unknown_connected - refused_counted;
    // Debug builds (the tests, their simulator runs): the count agrees with the list.
    #[cfg(debug_assertions)]
    assert_eq!(
        n,
        settle_peers(membership, connected, refused, now_ms).len(),
        "settle count"
    );
    n
}

/// A number in 0..100 fixed by this node's id and `n` (the core draws no randomness).
fn spread(me: &str, n: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in me.bytes().chain(n.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h % 100
}

impl Core {
    /// How long a new claim may take to settle: `settle_timeout_ms`, or
    /// [`SETTLE_SESSIONS`] times what a sync session takes now if that is longer (an
    /// overloaded machine, a slow link), at most half the lease. A fixed timeout shorter
    /// than the sessions themselves fails every claim, and each failure's release costs
    /// as many sessions again: 50 nodes on one 2-core machine claimed and released for
    /// half an hour and started nothing.
    pub(super) fn settle_timeout(&self) -> u64 {
        let lease = self.cfg.lease;
        let adaptive = SETTLE_SESSIONS
            .saturating_mul(self.session_ms.smoothed_ms)
            .min(lease.ttl_ms / 2);
        lease.settle_timeout_ms.max(adaptive)
    }

    /// Whether claiming waits because the mesh runs behind: this node's typical probe
    /// round trip is over half of what a claim has to settle. A claim then would not
    /// settle, and its claim and release would be two more writes for every peer to
    /// take in: 30 nodes on one 2-core machine, their loops 10-40 s behind their input,
    /// failed nine claims in ten and merged nothing for minutes. Claims resume as the
    /// round trips come down (the median of the last 16; one paused peer does not move
    /// it). Logged when it starts and ends.
    pub(super) fn overloaded(&mut self) -> bool {
        let typical = self.probe_delays.median();
        let settle = self.settle_timeout();
        let over = typical.saturating_mul(2) > settle;
        if over != self.overloaded {
            self.overloaded = over;
            if over {
                tracing::warn!(round_trip_ms = typical, settle_timeout_ms = settle,
                    "the mesh runs behind (probe round trips over half the settle timeout): claiming nothing until they come down");
            } else {
                tracing::info!(
                    round_trip_ms = typical,
                    "probe round trips came down: claiming again"
                );
            }
        }
        if over {
            self.counters.overload_holds += 1;
        }
        over
    }

    /// Settles claims whose peers have all synced (or whose settle timeout passed): the
    /// winner starts work, a loser releases.
    pub(super) fn check_settling(&mut self, now_ms: u64) {
        let settling = |c: &LocalClaim| matches!(c.state, LocalState::Settling { .. });
        // Peers whose standing may have changed since the last check (see below).
        let dirty = std::mem::take(&mut self.settle_dirty);
        if !self.local.values().any(settling) {
            self.settle_checked.clear();
            return;
        }
        let local = &self.local;
        self.settle_checked
            .retain(|id| local.get(id).is_some_and(settling));
        // Debug builds (the tests, their simulator runs): the lookup agrees with the list.
        #[cfg(debug_assertions)]
        {
            let alive = settle_peers(&self.membership, &self.connected, &self.refused, now_ms);
            for c in self.local.values() {
                if let LocalState::Settling { waiting, .. } = &c.state {
                    for p in waiting {
                        let with = settles_with(
                            &self.membership,
                            &self.connected,
                            &self.refused,
                            p,
                            now_ms,
                        );
                        assert_eq!(alive.binary_search(&p.as_str()).is_ok(), with, "{p}");
                    }
                }
            }
        }
        // (claim, whether every alive peer synced with us since the claim was written)
        let mut silent = BTreeSet::new();
        let ready: Vec<(String, bool)> = {
            let (membership, connected, refused) =
                (&self.membership, &self.connected, &self.refused);
            let completed = &self.completed;
            let checked = &mut self.settle_checked;
            let mut ready = Vec::new();
            let silent = &mut silent;
            // A peer stops being waited on when it completes a session started after
            // the claim, or no longer counts (not alive and not connected, refused).
            // A claim's first check looks at every peer; after that only the peers
            // that may have changed either way: those with a new session or a lost
            // connection since the last check, the troubled and the refused (every
            // other peer is alive). Looking at every waiting peer on every answer was
            // O(N) an answer, O(N²) a claim: 6 % of a 700-node simulator run.
            let relook: Vec<&str> = dirty
                .iter()
                .map(String::as_str)
                .chain(membership.troubled_states(now_ms).map(|(p, _)| p))
                .chain(refused.iter().map(String::as_str))
                .collect();
            for (id, c) in self.local.iter_mut() {
                if let LocalState::Settling {
                    mark,
                    waiting,
                    deadline_ms,
                    ..
                } = &mut c.state
                {
                    let keep = |p: &str| {
                        settles_with(membership, connected, refused, p, now_ms)
                            && completed.get(p).is_none_or(|&s| s < *mark)
                    };
                    if checked.contains(id) {
                        for p in &relook {
                            if waiting.contains(*p) && !keep(p) {
                                waiting.remove(*p);
                            }
                        }
                        #[cfg(debug_assertions)]
                        assert!(waiting.iter().all(|p| keep(p)), "a waiting peer missed");
                    } else {
                        waiting.retain(|p| keep(p));
                        checked.insert(id.clone());
                    }
                    if waiting.is_empty() {
                        ready.push((id.clone(), true));
                    } else if now_ms >= *deadline_ms {
                        ready.push((id.clone(), false));
                        silent.extend(waiting.iter().cloned());
                    }
                }
            }
            ready
        };
        if ready.is_empty() {
            return;
        }
        if !silent.is_empty() {
            let silent_peers = silent.len();
            let wait = self.settle_backoff.failed(
                silent,
                self.session_mark(),
                now_ms,
                self.settle_timeout(),
                &self.peer,
            );
            tracing::info!(
                wait_ms = wait,
                silent = silent_peers,
                "claims wait for the peers that did not answer (or until they are dead)"
            );
        } else if ready.iter().any(|(_, synced)| *synced) {
            self.settle_backoff.settled();
        }
        let marks = self.settle_marks(&ready);
        let (view, claims) = self.derived();
        for (id, synced) in ready {
            if !synced {
                // An alive peer we could not sync with may hold a competing claim we
                // cannot see: starting could double the work. Give up; retry later.
                tracing::info!(claim = %id, "could not settle in time (an alive peer did not answer); released");
                self.local.remove(&id);
                self.release(
                    &id,
                    ReleaseReason::Unsettled,
                    "could not settle: peers unreachable",
                );
                continue;
            }
            if let Some(epoch) = self.local.get(&id).and_then(|c| c.epoch) {
                self.proposal_settled(id, epoch, now_ms);
                continue;
            }
            let needed = self.local.get(&id).is_some_and(|c| {
                still_needed(&view, &c.story, c.phase, c.round)
                    && view.claims.get(&id).and_then(|f| f.after.as_deref())
                        == built_on(&view, &c.story).as_deref()
            });
            if !needed && !self.cfg.broken_winner_rule {
                // The story moved on (or another result now counts for the step this claim
                // built on) while it settled: its work would start from a stale handoff.
                tracing::info!(claim = %id, "the story moved on while the claim settled; released");
                self.local.remove(&id);
                self.release(
                    &id,
                    ReleaseReason::Unsettled,
                    "the story moved on while the claim settled",
                );
                continue;
            }
            // An operator paused the story, this node or the mesh while the claim
            // settled: the phase must not start (the pause reached this node first).
            let paused = self.local.get(&id).and_then(|c| {
                let s = view.stories.get(c.story.as_str())?;
                s.more
                    .paused
                    .as_deref()
                    .or_else(|| view.steering.node_paused(&self.peer))
                    .map(|p| p.reason.clone())
                    .or_else(|| s.held.then(|| "waits for an approval".to_string()))
            });
            if let Some(why) = paused {
                tracing::info!(claim = %id, %why, "paused by an operator while the claim settled; releasing");
                self.local.remove(&id);
                let note = if why.is_empty() {
                    "paused by an operator before it started".to_string()
                } else {
                    format!("paused by an operator before it started: {why}")
                };
                self.release(&id, ReleaseReason::Unsettled, &note);
                continue;
            }
            // (A claim written from a stale view that ties a finished claim does not
            // hold: a finished claim wins a token tie, see `Claims::winner`.)
            if claims.holds(&id) || self.cfg.broken_winner_rule {
                // Everything the job needs is looked up before the claim is marked
                // running: a claim marked running with no job would hold capacity forever.
                let Some(c) = self.local.get(&id) else {
                    continue;
                };
                let (story, phase, round, claimed_ms) =
                    (c.story.clone(), c.phase, c.round, c.written_ms);
                let (Some(fact), Some(sv)) =
                    (view.claims.get(&id), view.stories.get(story.as_str()))
                else {
                    tracing::error!(claim = %id, %story, "settled claim or its story missing from the view; releasing");
                    self.local.remove(&id);
                    self.release(
                        &id,
                        ReleaseReason::Unsettled,
                        "claim or story missing at settle",
                    );
                    continue;
                };
                let token = Resource::story_round(&story, phase, round)
                    .ok()
                    .and_then(|r| fact.token_of(&r))
                    .unwrap_or(0);
                let files = fact.files();
                if let Some(c) = self.local.get_mut(&id) {
                    c.state = LocalState::Running;
                }
                let handoffs = view.history(&story).into_iter().cloned().collect();
                // The view keeps no story body: the job's prompt and the knowledge chosen
                // for it read it from the document.
                let sv = &self.doc.with_body(sv);
                let knowledge = relevant_knowledge(&view, sv, MAX_JOB_KNOWLEDGE);
                self.runs.push(RunRecord {
                    claim: id.clone(),
                    story: story.clone(),
                    phase,
                    round,
                    token,
                    started_ms: now_ms,
                    claimed_ms,
                });
                tracing::info!(claim = %id, %story, %phase, token, "claim settled; starting work");
                // Implement and rework push work to the origin, even when the job is then
                // cancelled (its push may already be on its way: chaos seed 310).
                if matches!(phase, Phase::Implement | Phase::Rework) {
                    self.pushed.push((story.clone(), id.clone()));
                }
                let detail = if files.is_empty() {
                    format!("token {token}")
                } else {
                    format!("token {token}, locks {}", files.join(", "))
                };
                self.emit(
                    EventKind::PhaseStarted,
                    Some(&story),
                    Some(phase),
                    round,
                    detail,
                );
                self.effects.push_back(Effect::StartWork(Box::new(Job {
                    claim: id,
                    story,
                    display_id: sv.id.to_string(),
                    phase,
                    round,
                    token,
                    attempt: fact.attempt,
                    fact: (*sv.fact).clone(),
                    handoffs,
                    files,
                    knowledge,
                    failures: sv.more.failures.to_vec(),
                    notes: sv.more.notes.iter().map(|n| n.text.clone()).collect(),
                })));
            } else {
                // Info, not debug: a node that keeps losing at settle is a node whose
                // view lags its peers', which an operator wants to see without tracing.
                if let Some(c) = self.local.get(&id) {
                    let shown = view
                        .stories
                        .get(c.story.as_str())
                        .map_or(c.story.as_str(), |s| s.id.as_str());
                    tracing::info!(claim = %id, story = %shown, phase = %c.phase, round = c.round, "lost the claim at settle: another node's claim won; released");
                }
                self.local.remove(&id);
                self.release(&id, ReleaseReason::Unsettled, "another claim won at settle");
            }
        }
        self.record_settles(now_ms, marks);
    }
}
