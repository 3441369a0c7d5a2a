use super::*;
use crate::responses::request::Echo;

fn translator() -> Translator {
    Translator::new(Envelope::new("asked", Echo::default()))
}

fn delta(delta: Value, finish: Option<&str>) -> Vec<u8> {
    json!({"id": "c", "object": "chat.completion.chunk", "model": "gpt-x",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    .to_string()
    .into_bytes()
}

/// Runs a whole stream: the start, every chunk, the end; checks the
/// events are sequenced and the items sequential.
fn run(chunks: &[Vec<u8>]) -> Vec<Event> {
    run_with(translator(), chunks)
}

fn run_with(mut t: Translator, chunks: &[Vec<u8>]) -> Vec<Event> {
    let mut events = t.start();
    for c in chunks {
        events.extend(t.chunk(c).unwrap());
    }
    events.extend(t.finish());
    assert_sequenced(&events);
    assert_items_sequential(&events);
    events
}

/// A chunk of one tool call's piece.
fn call(index: Option<u64>, id: Option<&str>, name: Option<&str>, args: &str) -> Vec<u8> {
    let mut c = json!({"function": {"arguments": args}});
    if let Some(i) = index {
        c["index"] = json!(i);
    }
    if let Some(id) = id {
        c["id"] = json!(id);
        c["type"] = json!("function");
    }
    if let Some(n) = name {
        c["function"]["name"] = json!(n);
    }
    delta(json!({"tool_calls": [c]}), None)
}

/// Items one at a time, as the Responses API streams them (Codex follows
/// one active item): each added, its events, done, before the next is
/// added; `output_index` counts the items added and the final output is
/// those items, in that order.
fn assert_items_sequential(events: &[Event]) {
    let mut open: Option<u64> = None;
    let mut ids: Vec<Value> = Vec::new();
    for e in events {
        let at = e.data.get("output_index").and_then(Value::as_u64);
        match e.kind {
            "response.output_item.added" => {
                assert_eq!(open, None, "added while open: {:?}", kinds(events));
                assert_eq!(at, Some(ids.len() as u64), "{:?}", e.data);
                ids.push(e.data["item"]["id"].clone());
                open = at;
            }
            "response.output_item.done" => {
                assert_eq!(at, open, "done of an item not open: {:?}", e.data);
                assert_eq!(e.data["item"]["id"], ids[at.unwrap() as usize]);
                open = None;
            }
            _ => {
                if let Some(at) = at {
                    assert_eq!(Some(at), open, "{} outside its item: {:?}", e.kind, e.data);
                    assert_eq!(e.data["item_id"], ids[at as usize], "{:?}", e.data);
                }
            }
        }
    }
    let last = events.last().unwrap();
    if matches!(last.kind, "response.completed" | "response.incomplete") {
        assert_eq!(open, None, "an item left open");
        let out: Vec<Value> = last.data["response"]["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].clone())
            .collect();
        assert_eq!(out, ids, "the output is the items added, in order");
    }
}

/// The events of the item at `at`, by kind.
fn item_kinds(events: &[Event], at: u64) -> Vec<&'static str> {
    events
        .iter()
        .filter(|e| e.data.get("output_index").and_then(Value::as_u64) == Some(at))
        .map(|e| e.kind)
        .collect()
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind).collect()
}

fn assert_sequenced(events: &[Event]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.data["sequence_number"], i, "{:?}", kinds(events));
        assert_eq!(e.data["type"], e.kind);
    }
}

const USAGE: &str = r#"{"id":"c","object":"chat.completion.chunk","model":"gpt-x","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}"#;

#[test]
fn a_text_stream_is_one_message_item_and_ends_completed_with_usage() {
    let events = run(&[
        delta(json!({"role": "assistant", "content": ""}), None),
        delta(json!({"content": "Hel"}), None),
        delta(json!({"content": "lo"}), None),
        delta(json!({}), Some("stop")),
        USAGE.as_bytes().to_vec(),
    ]);
    assert_eq!(
        kinds(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    assert_sequenced(&events);
    assert_eq!(events[0].data["response"]["status"], "in_progress");
    assert_eq!(events[0].data["response"]["output"], json!([]));
    let item = &events[2].data;
    assert_eq!(item["output_index"], 0);
    assert_eq!(item["item"]["status"], "in_progress");
    assert_eq!(item["item"]["content"], json!([]));
    let id = item["item"]["id"].as_str().unwrap();
    assert_eq!(events[4].data["item_id"], id);
    assert_eq!(events[4].data["delta"], "Hel");
    assert_eq!(events[6].data["text"], "Hello");
    assert_eq!(events[8].data["item"]["status"], "completed");
    let done = &events[9].data["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["model"], "gpt-x", "the model that answered");
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
    assert_eq!(done["usage"]["input_tokens"], 4);
    assert_eq!(done["usage"]["output_tokens"], 2);
    assert_eq!(done["usage"]["total_tokens"], 6);
    assert_eq!(done["id"], events[0].data["response"]["id"], "one response");
}

#[test]
fn items_are_sequential_and_tool_calls_come_whole_at_the_end_in_index_order() {
    let events = run(&[
        delta(
            json!({"role": "assistant", "reasoning_content": "hm"}),
            None,
        ),
        delta(json!({"content": "Checking"}), None),
        call(Some(0), Some("call_a"), Some("weather"), ""),
        call(Some(0), None, None, "{\"city\":"),
        // Parallel calls interleaved, and text after a call began.
        call(Some(1), Some("call_b"), Some("clock"), "{}"),
        delta(json!({"content": "..."}), None),
        call(Some(0), None, None, "\"Paris\"}"),
        delta(json!({}), Some("tool_calls")),
    ]);
    let added: Vec<(u64, &str)> = events
        .iter()
        .filter(|e| e.kind == "response.output_item.added")
        .map(|e| {
            (
                e.data["output_index"].as_u64().unwrap(),
                e.data["item"]["type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        added,
        [
            (0, "reasoning"),
            (1, "message"),
            (2, "function_call"),
            (3, "function_call")
        ]
    );
    assert_eq!(
        item_kinds(&events, 2),
        [
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
        ]
    );
    let args: String = events
        .iter()
        .filter(|e| {
            e.kind == "response.function_call_arguments.delta" && e.data["output_index"] == 2
        })
        .map(|e| e.data["delta"].as_str().unwrap())
        .collect();
    assert_eq!(args, "{\"city\":\"Paris\"}");
    let text: String = events
        .iter()
        .filter(|e| e.kind == "response.output_text.delta")
        .map(|e| e.data["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Checking...");
    let fa = events
        .iter()
        .find(|e| e.kind == "response.function_call_arguments.done" && e.data["output_index"] == 2)
        .unwrap();
    assert_eq!(fa.data["arguments"], "{\"city\":\"Paris\"}");
    let last = events.last().unwrap();
    assert_eq!(last.kind, "response.completed");
    let out = &last.data["response"]["output"];
    assert_eq!(out[0]["summary"][0]["text"], "hm");
    assert_eq!(out[1]["content"][0]["text"], "Checking...");
    assert_eq!(out[2]["call_id"], "call_a");
    assert_eq!(out[2]["name"], "weather");
    assert_eq!(out[2]["status"], "completed");
    assert_eq!(out[3]["call_id"], "call_b");
    assert_eq!(out[3]["arguments"], "{}");
    assert!(last.data["response"]["usage"].is_null(), "none came");
    // The reasoning item was closed when the text began.
    let reasoning_done = events
        .iter()
        .position(|e| e.kind == "response.output_item.done")
        .unwrap();
    let text_begins = events
        .iter()
        .position(|e| e.kind == "response.output_text.delta")
        .unwrap();
    assert!(reasoning_done < text_begins, "{:?}", kinds(&events));
    assert_eq!(events[reasoning_done].data["item"]["type"], "reasoning");
    assert!(kinds(&events).contains(&"response.reasoning_summary_text.done"));
    assert!(kinds(&events).contains(&"response.reasoning_summary_part.done"));
}

#[test]
fn going_back_to_reasoning_or_text_opens_a_new_item() {
    let events = run(&[
        delta(json!({"reasoning": "a"}), None),
        delta(json!({"content": "b"}), None),
        delta(json!({"reasoning": "c"}), None),
        delta(json!({"content": "d"}), None),
        delta(json!({}), Some("stop")),
    ]);
    let out = &events.last().unwrap().data["response"]["output"];
    let kinds: Vec<&str> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["reasoning", "message", "reasoning", "message"]);
    assert_eq!(out[2]["summary"][0]["text"], "c");
    assert_eq!(out[3]["content"][0]["text"], "d");
}

/// Gemini's OpenAI endpoint and some proxies give tool call pieces no
/// `index`; some upstreams give every call index 0.
#[test]
fn tool_calls_without_an_index_are_told_apart_by_id() {
    let events = run(&[
        call(None, Some("call_a"), Some("f"), "{\"x\":"),
        call(None, None, None, "1}"),
        call(None, Some("call_b"), Some("g"), "{"),
        call(None, Some("call_b"), None, "}"),
        delta(json!({}), Some("tool_calls")),
    ]);
    let out = &events.last().unwrap().data["response"]["output"];
    assert_eq!(out.as_array().unwrap().len(), 2, "{out}");
    assert_eq!(out[0]["call_id"], "call_a");
    assert_eq!(out[0]["name"], "f");
    assert_eq!(out[0]["arguments"], "{\"x\":1}");
    assert_eq!(out[1]["call_id"], "call_b");
    assert_eq!(out[1]["name"], "g");
    assert_eq!(out[1]["arguments"], "{}");

    let events = run(&[
        call(Some(0), Some("call_a"), Some("f"), "{}"),
        call(Some(0), Some("call_b"), Some("g"), "{\"y\""),
        call(Some(0), None, None, ":2}"),
        delta(json!({}), Some("tool_calls")),
    ]);
    let out = &events.last().unwrap().data["response"]["output"];
    assert_eq!(out.as_array().unwrap().len(), 2, "{out}");
    assert_eq!(out[0]["arguments"], "{}");
    assert_eq!(out[1]["call_id"], "call_b");
    assert_eq!(out[1]["arguments"], "{\"y\":2}");
}

#[test]
fn empty_call_ids_are_made_once_per_call() {
    let events = run(&[
        call(Some(0), Some(""), Some("f"), "{}"),
        call(Some(1), Some(""), Some("g"), "{}"),
        delta(json!({}), Some("tool_calls")),
    ]);
    let ids = |kind: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.data["item"]["call_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let added = ids("response.output_item.added");
    assert_eq!(added, ids("response.output_item.done"));
    assert_eq!(added.len(), 2);
    assert_ne!(added[0], added[1]);
    for id in &added {
        assert!(id.starts_with("call_") && id.len() > 10, "{id}");
    }
    let out = &events.last().unwrap().data["response"]["output"];
    assert_eq!(out[0]["call_id"], added[0].as_str());
}

#[test]
fn custom_tool_calls_stream_their_decoded_input() {
    let mut env = Envelope::new("asked", Echo::default());
    env.custom_tools = vec!["apply_patch".into()];
    let events = run_with(
        Translator::new(env),
        &[
            delta(json!({"content": "Patching."}), None),
            call(
                Some(0),
                Some("call_p"),
                Some("apply_patch"),
                "{\"input\":\"*** Begin",
            ),
            call(Some(0), None, None, " Patch\\n\"}"),
            call(Some(1), Some("call_q"), Some("apply_patch"), "not json"),
            call(Some(2), Some("call_f"), Some("f"), "{}"),
            delta(json!({}), Some("tool_calls")),
        ],
    );
    assert_eq!(
        item_kinds(&events, 1),
        [
            "response.output_item.added",
            "response.custom_tool_call_input.delta",
            "response.custom_tool_call_input.done",
            "response.output_item.done",
        ]
    );
    let of = |kind: &str| {
        events
            .iter()
            .find(|e| e.kind == kind && e.data["output_index"] == 1)
            .unwrap()
            .data
            .clone()
    };
    let added = of("response.output_item.added");
    assert_eq!(added["item"]["type"], "custom_tool_call");
    assert_eq!(added["item"]["input"], "");
    assert_eq!(added["item"]["status"], "in_progress");
    assert!(
        added["item"]["id"].as_str().unwrap().starts_with("ctc_"),
        "{added}"
    );
    assert_eq!(
        of("response.custom_tool_call_input.delta")["delta"],
        "*** Begin Patch\n"
    );
    assert_eq!(
        of("response.custom_tool_call_input.done")["input"],
        "*** Begin Patch\n"
    );
    let done = of("response.output_item.done");
    assert_eq!(
        done["item"],
        json!({"type": "custom_tool_call", "id": added["item"]["id"], "call_id": "call_p",
               "name": "apply_patch", "input": "*** Begin Patch\n", "status": "completed"})
    );
    let out = &events.last().unwrap().data["response"]["output"];
    assert_eq!(out[2]["input"], "not json", "not the JSON shape: as it is");
    assert_eq!(out[3]["type"], "function_call");
}

#[test]
fn a_refusal_is_a_content_part_of_its_own() {
    let events = run(&[
        delta(json!({"content": "I"}), None),
        delta(json!({"refusal": "can't"}), None),
        delta(json!({}), Some("stop")),
    ]);
    // Part by part: the text's done before the refusal's added.
    assert_eq!(
        item_kinds(&events, 0),
        [
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.content_part.added",
            "response.refusal.delta",
            "response.refusal.done",
            "response.content_part.done",
            "response.output_item.done",
        ]
    );
    let parts: Vec<u64> = events
        .iter()
        .filter(|e| e.kind == "response.content_part.added")
        .map(|e| e.data["content_index"].as_u64().unwrap())
        .collect();
    assert_eq!(parts, [0, 1]);
    let done = events
        .iter()
        .find(|e| e.kind == "response.refusal.done")
        .unwrap();
    assert_eq!(done.data["refusal"], "can't");
    assert_eq!(
        events.last().unwrap().data["response"]["output"][0]["content"][1],
        json!({"type": "refusal", "refusal": "can't"})
    );
}

#[test]
fn a_length_stop_ends_incomplete() {
    let events = run(&[delta(json!({"content": "cut"}), Some("length"))]);
    let last = events.last().unwrap();
    assert_eq!(last.kind, "response.incomplete");
    assert_eq!(last.data["response"]["status"], "incomplete");
    assert_eq!(
        last.data["response"]["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
}

#[test]
fn a_failure_mid_stream_ends_with_response_failed_once() {
    let mut t = translator();
    let mut events = t.start();
    events.extend(t.chunk(&delta(json!({"content": "par"}), None)).unwrap());
    events.extend(t.fail("upstream `p` failed mid-stream: reset".into()));
    events.extend(t.finish());
    assert_sequenced(&events);
    let last = events.last().unwrap();
    assert_eq!(last.kind, "response.failed");
    assert_eq!(last.data["response"]["status"], "failed");
    assert_eq!(last.data["response"]["error"]["code"], "server_error");
    assert!(
        last.data["response"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("reset")
    );
    assert_eq!(
        last.data["response"]["output"][0]["content"][0]["text"],
        "par"
    );
    assert!(t.chunk(b"not json").is_err());
    assert!(t.chunk(b"[1]").is_err());
}

#[test]
fn events_are_framed_with_their_names() {
    let mut t = translator();
    let text = String::from_utf8(frame(&t.start()).to_vec()).unwrap();
    let frames: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(frames.len(), 2);
    assert!(
        frames[0].starts_with("event: response.created\ndata: {"),
        "{text}"
    );
    assert!(
        frames[1].starts_with("event: response.in_progress\ndata: {"),
        "{text}"
    );
}
