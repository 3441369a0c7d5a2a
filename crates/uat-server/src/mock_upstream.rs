//! A tiny, fast OpenAI-compatible upstream used by `uat loadtest` to measure
//! the gateway's overhead (the same load direct to it and through `uat`), and
//! by black-box tests.
//!
//! It speaks plain HTTP/1.1 on raw hyper (no router, no middleware) so that
//! its own cost stays small next to the gateway's:
//!
//! * `GET /v1/models` lists the configured models;
//! * `POST /v1/chat/completions` answers any model with a fixed reply, either
//!   as one JSON object or, with `"stream": true`, as an SSE stream of
//!   [`MockUpstreamConfig::chunks`] content chunks ending in `data: [DONE]`
//!   (with a usage chunk when `stream_options.include_usage` is set);
//! * `GET /health` answers `ok`.
//!
//! Accepted connections get `TCP_NODELAY`.

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the mock upstream behaves.
#[derive(Debug, Clone)]
pub struct MockUpstreamConfig {
    /// Delay before a non-streamed reply, and before the first chunk of a stream.
    pub latency: Duration,
    /// Delay between stream chunks after the first.
    pub chunk_delay: Duration,
    /// Number of content chunks in a streamed reply (at least 1).
    pub chunks: usize,
    /// Models listed by `GET /v1/models` (any model is answered).
    pub models: Vec<String>,
    /// The reply text; streamed replies split it into `chunks` pieces.
    pub reply: String,
}

impl Default for MockUpstreamConfig {
    fn default() -> Self {
        MockUpstreamConfig {
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            chunks: 5,
            models: vec!["mock-model".into()],
            reply: "Hello! This is the mock upstream answering with a fixed reply.".into(),
        }
    }
}

/// A running mock upstream. Dropping it stops the server.
pub struct MockUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl MockUpstream {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL as an OpenAI SDK wants it: `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Requests answered so far (every route).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Stops accepting, closes idle connections and waits for the accept loop.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Starts a mock upstream with the default behaviour (zero latency, 5 chunks,
/// model `mock-model`) on `addr` (port 0 picks a free one).
pub async fn spawn(addr: SocketAddr) -> std::io::Result<(SocketAddr, MockUpstream)> {
    spawn_with(addr, MockUpstreamConfig::default()).await
}

/// Starts a mock upstream with `config` on `addr` (port 0 picks a free one).
pub async fn spawn_with(
    addr: SocketAddr,
    config: MockUpstreamConfig,
) -> std::io::Result<(SocketAddr, MockUpstream)> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared::new(config));
    let requests = shared.requests.clone();
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, shared, stop_rx));
    Ok((
        addr,
        MockUpstream {
            addr,
            requests,
            stop,
            task: Some(task),
        },
    ))
}

struct Shared {
    config: MockUpstreamConfig,
    pieces: Vec<String>,
    models_body: Bytes,
    requests: Arc<AtomicU64>,
    next_id: AtomicU64,
}

impl Shared {
    fn new(mut config: MockUpstreamConfig) -> Self {
        config.chunks = config.chunks.max(1);
        let pieces = split_reply(&config.reply, config.chunks);
        let data: Vec<serde_json::Value> = config
            .models
            .iter()
            .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "mock"}))
            .collect();
        let models_body =
            Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string());
        Shared {
            config,
            pieces,
            models_body,
            requests: Arc::new(AtomicU64::new(0)),
            next_id: AtomicU64::new(1),
        }
    }
}

/// Splits `text` into `n` pieces of nearly equal length on char boundaries.
fn split_reply(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.max(1);
    (0..n)
        .map(|i| {
            let a = i * chars.len() / n;
            let b = (i + 1) * chars.len() / n;
            chars[a..b].iter().collect()
        })
        .collect()
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => Some(a),
            _ = stop.wait_for(|v| *v) => None,
        };
        let Some(accepted) = accepted else { return };
        let (tcp, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::debug!(error = %e, "mock upstream: accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), svc);
            let mut conn = std::pin::pin!(conn);
            let stopping = tokio::select! {
                _ = conn.as_mut() => false,
                r = stop.wait_for(|v| *v) => r.is_ok(),
            };
            if stopping {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        });
    }
}

type MockBody = UnsyncBoxBody<Bytes, Infallible>;

fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<MockBody> {
    let mut resp = Response::new(Full::new(body.into()).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<MockBody> {
    let body = serde_json::json!({
        "error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}
    });
    full(status, "application/json", body.to_string())
}

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<MockBody> {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path();
    let path = path.strip_prefix("/v1").unwrap_or(path);
    match (req.method(), path) {
        (&Method::GET, "/models") => full(
            StatusCode::OK,
            "application/json",
            shared.models_body.clone(),
        ),
        (&Method::GET, "/health") => full(StatusCode::OK, "text/plain", "ok"),
        (&Method::POST, "/chat/completions") => chat(shared, req).await,
        _ => error(StatusCode::NOT_FOUND, "unknown_url", "unknown route"),
    }
}

async fn chat(shared: &Shared, req: Request<Incoming>) -> Response<MockBody> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "cannot read the request body",
            );
        }
    };
    let parsed: ChatRequest = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("invalid JSON: {e}"),
            );
        }
    };
    let model = parsed.model.unwrap_or_else(|| "mock-model".into());
    let model_json = serde_json::Value::String(model).to_string();
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let prompt_tokens = (body.len() / 4).max(1);
    let completion_tokens = shared.pieces.len();
    let usage = format!(
        r#"{{"prompt_tokens":{prompt_tokens},"completion_tokens":{completion_tokens},"total_tokens":{}}}"#,
        prompt_tokens + completion_tokens
    );
    let cfg = &shared.config;
    if !parsed.stream {
        if !cfg.latency.is_zero() {
            tokio::time::sleep(cfg.latency).await;
        }
        let content = serde_json::Value::String(cfg.reply.clone()).to_string();
        let body = format!(
            r#"{{"id":"chatcmpl-mock-{id}","object":"chat.completion","created":{created},"model":{model_json},"choices":[{{"index":0,"message":{{"role":"assistant","content":{content}}},"logprobs":null,"finish_reason":"stop"}}],"usage":{usage}}}"#
        );
        return full(StatusCode::OK, "application/json", body);
    }
    let include_usage = parsed.stream_options.is_some_and(|o| o.include_usage);
    let head = format!(
        r#"{{"id":"chatcmpl-mock-{id}","object":"chat.completion.chunk","created":{created},"model":{model_json},"#
    );
    let mut events: Vec<Bytes> = Vec::with_capacity(shared.pieces.len() + 4);
    events.push(Bytes::from(format!(
        "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"finish_reason\":null}}]}}\n\n"
    )));
    for piece in &shared.pieces {
        let content = serde_json::Value::String(piece.clone()).to_string();
        events.push(Bytes::from(format!(
            "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{content}}},\"finish_reason\":null}}]}}\n\n"
        )));
    }
    events.push(Bytes::from(format!(
        "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n"
    )));
    if include_usage {
        events.push(Bytes::from(format!(
            "data: {head}\"choices\":[],\"usage\":{usage}}}\n\n"
        )));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let (latency, chunk_delay) = (cfg.latency, cfg.chunk_delay);
    let body: MockBody = if latency.is_zero() && chunk_delay.is_zero() {
        let frames = futures::stream::iter(
            events
                .into_iter()
                .map(|b| Ok::<_, Infallible>(Frame::data(b))),
        );
        StreamBody::new(frames).boxed_unsync()
    } else {
        // The role chunk waits `latency` (time to first token); each later
        // chunk waits `chunk_delay`.
        let frames =
            futures::stream::iter(events.into_iter().enumerate()).then(move |(i, b)| async move {
                let wait = if i == 0 { latency } else { chunk_delay };
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Ok::<_, Infallible>(Frame::data(b))
            });
        StreamBody::new(frames).boxed_unsync()
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_pieces_concatenate_to_the_reply() {
        for n in 1..12 {
            let text = "héllo wörld, a reply";
            let pieces = split_reply(text, n);
            assert_eq!(pieces.len(), n);
            assert_eq!(pieces.concat(), text);
        }
    }
}
