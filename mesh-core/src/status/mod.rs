//! Status classifier and the `/api/status` / `/api/models` payloads (SPEC §4).
//!
//! [`status_payload`] and [`catalog_payload`] are pure functions of a [`MeshView`] and this
//! node's [`LocalFacts`]; [`classify_peer`] is the per-peer classification both use. Peers are
//! iterated in id order and every map is ordered, so the same inputs give the same bytes.

mod catalog;
mod classify;
pub mod payload;

pub use catalog::{
    CatalogPayload, CatalogRow, EFFICIENCY_AMBER, EFFICIENCY_GREEN, MeshEfficiency, MeshFit,
    SplitKind, catalog_payload,
};
pub use classify::{PeerStatus, classify_peer};
pub use payload::*;

use crate::id::PeerId;
use crate::peer::{GB, MIB, ModelName, ModelTiming, NativeBaseline, Role};
use crate::view::{KnownPeer, MeshView};
use classify::Classifier;
use std::collections::BTreeMap;

/// What only this node knows, fresher than its own last announcement.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalFacts {
    /// This node's through-mesh p50s (`samples::ModelSamples::timings(now)`).
    pub timings: Vec<ModelTiming>,
    /// This node's native baselines.
    pub native_baselines: Vec<NativeBaseline>,
    /// This node's verification verdicts, per peer and model.
    pub verify: BTreeMap<PeerId, BTreeMap<ModelName, VerifyEntry>>,
    pub inflight_requests: u32,
    /// First-serve milestones: when each model was first served (Unix seconds).
    pub first_served_unix_secs: BTreeMap<ModelName, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("the mesh view has no announcement of its own node {0}")]
    MissingSelf(PeerId),
}

/// The `/api/status` body of `view.me`. Its own row is the top level (`peers[]` holds the
/// others); its own numbers come from `local`.
pub fn status_payload(view: &MeshView, local: &LocalFacts) -> Result<StatusPayload, StatusError> {
    let me = view.me().ok_or(StatusError::MissingSelf(view.me))?;
    let a = &me.announcement;
    let classifier = Classifier::new(view);
    let mine = classifier.peer(me);
    let mut models: Vec<ModelName> = view
        .peers
        .iter()
        .filter(|p| p.announcement.is_host() && p.rtt_ms.is_some())
        .flat_map(|p| p.announcement.hosted_models.iter().cloned())
        .collect();
    models.sort();
    models.dedup();
    let measured = Measured::new(&local.timings, &local.native_baselines);
    Ok(StatusPayload {
        version: a.version.clone(),
        node_id: me.id().short(),
        node_state: mine.state,
        is_host: a.is_host(),
        is_client: matches!(a.role, Role::Client),
        models,
        requested_models: a.requested_models.clone(),
        serving_models: a.serving_models.clone(),
        hosted_models: a.hosted_models.clone(),
        my_vram_gb: a.fast_memory_bytes as f64 / GB,
        peers: view
            .peers
            .iter()
            .filter(|p| p.id() != view.me)
            .map(|p| peer_row(p, classifier.peer(p), local))
            .collect(),
        inflight_requests: local.inflight_requests,
        mesh_id: a.mesh_id.clone(),
        measured_tps_p50_by_model: measured.tps,
        measured_ttft_ms_p50_by_model: measured.ttft_ms,
        measured_samples_by_model: measured.samples,
        native_tps_p50_by_model: measured.native_tps,
        native_ttft_ms_p50_by_model: measured.native_ttft_ms,
        native_samples_by_model: measured.native_samples,
        my_split_role: mine.split_role,
        my_split_group: mine.split_group,
    })
}

fn peer_row(p: &KnownPeer, status: PeerStatus, local: &LocalFacts) -> PeerRow {
    let a = &p.announcement;
    let measured = Measured::new(&a.model_timings, &a.native_baselines);
    PeerRow {
        id: p.id().short(),
        role: match a.role {
            Role::Host { .. } => PeerRole::Host,
            Role::Worker => PeerRole::Worker,
            Role::Client => PeerRole::Client,
        },
        state: status.state,
        version: a.version.clone(),
        hostname: a.hostname.clone(),
        vram_gb: a.fast_memory_bytes as f64 / GB,
        system_ram_bytes: a.system_ram_bytes,
        rtt_ms: p.rtt_ms,
        serving_models: a.serving_models.clone(),
        hosted_models: a.hosted_models.clone(),
        inflight_requests: a.inflight_requests,
        capability: Capability {
            backend: a.backend,
            vram_total_mb: a.fast_memory_bytes / MIB,
            loaded_models: a.hosted_models.clone(),
        },
        measured_tps_p50_by_model: measured.tps,
        measured_ttft_ms_p50_by_model: measured.ttft_ms,
        measured_samples_by_model: measured.samples,
        native_tps_p50_by_model: measured.native_tps,
        native_ttft_ms_p50_by_model: measured.native_ttft_ms,
        serving_mode: status.serving_mode,
        split_role: status.split_role,
        split_group: status.split_group,
        verify_by_model: local.verify.get(&p.id()).cloned().unwrap_or_default(),
    }
}

/// One peer's published numbers as the payload's per-model maps.
struct Measured {
    tps: ByModel<f64>,
    ttft_ms: ByModel<f64>,
    samples: ByModel<u32>,
    native_tps: ByModel<f64>,
    native_ttft_ms: ByModel<f64>,
    native_samples: ByModel<u32>,
}

impl Measured {
    fn new(timings: &[ModelTiming], baselines: &[NativeBaseline]) -> Self {
        let by = |f: &dyn Fn(&ModelTiming) -> f64| {
            timings.iter().map(|t| (t.model.clone(), f(t))).collect()
        };
        let native = |f: &dyn Fn(&NativeBaseline) -> f64| {
            baselines.iter().map(|b| (b.model.clone(), f(b))).collect()
        };
        Measured {
            tps: by(&|t| t.tps_p50),
            ttft_ms: by(&|t| t.ttft_ms_p50),
            samples: timings
                .iter()
                .map(|t| (t.model.clone(), t.samples_in_window))
                .collect(),
            native_tps: native(&|b| b.native_tps_p50),
            native_ttft_ms: native(&|b| b.native_ttft_ms_p50),
            native_samples: baselines
                .iter()
                .map(|b| (b.model.clone(), b.samples))
                .collect(),
        }
    }
}
