//! How each model is served, mesh-wide, as seen from one node (SPEC §3).
//!
//! Per model, in this order of preference:
//!
//! 1. **resident solo**: a cohort peer holds the model in fast memory (≥ 1.1 × size). Peers
//!    already routing it stay; a second host starts only under demand.
//! 2. **mmap-spill solo** (see [`can_spill_solo`]).
//! 3. **sticky split**: a pipeline a host already runs, while all its workers live and the group
//!    still fits.
//! 4. **fresh split**: host by [`host_key`], workers added in RTT order until the group holds
//!    1.1 × size.
//! 5. **waiting for capacity**.
//!
//! Resident solos are planned for every model first, then the rest in demand order, and a peer
//! that hosts one model or belongs to one split is not counted twice.

use super::select::{Sizes, SoloRouters, select_with};
use super::{
    Demand, MAX_SPLIT_RTT_MS, Plan, can_hold_solo, can_spill_solo, demand_order, min_vram_for_solo,
    ram_filter_ok,
};
use crate::id::PeerId;
use crate::peer::{ModelName, Role};
use crate::view::{KnownPeer, MeshView};
use std::collections::{BTreeMap, BTreeSet};

/// What planning needs beyond the view: demand, and the election machine's memory of time.
pub(super) struct PlanInputs<'a> {
    pub demand: &'a BTreeMap<ModelName, Demand>,
    /// Per model, candidates that were elected but never claimed within the host-claim grace.
    pub passed_over: &'a BTreeMap<ModelName, BTreeSet<PeerId>>,
    /// Models this node (`view.me`) may not host right now (launch backoff).
    pub benched: &'a BTreeSet<ModelName>,
}

pub(super) struct Planned {
    pub plans: BTreeMap<ModelName, Plan>,
    /// Per model, the peers that take part in serving it: those whose serving-model selection
    /// includes it, and those already hosting it. In id order.
    pub cohorts: BTreeMap<ModelName, Vec<PeerId>>,
}

pub(super) fn plan(view: &MeshView, inputs: &PlanInputs) -> Planned {
    let sizes = Sizes::new(view);
    let routers = SoloRouters::new(view, &sizes);
    let mut cohorts: BTreeMap<ModelName, Vec<&KnownPeer>> = BTreeMap::new();
    for p in &view.peers {
        let a = &p.announcement;
        if matches!(a.role, Role::Client) {
            continue;
        }
        let mut models: BTreeSet<ModelName> = select_with(a, &sizes, &routers, inputs.demand)
            .into_iter()
            .collect();
        models.extend(a.hosted_models.iter().cloned());
        for m in models {
            cohorts.entry(m).or_default().push(p);
        }
    }

    let planner = Planner { view, inputs };
    let mut busy: BTreeSet<PeerId> = BTreeSet::new();
    let mut plans: BTreeMap<ModelName, Plan> = BTreeMap::new();
    for (model, cohort) in &cohorts {
        let Some(size) = sizes.get(model) else {
            plans.insert(model.clone(), waiting(cohort, &busy, None));
            continue;
        };
        if let Some(plan) = planner.resident_solo(model, size, cohort) {
            busy.extend(plan.members());
            plans.insert(model.clone(), plan);
        }
    }

    let mut rest: Vec<&ModelName> = cohorts.keys().filter(|m| !plans.contains_key(*m)).collect();
    rest.sort_by(|a, b| demand_order(inputs.demand, b, a).then_with(|| a.cmp(b)));
    for model in rest {
        let cohort = &cohorts[model];
        // Unknown sizes were planned as waiting above.
        let size = sizes.get(model).unwrap_or_default();
        let plan = planner
            .spill_solo(model, size, cohort, &busy)
            .or_else(|| planner.sticky_split(model, size, &busy))
            .or_else(|| planner.fresh_split(model, size, cohort, &busy))
            .unwrap_or_else(|| waiting(cohort, &busy, min_vram_for_solo(size)));
        busy.extend(plan.members());
        plans.insert(model.clone(), plan);
    }

    Planned {
        plans,
        cohorts: cohorts
            .into_iter()
            .map(|(m, c)| (m, c.iter().map(|p| p.id()).collect()))
            .collect(),
    }
}

/// Host choice: the lexicographic maximum of `(can_hold_solo, has_measured_rtt,
/// fast_memory_bytes, system_ram_bytes, peer_id)`. `has_measured_rtt` keeps an undialable ghost
/// with more memory from winning over a dialable runner-up; this node always has one to itself.
pub(super) fn host_key(p: &KnownPeer, size: u64) -> (bool, bool, u64, u64, PeerId) {
    let a = &p.announcement;
    (
        can_hold_solo(a.fast_memory_bytes, Some(size)),
        p.rtt_ms.is_some(),
        a.fast_memory_bytes,
        a.system_ram_bytes,
        a.peer_id,
    )
}

/// A dialable host already serving `model` end to end.
fn routes(p: &KnownPeer, model: &str) -> bool {
    p.rtt_ms.is_some() && p.announcement.is_host() && p.announcement.hosts(model)
}

/// The peer has the GGUF on disk: only such a peer can run `llama-server` for it (three peers
/// with a half-downloaded file once reported size 0 and won an election they could not honour).
fn has_file(p: &KnownPeer, model: &str) -> bool {
    p.announcement
        .model_sizes
        .get(model)
        .is_some_and(|&s| s > 0)
}

fn waiting(cohort: &[&KnownPeer], busy: &BTreeSet<PeerId>, needed: Option<u64>) -> Plan {
    Plan::WaitingForCapacity {
        pooled: cohort
            .iter()
            .filter(|p| !busy.contains(&p.id()))
            .map(|p| p.announcement.fast_memory_bytes)
            .sum(),
        needed,
    }
}

struct Planner<'a> {
    view: &'a MeshView,
    inputs: &'a PlanInputs<'a>,
}

impl Planner<'_> {
    fn benched(&self, p: &KnownPeer, model: &str) -> bool {
        p.id() == self.view.me && self.inputs.benched.contains(model)
    }

    fn viable(&self, p: &KnownPeer, model: &str) -> bool {
        !self.benched(p, model)
            && !self
                .inputs
                .passed_over
                .get(model)
                .is_some_and(|s| s.contains(&p.id()))
    }

    /// Hosts for a solo plan among `eligible` (best first): every one already routing the model,
    /// topped up with fresh viable candidates to `target`. When grace has passed over every fresh
    /// candidate and nobody routes the model, the best of them is tried again rather than
    /// leaving a servable model unserved.
    fn pick_solo_hosts(
        &self,
        model: &str,
        size: u64,
        mut eligible: Vec<&KnownPeer>,
        target: usize,
    ) -> Vec<PeerId> {
        eligible.sort_by_key(|p| std::cmp::Reverse(host_key(p, size)));
        let mut hosts: Vec<PeerId> = eligible
            .iter()
            .filter(|p| routes(p, model))
            .map(|p| p.id())
            .collect();
        for p in eligible
            .iter()
            .filter(|p| !routes(p, model) && self.viable(p, model))
        {
            if hosts.len() >= target {
                break;
            }
            hosts.push(p.id());
        }
        if hosts.is_empty() {
            hosts.extend(
                eligible
                    .iter()
                    .find(|p| !self.benched(p, model))
                    .map(|p| p.id()),
            );
        }
        hosts
    }

    fn resident_solo(&self, model: &str, size: u64, cohort: &[&KnownPeer]) -> Option<Plan> {
        let eligible: Vec<&KnownPeer> = cohort
            .iter()
            .copied()
            .filter(|p| has_file(p, model))
            .filter(|p| can_hold_solo(p.announcement.fast_memory_bytes, Some(size)))
            .collect();
        if eligible.is_empty() {
            return None;
        }
        let hot = self.inputs.demand.get(model).is_some_and(Demand::is_hot);
        let mut hosts = self
            .pick_solo_hosts(model, size, eligible, if hot { 2 } else { 1 })
            .into_iter();
        // Every resident candidate may be benched (only this node can be): then the model waits.
        let host = hosts.next()?;
        Some(Plan::Solo {
            host,
            replicas: hosts.collect(),
            spill: false,
        })
    }

    fn spill_solo(
        &self,
        model: &str,
        size: u64,
        cohort: &[&KnownPeer],
        busy: &BTreeSet<PeerId>,
    ) -> Option<Plan> {
        let eligible: Vec<&KnownPeer> = cohort
            .iter()
            .copied()
            .filter(|p| !busy.contains(&p.id()) && has_file(p, model))
            .filter(|p| can_spill_solo(&p.announcement, size))
            .collect();
        // A spill host is a capacity-class last resort: never duplicated for load.
        let host = *self.pick_solo_hosts(model, size, eligible, 1).first()?;
        Some(Plan::Solo {
            host,
            replicas: Vec::new(),
            spill: true,
        })
    }

    /// A split some host already runs (its announcement lists the pipeline), kept while every
    /// worker is live and free and the group still holds 1.1 × size: re-planning on every RTT
    /// wobble tore down a healthy pipeline for minutes of reload (the May 17 2026 churn loop).
    fn sticky_split(&self, model: &str, size: u64, busy: &BTreeSet<PeerId>) -> Option<Plan> {
        let min = min_vram_for_solo(size)?;
        let mut best: Option<(&KnownPeer, Plan)> = None;
        for host in &self.view.peers {
            let a = &host.announcement;
            if !a.is_host() || busy.contains(&host.id()) || !has_file(host, model) {
                continue;
            }
            let Some(running) = a.pipelines.iter().find(|r| r.model == model) else {
                continue;
            };
            let mut seen = BTreeSet::new();
            let mut total = a.fast_memory_bytes;
            let intact = !running.workers.is_empty()
                && running.workers.iter().all(|w| {
                    let Some(worker) = self.view.get(w) else {
                        return false;
                    };
                    total = total.saturating_add(worker.announcement.fast_memory_bytes);
                    *w != host.id()
                        && seen.insert(*w)
                        && !busy.contains(w)
                        && !matches!(worker.announcement.role, Role::Client)
                });
            if !intact || total < min {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|(b, _)| host_key(host, size) > host_key(b, size))
            {
                let plan = Plan::Split {
                    host: host.id(),
                    workers: running.workers.clone(),
                    total_group_memory: total,
                };
                best = Some((host, plan));
            }
        }
        best.map(|(_, plan)| plan)
    }

    fn fresh_split(
        &self,
        model: &str,
        size: u64,
        cohort: &[&KnownPeer],
        busy: &BTreeSet<PeerId>,
    ) -> Option<Plan> {
        let min = min_vram_for_solo(size)?;
        let mut hosts: Vec<&KnownPeer> = cohort
            .iter()
            .copied()
            .filter(|p| !busy.contains(&p.id()) && has_file(p, model))
            .filter(|p| p.announcement.fast_memory_bytes > 0)
            .collect();
        hosts.sort_by_key(|p| std::cmp::Reverse(host_key(p, size)));
        let viable: Vec<&KnownPeer> = hosts
            .iter()
            .copied()
            .filter(|p| self.viable(p, model))
            .collect();
        let tried = if viable.is_empty() {
            hosts.retain(|p| !self.benched(p, model));
            hosts
        } else {
            viable
        };
        tried.into_iter().find_map(|host| {
            let (workers, total) = self.greedy_group(host, cohort, busy, min);
            let share = host_share(size, host.announcement.fast_memory_bytes, total);
            (total >= min && !workers.is_empty() && ram_filter_ok(&host.announcement, share))
                .then_some(Plan::Split {
                    host: host.id(),
                    workers,
                    total_group_memory: total,
                })
        })
    }

    /// Workers for `host`: cohort peers whose rpc-server isn't known to be down, within
    /// [`MAX_SPLIT_RTT_MS`] of the host, nearest first, until the group holds `min`.
    fn greedy_group(
        &self,
        host: &KnownPeer,
        cohort: &[&KnownPeer],
        busy: &BTreeSet<PeerId>,
        min: u64,
    ) -> (Vec<PeerId>, u64) {
        let mut candidates: Vec<(u32, PeerId, u64)> = cohort
            .iter()
            .filter(|p| p.id() != host.id() && !busy.contains(&p.id()))
            .filter(|p| p.announcement.rpc_ready != Some(false))
            .filter(|p| p.announcement.fast_memory_bytes > 0)
            .filter_map(|p| {
                let rtt = self.rtt_between(host, p)?;
                (rtt <= MAX_SPLIT_RTT_MS).then_some((rtt, p.id(), p.announcement.fast_memory_bytes))
            })
            .collect();
        candidates.sort();
        let mut total = host.announcement.fast_memory_bytes;
        let mut workers = Vec::new();
        for (_, id, fast) in candidates {
            if total >= min {
                break;
            }
            total = total.saturating_add(fast);
            workers.push(id);
        }
        (workers, total)
    }

    /// The host's round-trip time to a worker: measured by this node when it is the host, else
    /// the host's gossiped hint, else this node's own RTT as the estimate. `None`: not dialable.
    fn rtt_between(&self, host: &KnownPeer, worker: &KnownPeer) -> Option<u32> {
        if host.id() == self.view.me {
            return worker.rtt_ms;
        }
        if let Some(hint) = host
            .announcement
            .rtt_hints
            .iter()
            .find(|h| h.peer == worker.id())
        {
            return Some(hint.rtt_ms);
        }
        if worker.id() == self.view.me {
            host.rtt_ms
        } else {
            worker.rtt_ms
        }
    }
}

/// The host's part of the weights when layers are placed in proportion to fast memory.
fn host_share(size: u64, host_fast: u64, group_fast: u64) -> u64 {
    if group_fast == 0 {
        return size;
    }
    let share = u128::from(size) * u128::from(host_fast) / u128::from(group_fast);
    u64::try_from(share).unwrap_or(u64::MAX)
}

impl Plan {
    /// Every peer this plan puts to work: hosts, replicas and workers.
    fn members(&self) -> Vec<PeerId> {
        match self {
            Plan::Solo { host, replicas, .. } => std::iter::once(*host)
                .chain(replicas.iter().copied())
                .collect(),
            Plan::Split { host, workers, .. } => std::iter::once(*host)
                .chain(workers.iter().copied())
                .collect(),
            Plan::WaitingForCapacity { .. } => Vec::new(),
        }
    }
}
