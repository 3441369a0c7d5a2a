//! The built-in mock provider: a deterministic reply derived from the
//! input, with configurable latency, failure rate and chunking. For demos,
//! tests and load tests; no network.

use super::completion::TextCompletion;
use super::{BoxFuture, ChunkStream, Provider, Reply, StreamChunk};
use crate::error::{Failure, FailureKind};
use uat_config::{MockSettings, ProviderConfig, ProviderKind};
use uat_types::{
    ChatChunk, ChatCompletion, ChatMessage, ChatRequest, Choice, CompletionRequest, Delta, Usage,
};

/// The mock provider.
pub struct Mock {
    settings: MockSettings,
    models: Vec<String>,
}

impl Mock {
    /// Builds a mock from its configuration.
    pub fn new(cfg: &ProviderConfig) -> Self {
        Mock {
            settings: cfg.mock.clone(),
            models: if cfg.models.is_empty() {
                cfg.mock.models.clone()
            } else {
                cfg.models.clone()
            },
        }
    }

    async fn before_reply(&self) -> Result<(), Failure> {
        if !self.settings.latency.is_zero() {
            tokio::time::sleep(self.settings.latency).await;
        }
        let rate = self.settings.failure_rate;
        if rate > 0.0 && rand::random::<f64>() < rate {
            return Err(Failure::from_status(
                500,
                "mock failure (failure_rate)",
                None,
            ));
        }
        Ok(())
    }
}

/// The reply the mock gives to a request: a fixed text around the last user message.
pub fn reply_text(req: &ChatRequest) -> String {
    let last = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(ChatMessage::text_content)
        .unwrap_or_default();
    let mut prompt: String = last.chars().take(200).collect();
    if prompt.is_empty() {
        prompt.push_str("(empty)");
    }
    format!("Mock reply to: {prompt}")
}

/// The text the mock completes a text completion request with: a fixed
/// text around the prompt (one text as it is, another prompt as its JSON).
pub fn completion_text(req: &CompletionRequest) -> String {
    let mut prompt: String = match req.single_prompt() {
        Some(p) => p.chars().take(200).collect(),
        None => req.prompt.to_string().chars().take(200).collect(),
    };
    if prompt.is_empty() {
        prompt.push_str("(empty)");
    }
    format!("Mock completion of: {prompt}")
}

/// The prompt's words, as the mock counts tokens.
fn prompt_words(req: &CompletionRequest) -> u64 {
    req.single_prompt()
        .map_or_else(|| words(&req.prompt.to_string()), words)
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

fn usage(req: &ChatRequest, reply: &str) -> Usage {
    let prompt: u64 = req.messages.iter().map(|m| words(&m.text_content())).sum();
    Usage::new(prompt, words(reply))
}

/// FNV-1a, for a stable completion id.
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Splits `s` into `n` pieces of nearly equal length, on char boundaries.
fn split(s: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    let chars: Vec<usize> = s.char_indices().map(|(i, _)| i).collect();
    let len = chars.len();
    let mut out = Vec::with_capacity(n);
    let mut start = 0usize;
    for k in 1..=n {
        let end_char = len * k / n;
        let end = chars.get(end_char).copied().unwrap_or(s.len());
        out.push(&s[start..end]);
        start = end;
    }
    out
}

fn encode_err(e: serde_json::Error) -> Failure {
    Failure::new(FailureKind::Malformed, format!("cannot encode: {e}"))
}

impl Provider for Mock {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Mock
    }

    fn chat<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move {
            self.before_reply().await?;
            let text = reply_text(req);
            let usage = usage(req, &text);
            let id = format!("chatcmpl-mock-{:016x}", fnv(&text));
            let completion = ChatCompletion {
                id,
                object: "chat.completion".into(),
                created: uat_types::unix_now(),
                model: model.to_owned(),
                choices: vec![Choice {
                    index: 0,
                    message: ChatMessage::text("assistant", text),
                    finish_reason: Some("stop".into()),
                    extra: Default::default(),
                }],
                usage: Some(usage),
                extra: Default::default(),
            };
            let body = serde_json::to_vec(&completion).map_err(encode_err)?;
            Ok(Reply::chat(body, Some(usage)))
        })
    }

    fn chat_stream<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, Failure>> {
        Box::pin(async move {
            self.before_reply().await?;
            let text = reply_text(req);
            let usage = usage(req, &text);
            let id = format!("chatcmpl-mock-{:016x}", fnv(&text));
            let created = uat_types::unix_now();
            let pieces = split(&text, self.settings.chunks);
            let mut out = Vec::with_capacity(pieces.len() + 2);
            for (i, p) in pieces.iter().enumerate() {
                let delta = Delta {
                    role: (i == 0).then(|| "assistant".to_owned()),
                    content: Some((*p).to_owned()),
                    extra: Default::default(),
                };
                out.push(StreamChunk::from_chunk(&ChatChunk::delta(
                    &id, created, model, delta, None,
                )));
            }
            out.push(StreamChunk::from_chunk(&ChatChunk::delta(
                &id,
                created,
                model,
                Delta::default(),
                Some("stop".into()),
            )));
            if req.include_usage() {
                out.push(StreamChunk::from_chunk(&ChatChunk::usage(
                    &id, created, model, usage,
                )));
            }
            let s: ChunkStream = Box::pin(futures::stream::iter(out));
            Ok(s)
        })
    }

    fn completion<'a>(
        &'a self,
        model: &'a str,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move {
            self.before_reply().await?;
            let text = completion_text(req);
            let usage = Usage::new(prompt_words(req), words(&text));
            mock_completion(model, &text).answer(&text, "stop", usage)
        })
    }

    fn completion_stream<'a>(
        &'a self,
        model: &'a str,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, Failure>> {
        Box::pin(async move {
            self.before_reply().await?;
            let text = completion_text(req);
            let usage = Usage::new(prompt_words(req), words(&text));
            let c = mock_completion(model, &text);
            let pieces = split(&text, self.settings.chunks);
            let mut out = Vec::with_capacity(pieces.len() + 2);
            out.extend(pieces.iter().map(|p| c.chunk(p, None)));
            out.push(c.chunk("", Some("stop")));
            if req.include_usage() {
                out.push(c.usage_chunk(usage));
            }
            let s: ChunkStream = Box::pin(futures::stream::iter(out));
            Ok(s)
        })
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, Failure>> {
        Box::pin(async move { Ok(self.models.clone()) })
    }

    fn embeddings<'a>(
        &'a self,
        model: &'a str,
        body: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move {
            self.before_reply().await?;
            let inputs: Vec<String> = match body.get("input") {
                Some(serde_json::Value::String(s)) => vec![s.clone()],
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect(),
                _ => {
                    return Err(Failure::from_status(
                        400,
                        "`input` must be a string or an array",
                        None,
                    ));
                }
            };
            let mut data = Vec::with_capacity(inputs.len());
            let mut tokens = 0;
            for (i, text) in inputs.iter().enumerate() {
                tokens += words(text);
                data.push(serde_json::json!({
                    "object": "embedding",
                    "index": i,
                    "embedding": mock_vector(text, 16),
                }));
            }
            let v = serde_json::json!({
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            });
            let body = serde_json::to_vec(&v).map_err(encode_err)?;
            Ok(Reply::embeddings(body, Some(Usage::new(tokens, 0))))
        })
    }
}

/// A text completion of `model` with an id stable for its `text`.
fn mock_completion(model: &str, text: &str) -> TextCompletion {
    TextCompletion {
        id: format!("cmpl-mock-{:016x}", fnv(text)),
        created: uat_types::unix_now(),
        model: model.to_owned(),
    }
}

/// A deterministic unit vector for a text.
fn mock_vector(text: &str, dim: usize) -> Vec<f32> {
    let mut h = fnv(text);
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            ((h >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    for x in &mut v {
        *x /= norm;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn req(text: &str, usage: bool) -> ChatRequest {
        serde_json::from_value(serde_json::json!({
            "model": "mock-model",
            "messages": [{"role": "user", "content": text}],
            "stream_options": {"include_usage": usage}
        }))
        .unwrap()
    }

    fn cfg(chunks: usize) -> ProviderConfig {
        let mut c: ProviderConfig =
            serde_json::from_value(serde_json::json!({"name": "m", "kind": "mock"})).unwrap();
        c.mock.chunks = chunks;
        c
    }

    #[tokio::test]
    async fn reply_is_deterministic_and_chunked() {
        let m = Mock::new(&cfg(4));
        let r = req("hello there", true);
        let a = m.chat("mock-model", &r).await.unwrap();
        let b = m.chat("mock-model", &r).await.unwrap();
        let va: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        let vb: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
        assert_eq!(
            va["choices"][0]["message"]["content"],
            "Mock reply to: hello there"
        );
        assert_eq!(va["choices"][0], vb["choices"][0]);
        assert_eq!(a.usage, Some(Usage::new(2, 5)));

        let s = m.chat_stream("mock-model", &r).await.unwrap();
        let chunks: Vec<_> = s.collect().await;
        assert_eq!(chunks.len(), 4 + 1 + 1, "4 content, 1 finish, 1 usage");
        let mut text = String::new();
        for c in &chunks[..4] {
            let v: serde_json::Value = serde_json::from_slice(&c.as_ref().unwrap().json).unwrap();
            text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap());
        }
        assert_eq!(text, "Mock reply to: hello there");
        assert_eq!(chunks[5].as_ref().unwrap().usage, Some(Usage::new(2, 5)));
    }

    #[tokio::test]
    async fn text_completions_both_ways() {
        let m = Mock::new(&cfg(3));
        let r = crate::provider::completion_request(serde_json::json!({
            "prompt": "def add(a, b):", "stream_options": {"include_usage": true}
        }));
        let a = m.completion("mock-model", &r).await.unwrap();
        let b = m.completion("mock-model", &r).await.unwrap();
        let va: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        let vb: serde_json::Value = serde_json::from_slice(&b.body).unwrap();
        assert_eq!(va["object"], "text_completion");
        assert_eq!(va["model"], "mock-model");
        assert_eq!(
            va["choices"],
            serde_json::json!([{"text": "Mock completion of: def add(a, b):", "index": 0,
                                "logprobs": null, "finish_reason": "stop"}])
        );
        assert_eq!((&va["id"], &va["choices"]), (&vb["id"], &vb["choices"]));
        assert!(a.shape.choices);
        assert_eq!(a.usage, Some(Usage::new(3, 6)));

        let chunks: Vec<serde_json::Value> = m
            .completion_stream("mock-model", &r)
            .await
            .unwrap()
            .map(|c| serde_json::from_slice(&c.unwrap().json).unwrap())
            .collect()
            .await;
        assert_eq!(chunks.len(), 3 + 1 + 1, "3 texts, 1 finish, 1 usage");
        let text: String = chunks[..3]
            .iter()
            .map(|c| c["choices"][0]["text"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Mock completion of: def add(a, b):");
        assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[4]["choices"], serde_json::json!([]));
        assert_eq!(chunks[4]["usage"]["total_tokens"], 9);

        let mut c = cfg(1);
        c.mock.failure_rate = 1.0;
        let failing = Mock::new(&c);
        let e = failing.completion("mock-model", &r).await.unwrap_err();
        assert_eq!(e.kind, FailureKind::ServerError);
        let e = failing
            .completion_stream("mock-model", &r)
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind, FailureKind::ServerError);
    }

    #[tokio::test]
    async fn failure_rate_one_always_fails() {
        let mut c = cfg(1);
        c.mock.failure_rate = 1.0;
        let m = Mock::new(&c);
        let e = m.chat("mock-model", &req("x", false)).await.unwrap_err();
        assert_eq!(e.kind, FailureKind::ServerError);
    }

    #[test]
    fn split_is_exhaustive() {
        let s = "héllo wörld";
        for n in 1..15 {
            let parts = split(s, n);
            assert_eq!(parts.len(), n);
            assert_eq!(parts.concat(), s);
        }
    }
}
