//! The tier catalog: which service tier a model belongs to, from its family and parameter count
//! (config overrides win), each tier's latency targets, and the default chat model.

use crate::peer::ModelName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A model's service tier: what latency the mesh promises for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    DailyDriver,
    Capacity,
    Experimental,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::DailyDriver => "daily-driver",
            Tier::Capacity => "capacity",
            Tier::Experimental => "experimental",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The copy a capacity-tier card shows before the user opts in (calibrated on the 2026-05-23
/// DeepSeek-70B runs: ~10–25 s TTFT, ~1 tok/s).
pub const CAPACITY_TIER_COPY: &str =
    "expected 10–15 s to first token, 1–2 tok/s decode through the mesh today";

/// The flagship daily-driver (family, billions of parameters): the default chat model whenever
/// some quantisation of it is served.
pub const FLAGSHIP_DAILY_DRIVER: (&str, f64) = ("qwen3", 8.0);

/// What a tier promises: TTFT p50 at most `ttft_ms_p50_max` and decode p50 at least
/// `tps_p50_min`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    pub ttft_ms_p50_max: f64,
    pub tps_p50_min: f64,
}

/// Per-tier targets; the defaults are SPEC §6's table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct TierTargets {
    pub daily_driver: Targets,
    pub capacity: Targets,
    pub experimental: Targets,
}

impl Default for TierTargets {
    fn default() -> Self {
        TierTargets {
            daily_driver: Targets {
                ttft_ms_p50_max: 3_000.0,
                tps_p50_min: 8.0,
            },
            capacity: Targets {
                ttft_ms_p50_max: 15_000.0,
                tps_p50_min: 0.8,
            },
            experimental: Targets {
                ttft_ms_p50_max: 30_000.0,
                tps_p50_min: 0.3,
            },
        }
    }
}

impl TierTargets {
    pub fn for_tier(&self, tier: Tier) -> Targets {
        match tier {
            Tier::DailyDriver => self.daily_driver,
            Tier::Capacity => self.capacity,
            Tier::Experimental => self.experimental,
        }
    }
}

/// A model name taken apart: `DeepSeek-R1-Distill-Llama-70B-Q4_K_M` is family
/// `deepseek-r1-distill-llama`, 70 B parameters, quant `q4_k_m`, base
/// `deepseek-r1-distill-llama-70b`. Everything is lower-case.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelId {
    /// The tokens before the parameter count (all tokens when there is none).
    pub family: String,
    /// Parameter count in billions (`135M` → 0.135, `8x22B` → 176).
    pub params_b: Option<f64>,
    /// The quantisation suffix(es) that were stripped, e.g. `q4_k_m`.
    pub quant: Option<String>,
    /// The name without path, `.gguf`, shard suffix, quant, org prefix: what mappings key on.
    pub base: String,
}

impl ModelId {
    /// Parses a GGUF stem or file name. Never fails: an unrecognisable name is all family.
    pub fn parse(name: &str) -> ModelId {
        let file = name.rsplit(['/', '\\']).next().unwrap_or(name);
        let mut stem = file.to_ascii_lowercase();
        if let Some(s) = stem.strip_suffix(".gguf") {
            stem.truncate(s.len());
        }
        strip_shard_suffix(&mut stem);

        // Peel quant tags off the end: `-q4_k_m`, `.q4_1`, `-ud-q4_k_xl`, `.i1-q4_k_m`.
        let mut quants = Vec::new();
        while quants.len() < 3 {
            let Some(cut) = stem.rfind(['-', '.']) else {
                break;
            };
            if cut == 0 || !is_quant_tag(&stem[cut + 1..]) {
                break;
            }
            quants.push(stem[cut + 1..].to_string());
            stem.truncate(cut);
        }
        quants.reverse();

        let mut tokens: Vec<&str> = stem
            .split(['-', '_', ' '])
            .filter(|t| !t.is_empty())
            .collect();
        // `Qwen_Qwen3-8B` (an org prefix joined by `_`) and `Meta-Llama-3.1-8B`: the family is
        // the model's, not the publisher's.
        if let Some((first_dash, _)) = stem.split_once('-')
            && let Some((_, model)) = first_dash.rsplit_once('_')
            && !model.is_empty()
        {
            let org_tokens = first_dash.split('_').filter(|t| !t.is_empty()).count();
            tokens.drain(..org_tokens - 1);
        }
        if tokens.len() > 1 && tokens[0] == "meta" && tokens[1] == "llama" {
            tokens.remove(0);
        }

        let size_at = tokens.iter().position(|t| parse_params_b(t).is_some());
        let (family, params_b) = match size_at {
            Some(i) => (tokens[..i].join("-"), parse_params_b(tokens[i])),
            None => (tokens.join("-"), None),
        };
        ModelId {
            family,
            params_b,
            quant: (!quants.is_empty()).then(|| quants.join("-")),
            base: tokens.join("-"),
        }
    }

    fn is(&self, family: &str, params_b: f64) -> bool {
        self.family == family && self.params_b.is_some_and(|p| (p - params_b).abs() < 1e-6)
    }
}

fn strip_shard_suffix(stem: &mut String) {
    // `-00001-of-00003`
    let bytes = stem.as_bytes();
    if bytes.len() > 15 {
        let tail = &stem[stem.len() - 15..];
        let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
        if tail.starts_with('-')
            && &tail[6..10] == "-of-"
            && digits(&tail[1..6])
            && digits(&tail[10..])
        {
            stem.truncate(stem.len() - 15);
        }
    }
}

fn is_quant_tag(tag: &str) -> bool {
    const EXACT: &[&str] = &[
        "f16", "f32", "bf16", "fp16", "fp32", "fp8", "mxfp4", "ud", "i1", "imat", "imatrix",
    ];
    if EXACT.contains(&tag) {
        return true;
    }
    // q4_k_m, q8_0, q4_1, iq2_xxs, tq1_0
    let rest = tag
        .strip_prefix("iq")
        .or_else(|| tag.strip_prefix("tq"))
        .or_else(|| tag.strip_prefix('q'));
    rest.is_some_and(|r| {
        r.starts_with(|c: char| c.is_ascii_digit())
            && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// `8b` → 8, `0.6b` → 0.6, `135m` → 0.135, `8x22b` → 176.
fn parse_params_b(token: &str) -> Option<f64> {
    let number = |s: &str| -> Option<f64> {
        let ok = !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_digit())
            && s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        ok.then(|| s.parse::<f64>().ok()).flatten()
    };
    if let Some(n) = token.strip_suffix('b') {
        if let Some((experts, each)) = n.split_once('x') {
            return Some(number(experts)? * number(each)?);
        }
        return number(n);
    }
    token
        .strip_suffix('m')
        .and_then(number)
        .map(|m| m / 1_000.0)
}

/// The built-in table: (family, billions of parameters, tier). Unlisted ⇒ experimental.
const CATALOG: &[(&str, f64, Tier)] = &[
    // Daily-driver: one contributor serves these solo at chat-viable latency.
    ("qwen3", 8.0, Tier::DailyDriver),
    ("llama-3.1", 8.0, Tier::DailyDriver),
    ("qwen2.5-coder", 7.0, Tier::DailyDriver),
    ("deepseek-r1-distill-qwen", 14.0, Tier::DailyDriver),
    ("llama-3.2", 3.0, Tier::DailyDriver),
    ("gemma-3", 12.0, Tier::DailyDriver),
    // Capacity: the 27B–70B class (and larger MoEs), routable but slow through the mesh.
    ("gemma-3", 27.0, Tier::Capacity),
    ("qwen3", 30.0, Tier::Capacity),
    ("qwen3-coder", 30.0, Tier::Capacity),
    ("qwen3", 32.0, Tier::Capacity),
    ("qwen2.5-coder", 32.0, Tier::Capacity),
    ("glm-4", 32.0, Tier::Capacity),
    ("deepseek-r1-distill-llama", 70.0, Tier::Capacity),
    // The original's catalog name for the same model.
    ("deepseek-r1-distill", 70.0, Tier::Capacity),
    ("llama-3.3", 70.0, Tier::Capacity),
    ("qwen2.5", 72.0, Tier::Capacity),
    ("mixtral", 176.0, Tier::Capacity),
    ("qwen3", 235.0, Tier::Capacity),
];

/// The tier table plus the operator's overrides. Override keys are matched case-insensitively
/// against, in order: the full name (`Qwen3-8B-Q4_K_M`), the base without quant (`Qwen3-8B`),
/// the family (`Qwen3`). The first hit wins; then the built-in table; then experimental.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TierCatalog {
    pub overrides: BTreeMap<String, Tier>,
}

impl TierCatalog {
    pub fn with_overrides<K: Into<String>>(overrides: impl IntoIterator<Item = (K, Tier)>) -> Self {
        TierCatalog {
            overrides: overrides
                .into_iter()
                .map(|(k, t)| (k.into().to_ascii_lowercase(), t))
                .collect(),
        }
    }

    pub fn tier_of(&self, model: &str) -> Tier {
        let id = ModelId::parse(model);
        if !self.overrides.is_empty() {
            let full = model.to_ascii_lowercase();
            let full = full.strip_suffix(".gguf").unwrap_or(&full);
            for key in [full, id.base.as_str(), id.family.as_str()] {
                let hit = self
                    .overrides
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, t)| *t);
                if let Some(tier) = hit {
                    return tier;
                }
            }
        }
        CATALOG
            .iter()
            .find(|(family, params, _)| id.is(family, *params))
            .map_or(Tier::Experimental, |(_, _, tier)| *tier)
    }
}

/// Why no default chat model could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoDefaultModel {
    #[error("no model is served in the mesh")]
    NothingServed,
    /// A slow 30–70B chat must be asked for by name, never landed on by default.
    #[error("only capacity-tier models are served; name one explicitly")]
    OnlyCapacityTier,
}

impl NoDefaultModel {
    pub fn reason_code(self) -> &'static str {
        match self {
            NoDefaultModel::NothingServed => "no_model_served",
            NoDefaultModel::OnlyCapacityTier => "only_capacity_tier_served",
        }
    }
}

/// The default chat model among the `served` (routable) ones: the one function both the web
/// picker and the `/api/chat` default go through.
///
/// 1. A daily-driver when any is served: `preferred` if it is one, else the flagship
///    ([`FLAGSHIP_DAILY_DRIVER`], any quant), else the first by name.
/// 2. Otherwise `preferred` if served (an operator pin), else the first experimental by name.
/// 3. Never a capacity-tier model unless pinned: [`NoDefaultModel::OnlyCapacityTier`].
///
/// Ties always break by byte-wise name order, so the result never depends on listing order.
pub fn default_model(
    served: &[ModelName],
    preferred: Option<&str>,
    catalog: &TierCatalog,
) -> Result<ModelName, NoDefaultModel> {
    let mut models: Vec<(&str, Tier)> = served
        .iter()
        .map(|m| (m.as_str(), catalog.tier_of(m)))
        .collect();
    models.sort_unstable();
    models.dedup();
    let preferred = preferred.and_then(|p| models.iter().find(|(m, _)| *m == p).copied());
    let of_tier = |tier: Tier| {
        models
            .iter()
            .filter(move |(_, t)| *t == tier)
            .map(|(m, _)| *m)
    };

    let chosen = if of_tier(Tier::DailyDriver).next().is_some() {
        preferred
            .filter(|(_, t)| *t == Tier::DailyDriver)
            .map(|(m, _)| m)
            .or_else(|| {
                let (family, params) = FLAGSHIP_DAILY_DRIVER;
                of_tier(Tier::DailyDriver).find(|m| ModelId::parse(m).is(family, params))
            })
            .or_else(|| of_tier(Tier::DailyDriver).next())
    } else {
        preferred
            .map(|(m, _)| m)
            .or_else(|| of_tier(Tier::Experimental).next())
    };
    match chosen {
        Some(m) => Ok(m.to_string()),
        None if models.is_empty() => Err(NoDefaultModel::NothingServed),
        None => Err(NoDefaultModel::OnlyCapacityTier),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(name: &str) -> (String, Option<f64>, Option<String>) {
        let id = ModelId::parse(name);
        (id.family, id.params_b, id.quant)
    }

    #[test]
    fn gguf_stems_parse_into_family_size_and_quant() {
        let cases: &[(&str, &str, Option<f64>, Option<&str>)] = &[
            ("Qwen3-8B-Q4_K_M", "qwen3", Some(8.0), Some("q4_k_m")),
            (
                "DeepSeek-R1-Distill-Llama-70B-Q4_K_M",
                "deepseek-r1-distill-llama",
                Some(70.0),
                Some("q4_k_m"),
            ),
            (
                "SmolLM2-135M-Instruct.Q4_1",
                "smollm2",
                Some(0.135),
                Some("q4_1"),
            ),
            (
                "Llama-3.1-8B-Instruct-Q4_K_M",
                "llama-3.1",
                Some(8.0),
                Some("q4_k_m"),
            ),
            (
                "Qwen2.5-Coder-7B-Instruct-Q4_K_M",
                "qwen2.5-coder",
                Some(7.0),
                Some("q4_k_m"),
            ),
            ("qwen3-8b-q4_k_m.gguf", "qwen3", Some(8.0), Some("q4_k_m")),
            (
                "/models/Meta-Llama-3.1-8B-Instruct-IQ2_XXS.gguf",
                "llama-3.1",
                Some(8.0),
                Some("iq2_xxs"),
            ),
            ("Qwen_Qwen3-32B-Q8_0", "qwen3", Some(32.0), Some("q8_0")),
            (
                "Qwen3-30B-A3B-UD-Q4_K_XL",
                "qwen3",
                Some(30.0),
                Some("ud-q4_k_xl"),
            ),
            (
                "Mixtral-8x22B-Instruct-v0.1.Q4_K_M",
                "mixtral",
                Some(176.0),
                Some("q4_k_m"),
            ),
            ("Qwen3-0.6B-BF16", "qwen3", Some(0.6), Some("bf16")),
            (
                "Llama-3.3-70B-Instruct-Q4_K_M-00001-of-00002.gguf",
                "llama-3.3",
                Some(70.0),
                Some("q4_k_m"),
            ),
            ("mystery-model", "mystery-model", None, None),
            ("Llama-3.2", "llama-3.2", None, None),
        ];
        for (name, family, params, quant) in cases {
            assert_eq!(
                parsed(name),
                (family.to_string(), *params, quant.map(str::to_string)),
                "{name}"
            );
        }
        assert_eq!(
            ModelId::parse("Llama-3.1-8B-Instruct-Q4_K_M").base,
            "llama-3.1-8b-instruct"
        );
    }

    #[test]
    fn catalog_sorts_the_named_models_into_their_tiers() {
        let c = TierCatalog::default();
        for m in [
            "Qwen3-8B-Q4_K_M",
            "Llama-3.1-8B-Instruct-Q4_K_M",
            "Qwen2.5-Coder-7B-Instruct-Q4_K_M",
            "DeepSeek-R1-Distill-Qwen-14B-Q4_K_M",
            "Llama-3.2-3B-Instruct-Q4_K_M",
            "qwen3-8b-q8_0.gguf",
        ] {
            assert_eq!(c.tier_of(m), Tier::DailyDriver, "{m}");
        }
        for m in [
            "Qwen3-32B-Q4_K_M",
            "DeepSeek-R1-Distill-Llama-70B-Q4_K_M",
            "DeepSeek-R1-Distill-70B-Q4_K_M",
            "Llama-3.3-70B-Instruct-Q4_K_M",
        ] {
            assert_eq!(c.tier_of(m), Tier::Capacity, "{m}");
        }
        for m in [
            "SmolLM2-135M-Instruct.Q4_1",
            "Qwen3-14B-Q4_K_M",
            "mystery",
            "Llama-3.1-70B",
        ] {
            assert_eq!(c.tier_of(m), Tier::Experimental, "{m}");
        }
    }

    #[test]
    fn config_overrides_win_name_then_base_then_family() {
        let c = TierCatalog::with_overrides([
            ("SmolLM2", Tier::DailyDriver),
            ("qwen3-8b", Tier::Experimental),
            ("Qwen3-8B-Q8_0", Tier::Capacity),
        ]);
        assert_eq!(c.tier_of("SmolLM2-135M-Instruct.Q4_1"), Tier::DailyDriver);
        assert_eq!(c.tier_of("Qwen3-8B-Q4_K_M"), Tier::Experimental);
        assert_eq!(c.tier_of("Qwen3-8B-Q8_0.gguf"), Tier::Capacity);
        // Untouched rows keep the table's tier.
        assert_eq!(c.tier_of("Qwen3-32B-Q4_K_M"), Tier::Capacity);
    }

    fn names(ms: &[&str]) -> Vec<ModelName> {
        ms.iter().map(|m| m.to_string()).collect()
    }

    #[test]
    fn default_is_a_daily_driver_even_when_a_70b_is_listed_first() {
        let c = TierCatalog::default();
        let served = names(&[
            "DeepSeek-R1-Distill-Llama-70B-Q4_K_M",
            "Llama-3.2-3B-Instruct-Q4_K_M",
        ]);
        assert_eq!(
            default_model(&served, None, &c).unwrap(),
            "Llama-3.2-3B-Instruct-Q4_K_M"
        );
        // A capacity pin does not beat a served daily-driver.
        assert_eq!(
            default_model(&served, Some("DeepSeek-R1-Distill-Llama-70B-Q4_K_M"), &c).unwrap(),
            "Llama-3.2-3B-Instruct-Q4_K_M"
        );
    }

    #[test]
    fn default_prefers_pin_then_flagship_then_name_order() {
        let c = TierCatalog::default();
        let served = names(&[
            "Qwen3-8B-Q4_K_M",
            "Llama-3.2-3B-Instruct-Q4_K_M",
            "Llama-3.1-8B-Instruct-Q4_K_M",
        ]);
        assert_eq!(default_model(&served, None, &c).unwrap(), "Qwen3-8B-Q4_K_M");
        assert_eq!(
            default_model(&served, Some("Llama-3.2-3B-Instruct-Q4_K_M"), &c).unwrap(),
            "Llama-3.2-3B-Instruct-Q4_K_M"
        );
        // A pin that is not served is ignored.
        assert_eq!(
            default_model(&served, Some("Gone-7B"), &c).unwrap(),
            "Qwen3-8B-Q4_K_M"
        );
        let mut reversed = served[1..].to_vec();
        reversed.reverse();
        assert_eq!(
            default_model(&reversed, None, &c).unwrap(),
            "Llama-3.1-8B-Instruct-Q4_K_M"
        );
        assert_eq!(
            default_model(&served[1..], None, &c).unwrap(),
            "Llama-3.1-8B-Instruct-Q4_K_M"
        );
    }

    #[test]
    fn capacity_only_mesh_has_no_default_unless_pinned() {
        let c = TierCatalog::default();
        let served = names(&["Qwen3-32B-Q4_K_M"]);
        assert_eq!(
            default_model(&served, None, &c),
            Err(NoDefaultModel::OnlyCapacityTier)
        );
        assert_eq!(
            default_model(&served, Some("Qwen3-32B-Q4_K_M"), &c).unwrap(),
            "Qwen3-32B-Q4_K_M"
        );
        assert_eq!(
            default_model(&[], None, &c),
            Err(NoDefaultModel::NothingServed)
        );
        // An experimental model (the SmolLM2 test mesh) is a fine default when nothing better is.
        let served = names(&["Qwen3-32B-Q4_K_M", "SmolLM2-135M-Instruct.Q4_1"]);
        assert_eq!(
            default_model(&served, None, &c).unwrap(),
            "SmolLM2-135M-Instruct.Q4_1"
        );
    }

    #[test]
    fn tier_serde_names_are_kebab_case() {
        assert_eq!(
            serde_json::to_string(&Tier::DailyDriver).unwrap(),
            "\"daily-driver\""
        );
        for t in [Tier::DailyDriver, Tier::Capacity, Tier::Experimental] {
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
    }
}
