//! The node's HTTP API as an axum [`Router`], built independently of any listener so the same
//! router serves a tokio `TcpListener`, a turmoil listener, or a tunnelled connection.

use crate::backend::{BackendState, Backends};
use crate::error::ApiError;
use crate::facts::Measurements;
use crate::local_status::{NodeInfo, local_view};
use crate::mesh::Mesh;
use crate::metrics::{self, Scrape};
use crate::pages::{self, PageSource};
use crate::proxy::{ChatProxy, MAX_BODY_BYTES};
use crate::share_store::ShareSnapshot;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{Response, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use mesh_core::sla::{TierCatalog, TierTargets};
use mesh_core::status::payload::StatusPayload;
use mesh_core::status::{CatalogPayload, LocalFacts, catalog_payload, status_payload};
use mesh_core::{MeshView, Timestamp};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Everything the handlers read.
#[derive(Debug)]
pub struct NodeApi {
    pub info: NodeInfo,
    pub backends: Arc<Backends>,
    pub proxy: ChatProxy,
    /// Native baselines and first-serve milestones (through-mesh p50s are the proxy's).
    pub measurements: Measurements,
    /// Model → tier for `/api/models`.
    pub tiers: TierCatalog,
    /// The mesh this node is in; `None` for a node that knows only itself (tests).
    pub mesh: Option<Arc<Mesh>>,
}

impl NodeApi {
    /// The mesh as this node sees it, and its own numbers.
    pub fn view(&self) -> (MeshView, LocalFacts) {
        let recorder = self.proxy.recorder();
        let facts = self.measurements.facts(recorder);
        let now = recorder.clock().now();
        let view = match &self.mesh {
            Some(mesh) => mesh.view(),
            None => local_view(&self.info, &self.backends.list(), &facts, now),
        };
        (view, facts)
    }

    pub fn status(&self) -> StatusPayload {
        let (view, facts) = self.view();
        status_payload(&view, &facts).expect("the view holds this node's own announcement")
    }

    /// The `/api/models` catalog.
    pub fn catalog(&self) -> CatalogPayload {
        let (view, facts) = self.view();
        catalog_payload(&view, &facts, &|m| self.tiers.tier_of(m))
    }
}

pub fn router(api: Arc<NodeApi>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/api/status", get(status))
        .route("/api/models", get(catalog))
        .route("/metrics", get(metrics_handler))
        .fallback(not_found)
        .with_state(api.clone())
        .merge(pages::router(api))
}

/// A serving node's pages: its catalog and status; mesh share is counted on entries.
impl PageSource for NodeApi {
    fn status(&self) -> StatusPayload {
        NodeApi::status(self)
    }

    fn catalog(&self) -> CatalogPayload {
        NodeApi::catalog(self)
    }

    fn targets(&self) -> TierTargets {
        TierTargets::default()
    }

    async fn share(&self) -> Option<ShareSnapshot> {
        None
    }

    fn now(&self) -> Timestamp {
        self.proxy.recorder().clock().now()
    }
}

async fn metrics_handler(State(api): State<Arc<NodeApi>>) -> Response<Body> {
    metrics::response(metrics::encode(&Scrape {
        counters: None,
        status: &api.status(),
        catalog: &api.catalog(),
        share: None,
        sample_outcomes: api.proxy.recorder().outcome_counts(),
    }))
}

async fn chat_completions(State(api): State<Arc<NodeApi>>, req: Request) -> Response<Body> {
    match route_chat(&api, req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(
                status = e.status.as_u16(),
                reason = e.reason_code,
                "chat refused"
            );
            e.into_response()
        }
    }
}

async fn route_chat(api: &NodeApi, req: Request) -> Result<Response<Body>, ApiError> {
    let request = read_json_object(req).await?;
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid_request("model_missing", "request has no \"model\""))?
        .to_string();
    let backend = api
        .backends
        .get(&model)
        .ok_or_else(|| ApiError::no_peer_with_model(&model))?;
    match backend.state {
        BackendState::Ready(upstream) => Ok(api.proxy.chat(&model, &upstream, request).await),
        BackendState::Loading | BackendState::Restarting { .. } | BackendState::Stopped => {
            Err(ApiError::model_loading(&model))
        }
    }
}

/// The body as a JSON object (400 `invalid_json` otherwise; 413 as [`read_body`]).
pub(crate) async fn read_json_object(req: Request) -> Result<Map<String, Value>, ApiError> {
    let body = read_body(req).await?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::invalid_request(
            "invalid_json",
            format!("request body is not a JSON object: {e}"),
        )
    })
}

/// The body, or 413 once it passes [`MAX_BODY_BYTES`] (declared or actual).
pub(crate) async fn read_body(req: Request) -> Result<bytes::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::body_too_large(MAX_BODY_BYTES));
    }
    match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::body_too_large(MAX_BODY_BYTES))
        }
        Err(e) => Err(ApiError::invalid_request(
            "body_unreadable",
            format!("reading the request body: {e}"),
        )),
    }
}

/// OpenAI's model list: the models routable through this node now.
async fn models(State(api): State<Arc<NodeApi>>) -> Json<Value> {
    let data: Vec<Value> = api
        .backends
        .list()
        .into_iter()
        .filter(|b| matches!(b.state, BackendState::Ready(_)))
        .map(|b| json!({"id": b.model, "object": "model", "owned_by": "closedmesh"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn status(State(api): State<Arc<NodeApi>>) -> Json<StatusPayload> {
    Json(api.status())
}

async fn catalog(State(api): State<Arc<NodeApi>>) -> Json<CatalogPayload> {
    Json(api.catalog())
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}
