//! Traffic: one turmoil client per `[[traffic]]` source, sending real HTTP chats (streaming
//! `POST /v1/chat/completions`) to its entry's public API with Poisson arrivals, reading each
//! answer to its end like an SDK caller: the `x-closedmesh-served-by` and `x-closedmesh-peer`
//! headers, the SSE stream (TTFT and decode speed as the caller sees them), or the error's
//! `reason_code`. Every chat is reported to the checkers (deadline, typed ending).

use super::net::API_PORT;
use super::{Shared, lock, sim_now};
use crate::check::Ending;
use crate::report::RequestCounts;
use crate::rng::SimRng;
use crate::timeline::ChatPoint;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use mesh_core::sla::headers::SERVED_BY;
use mesh_node::entry::PEER_HEADER;
use mesh_node::sse::SseScanner;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::task::JoinSet;

/// What the clients saw.
#[derive(Debug, Clone)]
pub(crate) struct Chats {
    /// Per model (scenario order).
    pub counts: Vec<RequestCounts>,
    /// Chats the mesh served to their end, per (model, peer) by `x-closedmesh-peer`.
    pub served: BTreeMap<(usize, usize), u64>,
    pub next_id: u64,
    /// Chats not ended yet, by id: their model.
    pub open: BTreeMap<u64, usize>,
    pub timeline: Vec<ChatPoint>,
}

impl Chats {
    pub fn new(models: usize) -> Self {
        Chats {
            counts: vec![RequestCounts::default(); models],
            served: BTreeMap::new(),
            next_id: 0,
            open: BTreeMap::new(),
            timeline: Vec::new(),
        }
    }
}

/// How one chat ended, as its caller saw it.
#[derive(Debug, Clone, PartialEq)]
enum Result {
    /// Streamed to its end: who served it, and the caller's timing.
    Served {
        fallback: bool,
        peer: Option<String>,
        ttft_ms: Option<f64>,
        tps: Option<f64>,
    },
    /// An error with its `reason_code`.
    Failed(String),
}

/// The client of traffic source `t`: runs until the end of the traffic, then waits for its
/// chats.
pub(crate) async fn client(sh: Arc<Shared>, t: usize) -> ::turmoil::Result {
    let spec = sh.sc.traffic[t].clone();
    let Some((model, _)) = sh.model(&spec.model) else {
        return Ok(());
    };
    let target = match &spec.entry {
        Some(name) => Some(name.clone()),
        None => sh
            .sc
            .peers
            .iter()
            .find(|p| p.is_entry())
            .or_else(|| sh.sc.peers.iter().find(|p| p.serve.contains(&spec.model)))
            .map(|p| p.name.clone()),
    };
    let Some(target) = target else {
        return Ok(());
    };
    let mut rng = SimRng::derive(sh.seed, "traffic", t as u64);
    let end = Duration::from_secs_f64(sh.sc.duration_s);
    let mean_s = 60.0 / spec.rate_per_min;
    let mut next = Duration::from_secs_f64(spec.start_s.max(0.0) + rng.exponential(mean_s));
    let mut chats = JoinSet::new();
    while next <= end && sh.traffic_on.load(Ordering::SeqCst) {
        tokio::time::sleep(next.saturating_sub(sim_now())).await;
        if !sh.traffic_on.load(Ordering::SeqCst) {
            break;
        }
        next += Duration::from_secs_f64(rng.exponential(mean_s));
        let id = {
            let mut c = lock(&sh.chats);
            c.next_id += 1;
            c.counts[model].sent += 1;
            let id = c.next_id;
            c.open.insert(id, model);
            id
        };
        let deadline = sim_now() + Duration::from_secs_f64(spec.deadline());
        lock(&sh.checker).chat_started(id, deadline, spec.model.clone());
        // A prompt of `prompt_tokens` words, unique to this chat.
        let words: Vec<String> = (0..spec.prompt_tokens.max(1))
            .map(|i| {
                if i == 0 {
                    format!("c{t}x{id}")
                } else {
                    format!("w{:05}", rng.next_u64() % 40_000)
                }
            })
            .collect();
        let body = serde_json::json!({
            "model": spec.model,
            "messages": [{"role": "user", "content": words.join(" ")}],
            "stream": true,
            "max_tokens": spec.max_tokens,
        });
        let sh = sh.clone();
        let target = target.clone();
        chats.spawn(async move {
            let sent = sim_now();
            let result = chat(&target, body.to_string().into_bytes(), sent).await;
            record(&sh, id, model, sim_now(), result);
        });
    }
    while chats.join_next().await.is_some() {}
    Ok(())
}

fn record(sh: &Shared, id: u64, model: usize, at: Duration, result: Result) {
    let ending = {
        let mut c = lock(&sh.chats);
        c.open.remove(&id);
        match &result {
            Result::Served { fallback: true, .. } => {
                c.counts[model].fallback += 1;
                Ending::Fallback
            }
            Result::Served {
                peer, ttft_ms, tps, ..
            } => {
                c.counts[model].mesh += 1;
                if let Some(q) = peer.as_deref().and_then(|s| sh.by_short(s)) {
                    *c.served.entry((model, q)).or_default() += 1;
                }
                if let (Some(ttft_ms), Some(tps)) = (ttft_ms, tps) {
                    c.timeline.push(ChatPoint {
                        at_s: at.as_secs_f64(),
                        model,
                        ttft_ms: *ttft_ms,
                        tps: *tps,
                    });
                }
                Ending::Tokens
            }
            Result::Failed(code) => {
                *c.counts[model].failed.entry(code.clone()).or_default() += 1;
                Ending::Error("")
            }
        }
    };
    let ending = match (&result, ending) {
        (Result::Failed(code), _) => Ending::Error(code.as_str()),
        (_, e) => e,
    };
    lock(&sh.checker).chat_ended(id, at, ending);
}

/// One chat to `host`'s public API, read to its end.
async fn chat(host: &str, body: Vec<u8>, sent: Duration) -> Result {
    let tcp = match ::turmoil::net::TcpStream::connect((host, API_PORT)).await {
        Ok(t) => t,
        Err(_) => return Result::Failed("entry_unavailable".into()),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
        Ok(x) => x,
        Err(_) => return Result::Failed("entry_unavailable".into()),
    };
    tokio::spawn(conn);
    let request = Request::post("/v1/chat/completions")
        .header(HOST, host)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a fixed, valid request");
    let response = match sender.send_request(request).await {
        Ok(r) => r,
        Err(_) => return Result::Failed("entry_unavailable".into()),
    };
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let fallback = header(SERVED_BY).as_deref() == Some("fallback");
    let peer = header(PEER_HEADER);
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let code = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.pointer("/error/reason_code")
                    .or_else(|| v.pointer("/error/code"))
                    .and_then(|c| c.as_str().map(str::to_string))
            })
            .unwrap_or_else(|| format!("http_{}", status.as_u16()));
        return Result::Failed(code);
    }
    let mut scanner = SseScanner::default();
    let mut first: Option<Duration> = None;
    let mut last: Option<Duration> = None;
    let mut tokens: u32 = 0;
    let mut usage: Option<u32> = None;
    let mut tail: Vec<u8> = Vec::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Err(_)) => return Result::Failed("upstream_error".into()),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let scan = scanner.push(data);
                    if scan.content_deltas > 0 {
                        let now = sim_now();
                        first.get_or_insert(now);
                        last = Some(now);
                        tokens += scan.content_deltas;
                    }
                    if scan.usage_completion_tokens.is_some() {
                        usage = scan.usage_completion_tokens;
                    }
                    tail.extend_from_slice(data);
                    let keep = tail.len().saturating_sub(64);
                    tail.drain(..keep);
                }
            }
        }
    }
    let finished = tail.windows(6).any(|w| w == b"[DONE]");
    if !finished || tokens == 0 {
        return Result::Failed("upstream_error".into());
    }
    let ttft_ms = first.map(|f| (f - sent).as_secs_f64() * 1e3);
    let tps = match (first, last) {
        (Some(f), Some(l)) if l > f => {
            Some(f64::from(usage.unwrap_or(tokens).saturating_sub(1)) / (l - f).as_secs_f64())
        }
        _ => None,
    };
    Result::Served {
        fallback,
        peer,
        ttft_ms,
        tps,
    }
}
