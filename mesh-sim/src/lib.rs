//! The ClosedMesh simulator: scenario files in, reports out.
//!
//! - [`scenario`]: the SPEC §10 file format, parsed strictly and validated.
//! - [`profile`]: GPU profiles — placement and the TTFT / decode physics.
//! - [`calibration`]: the published situations of SPEC §11 against the profiles.
//! - [`des`]: the discrete-event engine (`--engine des`).
//! - [`report`]: the engine-independent report, as text or JSON.
//! - [`rng`]: seeded streams derived from one master seed.

pub mod calibration;
pub mod des;
pub mod profile;
pub mod report;
pub mod rng;
pub mod scenario;

use report::Report;
use scenario::Scenario;

/// Which engine runs a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The discrete-event world: no tokio, mesh-core decisions called directly.
    Des,
    /// The real `mesh-node` stack on turmoil hosts (issue 5).
    Turmoil,
}

/// How to run a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Overrides the scenario's `seed`.
    pub seed: Option<u64>,
    pub engine: Engine,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("the turmoil engine arrives with issue 5; run with `--engine des`")]
    TurmoilNotYet,
}

/// Runs `scenario` to completion in virtual time.
pub fn run(scenario: &Scenario, options: RunOptions) -> Result<Report, RunError> {
    let seed = options.seed.unwrap_or(scenario.seed);
    match options.engine {
        Engine::Des => Ok(des::run(scenario, seed)),
        Engine::Turmoil => Err(RunError::TurmoilNotYet),
    }
}
