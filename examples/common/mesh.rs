//! Starting an in-process mesh and waiting for it to form, shared by the benchmark
//! examples (each includes this file with `#[path]`; not every example uses every
//! helper).
#![allow(dead_code)]

use futures::future::join_all;
use mesh_agent::node::{self, NodeHandle, NodeOptions};
use std::time::{Duration, Instant};

/// Starts `n` nodes: node 0 first, then every other one with node 0's address as its
/// bootstrap peer. `options(i, bootstrap)` builds node i's options.
pub async fn start_nodes(
    n: usize,
    mut options: impl FnMut(usize, Option<String>) -> anyhow::Result<NodeOptions>,
) -> anyhow::Result<Vec<NodeHandle>> {
    let mut nodes: Vec<NodeHandle> = Vec::with_capacity(n);
    for i in 0..n {
        let boot = match nodes.first() {
            None => None,
            Some(first) => Some(
                first
                    .addr()
                    .ok_or_else(|| anyhow::anyhow!("node 0 has no listen address"))?
                    .to_string(),
            ),
        };
        nodes.push(node::start(options(i, boot)?).await?);
    }
    Ok(nodes)
}

/// Waits until every node sees all the others alive; false if `deadline` passes first.
pub async fn wait_alive(nodes: &[NodeHandle], deadline: Instant) -> bool {
    let n = nodes.len();
    let r = join_all(nodes.iter().map(|h| {
        tokio::time::timeout_at(deadline.into(), h.wait_for(move |o| o.alive.len() >= n - 1))
    }))
    .await;
    r.iter().all(|x| matches!(x, Ok(Some(_))))
}

/// Waits until every node's heads digest is the same (checked in one stable pass); false
/// if `deadline` passes first.
pub async fn wait_same_doc(nodes: &[NodeHandle], deadline: Instant) -> bool {
    while Instant::now() < deadline {
        let target = nodes[0].observe().borrow().heads_digest;
        let step = (Instant::now() + Duration::from_millis(500)).min(deadline);
        let r = join_all(nodes.iter().map(|h| {
            tokio::time::timeout_at(step.into(), h.wait_for(move |o| o.heads_digest == target))
        }))
        .await;
        let same = r.iter().all(|x| matches!(x, Ok(Some(_))));
        if same && nodes[0].observe().borrow().heads_digest == target {
            return true;
        }
    }
    false
}
