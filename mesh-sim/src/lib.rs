//! The ClosedMesh simulator: scenario files in, reports out.
//!
//! Engine-independent (what every engine reads or fills):
//! - [`scenario`]: the SPEC §10 file format, parsed strictly and validated.
//! - [`profile`]: GPU profiles — placement and the TTFT / decode physics.
//! - [`calibration`]: the published situations of SPEC §11 against the profiles.
//! - [`decode`]: simulated model answers (token ids, top-k) for honest and dishonest backends.
//! - [`check`]: the invariant checkers (safety during the run, liveness after it).
//! - [`report`]: the report, as text or JSON; [`timeline`]: what the plots draw.
//! - [`out`]: `--out DIR` (every node's final `/api/status`, SVG plots).
//! - [`rng`]: seeded streams derived from one master seed.
//!
//! Engines: [`turmoil`] (the default: [`Engine::DEFAULT`]), mesh-node's real driver, entry,
//! audit loop and proxy on turmoil hosts, for up to [`turmoil::MAX_PEERS`] peers; [`des`]
//! (`--engine des`, or `engine = "des"` in a file), the discrete-event world driving mesh-core
//! directly, for thousands of peers. Both produce an [`Outcome`] from a [`Scenario`]; the
//! replays both run reach the same decisions and verdicts (`tests/engines.rs`, which also lists
//! the one replay only `des` runs: 103 peers).
//!
//! Tools: [`sweep`] (many seeds), [`bench`] (scale figures).

pub mod bench;
pub mod calibration;
pub mod check;
pub mod decode;
pub mod des;
mod net;
pub mod out;
pub mod plot;
pub mod profile;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod sweep;
pub mod timeline;
pub mod turmoil;

use mesh_core::status::StatusPayload;
use report::Report;
use scenario::Scenario;
use std::collections::BTreeMap;
use timeline::Timeline;

/// Which engine runs a scenario: the file's `engine` key, else [`Engine::DEFAULT`]; `--engine`
/// overrides both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// The discrete-event world: no tokio, mesh-core machines driven directly.
    Des,
    /// The real `mesh-node` stack on turmoil hosts.
    Turmoil,
}

impl Engine {
    /// The real node stack, unless a scenario says otherwise (one above the turmoil engine's
    /// peer limit says `engine = "des"`).
    pub const DEFAULT: Engine = Engine::Turmoil;

    /// The engine for `scenario` when the caller names none.
    pub fn for_scenario(scenario: &Scenario) -> Engine {
        scenario.engine.unwrap_or(Engine::DEFAULT)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Des => "des",
            Engine::Turmoil => "turmoil",
        }
    }
}

/// How to run a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Overrides the scenario's `seed`.
    pub seed: Option<u64>,
    pub engine: Engine,
}

/// Everything one run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub report: Report,
    /// Final `/api/status` payloads by peer name: every live entry's, and every live node's when
    /// asked for ([`Extras::all_statuses`]).
    pub statuses: BTreeMap<String, StatusPayload>,
    pub timeline: Timeline,
    /// Every option the seed decided (keys, who invited whom, link delays…), for a failing run's
    /// printout.
    pub derived: Vec<(String, String)>,
    /// What the engine did (for benches, not reports: it changes with every optimisation).
    pub stats: EngineStats,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineStats {
    pub events: u64,
    pub elections: u64,
    pub gossip_inputs: u64,
}

/// Optional work beyond the report.
#[derive(Default)]
pub struct Extras<'a> {
    /// Build every live node's final `/api/status`, not only the entries'.
    pub all_statuses: bool,
    /// Hears (virtual seconds done, virtual seconds in all) now and then.
    pub progress: Option<&'a mut dyn FnMut(f64, f64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The turmoil engine could not run the scenario (too large, or the simulation failed).
    #[error("turmoil engine: {0}")]
    Turmoil(String),
}

/// Runs `scenario` to completion in virtual time.
pub fn run(scenario: &Scenario, options: RunOptions) -> Result<Report, RunError> {
    run_outcome(scenario, options, Extras::default()).map(|o| o.report)
}

/// Runs `scenario` to completion and returns the report, the final statuses and the timeline.
pub fn run_outcome(
    scenario: &Scenario,
    options: RunOptions,
    extras: Extras,
) -> Result<Outcome, RunError> {
    let seed = options.seed.unwrap_or(scenario.seed);
    match options.engine {
        Engine::Des => Ok(des::run_outcome(
            scenario,
            seed,
            extras.all_statuses,
            extras.progress,
        )),
        Engine::Turmoil => turmoil::run_outcome(
            scenario,
            seed,
            extras.all_statuses,
            extras.progress,
            &turmoil::TurmoilOptions::default(),
        )
        .map_err(|e| RunError::Turmoil(e.to_string())),
    }
}
