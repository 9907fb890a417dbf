//! [`Transport`] over iroh QUIC: the node's persisted Ed25519 key is its iroh endpoint key (so the
//! authenticated remote endpoint id *is* the peer's [`PeerId`]), ALPN `closedmesh/1`, relays per
//! `--relay`, and direct addresses always (relays disabled works on loopback and LANs).
//!
//! Dialing information is the endpoint's `EndpointAddr` as JSON: its id, its direct socket
//! addresses and its relay URL, when it has one.
//!
//! Failure detection: connections send keep-alives every [`IrohConfig::keep_alive`] and time out
//! after [`IrohConfig::idle_timeout`] without hearing from the peer, which is what turns a
//! `kill -9`'d peer into [`TransportEvent::ConnectionLost`] within seconds (QUIC's default is 30 s
//! and the original needed ~41 s to drop such a peer).

use super::{Inbound, StreamKind, Transport, TransportError, TransportEvent};
use crate::config::RelayMode;
use crate::dial::BoxIo;
use ::iroh::endpoint::{Connection, ConnectionError, IdleTimeout, QuicTransportConfig, presets};
use ::iroh::{Endpoint, EndpointAddr, PublicKey, RelayUrl, SecretKey};
use futures::future::BoxFuture;
use mesh_core::PeerId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The one application protocol this node speaks.
pub const ALPN: &[u8] = b"closedmesh/1";
/// The first byte of a liveness check stream (answered by the transport itself).
const PING_TAG: u8 = b'P';
/// Inbound stream events queued for the node before accepting more streams waits.
const EVENT_QUEUE: usize = 1024;
/// A peer that opens a stream must name its kind within this long.
const TAG_TIMEOUT: Duration = Duration::from_secs(10);
/// Application close codes.
const CLOSE_REFUSED: u32 = 1;
const CLOSE_SHUTDOWN: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrohConfig {
    pub relay: RelayMode,
    /// Keep-alive period of every connection.
    pub keep_alive: Duration,
    /// A connection that hears nothing for this long is dead (the smaller of both sides' wins).
    pub idle_timeout: Duration,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
}

impl Default for IrohConfig {
    fn default() -> Self {
        IrohConfig {
            relay: RelayMode::Default,
            // Five keep-alives per idle timeout: one lost packet never kills a connection, and a
            // crashed peer is noticed 2.5 s after its last packet (the goal: out of every
            // router's targets within 5 s).
            keep_alive: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(2_500),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl IrohConfig {
    pub fn with_relay(relay: RelayMode) -> Self {
        IrohConfig {
            relay,
            ..IrohConfig::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("relay URL {0:?} does not parse: {1}")]
    RelayUrl(String, String),
    #[error("idle timeout {0:?} is out of range")]
    IdleTimeout(Duration),
    #[error("binding the iroh endpoint: {0}")]
    Bind(String),
}

/// The iroh endpoint and its connection cache. Cheap to clone.
#[derive(Clone)]
pub struct IrohTransport {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    id: PeerId,
    config: IrohConfig,
    state: Mutex<ConnState>,
    events_tx: mpsc::Sender<TransportEvent>,
    events_rx: tokio::sync::Mutex<mpsc::Receiver<TransportEvent>>,
    /// Ping nonces: they only pair an echo with its ping.
    pings: AtomicU64,
}

#[derive(Default)]
struct ConnState {
    /// The live connection per peer (the newest, whichever side dialed it).
    conns: HashMap<PeerId, Connection>,
    /// Dialing information per peer.
    addrs: HashMap<PeerId, EndpointAddr>,
    /// One dial at a time per peer: concurrent openers wait for it and share its connection.
    dialing: HashMap<PeerId, Arc<tokio::sync::Mutex<()>>>,
}

impl std::fmt::Debug for IrohTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrohTransport")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

fn peer_of(key: &PublicKey) -> PeerId {
    PeerId::from_bytes(*key.as_bytes())
}

impl IrohTransport {
    /// Binds an endpoint with this node's 32-byte secret key and starts accepting.
    pub async fn bind(secret: [u8; 32], config: IrohConfig) -> Result<IrohTransport, BindError> {
        let quic = QuicTransportConfig::builder()
            .keep_alive_interval(config.keep_alive)
            .default_path_keep_alive_interval(config.keep_alive)
            .max_idle_timeout(Some(
                IdleTimeout::try_from(config.idle_timeout)
                    .map_err(|_| BindError::IdleTimeout(config.idle_timeout))?,
            ))
            .default_path_max_idle_timeout(config.idle_timeout)
            .build();
        let builder = match &config.relay {
            // n0's relays and its DNS address lookup: reachable from anywhere.
            RelayMode::Default => Endpoint::builder(presets::N0),
            // Direct addresses only: no relay, no DNS lookup, nothing leaves the LAN.
            RelayMode::Disabled => {
                Endpoint::builder(presets::Minimal).relay_mode(::iroh::RelayMode::Disabled)
            }
            RelayMode::Url(url) => {
                let url: RelayUrl = url
                    .parse()
                    .map_err(|e| BindError::RelayUrl(url.clone(), format!("{e}")))?;
                Endpoint::builder(presets::Minimal).relay_mode(::iroh::RelayMode::custom([url]))
            }
        };
        let endpoint = builder
            .secret_key(SecretKey::from_bytes(&secret))
            .alpns(vec![ALPN.to_vec()])
            .transport_config(quic)
            .bind()
            .await
            .map_err(|e| BindError::Bind(format!("{e:#}")))?;
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let inner = Arc::new(Inner {
            id: peer_of(&endpoint.id()),
            endpoint,
            config,
            state: Mutex::default(),
            events_tx,
            events_rx: tokio::sync::Mutex::new(events_rx),
            pings: AtomicU64::new(0),
        });
        tokio::spawn(accept_loop(inner.clone()));
        Ok(IrohTransport { inner })
    }

    /// Binds the node's endpoint. With relays enabled it waits (up to 10 s) for a home relay, so
    /// the dialing information the node publishes and puts in its invites names one.
    pub async fn bind_node(secret: [u8; 32], relay: RelayMode) -> Result<IrohTransport, BindError> {
        let t = IrohTransport::bind(secret, IrohConfig::with_relay(relay.clone())).await?;
        if relay != RelayMode::Disabled
            && tokio::time::timeout(Duration::from_secs(10), t.online())
                .await
                .is_err()
        {
            tracing::warn!(
                "no relay reachable within 10 s: this node is dialable on its direct addresses only"
            );
        }
        Ok(t)
    }

    /// The endpoint's current address.
    pub fn addr(&self) -> EndpointAddr {
        self.inner.endpoint.addr()
    }

    /// Waits until the endpoint has a home relay (only meaningful with relays enabled).
    pub async fn online(&self) {
        self.inner.endpoint.online().await;
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => register(&inner, conn),
                Err(e) => tracing::debug!(error = %e, "incoming connection failed"),
            }
        });
    }
}

/// Caches `conn` as the connection to its peer and serves the streams the peer opens on it.
fn register(inner: &Arc<Inner>, conn: Connection) {
    let peer = peer_of(&conn.remote_id());
    if let Some(old) = inner.lock().conns.insert(peer, conn.clone())
        && old.stable_id() != conn.stable_id()
    {
        tracing::debug!(%peer, "replaced the cached connection with a newer one");
    }
    tokio::spawn(serve_connection(inner.clone(), peer, conn));
}

async fn serve_connection(inner: Arc<Inner>, peer: PeerId, conn: Connection) {
    let reason = loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(inner.clone(), peer, send, recv));
            }
            Err(e) => break e,
        }
    };
    let cached = {
        let mut state = inner.lock();
        let cached = state
            .conns
            .get(&peer)
            .is_some_and(|c| c.stable_id() == conn.stable_id());
        if cached {
            state.conns.remove(&peer);
        }
        cached
    };
    let ours = matches!(reason, ConnectionError::LocallyClosed);
    tracing::debug!(%peer, cached, %reason, "connection closed");
    if cached && !ours {
        let _ = inner
            .events_tx
            .send(TransportEvent::ConnectionLost(peer))
            .await;
    }
}

async fn serve_stream(
    inner: Arc<Inner>,
    peer: PeerId,
    mut send: ::iroh::endpoint::SendStream,
    mut recv: ::iroh::endpoint::RecvStream,
) {
    let tag = match tokio::time::timeout(TAG_TIMEOUT, recv.read_u8()).await {
        Ok(Ok(tag)) => tag,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "stream closed before naming its kind");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "stream named no kind in time");
            return;
        }
    };
    if tag == PING_TAG {
        let mut nonce = [0u8; 8];
        if recv.read_exact(&mut nonce).await.is_ok() && send.write_all(&nonce).await.is_ok() {
            let _ = send.finish();
        }
        return;
    }
    let Some(kind) = StreamKind::from_tag(tag) else {
        tracing::warn!(%peer, tag, "refused a stream of unknown kind");
        return;
    };
    let stream: BoxIo = Box::new(tokio::io::join(recv, send));
    let _ = inner
        .events_tx
        .send(TransportEvent::Stream(Inbound { peer, kind, stream }))
        .await;
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        // Every critical section is a map operation: a poisoned map is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self, peer: &PeerId) -> Option<Connection> {
        self.lock()
            .conns
            .get(peer)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// The live connection to `peer`, dialing it if there is none.
    async fn connection(self: &Arc<Self>, peer: PeerId) -> Result<Connection, TransportError> {
        if peer == self.id {
            return Err(TransportError::Connect {
                peer,
                reason: "a node does not dial itself".into(),
            });
        }
        if let Some(c) = self.cached(&peer) {
            return Ok(c);
        }
        let guard = self.lock().dialing.entry(peer).or_default().clone();
        let _dialing = guard.lock().await;
        if let Some(c) = self.cached(&peer) {
            return Ok(c);
        }
        let addr = match (self.lock().addrs.get(&peer).cloned(), &self.config.relay) {
            (Some(a), _) => a,
            // With relays and address lookup, the id alone may be enough.
            (None, RelayMode::Default) => {
                EndpointAddr::new(PublicKey::from_bytes(peer.as_bytes()).map_err(|e| {
                    TransportError::Connect {
                        peer,
                        reason: format!("not an Ed25519 public key: {e}"),
                    }
                })?)
            }
            (None, _) => return Err(TransportError::UnknownPeer(peer)),
        };
        let timeout = self.config.connect_timeout;
        let conn = match tokio::time::timeout(timeout, self.endpoint.connect(addr, ALPN)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(TransportError::Connect {
                    peer,
                    reason: format!("{e:#}"),
                });
            }
            Err(_) => return Err(TransportError::Timeout { peer, timeout }),
        };
        register(self, conn.clone());
        Ok(conn)
    }

    async fn open_bi(
        self: &Arc<Self>,
        peer: PeerId,
    ) -> Result<(::iroh::endpoint::SendStream, ::iroh::endpoint::RecvStream), TransportError> {
        // A cached connection may have died without our noticing yet: one fresh dial then.
        for attempt in 0..2 {
            let conn = self.connection(peer).await?;
            match conn.open_bi().await {
                Ok(pair) => return Ok(pair),
                Err(e) if attempt == 0 => {
                    tracing::debug!(%peer, error = %e, "cached connection unusable; redialing");
                    let mut state = self.lock();
                    if state
                        .conns
                        .get(&peer)
                        .is_some_and(|c| c.stable_id() == conn.stable_id())
                    {
                        state.conns.remove(&peer);
                    }
                }
                Err(e) => {
                    return Err(TransportError::Stream {
                        peer,
                        reason: e.to_string(),
                    });
                }
            }
        }
        unreachable!("the second attempt returns")
    }
}

impl Transport for IrohTransport {
    fn local_id(&self) -> PeerId {
        self.inner.id
    }

    fn dial_info(&self) -> String {
        let mut addr = self.inner.endpoint.addr();
        if addr.ip_addrs().next().is_none() {
            // No interface but loopback: still dialable from this machine.
            let loopback = self
                .inner
                .endpoint
                .bound_sockets()
                .into_iter()
                .filter(|s| s.ip().is_unspecified())
                .map(|s| std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), s.port()))
                .next();
            if let Some(l) = loopback {
                addr = addr.with_ip_addr(l);
            }
        }
        serde_json::to_string(&addr).expect("an EndpointAddr serializes to JSON")
    }

    fn add_peer(&self, peer: PeerId, dial_info: &str) -> Result<(), TransportError> {
        let addr: EndpointAddr = serde_json::from_str(dial_info).map_err(|e| {
            TransportError::BadDialInfo(format!("not an iroh endpoint address: {e}"))
        })?;
        let found = peer_of(&addr.id);
        if found != peer {
            return Err(TransportError::DialInfoMismatch {
                expected: peer,
                found,
            });
        }
        self.inner.lock().addrs.insert(peer, addr);
        Ok(())
    }

    fn open(&self, peer: PeerId, kind: StreamKind) -> BoxFuture<'_, Result<BoxIo, TransportError>> {
        Box::pin(async move {
            let (mut send, recv) = self.inner.open_bi(peer).await?;
            // QUIC announces a stream with its first bytes: the kind goes out at once.
            send.write_all(&[kind.tag()])
                .await
                .map_err(|e| stream_err(peer, e))?;
            Ok(Box::new(tokio::io::join(recv, send)) as BoxIo)
        })
    }

    fn next_event(&self) -> BoxFuture<'_, Option<TransportEvent>> {
        Box::pin(async move { self.inner.events_rx.lock().await.recv().await })
    }

    fn rtt(&self, peer: &PeerId) -> Option<Duration> {
        let conn = self.inner.cached(peer)?;
        let paths = conn.paths();
        paths
            .iter()
            .find(|p| p.is_selected())
            .or_else(|| paths.iter().next())
            .map(|p| p.rtt())
    }

    fn ping(&self, peer: PeerId) -> BoxFuture<'_, Result<Duration, TransportError>> {
        Box::pin(async move {
            let (mut send, mut recv) = self.inner.open_bi(peer).await?;
            let started = Instant::now();
            let nonce = self
                .inner
                .pings
                .fetch_add(1, Ordering::Relaxed)
                .to_be_bytes();
            let mut msg = [0u8; 9];
            msg[0] = PING_TAG;
            msg[1..].copy_from_slice(&nonce);
            send.write_all(&msg)
                .await
                .map_err(|e| stream_err(peer, e))?;
            let mut echo = [0u8; 8];
            recv.read_exact(&mut echo)
                .await
                .map_err(|e| stream_err(peer, e))?;
            if echo != nonce {
                return Err(TransportError::Stream {
                    peer,
                    reason: "ping answered with the wrong nonce".into(),
                });
            }
            let _ = send.finish();
            Ok(started.elapsed())
        })
    }

    fn disconnect(&self, peer: &PeerId) {
        if let Some(conn) = self.inner.lock().conns.remove(peer) {
            conn.close(CLOSE_REFUSED.into(), b"refused");
        }
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let conns: Vec<Connection> = self.inner.lock().conns.drain().map(|(_, c)| c).collect();
            for c in conns {
                c.close(CLOSE_SHUTDOWN.into(), b"shutdown");
            }
            self.inner.endpoint.close().await;
        })
    }
}

fn stream_err(peer: PeerId, e: impl std::fmt::Display) -> TransportError {
    TransportError::Stream {
        peer,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn node(seed: u8) -> IrohTransport {
        IrohTransport::bind([seed; 32], IrohConfig::with_relay(RelayMode::Disabled))
            .await
            .unwrap()
    }

    async fn next_stream(t: &IrohTransport) -> Inbound {
        match tokio::time::timeout(Duration::from_secs(10), t.next_event())
            .await
            .expect("an event within 10 s")
            .expect("transport open")
        {
            TransportEvent::Stream(s) => s,
            TransportEvent::ConnectionLost(p) => panic!("unexpected loss of {p}"),
        }
    }

    #[tokio::test]
    async fn streams_arrive_with_their_kind_and_the_authenticated_peer_id() {
        let (a, b) = (node(1).await, node(2).await);
        eprintln!("b dial info: {}", b.dial_info());
        a.add_peer(b.local_id(), &b.dial_info()).unwrap();
        let mut s = a.open(b.local_id(), StreamKind::Http).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut inbound = next_stream(&b).await;
        assert_eq!(inbound.peer, a.local_id());
        assert_eq!(inbound.kind, StreamKind::Http);
        let mut buf = [0u8; 5];
        inbound.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        inbound.stream.write_all(b"back").await.unwrap();
        inbound.stream.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"back");
        // Both sides now share one connection: RTT is known either way, and b reaches a without
        // ever being told a's address.
        assert!(a.rtt(&b.local_id()).is_some());
        assert!(b.rtt(&a.local_id()).is_some());
        let rtt = b.ping(a.local_id()).await.unwrap();
        assert!(rtt < Duration::from_secs(1), "{rtt:?}");
    }

    #[tokio::test]
    async fn a_connection_proves_the_identity_its_dial_info_names() {
        let (a, b, c) = (node(1).await, node(2).await, node(3).await);
        // Dialing information that names another key than the peer it is for is refused...
        assert_eq!(
            a.add_peer(c.local_id(), &b.dial_info()),
            Err(TransportError::DialInfoMismatch {
                expected: c.local_id(),
                found: b.local_id(),
            })
        );
        // ...and an address that leads to someone else fails the handshake: b cannot answer
        // for c's key.
        let mut forged = b.addr();
        forged.id = PublicKey::from_bytes(c.local_id().as_bytes()).unwrap();
        a.add_peer(c.local_id(), &serde_json::to_string(&forged).unwrap())
            .unwrap();
        let err = a.open(c.local_id(), StreamKind::Gossip).await.err();
        assert!(
            matches!(
                err,
                Some(TransportError::Connect { .. } | TransportError::Timeout { .. })
            ),
            "{err:?}"
        );
        // Without any dialing information (relays disabled), there is nothing to dial.
        let d = node(4).await;
        assert_eq!(
            a.open(d.local_id(), StreamKind::Http).await.err(),
            Some(TransportError::UnknownPeer(d.local_id()))
        );
    }

    #[tokio::test]
    async fn a_peer_that_goes_away_is_reported_lost_and_stops_answering_pings() {
        let (a, b) = (node(5).await, node(6).await);
        a.add_peer(b.local_id(), &b.dial_info()).unwrap();
        a.ping(b.local_id()).await.unwrap();
        assert!(a.rtt(&b.local_id()).is_some());
        b.close().await;
        let lost = tokio::time::timeout(Duration::from_secs(10), a.next_event())
            .await
            .expect("loss reported within 10 s");
        assert!(
            matches!(lost, Some(TransportEvent::ConnectionLost(p)) if p == b.local_id()),
            "{lost:?}"
        );
        assert_eq!(a.rtt(&b.local_id()), None);
        let ping = tokio::time::timeout(Duration::from_secs(2), a.ping(b.local_id())).await;
        assert!(
            !matches!(ping, Ok(Ok(_))),
            "a closed peer answered: {ping:?}"
        );
    }

    #[tokio::test]
    async fn disconnecting_a_peer_is_not_reported_as_a_loss() {
        let (a, b) = (node(7).await, node(8).await);
        a.add_peer(b.local_id(), &b.dial_info()).unwrap();
        a.ping(b.local_id()).await.unwrap();
        a.disconnect(&b.local_id());
        assert_eq!(a.rtt(&b.local_id()), None);
        let ev = tokio::time::timeout(Duration::from_millis(500), a.next_event()).await;
        assert!(ev.is_err(), "unexpected event {ev:?}");
    }
}
