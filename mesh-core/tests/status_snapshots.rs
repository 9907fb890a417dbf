//! `/api/status` and `/api/models` as JSON, snapshotted: the payloads are a public contract, so
//! any change to them shows up as a reviewed snapshot diff.

mod election_fixtures;

use election_fixtures::*;
use mesh_core::Backend;
use mesh_core::MeshView;
use mesh_core::peer::ModelTiming;
use mesh_core::sla::Tier;
use mesh_core::status::{
    LocalFacts, VerifyEntry, VerifyMode, VerifyVerdict, catalog_payload, status_payload,
};
use std::collections::BTreeMap;

fn tier(model: &str) -> Tier {
    match model {
        QWEN8 | LLAMA3B => Tier::DailyDriver,
        QWEN32 | DS70 => Tier::Capacity,
        _ => Tier::Experimental,
    }
}

fn snapshot(name: &str, v: &MeshView, local: &LocalFacts) {
    let status = status_payload(v, local).expect("the view holds this node");
    let models = catalog_payload(v, local, &tier);
    insta::with_settings!({
        snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots/mesh-core"),
        prepend_module_to_snapshot => false,
    }, {
        insta::assert_json_snapshot!(format!("status_{name}"), status);
        insta::assert_json_snapshot!(format!("models_{name}"), models);
    });
}

fn timing(model: &str, ttft_ms: f64, tps: f64, samples: u32) -> ModelTiming {
    ModelTiming {
        model: model.to_string(),
        tps_p50: tps,
        ttft_ms_p50: ttft_ms,
        samples_in_window: samples,
    }
}

fn verify(verdict: VerifyVerdict, agreement: f64) -> VerifyEntry {
    VerifyEntry {
        verdict,
        agreement,
        compared_tokens: 32,
        mode: VerifyMode::Observe,
        checked_at_unix_secs: 1_780_000_500,
    }
}

#[test]
fn solo() {
    // Phase 4: Qwen3-8B on one RTX 4080 SUPER, seen by that peer itself.
    let v = view(
        2,
        vec![
            peer(2, "rtx-4080s", Backend::Cuda, 17.2, 64.0)
                .wants(&[(QWEN8, QWEN8_GB)])
                .hosting(&[QWEN8])
                .timing(QWEN8, 90.0, 44.0, 31)
                .baseline(QWEN8, 49.0, 77.80)
                .inflight(1),
            entry(9).rtt(35),
        ],
    );
    let local = LocalFacts {
        timings: vec![timing(QWEN8, 82.0, 45.26, 40)],
        native_baselines: vec![baseline(QWEN8, 49.0, 77.80, Backend::Cuda)],
        inflight_requests: 1,
        first_served_unix_secs: BTreeMap::from([(QWEN8.to_string(), 1_779_900_000)]),
        ..LocalFacts::default()
    };
    snapshot("solo", &v, &local);
}

#[test]
fn pipeline() {
    // The DeepSeek-R1-Distill-70B 3-peer pipeline, seen by the Mac holding a third of it.
    let v = view(
        1,
        vec![
            peer(1, "mac-mini", Backend::Metal, 14.5, 24.0)
                .wants(&[(DS70, DS70_GB)])
                .serving(&[DS70])
                .rpc(Some(true)),
            peer(2, "cuda-a", Backend::Cuda, 17.2, 64.0)
                .wants(&[(DS70, DS70_GB)])
                .hosting(&[DS70])
                .pipeline(DS70, &[1, 3], 40.3)
                .timing(DS70, 24_925.0, 1.09, 1)
                .rtt(42),
            peer(3, "cuda-b", Backend::Cuda, 8.6, 16.0)
                .wants(&[(DS70, DS70_GB)])
                .serving(&[DS70])
                .rpc(Some(true))
                .rtt(61),
        ],
    );
    let local = LocalFacts {
        first_served_unix_secs: BTreeMap::from([(DS70.to_string(), 1_779_700_000)]),
        ..LocalFacts::default()
    };
    snapshot("pipeline", &v, &local);
}

#[test]
fn phantom_standby() {
    // Three peers asked to share Qwen3-8B; the 17.2 GB host holds it alone, the other two are
    // warm standby. Before v0.66.56 this rendered as a 3-peer split.
    let v = view(
        1,
        vec![
            peer(1, "mac-mini", Backend::Metal, 14.5, 24.0)
                .wants(&[(QWEN8, QWEN8_GB)])
                .serving(&[QWEN8]),
            peer(2, "rtx-4080s", Backend::Cuda, 17.2, 64.0)
                .wants(&[(QWEN8, QWEN8_GB)])
                .hosting(&[QWEN8])
                .timing(QWEN8, 82.0, 45.26, 40)
                .baseline(QWEN8, 49.0, 77.80),
            peer(3, "cuda-b", Backend::Cuda, 8.6, 16.0)
                .wants(&[(QWEN8, QWEN8_GB)])
                .serving(&[QWEN8]),
        ],
    );
    snapshot("phantom_standby", &v, &LocalFacts::default());
}

#[test]
fn waiting() {
    // Two small peers asked for the 70B: 18.6 GB pooled against 46.8 GB needed.
    let v = view(
        1,
        vec![
            peer(1, "cuda-b", Backend::Cuda, 8.6, 16.0)
                .wants(&[(DS70, DS70_GB)])
                .rpc(Some(true)),
            peer(2, "macbook-air", Backend::Metal, 10.0, 16.0)
                .wants(&[(DS70, DS70_GB)])
                .rpc(Some(true)),
        ],
    );
    snapshot("waiting", &v, &LocalFacts::default());
}

#[test]
fn mixed() {
    // An entry's view of the Phase 2 cohort (Qwen3-8B solo on a Mac, Qwen3-32B split across
    // three desktops) plus two replicas of Llama-3.2-3B, one of them far away.
    let v = view(
        9,
        vec![
            peer(1, "macbook-air", Backend::Metal, 14.5, 24.0)
                .wants(&[(QWEN8, QWEN8_GB), (QWEN32, QWEN32_GB)])
                .hosting(&[QWEN8])
                .timing(QWEN8, 20_660.0, 0.693, 4)
                .baseline(QWEN8, 2_528.0, 8.95)
                .rtt(48),
            peer(2, "desk-a", Backend::Cuda, 10.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .hosting(&[QWEN32])
                .pipeline(QWEN32, &[3, 4], 24.0)
                .timing(QWEN32, 91_150.0, 0.131, 2)
                .inflight(1)
                .rtt(31),
            peer(3, "desk-b", Backend::Cuda, 8.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .serving(&[QWEN32])
                .rpc(Some(true))
                .rtt(33),
            peer(4, "desk-c", Backend::Cuda, 6.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .serving(&[QWEN32])
                .rpc(Some(true))
                .rtt(40),
            peer(5, "gamer-1", Backend::Cuda, 8.0, 32.0)
                .wants(&[(LLAMA3B, LLAMA3B_GB)])
                .hosting(&[LLAMA3B])
                .timing(LLAMA3B, 120.0, 96.5, 25)
                .baseline(LLAMA3B, 60.0, 131.0)
                .rtt(25),
            peer(6, "gamer-2", Backend::Vulkan, 8.0, 16.0)
                .wants(&[(LLAMA3B, LLAMA3B_GB)])
                .hosting(&[LLAMA3B])
                .timing(LLAMA3B, 410.0, 38.0, 9)
                .baseline(LLAMA3B, 70.0, 120.0)
                .rtt(160),
            entry(9),
        ],
    );
    let local = LocalFacts {
        verify: BTreeMap::from([
            (
                id(1),
                BTreeMap::from([(QWEN8.to_string(), verify(VerifyVerdict::Match, 1.0))]),
            ),
            (
                id(6),
                BTreeMap::from([(
                    LLAMA3B.to_string(),
                    verify(VerifyVerdict::Inconclusive, 0.84),
                )]),
            ),
        ]),
        inflight_requests: 3,
        first_served_unix_secs: BTreeMap::from([
            (QWEN8.to_string(), 1_779_100_000),
            (QWEN32.to_string(), 1_779_200_000),
        ]),
        ..LocalFacts::default()
    };
    snapshot("mixed", &v, &local);
}
