//! Gateway core: chat completions and model lists through the router
//! against fake upstreams of every wire format.

use crate::common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use uat_testkit::{Behavior, FakeUpstream, Wire};

#[tokio::test]
async fn chat_non_stream_and_stream_through_openai_and_mock() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    let toml = format!(
        "{}\n[[providers]]\nname = \"m\"\nkind = \"mock\"\n",
        provider_toml("a", "openai", &up.base_url(), "")
    );
    let app = spawn_app(&toml).await;

    let resp = app.chat(chat_body("a-model", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "a");
    assert_eq!(header(&resp, "x-uat-attempts"), "1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from a");
    assert_eq!(
        v["system_fingerprint"], "fp_fake",
        "upstream fields pass through"
    );

    let resp = app.chat(chat_body("a-model", true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "text/event-stream");
    assert_eq!(header(&resp, "x-uat-provider"), "a");
    let events = sse_events(resp).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(stream_text(&events), "Hello from a");

    let resp = app.chat(chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "m");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Mock reply to: Say hello"
    );

    let mut body = chat_body("mock-model", true);
    body["stream_options"] = json!({"include_usage": true});
    let events = sse_events(app.chat(body).await).await;
    assert_eq!(stream_text(&events), "Mock reply to: Say hello");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert_eq!(up.calls(), 2);
}

fn routing(strategy: &str, extra: &str) -> String {
    format!("[routing]\nstrategy = \"{strategy}\"\n{extra}\n")
}

/// Two OpenAI fakes `a` and `b` that both serve `shared`.
async fn two_fakes() -> (FakeUpstream, FakeUpstream) {
    let a = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    let b = FakeUpstream::start(Wire::OpenAi, "b").await.unwrap();
    a.set_models(&["shared"]);
    b.set_models(&["shared"]);
    (a, b)
}

fn two_providers(a: &FakeUpstream, b: &FakeUpstream, a_extra: &str, b_extra: &str) -> String {
    format!(
        "{}{}",
        provider_toml("a", "openai", &a.base_url(), a_extra),
        provider_toml("b", "openai", &b.base_url(), b_extra)
    )
}

async fn served_by(app: &TestApp, model: &str) -> String {
    let resp = app.chat(chat_body(model, false)).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    header(&resp, "x-uat-provider")
}

#[tokio::test]
async fn models_list_aggregates_dedups_and_includes_aliases() {
    let (a, b) = two_fakes().await;
    b.set_models(&["shared", "b-only"]);
    let toml = format!(
        "{}[[models]]\nname = \"fast-chat\"\ntargets = [\"a/shared\", \"b/b-only\"]\n",
        two_providers(&a, &b, "", "")
    );
    let app = spawn_app(&toml).await;
    let resp = app.client.get(app.at("/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    // Remote models and aliases first (local embedding models may follow).
    assert_eq!(ids[..3], ["shared", "b-only", "fast-chat"]);
    let unique: std::collections::HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "deduplicated: {ids:?}");
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][2]["owned_by"], "uat-alias");
}

#[tokio::test]
async fn unknown_fields_pass_through_to_openai_upstreams() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    let app = spawn_app(&provider_toml("a", "openai", &up.base_url(), "")).await;
    let body = json!({
        "model": "a-model",
        "messages": [{"role": "user", "content": "hi", "name": "bob"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "stop": ["x", "y"],
        "n": 2,
        "seed": 42,
        "logit_bias": {"50256": -100},
        "x_vendor_extension": {"nested": [1, 2, 3]}
    });
    let resp = app.chat(body.clone()).await;
    assert_eq!(resp.status(), 200);
    let got = up.last_body().unwrap();
    assert_eq!(
        got, body,
        "the upstream receives exactly what the client sent"
    );
}

#[tokio::test]
async fn alias_resolves_to_its_targets_and_explicit_provider_syntax_works() {
    let (a, b) = two_fakes().await;
    let toml = format!(
        "{}{}[[models]]\nname = \"fast-chat\"\ntargets = [\"b/renamed-upstream\", \"a/shared\"]\n",
        two_providers(&a, &b, "priority = 5", "priority = 1"),
        routing("priority", "")
    );
    let app = spawn_app(&toml).await;
    let resp = app.chat(chat_body("fast-chat", false)).await;
    assert_eq!(header(&resp, "x-uat-provider"), "b");
    assert_eq!(
        b.last_body().unwrap()["model"],
        "renamed-upstream",
        "alias target's model name is sent"
    );
    b.set_default(Behavior::Status(500));
    let resp = app.chat(chat_body("fast-chat", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-uat-provider"),
        "a",
        "fails over to the alias's other target"
    );
    assert_eq!(a.last_body().unwrap()["model"], "shared");
    let resp = app.chat(chat_body("a/anything", false)).await;
    assert_eq!(header(&resp, "x-uat-provider"), "a");
    assert_eq!(a.last_body().unwrap()["model"], "anything");
}

#[tokio::test]
async fn priority_strategy_prefers_the_lowest_priority() {
    let (a, b) = two_fakes().await;
    let toml = format!(
        "{}{}",
        two_providers(&a, &b, "priority = 2", "priority = 1"),
        routing("priority", "")
    );
    let app = spawn_app(&toml).await;
    for _ in 0..4 {
        assert_eq!(served_by(&app, "shared").await, "b");
    }
    assert_eq!((a.calls(), b.calls()), (0, 4));
}

#[tokio::test]
async fn round_robin_alternates() {
    let (a, b) = two_fakes().await;
    let toml = format!(
        "{}{}",
        two_providers(&a, &b, "", ""),
        routing("round-robin", "")
    );
    let app = spawn_app(&toml).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(served_by(&app, "shared").await);
    }
    assert_ne!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
    assert_eq!(seen[1], seen[3]);
    assert_eq!((a.calls(), b.calls()), (2, 2));
}

#[tokio::test]
async fn weighted_follows_weights() {
    let (a, b) = two_fakes().await;
    let toml = format!(
        "{}{}",
        two_providers(&a, &b, "weight = 0", "weight = 5"),
        routing("weighted", "")
    );
    let app = spawn_app(&toml).await;
    for _ in 0..10 {
        assert_eq!(
            served_by(&app, "shared").await,
            "b",
            "weight 0 is never chosen first"
        );
    }
    assert_eq!(a.calls(), 0);
}

#[tokio::test]
async fn least_latency_prefers_the_faster_provider() {
    let (a, b) = two_fakes().await;
    a.set_default(Behavior::Delay(Duration::from_millis(150)));
    let toml = format!(
        "{}{}",
        two_providers(&a, &b, "", ""),
        routing("least-latency", "")
    );
    let app = spawn_app(&toml).await;
    // Unmeasured providers are tried first, so both get measured.
    served_by(&app, "shared").await;
    served_by(&app, "shared").await;
    assert_eq!((a.calls(), b.calls()), (1, 1));
    for _ in 0..5 {
        assert_eq!(served_by(&app, "shared").await, "b");
    }
}

#[tokio::test]
async fn least_busy_avoids_the_busy_provider() {
    let (a, b) = two_fakes().await;
    a.set_default(Behavior::Delay(Duration::from_millis(1500)));
    // Ties go to the lower priority, so `a` is first while idle.
    let toml = format!(
        "{}{}",
        two_providers(&a, &b, "priority = 0", "priority = 1"),
        routing("least-busy", "")
    );
    let app = spawn_app(&toml).await;
    let slow = {
        let client = app.client.clone();
        let url = app.at("/v1/chat/completions");
        tokio::spawn(async move {
            client
                .post(url)
                .json(&chat_body("shared", false))
                .send()
                .await
        })
    };
    assert!(eventually(Duration::from_secs(3), || a.calls() == 1).await);
    for _ in 0..3 {
        assert_eq!(
            served_by(&app, "shared").await,
            "b",
            "a has one request in flight"
        );
    }
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(header(&resp, "x-uat-provider"), "a");
    assert_eq!(
        served_by(&app, "shared").await,
        "a",
        "idle again: priority wins the tie"
    );
}

#[tokio::test]
async fn retries_on_500_count_attempts() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    up.push(Behavior::Status(500));
    up.push(Behavior::Status(503));
    let app = spawn_app(&provider_toml("a", "openai", &up.base_url(), "")).await;
    let resp = app.chat(chat_body("a-model", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-attempts"), "3");
    assert_eq!(up.calls(), 3);
}

#[tokio::test]
async fn retries_stop_at_max_attempts_with_502_and_reasons() {
    let (a, b) = two_fakes().await;
    a.set_default(Behavior::Status(500));
    b.set_default(Behavior::Status(502));
    let toml = format!(
        "{}{}",
        two_providers(&a, &b, "", ""),
        routing("priority", "max_attempts = 4")
    );
    let app = spawn_app(&toml).await;
    let resp = app.chat(chat_body("shared", false)).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(header(&resp, "x-uat-attempts"), "4");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "upstream_error");
    assert_eq!(v["error"]["attempts"], 4);
    let providers = v["error"]["providers"].as_array().unwrap();
    assert_eq!(providers.len(), 2);
    assert_eq!(providers[0]["provider"], "a");
    assert_eq!(providers[0]["status"], 500);
    assert_eq!(providers[1]["status"], 502);
    assert!(
        providers[0]["message"]
            .as_str()
            .unwrap()
            .contains("fake a error 500")
    );
    assert_eq!((a.calls(), b.calls()), (2, 2), "A, B, A, B");
}

#[tokio::test]
async fn failover_on_connect_error() {
    let b = FakeUpstream::start(Wire::OpenAi, "b").await.unwrap();
    b.set_models(&["shared"]);
    let dead = closed_port_url().await;
    let toml = format!(
        "{}{}{}",
        provider_toml(
            "a",
            "openai",
            &format!("{dead}/v1"),
            "models = [\"shared\"]\npriority = 0"
        ),
        provider_toml("b", "openai", &b.base_url(), "priority = 1"),
        routing("priority", "")
    );
    let app = spawn_app(&toml).await;
    let resp = app.chat(chat_body("shared", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "b");
    assert_eq!(header(&resp, "x-uat-attempts"), "2");
}

#[tokio::test]
async fn none_reachable_is_503_with_reasons() {
    let dead1 = closed_port_url().await;
    let dead2 = closed_port_url().await;
    let toml = format!(
        "{}{}",
        provider_toml(
            "a",
            "openai",
            &format!("{dead1}/v1"),
            "models = [\"shared\"]"
        ),
        provider_toml("b", "ollama", &dead2, "models = [\"shared\"]")
    );
    let app = spawn_app(&toml).await;
    let resp = app.chat(chat_body("shared", false)).await;
    assert_eq!(resp.status(), 503);
    assert!(!header(&resp, "retry-after").is_empty());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_provider_reachable");
    let kinds: Vec<&str> = v["error"]["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["connect", "connect"]);
}

#[tokio::test]
async fn rate_limit_honours_retry_after_capped_by_backoff_max() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    up.push(Behavior::RateLimited {
        retry_after_secs: 30,
    });
    let toml = format!(
        "{}{}",
        provider_toml("a", "openai", &up.base_url(), ""),
        routing(
            "priority",
            "backoff_base = \"1ms\"\nbackoff_max = \"400ms\""
        )
    );
    let app = spawn_app(&toml).await;
    let start = Instant::now();
    let resp = app.chat(chat_body("a-model", false)).await;
    let took = start.elapsed();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-attempts"), "2");
    assert!(
        took >= Duration::from_millis(390),
        "waited for Retry-After (capped): {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "Retry-After of 30 s was capped: {took:?}"
    );
}

#[tokio::test]
async fn hang_past_timeout_fails_over() {
    let (a, b) = two_fakes().await;
    a.set_default(Behavior::Hang);
    let toml = format!(
        "{}{}",
        two_providers(
            &a,
            &b,
            "priority = 0\nfirst_byte_timeout = \"200ms\"",
            "priority = 1"
        ),
        routing("priority", "")
    );
    let app = spawn_app(&toml).await;
    let resp = app.chat(chat_body("shared", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "b");
    assert_eq!(a.calls(), 1);
}

#[tokio::test]
async fn hang_everywhere_is_503_timeout() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    up.set_default(Behavior::Hang);
    let toml = format!(
        "{}{}",
        provider_toml(
            "a",
            "openai",
            &up.base_url(),
            "first_byte_timeout = \"100ms\""
        ),
        routing("priority", "max_attempts = 2")
    );
    let app = spawn_app(&toml).await;
    let resp = app.chat(chat_body("a-model", false)).await;
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["providers"][0]["kind"], "timeout");
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn reset_and_malformed_and_truncated_bodies_are_retried() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    up.push(Behavior::Reset);
    up.push(Behavior::Malformed);
    up.push(Behavior::StopHalfway);
    let toml = format!(
        "{}{}",
        provider_toml("a", "openai", &up.base_url(), ""),
        routing("priority", "max_attempts = 4")
    );
    let app = spawn_app(&toml).await;
    let resp = app.chat(chat_body("a-model", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-attempts"), "4");
    assert_eq!(up.calls(), 4);
}

#[tokio::test]
async fn malformed_everywhere_is_502() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    up.set_default(Behavior::Malformed);
    let app = spawn_app(&provider_toml("a", "openai", &up.base_url(), "")).await;
    let resp = app.chat(chat_body("a-model", false)).await;
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["providers"][0]["kind"], "malformed");
}

#[tokio::test]
async fn upstream_rejection_is_passed_on_and_not_retried() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    up.push(Behavior::Status(400));
    let app = spawn_app(&provider_toml("a", "openai", &up.base_url(), "")).await;
    let resp = app.chat(chat_body("a-model", false)).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(header(&resp, "x-uat-attempts"), "1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fake a error 400")
    );
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn breaker_opens_then_half_open_probe_closes_it() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    up.set_default(Behavior::Status(500));
    let toml = format!(
        "{}{}",
        provider_toml("a", "openai", &up.base_url(), ""),
        routing(
            "priority",
            "max_attempts = 1\nbreaker_failures = 2\nbreaker_cooldown = \"300ms\""
        )
    );
    let app = spawn_app(&toml).await;
    assert_eq!(app.chat(chat_body("a-model", false)).await.status(), 502);
    assert_eq!(app.chat(chat_body("a-model", false)).await.status(), 502);
    assert_eq!(up.calls(), 2);
    // Open: refused without calling the upstream.
    let resp = app.chat(chat_body("a-model", false)).await;
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["providers"][0]["kind"], "circuit_open");
    assert_eq!(up.calls(), 2);
    let ready: Value = app
        .client
        .get(app.at("/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let check = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "provider:a")
        .cloned()
        .unwrap();
    assert_eq!(check["status"], "down");
    assert_eq!(check["critical"], false);

    // Half-open after the cooldown: a failed probe re-opens it.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(app.chat(chat_body("a-model", false)).await.status(), 502);
    assert_eq!(up.calls(), 3);
    assert_eq!(app.chat(chat_body("a-model", false)).await.status(), 503);
    assert_eq!(up.calls(), 3);

    // A successful probe closes it.
    up.set_default(Behavior::Ok);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(app.chat(chat_body("a-model", false)).await.status(), 200);
    assert_eq!(app.chat(chat_body("a-model", false)).await.status(), 200);
    assert_eq!(up.calls(), 5);
}

#[tokio::test]
async fn stream_cut_halfway_ends_with_an_error_event() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    up.set_reply("one two three four five six seven eight");
    up.push(Behavior::StopHalfway);
    let app = spawn_app(&provider_toml("a", "openai", &up.base_url(), "")).await;
    let resp = app.chat(chat_body("a-model", true)).await;
    assert_eq!(resp.status(), 200);
    let events = sse_events(resp).await;
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_interrupted");
    assert!(
        !events.iter().any(|e| e == "[DONE]"),
        "no [DONE] after an error"
    );
    let text = stream_text(&events);
    assert!(!text.is_empty() && text.len() < "one two three four five six seven eight".len());
    assert_eq!(up.calls(), 1, "never retried after the first byte");
}

#[tokio::test]
async fn slow_first_token_fails_over_before_streaming() {
    let (a, b) = two_fakes().await;
    a.push(Behavior::SlowFirstToken(Duration::from_secs(5)));
    let toml = format!(
        "{}{}",
        two_providers(
            &a,
            &b,
            "priority = 0\nfirst_byte_timeout = \"300ms\"",
            "priority = 1"
        ),
        routing("priority", "")
    );
    let app = spawn_app(&toml).await;
    let resp = app.chat(chat_body("shared", true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "b");
    assert_eq!(header(&resp, "x-uat-attempts"), "2");
    let events = sse_events(resp).await;
    assert_eq!(stream_text(&events), "Hello from b");
}

#[tokio::test]
async fn streaming_errors_before_first_byte_are_plain_json_errors() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    up.set_default(Behavior::Status(500));
    let app = spawn_app(&provider_toml("a", "openai", &up.base_url(), "")).await;
    let resp = app.chat(chat_body("a-model", true)).await;
    assert_eq!(resp.status(), 502);
    assert!(header(&resp, "content-type").starts_with("application/json"));
    assert_eq!(header(&resp, "x-uat-attempts"), "3");
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_stream() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    up.set_reply(&"word ".repeat(60));
    up.set_chunk_delay(Duration::from_millis(50));
    let app = spawn_app(&provider_toml("a", "openai", &up.base_url(), "")).await;
    let mut resp = app.chat(chat_body("a-model", true)).await;
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(resp);
    assert!(
        eventually(Duration::from_secs(5), || up.disconnects() == 1).await,
        "the upstream saw the disconnect"
    );
    assert_eq!(up.completed_streams(), 0);
}

#[tokio::test]
async fn ollama_translation_both_ways() {
    let up = FakeUpstream::start(Wire::Ollama, "o").await.unwrap();
    up.set_models(&["llama3.2:3b"]);
    let app = spawn_app(&provider_toml("o", "ollama", &up.base_url(), "")).await;
    let mut body = chat_body("llama3.2:3b", false);
    body["max_tokens"] = json!(12);
    body["stop"] = json!("END");
    let resp = app.chat(body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from o");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 7);
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let sent = up.last_body().unwrap();
    assert_eq!(sent["stream"], false);
    assert_eq!(sent["options"]["num_predict"], 12);
    assert_eq!(sent["options"]["stop"], json!(["END"]));
    assert_eq!(
        up.requests()[0].path,
        "/api/tags",
        "discovery used /api/tags"
    );

    let mut body = chat_body("llama3.2:3b", true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = app.chat(body).await;
    assert_eq!(resp.status(), 200);
    let events = sse_events(resp).await;
    assert_eq!(stream_text(&events), "Hello from o");
    assert_eq!(events.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let finish: Value = serde_json::from_str(&events[events.len() - 3]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["total_tokens"], 10);
    assert_eq!(up.last_body().unwrap()["stream"], true);
}

#[tokio::test]
async fn anthropic_translation_both_ways() {
    let up = FakeUpstream::start(Wire::Anthropic, "c").await.unwrap();
    up.set_models(&["claude-x"]);
    let toml = provider_toml(
        "c",
        "anthropic",
        &up.base_url(),
        "api_key_env = \"UAT_TEST_ANTHROPIC_KEY_UNSET\"",
    );
    let app = spawn_app(&toml).await;
    let body = json!({
        "model": "claude-x",
        "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Say hello"}],
        "max_tokens": 33,
        "stop": ["\n\n"]
    });
    let resp = app.chat(body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from c");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let rec = up
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.method == "POST")
        .unwrap();
    assert_eq!(rec.path, "/v1/messages");
    assert_eq!(rec.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(rec.body["system"], "Be terse.");
    assert_eq!(rec.body["max_tokens"], 33);
    assert_eq!(rec.body["messages"].as_array().unwrap().len(), 1);
    assert_eq!(rec.body["stop_sequences"], json!(["\n\n"]));

    let mut body = chat_body("claude-x", true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = app.chat(body).await;
    assert_eq!(resp.status(), 200);
    let events = sse_events(resp).await;
    assert_eq!(stream_text(&events), "Hello from c");
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens"], 7);
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert!(
        up.last_body().unwrap()["max_tokens"].as_u64().unwrap() > 0,
        "max_tokens always sent"
    );

    // Anthropic errors are translated and retried like any other.
    up.push(Behavior::Status(529));
    let resp = app.chat(chat_body("claude-x", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-attempts"), "2");
}

#[tokio::test]
async fn ollama_and_anthropic_streams_cut_halfway_end_with_error_events() {
    for wire in [Wire::Ollama, Wire::Anthropic] {
        let up = FakeUpstream::start(wire, "x").await.unwrap();
        up.set_reply("one two three four five six");
        up.push(Behavior::StopHalfway);
        let kind = if wire == Wire::Ollama {
            "ollama"
        } else {
            "anthropic"
        };
        let app = spawn_app(&provider_toml("x", kind, &up.base_url(), "")).await;
        let events = sse_events(app.chat(chat_body("x-model", true)).await).await;
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(
            last["error"]["code"], "upstream_interrupted",
            "{kind}: {events:?}"
        );
        assert_eq!(up.calls(), 1);
    }
}

#[tokio::test]
async fn request_errors_have_the_openai_shape_and_status() {
    let app = spawn_app("[[providers]]\nname = \"m\"\nkind = \"mock\"\n").await;
    let post = |body: &'static str| {
        app.client
            .post(app.at("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let resp = post("{not json").await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(header(&resp, "x-uat-attempts"), "0");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );

    let v: Value = post(r#"{"messages": [{"role": "user", "content": "x"}]}"#)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["error"]["param"], "model");

    let resp = post(r#"{"model": "mock-model"}"#).await.unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "messages");

    let resp = post(r#"{"model": "mock-model", "messages": [{"role": 5}]}"#)
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "messages[0].role");

    let resp = post(r#"{"model": "mock-model", "messages": []}"#)
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let resp = post(r#"[1, 2]"#).await.unwrap();
    assert_eq!(resp.status(), 400);

    let resp = post(r#"{"model": "nope", "messages": [{"role": "user", "content": "x"}]}"#)
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["param"], "model");

    let resp = app
        .client
        .get(app.at("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let app =
        spawn_app("[server]\nbody_limit = 2048\n[[providers]]\nname = \"m\"\nkind = \"mock\"\n")
            .await;
    let big = "x".repeat(4096);
    let resp = app
        .chat(json!({"model": "mock-model", "messages": [{"role": "user", "content": big}]}))
        .await;
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large");
    let resp = app.chat(chat_body("mock-model", false)).await;
    assert_eq!(resp.status(), 200, "small bodies still pass");
}

#[tokio::test]
async fn gzip_when_the_client_accepts_it() {
    let app = spawn_app("[[providers]]\nname = \"m\"\nkind = \"mock\"\n").await;
    let resp = app
        .client
        .post(app.at("/v1/chat/completions"))
        .header("accept-encoding", "gzip")
        .json(&chat_body("mock-model", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-encoding"), "gzip");
    let raw = resp.bytes().await.unwrap();
    assert_eq!(&raw[..2], &[0x1f, 0x8b], "gzip magic");
    let resp = app.chat(chat_body("mock-model", false)).await;
    assert_eq!(
        header(&resp, "content-encoding"),
        "",
        "not without Accept-Encoding"
    );
    // Streams are never compressed (that would buffer them).
    let resp = app
        .client
        .post(app.at("/v1/chat/completions"))
        .header("accept-encoding", "gzip")
        .json(&chat_body("mock-model", true))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "content-encoding"), "");
}

#[tokio::test]
async fn discovery_refresh_picks_up_new_models() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    up.set_models(&["old"]);
    let toml = format!(
        "{}{}",
        provider_toml("a", "openai", &up.base_url(), ""),
        routing("priority", "discovery_interval = \"150ms\"")
    );
    let app = spawn_app(&toml).await;
    assert_eq!(app.chat(chat_body("new", false)).await.status(), 404);
    up.set_models(&["old", "new"]);
    let router = app.state.gateway.router().clone();
    assert!(eventually(Duration::from_secs(5), || router.has_model("new")).await);
    assert_eq!(app.chat(chat_body("new", false)).await.status(), 200);
    assert!(up.model_calls() >= 2);
    // A failing refresh keeps the last list and marks the provider down.
    up.set_models_status(Some(500));
    let calls = up.model_calls();
    assert!(eventually(Duration::from_secs(5), || up.model_calls() > calls + 1).await);
    assert!(router.has_model("new"));
    assert!(!router.providers()[0].up);
}

#[tokio::test]
async fn configured_models_skip_discovery() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    let app = spawn_app(&provider_toml(
        "a",
        "openai",
        &up.base_url(),
        "models = [\"pinned\"]",
    ))
    .await;
    assert_eq!(up.model_calls(), 0);
    assert!(app.state.gateway.router().has_model("pinned"));
    assert!(!app.state.gateway.router().has_model("a-model"));
}

#[tokio::test]
async fn local_probe_finds_answering_servers_and_starts_without_any() {
    let up = FakeUpstream::start(Wire::Ollama, "local").await.unwrap();
    let mut candidates = uat_router::discovery::local_candidates();
    candidates[0].base_url = Some(up.base_url());
    let dead = closed_port_url().await;
    for c in candidates.iter_mut().skip(1) {
        c.base_url = Some(format!("{dead}/v1"));
    }
    let found = uat_router::discovery::probe_local(&candidates).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, "ollama");

    // No providers and probing on: the app starts whatever answers.
    let app = spawn_app("[routing]\nprobe_local = true\n").await;
    let resp = app.client.get(app.at("/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(v["data"].is_array());
}

#[tokio::test]
async fn embeddings_are_forwarded_to_remote_providers() {
    let o = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    o.set_models(&["text-embedding-3-small"]);
    let l = FakeUpstream::start(Wire::Ollama, "o").await.unwrap();
    l.set_models(&["nomic-embed-text"]);
    let toml = format!(
        "{}{}",
        provider_toml("a", "openai", &o.base_url(), ""),
        provider_toml("o", "ollama", &l.base_url(), "")
    );
    let app = spawn_app(&toml).await;
    let router = app.state.gateway.router();
    let body = json!({"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 3});
    let r = router
        .embeddings("text-embedding-3-small", &body)
        .await
        .unwrap();
    assert_eq!(&*r.provider, "a");
    let v: Value = serde_json::from_slice(&r.value.body).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(o.last_body().unwrap(), body);

    let r = router
        .embeddings(
            "nomic-embed-text",
            &json!({"model": "nomic-embed-text", "input": "x"}),
        )
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.value.body).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "embedding");
    assert_eq!(v["data"][0]["embedding"], json!([0.0, 0.5, 0.25]));
    assert_eq!(l.requests().last().unwrap().path, "/api/embed");
    assert!(!router.has_model("nope"));
    assert!(matches!(
        router.embeddings("nope", &json!({})).await,
        Err(uat_router::RouterError::UnknownModel { .. })
    ));
}

#[tokio::test]
async fn upstream_metrics_are_exported() {
    let up = FakeUpstream::start(Wire::OpenAi, "metrics-a")
        .await
        .unwrap();
    up.push(Behavior::Status(500));
    let app = spawn_app(&provider_toml("metrics-a", "openai", &up.base_url(), "")).await;
    assert_eq!(
        app.chat(chat_body("metrics-a-model", false)).await.status(),
        200
    );
    let mut body = chat_body("metrics-a-model", true);
    body["stream_options"] = json!({"include_usage": true});
    sse_events(app.chat(body).await).await;
    let text = app
        .client
        .get(app.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in metrics"))
            .to_owned()
    };
    assert!(line("uat_provider_up{provider=\"metrics-a\"}").ends_with(" 1"));
    assert!(
        line("uat_provider_errors_total{kind=\"server_error\",provider=\"metrics-a\"}")
            .ends_with(" 1")
    );
    assert!(line("uat_tokens_total{kind=\"completion\",provider=\"metrics-a\"}").ends_with(" 6"));
    assert!(line("uat_upstream_duration_seconds_count{provider=\"metrics-a\"}").ends_with(" 2"));
    assert!(line("uat_time_to_first_token_seconds_count{provider=\"metrics-a\"}").ends_with(" 1"));
    assert!(text.contains("uat_requests_total{model=\"metrics-a-model\",provider=\"metrics-a\",route=\"/v1/chat/completions\",status=\"200\"}"));
}
