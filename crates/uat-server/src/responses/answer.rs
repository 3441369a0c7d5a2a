//! The Response object: its envelope (id, time, echoed request fields,
//! status, usage) and a non-streamed chat completion turned into one.

use super::request::Echo;
use serde_json::{Map, Value, json};

/// A new item or response id: `prefix`, `_`, 32 random hex digits.
pub(crate) fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Where a response stands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Status {
    /// Streaming.
    InProgress,
    /// Done.
    Completed,
    /// Cut short, for this reason (`max_output_tokens`, `content_filter`).
    Incomplete(&'static str),
    /// Failed with this error message (an upstream failing mid-stream).
    Failed(String),
}

impl Status {
    /// The status of an answer that ended with chat's `finish_reason`.
    pub(crate) fn of_finish(reason: Option<&str>) -> Status {
        match reason {
            Some("length") => Status::Incomplete("max_output_tokens"),
            Some("content_filter") => Status::Incomplete("content_filter"),
            _ => Status::Completed,
        }
    }

    /// The status of an output item of a response in this status.
    pub(crate) fn item(&self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete(_) | Status::Failed(_) => "incomplete",
        }
    }
}

/// What every Response object of one request shares.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    /// `resp_...`.
    pub(crate) id: String,
    /// Unix seconds.
    pub(crate) created_at: u64,
    /// The model: the one asked for until the upstream names its own.
    pub(crate) model: String,
    /// The request's echoed fields.
    pub(crate) echo: Echo,
    /// The names of the request's `custom` tools: their calls are
    /// `custom_tool_call` items.
    pub(crate) custom_tools: Vec<String>,
}

impl Envelope {
    /// A new response's envelope.
    pub(crate) fn new(model: &str, echo: Echo) -> Self {
        Envelope {
            id: new_id("resp"),
            created_at: uat_types::unix_now(),
            model: model.to_owned(),
            echo,
            custom_tools: Vec::new(),
        }
    }

    /// Whether a call of this tool is a `custom_tool_call`.
    pub(crate) fn is_custom(&self, name: &str) -> bool {
        self.custom_tools.iter().any(|c| c == name)
    }

    /// The Response object in `status` with this output and usage.
    pub(crate) fn response(&self, status: &Status, output: Vec<Value>, usage: Value) -> Value {
        let (name, incomplete, error) = match status {
            Status::InProgress => ("in_progress", Value::Null, Value::Null),
            Status::Completed => ("completed", Value::Null, Value::Null),
            Status::Incomplete(reason) => ("incomplete", json!({ "reason": reason }), Value::Null),
            Status::Failed(message) => (
                "failed",
                Value::Null,
                json!({ "code": "server_error", "message": message }),
            ),
        };
        let mut m = Map::new();
        m.insert("id".into(), Value::String(self.id.clone()));
        m.insert("object".into(), Value::String("response".into()));
        m.insert("created_at".into(), self.created_at.into());
        m.insert("status".into(), Value::String(name.into()));
        m.insert("model".into(), Value::String(self.model.clone()));
        m.insert("output".into(), Value::Array(output));
        m.insert("usage".into(), usage);
        m.insert("error".into(), error);
        m.insert("incomplete_details".into(), incomplete);
        for (k, v) in &self.echo.0 {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

/// Chat's `usage` in the Responses shape (`Null` when there is none).
pub(crate) fn usage(chat: &Value) -> Value {
    let Some(u) = chat.as_object() else {
        return Value::Null;
    };
    let count = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    let input = count(u.get("prompt_tokens"));
    let output = count(u.get("completion_tokens"));
    let total = u
        .get("total_tokens")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| input.saturating_add(output));
    json!({
        "input_tokens": input,
        "input_tokens_details": {
            "cached_tokens": count(chat.pointer("/prompt_tokens_details/cached_tokens")),
        },
        "output_tokens": output,
        "output_tokens_details": {
            "reasoning_tokens": count(chat.pointer("/completion_tokens_details/reasoning_tokens")),
        },
        "total_tokens": total,
    })
}

/// A reasoning item: the chat answer's `reasoning_content`, as a summary.
pub(crate) fn reasoning_item(id: &str, text: &str, status: &str) -> Value {
    let summary = if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({"type": "summary_text", "text": text})]
    };
    json!({"type": "reasoning", "id": id, "summary": summary, "status": status})
}

/// An assistant message item of these content parts.
pub(crate) fn message_item(id: &str, content: Vec<Value>, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

/// An `output_text` content part (`logprobs` when the upstream gave some).
pub(crate) fn text_part(text: &str, logprobs: Option<Vec<Value>>) -> Value {
    let mut p = json!({"type": "output_text", "text": text, "annotations": []});
    if let Some(l) = logprobs {
        p["logprobs"] = Value::Array(l);
    }
    p
}

/// A `refusal` content part.
pub(crate) fn refusal_part(text: &str) -> Value {
    json!({"type": "refusal", "refusal": text})
}

/// A function call item.
pub(crate) fn call_item(
    id: &str,
    call_id: &str,
    name: &str,
    arguments: &str,
    status: &str,
) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
           "arguments": arguments, "status": status})
}

/// A custom tool call item.
pub(crate) fn custom_call_item(
    id: &str,
    call_id: &str,
    name: &str,
    input: &str,
    status: &str,
) -> Value {
    json!({"type": "custom_tool_call", "id": id, "call_id": call_id, "name": name,
           "input": input, "status": status})
}

/// The input of a custom tool's call from the arguments of its chat
/// function call, `{"input": "..."}`; the arguments themselves when they
/// are not of that shape.
pub(crate) fn custom_input(arguments: &str) -> String {
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(mut o)) => match o.remove("input") {
            Some(Value::String(s)) => s,
            _ => arguments.to_owned(),
        },
        _ => arguments.to_owned(),
    }
}

/// A call's id: the upstream's, or a new one when it gave none (Gemini's
/// OpenAI endpoint gives `""`).
pub(crate) fn call_id(upstream: &str) -> String {
    if upstream.is_empty() {
        new_id("call")
    } else {
        upstream.to_owned()
    }
}

/// The item of a whole tool call: a `custom_tool_call` when it calls one
/// of the request's custom tools, else a `function_call`.
pub(crate) fn tool_call_item(
    env: &Envelope,
    call_id: &str,
    name: &str,
    arguments: &str,
    status: &str,
) -> Value {
    if env.is_custom(name) {
        custom_call_item(
            &new_id("ctc"),
            call_id,
            name,
            &custom_input(arguments),
            status,
        )
    } else {
        call_item(&new_id("fc"), call_id, name, arguments, status)
    }
}

/// A non-streamed chat completion (its JSON) as a Response object; an
/// error message when it is none.
pub(crate) fn from_completion(env: &mut Envelope, body: &[u8]) -> Result<Value, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let choice = v.pointer("/choices/0").ok_or("the answer has no choices")?;
    let message = choice
        .get("message")
        .ok_or("the answer's choice has no message")?;
    if let Some(m) = v
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
    {
        env.model = m.to_owned();
    }
    let status = Status::of_finish(choice.get("finish_reason").and_then(Value::as_str));
    let item_status = status.item();
    let mut output = Vec::new();
    // DeepSeek and vLLM say `reasoning_content`; OpenRouter and Ollama's
    // OpenAI endpoint say `reasoning`.
    let text = |key: &str| {
        message
            .get(key)
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty())
    };
    if let Some(r) = text("reasoning_content").or_else(|| text("reasoning")) {
        output.push(reasoning_item(&new_id("rs"), r, item_status));
    }
    let mut content = Vec::new();
    let logprobs = choice
        .pointer("/logprobs/content")
        .and_then(Value::as_array)
        .cloned();
    match message.get("content") {
        Some(Value::String(t)) if !t.is_empty() => content.push(text_part(t, logprobs)),
        Some(Value::Array(parts)) => {
            for t in parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
            {
                content.push(text_part(t, None));
            }
        }
        _ => {}
    }
    if let Some(r) = message
        .get("refusal")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
    {
        content.push(refusal_part(r));
    }
    if !content.is_empty() {
        output.push(message_item(&new_id("msg"), content, item_status));
    }
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = |p: &str| call.pointer(p).and_then(Value::as_str).unwrap_or_default();
        output.push(tool_call_item(
            env,
            &call_id(s("/id")),
            s("/function/name"),
            s("/function/arguments"),
            item_status,
        ));
    }
    let usage = usage(v.get("usage").unwrap_or(&Value::Null));
    Ok(env.response(&status, output, usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Envelope {
        let mut echo = Echo::default();
        echo.0.insert("tools".into(), json!([]));
        Envelope::new("asked", echo)
    }

    #[test]
    fn a_text_answer_is_a_completed_message_with_usage() {
        let body = json!({
            "id": "c", "object": "chat.completion", "model": "gpt-x",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
                      "prompt_tokens_details": {"cached_tokens": 3},
                      "completion_tokens_details": {"reasoning_tokens": 1}},
        });
        let r = from_completion(&mut env(), body.to_string().as_bytes()).unwrap();
        assert!(r["id"].as_str().unwrap().starts_with("resp_"), "{r}");
        assert_eq!(r["object"], "response");
        assert_eq!(r["status"], "completed");
        assert_eq!(r["model"], "gpt-x", "the model that answered");
        assert_eq!(r["tools"], json!([]), "echoed");
        assert!(r["error"].is_null() && r["incomplete_details"].is_null());
        let out = r["output"].as_array().unwrap();
        assert_eq!(out.len(), 1, "{r}");
        assert_eq!(out[0]["type"], "message");
        assert_eq!(out[0]["status"], "completed");
        assert!(out[0]["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(
            out[0]["content"],
            json!([{"type": "output_text", "text": "Hi there", "annotations": []}])
        );
        assert_eq!(
            r["usage"],
            json!({"input_tokens": 5, "input_tokens_details": {"cached_tokens": 3},
                   "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 1},
                   "total_tokens": 7})
        );
    }

    #[test]
    fn reasoning_tool_calls_and_refusals_become_items_in_order() {
        let body = json!({
            "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me look.", "reasoning_content": "think",
                "refusal": "partly not",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": "{\"x\":1}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{}"}}
                ]}}],
        });
        let r = from_completion(&mut env(), body.to_string().as_bytes()).unwrap();
        assert_eq!(r["status"], "completed");
        assert!(r["usage"].is_null(), "none reported");
        let out = r["output"].as_array().unwrap();
        let kinds: Vec<&str> = out.iter().map(|i| i["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["reasoning", "message", "function_call", "function_call"]
        );
        assert_eq!(
            out[0]["summary"],
            json!([{"type": "summary_text", "text": "think"}])
        );
        assert_eq!(
            out[1]["content"][1],
            json!({"type": "refusal", "refusal": "partly not"})
        );
        assert_eq!(out[2]["call_id"], "call_1");
        assert_eq!(out[2]["name"], "a");
        assert_eq!(out[2]["arguments"], "{\"x\":1}");
        assert!(out[2]["id"].as_str().unwrap().starts_with("fc_"));
        assert_eq!(out[3]["call_id"], "call_2");
    }

    #[test]
    fn length_and_content_filter_are_incomplete() {
        for (finish, reason) in [
            ("length", "max_output_tokens"),
            ("content_filter", "content_filter"),
        ] {
            let body = json!({"model": "m", "choices": [{"message": {"role": "assistant", "content": "cut"}, "finish_reason": finish}]});
            let r = from_completion(&mut env(), body.to_string().as_bytes()).unwrap();
            assert_eq!(r["status"], "incomplete");
            assert_eq!(r["incomplete_details"], json!({"reason": reason}));
            assert_eq!(r["output"][0]["status"], "incomplete");
        }
    }

    #[test]
    fn reasoning_named_reasoning_is_read_too() {
        // OpenRouter, Ollama's OpenAI endpoint.
        let body = json!({"model": "m", "choices": [{"finish_reason": "stop", "message": {
            "role": "assistant", "content": "4", "reasoning": "2 + 2"}}]});
        let r = from_completion(&mut env(), body.to_string().as_bytes()).unwrap();
        assert_eq!(r["output"][0]["type"], "reasoning", "{r}");
        assert_eq!(
            r["output"][0]["summary"],
            json!([{"type": "summary_text", "text": "2 + 2"}])
        );
        assert_eq!(r["output"][1]["type"], "message");
    }

    #[test]
    fn calls_of_custom_tools_are_custom_tool_calls_and_empty_ids_are_made() {
        let mut env = env();
        env.custom_tools = vec!["apply_patch".into()];
        let body = json!({"model": "m", "choices": [{"finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "apply_patch",
             "arguments": "{\"input\":\"*** Begin Patch\\n*** End Patch\"}"}},
            {"id": "", "type": "function", "function": {"name": "apply_patch", "arguments": "raw text"}},
            {"id": "", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        ]}}]});
        let r = from_completion(&mut env, body.to_string().as_bytes()).unwrap();
        let out = r["output"].as_array().unwrap();
        assert_eq!(
            out[0],
            json!({"type": "custom_tool_call", "id": out[0]["id"], "call_id": "call_1",
                   "name": "apply_patch", "input": "*** Begin Patch\n*** End Patch", "status": "completed"})
        );
        assert!(out[0]["id"].as_str().unwrap().starts_with("ctc_"), "{r}");
        assert_eq!(out[1]["input"], "raw text", "not the JSON shape: as it is");
        assert_eq!(out[2]["type"], "function_call");
        // Gemini gives empty ids: made up, one per call.
        let made: Vec<&str> = out[1..]
            .iter()
            .map(|i| i["call_id"].as_str().unwrap())
            .collect();
        for id in &made {
            assert!(id.starts_with("call_") && id.len() > 10, "{id}");
        }
        assert_ne!(made[0], made[1]);
    }

    #[test]
    fn an_answer_without_choices_is_an_error() {
        assert!(from_completion(&mut env(), b"{\"choices\": []}").is_err());
        assert!(from_completion(&mut env(), b"not json").is_err());
    }
}
