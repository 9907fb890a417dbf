//! HTTP over the mesh: an entry reaches a host's own API through a transport stream.
//!
//! - Entry side: [`PeerDialer`] is a [`Dial`] whose byte stream is a [`StreamKind::Http`]
//!   stream to the peer, so the unchanged chat proxy (HTTP/1.1 client, timing, samples) runs
//!   over the mesh exactly as it runs over loopback TCP to llama-server.
//! - Host side: [`TunnelListener`] is an `axum::serve::Listener` over the HTTP streams members
//!   open to this node ([`crate::mesh::MeshStreams::http`]); the host serves its own API router
//!   on it with [`crate::http_serve::serve`], so tunnelled chats hit the same backend proxy and
//!   record the same through-mesh samples as direct ones. Each request carries
//!   `ConnectInfo<PeerId>`: the authenticated caller.

use crate::dial::{BoxIo, Dial, Upstream};
use crate::transport::{Inbound, StreamKind, Transport};
use futures::future::BoxFuture;
use mesh_core::PeerId;
use std::io;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Opens HTTP tunnel streams to one peer.
pub struct PeerDialer {
    pub transport: Arc<dyn Transport>,
    pub peer: PeerId,
}

impl Dial for PeerDialer {
    fn dial(&self) -> BoxFuture<'static, io::Result<BoxIo>> {
        let transport = self.transport.clone();
        let peer = self.peer;
        Box::pin(async move {
            transport
                .open(peer, StreamKind::Http)
                .await
                .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e))
        })
    }

    fn authority(&self) -> String {
        format!("{}.closedmesh", self.peer.short())
    }
}

/// The upstream for a chat routed to `peer`: its API, through the mesh. No key: the transport
/// authenticates this node, and the host admits only members.
pub fn peer_upstream(transport: Arc<dyn Transport>, peer: PeerId) -> Upstream {
    Upstream::new(Arc::new(PeerDialer { transport, peer }), None)
}

/// HTTP tunnel streams as connections for `axum::serve` / [`crate::http_serve::serve`].
pub struct TunnelListener {
    streams: mpsc::Receiver<Inbound>,
    me: PeerId,
}

impl TunnelListener {
    pub fn new(streams: mpsc::Receiver<Inbound>, me: PeerId) -> Self {
        TunnelListener { streams, me }
    }
}

impl axum::serve::Listener for TunnelListener {
    type Io = BoxIo;
    type Addr = PeerId;

    async fn accept(&mut self) -> (BoxIo, PeerId) {
        match self.streams.recv().await {
            Some(inbound) => (inbound.stream, inbound.peer),
            // The mesh stopped: nothing more will arrive; the server ends on its shutdown signal.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<PeerId> {
        Ok(self.me)
    }
}
