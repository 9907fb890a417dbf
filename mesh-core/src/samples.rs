//! Through-mesh samples (SPEC §5): the timing rules for one proxied chat, and the per-model
//! rolling window whose p50s every peer publishes.
//!
//! The same rules time native baselines (`baseline`), so through-mesh and native numbers are
//! comparable by construction.

use crate::peer::{ModelName, ModelTiming};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

/// How long a sample counts towards the published p50s.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// At most this many samples per model; the oldest go first.
pub const MAX_SAMPLES_PER_MODEL: usize = 512;
/// A decode window shorter than this is not a measurement of decoding (a buffered stream that
/// arrived all at once gave the original 953,000 tok/s): use the request's wall clock instead.
pub const MIN_DECODE_WINDOW: Duration = Duration::from_millis(100);
/// Cold-start trimming applies from this many samples on.
pub const COLD_TRIM_MIN_SAMPLES: usize = 6;
/// TTFTs above `max(COLD_TRIM_FLOOR, COLD_TRIM_P10_FACTOR × p10)` are cold starts.
pub const COLD_TRIM_FLOOR_MS: f64 = 8_000.0;
pub const COLD_TRIM_P10_FACTOR: f64 = 5.0;

/// One successful chat's timing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at: Timestamp,
    pub ttft_ms: f64,
    pub tps: f64,
    pub completion_tokens: u32,
}

/// How a proxied request ended, as the proxy saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    /// The upstream response ended normally and the client took all of it.
    Complete,
    /// The caller went away before the response ended.
    ClientDisconnected,
    /// The upstream connection failed or sent something unparseable.
    UpstreamError,
}

/// What the proxy observed of one request: the raw instants and counts the rules work from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The request was sent upstream.
    pub sent_at: Timestamp,
    /// The upstream status code.
    pub status: u16,
    /// The first content byte (first token) arrived.
    pub first_token_at: Option<Timestamp>,
    /// The last content token arrived.
    pub last_token_at: Option<Timestamp>,
    /// The response ended (or broke off).
    pub finished_at: Timestamp,
    /// `usage.completion_tokens` from the SSE tail or the JSON body.
    pub usage_completion_tokens: Option<u32>,
    /// Content deltas counted in the stream: the fallback when usage is missing.
    pub counted_deltas: u32,
    pub ending: Ending,
}

/// Why a request produced no sample. The codes are the ones every per-request log line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotRecorded {
    Non2xxStatus,
    UsageChunkMissing,
    ZeroCompletionTokens,
    ClientDisconnected,
    UpstreamError,
}

impl NotRecorded {
    pub fn as_str(self) -> &'static str {
        match self {
            NotRecorded::Non2xxStatus => "non_2xx_status",
            NotRecorded::UsageChunkMissing => "usage_chunk_missing",
            NotRecorded::ZeroCompletionTokens => "zero_completion_tokens",
            NotRecorded::ClientDisconnected => "client_disconnected",
            NotRecorded::UpstreamError => "upstream_error",
        }
    }
}

impl fmt::Display for NotRecorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Observation {
    /// Applies the recording rules: a sample only for a 2xx response that ended normally with
    /// more than zero completion tokens.
    pub fn to_sample(&self) -> Result<Sample, NotRecorded> {
        if !(200..300).contains(&self.status) {
            return Err(NotRecorded::Non2xxStatus);
        }
        match self.ending {
            Ending::Complete => {}
            Ending::ClientDisconnected => return Err(NotRecorded::ClientDisconnected),
            Ending::UpstreamError => return Err(NotRecorded::UpstreamError),
        }
        let tokens = match self.usage_completion_tokens {
            Some(n) => n,
            None if self.counted_deltas > 0 => self.counted_deltas,
            None => return Err(NotRecorded::UsageChunkMissing),
        };
        if tokens == 0 {
            return Err(NotRecorded::ZeroCompletionTokens);
        }
        // A non-streaming body carries every token at once: its first content byte is its end.
        let first = self.first_token_at.unwrap_or(self.finished_at);
        let last = self.last_token_at.unwrap_or(self.finished_at).max(first);
        let ttft = first.saturating_since(self.sent_at);
        let decode = last.saturating_since(first);
        let window = if decode >= MIN_DECODE_WINDOW {
            decode
        } else {
            self.finished_at.saturating_since(self.sent_at)
        };
        // A zero wall clock cannot happen on a real request; a microsecond keeps the rate finite.
        let secs = window.as_secs_f64().max(1e-6);
        Ok(Sample {
            at: self.finished_at,
            ttft_ms: ttft.as_secs_f64() * 1_000.0,
            tps: f64::from(tokens) / secs,
            completion_tokens: tokens,
        })
    }
}

/// The published figures of one window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub tps_p50: f64,
    pub ttft_ms_p50: f64,
    pub samples: u32,
}

/// One model's rolling window: the last hour, at most [`MAX_SAMPLES_PER_MODEL`] samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampleWindow {
    samples: VecDeque<Sample>,
}

impl SampleWindow {
    pub fn record(&mut self, sample: Sample) {
        if self.samples.len() == MAX_SAMPLES_PER_MODEL {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// Drops samples older than [`WINDOW`] at `now`.
    pub fn prune(&mut self, now: Timestamp) {
        let Some(oldest_kept) = now.checked_sub(WINDOW) else {
            return;
        };
        self.samples.retain(|s| s.at >= oldest_kept);
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The p50s over the samples still inside the window at `now`; `None` when there are none.
    pub fn summary(&self, now: Timestamp) -> Option<Summary> {
        let oldest_kept = now.checked_sub(WINDOW).unwrap_or(Timestamp::ZERO);
        let live: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.at >= oldest_kept)
            .collect();
        if live.is_empty() {
            return None;
        }
        let tps: Vec<f64> = live.iter().map(|s| s.tps).collect();
        let ttfts: Vec<f64> = live.iter().map(|s| s.ttft_ms).collect();
        Some(Summary {
            tps_p50: median(&tps),
            ttft_ms_p50: median(&trim_cold_starts(&ttfts)),
            samples: u32::try_from(live.len()).unwrap_or(u32::MAX),
        })
    }
}

/// Windows for every model a node serves (or, on an entry, for every peer-model it proxied).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelSamples {
    by_model: BTreeMap<ModelName, SampleWindow>,
}

impl ModelSamples {
    pub fn record(&mut self, model: &str, sample: Sample) {
        self.by_model
            .entry(model.to_string())
            .or_default()
            .record(sample);
    }

    pub fn prune(&mut self, now: Timestamp) {
        for window in self.by_model.values_mut() {
            window.prune(now);
        }
        self.by_model.retain(|_, w| !w.is_empty());
    }

    pub fn summary(&self, model: &str, now: Timestamp) -> Option<Summary> {
        self.by_model.get(model)?.summary(now)
    }

    /// The gossiped form, in model-name order.
    pub fn timings(&self, now: Timestamp) -> Vec<ModelTiming> {
        self.by_model
            .iter()
            .filter_map(|(model, w)| {
                let s = w.summary(now)?;
                Some(ModelTiming {
                    model: model.clone(),
                    tps_p50: s.tps_p50,
                    ttft_ms_p50: s.ttft_ms_p50,
                    samples_in_window: s.samples,
                })
            })
            .collect()
    }
}

/// Median; the mean of the two middle values for an even count. `values` must be non-empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile, `p` in (0, 100]. `values` must be non-empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// With ≥ 6 TTFTs, drops those above `max(8 s, 5 × p10)` (model loads, cold caches) as long as
/// what remains is a majority; otherwise the slow ones are the norm and stay.
pub fn trim_cold_starts(ttfts_ms: &[f64]) -> Vec<f64> {
    if ttfts_ms.len() < COLD_TRIM_MIN_SAMPLES {
        return ttfts_ms.to_vec();
    }
    let limit = COLD_TRIM_FLOOR_MS.max(COLD_TRIM_P10_FACTOR * percentile(ttfts_ms, 10.0));
    let kept: Vec<f64> = ttfts_ms.iter().copied().filter(|&t| t <= limit).collect();
    if kept.len() * 2 > ttfts_ms.len() {
        kept
    } else {
        ttfts_ms.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Timestamp {
        Timestamp::from_millis(v)
    }

    fn streamed(tokens: u32, first: u64, last: u64, finished: u64) -> Observation {
        Observation {
            sent_at: ms(0),
            status: 200,
            first_token_at: Some(ms(first)),
            last_token_at: Some(ms(last)),
            finished_at: ms(finished),
            usage_completion_tokens: Some(tokens),
            counted_deltas: tokens,
            ending: Ending::Complete,
        }
    }

    #[test]
    fn ttft_is_send_to_first_content_byte_and_decode_is_first_to_last_token() {
        let s = streamed(101, 82, 2_082, 2_090).to_sample().unwrap();
        assert_eq!(s.ttft_ms, 82.0);
        assert!((s.tps - 101.0 / 2.0).abs() < 1e-9);
        assert_eq!(s.completion_tokens, 101);
    }

    #[test]
    fn buffered_stream_uses_wall_clock_not_953000_tok_per_s() {
        // Every token arrived within 1 ms: the decode window is not a measurement.
        let s = streamed(953, 1_000, 1_001, 1_002).to_sample().unwrap();
        assert!((s.tps - 953.0 / 1.002).abs() < 1e-6, "tps = {}", s.tps);
    }

    #[test]
    fn non_streaming_body_times_to_the_body_and_uses_wall_clock() {
        let mut o = streamed(50, 0, 0, 0);
        o.first_token_at = None;
        o.last_token_at = None;
        o.finished_at = ms(500);
        o.counted_deltas = 0;
        let s = o.to_sample().unwrap();
        assert_eq!(s.ttft_ms, 500.0);
        assert!((s.tps - 100.0).abs() < 1e-9);
    }

    #[test]
    fn counted_deltas_stand_in_for_a_missing_usage_chunk() {
        let mut o = streamed(0, 100, 1_100, 1_100);
        o.usage_completion_tokens = None;
        o.counted_deltas = 20;
        assert_eq!(o.to_sample().unwrap().completion_tokens, 20);
        o.counted_deltas = 0;
        assert_eq!(o.to_sample(), Err(NotRecorded::UsageChunkMissing));
    }

    #[test]
    fn each_not_recorded_reason() {
        let ok = streamed(10, 100, 600, 600);
        assert!(ok.to_sample().is_ok());
        assert_eq!(
            Observation { status: 503, ..ok }.to_sample(),
            Err(NotRecorded::Non2xxStatus)
        );
        assert_eq!(
            Observation {
                usage_completion_tokens: Some(0),
                ..ok
            }
            .to_sample(),
            Err(NotRecorded::ZeroCompletionTokens)
        );
        assert_eq!(
            Observation {
                ending: Ending::ClientDisconnected,
                ..ok
            }
            .to_sample(),
            Err(NotRecorded::ClientDisconnected)
        );
        assert_eq!(
            Observation {
                ending: Ending::UpstreamError,
                ..ok
            }
            .to_sample(),
            Err(NotRecorded::UpstreamError)
        );
        assert_eq!(NotRecorded::Non2xxStatus.to_string(), "non_2xx_status");
    }

    fn sample(at_s: u64, ttft_ms: f64, tps: f64) -> Sample {
        Sample {
            at: Timestamp::from_secs(at_s),
            ttft_ms,
            tps,
            completion_tokens: 10,
        }
    }

    #[test]
    fn window_forgets_samples_older_than_an_hour() {
        let mut w = SampleWindow::default();
        w.record(sample(0, 100.0, 10.0));
        w.record(sample(1_000, 200.0, 20.0));
        let s = w.summary(Timestamp::from_secs(3_600)).unwrap();
        assert_eq!(s.samples, 2);
        let s = w.summary(Timestamp::from_secs(3_601)).unwrap();
        assert_eq!((s.samples, s.ttft_ms_p50, s.tps_p50), (1, 200.0, 20.0));
        w.prune(Timestamp::from_secs(4_601));
        assert!(w.summary(Timestamp::from_secs(4_601)).is_none());
        assert!(w.is_empty());
    }

    #[test]
    fn window_keeps_at_most_512_samples() {
        let mut w = SampleWindow::default();
        for i in 0..600 {
            w.record(sample(10, i as f64, 1.0));
        }
        let s = w.summary(Timestamp::from_secs(10)).unwrap();
        assert_eq!(s.samples, 512);
        // The 88 oldest (TTFT 0..87) were evicted.
        assert_eq!(
            s.ttft_ms_p50,
            median(&(88..600).map(|i| i as f64).collect::<Vec<_>>())
        );
    }

    #[test]
    fn cold_start_ttfts_are_trimmed_when_the_rest_is_a_majority() {
        let t = [25_000.0, 80.0, 82.0, 85.0, 90.0, 81.0];
        assert_eq!(trim_cold_starts(&t), vec![80.0, 82.0, 85.0, 90.0, 81.0]);
        // Fewer than six samples: nothing is trimmed.
        assert_eq!(trim_cold_starts(&t[..5]).len(), 5);
        // A slow model is slow every time: nothing is a cold start.
        let slow = [24_925.0, 25_100.0, 24_800.0, 26_000.0, 25_500.0, 24_990.0];
        assert_eq!(trim_cold_starts(&slow).len(), 6);
    }

    #[test]
    fn trimming_keeps_the_slow_half_when_it_is_not_a_minority() {
        let t = [10.0, 11.0, 12.0, 9_000.0, 9_100.0, 9_200.0];
        assert_eq!(trim_cold_starts(&t).len(), 6);
    }

    #[test]
    fn published_ttft_p50_ignores_cold_starts() {
        let mut w = SampleWindow::default();
        for (i, ttft) in [30_000.0, 82.0, 80.0, 84.0, 83.0, 81.0, 85.0]
            .into_iter()
            .enumerate()
        {
            w.record(sample(i as u64, ttft, 45.0));
        }
        let s = w.summary(Timestamp::from_secs(10)).unwrap();
        assert_eq!(s.ttft_ms_p50, 82.5);
        assert_eq!(s.samples, 7);
    }

    #[test]
    fn timings_are_published_per_model_in_name_order() {
        let mut m = ModelSamples::default();
        m.record("b", sample(0, 10.0, 5.0));
        m.record("a", sample(0, 20.0, 7.0));
        let t = m.timings(Timestamp::from_secs(1));
        assert_eq!(
            t.iter().map(|t| t.model.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(t[0].samples_in_window, 1);
    }
}
