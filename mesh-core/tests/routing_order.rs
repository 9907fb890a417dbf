//! Routing over a mesh view: who is a target, in which order, and how demotion moves them.

use mesh_core::peer::RunningPipeline;
use mesh_core::routing::{RouteConfig, Router, Target, next_attempt, order_targets, targets};
use mesh_core::{KnownPeer, MeshView, PeerAnnouncement, PeerId, Role, Timestamp};
use proptest::prelude::*;
use std::collections::BTreeSet;

const QWEN32: &str = "Qwen3-32B-Q4_K_M";

fn id(n: u8) -> PeerId {
    PeerId([n; 32])
}

fn s(secs: u64) -> Timestamp {
    Timestamp::from_secs(secs)
}

fn peer(n: u8, hosts: &[&str], inflight: u32) -> KnownPeer {
    let mut a = PeerAnnouncement::new(id(n), "mesh", Role::Host { http_port: 9337 });
    a.hosted_models = hosts.iter().map(|m| m.to_string()).collect();
    a.inflight_requests = inflight;
    KnownPeer {
        announcement: a,
        rtt_ms: Some(20),
        first_seen: s(0),
        last_fresh: s(0),
    }
}

fn split_host(n: u8, model: &str, inflight: u32) -> KnownPeer {
    let mut p = peer(n, &[model], inflight);
    p.announcement.pipelines = vec![RunningPipeline {
        model: model.to_string(),
        workers: vec![id(200), id(201)],
        total_group_memory_bytes: 40_300_000_000,
    }];
    p
}

fn view(peers: Vec<KnownPeer>) -> MeshView {
    MeshView::new(id(0), peers)
}

#[test]
fn targets_are_the_dialable_peers_that_host_the_model() {
    let mut undialable = peer(3, &[QWEN32], 0);
    undialable.rtt_ms = None;
    let mut worker = peer(4, &[], 0);
    worker.announcement.role = Role::Worker;
    worker.announcement.requested_models = vec![QWEN32.to_string()];
    let v = view(vec![
        peer(1, &[QWEN32], 2),
        split_host(2, QWEN32, 0),
        undialable,
        worker,
        peer(5, &["Qwen3-8B-Q4_K_M"], 0),
    ]);
    let ts = targets(QWEN32, &v);
    assert_eq!(
        ts,
        [
            Target {
                peer: id(1),
                split: false,
                inflight: 2
            },
            Target {
                peer: id(2),
                split: true,
                inflight: 0
            },
        ]
    );
}

#[test]
fn a_pipeline_for_another_model_does_not_make_a_host_split_for_this_one() {
    let mut p = split_host(1, "DeepSeek-R1-Distill-Llama-70B-Q4_K_M", 0);
    p.announcement.hosted_models.push(QWEN32.to_string());
    assert!(!targets(QWEN32, &view(vec![p]))[0].split);
}

#[test]
fn router_prefers_the_solo_mmap_spill_host_over_the_pooled_split() {
    // Phase 2 / 2026-05-24: Qwen3-32B served solo on the 17.2 GB CUDA peer and as a split.
    let v = view(vec![split_host(1, QWEN32, 0), peer(2, &[QWEN32], 1)]);
    let r = Router::new(RouteConfig::default());
    assert_eq!(r.order(QWEN32, &v, b"chat-1", s(10)), [id(2), id(1)]);
    let demo = Router::new(RouteConfig {
        force_split: true,
        ..RouteConfig::default()
    });
    assert_eq!(demo.order(QWEN32, &v, b"chat-1", s(10)), [id(1), id(2)]);
}

#[test]
fn router_counts_its_own_in_flight_requests_before_gossip_catches_up() {
    let v = view(vec![peer(1, &[QWEN32], 0), peer(2, &[QWEN32], 0)]);
    let mut r = Router::new(RouteConfig::default());
    let first = r.order(QWEN32, &v, b"k", s(0))[0];
    r.started(first);
    let second = r.order(QWEN32, &v, b"k", s(0))[0];
    assert_ne!(first, second, "the busy peer moves back");
    r.finished(first);
    assert_eq!(r.order(QWEN32, &v, b"k", s(0))[0], first);
}

#[test]
fn demoted_target_leaves_the_order_while_another_remains_then_returns() {
    let v = view(vec![peer(1, &[QWEN32], 0), peer(2, &[QWEN32], 5)]);
    let mut r = Router::new(RouteConfig::default());
    assert_eq!(r.order(QWEN32, &v, b"k", s(0)), [id(1), id(2)]);
    for t in [0, 30, 60] {
        r.failed_before_first_byte(id(1), QWEN32, s(t));
    }
    assert_eq!(r.order(QWEN32, &v, b"k", s(61)), [id(2)]);
    assert_eq!(r.order(QWEN32, &v, b"k", s(359)), [id(2)]);
    assert_eq!(r.order(QWEN32, &v, b"k", s(360)), [id(1), id(2)]);
}

#[test]
fn demotion_never_removes_the_sole_target() {
    let v = view(vec![peer(1, &[QWEN32], 0)]);
    let mut r = Router::new(RouteConfig::default());
    let mut demoted = None;
    for t in [0, 1, 2] {
        demoted = r.failed_before_first_byte(id(1), QWEN32, s(t));
    }
    assert!(demoted.is_some());
    assert!(r.is_demoted(&id(1), QWEN32, s(3)));
    assert_eq!(r.order(QWEN32, &v, b"k", s(3)), [id(1)]);
    // Nor the last healthy ones: with every target demoted, all stay routable.
    let v2 = view(vec![peer(1, &[QWEN32], 0), peer(2, &[QWEN32], 0)]);
    for t in [0, 1, 2] {
        r.failed_before_first_byte(id(2), QWEN32, s(t));
    }
    assert_eq!(r.order(QWEN32, &v2, b"k", s(3)).len(), 2);
}

#[test]
fn pre_first_byte_retries_walk_the_order_once() {
    let v = view(vec![
        peer(1, &[QWEN32], 3),
        peer(2, &[QWEN32], 0),
        split_host(3, QWEN32, 0),
    ]);
    let r = Router::new(RouteConfig::default());
    let order = r.order(QWEN32, &v, b"k", s(0));
    let mut tried = Vec::new();
    while let Some(next) = next_attempt(&order, &tried) {
        tried.push(next);
    }
    assert_eq!(tried, [id(2), id(1), id(3)]);
}

#[test]
fn first_byte_timeout_defaults_to_minutes() {
    let r = Router::new(RouteConfig::default());
    assert_eq!(r.first_byte_deadline(s(100)), s(400));
    let c: RouteConfig = serde_json::from_str(r#"{"first_byte_timeout_secs": 600}"#).unwrap();
    assert_eq!(c.first_byte_timeout().as_secs(), 600);
    assert_eq!(c.demotion_secs, 300);
}

fn arb_targets() -> impl Strategy<Value = Vec<Target>> {
    prop::collection::btree_map(any::<u8>(), (any::<bool>(), 0u32..4), 0..10).prop_map(|m| {
        m.into_iter()
            .map(|(n, (split, inflight))| Target {
                peer: id(n),
                split,
                inflight,
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn order_is_a_deterministic_permutation_of_the_targets(
        ts in arb_targets(),
        key in prop::collection::vec(any::<u8>(), 0..16),
        force_split in any::<bool>(),
    ) {
        let order = order_targets(&ts, &key, force_split);
        let mut shuffled = ts.clone();
        shuffled.reverse();
        prop_assert_eq!(&order, &order_targets(&shuffled, &key, force_split));
        let got: BTreeSet<PeerId> = order.iter().copied().collect();
        let want: BTreeSet<PeerId> = ts.iter().map(|t| t.peer).collect();
        prop_assert_eq!(order.len(), ts.len());
        prop_assert_eq!(got, want);
        // Class first, then load: never a split host before a solo one (or the reverse under
        // force_split), never a busier target before a less busy one of the same class.
        let rank: Vec<(bool, u32)> = order
            .iter()
            .map(|p| {
                let t = ts.iter().find(|t| t.peer == *p).unwrap();
                (t.split != force_split, t.inflight)
            })
            .collect();
        prop_assert!(rank.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn demotions_never_empty_the_order(
        hosts in prop::collection::btree_set(1u8..8, 1..6),
        failures in prop::collection::vec((1u8..8, 0u64..400), 0..30),
        at in 0u64..800,
    ) {
        let peers: Vec<KnownPeer> = hosts.iter().map(|&n| peer(n, &[QWEN32], 0)).collect();
        let v = view(peers);
        let mut r = Router::new(RouteConfig::default());
        let mut failures = failures;
        failures.sort_by_key(|(_, t)| *t);
        for (n, t) in failures {
            r.failed_before_first_byte(id(n), QWEN32, s(t));
        }
        let now = s(400 + at);
        let order = r.order(QWEN32, &v, b"k", now);
        prop_assert!(!order.is_empty());
        let healthy: Vec<PeerId> = hosts
            .iter()
            .map(|&n| id(n))
            .filter(|p| !r.is_demoted(p, QWEN32, now))
            .collect();
        if healthy.is_empty() {
            prop_assert_eq!(order.len(), hosts.len());
        } else {
            let got: BTreeSet<PeerId> = order.into_iter().collect();
            prop_assert_eq!(got, healthy.into_iter().collect::<BTreeSet<_>>());
        }
    }
}
