//! The memory service HTTP API: long-term memories per user with keyword,
//! semantic and hybrid search. Handlers parse, call [`uat_memory::Memories`]
//! and map [`MemoryError`]; every route is scoped by `user_id`, within the
//! tenant of the request's API key (its owner; [`uat_memory::Scoped`]):
//! two owners' users of the same `user_id` never see each other's memories.
//!
//! - `POST /v1/memories` (one, or `{"memories": [...]}` up to `[memory] max_batch`)
//! - `GET /v1/memories?user_id=&agent_id=&kind=&tags=&tag_mode=&since=&until=&limit=&cursor=`
//! - `DELETE /v1/memories?user_id=` (every memory of that user)
//! - `GET|PATCH|DELETE /v1/memories/{id}?user_id=`, `GET /v1/memories/{id}/history?user_id=`
//! - `POST /v1/memories/search`

use crate::StartupError;
use crate::auth::Tenant;
use crate::embeddings::EmbedService;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::{AppState, ReadyCheck, ReadyStatus};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use uat_config::Config;
use uat_embed::{EmbedRequest, EmbeddingInput, Registry};
use uat_memory::{
    AnyStore, BoxFuture, Embedder, Limits, ListParams, Memories, MemoryError, Options, PatchInput,
    SearchInput, Store, WriteRequest,
};
use uuid::Uuid;

/// Texts sent to the embedding model per call.
const EMBED_CHUNK: usize = 256;

/// Handle to the subsystem, held in [`AppState`].
pub struct MemoryService {
    memories: Memories,
    /// Why semantic search is off, when it is.
    semantic_off: Option<String>,
}

/// The server's embedding models seen through the memory service's trait.
struct RegistryEmbedder {
    registry: Arc<Registry>,
    model: String,
    dimension: usize,
}

impl Embedder for RegistryEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, uat_memory::Result<Vec<Vec<f32>>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(texts.len());
            for chunk in texts.chunks(EMBED_CHUNK) {
                let req = EmbedRequest::new(EmbeddingInput::Texts(chunk.to_vec()));
                let resp = self
                    .registry
                    .embed(&self.model, req)
                    .await
                    .map_err(|e| MemoryError::Embedding(e.to_string()))?;
                out.extend(resp.embeddings);
            }
            Ok(out)
        })
    }
}

/// The embedder for `[memory] embedding_model` (default: the first local
/// model), probed once for its dimension. `Err` says why there is none.
async fn embedder(config: &Config, embed: &EmbedService) -> Result<Arc<dyn Embedder>, String> {
    let Some(model) = config.memory.effective_model(&config.embeddings) else {
        return Err("no embedding model is configured".into());
    };
    let probe = embed
        .embed_texts(model, vec!["dimension probe".into()])
        .await
        .map_err(|e| format!("embedding model `{model}` is unusable: {e}"))?;
    let dimension = probe.first().map(Vec::len).unwrap_or(0);
    if dimension == 0 {
        return Err(format!("embedding model `{model}` returned no vector"));
    }
    Ok(Arc::new(RegistryEmbedder {
        registry: embed.registry().clone(),
        model: model.to_string(),
        dimension,
    }))
}

impl MemoryService {
    /// Opens the store on `storage.database_url()` (creating the data folder
    /// for SQLite), migrates it, and opens or rebuilds the vector index.
    pub async fn init(config: &Config, embed: &EmbedService) -> Result<Self, StartupError> {
        let url = config.storage.database_url();
        let data_dir = &config.storage.data_dir;
        if !config.storage.is_postgres() {
            std::fs::create_dir_all(data_dir).map_err(|e| {
                StartupError::subsystem(
                    "memory",
                    format!("cannot create {}: {e}", data_dir.display()),
                )
            })?;
        }
        let store = AnyStore::open(&url, config.storage.max_connections)
            .await
            .map_err(|e| StartupError::subsystem("memory", e))?;
        let (embedder, semantic_off) = match embedder(config, embed).await {
            Ok(e) => (Some(e), None),
            Err(why) => {
                tracing::warn!(reason = %why, "memory: semantic search is off; keyword search only");
                (None, Some(why))
            }
        };
        let options = Options {
            limits: Limits {
                max_content_bytes: config.memory.max_content_bytes,
                max_batch: config.memory.max_batch,
            },
            index_dir: Some(data_dir.join("memory-index")),
            tail_interval: if config.storage.is_postgres() {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(1)
            },
            purge_interval: Some(config.memory.purge_interval).filter(|d| !d.is_zero()),
            change_retention: config.memory.change_retention,
        };
        let memories = Memories::open(store, embedder, options)
            .await
            .map_err(|e| StartupError::subsystem("memory", e))?;
        Ok(MemoryService {
            memories,
            semantic_off,
        })
    }

    /// The service proper.
    pub fn memories(&self) -> &Memories {
        &self.memories
    }

    /// Readiness lines for `GET /ready`.
    pub async fn ready(&self) -> Vec<ReadyCheck> {
        let probe = crate::state::bounded_probe(self.memories.store().last_change()).await;
        let store = match probe {
            Ok(Ok(_)) => ReadyCheck {
                name: format!("memory.{}", self.memories.store().backend()),
                status: ReadyStatus::Ok,
                critical: true,
                detail: None,
            },
            Ok(Err(e)) => ReadyCheck {
                name: format!("memory.{}", self.memories.store().backend()),
                status: ReadyStatus::Down,
                critical: true,
                detail: Some(e.to_string()),
            },
            Err(late) => ReadyCheck {
                name: format!("memory.{}", self.memories.store().backend()),
                status: ReadyStatus::Down,
                critical: true,
                detail: Some(late),
            },
        };
        let semantic = ReadyCheck {
            name: "memory.semantic".into(),
            status: if self.semantic_off.is_some() {
                ReadyStatus::Degraded
            } else {
                ReadyStatus::Ok
            },
            critical: false,
            detail: self
                .semantic_off
                .clone()
                .or_else(|| self.memories.model().map(|m| format!("model {m}"))),
        };
        vec![store, semantic]
    }
}

/// Maps the service's errors: the caller's fault 400/404, the model's 503, ours 500.
fn api_error(e: MemoryError) -> ApiError {
    match e {
        MemoryError::Invalid { field, message } => {
            ApiError::invalid_field(field.clone(), format!("{field}: {message}"))
        }
        MemoryError::NotFound => ApiError::not_found("memory not found"),
        MemoryError::NoEmbedder => {
            ApiError::invalid_field("mode", MemoryError::NoEmbedder.to_string())
        }
        MemoryError::Embedding(m) => {
            ApiError::unavailable(format!("embedding model unavailable: {m}"))
        }
        e @ (MemoryError::Database(_) | MemoryError::Corrupt(_) | MemoryError::Index(_)) => {
            ApiError::internal(e)
        }
    }
}

/// `?user_id=` of the routes that address one memory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserQuery {
    user_id: Option<String>,
}

fn user(q: &UserQuery) -> Result<&str, ApiError> {
    q.user_id
        .as_deref()
        .ok_or_else(|| ApiError::invalid_field("user_id", "user_id: is required (?user_id=...)"))
}

/// An unparseable id cannot name anyone's memory: 404, like a missing one.
fn memory_id(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| ApiError::not_found("memory not found"))
}

async fn create(
    State(st): State<AppState>,
    tenant: Tenant,
    ApiJson(body, _room): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let svc = &st.memory.memories;
    let req = WriteRequest::from_json(body, svc.limits()).map_err(api_error)?;
    let batch = matches!(req, WriteRequest::Batch(_));
    let mut out = svc
        .scoped(tenant.owner())
        .write(req)
        .await
        .map_err(api_error)?;
    if batch {
        return Ok((StatusCode::OK, axum::Json(json!({ "memories": out }))).into_response());
    }
    let one = out
        .pop()
        .ok_or_else(|| ApiError::internal("write returned nothing"))?;
    let status = if one.deduplicated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(one)).into_response())
}

async fn list(
    State(st): State<AppState>,
    tenant: Tenant,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    let q = p.validate().map_err(api_error)?;
    let page = st
        .memory
        .memories
        .scoped(tenant.owner())
        .list(q)
        .await
        .map_err(api_error)?;
    Ok(axum::Json(page).into_response())
}

async fn delete_all(
    State(st): State<AppState>,
    tenant: Tenant,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> Result<Response, ApiError> {
    let n = st
        .memory
        .memories
        .scoped(tenant.owner())
        .delete_user(q.user_id.as_deref())
        .await
        .map_err(api_error)?;
    Ok(axum::Json(json!({ "deleted": n })).into_response())
}

async fn get_one(
    State(st): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> Result<Response, ApiError> {
    let u = user(&q)?;
    let m = st
        .memory
        .memories
        .scoped(tenant.owner())
        .get(u, memory_id(&id)?)
        .await
        .map_err(api_error)?;
    Ok(axum::Json(m).into_response())
}

async fn patch_one(
    State(st): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<UserQuery>,
    ApiJson(body, _room): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let u = user(&q)?;
    let svc = &st.memory.memories;
    let patch = PatchInput::from_json(body, svc.limits()).map_err(api_error)?;
    let m = svc
        .scoped(tenant.owner())
        .update(u, memory_id(&id)?, patch)
        .await
        .map_err(api_error)?;
    Ok(axum::Json(m).into_response())
}

async fn delete_one(
    State(st): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> Result<Response, ApiError> {
    let u = user(&q)?;
    let id = memory_id(&id)?;
    st.memory
        .memories
        .scoped(tenant.owner())
        .delete(u, id)
        .await
        .map_err(api_error)?;
    Ok(axum::Json(json!({ "id": id, "deleted": true })).into_response())
}

async fn history(
    State(st): State<AppState>,
    tenant: Tenant,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> Result<Response, ApiError> {
    let u = user(&q)?;
    let h = st
        .memory
        .memories
        .scoped(tenant.owner())
        .history(u, memory_id(&id)?)
        .await
        .map_err(api_error)?;
    Ok(axum::Json(json!({ "history": h })).into_response())
}

async fn search(
    State(st): State<AppState>,
    tenant: Tenant,
    ApiJson(body, _room): ApiJson<SearchInput>,
) -> Result<Response, ApiError> {
    let svc = &st.memory.memories;
    let q = body.validate(svc.limits()).map_err(api_error)?;
    let r = svc
        .scoped(tenant.owner())
        .search(q)
        .await
        .map_err(api_error)?;
    Ok(axum::Json(r).into_response())
}

/// The subsystem's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/memories", post(create).get(list).delete(delete_all))
        .route("/v1/memories/search", post(search))
        .route(
            "/v1/memories/{id}",
            get(get_one).patch(patch_one).delete(delete_one),
        )
        .route("/v1/memories/{id}/history", get(history))
}
