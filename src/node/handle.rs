//! `NodeHandle`: a running node seen from its owner (the binary, tests): requests to
//! its loop, observations, partitions, shutdown.

use super::*;

/// A running node, in this process.
pub struct NodeHandle {
    pub peer_id: PeerId,
    pub listen_addrs: Vec<Multiaddr>,
    pub(super) observe: watch::Receiver<Observation>,
    pub(super) api: mpsc::Sender<ApiRequest>,
    pub(super) net: NetClient,
    pub(super) task: tokio::task::JoinHandle<()>,
    pub(super) net_task: tokio::task::JoinHandle<()>,
    /// The store's fault switches (None without a store).
    pub(super) faults: Option<Faults>,
}

impl NodeHandle {
    pub fn api(&self) -> mpsc::Sender<ApiRequest> {
        self.api.clone()
    }

    /// A receiver of this node's [`Observation`]s.
    pub fn observe(&self) -> watch::Receiver<Observation> {
        self.observe.clone()
    }

    /// Waits until `cond` holds for this node's observation; `None` if the node stopped.
    pub async fn wait_for(
        &self,
        mut cond: impl FnMut(&Observation) -> bool,
    ) -> Option<Observation> {
        let mut rx = self.observe.clone();
        let r = rx.wait_for(|o| cond(o)).await.ok()?;
        Some(r.clone())
    }

    /// Cuts this node's links to `peers` (a partition, for tests and chaos drills): open
    /// connections close and new ones either way are refused until [`Self::unblock`].
    /// Call it on both sides for a clean cut.
    pub async fn block(&self, peers: &[PeerId]) {
        for p in peers {
            self.net.send(NetCommand::Block(*p, true)).await;
        }
    }

    /// Lets `peers` connect again (the heal of [`Self::block`]); nothing redials by
    /// itself at once, so pair it with [`Self::dial`].
    pub async fn unblock(&self, peers: &[PeerId]) {
        for p in peers {
            self.net.send(NetCommand::Block(*p, false)).await;
        }
    }

    /// Dials an address (a peer's [`Self::addr`]).
    pub async fn dial(&self, addr: Multiaddr) {
        self.net.send(NetCommand::Dial(addr)).await;
    }

    /// A dialable address with the peer id, for bootstrapping others.
    pub fn addr(&self) -> Option<Multiaddr> {
        let a = self.listen_addrs.first()?.clone();
        Some(a.with(libp2p::multiaddr::Protocol::P2p(self.peer_id)))
    }

    pub async fn add_story(&self, s: NewStory) -> Result<StoryView, String> {
        let (tx, rx) = oneshot::channel();
        self.api
            .send(ApiRequest::AddStory(s, tx))
            .await
            .map_err(|_| "node stopped".to_string())?;
        rx.await
            .map_err(|_| "node stopped".to_string())?
            .map_err(|e| e.to_string())
    }

    /// Adds `stories` in one change, all or none (what `story add --from FILE` asks of a
    /// running node); answers them in order.
    pub async fn add_stories(&self, stories: Vec<NewStory>) -> Result<Vec<StoryView>, String> {
        let (tx, rx) = oneshot::channel();
        let batch = crate::intake::StoryBatch {
            stories,
            lines: Vec::new(),
        };
        self.api
            .send(ApiRequest::AddStories(batch, tx))
            .await
            .map_err(|_| "node stopped".to_string())?;
        rx.await
            .map_err(|_| "node stopped".to_string())?
            .map_err(|e| e.to_string())
    }

    /// The fault switches of this node's store (None for a node without one): make its
    /// next append or flush fail, to drill the write path.
    #[doc(hidden)]
    pub fn store_faults(&self) -> Option<Faults> {
        self.faults.clone()
    }

    pub async fn status(&self) -> Option<StatusReport> {
        let (tx, rx) = oneshot::channel();
        self.api.send(ApiRequest::Status(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Freezes the node loop for `d` (as SIGSTOP would): it stops heartbeating, ticking
    /// and syncing; its executor's jobs keep running. Returns at once.
    pub async fn pause(&self, d: Duration) -> Option<()> {
        self.api.send(ApiRequest::Pause(d)).await.ok()
    }

    /// Starts or stops claiming new work (running work continues).
    pub async fn set_work(&self, on: bool) -> Option<()> {
        let (tx, rx) = oneshot::channel();
        self.api.send(ApiRequest::SetWork(on, tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn runs(&self) -> Option<Vec<RunRecord>> {
        let (tx, rx) = oneshot::channel();
        self.api.send(ApiRequest::Runs(tx)).await.ok()?;
        rx.await.ok()
    }

    /// The node's event timeline: `after` 0, the merged history in time order; otherwise
    /// what arrived after that position.
    pub async fn events(&self, after: u64) -> Option<Vec<(u64, Event)>> {
        let (tx, rx) = oneshot::channel();
        self.api.send(ApiRequest::Events(after, tx)).await.ok()?;
        rx.await.ok()
    }

    /// Adds a knowledge entry; returns its id.
    pub async fn add_knowledge(&self, kind: KnowledgeKind, text: &str) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.api
            .send(ApiRequest::AddKnowledge(kind, text.to_string(), tx))
            .await
            .map_err(|_| "node stopped".to_string())?;
        rx.await
            .map_err(|_| "node stopped".to_string())?
            .map_err(|e| e.to_string())
    }

    /// Tests of a hostile member: `act` writes anything into this node's document (raw
    /// values, deletes), which is then persisted and pushed like a local write.
    #[doc(hidden)]
    pub async fn hostile(&self, act: impl FnOnce(&mut Doc) + Send + 'static) -> Option<()> {
        let (tx, rx) = oneshot::channel();
        self.api
            .send(ApiRequest::Hostile(super::HostileWrite(Box::new(act)), tx))
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Writes an operator's sealed roster fact; what it did, in one line.
    pub async fn put_roster(&self, key: &str, sealed: &str) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.api
            .send(ApiRequest::PutRoster(
                key.to_string(),
                sealed.to_string(),
                tx,
            ))
            .await
            .map_err(|_| "node stopped".to_string())?;
        rx.await
            .map_err(|_| "node stopped".to_string())?
            .map_err(|e| e.to_string())
    }

    /// The audit trail (see [`ApiRequest::Log`]).
    pub async fn log(&self, q: LogQuery) -> Option<Result<Vec<AuditEntry>, String>> {
        let (tx, rx) = oneshot::channel();
        self.api.send(ApiRequest::Log(q, tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn view(&self) -> Option<View> {
        let (tx, rx) = oneshot::channel();
        self.api.send(ApiRequest::View(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Stops the node with no goodbye (as a crash would, minus the OS): the tasks are
    /// aborted and this returns once they are gone and the data dir is unlocked.
    pub async fn kill(self) {
        self.task.abort();
        self.net_task.abort();
        let _ = self.task.await;
        let _ = self.net_task.await;
    }

    /// Stops the node cleanly: running jobs cancelled, every claim released (`Shutdown`)
    /// and pushed to the alive peers (waiting at most [`HANDOVER_MAX`] for them to sync
    /// it), every change flushed to disk, then the tasks end.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.api.send(ApiRequest::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
        self.net_task.abort();
        let _ = self.net_task.await;
    }
}
