//! The node's event loop: the task that owns the core and the store, reads the clock,
//! turns network events and API requests into core inputs and carries out the core's
//! effects (publish, send, respond, persist, flush before acknowledging).
//!
//! Durable before it leaves: a sync frame carries this node's heads, and a peer takes
//! them as settle evidence ("it holds my claim") and builds on them; a job acts outside
//! the node (a merge lands at the origin under its claim's token). So every change
//! persisted before a frame is sent or a job started is flushed first (the core emits a
//! change's `Persist` before any frame whose heads contain it and before the job it
//! starts); a frame whose changes cannot be made durable is not sent, and such a job
//! fails without starting. Without that, a crash could take back a claim a peer had
//! settled on our word, or one whose merge had landed, and its fencing token could be
//! handed out again (simulator seeds 1577 clean and 2362 hostile).

use super::*;
use crate::core::notify::SendResult;

pub(super) struct Runtime {
    pub(super) core: Core,
    pub(super) cfg: Config,
    pub(super) store: Option<Store>,
    /// The durable event timeline (beside the document in the same store).
    pub(super) event_log: Option<EventLog>,
    pub(super) net: NetClient,
    pub(super) started: Instant,
    pub(super) listen_addrs: Vec<String>,
    pub(super) observe: Option<watch::Sender<Observation>>,
    /// Sync requests and probes to answer, by the reply id the core was given.
    pub(super) replies: HashMap<u64, ResponseChannel<Vec<u8>>>,
    pub(super) next_reply: u64,
    /// Sync requests dropped unanswered: their senders had stopped waiting.
    pub(super) stale_requests: u64,
    pub(super) shell: Arc<WorkShell>,
    pub(super) jobs: HashMap<String, tokio::task::JoinHandle<()>>,
    pub(super) work_tx: mpsc::Sender<(String, Result<Handoff, JobFailure>)>,
    /// Answers to origin probes (`Effect::ProbeOrigin`).
    pub(super) probe_tx: mpsc::Sender<Result<(), String>>,
    /// Where notifications go (none: this node sends none), and how sends end.
    pub(super) sinks: Option<Arc<crate::notify::Sinks>>,
    pub(super) notify_tx: mpsc::Sender<(String, SendResult)>,
    /// Peers this node was connected to (persisted; redialled on the next start).
    pub(super) known: BTreeMap<String, KnownPeer>,
    /// Changes were appended since the last flush: flush before the next sync frame
    /// leaves or job starts.
    pub(super) unflushed: bool,
    /// Changes whose append failed, oldest first: retried before the next sync frame
    /// leaves or job starts, and nothing leaves while any remains.
    pub(super) unpersisted: VecDeque<Vec<u8>>,
}

/// The addresses to redial for remembered peers, each ending in `/p2p/<peer>`.
pub(super) fn dial_addrs(known: &BTreeMap<String, KnownPeer>) -> Vec<Multiaddr> {
    let mut out = Vec::new();
    for p in known.values() {
        let Ok(id) = p.peer.parse::<PeerId>() else {
            continue;
        };
        for a in &p.addrs {
            if let Ok(a) = a.parse::<Multiaddr>() {
                out.push(a.with(libp2p::multiaddr::Protocol::P2p(id)));
            }
        }
    }
    out
}

impl Runtime {
    pub(super) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Publishes the current observation (only when it changed). It runs after every
    /// step the node takes, so it compares in place and allocates only what changed: it
    /// used to build a full status line per peer and clone every list each time, ~15 %
    /// of a node's CPU with 50 processes on one machine.
    pub(super) fn publish_observation(&self) {
        let Some(tx) = &self.observe else { return };
        let now = self.now_ms();
        tx.send_if_modified(|o| self.refresh_observation(o, now));
    }

    /// Brings `o` up to date; whether anything changed.
    fn refresh_observation(&self, o: &mut Observation, now: u64) -> bool {
        let core = &self.core;
        let c = core.counters();
        let mut changed = false;
        macro_rules! set {
            ($field:ident, $value:expr) => {{
                let v = $value;
                if o.$field != v {
                    o.$field = v;
                    changed = true;
                }
            }};
        }
        set!(heads_digest, core.digest());
        set!(connected, core.connected().len());
        set!(handshake_failures, c.handshake_failures);
        set!(closed_on_open, c.closed_on_open);
        set!(sync_sessions_completed, c.sync_sessions_completed);
        set!(heartbeats_received, c.heartbeats_received);
        set!(joined_at_ms, core.joined_at_ms());
        set!(events, core.events_pos());
        changed |= same_or_copy(&mut o.refused, core.refused());
        changed |= same_or_copy(&mut o.connected_peers, core.connected());
        let by_state = |want: PeerState| {
            core.peer_states(now)
                .filter(move |(_, s)| *s == want)
                .map(|(p, _)| p)
        };
        for (list, state) in [
            (&mut o.alive, PeerState::Alive),
            (&mut o.suspect, PeerState::Suspect),
            (&mut o.dead, PeerState::Dead),
        ] {
            if !list.iter().map(String::as_str).eq(by_state(state)) {
                *list = by_state(state).map(str::to_string).collect();
                changed = true;
            }
        }
        changed
    }

    pub(super) async fn run(
        mut self,
        mut net_rx: mpsc::Receiver<NetEvent>,
        mut api_rx: mpsc::Receiver<ApiRequest>,
        mut work_rx: Option<mpsc::Receiver<(String, Result<Handoff, JobFailure>)>>,
        mut probe_rx: mpsc::Receiver<Result<(), String>>,
        mut notify_rx: mpsc::Receiver<(String, SendResult)>,
    ) {
        let hb_period = Duration::from_millis(self.cfg.heartbeat_ms);
        let mut hb = tokio::time::interval(hb_period);
        let mut tick = tokio::time::interval(hb_period / 4);
        let mut ae = tokio::time::interval(Duration::from_millis(self.cfg.anti_entropy_ms));
        for t in [&mut hb, &mut tick, &mut ae] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut stopped: Option<oneshot::Sender<()>> = None;
        let mut released_memory: Option<tokio::time::Instant> = None;
        // A clean shutdown handing claims back: what it waits for, who to answer, until when.
        let mut handover: Option<(Handover, oneshot::Sender<()>, tokio::time::Instant)> = None;
        let Some(mut work_rx) = work_rx.take() else {
            return;
        };
        loop {
            tokio::select! {
                done = work_rx.recv() => if let Some((claim, outcome)) = done {
                    self.jobs.remove(&claim);
                    let now = self.now_ms();
                    self.core.set_wall(wall_ms());
                    self.core.handle(now, Input::WorkFinished { claim, outcome });
                },
                Some((id, result)) = notify_rx.recv() => {
                    let now = self.now_ms();
                    self.core.notify_finished(now, wall_ms(), &id, result, rand::random());
                },
                Some(probed) = probe_rx.recv() => {
                    let now = self.now_ms();
                    self.core.set_wall(wall_ms());
                    self.core.handle(now, Input::OriginProbed(probed));
                },
                ev = net_rx.recv() => match ev {
                    Some(ev) => self.on_net(ev).await,
                    None => break,
                },
                req = api_rx.recv() => match req {
                    Some(ApiRequest::Shutdown(done)) => {
                        if handover.is_some() {
                            // A second request: stop at once.
                            stopped = Some(done);
                            break;
                        }
                        let now = self.now_ms();
                        self.core.set_wall(wall_ms());
                        match self.core.begin_shutdown(now) {
                            Some(h) => {
                                tracing::info!(claims = h.released.len(), peers = h.peers.len(), "stopping: handing claims back");
                                handover = Some((h, done, tokio::time::Instant::now() + HANDOVER_MAX));
                            }
                            None => {
                                stopped = Some(done);
                                break;
                            }
                        }
                    }
                    Some(ApiRequest::Pause(d)) => {
                        tracing::warn!(?d, "node loop paused");
                        tokio::time::sleep(d).await;
                    }
                    Some(req) => self.on_api(req).await,
                    None => break,
                },
                _ = hb.tick() => {
                    let now = self.now_ms();
                    self.core.heartbeat(now, wall_ms());
                }
                _ = tick.tick() => {
                    let now = self.now_ms();
                    for t in self.core.tick(now, wall_ms()) {
                        match t.to {
                            PeerState::Dead => tracing::warn!(peer = %t.peer, "peer is dead"),
                            PeerState::Suspect => tracing::info!(peer = %t.peer, "peer is suspect"),
                            PeerState::Alive => tracing::info!(peer = %t.peer, "peer is alive again"),
                        }
                    }
                    self.send_notifications(now);
                }
                _ = ae.tick() => {
                    let now = self.now_ms();
                    self.core.anti_entropy(now, rand::random());
                    // The first tick is at once: right after the store was loaded.
                    if released_memory.is_none_or(|t| t.elapsed() >= RELEASE_MEMORY_EVERY) {
                        released_memory = Some(tokio::time::Instant::now());
                        tokio::task::spawn_blocking(release_free_memory);
                    }
                }
                _ = sleep_until_handover(handover.as_ref().map(|h| h.2)) => {
                    tracing::warn!("stopping: not every peer synced the released claims in time; they will see them through anti-entropy or expiry");
                    if let Some((_, done, _)) = handover.take() {
                        stopped = Some(done);
                    }
                    break;
                }
            }
            self.drain_effects().await;
            self.publish_observation();
            if handover
                .as_ref()
                .is_some_and(|(h, _, _)| self.core.handed_over(h))
            {
                if let Some((h, done, _)) = handover.take() {
                    tracing::info!(claims = h.released.len(), "claims handed back; stopping");
                    stopped = Some(done);
                }
                break;
            }
        }
        self.drain_effects().await;
        for (_, t) in self.jobs.drain() {
            t.abort();
        }
        self.flush().await;
        // The next start loads one snapshot rather than replaying this run's changes.
        if self.unpersisted.is_empty() {
            self.compact_if(true);
        }
        tracing::info!("node stopped");
        if let Some(done) = stopped {
            let _ = done.send(());
        }
    }

    /// Remembers a peer's listen addresses (persisted, and redialled while alone).
    pub(super) async fn remember(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let Some(store) = &self.store else { return };
        let addrs: Vec<String> = addrs
            .iter()
            .filter(|a| {
                !a.iter()
                    .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
            })
            .map(|a| a.to_string())
            .take(crate::store::MAX_PEER_ADDRS)
            .collect();
        if addrs.is_empty() {
            return;
        }
        let entry = KnownPeer {
            peer: peer.to_string(),
            addrs,
            seen_ms: wall_ms(),
        };
        let changed = self
            .known
            .get(&entry.peer)
            .is_none_or(|k| k.addrs != entry.addrs);
        self.known.insert(entry.peer.clone(), entry);
        if self.known.len() > crate::store::MAX_KNOWN_PEERS {
            if let Some(oldest) = self
                .known
                .values()
                .min_by_key(|k| k.seen_ms)
                .map(|k| k.peer.clone())
            {
                self.known.remove(&oldest);
            }
        }
        let all: Vec<KnownPeer> = self.known.values().cloned().collect();
        if let Err(e) = store.save_known_peers(&all) {
            tracing::warn!(error = %e, "cannot remember peers");
        }
        if changed {
            self.net
                .send(NetCommand::Remember(dial_addrs(&self.known)))
                .await;
        }
    }

    /// Carries out everything the core asked for.
    pub(super) async fn drain_effects(&mut self) {
        while let Some(e) = self.core.poll_effect() {
            match e {
                Effect::Publish { topic, data } => {
                    self.net.send(NetCommand::Publish { topic, data }).await;
                }
                Effect::SendSync { to, data } => match to.parse::<PeerId>() {
                    Ok(peer) => {
                        if self.durable_before_leaving().await {
                            self.net.send(NetCommand::SendSync { peer, data }).await;
                        } else {
                            // The session ends here; the core retries as after any
                            // failed exchange.
                            let now = self.now_ms();
                            self.core.handle(now, Input::SyncFailed { from: to });
                        }
                    }
                    Err(_) => tracing::error!(%to, "core addressed an invalid peer id"),
                },
                Effect::Respond { reply, data } => {
                    if let Some(channel) = self.replies.remove(&reply) {
                        // Not durable: the channel is dropped, and the peer sees a
                        // failed exchange.
                        if self.durable_before_leaving().await {
                            self.net.send(NetCommand::Respond { channel, data }).await;
                        }
                    }
                }
                Effect::Probe { to, data } => match to.parse::<PeerId>() {
                    Ok(peer) => {
                        self.net.send(NetCommand::Probe { peer, data }).await;
                    }
                    Err(_) => tracing::error!(%to, "core addressed an invalid peer id"),
                },
                Effect::ProbeAnswer { reply, data } => {
                    if let Some(channel) = self.replies.remove(&reply) {
                        self.net
                            .send(NetCommand::ProbeAnswer { channel, data })
                            .await;
                    }
                }
                Effect::Discover => {
                    self.net.send(NetCommand::Discover).await;
                }
                Effect::Persist { chunk } => self.persist(&chunk),
                Effect::Rebase(r) => self.rebase(&r),
                Effect::BeginEpoch(s) => self.begin_epoch(&s),
                Effect::LoadPrevious { epoch } => self.load_previous(epoch),
                Effect::PersistEvents { events } => {
                    if let Some(log) = self.event_log.as_mut() {
                        if let Err(e) = log.append(&events) {
                            tracing::error!(error = %e, "cannot persist events");
                        }
                    }
                }
                Effect::StartWork(job) => {
                    let claim = job.claim.clone();
                    if !self.durable_before_leaving().await {
                        // The job would act outside (a merge lands at the origin under
                        // this claim's token) on a claim a crash could take back.
                        let now = self.now_ms();
                        self.core.handle(
                            now,
                            Input::WorkFinished {
                                claim,
                                outcome: Err(JobFailure::Work(
                                    "the store could not make the claim durable; not started"
                                        .into(),
                                )),
                            },
                        );
                        continue;
                    }
                    let fut = self.shell.run(*job);
                    let tx = self.work_tx.clone();
                    let c = claim.clone();
                    let task = tokio::spawn(async move {
                        let outcome = fut.await;
                        let _ = tx.send((c, outcome)).await;
                    });
                    self.jobs.insert(claim, task);
                }
                Effect::CancelWork { claim } => {
                    if let Some(t) = self.jobs.remove(&claim) {
                        t.abort();
                    }
                }
                Effect::DropWorkRefs { story } => self.shell.drop_work_refs_later(story),
                Effect::Refuse { peer, refuse } => match peer.parse::<PeerId>() {
                    Ok(p) => {
                        self.net.send(NetCommand::Refuse(p, refuse)).await;
                    }
                    Err(_) => tracing::error!(%peer, "core refused an invalid peer id"),
                },
                Effect::ProbeOrigin => {
                    let probe = self.shell.probe();
                    let tx = self.probe_tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(probe.await).await;
                    });
                }
            }
        }
    }

    /// Starts a send of every notification the core says this node owns and may send
    /// now; each reports back on `notify_tx` (the core retries or records it).
    fn send_notifications(&mut self, now: u64) {
        let Some(sinks) = &self.sinks else { return };
        for t in self.core.notify_due(now, wall_ms()) {
            let (id, tx) = (t.id.clone(), self.notify_tx.clone());
            let send = sinks.clone().send(t);
            tokio::spawn(async move {
                let _ = tx.send((id, send.await)).await;
            });
        }
    }

    pub(super) async fn on_api(&mut self, req: ApiRequest) {
        match req {
            ApiRequest::AddStory(new, reply) => {
                let wall = wall_ms();
                let res = self
                    .durable_write(|core| core.add_story(&new, wall).map_err(|e| e.to_string()))
                    .await;
                let _ = reply.send(res);
            }
            ApiRequest::AddStories(batch, reply) => {
                let wall = wall_ms();
                let res = self
                    .durable_write(|core| {
                        core.add_stories(&batch.stories, wall)
                            .map_err(|e| batch.describe(&e))
                    })
                    .await;
                let _ = reply.send(res);
            }
            ApiRequest::AddSourced(new, source, reply) => {
                let wall = wall_ms();
                let res = self
                    .durable_write(|core| {
                        core.add_sourced_story(&new, &source, wall)
                            .map_err(|e| e.to_string())
                    })
                    .await;
                let _ = reply.send(res);
            }
            ApiRequest::Status(reply) => {
                let _ = reply.send(self.status());
            }
            ApiRequest::Events(after, reply) => {
                // From the start: the whole merged history; following: what is new.
                let limit = if after == 0 { EVENT_LOG_CAPACITY } else { 1000 };
                let _ = reply.send(self.core.events_after(after, limit));
            }
            ApiRequest::AddKnowledge(kind, text, reply) => {
                let wall = wall_ms();
                let res = self
                    .durable_write(|core| core.add_knowledge(kind, &text, wall))
                    .await;
                let _ = reply.send(res);
            }
            ApiRequest::View(reply) => {
                let _ = reply.send((*self.core.view()).clone());
            }
            ApiRequest::Bodies(keys, reply) => {
                let doc = self.core.doc();
                let bodies = keys
                    .into_iter()
                    .filter_map(|k| doc.story_body(&k).map(|b| (k, b)))
                    .collect();
                let _ = reply.send(bodies);
            }
            ApiRequest::Archived(key, reply) => {
                let ops = self.cfg.operator_set();
                let found = self.store.as_ref().and_then(|s| {
                    super::archived_story(s, self.core.epoch(), &key, &ops)
                        .map_err(|e| tracing::warn!(%key, error = %e, "cannot read the archive"))
                        .ok()
                        .flatten()
                });
                let _ = reply.send(found);
            }
            ApiRequest::Hostile(act, reply) => {
                self.core.hostile_write(act.0);
                let _ = reply.send(());
            }
            ApiRequest::PutRoster(key, sealed, reply) => {
                let res = self
                    .durable_write(|core| core.put_signed(&key, &sealed))
                    .await;
                let _ = reply.send(res);
            }
            ApiRequest::Log(q, reply) => {
                let view = self.core.view();
                let log = self.core.doc().audit(&view, &q);
                let _ = reply.send(log.map_err(|e| e.to_string()));
            }
            ApiRequest::SetWork(on, reply) => {
                let now = self.now_ms();
                self.core.set_work(on, now, wall_ms());
                let _ = reply.send(());
            }
            ApiRequest::Runs(reply) => {
                let _ = reply.send(self.core.runs().to_vec());
            }
            // Handled by the loop itself.
            ApiRequest::Shutdown(_) | ApiRequest::Pause(_) => {}
        }
    }

    pub(super) fn status(&mut self) -> StatusReport {
        let now = self.now_ms();
        // The core's cached view: a status costs no fold of the document.
        let view = self.core.view();
        let claims = view.claims();
        let retired = view.base().map_or(0, |b| b.retired.len());
        let m = &self.net.metrics;
        let mut counters = self.core.counters().clone();
        counters.bytes_in = m.bytes_in.load(Ordering::Relaxed);
        counters.bytes_out = m.bytes_out.load(Ordering::Relaxed);
        counters.sync_bytes_in = m.sync_bytes_in.load(Ordering::Relaxed);
        counters.sync_bytes_out = m.sync_bytes_out.load(Ordering::Relaxed);
        counters.oversized_frames = m.oversized_dropped.load(Ordering::Relaxed);
        let heads = self.core.doc_mut().heads_hex();
        // The store keeps the document's stored size up to date on every write: saving
        // the whole document here made each `status` cost a full serialisation.
        let doc_bytes = self.store.as_ref().map_or(0, Store::doc_bytes);
        let waits = crate::core::scheduler::Waits::new(&view, &claims);
        let stories: Vec<StorySummary> = view
            .stories_ordered()
            .into_iter()
            .map(|s| StorySummary {
                id: s.id.to_string(),
                title: s.fact.title.to_string(),
                status: s.status.as_str().to_string(),
                priority: s.priority,
                waiting: waits.of(&s.key).filter(|w| w.is_open()),
            })
            .collect();
        let held = self.core.held(now);
        let claim_rows = self.core.claim_rows(now);
        let open = stories
            .iter()
            .filter(|s| !matches!(s.status.as_str(), "merged" | "blocked" | "cancelled"))
            .count();
        let ready = stories.iter().any(|s| {
            matches!(
                s.waiting,
                Some(crate::core::scheduler::Waiting::Ready { .. })
            )
        });
        let joining_ms_left = self.core.joining(now);
        StatusReport {
            idle: held.is_empty() && claim_rows.is_empty() && !ready && joining_ms_left.is_none(),
            open,
            epoch: self.core.doc().base().map_or(0, |b| b.epoch),
            other_epoch: self.core.other_epoch_peers(now),
            moving: self.core.is_moving(now),
            epoch_waits_for: self.core.epoch_waits_for().to_vec(),
            peer_id: self.core.peer().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            passive: self.core.is_passive(),
            uptime_ms: now,
            listen_addrs: self.listen_addrs.clone(),
            connected: self.core.connected().len(),
            peers: self.core.peers(now),
            story_counts: view
                .count_by_status()
                .into_iter()
                .map(|(k, v)| match k {
                    crate::core::model::StoryStatus::Merged => {
                        (k.as_str().to_string(), v + retired)
                    }
                    _ => (k.as_str().to_string(), v),
                })
                .collect(),
            retired,
            stories,
            heads,
            heads_digest: hex::encode(&self.core.digest()[..8]),
            doc_bytes,
            doc_cap: self.core.doc().size_cap(),
            store_bytes: self.store.as_ref().map_or(0, |s| s.size_on_disk()),
            counters,
            held,
            claims: claim_rows,
            joining_ms_left,
            joined_at_ms: self.core.joined_at_ms(),
            clock: self.core.clock_skew(),
            origin: self.core.origin_health(now),
            rejected: self
                .core
                .doc()
                .rejected()
                .iter()
                .flat_map(|(author, kinds)| {
                    kinds.iter().map(|(kind, count)| super::RejectedFacts {
                        author: author.clone(),
                        kind: *kind,
                        count: *count,
                    })
                })
                .collect(),
            roster: view.roster.clone(),
            attention: view.attention().len(),
            spend: self.core.spend_status(),
            paused: view
                .steering
                .all
                .iter()
                .map(|s| ("all".to_string(), s.reason.clone()))
                .chain(
                    view.steering
                        .nodes
                        .iter()
                        .map(|(p, s)| (p.clone(), s.reason.clone())),
                )
                .collect(),
            notify: self.core.notify_status(),
        }
    }
}

/// Sleeps until `at`, or forever without one.
pub(super) async fn sleep_until_handover(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Makes `list` hold `set`'s members in order; whether it had to.
fn same_or_copy(list: &mut Vec<String>, set: &BTreeSet<String>) -> bool {
    if list.iter().eq(set.iter()) {
        return false;
    }
    *list = set.iter().cloned().collect();
    true
}
