//! Native baselines (SPEC §5): when to measure a peer's own llama-server with no mesh layer in
//! the path, and how to summarise and cache what it measured.
//!
//! Per solo-served model, once its llama-server is ready: wait [`SETTLE`], then run
//! [`SAMPLES_PER_REFRESH`] streaming probes straight to the local server, [`PROBE_GAP`] apart —
//! the fixed probe first (its greedy decode is also the model's fingerprint, SPEC §7), then
//! nonce prompts (a repeated prompt hits llama-server's prompt cache and made the original's TTFT
//! ~20× too good). A sample that overlapped real traffic is discarded; probes only start while
//! the node has no request in flight, and only one probe runs at a time on a node (they share
//! the GPU). The published figures are the per-axis medians of the samples that survived, with
//! their actual count; a refresh where none survived keeps the cached value and retries later.
//! Timing is [`Observation::to_sample`] — the very code that times through-mesh samples.
//!
//! The cache record is keyed by the model file's mtime and the runtime version (which must
//! include llama-server's build): the shell persists [`BaselineCollector::cache`] as
//! `<data dir>/native-baselines.json`. A record whose key no longer matches keeps publishing its
//! timings until re-measured, but never its fingerprint: a stale fingerprint would make the
//! verifier doubt an honest peer.
//!
//! # Driving it (the shell)
//!
//! - [`BaselineEvent::ServerReady`] when a solo llama-server turns healthy (with the GGUF's
//!   mtime), [`BaselineEvent::ServerStopped`] when it stops or the model moves to a split;
//! - [`BaselineEvent::ModelFileSeen`] from a periodic look at the file;
//! - [`BaselineEvent::InflightChanged`] whenever the node's count of real requests in flight
//!   changes (an entry's audit probes on its own server count too: they load the same GPU);
//! - on [`BaselineOutput::Probe`]: POST `body()` to that llama-server's `/v1/chat/completions`,
//!   observe it with the proxy's own timing code, build the [`Decode`] (content text; for the
//!   fixed probe also `logprobs.content[]`), and report [`BaselineEvent::ProbeFinished`];
//! - on [`BaselineOutput::Publish`]: announce [`BaselineCollector::published`] and write
//!   [`BaselineCache::to_json`] of [`BaselineCollector::cache`] to the data dir;
//! - call [`BaselineCollector::handle_timeout`] at [`BaselineCollector::poll_timeout`].

use crate::peer::{Backend, Fingerprint, ModelName, NativeBaseline};
use crate::samples::{NotRecorded, Observation, Sample, median};
use crate::time::Timestamp;
use crate::verify::{Decode, ProbeFailed, ProbeParams, SyntheticPrompt, chat_body};
use rand_core::Rng;
use rand_pcg::Pcg64;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

pub const SETTLE: Duration = Duration::from_secs(30);
pub const PROBE_GAP: Duration = Duration::from_secs(1);
pub const SAMPLES_PER_REFRESH: u32 = 3;
pub const REFRESH_EVERY: Duration = Duration::from_secs(12 * 3600);
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10 * 60);

/// The fixed probe: greedy, seed 42, 128 tokens, no prompt cache, and the top-5 candidates per
/// token for the fingerprint. The verifier sends this same body to a peer in fingerprint mode.
pub const FIXED_PROBE_PARAMS: ProbeParams = ProbeParams {
    max_tokens: 128,
    seed: Some(42),
    cache_prompt: Some(false),
    top_logprobs: Some(5),
};

/// The nonce probes: as the fixed one, without candidates (timing only).
pub const NONCE_PROBE_PARAMS: ProbeParams = ProbeParams {
    top_logprobs: None,
    ..FIXED_PROBE_PARAMS
};

/// The request body of the fixed probe for `model`, as node and simulator send it.
pub fn fixed_probe_body(model: &str) -> serde_json::Value {
    chat_body(model, &SyntheticPrompt::fixed(), &FIXED_PROBE_PARAMS)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineConfig {
    pub settle: Duration,
    pub probe_gap: Duration,
    pub samples: u32,
    pub refresh_every: Duration,
    pub retry_after_failure: Duration,
    /// This runtime's version and llama-server's build; a change invalidates the cache.
    pub runtime_version: String,
    /// Published with every baseline.
    pub backend: Backend,
}

impl BaselineConfig {
    /// The SPEC's timings.
    pub fn new(runtime_version: impl Into<String>, backend: Backend) -> Self {
        BaselineConfig {
            settle: SETTLE,
            probe_gap: PROBE_GAP,
            samples: SAMPLES_PER_REFRESH,
            refresh_every: REFRESH_EVERY,
            retry_after_failure: RETRY_AFTER_FAILURE,
            runtime_version: runtime_version.into(),
            backend,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProbeId(pub u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    Fixed,
    Nonce(u64),
}

/// A probe for the shell to run against the local llama-server of `model`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineProbe {
    pub id: ProbeId,
    pub model: ModelName,
    pub kind: ProbeKind,
    pub params: ProbeParams,
}

impl BaselineProbe {
    pub fn prompt(&self) -> SyntheticPrompt {
        match self.kind {
            ProbeKind::Fixed => SyntheticPrompt::fixed(),
            ProbeKind::Nonce(n) => SyntheticPrompt::with_nonce(n),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        chat_body(&self.model, &self.prompt(), &self.params)
    }
}

/// What the shell saw of a probe: the proxy-style observation and the decoded answer (with
/// tokens and candidates for the fixed probe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub observation: Observation,
    pub decode: Decode,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BaselineEvent {
    /// llama-server for `model` is healthy and serving it solo (not as a split host).
    ServerReady {
        model: ModelName,
        model_mtime_unix_nanos: u64,
    },
    /// It stopped, or the model stopped being served solo.
    ServerStopped { model: ModelName },
    /// The shell's periodic look at the GGUF file.
    ModelFileSeen {
        model: ModelName,
        model_mtime_unix_nanos: u64,
    },
    /// Real (proxied) requests now in flight on this node, all models; never counts probes.
    InflightChanged { inflight: u32 },
    ProbeFinished {
        id: ProbeId,
        result: Result<ProbeResult, ProbeFailed>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    OverlappedTraffic,
    NotRecorded(NotRecorded),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum BaselineOutput {
    Probe(BaselineProbe),
    /// Gossip this, and persist [`BaselineCollector::cache`].
    Publish(NativeBaseline),
    SampleDropped {
        model: ModelName,
        kind: ProbeKind,
        reason: DropReason,
    },
    /// No sample survived; the cached value (if any) stays published.
    RefreshFailed {
        model: ModelName,
        retry_at: Timestamp,
    },
}

/// One model's cached baseline, as `native-baselines.json` stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineRecord {
    pub model_mtime_unix_nanos: u64,
    pub runtime_version: String,
    pub native_tps_p50: f64,
    pub native_ttft_ms_p50: f64,
    pub measured_at_unix_secs: u64,
    pub samples: u32,
    pub backend: Backend,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<Fingerprint>,
}

/// `native-baselines.json`: model → record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BaselineCache {
    pub records: BTreeMap<ModelName, BaselineRecord>,
}

#[derive(Debug, thiserror::Error)]
#[error("native-baselines.json is not a baseline cache: {0}")]
pub struct CacheError(#[from] serde_json::Error);

impl BaselineCache {
    pub fn from_json(text: &str) -> Result<Self, CacheError> {
        Ok(serde_json::from_str(text)?)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a map of plain records always serialises")
    }
}

#[derive(Debug, Clone)]
enum Phase {
    Stopped,
    /// The next refresh starts at `at` (after the settle time, the refresh period or a retry).
    Waiting {
        at: Timestamp,
    },
    Refreshing {
        /// Index of the next probe (0 = the fixed probe).
        next: u32,
        due: Timestamp,
        survivors: Vec<Sample>,
        fingerprint: Option<Fingerprint>,
    },
}

#[derive(Debug, Clone)]
struct ModelState {
    mtime: u64,
    ready: bool,
    phase: Phase,
}

#[derive(Debug, Clone)]
struct InFlight {
    id: ProbeId,
    model: ModelName,
    kind: ProbeKind,
    overlapped: bool,
}

/// The baseline scheduler of one node (sans-IO): events in, probes and publications out.
#[derive(Debug)]
pub struct BaselineCollector {
    config: BaselineConfig,
    rng: Pcg64,
    cache: BaselineCache,
    models: BTreeMap<ModelName, ModelState>,
    inflight: u32,
    /// Since when no real request has been in flight (`None` while some are).
    quiet_since: Option<Timestamp>,
    probe: Option<InFlight>,
    next_id: u64,
    outputs: VecDeque<BaselineOutput>,
}

impl BaselineCollector {
    /// `cache` is what the shell read from `native-baselines.json` (or empty).
    pub fn new(config: BaselineConfig, cache: BaselineCache, rng: Pcg64) -> Self {
        BaselineCollector {
            config,
            rng,
            cache,
            models: BTreeMap::new(),
            inflight: 0,
            quiet_since: Some(Timestamp::ZERO),
            probe: None,
            next_id: 0,
            outputs: VecDeque::new(),
        }
    }

    pub fn handle(&mut self, event: BaselineEvent, now: Timestamp) {
        match event {
            BaselineEvent::ServerReady {
                model,
                model_mtime_unix_nanos: mtime,
            } => self.server_ready(model, mtime, now),
            BaselineEvent::ServerStopped { model } => {
                if let Some(st) = self.models.get_mut(&model) {
                    st.ready = false;
                    st.phase = Phase::Stopped;
                }
                self.cancel_probe(&model);
            }
            BaselineEvent::ModelFileSeen {
                model,
                model_mtime_unix_nanos: mtime,
            } => self.file_seen(model, mtime, now),
            BaselineEvent::InflightChanged { inflight } => {
                self.inflight = inflight;
                if inflight > 0 {
                    self.quiet_since = None;
                    if let Some(p) = &mut self.probe {
                        p.overlapped = true;
                    }
                } else if self.quiet_since.is_none() {
                    self.quiet_since = Some(now);
                }
            }
            BaselineEvent::ProbeFinished { id, result } => self.probe_finished(id, result, now),
        }
    }

    /// Starts refreshes that are due and issues the next probe when the node is quiet.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        for st in self.models.values_mut() {
            if let Phase::Waiting { at } = st.phase
                && st.ready
                && at <= now
            {
                st.phase = Phase::Refreshing {
                    next: 0,
                    due: at,
                    survivors: Vec::new(),
                    fingerprint: None,
                };
            }
        }
        let Some((_, model)) = self.next_probe().filter(|(due, _)| *due <= now) else {
            return;
        };
        let Some(Phase::Refreshing { next, .. }) = self.models.get(&model).map(|s| &s.phase) else {
            unreachable!("next_probe only names refreshing models");
        };
        let (kind, params) = if *next == 0 {
            (ProbeKind::Fixed, FIXED_PROBE_PARAMS)
        } else {
            (ProbeKind::Nonce(self.rng.next_u64()), NONCE_PROBE_PARAMS)
        };
        let id = ProbeId(self.next_id);
        self.next_id += 1;
        self.probe = Some(InFlight {
            id,
            model: model.clone(),
            kind,
            overlapped: false,
        });
        self.outputs.push_back(BaselineOutput::Probe(BaselineProbe {
            id,
            model,
            kind,
            params,
        }));
    }

    /// The next instant `handle_timeout` has work; `None` while it can only wait for events
    /// (a probe or real traffic in flight, nothing scheduled).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let waits = self.models.values().filter_map(|st| match st.phase {
            Phase::Waiting { at } if st.ready => Some(at),
            _ => None,
        });
        waits.chain(self.next_probe().map(|(due, _)| due)).min()
    }

    pub fn poll_output(&mut self) -> Option<BaselineOutput> {
        self.outputs.pop_front()
    }

    /// The gossiped form: every model this process has served, in name order.
    pub fn published(&self) -> Vec<NativeBaseline> {
        self.models
            .iter()
            .filter_map(|(model, st)| self.publishable(model, st.mtime))
            .collect()
    }

    /// What to persist as `native-baselines.json` (records of models not served this run stay).
    pub fn cache(&self) -> &BaselineCache {
        &self.cache
    }

    fn server_ready(&mut self, model: ModelName, mtime: u64, now: Timestamp) {
        if let Some(st) = self.models.get(&model)
            && st.ready
            && st.mtime == mtime
        {
            return;
        }
        self.cancel_probe(&model);
        let settled = now + self.config.settle;
        let at = match self.cache.records.get(&model) {
            Some(r) if self.key_matches(r, mtime) => {
                let due = Timestamp::from_secs(r.measured_at_unix_secs) + self.config.refresh_every;
                due.max(settled)
            }
            _ => settled,
        };
        self.models.insert(
            model.clone(),
            ModelState {
                mtime,
                ready: true,
                phase: Phase::Waiting { at },
            },
        );
        if let Some(b) = self.publishable(&model, mtime) {
            self.outputs.push_back(BaselineOutput::Publish(b));
        }
    }

    fn file_seen(&mut self, model: ModelName, mtime: u64, now: Timestamp) {
        let Some(st) = self.models.get_mut(&model) else {
            return;
        };
        if st.mtime == mtime {
            return;
        }
        st.mtime = mtime;
        if st.ready {
            st.phase = Phase::Waiting {
                at: now + self.config.settle,
            };
        }
        self.cancel_probe(&model);
        // Republish: the old fingerprint no longer describes the file.
        if let Some(b) = self.publishable(&model, mtime) {
            self.outputs.push_back(BaselineOutput::Publish(b));
        }
    }

    fn probe_finished(
        &mut self,
        id: ProbeId,
        result: Result<ProbeResult, ProbeFailed>,
        now: Timestamp,
    ) {
        if self.probe.as_ref().is_none_or(|p| p.id != id) {
            return; // cancelled (server stopped, file changed) or unknown
        }
        let InFlight {
            model,
            kind,
            overlapped,
            ..
        } = self.probe.take().expect("checked above");
        let samples = self.config.samples.max(1);
        let gap = self.config.probe_gap;
        let Some(st) = self.models.get_mut(&model) else {
            return;
        };
        let Phase::Refreshing {
            next,
            due,
            survivors,
            fingerprint,
        } = &mut st.phase
        else {
            return;
        };
        let kept = match result {
            Err(e) => Err(DropReason::Failed(e.reason)),
            Ok(r) => {
                // The fingerprint is about identity, not speed: keep it even if traffic
                // overlapped the timing.
                if kind == ProbeKind::Fixed
                    && (200..300).contains(&r.observation.status)
                    && !r.decode.text.is_empty()
                {
                    *fingerprint = Some(r.decode.fingerprint());
                }
                if overlapped {
                    Err(DropReason::OverlappedTraffic)
                } else {
                    r.observation.to_sample().map_err(DropReason::NotRecorded)
                }
            }
        };
        match kept {
            Ok(sample) => survivors.push(sample),
            Err(reason) => self.outputs.push_back(BaselineOutput::SampleDropped {
                model: model.clone(),
                kind,
                reason,
            }),
        }
        *next += 1;
        if *next < samples {
            *due = now + gap;
            return;
        }
        let survivors = std::mem::take(survivors);
        let fingerprint = fingerprint.take();
        let mtime = st.mtime;
        if survivors.is_empty() {
            let retry_at = now + self.config.retry_after_failure;
            st.phase = Phase::Waiting { at: retry_at };
            self.outputs
                .push_back(BaselineOutput::RefreshFailed { model, retry_at });
            return;
        }
        st.phase = Phase::Waiting {
            at: now + self.config.refresh_every,
        };
        let tps: Vec<f64> = survivors.iter().map(|s| s.tps).collect();
        let ttft: Vec<f64> = survivors.iter().map(|s| s.ttft_ms).collect();
        let previous_fingerprint = self
            .cache
            .records
            .get(&model)
            .filter(|r| self.key_matches(r, mtime))
            .and_then(|r| r.fingerprint.clone());
        let record = BaselineRecord {
            model_mtime_unix_nanos: mtime,
            runtime_version: self.config.runtime_version.clone(),
            native_tps_p50: median(&tps),
            native_ttft_ms_p50: median(&ttft),
            measured_at_unix_secs: now.as_unix_secs(),
            samples: survivors.len() as u32,
            backend: self.config.backend,
            fingerprint: fingerprint.or(previous_fingerprint),
        };
        self.cache.records.insert(model.clone(), record);
        let published = self
            .publishable(&model, mtime)
            .expect("the record was just inserted");
        self.outputs.push_back(BaselineOutput::Publish(published));
    }

    /// The model whose next probe is due soonest, and when; `None` while anything is in flight.
    fn next_probe(&self) -> Option<(Timestamp, ModelName)> {
        if self.probe.is_some() || self.inflight > 0 {
            return None;
        }
        let quiet_from = self.quiet_since? + self.config.probe_gap;
        self.models
            .iter()
            .filter_map(|(model, st)| match st.phase {
                Phase::Refreshing { due, .. } if st.ready => Some((due.max(quiet_from), model)),
                _ => None,
            })
            .min()
            .map(|(due, model)| (due, model.clone()))
    }

    fn cancel_probe(&mut self, model: &str) {
        if self.probe.as_ref().is_some_and(|p| p.model == model) {
            self.probe = None;
        }
    }

    fn key_matches(&self, r: &BaselineRecord, mtime: u64) -> bool {
        r.model_mtime_unix_nanos == mtime && r.runtime_version == self.config.runtime_version
    }

    fn publishable(&self, model: &str, mtime: u64) -> Option<NativeBaseline> {
        let r = self.cache.records.get(model)?;
        Some(NativeBaseline {
            model: model.to_string(),
            native_tps_p50: r.native_tps_p50,
            native_ttft_ms_p50: r.native_ttft_ms_p50,
            measured_at_unix_secs: r.measured_at_unix_secs,
            samples: r.samples,
            backend: r.backend,
            fingerprint: r.fingerprint.clone().filter(|_| self.key_matches(r, mtime)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::Ending;
    use crate::verify::{Candidate, DecodedToken};
    use rand_core::SeedableRng;

    const M: &str = "SmolLM2-135M-Instruct.Q4_1";

    fn secs(s: u64) -> Timestamp {
        Timestamp::from_secs(s)
    }

    fn collector(version: &str, cache: BaselineCache) -> BaselineCollector {
        BaselineCollector::new(
            BaselineConfig::new(version, Backend::Cpu),
            cache,
            Pcg64::seed_from_u64(42),
        )
    }

    fn drain(c: &mut BaselineCollector) -> Vec<BaselineOutput> {
        std::iter::from_fn(|| c.poll_output()).collect()
    }

    fn ready(c: &mut BaselineCollector, model: &str, mtime: u64, now: Timestamp) {
        c.handle(
            BaselineEvent::ServerReady {
                model: model.into(),
                model_mtime_unix_nanos: mtime,
            },
            now,
        );
    }

    /// Runs `handle_timeout(now)` and returns the one probe it must issue (outputs still
    /// queued from before are dropped: drain them first to check them).
    fn probe_at(c: &mut BaselineCollector, now: Timestamp) -> BaselineProbe {
        drain(c);
        c.handle_timeout(now);
        let out = drain(c);
        match out.as_slice() {
            [BaselineOutput::Probe(p)] => p.clone(),
            other => panic!("expected one probe at {now}, got {other:?}"),
        }
    }

    fn fixed_decode() -> Decode {
        let tok = |id: u32, text: &str| DecodedToken {
            id,
            bytes: text.as_bytes().to_vec(),
            logprob: Some(-0.1),
            top: vec![
                Candidate {
                    id,
                    bytes: text.as_bytes().to_vec(),
                    logprob: Some(-0.1),
                },
                Candidate {
                    id: id + 100,
                    bytes: b"x".to_vec(),
                    logprob: Some(-2.5),
                },
            ],
        };
        Decode {
            text: "A rainbow forms".into(),
            tokens: vec![tok(1, "A"), tok(2, " rainbow"), tok(3, " forms")],
        }
    }

    /// A streamed answer sent at `sent`: first token after `ttft_ms`, then `tokens` over
    /// `decode_ms`. Returns the instant it finished.
    fn answer(
        c: &mut BaselineCollector,
        p: &BaselineProbe,
        sent: Timestamp,
        ttft_ms: u64,
        decode_ms: u64,
        tokens: u32,
    ) -> Timestamp {
        let first = sent + Duration::from_millis(ttft_ms);
        let last = first + Duration::from_millis(decode_ms);
        let observation = Observation {
            sent_at: sent,
            status: 200,
            first_token_at: Some(first),
            last_token_at: Some(last),
            finished_at: last,
            usage_completion_tokens: Some(tokens),
            counted_deltas: tokens,
            ending: Ending::Complete,
        };
        let decode = match p.kind {
            ProbeKind::Fixed => fixed_decode(),
            ProbeKind::Nonce(_) => Decode::text_only("Something else entirely"),
        };
        finish(
            c,
            p,
            Ok(ProbeResult {
                observation,
                decode,
            }),
            last,
        );
        last
    }

    fn finish(
        c: &mut BaselineCollector,
        p: &BaselineProbe,
        result: Result<ProbeResult, ProbeFailed>,
        now: Timestamp,
    ) {
        c.handle(BaselineEvent::ProbeFinished { id: p.id, result }, now);
    }

    fn failed() -> Result<ProbeResult, ProbeFailed> {
        Err(ProbeFailed {
            reason: "connection refused".into(),
        })
    }

    fn published(out: &[BaselineOutput]) -> Vec<NativeBaseline> {
        out.iter()
            .filter_map(|o| match o {
                BaselineOutput::Publish(b) => Some(b.clone()),
                _ => None,
            })
            .collect()
    }

    /// A full, clean refresh starting at `start`: 50, 25 and 40 tok/s with 40, 200 and 60 ms
    /// TTFT. Returns the publication and when the last probe finished.
    fn clean_refresh(c: &mut BaselineCollector, start: Timestamp) -> (NativeBaseline, Timestamp) {
        let p = probe_at(c, start);
        let t = answer(c, &p, start, 40, 2_000, 100);
        let p = probe_at(c, t + PROBE_GAP);
        let t = answer(c, &p, t + PROBE_GAP, 200, 2_000, 50);
        let p = probe_at(c, t + PROBE_GAP);
        let t = answer(c, &p, t + PROBE_GAP, 60, 2_000, 80);
        let out = drain(c);
        let [b] = published(&out).try_into().expect("one publication");
        (b, t)
    }

    #[test]
    fn first_baseline_waits_30s_then_fixed_probe_and_two_nonce_probes_1s_apart() {
        let mut c = collector("v1", BaselineCache::default());
        ready(&mut c, M, 7, secs(100));
        assert!(
            drain(&mut c).is_empty(),
            "nothing cached: nothing to publish"
        );
        assert_eq!(c.poll_timeout(), Some(secs(130)));
        c.handle_timeout(secs(129));
        assert!(drain(&mut c).is_empty());

        let fixed = probe_at(&mut c, secs(130));
        assert_eq!(fixed.kind, ProbeKind::Fixed);
        assert_eq!(fixed.body(), fixed_probe_body(M));
        assert_eq!(c.poll_timeout(), None, "one probe at a time");
        let t1 = answer(&mut c, &fixed, secs(130), 40, 2_000, 100);
        assert_eq!(c.poll_timeout(), Some(t1 + PROBE_GAP));

        let n1 = probe_at(&mut c, t1 + PROBE_GAP);
        let t2 = answer(&mut c, &n1, t1 + PROBE_GAP, 200, 2_000, 50);
        let n2 = probe_at(&mut c, t2 + PROBE_GAP);
        let (ProbeKind::Nonce(a), ProbeKind::Nonce(b)) = (n1.kind, n2.kind) else {
            panic!("probes 2 and 3 carry nonces: {n1:?} {n2:?}");
        };
        assert_ne!(a, b);
        assert_ne!(n1.prompt(), n2.prompt());
        assert_eq!(n1.body()["seed"], 42);
        assert_eq!(n1.body()["cache_prompt"], false);
        assert_eq!(n1.body()["max_tokens"], 128);
        assert_eq!(n1.body()["temperature"], 0.0);
        assert!(n1.body().get("logprobs").is_none());
        let t3 = answer(&mut c, &n2, t2 + PROBE_GAP, 60, 2_000, 80);

        let out = drain(&mut c);
        let [b] = published(&out).try_into().unwrap();
        // Per-axis medians: tok/s of 50, 25, 40 and TTFTs of 40, 200, 60 ms.
        assert_eq!((b.native_tps_p50, b.native_ttft_ms_p50), (40.0, 60.0));
        assert_eq!(b.samples, 3);
        assert_eq!(b.measured_at_unix_secs, t3.as_unix_secs());
        assert_eq!(b.backend, Backend::Cpu);
        assert_eq!(b.fingerprint, Some(fixed_decode().fingerprint()));
        assert_eq!(c.published(), vec![b]);
        assert_eq!(c.poll_timeout(), Some(t3 + REFRESH_EVERY));
    }

    #[test]
    fn timing_uses_the_through_mesh_rules_so_a_buffered_stream_reads_wall_clock() {
        let mut c = collector("v1", BaselineCache::default());
        ready(&mut c, M, 7, secs(0));
        let mut t = secs(30);
        for _ in 0..3 {
            let p = probe_at(&mut c, t);
            // 128 tokens that all arrived within 1 ms, 500 ms after sending.
            t = answer(&mut c, &p, t, 499, 1, 128) + PROBE_GAP;
        }
        let [b] = published(&drain(&mut c)).try_into().unwrap();
        assert!(
            (b.native_tps_p50 - 128.0 / 0.5).abs() < 1e-9,
            "{}",
            b.native_tps_p50
        );
        assert_eq!(b.native_ttft_ms_p50, 499.0);
    }

    #[test]
    fn a_sample_overlapping_real_traffic_is_discarded_and_samples_says_two() {
        let mut c = collector("v1", BaselineCache::default());
        ready(&mut c, M, 7, secs(0));
        let p = probe_at(&mut c, secs(30));
        let t = answer(&mut c, &p, secs(30), 40, 2_000, 100);
        let p = probe_at(&mut c, t + PROBE_GAP);
        // A real chat arrives mid-probe and is still running when the probe ends.
        c.handle(
            BaselineEvent::InflightChanged { inflight: 1 },
            t + PROBE_GAP,
        );
        let t = answer(&mut c, &p, t + PROBE_GAP, 10, 2_000, 500);
        assert_eq!(
            drain(&mut c),
            [BaselineOutput::SampleDropped {
                model: M.into(),
                kind: p.kind,
                reason: DropReason::OverlappedTraffic,
            }]
        );
        // The next probe waits for the node to be quiet for a gap.
        assert_eq!(c.poll_timeout(), None);
        let quiet = t + Duration::from_secs(5);
        c.handle(BaselineEvent::InflightChanged { inflight: 0 }, quiet);
        assert_eq!(c.poll_timeout(), Some(quiet + PROBE_GAP));
        let p = probe_at(&mut c, quiet + PROBE_GAP);
        answer(&mut c, &p, quiet + PROBE_GAP, 60, 2_000, 80);
        let [b] = published(&drain(&mut c)).try_into().unwrap();
        assert_eq!(b.samples, 2);
        // Medians of 50 & 40 tok/s and 40 & 60 ms: the overlapped 250 tok/s is gone.
        assert_eq!((b.native_tps_p50, b.native_ttft_ms_p50), (45.0, 50.0));
    }

    #[test]
    fn probes_start_only_when_no_real_request_is_in_flight() {
        let mut c = collector("v1", BaselineCache::default());
        ready(&mut c, M, 7, secs(0));
        c.handle(BaselineEvent::InflightChanged { inflight: 2 }, secs(10));
        c.handle_timeout(secs(30));
        assert!(drain(&mut c).is_empty());
        assert_eq!(c.poll_timeout(), None, "nothing to do until traffic ends");
        c.handle(BaselineEvent::InflightChanged { inflight: 0 }, secs(40));
        assert_eq!(c.poll_timeout(), Some(secs(41)));
        assert_eq!(probe_at(&mut c, secs(41)).kind, ProbeKind::Fixed);
    }

    #[test]
    fn a_refresh_with_one_survivor_publishes_samples_1() {
        let mut c = collector("v1", BaselineCache::default());
        ready(&mut c, M, 7, secs(0));
        let p = probe_at(&mut c, secs(30));
        finish(&mut c, &p, failed(), secs(31));
        let mut out = drain(&mut c);
        let p = probe_at(&mut c, secs(32));
        let t = answer(&mut c, &p, secs(32), 80, 1_000, 30);
        let p = probe_at(&mut c, t + PROBE_GAP);
        let mut bad = ProbeResult {
            observation: Observation {
                sent_at: t + PROBE_GAP,
                status: 503,
                first_token_at: None,
                last_token_at: None,
                finished_at: t + PROBE_GAP,
                usage_completion_tokens: None,
                counted_deltas: 0,
                ending: Ending::Complete,
            },
            decode: Decode::default(),
        };
        finish(&mut c, &p, Ok(bad.clone()), t + PROBE_GAP);
        out.extend(drain(&mut c));
        assert!(out.contains(&BaselineOutput::SampleDropped {
            model: M.into(),
            kind: ProbeKind::Fixed,
            reason: DropReason::Failed("connection refused".into()),
        }));
        assert!(out.contains(&BaselineOutput::SampleDropped {
            model: M.into(),
            kind: p.kind,
            reason: DropReason::NotRecorded(NotRecorded::Non2xxStatus),
        }));
        let [b] = published(&out).try_into().unwrap();
        assert_eq!(
            (b.samples, b.native_tps_p50, b.native_ttft_ms_p50),
            (1, 30.0, 80.0)
        );
        // The fixed probe failed, so there is no fingerprint yet.
        assert_eq!(b.fingerprint, None);
        bad.observation.status = 200;
        assert_eq!(
            bad.observation.to_sample(),
            Err(NotRecorded::UsageChunkMissing)
        );
    }

    #[test]
    fn a_failed_refresh_never_blanks_the_cached_value() {
        let mut c = collector("v1", BaselineCache::default());
        ready(&mut c, M, 7, secs(0));
        let (good, t) = clean_refresh(&mut c, secs(30));
        let refresh = t + REFRESH_EVERY;
        assert_eq!(c.poll_timeout(), Some(refresh));
        let mut now = refresh;
        let mut out = Vec::new();
        for _ in 0..3 {
            let p = probe_at(&mut c, now);
            finish(&mut c, &p, failed(), now);
            out.extend(drain(&mut c));
            now = now + PROBE_GAP;
        }
        let retry_at = now - PROBE_GAP + RETRY_AFTER_FAILURE;
        assert_eq!(
            out.last(),
            Some(&BaselineOutput::RefreshFailed {
                model: M.into(),
                retry_at
            })
        );
        assert!(published(&out).is_empty());
        assert_eq!(c.published(), vec![good.clone()]);
        assert_eq!(c.poll_timeout(), Some(retry_at));
        // The retry succeeds and replaces it.
        let (again, _) = clean_refresh(&mut c, retry_at);
        assert_eq!(again.samples, 3);
        assert!(again.measured_at_unix_secs > good.measured_at_unix_secs);
    }

    #[test]
    fn the_cache_survives_a_restart_and_is_not_remeasured_before_12h() {
        let mut c = collector("v1", BaselineCache::default());
        ready(&mut c, M, 7, secs(0));
        let (b, t) = clean_refresh(&mut c, secs(30));
        let file = c.cache().to_json();

        // The node restarts an hour later.
        let mut c = collector("v1", BaselineCache::from_json(&file).unwrap());
        let restart = t + Duration::from_secs(3600);
        ready(&mut c, M, 7, restart);
        assert_eq!(published(&drain(&mut c)), vec![b.clone()]);
        assert_eq!(c.published(), vec![b]);
        assert_eq!(
            c.poll_timeout(),
            Some(Timestamp::from_secs(t.as_unix_secs()) + REFRESH_EVERY)
        );
    }

    #[test]
    fn a_restart_just_before_the_refresh_still_settles_first() {
        let mut c = collector("v1", BaselineCache::default());
        ready(&mut c, M, 7, secs(0));
        let (_, t) = clean_refresh(&mut c, secs(30));
        let mut c = collector("v1", c.cache().clone());
        let restart = t + REFRESH_EVERY - Duration::from_secs(5);
        ready(&mut c, M, 7, restart);
        assert_eq!(c.poll_timeout(), Some(restart + SETTLE));
    }

    #[test]
    fn touching_the_model_file_remeasures_and_withdraws_the_old_fingerprint_meanwhile() {
        let mut c = collector("v1", BaselineCache::default());
        ready(&mut c, M, 7, secs(0));
        let (b, t) = clean_refresh(&mut c, secs(30));
        assert!(b.fingerprint.is_some());
        c.handle(
            BaselineEvent::ModelFileSeen {
                model: M.into(),
                model_mtime_unix_nanos: 7,
            },
            t,
        );
        assert!(drain(&mut c).is_empty(), "same mtime: nothing changed");

        let touched = t + Duration::from_secs(60);
        c.handle(
            BaselineEvent::ModelFileSeen {
                model: M.into(),
                model_mtime_unix_nanos: 8,
            },
            touched,
        );
        let [meanwhile] = published(&drain(&mut c)).try_into().unwrap();
        assert_eq!(meanwhile.fingerprint, None);
        assert_eq!(meanwhile.native_tps_p50, b.native_tps_p50);
        assert_eq!(c.poll_timeout(), Some(touched + SETTLE));
        let (fresh, _) = clean_refresh(&mut c, touched + SETTLE);
        assert_eq!(fresh.fingerprint, b.fingerprint);
        assert_eq!(c.cache().records[M].model_mtime_unix_nanos, 8);
    }

    #[test]
    fn a_runtime_upgrade_invalidates_the_cached_record() {
        let mut c = collector("v1", BaselineCache::default());
        ready(&mut c, M, 7, secs(0));
        let (_, t) = clean_refresh(&mut c, secs(30));
        let mut c = collector("v2", c.cache().clone());
        let restart = t + Duration::from_secs(60);
        ready(&mut c, M, 7, restart);
        let [b] = published(&drain(&mut c)).try_into().unwrap();
        assert_eq!(
            b.fingerprint, None,
            "a v1 fingerprint is not vouched for by v2"
        );
        assert_eq!(c.poll_timeout(), Some(restart + SETTLE));
    }

    #[test]
    fn one_probe_at_a_time_across_models() {
        let mut c = collector("v1", BaselineCache::default());
        ready(&mut c, "a", 1, secs(0));
        ready(&mut c, "b", 1, secs(0));
        let first = probe_at(&mut c, secs(30));
        assert_eq!(first.model, "a");
        c.handle_timeout(secs(31));
        assert!(drain(&mut c).is_empty(), "b waits while a's probe runs");
        let t = answer(&mut c, &first, secs(30), 40, 2_000, 100);
        // b has been due since 30 s; a's next probe only from t + 1 s.
        let second = probe_at(&mut c, t + PROBE_GAP);
        assert_eq!(second.model, "b");
        assert_eq!(second.kind, ProbeKind::Fixed);
    }

    #[test]
    fn a_stopped_server_cancels_its_probe_and_ignores_the_late_answer() {
        let mut c = collector("v1", BaselineCache::default());
        ready(&mut c, M, 7, secs(0));
        let p = probe_at(&mut c, secs(30));
        c.handle(BaselineEvent::ServerStopped { model: M.into() }, secs(31));
        answer(&mut c, &p, secs(30), 40, 2_000, 100);
        assert!(drain(&mut c).is_empty());
        assert_eq!(c.poll_timeout(), None);
        assert!(c.published().is_empty());
        // Ready again (same file): settle and start over with the fixed probe.
        ready(&mut c, M, 7, secs(100));
        assert_eq!(probe_at(&mut c, secs(130)).kind, ProbeKind::Fixed);
    }

    #[test]
    fn same_seed_same_nonces() {
        let nonces = |seed| {
            let mut c = BaselineCollector::new(
                BaselineConfig::new("v1", Backend::Cpu),
                BaselineCache::default(),
                Pcg64::seed_from_u64(seed),
            );
            ready(&mut c, M, 7, secs(0));
            let p = probe_at(&mut c, secs(30));
            let t = answer(&mut c, &p, secs(30), 40, 2_000, 100);
            probe_at(&mut c, t + PROBE_GAP).kind
        };
        assert_eq!(nonces(1), nonces(1));
        assert_ne!(nonces(1), nonces(2));
    }

    #[test]
    fn cache_file_and_fixed_probe_body_snapshots() {
        let mut c = collector(
            "closedmesh 0.1.0 / llama.cpp b6000",
            BaselineCache::default(),
        );
        ready(&mut c, M, 1_767_225_600_123_456_789, secs(1_767_225_600));
        clean_refresh(&mut c, secs(1_767_225_630));
        let file: serde_json::Value = serde_json::from_str(&c.cache().to_json()).unwrap();
        insta::with_settings!({
            snapshot_path => concat!(env!("CARGO_MANIFEST_DIR"), "/../snapshots/mesh-core"),
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_json_snapshot!("baseline_cache_file", file);
            insta::assert_json_snapshot!("baseline_fixed_probe_body", fixed_probe_body(M));
        });
    }

    #[test]
    fn a_corrupt_cache_file_is_a_typed_error() {
        assert!(BaselineCache::from_json("{\"m\": 3}").is_err());
        assert_eq!(
            BaselineCache::from_json("{}").unwrap(),
            BaselineCache::default()
        );
    }
}
