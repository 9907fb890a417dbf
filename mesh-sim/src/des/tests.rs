use super::*;
use mesh_core::status::{MeshEfficiency, NodeState, SplitRole};
use std::path::Path;

const QWEN8: &str = r#"
[[model]]
name = "Qwen3-8B-Q4_K_M"
size_gb = 5.03
params_b = 8.19
layers = 36
embedding_length = 4096
"#;

const ENTRY: &str = r#"
[[peer]]
name = "entry"
role = "entry"
"#;

fn cuda(name: &str, extra: &str) -> String {
    format!(
        "[[peer]]\nname = \"{name}\"\nbackend = \"cuda\"\nfast_memory_gb = 17.2\nsystem_ram_gb = 32\n\
         mem_bandwidth_gbps = 736\nserve = [\"Qwen3-8B-Q4_K_M\"]\n{extra}\n"
    )
}

fn traffic(rate: f64, extra: &str) -> String {
    format!(
        "[[traffic]]\nmodel = \"Qwen3-8B-Q4_K_M\"\nrate_per_min = {rate}\nprompt_tokens = 32\n\
         max_tokens = 128\n{extra}\n"
    )
}

fn scenario(duration_s: u32, parts: &[&str]) -> Scenario {
    let text = format!(
        "name = \"t\"\nseed = 1\nduration_s = {duration_s}\n\n[network]\nlatency_ms = [10, 10]\n\n{}",
        parts.concat()
    );
    Scenario::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn model(r: &Report) -> &ModelReport {
    &r.models[0]
}

fn failed(r: &Report, reason: &str) -> u64 {
    model(r).requests.failed.get(reason).copied().unwrap_or(0)
}

#[test]
fn same_seed_gives_a_byte_identical_report_and_another_seed_other_draws() {
    let s = scenario(
        1_800,
        &[
            QWEN8,
            ENTRY,
            &cuda("a", ""),
            &cuda("b", ""),
            &traffic(12.0, ""),
        ],
    );
    let once = run(&s, 7).to_json();
    assert_eq!(once, run(&s, 7).to_json());
    let other = run(&s, 8);
    assert_ne!(once, other.to_json());
    // Same decisions either way.
    assert_eq!(model(&other).plan, "solo");
    assert_eq!(model(&run(&s, 7)).hosts, model(&other).hosts);
}

#[test]
fn every_completed_chat_leaves_one_sample_on_its_host_and_one_at_the_entry() {
    let s = scenario(1_800, &[QWEN8, ENTRY, &cuda("a", ""), &traffic(6.0, "")]);
    let r = run(&s, 3);
    let m = model(&r);
    assert!(m.requests.mesh > 100, "{:?}", m.requests);
    let host = &m.by_host[0];
    assert_eq!(host.served, m.requests.mesh);
    // A 30-minute run stays inside the 1 h window.
    assert_eq!(host.through_mesh.unwrap().samples as u64, m.requests.mesh);
    assert_eq!(host.at_entry.unwrap().samples as u64, m.requests.mesh);
    // The entry sees the host one RTT (2 × 10 ms) later than the host sees itself.
    let gap = host.at_entry.unwrap().ttft_ms_p50 - host.through_mesh.unwrap().ttft_ms_p50;
    assert!((gap - 20.0).abs() < 3.0, "{gap}");
}

#[test]
fn arrivals_are_poisson_at_the_declared_rate() {
    let s = scenario(3_600, &[QWEN8, ENTRY, &cuda("a", ""), &traffic(10.0, "")]);
    let sent = model(&run(&s, 11)).requests.sent as f64;
    // 600 expected; 4 standard deviations is ±98.
    assert!((sent - 600.0).abs() < 98.0, "{sent}");
}

#[test]
fn a_crash_removes_the_hosts_capacity_and_a_restart_brings_it_back() {
    let crash = "[[event]]\nat_s = 600\nkind = \"crash\"\npeers = [\"a\"]\n\n\
                 [[event]]\nat_s = 1200\nkind = \"restart\"\npeers = [\"a\"]\n";
    let s = scenario(
        1_800,
        &[QWEN8, ENTRY, &cuda("a", ""), &traffic(6.0, ""), crash],
    );
    let r = run(&s, 5);
    // Ten minutes without a host: about 60 chats with nobody to serve them.
    let none = failed(&r, "no_peer_with_model");
    assert!((35..=90).contains(&none), "{:?}", model(&r).requests);
    assert_eq!(model(&r).plan, "solo");
    assert_eq!(r.peers[1].state, "up");
    assert_eq!(r.peers[1].node_state, Some(NodeState::Serving));

    let no_restart = scenario(
        1_800,
        &[
            QWEN8,
            ENTRY,
            &cuda("a", ""),
            &traffic(6.0, ""),
            &crash[..crash.find("\n\n").unwrap()],
        ],
    );
    let r = run(&no_restart, 5);
    assert_eq!(model(&r).plan, "waiting");
    assert_eq!(r.peers[1].state, "crashed");
    assert_eq!(model(&r).sla.status, "no-peer-with-model");
    assert!(failed(&r, "no_peer_with_model") > 60);
}

#[test]
fn with_a_replica_a_crash_costs_only_the_chats_in_flight() {
    let crash = "[[event]]\nat_s = 600\nkind = \"crash\"\npeers = [\"a\"]\n";
    // 12 chats a minute is demand enough for a second solo host (SPEC §3).
    let s = scenario(
        1_200,
        &[
            QWEN8,
            ENTRY,
            &cuda("a", ""),
            &cuda("b", ""),
            &traffic(12.0, ""),
            crash,
        ],
    );
    let r = run(&s, 9);
    let m = model(&r);
    assert_eq!(m.hosts, ["b"]);
    assert_eq!(failed(&r, "no_peer_with_model"), 0, "{:?}", m.requests);
    // A stream that had already reached the caller breaks; the rest are retried on b.
    assert!(failed(&r, "upstream_error") <= 4, "{:?}", m.requests);
    assert!(m.served_by_peer["a"] > 0 && m.served_by_peer["b"] > m.served_by_peer["a"]);
}

#[test]
fn a_late_joiner_serves_only_after_it_joined_and_loaded() {
    let s = scenario(
        900,
        &[
            QWEN8,
            ENTRY,
            &cuda("a", "join_at_s = 300"),
            &traffic(6.0, ""),
        ],
    );
    let r = run(&s, 2);
    let early = failed(&r, "no_peer_with_model") + failed(&r, "election_in_progress");
    assert!((15..=50).contains(&early), "{:?}", model(&r).requests);
    assert!(model(&r).requests.mesh > 40);
}

#[test]
fn a_partition_cuts_the_host_off_until_healed() {
    let events = "[[event]]\nat_s = 300\nkind = \"partition\"\npeers = [\"a\"]\n\n\
                  [[event]]\nat_s = 600\nkind = \"heal\"\n";
    let s = scenario(
        900,
        &[QWEN8, ENTRY, &cuda("a", ""), &traffic(6.0, ""), events],
    );
    let r = run(&s, 4);
    assert!(
        failed(&r, "no_peer_with_model") > 10,
        "{:?}",
        model(&r).requests
    );
    assert!(r.peers[1].reachable);
    // Cut off and never healed: the report says so.
    let cut = scenario(
        900,
        &[
            QWEN8,
            ENTRY,
            &cuda("a", ""),
            &traffic(6.0, ""),
            &events[..events.find("\n\n").unwrap()],
        ],
    );
    let r = run(&cut, 4);
    assert!(!r.peers[1].reachable);
    assert_eq!(model(&r).plan, "waiting");
}

#[test]
fn a_busy_host_queues_and_the_wait_shows_in_ttft() {
    let idle = scenario(
        1_800,
        &[
            QWEN8,
            ENTRY,
            &cuda("a", "max_inflight = 1"),
            &traffic(2.0, ""),
        ],
    );
    let busy = scenario(
        1_800,
        &[
            QWEN8,
            ENTRY,
            &cuda("a", "max_inflight = 1"),
            &traffic(25.0, ""),
        ],
    );
    let idle = model(&run(&idle, 1)).through_mesh.unwrap();
    let busy = model(&run(&busy, 1)).through_mesh.unwrap();
    assert!(
        busy.ttft_ms_p50 > 3.0 * idle.ttft_ms_p50,
        "{busy:?} vs {idle:?}"
    );
}

#[test]
fn native_baseline_is_three_probes_and_skips_probes_under_traffic() {
    let quiet = scenario(
        900,
        &[QWEN8, ENTRY, &cuda("a", ""), &traffic(1.0, "start_s = 120")],
    );
    let m = run(&quiet, 1);
    let native = model(&m).native.unwrap();
    assert_eq!(native.samples, 3);
    assert!((native.tps_p50 / 77.80 - 1.0).abs() < 0.15, "{native:?}");
    // Saturating traffic from the start: every probe finds chats in flight.
    let busy = scenario(900, &[QWEN8, ENTRY, &cuda("a", ""), &traffic(120.0, "")]);
    let m = run(&busy, 1);
    assert_eq!(model(&m).native, None);
    assert_eq!(model(&m).mesh_efficiency, MeshEfficiency::NoMeasurementYet);
}

#[test]
fn the_election_spills_qwen3_32b_onto_the_17_gb_cuda_peer() {
    let s = scenario(
        1_200,
        &[
            "[[model]]\nname = \"Qwen3-32B-Q4_K_M\"\nsize_gb = 19.76\nparams_b = 32.8\nlayers = 64\n",
            ENTRY,
            "[[peer]]\nname = \"mac\"\nbackend = \"metal\"\nfast_memory_gb = 14.5\nsystem_ram_gb = 24\n\
             mem_bandwidth_gbps = 120\nserve = [\"Qwen3-32B-Q4_K_M\"]\n",
            "[[peer]]\nname = \"cuda-17\"\nbackend = \"cuda\"\nfast_memory_gb = 17.2\nsystem_ram_gb = 32\n\
             mem_bandwidth_gbps = 736\nserve = [\"Qwen3-32B-Q4_K_M\"]\n",
            "[[peer]]\nname = \"cuda-8\"\nbackend = \"cuda\"\nfast_memory_gb = 8.6\nsystem_ram_gb = 16\n\
             mem_bandwidth_gbps = 360\nserve = [\"Qwen3-32B-Q4_K_M\"]\n",
            "[[traffic]]\nmodel = \"Qwen3-32B-Q4_K_M\"\nrate_per_min = 2\nprompt_tokens = 32\nmax_tokens = 128\n",
        ],
    );
    let r = run(&s, 1);
    let m = model(&r);
    assert_eq!(
        (m.plan.as_str(), m.hosts.as_slice()),
        ("solo", &["cuda-17".to_string()][..])
    );
    assert_eq!(m.by_host[0].placement, PlacementKind::MmapSpill);
    // The others are standby: in the plan for nothing, and /api/status shows no mode for them.
    assert_eq!(m.serving_mode.keys().collect::<Vec<_>>(), ["cuda-17"]);
    let mac = &r.peers[1];
    assert_eq!(
        (mac.node_state, mac.serving_mode),
        (Some(NodeState::Standby), None)
    );
    assert_eq!(r.peers[2].serving_mode, Some(ServingMode::Solo));
    let t = m.through_mesh.unwrap();
    assert!((t.tps_p50 / 3.98 - 1.0).abs() < 0.25, "{t:?}");
    assert_eq!(m.sla.tier, mesh_core::sla::Tier::Capacity);
}

fn deepseek_cohort(extra: &str) -> Scenario {
    let serve = "serve = [\"DeepSeek-R1-Distill-Llama-70B-Q4_K_M\"]\n";
    scenario(
        1_800,
        &[
            "[[model]]\nname = \"DeepSeek-R1-Distill-Llama-70B-Q4_K_M\"\nsize_gb = 42.5\n\
             params_b = 70.6\nlayers = 80\nembedding_length = 8192\n",
            ENTRY,
            &format!(
                "[[peer]]\nname = \"mac-mini\"\nbackend = \"metal\"\nfast_memory_gb = 14.5\n\
                 system_ram_gb = 24\nmem_bandwidth_gbps = 120\n{serve}"
            ),
            &format!(
                "[[peer]]\nname = \"cuda-a\"\nbackend = \"cuda\"\nfast_memory_gb = 17.2\n\
                 system_ram_gb = 32\nmem_bandwidth_gbps = 736\n{serve}"
            ),
            &format!(
                "[[peer]]\nname = \"cuda-b\"\nbackend = \"cuda\"\nfast_memory_gb = 16\n\
                 system_ram_gb = 32\nmem_bandwidth_gbps = 288\n{serve}"
            ),
            "[[traffic]]\nmodel = \"DeepSeek-R1-Distill-Llama-70B-Q4_K_M\"\nrate_per_min = 0.5\n\
             prompt_tokens = 200\nmax_tokens = 64\n",
            extra,
        ],
    )
}

#[test]
fn a_70b_pipeline_of_desktops_is_a_capacity_split_with_ttft_too_high() {
    let relayed = "[[event]]\nat_s = 0\nkind = \"set_latency\"\nlatency_ms = 100\n";
    let s = deepseek_cohort(relayed);
    let mut s = s;
    s.network.bandwidth_mbps = 8.0;
    let r = run(&s, 1);
    let m = model(&r);
    assert_eq!(m.plan, "split");
    let g = m.split_group.as_ref().unwrap();
    assert_eq!(g.host, "cuda-a");
    assert_eq!(g.members.len(), 3);
    assert_eq!(g.total_group_vram_gb, 47.7);
    assert_eq!(m.serving_mode["cuda-a"], ServingMode::SplitHost);
    assert_eq!(m.serving_mode["mac-mini"], ServingMode::SplitWorker);
    assert_eq!(m.by_host[0].placement, PlacementKind::Pipeline);
    // /api/status (mesh-core's classifier) shows the same pipeline.
    let host = &r.peers[2];
    assert_eq!(host.split_role, Some(SplitRole::PipelineHost));
    let group = host.split_group.as_ref().unwrap();
    assert_eq!(group.peer_ids.len(), 3);
    assert_eq!(group.host_id, host.id);
    let mac = &r.peers[1];
    assert_eq!(mac.serving_mode, Some(ServingMode::SplitWorker));
    assert_eq!(mac.node_state, Some(NodeState::Serving));
    // No native baseline on the pipeline path (SPEC §5).
    assert_eq!(m.native, None);
    let t = m.through_mesh.unwrap();
    assert!(t.ttft_ms_p50 > 15_000.0 && t.tps_p50 > 0.8, "{t:?}");
    assert_eq!(m.sla.tier, mesh_core::sla::Tier::Capacity);
    assert_eq!(m.sla.status, "ttft-too-high");
}

#[test]
fn split_decode_slows_as_link_latency_grows() {
    let lan = run(&deepseek_cohort(""), 1);
    let wan = run(
        &deepseek_cohort("[[event]]\nat_s = 0\nkind = \"set_latency\"\nlatency_ms = 100\n"),
        1,
    );
    let (lan, wan) = (
        model(&lan).through_mesh.unwrap(),
        model(&wan).through_mesh.unwrap(),
    );
    assert!(lan.tps_p50 > 1.5 * wan.tps_p50, "{lan:?} vs {wan:?}");
}

#[test]
fn losing_a_worker_breaks_the_split_and_the_model_waits() {
    let crash = "[[event]]\nat_s = 900\nkind = \"crash\"\npeers = [\"cuda-b\"]\n";
    let r = run(&deepseek_cohort(crash), 1);
    let m = model(&r);
    // 14.5 + 17.2 GB cannot hold 1.1 × 42.5 GB.
    assert_eq!(m.plan, "waiting");
    assert_eq!(m.serving_mode["cuda-a"], ServingMode::Waiting);
    assert!(m.requests.mesh > 0);
    assert!(failed(&r, "no_peer_with_model") > 0);
}

#[test]
fn an_entry_with_a_provider_falls_back_when_the_mesh_misses_the_sla() {
    // A daily-driver model on a CPU-only peer: ~2 tok/s, under the 8 tok/s floor.
    let slow = "[[peer]]\nname = \"laptop\"\nbackend = \"cpu\"\nfast_memory_gb = 12\nsystem_ram_gb = 16\n\
                mem_bandwidth_gbps = 20\nserve = [\"Qwen3-8B-Q4_K_M\"]\n";
    let entry = "[[peer]]\nname = \"entry\"\nrole = \"entry\"\nfallback = true\n";
    let s = scenario(1_800, &[QWEN8, entry, slow, &traffic(2.0, "")]);
    let r = run(&s, 1);
    let m = model(&r);
    assert_eq!(m.sla.status, "tps-too-low");
    // One caller, so one IP: its hourly budget (20) is spent, then chats stay on the mesh.
    assert_eq!(m.requests.fallback, 20, "{:?}", m.requests);
    assert!(m.requests.mesh > 20);
    let share = r.mesh_share_pct.unwrap();
    let expected = 100.0 * m.requests.mesh as f64 / (m.requests.mesh + 20) as f64;
    assert!((share - expected).abs() < 1.0, "{share} vs {expected}");
    // Two callers have two budgets.
    let two = scenario(
        900,
        &[QWEN8, entry, slow, &traffic(2.0, ""), &traffic(2.0, "")],
    );
    assert!(model(&run(&two, 1)).requests.fallback > 20);
    // Without a provider everything stays on the mesh.
    let no_provider = scenario(1_800, &[QWEN8, ENTRY, slow, &traffic(2.0, "")]);
    let r = run(&no_provider, 1);
    assert_eq!(model(&r).requests.fallback, 0);
}

#[test]
fn a_leaving_peer_finishes_its_chats_and_takes_no_more() {
    let leave = "[[event]]\nat_s = 300\nkind = \"leave\"\npeers = [\"a\"]\n";
    let s = scenario(
        600,
        &[QWEN8, ENTRY, &cuda("a", ""), &traffic(20.0, ""), leave],
    );
    let r = run(&s, 6);
    assert_eq!(r.peers[1].state, "left");
    assert_eq!(failed(&r, "upstream_error"), 0, "{:?}", model(&r).requests);
    assert!(failed(&r, "no_peer_with_model") > 50);
}

#[test]
fn dishonest_backends_serve_something_else() {
    let honest = model(&run(
        &scenario(900, &[QWEN8, ENTRY, &cuda("a", ""), &traffic(4.0, "")]),
        1,
    ))
    .through_mesh
    .unwrap();
    let cheap = scenario(
        900,
        &[
            QWEN8,
            ENTRY,
            &cuda("a", "behaviour = \"cheaper_quant\""),
            &traffic(4.0, ""),
        ],
    );
    let cheap = model(&run(&cheap, 1)).through_mesh.unwrap();
    assert!(cheap.tps_p50 > honest.tps_p50, "{cheap:?} vs {honest:?}");
    let canned = scenario(
        900,
        &[
            QWEN8,
            ENTRY,
            &cuda("a", "behaviour = \"canned_text\""),
            &traffic(4.0, ""),
        ],
    );
    let canned = model(&run(&canned, 1)).through_mesh.unwrap();
    assert!(canned.tps_p50 > 80.0, "{canned:?}");
    // A peer inflating its timings publishes better numbers than the entry measures.
    let inflated = scenario(
        900,
        &[
            QWEN8,
            ENTRY,
            &cuda("a", "behaviour = \"inflate_timings\""),
            &traffic(4.0, ""),
        ],
    );
    let r = run(&inflated, 1);
    let h = &model(&r).by_host[0];
    assert!(h.through_mesh.unwrap().tps_p50 > 1.4 * h.at_entry.unwrap().tps_p50);
}

#[test]
fn inflated_memory_wins_the_election_but_not_the_physics() {
    // An 8 GB card claiming 16 GB is elected for a 10 GB model and spills.
    let model_10gb = "[[model]]\nname = \"Big-14B-Q4_K_M\"\nsize_gb = 10\nparams_b = 14\n";
    let liar = "[[peer]]\nname = \"liar\"\nbackend = \"cuda\"\nfast_memory_gb = 8\nsystem_ram_gb = 32\n\
                mem_bandwidth_gbps = 448\nserve = [\"Big-14B-Q4_K_M\"]\nbehaviour = \"inflate_memory\"\n";
    let t = "[[traffic]]\nmodel = \"Big-14B-Q4_K_M\"\nrate_per_min = 2\nprompt_tokens = 32\nmax_tokens = 64\n";
    let r = run(&scenario(900, &[model_10gb, ENTRY, liar, t]), 1);
    let m = model(&r);
    assert_eq!(m.plan, "solo");
    assert_eq!(m.by_host[0].placement, PlacementKind::MmapSpill);
}

#[test]
fn without_an_entry_clients_use_the_hosts_api_directly() {
    let s = scenario(900, &[QWEN8, &cuda("a", ""), &traffic(4.0, "")]);
    let r = run(&s, 1);
    let m = model(&r);
    assert!(m.requests.mesh > 30);
    assert_eq!(m.by_host[0].at_entry, None);
    assert_eq!(m.sla.status, "meets-sla");
}

#[test]
fn a_split_host_announces_its_running_pipeline_and_its_nearest_rtts() {
    let s = deepseek_cohort("");
    let mut w = World::new(&s, 1);
    w.run();
    // entry, mac-mini, cuda-a (the host), cuda-b
    let host = w.announcement(2);
    assert!(host.hosts("DeepSeek-R1-Distill-Llama-70B-Q4_K_M"));
    assert_eq!(host.pipelines.len(), 1);
    let workers = &host.pipelines[0].workers;
    assert_eq!(workers.len(), 2);
    assert!(workers.contains(&w.peers[1].id) && workers.contains(&w.peers[3].id));
    assert_eq!(host.pipelines[0].total_group_memory_bytes, 47_700_000_000);
    assert!(w.announcement(1).pipelines.is_empty());
    // RTT hints name the other contributors, never the entry.
    let hinted: Vec<PeerId> = host.rtt_hints.iter().map(|h| h.peer).collect();
    assert_eq!(hinted.len(), 2);
    assert!(!hinted.contains(&w.peers[0].id));
}

#[test]
fn when_the_entry_crashes_its_streams_end_and_new_chats_find_no_entry() {
    let crash = "[[event]]\nat_s = 300\nkind = \"crash\"\npeers = [\"entry\"]\n";
    let s = scenario(
        600,
        &[QWEN8, ENTRY, &cuda("a", ""), &traffic(30.0, ""), crash],
    );
    let r = run(&s, 3);
    assert!(
        failed(&r, "entry_unavailable") > 100,
        "{:?}",
        model(&r).requests
    );
    assert!(
        failed(&r, "client_disconnected") >= 1,
        "{:?}",
        model(&r).requests
    );
    // The host is still up and serving; only the way in is gone.
    assert_eq!(r.peers[0].state, "crashed");
    assert_eq!(r.peers[1].node_state, Some(NodeState::Serving));
}

#[test]
fn a_restarted_host_starts_a_fresh_window_but_keeps_its_cached_baseline() {
    let events = "[[event]]\nat_s = 600\nkind = \"crash\"\npeers = [\"a\"]\n\n\
                  [[event]]\nat_s = 900\nkind = \"restart\"\npeers = [\"a\"]\n";
    let s = scenario(
        1_200,
        &[QWEN8, ENTRY, &cuda("a", ""), &traffic(1.0, ""), events],
    );
    let r = run(&s, 2);
    let h = &model(&r).by_host[0];
    assert!(h.served > h.through_mesh.unwrap().samples as u64, "{h:?}");
    assert!(h.native.is_some());
}
