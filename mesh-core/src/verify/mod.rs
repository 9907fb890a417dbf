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
//! | cheaper quant (Q4_0 for Q4_1, Q2_K for Q4_K_M) | ground truth | 2 genuine early divergences: ~2–5 probes |
//! | smaller model of the family | ground truth | like Q2_K or faster |
//! | canned text | ground truth; fingerprint mode (vs. its own fingerprint) | 2 probes; 1 |
//! | replaying the published fingerprint | ground truth only: a fresh prompt has another answer | 2 probes |
//! | serving honestly only when it recognises a probe | ground truth, as far as probes are unrecognisable | — |
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
//! could learn the built-in corpus's phrasings (operators can supply private lists); and the
//! fixed probe of fingerprint mode is recognisable by design.
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
