//! The `/api/status` payload (SPEC §4): a public contract SDK callers and the web pages read.
//! Key names are fixed; optional keys are omitted when empty; `rtt_ms: null` means undialable.

use crate::peer::{Backend, ModelName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Per-model numbers, keyed by model name (ordered, so payloads are byte-stable).
pub type ByModel<T> = BTreeMap<ModelName, T>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Client,
    Standby,
    Loading,
    Serving,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRole {
    Host,
    Worker,
    Client,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServingMode {
    Solo,
    Waiting,
    SplitHost,
    SplitWorker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitRole {
    PipelineHost,
    PipelineWorker,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitGroup {
    pub model: ModelName,
    /// Short id of the pipeline host.
    pub host_id: String,
    /// Short ids of every member, host first.
    pub peer_ids: Vec<String>,
    pub total_group_vram_gb: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyVerdict {
    Match,
    Mismatch,
    Inconclusive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    Observe,
    Enforce,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyEntry {
    pub verdict: VerifyVerdict,
    /// Fraction of compared tokens that agreed (near-ties counted as agreement).
    pub agreement: f64,
    pub compared_tokens: u32,
    pub mode: VerifyMode,
    pub checked_at_unix_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capability {
    pub backend: Backend,
    pub vram_total_mb: u64,
    pub loaded_models: Vec<ModelName>,
}

/// One row of `peers[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRow {
    /// Short id (first 10 hex chars).
    pub id: String,
    pub role: PeerRole,
    pub state: NodeState,
    pub version: String,
    pub hostname: String,
    pub vram_gb: f64,
    pub system_ram_bytes: u64,
    /// `null` when the peer is not dialable from this node.
    pub rtt_ms: Option<u32>,
    pub serving_models: Vec<ModelName>,
    pub hosted_models: Vec<ModelName>,
    pub inflight_requests: u32,
    pub capability: Capability,
    pub measured_tps_p50_by_model: ByModel<f64>,
    pub measured_ttft_ms_p50_by_model: ByModel<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub measured_samples_by_model: ByModel<u32>,
    pub native_tps_p50_by_model: ByModel<f64>,
    pub native_ttft_ms_p50_by_model: ByModel<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_mode: Option<ServingMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_role: Option<SplitRole>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_group: Option<SplitGroup>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub verify_by_model: ByModel<VerifyEntry>,
}

/// The whole `/api/status` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusPayload {
    pub version: String,
    /// Short id of this node.
    pub node_id: String,
    pub node_state: NodeState,
    pub is_host: bool,
    pub is_client: bool,
    /// Every model routable somewhere in the mesh, as this node sees it.
    pub models: Vec<ModelName>,
    pub requested_models: Vec<ModelName>,
    pub serving_models: Vec<ModelName>,
    pub hosted_models: Vec<ModelName>,
    pub my_vram_gb: f64,
    pub peers: Vec<PeerRow>,
    pub inflight_requests: u32,
    pub mesh_id: String,
    pub measured_tps_p50_by_model: ByModel<f64>,
    pub measured_ttft_ms_p50_by_model: ByModel<f64>,
    /// How many samples are behind each measured p50 (rolling 1 h window).
    pub measured_samples_by_model: ByModel<u32>,
    pub native_tps_p50_by_model: ByModel<f64>,
    pub native_ttft_ms_p50_by_model: ByModel<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub native_samples_by_model: ByModel<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub my_split_role: Option<SplitRole>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub my_split_group: Option<SplitGroup>,
}
