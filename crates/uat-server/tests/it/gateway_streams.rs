//! Gateway streams: translation for each provider kind, failures before and
//! after the first byte, slow first token, client cancel.

use crate::common::*;
use serde_json::{Value, json};
use std::time::Duration;
use uat_testkit::{Behavior, FakeUpstream, Wire};

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
        "stop": ["\n\n", "END"]
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
    // Anthropic refuses whitespace-only stop sequences: left out.
    assert_eq!(rec.body["stop_sequences"], json!(["END"]));

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

    // A structured answer (response_format) comes through a forced tool
    // call, given back as the message's content.
    up.push(Behavior::Body(
        json!({"id": "msg_s", "type": "message", "role": "assistant", "model": "claude-x",
               "content": [{"type": "tool_use", "id": "toolu_1", "name": "json_response", "input": {"city": "Oslo"}}],
               "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 6}})
        .to_string(),
    ));
    let mut body = chat_body("claude-x", false);
    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "place",
        "schema": {"type": "object", "properties": {"city": {"type": "string"}}}}});
    let resp = app.chat(body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(content).unwrap(),
        json!({"city": "Oslo"})
    );
    assert!(
        v["choices"][0]["message"].get("tool_calls").is_none(),
        "{v}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        up.last_body().unwrap()["tool_choice"],
        json!({"type": "tool", "name": "json_response"})
    );
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

/// On the Ollama and Anthropic wires too, a non-streamed answer slower than
/// `first_byte_timeout` is served (only `timeout` bounds it), while a
/// stream whose first token is that late times out.
#[tokio::test]
async fn ollama_and_anthropic_non_streamed_answers_are_bounded_by_the_total_timeout() {
    for (wire, kind) in [(Wire::Ollama, "ollama"), (Wire::Anthropic, "anthropic")] {
        let up = FakeUpstream::start(wire, "x").await.unwrap();
        up.set_default(Behavior::Delay(Duration::from_millis(500)));
        let extra = "first_byte_timeout = \"150ms\"\ntimeout = \"5s\"";
        let app = spawn_app(&provider_toml("x", kind, &up.base_url(), extra)).await;
        let resp = app.chat(chat_body("x-model", false)).await;
        assert_eq!(resp.status(), 200, "{kind}");
        up.set_default(Behavior::SlowFirstToken(Duration::from_millis(500)));
        let resp = app.chat(chat_body("x-model", true)).await;
        assert_eq!(
            resp.status(),
            503,
            "{kind}: the stream's first token is late"
        );
    }
}
