//! Scenario files (SPEC §10): the TOML format, parsed strictly (an unknown key is an error, not
//! ignored) and validated semantically with errors that name the file, the entry and the field.
//!
//! The types are the file format itself, so every engine (the discrete-event one here, the
//! turmoil one of issue 5) reads the same `Scenario`. Extend the format by adding optional keys
//! with defaults; never repurpose one.

mod validate;

pub use validate::{Entry, Problem, ProblemKind};

use mesh_core::Backend;
use mesh_core::election::Demand;
use mesh_core::sla::{Tier, TierCatalog};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// The master seed; `mesh-sim run --seed N` overrides it.
    pub seed: u64,
    /// Virtual time the run lasts.
    pub duration_s: f64,
    #[serde(default, rename = "model")]
    pub models: Vec<ModelSpec>,
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerSpec>,
    #[serde(default)]
    pub network: NetworkSpec,
    #[serde(default, rename = "traffic")]
    pub traffic: Vec<TrafficSpec>,
    #[serde(default, rename = "event")]
    pub events: Vec<EventSpec>,
    #[serde(default)]
    pub gossip: GossipSpec,
    #[serde(default)]
    pub verify: VerifySpec,
    #[serde(default)]
    pub check: CheckSpec,
    /// The engine that runs it when `--engine` names none (default: turmoil, the real node
    /// stack; `des` for meshes above the turmoil engine's peer limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<crate::Engine>,
}

/// A `[[model]]`: a GGUF the mesh may serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The GGUF file stem, e.g. `Qwen3-8B-Q4_K_M`.
    pub name: String,
    /// GGUF bytes / 1e9.
    pub size_gb: f64,
    /// Parameters, in billions (prefill FLOPs are 2 × params per token).
    pub params_b: f64,
    /// Service tier; absent means "from the catalog".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    /// Mixture-of-experts: parameters active per token (decode reads only those weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_params_b: Option<f64>,
    /// Transformer blocks (layer placement granularity); estimated from `params_b` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<u32>,
    /// Hidden size (activation bytes per token between pipeline stages); estimated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_length: Option<u32>,
}

/// A `[[peer]]`: one machine in the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSpec {
    pub name: String,
    /// `metal | cuda | rocm | vulkan | cpu`; required for a contributing peer.
    #[serde(default = "default_backend")]
    pub backend: Backend,
    /// Shown in status payloads, e.g. `NVIDIA GeForce RTX 4080 SUPER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_name: Option<String>,
    /// GPU / unified-memory budget, never including RAM offload.
    #[serde(default)]
    pub fast_memory_gb: f64,
    #[serde(default)]
    pub system_ram_gb: f64,
    /// Bandwidth of the fast memory (decode is bound by it).
    #[serde(default)]
    pub mem_bandwidth_gbps: f64,
    /// Bandwidth the CPU reaches in system RAM (layers that spill run at it); defaults to
    /// `mem_bandwidth_gbps` on unified memory, to a desktop's dual-channel figure otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_bandwidth_gbps: Option<f64>,
    /// Effective matrix throughput for prefill; defaults from backend and bandwidth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_tflops: Option<f64>,
    /// Models the operator configured this peer to contribute to.
    #[serde(default)]
    pub serve: Vec<String>,
    #[serde(default)]
    pub behaviour: Behaviour,
    /// `entry`: routes chats, runs the SLA gate and the audit loop. An entry with `serve` also
    /// contributes (and then audits its models against its own server: ground truth).
    #[serde(default)]
    pub role: PeerRole,
    /// When the peer joins (virtual seconds).
    #[serde(default)]
    pub join_at_s: f64,
    /// Concurrent requests llama-server serves (`--parallel`); default 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<u32>,
    /// `--max-vram-gb`: caps the memory the peer advertises (forces splits on one machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vram_gb: Option<f64>,
    /// Overrides llama.cpp's `-fitt` margin (MiB it must leave free), to replay the original's
    /// 70 %-of-VRAM misconfiguration; absent means the launch rule of SPEC §3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitt_mib: Option<u64>,
    /// Entries only: an external provider's API key is configured, so the SLA gate may fall
    /// back to it (SPEC §6; the provider is OpenRouter with the default model map).
    #[serde(default)]
    pub fallback: bool,
}

fn default_backend() -> Backend {
    Backend::Cpu
}

impl PeerSpec {
    pub fn is_entry(&self) -> bool {
        self.role == PeerRole::Entry
    }

    /// Serves models (contributors, and entries with `serve`).
    pub fn contributes(&self) -> bool {
        !self.serve.is_empty()
    }
}

/// What a peer really does with the requests it takes (SPEC §7, issue 5).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    #[default]
    Honest,
    /// Serves a cheaper quantisation of the advertised model.
    CheaperQuant,
    /// Serves a smaller model of the same family.
    SmallerModel,
    /// Returns pre-written text.
    CannedText,
    /// Publishes a replayed fingerprint, serves something else.
    ReplayFingerprint,
    /// Serves honestly only when it recognises a probe.
    ProbeAware,
    /// Announces more fast memory than it has.
    InflateMemory,
    /// Announces better timings than it measured.
    InflateTimings,
}

impl Behaviour {
    pub fn as_str(self) -> &'static str {
        match self {
            Behaviour::Honest => "honest",
            Behaviour::CheaperQuant => "cheaper_quant",
            Behaviour::SmallerModel => "smaller_model",
            Behaviour::CannedText => "canned_text",
            Behaviour::ReplayFingerprint => "replay_fingerprint",
            Behaviour::ProbeAware => "probe_aware",
            Behaviour::InflateMemory => "inflate_memory",
            Behaviour::InflateTimings => "inflate_timings",
        }
    }
}

/// A peer's part in the mesh.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PeerRole {
    /// Contributes memory and serves models.
    #[default]
    Contributor,
    /// A public entry: no model; runs the SLA gate and the audit loop; traffic arrives here.
    Entry,
}

impl PeerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRole::Contributor => "contributor",
            PeerRole::Entry => "entry",
        }
    }
}

/// `[network]`: the default for every link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// One-way delay of each link, drawn uniformly from `[lo, hi]` per link (RTT is twice it).
    #[serde(default = "default_latency")]
    pub latency_ms: [f64; 2],
    /// Packet loss probability per link.
    #[serde(default)]
    pub loss: f64,
    /// Throughput of each link (activations between pipeline stages cross it).
    #[serde(default = "default_bandwidth")]
    pub bandwidth_mbps: f64,
}

fn default_latency() -> [f64; 2] {
    [1.0, 1.0]
}

fn default_bandwidth() -> f64 {
    100.0
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            latency_ms: default_latency(),
            loss: 0.0,
            bandwidth_mbps: default_bandwidth(),
        }
    }
}

/// A `[[traffic]]` source: Poisson arrivals of chats for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSpec {
    pub model: String,
    pub rate_per_min: f64,
    pub prompt_tokens: u32,
    /// Each request asks for this many tokens and gets between half and all of them.
    pub max_tokens: u32,
    /// The entry peer clients send to; default the first entry (or, with none, the host's own API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// Arrivals start at this virtual time.
    #[serde(default)]
    pub start_s: f64,
    /// Every chat must end (tokens or a typed error) within this long of its arrival (a checker
    /// rule); default: the router's first-byte timeout plus 10 s per requested token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_s: Option<f64>,
}

impl TrafficSpec {
    /// The deadline of each chat of this source.
    pub fn deadline(&self) -> f64 {
        self.deadline_s.unwrap_or_else(|| {
            mesh_core::routing::RouteConfig::default().first_byte_timeout_secs as f64
                + 10.0 * f64::from(self.max_tokens)
        })
    }
}

/// `[gossip]`: overrides of mesh-core's gossip configuration (defaults: `gossip::Config`'s) and
/// of how the simulated transport notices dead connections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GossipSpec {
    /// Anti-entropy period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick_s: Option<f64>,
    /// Peers a digest goes to each tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_entropy_peers: Option<usize>,
    /// Peers news is pushed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rumor_fanout: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_fanout: Option<usize>,
    /// How long until a connection to a dead or cut-off peer is noticed (QUIC keep-alive), and
    /// until a probe of one gives up. Default 2 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_timeout_ms: Option<f64>,
}

/// `[verify]`: the entries' audit loop (SPEC §7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    /// `observe` (default: verdicts shown, routing untouched) or `enforce`.
    #[serde(default = "default_verify_mode")]
    pub mode: mesh_core::status::VerifyMode,
    /// Mean seconds between audits (mesh-core's default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_s: Option<f64>,
    /// Pin every model's honest fixed-probe fingerprint (one per backend) as the operator's
    /// reference data, so entries that do not serve a model can still check identities.
    #[serde(default)]
    pub references: bool,
}

fn default_verify_mode() -> mesh_core::status::VerifyMode {
    mesh_core::status::VerifyMode::Observe
}

impl VerifySpec {
    /// An entry's audit configuration (both engines build it here): interval, mode, and the
    /// pinned reference fingerprints of `models` when asked for.
    pub fn audit_config<'a>(
        &self,
        models: impl IntoIterator<Item = &'a str>,
    ) -> mesh_core::verify::AuditConfig {
        use mesh_core::Backend;
        let mut config = mesh_core::verify::AuditConfig::default();
        if let Some(v) = self.interval_s {
            config.interval = std::time::Duration::from_secs_f64(v);
        }
        config.enforcement.mode = self.mode;
        if self.references {
            for m in models {
                let refs = [
                    Backend::Metal,
                    Backend::Cuda,
                    Backend::Rocm,
                    Backend::Vulkan,
                    Backend::Cpu,
                ]
                .iter()
                .map(|&b| crate::decode::reference_fingerprint(m, b))
                .collect();
                config.references.insert(m.to_string(), refs);
            }
        }
        config
    }
}

impl Default for VerifySpec {
    fn default() -> Self {
        VerifySpec {
            mode: default_verify_mode(),
            interval_s: None,
            references: false,
        }
    }
}

/// `[check]`: the invariant checkers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// After the run, faults stop and the mesh gets up to this long (virtual seconds) to
    /// converge: every live peer agreeing on membership and plans. 0 skips the phase.
    #[serde(default = "default_liveness_s")]
    pub liveness_s: f64,
}

fn default_liveness_s() -> f64 {
    600.0
}

impl Default for CheckSpec {
    fn default() -> Self {
        CheckSpec {
            liveness_s: default_liveness_s(),
        }
    }
}

/// An `[[event]]`: a fault or a change at a virtual instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    pub at_s: f64,
    pub kind: EventKind,
    /// The peers it applies to: crashed, restarted, leaving, cut off (one side of a partition),
    /// healed (empty: all), or whose links change latency (empty: every link).
    #[serde(default)]
    pub peers: Vec<String>,
    /// `set_latency` only: the new one-way delay, fixed or a `[lo, hi]` range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<LatencySpec>,
    /// `set_latency` only: the new loss probability of those links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Crash,
    Restart,
    Leave,
    Partition,
    Heal,
    SetLatency,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Crash => "crash",
            EventKind::Restart => "restart",
            EventKind::Leave => "leave",
            EventKind::Partition => "partition",
            EventKind::Heal => "heal",
            EventKind::SetLatency => "set_latency",
        }
    }
}

/// A one-way delay: `20` or `[20, 100]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LatencySpec {
    Fixed(f64),
    Range([f64; 2]),
}

impl LatencySpec {
    pub fn range(self) -> [f64; 2] {
        match self {
            LatencySpec::Fixed(v) => [v, v],
            LatencySpec::Range(r) => r,
        }
    }
}

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: cannot read the scenario: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: not a valid scenario file: {source}")]
    Parse {
        file: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{file}: {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Scenario {
    /// The demand the traffic puts on each model, as both engines feed the election: each
    /// traffic stream is one client at its rate.
    pub fn demand(&self) -> BTreeMap<String, Demand> {
        let mut demand: BTreeMap<String, Demand> = BTreeMap::new();
        for t in &self.traffic {
            let d = demand.entry(t.model.clone()).or_default();
            d.clients += 1;
            d.requests_per_min += t.rate_per_min;
        }
        demand
    }

    /// The tier catalog with the file's per-model `tier` overrides.
    pub fn tier_catalog(&self) -> TierCatalog {
        TierCatalog::with_overrides(
            self.models
                .iter()
                .filter_map(|m| m.tier.map(|t| (m.name.clone(), t))),
        )
    }

    /// Reads, parses and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Scenario::parse(&text, path)
    }

    /// Parses and validates scenario text; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            file: file.to_path_buf(),
            source: Box::new(e),
        })?;
        let problems = validate::check(&scenario);
        if problems.is_empty() {
            Ok(scenario)
        } else {
            Err(ScenarioError::Invalid {
                file: file.to_path_buf(),
                problems,
            })
        }
    }

    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn peer_index(&self, name: &str) -> Option<usize> {
        self.peers.iter().position(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests;
