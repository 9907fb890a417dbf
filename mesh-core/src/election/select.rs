//! Which of its configured models a peer advertises (SPEC §3).
//!
//! Phase 2 (v0.66.48): a 14.5 GB Mac asked for Qwen3-8B and Qwen3-32B drops the 32B and serves
//! only the 8B solo, instead of spending its memory on a pooled 32B split.

use super::{Demand, can_hold_solo, demand_order};
use crate::id::PeerId;
use crate::peer::{ModelName, PeerAnnouncement};
use crate::view::MeshView;
use std::collections::{BTreeMap, BTreeSet};

/// Every model's GGUF size as the mesh knows it ([`MeshView::model_size`]), computed once.
#[derive(Debug, Default)]
pub(super) struct Sizes(BTreeMap<ModelName, u64>);

impl Sizes {
    pub(super) fn new(view: &MeshView) -> Self {
        let mut sizes: BTreeMap<ModelName, u64> = BTreeMap::new();
        for p in &view.peers {
            for (model, &size) in &p.announcement.model_sizes {
                if size > 0 {
                    let known = sizes.entry(model.clone()).or_default();
                    *known = (*known).max(size);
                }
            }
        }
        Sizes(sizes)
    }

    pub(super) fn get(&self, model: &str) -> Option<u64> {
        self.0.get(model).copied()
    }
}

/// Per model, the dialable hosts that route it and hold it in fast memory: the peers whose
/// presence lets an undersized peer drop the model.
#[derive(Debug, Default)]
pub(super) struct SoloRouters(BTreeMap<ModelName, BTreeSet<PeerId>>);

impl SoloRouters {
    pub(super) fn new(view: &MeshView, sizes: &Sizes) -> Self {
        let mut routers: BTreeMap<ModelName, BTreeSet<PeerId>> = BTreeMap::new();
        for p in &view.peers {
            let a = &p.announcement;
            // Undialable hosts don't count: nobody can proxy to them (an undialable host kept a
            // model loaded while every chat for it failed), and neither do workers that merely
            // advertise a model they have not brought up.
            if !a.is_host() || p.rtt_ms.is_none() {
                continue;
            }
            for model in &a.hosted_models {
                if can_hold_solo(a.fast_memory_bytes, sizes.get(model)) {
                    routers.entry(model.clone()).or_default().insert(a.peer_id);
                }
            }
        }
        SoloRouters(routers)
    }

    fn someone_else_holds(&self, model: &str, me: PeerId) -> bool {
        self.0
            .get(model)
            .is_some_and(|hosts| hosts.iter().any(|&h| h != me))
    }
}

/// The models `peer` should advertise, most demanded first (then by name):
///
/// 1. it can hold its largest requested model in fast memory → all of them;
/// 2. else it can hold some → only the largest of those (ties: more demand, then name);
/// 3. else → only the models no other dialable host already holds solo;
///
/// and never nothing: when every branch comes up empty, all requested models (they wait for
/// capacity). Sizes are the mesh's ([`MeshView::model_size`]); a model whose size nobody knows
/// fits nowhere and is only advertised by the never-empty rule.
pub fn select_serving_models(
    peer: &PeerAnnouncement,
    view: &MeshView,
    demand: &BTreeMap<ModelName, Demand>,
) -> Vec<ModelName> {
    let sizes = Sizes::new(view);
    select_with(peer, &sizes, &SoloRouters::new(view, &sizes), demand)
}

pub(super) fn select_with(
    peer: &PeerAnnouncement,
    sizes: &Sizes,
    routers: &SoloRouters,
    demand: &BTreeMap<ModelName, Demand>,
) -> Vec<ModelName> {
    let requested: BTreeSet<&ModelName> = peer.requested_models.iter().collect();
    let sized: Vec<(&ModelName, u64)> = requested
        .iter()
        .filter_map(|&m| sizes.get(m).map(|s| (m, s)))
        .collect();
    let fits = |size: u64| can_hold_solo(peer.fast_memory_bytes, Some(size));

    let mut chosen: Vec<&ModelName> = match sized.iter().map(|&(_, s)| s).max() {
        None => Vec::new(),
        Some(largest) if fits(largest) => requested.iter().copied().collect(),
        Some(_) if sized.iter().any(|&(_, s)| fits(s)) => sized
            .iter()
            .filter(|&&(_, s)| fits(s))
            .max_by(|a, b| {
                a.1.cmp(&b.1)
                    .then_with(|| demand_order(demand, a.0, b.0))
                    // The smaller name wins a full tie.
                    .then_with(|| b.0.cmp(a.0))
            })
            .map(|&(m, _)| vec![m])
            .unwrap_or_default(),
        Some(_) => sized
            .iter()
            .filter(|&&(m, _)| !routers.someone_else_holds(m, peer.peer_id))
            .map(|&(m, _)| m)
            .collect(),
    };
    if chosen.is_empty() {
        chosen = requested.into_iter().collect();
    }
    let mut out: Vec<ModelName> = chosen.into_iter().cloned().collect();
    out.sort_by(|a, b| demand_order(demand, b, a).then_with(|| a.cmp(b)));
    out
}
