//! The probe protocol (membership, docs/DESIGN.md §4): one small request and its answer
//! per probe, both a beat the core encodes. The core times probes out by its own period;
//! only a probe that cannot be delivered (no connection, refused) is reported here.

use super::codec::SyncCodec;
use super::{NetEvent, NetMetrics, MAX_GOSSIP_BYTES};
use libp2p::request_response::{self, OutboundFailure, ProtocolSupport};
use libp2p::StreamProtocol;
use std::sync::Arc;
use std::time::Duration;

pub const PROBE_PROTOCOL: &str = "/mesh-agent/probe/1";

pub(super) type Probe = request_response::Behaviour<SyncCodec>;

pub(super) fn behaviour(metrics: Arc<NetMetrics>) -> Probe {
    request_response::Behaviour::with_codec(
        SyncCodec {
            max: MAX_GOSSIP_BYTES,
            metrics,
        },
        [(StreamProtocol::new(PROBE_PROTOCOL), ProtocolSupport::Full)],
        // Later than the core's own period: an answer this late is still contact.
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(10))
            .with_max_concurrent_streams(4),
    )
}

/// What the node hears of a probe event, if anything.
pub(super) fn event(ev: request_response::Event<Vec<u8>, Vec<u8>>) -> Option<NetEvent> {
    match ev {
        request_response::Event::Message { peer, message, .. } => Some(match message {
            request_response::Message::Request {
                request, channel, ..
            } => NetEvent::Probe {
                peer,
                data: request,
                channel,
            },
            request_response::Message::Response { response, .. } => NetEvent::ProbeAnswer {
                peer,
                data: response,
            },
        }),
        // The core's period decides when silence is a miss.
        request_response::Event::OutboundFailure {
            error: OutboundFailure::Timeout,
            ..
        } => None,
        request_response::Event::OutboundFailure { peer, error, .. } => {
            Some(NetEvent::ProbeFailed {
                peer,
                error: error.to_string(),
            })
        }
        request_response::Event::InboundFailure { peer, error, .. } => {
            tracing::debug!(%peer, %error, "inbound probe failed");
            None
        }
        request_response::Event::ResponseSent { .. } => None,
    }
}
