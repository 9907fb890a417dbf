//! Status classifier invariants over random meshes, including announcements that point at
//! peers the view doesn't have.

mod election_fixtures;

use election_fixtures::arb;
use mesh_core::election::can_hold_solo;
use mesh_core::sla::Tier;
use mesh_core::status::{
    LocalFacts, SplitKind, SplitRole, catalog_payload, classify_peer, status_payload,
};
use mesh_core::{MeshView, Role};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn classify_all(v: &MeshView) -> Vec<(mesh_core::PeerId, mesh_core::status::PeerStatus)> {
    v.peers
        .iter()
        .map(|p| (p.id(), classify_peer(v, &p.id()).expect("peer in view")))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every member of an emitted split group exists in the view, the host comes first, and
    /// nobody is listed twice.
    #[test]
    fn split_groups_only_name_peers_in_the_view(v in arb::mesh()) {
        let known: BTreeSet<String> = v.peers.iter().map(|p| p.id().short()).collect();
        for (id, s) in classify_all(&v) {
            prop_assert_eq!(s.split_role.is_some(), s.split_group.is_some());
            let Some(g) = s.split_group else { continue };
            prop_assert!(g.peer_ids.iter().all(|m| known.contains(m)), "{:?}", g);
            prop_assert_eq!(g.peer_ids.first(), Some(&g.host_id));
            let unique: BTreeSet<_> = g.peer_ids.iter().collect();
            prop_assert_eq!(unique.len(), g.peer_ids.len());
            prop_assert!(g.peer_ids.len() >= 2);
            prop_assert!(g.peer_ids.contains(&id.short()));
        }
    }

    /// One host per split group: all members agree on it, and only it is the pipeline host.
    #[test]
    fn at_most_one_host_per_split_group(v in arb::mesh()) {
        let mut host_of: BTreeMap<String, String> = BTreeMap::new();
        let mut pipeline_hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, s) in classify_all(&v) {
            let Some(g) = s.split_group else { continue };
            let prior = host_of.insert(g.model.clone(), g.host_id.clone());
            prop_assert!(prior.is_none_or(|h| h == g.host_id));
            if s.split_role == Some(SplitRole::PipelineHost) {
                prop_assert_eq!(&id.short(), &g.host_id);
                pipeline_hosts.entry(g.model).or_default().push(id.short());
            }
        }
        for hosts in pipeline_hosts.values() {
            prop_assert_eq!(hosts.len(), 1);
        }
        // Every group's host says it is a pipeline host (a row shows one group: of two
        // pipelines on one host, its row shows the first).
        let statuses: BTreeMap<String, _> = classify_all(&v)
            .into_iter()
            .map(|(id, s)| (id.short(), s))
            .collect();
        for host in host_of.values() {
            prop_assert_eq!(statuses[host].split_role, Some(SplitRole::PipelineHost));
        }
    }

    /// The honesty gates hold whatever the announcements claim: no role for clients, no group
    /// for a model that two hosts route or that its host holds alone.
    #[test]
    fn honesty_gates_hold(v in arb::mesh()) {
        for (id, s) in classify_all(&v) {
            let p = v.get(&id).expect("classified peers are in the view");
            if matches!(p.announcement.role, Role::Client) {
                prop_assert!(s.split_role.is_none() && s.serving_mode.is_none());
            }
            let Some(g) = s.split_group else { continue };
            let routing: Vec<_> = v
                .peers
                .iter()
                .filter(|q| q.announcement.is_host() && q.announcement.hosts(&g.model))
                .collect();
            prop_assert_eq!(routing.len(), 1);
            prop_assert_eq!(routing[0].id().short(), g.host_id.clone());
            prop_assert!(!can_hold_solo(
                routing[0].announcement.fast_memory_bytes,
                v.model_size(&g.model)
            ));
        }
    }

    /// The payloads agree with the classifier: a model with a split group is a pipeline row that
    /// counts its members, and the status payload lists every other peer once.
    #[test]
    fn payloads_agree_with_the_classifier(v in arb::mesh()) {
        let status = status_payload(&v, &LocalFacts::default()).expect("view holds me");
        prop_assert_eq!(status.peers.len(), v.peers.len() - 1);
        let rows: BTreeMap<String, (SplitKind, u32)> =
            catalog_payload(&v, &LocalFacts::default(), &|_| Tier::Experimental)
                .models
                .into_iter()
                .map(|r| (r.name, (r.split_kind, r.node_count)))
                .collect();
        for g in classify_all(&v).into_iter().filter_map(|(_, s)| s.split_group) {
            prop_assert_eq!(
                rows.get(&g.model).copied(),
                Some((SplitKind::Pipeline, g.peer_ids.len() as u32))
            );
        }
        for (kind, count) in rows.values() {
            match kind {
                SplitKind::Cold => prop_assert_eq!(*count, 0),
                SplitKind::Solo => prop_assert_eq!(*count, 1),
                SplitKind::Pipeline | SplitKind::MultiHost => prop_assert!(*count >= 2),
            }
        }
    }
}
