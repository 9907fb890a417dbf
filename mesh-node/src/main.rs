//! `mesh-node`: serve | entry | invite | status.

use clap::Parser;
use mesh_node::config::{Cli, Command, ServeConfig};
use mesh_node::entry::{self, EntryConfig};
use mesh_node::{invite_cmd, logging, serve, status_cmd};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let cfg = ServeConfig::resolve(args)?;
            logging::init(Some(&serve::logs_dir(&cfg.data_dir).join("mesh-node.log")))?;
            serve::serve(cfg, shutdown_signal()).await
        }
        Command::Status(args) => status_cmd::run(args).await,
        Command::Entry(args) => {
            let cfg = EntryConfig::resolve(args)?;
            logging::init(Some(&serve::logs_dir(&cfg.data_dir).join("mesh-node.log")))?;
            entry::run(cfg, shutdown_signal()).await
        }
        Command::Invite(args) => invite_cmd::run(args),
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}
