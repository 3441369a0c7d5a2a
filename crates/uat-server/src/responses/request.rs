//! A Responses API request turned into a chat request, and the fields its
//! answer echoes ([`Echo`]).
//!
//! Every input item and tool has a chat equivalent or is refused with a 400
//! naming it (`input[3].type`, `tools[0].type`): nothing the client sent
//! is dropped in silence, except `reasoning` items (a client sends back the
//! reasoning of earlier turns; chat has no place for it, and the model
//! does without) and the settings listed on [`Params`] as accepted and not
//! sent.

#![allow(
    clippy::result_large_err,
    reason = "ApiError is the server-wide error type; cold path"
)]

use crate::error::ApiError;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uat_types::{ChatMessage, ChatRequest, StreamOptions};

/// `include` values accepted: reasoning is never encrypted here (none is
/// returned as such), and logprobs are returned when the upstream gives them.
const INCLUDES: [&str; 2] = [
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
];

/// The top-level fields of a Responses request this gateway reads. Unknown
/// fields are ignored (not sent upstream). Accepted and not sent upstream:
/// `metadata` (echoed), `store` (nothing is stored: the answer says
/// `store: false`), `truncation`, `include`, `service_tier`,
/// `prompt_cache_key`, `safety_identifier`, `reasoning.summary`.
#[derive(Deserialize)]
struct Params {
    #[serde(default)]
    model: String,
    instructions: Option<String>,
    input: Option<Value>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    user: Option<String>,
    seed: Option<i64>,
    top_logprobs: Option<u32>,
    max_output_tokens: Option<u32>,
    reasoning: Option<Reasoning>,
    text: Option<Text>,
    stream: Option<bool>,
    metadata: Option<Map<String, Value>>,
    truncation: Option<String>,
    include: Option<Vec<String>>,
    previous_response_id: Option<String>,
    conversation: Option<Value>,
    prompt: Option<Value>,
    background: Option<bool>,
    n: Option<u32>,
}

/// `reasoning`.
#[derive(Deserialize)]
struct Reasoning {
    effort: Option<String>,
    summary: Option<String>,
}

/// `text`: the output format (`verbosity` is ignored).
#[derive(Deserialize)]
struct Text {
    format: Option<Value>,
}

/// The request's fields a Response object echoes, gathered once.
#[derive(Debug, Clone, Default)]
pub(crate) struct Echo(pub(crate) Map<String, Value>);

/// A Responses request, translated.
#[derive(Debug)]
pub(crate) struct Translated {
    /// The chat request to route (`stream_options.include_usage` set when
    /// it streams: `response.completed` carries the usage).
    pub(crate) chat: ChatRequest,
    /// What the answer echoes.
    pub(crate) echo: Echo,
}

type Result<T> = std::result::Result<T, ApiError>;

/// A 400 `unsupported_parameter` naming `param`.
fn unsupported(param: impl Into<String>, message: impl Into<String>) -> ApiError {
    let mut e = ApiError::invalid_field(param, message);
    e.code = Some("unsupported_parameter");
    e
}

/// A 400 `invalid_value` naming `param`.
fn invalid(param: impl Into<String>, message: impl Into<String>) -> ApiError {
    let mut e = ApiError::invalid_field(param, message);
    e.code = Some("invalid_value");
    e
}

/// Translates a Responses request body into a chat request.
pub(crate) fn translate(body: &Value) -> Result<Translated> {
    if !body.is_object() {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    }
    let p: Params = serde_path_to_error::deserialize(body).map_err(crate::extract::path_error)?;
    refuse_state(&p)?;
    if p.model.is_empty() {
        return Err(ApiError::invalid_field(
            "model",
            "`model` must not be empty",
        ));
    }
    if p.n.is_some_and(|n| n != 1) {
        return Err(unsupported("n", "only one answer (`n` 1) is supported"));
    }
    if let Some(t) = p.truncation.as_deref()
        && !matches!(t, "disabled" | "auto")
    {
        return Err(invalid(
            "truncation",
            format!("`truncation` must be `disabled` or `auto`, not `{t}`"),
        ));
    }
    let include = p.include.as_deref().unwrap_or_default();
    if let Some((i, bad)) = include
        .iter()
        .enumerate()
        .find(|(_, v)| !INCLUDES.contains(&v.as_str()))
    {
        return Err(unsupported(
            format!("include[{i}]"),
            format!(
                "`include` value `{bad}` is not supported (only {})",
                INCLUDES.join(", ")
            ),
        ));
    }

    let mut messages = Vec::new();
    if let Some(i) = &p.instructions {
        messages.push(ChatMessage::text("system", i.as_str()));
    }
    match &p.input {
        None => return Err(ApiError::invalid_field("input", "`input` is required")),
        Some(Value::String(s)) => messages.push(ChatMessage::text("user", s.as_str())),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(item, i, &mut messages)?;
            }
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                "input",
                "`input` must be a string or an array of items",
            ));
        }
    }
    if messages.is_empty() {
        return Err(ApiError::invalid_field(
            "input",
            "`input` must contain at least one message",
        ));
    }

    let mut extra = Map::new();
    let tools = tools(p.tools.as_deref().unwrap_or_default())?;
    let tool_choice = p.tool_choice.as_ref().map(tool_choice).transpose()?;
    // Chat refuses `tool_choice` and `parallel_tool_calls` without tools
    // (and an empty `tools`): sent only with some.
    if !tools.is_empty() {
        extra.insert("tools".into(), Value::Array(tools));
        if let Some(c) = &tool_choice {
            extra.insert("tool_choice".into(), c.clone());
        }
        if let Some(v) = p.parallel_tool_calls {
            extra.insert("parallel_tool_calls".into(), Value::Bool(v));
        }
    }
    if let Some(u) = &p.user {
        extra.insert("user".into(), Value::String(u.clone()));
    }
    if let Some(s) = p.seed {
        extra.insert("seed".into(), s.into());
    }
    // Logprobs are asked for when the client wants them back (chat needs
    // `logprobs: true` beside `top_logprobs`).
    if p.top_logprobs.is_some() || include.iter().any(|v| v == "message.output_text.logprobs") {
        extra.insert("logprobs".into(), Value::Bool(true));
        if let Some(n) = p.top_logprobs {
            extra.insert("top_logprobs".into(), n.into());
        }
    }
    if let Some(e) = p.reasoning.as_ref().and_then(|r| r.effort.as_ref()) {
        extra.insert("reasoning_effort".into(), Value::String(e.clone()));
    }
    let format = p.text.as_ref().and_then(|t| t.format.as_ref());
    if let Some(rf) = format.map(response_format).transpose()?.flatten() {
        extra.insert("response_format".into(), rf);
    }
    let stream = p.stream.unwrap_or(false);
    let chat = ChatRequest {
        model: p.model.clone(),
        messages,
        stream: stream.then_some(true),
        stream_options: stream.then(|| StreamOptions {
            include_usage: Some(true),
            extra: Map::new(),
        }),
        max_tokens: None,
        max_completion_tokens: p.max_output_tokens,
        temperature: p.temperature,
        top_p: p.top_p,
        stop: None,
        extra,
    };
    Ok(Translated {
        chat,
        echo: echo(&p, tool_choice.is_some()),
    })
}

/// Refuses what needs responses kept by the server: this gateway keeps none.
fn refuse_state(p: &Params) -> Result<()> {
    const STATELESS: &str = "this gateway keeps no responses or conversations: send the whole conversation as `input` (with `store: false`)";
    if p.previous_response_id.is_some() {
        return Err(unsupported(
            "previous_response_id",
            format!("`previous_response_id` is not supported: {STATELESS}"),
        ));
    }
    if p.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(unsupported(
            "conversation",
            format!("`conversation` is not supported: {STATELESS}"),
        ));
    }
    if p.background == Some(true) {
        return Err(unsupported(
            "background",
            format!("`background` responses are not supported: {STATELESS}"),
        ));
    }
    if p.prompt.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(unsupported(
            "prompt",
            "stored prompt templates (`prompt`) are not supported: send the text as `instructions` and `input`",
        ));
    }
    Ok(())
}

/// The echoed fields, with the Responses API's defaults.
fn echo(p: &Params, has_choice: bool) -> Echo {
    let mut m = Map::new();
    let opt = |v: Option<Value>| v.unwrap_or(Value::Null);
    m.insert(
        "instructions".into(),
        opt(p.instructions.clone().map(Value::String)),
    );
    m.insert(
        "max_output_tokens".into(),
        opt(p.max_output_tokens.map(Value::from)),
    );
    m.insert(
        "parallel_tool_calls".into(),
        Value::Bool(p.parallel_tool_calls.unwrap_or(true)),
    );
    m.insert("temperature".into(), opt(p.temperature.map(Value::from)));
    m.insert("top_p".into(), opt(p.top_p.map(Value::from)));
    m.insert(
        "tool_choice".into(),
        match (&p.tool_choice, has_choice) {
            (Some(c), true) => c.clone(),
            _ => Value::String("auto".into()),
        },
    );
    m.insert(
        "tools".into(),
        Value::Array(p.tools.clone().unwrap_or_default()),
    );
    let format = p
        .text
        .as_ref()
        .and_then(|t| t.format.clone())
        .unwrap_or_else(|| json!({"type": "text"}));
    m.insert("text".into(), json!({ "format": format }));
    m.insert(
        "metadata".into(),
        Value::Object(p.metadata.clone().unwrap_or_default()),
    );
    m.insert("store".into(), Value::Bool(false));
    m.insert("previous_response_id".into(), Value::Null);
    let reasoning = p.reasoning.as_ref();
    m.insert(
        "reasoning".into(),
        json!({
            "effort": reasoning.and_then(|r| r.effort.clone()),
            "summary": reasoning.and_then(|r| r.summary.clone()),
        }),
    );
    m.insert(
        "truncation".into(),
        Value::String(p.truncation.clone().unwrap_or_else(|| "disabled".into())),
    );
    m.insert("user".into(), opt(p.user.clone().map(Value::String)));
    m.insert("top_logprobs".into(), opt(p.top_logprobs.map(Value::from)));
    Echo(m)
}

/// A string field of an object, required.
fn string<'a>(obj: &'a Map<String, Value>, key: &str, at: &str) -> Result<&'a str> {
    obj.get(key).and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid_field(
            format!("{at}.{key}"),
            format!("`{at}.{key}` must be a string"),
        )
    })
}

/// Appends the chat message(s) of input item `i` (or merges it into the
/// last one).
fn input_item(item: &Value, i: usize, messages: &mut Vec<ChatMessage>) -> Result<()> {
    let at = format!("input[{i}]");
    let Some(obj) = item.as_object() else {
        return Err(ApiError::invalid_field(
            at,
            "an input item must be an object",
        ));
    };
    let kind = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        None | Some(Value::Null) if obj.contains_key("role") => "message",
        _ => {
            return Err(ApiError::invalid_field(
                format!("{at}.type"),
                format!("`{at}.type` must be a string"),
            ));
        }
    };
    match kind {
        "message" => messages.push(message(obj, &at)?),
        "function_call" => {
            let call = json!({
                "id": string(obj, "call_id", &at)?,
                "type": "function",
                "function": {
                    "name": string(obj, "name", &at)?,
                    "arguments": string(obj, "arguments", &at)?,
                },
            });
            // Calls of one turn are one assistant message, with its text
            // when the turn's message item came just before.
            match messages.last_mut() {
                Some(last) if last.role == "assistant" => {
                    let calls = last
                        .extra
                        .entry("tool_calls")
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(calls) = calls {
                        calls.push(call);
                    }
                }
                _ => {
                    let mut m = ChatMessage::text("assistant", "");
                    m.content = Value::Null;
                    m.extra
                        .insert("tool_calls".into(), Value::Array(vec![call]));
                    messages.push(m);
                }
            }
        }
        "function_call_output" => {
            let output = match obj.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => output_text(parts, &at)?,
                _ => {
                    return Err(ApiError::invalid_field(
                        format!("{at}.output"),
                        format!("`{at}.output` must be a string or an array of text parts"),
                    ));
                }
            };
            let mut m = ChatMessage::text("tool", output);
            m.extra.insert(
                "tool_call_id".into(),
                Value::String(string(obj, "call_id", &at)?.to_owned()),
            );
            messages.push(m);
        }
        // The reasoning of an earlier turn, sent back: chat has no place
        // for it.
        "reasoning" => {}
        other => {
            return Err(unsupported(
                format!("{at}.type"),
                format!(
                    "input items of type `{other}` are not supported (message, function_call, function_call_output and reasoning are)"
                ),
            ));
        }
    }
    Ok(())
}

/// The text of a `function_call_output`'s parts, joined.
fn output_text(parts: &[Value], at: &str) -> Result<String> {
    let mut out = String::new();
    for (j, part) in parts.iter().enumerate() {
        let here = format!("{at}.output[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text") => {
                let Some(obj) = part.as_object() else {
                    continue;
                };
                out.push_str(string(obj, "text", &here)?);
            }
            other => {
                return Err(unsupported(
                    format!("{here}.type"),
                    format!(
                        "function call output parts of type `{}` are not supported (only text)",
                        other.unwrap_or("?")
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// A message item as a chat message.
fn message(obj: &Map<String, Value>, at: &str) -> Result<ChatMessage> {
    let role = match string(obj, "role", at)? {
        "developer" => "system",
        r @ ("user" | "assistant" | "system") => r,
        other => {
            return Err(invalid(
                format!("{at}.role"),
                format!("`{at}.role` must be user, assistant, system or developer, not `{other}`"),
            ));
        }
    };
    let content = match obj.get("content") {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) => {
            let parts = parts
                .iter()
                .enumerate()
                .map(|(j, p)| content_part(p, &format!("{at}.content[{j}]")))
                .collect::<Result<Vec<_>>>()?;
            // An assistant turn's text parts are pieces of one output.
            if role == "assistant" && parts.iter().all(|p| p["type"] == "text") {
                Value::String(parts.iter().filter_map(|p| p["text"].as_str()).collect())
            } else {
                Value::Array(parts)
            }
        }
        _ => {
            return Err(ApiError::invalid_field(
                format!("{at}.content"),
                format!("`{at}.content` must be a string or an array of content parts"),
            ));
        }
    };
    Ok(ChatMessage {
        role: role.into(),
        content,
        extra: Map::new(),
    })
}

/// A content part as a chat content part.
fn content_part(part: &Value, at: &str) -> Result<Value> {
    let Some(obj) = part.as_object() else {
        return Err(ApiError::invalid_field(
            at,
            "a content part must be an object",
        ));
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text") => {
            Ok(json!({"type": "text", "text": string(obj, "text", at)?}))
        }
        Some("refusal") => Ok(json!({"type": "text", "text": string(obj, "refusal", at)?})),
        Some("input_image") => {
            let Some(url) = obj.get("image_url").and_then(Value::as_str) else {
                return Err(unsupported(
                    format!("{at}.image_url"),
                    format!(
                        "`{at}` needs an `image_url` (a URL or a data URL); uploaded files (`file_id`) are not supported"
                    ),
                ));
            };
            let mut image = json!({ "url": url });
            if let Some(d) = obj.get("detail").filter(|d| !d.is_null()) {
                image["detail"] = d.clone();
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        Some(other) => Err(unsupported(
            format!("{at}.type"),
            format!(
                "content parts of type `{other}` are not supported (input_text, output_text, input_image and refusal are)"
            ),
        )),
        None => Err(ApiError::invalid_field(
            format!("{at}.type"),
            format!("`{at}.type` must be a string"),
        )),
    }
}

/// Function tools in the chat shape; any other tool type is refused (the
/// gateway cannot run OpenAI's built-in tools).
fn tools(tools: &[Value]) -> Result<Vec<Value>> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let at = format!("tools[{i}]");
            let Some(obj) = t.as_object() else {
                return Err(ApiError::invalid_field(at, "a tool must be an object"));
            };
            match obj.get("type").and_then(Value::as_str) {
                Some("function") => {
                    let mut function = Map::new();
                    function.insert("name".into(), string(obj, "name", &at)?.into());
                    for key in ["description", "parameters", "strict"] {
                        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
                            function.insert(key.into(), v.clone());
                        }
                    }
                    Ok(json!({"type": "function", "function": function}))
                }
                Some(other) => Err(unsupported(
                    format!("{at}.type"),
                    format!(
                        "tools of type `{other}` are not supported: this gateway runs no built-in tools (only `function` tools)"
                    ),
                )),
                None => Err(ApiError::invalid_field(
                    format!("{at}.type"),
                    format!("`{at}.type` must be a string"),
                )),
            }
        })
        .collect()
}

/// `tool_choice` in the chat shape.
fn tool_choice(choice: &Value) -> Result<Value> {
    match choice {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => {
            Ok(choice.clone())
        }
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = string(o, "name", "tool_choice")?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err(unsupported(
            "tool_choice",
            "`tool_choice` must be `auto`, `none`, `required` or {\"type\": \"function\", \"name\": ...}",
        )),
    }
}

/// `text.format` as chat's `response_format` (`None` for plain text).
fn response_format(format: &Value) -> Result<Option<Value>> {
    let kind = format.get("type").and_then(Value::as_str);
    match (kind, format.as_object()) {
        (Some("text"), _) => Ok(None),
        (Some("json_object"), _) => Ok(Some(json!({"type": "json_object"}))),
        (Some("json_schema"), Some(o)) => {
            let mut schema = Map::new();
            schema.insert("name".into(), string(o, "name", "text.format")?.into());
            for key in ["schema", "strict", "description"] {
                if let Some(v) = o.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(unsupported(
            "text.format",
            "`text.format.type` must be `text`, `json_object` or `json_schema`",
        )),
    }
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
