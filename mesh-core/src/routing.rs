//! Routing order (SPEC §8): which target serves a request, retries before the first byte, failure
//! demotion.
//!
//! Targets are the dialable peers that host the model. Order: solo hosts before split hosts (the
//! other way round under `force_split`, the demo flag), then fewer requests in flight, then a
//! stable hash of the request key and the peer id. The hash keeps one conversation on one peer
//! while loads are equal (llama-server's prompt cache stays warm) and spreads different
//! conversations; it is SHA-256, so the order is the same on every platform and release.
//!
//! A target that fails before the first byte is retried on the next one in order. Three such
//! failures of a (peer, model) within 120 s demote it for 300 s: it leaves the order while any
//! other target remains, so a model is never left without a target (the sole host is never
//! demoted out). A first byte clears the failure run.

use crate::id::PeerId;
use crate::peer::ModelName;
use crate::time::Timestamp;
use crate::view::MeshView;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Routing knobs. Defaults are SPEC §8's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteConfig {
    /// `CLOSEDMESH_FORCE_SPLIT_ROUTING=1`: split hosts first, for demos. Changes order only.
    pub force_split: bool,
    /// How long a target may take to send its first byte. Generous: a busy host queues requests
    /// (`--parallel 4`) and a capacity-tier model takes 25 s to first token when idle.
    pub first_byte_timeout_secs: u64,
    pub demote_after_failures: u32,
    pub failure_window_secs: u64,
    pub demotion_secs: u64,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            force_split: false,
            first_byte_timeout_secs: 300,
            demote_after_failures: 3,
            failure_window_secs: 120,
            demotion_secs: 300,
        }
    }
}

impl RouteConfig {
    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_secs(self.first_byte_timeout_secs)
    }
}

/// A peer that can take a request for the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub peer: PeerId,
    /// It serves the model as the host of a running pipeline (its announcement lists one).
    pub split: bool,
    pub inflight: u32,
}

/// The dialable peers of `view` that host `model`, in peer-id order, with their announced load.
pub fn targets(model: &str, view: &MeshView) -> Vec<Target> {
    view.peers
        .iter()
        .filter(|p| p.rtt_ms.is_some() && p.announcement.hosts(model))
        .map(|p| Target {
            peer: p.id(),
            split: p.announcement.pipelines.iter().any(|pl| pl.model == model),
            inflight: p.announcement.inflight_requests,
        })
        .collect()
}

/// Orders `targets` (see the module docs). Equal inputs give equal output.
pub fn order_targets(targets: &[Target], request_key: &[u8], force_split: bool) -> Vec<PeerId> {
    let mut keyed: Vec<_> = targets
        .iter()
        .map(|t| {
            let later_class = t.split != force_split;
            (
                (later_class, t.inflight, stable_hash(request_key, &t.peer)),
                t.peer,
            )
        })
        .collect();
    keyed.sort_unstable();
    keyed.dedup_by_key(|(_, peer)| *peer);
    keyed.into_iter().map(|(_, peer)| peer).collect()
}

/// The tie-break: the first 8 bytes of SHA-256 over a domain tag, the key and the peer id.
pub fn stable_hash(request_key: &[u8], peer: &PeerId) -> u64 {
    let mut h = Sha256::new();
    h.update(b"closedmesh/route-order/v1\0");
    h.update((request_key.len() as u64).to_be_bytes());
    h.update(request_key);
    h.update(peer.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The next target to try before the first byte: the first of `order` not yet tried.
pub fn next_attempt(order: &[PeerId], tried: &[PeerId]) -> Option<PeerId> {
    order.iter().find(|p| !tried.contains(p)).copied()
}

/// A (peer, model) just left the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demoted {
    pub peer: PeerId,
    pub model: ModelName,
    pub until: Timestamp,
}

/// The router's state: failure runs and demotions per (peer, model), and this node's own count of
/// requests in flight per peer (fresher than the gossiped one, which lags by a heartbeat).
#[derive(Debug, Clone, PartialEq)]
pub struct Router {
    config: RouteConfig,
    failures: BTreeMap<(PeerId, ModelName), VecDeque<Timestamp>>,
    demoted_until: BTreeMap<(PeerId, ModelName), Timestamp>,
    local_inflight: BTreeMap<PeerId, u32>,
}

impl Router {
    pub fn new(config: RouteConfig) -> Self {
        Router {
            config,
            failures: BTreeMap::new(),
            demoted_until: BTreeMap::new(),
            local_inflight: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &RouteConfig {
        &self.config
    }

    /// The order to try targets in for this request. Load is the larger of the peer's announced
    /// in-flight count and this node's own. Demoted targets are left out unless every target is
    /// demoted.
    pub fn order(
        &self,
        model: &str,
        view: &MeshView,
        request_key: &[u8],
        now: Timestamp,
    ) -> Vec<PeerId> {
        let mut all = targets(model, view);
        for t in &mut all {
            let local = self.local_inflight.get(&t.peer).copied().unwrap_or(0);
            t.inflight = t.inflight.max(local);
        }
        let healthy: Vec<Target> = all
            .iter()
            .filter(|t| !self.is_demoted(&t.peer, model, now))
            .copied()
            .collect();
        let chosen = if healthy.is_empty() { &all } else { &healthy };
        order_targets(chosen, request_key, self.config.force_split)
    }

    pub fn is_demoted(&self, peer: &PeerId, model: &str, now: Timestamp) -> bool {
        self.demoted_until
            .get(&(*peer, model.to_string()))
            .is_some_and(|&until| now < until)
    }

    /// A request to `peer` started (counts towards its load until [`Router::finished`]).
    pub fn started(&mut self, peer: PeerId) {
        *self.local_inflight.entry(peer).or_insert(0) += 1;
    }

    /// A request to `peer` ended, however it ended.
    pub fn finished(&mut self, peer: PeerId) {
        if let Some(n) = self.local_inflight.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.local_inflight.remove(&peer);
            }
        }
    }

    /// When the first byte of a request started at `started_at` is overdue.
    pub fn first_byte_deadline(&self, started_at: Timestamp) -> Timestamp {
        started_at + self.config.first_byte_timeout()
    }

    /// The target sent its first byte: its failure run is over.
    pub fn first_byte(&mut self, peer: PeerId, model: &str) {
        self.failures.remove(&(peer, model.to_string()));
    }

    /// The target failed (or timed out) before the first byte. Returns the demotion it caused.
    pub fn failed_before_first_byte(
        &mut self,
        peer: PeerId,
        model: &str,
        now: Timestamp,
    ) -> Option<Demoted> {
        self.prune(now);
        let key = (peer, model.to_string());
        let run = self.failures.entry(key.clone()).or_default();
        run.push_back(now);
        if run.len() < self.config.demote_after_failures.max(1) as usize {
            return None;
        }
        self.failures.remove(&key);
        let until = now + Duration::from_secs(self.config.demotion_secs);
        self.demoted_until.insert(key, until);
        Some(Demoted {
            peer,
            model: model.to_string(),
            until,
        })
    }

    /// Forgets failures older than the window and demotions that ended.
    pub fn prune(&mut self, now: Timestamp) {
        let oldest = now.saturating_sub(Duration::from_secs(self.config.failure_window_secs));
        for run in self.failures.values_mut() {
            while run.front().is_some_and(|&t| t < oldest) {
                run.pop_front();
            }
        }
        self.failures.retain(|_, run| !run.is_empty());
        self.demoted_until.retain(|_, until| now < *until);
    }

    /// The next instant a demotion ends (the node re-orders then; nothing else is timed).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.demoted_until.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    fn t(n: u8, split: bool, inflight: u32) -> Target {
        Target {
            peer: id(n),
            split,
            inflight,
        }
    }

    #[test]
    fn solo_hosts_come_before_split_hosts_even_when_busier() {
        let ts = [t(1, true, 0), t(2, false, 3), t(3, false, 1)];
        assert_eq!(order_targets(&ts, b"k", false), [id(3), id(2), id(1)]);
        // The demo flag puts the pipeline first.
        assert_eq!(order_targets(&ts, b"k", true), [id(1), id(3), id(2)]);
    }

    #[test]
    fn equal_load_ties_break_by_request_key_not_peer_id() {
        let ts: Vec<Target> = (1..=8).map(|n| t(n, false, 0)).collect();
        let firsts: std::collections::BTreeSet<PeerId> = (0u32..64)
            .map(|k| order_targets(&ts, &k.to_be_bytes(), false)[0])
            .collect();
        // Different conversations spread over the peers...
        assert!(
            firsts.len() >= 6,
            "only {} distinct first choices",
            firsts.len()
        );
        // ...and one conversation sticks to one peer.
        assert_eq!(
            order_targets(&ts, b"conv-1", false),
            order_targets(&ts, b"conv-1", false)
        );
    }

    #[test]
    fn stable_hash_is_pinned() {
        // A change here reshuffles every sticky conversation: make it on purpose. (The value is
        // Python hashlib.sha256 over the same bytes.)
        assert_eq!(stable_hash(b"", &id(0)), stable_hash(b"", &id(0)));
        assert_ne!(stable_hash(b"a", &id(0)), stable_hash(b"a", &id(1)));
        assert_ne!(stable_hash(b"ab", &id(0)), stable_hash(b"a", &id(0)));
        assert_eq!(stable_hash(b"conv-1", &id(7)), 0x6c7e_f7cb_2533_24f1_u64);
    }

    #[test]
    fn retry_goes_down_the_order_skipping_tried_targets() {
        let order = [id(3), id(1), id(2)];
        assert_eq!(next_attempt(&order, &[]), Some(id(3)));
        assert_eq!(next_attempt(&order, &[id(3)]), Some(id(1)));
        assert_eq!(next_attempt(&order, &[id(1), id(3)]), Some(id(2)));
        assert_eq!(next_attempt(&order, &order), None);
    }

    #[test]
    fn three_failures_in_120_s_demote_for_300_s_and_a_first_byte_resets_the_run() {
        let mut r = Router::new(RouteConfig::default());
        let s = Timestamp::from_secs;
        assert_eq!(r.failed_before_first_byte(id(1), "m", s(0)), None);
        assert_eq!(r.failed_before_first_byte(id(1), "m", s(60)), None);
        // The first failure left the window.
        assert_eq!(r.failed_before_first_byte(id(1), "m", s(121)), None);
        r.first_byte(id(1), "m");
        assert_eq!(r.failed_before_first_byte(id(1), "m", s(130)), None);
        assert_eq!(r.failed_before_first_byte(id(1), "m", s(140)), None);
        let d = r.failed_before_first_byte(id(1), "m", s(150)).unwrap();
        assert_eq!(d.until, s(450));
        assert!(r.is_demoted(&id(1), "m", s(449)));
        assert!(!r.is_demoted(&id(1), "other-model", s(449)));
        assert!(!r.is_demoted(&id(1), "m", s(450)));
        assert_eq!(r.poll_timeout(), Some(s(450)));
        r.prune(s(450));
        assert_eq!(r.poll_timeout(), None);
    }
}
