//! Network events into core inputs: gossip, sync and probe requests and answers (their
//! reply channels kept here until the core answers), connections, and the peers'
//! addresses the node remembers.

use super::runtime::Runtime;
use super::*;

impl Runtime {
    pub(super) async fn on_net(&mut self, ev: NetEvent) {
        if let NetEvent::PeerAddrs { peer, addrs } = ev {
            self.remember(peer, addrs).await;
            return;
        }
        if let NetEvent::SyncRequest { peer, channel, .. } = &ev {
            if !channel.is_open() {
                // The request waited here past `request_timeout` and its sender has
                // given up: answering would cost a walk of the history and reach no one.
                // An overloaded node sheds these first and catches up.
                self.stale_requests += 1;
                if self.stale_requests.is_power_of_two() {
                    tracing::warn!(%peer, dropped = self.stale_requests,
                        "sync requests dropped unanswered: their senders had stopped waiting (this node is behind on its input)");
                }
                return;
            }
        }
        let now = self.now_ms();
        self.core.set_wall(wall_ms());
        let input = match ev {
            NetEvent::Gossip {
                topic: Topic::Heartbeat,
                from,
                data,
            } => Input::Heartbeat {
                from: from.to_string(),
                data,
            },
            NetEvent::Gossip {
                topic: Topic::Events,
                from,
                data,
            } => Input::Event {
                from: from.to_string(),
                data,
            },
            NetEvent::SyncRequest {
                peer,
                data,
                channel,
            } => {
                let reply = self.keep_reply(channel);
                Input::SyncRequest {
                    from: peer.to_string(),
                    data,
                    reply,
                }
            }
            NetEvent::SyncResponse { peer, data } => Input::SyncResponse {
                from: peer.to_string(),
                data,
            },
            NetEvent::SyncFailed { peer, error } => {
                tracing::debug!(%peer, %error, "sync request failed");
                Input::SyncFailed {
                    from: peer.to_string(),
                }
            }
            NetEvent::Probe {
                peer,
                data,
                channel,
            } => {
                let reply = self.keep_reply(channel);
                Input::Probe {
                    from: peer.to_string(),
                    data,
                    reply,
                }
            }
            NetEvent::ProbeAnswer { peer, data } => Input::ProbeAnswer {
                from: peer.to_string(),
                data,
            },
            NetEvent::ProbeFailed { peer, error } => {
                tracing::debug!(%peer, %error, "probe failed");
                Input::ProbeFailed {
                    peer: peer.to_string(),
                }
            }
            NetEvent::Connected(p) => Input::Connected(p.to_string()),
            NetEvent::Disconnected(p) => Input::Disconnected(p.to_string()),
            NetEvent::HandshakeFailed { .. } => {
                self.core.counters_mut().handshake_failures += 1;
                return;
            }
            NetEvent::PeerAddrs { .. } => return,
            NetEvent::Listening(a) => {
                let a = a.to_string();
                if !self.listen_addrs.contains(&a) {
                    self.listen_addrs.push(a);
                }
                return;
            }
        };
        self.core.handle(now, input);
    }

    /// Keeps a request's answer channel (a sync request's or a probe's: the effect that
    /// answers says which) under a new reply id for the core.
    fn keep_reply(&mut self, channel: ResponseChannel<Vec<u8>>) -> u64 {
        let reply = self.next_reply;
        self.next_reply += 1;
        self.replies.insert(reply, channel);
        reply
    }
}
