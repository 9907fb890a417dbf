//! What the installed llama-server runs on, asked of the binary itself: `--list-devices` for the
//! GPUs and their memory, `--help` for flag spellings that differ between builds.

use anyhow::Context;
use mesh_core::launch::{Device, NoMmapFlag};
use mesh_core::peer::{Backend, MIB};
use std::path::Path;

/// One line of `llama-server --list-devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedDevice {
    /// `CUDA0`, `Metal`, `Vulkan0`, `ROCm0`…
    pub name: String,
    pub description: String,
    pub total_mib: u64,
}

/// What the node found out about its hardware and llama-server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The device llama.cpp fits models into (summed GPUs; system RAM when there is none).
    pub device: Device,
    pub gpu_name: String,
    pub system_ram_bytes: u64,
    pub hostname: String,
    pub no_mmap: NoMmapFlag,
}

/// Parses `llama-server --list-devices` output
/// (`  CUDA0: NVIDIA GeForce RTX 4080 SUPER (16376 MiB, 15902 MiB free)`).
pub fn parse_list_devices(text: &str) -> Vec<ListedDevice> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.trim().split_once(": ")?;
            let open = rest.rfind('(')?;
            let total = rest[open + 1..].split_once(" MiB")?.0.trim().parse().ok()?;
            Some(ListedDevice {
                name: name.to_string(),
                description: rest[..open].trim().to_string(),
                total_mib: total,
            })
        })
        .collect()
}

pub fn backend_of(device_name: &str) -> Backend {
    let n = device_name.to_ascii_lowercase();
    if n.starts_with("cuda") {
        Backend::Cuda
    } else if n.starts_with("metal") || n.starts_with("mtl") {
        Backend::Metal
    } else if n.starts_with("rocm") || n.starts_with("hip") {
        Backend::Rocm
    } else if n.starts_with("vulkan") {
        Backend::Vulkan
    } else {
        Backend::Cpu
    }
}

/// Builds that have `--load-mode` dropped `--no-mmap`.
pub fn no_mmap_flag(help: &str) -> NoMmapFlag {
    if help.contains("--load-mode") {
        NoMmapFlag::LoadModeNone
    } else {
        NoMmapFlag::NoMmap
    }
}

/// The device from the listed GPUs, or the CPU with `system_ram_bytes` when none is listed.
pub fn device_from(listed: &[ListedDevice], system_ram_bytes: u64) -> (Device, String) {
    let gpus: Vec<&ListedDevice> = listed
        .iter()
        .filter(|d| backend_of(&d.name) != Backend::Cpu && !d.name.starts_with("RPC"))
        .collect();
    match gpus.first() {
        None => (
            Device {
                backend: Backend::Cpu,
                memory_bytes: system_ram_bytes,
            },
            String::new(),
        ),
        Some(first) => (
            Device {
                backend: backend_of(&first.name),
                memory_bytes: gpus.iter().map(|d| d.total_mib * MIB).sum(),
            },
            first.description.clone(),
        ),
    }
}

/// Runs the binary to find out.
pub async fn probe(llama_server: &Path) -> anyhow::Result<Probe> {
    let run = |arg: &'static str| async move {
        let out = tokio::process::Command::new(llama_server)
            .arg(arg)
            .output()
            .await
            .with_context(|| format!("running {} {arg}", llama_server.display()))?;
        // Both streams: builds differ in where they print.
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        anyhow::Ok(text)
    };
    let listed = parse_list_devices(&run("--list-devices").await?);
    let help = run("--help").await?;
    let system_ram_bytes = system_ram_bytes();
    let (device, gpu_name) = device_from(&listed, system_ram_bytes);
    Ok(Probe {
        device,
        gpu_name,
        system_ram_bytes,
        hostname: hostname(),
        no_mmap: no_mmap_flag(&help),
    })
}

/// The machine's host name (empty when it cannot be read).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| {
            let out = std::process::Command::new("hostname").output().ok()?;
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Total system memory (0 when it cannot be read).
pub fn system_ram_bytes() -> u64 {
    #[cfg(target_os = "linux")]
    {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
                let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kb * 1024)
            })
            .unwrap_or(0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::process::Command::new("sysctl")
            .args(["-n", "hw.memsize"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_listing_gives_backend_name_and_summed_memory() {
        let text = "ggml_cuda_init: found 2 CUDA devices:\nAvailable devices:\n  CUDA0: NVIDIA GeForce RTX 4080 SUPER (16376 MiB, 15902 MiB free)\n  CUDA1: NVIDIA GeForce RTX 3060 (12288 MiB, 12000 MiB free)\n";
        let listed = parse_list_devices(text);
        assert_eq!(
            listed[0],
            ListedDevice {
                name: "CUDA0".into(),
                description: "NVIDIA GeForce RTX 4080 SUPER".into(),
                total_mib: 16_376
            }
        );
        let (device, gpu) = device_from(&listed, 64 << 30);
        assert_eq!(device.backend, Backend::Cuda);
        assert_eq!(device.memory_bytes, (16_376 + 12_288) * MIB);
        assert_eq!(gpu, "NVIDIA GeForce RTX 4080 SUPER");
    }

    #[test]
    fn cpu_build_lists_no_device_and_falls_back_to_system_ram() {
        // The real output of the CPU build scripts/setup-real-parts.sh installs.
        let listed = parse_list_devices("Available devices:\n  (none)\n");
        assert!(listed.is_empty());
        let (device, gpu) = device_from(&listed, 8 << 30);
        assert_eq!(
            device,
            Device {
                backend: Backend::Cpu,
                memory_bytes: 8 << 30
            }
        );
        assert_eq!(gpu, "");
    }

    #[test]
    fn metal_and_others_are_recognised() {
        assert_eq!(backend_of("Metal"), Backend::Metal);
        assert_eq!(backend_of("MTL0"), Backend::Metal);
        assert_eq!(backend_of("Vulkan0"), Backend::Vulkan);
        assert_eq!(backend_of("ROCm0"), Backend::Rocm);
        assert_eq!(backend_of("BLAS"), Backend::Cpu);
    }

    #[test]
    fn no_mmap_spelling_follows_the_help_text() {
        assert_eq!(
            no_mmap_flag("-lm,   --load-mode MODE   model loading mode"),
            NoMmapFlag::LoadModeNone
        );
        assert_eq!(
            no_mmap_flag("--no-mmap   do not memory-map model"),
            NoMmapFlag::NoMmap
        );
    }

    #[test]
    fn system_ram_is_read() {
        assert!(system_ram_bytes() > 0);
    }
}
