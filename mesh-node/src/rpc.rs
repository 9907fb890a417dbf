//! llama.cpp RPC across the mesh (SPEC §3, §8): the split worker's `rpc-server`, and the tunnels
//! a split host's `llama-server --rpc` reaches it through.
//!
//! - **Worker**: [`supervise_rpc_server`] keeps `rpc-server -H 127.0.0.1 -p <port>` running while
//!   the election says so (`NodeElection::run_rpc_server`), restarting it with backoff; it is never
//!   reachable from the network. [`serve_rpc_tunnels`] takes the RPC streams peers open to this
//!   node and connects each to the local rpc-server — only when the opener (the transport's
//!   authenticated id) is the elected host of a split this node works for
//!   ([`allowed_rpc_hosts`]); anyone else is refused and logged, and a tunnel whose host loses
//!   that election is cut.
//! - **Host**: [`RpcTunnel::open`] listens on a loopback port and forwards every connection
//!   llama-server makes to it over a fresh [`StreamKind::Rpc`] stream to one worker.

use crate::supervise::{LaunchError, Running, free_loopback_port};
use crate::transport::{Inbound, StreamKind, Transport};
use mesh_core::PeerId;
use mesh_core::election::{Duty, NodeElection};
use mesh_core::launch;
use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a fresh rpc-server may take to accept connections.
pub const RPC_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-direction copy buffer of a tunnel: tensor uploads are large, token steps small.
const TUNNEL_BUFFER: usize = 256 * 1024;

/// What the rpc-server supervisor needs.
#[derive(Debug, Clone)]
pub struct RpcServerSpec {
    pub program: PathBuf,
    pub threads: Option<u32>,
    pub logs_dir: PathBuf,
    pub run_dir: PathBuf,
}

/// Whether this node's rpc-server is up, and on which loopback port.
#[derive(Debug)]
pub struct RpcServerState {
    /// `None`: this node has no rpc-server binary and can never be a worker.
    port: Option<watch::Sender<Option<u16>>>,
}

impl RpcServerState {
    pub fn new(available: bool) -> Self {
        RpcServerState {
            port: available.then(|| watch::channel(None).0),
        }
    }

    /// The announcement's `rpc_ready`: `None` without an rpc-server binary, else whether one is
    /// accepting connections now.
    pub fn rpc_ready(&self) -> Option<bool> {
        self.port.as_ref().map(|p| p.borrow().is_some())
    }

    /// The loopback port of the running rpc-server.
    pub fn port(&self) -> Option<u16> {
        self.port.as_ref().and_then(|p| *p.borrow())
    }

    fn set(&self, port: Option<u16>) {
        if let Some(p) = &self.port {
            p.send_replace(port);
        }
    }
}

/// Keeps rpc-server running while `wanted` is true, until `shutdown` turns true.
pub async fn supervise_rpc_server(
    spec: RpcServerSpec,
    mut wanted: watch::Receiver<bool>,
    state: Arc<RpcServerState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    loop {
        tokio::select! {
            r = wanted.wait_for(|w| *w) => if r.is_err() { break },
            _ = shutdown.wait_for(|s| *s) => break,
        }
        let started = Instant::now();
        let outcome = run_rpc_once(&spec, &mut wanted, &state, &mut shutdown).await;
        state.set(None);
        match outcome {
            Ok(RpcExit::Unwanted) => {
                failures = 0;
                continue;
            }
            Ok(RpcExit::Shutdown) => break,
            Ok(RpcExit::Exited(status)) => tracing::warn!(%status, "rpc-server exited"),
            Err(e) => tracing::warn!(error = %e, "rpc-server launch failed"),
        }
        failures = if started.elapsed() >= launch::STABLE_RUN {
            1
        } else {
            failures.saturating_add(1)
        };
        let delay = launch::restart_delay(failures);
        tracing::info!(
            failures,
            delay_ms = delay.as_millis() as u64,
            "restarting rpc-server after backoff"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    state.set(None);
}

enum RpcExit {
    Exited(std::process::ExitStatus),
    Unwanted,
    Shutdown,
}

async fn run_rpc_once(
    spec: &RpcServerSpec,
    wanted: &mut watch::Receiver<bool>,
    state: &RpcServerState,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<RpcExit, LaunchError> {
    let port = free_loopback_port()?;
    let args = launch::rpc_server_args(port, spec.threads);
    let mut running = Running::spawn(
        &spec.program,
        &args,
        "rpc-server",
        &spec.logs_dir,
        &spec.run_dir,
        None,
    )?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + RPC_START_TIMEOUT;
    loop {
        if let Some(status) = running.child.try_wait()? {
            running.stop().await;
            return Err(LaunchError::ExitedEarly(status));
        }
        // A connection it accepts and we drop at once is harmless: rpc-server serves one
        // client at a time and goes back to accepting.
        if TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if Instant::now() >= deadline || *shutdown.borrow() || !*wanted.borrow() {
            running.stop().await;
            if *shutdown.borrow() {
                return Ok(RpcExit::Shutdown);
            }
            if !*wanted.borrow() {
                return Ok(RpcExit::Unwanted);
            }
            return Err(LaunchError::HealthTimeout(RPC_START_TIMEOUT));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::info!(port, pid = running.pid(), "rpc-server ready on loopback");
    state.set(Some(port));
    let exit = tokio::select! {
        s = running.wait() => RpcExit::Exited(s?),
        _ = wanted.wait_for(|w| !*w) => RpcExit::Unwanted,
        _ = shutdown.wait_for(|s| *s) => RpcExit::Shutdown,
    };
    state.set(None);
    if !matches!(exit, RpcExit::Exited(_)) {
        tracing::info!("stopping rpc-server: no split needs it");
        running.stop().await;
    }
    Ok(exit)
}

/// The peers that may open RPC tunnels to this node: the elected hosts of the splits it is a
/// worker of.
pub fn allowed_rpc_hosts(election: &NodeElection) -> BTreeSet<PeerId> {
    election
        .duties
        .values()
        .filter_map(|d| match d {
            Duty::SplitWorker { host } => Some(*host),
            _ => None,
        })
        .collect()
}

/// Connects each admissible RPC stream to the local rpc-server, until `streams` closes.
pub async fn serve_rpc_tunnels(
    mut streams: mpsc::Receiver<Inbound>,
    election: watch::Receiver<NodeElection>,
    rpc: Arc<RpcServerState>,
) {
    while let Some(inbound) = streams.recv().await {
        let peer = inbound.peer;
        if inbound.kind != StreamKind::Rpc {
            tracing::warn!(%peer, kind = %inbound.kind, "refused a non-RPC stream on the RPC queue");
            continue;
        }
        if !allowed_rpc_hosts(&election.borrow()).contains(&peer) {
            tracing::warn!(%peer, "refused an RPC tunnel: the peer is not the elected host of a split this node works for");
            continue;
        }
        let Some(port) = rpc.port() else {
            tracing::warn!(%peer, "refused an RPC tunnel: this node's rpc-server is not running");
            continue;
        };
        let mut election = election.clone();
        tokio::spawn(async move {
            let mut local = match TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, port, error = %e, "RPC tunnel: rpc-server unreachable");
                    return;
                }
            };
            let _ = local.set_nodelay(true);
            tracing::info!(%peer, port, "RPC tunnel from the split host opened");
            let mut remote = inbound.stream;
            tokio::select! {
                r = tokio::io::copy_bidirectional_with_sizes(&mut remote, &mut local, TUNNEL_BUFFER, TUNNEL_BUFFER) => {
                    match r {
                        Ok((up, down)) => tracing::info!(%peer, bytes_in = up, bytes_out = down, "RPC tunnel closed"),
                        Err(e) => tracing::info!(%peer, error = %e, "RPC tunnel ended"),
                    }
                }
                _ = election.wait_for(|e| !allowed_rpc_hosts(e).contains(&peer)) => {
                    tracing::info!(%peer, "RPC tunnel cut: the peer is no longer this node's split host");
                }
            }
        });
    }
}

/// A loopback port forwarding to one worker's rpc-server over the mesh. Closes when dropped.
#[derive(Debug)]
pub struct RpcTunnel {
    pub worker: PeerId,
    pub port: u16,
    task: JoinHandle<()>,
}

impl RpcTunnel {
    pub async fn open(transport: Arc<dyn Transport>, worker: PeerId) -> io::Result<RpcTunnel> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (mut local, _) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(%worker, error = %e, "RPC tunnel listener failed");
                        return;
                    }
                };
                let _ = local.set_nodelay(true);
                let transport = transport.clone();
                conns.spawn(async move {
                    let mut remote = match transport.open(worker, StreamKind::Rpc).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(%worker, error = %e, "RPC tunnel: could not reach the worker");
                            return;
                        }
                    };
                    match tokio::io::copy_bidirectional_with_sizes(
                        &mut local,
                        &mut remote,
                        TUNNEL_BUFFER,
                        TUNNEL_BUFFER,
                    )
                    .await
                    {
                        Ok((up, down)) => tracing::debug!(%worker, bytes_out = up, bytes_in = down, "RPC tunnel connection closed"),
                        Err(e) => tracing::info!(%worker, error = %e, "RPC tunnel connection ended"),
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        tracing::info!(%worker, port, "RPC tunnel listening on loopback");
        Ok(RpcTunnel { worker, port, task })
    }
}

impl Drop for RpcTunnel {
    fn drop(&mut self) {
        // Aborting the task drops the listener and, with the JoinSet, every open connection.
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn id(b: u8) -> PeerId {
        PeerId::from_bytes([b; 32])
    }

    fn election(duties: Vec<(&str, Duty)>) -> NodeElection {
        NodeElection {
            serving_models: Vec::new(),
            duties: duties
                .into_iter()
                .map(|(m, d)| (m.to_string(), d))
                .collect(),
            run_rpc_server: true,
            plans: BTreeMap::new(),
        }
    }

    #[test]
    fn only_the_elected_hosts_of_this_workers_splits_may_tunnel_in() {
        let e = election(vec![
            ("a", Duty::SplitWorker { host: id(1) }),
            (
                "b",
                Duty::SplitHost {
                    workers: vec![id(3)],
                    total_group_memory: 1,
                    workers_ready: true,
                },
            ),
            ("c", Duty::Standby { hosts: vec![id(2)] }),
            (
                "d",
                Duty::Waiting {
                    pooled: 1,
                    needed: Some(2),
                },
            ),
        ]);
        assert_eq!(allowed_rpc_hosts(&e), BTreeSet::from([id(1)]));
        assert!(allowed_rpc_hosts(&election(vec![])).is_empty());
    }

    #[test]
    fn rpc_ready_is_none_without_a_binary_and_tracks_the_port_otherwise() {
        assert_eq!(RpcServerState::new(false).rpc_ready(), None);
        let s = RpcServerState::new(true);
        assert_eq!(s.rpc_ready(), Some(false));
        s.set(Some(5));
        assert_eq!((s.rpc_ready(), s.port()), (Some(true), Some(5)));
    }
}
