//! Shared helpers of the real-parts tests: the llama.cpp binaries and SmolLM2 from
//! `scripts/setup-real-parts.sh` (these tests fail, never skip, without them) and a `mesh-node`
//! child process that is always stopped.

#![allow(dead_code)]

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

pub struct RealParts {
    pub llama_server: PathBuf,
    pub rpc_server: PathBuf,
    pub model: PathBuf,
    pub model_name: String,
}

fn required(var: &str) -> PathBuf {
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
}

pub fn real_parts() -> RealParts {
    let model = required("CLOSEDMESH_TEST_MODEL");
    RealParts {
        llama_server: required("CLOSEDMESH_LLAMA_SERVER"),
        rpc_server: required("CLOSEDMESH_RPC_SERVER"),
        model_name: model_name(&model),
        model,
    }
}

pub fn model_name(path: &Path) -> String {
    path.file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".gguf")
        .to_string()
}

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A running `mesh-node`; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub api: SocketAddr,
    pub data_dir: PathBuf,
}

impl NodeProcess {
    /// `mesh-node serve` with the real llama-server on `model`, relays off, and `extra`
    /// arguments (1 llama-server thread unless they set `--llama-threads`: tests run side by
    /// side on small CI machines, where llama.cpp's spinning threads collapse when oversubscribed).
    pub fn serve(parts: &RealParts, model: &Path, data_dir: &Path, extra: &[&str]) -> Self {
        let api = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_mesh-node"))
            .args(["serve", "--model"])
            .arg(model)
            .args(["--api-addr", &api.to_string(), "--data-dir"])
            .arg(data_dir)
            .arg("--llama-server")
            .arg(&parts.llama_server)
            .arg("--rpc-server")
            .arg(&parts.rpc_server)
            .args(["--relay", "disabled"])
            .args(if extra.contains(&"--llama-threads") {
                &[][..]
            } else {
                &["--llama-threads", "1"][..]
            })
            .args(extra)
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
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("logs/mesh-node.log")).unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> Option<Value> {
        reqwest::get(self.url(path)).await.ok()?.json().await.ok()
    }

    pub async fn status(&self) -> Option<Value> {
        self.get("/api/status").await
    }

    /// Polls `/api/status` until `done` holds for it; panics with the node's log after `within`
    /// or if the node exits.
    pub async fn wait_status(
        &mut self,
        what: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "mesh-node exited ({status}) waiting for {what}:\n{}",
                    self.log()
                );
            }
            if let Some(s) = self.status().await {
                if done(&s) {
                    return s;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "{what}: not within {within:?}; last status {s:#}\n{}",
                        self.log()
                    );
                }
            } else if Instant::now() >= deadline {
                panic!("{what}: no status within {within:?}\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(&mut self) {
        signal(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "mesh-node exited with {s}:\n{}", self.log());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mesh-node did not stop:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            signal(self.child.id(), nix::sys::signal::Signal::SIGTERM);
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

/// A small greedy chat.
pub fn chat(model: &str, stream: bool) -> Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "max_tokens": 16,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Name three colours."}],
    })
}
