//! ClosedMesh's sans-IO core.
//!
//! Every module is a pure state machine or a family of pure functions: input arrives as values
//! (with `now` as a [`Timestamp`]), output leaves as values, and randomness comes from a
//! caller-seeded `rand_pcg` generator. No clocks, sockets, files, threads or global RNG, so the
//! node and the simulator run the same decisions and a seed reproduces a run bit for bit.

pub mod baseline;
pub mod election;
pub mod gossip;
pub mod id;
pub mod invite;
pub mod launch;
pub mod peer;
pub mod routing;
pub mod samples;
pub mod sla;
pub mod status;
pub mod time;
pub mod verify;
pub mod view;

pub use id::PeerId;
pub use peer::{Backend, ModelName, PeerAnnouncement, Role};
pub use time::Timestamp;
pub use view::{KnownPeer, MeshView};
