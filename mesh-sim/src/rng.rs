//! Seeded randomness. One master seed drives a run; every consumer draws from its own named
//! stream derived from it (`traffic/0`, `jitter/3`, …), so adding a peer or a traffic source does
//! not shift the draws of the others, and a stream is reproducible on its own.

use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64;

/// A `rand_pcg` generator with the few distributions the simulator needs.
#[derive(Debug, Clone)]
pub struct SimRng(Pcg64);

impl SimRng {
    /// The stream `name`/`index` of the run seeded with `master`.
    pub fn derive(master: u64, name: &str, index: u64) -> Self {
        SimRng(Pcg64::seed_from_u64(stream_key(master, name, index)))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A fresh `Pcg64` seeded from this stream, for a mesh-core machine that takes one.
    pub fn pcg(&mut self) -> Pcg64 {
        Pcg64::seed_from_u64(self.0.next_u64())
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi]` (`lo` when the range is empty).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo).max(0.0) * self.unit()
    }

    /// Exponentially distributed with the given mean: Poisson inter-arrival times.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]: ln stays finite
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A multiplicative jitter with median 1: `exp(sigma × N(0, 1))`.
    pub fn jitter(&mut self, sigma: f64) -> f64 {
        (sigma * self.normal()).exp()
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// A stateless draw in `[0, 1)` keyed by `(master, name, a, b)`: per-link values for thousands of
/// peers without storing n² of them.
pub fn keyed_unit(master: u64, name: &str, a: u64, b: u64) -> f64 {
    let k = splitmix64(stream_key(master, name, a) ^ splitmix64(b.wrapping_add(0x5851_f42d)));
    (k >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn stream_key(master: u64, name: &str, index: u64) -> u64 {
    splitmix64(splitmix64(master) ^ fnv1a(name.as_bytes()) ^ splitmix64(index))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_stream_same_draws_and_streams_are_independent() {
        let draws = |name, i| {
            let mut r = SimRng::derive(42, name, i);
            (0..4).map(|_| r.unit()).collect::<Vec<_>>()
        };
        assert_eq!(draws("traffic", 0), draws("traffic", 0));
        assert_ne!(draws("traffic", 0), draws("traffic", 1));
        assert_ne!(draws("traffic", 0), draws("jitter", 0));
        let mut other_seed = SimRng::derive(43, "traffic", 0);
        assert_ne!(draws("traffic", 0)[0], other_seed.unit());
    }

    #[test]
    fn exponential_mean_and_jitter_median_are_right() {
        let mut r = SimRng::derive(7, "t", 0);
        let n = 20_000;
        let mean = (0..n).map(|_| r.exponential(3.0)).sum::<f64>() / n as f64;
        assert!((mean - 3.0).abs() < 0.1, "mean {mean}");
        let mut j: Vec<f64> = (0..n).map(|_| r.jitter(0.2)).collect();
        j.sort_by(f64::total_cmp);
        assert!((j[n / 2] - 1.0).abs() < 0.02, "median {}", j[n / 2]);
    }

    #[test]
    fn keyed_unit_is_stable_and_in_range() {
        let a = keyed_unit(1, "link", 3, 9);
        assert_eq!(a, keyed_unit(1, "link", 3, 9));
        assert_ne!(a, keyed_unit(1, "link", 9, 3));
        assert!((0.0..1.0).contains(&a));
    }
}
