//! False accusations, the failure mode to avoid above all (SPEC §7): honest peers on other
//! backends diverge in the tail on near-ties, and must never be accused for it.

mod verify_support;

use mesh_core::status::payload::VerifyVerdict;
use mesh_core::verify::{
    Candidate, CompareConfig, Decode, DecodedToken, DivergenceKind, LikelihoodModel, Sprt,
    SprtConfig, compare_text,
};
use proptest::prelude::*;
use rand_core::SeedableRng;
use rand_pcg::Pcg64;
use verify_support::{Behaviour, answer_ids, reference_decode, text_of};

/// Short pieces that are often prefixes of each other (" a", " an", " and"), the hard case for
/// comparing text.
const PIECES: &[&str] = &[
    " a", " an", " and", " the", " then", " b", " band", " bow", ",", ".", "s", "ing", " is",
    " it", "\n", " 1", "1", "é", " co", " colour",
];

/// One generated position: the chosen piece, and up to four alternatives with their gaps
/// (nats behind the chosen token).
fn position() -> impl Strategy<Value = (usize, Vec<(usize, f64)>)> {
    (
        0..PIECES.len(),
        prop::collection::vec((0..PIECES.len(), 0.0f64..5.0), 1..5),
    )
}

fn build_reference(positions: &[(usize, Vec<(usize, f64)>)]) -> Decode {
    let tokens: Vec<DecodedToken> = positions
        .iter()
        .map(|(chosen, alts)| {
            let mut top = vec![Candidate {
                id: *chosen as u32,
                bytes: PIECES[*chosen].as_bytes().to_vec(),
                logprob: Some(-0.2),
            }];
            for &(alt, gap) in alts {
                if top.iter().all(|c| c.id != alt as u32) {
                    top.push(Candidate {
                        id: alt as u32,
                        bytes: PIECES[alt].as_bytes().to_vec(),
                        logprob: Some(-0.2 - gap),
                    });
                }
            }
            DecodedToken {
                id: *chosen as u32,
                bytes: PIECES[*chosen].as_bytes().to_vec(),
                logprob: Some(-0.2),
                top,
            }
        })
        .collect();
    Decode {
        text: tokens
            .iter()
            .map(|t| String::from_utf8(t.bytes.clone()).unwrap())
            .collect(),
        tokens,
    }
}

/// An honest peer on another backend: the reference's text up to `at`, then a near-tie (a
/// candidate at most 0.6 nats behind — the widest flip measured on a perturbed honest copy),
/// then whatever its own decode continues with. `None` when there is no such candidate there.
fn honest_answer(reference: &Decode, at: usize, pick: usize, tail: &str) -> Option<String> {
    let prefix: Vec<u8> = reference.tokens[..at]
        .iter()
        .flat_map(|t| t.bytes.clone())
        .collect();
    let chosen = &reference.tokens[at];
    let ties: Vec<&Candidate> = chosen
        .top
        .iter()
        .filter(|c| c.id != chosen.id && chosen.logprob.unwrap() - c.logprob.unwrap() <= 0.6)
        .collect();
    let alt = ties.get(pick % ties.len().max(1))?;
    let rest: Vec<u8> = reference.tokens[at..]
        .iter()
        .flat_map(|t| t.bytes.clone())
        .collect();
    let mut answer = prefix;
    answer.extend_from_slice(&alt.bytes);
    // A different token means different text from here on: if the near-tie happened to spell
    // the start of the reference's own text, the peer's next byte is not the reference's.
    if rest.starts_with(&alt.bytes) {
        answer.push(b'~');
    }
    answer.extend_from_slice(tail.as_bytes());
    Some(String::from_utf8(answer).expect("pieces are whole UTF-8"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any number of probes, each agreeing and then flipping a near-tie at any position (or not
    /// at all), with any continuation: never a genuine divergence, never a mismatch verdict.
    #[test]
    fn honest_cross_backend_divergence_with_near_ties_is_never_accused(
        probes in prop::collection::vec(
            (
                prop::collection::vec(position(), 1..40),
                0usize..48,
                0usize..4,
                "[ a-z,.]{0,20}",
            ),
            1..30,
        ),
        window in 4u32..48,
    ) {
        let cfg = CompareConfig { window, ..CompareConfig::default() };
        let (model, sprt) = (LikelihoodModel::CROSS_BACKEND, SprtConfig::default());
        let mut test = Sprt::default();
        for (positions, at, pick, tail) in probes {
            let reference = build_reference(&positions);
            let answer = if at < positions.len() {
                honest_answer(&reference, at, pick, &tail)
            } else {
                None
            }
            .unwrap_or_else(|| reference.text.clone());
            let c = compare_text(&reference, &answer, &cfg);
            prop_assert!(
                c.divergence.is_none_or(|d| d.kind != DivergenceKind::Genuine),
                "{answer:?} vs {reference:?}: {c:?}"
            );
            let evidence = model.evidence(&c);
            prop_assert!(evidence.log_lr <= 0.0);
            match test.observe(&c, evidence, &sprt) {
                Some(VerifyVerdict::Mismatch) => prop_assert!(false, "accused: {c:?}"),
                Some(_) => test = Sprt::default(),
                None => {}
            }
        }
    }
}

/// Runs `tests` whole SPRT tests of a peer with behaviour `b` and counts the verdicts.
fn verdicts(b: Behaviour, tests: usize, seed: u64) -> [usize; 3] {
    let (model, sprt, cfg) = (
        LikelihoodModel::CROSS_BACKEND,
        SprtConfig::default(),
        CompareConfig::default(),
    );
    let mut rng = Pcg64::seed_from_u64(seed);
    let mut counts = [0; 3];
    let mut probe = 0u64;
    for _ in 0..tests {
        let mut test = Sprt::default();
        let verdict = loop {
            probe += 1;
            let prompt = format!("probe {seed} {probe}");
            // The window (32) plus the token after it is all a comparison reads.
            let reference = reference_decode(&prompt, 33);
            let answer = text_of(&answer_ids(b, &reference, &mut rng));
            let c = compare_text(&reference, &answer, &cfg);
            if let Some(v) = test.observe(&c, model.evidence(&c), &sprt) {
                break v;
            }
        };
        counts[match verdict {
            VerifyVerdict::Match => 0,
            VerifyVerdict::Mismatch => 1,
            VerifyVerdict::Inconclusive => 2,
        }] += 1;
    }
    counts
}

/// Honest peers with everything that can go wrong at once: a near-tie flip every 20 tokens (a
/// naive 32-token prefix rule would flag 80% of their probes) and genuine-looking divergences
/// at the rate the model assumes as the honest worst case (1 in 500 tokens). The measured
/// false-accusation rate stays under `alpha`.
#[test]
fn false_accusation_rate_of_honest_peers_is_under_alpha() {
    let tests = 10_000;
    let [matched, mismatched, inconclusive] = verdicts(
        Behaviour::Honest {
            near_tie_hazard: 0.05,
            genuine_hazard: 0.002,
        },
        tests,
        1,
    );
    let rate = mismatched as f64 / tests as f64;
    eprintln!("honest: {matched} match, {mismatched} mismatch, {inconclusive} inconclusive");
    assert!(
        rate <= SprtConfig::default().alpha,
        "false accusation rate {rate}"
    );
    assert!(matched as f64 >= 0.99 * tests as f64);

    let [matched, mismatched, _] = verdicts(
        Behaviour::Honest {
            near_tie_hazard: 0.05,
            genuine_hazard: 0.0,
        },
        2_000,
        2,
    );
    assert_eq!(mismatched, 0, "near-ties alone never accuse");
    assert_eq!(matched, 2_000);
}

/// The same machinery against the cheats it exists for: the miss rate stays under `beta`.
#[test]
fn cheats_are_missed_at_under_beta() {
    for b in [Behaviour::CheaperQuant, Behaviour::CannedText] {
        let tests = 2_000;
        let [matched, mismatched, inconclusive] = verdicts(b, tests, 3);
        eprintln!("{b:?}: {matched} match, {mismatched} mismatch, {inconclusive} inconclusive");
        assert!(
            matched as f64 <= SprtConfig::default().beta * tests as f64,
            "{b:?}"
        );
        assert!(mismatched as f64 >= 0.98 * tests as f64, "{b:?}");
    }
}
