//! Chat completion chunks turned into Responses API stream events: a pure
//! state machine ([`Translator`]), fed chunk JSON, giving events out.
//!
//! Every event carries its `type` and a `sequence_number` (0, 1, 2, ...).
//! An item is added when its first delta comes (reasoning, text, a
//! refusal, each tool call by its chat `index`) and every item stays open
//! until the upstream's stream ends; then they are closed in output order
//! and `response.completed` (or `response.incomplete`) carries the whole
//! response with its usage. Items opened side by side are allowed: chat
//! streams interleave them at times (parallel tool calls), and clients
//! follow each by its `output_index`.

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

/// A content part of the message item.
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

/// An output item being streamed.
enum Item {
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        parts: Vec<Part>,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

impl Item {
    fn id(&self) -> &str {
        match self {
            Item::Reasoning { id, .. } | Item::Message { id, .. } | Item::Call { id, .. } => id,
        }
    }

    fn json(&self, status: &str) -> Value {
        match self {
            Item::Reasoning { id, text } => answer::reasoning_item(id, text, status),
            Item::Message { id, parts } => {
                answer::message_item(id, parts.iter().map(Part::json).collect(), status)
            }
            Item::Call {
                id,
                call_id,
                name,
                arguments,
            } => answer::call_item(id, call_id, name, arguments, status),
        }
    }
}

/// The translation of one stream.
pub(crate) struct Translator {
    env: Envelope,
    seq: u64,
    /// Output items, in output order.
    items: Vec<Item>,
    reasoning: Option<usize>,
    message: Option<usize>,
    /// Chat tool call index -> item position.
    calls: Vec<(u64, usize)>,
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
            reasoning: None,
            message: None,
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
        let item = status.item();
        let output = self.items.iter().map(|i| i.json(item)).collect();
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
    /// usage chunk); an error message when it is not a chunk.
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
            self.call_delta(call, &mut out);
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_owned());
        }
        Ok(out)
    }

    fn add_item(&mut self, item: Item, out: &mut Vec<Event>) -> usize {
        let at = self.items.len();
        let json = item.json("in_progress");
        self.items.push(item);
        self.emit(
            out,
            "response.output_item.added",
            json!({"output_index": at, "item": json}),
        );
        at
    }

    fn reasoning_delta(&mut self, delta: &str, out: &mut Vec<Event>) {
        let at = match self.reasoning {
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
                self.reasoning = Some(at);
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
        if let Some(Item::Reasoning { id, text }) = self.items.get_mut(at) {
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
        let at = match self.message {
            Some(at) => at,
            None => {
                let item = Item::Message {
                    id: new_id("msg"),
                    parts: Vec::new(),
                };
                let at = self.add_item(item, out);
                self.message = Some(at);
                at
            }
        };
        let Some(Item::Message { id, parts }) = self.items.get_mut(at) else {
            return;
        };
        let id = id.clone();
        // Text and a refusal are parts of their own; a new part when the
        // kind changes.
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
        let empty = Part {
            refusal,
            text: String::new(),
            logprobs: None,
        }
        .json();
        if opened {
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

    fn call_delta(&mut self, call: &Value, out: &mut Vec<Event>) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let s = |p: &str| call.pointer(p).and_then(Value::as_str).unwrap_or_default();
        let at = match self.calls.iter().find(|(i, _)| *i == index) {
            Some(&(_, at)) => at,
            None => {
                let item = Item::Call {
                    id: new_id("fc"),
                    call_id: s("/id").to_owned(),
                    name: s("/function/name").to_owned(),
                    arguments: String::new(),
                };
                let at = self.add_item(item, out);
                self.calls.push((index, at));
                at
            }
        };
        let Some(Item::Call {
            id,
            call_id,
            name,
            arguments,
        }) = self.items.get_mut(at)
        else {
            return;
        };
        // An upstream may name the call after its first piece.
        if call_id.is_empty() {
            s("/id").clone_into(call_id);
        }
        if name.is_empty() {
            s("/function/name").clone_into(name);
        }
        let delta = s("/function/arguments");
        if delta.is_empty() {
            return;
        }
        arguments.push_str(delta);
        let id = id.clone();
        self.emit(
            out,
            "response.function_call_arguments.delta",
            json!({
                "item_id": id, "output_index": at, "delta": delta,
            }),
        );
    }

    /// The upstream's stream ended cleanly: every item closed, then
    /// `response.completed` (or `response.incomplete`).
    pub(crate) fn finish(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        if std::mem::replace(&mut self.ended, true) {
            return out;
        }
        let status = Status::of_finish(self.finish.as_deref());
        for at in 0..self.items.len() {
            self.close(at, &status, &mut out);
        }
        let kind = match status {
            Status::Incomplete(_) => "response.incomplete",
            _ => "response.completed",
        };
        let response = self.snapshot(&status);
        self.emit(&mut out, kind, json!({ "response": response }));
        out
    }

    fn close(&mut self, at: usize, status: &Status, out: &mut Vec<Event>) {
        let Some(item) = self.items.get(at) else {
            return;
        };
        let id = item.id().to_owned();
        let mut done: Vec<(&'static str, Value)> = Vec::new();
        match item {
            Item::Reasoning { text, .. } => {
                done.push((
                    "response.reasoning_summary_text.done",
                    json!({
                        "item_id": id, "output_index": at, "summary_index": 0, "text": text,
                    }),
                ));
                done.push((
                    "response.reasoning_summary_part.done",
                    json!({
                        "item_id": id, "output_index": at, "summary_index": 0,
                        "part": {"type": "summary_text", "text": text},
                    }),
                ));
            }
            Item::Message { parts, .. } => {
                for (index, p) in parts.iter().enumerate() {
                    let (kind, whole) = if p.refusal {
                        ("response.refusal.done", json!({"refusal": p.text}))
                    } else {
                        (
                            "response.output_text.done",
                            json!({
                                "text": p.text, "logprobs": p.logprobs.clone().unwrap_or_default(),
                            }),
                        )
                    };
                    let mut data =
                        json!({"item_id": id, "output_index": at, "content_index": index});
                    if let (Some(d), Some(w)) = (data.as_object_mut(), whole.as_object()) {
                        d.extend(w.clone());
                    }
                    done.push((kind, data));
                    done.push(("response.content_part.done", json!({
                        "item_id": id, "output_index": at, "content_index": index, "part": p.json(),
                    })));
                }
            }
            Item::Call {
                name, arguments, ..
            } => {
                done.push((
                    "response.function_call_arguments.done",
                    json!({
                        "item_id": id, "output_index": at, "name": name, "arguments": arguments,
                    }),
                ));
            }
        }
        done.push((
            "response.output_item.done",
            json!({
                "output_index": at, "item": item.json(status.item()),
            }),
        ));
        for (kind, data) in done {
            self.emit(out, kind, data);
        }
    }

    /// The upstream failed mid-stream: `response.failed` with what came so
    /// far, and the end of the stream.
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
