//! The response cache through the HTTP API: hits and misses with their
//! `x-uat-cache` header, streamed/non-streamed equivalence, policy headers,
//! errors never cached, single flight counted by the fake upstream, Redis
//! down, admin invalidation and stats, and L1 coherence between two app
//! instances through Redis pub/sub.
//!
//! Redis: `UAT_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/`);
//! PostgreSQL: `UAT_TEST_POSTGRES_URL`. Unreachable servers fail the tests.

use crate::common::*;
use serde_json::{Value, json};
use std::time::Duration;
use uat_testkit::{Behavior, FakeUpstream, Wire};

fn redis_url() -> String {
    std::env::var("UAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

fn postgres_url() -> String {
    std::env::var("UAT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fake OpenAI upstream (model `<name>-model`) and a `[cache]` section
/// with L2 on its own key prefix.
async fn setup(extra_cache: &str) -> (FakeUpstream, String, String) {
    let name = unique("c");
    let up = FakeUpstream::start(Wire::OpenAi, &name).await.unwrap();
    let toml = format!(
        "{}\n[cache]\nmode = \"deterministic\"\n{extra_cache}\n[cache.l2]\nurl = \"{}\"\nkey_prefix = \"uat-test:{}:\"\n",
        provider_toml("p", "openai", &up.base_url(), ""),
        redis_url(),
        unique("srv"),
    );
    let model = format!("{name}-model");
    (up, toml, model)
}

fn det(model: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}], "temperature": 0, "stream": stream})
}

async fn stored(app: &TestApp, resp_key: &str) -> bool {
    let key = uat_cache::CacheKey::parse_public("default", resp_key).unwrap();
    let cache = app.state.cache.tiered().unwrap().clone();
    eventually(Duration::from_secs(3), || {
        cache.l1().unwrap().contains(&key)
    })
    .await
}

#[tokio::test]
async fn repeated_deterministic_chat_is_a_hit() {
    let (up, toml, model) = setup("").await;
    let app = spawn_app(&toml).await;
    let r1 = app.chat(det(&model, false)).await;
    assert_eq!(r1.status(), 200);
    assert_eq!(header(&r1, "x-uat-cache"), "miss");
    assert!(!header(&r1, "x-uat-cache-key").is_empty());
    let b1: Value = r1.json().await.unwrap();
    let r2 = app.chat(det(&model, false)).await;
    assert_eq!(header(&r2, "x-uat-cache"), "hit-l1");
    assert_eq!(header(&r2, "content-type"), "application/json");
    let b2: Value = r2.json().await.unwrap();
    assert_eq!(b1, b2);
    assert_eq!(up.calls(), 1);
    // Reordered keys, `user` and whitespace do not matter; a temperature does.
    let reordered = json!({"temperature": 0.0, "user": "x", "messages": [{"content": "Say hello", "role": "user"}], "model": model});
    assert_eq!(header(&app.chat(reordered).await, "x-uat-cache"), "hit-l1");
    let mut hotter = det(&model, false);
    hotter["temperature"] = json!(0.2);
    hotter["seed"] = json!(1);
    assert_eq!(header(&app.chat(hotter).await, "x-uat-cache"), "miss");
    assert_eq!(up.calls(), 2);
}

/// The key's model is the model after alias resolution: an alias,
/// `provider/model` and the model's own name share one entry, a pattern on
/// the model's name invalidates what was stored through the alias, and a
/// `model_ttl` set for the alias applies to it.
#[tokio::test]
async fn an_alias_and_its_model_share_entries() {
    let (up, toml, model) = setup("").await;
    let toml = format!(
        "{toml}[cache.model_ttl]\nfast = \"1s\"\n[[models]]\nname = \"fast\"\ntargets = [\"p/{model}\"]\n"
    );
    let app = spawn_app(&toml).await;
    let r = app.chat(det("fast", false)).await;
    assert_eq!(header(&r, "x-uat-cache"), "miss");
    let key = header(&r, "x-uat-cache-key");
    assert!(key.starts_with(&format!("{model}|")), "{key}");
    for name in [model.clone(), format!("p/{model}")] {
        assert_eq!(
            header(&app.chat(det(&name, false)).await, "x-uat-cache"),
            "hit-l1",
            "{name}"
        );
    }
    assert_eq!(up.calls(), 1);
    let r = app
        .client
        .delete(app.at("/v1/cache"))
        .json(&json!({ "pattern": model }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"deleted": 1}));
    assert_eq!(
        header(&app.chat(det("fast", false)).await, "x-uat-cache"),
        "miss"
    );
    // Stored through the alias with its 1 s TTL: gone after it.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        header(&app.chat(det(&model, false)).await, "x-uat-cache"),
        "miss"
    );
}

#[tokio::test]
async fn non_deterministic_requests_bypass_unless_mode_always() {
    let (up, toml, model) = setup("").await;
    let app = spawn_app(&toml).await;
    for _ in 0..2 {
        let r = app.chat(chat_body(&model, false)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-uat-cache"), "bypass");
    }
    assert_eq!(up.calls(), 2);
    let (up, toml, model) = setup("").await;
    let app = spawn_app(&toml.replace("mode = \"deterministic\"", "mode = \"always\"")).await;
    app.chat(chat_body(&model, false)).await;
    assert_eq!(
        header(&app.chat(chat_body(&model, false)).await, "x-uat-cache"),
        "hit-l1"
    );
    assert_eq!(up.calls(), 1);
}

const TRICKY: &str =
    "Héllo \"wörld\" \\ back\\slash — tab\tand 😀 emoji, <b>tags</b> & more words here";

#[tokio::test]
async fn streamed_miss_then_non_streamed_hit_is_byte_exact() {
    let (up, toml, model) = setup("").await;
    up.set_reply(TRICKY);
    let app = spawn_app(&toml).await;
    let r = app.chat(det(&model, true)).await;
    assert_eq!(header(&r, "x-uat-cache"), "miss");
    let key = header(&r, "x-uat-cache-key");
    let events = sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let streamed = stream_text(&events);
    assert_eq!(streamed, TRICKY);
    assert!(stored(&app, &key).await, "completed stream stored");
    let r = app.chat(det(&model, false)).await;
    assert_eq!(header(&r, "x-uat-cache"), "hit-l1");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .as_bytes(),
        streamed.as_bytes()
    );
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(up.calls(), 1);
}

/// A streamed miss whose client did not ask for usage still stores the
/// answer's usage (the cache asks the upstream for it and drops the usage
/// chunk before the client sees it), so the non-streamed hit that follows
/// has `usage` like any completion, and a streamed hit asking for usage
/// gets it. Before, such a hit had no `usage` at all. On every wire.
#[tokio::test]
async fn a_streamed_miss_stores_usage_the_client_did_not_ask_for() {
    for (wire, kind) in [
        (Wire::OpenAi, "openai"),
        (Wire::Ollama, "ollama"),
        (Wire::Anthropic, "anthropic"),
    ] {
        let name = unique("u");
        let up = FakeUpstream::start(wire, &name).await.unwrap();
        up.set_reply("one two three four");
        let model = format!("{name}-model");
        let app = spawn_app(&format!(
            "{}[cache]\nmode = \"deterministic\"\n",
            provider_toml("p", kind, &up.base_url(), "")
        ))
        .await;
        let r = app.chat(det(&model, true)).await;
        assert_eq!(header(&r, "x-uat-cache"), "miss", "{kind}");
        let key = header(&r, "x-uat-cache-key");
        let events = sse_events(r).await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{kind}");
        for e in &events[..events.len() - 1] {
            let c: Value = serde_json::from_str(e).unwrap();
            let choices = c["choices"].as_array().map_or(0, Vec::len);
            assert!(
                choices > 0,
                "{kind}: a chunk the client did not ask for: {e}"
            );
        }
        assert_eq!(stream_text(&events), "one two three four", "{kind}");
        assert!(stored(&app, &key).await, "{kind}: stream stored");
        let r = app.chat(det(&model, false)).await;
        assert_eq!(header(&r, "x-uat-cache"), "hit-l1", "{kind}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["usage"]["prompt_tokens"], 7, "{kind}: {v}");
        assert_eq!(v["usage"]["completion_tokens"], 4, "{kind}: {v}");
        let mut asking = det(&model, true);
        asking["stream_options"] = json!({"include_usage": true});
        let r = app.chat(asking).await;
        assert_eq!(header(&r, "x-uat-cache"), "hit-l1", "{kind}");
        let events = sse_events(r).await;
        let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(last["usage"], v["usage"], "{kind}");
        assert_eq!(up.calls(), 1, "{kind}");
    }
}

#[tokio::test]
async fn non_streamed_miss_then_streamed_hit_is_byte_exact() {
    let (up, toml, model) = setup("").await;
    up.set_reply(TRICKY);
    let app = spawn_app(&toml).await;
    let r = app.chat(det(&model, false)).await;
    assert_eq!(header(&r, "x-uat-cache"), "miss");
    let v: Value = r.json().await.unwrap();
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut body = det(&model, true);
    body["stream_options"] = json!({"include_usage": true});
    let r = app.chat(body).await;
    assert_eq!(header(&r, "x-uat-cache"), "hit-l1");
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    let events = sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(stream_text(&events).as_bytes(), text.as_bytes());
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        assert_eq!(c["object"], "chat.completion.chunk");
    }
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"], v["usage"], "usage replayed when asked for");
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn cache_control_and_ttl_headers() {
    let (up, toml, model) = setup("").await;
    let app = spawn_app(&toml).await;
    let send = |h: Vec<(&'static str, &'static str)>| {
        let mut req = app
            .client
            .post(app.at("/v1/chat/completions"))
            .json(&det(&model, false));
        for (k, v) in h {
            req = req.header(k, v);
        }
        req.send()
    };
    // no-store: answered, not stored.
    assert_eq!(
        header(
            &send(vec![("cache-control", "no-store")]).await.unwrap(),
            "x-uat-cache"
        ),
        "miss"
    );
    assert_eq!(
        header(
            &send(vec![("cache-control", "no-store")]).await.unwrap(),
            "x-uat-cache"
        ),
        "miss"
    );
    assert_eq!(up.calls(), 2);
    // A 1-second TTL.
    let r = send(vec![("x-uat-cache-ttl", "1")]).await.unwrap();
    assert_eq!(header(&r, "x-uat-cache"), "miss");
    assert!(stored(&app, &header(&r, "x-uat-cache-key")).await);
    assert_eq!(
        header(&send(vec![]).await.unwrap(), "x-uat-cache"),
        "hit-l1"
    );
    // no-cache: skips the read (goes upstream) but stores.
    assert_eq!(
        header(
            &send(vec![("cache-control", "no-cache")]).await.unwrap(),
            "x-uat-cache"
        ),
        "miss"
    );
    assert_eq!(up.calls(), 4);
    // A reload's `max-age=0` and HTTP/1.0's `Pragma: no-cache` do the same.
    for h in [("cache-control", "max-age=0"), ("pragma", "no-cache")] {
        assert_eq!(header(&send(vec![h]).await.unwrap(), "x-uat-cache"), "miss");
    }
    assert_eq!(up.calls(), 6);
    // Both: bypass.
    assert_eq!(
        header(
            &send(vec![("cache-control", "no-cache, no-store")])
                .await
                .unwrap(),
            "x-uat-cache"
        ),
        "bypass"
    );
    assert_eq!(up.calls(), 7);
}

/// `Cache-Control: max-age=N`: an answer stored more than N seconds ago is
/// not served (the request goes upstream and its answer replaces the entry),
/// and every hit says its age in `Age`. The time an answer was stored
/// travels with it through every level and promotion: L2 and L3 hits, and
/// the L1 entries they fill, keep the original age.
#[tokio::test]
async fn max_age_bounds_the_age_served_from_every_level() {
    let (up, toml, model) = setup("").await;
    let app = spawn_app(&toml).await;
    let cache = app.state.cache.tiered().unwrap().clone();
    let ask = |cache_control: Option<&'static str>| {
        let mut req = app
            .client
            .post(app.at("/v1/chat/completions"))
            .json(&det(&model, false));
        if let Some(v) = cache_control {
            req = req.header("cache-control", v);
        }
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let age = r
                .headers()
                .get("age")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (
                header(&r, "x-uat-cache"),
                age,
                header(&r, "x-uat-cache-key"),
            )
        }
    };
    let (how, age, key) = ask(None).await;
    assert_eq!((how.as_str(), age), ("miss", None), "a miss has no Age");
    let key = uat_cache::CacheKey::parse_public("default", &key).unwrap();
    let (how, age, _) = ask(Some("max-age=1")).await;
    assert_eq!((how.as_str(), age), ("hit-l1", Some(0)));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (how, age, _) = ask(None).await;
    assert!(
        how == "hit-l1" && matches!(age, Some(1..=3)),
        "without max-age: served, {how} {age:?}"
    );
    assert_eq!(ask(Some("max-age=1")).await.0, "miss", "older than 1 s");
    assert_eq!(up.calls(), 2);
    let (how, age, _) = ask(Some("max-age=1")).await;
    assert_eq!((how.as_str(), age), ("hit-l1", Some(0)), "replaced");
    cache.flush(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let between = |age: Option<u64>| age.is_some_and(|a| (1..=5).contains(&a));
    // L2, then the L1 entry it filled.
    cache.l1().unwrap().clear();
    let (how, age, _) = ask(Some("max-age=60")).await;
    assert!(how == "hit-l2" && between(age), "{how} {age:?}");
    let (how, age, _) = ask(Some("max-age=60")).await;
    assert!(how == "hit-l1" && between(age), "{how} {age:?}");
    // L3, then the L1 entry it filled.
    cache.l1().unwrap().clear();
    use uat_cache::CacheLevel;
    assert_eq!(cache.l2().unwrap().delete(&key).await.unwrap(), 1);
    let (how, age, _) = ask(Some("max-age=60")).await;
    assert!(how == "hit-l3" && between(age), "{how} {age:?}");
    let (how, age, _) = ask(Some("max-age=60")).await;
    assert!(how == "hit-l1" && between(age), "{how} {age:?}");
    assert_eq!(ask(Some("max-age=1")).await.0, "miss");
    assert_eq!(up.calls(), 3);
}

/// LiteLLM's per-request cache controls in the body (`extra_body={"cache":
/// {...}}` from the OpenAI SDKs) do what the headers do; they are not part
/// of the key and never reach the upstream; a malformed or unsupported one
/// is a 400 naming it, before any upstream call.
#[tokio::test]
async fn litellm_cache_controls_in_the_body() {
    let (up, toml, model) = setup("").await;
    let app = spawn_app(&toml).await;
    let ask = |controls: Value| {
        let mut body = det(&model, false);
        body["cache"] = controls;
        let req = app.client.post(app.at("/v1/chat/completions")).json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let how = header(&r, "x-uat-cache");
            let body: Value = r.json().await.unwrap();
            (status, how, body)
        }
    };
    let how = |controls: Value| {
        let a = ask(controls);
        async move {
            let (status, how, body) = a.await;
            assert_eq!(status, 200, "{body}");
            how
        }
    };
    assert_eq!(how(json!({"no-store": true})).await, "miss");
    assert!(
        up.last_body().unwrap().get("cache").is_none(),
        "the controls stay in the gateway"
    );
    assert_eq!(
        how(json!({"no-store": false})).await,
        "miss",
        "nothing was stored"
    );
    assert_eq!(up.calls(), 2);
    // Not in the key: the same request without them hits.
    assert_eq!(
        app.chat(det(&model, false)).await.headers()["x-uat-cache"],
        "hit-l1"
    );
    // A client serializing LiteLLM's optional fields sends the unset as null.
    assert_eq!(
        how(json!({"ttl": null, "no-cache": null, "s-maxage": null})).await,
        "hit-l1"
    );
    assert_eq!(how(json!({"no-cache": true})).await, "miss");
    assert_eq!(up.calls(), 3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(how(json!({"s-maxage": 60})).await, "hit-l1");
    assert_eq!(how(json!({"s-maxage": 1})).await, "miss", "older than 1 s");
    assert_eq!(up.calls(), 4);
    // `ttl`: a 1-second entry under another prompt.
    let mut short = det(&model, false);
    short["messages"][0]["content"] = json!("Say goodbye");
    short["cache"] = json!({"ttl": 1.0});
    assert_eq!(
        header(&app.chat(short.clone()).await, "x-uat-cache"),
        "miss"
    );
    assert_eq!(
        header(&app.chat(short.clone()).await, "x-uat-cache"),
        "hit-l1"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        header(&app.chat(short).await, "x-uat-cache"),
        "miss",
        "expired"
    );
    assert_eq!(up.calls(), 6);
    for (controls, param) in [
        (json!("yes"), "cache"),
        (json!({"no-cache": "yes"}), "cache.no-cache"),
        (json!({"ttl": -1}), "cache.ttl"),
        (json!({"ttl": 1.5}), "cache.ttl"),
        (json!({"s-maxage": "60"}), "cache.s-maxage"),
        (json!({"namespace": "team"}), "cache.namespace"),
        (json!({"no_cache": true}), "cache.no_cache"),
    ] {
        let (status, _, body) = ask(controls.clone()).await;
        assert_eq!(status, 400, "{controls}: {body}");
        assert_eq!(body["error"]["param"], param, "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    assert_eq!(up.calls(), 6, "no refused request went upstream");
}

/// An `x-uat-cache-ttl` that is not a whole number of seconds up to 10 years
/// is refused with a 400 in the OpenAI error shape, before any upstream call.
/// (2^64 - 1 used to panic the request in L1's clock arithmetic: the client
/// saw its connection dropped; words were silently ignored.)
#[tokio::test]
async fn a_bad_ttl_header_is_refused_with_a_400() {
    let (up, toml, model) = setup("").await;
    let app = spawn_app(&toml).await;
    let max = uat_config::MAX_TTL.as_secs();
    let over = (max + 1).to_string();
    for bad in [
        "18446744073709551615",
        over.as_str(),
        "-1",
        "1.5",
        "soon",
        "",
    ] {
        let r = app
            .client
            .post(app.at("/v1/chat/completions"))
            .header("x-uat-cache-ttl", bad)
            .json(&det(&model, false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "x-uat-cache-ttl: {bad:?}");
        assert_eq!(header(&r, "x-uat-cache"), "bypass");
        let b = r.json::<Value>().await.unwrap();
        assert_eq!(b["error"]["type"], "invalid_request_error", "{b}");
        assert_eq!(b["error"]["param"], "x-uat-cache-ttl", "{b}");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&max.to_string()),
            "{b}"
        );
    }
    assert_eq!(up.calls(), 0, "refused before any upstream call");
    // The bound itself is accepted, and stored.
    let r = app
        .client
        .post(app.at("/v1/chat/completions"))
        .header("x-uat-cache-ttl", max.to_string())
        .json(&det(&model, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(stored(&app, &header(&r, "x-uat-cache-key")).await);
    assert_eq!(
        header(&app.chat(det(&model, false)).await, "x-uat-cache"),
        "hit-l1"
    );
}

#[tokio::test]
async fn ttl_header_expires_entries() {
    let (up, toml, model) = setup("").await;
    let app = spawn_app(&toml).await;
    let req = || {
        app.client
            .post(app.at("/v1/chat/completions"))
            .header("x-uat-cache-ttl", "1")
            .json(&det(&model, false))
            .send()
    };
    let r = req().await.unwrap();
    assert!(stored(&app, &header(&r, "x-uat-cache-key")).await);
    assert_eq!(header(&req().await.unwrap(), "x-uat-cache"), "hit-l1");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        header(&req().await.unwrap(), "x-uat-cache"),
        "miss",
        "expired in L1, L2 and L3"
    );
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn error_responses_are_never_cached() {
    let (up, toml, model) = setup("").await;
    let app = spawn_app(&format!("[routing]\nmax_attempts = 1\n{toml}")).await;
    up.set_default(Behavior::Status(500));
    let r = app.chat(det(&model, false)).await;
    assert!(r.status().is_server_error(), "{}", r.status());
    assert_eq!(header(&r, "x-uat-cache"), "miss");
    up.set_default(Behavior::Ok);
    let r = app.chat(det(&model, false)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-uat-cache"),
        "miss",
        "the error was not stored"
    );
    // A stream that stops halfway is not stored either.
    let mut body = det(&model, true);
    body["max_tokens"] = json!(7);
    up.set_default(Behavior::StopHalfway);
    let r = app.chat(body.clone()).await;
    let _ = r.text().await;
    up.set_default(Behavior::Ok);
    let r = app.chat(body).await;
    assert_eq!(
        header(&r, "x-uat-cache"),
        "miss",
        "a truncated stream was not stored"
    );
    let events = sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}

/// Sends the same deterministic chat twice: each time the client gets the
/// upstream's `body` as it came, marked a miss, and the upstream was called
/// (nothing was stored). `what` names the body in failures.
async fn passed_on_not_stored(
    app: &TestApp,
    up: &FakeUpstream,
    model: &str,
    body: &str,
    what: &str,
) {
    for round in 0..2 {
        let calls = up.calls();
        let r = app.chat(det(model, false)).await;
        assert_eq!(r.status(), 200, "{what}, round {round}");
        assert_eq!(header(&r, "x-uat-cache"), "miss", "{what}, round {round}");
        assert!(
            r.text().await.unwrap() == body,
            "{what} passed on as it came, round {round}"
        );
        assert_eq!(
            up.calls(),
            calls + 1,
            "{what} was not stored, round {round}"
        );
    }
}

#[tokio::test]
async fn answers_without_their_list_are_not_cached() {
    let (up, toml, model) = setup("").await;
    let app = spawn_app(&toml).await;
    // Chat: `choices` missing, or not an array.
    for body in [
        r#"{"object":"chat.completion","model":"m"}"#,
        r#"{"object":"chat.completion","choices":{"0":{}}}"#,
        r#"{"object":"chat.completion","choices":null}"#,
    ] {
        up.set_default(Behavior::Body(body.into()));
        passed_on_not_stored(&app, &up, &model, body, body).await;
    }
    // Embeddings: `data` not an array.
    up.set_default(Behavior::Body(r#"{"object":"list","data":"x"}"#.into()));
    let emb = json!({"model": model, "input": "sea"});
    for _ in 0..2 {
        let calls = up.calls();
        let r = app.post("/v1/embeddings", &emb).await;
        assert_eq!(header(&r, "x-uat-cache"), "miss");
        assert_eq!(
            up.calls(),
            calls + 1,
            "an answer without data was not stored"
        );
    }
    // The same requests are stored once the answers have their lists.
    up.set_default(Behavior::Ok);
    let r = app.chat(det(&model, false)).await;
    assert_eq!(header(&r, "x-uat-cache"), "miss");
    let r = app.chat(det(&model, false)).await;
    assert_eq!(header(&r, "x-uat-cache"), "hit-l1");
    let r = app.post("/v1/embeddings", &emb).await;
    assert_eq!(header(&r, "x-uat-cache"), "miss");
    let r = app.post("/v1/embeddings", &emb).await;
    assert_eq!(header(&r, "x-uat-cache"), "hit-l1");
}

#[tokio::test]
async fn identical_concurrent_requests_make_one_upstream_call() {
    let (up, toml, model) = setup("").await;
    up.set_default(Behavior::Delay(Duration::from_millis(300)));
    let app = std::sync::Arc::new(spawn_app(&toml).await);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (app, model) = (app.clone(), model.clone());
        tasks.push(tokio::spawn(async move {
            let r = app.chat(det(&model, i % 3 == 0)).await;
            assert_eq!(r.status(), 200);
            let how = header(&r, "x-uat-cache");
            let text = if i % 3 == 0 {
                stream_text(&sse_events(r).await)
            } else {
                let v: Value = r.json().await.unwrap();
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            };
            (how, text)
        }));
    }
    let mut misses = 0;
    for t in tasks {
        let (how, text) = t.await.unwrap();
        assert!(text.starts_with("Hello from"), "{text}");
        misses += usize::from(how == "miss");
    }
    assert_eq!(up.calls(), 1, "exactly one upstream call");
    assert_eq!(misses, 1);
    // The hit rate is of responses: 11 of 12 were served from the cache.
    // The levels count lookups, and each waiter looked up twice (its miss,
    // then the hit), which read 11 of 23.
    let stats = app.get_json("/v1/cache/stats").await;
    let r = &stats["responses"];
    assert_eq!(
        (r["hits"].as_u64(), r["misses"].as_u64()),
        (Some(11), Some(1)),
        "{stats}"
    );
    assert!(
        (r["hit_rate"].as_f64().unwrap() - 11.0 / 12.0).abs() < 1e-12,
        "{stats}"
    );
}

/// An app whose L2 is a closed port, in front of a fake upstream; and the
/// upstream's model name.
async fn app_with_l2_down(prefix: &str) -> (FakeUpstream, TestApp, String) {
    let name = unique(prefix);
    let up = FakeUpstream::start(Wire::OpenAi, &name).await.unwrap();
    let toml = format!(
        "{}\n[cache]\nmode = \"deterministic\"\n[cache.l2]\nurl = \"redis://127.0.0.1:1/\"\ntimeout = \"100ms\"\n",
        provider_toml("p", "openai", &up.base_url(), "")
    );
    (up, spawn_app(&toml).await, format!("{name}-model"))
}

#[tokio::test]
async fn redis_on_a_closed_port_fails_no_request_and_degrades_ready() {
    let (up, app, model) = app_with_l2_down("down").await;
    for i in 0..20 {
        let mut body = det(&model, i % 2 == 0);
        body["messages"][0]["content"] = json!(format!("q{}", i / 4));
        let r = app.chat(body).await;
        assert_eq!(r.status(), 200);
        let _ = r.text().await;
    }
    assert!(
        up.calls() <= 10,
        "L1 (and L3) still serve: {} calls",
        up.calls()
    );
    let r = app.client.get(app.at("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200, "a cache level is never critical");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "degraded");
    let l2 = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "cache.l2")
        .unwrap();
    assert_eq!(l2["status"], "degraded");
    assert_eq!(l2["critical"], false);
}

#[tokio::test]
async fn admin_invalidation_by_key_and_pattern_and_stats() {
    let (up, toml, model) = setup("").await;
    let app = spawn_app(&toml).await;
    let r = app.chat(det(&model, false)).await;
    let key = header(&r, "x-uat-cache-key");
    assert!(key.starts_with(&format!("{model}|")), "{key}");
    assert_eq!(
        header(&app.chat(det(&model, false)).await, "x-uat-cache"),
        "hit-l1"
    );
    let del = |body: Value| app.client.delete(app.at("/v1/cache")).json(&body).send();
    let r = del(json!({ "key": key })).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"deleted": 1}));
    assert_eq!(
        header(&app.chat(det(&model, false)).await, "x-uat-cache"),
        "miss"
    );
    let mut other = det(&model, false);
    other["messages"][0]["content"] = json!("another question");
    app.chat(other.clone()).await;
    let prefix = &model[..model.len() - 3];
    let r = del(json!({ "pattern": format!("{prefix}*") }))
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"deleted": 2}));
    assert_eq!(header(&app.chat(other).await, "x-uat-cache"), "miss");
    assert_eq!(up.calls(), 4);
    // Bad bodies are 400s naming the field.
    let r = del(json!({})).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = del(json!({"key": "nonsense"})).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], "key");
    let s: Value = app
        .client
        .get(app.at("/v1/cache/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for level in ["l1", "l2", "l3"] {
        let l = &s["levels"][level];
        for f in ["entries", "bytes", "hits", "misses", "hit_rate"] {
            assert!(l[f].is_number(), "{level}.{f} in {s}");
        }
    }
    assert!(s["levels"]["l1"]["hits"].as_u64().unwrap() >= 1);
    assert_eq!(s["levels"]["l1"]["entries"], 1);
}

#[tokio::test]
async fn invalidation_reaches_a_second_instance_through_pubsub() {
    // Two replicas sharing Redis and PostgreSQL, as in production.
    let (up, toml, model) = setup("").await;
    let toml = format!("{toml}\n[storage]\ndatabase_url = \"{}\"\n", postgres_url());
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let mut cfg_a = test_config(&toml, dir_a.path());
    let mut cfg_b = test_config(&toml, dir_b.path());
    cfg_a.storage.database_url = Some(postgres_url());
    cfg_b.storage.database_url = Some(postgres_url());
    let a = spawn_config(cfg_a, dir_a).await;
    let b = spawn_config(cfg_b, dir_b).await;
    for app in [&a, &b] {
        assert!(
            app.state
                .cache
                .tiered()
                .unwrap()
                .wait_subscribed(Duration::from_secs(5))
                .await
        );
    }
    let r = a.chat(det(&model, false)).await;
    let key = uat_cache::CacheKey::parse_public("default", &header(&r, "x-uat-cache-key")).unwrap();
    a.state
        .cache
        .tiered()
        .unwrap()
        .flush(Duration::from_secs(5))
        .await;
    // B's L2 key set has heard of A's write (well under a millisecond after it).
    assert!(
        b.state
            .cache
            .tiered()
            .unwrap()
            .l2()
            .unwrap()
            .sync_presence(Duration::from_secs(5))
            .await
    );
    assert_eq!(
        header(&b.chat(det(&model, false)).await, "x-uat-cache"),
        "hit-l2"
    );
    assert_eq!(
        header(&b.chat(det(&model, false)).await, "x-uat-cache"),
        "hit-l1"
    );
    let r = a
        .client
        .delete(a.at("/v1/cache"))
        .json(&json!({"pattern": model}))
        .send()
        .await
        .unwrap();
    assert!(
        r.json::<Value>().await.unwrap()["deleted"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let b_cache = b.state.cache.tiered().unwrap().clone();
    assert!(
        eventually(Duration::from_secs(3), || !b_cache
            .l1()
            .unwrap()
            .contains(&key))
        .await
    );
    assert_eq!(
        header(&b.chat(det(&model, false)).await, "x-uat-cache"),
        "miss"
    );
    assert_eq!(up.calls(), 2);
}

/// An answer larger than the cache stores (32 MiB; a big embeddings batch
/// can be) reaches the client whole, uncached; before, it became a 502.
#[tokio::test]
async fn answers_over_the_stored_size_pass_through_uncached() {
    let (up, toml, model) = setup("").await;
    let app = spawn_app(&toml).await;
    let content = "x".repeat(33 * 1024 * 1024);
    let body = json!({
        "id": "big", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    })
    .to_string();
    up.set_default(Behavior::Body(body.clone()));
    passed_on_not_stored(&app, &up, &model, &body, "a 33 MiB answer").await;
}

/// `DELETE /v1/cache` that could not reach a level is no plain success: a
/// 503 in the OpenAI shape naming the level, so the caller retries. Before,
/// L2 being down counted as zero deleted there and the answer was
/// `200 {"deleted": N}` while L2 kept its entries (served again once back).
#[tokio::test]
async fn an_invalidation_that_could_not_reach_l2_is_a_503() {
    let (_up, app, model) = app_with_l2_down("inv503").await;
    let r = app.chat(det(&model, false)).await;
    assert_eq!(header(&r, "x-uat-cache"), "miss");
    let key = header(&r, "x-uat-cache-key");
    let del = |body: Value| app.client.delete(app.at("/v1/cache")).json(&body).send();
    for body in [json!({"pattern": "*"}), json!({"key": key})] {
        let r = del(body.clone()).await.unwrap();
        assert_eq!(r.status(), 503, "{body}");
        assert_eq!(header(&r, "retry-after"), "1");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "cache_unavailable", "{v}");
        assert_eq!(v["error"]["code"], "cache_invalidation_incomplete");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("l2"), "{message}");
        assert!(v["error"]["incomplete"][0] == "l2", "{v}");
    }
    // L1 and L3 did delete: the entry is not served from them.
    assert_eq!(
        header(&app.chat(det(&model, false)).await, "x-uat-cache"),
        "miss"
    );
    // Without L2, the same request is a plain success.
    let (_up, toml, model) = setup("").await;
    let toml = toml.replace("[cache.l2]\nurl", "[cache.l2]\n#url");
    let app = spawn_app(&toml).await;
    app.chat(det(&model, false)).await;
    let r = app
        .client
        .delete(app.at("/v1/cache"))
        .json(&json!({"pattern": "*"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"deleted": 1}));
}

/// A cache hit names the cache as its provider, with no upstream attempt;
/// streamed or not. Before, hits carried neither header.
#[tokio::test]
async fn a_hit_names_the_cache_as_provider_with_zero_attempts() {
    let (_up, toml, model) = setup("").await;
    let app = spawn_app(&toml).await;
    let r = app.chat(det(&model, false)).await;
    assert_eq!(header(&r, "x-uat-cache"), "miss");
    assert_eq!(header(&r, "x-uat-provider"), "p");
    assert_eq!(header(&r, "x-uat-attempts"), "1");
    for stream in [false, true] {
        let r = app.chat(det(&model, stream)).await;
        assert_eq!(header(&r, "x-uat-cache"), "hit-l1", "stream={stream}");
        assert_eq!(header(&r, "x-uat-provider"), "cache", "stream={stream}");
        assert_eq!(header(&r, "x-uat-attempts"), "0", "stream={stream}");
    }
}

/// Requests refused before the cache is consulted still say how the cache
/// took them: `bypass`. Before, these responses had no `x-uat-cache`.
#[tokio::test]
async fn requests_refused_before_the_cache_are_tagged_bypass() {
    let (_up, toml, model) = setup("").await;
    let app = spawn_app(&format!("[server]\nbody_limit = 2048\n{toml}")).await;
    let post = |body: Vec<u8>, encoding: Option<&'static str>| {
        let mut req = app
            .client
            .post(app.at("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(e) = encoding {
            req = req.header("content-encoding", e);
        }
        req.send()
    };
    let big = serde_json::to_vec(
        &json!({"model": model, "messages": [{"role": "user", "content": "x".repeat(4096)}]}),
    )
    .unwrap();
    let cases: [(&str, Vec<u8>, Option<&'static str>, u16); 6] = [
        ("oversized", big, None, 413),
        ("unknown encoding", b"{}".to_vec(), Some("br"), 415),
        ("malformed JSON", b"{\"model\":".to_vec(), None, 400),
        ("empty body", Vec::new(), None, 400),
        (
            "missing messages",
            serde_json::to_vec(&json!({"model": model})).unwrap(),
            None,
            400,
        ),
        (
            "unknown model",
            serde_json::to_vec(&det("no-such-model", false)).unwrap(),
            None,
            404,
        ),
    ];
    for (what, body, encoding, status) in cases {
        let r = post(body, encoding).await.unwrap();
        assert_eq!(r.status(), status, "{what}");
        assert_eq!(header(&r, "x-uat-cache"), "bypass", "{what}");
        assert_eq!(header(&r, "x-uat-attempts"), "0", "{what}");
    }
    // The embeddings route likewise (its refusals had no `x-uat-cache`).
    let embed = |body: Vec<u8>| {
        app.client
            .post(app.at("/v1/embeddings"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("malformed JSON", b"{\"model\":".to_vec(), 400),
        ("missing model", b"{\"input\":\"hi\"}".to_vec(), 400),
        (
            "unknown model",
            serde_json::to_vec(&json!({"model": "no-such-model", "input": "hi"})).unwrap(),
            404,
        ),
        ("oversized", vec![b' '; 4096], 413),
    ];
    for (what, body, status) in cases {
        let r = embed(body).await.unwrap();
        assert_eq!(r.status(), status, "embeddings, {what}");
        assert_eq!(header(&r, "x-uat-cache"), "bypass", "embeddings, {what}");
    }
}

/// A request shed at `server.max_in_flight` (503) is tagged `bypass` too.
/// Before, the load-shedding refusal had no `x-uat-cache`.
#[tokio::test]
async fn a_shed_request_is_tagged_bypass() {
    let (up, toml, model) = setup("").await;
    let app = spawn_app(&format!("[server]\nmax_in_flight = 1\n{toml}")).await;
    up.push(Behavior::Delay(Duration::from_secs(3)));
    let first = app.chat(det(&model, false));
    let second = async {
        assert!(eventually(Duration::from_secs(5), || up.calls() == 1).await);
        app.chat(det(&model, false)).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(second.status(), 503, "the only slot is taken");
    assert_eq!(header(&second, "x-uat-cache"), "bypass");
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-uat-cache"), "miss");
}

/// A non-streamed answer is stored as the upstream sent it, whatever fields
/// it has (legacy `function_call`, `annotations`, `audio`, fields unknown
/// to the gateway): the hit is the same bytes, and a streamed hit replays
/// those fields.
#[tokio::test]
async fn a_non_streamed_answer_is_stored_whole() {
    let (up, toml, model) = setup("").await;
    let body = json!({
        "id": "chatcmpl-x", "object": "chat.completion", "created": 5, "model": model,
        "choices": [{"index": 0, "message": {
            "role": "assistant", "content": null,
            "function_call": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            "annotations": [{"type": "url_citation", "url_citation": {"url": "https://e.x/", "title": "t", "start_index": 0, "end_index": 1}}],
            "audio": {"id": "a1", "data": "UklGRg==", "transcript": "Hi", "expires_at": 9},
            "vendor_extra": {"x": [1, 2]}
        }, "logprobs": null, "finish_reason": "function_call"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        "service_tier": "default"
    })
    .to_string();
    up.set_default(Behavior::Body(body.clone()));
    let app = spawn_app(&toml).await;
    let r = app.chat(det(&model, false)).await;
    assert_eq!(header(&r, "x-uat-cache"), "miss");
    let miss = r.text().await.unwrap();
    assert_eq!(miss, body, "passed on as it came");
    let r = app.chat(det(&model, false)).await;
    assert_eq!(header(&r, "x-uat-cache"), "hit-l1");
    assert_eq!(r.text().await.unwrap(), body, "stored as it came");
    let r = app.chat(det(&model, true)).await;
    assert_eq!(header(&r, "x-uat-cache"), "hit-l1");
    let events = sse_events(r).await;
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    let delta = &first["choices"][0]["delta"];
    assert_eq!(delta["function_call"]["name"], "get_weather");
    assert_eq!(delta["annotations"][0]["type"], "url_citation");
    assert_eq!(delta["audio"]["transcript"], "Hi");
    assert_eq!(up.calls(), 1);
}
