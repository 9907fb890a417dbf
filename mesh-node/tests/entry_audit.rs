//! The entry's audit loop with real parts (SPEC §7): a `mesh-node entry` that also serves
//! SmolLM2 (`--model`, its own llama-server is the ground truth) audits a `mesh-node serve` peer
//! that advertises the same model, over iroh on loopback.
//!
//! - an honest peer serving the same GGUF is matched;
//! - a peer serving a cheaper quantisation of it (Q4_0 made from the Q4_1 file with
//!   `llama-quantize --allow-requantize`) under the same model name is found out: mismatch; in
//!   enforce mode repeated mismatches take it out of rotation and the entry serves the chats.
//!
//! Real llama-server, rpc-server, llama-quantize and SmolLM2 are required: these tests fail,
//! never skip, without them. Both tests take the same lock: two meshes at once would
//! oversubscribe a 2-core machine (4 llama-servers).

mod support;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{NodeProcess, RealParts, free_port, real_parts};
use tokio::sync::Mutex;
use tokio::time::Instant;

static ONE_MESH_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// `mesh-node entry` founding a mesh, serving `model` itself and auditing every ~`interval_s`.
fn entry(
    parts: &RealParts,
    model: &Path,
    data_dir: &Path,
    interval_s: &str,
    mode: &str,
) -> NodeProcess {
    let api = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_mesh-node"))
        .args([
            "entry",
            "--relay",
            "disabled",
            "--api-addr",
            &api.to_string(),
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--model")
        .arg(model)
        .arg("--llama-server")
        .arg(&parts.llama_server)
        .arg("--rpc-server")
        .arg(&parts.rpc_server)
        .args(["--llama-threads", "1", "--audit-interval-s", interval_s])
        .args(["--verify-mode", mode])
        // No native baselines mid-test: their probes would only add load to two cores.
        .args(["--baseline-settle-s", "3600"])
        .env("CLOSEDMESH_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mesh-node entry");
    NodeProcess {
        child,
        api,
        data_dir: data_dir.to_path_buf(),
    }
}

/// `mesh-node entry` without a model, joining with `invite`, auditing every ~`interval_s`.
fn plain_entry(data_dir: &Path, invite: &str, interval_s: &str) -> NodeProcess {
    let api = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_mesh-node"))
        .args([
            "entry",
            "--relay",
            "disabled",
            "--api-addr",
            &api.to_string(),
            "--audit-interval-s",
            interval_s,
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("CLOSEDMESH_JOIN", invite)
        .env("CLOSEDMESH_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mesh-node entry");
    NodeProcess {
        child,
        api,
        data_dir: data_dir.to_path_buf(),
    }
}

fn quantize_tool() -> PathBuf {
    let path = std::env::var_os("CLOSEDMESH_LLAMA_QUANTIZE")
        .map(PathBuf::from)
        .expect(
            "CLOSEDMESH_LLAMA_QUANTIZE is not set: run `eval \"$(scripts/setup-real-parts.sh)\"`",
        );
    assert!(path.is_file(), "{} does not exist", path.display());
    path
}

/// A cheaper quantisation of `model` at `dir/<same file name>`, so it advertises the same name.
fn cheaper_copy(model: &Path, dir: &Path, quant: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join(model.file_name().unwrap());
    let result = Command::new(quantize_tool())
        .arg("--allow-requantize")
        .arg(model)
        .arg(&out)
        .args([quant, "1"])
        .output()
        .expect("run llama-quantize");
    assert!(
        result.status.success(),
        "llama-quantize {quant}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

async fn wait_file(path: &Path, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return text.trim().to_string();
        }
        assert!(Instant::now() < deadline, "{} not written", path.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn short_id(data_dir: &Path) -> String {
    let text = std::fs::read_to_string(data_dir.join("secret-key")).unwrap();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).unwrap();
    mesh_core::gossip::SecretKey::from_bytes(bytes)
        .peer_id()
        .short()
}

fn row<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["peers"].as_array()?.iter().find(|p| p["id"] == id)
}

fn routable(status: &Value, id: &str, model: &str) -> bool {
    row(status, id).is_some_and(|r| r["hosted_models"] == json!([model]) && r["rtt_ms"].is_u64())
}

/// Sends a small chat to the entry; the peer that served it.
async fn send(entry: &NodeProcess, model: &str, i: usize) -> String {
    let body = json!({
        "model": model,
        "stream": false,
        "max_tokens": 8,
        "temperature": 0,
        "messages": [{"role": "user", "content": format!("Say hello, number {i}.")}],
    });
    let resp = reqwest::Client::new()
        .post(entry.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let peer = resp
        .headers()
        .get("x-closedmesh-peer")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "{text}\n{}", entry.log());
    peer
}

/// The lines of the entry's log that report verdicts.
fn verdict_lines(entry: &NodeProcess) -> Vec<String> {
    entry
        .log()
        .lines()
        .filter(|l| l.contains("audit verdict"))
        .map(str::to_string)
        .collect()
}

/// An entry serving SmolLM2 Q4_1 (verify mode `mode`) and a peer serving `peer_model` under the
/// same name; returns the entry's first decided `verify_by_model` row for the peer, and the
/// verdict log lines. In enforce mode it also waits for the peer's demotion and checks that
/// chats then avoid it.
async fn audit_once(peer_model: impl FnOnce(&Path) -> PathBuf, mode: &str) -> (Value, Vec<String>) {
    let _one = ONE_MESH_AT_A_TIME.lock().await;
    let parts = real_parts();
    let model = parts.model_name.clone();
    let dir = tempfile::tempdir().unwrap();
    let (e_dir, p_dir) = (dir.path().join("entry"), dir.path().join("peer"));
    let peer_file = peer_model(dir.path());

    let mut e = entry(&parts, &parts.model, &e_dir, "3", mode);
    wait_file(&e_dir.join("invite.txt"), Duration::from_secs(60)).await;
    e.wait_status("the entry serving", Duration::from_secs(180), |s| {
        s["hosted_models"] == json!([model])
    })
    .await;
    let join = format!("@{}", e_dir.join("invite.txt").display());
    let mut p = NodeProcess::serve(
        &parts,
        &peer_file,
        &p_dir,
        &["--join", &join, "--baseline-settle-s", "3600"],
    );
    wait_file(&p_dir.join("secret-key"), Duration::from_secs(60)).await;
    let p_id = short_id(&p_dir);
    e.wait_status(
        "the peer in the entry's view",
        Duration::from_secs(120),
        |s| row(s, &p_id).is_some(),
    )
    .await;
    // The entry serves the model already; only demand (>= 10 chats a minute at the entry)
    // makes the peer a second host. Chats the entry routes to itself go in-process.
    for i in 0..12 {
        let peer = send(&e, &model, i).await;
        assert!(!peer.is_empty(), "a chat without x-closedmesh-peer");
    }
    e.wait_status(
        "the peer a second host of the model",
        Duration::from_secs(240),
        |s| routable(s, &p_id, &model),
    )
    .await;
    // Audits every ~3 s: the sequential test decides in a few probes either way.
    let status = e
        .wait_status(
            "a decided verdict on the peer",
            Duration::from_secs(420),
            |s| {
                row(s, &p_id)
                    .and_then(|r| r["verify_by_model"][&model]["verdict"].as_str())
                    .is_some_and(|v| v == "match" || v == "mismatch")
            },
        )
        .await;
    let verdict = row(&status, &p_id).unwrap()["verify_by_model"][&model].clone();
    // The entry's /status page shows the row too.
    let page = reqwest::get(e.url("/status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!(r#"data-peer="{p_id}""#)) && page.contains("verify-row"),
        "no verification row for {p_id} on /status"
    );
    if mode == "enforce" {
        // Two consecutive mismatches take the pair out of rotation; the entry (also a host of
        // the model) then serves every chat itself.
        let deadline = Instant::now() + Duration::from_secs(300);
        while !e.log().contains("out of rotation") {
            assert!(
                Instant::now() < deadline,
                "no demotion in enforce mode:\n{}",
                e.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let e_id = short_id(&e_dir);
        for i in 0..6 {
            let peer = send(&e, &model, 100 + i).await;
            assert_eq!(peer, e_id, "a chat went to the demoted peer {p_id}");
        }
    }
    let lines = verdict_lines(&e);
    eprintln!("verify_by_model of the peer: {verdict}");
    for l in &lines {
        eprintln!("{l}");
    }
    p.stop().await;
    e.stop().await;
    (verdict, lines)
}

#[tokio::test]
async fn an_entry_serving_the_model_matches_an_honest_peer_serving_the_same_gguf() {
    let parts = real_parts();
    let model = parts.model.clone();
    let (verdict, lines) = audit_once(move |_| model, "observe").await;
    assert_eq!(verdict["verdict"], "match", "{verdict:#}");
    assert_eq!(verdict["mode"], "observe");
    assert!(verdict["compared_tokens"].as_u64() > Some(0), "{verdict:#}");
    assert!(
        lines.iter().any(|l| l.contains("Match")),
        "one log line per verdict: {lines:#?}"
    );
}

#[tokio::test]
async fn an_entry_serving_the_model_finds_and_in_enforce_mode_sidelines_a_peer_serving_a_cheaper_quant()
 {
    let parts = real_parts();
    let model = parts.model.clone();
    let (verdict, lines) = audit_once(
        move |dir| cheaper_copy(&model, &dir.join("q4_0"), "Q4_0"),
        "enforce",
    )
    .await;
    assert_eq!(verdict["verdict"], "mismatch", "{verdict:#}");
    assert_eq!(verdict["mode"], "enforce");
    assert!(verdict["agreement"].as_f64() < Some(1.0), "{verdict:#}");
    assert!(
        lines.iter().any(|l| l.contains("Mismatch")),
        "one log line per verdict: {lines:#?}"
    );
}

#[tokio::test]
async fn an_entry_without_the_model_checks_a_peer_against_its_published_fingerprint() {
    let _one = ONE_MESH_AT_A_TIME.lock().await;
    let parts = real_parts();
    let model = parts.model_name.clone();
    let dir = tempfile::tempdir().unwrap();
    let (p_dir, e_dir) = (dir.path().join("peer"), dir.path().join("entry"));
    // The peer measures its native baseline at once: its fixed-probe fingerprint is published.
    let mut p = NodeProcess::serve(&parts, &parts.model, &p_dir, &["--baseline-settle-s", "1"]);
    let invite = wait_file(&p_dir.join("invite.txt"), Duration::from_secs(60)).await;
    p.wait_status(
        "the peer serving with a native baseline",
        Duration::from_secs(240),
        |s| s["native_tps_p50_by_model"][&model].as_f64() > Some(0.0),
    )
    .await;
    let p_id = short_id(&p_dir);
    let mut e = plain_entry(&e_dir, &invite, "2");
    // The fixed probe goes to the peer through the tunnel; its answer agrees with the
    // fingerprint the peer published. One deterministic answer counts once, so the test keeps
    // running (inconclusive until more evidence) — but the row shows what was compared.
    let status = e
        .wait_status(
            "a fingerprint-mode audit of the peer",
            Duration::from_secs(240),
            |s| {
                row(s, &p_id).is_some_and(|r| {
                    r["verify_by_model"][&model]["compared_tokens"].as_u64() > Some(0)
                })
            },
        )
        .await;
    let v = row(&status, &p_id).unwrap()["verify_by_model"][&model].clone();
    eprintln!("verify_by_model of the peer: {v}");
    assert_ne!(v["verdict"], "mismatch", "{v:#}\n{}", e.log());
    assert_eq!(v["agreement"], 1.0, "{v:#}");
    assert_eq!(v["mode"], "observe");
    e.stop().await;
    p.stop().await;
}
