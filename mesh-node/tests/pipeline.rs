//! Issue 6, Must-show 1, with the real binaries on loopback: a host whose memory cap is below
//! 1.1 × the SmolLM2 GGUF and a worker serve it as a pipeline (`llama-server --rpc` over the mesh
//! tunnel to the worker's `rpc-server`, layers really on the worker); a chat through the entry
//! succeeds; the entry's `/api/status` shows `split_host`/`split_worker` with the right
//! `split_group`; the host's proxy recorded the sample. Then the host restarts with a cap that
//! fits: the mesh switches to solo and the split group disappears.

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::{NodeProcess, chat, free_port, real_parts, signal};
use tokio::time::Instant;

/// SmolLM2-135M Q4_1 is 98 MB: 1.1 × is ~108 MB. Neither cap holds it, both together do, and
/// the host (more memory) is elected.
const HOST_CAP_GB: &str = "0.07";
const WORKER_CAP_GB: &str = "0.06";

/// `mesh-node entry`, stopped when dropped.
struct Entry {
    child: Child,
    api: std::net::SocketAddr,
    data_dir: std::path::PathBuf,
}

impl Entry {
    fn start(invite: &Path, data_dir: &Path) -> Entry {
        let api = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_mesh-node"))
            .args(["entry", "--join"])
            .arg(format!("@{}", invite.display()))
            .args(["--api-addr", &api.to_string(), "--relay", "disabled"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("CLOSEDMESH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(data_dir.with_extension("log")).unwrap())
            .spawn()
            .expect("start mesh-node entry");
        Entry {
            child,
            api,
            data_dir: data_dir.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    async fn status(&self) -> Option<Value> {
        reqwest::get(format!("http://{}/api/status", self.api))
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        signal(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        for _ in 0..200 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peer<'a>(status: &'a Value, short_id: &str) -> Option<&'a Value> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == short_id)
}

async fn chat_through(entry: &Entry, model: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", entry.api))
        .json(&chat(model, true))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Polls the entry's status until `done`; panics with every log after `within`.
async fn wait_entry(
    entry: &Entry,
    nodes: &[&NodeProcess],
    what: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    let mut last = Value::Null;
    loop {
        if let Some(s) = entry.status().await {
            if done(&s) {
                return s;
            }
            last = s;
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = nodes.iter().map(|n| n.log()).collect();
            panic!(
                "{what}: not within {within:?}; entry status {last:#}\nentry log:\n{}\nnode logs:\n{}",
                entry.log(),
                logs.join("\n-----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_model_no_peer_can_hold_is_served_as_a_pipeline_then_solo_once_the_host_fits() {
    let parts = real_parts();
    let dir = tempfile::tempdir().unwrap();
    let (host_dir, worker_dir) = (dir.path().join("host"), dir.path().join("worker"));
    let name = parts.model_name.as_str();
    let threads = ["--llama-threads", "1", "--baseline-settle-s", "86400"];

    let mut host = NodeProcess::serve(
        &parts,
        &parts.model,
        &host_dir,
        &[&["--max-vram-gb", HOST_CAP_GB][..], &threads].concat(),
    );
    let host_status = host
        .wait_status("host up", Duration::from_secs(60), |s| {
            s["node_id"].is_string()
        })
        .await;
    let host_id = host_status["node_id"].as_str().unwrap().to_string();
    let invite = host_dir.join("invite.txt");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !invite.exists() {
        assert!(Instant::now() < deadline, "no invite:\n{}", host.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let join = format!("@{}", invite.display());
    let worker = NodeProcess::serve(
        &parts,
        &parts.model,
        &worker_dir,
        &[
            &["--max-vram-gb", WORKER_CAP_GB, "--join", &join][..],
            &threads,
        ]
        .concat(),
    );
    let entry = Entry::start(&invite, &dir.path().join("entry"));

    // The pipeline forms and the entry sees it.
    let status = wait_entry(
        &entry,
        &[&host, &worker],
        "pipeline at the entry",
        Duration::from_secs(180),
        |s| {
            peer(s, &host_id)
                .is_some_and(|h| h["serving_mode"] == "split_host" && h["hosted_models"][0] == name)
        },
    )
    .await;
    let worker_id = worker.status().await.unwrap()["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    let h = peer(&status, &host_id).unwrap();
    let w = peer(&status, &worker_id).unwrap_or_else(|| panic!("no worker row: {status:#}"));
    assert_eq!(h["split_role"], "pipeline_host", "{status:#}");
    assert_eq!(w["serving_mode"], "split_worker", "{status:#}");
    assert_eq!(w["split_role"], "pipeline_worker", "{status:#}");
    let group = &h["split_group"];
    assert_eq!(group["model"], name, "{status:#}");
    assert_eq!(group["host_id"], host_id.as_str());
    assert_eq!(
        group["peer_ids"],
        serde_json::json!([host_id, worker_id]),
        "{status:#}"
    );
    assert!((group["total_group_vram_gb"].as_f64().unwrap() - 0.13).abs() < 1e-6);
    assert_eq!(w["split_group"], *group);

    // Layers really live on the worker: the host's llama-server ran over an RPC device.
    let llama_log =
        std::fs::read_to_string(host_dir.join(format!("logs/llama-server-{name}.log"))).unwrap();
    assert!(llama_log.contains("--rpc 127.0.0.1:"), "{llama_log}");
    assert!(
        llama_log.contains("RPC0[127.0.0.1:") && llama_log.contains("model buffer size"),
        "no layers on the worker:\n{llama_log}"
    );
    assert!(
        worker_dir.join("run/rpc-server.pid.json").exists(),
        "the worker runs rpc-server:\n{}",
        worker.log()
    );

    // A chat through the entry, served by the pipeline and recorded by the host's proxy.
    let (code, text) = chat_through(&entry, name).await;
    assert_eq!(code, 200, "{text}\n{}", entry.log());
    assert!(
        text.contains("\"content\"") && text.contains("[DONE]"),
        "{text}"
    );
    let s = host
        .wait_status("pipeline sample", Duration::from_secs(10), |s| {
            s["measured_samples_by_model"][name] == 1
        })
        .await;
    assert_eq!(s["my_split_role"], "pipeline_host", "{s:#}");
    assert!(
        host.log().contains("chat sample recorded"),
        "the per-request line:\n{}",
        host.log()
    );
    assert!(
        worker
            .log()
            .contains("RPC tunnel from the split host opened"),
        "{}",
        worker.log()
    );

    // The host's cap now fits the model: restarted, the mesh serves it solo.
    host.stop().await;
    let host = NodeProcess::serve(
        &parts,
        &parts.model,
        &host_dir,
        &[&["--max-vram-gb", "1"][..], &threads].concat(),
    );
    let status = wait_entry(
        &entry,
        &[&host, &worker],
        "solo at the entry",
        Duration::from_secs(180),
        |s| {
            peer(s, &host_id)
                .is_some_and(|h| h["serving_mode"] == "solo" && h["hosted_models"][0] == name)
        },
    )
    .await;
    let h = peer(&status, &host_id).unwrap();
    assert!(h.get("split_group").is_none(), "{status:#}");
    assert!(h.get("split_role").is_none(), "{status:#}");
    if let Some(w) = peer(&status, &worker_id) {
        assert!(w.get("split_group").is_none(), "{status:#}");
        assert_ne!(w["serving_mode"], "split_worker", "{status:#}");
    }
    let llama_log =
        std::fs::read_to_string(host_dir.join(format!("logs/llama-server-{name}.log"))).unwrap();
    let last_launch = llama_log
        .lines()
        .rfind(|l| l.starts_with("=== mesh-node launching"))
        .unwrap();
    assert!(!last_launch.contains("--rpc"), "{last_launch}");
    let (code, text) = chat_through(&entry, name).await;
    assert_eq!(code, 200, "{text}");
    // No split needs the worker's rpc-server any more.
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker_dir.join("run/rpc-server.pid.json").exists() {
        assert!(
            Instant::now() < deadline,
            "rpc-server still running:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
