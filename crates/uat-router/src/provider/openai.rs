//! Any OpenAI-compatible server (OpenAI, vLLM, LM Studio, llama.cpp, ...).
//! Chat and text completion requests pass through untouched except for the
//! model name; answers pass through as the upstream's bytes.

use super::http::{self, lines, read_json, send, sse_data};
use super::{BoxFuture, ChunkStream, Provider, Reply, Shape, StreamChunk};
use crate::error::{Failure, FailureKind, RouterError};
use futures::StreamExt;
use serde::Deserialize;
use std::time::Duration;
use uat_config::{ProviderConfig, ProviderKind};
use uat_types::{ChatRequest, CompletionRequest, Readdressed, ReaddressedCompletion, Usage};

/// An OpenAI-compatible provider. `base_url` includes `/v1`.
pub struct OpenAi {
    client: reqwest::Client,
    chat_url: reqwest::Url,
    completions_url: reqwest::Url,
    models_url: reqwest::Url,
    embeddings_url: reqwest::Url,
    auth: Option<String>,
    /// Until the response head of a stream (`first_byte_timeout`).
    first_byte: Duration,
    /// Of a whole non-streamed exchange (`timeout`): such an answer's head
    /// comes only once it is generated, so the first-byte bound is not its.
    total: Duration,
}

/// The fields of an answer the router looks at; the rest is skipped.
#[derive(Deserialize)]
struct Peek {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    choices: IsList,
    #[serde(default)]
    data: IsList,
}

/// Any JSON value, noting only whether it is an array (its items skipped
/// without building them).
#[derive(Default)]
struct IsList(bool);

impl<'de> Deserialize<'de> for IsList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = IsList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<IsList, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(IsList(true))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<IsList, A::Error> {
                serde::de::IgnoredAny.visit_map(map).map(|_| IsList(false))
            }
            fn visit_bool<E>(self, _: bool) -> Result<IsList, E> {
                Ok(IsList(false))
            }
            fn visit_i64<E>(self, _: i64) -> Result<IsList, E> {
                Ok(IsList(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<IsList, E> {
                Ok(IsList(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<IsList, E> {
                Ok(IsList(false))
            }
            fn visit_str<E>(self, _: &str) -> Result<IsList, E> {
                Ok(IsList(false))
            }
            fn visit_unit<E>(self) -> Result<IsList, E> {
                Ok(IsList(false))
            }
            fn visit_none<E>(self) -> Result<IsList, E> {
                Ok(IsList(false))
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<IsList, D::Error> {
                d.deserialize_any(V)
            }
        }
        d.deserialize_any(V)
    }
}

/// The fields of a streamed chunk the router looks at.
#[derive(Deserialize)]
struct ChunkPeek {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    choices: Finishes,
}

/// Which choices a chunk carries and which of them it finishes, as bit sets
/// over `index % 64` (built without allocating; the deltas are skipped).
#[derive(Default, Clone, Copy, PartialEq, Debug)]
struct Finishes {
    seen: u64,
    finished: u64,
}

impl Finishes {
    fn add(&mut self, other: Finishes) {
        self.seen |= other.seen;
        self.finished |= other.finished;
    }

    /// Every choice the stream carried has its `finish_reason`: the answer is
    /// whole even if the server never sends `[DONE]`.
    fn complete(&self) -> bool {
        self.seen != 0 && self.seen & !self.finished == 0
    }
}

impl<'de> Deserialize<'de> for Finishes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Choice {
            #[serde(default)]
            index: u32,
            #[serde(default)]
            finish_reason: Option<serde::de::IgnoredAny>,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Finishes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of choices")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Finishes, A::Error> {
                let mut out = Finishes::default();
                while let Some(c) = seq.next_element::<Choice>()? {
                    let bit = 1u64 << (c.index % 64);
                    out.seen |= bit;
                    if c.finish_reason.is_some() {
                        out.finished |= bit;
                    }
                }
                Ok(out)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Finishes, A::Error> {
                serde::de::IgnoredAny
                    .visit_map(map)
                    .map(|_| Finishes::default())
            }
            fn visit_unit<E>(self) -> Result<Finishes, E> {
                Ok(Finishes::default())
            }
        }
        d.deserialize_any(V)
    }
}

impl OpenAi {
    /// Builds the provider and its pooled client.
    pub fn new(cfg: &ProviderConfig) -> Result<Self, RouterError> {
        let base = cfg
            .base_url
            .as_deref()
            .unwrap_or("http://127.0.0.1:8000/v1");
        Ok(OpenAi {
            client: http::client(cfg)?,
            chat_url: http::join(cfg, base, "/chat/completions")?,
            completions_url: http::join(cfg, base, "/completions")?,
            models_url: http::join(cfg, base, "/models")?,
            embeddings_url: http::join(cfg, base, "/embeddings")?,
            auth: http::api_key(cfg).map(|k| format!("Bearer {k}")),
            first_byte: cfg.first_byte_timeout,
            total: cfg.timeout,
        })
    }

    fn post(&self, url: reqwest::Url) -> reqwest::RequestBuilder {
        let rb = self.client.post(url);
        match &self.auth {
            Some(a) => rb.header(reqwest::header::AUTHORIZATION, a),
            None => rb,
        }
    }

    async fn post_json(&self, url: reqwest::Url, body: Vec<u8>) -> Result<Reply, Failure> {
        let rb = self
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let resp = send(rb, self.total).await?;
        let (body, peek): (_, Peek) = read_json(resp).await?;
        if let Some(e) = peek.error {
            return Err(Failure::new(FailureKind::ServerError, error_text(&e)));
        }
        Ok(Reply {
            body,
            usage: peek.usage,
            shape: Shape {
                choices: peek.choices.0,
                data: peek.data.0,
            },
        })
    }

    /// Posts a streamed request and passes its SSE chunks through.
    async fn post_stream(&self, url: reqwest::Url, body: Vec<u8>) -> Result<ChunkStream, Failure> {
        let rb = self
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(body);
        let resp = send(rb, self.first_byte).await?;
        Ok(translate(lines(resp)))
    }
}

fn error_text(e: &serde_json::Value) -> String {
    e.get("message")
        .and_then(|m| m.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| e.to_string())
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Failure> {
    serde_json::to_vec(v).map_err(|e| {
        Failure::new(
            FailureKind::Malformed,
            format!("cannot encode request: {e}"),
        )
    })
}

impl Provider for OpenAi {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Openai
    }

    fn chat<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move {
            let body = encode(&Readdressed {
                req,
                model,
                stream: false,
            })?;
            self.post_json(self.chat_url.clone(), body).await
        })
    }

    fn chat_stream<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, Failure>> {
        Box::pin(async move {
            let body = encode(&Readdressed {
                req,
                model,
                stream: true,
            })?;
            self.post_stream(self.chat_url.clone(), body).await
        })
    }

    fn completion<'a>(
        &'a self,
        model: &'a str,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move {
            let body = encode(&ReaddressedCompletion {
                req,
                model,
                stream: false,
            })?;
            self.post_json(self.completions_url.clone(), body).await
        })
    }

    fn completion_stream<'a>(
        &'a self,
        model: &'a str,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, Failure>> {
        Box::pin(async move {
            let body = encode(&ReaddressedCompletion {
                req,
                model,
                stream: true,
            })?;
            self.post_stream(self.completions_url.clone(), body).await
        })
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, Failure>> {
        Box::pin(async move {
            #[derive(Deserialize)]
            struct List {
                data: Vec<Entry>,
            }
            #[derive(Deserialize)]
            struct Entry {
                id: String,
            }
            let mut rb = self.client.get(self.models_url.clone());
            if let Some(a) = &self.auth {
                rb = rb.header(reqwest::header::AUTHORIZATION, a);
            }
            let resp = send(rb, self.first_byte).await?;
            let (_, list): (_, List) = read_json(resp).await?;
            Ok(list.data.into_iter().map(|e| e.id).collect())
        })
    }

    fn embeddings<'a>(
        &'a self,
        model: &'a str,
        body: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move {
            let mut out = body.clone();
            if let Some(o) = out.as_object_mut() {
                o.insert("model".into(), serde_json::Value::String(model.to_owned()));
            }
            self.post_json(self.embeddings_url.clone(), encode(&out)?)
                .await
        })
    }
}

/// Passes SSE `data:` payloads through (chat or text completion chunks),
/// checking each is JSON, noting usage, and turning an in-stream error or a
/// stream cut into a [`Failure`].
///
/// A stream ends at `[DONE]`, or at its end once every choice it carried
/// has had its `finish_reason`: some OpenAI-compatible servers never send
/// `[DONE]`, and their complete answers must not end in an error. A stream
/// that stops before that is `Interrupted`.
fn translate(
    lines: impl futures::Stream<Item = Result<bytes::Bytes, Failure>> + Send + 'static,
) -> ChunkStream {
    struct St<L> {
        lines: std::pin::Pin<Box<L>>,
        done: bool,
        finishes: Finishes,
    }
    let st = St {
        lines: Box::pin(lines),
        done: false,
        finishes: Finishes::default(),
    };
    let s = futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            match st.lines.next().await {
                None if st.finishes.complete() => return None,
                None => {
                    let f = Failure::new(FailureKind::Interrupted, "stream ended before [DONE]");
                    st.done = true;
                    return Some((Err(f), st));
                }
                Some(Err(f)) => {
                    st.done = true;
                    return Some((Err(f), st));
                }
                Some(Ok(line)) => {
                    let Some(data) = sse_data(&line) else {
                        continue;
                    };
                    if data.as_ref() == b"[DONE]" {
                        return None;
                    }
                    match serde_json::from_slice::<ChunkPeek>(&data) {
                        Ok(ChunkPeek { error: Some(e), .. }) => {
                            let f = Failure::new(FailureKind::Interrupted, error_text(&e));
                            st.done = true;
                            return Some((Err(f), st));
                        }
                        Ok(ChunkPeek { usage, choices, .. }) => {
                            st.finishes.add(choices);
                            return Some((Ok(StreamChunk { json: data, usage }), st));
                        }
                        Err(e) => {
                            let f = Failure::new(
                                FailureKind::Malformed,
                                format!("invalid chunk from upstream: {e}"),
                            );
                            st.done = true;
                            return Some((Err(f), st));
                        }
                    }
                }
            }
        }
    });
    Box::pin(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn run(input: &[&'static str]) -> Vec<Result<StreamChunk, Failure>> {
        let items: Vec<Result<Bytes, Failure>> = input
            .iter()
            .map(|l| Ok(Bytes::from_static(l.as_bytes())))
            .collect();
        let s = translate(futures::stream::iter(items));
        futures::executor::block_on(s.collect())
    }

    #[test]
    fn passes_chunks_through_until_done() {
        let out = run(&[
            r#"data: {"choices":[{"delta":{"content":"a"}}]}"#,
            "",
            r#"data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
            "data: [DONE]",
        ]);
        assert_eq!(out.len(), 2);
        let first = out[0].as_ref().unwrap();
        assert_eq!(
            &first.json[..],
            br#"{"choices":[{"delta":{"content":"a"}}]}"#
        );
        assert_eq!(out[1].as_ref().unwrap().usage, Some(Usage::new(1, 2)));
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let out = run(&[r#"data: {"choices":[]}"#]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].as_ref().unwrap_err().kind, FailureKind::Interrupted);
    }

    #[test]
    fn a_finished_stream_without_done_ends_cleanly() {
        // Some servers close the stream after the last chunk, with no [DONE].
        let out = run(&[
            r#"data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        ]);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(Result::is_ok), "{out:?}");
        assert_eq!(out[2].as_ref().unwrap().usage, Some(Usage::new(1, 2)));
    }

    #[test]
    fn a_stream_cut_before_every_choice_finished_is_an_error() {
        // n = 2: choice 1 never finished.
        let out = run(&[
            r#"data: {"choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"b"}}]}"#,
            r#"data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        ]);
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].as_ref().unwrap_err().kind, FailureKind::Interrupted);
        // A finish_reason of null is no finish.
        let out = run(&[
            r#"data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#,
        ]);
        assert_eq!(out[1].as_ref().unwrap_err().kind, FailureKind::Interrupted);
    }

    #[test]
    fn error_event_and_garbage_end_the_stream() {
        let out = run(&[
            r#"data: {"error":{"message":"boom"}}"#,
            r#"data: {"choices":[]}"#,
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].as_ref().unwrap_err().message, "boom");
        let out = run(&["data: {not json"]);
        assert_eq!(out[0].as_ref().unwrap_err().kind, FailureKind::Malformed);
    }

    #[test]
    fn a_completion_request_is_readdressed_and_the_rest_kept() {
        let req = crate::provider::completion_request(serde_json::json!({
            "prompt": ["def f():"], "suffix": "\n", "echo": true, "logprobs": 2,
            "stream": true, "stream_options": {"include_usage": true},
            "max_tokens": 9, "stop": "\n\n", "temperature": 0.1
        }));
        let body = |stream| {
            serde_json::to_value(ReaddressedCompletion {
                req: &req,
                model: "up",
                stream,
            })
            .unwrap()
        };
        assert_eq!(
            body(true),
            serde_json::json!({
                "model": "up", "prompt": ["def f():"], "suffix": "\n", "echo": true, "logprobs": 2,
                "stream": true, "stream_options": {"include_usage": true},
                "max_tokens": 9, "stop": "\n\n", "temperature": 0.1
            })
        );
        let plain = body(false);
        assert!(plain.get("stream").is_none() && plain.get("stream_options").is_none());
        assert_eq!(plain["model"], "up");
    }

    /// Text completion chunks (`choices[].text`) end the same way as chat
    /// ones: at `[DONE]`, or once every choice has its `finish_reason`.
    #[test]
    fn text_completion_chunks_pass_through() {
        let out = run(&[
            r#"data: {"object":"text_completion","choices":[{"index":0,"text":"a","logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"data: {"object":"text_completion","choices":[{"index":0,"text":"","logprobs":null,"finish_reason":"length"}],"usage":null}"#,
            r#"data: {"object":"text_completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        ]);
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(out.iter().all(Result::is_ok), "{out:?}");
        assert_eq!(out[0].as_ref().unwrap().usage, None);
        assert_eq!(out[2].as_ref().unwrap().usage, Some(Usage::new(1, 2)));
    }
}
