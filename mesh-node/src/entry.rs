//! `mesh-node entry`: the public API of the mesh, its audit loop, and optionally a host too.
//!
//! A chat for a model goes through mesh-core's SLA gate ([`sla::evaluate`], with this entry's own
//! per-(peer, model) measurements preferred), its fallback decision, and then mesh-core's routing
//! order ([`Router`]): each target is tried over the HTTP tunnel until one answers; a target that
//! fails before the first byte is retried on the next and counted towards its demotion. Every
//! response carries the `x-closedmesh-*` headers ([`sla::response_headers`]) and
//! `x-closedmesh-peer` (ours: the short id of the peer that served it).
//!
//! The entry times every stream it proxies with the same [`ChatProxy`]/[`Recorder`] code as a host
//! (one recorder per peer), feeding [`EntrySamples`].
//!
//! The external provider sits behind the [`Fallback`] seam; `mesh-node entry` plugs in
//! [`OpenAiProvider`](crate::fallback::OpenAiProvider). Without one, the fallback policy has no
//! API key, so every decision that would fire reads `fallback-disabled` and the request stays on
//! the mesh. Budgets and `mesh_share_pct` counters live in [`Accounting`] (memory, the data dir,
//! or Redis); every answered chat is counted there (2xx only: a refusal served nobody) and in
//! [`ChatCounters`] for `/metrics`.
//!
//! **Audits** ([`crate::audit`], SPEC §7): every entry runs the audit loop on its mesh view;
//! verdicts show in `/api/status` `verify_by_model`, and in enforce mode the router skips demoted
//! (peer, model) pairs while another target remains.
//!
//! **An entry that serves** (`--model`): the same [`Hosting`] as `serve` (supervised
//! llama-servers, native baselines, its API on the mesh's HTTP tunnels); the router counts the
//! entry itself among a model's targets and reaches its own API in-process, and its own
//! llama-servers are the audits' ground truth.
//!
//! Routes: `POST /v1/chat/completions` and `POST /api/chat` (the testbed path: the model may be
//! omitted and resolves through [`sla::default_model`]) behind the API keys of [`crate::auth`];
//! open: `GET /v1/models`, `/api/status`, `/api/models`, `/api/mesh-share`, `/metrics`,
//! `/status`, `/dashboard`.

use crate::api::{NodeApi, read_json_object};
use crate::audit::{self, EntryAudit, ProbeFuture, ProbeSides};
use crate::auth::{self, ApiKeys, KeyGuard};
use crate::backend::BackendState;
use crate::clock::Clock;
use crate::config::{DEFAULT_API_ADDR, EntryArgs, RelayMode, default_data_dir, find_on_path};
use crate::dial::{BoxIo, Dial, Upstream};
use crate::error::ApiError;
use crate::fallback::{FallbackFile, OpenAiProvider, ProviderSettings};
use crate::mesh::{ContentSource, Mesh, MeshOptions, os_seed, read_invite};
use crate::metrics::{self, ChatCounters, OTHER_MODEL, Scrape};
use crate::milestones::Milestones;
use crate::native;
use crate::pages::{self, PageSource};
use crate::proxy::{ChatProxy, Recorder, RecorderEvent};
use crate::serve::{Hosting, HostingConfig};
use crate::share_store::{Accounting, ShareSnapshot, StoreConfig};
use crate::transport::iroh::IrohTransport;
use crate::transport::{Inbound, StreamKind};
use crate::tunnel::TunnelListener;
use crate::tunnel::peer_upstream;
use crate::{device, http_serve, identity};
use anyhow::{Context as _, bail};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, Response, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router as AxumRouter, middleware};
use bytes::Bytes;
use futures::future::BoxFuture;
use hyper::body::{Frame, SizeHint};
use mesh_core::election::{DemandMeter, Plan};
use mesh_core::invite;
use mesh_core::peer::ModelName;
use mesh_core::peer::{ModelDemand, PeerAnnouncement, Role};
use mesh_core::routing::{RouteConfig, Router, next_attempt};
use mesh_core::sla::{
    self, BudgetLeft, EntrySamples, Evaluation, FallbackConfig, FallbackDecision, FallbackTrigger,
    OverBudget, ServedBy, SlaConfig, TierTargets,
};
use mesh_core::status::VerifyMode;
use mesh_core::status::{
    CatalogPayload, LocalFacts, StatusPayload, catalog_payload, status_payload,
};
use mesh_core::verify::{AuditConfig, AuditConfigError, AuditProbe, ProbeFailed};
use mesh_core::{MeshView, PeerId, Timestamp};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// The `--config` TOML file of an entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryFile {
    pub join: Option<String>,
    pub api_addr: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub relay: Option<RelayMode>,
    pub first_byte_timeout_s: Option<u64>,
    /// Routing knobs (`force_split`, demotion); `CLOSEDMESH_FORCE_SPLIT_ROUTING=1` also sets
    /// `force_split`.
    pub route: Option<RouteConfig>,
    /// SLA gate knobs (tier overrides, targets, minimum samples, maximum age).
    pub sla: Option<SlaConfig>,
    /// The external provider (`[fallback]`: provider, base_url, api_key_file, model_map,
    /// per_ip_per_hour, first_byte_timeout_s).
    pub fallback: Option<FallbackFile>,
    /// Redis for counters and budgets shared by several entries (else the data dir).
    pub redis_url: Option<String>,
    /// Prefix of this deployment's Redis keys [default: closedmesh].
    pub redis_prefix: Option<String>,
    /// Inference API keys, one per line.
    pub api_keys_file: Option<PathBuf>,
    /// The `/api/chat` default when it is a served daily-driver (an operator pin).
    pub default_model: Option<String>,
    /// GGUF files the entry also serves itself (see `--model`).
    pub models: Option<Vec<PathBuf>>,
    pub llama_server: Option<PathBuf>,
    pub rpc_server: Option<PathBuf>,
    pub llama_threads: Option<u32>,
    pub max_vram_gb: Option<f64>,
    pub baseline_settle_s: Option<f64>,
    /// Mean seconds between audits.
    pub audit_interval_s: Option<f64>,
    /// `observe` | `enforce`.
    pub verify_mode: Option<VerifyMode>,
}

/// The Redis key prefix unless configured.
pub const DEFAULT_REDIS_PREFIX: &str = "closedmesh";

/// `entry`'s settings after merging flags/env over the file over the defaults.
#[derive(Debug, Clone)]
pub struct EntryConfig {
    pub join: Option<String>,
    pub api_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub relay: RelayMode,
    pub settings: EntrySettings,
    pub provider: ProviderSettings,
    /// Where mesh-share counters (and, with Redis, budgets) are kept.
    pub store: StoreConfig,
    /// The models the entry also serves, and how (`None`: it serves none).
    pub hosting: Option<HostingConfig>,
    /// The audit loop's configuration (SPEC §7).
    pub audit: AuditConfig,
}

impl EntryConfig {
    pub fn resolve(args: EntryArgs) -> anyhow::Result<EntryConfig> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                toml::from_str::<EntryFile>(&text)
                    .with_context(|| format!("parsing config {}", path.display()))?
            }
            None => EntryFile::default(),
        };
        let mut route = file.route.unwrap_or_default();
        if std::env::var("CLOSEDMESH_FORCE_SPLIT_ROUTING").is_ok_and(|v| v == "1") {
            route.force_split = true;
        }
        let first_byte_timeout = Duration::from_secs(
            args.first_byte_timeout_s
                .or(file.first_byte_timeout_s)
                .unwrap_or(route.first_byte_timeout_secs),
        );
        // Secrets come from the environment or files, never from flags.
        let provider = ProviderSettings::resolve(
            file.fallback.unwrap_or_default(),
            args.fallback_base_url,
            std::env::var("CLOSEDMESH_FALLBACK_API_KEY").ok(),
            args.fallback_api_key_file,
        )?;
        let api_keys = ApiKeys::load(
            std::env::var("CLOSEDMESH_API_KEYS").ok().as_deref(),
            args.api_keys_file.or(file.api_keys_file).as_deref(),
        )?;
        let data_dir = match args.data_dir.or(file.data_dir) {
            Some(d) => d,
            None => default_data_dir()?,
        };
        let store = match args.redis_url.or(file.redis_url) {
            Some(url) => StoreConfig::Redis {
                url,
                prefix: file
                    .redis_prefix
                    .unwrap_or_else(|| DEFAULT_REDIS_PREFIX.to_string()),
            },
            None => StoreConfig::Disk {
                data_dir: data_dir.clone(),
            },
        };
        let models = if args.models.is_empty() {
            file.models.unwrap_or_default()
        } else {
            args.models
        };
        let api_addr = args.api_addr.or(file.api_addr).unwrap_or_else(|| {
            DEFAULT_API_ADDR
                .parse()
                .expect("the default address parses")
        });
        let hosting = if models.is_empty() {
            None
        } else {
            let llama_server = match args.llama_server.or(file.llama_server) {
                Some(p) => p,
                None => find_on_path(&["llama-server"]).context(
                    "llama-server not found (the entry serves --model): pass --llama-server PATH, \
                     set CLOSEDMESH_LLAMA_SERVER, or run scripts/setup-real-parts.sh",
                )?,
            };
            let baseline_settle = match args.baseline_settle_s.or(file.baseline_settle_s) {
                None => mesh_core::baseline::SETTLE,
                Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
                Some(s) => bail!("--baseline-settle-s must be a non-negative number, got {s}"),
            };
            let max_vram_gb = args.max_vram_gb.or(file.max_vram_gb);
            if let Some(gb) = max_vram_gb
                && !(gb.is_finite() && gb >= 0.0)
            {
                bail!("--max-vram-gb must be a non-negative number, got {gb}");
            }
            Some(HostingConfig {
                models,
                data_dir: data_dir.clone(),
                api_port: api_addr.port(),
                max_vram_gb,
                llama_server,
                rpc_server: args
                    .rpc_server
                    .or(file.rpc_server)
                    .or_else(|| find_on_path(&["rpc-server", "ggml-rpc-server"])),
                llama_threads: args.llama_threads.or(file.llama_threads),
                first_byte_timeout: crate::proxy::DEFAULT_FIRST_BYTE_TIMEOUT,
                baseline_settle,
            })
        };
        let mut audit = AuditConfig::default();
        match args.audit_interval_s.or(file.audit_interval_s) {
            None => {}
            Some(s) if s.is_finite() && s > 0.0 => audit.interval = Duration::from_secs_f64(s),
            Some(s) => bail!("--audit-interval-s must be a positive number, got {s}"),
        }
        if let Some(mode) = args.verify_mode.or(file.verify_mode) {
            audit.enforcement.mode = mode;
        }
        Ok(EntryConfig {
            hosting,
            audit,
            join: args.join.or(file.join),
            api_addr,
            data_dir,
            relay: args.relay.or(file.relay).unwrap_or(RelayMode::Default),
            settings: EntrySettings {
                route,
                sla: file.sla.unwrap_or_default(),
                first_byte_timeout,
                api_keys,
                default_model: file.default_model,
            },
            provider,
            store,
        })
    }
}

/// Runs an entry until `shutdown` resolves: joins (or founds) the mesh, serves the public API,
/// then leaves the mesh.
pub async fn run(cfg: EntryConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let join = cfg
        .join
        .as_deref()
        .map(read_invite)
        .transpose()
        .context("--join")?;
    let identity = identity::load_or_create(&cfg.data_dir)
        .with_context(|| format!("node key in {}", cfg.data_dir.display()))?;
    let me = identity.peer_id;
    // An entry that serves models is a host like `serve`'s, with the same supervised
    // llama-servers; its announcement is a host's (plus the demand it measures).
    let hosting = match cfg.hosting.clone() {
        Some(h) => Some(Hosting::prepare(h, me).await?),
        None => None,
    };
    let clock = hosting.as_ref().map_or_else(Clock::system, Hosting::clock);
    let transport = IrohTransport::bind_node(identity.secret, cfg.relay.clone()).await?;
    let hostname = device::hostname();
    // The entry exists only once the mesh does; until then it has routed nothing.
    let entry_slot: Arc<OnceLock<Arc<Entry>>> = Arc::default();
    let content: ContentSource = {
        let entry_slot = entry_slot.clone();
        let own: Box<dyn Fn() -> PeerAnnouncement + Send + Sync> = match &hosting {
            Some(h) => Box::new(h.announcer()),
            None => Box::new(move || {
                let mut a = PeerAnnouncement::new(me, String::new(), Role::Client);
                a.hostname.clone_from(&hostname);
                a
            }),
        };
        Arc::new(move || {
            let mut a = own();
            if let Some(entry) = entry_slot.get() {
                a.demand = entry.demand(clock.now());
            }
            a
        })
    };
    let (mesh, tunnels) = Mesh::start(
        Arc::new(transport),
        clock,
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
    let provider = OpenAiProvider::new(cfg.provider)?;
    let policy = provider.config().clone();
    tracing::info!(
        provider = %policy.provider,
        url = provider.url(),
        api_key_configured = policy.api_key_configured,
        mapped_models = policy.model_map.len(),
        per_ip_per_hour = policy.per_ip_per_hour,
        "fallback provider"
    );
    let accounting =
        Accounting::open(cfg.store, policy.per_ip_per_hour, mesh.gossip().clock()).await?;
    tracing::info!(
        store = accounting.kind().as_str(),
        api_keys = cfg.settings.api_keys.len(),
        "mesh-share counters and fallback budgets"
    );
    let entry = Entry::with_services(
        mesh.clone(),
        cfg.settings,
        EntryServices {
            fallback: Some(Arc::new(provider)),
            accounting: accounting.clone(),
            milestones: Arc::new(Milestones::load(&cfg.data_dir)),
        },
    );
    let _ = entry_slot.set(entry.clone());
    let listener = TcpListener::bind(cfg.api_addr)
        .await
        .with_context(|| format!("binding the API to {}", cfg.api_addr))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let running = match hosting {
        Some(h) => {
            let running = h.start(&mesh, tunnels, stop_rx.clone()).await?;
            entry.serve_locally(running.api.clone(), stop_rx.clone());
            Some(running)
        }
        None => {
            drop(tunnels);
            None
        }
    };
    let audit = entry
        .start_audit(cfg.audit, os_seed()?, stop_rx.clone())
        .context("the audit configuration")?;
    tracing::info!(
        mode = ?audit.mode(),
        serves = running.is_some(),
        "audit loop running"
    );
    tracing::info!(addr = %listener.local_addr()?, node_id = %me, "entry API listening");
    http_serve::serve(http_serve::nodelay(listener), router(entry), shutdown).await;
    tracing::info!("shutting down: leaving the mesh");
    accounting.flush().await;
    mesh.shutdown().await;
    let _ = stop_tx.send(true);
    if let Some(r) = running {
        r.stopped().await;
    }
    Ok(())
}

/// Ours: the short id of the peer that served the response (absent when none did).
pub const PEER_HEADER: &str = "x-closedmesh-peer";

/// The external OpenAI-compatible provider ([`OpenAiProvider`] in production).
pub trait Fallback: Send + Sync + 'static {
    /// The policy the fallback decision reads: provider name, whether a key is configured, the
    /// model mapping, the per-IP budget.
    fn config(&self) -> &FallbackConfig;
    /// Serves `request` at the provider as `decision.provider_model`, streaming exactly as the
    /// mesh does. Called only for a decision that fired.
    fn chat(
        &self,
        decision: &FallbackDecision,
        request: Map<String, Value>,
    ) -> BoxFuture<'static, Response<Body>>;
}

/// What an entry is configured with (beyond its mesh).
#[derive(Debug, Clone)]
pub struct EntrySettings {
    pub route: RouteConfig,
    pub sla: SlaConfig,
    /// How long a target may take to send its response head.
    pub first_byte_timeout: Duration,
    /// Keys the chat endpoints require (none: open).
    pub api_keys: ApiKeys,
    /// The operator's preferred `/api/chat` default.
    pub default_model: Option<String>,
}

impl Default for EntrySettings {
    fn default() -> Self {
        let route = RouteConfig::default();
        EntrySettings {
            first_byte_timeout: route.first_byte_timeout(),
            route,
            sla: SlaConfig::default(),
            api_keys: ApiKeys::open(),
            default_model: None,
        }
    }
}

/// What an entry runs with besides its mesh and settings.
pub struct EntryServices {
    pub fallback: Option<Arc<dyn Fallback>>,
    /// Mesh-share counters and fallback budgets.
    pub accounting: Arc<Accounting>,
    /// First-serve milestones of the models this entry routed to the mesh.
    pub milestones: Arc<Milestones>,
}

/// The entry's state. Cheap to share.
pub struct Entry {
    mesh: Arc<Mesh>,
    clock: Clock,
    settings: EntrySettings,
    router: Mutex<Router>,
    fallback: Option<Arc<dyn Fallback>>,
    fallback_config: FallbackConfig,
    accounting: Arc<Accounting>,
    milestones: Arc<Milestones>,
    counters: ChatCounters,
    samples: Arc<Mutex<EntrySamples>>,
    proxies: Mutex<BTreeMap<PeerId, ChatProxy>>,
    /// The chats this entry routed lately, announced so the mesh can add hosts under demand.
    demand: Arc<Mutex<DemandMeter>>,
    /// This node's own API, when the entry also serves models ([`Entry::serve_locally`]).
    local: OnceLock<LocalHost>,
    /// The audit loop's state ([`Entry::start_audit`]).
    audit: OnceLock<Arc<EntryAudit>>,
}

/// The entry's own host side: its API, reached in-process as chats to other hosts are reached
/// through tunnels (the same router, backend proxy and samples).
struct LocalHost {
    api: Arc<NodeApi>,
    upstream: Upstream,
}

/// Opens in-process HTTP streams to this node's own API (served on a [`TunnelListener`]).
struct LocalDialer {
    me: PeerId,
    streams: mpsc::Sender<Inbound>,
}

impl Dial for LocalDialer {
    fn dial(&self) -> BoxFuture<'static, std::io::Result<BoxIo>> {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (me, streams) = (self.me, self.streams.clone());
        Box::pin(async move {
            let inbound = Inbound {
                peer: me,
                kind: StreamKind::Http,
                stream: Box::new(theirs),
            };
            streams.send(inbound).await.map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "this node's own API has stopped",
                )
            })?;
            Ok(Box::new(ours) as BoxIo)
        })
    }

    fn authority(&self) -> String {
        format!("{}.closedmesh", self.me.short())
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("mesh", &self.mesh)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each guarded value is updated by whole operations; a poisoned one is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Entry {
    /// An entry whose counters, budgets and milestones live in memory.
    pub fn new(
        mesh: Arc<Mesh>,
        settings: EntrySettings,
        fallback: Option<Arc<dyn Fallback>>,
    ) -> Arc<Entry> {
        let limit = fallback.as_ref().map_or_else(
            || FallbackConfig::default().per_ip_per_hour,
            |f| f.config().per_ip_per_hour,
        );
        let accounting = Accounting::in_memory(limit, mesh.gossip().clock());
        Self::with_services(
            mesh,
            settings,
            EntryServices {
                fallback,
                accounting,
                milestones: Arc::new(Milestones::in_memory()),
            },
        )
    }

    pub fn with_services(
        mesh: Arc<Mesh>,
        settings: EntrySettings,
        services: EntryServices,
    ) -> Arc<Entry> {
        let fallback_config = match &services.fallback {
            Some(f) => f.config().clone(),
            None => FallbackConfig {
                api_key_configured: false,
                ..FallbackConfig::default()
            },
        };
        Arc::new(Entry {
            clock: mesh.gossip().clock(),
            mesh,
            router: Mutex::new(Router::new(settings.route.clone())),
            settings,
            fallback: services.fallback,
            fallback_config,
            accounting: services.accounting,
            milestones: services.milestones,
            counters: ChatCounters::default(),
            samples: Arc::default(),
            proxies: Mutex::default(),
            demand: Arc::default(),
            local: OnceLock::new(),
            audit: OnceLock::new(),
        })
    }

    /// Makes this entry a host too: chats it routes to itself reach `api` (its backend proxy and
    /// llama-servers) in-process, its status shows its own measurements, and its audits take
    /// `api`'s llama-servers as ground truth. Once; later calls are ignored.
    pub fn serve_locally(&self, api: Arc<NodeApi>, stop: watch::Receiver<bool>) {
        let me = self.mesh.me();
        let (tx, rx) = mpsc::channel(64);
        let upstream = Upstream::new(Arc::new(LocalDialer { me, streams: tx }), None);
        if self
            .local
            .set(LocalHost {
                api: api.clone(),
                upstream,
            })
            .is_err()
        {
            return;
        }
        tokio::spawn(http_serve::serve(
            TunnelListener::new(rx, me),
            crate::api::router(api),
            async move {
                let mut stop = stop;
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
    }

    /// Starts the audit loop (SPEC §7) with `config`, its choices seeded by `seed`; it runs
    /// until `stop` turns true. Once: a second call returns the running one.
    pub fn start_audit(
        self: &Arc<Self>,
        config: AuditConfig,
        seed: u64,
        stop: watch::Receiver<bool>,
    ) -> Result<Arc<EntryAudit>, AuditConfigError> {
        if let Some(a) = self.audit.get() {
            return Ok(a.clone());
        }
        let audit = EntryAudit::new(self.mesh.me(), config, seed, self.clock.now())?;
        let audit = self.audit.get_or_init(|| audit).clone();
        let sides: Arc<dyn ProbeSides> = Arc::new(EntrySides(self.clone()));
        tokio::spawn(audit::run(audit.clone(), sides, self.clock, stop));
        Ok(audit)
    }

    /// The audit loop's state, once started.
    pub fn audit(&self) -> Option<&Arc<EntryAudit>> {
        self.audit.get()
    }

    /// This node's own numbers (its hosting side's, when it serves) and audit verdicts.
    fn local_facts(&self, view: &MeshView) -> LocalFacts {
        let mut facts = match self.local.get() {
            Some(l) => l.api.measurements.facts(l.api.proxy.recorder()),
            None => LocalFacts::default(),
        };
        facts.inflight_requests = facts.inflight_requests.max(self.inflight());
        if let Some(a) = self.audit.get() {
            facts.verify = a.verify(view);
        }
        facts
    }

    /// The demand this entry measured, per model, at `now` (what its announcement carries).
    pub fn demand(&self, now: Timestamp) -> Vec<ModelDemand> {
        lock(&self.demand).snapshot(now)
    }

    pub fn accounting(&self) -> &Arc<Accounting> {
        &self.accounting
    }

    /// `/api/models`: the catalog as this entry sees the mesh, with its first-serve milestones.
    pub fn catalog(&self) -> CatalogPayload {
        let view = self.mesh.view();
        let facts = LocalFacts {
            first_served_unix_secs: self.milestones.first_served(),
            ..self.local_facts(&view)
        };
        catalog_payload(&view, &facts, &|m| self.settings.sla.catalog.tier_of(m))
    }

    /// `/api/mesh-share`; `None` (logged) when the store does not answer.
    pub async fn share(&self) -> Option<ShareSnapshot> {
        match self.accounting.snapshot().await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "mesh-share counters unavailable");
                None
            }
        }
    }

    /// `/metrics`.
    pub async fn metrics(&self) -> String {
        let share = self.share().await;
        metrics::encode(&Scrape {
            counters: Some(&self.counters),
            status: &self.status(),
            catalog: &self.catalog(),
            share: share.as_ref(),
            sample_outcomes: BTreeMap::new(),
        })
    }

    /// The `/api/chat` model when the request names none: [`sla::default_model`] over the models
    /// some dialable host routes now.
    pub fn default_model(&self) -> Result<String, ApiError> {
        let served = routable_models(&self.mesh.view());
        sla::default_model(
            &served,
            self.settings.default_model.as_deref(),
            &self.settings.sla.catalog,
        )
        .map_err(|e| service_unavailable(e.reason_code(), e.to_string()))
    }

    pub fn mesh(&self) -> &Arc<Mesh> {
        &self.mesh
    }

    /// Chats proxied right now, over every peer.
    pub fn inflight(&self) -> u32 {
        lock(&self.proxies)
            .values()
            .map(|p| p.recorder().inflight())
            .sum()
    }

    /// `/api/status`: every peer of the mesh as this entry sees it.
    pub fn status(&self) -> StatusPayload {
        let view = self.mesh.view();
        let local = self.local_facts(&view);
        status_payload(&view, &local)
            .expect("a mesh view always holds this node's own announcement")
    }

    /// The entry's own measurements, for the gate.
    pub fn measurements(&self) -> sla::EntryMeasurements {
        let now = self.clock.now();
        let mut samples = lock(&self.samples);
        samples.prune(now);
        samples.measurements(now)
    }

    /// The proxy (and recorder) for chats served by `peer`.
    fn proxy_for(&self, peer: PeerId) -> ChatProxy {
        let mut proxies = lock(&self.proxies);
        proxies
            .entry(peer)
            .or_insert_with(|| {
                let recorder = Arc::new(Recorder::new(self.clock));
                let mut events = recorder.subscribe();
                let samples = self.samples.clone();
                let milestones = self.milestones.clone();
                tokio::spawn(async move {
                    use tokio::sync::broadcast::error::RecvError;
                    loop {
                        match events.recv().await {
                            Ok(RecorderEvent::Concluded {
                                model,
                                sample: Some(sample),
                            }) => {
                                lock(&samples).record(peer, &model, sample);
                                milestones.record(&model, sample.at.as_unix_secs());
                            }
                            Ok(_) | Err(RecvError::Lagged(_)) => {}
                            Err(RecvError::Closed) => break,
                        }
                    }
                });
                ChatProxy::new(recorder).with_first_byte_timeout(self.settings.first_byte_timeout)
            })
            .clone()
    }

    /// How a chat reaches `peer`: its API through the mesh, or this node's own in-process
    /// (`None`: this node, serving nothing locally).
    fn upstream_of(&self, peer: PeerId) -> Option<Upstream> {
        if peer == self.mesh.me() {
            return self.local.get().map(|l| l.upstream.clone());
        }
        Some(peer_upstream(self.mesh.transport().clone(), peer))
    }

    /// Routes one chat (the caller's JSON object) for `model`, and counts it.
    pub async fn chat(
        self: &Arc<Self>,
        model: &str,
        request: Map<String, Value>,
        caller: IpAddr,
    ) -> Response<Body> {
        let now = self.clock.now();
        lock(&self.demand).record(model, demand_caller(caller), now);
        let view = self.mesh.view();
        let evaluation = sla::evaluate(model, &view, &self.measurements(), now, &self.settings.sla);
        let routed = self
            .route(model, &view, &evaluation, request, caller, now)
            .await;
        let status = routed.response.status();
        let label = if routed.served_by == ServedBy::Fallback || known_model(&view, model) {
            model
        } else {
            OTHER_MODEL
        };
        self.counters.chat(
            label,
            routed.served_by,
            status.as_u16(),
            &evaluation,
            &routed.decision,
        );
        // A refusal or an error served nobody; only answered chats count towards the share.
        if status.is_success() {
            self.accounting.record(routed.served_by);
        }
        with_headers(
            routed.response,
            &evaluation,
            &routed.decision,
            routed.served_by,
            routed.peer,
        )
    }

    /// The fallback decision by mesh-core's `rule` for `trigger`. Every rule but the budget is
    /// checked first, so a unit is spent (one atomic step in the shared store) only for a request
    /// that would fire; a spend the store refuses reads as the caller having no budget left.
    async fn decide(
        &self,
        evaluation: &Evaluation,
        caller: IpAddr,
        trigger: FallbackTrigger,
    ) -> FallbackDecision {
        let rule = match trigger {
            FallbackTrigger::SlaMiss => sla::decide_fallback,
            FallbackTrigger::MeshFailedBeforeFirstToken => sla::decide_fallback_after_mesh_failure,
        };
        let would = rule(evaluation, &self.fallback_config, BudgetLeft(1));
        if !would.fires() {
            return would;
        }
        match self.accounting.take_budget(caller).await {
            Ok(left) => FallbackDecision {
                budget_remaining: Some(left),
                ..would
            },
            Err(OverBudget) => rule(evaluation, &self.fallback_config, BudgetLeft(0)),
        }
    }

    async fn route(
        self: &Arc<Self>,
        model: &str,
        view: &MeshView,
        evaluation: &Evaluation,
        request: Map<String, Value>,
        caller: IpAddr,
        now: Timestamp,
    ) -> Routed {
        let decision = self
            .decide(evaluation, caller, FallbackTrigger::SlaMiss)
            .await;
        if decision.fires()
            && let Some(fb) = &self.fallback
        {
            tracing::info!(model, status = %evaluation.status.as_str(), "chat sent to the fallback provider");
            let response = fb.chat(&decision, request).await;
            return Routed::fallback(response, decision);
        }

        let key = request_key(model, &request);
        let mut order = lock(&self.router).order(model, view, &key, now);
        // Enforce mode: pairs the audits demoted leave the order, but (mesh-core's routing rule
        // for demotions) never the last target of a model.
        if let Some(a) = self.audit.get() {
            let kept: Vec<PeerId> = order
                .iter()
                .filter(|p| !a.is_demoted(p, model, now))
                .copied()
                .collect();
            if !kept.is_empty() {
                order = kept;
            }
        }
        if order.is_empty() {
            let err = no_target(model, view, &self.mesh.election().borrow().plans);
            tracing::info!(model, reason = err.reason_code, "chat has no target");
            return Routed::mesh(err.into_response(), decision, None);
        }
        let mut tried = Vec::new();
        while let Some(peer) = next_attempt(&order, &tried) {
            tried.push(peer);
            lock(&self.router).started(peer);
            let upstream = match self.upstream_of(peer) {
                Some(u) => u,
                None => {
                    lock(&self.router).finished(peer);
                    continue;
                }
            };
            let resp = self
                .proxy_for(peer)
                .chat(model, &upstream, request.clone())
                .await;
            let status = resp.status();
            if retryable(status) {
                let mut router = lock(&self.router);
                router.finished(peer);
                let demoted = router.failed_before_first_byte(peer, model, self.clock.now());
                drop(router);
                tracing::warn!(model, %peer, status = status.as_u16(), "target failed before the first byte; trying the next");
                if let Some(d) = demoted {
                    tracing::warn!(model, %peer, until = %d.until, "target demoted after repeated failures");
                }
                continue;
            }
            lock(&self.router).first_byte(peer, model);
            tracing::info!(model, %peer, status = status.as_u16(), attempts = tried.len(), "chat routed");
            let resp = guard_inflight(resp, self.clone(), peer);
            return Routed::mesh(resp, decision, Some(peer));
        }

        // Every target failed before the first byte: the provider, if the rules allow.
        let after = self
            .decide(
                evaluation,
                caller,
                FallbackTrigger::MeshFailedBeforeFirstToken,
            )
            .await;
        if after.fires()
            && let Some(fb) = &self.fallback
        {
            tracing::info!(
                model,
                tried = tried.len(),
                "every mesh target failed; chat sent to the fallback provider"
            );
            let response = fb.chat(&after, request).await;
            return Routed::fallback(response, after);
        }
        let err = ApiError::upstream_error(format!(
            "every peer serving {model:?} failed before answering ({} tried)",
            tried.len()
        ));
        Routed::mesh(err.into_response(), after, None)
    }
}

/// The audit loop's two sides, as this entry reaches them.
struct EntrySides(Arc<Entry>);

impl ProbeSides for EntrySides {
    fn own_server(&self, model: &str) -> Option<Upstream> {
        let local = self.0.local.get()?;
        match local.api.backends.get(model)?.state {
            BackendState::Ready(upstream) => Some(upstream),
            _ => None,
        }
    }

    fn send_to_peer(&self, peer: PeerId, model: &str, probe: &AuditProbe) -> ProbeFuture {
        let entry = self.0.clone();
        let model = model.to_string();
        let request = match probe.body(&model) {
            Value::Object(m) => m,
            _ => unreachable!("a probe body is a JSON object"),
        };
        Box::pin(async move {
            let upstream = entry.upstream_of(peer).ok_or_else(|| ProbeFailed {
                reason: "no way to reach the peer".into(),
            })?;
            // The same proxy, tunnel and request shape as a routed chat, and the same load count.
            lock(&entry.router).started(peer);
            let resp = entry.proxy_for(peer).chat(&model, &upstream, request).await;
            let status = resp.status();
            let answer = if status.is_success() {
                native::read_decode(resp.into_body()).await
            } else {
                Err(ProbeFailed {
                    reason: format!("the peer answered {status}"),
                })
            };
            lock(&entry.router).finished(peer);
            answer
        })
    }

    fn view(&self) -> MeshView {
        self.0.mesh.view()
    }
}

/// How one chat was answered.
struct Routed {
    response: Response<Body>,
    served_by: ServedBy,
    /// The fallback decision that applied (the one its headers carry).
    decision: FallbackDecision,
    peer: Option<PeerId>,
}

impl Routed {
    fn mesh(response: Response<Body>, decision: FallbackDecision, peer: Option<PeerId>) -> Self {
        Routed {
            response,
            served_by: ServedBy::Mesh,
            decision,
            peer,
        }
    }

    fn fallback(response: Response<Body>, decision: FallbackDecision) -> Self {
        Routed {
            response,
            served_by: ServedBy::Fallback,
            decision,
            peer: None,
        }
    }
}

/// Whether some peer in the view names `model` (what `/metrics` may label a series with).
fn known_model(view: &MeshView, model: &str) -> bool {
    view.peers.iter().any(|p| {
        let a = &p.announcement;
        a.hosts(model)
            || a.serving_models.iter().any(|m| m == model)
            || a.requested_models.iter().any(|m| m == model)
    })
}

/// The models some dialable host routes now, sorted.
fn routable_models(view: &MeshView) -> Vec<ModelName> {
    let mut names: Vec<ModelName> = view
        .peers
        .iter()
        .filter(|p| p.rtt_ms.is_some() && p.announcement.is_host())
        .flat_map(|p| p.announcement.hosted_models.iter().cloned())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// A target's answer that counts as a failure before the first byte: it sent nothing the caller
/// has seen, so the next target may still serve. Server errors, and 404 (the host no longer has
/// the model: this entry's view was behind).
fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::NOT_FOUND
}

/// Keeps one conversation on one peer while loads are equal (llama-server's prompt cache stays
/// warm): the model and the conversation's first message.
fn request_key(model: &str, request: &Map<String, Value>) -> Vec<u8> {
    let first = request
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| {
            m.iter()
                .find(|msg| msg.get("role").and_then(Value::as_str) != Some("system"))
                .or_else(|| m.first())
        })
        .map(|m| m.to_string())
        .unwrap_or_default();
    let mut key = model.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(first.as_bytes());
    key
}

fn service_unavailable(reason_code: &'static str, message: String) -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: "server_error",
        reason_code,
        message,
        retry_after: Some(5),
    }
}

/// Why no peer can take a chat for `model` now.
fn no_target(model: &str, view: &MeshView, plans: &BTreeMap<ModelName, Plan>) -> ApiError {
    let serving = view.peers.iter().any(|p| {
        p.announcement.serving_models.iter().any(|m| m == model) || p.announcement.hosts(model)
    });
    let requested = view
        .peers
        .iter()
        .any(|p| p.announcement.requested_models.iter().any(|m| m == model));
    if serving {
        service_unavailable(
            "election_in_progress",
            format!("model {model:?} is being (re)started on a peer; retry shortly"),
        )
    } else if requested || matches!(plans.get(model), Some(Plan::WaitingForCapacity { .. })) {
        service_unavailable(
            "no_capable_node",
            format!("no peer or group of peers in the mesh can hold model {model:?} yet"),
        )
    } else {
        ApiError::no_peer_with_model(model)
    }
}

fn with_headers(
    mut resp: Response<Body>,
    evaluation: &Evaluation,
    decision: &FallbackDecision,
    served_by: ServedBy,
    peer: Option<PeerId>,
) -> Response<Body> {
    let headers = resp.headers_mut();
    for (name, value) in sla::response_headers(evaluation, decision, served_by) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    if let Some(p) = peer {
        headers.insert(
            HeaderName::from_static(PEER_HEADER),
            HeaderValue::from_str(&p.short()).expect("hex is a valid header value"),
        );
    }
    resp
}

/// Counts the request against `peer`'s load in the router until its body is done or dropped.
fn guard_inflight(resp: Response<Body>, entry: Arc<Entry>, peer: PeerId) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let guarded = Guarded {
        inner: body,
        _guard: InflightGuard { entry, peer },
    };
    Response::from_parts(parts, Body::new(guarded))
}

struct InflightGuard {
    entry: Arc<Entry>,
    peer: PeerId,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        lock(&self.entry.router).finished(self.peer);
    }
}

struct Guarded {
    inner: Body,
    _guard: InflightGuard,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The entry's API (see the module docs for the routes).
pub fn router(entry: Arc<Entry>) -> AxumRouter {
    let counters = entry.counters.clone();
    let guard = KeyGuard {
        keys: Arc::new(entry.settings.api_keys.clone()),
        on_refusal: Some(Arc::new(move |r| counters.auth_refused(r))),
    };
    AxumRouter::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/api/chat", post(api_chat))
        .route_layer(middleware::from_fn_with_state(guard, auth::require_key))
        .route("/v1/models", get(models))
        .route("/api/status", get(status))
        .route("/api/models", get(catalog))
        .route("/api/mesh-share", get(mesh_share))
        .route("/metrics", get(metrics_handler))
        .fallback(not_found)
        .with_state(entry.clone())
        .merge(pages::router(entry))
}

impl PageSource for Entry {
    fn status(&self) -> StatusPayload {
        Entry::status(self)
    }

    fn catalog(&self) -> CatalogPayload {
        Entry::catalog(self)
    }

    fn targets(&self) -> TierTargets {
        self.settings.sla.targets
    }

    async fn share(&self) -> Option<ShareSnapshot> {
        Entry::share(self).await
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

/// A caller as the demand meter counts it: its fallback-budget key (an IPv6 /64 is one caller).
fn demand_caller(ip: IpAddr) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    sla::caller_key(ip).hash(&mut h);
    h.finish()
}

fn caller_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The request's JSON object and its `model` (`None` when absent or empty).
async fn parse_chat(req: Request) -> Result<(Option<String>, Map<String, Value>), ApiError> {
    let request = read_json_object(req).await?;
    let model = match request.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) if m.is_empty() => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => {
            return Err(ApiError::invalid_request(
                "model_invalid",
                "\"model\" must be a string",
            ));
        }
    };
    Ok((model, request))
}

async fn chat_completions(State(entry): State<Arc<Entry>>, req: Request) -> Response<Body> {
    let caller = caller_ip(&req);
    match parse_chat(req).await {
        Ok((Some(model), request)) => entry.chat(&model, request, caller).await,
        Ok((None, _)) => {
            ApiError::invalid_request("model_missing", "request has no \"model\"").into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Ours: the model an `/api/chat` request was served as (its own, or the default).
pub const MODEL_HEADER: &str = "x-closedmesh-model";

/// `POST /api/chat`: the SLA-gated testbed path. The body is an OpenAI chat request whose
/// `model` may be left out: then the tier-aware default ([`Entry::default_model`]) serves it.
async fn api_chat(State(entry): State<Arc<Entry>>, req: Request) -> Response<Body> {
    let caller = caller_ip(&req);
    let (model, mut request) = match parse_chat(req).await {
        Ok(parsed) => parsed,
        Err(e) => return e.into_response(),
    };
    let model = match model {
        Some(m) => m,
        None => match entry.default_model() {
            Ok(m) => {
                request.insert("model".into(), Value::String(m.clone()));
                m
            }
            Err(e) => {
                tracing::info!(reason = e.reason_code, "no default chat model");
                return e.into_response();
            }
        },
    };
    let mut resp = entry.chat(&model, request, caller).await;
    if let Ok(v) = HeaderValue::from_str(&model) {
        resp.headers_mut()
            .insert(HeaderName::from_static(MODEL_HEADER), v);
    }
    resp
}

/// The models some dialable host routes now.
async fn models(State(entry): State<Arc<Entry>>) -> Json<Value> {
    let data: Vec<Value> = routable_models(&entry.mesh.view())
        .into_iter()
        .map(|m| json!({"id": m, "object": "model", "owned_by": "closedmesh"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn status(State(entry): State<Arc<Entry>>) -> Json<StatusPayload> {
    Json(entry.status())
}

async fn catalog(State(entry): State<Arc<Entry>>) -> Json<CatalogPayload> {
    Json(entry.catalog())
}

async fn mesh_share(State(entry): State<Arc<Entry>>) -> Response<Body> {
    match entry.share().await {
        Some(s) => Json(s).into_response(),
        None => service_unavailable(
            "counter_store_unavailable",
            "the mesh-share counter store did not answer".into(),
        )
        .into_response(),
    }
}

async fn metrics_handler(State(entry): State<Arc<Entry>>) -> Response<Body> {
    metrics::response(entry.metrics().await)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::{KnownPeer, Timestamp};

    fn peer(n: u8, role: Role, f: impl FnOnce(&mut PeerAnnouncement)) -> KnownPeer {
        let mut a = PeerAnnouncement::new(PeerId::from_bytes([n; 32]), "m", role);
        f(&mut a);
        KnownPeer {
            announcement: a,
            rtt_ms: Some(3),
            first_seen: Timestamp::ZERO,
            last_fresh: Timestamp::ZERO,
        }
    }

    fn view(peers: Vec<KnownPeer>) -> MeshView {
        let me = peer(1, Role::Client, |_| {});
        let mut all = vec![me];
        all.extend(peers);
        MeshView::new(PeerId::from_bytes([1; 32]), all)
    }

    const M: &str = "Qwen3-8B-Q4_K_M";

    #[test]
    fn no_target_says_why_with_a_stable_reason_code() {
        let host = Role::Host { http_port: 1 };
        let plans = BTreeMap::new();
        // Nobody knows the model at all.
        assert_eq!(
            no_target(M, &view(vec![]), &plans).reason_code,
            "no_peer_with_model"
        );
        // A peer claimed it and is loading (or its host just went away): retry shortly.
        let loading = view(vec![peer(2, host, |a| a.serving_models = vec![M.into()])]);
        let e = no_target(M, &loading, &plans);
        assert_eq!(
            (e.reason_code, e.status, e.retry_after),
            (
                "election_in_progress",
                StatusCode::SERVICE_UNAVAILABLE,
                Some(5)
            )
        );
        // Requested somewhere, but nobody can hold it.
        let waiting = view(vec![peer(2, Role::Worker, |a| {
            a.requested_models = vec![M.into()]
        })]);
        assert_eq!(
            no_target(M, &waiting, &plans).reason_code,
            "no_capable_node"
        );
    }

    use clap::Parser as _;

    fn entry_args(args: &[&str]) -> EntryArgs {
        let mut argv = vec!["mesh-node", "entry", "--data-dir", "/tmp/cm-entry-test"];
        argv.extend_from_slice(args);
        match crate::config::Cli::try_parse_from(argv).unwrap().command {
            crate::config::Command::Entry(a) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn an_entry_audits_in_observe_mode_by_default_and_serves_nothing_unless_given_models() {
        let c = EntryConfig::resolve(entry_args(&[])).unwrap();
        assert!(c.hosting.is_none());
        assert_eq!(c.audit.enforcement.mode, VerifyMode::Observe);
        assert_eq!(c.audit.interval, Duration::from_secs(60));
        let c = EntryConfig::resolve(entry_args(&[
            "--model",
            "/m/a.gguf",
            "--llama-server",
            "/opt/llama-server",
            "--llama-threads",
            "1",
            "--audit-interval-s",
            "2.5",
            "--verify-mode",
            "enforce",
            "--api-addr",
            "127.0.0.1:7001",
        ]))
        .unwrap();
        let h = c.hosting.expect("--model makes the entry a host");
        assert_eq!(h.models, [PathBuf::from("/m/a.gguf")]);
        assert_eq!(h.llama_server, PathBuf::from("/opt/llama-server"));
        assert_eq!(h.llama_threads, Some(1));
        assert_eq!(h.api_port, 7001);
        assert_eq!(c.audit.interval, Duration::from_millis(2_500));
        assert_eq!(c.audit.enforcement.mode, VerifyMode::Enforce);
        assert!(
            EntryConfig::resolve(entry_args(&["--audit-interval-s", "0"])).is_err(),
            "a zero interval would audit in a busy loop"
        );
        assert!(
            crate::config::Cli::try_parse_from(["mesh-node", "entry", "--verify-mode", "strict"])
                .is_err()
        );
    }

    #[test]
    fn only_failures_that_sent_the_caller_nothing_are_retried() {
        assert!(retryable(StatusCode::BAD_GATEWAY));
        assert!(retryable(StatusCode::SERVICE_UNAVAILABLE));
        assert!(retryable(StatusCode::GATEWAY_TIMEOUT));
        assert!(retryable(StatusCode::NOT_FOUND));
        assert!(!retryable(StatusCode::OK));
        assert!(!retryable(StatusCode::BAD_REQUEST));
        assert!(!retryable(StatusCode::PAYLOAD_TOO_LARGE));
    }

    #[test]
    fn a_conversation_keeps_its_routing_key_as_it_grows() {
        let turn = |n: usize| {
            let mut messages = vec![
                serde_json::json!({"role": "system", "content": "be brief"}),
                serde_json::json!({"role": "user", "content": "hi"}),
            ];
            for i in 0..n {
                messages.push(serde_json::json!({"role": "assistant", "content": format!("a{i}")}));
                messages.push(serde_json::json!({"role": "user", "content": format!("u{i}")}));
            }
            let v = serde_json::json!({"model": M, "messages": messages});
            v.as_object().unwrap().clone()
        };
        assert_eq!(request_key(M, &turn(0)), request_key(M, &turn(3)));
        let other =
            serde_json::json!({"model": M, "messages": [{"role": "user", "content": "yo"}]});
        assert_ne!(
            request_key(M, &turn(0)),
            request_key(M, other.as_object().unwrap())
        );
        assert_ne!(request_key(M, &turn(0)), request_key("other", &turn(0)));
    }
}
