//! Request fields a provider kind cannot honour are never silently dropped:
//! an alias fails over to a target that can, else the client gets a 400 in
//! the OpenAI shape naming the field. And what Anthropic needs that OpenAI
//! does not (`max_tokens`) defaults to the model's own limit.

use crate::common::*;
use serde_json::{Value, json};
use uat_testkit::{Behavior, FakeUpstream, Wire};

/// The three fakes, one per wire format, tried in this order under the
/// `priority` strategy: Anthropic `c` (`claude-x`), Ollama `o` (`llama`),
/// OpenAI `a` (`gpt`); the alias `multi` targets all three.
async fn three_kinds() -> (FakeUpstream, FakeUpstream, FakeUpstream, TestApp) {
    let c = FakeUpstream::start(Wire::Anthropic, "c").await.unwrap();
    c.set_models(&["claude-x"]);
    let o = FakeUpstream::start(Wire::Ollama, "o").await.unwrap();
    o.set_models(&["llama"]);
    let a = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    a.set_models(&["gpt"]);
    let toml = format!(
        "{}{}{}{}[[models]]\nname = \"multi\"\ntargets = [\"c/claude-x\", \"o/llama\", \"a/gpt\"]\n",
        provider_toml("c", "anthropic", &c.base_url(), "priority = 0"),
        provider_toml("o", "ollama", &o.base_url(), "priority = 1"),
        provider_toml("a", "openai", &a.base_url(), "priority = 2"),
        routing("priority", ""),
    );
    let app = spawn_app(&toml).await;
    (c, o, a, app)
}

/// Asserts a 400 in the OpenAI error shape naming `param`, whose message
/// holds `text`.
async fn assert_refused(resp: reqwest::Response, param: &str, text: &str) {
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], param, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap_or("").contains(text),
        "{v}"
    );
}

/// Anthropic requires `max_tokens`; a client that sets none used to get
/// 4096 and long answers cut short (`length`) where OpenAI would have gone
/// on. Now: the model's own output limit, `default_max_tokens` over it,
/// 4096 for a model the table does not know, and a client's value as it is.
#[tokio::test]
async fn anthropic_max_tokens_defaults_to_the_models_output_limit() {
    let up = FakeUpstream::start(Wire::Anthropic, "c").await.unwrap();
    up.set_models(&["claude-sonnet-4-5-20250929", "claude-x"]);
    let toml = format!(
        "{}{}",
        provider_toml("c", "anthropic", &up.base_url(), ""),
        provider_toml(
            "d",
            "anthropic",
            &up.base_url(),
            "default_max_tokens = 1000"
        ),
    );
    let app = spawn_app(&toml).await;
    for (model, stream, max_tokens, sent) in [
        ("c/claude-sonnet-4-5-20250929", false, None, 64_000),
        ("c/claude-sonnet-4-5-20250929", true, None, 64_000),
        ("c/claude-x", false, None, 4096),
        ("d/claude-sonnet-4-5-20250929", false, None, 1000),
        ("d/claude-x", true, None, 1000),
        (
            "c/claude-sonnet-4-5-20250929",
            false,
            Some(100_000),
            100_000,
        ),
        ("d/claude-x", false, Some(12), 12),
    ] {
        let mut body = chat_body(model, stream);
        if let Some(n) = max_tokens {
            body["max_tokens"] = json!(n);
        }
        let resp = app.chat(body).await;
        assert_eq!(resp.status(), 200, "{model}");
        let _ = resp.bytes().await.unwrap();
        assert_eq!(
            up.last_body().unwrap()["max_tokens"],
            sent,
            "{model} stream={stream} max_tokens={max_tokens:?}"
        );
    }
}

/// The model's whole output limit as the default leaves no room for a long
/// prompt where Anthropic holds input + `max_tokens` to the context window
/// (`... exceed context limit: 178959 + 64000 > 200000 ...`, a 400 where
/// 4096 went). A defaulted request is sent once more with what the window
/// leaves (Z - X), streamed or not; a client's own limit gets the 400.
#[tokio::test]
async fn anthropic_default_max_tokens_shrinks_to_the_context_window() {
    let up = FakeUpstream::start(Wire::Anthropic, "c").await.unwrap();
    up.set_models(&["claude-sonnet-4-5-20250929"]);
    up.set_default(Behavior::ContextLimit {
        input: 178_959,
        limit: 200_000,
    });
    let app = spawn_app(&provider_toml("c", "anthropic", &up.base_url(), "")).await;
    let model = "claude-sonnet-4-5-20250929";
    for stream in [false, true] {
        let before = up.calls();
        let resp = app.chat(chat_body(model, stream)).await;
        assert_eq!(resp.status(), 200, "stream={stream}");
        let _ = resp.bytes().await.unwrap();
        assert_eq!(up.calls() - before, 2, "stream={stream}: sent once more");
        let sent: Vec<Value> = up
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .map(|r| r.body["max_tokens"].clone())
            .collect();
        assert_eq!(
            sent[sent.len() - 2..],
            [json!(64_000), json!(200_000 - 178_959)],
            "stream={stream}"
        );

        let before = up.calls();
        let mut body = chat_body(model, stream);
        body["max_tokens"] = json!(64_000);
        let resp = app.chat(body).await;
        assert_eq!(resp.status(), 400, "stream={stream}");
        let v: Value = resp.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("178959 + 64000 > 200000"),
            "{v}"
        );
        assert_eq!(up.calls() - before, 1, "stream={stream}: no retry");
    }
    // An input that fills the window leaves nothing: the 400 goes through.
    up.set_default(Behavior::ContextLimit {
        input: 200_000,
        limit: 200_000,
    });
    let before = up.calls();
    let resp = app.chat(chat_body(model, false)).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(up.calls() - before, 1);
}

/// `n` > 1 used to come back from Anthropic and Ollama as one choice. Now
/// those targets are skipped without a call, an alias is served by the
/// OpenAI target, and a model only they serve is a 400 naming `n`.
#[tokio::test]
async fn n_above_one_fails_over_or_is_a_400_naming_n() {
    let (c, o, a, app) = three_kinds().await;
    let resp = app.chat(chat_body("multi", false)).await;
    assert_eq!(header(&resp, "x-uat-provider"), "c", "priority order");

    for stream in [false, true] {
        let mut body = chat_body("multi", stream);
        body["n"] = json!(2);
        let resp = app.chat(body).await;
        assert_eq!(resp.status(), 200, "stream={stream}");
        assert_eq!(header(&resp, "x-uat-provider"), "a", "stream={stream}");
        assert_eq!(a.last_body().unwrap()["n"], 2);
    }
    assert_eq!(c.calls(), 1, "only the first request reached Anthropic");
    assert_eq!(o.calls(), 0);

    for (model, kind) in [("claude-x", "anthropic"), ("llama", "ollama")] {
        for stream in [false, true] {
            let mut body = chat_body(model, stream);
            body["n"] = json!(3);
            let resp = app.chat(body).await;
            assert_refused(
                resp,
                "n",
                &format!("n > 1 is not supported by {kind} providers"),
            )
            .await;
        }
    }
    assert_eq!(c.calls() + o.calls(), 1, "refused without an upstream call");
}

/// Anthropic has no logprobs: a request asking for them fails over to a
/// target that has them (Ollama here) or is a 400 naming `logprobs`.
#[tokio::test]
async fn anthropic_logprobs_fail_over_or_are_a_400() {
    let (c, o, _a, app) = three_kinds().await;
    let mut body = chat_body("multi", false);
    body["logprobs"] = json!(true);
    let resp = app.chat(body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "o");
    let v: Value = resp.json().await.unwrap();
    assert!(v["choices"][0]["logprobs"]["content"].is_array(), "{v}");

    for (extra, param) in [
        (json!({"logprobs": true}), "logprobs"),
        (json!({"logprobs": true, "top_logprobs": 2}), "logprobs"),
        (json!({"top_logprobs": 2}), "top_logprobs"),
    ] {
        let mut body = chat_body("claude-x", true);
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let resp = app.chat(body).await;
        assert_refused(
            resp,
            param,
            "logprobs are not supported by anthropic providers",
        )
        .await;
    }
    assert_eq!(c.calls(), 0);
    assert_eq!(o.calls(), 1);
}

/// Ollama 0.12.11 and later give logprobs on `/api/chat`; they used to be
/// dropped (never asked for). Now `logprobs` / `top_logprobs` are sent and
/// the answer carries them in OpenAI's shape, streamed beside each delta.
#[tokio::test]
async fn ollama_logprobs_come_back_in_the_openai_shape() {
    let up = FakeUpstream::start(Wire::Ollama, "o").await.unwrap();
    up.set_models(&["llama"]);
    let app = spawn_app(&provider_toml("o", "ollama", &up.base_url(), "")).await;

    let mut body = chat_body("llama", false);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let resp = app.chat(body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let sent = up.last_body().unwrap();
    assert_eq!(
        (&sent["logprobs"], &sent["top_logprobs"]),
        (&json!(true), &json!(2))
    );
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    let tokens: String = content.iter().filter_map(|t| t["token"].as_str()).collect();
    assert_eq!(tokens, "Hello from o");
    assert_eq!(content[0]["logprob"], -0.1);
    assert_eq!(content[0]["bytes"], json!(b"Hello ".to_vec()));
    assert_eq!(content[1]["top_logprobs"].as_array().unwrap().len(), 2);
    assert_eq!(content[1]["top_logprobs"][1]["token"], "alt1");

    let mut body = chat_body("llama", true);
    body["logprobs"] = json!(true);
    let resp = app.chat(body).await;
    assert_eq!(resp.status(), 200);
    let events = sse_events(resp).await;
    assert_eq!(stream_text(&events), "Hello from o");
    let mut scored = 0;
    for e in events.iter().filter(|e| e.as_str() != "[DONE]") {
        let c: Value = serde_json::from_str(e).unwrap();
        let delta = c["choices"][0]["delta"]["content"].as_str().unwrap_or("");
        if delta.is_empty() {
            continue;
        }
        let lp = &c["choices"][0]["logprobs"]["content"];
        assert_eq!(lp[0]["token"], delta, "{c}");
        assert_eq!(lp[0]["top_logprobs"], json!([]), "{c}");
        scored += 1;
    }
    assert_eq!(scored, 3);

    let resp = app.chat(chat_body("llama", false)).await;
    let v: Value = resp.json().await.unwrap();
    assert!(v["choices"][0].get("logprobs").is_none(), "{v}");
    assert!(up.last_body().unwrap().get("logprobs").is_none());
}

fn with_image(model: &str, url: Value) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": url},
        ]}],
    })
}

/// Ollama takes images as base64 only; an http(s) image URL used to be
/// dropped and the model answered without the picture. Now it fails over
/// (the OpenAI target gets the URL) or is a 400 naming the part.
#[tokio::test]
async fn ollama_refuses_image_urls_rather_than_dropping_them() {
    let o = FakeUpstream::start(Wire::Ollama, "o").await.unwrap();
    o.set_models(&["llama"]);
    let a = FakeUpstream::start(Wire::OpenAi, "a").await.unwrap();
    a.set_models(&["gpt"]);
    let toml = format!(
        "{}{}{}[[models]]\nname = \"vision\"\ntargets = [\"o/llama\", \"a/gpt\"]\n",
        provider_toml("o", "ollama", &o.base_url(), "priority = 0"),
        provider_toml("a", "openai", &a.base_url(), "priority = 1"),
        routing("priority", ""),
    );
    let app = spawn_app(&toml).await;
    let url = "https://example.com/cat.png";

    let resp = app.chat(with_image("vision", json!({"url": url}))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "a");
    assert_eq!(
        a.last_body().unwrap()["messages"][0]["content"][1]["image_url"]["url"],
        url
    );

    let resp = app.chat(with_image("llama", json!({"url": url}))).await;
    assert_refused(
        resp,
        "messages[0].content[1].image_url.url",
        "Ollama providers accept images as data: URLs only",
    )
    .await;
    assert_eq!(o.calls(), 0);

    let resp = app
        .chat(with_image(
            "vision",
            json!({"url": "data:image/png;base64,AAA"}),
        ))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "o");
    assert_eq!(
        o.last_body().unwrap()["messages"][0]["images"],
        json!(["AAA"])
    );
}

/// Anthropic fetches images by URL itself: an http(s) image URL goes as a
/// URL source, the URL given alone (as some clients send it) too.
#[tokio::test]
async fn anthropic_sends_image_urls_as_url_sources() {
    let up = FakeUpstream::start(Wire::Anthropic, "c").await.unwrap();
    up.set_models(&["claude-x"]);
    let app = spawn_app(&provider_toml("c", "anthropic", &up.base_url(), "")).await;
    for image_url in [
        json!({"url": "https://example.com/cat.png", "detail": "high"}),
        json!("https://example.com/cat.png"),
    ] {
        let resp = app.chat(with_image("claude-x", image_url.clone())).await;
        assert_eq!(resp.status(), 200, "{image_url}");
        assert_eq!(
            up.last_body().unwrap()["messages"][0]["content"][1],
            json!({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}),
            "{image_url}"
        );
    }
}

/// Objects reach the upstream with their keys in the client's order. A
/// model writes a structured answer in its schema's property order (the
/// reasoning before the answer, say), and the gateway, which parses and
/// re-serializes the request, used to sort every object's keys: `answer`
/// went first. Checked for each wire format, in the JSON schema and in a
/// tool's parameters.
#[tokio::test]
async fn a_schemas_property_order_reaches_every_upstream() {
    let (c, o, a, app) = three_kinds().await;
    let schema = json!({
        "type": "object",
        "properties": {"reasoning": {"type": "string"}, "answer": {"type": "string"}},
        "required": ["reasoning", "answer"]
    });
    let tool_params = json!({
        "type": "object",
        "properties": {"zone": {"type": "string"}, "at": {"type": "string"}}
    });
    let names = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let tools = json!([{"type": "function", "function": {"name": "t", "parameters": tool_params}}]);
    for (model, up) in [("gpt", &a), ("llama", &o), ("claude-x", &c)] {
        let body = json!({
            "model": model,
            "messages": [{"role": "user", "content": "why?"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}},
        });
        let resp = app.chat(body).await;
        assert_eq!(
            resp.status(),
            200,
            "{model}: {}",
            resp.text().await.unwrap_or_default()
        );
        let sent = up.last_body().unwrap();
        let props = match model {
            "gpt" => &sent["response_format"]["json_schema"]["schema"]["properties"],
            "llama" => &sent["format"]["properties"],
            // Anthropic: the schema goes out as a forced tool's input schema.
            _ => &sent["tools"][0]["input_schema"]["properties"],
        };
        assert_eq!(names(props), ["reasoning", "answer"], "{model}: {sent}");
        let body = json!({
            "model": model,
            "messages": [{"role": "user", "content": "when?"}],
            "tools": tools,
        });
        assert_eq!(app.chat(body).await.status(), 200, "{model}");
        let sent = up.last_body().unwrap();
        let props = match model {
            "claude-x" => &sent["tools"][0]["input_schema"]["properties"],
            _ => &sent["tools"][0]["function"]["parameters"]["properties"],
        };
        assert_eq!(names(props), ["zone", "at"], "{model}: {sent}");
    }
}

/// An answer of tool calls only says `content: null`, as OpenAI's does
/// (clients test `content is not None` to show a message): Anthropic's
/// `tool_use`-only message and Ollama's empty content beside its
/// `tool_calls` were `""`.
#[tokio::test]
async fn an_answer_of_tool_calls_only_has_null_content() {
    let a = FakeUpstream::start(Wire::Anthropic, "ta").await.unwrap();
    a.set_models(&["claude-tools"]);
    a.set_default(Behavior::Body(
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-tools",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 5, "output_tokens": 3}})
        .to_string(),
    ));
    let o = FakeUpstream::start(Wire::Ollama, "to").await.unwrap();
    o.set_models(&["llama-tools"]);
    o.set_default(Behavior::Body(
        json!({"model": "llama-tools", "created_at": "2026-12-07T00:00:00Z",
            "message": {"role": "assistant", "content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
            "done": true, "done_reason": "stop", "prompt_eval_count": 5, "eval_count": 3})
        .to_string(),
    ));
    let app = spawn_app(&format!(
        "{}{}",
        provider_toml("ta", "anthropic", &a.base_url(), ""),
        provider_toml("to", "ollama", &o.base_url(), "")
    ))
    .await;
    for model in ["claude-tools", "llama-tools"] {
        let resp = app
            .chat(json!({"model": model, "messages": [{"role": "user", "content": "call f"}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}))
            .await;
        assert_eq!(resp.status(), 200, "{model}");
        let v: Value = resp.json().await.unwrap();
        let message = &v["choices"][0]["message"];
        assert!(message["content"].is_null(), "{model}: {v}");
        assert_eq!(
            message["tool_calls"][0]["function"]["name"], "f",
            "{model}: {v}"
        );
        assert_eq!(
            v["choices"][0]["finish_reason"], "tool_calls",
            "{model}: {v}"
        );
    }
}

/// Anthropic pages its model list (20 a page by default, 1,000 at most):
/// discovery reads every page, so a model past the first is found (it was
/// a 404 once more than 20 models were listed).
#[tokio::test]
async fn anthropic_discovery_reads_every_page_of_models() {
    let up = FakeUpstream::start(Wire::Anthropic, "pages").await.unwrap();
    let names: Vec<String> = (0..1030).map(|i| format!("claude-p{i:04}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    up.set_models(&refs);
    let app = spawn_app(&provider_toml("pages", "anthropic", &up.base_url(), "")).await;
    let router = app.state.gateway.router();
    assert!(router.has_model("claude-p0000"));
    assert!(
        router.has_model("claude-p1029"),
        "a model of the second page"
    );
    let pages: Vec<String> = up
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.path.clone())
        .collect();
    assert!(
        pages.iter().any(|p| p.contains("after_id=claude-p0999")),
        "{pages:?}"
    );
}
