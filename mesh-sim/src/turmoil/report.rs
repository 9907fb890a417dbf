//! The end of a turmoil run as the engine-independent [`Report`] shows it: plans, hosts and
//! serving modes from the first entry's gossip view (the same rules the other engine applies to
//! its view), the SLA gate as that entry evaluates it now, what the hosts publish, and what the
//! callers saw (served-by counts from the response headers).

use super::node::EntrySnapshot;
use super::{Life, World, lock};
use crate::check::{ChecksReport, Liveness};
use crate::report::{
    self, Convergence, CrashRemoval, Figures, GossipReport, HostReport, ModelReport, PeerReport,
    Report, RequestCounts, SlaReport, VerificationReport,
};
use crate::scenario::PeerSpec;
use mesh_core::election::{self, Plan};
use mesh_core::status::{self, StatusPayload};
use mesh_core::{MeshView, PeerId};
use std::collections::BTreeMap;

impl World<'_> {
    /// The first entry (the report's observer), if it is up and has published.
    fn observer(&self) -> Option<usize> {
        let e = self.shared.sc.peers.iter().position(PeerSpec::is_entry)?;
        (self.life[e] == Life::Up).then_some(e)
    }

    fn observer_view(&self) -> MeshView {
        let sh = &self.shared;
        match self.observer() {
            Some(e) => lock(&sh.nodes[e].snapshot)
                .as_ref()
                .map_or_else(|| MeshView::new(sh.ids[e], Vec::new()), |s| s.view.clone()),
            // Without an entry: every live peer as it announces itself to its own view.
            None => {
                let peers = (0..self.life.len())
                    .filter(|&p| self.life[p] == Life::Up)
                    .filter_map(|p| {
                        let snap = lock(&sh.nodes[p].snapshot);
                        let s = snap.as_ref()?;
                        s.view.get(&sh.ids[p]).cloned()
                    })
                    .map(|mut k| {
                        k.rtt_ms = Some(0);
                        k
                    })
                    .collect();
                MeshView::new(PeerId([0xff; 32]), peers)
            }
        }
    }

    pub(super) fn report(&self) -> Report {
        let sh = &self.shared;
        let view = self.observer_view();
        let plans = election::plan_models(&view, &sh.demand);
        let entry_snap = self.observer().and_then(|e| {
            lock(&sh.nodes[e].snapshot)
                .as_ref()
                .and_then(|s| s.entry.clone())
        });
        let chats = lock(&sh.chats).clone();
        let name_of = |id: &PeerId| sh.name_of(id);
        let mut models = Vec::new();
        for (m, info) in sh.models.iter().enumerate() {
            let plan = plans.get(&info.name);
            let waiting = sh
                .sc
                .peers
                .iter()
                .enumerate()
                .filter(|(p, spec)| self.life[*p] == Life::Up && spec.serve.contains(&info.name))
                .map(|(_, spec)| spec.name.clone());
            let (hosts, split_group, serving_mode) = report::plan_parts(plan, name_of, waiting);
            let mut by_host = Vec::new();
            for (p, spec) in sh.sc.peers.iter().enumerate() {
                let Some(placement) = super::node::placement_of(sh, p, &info.name) else {
                    continue;
                };
                let snap = lock(&sh.nodes[p].snapshot);
                let up = self.life[p] == Life::Up;
                let live = snap.as_ref().filter(|_| up);
                let through =
                    live.and_then(|s| s.published.get(&info.name).copied())
                        .map(|mut s| {
                            if spec.behaviour == crate::scenario::Behaviour::InflateTimings {
                                s.tps_p50 *= super::node::TIMING_INFLATION;
                                s.ttft_ms_p50 /= super::node::TIMING_INFLATION;
                            }
                            Figures::from_summary(s)
                        });
                let native = live
                    .and_then(|s| s.native.iter().find(|b| b.model == info.name).cloned())
                    .map(|b| Figures {
                        ttft_ms_p50: report::round(b.native_ttft_ms_p50, 1),
                        tps_p50: report::round(b.native_tps_p50, 2),
                        samples: b.samples,
                    });
                let serving = live.is_some_and(|s| s.hosted.contains(&info.name));
                let served = chats.served.get(&(m, p)).copied().unwrap_or(0);
                by_host.push(HostReport {
                    peer: spec.name.clone(),
                    serving_mode: serving
                        .then(|| serving_mode.get(&spec.name).copied())
                        .flatten(),
                    placement,
                    through_mesh: through,
                    at_entry: entry_snap
                        .as_ref()
                        .and_then(|e| e.measurements.get(&(sh.ids[p], info.name.clone())))
                        .map(|e| Figures::from_summary(e.summary)),
                    native,
                    mesh_efficiency: report::efficiency(through, native).0,
                    served,
                });
            }
            let primary = by_host
                .iter()
                .enumerate()
                .max_by_key(|(i, h)| {
                    (
                        h.through_mesh.map_or(0, |f| f.samples),
                        h.served,
                        std::cmp::Reverse(*i),
                    )
                })
                .map(|(_, h)| h);
            let through = primary.and_then(|h| h.through_mesh);
            let native = primary.and_then(|h| h.native);
            let (mesh_efficiency, ttft_overhead_ms) = report::efficiency(through, native);
            let eval = match entry_snap.as_ref().and_then(|e| e.sla.get(&info.name)) {
                Some(e) => e.clone(),
                None => mesh_core::sla::evaluate(
                    &info.name,
                    &view,
                    &Default::default(),
                    mesh_core::Timestamp::from_micros(self.since_start().as_micros() as u64),
                    &sh.sla,
                ),
            };
            let mut requests = chats.counts[m].clone();
            let in_flight = chats.open.values().filter(|&&model| model == m).count() as u64;
            if in_flight > 0 {
                *requests
                    .failed
                    .entry("in_flight_at_end".into())
                    .or_default() += in_flight;
            }
            models.push(ModelReport {
                name: info.name.clone(),
                size_gb: report::round(info.size_bytes as f64 / 1e9, 2),
                plan: match plan {
                    Some(Plan::Solo { .. }) => "solo",
                    Some(Plan::Split { .. }) => "split",
                    Some(Plan::WaitingForCapacity { .. }) | None => "waiting",
                }
                .to_string(),
                hosts,
                split_group,
                serving_mode,
                through_mesh: through,
                native,
                mesh_efficiency,
                ttft_overhead_ms,
                sla: SlaReport {
                    tier: eval.tier,
                    status: eval.status.as_str().to_string(),
                    candidates: eval.candidates.len() as u32,
                    best_peer: eval.best_peer.as_ref().map(name_of),
                    best_ttft_ms: eval.best_ttft_ms.map(|v| report::round(v, 1)),
                    best_tps: eval.best_tps.map(|v| report::round(v, 2)),
                },
                requests,
                served_by_peer: chats
                    .served
                    .iter()
                    .filter(|((model, _), _)| *model == m)
                    .map(|((_, p), n)| (sh.spec(*p).name.clone(), *n))
                    .collect(),
                by_host,
            });
        }
        let observer = self.observer();
        let links = lock(&sh.links);
        let peers = sh
            .sc
            .peers
            .iter()
            .enumerate()
            .map(|(p, spec)| {
                let status = status::classify_peer(&view, &sh.ids[p]);
                let hosted = if self.life[p] == Life::Up {
                    lock(&sh.nodes[p].snapshot)
                        .as_ref()
                        .map(|s| s.hosted.clone())
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                PeerReport {
                    name: spec.name.clone(),
                    id: sh.ids[p].short(),
                    role: spec.role,
                    backend: spec.backend,
                    behaviour: spec.behaviour,
                    state: self.life[p].as_str().to_string(),
                    reachable: observer.is_none_or(|o| links.reachable(o, p)),
                    node_state: status.as_ref().map(|s| s.state),
                    serving_mode: status.as_ref().and_then(|s| s.serving_mode),
                    split_role: status.as_ref().and_then(|s| s.split_role),
                    split_group: status.and_then(|s| s.split_group),
                    hosted_models: hosted,
                    requests_served: chats
                        .served
                        .iter()
                        .filter(|((_, q), _)| *q == p)
                        .map(|(_, n)| n)
                        .sum(),
                }
            })
            .collect();
        drop(links);
        let mut requests = RequestCounts::default();
        for m in &models {
            requests.add(&m.requests);
        }
        let (mesh, fallback) = (requests.mesh, requests.fallback);
        let mesh_share_pct = (mesh + fallback > 0)
            .then(|| report::round(100.0 * mesh as f64 / (mesh + fallback) as f64, 1));
        Report {
            scenario: sh.sc.name.clone(),
            seed: sh.seed,
            duration_s: sh.sc.duration_s,
            engine: "turmoil".to_string(),
            models,
            peers,
            requests,
            mesh_share_pct,
            gossip: self.gossip_report(),
            verification: self.verification_report(entry_snap.as_ref()),
            checks: ChecksReport {
                violations: BTreeMap::new(),
                first: Vec::new(),
                liveness: Liveness::Skipped,
            },
        }
    }

    /// The observing entry's audits per (peer, model), in scenario order (as the other engine
    /// lists them): its tally and the `verify_by_model` row it shows.
    fn verification_report(&self, entry: Option<&EntrySnapshot>) -> Vec<VerificationReport> {
        let sh = &self.shared;
        let Some(entry) = entry else {
            return Vec::new();
        };
        let mut rows: Vec<((usize, usize), VerificationReport)> = entry
            .audits
            .iter()
            .filter_map(|((peer, model), tally)| {
                let p = *sh.index.get(peer)?;
                let (m, _) = sh.model(model)?;
                let spec = sh.spec(p);
                let shown = entry.verify.get(peer).and_then(|v| v.get(model));
                let decided = tally.matches + tally.mismatches + tally.inconclusive > 0;
                Some((
                    (p, m),
                    VerificationReport {
                        peer: spec.name.clone(),
                        model: model.clone(),
                        behaviour: spec.behaviour,
                        verdict: shown.filter(|_| decided).map(|e| e.verdict),
                        agreement: shown.map_or(1.0, |e| report::round(e.agreement, 3)),
                        compared_tokens: shown.map_or(0, |e| e.compared_tokens),
                        matches: tally.matches,
                        mismatches: tally.mismatches,
                        inconclusive: tally.inconclusive,
                        audits: tally.audits,
                        first_mismatch_at_s: tally
                            .first_mismatch
                            .map(|t| report::round(t.as_micros() as f64 / 1e6, 1)),
                        demoted: tally.demoted,
                    },
                ))
            })
            .collect();
        rows.sort_by_key(|(k, _)| *k);
        rows.into_iter().map(|(_, r)| r).collect()
    }

    fn gossip_report(&self) -> GossipReport {
        let sh = &self.shared;
        let [sent, _received, bad] = self.gossip_counts();
        let bytes = self.gossip_bytes();
        let live = self.life.iter().filter(|l| **l == Life::Up).count() as u32;
        let per_s = |b: u64, node_s: f64| {
            if node_s > 0.0 {
                report::round(b as f64 / node_s, 1)
            } else {
                0.0
            }
        };
        let (half_bytes, half_ns) = self.half.unwrap_or((bytes, self.node_seconds));
        GossipReport {
            peers: live,
            messages: sent,
            bytes,
            bytes_per_peer_per_s: per_s(bytes, self.node_seconds),
            steady_bytes_per_peer_per_s: per_s(
                bytes.saturating_sub(half_bytes),
                self.node_seconds - half_ns,
            ),
            convergence: Convergence::default(),
            load_convergence: Convergence::default(),
            crashed_hosts: self
                .crashes
                .iter()
                .map(|(p, at, after)| CrashRemoval {
                    peer: sh.spec(*p).name.clone(),
                    at_s: report::round(at.as_secs_f64(), 1),
                    out_of_targets_after_ms: after.map(|d| report::round(d.as_secs_f64() * 1e3, 0)),
                })
                .collect(),
            bad_signatures: bad,
            by_kind: BTreeMap::new(),
        }
    }

    /// The final `/api/status` of every live entry, and (`all`) of every live node.
    pub(super) fn statuses(&self, all: bool) -> BTreeMap<String, StatusPayload> {
        let sh = &self.shared;
        let mut out = BTreeMap::new();
        for (p, spec) in sh.sc.peers.iter().enumerate() {
            if self.life[p] != Life::Up || !(all || spec.is_entry()) {
                continue;
            }
            if let Some(s) = lock(&sh.nodes[p].snapshot).as_ref() {
                out.insert(spec.name.clone(), s.status.clone());
            }
        }
        out
    }
}
