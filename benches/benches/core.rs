//! The core's hot decisions at mesh scale, with criterion: what every node runs each second
//! (election, status payload, routing order) and what every gossip frame costs (encode,
//! decode, signature check). `cargo bench -p closedmesh-benches --bench core`.
//!
//! The views are synthetic but shaped like a real mesh: a mix of CUDA and Metal peers with
//! 8–24 GB, three models of which one fits nowhere alone, a tenth of the peers hosting.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mesh_core::election::{self, Demand};
use mesh_core::gossip::wire::{self, Records};
use mesh_core::gossip::{Message, SecretKey, Signed};
use mesh_core::peer::{Backend, GIB, ModelTiming, PeerAnnouncement, Role};
use mesh_core::routing;
use mesh_core::status::{LocalFacts, status_payload};
use mesh_core::{KnownPeer, MeshView, Timestamp};
use std::collections::BTreeMap;
use std::hint::black_box;

const MODELS: [(&str, u64); 3] = [
    ("Qwen3-8B-Q4_K_M", 5_030_000_000),
    ("Qwen3-32B-Q4_K_M", 19_760_000_000),
    ("DeepSeek-R1-Distill-Llama-70B-Q4_K_M", 42_500_000_000),
];

fn key(i: usize) -> SecretKey {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    SecretKey::from_bytes(b)
}

fn announcement(i: usize) -> PeerAnnouncement {
    let id = key(i).peer_id();
    let hosting = i % 10 == 0;
    let role = if hosting {
        Role::Host { http_port: 9337 }
    } else {
        Role::Worker
    };
    let mut a = PeerAnnouncement::new(id, "cm-bench", role);
    a.seq = 1_700_000_000_000 + i as u64;
    a.hostname = format!("peer-{i}");
    a.backend = if i % 3 == 0 {
        Backend::Metal
    } else {
        Backend::Cuda
    };
    a.gpu_name = "bench".into();
    a.fast_memory_bytes = (8 + (i as u64 % 17)) * GIB;
    a.system_ram_bytes = 64 * GIB;
    a.mem_bandwidth_gbps = 400.0;
    for (m, size) in MODELS {
        a.requested_models.push(m.to_string());
        a.model_sizes.insert(m.to_string(), size);
    }
    a.serving_models = vec![MODELS[0].0.to_string()];
    a.rpc_ready = Some(true);
    if hosting {
        a.hosted_models = vec![MODELS[0].0.to_string()];
        a.model_timings = vec![ModelTiming {
            model: MODELS[0].0.to_string(),
            tps_p50: 45.0,
            ttft_ms_p50: 82.0,
            samples_in_window: 120,
        }];
    }
    a
}

fn view(n: usize) -> MeshView {
    let t = Timestamp::from_secs(1_700_000_000);
    let peers = (0..n)
        .map(|i| KnownPeer {
            announcement: announcement(i),
            rtt_ms: Some(5 + (i as u32 % 80)),
            first_seen: t,
            last_fresh: t,
        })
        .collect();
    MeshView::new(key(0).peer_id(), peers)
}

fn decisions(c: &mut Criterion) {
    let mut g = c.benchmark_group("decisions");
    let demand: BTreeMap<String, Demand> = BTreeMap::new();
    for n in [10, 100, 1_000] {
        let v = view(n);
        g.bench_with_input(BenchmarkId::new("plan_models", n), &v, |b, v| {
            b.iter(|| election::plan_models(black_box(v), &demand))
        });
        g.bench_with_input(BenchmarkId::new("status_payload", n), &v, |b, v| {
            b.iter(|| status_payload(black_box(v), &LocalFacts::default()))
        });
        let targets = routing::targets(MODELS[0].0, &v);
        g.bench_with_input(BenchmarkId::new("route_order", n), &targets, |b, t| {
            b.iter(|| routing::order_targets(black_box(t), b"conversation-42", false))
        });
    }
    g.finish();
}

fn gossip_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("gossip");
    let signed: Vec<_> = (0..100)
        .map(|i| Signed::sign(&key(i), announcement(i)))
        .collect();
    let one = signed[0].clone();
    g.bench_function("sign_announcement", |b| {
        let a = announcement(1);
        let k = key(1);
        b.iter(|| Signed::sign(&k, black_box(a.clone())))
    });
    // As received: rebuilt from its bytes, so the check really runs (a record keeps its result).
    g.bench_function("verify_received_announcement", |b| {
        b.iter(|| {
            let received =
                Signed::<PeerAnnouncement>::from_parts(one.body().to_vec(), *one.signature())
                    .expect("own bytes decode");
            black_box(received.verify())
        })
    });
    let batch = Message::Rumor(Records {
        announcements: signed,
        ..Records::default()
    });
    let frame = wire::encode(&batch).expect("a 100-announcement frame fits");
    g.bench_function("encode_100_announcements", |b| {
        b.iter(|| wire::encode(black_box(&batch)))
    });
    g.bench_function("decode_100_announcements", |b| {
        b.iter(|| wire::decode(black_box(&frame)))
    });
    g.finish();
    eprintln!("a 100-announcement rumour frame is {} bytes", frame.len());
}

criterion_group!(benches, decisions, gossip_frames);
criterion_main!(benches);
