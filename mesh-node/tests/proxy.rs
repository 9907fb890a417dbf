//! The chat proxy against a fake upstream: a test double beside the real llama-server (whose
//! end-to-end tests live in `real_llama.rs`). The fake streams SSE under the test's control, so
//! the tests can prove chunks are passed on as they come, not buffered until the end.

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_core::PeerId;
use mesh_core::sla::TierCatalog;
use mesh_node::api::{NodeApi, router};
use mesh_node::backend::{BackendState, Backends};
use mesh_node::clock::Clock;
use mesh_node::dial::{BoxIo, Dial, Upstream};
use mesh_node::facts::Measurements;
use mesh_node::local_status::NodeInfo;
use mesh_node::proxy::{ChatProxy, Recorder};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";
const KEY: &str = "per-launch-key";

type UpBody = BoxBody<Bytes, io::Error>;
type Chunks = mpsc::Sender<Result<Frame<Bytes>, io::Error>>;

/// A request as the fake upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
    body: Value,
}

/// What the fake answers: a fixed response, or a stream the test feeds chunk by chunk.
enum Reply {
    Full(StatusCode, &'static str, String),
    Stream(oneshot::Sender<Chunks>),
}

#[derive(Clone)]
struct FakeUpstream {
    seen: Arc<Mutex<Vec<Seen>>>,
    replies: Arc<Mutex<mpsc::UnboundedReceiver<Reply>>>,
}

impl FakeUpstream {
    fn new() -> (FakeUpstream, mpsc::UnboundedSender<Reply>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let fake = FakeUpstream {
            seen: Arc::default(),
            replies: Arc::new(Mutex::new(rx)),
        };
        (fake, tx)
    }

    /// Serves one HTTP/1.1 connection on `io`.
    async fn serve_io<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let fake = self.clone();
            async move { Ok::<_, io::Error>(fake.handle(req).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .await;
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<UpBody> {
        let path = req.uri().path().to_string();
        let authorization = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        self.seen.lock().unwrap().push(Seen {
            path,
            authorization,
            body,
        });
        let reply = self.replies.lock().unwrap().try_recv();
        match reply.expect("the test queued a reply") {
            Reply::Full(status, content_type, body) => Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(
                    http_body_util::Full::new(Bytes::from(body))
                        .map_err(|e| match e {})
                        .boxed(),
                )
                .unwrap(),
            Reply::Stream(give) => {
                let (tx, rx) = mpsc::channel(64);
                give.send(tx).unwrap();
                let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(BodyExt::boxed(StreamBody::new(stream)))
                    .unwrap()
            }
        }
    }

    /// Listens on loopback TCP.
    async fn listen(self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                tokio::spawn(self.clone().serve_io(io));
            }
        });
        addr
    }
}

/// A node API with one model backed by `upstream`, served on loopback.
struct Node {
    addr: SocketAddr,
    api: Arc<NodeApi>,
    _stop: oneshot::Sender<()>,
}

impl Node {
    async fn start(states: Vec<(&str, BackendState)>) -> Node {
        Node::start_with(states, mesh_node::proxy::DEFAULT_FIRST_BYTE_TIMEOUT).await
    }

    async fn start_with(states: Vec<(&str, BackendState)>, first_byte_timeout: Duration) -> Node {
        let backends = Arc::new(Backends::new());
        for (model, state) in states {
            backends.add(model, 98_000_000);
            backends.set(model, state);
        }
        let api = Arc::new(NodeApi {
            info: NodeInfo {
                node_id: PeerId::from_bytes([7; 32]),
                mesh_id: String::new(),
                hostname: "test".into(),
                backend: mesh_core::Backend::Cpu,
                gpu_name: String::new(),
                fast_memory_bytes: 8_000_000_000,
                system_ram_bytes: 8_000_000_000,
                http_port: 9337,
            },
            backends,
            proxy: ChatProxy::new(Arc::new(Recorder::new(Clock::system())))
                .with_first_byte_timeout(first_byte_timeout),
            measurements: Measurements::in_memory(),
            tiers: TierCatalog::default(),
            mesh: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(mesh_node::http_serve::serve(
            listener,
            router(api.clone()),
            async move {
                let _ = stopped.await;
            },
        ));
        Node {
            addr,
            api,
            _stop: stop,
        }
    }

    async fn with_upstream(upstream: Upstream) -> Node {
        Node::start(vec![(MODEL, BackendState::Ready(upstream))]).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn chat(&self, body: Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    fn outcomes(&self) -> BTreeMap<&'static str, u64> {
        self.api.proxy.recorder().outcome_counts()
    }

    /// Waits until `n` requests have concluded (recording happens as the body ends).
    async fn concluded(&self, n: u64) -> BTreeMap<&'static str, u64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let o = self.outcomes();
            if o.values().sum::<u64>() >= n || Instant::now() > deadline {
                return o;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn delta(text: &str) -> Bytes {
    Bytes::from(format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
    ))
}

fn usage(completion_tokens: u32) -> Bytes {
    Bytes::from(format!(
        "data: {}\n\ndata: [DONE]\n\n",
        json!({"choices": [], "usage": {"completion_tokens": completion_tokens, "prompt_tokens": 9}})
    ))
}

async fn send(tx: &Chunks, bytes: Bytes) {
    tx.send(Ok(Frame::data(bytes))).await.unwrap();
}

fn stream_request() -> Value {
    json!({"model": MODEL, "stream": true, "max_tokens": 8,
           "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn stream_chunks_reach_the_client_as_they_are_sent_not_at_the_end() {
    let (fake, replies) = FakeUpstream::new();
    let seen = fake.seen.clone();
    let node = Node::with_upstream(Upstream::tcp(fake.listen().await, Some(KEY.into()))).await;
    let (give, chunks) = oneshot::channel();
    replies.send(Reply::Stream(give)).unwrap();

    let sent_at = Instant::now();
    let (first_tx, first_rx) = oneshot::channel::<()>();
    let client = tokio::spawn({
        let node_url = node.url("/v1/chat/completions");
        async move {
            let resp = reqwest::Client::new()
                .post(node_url)
                .json(&stream_request())
                .send()
                .await
                .unwrap();
            let headers = resp.headers().clone();
            let mut arrivals = Vec::new();
            let mut first_tx = Some(first_tx);
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                arrivals.push((Instant::now(), chunk.unwrap()));
                if let Some(tx) = first_tx.take() {
                    let _ = tx.send(());
                }
            }
            (headers, arrivals)
        }
    });

    let tx = chunks.await.unwrap();
    // The first token after 200 ms of "prefill"; the rest 100 ms apart.
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&tx, delta("Hello")).await;
    // Nothing more is sent until the client has seen the first token through the proxy: behind a
    // buffering proxy it never would, and the test fails here.
    let first_seen = tokio::time::timeout(Duration::from_secs(5), first_rx).await;
    assert!(
        matches!(first_seen, Ok(Ok(()))),
        "the first chunk did not reach the client while the stream was open"
    );
    for word in [" there", ",", " how", " are"] {
        tokio::time::sleep(Duration::from_millis(100)).await;
        send(&tx, delta(word)).await;
    }
    let last_sent_at = Instant::now();
    send(&tx, usage(5)).await;
    drop(tx);

    let (headers, arrivals) = client.await.unwrap();
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let first_arrival = arrivals.first().unwrap().0;
    assert!(
        first_arrival + Duration::from_millis(300) < last_sent_at,
        "the first chunk arrived {:?} after the request, the last was sent at {:?}: buffered",
        first_arrival - sent_at,
        last_sent_at - sent_at
    );
    assert!(arrivals.len() >= 5, "{} client chunks", arrivals.len());
    let text: Vec<u8> = arrivals.iter().flat_map(|(_, b)| b.to_vec()).collect();
    assert!(
        String::from_utf8(text)
            .unwrap()
            .ends_with("data: [DONE]\n\n")
    );

    // The upstream was asked for the usage chunk, with the per-launch key.
    let seen = seen.lock().unwrap()[0].clone();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.authorization.as_deref(), Some("Bearer per-launch-key"));
    assert_eq!(seen.body["stream_options"], json!({"include_usage": true}));
    assert_eq!(seen.body["max_tokens"], 8);

    assert_eq!(node.concluded(1).await, BTreeMap::from([("recorded", 1)]));
    let s = node.api.proxy.recorder().summaries()[MODEL];
    assert_eq!(s.samples, 1);
    // TTFT ≈ 200 ms; 5 tokens over a ≈ 400 ms decode window ≈ 12.5 tok/s.
    assert!(
        (190.0..1_000.0).contains(&s.ttft_ms_p50),
        "ttft {}",
        s.ttft_ms_p50
    );
    assert!((5.0..13.0).contains(&s.tps_p50), "tps {}", s.tps_p50);
}

#[tokio::test]
async fn non_streaming_body_passes_through_and_records_its_usage() {
    let (fake, replies) = FakeUpstream::new();
    let seen = fake.seen.clone();
    let node = Node::with_upstream(Upstream::tcp(fake.listen().await, Some(KEY.into()))).await;
    let body = json!({"choices": [{"message": {"role": "assistant", "content": "Hello!"}}],
                      "usage": {"completion_tokens": 8, "prompt_tokens": 31}})
    .to_string();
    replies
        .send(Reply::Full(
            StatusCode::OK,
            "application/json",
            body.clone(),
        ))
        .unwrap();
    let resp = node
        .chat(json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    assert_eq!(resp.text().await.unwrap(), body);
    assert_eq!(node.concluded(1).await, BTreeMap::from([("recorded", 1)]));
    let s = node.api.proxy.recorder().summaries()[MODEL];
    assert_eq!(s.samples, 1);
    assert!(s.tps_p50 > 0.0 && s.ttft_ms_p50 > 0.0);
    // A non-streaming request is not given stream options.
    assert!(seen.lock().unwrap()[0].body.get("stream_options").is_none());
}

#[tokio::test]
async fn missing_usage_chunk_falls_back_to_counted_deltas_then_to_usage_chunk_missing() {
    let (fake, replies) = FakeUpstream::new();
    let node = Node::with_upstream(Upstream::tcp(fake.listen().await, None)).await;
    for deltas in [3usize, 0] {
        let (give, chunks) = oneshot::channel();
        replies.send(Reply::Stream(give)).unwrap();
        let req = tokio::spawn({
            let url = node.url("/v1/chat/completions");
            async move {
                reqwest::Client::new()
                    .post(url)
                    .json(&stream_request())
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            }
        });
        let tx = chunks.await.unwrap();
        for _ in 0..deltas {
            send(&tx, delta("x")).await;
        }
        send(&tx, Bytes::from_static(b"data: [DONE]\n\n")).await;
        drop(tx);
        req.await.unwrap();
    }
    assert_eq!(
        node.concluded(2).await,
        BTreeMap::from([("recorded", 1), ("usage_chunk_missing", 1)])
    );
    assert_eq!(node.api.proxy.recorder().timings()[0].samples_in_window, 1);
}

#[tokio::test]
async fn upstream_error_status_passes_through_and_is_not_recorded() {
    let (fake, replies) = FakeUpstream::new();
    let node = Node::with_upstream(Upstream::tcp(fake.listen().await, None)).await;
    let err = r#"{"error":{"code":500,"message":"boom","type":"server_error"}}"#;
    replies
        .send(Reply::Full(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            err.into(),
        ))
        .unwrap();
    let resp = node.chat(stream_request()).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await.unwrap(), err);
    assert_eq!(
        node.concluded(1).await,
        BTreeMap::from([("non_2xx_status", 1)])
    );
}

#[tokio::test]
async fn client_disconnect_mid_stream_is_detected_and_the_upstream_is_released() {
    let (fake, replies) = FakeUpstream::new();
    let node = Node::with_upstream(Upstream::tcp(fake.listen().await, None)).await;
    let (give, chunks) = oneshot::channel();
    replies.send(Reply::Stream(give)).unwrap();
    let resp_fut = node.chat(stream_request());
    let tx = tokio::spawn(async move {
        let tx = chunks.await.unwrap();
        send(&tx, delta("Hello")).await;
        tx
    });
    let resp = resp_fut.await;
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    let tx = tx.await.unwrap();
    drop(stream);

    // The model keeps generating until the proxy lets go of the upstream connection.
    let released = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if tx.send(Ok(Frame::data(delta("more")))).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(released.is_ok(), "the upstream stream was never closed");
    assert_eq!(
        node.concluded(1).await,
        BTreeMap::from([("client_disconnected", 1)])
    );
    assert_eq!(node.api.proxy.recorder().inflight(), 0);
}

#[tokio::test]
async fn upstream_dying_mid_stream_is_an_upstream_error() {
    let (fake, replies) = FakeUpstream::new();
    let node = Node::with_upstream(Upstream::tcp(fake.listen().await, None)).await;
    let (give, chunks) = oneshot::channel();
    replies.send(Reply::Stream(give)).unwrap();
    let client = tokio::spawn({
        let url = node.url("/v1/chat/completions");
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .json(&stream_request())
                .send()
                .await
                .unwrap();
            resp.bytes().await.is_err()
        }
    });
    let tx = chunks.await.unwrap();
    send(&tx, delta("Hello")).await;
    tx.send(Err(io::Error::other("llama-server crashed")))
        .await
        .unwrap();
    assert!(client.await.unwrap(), "the client saw the stream break");
    assert_eq!(
        node.concluded(1).await,
        BTreeMap::from([("upstream_error", 1)])
    );
}

#[tokio::test]
async fn unreachable_backend_is_a_502_with_reason_code() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let node = Node::with_upstream(Upstream::tcp(port, None)).await;
    let resp = node.chat(stream_request()).await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["reason_code"], "upstream_error");
    assert_eq!(body["error"]["type"], "server_error");
    assert!(body["error"]["message"].as_str().unwrap().contains(MODEL));
    assert_eq!(
        node.concluded(1).await,
        BTreeMap::from([("upstream_error", 1)])
    );
}

#[tokio::test]
async fn refusals_are_json_with_stable_reason_codes() {
    let node = Node::start(vec![
        ("loading-model", BackendState::Loading),
        (
            MODEL,
            BackendState::Ready(Upstream::tcp("127.0.0.1:9".parse().unwrap(), None)),
        ),
    ])
    .await;
    let client = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        client
            .post(node.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let check = |resp: reqwest::Response, status: u16, reason: &'static str| async move {
        assert_eq!(resp.status(), status);
        let retry_after = resp.headers().get("retry-after").cloned();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["reason_code"], reason, "{body}");
        assert_eq!(body["error"]["code"], reason);
        assert!(body["error"]["message"].is_string() && body["error"]["type"].is_string());
        retry_after
    };

    let huge = vec![b' '; 8 * 1024 * 1024 + 1];
    check(post(huge).await.unwrap(), 413, "body_too_large").await;
    check(post(b"{nope".to_vec()).await.unwrap(), 400, "invalid_json").await;
    check(post(b"{}".to_vec()).await.unwrap(), 400, "model_missing").await;
    let unknown = json!({"model": "Qwen3-8B-Q4_K_M", "messages": []}).to_string();
    check(
        post(unknown.into()).await.unwrap(),
        404,
        "no_peer_with_model",
    )
    .await;
    let loading = json!({"model": "loading-model", "messages": []}).to_string();
    let retry = check(post(loading.into()).await.unwrap(), 503, "model_loading").await;
    assert_eq!(retry.unwrap(), "5");
    let resp = client.get(node.url("/nowhere")).send().await.unwrap();
    check(resp, 404, "not_found").await;
    // Refused requests never reached a backend: no sample outcome for them.
    assert!(node.outcomes().is_empty());

    // A request head over 64 KiB.
    let resp = client
        .get(node.url("/api/status"))
        .header("x-big", "a".repeat(70 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
}

#[tokio::test]
async fn models_and_status_list_what_is_routable_and_measured() {
    let (fake, replies) = FakeUpstream::new();
    let upstream = Upstream::tcp(fake.listen().await, None);
    let node = Node::start(vec![
        (MODEL, BackendState::Ready(upstream)),
        ("Qwen3-8B-Q4_K_M", BackendState::Loading),
    ])
    .await;
    for _ in 0..3 {
        let body = json!({"choices": [], "usage": {"completion_tokens": 4}}).to_string();
        replies
            .send(Reply::Full(StatusCode::OK, "application/json", body))
            .unwrap();
        let resp = node.chat(json!({"model": MODEL, "messages": []})).await;
        resp.bytes().await.unwrap();
    }
    node.concluded(3).await;

    let models: Value = reqwest::get(node.url("/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    assert_eq!(models["data"][0]["id"], MODEL);

    let status: Value = reqwest::get(node.url("/api/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["node_state"], "serving");
    assert_eq!(status["hosted_models"], json!([MODEL]));
    assert_eq!(
        status["requested_models"],
        json!(["Qwen3-8B-Q4_K_M", MODEL])
    );
    assert_eq!(status["measured_samples_by_model"], json!({MODEL: 3}));
    assert!(status["measured_tps_p50_by_model"][MODEL].as_f64().unwrap() > 0.0);
    assert!(
        status["measured_ttft_ms_p50_by_model"][MODEL]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert_eq!(status["node_id"], "0707070707");
}

/// An in-memory byte stream stands in for TCP: what an iroh bi-stream or a turmoil stream does.
struct DuplexDialer {
    fake: FakeUpstream,
}

impl Dial for DuplexDialer {
    fn dial(&self) -> futures::future::BoxFuture<'static, io::Result<BoxIo>> {
        let fake = self.fake.clone();
        Box::pin(async move {
            let (ours, theirs) = tokio::io::duplex(16 * 1024);
            tokio::spawn(fake.serve_io(theirs));
            Ok(Box::new(ours) as BoxIo)
        })
    }

    fn authority(&self) -> String {
        "duplex.invalid".into()
    }
}

#[tokio::test]
async fn the_proxy_runs_over_any_byte_stream_a_dialer_opens() {
    let (fake, replies) = FakeUpstream::new();
    let upstream = Upstream::new(Arc::new(DuplexDialer { fake }), None);
    let node = Node::with_upstream(upstream).await;
    let (give, chunks) = oneshot::channel();
    replies.send(Reply::Stream(give)).unwrap();
    let client = tokio::spawn(
        reqwest::Client::new()
            .post(node.url("/v1/chat/completions"))
            .json(&stream_request())
            .send(),
    );
    let tx = chunks.await.unwrap();
    send(&tx, delta("a")).await;
    send(&tx, delta("b")).await;
    send(&tx, usage(2)).await;
    drop(tx);
    let text = client.await.unwrap().unwrap().text().await.unwrap();
    assert_eq!(text.matches("data: ").count(), 4);
    assert_eq!(node.concluded(1).await, BTreeMap::from([("recorded", 1)]));
}

#[tokio::test]
async fn a_backend_that_never_answers_times_out_with_504() {
    // Accepts the connection, reads nothing, says nothing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((io, _)) = silent.accept().await {
            conns.push(io);
        }
    });
    let node = Node::start_with(
        vec![(MODEL, BackendState::Ready(Upstream::tcp(addr, None)))],
        Duration::from_millis(300),
    )
    .await;
    let resp = node.chat(stream_request()).await;
    assert_eq!(resp.status(), 504);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["reason_code"], "upstream_timeout");
    assert_eq!(
        node.concluded(1).await,
        BTreeMap::from([("upstream_error", 1)])
    );
    held.abort();
}
