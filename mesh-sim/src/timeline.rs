//! What a run looked like over time, for the plots `--out` writes: every chat's TTFT and decode
//! speed as its entry measured them, and how changed announcements spread. Engine-independent.

/// One chat served by the mesh, as its entry timed it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChatPoint {
    /// When its last token arrived (virtual seconds).
    pub at_s: f64,
    /// Index into [`Timeline::models`].
    pub model: usize,
    pub ttft_ms: f64,
    pub tps: f64,
}

/// How one changed announcement spread: when each other live peer first held it.
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    /// When it was published (virtual seconds).
    pub at_s: f64,
    /// Peers that should hold it (live gossiping peers but its origin, at publication).
    pub peers: usize,
    /// Milliseconds after publication at which each peer got it, in arrival order.
    pub arrivals_ms: Vec<f64>,
}

/// Spreads kept in full (the first ones of the run; every change is still counted in the report).
pub const MAX_SPREADS: usize = 200;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    pub models: Vec<String>,
    pub chats: Vec<ChatPoint>,
    pub spreads: Vec<Spread>,
}

impl Timeline {
    pub fn new(models: Vec<String>) -> Self {
        Timeline {
            models,
            chats: Vec::new(),
            spreads: Vec::new(),
        }
    }
}
