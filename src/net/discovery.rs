//! Finding the rest of the mesh beyond kademlia's bootstrap: a peer heard of through
//! gossip (its heartbeat relayed by others) but not connected is looked up and dialled,
//! at most every [`LOOKUP_EVERY`] per peer, so a mesh never hangs on one relay.

use super::*;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};

impl EventLoop {
    /// A peer this node hears from through gossip (relayed by others) but has no
    /// connection to: look it up and connect, so the mesh does not hang on one relay.
    /// Kademlia's bootstrap alone can miss a peer that joined a moment later (a 3-node
    /// mesh where 1 and 2 only knew each other through 0 lost both settle paths when 0
    /// stopped), and its periodic bootstrap runs every 30 s.
    pub(super) fn reach(&mut self, peer: PeerId) {
        if peer == *self.swarm.local_peer_id()
            || self.refused.contains(&peer)
            || self.connected.contains(&peer)
            || self.connected.len() >= self.max_peers
        {
            return;
        }
        let now = tokio::time::Instant::now();
        if self
            .lookups
            .get(&peer)
            .is_some_and(|&t| now.duration_since(t) < LOOKUP_EVERY)
        {
            return;
        }
        if self.lookups.len() >= MAX_LOOKUPS {
            self.lookups
                .retain(|_, t| now.duration_since(*t) < LOOKUP_EVERY);
            if self.lookups.len() >= MAX_LOOKUPS {
                return;
            }
        }
        self.lookups.insert(peer, now);
        tracing::debug!(%peer, "heard of a peer without a connection to it; looking it up");
        // Addresses kademlia already has are dialled at once; otherwise the lookup asks
        // the peers we have.
        let _ = self.swarm.dial(
            DialOpts::peer_id(peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build(),
        );
        self.swarm.behaviour_mut().kad.get_closest_peers(peer);
    }

    pub(super) fn dial_found(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if addrs.is_empty()
            || self.connected.contains(&peer)
            || self.connected.len() >= self.max_peers
        {
            return;
        }
        let _ = self.swarm.dial(
            DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build(),
        );
    }
}
