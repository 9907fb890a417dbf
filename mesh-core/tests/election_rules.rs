//! Election behaviour (SPEC §3), one rule per test, in the update log's numbers.

mod election_fixtures;

use election_fixtures::*;
use mesh_core::election::{
    Demand, Duty, Election, HOST_CLAIM_GRACE, Plan, plan_models, select_serving_models,
};
use mesh_core::{Backend, MeshView, Timestamp};
use std::collections::BTreeMap;

fn no_demand() -> BTreeMap<String, Demand> {
    BTreeMap::new()
}

fn hot(model: &str) -> BTreeMap<String, Demand> {
    BTreeMap::from([(
        model.to_string(),
        Demand {
            clients: 2,
            requests_per_min: 0.0,
        },
    )])
}

fn plan_of(view: &MeshView, model: &str) -> Plan {
    plan_models(view, &no_demand())
        .remove(model)
        .unwrap_or_else(|| panic!("no plan for {model}"))
}

fn decide(view: &MeshView) -> mesh_core::election::NodeElection {
    Election::new().decide(view, &no_demand(), Timestamp::ZERO)
}

/// The cohort of the 2026-05-25 Qwen3-32B event: a Mac Mini-class Metal peer and two CUDA
/// desktops, 40.3 GB pooled.
fn cohort_14_5_17_2_8_6(model: (&str, f64)) -> Vec<Peer> {
    vec![
        peer(1, "mac-mini", Backend::Metal, 14.5, 24.0).wants(&[model]),
        peer(2, "cuda-a", Backend::Cuda, 17.2, 32.0).wants(&[model]),
        peer(3, "cuda-b", Backend::Cuda, 8.6, 16.0).wants(&[model]),
    ]
}

#[test]
fn solo_wins_when_one_live_peer_holds_the_model() {
    let mut peers = cohort_14_5_17_2_8_6((QWEN32, QWEN32_GB));
    peers.push(peer(4, "rtx-4090", Backend::Cuda, 24.0, 64.0).wants(&[(QWEN32, QWEN32_GB)]));
    let v = view(1, peers);
    assert_eq!(
        plan_of(&v, QWEN32),
        Plan::Solo {
            host: id(4),
            replicas: vec![],
            spill: false
        }
    );
    let mine = decide(&v);
    assert_eq!(mine.duties[QWEN32], Duty::Standby { hosts: vec![id(4)] });
    assert_eq!(mine.serving_models, vec![QWEN32.to_string()]);
    assert!(!mine.run_rpc_server);
}

#[test]
fn phase2_mac_serves_only_the_8b_while_three_peers_pool_for_the_32b() {
    let peers = vec![
        peer(1, "macbook-air", Backend::Metal, 14.5, 24.0)
            .wants(&[(QWEN8, QWEN8_GB), (QWEN32, QWEN32_GB)]),
        peer(2, "desk-a", Backend::Cuda, 10.0, 32.0)
            .wants(&[(QWEN32, QWEN32_GB)])
            .rtt(20),
        peer(3, "desk-b", Backend::Cuda, 8.0, 32.0)
            .wants(&[(QWEN32, QWEN32_GB)])
            .rtt(30),
        peer(4, "desk-c", Backend::Cuda, 6.0, 32.0)
            .wants(&[(QWEN32, QWEN32_GB)])
            .rtt(40),
    ];
    let mac = view(1, peers.clone());
    let plans = plan_models(&mac, &no_demand());
    assert_eq!(
        plans[QWEN8],
        Plan::Solo {
            host: id(1),
            replicas: vec![],
            spill: false
        }
    );
    assert_eq!(
        plans[QWEN32],
        Plan::Split {
            host: id(2),
            workers: vec![id(3), id(4)],
            total_group_memory: gb(24.0)
        }
    );
    let mine = decide(&mac);
    assert_eq!(mine.serving_models, vec![QWEN8.to_string()]);
    assert_eq!(
        mine.duties.keys().collect::<Vec<_>>(),
        vec![QWEN8],
        "the Mac is not in the 32B cohort"
    );

    let worker = decide(&view(3, peers.clone()));
    assert_eq!(worker.duties[QWEN32], Duty::SplitWorker { host: id(2) });
    assert!(worker.run_rpc_server);
    assert_eq!(worker.serving_models, vec![QWEN32.to_string()]);

    let host = decide(&view(2, peers));
    assert_eq!(
        host.duties[QWEN32],
        Duty::SplitHost {
            workers: vec![id(3), id(4)],
            total_group_memory: gb(24.0),
            workers_ready: false
        }
    );
}

#[test]
fn split_host_launches_only_once_every_worker_rpc_server_is_ready() {
    let peers = |ready| {
        vec![
            peer(2, "desk-a", Backend::Metal, 12.0, 32.0).wants(&[(QWEN32, QWEN32_GB)]),
            peer(3, "desk-b", Backend::Metal, 12.0, 16.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .rpc(ready),
        ]
    };
    let host_duty = |ready| decide(&view(2, peers(ready))).duties[QWEN32].clone();
    assert!(matches!(
        host_duty(None),
        Duty::SplitHost {
            workers_ready: false,
            ..
        }
    ));
    assert!(matches!(
        host_duty(Some(true)),
        Duty::SplitHost {
            workers_ready: true,
            ..
        }
    ));
    // A peer whose rpc-server is down is no worker candidate; it can still host (a host needs
    // none), so the roles swap.
    assert_eq!(host_duty(Some(false)), Duty::SplitWorker { host: id(3) });
}

#[test]
fn split_adds_workers_nearest_first_until_the_group_holds_1_1x() {
    let v = view(
        2,
        vec![
            peer(2, "host", Backend::Cuda, 12.0, 64.0).wants(&[(QWEN32, QWEN32_GB)]),
            peer(3, "far", Backend::Cuda, 10.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .rtt(80),
            peer(4, "rpc-down", Backend::Cuda, 10.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .rtt(5)
                .rpc(Some(false)),
            peer(5, "too-far", Backend::Cuda, 10.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .rtt(501),
            peer(6, "near", Backend::Cuda, 10.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .rtt(40),
        ],
    );
    // 12 + 10 = 22 GB ≥ 21.74 GB after the nearest usable worker: stop there.
    assert_eq!(
        plan_of(&v, QWEN32),
        Plan::Split {
            host: id(2),
            workers: vec![id(6)],
            total_group_memory: gb(22.0)
        }
    );
}

#[test]
fn workers_beyond_500_ms_are_never_used_even_when_needed() {
    let v = view(
        2,
        vec![
            peer(2, "host", Backend::Metal, 12.0, 64.0).wants(&[(QWEN32, QWEN32_GB)]),
            peer(3, "ok", Backend::Metal, 5.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .rtt(500),
            peer(4, "too-far", Backend::Metal, 10.0, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .rtt(501),
        ],
    );
    assert_eq!(
        plan_of(&v, QWEN32),
        Plan::WaitingForCapacity {
            pooled: gb(27.0),
            needed: Some(gb(QWEN32_GB * 1.1))
        }
    );
}

#[test]
fn remote_host_plans_with_its_own_gossiped_rtts() {
    // Seen from peer 4: peer 2 hosts; from 2, peer 3 is nearer than 4 (its hints say so),
    // although this node measures the opposite.
    let peers = vec![
        peer(2, "host", Backend::Metal, 12.0, 64.0)
            .wants(&[(QWEN32, QWEN32_GB)])
            .hint(3, 10)
            .hint(4, 90),
        peer(3, "b", Backend::Metal, 10.0, 32.0)
            .wants(&[(QWEN32, QWEN32_GB)])
            .rtt(200),
        peer(4, "me", Backend::Metal, 10.0, 32.0).wants(&[(QWEN32, QWEN32_GB)]),
    ];
    let mine = decide(&view(4, peers));
    assert_eq!(mine.plans[QWEN32].host(), Some(id(2)));
    assert_eq!(mine.duties[QWEN32], Duty::Standby { hosts: vec![id(2)] });
}

#[test]
fn qwen3_32b_spills_solo_on_the_17_2_gb_peer_of_the_14_5_17_2_8_6_cohort() {
    // 40.3 GB pooled could hold the 32B as a split, but the largest peer keeps 87 % of it
    // resident and serves it alone (3.98 tok/s measured, against 0.131 for a pooled split).
    let v = view(1, cohort_14_5_17_2_8_6((QWEN32, QWEN32_GB)));
    assert_eq!(
        plan_of(&v, QWEN32),
        Plan::Solo {
            host: id(2),
            replicas: vec![],
            spill: true
        }
    );
    let spiller = decide(&view(2, cohort_14_5_17_2_8_6((QWEN32, QWEN32_GB))));
    assert_eq!(spiller.duties[QWEN32], Duty::Solo { spill: true });
}

#[test]
fn deepseek_70b_waits_on_the_40_3_gb_cohort() {
    // 14.5 + 17.2 + 8.6 = 40.3 GB < 1.1 × 42.52 GB, and 17.2 GB is 40 % of the model: too
    // little to spill.
    let mine = decide(&view(1, cohort_14_5_17_2_8_6((DS70, DS70_GB))));
    assert_eq!(
        mine.plans[DS70],
        Plan::WaitingForCapacity {
            pooled: gb(40.3),
            needed: Some(gb(46.772))
        }
    );
    assert!(
        mine.serving_models.is_empty(),
        "waiting models are not advertised"
    );
    assert!(matches!(mine.duties[DS70], Duty::Waiting { .. }));
    assert!(mine.run_rpc_server, "ready for a split to form");
}

#[test]
fn a_16_gb_gpu_with_120_gb_of_ram_does_not_spill_a_70b() {
    // The May 13 2026 incident: 0.2 tok/s and every chat stuck loading.
    let v = view(
        1,
        vec![peer(1, "lyu", Backend::Cuda, 16.0, 120.0).wants(&[(DS70, DS70_GB)])],
    );
    assert!(matches!(plan_of(&v, DS70), Plan::WaitingForCapacity { .. }));
}

#[test]
fn a_model_of_unknown_size_waits_and_is_never_solo() {
    let v = view(
        1,
        vec![peer(1, "big", Backend::Cuda, 80.0, 256.0).wants_without_file(QWEN8)],
    );
    let mine = decide(&v);
    assert_eq!(
        mine.plans[QWEN8],
        Plan::WaitingForCapacity {
            pooled: gb(80.0),
            needed: None
        }
    );
    assert!(mine.serving_models.is_empty());
    assert!(!mine.run_rpc_server);
}

#[test]
fn a_peer_without_the_gguf_never_hosts_but_can_work() {
    let v = view(
        2,
        vec![
            peer(2, "no-file", Backend::Metal, 12.0, 32.0).wants_without_file(QWEN32),
            peer(3, "has-file", Backend::Metal, 10.0, 32.0).wants(&[(QWEN32, QWEN32_GB)]),
        ],
    );
    assert_eq!(
        plan_of(&v, QWEN32),
        Plan::Split {
            host: id(3),
            workers: vec![id(2)],
            total_group_memory: gb(22.0)
        }
    );
}

#[test]
fn host_choice_prefers_a_dialable_peer_over_an_undialable_one_with_more_memory() {
    let v = view(
        1,
        vec![
            peer(1, "me", Backend::Metal, 10.0, 32.0).wants(&[(QWEN32, QWEN32_GB)]),
            peer(2, "ghost", Backend::Metal, 16.0, 64.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .undialable(),
            peer(3, "dialable", Backend::Metal, 12.0, 32.0).wants(&[(QWEN32, QWEN32_GB)]),
        ],
    );
    assert_eq!(
        plan_of(&v, QWEN32),
        Plan::Split {
            host: id(3),
            workers: vec![id(1)],
            total_group_memory: gb(22.0)
        }
    );
}

#[test]
fn host_choice_breaks_ties_by_fast_memory_then_ram_then_peer_id() {
    let split = |a: (f64, f64), b: (f64, f64)| {
        let v = view(
            1,
            vec![
                peer(1, "a", Backend::Metal, a.0, a.1).wants(&[(QWEN32, QWEN32_GB)]),
                peer(2, "b", Backend::Metal, b.0, b.1).wants(&[(QWEN32, QWEN32_GB)]),
            ],
        );
        plan_of(&v, QWEN32).host()
    };
    assert_eq!(split((12.0, 32.0), (11.0, 64.0)), Some(id(1)));
    assert_eq!(split((12.0, 64.0), (12.0, 32.0)), Some(id(1)));
    assert_eq!(split((12.0, 32.0), (12.0, 32.0)), Some(id(2)));
}

#[test]
fn a_solo_capable_peer_wins_host_choice_over_more_memory_that_cannot_hold_it() {
    // can_hold_solo leads the tuple: among solo candidates only resident ones count at all.
    let v = view(
        1,
        vec![
            peer(1, "fits", Backend::Metal, 6.0, 8.0).wants(&[(QWEN8, QWEN8_GB)]),
            peer(2, "bigger-but-no-file", Backend::Metal, 64.0, 96.0).wants_without_file(QWEN8),
        ],
    );
    assert_eq!(plan_of(&v, QWEN8).host(), Some(id(1)));
}

#[test]
fn ram_filter_skips_a_split_host_that_would_swap() {
    // Host share on peer 2 would be 19.76 × 12/22 = 10.8 GB: 3.2 + 5.4 GB > 0.75 × 8 GB.
    let v = view(
        1,
        vec![
            peer(1, "me", Backend::Metal, 4.0, 16.0),
            peer(2, "small-ram", Backend::Cuda, 12.0, 8.0).wants(&[(QWEN32, QWEN32_GB)]),
            peer(3, "roomy", Backend::Cuda, 10.0, 32.0).wants(&[(QWEN32, QWEN32_GB)]),
        ],
    );
    assert_eq!(
        plan_of(&v, QWEN32),
        Plan::Split {
            host: id(3),
            workers: vec![id(2)],
            total_group_memory: gb(22.0)
        }
    );
}

#[test]
fn an_elected_host_that_never_claims_loses_candidacy_after_30_s() {
    let me = || peer(1, "me", Backend::Metal, 16.0, 32.0).wants(&[(QWEN8, QWEN8_GB)]);
    let stuck = peer(2, "stuck", Backend::Cuda, 24.0, 64.0).wants(&[(QWEN8, QWEN8_GB)]);
    let mut e = Election::new();
    let t = Timestamp::from_secs;
    let mut at = |secs, me: Peer, big: &Peer| {
        e.decide(&view(1, vec![me, big.clone()]), &no_demand(), t(secs))
            .duties[QWEN8]
            .clone()
    };
    let standby = Duty::Standby { hosts: vec![id(2)] };
    let solo = Duty::Solo { spill: false };
    assert_eq!(at(100, me(), &stuck), standby);
    assert_eq!(at(129, me(), &stuck), standby);
    assert_eq!(at(130, me(), &stuck), solo);
    // This node claims (its llama-server is loading) and keeps the role while the stuck peer
    // stays passed over.
    assert_eq!(at(131, me().loading(&[QWEN8]), &stuck), solo);
    assert_eq!(at(500, me().loading(&[QWEN8]), &stuck), solo);
    // The stuck peer finally serves: a peer already routing the model is kept, and this node,
    // still loading, stands down.
    assert_eq!(
        at(
            510,
            me().loading(&[QWEN8]),
            &stuck.clone().hosting(&[QWEN8])
        ),
        standby
    );
}

#[test]
fn grace_runs_from_the_election_and_poll_timeout_says_when() {
    let peers = vec![
        peer(1, "me", Backend::Metal, 16.0, 32.0).wants(&[(QWEN8, QWEN8_GB)]),
        peer(2, "best", Backend::Cuda, 24.0, 64.0)
            .wants(&[(QWEN8, QWEN8_GB)])
            .seen_at(0),
    ];
    let mut e = Election::new();
    assert_eq!(e.poll_timeout(), None);
    // Seen for hours, elected only now: the grace starts now.
    e.decide(&view(1, peers), &no_demand(), Timestamp::from_secs(7_200));
    assert_eq!(
        e.poll_timeout(),
        Some(Timestamp::from_secs(7_200) + HOST_CLAIM_GRACE)
    );
}

#[test]
fn a_host_loading_its_model_has_claimed_and_keeps_candidacy() {
    let mut e = Election::new();
    let peers = vec![
        peer(1, "me", Backend::Metal, 16.0, 32.0).wants(&[(QWEN8, QWEN8_GB)]),
        peer(2, "loading", Backend::Cuda, 24.0, 64.0)
            .wants(&[(QWEN8, QWEN8_GB)])
            .loading(&[QWEN8]),
    ];
    let d = e.decide(&view(1, peers.clone()), &no_demand(), Timestamp::ZERO);
    assert_eq!(d.plans[QWEN8].host(), Some(id(2)));
    assert_eq!(e.poll_timeout(), None, "nothing pending: it has claimed");
    let d = e.decide(&view(1, peers), &no_demand(), Timestamp::from_secs(600));
    assert_eq!(d.plans[QWEN8].host(), Some(id(2)));
}

#[test]
fn two_failed_launches_in_90_s_hand_the_model_to_the_runner_up_for_60_s() {
    let peers = vec![
        peer(1, "me", Backend::Cuda, 24.0, 64.0).wants(&[(QWEN8, QWEN8_GB)]),
        peer(2, "runner-up", Backend::Cuda, 16.0, 32.0).wants(&[(QWEN8, QWEN8_GB)]),
    ];
    let v = view(1, peers);
    let t = Timestamp::from_secs;
    let mut e = Election::new();
    assert_eq!(
        e.decide(&v, &no_demand(), t(0)).duties[QWEN8],
        Duty::Solo { spill: false }
    );
    assert_eq!(e.record_launch_failure(QWEN8, t(10)), None);
    assert_eq!(e.record_launch_failure(QWEN8, t(40)), Some(t(100)));
    assert_eq!(
        e.decide(&v, &no_demand(), t(41)).duties[QWEN8],
        Duty::Standby { hosts: vec![id(2)] }
    );
    assert_eq!(
        e.poll_timeout(),
        Some(t(71)),
        "the runner-up's grace comes first"
    );
    assert_eq!(
        e.decide(&v, &no_demand(), t(100)).duties[QWEN8],
        Duty::Solo { spill: false }
    );
}

#[test]
fn a_benched_sole_candidate_leaves_the_model_waiting() {
    let v = view(
        1,
        vec![peer(1, "me", Backend::Cuda, 24.0, 64.0).wants(&[(QWEN8, QWEN8_GB)])],
    );
    let t = Timestamp::from_secs;
    let mut e = Election::new();
    e.record_launch_failure(QWEN8, t(0));
    e.record_launch_failure(QWEN8, t(1));
    let d = e.decide(&v, &no_demand(), t(2));
    assert!(matches!(d.duties[QWEN8], Duty::Waiting { .. }));
    assert_eq!(e.poll_timeout(), Some(t(61)));
    e.record_launch_success(QWEN8);
    assert_eq!(
        e.decide(&v, &no_demand(), t(3)).duties[QWEN8],
        Duty::Solo { spill: false }
    );
}

fn running_split(worker_3_gb: f64, with_3: bool, extra: Option<Peer>) -> MeshView {
    let mut peers = vec![
        peer(2, "host", Backend::Metal, 12.0, 64.0)
            .wants(&[(QWEN32, QWEN32_GB)])
            .hosting(&[QWEN32])
            .pipeline(QWEN32, &[3], 12.0 + worker_3_gb),
        peer(4, "new-near", Backend::Metal, 10.0, 32.0)
            .wants(&[(QWEN32, QWEN32_GB)])
            .rtt(10),
    ];
    if with_3 {
        peers.push(
            peer(3, "old-far", Backend::Metal, worker_3_gb, 32.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .serving(&[QWEN32])
                .rtt(80),
        );
    }
    peers.extend(extra);
    view(2, peers)
}

#[test]
fn a_running_split_is_kept_while_its_workers_live_and_still_fit() {
    // A nearer worker appeared; re-planning would pick it and tear the pipeline down.
    assert_eq!(
        plan_of(&running_split(10.0, true, None), QWEN32),
        Plan::Split {
            host: id(2),
            workers: vec![id(3)],
            total_group_memory: gb(22.0)
        }
    );
}

#[test]
fn a_running_split_is_replanned_when_a_worker_leaves_or_it_no_longer_fits() {
    let fresh = Plan::Split {
        host: id(2),
        workers: vec![id(4)],
        total_group_memory: gb(22.0),
    };
    assert_eq!(plan_of(&running_split(10.0, false, None), QWEN32), fresh);
    // Worker 3 now offers 8 GB: 12 + 8 < 21.74 GB.
    assert_eq!(plan_of(&running_split(8.0, true, None), QWEN32), fresh);
}

#[test]
fn solo_and_spill_both_replace_a_running_split() {
    let big = peer(5, "rtx-4090", Backend::Cuda, 24.0, 64.0).wants(&[(QWEN32, QWEN32_GB)]);
    assert_eq!(
        plan_of(&running_split(10.0, true, Some(big)), QWEN32),
        Plan::Solo {
            host: id(5),
            replicas: vec![],
            spill: false
        }
    );
    let spiller = peer(5, "rtx-4080s", Backend::Cuda, 17.2, 32.0).wants(&[(QWEN32, QWEN32_GB)]);
    assert_eq!(
        plan_of(&running_split(10.0, true, Some(spiller)), QWEN32),
        Plan::Solo {
            host: id(5),
            replicas: vec![],
            spill: true
        }
    );
}

#[test]
fn a_second_solo_host_starts_only_under_demand() {
    let v = view(
        1,
        vec![
            peer(1, "a", Backend::Cuda, 24.0, 64.0).wants(&[(QWEN8, QWEN8_GB)]),
            peer(2, "b", Backend::Cuda, 16.0, 32.0).wants(&[(QWEN8, QWEN8_GB)]),
            peer(3, "c", Backend::Cuda, 12.0, 32.0).wants(&[(QWEN8, QWEN8_GB)]),
        ],
    );
    let solo = |replicas| Plan::Solo {
        host: id(1),
        replicas,
        spill: false,
    };
    assert_eq!(plan_models(&v, &no_demand())[QWEN8], solo(vec![]));
    assert_eq!(plan_models(&v, &hot(QWEN8))[QWEN8], solo(vec![id(2)]));
    let busy = BTreeMap::from([(
        QWEN8.to_string(),
        Demand {
            clients: 1,
            requests_per_min: 12.0,
        },
    )]);
    assert_eq!(plan_models(&v, &busy)[QWEN8], solo(vec![id(2)]));
}

#[test]
fn a_spill_host_is_never_duplicated() {
    let mut peers = cohort_14_5_17_2_8_6((QWEN32, QWEN32_GB));
    peers.push(peer(4, "cuda-c", Backend::Cuda, 17.0, 32.0).wants(&[(QWEN32, QWEN32_GB)]));
    let v = view(1, peers);
    assert_eq!(
        plan_models(&v, &hot(QWEN32))[QWEN32],
        Plan::Solo {
            host: id(2),
            replicas: vec![],
            spill: true
        }
    );
}

#[test]
fn a_running_solo_host_is_kept_when_a_bigger_peer_joins() {
    let v = view(
        3,
        vec![
            peer(2, "first", Backend::Cuda, 12.0, 32.0)
                .wants(&[(QWEN8, QWEN8_GB)])
                .hosting(&[QWEN8]),
            peer(3, "bigger", Backend::Cuda, 24.0, 64.0).wants(&[(QWEN8, QWEN8_GB)]),
        ],
    );
    assert_eq!(
        decide(&v).duties[QWEN8],
        Duty::Standby { hosts: vec![id(2)] }
    );
    assert_eq!(
        plan_models(&v, &hot(QWEN8))[QWEN8],
        Plan::Solo {
            host: id(2),
            replicas: vec![id(3)],
            spill: false
        }
    );
}

#[test]
fn an_undialable_host_does_not_count_as_serving_the_model() {
    // This node can't reach the existing host, so it serves the model itself.
    let v = view(
        1,
        vec![
            peer(1, "me", Backend::Cuda, 16.0, 32.0).wants(&[(QWEN8, QWEN8_GB)]),
            peer(2, "unreachable", Backend::Cuda, 24.0, 64.0)
                .wants(&[(QWEN8, QWEN8_GB)])
                .hosting(&[QWEN8])
                .undialable(),
        ],
    );
    assert_eq!(decide(&v).duties[QWEN8], Duty::Solo { spill: false });
}

mod selection {
    use super::*;

    fn selects(v: &MeshView, n: u8, demand: &BTreeMap<String, Demand>) -> Vec<String> {
        let p = &v.get(&id(n)).expect("peer in view").announcement;
        select_serving_models(p, v, demand)
    }

    #[test]
    fn a_peer_that_holds_its_largest_model_serves_everything_it_was_given() {
        let v = view(
            1,
            vec![
                peer(1, "big", Backend::Cuda, 24.0, 64.0)
                    .wants(&[(QWEN8, QWEN8_GB), (QWEN32, QWEN32_GB)]),
            ],
        );
        assert_eq!(selects(&v, 1, &no_demand()), vec![QWEN32, QWEN8]);
        assert_eq!(selects(&v, 1, &hot(QWEN8)), vec![QWEN8, QWEN32]);
    }

    #[test]
    fn otherwise_only_the_largest_model_it_holds_ties_going_to_demand() {
        let small = "Qwen2.5-Coder-7B-Instruct-Q4_K_M";
        let v = view(
            1,
            vec![peer(1, "mac", Backend::Metal, 14.5, 24.0).wants(&[
                (QWEN8, QWEN8_GB),
                (small, QWEN8_GB),
                (LLAMA3B, LLAMA3B_GB),
                (QWEN32, QWEN32_GB),
            ])],
        );
        assert_eq!(selects(&v, 1, &no_demand()), vec![small]);
        assert_eq!(selects(&v, 1, &hot(QWEN8)), vec![QWEN8]);
    }

    #[test]
    fn a_peer_that_holds_nothing_keeps_only_models_no_dialable_host_holds() {
        let others = |reachable: bool| {
            let host = peer(2, "solo-32b", Backend::Cuda, 24.0, 64.0)
                .wants(&[(QWEN32, QWEN32_GB)])
                .hosting(&[QWEN32]);
            vec![
                peer(1, "small", Backend::Cuda, 8.0, 16.0)
                    .wants(&[(QWEN32, QWEN32_GB), (DS70, DS70_GB)]),
                if reachable { host } else { host.undialable() },
            ]
        };
        assert_eq!(selects(&view(1, others(true)), 1, &no_demand()), vec![DS70]);
        assert_eq!(
            selects(&view(1, others(false)), 1, &no_demand()),
            vec![DS70, QWEN32]
        );
    }

    #[test]
    fn the_selection_is_never_empty() {
        let v = view(
            1,
            vec![
                peer(1, "small", Backend::Cuda, 8.0, 16.0).wants(&[(QWEN32, QWEN32_GB)]),
                peer(2, "solo-32b", Backend::Cuda, 24.0, 64.0)
                    .wants(&[(QWEN32, QWEN32_GB)])
                    .hosting(&[QWEN32]),
            ],
        );
        assert_eq!(selects(&v, 1, &no_demand()), vec![QWEN32]);
        let sizeless = view(
            1,
            vec![peer(1, "x", Backend::Cuda, 8.0, 16.0).wants_without_file(QWEN8)],
        );
        assert_eq!(selects(&sizeless, 1, &no_demand()), vec![QWEN8]);
    }
}
