//! The one place the world takes its serving decision: which peers serve which model.
//!
//! TODO(election): `mesh_core::election` is being written (a1) and is not committed yet. When it
//! is, `plan_models` becomes `mesh_core::election::plan_models(view, &demand)` mapped onto
//! [`ModelPlan`] (same shape as its `Plan`), and this file keeps only that mapping. Until then it
//! applies the single rule the simulator may hold on its own: a peer that requested a model and
//! whose fast memory is at least 1.1 × the model's size serves it solo. Nothing here plans a
//! split or an mmap-spill solo; such models wait.

use crate::profile::SOLO_HEADROOM;
use mesh_core::{MeshView, ModelName, PeerId, Role};
use std::collections::BTreeMap;

/// How one model is served, mesh-wide (mirrors `mesh_core::election::Plan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ModelPlan {
    /// `host` and `replicas` each run llama-server alone; `spill`: weights partly paged from RAM.
    Solo {
        host: PeerId,
        replicas: Vec<PeerId>,
        spill: bool,
    },
    /// `host` runs llama-server over the workers' rpc-servers.
    #[allow(dead_code)] // produced once mesh_core::election is wired in
    Split {
        host: PeerId,
        workers: Vec<PeerId>,
        total_group_memory: u64,
    },
    /// No peer or group can hold it.
    Waiting,
}

impl ModelPlan {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ModelPlan::Solo { .. } => "solo",
            ModelPlan::Split { .. } => "split",
            ModelPlan::Waiting => "waiting",
        }
    }
}

/// The plan of each of `models` as `view.me` sees the mesh.
pub(crate) fn plan_models(view: &MeshView, models: &[ModelName]) -> BTreeMap<ModelName, ModelPlan> {
    models
        .iter()
        .map(|model| {
            let size = view.model_size(model).unwrap_or(0);
            let mut fits = view.peers.iter().filter(|p| {
                let a = &p.announcement;
                a.role != Role::Client
                    && a.requested_models.contains(model)
                    && size > 0
                    && a.fast_memory_bytes as f64 >= SOLO_HEADROOM * size as f64
            });
            let plan = match fits.next() {
                Some(host) => ModelPlan::Solo {
                    host: host.id(),
                    replicas: fits.map(|p| p.id()).collect(),
                    spill: false,
                },
                None => ModelPlan::Waiting,
            };
            (model.clone(), plan)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::{KnownPeer, PeerAnnouncement, Timestamp};

    fn peer(id: u8, fast_gb: f64, wants: &str, role: Role) -> KnownPeer {
        let mut a = PeerAnnouncement::new(PeerId([id; 32]), "sim", role);
        a.fast_memory_bytes = (fast_gb * 1e9) as u64;
        a.requested_models = vec![wants.to_string()];
        a.model_sizes.insert(wants.to_string(), 5_030_000_000);
        KnownPeer {
            announcement: a,
            rtt_ms: Some(10),
            first_seen: Timestamp::ZERO,
            last_fresh: Timestamp::ZERO,
        }
    }

    #[test]
    fn every_peer_that_holds_the_model_serves_it_solo_and_the_rest_wait() {
        let m = "Qwen3-8B-Q4_K_M".to_string();
        let view = MeshView::new(
            PeerId([9; 32]),
            vec![
                peer(1, 17.2, &m, Role::Worker),
                peer(2, 5.5, &m, Role::Worker), // below 1.1 × 5.03 GB
                peer(3, 12.9, &m, Role::Worker),
                peer(9, 64.0, &m, Role::Client), // an entry serves nothing
            ],
        );
        let plans = plan_models(&view, std::slice::from_ref(&m));
        assert_eq!(
            plans[&m],
            ModelPlan::Solo {
                host: PeerId([1; 32]),
                replicas: vec![PeerId([3; 32])],
                spill: false,
            }
        );
        let small = MeshView::new(PeerId([9; 32]), vec![peer(2, 5.5, &m, Role::Worker)]);
        assert_eq!(
            plan_models(&small, std::slice::from_ref(&m))[&m],
            ModelPlan::Waiting
        );
    }
}
