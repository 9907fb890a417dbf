//! The entry's external-provider fallback end to end, in process: a real [`OpenAiProvider`]
//! client against an OpenAI-compatible test double over loopback TCP, and real iroh meshes
//! (relays off) with an in-process host. Pins: what fires it (an SLA miss; every mesh target
//! failing before the first token), what keeps a chat on the mesh (tier, mapping, key, the
//! per-IP budget), that the stream reaches the caller unchanged and unbuffered, that the
//! `x-closedmesh-*` headers are on every response of both chat endpoints, and that every answered
//! chat is counted by served-by.

mod harness;

use axum::http::StatusCode;
use harness::*;
use mesh_core::sla::TierCatalog;
use mesh_node::entry::{self, EntrySettings, Fallback};
use mesh_node::fallback::{ApiKey, FallbackFile, OpenAiProvider, ProviderSettings};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const CALLER: &str = "203.0.113.7:50000";

fn caller() -> SocketAddr {
    CALLER.parse().unwrap()
}

fn provider(base_url: &str, per_ip_per_hour: u32) -> Arc<dyn Fallback> {
    let settings = ProviderSettings {
        base_url: base_url.to_string(),
        api_key: ApiKey::parse(PROVIDER_KEY),
        per_ip_per_hour,
        ..ProviderSettings::default()
    };
    Arc::new(OpenAiProvider::new(settings).unwrap())
}

fn has_every_sla_header(a: &Answer) {
    for h in [
        "x-closedmesh-served-by",
        "x-closedmesh-sla-status",
        "x-closedmesh-sla-tier",
        "x-closedmesh-sla-candidates",
        "x-closedmesh-fallback-status",
    ] {
        assert!(a.header(h).is_some(), "{h} missing: {:?}", a.headers);
    }
}

#[tokio::test]
async fn an_sla_miss_streams_the_providers_answer_unchanged_with_every_header() {
    let fake = FakeProvider::start().await;
    fake.set_mode(ProviderMode::HoldAfterFirst);
    let dir = tempfile::tempdir().unwrap();
    let e = start_entry(
        dir.path(),
        None,
        EntrySettings::default(),
        memory_services(Some(provider(&fake.base_url, 20)), 20),
    )
    .await;
    let (addr, _stop) = serve_tcp(entry::router(e.clone())).await;

    // Over real TCP, so what arrives when is what a caller sees.
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/api/chat"))
        .json(&chat_body(Some(DAILY), true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(h("x-closedmesh-served-by").as_deref(), Some("fallback"));
    assert_eq!(
        h("x-closedmesh-sla-status").as_deref(),
        Some("no-peer-with-model")
    );
    assert_eq!(h("x-closedmesh-sla-tier").as_deref(), Some("daily-driver"));
    assert_eq!(h("x-closedmesh-sla-candidates").as_deref(), Some("0"));
    assert_eq!(
        h("x-closedmesh-fallback-status").as_deref(),
        Some("fallback-fired")
    );
    assert_eq!(
        h("x-closedmesh-fallback-provider").as_deref(),
        Some("openrouter")
    );
    assert_eq!(
        h("x-closedmesh-fallback-model").as_deref(),
        Some("qwen/qwen3-8b")
    );
    assert_eq!(
        h("x-closedmesh-fallback-budget-remaining").as_deref(),
        Some("19")
    );
    assert_eq!(
        h("x-closedmesh-fallback-trigger").as_deref(),
        Some("sla-miss")
    );
    assert_eq!(h("x-closedmesh-model").as_deref(), Some(DAILY));
    assert_eq!(h("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(h("x-accel-buffering").as_deref(), Some("no"));

    let mut body = resp.bytes_stream();
    use futures::StreamExt;
    // The provider holds its second chunk until the first has reached the caller: a buffering
    // entry would never deliver it (the generous limit only turns that hang into a failure).
    let expected_first = provider_chunks("qwen/qwen3-8b")[0].clone();
    let mut all = Vec::new();
    while all.len() < expected_first.len() {
        let chunk = tokio::time::timeout(Duration::from_secs(60), body.next())
            .await
            .expect("the first chunk is held back: the entry buffers the provider's stream")
            .expect("the stream ended before the provider was released")
            .unwrap();
        all.extend_from_slice(&chunk);
    }
    assert_eq!(
        String::from_utf8(all.clone()).unwrap(),
        expected_first,
        "the first chunk arrives alone, before the provider sends the rest"
    );
    fake.release();
    while let Some(chunk) = body.next().await {
        all.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(
        String::from_utf8(all).unwrap(),
        provider_chunks("qwen/qwen3-8b").concat(),
        "the provider's stream reaches the caller byte for byte"
    );

    let asked = fake.asked();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        asked[0].authorization.as_deref(),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    // Only the model is rewritten; the caller's request is passed as it came.
    let mut expected = chat_body(Some("qwen/qwen3-8b"), true);
    expected["model"] = json!("qwen/qwen3-8b");
    assert_eq!(asked[0].body, expected);

    e.accounting().flush().await;
    let share = e.share().await.unwrap();
    assert_eq!(
        (
            share.last_24h.mesh,
            share.last_24h.fallback,
            share.last_24h.mesh_share_pct
        ),
        (0, 1, Some(0.0))
    );
}

#[tokio::test]
async fn non_streaming_fallback_returns_the_providers_json_on_both_endpoints() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let e = start_entry(
        dir.path(),
        None,
        EntrySettings::default(),
        memory_services(Some(provider(&fake.base_url, 20)), 20),
    )
    .await;
    let router = entry::router(e.clone());
    for path in ["/v1/chat/completions", "/api/chat"] {
        let a = post(
            &router,
            path,
            &chat_body(Some(DAILY), false),
            None,
            caller(),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(a.json(), provider_json("qwen/qwen3-8b"), "{path}");
        assert_eq!(a.content_type.as_deref(), Some("application/json"));
        has_every_sla_header(&a);
        assert_eq!(a.header("x-closedmesh-served-by"), Some("fallback"));
    }
}

#[tokio::test]
async fn over_budget_callers_stay_on_the_mesh_and_other_callers_keep_theirs() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let e = start_entry(
        dir.path(),
        None,
        EntrySettings::default(),
        memory_services(Some(provider(&fake.base_url, 2)), 2),
    )
    .await;
    let router = entry::router(e.clone());
    let chat = || chat_body(Some(DAILY), false);
    let a = post(&router, "/api/chat", &chat(), None, caller()).await;
    assert_eq!(
        a.header("x-closedmesh-fallback-budget-remaining"),
        Some("1")
    );
    let a = post(&router, "/api/chat", &chat(), None, caller()).await;
    assert_eq!(
        a.header("x-closedmesh-fallback-budget-remaining"),
        Some("0")
    );

    // The third stays on the mesh, which has no peer for the model: its error, with headers.
    let a = post(&router, "/api/chat", &chat(), None, caller()).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json()["error"]["reason_code"], "no_peer_with_model");
    assert_eq!(
        a.headers,
        [
            ("x-closedmesh-served-by", "mesh"),
            ("x-closedmesh-sla-status", "no-peer-with-model"),
            ("x-closedmesh-sla-tier", "daily-driver"),
            ("x-closedmesh-sla-candidates", "0"),
            ("x-closedmesh-fallback-status", "fallback-rate-limited"),
            ("x-closedmesh-model", DAILY),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    // Another caller (a different /64) still has its budget.
    let other: SocketAddr = "[2001:db8:5::1]:1".parse().unwrap();
    let a = post(&router, "/api/chat", &chat(), None, other).await;
    assert_eq!(a.header("x-closedmesh-served-by"), Some("fallback"));
    assert_eq!(fake.asked().len(), 3);

    // Refusals served nobody: only the three answered chats are counted.
    e.accounting().flush().await;
    let share = e.share().await.unwrap();
    assert_eq!((share.last_24h.fallback, share.last_24h.mesh), (3, 0));
    let metrics = String::from_utf8(get(&router, "/metrics").await.body.to_vec()).unwrap();
    for line in [
        r#"closedmesh_chat_requests_total{served_by="fallback",model="Qwen3-8B-Q4_K_M",status="200"} 3"#,
        r#"closedmesh_chat_requests_total{served_by="mesh",model="other",status="404"} 1"#,
        r#"closedmesh_fallback_decisions_total{fallback_status="fallback-rate-limited",trigger="sla-miss"} 1"#,
        r#"closedmesh_fallback_decisions_total{fallback_status="fallback-fired",trigger="sla-miss"} 3"#,
        r#"closedmesh_sla_evaluations_total{model="other",tier="daily-driver",sla_status="no-peer-with-model"} 1"#,
        r#"closedmesh_mesh_share_pct{window="24h"} 0.0"#,
        r#"closedmesh_mesh_share_requests{window="7d",served_by="fallback"} 3"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn policy_keeps_capacity_unmapped_and_keyless_chats_on_the_mesh() {
    let fake = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mapped_smol = ProviderSettings::resolve(
        toml::from_str::<FallbackFile>(
            r#"
base_url = "http://127.0.0.1:1/v1"
[model_map]
"Llama-3.2-3B-Instruct" = "meta-llama/llama-3.2-3b-instruct"
"#,
        )
        .unwrap(),
        Some(fake.base_url.clone()),
        Some(PROVIDER_KEY.into()),
        None,
    )
    .unwrap();
    let e = start_entry(
        dir.path(),
        None,
        EntrySettings::default(),
        memory_services(
            Some(Arc::new(OpenAiProvider::new(mapped_smol).unwrap())),
            20,
        ),
    )
    .await;
    let router = entry::router(e);
    let status = |a: &Answer| {
        a.header("x-closedmesh-fallback-status")
            .unwrap()
            .to_string()
    };
    let a = post(
        &router,
        "/v1/chat/completions",
        &chat_body(Some(CAPACITY), false),
        None,
        caller(),
    )
    .await;
    assert_eq!(status(&a), "fallback-wrong-tier");
    // Qwen3-8B is daily-driver, but this deployment maps only Llama-3.2-3B.
    let a = post(
        &router,
        "/v1/chat/completions",
        &chat_body(Some(DAILY), false),
        None,
        caller(),
    )
    .await;
    assert_eq!(status(&a), "fallback-no-mapping");
    let a = post(
        &router,
        "/v1/chat/completions",
        &chat_body(Some("Llama-3.2-3B-Instruct-Q4_K_M"), false),
        None,
        caller(),
    )
    .await;
    assert_eq!(status(&a), "fallback-fired");
    assert_eq!(
        a.header("x-closedmesh-fallback-model"),
        Some("meta-llama/llama-3.2-3b-instruct")
    );
    assert_eq!(fake.asked().len(), 1);

    // Without a key: disabled, even for a mapped daily driver.
    let keyless = ProviderSettings {
        base_url: fake.base_url.clone(),
        ..ProviderSettings::default()
    };
    let dir2 = tempfile::tempdir().unwrap();
    let e = start_entry(
        dir2.path(),
        None,
        EntrySettings::default(),
        memory_services(Some(Arc::new(OpenAiProvider::new(keyless).unwrap())), 20),
    )
    .await;
    let a = post(
        &entry::router(e),
        "/api/chat",
        &chat_body(Some(DAILY), false),
        None,
        caller(),
    )
    .await;
    assert_eq!(status(&a), "fallback-disabled");
    assert_eq!(a.header("x-closedmesh-served-by"), Some("mesh"));
    assert_eq!(fake.asked().len(), 1);
}

#[tokio::test]
async fn a_failing_provider_is_a_clear_error_that_never_leaks_its_body() {
    let fake = FakeProvider::start().await;
    fake.set_mode(ProviderMode::Fail(StatusCode::PAYMENT_REQUIRED));
    let dir = tempfile::tempdir().unwrap();
    let e = start_entry(
        dir.path(),
        None,
        EntrySettings::default(),
        memory_services(Some(provider(&fake.base_url, 20)), 20),
    )
    .await;
    let router = entry::router(e.clone());
    let a = post(
        &router,
        "/api/chat",
        &chat_body(Some(DAILY), true),
        None,
        caller(),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.json()["error"]["reason_code"], "fallback_provider_error");
    assert!(!String::from_utf8_lossy(&a.body).contains("1234"));
    assert_eq!(a.header("x-closedmesh-served-by"), Some("fallback"));
    assert_eq!(
        a.header("x-closedmesh-fallback-status"),
        Some("fallback-fired")
    );

    // Unreachable provider.
    let gone = provider("http://127.0.0.1:9/v1", 20);
    let dir2 = tempfile::tempdir().unwrap();
    let e2 = start_entry(
        dir2.path(),
        None,
        EntrySettings::default(),
        memory_services(Some(gone), 20),
    )
    .await;
    let a = post(
        &entry::router(e2),
        "/api/chat",
        &chat_body(Some(DAILY), false),
        None,
        caller(),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.json()["error"]["reason_code"], "fallback_provider_error");

    // Neither answered anyone: nothing counted.
    e.accounting().flush().await;
    assert_eq!(e.share().await.unwrap().last_7d.total, 0);
}

#[tokio::test]
async fn mesh_meeting_the_sla_serves_and_when_every_target_fails_first_the_provider_does() {
    let fake = FakeProvider::start().await;
    // A host whose gossiped p50s meet the daily-driver SLA (82 ms, 45.26 tok/s).
    let host = FakeHost::start(DAILY, Some((82.0, 45.26))).await;
    let dir = tempfile::tempdir().unwrap();
    let e = start_entry(
        dir.path(),
        Some(host.invite()),
        EntrySettings::default(),
        memory_services(Some(provider(&fake.base_url, 20)), 20),
    )
    .await;
    wait_routable(&e, DAILY, Duration::from_secs(60)).await;
    let router = entry::router(e.clone());

    // The mesh serves; /api/chat with no model lands on the daily driver.
    let a = post(&router, "/api/chat", &chat_body(None, true), None, caller()).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.header("x-closedmesh-model"), Some(DAILY));
    assert_eq!(a.header("x-closedmesh-served-by"), Some("mesh"));
    assert_eq!(a.header("x-closedmesh-sla-status"), Some("meets-sla"));
    assert_eq!(a.header("x-closedmesh-sla-candidates"), Some("1"));
    assert_eq!(a.header("x-closedmesh-sla-best-ttft-ms"), Some("82"));
    assert_eq!(a.header("x-closedmesh-sla-best-tps"), Some("45.26"));
    assert_eq!(
        a.header("x-closedmesh-fallback-status"),
        Some("mesh-meets-sla")
    );
    assert_eq!(a.header("x-closedmesh-fallback-provider"), None);
    assert_eq!(
        a.header("x-closedmesh-peer"),
        Some(host.mesh.me().short().as_str())
    );
    assert_eq!(
        String::from_utf8(a.body.to_vec()).unwrap(),
        host_chunks(DAILY).concat()
    );
    assert_eq!(host.chats(), 1);

    // The host now fails before its first byte: after the mesh, the provider answers.
    host.set_mode(HostMode::Fail(StatusCode::SERVICE_UNAVAILABLE));
    let a = post(
        &router,
        "/v1/chat/completions",
        &chat_body(Some(DAILY), true),
        None,
        caller(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(host.chats(), 2);
    assert_eq!(a.header("x-closedmesh-served-by"), Some("fallback"));
    assert_eq!(a.header("x-closedmesh-sla-status"), Some("meets-sla"));
    assert_eq!(
        a.header("x-closedmesh-fallback-status"),
        Some("fallback-fired")
    );
    assert_eq!(
        a.header("x-closedmesh-fallback-trigger"),
        Some("mesh-failed-before-first-token")
    );
    assert_eq!(
        a.header("x-closedmesh-fallback-budget-remaining"),
        Some("19")
    );
    assert_eq!(
        String::from_utf8(a.body.to_vec()).unwrap(),
        provider_chunks("qwen/qwen3-8b").concat()
    );

    // One mesh, one fallback: 50 %. The mesh-served model has its first-serve milestone.
    e.accounting().flush().await;
    let share = e.share().await.unwrap();
    assert_eq!((share.last_24h.mesh, share.last_24h.fallback), (1, 1));
    assert_eq!(share.last_24h.mesh_share_pct, Some(50.0));
    let catalog = e.catalog();
    let row = catalog.models.iter().find(|r| r.name == DAILY).unwrap();
    assert!(row.first_served_at.is_some(), "{row:?}");
    let metrics = String::from_utf8(get(&router, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(
            r#"closedmesh_model_first_served_timestamp_seconds{model="Qwen3-8B-Q4_K_M"}"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("closedmesh_gossip_peers 1"), "{metrics}");
    assert!(
        metrics.contains(r#"closedmesh_chat_requests_total{served_by="mesh",model="Qwen3-8B-Q4_K_M",status="200"} 1"#),
        "{metrics}"
    );
    host.shutdown().await;
}

#[tokio::test]
async fn api_chat_default_never_lands_on_a_capacity_model_and_says_why() {
    let host = FakeHost::start(CAPACITY, Some((24_925.0, 1.09))).await;
    let dir = tempfile::tempdir().unwrap();
    let e = start_entry(
        dir.path(),
        Some(host.invite()),
        EntrySettings::default(),
        memory_services(None, 20),
    )
    .await;
    wait_routable(&e, CAPACITY, Duration::from_secs(60)).await;
    let router = entry::router(e.clone());
    let a = post(
        &router,
        "/api/chat",
        &chat_body(None, false),
        None,
        caller(),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        a.json()["error"]["reason_code"],
        "only_capacity_tier_served"
    );
    // Named explicitly, it is served, and the headers carry the original's 70B reading shape.
    let a = post(
        &router,
        "/api/chat",
        &chat_body(Some(CAPACITY), true),
        None,
        caller(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("x-closedmesh-sla-status"), Some("ttft-too-high"));
    assert_eq!(a.header("x-closedmesh-sla-tier"), Some("capacity"));
    assert_eq!(a.header("x-closedmesh-sla-best-ttft-ms"), Some("24925"));
    assert_eq!(a.header("x-closedmesh-sla-best-tps"), Some("1.09"));
    assert_eq!(
        a.header("x-closedmesh-fallback-status"),
        Some("fallback-wrong-tier")
    );
    assert_eq!(a.header("x-closedmesh-served-by"), Some("mesh"));

    // An operator pin that is a daily driver wins only if served; a tier override can make
    // any served model the default.
    let dir2 = tempfile::tempdir().unwrap();
    let mut settings = EntrySettings::default();
    settings.sla.catalog =
        TierCatalog::with_overrides([(CAPACITY, mesh_core::sla::Tier::DailyDriver)]);
    let e2 = start_entry(
        dir2.path(),
        Some(host.invite()),
        settings,
        memory_services(None, 20),
    )
    .await;
    wait_routable(&e2, CAPACITY, Duration::from_secs(60)).await;
    let a = post(
        &entry::router(e2),
        "/api/chat",
        &chat_body(None, false),
        None,
        caller(),
    )
    .await;
    assert_eq!(a.header("x-closedmesh-model"), Some(CAPACITY));
    assert_eq!(a.header("x-closedmesh-sla-tier"), Some("daily-driver"));
    host.shutdown().await;
}
