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
