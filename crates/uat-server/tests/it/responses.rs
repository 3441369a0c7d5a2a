//! `POST /v1/responses` (OpenAI's Responses API, bridged onto chat routing)
//! through the whole gateway: plain and streamed answers, a function call
//! round trip, custom tools and built-in tools left out, translated
//! providers (Anthropic, Ollama), refusals and upstream failures in the
//! OpenAI error shape, their logs, and API keys' token metering.

use crate::common::*;
use serde_json::{Value, json};
use uat_testkit::{Behavior, FakeUpstream, Wire};

/// An SSE body's events as `(event name, data)`, checking each data's
/// `type` is its event name and the sequence numbers count from 0.
async fn response_events(resp: reqwest::Response) -> Vec<(String, Value)> {
    let text = resp.text().await.unwrap();
    let mut events = Vec::new();
    for frame in text.split_terminator("\n\n") {
        let (name, data) = frame
            .strip_prefix("event: ")
            .and_then(|f| f.split_once("\ndata: "))
            .unwrap_or_else(|| panic!("not an event: {frame:?}"));
        let data: Value = serde_json::from_str(data).unwrap();
        assert_eq!(data["type"], name, "{data}");
        assert_eq!(data["sequence_number"], events.len(), "{data}");
        events.push((name.to_owned(), data));
    }
    events
}

/// The `output_text` deltas of a stream, joined.
fn streamed_text(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect()
}

/// The text of a Response object's message items.
fn output_text(r: &Value) -> String {
    let mut text = String::new();
    for item in r["output"].as_array().unwrap() {
        if item["type"] == "message" {
            for part in item["content"].as_array().unwrap() {
                text.push_str(part["text"].as_str().unwrap_or_default());
            }
        }
    }
    text
}

async fn openai_app() -> (FakeUpstream, TestApp, String) {
    let name = unique("resp");
    let up = FakeUpstream::start(Wire::OpenAi, &name).await.unwrap();
    up.set_reply("Hello there, friend ✓");
    let app = spawn_app(&provider_toml("p", "openai", &up.base_url(), "")).await;
    (up, app, format!("{name}-model"))
}

#[tokio::test]
async fn a_response_is_a_routed_chat_completion_translated_back() {
    let (up, app, model) = openai_app().await;
    let resp = app
        .post(
            "/v1/responses",
            &json!({"model": model, "instructions": "Be kind.", "input": "Say hello",
                    "max_output_tokens": 20, "metadata": {"run": "1"}, "store": false}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "p");
    assert_eq!(header(&resp, "x-uat-attempts"), "1");
    assert_eq!(header(&resp, "x-uat-cache"), "bypass", "never cached");
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["object"], "response", "{r}");
    assert!(r["id"].as_str().unwrap().starts_with("resp_"), "{r}");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["model"], model);
    assert_eq!(output_text(&r), "Hello there, friend ✓");
    assert_eq!(r["output"][0]["role"], "assistant");
    assert_eq!(r["metadata"], json!({"run": "1"}));
    assert_eq!(r["instructions"], "Be kind.");
    assert_eq!(r["usage"]["input_tokens"], 7, "{r}");
    assert_eq!(r["usage"]["output_tokens"], 4);
    assert_eq!(r["usage"]["total_tokens"], 11);
    let sent = up.last_body().unwrap();
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Say hello"}])
    );
    assert_eq!(sent["max_completion_tokens"], 20);
    assert!(
        sent.get("metadata").is_none() && sent.get("store").is_none(),
        "{sent}"
    );
    assert!(sent.get("stream").is_none_or(|s| s == false), "{sent}");
}

#[tokio::test]
async fn a_streamed_response_carries_the_same_text_and_ends_completed_with_usage() {
    let (up, app, model) = openai_app().await;
    let body = json!({"model": model, "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]});
    let plain: Value = app.post("/v1/responses", &body).await.json().await.unwrap();
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let resp = app.post("/v1/responses", &streamed).await;
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "content-type").starts_with("text/event-stream"));
    assert_eq!(header(&resp, "x-uat-cache"), "bypass");
    assert_eq!(header(&resp, "x-uat-provider"), "p");
    let events = response_events(resp).await;
    assert_eq!(events[0].0, "response.created");
    assert_eq!(events[1].0, "response.in_progress");
    assert!(
        events
            .iter()
            .filter(|(n, _)| n == "response.output_text.delta")
            .count()
            >= 2,
        "{events:?}"
    );
    assert_eq!(streamed_text(&events), output_text(&plain));
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "response.completed");
    let r = &data["response"];
    assert_eq!(r["status"], "completed");
    assert_eq!(output_text(r), output_text(&plain));
    assert_eq!(r["usage"], plain["usage"], "{r}");
    assert_eq!(
        up.last_body().unwrap()["stream_options"]["include_usage"],
        true,
        "usage asked for"
    );
}

#[tokio::test]
async fn a_stream_cut_short_by_the_upstream_ends_with_response_failed() {
    let (up, app, model) = openai_app().await;
    up.set_default(Behavior::StopHalfway);
    let resp = app
        .post(
            "/v1/responses",
            &json!({"model": model, "input": "x", "stream": true}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let events = response_events(resp).await;
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "response.failed", "{events:?}");
    assert_eq!(data["response"]["status"], "failed");
    assert!(data["response"]["error"]["message"].is_string(), "{data}");
}

#[tokio::test]
async fn a_function_call_round_trips_streamed_or_not() {
    let (up, app, model) = openai_app().await;
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": false}]);
    let call = Behavior::ToolCall {
        name: "get_weather".into(),
        arguments: "{\"city\":\"Paris\"}".into(),
    };
    up.push(call.clone());
    let ask = json!({"model": model, "input": "Weather in Paris?", "tools": tools, "tool_choice": "auto"});
    let resp = app.post("/v1/responses", &ask).await;
    assert_eq!(resp.status(), 200);
    let r: Value = resp.json().await.unwrap();
    let sent = up.last_body().unwrap();
    assert_eq!(
        sent["tools"][0]["function"]["name"], "get_weather",
        "{sent}"
    );
    assert_eq!(sent["tool_choice"], "auto");
    let fc = &r["output"][0];
    assert_eq!(fc["type"], "function_call", "{r}");
    assert_eq!(fc["call_id"], "call_fake");
    assert_eq!(fc["name"], "get_weather");
    assert_eq!(fc["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(r["tools"], tools, "echoed");

    // The same, streamed.
    up.push(call);
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let events = response_events(app.post("/v1/responses", &streamed).await).await;
    let args: String = events
        .iter()
        .filter(|(n, _)| n == "response.function_call_arguments.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(args, "{\"city\":\"Paris\"}");
    let done = events
        .iter()
        .find(|(n, d)| n == "response.output_item.done" && d["item"]["type"] == "function_call")
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(done.1["item"]["call_id"], "call_fake");
    assert_eq!(done.1["item"]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(events.last().unwrap().0, "response.completed");

    // The client runs the tool and sends the whole conversation back.
    let mut input = vec![json!({"role": "user", "content": "Weather in Paris?"})];
    input.extend(r["output"].as_array().unwrap().iter().cloned());
    input.push(
        json!({"type": "function_call_output", "call_id": "call_fake", "output": "sunny, 21C"}),
    );
    let resp = app
        .post(
            "/v1/responses",
            &json!({"model": model, "input": input, "tools": tools}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let r: Value = resp.json().await.unwrap();
    assert_eq!(output_text(&r), "Hello there, friend ✓");
    let sent = up.last_body().unwrap();
    assert_eq!(
        sent["messages"][1],
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_fake", "type": "function",
               "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}),
        "{sent}"
    );
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "content": "sunny, 21C", "tool_call_id": "call_fake"})
    );
}

/// The bridge works with a provider the gateway translates: Anthropic.
#[tokio::test]
async fn a_response_through_anthropic_streamed_or_not() {
    let claude = FakeUpstream::start(Wire::Anthropic, "claude")
        .await
        .unwrap();
    claude.set_reply("Bonjour from Claude");
    let app = spawn_app(&provider_toml("c", "anthropic", &claude.base_url(), "")).await;
    let body = json!({"model": "claude-model", "instructions": "Be brief.", "input": "Hi", "max_output_tokens": 64});
    let resp = app.post("/v1/responses", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "c");
    let r: Value = resp.json().await.unwrap();
    assert_eq!(output_text(&r), "Bonjour from Claude", "{r}");
    assert_eq!(r["status"], "completed");
    assert!(r["usage"]["total_tokens"].as_u64().unwrap() > 0, "{r}");
    let sent = claude.last_body().unwrap();
    assert_eq!(sent["system"], "Be brief.", "{sent}");
    assert_eq!(sent["max_tokens"], 64);

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let events = response_events(app.post("/v1/responses", &streamed).await).await;
    assert_eq!(streamed_text(&events), "Bonjour from Claude");
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "response.completed");
    assert!(
        data["response"]["usage"]["total_tokens"].as_u64().unwrap() > 0,
        "{data}"
    );
}

#[tokio::test]
async fn what_the_gateway_cannot_do_is_refused_in_the_openai_shape() {
    let (up, app, model) = openai_app().await;
    let cases = [
        (
            json!({"model": model, "input": "x", "previous_response_id": "resp_1"}),
            400,
            "previous_response_id",
        ),
        (
            json!({"model": model, "input": "x", "conversation": {"id": "conv_1"}}),
            400,
            "conversation",
        ),
        (
            json!({"model": model, "input": "x", "tools": [{"type": "web_search"}],
                   "tool_choice": {"type": "web_search"}}),
            400,
            "tool_choice",
        ),
        (
            json!({"model": model, "input": [{"type": "item_reference", "id": "msg_1"}]}),
            400,
            "input[0].type",
        ),
        (json!({"input": "x"}), 400, "model"),
        (
            json!({"model": model, "input": "x", "max_output_tokens": "many"}),
            400,
            "max_output_tokens",
        ),
        (
            json!({"model": "no-such-model", "input": "x"}),
            404,
            "model",
        ),
    ];
    for (body, status, param) in cases {
        let resp = app.post("/v1/responses", &body).await;
        assert_eq!(resp.status(), status, "{body}");
        assert_eq!(header(&resp, "x-uat-cache"), "bypass", "{body}");
        let err: Value = resp.json().await.unwrap();
        assert!(err["error"]["message"].is_string(), "{err}");
        assert_eq!(err["error"]["type"], "invalid_request_error", "{err}");
        assert_eq!(err["error"]["param"], param, "{body}: {err}");
    }
    let resp = app
        .client
        .post(app.at("/v1/responses"))
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON"),
        "{err}"
    );
    assert_eq!(up.calls(), 0, "no refused request reached the upstream");
}

#[tokio::test]
async fn an_upstream_500_on_every_provider_kind_is_a_502() {
    for wire in [Wire::OpenAi, Wire::Anthropic, Wire::Ollama] {
        let up = FakeUpstream::start(wire, "down").await.unwrap();
        up.set_default(Behavior::Status(500));
        let kind = match wire {
            Wire::OpenAi => "openai",
            Wire::Anthropic => "anthropic",
            Wire::Ollama => "ollama",
        };
        let app = spawn_app(&provider_toml("d", kind, &up.base_url(), "")).await;
        for stream in [false, true] {
            let resp = app
                .post(
                    "/v1/responses",
                    &json!({"model": "down-model", "input": "x", "stream": stream}),
                )
                .await;
            assert_eq!(resp.status(), 502, "{kind} stream={stream}");
            assert_eq!(header(&resp, "x-uat-provider"), "d");
            assert_eq!(header(&resp, "x-uat-cache"), "bypass");
            let err: Value = resp.json().await.unwrap();
            assert_eq!(err["error"]["type"], "upstream_error", "{kind}: {err}");
            assert!(err["error"]["message"].is_string(), "{err}");
        }
        assert!(up.calls() >= 2, "{kind}");
    }
}

/// With API keys: a key's `models` holds, and the answers, plain or
/// streamed, spend its `tokens_per_minute`.
#[tokio::test]
async fn keys_scope_and_meter_responses() {
    let name = unique("respkey");
    let up = FakeUpstream::start(Wire::OpenAi, &name).await.unwrap();
    // 9 words: each answer spends 7 + 9 tokens.
    up.set_reply(&["word"; 9].join(" "));
    let model = format!("{name}-model");
    let toml = format!(
        "{}{}{}",
        provider_toml("p", "openai", &up.base_url(), ""),
        key_toml(
            "metered",
            "sk-resp-metered-0123",
            "tokens_per_minute = 1000"
        ),
        key_toml("narrow", "sk-resp-narrow-01234", "models = [\"gpt-4o\"]"),
    );
    let app = spawn_app(&toml).await;
    let send = |secret: &str, body: Value| {
        app.client
            .post(app.at("/v1/responses"))
            .bearer_auth(secret)
            .json(&body)
            .send()
    };
    let resp = send(
        "sk-resp-narrow-01234",
        json!({"model": model, "input": "a"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 403, "not among the key's models");
    assert_eq!(up.calls(), 0);

    let left = |resp: &reqwest::Response| -> u64 {
        header(resp, "x-ratelimit-remaining-tokens")
            .parse()
            .unwrap()
    };
    let resp = send(
        "sk-resp-metered-0123",
        json!({"model": model, "input": "a"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let r: Value = resp.json().await.unwrap();
    assert_eq!(r["usage"]["total_tokens"], 16, "{r}");
    let resp = send(
        "sk-resp-metered-0123",
        json!({"model": model, "input": "b", "stream": true}),
    )
    .await
    .unwrap();
    let before_stream = left(&resp);
    // The usage reported is what is spent, not an estimate (a token per
    // four bytes of the request and of the answer: far more). The refill
    // is 1 token per 60 ms: allow a little.
    assert!(
        (1000 - 16..=1000 - 16 + 5).contains(&before_stream),
        "{before_stream} left after an answer of 16 tokens"
    );
    let events = response_events(resp).await;
    assert_eq!(events.last().unwrap().0, "response.completed");
    let resp = send(
        "sk-resp-metered-0123",
        json!({"model": model, "input": "c"}),
    )
    .await
    .unwrap();
    // This answer's 16 tokens are taken by now too.
    let after_stream = left(&resp);
    assert!(
        (before_stream - 16 - 16..=before_stream - 16 - 16 + 5).contains(&after_stream),
        "{after_stream} left after a stream and an answer of 16 tokens each ({before_stream} before)"
    );
}

/// Codex's `apply_patch` for gpt-5 models is a freeform `custom` tool, and
/// it offers built-in tools (`web_search`, `local_shell`) the gateway
/// cannot run: these are left out, and named in `x-uat-dropped-tools`.
#[tokio::test]
async fn custom_tools_are_answered_as_custom_calls_and_built_ins_are_left_out() {
    let (up, app, model) = openai_app().await;
    let tools = json!([
        {"type": "custom", "name": "apply_patch", "description": "Edit files.",
         "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
        {"type": "web_search"},
        {"type": "local_shell"},
    ]);
    let patch = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch";
    let call = Behavior::ToolCall {
        name: "apply_patch".into(),
        arguments: json!({ "input": patch }).to_string(),
    };
    up.push(call.clone());
    let ask = json!({"model": model, "input": "Add a.txt", "tools": tools});
    let resp = app.post("/v1/responses", &ask).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-uat-dropped-tools"),
        "web_search,local_shell"
    );
    let r: Value = resp.json().await.unwrap();
    let sent = up.last_body().unwrap();
    assert_eq!(sent["tools"].as_array().unwrap().len(), 1, "{sent}");
    assert_eq!(sent["tools"][0]["function"]["name"], "apply_patch");
    assert_eq!(
        sent["tools"][0]["function"]["parameters"]["properties"]["input"]["type"],
        "string"
    );
    let ctc = &r["output"][0];
    assert_eq!(ctc["type"], "custom_tool_call", "{r}");
    assert_eq!(ctc["call_id"], "call_fake");
    assert_eq!(ctc["name"], "apply_patch");
    assert_eq!(ctc["input"], patch);
    assert_eq!(r["tools"], tools, "echoed as sent");

    // The same, streamed.
    up.push(call);
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let resp = app.post("/v1/responses", &streamed).await;
    assert_eq!(
        header(&resp, "x-uat-dropped-tools"),
        "web_search,local_shell"
    );
    let events = response_events(resp).await;
    let input: String = events
        .iter()
        .filter(|(n, _)| n == "response.custom_tool_call_input.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(input, patch);
    let done = events
        .iter()
        .find(|(n, d)| n == "response.output_item.done" && d["item"]["type"] == "custom_tool_call")
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(done.1["item"]["input"], patch);
    assert_eq!(events.last().unwrap().0, "response.completed");

    // Codex sends the call and its output back.
    let input = json!([
        {"role": "user", "content": "Add a.txt"},
        ctc,
        {"type": "custom_tool_call_output", "call_id": "call_fake", "output": "Done!"},
    ]);
    let resp = app
        .post(
            "/v1/responses",
            &json!({"model": model, "input": input, "tools": tools}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let sent = up.last_body().unwrap();
    let args = sent["messages"][1]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(args).unwrap(),
        json!({ "input": patch })
    );
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "content": "Done!", "tool_call_id": "call_fake"})
    );
}

/// The bridge works with Ollama too (`/api/chat`, translated).
#[tokio::test]
async fn a_response_through_ollama_streamed_or_not() {
    let ollama = FakeUpstream::start(Wire::Ollama, "llama").await.unwrap();
    ollama.set_reply("Hello from Ollama");
    let app = spawn_app(&provider_toml("o", "ollama", &ollama.base_url(), "")).await;
    let body = json!({"model": "llama-model", "instructions": "Be brief.", "input": "Hi"});
    let resp = app.post("/v1/responses", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-uat-provider"), "o");
    let r: Value = resp.json().await.unwrap();
    assert_eq!(output_text(&r), "Hello from Ollama", "{r}");
    assert_eq!(r["status"], "completed");
    assert!(r["usage"]["total_tokens"].as_u64().unwrap() > 0, "{r}");
    let sent = ollama.last_body().unwrap();
    assert_eq!(sent["messages"][0]["role"], "system", "{sent}");
    assert_eq!(sent["messages"][1]["content"], "Hi");

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let events = response_events(app.post("/v1/responses", &streamed).await).await;
    assert_eq!(streamed_text(&events), "Hello from Ollama");
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "response.completed");
    assert_eq!(output_text(&data["response"]), "Hello from Ollama");
    assert!(
        data["response"]["usage"]["total_tokens"].as_u64().unwrap() > 0,
        "{data}"
    );
}

/// The warnings logged, recorded for every test of this binary (there is
/// no other subscriber): each event's message and fields.
fn warnings() -> &'static std::sync::Mutex<Vec<String>> {
    use std::fmt::Write;
    use std::sync::{Mutex, OnceLock};
    use tracing::span;

    struct Fields(String);
    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
            let _ = write!(self.0, "{}={:?} ", f.name(), v);
        }
    }
    struct Recorder;
    impl tracing::Subscriber for Recorder {
        fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
            *m.level() <= tracing::Level::WARN
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, e: &tracing::Event<'_>) {
            let mut f = Fields(String::new());
            e.record(&mut f);
            if let Some(w) = LOGGED.get() {
                w.lock().unwrap().push(f.0);
            }
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }
    static LOGGED: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    LOGGED.get_or_init(|| {
        tracing::subscriber::set_global_default(Recorder)
            .expect("no other subscriber in the tests");
        Mutex::new(Vec::new())
    })
}

/// Failures are logged as responses' ("response failed upstream"), and
/// built-in tools left out are warned about once per request.
#[tokio::test]
async fn failures_and_tools_left_out_are_logged_once_per_request() {
    let logged = warnings();
    let name = unique("resplog");
    let up = FakeUpstream::start(Wire::OpenAi, &name).await.unwrap();
    up.set_default(Behavior::Status(500));
    let app = spawn_app(&provider_toml("p", "openai", &up.base_url(), "")).await;
    let model = format!("{name}-model");
    let body = json!({"model": model,
        "tools": [{"type": "web_search"}, {"type": "file_search"}],
        "input": [{"role": "user", "content": "x"}, {"type": "web_search_call", "id": "ws"}]});
    let resp = app.post("/v1/responses", &body).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(
        header(&resp, "x-uat-dropped-tools"),
        "web_search,file_search"
    );
    let ours: Vec<String> = logged
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.contains(&model))
        .cloned()
        .collect();
    let count = |what: &str| ours.iter().filter(|w| w.contains(what)).count();
    assert_eq!(count("response failed upstream"), 1, "{ours:?}");
    assert_eq!(count("chat completion failed upstream"), 0, "{ours:?}");
    assert_eq!(count("left out"), 1, "{ours:?}");
    let left_out = ours.iter().find(|w| w.contains("left out")).unwrap();
    assert!(
        left_out.contains("web_search,file_search") && left_out.contains("web_search_call"),
        "{left_out}"
    );
}
