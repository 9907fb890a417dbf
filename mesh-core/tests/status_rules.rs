//! Status classifier behaviour (SPEC §4): every honesty gate of `split_role` / `split_group`,
//! states and serving modes, and the `/api/status` and `/api/models` builders.

mod election_fixtures;

use election_fixtures::*;
use mesh_core::sla::Tier;
use mesh_core::status::{
    LocalFacts, MeshEfficiency, NodeState, PeerStatus, ServingMode, SplitGroup, SplitKind,
    SplitRole, StatusError, VerifyEntry, VerifyMode, VerifyVerdict, catalog_payload, classify_peer,
    status_payload,
};
use mesh_core::{Backend, MeshView, PeerId};
use std::collections::BTreeMap;

fn status(v: &MeshView, n: u8) -> PeerStatus {
    classify_peer(v, &id(n)).expect("peer in view")
}

fn role_and_group(v: &MeshView, n: u8) -> (Option<SplitRole>, Option<SplitGroup>) {
    let s = status(v, n);
    (s.split_role, s.split_group)
}

fn no_split(v: &MeshView, peers: &[u8]) {
    for &n in peers {
        assert_eq!(role_and_group(v, n), (None, None), "peer {n}");
    }
}

/// Three peers asked to share Qwen3-8B: the 17.2 GB CUDA peer hosts it, the others wait as
/// standby `Worker`s (the v0.66.56 phantom-split shape).
fn standby_cohort(known_size: bool, host_claims_pipeline: bool) -> MeshView {
    let mut host = peer(2, "rtx-4080s", Backend::Cuda, 17.2, 64.0)
        .wants(&[(QWEN8, QWEN8_GB)])
        .hosting(&[QWEN8]);
    if host_claims_pipeline {
        host = host.pipeline(QWEN8, &[1, 3], 40.3);
    }
    let mut peers = vec![
        peer(1, "mac-mini", Backend::Metal, 14.5, 24.0)
            .wants(&[(QWEN8, QWEN8_GB)])
            .serving(&[QWEN8]),
        host,
        peer(3, "cuda-b", Backend::Cuda, 8.6, 16.0)
            .wants(&[(QWEN8, QWEN8_GB)])
            .serving(&[QWEN8]),
    ];
    if !known_size {
        peers = peers.into_iter().map(|p| p.forget_size(QWEN8)).collect();
    }
    view(1, peers)
}

#[test]
fn standby_cohort_of_a_host_that_holds_the_model_has_no_split_group() {
    let v = standby_cohort(true, false);
    no_split(&v, &[1, 2, 3]);
    assert_eq!(status(&v, 2).serving_mode, Some(ServingMode::Solo));
    assert_eq!(status(&v, 1).state, NodeState::Standby);
    assert_eq!(status(&v, 1).serving_mode, None);
    // Even a host that (wrongly) announces a pipeline for a model it holds alone.
    no_split(&standby_cohort(true, true), &[1, 2, 3]);
}

#[test]
fn phantom_split_gate_falls_through_when_no_peer_knows_the_size() {
    // No evidence that the host can solo: the previous behaviour, a 3-peer pipeline.
    let v = standby_cohort(false, false);
    let group = SplitGroup {
        model: QWEN8.to_string(),
        host_id: short(2),
        peer_ids: vec![short(2), short(1), short(3)],
        total_group_vram_gb: 40.3,
    };
    assert_eq!(
        role_and_group(&v, 2),
        (Some(SplitRole::PipelineHost), Some(group.clone()))
    );
    assert_eq!(
        role_and_group(&v, 1),
        (Some(SplitRole::PipelineWorker), Some(group))
    );
}

/// The 2026-05-25 DeepSeek-R1-Distill-70B pipeline: host on the 17.2 GB CUDA peer, layers on
/// the 14.5 GB Mac and the 8.6 GB CUDA peer, 40.3 GB pooled.
fn deepseek_pipeline(known_size: bool, evidence: bool) -> MeshView {
    let mut host = peer(2, "cuda-a", Backend::Cuda, 17.2, 64.0)
        .wants(&[(DS70, DS70_GB)])
        .hosting(&[DS70])
        .timing(DS70, 24_925.0, 1.09, 1);
    if evidence {
        host = host.pipeline(DS70, &[1, 3], 40.3);
    }
    let mut peers = vec![
        peer(1, "mac-mini", Backend::Metal, 14.5, 24.0)
            .wants(&[(DS70, DS70_GB)])
            .serving(&[DS70])
            .rpc(Some(true)),
        host,
        peer(3, "cuda-b", Backend::Cuda, 8.6, 16.0)
            .wants(&[(DS70, DS70_GB)])
            .serving(&[DS70])
            .rpc(Some(true)),
    ];
    if !known_size {
        peers = peers.into_iter().map(|p| p.forget_size(DS70)).collect();
    }
    view(1, peers)
}

#[test]
fn deepseek_70b_three_peer_cohort_renders_as_a_genuine_pipeline() {
    let group = SplitGroup {
        model: DS70.to_string(),
        host_id: short(2),
        peer_ids: vec![short(2), short(1), short(3)],
        total_group_vram_gb: 40.3,
    };
    for (known_size, evidence) in [(true, true), (true, false), (false, true), (false, false)] {
        let v = deepseek_pipeline(known_size, evidence);
        let ctx = format!("size known: {known_size}, pipeline announced: {evidence}");
        assert_eq!(
            role_and_group(&v, 2),
            (Some(SplitRole::PipelineHost), Some(group.clone())),
            "{ctx}"
        );
        for n in [1, 3] {
            let s = status(&v, n);
            assert_eq!(s.split_role, Some(SplitRole::PipelineWorker), "{ctx}");
            assert_eq!(s.split_group.as_ref(), Some(&group), "{ctx}");
            assert_eq!(s.serving_mode, Some(ServingMode::SplitWorker), "{ctx}");
            assert_eq!(s.state, NodeState::Serving, "{ctx}");
        }
        assert_eq!(status(&v, 2).serving_mode, Some(ServingMode::SplitHost));
    }
}

#[test]
fn clients_never_get_a_split_role() {
    let v = view(
        9,
        vec![
            peer(2, "host", Backend::Metal, 12.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .hosting(&[QWEN32])
                .pipeline(QWEN32, &[3, 9], 22.0),
            peer(3, "worker", Backend::Metal, 10.0, 32.0).wants(&[(QWEN32, QWEN32_GB)]),
            entry(9),
        ],
    );
    let c = status(&v, 9);
    assert_eq!(
        (c.state, c.serving_mode, c.split_role),
        (NodeState::Client, None, None)
    );
    assert_eq!(
        status(&v, 2).split_group.map(|g| g.peer_ids),
        Some(vec![short(2), short(3)]),
        "the client is no member either"
    );
}

#[test]
fn a_peer_serving_alone_has_no_split_role() {
    let v = view(
        2,
        vec![
            peer(2, "solo", Backend::Cuda, 8.0, 32.0)
                .wants(&[(QWEN8, QWEN8_GB)])
                .hosting(&[QWEN8]),
        ],
    );
    let s = status(&v, 2);
    assert_eq!((s.split_role, s.split_group), (None, None));
    assert_eq!(
        (s.state, s.serving_mode),
        (NodeState::Serving, Some(ServingMode::Solo))
    );
}

#[test]
fn no_split_group_before_a_host_routes_the_model() {
    // Three boxes each waiting for the pipeline: nobody is a worker "for itself".
    let v = view(
        1,
        vec![
            peer(1, "a", Backend::Metal, 10.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .serving(&[QWEN32]),
            peer(2, "b", Backend::Metal, 12.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .loading(&[QWEN32])
                .pipeline(QWEN32, &[1], 22.0),
            peer(3, "c", Backend::Metal, 8.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .serving(&[QWEN32]),
        ],
    );
    no_split(&v, &[1, 2, 3]);
    assert_eq!(status(&v, 2).state, NodeState::Loading);
    assert_eq!(status(&v, 2).serving_mode, Some(ServingMode::Waiting));
    assert_eq!(
        status(&v, 1).state,
        NodeState::Loading,
        "listed by the loading host"
    );
    assert_eq!(status(&v, 3).state, NodeState::Standby);
    assert_eq!(status(&v, 3).serving_mode, Some(ServingMode::Waiting));
}

#[test]
fn two_hosts_routing_a_model_are_replicas_not_a_split() {
    // Sizes unknown, so only the replica gate stands between them and a bogus group.
    let v = view(
        1,
        vec![
            peer(1, "a", Backend::Cuda, 8.0, 32.0)
                .wants(&[(QWEN8, QWEN8_GB)])
                .hosting(&[QWEN8])
                .forget_size(QWEN8),
            peer(2, "b", Backend::Cuda, 8.0, 32.0)
                .wants(&[(QWEN8, QWEN8_GB)])
                .hosting(&[QWEN8])
                .pipeline(QWEN8, &[3], 12.0)
                .forget_size(QWEN8),
            peer(3, "c", Backend::Cuda, 4.0, 32.0)
                .wants(&[(QWEN8, QWEN8_GB)])
                .forget_size(QWEN8),
        ],
    );
    no_split(&v, &[1, 2, 3]);
}

#[test]
fn only_the_workers_the_host_announces_are_in_its_group() {
    let v = view(
        4,
        vec![
            peer(2, "host", Backend::Metal, 12.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .hosting(&[QWEN32])
                .pipeline(QWEN32, &[3], 22.0),
            peer(3, "worker", Backend::Metal, 10.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .serving(&[QWEN32]),
            peer(4, "standby", Backend::Metal, 10.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .serving(&[QWEN32]),
        ],
    );
    assert_eq!(
        status(&v, 2)
            .split_group
            .map(|g| (g.peer_ids, g.total_group_vram_gb)),
        Some((vec![short(2), short(3)], 22.0))
    );
    let standby = status(&v, 4);
    assert_eq!((standby.split_role, standby.serving_mode), (None, None));
    assert_eq!(standby.state, NodeState::Standby);
}

#[test]
fn announced_workers_missing_from_the_view_are_left_out_of_the_group() {
    let v = view(
        2,
        vec![
            peer(2, "host", Backend::Metal, 12.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .hosting(&[QWEN32])
                .pipeline(QWEN32, &[3, 7, 3], 32.0),
            peer(3, "worker", Backend::Metal, 10.0, 32.0).wants(&[(QWEN32, QWEN32_GB)]),
        ],
    );
    assert_eq!(
        status(&v, 2).split_group.map(|g| g.peer_ids),
        Some(vec![short(2), short(3)])
    );
}

#[test]
fn a_spill_host_without_a_pipeline_serves_solo_while_its_cohort_stands_by() {
    let v = view(
        1,
        vec![
            peer(1, "mac-mini", Backend::Metal, 14.5, 24.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .serving(&[QWEN32]),
            peer(2, "cuda-a", Backend::Cuda, 17.2, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .hosting(&[QWEN32])
                .timing(QWEN32, 1_047.0, 3.98, 12),
            peer(3, "cuda-b", Backend::Cuda, 8.6, 16.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .serving(&[QWEN32]),
        ],
    );
    no_split(&v, &[1, 2, 3]);
    assert_eq!(status(&v, 2).serving_mode, Some(ServingMode::Solo));
    let row = &catalog_payload(&v, &LocalFacts::default(), &|_| Tier::Capacity).models[0];
    assert_eq!((row.split_kind, row.node_count), (SplitKind::Solo, 1));
}

#[test]
fn status_payload_puts_this_node_at_the_top_and_the_others_in_peers() {
    let v = deepseek_pipeline(true, true);
    let local = LocalFacts {
        verify: BTreeMap::from([(
            id(2),
            BTreeMap::from([(
                DS70.to_string(),
                VerifyEntry {
                    verdict: VerifyVerdict::Match,
                    agreement: 1.0,
                    compared_tokens: 32,
                    mode: VerifyMode::Observe,
                    checked_at_unix_secs: 1_780_000_000,
                },
            )]),
        )]),
        inflight_requests: 2,
        ..LocalFacts::default()
    };
    let s = status_payload(&v, &local).unwrap();
    assert_eq!(s.node_id, short(1));
    assert_eq!(s.my_split_role, Some(SplitRole::PipelineWorker));
    assert_eq!(s.my_split_group.map(|g| g.host_id), Some(short(2)));
    assert_eq!(
        s.peers.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
        vec![short(2), short(3)]
    );
    assert_eq!(s.models, vec![DS70.to_string()]);
    assert_eq!(s.inflight_requests, 2);
    assert_eq!(s.my_vram_gb, 14.5);
    assert_eq!(
        s.peers[0].verify_by_model[DS70].verdict,
        VerifyVerdict::Match
    );
    assert!(s.peers[1].verify_by_model.is_empty());
    assert_eq!(s.peers[0].measured_ttft_ms_p50_by_model[DS70], 24_925.0);

    let orphan = MeshView::new(PeerId([7; 32]), v.peers.clone());
    assert_eq!(
        status_payload(&orphan, &local),
        Err(StatusError::MissingSelf(PeerId([7; 32])))
    );
}

#[test]
fn models_lists_only_what_this_node_can_reach() {
    let v = view(
        9,
        vec![
            peer(2, "reachable", Backend::Cuda, 17.2, 64.0)
                .wants(&[(QWEN8, QWEN8_GB)])
                .hosting(&[QWEN8]),
            peer(3, "unreachable", Backend::Cuda, 17.2, 64.0)
                .wants(&[(LLAMA3B, LLAMA3B_GB)])
                .hosting(&[LLAMA3B])
                .undialable(),
            entry(9),
        ],
    );
    let s = status_payload(&v, &LocalFacts::default()).unwrap();
    assert_eq!(s.models, vec![QWEN8.to_string()]);
    assert!(s.is_client);
    assert_eq!(s.node_state, NodeState::Client);
}

#[test]
fn catalog_measures_efficiency_against_the_same_peers_native_baseline() {
    // Phase 4: 82 ms / 45.26 tok/s through the mesh, 49 ms / 77.80 tok/s native, on one peer.
    let v = view(
        9,
        vec![
            peer(2, "rtx-4080s", Backend::Cuda, 17.2, 64.0)
                .wants(&[(QWEN8, QWEN8_GB)])
                .hosting(&[QWEN8])
                .timing(QWEN8, 82.0, 45.26, 40)
                .baseline(QWEN8, 49.0, 77.80),
            // A second host with fewer samples and a much better ratio: not mixed in.
            peer(3, "other", Backend::Cuda, 12.0, 64.0)
                .wants(&[(QWEN8, QWEN8_GB)])
                .hosting(&[QWEN8])
                .timing(QWEN8, 60.0, 70.0, 3)
                .baseline(QWEN8, 200.0, 10.0),
            entry(9),
        ],
    );
    let local = LocalFacts {
        first_served_unix_secs: BTreeMap::from([(QWEN8.to_string(), 1_779_900_000)]),
        ..LocalFacts::default()
    };
    let row = catalog_payload(&v, &local, &|_| Tier::DailyDriver)
        .models
        .remove(0);
    assert_eq!((row.split_kind, row.node_count), (SplitKind::MultiHost, 2));
    assert_eq!(row.through_tps_p50, Some(45.26));
    assert_eq!(row.native_tps_p50, Some(77.80));
    assert_eq!(row.ttft_overhead_ms, Some(33.0));
    assert!(
        matches!(row.mesh_efficiency, MeshEfficiency::Amber { ratio } if (ratio - 0.5817).abs() < 1e-4)
    );
    assert_eq!(row.first_served_at, Some(1_779_900_000));
}

#[test]
fn catalog_says_no_measurement_yet_for_a_pipeline_without_a_baseline() {
    let row = catalog_payload(
        &deepseek_pipeline(true, true),
        &LocalFacts::default(),
        &|_| Tier::Capacity,
    )
    .models
    .remove(0);
    assert_eq!((row.split_kind, row.node_count), (SplitKind::Pipeline, 3));
    assert_eq!(row.ttft_ms_p50, Some(24_925.0));
    assert_eq!(row.mesh_efficiency, MeshEfficiency::NoMeasurementYet);
    assert_eq!(row.ttft_overhead_ms, None);
    // 40.3 GB pooled against 1.1 × 42.52 GB.
    assert!(!row.mesh_fit.fits_pooled && !row.mesh_fit.fits_on_largest_node);
    assert_eq!(row.mesh_fit.pooled_vram_gb, 40.3);
    assert_eq!(row.mesh_fit.needed_vram_gb, Some(46.772));
}

#[test]
fn catalog_rows_go_daily_driver_first_then_capacity_then_experimental() {
    let v = view(
        1,
        vec![peer(1, "big", Backend::Cuda, 80.0, 256.0).wants(&[
            (DS70, DS70_GB),
            (QWEN8, QWEN8_GB),
            ("Mystery-7B", 4.0),
        ])],
    );
    let tier = |m: &str| match m {
        QWEN8 => Tier::DailyDriver,
        DS70 => Tier::Capacity,
        _ => Tier::Experimental,
    };
    let rows = catalog_payload(&v, &LocalFacts::default(), &tier).models;
    assert_eq!(
        rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        vec![QWEN8, DS70, "Mystery-7B"]
    );
    assert!(
        rows.iter()
            .all(|r| r.split_kind == SplitKind::Cold && r.node_count == 0)
    );
    assert!(rows.iter().all(|r| r.mesh_fit.fits_on_largest_node));
}
