//! Request and stream translation, defaults and refusals of the Anthropic adapter.

use super::*;

fn collect(lines: &[&'static str], include_usage: bool) -> Vec<Result<Value, Failure>> {
    collect_from(lines, StreamState::new("claude", include_usage))
}

fn collect_from(lines: &[&'static str], st: StreamState) -> Vec<Result<Value, Failure>> {
    let items: Vec<Result<Bytes, Failure>> = lines
        .iter()
        .map(|l| Ok(Bytes::from_static(l.as_bytes())))
        .collect();
    let out: Vec<_> =
        futures::executor::block_on(translate(futures::stream::iter(items), st).collect());
    out.into_iter()
        .map(|r| r.map(|c| serde_json::from_slice(&c.json).unwrap()))
        .collect()
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
/// answer tool with the schema; not when the client has tools of its
/// own, nor for `text`.
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
    for other in [
        json!({"type": "text"}),
        json!({"type": "json_object", "x": 1}),
    ] {
        let mut v = json!({"model": "x", "messages": [{"role": "user", "content": "hi"}],
            "response_format": other,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]});
        if other["type"] == "text" {
            v.as_object_mut().unwrap().remove("tools");
        }
        let req: ChatRequest = serde_json::from_value(v).unwrap();
        let b = messages_body("claude-x", &req, false, DEFAULT_MAX_TOKENS).unwrap();
        assert!(b.get("tool_choice").is_none(), "{other}: {b}");
        assert!(
            b["tools"]
                .as_array()
                .is_none_or(|t| t.iter().all(|t| t["name"] != JSON_TOOL)),
            "{b}"
        );
    }
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

fn request(v: Value) -> ChatRequest {
    let mut v = v;
    v["model"] = json!("x");
    if v.get("messages").is_none() {
        v["messages"] = json!([{"role": "user", "content": "hi"}]);
    }
    serde_json::from_value(v).unwrap()
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
