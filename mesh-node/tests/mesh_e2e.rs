//! A mesh of real processes over iroh on loopback, relays disabled: two `mesh-node serve` hosts
//! (real llama-server + SmolLM2; these tests fail, never skip, without them) and one
//! `mesh-node entry`. Chats sent to the entry are served by the hosts through the HTTP tunnel,
//! the entry's `/api/status` shows both hosts with what they gossip, and a host killed with
//! SIGKILL leaves the entry's routes within 5 s.

mod support;

use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{NodeProcess, free_port, real_parts, signal};
use tokio::time::Instant;

fn entry(data_dir: &Path, invite: &str) -> NodeProcess {
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
        // The invite through the environment, never only on the command line.
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

async fn wait_file(path: &Path, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return text.trim().to_string();
            }
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

fn has_p50s(status: &Value, id: &str, model: &str) -> bool {
    row(status, id).is_some_and(|r| {
        r["measured_tps_p50_by_model"][model].as_f64() > Some(0.0)
            && r["measured_ttft_ms_p50_by_model"][model].as_f64() > Some(0.0)
    })
}

fn chat(model: &str, prompt: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "max_tokens": 16,
        "temperature": 0,
        "messages": [{"role": "user", "content": prompt}],
    })
}

/// Sends a chat to the entry; returns the peer that served it and the body.
async fn send(entry: &NodeProcess, body: &Value) -> (String, String) {
    let resp = reqwest::Client::new()
        .post(entry.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 200, "{text}\n{}", entry.log());
    assert_eq!(headers["x-closedmesh-served-by"], "mesh");
    assert!(
        headers.contains_key("x-closedmesh-sla-status"),
        "{headers:?}"
    );
    let peer = headers["x-closedmesh-peer"].to_str().unwrap().to_string();
    (peer, text)
}

#[tokio::test]
async fn an_entry_routes_chats_to_two_hosts_over_iroh_and_drops_a_killed_host_within_5_s() {
    let parts = real_parts();
    let model = parts.model_name.as_str();
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir, e_dir) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("e"),
    );
    // Native baselines would add probe traffic to the two cores mid-test: push them out.
    let quiet = ["--baseline-settle-s", "3600"];
    // The founder: no --join; it writes an invite to its data dir.
    let mut a = NodeProcess::serve(&parts, &parts.model, &a_dir, &quiet);
    let invite = wait_file(&a_dir.join("invite.txt"), Duration::from_secs(30)).await;
    let join_arg = format!("@{}", a_dir.join("invite.txt").display());
    // The founder serves before the other host joins, so the joiner hears of a running host and
    // stands by: only demand makes it a second host.
    a.wait_status("the founder serving", Duration::from_secs(120), |s| {
        s["hosted_models"] == json!([model])
    })
    .await;
    let mut b = NodeProcess::serve(
        &parts,
        &parts.model,
        &b_dir,
        &["--join", &join_arg, quiet[0], quiet[1]],
    );
    let mut e = entry(&e_dir, &invite);
    wait_file(&b_dir.join("secret-key"), Duration::from_secs(30)).await;
    let (a_id, b_id) = (short_id(&a_dir), short_id(&b_dir));

    // One host serves; the joiner stands by: a second solo host starts only under demand
    // (SPEC §3: ≥ 2 clients or ≥ 10 requests a minute).
    let status = e
        .wait_status(
            "the founder routable at the entry, the joiner standing by",
            Duration::from_secs(120),
            |s| routable(s, &a_id, model) && row(s, &b_id).is_some_and(|r| r["state"] == "standby"),
        )
        .await;
    let joiner = row(&status, &b_id).unwrap();
    assert_eq!(
        joiner["hosted_models"],
        json!([]),
        "{joiner:#}\n{}",
        b.log()
    );
    assert_eq!(joiner["state"], "standby", "{joiner:#}\n{}", b.log());
    for i in 0..10 {
        send(&e, &chat(model, &format!("Warm up {i}."), false)).await;
    }

    // The entry announces that demand; the mesh adds the other host, and the entry sees both
    // as dialable hosts of the model.
    let status = e
        .wait_status(
            "both hosts routable at the entry",
            Duration::from_secs(120),
            |s| routable(s, &a_id, model) && routable(s, &b_id, model),
        )
        .await;
    assert_eq!(status["node_state"], "client");
    assert_eq!(status["models"], json!([model]));
    assert!(status["mesh_id"].as_str().unwrap().starts_with("cm-"));
    for id in [&a_id, &b_id] {
        let r = row(&status, id).unwrap();
        assert_eq!(r["role"], "Host", "{r:#}");
        assert_eq!(r["state"], "serving", "{r:#}");
        assert_eq!(r["serving_models"], json!([model]), "{r:#}");
        assert_eq!(r["serving_mode"], "solo", "{r:#}");
    }

    // A streaming chat sent to the entry is served by a host over the tunnel, token by token.
    let resp = reqwest::Client::new()
        .post(e.url("/v1/chat/completions"))
        .json(&chat(model, "Name three colours.", true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", e.log());
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    assert_eq!(resp.headers()["x-closedmesh-served-by"], "mesh");
    assert_eq!(resp.headers()["x-closedmesh-sla-tier"], "experimental");
    assert_eq!(resp.headers()["x-closedmesh-sla-candidates"], "2");
    let first_peer = resp.headers()["x-closedmesh-peer"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(first_peer == a_id || first_peer == b_id, "{first_peer}");
    let mut chunks = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(c) = stream.next().await {
        chunks.push(c.unwrap());
    }
    let text: String = chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    assert!(chunks.len() > 2, "{} chunks", chunks.len());
    assert!(text.contains("\"content\""), "{text}");
    assert!(text.contains("\"usage\""), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // Different conversations spread over both hosts (equal load: a stable hash decides).
    let mut served = BTreeSet::from([first_peer]);
    for i in 0..24 {
        if served.len() == 2 {
            break;
        }
        let (peer, _) = send(&e, &chat(model, &format!("Count to {i}."), false)).await;
        served.insert(peer);
    }
    assert_eq!(served, BTreeSet::from([a_id.clone(), b_id.clone()]));
    // Each host timed its own share through its own proxy...
    for host in [&a, &b] {
        assert!(
            host.log().contains("chat sample recorded"),
            "{}",
            host.log()
        );
    }
    // ...and its p50s reach the entry by gossip, with each host's RTT.
    let t = Instant::now();
    let status = e
        .wait_status(
            "both hosts' p50s at the entry",
            Duration::from_secs(15),
            |s| has_p50s(s, &a_id, model) && has_p50s(s, &b_id, model),
        )
        .await;
    eprintln!(
        "hosts' p50s reached the entry {:?} after the last chat",
        t.elapsed()
    );
    for id in [&a_id, &b_id] {
        let r = row(&status, id).unwrap();
        eprintln!(
            "{id}: rtt {} ms, {} tok/s, {} ms TTFT",
            r["rtt_ms"],
            r["measured_tps_p50_by_model"][model],
            r["measured_ttft_ms_p50_by_model"][model]
        );
    }

    // SIGKILL the founder (the peer the entry joined through): no goodbye, no clean close.
    let victim_pid = a.child.id();
    signal(victim_pid, nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    e.wait_status(
        "killed host out of the entry's routes",
        Duration::from_secs(5),
        |s| row(s, &a_id).is_none_or(|r| r["rtt_ms"].is_null()),
    )
    .await;
    eprintln!(
        "killed host left the entry's routes after {:?}",
        killed.elapsed()
    );
    let _ = a.child.wait();

    // The next chats go to the surviving host.
    for i in 0..3 {
        let (peer, text) = send(&e, &chat(model, &format!("After the crash {i}."), false)).await;
        assert_eq!(peer, b_id, "{text}");
    }
    let status = e.status().await.unwrap();
    assert!(routable(&status, &b_id, model), "{status:#}");
    assert_eq!(status["models"], json!([model]));

    e.stop().await;
    b.stop().await;
}
