//! API keys (`[[auth.keys]]`): open without keys; with keys every `/v1`
//! route needs one (Bearer or `x-api-key`), probes stay open, admin routes
//! need an admin key, each key has its own rate limit, and each owner its own
//! cache namespace and its own memories.

use crate::common::*;
use reqwest::RequestBuilder;
use serde_json::{Value, json};
use uat_testkit::{FakeUpstream, Wire};

const USER_KEY: &str = "sk-test-user-0123456789";
const ADMIN_KEY: &str = "sk-test-admin-0123456789";
const SLOW_KEY: &str = "sk-test-slow-0123456789";
const OTHER_KEY: &str = "sk-test-other-0123456789";

/// A fake OpenAI upstream serving `<name>-model`, and its provider entry.
async fn upstream() -> (FakeUpstream, String, String) {
    let name = format!("auth{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let up = FakeUpstream::start(Wire::OpenAi, &name).await.unwrap();
    let toml = provider_toml("p", "openai", &up.base_url(), "");
    let model = format!("{name}-model");
    (up, toml, model)
}

async fn keyed_app() -> (TestApp, FakeUpstream, String) {
    let (up, providers, model) = upstream().await;
    let toml = format!(
        "{providers}{}{}",
        key_toml("user", USER_KEY, ""),
        key_toml("ops", ADMIN_KEY, "admin = true"),
    );
    (spawn_app(&toml).await, up, model)
}

async fn send(req: RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = req.send().await.expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// A chat request with `key` that must succeed: its `x-uat-cache`.
async fn cache_outcome(app: &TestApp, key: &str, body: &Value) -> String {
    let resp = app
        .client
        .post(app.at("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .expect("request failed");
    assert_eq!(resp.status(), 200);
    header(&resp, "x-uat-cache")
}

/// `alice`'s memories, as `key` lists them.
fn list_alice(app: &TestApp, key: &str) -> RequestBuilder {
    app.client
        .get(app.at("/v1/memories?user_id=alice"))
        .bearer_auth(key)
}

/// A keyword search of `alice`'s memories with `key`.
fn search_alice(app: &TestApp, key: &str, query: &str) -> RequestBuilder {
    app.client
        .post(app.at("/v1/memories/search"))
        .bearer_auth(key)
        .json(&json!({"user_id": "alice", "query": query, "mode": "keyword"}))
}

/// One request per subsystem: chat, embeddings, memory, vector.
fn api_requests(app: &TestApp, model: &str) -> Vec<(&'static str, RequestBuilder)> {
    let c = &app.client;
    vec![
        (
            "chat",
            c.post(app.at("/v1/chat/completions"))
                .json(&chat_body(model, false)),
        ),
        (
            "embeddings",
            c.post(app.at("/v1/embeddings"))
                .json(&json!({"model": "nope", "input": "hi"})),
        ),
        ("memories", c.get(app.at("/v1/memories?user_id=u1"))),
        ("collections", c.get(app.at("/v1/collections"))),
    ]
}

#[tokio::test]
async fn without_keys_every_route_is_open() {
    let (up, providers, model) = upstream().await;
    let app = spawn_app(&providers).await;
    assert!(app.state.auth.is_none(), "no layer without keys");
    for (what, req) in api_requests(&app, &model) {
        let (status, _, body) = send(req).await;
        assert_ne!(status, 401, "{what}: {body}");
    }
    let (status, _, _) = send(app.client.get(app.at("/v1/cache/stats"))).await;
    assert_eq!(status, 200, "admin routes are open too");
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn keys_are_required_on_every_v1_route() {
    let (app, up, model) = keyed_app().await;
    for (what, req) in api_requests(&app, &model) {
        let (status, headers, body) = send(req).await;
        assert_eq!(status, 401, "{what} without a key: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{what}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("didn't provide"), "{msg}");
        assert!(
            headers.contains_key("x-request-id"),
            "{what}: a rejection keeps its id"
        );
    }
    for (what, req) in api_requests(&app, &model) {
        let (status, _, body) = send(req.bearer_auth("sk-wrong")).await;
        assert_eq!(status, 401, "{what} with a wrong key: {body}");
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Incorrect"),
            "{body}"
        );
        assert!(
            !body.to_string().contains("sk-wrong"),
            "the secret is not echoed"
        );
    }
    assert_eq!(up.calls(), 0, "nothing reached the upstream");
    for (what, req) in api_requests(&app, &model) {
        let (status, _, body) = send(req.bearer_auth(USER_KEY)).await;
        assert_ne!(status, 401, "{what} with a key: {body}");
        assert!(
            status == 200 || what == "embeddings",
            "{what}: {status} {body}"
        );
    }
    for (what, req) in api_requests(&app, &model) {
        let (status, _, body) = send(req.header("x-api-key", USER_KEY)).await;
        assert_ne!(status, 401, "{what} with x-api-key: {body}");
        assert!(
            status == 200 || what == "embeddings",
            "{what}: {status} {body}"
        );
    }
    assert_eq!(up.calls(), 2);
    // Probes stay open.
    for probe in ["/health", "/ready", "/metrics"] {
        let resp = app.client.get(app.at(probe)).send().await.unwrap();
        assert_ne!(resp.status(), 401, "{probe}");
    }
    let metrics = app.metrics().await;
    for reason in ["missing", "invalid"] {
        assert!(
            metrics.contains(&format!("uat_auth_rejections_total{{reason=\"{reason}\"}}")),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn admin_routes_need_an_admin_key() {
    let (app, _up, _) = keyed_app().await;
    let c = &app.client;
    let admin_calls = || {
        vec![
            c.get(app.at("/v1/cache/stats")),
            c.head(app.at("/v1/cache/stats")),
            c.get(app.at("/v1/dashboard/summary")),
            c.head(app.at("/v1/dashboard/summary")),
            c.put(app.at("/v1/collections/authcol"))
                .json(&json!({"dimension": 3, "distance": "cosine"})),
            c.post(app.at("/v1/collections/authcol/snapshot")),
            c.delete(app.at("/v1/collections/authcol")),
            c.post(app.at("/v1/embeddings/models/nope/load")),
            c.post(app.at("/v1/embeddings/models/nope/unload")),
        ]
    };
    for req in admin_calls() {
        let head = req
            .try_clone()
            .and_then(|r| r.build().ok())
            .is_some_and(|r| r.method() == reqwest::Method::HEAD);
        let (status, _, body) = send(req.bearer_auth(USER_KEY)).await;
        assert_eq!(status, 403, "{body}");
        if !head {
            assert_eq!(body["error"]["code"], "insufficient_permissions");
            assert_eq!(body["error"]["type"], "invalid_request_error");
        }
    }
    // Invalidation acts on the caller's own namespace: any key may.
    let (status, _, body) = send(
        c.delete(app.at("/v1/cache"))
            .json(&json!({"pattern": "*"}))
            .bearer_auth(USER_KEY),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for req in admin_calls() {
        let (status, _, body) = send(req.bearer_auth(ADMIN_KEY)).await;
        assert!(status != 401 && status != 403, "{status} {body}");
    }
    // Reading a collection is not an admin route.
    let (status, _, body) = send(c.get(app.at("/v1/collections")).bearer_auth(USER_KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        app.metrics()
            .await
            .contains("uat_auth_rejections_total{reason=\"forbidden\"}")
    );
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_and_other_keys_do_not() {
    let toml = format!(
        "{}{}",
        key_toml("slow", SLOW_KEY, "requests_per_minute = 1"),
        key_toml("other", OTHER_KEY, "requests_per_minute = 600"),
    );
    let app = spawn_app(&toml).await;
    let list = |key: &str| app.client.get(app.at("/v1/collections")).bearer_auth(key);
    // OpenAI's x-ratelimit-* headers: the minute's figure, what the bucket
    // holds now, and how long until it is full again.
    let h = |headers: &reqwest::header::HeaderMap, name: &str| {
        headers[name].to_str().unwrap().to_owned()
    };
    let (status, headers, _) = send(list(SLOW_KEY)).await;
    assert_eq!(status, 200, "the burst of one");
    assert_eq!(h(&headers, "x-ratelimit-limit-requests"), "1");
    assert_eq!(h(&headers, "x-ratelimit-remaining-requests"), "0");
    let reset = h(&headers, "x-ratelimit-reset-requests");
    assert!(reset.starts_with("59.") || reset == "1m0s", "{reset}");
    let (status, headers, body) = send(list(SLOW_KEY)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    // OpenAI's type for the budget that ran out.
    assert_eq!(body["error"]["type"], "requests");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(h(&headers, "x-ratelimit-remaining-requests"), "0");
    assert!(headers.contains_key("x-ratelimit-reset-requests"));
    for i in 0..20 {
        let (status, headers, body) = send(list(OTHER_KEY)).await;
        assert_eq!(status, 200, "another key has its own bucket: {body}");
        assert_eq!(h(&headers, "x-ratelimit-limit-requests"), "600");
        // A burst of 100: refilled by one every 100 ms, so at most one more.
        let left: u64 = h(&headers, "x-ratelimit-remaining-requests")
            .parse()
            .unwrap();
        assert!(
            (99 - i..=100 - i).contains(&left),
            "request {i}: {left} left"
        );
    }
    assert!(
        app.metrics()
            .await
            .contains("uat_auth_rejections_total{reason=\"rate_limited\"}")
    );
}

/// `tokens_per_minute`: a key is admitted while it has tokens left, and
/// each answer takes what its usage says it spent (a stream's too, whose
/// usage the gateway asks for and keeps from a client that did not ask);
/// cache hits and routes that spend no tokens are free; past empty the key
/// gets a 429 until it has refilled, and another key is not held back.
#[tokio::test]
async fn a_key_over_its_tokens_per_minute_gets_429_once_its_answers_spent_them() {
    let (up, providers, model) = upstream().await;
    // 23 words: every answer spends 7 prompt + 23 completion = 30 tokens.
    up.set_reply(&["word"; 23].join(" "));
    let toml = format!(
        "{providers}{}{}[cache]\nmode = \"deterministic\"\n[cache.l3]\nenabled = false\n",
        key_toml("thrifty", SLOW_KEY, "tokens_per_minute = 100"),
        key_toml("other", OTHER_KEY, ""),
    );
    let app = spawn_app(&toml).await;
    let chat = |key: &str, body: Value| {
        app.client
            .post(app.at("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body)
    };
    let h = |headers: &reqwest::header::HeaderMap, name: &str| {
        headers[name].to_str().unwrap().to_owned()
    };
    let left = |headers: &reqwest::header::HeaderMap| -> u64 {
        h(headers, "x-ratelimit-remaining-tokens").parse().unwrap()
    };
    let msg = |text: &str| json!([{"role": "user", "content": text}]);

    let (status, headers, body) = send(chat(
        SLOW_KEY,
        json!({"model": model, "messages": msg("one")}),
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["total_tokens"], 30, "{body}");
    assert_eq!(h(&headers, "x-ratelimit-limit-tokens"), "100");
    // Refilled at a token per 600 ms meanwhile: at most one more.
    let after_one = left(&headers);
    assert!((70..=71).contains(&after_one), "{after_one} left");
    assert!(headers.contains_key("x-ratelimit-reset-tokens"));

    // A cacheable request spends once; its hit is free.
    let det = json!({"model": model, "temperature": 0, "messages": msg("two")});
    let (status, headers, _) = send(chat(SLOW_KEY, det.clone())).await;
    assert_eq!(status, 200);
    assert_eq!(h(&headers, "x-uat-cache"), "miss");
    let after_miss = left(&headers);
    assert!(
        after_miss + 30 <= after_one + 1,
        "{after_one} -> {after_miss}"
    );
    let (status, headers, _) = send(chat(SLOW_KEY, det)).await;
    assert_eq!(status, 200);
    assert_eq!(h(&headers, "x-uat-cache"), "hit-l1");
    assert!(left(&headers) >= after_miss, "a hit spends nothing");

    // A stream whose client did not ask for usage: the upstream is asked,
    // the usage chunk is not forwarded, and its tokens are taken.
    let resp = chat(
        SLOW_KEY,
        json!({"model": model, "stream": true, "messages": msg("three")}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    assert!(
        !text.contains("total_tokens"),
        "usage kept from the client: {text}"
    );
    assert_eq!(
        up.last_body().unwrap()["stream_options"]["include_usage"],
        true
    );
    // Embeddings spend their usage too (here one input: one token); this
    // request is admitted with about 10 tokens left.
    let (status, headers, body) = send(
        app.client
            .post(app.at("/v1/embeddings"))
            .bearer_auth(SLOW_KEY)
            .json(&json!({"model": model, "input": "four"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let after_stream = left(&headers);
    assert!(
        after_stream + 31 <= after_miss + 2,
        "{after_miss} -> {after_stream}"
    );
    assert!(after_stream > 0, "{after_stream}");

    // Admitted with a few tokens left, it spends 30: below empty.
    let (status, headers, _) = send(chat(
        SLOW_KEY,
        json!({"model": model, "messages": msg("five")}),
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(left(&headers), 0);
    let calls = up.calls();
    let (status, headers, body) = send(chat(
        SLOW_KEY,
        json!({"model": model, "messages": msg("six")}),
    ))
    .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "tokens");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("100 tokens per minute"), "{message}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(left(&headers), 0);
    assert_eq!(h(&headers, "x-uat-cache"), "bypass");
    assert_eq!(up.calls(), calls, "refused before the upstream");

    // Routes that spend no tokens, and other keys, go on.
    let (status, _, _) = send(app.client.get(app.at("/v1/models")).bearer_auth(SLOW_KEY)).await;
    assert_eq!(status, 200);
    let (status, headers, _) = send(chat(
        OTHER_KEY,
        json!({"model": model, "messages": msg("seven")}),
    ))
    .await;
    assert_eq!(status, 200);
    assert!(!headers.contains_key("x-ratelimit-limit-tokens"));
    assert!(
        app.metrics()
            .await
            .contains("uat_auth_rejections_total{reason=\"tokens\"}")
    );
}

/// `max_concurrent`: a key's requests in flight past it get a 429 at once
/// (one key's long streams or slow uploads could otherwise take every
/// in-flight slot of the replica); its place comes back when an answer (a
/// stream too) is complete, and another key is not held back.
#[tokio::test]
async fn a_key_at_its_limit_in_flight_gets_429_until_a_place_frees() {
    let (up, providers, model) = upstream().await;
    up.set_default(uat_testkit::Behavior::Delay(
        std::time::Duration::from_millis(600),
    ));
    let toml = format!(
        "{providers}{}{}",
        key_toml("narrow", SLOW_KEY, "max_concurrent = 2"),
        key_toml("other", OTHER_KEY, ""),
    );
    let app = std::sync::Arc::new(spawn_app(&toml).await);
    let chat = |key: &'static str, stream: bool| {
        let req = app
            .client
            .post(app.at("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": model, "stream": stream,
                "messages": [{"role": "user", "content": "hi"}]}));
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (status, text)
        }
    };
    let (a, b) = (
        tokio::spawn(chat(SLOW_KEY, false)),
        tokio::spawn(chat(SLOW_KEY, true)),
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, body) = chat(SLOW_KEY, false).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("limit of 2 requests in flight"), "{body}");
    assert!(body.contains("rate_limit_exceeded"), "{body}");
    assert!(body.contains(r#""type":"rate_limit_error""#), "{body}");
    assert_eq!(chat(OTHER_KEY, false).await.0, 200, "another key");
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(a.0, 200, "{}", a.1);
    assert_eq!(b.0, 200, "{}", b.1);
    assert!(b.1.contains("[DONE]"), "{}", b.1);
    assert_eq!(chat(SLOW_KEY, false).await.0, 200, "places came back");
    assert!(
        app.metrics()
            .await
            .contains("uat_auth_rejections_total{reason=\"concurrency\"}")
    );
}

/// A recorded stream (cacheable, the client not asking for usage) under a
/// token limit: the cache asks for the usage and keeps it from the client,
/// the key is charged it once, and the stream's replay is free.
#[tokio::test]
async fn a_recorded_stream_is_charged_once_and_its_replay_is_free() {
    let (up, providers, model) = upstream().await;
    up.set_reply(&["word"; 23].join(" ")); // 7 + 23 = 30 tokens
    let toml = format!(
        "{providers}{}[cache]\nmode = \"deterministic\"\n[cache.l3]\nenabled = false\n",
        key_toml("thrifty", SLOW_KEY, "tokens_per_minute = 100"),
    );
    let app = spawn_app(&toml).await;
    let stream = || {
        app.client
            .post(app.at("/v1/chat/completions"))
            .bearer_auth(SLOW_KEY)
            .json(&json!({"model": model, "stream": true, "temperature": 0,
                "messages": [{"role": "user", "content": "hi"}]}))
    };
    let left = |r: &reqwest::Response| -> u64 {
        r.headers()["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let resp = stream().send().await.unwrap();
    assert_eq!(resp.headers()["x-uat-cache"], "miss");
    let before = left(&resp); // written before the stream spends
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("[DONE]") && !text.contains("total_tokens"),
        "{text}"
    );
    let resp = stream().send().await.unwrap();
    assert_eq!(resp.headers()["x-uat-cache"], "hit-l1");
    let after = left(&resp);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("total_tokens"), "{text}");
    // Refilled at a token per 600 ms meanwhile: one or two more at most.
    assert!(
        (before - 30..=before - 28).contains(&after),
        "charged once, 30 tokens: {before} -> {after}"
    );
    let resp = stream().send().await.unwrap();
    assert!(left(&resp) >= after, "the replay was free");
}

/// `models`: a key limited to some models (globs, as the client names
/// them) calls and lists only those; another is a 403 before anything goes
/// upstream or to the cache, on chat and embeddings alike.
#[tokio::test]
async fn a_key_with_models_calls_and_lists_only_those() {
    let (up, providers, model) = upstream().await;
    let prefix = model.trim_end_matches("-model").to_owned();
    let toml = format!(
        "{providers}{}{}",
        key_toml("narrow", SLOW_KEY, &format!("models = [\"{prefix}-*\"]")),
        key_toml("elsewhere", OTHER_KEY, "models = [\"gpt-4o\"]"),
    );
    let app = spawn_app(&toml).await;
    let c = &app.client;
    let chat = |key: &str| {
        c.post(app.at("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&chat_body(&model, false))
    };
    let embed = |key: &str| {
        c.post(app.at("/v1/embeddings"))
            .bearer_auth(key)
            .json(&json!({"model": model, "input": "hi"}))
    };
    let (status, _, body) = send(chat(SLOW_KEY)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = send(embed(SLOW_KEY)).await;
    assert_eq!(status, 200, "{body}");
    let (_, _, body) = send(c.get(app.at("/v1/models")).bearer_auth(SLOW_KEY)).await;
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        !ids.is_empty() && ids.iter().all(|id| id.starts_with(&prefix)),
        "{ids:?}"
    );
    assert!(ids.contains(&model.as_str()), "{ids:?}");
    // A `provider/model` name is another name: not matched by the glob.
    let (status, _, body) = send(
        c.post(app.at("/v1/chat/completions"))
            .bearer_auth(SLOW_KEY)
            .json(&chat_body(&format!("p/{model}"), false)),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // Nor may it name another model for an upstream gateway to route to
    // (OpenRouter's `models`, LiteLLM's `fallbacks`).
    for extra in [
        json!({"models": ["gpt-4o"]}),
        json!({"fallbacks": [{"x": ["gpt-4o"]}]}),
    ] {
        let mut body = chat_body(&model, false);
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, _, answer) = send(
            c.post(app.at("/v1/chat/completions"))
                .bearer_auth(SLOW_KEY)
                .json(&body),
        )
        .await;
        assert_eq!(status, 403, "{extra}: {answer}");
    }
    let mut body = chat_body(&model, false);
    body["models"] = json!([model]);
    let (status, _, answer) = send(
        c.post(app.at("/v1/chat/completions"))
            .bearer_auth(SLOW_KEY)
            .json(&body),
    )
    .await;
    assert_eq!(status, 200, "an allowed model in `models`: {answer}");

    let calls = up.calls();
    for (what, req) in [("chat", chat(OTHER_KEY)), ("embeddings", embed(OTHER_KEY))] {
        let (status, headers, body) = send(req).await;
        assert_eq!(status, 403, "{what}: {body}");
        assert_eq!(body["error"]["code"], "insufficient_permissions");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("`elsewhere`") && message.contains(&model),
            "{message}"
        );
        assert_eq!(headers["x-uat-cache"], "bypass");
    }
    assert_eq!(up.calls(), calls, "refused before the upstream");
    let (_, _, body) = send(c.get(app.at("/v1/models")).bearer_auth(OTHER_KEY)).await;
    assert!(
        !body["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == model.as_str()),
        "{body}"
    );
    let (status, _, _) = send(
        c.get(app.at(&format!("/v1/models/{model}")))
            .bearer_auth(OTHER_KEY),
    )
    .await;
    assert_eq!(status, 404, "a model the key may not call is not listed");
    let (status, _, _) = send(
        c.get(app.at(&format!("/v1/models/{model}")))
            .bearer_auth(SLOW_KEY),
    )
    .await;
    assert_eq!(status, 200);
}

/// `collections`: a key limited to some collections (globs) uses and lists
/// only those; any other is a 403 on every collection route, before its
/// body is read. Keys without the list see every collection.
#[tokio::test]
async fn a_key_with_collections_uses_and_lists_only_those() {
    const LIMITED_KEY: &str = "sk-test-limited-0123456789";
    let toml = format!(
        "{}{}{}",
        key_toml("user", USER_KEY, ""),
        key_toml("ops", ADMIN_KEY, "admin = true"),
        key_toml(
            "limited",
            LIMITED_KEY,
            "collections = [\"docs-*\", \"faq\"]"
        ),
    );
    let app = spawn_app(&toml).await;
    let c = &app.client;
    for name in ["docs-en", "docs-de", "faq", "secret"] {
        let (status, _, body) = send(
            c.put(app.at(&format!("/v1/collections/{name}")))
                .bearer_auth(ADMIN_KEY)
                .json(&json!({"dimension": 2, "metric": "cosine"})),
        )
        .await;
        assert_eq!(status, 201, "{name}: {body}");
    }
    let names = |body: &Value| -> Vec<String> {
        let mut v: Vec<String> = body["collections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let (status, _, body) = send(c.get(app.at("/v1/collections")).bearer_auth(LIMITED_KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(names(&body), ["docs-de", "docs-en", "faq"]);
    let (_, _, body) = send(c.get(app.at("/v1/collections")).bearer_auth(USER_KEY)).await;
    assert_eq!(names(&body), ["docs-de", "docs-en", "faq", "secret"]);

    let point = json!({"points": [{"id": 1, "vector": [1.0, 0.0]}]});
    let search = json!({"vector": [1.0, 0.0], "top_k": 1});
    let (status, _, body) = send(
        c.put(app.at("/v1/collections/docs-en/points"))
            .bearer_auth(LIMITED_KEY)
            .json(&point),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = send(
        c.post(app.at("/v1/collections/faq/points/search"))
            .bearer_auth(LIMITED_KEY)
            .json(&search),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let refused = [
        c.get(app.at("/v1/collections/secret")),
        c.put(app.at("/v1/collections/secret/points")).json(&point),
        c.post(app.at("/v1/collections/secret/points/search"))
            .json(&search),
        c.post(app.at("/v1/collections/secret/points/search/batch"))
            .json(&json!({"searches": [search]})),
        c.get(app.at("/v1/collections/secret/points/1")),
        c.post(app.at("/v1/collections/secret/points/delete"))
            .json(&json!({"ids": [1]})),
        // Not even a body that would be refused anyway is read.
        c.put(app.at("/v1/collections/secret/points"))
            .header("content-type", "application/json")
            .body("not json"),
        c.put(app.at("/v1/collections/docs/points")).json(&point),
    ];
    for (i, req) in refused.into_iter().enumerate() {
        let (status, _, body) = send(req.bearer_auth(LIMITED_KEY)).await;
        assert_eq!(status, 403, "request {i}: {body}");
        assert_eq!(body["error"]["code"], "insufficient_permissions", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("`limited`"), "{message}");
    }
    let (status, _, body) = send(
        c.get(app.at("/v1/collections/secret"))
            .bearer_auth(USER_KEY),
    )
    .await;
    assert_eq!(status, 200, "a key without the list: {body}");
}

#[tokio::test]
async fn each_owner_has_its_own_cache_namespace() {
    let (up, providers, model) = upstream().await;
    let toml = format!(
        "{providers}[cache]\nmode = \"deterministic\"\n{}{}{}",
        key_toml("a", USER_KEY, "owner = \"tenant-a\""),
        key_toml("a2", ADMIN_KEY, "owner = \"tenant-a\""),
        key_toml("b", OTHER_KEY, "owner = \"tenant-b\""),
    );
    let app = spawn_app(&toml).await;
    let det = json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}], "temperature": 0});
    let chat = |key: &'static str| cache_outcome(&app, key, &det);
    assert_eq!(chat(USER_KEY).await, "miss");
    assert_eq!(
        chat(OTHER_KEY).await,
        "miss",
        "another owner never sees tenant-a's entry"
    );
    assert_eq!(up.calls(), 2);
    assert_eq!(
        chat(ADMIN_KEY).await,
        "hit-l1",
        "same owner, another key: a hit"
    );
    assert_eq!(chat(OTHER_KEY).await, "hit-l1");
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn each_owner_has_its_own_memories() {
    let toml = format!(
        "{}{}{}",
        key_toml("a", USER_KEY, "owner = \"tenant-a\""),
        key_toml("a2", ADMIN_KEY, "owner = \"tenant-a\""),
        key_toml("b", OTHER_KEY, "owner = \"tenant-b\""),
    );
    let app = spawn_app(&toml).await;
    let c = &app.client;
    let (status, _, m) = send(
        c.post(app.at("/v1/memories"))
            .bearer_auth(USER_KEY)
            .json(&json!({"user_id": "alice", "content": "Alice's locker code is 4711"})),
    )
    .await;
    assert_eq!(status, 201, "{m}");
    assert_eq!(
        m["user_id"], "alice",
        "the client's user_id, not the stored one"
    );
    let id = m["id"].as_str().unwrap().to_string();
    let list = |key: &'static str| list_alice(&app, key);
    let search = |key: &'static str| search_alice(&app, key, "locker code");
    // Another owner's alice sees nothing of it, on any route.
    let (_, _, l) = send(list(OTHER_KEY)).await;
    assert_eq!(l["memories"], json!([]), "{l}");
    let (_, _, s) = send(search(OTHER_KEY)).await;
    assert_eq!(s["results"], json!([]), "{s}");
    let one = format!("/v1/memories/{id}?user_id=alice");
    let history = format!("/v1/memories/{id}/history?user_id=alice");
    for req in [
        c.get(app.at(&one)),
        c.get(app.at(&history)),
        c.patch(app.at(&one)).json(&json!({"content": "hijacked"})),
        c.delete(app.at(&one)),
    ] {
        let (status, _, body) = send(req.bearer_auth(OTHER_KEY)).await;
        assert_eq!(status, 404, "{body}");
    }
    let (_, _, d) = send(
        c.delete(app.at("/v1/memories?user_id=alice"))
            .bearer_auth(OTHER_KEY),
    )
    .await;
    assert_eq!(d["deleted"], 0);
    // The owner's other key sees it, under the client's user_id.
    let (_, _, l) = send(list(ADMIN_KEY)).await;
    assert_eq!(l["memories"][0]["id"], json!(id), "{l}");
    assert_eq!(l["memories"][0]["user_id"], "alice");
    assert_eq!(l["memories"][0]["content"], "Alice's locker code is 4711");
    let (_, _, s) = send(search(ADMIN_KEY)).await;
    assert_eq!(s["results"][0]["id"], json!(id), "{s}");
    assert_eq!(s["results"][0]["user_id"], "alice");
    let (_, _, h) = send(c.get(app.at(&history)).bearer_auth(USER_KEY)).await;
    assert_eq!(h["history"][0]["new_value"]["user_id"], "alice", "{h}");
}

/// `auth.keyless_owner`: a deployment that ran without keys and then
/// configures them gives one owner what was stored before: its keys see the
/// memories and the cached answers of the keyless days (on the same data
/// directory, after a restart), and keep writing where those live; every
/// other owner sees none of it.
#[tokio::test]
async fn the_keyless_owner_inherits_what_was_stored_without_keys() {
    let (up, providers, model) = upstream().await;
    let data = tempfile::tempdir().unwrap();
    let cache = "[cache]\nmode = \"deterministic\"\n";
    let det = json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}], "temperature": 0});
    let before = spawn_config(
        test_config(&format!("{providers}{cache}"), data.path()),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let (status, _, m) =
        send(before.client.post(before.at("/v1/memories")).json(
            &json!({"user_id": "alice", "content": "The staging password rotates on Fridays"}),
        ))
        .await;
    assert_eq!(status, 201, "{m}");
    let old_id = m["id"].as_str().unwrap().to_string();
    let resp = before.chat(det.clone()).await;
    assert_eq!(header(&resp, "x-uat-cache"), "miss");
    assert_eq!(up.calls(), 1);
    // What `uat serve` does as it stops: the queued L3 write lands.
    before
        .state
        .cache
        .tiered()
        .unwrap()
        .flush(std::time::Duration::from_secs(5))
        .await;
    assert!(before.stop(std::time::Duration::from_secs(10)).await);

    let toml = format!(
        "{providers}{cache}[auth]\nkeyless_owner = \"app\"\n{}{}",
        key_toml("app-key", USER_KEY, "owner = \"app\""),
        key_toml("b", OTHER_KEY, "owner = \"tenant-b\""),
    );
    let app = spawn_config(
        test_config(&toml, data.path()),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let c = &app.client;
    let list = |key: &'static str| list_alice(&app, key);
    let search = |key: &'static str| search_alice(&app, key, "staging password");
    let (_, _, l) = send(list(USER_KEY)).await;
    assert_eq!(l["memories"][0]["id"], json!(old_id), "{l}");
    assert_eq!(l["memories"][0]["user_id"], "alice");
    let (_, _, s) = send(search(USER_KEY)).await;
    assert_eq!(s["results"][0]["id"], json!(old_id), "{s}");
    // What the owner writes now sits beside it.
    let (status, _, m) = send(
        c.post(app.at("/v1/memories"))
            .bearer_auth(USER_KEY)
            .json(&json!({"user_id": "alice", "content": "Alice moved to the platform team"})),
    )
    .await;
    assert_eq!(status, 201, "{m}");
    let (_, _, l) = send(list(USER_KEY)).await;
    assert_eq!(l["memories"].as_array().unwrap().len(), 2, "{l}");
    // Another owner's alice sees none of it.
    let (_, _, l) = send(list(OTHER_KEY)).await;
    assert_eq!(l["memories"], json!([]), "{l}");
    let (_, _, s) = send(search(OTHER_KEY)).await;
    assert_eq!(s["results"], json!([]), "{s}");
    let (status, _, _) = send(
        c.get(app.at(&format!("/v1/memories/{old_id}?user_id=alice")))
            .bearer_auth(OTHER_KEY),
    )
    .await;
    assert_eq!(status, 404);
    // The keyless days' cached answer (in L3, across the restart) is the
    // owner's; another owner misses.
    let chat = |key: &'static str| cache_outcome(&app, key, &det);
    assert_eq!(chat(USER_KEY).await, "hit-l3");
    assert_eq!(up.calls(), 1);
    assert_eq!(chat(OTHER_KEY).await, "miss");
    assert_eq!(up.calls(), 2);
}

/// `auth.protect_metrics`: `/metrics` needs an admin key; the other probes
/// stay open. Without it (every other test here) `/metrics` is open.
#[tokio::test]
async fn protected_metrics_need_an_admin_key() {
    let toml = format!(
        "[auth]\nprotect_metrics = true\n{}{}",
        key_toml("user", USER_KEY, ""),
        key_toml("ops", ADMIN_KEY, "admin = true\nrequests_per_minute = 1"),
    );
    let app = spawn_app(&toml).await;
    let get = |key: Option<&'static str>| {
        let req = app.client.get(app.at("/metrics"));
        match key {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    };
    // Process-wide (other tests refuse keys too): compared before and after.
    let forbidden = |text: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("uat_auth_rejections_total{reason=\"forbidden\"} "))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    };
    let scrape = || async {
        let resp = get(Some(ADMIN_KEY)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "an admin key scrapes");
        resp.text().await.unwrap()
    };
    let before = forbidden(&scrape().await);
    let (status, _, body) = send(get(None)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let (status, _, body) = send(get(Some(USER_KEY))).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_permissions");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("protect_metrics"),
        "{body}"
    );
    // Scrapes take none of the admin key's `requests_per_minute` (1).
    let after = forbidden(&scrape().await);
    assert!(
        after > before,
        "the refusal is counted: {before} -> {after}"
    );
    scrape().await;
    let (status, _, _) = send(app.client.get(app.at("/v1/models")).bearer_auth(ADMIN_KEY)).await;
    assert_eq!(status, 200, "the key's one request a minute is still there");
    for probe in ["/health", "/ready"] {
        let resp = app.client.get(app.at(probe)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{probe} stays open");
    }
}

/// Every response of the cached routes says how the cache took it, the
/// key checks' refusals too: `x-uat-cache: bypass`. Before, a 401 or a 429
/// on chat or embeddings had no `x-uat-cache`; other routes get none.
#[tokio::test]
async fn refusals_on_cached_routes_are_tagged_bypass() {
    let (_up, providers, model) = upstream().await;
    let toml = format!(
        "{providers}[cache]\nmode = \"always\"\n{}",
        key_toml("slow", SLOW_KEY, "requests_per_minute = 1"),
    );
    let app = spawn_app(&toml).await;
    let chat = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let emb = json!({"model": model, "input": "hi"});
    for (path, body) in [("/v1/chat/completions", &chat), ("/v1/embeddings", &emb)] {
        let (status, headers, _) = send(app.client.post(app.at(path)).json(body)).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(headers["x-uat-cache"], "bypass", "{path}");
    }
    let (status, headers, _) = send(app.client.get(app.at("/v1/collections"))).await;
    assert_eq!(status, 401);
    assert!(!headers.contains_key("x-uat-cache"), "not a cached route");
    let (status, _, body) = send(
        app.client
            .post(app.at("/v1/chat/completions"))
            .bearer_auth(SLOW_KEY)
            .json(&chat),
    )
    .await;
    assert_eq!(status, 200, "the burst of one: {body}");
    let (status, headers, _) = send(
        app.client
            .post(app.at("/v1/embeddings"))
            .bearer_auth(SLOW_KEY)
            .json(&emb),
    )
    .await;
    assert_eq!(status, 429);
    assert_eq!(headers["x-uat-cache"], "bypass");
}
