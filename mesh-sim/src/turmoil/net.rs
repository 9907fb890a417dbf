//! The node's HTTP seams on turmoil TCP: a listener `mesh_node::http_serve::serve` runs the API
//! (and the simulated llama-server) on, and a dialer the proxy's [`Upstream`] reaches a
//! llama-server with.

use futures::future::BoxFuture;
use mesh_node::dial::{BoxIo, Dial, Upstream};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The port every simulated node serves its HTTP API on (mesh-node's default).
pub const API_PORT: u16 = 9337;

/// A turmoil TCP listener as an `axum::serve::Listener`.
pub struct Listener(pub ::turmoil::net::TcpListener);

impl Listener {
    pub async fn bind(port: u16) -> io::Result<Listener> {
        Ok(Listener(
            ::turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?,
        ))
    }
}

impl axum::serve::Listener for Listener {
    type Io = ::turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Opens turmoil TCP connections to `host:port` (a host name turmoil resolves, or an IP such as `127.0.0.1`).
#[derive(Debug, Clone)]
pub struct Dialer {
    pub host: String,
    pub port: u16,
}

impl Dial for Dialer {
    fn dial(&self) -> BoxFuture<'static, io::Result<BoxIo>> {
        let (host, port) = (self.host.clone(), self.port);
        Box::pin(async move {
            let stream = ::turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok(Box::new(stream) as BoxIo)
        })
    }

    fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The upstream of a llama-server on this host's loopback.
pub fn loopback_upstream(port: u16, api_key: Option<String>) -> Upstream {
    Upstream::new(
        Arc::new(Dialer {
            host: "127.0.0.1".into(),
            port,
        }),
        api_key,
    )
}
