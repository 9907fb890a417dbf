//! GPU profiles (SPEC §10): where a model's weights land on a device or a pipeline, and what that
//! costs in time to first token and decode speed.
//!
//! - **Placement**: llama.cpp's fitter fills fast memory (less the `-fitt` margin it must leave
//!   free and the KV/compute buffers) layer by layer; the remaining layers run on the CPU from
//!   system RAM, and what RAM cannot hold is paged from disk (mmap spill). A pipeline splits the
//!   weights across its members in proportion to their fast memory (`--tensor-split`).
//! - **Decode** is memory-bandwidth-bound: each token reads every active weight once, at the
//!   bandwidth of wherever it lives (fast memory × a backend efficiency, RAM × the CPU's
//!   efficiency, disk page-in), plus, per remote pipeline stage, RPC dispatch, round trips and the
//!   activations over the link.
//! - **Prefill** is compute-bound: 2 × active params FLOPs per prompt token at the device's
//!   effective throughput (the CPU's for CPU-resident layers), plus one read of the weights per
//!   micro-batch, plus the same pipeline costs per micro-batch.
//! - **Through the mesh** adds the mesh layers' measured cost (tunnel, auth gateway, proxy).
//!
//! Every constant here is calibrated against SPEC §11 (see `calibration` and CALIBRATION.md);
//! change one only together with that table.

use crate::scenario::{ModelSpec, PeerSpec};
use mesh_core::Backend;
use serde::Serialize;

/// llama-server's own per-request cost before the first token: HTTP, chat template, tokenising,
/// sampling, the first SSE flush.
pub const REQUEST_OVERHEAD_MS: f64 = 30.0;
/// KV cache and compute buffers a loaded model needs beside its weights: fixed part…
pub const RUNTIME_OVERHEAD_GB: f64 = 0.3;
/// …and the part proportional to the weights held.
pub const RUNTIME_OVERHEAD_FRACTION: f64 = 0.04;
/// System RAM the OS and everything else keep.
pub const OS_RESERVE_GB: f64 = 4.0;
/// Fraction of RAM bandwidth llama.cpp's CPU kernels reach on spilled layers.
pub const CPU_DECODE_EFFICIENCY: f64 = 0.5;
/// Effective prefill throughput of CPU-resident layers.
pub const CPU_TFLOPS: f64 = 1.0;
/// mmap page-in rate for weights RAM cannot hold (page faults, not sequential reads).
pub const DISK_PAGE_IN_GBPS: f64 = 1.5;
/// RAM bandwidth of a desktop with a discrete GPU when the scenario does not say (dual-channel).
pub const DEFAULT_RAM_BANDWIDTH_GBPS: f64 = 50.0;
/// Prompt tokens per forward pass during prefill (llama.cpp's default `-ub`).
pub const UBATCH_TOKENS: u32 = 512;
/// Per remote pipeline stage and forward pass: graph serialisation and dispatch over RPC
/// (upstream's 3-node split decoded at 60.2 tok/s over loopback).
pub const RPC_STAGE_OVERHEAD_MS: f64 = 6.0;
/// Link round trips per remote pipeline stage and forward pass (upstream's slope: each ms of
/// link latency cost 3 ms per token across 2 workers).
pub const RPC_ROUND_TRIPS_PER_STAGE: f64 = 1.5;
/// Activations cross the links as f32.
pub const ACTIVATION_BYTES_PER_ELEMENT: f64 = 4.0;
/// The mesh path's cost to the first token (entry tunnel, auth gateway, routing, proxy):
/// the original measured 82 ms through the mesh against 49 ms native on the same peer.
pub const MESH_PATH_TTFT_MS: f64 = 33.0;
/// The mesh path's cost per streamed token (45.26 tok/s through against 77.80 native).
pub const MESH_PATH_PER_TOKEN_MS: f64 = 9.25;
/// Decode slows by this fraction per extra sequence decoding in the same batch.
pub const BATCH_SLOWDOWN_PER_SEQUENCE: f64 = 0.1;
/// The native-baseline probe (SPEC §5): prompt size of the fixed probe, and `max_tokens`.
pub const PROBE_PROMPT_TOKENS: u32 = 32;
pub const PROBE_MAX_TOKENS: u32 = 128;
/// Loading a GGUF: read rate from disk, plus llama-server's start-up.
pub const LOAD_GBPS: f64 = 2.0;
pub const LAUNCH_S: f64 = 5.0;
const GB: f64 = 1e9;
const MIB: f64 = 1024.0 * 1024.0;

/// Decode efficiency of fast memory: achieved ÷ nominal bandwidth.
pub fn decode_efficiency(backend: Backend) -> f64 {
    match backend {
        Backend::Metal => 0.70, // M3 Pro 150 GB/s: ~21 tok/s on a 5.03 GB model
        Backend::Cuda => 0.53,  // RTX 4080 SUPER 736 GB/s: 77.8 tok/s on 5.03 GB
        Backend::Rocm => 0.50,
        Backend::Vulkan => 0.45,
        Backend::Cpu => CPU_DECODE_EFFICIENCY,
    }
}

/// Default effective prefill TFLOPS per GB/s of bandwidth (quantised matmul kernels, int8 paths
/// included), when a peer does not state `compute_tflops`.
pub fn tflops_per_gbps(backend: Backend) -> f64 {
    match backend {
        Backend::Metal => 0.05,
        Backend::Cuda => 0.15,
        Backend::Rocm => 0.10,
        Backend::Vulkan => 0.08,
        Backend::Cpu => 0.02,
    }
}

/// Request-to-request spread (log-normal sigma) of timings on this backend.
pub fn jitter_sigma(backend: Backend) -> f64 {
    match backend {
        Backend::Metal => 0.12, // command-queue and clock warm-up (15.4 / 21.1 / 37.1 tok/s)
        Backend::Cuda => 0.04,
        Backend::Rocm => 0.06,
        Backend::Vulkan => 0.08,
        Backend::Cpu => 0.06,
    }
}

/// Whether fast memory is carved out of system RAM (Apple unified memory, CPU-only).
pub fn unified_memory(backend: Backend) -> bool {
    matches!(backend, Backend::Metal | Backend::Cpu)
}

/// The `-fitt` margin (MiB llama.cpp must leave free) of a solo launch: mesh-core's launch rule.
pub fn default_fitt_margin_mib(fast_memory_gb: f64) -> f64 {
    mesh_core::launch::fit_target_mib((fast_memory_gb * GB) as u64) as f64
}

/// One machine's serving hardware.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    pub backend: Backend,
    pub fast_memory_gb: f64,
    pub system_ram_gb: f64,
    pub mem_bandwidth_gbps: f64,
    pub ram_bandwidth_gbps: f64,
    pub compute_tflops: f64,
    /// Memory llama.cpp must leave free on the device when launched solo (`-fitt`).
    pub fitt_margin_gb: f64,
}

impl Device {
    /// A device with the defaults a scenario leaves out.
    pub fn new(backend: Backend, fast_memory_gb: f64, system_ram_gb: f64, bw_gbps: f64) -> Self {
        Device {
            backend,
            fast_memory_gb,
            system_ram_gb,
            mem_bandwidth_gbps: bw_gbps,
            ram_bandwidth_gbps: if unified_memory(backend) {
                bw_gbps
            } else {
                DEFAULT_RAM_BANDWIDTH_GBPS
            },
            compute_tflops: bw_gbps * tflops_per_gbps(backend),
            fitt_margin_gb: default_fitt_margin_mib(fast_memory_gb) * MIB / GB,
        }
    }

    pub fn from_peer(p: &PeerSpec) -> Self {
        let mut d = Device::new(
            p.backend,
            p.fast_memory_gb,
            p.system_ram_gb,
            p.mem_bandwidth_gbps,
        );
        if let Some(bw) = p.ram_bandwidth_gbps {
            d.ram_bandwidth_gbps = bw;
        }
        if let Some(t) = p.compute_tflops {
            d.compute_tflops = t;
        }
        if let Some(mib) = p.fitt_mib {
            d.fitt_margin_gb = mib as f64 * MIB / GB;
        }
        d
    }
}

/// The model as the physics needs it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Model {
    pub size_gb: f64,
    pub params_b: f64,
    pub active_params_b: f64,
    pub layers: u32,
    pub embedding_length: u32,
}

impl Model {
    /// A dense model, layer count and hidden size estimated from its parameters.
    pub fn dense(size_gb: f64, params_b: f64) -> Self {
        // Decoder-only transformers have ≈ 12 × layers × hidden² parameters; layer counts grow
        // slowly with size (Qwen3-8B: 36, Qwen3-32B: 64, Llama-70B: 80).
        let layers = (20.0 * params_b.powf(0.3)).round().clamp(8.0, 128.0) as u32;
        let hidden = (params_b * 1e9 / (12.0 * f64::from(layers))).sqrt();
        Model {
            size_gb,
            params_b,
            active_params_b: params_b,
            layers,
            embedding_length: ((hidden / 128.0).round() * 128.0).max(128.0) as u32,
        }
    }

    pub fn from_spec(m: &ModelSpec) -> Self {
        let mut model = Model::dense(m.size_gb, m.params_b);
        if let Some(l) = m.layers {
            model.layers = l;
        }
        if let Some(e) = m.embedding_length {
            model.embedding_length = e;
        }
        if let Some(a) = m.active_params_b {
            model.active_params_b = a;
        }
        model
    }

    fn layer_gb(&self) -> f64 {
        self.size_gb / f64::from(self.layers)
    }

    /// Fraction of the weights one token reads (1 for dense models).
    fn active_fraction(&self) -> f64 {
        (self.active_params_b / self.params_b).clamp(0.0, 1.0)
    }

    fn activation_bytes_per_token(&self) -> f64 {
        f64::from(self.embedding_length) * ACTIVATION_BYTES_PER_ELEMENT
    }
}

/// A link between two peers as the pipeline sees it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Link {
    pub rtt_ms: f64,
    pub bandwidth_mbps: f64,
    pub loss: f64,
}

impl Link {
    /// Two processes on one machine.
    pub const LOOPBACK: Link = Link {
        rtt_ms: 0.0,
        bandwidth_mbps: 1e6,
        loss: 0.0,
    };

    /// Expected duration of one request/response exchange: a lost packet costs a retransmission
    /// timeout (≈ 1.5 RTT + 25 ms in QUIC), and either of the two packets may be lost.
    pub fn round_trip_ms(&self) -> f64 {
        self.rtt_ms + 2.0 * self.loss * (1.5 * self.rtt_ms + 25.0)
    }

    fn transfer_ms(&self, bytes: f64) -> f64 {
        bytes * 8.0 / (self.bandwidth_mbps * 1e6) * 1e3
    }
}

/// Where one device's share of the weights lives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Residency {
    pub fast_gb: f64,
    pub ram_gb: f64,
    pub disk_gb: f64,
    /// Layers on the device (fractional in a pipeline share).
    pub fast_layers: f64,
    pub cpu_layers: f64,
}

impl Residency {
    fn total_gb(&self) -> f64 {
        self.fast_gb + self.ram_gb + self.disk_gb
    }
}

/// How a model is laid out for serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementKind {
    /// Every layer in fast memory.
    Fits,
    /// Solo, with layers on the CPU from RAM and possibly paged from disk.
    MmapSpill,
    /// Layers split across several peers' devices.
    Pipeline,
}

/// One device in a serving setup and its share of the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    pub device: Device,
    pub residency: Residency,
    /// The link from the host to this stage (`None` for the host itself).
    pub link: Option<Link>,
}

/// A model laid out on one device or a pipeline: everything its timings depend on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Serving {
    pub kind: PlacementKind,
    pub model: Model,
    /// The host first, then the workers.
    pub stages: Vec<Stage>,
}

/// Time to first token and time per decoded token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timing {
    pub ttft_ms: f64,
    pub per_token_ms: f64,
}

impl Timing {
    pub fn tps(&self) -> f64 {
        1e3 / self.per_token_ms
    }

    /// The same request measured through the mesh instead of at llama-server.
    pub fn through_mesh(self) -> Timing {
        Timing {
            ttft_ms: self.ttft_ms + MESH_PATH_TTFT_MS,
            per_token_ms: self.per_token_ms + MESH_PATH_PER_TOKEN_MS,
        }
    }
}

/// Places `share_gb` of `model` on `device`. `fitt` applies the solo launch's `-fitt` margin.
fn reside(device: &Device, model: &Model, share_gb: f64, fitt: bool) -> Residency {
    let margin = if fitt { device.fitt_margin_gb } else { 0.0 };
    let layer = model.layer_gb();
    let share_layers = share_gb / layer;
    // The fitter offloads whole layers while weights plus buffers stay within the budget.
    let budget = device.fast_memory_gb - margin - RUNTIME_OVERHEAD_GB;
    let max_layers = (budget / (layer * (1.0 + RUNTIME_OVERHEAD_FRACTION))).max(0.0);
    let fast_layers = if max_layers >= share_layers {
        share_layers
    } else {
        max_layers.floor()
    };
    let fast_gb = fast_layers * layer;
    let cpu_gb = share_gb - fast_gb;
    // On unified memory the CPU's RAM is the same pool: what the GPU holds, and the margin the
    // fitter keeps free in it, are not available to the CPU-resident layers.
    let used_by_gpu = if unified_memory(device.backend) {
        fast_gb * (1.0 + RUNTIME_OVERHEAD_FRACTION) + RUNTIME_OVERHEAD_GB + margin
    } else {
        0.0
    };
    let ram_free = (device.system_ram_gb - OS_RESERVE_GB - used_by_gpu).max(0.0);
    let ram_gb = cpu_gb.min(ram_free);
    Residency {
        fast_gb,
        ram_gb,
        disk_gb: cpu_gb - ram_gb,
        fast_layers,
        cpu_layers: share_layers - fast_layers,
    }
}

/// A model served solo on one device (launched with `-fitt`).
pub fn solo(device: &Device, model: &Model) -> Serving {
    let residency = reside(device, model, model.size_gb, true);
    let kind = if residency.cpu_layers > 0.0 {
        PlacementKind::MmapSpill
    } else {
        PlacementKind::Fits
    };
    Serving {
        kind,
        model: model.clone(),
        stages: vec![Stage {
            device: device.clone(),
            residency,
            link: None,
        }],
    }
}

/// A pipeline: the host plus workers reached over `Link`s, the weights split in proportion to
/// fast memory (host included), no `-fitt` (SPEC §3).
pub fn pipeline(host: &Device, workers: &[(Device, Link)], model: &Model) -> Serving {
    let total: f64 =
        host.fast_memory_gb + workers.iter().map(|(d, _)| d.fast_memory_gb).sum::<f64>();
    let stage = |device: &Device, link: Option<Link>| {
        let share = model.size_gb * device.fast_memory_gb / total;
        Stage {
            device: device.clone(),
            residency: reside(device, model, share, false),
            link,
        }
    };
    let mut stages = vec![stage(host, None)];
    stages.extend(workers.iter().map(|(d, l)| stage(d, Some(*l))));
    Serving {
        kind: PlacementKind::Pipeline,
        model: model.clone(),
        stages,
    }
}

impl Serving {
    /// Timing at llama-server itself (what a native baseline measures) for a prompt of
    /// `prompt_tokens`.
    pub fn native(&self, prompt_tokens: u32) -> Timing {
        let m = &self.model;
        let active = m.active_fraction();
        let ubatches = f64::from(prompt_tokens.div_ceil(UBATCH_TOKENS).max(1));
        let mut per_token = 0.0;
        let mut ttft = REQUEST_OVERHEAD_MS;
        for s in &self.stages {
            let r = &s.residency;
            let d = &s.device;
            let read_ms = active
                * (r.fast_gb / (d.mem_bandwidth_gbps * decode_efficiency(d.backend))
                    + r.ram_gb / (d.ram_bandwidth_gbps * CPU_DECODE_EFFICIENCY)
                    + r.disk_gb / DISK_PAGE_IN_GBPS)
                * 1e3;
            let flops = 2.0 * m.active_params_b * 1e9 * f64::from(prompt_tokens);
            let share = r.total_gb() / m.size_gb;
            let fast_part = if r.total_gb() > 0.0 {
                r.fast_gb / r.total_gb()
            } else {
                1.0
            };
            let compute_ms = flops
                * share
                * (fast_part / (d.compute_tflops * 1e12) + (1.0 - fast_part) / (CPU_TFLOPS * 1e12))
                * 1e3;
            per_token += read_ms;
            ttft += ubatches * read_ms + compute_ms;
            if let Some(link) = s.link {
                let exchange =
                    RPC_STAGE_OVERHEAD_MS + RPC_ROUND_TRIPS_PER_STAGE * link.round_trip_ms();
                // Activations go to the stage and come back.
                let act = 2.0 * m.activation_bytes_per_token();
                per_token += exchange + link.transfer_ms(act);
                ttft += ubatches * exchange + link.transfer_ms(act * f64::from(prompt_tokens));
            }
        }
        Timing {
            ttft_ms: ttft,
            per_token_ms: per_token,
        }
    }

    /// Timing of a request that came through the mesh.
    pub fn through_mesh(&self, prompt_tokens: u32) -> Timing {
        self.native(prompt_tokens).through_mesh()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtx_4080_super() -> Device {
        Device::new(Backend::Cuda, 17.2, 32.0, 736.0)
    }

    fn qwen3_8b() -> Model {
        Model {
            layers: 36,
            ..Model::dense(5.03, 8.19)
        }
    }

    #[test]
    fn dense_estimates_are_close_to_real_architectures() {
        let m = Model::dense(5.03, 8.19);
        assert!((34..=40).contains(&m.layers), "{}", m.layers);
        assert!((3_800..=4_600).contains(&m.embedding_length));
        let m = Model::dense(42.5, 70.6);
        assert!((70..=84).contains(&m.layers), "{}", m.layers);
        assert!((7_600..=9_200).contains(&m.embedding_length));
    }

    #[test]
    fn a_model_well_inside_fast_memory_fits() {
        let s = solo(&rtx_4080_super(), &qwen3_8b());
        assert_eq!(s.kind, PlacementKind::Fits);
        assert_eq!(s.stages[0].residency.cpu_layers, 0.0);
    }

    #[test]
    fn decode_is_bound_by_memory_bandwidth() {
        let model = qwen3_8b();
        let slow = solo(&Device::new(Backend::Cuda, 17.2, 32.0, 368.0), &model).native(32);
        let fast = solo(&rtx_4080_super(), &model).native(32);
        assert!((fast.tps() / slow.tps() - 2.0).abs() < 1e-9);
        // A model twice the size decodes at half the speed on the same device.
        let big = Model {
            size_gb: 10.06,
            ..qwen3_8b()
        };
        let big = solo(&rtx_4080_super(), &big).native(32);
        assert!((fast.tps() / big.tps() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn prefill_grows_with_the_prompt_and_decode_does_not() {
        let s = solo(&rtx_4080_super(), &qwen3_8b());
        let short = s.native(32);
        let long = s.native(2_000);
        assert!(long.ttft_ms > 3.0 * short.ttft_ms);
        assert_eq!(long.per_token_ms, short.per_token_ms);
    }

    #[test]
    fn qwen3_32b_spills_on_a_17_gb_cuda_peer_and_decodes_at_ram_speed() {
        let model = Model {
            layers: 64,
            ..Model::dense(19.76, 32.8)
        };
        let s = solo(&rtx_4080_super(), &model);
        assert_eq!(s.kind, PlacementKind::MmapSpill);
        let r = s.stages[0].residency;
        assert!(r.cpu_layers >= 10.0 && r.fast_layers >= 40.0, "{r:?}");
        assert_eq!(r.disk_gb, 0.0);
        let t = s.native(32);
        assert!(t.tps() < 6.0 && t.tps() > 3.0, "{}", t.tps());
    }

    #[test]
    fn fitt_of_70_percent_of_vram_pushes_22_of_36_layers_to_cpu_on_an_m3_pro() {
        let mut m3 = Device::new(Backend::Metal, 12.0 * 1.073_741_824, 18.0, 150.0);
        let model = qwen3_8b();
        let fixed = solo(&m3, &model);
        assert_eq!(fixed.kind, PlacementKind::Fits);
        m3.fitt_margin_gb = 9.7 * 1.073_741_824;
        let broken = solo(&m3, &model);
        assert_eq!(broken.kind, PlacementKind::MmapSpill);
        assert_eq!(broken.stages[0].residency.cpu_layers, 22.0);
        assert!(broken.native(32).tps() < 0.1 * fixed.native(32).tps());
    }

    #[test]
    fn without_ram_for_the_spill_weights_page_from_disk() {
        let model = Model {
            layers: 64,
            ..Model::dense(19.76, 32.8)
        };
        let small_ram = Device::new(Backend::Cuda, 17.2, 8.0, 736.0);
        let s = solo(&small_ram, &model);
        assert!(s.stages[0].residency.disk_gb > 0.0);
        assert!(s.native(32).tps() < solo(&rtx_4080_super(), &model).native(32).tps());
    }

    #[test]
    fn each_ms_of_link_rtt_costs_every_remote_stage_per_token() {
        let model = qwen3_8b();
        let d = rtx_4080_super();
        let at = |rtt_ms| {
            let link = Link {
                rtt_ms,
                ..Link::LOOPBACK
            };
            pipeline(&d, &[(d.clone(), link), (d.clone(), link)], &model)
                .native(32)
                .per_token_ms
        };
        let slope = (at(30.0) - at(0.0)) / 30.0;
        assert!((slope - 2.0 * RPC_ROUND_TRIPS_PER_STAGE).abs() < 1e-9);
    }

    #[test]
    fn pipeline_shares_follow_fast_memory() {
        let model = Model::dense(42.5, 70.6);
        let a = Device::new(Backend::Metal, 14.5, 24.0, 120.0);
        let b = rtx_4080_super();
        let s = pipeline(&a, &[(b, Link::LOOPBACK)], &model);
        let (ra, rb) = (s.stages[0].residency, s.stages[1].residency);
        assert!((ra.total_gb() + rb.total_gb() - 42.5).abs() < 1e-9);
        assert!((ra.total_gb() / rb.total_gb() - 14.5 / 17.2).abs() < 1e-9);
    }

    #[test]
    fn loss_makes_round_trips_longer() {
        let clean = Link {
            rtt_ms: 40.0,
            bandwidth_mbps: 100.0,
            loss: 0.0,
        };
        let lossy = Link {
            loss: 0.01,
            ..clean
        };
        assert_eq!(clean.round_trip_ms(), 40.0);
        assert!(lossy.round_trip_ms() > 41.0);
    }

    #[test]
    fn fitt_margin_follows_the_launch_rule() {
        assert_eq!(default_fitt_margin_mib(4.0), 1024.0);
        assert_eq!(default_fitt_margin_mib(64.0), 2048.0);
        let m = default_fitt_margin_mib(17.2);
        assert!((m - 17.2e9 / MIB / 10.0).abs() < 1.0);
    }
}
