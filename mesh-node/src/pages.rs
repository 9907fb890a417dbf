//! The web pages (SPEC §4–§6, §8): `/status` (the model catalog by tier, through-mesh against
//! native speed with its efficiency band, TTFT and TTFT overhead, split groups, verification
//! verdicts, peers) and `/dashboard` (`mesh_share_pct` over 24 h and 7 d with the raw counts,
//! first-serve milestones).
//!
//! Both are rendered here on the server from the same payloads the JSON API serves, so they read
//! fully without JavaScript. A small script (`assets/pages.js`, no build step) adds the capacity
//! tier's toggle and re-renders the same elements every few seconds from `/api/models`,
//! `/api/status` and `/api/mesh-share`, by the same formatting rules as the functions below;
//! `?refresh=N` sets the period in seconds (default 10).

use crate::share_store::ShareSnapshot;
use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, Response};
use axum::routing::get;
use mesh_core::Timestamp;
use mesh_core::sla::{CAPACITY_TIER_COPY, Targets, Tier, TierTargets};
use mesh_core::status::payload::{PeerRow, SplitGroup, StatusPayload, VerifyEntry, VerifyVerdict};
use mesh_core::status::{CatalogPayload, CatalogRow, MeshEfficiency, SplitKind};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

const SCRIPT: &str = include_str!("../assets/pages.js");
const STYLE: &str = include_str!("../assets/pages.css");
const DASH: &str = "—";

/// The default refresh period of the pages' script.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(10);

/// Where the pages get their data: an entry or a serving node.
pub trait PageSource: Send + Sync + 'static {
    fn status(&self) -> StatusPayload;
    fn catalog(&self) -> CatalogPayload;
    /// The SLA targets the tier headings show.
    fn targets(&self) -> TierTargets;
    /// The mesh-share windows; `None` where none are counted (serving nodes) or the store did
    /// not answer.
    fn share(&self) -> impl Future<Output = Option<ShareSnapshot>> + Send;
    fn now(&self) -> Timestamp;
}

/// `GET /status` and `GET /dashboard` for `source`.
pub fn router<S: PageSource>(source: Arc<S>) -> Router {
    Router::new()
        .route("/status", get(status_handler::<S>))
        .route("/dashboard", get(dashboard_handler::<S>))
        .with_state(source)
}

async fn status_handler<S: PageSource>(
    State(source): State<Arc<S>>,
    RawQuery(query): RawQuery,
) -> Response<Body> {
    html(status_page(&StatusPage {
        status: &source.status(),
        catalog: &source.catalog(),
        targets: source.targets(),
        refresh: refresh_from_query(query.as_deref()),
        now: source.now(),
    }))
}

async fn dashboard_handler<S: PageSource>(
    State(source): State<Arc<S>>,
    RawQuery(query): RawQuery,
) -> Response<Body> {
    let share = source.share().await;
    html(dashboard_page(&DashboardPage {
        catalog: &source.catalog(),
        share: share.as_ref(),
        refresh: refresh_from_query(query.as_deref()),
        now: source.now(),
    }))
}

/// `?refresh=N`: seconds between the script's refreshes, 1 to 3600.
pub fn refresh_from_query(query: Option<&str>) -> Duration {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.strip_prefix("refresh="))
        .filter_map(|v| v.parse::<u64>().ok())
        .next_back()
        .map_or(DEFAULT_REFRESH, |s| Duration::from_secs(s.clamp(1, 3_600)))
}

fn html(page: String) -> Response<Body> {
    let mut resp = Response::new(Body::from(page));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// What `/status` shows.
#[derive(Debug)]
pub struct StatusPage<'a> {
    pub status: &'a StatusPayload,
    pub catalog: &'a CatalogPayload,
    pub targets: TierTargets,
    pub refresh: Duration,
    pub now: Timestamp,
}

/// What `/dashboard` shows.
#[derive(Debug)]
pub struct DashboardPage<'a> {
    pub catalog: &'a CatalogPayload,
    pub share: Option<&'a ShareSnapshot>,
    pub refresh: Duration,
    pub now: Timestamp,
}

/// The tiers in the order the page shows them: capacity (collapsed) after the daily drivers.
const TIER_ORDER: [Tier; 3] = [Tier::DailyDriver, Tier::Capacity, Tier::Experimental];

pub fn status_page(p: &StatusPage<'_>) -> String {
    let s = p.status;
    let mut b = String::new();
    let _ = write!(
        b,
        r#"<p class="summary">Node <code id="node-id">{}</code> · mesh <code id="mesh-id">{}</code> · <span id="peer-count">{}</span> · <span id="updated">rendered {}</span></p>"#,
        esc(&s.node_id),
        esc(if s.mesh_id.is_empty() {
            DASH
        } else {
            &s.mesh_id
        }),
        plural(s.peers.len(), "peer"),
        clock_utc(p.now.as_unix_secs()),
    );

    b.push_str(r#"<section id="catalog"><h2>Models</h2>"#);
    let _ = write!(
        b,
        r#"<p id="catalog-empty" class="empty"{}>No model is served in the mesh yet.</p>"#,
        hidden_if(!p.catalog.models.is_empty())
    );
    for tier in TIER_ORDER {
        let rows: Vec<&CatalogRow> = p.catalog.models.iter().filter(|r| r.tier == tier).collect();
        let id = tier.as_str();
        let _ = write!(
            b,
            r#"<section class="tier" id="tier-{id}" data-tier="{id}"{}><h3>{} <span class="targets">{}</span></h3>"#,
            hidden_if(rows.is_empty()),
            tier_title(tier),
            esc(&targets_text(p.targets.for_tier(tier))),
        );
        let table = catalog_table(id, &rows);
        if tier == Tier::Capacity {
            let _ = write!(
                b,
                r#"<p class="tier-copy" id="capacity-copy">{}</p><p><button type="button" id="capacity-toggle" aria-expanded="false" aria-controls="capacity-body">show capacity tier</button> <span id="capacity-count" class="count">{}</span></p><div id="capacity-body" hidden>{table}</div>"#,
                esc(CAPACITY_TIER_COPY),
                plural(rows.len(), "model"),
            );
        } else {
            b.push_str(&table);
        }
        b.push_str("</section>");
    }
    b.push_str("</section>");

    let groups = split_groups(s);
    let _ = write!(
        b,
        r#"<section id="splits"><h2>Split groups</h2><p id="splits-empty" class="empty"{}>No pipeline splits: every served model runs whole on one host.</p><table id="splits-table"{}><thead><tr><th>Model</th><th>Pipeline host</th><th>Members</th><th>Pooled memory</th></tr></thead><tbody id="split-rows">"#,
        hidden_if(!groups.is_empty()),
        hidden_if(groups.is_empty()),
    );
    for g in &groups {
        b.push_str(&split_row(g));
    }
    b.push_str("</tbody></table></section>");

    let verdicts: Vec<(&PeerRow, &str, &VerifyEntry)> = s
        .peers
        .iter()
        .flat_map(|p| {
            p.verify_by_model
                .iter()
                .map(move |(m, v)| (p, m.as_str(), v))
        })
        .collect();
    let _ = write!(
        b,
        r#"<section id="verify"><h2>Verification</h2><p id="verify-empty" class="empty"{}>No verification verdicts yet.</p><table id="verify-table"{}><thead><tr><th>Peer</th><th>Model</th><th>Verdict</th><th>Agreement</th><th>Compared tokens</th><th>Mode</th><th>Checked</th></tr></thead><tbody id="verify-rows">"#,
        hidden_if(!verdicts.is_empty()),
        hidden_if(verdicts.is_empty()),
    );
    for (peer, model, v) in &verdicts {
        b.push_str(&verify_row(peer, model, v));
    }
    b.push_str("</tbody></table></section>");

    let _ = write!(
        b,
        r#"<section id="peers"><h2>Peers</h2><p id="peers-empty" class="empty"{}>This node knows no other peer yet.</p><table id="peers-table"{}><thead><tr><th>Peer</th><th>Host name</th><th>Role</th><th>State</th><th>RTT</th><th>Fast memory</th><th>Hosted models</th><th>In flight</th></tr></thead><tbody id="peer-rows">"#,
        hidden_if(!s.peers.is_empty()),
        hidden_if(s.peers.is_empty()),
    );
    for peer in &s.peers {
        b.push_str(&peer_row(peer));
    }
    b.push_str("</tbody></table></section>");
    layout("status", "Mesh status", p.refresh, &b)
}

pub fn dashboard_page(p: &DashboardPage<'_>) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        r#"<p class="summary"><span id="updated">rendered {}</span></p>"#,
        clock_utc(p.now.as_unix_secs())
    );
    let _ = write!(
        b,
        r#"<section id="share"{}><div class="cards">"#,
        hidden_if(p.share.is_none())
    );
    for (id, title, w) in [
        (
            "24h",
            "Mesh share · rolling 24 h",
            p.share.map(|s| &s.last_24h),
        ),
        (
            "7d",
            "Mesh share · rolling 7 d",
            p.share.map(|s| &s.last_7d),
        ),
    ] {
        let (pct, class, mesh, fallback, total) = match w {
            Some(w) => (
                w.mesh_share_pct.map_or(DASH.to_string(), share_pct),
                if w.mesh_share_pct.is_some() {
                    "pct"
                } else {
                    "pct none"
                },
                w.mesh,
                w.fallback,
                w.total,
            ),
            None => (DASH.to_string(), "pct none", 0, 0, 0),
        };
        let note = if w.and_then(|w| w.mesh_share_pct).is_some() {
            ""
        } else {
            "no traffic yet"
        };
        let _ = write!(
            b,
            r#"<div class="card" id="share-{id}" data-window="{id}"><h2>{title}</h2><p class="{class}">{pct}</p><p class="note">{note}</p><p class="counts"><span class="mesh">{mesh}</span> mesh · <span class="fallback">{fallback}</span> fallback · <span class="total">{total}</span> total</p></div>"#,
        );
    }
    b.push_str(r#"</div><p class="explain">The share of served chats that community hardware in the mesh served, rather than the external fallback provider.</p></section>"#);
    let _ = write!(
        b,
        r#"<p id="share-unavailable" class="empty"{}>Mesh share is counted on entry nodes.</p>"#,
        hidden_if(p.share.is_some())
    );

    let milestones = milestones(p.catalog);
    let _ = write!(
        b,
        r#"<section id="milestones"><h2>First-serve milestones</h2><p id="milestones-empty" class="empty"{}>No model has been served here yet.</p><ol id="milestone-list">"#,
        hidden_if(!milestones.is_empty())
    );
    for row in milestones {
        b.push_str(&milestone_item(row));
    }
    b.push_str("</ol></section>");
    layout("dashboard", "Dashboard", p.refresh, &b)
}

fn layout(page: &str, title: &str, refresh: Duration, body: &str) -> String {
    let nav = |href: &str, label: &str| {
        let current = if href.trim_start_matches('/') == page {
            r#" aria-current="page""#
        } else {
            ""
        };
        format!(r#"<a href="{href}"{current}>{label}</a>"#)
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>ClosedMesh · {title}</title><style>{STYLE}</style></head>
<body data-page="{page}" data-refresh-ms="{refresh_ms}"><header><strong>ClosedMesh</strong> <nav>{status} {dashboard} <a href="/api/status">/api/status</a> <a href="/api/models">/api/models</a> <a href="/metrics">/metrics</a></nav></header>
<main><h1>{title}</h1>{body}</main>
<script>{SCRIPT}</script></body></html>
"#,
        refresh_ms = refresh.as_millis(),
        status = nav("/status", "Status"),
        dashboard = nav("/dashboard", "Dashboard"),
    )
}

fn catalog_table(tier: &str, rows: &[&CatalogRow]) -> String {
    let mut t = String::from(
        r#"<table class="catalog"><thead><tr><th>Model</th><th>Serving</th><th>Size</th><th>Through tok/s</th><th>Native tok/s</th><th>Mesh efficiency</th><th>TTFT p50</th><th>Native TTFT</th><th>TTFT overhead</th><th>First served</th></tr></thead>"#,
    );
    let _ = write!(t, r#"<tbody id="rows-{tier}">"#);
    for row in rows {
        t.push_str(&catalog_row(row));
    }
    t.push_str("</tbody></table>");
    t
}

fn catalog_row(r: &CatalogRow) -> String {
    let (band, band_text) = efficiency(&r.mesh_efficiency);
    format!(
        r#"<tr class="model-row" data-model="{name}" data-tier="{tier}" data-band="{band}"><td class="model">{name}</td><td class="serving">{serving}</td><td class="size num">{size}</td><td class="through num">{through}</td><td class="native num">{native}</td><td class="efficiency"><span class="band band-{band}">{band_text}</span></td><td class="ttft num">{ttft}</td><td class="native-ttft num">{native_ttft}</td><td class="overhead num">{overhead}</td><td class="first-served">{first}</td></tr>"#,
        name = esc(&r.name),
        tier = r.tier.as_str(),
        serving = serving(r.split_kind, r.node_count),
        size = r.size_gb.map_or(DASH.into(), gb),
        through = r.through_tps_p50.map_or(DASH.into(), tps),
        native = r.native_tps_p50.map_or(DASH.into(), tps),
        ttft = r.ttft_ms_p50.map_or(DASH.into(), ms),
        native_ttft = r.native_ttft_ms_p50.map_or(DASH.into(), ms),
        overhead = r.ttft_overhead_ms.map_or(DASH.into(), signed_ms),
        first = r.first_served_at.map_or(DASH.into(), minute_utc),
    )
}

/// The band class and its text: a percentage, or "no measurement yet" (never shown as slow).
fn efficiency(e: &MeshEfficiency) -> (&'static str, String) {
    match *e {
        MeshEfficiency::Green { ratio } => ("green", percent(ratio)),
        MeshEfficiency::Amber { ratio } => ("amber", percent(ratio)),
        MeshEfficiency::Red { ratio } => ("red", percent(ratio)),
        MeshEfficiency::NoMeasurementYet => ("none", "no measurement yet".into()),
    }
}

fn serving(kind: SplitKind, nodes: u32) -> String {
    match kind {
        SplitKind::Cold => "not served".into(),
        SplitKind::Solo => "solo · 1 node".into(),
        SplitKind::Pipeline => format!("pipeline · {}", plural(nodes as usize, "node")),
        SplitKind::MultiHost => format!("replicas · {}", plural(nodes as usize, "host")),
    }
}

/// Every distinct split group in the status: this node's and its peers'.
fn split_groups(s: &StatusPayload) -> Vec<&SplitGroup> {
    let mut groups: Vec<&SplitGroup> = s
        .my_split_group
        .iter()
        .chain(s.peers.iter().filter_map(|p| p.split_group.as_ref()))
        .collect();
    groups.sort_by(|a, b| (&a.model, &a.host_id).cmp(&(&b.model, &b.host_id)));
    groups.dedup_by(|a, b| a.model == b.model && a.host_id == b.host_id);
    groups
}

fn split_row(g: &SplitGroup) -> String {
    format!(
        r#"<tr class="split-row" data-model="{model}" data-host="{host}"><td class="model">{model}</td><td class="host"><code>{host}</code></td><td class="members">{members}</td><td class="pooled num">{pooled}</td></tr>"#,
        model = esc(&g.model),
        host = esc(&g.host_id),
        members = esc(&g.peer_ids.join(", ")),
        pooled = gb(g.total_group_vram_gb),
    )
}

fn verify_row(peer: &PeerRow, model: &str, v: &VerifyEntry) -> String {
    let verdict = match v.verdict {
        VerifyVerdict::Match => "match",
        VerifyVerdict::Mismatch => "mismatch",
        VerifyVerdict::Inconclusive => "inconclusive",
    };
    let mode = match v.mode {
        mesh_core::status::payload::VerifyMode::Observe => "observe",
        mesh_core::status::payload::VerifyMode::Enforce => "enforce",
    };
    format!(
        r#"<tr class="verify-row" data-peer="{id}" data-model="{model}" data-verdict="{verdict}"><td class="peer">{peer}</td><td class="model">{model}</td><td><span class="verdict verdict-{verdict}">{verdict}</span></td><td class="agreement num">{agreement}</td><td class="compared num">{compared}</td><td class="mode">{mode}</td><td class="checked">{checked}</td></tr>"#,
        id = esc(&peer.id),
        peer = peer_label(peer),
        model = esc(model),
        agreement = percent(v.agreement),
        compared = v.compared_tokens,
        checked = minute_utc(v.checked_at_unix_secs),
    )
}

fn peer_label(p: &PeerRow) -> String {
    if p.hostname.is_empty() {
        format!("<code>{}</code>", esc(&p.id))
    } else {
        format!("<code>{}</code> ({})", esc(&p.id), esc(&p.hostname))
    }
}

fn peer_row(p: &PeerRow) -> String {
    let role = match p.role {
        mesh_core::status::payload::PeerRole::Host => "Host",
        mesh_core::status::payload::PeerRole::Worker => "Worker",
        mesh_core::status::payload::PeerRole::Client => "Client",
    };
    let state = match p.state {
        mesh_core::status::NodeState::Client => "client",
        mesh_core::status::NodeState::Standby => "standby",
        mesh_core::status::NodeState::Loading => "loading",
        mesh_core::status::NodeState::Serving => "serving",
    };
    format!(
        r#"<tr class="peer-row" data-peer="{id}"><td class="peer"><code>{id}</code></td><td class="hostname">{host}</td><td class="role">{role}</td><td class="state">{state}</td><td class="rtt num">{rtt}</td><td class="vram num">{vram}</td><td class="hosted">{hosted}</td><td class="inflight num">{inflight}</td></tr>"#,
        id = esc(&p.id),
        host = esc(if p.hostname.is_empty() {
            DASH
        } else {
            &p.hostname
        }),
        rtt = p.rtt_ms.map_or("undialable".into(), |r| format!("{r} ms")),
        vram = gb(p.vram_gb),
        hosted = if p.hosted_models.is_empty() {
            DASH.to_string()
        } else {
            esc(&p.hosted_models.join(", "))
        },
        inflight = p.inflight_requests,
    )
}

/// Models with a first-serve milestone, oldest first.
fn milestones(catalog: &CatalogPayload) -> Vec<&CatalogRow> {
    let mut rows: Vec<&CatalogRow> = catalog
        .models
        .iter()
        .filter(|r| r.first_served_at.is_some())
        .collect();
    rows.sort_by(|a, b| (a.first_served_at, &a.name).cmp(&(b.first_served_at, &b.name)));
    rows
}

fn milestone_item(r: &CatalogRow) -> String {
    format!(
        r#"<li class="milestone" data-model="{name}"><span class="when">{when}</span> <span class="model">{name}</span> <span class="tier tier-{tier}">{tier}</span></li>"#,
        name = esc(&r.name),
        when = r.first_served_at.map_or(DASH.into(), minute_utc),
        tier = r.tier.as_str(),
    )
}

fn tier_title(tier: Tier) -> &'static str {
    match tier {
        Tier::DailyDriver => "Daily driver",
        Tier::Capacity => "Capacity",
        Tier::Experimental => "Experimental",
    }
}

fn targets_text(t: Targets) -> String {
    format!(
        "TTFT p50 ≤ {} s · ≥ {} tok/s",
        t.ttft_ms_p50_max / 1_000.0,
        t.tps_p50_min
    )
}

// Formatting. `assets/pages.js` formats the same values the same way; keep them in step.

fn tps(v: f64) -> String {
    format!("{v:.2}")
}

fn ms(v: f64) -> String {
    format!("{} ms", v.round() as i64)
}

fn signed_ms(v: f64) -> String {
    let sign = if v < 0.0 { "−" } else { "+" };
    format!("{sign}{} ms", v.abs().round() as i64)
}

fn gb(v: f64) -> String {
    format!("{v:.1} GB")
}

fn percent(ratio: f64) -> String {
    format!("{}%", (ratio * 100.0).round() as i64)
}

/// `100%`, `66.7%`.
fn share_pct(p: f64) -> String {
    let s = format!("{p:.1}");
    format!("{}%", s.strip_suffix(".0").unwrap_or(&s))
}

fn plural(n: usize, one: &str) -> String {
    format!("{n} {one}{}", if n == 1 { "" } else { "s" })
}

fn hidden_if(hide: bool) -> &'static str {
    if hide { " hidden" } else { "" }
}

/// `2026-05-24 14:03 UTC`.
fn minute_utc(unix_secs: u64) -> String {
    let (y, m, d) = civil_from_days((unix_secs / 86_400) as i64);
    let secs = unix_secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        secs / 3_600,
        secs % 3_600 / 60
    )
}

/// `14:03:09 UTC`.
fn clock_utc(unix_secs: u64) -> String {
    let secs = unix_secs % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// HTML-escapes text for element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_minutes() {
        assert_eq!(minute_utc(0), "1970-01-01 00:00 UTC");
        // 2026-05-24 14:03:09 UTC
        assert_eq!(minute_utc(1_779_631_389), "2026-05-24 14:03 UTC");
        assert_eq!(minute_utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(clock_utc(1_779_631_389), "14:03:09 UTC");
    }

    #[test]
    fn figures_read_as_the_catalog_shows_them() {
        assert_eq!(tps(45.2649), "45.26");
        assert_eq!(ms(82.4), "82 ms");
        assert_eq!(signed_ms(33.0), "+33 ms");
        assert_eq!(signed_ms(-2.5), "−3 ms");
        assert_eq!(percent(45.26 / 77.80), "58%");
        assert_eq!(share_pct(100.0), "100%");
        assert_eq!(share_pct(200.0 / 3.0), "66.7%");
        assert_eq!(
            targets_text(TierTargets::default().capacity),
            "TTFT p50 ≤ 15 s · ≥ 0.8 tok/s"
        );
        assert_eq!(serving(SplitKind::Pipeline, 3), "pipeline · 3 nodes");
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn refresh_period_comes_from_the_query_within_bounds() {
        assert_eq!(refresh_from_query(None), DEFAULT_REFRESH);
        assert_eq!(
            refresh_from_query(Some("refresh=2")),
            Duration::from_secs(2)
        );
        assert_eq!(
            refresh_from_query(Some("a=b&refresh=0")),
            Duration::from_secs(1)
        );
        assert_eq!(refresh_from_query(Some("refresh=x")), DEFAULT_REFRESH);
        assert_eq!(
            refresh_from_query(Some("refresh=999999")),
            Duration::from_secs(3_600)
        );
    }
}
