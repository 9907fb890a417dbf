//! What one node knows about the mesh at an instant: the latest announcement of every live peer
//! (from `gossip`) plus this node's own observations of them. The decision modules (`election`,
//! `status`, `sla`, `routing`) are pure functions of a [`MeshView`].

use crate::id::PeerId;
use crate::peer::PeerAnnouncement;
use crate::time::Timestamp;

/// One live peer as this node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownPeer {
    /// The newest verified announcement from this peer.
    pub announcement: PeerAnnouncement,
    /// This node's measured round-trip time to the peer; `None` when it is not dialable from here.
    pub rtt_ms: Option<u32>,
    /// When this node first saw the peer (host-claim grace counts from here).
    pub first_seen: Timestamp,
    /// When a fresh `seq` from this peer last arrived, directly or relayed.
    pub last_fresh: Timestamp,
}

impl KnownPeer {
    pub fn id(&self) -> PeerId {
        self.announcement.peer_id
    }
}

/// The live mesh as seen by `me`. `peers` includes this node's own announcement (with
/// `rtt_ms: Some(0)`) and is ordered by peer id, so every iteration over it is deterministic.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshView {
    pub me: PeerId,
    pub peers: Vec<KnownPeer>,
}

impl MeshView {
    /// Builds a view, ordering peers by id.
    pub fn new(me: PeerId, mut peers: Vec<KnownPeer>) -> Self {
        peers.sort_by_key(KnownPeer::id);
        peers.dedup_by_key(|p| p.id());
        MeshView { me, peers }
    }

    pub fn get(&self, id: &PeerId) -> Option<&KnownPeer> {
        self.peers
            .binary_search_by_key(id, KnownPeer::id)
            .ok()
            .map(|i| &self.peers[i])
    }

    pub fn me(&self) -> Option<&KnownPeer> {
        self.get(&self.me)
    }

    /// The largest GGUF size any peer reports for `model`; `None` when nobody knows it.
    pub fn model_size(&self, model: &str) -> Option<u64> {
        self.peers
            .iter()
            .filter_map(|p| p.announcement.model_sizes.get(model).copied())
            .filter(|&s| s > 0)
            .max()
    }
}
