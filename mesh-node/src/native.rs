//! The native-baseline collector's shell (SPEC §5): mesh-core's [`BaselineCollector`] driven by
//! this node's real llama-servers and real traffic.
//!
//! - A solo llama-server turning healthy ([`ServerEvent::Ready`] from the supervisor) is
//!   `ServerReady` with the GGUF's mtime; a split host's server is never measured (its path
//!   already crosses the RPC tunnels, so it would not be a native figure).
//! - Real traffic comes from the proxy's [`Recorder`] events: every request start and end is an
//!   `InflightChanged`, so a probe that overlapped a chat is discarded.
//! - The GGUF's mtime is looked at every [`NativeSettings::file_poll`]: a touched file re-measures.
//! - Probes go straight to `127.0.0.1:<port>` with the server's own key, are read frame by frame
//!   and timed into an [`Observation`] with the proxy's rules (first and last content byte,
//!   `usage` from the SSE tail, counted deltas as the fallback), so native and through-mesh
//!   numbers come from the same arithmetic. The fixed probe's `logprobs.content[]` becomes the
//!   fingerprint's tokens and candidates.
//! - Publications go to [`PublishedBaselines`] (read by `/api/status` and the announcement) and
//!   to `<data dir>/native-baselines.json`, which the next run starts from (no re-measure before
//!   the 12 h refresh unless the file or the runtime changed).

use crate::clock::Clock;
use crate::dial::Upstream;
use crate::proxy::{Recorder, RecorderEvent};
use crate::sse::SseScanner;
use crate::supervise::{LocalModel, ServerEvent};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;
use mesh_core::Timestamp;
use mesh_core::baseline::{
    BaselineCache, BaselineCollector, BaselineConfig, BaselineEvent, BaselineOutput, BaselineProbe,
    ProbeId, ProbeResult,
};
use mesh_core::launch::Placement;
use mesh_core::peer::{Backend, ModelName, NativeBaseline};
use mesh_core::samples::{Ending, Observation};
use mesh_core::verify::{Candidate, Decode, DecodedToken, ProbeFailed};
use rand_core::SeedableRng;
use rand_pcg::Pcg64;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// `<data dir>/native-baselines.json`.
pub const CACHE_FILE: &str = "native-baselines.json";
/// How often the GGUF files' mtimes are looked at.
pub const FILE_POLL: Duration = Duration::from_secs(5);
/// A probe (128 tokens) that takes longer than this has failed: generous for the slowest
/// capacity-tier machines (0.7 tok/s would need ~3 min).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(600);

/// How this node's collector runs.
#[derive(Debug, Clone)]
pub struct NativeSettings {
    /// Wait after a server turns healthy before the first probe (SPEC: 30 s; tests shorten it).
    pub settle: Duration,
    pub file_poll: Duration,
    /// This runtime and its llama-server build ([`runtime_version`]); part of the cache key.
    pub runtime_version: String,
    pub backend: Backend,
    pub data_dir: PathBuf,
    /// Seeds the nonce prompts.
    pub seed: u64,
}

/// The baselines this node publishes now, for `/api/status` and the announcement.
#[derive(Debug, Default)]
pub struct PublishedBaselines(RwLock<Vec<NativeBaseline>>);

impl PublishedBaselines {
    pub fn get(&self) -> Vec<NativeBaseline> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, baselines: Vec<NativeBaseline>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = baselines;
    }
}

/// `mesh-node <version> / <llama-server --version>`: a new llama.cpp build invalidates cached
/// baselines and their fingerprints.
pub async fn runtime_version(llama_server: &Path) -> String {
    let llama = match tokio::process::Command::new(llama_server)
        .arg("--version")
        .output()
        .await
    {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push('\n');
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            // Builds print device probing around the two lines that identify them.
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("version") || l.starts_with("built with"))
                .collect();
            if lines.is_empty() {
                "llama-server (unknown version)".to_string()
            } else {
                format!("llama-server {}", lines.join("; "))
            }
        }
        Err(e) => format!("llama-server (unknown version: {e})"),
    };
    format!("mesh-node {} / {llama}", env!("CARGO_PKG_VERSION"))
}

/// The GGUF's modification time in nanoseconds since the Unix epoch (the cache key).
pub fn model_mtime_nanos(path: &Path) -> io::Result<u64> {
    let modified = fs::metadata(path)?.modified()?;
    let since = modified
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Ok(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

/// Reads `<data dir>/native-baselines.json`; a missing file is an empty cache, a corrupt one is
/// logged and replaced on the next publication.
pub fn read_cache(data_dir: &Path) -> BaselineCache {
    let path = data_dir.join(CACHE_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => BaselineCache::from_json(&text).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable baseline cache");
            BaselineCache::default()
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => BaselineCache::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not read the baseline cache");
            BaselineCache::default()
        }
    }
}

fn write_cache(data_dir: &Path, cache: &BaselineCache) -> io::Result<()> {
    write_atomically(&data_dir.join(CACHE_FILE), cache.to_json().as_bytes())
}

/// Writes via a temporary file and a rename, so a crash never leaves half a file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// A solo server the collector may probe.
struct Server {
    model: LocalModel,
    upstream: Upstream,
}

/// Runs the collector until `shutdown` turns true.
pub async fn run(
    settings: NativeSettings,
    mut servers_rx: mpsc::UnboundedReceiver<ServerEvent>,
    recorder: Arc<Recorder>,
    published: Arc<PublishedBaselines>,
    mut shutdown: watch::Receiver<bool>,
) {
    let clock = recorder.clock();
    let mut config = BaselineConfig::new(settings.runtime_version.clone(), settings.backend);
    config.settle = settings.settle;
    let mut collector = BaselineCollector::new(
        config,
        read_cache(&settings.data_dir),
        Pcg64::seed_from_u64(settings.seed),
    );
    let mut traffic = recorder.subscribe();
    let mut servers: BTreeMap<ModelName, Server> = BTreeMap::new();
    let mut probe: Option<(ProbeId, JoinHandle<Result<ProbeResult, ProbeFailed>>)> = None;
    let mut file_tick = tokio::time::interval(settings.file_poll);
    file_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut servers_open = true;
    tracing::info!(settle_s = settings.settle.as_secs_f64(), runtime = %settings.runtime_version, "native-baseline collector running");

    loop {
        while let Some(out) = collector.poll_output() {
            act(
                out,
                &mut collector,
                &servers,
                &mut probe,
                &settings,
                &published,
                clock,
            );
        }
        let deadline = collector
            .poll_timeout()
            .map(|at| clock.instant() + at.saturating_since(clock.now()));
        tokio::select! {
            ev = servers_rx.recv(), if servers_open => match ev {
                Some(ev) => on_server_event(ev, &mut collector, &mut servers, clock),
                None => servers_open = false,
            },
            ev = traffic.recv() => {
                let now = clock.now();
                match ev {
                    Ok(RecorderEvent::Started { .. }) => {
                        let inflight = recorder.inflight().max(1);
                        collector.handle(BaselineEvent::InflightChanged { inflight }, now);
                    }
                    Ok(RecorderEvent::Concluded { .. }) => {
                        let inflight = recorder.inflight();
                        collector.handle(BaselineEvent::InflightChanged { inflight }, now);
                    }
                    // Missed events were traffic: count it as an overlap.
                    Err(RecvError::Lagged(_)) => {
                        collector.handle(BaselineEvent::InflightChanged { inflight: 1 }, now);
                        let inflight = recorder.inflight();
                        collector.handle(BaselineEvent::InflightChanged { inflight }, now);
                    }
                    Err(RecvError::Closed) => break,
                }
            }
            () = sleep_until(deadline), if deadline.is_some() => {
                collector.handle_timeout(clock.now());
            }
            joined = finished(&mut probe), if probe.is_some() => {
                let (id, result) = joined;
                collector.handle(BaselineEvent::ProbeFinished { id, result }, clock.now());
            }
            _ = file_tick.tick() => {
                for (name, server) in &servers {
                    match model_mtime_nanos(&server.model.path) {
                        Ok(mtime) => collector.handle(
                            BaselineEvent::ModelFileSeen { model: name.clone(), model_mtime_unix_nanos: mtime },
                            clock.now(),
                        ),
                        Err(e) => tracing::debug!(model = %name, error = %e, "could not stat the model file"),
                    }
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    if let Some((_, task)) = probe {
        task.abort();
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The running probe's result; a panicked or aborted task is a failed probe.
async fn finished(
    probe: &mut Option<(ProbeId, JoinHandle<Result<ProbeResult, ProbeFailed>>)>,
) -> (ProbeId, Result<ProbeResult, ProbeFailed>) {
    let Some((id, task)) = probe.as_mut() else {
        return std::future::pending().await;
    };
    let id = *id;
    let result = task.await.unwrap_or_else(|e| {
        Err(ProbeFailed {
            reason: format!("probe task ended: {e}"),
        })
    });
    *probe = None;
    (id, result)
}

fn on_server_event(
    ev: ServerEvent,
    collector: &mut BaselineCollector,
    servers: &mut BTreeMap<ModelName, Server>,
    clock: Clock,
) {
    match ev {
        ServerEvent::Ready {
            model,
            upstream,
            placement: Placement::Solo { .. },
        } => {
            let name = model.name.clone();
            match model_mtime_nanos(&model.path) {
                Ok(mtime) => {
                    servers.insert(name.clone(), Server { model, upstream });
                    collector.handle(
                        BaselineEvent::ServerReady {
                            model: name,
                            model_mtime_unix_nanos: mtime,
                        },
                        clock.now(),
                    );
                }
                Err(e) => {
                    tracing::warn!(model = %name, error = %e, "model file unreadable: no native baseline");
                }
            }
        }
        // A split host's llama-server reaches its layers through the mesh: not a native figure.
        ServerEvent::Ready { model, .. } => {
            servers.remove(&model.name);
            collector.handle(
                BaselineEvent::ServerStopped { model: model.name },
                clock.now(),
            );
        }
        ServerEvent::Stopped { model } => {
            servers.remove(&model);
            collector.handle(BaselineEvent::ServerStopped { model }, clock.now());
        }
    }
}

fn act(
    out: BaselineOutput,
    collector: &mut BaselineCollector,
    servers: &BTreeMap<ModelName, Server>,
    probe: &mut Option<(ProbeId, JoinHandle<Result<ProbeResult, ProbeFailed>>)>,
    settings: &NativeSettings,
    published: &PublishedBaselines,
    clock: Clock,
) {
    match out {
        BaselineOutput::Probe(p) => match servers.get(&p.model) {
            Some(server) => {
                tracing::debug!(model = %p.model, kind = ?p.kind, "native-baseline probe");
                let upstream = server.upstream.clone();
                let id = p.id;
                let task = tokio::spawn(async move {
                    match tokio::time::timeout(PROBE_TIMEOUT, run_probe(&upstream, &p, clock)).await
                    {
                        Ok(r) => r,
                        Err(_) => Err(ProbeFailed {
                            reason: format!("no complete answer within {PROBE_TIMEOUT:?}"),
                        }),
                    }
                });
                *probe = Some((id, task));
            }
            None => collector.handle(
                BaselineEvent::ProbeFinished {
                    id: p.id,
                    result: Err(ProbeFailed {
                        reason: "the server stopped".into(),
                    }),
                },
                clock.now(),
            ),
        },
        BaselineOutput::Publish(b) => {
            tracing::info!(
                model = %b.model,
                native_tps_p50 = format_args!("{:.2}", b.native_tps_p50),
                native_ttft_ms_p50 = format_args!("{:.1}", b.native_ttft_ms_p50),
                samples = b.samples,
                fingerprint = b.fingerprint.is_some(),
                "native baseline published"
            );
            published.set(collector.published());
            if let Err(e) = write_cache(&settings.data_dir, collector.cache()) {
                tracing::warn!(error = %e, "could not write {CACHE_FILE}");
            }
        }
        BaselineOutput::SampleDropped {
            model,
            kind,
            reason,
        } => {
            tracing::info!(%model, ?kind, ?reason, "native-baseline sample dropped");
        }
        BaselineOutput::RefreshFailed { model, retry_at } => {
            let in_s = retry_at.saturating_since(clock.now()).as_secs();
            tracing::warn!(%model, retry_in_s = in_s, "native-baseline refresh failed: no sample survived; keeping the cached value");
        }
    }
}

/// Runs one probe against a local llama-server and reads it the way the proxy reads a chat.
/// POSTs a probe's chat-completions body to a local llama-server.
pub(crate) async fn post_probe(
    upstream: &Upstream,
    body: &serde_json::Value,
) -> Result<hyper::Response<hyper::body::Incoming>, ProbeFailed> {
    let body = Bytes::from(serde_json::to_vec(body).expect("a JSON value always serialises"));
    upstream
        .send(Method::POST, "/v1/chat/completions", Some(body))
        .await
        .map_err(|e| ProbeFailed {
            reason: e.to_string(),
        })
}

pub async fn run_probe(
    upstream: &Upstream,
    probe: &BaselineProbe,
    clock: Clock,
) -> Result<ProbeResult, ProbeFailed> {
    let body = probe.body();
    let sent_at = clock.now();
    let response = post_probe(upstream, &body).await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut timing = ProbeTiming::new(sent_at);
    let mut decoder = DecodeReader::default();
    let mut scanner = SseScanner::default();
    let ending = loop {
        match body.frame().await {
            None => break Ending::Complete,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "probe stream broke off");
                break Ending::UpstreamError;
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let scan = scanner.push(data);
                    timing.observe(
                        scan.content_deltas,
                        scan.usage_completion_tokens,
                        clock.now(),
                    );
                    decoder.push(data);
                }
            }
        }
    };
    let finished_at = clock.now();
    let tail = scanner.finish();
    timing.observe(
        tail.content_deltas,
        tail.usage_completion_tokens,
        finished_at,
    );
    decoder.finish();
    Ok(ProbeResult {
        observation: timing.observation(status, finished_at, ending),
        decode: decoder.decode,
    })
}

/// Reads a streamed chat answer to its end into a [`Decode`]: the content text and, when the
/// request asked for `logprobs`, each token with its candidates. The one reading of answers that
/// baselines (the fixed probe) and the entry's audits (fresh probes, either side) share.
pub async fn read_decode<B>(mut body: B) -> Result<Decode, ProbeFailed>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut decoder = DecodeReader::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProbeFailed {
            reason: format!("the answer broke off: {e}"),
        })?;
        if let Some(data) = frame.data_ref() {
            decoder.push(data);
        }
    }
    decoder.finish();
    Ok(decoder.decode)
}

/// The proxy's timing rules for one response (see `proxy::Tracker`): the first and last frame
/// that carried content, the usage tail, and the counted deltas.
struct ProbeTiming {
    sent_at: Timestamp,
    first_token_at: Option<Timestamp>,
    last_token_at: Option<Timestamp>,
    usage_completion_tokens: Option<u32>,
    counted_deltas: u32,
}

impl ProbeTiming {
    fn new(sent_at: Timestamp) -> Self {
        ProbeTiming {
            sent_at,
            first_token_at: None,
            last_token_at: None,
            usage_completion_tokens: None,
            counted_deltas: 0,
        }
    }

    fn observe(&mut self, deltas: u32, usage: Option<u32>, at: Timestamp) {
        if deltas > 0 {
            self.first_token_at.get_or_insert(at);
            self.last_token_at = Some(at);
            self.counted_deltas = self.counted_deltas.saturating_add(deltas);
        }
        if usage.is_some() {
            self.usage_completion_tokens = usage;
        }
    }

    fn observation(&self, status: u16, finished_at: Timestamp, ending: Ending) -> Observation {
        Observation {
            sent_at: self.sent_at,
            status,
            first_token_at: self.first_token_at,
            last_token_at: self.last_token_at,
            finished_at,
            usage_completion_tokens: self.usage_completion_tokens,
            counted_deltas: self.counted_deltas,
            ending,
        }
    }
}

/// Collects the answer's text and, when the probe asked for them, its tokens and candidates
/// (llama-server streams `choices[0].logprobs.content[]` with `id`, `bytes`, `logprob`,
/// `top_logprobs[]`).
#[derive(Default)]
struct DecodeReader {
    pending: Vec<u8>,
    decode: Decode,
}

#[derive(Deserialize)]
struct ChunkIn {
    #[serde(default)]
    choices: Vec<ChoiceIn>,
}

#[derive(Deserialize)]
struct ChoiceIn {
    #[serde(default)]
    delta: Option<DeltaIn>,
    #[serde(default)]
    logprobs: Option<LogprobsIn>,
}

#[derive(Deserialize)]
struct DeltaIn {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct LogprobsIn {
    #[serde(default)]
    content: Vec<TokenIn>,
}

#[derive(Deserialize)]
struct TokenIn {
    id: u32,
    #[serde(default)]
    bytes: Vec<u8>,
    #[serde(default)]
    logprob: Option<f64>,
    #[serde(default)]
    top_logprobs: Vec<CandidateIn>,
}

#[derive(Deserialize)]
struct CandidateIn {
    id: u32,
    #[serde(default)]
    bytes: Vec<u8>,
    #[serde(default)]
    logprob: Option<f64>,
}

impl DecodeReader {
    fn push(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
        while let Some(end) = find_event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end.0 + end.1).collect();
            self.on_event(&event[..end.0]);
        }
    }

    fn finish(&mut self) {
        let rest = std::mem::take(&mut self.pending);
        self.on_event(&rest);
    }

    fn on_event(&mut self, event: &[u8]) {
        let mut data = Vec::new();
        for line in event.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(v) = line.strip_prefix(b"data:") {
                if !data.is_empty() {
                    data.push(b'\n');
                }
                data.extend_from_slice(v.strip_prefix(b" ").unwrap_or(v));
            }
        }
        if data.is_empty() || data == b"[DONE]" {
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<ChunkIn>(&data) else {
            return;
        };
        let Some(choice) = chunk.choices.into_iter().next() else {
            return;
        };
        if let Some(text) = choice.delta.and_then(|d| d.content) {
            self.decode.text.push_str(&text);
        }
        for t in choice.logprobs.map(|l| l.content).unwrap_or_default() {
            self.decode.tokens.push(DecodedToken {
                id: t.id,
                bytes: t.bytes,
                logprob: t.logprob,
                top: t
                    .top_logprobs
                    .into_iter()
                    .map(|c| Candidate {
                        id: c.id,
                        bytes: c.bytes,
                        logprob: c.logprob,
                    })
                    .collect(),
            });
        }
    }
}

/// The end of the first complete SSE event in `buf`: (its length, the separator's length).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tokens of a real llama-server stream with `logprobs: true, top_logprobs: 2`.
    const STREAM: &str = concat!(
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":{\"content\":[{\"id\":19556,\"token\":\"Hello\",\"bytes\":[72,101,108,108,111],\"logprob\":-1.13,\"top_logprobs\":[{\"id\":19556,\"token\":\"Hello\",\"bytes\":[72,101,108,108,111],\"logprob\":-1.13},{\"id\":6004,\"token\":\"hi\",\"bytes\":[104,105],\"logprob\":-2.56}]}]}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"!\"},\"logprobs\":{\"content\":[{\"id\":17,\"token\":\"!\",\"bytes\":[33],\"logprob\":-0.86,\"top_logprobs\":[{\"id\":17,\"token\":\"!\",\"bytes\":[33],\"logprob\":-0.86},{\"id\":665,\"token\":\" there\",\"bytes\":[32,116,104,101,114,101],\"logprob\":-1.07}]}]}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":\"length\",\"index\":0,\"delta\":{}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[],\"object\":\"chat.completion.chunk\",\"usage\":{\"completion_tokens\":2,\"prompt_tokens\":31,\"total_tokens\":33}}\n\n",
        "data: [DONE]\n\n",
    );

    fn read(chunks: &[&[u8]]) -> Decode {
        let mut r = DecodeReader::default();
        for c in chunks {
            r.push(c);
        }
        r.finish();
        r.decode
    }

    #[test]
    fn streamed_logprobs_become_tokens_with_candidates() {
        let d = read(&[STREAM.as_bytes()]);
        assert_eq!(d.text, "Hello!");
        let ids: Vec<u32> = d.tokens.iter().map(|t| t.id).collect();
        assert_eq!(ids, [19556, 17]);
        assert_eq!(d.tokens[0].bytes, b"Hello");
        let top: Vec<u32> = d.tokens[1].top.iter().map(|c| c.id).collect();
        assert_eq!(top, [17, 665]);
        let fp = d.fingerprint();
        assert_eq!(fp.token_ids, [19556, 17]);
        assert_eq!(fp.top_k, [vec![19556, 6004], vec![17, 665]]);
    }

    #[test]
    fn the_reading_does_not_depend_on_chunk_boundaries() {
        let whole = read(&[STREAM.as_bytes()]);
        let bytes = STREAM.as_bytes();
        for cut in [1, 7, 100, 333, bytes.len() - 3] {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(read(&[a, b]), whole, "cut at {cut}");
        }
        let crlf = STREAM.replace("\n\n", "\r\n\r\n");
        assert_eq!(read(&[crlf.as_bytes()]), whole);
    }

    #[test]
    fn timing_follows_the_proxy_rules() {
        let t = |ms| Timestamp::from_millis(ms);
        let mut timing = ProbeTiming::new(t(1_000));
        timing.observe(0, None, t(1_010));
        timing.observe(1, None, t(1_040));
        timing.observe(2, None, t(2_040));
        timing.observe(0, Some(100), t(2_050));
        let sample = timing
            .observation(200, t(2_060), Ending::Complete)
            .to_sample()
            .unwrap();
        assert_eq!(sample.ttft_ms, 40.0);
        assert_eq!(sample.completion_tokens, 100);
        assert!((sample.tps - 100.0).abs() < 1e-9);
    }

    #[test]
    fn the_cache_file_round_trips_and_a_corrupt_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_cache(dir.path()), BaselineCache::default());
        fs::write(dir.path().join(CACHE_FILE), "{not json").unwrap();
        assert_eq!(read_cache(dir.path()), BaselineCache::default());
        let mut cache = BaselineCache::default();
        cache.records.insert(
            "m".into(),
            mesh_core::baseline::BaselineRecord {
                model_mtime_unix_nanos: 7,
                runtime_version: "v".into(),
                native_tps_p50: 140.0,
                native_ttft_ms_p50: 12.5,
                measured_at_unix_secs: 1_000,
                samples: 3,
                backend: Backend::Cpu,
                fingerprint: None,
            },
        );
        write_cache(dir.path(), &cache).unwrap();
        assert_eq!(read_cache(dir.path()), cache);
    }
}
