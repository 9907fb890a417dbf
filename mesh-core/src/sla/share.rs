//! `mesh_share_pct`: how much of the chat traffic community hardware served, from hourly
//! counters by served-by. The store is plain data (serde) so a disk or Redis backend persists
//! it; it holds at most the last 7 days of hour buckets.

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// `x-closedmesh-served-by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServedBy {
    Mesh,
    Fallback,
}

impl ServedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ServedBy::Mesh => "mesh",
            ServedBy::Fallback => "fallback",
        }
    }
}

impl fmt::Display for ServedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A UTC clock hour: hours since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HourBucket(pub u64);

impl HourBucket {
    pub fn of(t: Timestamp) -> Self {
        HourBucket(t.as_unix_secs() / 3_600)
    }

    pub fn start(self) -> Timestamp {
        Timestamp::from_secs(self.0.saturating_mul(3_600))
    }
}

/// Requests served in one hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourCounts {
    pub mesh: u64,
    pub fallback: u64,
}

/// One rolling window's figures, as the dashboard cards show them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShareWindow {
    pub mesh: u64,
    pub fallback: u64,
    pub total: u64,
    /// mesh ÷ (mesh + fallback) × 100; `None` (JSON `null`) with no traffic.
    pub mesh_share_pct: Option<f64>,
}

/// Hourly served-by counters for the last 7 days.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshShareCounters {
    buckets: BTreeMap<HourBucket, HourCounts>,
}

impl MeshShareCounters {
    /// Buckets kept: 7 days of hours, the current one included.
    pub const RETAINED_HOURS: u64 = 7 * 24;

    /// Counts one chat.
    pub fn record(&mut self, served_by: ServedBy, now: Timestamp) {
        let counts = match served_by {
            ServedBy::Mesh => HourCounts {
                mesh: 1,
                fallback: 0,
            },
            ServedBy::Fallback => HourCounts {
                mesh: 0,
                fallback: 1,
            },
        };
        self.add(HourBucket::of(now), counts, now);
    }

    /// Adds counts to an hour (merging what another entry node or a persisted copy holds), then
    /// drops buckets that fell out of the 7 days before `now`.
    pub fn add(&mut self, hour: HourBucket, counts: HourCounts, now: Timestamp) {
        let slot = self.buckets.entry(hour).or_default();
        slot.mesh = slot.mesh.saturating_add(counts.mesh);
        slot.fallback = slot.fallback.saturating_add(counts.fallback);
        self.prune(now);
    }

    /// Drops buckets older than [`Self::RETAINED_HOURS`] before `now`'s hour.
    pub fn prune(&mut self, now: Timestamp) {
        let oldest = oldest_in(Self::RETAINED_HOURS, now);
        self.buckets = self.buckets.split_off(&oldest);
    }

    /// The rolling window of the last `hours` clock hours, the current (partial) one included.
    pub fn window(&self, hours: u64, now: Timestamp) -> ShareWindow {
        let (mesh, fallback) = self
            .buckets
            .range(oldest_in(hours, now)..=HourBucket::of(now))
            .fold((0u64, 0u64), |(m, f), (_, c)| {
                (m.saturating_add(c.mesh), f.saturating_add(c.fallback))
            });
        let total = mesh.saturating_add(fallback);
        ShareWindow {
            mesh,
            fallback,
            total,
            mesh_share_pct: (total > 0).then(|| mesh as f64 * 100.0 / total as f64),
        }
    }

    pub fn last_24h(&self, now: Timestamp) -> ShareWindow {
        self.window(24, now)
    }

    pub fn last_7d(&self, now: Timestamp) -> ShareWindow {
        self.window(Self::RETAINED_HOURS, now)
    }

    /// Every kept bucket, oldest first: what a backend persists.
    pub fn buckets(&self) -> impl Iterator<Item = (HourBucket, HourCounts)> + '_ {
        self.buckets.iter().map(|(h, c)| (*h, *c))
    }
}

fn oldest_in(hours: u64, now: Timestamp) -> HourBucket {
    HourBucket(
        HourBucket::of(now)
            .0
            .saturating_sub(hours.saturating_sub(1)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600;
    const T0: u64 = 1_800_000_000 / H * H;

    fn at(hours: u64, secs: u64) -> Timestamp {
        Timestamp::from_secs(T0 + hours * H + secs)
    }

    #[test]
    fn mesh_share_is_null_with_no_traffic() {
        let c = MeshShareCounters::default();
        let w = c.last_24h(at(0, 0));
        assert_eq!(w.mesh_share_pct, None);
        assert_eq!(w.total, 0);
        assert_eq!(
            serde_json::to_value(w).unwrap()["mesh_share_pct"],
            serde_json::Value::Null
        );
        // Traffic that aged out of the window is no traffic either.
        let mut c = MeshShareCounters::default();
        c.record(ServedBy::Mesh, at(0, 0));
        assert_eq!(c.last_24h(at(24, 0)).mesh_share_pct, None);
        assert_eq!(c.last_7d(at(24, 0)).mesh_share_pct, Some(100.0));
    }

    #[test]
    fn first_prod_sample_reads_100_percent_mesh() {
        let mut c = MeshShareCounters::default();
        c.record(ServedBy::Mesh, at(0, 10));
        let w = c.last_24h(at(0, 20));
        assert_eq!((w.mesh, w.fallback, w.total), (1, 0, 1));
        assert_eq!(w.mesh_share_pct, Some(100.0));
    }

    #[test]
    fn rolling_windows_count_the_last_24_and_168_clock_hours() {
        let mut c = MeshShareCounters::default();
        c.record(ServedBy::Fallback, at(0, 0)); // 7 d window only until hour 167
        c.record(ServedBy::Mesh, at(150, 0));
        c.record(ServedBy::Mesh, at(160, 59 * 60));
        c.record(ServedBy::Fallback, at(167, 0));
        let now = at(167, 30);
        assert_eq!(c.last_24h(now).mesh, 2);
        assert_eq!(c.last_24h(now).fallback, 1);
        let week = c.last_7d(now);
        assert_eq!((week.mesh, week.fallback), (2, 2));
        assert_eq!(week.mesh_share_pct, Some(50.0));
        // One hour later the first bucket leaves the week.
        let later = at(168, 0);
        assert_eq!(c.last_7d(later).fallback, 1);
        assert!((c.last_24h(later).mesh_share_pct.unwrap() - 200.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn store_keeps_at_most_seven_days_of_buckets_and_round_trips_through_serde() {
        let mut c = MeshShareCounters::default();
        for h in 0..400 {
            c.record(ServedBy::Mesh, at(h, 0));
        }
        assert_eq!(
            c.buckets().count() as u64,
            MeshShareCounters::RETAINED_HOURS
        );
        assert_eq!(
            c.buckets().next().unwrap().0,
            HourBucket::of(at(400 - 168, 0))
        );
        let json = serde_json::to_string(&c).unwrap();
        let back: MeshShareCounters = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn merging_another_nodes_counts_adds_them() {
        let mut a = MeshShareCounters::default();
        a.record(ServedBy::Mesh, at(5, 0));
        let mut b = MeshShareCounters::default();
        b.record(ServedBy::Fallback, at(5, 1));
        b.record(ServedBy::Fallback, at(4, 1));
        for (hour, counts) in b.buckets() {
            a.add(hour, counts, at(5, 2));
        }
        let w = a.last_24h(at(5, 3));
        assert_eq!((w.mesh, w.fallback), (1, 2));
    }
}
