//! Election (SPEC §3): who serves which model, solo or split, and which peer hosts a split.
//!
//! Two layers:
//!
//! - [`plan_models`]: a pure function of a [`MeshView`] giving every model's [`Plan`] (solo,
//!   split or waiting) as this node sees the mesh. [`select_serving_models`] is the per-peer
//!   rule it starts from.
//! - [`Election`]: the sans-IO machine a node runs. It adds what needs memory of time (the
//!   host-claim grace, launch backoff) and turns the plans into this node's [`NodeElection`]:
//!   what to advertise and, per model, a [`Duty`] the shell carries out without deciding
//!   anything itself.
//!
//! Every node runs the same rules on its own view. Views differ only in what each node has
//! measured (RTTs) and heard; where that makes nodes disagree on a host, the host-claim grace
//! settles it, and a running split is kept by everyone because its host announces it.
//!
//! There is no force-split input: `CLOSEDMESH_FORCE_SPLIT_ROUTING` changes routing order only
//! and never turns a model that fits into a split.

mod backoff;
mod demand;
mod plan;
mod select;

pub use backoff::LaunchBackoff;
pub use demand::{CLIENT_WINDOW, DemandMeter, REQUEST_WINDOW, demand_from_view};
pub use select::select_serving_models;

use crate::id::PeerId;
use crate::peer::{Backend, GIB, ModelName, PeerAnnouncement};
use crate::time::Timestamp;
use crate::view::{KnownPeer, MeshView};
use plan::{PlanInputs, Planned};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A split worker further than this from its host is not used (a pipeline pays the link RTT
/// per stage on every token: 60.2 tok/s at 0 ms fell to 9.4 at 30 ms upstream).
pub const MAX_SPLIT_RTT_MS: u32 = 500;
/// An elected host that hasn't claimed the role this long after winning loses candidacy until
/// it does, so a stuck peer can't hold a cohort hostage (the role flips within ~12 s of launch
/// on the slowest machines measured).
pub const HOST_CLAIM_GRACE: Duration = Duration::from_secs(30);
/// A spill plan keeps at least this fraction of the weights in fast memory (see
/// [`can_spill_solo`]).
pub const SPILL_MIN_RESIDENT: f64 = 0.75;
/// RAM a host keeps for the OS, activations, KV cache and RPC staging before any weights.
pub const RAM_RESERVE_BYTES: u64 = 3 * GIB;
/// Of a peer's RAM, the fraction a launch may plan to commit; the rest belongs to its owner.
pub const RAM_BUDGET_FRACTION: f64 = 0.75;

/// `1.1 × model_bytes`, rounded up: the fast memory a peer needs to serve a model solo. `None`
/// for a model of unknown (zero) size, which never fits anywhere: a peer with a half-downloaded
/// file once reported 0 bytes and won the election for a 19.76 GB model.
pub fn min_vram_for_solo(model_bytes: u64) -> Option<u64> {
    (model_bytes > 0).then(|| model_bytes.saturating_add(model_bytes.div_ceil(10)))
}

/// Whether `fast_memory_bytes` holds a model of `model_bytes` (`None`: unknown) solo.
pub fn can_hold_solo(fast_memory_bytes: u64, model_bytes: Option<u64>) -> bool {
    model_bytes
        .and_then(min_vram_for_solo)
        .is_some_and(|min| fast_memory_bytes >= min)
}

/// How much demand a model sees, as the node measures it (clients and requests it routed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    pub clients: u32,
    pub requests_per_min: f64,
}

impl Demand {
    /// Enough load to start a second solo host: ≥ 2 clients or ≥ 10 requests a minute.
    pub fn is_hot(&self) -> bool {
        self.clients >= 2 || self.requests_per_min >= 10.0
    }
}

/// How one model is served, mesh-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "plan", rename_all = "snake_case")]
pub enum Plan {
    /// `host` runs `llama-server` alone; `replicas` are extra solo hosts (already running, or
    /// started under demand). `spill`: the host pages part of the weights from RAM.
    Solo {
        host: PeerId,
        replicas: Vec<PeerId>,
        spill: bool,
    },
    /// `host` runs `llama-server --rpc` over the workers' `rpc-server`s, nearest first.
    /// `total_group_memory`: fast memory of host and workers together.
    Split {
        host: PeerId,
        workers: Vec<PeerId>,
        total_group_memory: u64,
    },
    /// No peer or group can hold it. `pooled`: fast memory of the free cohort; `needed`:
    /// `1.1 × size`, `None` when no peer knows the size.
    WaitingForCapacity { pooled: u64, needed: Option<u64> },
}

impl Plan {
    /// The elected (first) host, if any.
    pub fn host(&self) -> Option<PeerId> {
        match self {
            Plan::Solo { host, .. } | Plan::Split { host, .. } => Some(*host),
            Plan::WaitingForCapacity { .. } => None,
        }
    }
}

/// What this node must do about one model.
///
/// Acting on `Solo` or `SplitHost` starts with claiming the role: announce `Role::Host` with
/// the model in `serving_models` before loading (and, for a split, while waiting for workers).
/// Other nodes pass over an elected host that hasn't claimed within [`HOST_CLAIM_GRACE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "duty", rename_all = "snake_case")]
pub enum Duty {
    /// Run `llama-server` alone (`spill`: with mmap, weights partly paged from RAM).
    Solo { spill: bool },
    /// Run `llama-server --rpc` over these workers, once `workers_ready` (every worker
    /// announces `rpc_ready: Some(true)`).
    SplitHost {
        workers: Vec<PeerId>,
        total_group_memory: u64,
        workers_ready: bool,
    },
    /// Serve layers from `rpc-server` to `host`.
    SplitWorker { host: PeerId },
    /// Others serve it; stay ready to take over. Nothing runs for it here.
    Standby { hosts: Vec<PeerId> },
    /// Not enough capacity in the mesh; keep it requested but don't advertise it.
    Waiting { pooled: u64, needed: Option<u64> },
}

/// One node's election outcome: everything its shell needs to act and to announce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeElection {
    /// What to announce in `serving_models`: every model with a duty except those waiting,
    /// most demanded first.
    pub serving_models: Vec<ModelName>,
    /// Per model this node takes part in.
    pub duties: BTreeMap<ModelName, Duty>,
    /// Keep an `rpc-server` up: this node works for a split or may soon (it is waiting for a
    /// split to form, and a host only picks workers whose rpc-server is not down).
    pub run_rpc_server: bool,
    /// Every model's plan, as this node sees the mesh.
    pub plans: BTreeMap<ModelName, Plan>,
}

/// The plan of every model in the mesh as `view.me` sees it, ignoring time: no host-claim grace,
/// no backoff (see [`Election`] for those).
pub fn plan_models(
    view: &MeshView,
    demand: &BTreeMap<ModelName, Demand>,
) -> BTreeMap<ModelName, Plan> {
    let inputs = PlanInputs {
        demand,
        passed_over: &BTreeMap::new(),
        benched: &BTreeSet::new(),
    };
    plan::plan(view, &inputs).plans
}

/// The election machine of one node.
#[derive(Debug, Clone, Default)]
pub struct Election {
    backoff: BTreeMap<ModelName, LaunchBackoff>,
    /// When each unclaimed elected host (per model) was first elected.
    pending_claims: BTreeMap<ModelName, BTreeMap<PeerId, Timestamp>>,
    /// Elected hosts that let the grace run out; re-admitted when they claim or leave.
    passed_over: BTreeMap<ModelName, BTreeSet<PeerId>>,
    last_now: Timestamp,
}

impl Election {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs the election on `view` at `now`. Call it on every view change and at
    /// [`poll_timeout`](Self::poll_timeout).
    pub fn decide(
        &mut self,
        view: &MeshView,
        demand: &BTreeMap<ModelName, Demand>,
        now: Timestamp,
    ) -> NodeElection {
        self.last_now = now;
        let benched: BTreeSet<ModelName> = self
            .backoff
            .iter()
            .filter(|(_, b)| b.is_out(now))
            .map(|(m, _)| m.clone())
            .collect();
        for (model, peers) in &mut self.passed_over {
            peers.retain(|id| view.get(id).is_some_and(|p| !has_claimed(p, model)));
        }
        self.passed_over.retain(|_, peers| !peers.is_empty());

        // Each round passes over at least one more peer, so this ends within |peers| + 1 rounds.
        let planned = loop {
            let planned = plan::plan(
                view,
                &PlanInputs {
                    demand,
                    passed_over: &self.passed_over,
                    benched: &benched,
                },
            );
            if !self.expire_unclaimed(view, &planned.plans, now) {
                break planned;
            }
        };
        node_election(view, planned, demand)
    }

    /// Tracks elected hosts that haven't claimed yet; passes over those whose grace ran out.
    /// Returns whether any was passed over (the plans must then be redone).
    fn expire_unclaimed(
        &mut self,
        view: &MeshView,
        plans: &BTreeMap<ModelName, Plan>,
        now: Timestamp,
    ) -> bool {
        let mut pending: BTreeMap<ModelName, BTreeMap<PeerId, Timestamp>> = BTreeMap::new();
        let mut expired = false;
        for (model, plan) in plans {
            let elected: Vec<PeerId> = match plan {
                Plan::Solo { host, replicas, .. } => std::iter::once(*host)
                    .chain(replicas.iter().copied())
                    .collect(),
                Plan::Split { host, .. } => vec![*host],
                Plan::WaitingForCapacity { .. } => Vec::new(),
            };
            for id in elected {
                if view.get(&id).is_none_or(|p| has_claimed(p, model)) {
                    continue;
                }
                let since = self
                    .pending_claims
                    .get(model)
                    .and_then(|m| m.get(&id))
                    .copied()
                    .unwrap_or(now);
                if now.saturating_since(since) >= HOST_CLAIM_GRACE {
                    self.passed_over
                        .entry(model.clone())
                        .or_default()
                        .insert(id);
                    expired = true;
                } else {
                    pending.entry(model.clone()).or_default().insert(id, since);
                }
            }
        }
        self.pending_claims = pending;
        expired
    }

    /// A launch of `model` on this node failed. Returns the end of the backoff if this failure
    /// started one; until then this node is no host candidate for the model.
    pub fn record_launch_failure(&mut self, model: &str, now: Timestamp) -> Option<Timestamp> {
        self.backoff
            .entry(model.to_string())
            .or_default()
            .record_failure(now)
    }

    /// A launch of `model` on this node came up healthy.
    pub fn record_launch_success(&mut self, model: &str) {
        self.backoff.remove(model);
    }

    /// The next instant the election may change with no new input: a host-claim grace or a
    /// backoff running out.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let graces = self
            .pending_claims
            .values()
            .flat_map(|m| m.values())
            .map(|&since| since + HOST_CLAIM_GRACE);
        let backoffs = self
            .backoff
            .values()
            .filter_map(|b| b.out_until(self.last_now));
        graces.chain(backoffs).min()
    }
}

/// Whether `p` has taken the host role for `model`: dialable, `Role::Host`, and routing it,
/// running a pipeline for it, or (its first model, still loading) advertising it.
fn has_claimed(p: &KnownPeer, model: &str) -> bool {
    let a = &p.announcement;
    p.rtt_ms.is_some()
        && a.is_host()
        && (a.hosts(model)
            || a.pipelines.iter().any(|r| r.model == model)
            || (a.hosted_models.is_empty() && a.serving_models.iter().any(|m| m == model)))
}

fn node_election(
    view: &MeshView,
    planned: Planned,
    demand: &BTreeMap<ModelName, Demand>,
) -> NodeElection {
    let me = view.me;
    let mut duties = BTreeMap::new();
    for (model, plan) in &planned.plans {
        let in_cohort = planned.cohorts.get(model).is_some_and(|c| c.contains(&me));
        let duty = match plan {
            Plan::Solo {
                host,
                replicas,
                spill,
            } => {
                if *host == me || replicas.contains(&me) {
                    Some(Duty::Solo { spill: *spill })
                } else {
                    in_cohort.then(|| Duty::Standby {
                        hosts: std::iter::once(*host)
                            .chain(replicas.iter().copied())
                            .collect(),
                    })
                }
            }
            Plan::Split {
                host,
                workers,
                total_group_memory,
            } => {
                if *host == me {
                    Some(Duty::SplitHost {
                        workers: workers.clone(),
                        total_group_memory: *total_group_memory,
                        workers_ready: workers.iter().all(|w| {
                            view.get(w)
                                .is_some_and(|p| p.announcement.rpc_ready == Some(true))
                        }),
                    })
                } else if workers.contains(&me) {
                    Some(Duty::SplitWorker { host: *host })
                } else {
                    in_cohort.then(|| Duty::Standby { hosts: vec![*host] })
                }
            }
            Plan::WaitingForCapacity { pooled, needed } => in_cohort.then_some(Duty::Waiting {
                pooled: *pooled,
                needed: *needed,
            }),
        };
        if let Some(duty) = duty {
            duties.insert(model.clone(), duty);
        }
    }
    let mut serving_models: Vec<ModelName> = duties
        .iter()
        .filter(|(_, d)| !matches!(d, Duty::Waiting { .. }))
        .map(|(m, _)| m.clone())
        .collect();
    serving_models.sort_by(|a, b| demand_order(demand, b, a).then_with(|| a.cmp(b)));
    let run_rpc_server = duties.values().any(|d| {
        matches!(
            d,
            Duty::SplitWorker { .. }
                | Duty::Waiting {
                    needed: Some(_),
                    ..
                }
        )
    });
    NodeElection {
        serving_models,
        duties,
        run_rpc_server,
        plans: planned.plans,
    }
}

/// Orders two models by demand: requests per minute, then clients.
pub(crate) fn demand_order(demand: &BTreeMap<ModelName, Demand>, a: &str, b: &str) -> Ordering {
    let d = |m: &str| demand.get(m).copied().unwrap_or_default();
    let (da, db) = (d(a), d(b));
    da.requests_per_min
        .total_cmp(&db.requests_per_min)
        .then_with(|| da.clients.cmp(&db.clients))
}

/// RAM filter for a host: `3 GiB + share / 2 ≤ 0.75 × RAM`, where `share` is the weights it
/// holds itself (with mmap, llama-server commits about half its local share plus a constant
/// early on; hosts over 75 % of RAM were the ones that crashed in May 2026). A peer that does not
/// report its RAM (0) passes: one straggler must not exclude a whole cohort.
pub(crate) fn ram_filter_ok(peer: &PeerAnnouncement, share: u64) -> bool {
    let ram = peer.system_ram_bytes;
    ram == 0 || RAM_RESERVE_BYTES.saturating_add(share / 2) <= ram_fraction(ram)
}

fn ram_fraction(ram: u64) -> u64 {
    (ram as f64 * RAM_BUDGET_FRACTION) as u64
}

/// **mmap-spill solo**, a capacity-class option: a peer whose fast memory is below 1.1 × size
/// serves the model alone, llama.cpp paging the layers that don't fit from RAM. Allowed when
///
/// - its GPU has its own memory (cuda, rocm, vulkan: on unified memory the fast budget already
///   is the RAM, and spilling past it pages from disk),
/// - fast memory holds at least [`SPILL_MIN_RESIDENT`] of the weights,
/// - fast memory plus the RAM budget (`0.75 × RAM − 3 GiB`) hold 1.1 × size, and
/// - the RAM filter passes with the whole model as its share.
///
/// When it qualifies it is preferred over any split: a split pays a link RTT per stage on every
/// token, while a ≥ 75 %-resident spill pages at most a quarter of the weights. Measured: this
/// served Qwen3-32B-Q4_K_M (19.76 GB, 87 % resident) on the 17.2 GB CUDA peer of a
/// 14.5/17.2/8.6 GB cohort at 3.98 tok/s, against 0.131 tok/s for the same model as a pooled
/// split (Phase 2). Below 75 % it is the May 13 2026 incident (a 16 GB GPU solo-loading a
/// 42.5 GB model: 0.2 tok/s, every chat stuck) and is never planned.
pub fn can_spill_solo(peer: &PeerAnnouncement, model_bytes: u64) -> bool {
    let fast = peer.fast_memory_bytes;
    let Some(min) = min_vram_for_solo(model_bytes) else {
        return false;
    };
    let discrete = matches!(
        peer.backend,
        Backend::Cuda | Backend::Rocm | Backend::Vulkan
    );
    let ram_budget = ram_fraction(peer.system_ram_bytes).saturating_sub(RAM_RESERVE_BYTES);
    discrete
        && fast < min
        && fast as f64 >= SPILL_MIN_RESIDENT * model_bytes as f64
        && fast.saturating_add(ram_budget) >= min
        && peer.system_ram_bytes > 0
        && ram_filter_ok(peer, model_bytes)
}

/// Whether a node that is joining has heard enough of the mesh to act on its election: it has
/// heard from the mesh, with an RTT to each member that could serve (an election that scored
/// others as unmeasured would elect this node over better hosts), and its own rpc-server, if it
/// runs one, is up (`local_rpc_ready`) and announced (a split host only picks ready workers, so
/// deciding before would make this node the host).
pub fn heard_enough_to_elect(view: &MeshView, local_rpc_ready: Option<bool>) -> bool {
    let others = || view.peers.iter().filter(|p| p.id() != view.me);
    let own_rpc_announced = view
        .get(&view.me)
        .is_some_and(|me| me.announcement.rpc_ready != Some(false));
    others().next().is_some()
        && others().all(|p| p.rtt_ms.is_some() || p.announcement.role == crate::peer::Role::Client)
        && local_rpc_ready != Some(false)
        && own_rpc_announced
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::Role;

    #[test]
    fn solo_needs_one_point_one_times_the_model() {
        assert_eq!(min_vram_for_solo(10_000_000_000), Some(11_000_000_000));
        assert_eq!(min_vram_for_solo(1), Some(2));
        assert!(can_hold_solo(5_500_000_000, Some(5_000_000_000)));
        assert!(!can_hold_solo(5_499_999_999, Some(5_000_000_000)));
    }

    #[test]
    fn a_model_of_unknown_or_zero_size_never_fits() {
        assert_eq!(min_vram_for_solo(0), None);
        assert!(!can_hold_solo(u64::MAX, Some(0)));
        assert!(!can_hold_solo(u64::MAX, None));
    }

    #[test]
    fn demand_is_hot_from_two_clients_or_ten_requests_a_minute() {
        let d = |clients, requests_per_min| Demand {
            clients,
            requests_per_min,
        };
        assert!(!d(1, 9.9).is_hot());
        assert!(d(2, 0.0).is_hot());
        assert!(d(0, 10.0).is_hot());
    }

    #[test]
    fn a_joining_node_elects_once_it_has_rtts_to_its_members_and_its_rpc_server_is_announced() {
        let known = |id: u8, role: Role, rtt: Option<u32>, rpc: Option<bool>| {
            let mut a = PeerAnnouncement::new(PeerId([id; 32]), "m", role);
            a.rpc_ready = rpc;
            KnownPeer {
                announcement: a,
                rtt_ms: rtt,
                first_seen: Timestamp::ZERO,
                last_fresh: Timestamp::ZERO,
            }
        };
        let me = PeerId([1; 32]);
        let view = |peers| MeshView::new(me, peers);
        let alone = view(vec![known(1, Role::Worker, Some(0), Some(true))]);
        assert!(
            !heard_enough_to_elect(&alone, Some(true)),
            "nobody heard yet"
        );
        let member = known(2, Role::Worker, Some(20), None);
        let entry_unmeasured = known(3, Role::Client, None, None);
        let ready = view(vec![
            known(1, Role::Worker, Some(0), Some(true)),
            member.clone(),
            entry_unmeasured.clone(),
        ]);
        assert!(
            heard_enough_to_elect(&ready, Some(true)),
            "clients need no RTT"
        );
        assert!(
            !heard_enough_to_elect(&ready, Some(false)),
            "own rpc-server not up"
        );
        let unannounced = view(vec![
            known(1, Role::Worker, Some(0), Some(false)),
            member.clone(),
        ]);
        assert!(
            !heard_enough_to_elect(&unannounced, Some(true)),
            "not announced yet"
        );
        let unmeasured = view(vec![
            known(1, Role::Worker, Some(0), None),
            known(2, Role::Worker, None, None),
        ]);
        assert!(
            !heard_enough_to_elect(&unmeasured, None),
            "a member without an RTT"
        );
    }

    fn cuda(fast_gb: f64, ram_gb: f64) -> PeerAnnouncement {
        let mut a = PeerAnnouncement::new(PeerId([1; 32]), "m", Role::Worker);
        a.backend = Backend::Cuda;
        a.fast_memory_bytes = (fast_gb * 1e9) as u64;
        a.system_ram_bytes = (ram_gb * 1e9) as u64;
        a
    }

    #[test]
    fn qwen3_32b_spills_on_the_17_2_gb_cuda_peer() {
        assert!(can_spill_solo(&cuda(17.2, 32.0), 19_760_000_000));
    }

    #[test]
    fn a_16_gb_gpu_never_spills_a_42_5_gb_model_whatever_its_ram() {
        // May 13 2026: 16 GB of GPU, 120 GB of RAM, 0.2 tok/s.
        assert!(!can_spill_solo(&cuda(16.0, 120.0), 42_500_000_000));
    }

    #[test]
    fn spill_needs_a_discrete_gpu_ram_to_cover_the_rest_and_the_ram_filter() {
        let mut mac = cuda(17.2, 32.0);
        mac.backend = Backend::Metal;
        assert!(!can_spill_solo(&mac, 19_760_000_000));
        // 17.2 + (0.75 × 8 − 3.22) = 19.98 GB < 21.7 GB needed.
        assert!(!can_spill_solo(&cuda(17.2, 8.0), 19_760_000_000));
        // Covered, but 3 GiB + 9.9 GB > 0.75 × 16 GB.
        assert!(!can_spill_solo(&cuda(17.2, 16.0), 19_760_000_000));
        // Fits resident: that is a solo, not a spill.
        assert!(!can_spill_solo(&cuda(24.0, 64.0), 19_760_000_000));
        assert!(!can_spill_solo(&cuda(17.2, 0.0), 19_760_000_000));
    }

    #[test]
    fn ram_filter_is_3_gib_plus_half_the_share_within_75_percent_of_ram() {
        let share = 10 * GIB;
        let mut p = cuda(8.0, 0.0);
        // 3 GiB + 5 GiB = 8 GiB ≤ 0.75 × RAM ⇔ RAM ≥ 10.67 GiB.
        p.system_ram_bytes = 11 * GIB;
        assert!(ram_filter_ok(&p, share));
        p.system_ram_bytes = 10 * GIB;
        assert!(!ram_filter_ok(&p, share));
        p.system_ram_bytes = 0;
        assert!(ram_filter_ok(&p, share), "unknown RAM passes");
    }
}
