//! Simulated model answers: what a peer's llama-server returns for a prompt, as token ids with
//! the top-k candidates and logprobs per position (what `/v1/chat/completions` gives with
//! `logprobs`), so that mesh-core's verification (fingerprints, the tolerant comparison, the
//! SPRT) judges real-looking decodes. Engine-independent: the discrete-event engine calls it
//! directly, the turmoil engine's simulated llama-server serves the same decodes over HTTP.
//!
//! **The toy language model.** A model is a function from (prompt, tokens so far) to five
//! candidates with fixed logprobs — the runner-up 0.2 nats behind the favourite (a near-tie),
//! the rest 2–4 nats behind. Candidates are a keyed hash of the model's identity, the prompt and
//! the prefix, so two servers that pick the same tokens keep agreeing and two that part ways
//! never meet again, as with a real model. Pieces are fixed-width (`" w04217"`), so a text
//! comparison sees exactly the token where two answers part.
//!
//! **Servers.** A greedy decode on a server follows the favourite except where its numerics flip
//! a choice. How often (per token) is a property of the weights and the backend:
//! - the advertised weights on any backend flip near-ties only — a backend's own pattern,
//!   deterministic, so the same backend reproduces the same answer exactly (SPEC §7: honest
//!   cross-backend peers diverge in the tail, on near-ties);
//! - a cheaper quantisation also diverges genuinely (a token outside the favourite's near-ties)
//!   at 14 % per token, plus 15 % near-tie flips (Q4_0 measured against Q4_1);
//! - a smaller model of the family diverges genuinely at 50 % per token (like Q2_K, or sooner);
//! - canned text ignores the prompt.
//!
//! **Behaviours** ([`Behaviour`](crate::scenario::Behaviour)) decide which server answers which
//! request: a probe-aware peer runs the advertised weights only for requests it recognises as a
//! verifier's (the fixed baseline probe, or a body carrying `seed`/`cache_prompt`), a replaying
//! peer answers the fixed probe with a stored honest answer and everything else with a smaller
//! model, and so on ([`answer`]).

use crate::scenario::Behaviour;
use mesh_core::Backend;
use mesh_core::peer::Fingerprint;
use mesh_core::verify::{Candidate, Decode, DecodedToken, FIXED_PROBE_PROMPT};

/// Candidates reported per position.
pub const TOP_K: usize = 5;
/// Logprobs of the candidates, favourite first: the runner-up is a near-tie (0.2 nats), the rest
/// are not (2.2+ nats, over mesh-core's 1.0-nat tolerance).
pub const LOGPROBS: [f64; TOP_K] = [-0.3, -0.5, -2.5, -3.2, -4.0];
/// Token ids the toy vocabulary draws candidates from.
const VOCAB: u64 = 40_000;
/// Ids at and above this are never a candidate of any model: canned text and genuinely
/// divergent choices use them.
const FOREIGN: u32 = 50_000;

/// Per-token near-tie flip rate of each backend's numerics (against the exact favourite path).
pub fn near_tie_hazard(backend: Backend) -> f64 {
    match backend {
        Backend::Cuda => 0.02,
        Backend::Metal => 0.03,
        Backend::Rocm => 0.03,
        Backend::Vulkan => 0.04,
        Backend::Cpu => 0.01,
    }
}

/// Which weights a server runs for an advertised model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Weights {
    /// The advertised GGUF.
    Advertised,
    /// A cheaper quantisation of it (Q4_0 for Q4_1, Q2_K for Q4_K_M).
    CheaperQuant,
    /// A smaller model of the same family.
    Smaller,
    /// Pre-written text, whatever the prompt.
    Canned,
}

impl Weights {
    /// Per-token (genuine, near-tie) divergence rates these weights add to a backend's own.
    fn hazards(self) -> (f64, f64) {
        match self {
            Weights::Advertised | Weights::Canned => (0.0, 0.0),
            Weights::CheaperQuant => (0.14, 0.15),
            Weights::Smaller => (0.50, 0.10),
        }
    }

    fn tag(self) -> u64 {
        match self {
            Weights::Advertised => 1,
            Weights::CheaperQuant => 2,
            Weights::Smaller => 3,
            Weights::Canned => 4,
        }
    }
}

/// A request as the peer's server sees it: the prompt text and whether the body looks like a
/// verifier's (the baseline probes carry `seed` and `cache_prompt: false`; a fresh audit probe
/// carries neither and reads like any chat).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub prompt: &'a str,
    pub max_tokens: u32,
    pub probe_shaped: bool,
}

/// The greedy decode of `prompt` for `model` by `weights` on `backend`, `len` tokens, with the
/// favourite's candidates at each position.
pub fn greedy(model: &str, weights: Weights, backend: Backend, prompt: &str, len: u32) -> Decode {
    if weights == Weights::Canned {
        return canned(len);
    }
    let model_key = fnv(model.as_bytes());
    let prompt_key = fnv(prompt.as_bytes());
    let (genuine, near) = weights.hazards();
    let flip = near_tie_hazard(backend);
    let backend_key = fnv(backend.as_str().as_bytes());
    let mut prefix = mix(model_key ^ mix(prompt_key));
    let mut tokens = Vec::with_capacity(len as usize);
    for _ in 0..len {
        let ids = candidates(model_key, prefix);
        // The backend's numerics, then the weights' own differences: deterministic per server.
        let u_backend = unit(mix(prefix ^ backend_key ^ 0x51));
        let u_weights = unit(mix(prefix ^ weights.tag().wrapping_mul(0x9e37_79b9) ^ 0xa7));
        let (id, logprob) = if u_weights < genuine {
            // A choice the advertised model gave no chance.
            (FOREIGN + (mix(prefix ^ 0xf0) % 10_000) as u32, -6.0)
        } else if u_weights < genuine + near || u_backend < flip {
            (ids[1], LOGPROBS[1])
        } else {
            (ids[0], LOGPROBS[0])
        };
        tokens.push(DecodedToken {
            id,
            bytes: piece(id),
            logprob: Some(logprob),
            top: ids
                .iter()
                .zip(LOGPROBS)
                .map(|(&id, lp)| Candidate {
                    id,
                    bytes: piece(id),
                    logprob: Some(lp),
                })
                .collect(),
        });
        prefix = mix(prefix ^ u64::from(id).wrapping_mul(0x100_0000_01b3));
    }
    Decode {
        text: tokens
            .iter()
            .map(|t| String::from_utf8_lossy(&t.bytes).into_owned())
            .collect(),
        tokens,
    }
}

/// What a peer with `behaviour` on `backend` answers to `request` for `model`.
pub fn answer(model: &str, behaviour: Behaviour, backend: Backend, request: Request) -> Decode {
    let weights = serving_weights(behaviour, request);
    if behaviour == Behaviour::ReplayFingerprint && request.prompt == FIXED_PROBE_PROMPT {
        // The stored answer of an honest server (another contributor's, copied).
        return greedy(
            model,
            Weights::Advertised,
            Backend::Cuda,
            request.prompt,
            request.max_tokens,
        );
    }
    greedy(model, weights, backend, request.prompt, request.max_tokens)
}

/// The weights a peer runs for one request.
pub fn serving_weights(behaviour: Behaviour, request: Request) -> Weights {
    let recognised = request.probe_shaped || request.prompt == FIXED_PROBE_PROMPT;
    match behaviour {
        Behaviour::Honest | Behaviour::InflateMemory | Behaviour::InflateTimings => {
            Weights::Advertised
        }
        Behaviour::CheaperQuant => Weights::CheaperQuant,
        Behaviour::SmallerModel | Behaviour::ReplayFingerprint => Weights::Smaller,
        Behaviour::CannedText => Weights::Canned,
        Behaviour::ProbeAware if recognised => Weights::Advertised,
        Behaviour::ProbeAware => Weights::CheaperQuant,
    }
}

/// Whether a peer with `behaviour` serves the advertised model to real traffic (the ones a
/// verdict of mismatch would falsely accuse).
pub fn serves_advertised_model(behaviour: Behaviour) -> bool {
    matches!(
        behaviour,
        Behaviour::Honest | Behaviour::InflateMemory | Behaviour::InflateTimings
    )
}

/// The honest fixed-probe fingerprint of `model` on `backend`: what an operator pins as
/// reference data after measuring trusted machines.
pub fn reference_fingerprint(model: &str, backend: Backend) -> Fingerprint {
    greedy(
        model,
        Weights::Advertised,
        backend,
        FIXED_PROBE_PROMPT,
        mesh_core::baseline::FIXED_PROBE_PARAMS.max_tokens,
    )
    .fingerprint()
}

fn canned(len: u32) -> Decode {
    // The same stored answer whatever the prompt: ids no model's candidates contain.
    let ids: Vec<u32> = (0..len).map(|i| FOREIGN + 20_000 + i % 97).collect();
    Decode {
        text: ids
            .iter()
            .map(|&id| String::from_utf8_lossy(&piece(id)).into_owned())
            .collect(),
        tokens: ids
            .iter()
            .map(|&id| DecodedToken {
                id,
                bytes: piece(id),
                logprob: Some(-0.1),
                top: Vec::new(),
            })
            .collect(),
    }
}

/// The five distinct candidate ids after `prefix`, favourite first.
fn candidates(model_key: u64, prefix: u64) -> [u32; TOP_K] {
    let mut ids = [0u32; TOP_K];
    let mut n = 0;
    let mut rank = 0u64;
    while n < TOP_K {
        let id = (mix(prefix ^ mix(model_key ^ rank)) % VOCAB) as u32;
        if !ids[..n].contains(&id) {
            ids[n] = id;
            n += 1;
        }
        rank += 1;
    }
    ids
}

/// A fixed-width piece: `" w04217"`.
fn piece(id: u32) -> Vec<u8> {
    format!(" w{id:05}").into_bytes()
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::verify::{CompareConfig, DivergenceKind, compare_text};

    const M: &str = "Qwen3-8B-Q4_K_M";

    fn ask(prompt: &str) -> Request<'_> {
        Request {
            prompt,
            max_tokens: 64,
            probe_shaped: false,
        }
    }

    #[test]
    fn the_same_weights_on_the_same_backend_answer_identically() {
        let a = greedy(M, Weights::Advertised, Backend::Cuda, "hello there", 64);
        let b = greedy(M, Weights::Advertised, Backend::Cuda, "hello there", 64);
        assert_eq!(a, b);
        assert_eq!(a.tokens.len(), 64);
        assert_eq!(a.tokens[0].top.len(), TOP_K);
        let other_prompt = greedy(M, Weights::Advertised, Backend::Cuda, "hello here", 64);
        assert_ne!(a.text, other_prompt.text);
    }

    #[test]
    fn honest_servers_on_other_backends_part_only_on_near_ties() {
        let cfg = CompareConfig::default();
        let mut diverged = 0;
        for i in 0..200 {
            let prompt = format!("prompt number {i}");
            let reference = greedy(M, Weights::Advertised, Backend::Metal, &prompt, 64);
            let peer = answer(M, Behaviour::Honest, Backend::Cuda, ask(&prompt));
            let c = compare_text(&reference, &peer.text, &cfg);
            if let Some(d) = c.divergence {
                diverged += 1;
                assert_eq!(d.kind, DivergenceKind::NearTie, "prompt {i}: {c:?}");
            }
        }
        // 32 tokens at ~5 % combined flips: most probes diverge somewhere in the window.
        assert!(diverged > 60, "{diverged} of 200 diverged");
    }

    #[test]
    fn cheaper_quants_and_smaller_models_diverge_genuinely_and_canned_text_at_once() {
        let cfg = CompareConfig::default();
        let genuine = |b: Behaviour| {
            (0..200)
                .filter(|i| {
                    let prompt = format!("q {i}");
                    let reference = greedy(M, Weights::Advertised, Backend::Cuda, &prompt, 64);
                    let peer = answer(M, b, Backend::Cuda, ask(&prompt));
                    compare_text(&reference, &peer.text, &cfg)
                        .divergence
                        .is_some_and(|d| d.kind == DivergenceKind::Genuine)
                })
                .count()
        };
        assert!(genuine(Behaviour::CheaperQuant) > 100);
        assert!(genuine(Behaviour::SmallerModel) > 150);
        assert!(genuine(Behaviour::ProbeAware) > 100, "a chat-shaped probe");
        assert_eq!(genuine(Behaviour::CannedText), 200);
        assert_eq!(genuine(Behaviour::InflateTimings), 0);
    }

    #[test]
    fn probe_aware_and_replaying_peers_answer_the_fixed_probe_honestly() {
        let fixed = Request {
            prompt: FIXED_PROBE_PROMPT,
            max_tokens: 128,
            probe_shaped: true,
        };
        let honest = greedy(
            M,
            Weights::Advertised,
            Backend::Cuda,
            FIXED_PROBE_PROMPT,
            128,
        );
        assert_eq!(
            answer(M, Behaviour::ProbeAware, Backend::Cuda, fixed),
            honest
        );
        assert_eq!(
            answer(M, Behaviour::ReplayFingerprint, Backend::Metal, fixed),
            honest
        );
        assert_eq!(
            reference_fingerprint(M, Backend::Cuda),
            honest.fingerprint()
        );
    }
}
