//! Wire types of the OpenAI-compatible API shared by the router, the server
//! and the test kit.
//!
//! Requests and responses keep every field they do not name in a flattened
//! `extra` map, so tools, `response_format`, `stop`, `n`, `seed` and any
//! unknown field pass through untouched to OpenAI-compatible upstreams.

mod gather;

pub use gather::Gather;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /v1/chat/completions` request body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatRequest {
    /// Model or alias requested by the client.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Streaming options (`include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Largest number of tokens to generate (legacy name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Largest number of tokens to generate (current name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Stop sequences: a string or an array of strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Value>,
    /// Every other field, passed through untouched.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    /// True when the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// True when a streamed answer must end with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// `max_completion_tokens`, else `max_tokens`.
    pub fn max_output_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Stop sequences as a list (a single string becomes one entry).
    pub fn stop_sequences(&self) -> Vec<String> {
        stop_list(self.stop.as_ref())
    }
}

/// A `stop` field as a list: a single string becomes one entry, anything
/// but strings is left out.
fn stop_list(stop: Option<&Value>) -> Vec<String> {
    match stop {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// `POST /v1/completions` request body: OpenAI's legacy text completion
/// (what vLLM, llama.cpp and LM Studio serve, and code completion and
/// evaluation tools send).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompletionRequest {
    /// Model or alias requested by the client.
    pub model: String,
    /// The prompt: a string, an array of strings, an array of token ids or
    /// an array of such arrays (`Null` when absent; the server refuses it).
    #[serde(default)]
    pub prompt: Value,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Streaming options (`include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Largest number of tokens to generate (OpenAI's default is 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Stop sequences: a string or an array of strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Value>,
    /// Every other field (`suffix`, `echo`, `logprobs`, `n`, `best_of`,
    /// `seed`, penalties, `logit_bias`, `user`, ...), passed through
    /// untouched to OpenAI-compatible upstreams.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CompletionRequest {
    /// True when the client asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// True when a streamed answer must end with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// Stop sequences as a list (a single string becomes one entry).
    pub fn stop_sequences(&self) -> Vec<String> {
        stop_list(self.stop.as_ref())
    }

    /// The prompt when it is one text: a string, or an array holding one
    /// string.
    pub fn single_prompt(&self) -> Option<&str> {
        match &self.prompt {
            Value::String(s) => Some(s),
            Value::Array(a) if a.len() == 1 => a[0].as_str(),
            _ => None,
        }
    }
}

/// A request re-addressed to an upstream model name, serialized without
/// cloning the request. `stream` and `stream_options` follow `stream`.
#[derive(Debug, Clone, Copy)]
pub struct Readdressed<'a> {
    /// The client's request.
    pub req: &'a ChatRequest,
    /// The upstream's model name.
    pub model: &'a str,
    /// Whether the upstream should stream.
    pub stream: bool,
}

impl Serialize for Readdressed<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let r = self.req;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("model", self.model)?;
        m.serialize_entry("messages", &r.messages)?;
        Rest {
            stream: self.stream.then_some(r.stream_options.as_ref()),
            limits: &[
                ("max_tokens", r.max_tokens),
                ("max_completion_tokens", r.max_completion_tokens),
            ],
            temperature: r.temperature,
            top_p: r.top_p,
            stop: r.stop.as_ref(),
            extra: &r.extra,
        }
        .serialize_into(&mut m)?;
        m.end()
    }
}

/// A text completion request re-addressed to an upstream model name, as
/// [`Readdressed`] is for chat.
#[derive(Debug, Clone, Copy)]
pub struct ReaddressedCompletion<'a> {
    /// The client's request.
    pub req: &'a CompletionRequest,
    /// The upstream's model name.
    pub model: &'a str,
    /// Whether the upstream should stream.
    pub stream: bool,
}

impl Serialize for ReaddressedCompletion<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let r = self.req;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("model", self.model)?;
        m.serialize_entry("prompt", &r.prompt)?;
        Rest {
            stream: self.stream.then_some(r.stream_options.as_ref()),
            limits: &[("max_tokens", r.max_tokens)],
            temperature: r.temperature,
            top_p: r.top_p,
            stop: r.stop.as_ref(),
            extra: &r.extra,
        }
        .serialize_into(&mut m)?;
        m.end()
    }
}

/// What a re-addressed request sends after its input: `stream` (and its
/// options) when streaming, the limits and sampling fields that are set,
/// then every other field.
struct Rest<'a> {
    /// `Some` when streaming, with the client's `stream_options`.
    stream: Option<Option<&'a StreamOptions>>,
    /// Output limits by name.
    limits: &'a [(&'static str, Option<u32>)],
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Option<&'a Value>,
    extra: &'a Map<String, Value>,
}

impl Rest<'_> {
    fn serialize_into<M: serde::ser::SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        if let Some(options) = self.stream {
            m.serialize_entry("stream", &true)?;
            if let Some(o) = options {
                m.serialize_entry("stream_options", o)?;
            }
        }
        for (name, v) in self.limits {
            if let Some(v) = v {
                m.serialize_entry(name, v)?;
            }
        }
        if let Some(v) = self.temperature {
            m.serialize_entry("temperature", &v)?;
        }
        if let Some(v) = self.top_p {
            m.serialize_entry("top_p", &v)?;
        }
        if let Some(v) = self.stop {
            m.serialize_entry("stop", v)?;
        }
        for (k, v) in self.extra {
            m.serialize_entry(k, v)?;
        }
        Ok(())
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct StreamOptions {
    /// Send a final chunk carrying `usage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    /// Other options, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One message of a conversation (request or response).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, an array of content parts, or null (assistant tool calls).
    #[serde(default)]
    pub content: Value,
    /// Every other field (`name`, `tool_calls`, `tool_call_id`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    /// A message with text content.
    pub fn text(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: Value::String(content.into()),
            extra: Map::new(),
        }
    }

    /// The text of the message: the string, or the `text` parts joined by
    /// newlines.
    pub fn text_content(&self) -> String {
        match &self.content {
            Value::String(s) => s.clone(),
            Value::Array(parts) => {
                let mut out = String::new();
                for p in parts {
                    // A `refusal` part (an assistant turn replayed) is its text.
                    if let Some(t) = p
                        .get("text")
                        .or_else(|| p.get("refusal"))
                        .and_then(Value::as_str)
                    {
                        // Parts on lines of their own, as vLLM joins them:
                        // "Context: A." and "Question?" must not run together.
                        if !out.is_empty() && !t.is_empty() {
                            out.push('\n');
                        }
                        out.push_str(t);
                    }
                }
                out
            }
            _ => String::new(),
        }
    }
}

/// Token counts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(from = "UsageIn")]
pub struct Usage {
    /// Tokens in the prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Sum of both.
    #[serde(default)]
    pub total_tokens: u64,
    /// What of the prompt the provider read from its prompt cache: an
    /// upstream's own `cached_tokens` (priced apart by the spend tracking),
    /// or what a translation knows (Anthropic's `cache_read_input_tokens`).
    /// Read leniently: details of any other shape, or `null`s, are `None`,
    /// never a failed usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// What of the prompt the provider wrote to its prompt cache, which
    /// Anthropic bills above the input price: Anthropic's own
    /// `cache_creation_input_tokens`, reported where LiteLLM reports it (at
    /// the top of the usage; left out when unknown, so an OpenAI-shaped
    /// usage is unchanged). Read leniently: anything but a whole number
    /// (`null`, `1.5`, `"8"`) is `None`, never a failed usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u64>,
    /// Of `cache_creation_input_tokens`, those written to a 1-hour cache
    /// (Anthropic's `cache_creation.ephemeral_1h_input_tokens`, billed
    /// higher than 5-minute writes), for the pricing: read by the Anthropic
    /// translation, and from JSON where LiteLLM reports it
    /// (`prompt_tokens_details.cache_creation_token_details.ephemeral_1h_input_tokens`,
    /// leniently: anything but a whole number is `None`); never serialized.
    #[serde(skip_serializing)]
    pub cache_creation_1h_input_tokens: Option<u64>,
}

/// [`Usage`] as read from JSON: the same fields, the details read
/// leniently ([`lenient_details`], [`lenient_count`]).
#[derive(Deserialize)]
#[serde(rename = "Usage")]
struct UsageIn {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
    #[serde(default, deserialize_with = "lenient_details")]
    prompt_tokens_details: DetailsIn,
    #[serde(default, deserialize_with = "lenient_count")]
    cache_creation_input_tokens: Option<u64>,
}

/// What `prompt_tokens_details` gives: `cached_tokens`, and LiteLLM's
/// `cache_creation_token_details.ephemeral_1h_input_tokens`.
#[derive(Default)]
struct DetailsIn {
    cached: Option<u64>,
    written_1h: Option<u64>,
}

impl From<UsageIn> for Usage {
    fn from(u: UsageIn) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
            prompt_tokens_details: u
                .prompt_tokens_details
                .cached
                .map(|cached_tokens| PromptTokensDetails { cached_tokens }),
            cache_creation_input_tokens: u.cache_creation_input_tokens,
            cache_creation_1h_input_tokens: u.prompt_tokens_details.written_1h,
        }
    }
}

/// A token count as upstreams send it: a whole number gives it; anything
/// else (`null`, a fraction, a string, an object) is `None`.
fn lenient_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    // A number stays a number in a `Value`: no allocation for the usual case.
    Ok(Value::deserialize(d)?.as_u64())
}

/// Which of `keys` a field name is, compared where it lies (`None`: none).
struct KeyOf(&'static [&'static str]);

impl<'de> serde::de::DeserializeSeed<'de> for KeyOf {
    type Value = Option<usize>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for KeyOf {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E>(self, s: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|k| *k == s))
    }
}

/// A visitor's answer to anything but an object: its default value (the
/// value skipped unread), never an error.
macro_rules! not_an_object_is_default {
    () => {
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_some<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
    };
}

/// LiteLLM's `cache_creation_token_details`, read leniently: its
/// `ephemeral_1h_input_tokens` when a whole number, else `None`.
struct OneHourWrites(Option<u64>);

impl<'de> Deserialize<'de> for OneHourWrites {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<u64>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("cache creation details")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut n = None;
                while let Some(key) = map.next_key_seed(KeyOf(&["ephemeral_1h_input_tokens"]))? {
                    match key {
                        // A number stays a number in a `Value`: no allocation.
                        Some(_) => n = map.next_value::<Value>()?.as_u64(),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(n)
            }
            not_an_object_is_default!();
        }
        d.deserialize_any(V).map(OneHourWrites)
    }
}

/// `prompt_tokens_details` as upstreams send it: an object whose
/// `cached_tokens` is a whole number gives it, and whose
/// `cache_creation_token_details.ephemeral_1h_input_tokens` (LiteLLM's
/// 1-hour cache writes) is one gives that; anything else (`null`, no such
/// field, another type) is `None`. Other fields are skipped unread, and
/// nothing is allocated.
fn lenient_details<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DetailsIn, D::Error> {
    use serde::de::{IgnoredAny, MapAccess, Visitor};
    struct Details;
    impl<'de> Visitor<'de> for Details {
        type Value = DetailsIn;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("usage details")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = DetailsIn::default();
            const KEYS: &[&str] = &["cached_tokens", "cache_creation_token_details"];
            while let Some(key) = map.next_key_seed(KeyOf(KEYS))? {
                match key {
                    // A number stays a number in a `Value`: no allocation.
                    Some(0) => out.cached = map.next_value::<Value>()?.as_u64(),
                    Some(_) => out.written_1h = map.next_value::<OneHourWrites>()?.0,
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(out)
        }
        not_an_object_is_default!();
    }
    d.deserialize_any(Details)
}

/// OpenAI's `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PromptTokensDetails {
    /// Prompt tokens read from the provider's prompt cache.
    pub cached_tokens: u64,
}

impl Usage {
    /// Builds a usage with the total filled in.
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            // Counts come from upstreams: never an overflow panic (debug builds).
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: None,
            cache_creation_input_tokens: None,
            cache_creation_1h_input_tokens: None,
        }
    }

    /// The same usage saying how many prompt tokens came from the
    /// provider's prompt cache (`None`: unknown, left out).
    pub fn with_cached_tokens(self, cached: Option<u64>) -> Self {
        Usage {
            prompt_tokens_details: cached
                .map(|cached_tokens| PromptTokensDetails { cached_tokens }),
            ..self
        }
    }

    /// The same usage saying how many prompt tokens the provider wrote to
    /// its prompt cache (`written`), and how many of those went to a 1-hour
    /// cache (`one_hour`); `None`: unknown, left out.
    pub fn with_cache_writes(self, written: Option<u64>, one_hour: Option<u64>) -> Self {
        Usage {
            cache_creation_input_tokens: written,
            cache_creation_1h_input_tokens: one_hour,
            ..self
        }
    }
}

/// A non-streamed chat completion (`object: "chat.completion"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatCompletion {
    /// Completion id.
    #[serde(default)]
    pub id: String,
    /// Always `chat.completion`.
    #[serde(default = "object_completion")]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// The answers.
    pub choices: Vec<Choice>,
    /// Token counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Every other field (`system_fingerprint`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn object_completion() -> String {
    "chat.completion".into()
}

/// One answer of a completion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Choice {
    /// Position among the choices.
    #[serde(default)]
    pub index: u32,
    /// The generated message.
    pub message: ChatMessage,
    /// `stop`, `length`, `tool_calls`, `content_filter`.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Every other field (`logprobs`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One streamed chunk (`object: "chat.completion.chunk"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatChunk {
    /// Completion id, the same on every chunk.
    #[serde(default)]
    pub id: String,
    /// Always `chat.completion.chunk`.
    #[serde(default = "object_chunk")]
    pub object: String,
    /// Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// The model that answers.
    #[serde(default)]
    pub model: String,
    /// Deltas (empty on the final usage chunk).
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Token counts (final chunk with `include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn object_chunk() -> String {
    "chat.completion.chunk".into()
}

/// The delta of one choice in a chunk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChunkChoice {
    /// Position among the choices.
    #[serde(default)]
    pub index: u32,
    /// What is new.
    #[serde(default)]
    pub delta: Delta,
    /// Set on the last content chunk.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// New content of a streamed message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Delta {
    /// Set on the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Every other field (`tool_calls`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatChunk {
    /// A chunk with one choice.
    pub fn delta(
        id: &str,
        created: u64,
        model: &str,
        delta: Delta,
        finish_reason: Option<String>,
    ) -> Self {
        ChatChunk {
            id: id.to_owned(),
            object: object_chunk(),
            created,
            model: model.to_owned(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
            }],
            usage: None,
            extra: Map::new(),
        }
    }

    /// The final usage chunk (no choices).
    pub fn usage(id: &str, created: u64, model: &str, usage: Usage) -> Self {
        ChatChunk {
            id: id.to_owned(),
            object: object_chunk(),
            created,
            model: model.to_owned(),
            choices: Vec::new(),
            usage: Some(usage),
            extra: Map::new(),
        }
    }
}

/// `GET /v1/models` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The models.
    pub data: Vec<Model>,
}

impl ModelList {
    /// A list of these models.
    pub fn new(data: Vec<Model>) -> Self {
        ModelList {
            object: "list".into(),
            data,
        }
    }
}

/// One entry of a model list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Model {
    /// The name clients use.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix seconds (0 when unknown).
    #[serde(default)]
    pub created: u64,
    /// Who serves it: a provider name, `alias`, or `uat` for local models.
    pub owned_by: String,
}

impl Model {
    /// A model entry.
    pub fn new(id: impl Into<String>, owned_by: impl Into<String>) -> Self {
        Model {
            id: id.into(),
            object: "model".into(),
            created: 0,
            owned_by: owned_by.into(),
        }
    }
}

/// The OpenAI error body `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorObject,
}

/// The error object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorObject {
    /// Human-readable message.
    pub message: String,
    /// `invalid_request_error`, `server_error`, `upstream_error`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault.
    #[serde(default)]
    pub param: Option<String>,
    /// Machine-readable code.
    #[serde(default)]
    pub code: Option<String>,
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Token counts come from upstreams; a total past u64 saturates (it
    /// overflowed, a panic in debug builds).
    #[test]
    fn usage_totals_saturate() {
        assert_eq!(Usage::new(2, 3).total_tokens, 5);
        assert_eq!(Usage::new(u64::MAX, 1).total_tokens, u64::MAX);
    }

    #[test]
    fn unknown_fields_round_trip_untouched() {
        let body = serde_json::json!({
            "model": "m",
            "messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "t1"}]}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "response_format": {"type": "json_object"},
            "stop": ["a", "b"],
            "n": 2,
            "seed": 7,
            "x_custom": {"deep": [1, 2]}
        });
        let req: ChatRequest = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(req.stop_sequences(), vec!["a", "b"]);
        let back = serde_json::to_value(&req).unwrap();
        assert_eq!(back, body);
    }

    #[test]
    fn readdressed_replaces_model_and_keeps_the_rest() {
        let body = serde_json::json!({
            "model": "alias", "messages": [{"role": "user", "content": "hi"}],
            "stream": true, "stream_options": {"include_usage": true}, "seed": 3, "n": 1
        });
        let req: ChatRequest = serde_json::from_value(body).unwrap();
        let out = serde_json::to_value(Readdressed {
            req: &req,
            model: "gpt-x",
            stream: true,
        })
        .unwrap();
        assert_eq!(out["model"], "gpt-x");
        assert_eq!(out["seed"], 3);
        assert_eq!(out["stream_options"]["include_usage"], true);
        let out = serde_json::to_value(Readdressed {
            req: &req,
            model: "gpt-x",
            stream: false,
        })
        .unwrap();
        assert!(out.get("stream").is_none() && out.get("stream_options").is_none());
        assert_eq!(out["n"], 1);
    }

    #[test]
    fn text_content_joins_parts() {
        let m: ChatMessage = serde_json::from_value(serde_json::json!({
            "role": "user",
            "content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}, {"type": "refusal", "refusal": "c"}]
        }))
        .unwrap();
        assert_eq!(m.text_content(), "a\nb\nc");
        let m: ChatMessage = serde_json::from_value(serde_json::json!({
            "role": "user",
            "content": [{"type": "text", "text": ""}, {"type": "text", "text": "Context: A."}, {"type": "text", "text": ""}, {"type": "text", "text": "Question?"}]
        }))
        .unwrap();
        assert_eq!(m.text_content(), "Context: A.\nQuestion?");
    }

    #[test]
    fn include_usage_defaults_to_false() {
        let req: ChatRequest = serde_json::from_value(
            serde_json::json!({"model": "m", "messages": [], "stream": true}),
        )
        .unwrap();
        assert!(req.is_stream());
        assert!(!req.include_usage());
    }

    /// An upstream's `cached_tokens` is read; details of another shape
    /// never fail the usage.
    #[test]
    fn usage_details_are_read_leniently() {
        let read = |details: &str| -> Usage {
            serde_json::from_str(&format!(
                r#"{{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12,"prompt_tokens_details":{details}}}"#
            ))
            .unwrap_or_else(|e| panic!("{details}: {e}"))
        };
        let u = read(r#"{"audio_tokens":0,"cached_tokens":8,"extra":{"a":[1]}}"#);
        assert_eq!(
            u.prompt_tokens_details,
            Some(PromptTokensDetails { cached_tokens: 8 })
        );
        assert_eq!((u.prompt_tokens, u.total_tokens), (10, 12));
        for odd in [
            "null",
            "{}",
            r#"{"cached_tokens":null}"#,
            r#"{"cached_tokens":1.5}"#,
            r#"{"cached_tokens":"8"}"#,
            "7",
            r#""x""#,
            "[1,{}]",
            "true",
        ] {
            let u = read(odd);
            assert_eq!(u.prompt_tokens_details, None, "{odd}");
            assert_eq!(u.total_tokens, 12, "{odd}");
        }
        let none: Usage = serde_json::from_str(r#"{"prompt_tokens":1}"#).unwrap();
        assert_eq!(none.prompt_tokens_details, None);
        // Written back as OpenAI writes it.
        let v = serde_json::to_value(Usage::new(10, 2).with_cached_tokens(Some(8))).unwrap();
        assert_eq!(v["prompt_tokens_details"]["cached_tokens"], 8);
    }

    /// Cache writes are read where LiteLLM reports them, leniently, and
    /// written back only when known; the 1-hour split never leaves.
    #[test]
    fn cache_writes_are_read_leniently_and_written_only_when_known() {
        let read = |v: &str| -> Usage {
            serde_json::from_str(&format!(
                r#"{{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12,"cache_creation_input_tokens":{v}}}"#
            ))
            .unwrap_or_else(|e| panic!("{v}: {e}"))
        };
        assert_eq!(read("8").cache_creation_input_tokens, Some(8));
        for odd in ["null", "1.5", "-1", r#""8""#, "{}", "[1]", "true"] {
            let u = read(odd);
            assert_eq!(u.cache_creation_input_tokens, None, "{odd}");
            assert_eq!(u.total_tokens, 12, "{odd}");
        }
        let none: Usage = serde_json::from_str(r#"{"prompt_tokens":1}"#).unwrap();
        assert_eq!(none.cache_creation_input_tokens, None);
        // OpenAI's shape is unchanged when nothing was written.
        let plain = serde_json::to_value(Usage::new(10, 2)).unwrap();
        assert_eq!(
            plain,
            serde_json::json!({"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12})
        );
        let u = Usage::new(10, 2).with_cache_writes(Some(6), Some(4));
        let v = serde_json::to_value(u).unwrap();
        assert_eq!(v["cache_creation_input_tokens"], 6);
        assert!(
            v.get("cache_creation_1h_input_tokens").is_none(),
            "internal: {v}"
        );
        let back: Usage = serde_json::from_value(v).unwrap();
        assert_eq!(back, Usage::new(10, 2).with_cache_writes(Some(6), None));
    }

    /// LiteLLM's 1-hour cache writes, in `prompt_tokens_details`, are read
    /// leniently (the cached tokens beside them kept either way), and never
    /// written back.
    #[test]
    fn litellm_one_hour_cache_writes_are_read() {
        let read = |details: &str| -> Usage {
            serde_json::from_str(&format!(
                r#"{{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12,"cache_creation_input_tokens":6,"prompt_tokens_details":{details}}}"#
            ))
            .unwrap_or_else(|e| panic!("{details}: {e}"))
        };
        let u = read(
            r#"{"cached_tokens":2,"text_tokens":null,"cache_creation_token_details":{"ephemeral_5m_input_tokens":2,"ephemeral_1h_input_tokens":4}}"#,
        );
        assert_eq!(u.cache_creation_1h_input_tokens, Some(4));
        assert_eq!(u.cache_creation_input_tokens, Some(6));
        assert_eq!(
            u.prompt_tokens_details,
            Some(PromptTokensDetails { cached_tokens: 2 })
        );
        for odd in [
            r#"{"cached_tokens":2,"cache_creation_token_details":null}"#,
            r#"{"cached_tokens":2,"cache_creation_token_details":{}}"#,
            r#"{"cached_tokens":2,"cache_creation_token_details":{"ephemeral_1h_input_tokens":null}}"#,
            r#"{"cached_tokens":2,"cache_creation_token_details":{"ephemeral_1h_input_tokens":"4"}}"#,
            r#"{"cached_tokens":2,"cache_creation_token_details":{"ephemeral_1h_input_tokens":1.5}}"#,
            r#"{"cached_tokens":2,"cache_creation_token_details":[4]}"#,
            r#"{"cached_tokens":2,"cache_creation_token_details":4}"#,
            r#"{"cached_tokens":2,"cache_creation_token_details":"x"}"#,
            r#"{"cached_tokens":2,"ephemeral_1h_input_tokens":4}"#,
        ] {
            let u = read(odd);
            assert_eq!(u.cache_creation_1h_input_tokens, None, "{odd}");
            assert_eq!(
                u.prompt_tokens_details,
                Some(PromptTokensDetails { cached_tokens: 2 }),
                "{odd}"
            );
            assert_eq!(u.total_tokens, 12, "{odd}");
        }
        // Without `cached_tokens`: the 1-hour writes still read.
        let u = read(r#"{"cache_creation_token_details":{"ephemeral_1h_input_tokens":4}}"#);
        assert_eq!(
            (u.prompt_tokens_details, u.cache_creation_1h_input_tokens),
            (None, Some(4))
        );
        let v = serde_json::to_value(u).unwrap();
        assert!(!v.to_string().contains("1h"), "never written back: {v}");
    }

    #[test]
    fn a_completion_request_keeps_its_other_fields_and_names_one_prompt() {
        let req: CompletionRequest = serde_json::from_value(serde_json::json!({
            "model": "m", "prompt": ["def f():"], "suffix": "\n", "echo": true,
            "stream": true, "stream_options": {"include_usage": true}, "stop": "\n\n"
        }))
        .unwrap();
        assert_eq!(req.single_prompt(), Some("def f():"));
        assert!(req.is_stream() && req.include_usage());
        assert_eq!(req.stop_sequences(), ["\n\n"]);
        assert_eq!(req.extra["suffix"], "\n");
        assert_eq!(req.extra["echo"], true);
        let two: CompletionRequest =
            serde_json::from_value(serde_json::json!({"model": "m", "prompt": ["a", "b"]}))
                .unwrap();
        assert_eq!(two.single_prompt(), None, "two prompts are not one");
        let tokens: CompletionRequest =
            serde_json::from_value(serde_json::json!({"model": "m", "prompt": [1, 2]})).unwrap();
        assert_eq!(tokens.single_prompt(), None, "token ids are no text");
        let none: CompletionRequest =
            serde_json::from_value(serde_json::json!({"model": "m"})).unwrap();
        assert!(none.prompt.is_null());
    }
}
