//! Peer identity: an Ed25519 public key (in the node, iroh's `EndpointId`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A peer's 32-byte Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub [u8; 32]);

/// The first 8 bytes of a [`PeerId`]: how digests and requests name peers. Ids are public keys,
/// so two peers share a short id only by a 2⁶⁴-work search; a short id that does match several
/// held peers names them all (see [`PeerId::short_range`]).
pub type ShortId = [u8; 8];

impl PeerId {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        PeerId(bytes)
    }

    pub fn short_id(&self) -> ShortId {
        let mut s = [0u8; 8];
        s.copy_from_slice(&self.0[..8]);
        s
    }

    /// Every id with short id `s`, as a range for ordered maps keyed by id.
    pub fn short_range(s: ShortId) -> std::ops::RangeInclusive<PeerId> {
        let mut lo = [0u8; 32];
        let mut hi = [0xffu8; 32];
        lo[..8].copy_from_slice(&s);
        hi[..8].copy_from_slice(&s);
        PeerId(lo)..=PeerId(hi)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 10 hex characters, as payloads and logs show peers.
    pub fn short(&self) -> String {
        let mut s = hex::encode(&self.0[..5]);
        s.truncate(10);
        s
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a peer id is 64 hex characters (32 bytes), got {0:?}")]
pub struct ParsePeerIdError(pub String);

impl FromStr for PeerId {
    type Err = ParsePeerIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| ParsePeerIdError(s.to_string()))?;
        Ok(PeerId(bytes))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

impl Serialize for PeerId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            Ok(PeerId(<[u8; 32]>::deserialize(d)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_id_is_first_ten_hex_chars() {
        let id = PeerId([0xab; 32]);
        assert_eq!(id.short(), "ababababab");
        assert_eq!(id.to_hex().parse::<PeerId>().unwrap(), id);
        assert!("zz".parse::<PeerId>().is_err());
    }
}
