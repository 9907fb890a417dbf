//! The entry node's audit loop: which (peer, model) to probe next, with which probe, what the
//! answers mean, and the verdicts, demotions and status rows that follow.

use super::compare::{Decode, compare_fingerprints, compare_text};
use super::probe::{ProbeFailed, ProbeParams, SyntheticPrompt, chat_body, pick};
use super::sprt::{Evidence, LikelihoodModel, Sprt, SprtConfig};
use super::{CompareConfig, Comparison, ProbeCorpus};
use crate::baseline::FIXED_PROBE_PARAMS;
use crate::id::PeerId;
use crate::peer::{Fingerprint, ModelName};
use crate::status::payload::{ByModel, VerifyEntry, VerifyMode, VerifyVerdict};
use crate::time::Timestamp;
use crate::view::MeshView;
use rand_core::Rng;
use rand_pcg::Pcg64;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// What verification may do to routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforcement {
    /// `Observe` (default): verdicts are shown and logged, routing is untouched.
    pub mode: VerifyMode,
    /// In `Enforce`, this many consecutive mismatch verdicts take (peer, model) out of rotation…
    pub demote_after: u32,
    /// …for this long, or until a match verdict, whichever comes first.
    pub demote_for: Duration,
}

impl Default for Enforcement {
    fn default() -> Self {
        Enforcement {
            mode: VerifyMode::Observe,
            demote_after: 2,
            demote_for: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditConfig {
    /// Mean time between audits; each gap is drawn uniformly from ½× to 1½× so audits have no
    /// rhythm a peer could lock on to.
    pub interval: Duration,
    /// Peers announcing more in-flight requests than this are skipped this round.
    pub busy_inflight: u32,
    /// At most this many audits at once (slow models answer in minutes).
    pub max_in_flight: usize,
    /// An audit with an answer missing after this long is abandoned, with no evidence.
    pub audit_timeout: Duration,
    /// `max_tokens` of a fresh probe, drawn from this list (ordinary client values); each must
    /// cover the comparison window.
    pub max_tokens_choices: Vec<u32>,
    /// Candidates per position requested from the verifier's own server.
    pub reference_top_logprobs: u8,
    pub compare: CompareConfig,
    pub sprt: SprtConfig,
    /// Likelihoods for a fresh probe against the verifier's own server.
    pub cross_backend: LikelihoodModel,
    /// Likelihoods for a peer's fixed-probe answer against its own published fingerprint.
    pub same_server: LikelihoodModel,
    pub enforcement: Enforcement,
    pub corpus: ProbeCorpus,
    /// Operator-pinned fingerprints of the fixed probe per model (e.g. measured on trusted
    /// machines of several backends): the reference data for models this entry does not serve.
    pub references: BTreeMap<ModelName, Vec<Fingerprint>>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            interval: Duration::from_secs(60),
            busy_inflight: 2,
            max_in_flight: 2,
            audit_timeout: Duration::from_secs(300),
            max_tokens_choices: vec![128, 256],
            reference_top_logprobs: 5,
            compare: CompareConfig::default(),
            sprt: SprtConfig::default(),
            cross_backend: LikelihoodModel::CROSS_BACKEND,
            same_server: LikelihoodModel::SAME_SERVER,
            enforcement: Enforcement::default(),
            corpus: ProbeCorpus::default(),
            references: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuditConfigError {
    #[error("max_tokens_choices is empty")]
    NoMaxTokens,
    #[error("max_tokens {max_tokens} is below the comparison window of {window} tokens")]
    MaxTokensBelowWindow { max_tokens: u32, window: u32 },
    #[error("alpha {alpha} and beta {beta} must be in (0, 1) with alpha + beta < 1")]
    ErrorRates { alpha: f64, beta: f64 },
    #[error("hazards must satisfy 0 < honest < cheat < 1, got {0:?}")]
    Hazards(LikelihoodModel),
}

impl AuditConfig {
    pub fn validate(&self) -> Result<(), AuditConfigError> {
        if self.max_tokens_choices.is_empty() {
            return Err(AuditConfigError::NoMaxTokens);
        }
        if let Some(&m) = self
            .max_tokens_choices
            .iter()
            .find(|&&m| m < self.compare.window)
        {
            return Err(AuditConfigError::MaxTokensBelowWindow {
                max_tokens: m,
                window: self.compare.window,
            });
        }
        let (alpha, beta) = (self.sprt.alpha, self.sprt.beta);
        if !(alpha > 0.0 && beta > 0.0 && alpha + beta < 1.0) {
            return Err(AuditConfigError::ErrorRates { alpha, beta });
        }
        for m in [self.cross_backend, self.same_server] {
            if !(0.0 < m.honest_hazard && m.honest_hazard < m.cheat_hazard && m.cheat_hazard < 1.0)
            {
                return Err(AuditConfigError::Hazards(m));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AuditId(pub u64);

/// Which copy of an audit's probe an answer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    /// The verifier's own llama-server (ground truth).
    Own,
    /// The peer under audit, reached through the mesh like any routed chat.
    Peer,
}

/// A probe as the shell must send it: synthetic text and parameters, nothing else.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditProbe {
    pub prompt: SyntheticPrompt,
    pub params: ProbeParams,
}

impl AuditProbe {
    pub fn body(&self, model: &str) -> serde_json::Value {
        chat_body(model, &self.prompt, &self.params)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditMode {
    /// A fresh synthetic probe, run on the verifier's own server and on the peer.
    GroundTruth,
    /// The fixed probe on the peer, checked against its published fingerprint and the pinned
    /// references. Recognisable by construction: it cannot catch replay or probe-aware serving.
    PublishedFingerprint,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbandonReason {
    TimedOut,
    ProbeFailed {
        side: Side,
        reason: String,
    },
    /// The reference answer had no tokens to compare against.
    NothingToCompare,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum AuditOutput {
    /// Run `probe` against this node's own llama-server for `model`.
    RunOnOwnServer {
        audit: AuditId,
        model: ModelName,
        probe: AuditProbe,
    },
    /// Send `probe` to `peer` for `model` through the mesh, exactly like a routed chat.
    SendToPeer {
        audit: AuditId,
        peer: PeerId,
        model: ModelName,
        mode: AuditMode,
        probe: AuditProbe,
    },
    /// A test of (peer, model) decided (log it).
    Verdict {
        peer: PeerId,
        model: ModelName,
        entry: VerifyEntry,
    },
    /// (peer, model) leaves rotation until `until` (enforce mode only).
    Demoted {
        peer: PeerId,
        model: ModelName,
        until: Timestamp,
    },
    /// A match verdict ended a demotion early.
    Reinstated { peer: PeerId, model: ModelName },
    Abandoned {
        audit: AuditId,
        peer: PeerId,
        model: ModelName,
        reason: AbandonReason,
    },
}

#[derive(Debug, Clone)]
enum Plan {
    GroundTruth,
    Fingerprint {
        published: Option<Fingerprint>,
        references: Vec<Fingerprint>,
    },
}

#[derive(Debug, Clone)]
struct Audit {
    peer: PeerId,
    model: ModelName,
    plan: Plan,
    deadline: Timestamp,
    own: Option<Decode>,
    answer: Option<Decode>,
}

#[derive(Debug, Clone, Default)]
struct PairState {
    test: Sprt,
    /// Fixed-probe answers already counted in this test: a deterministic probe repeated says
    /// nothing new, so identical answers must not pile up evidence.
    seen_answers: BTreeSet<String>,
    decided: Option<VerifyEntry>,
    consecutive_mismatches: u32,
    demoted_until: Option<Timestamp>,
    last_checked: Option<Timestamp>,
}

impl PairState {
    fn suspicious(&self) -> bool {
        self.test.log_lr > 0.0 || self.consecutive_mismatches > 0
    }
}

/// The audit loop of an entry node (SPEC §7). Sans-IO: feed it the mesh view on each timeout
/// and the probe answers as they come; it emits probes to run, verdicts and demotions.
#[derive(Debug)]
pub struct Auditor {
    me: PeerId,
    config: AuditConfig,
    rng: Pcg64,
    next_audit_at: Timestamp,
    next_id: u64,
    audits: BTreeMap<AuditId, Audit>,
    pairs: BTreeMap<(PeerId, ModelName), PairState>,
    outputs: VecDeque<AuditOutput>,
}

impl Auditor {
    pub fn new(
        me: PeerId,
        config: AuditConfig,
        rng: Pcg64,
        now: Timestamp,
    ) -> Result<Self, AuditConfigError> {
        config.validate()?;
        let mut a = Auditor {
            me,
            config,
            rng,
            next_audit_at: now,
            next_id: 0,
            audits: BTreeMap::new(),
            pairs: BTreeMap::new(),
            outputs: VecDeque::new(),
        };
        a.next_audit_at = a.jittered(now);
        Ok(a)
    }

    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.audits
            .values()
            .map(|a| a.deadline)
            .chain([self.next_audit_at])
            .min()
    }

    pub fn poll_output(&mut self) -> Option<AuditOutput> {
        self.outputs.pop_front()
    }

    /// Abandons overdue audits and, when the interval is up, starts the next one.
    pub fn handle_timeout(&mut self, view: &MeshView, now: Timestamp) {
        let overdue: Vec<AuditId> = self
            .audits
            .iter()
            .filter(|(_, a)| a.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in overdue {
            self.abandon(id, AbandonReason::TimedOut);
        }
        if now >= self.next_audit_at {
            if self.audits.len() < self.config.max_in_flight {
                self.start_audit(view, now);
            }
            self.next_audit_at = self.jittered(now);
        }
    }

    /// One answer of an audit's probe. Unknown or abandoned audits are ignored.
    pub fn handle_answer(
        &mut self,
        audit: AuditId,
        side: Side,
        answer: Result<Decode, ProbeFailed>,
        now: Timestamp,
    ) {
        let Some(a) = self.audits.get_mut(&audit) else {
            return;
        };
        let answer = match answer {
            Ok(d) => d,
            Err(e) => {
                let reason = AbandonReason::ProbeFailed {
                    side,
                    reason: e.reason,
                };
                self.abandon(audit, reason);
                return;
            }
        };
        match side {
            Side::Own => a.own = Some(answer),
            Side::Peer => a.answer = Some(answer),
        }
        let complete =
            a.answer.is_some() && (a.own.is_some() || matches!(a.plan, Plan::Fingerprint { .. }));
        if complete {
            let a = self.audits.remove(&audit).expect("looked up above");
            self.evaluate(audit, a, now);
        }
    }

    /// Whether routing must skip `peer` for `model` now. Always false in observe mode.
    pub fn is_demoted(&self, peer: &PeerId, model: &str, now: Timestamp) -> bool {
        self.config.enforcement.mode == VerifyMode::Enforce
            && self
                .pairs
                .get(&(*peer, model.to_string()))
                .and_then(|p| p.demoted_until)
                .is_some_and(|until| now < until)
    }

    /// `verify_by_model` of `peer`'s status row: per model, the last decided verdict with the
    /// agreement of the test that decided it (before any decision: `inconclusive` with the
    /// running test's figures); `checked_at` is the latest probe.
    pub fn verify_by_model(&self, peer: &PeerId) -> ByModel<VerifyEntry> {
        self.pairs
            .range((*peer, String::new())..)
            .take_while(|((p, _), _)| p == peer)
            .filter_map(|((_, model), st)| {
                let checked_at = st.last_checked?.as_unix_secs();
                let entry = match &st.decided {
                    Some(e) => VerifyEntry {
                        checked_at_unix_secs: checked_at,
                        ..e.clone()
                    },
                    None => VerifyEntry {
                        verdict: VerifyVerdict::Inconclusive,
                        agreement: st.test.agreement(),
                        compared_tokens: st.test.compared_tokens,
                        mode: self.config.enforcement.mode,
                        checked_at_unix_secs: checked_at,
                    },
                };
                Some((model.clone(), entry))
            })
            .collect()
    }

    fn jittered(&mut self, now: Timestamp) -> Timestamp {
        let unit = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        now + self.config.interval.mul_f64(0.5 + unit)
    }

    fn start_audit(&mut self, view: &MeshView, now: Timestamp) {
        let me_hosts = |model: &str| view.me().is_some_and(|k| k.announcement.hosts(model));
        let busy: BTreeSet<(PeerId, &str)> = self
            .audits
            .values()
            .map(|a| (a.peer, a.model.as_str()))
            .collect();
        let mut eligible: Vec<(PeerId, ModelName, Plan, u64)> = Vec::new();
        for p in &view.peers {
            let a = &p.announcement;
            if a.peer_id == self.me
                || p.rtt_ms.is_none()
                || a.inflight_requests > self.config.busy_inflight
            {
                continue;
            }
            let models: BTreeSet<&ModelName> = a.hosted_models.iter().collect();
            for model in models {
                if busy.contains(&(a.peer_id, model.as_str())) {
                    continue;
                }
                let plan = if me_hosts(model) {
                    Plan::GroundTruth
                } else {
                    let published = a.baseline(model).and_then(|b| b.fingerprint.clone());
                    let references = self
                        .config
                        .references
                        .get(model)
                        .cloned()
                        .unwrap_or_default();
                    if published.is_none() && references.is_empty() {
                        continue;
                    }
                    Plan::Fingerprint {
                        published,
                        references,
                    }
                };
                // Pairs under suspicion are re-checked sooner, so a verdict is confirmed or
                // withdrawn quickly.
                let weight = match self.pairs.get(&(a.peer_id, model.clone())) {
                    Some(st) if st.suspicious() => 4,
                    _ => 1,
                };
                eligible.push((a.peer_id, model.clone(), plan, weight));
            }
        }
        let total: u64 = eligible.iter().map(|e| e.3).sum();
        if total == 0 {
            return;
        }
        let mut ticket = self.rng.next_u64() % total;
        let index = eligible
            .iter()
            .position(|e| {
                if ticket < e.3 {
                    true
                } else {
                    ticket -= e.3;
                    false
                }
            })
            .expect("ticket < total weight");
        let (peer, model, plan, _) = eligible.swap_remove(index);
        let id = AuditId(self.next_id);
        self.next_id += 1;
        match &plan {
            Plan::GroundTruth => {
                let prompt = self.config.corpus.generate(&mut self.rng);
                let max_tokens = *pick(&mut self.rng, &self.config.max_tokens_choices);
                // The peer's copy is shaped like an ordinary chat: no logprobs, no seed, no
                // cache flag. Only our own server is asked for candidates (they do not change
                // a greedy decode).
                let peer_params = ProbeParams {
                    max_tokens,
                    seed: None,
                    cache_prompt: None,
                    top_logprobs: None,
                };
                let own_params = ProbeParams {
                    top_logprobs: Some(self.config.reference_top_logprobs),
                    ..peer_params
                };
                self.outputs.push_back(AuditOutput::RunOnOwnServer {
                    audit: id,
                    model: model.clone(),
                    probe: AuditProbe {
                        prompt: prompt.clone(),
                        params: own_params,
                    },
                });
                self.outputs.push_back(AuditOutput::SendToPeer {
                    audit: id,
                    peer,
                    model: model.clone(),
                    mode: AuditMode::GroundTruth,
                    probe: AuditProbe {
                        prompt,
                        params: peer_params,
                    },
                });
            }
            Plan::Fingerprint { .. } => {
                self.outputs.push_back(AuditOutput::SendToPeer {
                    audit: id,
                    peer,
                    model: model.clone(),
                    mode: AuditMode::PublishedFingerprint,
                    probe: AuditProbe {
                        prompt: SyntheticPrompt::fixed(),
                        params: FIXED_PROBE_PARAMS,
                    },
                });
            }
        }
        self.audits.insert(
            id,
            Audit {
                peer,
                model,
                plan,
                deadline: now + self.config.audit_timeout,
                own: None,
                answer: None,
            },
        );
    }

    fn abandon(&mut self, id: AuditId, reason: AbandonReason) {
        if let Some(a) = self.audits.remove(&id) {
            self.outputs.push_back(AuditOutput::Abandoned {
                audit: id,
                peer: a.peer,
                model: a.model,
                reason,
            });
        }
    }

    fn evaluate(&mut self, id: AuditId, audit: Audit, now: Timestamp) {
        let Audit {
            peer,
            model,
            plan,
            own,
            answer,
            ..
        } = audit;
        let answer = answer.expect("evaluated only once the peer answered");
        let cfg = &self.config;
        let pair = self.pairs.entry((peer, model.clone())).or_default();
        let judged: Option<(Comparison, Evidence)> = match plan {
            Plan::GroundTruth => {
                let own = own.expect("ground truth waits for our own answer");
                let c = compare_text(&own, &answer.text, &cfg.compare);
                (c != Comparison::EMPTY).then(|| (c, cfg.cross_backend.evidence(&c)))
            }
            Plan::Fingerprint {
                published,
                references,
            } => {
                let seen = answer.fingerprint();
                pair.last_checked = Some(now);
                if !pair.seen_answers.insert(seen.output_hash.clone()) {
                    return; // the same answer again: nothing new
                }
                // Consistent with what it published AND (when references exist) like at
                // least one reference: the worse of the two counts.
                let consistency = published.map(|f| {
                    let c = compare_fingerprints(&f, &seen, &cfg.compare);
                    (c, cfg.same_server.evidence(&c))
                });
                let identity = references
                    .iter()
                    .map(|r| {
                        let c = compare_fingerprints(r, &seen, &cfg.compare);
                        (c, cfg.cross_backend.evidence(&c))
                    })
                    .filter(|(c, _)| *c != Comparison::EMPTY)
                    .min_by(|a, b| a.1.log_lr.total_cmp(&b.1.log_lr));
                consistency
                    .into_iter()
                    .filter(|(c, _)| *c != Comparison::EMPTY)
                    .chain(identity)
                    .max_by(|a, b| a.1.log_lr.total_cmp(&b.1.log_lr))
            }
        };
        pair.last_checked = Some(now);
        let Some((comparison, evidence)) = judged else {
            self.outputs.push_back(AuditOutput::Abandoned {
                audit: id,
                peer,
                model,
                reason: AbandonReason::NothingToCompare,
            });
            return;
        };
        let Some(verdict) = pair.test.observe(&comparison, evidence, &cfg.sprt) else {
            return;
        };
        let enforcement = cfg.enforcement;
        let entry = VerifyEntry {
            verdict,
            agreement: pair.test.agreement(),
            compared_tokens: pair.test.compared_tokens,
            mode: enforcement.mode,
            checked_at_unix_secs: now.as_unix_secs(),
        };
        pair.test = Sprt::default();
        pair.seen_answers.clear();
        pair.decided = Some(entry.clone());
        self.outputs.push_back(AuditOutput::Verdict {
            peer,
            model: model.clone(),
            entry,
        });
        match verdict {
            VerifyVerdict::Mismatch => {
                pair.consecutive_mismatches += 1;
                // A pair still mismatching after its demotion ran out is demoted again at once:
                // only a match breaks the run of mismatches.
                if enforcement.mode == VerifyMode::Enforce
                    && pair.consecutive_mismatches >= enforcement.demote_after
                {
                    let until = now + enforcement.demote_for;
                    pair.demoted_until = Some(until);
                    self.outputs
                        .push_back(AuditOutput::Demoted { peer, model, until });
                }
            }
            VerifyVerdict::Match => {
                pair.consecutive_mismatches = 0;
                if pair.demoted_until.take().is_some_and(|until| now < until) {
                    self.outputs
                        .push_back(AuditOutput::Reinstated { peer, model });
                }
            }
            VerifyVerdict::Inconclusive => {}
        }
    }
}
