//! Chat completion chunks turned into Responses API stream events: a pure
//! state machine ([`Translator`]), fed chunk JSON, giving events out.
//!
//! Every event carries its `type` and a `sequence_number` (0, 1, 2, ...).
//! Items are strictly sequential, as the Responses API streams them (Codex
//! follows one active item: `output_item.added` sets it, the next
//! `output_item.done` takes it): an item is added, gets its deltas, and is
//! closed (all its `done` events) before the next is added, and
//! `output_index` is the item's place in the final `output`.
//!
//! Reasoning and text (with refusals, parts of the same message) stream
//! live: a reasoning item opens with the first reasoning delta, a message
//! item with the first text; a delta of the other kind closes the open item
//! and opens a new one, so reasoning, text, reasoning again, text again are
//! four items. Tool calls are gathered (by chat `index`, or by `id` when an
//! upstream gives no index) and added only when the upstream's stream ends,
//! after the open item is closed, in index order, each whole: `added`, its
//! arguments (a custom tool's decoded input) as one delta, `done`. Chat
//! streams may interleave the pieces of parallel calls, and text may come
//! after a call began: an item closed cannot take more, and the order of a
//! chat message's text and its calls means nothing, so the calls come
//! last, as in the non-streamed answer. Clients act on a call when it is
//! done, which its end of stream is close to. Then `response.completed`
//! (or `response.incomplete`) carries the whole response with its usage.

use super::answer::{self, Envelope, Status, new_id};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    /// The `event:` name, the same as `data.type`.
    pub(crate) kind: &'static str,
    /// The payload.
    pub(crate) data: Value,
}

impl Event {
    /// Appends the event's SSE frame to `out`.
    pub(crate) fn write(&self, out: &mut BytesMut) {
        out.put_slice(b"event: ");
        out.put_slice(self.kind.as_bytes());
        out.put_slice(b"\ndata: ");
        out.put_slice(self.data.to_string().as_bytes());
        out.put_slice(b"\n\n");
    }
}

/// Events framed as one piece of the SSE body.
pub(crate) fn frame(events: &[Event]) -> Bytes {
    let mut out = BytesMut::new();
    for e in events {
        e.write(&mut out);
    }
    out.freeze()
}

/// A content part of a message item.
struct Part {
    refusal: bool,
    text: String,
    logprobs: Option<Vec<Value>>,
}

impl Part {
    fn json(&self) -> Value {
        if self.refusal {
            answer::refusal_part(&self.text)
        } else {
            answer::text_part(&self.text, self.logprobs.clone())
        }
    }
}

/// An output item.
enum Item {
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        parts: Vec<Part>,
    },
    Function {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
    Custom {
        id: String,
        call_id: String,
        name: String,
        input: String,
    },
}

impl Item {
    fn id(&self) -> &str {
        match self {
            Item::Reasoning { id, .. }
            | Item::Message { id, .. }
            | Item::Function { id, .. }
            | Item::Custom { id, .. } => id,
        }
    }

    fn json(&self, status: &str) -> Value {
        match self {
            Item::Reasoning { id, text } => answer::reasoning_item(id, text, status),
            Item::Message { id, parts } => {
                answer::message_item(id, parts.iter().map(Part::json).collect(), status)
            }
            Item::Function {
                id,
                call_id,
                name,
                arguments,
            } => answer::call_item(id, call_id, name, arguments, status),
            Item::Custom {
                id,
                call_id,
                name,
                input,
            } => answer::custom_call_item(id, call_id, name, input, status),
        }
    }
}

/// An output item added, and its status once it is done.
struct Slot {
    item: Item,
    done: Option<&'static str>,
}

/// A tool call being gathered from its deltas.
struct Call {
    /// Its chat `index`, when the upstream gives one.
    index: Option<u64>,
    call_id: String,
    name: String,
    arguments: String,
}

/// The translation of one stream.
pub(crate) struct Translator {
    env: Envelope,
    seq: u64,
    /// Output items added, in output order; only the last may be open.
    items: Vec<Slot>,
    /// Tool calls, in the order they began, added as items at the end.
    calls: Vec<Call>,
    finish: Option<String>,
    usage: Value,
    ended: bool,
}

impl Translator {
    /// A translator for the response of this envelope.
    pub(crate) fn new(env: Envelope) -> Self {
        Translator {
            env,
            seq: 0,
            items: Vec::new(),
            calls: Vec::new(),
            finish: None,
            usage: Value::Null,
            ended: false,
        }
    }

    fn emit(&mut self, out: &mut Vec<Event>, kind: &'static str, mut data: Value) {
        data["type"] = Value::String(kind.into());
        data["sequence_number"] = self.seq.into();
        self.seq += 1;
        out.push(Event { kind, data });
    }

    fn snapshot(&self, status: &Status) -> Value {
        let open = status.item();
        let output = self
            .items
            .iter()
            .map(|s| s.item.json(s.done.unwrap_or(open)))
            .collect();
        self.env.response(status, output, self.usage.clone())
    }

    /// `response.created` and `response.in_progress`.
    pub(crate) fn start(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        let response = self.snapshot(&Status::InProgress);
        self.emit(
            &mut out,
            "response.created",
            json!({ "response": response }),
        );
        let response = self.snapshot(&Status::InProgress);
        self.emit(
            &mut out,
            "response.in_progress",
            json!({ "response": response }),
        );
        out
    }

    /// The events of one chat chunk (often none: a role-only delta, the
    /// usage chunk, a tool call's piece); an error message when it is not
    /// a chunk.
    pub(crate) fn chunk(&mut self, json: &[u8]) -> Result<Vec<Event>, String> {
        let v: Value = serde_json::from_slice(json)
            .map_err(|e| format!("the upstream sent a chunk that is not JSON: {e}"))?;
        if !v.is_object() {
            return Err("the upstream sent a chunk that is not a JSON object".into());
        }
        if let Some(m) = v
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
        {
            m.clone_into(&mut self.env.model);
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = answer::usage(u);
        }
        let mut out = Vec::new();
        let choice = v.get("choices").and_then(Value::as_array).and_then(|c| {
            c.iter()
                .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        });
        let Some(choice) = choice else {
            return Ok(out);
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        let text = |key: &str| {
            delta
                .get(key)
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
        };
        if let Some(r) = text("reasoning_content").or_else(|| text("reasoning")) {
            self.reasoning_delta(r, &mut out);
        }
        if let Some(t) = text("content") {
            let logprobs = choice
                .pointer("/logprobs/content")
                .and_then(Value::as_array)
                .cloned();
            self.message_delta(false, t, logprobs, &mut out);
        }
        if let Some(t) = text("refusal") {
            self.message_delta(true, t, None, &mut out);
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.call_delta(call);
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_owned());
        }
        Ok(out)
    }

    /// The position of the open item, if there is one.
    fn open(&self) -> Option<usize> {
        let at = self.items.len().checked_sub(1)?;
        self.items[at].done.is_none().then_some(at)
    }

    /// Closes the open item, if any, then adds this one, open.
    fn add_item(&mut self, item: Item, out: &mut Vec<Event>) -> usize {
        self.close_open("completed", out);
        let at = self.items.len();
        let json = item.json("in_progress");
        self.items.push(Slot { item, done: None });
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": at, "item": json}),
        );
        at
    }

    fn reasoning_delta(&mut self, delta: &str, out: &mut Vec<Event>) {
        let open = self
            .open()
            .filter(|&at| matches!(self.items[at].item, Item::Reasoning { .. }));
        let at = match open {
            Some(at) => at,
            None => {
                let id = new_id("rs");
                let at = self.add_item(
                    Item::Reasoning {
                        id: id.clone(),
                        text: String::new(),
                    },
                    out,
                );
                self.emit(
                    out,
                    "response.reasoning_summary_part.added",
                    json!({
                        "item_id": id, "output_index": at, "summary_index": 0,
                        "part": {"type": "summary_text", "text": ""},
                    }),
                );
                at
            }
        };
        if let Some(Slot {
            item: Item::Reasoning { id, text },
            ..
        }) = self.items.get_mut(at)
        {
            text.push_str(delta);
            let id = id.clone();
            self.emit(
                out,
                "response.reasoning_summary_text.delta",
                json!({
                    "item_id": id, "output_index": at, "summary_index": 0, "delta": delta,
                }),
            );
        }
    }

    fn message_delta(
        &mut self,
        refusal: bool,
        delta: &str,
        logprobs: Option<Vec<Value>>,
        out: &mut Vec<Event>,
    ) {
        let open = self
            .open()
            .filter(|&at| matches!(self.items[at].item, Item::Message { .. }));
        let at = match open {
            Some(at) => at,
            None => {
                let item = Item::Message {
                    id: new_id("msg"),
                    parts: Vec::new(),
                };
                self.add_item(item, out)
            }
        };
        // Text and a refusal are parts of their own: the open part is
        // closed when the kind changes.
        let kind_changed = match &self.items[at].item {
            Item::Message { parts, .. } => parts.last().is_some_and(|p| p.refusal != refusal),
            _ => return,
        };
        if kind_changed {
            self.close_part(at, out);
        }
        let Some(Slot {
            item: Item::Message { id, parts },
            ..
        }) = self.items.get_mut(at)
        else {
            return;
        };
        let id = id.clone();
        let opened = parts.last().is_none_or(|p| p.refusal != refusal);
        if opened {
            parts.push(Part {
                refusal,
                text: String::new(),
                logprobs: None,
            });
        }
        let index = parts.len() - 1;
        let part = &mut parts[index];
        part.text.push_str(delta);
        if let Some(l) = &logprobs {
            part.logprobs
                .get_or_insert_with(Vec::new)
                .extend(l.iter().cloned());
        }
        if opened {
            let empty = Part {
                refusal,
                text: String::new(),
                logprobs: None,
            }
            .json();
            self.emit(
                out,
                "response.content_part.added",
                json!({
                    "item_id": id, "output_index": at, "content_index": index, "part": empty,
                }),
            );
        }
        if refusal {
            self.emit(
                out,
                "response.refusal.delta",
                json!({
                    "item_id": id, "output_index": at, "content_index": index, "delta": delta,
                }),
            );
        } else {
            self.emit(
                out,
                "response.output_text.delta",
                json!({
                    "item_id": id, "output_index": at, "content_index": index, "delta": delta,
                    "logprobs": logprobs.unwrap_or_default(),
                }),
            );
        }
    }

    /// Gathers a tool call's piece. The call is told by its chat `index`
    /// (a new `id` at a known index is a new call: some upstreams give
    /// every call index 0); without an index (Gemini's OpenAI endpoint,
    /// some proxies), a new `id` begins a new call and a piece without
    /// one continues the last call.
    fn call_delta(&mut self, call: &Value) {
        let index = call.get("index").and_then(Value::as_u64);
        let s = |p: &str| call.pointer(p).and_then(Value::as_str).unwrap_or_default();
        let id = s("/id");
        let known = match index {
            Some(i) => self
                .calls
                .iter()
                .rposition(|c| c.index == Some(i))
                .filter(|&at| {
                    let own = &self.calls[at].call_id;
                    id.is_empty() || own.is_empty() || own == id
                }),
            None if id.is_empty() => self.calls.len().checked_sub(1),
            None => self.calls.iter().rposition(|c| c.call_id == id),
        };
        let at = known.unwrap_or_else(|| {
            self.calls.push(Call {
                index,
                call_id: String::new(),
                name: String::new(),
                arguments: String::new(),
            });
            self.calls.len() - 1
        });
        let c = &mut self.calls[at];
        // An upstream may name the call after its first piece.
        if c.call_id.is_empty() {
            id.clone_into(&mut c.call_id);
        }
        if c.name.is_empty() {
            s("/function/name").clone_into(&mut c.name);
        }
        c.arguments.push_str(s("/function/arguments"));
    }

    /// Adds a whole tool call as an item, closed: `output_item.added`, its
    /// arguments (or a custom tool's input) as one delta, their `done`,
    /// `output_item.done`.
    fn add_call(&mut self, call: Call, status: &'static str, out: &mut Vec<Event>) {
        let call_id = answer::call_id(&call.call_id);
        let custom = self.env.is_custom(&call.name);
        let (item, delta) = if custom {
            let input = answer::custom_input(&call.arguments);
            let item = Item::Custom {
                id: new_id("ctc"),
                call_id,
                name: call.name,
                input: String::new(),
            };
            (item, input)
        } else {
            let item = Item::Function {
                id: new_id("fc"),
                call_id,
                name: call.name,
                arguments: String::new(),
            };
            (item, call.arguments)
        };
        let id = item.id().to_owned();
        let at = self.add_item(item, out);
        if !delta.is_empty() {
            let kind = if custom {
                "response.custom_tool_call_input.delta"
            } else {
                "response.function_call_arguments.delta"
            };
            self.emit(
                out,
                kind,
                json!({"item_id": id, "output_index": at, "delta": delta}),
            );
        }
        if let Some(Slot {
            item:
                Item::Function { arguments, .. }
                | Item::Custom {
                    input: arguments, ..
                },
            ..
        }) = self.items.get_mut(at)
        {
            *arguments = delta;
        }
        self.close(at, status, out);
    }

    /// The upstream's stream ended cleanly: the open item closed, the tool
    /// calls added (in their chat index order) and closed, then
    /// `response.completed` (or `response.incomplete`).
    pub(crate) fn finish(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        if std::mem::replace(&mut self.ended, true) {
            return out;
        }
        let status = Status::of_finish(self.finish.as_deref());
        self.close_open(status.item(), &mut out);
        let mut calls = std::mem::take(&mut self.calls);
        // Stable: calls without an index keep the order they began in.
        calls.sort_by_key(|c| c.index.unwrap_or(u64::MAX));
        for call in calls {
            self.add_call(call, status.item(), &mut out);
        }
        let kind = match status {
            Status::Incomplete(_) => "response.incomplete",
            _ => "response.completed",
        };
        let response = self.snapshot(&status);
        self.emit(&mut out, kind, json!({ "response": response }));
        out
    }

    fn close_open(&mut self, status: &'static str, out: &mut Vec<Event>) {
        if let Some(at) = self.open() {
            self.close(at, status, out);
        }
    }

    /// The `done` events of a message's last part.
    fn close_part(&mut self, at: usize, out: &mut Vec<Event>) {
        let Some(Slot {
            item: Item::Message { id, parts },
            ..
        }) = self.items.get(at)
        else {
            return;
        };
        let Some(p) = parts.last() else {
            return;
        };
        let index = parts.len() - 1;
        let id = id.clone();
        let (kind, mut data) = if p.refusal {
            ("response.refusal.done", json!({"refusal": p.text}))
        } else {
            (
                "response.output_text.done",
                json!({"text": p.text, "logprobs": p.logprobs.clone().unwrap_or_default()}),
            )
        };
        data["item_id"] = Value::String(id.clone());
        data["output_index"] = at.into();
        data["content_index"] = index.into();
        let part = p.json();
        self.emit(out, kind, data);
        self.emit(
            out,
            "response.content_part.done",
            json!({"item_id": id, "output_index": at, "content_index": index, "part": part}),
        );
    }

    /// Closes item `at`: its `done` events, then `output_item.done`.
    fn close(&mut self, at: usize, status: &'static str, out: &mut Vec<Event>) {
        if matches!(
            self.items.get(at),
            Some(Slot {
                item: Item::Message { .. },
                ..
            })
        ) {
            self.close_part(at, out);
        }
        let Some(slot) = self.items.get(at) else {
            return;
        };
        let id = slot.item.id().to_owned();
        let done = match &slot.item {
            Item::Reasoning { text, .. } => vec![
                (
                    "response.reasoning_summary_text.done",
                    json!({
                        "item_id": id, "output_index": at, "summary_index": 0, "text": text,
                    }),
                ),
                (
                    "response.reasoning_summary_part.done",
                    json!({
                        "item_id": id, "output_index": at, "summary_index": 0,
                        "part": {"type": "summary_text", "text": text},
                    }),
                ),
            ],
            Item::Message { .. } => Vec::new(),
            Item::Function {
                name, arguments, ..
            } => vec![(
                "response.function_call_arguments.done",
                json!({
                    "item_id": id, "output_index": at, "name": name, "arguments": arguments,
                }),
            )],
            Item::Custom { input, .. } => vec![(
                "response.custom_tool_call_input.done",
                json!({"item_id": id, "output_index": at, "input": input}),
            )],
        };
        for (kind, data) in done {
            self.emit(out, kind, data);
        }
        let Some(slot) = self.items.get_mut(at) else {
            return;
        };
        slot.done = Some(status);
        let item = slot.item.json(status);
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": at, "item": item}),
        );
    }

    /// The upstream failed mid-stream: `response.failed` with the items
    /// added so far (the open one `incomplete`; tool calls being gathered
    /// were never announced and are left out), and the end of the stream.
    pub(crate) fn fail(&mut self, message: String) -> Vec<Event> {
        let mut out = Vec::new();
        if std::mem::replace(&mut self.ended, true) {
            return out;
        }
        let response = self.snapshot(&Status::Failed(message));
        self.emit(&mut out, "response.failed", json!({ "response": response }));
        out
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
