//! The chat proxy: one OpenAI chat request forwarded to an [`Upstream`], its response passed
//! through to the caller frame by frame (never buffered), timed on the way, and turned into a
//! through-mesh sample by mesh-core's rules ([`Observation::to_sample`]).
//!
//! Every path that runs inference for a caller goes through [`ChatProxy::chat`] — the solo
//! backend proxy today, the split host's pipeline proxy and the tunnelled host proxy later — so
//! all of them record samples the same way (the original missed the pipeline path for weeks).

use crate::clock::Clock;
use crate::dial::Upstream;
use crate::error::ApiError;
use crate::sse::{Scan, SseScanner, json_completion_tokens};
use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, Method, Response, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use mesh_core::Timestamp;
use mesh_core::peer::{ModelName, ModelTiming};
use mesh_core::samples::{Ending, ModelSamples, NotRecorded, Observation, Sample, Summary};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::sync::broadcast;

/// Request bodies above this get 413.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// How long the proxy waits for the upstream's response head by default: generous, because a busy
/// capacity-tier host can take minutes before its first token.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(600);
/// The key under which [`Recorder::outcome_counts`] counts recorded samples.
pub const RECORDED: &str = "recorded";

pub const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// This node's through-mesh sample windows, and what happened to every proxied request.
#[derive(Debug)]
pub struct Recorder {
    clock: Clock,
    state: Mutex<RecorderState>,
    inflight: AtomicU32,
    events: broadcast::Sender<RecorderEvent>,
}

/// What listeners of a [`Recorder`] hear: the native-baseline collector (a probe that overlapped
/// real traffic is discarded) and the first-serve milestones.
#[derive(Debug, Clone, PartialEq)]
pub enum RecorderEvent {
    /// A proxied request started ([`Recorder::inflight`] already counts it).
    Started { model: ModelName },
    /// It ended; `sample` is what was recorded, if anything.
    Concluded {
        model: ModelName,
        sample: Option<Sample>,
    },
}

#[derive(Debug, Default)]
struct RecorderState {
    samples: ModelSamples,
    outcomes: BTreeMap<&'static str, u64>,
}

impl Recorder {
    pub fn new(clock: Clock) -> Self {
        Recorder {
            clock,
            state: Mutex::default(),
            inflight: AtomicU32::new(0),
            events: broadcast::channel(1024).0,
        }
    }

    /// Every request's start and end from now on. A receiver that lags loses events
    /// (`RecvError::Lagged`) and should assume traffic happened.
    pub fn subscribe(&self) -> broadcast::Receiver<RecorderEvent> {
        self.events.subscribe()
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Chats proxied right now.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Published p50s per model over the live window.
    pub fn summaries(&self) -> BTreeMap<ModelName, Summary> {
        let now = self.clock.now();
        let mut state = self.lock();
        state.samples.prune(now);
        state
            .samples
            .timings(now)
            .into_iter()
            .map(|t| {
                let summary = Summary {
                    tps_p50: t.tps_p50,
                    ttft_ms_p50: t.ttft_ms_p50,
                    samples: t.samples_in_window,
                };
                (t.model, summary)
            })
            .collect()
    }

    /// The gossiped form of the window.
    pub fn timings(&self) -> Vec<ModelTiming> {
        let now = self.clock.now();
        self.lock().samples.timings(now)
    }

    /// Requests by outcome: [`RECORDED`] or a [`NotRecorded`] code.
    pub fn outcome_counts(&self) -> BTreeMap<&'static str, u64> {
        self.lock().outcomes.clone()
    }

    fn lock(&self) -> MutexGuard<'_, RecorderState> {
        // A panic while holding this lock cannot leave the window half-updated in a way that
        // matters more than losing every later sample.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the request's outcome and logs its one info line.
    fn conclude(&self, model: &str, status: Option<u16>, result: Result<Sample, NotRecorded>) {
        // No listener is fine: nothing needs to hear it.
        let _ = self.events.send(RecorderEvent::Concluded {
            model: model.to_string(),
            sample: result.ok(),
        });
        let status = status.unwrap_or(0);
        let mut state = self.lock();
        match result {
            Ok(sample) => {
                state.samples.record(model, sample);
                *state.outcomes.entry(RECORDED).or_default() += 1;
                drop(state);
                tracing::info!(
                    model,
                    status,
                    ttft_ms = format_args!("{:.1}", sample.ttft_ms),
                    tps = format_args!("{:.2}", sample.tps),
                    completion_tokens = sample.completion_tokens,
                    "chat sample recorded"
                );
            }
            Err(reason) => {
                *state.outcomes.entry(reason.as_str()).or_default() += 1;
                drop(state);
                tracing::info!(
                    model,
                    status,
                    reason = reason.as_str(),
                    "chat sample not recorded"
                );
            }
        }
    }
}

/// Forwards chats and records their samples. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ChatProxy {
    recorder: Arc<Recorder>,
    first_byte_timeout: Duration,
}

impl ChatProxy {
    pub fn new(recorder: Arc<Recorder>) -> Self {
        ChatProxy {
            recorder,
            first_byte_timeout: DEFAULT_FIRST_BYTE_TIMEOUT,
        }
    }

    pub fn with_first_byte_timeout(mut self, timeout: Duration) -> Self {
        self.first_byte_timeout = timeout;
        self
    }

    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.recorder
    }

    /// Sends `request` (the caller's chat JSON object) to `upstream` as `POST /v1/chat/completions`
    /// and returns the upstream's response, streaming. The sample for `model` is recorded when
    /// the response ends, breaks, or the caller goes away.
    pub async fn chat(
        &self,
        model: &str,
        upstream: &Upstream,
        mut request: Map<String, Value>,
    ) -> Response<Body> {
        ask_for_usage(&mut request);
        let body = Bytes::from(
            serde_json::to_vec(&request).expect("a JSON object re-serializes without error"),
        );
        let mut tracker = Tracker::start(self.recorder.clone(), model);
        let sent = upstream.send(Method::POST, "/v1/chat/completions", Some(body));
        let response = match tokio::time::timeout(self.first_byte_timeout, sent).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(model, upstream = %upstream.authority(), error = %e, "upstream failed before responding");
                tracker.end(Ending::UpstreamError);
                return ApiError::upstream_error(format!("the backend for {model:?} failed: {e}"))
                    .into_response();
            }
            Err(_) => {
                tracing::warn!(model, upstream = %upstream.authority(), timeout_s = self.first_byte_timeout.as_secs(), "upstream sent no response in time");
                tracker.end(Ending::UpstreamError);
                return ApiError::upstream_timeout(format!(
                    "the backend for {model:?} did not answer within {} s",
                    self.first_byte_timeout.as_secs()
                ))
                .into_response();
            }
        };
        tracker.status = Some(response.status().as_u16());
        let (parts, incoming) = response.into_parts();
        let content_type = parts.headers.get(CONTENT_TYPE).cloned();
        let reading = if is_event_stream(content_type.as_ref()) {
            Reading::Sse(SseScanner::default())
        } else {
            Reading::Json(Vec::new())
        };
        let body = Body::new(ObservedBody {
            inner: incoming,
            tracker,
            reading,
        });
        streamed_response(parts.status, content_type, body)
    }
}

/// Whether a `Content-Type` is server-sent events.
pub(crate) fn is_event_stream(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// An upstream answer passed on as it streams: its status and content type, and headers that
/// keep reverse proxies in front of the node (nginx and friends) from buffering it.
pub(crate) fn streamed_response(
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Body,
) -> Response<Body> {
    let is_sse = is_event_stream(content_type.as_ref());
    let mut out = Response::new(body);
    *out.status_mut() = status;
    let headers = out.headers_mut();
    if let Some(ct) = content_type {
        headers.insert(CONTENT_TYPE, ct);
    }
    headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    if is_sse {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    out
}

/// Streams get `stream_options.include_usage: true` (keeping any other stream options), so the
/// SSE tail carries the completion-token count. Returns whether the request streams.
pub fn ask_for_usage(request: &mut Map<String, Value>) -> bool {
    let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
    if stream {
        let options = request
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !options.is_object() {
            *options = Value::Object(Map::new());
        }
        if let Value::Object(o) = options {
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
    stream
}

/// One request's observation in progress. Ending it records (or declines) the sample exactly
/// once; dropping it unended means the caller went away.
#[derive(Debug)]
struct Tracker {
    recorder: Arc<Recorder>,
    model: ModelName,
    sent_at: Timestamp,
    status: Option<u16>,
    first_token_at: Option<Timestamp>,
    last_token_at: Option<Timestamp>,
    usage_completion_tokens: Option<u32>,
    counted_deltas: u32,
    ended: bool,
}

impl Tracker {
    fn start(recorder: Arc<Recorder>, model: &str) -> Self {
        recorder.inflight.fetch_add(1, Ordering::Relaxed);
        let _ = recorder.events.send(RecorderEvent::Started {
            model: model.to_string(),
        });
        let sent_at = recorder.clock.now();
        Tracker {
            recorder,
            model: model.to_string(),
            sent_at,
            status: None,
            first_token_at: None,
            last_token_at: None,
            usage_completion_tokens: None,
            counted_deltas: 0,
            ended: false,
        }
    }

    fn observe(&mut self, scan: Scan, at: Timestamp) {
        if scan.content_deltas > 0 {
            self.first_token_at.get_or_insert(at);
            self.last_token_at = Some(at);
            self.counted_deltas = self.counted_deltas.saturating_add(scan.content_deltas);
        }
        if scan.usage_completion_tokens.is_some() {
            self.usage_completion_tokens = scan.usage_completion_tokens;
        }
    }

    fn end(&mut self, ending: Ending) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        self.recorder.inflight.fetch_sub(1, Ordering::Relaxed);
        let result = match self.status {
            // No response at all: nothing to time.
            None => Err(match ending {
                Ending::ClientDisconnected => NotRecorded::ClientDisconnected,
                Ending::Complete | Ending::UpstreamError => NotRecorded::UpstreamError,
            }),
            Some(status) => Observation {
                sent_at: self.sent_at,
                status,
                first_token_at: self.first_token_at,
                last_token_at: self.last_token_at,
                finished_at: self.recorder.clock.now(),
                usage_completion_tokens: self.usage_completion_tokens,
                counted_deltas: self.counted_deltas,
                ending,
            }
            .to_sample(),
        };
        self.recorder.conclude(&self.model, self.status, result);
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.end(Ending::ClientDisconnected);
    }
}

enum Reading {
    Sse(SseScanner),
    /// A non-streaming body, kept (up to the body cap) to read its usage at the end.
    Json(Vec<u8>),
}

/// The upstream body, passed through untouched while the tracker watches it go by.
struct ObservedBody {
    inner: Incoming,
    tracker: Tracker,
    reading: Reading,
}

impl ObservedBody {
    /// The upstream response ended normally.
    fn complete(&mut self) {
        if self.tracker.ended {
            return;
        }
        let now = self.tracker.recorder.clock.now();
        let scan = match &mut self.reading {
            Reading::Sse(scanner) => scanner.finish(),
            Reading::Json(buf) => Scan {
                content_deltas: 0,
                usage_completion_tokens: json_completion_tokens(buf),
            },
        };
        self.tracker.observe(scan, now);
        self.tracker.end(Ending::Complete);
    }
}

impl hyper::body::Body for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    match &mut this.reading {
                        Reading::Sse(scanner) => {
                            let scan = scanner.push(data);
                            this.tracker
                                .observe(scan, this.tracker.recorder.clock.now());
                        }
                        Reading::Json(buf) => {
                            if buf.len() + data.len() <= MAX_BODY_BYTES {
                                buf.extend_from_slice(data);
                            }
                        }
                    }
                }
                // A body of known length ends with its last byte: the server writing it to the
                // caller need not poll again, so this may be the last chance to conclude.
                if this.inner.is_end_stream() {
                    this.complete();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                tracing::warn!(model = %this.tracker.model, error = %e, "upstream broke off mid-response");
                this.tracker.end(Ending::UpstreamError);
                Poll::Ready(Some(Err(e)))
            }
            None => {
                this.complete();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Only once concluded: reporting the end before `complete` ran would make the server stop
        // polling, and the request would read as a disconnect.
        self.tracker.ended && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test literals are objects"),
        }
    }

    #[test]
    fn streams_ask_for_usage_and_keep_their_other_stream_options() {
        let mut r = obj(json!({"model": "m", "stream": true, "stream_options": {"x": 1}}));
        assert!(ask_for_usage(&mut r));
        assert_eq!(r["stream_options"], json!({"x": 1, "include_usage": true}));

        let mut r = obj(json!({"stream": true, "stream_options": null}));
        ask_for_usage(&mut r);
        assert_eq!(r["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn non_streaming_requests_are_left_alone() {
        let mut r = obj(json!({"model": "m", "stream": false}));
        assert!(!ask_for_usage(&mut r));
        assert!(!r.contains_key("stream_options"));
        let mut r = obj(json!({"model": "m"}));
        assert!(!ask_for_usage(&mut r));
        assert!(!r.contains_key("stream_options"));
    }

    #[tokio::test]
    async fn dropping_an_unfinished_request_records_client_disconnected_once() {
        let recorder = Arc::new(Recorder::new(Clock::system()));
        let mut t = Tracker::start(recorder.clone(), "m");
        t.status = Some(200);
        t.observe(
            Scan {
                content_deltas: 3,
                usage_completion_tokens: None,
            },
            recorder.clock().now(),
        );
        assert_eq!(recorder.inflight(), 1);
        drop(t);
        assert_eq!(recorder.inflight(), 0);
        assert_eq!(
            recorder.outcome_counts(),
            BTreeMap::from([("client_disconnected", 1)])
        );
        assert!(recorder.summaries().is_empty());
    }

    #[tokio::test]
    async fn no_response_at_all_is_an_upstream_error() {
        let recorder = Arc::new(Recorder::new(Clock::system()));
        let mut t = Tracker::start(recorder.clone(), "m");
        t.end(Ending::UpstreamError);
        drop(t);
        assert_eq!(
            recorder.outcome_counts(),
            BTreeMap::from([("upstream_error", 1)])
        );
    }
}
