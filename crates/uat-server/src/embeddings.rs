//! Embeddings: `POST /v1/embeddings` (local models from `uat-embed`, or
//! forwarded through the router to a remote provider) and the model
//! registry's admin routes.

use crate::StartupError;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath};
use crate::state::{AppState, ReadyCheck, ReadyStatus};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use uat_config::{Config, TokenIds};
use uat_embed::{EmbedError, EmbedRequest, EmbeddingInput, EncodingFormat, Registry};

/// Handle to the local embedding models, held in [`AppState`].
pub struct EmbedService {
    registry: Arc<Registry>,
    /// How each model reads token-id inputs (`token_ids`).
    token_ids: HashMap<String, TokenIds>,
    _keep_alive: Option<tokio::task::JoinHandle<()>>,
}

impl EmbedService {
    /// How `model` reads token-id inputs.
    fn token_ids_of(&self, model: &str) -> TokenIds {
        self.token_ids.get(model).copied().unwrap_or_default()
    }

    /// Builds the registry from `[embeddings]`, loads the models marked
    /// `eager`, and starts the idle-unload task.
    pub async fn init(config: &Config) -> Result<Self, StartupError> {
        let registry = Arc::new(
            Registry::new(&config.embeddings)
                .map_err(|e| StartupError::subsystem("embeddings", e))?,
        );
        registry
            .load_eager()
            .await
            .map_err(|e| StartupError::subsystem("embeddings", e))?;
        let keep_alive = if config.embeddings.models.is_empty() {
            None
        } else {
            Some(registry.spawn_keep_alive())
        };
        let token_ids = config
            .embeddings
            .models
            .iter()
            .map(|m| (m.name.clone(), m.token_ids))
            .collect();
        Ok(EmbedService {
            registry,
            token_ids,
            _keep_alive: keep_alive,
        })
    }

    /// The model registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Local models as `GET /v1/models` entries.
    pub fn models(&self) -> Vec<uat_types::Model> {
        self.registry
            .names()
            .into_iter()
            .map(|n| uat_types::Model::new(n, "uat"))
            .collect()
    }

    /// Embeds texts with a local model (for services such as memory).
    pub async fn embed_texts(
        &self,
        model: &str,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let resp = self
            .registry
            .embed(model, EmbedRequest::new(EmbeddingInput::Texts(texts)))
            .await?;
        Ok(resp.embeddings)
    }

    /// Readiness: models marked eager must be loaded.
    pub async fn ready(&self) -> Vec<ReadyCheck> {
        let list = self.registry.list();
        if list.is_empty() {
            return Vec::new();
        }
        // An eager model that never loaded (its start-up load failed or is
        // still running); one unloaded after keep_alive idle, or by an
        // operator, is a state the configuration asked for, not a fault.
        let missing: Vec<&str> = list
            .iter()
            .filter(|m| m.eager && !m.loaded && m.last_used.is_none())
            .map(|m| m.name.as_str())
            .collect();
        let loaded = list.iter().filter(|m| m.loaded).count();
        vec![ReadyCheck {
            name: "embeddings".into(),
            status: if missing.is_empty() {
                ReadyStatus::Ok
            } else {
                ReadyStatus::Degraded
            },
            critical: false,
            detail: Some(if missing.is_empty() {
                format!("{loaded} of {} models loaded", list.len())
            } else {
                format!("eager models never loaded: {}", missing.join(", "))
            }),
        }]
    }
}

/// Maps an engine error: bad input 400 naming the field, unknown model 404,
/// a full queue 503 + Retry-After, ours 500.
pub fn embed_error(e: EmbedError) -> ApiError {
    match &e {
        EmbedError::UnknownModel(m) => ApiError::model_not_found(m),
        EmbedError::DimensionsUnsupported { .. } => {
            ApiError::invalid_field("dimensions", e.to_string())
        }
        EmbedError::Overloaded { .. } => ApiError::overloaded(e.to_string(), 1),
        // Models still serving hold the memory a load needs: retry shortly.
        EmbedError::MemoryBudget { .. } => ApiError::overloaded(e.to_string(), 5),
        EmbedError::ShuttingDown => ApiError::unavailable(e.to_string()),
        _ if e.is_client_error() => ApiError::invalid_field("input", e.to_string()),
        _ => ApiError::internal(e),
    }
}

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/embeddings/models", get(list_models))
        .route(
            "/v1/embeddings/models/{name}/load",
            crate::auth::admin(post(load_model)),
        )
        .route(
            "/v1/embeddings/models/{name}/unload",
            crate::auth::admin(post(unload_model)),
        )
}

struct Parsed {
    model: String,
    input: EmbeddingInput,
    format: EncodingFormat,
    dimensions: Option<usize>,
    truncate: bool,
}

fn parse(body: &Value) -> Result<Parsed, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::bad_request("expected a JSON object"));
    };
    let model = match obj.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "model",
                "`model` must be a non-empty string",
            ));
        }
        None => return Err(ApiError::invalid_field("model", "missing field `model`")),
    };
    let input = match obj.get("input") {
        Some(v) => EmbeddingInput::from_json(v).map_err(embed_error)?,
        None => return Err(ApiError::invalid_field("input", "missing field `input`")),
    };
    input.validate().map_err(embed_error)?;
    let format = match obj.get("encoding_format") {
        None | Some(Value::Null) => EncodingFormat::Float,
        Some(Value::String(s)) if s == "float" => EncodingFormat::Float,
        Some(Value::String(s)) if s == "base64" => EncodingFormat::Base64,
        Some(v) => {
            return Err(ApiError::invalid_field(
                "encoding_format",
                format!("`encoding_format` must be \"float\" or \"base64\", got {v}"),
            ));
        }
    };
    let dimensions = match obj.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(d) if d > 0 => Some(d as usize),
            _ => {
                return Err(ApiError::invalid_field(
                    "dimensions",
                    "`dimensions` must be a positive integer",
                ));
            }
        },
    };
    let truncate = match obj.get("truncate") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "truncate",
                "`truncate` must be a boolean",
            ));
        }
    };
    Ok(Parsed {
        model,
        input,
        format,
        dimensions,
        truncate,
    })
}

async fn embeddings(
    State(state): State<AppState>,
    tenant: crate::auth::Tenant,
    meter: Option<crate::auth::TokenMeter>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    headers: HeaderMap,
    body: Result<ApiJson<Value>, ApiError>,
) -> Response {
    // The room is held until the answer: the parsed input (token ids of 80
    // bytes each as JSON values) lives as long.
    let (body, _room) = match body {
        Ok(ApiJson(body, room)) => (body, room),
        Err(e) => return refused(e),
    };
    let model = match body.get("model") {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    if !model.is_empty()
        && let Err(e) =
            crate::auth::Caller::check_model(caller.as_ref().map(|axum::Extension(c)| c), &model)
    {
        return refused(e);
    }
    if state.embed.registry.contains(&model) {
        let parsed = match parse(&body) {
            Ok(p) => p,
            Err(e) => return refused(e),
        };
        // Token ids mean what the model's `token_ids` says: the key names
        // the reading, so entries stored under another one (before an
        // upgrade, or a config change) are never served for it.
        let keyed;
        let names = match parsed.input {
            EmbeddingInput::TokenIds(_) => {
                keyed = format!(
                    "{model}#token_ids={}",
                    state.embed.token_ids_of(&model).name()
                );
                crate::cache::ModelNames {
                    public: &model,
                    cached: &keyed,
                }
            }
            EmbeddingInput::Texts(_) => crate::cache::ModelNames::same(&model),
        };
        let st = state.clone();
        let m = meter.clone();
        let resp = crate::cache::around(
            &state,
            &tenant,
            &headers,
            crate::cache::Kind::Embeddings,
            names,
            &body,
            |_| async move {
                local(&st, parsed, m.as_ref())
                    .await
                    .unwrap_or_else(IntoResponse::into_response)
            },
        )
        .await;
        // A hit keeps the cache's own labels (provider "cache").
        let hit = resp
            .headers()
            .get(&crate::cache::X_UAT_CACHE)
            .is_some_and(|v| v.as_bytes().starts_with(b"hit"));
        if hit {
            return resp;
        }
        return tagged(resp, "local", 1, &model);
    }
    if model.is_empty() {
        return refused(
            parse(&body)
                .err()
                .unwrap_or_else(|| ApiError::invalid_field("model", "missing field `model`")),
        );
    }
    let Ok(resolved) = state.gateway.router().resolve(&model) else {
        return refused(ApiError::model_not_found(&model));
    };
    let cached = resolved.cache_name();
    let charge =
        crate::spend::Charge::for_caller(caller.as_ref().map(|axum::Extension(c)| c), &state);
    if let Some(c) = &charge
        && let Err(e) = c.check_priced(state.gateway.router(), &resolved, &model)
    {
        return refused(e);
    }
    let st = state.clone();
    let m = model.clone();
    let mut b = body.clone();
    // The cache's controls are the gateway's, not the upstream's.
    if let Some(o) = b.as_object_mut() {
        o.shift_remove(crate::cache::BODY_CONTROLS);
    }
    crate::cache::around(
        &state,
        &tenant,
        &headers,
        crate::cache::Kind::Embeddings,
        crate::cache::ModelNames {
            public: &model,
            cached: &cached,
        },
        &body,
        |_| async move {
            match st.gateway.router().embeddings(&m, &b).await {
                Ok(routed) => {
                    if let Some(meter) = &meter {
                        meter.spend(routed.value.usage.as_ref().map_or_else(
                            || estimate_input_tokens(&b),
                            crate::auth::TokenMeter::total,
                        ));
                    }
                    let cost = charge.as_ref().and_then(|c| {
                        c.answer(
                            &m,
                            &routed.provider,
                            &routed.model,
                            routed.value.usage.as_ref(),
                            || uat_types::Usage::new(estimate_input_tokens(&b), 0),
                        )
                    });
                    let mut resp = (
                        StatusCode::OK,
                        [(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        )],
                        routed.value.body,
                    )
                        .into_response();
                    resp.extensions_mut().insert(routed.value.shape);
                    if let Some(nanos) = cost {
                        crate::spend::set_cost(&mut resp, nanos);
                    }
                    resp = tagged(resp, &routed.provider, routed.attempts, &m);
                    resp
                }
                Err(e) => crate::gateway::router_error(&e).into_response(),
            }
        },
    )
    .await
}

/// The tokens of an embeddings request whose answer reports no usage (for
/// `tokens_per_minute`): a token per four bytes of text, one per token id.
fn estimate_input_tokens(body: &Value) -> u64 {
    fn walk(v: &Value) -> u64 {
        match v {
            Value::String(s) => (s.len() as u64).div_ceil(4),
            Value::Array(items) => items.iter().map(walk).sum(),
            Value::Number(_) => 1,
            _ => 0,
        }
    }
    body.get("input").map_or(0, walk)
}

/// A request refused before the cache is consulted: `x-uat-cache: bypass`,
/// like every response of this cached route.
fn refused(e: ApiError) -> Response {
    let mut resp = e.into_response();
    crate::cache::mark_bypass(&mut resp);
    resp
}

fn tagged(mut resp: Response, provider: &str, attempts: u32, model: &str) -> Response {
    let h = resp.headers_mut();
    if !h.contains_key(&crate::gateway::X_UAT_PROVIDER) {
        h.insert(
            crate::gateway::X_UAT_PROVIDER.clone(),
            HeaderValue::from_str(provider).unwrap_or_else(|_| HeaderValue::from_static("invalid")),
        );
        h.insert(
            crate::gateway::X_UAT_ATTEMPTS.clone(),
            HeaderValue::from(attempts),
        );
    }
    resp.extensions_mut()
        .insert(crate::middleware::RouteLabels {
            model: model.to_owned(),
            provider: provider.to_owned(),
        });
    resp
}

async fn local(
    state: &AppState,
    p: Parsed,
    meter: Option<&crate::auth::TokenMeter>,
) -> Result<Response, ApiError> {
    let mode = state.embed.token_ids_of(&p.model);
    let input = if p.input.resolves_inline(mode) {
        p.input.resolve_token_ids(mode)
    } else {
        let input = p.input;
        tokio::task::spawn_blocking(move || input.resolve_token_ids(mode))
            .await
            .map_err(ApiError::internal)?
    }
    .map_err(embed_error)?;
    let req = EmbedRequest {
        input,
        truncate: p.truncate,
        dimensions: p.dimensions,
    };
    let out = state
        .embed
        .registry
        .embed(&p.model, req)
        .await
        .map_err(embed_error)?;
    if let Some(m) = meter {
        m.spend(out.prompt_tokens as u64);
    }
    let floats: usize = out.embeddings.iter().map(Vec::len).sum();
    let format = p.format;
    let body = if floats <= INLINE_RENDER_FLOATS {
        render(&out, format)
    } else {
        tokio::task::spawn_blocking(move || render(&out, format))
            .await
            .map_err(ApiError::internal)?
    }
    .map_err(ApiError::internal)?;
    let mut resp = (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    // The body holds its `data` list: the cache need not parse it to check.
    resp.extensions_mut().insert(uat_router::Shape {
        choices: false,
        data: true,
    });
    Ok(resp)
}

/// Floats rendered on the async worker; larger answers go to the blocking pool.
const INLINE_RENDER_FLOATS: usize = 16 * 1024;

/// The answer's body. Keys in the order the `json!` map gave them before
/// (sorted), so answers stay byte-compatible; each f32 printed in its own
/// shortest form (`-0.034477286`), not widened to f64 (`-0.03447728604078293`).
#[derive(Serialize)]
struct Answer<'a> {
    data: Vec<Item<'a>>,
    model: &'a str,
    object: &'static str,
    usage: Usage,
}

#[derive(Serialize)]
struct Item<'a> {
    embedding: Vector<'a>,
    index: usize,
    object: &'static str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector<'a> {
    Float(&'a [f32]),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

fn render(out: &uat_embed::EmbedResponse, format: EncodingFormat) -> serde_json::Result<Vec<u8>> {
    let floats: usize = out.embeddings.iter().map(Vec::len).sum();
    let data = out
        .embeddings
        .iter()
        .enumerate()
        .map(|(index, e)| Item {
            embedding: match format {
                EncodingFormat::Float => Vector::Float(e),
                EncodingFormat::Base64 => Vector::Base64(uat_embed::encode_base64(e)),
            },
            index,
            object: "embedding",
        })
        .collect();
    let answer = Answer {
        data,
        model: &out.model,
        object: "list",
        usage: Usage {
            prompt_tokens: out.prompt_tokens,
            total_tokens: out.prompt_tokens,
        },
    };
    // About 12 bytes a float (sign, "0.", 9 digits, comma).
    let mut body = Vec::with_capacity(floats * 12 + out.embeddings.len() * 48 + 128);
    serde_json::to_writer(&mut body, &answer)?;
    Ok(body)
}

/// The registry's models, without their folders: the listing is open to every
/// key, and a server path is not the caller's business (the handler cannot tell
/// an admin key; the admin `load` route still answers with it).
async fn list_models(
    State(state): State<AppState>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
) -> Response {
    let caller = caller.as_ref().map(|axum::Extension(c)| c);
    let data: Vec<Value> = state
        .embed
        .registry
        .list()
        .into_iter()
        // A key limited to some models sees only those.
        .filter(|m| crate::auth::Caller::lists_model(caller, &m.name))
        .map(|m| {
            let mut v = json!(m);
            if let Some(o) = v.as_object_mut() {
                o.remove("path");
            }
            v
        })
        .collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

async fn load_model(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let status = state
        .embed
        .registry
        .load(&name)
        .await
        .map_err(embed_error)?;
    Ok(axum::Json(json!(status)).into_response())
}

async fn unload_model(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let unloaded = state.embed.registry.unload(&name).map_err(embed_error)?;
    Ok(axum::Json(json!({ "name": name, "unloaded": unloaded })).into_response())
}
