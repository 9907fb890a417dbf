//! `mesh-sim`: run a scenario file in virtual time and print its report; sweep it over seeds;
//! measure the fast engine at scale.

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use mesh_sim::scenario::Scenario;
use mesh_sim::{Engine, Extras, RunOptions};
use std::io::IsTerminal as _;
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
    /// Run one scenario to completion and print its report. Exits 1 when an invariant checker
    /// fails (the seed and every derived option go to stderr).
    Run {
        /// The scenario file (TOML, SPEC §10).
        file: PathBuf,
        /// Master seed; overrides the file's `seed`.
        #[arg(long, env = "MESH_SEED")]
        seed: Option<u64>,
        /// Print the report as JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Which engine runs the world [default: the file's `engine`, else turmoil].
        #[arg(long, value_enum)]
        engine: Option<EngineArg>,
        /// Write the report, every node's final /api/status and SVG plots to this directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a scenario once per seed and summarise the invariant violations.
    Sweep {
        file: PathBuf,
        /// Seeds as `A..B` (B exclusive) or `A..=B`.
        #[arg(long)]
        seeds: String,
        /// [default: the file's `engine`, else turmoil]
        #[arg(long, value_enum)]
        engine: Option<EngineArg>,
        #[arg(long)]
        json: bool,
    },
    /// Measure an engine: an N-peer mesh for H virtual hours with traffic and loss (wall time,
    /// peak memory, gossip figures).
    Bench {
        #[arg(long, value_enum, default_value_t = EngineArg::Des)]
        engine: EngineArg,
        #[arg(long, default_value_t = 1000)]
        peers: usize,
        #[arg(long, default_value_t = 1.0)]
        hours: f64,
        #[arg(long, default_value_t = 0.01)]
        loss: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        json: bool,
        /// Print the generated scenario as TOML instead of running it.
        #[arg(long)]
        print_scenario: bool,
    },
    /// Print the calibration table (the contents of mesh-sim/CALIBRATION.md).
    Calibration,
}

#[derive(Clone, Copy, ValueEnum)]
enum EngineArg {
    /// Discrete-event world driving mesh-core directly.
    Des,
    /// The real mesh-node stack on turmoil hosts and TCP, with simulated llama-servers (up to
    /// 40 peers; larger meshes run on des — their files say `engine = "des"`).
    Turmoil,
}

impl From<EngineArg> for Engine {
    fn from(e: EngineArg) -> Engine {
        match e {
            EngineArg::Des => Engine::Des,
            EngineArg::Turmoil => Engine::Turmoil,
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mesh-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A progress bar on stderr, only when stderr is a terminal.
fn progress_bar(len: u64, unit: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(len);
    let template = format!("{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit} {{msg}}");
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("a fixed, valid template")
            .progress_chars("=> "),
    );
    Some(bar)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            file,
            seed,
            json,
            engine,
            out,
        } => {
            let scenario = Scenario::load(&file)?;
            let bar = progress_bar(scenario.duration_s.ceil() as u64, "virtual s");
            let mut tick = |done: f64, _all: f64| {
                if let Some(b) = &bar {
                    b.set_position(done as u64);
                }
            };
            let extras = Extras {
                all_statuses: out.is_some(),
                progress: Some(&mut tick),
            };
            let outcome = mesh_sim::run_outcome(
                &scenario,
                RunOptions {
                    seed,
                    engine: engine.map_or_else(|| Engine::for_scenario(&scenario), Into::into),
                },
                extras,
            )
            .with_context(|| format!("cannot run {}", file.display()))?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            let report = &outcome.report;
            if json {
                print!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            if let Some(dir) = out {
                let files = mesh_sim::out::write(&dir, &outcome)
                    .with_context(|| format!("cannot write to {}", dir.display()))?;
                eprintln!("mesh-sim: wrote {} files to {}", files.len(), dir.display());
            }
            if report.checks.passed() {
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "mesh-sim: {} invariant violation(s) in {} with seed {}",
                report.checks.total(),
                file.display(),
                report.seed
            );
            for v in &report.checks.first {
                eprintln!("  at {:.1} s  {}: {}", v.at_s, v.rule, v.detail);
            }
            eprintln!("derived options:");
            for (k, v) in &outcome.derived {
                eprintln!("  {k}: {v}");
            }
            Ok(ExitCode::from(1))
        }
        Command::Sweep {
            file,
            seeds,
            engine,
            json,
        } => {
            let scenario = Scenario::load(&file)?;
            let range = mesh_sim::sweep::parse_seeds(&seeds).map_err(anyhow::Error::msg)?;
            let bar = progress_bar(range.end - range.start, "seeds");
            let mut tick = |done: u64, _all: u64| {
                if let Some(b) = &bar {
                    b.set_position(done);
                }
            };
            let engine = engine.map_or_else(|| Engine::for_scenario(&scenario), Into::into);
            let report = mesh_sim::sweep::sweep(&scenario, engine, range, Some(&mut tick))
                .with_context(|| format!("cannot run {}", file.display()))?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            if json {
                print!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            Ok(if report.failing_seeds.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Bench {
            engine,
            peers,
            hours,
            loss,
            seed,
            json,
            print_scenario,
        } => {
            if print_scenario {
                let s = mesh_sim::bench::scale_scenario(peers, hours, loss, seed);
                print!(
                    "{}",
                    toml::to_string(&s).context("cannot render the scenario")?
                );
                return Ok(ExitCode::SUCCESS);
            }
            let bar = progress_bar((hours * 3600.0).ceil() as u64, "virtual s");
            let mut tick = |done: f64, _all: f64| {
                if let Some(b) = &bar {
                    b.set_position(done as u64);
                }
            };
            let figures =
                mesh_sim::bench::run(engine.into(), peers, hours, loss, seed, Some(&mut tick))?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&figures).context("cannot render figures")?
                );
            } else {
                print!("{}", figures.to_text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Calibration => {
            print!("{}", mesh_sim::calibration::render_markdown());
            Ok(ExitCode::SUCCESS)
        }
    }
}
