//! The simulated network both engines apply: per-link one-way delay and loss, `set_latency`
//! overrides, partitions. A link's delay is drawn once from its range by a stateless keyed draw
//! (so a 10,000-peer mesh stores no link table, and both engines see the same links for a seed).

use crate::profile::Link;
use crate::rng::keyed_unit;
use crate::scenario::NetworkSpec;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq)]
struct LinkParams {
    latency_ms: [f64; 2],
    loss: f64,
    bandwidth_mbps: f64,
}

/// A `set_latency` event: applies to every link touching `peers` (`None`: every link).
#[derive(Debug, Clone)]
struct Override {
    peers: Option<BTreeSet<usize>>,
    params: LinkParams,
}

#[derive(Debug, Clone)]
pub(crate) struct Network {
    seed: u64,
    base: LinkParams,
    overrides: Vec<Override>,
    /// Partition group of each peer; peers talk only within a group.
    group: Vec<u32>,
    groups_made: u32,
}

impl Network {
    pub(crate) fn new(seed: u64, spec: &NetworkSpec, peers: usize) -> Self {
        Network {
            seed,
            base: LinkParams {
                latency_ms: spec.latency_ms,
                loss: spec.loss,
                bandwidth_mbps: spec.bandwidth_mbps,
            },
            overrides: Vec::new(),
            group: vec![0; peers],
            groups_made: 0,
        }
    }

    /// The parameters of link `a`–`b` and which override set them (0: none).
    fn params(&self, a: usize, b: usize) -> (LinkParams, u64) {
        self.overrides
            .iter()
            .enumerate()
            .rev()
            .find(|(_, o)| {
                o.peers
                    .as_ref()
                    .is_none_or(|set| set.contains(&a) || set.contains(&b))
            })
            .map_or((self.base, 0), |(i, o)| (o.params, i as u64 + 1))
    }

    /// One-way delay between two peers in ms (0 to itself).
    pub(crate) fn one_way_ms(&self, a: usize, b: usize) -> f64 {
        if a == b {
            return 0.0;
        }
        let (lo, hi) = (a.min(b) as u64, a.max(b) as u64);
        let (p, salt) = self.params(a, b);
        let [min, max] = p.latency_ms;
        min + (max - min) * keyed_unit(self.seed, "link", lo, hi ^ (salt << 40))
    }

    pub(crate) fn loss(&self, a: usize, b: usize) -> f64 {
        if a == b {
            0.0
        } else {
            self.params(a, b).0.loss
        }
    }

    /// The link as a pipeline sees it.
    pub(crate) fn link(&self, a: usize, b: usize) -> Link {
        if a == b {
            return Link::LOOPBACK;
        }
        Link {
            rtt_ms: 2.0 * self.one_way_ms(a, b),
            bandwidth_mbps: self.params(a, b).0.bandwidth_mbps,
            loss: self.loss(a, b),
        }
    }

    pub(crate) fn reachable(&self, a: usize, b: usize) -> bool {
        self.group[a] == self.group[b]
    }

    /// Whether some peer is cut off from the others.
    pub(crate) fn partitioned(&self) -> bool {
        self.group.iter().any(|&g| g != 0)
    }

    /// Cuts `peers` off from everyone else (they still reach each other).
    pub(crate) fn partition(&mut self, peers: &[usize]) {
        self.groups_made += 1;
        for &p in peers {
            self.group[p] = self.groups_made;
        }
    }

    /// Rejoins `peers` (all when empty) to the main group.
    pub(crate) fn heal(&mut self, peers: &[usize]) {
        if peers.is_empty() {
            self.group.iter_mut().for_each(|g| *g = 0);
        } else {
            peers.iter().for_each(|&p| self.group[p] = 0);
        }
    }

    /// New delay range (and loss, if given) for every link touching `peers` (all when empty).
    pub(crate) fn set_latency(&mut self, peers: &[usize], latency_ms: [f64; 2], loss: Option<f64>) {
        self.overrides.push(Override {
            peers: (!peers.is_empty()).then(|| peers.iter().copied().collect()),
            params: LinkParams {
                latency_ms,
                loss: loss.unwrap_or(self.base.loss),
                bandwidth_mbps: self.base.bandwidth_mbps,
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Network {
        let spec = NetworkSpec {
            latency_ms: [20.0, 100.0],
            loss: 0.01,
            bandwidth_mbps: 100.0,
        };
        Network::new(42, &spec, 4)
    }

    #[test]
    fn delays_are_symmetric_stable_and_within_range() {
        let n = net();
        for (a, b) in [(0, 1), (1, 3), (2, 0)] {
            let d = n.one_way_ms(a, b);
            assert_eq!(d, n.one_way_ms(b, a));
            assert!((20.0..=100.0).contains(&d), "{d}");
        }
        assert_ne!(n.one_way_ms(0, 1), n.one_way_ms(0, 2));
        assert_eq!(n.one_way_ms(2, 2), 0.0);
        assert_eq!(n.link(0, 1).rtt_ms, 2.0 * n.one_way_ms(0, 1));
    }

    #[test]
    fn set_latency_changes_only_the_links_of_the_named_peers() {
        let mut n = net();
        let untouched = n.one_way_ms(2, 3);
        n.set_latency(&[1], [5.0, 5.0], Some(0.2));
        assert_eq!(n.one_way_ms(0, 1), 5.0);
        assert_eq!(n.loss(1, 3), 0.2);
        assert_eq!(n.one_way_ms(2, 3), untouched);
        n.set_latency(&[], [7.0, 7.0], None);
        assert_eq!(n.one_way_ms(0, 1), 7.0);
        assert_eq!(n.loss(0, 1), 0.01);
    }

    #[test]
    fn partitions_cut_and_heal() {
        let mut n = net();
        n.partition(&[2, 3]);
        assert!(n.reachable(2, 3) && n.reachable(0, 1));
        assert!(!n.reachable(1, 2));
        n.heal(&[2]);
        assert!(n.reachable(1, 2) && !n.reachable(2, 3));
        n.heal(&[]);
        assert!(n.reachable(0, 3));
    }
}
