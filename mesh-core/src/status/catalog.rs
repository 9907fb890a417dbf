//! The `/api/models` catalog (SPEC §4, §5): one row per model the mesh knows, with how it is
//! served, whether it fits, and how fast it runs through the mesh against the same peer's
//! native llama-server.

use super::LocalFacts;
use super::classify::{Classifier, Topology};
use crate::election::{can_hold_solo, min_vram_for_solo};
use crate::peer::{GB, ModelName, ModelTiming, NativeBaseline, Role};
use crate::sla::Tier;
use crate::view::{KnownPeer, MeshView};
use serde::{Deserialize, Serialize};

/// Mesh efficiency of at least this is green ...
pub const EFFICIENCY_GREEN: f64 = 0.80;
/// ... at least this amber, below it red.
pub const EFFICIENCY_AMBER: f64 = 0.50;

/// The whole `/api/models` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogPayload {
    /// Daily-driver rows first, then capacity, then experimental; by name within a tier.
    pub models: Vec<CatalogRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogRow {
    pub name: ModelName,
    pub tier: Tier,
    /// GGUF size; `null` when no peer has scanned it.
    pub size_gb: Option<f64>,
    /// Peers serving it: its hosts, or every member of its pipeline.
    pub node_count: u32,
    pub split_kind: SplitKind,
    pub mesh_fit: MeshFit,
    /// Through-mesh and native figures are the same peer's: the host with the most samples.
    pub through_tps_p50: Option<f64>,
    pub native_tps_p50: Option<f64>,
    pub mesh_efficiency: MeshEfficiency,
    /// Through-mesh TTFT minus native TTFT: for solo serving, most of the mesh's cost.
    pub ttft_overhead_ms: Option<f64>,
    pub ttft_ms_p50: Option<f64>,
    pub native_ttft_ms_p50: Option<f64>,
    /// When the mesh first served it (Unix seconds).
    pub first_served_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitKind {
    /// No peer routes it.
    Cold,
    /// One host serves it end to end.
    Solo,
    /// One host serves it with layer workers (a genuine pipeline, per the classifier's gates).
    Pipeline,
    /// Several independent hosts each serve it whole.
    MultiHost,
}

/// Whether the model can be served with the memory in the mesh (`1.1 × size` needed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshFit {
    pub fits_on_largest_node: bool,
    pub fits_pooled: bool,
    /// Fast memory of every non-client peer.
    pub pooled_vram_gb: f64,
    /// `null` when the size is unknown (then nothing fits).
    pub needed_vram_gb: Option<f64>,
}

/// Through-mesh tok/s ÷ native tok/s of the same peer and model, banded. A row without both
/// numbers says so instead of looking slow.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "band", rename_all = "snake_case")]
pub enum MeshEfficiency {
    /// ≥ 80 %.
    Green {
        ratio: f64,
    },
    /// 50–80 %.
    Amber {
        ratio: f64,
    },
    /// < 50 %.
    Red {
        ratio: f64,
    },
    NoMeasurementYet,
}

impl MeshEfficiency {
    pub fn from_tps(through_tps: Option<f64>, native_tps: Option<f64>) -> Self {
        let (Some(through), Some(native)) = (through_tps, native_tps) else {
            return MeshEfficiency::NoMeasurementYet;
        };
        // A zero, negative or NaN baseline is no measurement.
        if native.is_nan() || native <= 0.0 || !through.is_finite() {
            return MeshEfficiency::NoMeasurementYet;
        }
        let ratio = through / native;
        if ratio >= EFFICIENCY_GREEN {
            MeshEfficiency::Green { ratio }
        } else if ratio >= EFFICIENCY_AMBER {
            MeshEfficiency::Amber { ratio }
        } else {
            MeshEfficiency::Red { ratio }
        }
    }
}

/// Builds the catalog from `view` and this node's own facts; `tier_of` maps a model name to its
/// tier (the `sla` tier catalog with config overrides).
pub fn catalog_payload(
    view: &MeshView,
    local: &LocalFacts,
    tier_of: &dyn Fn(&str) -> Tier,
) -> CatalogPayload {
    let classifier = Classifier::new(view);
    let contributors: Vec<&KnownPeer> = view
        .peers
        .iter()
        .filter(|p| !matches!(p.announcement.role, Role::Client))
        .collect();
    let pooled_bytes = contributors
        .iter()
        .map(|p| p.announcement.fast_memory_bytes)
        .fold(0u64, u64::saturating_add);

    let mut models: Vec<CatalogRow> = classifier
        .topologies
        .iter()
        .map(|(name, topology)| {
            let size = view.model_size(name);
            let needed = size.and_then(min_vram_for_solo);
            let (timing, baseline) = reference_measurements(view, local, name, topology);
            let through_tps = timing.map(|t| t.tps_p50);
            let native_tps = baseline.map(|b| b.native_tps_p50);
            let ttft = timing.map(|t| t.ttft_ms_p50);
            let native_ttft = baseline.map(|b| b.native_ttft_ms_p50);
            let (split_kind, node_count) = match (&topology.pipeline, topology.hosts.len()) {
                (_, 0) => (SplitKind::Cold, 0),
                (Some(pipe), _) => (SplitKind::Pipeline, pipe.members.len()),
                (None, 1) => (SplitKind::Solo, 1),
                (None, n) => (SplitKind::MultiHost, n),
            };
            CatalogRow {
                name: name.clone(),
                tier: tier_of(name),
                size_gb: size.map(|s| s as f64 / GB),
                node_count: u32::try_from(node_count).unwrap_or(u32::MAX),
                split_kind,
                mesh_fit: MeshFit {
                    fits_on_largest_node: contributors
                        .iter()
                        .any(|p| can_hold_solo(p.announcement.fast_memory_bytes, size)),
                    fits_pooled: needed.is_some_and(|n| pooled_bytes >= n),
                    pooled_vram_gb: pooled_bytes as f64 / GB,
                    needed_vram_gb: needed.map(|n| n as f64 / GB),
                },
                through_tps_p50: through_tps,
                native_tps_p50: native_tps,
                mesh_efficiency: MeshEfficiency::from_tps(through_tps, native_tps),
                ttft_overhead_ms: ttft.zip(native_ttft).map(|(t, n)| t - n),
                ttft_ms_p50: ttft,
                native_ttft_ms_p50: native_ttft,
                first_served_at: local.first_served_unix_secs.get(name).copied(),
            }
        })
        .collect();
    models.sort_by(|a, b| a.tier.cmp(&b.tier).then_with(|| a.name.cmp(&b.name)));
    CatalogPayload { models }
}

/// The through-mesh timing and native baseline of the model's best-measured host (most samples
/// in the window, then one that has a baseline, then the lowest id). This node's own numbers
/// come from its local facts, which are fresher than its last announcement.
fn reference_measurements<'a>(
    view: &MeshView,
    local: &'a LocalFacts,
    model: &str,
    topology: &Topology<'a>,
) -> (Option<&'a ModelTiming>, Option<&'a NativeBaseline>) {
    let mut best: Option<(u32, bool, Option<&ModelTiming>, Option<&NativeBaseline>)> = None;
    for host in &topology.hosts {
        let (timings, baselines) = if host.id() == view.me {
            (&local.timings, &local.native_baselines)
        } else {
            (
                &host.announcement.model_timings,
                &host.announcement.native_baselines,
            )
        };
        let timing = timings.iter().find(|t| t.model == model);
        let baseline = baselines.iter().find(|b| b.model == model);
        let key = (
            timing.map_or(0, |t| t.samples_in_window),
            baseline.is_some(),
        );
        if best.is_none_or(|(s, b, _, _)| key > (s, b)) {
            best = Some((key.0, key.1, timing, baseline));
        }
    }
    best.map_or((None, None), |(_, _, t, b)| (t, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efficiency_bands_are_green_from_80_amber_from_50_red_below() {
        let band = |t, n| MeshEfficiency::from_tps(Some(t), Some(n));
        assert_eq!(band(80.0, 100.0), MeshEfficiency::Green { ratio: 0.8 });
        assert!(matches!(band(79.9, 100.0), MeshEfficiency::Amber { .. }));
        assert_eq!(band(50.0, 100.0), MeshEfficiency::Amber { ratio: 0.5 });
        assert!(matches!(band(49.9, 100.0), MeshEfficiency::Red { .. }));
        // Phase 4: 45.26 tok/s through the mesh, 77.80 native.
        assert!(matches!(
            band(45.26, 77.80),
            MeshEfficiency::Amber { ratio } if (ratio - 0.5817).abs() < 1e-4
        ));
    }

    #[test]
    fn no_baseline_is_no_measurement_yet_not_slow() {
        assert_eq!(
            MeshEfficiency::from_tps(Some(45.26), None),
            MeshEfficiency::NoMeasurementYet
        );
        assert_eq!(
            MeshEfficiency::from_tps(None, Some(77.8)),
            MeshEfficiency::NoMeasurementYet
        );
        assert_eq!(
            MeshEfficiency::from_tps(Some(1.0), Some(0.0)),
            MeshEfficiency::NoMeasurementYet
        );
        assert_eq!(
            serde_json::to_value(MeshEfficiency::NoMeasurementYet).unwrap(),
            serde_json::json!({"band": "no_measurement_yet"})
        );
        assert_eq!(
            serde_json::to_value(MeshEfficiency::Red { ratio: 0.25 }).unwrap(),
            serde_json::json!({"band": "red", "ratio": 0.25})
        );
    }
}
