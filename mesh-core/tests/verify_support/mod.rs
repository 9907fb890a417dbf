//! A toy language model and peer behaviours for verification tests, plus a harness that drives
//! an `Auditor` against one peer in virtual time.
//!
//! The toy model's greedy decode of a prompt is a deterministic word sequence; at every
//! position it reports five candidates, the runner-up 0.2 nats behind (a near-tie), the rest
//! 2–4 nats behind. Pieces are fixed-width (`" w0042"`), so text comparison sees exactly the
//! token where two answers part.
#![allow(dead_code)]

use mesh_core::peer::{Fingerprint, NativeBaseline, PeerAnnouncement, Role};
use mesh_core::status::payload::VerifyMode;
use mesh_core::verify::{
    AuditConfig, AuditOutput, AuditProbe, Auditor, Candidate, Decode, DecodedToken, Side,
};
use mesh_core::{Backend, KnownPeer, MeshView, PeerId, Timestamp};
use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64;
use std::time::Duration;

pub const MODEL: &str = "Qwen3-8B-Q4_K_M";
pub const T0: Timestamp = Timestamp::from_secs(1_767_225_600);
/// Words the toy model never generates: canned text and wrong models use them.
const FOREIGN: u32 = 50_000;

fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn prompt_seed(prompt: &str) -> u64 {
    prompt.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn word(seed: u64, position: usize, rank: usize) -> u32 {
    (mix(seed ^ mix(position as u64 * 8 + rank as u64)) % 10_000) as u32
}

pub fn piece(id: u32) -> Vec<u8> {
    let mut p = *b" w00000";
    let mut n = id;
    for digit in p[2..].iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
    p.to_vec()
}

/// The toy model's greedy decode of `prompt`, with candidates and logprobs.
pub fn reference_decode(prompt: &str, len: usize) -> Decode {
    let seed = prompt_seed(prompt);
    let tokens: Vec<DecodedToken> = (0..len)
        .map(|i| {
            let mut ids: Vec<u32> = Vec::new();
            let mut rank = 0;
            while ids.len() < 5 {
                let w = word(seed, i, rank);
                if !ids.contains(&w) {
                    ids.push(w);
                }
                rank += 1;
            }
            let logprobs = [-0.3, -0.5, -2.5, -3.2, -4.0];
            DecodedToken {
                id: ids[0],
                bytes: piece(ids[0]),
                logprob: Some(logprobs[0]),
                top: ids
                    .iter()
                    .zip(logprobs)
                    .map(|(&id, lp)| Candidate {
                        id,
                        bytes: piece(id),
                        logprob: Some(lp),
                    })
                    .collect(),
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

/// A decode made of `ids` (no candidates): what a peer's answer looks like as tokens.
/// The text of the answer `ids`.
pub fn text_of(ids: &[u32]) -> String {
    let bytes: Vec<u8> = ids.iter().flat_map(|&id| piece(id)).collect();
    String::from_utf8(bytes).expect("pieces are ASCII")
}

pub fn decode_of(ids: &[u32]) -> Decode {
    Decode {
        text: text_of(ids),
        tokens: ids
            .iter()
            .map(|&id| DecodedToken {
                id,
                bytes: piece(id),
                logprob: None,
                top: Vec::new(),
            })
            .collect(),
    }
}

/// How a simulated peer answers a probe.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// The real model on another backend: per token, a chance of flipping a near-tie (the
    /// runner-up) and a chance of a token the reference gave no chance (the model's honest
    /// worst case is 0.002); after either it goes its own way.
    Honest {
        near_tie_hazard: f64,
        genuine_hazard: f64,
    },
    /// A cheaper quant: at each token, 14% chance of a genuine divergence and 15% of a
    /// near-tie one (as Q4_0 measured against Q4_1).
    CheaperQuant,
    /// The same pre-written answer whatever the prompt.
    CannedText,
    /// Answers every prompt with its published fixed-probe output.
    ReplayFingerprint,
}

impl Behaviour {
    /// The real model on the reference's own backend: the same greedy decode.
    pub const EXACT: Behaviour = Behaviour::Honest {
        near_tie_hazard: 0.0,
        genuine_hazard: 0.0,
    };
}

/// The peer's answer, as ids, to the probe whose reference decode is `reference`.
pub fn answer_ids(b: Behaviour, reference: &Decode, rng: &mut Pcg64) -> Vec<u32> {
    let len = reference.tokens.len();
    let unit = |rng: &mut Pcg64| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let own_way = |from: usize, rng: &mut Pcg64| -> Vec<u32> {
        (from..len)
            .map(|_| (rng.next_u64() % 10_000) as u32)
            .collect()
    };
    let follow = |flip: &dyn Fn(usize, &mut Pcg64) -> Option<u32>, rng: &mut Pcg64| {
        let mut out = Vec::new();
        for (i, t) in reference.tokens.iter().enumerate() {
            if let Some(other) = flip(i, rng) {
                out.push(other);
                out.extend(own_way(i + 1, rng));
                return out;
            }
            out.push(t.id);
        }
        out
    };
    match b {
        Behaviour::Honest {
            near_tie_hazard,
            genuine_hazard,
        } => follow(
            &|i, rng| {
                let u = unit(rng);
                if u < genuine_hazard {
                    Some(FOREIGN + 1)
                } else if u < genuine_hazard + near_tie_hazard {
                    Some(reference.tokens[i].top[1].id)
                } else {
                    None
                }
            },
            rng,
        ),
        Behaviour::CheaperQuant => follow(
            &|i, rng| {
                let u = unit(rng);
                if u < 0.14 {
                    Some(FOREIGN + 2)
                } else if u < 0.29 {
                    Some(reference.tokens[i].top[1].id)
                } else {
                    None
                }
            },
            rng,
        ),
        Behaviour::CannedText => (0..len as u32).map(|i| FOREIGN + 10 + i).collect(),
        Behaviour::ReplayFingerprint => {
            reference_decode(mesh_core::verify::FIXED_PROBE_PROMPT, len)
                .tokens
                .iter()
                .map(|t| t.id)
                .collect()
        }
    }
}

pub fn peer_id(n: u8) -> PeerId {
    PeerId([n; 32])
}

pub fn known(a: PeerAnnouncement) -> KnownPeer {
    KnownPeer {
        announcement: a,
        rtt_ms: Some(20),
        first_seen: T0,
        last_fresh: T0,
    }
}

pub fn host(n: u8, models: &[&str]) -> PeerAnnouncement {
    let mut a = PeerAnnouncement::new(peer_id(n), "mesh", Role::Host { http_port: 9337 });
    a.hosted_models = models.iter().map(|m| m.to_string()).collect();
    a.serving_models = a.hosted_models.clone();
    a
}

/// The fixed-probe fingerprint an honest peer publishes with its baseline.
pub fn honest_fingerprint() -> Fingerprint {
    reference_decode(mesh_core::verify::FIXED_PROBE_PROMPT, 48).fingerprint()
}

pub fn with_fingerprint(mut a: PeerAnnouncement, fp: Fingerprint) -> PeerAnnouncement {
    a.native_baselines.push(NativeBaseline {
        model: MODEL.into(),
        native_tps_p50: 40.0,
        native_ttft_ms_p50: 60.0,
        measured_at_unix_secs: T0.as_unix_secs(),
        samples: 3,
        backend: Backend::Cuda,
        fingerprint: Some(fp),
    });
    a
}

/// An entry (peer 1) auditing peer 2. `entry_serves` puts `MODEL` on the entry too.
pub struct Harness {
    pub auditor: Auditor,
    pub view: MeshView,
    pub now: Timestamp,
    pub behaviour: Behaviour,
    pub rng: Pcg64,
}

impl Harness {
    pub fn new(config: AuditConfig, entry_serves: bool, peer: PeerAnnouncement, seed: u64) -> Self {
        let entry = host(1, if entry_serves { &[MODEL] } else { &[] });
        let view = MeshView::new(peer_id(1), vec![known(entry), known(peer)]);
        Harness {
            auditor: Auditor::new(peer_id(1), config, Pcg64::seed_from_u64(seed), T0).unwrap(),
            view,
            now: T0,
            behaviour: Behaviour::EXACT,
            rng: Pcg64::seed_from_u64(seed ^ 0x5eed),
        }
    }

    pub fn drain(&mut self) -> Vec<AuditOutput> {
        std::iter::from_fn(|| self.auditor.poll_output()).collect()
    }

    /// Jumps to the auditor's next timeout, runs it, answers every probe it emits at once, and
    /// returns everything it said.
    pub fn step(&mut self) -> Vec<AuditOutput> {
        self.now = self
            .auditor
            .poll_timeout()
            .expect("an auditor always has a next audit");
        self.auditor.handle_timeout(&self.view, self.now);
        let mut all = Vec::new();
        let mut pending = self.drain();
        while !pending.is_empty() {
            for o in pending {
                match &o {
                    AuditOutput::RunOnOwnServer { audit, probe, .. } => {
                        let own = reference_decode(probe.prompt.as_str(), 48);
                        self.auditor
                            .handle_answer(*audit, Side::Own, Ok(own), self.now);
                    }
                    AuditOutput::SendToPeer { audit, probe, .. } => {
                        let answer = self.peer_answer(probe);
                        self.auditor
                            .handle_answer(*audit, Side::Peer, Ok(answer), self.now);
                    }
                    _ => {}
                }
                all.push(o);
            }
            pending = self.drain();
        }
        all
    }

    fn peer_answer(&mut self, probe: &AuditProbe) -> Decode {
        let reference = reference_decode(probe.prompt.as_str(), 48);
        let ids = answer_ids(self.behaviour, &reference, &mut self.rng);
        let mut d = decode_of(&ids);
        if probe.params.top_logprobs.is_none() {
            d.tokens.clear(); // an ordinary chat: text only
        }
        d
    }

    /// Steps until the auditor emits a verdict; returns it and how many probes it took.
    pub fn until_verdict(
        &mut self,
        max_steps: usize,
    ) -> Option<(mesh_core::status::payload::VerifyVerdict, usize)> {
        let mut probes = 0;
        for _ in 0..max_steps {
            for o in self.step() {
                match o {
                    AuditOutput::SendToPeer { .. } => probes += 1,
                    AuditOutput::Verdict { entry, .. } => return Some((entry.verdict, probes)),
                    _ => {}
                }
            }
        }
        None
    }
}

pub fn enforcing() -> AuditConfig {
    let mut c = AuditConfig::default();
    c.enforcement.mode = VerifyMode::Enforce;
    c
}

pub fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}
