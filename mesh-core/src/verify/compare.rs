//! Greedy decodes, fingerprints, and the tolerant comparison of two decodes of the same probe.
//!
//! Two honest servers decode the same greedy text until their logits disagree on a near-tie; from
//! there on each continues from different text, so comparing further says nothing. The
//! comparison therefore stops at the **first divergence** and classifies it:
//! - a **near-tie** when the other side's token is among the reference's top `near_tie_rank`
//!   candidates there and (when the reference reports logprobs) within `near_tie_max_gap` nats
//!   of the reference's own choice: floating-point noise between backends flips exactly these;
//! - **genuine** when the reference gave that token no real chance: different weights did;
//! - **unjudged** when there is nothing to judge it by (no candidates reported, or one side
//!   simply ended).
//!
//! Calibrated on SmolLM2-135M (llama.cpp, 80 random prompts, Q4_1 reference, 32-token window,
//! top-5 with a 1-nat gap): a Q8_0 requantisation — a numerically perturbed copy, a harsher
//! stand-in for another backend — diverged in 65 of 80 decodes, every time on a near-tie (largest
//! gap 0.6 nats); a Q4_0 copy diverged genuinely in 46 of 80, almost all at token 0; Q2_K in 60.

use crate::peer::Fingerprint;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How many leading token ids (and candidate lists) a fingerprint keeps.
pub const FINGERPRINT_TOKENS: usize = 32;

/// One entry of a position's candidate list (llama-server's `top_logprobs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub id: u32,
    /// The token's bytes (llama-server's `bytes`: exact even for partial UTF-8).
    pub bytes: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprob: Option<f64>,
}

/// One generated token, with the candidates the server considered there (best first) when the
/// request asked for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodedToken {
    pub id: u32,
    pub bytes: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprob: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<Candidate>,
}

/// A probe's answer as the shell read it: the content text, and per token the id and
/// candidates when the request carried `top_logprobs` (empty otherwise). A stream that broke off
/// is a failed probe, not a short decode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Decode {
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<DecodedToken>,
}

impl Decode {
    pub fn text_only(text: impl Into<String>) -> Self {
        Decode {
            text: text.into(),
            tokens: Vec::new(),
        }
    }

    /// The model-identity fingerprint of this decode (SPEC §7): hex SHA-256 of the text, the
    /// first [`FINGERPRINT_TOKENS`] ids, and their candidate ids when any were reported.
    pub fn fingerprint(&self) -> Fingerprint {
        let head = &self.tokens[..self.tokens.len().min(FINGERPRINT_TOKENS)];
        let top_k = if head.iter().any(|t| !t.top.is_empty()) {
            head.iter()
                .map(|t| t.top.iter().map(|c| c.id).collect())
                .collect()
        } else {
            Vec::new()
        };
        Fingerprint {
            output_hash: text_hash(&self.text),
            token_ids: head.iter().map(|t| t.id).collect(),
            top_k,
        }
    }
}

/// Hex SHA-256 of a decoded text.
pub fn text_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CompareConfig {
    /// Compare at most this many leading tokens: the stable, model-identifying part.
    pub window: u32,
    /// A divergent token among the reference's first `near_tie_rank` candidates may be a
    /// near-tie.
    pub near_tie_rank: u32,
    /// …if, when logprobs are known, it is within this many nats of the reference's choice.
    pub near_tie_max_gap: f64,
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig {
            window: 32,
            near_tie_rank: 5,
            // The harshest honest-like perturbation measured flipped tokens 0.6 nats apart;
            // a cheaper quant's flips are mostly wider (median ~1.2 nats).
            near_tie_max_gap: 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DivergenceKind {
    NearTie,
    Genuine,
    Unjudged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// Token position of the first divergence (= tokens that agreed before it).
    pub position: u32,
    pub kind: DivergenceKind,
}

/// The result of comparing two decodes of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comparison {
    /// Positions compared: the agreed ones plus the divergent one, at most the window.
    pub compared_tokens: u32,
    /// Of those, how many agreed; a near-tie counts as agreement.
    pub agreed_tokens: u32,
    /// `None`: the decodes agreed on every compared token.
    pub divergence: Option<Divergence>,
}

impl Comparison {
    /// Nothing comparable: no evidence either way.
    pub const EMPTY: Comparison = Comparison {
        compared_tokens: 0,
        agreed_tokens: 0,
        divergence: None,
    };

    fn agreed(n: usize) -> Self {
        let n = n as u32;
        Comparison {
            compared_tokens: n,
            agreed_tokens: n,
            divergence: None,
        }
    }

    fn diverged(position: usize, kind: DivergenceKind) -> Self {
        let position = position as u32;
        Comparison {
            compared_tokens: position + 1,
            agreed_tokens: position + u32::from(kind == DivergenceKind::NearTie),
            divergence: Some(Divergence { position, kind }),
        }
    }

    /// Agreed ÷ compared; 1.0 when nothing was compared.
    pub fn agreement(&self) -> f64 {
        if self.compared_tokens == 0 {
            1.0
        } else {
            f64::from(self.agreed_tokens) / f64::from(self.compared_tokens)
        }
    }
}

impl CompareConfig {
    fn is_near_tie(&self, chosen: &DecodedToken, candidate: &Candidate) -> bool {
        match (chosen.logprob, candidate.logprob) {
            (Some(best), Some(other)) => best - other <= self.near_tie_max_gap,
            _ => true,
        }
    }

    fn ranked<'a>(&self, top: &'a [Candidate]) -> &'a [Candidate] {
        &top[..top.len().min(self.near_tie_rank as usize)]
    }
}

/// Compares a peer's answer text against a reference decode that carries tokens (and
/// candidates) — the audit's ground truth from a server the verifier trusts. The peer side is
/// text only, because the probe sent to the peer must not ask for logprobs.
///
/// Works on bytes, so a peer that tokenised the same text differently still agrees; a divergence
/// is attributed to the reference position whose candidate explains the peer's bytes (a longer
/// or different token a few positions back), else to the position holding the first differing
/// byte.
pub fn compare_text(reference: &Decode, peer_text: &str, cfg: &CompareConfig) -> Comparison {
    let n = reference.tokens.len().min(cfg.window as usize);
    if n == 0 {
        return Comparison::EMPTY;
    }
    let peer = peer_text.as_bytes();
    let mut starts = Vec::with_capacity(n + 1);
    let mut expected = Vec::new();
    for t in &reference.tokens[..n] {
        starts.push(expected.len());
        expected.extend_from_slice(&t.bytes);
    }
    starts.push(expected.len());
    let first_diff = expected
        .iter()
        .zip(peer)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(peer.len()));
    if first_diff == expected.len() {
        // Every compared reference token is in the peer's text. If the reference stopped
        // (EOS) inside the window while the peer went on, that stop is an unjudged divergence.
        return if n < cfg.window as usize && n == reference.tokens.len() && peer.len() > first_diff
        {
            Comparison::diverged(n, DivergenceKind::Unjudged)
        } else {
            Comparison::agreed(n)
        };
    }
    // The reference token holding the first differing byte.
    let at = starts.partition_point(|&s| s <= first_diff) - 1;
    if first_diff == peer.len() {
        return Comparison::diverged(at, DivergenceKind::Unjudged);
    }
    // Could the peer have picked a near-tie candidate at `at` or a little earlier (a longer
    // token that swallowed the next reference tokens)? It must match the peer's bytes from that
    // position up to the first differing byte — through it, or ending right before it (a
    // shorter token, after which the peer went on from different context).
    const LOOK_BACK: usize = 8;
    let mut any_candidates = false;
    for k in (at.saturating_sub(LOOK_BACK)..=at).rev() {
        let chosen = &reference.tokens[k];
        any_candidates |= !chosen.top.is_empty();
        let from = &peer[starts[k]..];
        let explains = cfg.ranked(&chosen.top).iter().any(|c| {
            !c.bytes.is_empty()
                && c.id != chosen.id
                && starts[k] + c.bytes.len() >= first_diff
                && from.starts_with(&c.bytes)
                && cfg.is_near_tie(chosen, c)
        });
        if explains {
            return Comparison::diverged(k, DivergenceKind::NearTie);
        }
    }
    let kind = if any_candidates {
        DivergenceKind::Genuine
    } else {
        DivergenceKind::Unjudged
    };
    Comparison::diverged(at, kind)
}

/// Compares two fingerprints (ids, and the reference's candidate ids where known) of the same
/// fixed probe. A divergent id among the reference's candidates is a near-tie; fingerprints
/// carry no logprobs, so rank is the only tolerance. The peer's own candidate lists are never
/// consulted: a cheat could write any ids there. Without ids on either side only equal hashes
/// say anything.
pub fn compare_fingerprints(
    reference: &Fingerprint,
    peer: &Fingerprint,
    cfg: &CompareConfig,
) -> Comparison {
    let window = (cfg.window as usize).min(FINGERPRINT_TOKENS);
    if reference.token_ids.is_empty() || peer.token_ids.is_empty() {
        return if reference.output_hash == peer.output_hash {
            // Identical text, so identical tokens: as far as either side's ids go, else the
            // whole window.
            let known = reference.token_ids.len().max(peer.token_ids.len());
            Comparison::agreed(if known == 0 {
                window
            } else {
                known.min(window)
            })
        } else {
            Comparison::EMPTY
        };
    }
    let n = reference.token_ids.len().min(window);
    for i in 0..n {
        let r = reference.token_ids[i];
        let Some(&p) = peer.token_ids.get(i) else {
            return Comparison::diverged(i, DivergenceKind::Unjudged);
        };
        if p == r {
            continue;
        }
        let kind = match reference.top_k.get(i).filter(|c| !c.is_empty()) {
            None => DivergenceKind::Unjudged,
            Some(top) if top.iter().take(cfg.near_tie_rank as usize).any(|&c| c == p) => {
                DivergenceKind::NearTie
            }
            Some(_) => DivergenceKind::Genuine,
        };
        return Comparison::diverged(i, kind);
    }
    if n < window && peer.token_ids.len() > n {
        Comparison::diverged(n, DivergenceKind::Unjudged)
    } else {
        Comparison::agreed(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reference token: id, text, and candidates `(id, text, logprob)` best first; the chosen
    /// token's own logprob is the first candidate's.
    fn tok(id: u32, text: &str, top: &[(u32, &str, f64)]) -> DecodedToken {
        DecodedToken {
            id,
            bytes: text.as_bytes().to_vec(),
            logprob: top.first().map(|c| c.2),
            top: top
                .iter()
                .map(|&(id, t, lp)| Candidate {
                    id,
                    bytes: t.as_bytes().to_vec(),
                    logprob: Some(lp),
                })
                .collect(),
        }
    }

    fn reference() -> Decode {
        let tokens = vec![
            tok(
                1,
                "A",
                &[(1, "A", -0.7), (2, "The", -0.9), (3, "When", -4.6)],
            ),
            tok(
                4,
                " rainbow",
                &[(4, " rainbow", -0.01), (5, " Rainbow", -6.3)],
            ),
            tok(
                6,
                " is",
                &[(6, " is", -0.2), (7, ",", -2.6), (8, " forms", -3.0)],
            ),
            tok(9, " a", &[(9, " a", -0.8), (10, " formed", -1.3)]),
            tok(11, " band", &[(11, " band", -0.5), (12, " bow", -0.6)]),
        ];
        Decode {
            text: "A rainbow is a band".into(),
            tokens,
        }
    }

    fn cfg(window: u32) -> CompareConfig {
        CompareConfig {
            window,
            ..CompareConfig::default()
        }
    }

    #[test]
    fn identical_text_agrees_on_the_whole_window() {
        let c = compare_text(&reference(), "A rainbow is a band of colours", &cfg(5));
        assert_eq!(c, Comparison::agreed(5));
        assert_eq!(c.agreement(), 1.0);
        // The window bounds the comparison.
        assert_eq!(
            compare_text(&reference(), "A rainbow is", &cfg(3)),
            Comparison::agreed(3)
        );
    }

    #[test]
    fn a_second_best_token_is_a_near_tie_and_stops_the_comparison() {
        // "The" instead of "A" at position 0: 0.2 nats apart.
        let c = compare_text(&reference(), "The rainbow is something else", &cfg(5));
        assert_eq!(c, Comparison::diverged(0, DivergenceKind::NearTie));
        assert_eq!((c.compared_tokens, c.agreed_tokens), (1, 1));
        let c = compare_text(&reference(), "A rainbow is a bow of light", &cfg(5));
        assert_eq!(c.divergence.unwrap().position, 4);
        assert_eq!(c.divergence.unwrap().kind, DivergenceKind::NearTie);
    }

    #[test]
    fn a_token_the_reference_gave_no_chance_is_genuine() {
        let c = compare_text(&reference(), "I'm sorry, I can't help", &cfg(5));
        assert_eq!(c, Comparison::diverged(0, DivergenceKind::Genuine));
        assert_eq!(c.agreement(), 0.0);
        // In the candidates but far behind (3.9 nats): genuine, not a near-tie.
        let c = compare_text(&reference(), "When it rains", &cfg(5));
        assert_eq!(c.divergence.unwrap().kind, DivergenceKind::Genuine);
        // Beyond the rank limit: genuine even with a small gap.
        let narrow = CompareConfig {
            near_tie_rank: 1,
            ..cfg(5)
        };
        let c = compare_text(&reference(), "The rainbow", &narrow);
        assert_eq!(c.divergence.unwrap().kind, DivergenceKind::Genuine);
    }

    #[test]
    fn a_longer_near_tie_token_is_attributed_to_its_own_position() {
        // The peer chose " formed" (a near-tie of " a" at position 3); its bytes share nothing
        // with " a" beyond the space, so the first differing byte lies inside position 3.
        let c = compare_text(&reference(), "A rainbow is formed when", &cfg(5));
        assert_eq!(c, Comparison::diverged(3, DivergenceKind::NearTie));
        // A candidate that extends the reference's token (" bow" vs " b|and") is found by
        // looking back from the byte where the texts part.
        let mut r = reference();
        r.tokens[4] = tok(11, " b", &[(11, " b", -0.5), (12, " bow", -0.6)]);
        r.tokens.push(tok(13, "and", &[(13, "and", -0.1)]));
        let c = compare_text(&r, "A rainbow is a bow", &cfg(6));
        assert_eq!(c, Comparison::diverged(4, DivergenceKind::NearTie));
    }

    #[test]
    fn a_shorter_near_tie_token_is_a_near_tie_whatever_follows() {
        // The reference chose " an", the peer its runner-up " a" and then went on its own way.
        let mut r = reference();
        r.tokens[3] = tok(9, " an", &[(9, " an", -0.4), (14, " a", -0.5)]);
        let c = compare_text(&r, "A rainbow is a colourful arc", &cfg(5));
        assert_eq!(c, Comparison::diverged(3, DivergenceKind::NearTie));
    }

    #[test]
    fn a_peer_that_tokenises_the_same_text_differently_still_agrees() {
        // Compared as bytes: no token boundaries on the peer side at all.
        let c = compare_text(&reference(), "A rainbow is a band", &cfg(5));
        assert_eq!(c, Comparison::agreed(5));
    }

    #[test]
    fn an_ended_side_is_unjudged() {
        let c = compare_text(&reference(), "A rainbow", &cfg(5));
        assert_eq!(c, Comparison::diverged(2, DivergenceKind::Unjudged));
        let c = compare_text(&reference(), "", &cfg(5));
        assert_eq!(c, Comparison::diverged(0, DivergenceKind::Unjudged));
        // The reference stopped at 5 tokens inside a 32-token window; the peer went on.
        let c = compare_text(&reference(), "A rainbow is a band of colours", &cfg(32));
        assert_eq!(c, Comparison::diverged(5, DivergenceKind::Unjudged));
        assert_eq!(
            compare_text(&reference(), "A rainbow is a band", &cfg(32)),
            Comparison::agreed(5)
        );
    }

    #[test]
    fn without_candidates_a_divergence_is_unjudged_and_without_tokens_nothing_is_compared() {
        let mut r = reference();
        for t in &mut r.tokens {
            t.top.clear();
        }
        let c = compare_text(&r, "I'm sorry", &cfg(5));
        assert_eq!(c, Comparison::diverged(0, DivergenceKind::Unjudged));
        assert_eq!(
            compare_text(&Decode::text_only("A rainbow"), "x", &cfg(5)),
            Comparison::EMPTY
        );
    }

    #[test]
    fn fingerprint_keeps_hash_first_32_ids_and_candidates() {
        let mut d = reference();
        let fp = d.fingerprint();
        assert_eq!(fp.output_hash, text_hash("A rainbow is a band"));
        assert_eq!(fp.output_hash.len(), 64);
        assert_eq!(fp.token_ids, [1, 4, 6, 9, 11]);
        assert_eq!(fp.top_k[0], [1, 2, 3]);
        for t in &mut d.tokens {
            t.top.clear();
        }
        d.tokens = d.tokens.iter().cycle().take(40).cloned().collect();
        let fp = d.fingerprint();
        assert_eq!(fp.token_ids.len(), FINGERPRINT_TOKENS);
        assert!(fp.top_k.is_empty());
    }

    fn fp(ids: &[u32], top: &[&[u32]]) -> Fingerprint {
        Fingerprint {
            output_hash: format!("{ids:?}"),
            token_ids: ids.to_vec(),
            top_k: top.iter().map(|c| c.to_vec()).collect(),
        }
    }

    #[test]
    fn fingerprints_compare_by_id_with_the_references_candidates_as_tolerance() {
        let r = fp(&[1, 2, 3, 4], &[&[1, 9], &[2, 8], &[3, 7], &[4, 6]]);
        assert_eq!(
            compare_fingerprints(&r, &r, &cfg(32)),
            Comparison::agreed(4)
        );
        // 7 is the reference's runner-up at position 2.
        let c = compare_fingerprints(&r, &fp(&[1, 2, 7, 0], &[]), &cfg(32));
        assert_eq!(c, Comparison::diverged(2, DivergenceKind::NearTie));
        // A peer cannot excuse a divergence by listing the reference's token among its own
        // candidates.
        let c = compare_fingerprints(&r, &fp(&[1, 2, 5], &[&[1], &[2], &[5, 3]]), &cfg(32));
        assert_eq!(c, Comparison::diverged(2, DivergenceKind::Genuine));
        let c = compare_fingerprints(&r, &fp(&[1, 5], &[]), &cfg(32));
        assert_eq!(c, Comparison::diverged(1, DivergenceKind::Genuine));
        let bare = fp(&[1, 2, 3, 4], &[]);
        let c = compare_fingerprints(&bare, &fp(&[1, 5], &[]), &cfg(32));
        assert_eq!(c, Comparison::diverged(1, DivergenceKind::Unjudged));
        let c = compare_fingerprints(&r, &fp(&[1, 2], &[]), &cfg(32));
        assert_eq!(c, Comparison::diverged(2, DivergenceKind::Unjudged));
    }

    #[test]
    fn hash_only_fingerprints_agree_only_on_equal_hashes() {
        let a = Fingerprint {
            output_hash: "aa".into(),
            token_ids: vec![],
            top_k: vec![],
        };
        let b = Fingerprint {
            output_hash: "bb".into(),
            ..a.clone()
        };
        assert_eq!(compare_fingerprints(&a, &b, &cfg(32)), Comparison::EMPTY);
        assert_eq!(
            compare_fingerprints(&a, &a, &cfg(32)),
            Comparison::agreed(32)
        );
    }
}
