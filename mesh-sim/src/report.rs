//! The run report (SPEC §10): plain data any engine fills, printed as an aligned text table or as
//! JSON with a stable key order (struct field order, ordered maps, rounded figures), so the same
//! scenario and seed give byte-identical output.

use crate::check::ChecksReport;
use crate::profile::PlacementKind;
use crate::scenario::{Behaviour, PeerRole};
use mesh_core::Backend;
use mesh_core::samples::Summary;
use mesh_core::sla::Tier;
use mesh_core::status::{
    MeshEfficiency, NodeState, ServingMode, SplitGroup, SplitRole, VerifyVerdict,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub duration_s: f64,
    pub engine: String,
    pub models: Vec<ModelReport>,
    pub peers: Vec<PeerReport>,
    /// Every chat of the run.
    pub requests: RequestCounts,
    /// Of the chats the entries served, the share the mesh served (rolling 24 h at the end).
    pub mesh_share_pct: Option<f64>,
    pub gossip: GossipReport,
    /// Every (peer, model) an entry audited, peer-file order.
    pub verification: Vec<VerificationReport>,
    /// The invariant checkers (filled after the liveness phase).
    pub checks: ChecksReport,
}

/// Gossip figures (SPEC §2 goals: 99 % of peers hold a changed announcement within 1 s, ≤ 2 KB/s
/// per peer in steady state, a crashed host out of every router's targets within 5 s).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GossipReport {
    /// Nodes running gossip at the end (entries included).
    pub peers: u32,
    pub messages: u64,
    /// Frame bytes sent, as `wire::encode` would write them.
    pub bytes: u64,
    /// Bytes sent per gossiping peer per second, over the whole run…
    pub bytes_per_peer_per_s: f64,
    /// …and over its second half (steady state: joins and first elections are over).
    pub steady_bytes_per_peer_per_s: f64,
    /// Changes beyond load (a host coming up, a model advertised, a baseline published…).
    pub convergence: Convergence,
    /// Load-only changes (`inflight_requests`, `model_timings`), which gossip pushes to
    /// `heartbeat_fanout` peers by design and anti-entropy completes.
    pub load_convergence: Convergence,
    /// Crashes of peers some entry was routing to, and how long until no entry did.
    pub crashed_hosts: Vec<CrashRemoval>,
    /// Records dropped for a bad signature (none unless a peer forges).
    pub bad_signatures: u64,
    /// Where the bytes go: per message kind (`digest`, `rumor_heartbeat`, …).
    pub by_kind: BTreeMap<String, KindFigures>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KindFigures {
    pub messages: u64,
    pub bytes: u64,
    /// This kind's share of `steady_bytes_per_peer_per_s` (the run's second half).
    pub steady_bytes_per_peer_per_s: f64,
}

/// How fast changed announcements (content, not heartbeats) reached 99 % of the live peers:
/// those published in a settled mesh (a minute after the last join or fault, no partition).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Convergence {
    pub changes: u64,
    pub converged: u64,
    /// Of the changes, the share that converged within 1 s.
    pub within_1s_pct: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Changes published during churn, not measured.
    pub during_churn: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrashRemoval {
    pub peer: String,
    pub at_s: f64,
    /// `null`: some entry still routed to it at the end.
    pub out_of_targets_after_ms: Option<f64>,
}

/// The entries' verification of one (peer, model) (SPEC §7).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerificationReport {
    pub peer: String,
    pub model: String,
    pub behaviour: Behaviour,
    /// The latest decided verdict (`null`: no test decided yet).
    pub verdict: Option<VerifyVerdict>,
    /// What `verify_by_model` shows: agreement and tokens of the test behind the verdict.
    pub agreement: f64,
    pub compared_tokens: u32,
    /// Decided tests by verdict.
    pub matches: u32,
    pub mismatches: u32,
    pub inconclusive: u32,
    /// Audits answered and compared.
    pub audits: u32,
    pub first_mismatch_at_s: Option<f64>,
    /// Taken out of rotation (enforce mode) at some point.
    pub demoted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelReport {
    pub name: String,
    pub size_gb: f64,
    /// `solo | split | waiting`, at the end of the run.
    pub plan: String,
    /// Peer names serving it (the elected host first).
    pub hosts: Vec<String>,
    pub split_group: Option<SplitGroupReport>,
    /// The plan's part for each live peer: hosts `solo`/`split_host`, workers `split_worker`,
    /// and while the plan waits, every peer that requested the model `waiting`.
    pub serving_mode: BTreeMap<String, ServingMode>,
    /// The primary host's published window (the host with the most samples).
    pub through_mesh: Option<Figures>,
    /// The same host's native baseline.
    pub native: Option<Figures>,
    /// through tok/s ÷ native tok/s of that host, banded as the catalog bands it.
    pub mesh_efficiency: MeshEfficiency,
    /// through TTFT − native TTFT of that host.
    pub ttft_overhead_ms: Option<f64>,
    /// The entry's SLA gate at the end of the run.
    pub sla: SlaReport,
    pub requests: RequestCounts,
    pub served_by_peer: BTreeMap<String, u64>,
    pub by_host: Vec<HostReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SplitGroupReport {
    pub host: String,
    /// Host first.
    pub members: Vec<String>,
    pub total_group_vram_gb: f64,
}

/// One peer serving (or having served) the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostReport {
    pub peer: String,
    /// `null` when it no longer serves it (crashed, left, re-planned).
    pub serving_mode: Option<ServingMode>,
    pub placement: PlacementKind,
    /// What the peer publishes (its own through-mesh window).
    pub through_mesh: Option<Figures>,
    /// What the entry measured of the streams it proxied to this peer.
    pub at_entry: Option<Figures>,
    pub native: Option<Figures>,
    pub mesh_efficiency: MeshEfficiency,
    pub served: u64,
}

/// The p50s of a sample window and how many samples are behind them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Figures {
    pub ttft_ms_p50: f64,
    pub tps_p50: f64,
    pub samples: u32,
}

impl Figures {
    pub fn from_summary(s: Summary) -> Self {
        Figures {
            ttft_ms_p50: round(s.ttft_ms_p50, 1),
            tps_p50: round(s.tps_p50, 2),
            samples: s.samples,
        }
    }
}

/// Mesh efficiency (mesh-core's bands, ratio rounded) and TTFT overhead of through-mesh
/// against native figures of the same peer.
pub fn efficiency(
    through: Option<Figures>,
    native: Option<Figures>,
) -> (MeshEfficiency, Option<f64>) {
    let band = match MeshEfficiency::from_tps(through.map(|f| f.tps_p50), native.map(|f| f.tps_p50))
    {
        MeshEfficiency::Green { ratio } => MeshEfficiency::Green {
            ratio: round(ratio, 3),
        },
        MeshEfficiency::Amber { ratio } => MeshEfficiency::Amber {
            ratio: round(ratio, 3),
        },
        MeshEfficiency::Red { ratio } => MeshEfficiency::Red {
            ratio: round(ratio, 3),
        },
        MeshEfficiency::NoMeasurementYet => MeshEfficiency::NoMeasurementYet,
    };
    let overhead = match (through, native) {
        (Some(t), Some(n)) => Some(round(t.ttft_ms_p50 - n.ttft_ms_p50, 1)),
        _ => None,
    };
    (band, overhead)
}

fn efficiency_text(e: MeshEfficiency) -> String {
    match e {
        MeshEfficiency::Green { ratio } => format!("{:.0} % green", 100.0 * ratio),
        MeshEfficiency::Amber { ratio } => format!("{:.0} % amber", 100.0 * ratio),
        MeshEfficiency::Red { ratio } => format!("{:.0} % red", 100.0 * ratio),
        MeshEfficiency::NoMeasurementYet => "no measurement yet".into(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlaReport {
    pub tier: Tier,
    /// `x-closedmesh-sla-status`.
    pub status: String,
    pub candidates: u32,
    pub best_peer: Option<String>,
    pub best_ttft_ms: Option<f64>,
    pub best_tps: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestCounts {
    pub sent: u64,
    /// Served by the mesh to the last token.
    pub mesh: u64,
    /// Served by the external provider.
    pub fallback: u64,
    /// Why the rest ended without an answer (`reason_code`s), plus `in_flight_at_end`.
    pub failed: BTreeMap<String, u64>,
}

impl RequestCounts {
    pub fn add(&mut self, other: &RequestCounts) {
        self.sent += other.sent;
        self.mesh += other.mesh;
        self.fallback += other.fallback;
        for (k, v) in &other.failed {
            *self.failed.entry(k.clone()).or_default() += v;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerReport {
    pub name: String,
    /// Short id as payloads show it.
    pub id: String,
    pub role: PeerRole,
    pub backend: Backend,
    pub behaviour: Behaviour,
    /// `not_joined | up | crashed | left`.
    pub state: String,
    /// Reachable from the primary entry (false across a partition).
    pub reachable: bool,
    /// What `/api/status` says of it (mesh-core's classifier on the primary entry's view);
    /// all `null` when it is not in that view (not joined, down, or cut off).
    pub node_state: Option<NodeState>,
    pub serving_mode: Option<ServingMode>,
    pub split_role: Option<SplitRole>,
    pub split_group: Option<SplitGroup>,
    pub hosted_models: Vec<String>,
    pub requests_served: u64,
}

/// Rounds to `decimals` places, so reports stay readable and byte-stable.
/// A model's plan in report terms: its hosts, its split group, and each peer's part in it (a
/// mapping of the election's plan, no rule of ours). A waiting model's part goes to `waiting`,
/// the live peers offering it.
pub(crate) fn plan_parts(
    plan: Option<&mesh_core::election::Plan>,
    name_of: impl Fn(&mesh_core::PeerId) -> String,
    waiting: impl IntoIterator<Item = String>,
) -> (
    Vec<String>,
    Option<SplitGroupReport>,
    BTreeMap<String, ServingMode>,
) {
    use mesh_core::election::Plan;
    let mut serving_mode = BTreeMap::new();
    match plan {
        Some(Plan::Solo { host, replicas, .. }) => {
            let hosts: Vec<String> = std::iter::once(host)
                .chain(replicas)
                .map(&name_of)
                .collect();
            for h in &hosts {
                serving_mode.insert(h.clone(), ServingMode::Solo);
            }
            (hosts, None, serving_mode)
        }
        Some(Plan::Split {
            host,
            workers,
            total_group_memory,
        }) => {
            serving_mode.insert(name_of(host), ServingMode::SplitHost);
            for id in workers {
                serving_mode.insert(name_of(id), ServingMode::SplitWorker);
            }
            let group = SplitGroupReport {
                host: name_of(host),
                members: std::iter::once(host).chain(workers).map(&name_of).collect(),
                total_group_vram_gb: round(*total_group_memory as f64 / 1e9, 1),
            };
            (vec![name_of(host)], Some(group), serving_mode)
        }
        Some(Plan::WaitingForCapacity { .. }) | None => {
            for p in waiting {
                serving_mode.insert(p, ServingMode::Waiting);
            }
            (Vec::new(), None, serving_mode)
        }
    }
}

pub fn round(v: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (v * f).round() / f
}

impl Report {
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a report is plain data");
        s.push('\n');
        s
    }

    /// The human report: a header, the models table, the serving modes, the peers table.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {}  seed {}  duration {} s  engine {}",
            self.scenario, self.seed, self.duration_s, self.engine
        );
        let r = &self.requests;
        let _ = writeln!(
            out,
            "requests {} sent, {} by mesh, {} by fallback, {} failed{}  mesh share {}\n",
            r.sent,
            r.mesh,
            r.fallback,
            r.failed.values().sum::<u64>(),
            failures(&r.failed),
            self.mesh_share_pct
                .map_or("-".into(), |p| format!("{p:.1} %")),
        );

        let mut rows = vec![row(&[
            "MODEL",
            "TIER",
            "PLAN",
            "HOSTS",
            "TTFT p50",
            "TOK/S p50",
            "N",
            "NATIVE TTFT",
            "NATIVE TOK/S",
            "EFF",
            "SLA",
        ])];
        for m in &self.models {
            let t = m.through_mesh;
            let n = m.native;
            rows.push(vec![
                m.name.clone(),
                m.sla.tier.to_string(),
                m.plan.clone(),
                if m.hosts.is_empty() {
                    "-".into()
                } else {
                    m.hosts.join(",")
                },
                t.map_or("-".into(), |f| format!("{:.0} ms", f.ttft_ms_p50)),
                t.map_or("-".into(), |f| format!("{:.2}", f.tps_p50)),
                t.map_or("0".into(), |f| f.samples.to_string()),
                n.map_or("-".into(), |f| format!("{:.0} ms", f.ttft_ms_p50)),
                n.map_or("-".into(), |f| format!("{:.2}", f.tps_p50)),
                efficiency_text(m.mesh_efficiency),
                m.sla.status.clone(),
            ]);
        }
        table(&mut out, &rows);

        for m in &self.models {
            let _ = writeln!(out, "\n{}", m.name);
            if let Some(g) = &m.split_group {
                let _ = writeln!(
                    out,
                    "  split group: host {}, members {}, {:.1} GB",
                    g.host,
                    g.members.join(","),
                    g.total_group_vram_gb
                );
            }
            let modes: Vec<String> = m
                .serving_mode
                .iter()
                .map(|(p, mode)| format!("{p}={}", serving_mode(*mode)))
                .collect();
            let _ = writeln!(
                out,
                "  serving_mode: {}",
                if modes.is_empty() {
                    "-".into()
                } else {
                    modes.join(" ")
                }
            );
            let _ = writeln!(
                out,
                "  requests: {} sent, {} by mesh, {} by fallback{}",
                m.requests.sent,
                m.requests.mesh,
                m.requests.fallback,
                failures(&m.requests.failed)
            );
            let served: Vec<String> = m
                .served_by_peer
                .iter()
                .map(|(p, n)| format!("{p}={n}"))
                .collect();
            if !served.is_empty() {
                let _ = writeln!(out, "  served by: {}", served.join(" "));
            }
            for h in &m.by_host {
                let fig = |f: Option<Figures>| {
                    f.map_or("-".to_string(), |f| {
                        format!(
                            "{:.0} ms / {:.2} tok/s (n={})",
                            f.ttft_ms_p50, f.tps_p50, f.samples
                        )
                    })
                };
                let _ = writeln!(
                    out,
                    "  {}: {} {:?}, published {}, at entry {}, native {}",
                    h.peer,
                    h.serving_mode.map_or("stopped", serving_mode),
                    h.placement,
                    fig(h.through_mesh),
                    fig(h.at_entry),
                    fig(h.native),
                );
            }
        }

        self.gossip_text(&mut out);
        self.verification_text(&mut out);
        self.checks_text(&mut out);

        let mut rows = vec![row(&[
            "PEER",
            "ID",
            "ROLE",
            "BACKEND",
            "BEHAVIOUR",
            "STATE",
            "NODE STATE",
            "SERVING MODE",
            "HOSTED",
            "SERVED",
        ])];
        for p in &self.peers {
            rows.push(vec![
                p.name.clone(),
                p.id.clone(),
                p.role.as_str().into(),
                p.backend.to_string(),
                p.behaviour.as_str().into(),
                if p.reachable {
                    p.state.clone()
                } else {
                    format!("{} (cut off)", p.state)
                },
                p.node_state.map_or("-".into(), node_state),
                p.serving_mode.map_or("-", serving_mode).into(),
                if p.hosted_models.is_empty() {
                    "-".into()
                } else {
                    p.hosted_models.join(",")
                },
                p.requests_served.to_string(),
            ]);
        }
        out.push('\n');
        table(&mut out, &rows);
        out
    }
}

impl Report {
    fn gossip_text(&self, out: &mut String) {
        let g = &self.gossip;
        let c = &g.convergence;
        let _ = writeln!(
            out,
            "\ngossip: {} peers, {} messages, {:.0} B/s per peer in steady state ({:.0} B/s over the run), {} bad signatures",
            g.peers,
            g.messages,
            g.steady_bytes_per_peer_per_s,
            g.bytes_per_peer_per_s,
            g.bad_signatures
        );
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
        let _ = writeln!(
            out,
            "  convergence: {} changes in a settled mesh, {} reached 99 % of peers ({} within 1 s); p50 {}, p99 {}, max {}; {} during churn not measured",
            c.changes,
            c.converged,
            c.within_1s_pct.map_or("-".into(), |v| format!("{v:.1} %")),
            ms(c.p50_ms),
            ms(c.p99_ms),
            ms(c.max_ms),
            c.during_churn
        );
        let l = &g.load_convergence;
        let _ = writeln!(
            out,
            "  load-only changes (pushed to fewer peers by design): {}, {} reached 99 % ({} within 1 s); p50 {}, p99 {}",
            l.changes,
            l.converged,
            l.within_1s_pct.map_or("-".into(), |v| format!("{v:.1} %")),
            ms(l.p50_ms),
            ms(l.p99_ms),
        );
        for crash in &g.crashed_hosts {
            let _ = writeln!(
                out,
                "  {} crashed at {:.1} s: out of every entry's targets {}",
                crash.peer,
                crash.at_s,
                crash.out_of_targets_after_ms.map_or(
                    "never (still routed at the end)".to_string(),
                    |v| format!("after {:.0} ms", v)
                )
            );
        }
    }

    fn verification_text(&self, out: &mut String) {
        if self.verification.is_empty() {
            return;
        }
        let _ = writeln!(out, "\nverification (entries' audits):");
        let mut rows = vec![row(&[
            "PEER",
            "MODEL",
            "BEHAVIOUR",
            "VERDICT",
            "AGREEMENT",
            "AUDITS",
            "MATCH",
            "MISMATCH",
            "INCONCLUSIVE",
            "FIRST MISMATCH",
            "DEMOTED",
        ])];
        for v in &self.verification {
            rows.push(vec![
                v.peer.clone(),
                v.model.clone(),
                v.behaviour.as_str().into(),
                v.verdict.map_or("-".into(), verdict),
                format!("{:.2}", v.agreement),
                v.audits.to_string(),
                v.matches.to_string(),
                v.mismatches.to_string(),
                v.inconclusive.to_string(),
                v.first_mismatch_at_s
                    .map_or("-".into(), |t| format!("{t:.0} s")),
                if v.demoted { "yes" } else { "no" }.into(),
            ]);
        }
        table(out, &rows);
    }

    fn checks_text(&self, out: &mut String) {
        let c = &self.checks;
        let liveness = match &c.liveness {
            crate::check::Liveness::Skipped => "skipped".to_string(),
            crate::check::Liveness::Converged { after_s } => {
                format!("converged {after_s:.0} s after the faults stopped")
            }
            crate::check::Liveness::NotConverged { after_s, reason } => {
                format!("NOT converged after {after_s:.0} s: {reason}")
            }
        };
        if c.passed() {
            let _ = writeln!(out, "\nchecks: every invariant held; liveness {liveness}");
        } else {
            let counts: Vec<String> = c
                .violations
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            let _ = writeln!(
                out,
                "\nchecks: {} violation(s) ({}); liveness {liveness}",
                c.total(),
                counts.join(" ")
            );
            for v in &c.first {
                let _ = writeln!(out, "  at {:.1} s {}: {}", v.at_s, v.rule, v.detail);
            }
        }
    }
}

fn verdict(v: VerifyVerdict) -> String {
    match v {
        VerifyVerdict::Match => "match",
        VerifyVerdict::Mismatch => "mismatch",
        VerifyVerdict::Inconclusive => "inconclusive",
    }
    .into()
}

fn failures(failed: &BTreeMap<String, u64>) -> String {
    if failed.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = failed.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(" ({})", parts.join(" "))
}

fn serving_mode(m: ServingMode) -> &'static str {
    match m {
        ServingMode::Solo => "solo",
        ServingMode::Waiting => "waiting",
        ServingMode::SplitHost => "split_host",
        ServingMode::SplitWorker => "split_worker",
    }
}

fn node_state(s: NodeState) -> String {
    match s {
        NodeState::Client => "client",
        NodeState::Standby => "standby",
        NodeState::Loading => "loading",
        NodeState::Serving => "serving",
    }
    .into()
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Left-aligned columns, two spaces apart, no trailing blanks.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut out = String::new();
        table(
            &mut out,
            &[row(&["A", "BB", "C"]), row(&["long cell", "x", "y"])],
        );
        assert_eq!(out, "A          BB  C\nlong cell  x   y\n");
    }

    #[test]
    fn efficiency_is_through_over_native_and_absent_without_a_baseline() {
        let through = Figures {
            ttft_ms_p50: 82.0,
            tps_p50: 45.26,
            samples: 10,
        };
        let native = Figures {
            ttft_ms_p50: 49.0,
            tps_p50: 77.8,
            samples: 3,
        };
        assert_eq!(
            efficiency(Some(through), Some(native)),
            (MeshEfficiency::Amber { ratio: 0.582 }, Some(33.0))
        );
        assert_eq!(
            efficiency(Some(through), None),
            (MeshEfficiency::NoMeasurementYet, None)
        );
    }
}
