//! How the node reaches an HTTP upstream (llama-server, or later a peer's proxy through a tunnel).
//!
//! The proxy speaks HTTP/1.1 with hyper's low-level client over whatever byte stream a [`Dial`]
//! implementation opens: a tokio `TcpStream` here, a turmoil `TcpStream` in the simulator, an
//! iroh bi-stream (`tokio::io::join(recv, send)`) for the entry → host tunnel.

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream an HTTP/1.1 connection can run over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

pub type BoxIo = Box<dyn Io>;

/// Opens a fresh byte stream to one fixed upstream.
pub trait Dial: Send + Sync + 'static {
    fn dial(&self) -> BoxFuture<'static, io::Result<BoxIo>>;
    /// `host:port` (or any stable label) for the `Host` header and logs.
    fn authority(&self) -> String;
}

/// Plain TCP (loopback llama-server).
#[derive(Debug, Clone, Copy)]
pub struct TcpDialer {
    pub addr: SocketAddr,
}

impl Dial for TcpDialer {
    fn dial(&self) -> BoxFuture<'static, io::Result<BoxIo>> {
        let addr = self.addr;
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            // Tokens are tiny writes: never let Nagle hold one back.
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxIo)
        })
    }

    fn authority(&self) -> String {
        self.addr.to_string()
    }
}

/// Idle connections kept per upstream: more than llama-server's parallel slots.
const MAX_IDLE_CONNECTIONS: usize = 8;

type ReqBody = BoxBody<Bytes, Infallible>;

/// An HTTP upstream: how to reach it and the key it expects. Clones share its connections.
#[derive(Clone)]
pub struct Upstream {
    pub dialer: Arc<dyn Dial>,
    /// Sent as `Authorization: Bearer …` (llama-server's per-launch `--api-key`).
    pub api_key: Option<String>,
    /// Open HTTP/1.1 connections, reused so a chat does not pay a connect and handshake.
    connections: Arc<Mutex<Vec<SendRequest<ReqBody>>>>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Upstream")
            .field("authority", &self.dialer.authority())
            .finish_non_exhaustive()
    }
}

/// Why an upstream exchange failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: io::Error,
    },
    #[error("HTTP exchange with {authority}: {source}")]
    Http {
        authority: String,
        source: hyper::Error,
    },
}

impl Upstream {
    pub fn new(dialer: Arc<dyn Dial>, api_key: Option<String>) -> Self {
        Upstream {
            dialer,
            api_key,
            connections: Arc::default(),
        }
    }

    pub fn tcp(addr: SocketAddr, api_key: Option<String>) -> Self {
        Self::new(Arc::new(TcpDialer { addr }), api_key)
    }

    pub fn authority(&self) -> String {
        self.dialer.authority()
    }

    /// Sends one request, on an idle connection when there is one (else a new one); the
    /// response body streams as it arrives. Dropping the body before its end closes that
    /// connection (llama-server then stops generating); one read to its end leaves it reusable.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        if let Some(mut sender) = self.take_idle() {
            match sender
                .try_send_request(self.request(method.clone(), path, body.clone()))
                .await
            {
                Ok(resp) => {
                    self.keep(sender);
                    return Ok(resp);
                }
                // An idle connection the server had just closed (llama-server drops idle
                // keep-alive connections after 5 s). Nothing reached the caller, so a fresh
                // connection retries it; at worst the server saw a request nobody reads.
                Err(e) => {
                    tracing::debug!(upstream = %self.authority(), error = %e.error(), "reused connection failed; retrying on a new one")
                }
            }
        }
        let mut sender = self.connect().await?;
        let resp = sender
            .send_request(self.request(method, path, body))
            .await
            .map_err(|source| UpstreamError::Http {
                authority: self.authority(),
                source,
            })?;
        self.keep(sender);
        Ok(resp)
    }

    /// An open connection ready for a request now. Busy ones (a response still streaming)
    /// stay for later; closed ones go.
    fn take_idle(&self) -> Option<SendRequest<ReqBody>> {
        let mut conns = self.lock();
        conns.retain(|c| !c.is_closed());
        let i = conns.iter().position(|c| c.is_ready())?;
        Some(conns.swap_remove(i))
    }

    fn keep(&self, sender: SendRequest<ReqBody>) {
        let mut conns = self.lock();
        if conns.len() < MAX_IDLE_CONNECTIONS {
            conns.push(sender);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SendRequest<ReqBody>>> {
        // Only whole senders are pushed and removed: a poisoned list is still consistent.
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn connect(&self) -> Result<SendRequest<ReqBody>, UpstreamError> {
        let authority = self.authority();
        let io = self
            .dialer
            .dial()
            .await
            .map_err(|source| UpstreamError::Connect {
                authority: authority.clone(),
                source,
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Http { authority, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn request(&self, method: Method, path: &str, body: Option<Bytes>) -> Request<ReqBody> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.authority());
        if let Some(key) = &self.api_key {
            req = req.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        match body {
            Some(b) => req
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(b).boxed()),
            None => req.body(Empty::<Bytes>::new().boxed()),
        }
        .expect("method, path and header values built here are valid")
    }

    /// `GET path`, body drained; the status code.
    pub async fn get_status(&self, path: &str) -> Result<u16, UpstreamError> {
        let resp = self.send(Method::GET, path, None).await?;
        let status = resp.status().as_u16();
        let authority = self.authority();
        resp.into_body()
            .collect()
            .await
            .map_err(|source| UpstreamError::Http { authority, source })?;
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    /// An in-memory HTTP/1.1 server answering every request with a 3-chunk stream; it counts
    /// the connections it is dialed on and closes each after `requests_per_conn` requests.
    struct Server {
        dials: AtomicU32,
        requests_per_conn: usize,
    }

    impl Dial for Arc<Server> {
        fn dial(&self) -> BoxFuture<'static, io::Result<BoxIo>> {
            self.dials.fetch_add(1, Ordering::SeqCst);
            let limit = self.requests_per_conn;
            Box::pin(async move {
                let (ours, theirs) = tokio::io::duplex(64 * 1024);
                tokio::spawn(async move {
                    let served = Arc::new(AtomicU32::new(0));
                    let service = hyper::service::service_fn(move |_req| {
                        served.fetch_add(1, Ordering::SeqCst);
                        let chunks = futures::stream::iter(["a", "b", "c"].map(|c| {
                            Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(c)))
                        }));
                        async move {
                            Ok::<_, Infallible>(Response::new(http_body_util::StreamBody::new(
                                chunks,
                            )))
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(limit > 1)
                        .serve_connection(TokioIo::new(theirs), service);
                    let _ = conn.await;
                });
                Ok(Box::new(ours) as BoxIo)
            })
        }

        fn authority(&self) -> String {
            "mem.invalid".into()
        }
    }

    fn upstream(requests_per_conn: usize) -> (Upstream, Arc<Server>) {
        let server = Arc::new(Server {
            dials: AtomicU32::new(0),
            requests_per_conn,
        });
        (Upstream::new(Arc::new(server.clone()), None), server)
    }

    async fn read_all(up: &Upstream) -> Bytes {
        let resp = up
            .send(Method::POST, "/x", Some(Bytes::from("{}")))
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_finished_response_leaves_its_connection_for_the_next_request() {
        let (up, server) = upstream(100);
        for _ in 0..3 {
            assert_eq!(read_all(&up).await, "abc");
        }
        assert_eq!(server.dials.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_streams_get_their_own_connections() {
        let (up, server) = upstream(100);
        let first = up.send(Method::GET, "/x", None).await.unwrap();
        // The first response is still unread: its connection is busy.
        let second = up.send(Method::GET, "/x", None).await.unwrap();
        assert_eq!(server.dials.load(Ordering::SeqCst), 2);
        drop((first, second));
    }

    #[tokio::test]
    async fn a_response_dropped_midway_is_not_reused_and_a_closed_connection_is_replaced() {
        let (up, server) = upstream(100);
        let resp = up.send(Method::GET, "/x", None).await.unwrap();
        drop(resp);
        assert_eq!(read_all(&up).await, "abc");
        assert_eq!(server.dials.load(Ordering::SeqCst), 2);

        // A server that closes after every response: each request still succeeds, whether the
        // close was noticed before the next request (sleep) or only by trying it (no sleep).
        for pause in [Duration::from_millis(10), Duration::ZERO] {
            let (up, server) = upstream(1);
            for _ in 0..3 {
                assert_eq!(read_all(&up).await, "abc");
                tokio::time::sleep(pause).await;
            }
            assert_eq!(server.dials.load(Ordering::SeqCst), 3);
        }
    }
}
