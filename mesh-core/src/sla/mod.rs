//! SLA gate, tiers, fallback decision, response headers and mesh-share math (SPEC §6).
//!
//! Pure functions of the [`MeshView`](crate::MeshView), the entry's own measurements and `now`:
//!
//! - [`tier`]: the tier catalog ([`TierCatalog::tier_of`]), per-tier [`Targets`], and
//!   [`default_model`], the one resolver the web picker and `/api/chat` share.
//! - [`gate`]: [`evaluate`] → an [`Evaluation`] with its [`SlaStatus`].
//! - [`fallback`]: [`decide_fallback`] / [`decide_fallback_after_mesh_failure`] → a
//!   [`FallbackDecision`]; [`FallbackBudget`], the per-IP hourly budget.
//! - [`headers`]: [`response_headers`], the `x-closedmesh-*` set.
//! - [`share`]: [`MeshShareCounters`], hourly served-by counts and `mesh_share_pct`.

pub mod fallback;
pub mod gate;
pub mod headers;
pub mod share;
pub mod tier;

pub use fallback::{
    BudgetLeft, FallbackBudget, FallbackConfig, FallbackDecision, FallbackStatus, FallbackTrigger,
    OverBudget, caller_key, decide_and_spend, decide_fallback, decide_fallback_after_mesh_failure,
};
pub use gate::{
    Candidate, EntryMeasurement, EntryMeasurements, EntrySamples, Evaluation, Measured,
    MeasurementSource, SlaConfig, SlaStatus, evaluate,
};
pub use headers::response_headers;
pub use share::{HourBucket, HourCounts, MeshShareCounters, ServedBy, ShareWindow};
pub use tier::{
    CAPACITY_TIER_COPY, ModelId, NoDefaultModel, Targets, Tier, TierCatalog, TierTargets,
    default_model,
};
