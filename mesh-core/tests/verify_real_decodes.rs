//! The comparison and the sequential test on real greedy decodes of SmolLM2-135M-Instruct from
//! llama.cpp (`verify_smollm2_decodes.json`, recorded once from real `llama-server`s; see its
//! `about`): honest copies are never accused, cheaper quants are caught.

use mesh_core::status::payload::VerifyVerdict;
use mesh_core::verify::{
    Candidate, CompareConfig, Comparison, Decode, DecodedToken, DivergenceKind, LikelihoodModel,
    Sprt, SprtConfig, compare_text,
};
use serde_json::Value;

struct Case {
    reference: Decode,
    answers: Value,
}

fn bytes(piece: &Value) -> Vec<u8> {
    match piece {
        Value::String(s) => s.as_bytes().to_vec(),
        // Partial UTF-8 pieces are stored as byte lists.
        Value::Array(b) => b.iter().map(|x| x.as_u64().unwrap() as u8).collect(),
        other => panic!("piece {other}"),
    }
}

fn cases() -> Vec<Case> {
    let doc: Value =
        serde_json::from_str(include_str!("verify_smollm2_decodes.json")).expect("fixture");
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let tokens = c["reference_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| DecodedToken {
                    id: t[0].as_u64().unwrap() as u32,
                    bytes: bytes(&t[1]),
                    logprob: t[2].as_f64(),
                    top: t[3]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|k| Candidate {
                            id: k[0].as_u64().unwrap() as u32,
                            bytes: bytes(&k[1]),
                            logprob: k[2].as_f64(),
                        })
                        .collect(),
                })
                .collect();
            Case {
                reference: Decode {
                    text: c["reference_text"].as_str().unwrap().into(),
                    tokens,
                },
                answers: c.clone(),
            }
        })
        .collect()
}

fn comparisons(peer: &str) -> Vec<Comparison> {
    cases()
        .iter()
        .map(|c| {
            let answer = c.answers[peer].as_str().unwrap();
            compare_text(&c.reference, answer, &CompareConfig::default())
        })
        .collect()
}

/// Feeds the comparisons in order to fresh SPRT tests; returns each decision and after how
/// many probes of its test it came.
fn decisions(comparisons: &[Comparison]) -> Vec<(VerifyVerdict, u32)> {
    eprintln!(
        "[agreed, near-tie, genuine, unjudged] = {:?}; divergences at {:?}",
        kinds(comparisons),
        comparisons
            .iter()
            .map(|c| c.divergence.map(|d| d.position))
            .collect::<Vec<_>>()
    );
    let (model, cfg) = (LikelihoodModel::CROSS_BACKEND, SprtConfig::default());
    let mut test = Sprt::default();
    let mut out = Vec::new();
    for c in comparisons {
        if let Some(v) = test.observe(c, model.evidence(c), &cfg) {
            out.push((v, test.probes));
            test = Sprt::default();
        }
    }
    eprintln!("decisions {out:?}");
    out
}

fn kinds(comparisons: &[Comparison]) -> [usize; 4] {
    let mut k = [0; 4];
    for c in comparisons {
        k[match c.divergence.map(|d| d.kind) {
            None => 0,
            Some(DivergenceKind::NearTie) => 1,
            Some(DivergenceKind::Genuine) => 2,
            Some(DivergenceKind::Unjudged) => 3,
        }] += 1;
    }
    k
}

#[test]
fn the_same_quant_at_another_thread_count_agrees_on_every_token() {
    let c = comparisons("honest_other_threads");
    assert_eq!(kinds(&c), [16, 0, 0, 0]);
    assert!(c.iter().all(|c| c.compared_tokens == 32));
    assert!(
        decisions(&c)
            .iter()
            .all(|d| *d == (VerifyVerdict::Match, 2))
    );
}

#[test]
fn a_numerically_perturbed_honest_copy_diverges_only_on_near_ties_and_is_never_accused() {
    let c = comparisons("q8_0_requant");
    let [agreed, near_ties, genuine, _] = kinds(&c);
    // A naive "first 32 tokens must be equal" rule would flag every one of these divergences.
    assert!(near_ties >= 6, "{near_ties} near-ties, {agreed} agreements");
    assert_eq!(genuine, 0);
    let d = decisions(&c);
    assert!(d.iter().all(|(v, _)| *v == VerifyVerdict::Match), "{d:?}");
    assert!(!d.is_empty());
}

#[test]
fn a_q4_0_copy_served_for_q4_1_is_caught_within_a_few_probes() {
    let c = comparisons("q4_0");
    let [_, _, genuine, _] = kinds(&c);
    assert!(genuine >= 6, "{:?}", kinds(&c));
    let d = decisions(&c);
    assert!(!d.is_empty());
    assert!(
        d.iter().all(|(v, _)| *v == VerifyVerdict::Mismatch),
        "{d:?}"
    );
    assert!(d.iter().all(|(_, probes)| *probes <= 5), "{d:?}");
}

#[test]
fn a_q2_k_copy_is_caught_as_fast() {
    let d = decisions(&comparisons("q2_k"));
    assert!(d.len() >= 3, "{d:?}");
    assert!(
        d.iter()
            .all(|(v, probes)| *v == VerifyVerdict::Mismatch && *probes <= 4),
        "{d:?}"
    );
}
