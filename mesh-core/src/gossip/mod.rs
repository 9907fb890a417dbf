//! Gossip and membership (SPEC §2): signed announcements, anti-entropy, liveness, admission and the wire codec.
