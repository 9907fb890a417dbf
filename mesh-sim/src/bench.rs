//! `mesh-sim bench`: the scale figures of the README — wall time and peak memory of an N-peer,
//! H-virtual-hour run with traffic and loss on the fast engine, and the gossip figures of SPEC §2
//! (convergence of changed announcements, bytes per peer per second) measured in that run.
//!
//! The mesh is generated from the seed: three workstations up from the start (the first hosts),
//! the other contributors drawn from a catalog of common machines and joining over the first
//! minute, every one offering Qwen3-8B and the larger ones Qwen3-32B as well, one public entry
//! with a fallback provider, daily-driver and capacity traffic, 20–100 ms links. The three
//! workstations are killed during the run (at 30, 50 and 70 %), so the mesh re-plans.

use crate::rng::SimRng;
use crate::scenario::{
    CheckSpec, GossipSpec, ModelSpec, NetworkSpec, PeerRole, PeerSpec, Scenario, TrafficSpec,
    VerifySpec,
};
use crate::{Engine, RunError, RunOptions};
use mesh_core::Backend;
use std::time::Instant;

/// (name, backend, fast GB, RAM GB, bandwidth GB/s, share of the mesh in ‰).
const MACHINES: &[(&str, Backend, f64, f64, f64, u32)] = &[
    ("rtx4080s", Backend::Cuda, 17.2, 32.0, 736.0, 200),
    ("rtx3060", Backend::Cuda, 12.0, 32.0, 360.0, 250),
    ("rtx4090", Backend::Cuda, 24.0, 64.0, 1008.0, 100),
    ("m3pro", Backend::Metal, 12.0, 18.0, 150.0, 200),
    ("m4mini", Backend::Metal, 10.7, 16.0, 120.0, 200),
    ("rx7900", Backend::Rocm, 20.0, 32.0, 800.0, 50),
];

const QWEN8: &str = "Qwen3-8B-Q4_K_M";
const QWEN32: &str = "Qwen3-32B-Q4_K_M";

/// The generated scale scenario.
pub fn scale_scenario(peers: usize, hours: f64, loss: f64, seed: u64) -> Scenario {
    let mut rng = SimRng::derive(seed, "bench", 0);
    let total: u32 = MACHINES.iter().map(|m| m.5).sum();
    let mut list = vec![PeerSpec {
        role: PeerRole::Entry,
        fallback: true,
        ..peer("entry", Backend::Cpu, 0.0, 0.0, 0.0, Vec::new())
    }];
    for i in 0..peers {
        // The first three are workstation cards, up from the start: the mesh's first hosts,
        // killed one by one during the run so it re-plans (and the convergence figure has
        // changes beyond load to measure).
        let m = if i < 3 {
            &("rtx6000", Backend::Cuda, 48.0, 128.0, 960.0, 0)
        } else {
            let mut ticket = (rng.next_u64() % u64::from(total)) as u32;
            MACHINES
                .iter()
                .find(|m| {
                    if ticket < m.5 {
                        true
                    } else {
                        ticket -= m.5;
                        false
                    }
                })
                .expect("ticket below the total")
        };
        let mut serve = vec![QWEN8.to_string()];
        if m.2 >= 20.0 {
            serve.push(QWEN32.to_string());
        }
        let mut p = peer(&format!("{}-{i}", m.0), m.1, m.2, m.3, m.4, serve);
        // The rest arrive over the first minute, as a real mesh fills.
        if i >= 3 {
            p.join_at_s = rng.uniform(0.0, 60.0).min(hours * 3600.0);
        }
        list.push(p);
    }
    let events = crashes(peers, hours);
    let list_len = list.len();
    Scenario {
        name: format!("bench-{peers}-peers"),
        seed,
        duration_s: hours * 3600.0,
        models: vec![
            ModelSpec {
                name: QWEN8.into(),
                size_gb: 5.03,
                params_b: 8.19,
                tier: None,
                active_params_b: None,
                layers: Some(36),
                embedding_length: Some(4096),
            },
            ModelSpec {
                name: QWEN32.into(),
                size_gb: 19.76,
                params_b: 32.8,
                tier: None,
                active_params_b: None,
                layers: Some(64),
                embedding_length: Some(5120),
            },
        ],
        peers: list,
        network: NetworkSpec {
            latency_ms: [20.0, 100.0],
            loss,
            bandwidth_mbps: 100.0,
        },
        traffic: vec![
            traffic(QWEN8, 60.0, 200, 256),
            traffic(QWEN32, 6.0, 400, 256),
        ],
        events,
        gossip: GossipSpec::default(),
        verify: VerifySpec::default(),
        check: CheckSpec { liveness_s: 0.0 },
        // Printed (`--print-scenario`) and run as a file, a mesh above the turmoil engine's
        // limit names the engine that runs it.
        engine: (list_len > crate::turmoil::MAX_PEERS).then_some(Engine::Des),
    }
}

/// The three workstations are killed at 30, 50 and 70 % of the run.
fn crashes(peers: usize, hours: f64) -> Vec<crate::scenario::EventSpec> {
    let duration = hours * 3600.0;
    (0..peers.min(3))
        .map(|i| crate::scenario::EventSpec {
            at_s: duration * (0.3 + 0.2 * i as f64),
            kind: crate::scenario::EventKind::Crash,
            peers: vec![format!("rtx6000-{i}")],
            latency_ms: None,
            loss: None,
        })
        .collect()
}

fn peer(
    name: &str,
    backend: Backend,
    fast: f64,
    ram: f64,
    bw: f64,
    serve: Vec<String>,
) -> PeerSpec {
    PeerSpec {
        name: name.into(),
        backend,
        gpu_name: None,
        fast_memory_gb: fast,
        system_ram_gb: ram,
        mem_bandwidth_gbps: bw,
        ram_bandwidth_gbps: None,
        compute_tflops: None,
        serve,
        behaviour: Default::default(),
        role: PeerRole::Contributor,
        join_at_s: 0.0,
        max_inflight: None,
        max_vram_gb: None,
        fitt_mib: None,
        fallback: false,
    }
}

fn traffic(model: &str, rate_per_min: f64, prompt_tokens: u32, max_tokens: u32) -> TrafficSpec {
    TrafficSpec {
        model: model.into(),
        rate_per_min,
        prompt_tokens,
        max_tokens,
        entry: None,
        start_s: 60.0,
        deadline_s: None,
    }
}

/// What one bench run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchFigures {
    /// `des` or `turmoil`.
    pub engine_name: &'static str,
    pub peers: usize,
    pub virtual_hours: f64,
    pub loss: f64,
    pub wall_s: f64,
    /// Peak resident memory of the process (Linux `VmHWM`), when known.
    pub peak_rss_mib: Option<f64>,
    pub chats: u64,
    pub served_by_mesh: u64,
    pub gossip_messages: u64,
    pub steady_bytes_per_peer_per_s: f64,
    pub bytes_per_peer_per_s: f64,
    pub changes: u64,
    pub converged_within_1s_pct: Option<f64>,
    pub convergence_p50_ms: Option<f64>,
    pub convergence_p99_ms: Option<f64>,
    pub convergence_max_ms: Option<f64>,
    pub load_changes: u64,
    pub load_within_1s_pct: Option<f64>,
    pub load_p50_ms: Option<f64>,
    pub crashed_out_of_targets_ms: Vec<Option<f64>>,
    pub engine: crate::EngineStats,
}

/// Runs the scale scenario once on `engine` and measures it. `progress` as in
/// [`crate::Extras`]. The turmoil engine refuses meshes above its limit.
pub fn run(
    engine: Engine,
    peers: usize,
    hours: f64,
    loss: f64,
    seed: u64,
    progress: Option<&mut dyn FnMut(f64, f64)>,
) -> Result<BenchFigures, RunError> {
    let scenario = scale_scenario(peers, hours, loss, seed);
    let started = Instant::now();
    let outcome = crate::run_outcome(
        &scenario,
        RunOptions {
            seed: Some(seed),
            engine,
        },
        crate::Extras {
            all_statuses: false,
            progress,
        },
    )?;
    let wall_s = started.elapsed().as_secs_f64();
    let r = &outcome.report;
    let g = &r.gossip;
    Ok(BenchFigures {
        engine_name: engine.as_str(),
        peers,
        virtual_hours: hours,
        loss,
        wall_s,
        peak_rss_mib: peak_rss_kib().map(|k| k as f64 / 1024.0),
        chats: r.requests.sent,
        served_by_mesh: r.requests.mesh,
        gossip_messages: g.messages,
        steady_bytes_per_peer_per_s: g.steady_bytes_per_peer_per_s,
        bytes_per_peer_per_s: g.bytes_per_peer_per_s,
        changes: g.convergence.changes,
        converged_within_1s_pct: g.convergence.within_1s_pct,
        convergence_p50_ms: g.convergence.p50_ms,
        convergence_p99_ms: g.convergence.p99_ms,
        convergence_max_ms: g.convergence.max_ms,
        load_changes: g.load_convergence.changes,
        load_within_1s_pct: g.load_convergence.within_1s_pct,
        load_p50_ms: g.load_convergence.p50_ms,
        crashed_out_of_targets_ms: g
            .crashed_hosts
            .iter()
            .map(|c| c.out_of_targets_after_ms)
            .collect(),
        engine: outcome.stats,
    })
}

impl BenchFigures {
    pub fn to_text(&self) -> String {
        let opt = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.0}{unit}"));
        format!(
            "bench: {} peers + 1 entry, {} virtual h, {:.0} % loss, 20-100 ms links ({} engine)\n\
             wall time            {:.1} s ({:.0}x virtual time)\n\
             peak memory          {}\n\
             chats                {} sent, {} served by the mesh\n\
             gossip               {} messages; {:.0} B/s per peer steady state ({:.0} B/s over the run)\n\
             convergence          {} changed announcements; 99 % of peers within 1 s for {}; p50 {}, p99 {}, max {}\n\
             load-only changes    {} (pushed to heartbeat_fanout peers): 99 % within 1 s for {}; p50 {}\n\
             crashed hosts        out of the entry's targets after {:?} ms\n\
             engine               {} events, {} elections, {} gossip inputs\n",
            self.peers,
            self.virtual_hours,
            self.loss * 100.0,
            self.engine_name,
            self.wall_s,
            self.virtual_hours * 3600.0 / self.wall_s.max(1e-9),
            opt(self.peak_rss_mib, " MiB"),
            self.chats,
            self.served_by_mesh,
            self.gossip_messages,
            self.steady_bytes_per_peer_per_s,
            self.bytes_per_peer_per_s,
            self.changes,
            self.converged_within_1s_pct
                .map_or("-".into(), |v| format!("{v:.1} %")),
            opt(self.convergence_p50_ms, " ms"),
            opt(self.convergence_p99_ms, " ms"),
            opt(self.convergence_max_ms, " ms"),
            self.load_changes,
            self.load_within_1s_pct
                .map_or("-".into(), |v| format!("{v:.1} %")),
            opt(self.load_p50_ms, " ms"),
            self.crashed_out_of_targets_ms,
            self.engine.events,
            self.engine.elections,
            self.engine.gossip_inputs,
        )
    }
}

/// The process's peak resident set size in KiB (Linux; `None` elsewhere).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_scenario_is_valid_and_seeded() {
        let s = scale_scenario(50, 0.1, 0.01, 3);
        let text = toml::to_string(&s).unwrap();
        let parsed = Scenario::parse(&text, std::path::Path::new("bench.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.peers.len(), 51);
        assert_eq!(s, scale_scenario(50, 0.1, 0.01, 3));
        assert_ne!(s.peers, scale_scenario(50, 0.1, 0.01, 4).peers);
    }
}
