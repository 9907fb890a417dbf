//! Verification (SPEC §7): does a peer really serve the model it advertises?
//!
//! - [`probe`]: synthetic prompts (the only text ever sent) and the request bodies.
//! - [`compare`]: greedy decodes, fingerprints, and the tolerant comparison of two decodes.
//! - [`sprt`]: per-probe likelihood ratios and Wald's sequential test over probes.
//! - [`audit`]: the entry node's audit loop, verdicts, and enforcement.
//!
//! # How an audit works
//!
//! On a jittered interval the [`Auditor`] picks one (peer, model) among live, dialable, not-busy
//! peers that host a model (seeded RNG; pairs under suspicion weigh 4×).
//! - **The entry serves the model** ([`AuditMode::GroundTruth`]): a fresh prompt from the
//!   [`ProbeCorpus`] goes, identically, to the entry's own llama-server (asking for top-5
//!   candidates with logprobs) and through the mesh to the peer (asking for nothing special);
//!   [`compare_text`] judges the peer's text against our tokens.
//! - **It does not** ([`AuditMode::PublishedFingerprint`]): the fixed baseline probe goes to the
//!   peer; its answer must agree with the fingerprint the peer itself published (same server:
//!   only near-ties allowed) and, when the operator pinned reference fingerprints for the model,
//!   with at least one of them. A deterministic probe repeated says nothing new, so an identical
//!   answer counts once per test.
//!
//! Evidence adds up per (peer, model) in an SPRT whose false-accusation rate `alpha` and miss
//! rate `beta` are configuration ([`SprtConfig`], documented in [`sprt`]). Decided tests become
//! [`VerifyEntry`](crate::status::payload::VerifyEntry) rows; in enforce mode, `demote_after`
//! consecutive mismatches take the pair out of rotation for `demote_for` ([`Auditor::is_demoted`]),
//! and a match reinstates it. Observe mode — the default — never touches routing.
//!
//! # What is caught, and what is not
//!
//! | behaviour | caught by | how fast (defaults) |
//! |---|---|---|
//! | cheaper quant | ground truth | real SmolLM2 decodes: Q4_0 for Q4_1 in 2–5 probes, Q2_K in 2–3; simulated Q4_0-like peers: median 4, p90 9 |
//! | smaller model of the family | ground truth | diverges like Q2_K or sooner |
//! | canned text | ground truth; fingerprint mode (it contradicts its own fingerprint) | 2 probes; 1 |
//! | replaying the published fingerprint | ground truth only: a fresh prompt has another answer | 2 probes |
//! | serving honestly only when it recognises a probe | ground truth, as far as probes are unrecognisable | — |
//!
//! Honest peers: the same quant at another thread count agreed on all 32 tokens of 16 real
//! prompts; a Q8_0 requantisation (a harsher perturbation than another backend) diverged in 9 of
//! 16 — a naive prefix rule would flag all 9 — always on near-ties, and was matched. Simulated
//! honest peers with a near-tie flip every 20 tokens *and* genuine-looking noise at the model's
//! worst case were falsely accused in 6 of 10,000 tests (`alpha` = 1e-3); with near-ties alone,
//! never (a property test). Fingerprint mode rarely reaches *match*: one deterministic answer is
//! little evidence, and it exists to catch contradictions.
//!
//! # The shape of a probe (why temperature 0 stays)
//!
//! The peer's copy of a fresh probe is an ordinary streaming chat on the same endpoint as real
//! traffic, one user message of everyday length and phrasing, `max_tokens` from common client
//! values, and no `seed`, `cache_prompt` or `logprobs`. The one parameter it keeps is
//! `temperature: 0`: only a greedy decode is reproducible across machines, so without it there is
//! nothing to compare. Temperature 0 is common in real API traffic (tools, agents, evals, the
//! mesh's own clients), so it marks a request as "possibly a probe" only as much as it marks a
//! large share of real chats. The residual limits, stated plainly: a peer that cheats only on
//! sampled (temperature > 0) requests is beyond any greedy check; a peer that reads this source
//! could learn the built-in corpus's phrasings (operators can supply private lists); the fixed
//! probe of fingerprint mode is recognisable by design, and a peer that publishes no fingerprint
//! is only ever audited by entries that serve its model.
//!
//! # Driving the auditor (entry shell)
//!
//! Call [`Auditor::handle_timeout`] at [`Auditor::poll_timeout`] with the current mesh view.
//! Perform `RunOnOwnServer` by POSTing `probe.body(model)` to the local llama-server and turning
//! the entries of each streamed chunk's `choices[0].logprobs.content[]` (`id`, `bytes`,
//! `logprob`, `top_logprobs[]`) into [`Decode::tokens`]; perform `SendToPeer` by routing `probe.body(model)` to that peer exactly
//! as a user's chat (same endpoint, headers and streaming), reading the whole answer — its
//! content text is enough unless the probe asked for logprobs. Feed each answer to
//! [`Auditor::handle_answer`]; a non-2xx status or a broken stream is `Err(ProbeFailed)`.
//! Status rows take [`Auditor::verify_by_model`]; routing skips [`Auditor::is_demoted`] pairs.
//!
//! **Privacy**: no type here can carry a user's prompt — [`SyntheticPrompt`] has no public
//! constructor from text and no `Deserialize`.

pub mod audit;
pub mod compare;
pub mod probe;
pub mod sprt;

pub use audit::{
    AbandonReason, AuditConfig, AuditConfigError, AuditId, AuditMode, AuditOutput, AuditProbe,
    Auditor, Enforcement, Side,
};
pub use compare::{
    Candidate, CompareConfig, Comparison, Decode, DecodedToken, Divergence, DivergenceKind,
    FINGERPRINT_TOKENS, compare_fingerprints, compare_text, text_hash,
};
pub use probe::{
    CorpusError, CorpusLists, FIXED_PROBE_PROMPT, ProbeCorpus, ProbeFailed, ProbeParams,
    SyntheticPrompt, chat_body,
};
pub use sprt::{Evidence, LikelihoodModel, Sprt, SprtConfig};
