//! The ClosedMesh node: mesh-core on real sockets and real llama-server processes.
//!
//! Seams for the simulator and the transport:
//! - [`clock::Clock`] is the only source of time (tokio time + a base epoch);
//! - [`api::router`] builds the axum router without a listener; [`http_serve::serve`] runs it on
//!   any `axum::serve::Listener`;
//! - [`dial::Dial`] opens the byte stream the proxy's HTTP/1.1 client runs over;
//! - [`proxy::ChatProxy`] is the one component that forwards chats and records samples;
//! - [`backend::Backends`] holds which models are routable, written by the process supervisor
//!   (or by a simulator);
//! - [`transport::Transport`] is the peer transport (iroh here, turmoil in the simulator):
//!   everything above it — [`mesh::Mesh`] (gossip driver, election, membership),
//!   [`tunnel`] and [`entry`] — takes an `Arc<dyn Transport>`.

pub mod api;
pub mod audit;
pub mod auth;
pub mod backend;
pub mod clock;
pub mod config;
pub mod device;
pub mod dial;
pub mod entry;
pub mod error;
pub mod facts;
pub mod fallback;
pub mod gguf;
pub mod gossip_driver;
pub mod http_serve;
pub mod identity;
pub mod invite_cmd;
pub mod launcher;
pub mod local_status;
pub mod logging;
pub mod mesh;
pub mod metrics;
pub mod milestones;
pub mod native;
pub mod pages;
pub mod pidfile;
pub mod pipeline;
pub mod proxy;
pub mod rpc;
pub mod serve;
pub mod share_store;
pub mod sse;
pub mod status_cmd;
pub mod supervise;
pub mod transport;
pub mod tunnel;
