//! The vector database HTTP API over `uat-vector`.
//!
//! Engine calls are synchronous and CPU-bound, so every handler runs them on
//! the blocking pool; only the lookup of a collection by name (a map read
//! that creates and drops never hold across their I/O) runs on the async
//! worker. Responses are typed structs serialized straight to JSON; a
//! search's (up to the engine's per-request limits: `MAX_SEARCH_HITS`,
//! `MAX_SEARCH_VECTOR_FLOATS`, `MAX_SEARCH_PAYLOAD_BYTES`, a 400
//! `response_too_large` past them) and a point's are serialized on the
//! blocking pool too. Bulk upserts have their own, larger body limit
//! (`server.bulk_body_limit`), set where the routes are mounted.

use crate::StartupError;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::state::{AppState, ReadyCheck, ReadyStatus};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use uat_config::Config;
use uat_vector::{
    CollectionConfig, CollectionInfo, Filter, Point, PointId, SearchRequest, StoreOptions,
    VectorError, VectorStore,
};

/// Handle to the vector store, held in [`AppState`].
pub struct VectorService {
    store: Arc<VectorStore>,
    max_batch: usize,
}

impl VectorService {
    /// Opens (and recovers) every collection under `{data_dir}/{vector.dir}`;
    /// the store snapshots a collection by itself once its WAL passes
    /// `vector.snapshot_wal_bytes`.
    pub async fn init(config: &Config) -> Result<Self, StartupError> {
        let dir = config.storage.data_dir.join(&config.vector.dir);
        let fsync = config
            .vector
            .fsync
            .parse()
            .map_err(|e: VectorError| StartupError::subsystem("vector", e))?;
        let options = StoreOptions {
            fsync,
            snapshot_wal_bytes: config.vector.snapshot_wal_bytes,
            ..StoreOptions::default()
        };
        let store = tokio::task::spawn_blocking(move || VectorStore::open(dir, options))
            .await
            .map_err(|e| StartupError::subsystem("vector", e))?
            .map_err(|e| StartupError::subsystem("vector", e))?;
        Ok(VectorService {
            store: Arc::new(store),
            max_batch: config.vector.max_batch,
        })
    }

    /// The store, for services built on it.
    pub fn store(&self) -> &Arc<VectorStore> {
        &self.store
    }

    /// Readiness lines for `GET /ready`: the store folder must be writable.
    pub async fn ready(&self) -> Vec<ReadyCheck> {
        let dir = self.store.dir().to_path_buf();
        let writable = crate::state::bounded_probe(tokio::task::spawn_blocking(move || {
            let probe = dir.join(".ready-probe");
            std::fs::write(&probe, b"ok").and_then(|()| std::fs::remove_file(&probe))
        }))
        .await;
        let (status, detail) = match writable {
            Ok(Ok(Ok(()))) => (ReadyStatus::Ok, format!("{} collections", self.store.len())),
            Ok(Ok(Err(e))) => (ReadyStatus::Down, format!("store folder not writable: {e}")),
            Ok(Err(e)) => (ReadyStatus::Down, e.to_string()),
            Err(late) => (ReadyStatus::Down, format!("store folder: {late}")),
        };
        let mut out = vec![ReadyCheck {
            name: "vector".into(),
            status,
            critical: true,
            detail: Some(detail),
        }];
        // A collection that failed to open answers 404/409 until repaired;
        // before, only a log line said so.
        for (name, why) in self.store.failed() {
            out.push(ReadyCheck {
                name: format!("vector.collection.{name}"),
                status: ReadyStatus::Degraded,
                critical: false,
                detail: Some(format!(
                    "failed to open at start-up, files left for repair: {why}"
                )),
            });
        }
        out
    }
}

/// Maps an engine error: the caller's fault is 4xx, ours 500.
fn api_error(e: VectorError) -> ApiError {
    match &e {
        VectorError::NotFound(_) => ApiError::not_found(e.to_string()),
        VectorError::PointNotFound(_) => ApiError::not_found(e.to_string()),
        // A folder left by a collection that failed to open takes its name.
        VectorError::AlreadyExists(_) | VectorError::FolderNotEmpty(_) => {
            ApiError::conflict(e.to_string())
        }
        VectorError::WrongDimension { .. } | VectorError::NonFinite { .. } => {
            ApiError::invalid_field("vector", e.to_string())
        }
        VectorError::BadTopK { .. } => ApiError::invalid_field("top_k", e.to_string()),
        VectorError::BadFilter(_) => ApiError::invalid_field("filter", e.to_string()),
        VectorError::UnknownMetric(_) => ApiError::invalid_field("metric", e.to_string()),
        VectorError::ResponseTooLarge(_) => ApiError::response_too_large(e.to_string()),
        // The client went away (a batch search stops): nobody reads this
        // answer, and it is not a server error to log.
        VectorError::Cancelled => ApiError::client_closed(),
        _ if e.is_bad_request() => ApiError::bad_request(e.to_string()),
        _ => ApiError::internal(e),
    }
}

/// Runs engine work on the blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, VectorError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(api_error)
}

/// A JSON body already serialized.
struct JsonBody(Vec<u8>);

impl IntoResponse for JsonBody {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.0,
        )
            .into_response()
    }
}

/// Runs engine work on the blocking pool and serializes its answer there
/// too: a search's can be tens of megabytes of JSON, too long a job for an
/// async worker. A response past the engine's limits is a 400 naming
/// `param`.
async fn blocking_json<T, F>(param: &'static str, f: F) -> Result<JsonBody, ApiError>
where
    F: FnOnce() -> Result<T, VectorError> + Send + 'static,
    T: Serialize,
{
    tokio::task::spawn_blocking(move || {
        let v = f().map_err(|e| match e {
            VectorError::ResponseTooLarge(_) => api_error(e).with_param(param),
            e => api_error(e),
        })?;
        serde_json::to_vec(&v)
            .map(JsonBody)
            .map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)?
}

fn collection(state: &AppState, name: &str) -> Result<Arc<uat_vector::Collection>, ApiError> {
    state.vector.store.get(name).map_err(api_error)
}

/// The routes (mounted with the bulk body limit).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/collections", get(list_collections))
        .route(
            "/v1/collections/{name}",
            crate::auth::admin(put(create_collection).delete(drop_collection)).get(get_collection),
        )
        .route("/v1/collections/{name}/points/search", post(search))
        .route("/v1/collections/{name}/points/delete", post(delete_points))
        .route("/v1/collections/{name}/points/{id}", get(get_point))
        .route(
            "/v1/collections/{name}/snapshot",
            crate::auth::admin(post(snapshot)),
        )
        .route_layer(axum::middleware::from_fn(crate::auth::require_collection))
}

/// The routes that take the bulk body limit (`server.bulk_body_limit`):
/// point upserts and batch searches. The others take the ordinary limit,
/// since a JSON body parsed as a whole takes many times its size in memory.
pub fn bulk_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/collections/{name}/points", put(upsert_points))
        .route(
            "/v1/collections/{name}/points/search/batch",
            post(search_batch),
        )
        .route_layer(axum::middleware::from_fn(crate::auth::require_collection))
}

/// `GET /v1/collections`.
#[derive(Serialize)]
struct Collections {
    collections: Vec<CollectionInfo>,
}

/// A search's (or a batch's) results.
#[derive(Serialize)]
struct Results<T> {
    results: T,
}

/// What a delete removed: a collection's name, or a number of points.
#[derive(Serialize)]
struct Deleted<T> {
    deleted: T,
}

#[derive(Serialize)]
struct Upserted {
    upserted: usize,
    count: usize,
}

#[derive(Serialize)]
struct Snapshotted {
    snapshot: String,
    count: usize,
}

async fn list_collections(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
) -> Result<axum::Json<Collections>, ApiError> {
    let store = state.vector.store.clone();
    let mut collections = blocking(move || Ok(store.list())).await?;
    // A key limited to some collections sees only those.
    let caller = caller.map(|axum::Extension(c)| c);
    collections.retain(|c| crate::auth::Caller::may_use_collection(caller.as_ref(), &c.name));
    Ok(axum::Json(Collections { collections }))
}

async fn create_collection(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body, _room): ApiJson<Value>,
) -> Result<(StatusCode, axum::Json<CollectionInfo>), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "expected a JSON object with dimension and metric",
        ));
    }
    let config = CollectionConfig::from_json(body).map_err(api_error)?;
    let store = state.vector.store.clone();
    let info = blocking(move || store.create_collection(&name, config).map(|c| c.info())).await?;
    Ok((StatusCode::CREATED, axum::Json(info)))
}

async fn get_collection(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<CollectionInfo>, ApiError> {
    let c = collection(&state, &name)?;
    let info = blocking(move || Ok(c.info())).await?;
    Ok(axum::Json(info))
}

async fn drop_collection(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<Deleted<String>>, ApiError> {
    let store = state.vector.store.clone();
    let n = name.clone();
    blocking(move || store.drop_collection(&n)).await?;
    Ok(axum::Json(Deleted { deleted: name }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertBody {
    points: Vec<Point>,
}

async fn upsert_points(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body, _room): ApiJson<UpsertBody>,
) -> Result<axum::Json<Upserted>, ApiError> {
    let c = collection(&state, &name)?;
    let n = body.points.len();
    if n == 0 {
        return Err(ApiError::invalid_field(
            "points",
            "points must not be empty",
        ));
    }
    if n > state.vector.max_batch {
        return Err(ApiError::invalid_field(
            "points",
            format!(
                "{n} points in one call; the limit is {}",
                state.vector.max_batch
            ),
        ));
    }
    let upserted = blocking(move || c.upsert(body.points)).await?;
    Ok(axum::Json(Upserted { upserted, count: n }))
}

async fn search(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body, _room): ApiJson<Value>,
) -> Result<JsonBody, ApiError> {
    let c = collection(&state, &name)?;
    let req = SearchRequest::from_json(body).map_err(api_error)?;
    blocking_json("top_k", move || {
        c.search(&req).map(|results| Results { results })
    })
    .await
}

/// A batch search body. Each search is kept as its raw text and parsed one
/// at a time: a body of up to the bulk limit parsed whole into JSON values
/// (32 bytes or more for every number of every vector) took many times its
/// size in memory.
#[derive(Deserialize)]
struct BatchBody {
    searches: Vec<Box<serde_json::value::RawValue>>,
}

async fn search_batch(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body, _room): ApiJson<BatchBody>,
) -> Result<JsonBody, ApiError> {
    let c = collection(&state, &name)?;
    let searches = body.searches;
    if searches.len() > uat_vector::MAX_TOP_K {
        return Err(ApiError::invalid_field(
            "searches",
            format!("at most {} searches in one batch", uat_vector::MAX_TOP_K),
        ));
    }
    let reqs = searches
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let at = |mut err: ApiError| {
                err.param = Some(format!("searches[{i}]"));
                err
            };
            let v: Value = serde_json::from_str(raw.get())
                .map_err(|e| at(ApiError::bad_request(format!("searches[{i}]: {e}"))))?;
            SearchRequest::from_json(v).map_err(|e| at(api_error(e)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Dropped with this handler when the client goes away: the searches
    // not yet started are skipped.
    struct CancelOnDrop(Arc<AtomicBool>);
    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let cancelled = Arc::new(AtomicBool::new(false));
    let _cancel = CancelOnDrop(cancelled.clone());
    blocking_json("searches", move || {
        c.search_batch_until(&reqs, &cancelled)
            .map(|results| Results { results })
    })
    .await
}

async fn get_point(
    State(state): State<AppState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> Result<JsonBody, ApiError> {
    let c = collection(&state, &name)?;
    let id = PointId::parse(&id).map_err(api_error)?;
    blocking_json("id", move || c.get(&id)).await
}

async fn delete_points(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body, _room): ApiJson<Value>,
) -> Result<axum::Json<Deleted<usize>>, ApiError> {
    let c = collection(&state, &name)?;
    let ids = body.get("ids").filter(|v| !v.is_null());
    let filter = body.get("filter").filter(|v| !v.is_null());
    let deleted = match (ids, filter) {
        (Some(ids), None) => {
            let ids: Vec<PointId> = serde_json::from_value(ids.clone())
                .map_err(|e| ApiError::invalid_field("ids", format!("invalid ids: {e}")))?;
            blocking(move || c.delete(ids)).await?
        }
        (None, Some(f)) => {
            let f = Filter::from_json(f).map_err(api_error)?;
            blocking(move || c.delete_by_filter(&f)).await?
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `ids` or `filter`",
            ));
        }
    };
    Ok(axum::Json(Deleted { deleted }))
}

async fn snapshot(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<Snapshotted>, ApiError> {
    let c = collection(&state, &name)?;
    // The count reads the collection's state lock: on the blocking pool,
    // like the snapshot, since a writer may be waiting on it.
    let count = blocking(move || {
        let count = c.count();
        c.snapshot().map(|()| count)
    })
    .await?;
    Ok(axum::Json(Snapshotted {
        snapshot: name,
        count,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch search stopped because its client went away is not a server
    /// error (those are logged at error level): a 499 nobody reads.
    #[test]
    fn a_cancelled_search_is_a_499_not_a_500() {
        let resp = api_error(VectorError::Cancelled).into_response();
        assert_eq!(resp.status().as_u16(), 499);
    }
}
