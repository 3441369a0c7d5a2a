//! `POST /v1/completions` (OpenAI's legacy text completions) through the
//! whole gateway: routed to each provider kind's fake, streamed, cached
//! (a streamed miss and a plain hit share an entry, both ways), refused in
//! the OpenAI error shape, metered and scoped by API keys.

use crate::common::*;
use serde_json::{Value, json};
use uat_testkit::{Behavior, FakeUpstream, Wire};

/// Joins the `choices[0].text` of streamed `text_completion` chunks, and
/// checks every chunk is one.
fn streamed_text(events: &[String]) -> String {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).expect("a chunk is JSON");
        assert_eq!(v["object"], "text_completion", "{v}");
        if let Some(t) = v.pointer("/choices/0/text").and_then(Value::as_str) {
            text.push_str(t);
        }
    }
    text
}

async fn openai_app(cache: bool) -> (FakeUpstream, TestApp, String) {
    let name = unique("cmpl");
    let up = FakeUpstream::start(Wire::OpenAi, &name).await.unwrap();
    up.set_reply("fn main() { println!(\"hi ✓\"); }");
    let cache = if cache {
        "[cache]\nmode = \"deterministic\"\n"
    } else {
        ""
    };
    let toml = format!(
        "{}{cache}",
        provider_toml("p", "openai", &up.base_url(), "")
    );
    (up, spawn_app(&toml).await, format!("{name}-model"))
}

#[tokio::test]
async fn a_completion_is_forwarded_to_an_openai_compatible_upstream() {
    let (up, app, model) = openai_app(false).await;
    let resp = app
        .post(
            "/v1/completions",
            &json!({"model": model, "prompt": "fn main() {", "suffix": "}", "max_tokens": 32,
                    "echo": false, "logprobs": 2, "user": "u1"}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "p");
    assert_eq!(header(&resp, "x-uat-attempts"), "1");
    assert_eq!(header(&resp, "x-uat-cache"), "bypass", "the cache is off");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "text_completion", "{body}");
    assert_eq!(
        body["choices"][0]["text"],
        "fn main() { println!(\"hi ✓\"); }"
    );
    assert!(body["usage"]["total_tokens"].as_u64().is_some(), "{body}");
    let sent = up.last_body().expect("the upstream was called");
    assert_eq!(sent["prompt"], "fn main() {");
    assert_eq!(sent["suffix"], "}", "other fields pass through");
    assert_eq!(sent["logprobs"], 2);
    assert_eq!(sent["max_tokens"], 32);
    assert!(sent.get("stream").is_none_or(|s| s == false), "{sent}");

    let resp = app
        .post(
            "/v1/completions",
            &json!({"model": model, "prompt": ["fn main() {"], "stream": true}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "content-type").starts_with("text/event-stream"));
    let events = sse_events(resp).await;
    assert_eq!(streamed_text(&events), "fn main() { println!(\"hi ✓\"); }");
    assert_eq!(up.last_body().unwrap()["stream"], true);
}

/// A streamed miss is recorded and a plain request hits it; a plain miss is
/// replayed as a valid stream; the text is the same byte for byte, and the
/// upstream is asked once per distinct request. A chat request of the same
/// fields is another entry.
#[tokio::test]
async fn completions_are_cached_streamed_or_not_and_apart_from_chat() {
    let (up, app, model) = openai_app(true).await;
    let want = "fn main() { println!(\"hi ✓\"); }";
    let req = |prompt: &str, stream: bool| json!({"model": model, "prompt": prompt, "temperature": 0, "stream": stream});

    // Streamed miss, then a plain hit. The gateway asked for the usage to
    // store it, and kept it from the client, who did not.
    let resp = app.post("/v1/completions", &req("a", true)).await;
    assert_eq!(header(&resp, "x-uat-cache"), "miss");
    let events = sse_events(resp).await;
    assert_eq!(streamed_text(&events), want);
    assert!(
        !events.iter().any(|e| serde_json::from_str::<Value>(e)
            .is_ok_and(|v| v.get("usage").is_some_and(|u| !u.is_null()))),
        "{events:?}"
    );
    assert_eq!(
        up.last_body().unwrap()["stream_options"]["include_usage"],
        true
    );
    let resp = app.post("/v1/completions", &req("a", false)).await;
    assert_eq!(header(&resp, "x-uat-cache"), "hit-l1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "text_completion", "{body}");
    assert_eq!(body["choices"][0]["text"], want);
    assert!(body["choices"][0]["finish_reason"].is_string(), "{body}");
    assert!(body["usage"]["total_tokens"].as_u64().is_some(), "{body}");
    assert_eq!(up.calls(), 1);

    // Plain miss, then a streamed hit (with the usage asked for).
    let resp = app.post("/v1/completions", &req("b", false)).await;
    assert_eq!(header(&resp, "x-uat-cache"), "miss");
    let plain: Value = resp.json().await.unwrap();
    let mut streamed = req("b", true);
    streamed["stream_options"] = json!({"include_usage": true});
    let resp = app.post("/v1/completions", &streamed).await;
    assert_eq!(header(&resp, "x-uat-cache"), "hit-l1");
    let events = sse_events(resp).await;
    assert_eq!(streamed_text(&events), want);
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"], plain["usage"], "{events:?}");
    assert_eq!(up.calls(), 2);

    // A changed field misses; a chat request of the very same body is not
    // served the completion (nor the reverse).
    let resp = app
        .post(
            "/v1/completions",
            &json!({"model": model, "prompt": "b", "temperature": 0, "max_tokens": 5}),
        )
        .await;
    assert_eq!(header(&resp, "x-uat-cache"), "miss");
    let both = json!({"model": model, "temperature": 0, "prompt": "b",
                      "messages": [{"role": "user", "content": "b"}]});
    let resp = app.post("/v1/completions", &both).await;
    assert_eq!(header(&resp, "x-uat-cache"), "miss");
    let resp = app.chat(both).await;
    assert_eq!(header(&resp, "x-uat-cache"), "miss");
    let chat: Value = resp.json().await.unwrap();
    assert_eq!(chat["object"], "chat.completion", "{chat}");
    assert_eq!(up.calls(), 5);

    // Sampled (no temperature 0, no seed): never cached.
    for _ in 0..2 {
        let resp = app
            .post("/v1/completions", &json!({"model": model, "prompt": "c"}))
            .await;
        assert_eq!(header(&resp, "x-uat-cache"), "bypass");
    }
    assert_eq!(up.calls(), 7);
}

#[tokio::test]
async fn bad_completion_requests_are_refused_in_the_openai_shape() {
    let (up, app, model) = openai_app(true).await;
    let cases = [
        (json!({"model": model}), 400, "prompt"),
        (json!({"model": model, "prompt": null}), 400, "prompt"),
        (json!({"model": model, "prompt": []}), 400, "prompt"),
        (
            json!({"model": model, "prompt": {"text": "a"}}),
            400,
            "prompt",
        ),
        (json!({"model": model, "prompt": ["a", 1]}), 400, "prompt"),
        (json!({"model": model, "prompt": [1, -2]}), 400, "prompt"),
        (json!({"model": model, "prompt": [[1], []]}), 400, "prompt"),
        (json!({"model": model, "prompt": 7}), 400, "prompt"),
        (json!({"model": "", "prompt": "a"}), 400, "model"),
        (json!({"prompt": "a"}), 400, "model"),
        (
            json!({"model": model, "prompt": "a", "max_tokens": "many"}),
            400,
            "max_tokens",
        ),
        (json!([1, 2]), 400, ""),
        (json!({"model": "nope", "prompt": "a"}), 404, ""),
    ];
    for (body, status, param) in cases {
        let resp = app.post("/v1/completions", &body).await;
        assert_eq!(resp.status(), status, "{body}");
        assert_eq!(header(&resp, "x-uat-cache"), "bypass", "{body}");
        let err: Value = resp.json().await.unwrap();
        assert!(err["error"]["message"].is_string(), "{err}");
        assert!(err["error"]["type"].is_string(), "{err}");
        if !param.is_empty() {
            assert_eq!(err["error"]["param"], param, "{body}: {err}");
        }
    }
    // Token ids, several prompts and arrays of token ids are prompts.
    for prompt in [
        json!([1, 2, 3]),
        json!(["a", "b"]),
        json!([[1, 2], [3]]),
        json!(""),
    ] {
        let resp = app
            .post(
                "/v1/completions",
                &json!({"model": model, "prompt": prompt}),
            )
            .await;
        assert_eq!(resp.status(), 200, "{prompt}");
    }
    assert_eq!(up.calls(), 4, "no refused request reached the upstream");
    let resp = app
        .client
        .post(app.at("/v1/completions"))
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

/// An upstream failure is retried and failed over as for chat, and an
/// upstream's own 400 reaches the client with its message.
#[tokio::test]
async fn a_failing_upstream_is_failed_over_for_completions() {
    let (a, b) = two_fakes().await;
    a.set_default(Behavior::Status(500));
    let toml = format!(
        "{}{}",
        two_providers(&a, &b, "priority = 0", "priority = 1"),
        routing("priority", "")
    );
    let app = spawn_app(&toml).await;
    for stream in [false, true] {
        let resp = app
            .post(
                "/v1/completions",
                &json!({"model": "shared", "prompt": "x", "stream": stream}),
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-uat-provider"), "b");
        let text = if stream {
            streamed_text(&sse_events(resp).await)
        } else {
            let v: Value = resp.json().await.unwrap();
            v["choices"][0]["text"].as_str().unwrap().to_owned()
        };
        assert_eq!(text, "Hello from b");
    }
    b.set_default(Behavior::Status(500));
    let resp = app
        .post(
            "/v1/completions",
            &json!({"model": "shared", "prompt": "x"}),
        )
        .await;
    assert_eq!(resp.status(), 502);
    let err: Value = resp.json().await.unwrap();
    assert!(err["error"]["message"].is_string(), "{err}");
}

/// Ollama's `/api/generate` answers a single prompt; what it cannot do
/// (several prompts, `echo`) is refused before any attempt, so an alias
/// fails over to an OpenAI-compatible target that can; Anthropic has no
/// text completions at all.
#[tokio::test]
async fn ollama_answers_completions_and_what_it_cannot_do_fails_over() {
    let ollama = FakeUpstream::start(Wire::Ollama, "llama").await.unwrap();
    let openai = FakeUpstream::start(Wire::OpenAi, "vllm").await.unwrap();
    let claude = FakeUpstream::start(Wire::Anthropic, "claude")
        .await
        .unwrap();
    let toml = format!(
        "{}{}{}[[models]]\nname = \"coder\"\ntargets = [\"o/llama-model\", \"v/vllm-model\"]\n\
         [[models]]\nname = \"claude-only\"\ntargets = [\"c/claude-model\"]\n{}",
        provider_toml("o", "ollama", &ollama.base_url(), "priority = 0"),
        provider_toml("v", "openai", &openai.base_url(), "priority = 1"),
        provider_toml("c", "anthropic", &claude.base_url(), ""),
        routing("priority", "")
    );
    let app = spawn_app(&toml).await;

    let resp = app
        .post(
            "/v1/completions",
            &json!({"model": "coder", "prompt": "def f():", "max_tokens": 7, "temperature": 0.2}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "o");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "text_completion", "{body}");
    assert_eq!(body["choices"][0]["text"], "Hello from llama");
    let sent = ollama.last_body().unwrap();
    assert_eq!(sent["prompt"], "def f():", "{sent}");
    assert_eq!(sent["options"]["num_predict"], 7, "{sent}");
    let resp = app
        .post(
            "/v1/completions",
            &json!({"model": "coder", "prompt": "def f():", "stream": true}),
        )
        .await;
    assert_eq!(header(&resp, "x-uat-provider"), "o");
    assert_eq!(streamed_text(&sse_events(resp).await), "Hello from llama");
    assert_eq!(openai.calls(), 0);

    for refused in [
        json!({"model": "coder", "prompt": ["a", "b"]}),
        json!({"model": "coder", "prompt": "a", "echo": true}),
        // Ollama only loads the model for an empty prompt (fill in the
        // middle at the top of a file).
        json!({"model": "coder", "prompt": "", "suffix": "x"}),
    ] {
        let resp = app.post("/v1/completions", &refused).await;
        assert_eq!(resp.status(), 200, "{refused}");
        assert_eq!(header(&resp, "x-uat-provider"), "v", "{refused}");
        assert_eq!(
            header(&resp, "x-uat-attempts"),
            "1",
            "a refusal is no attempt"
        );
    }
    assert_eq!(ollama.calls(), 2);

    // Straight to Ollama: the client's 400, naming the field.
    let resp = app
        .post(
            "/v1/completions",
            &json!({"model": "o/llama-model", "prompt": ["a", "b"]}),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["param"], "prompt", "{err}");

    let resp = app
        .post(
            "/v1/completions",
            &json!({"model": "claude-only", "prompt": "a"}),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("chat/completions")),
        "{err}"
    );
    assert_eq!(claude.calls(), 0);
}

/// Ollama text completions give OpenAI's legacy `logprobs` (`logprobs: N`
/// is sent as Ollama's `logprobs: true, top_logprobs: N`), answered and
/// streamed, offsets in characters from the start of the generated text (a
/// thinking model's reasoning tokens left out); a
/// streamed miss replayed as a plain hit has them whole (the cache joins each
/// chunk's lists). `echo` stays refused, and a `logprobs` above 20.
#[tokio::test]
async fn ollama_completions_give_legacy_logprobs() {
    let name = unique("lp");
    let ollama = FakeUpstream::start(Wire::Ollama, &name).await.unwrap();
    // The fake's tokens are its words: "Café ", "👍 ", "ok".
    ollama.set_reply("Café 👍 ok");
    let toml = format!(
        "{}[cache]\nmode = \"deterministic\"\n",
        provider_toml("o", "ollama", &ollama.base_url(), "")
    );
    let app = spawn_app(&toml).await;
    let model = format!("{name}-model");
    let req = |prompt: &str, logprobs: u64, stream: bool| json!({"model": model, "prompt": prompt, "temperature": 0, "logprobs": logprobs, "stream": stream});
    // The fake's word i has logprob -(i + 1) / 10, its alternative `alt1` 1 less.
    let lp = |i: u32| -f64::from(i + 1) / 10.0;
    let want = json!({
        "tokens": ["Café ", "👍 ", "ok"],
        "token_logprobs": [lp(0), lp(1), lp(2)],
        "top_logprobs": [
            {"Café ": lp(0), "alt1": lp(0) - 1.0},
            {"👍 ": lp(1), "alt1": lp(1) - 1.0},
            {"ok": lp(2), "alt1": lp(2) - 1.0}
        ],
        "text_offset": [0, 5, 7]
    });

    let resp = app.post("/v1/completions", &req("a", 2, false)).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["text"], "Café 👍 ok", "{body}");
    assert_eq!(body["choices"][0]["logprobs"], want, "{body}");
    let sent = ollama.last_body().unwrap();
    assert_eq!(
        (&sent["logprobs"], &sent["top_logprobs"]),
        (&json!(true), &json!(2)),
        "{sent}"
    );

    // Streamed: each chunk its tokens', the offsets going on.
    let resp = app.post("/v1/completions", &req("b", 2, true)).await;
    assert_eq!(header(&resp, "x-uat-cache"), "miss");
    let events = sse_events(resp).await;
    assert_eq!(streamed_text(&events), "Café 👍 ok");
    let offsets: Vec<Option<Value>> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .map(|c| c.pointer("/choices/0/logprobs/text_offset").cloned())
        .collect();
    // Every chunk has them, empty lists on the finish chunk (vLLM's shape).
    assert_eq!(
        offsets,
        [
            Some(json!([0])),
            Some(json!([5])),
            Some(json!([7])),
            Some(json!([]))
        ],
        "{events:?}"
    );
    let resp = app.post("/v1/completions", &req("b", 2, false)).await;
    assert_eq!(header(&resp, "x-uat-cache"), "hit-l1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["logprobs"], want, "{body}");

    // `logprobs: 0`: the generated tokens' own, alone in each place.
    let own = json!([{"Café ": lp(0)}, {"👍 ": lp(1)}, {"ok": lp(2)}]);
    let resp = app.post("/v1/completions", &req("c", 0, false)).await;
    let body: Value = resp.json().await.unwrap();
    let got = &body["choices"][0]["logprobs"];
    assert_eq!(got["top_logprobs"], own, "{body}");
    assert_eq!(got["tokens"], want["tokens"], "{body}");
    assert_eq!(got["text_offset"], want["text_offset"], "{body}");
    assert_eq!(ollama.last_body().unwrap()["top_logprobs"], 0);
    let resp = app.post("/v1/completions", &req("d", 0, true)).await;
    assert_eq!(streamed_text(&sse_events(resp).await), "Café 👍 ok");
    let resp = app.post("/v1/completions", &req("d", 0, false)).await;
    assert_eq!(header(&resp, "x-uat-cache"), "hit-l1");
    let body: Value = resp.json().await.unwrap();
    let got = &body["choices"][0]["logprobs"];
    assert_eq!(got["top_logprobs"], own, "{body}");
    assert_eq!(got["text_offset"], want["text_offset"], "{body}");

    // A thinking model: Ollama's list has the reasoning's tokens first, then
    // `\n`, `</think>`, `\n\n` (streamed on lines with neither thinking nor
    // text); the answer has the text's alone, whole, streamed and replayed.
    ollama.set_ollama_thinking("Let me think.");
    let resp = app.post("/v1/completions", &req("e", 2, false)).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["text"], "Café 👍 ok", "{body}");
    assert_eq!(body["choices"][0]["logprobs"], want, "{body}");
    let resp = app.post("/v1/completions", &req("f", 2, true)).await;
    assert_eq!(header(&resp, "x-uat-cache"), "miss");
    let events = sse_events(resp).await;
    assert_eq!(streamed_text(&events), "Café 👍 ok");
    let resp = app.post("/v1/completions", &req("f", 2, false)).await;
    assert_eq!(header(&resp, "x-uat-cache"), "hit-l1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["logprobs"], want, "{body}");
    ollama.set_ollama_thinking("");

    let calls = ollama.calls();
    for (refused, param) in [
        (
            json!({"model": model, "prompt": "a", "logprobs": 1, "echo": true}),
            "echo",
        ),
        (
            json!({"model": model, "prompt": "a", "logprobs": 21}),
            "logprobs",
        ),
    ] {
        let resp = app.post("/v1/completions", &refused).await;
        assert_eq!(resp.status(), 400, "{refused}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["param"], param, "{err}");
    }
    assert_eq!(ollama.calls(), calls, "a refusal is no call");
}

/// With API keys: a completion needs a key, a key's `models` holds for it,
/// its answer spends the key's `tokens_per_minute` (a stream's usage too),
/// and each owner has its own cache namespace.
#[tokio::test]
async fn keys_scope_meter_and_separate_completions() {
    let name = unique("cmplkey");
    let up = FakeUpstream::start(Wire::OpenAi, &name).await.unwrap();
    // 9 words: every answer spends its prompt's tokens + 9.
    up.set_reply(&["word"; 9].join(" "));
    let model = format!("{name}-model");
    let toml = format!(
        "{}{}{}{}[cache]\nmode = \"deterministic\"\n",
        provider_toml("p", "openai", &up.base_url(), ""),
        key_toml(
            "metered",
            "sk-cmpl-metered-0123",
            "tokens_per_minute = 1000"
        ),
        key_toml("narrow", "sk-cmpl-narrow-01234", "models = [\"gpt-4o\"]"),
        key_toml("other", "sk-cmpl-other-012345", ""),
    );
    let app = spawn_app(&toml).await;
    let send = |secret: Option<&str>, body: Value| {
        let mut req = app.client.post(app.at("/v1/completions")).json(&body);
        if let Some(s) = secret {
            req = req.bearer_auth(s);
        }
        req.send()
    };
    let body = json!({"model": model, "prompt": "a", "temperature": 0});

    let resp = send(None, body.clone()).await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = send(Some("sk-cmpl-narrow-01234"), body.clone())
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "not among the key's models");
    assert_eq!(up.calls(), 0);

    let left = |resp: &reqwest::Response| -> u64 {
        header(resp, "x-ratelimit-remaining-tokens")
            .parse()
            .unwrap()
    };
    let resp = send(Some("sk-cmpl-metered-0123"), body.clone())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-cache"), "miss");
    let spent: Value = resp.json().await.unwrap();
    let total = spent["usage"]["total_tokens"].as_u64().unwrap();
    assert!(total > 9, "{spent}");
    let mut stream = json!({"model": model, "prompt": "b", "stream": true});
    let resp = send(Some("sk-cmpl-metered-0123"), stream.clone())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = sse_events(resp).await;
    assert!(
        !events.iter().any(|e| serde_json::from_str::<Value>(e)
            .is_ok_and(|v| v.get("usage").is_some_and(|u| !u.is_null()))),
        "the usage the gateway asked for is not forwarded: {events:?}"
    );
    // The next request sees both answers spent (refill is 1 token per
    // 60 ms: allow a little).
    stream["prompt"] = json!("c");
    let resp = send(Some("sk-cmpl-metered-0123"), stream).await.unwrap();
    let after_two = left(&resp);
    assert!(
        after_two <= 1000 - total - 9 + 5,
        "{after_two} left after spending {total} and a stream"
    );

    // The same request from another owner is not served the first's entry.
    let resp = send(Some("sk-cmpl-other-012345"), body.clone())
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-uat-cache"), "miss");
    let resp = send(Some("sk-cmpl-other-012345"), body).await.unwrap();
    assert_eq!(header(&resp, "x-uat-cache"), "hit-l1");
}
