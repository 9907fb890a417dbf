//! Synthetic probes: the only text that native baselines and verification ever send.
//!
//! A [`SyntheticPrompt`] can only be made here — the fixed baseline prompt, a nonce variant of
//! it, or a fresh prompt from a [`ProbeCorpus`] — so no code path can turn a user's prompt into a
//! probe: there is no constructor from a `String` and no `Deserialize`.

use rand_core::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The fixed probe of every native baseline: its greedy decode is the model's published
/// fingerprint, so it never changes (a new prompt would invalidate every fingerprint in the mesh).
pub const FIXED_PROBE_PROMPT: &str = "Explain in a short paragraph how a rainbow forms, \
     then name three everyday places where you might see one.";

/// Text the verifier or the baseline collector wrote itself; never a user's prompt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct SyntheticPrompt(String);

impl SyntheticPrompt {
    /// The fixed probe ([`FIXED_PROBE_PROMPT`]).
    pub fn fixed() -> Self {
        SyntheticPrompt(FIXED_PROBE_PROMPT.to_string())
    }

    /// The fixed probe behind a nonce: same length class, but a prompt llama-server's cache has
    /// never seen, so TTFT includes the full prefill.
    pub fn with_nonce(nonce: u64) -> Self {
        SyntheticPrompt(format!("[{nonce:016x}] {FIXED_PROBE_PROMPT}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a probe produced no result (the shell's words, for logs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("probe failed: {reason}")]
pub struct ProbeFailed {
    pub reason: String,
}

/// Request parameters of a probe. Temperature is always 0 (greedy: the only decode two machines
/// can compare token by token), so it is not a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeParams {
    pub max_tokens: u32,
    /// OpenAI `seed`; left out when `None`.
    pub seed: Option<u64>,
    /// llama.cpp's `cache_prompt`; left out when `None`.
    pub cache_prompt: Option<bool>,
    /// `logprobs: true, top_logprobs: k`; left out when `None`. Only requests the verifier sends
    /// to a server it trusts carry it: no ordinary chat asks for logprobs.
    pub top_logprobs: Option<u8>,
}

/// The `/v1/chat/completions` body of a probe, streaming with usage like every proxied chat.
/// The node and the simulator both send exactly this.
pub fn chat_body(model: &str, prompt: &SyntheticPrompt, params: &ProbeParams) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt.as_str()}],
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": 0.0,
        "max_tokens": params.max_tokens,
    });
    let fields = body
        .as_object_mut()
        .expect("a json! object literal is an object");
    if let Some(seed) = params.seed {
        fields.insert("seed".into(), seed.into());
    }
    if let Some(cache) = params.cache_prompt {
        fields.insert("cache_prompt".into(), cache.into());
    }
    if let Some(k) = params.top_logprobs {
        fields.insert("logprobs".into(), true.into());
        fields.insert("top_logprobs".into(), k.into());
    }
    body
}

/// Where audit prompts come from: `opener + template(topic) + closer`, each part drawn from a
/// list. Prompts read like everyday chats (tens of tokens), so a peer cannot tell an audit from
/// traffic by its shape. The built-in lists are public; an operator who fears a peer that reads
/// this source and matches our phrasings supplies private lists ([`ProbeCorpus::new`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CorpusLists", into = "CorpusLists")]
pub struct ProbeCorpus {
    lists: CorpusLists,
}

/// The raw lists of a [`ProbeCorpus`] (its config/serde form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusLists {
    /// Prefixes, e.g. `"Quick question: "`; may include `""`.
    pub openers: Vec<String>,
    /// Sentences containing `{topic}` exactly once or more.
    pub templates: Vec<String>,
    pub topics: Vec<String>,
    /// Suffixes, e.g. `" Thanks!"`; may include `""`.
    pub closers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorpusError {
    #[error("probe corpus list `{0}` is empty")]
    EmptyList(&'static str),
    #[error("probe template {0:?} has no {{topic}} slot")]
    TemplateWithoutTopic(String),
}

impl TryFrom<CorpusLists> for ProbeCorpus {
    type Error = CorpusError;
    fn try_from(lists: CorpusLists) -> Result<Self, CorpusError> {
        ProbeCorpus::new(lists)
    }
}

impl From<ProbeCorpus> for CorpusLists {
    fn from(c: ProbeCorpus) -> Self {
        c.lists
    }
}

impl ProbeCorpus {
    pub fn new(lists: CorpusLists) -> Result<Self, CorpusError> {
        for (name, list) in [
            ("openers", &lists.openers),
            ("templates", &lists.templates),
            ("topics", &lists.topics),
            ("closers", &lists.closers),
        ] {
            if list.is_empty() {
                return Err(CorpusError::EmptyList(name));
            }
        }
        if let Some(t) = lists.templates.iter().find(|t| !t.contains("{topic}")) {
            return Err(CorpusError::TemplateWithoutTopic(t.clone()));
        }
        Ok(ProbeCorpus { lists })
    }

    /// A fresh prompt, drawn with the caller's seeded generator.
    pub fn generate<R: Rng + ?Sized>(&self, rng: &mut R) -> SyntheticPrompt {
        let l = &self.lists;
        let opener = pick(rng, &l.openers);
        let template = pick(rng, &l.templates);
        let topic = pick(rng, &l.topics);
        let closer = pick(rng, &l.closers);
        SyntheticPrompt(format!(
            "{opener}{}{closer}",
            template.replace("{topic}", topic)
        ))
    }
}

/// A uniformly chosen element of a non-empty slice.
pub(crate) fn pick<'a, R: Rng + ?Sized, T>(rng: &mut R, items: &'a [T]) -> &'a T {
    // Modulo bias over lists this short is below 1e-15: irrelevant.
    &items[(rng.next_u64() % items.len() as u64) as usize]
}

impl Default for ProbeCorpus {
    fn default() -> Self {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        ProbeCorpus::new(CorpusLists {
            // Plain openings are the most common, so "" appears several times.
            openers: strings(&[
                "",
                "",
                "",
                "Hi! ",
                "Quick question: ",
                "Hey, ",
                "Hello. ",
                "I was wondering: ",
            ]),
            templates: strings(&[
                "Can you explain {topic} in simple terms?",
                "Write a short paragraph about {topic}.",
                "What are three interesting facts about {topic}?",
                "Give me a brief summary of {topic}.",
                "Why does {topic} matter?",
                "How would you explain {topic} to a ten-year-old?",
                "I'm curious about {topic}. Where should I start?",
                "List some common misconceptions about {topic}.",
                "What is the history of {topic}, in a few sentences?",
                "Compare {topic} with something from everyday life.",
                "Write a haiku about {topic}.",
                "What should a beginner know about {topic}?",
            ]),
            topics: strings(&[
                "photosynthesis",
                "the water cycle",
                "compound interest",
                "how vaccines work",
                "black holes",
                "the French revolution",
                "machine learning",
                "sourdough baking",
                "plate tectonics",
                "the stock market",
                "jazz music",
                "the immune system",
                "electric cars",
                "the printing press",
                "volcanoes",
                "honeybees",
                "chess openings",
                "the moon landing",
                "recycling",
                "coffee roasting",
                "the Roman empire",
                "rainforests",
                "quantum computing",
                "marathon training",
                "origami",
                "the internet",
                "glaciers",
                "solar panels",
                "ancient Egypt",
                "bread yeast",
                "tide pools",
                "public libraries",
                "bird migration",
                "the Pythagorean theorem",
                "composting",
                "lighthouses",
                "the human heart",
                "wind turbines",
                "board games",
                "sleep cycles",
            ]),
            closers: strings(&[
                "",
                "",
                "",
                " Thanks!",
                " Keep it brief.",
                " Please be concise.",
                " Use plain language.",
                " No more than a few sentences.",
            ]),
        })
        .expect("the built-in corpus has non-empty lists and {topic} in every template")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;
    use rand_pcg::Pcg64;

    #[test]
    fn generated_prompts_vary_and_read_like_chats() {
        let corpus = ProbeCorpus::default();
        let mut rng = Pcg64::seed_from_u64(7);
        let prompts: Vec<SyntheticPrompt> = (0..50).map(|_| corpus.generate(&mut rng)).collect();
        let distinct: std::collections::BTreeSet<&str> =
            prompts.iter().map(SyntheticPrompt::as_str).collect();
        assert!(
            distinct.len() >= 45,
            "only {} distinct prompts",
            distinct.len()
        );
        for p in &prompts {
            assert!(!p.as_str().contains("{topic}"));
            assert_ne!(p.as_str(), FIXED_PROBE_PROMPT);
            assert!((15..200).contains(&p.as_str().len()), "{p:?}");
        }
    }

    #[test]
    fn same_seed_same_prompts() {
        let corpus = ProbeCorpus::default();
        let draw = |seed| {
            let mut rng = Pcg64::seed_from_u64(seed);
            (0..5)
                .map(|_| corpus.generate(&mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn a_corpus_without_topic_slots_or_with_empty_lists_is_rejected() {
        let mut lists: CorpusLists = ProbeCorpus::default().into();
        lists.templates.push("Tell me a joke.".into());
        assert_eq!(
            ProbeCorpus::new(lists.clone()),
            Err(CorpusError::TemplateWithoutTopic("Tell me a joke.".into()))
        );
        lists.templates.clear();
        assert_eq!(
            ProbeCorpus::new(lists),
            Err(CorpusError::EmptyList("templates"))
        );
    }

    #[test]
    fn optional_params_are_left_out_of_the_body() {
        let plain = ProbeParams {
            max_tokens: 256,
            seed: None,
            cache_prompt: None,
            top_logprobs: None,
        };
        let body = chat_body("m", &SyntheticPrompt::fixed(), &plain);
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            [
                "max_tokens",
                "messages",
                "model",
                "stream",
                "stream_options",
                "temperature"
            ]
        );
        let full = ProbeParams {
            seed: Some(42),
            cache_prompt: Some(false),
            top_logprobs: Some(5),
            ..plain
        };
        let body = chat_body("m", &SyntheticPrompt::with_nonce(1), &full);
        assert_eq!(body["seed"], 42);
        assert_eq!(body["cache_prompt"], false);
        assert_eq!(body["logprobs"], true);
        assert_eq!(body["top_logprobs"], 5);
        assert_eq!(
            body["messages"][0]["content"],
            format!("[0000000000000001] {FIXED_PROBE_PROMPT}")
        );
    }
}
