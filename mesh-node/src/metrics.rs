//! `GET /metrics` in the Prometheus text format (0.0.4), encoded by `prometheus-client`.
//!
//! Counters live as long as the node ([`ChatCounters`], kept by the entry). Everything else is a
//! gauge read at scrape time from the same payloads `/api/status`, `/api/models` and
//! `/api/mesh-share` serve, so the numbers on `/metrics` and on the pages never disagree:
//!
//! | metric | labels |
//! |---|---|
//! | `closedmesh_chat_requests_total` | `served_by`, `model`, `status` (HTTP) |
//! | `closedmesh_sla_evaluations_total` | `model`, `tier`, `sla_status` |
//! | `closedmesh_fallback_decisions_total` | `fallback_status`, `trigger` |
//! | `closedmesh_auth_refusals_total` | `reason_code` |
//! | `closedmesh_mesh_share_pct` | `window` (`24h`, `7d`); absent with no traffic |
//! | `closedmesh_mesh_share_requests` | `window`, `served_by` (`mesh`, `fallback`, `total`) |
//! | `closedmesh_mesh_share_dropped_total` | tallies dropped because the store fell behind |
//! | `closedmesh_through_tps_p50`, `closedmesh_native_tps_p50` | `model` |
//! | `closedmesh_through_ttft_ms_p50`, `closedmesh_native_ttft_ms_p50` | `model` |
//! | `closedmesh_mesh_efficiency_ratio` | `model` |
//! | `closedmesh_model_first_served_timestamp_seconds` | `model` (first-serve milestones) |
//! | `closedmesh_inflight_requests` | |
//! | `closedmesh_gossip_peers`, `closedmesh_gossip_peers_dialable` | |
//! | `closedmesh_chat_samples_total` | `outcome` (`recorded` or why not; serving nodes) |
//!
//! Model labels only ever name models the mesh knows (the entry maps anything else to `other`),
//! so a caller cannot grow the series without bound by inventing model names.

use crate::auth::Refusal;
use crate::share_store::ShareSnapshot;
use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Response};
use mesh_core::sla::{Evaluation, FallbackDecision, ServedBy, ShareWindow};
use mesh_core::status::{CatalogPayload, MeshEfficiency, StatusPayload};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

/// The label a chat for a model no peer knows is counted under.
pub const OTHER_MODEL: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    served_by: String,
    model: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlaLabels {
    model: String,
    tier: String,
    sla_status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    fallback_status: String,
    trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WindowLabels {
    window: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WindowServedLabels {
    window: String,
    served_by: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
    node_id: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The entry's counters. Cheap to clone (the families are shared).
#[derive(Debug, Clone, Default)]
pub struct ChatCounters {
    requests: Family<RequestLabels, Counter>,
    sla: Family<SlaLabels, Counter>,
    fallback: Family<FallbackLabels, Counter>,
    auth_refusals: Family<ReasonLabels, Counter>,
}

impl ChatCounters {
    /// Counts one answered chat: its response status, the gate's verdict and the fallback
    /// decision that applied (the one in its headers).
    pub fn chat(
        &self,
        model_label: &str,
        served_by: ServedBy,
        status: u16,
        evaluation: &Evaluation,
        decision: &FallbackDecision,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                served_by: served_by.as_str().to_string(),
                model: model_label.to_string(),
                status: status.to_string(),
            })
            .inc();
        self.sla
            .get_or_create(&SlaLabels {
                model: model_label.to_string(),
                tier: evaluation.tier.as_str().to_string(),
                sla_status: evaluation.status.as_str().to_string(),
            })
            .inc();
        self.fallback
            .get_or_create(&FallbackLabels {
                fallback_status: decision.status.as_str().to_string(),
                trigger: decision.trigger.as_str().to_string(),
            })
            .inc();
    }

    pub fn auth_refused(&self, refusal: Refusal) {
        self.auth_refusals
            .get_or_create(&ReasonLabels {
                reason_code: refusal.reason_code().to_string(),
            })
            .inc();
    }
}

/// What one scrape reads.
#[derive(Debug)]
pub struct Scrape<'a> {
    /// The entry's chat counters (`None` on a serving node).
    pub counters: Option<&'a ChatCounters>,
    pub status: &'a StatusPayload,
    pub catalog: &'a CatalogPayload,
    /// The mesh-share windows (`None` on a serving node, or when the store did not answer).
    pub share: Option<&'a ShareSnapshot>,
    /// Proxied chats by sample outcome (a serving node's recorder).
    pub sample_outcomes: BTreeMap<&'static str, u64>,
}

/// The whole `/metrics` body.
pub fn encode(scrape: &Scrape<'_>) -> String {
    let mut r = Registry::with_prefix("closedmesh");

    let info: Family<VersionLabels, Gauge> = Family::default();
    info.get_or_create(&VersionLabels {
        version: scrape.status.version.clone(),
        node_id: scrape.status.node_id.clone(),
    })
    .set(1);
    r.register(
        "build_info",
        "This node's runtime version and short id",
        info,
    );

    if let Some(c) = scrape.counters {
        r.register(
            "chat_requests",
            "Chats answered, by who served them, model and HTTP status",
            c.requests.clone(),
        );
        r.register(
            "sla_evaluations",
            "SLA gate verdicts, by model, tier and status",
            c.sla.clone(),
        );
        r.register(
            "fallback_decisions",
            "Fallback decisions, by status and what triggered them",
            c.fallback.clone(),
        );
        r.register(
            "auth_refusals",
            "Chats refused for a missing or invalid API key",
            c.auth_refusals.clone(),
        );
    }

    if let Some(share) = scrape.share {
        let pct: Family<WindowLabels, FloatGauge> = Family::default();
        let requests: Family<WindowServedLabels, Gauge> = Family::default();
        for (window, w) in [("24h", &share.last_24h), ("7d", &share.last_7d)] {
            if let Some(p) = w.mesh_share_pct {
                pct.get_or_create(&WindowLabels {
                    window: window.into(),
                })
                .set(p);
            }
            share_counts(&requests, window, w);
        }
        r.register(
            "mesh_share_pct",
            "Share of served chats the mesh served (not the fallback provider), rolling window",
            pct,
        );
        r.register(
            "mesh_share_requests",
            "Served chats in the rolling window, by who served them",
            requests,
        );
        let dropped: Counter = Counter::default();
        dropped.inc_by(share.dropped);
        r.register(
            "mesh_share_dropped",
            "Mesh-share tallies this node dropped because its store fell behind",
            dropped,
        );
    }

    let per_model = |name: &str,
                     help: &str,
                     value: &dyn Fn(&mesh_core::status::CatalogRow) -> Option<f64>,
                     r: &mut Registry| {
        let family: Family<ModelLabels, FloatGauge> = Family::default();
        for row in &scrape.catalog.models {
            if let Some(v) = value(row).filter(|v| v.is_finite()) {
                family
                    .get_or_create(&ModelLabels {
                        model: row.name.clone(),
                    })
                    .set(v);
            }
        }
        r.register(name, help.to_string(), family);
    };
    per_model(
        "through_tps_p50",
        "Decode tok/s p50 through the mesh (the model's best-measured host, rolling 1 h)",
        &|row| row.through_tps_p50,
        &mut r,
    );
    per_model(
        "native_tps_p50",
        "Decode tok/s p50 of the same host's native llama-server baseline",
        &|row| row.native_tps_p50,
        &mut r,
    );
    per_model(
        "through_ttft_ms_p50",
        "Time to first token p50 through the mesh, milliseconds",
        &|row| row.ttft_ms_p50,
        &mut r,
    );
    per_model(
        "native_ttft_ms_p50",
        "Time to first token p50 of the native baseline, milliseconds",
        &|row| row.native_ttft_ms_p50,
        &mut r,
    );
    per_model(
        "mesh_efficiency_ratio",
        "Through-mesh tok/s divided by native tok/s (absent: no measurement yet)",
        &|row| match row.mesh_efficiency {
            MeshEfficiency::Green { ratio }
            | MeshEfficiency::Amber { ratio }
            | MeshEfficiency::Red { ratio } => Some(ratio),
            MeshEfficiency::NoMeasurementYet => None,
        },
        &mut r,
    );
    per_model(
        "model_first_served_timestamp_seconds",
        "First-serve milestone: when the model was first served here (Unix seconds)",
        &|row| row.first_served_at.map(|s| s as f64),
        &mut r,
    );

    let inflight: Gauge = Gauge::default();
    inflight.set(i64::from(scrape.status.inflight_requests));
    r.register(
        "inflight_requests",
        "Chats in flight through this node",
        inflight,
    );
    let peers: Gauge = Gauge::default();
    peers.set(scrape.status.peers.len() as i64);
    r.register(
        "gossip_peers",
        "Live peers this node knows through gossip",
        peers,
    );
    let dialable: Gauge = Gauge::default();
    dialable.set(
        scrape
            .status
            .peers
            .iter()
            .filter(|p| p.rtt_ms.is_some())
            .count() as i64,
    );
    r.register(
        "gossip_peers_dialable",
        "Live peers this node can reach directly",
        dialable,
    );

    if !scrape.sample_outcomes.is_empty() {
        let outcomes: Family<OutcomeLabels, Counter> = Family::default();
        for (outcome, n) in &scrape.sample_outcomes {
            outcomes
                .get_or_create(&OutcomeLabels {
                    outcome: (*outcome).to_string(),
                })
                .inc_by(*n);
        }
        r.register(
            "chat_samples",
            "Chats this node proxied, by whether a through-mesh sample was recorded (and why not)",
            outcomes,
        );
    }

    let mut out = String::new();
    prometheus_text::encode(&mut out, &r).expect("writing to a String cannot fail");
    out
}

fn share_counts(family: &Family<WindowServedLabels, Gauge>, window: &str, w: &ShareWindow) {
    for (served_by, n) in [
        ("mesh", w.mesh),
        ("fallback", w.fallback),
        ("total", w.total),
    ] {
        family
            .get_or_create(&WindowServedLabels {
                window: window.into(),
                served_by: served_by.into(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// The `/metrics` response.
pub fn response(body: String) -> Response<Body> {
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
    );
    resp
}
