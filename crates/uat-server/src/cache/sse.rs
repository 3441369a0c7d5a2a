//! Chat completions between their two wire forms: an SSE stream of
//! `chat.completion.chunk` events is assembled into one `chat.completion`
//! (what the cache stores), and a stored completion is replayed as a valid
//! SSE stream ending in `data: [DONE]`. Content text survives both ways
//! byte for byte. Legacy text completions (`/v1/completions`, whose stream
//! and answer are both `text_completion` objects with `choices[].text`)
//! go the same two ways ([`Form::Text`]).

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

#[derive(Default)]
struct ToolCallAcc {
    id: Option<Value>,
    kind: Option<Value>,
    name: String,
    arguments: String,
    /// Other fields of a call (Gemini's `extra_content`), kept as they
    /// came; the same field again with another value cannot be merged.
    extra: Map<String, Value>,
}

/// The legacy `function_call` (before tool calls), folded like one.
#[derive(Default)]
struct FunctionCallAcc {
    name: String,
    arguments: String,
}

/// A delta field the assembler has no rule of its own for.
enum Extra {
    /// Text, joined as it comes (`reasoning_content` from reasoning models).
    Text(String),
    /// A list, whose items are appended as they come (`annotations`: the
    /// citations of a web search).
    List(Vec<Value>),
}

#[derive(Default)]
struct ChoiceAcc {
    role: Option<Value>,
    content: Option<String>,
    refusal: Option<String>,
    function_call: Option<FunctionCallAcc>,
    /// Other text or list fields, stored in the message under their names.
    extra: BTreeMap<String, Extra>,
    tool_calls: BTreeMap<u64, ToolCallAcc>,
    /// `logprobs.content` / `logprobs.refusal` items, in order.
    logprobs: Option<(Vec<Value>, Vec<Value>)>,
    /// A text completion's legacy `logprobs`: each list (`tokens`,
    /// `token_logprobs`, `top_logprobs`, `text_offset`) joined in order.
    text_logprobs: Option<Map<String, Value>>,
    /// A text completion choice's other fields (vLLM's `stop_reason`,
    /// `token_ids`): lists joined, other values as last sent.
    text_extra: Map<String, Value>,
    finish_reason: Option<Value>,
}

/// Why a delta cannot be recorded: a field of a shape the assembler does
/// not know how to fold (`audio`, an object; a number). The stream is then
/// forwarded but not stored, since what is stored would lose it.
struct Unfoldable;

impl ChoiceAcc {
    /// Folds one `delta` into the choice. Every non-null field is either
    /// folded or refused: none is dropped.
    fn fold(&mut self, delta: &Value) -> Result<(), Unfoldable> {
        let fields = match delta {
            Value::Object(f) => f,
            Value::Null => return Ok(()),
            _ => return Err(Unfoldable),
        };
        for (name, v) in fields {
            if v.is_null() {
                continue;
            }
            match name.as_str() {
                "role" => self.role = Some(v.clone()),
                "content" => push_text(&mut self.content, v)?,
                "refusal" => push_text(&mut self.refusal, v)?,
                "tool_calls" => self.fold_tool_calls(v)?,
                "function_call" => {
                    let f = self.function_call.get_or_insert_with(Default::default);
                    fold_function(v, &mut f.name, &mut f.arguments)?;
                }
                _ => match (self.extra.get_mut(name.as_str()), v) {
                    (None, Value::String(s)) => {
                        self.extra.insert(name.clone(), Extra::Text(s.clone()));
                    }
                    (None, Value::Array(items)) => {
                        self.extra.insert(name.clone(), Extra::List(items.clone()));
                    }
                    (Some(Extra::Text(t)), Value::String(s)) => t.push_str(s),
                    (Some(Extra::List(l)), Value::Array(items)) => {
                        l.extend(items.iter().cloned());
                    }
                    _ => return Err(Unfoldable),
                },
            }
        }
        Ok(())
    }

    /// Folds one choice of a `text_completion` chunk: its `text` is
    /// appended, its legacy `logprobs` lists joined, any other field's list
    /// joined or value kept as last sent. A text, logprobs or field of
    /// another shape (an object) cannot be folded.
    fn fold_text(&mut self, choice: &Value) -> Result<(), Unfoldable> {
        let Value::Object(fields) = choice else {
            return Err(Unfoldable);
        };
        for (name, v) in fields {
            match (name.as_str(), v) {
                (_, Value::Null) | ("index" | "finish_reason" | "logprobs", _) => {}
                ("text", t) => push_text(&mut self.content, t)?,
                (_, Value::Object(_)) => return Err(Unfoldable),
                (_, Value::Array(items)) => match self.text_extra.get_mut(name) {
                    Some(Value::Array(l)) => l.extend(items.iter().cloned()),
                    Some(_) => return Err(Unfoldable),
                    None => {
                        self.text_extra.insert(name.clone(), v.clone());
                    }
                },
                (_, scalar) => match self.text_extra.get(name) {
                    Some(Value::Array(_)) => return Err(Unfoldable),
                    _ => {
                        self.text_extra.insert(name.clone(), scalar.clone());
                    }
                },
            }
        }
        let Some(lp) = choice.get("logprobs").filter(|l| !l.is_null()) else {
            return Ok(());
        };
        let Value::Object(fields) = lp else {
            return Err(Unfoldable);
        };
        let into = self.text_logprobs.get_or_insert_with(Map::new);
        for (name, v) in fields {
            match (into.get_mut(name), v) {
                // A list every chunk left null stays null (not dropped); an
                // empty list (a chunk without tokens) beside nulls too.
                (None, Value::Null) => {
                    into.insert(name.clone(), Value::Null);
                }
                (Some(Value::Null), Value::Null) => {}
                (Some(Value::Null), Value::Array(items)) if items.is_empty() => {}
                (Some(l @ Value::Array(_)), Value::Null)
                    if l.as_array().is_some_and(Vec::is_empty) =>
                {
                    *l = Value::Null;
                }
                (None, Value::Array(items)) => {
                    into.insert(name.clone(), Value::Array(items.clone()));
                }
                (Some(Value::Array(l)), Value::Array(items)) => l.extend(items.iter().cloned()),
                // Null for some tokens and a list for others: joined, the
                // list would not line up with the tokens.
                _ => return Err(Unfoldable),
            }
        }
        Ok(())
    }

    /// Where a tool-call delta without `index` goes (some OpenAI-compatible
    /// servers leave it out): a new `id` starts the next call, a piece with
    /// the last call's id or none continues it. Folding them all into call 0
    /// stored two calls as one (`fg`, the arguments joined), replayed on
    /// every hit.
    fn unindexed_call(&self, id: Option<&Value>) -> u64 {
        match (self.tool_calls.last_key_value(), id) {
            (None, _) => 0,
            (Some((&last, t)), Some(id)) if t.id.as_ref().is_some_and(|seen| seen != id) => {
                last + 1
            }
            (Some((&last, _)), _) => last,
        }
    }

    fn fold_tool_calls(&mut self, calls: &Value) -> Result<(), Unfoldable> {
        let Value::Array(calls) = calls else {
            return Err(Unfoldable);
        };
        for tc in calls {
            let Value::Object(fields) = tc else {
                return Err(Unfoldable);
            };
            let ti = match tc.get("index").and_then(Value::as_u64) {
                Some(i) => i,
                None => self.unindexed_call(tc.get("id").filter(|id| !id.is_null())),
            };
            let t = self.tool_calls.entry(ti).or_default();
            for (name, v) in fields {
                if v.is_null() {
                    continue;
                }
                match name.as_str() {
                    "index" => {}
                    "id" => t.id = Some(v.clone()),
                    "type" => t.kind = Some(v.clone()),
                    "function" => fold_function(v, &mut t.name, &mut t.arguments)?,
                    _ => match t.extra.get(name.as_str()) {
                        None => {
                            t.extra.insert(name.clone(), v.clone());
                        }
                        Some(seen) if seen == v => {}
                        Some(_) => return Err(Unfoldable),
                    },
                }
            }
        }
        Ok(())
    }
}

/// Joins a text delta; anything but a string is refused.
fn push_text(into: &mut Option<String>, v: &Value) -> Result<(), Unfoldable> {
    let Value::String(s) = v else {
        return Err(Unfoldable);
    };
    into.get_or_insert_with(String::new).push_str(s);
    Ok(())
}

/// Folds `{"name", "arguments"}` pieces (of a tool call's `function`, or of
/// the legacy `function_call`): both are joined as they come.
fn fold_function(v: &Value, name: &mut String, arguments: &mut String) -> Result<(), Unfoldable> {
    let Value::Object(fields) = v else {
        return Err(Unfoldable);
    };
    for (field, piece) in fields {
        match (field.as_str(), piece) {
            (_, Value::Null) => {}
            ("name", Value::String(s)) => name.push_str(s),
            ("arguments", Value::String(s)) => arguments.push_str(s),
            _ => return Err(Unfoldable),
        }
    }
    Ok(())
}

/// Which completion a stream carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Form {
    /// `chat.completion.chunk` deltas into a `chat.completion`.
    #[default]
    Chat,
    /// `text_completion` chunks (`choices[].text`) into a `text_completion`.
    Text,
}

/// Folds SSE bytes, as they arrive, into a completion.
#[derive(Default)]
pub(crate) struct Assembler {
    form: Form,
    /// How many choices a complete answer has (`n`, times the prompts of a
    /// text completion); 0: not known.
    expected: u64,
    buf: Vec<u8>,
    /// Bytes fed so far (the bound is on the whole stream, not on `buf`,
    /// which each event drains).
    seen: usize,
    failed: bool,
    done: bool,
    id: Option<Value>,
    created: Option<Value>,
    model: Option<Value>,
    fingerprint: Option<Value>,
    usage: Option<Value>,
    choices: BTreeMap<u64, ChoiceAcc>,
}

/// Whether an SSE event is a usage chunk: a `usage` that is not null and
/// no choices (what an upstream sends last when asked for usage). Only an
/// event that names `usage` is parsed.
pub(crate) fn is_usage_only(event: &[u8]) -> bool {
    event
        .strip_prefix(b"data:")
        .map(|d| d.strip_prefix(b" ").unwrap_or(d))
        .is_some_and(|data| is_usage_only_json(data.trim_ascii_end()))
}

/// [`is_usage_only`] of a chunk's JSON (what follows `data: `).
pub(crate) fn is_usage_only_json(json: &[u8]) -> bool {
    use serde::de::IgnoredAny;
    #[derive(serde::Deserialize)]
    struct Peek {
        #[serde(default)]
        choices: Option<Vec<IgnoredAny>>,
        #[serde(default)]
        usage: Option<IgnoredAny>,
    }
    const NAME: &[u8] = b"\"usage\"";
    if !json.windows(NAME.len()).any(|w| w == NAME) {
        return false;
    }
    serde_json::from_slice::<Peek>(json)
        .is_ok_and(|p| p.usage.is_some() && p.choices.is_none_or(|c| c.is_empty()))
}

/// Message fields replay puts in the first delta itself; any other one
/// (`function_call`, `reasoning_content`, `annotations`, `audio`) goes there
/// as it is.
const DELTA_FIELDS: [&str; 4] = ["role", "content", "refusal", "tool_calls"];

/// Largest stream recorded; a longer one is forwarded but not stored.
const MAX_RECORDED: usize = 16 * 1024 * 1024;

impl Assembler {
    /// An assembler of `form`'s streams whose complete answer has
    /// `expected` choices (indexes 0 to `expected` - 1; 0: not known). A
    /// stream cut before some choice began looks finished to an upstream
    /// that sends no `[DONE]`; it is not stored.
    pub(crate) fn new(form: Form, expected: u64) -> Self {
        Assembler {
            form,
            expected,
            ..Assembler::default()
        }
    }

    /// Feeds raw body bytes (events may be split anywhere).
    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        if self.failed {
            return;
        }
        self.seen = self.seen.saturating_add(chunk.len());
        if self.seen > MAX_RECORDED {
            // Forwarded, not stored: drop what was assembled so far.
            self.fail();
            return;
        }
        self.buf.extend_from_slice(chunk);
        while let Some((end, sep)) = find_event_end(&self.buf) {
            let event: Vec<u8> = self.buf.drain(..end + sep).collect();
            self.event(&event[..end]);
        }
    }

    /// Gives the recording up: the stream is forwarded, not stored.
    fn fail(&mut self) {
        self.failed = true;
        self.buf = Vec::new();
        self.choices.clear();
    }

    fn event(&mut self, raw: &[u8]) {
        if self.failed {
            return;
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            self.fail();
            return;
        };
        let mut data = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            } else if let Some(ev) = line.strip_prefix("event:")
                && ev.trim() == "error"
            {
                self.fail();
                return;
            }
        }
        if data.is_empty() {
            return;
        }
        if data.trim() == "[DONE]" {
            self.done = true;
            return;
        }
        if self.done {
            return;
        }
        match serde_json::from_str::<Value>(&data) {
            Ok(v) => self.chunk(v),
            Err(_) => self.fail(),
        }
    }

    fn chunk(&mut self, v: Value) {
        if v.get("error").is_some() {
            self.fail();
            return;
        }
        for (field, slot) in [
            ("id", &mut self.id),
            ("created", &mut self.created),
            ("model", &mut self.model),
            ("system_fingerprint", &mut self.fingerprint),
        ] {
            if slot.is_none()
                && let Some(x) = v.get(field)
                && !x.is_null()
            {
                *slot = Some(x.clone());
            }
        }
        if let Some(u) = v.get("usage")
            && !u.is_null()
        {
            self.usage = Some(u.clone());
        }
        let Some(choices) = v.get("choices").and_then(Value::as_array) else {
            return;
        };
        for c in choices {
            let idx = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let acc = self.choices.entry(idx).or_default();
            if let Some(fr) = c.get("finish_reason")
                && !fr.is_null()
            {
                acc.finish_reason = Some(fr.clone());
            }
            if self.form == Form::Text {
                if acc.fold_text(c).is_err() {
                    self.fail();
                    return;
                }
                continue;
            }
            if let Some(lp) = c.get("logprobs").filter(|l| !l.is_null()) {
                let (content, refusal) = acc.logprobs.get_or_insert_with(Default::default);
                for (field, into) in [("content", content), ("refusal", refusal)] {
                    if let Some(items) = lp.get(field).and_then(Value::as_array) {
                        into.extend(items.iter().cloned());
                    }
                }
            }
            if let Some(delta) = c.get("delta")
                && acc.fold(delta).is_err()
            {
                // Stored without that field, the answer would be another
                // one: forwarded as it is, never stored.
                self.fail();
                return;
            }
        }
    }

    /// The completion as JSON, when the stream was complete (`[DONE]`, no
    /// error, at least one choice with a finish reason).
    pub(crate) fn finish(&mut self) -> Option<Vec<u8>> {
        if self.failed || !self.done || self.choices.is_empty() {
            return None;
        }
        if self.choices.values().any(|c| c.finish_reason.is_none()) {
            return None;
        }
        if self.expected > 0 && !self.choices.keys().copied().eq(0..self.expected) {
            return None;
        }
        let mut choices = Vec::with_capacity(self.choices.len());
        for (idx, c) in std::mem::take(&mut self.choices) {
            if self.form == Form::Text {
                let mut choice = c.text_extra;
                choice.insert("text".into(), Value::String(c.content.unwrap_or_default()));
                choice.insert("index".into(), json!(idx));
                choice.insert(
                    "logprobs".into(),
                    c.text_logprobs.map_or(Value::Null, Value::Object),
                );
                choice.insert(
                    "finish_reason".into(),
                    c.finish_reason.unwrap_or(Value::Null),
                );
                choices.push(Value::Object(choice));
                continue;
            }
            let mut msg = Map::new();
            msg.insert("role".into(), c.role.unwrap_or_else(|| json!("assistant")));
            // A turn of tool calls only: `content` null, as a non-streamed
            // answer says it (a stream's role chunk often carries `""`).
            let content = c
                .content
                .filter(|t| !t.is_empty() || c.tool_calls.is_empty());
            msg.insert("content".into(), content.map_or(Value::Null, Value::String));
            if let Some(r) = c.refusal {
                msg.insert("refusal".into(), Value::String(r));
            }
            if let Some(f) = c.function_call {
                msg.insert(
                    "function_call".into(),
                    json!({ "name": f.name, "arguments": f.arguments }),
                );
            }
            for (name, extra) in c.extra {
                let v = match extra {
                    Extra::Text(t) => Value::String(t),
                    Extra::List(l) => Value::Array(l),
                };
                msg.insert(name, v);
            }
            if !c.tool_calls.is_empty() {
                let calls: Vec<Value> = c
                    .tool_calls
                    .into_values()
                    .map(|t| {
                        let mut call = t.extra;
                        call.insert("id".into(), t.id.unwrap_or(Value::Null));
                        call.insert("type".into(), t.kind.unwrap_or_else(|| json!("function")));
                        call.insert(
                            "function".into(),
                            json!({ "name": t.name, "arguments": t.arguments }),
                        );
                        Value::Object(call)
                    })
                    .collect();
                msg.insert("tool_calls".into(), Value::Array(calls));
            }
            let logprobs = c.logprobs.map_or(Value::Null, |(content, refusal)| {
                json!({
                    "content": content,
                    "refusal": if refusal.is_empty() { Value::Null } else { Value::Array(refusal) },
                })
            });
            choices.push(json!({
                "index": idx,
                "message": Value::Object(msg),
                "logprobs": logprobs,
                "finish_reason": c.finish_reason.unwrap_or(Value::Null),
            }));
        }
        let mut out = Map::new();
        let (id, object) = match self.form {
            Form::Chat => ("chatcmpl-cached", "chat.completion"),
            Form::Text => ("cmpl-cached", "text_completion"),
        };
        out.insert("id".into(), self.id.take().unwrap_or_else(|| json!(id)));
        out.insert("object".into(), json!(object));
        out.insert("created".into(), self.created.take().unwrap_or(json!(0)));
        out.insert("model".into(), self.model.take().unwrap_or(Value::Null));
        out.insert("choices".into(), Value::Array(choices));
        if let Some(u) = self.usage.take() {
            out.insert("usage".into(), u);
        }
        if let Some(f) = self.fingerprint.take() {
            out.insert("system_fingerprint".into(), f);
        }
        serde_json::to_vec(&Value::Object(out)).ok()
    }
}

/// Finds the end of the first complete event: (index, separator length).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' && buf[i + 1] == b'\n' {
            return Some((i, 2));
        }
        if i + 3 < buf.len() && &buf[i..i + 4] == b"\r\n\r\n" {
            return Some((i, 4));
        }
        i += 1;
    }
    None
}

/// Replays a stored completion as SSE: per choice one delta with role,
/// content and tool calls, then one with the finish reason; the usage chunk
/// when asked for; then `data: [DONE]`. `None` when the value is not a
/// completion.
pub(crate) fn replay(stored: &[u8], include_usage: bool, form: Form) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_slice(stored).ok()?;
    let choices = v.get("choices")?.as_array()?;
    let mut base = Map::new();
    base.insert("id".into(), v.get("id").cloned().unwrap_or(Value::Null));
    let object = match form {
        Form::Chat => "chat.completion.chunk",
        Form::Text => "text_completion",
    };
    base.insert("object".into(), json!(object));
    base.insert(
        "created".into(),
        v.get("created").cloned().unwrap_or(json!(0)),
    );
    base.insert(
        "model".into(),
        v.get("model").cloned().unwrap_or(Value::Null),
    );
    if let Some(f) = v.get("system_fingerprint") {
        base.insert("system_fingerprint".into(), f.clone());
    }
    let mut out = Vec::with_capacity(stored.len() + 512);
    let mut emit = |choices: Value, usage: Option<&Value>| -> Option<()> {
        let mut c = base.clone();
        c.insert("choices".into(), choices);
        if let Some(u) = usage {
            c.insert("usage".into(), u.clone());
        }
        out.extend_from_slice(b"data: ");
        serde_json::to_writer(&mut out, &Value::Object(c)).ok()?;
        out.extend_from_slice(b"\n\n");
        Some(())
    };
    for (pos, choice) in choices.iter().enumerate() {
        let idx = choice.get("index").cloned().unwrap_or(json!(pos));
        if form == Form::Text {
            // The text, its logprobs and other lists (vLLM's `token_ids`),
            // then the finish reason and other values (`stop_reason`) after
            // an empty text, as OpenAI ends a completion stream.
            let text = choice.get("text")?.as_str()?;
            let mut first = Map::new();
            first.insert("text".into(), json!(text));
            first.insert("index".into(), idx.clone());
            let logprobs = choice.get("logprobs").cloned().unwrap_or(Value::Null);
            first.insert("logprobs".into(), logprobs);
            first.insert("finish_reason".into(), Value::Null);
            let mut last = Map::new();
            last.insert("text".into(), json!(""));
            last.insert("index".into(), idx);
            last.insert("logprobs".into(), Value::Null);
            let finish = choice.get("finish_reason").cloned();
            last.insert("finish_reason".into(), finish.unwrap_or(Value::Null));
            for (name, v) in choice.as_object()? {
                if ["text", "index", "logprobs", "finish_reason"].contains(&name.as_str()) {
                    continue;
                }
                let into = if v.is_array() { &mut first } else { &mut last };
                into.insert(name.clone(), v.clone());
            }
            emit(json!([first]), None)?;
            emit(json!([last]), None)?;
            continue;
        }
        let msg = choice.get("message")?;
        let mut delta = Map::new();
        delta.insert(
            "role".into(),
            msg.get("role")
                .cloned()
                .unwrap_or_else(|| json!("assistant")),
        );
        if let Some(c) = msg.get("content")
            && !c.is_null()
        {
            delta.insert("content".into(), c.clone());
        }
        if let Some(r) = msg.get("refusal")
            && !r.is_null()
        {
            delta.insert("refusal".into(), r.clone());
        }
        // Any other message field (`reasoning_content`, `annotations`,
        // `audio`) goes in the first delta as it is.
        if let Some(fields) = msg.as_object() {
            for (name, v) in fields {
                if !DELTA_FIELDS.contains(&name.as_str()) && !v.is_null() {
                    delta.insert(name.clone(), v.clone());
                }
            }
        }
        if let Some(calls) = msg.get("tool_calls").and_then(Value::as_array) {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let mut t = t.clone();
                    if let Some(o) = t.as_object_mut() {
                        o.insert("index".into(), json!(i));
                    }
                    t
                })
                .collect();
            delta.insert("tool_calls".into(), Value::Array(calls));
        }
        let logprobs = choice.get("logprobs").cloned().unwrap_or(Value::Null);
        emit(
            json!([{ "index": idx, "delta": Value::Object(delta), "logprobs": logprobs, "finish_reason": Value::Null }]),
            None,
        )?;
        emit(
            json!([{ "index": idx, "delta": {}, "logprobs": Value::Null, "finish_reason": choice.get("finish_reason").cloned().unwrap_or(Value::Null) }]),
            None,
        )?;
    }
    if include_usage && let Some(u) = v.get("usage") {
        emit(json!([]), Some(u))?;
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `asm` stores of `events`, each sent as one SSE event, then `[DONE]`.
    fn recorded(mut asm: Assembler, events: &[Value]) -> Option<Vec<u8>> {
        for e in events {
            asm.feed(format!("data: {e}\n\n").as_bytes());
        }
        asm.feed(b"data: [DONE]\n\n");
        asm.finish()
    }

    /// What a reasoning model streams beside the content, and the tokens'
    /// logprobs, are kept: in the stored completion and in its replay.
    /// Before, both were dropped (logprobs stored as null).
    #[test]
    fn reasoning_text_and_logprobs_survive_recording_and_replay() {
        let lp = |t: &str| json!({"token": t, "logprob": -0.5, "bytes": [], "top_logprobs": []});
        let events = [
            json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","reasoning_content":"Think "},"logprobs":null,"finish_reason":null}]}),
            json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"reasoning_content":"hard."},"logprobs":null,"finish_reason":null}]}),
            json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":{"content":[lp("Hi")],"refusal":null},"finish_reason":null}]}),
            json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"!"},"logprobs":{"content":[lp("!")],"refusal":null},"finish_reason":"stop"}]}),
        ];
        let stored = recorded(Assembler::default(), &events).expect("a complete stream");
        let v: Value = serde_json::from_slice(&stored).unwrap();
        let choice = &v["choices"][0];
        assert_eq!(choice["message"]["content"], "Hi!");
        assert_eq!(choice["message"]["reasoning_content"], "Think hard.");
        assert_eq!(choice["logprobs"]["content"], json!([lp("Hi"), lp("!")]));
        let replayed = String::from_utf8(replay(&stored, false, Form::Chat).unwrap()).unwrap();
        let first: Value = serde_json::from_str(
            replayed
                .lines()
                .next()
                .unwrap()
                .strip_prefix("data: ")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            first["choices"][0]["delta"]["reasoning_content"],
            "Think hard."
        );
        assert_eq!(first["choices"][0]["logprobs"]["content"][1]["token"], "!");
    }

    /// A text completion stream (vLLM's `/v1/completions`: text pieces,
    /// the finish reason on the last, legacy logprobs lists, a usage chunk)
    /// is stored as one `text_completion` and replayed as one, the text
    /// byte for byte.
    #[test]
    fn a_text_completion_stream_is_stored_and_replayed_as_one() {
        let piece = |text: &str, lp: Value, finish: Value| json!({"id":"cmpl-1","object":"text_completion","created":3,"model":"m","choices":[{"index":0,"text":text,"logprobs":lp,"finish_reason":finish}]});
        let lp = |t: &str, at: u64| json!({"tokens":[t],"token_logprobs":[-0.1],"top_logprobs":[{t: -0.1}],"text_offset":[at]});
        let events = [
            piece("def f():\n", lp("def f():\n", 0), Value::Null),
            piece("  return 1 ✓", lp("  return 1 ✓", 9), json!("length")),
            json!({"id":"cmpl-1","object":"text_completion","created":3,"model":"m","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}),
        ];
        let stored = recorded(Assembler::new(Form::Text, 1), &events).expect("a complete stream");
        let v: Value = serde_json::from_slice(&stored).unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["id"], "cmpl-1");
        assert_eq!(v["usage"]["total_tokens"], 6);
        let choice = &v["choices"][0];
        assert_eq!(choice["text"], "def f():\n  return 1 ✓");
        assert_eq!(choice["finish_reason"], "length");
        assert_eq!(choice["logprobs"]["text_offset"], json!([0, 9]));
        assert_eq!(
            choice["logprobs"]["tokens"],
            json!(["def f():\n", "  return 1 ✓"])
        );
        assert!(choice.get("message").is_none(), "no chat message");

        let replayed = String::from_utf8(replay(&stored, true, Form::Text).unwrap()).unwrap();
        assert!(replayed.ends_with("data: [DONE]\n\n"));
        let chunks: Vec<Value> = replayed
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks.len(), 3, "text, finish reason, usage: {replayed}");
        assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
        assert_eq!(chunks[0]["choices"][0]["text"], "def f():\n  return 1 ✓");
        assert_eq!(chunks[1]["choices"][0]["finish_reason"], "length");
        assert_eq!(chunks[2]["usage"]["total_tokens"], 6);
        // The replay records to the same completion.
        let mut again = Assembler::new(Form::Text, 1);
        again.feed(replayed.as_bytes());
        assert_eq!(again.finish().as_deref(), Some(&stored[..]));
        // Without `usage` asked: no usage chunk.
        let plain = String::from_utf8(replay(&stored, false, Form::Text).unwrap()).unwrap();
        assert!(!plain.contains("\"usage\""));
    }

    /// Legacy logprobs lists left null in every chunk (OpenAI's
    /// `top_logprobs` for `logprobs: 0`) are stored null, not dropped (a
    /// hit then has the key the miss had), an empty list (a chunk without
    /// tokens) beside them too; empty lists join with lists. A list null in
    /// some chunks and not empty in others would not line up with the
    /// tokens: not stored.
    #[test]
    fn text_logprobs_null_and_empty_lists_are_kept() {
        let piece = |text: &str, lp: Value| json!({"id":"cmpl-1","object":"text_completion","created":3,"model":"m","choices":[{"index":0,"text":text,"logprobs":lp,"finish_reason":if text.is_empty() { json!("stop") } else { Value::Null }}]});
        let empty = json!({"tokens":[],"token_logprobs":[],"top_logprobs":[],"text_offset":[]});
        let events = [
            piece(
                "a",
                json!({"tokens":["a"],"token_logprobs":[-0.1],"top_logprobs":null,"text_offset":[0],"x":[]}),
            ),
            piece(
                "b",
                json!({"tokens":["b"],"token_logprobs":[-0.2],"top_logprobs":null,"text_offset":[1],"x":null}),
            ),
            piece("", empty),
        ];
        let stored = recorded(Assembler::new(Form::Text, 1), &events).expect("a complete stream");
        let v: Value = serde_json::from_slice(&stored).unwrap();
        assert_eq!(
            v["choices"][0]["logprobs"],
            json!({"tokens":["a","b"],"token_logprobs":[-0.1,-0.2],"top_logprobs":null,"text_offset":[0,1],"x":null})
        );
        // Null for the first tokens, a list for the next: not stored, the
        // other way round neither.
        for (first, then) in [
            (Value::Null, json!([{"b": -0.2}])),
            (json!([{"a": -0.1}]), Value::Null),
        ] {
            let mut sent: Vec<Value> = [("a", first), ("b", then)]
                .into_iter()
                .map(|(t, top)| {
                    piece(
                        t,
                        json!({"tokens":[t],"token_logprobs":[-0.1],"top_logprobs":top,"text_offset":[0]}),
                    )
                })
                .collect();
            sent.push(events[2].clone());
            assert!(
                recorded(Assembler::new(Form::Text, 1), &sent).is_none(),
                "misaligned lists stored"
            );
        }
        let sent = [events[0].clone(), piece("", Value::Null)];
        let stored = recorded(Assembler::new(Form::Text, 1), &sent).unwrap();
        let v: Value = serde_json::from_slice(&stored).unwrap();
        let lp = v["choices"][0]["logprobs"].as_object().unwrap().clone();
        assert_eq!(lp.get("top_logprobs"), Some(&Value::Null), "{v}");
    }

    /// vLLM's choice fields beside the text (`token_ids` per piece, the
    /// `stop_reason` at the end) are kept: lists joined, values as last
    /// sent; two prompts' choices, interleaved, are stored apart and
    /// replayed in order; a stream that never began a choice it should
    /// have is not stored.
    #[test]
    fn text_choices_keep_their_fields_and_all_must_come() {
        let piece = |index: u64, text: &str, ids: Value, stop: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id":"cmpl-2","object":"text_completion","created":3,"model":"m",
                       "choices":[{"index":index,"text":text,"logprobs":null,"token_ids":ids,
                                   "stop_reason":stop,"finish_reason":finish}]})
            )
        };
        let events = [
            piece(0, "a", json!([1]), Value::Null, Value::Null),
            piece(1, "x", json!([7]), Value::Null, Value::Null),
            piece(0, "b", json!([2]), json!("\n\n"), json!("stop")),
            piece(1, "y", json!([8]), json!(42), json!("stop")),
        ];
        let mut asm = Assembler::new(Form::Text, 2);
        for e in &events {
            asm.feed(e.as_bytes());
        }
        asm.feed(b"data: [DONE]\n\n");
        let stored = asm.finish().expect("both choices finished");
        let v: Value = serde_json::from_slice(&stored).unwrap();
        assert_eq!(v["choices"][0]["text"], "ab");
        assert_eq!(v["choices"][0]["token_ids"], json!([1, 2]));
        assert_eq!(v["choices"][0]["stop_reason"], "\n\n");
        assert_eq!(v["choices"][1]["text"], "xy");
        assert_eq!(v["choices"][1]["index"], 1);
        assert_eq!(v["choices"][1]["stop_reason"], 42);
        let replayed = String::from_utf8(replay(&stored, false, Form::Text).unwrap()).unwrap();
        let mut again = Assembler::new(Form::Text, 2);
        again.feed(replayed.as_bytes());
        assert_eq!(
            again.finish().as_deref(),
            Some(&stored[..]),
            "the replay records to the same answer: {replayed}"
        );

        // Three choices expected (three prompts), two came: not stored.
        let mut cut = Assembler::new(Form::Text, 3);
        for e in &events {
            cut.feed(e.as_bytes());
        }
        cut.feed(b"data: [DONE]\n\n");
        assert!(
            cut.finish().is_none(),
            "the third prompt's choice never began"
        );
        // An object where a value is expected cannot be folded.
        let mut odd = Assembler::new(Form::Text, 1);
        odd.feed(piece(0, "a", json!({"ids": [1]}), Value::Null, json!("stop")).as_bytes());
        odd.feed(b"data: [DONE]\n\n");
        assert!(odd.finish().is_none());
    }

    /// A text completion's `logprobs` of another shape, or a text that is
    /// not a string, cannot be folded: the stream is not stored.
    #[test]
    fn a_text_completion_piece_of_another_shape_is_not_stored() {
        for choice in [
            json!({"index":0,"text":"a","logprobs":[1],"finish_reason":"stop"}),
            json!({"index":0,"text":"a","logprobs":{"tokens":"a"},"finish_reason":"stop"}),
            json!({"index":0,"text":7,"logprobs":null,"finish_reason":"stop"}),
        ] {
            let mut asm = Assembler::new(Form::Text, 1);
            asm.feed(
                format!("data: {}\n\ndata: [DONE]\n\n", json!({"choices":[choice]})).as_bytes(),
            );
            assert!(asm.finish().is_none(), "{choice}");
        }
        let mut asm = Assembler::new(Form::Text, 1);
        asm.feed(b"data: {\"choices\":[{\"index\":0,\"text\":\"a\",\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
        assert!(asm.finish().is_some(), "the control case is stored");
    }

    fn chunk(content: &str) -> String {
        format!(
            "data: {}\n\n",
            json!({"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"content":content},"finish_reason":null}]})
        )
    }

    /// A stream longer than the bound is not recorded, however it is cut
    /// into events (the bound used to count only the undrained buffer, so a
    /// long stream of small events was assembled and stored whole).
    #[test]
    fn a_stream_past_the_bound_is_not_recorded() {
        let piece = chunk(&"x".repeat(1000));
        let stop = format!(
            "data: {}\n\n",
            json!({"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})
        );
        let events = MAX_RECORDED / piece.len() + 2;
        let mut a = Assembler::default();
        for _ in 0..events {
            a.feed(piece.as_bytes());
        }
        a.feed(stop.as_bytes());
        a.feed(b"data: [DONE]\n\n");
        assert!(
            a.finish().is_none(),
            "past {MAX_RECORDED} bytes: not stored"
        );
        assert!(a.choices.is_empty(), "and what was assembled is dropped");
        let mut b = Assembler::default();
        for _ in 0..10 {
            b.feed(piece.as_bytes());
        }
        b.feed(stop.as_bytes());
        b.feed(b"data: [DONE]\n\n");
        assert!(b.finish().is_some(), "a short stream is");
    }

    #[test]
    fn split_stream_assembles_and_replays_byte_exact() {
        let text = ["Hel", "lo, \"wörld\"\n", "\u{1F600} end"];
        let mut sse = format!(
            "data: {}\n\n",
            json!({"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]})
        );
        for t in text {
            sse.push_str(&chunk(t));
        }
        sse.push_str(&format!(
            "data: {}\n\n",
            json!({"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})
        ));
        sse.push_str("data: [DONE]\n\n");
        let mut a = Assembler::default();
        // Feed in awkward 5-byte pieces (splitting UTF-8 too).
        for piece in sse.as_bytes().chunks(5) {
            a.feed(piece);
        }
        let done = a.finish().unwrap();
        let v: Value = serde_json::from_slice(&done).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], text.concat());
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let replayed = replay(&done, false, Form::Chat).unwrap();
        let mut b = Assembler::default();
        b.feed(&replayed);
        let again: Value = serde_json::from_slice(&b.finish().unwrap()).unwrap();
        assert_eq!(again["choices"][0]["message"]["content"], text.concat());
        assert!(
            String::from_utf8(replayed)
                .unwrap()
                .ends_with("data: [DONE]\n\n")
        );
    }

    #[test]
    fn incomplete_or_failed_streams_are_not_stored() {
        let mut a = Assembler::default();
        a.feed(chunk("x").as_bytes());
        assert!(a.finish().is_none(), "no [DONE]");
        let mut b = Assembler::default();
        b.feed(chunk("x").as_bytes());
        b.feed(b"data: {\"error\":{\"message\":\"boom\"}}\n\ndata: [DONE]\n\n");
        assert!(b.finish().is_none(), "error event");
    }

    fn record(events: &[Value]) -> Option<Value> {
        recorded(Assembler::default(), events).map(|b| serde_json::from_slice(&b).unwrap())
    }

    fn delta(delta: Value, finish: Option<&str>) -> Value {
        json!({"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":delta,"logprobs":null,"finish_reason":finish}]})
    }

    /// A stream of the legacy `function_call` deltas is stored with its
    /// call. Before, only text deltas were kept: the stored answer had
    /// `finish_reason: "function_call"`, `content: null` and no call, and
    /// every identical request got that for the entry's TTL.
    #[test]
    fn a_legacy_function_call_stream_is_stored_with_its_call() {
        let v = record(&[
            delta(
                json!({"role":"assistant","content":null,"function_call":{"name":"get_","arguments":""}}),
                None,
            ),
            delta(json!({"function_call":{"name":"weather","arguments":"{\"city\""}}), None),
            delta(json!({"function_call":{"arguments":":\"Paris\"}"}}), None),
            delta(json!({}), Some("function_call")),
        ])
        .expect("a complete stream is stored");
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "function_call");
        assert_eq!(
            choice["message"]["function_call"],
            json!({"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"})
        );
        assert_eq!(choice["message"]["content"], Value::Null);
        // And replayed: the replay records to the same completion.
        let mut again = Assembler::default();
        again.feed(&replay(&serde_json::to_vec(&v).unwrap(), false, Form::Chat).unwrap());
        let again: Value = serde_json::from_slice(&again.finish().unwrap()).unwrap();
        assert_eq!(again["choices"][0]["message"], choice["message"]);
    }

    /// `annotations` (a web search's citations) arrive as lists and are
    /// appended; refusal text is joined like content. Before, both lists
    /// were dropped from the stored answer.
    #[test]
    fn annotation_lists_and_refusal_text_are_kept() {
        let cite = |i: u64| json!({"type":"url_citation","url_citation":{"start_index":i,"end_index":i + 1,"url":format!("https://e.x/{i}"),"title":"t"}});
        let v = record(&[
            delta(json!({"role":"assistant","content":"See "}), None),
            delta(json!({"content":"this.","annotations":[cite(0)]}), None),
            delta(json!({"annotations":[cite(1), cite(2)]}), None),
            delta(json!({"refusal":"I can"}), None),
            delta(json!({"refusal":"not."}), Some("stop")),
        ])
        .expect("stored");
        let msg = &v["choices"][0]["message"];
        assert_eq!(msg["content"], "See this.");
        assert_eq!(msg["annotations"], json!([cite(0), cite(1), cite(2)]));
        assert_eq!(msg["refusal"], "I cannot.");
    }

    /// A delta field of a shape the recorder cannot fold (streamed `audio`,
    /// an object; a number; a text field that turns into a list) is never
    /// stored without it: the stream is forwarded but not stored.
    #[test]
    fn a_delta_the_recorder_cannot_fold_is_not_stored() {
        let unfoldable = [
            json!({"audio":{"id":"a1","data":"UklGRg==","transcript":"Hi"}}),
            json!({"confidence":0.9}),
            json!({"content":["a","b"]}),
            json!({"function_call":{"name":"f","strict":true}}),
            json!({"tool_calls":{"index":0}}),
        ];
        for bad in unfoldable {
            let v = record(&[
                delta(json!({"role":"assistant","content":"Hi"}), None),
                delta(bad.clone(), None),
                delta(json!({}), Some("stop")),
            ]);
            assert!(v.is_none(), "{bad} must not be stored: {v:?}");
        }
        let v = record(&[
            delta(json!({"reasoning_content":"a"}), None),
            delta(json!({"reasoning_content":["b"]}), Some("stop")),
        ]);
        assert!(v.is_none(), "text then a list: {v:?}");
        // Nulls are no content: such a stream is stored.
        let v = record(&[
            delta(
                json!({"role":"assistant","content":"Hi","audio":null,"function_call":null}),
                None,
            ),
            delta(json!({}), Some("stop")),
        ])
        .expect("stored");
        assert!(v["choices"][0]["message"].get("audio").is_none());
    }

    /// Tool-call fields beyond the OpenAI ones (Gemini's `extra_content`)
    /// are kept as they came.
    #[test]
    fn other_tool_call_fields_are_kept() {
        let extra = json!({"google":{"thought_signature":"sig"}});
        let v = record(&[
            delta(
                json!({"role":"assistant","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"},"extra_content":extra}]}),
                Some("tool_calls"),
            ),
        ])
        .expect("stored");
        let tc = &v["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(tc["extra_content"], extra);
        assert_eq!(tc["function"]["name"], "f");
    }

    /// Calls streamed without `index` (some OpenAI-compatible servers) are
    /// told apart by their `id`.
    #[test]
    fn tool_calls_without_an_index_are_kept_apart() {
        let v = record(&[
            delta(
                json!({"role":"assistant","tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{\"x\""}}]}),
                None,
            ),
            delta(json!({"tool_calls":[{"function":{"arguments":":1}"}}]}), None),
            delta(
                json!({"tool_calls":[{"id":"b","type":"function","function":{"name":"g","arguments":"{}"}}]}),
                Some("tool_calls"),
            ),
        ])
        .expect("stored");
        let calls = &v["choices"][0]["message"]["tool_calls"];
        assert_eq!(calls.as_array().map(Vec::len), Some(2), "{v}");
        assert_eq!(calls[0]["id"], "a");
        assert_eq!(calls[0]["function"]["name"], "f");
        assert_eq!(calls[0]["function"]["arguments"], "{\"x\":1}");
        assert_eq!(calls[1]["id"], "b");
        assert_eq!(calls[1]["function"]["name"], "g");
        assert_eq!(calls[1]["function"]["arguments"], "{}");
    }

    #[test]
    fn tool_calls_are_merged_and_replayed() {
        let mut a = Assembler::default();
        // The role chunk's `content: ""` (Anthropic's and Ollama's
        // translations send one) is stored as null beside the calls, as a
        // non-streamed answer of calls says it.
        let c1 = json!({"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":"","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_","arguments":"{\"a\""}}]},"finish_reason":null}]});
        let c2 = json!({"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"w","arguments":":1}"}}]},"finish_reason":"tool_calls"}]});
        a.feed(format!("data: {c1}\n\ndata: {c2}\n\ndata: [DONE]\n\n").as_bytes());
        let v: Value = serde_json::from_slice(&a.finish().unwrap()).unwrap();
        let tc = &v["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(tc["function"]["name"], "get_w");
        assert_eq!(tc["function"]["arguments"], "{\"a\":1}");
        assert_eq!(tc["id"], "call_1");
        assert!(v["choices"][0]["message"]["content"].is_null(), "{v}");
        let r =
            String::from_utf8(replay(&serde_json::to_vec(&v).unwrap(), true, Form::Chat).unwrap())
                .unwrap();
        assert!(r.contains("\"tool_calls\""));
    }
}
