//! Serving a [`Router`] on any [`Listener`] (tokio TCP here; a turmoil listener in the simulator)
//! with the node's HTTP limits: request heads over 64 KiB get 431.

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::{Listener, ListenerExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::time::Duration;
use tower::ServiceExt;

/// Request line plus headers above this are refused with 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A TCP listener whose connections have Nagle's algorithm off: a streamed token is a small
/// write that must leave at once, not wait for the caller's delayed ACK (up to 40 ms on Linux).
pub fn nodelay(
    listener: tokio::net::TcpListener,
) -> impl Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY on a client connection");
        }
    })
}

/// Accepts connections until `shutdown` resolves, then asks open connections to finish their
/// current response and stops accepting. Each request carries `ConnectInfo<L::Addr>`.
pub async fn serve<L>(mut listener: L, router: Router, shutdown: impl Future<Output = ()>)
where
    L: Listener,
    L::Addr: Clone + Send + Sync + std::fmt::Debug + 'static,
{
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(addr.clone()));
                router.clone().oneshot(req)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .max_header_size(MAX_HEAD_BYTES)
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30));
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let mut stopping = false;
            loop {
                tokio::select! {
                    res = conn.as_mut() => {
                        if let Err(e) = res {
                            tracing::debug!(error = %e, "client connection ended with an error");
                        }
                        break;
                    }
                    changed = stop_rx.changed(), if !stopping => {
                        stopping = true;
                        if changed.is_ok() {
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
    }
    let _ = stop_tx.send(true);
}
