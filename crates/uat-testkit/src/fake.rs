//! Fake upstreams: an OpenAI-compatible server, an Ollama server and the
//! Anthropic Messages API, each on an ephemeral port, scriptable to fail.

use crate::http1::{self, Request};
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The wire format a fake speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `/v1/models`, `/v1/chat/completions` and `/v1/completions` (SSE),
    /// `/v1/embeddings`.
    OpenAi,
    /// `/api/tags`, `/api/chat` and `/api/generate` (NDJSON), `/api/embed`.
    Ollama,
    /// `/v1/models`, `/v1/messages` (SSE events).
    Anthropic,
}

/// How the fake answers a chat, text completion or embeddings call.
#[derive(Debug, Clone, PartialEq)]
pub enum Behavior {
    /// A correct answer.
    Ok,
    /// This status with an error body in the wire's shape.
    Status(u16),
    /// This status with exactly this body.
    StatusBody(u16, String),
    /// 429 with `Retry-After: secs`.
    RateLimited {
        /// Seconds in the Retry-After header.
        retry_after_secs: u64,
    },
    /// Never answers (the client must time out).
    Hang,
    /// Resets the connection without answering.
    Reset,
    /// 200 with a body that is not valid for the wire format.
    Malformed,
    /// 200 with exactly this body (non-streamed chat, text completions and
    /// embeddings).
    Body(String),
    /// Streams: half the events, then the connection drops. Non-streams: a truncated body.
    StopHalfway,
    /// The response head at once, the first event only after this delay.
    SlowFirstToken(Duration),
    /// The whole answer only after this delay.
    Delay(Duration),
    /// Anthropic's context check: a request whose `max_tokens` plus `input`
    /// exceeds `limit` gets Anthropic's 400 (`input length and `max_tokens`
    /// exceed context limit: <input> + <max_tokens> > <limit>, ...`);
    /// others a correct answer. Every call counts in [`FakeUpstream::calls`].
    ContextLimit {
        /// The input tokens the request is taken to have.
        input: u64,
        /// The model's context window.
        limit: u64,
    },
    /// OpenAI wire, chat: the assistant calls this function (id
    /// `call_fake`, `finish_reason: tool_calls`), streamed or not; the
    /// arguments are streamed in two pieces. Other wires and routes answer
    /// as [`Behavior::Ok`].
    ToolCall {
        /// The function's name.
        name: String,
        /// The call's arguments (JSON text).
        arguments: String,
    },
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path (with query).
    pub path: String,
    /// Headers, as received.
    pub headers: Vec<(String, String)>,
    /// The JSON body (`Null` when empty or not JSON).
    pub body: Value,
}

impl Recorded {
    /// A header value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Shared {
    wire: Wire,
    name: String,
    script: Mutex<VecDeque<Behavior>>,
    default: Mutex<Behavior>,
    models: Mutex<Vec<String>>,
    models_status: Mutex<Option<u16>>,
    reply: Mutex<String>,
    /// Ollama `/api/generate`: the reasoning sent before the reply.
    thinking: Mutex<String>,
    /// Ollama `/api/generate`: `logprobs` ignored, as before Ollama 0.12.11.
    ignore_logprobs: AtomicBool,
    chunk_delay: Mutex<Duration>,
    anthropic_usage: Mutex<Map<String, Value>>,
    calls: AtomicUsize,
    model_calls: AtomicUsize,
    disconnects: AtomicUsize,
    completed_streams: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
}

/// A fake upstream on `127.0.0.1:<ephemeral>`. Stops when dropped.
pub struct FakeUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    /// Starts a fake named `name` (the name appears in its replies:
    /// `Hello from <name>`), serving one model, `<name>-model`.
    pub async fn start(wire: Wire, name: &str) -> std::io::Result<FakeUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            wire,
            name: name.to_owned(),
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Behavior::Ok),
            models: Mutex::new(vec![format!("{name}-model")]),
            models_status: Mutex::new(None),
            reply: Mutex::new(format!("Hello from {name}")),
            thinking: Mutex::new(String::new()),
            ignore_logprobs: AtomicBool::new(false),
            chunk_delay: Mutex::new(Duration::ZERO),
            anthropic_usage: Mutex::new(Map::new()),
            calls: AtomicUsize::new(0),
            model_calls: AtomicUsize::new(0),
            disconnects: AtomicUsize::new(0),
            completed_streams: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, s.clone()));
            }
        });
        Ok(FakeUpstream { addr, shared, task })
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `base_url` to configure: with `/v1` for OpenAI, the root otherwise.
    pub fn base_url(&self) -> String {
        match self.shared.wire {
            Wire::OpenAi => format!("http://{}/v1", self.addr),
            Wire::Ollama | Wire::Anthropic => format!("http://{}", self.addr),
        }
    }

    /// Queues behaviors for the next chat/completion/embeddings calls, in order.
    pub fn push(&self, b: Behavior) {
        self.shared.script.lock().push_back(b);
    }

    /// The behavior once the queue is empty (initially [`Behavior::Ok`]).
    pub fn set_default(&self, b: Behavior) {
        *self.shared.default.lock() = b;
    }

    /// Replaces the served model list.
    pub fn set_models(&self, models: &[&str]) {
        *self.shared.models.lock() = models.iter().map(|m| (*m).to_owned()).collect();
    }

    /// Makes the model-list route answer with this status (`None`: normally).
    pub fn set_models_status(&self, status: Option<u16>) {
        *self.shared.models_status.lock() = status;
    }

    /// Replaces the reply text (streamed word by word).
    pub fn set_reply(&self, text: &str) {
        *self.shared.reply.lock() = text.to_owned();
    }

    /// Ollama wire, `/api/generate`: a thinking model's reasoning (empty:
    /// none), sent as `thinking` before the reply (streamed word by word,
    /// lines without `response`, then a line each for `\n`, `</think>` and
    /// `\n\n` with neither thinking nor text); asked for logprobs, its
    /// tokens come first in the list, each of logprob -5, then those three,
    /// as Ollama lists them.
    pub fn set_ollama_thinking(&self, text: &str) {
        *self.shared.thinking.lock() = text.to_owned();
    }

    /// Ollama wire, `/api/generate`: whether `logprobs` is ignored (no
    /// `logprobs` field on any answer or line), as an Ollama before 0.12.11
    /// does.
    pub fn set_ollama_ignore_logprobs(&self, ignore: bool) {
        self.shared.ignore_logprobs.store(ignore, Ordering::SeqCst);
    }

    /// Delay between streamed events.
    pub fn set_chunk_delay(&self, d: Duration) {
        *self.shared.chunk_delay.lock() = d;
    }

    /// Anthropic wire: fields added to every answer's `usage` (a whole
    /// answer's, a stream's `message_start`), such as the prompt cache's
    /// `cache_creation_input_tokens` and `cache_read_input_tokens`; the
    /// fake's own `input_tokens` and `output_tokens` stay unless given.
    pub fn set_anthropic_usage(&self, extra: Value) {
        *self.shared.anthropic_usage.lock() = match extra {
            Value::Object(m) => m,
            _ => Map::new(),
        };
    }

    /// Chat, text completion and embeddings calls received.
    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// Model-list calls received.
    pub fn model_calls(&self) -> usize {
        self.shared.model_calls.load(Ordering::SeqCst)
    }

    /// Streams whose client went away before the end.
    pub fn disconnects(&self) -> usize {
        self.shared.disconnects.load(Ordering::SeqCst)
    }

    /// Streams written to the end.
    pub fn completed_streams(&self) -> usize {
        self.shared.completed_streams.load(Ordering::SeqCst)
    }

    /// Every request received, model listings included.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().clone()
    }

    /// The body of the last chat/completion/embeddings call.
    pub fn last_body(&self) -> Option<Value> {
        self.shared
            .requests
            .lock()
            .iter()
            .rev()
            .find(|r| r.method == "POST")
            .map(|r| r.body.clone())
    }
}

async fn connection(mut stream: TcpStream, s: Arc<Shared>) {
    let mut buf = Vec::new();
    loop {
        let req = match http1::read_request(&mut stream, &mut buf).await {
            Ok(Some(r)) => r,
            _ => return,
        };
        let keep = handle(&mut stream, &s, req).await.unwrap_or(false);
        if !keep {
            return;
        }
    }
}

fn route(wire: Wire, method: &str, path: &str) -> Option<Route> {
    let path = path.split('?').next().unwrap_or("");
    match (wire, method, path) {
        (Wire::OpenAi, "GET", "/v1/models")
        | (Wire::Anthropic, "GET", "/v1/models")
        | (Wire::Ollama, "GET", "/api/tags") => Some(Route::Models),
        (Wire::OpenAi, "POST", "/v1/chat/completions")
        | (Wire::Ollama, "POST", "/api/chat")
        | (Wire::Anthropic, "POST", "/v1/messages") => Some(Route::Chat),
        (Wire::OpenAi, "POST", "/v1/completions") | (Wire::Ollama, "POST", "/api/generate") => {
            Some(Route::Complete)
        }
        (Wire::OpenAi, "POST", "/v1/embeddings") | (Wire::Ollama, "POST", "/api/embed") => {
            Some(Route::Embed)
        }
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Models,
    Chat,
    /// A text completion: OpenAI's legacy `/v1/completions`, Ollama's
    /// `/api/generate`.
    Complete,
    Embed,
}

/// Serves one request; returns whether the connection stays open.
async fn handle(stream: &mut TcpStream, s: &Shared, req: Request) -> std::io::Result<bool> {
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    s.requests.lock().push(Recorded {
        method: req.method.clone(),
        path: req.path.clone(),
        headers: req.headers.clone(),
        body: body.clone(),
    });
    let _ = req.header("host");
    let Some(r) = route(s.wire, &req.method, &req.path) else {
        http1::write_full(
            stream,
            404,
            "application/json",
            &[],
            error_body(s, 404).as_bytes(),
        )
        .await?;
        return Ok(true);
    };
    match r {
        Route::Models => {
            s.model_calls.fetch_add(1, Ordering::SeqCst);
            let status = *s.models_status.lock();
            if let Some(code) = status {
                http1::write_full(
                    stream,
                    code,
                    "application/json",
                    &[],
                    error_body(s, code).as_bytes(),
                )
                .await?;
                return Ok(true);
            }
            let models = s.models.lock().clone();
            let v = match s.wire {
                Wire::OpenAi => {
                    json!({"object": "list", "data": models.iter().map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": s.name})).collect::<Vec<_>>()})
                }
                Wire::Ollama => {
                    json!({"models": models.iter().map(|m| json!({"name": m, "model": m, "size": 1})).collect::<Vec<_>>()})
                }
                Wire::Anthropic => anthropic_models_page(&models, &req.path),
            };
            http1::write_full(
                stream,
                200,
                "application/json",
                &[],
                v.to_string().as_bytes(),
            )
            .await?;
            Ok(true)
        }
        Route::Chat | Route::Complete | Route::Embed => {
            s.calls.fetch_add(1, Ordering::SeqCst);
            let behavior = {
                let next = s.script.lock().pop_front();
                next.unwrap_or_else(|| s.default.lock().clone())
            };
            let is_stream = match s.wire {
                // Ollama streams unless told otherwise.
                Wire::Ollama => body.get("stream").and_then(Value::as_bool).unwrap_or(true),
                _ => body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            };
            let model = body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned();
            match behavior {
                Behavior::Status(code) => {
                    http1::write_full(
                        stream,
                        code,
                        "application/json",
                        &[],
                        error_body(s, code).as_bytes(),
                    )
                    .await?;
                    return Ok(true);
                }
                Behavior::StatusBody(code, body) => {
                    http1::write_full(stream, code, "application/json", &[], body.as_bytes())
                        .await?;
                    return Ok(true);
                }
                Behavior::RateLimited { retry_after_secs } => {
                    http1::write_full(
                        stream,
                        429,
                        "application/json",
                        &[("Retry-After", retry_after_secs.to_string())],
                        error_body(s, 429).as_bytes(),
                    )
                    .await?;
                    return Ok(true);
                }
                Behavior::Hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return Ok(false);
                }
                Behavior::Reset => {
                    let _ = stream.set_zero_linger();
                    return Ok(false);
                }
                Behavior::Delay(d) => tokio::time::sleep(d).await,
                Behavior::ContextLimit { input, limit } => {
                    let max = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(0);
                    if input.saturating_add(max) > limit {
                        let msg = format!(
                            "input length and `max_tokens` exceed context limit: {input} + {max} > {limit}, decrease input length or `max_tokens` and try again"
                        );
                        let v = json!({"type": "error", "error": {"type": "invalid_request_error", "message": msg}});
                        http1::write_full(
                            stream,
                            400,
                            "application/json",
                            &[],
                            v.to_string().as_bytes(),
                        )
                        .await?;
                        return Ok(true);
                    }
                }
                _ => {}
            }
            if matches!(r, Route::Embed) {
                return embed(stream, s, &body, &model, &behavior).await;
            }
            let call = Call {
                route: r,
                body: &body,
                model: &model,
            };
            if is_stream {
                answer_stream(stream, s, call, &behavior).await
            } else {
                answer_full(stream, s, call, &behavior).await
            }
        }
    }
}

fn error_body(s: &Shared, code: u16) -> String {
    let msg = format!("fake {} error {code}", s.name);
    // The error types each wire gives for the status.
    let (openai, anthropic) = match code {
        429 => ("rate_limit_error", "rate_limit_error"),
        400..=499 => ("invalid_request_error", "invalid_request_error"),
        // Anthropic's "overloaded" status.
        529 => ("server_error", "overloaded_error"),
        _ => ("server_error", "api_error"),
    };
    match s.wire {
        Wire::OpenAi => {
            json!({"error": {"message": msg, "type": openai, "param": null, "code": null}})
        }
        Wire::Ollama => json!({"error": msg}),
        Wire::Anthropic => json!({"type": "error", "error": {"type": anthropic, "message": msg}}),
    }
    .to_string()
}

const PROMPT_TOKENS: u64 = 7;

/// A chat or text completion call: what it asks and of which model.
#[derive(Clone, Copy)]
struct Call<'a> {
    route: Route,
    body: &'a Value,
    model: &'a str,
}

async fn answer_full(
    stream: &mut TcpStream,
    s: &Shared,
    call: Call<'_>,
    b: &Behavior,
) -> std::io::Result<bool> {
    let Call { body, model, .. } = call;
    if *b == Behavior::Malformed {
        http1::write_full(
            stream,
            200,
            "application/json",
            &[],
            b"{\"this is\": not json",
        )
        .await?;
        return Ok(true);
    }
    if let Behavior::Body(body) = b {
        http1::write_full(stream, 200, "application/json", &[], body.as_bytes()).await?;
        return Ok(true);
    }
    let reply = s.reply.lock().clone();
    let words = reply.split_whitespace().count() as u64;
    let v = match (s.wire, call.route) {
        (Wire::OpenAi, Route::Chat) if matches!(b, Behavior::ToolCall { .. }) => {
            let (name, arguments) = match b {
                Behavior::ToolCall { name, arguments } => (name.as_str(), arguments.as_str()),
                _ => ("", ""),
            };
            json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_fake", "type": "function", "function": {"name": name, "arguments": arguments}}
                ]}, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 5, "total_tokens": PROMPT_TOKENS + 5},
            })
        }
        (Wire::OpenAi, Route::Complete) => json!({
            "id": "cmpl-fake", "object": "text_completion", "created": 1, "model": model,
            "choices": [{"text": reply, "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": words, "total_tokens": PROMPT_TOKENS + words},
            "system_fingerprint": "fp_fake",
        }),
        (Wire::Ollama, Route::Complete) => {
            let ignored = json!({});
            let body = if s.ignore_logprobs.load(Ordering::SeqCst) {
                &ignored
            } else {
                body
            };
            let mut v = json!({
                "model": model, "created_at": "2024-01-01T00:00:00Z", "response": reply,
                "done": true, "done_reason": "stop", "context": [1, 2, 3],
                "prompt_eval_count": PROMPT_TOKENS, "eval_count": words,
            });
            let thinking = s.thinking.lock().clone();
            if let Some(Value::Array(lp)) =
                ollama_logprobs(body, reply.split_inclusive(' ').enumerate())
            {
                let mut list = thinking_logprobs(&thinking);
                if !thinking.is_empty() {
                    list.extend(THINKING_END.map(thinking_end_logprob));
                }
                list.extend(lp);
                v["logprobs"] = Value::Array(list);
            }
            if !thinking.is_empty() {
                v["thinking"] = json!(thinking);
            }
            v
        }
        (Wire::OpenAi, _) => json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": words, "total_tokens": PROMPT_TOKENS + words},
            "system_fingerprint": "fp_fake",
        }),
        (Wire::Ollama, _) => {
            let mut v = json!({
                "model": model, "created_at": "2024-01-01T00:00:00Z",
                "message": {"role": "assistant", "content": reply},
                "done": true, "done_reason": "stop", "prompt_eval_count": PROMPT_TOKENS, "eval_count": words,
            });
            if let Some(lp) = ollama_logprobs(body, reply.split_inclusive(' ').enumerate()) {
                v["logprobs"] = lp;
            }
            v
        }
        (Wire::Anthropic, _) => json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": reply}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": anthropic_usage(s, words),
        }),
    };
    let body = v.to_string();
    if *b == Behavior::StopHalfway {
        // Promise the whole body, send half, hang up.
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        use tokio::io::AsyncWriteExt;
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body.as_bytes()[..body.len() / 2]).await?;
        stream.flush().await?;
        return Ok(false);
    }
    http1::write_full(stream, 200, "application/json", &[], body.as_bytes()).await?;
    Ok(true)
}

/// An Anthropic `usage`: the fake's prompt and `output` tokens, with what
/// [`FakeUpstream::set_anthropic_usage`] added.
fn anthropic_usage(s: &Shared, output: u64) -> Value {
    let mut u = Map::new();
    u.insert("input_tokens".into(), PROMPT_TOKENS.into());
    u.insert("output_tokens".into(), output.into());
    u.extend(s.anthropic_usage.lock().clone());
    Value::Object(u)
}

/// The stream's events, already framed for the wire.
fn stream_events(s: &Shared, call: Call<'_>, b: &Behavior) -> Vec<String> {
    let Call { body, model, .. } = call;
    let reply = s.reply.lock().clone();
    let pieces: Vec<&str> = reply.split_inclusive(' ').collect();
    let words = reply.split_whitespace().count() as u64;
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut out = Vec::new();
    match (s.wire, call.route) {
        (Wire::OpenAi, Route::Chat) if matches!(b, Behavior::ToolCall { .. }) => {
            let (name, arguments) = match b {
                Behavior::ToolCall { name, arguments } => (name.as_str(), arguments.as_str()),
                _ => ("", ""),
            };
            let chunk = |delta: Value, finish: Value| {
                json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            let first = json!({"role": "assistant", "content": null, "tool_calls": [
                {"index": 0, "id": "call_fake", "type": "function", "function": {"name": name, "arguments": ""}}]});
            out.push(format!("data: {}\n\n", chunk(first, Value::Null)));
            let cut = arguments
                .char_indices()
                .map(|(i, _)| i)
                .nth(arguments.chars().count() / 2)
                .unwrap_or(arguments.len());
            for piece in [&arguments[..cut], &arguments[cut..]] {
                let d = json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]});
                out.push(format!("data: {}\n\n", chunk(d, Value::Null)));
            }
            out.push(format!(
                "data: {}\n\n",
                chunk(json!({}), json!("tool_calls"))
            ));
            if include_usage {
                let u = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
                               "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 5, "total_tokens": PROMPT_TOKENS + 5}});
                out.push(format!("data: {u}\n\n"));
            }
            out.push("data: [DONE]\n\n".into());
        }
        (Wire::OpenAi, Route::Complete) => {
            // As OpenAI does: asked for usage, every chunk carries a null one.
            let chunk = |text: &str, finish: Value| {
                let mut c = json!({"id": "cmpl-fake", "object": "text_completion", "created": 1, "model": model,
                       "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]});
                if include_usage {
                    c["usage"] = Value::Null;
                }
                c
            };
            for p in &pieces {
                out.push(format!("data: {}\n\n", chunk(p, Value::Null)));
            }
            out.push(format!("data: {}\n\n", chunk("", json!("stop"))));
            if include_usage {
                let u = json!({"id": "cmpl-fake", "object": "text_completion", "created": 1, "model": model, "choices": [],
                               "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": words, "total_tokens": PROMPT_TOKENS + words}});
                out.push(format!("data: {u}\n\n"));
            }
            out.push("data: [DONE]\n\n".into());
        }
        (Wire::Ollama, Route::Complete) => {
            let ignored = json!({});
            let body = if s.ignore_logprobs.load(Ordering::SeqCst) {
                &ignored
            } else {
                body
            };
            let asked = body.get("logprobs").and_then(Value::as_bool) == Some(true);
            let thinking = s.thinking.lock().clone();
            for t in thinking.split_inclusive(' ') {
                let mut v = json!({"model": model, "created_at": "2024-01-01T00:00:00Z", "response": "", "thinking": t, "done": false});
                if asked {
                    v["logprobs"] = Value::Array(thinking_logprobs(t));
                }
                out.push(format!("{v}\n"));
            }
            if !thinking.is_empty() {
                for t in THINKING_END {
                    let mut v = json!({"model": model, "created_at": "2024-01-01T00:00:00Z", "response": "", "done": false});
                    if asked {
                        v["logprobs"] = json!([thinking_end_logprob(t)]);
                    }
                    out.push(format!("{v}\n"));
                }
            }
            for (i, p) in pieces.iter().enumerate() {
                let mut v = json!({"model": model, "created_at": "2024-01-01T00:00:00Z", "response": p, "done": false});
                if let Some(lp) = ollama_logprobs(body, std::iter::once((i, *p))) {
                    v["logprobs"] = lp;
                }
                out.push(format!("{v}\n"));
            }
            let v = json!({"model": model, "created_at": "2024-01-01T00:00:00Z", "response": "",
                           "done": true, "done_reason": "stop", "context": [1, 2, 3],
                           "prompt_eval_count": PROMPT_TOKENS, "eval_count": words});
            out.push(format!("{v}\n"));
        }
        (Wire::OpenAi, _) => {
            // As OpenAI does: asked for usage, every chunk carries a null one.
            let chunk = |delta: Value, finish: Value| {
                let mut c = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                if include_usage {
                    c["usage"] = Value::Null;
                }
                c
            };
            for (i, p) in pieces.iter().enumerate() {
                let delta = if i == 0 {
                    json!({"role": "assistant", "content": p})
                } else {
                    json!({"content": p})
                };
                out.push(format!("data: {}\n\n", chunk(delta, Value::Null)));
            }
            out.push(format!("data: {}\n\n", chunk(json!({}), json!("stop"))));
            if include_usage {
                let u = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
                               "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": words, "total_tokens": PROMPT_TOKENS + words}});
                out.push(format!("data: {u}\n\n"));
            }
            out.push("data: [DONE]\n\n".into());
        }
        (Wire::Ollama, _) => {
            for (i, p) in pieces.iter().enumerate() {
                let mut v = json!({"model": model, "created_at": "2024-01-01T00:00:00Z", "message": {"role": "assistant", "content": p}, "done": false});
                if let Some(lp) = ollama_logprobs(body, std::iter::once((i, *p))) {
                    v["logprobs"] = lp;
                }
                out.push(format!("{v}\n"));
            }
            let v = json!({"model": model, "created_at": "2024-01-01T00:00:00Z", "message": {"role": "assistant", "content": ""},
                           "done": true, "done_reason": "stop", "prompt_eval_count": PROMPT_TOKENS, "eval_count": words});
            out.push(format!("{v}\n"));
        }
        (Wire::Anthropic, _) => {
            let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
            out.push(ev(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                        "content": [], "stop_reason": null, "usage": anthropic_usage(s, 1)}}),
            ));
            out.push(ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ));
            out.push(ev("ping", json!({"type": "ping"})));
            for p in &pieces {
                out.push(ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
                ));
            }
            out.push(ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ));
            out.push(ev(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": words}}),
            ));
            out.push(ev("message_stop", json!({"type": "message_stop"})));
        }
    }
    out
}

/// The logprobs of a thinking model's reasoning: -5 a word.
fn thinking_logprobs(thinking: &str) -> Vec<Value> {
    thinking
        .split_inclusive(' ')
        .map(|t| json!({"token": t, "logprob": -5.0, "bytes": t.as_bytes()}))
        .collect()
}

/// The tokens that end a thinking model's reasoning, as Ollama lists them:
/// neither thinking nor text (its parser keeps them from both), streamed on
/// lines of their own.
const THINKING_END: [&str; 3] = ["\n", "</think>", "\n\n"];

/// The logprob of one of [`THINKING_END`].
fn thinking_end_logprob(t: &str) -> Value {
    json!({"token": t, "logprob": -0.01, "bytes": t.as_bytes()})
}

/// Ollama's `logprobs` for these `(position, token)` pairs (one token per
/// word of the reply) when the request set `logprobs: true`, as Ollama
/// 0.12.11 and later send them: `{token, logprob, bytes, top_logprobs}`,
/// with `top_logprobs` alternatives only when asked. The word at position `i`
/// has logprob `-(i + 1) / 10`; its alternatives are `alt1`, `alt2`, ...
fn ollama_logprobs<'a>(
    body: &Value,
    tokens: impl Iterator<Item = (usize, &'a str)>,
) -> Option<Value> {
    if body.get("logprobs").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    let top = body
        .get("top_logprobs")
        .and_then(Value::as_u64)
        .unwrap_or(0)
        .min(20); // Ollama's largest
    let list: Vec<Value> = tokens
        .map(|(i, t)| {
            let lp = -((i + 1) as f64) / 10.0;
            let mut alts = vec![json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})];
            alts.extend((1..top).map(|k| {
                let alt = format!("alt{k}");
                json!({"token": alt, "logprob": lp - k as f64, "bytes": alt.as_bytes()})
            }));
            alts.truncate(usize::try_from(top).unwrap_or(usize::MAX));
            let mut v = json!({"token": t, "logprob": lp, "bytes": t.as_bytes()});
            // Go's `omitempty`: no alternatives asked, no field.
            if top > 0 {
                v["top_logprobs"] = Value::Array(alts);
            }
            v
        })
        .collect();
    Some(Value::Array(list))
}

async fn answer_stream(
    stream: &mut TcpStream,
    s: &Shared,
    call: Call<'_>,
    b: &Behavior,
) -> std::io::Result<bool> {
    let ct = match s.wire {
        Wire::Ollama => "application/x-ndjson",
        _ => "text/event-stream",
    };
    http1::write_stream_head(stream, ct).await?;
    if let Behavior::SlowFirstToken(d) = b {
        tokio::time::sleep(*d).await;
    }
    if *b == Behavior::Malformed {
        let junk: &[u8] = match s.wire {
            Wire::Ollama => b"this is not json\n",
            _ => b"data: {this is not json\n\n",
        };
        http1::write_chunk(stream, junk).await?;
        http1::write_end(stream).await?;
        return Ok(true);
    }
    let events = stream_events(s, call, b);
    let cut = if *b == Behavior::StopHalfway {
        (events.len() / 2).max(1)
    } else {
        events.len()
    };
    let delay = *s.chunk_delay.lock();
    for (i, e) in events.iter().take(cut).enumerate() {
        if i > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if http1::write_chunk(stream, e.as_bytes()).await.is_err() {
            s.disconnects.fetch_add(1, Ordering::SeqCst);
            return Ok(false);
        }
    }
    if cut < events.len() {
        // Drop the connection without the terminating chunk.
        return Ok(false);
    }
    if http1::write_end(stream).await.is_err() {
        s.disconnects.fetch_add(1, Ordering::SeqCst);
        return Ok(false);
    }
    s.completed_streams.fetch_add(1, Ordering::SeqCst);
    Ok(true)
}

async fn embed(
    stream: &mut TcpStream,
    s: &Shared,
    body: &Value,
    model: &str,
    b: &Behavior,
) -> std::io::Result<bool> {
    if *b == Behavior::Malformed {
        http1::write_full(stream, 200, "application/json", &[], b"not json").await?;
        return Ok(true);
    }
    if let Behavior::Body(body) = b {
        http1::write_full(stream, 200, "application/json", &[], body.as_bytes()).await?;
        return Ok(true);
    }
    let n = match body.get("input") {
        Some(Value::Array(a)) => a.len(),
        _ => 1,
    };
    let vectors: Vec<Value> = (0..n).map(|i| json!([i as f64, 0.5, 0.25])).collect();
    let v = match s.wire {
        Wire::Ollama => json!({"model": model, "embeddings": vectors, "prompt_eval_count": n}),
        _ => json!({
            "object": "list",
            "data": vectors.iter().enumerate().map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v})).collect::<Vec<_>>(),
            "model": model,
            "usage": {"prompt_tokens": n, "total_tokens": n},
        }),
    };
    http1::write_full(
        stream,
        200,
        "application/json",
        &[],
        v.to_string().as_bytes(),
    )
    .await?;
    Ok(true)
}

/// One page of Anthropic's `GET /v1/models` as the real API pages it:
/// `limit` models (20 by default, 1 to 1,000) after `after_id`, with
/// `has_more`, `first_id` and `last_id`.
fn anthropic_models_page(models: &[String], path: &str) -> Value {
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let limit = param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 1000);
    let start = param("after_id")
        .and_then(|a| models.iter().position(|m| *m == a).map(|i| i + 1))
        .unwrap_or(0);
    let page: Vec<&String> = models.iter().skip(start).take(limit).collect();
    json!({
        "data": page.iter().map(|m| json!({"id": m, "type": "model", "display_name": m})).collect::<Vec<_>>(),
        "has_more": start + page.len() < models.len(),
        "first_id": page.first(),
        "last_id": page.last(),
    })
}
