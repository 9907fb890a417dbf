//! The SLA gate: can some live, dialable peer serve this model within its tier's targets?

use super::tier::{Targets, Tier, TierCatalog, TierTargets};
use crate::id::PeerId;
use crate::peer::ModelName;
use crate::samples::{Sample, SampleWindow, Summary};
use crate::time::Timestamp;
use crate::view::{KnownPeer, MeshView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// What the gate reads besides the view: the tier table, the targets, and what counts as a
/// fresh measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlaConfig {
    pub catalog: TierCatalog,
    pub targets: TierTargets,
    /// A measurement backed by fewer samples than this is not a measurement. Default 1: one real
    /// chat is what the original gated on, and a p50 of one is still a real number; raise it on a
    /// busy mesh to damp single-shot variance (15.44 / 21.08 / 37.09 tok/s on identical input).
    pub min_samples: u32,
    /// A measurement older than this is not a measurement. Default 3600 s, the sample window:
    /// anything older describes a peer that may since have changed model, load or placement.
    pub max_measurement_age_secs: u64,
}

impl Default for SlaConfig {
    fn default() -> Self {
        SlaConfig {
            catalog: TierCatalog::default(),
            targets: TierTargets::default(),
            min_samples: 1,
            max_measurement_age_secs: 3_600,
        }
    }
}

impl SlaConfig {
    pub fn max_measurement_age(&self) -> Duration {
        Duration::from_secs(self.max_measurement_age_secs)
    }
}

/// The entry's own measurement of one peer serving one model: the summary of its window of the
/// streams it proxied there, and when the newest of those samples was taken.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EntryMeasurement {
    pub summary: Summary,
    pub measured_at: Timestamp,
}

/// Everything the entry measured itself, per (peer, model).
pub type EntryMeasurements = BTreeMap<(PeerId, ModelName), EntryMeasurement>;

/// The entry's sample windows per (peer, model): every stream it proxied, timed by the same rules
/// as a host's own samples. Bounded like any window (1 h, 512 samples each); empty ones go.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntrySamples {
    windows: BTreeMap<(PeerId, ModelName), (SampleWindow, Timestamp)>,
}

impl EntrySamples {
    pub fn record(&mut self, peer: PeerId, model: &str, sample: Sample) {
        let (window, newest) = self
            .windows
            .entry((peer, model.to_string()))
            .or_insert_with(|| (SampleWindow::default(), sample.at));
        window.record(sample);
        *newest = (*newest).max(sample.at);
    }

    pub fn prune(&mut self, now: Timestamp) {
        for (window, _) in self.windows.values_mut() {
            window.prune(now);
        }
        self.windows.retain(|_, (w, _)| !w.is_empty());
    }

    /// What [`evaluate`] reads: each window's summary at `now`, dated by its newest sample.
    pub fn measurements(&self, now: Timestamp) -> EntryMeasurements {
        self.windows
            .iter()
            .filter_map(|(key, (window, newest))| {
                let summary = window.summary(now)?;
                Some((
                    key.clone(),
                    EntryMeasurement {
                        summary,
                        measured_at: *newest,
                    },
                ))
            })
            .collect()
    }
}

/// The gate's verdict, in precedence order. The strings are a public header contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlaStatus {
    MeetsSla,
    NoPeerWithModel,
    NoMeasurements,
    TtftTooHigh,
    TpsTooLow,
    BothTooLow,
}

impl SlaStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SlaStatus::MeetsSla => "meets-sla",
            SlaStatus::NoPeerWithModel => "no-peer-with-model",
            SlaStatus::NoMeasurements => "no-measurements",
            SlaStatus::TtftTooHigh => "ttft-too-high",
            SlaStatus::TpsTooLow => "tps-too-low",
            SlaStatus::BothTooLow => "both-too-low",
        }
    }
}

impl fmt::Display for SlaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose numbers a candidate was judged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MeasurementSource {
    /// The entry timed the streams it proxied to this peer.
    Entry,
    /// The peer's gossiped `model_timings`.
    SelfReported,
}

/// The fresh numbers one candidate was judged on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub source: MeasurementSource,
    pub ttft_ms_p50: f64,
    pub tps_p50: f64,
    pub samples: u32,
    pub measured_at: Timestamp,
}

/// A live, dialable peer that routes the model, and how it fares against the targets:
/// `status` is `meets-sla`, `no-measurements`, or which target it misses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub peer: PeerId,
    pub measured: Option<Measured>,
    pub status: SlaStatus,
}

/// The gate's answer for one model at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub model: ModelName,
    pub tier: Tier,
    pub targets: Targets,
    pub status: SlaStatus,
    /// In peer-id order.
    pub candidates: Vec<Candidate>,
    /// The candidate the status and the best figures describe (see [`evaluate`]).
    pub best_peer: Option<PeerId>,
    pub best_ttft_ms: Option<f64>,
    pub best_tps: Option<f64>,
}

impl Evaluation {
    pub fn meets_sla(&self) -> bool {
        self.status == SlaStatus::MeetsSla
    }
}

/// Evaluates `model` against its tier's targets.
///
/// Candidates are the peers of `view` (the live mesh) that are dialable from here (`rtt_ms` is
/// `Some`) and route the model (`hosted_models`). Each candidate is judged on one fresh
/// measurement: the entry's own ([`MeasurementSource::Entry`]) when it has at least
/// `min_samples` samples no older than `max_measurement_age`, else the peer's self-reported
/// timing under the same two rules (its age counted from `last_fresh`, the newest announcement
/// carrying it), else none. Non-finite or non-positive figures are no measurement.
///
/// The status: `meets-sla` if any candidate meets both targets; else `no-peer-with-model` with no
/// candidates; else `no-measurements` if none has a fresh measurement; else the verdict of the
/// *best* measured candidate, where best means fewest targets missed, then `ttft-too-high` before
/// `tps-too-low`, then the smallest miss (the larger of TTFT ÷ its ceiling and the tok/s floor
/// ÷ tok/s), then peer id. So `ttft-too-high` means some candidate misses only on TTFT, and
/// `both-too-low` that every measured candidate misses both. Among passing candidates, best is the
/// one with the most headroom by the same ratio. `best_ttft_ms`/`best_tps` are that one
/// candidate's figures, so the headers always describe a single real peer.
pub fn evaluate(
    model: &str,
    view: &MeshView,
    entry_measurements: &EntryMeasurements,
    now: Timestamp,
    config: &SlaConfig,
) -> Evaluation {
    let tier = config.catalog.tier_of(model);
    let targets = config.targets.for_tier(tier);
    let candidates: Vec<Candidate> = view
        .peers
        .iter()
        .filter(|p| p.rtt_ms.is_some() && p.announcement.hosts(model))
        .map(|p| {
            let measured = fresh_measurement(p, model, entry_measurements, now, config);
            let status = measured.map_or(SlaStatus::NoMeasurements, |m| judge(&m, targets));
            Candidate {
                peer: p.id(),
                measured,
                status,
            }
        })
        .collect();

    let best = candidates
        .iter()
        .filter_map(|c| c.measured.map(|m| (c, shortfall(&m, targets))))
        .min_by(|(a, ra), (b, rb)| {
            // Passing candidates miss nothing, so they always rank first.
            (misses(a.status), a.status)
                .cmp(&(misses(b.status), b.status))
                .then_with(|| ra.total_cmp(rb))
                .then_with(|| a.peer.cmp(&b.peer))
        })
        .map(|(c, _)| c);

    let status = match best {
        Some(c) => c.status,
        None if candidates.is_empty() => SlaStatus::NoPeerWithModel,
        None => SlaStatus::NoMeasurements,
    };
    let best_measured = best.and_then(|c| c.measured);
    Evaluation {
        model: model.to_string(),
        tier,
        targets,
        status,
        best_peer: best.map(|c| c.peer),
        best_ttft_ms: best_measured.map(|m| m.ttft_ms_p50),
        best_tps: best_measured.map(|m| m.tps_p50),
        candidates,
    }
}

fn fresh_measurement(
    peer: &KnownPeer,
    model: &str,
    entry_measurements: &EntryMeasurements,
    now: Timestamp,
    config: &SlaConfig,
) -> Option<Measured> {
    let fresh = |m: &Measured| {
        m.samples >= config.min_samples.max(1)
            && now.saturating_since(m.measured_at) <= config.max_measurement_age()
            && m.ttft_ms_p50.is_finite()
            && m.ttft_ms_p50 >= 0.0
            && m.tps_p50.is_finite()
            && m.tps_p50 > 0.0
    };
    let entry = entry_measurements
        .get(&(peer.id(), model.to_string()))
        .map(|e| Measured {
            source: MeasurementSource::Entry,
            ttft_ms_p50: e.summary.ttft_ms_p50,
            tps_p50: e.summary.tps_p50,
            samples: e.summary.samples,
            measured_at: e.measured_at,
        });
    let reported = peer.announcement.timing(model).map(|t| Measured {
        source: MeasurementSource::SelfReported,
        ttft_ms_p50: t.ttft_ms_p50,
        tps_p50: t.tps_p50,
        samples: t.samples_in_window,
        measured_at: peer.last_fresh,
    });
    entry.filter(fresh).or(reported.filter(fresh))
}

fn judge(m: &Measured, t: Targets) -> SlaStatus {
    match (
        m.ttft_ms_p50 <= t.ttft_ms_p50_max,
        m.tps_p50 >= t.tps_p50_min,
    ) {
        (true, true) => SlaStatus::MeetsSla,
        (false, true) => SlaStatus::TtftTooHigh,
        (true, false) => SlaStatus::TpsTooLow,
        (false, false) => SlaStatus::BothTooLow,
    }
}

fn misses(status: SlaStatus) -> u8 {
    match status {
        SlaStatus::BothTooLow => 2,
        SlaStatus::TtftTooHigh | SlaStatus::TpsTooLow => 1,
        _ => 0,
    }
}

/// How far from the targets, as a ratio: ≤ 1 passes on both axes, 2 is "twice too slow".
fn shortfall(m: &Measured, t: Targets) -> f64 {
    (m.ttft_ms_p50 / t.ttft_ms_p50_max).max(t.tps_p50_min / m.tps_p50)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: u64, ttft_ms: f64, tps: f64) -> Sample {
        Sample {
            at: Timestamp::from_secs(at_s),
            ttft_ms,
            tps,
            completion_tokens: 100,
        }
    }

    #[test]
    fn entry_samples_date_each_measurement_by_its_newest_sample() {
        let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
        let mut e = EntrySamples::default();
        e.record(a, "m", sample(100, 80.0, 40.0));
        e.record(a, "m", sample(50, 90.0, 42.0)); // arrives late, is older
        e.record(b, "m", sample(10, 24_925.0, 1.09));
        let m = e.measurements(Timestamp::from_secs(200));
        let ma = m[&(a, "m".to_string())];
        assert_eq!(ma.measured_at, Timestamp::from_secs(100));
        assert_eq!((ma.summary.samples, ma.summary.ttft_ms_p50), (2, 85.0));
        assert_eq!(m[&(b, "m".to_string())].summary.tps_p50, 1.09);
        // An hour after b's only sample, b has no measurement and its window is dropped.
        e.prune(Timestamp::from_secs(3_611));
        let m = e.measurements(Timestamp::from_secs(3_611));
        assert_eq!(m.keys().map(|(p, _)| *p).collect::<Vec<_>>(), [a]);
        assert_eq!(e.windows.len(), 1);
    }
}
