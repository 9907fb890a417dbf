//! The fallback decision (mesh or the external OpenAI-compatible provider) and the per-IP hourly
//! budget that bounds what the provider costs.

use super::gate::Evaluation;
use super::share::HourBucket;
use super::tier::{ModelId, Tier};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// The original's mapping of daily-driver models to OpenRouter slugs, keyed by base name.
pub const OPENROUTER_MODEL_MAP: &[(&str, &str)] = &[
    ("qwen3-8b", "qwen/qwen3-8b"),
    ("llama-3.1-8b-instruct", "meta-llama/llama-3.1-8b-instruct"),
    (
        "qwen2.5-coder-7b-instruct",
        "qwen/qwen-2.5-coder-7b-instruct",
    ),
    (
        "deepseek-r1-distill-qwen-14b",
        "deepseek/deepseek-r1-distill-qwen-14b",
    ),
    ("llama-3.2-3b-instruct", "meta-llama/llama-3.2-3b-instruct"),
];

/// The fallback policy. The API key itself stays in the shell; the decision only needs to know
/// whether one is configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FallbackConfig {
    /// Named in `x-closedmesh-fallback-provider`.
    pub provider: String,
    pub api_key_configured: bool,
    /// Mesh model → provider model. Keys match case-insensitively on the full name or the base
    /// name without quant (`Qwen3-8B`), never on the family alone (a `Qwen3` key would send a
    /// 32B request to an 8B).
    pub model_map: BTreeMap<String, String>,
    /// Fallback requests per caller IP per clock hour. Default 20.
    pub per_ip_per_hour: u32,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            provider: "openrouter".to_string(),
            api_key_configured: false,
            model_map: OPENROUTER_MODEL_MAP
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            per_ip_per_hour: 20,
        }
    }
}

impl FallbackConfig {
    /// The provider's model for `model`, if mapped.
    pub fn provider_model(&self, model: &str) -> Option<&str> {
        let full = model.to_ascii_lowercase();
        let full = full.strip_suffix(".gguf").unwrap_or(&full);
        let base = ModelId::parse(model).base;
        [full, base.as_str()].into_iter().find_map(|key| {
            self.model_map
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_str())
        })
    }
}

/// `x-closedmesh-fallback-status`. The strings are a public header contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FallbackStatus {
    /// Not needed: the mesh meets the SLA. (The original's value for this case.)
    MeshMeetsSla,
    FallbackFired,
    /// No provider API key configured.
    FallbackDisabled,
    /// Only daily-driver models fall back; capacity and experimental stay on the mesh.
    FallbackWrongTier,
    FallbackNoMapping,
    /// The caller's IP spent its hourly budget; the request stays on the mesh.
    FallbackRateLimited,
}

impl FallbackStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackStatus::MeshMeetsSla => "mesh-meets-sla",
            FallbackStatus::FallbackFired => "fallback-fired",
            FallbackStatus::FallbackDisabled => "fallback-disabled",
            FallbackStatus::FallbackWrongTier => "fallback-wrong-tier",
            FallbackStatus::FallbackNoMapping => "fallback-no-mapping",
            FallbackStatus::FallbackRateLimited => "fallback-rate-limited",
        }
    }
}

impl fmt::Display for FallbackStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What made the entry consider the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FallbackTrigger {
    /// The gate said the mesh cannot meet the SLA.
    SlaMiss,
    /// Every mesh target failed before the first token reached the caller.
    MeshFailedBeforeFirstToken,
}

impl FallbackTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackTrigger::SlaMiss => "sla-miss",
            FallbackTrigger::MeshFailedBeforeFirstToken => "mesh-failed-before-first-token",
        }
    }
}

/// How many fallback requests the caller may still make this hour (before this one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BudgetLeft(pub u32);

/// The decision for one request. When `status` is `fallback-fired`, `provider`,
/// `provider_model` and `budget_remaining` (after this request) are set; otherwise all `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackDecision {
    pub status: FallbackStatus,
    pub trigger: FallbackTrigger,
    pub provider: Option<String>,
    pub provider_model: Option<String>,
    pub budget_remaining: Option<u32>,
}

impl FallbackDecision {
    pub fn fires(&self) -> bool {
        self.status == FallbackStatus::FallbackFired
    }
}

/// Before routing: mesh or provider. In order: the SLA is met → `mesh-meets-sla`; the tier is not
/// daily-driver → `fallback-wrong-tier`; no mapping → `fallback-no-mapping`; no API key →
/// `fallback-disabled`; no budget left → `fallback-rate-limited`; else `fallback-fired`. (The
/// original's order: the cheap static policy first, so a capacity request reads `wrong-tier` on
/// every deployment, keyed or not.) The caller spends one unit of the budget when it fires.
pub fn decide_fallback(
    evaluation: &Evaluation,
    config: &FallbackConfig,
    caller_budget: BudgetLeft,
) -> FallbackDecision {
    if evaluation.meets_sla() {
        return stay(FallbackStatus::MeshMeetsSla, FallbackTrigger::SlaMiss);
    }
    decide(evaluation, config, caller_budget, FallbackTrigger::SlaMiss)
}

/// After every mesh target failed before the first token: the same rules, minus the SLA check
/// (the gate's optimism just proved wrong). When it does not fire, the caller gets the mesh error.
pub fn decide_fallback_after_mesh_failure(
    evaluation: &Evaluation,
    config: &FallbackConfig,
    caller_budget: BudgetLeft,
) -> FallbackDecision {
    decide(
        evaluation,
        config,
        caller_budget,
        FallbackTrigger::MeshFailedBeforeFirstToken,
    )
}

fn decide(
    evaluation: &Evaluation,
    config: &FallbackConfig,
    caller_budget: BudgetLeft,
    trigger: FallbackTrigger,
) -> FallbackDecision {
    if evaluation.tier != Tier::DailyDriver {
        return stay(FallbackStatus::FallbackWrongTier, trigger);
    }
    let Some(provider_model) = config.provider_model(&evaluation.model) else {
        return stay(FallbackStatus::FallbackNoMapping, trigger);
    };
    if !config.api_key_configured {
        return stay(FallbackStatus::FallbackDisabled, trigger);
    }
    let Some(remaining) = caller_budget.0.checked_sub(1) else {
        return stay(FallbackStatus::FallbackRateLimited, trigger);
    };
    FallbackDecision {
        status: FallbackStatus::FallbackFired,
        trigger,
        provider: Some(config.provider.clone()),
        provider_model: Some(provider_model.to_string()),
        budget_remaining: Some(remaining),
    }
}

fn stay(status: FallbackStatus, trigger: FallbackTrigger) -> FallbackDecision {
    FallbackDecision {
        status,
        trigger,
        provider: None,
        provider_model: None,
        budget_remaining: None,
    }
}

/// Over budget: the hourly limit for this caller is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fallback budget spent for this hour")]
pub struct OverBudget;

/// Per-caller fallback counts for the current clock hour (UTC hour buckets). Memory is bounded:
/// only the current hour is kept, and at most `max_callers` callers in it; a caller beyond that
/// reads as over budget (the request stays on the mesh, which costs nothing).
///
/// IPv6 callers count per /64 (one host controls a whole /64), IPv4-mapped IPv6 as IPv4.
#[derive(Debug, Clone, PartialEq)]
pub struct FallbackBudget {
    limit: u32,
    max_callers: usize,
    hour: HourBucket,
    used: BTreeMap<IpAddr, u32>,
}

impl FallbackBudget {
    pub const DEFAULT_MAX_CALLERS: usize = 65_536;

    pub fn new(limit: u32) -> Self {
        Self::with_max_callers(limit, Self::DEFAULT_MAX_CALLERS)
    }

    pub fn with_max_callers(limit: u32, max_callers: usize) -> Self {
        FallbackBudget {
            limit,
            max_callers,
            hour: HourBucket(0),
            used: BTreeMap::new(),
        }
    }

    /// What `ip` may still spend in `now`'s hour.
    pub fn remaining(&mut self, ip: IpAddr, now: Timestamp) -> BudgetLeft {
        self.roll(now);
        let key = caller_key(ip);
        match self.used.get(&key) {
            Some(&used) => BudgetLeft(self.limit.saturating_sub(used)),
            None if self.used.len() >= self.max_callers => BudgetLeft(0),
            None => BudgetLeft(self.limit),
        }
    }

    /// Spends one unit; returns what is left after it.
    pub fn take(&mut self, ip: IpAddr, now: Timestamp) -> Result<u32, OverBudget> {
        let BudgetLeft(left) = self.remaining(ip, now);
        let left = left.checked_sub(1).ok_or(OverBudget)?;
        *self.used.entry(caller_key(ip)).or_insert(0) += 1;
        Ok(left)
    }

    pub fn tracked_callers(&self) -> usize {
        self.used.len()
    }

    fn roll(&mut self, now: Timestamp) {
        let hour = HourBucket::of(now);
        if hour != self.hour {
            self.hour = hour;
            self.used.clear();
        }
    }
}

/// The address a caller's budget is counted under: IPv4 as is, IPv4-mapped IPv6 as IPv4, other
/// IPv6 by its /64. Shared stores (Redis) key budgets by it too.
pub fn caller_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let seg = v6.segments();
                IpAddr::V6([seg[0], seg[1], seg[2], seg[3], 0, 0, 0, 0].into())
            }
        },
    }
}

/// Decides before routing and, when it fires, spends the caller's budget in the same step (so two
/// concurrent requests cannot both spend the last unit).
pub fn decide_and_spend(
    evaluation: &Evaluation,
    config: &FallbackConfig,
    budget: &mut FallbackBudget,
    ip: IpAddr,
    now: Timestamp,
) -> FallbackDecision {
    let left = budget.remaining(ip, now);
    let decision = decide_fallback(evaluation, config, left);
    if decision.fires() {
        // Cannot fail: `remaining` just reported at least one unit for this caller and hour.
        budget.take(ip, now).expect("budget checked above");
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn at_min(m: u64) -> Timestamp {
        Timestamp::from_secs(1_800_000_000 / 3600 * 3600 + m * 60)
    }

    #[test]
    fn budget_allows_twenty_per_hour_then_refuses_until_the_next_clock_hour() {
        let ip: IpAddr = Ipv4Addr::new(203, 0, 113, 7).into();
        let other: IpAddr = Ipv4Addr::new(203, 0, 113, 8).into();
        let mut b = FallbackBudget::new(20);
        for i in 0..20 {
            assert_eq!(b.take(ip, at_min(1)), Ok(19 - i));
        }
        assert_eq!(b.take(ip, at_min(59)), Err(OverBudget));
        assert_eq!(b.remaining(ip, at_min(59)), BudgetLeft(0));
        assert_eq!(b.remaining(other, at_min(59)), BudgetLeft(20));
        assert_eq!(b.remaining(ip, at_min(60)), BudgetLeft(20));
        assert_eq!(b.tracked_callers(), 0);
    }

    #[test]
    fn ipv6_callers_share_a_budget_per_slash_64() {
        let mut b = FallbackBudget::new(2);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.51.100.1".parse().unwrap();
        let v4: IpAddr = "198.51.100.1".parse().unwrap();
        b.take(a, at_min(0)).unwrap();
        b.take(same_64, at_min(0)).unwrap();
        assert_eq!(b.take(a, at_min(0)), Err(OverBudget));
        b.take(mapped, at_min(0)).unwrap();
        assert_eq!(b.remaining(v4, at_min(0)), BudgetLeft(1));
    }

    #[test]
    fn budget_memory_is_bounded_and_new_callers_beyond_it_stay_on_the_mesh() {
        let mut b = FallbackBudget::with_max_callers(20, 3);
        for i in 0..3 {
            b.take(Ipv4Addr::new(10, 0, 0, i).into(), at_min(0))
                .unwrap();
        }
        let late: IpAddr = Ipv4Addr::new(10, 0, 0, 99).into();
        assert_eq!(b.take(late, at_min(0)), Err(OverBudget));
        assert_eq!(b.tracked_callers(), 3);
        // Known callers keep their budget.
        assert_eq!(b.take(Ipv4Addr::new(10, 0, 0, 1).into(), at_min(0)), Ok(18));
    }

    #[test]
    fn provider_model_matches_full_or_base_name_never_family() {
        let c = FallbackConfig::default();
        assert_eq!(c.provider_model("Qwen3-8B-Q4_K_M"), Some("qwen/qwen3-8b"));
        assert_eq!(
            c.provider_model("qwen3-8b-q8_0.gguf"),
            Some("qwen/qwen3-8b")
        );
        assert_eq!(
            c.provider_model("Meta-Llama-3.1-8B-Instruct-Q4_K_M"),
            Some("meta-llama/llama-3.1-8b-instruct")
        );
        assert_eq!(c.provider_model("Qwen3-32B-Q4_K_M"), None);
        assert_eq!(c.provider_model("Qwen3"), None);
    }

    #[test]
    fn status_strings_are_kebab_case() {
        for s in [
            FallbackStatus::MeshMeetsSla,
            FallbackStatus::FallbackFired,
            FallbackStatus::FallbackDisabled,
            FallbackStatus::FallbackWrongTier,
            FallbackStatus::FallbackNoMapping,
            FallbackStatus::FallbackRateLimited,
        ] {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }
}
