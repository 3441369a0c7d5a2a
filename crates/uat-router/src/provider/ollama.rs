//! Ollama's native API: `/api/chat` (its NDJSON stream translated to OpenAI
//! chunks), `/api/tags` for discovery and `/api/embed` for embeddings.

use super::http::{self, lines, read_json, send};
use super::{BoxFuture, ChunkStream, Provider, Reply, StreamChunk};
use crate::error::{Failure, FailureKind, RouterError};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::time::Duration;
use uat_config::{ProviderConfig, ProviderKind};
use uat_types::{ChatChunk, ChatCompletion, ChatMessage, ChatRequest, Choice, Delta, Usage};

/// An Ollama server. `base_url` is the server root (`http://127.0.0.1:11434`).
pub struct Ollama {
    client: reqwest::Client,
    chat_url: reqwest::Url,
    tags_url: reqwest::Url,
    embed_url: reqwest::Url,
    auth: Option<String>,
    /// Until the response head of a stream (`first_byte_timeout`).
    first_byte: Duration,
    /// Of a whole non-streamed exchange (`timeout`): such an answer's head
    /// comes only once it is generated, so the first-byte bound is not its.
    total: Duration,
}

#[derive(Deserialize, Default)]
struct OllamaMessage {
    #[serde(default)]
    content: String,
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct OllamaChat {
    #[serde(default)]
    message: Option<OllamaMessage>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    error: Option<String>,
}

impl OllamaChat {
    fn usage(&self) -> Usage {
        Usage::new(
            self.prompt_eval_count.unwrap_or(0),
            self.eval_count.unwrap_or(0),
        )
    }
}

impl Ollama {
    /// Builds the provider and its pooled client.
    pub fn new(cfg: &ProviderConfig) -> Result<Self, RouterError> {
        let base = cfg.base_url.as_deref().unwrap_or("http://127.0.0.1:11434");
        Ok(Ollama {
            client: http::client(cfg)?,
            chat_url: http::join(cfg, base, "/api/chat")?,
            tags_url: http::join(cfg, base, "/api/tags")?,
            embed_url: http::join(cfg, base, "/api/embed")?,
            auth: http::api_key(cfg).map(|k| format!("Bearer {k}")),
            first_byte: cfg.first_byte_timeout,
            total: cfg.timeout,
        })
    }

    fn request(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some(a) => rb.header(reqwest::header::AUTHORIZATION, a),
            None => rb,
        }
    }

    async fn post(
        &self,
        url: reqwest::Url,
        body: &Value,
        stream: bool,
    ) -> Result<reqwest::Response, Failure> {
        let body = serde_json::to_vec(body).map_err(|e| {
            Failure::new(
                FailureKind::Malformed,
                format!("cannot encode request: {e}"),
            )
        })?;
        let rb = self
            .request(self.client.post(url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        send(rb, if stream { self.first_byte } else { self.total }).await
    }
}

/// The `/api/chat` body for an OpenAI request.
pub(crate) fn chat_body(model: &str, req: &ChatRequest, stream: bool) -> Value {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| message(m, &req.messages))
        .collect();
    let mut options = Map::new();
    if let Some(t) = req.temperature {
        options.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        options.insert("top_p".into(), json!(p));
    }
    if let Some(n) = req.max_output_tokens() {
        options.insert("num_predict".into(), json!(n));
    }
    let stop = req.stop_sequences();
    if !stop.is_empty() {
        options.insert("stop".into(), json!(stop));
    }
    for key in ["seed", "frequency_penalty", "presence_penalty"] {
        if let Some(v) = req.extra.get(key) {
            options.insert(key.into(), v.clone());
        }
    }
    let mut body = json!({ "model": model, "messages": messages, "stream": stream });
    if let Some(o) = body.as_object_mut() {
        if !options.is_empty() {
            o.insert("options".into(), Value::Object(options));
        }
        if let Some(tools) = req.extra.get("tools") {
            o.insert("tools".into(), tools.clone());
        }
        match req.extra.get("response_format") {
            Some(rf) if rf.get("type").and_then(Value::as_str) == Some("json_object") => {
                o.insert("format".into(), json!("json"));
            }
            Some(rf) => {
                if let Some(schema) = rf.pointer("/json_schema/schema") {
                    o.insert("format".into(), schema.clone());
                }
            }
            None => {}
        }
    }
    body
}

/// One message in Ollama's shape. A tool result names its tool
/// (`tool_name`): OpenAI's tool messages carry only `tool_call_id`, so the
/// name is found in the assistant call it answers (`all` is the whole
/// conversation), unless the message gives a `name` itself.
fn message(m: &ChatMessage, all: &[ChatMessage]) -> Value {
    let role = if m.role == "developer" {
        "system"
    } else {
        m.role.as_str()
    };
    let mut out = json!({ "role": role, "content": m.text_content() });
    let Some(o) = out.as_object_mut() else {
        return out;
    };
    if let Value::Array(parts) = &m.content {
        let images: Vec<Value> = parts
            .iter()
            .filter_map(|p| p.pointer("/image_url/url").and_then(Value::as_str))
            .filter_map(|u| u.split_once(";base64,").map(|(_, data)| json!(data)))
            .collect();
        if !images.is_empty() {
            o.insert("images".into(), Value::Array(images));
        }
    }
    if let Some(Value::Array(calls)) = m.extra.get("tool_calls") {
        let calls: Vec<Value> = calls
            .iter()
            .map(|c| {
                let args = c
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .unwrap_or_else(|| json!({}));
                json!({ "function": { "name": c.pointer("/function/name").cloned().unwrap_or(Value::Null), "arguments": args } })
            })
            .collect();
        o.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(name) = m.extra.get("name") {
        o.insert("tool_name".into(), name.clone());
    } else if m.role == "tool"
        && let Some(name) = m
            .extra
            .get("tool_call_id")
            .and_then(|id| tool_name_of(id, all))
    {
        o.insert("tool_name".into(), name.clone());
    }
    out
}

/// The function name of the assistant tool call with this id.
fn tool_name_of<'a>(id: &Value, all: &'a [ChatMessage]) -> Option<&'a Value> {
    all.iter()
        .filter_map(|m| m.extra.get("tool_calls").and_then(Value::as_array))
        .flatten()
        .find(|c| c.get("id") == Some(id))
        .and_then(|c| c.pointer("/function/name"))
}

/// Ollama tool calls (arguments as objects) in the OpenAI shape (arguments
/// as strings). Each call gets an id of its own (a conversation that comes
/// back with several turns of calls must not repeat one); streamed, the
/// calls are numbered from `first`, the number of calls sent before them in
/// the stream (Ollama may send each call on a line of its own, and clients
/// merge streamed calls by index).
fn tool_calls(calls: &[Value], first: Option<usize>) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let args = match c.pointer("/function/arguments") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => "{}".into(),
                };
                let mut v = json!({
                    "id": format!("call_{:016x}", rand::random::<u64>()),
                    "type": "function",
                    "function": { "name": c.pointer("/function/name").cloned().unwrap_or(Value::Null), "arguments": args },
                });
                if let Some(first) = first
                    && let Some(o) = v.as_object_mut()
                {
                    o.insert("index".into(), json!(first + i));
                }
                v
            })
            .collect(),
    )
}

fn finish_reason(r: &OllamaChat, had_tools: bool) -> String {
    if had_tools {
        return "tool_calls".into();
    }
    match r.done_reason.as_deref() {
        Some("length") => "length".into(),
        _ => "stop".into(),
    }
}

fn completion_id() -> String {
    format!("chatcmpl-{:x}", rand::random::<u64>())
}

impl Provider for Ollama {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Ollama
    }

    fn chat<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move {
            let resp = self
                .post(self.chat_url.clone(), &chat_body(model, req, false), false)
                .await?;
            let (_, r): (_, OllamaChat) = read_json(resp).await?;
            if let Some(e) = r.error {
                return Err(Failure::new(FailureKind::ServerError, e));
            }
            let usage = r.usage();
            let msg = r.message.as_ref();
            let calls = msg
                .and_then(|m| m.tool_calls.as_deref())
                .filter(|c| !c.is_empty());
            let mut message = ChatMessage::text(
                "assistant",
                msg.map(|m| m.content.clone()).unwrap_or_default(),
            );
            if let Some(c) = calls {
                message
                    .extra
                    .insert("tool_calls".into(), tool_calls(c, None));
            }
            let completion = ChatCompletion {
                id: completion_id(),
                object: "chat.completion".into(),
                created: uat_types::unix_now(),
                model: model.to_owned(),
                choices: vec![Choice {
                    index: 0,
                    message,
                    finish_reason: Some(finish_reason(&r, calls.is_some())),
                    extra: Map::new(),
                }],
                usage: Some(usage),
                extra: Map::new(),
            };
            let body = serde_json::to_vec(&completion)
                .map_err(|e| Failure::new(FailureKind::Malformed, format!("cannot encode: {e}")))?;
            Ok(Reply::chat(body, Some(usage)))
        })
    }

    fn chat_stream<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, Failure>> {
        Box::pin(async move {
            let resp = self
                .post(self.chat_url.clone(), &chat_body(model, req, true), true)
                .await?;
            let state = StreamState {
                id: completion_id(),
                created: uat_types::unix_now(),
                model: model.to_owned(),
                include_usage: req.include_usage(),
                sent_role: false,
                tools_sent: 0,
                pending: VecDeque::new(),
                done: false,
            };
            Ok(translate(lines(resp), state))
        })
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, Failure>> {
        Box::pin(async move {
            #[derive(Deserialize)]
            struct Tags {
                models: Vec<Tag>,
            }
            #[derive(Deserialize)]
            struct Tag {
                name: String,
            }
            let resp = send(
                self.request(self.client.get(self.tags_url.clone())),
                self.first_byte,
            )
            .await?;
            let (_, tags): (_, Tags) = read_json(resp).await?;
            Ok(tags.models.into_iter().map(|t| t.name).collect())
        })
    }

    fn embeddings<'a>(
        &'a self,
        model: &'a str,
        body: &'a Value,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move {
            #[derive(Deserialize)]
            struct Embed {
                embeddings: Vec<Value>,
                #[serde(default)]
                prompt_eval_count: Option<u64>,
            }
            let mut req = json!({ "model": model, "input": body.get("input").cloned().unwrap_or(Value::Null) });
            if let (Some(d), Some(o)) = (body.get("dimensions"), req.as_object_mut()) {
                o.insert("dimensions".into(), d.clone());
            }
            let resp = self.post(self.embed_url.clone(), &req, false).await?;
            let (_, e): (_, Embed) = read_json(resp).await?;
            let tokens = e.prompt_eval_count.unwrap_or(0);
            let data: Vec<Value> = e
                .embeddings
                .into_iter()
                .enumerate()
                .map(|(i, v)| json!({ "object": "embedding", "index": i, "embedding": v }))
                .collect();
            let out = json!({
                "object": "list",
                "data": data,
                "model": model,
                "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
            });
            let body = serde_json::to_vec(&out)
                .map_err(|e| Failure::new(FailureKind::Malformed, format!("cannot encode: {e}")))?;
            Ok(Reply::embeddings(body, Some(Usage::new(tokens, 0))))
        })
    }
}

struct StreamState {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    sent_role: bool,
    /// Tool calls sent so far (the next one's index).
    tools_sent: usize,
    pending: VecDeque<Result<StreamChunk, Failure>>,
    done: bool,
}

impl StreamState {
    fn push(&mut self, delta: Delta, finish: Option<String>) {
        let c = ChatChunk::delta(&self.id, self.created, &self.model, delta, finish);
        self.pending.push_back(StreamChunk::from_chunk(&c));
    }

    /// Turns one NDJSON line into zero or more chunks.
    fn line(&mut self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let r: OllamaChat = match serde_json::from_slice(line) {
            Ok(r) => r,
            Err(e) => {
                self.fail(
                    FailureKind::Malformed,
                    format!("invalid NDJSON line from upstream: {e}"),
                );
                return;
            }
        };
        if let Some(e) = r.error.clone() {
            self.fail(FailureKind::Interrupted, e);
            return;
        }
        let msg = r.message.unwrap_or_default();
        let content = msg.content;
        let calls = msg.tool_calls.filter(|c| !c.is_empty());
        if !content.is_empty() || calls.is_some() || !self.sent_role {
            let mut delta = Delta {
                role: (!self.sent_role).then(|| "assistant".to_owned()),
                content: Some(content),
                extra: Map::new(),
            };
            if let Some(c) = &calls {
                delta
                    .extra
                    .insert("tool_calls".into(), tool_calls(c, Some(self.tools_sent)));
                self.tools_sent += c.len();
            }
            self.sent_role = true;
            self.push(delta, None);
        }
        if r.done {
            let usage = Usage::new(r.prompt_eval_count.unwrap_or(0), r.eval_count.unwrap_or(0));
            let reason = finish_reason(
                &OllamaChat {
                    message: None,
                    done: true,
                    done_reason: r.done_reason,
                    prompt_eval_count: None,
                    eval_count: None,
                    error: None,
                },
                self.tools_sent > 0,
            );
            self.push(Delta::default(), Some(reason));
            if self.include_usage {
                let c = ChatChunk::usage(&self.id, self.created, &self.model, usage);
                self.pending.push_back(StreamChunk::from_chunk(&c));
            }
            self.done = true;
        }
    }

    fn fail(&mut self, kind: FailureKind, message: String) {
        self.pending.push_back(Err(Failure::new(kind, message)));
        self.done = true;
    }
}

fn translate(
    lines: impl futures::Stream<Item = Result<Bytes, Failure>> + Send + 'static,
    state: StreamState,
) -> ChunkStream {
    Box::pin(futures::stream::unfold(
        (Box::pin(lines), state, false),
        |(mut lines, mut st, mut ended)| async move {
            loop {
                if let Some(item) = st.pending.pop_front() {
                    return Some((item, (lines, st, ended)));
                }
                if st.done || ended {
                    return None;
                }
                match lines.next().await {
                    Some(Ok(line)) => st.line(&line),
                    Some(Err(f)) => {
                        st.pending.push_back(Err(f));
                        st.done = true;
                    }
                    None => {
                        ended = true;
                        st.pending.push_back(Err(Failure::new(
                            FailureKind::Interrupted,
                            "stream ended before `done: true`",
                        )));
                    }
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(include_usage: bool) -> StreamState {
        StreamState {
            id: "x".into(),
            created: 1,
            model: "llama".into(),
            include_usage,
            sent_role: false,
            tools_sent: 0,
            pending: VecDeque::new(),
            done: false,
        }
    }

    fn collect(lines: &[&'static str], st: StreamState) -> Vec<Result<Value, Failure>> {
        let items: Vec<Result<Bytes, Failure>> = lines
            .iter()
            .map(|l| Ok(Bytes::from_static(l.as_bytes())))
            .collect();
        let out: Vec<_> =
            futures::executor::block_on(translate(futures::stream::iter(items), st).collect());
        out.into_iter()
            .map(|r| r.map(|c| serde_json::from_slice(&c.json).unwrap()))
            .collect()
    }

    #[test]
    fn ndjson_becomes_openai_chunks() {
        let out = collect(
            &[
                r#"{"message":{"role":"assistant","content":"Hel"},"done":false}"#,
                r#"{"message":{"role":"assistant","content":"lo"},"done":false}"#,
                r#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"length","prompt_eval_count":4,"eval_count":2}"#,
            ],
            state(true),
        );
        assert_eq!(out.len(), 4);
        let v: Vec<Value> = out.into_iter().map(Result::unwrap).collect();
        assert_eq!(v[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(v[0]["choices"][0]["delta"]["content"], "Hel");
        assert!(v[1]["choices"][0]["delta"].get("role").is_none());
        assert_eq!(v[2]["choices"][0]["finish_reason"], "length");
        assert_eq!(v[3]["usage"]["prompt_tokens"], 4);
        assert_eq!(v[3]["usage"]["total_tokens"], 6);
        assert_eq!(v[3]["object"], "chat.completion.chunk");
    }

    /// Ollama may send parallel calls on lines of their own: they are
    /// numbered on through the stream (index 0, then 1), each with its own
    /// id, so clients that merge streamed calls by index keep them apart.
    #[test]
    fn streamed_tool_calls_on_separate_lines_keep_apart() {
        let out = collect(
            &[
                r#"{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"ls","arguments":{"path":"/a"}}}]},"done":false}"#,
                r#"{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"ls","arguments":{"path":"/b"}}},{"function":{"name":"cat","arguments":{}}}]},"done":false}"#,
                r#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}"#,
            ],
            state(false),
        );
        let v: Vec<Value> = out.into_iter().map(Result::unwrap).collect();
        let calls: Vec<&Value> = v
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
            .flatten()
            .collect();
        let indexes: Vec<u64> = calls.iter().filter_map(|c| c["index"].as_u64()).collect();
        assert_eq!(indexes, [0, 1, 2]);
        let ids: std::collections::HashSet<&str> =
            calls.iter().filter_map(|c| c["id"].as_str()).collect();
        assert_eq!(ids.len(), 3, "{calls:?}");
        assert_eq!(calls[1]["function"]["arguments"], r#"{"path":"/b"}"#);
        assert_eq!(
            v.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }

    #[test]
    fn cut_stream_and_error_line_fail() {
        let out = collect(
            &[r#"{"message":{"content":"a"},"done":false}"#],
            state(false),
        );
        assert_eq!(
            out.last().unwrap().as_ref().unwrap_err().kind,
            FailureKind::Interrupted
        );
        let out = collect(&[r#"{"error":"model crashed"}"#], state(false));
        assert_eq!(out[0].as_ref().unwrap_err().message, "model crashed");
    }

    #[test]
    fn request_translation() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "x", "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "max_tokens": 7, "stop": "END", "seed": 3, "temperature": 0.5,
            "response_format": {"type": "json_object"}, "tools": [{"type": "function"}]
        }))
        .unwrap();
        let b = chat_body("llama3", &req, true);
        assert_eq!(b["model"], "llama3");
        assert_eq!(b["messages"][0]["role"], "system");
        assert_eq!(b["options"]["num_predict"], 7);
        assert_eq!(b["options"]["stop"], json!(["END"]));
        assert_eq!(b["options"]["seed"], 3);
        assert_eq!(b["format"], "json");
        assert_eq!(b["tools"], json!([{"type": "function"}]));
        assert_eq!(b["stream"], true);
    }

    /// An OpenAI tool message carries only the call's id; Ollama wants the
    /// tool's name, found in the assistant call it answers.
    #[test]
    fn a_tool_result_is_named_after_its_call() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "x", "messages": [
                {"role": "user", "content": "list both"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "cat", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c2", "content": "file"},
                {"role": "tool", "tool_call_id": "c1", "content": "a b"},
                {"role": "tool", "tool_call_id": "zz", "content": "?"},
                {"role": "tool", "tool_call_id": "c1", "name": "given", "content": "x"}
            ]
        }))
        .unwrap();
        let b = chat_body("llama3", &req, false);
        let names: Vec<&Value> = b["messages"]
            .as_array()
            .unwrap()
            .iter()
            .skip(2)
            .map(|m| &m["tool_name"])
            .collect();
        assert_eq!(
            names,
            [&json!("cat"), &json!("ls"), &Value::Null, &json!("given")]
        );
    }
}
