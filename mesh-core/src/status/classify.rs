//! The status classifier (SPEC §4): each peer's state, serving mode and split role, read from
//! the announcements in a [`MeshView`].
//!
//! A split role or group is shown only for a real pipeline. The honesty gates, in order:
//!
//! 1. clients have none;
//! 2. no peer routes the model yet (no `Host` with it healthy) → none;
//! 3. two or more independent hosts route it → replicas, none;
//! 4. the routing host's fast memory ≥ 1.1 × the model's GGUF size → it serves solo and the
//!    rest of the cohort is standby, none for anyone (the v0.66.56 phantom-split fix). When no
//!    peer knows the size this gate cannot fire and the classifier falls through, so genuine
//!    pipelines of unscanned models (the DeepSeek-R1-Distill-70B cohort) still render;
//! 5. the host serves alone: no worker → none. A peer that serves a model itself (solo or as
//!    a pipeline host) is no worker of another host's pipeline.
//!
//! Membership: the host's announced running pipeline (`PeerAnnouncement::pipelines`) when it
//! has one for the model, restricted to peers in the view; otherwise (an announcement without
//! the evidence) the previous rule, every `Worker` assigned to the model, unless the known size
//! shows the host holds it by mmap spill (then it serves solo). The gates above apply either way.

use crate::election::{can_hold_solo, can_spill_solo};
use crate::id::PeerId;
use crate::peer::{GB, ModelName, Role};
use crate::status::payload::{NodeState, ServingMode, SplitGroup, SplitRole};
use crate::view::{KnownPeer, MeshView};
use std::collections::{BTreeMap, BTreeSet};

/// What the classifier says about one peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    pub state: NodeState,
    /// `None` for clients and for standby peers with nothing to serve or wait for.
    pub serving_mode: Option<ServingMode>,
    pub split_role: Option<SplitRole>,
    pub split_group: Option<SplitGroup>,
}

/// Classifies peer `id` of `view`; `None` when it is not in the view.
pub fn classify_peer(view: &MeshView, id: &PeerId) -> Option<PeerStatus> {
    let peer = view.get(id)?;
    Some(Classifier::new(view).peer(peer))
}

/// How one model is served according to the announcements.
#[derive(Debug)]
pub(crate) struct Topology<'a> {
    /// Peers whose llama-server routes the model (`Host`, model healthy), in id order.
    pub hosts: Vec<&'a KnownPeer>,
    /// The genuine pipeline serving it, when every gate lets one through.
    pub pipeline: Option<Pipeline>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pipeline {
    /// Host first, then the workers.
    pub members: Vec<PeerId>,
    pub total_bytes: u64,
}

impl Pipeline {
    pub fn host(&self) -> PeerId {
        self.members[0]
    }
}

/// The topology of every model some peer hosts, advertises or requests.
pub(crate) struct Classifier<'a> {
    view: &'a MeshView,
    pub topologies: BTreeMap<ModelName, Topology<'a>>,
}

impl<'a> Classifier<'a> {
    pub fn new(view: &'a MeshView) -> Self {
        let models: BTreeSet<&ModelName> = view
            .peers
            .iter()
            .filter(|p| !matches!(p.announcement.role, Role::Client))
            .flat_map(|p| {
                let a = &p.announcement;
                a.hosted_models
                    .iter()
                    .chain(&a.serving_models)
                    .chain(&a.requested_models)
            })
            .collect();
        let topologies = models
            .into_iter()
            .map(|m| (m.clone(), topology(view, m)))
            .collect();
        Classifier { view, topologies }
    }

    pub fn peer(&self, p: &KnownPeer) -> PeerStatus {
        let a = &p.announcement;
        if matches!(a.role, Role::Client) {
            return PeerStatus {
                state: NodeState::Client,
                serving_mode: None,
                split_role: None,
                split_group: None,
            };
        }
        let split = self.topologies.iter().find_map(|(model, t)| {
            let pipe = t.pipeline.as_ref()?;
            pipe.members.contains(&p.id()).then(|| {
                let role = if pipe.host() == p.id() {
                    SplitRole::PipelineHost
                } else {
                    SplitRole::PipelineWorker
                };
                (role, self.group(model, pipe))
            })
        });
        // Listed by a host whose llama-server is not up yet: a worker of a loading pipeline.
        let in_loading_pipeline = self.view.peers.iter().any(|h| {
            h.announcement.is_host()
                && h.announcement
                    .pipelines
                    .iter()
                    .any(|r| r.workers.contains(&p.id()) && !h.announcement.hosts(&r.model))
        });

        let state = if !a.hosted_models.is_empty() || split.is_some() {
            NodeState::Serving
        } else if a.is_host() || in_loading_pipeline {
            NodeState::Loading
        } else {
            NodeState::Standby
        };
        let serving_mode = match &split {
            Some((SplitRole::PipelineHost, _)) => Some(ServingMode::SplitHost),
            Some((SplitRole::PipelineWorker, _)) => Some(ServingMode::SplitWorker),
            None if !a.hosted_models.is_empty() => Some(ServingMode::Solo),
            None if a.is_host() => Some(if self.holds_any(p) {
                ServingMode::Solo
            } else {
                // Loading something it cannot hold alone: its pipeline isn't up.
                ServingMode::Waiting
            }),
            None if in_loading_pipeline => Some(ServingMode::Waiting),
            None if a.requested_models.is_empty() && a.serving_models.is_empty() => None,
            // Standby: everything it advertises is already served by someone else.
            None if !a.serving_models.is_empty()
                && a.serving_models.iter().all(|m| {
                    self.topologies
                        .get(m)
                        .is_some_and(|t| t.hosts.iter().any(|h| h.id() != p.id()))
                }) =>
            {
                None
            }
            None => Some(ServingMode::Waiting),
        };
        let (split_role, split_group) = match split {
            Some((role, group)) => (Some(role), Some(group)),
            None => (None, None),
        };
        PeerStatus {
            state,
            serving_mode,
            split_role,
            split_group,
        }
    }

    /// Whether a (loading) host can hold one of the models it advertises, resident or spilled.
    fn holds_any(&self, p: &KnownPeer) -> bool {
        let a = &p.announcement;
        a.serving_models.iter().any(|m| {
            let size = self.view.model_size(m);
            can_hold_solo(a.fast_memory_bytes, size) || size.is_some_and(|s| can_spill_solo(a, s))
        })
    }

    fn group(&self, model: &str, pipe: &Pipeline) -> SplitGroup {
        SplitGroup {
            model: model.to_string(),
            host_id: pipe.host().short(),
            peer_ids: pipe.members.iter().map(PeerId::short).collect(),
            total_group_vram_gb: pipe.total_bytes as f64 / GB,
        }
    }
}

fn topology<'a>(view: &'a MeshView, model: &str) -> Topology<'a> {
    let hosts: Vec<&KnownPeer> = view
        .peers
        .iter()
        .filter(|p| p.announcement.is_host() && p.announcement.hosts(model))
        .collect();
    let pipeline = match hosts.as_slice() {
        [host] => genuine_pipeline(view, host, model),
        // No host yet, or replicas.
        _ => None,
    };
    Topology { hosts, pipeline }
}

fn genuine_pipeline(view: &MeshView, host: &KnownPeer, model: &str) -> Option<Pipeline> {
    let h = &host.announcement;
    let size = view.model_size(model);
    if can_hold_solo(h.fast_memory_bytes, size) {
        return None;
    }
    // A peer that serves a model itself is no layer worker of another's pipeline.
    let usable = |p: &KnownPeer| {
        let a = &p.announcement;
        let serves_itself = a.is_host() && !a.hosted_models.is_empty();
        p.id() != host.id() && !matches!(a.role, Role::Client) && !serves_itself
    };
    let workers: Vec<PeerId> = match h.pipelines.iter().find(|r| r.model == model) {
        Some(running) => {
            let mut seen = BTreeSet::new();
            running
                .workers
                .iter()
                .filter(|w| view.get(w).is_some_and(usable) && seen.insert(**w))
                .copied()
                .collect()
        }
        None if size.is_some_and(|s| can_spill_solo(h, s)) => return None,
        None => view
            .peers
            .iter()
            .filter(|p| usable(p) && matches!(p.announcement.role, Role::Worker))
            .filter(|p| {
                let a = &p.announcement;
                a.serving_models
                    .iter()
                    .chain(&a.requested_models)
                    .any(|m| m == model)
            })
            .map(KnownPeer::id)
            .collect(),
    };
    if workers.is_empty() {
        return None;
    }
    let members: Vec<PeerId> = std::iter::once(host.id()).chain(workers).collect();
    let total_bytes = members
        .iter()
        .filter_map(|id| view.get(id))
        .map(|p| p.announcement.fast_memory_bytes)
        .fold(0u64, u64::saturating_add);
    Some(Pipeline {
        members,
        total_bytes,
    })
}
