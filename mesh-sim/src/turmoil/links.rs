//! The scenario's links as the turmoil world applies them: each link's one-way delay drawn once
//! from its range by the same keyed draw the discrete-event engine uses (same seed, same links),
//! loss and bandwidth per link, `set_latency` overrides, and partition groups.

use crate::profile::Link;
use crate::rng::keyed_unit;
use crate::scenario::NetworkSpec;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Params {
    latency_ms: [f64; 2],
    loss: f64,
    bandwidth_mbps: f64,
}

#[derive(Debug, Clone)]
struct Override {
    /// Links touching these peers (`None`: every link).
    peers: Option<BTreeSet<usize>>,
    params: Params,
}

#[derive(Debug, Clone)]
pub struct LinkTable {
    seed: u64,
    base: Params,
    overrides: Vec<Override>,
    /// Partition group of each peer: peers talk only within one.
    group: Vec<u32>,
    groups_made: u32,
}

impl LinkTable {
    pub fn new(seed: u64, spec: &NetworkSpec, peers: usize) -> Self {
        LinkTable {
            seed,
            base: Params {
                latency_ms: spec.latency_ms,
                loss: spec.loss,
                bandwidth_mbps: spec.bandwidth_mbps,
            },
            overrides: Vec::new(),
            group: vec![0; peers],
            groups_made: 0,
        }
    }

    fn params(&self, a: usize, b: usize) -> (Params, u64) {
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
    pub fn one_way_ms(&self, a: usize, b: usize) -> f64 {
        if a == b {
            return 0.0;
        }
        let (lo, hi) = (a.min(b) as u64, a.max(b) as u64);
        let (p, salt) = self.params(a, b);
        let [min, max] = p.latency_ms;
        min + (max - min) * keyed_unit(self.seed, "link", lo, hi ^ (salt << 40))
    }

    pub fn loss(&self, a: usize, b: usize) -> f64 {
        if a == b {
            0.0
        } else {
            self.params(a, b).0.loss
        }
    }

    /// The link as a pipeline sees it.
    pub fn link(&self, a: usize, b: usize) -> Link {
        if a == b {
            return Link::LOOPBACK;
        }
        Link {
            rtt_ms: 2.0 * self.one_way_ms(a, b),
            bandwidth_mbps: self.params(a, b).0.bandwidth_mbps,
            loss: self.loss(a, b),
        }
    }

    pub fn reachable(&self, a: usize, b: usize) -> bool {
        self.group[a] == self.group[b]
    }

    /// Cuts `peers` off from everyone else (they still reach each other).
    pub fn partition(&mut self, peers: &[usize]) {
        self.groups_made += 1;
        for &p in peers {
            self.group[p] = self.groups_made;
        }
    }

    /// Rejoins `peers` (all when empty) to the main group.
    pub fn heal(&mut self, peers: &[usize]) {
        if peers.is_empty() {
            self.group.iter_mut().for_each(|g| *g = 0);
        } else {
            peers.iter().for_each(|&p| self.group[p] = 0);
        }
    }

    /// A new delay range (and loss, if given) for every link touching `peers` (all when empty).
    pub fn set_latency(&mut self, peers: &[usize], latency_ms: [f64; 2], loss: Option<f64>) {
        self.overrides.push(Override {
            peers: (!peers.is_empty()).then(|| peers.iter().copied().collect()),
            params: Params {
                latency_ms,
                loss: loss.unwrap_or(self.base.loss),
                bandwidth_mbps: self.base.bandwidth_mbps,
            },
        });
    }
}
