//! llama-server / rpc-server command lines (SPEC §3): a pure function of the launch plan and device,
//! plus the supervision timings the shell applies to those processes.
//!
//! Flag spellings are those of the llama.cpp build `scripts/setup-real-parts.sh` installs
//! (`llama-server --help`), except where builds differ: newer builds replaced `--no-mmap` with
//! `--load-mode none`, so the caller says which one its binary speaks ([`NoMmapFlag`]).

use crate::peer::{Backend, MIB, ModelName};
use std::time::Duration;

/// Slots per llama-server: concurrent chats it decodes in one batch.
pub const PARALLEL_SLOTS: u32 = 4;
/// Child processes bind loopback only; the mesh reaches them through its own tunnels.
pub const LOOPBACK: &str = "127.0.0.1";

/// The memory llama.cpp fits the model into on the launching machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub backend: Backend,
    /// Fast memory (GPU / unified memory; system RAM on a CPU-only machine).
    pub memory_bytes: u64,
}

/// How the installed llama-server spells "read the weights into memory instead of mmapping them".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoMmapFlag {
    /// `--no-mmap` (llama.cpp builds before `--load-mode`).
    NoMmap,
    /// `--load-mode none` (builds that replaced `--no-mmap`).
    LoadModeNone,
}

/// One worker of a split, as the host reaches it: its `rpc-server` behind a local tunnel port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcWorker {
    /// The host-local port of the tunnel to the worker's rpc-server.
    pub tunnel_port: u16,
    pub fast_memory_bytes: u64,
}

/// Where the model's layers go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The whole model on this machine; llama.cpp's fitter places layers. `spill` (election's
    /// `Duty::Solo { spill: true }`): fast memory is short of the model, so the weights stay
    /// mmapped and the OS pages what doesn't fit from RAM/disk (Qwen3-32B on a 17.2 GB peer).
    Solo { spill: bool },
    /// This machine hosts a pipeline whose layers are spread over itself and `workers`, each in
    /// proportion to its fast memory.
    SplitHost {
        workers: Vec<RpcWorker>,
        /// The model's transformer block count, when known. A CPU-only host is not a device in
        /// llama.cpp's `--tensor-split` list, so its share is kept by offloading only the
        /// workers' share of layers (`-ngl`); unknown ⇒ every layer goes to the workers.
        layer_count: Option<u32>,
    },
}

/// Everything one llama-server launch depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlamaServerLaunch {
    pub model_path: String,
    /// The name the API answers to (the mesh's model name).
    pub alias: ModelName,
    pub port: u16,
    /// Per-launch secret: only this node's proxy can talk to the child.
    pub api_key: String,
    /// `-t`; `None` lets llama.cpp choose.
    pub threads: Option<u32>,
    pub placement: Placement,
    pub device: Device,
    pub no_mmap: NoMmapFlag,
}

/// The llama-server argv (without the program name).
pub fn launch_args(launch: &LlamaServerLaunch) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-m".into(),
        launch.model_path.clone(),
        "--alias".into(),
        launch.alias.clone(),
        "--host".into(),
        LOOPBACK.into(),
        "--port".into(),
        launch.port.to_string(),
        "--api-key".into(),
        launch.api_key.clone(),
        "--parallel".into(),
        PARALLEL_SLOTS.to_string(),
        // The fitter sizes what the operator left unset (context, and on solo the layer count)
        // to the device.
        "-fit".into(),
        "on".into(),
    ];
    if let Some(t) = launch.threads {
        args.extend(["-t".into(), t.to_string()]);
    }
    match &launch.placement {
        Placement::Solo { spill } => {
            args.extend([
                "-fitt".into(),
                fit_target_mib(launch.device.memory_bytes).to_string(),
                "-fa".into(),
                "on".into(),
            ]);
            if !spill {
                match launch.no_mmap {
                    NoMmapFlag::NoMmap => args.push("--no-mmap".into()),
                    NoMmapFlag::LoadModeNone => args.extend(["--load-mode".into(), "none".into()]),
                }
            }
        }
        Placement::SplitHost {
            workers,
            layer_count,
        } => {
            let rpc: Vec<String> = workers
                .iter()
                .map(|w| format!("{LOOPBACK}:{}", w.tunnel_port))
                .collect();
            let (ngl, split) = split_layers(workers, launch.device, *layer_count);
            args.extend([
                "--rpc".into(),
                rpc.join(","),
                "-ngl".into(),
                ngl.to_string(),
                "--tensor-split".into(),
                split,
                // Flash attention across RPC devices is not supported by every backend pair.
                "-fa".into(),
                "off".into(),
            ]);
        }
    }
    args
}

/// The rpc-server argv (without the program name): loopback only, reached through the tunnel.
pub fn rpc_server_args(port: u16, threads: Option<u32>) -> Vec<String> {
    let mut args: Vec<String> = vec!["-H".into(), LOOPBACK.into(), "-p".into(), port.to_string()];
    if let Some(t) = threads {
        args.extend(["-t".into(), t.to_string()]);
    }
    args
}

/// `-fitt`: the memory (MiB) llama.cpp must leave *free* on the device — an absolute margin,
/// `clamp(device_MiB / 10, 1024, 2048)`. (v0.66.49 passed 70 % of VRAM here, which llama.cpp read
/// as "keep 70 % free": 22 of 36 layers went to CPU and decode fell to 0.74 tok/s.)
pub fn fit_target_mib(device_memory_bytes: u64) -> u64 {
    (device_memory_bytes / MIB / 10).clamp(1024, 2048)
}

/// `-ngl` and `--tensor-split` of a split host. RPC devices come first in llama.cpp's device
/// list, in `--rpc` order, then the host's own GPU; proportions are in MiB of fast memory.
fn split_layers(workers: &[RpcWorker], host: Device, layer_count: Option<u32>) -> (u32, String) {
    let mut shares: Vec<u64> = workers.iter().map(|w| w.fast_memory_bytes / MIB).collect();
    let worker_total: u64 = shares.iter().sum();
    let ngl = if host.backend == Backend::Cpu {
        // The CPU is not in the tensor-split list: it keeps the layers that are not offloaded.
        match layer_count {
            Some(n) => {
                let total = worker_total + host.memory_bytes / MIB;
                let offloaded = if total == 0 {
                    u64::from(n)
                } else {
                    (u64::from(n) * worker_total).div_ceil(total)
                };
                u32::try_from(offloaded.clamp(1, u64::from(n))).unwrap_or(n)
            }
            None => 99,
        }
    } else {
        shares.push(host.memory_bytes / MIB);
        99
    };
    // A worker reporting no memory still gets a sliver rather than a zero llama.cpp would drop.
    let split: Vec<String> = shares.iter().map(|&s| s.max(1).to_string()).collect();
    (ngl, split.join(","))
}

/// How long llama-server may take to answer `/health` with 200 before the launch counts as failed:
/// a minute plus 15 s per GB of weights (loading is disk- and page-cache-bound).
pub fn health_timeout(model_bytes: u64) -> Duration {
    let per_gb_ms = 15_000u64;
    Duration::from_secs(60)
        + Duration::from_millis(model_bytes.saturating_mul(per_gb_ms) / 1_000_000_000)
}

/// A process that stayed up this long is healthy again: its next crash starts the backoff afresh.
pub const STABLE_RUN: Duration = Duration::from_secs(60);
/// The longest wait between restarts.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(60);

/// Wait before the next start after `consecutive_failures` failed or crashed runs (≥ 1):
/// 1 s, 2 s, 4 s … capped at [`MAX_RESTART_DELAY`].
pub fn restart_delay(consecutive_failures: u32) -> Duration {
    let exp = consecutive_failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exp).min(MAX_RESTART_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::GIB;

    fn solo(device: Device) -> LlamaServerLaunch {
        LlamaServerLaunch {
            model_path: "/models/Qwen3-8B-Q4_K_M.gguf".into(),
            alias: "Qwen3-8B-Q4_K_M".into(),
            port: 41_234,
            api_key: "k-1".into(),
            threads: None,
            placement: Placement::Solo { spill: false },
            device,
            no_mmap: NoMmapFlag::LoadModeNone,
        }
    }

    fn cuda(gib: u64) -> Device {
        Device {
            backend: Backend::Cuda,
            memory_bytes: gib * GIB,
        }
    }

    /// The value following `flag`, if present.
    fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).map(String::as_str)
    }

    #[test]
    fn solo_launch_fits_with_margin_flash_attention_and_no_mmap_but_no_ngl() {
        let args = launch_args(&solo(cuda(16)));
        assert_eq!(
            args.join(" "),
            "-m /models/Qwen3-8B-Q4_K_M.gguf --alias Qwen3-8B-Q4_K_M --host 127.0.0.1 --port 41234 \
             --api-key k-1 --parallel 4 -fit on -fitt 1638 -fa on --load-mode none"
        );
        assert!(
            !args
                .iter()
                .any(|a| a == "-ngl" || a == "--rpc" || a == "--tensor-split")
        );
    }

    #[test]
    fn mmap_spill_keeps_the_weights_mapped() {
        let mut l = solo(cuda(16));
        l.placement = Placement::Solo { spill: true };
        let args = launch_args(&l);
        assert!(!args.iter().any(|a| a == "--load-mode" || a == "--no-mmap"));
        assert_eq!(value(&args, "-fitt"), Some("1638"));
        assert_eq!(value(&args, "-fa"), Some("on"));
    }

    #[test]
    fn m3_pro_fit_target_is_a_small_margin_not_seventy_percent_of_vram() {
        // 18 GB M3 Pro, ~12 GiB Metal pool: v0.66.49 passed ~9.7 GiB here.
        let metal = Device {
            backend: Backend::Metal,
            memory_bytes: 12 * GIB,
        };
        assert_eq!(value(&launch_args(&solo(metal)), "-fitt"), Some("1228"));
        assert_eq!(fit_target_mib(4 * GIB), 1024, "floor");
        assert_eq!(fit_target_mib(80 * GIB), 2048, "ceiling");
        assert_eq!(fit_target_mib(0), 1024);
    }

    #[test]
    fn older_builds_get_no_mmap_spelled_as_they_know_it() {
        let mut l = solo(cuda(16));
        l.no_mmap = NoMmapFlag::NoMmap;
        l.threads = Some(2);
        let args = launch_args(&l);
        assert!(args.iter().any(|a| a == "--no-mmap"));
        assert!(!args.iter().any(|a| a == "--load-mode"));
        assert_eq!(value(&args, "-t"), Some("2"));
    }

    #[test]
    fn every_launch_binds_loopback_never_all_interfaces() {
        let mut split = solo(cuda(16));
        split.placement = Placement::SplitHost {
            workers: vec![RpcWorker {
                tunnel_port: 50_001,
                fast_memory_bytes: 8 * GIB,
            }],
            layer_count: None,
        };
        for args in [launch_args(&solo(cuda(16))), launch_args(&split)] {
            assert_eq!(value(&args, "--host"), Some("127.0.0.1"));
            assert!(!args.iter().any(|a| a.contains("0.0.0.0")));
            assert_eq!(value(&args, "--api-key"), Some("k-1"));
            assert_eq!(value(&args, "--parallel"), Some("4"));
        }
        let rpc = rpc_server_args(50_052, None);
        assert_eq!(rpc.join(" "), "-H 127.0.0.1 -p 50052");
        assert_eq!(
            rpc_server_args(1, Some(2)).join(" "),
            "-H 127.0.0.1 -p 1 -t 2"
        );
    }

    #[test]
    fn gpu_split_host_places_all_layers_in_proportion_to_fast_memory_host_last() {
        // The Phase 2 cohort pooling for Qwen3-32B: this 17.2 GB CUDA host plus two workers.
        let mut l = solo(Device {
            backend: Backend::Cuda,
            memory_bytes: 16 * GIB,
        });
        l.placement = Placement::SplitHost {
            workers: vec![
                RpcWorker {
                    tunnel_port: 50_001,
                    fast_memory_bytes: 12 * GIB,
                },
                RpcWorker {
                    tunnel_port: 50_002,
                    fast_memory_bytes: 8 * GIB,
                },
            ],
            layer_count: Some(64),
        };
        let args = launch_args(&l);
        assert_eq!(
            value(&args, "--rpc"),
            Some("127.0.0.1:50001,127.0.0.1:50002")
        );
        assert_eq!(value(&args, "-ngl"), Some("99"));
        assert_eq!(value(&args, "--tensor-split"), Some("12288,8192,16384"));
        assert_eq!(value(&args, "-fa"), Some("off"));
        assert_eq!(value(&args, "-fit"), Some("on"));
        // The margin and mmap policy are solo-only.
        assert!(
            !args
                .iter()
                .any(|a| a == "-fitt" || a == "--load-mode" || a == "--no-mmap")
        );
    }

    #[test]
    fn cpu_split_host_keeps_its_share_by_offloading_only_the_workers_layers() {
        // With --rpc and -ngl 99 every SmolLM2 layer went to the RPC device: a CPU host must
        // offload only the workers' share to hold any itself.
        let mut l = solo(Device {
            backend: Backend::Cpu,
            memory_bytes: 3 * GIB,
        });
        l.placement = Placement::SplitHost {
            workers: vec![RpcWorker {
                tunnel_port: 50_001,
                fast_memory_bytes: GIB,
            }],
            layer_count: Some(30),
        };
        let args = launch_args(&l);
        assert_eq!(value(&args, "-ngl"), Some("8"), "ceil(30 × 1/4)");
        assert_eq!(value(&args, "--tensor-split"), Some("1024"));

        l.placement = Placement::SplitHost {
            workers: vec![RpcWorker {
                tunnel_port: 50_001,
                fast_memory_bytes: 0,
            }],
            layer_count: None,
        };
        let args = launch_args(&l);
        assert_eq!(
            value(&args, "-ngl"),
            Some("99"),
            "unknown depth: all to the workers"
        );
        assert_eq!(value(&args, "--tensor-split"), Some("1"));
    }

    #[test]
    fn health_timeout_grows_with_model_size() {
        assert_eq!(health_timeout(0), Duration::from_secs(60));
        // SmolLM2-135M Q4_1, 98 MB.
        assert_eq!(health_timeout(98_000_000), Duration::from_millis(61_470));
        // DeepSeek-R1-Distill-70B Q4_K_M, 42.5 GB.
        assert_eq!(
            health_timeout(42_500_000_000),
            Duration::from_millis(697_500)
        );
        assert_eq!(health_timeout(u64::MAX), health_timeout(u64::MAX / 2 + 1));
    }

    #[test]
    fn restart_backoff_doubles_and_caps_at_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(restart_delay(0), Duration::from_secs(1));
        assert_eq!(restart_delay(u32::MAX), MAX_RESTART_DELAY);
    }
}
