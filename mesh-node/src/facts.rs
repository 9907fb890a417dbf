//! What this node measured itself, gathered for `/api/status`, `/api/models` and its own
//! announcement: through-mesh p50s (the proxy's [`Recorder`]), native baselines (the collector in
//! [`crate::native`]) and first-serve milestones ([`crate::milestones`]).

use crate::milestones::Milestones;
use crate::native::PublishedBaselines;
use crate::proxy::Recorder;
use mesh_core::status::LocalFacts;
use std::sync::Arc;

/// Handles to this node's own measurements. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Measurements {
    pub native: Arc<PublishedBaselines>,
    pub milestones: Arc<Milestones>,
}

impl Measurements {
    /// Nothing measured yet, nothing persisted (tests).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// mesh-core's view of this node's own numbers, now.
    pub fn facts(&self, recorder: &Recorder) -> LocalFacts {
        LocalFacts {
            timings: recorder.timings(),
            native_baselines: self.native.get(),
            inflight_requests: recorder.inflight(),
            first_served_unix_secs: self.milestones.first_served(),
            ..LocalFacts::default()
        }
    }
}
