//! The [`Provider`] trait and one implementation per wire format.

pub mod anthropic;
pub(crate) mod completion;
pub(crate) mod content;
pub(crate) mod http;
pub mod mock;
pub mod ollama;
pub mod openai;

use crate::error::Failure;
use bytes::Bytes;
use futures::Stream;
use std::future::Future;
use std::pin::Pin;
use uat_config::ProviderKind;
use uat_types::{ChatRequest, CompletionRequest, Usage};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A stream of OpenAI-shaped chunks; an `Err` ends it.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<StreamChunk, Failure>> + Send>>;

/// A complete JSON answer (chat completion, text completion or embeddings),
/// already in the OpenAI shape, and the usage it reports.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The JSON body.
    pub body: Bytes,
    /// Token counts, when reported.
    pub usage: Option<Usage>,
    /// Which answer lists the body was seen to hold.
    pub shape: Shape,
}

impl Reply {
    /// A chat or text completion the provider built itself (it has
    /// `choices`).
    pub fn chat(body: Vec<u8>, usage: Option<Usage>) -> Self {
        Reply {
            body: Bytes::from(body),
            usage,
            shape: Shape {
                choices: true,
                data: false,
            },
        }
    }

    /// An embeddings list the provider built itself (it has `data`).
    pub fn embeddings(body: Vec<u8>, usage: Option<Usage>) -> Self {
        Reply {
            body: Bytes::from(body),
            usage,
            shape: Shape {
                choices: false,
                data: true,
            },
        }
    }
}

/// Whether an answer's body holds the list a cache stores it for: `choices`
/// (a chat or text completion) or `data` (embeddings), each a JSON array. Noted
/// while the provider reads the body anyway, so the cache need not parse it
/// a second time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// `choices` is an array.
    pub choices: bool,
    /// `data` is an array.
    pub data: bool,
}

/// One streamed chunk: a serialized `chat.completion.chunk` object, or a
/// `text_completion` one for a streamed text completion.
#[derive(Debug, Clone)]
pub struct StreamChunk {
    /// The chunk's JSON (what follows `data: `).
    pub json: Bytes,
    /// Usage carried by this chunk, if any.
    pub usage: Option<Usage>,
}

impl StreamChunk {
    /// Serializes a chunk.
    pub fn from_chunk(chunk: &uat_types::ChatChunk) -> Result<Self, Failure> {
        let json = serde_json::to_vec(chunk).map_err(|e| {
            Failure::new(
                crate::FailureKind::Malformed,
                format!("cannot encode chunk: {e}"),
            )
        })?;
        Ok(StreamChunk {
            json: Bytes::from(json),
            usage: chunk.usage,
        })
    }
}

/// Refuses `n` above 1 for a provider that gives one choice per answer
/// (`kind` as the config spells it), so that an alias fails over to a
/// target that can, rather than answering with one choice.
pub(crate) fn one_choice(req: &ChatRequest, kind: &str) -> Result<(), Failure> {
    at_most_one(&req.extra, "n", kind)
}

/// The refusal of a text completion by a provider kind that has none.
pub(crate) fn no_text_completions(kind: ProviderKind) -> Failure {
    Failure::unsupported(
        format!(
            "{} providers have no text completions; send the request to /v1/chat/completions instead",
            format!("{kind:?}").to_lowercase()
        ),
        "model",
        "unsupported_endpoint",
    )
}

/// Refuses a count field (`n`, `best_of`) of `extra` above 1 for a provider
/// of `kind` that gives one choice per answer.
pub(crate) fn at_most_one(
    extra: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    kind: &str,
) -> Result<(), Failure> {
    match extra.get(key).and_then(serde_json::Value::as_f64) {
        Some(n) if n > 1.0 => Err(Failure::unsupported(
            format!("{key} > 1 is not supported by {kind} providers"),
            key,
            "unsupported_parameter",
        )),
        _ => Ok(()),
    }
}

/// The logprobs field the request asks for, if any: `logprobs` when it is
/// `true`, else `top_logprobs` when it is above 0.
pub(crate) fn asks_for_logprobs(req: &ChatRequest) -> Option<&'static str> {
    if req
        .extra
        .get("logprobs")
        .and_then(serde_json::Value::as_bool)
        == Some(true)
    {
        Some("logprobs")
    } else if req
        .extra
        .get("top_logprobs")
        .and_then(serde_json::Value::as_f64)
        .is_some_and(|n| n > 0.0)
    {
        Some("top_logprobs")
    } else {
        None
    }
}

/// Whether the request asks for one tool call at most
/// (`parallel_tool_calls: false`).
pub(crate) fn one_call_at_most(req: &ChatRequest) -> bool {
    req.extra
        .get("parallel_tool_calls")
        .and_then(serde_json::Value::as_bool)
        == Some(false)
}

/// An upstream LLM provider speaking one wire format.
///
/// Implementations hold one pooled HTTP client, built at start-up. Every
/// method returns a [`Failure`] classified for retries and metrics.
pub trait Provider: Send + Sync {
    /// The wire format.
    fn kind(&self) -> ProviderKind;

    /// Whether this provider kind can do what `req` asks at all (`n` > 1,
    /// logprobs, an image by URL): [`FailureKind::Unsupported`](crate::FailureKind)
    /// naming the field when it cannot. The router asks before an attempt,
    /// so a refusal is no attempt: it takes no breaker permit, counts
    /// against no `max_attempts` and is no provider error.
    fn check(&self, req: &ChatRequest) -> Result<(), Failure> {
        let _ = req;
        Ok(())
    }

    /// A non-streamed chat completion from `model` (the upstream's name).
    fn chat<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Reply, Failure>>;

    /// A streamed chat completion; resolves once the upstream accepted the
    /// request (response head received).
    fn chat_stream<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, Failure>>;

    /// Whether this provider kind can do what a text completion `req` asks
    /// at all (several prompts, `echo`, logprobs, the endpoint itself): as
    /// [`Provider::check`], asked before an attempt, a refusal no attempt.
    fn check_completion(&self, req: &CompletionRequest) -> Result<(), Failure> {
        let _ = req;
        Ok(())
    }

    /// A non-streamed text completion (`POST /v1/completions`, answered as
    /// an OpenAI `text_completion` object) from `model` (the upstream's name).
    /// By default a kind has none: the refusal of
    /// [`Provider::check_completion`], else [`no_text_completions`].
    fn completion<'a>(
        &'a self,
        model: &'a str,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        let _ = model;
        let refused = self.check_completion(req).err();
        Box::pin(async move { Err(refused.unwrap_or_else(|| no_text_completions(self.kind()))) })
    }

    /// A streamed text completion, each chunk a `text_completion` object;
    /// resolves once the upstream accepted the request (response head
    /// received). By default refused as [`Provider::completion`] is.
    fn completion_stream<'a>(
        &'a self,
        model: &'a str,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, Failure>> {
        let _ = model;
        let refused = self.check_completion(req).err();
        Box::pin(async move { Err(refused.unwrap_or_else(|| no_text_completions(self.kind()))) })
    }

    /// The models the upstream serves now.
    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, Failure>>;

    /// Embeddings for an OpenAI-shaped `/v1/embeddings` body, answered in the OpenAI shape.
    fn embeddings<'a>(
        &'a self,
        model: &'a str,
        body: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<Reply, Failure>>;
}

/// Test helper of the adapters: a chat request of `v`'s fields, with model
/// `x` and one user message unless `v` has messages.
#[cfg(test)]
pub(crate) fn request(v: serde_json::Value) -> ChatRequest {
    let mut v = v;
    v["model"] = serde_json::json!("x");
    if v.get("messages").is_none() {
        v["messages"] = serde_json::json!([{"role": "user", "content": "hi"}]);
    }
    serde_json::from_value(v).expect("a chat request")
}

/// Test helper of the adapters: a text completion request of `v`'s fields,
/// with model `x` and prompt `hi` unless `v` has one.
#[cfg(test)]
pub(crate) fn completion_request(v: serde_json::Value) -> CompletionRequest {
    let mut v = v;
    v["model"] = serde_json::json!("x");
    if v.get("prompt").is_none() {
        v["prompt"] = serde_json::json!("hi");
    }
    serde_json::from_value(v).expect("a completion request")
}

/// Test helper of the adapters: [`request`] offering tools `f` and `g`,
/// with `extra`'s fields.
#[cfg(test)]
pub(crate) fn tools_request(extra: serde_json::Value) -> ChatRequest {
    let mut v = serde_json::json!({"tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "g", "parameters": {"type": "object"}}},
    ]});
    for (k, x) in extra.as_object().into_iter().flatten() {
        v[k] = x.clone();
    }
    request(v)
}

/// Test helper of the adapters that translate a stream: feeds `lines` (one
/// item each) through `translate` and parses every chunk's JSON.
#[cfg(test)]
pub(crate) fn translated(
    lines: &[&'static str],
    translate: impl FnOnce(
        futures::stream::Iter<std::vec::IntoIter<Result<Bytes, Failure>>>,
    ) -> ChunkStream,
) -> Vec<Result<serde_json::Value, Failure>> {
    use futures::StreamExt;
    let items: Vec<Result<Bytes, Failure>> = lines
        .iter()
        .map(|l| Ok(Bytes::from_static(l.as_bytes())))
        .collect();
    let out: Vec<_> =
        futures::executor::block_on(translate(futures::stream::iter(items)).collect());
    out.into_iter()
        .map(|r| r.map(|c| serde_json::from_slice(&c.json).expect("a chunk is JSON")))
        .collect()
}
