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

/// Runs a whole stream: the start, every chunk, the end.
fn run(chunks: &[Vec<u8>]) -> Vec<Event> {
    let mut t = translator();
    let mut events = t.start();
    for c in chunks {
        events.extend(t.chunk(c).unwrap());
    }
    events.extend(t.finish());
    events
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
fn interleaved_text_and_tool_calls_are_items_of_their_own() {
    let call = |index: u64, id: Option<&str>, name: Option<&str>, args: &str| {
        let mut c = json!({"index": index, "function": {"arguments": args}});
        if let Some(id) = id {
            c["id"] = json!(id);
            c["type"] = json!("function");
        }
        if let Some(n) = name {
            c["function"]["name"] = json!(n);
        }
        delta(json!({"tool_calls": [c]}), None)
    };
    let events = run(&[
        delta(
            json!({"role": "assistant", "reasoning_content": "hm"}),
            None,
        ),
        delta(json!({"content": "Checking"}), None),
        call(0, Some("call_a"), Some("weather"), ""),
        call(0, None, None, "{\"city\":"),
        call(1, Some("call_b"), Some("clock"), "{}"),
        delta(json!({"content": "..."}), None),
        call(0, None, None, "\"Paris\"}"),
        delta(json!({}), Some("tool_calls")),
    ]);
    assert_sequenced(&events);
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
    // Closed in output order, each item's done before the next's.
    let done: Vec<u64> = events
        .iter()
        .filter(|e| e.kind == "response.output_item.done")
        .map(|e| e.data["output_index"].as_u64().unwrap())
        .collect();
    assert_eq!(done, [0, 1, 2, 3]);
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
    assert_eq!(out[3]["call_id"], "call_b");
    assert_eq!(out[3]["arguments"], "{}");
    assert!(last.data["response"]["usage"].is_null(), "none came");
    // The reasoning summary's own events.
    assert!(kinds(&events).contains(&"response.reasoning_summary_text.delta"));
    assert!(kinds(&events).contains(&"response.reasoning_summary_part.done"));
}

#[test]
fn a_refusal_is_a_content_part_of_its_own() {
    let events = run(&[
        delta(json!({"content": "I"}), None),
        delta(json!({"refusal": "can't"}), None),
        delta(json!({}), Some("stop")),
    ]);
    assert_sequenced(&events);
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
