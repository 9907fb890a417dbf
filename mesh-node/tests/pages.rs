//! The web pages as a person sees them: headless Chromium (chromedriver, driven by fantoccini)
//! loads `/status` and `/dashboard` from a page server fed with known payloads, and the tests
//! assert what is displayed — rows per tier, efficiency bands and their colours, "no measurement
//! yet", TTFT and its overhead, the capacity tier collapsed behind its toggle with the honest
//! copy, split groups, verification verdicts, the mesh-share cards and milestones — and that the
//! script's refresh from the JSON API renders exactly what the server rendered, then follows
//! changes. Fails, never skips, without Chromium.

mod harness;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use fantoccini::{Client, Locator};
use harness::*;
use mesh_core::Timestamp;
use mesh_core::sla::{CAPACITY_TIER_COPY, TierTargets};
use mesh_core::status::{CatalogPayload, StatusPayload};
use mesh_node::entry::{self, EntrySettings};
use mesh_node::pages::{self, PageSource};
use mesh_node::share_store::ShareSnapshot;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// 2026-05-24 14:03:09 UTC.
const FIRST_SERVED: u64 = 1_779_631_389;

fn catalog_row(name: &str, tier: &str, kind: &str, nodes: u32, f: Value) -> Value {
    let mut row = json!({
        "name": name, "tier": tier, "size_gb": 5.03, "node_count": nodes, "split_kind": kind,
        "mesh_fit": {"fits_on_largest_node": true, "fits_pooled": true, "pooled_vram_gb": 40.3, "needed_vram_gb": 5.5},
        "through_tps_p50": null, "native_tps_p50": null,
        "mesh_efficiency": {"band": "no_measurement_yet"},
        "ttft_overhead_ms": null, "ttft_ms_p50": null, "native_ttft_ms_p50": null,
        "first_served_at": null,
    });
    for (k, v) in f.as_object().unwrap() {
        row[k] = v.clone();
    }
    row
}

fn catalog() -> Value {
    json!({"models": [
        catalog_row("Qwen3-8B-Q4_K_M", "daily-driver", "solo", 1, json!({
            "through_tps_p50": 45.26, "native_tps_p50": 77.8,
            "mesh_efficiency": {"band": "amber", "ratio": 45.26 / 77.8},
            "ttft_ms_p50": 82.0, "native_ttft_ms_p50": 49.0, "ttft_overhead_ms": 33.0,
            "first_served_at": FIRST_SERVED,
        })),
        catalog_row("Llama-3.2-3B-Instruct-Q4_K_M", "daily-driver", "solo", 1, json!({
            "through_tps_p50": 60.0, "ttft_ms_p50": 40.4,
        })),
        catalog_row("Qwen2.5-Coder-7B-Instruct-Q4_K_M", "daily-driver", "multi_host", 2, json!({
            "through_tps_p50": 70.0, "native_tps_p50": 80.0,
            "mesh_efficiency": {"band": "green", "ratio": 0.875},
            "ttft_ms_p50": 51.0, "native_ttft_ms_p50": 55.6, "ttft_overhead_ms": -4.6,
            "first_served_at": FIRST_SERVED + 3_600,
        })),
        catalog_row("DeepSeek-R1-Distill-Llama-70B-Q4_K_M", "capacity", "pipeline", 3, json!({
            "size_gb": 42.5, "through_tps_p50": 1.09, "native_tps_p50": 3.0,
            "mesh_efficiency": {"band": "red", "ratio": 1.09 / 3.0},
            "ttft_ms_p50": 24_925.0, "native_ttft_ms_p50": 9_000.0, "ttft_overhead_ms": 15_925.0,
            "first_served_at": FIRST_SERVED - 86_400,
        })),
        catalog_row("Qwen3-32B-Q4_K_M", "capacity", "solo", 1, json!({
            "size_gb": 19.8, "through_tps_p50": 3.981, "ttft_ms_p50": 1_047.0,
        })),
        catalog_row("SmolLM2-135M-Instruct.Q4_1", "experimental", "cold", 0, json!({"size_gb": 0.098})),
    ]})
}

fn peer(id: &str, host: &str, role: &str, state: &str, rtt: Value, f: Value) -> Value {
    let mut p = json!({
        "id": id, "role": role, "state": state, "version": "0.1.0", "hostname": host,
        "vram_gb": 17.2, "system_ram_bytes": 32_000_000_000u64, "rtt_ms": rtt,
        "serving_models": [], "hosted_models": [], "inflight_requests": 0,
        "capability": {"backend": "cuda", "vram_total_mb": 17_200, "loaded_models": []},
        "measured_tps_p50_by_model": {}, "measured_ttft_ms_p50_by_model": {},
        "native_tps_p50_by_model": {}, "native_ttft_ms_p50_by_model": {},
    });
    for (k, v) in f.as_object().unwrap() {
        p[k] = v.clone();
    }
    p
}

fn status() -> Value {
    let group = json!({
        "model": "DeepSeek-R1-Distill-Llama-70B-Q4_K_M", "host_id": "bbbbbbbbbb",
        "peer_ids": ["bbbbbbbbbb", "cccccccccc", "dddddddddd"], "total_group_vram_gb": 40.3,
    });
    json!({
        "version": "0.1.0", "node_id": "e1e1e1e1e1", "node_state": "client",
        "is_host": false, "is_client": true, "models": [], "requested_models": [],
        "serving_models": [], "hosted_models": [], "my_vram_gb": 0.0,
        "inflight_requests": 0, "mesh_id": "mesh-test",
        "measured_tps_p50_by_model": {}, "measured_ttft_ms_p50_by_model": {},
        "measured_samples_by_model": {}, "native_tps_p50_by_model": {},
        "native_ttft_ms_p50_by_model": {},
        "peers": [
            peer("aaaaaaaaaa", "desk-4080", "Host", "serving", json!(12), json!({
                "hosted_models": ["Qwen3-8B-Q4_K_M"], "inflight_requests": 1,
                "verify_by_model": {"Qwen3-8B-Q4_K_M": {"verdict": "match", "agreement": 1.0, "compared_tokens": 32, "mode": "observe", "checked_at_unix_secs": FIRST_SERVED}},
            })),
            peer("bbbbbbbbbb", "mac-mini", "Host", "serving", json!(31), json!({
                "vram_gb": 14.5, "hosted_models": ["DeepSeek-R1-Distill-Llama-70B-Q4_K_M"],
                "serving_mode": "split_host", "split_role": "pipeline_host", "split_group": group,
                "verify_by_model": {"DeepSeek-R1-Distill-Llama-70B-Q4_K_M": {"verdict": "mismatch", "agreement": 0.25, "compared_tokens": 16, "mode": "observe", "checked_at_unix_secs": FIRST_SERVED + 60}},
            })),
            peer("cccccccccc", "", "Worker", "serving", Value::Null, json!({
                "vram_gb": 8.6, "serving_mode": "split_worker", "split_role": "pipeline_worker",
                "split_group": group,
            })),
        ],
    })
}

fn share(last_24h: (u64, u64), last_7d: (u64, u64)) -> Value {
    let window = |(mesh, fallback): (u64, u64)| {
        let total = mesh + fallback;
        json!({"mesh": mesh, "fallback": fallback, "total": total,
               "mesh_share_pct": if total == 0 { Value::Null } else { json!(mesh as f64 * 100.0 / total as f64) }})
    };
    json!({"store": "disk", "last_24h": window(last_24h), "last_7d": window(last_7d), "dropped": 0})
}

/// Pages fed from payloads a test can change.
struct FakeSource {
    status: Mutex<Value>,
    catalog: Mutex<Value>,
    share: Mutex<Option<Value>>,
}

impl PageSource for FakeSource {
    fn status(&self) -> StatusPayload {
        serde_json::from_value(self.status.lock().unwrap().clone()).unwrap()
    }

    fn catalog(&self) -> CatalogPayload {
        serde_json::from_value(self.catalog.lock().unwrap().clone()).unwrap()
    }

    fn targets(&self) -> TierTargets {
        TierTargets::default()
    }

    async fn share(&self) -> Option<ShareSnapshot> {
        let s = self.share.lock().unwrap().clone();
        s.map(|v| serde_json::from_value(v).unwrap())
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_secs(FIRST_SERVED + 7_200)
    }
}

async fn page_server(source: Arc<FakeSource>) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let api = Router::new()
        .route(
            "/api/status",
            get(|State(s): State<Arc<FakeSource>>| async move { Json(s.status()) }),
        )
        .route(
            "/api/models",
            get(|State(s): State<Arc<FakeSource>>| async move { Json(s.catalog()) }),
        )
        .route(
            "/api/mesh-share",
            get(|State(s): State<Arc<FakeSource>>| async move {
                match s.share().await {
                    Some(v) => Json(v).into_response(),
                    None => axum::http::StatusCode::NOT_FOUND.into_response(),
                }
            }),
        )
        .with_state(source.clone());
    serve_tcp(api.merge(pages::router(source))).await
}

use axum::response::IntoResponse;

fn source(share_value: Option<Value>) -> Arc<FakeSource> {
    Arc::new(FakeSource {
        status: Mutex::new(status()),
        catalog: Mutex::new(catalog()),
        share: Mutex::new(share_value),
    })
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn displayed(c: &Client, css: &str) -> bool {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .is_displayed()
        .await
        .unwrap()
}

async fn attr(c: &Client, css: &str, name: &str) -> Option<String> {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .attr(name)
        .await
        .unwrap()
}

async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.unwrap().len()
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// The texts of each cell of the rows matching `css`, as displayed.
async fn rows(c: &Client, css: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for row in c.find_all(Locator::Css(css)).await.unwrap() {
        let mut cells = Vec::new();
        for cell in row.find_all(Locator::Css("td")).await.unwrap() {
            cells.push(cell.text().await.unwrap());
        }
        out.push(cells);
    }
    out
}

/// Waits until the page's script has refreshed `n` times.
async fn wait_refreshes(c: &Client, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = js(c, "return Number(document.body.dataset.refreshes || 0)").await;
        if done.as_u64().unwrap_or(0) >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the page refreshed only {done} times"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const ROW_MARKUP: &str = "return ['rows-daily-driver','rows-capacity','rows-experimental','split-rows','verify-rows','peer-rows'].map(id => document.getElementById(id).innerHTML).join('\\n')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_tiers_bands_verdicts_and_toggles_the_capacity_tier() {
    let (addr, _stop) = page_server(source(None)).await;
    let browser = Browser::start().await;
    let c = &browser.client;
    c.goto(&format!("http://{addr}/status?refresh=3600"))
        .await
        .unwrap();
    assert_eq!(c.title().await.unwrap(), "ClosedMesh · Mesh status");
    assert_eq!(text(c, "#peer-count").await, "3 peers");

    let daily = rows(c, "#rows-daily-driver tr").await;
    assert_eq!(
        daily,
        [
            [
                "Qwen3-8B-Q4_K_M",
                "solo · 1 node",
                "5.0 GB",
                "45.26",
                "77.80",
                "58%",
                "82 ms",
                "49 ms",
                "+33 ms",
                "2026-05-24 14:03 UTC"
            ],
            [
                "Llama-3.2-3B-Instruct-Q4_K_M",
                "solo · 1 node",
                "5.0 GB",
                "60.00",
                "—",
                "no measurement yet",
                "40 ms",
                "—",
                "—",
                "—"
            ],
            [
                "Qwen2.5-Coder-7B-Instruct-Q4_K_M",
                "replicas · 2 hosts",
                "5.0 GB",
                "70.00",
                "80.00",
                "88%",
                "51 ms",
                "56 ms",
                "−5 ms",
                "2026-05-24 15:03 UTC"
            ],
        ]
        .map(|r| r.map(String::from).to_vec())
    );
    assert!(displayed(c, r#"tr[data-model="Qwen3-8B-Q4_K_M"]"#).await);
    // Bands: the class, and the colour a person sees.
    let band = |model: &str| format!(r#"tr[data-model="{model}"] .band"#);
    assert_eq!(
        attr(c, &band("Qwen3-8B-Q4_K_M"), "class").await.as_deref(),
        Some("band band-amber")
    );
    assert_eq!(
        attr(c, &band("Llama-3.2-3B-Instruct-Q4_K_M"), "class")
            .await
            .as_deref(),
        Some("band band-none")
    );
    let colour = |model: &str| {
        format!(
            r#"return getComputedStyle(document.querySelector('tr[data-model="{model}"] .band')).backgroundColor"#
        )
    };
    assert_eq!(js(c, &colour("Qwen3-8B-Q4_K_M")).await, "rgb(154, 103, 0)");
    assert_eq!(
        js(c, &colour("Qwen2.5-Coder-7B-Instruct-Q4_K_M")).await,
        "rgb(26, 127, 55)"
    );
    assert_eq!(
        js(c, &colour("Llama-3.2-3B-Instruct-Q4_K_M")).await,
        "rgba(0, 0, 0, 0)"
    );

    // The capacity tier: its honest copy shows; its rows wait behind the toggle.
    assert_eq!(text(c, "#capacity-copy").await, CAPACITY_TIER_COPY);
    assert_eq!(text(c, "#capacity-count").await, "2 models");
    let toggle = c.find(Locator::Id("capacity-toggle")).await.unwrap();
    assert_eq!(toggle.text().await.unwrap(), "show capacity tier");
    assert_eq!(count(c, "#rows-capacity tr").await, 2);
    assert!(!displayed(c, r#"tr[data-model="Qwen3-32B-Q4_K_M"]"#).await);
    toggle.click().await.unwrap();
    assert!(displayed(c, r#"tr[data-model="Qwen3-32B-Q4_K_M"]"#).await);
    assert_eq!(toggle.text().await.unwrap(), "hide capacity tier");
    assert_eq!(
        toggle.attr("aria-expanded").await.unwrap().as_deref(),
        Some("true")
    );
    assert_eq!(
        rows(c, "#rows-capacity tr").await[0],
        [
            "DeepSeek-R1-Distill-Llama-70B-Q4_K_M",
            "pipeline · 3 nodes",
            "42.5 GB",
            "1.09",
            "3.00",
            "36%",
            "24925 ms",
            "9000 ms",
            "+15925 ms",
            "2026-05-23 14:03 UTC"
        ]
        .map(String::from)
    );
    assert_eq!(
        attr(c, &band("DeepSeek-R1-Distill-Llama-70B-Q4_K_M"), "class")
            .await
            .as_deref(),
        Some("band band-red")
    );
    toggle.click().await.unwrap();
    assert!(!displayed(c, r#"tr[data-model="Qwen3-32B-Q4_K_M"]"#).await);
    // Experimental rows show; a cold model says so.
    assert_eq!(
        text(c, r#"tr[data-model="SmolLM2-135M-Instruct.Q4_1"] .serving"#).await,
        "not served"
    );

    assert_eq!(
        rows(c, "#split-rows tr").await,
        [[
            "DeepSeek-R1-Distill-Llama-70B-Q4_K_M",
            "bbbbbbbbbb",
            "bbbbbbbbbb, cccccccccc, dddddddddd",
            "40.3 GB"
        ]
        .map(String::from)
        .to_vec()]
    );
    assert!(!displayed(c, "#splits-empty").await);
    assert_eq!(
        rows(c, "#verify-rows tr").await,
        [
            [
                "aaaaaaaaaa (desk-4080)",
                "Qwen3-8B-Q4_K_M",
                "match",
                "100%",
                "32",
                "observe",
                "2026-05-24 14:03 UTC"
            ],
            [
                "bbbbbbbbbb (mac-mini)",
                "DeepSeek-R1-Distill-Llama-70B-Q4_K_M",
                "mismatch",
                "25%",
                "16",
                "observe",
                "2026-05-24 14:04 UTC"
            ],
        ]
        .map(|r| r.map(String::from).to_vec())
    );
    let peers = rows(c, "#peer-rows tr").await;
    assert_eq!(peers.len(), 3);
    assert_eq!(
        peers[2],
        [
            "cccccccccc",
            "—",
            "Worker",
            "serving",
            "undialable",
            "8.6 GB",
            "—",
            "0"
        ]
        .map(String::from)
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_renders_what_the_server_rendered_then_follows_the_api() {
    let src = source(None);
    let (addr, _stop) = page_server(src.clone()).await;
    let browser = Browser::start().await;
    let c = &browser.client;
    c.goto(&format!("http://{addr}/status?refresh=1"))
        .await
        .unwrap();
    let served = js(c, ROW_MARKUP).await;
    c.find(Locator::Id("capacity-toggle"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_refreshes(c, 1).await;
    assert_eq!(
        js(c, ROW_MARKUP).await,
        served,
        "the script renders the rows as the server does"
    );
    assert!(text(c, "#updated").await.starts_with("updated "));

    // The mesh changes: Llama-3.2-3B gets its native baseline, a peer leaves, a model appears.
    {
        let mut cat = src.catalog.lock().unwrap();
        let row = &mut cat["models"][1];
        row["native_tps_p50"] = json!(64.0);
        row["mesh_efficiency"] = json!({"band": "green", "ratio": 60.0 / 64.0});
        let models = cat["models"].as_array_mut().unwrap();
        models.insert(
            3,
            catalog_row("Qwen3-30B-A3B-Q4_K_M", "capacity", "solo", 1, json!({})),
        );
        let mut st = src.status.lock().unwrap();
        st["peers"].as_array_mut().unwrap().remove(0);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while text(c, "#peer-count").await != "2 peers" {
        assert!(Instant::now() < deadline, "the page never followed the API");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let llama = r#"tr[data-model="Llama-3.2-3B-Instruct-Q4_K_M"]"#;
    assert_eq!(text(c, &format!("{llama} .efficiency")).await, "94%");
    assert_eq!(attr(c, llama, "data-band").await.as_deref(), Some("green"));
    assert_eq!(text(c, "#capacity-count").await, "3 models");
    // Still expanded across refreshes: the new capacity row shows.
    assert!(displayed(c, r#"tr[data-model="Qwen3-30B-A3B-Q4_K_M"]"#).await);
    assert_eq!(rows(c, "#verify-rows tr").await.len(), 1);
    // And the page the server renders now reads the same as the refreshed one.
    let refreshed = js(c, ROW_MARKUP).await;
    c.goto(&format!("http://{addr}/status?refresh=3600"))
        .await
        .unwrap();
    assert_eq!(js(c, ROW_MARKUP).await, refreshed);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_mesh_share_cards_with_counts_and_milestones() {
    let src = source(Some(share((0, 0), (2, 1))));
    let (addr, _stop) = page_server(src.clone()).await;
    let browser = Browser::start().await;
    let c = &browser.client;
    c.goto(&format!("http://{addr}/dashboard?refresh=1"))
        .await
        .unwrap();
    assert_eq!(text(c, "#share-24h .pct").await, "—");
    assert_eq!(text(c, "#share-24h .note").await, "no traffic yet");
    assert_eq!(
        text(c, "#share-24h .counts").await,
        "0 mesh · 0 fallback · 0 total"
    );
    assert_eq!(text(c, "#share-7d .pct").await, "66.7%");
    assert_eq!(
        text(c, "#share-7d .counts").await,
        "2 mesh · 1 fallback · 3 total"
    );
    assert!(!displayed(c, "#share-7d .note").await);
    assert!(!displayed(c, "#share-unavailable").await);
    let milestones: Vec<String> = {
        let mut v = Vec::new();
        for li in c
            .find_all(Locator::Css("#milestone-list li"))
            .await
            .unwrap()
        {
            v.push(li.text().await.unwrap());
        }
        v
    };
    assert_eq!(
        milestones,
        [
            "2026-05-23 14:03 UTC DeepSeek-R1-Distill-Llama-70B-Q4_K_M capacity",
            "2026-05-24 14:03 UTC Qwen3-8B-Q4_K_M daily-driver",
            "2026-05-24 15:03 UTC Qwen2.5-Coder-7B-Instruct-Q4_K_M daily-driver",
        ]
    );

    // The first chat of the day, served by the mesh: 100 %, 1 mesh, 0 fallback, 1 total.
    *src.share.lock().unwrap() = Some(share((1, 0), (3, 1)));
    let deadline = Instant::now() + Duration::from_secs(60);
    while text(c, "#share-24h .pct").await != "100%" {
        assert!(
            Instant::now() < deadline,
            "the dashboard never followed the API"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        text(c, "#share-24h .counts").await,
        "1 mesh · 0 fallback · 1 total"
    );
    assert!(!displayed(c, "#share-24h .note").await);
    assert_eq!(text(c, "#share-7d .pct").await, "75%");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entrys_own_pages_render_its_empty_mesh_and_its_first_counts() {
    let fake = FakeProvider::start().await;
    let provider: Arc<dyn mesh_node::entry::Fallback> = Arc::new(
        mesh_node::fallback::OpenAiProvider::new(mesh_node::fallback::ProviderSettings {
            base_url: fake.base_url.clone(),
            api_key: mesh_node::fallback::ApiKey::parse(PROVIDER_KEY),
            ..Default::default()
        })
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let e = start_entry(
        dir.path(),
        None,
        EntrySettings::default(),
        memory_services(Some(provider), 20),
    )
    .await;
    let router = entry::router(e.clone());
    let (addr, _stop) = serve_tcp(router.clone()).await;
    let browser = Browser::start().await;
    let c = &browser.client;
    c.goto(&format!("http://{addr}/status")).await.unwrap();
    assert!(displayed(c, "#catalog-empty").await);
    assert_eq!(
        text(c, "#catalog-empty").await,
        "No model is served in the mesh yet."
    );
    assert!(!displayed(c, "#tier-capacity").await);
    assert!(displayed(c, "#peers-empty").await);
    assert_eq!(text(c, "#node-id").await, e.status().node_id);

    post(
        &router,
        "/api/chat",
        &chat_body(Some(DAILY), false),
        None,
        "198.51.100.1:1".parse().unwrap(),
    )
    .await;
    e.accounting().flush().await;
    c.goto(&format!("http://{addr}/dashboard")).await.unwrap();
    assert_eq!(text(c, "#share-24h .pct").await, "0%");
    assert_eq!(
        text(c, "#share-24h .counts").await,
        "0 mesh · 1 fallback · 1 total"
    );
    assert!(displayed(c, "#milestones-empty").await);
    browser.close().await;
}
