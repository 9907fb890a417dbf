//! Election invariants over random meshes.

mod election_fixtures;

use election_fixtures::arb;
use mesh_core::election::{
    Demand, Election, Plan, can_hold_solo, can_spill_solo, min_vram_for_solo, plan_models,
    select_serving_models,
};
use mesh_core::{MeshView, PeerId, Role, Timestamp};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn demand(hot: bool) -> BTreeMap<String, Demand> {
    arb::MODELS
        .iter()
        .filter(|_| hot)
        .map(|(m, _)| {
            (
                m.to_string(),
                Demand {
                    clients: 3,
                    requests_per_min: 12.0,
                },
            )
        })
        .collect()
}

fn fast(v: &MeshView, id: &PeerId) -> u64 {
    v.get(id).map_or(0, |p| p.announcement.fast_memory_bytes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Solo wins: no live peer that takes part in a model (selected it or hosts it, with the
    /// GGUF on disk) can hold it in fast memory when it is planned as a split.
    #[test]
    fn a_model_some_live_peer_can_hold_is_never_planned_as_a_split(v in arb::mesh(), hot in any::<bool>()) {
        let d = demand(hot);
        for (model, plan) in plan_models(&v, &d) {
            let Plan::Split { .. } = plan else { continue };
            let size = v.model_size(&model);
            for p in &v.peers {
                let a = &p.announcement;
                let takes_part = !matches!(a.role, Role::Client)
                    && a.model_sizes.get(&model).is_some_and(|&s| s > 0)
                    && (select_serving_models(a, &v, &d).contains(&model) || a.hosts(&model));
                prop_assert!(
                    !(takes_part && can_hold_solo(a.fast_memory_bytes, size)),
                    "{model} split although {:?} holds it", a.peer_id
                );
            }
        }
    }

    /// Every split has one host, distinct live non-client workers, and a group that holds
    /// 1.1 × the model; solo hosts hold the model resident or qualify for spill.
    #[test]
    fn every_plan_is_well_formed(v in arb::mesh(), hot in any::<bool>()) {
        for (model, plan) in plan_models(&v, &demand(hot)) {
            let size = v.model_size(&model);
            match plan {
                Plan::Split { host, workers, total_group_memory } => {
                    let unique: BTreeSet<_> = workers.iter().collect();
                    prop_assert_eq!(unique.len(), workers.len());
                    prop_assert!(!workers.is_empty() && !workers.contains(&host));
                    for w in &workers {
                        let p = v.get(w);
                        prop_assert!(p.is_some_and(|p| !matches!(p.announcement.role, Role::Client)));
                    }
                    let sum = fast(&v, &host) + workers.iter().map(|w| fast(&v, w)).sum::<u64>();
                    prop_assert_eq!(total_group_memory, sum);
                    prop_assert!(size.and_then(min_vram_for_solo).is_some_and(|m| sum >= m));
                }
                Plan::Solo { host, replicas, spill } => {
                    prop_assert!(!replicas.contains(&host));
                    for h in std::iter::once(&host).chain(&replicas) {
                        let a = &v.get(h).expect("hosts are in the view").announcement;
                        let size = size.expect("a solo model has a size");
                        let fits = if spill {
                            can_spill_solo(a, size)
                        } else {
                            can_hold_solo(a.fast_memory_bytes, Some(size))
                        };
                        prop_assert!(fits, "{model}: {h:?} can't hold it (spill: {spill})");
                    }
                    prop_assert!(!spill || replicas.is_empty());
                }
                Plan::WaitingForCapacity { needed, .. } => {
                    prop_assert_eq!(needed, size.and_then(min_vram_for_solo));
                }
            }
        }
    }

    /// A peer's memory is counted once: it belongs to at most one split, and a solo host is in
    /// no split.
    #[test]
    fn no_peer_is_in_two_splits_or_in_a_split_and_hosting_solo(v in arb::mesh(), hot in any::<bool>()) {
        let mut in_split = BTreeSet::new();
        let mut solo_hosts = BTreeSet::new();
        for plan in plan_models(&v, &demand(hot)).into_values() {
            match plan {
                Plan::Split { host, workers, .. } => {
                    for id in std::iter::once(host).chain(workers) {
                        prop_assert!(in_split.insert(id), "{:?} in two splits", id);
                    }
                }
                Plan::Solo { host, replicas, .. } => {
                    solo_hosts.extend(std::iter::once(host).chain(replicas));
                }
                Plan::WaitingForCapacity { .. } => {}
            }
        }
        prop_assert!(in_split.is_disjoint(&solo_hosts));
    }

    /// Same view, same time, same history ⇒ the same election, bit for bit; and the node's
    /// duties agree with the plans it reports.
    #[test]
    fn the_election_is_deterministic_and_duties_follow_the_plans(
        v in arb::mesh(),
        hot in any::<bool>(),
        t in 0u64..200,
    ) {
        let d = demand(hot);
        let run = || {
            let mut e = Election::new();
            e.decide(&v, &d, Timestamp::from_secs(t));
            let out = e.decide(&v, &d, Timestamp::from_secs(t + 31));
            (out, e.poll_timeout())
        };
        let (a, ta) = run();
        let (b, tb) = run();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(ta, tb);
        prop_assert_eq!(plan_models(&v, &d), plan_models(&v, &d));
        for model in &a.serving_models {
            prop_assert!(a.duties.contains_key(model));
        }
        for (model, duty) in &a.duties {
            use mesh_core::election::Duty;
            let plan = &a.plans[model];
            let ok = match duty {
                Duty::Solo { spill } => matches!(plan, Plan::Solo { host, replicas, spill: s }
                    if s == spill && (*host == v.me || replicas.contains(&v.me))),
                Duty::SplitHost { .. } => matches!(plan, Plan::Split { host, .. } if *host == v.me),
                Duty::SplitWorker { host } => matches!(plan, Plan::Split { host: h, workers, .. }
                    if h == host && workers.contains(&v.me)),
                Duty::Standby { hosts } => plan.host() == hosts.first().copied(),
                Duty::Waiting { .. } => matches!(plan, Plan::WaitingForCapacity { .. }),
            };
            prop_assert!(ok, "{model}: {duty:?} under {plan:?}");
        }
    }
}
