//! How gossipsub carries heartbeats and events.
//!
//! They go from their author straight to every connected subscriber (flood publish) and
//! are never relayed: the event loop reports every message `Ignore` once it has handed
//! it up, so each receiver checks one copy's signature instead of one per mesh
//! neighbour, and IHAVE gossip advertises only a node's own messages. Every node already
//! needs a direct connection to each alive peer (sync and settle run over it): a peer's
//! beats come over that connection or not at all, and the events a node missed come
//! back with the next sync's timeline pull (docs/DESIGN.md §4).

use super::MAX_GOSSIP_BYTES;
use libp2p::gossipsub::{self, ConfigBuilderError, ValidationMode};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The gossipsub configuration every node runs with.
pub(super) fn config() -> Result<gossipsub::Config, ConfigBuilderError> {
    gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(500))
        .flood_publish(true)
        .validate_messages()
        .validation_mode(ValidationMode::Strict)
        .max_transmit_size(MAX_GOSSIP_BYTES)
        .message_id_fn(message_id)
        .build()
}

/// 20 bytes of SHA-256 over the author and the payload.
fn message_id(m: &gossipsub::Message) -> gossipsub::MessageId {
    let mut h = Sha256::new();
    h.update(m.source.map(|p| p.to_bytes()).unwrap_or_default());
    h.update(&m.data);
    gossipsub::MessageId::from(h.finalize()[..20].to_vec())
}
