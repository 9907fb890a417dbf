//! Gossip and membership (SPEC §2): signed announcements, anti-entropy, liveness, admission and
//! the wire codec.
//!
//! One sans-IO machine per node, [`State`], modelled on iroh-gossip's `proto`: the shell passes
//! every input with `now` to [`State::handle`], performs the [`Output`]s it yields (send a
//! message, dial an invite's address, probe a peer, disconnect, surface an event), and calls
//! `handle(Input::Timeout, now)` when [`State::poll_timeout`] is due.
//!
//! The rules, each pinned by a test in `state.rs`:
//! - every record is signed by its origin ([`sign`]); a relay forwards bytes verbatim; a record
//!   that fails its signature is dropped, counted ([`Stats::bad_signature`]) and reported;
//! - `seq` is one counter per origin, `max(previous + 1, now in ms)`, so a restarted node's
//!   records are newer than anything it published before; content changes are announcements,
//!   liveness refreshes between them are small heartbeats: reveals of a hash chain the
//!   announcement's signature anchors ([`beat`]), unforgeable at a third of a signature's size;
//! - news (a newer record) is pushed at once to a few random live peers and forwarded by each
//!   receiver that had not seen it (rumour mongering); every tick each node sends a digest
//!   `(peer, seq)` to K random live peers, and the pair exchange whatever either lacks
//!   (Scuttlebutt anti-entropy), which repairs what rumours missed;
//! - a local change confined to load (`inflight_requests`, `model_timings`) is published at
//!   most every [`Config::metrics_interval`] and pushed and relayed to `heartbeat_fanout` peers
//!   only (anti-entropy brings it to the rest): a busy host's load changes with every request;
//! - a peer is alive while fresh seqs arrive (directly or relayed), stale after
//!   [`Config::stale_after`] without one, removed after [`Config::remove_after`]; a signed
//!   `Leaving` removes it at once; removal leaves a tombstone so older copies still circulating
//!   don't resurrect it, while a genuinely newer seq does;
//! - a `PeerDown` from a third party only triggers a direct probe; a failed probe marks the peer
//!   unreachable from here (not dialable in the [`crate::MeshView`]) but never removes it;
//! - only admitted peers are heard ([`admission`]);
//! - what was forgotten is found again: a join that never completed is retried while its invite
//!   lasts, and every [`Config::reconnect_interval`] a digest goes to one removed member, so both
//!   sides of a partition longer than `remove_after` meet again.
//!
//! The shell's side of the contract (mesh-node over iroh, mesh-sim over its network):
//! - pass every decoded inbound frame as [`Input::Message`] with the connection's *transport*
//!   identity (iroh's authenticated remote endpoint id) as `from`; never trust a claimed id;
//! - [`Output::SendMessage`]: [`wire::encode`] and write it on a connection to `to`, dialing if
//!   needed; if that fails, feed [`Input::ConnectionLost`]. [`Output::Dial`] carries the only
//!   address the core knows (an invite's); [`Output::Disconnect`] closes after flushing;
//! - [`Output::Probe`]: try to reach the peer directly (connect / ping, a few seconds at most)
//!   and answer with [`Input::ProbeResult`];
//! - sleep until [`State::poll_timeout`], then feed [`Input::Timeout`];
//! - feed [`Input::UpdateLocal`] whenever the node's own announcement content changes (the core
//!   ignores unchanged content), [`Input::Leave`] on a clean shutdown, [`Input::Join`] with the
//!   stored invite on every start of a node that joined one;
//! - persist [`State::members`] now and then and hand it back with [`State::remember_members`]
//!   after a restart: otherwise a restarted node refuses old members whose invites expired;
//! - build decisions on [`State::view`], passing its own RTT measurements.

pub mod admission;
pub mod beat;
pub mod sign;
pub mod state;
pub mod wire;

#[cfg(test)]
mod tests;

pub use admission::{AdmissionError, AdmittedBy};
pub use beat::Beat;
pub use sign::{SecretKey, Signed, SignedAnnouncement};
pub use state::{
    Config, Event, Input, Output, Removal, State, Stats, load_only, material_load_change,
};
pub use wire::{DecodeError, Message};
