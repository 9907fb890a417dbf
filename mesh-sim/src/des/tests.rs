use super::*;
use crate::check::Rule;
use crate::report::ModelReport;
use mesh_core::status::{MeshEfficiency, NodeState, ServingMode, SplitRole, VerifyVerdict};
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

fn outcome(s: &Scenario, seed: u64) -> Outcome {
    run_outcome(s, seed, false, None)
}

fn model(r: &Report) -> &ModelReport {
    &r.models[0]
}

fn failed(r: &Report, reason: &str) -> u64 {
    model(r).requests.failed.get(reason).copied().unwrap_or(0)
}

/// The checkers found nothing (with the seed and the violations when they did).
fn clean(r: &Report) {
    assert!(r.checks.passed(), "seed {}: {:?}", r.seed, r.checks.first);
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
    assert_eq!(model(&other).hosts.len(), 2, "hot demand: a replica");
}

#[test]
fn every_chat_leaves_a_sample_on_its_host_and_one_at_the_entry() {
    let s = scenario(1_800, &[QWEN8, ENTRY, &cuda("a", ""), &traffic(6.0, "")]);
    let r = run(&s, 3);
    clean(&r);
    let m = model(&r);
    assert!(m.requests.mesh > 100, "{:?}", m.requests);
    let host = &m.by_host[0];
    assert_eq!(host.served, m.requests.mesh);
    // Audit probes are chats to the host too (it cannot tell them apart): both windows hold
    // every chat and every probe, and nothing else.
    let probes = u64::from(r.verification[0].audits);
    assert!(probes > 10, "{:?}", r.verification);
    let through = host.through_mesh.unwrap().samples as u64;
    assert_eq!(through, m.requests.mesh + probes);
    assert_eq!(host.at_entry.unwrap().samples as u64, through);
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
    clean(&r);
    // Ten minutes without a host, and the restart's settle and load: about 60 chats with
    // nobody to serve them.
    let none = failed(&r, "no_peer_with_model") + failed(&r, "election_in_progress");
    assert!((35..=100).contains(&none), "{:?}", model(&r).requests);
    assert_eq!(model(&r).plan, "solo");
    assert_eq!(r.peers[1].state, "up");
    assert_eq!(r.peers[1].node_state, Some(NodeState::Serving));
    // The entry stopped routing to it within the transport's timeout and one probe.
    let crash = &r.gossip.crashed_hosts[0];
    assert_eq!(crash.peer, "a");
    assert!(
        crash.out_of_targets_after_ms.unwrap() <= 5_000.0,
        "{crash:?}"
    );

    let no_restart = scenario(
        1_800,
        &[
            QWEN8,
            ENTRY,
            &cuda("a", ""),
            &traffic(6.0, ""),
            &crash_only(),
        ],
    );
    let r = run(&no_restart, 5);
    clean(&r);
    assert_eq!(model(&r).plan, "waiting");
    assert_eq!(r.peers[1].state, "crashed");
    // Still held (stale, then removed after 360 s) but undialable: no candidate.
    assert_eq!(model(&r).sla.status, "no-peer-with-model");
    assert!(failed(&r, "no_peer_with_model") + failed(&r, "no_capable_node") > 60);
}

fn crash_only() -> String {
    "[[event]]\nat_s = 600\nkind = \"crash\"\npeers = [\"a\"]\n".into()
}

#[test]
fn with_a_replica_a_crash_costs_only_the_chats_in_flight() {
    // 12 chats a minute is demand enough for a second solo host (SPEC §3).
    let s = scenario(
        1_200,
        &[
            QWEN8,
            ENTRY,
            &cuda("a", ""),
            &cuda("b", ""),
            &traffic(12.0, "start_s = 60"),
            &crash_only(),
        ],
    );
    let r = run(&s, 9);
    clean(&r);
    let m = model(&r);
    assert_eq!(m.hosts, ["b"]);
    assert_eq!(failed(&r, "no_peer_with_model"), 0, "{:?}", m.requests);
    // A stream that had already reached the caller breaks; the rest are retried on b.
    assert!(failed(&r, "upstream_error") <= 4, "{:?}", m.requests);
    assert!(m.served_by_peer["a"] > 0 && m.served_by_peer["b"] > m.served_by_peer["a"]);
    let crash = &r.gossip.crashed_hosts[0];
    assert!(
        crash.out_of_targets_after_ms.unwrap() <= 5_000.0,
        "{crash:?}"
    );
}

#[test]
fn a_late_joiner_serves_only_after_it_joined_listened_and_loaded() {
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
    clean(&r);
    let early = failed(&r, "no_peer_with_model") + failed(&r, "election_in_progress");
    assert!((15..=55).contains(&early), "{:?}", model(&r).requests);
    assert!(model(&r).requests.mesh > 40);
}

#[test]
fn a_partition_cuts_the_host_off_until_healed_and_the_mesh_converges_after() {
    let events = "[[event]]\nat_s = 300\nkind = \"partition\"\npeers = [\"a\"]\n\n\
                  [[event]]\nat_s = 600\nkind = \"heal\"\n";
    let s = scenario(
        900,
        &[QWEN8, ENTRY, &cuda("a", ""), &traffic(6.0, ""), events],
    );
    let r = run(&s, 4);
    clean(&r);
    assert!(
        failed(&r, "no_peer_with_model") + failed(&r, "no_capable_node") > 10,
        "{:?}",
        model(&r).requests
    );
    assert!(r.peers[1].reachable);
    assert!(matches!(
        r.checks.liveness,
        crate::check::Liveness::Converged { .. }
    ));
    // Cut off and never healed: the report says so, and the liveness phase heals it.
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
    clean(&r);
    assert!(!r.peers[1].reachable);
    assert_eq!(model(&r).sla.status, "no-peer-with-model");
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
fn native_baseline_is_three_probes_with_a_fingerprint_and_skips_probes_under_traffic() {
    let quiet = scenario(
        900,
        &[QWEN8, ENTRY, &cuda("a", ""), &traffic(1.0, "start_s = 120")],
    );
    let o = outcome(&quiet, 1);
    let native = model(&o.report).native.unwrap();
    assert_eq!(native.samples, 3);
    assert!((native.tps_p50 / 77.80 - 1.0).abs() < 0.15, "{native:?}");
    // The fingerprint of the fixed probe went out with it and reached the entry.
    let row = &o.statuses["entry"].peers[0];
    assert_eq!(row.native_tps_p50_by_model.len(), 1);
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
    clean(&r);
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
fn a_split_host_announces_its_running_pipeline_and_its_nearest_rtts() {
    let s = deepseek_cohort("");
    let mut w = World::new(&s, 1);
    w.run(None);
    // entry, mac-mini, cuda-a (the host), cuda-b
    let host = w.local_announcement(2);
    assert!(host.hosts("DeepSeek-R1-Distill-Llama-70B-Q4_K_M"));
    assert_eq!(host.pipelines.len(), 1);
    let workers = &host.pipelines[0].workers;
    assert_eq!(workers.len(), 2);
    assert!(workers.contains(&w.nodes[1].id) && workers.contains(&w.nodes[3].id));
    assert_eq!(host.pipelines[0].total_group_memory_bytes, 47_700_000_000);
    assert!(w.local_announcement(1).pipelines.is_empty());
    // RTT hints name the other contributors, never the entry.
    let hinted: Vec<PeerId> = host.rtt_hints.iter().map(|h| h.peer).collect();
    assert_eq!(hinted.len(), 2);
    assert!(!hinted.contains(&w.nodes[0].id));
    // Every node's announcement went out signed and arrived as published at the entry.
    let entry = w.nodes[0].gossip.as_ref().unwrap();
    let held = entry.announcement(&w.nodes[2].id).unwrap();
    assert!(held.verify());
    assert_eq!(held.value().pipelines, host.pipelines);
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
    clean(&r);
    let m = model(&r);
    // 14.5 + 17.2 GB cannot hold 1.1 × 42.5 GB.
    assert_eq!(m.plan, "waiting");
    assert_eq!(m.serving_mode["cuda-a"], ServingMode::Waiting);
    assert!(m.requests.mesh > 0);
    assert!(failed(&r, "no_peer_with_model") > 0);
    assert!(r.peers[2].split_group.is_none());
}

#[test]
fn an_entry_with_a_provider_falls_back_when_the_mesh_misses_the_sla() {
    // A daily-driver model on a CPU-only peer: ~2 tok/s, under the 8 tok/s floor.
    let slow = "[[peer]]\nname = \"laptop\"\nbackend = \"cpu\"\nfast_memory_gb = 12\nsystem_ram_gb = 16\n\
                mem_bandwidth_gbps = 20\nserve = [\"Qwen3-8B-Q4_K_M\"]\n";
    let entry = "[[peer]]\nname = \"entry\"\nrole = \"entry\"\nfallback = true\n";
    let s = scenario(1_800, &[QWEN8, entry, slow, &traffic(2.0, "")]);
    let r = run(&s, 1);
    clean(&r);
    let m = model(&r);
    assert_eq!(m.sla.status, "tps-too-low");
    // One caller, so one IP: its hourly budget (20) is spent, then chats stay on the mesh.
    assert_eq!(m.requests.fallback, 20, "{:?}", m.requests);
    assert!(m.requests.mesh > 20);
    let share = r.mesh_share_pct.unwrap();
    let expected = 100.0 * m.requests.mesh as f64 / (m.requests.mesh + 20) as f64;
    assert!((share - expected).abs() < 1.0, "{share} vs {expected}");
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
    clean(&r);
    assert_eq!(r.peers[1].state, "left");
    assert_eq!(failed(&r, "upstream_error"), 0, "{:?}", model(&r).requests);
    assert!(failed(&r, "no_peer_with_model") > 50);
}

#[test]
fn a_cheaper_quant_is_caught_against_the_entrys_own_server_and_honest_backends_are_not() {
    // The entry serves both models (ground truth). One peer runs a cheaper quant of Qwen3-8B;
    // an honest Metal peer serves Llama on another backend than the entry's CUDA.
    let models = "[[model]]\nname = \"Qwen3-8B-Q4_K_M\"\nsize_gb = 5.03\nparams_b = 8.19\n\n\
                  [[model]]\nname = \"Llama-3.1-8B-Instruct-Q4_K_M\"\nsize_gb = 4.92\nparams_b = 8.03\n";
    let entry = "[[peer]]\nname = \"entry\"\nrole = \"entry\"\nbackend = \"cuda\"\nfast_memory_gb = 24\n\
                 system_ram_gb = 64\nmem_bandwidth_gbps = 1008\n\
                 serve = [\"Qwen3-8B-Q4_K_M\", \"Llama-3.1-8B-Instruct-Q4_K_M\"]\n";
    let cheat = "[[peer]]\nname = \"cheat\"\nbackend = \"cuda\"\nfast_memory_gb = 16\nsystem_ram_gb = 32\n\
                 mem_bandwidth_gbps = 500\nserve = [\"Qwen3-8B-Q4_K_M\"]\nbehaviour = \"cheaper_quant\"\n";
    let mac = "[[peer]]\nname = \"mac\"\nbackend = \"metal\"\nfast_memory_gb = 16\nsystem_ram_gb = 32\n\
               mem_bandwidth_gbps = 400\nserve = [\"Llama-3.1-8B-Instruct-Q4_K_M\"]\n";
    let load = "[[traffic]]\nmodel = \"Qwen3-8B-Q4_K_M\"\nrate_per_min = 12\nprompt_tokens = 64\nmax_tokens = 128\n\n\
                [[traffic]]\nmodel = \"Llama-3.1-8B-Instruct-Q4_K_M\"\nrate_per_min = 12\nprompt_tokens = 64\nmax_tokens = 128\n\n\
                [verify]\ninterval_s = 20\n";
    let s = scenario(2_400, &[models, entry, cheat, mac, load]);
    let r = run(&s, 3);
    clean(&r);
    let row = |peer: &str| {
        r.verification
            .iter()
            .find(|v| v.peer == peer)
            .unwrap_or_else(|| panic!("{peer} audited: {:?}", r.verification))
    };
    assert_eq!(row("cheat").verdict, Some(VerifyVerdict::Mismatch));
    assert!(row("cheat").mismatches >= 1);
    let mac = row("mac");
    assert_eq!(mac.mismatches, 0, "{mac:?}");
    assert_eq!(mac.verdict, Some(VerifyVerdict::Match), "{mac:?}");
    assert!(!r.checks.violations.contains_key(&Rule::HonestPeerDemoted));
}

#[test]
fn enforcement_takes_a_caught_peer_out_of_rotation() {
    let models = "[[model]]\nname = \"Qwen3-8B-Q4_K_M\"\nsize_gb = 5.03\nparams_b = 8.19\n";
    let entry = "[[peer]]\nname = \"entry\"\nrole = \"entry\"\nbackend = \"cuda\"\nfast_memory_gb = 24\n\
                 system_ram_gb = 64\nmem_bandwidth_gbps = 1008\nserve = [\"Qwen3-8B-Q4_K_M\"]\n";
    let cheat = "[[peer]]\nname = \"cheat\"\nbackend = \"cuda\"\nfast_memory_gb = 16\nsystem_ram_gb = 32\n\
                 mem_bandwidth_gbps = 500\nserve = [\"Qwen3-8B-Q4_K_M\"]\nbehaviour = \"canned_text\"\n";
    let load = "[[traffic]]\nmodel = \"Qwen3-8B-Q4_K_M\"\nrate_per_min = 20\nprompt_tokens = 64\nmax_tokens = 128\n\n\
                [verify]\nmode = \"enforce\"\ninterval_s = 20\n";
    let s = scenario(3_000, &[models, entry, cheat, load]);
    let r = run(&s, 2);
    clean(&r);
    let v = &r.verification[0];
    assert_eq!((v.peer.as_str(), v.demoted), ("cheat", true), "{v:?}");
    // Once demoted it serves nothing more: the entry's own server takes every chat.
    let m = model(&r);
    assert!(
        m.served_by_peer["entry"] > 2 * m.served_by_peer["cheat"],
        "{m:?}"
    );
}

#[test]
fn without_an_entry_clients_use_the_hosts_api_directly() {
    let s = scenario(900, &[QWEN8, &cuda("a", ""), &traffic(4.0, "")]);
    let r = run(&s, 1);
    clean(&r);
    let m = model(&r);
    assert!(m.requests.mesh > 40);
    assert_eq!(m.by_host[0].at_entry, None);
    assert_eq!(m.sla.status, "meets-sla");
    assert!(r.verification.is_empty(), "no entry, no audits");
}

#[test]
fn when_the_entry_crashes_its_streams_end_and_new_chats_find_no_entry() {
    let crash = "[[event]]\nat_s = 300\nkind = \"crash\"\npeers = [\"entry\"]\n";
    let s = scenario(
        600,
        &[QWEN8, ENTRY, &cuda("a", ""), &traffic(30.0, ""), crash],
    );
    let r = run(&s, 3);
    clean(&r);
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
    assert_eq!(r.peers[1].state, "up");
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
    clean(&r);
    let h = &model(&r).by_host[0];
    assert!(h.served > h.through_mesh.unwrap().samples as u64, "{h:?}");
    assert!(h.native.is_some());
    assert_eq!(r.peers[1].node_state, Some(NodeState::Serving));
}

#[test]
fn a_changed_announcement_reaches_every_peer_of_a_small_lossy_mesh_within_a_second() {
    let mut parts = vec![QWEN8.to_string(), ENTRY.to_string()];
    // Six workstations, fastest first, win the elections; they are killed one after another
    // once the mesh has settled, so each re-plan is a change that must spread (a settled,
    // unchanging mesh only has load-only news).
    for i in 0..6 {
        parts.push(format!(
            "[[peer]]\nname = \"big{i}\"\nbackend = \"cuda\"\nfast_memory_gb = 48\n\
             system_ram_gb = 128\nmem_bandwidth_gbps = {}\nserve = [\"Qwen3-8B-Q4_K_M\"]\n",
            1000 - 10 * i
        ));
        parts.push(format!(
            "[[event]]\nat_s = {}\nkind = \"crash\"\npeers = [\"big{i}\"]\n",
            240 + 90 * i
        ));
    }
    for i in 0..34 {
        parts.push(cuda(&format!("p{i}"), ""));
    }
    parts.push(traffic(12.0, ""));
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    let mut s = scenario(900, &refs);
    s.network.latency_ms = [20.0, 100.0];
    s.network.loss = 0.01;
    let r = run(&s, 5);
    clean(&r);
    let c = &r.gossip.convergence;
    assert!(c.changes >= 4, "{c:?}");
    assert!(c.within_1s_pct.unwrap() >= 90.0, "{c:?}");
    assert!(c.p50_ms.unwrap() < 1_000.0, "{c:?}");
    assert_eq!(r.gossip.bad_signatures, 0);
    assert!(r.gossip.steady_bytes_per_peer_per_s > 0.0);
    // Every kind of message was used and counted.
    for kind in [
        "hello",
        "digest",
        "records",
        "rumor_announcement",
        "rumor_heartbeat",
    ] {
        assert!(
            r.gossip.by_kind.contains_key(kind),
            "{kind}: {:?}",
            r.gossip.by_kind
        );
    }
}

#[test]
fn an_honest_split_keeps_one_host_per_group_and_the_mesh_agrees_on_it() {
    let r = run(&deepseek_cohort(""), 4);
    clean(&r);
    let host = &r.peers[2];
    assert_eq!(host.split_role, Some(SplitRole::PipelineHost));
    assert!(matches!(
        r.checks.liveness,
        crate::check::Liveness::Converged { .. }
    ));
}
