//! The gossip driver: a thin loop around mesh-core's gossip [`State`] (see the shell contract in
//! `mesh_core::gossip`'s module docs). It feeds the machine every inbound frame with the
//! *transport's* authenticated peer id as `from`, its timers, probe results and connection
//! losses, and performs what the machine outputs: frames written on per-peer gossip streams,
//! dials, direct pings for probes, and events as log lines. It decides nothing itself.
//!
//! Everything runs over `Arc<dyn Transport>` and the node's [`Clock`], so the simulator drives
//! the same code over its own network.

use crate::clock::Clock;
use crate::dial::BoxIo;
use crate::transport::{StreamKind, Transport, rtt_ms};
use mesh_core::gossip::wire::{self, DecodeError, HEADER_LEN, Message};
use mesh_core::gossip::{Event, Input, Output, State};
use mesh_core::{MeshView, PeerId};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// The shell's own knobs (the machine's are `mesh_core::gossip::Config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverConfig {
    /// A probe (direct ping) that gets no answer within this long fails.
    pub probe_timeout: Duration,
    /// Opening a gossip stream, or writing one frame, may take this long.
    pub write_timeout: Duration,
    /// Frames queued per peer; beyond it new frames are dropped (anti-entropy repairs that).
    pub writer_queue: usize,
    /// After a signed `Leaving` is queued on shutdown, how long writers get to deliver it.
    pub leave_grace: Duration,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            // A live peer answers a ping in one RTT; 1.5 s covers a busy host on a slow link and
            // keeps a crashed one's removal from routing under 5 s (2.5 s idle timeout + this).
            probe_timeout: Duration::from_millis(1_500),
            write_timeout: Duration::from_secs(10),
            writer_queue: 256,
            leave_grace: Duration::from_secs(1),
        }
    }
}

/// Why reading a gossip stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("reading the stream: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Reads one frame; `Ok(None)` at a clean end of stream. An oversized or unknown-generation
/// header is refused before any of its body is read.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Message>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match r.read(&mut header[..1]).await? {
        0 => return Ok(None),
        _ => r.read_exact(&mut header[1..]).await?,
    };
    let len = wire::decode_header(&header)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(wire::decode_body(&body)?))
}

/// Writes one message as a frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, message: &Message) -> io::Result<()> {
    let frame = wire::encode(message).map_err(io::Error::other)?;
    w.write_all(&frame).await?;
    w.flush().await
}

/// The gossip machine shared between its driver (the only writer) and readers (views, status,
/// membership checks). Locks are held for single calls only, never across an await.
pub struct Gossip {
    state: Mutex<State>,
    transport: Arc<dyn Transport>,
    clock: Clock,
    inputs: mpsc::Sender<Input>,
}

impl Gossip {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // The machine is only ever mutated inside `handle`, which does not unwind midway in
        // practice; a poisoned lock still holds a usable machine.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The live mesh with this node's RTT measurements.
    pub fn view(&self) -> MeshView {
        let transport = &self.transport;
        self.lock().view(|id| transport.rtt(id).map(rtt_ms))
    }

    /// A peer this node holds (live or stale): admitted, directly or through others.
    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.lock().peer(peer).is_some()
    }

    /// Queues an input for the driver.
    pub async fn input(&self, input: Input) {
        // Closed only after the driver stopped, when inputs no longer matter.
        let _ = self.inputs.send(input).await;
    }
}

/// A running driver: stop it with [`Driver::leave`].
pub struct Driver {
    gossip: Arc<Gossip>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Driver {
    /// Starts driving `state`.
    pub fn start(
        state: State,
        transport: Arc<dyn Transport>,
        clock: Clock,
        config: DriverConfig,
    ) -> Driver {
        let (inputs, rx) = mpsc::channel(4096);
        let gossip = Arc::new(Gossip {
            state: Mutex::new(state),
            transport,
            clock,
            inputs,
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(gossip.clone(), rx, stop_rx, config));
        Driver { gossip, stop, task }
    }

    pub fn gossip(&self) -> &Arc<Gossip> {
        &self.gossip
    }

    /// Tells the mesh this node leaves, gives the message a moment to go out, and stops.
    pub async fn leave(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Serves a gossip stream `peer` opened to this node until it ends or carries a bad frame.
pub fn serve_stream(gossip: Arc<Gossip>, peer: PeerId, stream: BoxIo) {
    tokio::spawn(read_stream(gossip, peer, stream));
}

async fn read_stream(gossip: Arc<Gossip>, peer: PeerId, mut stream: BoxIo) {
    loop {
        match read_frame(&mut stream).await {
            Ok(Some(message)) => {
                gossip
                    .input(Input::Message {
                        from: peer,
                        message,
                    })
                    .await
            }
            Ok(None) => break,
            Err(FrameError::Decode(e)) => {
                tracing::warn!(%peer, error = %e, "closed a gossip stream carrying a bad frame");
                break;
            }
            Err(FrameError::Io(e)) => {
                tracing::debug!(%peer, error = %e, "gossip stream ended");
                break;
            }
        }
    }
}

enum WriterCmd {
    Frame(Arc<Vec<u8>>),
    /// Flush what is queued, then close the connection.
    Disconnect,
}

struct Run {
    gossip: Arc<Gossip>,
    config: DriverConfig,
    writers: HashMap<PeerId, mpsc::Sender<WriterCmd>>,
    writer_tasks: tokio::task::JoinSet<()>,
}

async fn run(
    gossip: Arc<Gossip>,
    mut rx: mpsc::Receiver<Input>,
    mut stop: watch::Receiver<bool>,
    config: DriverConfig,
) {
    let clock = gossip.clock;
    let mut run = Run {
        gossip: gossip.clone(),
        config,
        writers: HashMap::new(),
        writer_tasks: tokio::task::JoinSet::new(),
    };
    loop {
        let wait = gossip
            .lock()
            .poll_timeout()
            .map(|t| t.saturating_since(clock.now()));
        let input = tokio::select! {
            biased;
            _ = stop.changed() => break,
            i = rx.recv() => match i {
                Some(i) => i,
                None => break,
            },
            () = sleep_or_forever(wait) => Input::Timeout,
        };
        run.handle(input);
        // Finished writers (peers that were disconnected) leave the map.
        while run.writer_tasks.try_join_next().is_some() {}
    }
    run.handle(Input::Leave);
    // Closing the queues lets each writer finish what it holds and end.
    run.writers.clear();
    let grace = run.config.leave_grace;
    let _ = tokio::time::timeout(grace, async {
        while run.writer_tasks.join_next().await.is_some() {}
    })
    .await;
}

async fn sleep_or_forever(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

impl Run {
    fn handle(&mut self, input: Input) {
        let now = self.gossip.clock.now();
        let outputs: Vec<Output> = self.gossip.lock().handle(input, now).collect();
        for o in outputs {
            self.execute(o);
        }
    }

    fn execute(&mut self, output: Output) {
        match output {
            Output::SendMessage { to, message } => match wire::encode(&message) {
                Ok(frame) => self.send(to, WriterCmd::Frame(Arc::new(frame))),
                Err(e) => tracing::error!(peer = %to, error = %e, "gossip message not sent"),
            },
            Output::Dial { peer, dialing_info } => {
                let info = String::from_utf8_lossy(&dialing_info);
                if let Err(e) = self.gossip.transport.add_peer(peer, &info) {
                    tracing::warn!(%peer, error = %e, "cannot dial the inviter");
                }
            }
            Output::Probe(peer) => self.probe(peer),
            Output::Disconnect(peer) => match self.writers.get(&peer) {
                Some(_) => self.send(peer, WriterCmd::Disconnect),
                None => self.gossip.transport.disconnect(&peer),
            },
            Output::Event(event) => self.on_event(event),
        }
    }

    fn send(&mut self, to: PeerId, cmd: WriterCmd) {
        let writer = self.writers.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(self.config.writer_queue);
            self.writer_tasks.spawn(writer(
                self.gossip.clone(),
                to,
                rx,
                self.config.write_timeout,
            ));
            tx
        });
        match writer.try_send(cmd) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(peer = %to, "gossip queue full: frame dropped");
            }
            Err(mpsc::error::TrySendError::Closed(cmd)) => {
                // The writer ended (after a disconnect): start a fresh one.
                self.writers.remove(&to);
                self.send(to, cmd);
            }
        }
    }

    /// A direct ping, bounded by the probe timeout, answered as a probe result.
    fn probe(&self, peer: PeerId) {
        let gossip = self.gossip.clone();
        let timeout = self.config.probe_timeout;
        tokio::spawn(async move {
            let reachable = match tokio::time::timeout(timeout, gossip.transport.ping(peer)).await {
                Ok(Ok(rtt)) => {
                    tracing::debug!(%peer, ?rtt, "probe answered");
                    true
                }
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "probe failed");
                    false
                }
                Err(_) => {
                    tracing::info!(%peer, timeout_ms = timeout.as_millis() as u64, "probe got no answer");
                    false
                }
            };
            gossip.input(Input::ProbeResult { peer, reachable }).await;
        });
    }

    /// Learns the peer's current dialing information from its announcement.
    fn learn_dial_info(&self, peer: PeerId) -> bool {
        let info = self
            .gossip
            .lock()
            .announcement(&peer)
            .map(|a| a.value().dial_info.clone());
        match info {
            Some(info) if !info.is_empty() => match self.gossip.transport.add_peer(peer, &info) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "peer announces unusable dialing information");
                    false
                }
            },
            _ => false,
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::PeerUp(peer) => {
                tracing::info!(%peer, "peer up");
                // Connect now: routing needs a measured RTT, and a peer this node cannot reach
                // directly must read as undialable here.
                if self.learn_dial_info(peer) {
                    self.probe(peer);
                }
            }
            Event::PeerUpdated(peer) => {
                tracing::debug!(%peer, "peer updated");
                self.learn_dial_info(peer);
            }
            Event::PeerStale(peer) => tracing::info!(%peer, "peer stale: no fresh seq"),
            Event::PeerRemoved { peer, reason } => {
                tracing::info!(%peer, ?reason, "peer removed");
            }
            Event::PeerUnreachable(peer) => {
                tracing::warn!(%peer, "peer unreachable from here: out of this node's routes");
            }
            Event::PeerReachable(peer) => tracing::info!(%peer, "peer reachable again"),
            Event::Admitted { peer, by } => tracing::info!(%peer, ?by, "admitted peer"),
            Event::Refused { peer, reason } => {
                tracing::warn!(%peer, "refused admission to peer: {reason}");
            }
            Event::RefusedBy { peer, reason } => {
                tracing::warn!(%peer, "this node was refused by peer: {reason}");
            }
            Event::InviteUnusable(e) => {
                tracing::error!(error = %e, "the invite cannot be used to join: {e}");
            }
            Event::Rejected { from, origin } => {
                tracing::warn!(
                    relay = %from,
                    %origin,
                    "rejected a record that fails its origin's signature: forged or altered in transit"
                );
            }
        }
    }
}

/// Writes frames to one peer over a gossip stream it opens (and reopens once after a failure).
/// A frame that cannot be delivered reports the connection lost, so the machine probes the peer.
async fn writer(
    gossip: Arc<Gossip>,
    peer: PeerId,
    mut rx: mpsc::Receiver<WriterCmd>,
    timeout: Duration,
) {
    let mut stream: Option<BoxIo> = None;
    while let Some(cmd) = rx.recv().await {
        match cmd {
            WriterCmd::Frame(frame) => {
                let mut delivered = false;
                for _attempt in 0..2 {
                    if stream.is_none() {
                        let open = gossip.transport.open(peer, StreamKind::Gossip);
                        match tokio::time::timeout(timeout, open).await {
                            Ok(Ok(s)) => stream = Some(s),
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "cannot open a gossip stream");
                                break;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "opening a gossip stream timed out");
                                break;
                            }
                        }
                    }
                    let s = stream.as_mut().expect("opened above");
                    let write = async {
                        s.write_all(&frame).await?;
                        s.flush().await
                    };
                    match tokio::time::timeout(timeout, write).await {
                        Ok(Ok(())) => {
                            delivered = true;
                            break;
                        }
                        _ => stream = None,
                    }
                }
                if !delivered {
                    // What is queued would fail the same way; the machine resends what matters.
                    while rx.try_recv().is_ok() {}
                    gossip.input(Input::ConnectionLost(peer)).await;
                }
            }
            WriterCmd::Disconnect => {
                if let Some(mut s) = stream.take() {
                    let _ = s.shutdown().await;
                }
                // Let the refusal reach the peer before the connection goes: closing a QUIC
                // connection discards what is still in flight.
                tokio::time::sleep(Duration::from_millis(250)).await;
                gossip.transport.disconnect(&peer);
                return;
            }
        }
    }
    if let Some(mut s) = stream {
        let _ = s.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RelayMode;
    use crate::transport::iroh::{IrohConfig, IrohTransport};
    use crate::transport::{Inbound, TransportEvent};
    use mesh_core::gossip::wire::{GENERATION, MAX_FRAME_BODY, Request};

    async fn pair() -> (IrohTransport, IrohTransport) {
        let cfg = || IrohConfig::with_relay(RelayMode::Disabled);
        let a = IrohTransport::bind([21; 32], cfg()).await.unwrap();
        let b = IrohTransport::bind([22; 32], cfg()).await.unwrap();
        a.add_peer(b.local_id(), &b.dial_info()).unwrap();
        (a, b)
    }

    async fn inbound(t: &IrohTransport) -> Inbound {
        match tokio::time::timeout(Duration::from_secs(10), t.next_event()).await {
            Ok(Some(TransportEvent::Stream(s))) => s,
            other => panic!("expected a stream, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn frames_cross_a_real_stream_in_order_and_end_cleanly() {
        let (a, b) = pair().await;
        let mut out = a.open(b.local_id(), StreamKind::Gossip).await.unwrap();
        let first = Message::PeerDown(PeerId::from_bytes([9; 32]));
        let second = Message::Request(Request {
            peers: vec![(a.local_id().short_id(), 0)],
            revocations: vec![],
        });
        write_frame(&mut out, &first).await.unwrap();
        write_frame(&mut out, &second).await.unwrap();
        out.shutdown().await.unwrap();
        let mut s = inbound(&b).await;
        assert_eq!((s.peer, s.kind), (a.local_id(), StreamKind::Gossip));
        assert_eq!(read_frame(&mut s.stream).await.unwrap(), Some(first));
        assert_eq!(read_frame(&mut s.stream).await.unwrap(), Some(second));
        assert_eq!(read_frame(&mut s.stream).await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_from_its_header_before_its_body_arrives() {
        let (a, b) = pair().await;
        let mut out = a.open(b.local_id(), StreamKind::Gossip).await.unwrap();
        let mut header = vec![GENERATION];
        header.extend_from_slice(&(MAX_FRAME_BODY as u32 + 1).to_be_bytes());
        out.write_all(&header).await.unwrap();
        out.flush().await.unwrap();
        // Not a byte of the body is ever sent: the reader must decide from the header alone.
        let mut s = inbound(&b).await;
        let read = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut s.stream))
            .await
            .expect("refused without waiting for a body");
        assert!(
            matches!(
                read,
                Err(FrameError::Decode(DecodeError::Oversized { len, max }))
                    if len == MAX_FRAME_BODY + 1 && max == MAX_FRAME_BODY
            ),
            "{read:?}"
        );
    }

    #[tokio::test]
    async fn garbage_is_a_typed_error_not_a_panic() {
        let (a, b) = pair().await;
        let mut out = a.open(b.local_id(), StreamKind::Gossip).await.unwrap();
        out.write_all(&[GENERATION, 0, 0, 0, 3, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        out.write_all(&[7, 0, 0, 0, 0]).await.unwrap();
        out.flush().await.unwrap();
        let mut s = inbound(&b).await;
        assert!(matches!(
            read_frame(&mut s.stream).await,
            Err(FrameError::Decode(DecodeError::Malformed(_)))
        ));
        assert!(matches!(
            read_frame(&mut s.stream).await,
            Err(FrameError::Decode(DecodeError::UnknownGeneration(7)))
        ));
    }
}
