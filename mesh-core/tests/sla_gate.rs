//! The SLA gate against the mesh states the original met: each status, which measurement wins,
//! and what counts as fresh.

use mesh_core::peer::{ModelTiming, RunningPipeline};
use mesh_core::samples::Summary;
use mesh_core::sla::{
    EntryMeasurement, EntryMeasurements, MeasurementSource, SlaConfig, SlaStatus, Tier,
    TierCatalog, evaluate,
};
use mesh_core::{KnownPeer, MeshView, PeerAnnouncement, PeerId, Role, Timestamp};
use proptest::prelude::*;

const QWEN8: &str = "Qwen3-8B-Q4_K_M";
const DS70: &str = "DeepSeek-R1-Distill-Llama-70B-Q4_K_M";

fn id(n: u8) -> PeerId {
    PeerId([n; 32])
}

fn now() -> Timestamp {
    Timestamp::from_secs(1_800_000_000)
}

fn secs_ago(s: u64) -> Timestamp {
    Timestamp::from_secs(1_800_000_000 - s)
}

/// A host of `model` reporting `timing` = (ttft ms, tok/s, samples), fresh 10 s ago.
fn host(n: u8, model: &str, timing: Option<(f64, f64, u32)>) -> KnownPeer {
    let mut a = PeerAnnouncement::new(id(n), "mesh", Role::Host { http_port: 9337 });
    a.hosted_models = vec![model.to_string()];
    a.serving_models = vec![model.to_string()];
    if let Some((ttft, tps, samples)) = timing {
        a.model_timings = vec![ModelTiming {
            model: model.to_string(),
            tps_p50: tps,
            ttft_ms_p50: ttft,
            samples_in_window: samples,
        }];
    }
    KnownPeer {
        announcement: a,
        rtt_ms: Some(20),
        first_seen: secs_ago(3_000),
        last_fresh: secs_ago(10),
    }
}

fn view(peers: Vec<KnownPeer>) -> MeshView {
    MeshView::new(id(0), peers)
}

fn no_entry() -> EntryMeasurements {
    EntryMeasurements::new()
}

fn entry(
    peer: u8,
    model: &str,
    ttft: f64,
    tps: f64,
    samples: u32,
    age_s: u64,
) -> EntryMeasurements {
    let mut m = EntryMeasurements::new();
    m.insert(
        (id(peer), model.to_string()),
        EntryMeasurement {
            summary: Summary {
                tps_p50: tps,
                ttft_ms_p50: ttft,
                samples,
            },
            measured_at: secs_ago(age_s),
        },
    );
    m
}

#[test]
fn deepseek_70b_pipeline_at_24925_ms_and_1_09_tps_is_ttft_too_high_on_capacity_tier() {
    // The 2026-05-23 3-peer pipeline: the host announces the pipeline, the workers only rpc.
    let mut h = host(1, DS70, Some((24_925.0, 1.09, 1)));
    h.announcement.pipelines = vec![RunningPipeline {
        model: DS70.to_string(),
        workers: vec![id(2), id(3)],
        total_group_memory_bytes: 40_300_000_000,
    }];
    let mut workers = Vec::new();
    for n in [2, 3] {
        let mut a = PeerAnnouncement::new(id(n), "mesh", Role::Worker);
        a.requested_models = vec![DS70.to_string()];
        a.rpc_ready = Some(true);
        workers.push(KnownPeer {
            announcement: a,
            rtt_ms: Some(30),
            first_seen: secs_ago(3_000),
            last_fresh: secs_ago(5),
        });
    }
    let mut peers = vec![h];
    peers.extend(workers);
    let e = evaluate(
        DS70,
        &view(peers),
        &no_entry(),
        now(),
        &SlaConfig::default(),
    );
    assert_eq!(e.tier, Tier::Capacity);
    assert_eq!(e.status, SlaStatus::TtftTooHigh);
    assert_eq!(e.candidates.len(), 1, "workers do not route the model");
    assert_eq!(e.best_ttft_ms, Some(24_925.0));
    assert_eq!(e.best_tps, Some(1.09));
    assert_eq!(e.best_peer, Some(id(1)));
}

#[test]
fn qwen3_8b_solo_at_82_ms_and_45_26_tps_meets_the_daily_driver_sla() {
    let v = view(vec![host(1, QWEN8, Some((82.0, 45.26, 12)))]);
    let e = evaluate(QWEN8, &v, &no_entry(), now(), &SlaConfig::default());
    assert_eq!(e.tier, Tier::DailyDriver);
    assert_eq!(e.status, SlaStatus::MeetsSla);
    assert!(e.meets_sla());
    assert_eq!((e.best_ttft_ms, e.best_tps), (Some(82.0), Some(45.26)));
}

#[test]
fn no_dialable_host_is_no_peer_with_model() {
    let other = host(1, "Llama-3.2-3B-Instruct-Q4_K_M", Some((100.0, 50.0, 3)));
    let mut undialable = host(2, QWEN8, Some((82.0, 45.0, 3)));
    undialable.rtt_ms = None;
    let mut not_ready = host(3, QWEN8, None);
    // Serving (elected) but llama-server not healthy yet: not routable.
    not_ready.announcement.hosted_models.clear();
    let e = evaluate(
        QWEN8,
        &view(vec![other, undialable, not_ready]),
        &no_entry(),
        now(),
        &SlaConfig::default(),
    );
    assert_eq!(e.status, SlaStatus::NoPeerWithModel);
    assert!(e.candidates.is_empty());
    assert_eq!(
        (e.best_ttft_ms, e.best_tps, e.best_peer),
        (None, None, None)
    );
}

#[test]
fn a_host_that_has_not_served_yet_is_no_measurements() {
    let v = view(vec![
        host(1, QWEN8, None),
        host(2, QWEN8, Some((80.0, 40.0, 0))),
    ]);
    let e = evaluate(QWEN8, &v, &no_entry(), now(), &SlaConfig::default());
    assert_eq!(e.status, SlaStatus::NoMeasurements);
    assert_eq!(e.candidates.len(), 2);
    assert_eq!(e.best_ttft_ms, None);
}

#[test]
fn each_miss_status_for_a_single_candidate() {
    let cases = [
        ((3_001.0, 8.0), SlaStatus::TtftTooHigh),
        ((3_000.0, 7.99), SlaStatus::TpsTooLow),
        ((9_000.0, 0.482), SlaStatus::BothTooLow),
        ((3_000.0, 8.0), SlaStatus::MeetsSla),
    ];
    for ((ttft, tps), want) in cases {
        let v = view(vec![host(1, QWEN8, Some((ttft, tps, 5)))]);
        let e = evaluate(QWEN8, &v, &no_entry(), now(), &SlaConfig::default());
        assert_eq!(e.status, want, "{ttft} ms, {tps} tok/s");
    }
}

#[test]
fn status_strings_are_the_public_header_values() {
    let all = [
        (SlaStatus::MeetsSla, "meets-sla"),
        (SlaStatus::NoPeerWithModel, "no-peer-with-model"),
        (SlaStatus::NoMeasurements, "no-measurements"),
        (SlaStatus::TtftTooHigh, "ttft-too-high"),
        (SlaStatus::TpsTooLow, "tps-too-low"),
        (SlaStatus::BothTooLow, "both-too-low"),
    ];
    for (s, text) in all {
        assert_eq!(s.as_str(), text);
        assert_eq!(serde_json::to_value(s).unwrap(), text);
    }
}

#[test]
fn one_passing_candidate_is_enough_and_is_the_best_peer() {
    let v = view(vec![
        host(1, QWEN8, Some((9_000.0, 0.7, 20))),
        host(2, QWEN8, None),
        host(3, QWEN8, Some((143.0, 21.0, 3))),
        host(4, QWEN8, Some((82.0, 45.26, 12))),
    ]);
    let e = evaluate(QWEN8, &v, &no_entry(), now(), &SlaConfig::default());
    assert_eq!(e.status, SlaStatus::MeetsSla);
    assert_eq!(e.candidates.len(), 4);
    // Most headroom: 45.26 tok/s is 5.7× the floor, 82 ms 37× under the ceiling.
    assert_eq!(e.best_peer, Some(id(4)));
}

#[test]
fn misses_across_candidates_report_the_candidate_closest_to_passing() {
    // One misses only TTFT, one misses both: a single miss is closer.
    let v = view(vec![
        host(1, QWEN8, Some((9_000.0, 2.0, 5))),
        host(2, QWEN8, Some((4_000.0, 30.0, 5))),
    ]);
    let e = evaluate(QWEN8, &v, &no_entry(), now(), &SlaConfig::default());
    assert_eq!(e.status, SlaStatus::TtftTooHigh);
    assert_eq!((e.best_peer, e.best_ttft_ms), (Some(id(2)), Some(4_000.0)));

    // One misses only TTFT, one only tok/s: TTFT takes precedence, whatever the margins.
    let v = view(vec![
        host(1, QWEN8, Some((100.0, 7.9, 5))),
        host(2, QWEN8, Some((20_000.0, 30.0, 5))),
    ]);
    let e = evaluate(QWEN8, &v, &no_entry(), now(), &SlaConfig::default());
    assert_eq!(e.status, SlaStatus::TtftTooHigh);
    assert_eq!(e.best_peer, Some(id(2)));

    // Two candidates missing the same target: the smaller miss is reported.
    let v = view(vec![
        host(1, QWEN8, Some((100.0, 7.0, 5))),
        host(2, QWEN8, Some((100.0, 4.0, 5))),
    ]);
    let e = evaluate(QWEN8, &v, &no_entry(), now(), &SlaConfig::default());
    assert_eq!((e.status, e.best_tps), (SlaStatus::TpsTooLow, Some(7.0)));

    // Every candidate misses both: both-too-low.
    let v = view(vec![
        host(1, QWEN8, Some((5_000.0, 7.0, 5))),
        host(2, QWEN8, Some((4_000.0, 4.0, 5))),
    ]);
    let e = evaluate(QWEN8, &v, &no_entry(), now(), &SlaConfig::default());
    assert_eq!(e.status, SlaStatus::BothTooLow);
}

#[test]
fn entry_measured_numbers_beat_the_peers_own_claim() {
    // The peer claims daily-driver speed; the entry timed what it really streamed.
    let v = view(vec![host(1, QWEN8, Some((82.0, 45.26, 50)))]);
    let measured = entry(1, QWEN8, 6_500.0, 3.1, 4, 60);
    let e = evaluate(QWEN8, &v, &measured, now(), &SlaConfig::default());
    assert_eq!(e.status, SlaStatus::BothTooLow);
    let m = e.candidates[0].measured.unwrap();
    assert_eq!(m.source, MeasurementSource::Entry);
    assert_eq!((m.ttft_ms_p50, m.tps_p50, m.samples), (6_500.0, 3.1, 4));

    // The other way round: the peer under-reports, the entry saw it meet the SLA.
    let v = view(vec![host(1, QWEN8, Some((9_000.0, 1.0, 50)))]);
    let measured = entry(1, QWEN8, 90.0, 40.0, 2, 60);
    let e = evaluate(QWEN8, &v, &measured, now(), &SlaConfig::default());
    assert_eq!(e.status, SlaStatus::MeetsSla);
}

#[test]
fn a_stale_or_thin_entry_measurement_falls_back_to_the_self_reported_one() {
    let v = view(vec![host(1, QWEN8, Some((82.0, 45.26, 50)))]);
    let config = SlaConfig {
        min_samples: 3,
        ..SlaConfig::default()
    };
    for measured in [
        entry(1, QWEN8, 9_000.0, 1.0, 10, 3_601), // older than an hour
        entry(1, QWEN8, 9_000.0, 1.0, 2, 10),     // fewer than 3 samples
        entry(2, QWEN8, 9_000.0, 1.0, 10, 10),    // another peer
        entry(1, DS70, 9_000.0, 1.0, 10, 10),     // another model
    ] {
        let e = evaluate(QWEN8, &v, &measured, now(), &config);
        assert_eq!(e.status, SlaStatus::MeetsSla);
        assert_eq!(
            e.candidates[0].measured.unwrap().source,
            MeasurementSource::SelfReported
        );
    }
}

#[test]
fn stale_measurements_are_no_measurements() {
    let config = SlaConfig::default();
    // Entry-measured an hour and a second ago; the peer's own numbers last refreshed as long ago.
    let mut h = host(1, QWEN8, Some((82.0, 45.26, 12)));
    h.last_fresh = secs_ago(3_601);
    let measured = entry(1, QWEN8, 82.0, 45.26, 12, 3_601);
    let e = evaluate(QWEN8, &view(vec![h.clone()]), &measured, now(), &config);
    assert_eq!(e.status, SlaStatus::NoMeasurements);
    assert_eq!(e.candidates.len(), 1);
    assert_eq!(e.candidates[0].status, SlaStatus::NoMeasurements);

    // Exactly at the limit still counts.
    h.last_fresh = secs_ago(3_600);
    let e = evaluate(QWEN8, &view(vec![h]), &no_entry(), now(), &config);
    assert_eq!(e.status, SlaStatus::MeetsSla);
}

#[test]
fn minimum_sample_count_is_configurable() {
    let v = view(vec![host(1, QWEN8, Some((82.0, 45.26, 2)))]);
    let strict = SlaConfig {
        min_samples: 3,
        ..SlaConfig::default()
    };
    assert_eq!(
        evaluate(QWEN8, &v, &no_entry(), now(), &strict).status,
        SlaStatus::NoMeasurements
    );
    assert_eq!(
        evaluate(QWEN8, &v, &no_entry(), now(), &SlaConfig::default()).status,
        SlaStatus::MeetsSla
    );
}

#[test]
fn garbage_figures_from_gossip_are_not_measurements() {
    for (ttft, tps) in [
        (f64::NAN, 40.0),
        (80.0, f64::INFINITY),
        (80.0, 0.0),
        (-1.0, 40.0),
    ] {
        let v = view(vec![host(1, QWEN8, Some((ttft, tps, 5)))]);
        let e = evaluate(QWEN8, &v, &no_entry(), now(), &SlaConfig::default());
        assert_eq!(e.status, SlaStatus::NoMeasurements, "{ttft} {tps}");
    }
}

#[test]
fn tier_and_targets_follow_config_overrides() {
    // SmolLM2 is experimental by default (≤ 30 s, ≥ 0.3 tok/s); pinned to daily-driver it must
    // meet ≤ 3 s and ≥ 8 tok/s.
    let smol = "SmolLM2-135M-Instruct.Q4_1";
    let v = view(vec![host(1, smol, Some((4_000.0, 140.0, 3)))]);
    let e = evaluate(smol, &v, &no_entry(), now(), &SlaConfig::default());
    assert_eq!(
        (e.tier, e.status),
        (Tier::Experimental, SlaStatus::MeetsSla)
    );
    let config = SlaConfig {
        catalog: TierCatalog::with_overrides([("SmolLM2", Tier::DailyDriver)]),
        ..SlaConfig::default()
    };
    let e = evaluate(smol, &v, &no_entry(), now(), &config);
    assert_eq!(
        (e.tier, e.status),
        (Tier::DailyDriver, SlaStatus::TtftTooHigh)
    );
    assert_eq!(e.targets.ttft_ms_p50_max, 3_000.0);
}

#[test]
fn sla_config_reads_from_toml_style_json_with_defaults() {
    let c: SlaConfig =
        serde_json::from_str(r#"{"min_samples": 3, "catalog": {"SmolLM2": "daily-driver"}}"#)
            .unwrap();
    assert_eq!(c.min_samples, 3);
    assert_eq!(c.max_measurement_age_secs, 3_600);
    assert_eq!(
        c.catalog.tier_of("smollm2-135m-instruct.q4_1"),
        Tier::DailyDriver
    );
}

fn arb_timing() -> impl Strategy<Value = Option<(f64, f64, u32)>> {
    prop::option::of((0.0f64..40_000.0, 0.01f64..100.0, 0u32..5))
}

proptest! {
    #[test]
    fn meets_sla_iff_some_candidate_passes_both_targets(
        timings in prop::collection::vec((arb_timing(), any::<bool>()), 0..6),
    ) {
        let peers: Vec<KnownPeer> = timings
            .iter()
            .enumerate()
            .map(|(i, (t, dialable))| {
                let mut p = host(i as u8 + 1, QWEN8, *t);
                if !dialable {
                    p.rtt_ms = None;
                }
                p
            })
            .collect();
        let e = evaluate(QWEN8, &view(peers), &no_entry(), now(), &SlaConfig::default());
        let passing = timings.iter().any(|(t, dialable)| {
            *dialable && t.is_some_and(|(ttft, tps, n)| n >= 1 && ttft <= 3_000.0 && tps >= 8.0)
        });
        prop_assert_eq!(e.meets_sla(), passing);
        prop_assert_eq!(e.candidates.len(), timings.iter().filter(|(_, d)| *d).count());
        // The best figures are always one real candidate's.
        if let Some(best) = e.best_peer {
            let c = e.candidates.iter().find(|c| c.peer == best).unwrap();
            prop_assert_eq!(c.status, e.status);
            prop_assert_eq!(c.measured.map(|m| m.ttft_ms_p50), e.best_ttft_ms);
        } else {
            prop_assert!(matches!(
                e.status,
                SlaStatus::NoPeerWithModel | SlaStatus::NoMeasurements
            ));
        }
    }
}
