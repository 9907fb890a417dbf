//! The entries' audit loop: mesh-core's `Auditor` on the entry's view, its probes run on the
//! entry's own llama-server (ground truth) and sent through the mesh to peers like chats, the
//! answers decoded by [`crate::decode`], verdicts logged and checked.

use super::{AuditReq, Ev, World, since_start};
use crate::decode;
use crate::profile;
use crate::rng::SimRng;
use mesh_core::status::VerifyVerdict;
use mesh_core::verify::{AuditId, AuditOutput, Auditor, Decode, ProbeFailed, Side};

impl World<'_> {
    pub(super) fn new_auditor(&self, e: usize) -> Auditor {
        let config = self
            .sc
            .verify
            .audit_config(self.models.iter().map(|m| m.name.as_str()));
        let rng = SimRng::derive(self.seed, "audit", e as u64).pcg();
        Auditor::new(self.nodes[e].id, config, rng, self.now)
            .expect("the default audit config with a positive interval is valid")
    }

    pub(super) fn audit_wake(&mut self, e: usize) {
        let now = self.now;
        let up = self.nodes[e].up();
        let Some(ep) = self.entries.get_mut(&Some(e)) else {
            return;
        };
        if ep.audit_wake != Some(now) {
            return;
        }
        ep.audit_wake = None;
        // A crashed entry's auditor sleeps (its restart makes a new one); without a view there
        // is nothing to audit and the overdue deadline would only wake it again at once.
        if !up {
            return;
        }
        let (Some(a), Some(view)) = (ep.auditor.as_mut(), ep.view.as_ref()) else {
            return;
        };
        a.handle_timeout(view, now);
        self.drain_auditor(e);
    }

    pub(super) fn audit_answer(
        &mut self,
        e: usize,
        audit: AuditId,
        side: Side,
        answer: Result<Decode, ProbeFailed>,
    ) {
        let now = self.now;
        if !self.nodes[e].up() {
            return;
        }
        if let Some(a) = self
            .entries
            .get_mut(&Some(e))
            .and_then(|ep| ep.auditor.as_mut())
        {
            a.handle_answer(audit, side, answer, now);
        }
        self.drain_auditor(e);
    }

    /// Carries out what the auditor asks, then sleeps until its next deadline.
    pub(super) fn drain_auditor(&mut self, e: usize) {
        let now = self.now;
        while let Some(out) = self
            .entries
            .get_mut(&Some(e))
            .and_then(|ep| ep.auditor.as_mut())
            .and_then(Auditor::poll_output)
        {
            match out {
                AuditOutput::RunOnOwnServer {
                    audit,
                    model,
                    probe,
                } => self.own_server_probe(e, audit, &model, probe),
                AuditOutput::SendToPeer {
                    audit,
                    peer,
                    model,
                    probe,
                    ..
                } => {
                    let (Some(&p), Some(m)) = (
                        self.index.get(&peer),
                        self.models.iter().position(|x| x.name == model),
                    ) else {
                        continue;
                    };
                    self.verdicts.entry((p, m)).or_default().audits += 1;
                    let probe_shaped =
                        probe.params.seed.is_some() || probe.params.cache_prompt.is_some();
                    self.send_audit_probe(
                        m,
                        p,
                        AuditReq {
                            entry: e,
                            audit,
                            prompt: probe.prompt.as_str().to_string(),
                            max_tokens: probe.params.max_tokens,
                            probe_shaped,
                        },
                    );
                }
                AuditOutput::Verdict { peer, model, entry } => {
                    let (Some(&p), Some(m)) = (
                        self.index.get(&peer),
                        self.models.iter().position(|x| x.name == model),
                    ) else {
                        continue;
                    };
                    let log = self.verdicts.entry((p, m)).or_default();
                    let mismatch = entry.verdict == VerifyVerdict::Mismatch;
                    match entry.verdict {
                        VerifyVerdict::Match => log.matches += 1,
                        VerifyVerdict::Mismatch => {
                            log.mismatches += 1;
                            log.first_mismatch.get_or_insert(now);
                        }
                        VerifyVerdict::Inconclusive => log.inconclusive += 1,
                    }
                    let spec = self.nodes[p].spec;
                    self.checker.verdict(
                        since_start(now),
                        &spec.name,
                        &model,
                        mismatch,
                        decode::serves_advertised_model(spec.behaviour),
                    );
                }
                AuditOutput::Demoted { peer, model, .. } => {
                    let (Some(&p), Some(m)) = (
                        self.index.get(&peer),
                        self.models.iter().position(|x| x.name == model),
                    ) else {
                        continue;
                    };
                    self.verdicts.entry((p, m)).or_default().demoted = true;
                    let spec = self.nodes[p].spec;
                    self.checker.demoted(
                        since_start(now),
                        &spec.name,
                        &model,
                        decode::serves_advertised_model(spec.behaviour),
                    );
                }
                AuditOutput::Reinstated { .. } | AuditOutput::Abandoned { .. } => {}
            }
        }
        let Some(ep) = self.entries.get_mut(&Some(e)) else {
            return;
        };
        let wake = ep
            .auditor
            .as_ref()
            .and_then(Auditor::poll_timeout)
            .map(|t| t.max(now));
        if wake != ep.audit_wake {
            ep.audit_wake = wake;
            if let Some(t) = wake {
                self.queue.push(t, Ev::AuditWake(e));
            }
        }
    }

    /// Ground truth: the entry's own llama-server decodes the probe (with candidates).
    fn own_server_probe(
        &mut self,
        e: usize,
        audit: AuditId,
        model: &str,
        probe: mesh_core::verify::AuditProbe,
    ) {
        let now = self.now;
        let m = self.models.iter().position(|x| x.name == model);
        let node = &self.nodes[e];
        let hosting = m.and_then(|m| {
            node.hostings
                .iter()
                .find(|h| h.model == m && h.ready && !h.draining)
        });
        let (at, answer) = match hosting {
            Some(h) => {
                let t = h.serving.native(profile::PROBE_PROMPT_TOKENS);
                let tokens = probe.params.max_tokens;
                let took = t.ttft_ms + t.per_token_ms * f64::from(tokens);
                let decode = decode::answer(
                    model,
                    node.spec.behaviour,
                    node.spec.backend,
                    decode::Request {
                        prompt: probe.prompt.as_str(),
                        max_tokens: tokens,
                        probe_shaped: true,
                    },
                );
                (now + super::ms(took), Ok(decode))
            }
            None => (
                now,
                Err(ProbeFailed {
                    reason: "the entry's own llama-server does not serve the model".into(),
                }),
            ),
        };
        self.queue.push(
            at,
            Ev::AuditAnswer {
                entry: e,
                audit,
                side: Side::Own,
                answer: Box::new(answer),
            },
        );
    }
}
