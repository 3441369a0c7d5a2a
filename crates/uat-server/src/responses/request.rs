//! A Responses API request turned into a chat request, and the fields its
//! answer echoes ([`Echo`]).
//!
//! Every input item and tool has a chat equivalent, is refused with a 400
//! naming it (`input[3].type`, `tools[0].type`), or is one of these, left
//! out:
//!
//! - `reasoning` input items: a client sends back the reasoning of earlier
//!   turns; chat has no place for it, and the model does without.
//! - OpenAI's built-in tools (`web_search`, `file_search`, `local_shell`,
//!   `mcp`, ...: every tool type but `function` and `custom`), which the
//!   gateway cannot run, and the input items of their calls
//!   (`web_search_call`, `local_shell_call_output`, ...: item types ending
//!   in `_call` or `_call_output`, and `mcp_*`). This is what Codex's own
//!   chat path does. They are reported ([`Translated::dropped_tools`],
//!   [`Translated::dropped_items`]): the handler logs a warning and names
//!   the tools in `x-uat-dropped-tools`. A `tool_choice` naming one is
//!   refused.
//! - The settings listed on [`Params`] as accepted and not sent, and any
//!   field this gateway does not know.
//!
//! `custom` tools (freeform input, Codex's `apply_patch` for gpt-5 models)
//! become chat function tools taking one string, `input`
//! ([`custom_parameters`]); their calls are answered as `custom_tool_call`
//! items (see [`Translated::custom_tools`]).

#![allow(
    clippy::result_large_err,
    reason = "ApiError is the server-wide error type; cold path"
)]

use crate::error::ApiError;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uat_types::{ChatMessage, ChatRequest, StreamOptions};

/// The `include` value that asks for logprobs (returned when the upstream
/// gives them). Any other value only asks for data this gateway never
/// produces (encrypted reasoning, built-in tools' results, image URLs of
/// the input) and is ignored.
const LOGPROBS: &str = "message.output_text.logprobs";

/// The parameters of the chat function tool a `custom` tool becomes: one
/// string, `input`.
fn custom_parameters() -> Value {
    json!({
        "type": "object",
        "properties": {"input": {"type": "string"}},
        "required": ["input"],
        "additionalProperties": false,
    })
}

/// A custom tool's grammar (or other format text) longer than this is
/// left out of the function's description.
const FORMAT_IN_DESCRIPTION: usize = 500;

/// The top-level fields of a Responses request this gateway reads. Unknown
/// fields are ignored (not sent upstream). Sent upstream as they are:
/// `prompt_cache_key`, `safety_identifier`, `service_tier`, and
/// `text.verbosity` as `verbosity`. Accepted and not sent upstream:
/// `metadata` (echoed), `store` (nothing is stored: the answer says
/// `store: false`), `truncation`, `include` (but for the logprobs one),
/// `reasoning.summary`, `top_logprobs` without the logprobs `include`,
/// `max_tool_calls` (not enforced: the model may call more tools),
/// `stream_options`. Function tools' `strict` is sent only when given
/// (the Responses API's default is `true`, chat's `false`).
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
    prompt_cache_key: Option<Value>,
    safety_identifier: Option<Value>,
    service_tier: Option<Value>,
}

/// `reasoning`.
#[derive(Deserialize)]
struct Reasoning {
    effort: Option<String>,
    summary: Option<String>,
}

/// `text`: the output format and the verbosity.
#[derive(Deserialize)]
struct Text {
    format: Option<Value>,
    verbosity: Option<Value>,
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
    /// The names of the `custom` tools: calls of these are answered as
    /// `custom_tool_call` items.
    pub(crate) custom_tools: Vec<String>,
    /// The types of the built-in tools left out, once each, in order.
    pub(crate) dropped_tools: Vec<String>,
    /// The types of the built-in tools' input items left out, once each.
    pub(crate) dropped_items: Vec<String>,
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

/// Pushes `v` unless it is there already.
fn push_once(list: &mut Vec<String>, v: &str) {
    if !list.iter().any(|x| x == v) {
        list.push(v.to_owned());
    }
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

    let mut conv = Conversation::default();
    if let Some(i) = &p.instructions {
        conv.messages.push(ChatMessage::text("system", i.as_str()));
    }
    let before = conv.messages.len();
    match &p.input {
        None => return Err(ApiError::invalid_field("input", "`input` is required")),
        Some(Value::String(s)) => conv.push(ChatMessage::text("user", s.as_str())),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(item, i, &mut conv)?;
            }
        }
        Some(_) => {
            return Err(ApiError::invalid_field(
                "input",
                "`input` must be a string or an array of items",
            ));
        }
    }
    conv.flush();
    // The instructions alone are no conversation.
    if conv.messages.len() == before {
        return Err(ApiError::invalid_field(
            "input",
            "`input` must contain at least one message",
        ));
    }

    let mut extra = Map::new();
    let tools = tools(p.tools.as_deref().unwrap_or_default())?;
    let tool_choice = p
        .tool_choice
        .as_ref()
        .map(|c| tool_choice(c, &tools.dropped))
        .transpose()?;
    // Chat refuses `tool_choice` and `parallel_tool_calls` without tools
    // (and an empty `tools`): sent only with some.
    if !tools.chat.is_empty() {
        extra.insert("tools".into(), Value::Array(tools.chat));
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
    // `logprobs: true` beside `top_logprobs`); `top_logprobs` alone shapes
    // what is not returned.
    if include.iter().any(|v| v == LOGPROBS) {
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
    let verbosity = p.text.as_ref().and_then(|t| t.verbosity.as_ref());
    for (key, v) in [
        ("verbosity", verbosity),
        ("prompt_cache_key", p.prompt_cache_key.as_ref()),
        ("safety_identifier", p.safety_identifier.as_ref()),
        ("service_tier", p.service_tier.as_ref()),
    ] {
        if let Some(v) = v.filter(|v| !v.is_null()) {
            extra.insert(key.into(), v.clone());
        }
    }
    let stream = p.stream.unwrap_or(false);
    let chat = ChatRequest {
        model: p.model.clone(),
        messages: conv.messages,
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
        custom_tools: tools.custom,
        dropped_tools: tools.dropped,
        dropped_items: conv.dropped,
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

/// The chat messages of the input, being built.
#[derive(Default)]
struct Conversation {
    messages: Vec<ChatMessage>,
    /// Images of tool outputs not sent yet: chat's tool messages carry
    /// text only, so they follow the run of tool messages as a user
    /// message (a user message between two tool messages of one turn
    /// would break it).
    images: Vec<Value>,
    /// The types of the input items left out.
    dropped: Vec<String>,
}

impl Conversation {
    /// Sends the pending tool output images as a user message.
    fn flush(&mut self) {
        if !self.images.is_empty() {
            let parts = std::mem::take(&mut self.images);
            self.messages.push(ChatMessage {
                role: "user".into(),
                content: Value::Array(parts),
                extra: Map::new(),
            });
        }
    }

    /// Appends a message that is not a tool message.
    fn push(&mut self, m: ChatMessage) {
        self.flush();
        self.messages.push(m);
    }

    /// Appends a tool call: calls of one turn are one assistant message,
    /// with its text when the turn's message item came just before.
    fn push_call(&mut self, call: Value) {
        self.flush();
        match self.messages.last_mut() {
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
                self.messages.push(m);
            }
        }
    }

    /// Appends a tool message of this output; its images come after the
    /// run of tool messages.
    fn push_output(&mut self, call_id: &str, text: String, images: Vec<Value>) {
        let text = if text.is_empty() && !images.is_empty() {
            "(the output is the image(s) in the next message)".to_owned()
        } else {
            text
        };
        let mut m = ChatMessage::text("tool", text);
        m.extra
            .insert("tool_call_id".into(), Value::String(call_id.to_owned()));
        self.messages.push(m);
        if !images.is_empty() {
            self.images.push(json!({
                "type": "text",
                "text": format!("The image output of tool call `{call_id}`:"),
            }));
            self.images.extend(images);
        }
    }
}

/// Whether an input item type is a call of a built-in tool, or its
/// output (`web_search_call`, `local_shell_call_output`, `mcp_list_tools`).
fn is_built_in_item(kind: &str) -> bool {
    kind.ends_with("_call") || kind.ends_with("_call_output") || kind.starts_with("mcp_")
}

/// Appends the chat message(s) of input item `i` (or merges it into the
/// last one).
fn input_item(item: &Value, i: usize, conv: &mut Conversation) -> Result<()> {
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
        "message" => conv.push(message(obj, &at)?),
        "function_call" => conv.push_call(json!({
            "id": string(obj, "call_id", &at)?,
            "type": "function",
            "function": {
                "name": string(obj, "name", &at)?,
                "arguments": string(obj, "arguments", &at)?,
            },
        })),
        // A custom tool's call: its function takes the input as `input`.
        "custom_tool_call" => conv.push_call(json!({
            "id": string(obj, "call_id", &at)?,
            "type": "function",
            "function": {
                "name": string(obj, "name", &at)?,
                "arguments": json!({"input": string(obj, "input", &at)?}).to_string(),
            },
        })),
        "function_call_output" | "custom_tool_call_output" => {
            let call_id = string(obj, "call_id", &at)?;
            let (text, images) = match obj.get("output") {
                Some(Value::String(s)) => (s.clone(), Vec::new()),
                Some(Value::Array(parts)) => tool_output(parts, &at)?,
                _ => {
                    return Err(ApiError::invalid_field(
                        format!("{at}.output"),
                        format!(
                            "`{at}.output` must be a string or an array of text and image parts"
                        ),
                    ));
                }
            };
            conv.push_output(call_id, text, images);
        }
        // The reasoning of an earlier turn, sent back: chat has no place
        // for it.
        "reasoning" => {}
        // A call of a built-in tool (or its output): the tool is not
        // offered to the model.
        other if is_built_in_item(other) => push_once(&mut conv.dropped, other),
        other => {
            return Err(unsupported(
                format!("{at}.type"),
                format!(
                    "input items of type `{other}` are not supported (message, function_call, function_call_output, custom_tool_call, custom_tool_call_output and reasoning are)"
                ),
            ));
        }
    }
    Ok(())
}

/// The text of a tool output's parts, joined, and its images as chat
/// content parts.
fn tool_output(parts: &[Value], at: &str) -> Result<(String, Vec<Value>)> {
    let mut text = String::new();
    let mut images = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let here = format!("{at}.output[{j}]");
        match part.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text") => {
                let Some(obj) = part.as_object() else {
                    continue;
                };
                text.push_str(string(obj, "text", &here)?);
            }
            Some("input_image") => images.push(content_part(part, &here)?),
            other => {
                return Err(unsupported(
                    format!("{here}.type"),
                    format!(
                        "tool output parts of type `{}` are not supported (input_text, output_text and input_image are)",
                        other.unwrap_or("?")
                    ),
                ));
            }
        }
    }
    Ok((text, images))
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
                .map(|(j, p)| {
                    let here = format!("{at}.content[{j}]");
                    // Chat's assistant messages carry no images.
                    if role == "assistant"
                        && p.get("type").and_then(Value::as_str) == Some("input_image")
                    {
                        return Err(unsupported(
                            format!("{here}.type"),
                            format!("`{here}`: an assistant message cannot carry an image (`input_image`)"),
                        ));
                    }
                    content_part(p, &here)
                })
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
            // A URL, or `{"url": ...}` as chat has it.
            let url = match obj.get("image_url") {
                Some(Value::String(u)) => Some(u.as_str()),
                Some(Value::Object(o)) => o.get("url").and_then(Value::as_str),
                _ => None,
            };
            let Some(url) = url else {
                if obj.get("file_id").is_some_and(|f| !f.is_null()) {
                    return Err(unsupported(
                        format!("{at}.file_id"),
                        format!(
                            "`{at}.file_id`: uploaded files are not supported (this gateway keeps no files); send the image as `image_url`, a URL or a data URL"
                        ),
                    ));
                }
                return Err(ApiError::invalid_field(
                    format!("{at}.image_url"),
                    format!("`{at}` needs an `image_url`: a URL or a data URL"),
                ));
            };
            let mut image = json!({ "url": url });
            let detail = obj
                .get("detail")
                .or_else(|| obj.get("image_url").and_then(|i| i.get("detail")))
                .filter(|d| !d.is_null());
            if let Some(d) = detail {
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

/// The request's tools, translated.
struct Tools {
    /// In the chat shape.
    chat: Vec<Value>,
    /// The names of the `custom` tools.
    custom: Vec<String>,
    /// The types of the built-in tools left out, once each.
    dropped: Vec<String>,
}

/// Function and custom tools in the chat shape; any other tool type is a
/// built-in tool the gateway cannot run, left out.
fn tools(tools: &[Value]) -> Result<Tools> {
    let mut out = Tools {
        chat: Vec::new(),
        custom: Vec::new(),
        dropped: Vec::new(),
    };
    for (i, t) in tools.iter().enumerate() {
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
                out.chat
                    .push(json!({"type": "function", "function": function}));
            }
            Some("custom") => {
                let name = string(obj, "name", &at)?;
                let mut function = Map::new();
                function.insert("name".into(), name.into());
                if let Some(d) = custom_description(obj) {
                    function.insert("description".into(), Value::String(d));
                }
                function.insert("parameters".into(), custom_parameters());
                out.chat
                    .push(json!({"type": "function", "function": function}));
                push_once(&mut out.custom, name);
            }
            Some(other) => push_once(&mut out.dropped, other),
            None => {
                return Err(ApiError::invalid_field(
                    format!("{at}.type"),
                    format!("`{at}.type` must be a string"),
                ));
            }
        }
    }
    Ok(out)
}

/// A custom tool's description, with its input format when it is a short
/// text (a long grammar, as Codex's `apply_patch` one, is left out: the
/// description says what the input is).
fn custom_description(obj: &Map<String, Value>) -> Option<String> {
    let description = obj
        .get("description")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty());
    let format = obj.get("format").and_then(Value::as_object);
    let note = format
        .filter(|f| f.get("type").and_then(Value::as_str) == Some("grammar"))
        .and_then(|f| {
            let definition = f.get("definition").and_then(Value::as_str)?;
            let syntax = f.get("syntax").and_then(Value::as_str).unwrap_or("grammar");
            (!definition.is_empty() && definition.len() <= FORMAT_IN_DESCRIPTION)
                .then(|| format!("The input must match this {syntax} definition:\n{definition}"))
        });
    match (description, note) {
        (Some(d), Some(n)) => Some(format!("{d}\n\n{n}")),
        (Some(d), None) => Some(d.to_owned()),
        (None, n) => n,
    }
}

/// `tool_choice` in the chat shape.
fn tool_choice(choice: &Value, dropped: &[String]) -> Result<Value> {
    match choice {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => {
            Ok(choice.clone())
        }
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("function" | "custom") => {
                let name = string(o, "name", "tool_choice")?;
                Ok(json!({"type": "function", "function": {"name": name}}))
            }
            Some(t) if dropped.iter().any(|d| d == t) => Err(unsupported(
                "tool_choice",
                format!(
                    "`tool_choice` names the built-in tool `{t}`, which this gateway cannot run (its tools are left out)"
                ),
            )),
            _ => Err(unsupported(
                "tool_choice",
                "`tool_choice` must be `auto`, `none`, `required` or {\"type\": \"function\" or \"custom\", \"name\": ...}",
            )),
        },
        _ => Err(unsupported(
            "tool_choice",
            "`tool_choice` must be `auto`, `none`, `required` or {\"type\": \"function\" or \"custom\", \"name\": ...}",
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
