//! Logs: stderr, plus `<data dir>/logs/mesh-node.log` for a serving node. `CLOSEDMESH_LOG` takes
//! an `EnvFilter` directive (default `info`: the per-request sample lines are info).

use anyhow::Context;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub fn init(log_file: Option<&Path>) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_from_env("CLOSEDMESH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let file_layer = match log_file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(Mutex::new(file)),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(file_layer)
        .try_init()
        .context("installing the log subscriber")
}
