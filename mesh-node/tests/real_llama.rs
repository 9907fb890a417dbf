//! End to end with the real parts: the `mesh-node` binary supervising a real `llama-server`
//! serving SmolLM2. Needs `scripts/setup-real-parts.sh` (CLOSEDMESH_LLAMA_SERVER and
//! CLOSEDMESH_TEST_MODEL); without them these tests fail — they never skip.

use futures::StreamExt;
use mesh_node::pidfile::{PidRecord, process_matches};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// One llama-server at a time: the machine running the suite may have two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct RealParts {
    llama_server: PathBuf,
    model: PathBuf,
    model_name: String,
}

fn real_parts() -> RealParts {
    let get = |var: &str| {
        let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
            panic!(
                "{var} is not set. These tests need the real llama.cpp and SmolLM2: run \
                 `eval \"$(scripts/setup-real-parts.sh)\"` (or scripts/test.sh, which does it)."
            )
        });
        assert!(
            path.is_file(),
            "{var}={} does not exist: re-run scripts/setup-real-parts.sh",
            path.display()
        );
        path
    };
    let model = get("CLOSEDMESH_TEST_MODEL");
    let model_name = model
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".gguf")
        .to_string();
    RealParts {
        llama_server: get("CLOSEDMESH_LLAMA_SERVER"),
        model,
        model_name,
    }
}

/// A running `mesh-node serve`; stopped (never left behind) when dropped.
struct NodeProcess {
    child: Child,
    api: SocketAddr,
    data_dir: PathBuf,
    model_name: String,
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl NodeProcess {
    fn spawn(parts: &RealParts, data_dir: &Path) -> NodeProcess {
        let api = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_mesh-node"))
            .args(["serve", "--model"])
            .arg(&parts.model)
            .args(["--api-addr", &api.to_string(), "--data-dir"])
            .arg(data_dir)
            .arg("--llama-server")
            .arg(&parts.llama_server)
            .args(["--llama-threads", "1", "--relay", "disabled"])
            .env("CLOSEDMESH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // The node logs to <data dir>/logs/mesh-node.log as well.
            .stderr(Stdio::null())
            .spawn()
            .expect("start mesh-node");
        NodeProcess {
            child,
            api,
            data_dir: data_dir.to_path_buf(),
            model_name: parts.model_name.clone(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("logs/mesh-node.log")).unwrap_or_default()
    }

    fn pidfile(&self) -> PathBuf {
        self.data_dir
            .join("run")
            .join(format!("llama-server-{}.pid.json", self.model_name))
    }

    fn llama(&self) -> Option<PidRecord> {
        let bytes = std::fs::read(self.pidfile()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    async fn status(&self) -> Option<Value> {
        reqwest::get(self.url("/api/status"))
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// Waits until the model is hosted (llama-server healthy); returns its process record.
    async fn ready(&mut self) -> PidRecord {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "mesh-node exited ({status}) before serving:\n{}",
                    self.log()
                );
            }
            if let Some(s) = self.status().await {
                if s["hosted_models"] == json!([self.model_name]) {
                    return self.llama().expect("a hosted model has a pidfile");
                }
            }
            assert!(
                Instant::now() < deadline,
                "model not hosted within 120 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the process to exit.
    async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "mesh-node still running:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(nix::sys::signal::Signal::SIGTERM);
            for _ in 0..300 {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn gone(record: &PidRecord, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !process_matches(record.pid, &record.argv) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn chat(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "max_tokens": 16,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Name three colours."}],
    })
}

#[tokio::test]
async fn real_llama_server_serves_streaming_and_non_streaming_chats_through_mesh_node() {
    let _serial = SERIAL.lock().await;
    let parts = real_parts();
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::spawn(&parts, dir.path());
    let llama = node.ready().await;
    let model = parts.model_name.as_str();
    // The child runs on loopback with its own key and the solo flags.
    let argv = llama.argv.join(" ");
    assert!(
        argv.contains("--host 127.0.0.1") && argv.contains("--api-key cm-"),
        "{argv}"
    );
    assert!(
        argv.contains("-fit on") && argv.contains("-fa on") && !argv.contains("-ngl"),
        "{argv}"
    );

    let client = reqwest::Client::new();
    // Streaming: several SSE chunks, passed on as they come, ending with [DONE].
    let resp = client
        .post(node.url("/v1/chat/completions"))
        .json(&chat(model, true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let mut chunks = Vec::new();
    let mut arrivals = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(c) = stream.next().await {
        chunks.push(c.unwrap());
        arrivals.push(Instant::now());
    }
    // Tokens arrive as llama-server decodes them (~100 tok/s here), not in one burst at the end.
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread >= Duration::from_millis(20),
        "all chunks within {spread:?}: buffered"
    );
    let text: String = chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    assert!(chunks.len() > 2, "{} chunks", chunks.len());
    assert!(text.contains("\"content\""), "{text}");
    assert!(
        text.contains("\"usage\""),
        "the proxy asked for the usage chunk: {text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    // Non-streaming: one JSON body.
    let body: Value = client
        .post(node.url("/v1/chat/completions"))
        .json(&chat(model, false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // Two chats sent, two samples; both p50s measured.
    let status = node.status().await.unwrap();
    assert_eq!(status["node_state"], "serving");
    assert_eq!(status["is_host"], true);
    assert_eq!(status["measured_samples_by_model"][model], 2, "{status}");
    let tps = status["measured_tps_p50_by_model"][model].as_f64().unwrap();
    let ttft = status["measured_ttft_ms_p50_by_model"][model]
        .as_f64()
        .unwrap();
    // Sanity only (a loaded CI machine may be slow): measured, positive, not absurd.
    assert!(tps > 0.0 && tps < 100_000.0, "tok/s p50 {tps}");
    assert!(ttft > 0.0 && ttft < 60_000.0, "TTFT p50 {ttft} ms");
    eprintln!("through mesh-node: {tps:.1} tok/s p50, {ttft:.1} ms TTFT p50");

    // `mesh-node status` reads the same payload.
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-node"))
        .args(["status", "--api-addr", &node.api.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.contains(model) && shown.contains("serving"),
        "{shown}"
    );

    // One info line per request, naming the outcome.
    let log = node.log();
    assert_eq!(log.matches("chat sample recorded").count(), 2, "{log}");

    // SIGTERM: the node stops its llama-server by pid and removes the pidfile.
    node.signal(nix::sys::signal::Signal::SIGTERM);
    let status = node.exited(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    assert!(
        gone(&llama, Duration::from_secs(1)).await,
        "llama-server left running"
    );
    assert!(!node.pidfile().exists());
}

#[tokio::test]
async fn crashed_llama_server_is_restarted_and_serves_again() {
    let _serial = SERIAL.lock().await;
    let parts = real_parts();
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::spawn(&parts, dir.path());
    let first = node.ready().await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(gone(&first, Duration::from_secs(5)).await);

    // Back within the backoff (1 s) plus a load.
    let deadline = Instant::now() + Duration::from_secs(120);
    let second = loop {
        if let Some(r) = node.llama() {
            if r.pid != first.pid {
                let s = node.status().await.unwrap();
                if s["hosted_models"] == json!([parts.model_name]) {
                    break r;
                }
            }
        }
        assert!(Instant::now() < deadline, "not restarted:\n{}", node.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(
        first.argv, second.argv,
        "a new launch has a new port and key"
    );
    let resp = reqwest::Client::new()
        .post(node.url("/v1/chat/completions"))
        .json(&chat(&parts.model_name, false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(node.log().contains("restarting llama-server after backoff"));
}

#[tokio::test]
async fn killed_node_leaves_no_llama_server_behind_after_restart() {
    let _serial = SERIAL.lock().await;
    let parts = real_parts();
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::spawn(&parts, dir.path());
    let orphan = node.ready().await;
    // A crash: no chance to clean up.
    node.signal(nix::sys::signal::Signal::SIGKILL);
    node.exited(Duration::from_secs(5)).await;
    drop(node);

    let mut again = NodeProcess::spawn(&parts, dir.path());
    let fresh = again.ready().await;
    assert_ne!(fresh.pid, orphan.pid);
    assert!(
        gone(&orphan, Duration::from_secs(1)).await,
        "the previous run's llama-server (pid {}) is still running",
        orphan.pid
    );
}
