//! The end of a run as the report and the nodes' `/api/status` payloads show it.

use super::{Life, World};
use crate::check::{ChecksReport, Liveness};
use crate::report::{
    self, Figures, HostReport, ModelReport, PeerReport, Report, RequestCounts, SlaReport,
    VerificationReport,
};
use crate::scenario::Behaviour;
use mesh_core::election::{self, Plan};
use mesh_core::sla;
use mesh_core::status::{self, LocalFacts, StatusPayload};
use mesh_core::{MeshView, PeerId};
use std::collections::BTreeMap;

impl World<'_> {
    /// The view the report is made on: the first entry's (its gossip view), or with no entry the
    /// direct clients' view of every live peer.
    fn observer_view(&self) -> MeshView {
        match self.observer {
            Some(e) => self.entries[&Some(e)]
                .view
                .clone()
                .unwrap_or_else(|| MeshView::new(self.nodes[e].id, Vec::new())),
            None => self.direct_view(),
        }
    }

    pub(super) fn report(&mut self) -> Report {
        let now = self.end;
        for r in self.requests.values().filter(|r| r.audit.is_none()) {
            *self.counts[r.model]
                .failed
                .entry("in_flight_at_end".into())
                .or_default() += 1;
        }
        let observer_view = self.observer_view();
        let plans = election::plan_models(&observer_view, &self.demand);
        let measurements = self
            .entries
            .get(&self.observer)
            .map(|e| e.samples.measurements(now))
            .unwrap_or_default();
        let name_of = |id: &PeerId| self.name_of(id);
        let mut models = Vec::new();
        for (m, info) in self.models.iter().enumerate() {
            let plan = plans.get(&info.name);
            let waiting = self
                .nodes
                .iter()
                .filter(|p| p.life == Life::Up && p.spec.serve.contains(&info.name))
                .map(|p| p.spec.name.clone());
            let (hosts, split_group, serving_mode) = report::plan_parts(plan, name_of, waiting);
            let mut by_host = Vec::new();
            for peer in &self.nodes {
                // Every peer that ever launched the model (a pipeline's host launches it).
                if !peer.placements.contains_key(&m) {
                    continue;
                }
                let served = peer.served.get(&m).copied().unwrap_or(0);
                let mut published = peer.samples.summary(&info.name, now);
                if peer.spec.behaviour == Behaviour::InflateTimings
                    && let Some(s) = published.as_mut()
                {
                    s.tps_p50 *= super::INFLATION;
                    s.ttft_ms_p50 /= super::INFLATION;
                }
                let through = published.map(Figures::from_summary);
                let native = peer
                    .collector
                    .published()
                    .into_iter()
                    .find(|b| b.model == info.name)
                    .map(|b| Figures {
                        ttft_ms_p50: report::round(b.native_ttft_ms_p50, 1),
                        tps_p50: report::round(b.native_tps_p50, 2),
                        samples: b.samples,
                    });
                let still_serving = peer.live_hosting(m).is_some();
                by_host.push(HostReport {
                    peer: peer.spec.name.clone(),
                    serving_mode: still_serving
                        .then(|| serving_mode.get(&peer.spec.name).copied())
                        .flatten(),
                    placement: peer.placements[&m],
                    through_mesh: through,
                    at_entry: measurements
                        .get(&(peer.id, info.name.clone()))
                        .map(|e| Figures::from_summary(e.summary)),
                    native,
                    mesh_efficiency: report::efficiency(through, native).0,
                    served,
                });
            }
            // The primary host: most samples in its window, then most served, then file order.
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
            let eval = sla::evaluate(&info.name, &observer_view, &measurements, now, &self.sla);
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
                requests: self.counts[m].clone(),
                served_by_peer: self
                    .nodes
                    .iter()
                    .filter_map(|p| p.served.get(&m).map(|n| (p.spec.name.clone(), *n)))
                    .collect(),
                by_host,
            });
        }
        let peers = self
            .nodes
            .iter()
            .enumerate()
            .map(|(p, peer)| {
                let status = status::classify_peer(&observer_view, &peer.id);
                PeerReport {
                    name: peer.spec.name.clone(),
                    id: peer.id.short(),
                    role: peer.spec.role,
                    backend: peer.spec.backend,
                    behaviour: peer.spec.behaviour,
                    state: peer.life.as_str().to_string(),
                    reachable: self.observer.is_none_or(|o| self.net.reachable(o, p)),
                    node_state: status.as_ref().map(|s| s.state),
                    serving_mode: status.as_ref().and_then(|s| s.serving_mode),
                    split_role: status.as_ref().and_then(|s| s.split_role),
                    split_group: status.and_then(|s| s.split_group),
                    hosted_models: peer
                        .hostings
                        .iter()
                        .filter(|h| h.ready && !h.draining)
                        .map(|h| self.models[h.model].name.clone())
                        .collect(),
                    requests_served: peer.served.values().sum(),
                }
            })
            .collect();
        let mut requests = RequestCounts::default();
        for c in &self.counts {
            requests.add(c);
        }
        let (mesh, total) = self.entries.values().fold((0, 0), |(m, t), e| {
            let w = e.share.last_24h(now);
            (m + w.mesh, t + w.total)
        });
        let mesh_share_pct =
            (total > 0).then(|| report::round(100.0 * mesh as f64 / total as f64, 1));
        Report {
            scenario: self.sc.name.clone(),
            seed: self.seed,
            duration_s: self.sc.duration_s,
            engine: "des".to_string(),
            models,
            peers,
            requests,
            mesh_share_pct,
            gossip: self.gossip_report(),
            verification: self.verification_report(),
            checks: ChecksReport {
                violations: BTreeMap::new(),
                first: Vec::new(),
                liveness: Liveness::Skipped,
            },
        }
    }

    fn verification_report(&self) -> Vec<VerificationReport> {
        self.verdicts
            .iter()
            .map(|(&(p, m), log)| {
                let node = &self.nodes[p];
                let model = &self.models[m].name;
                // The latest row any entry shows for the pair (entries in file order).
                let shown = self
                    .entries
                    .values()
                    .filter_map(|ep| ep.auditor.as_ref())
                    .filter_map(|a| a.verify_by_model(&node.id).remove(model))
                    .max_by_key(|e| e.checked_at_unix_secs);
                let decided = log.matches + log.mismatches + log.inconclusive > 0;
                VerificationReport {
                    peer: node.spec.name.clone(),
                    model: model.clone(),
                    behaviour: node.spec.behaviour,
                    verdict: shown.as_ref().filter(|_| decided).map(|e| e.verdict),
                    agreement: shown
                        .as_ref()
                        .map_or(1.0, |e| report::round(e.agreement, 3)),
                    compared_tokens: shown.as_ref().map_or(0, |e| e.compared_tokens),
                    matches: log.matches,
                    mismatches: log.mismatches,
                    inconclusive: log.inconclusive,
                    audits: log.audits,
                    first_mismatch_at_s: log
                        .first_mismatch
                        .map(|t| report::round(super::since_start(t).as_secs_f64(), 1)),
                    demoted: log.demoted,
                }
            })
            .collect()
    }

    /// The final `/api/status` of every live entry, and (`all`) of every live node.
    pub(super) fn statuses(&self, all: bool) -> BTreeMap<String, StatusPayload> {
        let now = self.end;
        let mut out = BTreeMap::new();
        for (p, node) in self.nodes.iter().enumerate() {
            let entry = self.entries.get(&Some(p));
            if !node.up() || node.gossip.is_none() || !(all || entry.is_some()) {
                continue;
            }
            let view = match entry.and_then(|e| e.view.clone()) {
                Some(v) => v,
                None => self.build_view(p),
            };
            let mut timings = node.samples.timings(now);
            if node.spec.behaviour == Behaviour::InflateTimings {
                for t in &mut timings {
                    t.tps_p50 *= super::INFLATION;
                    t.ttft_ms_p50 /= super::INFLATION;
                }
            }
            let verify = entry
                .and_then(|e| e.auditor.as_ref())
                .map(|a| {
                    view.peers
                        .iter()
                        .map(|k| (k.id(), a.verify_by_model(&k.id())))
                        .filter(|(_, v)| !v.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            let local = LocalFacts {
                timings,
                native_baselines: node.collector.published(),
                verify,
                inflight_requests: node.inflight,
                first_served_unix_secs: entry.map(|e| e.first_served.clone()).unwrap_or_default(),
            };
            if let Ok(s) = status::status_payload(&view, &local) {
                out.insert(node.spec.name.clone(), s);
            }
        }
        out
    }
}
