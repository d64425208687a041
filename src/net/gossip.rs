//! How gossipsub carries heartbeats and events.
//!
//! They go from their author straight to every connected subscriber (flood publish) and
//! are never relayed: the event loop reports every message `Ignore` once it has handed
//! it up, so each receiver checks one copy's signature instead of one per mesh
//! neighbour. Every node already needs a direct connection to each alive peer (sync and
//! settle run over it): a peer's beats come over that connection or not at all, and the
//! events a node missed come back with the next sync's timeline pull (docs/DESIGN.md §4).
//!
//! So the connection is what authenticates a message: its author is the peer at the other
//! end of the noise session it arrived on, and a message whose `from` names anyone else
//! is dropped (`net::handle_behaviour`). Messages carry their author's id but no
//! signature — 66 bytes less per beat and no ed25519 check per message received — and
//! no IHAVE gossip is sent: every subscriber already got the message from its author,
//! and a lost one is repaired by the next probe (it carries the sender's current beat)
//! or sync, not by gossip. Beats are published only when what they say changes
//! (`core::membership`); gossipsub's long-lived streams are also what keeps an idle
//! connection open (no ping runs: probes are the liveness check).

use super::MAX_GOSSIP_BYTES;
use libp2p::gossipsub::{self, ConfigBuilderError, ValidationMode};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The gossipsub configuration every node runs with.
pub(super) fn config() -> Result<gossipsub::Config, ConfigBuilderError> {
    gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_millis(500))
        .flood_publish(true)
        .gossip_lazy(0)
        .gossip_factor(0.0)
        .validate_messages()
        // Author and sequence number, no signature (see above); a signature that is
        // present is still checked, so a message must come as its author sends it.
        .validation_mode(ValidationMode::Permissive)
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
