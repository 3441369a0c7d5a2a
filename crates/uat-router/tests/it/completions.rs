//! Text completions (`/v1/completions`) through the router: passed through
//! to OpenAI-compatible upstreams, translated to Ollama's `/api/generate`,
//! refused by Anthropic, retried and failed over like chat.

use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use uat_config::{ModelAlias, ProviderConfig, ProviderKind, RoutingConfig, RoutingStrategy};
use uat_router::{Router, RouterError};
use uat_testkit::{Behavior, FakeUpstream, Wire};
use uat_types::{CompletionRequest, Usage};

fn routing() -> RoutingConfig {
    RoutingConfig {
        strategy: RoutingStrategy::Priority,
        max_attempts: 3,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        breaker_failures: 10,
        breaker_cooldown: Duration::from_secs(1),
        discovery_interval: Duration::ZERO,
        probe_local: false,
    }
}

/// A provider named `name` of `kind` at `up`, tried in `priority` order.
fn provider(name: &str, kind: ProviderKind, up: &FakeUpstream, priority: i32) -> ProviderConfig {
    let mut cfg = ProviderConfig::new(name, kind, Some(up.base_url()));
    cfg.priority = priority;
    cfg.first_byte_timeout = Duration::from_secs(2);
    cfg
}

async fn router(providers: &[ProviderConfig], aliases: &[ModelAlias]) -> Router {
    Router::with_providers(providers, aliases, &routing())
        .await
        .unwrap()
}

fn alias(name: &str, targets: &[&str]) -> ModelAlias {
    ModelAlias {
        name: name.into(),
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
    }
}

fn request(v: Value) -> CompletionRequest {
    serde_json::from_value(v).unwrap()
}

async fn complete(
    r: &Router,
    req: &CompletionRequest,
) -> Result<uat_router::Routed<uat_router::Reply>, RouterError> {
    let resolved = r.resolve(&req.model)?;
    r.completion(&resolved, req).await
}

/// The stream's chunks as JSON (an error item as its failure kind's name),
/// and the usage the last chunk carried.
async fn stream(r: &Router, req: &CompletionRequest) -> (Vec<Value>, Option<Usage>) {
    let resolved = r.resolve(&req.model).unwrap();
    let mut routed = r.completion_stream(&resolved, req).await.unwrap();
    let mut chunks = Vec::new();
    let mut usage = None;
    while let Some(item) = routed.value.next().await {
        match item {
            Ok(c) => {
                usage = usage.or(c.usage);
                chunks.push(serde_json::from_slice(&c.json).unwrap());
            }
            Err(f) => chunks.push(json!({"failure": f.kind.as_str()})),
        }
    }
    (chunks, usage)
}

fn text_of(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c.pointer("/choices/0/text").and_then(Value::as_str))
        .collect()
}

/// An OpenAI-compatible upstream gets the request as the client sent it,
/// re-addressed to its model name (`suffix`, `echo`, `logprobs` and the
/// rest passed through), on `/v1/completions`; its answer comes back as its
/// bytes, usage parsed.
#[tokio::test]
async fn openai_completion_is_passed_through_readdressed() {
    let up = FakeUpstream::start(Wire::OpenAi, "oa").await.unwrap();
    up.set_reply("return a + b");
    let r = router(
        &[provider("oa", ProviderKind::Openai, &up, 0)],
        &[alias("code", &["oa/oa-model"])],
    )
    .await;
    let req = request(json!({
        "model": "code", "prompt": "def add(a, b):", "suffix": "\n", "echo": true,
        "logprobs": 2, "max_tokens": 16, "stop": ["\n\n"], "user": "u1"
    }));
    let ok = complete(&r, &req).await.unwrap();
    assert_eq!(
        (&*ok.provider, &*ok.model, ok.attempts),
        ("oa", "oa-model", 1)
    );
    assert!(ok.value.shape.choices);
    assert_eq!(ok.value.usage, Some(Usage::new(7, 4)));
    let v: Value = serde_json::from_slice(&ok.value.body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "return a + b");
    assert_eq!(v["system_fingerprint"], "fp_fake", "the upstream's bytes");

    let sent = up.requests().pop().unwrap();
    assert_eq!(sent.path, "/v1/completions");
    assert_eq!(
        sent.body,
        json!({
            "model": "oa-model", "prompt": "def add(a, b):", "suffix": "\n", "echo": true,
            "logprobs": 2, "max_tokens": 16, "stop": ["\n\n"], "user": "u1"
        })
    );
}

/// Streamed, the upstream's SSE chunks pass through one by one, usage
/// parsed from the chunk that carries it, `stream_options` sent on.
#[tokio::test]
async fn openai_completion_stream_is_passed_through() {
    let up = FakeUpstream::start(Wire::OpenAi, "oa").await.unwrap();
    up.set_reply("return a + b");
    let r = router(&[provider("oa", ProviderKind::Openai, &up, 0)], &[]).await;
    let req = request(json!({
        "model": "oa-model", "prompt": "def add(a, b):", "suffix": "\n",
        "stream": true, "stream_options": {"include_usage": true}
    }));
    let (chunks, usage) = stream(&r, &req).await;
    assert_eq!(
        chunks.len(),
        4 + 1 + 1,
        "4 words, the finish, the usage: {chunks:?}"
    );
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(text_of(&chunks), "return a + b");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(usage, Some(Usage::new(7, 4)));
    let sent = up.last_body().unwrap();
    assert_eq!(sent["model"], "oa-model");
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(sent["suffix"], "\n");
    assert_eq!(up.completed_streams(), 1);
}

/// A 500 is failed over to the next provider, streamed or not; a stream
/// cut after its first chunk ends in an error (no retry once it began).
#[tokio::test]
async fn completions_fail_over_on_a_500() {
    let a = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    let b = FakeUpstream::start(Wire::OpenAi, "b").await.unwrap();
    for up in [&a, &b] {
        up.set_models(&["m"]);
    }
    a.set_default(Behavior::Status(500));
    let r = router(
        &[
            provider("a", ProviderKind::Openai, &a, 0),
            provider("b", ProviderKind::Openai, &b, 1),
        ],
        &[],
    )
    .await;
    let req = request(json!({"model": "m", "prompt": "x"}));
    let ok = complete(&r, &req).await.unwrap();
    assert_eq!((&*ok.provider, ok.attempts), ("b", 2));
    let v: Value = serde_json::from_slice(&ok.value.body).unwrap();
    assert_eq!(v["choices"][0]["text"], "Hello from b");

    let streamed = request(json!({"model": "m", "prompt": "x", "stream": true}));
    let resolved = r.resolve("m").unwrap();
    let routed = r.completion_stream(&resolved, &streamed).await.unwrap();
    assert_eq!((&*routed.provider, routed.attempts), ("b", 2));
    assert_eq!((a.calls(), b.calls()), (2, 2));

    b.push(Behavior::StopHalfway);
    let (chunks, _) = stream(&r, &streamed).await;
    assert_eq!(
        chunks.last().unwrap(),
        &json!({"failure": "interrupted"}),
        "{chunks:?}"
    );
}

/// Ollama gets a native `/api/generate` request (options, suffix,
/// `num_predict`), and its answer and NDJSON stream come back as
/// `text_completion` objects with usage.
#[tokio::test]
async fn ollama_completion_is_translated_both_ways() {
    let up = FakeUpstream::start(Wire::Ollama, "ol").await.unwrap();
    up.set_reply("return a + b");
    let r = router(&[provider("ol", ProviderKind::Ollama, &up, 0)], &[]).await;
    let req = request(json!({
        "model": "ol-model", "prompt": "def add(a, b):", "suffix": "\n", "max_tokens": 16,
        "temperature": 0.2, "stop": "\n\n", "seed": 3, "user": "u1"
    }));
    let ok = complete(&r, &req).await.unwrap();
    assert_eq!(ok.value.usage, Some(Usage::new(7, 4)));
    let v: Value = serde_json::from_slice(&ok.value.body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "ol-model");
    assert_eq!(
        v["choices"],
        json!([{"text": "return a + b", "index": 0, "logprobs": null, "finish_reason": "stop"}])
    );
    let sent = up.requests().pop().unwrap();
    assert_eq!(sent.path, "/api/generate");
    assert_eq!(
        sent.body,
        json!({
            "model": "ol-model", "prompt": "def add(a, b):", "suffix": "\n", "stream": false,
            "options": {"temperature": 0.2, "num_predict": 16, "stop": ["\n\n"], "seed": 3}
        })
    );

    let mut streamed = req.clone();
    streamed.stream = Some(true);
    streamed.stream_options = serde_json::from_value(json!({"include_usage": true})).unwrap();
    let (chunks, usage) = stream(&r, &streamed).await;
    assert_eq!(chunks.len(), 4 + 1 + 1, "{chunks:?}");
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(text_of(&chunks), "return a + b");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(usage, Some(Usage::new(7, 4)));
    assert_eq!(up.last_body().unwrap()["stream"], true);
}

/// An Ollama fake and an OpenAI-compatible one, and a router whose alias
/// `code` tries the Ollama model first.
async fn ollama_then_openai() -> (FakeUpstream, FakeUpstream, Router) {
    let ol = FakeUpstream::start(Wire::Ollama, "ol").await.unwrap();
    let oa = FakeUpstream::start(Wire::OpenAi, "oa").await.unwrap();
    let r = router(
        &[
            provider("ol", ProviderKind::Ollama, &ol, 0),
            provider("oa", ProviderKind::Openai, &oa, 1),
        ],
        &[alias("code", &["ol/ol-model", "oa/oa-model"])],
    )
    .await;
    (ol, oa, r)
}

/// What Ollama cannot do (two prompts, echo, logprobs beyond 20, `n` > 1) is refused
/// before any call: an alias fails over to its OpenAI-compatible target,
/// which gets the request whole, and a request for the Ollama model alone
/// is the client's 400 naming the field, after no attempt.
#[tokio::test]
async fn what_ollama_cannot_do_fails_over_without_an_attempt() {
    let (ol, oa, r) = ollama_then_openai().await;
    let plain = request(json!({"model": "code", "prompt": "x"}));
    assert_eq!(&*complete(&r, &plain).await.unwrap().provider, "ol");
    assert_eq!(ol.calls(), 1);

    for (extra, param) in [
        (json!({"prompt": ["a", "b"]}), "prompt"),
        (json!({"echo": true}), "echo"),
        (json!({"logprobs": 21}), "logprobs"),
        (json!({"n": 2}), "n"),
    ] {
        let mut v = json!({"model": "code", "prompt": "x"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        let req = request(v.clone());
        let ok = complete(&r, &req).await.unwrap();
        assert_eq!((&*ok.provider, ok.attempts), ("oa", 1), "{extra}");
        assert_eq!(oa.last_body().unwrap()[param], v[param], "{extra}");

        v["model"] = json!("ol/ol-model");
        match complete(&r, &request(v)).await {
            Err(RouterError::Rejected {
                status: 400,
                attempts: 0,
                upstream: Some(u),
                ..
            }) => assert_eq!(u.param.as_deref(), Some(param), "{extra}"),
            other => panic!("{extra}: expected a 400, got {other:?}"),
        }
    }
    assert_eq!(ol.calls(), 1, "no refused request reached Ollama");

    // What it can do stays on Ollama: logprobs up to 20, no failover.
    let ok = complete(
        &r,
        &request(json!({"model": "code", "prompt": "x", "logprobs": 1})),
    )
    .await
    .unwrap();
    assert_eq!((&*ok.provider, ok.attempts), ("ol", 1));
    assert_eq!(ol.calls(), 2);
    let sent = ol.last_body().unwrap();
    assert_eq!(
        (&sent["logprobs"], &sent["top_logprobs"]),
        (&json!(true), &json!(1))
    );
}

/// Logprobs asked of an Ollama that ignores them (before 0.12.11) are
/// refused before the stream is the client's, so an alias fails over: a
/// thinking model's too, whose stream opens on a line of reasoning. A
/// current Ollama's thinking stream gives the answer's tokens alone (not
/// the `</think>` ones before it).
#[tokio::test]
async fn an_ollama_without_logprobs_fails_over_before_its_stream_opens() {
    let (ol, _oa, r) = ollama_then_openai().await;
    ol.set_ollama_thinking("Let me think.");
    let req = request(json!({"model": "code", "prompt": "x", "logprobs": 0, "stream": true}));
    let resolved = r.resolve(&req.model).unwrap();
    let routed = r.completion_stream(&resolved, &req).await.unwrap();
    assert_eq!(&*routed.provider, "ol");
    drop(routed);
    let (chunks, _) = stream(&r, &req).await;
    assert_eq!(text_of(&chunks), "Hello from ol", "{chunks:?}");
    let tokens: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c.pointer("/choices/0/logprobs/tokens"))
        .flat_map(|t| t.as_array().unwrap().clone())
        .collect();
    assert_eq!(
        tokens,
        [json!("Hello "), json!("from "), json!("ol")],
        "{chunks:?}"
    );

    ol.set_ollama_ignore_logprobs(true);
    let routed = r.completion_stream(&resolved, &req).await.unwrap();
    assert_eq!(&*routed.provider, "oa");
    let (chunks, _) = stream(&r, &req).await;
    assert_eq!(text_of(&chunks), "Hello from oa", "{chunks:?}");
    assert!(
        chunks.iter().all(|c| c.get("failure").is_none()),
        "{chunks:?}"
    );
}

/// Anthropic has no text completion API: an alias fails over past it, and
/// a request for its model alone is a 400 naming `model`; it is never
/// called.
#[tokio::test]
async fn anthropic_refuses_text_completions() {
    let an = FakeUpstream::start(Wire::Anthropic, "an").await.unwrap();
    let oa = FakeUpstream::start(Wire::OpenAi, "oa").await.unwrap();
    let r = router(
        &[
            provider("an", ProviderKind::Anthropic, &an, 0),
            provider("oa", ProviderKind::Openai, &oa, 1),
        ],
        &[alias("any", &["an/an-model", "oa/oa-model"])],
    )
    .await;
    let ok = complete(&r, &request(json!({"model": "any", "prompt": "x"})))
        .await
        .unwrap();
    assert_eq!((&*ok.provider, ok.attempts), ("oa", 1));
    match complete(&r, &request(json!({"model": "an-model", "prompt": "x"}))).await {
        Err(RouterError::Rejected {
            status: 400,
            attempts: 0,
            upstream: Some(u),
            message,
            ..
        }) => {
            assert_eq!(u.param.as_deref(), Some("model"));
            assert!(message.contains("/v1/chat/completions"), "{message}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    assert_eq!(an.calls(), 0);
}

/// The built-in mock answers text completions through the router, both
/// ways.
#[tokio::test]
async fn the_mock_completes_both_ways() {
    let mut cfg = ProviderConfig::new("mock", ProviderKind::Mock, None);
    cfg.mock.chunks = 2;
    let r = router(&[cfg], &[]).await;
    let req = request(json!({"model": "mock-model", "prompt": "hello"}));
    let ok = complete(&r, &req).await.unwrap();
    let v: Value = serde_json::from_slice(&ok.value.body).unwrap();
    assert_eq!(v["choices"][0]["text"], "Mock completion of: hello");
    let (chunks, _) = stream(&r, &req).await;
    assert_eq!(text_of(&chunks), "Mock completion of: hello");
    assert_eq!(chunks.len(), 2 + 1);
}
