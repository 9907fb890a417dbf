//! mesh-node's [`Transport`] on turmoil's simulated TCP, shaped like the iroh transport it stands
//! in for:
//!
//! - **identity**: every TCP connection opens with a mutual challenge signed by both nodes'
//!   ed25519 keys (the node key, whose public half is the `PeerId`), so [`Inbound::peer`] is
//!   proven, never claimed;
//! - **connections**: one authenticated connection per peer carries every stream (either side
//!   opens streams on it, each tagged with its [`StreamKind`]), with keep-alive pings every
//!   [`TransportConfig::keep_alive`] that also measure the RTT;
//! - **loss** as QUIC sees it: a connection is lost when nothing has been heard on it for
//!   [`TransportConfig::idle_timeout`] (a crashed or cut-off peer sends nothing — its TCP FIN is
//!   not taken as news, as a killed QUIC endpoint sends no close), or at once when the peer
//!   closes it deliberately. Either way [`TransportEvent::ConnectionLost`] is reported once;
//! - **packet loss** as a reliable transport sees it: each lost packet (drawn per 1,200 bytes
//!   with the link's loss rate from a seeded stream) holds the connection's sending side back for
//!   a retransmission timeout (1.5 RTT + 25 ms), delaying everything behind it, and loses
//!   nothing. Turmoil's own `fail_rate` would drop TCP segments for good and stall the stream.
//!
//! Dialing information is `<peer id hex>@<host>:<port>` (turmoil resolves the host name).

use crate::rng::SimRng;
use bytes::{Buf, Bytes};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use futures::future::BoxFuture;
use mesh_core::PeerId;
use mesh_node::dial::BoxIo;
use mesh_node::transport::{Inbound, StreamKind, Transport, TransportError, TransportEvent};
use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The port every simulated node accepts peer connections on.
pub const PEER_PORT: u16 = 7400;
/// A DATA frame carries at most this much.
const MAX_DATA: usize = 16 * 1024;
/// Bytes per simulated packet (a loss draw each).
const PACKET_BYTES: usize = 1_200;
/// Handshake: `MAGIC | dialer id | expected acceptor id | dialer nonce`, then `acceptor id |
/// acceptor nonce | acceptor signature`, then `dialer signature`.
const MAGIC: &[u8; 4] = b"CMS1";
const ACCEPTOR_DOMAIN: &[u8] = b"closedmesh-sim/handshake/acceptor/v1\0";
const DIALER_DOMAIN: &[u8] = b"closedmesh-sim/handshake/dialer/v1\0";

/// How a node's transport behaves. The defaults are the iroh transport's (see
/// `mesh_node::transport::iroh::IrohConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct TransportConfig {
    pub keep_alive: Duration,
    /// A connection nothing was heard on for this long is lost.
    pub idle_timeout: Duration,
    /// Connecting and authenticating may take this long.
    pub connect_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            keep_alive: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(2_500),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What the transport needs to know of the simulated links: the loss rate and round-trip time
/// between this node and a peer (for retransmission delays).
pub trait Links: Send + Sync + 'static {
    /// `(loss probability, rtt)` of the link to `peer`; `None` for a peer the world does not
    /// know (no delay is applied).
    fn link(&self, to: &PeerId) -> Option<(f64, Duration)>;
}

/// Bytes sent on streams of each kind (DATA payloads), for the report's gossip figures.
#[derive(Debug, Default)]
pub struct Traffic {
    pub gossip_bytes: AtomicU64,
    pub gossip_streams: AtomicU64,
}

/// The transport of one simulated node. Cheap to clone.
#[derive(Clone)]
pub struct SimTransport {
    inner: Arc<Inner>,
}

struct Inner {
    me: PeerId,
    key: SigningKey,
    host: String,
    config: TransportConfig,
    links: Arc<dyn Links>,
    traffic: Arc<Traffic>,
    /// Seeds nonces and each connection's loss draws.
    seed: u64,
    state: Mutex<State>,
    events_tx: Mutex<Option<mpsc::UnboundedSender<TransportEvent>>>,
    events_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<TransportEvent>>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    peers: BTreeMap<PeerId, PeerEntry>,
    next_conn: u64,
    nonces: Option<SimRng>,
    closed: bool,
}

#[derive(Default)]
struct PeerEntry {
    addr: Option<(String, u16)>,
    /// Live connections, the one new streams go on first.
    conns: Vec<Arc<Conn>>,
    dialing: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for SimTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTransport")
            .field("me", &self.inner.me)
            .field("host", &self.inner.host)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimTransport {
    /// Binds [`PEER_PORT`] on the current turmoil host (`host` is its name, for dialing
    /// information) and starts accepting. `secret` is the node key; `seed` drives every draw.
    pub async fn bind(
        host: &str,
        secret: [u8; 32],
        config: TransportConfig,
        links: Arc<dyn Links>,
        traffic: Arc<Traffic>,
        seed: u64,
    ) -> io::Result<SimTransport> {
        let listener = ::turmoil::net::TcpListener::bind(("0.0.0.0", PEER_PORT)).await?;
        let key = SigningKey::from_bytes(&secret);
        let me = PeerId::from_bytes(key.verifying_key().to_bytes());
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            me,
            key,
            host: host.to_string(),
            config,
            links,
            traffic,
            seed,
            state: Mutex::new(State {
                nonces: Some(SimRng::derive(seed, "transport-nonces", 0)),
                ..State::default()
            }),
            events_tx: Mutex::new(Some(tx)),
            events_rx: tokio::sync::Mutex::new(rx),
            accept_task: Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(Arc::downgrade(&inner), listener));
        *lock(&inner.accept_task) = Some(task);
        Ok(SimTransport { inner })
    }

    /// Dialing information of `peer` on turmoil host `host`.
    pub fn dial_info_of(peer: &PeerId, host: &str) -> String {
        format!("{}@{host}:{PEER_PORT}", peer.to_hex())
    }

    /// Peers this node holds a live connection to, with its RTT.
    pub fn connected(&self) -> Vec<(PeerId, Duration)> {
        let state = lock(&self.inner.state);
        state
            .peers
            .iter()
            .filter_map(|(id, p)| p.conns.first().map(|c| (*id, c.rtt())))
            .collect()
    }
}

fn parse_dial_info(info: &str) -> Result<(PeerId, String, u16), TransportError> {
    let bad = || TransportError::BadDialInfo(info.to_string());
    let (id, addr) = info.split_once('@').ok_or_else(bad)?;
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let id: PeerId = id.parse().map_err(|_| bad())?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((id, host.to_string(), port))
}

impl Inner {
    fn emit(&self, event: TransportEvent) {
        if let Some(tx) = lock(&self.events_tx).as_ref() {
            let _ = tx.send(event);
        }
    }

    fn nonce(&self) -> [u8; 32] {
        let mut state = lock(&self.state);
        let rng = state.nonces.as_mut().expect("set at bind");
        let mut n = [0u8; 32];
        for chunk in n.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        n
    }

    fn sign(&self, domain: &[u8], nonce: &[u8; 32], a: &PeerId, b: &PeerId) -> Signature {
        self.key.sign(&transcript(domain, nonce, a, b))
    }

    /// The connection new streams to `peer` go on, dialing one if there is none.
    async fn connection(self: &Arc<Self>, peer: PeerId) -> Result<Arc<Conn>, TransportError> {
        let dialing = {
            let mut state = lock(&self.state);
            if state.closed {
                return Err(TransportError::Closed);
            }
            let entry = state.peers.entry(peer).or_default();
            if let Some(c) = entry.conns.first() {
                return Ok(c.clone());
            }
            entry.dialing.clone()
        };
        let _guard = dialing.lock().await;
        let addr = {
            let mut state = lock(&self.state);
            let entry = state.peers.entry(peer).or_default();
            if let Some(c) = entry.conns.first() {
                return Ok(c.clone());
            }
            entry.addr.clone()
        };
        let Some((host, port)) = addr else {
            return Err(TransportError::UnknownPeer(peer));
        };
        let timeout = self.config.connect_timeout;
        match tokio::time::timeout(timeout, self.dial(peer, &host, port)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(TransportError::Timeout { peer, timeout }),
        }
    }

    async fn dial(
        self: &Arc<Self>,
        peer: PeerId,
        host: &str,
        port: u16,
    ) -> Result<Arc<Conn>, TransportError> {
        let connect_err = |e: io::Error| TransportError::Connect {
            peer,
            reason: e.to_string(),
        };
        let mut tcp = ::turmoil::net::TcpStream::connect((host, port))
            .await
            .map_err(connect_err)?;
        let nonce_d = self.nonce();
        let mut hello = Vec::with_capacity(100);
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(self.me.as_bytes());
        hello.extend_from_slice(peer.as_bytes());
        hello.extend_from_slice(&nonce_d);
        let sent = Instant::now();
        tcp.write_all(&hello).await.map_err(connect_err)?;
        let mut reply = [0u8; 128];
        tcp.read_exact(&mut reply).await.map_err(connect_err)?;
        let rtt = sent.elapsed();
        let acceptor = PeerId::from_bytes(reply[..32].try_into().expect("32 bytes"));
        if acceptor != peer {
            return Err(TransportError::Connect {
                peer,
                reason: format!("the host answered as {acceptor}"),
            });
        }
        let nonce_a: [u8; 32] = reply[32..64].try_into().expect("32 bytes");
        let sig = Signature::from_bytes(reply[64..128].try_into().expect("64 bytes"));
        verify(&peer, ACCEPTOR_DOMAIN, &nonce_d, &self.me, &peer, &sig).map_err(|reason| {
            TransportError::Connect {
                peer,
                reason: format!("the host failed to prove its identity: {reason}"),
            }
        })?;
        let proof = self.sign(DIALER_DOMAIN, &nonce_a, &self.me, &peer);
        tcp.write_all(&proof.to_bytes())
            .await
            .map_err(connect_err)?;
        self.register(peer, tcp, true, rtt)
            .ok_or(TransportError::Closed)
    }

    /// Adds an authenticated connection and starts its tasks; `None` once the transport closed.
    fn register(
        self: &Arc<Self>,
        peer: PeerId,
        tcp: ::turmoil::net::TcpStream,
        dialer: bool,
        rtt: Duration,
    ) -> Option<Arc<Conn>> {
        let mut state = lock(&self.state);
        if state.closed {
            return None;
        }
        let id = state.next_conn;
        state.next_conn += 1;
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Conn {
            id,
            peer,
            out: out_tx,
            streams: Mutex::new(BTreeMap::new()),
            next_stream: AtomicU32::new(if dialer { 1 } else { 2 }),
            rtt: Mutex::new(rtt),
            last_heard: Mutex::new(Instant::now()),
            pings: Mutex::new(BTreeMap::new()),
            next_ping: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            traffic: self.traffic.clone(),
        });
        state
            .peers
            .entry(peer)
            .or_default()
            .conns
            .push(conn.clone());
        drop(state);
        let (read, write) = tcp.into_split();
        let loss_rng = SimRng::derive(self.seed, "transport-loss", id);
        let weak = Arc::downgrade(self);
        let tasks = vec![
            tokio::spawn(reader(weak.clone(), conn.clone(), read)),
            tokio::spawn(writer(weak.clone(), conn.clone(), write, out_rx, loss_rng)),
            tokio::spawn(keep_alive(weak, conn.clone())),
        ];
        *lock(&conn.tasks) = tasks;
        Some(conn)
    }

    /// Ends `conn`: its streams fail, pending pings fail. `lost`: it broke without this node
    /// closing it, so the peer's loss is reported if no other connection to it lives.
    fn teardown(&self, conn: &Arc<Conn>, lost: bool) {
        if conn.dead.swap(true, Ordering::SeqCst) {
            return;
        }
        for (_, slot) in std::mem::take(&mut *lock(&conn.streams)) {
            slot.reset.store(true, Ordering::SeqCst);
            let _ = slot.tx.send(Chunk::Reset);
        }
        lock(&conn.pings).clear();
        let report = {
            let mut state = lock(&self.state);
            match state.peers.get_mut(&conn.peer) {
                Some(entry) => {
                    let was_current = entry.conns.first().is_some_and(|c| c.id == conn.id);
                    entry.conns.retain(|c| c.id != conn.id);
                    lost && was_current && entry.conns.is_empty() && !state.closed
                }
                None => false,
            }
        };
        if report {
            self.emit(TransportEvent::ConnectionLost(conn.peer));
        }
        for task in lock(&conn.tasks).drain(..) {
            task.abort();
        }
    }

    /// Closes `conn` deliberately: the peer hears a CLOSE; no loss is reported here.
    fn close_conn(&self, conn: &Arc<Conn>) {
        if conn.dead.swap(true, Ordering::SeqCst) {
            return;
        }
        // The writer sends the CLOSE, ends the TCP stream and stops; everything else stops now.
        let _ = conn.out.send(Out::Close);
        for (_, slot) in std::mem::take(&mut *lock(&conn.streams)) {
            slot.reset.store(true, Ordering::SeqCst);
            let _ = slot.tx.send(Chunk::Reset);
        }
        lock(&conn.pings).clear();
        if let Some(entry) = lock(&self.state).peers.get_mut(&conn.peer) {
            entry.conns.retain(|c| c.id != conn.id);
        }
        let tasks: Vec<JoinHandle<()>> = lock(&conn.tasks).drain(..).collect();
        for (i, task) in tasks.into_iter().enumerate() {
            if i != WRITER_TASK {
                task.abort();
            }
        }
    }
}

/// Index of the writer among a connection's tasks (reader, writer, keep-alive).
const WRITER_TASK: usize = 1;

fn transcript(domain: &[u8], nonce: &[u8; 32], a: &PeerId, b: &PeerId) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + 96);
    m.extend_from_slice(domain);
    m.extend_from_slice(nonce);
    m.extend_from_slice(a.as_bytes());
    m.extend_from_slice(b.as_bytes());
    m
}

fn verify(
    signer: &PeerId,
    domain: &[u8],
    nonce: &[u8; 32],
    a: &PeerId,
    b: &PeerId,
    sig: &Signature,
) -> Result<(), String> {
    let key = VerifyingKey::from_bytes(signer.as_bytes()).map_err(|e| e.to_string())?;
    key.verify(&transcript(domain, nonce, a, b), sig)
        .map_err(|e| e.to_string())
}

async fn accept_loop(inner: std::sync::Weak<Inner>, listener: ::turmoil::net::TcpListener) {
    loop {
        let Ok((tcp, _addr)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let timeout = strong.config.connect_timeout;
        tokio::spawn(async move {
            if let Ok(Err(e)) = tokio::time::timeout(timeout, accept_one(&strong, tcp)).await {
                tracing::debug!(error = %e, "refused a connection that failed the handshake");
            }
        });
    }
}

async fn accept_one(inner: &Arc<Inner>, mut tcp: ::turmoil::net::TcpStream) -> io::Result<()> {
    let mut hello = [0u8; 100];
    tcp.read_exact(&mut hello).await?;
    if &hello[..4] != MAGIC {
        return Err(io::Error::other("not a mesh connection"));
    }
    let dialer = PeerId::from_bytes(hello[4..36].try_into().expect("32 bytes"));
    let expected = PeerId::from_bytes(hello[36..68].try_into().expect("32 bytes"));
    if expected != inner.me {
        return Err(io::Error::other(format!(
            "the dialer expected {expected}, this is {}",
            inner.me
        )));
    }
    let nonce_d: [u8; 32] = hello[68..100].try_into().expect("32 bytes");
    let nonce_a = inner.nonce();
    let sig = inner.sign(ACCEPTOR_DOMAIN, &nonce_d, &dialer, &inner.me);
    let mut reply = Vec::with_capacity(128);
    reply.extend_from_slice(inner.me.as_bytes());
    reply.extend_from_slice(&nonce_a);
    reply.extend_from_slice(&sig.to_bytes());
    let sent = Instant::now();
    tcp.write_all(&reply).await?;
    let mut proof = [0u8; 64];
    tcp.read_exact(&mut proof).await?;
    let rtt = sent.elapsed();
    let sig = Signature::from_bytes(&proof);
    verify(&dialer, DIALER_DOMAIN, &nonce_a, &dialer, &inner.me, &sig)
        .map_err(|e| io::Error::other(format!("{dialer} failed to prove its identity: {e}")))?;
    inner.register(dialer, tcp, false, rtt);
    Ok(())
}

// ---- connections and their frames ----

const OPEN: u8 = 1;
const DATA: u8 = 2;
const FIN: u8 = 3;
const RESET: u8 = 4;
const PING: u8 = 5;
const PONG: u8 = 6;
const CLOSE: u8 = 7;
const FRAME_HEADER: usize = 9;

fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_HEADER + payload.len());
    f.push(kind);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

enum Out {
    Frame(Vec<u8>),
    Close,
}

/// What a stream's reading side receives.
enum Chunk {
    Data(Bytes),
    Fin,
    Reset,
}

/// A ping in flight: when it left, and who waits for its round trip.
type PendingPing = (Instant, Option<oneshot::Sender<Duration>>);

struct Slot {
    tx: mpsc::UnboundedSender<Chunk>,
    reset: Arc<AtomicBool>,
}

struct Conn {
    id: u64,
    peer: PeerId,
    out: mpsc::UnboundedSender<Out>,
    streams: Mutex<BTreeMap<u32, Slot>>,
    next_stream: AtomicU32,
    rtt: Mutex<Duration>,
    last_heard: Mutex<Instant>,
    pings: Mutex<BTreeMap<u64, PendingPing>>,
    next_ping: AtomicU64,
    dead: AtomicBool,
    /// Reader, writer, keep-alive.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    traffic: Arc<Traffic>,
}

impl Conn {
    fn rtt(&self) -> Duration {
        *lock(&self.rtt)
    }

    fn send(&self, kind: u8, stream: u32, payload: &[u8]) -> bool {
        !self.dead.load(Ordering::SeqCst)
            && self
                .out
                .send(Out::Frame(frame(kind, stream, payload)))
                .is_ok()
    }

    /// A stream slot for `id`, and the stream over it.
    fn stream(self: &Arc<Self>, id: u32, kind: StreamKind) -> SimStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let reset = Arc::new(AtomicBool::new(false));
        let gossip = kind == StreamKind::Gossip;
        lock(&self.streams).insert(
            id,
            Slot {
                tx,
                reset: reset.clone(),
            },
        );
        SimStream {
            id,
            conn: self.clone(),
            rx,
            buf: Bytes::new(),
            read_done: false,
            write_closed: false,
            reset,
            gossip,
        }
    }

    fn ping(&self, reply: Option<oneshot::Sender<Duration>>) -> bool {
        let n = self.next_ping.fetch_add(1, Ordering::SeqCst);
        lock(&self.pings).insert(n, (Instant::now(), reply));
        self.send(PING, 0, &n.to_be_bytes())
    }

    fn heard(&self) {
        *lock(&self.last_heard) = Instant::now();
    }
}

async fn reader(
    inner: std::sync::Weak<Inner>,
    conn: Arc<Conn>,
    mut read: ::turmoil::net::tcp::OwnedReadHalf,
) {
    let mut header = [0u8; FRAME_HEADER];
    loop {
        if read.read_exact(&mut header).await.is_err() {
            // The TCP stream ended without a CLOSE: like a QUIC peer that vanished, this is
            // noticed by the keep-alive when the connection goes quiet.
            return;
        }
        let kind = header[0];
        let stream = u32::from_be_bytes(header[1..5].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(header[5..9].try_into().expect("4 bytes")) as usize;
        let mut payload = vec![0u8; len];
        if read.read_exact(&mut payload).await.is_err() {
            return;
        }
        conn.heard();
        let Some(inner) = inner.upgrade() else {
            return;
        };
        match kind {
            OPEN => {
                let Some(kind) = payload.first().and_then(|&t| StreamKind::from_tag(t)) else {
                    conn.send(RESET, stream, &[]);
                    continue;
                };
                let s = conn.stream(stream, kind);
                if kind == StreamKind::Gossip {
                    conn.traffic.gossip_streams.fetch_add(1, Ordering::Relaxed);
                }
                inner.emit(TransportEvent::Stream(Inbound {
                    peer: conn.peer,
                    kind,
                    stream: Box::new(s),
                }));
            }
            DATA => {
                let delivered = lock(&conn.streams)
                    .get(&stream)
                    .is_some_and(|slot| slot.tx.send(Chunk::Data(Bytes::from(payload))).is_ok());
                if !delivered {
                    lock(&conn.streams).remove(&stream);
                    conn.send(RESET, stream, &[]);
                }
            }
            FIN => {
                if let Some(slot) = lock(&conn.streams).get(&stream) {
                    let _ = slot.tx.send(Chunk::Fin);
                }
            }
            RESET => {
                if let Some(slot) = lock(&conn.streams).remove(&stream) {
                    slot.reset.store(true, Ordering::SeqCst);
                    let _ = slot.tx.send(Chunk::Reset);
                }
            }
            PING => {
                conn.send(PONG, 0, &payload);
            }
            PONG => {
                let n = u64::from_be_bytes(
                    payload
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .unwrap_or([0; 8]),
                );
                if let Some((sent, reply)) = lock(&conn.pings).remove(&n) {
                    let sample = sent.elapsed();
                    {
                        let mut rtt = lock(&conn.rtt);
                        // Smoothed like QUIC's srtt (7/8 old, 1/8 new).
                        *rtt = (*rtt * 7 + sample) / 8;
                    }
                    if let Some(r) = reply {
                        let _ = r.send(sample);
                    }
                }
            }
            CLOSE => {
                inner.teardown(&conn, true);
                return;
            }
            _ => {
                tracing::debug!(peer = %conn.peer, kind, "unknown frame: closing the connection");
                inner.teardown(&conn, true);
                return;
            }
        }
    }
}

async fn writer(
    inner: std::sync::Weak<Inner>,
    conn: Arc<Conn>,
    mut write: ::turmoil::net::tcp::OwnedWriteHalf,
    mut out: mpsc::UnboundedReceiver<Out>,
    mut loss_rng: SimRng,
) {
    let mut broken = false;
    while let Some(item) = out.recv().await {
        match item {
            Out::Frame(f) => {
                if broken {
                    continue;
                }
                let link = inner.upgrade().and_then(|i| i.links.link(&conn.peer));
                if let Some((loss, rtt)) = link
                    && loss > 0.0
                {
                    let packets = f.len().div_ceil(PACKET_BYTES).max(1);
                    let lost = (0..packets).filter(|_| loss_rng.chance(loss)).count() as u32;
                    if lost > 0 {
                        let rto = rtt * 3 / 2 + Duration::from_millis(25);
                        tokio::time::sleep(rto * lost).await;
                    }
                }
                if write.write_all(&f).await.is_err() {
                    // Writes into a dead connection vanish, as packets to a vanished peer do.
                    broken = true;
                }
            }
            Out::Close => {
                let _ = write.write_all(&frame(CLOSE, 0, &[])).await;
                let _ = write.shutdown().await;
                return;
            }
        }
    }
}

async fn keep_alive(inner: std::sync::Weak<Inner>, conn: Arc<Conn>) {
    let (every, idle) = match inner.upgrade() {
        Some(i) => (i.config.keep_alive, i.config.idle_timeout),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let quiet = lock(&conn.last_heard).elapsed();
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if quiet >= idle {
            tracing::debug!(peer = %conn.peer, quiet_ms = quiet.as_millis() as u64, "connection idle: lost");
            inner.teardown(&conn, true);
            return;
        }
        conn.ping(None);
        // Pings nobody answered are forgotten after the idle timeout.
        lock(&conn.pings).retain(|_, (sent, _)| sent.elapsed() < idle);
    }
}

// ---- streams ----

/// One stream over a [`Conn`]: what the peer writes arrives here in order; writes go out as
/// DATA frames; dropping it (or shutting down) sends FIN.
struct SimStream {
    id: u32,
    conn: Arc<Conn>,
    rx: mpsc::UnboundedReceiver<Chunk>,
    buf: Bytes,
    read_done: bool,
    write_closed: bool,
    reset: Arc<AtomicBool>,
    gossip: bool,
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.buf.is_empty() {
                let n = self.buf.len().min(out.remaining());
                out.put_slice(&self.buf[..n]);
                self.buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.read_done {
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Chunk::Data(b))) => self.buf = b,
                Poll::Ready(Some(Chunk::Fin)) => self.read_done = true,
                Poll::Ready(Some(Chunk::Reset)) | Poll::Ready(None) => {
                    self.read_done = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "stream reset",
                    )));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream closed for writing",
            )));
        }
        if self.reset.load(Ordering::SeqCst) || self.conn.dead.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "stream reset",
            )));
        }
        let n = buf.len().min(MAX_DATA);
        if !self.conn.send(DATA, self.id, &buf[..n]) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection closed",
            )));
        }
        if self.gossip {
            self.conn
                .traffic
                .gossip_bytes
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_closed {
            self.write_closed = true;
            self.conn.send(FIN, self.id, &[]);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for SimStream {
    fn drop(&mut self) {
        if !self.write_closed {
            self.conn.send(FIN, self.id, &[]);
        }
        lock(&self.conn.streams).remove(&self.id);
    }
}

// ---- the trait ----

impl Transport for SimTransport {
    fn local_id(&self) -> PeerId {
        self.inner.me
    }

    fn dial_info(&self) -> String {
        Self::dial_info_of(&self.inner.me, &self.inner.host)
    }

    fn add_peer(&self, peer: PeerId, dial_info: &str) -> Result<(), TransportError> {
        let (id, host, port) = parse_dial_info(dial_info)?;
        if id != peer {
            return Err(TransportError::DialInfoMismatch {
                expected: peer,
                found: id,
            });
        }
        lock(&self.inner.state).peers.entry(peer).or_default().addr = Some((host, port));
        Ok(())
    }

    fn open(&self, peer: PeerId, kind: StreamKind) -> BoxFuture<'_, Result<BoxIo, TransportError>> {
        Box::pin(async move {
            let conn = self.inner.connection(peer).await?;
            let id = conn.next_stream.fetch_add(2, Ordering::SeqCst);
            let stream = conn.stream(id, kind);
            if !conn.send(OPEN, id, &[kind.tag()]) {
                return Err(TransportError::Stream {
                    peer,
                    reason: "the connection closed".into(),
                });
            }
            if kind == StreamKind::Gossip {
                conn.traffic.gossip_streams.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Box::new(stream) as BoxIo)
        })
    }

    fn next_event(&self) -> BoxFuture<'_, Option<TransportEvent>> {
        Box::pin(async move { self.inner.events_rx.lock().await.recv().await })
    }

    fn rtt(&self, peer: &PeerId) -> Option<Duration> {
        lock(&self.inner.state)
            .peers
            .get(peer)
            .and_then(|p| p.conns.first().map(|c| c.rtt()))
    }

    fn ping(&self, peer: PeerId) -> BoxFuture<'_, Result<Duration, TransportError>> {
        Box::pin(async move {
            let conn = self.inner.connection(peer).await?;
            let (tx, rx) = oneshot::channel();
            if !conn.ping(Some(tx)) {
                return Err(TransportError::Stream {
                    peer,
                    reason: "the connection closed".into(),
                });
            }
            rx.await.map_err(|_| TransportError::Stream {
                peer,
                reason: "the connection was lost".into(),
            })
        })
    }

    fn disconnect(&self, peer: &PeerId) {
        let conns: Vec<Arc<Conn>> = lock(&self.inner.state)
            .peers
            .get(peer)
            .map(|p| p.conns.clone())
            .unwrap_or_default();
        for c in conns {
            self.inner.close_conn(&c);
        }
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let conns: Vec<Arc<Conn>> = {
                let mut state = lock(&self.inner.state);
                state.closed = true;
                state
                    .peers
                    .values()
                    .flat_map(|p| p.conns.iter().cloned())
                    .collect()
            };
            for c in conns {
                self.inner.close_conn(&c);
            }
            if let Some(t) = lock(&self.inner.accept_task).take() {
                t.abort();
            }
            lock(&self.inner.events_tx).take();
        })
    }
}

#[cfg(test)]
mod tests;
