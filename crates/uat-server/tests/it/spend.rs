//! Cost tracking and key budgets (`[pricing]`, `max_budget`): answers from
//! the fake upstream are priced by their usage (7 prompt tokens, one
//! completion token per word of the reply), charged to their key, shown in
//! `x-uat-cost`, `GET /v1/spend` and `uat_spend_usd_total`; a key whose
//! spend reaches its budget gets 429 `insufficient_quota`.

use crate::common::*;
use serde_json::{Value, json};
use std::time::Duration;
use uat_testkit::{FakeUpstream, Wire};

const TIGHT_KEY: &str = "sk-spend-tight-0123456789";
const ROOMY_KEY: &str = "sk-spend-roomy-0123456789";
const ADMIN_KEY: &str = "sk-spend-admin-0123456789";

/// USD per million tokens: 1,000 in, 2,000 out, so a token costs 0.001 and
/// 0.002 USD (1,000,000 and 2,000,000 nano-USD).
const PRICES: &str = "input_per_million = 1000.0\noutput_per_million = 2000.0\n";

/// The reply: 3 words, 3 completion tokens. With the 7 prompt tokens an
/// answer costs 7 × 0.001 + 3 × 0.002 = 0.013 USD.
const REPLY: &str = "one two three";
const ANSWER_NANOS: u64 = 13_000_000;

/// A fake OpenAI upstream (provider `p`) serving a model of its own, the
/// TOML of the provider and the model's price, and the model's name.
async fn priced_upstream() -> (FakeUpstream, String, String) {
    let name = unique("spend");
    let up = FakeUpstream::start(Wire::OpenAi, &name).await.unwrap();
    up.set_reply(REPLY);
    let model = format!("{name}-model");
    let toml = format!(
        "{}[pricing.\"{model}\"]\n{PRICES}",
        provider_toml("p", "openai", &up.base_url(), "")
    );
    (up, toml, model)
}

/// Keys: `tight` (a budget of two answers' worth minus a little, reset
/// daily), `roomy` (no budget) and `ops` (admin).
fn keys() -> String {
    format!(
        "{}{}{}",
        key_toml(
            "tight",
            TIGHT_KEY,
            "max_budget = 0.02\nbudget_period = \"1d\""
        ),
        key_toml("roomy", ROOMY_KEY, ""),
        key_toml("ops", ADMIN_KEY, "admin = true"),
    )
}

async fn chat_as(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.at("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn spend_as(app: &TestApp, key: &str) -> (u16, Value) {
    let resp = app
        .client
        .get(app.at("/v1/spend"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// The ledger's spend of `key` in nano-USD.
fn spent(app: &TestApp, key: &str) -> u64 {
    app.state
        .spend
        .as_ref()
        .expect("spend tracking is on")
        .ledger()
        .account(key)
        .expect("an account")
        .spent()
}

#[tokio::test]
async fn a_key_is_refused_once_its_answers_cost_its_budget() {
    let (up, toml, model) = priced_upstream().await;
    let app = spawn_app(&format!("{toml}{}", keys())).await;
    let body = chat_body(&model, false);
    // 0.013 then 0.026: admitted while under 0.02.
    for i in 0..2 {
        let resp = chat_as(&app, TIGHT_KEY, &body).await;
        assert_eq!(resp.status(), 200, "answer {i}");
    }
    assert_eq!(spent(&app, "tight"), 2 * ANSWER_NANOS);
    let resp = chat_as(&app, TIGHT_KEY, &body).await;
    assert_eq!(resp.status(), 429);
    // As OpenAI's: no Retry-After, and the SDKs told not to retry it.
    assert_eq!(header(&resp, "retry-after"), "");
    assert_eq!(header(&resp, "x-should-retry"), "false");
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "insufficient_quota", "{err}");
    assert_eq!(err["error"]["code"], "insufficient_quota", "{err}");
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("`tight`")
            && msg.contains("spent $0.026 ")
            && msg.contains("budget of $0.02 ")
            && msg.contains("resets in"),
        "{msg}"
    );
    assert_eq!(up.calls(), 2, "the refusal never reached the upstream");
    // Only the model routes are refused.
    let models = app
        .client
        .get(app.at("/v1/models"))
        .bearer_auth(TIGHT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    let emb = app
        .client
        .post(app.at("/v1/embeddings"))
        .bearer_auth(TIGHT_KEY)
        .json(&json!({"model": model, "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(emb.status(), 429, "embeddings call a model too");
    // Another key is unaffected.
    for _ in 0..3 {
        assert_eq!(chat_as(&app, ROOMY_KEY, &body).await.status(), 200);
    }
    assert_eq!(spent(&app, "roomy"), 3 * ANSWER_NANOS);
    assert!(
        app.metrics()
            .await
            .contains("uat_auth_rejections_total{reason=\"budget\"}"),
        "the refusal is counted"
    );
}

#[tokio::test]
async fn x_uat_cost_is_the_price_times_the_usage() {
    let (_up, toml, model) = priced_upstream().await;
    let app = spawn_app(&format!("{toml}{}", keys())).await;
    let resp = chat_as(&app, ROOMY_KEY, &chat_body(&model, false)).await;
    assert_eq!(resp.status(), 200);
    let cost = header(&resp, "x-uat-cost");
    let body: Value = resp.json().await.unwrap();
    let usage = &body["usage"];
    let nanos = usage["prompt_tokens"].as_u64().unwrap() * 1_000_000
        + usage["completion_tokens"].as_u64().unwrap() * 2_000_000;
    assert_eq!(nanos, ANSWER_NANOS, "{usage}");
    assert_eq!(cost, "0.013");
    // Priced through an alias when only the alias has a price.
    let name = unique("alias");
    let up = FakeUpstream::start(Wire::OpenAi, &name).await.unwrap();
    up.set_reply(REPLY);
    let toml = format!(
        "{}[[models]]\nname = \"cheap\"\ntargets = [\"q/{name}-model\"]\n[pricing.cheap]\ninput_per_million = 0.5\n",
        provider_toml("q", "openai", &up.base_url(), "")
    );
    let app = spawn_app(&toml).await;
    let resp = app.chat(chat_body("cheap", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-uat-cost"),
        "0.0000035",
        "7 tokens at $0.50/M"
    );
    // A model without a price: no header, counted unpriced.
    let resp = app.chat(chat_body(&format!("{name}-model"), false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-cost"), "");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(&format!(
            "uat_spend_unpriced_total{{model=\"{name}-model\"}} 1"
        )),
        "{metrics}"
    );
    // Without keys the spend is counted under the key "".
    assert!(
        metrics.contains("uat_spend_usd_total{key=\"\",model=\"cheap\"} 0.0000035"),
        "{metrics}"
    );
}

/// The app in front of `toml`'s upstream with the keys and the cache on,
/// and a chat of `model` the cache keeps (temperature 0).
async fn cached(toml: &str, model: &str) -> (TestApp, Value) {
    let app = spawn_app(&format!(
        "{toml}[cache]\nmode = \"deterministic\"\n{}",
        keys()
    ))
    .await;
    let body =
        json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "temperature": 0});
    (app, body)
}

#[tokio::test]
async fn a_cache_hit_costs_nothing() {
    let (up, toml, model) = priced_upstream().await;
    let (app, body) = cached(&toml, &model).await;
    let first = chat_as(&app, ROOMY_KEY, &body).await;
    assert_eq!(header(&first, "x-uat-cache"), "miss");
    assert_eq!(header(&first, "x-uat-cost"), "0.013");
    let hit = chat_as(&app, ROOMY_KEY, &body).await;
    assert!(
        header(&hit, "x-uat-cache").starts_with("hit"),
        "{:?}",
        hit.headers()
    );
    assert_eq!(header(&hit, "x-uat-cost"), "", "a hit cost nothing");
    assert_eq!(up.calls(), 1);
    assert_eq!(spent(&app, "roomy"), ANSWER_NANOS);
}

#[tokio::test]
async fn a_stream_is_charged_when_it_ends() {
    let (_up, toml, model) = priced_upstream().await;
    let app = spawn_app(&format!("{toml}{}", keys())).await;
    let resp = chat_as(&app, ROOMY_KEY, &chat_body(&model, true)).await;
    assert_eq!(resp.status(), 200);
    let events = sse_events(resp).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(stream_text(&events).split_whitespace().count(), 3);
    assert!(
        !events.iter().any(|e| e.contains("\"usage\":{")),
        "the usage the gateway asked for is not the client's: {events:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || spent(&app, "roomy")
            == ANSWER_NANOS)
        .await,
        "spent {}",
        spent(&app, "roomy")
    );
}

#[tokio::test]
async fn the_spend_survives_a_restart() {
    let (_up, toml, model) = priced_upstream().await;
    let toml = format!("{toml}{}", keys());
    let data = tempfile::tempdir().unwrap();
    let before = spawn_config(
        test_config(&toml, data.path()),
        tempfile::tempdir().unwrap(),
    )
    .await;
    assert_eq!(
        chat_as(&before, TIGHT_KEY, &chat_body(&model, false))
            .await
            .status(),
        200
    );
    assert_eq!(
        chat_as(&before, TIGHT_KEY, &chat_body(&model, false))
            .await
            .status(),
        200
    );
    // What `uat serve` does as it stops.
    before
        .state
        .spend
        .as_ref()
        .unwrap()
        .close(Duration::from_secs(5))
        .await;
    assert!(before.stop(Duration::from_secs(10)).await);
    let after = spawn_config(
        test_config(&toml, data.path()),
        tempfile::tempdir().unwrap(),
    )
    .await;
    assert_eq!(spent(&after, "tight"), 2 * ANSWER_NANOS);
    let resp = chat_as(&after, TIGHT_KEY, &chat_body(&model, false)).await;
    assert_eq!(
        resp.status(),
        429,
        "still over its budget after the restart"
    );
}

#[tokio::test]
async fn get_spend_shows_a_key_its_own_and_an_admin_every_key() {
    let (_up, toml, model) = priced_upstream().await;
    let app = spawn_app(&format!("{toml}{}", keys())).await;
    assert_eq!(
        chat_as(&app, TIGHT_KEY, &chat_body(&model, false))
            .await
            .status(),
        200
    );
    let (status, own) = spend_as(&app, TIGHT_KEY).await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(own["key"], "tight");
    assert_eq!(own["spend"], json!(0.013));
    assert_eq!(own["max_budget"], json!(0.02));
    assert_eq!(own["period"], "1day");
    let (start, end) = (
        own["period_start"].as_i64().unwrap(),
        own["period_end"].as_i64().unwrap(),
    );
    assert_eq!(start % 86_400, 0, "days from the epoch");
    assert_eq!(end - start, 86_400);
    let (status, roomy) = spend_as(&app, ROOMY_KEY).await;
    assert_eq!(status, 200);
    assert_eq!(
        roomy,
        json!({"key": "roomy", "spend": 0.0, "max_budget": null, "period": null,
               "period_start": null, "period_end": null})
    );
    let (status, all) = spend_as(&app, ADMIN_KEY).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["object"], "list");
    let names: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tight", "roomy", "ops"]);
    assert_eq!(all["data"][0]["spend"], json!(0.013));
    // The spend is in the metrics, by key and the model asked for.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(&format!(
            "uat_spend_usd_total{{key=\"tight\",model=\"{model}\"}} 0.013"
        )),
        "{metrics}"
    );
    // No key: 401, as every /v1 route.
    let resp = app.client.get(app.at("/v1/spend")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn get_spend_without_keys_says_so() {
    let (_up, toml, _model) = priced_upstream().await;
    let app = spawn_app(&toml).await;
    let resp = app.client.get(app.at("/v1/spend")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[[auth.keys]]"),
        "{err}"
    );
}

/// `POST /v1/responses` answers are charged too, plain (with `x-uat-cost`)
/// and streamed (when the stream ends).
#[tokio::test]
async fn responses_are_charged_plain_and_streamed() {
    let (_up, toml, model) = priced_upstream().await;
    let app = spawn_app(&format!("{toml}{}", keys())).await;
    let post = |stream: bool| {
        app.client
            .post(app.at("/v1/responses"))
            .bearer_auth(ROOMY_KEY)
            .json(&json!({"model": model, "input": "Say hello", "stream": stream}))
            .send()
    };
    let resp = post(false).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-cost"), "0.013");
    assert_eq!(spent(&app, "roomy"), ANSWER_NANOS);
    let resp = post(true).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("response.completed"), "{text}");
    assert!(
        eventually(Duration::from_secs(5), || spent(&app, "roomy")
            == 2 * ANSWER_NANOS)
        .await,
        "spent {}",
        spent(&app, "roomy")
    );
}

/// A stream cut short reports no usage; the upstream bills it all the
/// same, so it is priced by the token limit's estimate and counted in
/// `uat_spend_estimated_total`.
#[tokio::test]
async fn a_stream_without_usage_is_charged_an_estimate() {
    let (up, toml, model) = priced_upstream().await;
    up.set_reply(&["word"; 40].join(" "));
    up.push(uat_testkit::Behavior::StopHalfway);
    let app = spawn_app(&format!("{toml}{}", keys())).await;
    let resp = chat_as(&app, ROOMY_KEY, &chat_body(&model, true)).await;
    assert_eq!(resp.status(), 200);
    let events = sse_events(resp).await;
    assert!(
        events
            .last()
            .is_some_and(|e| e.contains("upstream_interrupted")),
        "{events:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || spent(&app, "roomy") > 0).await,
        "an interrupted stream was charged nothing"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(&format!("uat_spend_estimated_total{{model=\"{model}\"}} 1")),
        "{metrics}"
    );
}

/// A key with a budget may not call a model without a price (its answers
/// would cost the budget nothing): 403 `model_not_priced` before any
/// upstream call; a key without a budget may.
#[tokio::test]
async fn a_key_with_a_budget_may_not_call_an_unpriced_model() {
    let (up, toml, _model) = priced_upstream().await;
    let app = spawn_app(&format!("{toml}{}", keys())).await;
    let unpriced = chat_body("p/some-unpriced-snapshot", false);
    let resp = chat_as(&app, TIGHT_KEY, &unpriced).await;
    assert_eq!(resp.status(), 403);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "model_not_priced", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("p/some-unpriced-snapshot")),
        "{err}"
    );
    assert_eq!(up.calls(), 0);
    let resp = chat_as(&app, ROOMY_KEY, &unpriced).await;
    assert_ne!(resp.status(), 403, "no budget, no price needed");
    assert_eq!(up.calls(), 1);
}

/// What the fake Anthropic upstream reports besides its 7 fresh prompt
/// tokens: 20 written to the prompt cache (8 of them to the 1-hour cache),
/// 100 read from it.
fn anthropic_cache_usage() -> Value {
    json!({
        "cache_creation_input_tokens": 20,
        "cache_read_input_tokens": 100,
        "cache_creation": {"ephemeral_5m_input_tokens": 12, "ephemeral_1h_input_tokens": 8},
    })
}

/// An answer with [`anthropic_cache_usage`] and the 3-word reply at
/// [`PRICES`] with reads at $100/M and no cache-write price: 7 fresh ×
/// 0.001 + 12 five-minute writes × 0.00125 (1.25 × input) + 8 one-hour
/// writes × 0.002 (2 × input) + 100 reads × 0.0001 + 3 out × 0.002 USD.
const CACHED_ANSWER_NANOS: u64 = 7_000_000 + 15_000_000 + 16_000_000 + 10_000_000 + 6_000_000;

/// A fake Anthropic upstream reporting [`anthropic_cache_usage`], the
/// TOML of its provider and its model's price, and the model's name.
async fn anthropic_cache_upstream() -> (FakeUpstream, String, String) {
    let name = unique("claude");
    let up = FakeUpstream::start(Wire::Anthropic, &name).await.unwrap();
    up.set_reply(REPLY);
    up.set_anthropic_usage(anthropic_cache_usage());
    let model = format!("{name}-model");
    let toml = format!(
        "{}[pricing.\"{model}\"]\n{PRICES}cached_input_per_million = 100.0\n",
        provider_toml("c", "anthropic", &up.base_url(), "")
    );
    (up, toml, model)
}

/// Anthropic's prompt-cache writes cost 1.25 × the input price (2 × for
/// the 1-hour cache) when no `cache_write_per_million` is set; the answer
/// reports them as LiteLLM does, and a cache hit replays them untouched.
#[tokio::test]
async fn anthropic_cache_writes_are_priced_above_the_input() {
    let (_up, toml, model) = anthropic_cache_upstream().await;
    let (app, body) = cached(&toml, &model).await;
    let resp = chat_as(&app, ROOMY_KEY, &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-cache"), "miss");
    assert_eq!(CACHED_ANSWER_NANOS, 54_000_000);
    assert_eq!(header(&resp, "x-uat-cost"), "0.054");
    let v: Value = resp.json().await.unwrap();
    let usage = &v["usage"];
    assert_eq!(usage["prompt_tokens"], 127, "{usage}");
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"], 100,
        "{usage}"
    );
    assert_eq!(usage["cache_creation_input_tokens"], 20, "{usage}");
    assert_eq!(spent(&app, "roomy"), CACHED_ANSWER_NANOS);
    // Replayed from the cache as a stream: the same usage, no charge.
    let mut asking = body.clone();
    asking["stream"] = json!(true);
    asking["stream_options"] = json!({"include_usage": true});
    let hit = chat_as(&app, ROOMY_KEY, &asking).await;
    assert!(
        header(&hit, "x-uat-cache").starts_with("hit"),
        "{:?}",
        hit.headers()
    );
    let events = sse_events(hit).await;
    let replayed: Value = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find_map(|c| c.get("usage").filter(|u| !u.is_null()).cloned())
        .expect("a usage chunk");
    assert_eq!(&replayed, usage, "{events:?}");
    assert_eq!(spent(&app, "roomy"), CACHED_ANSWER_NANOS, "a hit is free");
}

/// A stream's cache writes, the 1-hour ones apart, are charged when it
/// ends, and reported in the usage chunk the client asked for.
#[tokio::test]
async fn an_anthropic_stream_is_charged_its_cache_writes() {
    let (_up, toml, model) = anthropic_cache_upstream().await;
    let app = spawn_app(&format!("{toml}{}", keys())).await;
    let mut body = chat_body(&model, true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = chat_as(&app, ROOMY_KEY, &body).await;
    assert_eq!(resp.status(), 200);
    let events = sse_events(resp).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find_map(|c| c.get("usage").filter(|u| !u.is_null()).cloned())
        .expect("a usage chunk");
    assert_eq!(usage["cache_creation_input_tokens"], 20, "{usage}");
    assert!(
        eventually(Duration::from_secs(5), || spent(&app, "roomy")
            == CACHED_ANSWER_NANOS)
        .await,
        "spent {}",
        spent(&app, "roomy")
    );
}
