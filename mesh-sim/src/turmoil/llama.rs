//! A simulated `llama-server` on turmoil TCP: the slice of llama-server's HTTP API the node uses —
//! `GET /health` (503 while loading), `GET /v1/models`, and `POST /v1/chat/completions`, JSON or
//! streamed as SSE with the `usage` chunk (when `stream_options.include_usage`) and, when asked
//! (`logprobs`, `top_logprobs`), each token's id, bytes, logprob and top-k candidates — behind a
//! per-launch API key.
//!
//! Its answers are [`crate::decode`]'s, so fingerprints and comparisons see real-looking decodes,
//! and a dishonest peer's server answers as its behaviour says. Its timing is the GPU profile's
//! ([`crate::profile`]) in virtual time: the first token after the TTFT, then one every
//! per-token interval, with the backend's seeded jitter and llama.cpp's batch slowdown, at most
//! `slots` requests at once (`--parallel`), the rest queued. The mesh path's own cost is not
//! added here: it is what the simulated network and the real node code between the caller and
//! this server take.

use crate::decode;
use crate::profile::{self, BATCH_SLOWDOWN_PER_SEQUENCE, Model, Serving, Timing};
use crate::rng::SimRng;
use crate::scenario::Behaviour;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use mesh_core::Backend;
use mesh_core::verify::{DecodedToken, FIXED_PROBE_PROMPT};
use mesh_node::clock::Clock;
use serde_json::{Map, Value, json};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A canned-text server streams stored text: no model, no prefill (the discrete-event engine's
/// figure).
pub const CANNED: Timing = Timing {
    ttft_ms: profile::REQUEST_OVERHEAD_MS,
    per_token_ms: 2.0,
};
/// `max_tokens` when a request sets none.
const DEFAULT_MAX_TOKENS: u32 = 256;

/// What answers a request, and at what speed.
#[derive(Debug, Clone)]
pub enum Backing {
    Model(Serving),
    Canned,
}

impl Backing {
    fn timing(&self, prompt_tokens: u32) -> Timing {
        match self {
            Backing::Model(s) => s.native(prompt_tokens),
            Backing::Canned => CANNED,
        }
    }
}

/// What a peer with `behaviour` really runs for real traffic and for the requests it recognises
/// as probes, given the honest layout and a way to lay out other weights the same way.
pub fn backings(
    behaviour: Behaviour,
    honest: &Serving,
    layout: impl Fn(&Model) -> Serving,
) -> (Backing, Backing) {
    let cheaper = |size: f64, params: f64| {
        Backing::Model(layout(&Model {
            size_gb: honest.model.size_gb * size,
            params_b: honest.model.params_b * params,
            active_params_b: honest.model.active_params_b * params,
            ..honest.model.clone()
        }))
    };
    let real = Backing::Model(honest.clone());
    match behaviour {
        Behaviour::Honest | Behaviour::InflateMemory | Behaviour::InflateTimings => {
            (real.clone(), real)
        }
        Behaviour::CheaperQuant => (cheaper(0.75, 1.0), cheaper(0.75, 1.0)),
        Behaviour::SmallerModel | Behaviour::ReplayFingerprint => {
            (cheaper(0.5, 0.5), cheaper(0.5, 0.5))
        }
        Behaviour::ProbeAware => (cheaper(0.75, 1.0), real),
        Behaviour::CannedText => (Backing::Canned, Backing::Canned),
    }
}

/// One simulated llama-server launch.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub model: String,
    pub behaviour: Behaviour,
    pub backend: Backend,
    pub traffic: Backing,
    pub probes: Backing,
    /// `--parallel`.
    pub slots: usize,
    /// `--api-key`.
    pub api_key: String,
    /// From launch until `/health` answers 200 (reading the GGUF, start-up).
    pub load: Duration,
    /// Seeds the timing jitter.
    pub seed: u64,
    pub clock: Clock,
}

/// A running simulated llama-server; stops when dropped.
#[derive(Debug)]
pub struct LlamaServer {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

struct Server {
    config: LlamaConfig,
    ready_at: Instant,
    slots: Arc<Semaphore>,
    active: Arc<AtomicU32>,
    jitter: Mutex<SimRng>,
    requests: AtomicU64,
}

impl LlamaServer {
    /// Binds `port` on this host and starts serving (loading until `config.load` has passed).
    pub async fn start(config: LlamaConfig, port: u16) -> std::io::Result<LlamaServer> {
        let listener = super::net::Listener::bind(port).await?;
        let server = Arc::new(Server {
            ready_at: Instant::now() + config.load,
            slots: Arc::new(Semaphore::new(config.slots.max(1))),
            active: Arc::new(AtomicU32::new(0)),
            jitter: Mutex::new(SimRng::derive(config.seed, "llama-jitter", 0)),
            requests: AtomicU64::new(0),
            config,
        });
        let router = Router::new()
            .route("/health", get(health))
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(chat))
            .with_state(server);
        let (stop, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(mesh_node::http_serve::serve(listener, router, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
        Ok(LlamaServer { stop, task })
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "type": kind}});
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn health(State(s): State<Arc<Server>>) -> Response<Body> {
    if Instant::now() < s.ready_at {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_error",
            "Loading model",
        );
    }
    let mut r = Response::new(Body::from(r#"{"status":"ok"}"#));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn models(State(s): State<Arc<Server>>) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": s.config.model, "object": "model", "owned_by": "llamacpp"}]}),
    )
}

/// The request as the server reads it.
struct Ask {
    prompt: String,
    prompt_tokens: u32,
    max_tokens: u32,
    stream: bool,
    include_usage: bool,
    top_logprobs: Option<usize>,
    /// Carries `seed` or `cache_prompt`: what the node's baseline probes send.
    probe_shaped: bool,
}

fn read_ask(body: &Map<String, Value>) -> Result<Ask, String> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or("\"messages\" is required")?;
    let text = |m: &Value| {
        m.get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let prompt = messages.last().map(text).unwrap_or_default();
    let words: usize = messages
        .iter()
        .map(|m| text(m).split_whitespace().count())
        .sum();
    let probe_shaped = body.contains_key("seed") || body.contains_key("cache_prompt");
    let logprobs = body.get("logprobs").and_then(Value::as_bool) == Some(true);
    Ok(Ask {
        prompt_tokens: if probe_shaped {
            profile::PROBE_PROMPT_TOKENS
        } else {
            (words as u32).max(1)
        },
        prompt,
        max_tokens: body
            .get("max_tokens")
            .and_then(Value::as_u64)
            .map_or(DEFAULT_MAX_TOKENS, |n| n.clamp(1, 100_000) as u32),
        stream: body.get("stream").and_then(Value::as_bool) == Some(true),
        include_usage: body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true),
        top_logprobs: logprobs.then(|| {
            body.get("top_logprobs")
                .and_then(Value::as_u64)
                .map_or(1, |k| k.min(20) as usize)
        }),
        probe_shaped,
    })
}

/// How many tokens the model writes before it stops: all it was allowed for a probe (the
/// baseline and fingerprint want them), else between half and all of them (where the answer
/// ends), a pure function of the prompt.
fn answer_length(ask: &Ask) -> u32 {
    if ask.probe_shaped {
        return ask.max_tokens;
    }
    let lo = ask.max_tokens.div_ceil(2);
    let span = u64::from(ask.max_tokens - lo + 1);
    let h = ask.prompt.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    lo + (h % span) as u32
}

/// Counts the request in the server's active sequences until dropped.
struct Active(Arc<AtomicU32>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn chat(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Json(body): Json<Map<String, Value>>,
) -> Response<Body> {
    let expected = format!("Bearer {}", s.config.api_key);
    if headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "Invalid API Key",
        );
    }
    if Instant::now() < s.ready_at {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_error",
            "Loading model",
        );
    }
    let ask = match read_ask(&body) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request_error", &e),
    };
    let Ok(permit) = s.slots.clone().acquire_owned().await else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_error",
            "server stopping",
        );
    };
    let others = s.active.fetch_add(1, Ordering::SeqCst);
    let active = Active(s.active.clone());
    let recognised = ask.probe_shaped || ask.prompt == FIXED_PROBE_PROMPT;
    let backing = if recognised {
        &s.config.probes
    } else {
        &s.config.traffic
    };
    let base = backing.timing(ask.prompt_tokens);
    let sigma = profile::jitter_sigma(s.config.backend);
    let (ttft_j, tok_j) = {
        let mut rng = s.jitter.lock().unwrap_or_else(|p| p.into_inner());
        (rng.jitter(sigma), rng.jitter(sigma))
    };
    let batch = 1.0 + BATCH_SLOWDOWN_PER_SEQUENCE * f64::from(others);
    let ttft = ms(base.ttft_ms * ttft_j);
    let per_token = ms(base.per_token_ms * tok_j * batch);
    let n = answer_length(&ask);
    let decode = decode::answer(
        &s.config.model,
        s.config.behaviour,
        s.config.backend,
        decode::Request {
            prompt: &ask.prompt,
            max_tokens: n,
            probe_shaped: ask.probe_shaped,
        },
    );
    let tokens: Vec<DecodedToken> = decode.tokens;
    let id = s.requests.fetch_add(1, Ordering::SeqCst);
    let meta = Meta {
        id: format!("chatcmpl-sim-{id}"),
        created: s.config.clock.now().as_unix_secs(),
        model: s.config.model.clone(),
    };
    if !ask.stream {
        let total = ttft + per_token * (tokens.len() as u32).saturating_sub(1);
        tokio::time::sleep(total).await;
        drop((permit, active));
        let text: String = tokens
            .iter()
            .map(|t| String::from_utf8_lossy(&t.bytes).into_owned())
            .collect();
        let mut choice = json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason(tokens.len() as u32, ask.max_tokens),
        });
        if let Some(k) = ask.top_logprobs {
            choice["logprobs"] =
                json!({"content": tokens.iter().map(|t| token_json(t, k)).collect::<Vec<_>>()});
        }
        let body = json!({
            "id": meta.id,
            "object": "chat.completion",
            "created": meta.created,
            "model": meta.model,
            "choices": [choice],
            "usage": usage(ask.prompt_tokens, tokens.len() as u32),
        });
        let mut r = Response::new(Body::from(body.to_string()));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return r;
    }
    let generation = Generation {
        meta,
        tokens,
        next: 0,
        ttft,
        per_token,
        top_logprobs: ask.top_logprobs,
        include_usage: ask.include_usage,
        prompt_tokens: ask.prompt_tokens,
        max_tokens: ask.max_tokens,
        phase: Phase::Tokens,
        _slot: permit,
        _active: active,
    };
    let stream = futures::stream::unfold(generation, |mut g| async move {
        let event = g.step().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(event), g))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r
}

fn ms(v: f64) -> Duration {
    Duration::from_micros((v.max(0.0) * 1e3).round() as u64)
}

fn finish_reason(written: u32, max_tokens: u32) -> &'static str {
    if written >= max_tokens {
        "length"
    } else {
        "stop"
    }
}

fn usage(prompt: u32, completion: u32) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

fn token_json(t: &DecodedToken, k: usize) -> Value {
    let text = String::from_utf8_lossy(&t.bytes).into_owned();
    json!({
        "id": t.id,
        "token": text,
        "bytes": t.bytes,
        "logprob": t.logprob,
        "top_logprobs": t.top.iter().take(k).map(|c| json!({
            "id": c.id,
            "token": String::from_utf8_lossy(&c.bytes),
            "bytes": c.bytes,
            "logprob": c.logprob,
        })).collect::<Vec<_>>(),
    })
}

struct Meta {
    id: String,
    created: u64,
    model: String,
}

enum Phase {
    Tokens,
    Finish,
    Usage,
    Done,
    End,
}

/// One streamed answer: an SSE event per step, the tokens paced in virtual time. Dropping it
/// (the caller went away) frees its slot and stops the generation.
struct Generation {
    meta: Meta,
    tokens: Vec<DecodedToken>,
    next: usize,
    ttft: Duration,
    per_token: Duration,
    top_logprobs: Option<usize>,
    include_usage: bool,
    prompt_tokens: u32,
    max_tokens: u32,
    phase: Phase,
    _slot: OwnedSemaphorePermit,
    _active: Active,
}

impl Generation {
    fn chunk(&self, choices: Value, extra: Option<(&str, Value)>) -> Bytes {
        let mut c = json!({
            "id": self.meta.id,
            "object": "chat.completion.chunk",
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": choices,
        });
        if let Some((k, v)) = extra {
            c[k] = v;
        }
        Bytes::from(format!("data: {c}\n\n"))
    }

    async fn step(&mut self) -> Option<Bytes> {
        if matches!(self.phase, Phase::Tokens) && self.next >= self.tokens.len() {
            self.phase = Phase::Finish;
        }
        match self.phase {
            Phase::Tokens => {
                let t = &self.tokens[self.next];
                let first = self.next == 0;
                tokio::time::sleep(if first { self.ttft } else { self.per_token }).await;
                let mut choice = json!({
                    "index": 0,
                    "delta": {"content": String::from_utf8_lossy(&t.bytes)},
                    "finish_reason": null,
                });
                if let Some(k) = self.top_logprobs {
                    choice["logprobs"] = json!({"content": [token_json(t, k)]});
                }
                self.next += 1;
                let mut out = Vec::new();
                if first {
                    let role = json!([{"index": 0, "delta": {"role": "assistant", "content": null}, "finish_reason": null}]);
                    out.extend_from_slice(&self.chunk(role, None));
                }
                out.extend_from_slice(&self.chunk(json!([choice]), None));
                Some(Bytes::from(out))
            }
            Phase::Finish => {
                self.phase = if self.include_usage {
                    Phase::Usage
                } else {
                    Phase::Done
                };
                let reason = finish_reason(self.tokens.len() as u32, self.max_tokens);
                Some(self.chunk(
                    json!([{"index": 0, "delta": {}, "finish_reason": reason}]),
                    None,
                ))
            }
            Phase::Usage => {
                self.phase = Phase::Done;
                let u = usage(self.prompt_tokens, self.tokens.len() as u32);
                Some(self.chunk(json!([]), Some(("usage", u))))
            }
            Phase::Done => {
                self.phase = Phase::End;
                Some(Bytes::from_static(b"data: [DONE]\n\n"))
            }
            Phase::End => None,
        }
    }
}

#[cfg(test)]
mod tests;
