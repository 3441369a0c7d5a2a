//! Request and stream translation and refusals of the Ollama adapter.

use super::*;
use crate::provider::{request, tools_request};

fn state(include_usage: bool) -> StreamState {
    StreamState {
        id: "x".into(),
        created: 1,
        model: "llama".into(),
        include_usage,
        sent_role: false,
        tools_sent: 0,
        max_calls: usize::MAX,
        queue: Queue::default(),
    }
}

fn collect(lines: &[&'static str], st: StreamState) -> Vec<Result<Value, Failure>> {
    crate::provider::translated(lines, |s| translate(s, st))
}

#[test]
fn ndjson_becomes_openai_chunks() {
    let out = collect(
        &[
            r#"{"message":{"role":"assistant","content":"Hel"},"done":false}"#,
            r#"{"message":{"role":"assistant","content":"lo"},"done":false}"#,
            r#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"length","prompt_eval_count":4,"eval_count":2}"#,
        ],
        state(true),
    );
    assert_eq!(out.len(), 4);
    let v: Vec<Value> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(v[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(v[0]["choices"][0]["delta"]["content"], "Hel");
    assert!(v[1]["choices"][0]["delta"].get("role").is_none());
    assert_eq!(v[2]["choices"][0]["finish_reason"], "length");
    assert_eq!(v[3]["usage"]["prompt_tokens"], 4);
    assert_eq!(v[3]["usage"]["total_tokens"], 6);
    assert_eq!(v[3]["object"], "chat.completion.chunk");
}

/// Ollama may send parallel calls on lines of their own: they are
/// numbered on through the stream (index 0, then 1), each with its own
/// id, so clients that merge streamed calls by index keep them apart.
#[test]
fn streamed_tool_calls_on_separate_lines_keep_apart() {
    let out = collect(
        &[
            r#"{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"ls","arguments":{"path":"/a"}}}]},"done":false}"#,
            r#"{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"ls","arguments":{"path":"/b"}}},{"function":{"name":"cat","arguments":{}}}]},"done":false}"#,
            r#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}"#,
        ],
        state(false),
    );
    let v: Vec<Value> = out.into_iter().map(Result::unwrap).collect();
    let calls: Vec<&Value> = v
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    let indexes: Vec<u64> = calls.iter().filter_map(|c| c["index"].as_u64()).collect();
    assert_eq!(indexes, [0, 1, 2]);
    let ids: std::collections::HashSet<&str> =
        calls.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids.len(), 3, "{calls:?}");
    assert_eq!(calls[1]["function"]["arguments"], r#"{"path":"/b"}"#);
    assert_eq!(
        v.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[test]
fn cut_stream_and_error_line_fail() {
    let out = collect(
        &[r#"{"message":{"content":"a"},"done":false}"#],
        state(false),
    );
    assert_eq!(
        out.last().unwrap().as_ref().unwrap_err().kind,
        FailureKind::Interrupted
    );
    let out = collect(&[r#"{"error":"model crashed"}"#], state(false));
    assert_eq!(out[0].as_ref().unwrap_err().message, "model crashed");
}

#[test]
fn request_translation() {
    let req: ChatRequest = serde_json::from_value(json!({
        "model": "x", "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "max_tokens": 7, "stop": "END", "seed": 3, "temperature": 0.5,
        "response_format": {"type": "json_object"}, "tools": [{"type": "function"}]
    }))
    .unwrap();
    let b = chat_body("llama3", &req, true).unwrap();
    assert_eq!(b["model"], "llama3");
    assert_eq!(b["messages"][0]["role"], "system");
    assert_eq!(b["options"]["num_predict"], 7);
    assert_eq!(b["options"]["stop"], json!(["END"]));
    assert_eq!(b["options"]["seed"], 3);
    assert_eq!(b["format"], "json");
    assert_eq!(b["tools"], json!([{"type": "function"}]));
    assert_eq!(b["stream"], true);
}

/// `n` > 1 and images by http(s) URL are refused as Unsupported naming
/// the field, where before one choice came back and the image was
/// dropped; a base64 data: URL still goes as an image.
#[test]
fn n_and_url_images_are_refused_not_dropped() {
    let f = refusal(&request(json!({"n": 3}))).unwrap_err();
    assert_eq!(f.kind, FailureKind::Unsupported);
    assert_eq!(f.message, "n > 1 is not supported by ollama providers");
    assert_eq!(f.upstream.unwrap().param.as_deref(), Some("n"));
    let url = request(json!({"messages": [
        {"role": "user", "content": "hi"},
        {"role": "user", "content": [{"type": "text", "text": "what?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]},
    ]}));
    let f = refusal(&url).unwrap_err();
    assert_eq!(f.kind, FailureKind::Unsupported);
    assert!(chat_body("llama3", &url, true).is_err());
    assert!(
        f.message
            .starts_with("Ollama providers accept images as data: URLs only"),
        "{}",
        f.message
    );
    assert_eq!(
        f.upstream.unwrap().param.as_deref(),
        Some("messages[1].content[1].image_url.url")
    );
    let data = request(json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}]}]}));
    assert!(refusal(&data).is_ok());
    let b = chat_body("llama3", &data, false).unwrap();
    assert_eq!(b["messages"][0]["images"], json!(["AAA"]));
}

/// Content parts other than text and images (audio, a file, a type of
/// tomorrow, a part without a type) are refused as Unsupported naming the
/// part's `type`, where before they were left out of the request and the
/// model answered without them; text and data: images still go.
#[test]
fn other_content_parts_are_refused_not_dropped() {
    for (part, t) in [
        (
            json!({"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}),
            Some("input_audio"),
        ),
        (
            json!({"type": "file", "file": {"file_data": "data:application/pdf;base64,AAA", "filename": "a.pdf"}}),
            Some("file"),
        ),
        (json!({"type": "hologram", "text": "x"}), Some("hologram")),
        (json!({"text": "no type"}), None),
    ] {
        let req = request(json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]},
        ]}));
        let f = refusal(&req).unwrap_err();
        assert_eq!(f.kind, FailureKind::Unsupported, "{part}");
        match t {
            Some(t) => assert_eq!(
                f.message,
                format!(
                    "content parts of type `{t}` in user messages are not supported by ollama providers"
                )
            ),
            None => assert!(f.message.contains("without a type"), "{}", f.message),
        }
        let u = f.upstream.unwrap();
        assert_eq!(u.param.as_deref(), Some("messages[1].content[1].type"));
        assert_eq!(u.code.as_deref(), Some("unsupported_value"));
        assert_eq!(
            chat_body("llama3", &req, false).unwrap_err().kind,
            FailureKind::Unsupported,
            "{part}"
        );
    }
    let ok = request(json!({"messages": [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": [{"type": "text", "text": "Look at this."}, {"type": "text", "text": "What is it?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}]},
        // A replayed assistant refusal is its text.
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't tell."}]},
    ]}));
    assert!(refusal(&ok).is_ok());
    let b = chat_body("llama3", &ok, false).unwrap();
    assert_eq!(b["messages"][0]["content"], "be brief");
    // Parts on lines of their own (as vLLM joins them), not run together.
    assert_eq!(b["messages"][1]["content"], "Look at this.\nWhat is it?");
    assert_eq!(b["messages"][1]["images"], json!(["AAA"]));
    assert_eq!(b["messages"][2]["content"], "I can't tell.");
}

/// `logprobs` / `top_logprobs` go to Ollama by the same names, and its
/// answer's `logprobs` come back in OpenAI's shape, streamed chunk by
/// chunk beside the content they score.
#[test]
fn logprobs_both_ways() {
    let b = chat_body(
        "llama3",
        &request(json!({"logprobs": true, "top_logprobs": 2})),
        true,
    )
    .unwrap();
    assert_eq!(b["logprobs"], true);
    assert_eq!(b["top_logprobs"], 2);
    let plain = chat_body("llama3", &request(json!({})), true).unwrap();
    assert!(plain.get("logprobs").is_none() && plain.get("top_logprobs").is_none());

    let out = collect(
        &[
            r#"{"message":{"role":"assistant","content":"Hi"},"done":false,"logprobs":[{"token":"Hi","logprob":-0.1,"bytes":[72,105],"top_logprobs":[{"token":"Hi","logprob":-0.1,"bytes":[72,105]},{"token":"Yo","logprob":-2.5}]}]}"#,
            r#"{"message":{"role":"assistant","content":"!"},"done":false,"logprobs":[{"token":"!","logprob":-0.3}]}"#,
            r#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}"#,
        ],
        state(false),
    );
    let v: Vec<Value> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        v[0]["choices"][0]["logprobs"],
        json!({"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [
            {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]},
            {"token": "Yo", "logprob": -2.5, "bytes": [89, 111]}]}], "refusal": null})
    );
    assert_eq!(v[0]["choices"][0]["delta"]["content"], "Hi");
    assert_eq!(
        v[1]["choices"][0]["logprobs"]["content"],
        json!([{"token": "!", "logprob": -0.3, "bytes": [33], "top_logprobs": []}])
    );
    assert!(v[2]["choices"][0].get("logprobs").is_none());
}

/// An OpenAI tool message carries only the call's id; Ollama wants the
/// tool's name, found in the assistant call it answers.
#[test]
fn a_tool_result_is_named_after_its_call() {
    let req: ChatRequest = serde_json::from_value(json!({
        "model": "x", "messages": [
            {"role": "user", "content": "list both"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "cat", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c2", "content": "file"},
            {"role": "tool", "tool_call_id": "c1", "content": "a b"},
            {"role": "tool", "tool_call_id": "zz", "content": "?"},
            {"role": "tool", "tool_call_id": "c1", "name": "given", "content": "x"}
        ]
    }))
    .unwrap();
    let b = chat_body("llama3", &req, false).unwrap();
    let names: Vec<&Value> = b["messages"]
        .as_array()
        .unwrap()
        .iter()
        .skip(2)
        .map(|m| &m["tool_name"])
        .collect();
    assert_eq!(
        names,
        [&json!("cat"), &json!("ls"), &Value::Null, &json!("given")]
    );
}

/// The names of the tools sent to Ollama.
fn sent_tools(req: &ChatRequest) -> Vec<String> {
    let b = chat_body("llama3", req, false).unwrap();
    b["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// `tool_choice`, which Ollama has no field for, was left out and every
/// tool sent: `none` now sends none, a named function only that one;
/// `auto` (or none given) all. What Ollama cannot honour is refused naming
/// the field: `required` (no forced calls), a function the request does
/// not offer, and another shape.
#[test]
fn tool_choice_is_honoured_or_refused() {
    for (choice, want) in [
        (json!("none"), vec![]),
        (json!("auto"), vec!["f", "g"]),
        (Value::Null, vec!["f", "g"]),
        (
            json!({"type": "function", "function": {"name": "g"}}),
            vec!["g"],
        ),
    ] {
        let req = tools_request(json!({"tool_choice": choice}));
        assert!(refusal(&req).is_ok(), "{choice}");
        assert_eq!(sent_tools(&req), want, "{choice}");
    }
    assert_eq!(sent_tools(&tools_request(json!({}))), ["f", "g"]);
    for (extra, param, code) in [
        (
            json!({"tool_choice": "required"}),
            "tool_choice",
            "unsupported_value",
        ),
        (
            json!({"tool_choice": {"type": "function", "function": {"name": "h"}}}),
            "tool_choice",
            "invalid_value",
        ),
        (
            json!({"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}}),
            "tool_choice",
            "unsupported_value",
        ),
    ] {
        let req = tools_request(extra.clone());
        let f = refusal(&req).unwrap_err();
        assert_eq!(f.kind, FailureKind::Unsupported, "{extra}");
        let u = f.upstream.unwrap();
        assert_eq!(u.param.as_deref(), Some(param), "{extra}");
        assert_eq!(u.code.as_deref(), Some(code), "{extra}");
    }
    for ok in [
        tools_request(json!({"parallel_tool_calls": false})),
        tools_request(json!({"parallel_tool_calls": true})),
        request(json!({"parallel_tool_calls": false})),
    ] {
        assert!(refusal(&ok).is_ok());
    }
}

/// `parallel_tool_calls: false`, which Ollama has no switch for, is honoured
/// by passing on its first call alone, streamed (across lines) or not.
/// Before, every call Ollama made reached a client that asked for one.
#[test]
fn one_call_at_most_passes_on_the_first() {
    let one = tools_request(json!({"parallel_tool_calls": false}));
    let all = tools_request(json!({}));
    assert_eq!((max_calls(&one), max_calls(&all)), (1, usize::MAX));
    let lines = [
        r#"{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":{"a":1}}},{"function":{"name":"g","arguments":{}}}]},"done":false}"#,
        r#"{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"g","arguments":{}}}]},"done":false}"#,
        r#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}"#,
    ];
    for (max, want) in [(1, vec!["f"]), (usize::MAX, vec!["f", "g", "g"])] {
        let st = StreamState {
            max_calls: max,
            ..state(false)
        };
        let names: Vec<String> = collect(&lines, st)
            .into_iter()
            .map(Result::unwrap)
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().cloned())
            .flatten()
            .map(|t| t["function"]["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, want, "max {max}");
    }
}

/// Only a tool result names its tool: a user's (or an assistant's) `name`
/// became `tool_name` too.
#[test]
fn only_tool_results_get_a_tool_name() {
    let req = request(json!({"messages": [
        {"role": "system", "name": "rules", "content": "be brief"},
        {"role": "user", "name": "alice", "content": "list"},
        {"role": "assistant", "name": "bot", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "a b"},
    ]}));
    let b = chat_body("llama3", &req, false).unwrap();
    let names: Vec<&Value> = b["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["tool_name"])
        .collect();
    assert_eq!(
        names,
        [&Value::Null, &Value::Null, &Value::Null, &json!("ls")]
    );
}
