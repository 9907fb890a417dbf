//! How the node reaches an HTTP upstream (llama-server, or later a peer's proxy through a tunnel).
//!
//! The proxy speaks HTTP/1.1 with hyper's low-level client over whatever byte stream a [`Dial`]
//! implementation opens: a tokio `TcpStream` here, a turmoil `TcpStream` in the simulator, an
//! iroh bi-stream (`tokio::io::join(recv, send)`) for the entry → host tunnel.

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
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

/// An HTTP upstream: how to reach it and the key it expects.
#[derive(Clone)]
pub struct Upstream {
    pub dialer: Arc<dyn Dial>,
    /// Sent as `Authorization: Bearer …` (llama-server's per-launch `--api-key`).
    pub api_key: Option<String>,
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
    pub fn tcp(addr: SocketAddr, api_key: Option<String>) -> Self {
        Upstream {
            dialer: Arc::new(TcpDialer { addr }),
            api_key,
        }
    }

    pub fn authority(&self) -> String {
        self.dialer.authority()
    }

    /// Sends one request on a fresh connection; the response body streams as it arrives.
    /// Dropping the body closes the connection (llama-server then stops generating).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let authority = self.authority();
        let io = self
            .dialer
            .dial()
            .await
            .map_err(|source| UpstreamError::Connect {
                authority: authority.clone(),
                source,
            })?;
        let http = |source| UpstreamError::Http {
            authority: authority.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &authority);
        if let Some(key) = &self.api_key {
            req = req.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        let req = match body {
            Some(b) => req
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(b).boxed()),
            None => req.body(Empty::<Bytes>::new().boxed()),
        }
        .expect("method, path and header values built here are valid");
        sender.send_request(req).await.map_err(http)
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
