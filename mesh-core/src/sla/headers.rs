//! The `x-closedmesh-*` response headers: a public contract SDK callers read to reason about
//! routing without server logs. Identical on mesh- and fallback-served responses.

use super::fallback::FallbackDecision;
use super::gate::Evaluation;
use super::share::ServedBy;

pub const SERVED_BY: &str = "x-closedmesh-served-by";
pub const SLA_STATUS: &str = "x-closedmesh-sla-status";
pub const SLA_TIER: &str = "x-closedmesh-sla-tier";
pub const SLA_CANDIDATES: &str = "x-closedmesh-sla-candidates";
pub const SLA_BEST_TTFT_MS: &str = "x-closedmesh-sla-best-ttft-ms";
pub const SLA_BEST_TPS: &str = "x-closedmesh-sla-best-tps";
pub const FALLBACK_STATUS: &str = "x-closedmesh-fallback-status";
pub const FALLBACK_PROVIDER: &str = "x-closedmesh-fallback-provider";
pub const FALLBACK_MODEL: &str = "x-closedmesh-fallback-model";
pub const FALLBACK_BUDGET_REMAINING: &str = "x-closedmesh-fallback-budget-remaining";
/// Ours: why a fallback-served response fell back (`sla-miss` or
/// `mesh-failed-before-first-token`), since after a mesh failure the SLA status may read
/// `meets-sla`.
pub const FALLBACK_TRIGGER: &str = "x-closedmesh-fallback-trigger";

/// The header set, in a fixed order. TTFT is whole milliseconds (`24925`), tok/s two decimals
/// (`1.09`); both only when the gate had a measurement. The `fallback-provider`, `-model`,
/// `-budget-remaining` and `-trigger` headers appear only when `served_by` is fallback.
pub fn response_headers(
    evaluation: &Evaluation,
    decision: &FallbackDecision,
    served_by: ServedBy,
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        (SERVED_BY, served_by.as_str().to_string()),
        (SLA_STATUS, evaluation.status.as_str().to_string()),
        (SLA_TIER, evaluation.tier.as_str().to_string()),
        (SLA_CANDIDATES, evaluation.candidates.len().to_string()),
    ];
    if let Some(ttft) = evaluation.best_ttft_ms {
        h.push((SLA_BEST_TTFT_MS, format_ttft_ms(ttft)));
    }
    if let Some(tps) = evaluation.best_tps {
        h.push((SLA_BEST_TPS, format_tps(tps)));
    }
    h.push((FALLBACK_STATUS, decision.status.as_str().to_string()));
    if served_by == ServedBy::Fallback {
        if let Some(provider) = &decision.provider {
            h.push((FALLBACK_PROVIDER, provider.clone()));
        }
        if let Some(model) = &decision.provider_model {
            h.push((FALLBACK_MODEL, model.clone()));
        }
        if let Some(left) = decision.budget_remaining {
            h.push((FALLBACK_BUDGET_REMAINING, left.to_string()));
        }
        h.push((FALLBACK_TRIGGER, decision.trigger.as_str().to_string()));
    }
    h
}

/// Whole milliseconds, rounded half away from zero.
pub fn format_ttft_ms(ttft_ms: f64) -> String {
    format!("{}", ttft_ms.max(0.0).round() as u64)
}

/// Two decimals.
pub fn format_tps(tps: f64) -> String {
    format!("{:.2}", tps.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format_as_the_original_headers_read() {
        assert_eq!(format_ttft_ms(24_925.0), "24925");
        assert_eq!(format_ttft_ms(82.4999), "82");
        assert_eq!(format_ttft_ms(1_046.5), "1047");
        assert_eq!(format_tps(1.09), "1.09");
        assert_eq!(format_tps(45.2649), "45.26");
        assert_eq!(format_tps(3.981), "3.98");
        assert_eq!(format_tps(8.0), "8.00");
    }
}
