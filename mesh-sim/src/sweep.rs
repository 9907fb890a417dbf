//! `mesh-sim sweep FILE --seeds A..B`: one run per seed, the invariant violations summed up, and
//! the seeds that failed (rerun one with `mesh-sim run FILE --seed N` to see it in full).

use crate::check::{Liveness, Rule, Violation};
use crate::scenario::Scenario;
use crate::{Engine, Extras, RunError, RunOptions};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedResult {
    pub seed: u64,
    pub violations: BTreeMap<Rule, u64>,
    pub liveness: Liveness,
    /// The earliest violation, if any.
    pub first: Option<Violation>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepReport {
    pub scenario: String,
    pub engine: String,
    pub runs: Vec<SeedResult>,
    /// Violations per rule over every seed.
    pub totals: BTreeMap<Rule, u64>,
    pub failing_seeds: Vec<u64>,
}

/// Runs `scenario` once per seed of `seeds`. `progress` hears (seeds done, seeds in all).
pub fn sweep(
    scenario: &Scenario,
    engine: Engine,
    seeds: Range<u64>,
    mut progress: Option<&mut dyn FnMut(u64, u64)>,
) -> Result<SweepReport, RunError> {
    let total = seeds.end.saturating_sub(seeds.start);
    let mut runs = Vec::new();
    let mut totals: BTreeMap<Rule, u64> = BTreeMap::new();
    for (i, seed) in seeds.enumerate() {
        let outcome = crate::run_outcome(
            scenario,
            RunOptions {
                seed: Some(seed),
                engine,
            },
            Extras::default(),
        )?;
        let checks = outcome.report.checks;
        for (rule, n) in &checks.violations {
            *totals.entry(*rule).or_default() += n;
        }
        runs.push(SeedResult {
            seed,
            violations: checks.violations,
            liveness: checks.liveness,
            first: checks.first.into_iter().next(),
        });
        if let Some(p) = progress.as_deref_mut() {
            p(i as u64 + 1, total);
        }
    }
    let failing_seeds = runs
        .iter()
        .filter(|r| r.violations.values().any(|&n| n > 0))
        .map(|r| r.seed)
        .collect();
    Ok(SweepReport {
        scenario: scenario.name.clone(),
        engine: engine.as_str().to_string(),
        runs,
        totals,
        failing_seeds,
    })
}

impl SweepReport {
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a sweep report is plain data");
        s.push('\n');
        s
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let seeds = match (self.runs.first(), self.runs.last()) {
            (Some(a), Some(b)) => format!("{}..{}", a.seed, b.seed + 1),
            _ => "none".into(),
        };
        let _ = writeln!(
            out,
            "sweep {}  engine {}  seeds {seeds}  ({} runs)",
            self.scenario,
            self.engine,
            self.runs.len()
        );
        if self.totals.values().all(|&n| n == 0) {
            let _ = writeln!(out, "no invariant violated");
        } else {
            for (rule, n) in &self.totals {
                let seeds = self
                    .runs
                    .iter()
                    .filter(|r| r.violations.get(rule).is_some_and(|&v| v > 0))
                    .count();
                let _ = writeln!(out, "{rule}: {n} violation(s) in {seeds} seed(s)");
            }
        }
        let converged: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| match r.liveness {
                Liveness::Converged { after_s } => Some(after_s),
                _ => None,
            })
            .collect();
        if !converged.is_empty() {
            let worst = converged.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                out,
                "liveness: converged in {} of {} runs, at worst {worst:.0} s after the faults",
                converged.len(),
                self.runs.len()
            );
        }
        for r in self
            .runs
            .iter()
            .filter(|r| self.failing_seeds.contains(&r.seed))
        {
            let first = r.first.as_ref().map_or(String::new(), |v| {
                format!(": at {:.1} s {} — {}", v.at_s, v.rule, v.detail)
            });
            let _ = writeln!(out, "seed {} failed{first}", r.seed);
        }
        if !self.failing_seeds.is_empty() {
            let _ = writeln!(
                out,
                "rerun one with `mesh-sim run FILE --seed N` for its report and derived options"
            );
        }
        out
    }
}

/// Parses `A..B` (B exclusive) or `A..=B`.
pub fn parse_seeds(s: &str) -> Result<Range<u64>, String> {
    let bad = || format!("expected seeds as A..B or A..=B, got {s:?}");
    let (a, b, inclusive) = if let Some((a, b)) = s.split_once("..=") {
        (a, b, true)
    } else if let Some((a, b)) = s.split_once("..") {
        (a, b, false)
    } else {
        return Err(bad());
    };
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    let end = if inclusive { b + 1 } else { b };
    if end <= a {
        return Err(format!("the seed range {s:?} is empty"));
    }
    Ok(a..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_parse_exclusive_and_inclusive() {
        assert_eq!(parse_seeds("1..4"), Ok(1..4));
        assert_eq!(parse_seeds("1..=4"), Ok(1..5));
        assert!(parse_seeds("4..4").is_err());
        assert!(parse_seeds("x..4").is_err());
        assert!(parse_seeds("7").is_err());
    }
}
