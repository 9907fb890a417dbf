//! The shipped scenarios: each runs to its published outcome, and its report is snapshotted.

use mesh_core::sla::Tier;
use mesh_core::status::{MeshEfficiency, NodeState, ServingMode};
use mesh_sim::report::Report;
use mesh_sim::scenario::Scenario;
use mesh_sim::{Engine, RunOptions};
use std::path::Path;

fn load(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(name);
    Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn run(s: &Scenario, seed: Option<u64>) -> Report {
    mesh_sim::run(
        s,
        RunOptions {
            seed,
            engine: Engine::Des,
        },
    )
    .unwrap()
}

fn within(published: f64, simulated: f64, tolerance: f64) -> bool {
    ((simulated - published) / published).abs() <= tolerance
}

#[test]
fn qwen3_8b_on_an_rtx_4080_super_serves_solo_and_meets_the_daily_driver_sla() {
    let s = load("qwen3-8b-4080s-solo.toml");
    let r = run(&s, None);
    let seed = r.seed;
    let m = &r.models[0];
    assert_eq!(m.name, "Qwen3-8B-Q4_K_M", "seed {seed}");
    assert_eq!(m.plan, "solo");
    assert_eq!(m.hosts, ["rtx4080s"]);
    assert!(m.split_group.is_none());
    // Published (v0.66.56): 82 ms / 45.26 tok/s through the mesh, 49 ms / 77.80 tok/s native.
    let through = m.through_mesh.unwrap();
    let native = m.native.unwrap();
    assert!(
        within(82.0, through.ttft_ms_p50, 0.25),
        "{through:?}, seed {seed}"
    );
    assert!(
        within(45.26, through.tps_p50, 0.25),
        "{through:?}, seed {seed}"
    );
    assert!(
        within(49.0, native.ttft_ms_p50, 0.25),
        "{native:?}, seed {seed}"
    );
    assert!(
        within(77.80, native.tps_p50, 0.25),
        "{native:?}, seed {seed}"
    );
    assert_eq!(native.samples, 3);
    // Published: 45.26 / 77.80 = 58 %, amber.
    let MeshEfficiency::Amber { ratio } = m.mesh_efficiency else {
        panic!("{:?}", m.mesh_efficiency);
    };
    assert!(within(0.58, ratio, 0.25));
    let host = &r.peers[1];
    assert_eq!(host.node_state, Some(NodeState::Serving));
    assert_eq!(host.serving_mode, Some(ServingMode::Solo));
    assert!(host.split_group.is_none() && host.split_role.is_none());
    assert_eq!(u64::from(through.samples), m.requests.mesh);
    assert_eq!(
        m.requests.sent, m.requests.mesh,
        "every chat served: {:?}",
        m.requests
    );
    assert_eq!(
        (m.sla.tier, m.sla.status.as_str()),
        (Tier::DailyDriver, "meets-sla")
    );
    assert_eq!(r.mesh_share_pct, Some(100.0));

    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots/mesh-sim"),
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_json_snapshot!("qwen3-8b-4080s-solo", r);
    });
}

#[test]
fn same_scenario_and_seed_give_a_byte_identical_json_report() {
    let s = load("qwen3-8b-4080s-solo.toml");
    assert_eq!(run(&s, None).to_json(), run(&s, None).to_json());
    assert_eq!(run(&s, Some(9)).to_text(), run(&s, Some(9)).to_text());
}

#[test]
fn seed_override_replaces_the_files_seed() {
    let s = load("qwen3-8b-4080s-solo.toml");
    let own = run(&s, None);
    let other = run(&s, Some(s.seed + 1));
    assert_eq!(own.seed, s.seed);
    assert_eq!(other.seed, s.seed + 1);
    assert_ne!(own.requests.sent, 0);
    assert_ne!(own.to_json(), other.to_json());
    assert_eq!(own.models[0].plan, other.models[0].plan);
}

#[test]
fn the_turmoil_engine_is_not_here_yet() {
    let s = load("qwen3-8b-4080s-solo.toml");
    let err = mesh_sim::run(
        &s,
        RunOptions {
            seed: None,
            engine: Engine::Turmoil,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("issue 5"));
}
