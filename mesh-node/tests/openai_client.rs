//! The PyPI `openai` client (from `scripts/setup-real-parts.sh`'s venv, `CLOSEDMESH_PYTHON`) as
//! the external caller of an entry with inference API keys: the SDK parses the mesh-served and
//! the provider-served streams alike (the protocol is identical on both paths), reads the
//! `x-closedmesh-*` headers, lists models without a key, and gets a 401 for a wrong or missing
//! key. Fails, never skips, without the client.

mod harness;

use harness::*;
use mesh_node::auth::ApiKeys;
use mesh_node::entry::{self, EntrySettings, Fallback};
use mesh_node::fallback::{ApiKey, OpenAiProvider, ProviderSettings};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const API_KEY: &str = "sk-closedmesh-test-1";
const FALLBACK_MODEL: &str = "Llama-3.2-3B-Instruct-Q4_K_M";

fn python() -> PathBuf {
    let py = required_binary("CLOSEDMESH_PYTHON", "python3");
    let ok = Command::new(&py)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import openai: run `eval \"$(scripts/setup-real-parts.sh)\"`",
        py.display()
    );
    py
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_reads_mesh_and_fallback_answers_alike() {
    let py = python();
    let fake = FakeProvider::start().await;
    let host = FakeHost::start(DAILY, Some((82.0, 45.26))).await;
    let fallback: Arc<dyn Fallback> = Arc::new(
        OpenAiProvider::new(ProviderSettings {
            base_url: fake.base_url.clone(),
            api_key: ApiKey::parse(PROVIDER_KEY),
            ..ProviderSettings::default()
        })
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let settings = EntrySettings {
        api_keys: ApiKeys::from_keys([API_KEY, "sk-closedmesh-test-2"]),
        ..EntrySettings::default()
    };
    let e = start_entry(
        dir.path(),
        Some(host.invite()),
        settings,
        memory_services(Some(fallback), 20),
    )
    .await;
    wait_routable(&e, DAILY, Duration::from_secs(60)).await;
    let (addr, _stop) = serve_tcp(entry::router(e.clone())).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_client.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script)
            .args([&format!("http://{addr}"), API_KEY, DAILY, FALLBACK_MODEL])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "openai client script failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(v["mesh_stream"]["text"], "Hi from the mesh.");
    assert_eq!(
        v["mesh_stream"]["headers"]["x-closedmesh-served-by"],
        "mesh"
    );
    assert_eq!(
        v["mesh_stream"]["headers"]["x-closedmesh-sla-status"],
        "meets-sla"
    );
    assert_eq!(v["fallback_stream"]["text"], "Hello from the provider.");
    assert_eq!(v["fallback_stream"]["chunks"], 3);
    let fh = &v["fallback_stream"]["headers"];
    assert_eq!(fh["x-closedmesh-served-by"], "fallback");
    assert_eq!(fh["x-closedmesh-sla-status"], "no-peer-with-model");
    assert_eq!(
        fh["x-closedmesh-fallback-model"],
        "meta-llama/llama-3.2-3b-instruct"
    );
    assert_eq!(fh["x-closedmesh-fallback-budget-remaining"], "19");
    assert_eq!(v["fallback_whole"]["text"], "Hello from the provider.");
    assert_eq!(v["fallback_whole"]["usage"], 4);
    assert_eq!(
        v["fallback_whole"]["headers"]["x-closedmesh-fallback-budget-remaining"],
        "18"
    );
    // /api/chat without a model: the daily driver, from the mesh.
    assert_eq!(v["api_chat_stream"], "Hi from the mesh.");
    assert_eq!(v["models"], serde_json::json!([DAILY]));
    assert_eq!(v["wrong_key"]["status"], 401);
    assert_eq!(v["wrong_key"]["code"], "invalid_api_key");
    assert_eq!(v["wrong_key"]["body"]["reason_code"], "invalid_api_key");
    assert_eq!(v["no_key"]["status"], 401);
    assert_eq!(
        v["no_key"]["json"]["error"]["reason_code"],
        "missing_api_key"
    );
    assert_eq!(v["no_key"]["www_authenticate"], "Bearer");
    // Refused chats reached neither the mesh nor the provider.
    assert_eq!(host.chats(), 2);
    assert_eq!(fake.asked().len(), 2);

    e.accounting().flush().await;
    let share = e.share().await.unwrap();
    assert_eq!((share.last_24h.mesh, share.last_24h.fallback), (2, 2));
    let metrics =
        String::from_utf8(get(&entry::router(e), "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(r#"closedmesh_auth_refusals_total{reason_code="invalid_api_key"} 1"#)
            && metrics
                .contains(r#"closedmesh_auth_refusals_total{reason_code="missing_api_key"} 1"#),
        "{metrics}"
    );
    host.shutdown().await;
}
