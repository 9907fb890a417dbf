//! The node's peer transport, as everything above it sees it: authenticated, bi-directional byte
//! streams to peers named by [`PeerId`], tagged with what they carry ([`StreamKind`]).
//!
//! The node (gossip driver, entry routing, HTTP and RPC tunnels) is written against the
//! [`Transport`] trait only, usually as `Arc<dyn Transport>`, so the same code runs over real iroh
//! QUIC ([`iroh::IrohTransport`]) and over the simulator's turmoil network. The trait carries no
//! iroh type; dialing information is opaque text the implementation defines.
//!
//! What an implementation promises:
//! - **identity**: [`Inbound::peer`] is the remote's *authenticated* id (iroh: the TLS-verified
//!   endpoint key), never something the remote claims in-band;
//! - **kinds**: a stream opened with [`Transport::open`] arrives at the peer as
//!   [`TransportEvent::Stream`] with the same kind; liveness checks ([`Transport::ping`]) are
//!   answered inside the transport and never surface as streams;
//! - **connection reuse**: one live connection per peer is cached and shared by every stream to
//!   it (either side may have dialed it); [`Transport::rtt`] reads that connection;
//! - **loss**: when the cached connection to a peer breaks without this node closing it (the
//!   peer crashed, its network went away, it reset), [`TransportEvent::ConnectionLost`] is
//!   reported once. How fast depends on the implementation's keep-alive (iroh: see
//!   [`iroh::IrohConfig`]).

pub mod iroh;

use crate::dial::BoxIo;
use futures::future::BoxFuture;
use mesh_core::PeerId;
use std::fmt;
use std::time::Duration;

/// What a stream carries. Sent as the stream's first byte, so the acceptor can dispatch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamKind {
    /// Gossip frames (`mesh_core::gossip::wire`), one direction per stream: the opener writes.
    Gossip,
    /// HTTP/1.1 tunnelled to the peer's own API (entry → host backend proxy).
    Http,
    /// llama.cpp RPC tunnelled to the peer's `rpc-server` (split host → worker).
    Rpc,
}

impl StreamKind {
    pub const ALL: [StreamKind; 3] = [StreamKind::Gossip, StreamKind::Http, StreamKind::Rpc];

    /// The byte that opens a stream of this kind on the wire.
    pub fn tag(self) -> u8 {
        match self {
            StreamKind::Gossip => b'G',
            StreamKind::Http => b'H',
            StreamKind::Rpc => b'R',
        }
    }

    pub fn from_tag(tag: u8) -> Option<StreamKind> {
        StreamKind::ALL.into_iter().find(|k| k.tag() == tag)
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamKind::Gossip => "gossip",
            StreamKind::Http => "http",
            StreamKind::Rpc => "rpc",
        })
    }
}

/// A stream a peer opened to this node.
pub struct Inbound {
    /// The remote's authenticated identity.
    pub peer: PeerId,
    pub kind: StreamKind,
    /// Read what the peer writes, write back to it. Dropping it closes both directions.
    pub stream: BoxIo,
}

impl fmt::Debug for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound")
            .field("peer", &self.peer)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// What the transport reports, in arrival order.
#[derive(Debug)]
pub enum TransportEvent {
    Stream(Inbound),
    /// The cached connection to this peer broke and was not closed by this node.
    ConnectionLost(PeerId),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("no dialing information for peer {0}: it was never announced or invited")]
    UnknownPeer(PeerId),
    #[error("unusable dialing information: {0}")]
    BadDialInfo(String),
    #[error("dialing information names peer {found}, expected {expected}")]
    DialInfoMismatch { expected: PeerId, found: PeerId },
    #[error("connecting to {peer}: {reason}")]
    Connect { peer: PeerId, reason: String },
    #[error("stream to {peer}: {reason}")]
    Stream { peer: PeerId, reason: String },
    #[error("{peer} did not answer within {timeout:?}")]
    Timeout { peer: PeerId, timeout: Duration },
    #[error("the transport is closed")]
    Closed,
}

/// Message/stream-level access to peers. Object safe: the node holds an `Arc<dyn Transport>`.
pub trait Transport: Send + Sync + 'static {
    /// This node's id: the key the transport authenticates with.
    fn local_id(&self) -> PeerId;

    /// How other nodes reach this one right now (opaque to callers; it goes into this node's
    /// announcement and its invites). May change while running (new addresses, relay choice).
    fn dial_info(&self) -> String;

    /// Remembers how to reach `peer` (from its announcement or an invite). Later information
    /// replaces earlier. Fails on information that does not parse or names another peer.
    fn add_peer(&self, peer: PeerId, dial_info: &str) -> Result<(), TransportError>;

    /// Opens a stream of `kind` to `peer`, over the cached connection or a new one.
    fn open(&self, peer: PeerId, kind: StreamKind) -> BoxFuture<'_, Result<BoxIo, TransportError>>;

    /// The next inbound stream or connection loss; `None` once the transport is closed.
    /// One consumer at a time (the node's dispatcher).
    fn next_event(&self) -> BoxFuture<'_, Option<TransportEvent>>;

    /// Round-trip time on the live connection to `peer`; `None` without one.
    fn rtt(&self, peer: &PeerId) -> Option<Duration>;

    /// Checks that `peer` answers now: connect if needed, one round trip on a fresh stream.
    /// Callers bound it with their own timeout.
    fn ping(&self, peer: PeerId) -> BoxFuture<'_, Result<Duration, TransportError>>;

    /// Closes the connection to `peer` (a refused peer), if any. Not reported as a loss.
    fn disconnect(&self, peer: &PeerId);

    /// Closes every connection and stops accepting.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Round-trip time in whole milliseconds, rounded up so a measured sub-millisecond loopback RTT
/// reads 1, never 0 (0 is a node's RTT to itself).
pub fn rtt_ms(rtt: Duration) -> u32 {
    let ms = rtt.as_micros().div_ceil(1000).max(1);
    u32::try_from(ms).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_tags_round_trip_and_unknown_tags_are_refused() {
        for k in StreamKind::ALL {
            assert_eq!(StreamKind::from_tag(k.tag()), Some(k));
        }
        assert_eq!(StreamKind::from_tag(b'x'), None);
        assert_eq!(StreamKind::from_tag(0), None);
    }

    #[test]
    fn rtt_rounds_up_to_whole_milliseconds() {
        assert_eq!(rtt_ms(Duration::from_micros(180)), 1);
        assert_eq!(rtt_ms(Duration::from_micros(1_001)), 2);
        assert_eq!(rtt_ms(Duration::from_millis(42)), 42);
        assert_eq!(rtt_ms(Duration::ZERO), 1);
    }
}
