//! `mesh-sim`: run a scenario file in virtual time and print its report.

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use mesh_sim::scenario::Scenario;
use mesh_sim::{Engine, RunOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mesh-sim",
    version,
    about = "ClosedMesh simulator: scenario files in, reports out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario to completion and print its report.
    Run {
        /// The scenario file (TOML, SPEC §10).
        file: PathBuf,
        /// Master seed; overrides the file's `seed`.
        #[arg(long, env = "MESH_SEED")]
        seed: Option<u64>,
        /// Print the report as JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Which engine runs the world.
        #[arg(long, value_enum, default_value_t = EngineArg::Des)]
        engine: EngineArg,
    },
    /// Print the calibration table (the contents of mesh-sim/CALIBRATION.md).
    Calibration,
}

#[derive(Clone, Copy, ValueEnum)]
enum EngineArg {
    /// Discrete-event world driving mesh-core directly.
    Des,
    /// The real node stack on turmoil (arrives with issue 5).
    Turmoil,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            file,
            seed,
            json,
            engine,
        } => {
            let scenario = Scenario::load(&file)?;
            let engine = match engine {
                EngineArg::Des => Engine::Des,
                EngineArg::Turmoil => Engine::Turmoil,
            };
            let report = mesh_sim::run(&scenario, RunOptions { seed, engine })
                .with_context(|| format!("cannot run {}", file.display()))?;
            if json {
                print!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
        }
        Command::Calibration => print!("{}", mesh_sim::calibration::render_markdown()),
    }
    Ok(())
}
