//! This node's own announcement, and `/api/status` from it through mesh-core's classifier.
//!
//! [`own_announcement`] is the content the node's gossip machine publishes (see
//! [`crate::mesh`]); [`local_view`] is the mesh as a node that knows only itself sees it (a node
//! API without a mesh, in tests).

use crate::backend::{BackendState, BackendView};
use mesh_core::peer::{Backend, ModelName, PeerAnnouncement, Role};
use mesh_core::status::{LocalFacts, StatusPayload, status_payload};
use mesh_core::{KnownPeer, MeshView, PeerId, Timestamp};

/// What this node knows about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub node_id: PeerId,
    /// Empty until the node founds or joins a mesh over the transport.
    pub mesh_id: String,
    pub hostname: String,
    pub backend: Backend,
    pub gpu_name: String,
    /// Fast memory this node advertises (after `--max-vram-gb`).
    pub fast_memory_bytes: u64,
    pub system_ram_bytes: u64,
    /// The port of this node's HTTP API (what a host advertises as `Role::Host { http_port }`).
    pub http_port: u16,
}

/// The announcement this node would publish now. A node running (or starting) llama-server for a
/// model is a `Host`; with nothing running it is a `Worker`. Its measurements (through-mesh
/// p50s, native baselines, requests in flight) come from `local`.
pub fn own_announcement(
    info: &NodeInfo,
    backends: &[BackendView],
    local: &LocalFacts,
) -> PeerAnnouncement {
    let running = backends
        .iter()
        .any(|b| !matches!(b.state, BackendState::Stopped));
    let role = if running {
        Role::Host {
            http_port: info.http_port,
        }
    } else {
        Role::Worker
    };
    let mut a = PeerAnnouncement::new(info.node_id, info.mesh_id.clone(), role);
    a.hostname = info.hostname.clone();
    a.backend = info.backend;
    a.gpu_name = info.gpu_name.clone();
    a.fast_memory_bytes = info.fast_memory_bytes;
    a.system_ram_bytes = info.system_ram_bytes;
    let configured: Vec<ModelName> = backends.iter().map(|b| b.model.clone()).collect();
    a.requested_models = configured.clone();
    a.serving_models = configured;
    a.hosted_models = backends
        .iter()
        .filter(|b| matches!(b.state, BackendState::Ready(_)))
        .map(|b| b.model.clone())
        .collect();
    a.model_sizes = backends
        .iter()
        .map(|b| (b.model.clone(), b.size_bytes))
        .collect();
    a.inflight_requests = local.inflight_requests;
    a.model_timings = local.timings.clone();
    a.native_baselines = local.native_baselines.clone();
    a
}

/// The mesh as a node that knows only itself sees it.
pub fn local_view(
    info: &NodeInfo,
    backends: &[BackendView],
    local: &LocalFacts,
    now: Timestamp,
) -> MeshView {
    let me = KnownPeer {
        announcement: own_announcement(info, backends, local),
        rtt_ms: Some(0),
        first_seen: now,
        last_fresh: now,
    };
    MeshView::new(info.node_id, vec![me])
}

/// `/api/status` of a node whose view of the mesh is itself.
pub fn local_status(
    info: &NodeInfo,
    backends: &[BackendView],
    local: &LocalFacts,
    now: Timestamp,
) -> StatusPayload {
    let view = local_view(info, backends, local, now);
    status_payload(&view, local).expect("the view holds this node's own announcement")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dial::Upstream;
    use mesh_core::peer::ModelTiming;
    use mesh_core::status::NodeState;

    fn facts(timings: Vec<ModelTiming>, inflight_requests: u32) -> LocalFacts {
        LocalFacts {
            timings,
            inflight_requests,
            ..LocalFacts::default()
        }
    }

    fn node() -> NodeInfo {
        NodeInfo {
            node_id: PeerId::from_bytes([0x1f; 32]),
            mesh_id: String::new(),
            hostname: "desk".into(),
            backend: Backend::Cuda,
            gpu_name: "NVIDIA GeForce RTX 4080 SUPER".into(),
            fast_memory_bytes: 17_200_000_000,
            system_ram_bytes: 32_000_000_000,
            http_port: 9337,
        }
    }

    fn view(model: &str, state: BackendState) -> BackendView {
        BackendView {
            model: model.into(),
            size_bytes: 5_000_000_000,
            state,
        }
    }

    fn ready() -> BackendState {
        BackendState::Ready(Upstream::tcp(([127, 0, 0, 1], 1).into(), None))
    }

    #[test]
    fn solo_host_status_shows_hosted_models_and_measured_p50s_with_counts() {
        let backends = [
            view("Qwen3-32B-Q4_K_M", BackendState::Restarting { failures: 2 }),
            view("Qwen3-8B-Q4_K_M", ready()),
        ];
        let timings = vec![ModelTiming {
            model: "Qwen3-8B-Q4_K_M".into(),
            tps_p50: 45.26,
            ttft_ms_p50: 82.0,
            samples_in_window: 7,
        }];
        let status = local_status(
            &node(),
            &backends,
            &facts(timings, 1),
            Timestamp::from_secs(1_000),
        );
        insta::with_settings!({
            snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots/mesh-node"),
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_json_snapshot!("local_status_solo_host", status);
        });
    }

    #[test]
    fn node_state_follows_the_backends() {
        let s = |states: Vec<BackendState>| {
            let views: Vec<BackendView> = states.into_iter().map(|st| view("m", st)).collect();
            local_status(&node(), &views, &facts(vec![], 0), Timestamp::ZERO).node_state
        };
        assert_eq!(s(vec![BackendState::Loading]), NodeState::Loading);
        assert_eq!(
            s(vec![BackendState::Restarting { failures: 1 }]),
            NodeState::Loading
        );
        assert_eq!(s(vec![BackendState::Stopped]), NodeState::Standby);
        assert_eq!(s(vec![BackendState::Loading, ready()]), NodeState::Serving);
    }

    #[test]
    fn announcement_lists_hosted_only_when_healthy() {
        let a = own_announcement(
            &node(),
            &[view("a", ready()), view("b", BackendState::Loading)],
            &facts(vec![], 2),
        );
        assert_eq!(a.role, Role::Host { http_port: 9337 });
        assert_eq!(a.requested_models, ["a", "b"]);
        assert_eq!(a.hosted_models, ["a"]);
        assert_eq!(a.model_sizes["b"], 5_000_000_000);
        assert_eq!(a.inflight_requests, 2);
    }
}
