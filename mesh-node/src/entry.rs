//! `mesh-node entry`: the public API of the mesh, with no local model.
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
//! The external provider is a seam: [`Fallback`]. Without one, the fallback policy has no API
//! key, so every decision that would fire reads `fallback-disabled` and the request stays on the
//! mesh.

use crate::api::read_body;
use crate::clock::Clock;
use crate::config::{DEFAULT_API_ADDR, EntryArgs, RelayMode, default_data_dir};
use crate::error::ApiError;
use crate::mesh::{ContentSource, Mesh, MeshOptions, os_seed, read_invite};
use crate::proxy::{ChatProxy, Recorder, RecorderEvent};
use crate::transport::iroh::IrohTransport;
use crate::tunnel::peer_upstream;
use crate::{device, http_serve, identity};
use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, Response, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router as AxumRouter};
use bytes::Bytes;
use futures::future::BoxFuture;
use hyper::body::{Frame, SizeHint};
use mesh_core::election::Plan;
use mesh_core::invite;
use mesh_core::peer::ModelName;
use mesh_core::peer::{PeerAnnouncement, Role};
use mesh_core::routing::{RouteConfig, Router, next_attempt};
use mesh_core::sla::{
    self, EntrySamples, Evaluation, FallbackBudget, FallbackConfig, FallbackDecision, ServedBy,
    SlaConfig,
};
use mesh_core::status::{LocalFacts, StatusPayload, status_payload};
use mesh_core::{MeshView, PeerId};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;

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
}

/// `entry`'s settings after merging flags/env over the file over the defaults.
#[derive(Debug, Clone)]
pub struct EntryConfig {
    pub join: Option<String>,
    pub api_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub relay: RelayMode,
    pub settings: EntrySettings,
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
        Ok(EntryConfig {
            join: args.join.or(file.join),
            api_addr: args.api_addr.or(file.api_addr).unwrap_or_else(|| {
                DEFAULT_API_ADDR
                    .parse()
                    .expect("the default address parses")
            }),
            data_dir: match args.data_dir.or(file.data_dir) {
                Some(d) => d,
                None => default_data_dir()?,
            },
            relay: args.relay.or(file.relay).unwrap_or(RelayMode::Default),
            settings: EntrySettings {
                route,
                sla: file.sla.unwrap_or_default(),
                first_byte_timeout,
            },
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
    let transport = IrohTransport::bind_node(identity.secret, cfg.relay.clone()).await?;
    let me = identity.peer_id;
    let hostname = device::hostname();
    let content: ContentSource = Arc::new(move || {
        let mut a = PeerAnnouncement::new(me, String::new(), Role::Client);
        a.hostname.clone_from(&hostname);
        a
    });
    let (mesh, _tunnels) = Mesh::start(
        Arc::new(transport),
        Clock::system(),
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
    let entry = Entry::new(mesh.clone(), cfg.settings, None);
    let listener = TcpListener::bind(cfg.api_addr)
        .await
        .with_context(|| format!("binding the API to {}", cfg.api_addr))?;
    tracing::info!(addr = %listener.local_addr()?, node_id = %me, "entry API listening");
    http_serve::serve(http_serve::nodelay(listener), router(entry), shutdown).await;
    tracing::info!("shutting down: leaving the mesh");
    mesh.shutdown().await;
    Ok(())
}

/// Ours: the short id of the peer that served the response (absent when none did).
pub const PEER_HEADER: &str = "x-closedmesh-peer";

/// The external OpenAI-compatible provider (issue 7 fills it in: provider client, budget store).
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
}

impl Default for EntrySettings {
    fn default() -> Self {
        let route = RouteConfig::default();
        EntrySettings {
            first_byte_timeout: route.first_byte_timeout(),
            route,
            sla: SlaConfig::default(),
        }
    }
}

/// The entry's state. Cheap to share.
pub struct Entry {
    mesh: Arc<Mesh>,
    clock: Clock,
    settings: EntrySettings,
    router: Mutex<Router>,
    fallback: Option<Arc<dyn Fallback>>,
    fallback_config: FallbackConfig,
    budget: Mutex<FallbackBudget>,
    samples: Arc<Mutex<EntrySamples>>,
    proxies: Mutex<BTreeMap<PeerId, ChatProxy>>,
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
    pub fn new(
        mesh: Arc<Mesh>,
        settings: EntrySettings,
        fallback: Option<Arc<dyn Fallback>>,
    ) -> Arc<Entry> {
        let fallback_config = match &fallback {
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
            budget: Mutex::new(FallbackBudget::new(fallback_config.per_ip_per_hour)),
            settings,
            fallback,
            fallback_config,
            samples: Arc::default(),
            proxies: Mutex::default(),
        })
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
        let local = LocalFacts {
            inflight_requests: self.inflight(),
            ..LocalFacts::default()
        };
        status_payload(&self.mesh.view(), &local)
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
                tokio::spawn(async move {
                    use tokio::sync::broadcast::error::RecvError;
                    loop {
                        match events.recv().await {
                            Ok(RecorderEvent::Concluded {
                                model,
                                sample: Some(sample),
                            }) => lock(&samples).record(peer, &model, sample),
                            Ok(_) | Err(RecvError::Lagged(_)) => {}
                            Err(RecvError::Closed) => break,
                        }
                    }
                });
                ChatProxy::new(recorder).with_first_byte_timeout(self.settings.first_byte_timeout)
            })
            .clone()
    }

    /// Routes one chat (the caller's JSON object) for `model`.
    pub async fn chat(
        self: &Arc<Self>,
        model: &str,
        request: Map<String, Value>,
        caller: IpAddr,
    ) -> Response<Body> {
        let now = self.clock.now();
        let view = self.mesh.view();
        let evaluation = sla::evaluate(model, &view, &self.measurements(), now, &self.settings.sla);
        let decision = sla::decide_and_spend(
            &evaluation,
            &self.fallback_config,
            &mut lock(&self.budget),
            caller,
            now,
        );
        if decision.fires()
            && let Some(fb) = &self.fallback
        {
            tracing::info!(model, status = %evaluation.status.as_str(), "chat sent to the fallback provider");
            let resp = fb.chat(&decision, request).await;
            return with_headers(resp, &evaluation, &decision, ServedBy::Fallback, None);
        }

        let key = request_key(model, &request);
        let order = lock(&self.router).order(model, &view, &key, now);
        if order.is_empty() {
            let err = no_target(model, &view, &self.mesh.election().borrow().plans);
            tracing::info!(model, reason = err.reason_code, "chat has no target");
            return with_headers(
                err.into_response(),
                &evaluation,
                &decision,
                ServedBy::Mesh,
                None,
            );
        }
        let transport = self.mesh.transport().clone();
        let mut tried = Vec::new();
        while let Some(peer) = next_attempt(&order, &tried) {
            tried.push(peer);
            lock(&self.router).started(peer);
            let upstream = peer_upstream(transport.clone(), peer);
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
            return with_headers(resp, &evaluation, &decision, ServedBy::Mesh, Some(peer));
        }

        // Every target failed before the first byte: the provider, if the rules allow.
        let after = {
            let mut budget = lock(&self.budget);
            let left = budget.remaining(caller, now);
            let d =
                sla::decide_fallback_after_mesh_failure(&evaluation, &self.fallback_config, left);
            if d.fires() {
                // Cannot fail: `remaining` just reported a unit for this caller and hour.
                let _ = budget.take(caller, now);
            }
            d
        };
        if after.fires()
            && let Some(fb) = &self.fallback
        {
            let resp = fb.chat(&after, request).await;
            return with_headers(resp, &evaluation, &after, ServedBy::Fallback, None);
        }
        let err = ApiError::upstream_error(format!(
            "every peer serving {model:?} failed before answering ({} tried)",
            tried.len()
        ));
        with_headers(
            err.into_response(),
            &evaluation,
            &after,
            ServedBy::Mesh,
            None,
        )
    }
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

/// The entry's API: OpenAI-compatible chat and model list, and `/api/status` for the mesh.
pub fn router(entry: Arc<Entry>) -> AxumRouter {
    AxumRouter::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/api/status", get(status))
        .fallback(not_found)
        .with_state(entry)
}

async fn chat_completions(State(entry): State<Arc<Entry>>, req: Request) -> Response<Body> {
    let caller = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let parsed = async {
        let body = read_body(req).await?;
        let request: Map<String, Value> = serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid_request(
                "invalid_json",
                format!("request body is not a JSON object: {e}"),
            )
        })?;
        let model = request
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid_request("model_missing", "request has no \"model\""))?
            .to_string();
        Ok::<_, ApiError>((model, request))
    };
    match parsed.await {
        Ok((model, request)) => entry.chat(&model, request, caller).await,
        Err(e) => e.into_response(),
    }
}

/// The models some dialable host routes now.
async fn models(State(entry): State<Arc<Entry>>) -> Json<Value> {
    let view = entry.mesh.view();
    let mut names: Vec<&str> = view
        .peers
        .iter()
        .filter(|p| p.rtt_ms.is_some() && p.announcement.is_host())
        .flat_map(|p| p.announcement.hosted_models.iter().map(String::as_str))
        .collect();
    names.sort_unstable();
    names.dedup();
    let data: Vec<Value> = names
        .into_iter()
        .map(|m| json!({"id": m, "object": "model", "owned_by": "closedmesh"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn status(State(entry): State<Arc<Entry>>) -> Json<StatusPayload> {
    Json(entry.status())
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
