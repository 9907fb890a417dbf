//! Test doubles and real parts for the entry's fallback, accounting, auth and pages tests:
//!
//! - [`FakeProvider`]: an OpenAI-compatible server standing in for the external provider;
//! - [`FakeHost`]: an in-process mesh member (real iroh, relays off) that hosts a model and
//!   answers tunnelled chats as told (stream, or fail before the first byte);
//! - [`lone_entry`] / [`joined_entry`]: an in-process entry, alone or in a fake host's mesh;
//! - [`RedisServer`]: a real `redis-server` on a random loopback port, owned by the test;
//! - [`Browser`]: headless Chromium driven over WebDriver (chromedriver + fantoccini).
//!
//! The real parts come from `scripts/setup-real-parts.sh`; tests that need them fail, never
//! skip, when they are missing.

#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Response, StatusCode};
use axum::routing::post as route_post;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use mesh_core::invite::Invite;
use mesh_core::peer::{ModelTiming, PeerAnnouncement, Role};
use mesh_node::clock::Clock;
use mesh_node::config::RelayMode;
use mesh_node::entry::{Entry, EntryServices, EntrySettings};
use mesh_node::mesh::{ContentSource, Mesh, MeshOptions};
use mesh_node::milestones::Milestones;
use mesh_node::share_store::Accounting;
use mesh_node::transport::iroh::{IrohConfig, IrohTransport};
use mesh_node::tunnel::TunnelListener;
use mesh_node::{entry, http_serve};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

pub const DAILY: &str = "Qwen3-8B-Q4_K_M";
pub const CAPACITY: &str = "Qwen3-32B-Q4_K_M";
pub const PROVIDER_KEY: &str = "sk-provider-test-key";

/// The provider's streamed answer, chunk by chunk, exactly as it goes on the wire.
pub fn provider_chunks(model: &str) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        let v = json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {v}\n\n")
    };
    vec![
        chunk(
            json!({"role": "assistant", "content": "Hello"}),
            Value::Null,
        ),
        chunk(json!({"content": " from the"}), Value::Null),
        chunk(json!({"content": " provider."}), json!("stop")),
        "data: [DONE]\n\n".to_string(),
    ]
}

/// The provider's non-streaming answer.
pub fn provider_json(model: &str) -> Value {
    json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the provider."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    })
}

/// What the provider was asked.
#[derive(Debug, Clone)]
pub struct Asked {
    pub authorization: Option<String>,
    pub body: Value,
}

/// How the fake provider answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProviderMode {
    /// Streams [`provider_chunks`] (the first chunk at once, the rest after `gap`) or returns
    /// [`provider_json`].
    Answer { gap: Duration },
    /// Streams the first chunk of [`provider_chunks`] at once and the rest only after
    /// [`FakeProvider::release`]: a caller that reads the first chunk before the release proves
    /// nothing between it and the provider buffers.
    HoldAfterFirst,
    /// Answers with this status and an error body.
    Fail(StatusCode),
}

#[derive(Clone)]
struct ProviderState {
    asked: Arc<Mutex<Vec<Asked>>>,
    mode: Arc<Mutex<ProviderMode>>,
    release: Arc<tokio::sync::Semaphore>,
}

/// An OpenAI-compatible provider on loopback (`<base_url>/chat/completions`).
pub struct FakeProvider {
    pub base_url: String,
    pub asked: Arc<Mutex<Vec<Asked>>>,
    pub mode: Arc<Mutex<ProviderMode>>,
    release: Arc<tokio::sync::Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvider {
    pub async fn start() -> FakeProvider {
        let state = ProviderState {
            asked: Arc::default(),
            mode: Arc::new(Mutex::new(ProviderMode::Answer {
                gap: Duration::from_millis(10),
            })),
            release: Arc::new(tokio::sync::Semaphore::new(0)),
        };
        let app = Router::new()
            .route("/v1/chat/completions", route_post(provider_chat))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeProvider {
            base_url: format!("http://{addr}/v1"),
            asked: state.asked,
            mode: state.mode,
            release: state.release,
            task,
        }
    }

    pub fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }

    pub fn set_mode(&self, mode: ProviderMode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Lets one held stream ([`ProviderMode::HoldAfterFirst`]) send the rest of its chunks.
    pub fn release(&self) {
        self.release.add_permits(1);
    }
}

async fn provider_chat(
    State(state): State<ProviderState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.asked.lock().unwrap().push(Asked {
        authorization: headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string()),
        body: body.clone(),
    });
    let mode = *state.mode.lock().unwrap();
    let gap = match mode {
        ProviderMode::Fail(status) => {
            let mut r = Response::new(Body::from(
                r#"{"error":{"message":"account 1234 has no credit","type":"billing"}}"#,
            ));
            *r.status_mut() = status;
            return r;
        }
        ProviderMode::Answer { gap } => Some(gap),
        ProviderMode::HoldAfterFirst => None,
    };
    let model = body["model"].as_str().unwrap_or_default().to_string();
    if body["stream"] == json!(true) {
        match gap {
            Some(gap) => sse_response(provider_chunks(&model), gap),
            None => held_sse_response(provider_chunks(&model), state.release.clone()),
        }
    } else {
        let mut r = Response::new(Body::from(provider_json(&model).to_string()));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    }
}

/// A `text/event-stream` response: the first chunk at once, each later one after `gap`.
pub fn sse_response(chunks: Vec<String>, gap: Duration) -> Response<Body> {
    let stream =
        futures::stream::iter(chunks.into_iter().enumerate()).then(move |(i, c)| async move {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            Ok::<_, std::io::Error>(Bytes::from(c))
        });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r
}

/// A `text/event-stream` response: the first chunk at once, the rest once `release` has a permit.
fn held_sse_response(chunks: Vec<String>, release: Arc<tokio::sync::Semaphore>) -> Response<Body> {
    let stream = futures::stream::iter(chunks.into_iter().enumerate()).then(move |(i, c)| {
        let release = release.clone();
        async move {
            if i == 1 {
                release.acquire().await.unwrap().forget();
            }
            Ok::<_, std::io::Error>(Bytes::from(c))
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r
}

/// How a [`FakeHost`] answers tunnelled chats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMode {
    /// Streams a short answer with a usage chunk (so the entry records a sample).
    Serve,
    /// Fails before the first byte.
    Fail(StatusCode),
}

/// The mesh host's streamed answer (with the usage chunk the proxy asks for).
pub fn host_chunks(model: &str) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        let v = json!({
            "id": "chatcmpl-mesh", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {v}\n\n")
    };
    let usage = json!({
        "id": "chatcmpl-mesh", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": model, "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    });
    vec![
        chunk(json!({"role": "assistant", "content": "Hi"}), Value::Null),
        chunk(json!({"content": " from"}), Value::Null),
        chunk(json!({"content": " the mesh."}), json!("stop")),
        format!("data: {usage}\n\n"),
        "data: [DONE]\n\n".to_string(),
    ]
}

fn random_secret() -> [u8; 32] {
    let mut s = [0u8; 32];
    getrandom::fill(&mut s).unwrap();
    s
}

/// A mesh member hosting `model`, answering the entry's tunnelled chats itself.
pub struct FakeHost {
    pub mesh: Arc<Mesh>,
    pub mode: Arc<Mutex<HostMode>>,
    pub chats: Arc<Mutex<u32>>,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl FakeHost {
    /// `timing`: the through-mesh p50s it gossips (what the entry's SLA gate reads).
    pub async fn start(model: &str, timing: Option<(f64, f64)>) -> FakeHost {
        let dir = tempfile::tempdir().unwrap();
        let secret = random_secret();
        let t = IrohTransport::bind(secret, IrohConfig::with_relay(RelayMode::Disabled))
            .await
            .unwrap();
        let me = mesh_core::gossip::SecretKey::from_bytes(secret).peer_id();
        let model_name = model.to_string();
        let content: ContentSource = Arc::new(move || {
            let mut a = PeerAnnouncement::new(me, String::new(), Role::Host { http_port: 1 });
            a.hostname = "fake-host".into();
            a.fast_memory_bytes = 17_200_000_000;
            a.system_ram_bytes = 32_000_000_000;
            a.requested_models = vec![model_name.clone()];
            a.hosted_models = vec![model_name.clone()];
            a.model_sizes = [(model_name.clone(), 5_000_000_000)].into();
            if let Some((ttft_ms, tps)) = timing {
                a.model_timings = vec![ModelTiming {
                    model: model_name.clone(),
                    tps_p50: tps,
                    ttft_ms_p50: ttft_ms,
                    samples_in_window: 5,
                }];
            }
            a
        });
        let (mesh, streams) = Mesh::start(
            Arc::new(t),
            Clock::system(),
            secret,
            MeshOptions::new(dir.path(), None, 7),
            content,
        )
        .await
        .unwrap();
        let mode = Arc::new(Mutex::new(HostMode::Serve));
        let chats = Arc::new(Mutex::new(0));
        let (stop, stop_rx) = watch::channel(false);
        let app = {
            let (mode, chats) = (mode.clone(), chats.clone());
            let model = model.to_string();
            Router::new().route(
                "/v1/chat/completions",
                route_post(move |_req: Request| {
                    let (mode, chats, model) = (mode.clone(), chats.clone(), model.clone());
                    async move {
                        *chats.lock().unwrap() += 1;
                        match *mode.lock().unwrap() {
                            HostMode::Serve => sse_response(host_chunks(&model), Duration::ZERO),
                            HostMode::Fail(status) => {
                                let mut r = Response::new(Body::from("{}"));
                                *r.status_mut() = status;
                                r
                            }
                        }
                    }
                }),
            )
        };
        let mut stop_wait = stop_rx.clone();
        tokio::spawn(http_serve::serve(
            TunnelListener::new(streams.http, mesh.me()),
            app,
            async move {
                let _ = stop_wait.wait_for(|s| *s).await;
            },
        ));
        FakeHost {
            mesh,
            mode,
            chats,
            stop,
            _dir: dir,
        }
    }

    pub fn invite(&self) -> Invite {
        self.mesh.mint_invite(Duration::from_secs(600))
    }

    pub fn set_mode(&self, mode: HostMode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn chats(&self) -> u32 {
        *self.chats.lock().unwrap()
    }

    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        self.mesh.shutdown().await;
    }
}

/// An in-process entry (real iroh, relays off) with `settings` and `services`, joined to a
/// mesh through `join` (or alone).
pub async fn start_entry(
    dir: &Path,
    join: Option<Invite>,
    settings: EntrySettings,
    services: impl FnOnce(Clock) -> EntryServices,
) -> Arc<Entry> {
    let secret = random_secret();
    let t = IrohTransport::bind(secret, IrohConfig::with_relay(RelayMode::Disabled))
        .await
        .unwrap();
    let me = mesh_core::gossip::SecretKey::from_bytes(secret).peer_id();
    let content: ContentSource =
        Arc::new(move || PeerAnnouncement::new(me, String::new(), Role::Client));
    let clock = Clock::system();
    let (mesh, _) = Mesh::start(
        Arc::new(t),
        clock,
        secret,
        MeshOptions::new(dir, join, 3),
        content,
    )
    .await
    .unwrap();
    Entry::with_services(mesh, settings, services(clock))
}

/// Services with in-memory accounting (`per_ip_per_hour` budget) and `fallback`.
pub fn memory_services(
    fallback: Option<Arc<dyn entry::Fallback>>,
    per_ip_per_hour: u32,
) -> impl FnOnce(Clock) -> EntryServices {
    move |clock| EntryServices {
        fallback,
        accounting: Accounting::in_memory(per_ip_per_hour, clock),
        milestones: Arc::new(Milestones::in_memory()),
    }
}

/// Waits until `entry` can route `model` to some dialable host.
pub async fn wait_routable(entry: &Entry, model: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let view = entry.mesh().view();
        if view
            .peers
            .iter()
            .any(|p| p.rtt_ms.is_some() && p.announcement.hosts(model))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{model} not routable from the entry within {within:?}: {view:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Serves `router` on a loopback port (with each request's peer address, as the binary does).
pub async fn serve_tcp(router: Router) -> (SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut stop_rx) = watch::channel(false);
    tokio::spawn(http_serve::serve(listener, router, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    (addr, stop)
}

/// A chat request body.
pub fn chat_body(model: Option<&str>, stream: bool) -> Value {
    let mut v = json!({
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello."}],
    });
    if let Some(m) = model {
        v["model"] = json!(m);
    }
    v
}

/// A response as the caller saw it: status, the `x-closedmesh-*` headers, the body bytes.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

pub async fn read_answer(resp: Response<Body>) -> Answer {
    let status = resp.status();
    let headers = resp
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-closedmesh-"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        content_type,
        body,
    }
}

/// POSTs `body` to `path` of `router` in process, as `caller` with `key`.
pub async fn post(
    router: &Router,
    path: &str,
    body: &Value,
    key: Option<&str>,
    caller: SocketAddr,
) -> Answer {
    use tower::ServiceExt;
    let mut req = axum::http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let mut req = req.body(Body::from(body.to_string())).unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(caller));
    read_answer(router.clone().oneshot(req).await.unwrap()).await
}

pub async fn get(router: &Router, path: &str) -> Answer {
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .uri(path)
        .body(Body::empty())
        .unwrap();
    read_answer(router.clone().oneshot(req).await.unwrap()).await
}

/// A binary the tests need: from `var`, else `name` on PATH; panics (never skips) without it.
pub fn required_binary(var: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{var}={} does not exist", p.display());
        return p;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} not found ({var} unset, not on PATH). These tests run against the real \
                 {name}: run `eval \"$(scripts/setup-real-parts.sh)\"` (or scripts/test.sh)."
            )
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// A `redis-server` of this test's own on a random loopback port, no persistence.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let bin = required_binary("CLOSEDMESH_REDIS_SERVER", "redis-server");
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "yes",
                ])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while std::time::Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken meanwhile: try another
                }
                if ping(port) {
                    return RedisServer {
                        child,
                        port,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        signal(self.child.id(), nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        signal(self.child.id(), nix::sys::signal::Signal::SIGCONT);
    }

    /// A plain synchronous command (for assertions on the keys).
    pub fn cmd(&self, args: &[&str]) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless Chromium behind chromedriver, driven with fantoccini.
pub struct Browser {
    pub client: fantoccini::Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        let chromedriver = required_binary("CLOSEDMESH_CHROMEDRIVER", "chromedriver");
        let chromium = required_binary("CLOSEDMESH_CHROMIUM", "chromium");
        let profile = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new(chromedriver);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group: dropping the browser ends chromedriver and the Chromium it
        // started, and nothing else.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut driver = cmd.spawn().expect("start chromedriver");
        // Debian's /usr/bin/chromium is a wrapper script; chromedriver needs the browser binary.
        let binary = ["/usr/lib/chromium/chromium"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap_or(chromium);
        let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "goog:chromeOptions": {
                "binary": binary,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }
        }))
        .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(90);
        let client = loop {
            match fantoccini::ClientBuilder::new(
                hyper_util::client::legacy::connect::HttpConnector::new(),
            )
            .capabilities(caps.clone())
            .connect(&url)
            .await
            {
                Ok(c) => break c,
                Err(e) => {
                    if let Some(status) = driver.try_wait().unwrap() {
                        panic!("chromedriver exited ({status})");
                    }
                    assert!(Instant::now() < deadline, "no WebDriver session: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Ends the session (Chromium exits) and chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(-(self.driver.id() as i32));
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..40 {
            if self.driver.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}
