//! The entry's audit loop (SPEC §7): mesh-core's [`Auditor`] driven by the entry's mesh view,
//! its own llama-servers and the HTTP tunnel chats use.
//!
//! - On each of the auditor's deadlines the loop hands it the entry's current view; the auditor
//!   picks a (peer, model), skipping busy peers, and asks for probes.
//! - `RunOnOwnServer` (the entry serves the model: ground truth) POSTs `probe.body(model)` straight
//!   to this node's own llama-server for the model, with its key, asking for top-k candidates.
//! - `SendToPeer` goes through the entry's own chat path to that peer — the same per-peer
//!   [`ChatProxy`](crate::proxy::ChatProxy), tunnel, endpoint, headers and streaming as a routed
//!   chat — so a peer cannot tell a probe from traffic by how it arrives.
//! - Both answers are read by [`native::read_decode`] (the reading baselines use) and fed back;
//!   a non-2xx status or a broken stream is `ProbeFailed`, and an audit with an answer missing
//!   past the auditor's `audit_timeout` is abandoned by the auditor itself.
//! - Verdicts are logged (one line each), kept per (peer, model) in an [`AuditTally`], shown in
//!   `/api/status` `verify_by_model` ([`EntryAudit::verify`]); in enforce mode the entry's router
//!   skips demoted pairs ([`EntryAudit::is_demoted`]), never leaving a model without a target.
//!
//! **Privacy**: the only text ever sent is the auditor's [`AuditProbe`]: mesh-core's synthetic
//! prompts. Nothing here reads, keeps or forwards a user's chat.

use crate::clock::Clock;
use crate::dial::Upstream;
use crate::native;
use mesh_core::peer::ModelName;
use mesh_core::status::payload::{ByModel, VerifyEntry, VerifyMode, VerifyVerdict};
use mesh_core::verify::{
    AuditConfig, AuditConfigError, AuditId, AuditOutput, AuditProbe, Auditor, Decode, ProbeFailed,
    Side,
};
use mesh_core::{MeshView, PeerId, Timestamp};
use rand_core::SeedableRng;
use rand_pcg::Pcg64;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

/// What the audit loop did for one (peer, model), over this entry's run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AuditTally {
    /// Probes sent to the peer.
    pub audits: u32,
    /// Decided tests by verdict.
    pub matches: u32,
    pub mismatches: u32,
    pub inconclusive: u32,
    /// Audits that ended without evidence (timeout, a failed side, nothing to compare).
    pub abandoned: u32,
    pub first_mismatch: Option<Timestamp>,
    /// Taken out of rotation (enforce mode) at some point.
    pub demoted: bool,
}

/// The entry's auditor and what it decided. Cheap to share.
#[derive(Debug)]
pub struct EntryAudit {
    auditor: Mutex<Auditor>,
    mode: VerifyMode,
    /// A probe still unanswered after this is dropped (the auditor has abandoned it by then).
    probe_timeout: Duration,
    tally: Mutex<BTreeMap<(PeerId, ModelName), AuditTally>>,
    events: broadcast::Sender<AuditOutput>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each guarded value changes by whole operations; a poisoned one is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EntryAudit {
    /// An auditor for entry `me`; `seed` drives its choice of pairs, prompts and gaps.
    pub fn new(
        me: PeerId,
        config: AuditConfig,
        seed: u64,
        now: Timestamp,
    ) -> Result<Arc<EntryAudit>, AuditConfigError> {
        let mode = config.enforcement.mode;
        let probe_timeout = config.audit_timeout;
        let auditor = Auditor::new(me, config, Pcg64::seed_from_u64(seed), now)?;
        Ok(Arc::new(EntryAudit {
            auditor: Mutex::new(auditor),
            mode,
            probe_timeout,
            tally: Mutex::default(),
            events: broadcast::channel(1024).0,
        }))
    }

    pub fn mode(&self) -> VerifyMode {
        self.mode
    }

    /// Whether routing must skip `peer` for `model` now (never in observe mode).
    pub fn is_demoted(&self, peer: &PeerId, model: &str, now: Timestamp) -> bool {
        lock(&self.auditor).is_demoted(peer, model, now)
    }

    /// `verify_by_model` of every peer of `view` the auditor has checked.
    pub fn verify(&self, view: &MeshView) -> BTreeMap<PeerId, ByModel<VerifyEntry>> {
        let auditor = lock(&self.auditor);
        view.peers
            .iter()
            .map(|k| (k.id(), auditor.verify_by_model(&k.id())))
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }

    /// What the loop did per (peer, model) so far.
    pub fn tally(&self) -> BTreeMap<(PeerId, ModelName), AuditTally> {
        lock(&self.tally).clone()
    }

    /// The auditor's outputs from now on (probes sent, verdicts, demotions, abandoned audits).
    pub fn subscribe(&self) -> broadcast::Receiver<AuditOutput> {
        self.events.subscribe()
    }

    fn next_deadline(&self) -> Option<Timestamp> {
        lock(&self.auditor).poll_timeout()
    }

    /// The auditor's outputs now, with the tally and the log written.
    fn drain(&self, now: Timestamp) -> Vec<AuditOutput> {
        let outputs: Vec<AuditOutput> = {
            let mut a = lock(&self.auditor);
            std::iter::from_fn(|| a.poll_output()).collect()
        };
        let mut tally = lock(&self.tally);
        for out in &outputs {
            match out {
                AuditOutput::RunOnOwnServer { .. } => {}
                AuditOutput::SendToPeer { peer, model, .. } => {
                    tally.entry((*peer, model.clone())).or_default().audits += 1;
                }
                AuditOutput::Verdict { peer, model, entry } => {
                    let t = tally.entry((*peer, model.clone())).or_default();
                    match entry.verdict {
                        VerifyVerdict::Match => t.matches += 1,
                        VerifyVerdict::Mismatch => {
                            t.mismatches += 1;
                            t.first_mismatch.get_or_insert(now);
                        }
                        VerifyVerdict::Inconclusive => t.inconclusive += 1,
                    }
                    tracing::info!(
                        %peer,
                        model = %model,
                        verdict = ?entry.verdict,
                        agreement = format_args!("{:.3}", entry.agreement),
                        compared_tokens = entry.compared_tokens,
                        mode = ?entry.mode,
                        "audit verdict"
                    );
                }
                AuditOutput::Demoted { peer, model, until } => {
                    tally.entry((*peer, model.clone())).or_default().demoted = true;
                    tracing::warn!(%peer, model = %model, %until, "audit: (peer, model) out of rotation after repeated mismatches");
                }
                AuditOutput::Reinstated { peer, model } => {
                    tracing::info!(%peer, model = %model, "audit: (peer, model) back in rotation after a match");
                }
                AuditOutput::Abandoned {
                    peer,
                    model,
                    reason,
                    ..
                } => {
                    tally.entry((*peer, model.clone())).or_default().abandoned += 1;
                    tracing::debug!(%peer, model = %model, ?reason, "audit abandoned");
                }
            }
        }
        drop(tally);
        for out in &outputs {
            // Nobody listening is fine.
            let _ = self.events.send(out.clone());
        }
        outputs
    }
}

/// A future answering one side of an audit.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Result<Decode, ProbeFailed>> + Send>>;

/// How the loop reaches the two sides of an audit (the entry implements it).
pub trait ProbeSides: Send + Sync + 'static {
    /// This node's own llama-server for `model`, when it runs one now.
    fn own_server(&self, model: &str) -> Option<Upstream>;
    /// Sends `probe` to `peer` for `model` exactly as a routed chat goes, and reads the answer.
    fn send_to_peer(&self, peer: PeerId, model: &str, probe: &AuditProbe) -> ProbeFuture;
    /// The mesh as this node sees it now.
    fn view(&self) -> MeshView;
}

/// POSTs `probe.body(model)` to a local llama-server and reads its streamed answer.
pub async fn run_on_own_server(
    upstream: &Upstream,
    model: &str,
    probe: &AuditProbe,
) -> Result<Decode, ProbeFailed> {
    let response = native::post_probe(upstream, &probe.body(model)).await?;
    let status = response.status();
    if !status.is_success() {
        return Err(ProbeFailed {
            reason: format!("own llama-server answered {status}"),
        });
    }
    native::read_decode(response.into_body()).await
}

type Answer = (AuditId, Side, Result<Decode, ProbeFailed>);

/// Runs the audit loop until `stop` turns true.
pub async fn run(
    audit: Arc<EntryAudit>,
    sides: Arc<dyn ProbeSides>,
    clock: Clock,
    mut stop: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Answer>();
    loop {
        let now = clock.now();
        let wake = audit
            .next_deadline()
            .map(|d| clock.instant() + d.saturating_since(now));
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            Some((id, side, answer)) = rx.recv() => {
                lock(&audit.auditor).handle_answer(id, side, answer, clock.now());
            }
            () = sleep => {
                let view = sides.view();
                lock(&audit.auditor).handle_timeout(&view, clock.now());
            }
        }
        for out in audit.drain(clock.now()) {
            match out {
                AuditOutput::RunOnOwnServer {
                    audit: id,
                    model,
                    probe,
                } => {
                    let own = sides.own_server(&model);
                    let tx = tx.clone();
                    let limit = audit.probe_timeout;
                    tokio::spawn(async move {
                        let answer = match own {
                            Some(upstream) => {
                                let run = run_on_own_server(&upstream, &model, &probe);
                                within(limit, run).await
                            }
                            None => Err(ProbeFailed {
                                reason: format!("this node runs no llama-server for {model:?} now"),
                            }),
                        };
                        let _ = tx.send((id, Side::Own, answer));
                    });
                }
                AuditOutput::SendToPeer {
                    audit: id,
                    peer,
                    model,
                    probe,
                    ..
                } => {
                    let answer = sides.send_to_peer(peer, &model, &probe);
                    let tx = tx.clone();
                    let limit = audit.probe_timeout;
                    tokio::spawn(async move {
                        let _ = tx.send((id, Side::Peer, within(limit, answer).await));
                    });
                }
                _ => {}
            }
        }
    }
}

/// `answer`, or a failure once `limit` has passed (dropping it closes the stream, so the server
/// stops generating for a probe nobody waits for).
async fn within(
    limit: Duration,
    answer: impl Future<Output = Result<Decode, ProbeFailed>>,
) -> Result<Decode, ProbeFailed> {
    tokio::time::timeout(limit, answer)
        .await
        .unwrap_or_else(|_| {
            Err(ProbeFailed {
                reason: format!("no complete answer within {} s", limit.as_secs()),
            })
        })
}

/// `--verify-mode`.
pub fn parse_mode(s: &str) -> Result<VerifyMode, String> {
    match s {
        "observe" => Ok(VerifyMode::Observe),
        "enforce" => Ok(VerifyMode::Enforce),
        other => Err(format!(
            "verify mode must be `observe` or `enforce`, not {other:?}"
        )),
    }
}
