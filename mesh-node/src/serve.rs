//! `mesh-node serve`: the node's wiring. Bind the API, start a supervisor per model, serve until
//! asked to stop, then stop every child before returning.

use crate::api::{NodeApi, router};
use crate::backend::Backends;
use crate::clock::Clock;
use crate::config::ServeConfig;
use crate::facts::Measurements;
use crate::local_status::NodeInfo;
use crate::milestones::Milestones;
use crate::native::{NativeSettings, PublishedBaselines};
use crate::pidfile::{Reaped, reap_orphans};
use crate::proxy::{ChatProxy, Recorder};
use crate::supervise::{LlamaSpec, LocalModel, STOP_GRACE, supervise_llama};
use crate::{device, http_serve, identity, milestones, native};
use anyhow::{Context, bail};
use mesh_core::election::can_hold_solo;
use mesh_core::launch::Placement;
use mesh_core::peer::GB;
use mesh_core::sla::TierCatalog;
use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// `<data dir>/logs/`.
pub fn logs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("logs")
}

/// `<data dir>/run/` (pidfiles).
pub fn run_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("run")
}

/// Runs the node until `shutdown` resolves.
pub async fn serve(cfg: ServeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if cfg.join.is_some() {
        bail!(
            "--join is not implemented yet: joining a mesh over iroh arrives with issue 4; \
             without --join this node serves its own models"
        );
    }
    let run = run_dir(&cfg.data_dir);
    for report in reap_orphans(&run, STOP_GRACE).await {
        if let Reaped::Unreadable { path } = report {
            tracing::warn!(path = %path.display(), "ignored an unreadable pidfile");
        }
    }
    let identity = identity::load_or_create(&cfg.data_dir)
        .with_context(|| format!("node key in {}", cfg.data_dir.display()))?;

    let mut models = Vec::new();
    let mut names = BTreeSet::new();
    for path in &cfg.models {
        let m = LocalModel::from_path(path)
            .with_context(|| format!("model file {}", path.display()))?;
        if !names.insert(m.name.clone()) {
            bail!("two model files are both named {:?}", m.name);
        }
        models.push(m);
    }

    let probe = device::probe(&cfg.llama_server).await?;
    let advertised = match cfg.max_vram_gb {
        Some(gb) => probe.device.memory_bytes.min((gb * GB) as u64),
        None => probe.device.memory_bytes,
    };
    tracing::info!(
        node_id = %identity.peer_id,
        backend = %probe.device.backend,
        gpu = %probe.gpu_name,
        device_memory_gb = format_args!("{:.1}", probe.device.memory_bytes as f64 / GB),
        advertised_gb = format_args!("{:.1}", advertised as f64 / GB),
        "node starting"
    );

    let clock = Clock::system();
    let recorder = Arc::new(Recorder::new(clock));
    let backends = Arc::new(Backends::new());
    for m in &models {
        backends.add(&m.name, m.size_bytes);
    }
    let measurements = Measurements {
        native: Arc::new(PublishedBaselines::default()),
        milestones: Arc::new(Milestones::load(&cfg.data_dir)),
    };
    let api = Arc::new(NodeApi {
        info: NodeInfo {
            node_id: identity.peer_id,
            mesh_id: String::new(),
            hostname: probe.hostname.clone(),
            backend: probe.device.backend,
            gpu_name: probe.gpu_name.clone(),
            fast_memory_bytes: advertised,
            system_ram_bytes: probe.system_ram_bytes,
            http_port: cfg.api_addr.port(),
        },
        backends: backends.clone(),
        proxy: ChatProxy::new(recorder.clone()).with_first_byte_timeout(cfg.first_byte_timeout),
        measurements: measurements.clone(),
        tiers: TierCatalog::default(),
    });

    let listener = TcpListener::bind(cfg.api_addr)
        .await
        .with_context(|| format!("binding the API to {}", cfg.api_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "API listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut supervisors = JoinSet::new();
    let (server_events, server_events_rx) = mpsc::unbounded_channel();
    let native_settings = NativeSettings {
        settle: cfg.baseline_settle,
        file_poll: native::FILE_POLL,
        runtime_version: native::runtime_version(&cfg.llama_server).await,
        backend: probe.device.backend,
        data_dir: cfg.data_dir.clone(),
        // Fresh nonces every run: a prompt llama-server has cached would flatter TTFT.
        seed: {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("OS entropy: {e}"))?;
            u64::from_le_bytes(b)
        },
    };
    supervisors.spawn(native::run(
        native_settings,
        server_events_rx,
        recorder.clone(),
        measurements.native.clone(),
        stop_rx.clone(),
    ));
    supervisors.spawn(milestones::run(
        measurements.milestones.clone(),
        recorder.clone(),
        stop_rx.clone(),
    ));
    for model in models {
        let spill = !can_hold_solo(probe.device.memory_bytes, Some(model.size_bytes));
        if spill {
            tracing::warn!(model = %model.name, "model is larger than 1.1 × fast memory: serving it with weights paged from RAM (mmap spill), expect it to be slow");
        }
        let spec = LlamaSpec {
            program: cfg.llama_server.clone(),
            model,
            device: probe.device,
            placement: Placement::Solo { spill },
            threads: cfg.llama_threads,
            no_mmap: probe.no_mmap,
            logs_dir: crate::serve::logs_dir(&cfg.data_dir),
            run_dir: run.clone(),
            events: Some(server_events.clone()),
            extra_args: Vec::new(),
        };
        supervisors.spawn(supervise_llama(spec, backends.clone(), stop_rx.clone()));
    }

    http_serve::serve(listener, router(api), shutdown).await;
    tracing::info!("shutting down: stopping llama-server processes");
    let _ = stop_tx.send(true);
    while supervisors.join_next().await.is_some() {}
    tracing::info!("stopped");
    Ok(())
}
