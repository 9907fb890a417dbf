//! From comparisons to verdicts: a per-probe likelihood ratio and Wald's sequential probability
//! ratio test (SPRT) over the probes of one (peer, model).
//!
//! **Per-probe likelihood.** A comparison is read as a token-by-token race between "agree" and
//! "genuine divergence" (a token the reference gave no real chance). Near-ties and unjudged
//! divergences end the race without a winner — censored, *no evidence* — so however often an
//! honest peer's backend flips near-ties, and wherever, it can only ever gain trust. With a
//! per-token genuine-divergence hazard `h0` for an honest peer and `h1` for a dishonest one:
//!
//! - genuine divergence after `p` agreeing tokens: `ln(h1/h0) + p·ln((1-h1)/(1-h0))`
//! - agreement on `p` tokens, then a near-tie, an unjudged divergence or the window's end:
//!   `p·ln((1-h1)/(1-h0))` (negative: evidence of honesty)
//!
//! Calibration (SmolLM2-135M on llama.cpp, 32-token window, see `compare`): honest copies never
//! diverged genuinely in ~1,000 compared tokens (`h0 = 0.002` is a deliberately pessimistic
//! 1-in-500); the least divergent cheat measured, Q4_0 served for Q4_1, diverged genuinely at
//! 0.136 per token, Q2_K at 0.23 (`h1 = 0.1`, below both, so real cheats are caught faster than
//! the model assumes). With these, one genuine divergence at token 0 weighs `ln 50 = 3.9`; a
//! clean 32-token agreement `-3.3`.
//!
//! **SPRT.** Log-likelihood ratios add up per (peer, model). Crossing `ln((1-β)/α)` decides
//! *mismatch*, crossing `ln(β/(1-α))` decides *match*; `max_probes` without either is
//! *inconclusive*. Then the test starts afresh. `α` bounds the chance that a test of an honest
//! peer ends in mismatch (Wald: at most `α/(1-β)`), `β` the chance a cheat's test ends in match.
//! Defaults `α = 1e-3`, `β = 0.01`: a mismatch needs two genuine divergences within the first few
//! tokens of one test — what Q4_0 does in about half its probes, and what a canned answer or a
//! replayed fingerprint does in every probe.
//!
//! **Same-server consistency.** When the verifier compares a peer's live answer to the fixed
//! probe with the fingerprint that same peer published from its own server, an honest peer
//! differs at most by batching noise, i.e. near-ties: [`LikelihoodModel::SAME_SERVER`] sets `h0`
//! to 1 in 20,000, so one genuine divergence at token 0 decides mismatch on its own.

use super::compare::{Comparison, DivergenceKind};
use crate::status::payload::VerifyVerdict;
use serde::{Deserialize, Serialize};

/// Per-token hazards of a genuine divergence under "honest" and "dishonest".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LikelihoodModel {
    pub honest_hazard: f64,
    pub cheat_hazard: f64,
}

impl LikelihoodModel {
    /// A peer against a reference on another machine, possibly another backend.
    pub const CROSS_BACKEND: LikelihoodModel = LikelihoodModel {
        honest_hazard: 0.002,
        cheat_hazard: 0.1,
    };
    /// A peer's live answer against its own published fingerprint.
    pub const SAME_SERVER: LikelihoodModel = LikelihoodModel {
        honest_hazard: 0.00005,
        cheat_hazard: 0.1,
    };

    /// The probe's log-likelihood ratio, dishonest over honest (positive: evidence of cheating).
    pub fn evidence(&self, c: &Comparison) -> Evidence {
        let per_agreed = ((1.0 - self.cheat_hazard) / (1.0 - self.honest_hazard)).ln();
        let log_lr = match c.divergence {
            Some(d) if d.kind == DivergenceKind::Genuine => {
                (self.cheat_hazard / self.honest_hazard).ln() + f64::from(d.position) * per_agreed
            }
            Some(d) => f64::from(d.position) * per_agreed,
            None => f64::from(c.compared_tokens) * per_agreed,
        };
        Evidence { log_lr }
    }
}

/// What one probe says: its log-likelihood ratio (dishonest ÷ honest).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub log_lr: f64,
}

impl Evidence {
    /// Which way this probe alone leans; `Inconclusive` when it weighs nothing.
    pub fn leaning(&self) -> VerifyVerdict {
        if self.log_lr > 0.0 {
            VerifyVerdict::Mismatch
        } else if self.log_lr < 0.0 {
            VerifyVerdict::Match
        } else {
            VerifyVerdict::Inconclusive
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SprtConfig {
    /// Chance that a test of an honest peer ends in mismatch (false accusation).
    pub alpha: f64,
    /// Chance that a test of a dishonest peer ends in match (miss).
    pub beta: f64,
    /// A test without a decision after this many probes ends inconclusive.
    pub max_probes: u32,
}

impl Default for SprtConfig {
    fn default() -> Self {
        SprtConfig {
            alpha: 1e-3,
            beta: 0.01,
            max_probes: 32,
        }
    }
}

impl SprtConfig {
    /// Mismatch at or above this summed log-likelihood ratio.
    pub fn upper(&self) -> f64 {
        ((1.0 - self.beta) / self.alpha).ln()
    }

    /// Match at or below this one.
    pub fn lower(&self) -> f64 {
        (self.beta / (1.0 - self.alpha)).ln()
    }
}

/// One running test: the evidence summed since the last decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sprt {
    pub log_lr: f64,
    pub probes: u32,
    pub compared_tokens: u32,
    pub agreed_tokens: u32,
}

impl Sprt {
    /// Adds one probe; `Some` when the test decides (the caller then starts a new one).
    pub fn observe(
        &mut self,
        comparison: &Comparison,
        evidence: Evidence,
        cfg: &SprtConfig,
    ) -> Option<VerifyVerdict> {
        self.log_lr += evidence.log_lr;
        self.probes += 1;
        self.compared_tokens += comparison.compared_tokens;
        self.agreed_tokens += comparison.agreed_tokens;
        if self.log_lr >= cfg.upper() {
            Some(VerifyVerdict::Mismatch)
        } else if self.log_lr <= cfg.lower() {
            Some(VerifyVerdict::Match)
        } else if self.probes >= cfg.max_probes {
            Some(VerifyVerdict::Inconclusive)
        } else {
            None
        }
    }

    /// Agreed ÷ compared tokens over the test's probes; 1.0 before any token was compared.
    pub fn agreement(&self) -> f64 {
        if self.compared_tokens == 0 {
            1.0
        } else {
            f64::from(self.agreed_tokens) / f64::from(self.compared_tokens)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::compare::Divergence;

    fn diverged(position: u32, kind: DivergenceKind) -> Comparison {
        Comparison {
            compared_tokens: position + 1,
            agreed_tokens: position + u32::from(kind == DivergenceKind::NearTie),
            divergence: Some(Divergence { position, kind }),
        }
    }

    fn agreed(n: u32) -> Comparison {
        Comparison {
            compared_tokens: n,
            agreed_tokens: n,
            divergence: None,
        }
    }

    #[test]
    fn near_ties_anywhere_are_never_evidence_of_cheating() {
        let m = LikelihoodModel::CROSS_BACKEND;
        for p in 0..32 {
            for kind in [DivergenceKind::NearTie, DivergenceKind::Unjudged] {
                assert!(
                    m.evidence(&diverged(p, kind)).log_lr <= 0.0,
                    "{kind:?} at {p}"
                );
            }
        }
        assert_eq!(
            m.evidence(&diverged(0, DivergenceKind::NearTie)).leaning(),
            VerifyVerdict::Inconclusive
        );
        assert_eq!(
            m.evidence(&Comparison::EMPTY).leaning(),
            VerifyVerdict::Inconclusive
        );
    }

    #[test]
    fn weights_follow_the_documented_calibration() {
        let m = LikelihoodModel::CROSS_BACKEND;
        let genuine_at_0 = m.evidence(&diverged(0, DivergenceKind::Genuine)).log_lr;
        assert!((genuine_at_0 - 50f64.ln()).abs() < 1e-12);
        let clean = m.evidence(&agreed(32)).log_lr;
        assert!((-3.4..-3.2).contains(&clean), "{clean}");
        // Early genuine divergences weigh more than late ones; late ones weigh nothing.
        let late = m.evidence(&diverged(30, DivergenceKind::Genuine)).log_lr;
        assert!(late < genuine_at_0 && late > 0.0);
        let same = LikelihoodModel::SAME_SERVER.evidence(&diverged(0, DivergenceKind::Genuine));
        assert!(same.log_lr >= SprtConfig::default().upper());
    }

    #[test]
    fn default_thresholds_come_from_alpha_and_beta() {
        let c = SprtConfig::default();
        assert!((c.upper() - (0.99f64 / 1e-3).ln()).abs() < 1e-12);
        assert!((c.lower() - (0.01f64 / 0.999).ln()).abs() < 1e-12);
    }

    #[test]
    fn two_early_genuine_divergences_decide_mismatch_two_clean_probes_decide_match() {
        let (m, cfg) = (LikelihoodModel::CROSS_BACKEND, SprtConfig::default());
        let mut t = Sprt::default();
        let g = diverged(1, DivergenceKind::Genuine);
        assert_eq!(t.observe(&g, m.evidence(&g), &cfg), None);
        assert_eq!(
            t.observe(&g, m.evidence(&g), &cfg),
            Some(VerifyVerdict::Mismatch)
        );
        assert_eq!((t.compared_tokens, t.agreed_tokens), (4, 2));
        assert_eq!(t.agreement(), 0.5);

        let mut t = Sprt::default();
        let a = agreed(32);
        assert_eq!(t.observe(&a, m.evidence(&a), &cfg), None);
        assert_eq!(
            t.observe(&a, m.evidence(&a), &cfg),
            Some(VerifyVerdict::Match)
        );
    }

    #[test]
    fn a_test_without_a_decision_ends_inconclusive_at_max_probes() {
        let (m, cfg) = (
            LikelihoodModel::CROSS_BACKEND,
            SprtConfig {
                max_probes: 3,
                ..SprtConfig::default()
            },
        );
        let mut t = Sprt::default();
        let tie = diverged(0, DivergenceKind::NearTie);
        assert_eq!(t.observe(&tie, m.evidence(&tie), &cfg), None);
        assert_eq!(t.observe(&tie, m.evidence(&tie), &cfg), None);
        assert_eq!(
            t.observe(&tie, m.evidence(&tie), &cfg),
            Some(VerifyVerdict::Inconclusive)
        );
    }
}
