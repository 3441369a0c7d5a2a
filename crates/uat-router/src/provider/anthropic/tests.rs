//! Request and stream translation, defaults and refusals of the Anthropic adapter.

use super::*;
use crate::provider::{request, tools_request};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::AsyncWriteExt;

fn collect(lines: &[&'static str], include_usage: bool) -> Vec<Result<Value, Failure>> {
    collect_from(lines, StreamState::new("claude", include_usage))
}

fn collect_from(lines: &[&'static str], st: StreamState) -> Vec<Result<Value, Failure>> {
    crate::provider::translated(lines, |s| translate(s, st))
}

#[test]
fn events_become_openai_chunks() {
    let out = collect(
        &[
            "event: message_start",
            r#"data: {"type":"message_start","message":{"id":"msg_1","model":"claude","usage":{"input_tokens":9,"output_tokens":1}}}"#,
            "",
            r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"data: {"type":"ping"}"#,
            r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            r#"data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"tu_1","name":"get"}}"#,
            r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
            r#"data: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":5}}"#,
            r#"data: {"type":"message_stop"}"#,
        ],
        true,
    );
    let v: Vec<Value> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(v.len(), 6);
    assert_eq!(v[0]["id"], "msg_1");
    assert_eq!(v[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(v[1]["choices"][0]["delta"]["content"], "Hi");
    assert_eq!(
        v[2]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "get"
    );
    assert_eq!(
        v[3]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
        "{\"a\":"
    );
    assert_eq!(v[4]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v[5]["usage"],
        json!({"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14})
    );
}

#[test]
fn error_event_and_cut_stream_fail() {
    let out = collect(
        &[r#"data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#],
        false,
    );
    assert_eq!(out[0].as_ref().unwrap_err().message, "Overloaded");
    let out = collect(
        &[r#"data: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":1}}}"#],
        false,
    );
    assert_eq!(
        out.last().unwrap().as_ref().unwrap_err().kind,
        FailureKind::Interrupted
    );
}

#[test]
fn request_translation() {
    let req: ChatRequest = serde_json::from_value(json!({
        "model": "x",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": "and kind"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "tool", "tool_call_id": "c2", "content": "43"}
        ],
        "stop": ["END"], "temperature": 0.2,
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}],
        "tool_choice": "required"
    }))
    .unwrap();
    let b = messages_body("claude-x", &req, false, DEFAULT_MAX_TOKENS).unwrap();
    assert_eq!(b["system"], "be brief\n\nand kind");
    assert_eq!(b["max_tokens"], DEFAULT_MAX_TOKENS);
    assert_eq!(
        b["messages"][0]["content"][1]["source"]["media_type"],
        "image/png"
    );
    assert_eq!(b["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(b["messages"][1]["content"][0]["input"], json!({"x": 1}));
    assert_eq!(b["messages"][2]["content"][0]["tool_use_id"], "c1");
    assert_eq!(b["messages"][2]["content"][1]["tool_use_id"], "c2");
    assert_eq!(
        b["messages"].as_array().unwrap().len(),
        3,
        "one turn of results"
    );
    assert_eq!(b["stop_sequences"], json!(["END"]));
    assert_eq!(b["tools"][0]["input_schema"], json!({"type": "object"}));
    assert_eq!(b["tool_choice"], json!({"type": "any"}));
    assert!(b.get("stream").is_none());
}

/// `response_format` asks for JSON: the request forces a call to the
/// answer tool with the schema, or offers it beside the client's own tools
/// with a call required; `text` asks for nothing.
#[test]
fn response_format_becomes_a_forced_answer_tool() {
    let schema =
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
    let req: ChatRequest = serde_json::from_value(json!({
        "model": "x", "messages": [{"role": "user", "content": "where?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": true}}
    }))
    .unwrap();
    let b = messages_body("claude-x", &req, false, DEFAULT_MAX_TOKENS).unwrap();
    assert_eq!(b["tools"][0]["name"], JSON_TOOL);
    assert_eq!(b["tools"][0]["input_schema"], schema);
    assert_eq!(b["tool_choice"], json!({"type": "tool", "name": JSON_TOOL}));
    let object: ChatRequest = serde_json::from_value(json!({
        "model": "x", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"}
    }))
    .unwrap();
    let b = messages_body("claude-x", &object, false, DEFAULT_MAX_TOKENS).unwrap();
    assert_eq!(b["tools"][0]["input_schema"], json!({"type": "object"}));
    // `text` asks for no structure: nothing is forced.
    let req: ChatRequest = serde_json::from_value(json!({"model": "x",
        "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "text"}}))
    .unwrap();
    let b = messages_body("claude-x", &req, false, DEFAULT_MAX_TOKENS).unwrap();
    assert!(
        b.get("tool_choice").is_none() && b.get("tools").is_none(),
        "{b}"
    );
    // With the request's own tools (an agent's typed final output: the
    // OpenAI Agents SDK, Vercel's AI SDK, LangChain send both), the answer
    // tool goes beside them and some call is required: one of theirs, or
    // the answer. `none` forces the answer; a named choice stays.
    let f =
        json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}});
    let p = anthropic(None);
    for (choice, want) in [
        (Value::Null, json!({"type": "any"})),
        (json!("auto"), json!({"type": "any"})),
        (json!("required"), json!({"type": "any"})),
        (
            json!({"type": "function", "function": {"name": "f"}}),
            json!({"type": "tool", "name": "f"}),
        ),
    ] {
        let req = request(
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
            "tools": [f], "tool_choice": choice}),
        );
        assert!(p.check(&req).is_ok(), "{choice}");
        let b = messages_body("claude-x", &req, false, DEFAULT_MAX_TOKENS).unwrap();
        let names: Vec<&str> = b["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["f", JSON_TOOL], "{choice}");
        assert_eq!(b["tools"][1]["input_schema"], schema);
        assert_eq!(b["tool_choice"], want, "{choice}");
    }
    let req = request(
        json!({"response_format": {"type": "json_object"}, "tools": [f], "tool_choice": "none"}),
    );
    let b = messages_body("claude-x", &req, false, DEFAULT_MAX_TOKENS).unwrap();
    assert_eq!(b["tools"].as_array().unwrap().len(), 1, "{b}");
    assert_eq!(b["tools"][0]["name"], JSON_TOOL);
    assert_eq!(b["tool_choice"], json!({"type": "tool", "name": JSON_TOOL}));
    // One call at a time stays so.
    let req = request(
        json!({"response_format": {"type": "json_object"}, "tools": [f], "parallel_tool_calls": false}),
    );
    let b = messages_body("claude-x", &req, false, DEFAULT_MAX_TOKENS).unwrap();
    assert_eq!(
        b["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
}

/// With the request's own tools beside the answer tool, a turn's stop
/// says which it was: a call of the answer tool alone is the answer
/// (content, `stop`); a call of one of theirs is `tool_calls`.
#[test]
fn a_structured_answer_beside_tools_tells_calls_from_the_answer() {
    let answer = [
        r#"data: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":3,"output_tokens":0}}}"#,
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_a","name":"json_response","input":{}}}"#,
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"city\":\"Oslo\"}"}}"#,
        r#"data: {"type":"content_block_stop","index":0}"#,
        r#"data: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":5}}"#,
        r#"data: {"type":"message_stop"}"#,
    ];
    let call = [
        r#"data: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":3,"output_tokens":0}}}"#,
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_f","name":"f","input":{}}}"#,
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
        r#"data: {"type":"content_block_stop","index":0}"#,
        r#"data: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":5}}"#,
        r#"data: {"type":"message_stop"}"#,
    ];
    for (lines, want) in [(&answer, "stop"), (&call, "tool_calls")] {
        let mut st = StreamState::new("claude", false);
        st.structured = true;
        let chunks: Vec<Value> = collect_from(lines, st)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let finish: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c.pointer("/choices/0/finish_reason"))
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finish, [&json!(want)], "{chunks:?}");
        let content: String = chunks
            .iter()
            .filter_map(|c| {
                c.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect();
        if want == "stop" {
            assert_eq!(content, r#"{"city":"Oslo"}"#);
        } else {
            assert!(content.is_empty(), "{content}");
            assert!(
                chunks
                    .iter()
                    .any(|c| c.pointer("/choices/0/delta/tool_calls/0/function/name")
                        == Some(&json!("f")))
            );
        }
    }
}

/// An empty text part beside an image (what chat UIs send for an image
/// uploaded without words) is left out: Anthropic refuses empty text
/// blocks, OpenAI takes them. A user turn of empty text only is left out.
#[test]
fn empty_text_parts_are_left_out() {
    let image = json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}});
    let req = request(json!({"messages": [
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": " \n"}, image]},
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": [{"type": "text", "text": ""}]},
        {"role": "user", "content": "and this?"},
    ]}));
    let b = messages_body("claude-x", &req, false, DEFAULT_MAX_TOKENS).unwrap();
    let first = b["messages"][0]["content"].as_array().unwrap();
    assert_eq!(first.len(), 1, "{b}");
    assert_eq!(first[0]["type"], "image");
    let texts: Vec<String> = b["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].to_string())
        .collect();
    assert!(
        texts.iter().all(|t| !t.contains(r#""text":"""#)),
        "{texts:?}"
    );
    assert_eq!(b["messages"].as_array().unwrap().len(), 3, "{b}");
}

/// A structured answer streamed as the forced call's input comes out as
/// content deltas ending in `stop`, not as a tool call.
#[test]
fn a_streamed_structured_answer_is_content() {
    let mut st = StreamState::new("claude", false);
    st.structured = true;
    let out = collect_from(
        &[
            r#"data: {"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":9,"output_tokens":1}}}"#,
            r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"json_response","input":{}}}"#,
            r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"city\": "}}"#,
            r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"\"Oslo\"}"}}"#,
            r#"data: {"type":"content_block_stop","index":0}"#,
            r#"data: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":7}}"#,
            r#"data: {"type":"message_stop"}"#,
        ],
        st,
    );
    let v: Vec<Value> = out.into_iter().map(Result::unwrap).collect();
    let text: String = v
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, r#"{"city": "Oslo"}"#);
    assert!(
        v.iter()
            .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none())
    );
    assert_eq!(v.last().unwrap()["choices"][0]["finish_reason"], "stop");
}

fn anthropic(default_max_tokens: Option<u32>) -> Anthropic {
    let mut cfg = ProviderConfig::new(
        "c",
        ProviderKind::Anthropic,
        Some("http://127.0.0.1:9".into()),
    );
    cfg.default_max_tokens = default_max_tokens;
    Anthropic::new(&cfg).unwrap()
}

/// No client limit: the model's own (not 4096, which cut long answers
/// short), the configured `default_max_tokens` over it, 4096 for a model
/// the table does not know; a client's limit goes as it is.
#[test]
fn max_tokens_default_is_the_models_limit() {
    let plain = request(json!({}));
    let sent = |p: &Anthropic, model: &str, r: &ChatRequest| {
        p.body(model, r, false).unwrap()["max_tokens"].clone()
    };
    let p = anthropic(None);
    assert_eq!(sent(&p, "claude-sonnet-4-5-20250929", &plain), 64_000);
    assert_eq!(sent(&p, "claude-opus-4-1", &plain), 32_000);
    assert_eq!(sent(&p, "claude-3-5-haiku-latest", &plain), 8192);
    assert_eq!(sent(&p, "claude-x", &plain), DEFAULT_MAX_TOKENS);
    let own = request(json!({"max_completion_tokens": 200_000}));
    assert_eq!(sent(&p, "claude-opus-4-1", &own), 200_000);
    let p = anthropic(Some(1000));
    assert_eq!(sent(&p, "claude-sonnet-4-5", &plain), 1000);
    assert_eq!(sent(&p, "claude-x", &plain), 1000);
    assert_eq!(sent(&p, "claude-x", &request(json!({"max_tokens": 7}))), 7);
}

/// `n` > 1 and logprobs cannot be done by Anthropic: refused as
/// Unsupported naming the field (an alias fails over; the client gets a
/// 400), where before one choice and no logprobs came back.
#[test]
fn n_and_logprobs_are_refused_not_dropped() {
    let p = anthropic(None);
    for (body, param, text) in [
        (
            json!({"n": 2}),
            "n",
            "n > 1 is not supported by anthropic providers",
        ),
        (json!({"logprobs": true}), "logprobs", "logprobs"),
        (
            json!({"logprobs": true, "top_logprobs": 3}),
            "logprobs",
            "logprobs",
        ),
        (json!({"top_logprobs": 2}), "top_logprobs", "logprobs"),
    ] {
        let f = p.check(&request(body.clone())).unwrap_err();
        assert_eq!(f.kind, FailureKind::Unsupported, "{body}");
        assert!(f.message.contains(text), "{body}: {}", f.message);
        let u = f.upstream.unwrap();
        assert_eq!(u.param.as_deref(), Some(param), "{body}");
        assert_eq!(u.kind.as_deref(), Some("invalid_request_error"));
    }
    for body in [
        json!({"n": 1}),
        json!({"n": null}),
        json!({"logprobs": false}),
        json!({"top_logprobs": 0}),
    ] {
        assert!(p.check(&request(body.clone())).is_ok(), "{body}");
    }
}

/// Anthropic has no text completion API for current models: a text
/// completion is refused before any attempt (an alias fails over, a direct
/// request gets a 400 naming `model`), pointing at the chat endpoint.
#[tokio::test]
async fn text_completions_are_refused() {
    let p = anthropic(None);
    let req = crate::provider::completion_request(json!({"max_tokens": 5}));
    let f = p.check_completion(&req).unwrap_err();
    assert_eq!(f.kind, FailureKind::Unsupported);
    assert!(f.message.contains("/v1/chat/completions"), "{}", f.message);
    let u = f.upstream.unwrap();
    assert_eq!(u.param.as_deref(), Some("model"));
    assert_eq!(u.code.as_deref(), Some("unsupported_endpoint"));
    // Called anyway, it sends nothing (no upstream here to answer).
    let f = p.completion("claude", &req).await.unwrap_err();
    assert_eq!(f.kind, FailureKind::Unsupported);
    let f = p.completion_stream("claude", &req).await.err().unwrap();
    assert_eq!(f.kind, FailureKind::Unsupported);
}

/// An http(s) image URL goes as a URL source (Anthropic fetches it), the
/// URL alone as some clients send it too; a data: URL that is not base64
/// is refused rather than sent as a URL Anthropic cannot fetch.
#[test]
fn image_urls_become_url_sources() {
    let req = request(json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        {"type": "image_url", "image_url": "http://example.com/dog.png"},
    ]}]}));
    let b = messages_body("claude-x", &req, false, DEFAULT_MAX_TOKENS).unwrap();
    let parts = &b["messages"][0]["content"];
    assert_eq!(
        parts[1],
        json!({"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}})
    );
    assert_eq!(
        parts[2],
        json!({"type": "image", "source": {"type": "url", "url": "http://example.com/dog.png"}})
    );
    let req = request(json!({"messages": [
        {"role": "user", "content": "first"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/svg+xml,<svg/>"}}]},
    ]}));
    let f = messages_body("claude-x", &req, false, DEFAULT_MAX_TOKENS).unwrap_err();
    assert_eq!(f.kind, FailureKind::Unsupported);
    assert_eq!(
        f.upstream.unwrap().param.as_deref(),
        Some("messages[1].content[0].image_url.url")
    );
}

/// Content parts the adapter does not translate are refused as
/// Unsupported naming the part's `type`, where before they were left out
/// of the request: audio, a file, an unknown type in a user turn; anything
/// but text in a turn sent as its text (an image in a system prompt or a
/// tool result). Text and images in user turns, text elsewhere, still go.
#[test]
fn other_content_parts_are_refused_not_dropped() {
    let p = anthropic(None);
    let text = json!({"type": "text", "text": "look"});
    let image = json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}});
    for (role, part, t) in [
        (
            "user",
            json!({"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}),
            Some("input_audio"),
        ),
        (
            "user",
            json!({"type": "file", "file": {"file_data": "data:application/pdf;base64,AAA", "filename": "a.pdf"}}),
            Some("file"),
        ),
        ("user", json!({"type": "hologram"}), Some("hologram")),
        ("user", json!({"text": "no type"}), None),
        ("system", image.clone(), Some("image_url")),
        ("tool", image.clone(), Some("image_url")),
        (
            "user",
            json!({"type": "refusal", "refusal": "no"}),
            Some("refusal"),
        ),
    ] {
        let mut msg = json!({"role": role, "content": [text.clone(), part.clone()]});
        if role == "tool" {
            msg["tool_call_id"] = json!("c1");
        }
        let req = request(json!({"messages": [{"role": "user", "content": "hi"}, msg]}));
        let f = p.check(&req).unwrap_err();
        assert_eq!(f.kind, FailureKind::Unsupported, "{role} {part}");
        match t {
            Some(t) => assert_eq!(
                f.message,
                format!(
                    "content parts of type `{t}` in {role} messages are not supported by anthropic providers"
                )
            ),
            None => assert!(f.message.contains("without a type"), "{}", f.message),
        }
        let u = f.upstream.unwrap();
        assert_eq!(u.param.as_deref(), Some("messages[1].content[1].type"));
        assert_eq!(u.code.as_deref(), Some("unsupported_value"));
        assert_eq!(
            messages_body("claude-x", &req, false, DEFAULT_MAX_TOKENS)
                .unwrap_err()
                .kind,
            FailureKind::Unsupported,
            "{role} {part}"
        );
    }
    let ok = request(json!({"messages": [
        {"role": "system", "content": [text.clone()]},
        {"role": "user", "content": [text.clone(), image]},
        {"role": "assistant", "content": [text.clone()]},
        {"role": "user", "content": "and this?"},
        // A replayed assistant refusal is its text.
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help with that."}]},
        {"role": "user", "content": "why not?"},
    ]}));
    assert!(p.check(&ok).is_ok());
    let b = messages_body("claude-x", &ok, false, DEFAULT_MAX_TOKENS).unwrap();
    assert_eq!(b["system"], "look");
    assert_eq!(b["messages"][0]["content"][1]["type"], "image");
    assert_eq!(b["messages"][1]["content"][0]["text"], "look");
    assert_eq!(
        b["messages"][3]["content"][0]["text"], "I can't help with that.",
        "{b}"
    );
}

#[test]
fn stop_reasons() {
    assert_eq!(finish_reason(Some("end_turn")), "stop");
    assert_eq!(finish_reason(Some("stop_sequence")), "stop");
    assert_eq!(finish_reason(Some("max_tokens")), "length");
    assert_eq!(finish_reason(Some("tool_use")), "tool_calls");
    assert_eq!(
        finish_reason(Some("model_context_window_exceeded")),
        "length"
    );
}

/// What OpenAI accepts and Anthropic refuses with a 400 is adapted: empty
/// turns left out, temperature above 1 clamped, top_p dropped beside a
/// temperature, whitespace-only stop sequences left out.
#[test]
fn openai_values_anthropic_refuses_are_adapted() {
    let req: ChatRequest = serde_json::from_value(json!({
        "model": "x",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": ""},
            {"role": "user", "content": []},
            {"role": "user", "content": "again"}
        ],
        "temperature": 1.7, "top_p": 0.5, "stop": ["\n", "  ", "END"]
    }))
    .unwrap();
    let b = messages_body("claude-x", &req, false, DEFAULT_MAX_TOKENS).unwrap();
    let texts: Vec<&Value> = b["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["content"])
        .collect();
    assert_eq!(texts, [&json!("hi"), &json!("again")]);
    assert_eq!(b["temperature"], 1.0);
    assert!(b.get("top_p").is_none());
    assert_eq!(b["stop_sequences"], json!(["END"]));
    let only_top_p: ChatRequest = serde_json::from_value(json!({
        "model": "x", "messages": [{"role": "user", "content": "hi"}], "top_p": 0.5, "stop": "\n"
    }))
    .unwrap();
    let b = messages_body("claude-x", &only_top_p, false, DEFAULT_MAX_TOKENS).unwrap();
    assert_eq!(b["top_p"], 0.5);
    assert!(b.get("stop_sequences").is_none());
}

/// Anthropic's 400 for input + max_tokens over the window gives what the
/// window leaves; anything else gives nothing (the 400 goes through).
#[test]
fn the_context_limit_400_gives_the_room_left() {
    let f = |status: u16, msg: &str| Failure::from_status(status, msg.to_owned(), None);
    let exact = "input length and `max_tokens` exceed context limit: 178959 + 64000 > 200000, decrease input length or `max_tokens` and try again";
    assert_eq!(fitted_max_tokens(&f(400, exact)), Some(21_041));
    assert_eq!(fitted_max_tokens(&f(500, exact)), None);
    for msg in [
        "input length and `max_tokens` exceed context limit: 200000 + 64000 > 200000, decrease",
        "input length and `max_tokens` exceed context limit: 178959 + 64000 > lots",
        "input length and `max_tokens` exceed context limit: 178959 - 64000 > 200000",
        "prompt is too long: 210000 tokens > 200000 maximum",
        "fake error",
    ] {
        assert_eq!(fitted_max_tokens(&f(400, msg)), None, "{msg}");
    }
}

/// Reads one request from `conn` (the head, then `content-length` bytes)
/// and gives its JSON body; what follows stays in `buf`. `None` once the
/// connection closes.
async fn read_request(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<Value> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    let (head, len) = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            break (end + 4, len);
        }
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    while buf.len() < head + len {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = serde_json::from_slice(&buf[head..head + len]).unwrap();
    buf.drain(..head + len);
    Some(body)
}

/// An Anthropic stand-in on a local port: every connection is handed to
/// `serve` with the request counter the stand-in shares with its caller.
async fn stand_in<F, Fut>(serve: F) -> (std::net::SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream, Arc<AtomicUsize>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve(conn, counted.clone()));
        }
    });
    (addr, calls)
}

/// An Anthropic stand-in on a local port: the first request gets, after
/// `delay`, the context-limit 400 for 1000 input tokens in a window of
/// 2000; later ones no answer at all. Counts the requests.
async fn context_limit_then_silence(delay: Duration) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    stand_in(move |mut conn, calls| async move {
        let mut buf = Vec::new();
        while let Some(body) = read_request(&mut conn, &mut buf).await {
            if calls.fetch_add(1, Ordering::SeqCst) > 0 {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(delay).await;
            let msg = format!(
                "input length and `max_tokens` exceed context limit: 1000 + {} > 2000, decrease input length or `max_tokens` and try again",
                body["max_tokens"]
            );
            let err = json!({"type": "error", "error": {"type": "invalid_request_error", "message": msg}}).to_string();
            let resp = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{err}",
                err.len()
            );
            if conn.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// The send again after Anthropic's context-limit 400 shares the first
/// send's time: a request whose retry gets no answer fails at `timeout`
/// (here 1 s, the 400 after 0.6 s), where the retry had a `timeout` of its
/// own and the request took 1.6 s. Streamed, the same with
/// `first_byte_timeout`.
#[tokio::test]
async fn the_context_limit_retry_shares_the_first_sends_time() {
    for stream in [false, true] {
        let (addr, calls) = context_limit_then_silence(Duration::from_millis(600)).await;
        let mut cfg =
            ProviderConfig::new("c", ProviderKind::Anthropic, Some(format!("http://{addr}")));
        cfg.timeout = Duration::from_secs(1);
        cfg.first_byte_timeout = Duration::from_secs(1);
        let p = Anthropic::new(&cfg).unwrap();
        let req = request(json!({}));
        let start = std::time::Instant::now();
        let f = if stream {
            p.chat_stream("claude-x", &req).await.err().unwrap()
        } else {
            p.chat("claude-x", &req).await.unwrap_err()
        };
        let took = start.elapsed();
        assert_eq!(f.kind, FailureKind::Timeout, "stream {stream}: {f}");
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "stream {stream}"
        );
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_millis(1350),
            "stream {stream}: took {took:?}"
        );
    }
}

/// A streamed call to a tool without parameters (Anthropic sends no JSON,
/// or one empty piece) has "{}" for arguments, as the non-streamed answer
/// has, where the client got "", which is not JSON; a call with arguments
/// keeps them as they came.
#[test]
fn a_streamed_call_without_parameters_has_empty_object_arguments() {
    let out = collect(
        &[
            r#"data: {"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":9,"output_tokens":1}}}"#,
            r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"tu_1","name":"now","input":{}}}"#,
            r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            r#"data: {"type":"content_block_stop","index":0}"#,
            r#"data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"tu_2","name":"get","input":{}}}"#,
            r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
            r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#,
            r#"data: {"type":"content_block_stop","index":1}"#,
            r#"data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"tu_3","name":"ping","input":{}}}"#,
            r#"data: {"type":"content_block_stop","index":2}"#,
            r#"data: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":5}}"#,
            r#"data: {"type":"message_stop"}"#,
        ],
        false,
    );
    let mut args = [String::new(), String::new(), String::new()];
    for c in out {
        let c = c.unwrap();
        for call in c["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let k = call["index"].as_u64().unwrap() as usize;
            args[k].push_str(call["function"]["arguments"].as_str().unwrap());
        }
    }
    assert_eq!(args, ["{}", r#"{"a":1}"#, "{}"]);
}

/// `parallel_tool_calls: false` is Anthropic's `disable_parallel_tool_use`
/// on the tool choice (auto when the client gave none), where it was left
/// out and Claude made parallel calls; not on `none`, which has no such
/// flag, nor without tools.
#[test]
fn parallel_tool_calls_false_disables_parallel_tool_use() {
    let sent = |r: &ChatRequest| {
        messages_body("claude-x", r, false, DEFAULT_MAX_TOKENS).unwrap()["tool_choice"].clone()
    };
    let one = json!({"parallel_tool_calls": false});
    assert_eq!(
        sent(&tools_request(one.clone())),
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
    for (choice, want) in [
        (
            json!("auto"),
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        ),
        (
            json!("required"),
            json!({"type": "any", "disable_parallel_tool_use": true}),
        ),
        (
            json!({"type": "function", "function": {"name": "g"}}),
            json!({"type": "tool", "name": "g", "disable_parallel_tool_use": true}),
        ),
        (json!("none"), json!({"type": "none"})),
    ] {
        let r = tools_request(json!({"parallel_tool_calls": false, "tool_choice": choice}));
        assert_eq!(sent(&r), want, "{choice}");
    }
    assert_eq!(
        sent(&tools_request(json!({"parallel_tool_calls": true}))),
        Value::Null
    );
    assert_eq!(sent(&tools_request(json!({}))), Value::Null);
    assert_eq!(sent(&request(one)), Value::Null, "no tools, no choice");
}

/// An Anthropic stand-in on a local port that answers its n-th request
/// with the n-th of `bodies` (each an SSE stream of events; the last once
/// they run out) and closes the connection. Counts the requests.
async fn anthropic_streams(bodies: Vec<String>) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let bodies = Arc::new(bodies);
    stand_in(move |mut conn, calls| {
        let bodies = bodies.clone();
        async move {
            let mut buf = Vec::new();
            if read_request(&mut conn, &mut buf).await.is_none() {
                return;
            }
            let n = calls.fetch_add(1, Ordering::SeqCst).min(bodies.len() - 1);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{}",
                bodies[n]
            );
            let _ = conn.write_all(resp.as_bytes()).await;
            let _ = conn.shutdown().await;
        }
    })
    .await
}

/// Anthropic's events as its SSE stream frames them.
fn sse(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
        .collect()
}

/// An `error` event right after `message_start` (Anthropic's
/// `overloaded_error` often comes so) is retried, as nothing has gone to
/// the client yet: the client gets the whole answer of the second
/// attempt. `message_start` gave the role chunk at once, which ended the
/// retry window, and the client got the error.
#[tokio::test]
async fn an_error_right_after_message_start_is_retried() {
    let start = json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
        "role": "assistant", "model": "claude-x", "content": [], "stop_reason": null,
        "usage": {"input_tokens": 5, "output_tokens": 1}}});
    let overloaded = sse(&[
        start.clone(),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ]);
    let text = |t: &str| json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}});
    let whole = sse(&[
        start,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
        text("Hello"),
        text(" world"),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 2}}),
        json!({"type": "message_stop"}),
    ]);
    let (addr, calls) = anthropic_streams(vec![overloaded, whole]).await;
    let mut cfg = ProviderConfig::new("c", ProviderKind::Anthropic, Some(format!("http://{addr}")));
    cfg.models = vec!["claude-x".into()];
    let routing = uat_config::RoutingConfig {
        max_attempts: 3,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        discovery_interval: Duration::ZERO,
        probe_local: false,
        ..uat_config::RoutingConfig::default()
    };
    let router = crate::Router::with_providers(&[cfg], &[], &routing)
        .await
        .unwrap();
    let req: ChatRequest = serde_json::from_value(json!({
        "model": "claude-x", "stream": true, "messages": [{"role": "user", "content": "hi"}]
    }))
    .unwrap();
    let routed = router
        .chat_stream(&router.resolve("claude-x").unwrap(), &req)
        .await
        .unwrap();
    assert_eq!(routed.attempts, 2);
    let chunks: Vec<Value> = routed
        .value
        .map(|c| serde_json::from_slice(&c.unwrap().json).unwrap())
        .collect()
        .await;
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Hello world");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// `tool_choice` forms and tools without an Anthropic equivalent are
/// refused naming the field (they used to become no choice and no tool);
/// the ones it has go.
#[test]
fn tool_choice_forms_and_tools_without_an_equivalent_are_refused() {
    let p = anthropic(None);
    let f =
        json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}});
    for (extra, param) in [
        (
            json!({"tools": [f], "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}}),
            "tool_choice",
        ),
        (
            json!({"tools": [f], "tool_choice": {"type": "custom", "custom": {"name": "g"}}}),
            "tool_choice",
        ),
        (
            json!({"tools": [f], "tool_choice": {"type": "function"}}),
            "tool_choice",
        ),
        (
            json!({"tools": [f], "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"tools": [f, {"type": "custom", "custom": {"name": "g"}}]}),
            "tools[1]",
        ),
    ] {
        let err = p.check(&request(extra.clone())).unwrap_err();
        assert_eq!(err.kind, FailureKind::Unsupported, "{extra}");
        assert_eq!(
            err.upstream.unwrap().param.as_deref(),
            Some(param),
            "{extra}"
        );
    }
    for choice in [
        json!("none"),
        json!("auto"),
        json!("required"),
        json!({"type": "function", "function": {"name": "f"}}),
        Value::Null,
    ] {
        let extra = json!({"tools": [f], "tool_choice": choice});
        assert!(p.check(&request(extra.clone())).is_ok(), "{extra}");
    }
}

/// Anthropic's prompt caching through OpenAI-shaped requests, as LiteLLM's
/// users mark it: a content part's or a tool's `cache_control` goes on the
/// block made of it, and a system prompt with a marked part goes as text
/// blocks (Anthropic takes `cache_control` on blocks only). Unmarked, the
/// system prompt stays one string.
#[test]
fn cache_control_marks_reach_anthropic() {
    let eph = json!({"type": "ephemeral"});
    let req = request(json!({
        "messages": [
            {"role": "system", "content": [
                {"type": "text", "text": "A long manual.", "cache_control": eph},
                {"type": "text", "text": "Be brief."},
            ]},
            {"role": "user", "content": [{"type": "text", "text": "Question one.", "cache_control": eph}]},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}, "cache_control": eph}],
    }));
    let b = messages_body("claude-x", &req, false, DEFAULT_MAX_TOKENS).unwrap();
    assert_eq!(
        b["system"],
        json!([
            {"type": "text", "text": "A long manual.", "cache_control": eph},
            {"type": "text", "text": "Be brief."},
        ])
    );
    assert_eq!(b["messages"][0]["content"][0]["cache_control"], eph);
    assert_eq!(b["tools"][0]["cache_control"], eph);
    let plain = request(json!({"messages": [
        {"role": "system", "content": [{"type": "text", "text": "A."}, {"type": "text", "text": "B."}]},
        {"role": "user", "content": "hi"},
    ]}));
    let b = messages_body("claude-x", &plain, false, DEFAULT_MAX_TOKENS).unwrap();
    assert_eq!(b["system"], "A.\nB.");
}

/// Tokens read from or written to Anthropic's prompt cache are part of
/// OpenAI's `prompt_tokens` (Anthropic's `input_tokens` leaves them out).
#[test]
fn cached_prompt_tokens_count_in_prompt_tokens() {
    let out = collect(
        &[
            r#"data: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":5,"cache_creation_input_tokens":20,"cache_read_input_tokens":100,"output_tokens":1}}}"#,
            r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            r#"data: {"type":"content_block_stop","index":0}"#,
            r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}"#,
            r#"data: {"type":"message_stop"}"#,
        ],
        true,
    );
    let usage = out
        .into_iter()
        .map(Result::unwrap)
        .find_map(|c| c.get("usage").filter(|u| !u.is_null()).cloned())
        .expect("a usage chunk");
    assert_eq!(usage["prompt_tokens"], 125, "{usage}");
    assert_eq!(usage["completion_tokens"], 4, "{usage}");
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"], 100,
        "what was read from the cache, as OpenAI reports it: {usage}"
    );
    assert_eq!(
        usage["cache_creation_input_tokens"], 20,
        "what was written to it, as LiteLLM reports it: {usage}"
    );
    // Without cache figures: no details (not a made-up 0).
    let out = collect(
        &[
            r#"data: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":5,"output_tokens":1}}}"#,
            r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}"#,
            r#"data: {"type":"message_stop"}"#,
        ],
        true,
    );
    let usage = out
        .into_iter()
        .map(Result::unwrap)
        .find_map(|c| c.get("usage").filter(|u| !u.is_null()).cloned())
        .expect("a usage chunk");
    assert_eq!(usage["prompt_tokens"], 5, "{usage}");
    assert!(usage.get("prompt_tokens_details").is_none(), "{usage}");
    assert!(
        usage.get("cache_creation_input_tokens").is_none(),
        "{usage}"
    );
}

/// The cache writes and their 1-hour part, from `message_start` and as
/// `message_delta` updates them, reach the stream's usage (the 1-hour part
/// for the pricing only: it is not written out).
#[test]
fn a_stream_reports_its_cache_writes() {
    let cache_usage = |events: &[&str]| -> Usage {
        let mut state = StreamState::new("claude-x", true);
        for e in events {
            let data = e.strip_prefix("data: ").unwrap_or(e);
            state.event(data.as_bytes());
        }
        std::iter::from_fn(|| state.pending.pop_front())
            .find_map(|c| c.expect("no failure").usage)
            .expect("a usage chunk")
    };
    let start = r#"data: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":5,"cache_creation_input_tokens":20,"cache_read_input_tokens":100,"cache_creation":{"ephemeral_5m_input_tokens":12,"ephemeral_1h_input_tokens":8},"output_tokens":1}}}"#;
    let stop = r#"data: {"type":"message_stop"}"#;
    let u = cache_usage(&[
        start,
        r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}"#,
        stop,
    ]);
    assert_eq!(
        (
            u.prompt_tokens,
            u.cache_creation_input_tokens,
            u.cache_creation_1h_input_tokens
        ),
        (125, Some(20), Some(8))
    );
    // A final message_delta's figures replace message_start's.
    let u = cache_usage(&[
        start,
        r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":5,"cache_creation_input_tokens":30,"cache_read_input_tokens":100,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":30},"output_tokens":4}}"#,
        stop,
    ]);
    assert_eq!(
        (
            u.prompt_tokens,
            u.cache_creation_input_tokens,
            u.cache_creation_1h_input_tokens
        ),
        (135, Some(30), Some(30))
    );
}

/// A whole answer's usage carries the cached prompt tokens too.
#[test]
fn a_whole_answer_reports_its_cached_prompt_tokens() {
    let u: AUsage = serde_json::from_value(
        json!({"input_tokens": 5, "cache_read_input_tokens": 100, "output_tokens": 3}),
    )
    .unwrap();
    assert_eq!(
        serde_json::to_value(u.openai()).unwrap(),
        json!({"prompt_tokens": 105, "completion_tokens": 3, "total_tokens": 108,
               "prompt_tokens_details": {"cached_tokens": 100}})
    );
    // Cache writes: in the prompt, reported apart, their 1-hour part kept
    // for the pricing.
    let u: AUsage = serde_json::from_value(json!({
        "input_tokens": 5, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 100,
        "cache_creation": {"ephemeral_5m_input_tokens": 12, "ephemeral_1h_input_tokens": 8},
        "output_tokens": 3,
    }))
    .unwrap();
    let usage = u.openai();
    assert_eq!(
        (
            usage.cache_creation_input_tokens,
            usage.cache_creation_1h_input_tokens
        ),
        (Some(20), Some(8))
    );
    assert_eq!(
        serde_json::to_value(usage).unwrap(),
        json!({"prompt_tokens": 125, "completion_tokens": 3, "total_tokens": 128,
               "prompt_tokens_details": {"cached_tokens": 100},
               "cache_creation_input_tokens": 20})
    );
    // A `cache_creation` of another shape is no failed answer.
    for odd in [
        json!(null),
        json!(7),
        json!({"ephemeral_1h_input_tokens": "8"}),
    ] {
        let u: AUsage = serde_json::from_value(json!({
            "input_tokens": 5, "cache_creation_input_tokens": 20, "cache_creation": odd,
        }))
        .unwrap_or_else(|e| panic!("{odd}: {e}"));
        assert_eq!(u.openai().cache_creation_input_tokens, Some(20), "{odd}");
        assert_eq!(u.openai().cache_creation_1h_input_tokens, None, "{odd}");
    }
}
