//! Gateway routing: each strategy's choice, retries, failover, timeouts,
//! error classification (502/503/4xx) and the circuit breaker.

use crate::common::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use uat_testkit::{Behavior, FakeUpstream, Wire};

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
    let (dead, _dead) = closed_port();
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
    let (dead1, _dead1) = closed_port();
    let (dead2, _dead2) = closed_port();
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

/// An upstream's rejection reaches the client with the upstream's own
/// `code`, `type` and `param` (tools act on OpenAI's
/// `context_length_exceeded`); before, the code was always
/// `upstream_rejected`.
#[tokio::test]
async fn a_rejection_keeps_the_upstreams_code_type_and_param() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    up.push(Behavior::StatusBody(
        400,
        r#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#.into(),
    ));
    let app = spawn_app(&provider_toml("a", "openai", &up.base_url(), "")).await;
    let resp = app.chat(chat_body("a-model", false)).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["param"], "messages");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length"),
        "{v}"
    );
    // An error body without them keeps ours.
    up.push(Behavior::StatusBody(422, r#"{"detail":"bad"}"#.into()));
    let resp = app.chat(chat_body("a-model", false)).await;
    assert_eq!(resp.status(), 422);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_rejected", "{v}");
}

/// When every provider answers 429, the client gets a 429 with the longest
/// `Retry-After` they asked for (the SDKs back off on it), not a 502.
#[tokio::test]
async fn every_provider_rate_limited_is_a_429_with_retry_after() {
    let (a, b) = two_fakes().await;
    for up in [&a, &b] {
        up.set_default(Behavior::RateLimited {
            retry_after_secs: 2,
        });
    }
    let toml = format!(
        "{}{}",
        two_providers(&a, &b, "", ""),
        routing(
            "priority",
            "max_attempts = 2\nbackoff_base = \"1ms\"\nbackoff_max = \"5ms\""
        )
    );
    let app = spawn_app(&toml).await;
    let resp = app.chat(chat_body("shared", false)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after"), "2");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
    // One provider down, the other rate limited: still 429, not 503/502.
    b.set_default(Behavior::Status(500));
    let resp = app.chat(chat_body("shared", false)).await;
    assert_eq!(resp.status(), 502, "a server error is not a rate limit");
}

/// One upstream whose first answer is a 429 with `Retry-After:
/// retry_after_secs`, behind retries backing off 1 ms up to `backoff_max`.
async fn rate_limited_once(retry_after_secs: u64, backoff_max: &str) -> (FakeUpstream, TestApp) {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    up.push(Behavior::RateLimited { retry_after_secs });
    let toml = format!(
        "{}{}",
        provider_toml("a", "openai", &up.base_url(), ""),
        routing(
            "priority",
            &format!("backoff_base = \"1ms\"\nbackoff_max = \"{backoff_max}\"")
        )
    );
    let app = spawn_app(&toml).await;
    (up, app)
}

#[tokio::test]
async fn rate_limit_honours_retry_after_capped_by_backoff_max() {
    let (_up, app) = rate_limited_once(30, "400ms").await;
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

/// A `Retry-After` beyond any duration (2^64 s) is capped like any other.
/// It used to panic in `Duration::from_secs_f64`, so the client's
/// connection was dropped instead of answered.
#[tokio::test]
async fn a_retry_after_past_any_duration_is_capped_not_a_panic() {
    let (_up, app) = rate_limited_once(u64::MAX, "50ms").await;
    let resp = app.chat(chat_body("a-model", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-attempts"), "2");
}

#[tokio::test]
async fn hang_past_timeout_fails_over() {
    let (a, b) = two_fakes().await;
    a.set_default(Behavior::Hang);
    let toml = format!(
        "{}{}",
        two_providers(&a, &b, "priority = 0\ntimeout = \"200ms\"", "priority = 1"),
        routing("priority", "")
    );
    let app = spawn_app(&toml).await;
    let resp = app.chat(chat_body("shared", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "b");
    assert_eq!(a.calls(), 1);
}

/// A non-streamed answer's head comes only once it is generated, so only
/// `timeout` bounds it: one slower than `first_byte_timeout` is served
/// (it used to time out there and be generated again elsewhere). A stream
/// still has `first_byte_timeout` until its first token.
#[tokio::test]
async fn a_slow_non_streamed_answer_is_bounded_by_the_total_timeout_not_the_first_byte() {
    let (a, b) = two_fakes().await;
    a.set_default(Behavior::Delay(Duration::from_millis(600)));
    let toml = format!(
        "{}{}",
        two_providers(
            &a,
            &b,
            "priority = 0\nfirst_byte_timeout = \"150ms\"\ntimeout = \"5s\"",
            "priority = 1"
        ),
        routing("priority", "")
    );
    let app = spawn_app(&toml).await;
    let resp = app.chat(chat_body("shared", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "a");
    assert_eq!((a.calls(), b.calls()), (1, 0));
    let resp = app
        .client
        .post(app.at("/v1/embeddings"))
        .json(&serde_json::json!({"model": "shared", "input": "slow"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "a");

    a.set_default(Behavior::SlowFirstToken(Duration::from_millis(600)));
    let resp = app.chat(chat_body("shared", true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-uat-provider"),
        "b",
        "the stream's first token came too late on a"
    );
}

#[tokio::test]
async fn hang_everywhere_is_503_timeout() {
    let up = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    up.set_default(Behavior::Hang);
    let toml = format!(
        "{}{}",
        provider_toml("a", "openai", &up.base_url(), "timeout = \"100ms\""),
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
    let (check, _) = app.ready_check("provider:a").await;
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
