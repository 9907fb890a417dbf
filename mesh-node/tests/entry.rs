//! The entry's SLA gate and fallback seam, in process: an entry alone in its mesh (real iroh
//! endpoint, relays disabled) has no peer for any model, so every chat is an SLA miss; what it
//! does then depends only on the tier, the mapping and the configured provider.

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use mesh_core::peer::{PeerAnnouncement, Role};
use mesh_core::sla::{FallbackConfig, FallbackDecision};
use mesh_node::clock::Clock;
use mesh_node::config::RelayMode;
use mesh_node::entry::{self, Entry, EntrySettings, Fallback};
use mesh_node::mesh::{ContentSource, Mesh, MeshOptions};
use mesh_node::transport::iroh::{IrohConfig, IrohTransport};
use serde_json::{Map, Value, json};
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

const DAILY: &str = "Qwen3-8B-Q4_K_M";
const CAPACITY: &str = "Qwen3-32B-Q4_K_M";

/// A provider that answers every chat with a fixed body and remembers what it was asked.
struct FakeProvider {
    config: FallbackConfig,
    asked: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Fallback for FakeProvider {
    fn config(&self) -> &FallbackConfig {
        &self.config
    }

    fn chat(
        &self,
        decision: &FallbackDecision,
        request: Map<String, Value>,
    ) -> BoxFuture<'static, Response<Body>> {
        self.asked.lock().unwrap().push((
            decision.provider_model.clone().unwrap_or_default(),
            Value::Object(request),
        ));
        Box::pin(async { Response::new(Body::from(r#"{"from":"provider"}"#)) })
    }
}

async fn lone_entry(
    dir: &std::path::Path,
    fallback: Option<Arc<dyn Fallback>>,
) -> (axum::Router, Arc<Entry>) {
    let secret = [51; 32];
    let t = IrohTransport::bind(secret, IrohConfig::with_relay(RelayMode::Disabled))
        .await
        .unwrap();
    let me = mesh_core::gossip::SecretKey::from_bytes(secret).peer_id();
    let content: ContentSource =
        Arc::new(move || PeerAnnouncement::new(me, String::new(), Role::Client));
    let (mesh, _) = Mesh::start(
        Arc::new(t),
        Clock::system(),
        secret,
        MeshOptions::new(dir, None, 1),
        content,
    )
    .await
    .unwrap();
    let e = Entry::new(mesh, EntrySettings::default(), fallback);
    (entry::router(e.clone()), e)
}

async fn post_chat(
    router: &axum::Router,
    model: &str,
) -> (StatusCode, Vec<(String, String)>, Value) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-closedmesh-"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, serde_json::from_slice(&bytes).unwrap())
}

fn h<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn without_a_provider_an_sla_miss_stays_on_the_mesh_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (router, e) = lone_entry(dir.path(), None).await;
    let (status, headers, body) = post_chat(&router, DAILY).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["reason_code"], "no_peer_with_model");
    assert_eq!(
        headers,
        [
            ("x-closedmesh-served-by", "mesh"),
            ("x-closedmesh-sla-status", "no-peer-with-model"),
            ("x-closedmesh-sla-tier", "daily-driver"),
            ("x-closedmesh-sla-candidates", "0"),
            ("x-closedmesh-fallback-status", "fallback-disabled"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    let status = e.status();
    assert_eq!(status.node_state, mesh_core::status::NodeState::Client);
    assert!(status.peers.is_empty() && status.models.is_empty());
}

#[tokio::test]
async fn with_a_provider_a_daily_driver_miss_falls_back_with_the_fallback_headers() {
    let dir = tempfile::tempdir().unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let provider = FakeProvider {
        config: FallbackConfig {
            api_key_configured: true,
            ..FallbackConfig::default()
        },
        asked: asked.clone(),
    };
    let (router, _) = lone_entry(dir.path(), Some(Arc::new(provider))).await;

    let (status, headers, body) = post_chat(&router, DAILY).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"from": "provider"}));
    assert_eq!(h(&headers, "x-closedmesh-served-by"), Some("fallback"));
    assert_eq!(
        h(&headers, "x-closedmesh-fallback-status"),
        Some("fallback-fired")
    );
    assert_eq!(
        h(&headers, "x-closedmesh-fallback-provider"),
        Some("openrouter")
    );
    assert_eq!(
        h(&headers, "x-closedmesh-fallback-model"),
        Some("qwen/qwen3-8b")
    );
    assert_eq!(
        h(&headers, "x-closedmesh-fallback-budget-remaining"),
        Some("19")
    );
    assert_eq!(
        h(&headers, "x-closedmesh-fallback-trigger"),
        Some("sla-miss")
    );
    assert_eq!(h(&headers, "x-closedmesh-peer"), None);
    assert_eq!(asked.lock().unwrap()[0].0, "qwen/qwen3-8b");

    // A capacity-tier model never falls back: it stays on the mesh (which has no peer for it).
    let (status, headers, body) = post_chat(&router, CAPACITY).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(h(&headers, "x-closedmesh-served-by"), Some("mesh"));
    assert_eq!(h(&headers, "x-closedmesh-sla-tier"), Some("capacity"));
    assert_eq!(
        h(&headers, "x-closedmesh-fallback-status"),
        Some("fallback-wrong-tier")
    );
    assert_eq!(asked.lock().unwrap().len(), 1);
}
