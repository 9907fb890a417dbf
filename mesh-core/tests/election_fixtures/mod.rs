//! Readable mesh fixtures for the election and status tests: peers have one-byte ids
//! (`PeerId([n; 32])`, short id `"0n0n0n0n0n"`) and memory in decimal GB, as the update log
//! quotes it.
#![allow(dead_code)]

use mesh_core::peer::{ModelTiming, NativeBaseline, RttHint, RunningPipeline};
use mesh_core::{Backend, KnownPeer, MeshView, PeerAnnouncement, PeerId, Role, Timestamp};

pub const QWEN8: &str = "Qwen3-8B-Q4_K_M";
pub const QWEN8_GB: f64 = 5.03;
pub const QWEN32: &str = "Qwen3-32B-Q4_K_M";
pub const QWEN32_GB: f64 = 19.76;
pub const DS70: &str = "DeepSeek-R1-Distill-Llama-70B-Q4_K_M";
pub const DS70_GB: f64 = 42.52;
pub const LLAMA3B: &str = "Llama-3.2-3B-Instruct-Q4_K_M";
pub const LLAMA3B_GB: f64 = 2.02;

pub fn id(n: u8) -> PeerId {
    PeerId([n; 32])
}

pub fn short(n: u8) -> String {
    id(n).short()
}

pub fn gb(x: f64) -> u64 {
    (x * 1e9).round() as u64
}

/// A peer under construction: a `Worker` with no models, dialable at 20 ms, seen at t = 0.
#[derive(Debug, Clone)]
pub struct Peer(pub KnownPeer);

pub fn peer(n: u8, hostname: &str, backend: Backend, fast_gb: f64, ram_gb: f64) -> Peer {
    let mut a = PeerAnnouncement::new(id(n), "mesh-test", Role::Worker);
    a.version = "0.1.0".to_string();
    a.seq = 1;
    a.hostname = hostname.to_string();
    a.backend = backend;
    a.gpu_name = match backend {
        Backend::Metal => "Apple M-series".to_string(),
        Backend::Cuda => "NVIDIA GeForce RTX".to_string(),
        _ => backend.as_str().to_string(),
    };
    a.fast_memory_bytes = gb(fast_gb);
    a.system_ram_bytes = gb(ram_gb);
    a.mem_bandwidth_gbps = 200.0;
    Peer(KnownPeer {
        announcement: a,
        rtt_ms: Some(20),
        first_seen: Timestamp::ZERO,
        last_fresh: Timestamp::ZERO,
    })
}

/// An entry node: a client with no memory to offer.
pub fn entry(n: u8) -> Peer {
    let mut p = peer(n, "entry", Backend::Cpu, 0.0, 4.0);
    p.0.announcement.role = Role::Client;
    p
}

impl Peer {
    fn a(&mut self) -> &mut PeerAnnouncement {
        &mut self.0.announcement
    }

    /// Configured with these models, whose GGUFs it has on disk: `(name, size in GB)`.
    pub fn wants(mut self, models: &[(&str, f64)]) -> Self {
        for &(m, size) in models {
            self.a().requested_models.push(m.to_string());
            self.a().model_sizes.insert(m.to_string(), gb(size));
        }
        self
    }

    /// Configured with a model it has no file for.
    pub fn wants_without_file(mut self, model: &str) -> Self {
        self.a().requested_models.push(model.to_string());
        self
    }

    pub fn serving(mut self, models: &[&str]) -> Self {
        self.a().serving_models = models.iter().map(|m| m.to_string()).collect();
        self
    }

    /// A `Host` whose llama-server is healthy for these models (also advertised).
    pub fn hosting(mut self, models: &[&str]) -> Self {
        let port = 9_000 + u16::from(self.0.announcement.peer_id.0[0]);
        self.a().role = Role::Host { http_port: port };
        self.a().hosted_models = models.iter().map(|m| m.to_string()).collect();
        for m in models {
            if !self.0.announcement.serving_models.iter().any(|s| s == m) {
                self.a().serving_models.push(m.to_string());
            }
        }
        self
    }

    /// A `Host` that has claimed the role but whose llama-server isn't healthy yet.
    pub fn loading(mut self, models: &[&str]) -> Self {
        self.a().role = Role::Host { http_port: 9_000 };
        self.a().serving_models = models.iter().map(|m| m.to_string()).collect();
        self
    }

    pub fn client(mut self) -> Self {
        self.a().role = Role::Client;
        self
    }

    pub fn pipeline(mut self, model: &str, workers: &[u8], total_gb: f64) -> Self {
        self.a().pipelines.push(RunningPipeline {
            model: model.to_string(),
            workers: workers.iter().map(|&n| id(n)).collect(),
            total_group_memory_bytes: gb(total_gb),
        });
        self
    }

    pub fn rtt(mut self, ms: u32) -> Self {
        self.0.rtt_ms = Some(ms);
        self
    }

    pub fn undialable(mut self) -> Self {
        self.0.rtt_ms = None;
        self
    }

    /// This peer's own measured RTT to peer `n` (gossiped).
    pub fn hint(mut self, n: u8, ms: u32) -> Self {
        self.a().rtt_hints.push(RttHint {
            peer: id(n),
            rtt_ms: ms,
        });
        self
    }

    pub fn rpc(mut self, ready: Option<bool>) -> Self {
        self.a().rpc_ready = ready;
        self
    }

    pub fn inflight(mut self, n: u32) -> Self {
        self.a().inflight_requests = n;
        self
    }

    pub fn timing(mut self, model: &str, ttft_ms: f64, tps: f64, samples: u32) -> Self {
        self.a().model_timings.push(ModelTiming {
            model: model.to_string(),
            tps_p50: tps,
            ttft_ms_p50: ttft_ms,
            samples_in_window: samples,
        });
        self
    }

    pub fn baseline(mut self, model: &str, ttft_ms: f64, tps: f64) -> Self {
        let backend = self.0.announcement.backend;
        self.a()
            .native_baselines
            .push(baseline(model, ttft_ms, tps, backend));
        self
    }

    pub fn seen_at(mut self, secs: u64) -> Self {
        self.0.first_seen = Timestamp::from_secs(secs);
        self
    }

    /// Drops the size this peer reports for `model` (as if nobody had scanned it).
    pub fn forget_size(mut self, model: &str) -> Self {
        self.a().model_sizes.remove(model);
        self
    }
}

pub fn baseline(model: &str, ttft_ms: f64, tps: f64, backend: Backend) -> NativeBaseline {
    NativeBaseline {
        model: model.to_string(),
        native_tps_p50: tps,
        native_ttft_ms_p50: ttft_ms,
        measured_at_unix_secs: 1_780_000_000,
        samples: 3,
        backend,
        fingerprint: None,
    }
}

/// The view of peer `me` (which must be among `peers`; it sees itself at 0 ms).
pub fn view(me: u8, peers: Vec<Peer>) -> MeshView {
    let peers = peers
        .into_iter()
        .map(|Peer(mut k)| {
            if k.announcement.peer_id == id(me) {
                k.rtt_ms = Some(0);
            }
            k
        })
        .collect();
    MeshView::new(id(me), peers)
}

/// Random meshes for property tests: up to 7 peers of mixed roles, memory, RTTs and rpc states,
/// asking for three models whose files they may or may not have, some hosting, some announcing
/// pipelines whose workers may not exist.
pub mod arb {
    use super::*;
    use proptest::prelude::*;

    pub const MODELS: [(&str, f64); 3] = [(QWEN8, QWEN8_GB), (QWEN32, QWEN32_GB), (DS70, DS70_GB)];

    #[derive(Debug, Clone)]
    struct Spec {
        role: u8,
        backend: Backend,
        fast_gb: f64,
        ram_gb: f64,
        /// Per model: 0 not requested, 1 requested without file, 2 with file.
        wants: [u8; 3],
        hosts: [bool; 3],
        serves: [bool; 3],
        rpc: Option<bool>,
        rtt: Option<u32>,
        /// A pipeline for model `.0 % 3` with these worker ids (1..=9, some absent).
        pipeline: Option<(usize, Vec<u8>)>,
        seen_s: u64,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            (
                0u8..6,
                prop::sample::select(vec![Backend::Metal, Backend::Cuda, Backend::Vulkan]),
                prop::sample::select(vec![0.0, 4.0, 6.0, 8.6, 10.0, 12.0, 14.5, 17.2, 24.0, 48.0]),
                prop::sample::select(vec![0.0, 8.0, 16.0, 32.0, 64.0]),
            ),
            (
                prop::array::uniform3(0u8..3),
                prop::array::uniform3(any::<bool>()),
                prop::array::uniform3(any::<bool>()),
                prop::option::of(any::<bool>()),
                prop::option::weighted(
                    0.85,
                    prop::sample::select(vec![0u32, 5, 40, 300, 500, 501, 900]),
                ),
                prop::option::weighted(0.4, (0usize..3, prop::collection::vec(1u8..10, 0..4))),
                0u64..120,
            ),
        )
            .prop_map(
                |(
                    (role, backend, fast_gb, ram_gb),
                    (wants, hosts, serves, rpc, rtt, pipeline, seen_s),
                )| {
                    Spec {
                        role,
                        backend,
                        fast_gb,
                        ram_gb,
                        wants,
                        hosts,
                        serves,
                        rpc,
                        rtt,
                        pipeline,
                        seen_s,
                    }
                },
            )
    }

    fn build(n: u8, s: &Spec) -> Peer {
        let mut p = peer(n, &format!("p{n}"), s.backend, s.fast_gb, s.ram_gb)
            .rpc(s.rpc)
            .seen_at(s.seen_s);
        p.0.rtt_ms = s.rtt;
        if s.role == 0 {
            return p.client();
        }
        let mut serving = Vec::new();
        let mut hosted = Vec::new();
        for (i, &(m, size)) in MODELS.iter().enumerate() {
            match s.wants[i] {
                1 => p = p.wants_without_file(m),
                2 => p = p.wants(&[(m, size)]),
                _ => continue,
            }
            if s.serves[i] {
                serving.push(m);
            }
            // Roles 1–2 are workers; 3–5 may host what they have.
            if s.role >= 3 && s.hosts[i] {
                hosted.push(m);
            }
        }
        p = p.serving(&serving);
        if s.role >= 3 {
            p = p.hosting(&hosted);
            if let Some((i, workers)) = &s.pipeline {
                p = p.pipeline(MODELS[*i].0, workers, 0.0);
            }
        }
        p
    }

    /// A view of 1–7 peers, seen by one of them.
    pub fn mesh() -> impl Strategy<Value = MeshView> {
        prop::collection::vec(spec(), 1..8).prop_flat_map(|specs| {
            let n = specs.len();
            (Just(specs), 0..n).prop_map(|(specs, me)| {
                let peers = specs
                    .iter()
                    .enumerate()
                    .map(|(i, s)| build(i as u8 + 1, s))
                    .collect();
                view(me as u8 + 1, peers)
            })
        })
    }
}
