//! Native baselines with the real parts (issue 6, Must-show 2): `mesh-node serve` measures its
//! own llama-server after the settle time (3 samples), keeps the result across a restart
//! without re-measuring, and re-measures when the model file changes. The catalog shows the
//! through-mesh and native numbers side by side, with the first-serve milestone.

mod support;

use serde_json::Value;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{NodeProcess, chat, real_parts};
use tokio::time::Instant;

const SETTLE_S: &str = "1";

fn cache(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("native-baselines.json"))
        .expect("native-baselines.json written");
    serde_json::from_str(&text).unwrap()
}

fn has_baseline(model: &str) -> impl Fn(&Value) -> bool + '_ {
    move |s: &Value| s["native_samples_by_model"][model].as_u64().is_some()
}

#[tokio::test]
async fn baseline_appears_after_settle_survives_a_restart_and_a_touched_model_is_remeasured() {
    let parts = real_parts();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A private copy: touching it must not disturb anyone else's cache of the shared file.
    let model = dir.path().join(format!("{}.gguf", parts.model_name));
    std::fs::copy(&parts.model, &model).unwrap();
    let name = parts.model_name.as_str();
    let extra = ["--baseline-settle-s", SETTLE_S];

    let mut node = NodeProcess::serve(&parts, &model, &data, &extra);
    node.wait_status("hosted", Duration::from_secs(120), |s| {
        s["hosted_models"][0] == name
    })
    .await;
    let ready_at = Instant::now();
    // Settle (1 s) + three 128-token probes 1 s apart: ~6 s on an idle 2-core machine, many
    // times that when other work loads the cores llama-server's two threads run on.
    let s = node
        .wait_status(
            "native baseline",
            Duration::from_secs(120),
            has_baseline(name),
        )
        .await;
    let took = ready_at.elapsed();
    assert_eq!(s["native_samples_by_model"][name], 3, "{s:#}");
    let tps = s["native_tps_p50_by_model"][name].as_f64().unwrap();
    let ttft = s["native_ttft_ms_p50_by_model"][name].as_f64().unwrap();
    eprintln!("native baseline after {took:?}: {tps:.1} tok/s, {ttft:.1} ms TTFT");
    assert!(tps > 1.0 && tps < 10_000.0, "native tok/s {tps}");
    assert!(ttft > 0.0 && ttft < 10_000.0, "native TTFT {ttft} ms");
    assert!(
        took >= Duration::from_secs(1),
        "measured before the settle time: {took:?}"
    );

    let first = cache(&data);
    let record = &first[name];
    assert_eq!(record["samples"], 3, "{first:#}");
    assert!(
        record["runtime_version"]
            .as_str()
            .unwrap()
            .contains("llama-server version"),
        "{record}"
    );
    let fp = &record["fingerprint"];
    assert_eq!(fp["token_ids"].as_array().unwrap().len(), 32, "{fp}");
    assert_eq!(fp["top_k"][0].as_array().unwrap().len(), 5, "{fp}");
    assert_eq!(fp["output_hash"].as_str().unwrap().len(), 64);

    // A chat through the node: the catalog shows both numbers, their ratio and the milestone.
    let resp = reqwest::Client::new()
        .post(node.url("/v1/chat/completions"))
        .json(&chat(name, true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    node.wait_status("through-mesh sample", Duration::from_secs(5), |s| {
        s["measured_samples_by_model"][name] == 1
    })
    .await;
    let catalog = node.get("/api/models").await.unwrap();
    let row = &catalog["models"][0];
    assert_eq!(row["name"], name, "{catalog:#}");
    assert_eq!(row["split_kind"], "solo");
    assert_eq!(row["native_tps_p50"].as_f64().unwrap(), tps);
    let through = row["through_tps_p50"].as_f64().unwrap();
    let ratio = row["mesh_efficiency"]["ratio"].as_f64().unwrap();
    assert!((ratio - through / tps).abs() < 1e-9, "{row}");
    assert!(
        ["green", "amber", "red"].contains(&row["mesh_efficiency"]["band"].as_str().unwrap()),
        "{row}"
    );
    let overhead = row["ttft_overhead_ms"].as_f64().unwrap();
    let through_ttft = row["ttft_ms_p50"].as_f64().unwrap();
    assert!((overhead - (through_ttft - ttft)).abs() < 1e-9, "{row}");
    let served_at = row["first_served_at"].as_u64().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(served_at <= now && served_at + 120 > now, "{row}");
    eprintln!(
        "catalog: through {through:.1} tok/s, efficiency {ratio:.2}, TTFT overhead {overhead:.1} ms"
    );
    node.stop().await;

    // Restart: the cached baseline is published at once and not measured again.
    let mut node = NodeProcess::serve(&parts, &model, &data, &extra);
    let s = node
        .wait_status("hosted again", Duration::from_secs(120), |s| {
            s["hosted_models"][0] == name
        })
        .await;
    assert_eq!(
        s["native_samples_by_model"][name], 3,
        "from the cache: {s:#}"
    );
    assert_eq!(s["native_tps_p50_by_model"][name].as_f64().unwrap(), tps);
    // Well past settle + three probes: nothing was re-measured.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        cache(&data)[name]["measured_at_unix_secs"],
        record["measured_at_unix_secs"],
        "re-measured after a restart:\n{}",
        node.log()
    );
    let catalog = node.get("/api/models").await.unwrap();
    assert_eq!(
        catalog["models"][0]["first_served_at"], served_at,
        "the milestone survives the restart"
    );
    assert_eq!(
        catalog["models"][0]["mesh_efficiency"]["band"], "no_measurement_yet",
        "no through-mesh sample in this run yet: {catalog:#}"
    );

    // Touch the model file: the collector sees the new mtime and measures again.
    let touched = SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&model)
        .unwrap()
        .set_modified(touched)
        .unwrap();
    let touched_nanos = touched.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = cache(&data);
        if c[name]["model_mtime_unix_nanos"].as_u64() == Some(touched_nanos) {
            assert_eq!(c[name]["samples"], 3, "{c:#}");
            assert!(c[name]["fingerprint"].is_object(), "{c:#}");
            assert_eq!(
                c[name]["fingerprint"], record["fingerprint"],
                "same file contents, same greedy decode"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not re-measured after touching the model:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = node.log();
    assert_eq!(
        log.matches("native baseline published").count(),
        // Run 1: measured. Run 2: the cached value, the touched file's interim (no
        // fingerprint), then the fresh measurement.
        4,
        "{log}"
    );
    node.stop().await;
}
