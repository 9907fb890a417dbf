//! The fallback decision (every verdict, both triggers), the budget it spends, and the header set
//! callers see on mesh- and fallback-served responses.

use mesh_core::peer::ModelTiming;
use mesh_core::sla::{
    BudgetLeft, EntryMeasurements, Evaluation, FallbackBudget, FallbackConfig, FallbackStatus,
    FallbackTrigger, ServedBy, SlaConfig, SlaStatus, Tier, decide_and_spend, decide_fallback,
    decide_fallback_after_mesh_failure, evaluate, response_headers,
};
use mesh_core::{KnownPeer, MeshView, PeerAnnouncement, PeerId, Role, Timestamp};
use std::net::{IpAddr, Ipv4Addr};

const QWEN8: &str = "Qwen3-8B-Q4_K_M";
const DS70: &str = "DeepSeek-R1-Distill-Llama-70B-Q4_K_M";

fn now() -> Timestamp {
    Timestamp::from_secs(1_800_000_000)
}

fn host(n: u8, model: &str, ttft: f64, tps: f64) -> KnownPeer {
    let mut a = PeerAnnouncement::new(PeerId([n; 32]), "mesh", Role::Host { http_port: 9337 });
    a.hosted_models = vec![model.to_string()];
    a.model_timings = vec![ModelTiming {
        model: model.to_string(),
        tps_p50: tps,
        ttft_ms_p50: ttft,
        samples_in_window: 6,
    }];
    KnownPeer {
        announcement: a,
        rtt_ms: Some(20),
        first_seen: Timestamp::from_secs(1_799_990_000),
        last_fresh: Timestamp::from_secs(1_799_999_990),
    }
}

fn eval(model: &str, peers: Vec<KnownPeer>) -> Evaluation {
    evaluate(
        model,
        &MeshView::new(PeerId([0; 32]), peers),
        &EntryMeasurements::new(),
        now(),
        &SlaConfig::default(),
    )
}

fn keyed() -> FallbackConfig {
    FallbackConfig {
        api_key_configured: true,
        ..FallbackConfig::default()
    }
}

/// Qwen3-8B on the 0.482 tok/s MacBook of Phase 1: a daily-driver miss.
fn slow_qwen() -> Evaluation {
    eval(QWEN8, vec![host(1, QWEN8, 9_000.0, 0.482)])
}

const FULL: BudgetLeft = BudgetLeft(20);

#[test]
fn sla_met_stays_on_the_mesh_without_touching_the_provider() {
    let e = eval(QWEN8, vec![host(1, QWEN8, 82.0, 45.26)]);
    let d = decide_fallback(&e, &keyed(), FULL);
    assert_eq!(d.status, FallbackStatus::MeshMeetsSla);
    assert_eq!(d.status.as_str(), "mesh-meets-sla");
    assert!(!d.fires());
    assert_eq!(
        (d.provider, d.provider_model, d.budget_remaining),
        (None, None, None)
    );
}

#[test]
fn daily_driver_miss_with_key_mapping_and_budget_fires() {
    let d = decide_fallback(&slow_qwen(), &keyed(), FULL);
    assert_eq!(d.status, FallbackStatus::FallbackFired);
    assert_eq!(d.trigger, FallbackTrigger::SlaMiss);
    assert_eq!(d.provider.as_deref(), Some("openrouter"));
    assert_eq!(d.provider_model.as_deref(), Some("qwen/qwen3-8b"));
    assert_eq!(d.budget_remaining, Some(19));
}

#[test]
fn no_peer_with_a_daily_driver_fires_too() {
    let e = eval(QWEN8, vec![]);
    assert_eq!(e.status, SlaStatus::NoPeerWithModel);
    assert!(decide_fallback(&e, &keyed(), FULL).fires());
}

#[test]
fn no_api_key_is_fallback_disabled() {
    let d = decide_fallback(&slow_qwen(), &FallbackConfig::default(), FULL);
    assert_eq!(d.status, FallbackStatus::FallbackDisabled);
    assert!(!d.fires());
}

#[test]
fn capacity_tier_miss_stays_on_the_mesh_as_wrong_tier() {
    let e = eval(DS70, vec![host(1, DS70, 24_925.0, 1.09)]);
    assert_eq!(e.tier, Tier::Capacity);
    let d = decide_fallback(&e, &keyed(), FULL);
    assert_eq!(d.status, FallbackStatus::FallbackWrongTier);
    // Even with a mapping for it: capacity tier is the mesh's demo.
    let mut c = keyed();
    c.model_map.insert(
        "deepseek-r1-distill-llama-70b".into(),
        "deepseek/r1-70b".into(),
    );
    assert_eq!(
        decide_fallback(&e, &c, FULL).status,
        FallbackStatus::FallbackWrongTier
    );
    // Experimental too.
    let smol = "SmolLM2-135M-Instruct.Q4_1";
    let e = eval(smol, vec![]);
    assert_eq!(
        decide_fallback(&e, &keyed(), FULL).status,
        FallbackStatus::FallbackWrongTier
    );
}

#[test]
fn unmapped_daily_driver_is_fallback_no_mapping() {
    let mut c = keyed();
    c.model_map.clear();
    let d = decide_fallback(&slow_qwen(), &c, FULL);
    assert_eq!(d.status, FallbackStatus::FallbackNoMapping);
}

#[test]
fn spent_budget_is_rate_limited_and_stays_on_the_mesh() {
    let d = decide_fallback(&slow_qwen(), &keyed(), BudgetLeft(0));
    assert_eq!(d.status, FallbackStatus::FallbackRateLimited);
    assert!(!d.fires());
    let d = decide_fallback(&slow_qwen(), &keyed(), BudgetLeft(1));
    assert_eq!(d.budget_remaining, Some(0));
}

#[test]
fn the_twenty_first_fallback_in_an_hour_from_one_ip_stays_on_the_mesh() {
    let mut budget = FallbackBudget::new(keyed().per_ip_per_hour);
    let ip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 4));
    let e = slow_qwen();
    for i in 0..20 {
        let d = decide_and_spend(&e, &keyed(), &mut budget, ip, now());
        assert_eq!(d.budget_remaining, Some(19 - i));
    }
    let d = decide_and_spend(&e, &keyed(), &mut budget, ip, now());
    assert_eq!(d.status, FallbackStatus::FallbackRateLimited);
    // Decisions that do not fire spend nothing.
    let met = eval(QWEN8, vec![host(1, QWEN8, 82.0, 45.26)]);
    let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 5));
    decide_and_spend(&met, &keyed(), &mut budget, other, now());
    assert_eq!(budget.remaining(other, now()), BudgetLeft(20));
}

#[test]
fn mesh_failure_before_the_first_token_falls_back_under_the_same_rules() {
    // The gate was happy, then every target failed before a byte reached the caller.
    let met = eval(QWEN8, vec![host(1, QWEN8, 82.0, 45.26)]);
    let d = decide_fallback_after_mesh_failure(&met, &keyed(), FULL);
    assert_eq!(d.status, FallbackStatus::FallbackFired);
    assert_eq!(d.trigger, FallbackTrigger::MeshFailedBeforeFirstToken);
    assert_eq!(
        decide_fallback_after_mesh_failure(&met, &FallbackConfig::default(), FULL).status,
        FallbackStatus::FallbackDisabled
    );
    assert_eq!(
        decide_fallback_after_mesh_failure(&met, &keyed(), BudgetLeft(0)).status,
        FallbackStatus::FallbackRateLimited
    );
    let capacity = eval(DS70, vec![host(1, DS70, 9_000.0, 1.0)]);
    assert_eq!(capacity.status, SlaStatus::MeetsSla);
    assert_eq!(
        decide_fallback_after_mesh_failure(&capacity, &keyed(), FULL).status,
        FallbackStatus::FallbackWrongTier
    );
}

fn snapshot(name: &str, headers: &[(&'static str, String)]) {
    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots/mesh-core"),
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_json_snapshot!(name, headers);
    });
}

#[test]
fn mesh_served_headers_carry_the_gate_verdict() {
    let e = eval(DS70, vec![host(1, DS70, 24_925.0, 1.09)]);
    let d = decide_fallback(&e, &keyed(), FULL);
    let h = response_headers(&e, &d, ServedBy::Mesh);
    snapshot("sla_headers_mesh_served_capacity_ttft_too_high", &h);
}

#[test]
fn mesh_served_headers_for_the_4080_super_qwen3_8b() {
    let e = eval(QWEN8, vec![host(1, QWEN8, 82.0, 45.26)]);
    let d = decide_fallback(&e, &keyed(), FULL);
    let h = response_headers(&e, &d, ServedBy::Mesh);
    snapshot("sla_headers_mesh_served_daily_driver_meets_sla", &h);
}

#[test]
fn fallback_served_headers_name_provider_model_and_budget() {
    let e = slow_qwen();
    let d = decide_fallback(&e, &keyed(), BudgetLeft(7));
    let h = response_headers(&e, &d, ServedBy::Fallback);
    snapshot("sla_headers_fallback_served_daily_driver", &h);
}

#[test]
fn headers_omit_unknown_figures_and_keep_their_order() {
    let e = eval(QWEN8, vec![]);
    let d = decide_fallback(&e, &FallbackConfig::default(), FULL);
    let h = response_headers(&e, &d, ServedBy::Mesh);
    let names: Vec<&str> = h.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        names,
        [
            "x-closedmesh-served-by",
            "x-closedmesh-sla-status",
            "x-closedmesh-sla-tier",
            "x-closedmesh-sla-candidates",
            "x-closedmesh-fallback-status",
        ]
    );
    assert_eq!(h[3].1, "0");
    assert_eq!(h[4].1, "fallback-disabled");
}
