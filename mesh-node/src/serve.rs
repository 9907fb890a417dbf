//! `mesh-node serve`: the node's wiring. Bind the API, start a supervisor per model, serve until
//! asked to stop, then stop every child before returning.

use crate::api::{NodeApi, router};
use crate::backend::Backends;
use crate::clock::Clock;
use crate::config::ServeConfig;
use crate::facts::Measurements;
use crate::launcher::{SpecFor, run_solo_duties};
use crate::local_status::{NodeInfo, own_announcement};
use crate::mesh::{ContentSource, Mesh, MeshOptions, MeshStreams, os_seed, read_invite};
use crate::milestones::Milestones;
use crate::native::{NativeSettings, PublishedBaselines};
use crate::pidfile::{Reaped, reap_orphans};
use crate::pipeline::{RunningPipelines, ServingContext, run_duties};
use crate::proxy::{ChatProxy, Recorder};
use crate::rpc::{RpcServerSpec, RpcServerState, serve_rpc_tunnels, supervise_rpc_server};
use crate::supervise::{LlamaSpec, LocalModel, STOP_GRACE};
use crate::transport::iroh::IrohTransport;
use crate::tunnel::TunnelListener;
use crate::{device, http_serve, identity, milestones, native};
use anyhow::{Context, bail};
use mesh_core::invite;
use mesh_core::launch::Placement;
use mesh_core::peer::{GB, PeerAnnouncement};
use mesh_core::sla::TierCatalog;
use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
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
    let join = cfg
        .join
        .as_deref()
        .map(read_invite)
        .transpose()
        .context("--join")?;
    let identity = identity::load_or_create(&cfg.data_dir)
        .with_context(|| format!("node key in {}", cfg.data_dir.display()))?;
    let hosting = Hosting::prepare(HostingConfig::from(&cfg), identity.peer_id).await?;

    // The mesh: founded, rejoined or joined; this node's announcement is its own state.
    let transport = IrohTransport::bind_node(identity.secret, cfg.relay.clone()).await?;
    let content: ContentSource = Arc::new(hosting.announcer());
    let (mesh, tunnels) = Mesh::start(
        Arc::new(transport),
        hosting.clock(),
        identity.secret,
        MeshOptions::new(&cfg.data_dir, join, os_seed()?),
        content,
    )
    .await?;
    match mesh.write_invite_file(invite::DEFAULT_TTL) {
        Ok(path) => {
            tracing::info!(path = %path.display(), "an invite to this mesh is in the data dir")
        }
        Err(e) => tracing::warn!(error = %e, "could not write an invite to the data dir"),
    }

    let listener = TcpListener::bind(cfg.api_addr)
        .await
        .with_context(|| format!("binding the API to {}", cfg.api_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "API listening");
    let (stop_tx, stop_rx) = watch::channel(false);
    let running = hosting.start(&mesh, tunnels, stop_rx).await?;

    http_serve::serve(
        http_serve::nodelay(listener),
        router(running.api.clone()),
        shutdown,
    )
    .await;
    tracing::info!("shutting down: leaving the mesh, stopping llama-server processes");
    mesh.shutdown().await;
    let _ = stop_tx.send(true);
    running.stopped().await;
    tracing::info!("stopped");
    Ok(())
}

/// What a node needs to run models in the mesh (`serve`, or an entry that also serves).
#[derive(Debug, Clone, PartialEq)]
pub struct HostingConfig {
    pub models: Vec<PathBuf>,
    pub data_dir: PathBuf,
    /// The port this node's API listens on (what a host advertises).
    pub api_port: u16,
    pub max_vram_gb: Option<f64>,
    pub llama_server: PathBuf,
    pub rpc_server: Option<PathBuf>,
    pub llama_threads: Option<u32>,
    pub first_byte_timeout: Duration,
    pub baseline_settle: Duration,
}

impl From<&ServeConfig> for HostingConfig {
    fn from(cfg: &ServeConfig) -> Self {
        HostingConfig {
            models: cfg.models.clone(),
            data_dir: cfg.data_dir.clone(),
            api_port: cfg.api_addr.port(),
            max_vram_gb: cfg.max_vram_gb,
            llama_server: cfg.llama_server.clone(),
            rpc_server: cfg.rpc_server.clone(),
            llama_threads: cfg.llama_threads,
            first_byte_timeout: cfg.first_byte_timeout,
            baseline_settle: cfg.baseline_settle,
        }
    }
}

/// A node's hosting side before it joins the mesh: its models, device, backends and
/// measurements, from which its announcement is built.
pub struct Hosting {
    cfg: HostingConfig,
    models: Vec<LocalModel>,
    probe: device::Probe,
    advertised: u64,
    info: NodeInfo,
    clock: Clock,
    recorder: Arc<Recorder>,
    backends: Arc<Backends>,
    measurements: Measurements,
    rpc_state: Arc<RpcServerState>,
    pipelines: Arc<RunningPipelines>,
}

/// A node's hosting side, running: its API state and the supervisors.
pub struct RunningHosting {
    pub api: Arc<NodeApi>,
    supervisors: JoinSet<()>,
}

impl RunningHosting {
    /// Waits for every supervisor (and so every child process) to stop; call after the stop
    /// signal given to [`Hosting::start`].
    pub async fn stopped(mut self) {
        while self.supervisors.join_next().await.is_some() {}
    }
}

impl Hosting {
    /// Reaps orphans of an earlier run, reads the model files, probes the device.
    pub async fn prepare(
        cfg: HostingConfig,
        node_id: mesh_core::PeerId,
    ) -> anyhow::Result<Hosting> {
        let run = run_dir(&cfg.data_dir);
        for report in reap_orphans(&run, STOP_GRACE).await {
            if let Reaped::Unreadable { path } = report {
                tracing::warn!(path = %path.display(), "ignored an unreadable pidfile");
            }
        }
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
            node_id = %node_id,
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
        let info = NodeInfo {
            node_id,
            mesh_id: String::new(),
            hostname: probe.hostname.clone(),
            backend: probe.device.backend,
            gpu_name: probe.gpu_name.clone(),
            fast_memory_bytes: advertised,
            system_ram_bytes: probe.system_ram_bytes,
            http_port: cfg.api_port,
        };
        Ok(Hosting {
            // Split duties: this node's rpc-server (when it has the binary) and the pipelines
            // it hosts.
            rpc_state: Arc::new(RpcServerState::new(cfg.rpc_server.is_some())),
            pipelines: Arc::new(RunningPipelines::default()),
            cfg,
            models,
            probe,
            advertised,
            info,
            clock,
            recorder,
            backends,
            measurements,
        })
    }

    /// The clock this node's measurements run on (the mesh should run on it too).
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// This node's backends (which models run here, and their upstreams).
    pub fn backends(&self) -> &Arc<Backends> {
        &self.backends
    }

    /// This node's announcement as its hosting side makes it, now (the mesh's content source).
    pub fn announcer(&self) -> impl Fn() -> PeerAnnouncement + Send + Sync + 'static {
        let (info, backends) = (self.info.clone(), self.backends.clone());
        let (recorder, measurements) = (self.recorder.clone(), self.measurements.clone());
        let (rpc_state, pipelines) = (self.rpc_state.clone(), self.pipelines.clone());
        move || {
            let mut a = own_announcement(&info, &backends.list(), &measurements.facts(&recorder));
            a.rpc_ready = rpc_state.rpc_ready();
            a.pipelines = pipelines.announced(&backends);
            a
        }
    }

    /// Starts what the election says to serve, now and later, the native-baseline collector,
    /// and this node's API on the HTTP tunnels members open to it. Everything stops when `stop`
    /// turns true ([`RunningHosting::stopped`] waits for it).
    pub async fn start(
        self,
        mesh: &Arc<Mesh>,
        tunnels: MeshStreams,
        stop_rx: watch::Receiver<bool>,
    ) -> anyhow::Result<RunningHosting> {
        let Hosting {
            cfg,
            models,
            probe,
            advertised,
            mut info,
            clock: _,
            recorder,
            backends,
            measurements,
            rpc_state,
            pipelines,
        } = self;
        let run = run_dir(&cfg.data_dir);
        info.mesh_id = mesh.mesh_id().to_string();

        // Launch outcomes feed the election's backoff: a model that keeps failing here goes to
        // another host for a while.
        let mut launches = backends.launch_events();
        tokio::spawn({
            let mesh = mesh.clone();
            async move {
                while let Some(event) = launches.recv().await {
                    mesh.launch_event(event);
                }
            }
        });

        let api = Arc::new(NodeApi {
            info,
            backends: backends.clone(),
            proxy: ChatProxy::new(recorder.clone()).with_first_byte_timeout(cfg.first_byte_timeout),
            measurements: measurements.clone(),
            tiers: TierCatalog::default(),
            mesh: Some(mesh.clone()),
        });

        let mut supervisors = JoinSet::new();
        let (server_events, server_events_rx) = mpsc::unbounded_channel();
        let split_events = server_events.clone();
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
        // Members' HTTP tunnels reach this node's own API: the backend proxy, which records the
        // through-mesh samples of tunnelled chats like any other.
        supervisors.spawn(http_serve::serve(
            TunnelListener::new(tunnels.http, mesh.me()),
            router(api.clone()),
            wait_stop(stop_rx.clone()),
        ));
        // What the election says to serve solo, now and later (split duties below).
        let spec_for: SpecFor = {
            let (cfg, run, probe) = (cfg.clone(), run.clone(), probe.clone());
            Box::new(move |model, spill| LlamaSpec {
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
            })
        };
        // Split duties: the split host's llama-server over RPC tunnels, this node's rpc-server
        // while the election wants it, and the RPC streams only its elected split hosts may open.
        let split_ctx = ServingContext {
            llama_server: cfg.llama_server.clone(),
            threads: cfg.llama_threads,
            no_mmap: probe.no_mmap,
            device: probe.device,
            advertised_memory_bytes: advertised,
            logs_dir: logs_dir(&cfg.data_dir),
            run_dir: run.clone(),
            models: models.iter().map(|m| (m.name.clone(), m.clone())).collect(),
            backends: backends.clone(),
            server_events: Some(split_events),
            transport: Some(mesh.transport().clone()),
            rpc_wanted: Arc::new(watch::channel(false).0),
            pipelines: pipelines.clone(),
        };
        if let Some(program) = &cfg.rpc_server {
            supervisors.spawn(supervise_rpc_server(
                RpcServerSpec {
                    program: program.clone(),
                    threads: cfg.llama_threads,
                    logs_dir: logs_dir(&cfg.data_dir),
                    run_dir: run.clone(),
                },
                split_ctx.rpc_wanted.subscribe(),
                rpc_state.clone(),
                stop_rx.clone(),
            ));
        }
        supervisors.spawn(serve_rpc_tunnels(
            tunnels.rpc,
            mesh.election(),
            rpc_state.clone(),
        ));
        let view = {
            let mesh = mesh.clone();
            Arc::new(move || mesh.view())
        };
        supervisors.spawn(run_duties(
            split_ctx,
            mesh.election(),
            view,
            stop_rx.clone(),
        ));
        supervisors.spawn(run_solo_duties(
            models,
            mesh.election(),
            spec_for,
            backends.clone(),
            stop_rx.clone(),
        ));
        Ok(RunningHosting { api, supervisors })
    }
}

async fn wait_stop(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
