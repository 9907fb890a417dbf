//! What a peer says about itself: the [`PeerAnnouncement`] every peer publishes (signed, by the
//! `gossip` machine) and relays for others, and the value types inside it.

use crate::gossip::beat::BeatKey;
use crate::id::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A model's name as the mesh knows it: the GGUF file stem, e.g. `Qwen3-8B-Q4_K_M`.
pub type ModelName = String;

pub const GB: f64 = 1e9;
pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * MIB;

/// The compute backend llama.cpp runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Metal,
    Cuda,
    Rocm,
    Vulkan,
    Cpu,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Metal => "metal",
            Backend::Cuda => "cuda",
            Backend::Rocm => "rocm",
            Backend::Vulkan => "vulkan",
            Backend::Cpu => "cpu",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a peer does in the mesh right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Contributes memory; may run `rpc-server` for an elected split host, or wait as standby.
    Worker,
    /// Runs `llama-server` for at least one model and accepts tunnelled HTTP on the mesh.
    Host { http_port: u16 },
    /// Consumes the mesh (entry nodes, API clients); serves nothing.
    Client,
}

/// Through-mesh timing of one model on the announcing peer (rolling 1 h window).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelTiming {
    pub model: ModelName,
    pub tps_p50: f64,
    pub ttft_ms_p50: f64,
    pub samples_in_window: u32,
}

/// Demand an entry saw for one model (SPEC §3 duplicate hosts): requests it routed in the last
/// minute and distinct callers in the last few minutes. Every node sums these over the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDemand {
    pub model: ModelName,
    pub clients: u32,
    pub requests_per_min: f64,
}

/// Identity of a model as served: from the fixed temperature-0 probe (SPEC §7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Hex SHA-256 of the greedy-decoded output text.
    pub output_hash: String,
    /// The first (up to 32) generated token ids.
    pub token_ids: Vec<u32>,
    /// Per position, the top-k candidate token ids when the backend reports them.
    pub top_k: Vec<Vec<u32>>,
}

/// The announcing peer's own llama-server measured with no mesh layer in the path (SPEC §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NativeBaseline {
    pub model: ModelName,
    pub native_tps_p50: f64,
    pub native_ttft_ms_p50: f64,
    pub measured_at_unix_secs: u64,
    /// How many samples survived (≤ 3); partial sets are published honestly.
    pub samples: u32,
    pub backend: Backend,
    pub fingerprint: Option<Fingerprint>,
}

/// The announcer's measured round-trip time to another peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RttHint {
    pub peer: PeerId,
    pub rtt_ms: u32,
}

/// A pipeline the announcing host is actually running (not merely planned): `llama-server --rpc`
/// with these workers' `rpc-server`s holding layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningPipeline {
    pub model: ModelName,
    pub workers: Vec<PeerId>,
    pub total_group_memory_bytes: u64,
}

/// Everything one peer publishes about itself (SPEC §2). Signed by its origin in `gossip`.
///
/// Plain data with a fixed field order and ordered maps: its serde encoding is canonical, which is
/// what the signature covers. Do not add `skip_serializing_if` here (non-self-describing wire
/// formats depend on every field being present).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerAnnouncement {
    pub peer_id: PeerId,
    pub mesh_id: String,
    /// Runtime semver.
    pub version: String,
    /// Monotonic per origin; bumped on every change and at least every heartbeat.
    pub seq: u64,
    pub role: Role,
    pub hostname: String,
    pub backend: Backend,
    pub gpu_name: String,
    /// GPU / unified-memory budget, never including RAM offload.
    pub fast_memory_bytes: u64,
    pub system_ram_bytes: u64,
    pub mem_bandwidth_gbps: f64,
    /// Models the operator configured this peer to contribute to.
    pub requested_models: Vec<ModelName>,
    /// Models this peer advertises it will serve (election output).
    pub serving_models: Vec<ModelName>,
    /// Models actually routable here: llama-server healthy.
    pub hosted_models: Vec<ModelName>,
    /// GGUF sizes in bytes of the models this peer has on disk.
    pub model_sizes: BTreeMap<ModelName, u64>,
    /// `None` when the peer has no rpc-server at all; `Some(false)` while it is not ready.
    pub rpc_ready: Option<bool>,
    pub inflight_requests: u32,
    pub model_timings: Vec<ModelTiming>,
    /// What an entry routed lately, per model (empty on peers that route nothing).
    pub demand: Vec<ModelDemand>,
    pub native_baselines: Vec<NativeBaseline>,
    pub rtt_hints: Vec<RttHint>,
    /// Pipelines this peer hosts right now (empty unless it is a split host).
    pub pipelines: Vec<RunningPipeline>,
    /// How to reach this peer directly: opaque to the core, defined by the shell's transport
    /// (iroh: its endpoint address as JSON). Signed with the rest, so a relay cannot redirect it.
    pub dial_info: String,
    /// The end of this announcement's heartbeat hash chain (see [`crate::gossip::beat`]): set
    /// by the gossip machine when it signs, so every later beat can be checked against it.
    pub beat_anchor: BeatKey,
}

impl PeerAnnouncement {
    /// A minimal announcement: no models, no measurements. Builders fill the rest.
    pub fn new(peer_id: PeerId, mesh_id: impl Into<String>, role: Role) -> Self {
        PeerAnnouncement {
            peer_id,
            mesh_id: mesh_id.into(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            seq: 0,
            role,
            hostname: String::new(),
            backend: Backend::Cpu,
            gpu_name: String::new(),
            fast_memory_bytes: 0,
            system_ram_bytes: 0,
            mem_bandwidth_gbps: 0.0,
            requested_models: Vec::new(),
            serving_models: Vec::new(),
            hosted_models: Vec::new(),
            model_sizes: BTreeMap::new(),
            rpc_ready: None,
            inflight_requests: 0,
            model_timings: Vec::new(),
            demand: Vec::new(),
            native_baselines: Vec::new(),
            rtt_hints: Vec::new(),
            pipelines: Vec::new(),
            dial_info: String::new(),
            beat_anchor: BeatKey::default(),
        }
    }

    pub fn is_host(&self) -> bool {
        matches!(self.role, Role::Host { .. })
    }

    pub fn hosts(&self, model: &str) -> bool {
        self.hosted_models.iter().any(|m| m == model)
    }

    pub fn timing(&self, model: &str) -> Option<&ModelTiming> {
        self.model_timings.iter().find(|t| t.model == model)
    }

    pub fn baseline(&self, model: &str) -> Option<&NativeBaseline> {
        self.native_baselines.iter().find(|b| b.model == model)
    }
}
