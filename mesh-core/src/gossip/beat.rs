//! Heartbeats as hash-chain reveals: proof of life at a third of a signed record's size.
//!
//! Every announcement an origin signs carries a `beat_anchor`: the end of a hash chain
//! `x₀ → x₁ = H(x₀) → … → x_L` whose start `x₀` is derived from the origin's secret key and the
//! announcement's `seq`. Its `n`-th heartbeat since that announcement reveals `x_{L−n}`; anyone
//! holding the announcement checks `Hⁿ(x_{L−n}) = x_L` (or one step from the previous beat
//! they verified). Only the origin can produce the next link — a relay holding every beat so
//! far cannot invert `H` — so a beat is as unforgeable as a signature, and ties its `seq`
//! (`content_seq + n`) to the signed content it names. (The technique of S/Key and TESLA.)
//!
//! On the wire a beat is the origin's 8-byte short id, the content seq, `n` and 16 bytes (about
//! 32 bytes); a signed heartbeat was 117. In a mesh of a thousand peers heartbeats are most of
//! the steady-state traffic (each origin's reaches every peer every interval), so this halves it.
//!
//! After [`CHAIN_LEN`] beats (34 hours at the default interval) the origin re-announces.

use crate::gossip::sign::SecretKey;
use crate::id::ShortId;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Beats per announcement: a chain outlasts 34 hours of one-minute heartbeats.
pub const CHAIN_LEN: u32 = 2048;
/// The origin keeps every `CHECKPOINT_EVERY`-th link, so a reveal costs fewer than this many steps.
const CHECKPOINT_EVERY: u32 = 32;
const SEED_DOMAIN: &[u8] = b"closedmesh/beat-seed/v1\0";
const STEP_DOMAIN: &[u8] = b"closedmesh/beat-step/v1\0";

/// One chain link (128 bits: inverting `H` stays out of reach).
pub type BeatKey = [u8; 16];

/// One link forward: `H(domain ‖ x)`, truncated.
pub fn step(x: &BeatKey) -> BeatKey {
    let h = Sha256::new()
        .chain_update(STEP_DOMAIN)
        .chain_update(x)
        .finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&h[..16]);
    out
}

/// `x` walked `n` links forward.
pub fn walk(mut x: BeatKey, n: u32) -> BeatKey {
    for _ in 0..n {
        x = step(&x);
    }
    x
}

/// A heartbeat: the origin's `n`-th since its announcement `content_seq`, revealing link
/// `L − n` of that announcement's chain. Its seq is `content_seq + n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    /// The origin's short id (the receiver holds its announcement, which names it in full).
    pub peer: ShortId,
    pub content_seq: u64,
    pub n: u32,
    pub key: BeatKey,
}

impl Beat {
    /// The seq this beat proves (`None` when it names an impossible link).
    pub fn seq(&self) -> Option<u64> {
        (1..=CHAIN_LEN)
            .contains(&self.n)
            .then(|| self.content_seq.checked_add(u64::from(self.n)))
            .flatten()
    }

    /// Whether this beat belongs to the chain ending in `anchor`.
    pub fn verifies_against_anchor(&self, anchor: &BeatKey) -> bool {
        self.seq().is_some() && walk(self.key, self.n) == *anchor
    }

    /// Whether this beat follows `earlier` (verified, same announcement) on its chain: one
    /// step per beat between them instead of a walk to the anchor.
    pub fn follows(&self, earlier: &Beat) -> bool {
        self.seq().is_some()
            && earlier.peer == self.peer
            && earlier.content_seq == self.content_seq
            && self.n > earlier.n
            && walk(self.key, self.n - earlier.n) == earlier.key
    }
}

/// The origin's side: the chain of one announcement, with checkpoints.
#[derive(Clone)]
pub struct BeatChain {
    content_seq: u64,
    /// Links 0, CHECKPOINT_EVERY, 2·CHECKPOINT_EVERY, …, CHAIN_LEN.
    checkpoints: Vec<BeatKey>,
}

impl BeatChain {
    /// The chain of the announcement with `content_seq`, derived from the origin's secret key
    /// (so it is unpredictable to others and the same after a restart).
    pub fn new(key: &SecretKey, content_seq: u64) -> Self {
        let h = Sha256::new()
            .chain_update(SEED_DOMAIN)
            .chain_update(key.to_bytes())
            .chain_update(content_seq.to_be_bytes())
            .finalize();
        let mut x = [0u8; 16];
        x.copy_from_slice(&h[..16]);
        let mut checkpoints = Vec::with_capacity((CHAIN_LEN / CHECKPOINT_EVERY) as usize + 1);
        checkpoints.push(x);
        for _ in 0..CHAIN_LEN / CHECKPOINT_EVERY {
            x = walk(x, CHECKPOINT_EVERY);
            checkpoints.push(x);
        }
        BeatChain {
            content_seq,
            checkpoints,
        }
    }

    pub fn content_seq(&self) -> u64 {
        self.content_seq
    }

    /// The chain's end, published in the announcement.
    pub fn anchor(&self) -> BeatKey {
        *self.checkpoints.last().expect("a chain has its end")
    }

    /// Link `i` (0 ≤ i ≤ CHAIN_LEN).
    fn link(&self, i: u32) -> BeatKey {
        let base = i / CHECKPOINT_EVERY;
        walk(self.checkpoints[base as usize], i - base * CHECKPOINT_EVERY)
    }

    /// The `n`-th beat (1 ≤ n ≤ [`CHAIN_LEN`]) of `peer` on this chain.
    pub fn beat(&self, peer: ShortId, n: u32) -> Beat {
        assert!(
            (1..=CHAIN_LEN).contains(&n),
            "beat {n} is outside the chain"
        );
        Beat {
            peer,
            content_seq: self.content_seq,
            n,
            key: self.link(CHAIN_LEN - n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_bytes([b; 32])
    }

    #[test]
    fn every_beat_verifies_against_the_anchor_and_follows_the_previous_one() {
        let k = key(1);
        let chain = BeatChain::new(&k, 1_000);
        let anchor = chain.anchor();
        let mut prev: Option<Beat> = None;
        for n in [1, 2, 3, 31, 32, 33, 100, CHAIN_LEN - 1, CHAIN_LEN] {
            let b = chain.beat(k.peer_id().short_id(), n);
            assert_eq!(b.seq(), Some(1_000 + u64::from(n)));
            assert!(b.verifies_against_anchor(&anchor), "beat {n}");
            if let Some(p) = prev {
                assert!(b.follows(&p), "beat {n} after {}", p.n);
                assert!(!p.follows(&b), "an earlier beat never follows a later one");
            }
            prev = Some(b);
        }
    }

    #[test]
    fn a_relay_cannot_make_the_next_beat_or_move_one_to_other_content() {
        let k = key(2);
        let chain = BeatChain::new(&k, 5_000);
        let anchor = chain.anchor();
        let b3 = chain.beat(k.peer_id().short_id(), 3);
        // Claiming a later n with a revealed key: the walk misses the anchor.
        let mut forged = b3;
        forged.n = 4;
        assert!(!forged.verifies_against_anchor(&anchor));
        assert!(!forged.follows(&b3));
        // The same key under another content seq names another chain.
        let other = BeatChain::new(&k, 5_001);
        let mut moved = b3;
        moved.content_seq = 5_001;
        assert!(!moved.verifies_against_anchor(&other.anchor()));
        // Another origin's chain for the same seq is unrelated.
        assert_ne!(BeatChain::new(&key(3), 5_000).anchor(), anchor);
        // Out-of-range links never verify.
        let mut zero = b3;
        zero.n = 0;
        assert!(zero.seq().is_none());
        assert!(!zero.verifies_against_anchor(&anchor));
    }

    #[test]
    fn the_chain_is_the_same_after_a_restart() {
        let a = BeatChain::new(&key(4), 77);
        let b = BeatChain::new(&key(4), 77);
        assert_eq!(a.anchor(), b.anchor());
        assert_eq!(
            a.beat(key(4).peer_id().short_id(), 9),
            b.beat(key(4).peer_id().short_id(), 9)
        );
    }
}
