//! Text completions on Ollama's native `/api/generate`, made as Ollama's own
//! OpenAI-compatible `/v1/completions` makes them: the prompt as given (the
//! model's template applied, no `raw`), `suffix`, the sampling fields as
//! `options`; the answer and its NDJSON stream become `text_completion`
//! objects.

use super::{Ndjson, Queue, Sampling, options, stop_or_length};
use crate::error::{Failure, FailureKind};
use crate::provider::completion::TextCompletion;
use crate::provider::{Reply, at_most_one};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uat_types::{CompletionRequest, Usage};

/// The prompt, when it is one text: `/api/generate` takes one string, and
/// answers an empty one by loading the model, generating nothing (`done_reason`
/// `load`, even with a `suffix`).
fn prompt(req: &CompletionRequest) -> Result<&str, Failure> {
    let prompt = req.single_prompt().ok_or_else(|| {
        Failure::unsupported(
            "ollama providers take one text prompt per request, not several prompts or token ids",
            "prompt",
            "unsupported_parameter",
        )
    })?;
    if prompt.is_empty() {
        return Err(Failure::unsupported(
            "ollama providers generate nothing for an empty prompt (Ollama only loads the model)",
            "prompt",
            "unsupported_value",
        ));
    }
    Ok(prompt)
}

/// Ollama's 400 for a `suffix` on a model that cannot fill in the middle
/// (`"<model>" does not support insert`) is a refusal, so an alias fails
/// over to a target that can; any other failure stays as it is.
pub(super) fn no_insert(f: Failure) -> Failure {
    if f.status == Some(400) && f.message.contains("does not support insert") {
        Failure::unsupported(
            format!(
                "{} (`suffix` needs a model that can fill in the middle)",
                f.message
            ),
            "suffix",
            "unsupported_parameter",
        )
    } else {
        f
    }
}

/// What `/api/generate` cannot do: several prompts or token ids, `echo`,
/// logprobs, `n` or `best_of` above 1.
pub(super) fn refusal(req: &CompletionRequest) -> Result<(), Failure> {
    prompt(req)?;
    let unsupported = |field: &str| {
        Err(Failure::unsupported(
            format!("{field} is not supported by ollama providers"),
            field,
            "unsupported_parameter",
        ))
    };
    if req.extra.get("echo").and_then(Value::as_bool) == Some(true) {
        return unsupported("echo");
    }
    // Any number, 0 too: OpenAI then gives the chosen tokens' logprobs.
    match req.extra.get("logprobs") {
        None | Some(Value::Null | Value::Bool(false)) => {}
        Some(_) => return unsupported("logprobs"),
    }
    at_most_one(&req.extra, "n", "ollama")?;
    at_most_one(&req.extra, "best_of", "ollama")
}

/// The `/api/generate` body for a text completion request.
pub(super) fn body(model: &str, req: &CompletionRequest, stream: bool) -> Result<Value, Failure> {
    refusal(req)?;
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("prompt".into(), json!(prompt(req)?));
    body.insert("stream".into(), json!(stream));
    if let Some(suffix) = req.extra.get("suffix").filter(|v| !v.is_null()) {
        body.insert("suffix".into(), suffix.clone());
    }
    let options = options(Sampling {
        temperature: req.temperature,
        top_p: req.top_p,
        max_tokens: req.max_tokens,
        stop: req.stop_sequences(),
        extra: &req.extra,
    });
    if !options.is_empty() {
        body.insert("options".into(), Value::Object(options));
    }
    Ok(Value::Object(body))
}

/// An `/api/generate` answer, or one line of its stream.
#[derive(Deserialize)]
pub(super) struct Generated {
    #[serde(default)]
    response: String,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    error: Option<String>,
}

impl Generated {
    fn usage(&self) -> Usage {
        Usage::new(
            self.prompt_eval_count.unwrap_or(0),
            self.eval_count.unwrap_or(0),
        )
    }

    fn finish_reason(&self) -> &'static str {
        stop_or_length(self.done_reason.as_deref())
    }
}

/// The failure of an answer that only loaded the model (`done_reason`
/// `load`): no completion, never one to store.
fn only_loaded(r: &Generated) -> Option<Failure> {
    (r.done_reason.as_deref() == Some("load")).then(|| {
        Failure::new(
            FailureKind::ServerError,
            "ollama loaded the model and generated nothing",
        )
    })
}

/// The `text_completion` answer for a non-streamed `/api/generate` one.
pub(super) fn answer(model: &str, r: Generated) -> Result<Reply, Failure> {
    if let Some(e) = r.error {
        return Err(Failure::new(FailureKind::ServerError, e));
    }
    if let Some(f) = only_loaded(&r) {
        return Err(f);
    }
    TextCompletion::new(model).answer(&r.response, r.finish_reason(), r.usage())
}

/// A streamed `/api/generate` translated line by line: an empty text
/// chunk for the first line (a thinking model's first lines carry no
/// `response`, and the router's first-byte bound waits for a chunk), a chunk
/// per line with text, a last one with the `finish_reason`, then the usage
/// chunk when the client asked for it.
pub(super) struct GenerateStream {
    completion: TextCompletion,
    include_usage: bool,
    started: bool,
    queue: Queue,
}

impl GenerateStream {
    pub(super) fn new(completion: TextCompletion, include_usage: bool) -> Self {
        GenerateStream {
            completion,
            include_usage,
            started: false,
            queue: Queue::default(),
        }
    }
}

impl Ndjson for GenerateStream {
    fn line(&mut self, line: &[u8]) {
        let Some(r) = self.queue.parse::<Generated>(line) else {
            return;
        };
        if let Some(e) = r.error {
            self.queue.fail(Failure::new(FailureKind::Interrupted, e));
            return;
        }
        if let Some(f) = only_loaded(&r) {
            self.queue.fail(f);
            return;
        }
        if !std::mem::replace(&mut self.started, true) && r.response.is_empty() && !r.done {
            let first = self.completion.chunk("", None);
            self.queue.pending.push_back(first);
        }
        if !r.response.is_empty() {
            let chunk = self.completion.chunk(&r.response, None);
            self.queue.pending.push_back(chunk);
        }
        if r.done {
            let last = self.completion.chunk("", Some(r.finish_reason()));
            self.queue.pending.push_back(last);
            if self.include_usage {
                let usage = self.completion.usage_chunk(r.usage());
                self.queue.pending.push_back(usage);
            }
            self.queue.done = true;
        }
    }

    fn queue(&mut self) -> &mut Queue {
        &mut self.queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::completion_request;

    fn collect(lines: &[&'static str], include_usage: bool) -> Vec<Result<Value, Failure>> {
        let completion = TextCompletion {
            id: "cmpl-x".into(),
            created: 1,
            model: "llama".into(),
        };
        let st = GenerateStream::new(completion, include_usage);
        crate::provider::translated(lines, |s| super::super::translate(s, st))
    }

    #[test]
    fn request_translation() {
        let req = completion_request(json!({
            "prompt": ["def add(a, b):"], "suffix": "\n\nprint(add(1, 2))", "max_tokens": 32,
            "temperature": 0.2, "top_p": 0.9, "stop": "\n\n", "seed": 7,
            "frequency_penalty": 0.5, "presence_penalty": 0.25, "user": "u1",
            "echo": false, "logprobs": null, "n": 1
        }));
        assert!(refusal(&req).is_ok());
        let b = body("codellama:7b-code", &req, true).unwrap();
        assert_eq!(
            b,
            json!({
                "model": "codellama:7b-code", "prompt": "def add(a, b):", "stream": true,
                "suffix": "\n\nprint(add(1, 2))",
                "options": {"temperature": 0.2, "top_p": 0.9, "num_predict": 32, "stop": ["\n\n"],
                            "seed": 7, "frequency_penalty": 0.5, "presence_penalty": 0.25}
            })
        );
        // Only what was given: no options, no suffix, no raw.
        let plain = body("llama", &completion_request(json!({})), false).unwrap();
        assert_eq!(
            plain,
            json!({"model": "llama", "prompt": "hi", "stream": false})
        );
    }

    /// What `/api/generate` cannot do is refused naming the field, never
    /// dropped (one prompt of two answered, no echo, no logprobs).
    #[test]
    fn what_generate_cannot_do_is_refused() {
        for (extra, param) in [
            (json!({"prompt": ["a", "b"]}), "prompt"),
            (json!({"prompt": [1, 2, 3]}), "prompt"),
            (json!({"echo": true}), "echo"),
            (json!({"logprobs": 1}), "logprobs"),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"logprobs": 0}), "logprobs"),
            (json!({"prompt": ""}), "prompt"),
            (json!({"prompt": [""], "suffix": "}"}), "prompt"),
            (json!({"n": 2}), "n"),
            (json!({"best_of": 3}), "best_of"),
        ] {
            let req = completion_request(extra.clone());
            let f = refusal(&req).unwrap_err();
            assert_eq!(f.kind, FailureKind::Unsupported, "{extra}");
            let u = f.upstream.unwrap();
            assert_eq!(u.param.as_deref(), Some(param), "{extra}");
            assert!(
                u.code
                    .as_deref()
                    .is_some_and(|c| c.starts_with("unsupported_")),
                "{extra}"
            );
            assert!(body("llama", &req, false).is_err(), "{extra}");
        }
        for ok in [
            json!({"logprobs": null}),
            json!({"logprobs": false}),
            json!({"echo": false}),
            json!({"n": 1, "best_of": 1}),
        ] {
            assert!(refusal(&completion_request(ok.clone())).is_ok(), "{ok}");
        }
    }

    #[test]
    fn answer_translation() {
        let r: Generated = serde_json::from_value(json!({
            "model": "llama", "created_at": "2024-01-01T00:00:00Z", "response": "return a + b",
            "done": true, "done_reason": "length", "context": [1, 2, 3],
            "prompt_eval_count": 5, "eval_count": 4
        }))
        .unwrap();
        let reply = answer("llama", r).unwrap();
        assert!(reply.shape.choices);
        assert_eq!(reply.usage, Some(Usage::new(5, 4)));
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        assert!(v["id"].as_str().unwrap().starts_with("cmpl-"), "{v}");
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["model"], "llama");
        assert!(v["created"].as_u64().unwrap() > 0);
        assert_eq!(
            v["choices"],
            json!([{"text": "return a + b", "index": 0, "logprobs": null, "finish_reason": "length"}])
        );
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9})
        );
        for reason in [json!("stop"), json!("unload"), Value::Null] {
            let r: Generated = serde_json::from_value(
                json!({"response": "x", "done": true, "done_reason": reason}),
            )
            .unwrap();
            let v: Value = serde_json::from_slice(&answer("llama", r).unwrap().body).unwrap();
            assert_eq!(v["choices"][0]["finish_reason"], "stop", "{reason}");
        }
        // An empty prompt's answer (refused before, but never stored).
        let r: Generated =
            serde_json::from_value(json!({"response": "", "done": true, "done_reason": "load"}))
                .unwrap();
        assert!(answer("llama", r).is_err(), "only loaded: no completion");
        let r: Generated = serde_json::from_value(json!({"error": "model crashed"})).unwrap();
        let f = answer("llama", r).unwrap_err();
        assert_eq!(
            (f.kind, f.message.as_str()),
            (FailureKind::ServerError, "model crashed")
        );
    }

    #[test]
    fn ndjson_becomes_text_completion_chunks() {
        let lines = [
            r#"{"model":"llama","response":"return","done":false}"#,
            r#"{"model":"llama","response":"","done":false}"#,
            r#"{"model":"llama","response":" a + b","done":false}"#,
            r#"{"model":"llama","response":"","done":true,"done_reason":"length","prompt_eval_count":5,"eval_count":3}"#,
        ];
        let v: Vec<Value> = collect(&lines, true)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(v.len(), 4, "two texts, the finish, the usage: {v:?}");
        assert_eq!(
            v[0],
            json!({"id": "cmpl-x", "object": "text_completion", "created": 1, "model": "llama",
                   "choices": [{"text": "return", "index": 0, "logprobs": null, "finish_reason": null}]})
        );
        assert_eq!(v[1]["choices"][0]["text"], " a + b");
        assert_eq!(v[2]["choices"][0]["text"], "");
        assert_eq!(v[2]["choices"][0]["finish_reason"], "length");
        assert_eq!(v[3]["choices"], json!([]));
        assert_eq!(
            v[3]["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
        );
        // Without include_usage, no usage chunk; a plain end is `stop`.
        let v: Vec<Value> = collect(
            &[
                r#"{"response":"x","done":false}"#,
                r#"{"response":"","done":true,"done_reason":"stop"}"#,
            ],
            false,
        )
        .into_iter()
        .map(Result::unwrap)
        .collect();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1]["choices"][0]["finish_reason"], "stop");
        assert!(v.iter().all(|c| c.get("usage").is_none()));
    }

    #[test]
    fn cut_stream_error_line_and_garbage_fail() {
        let out = collect(&[r#"{"response":"a","done":false}"#], false);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].as_ref().unwrap_err().kind, FailureKind::Interrupted);
        let out = collect(&[r#"{"error":"model crashed"}"#], true);
        assert_eq!(out[0].as_ref().unwrap_err().message, "model crashed");
        let out = collect(&["not json"], true);
        assert_eq!(out[0].as_ref().unwrap_err().kind, FailureKind::Malformed);
        let out = collect(
            &[r#"{"response":"","done":true,"done_reason":"load"}"#],
            true,
        );
        assert!(out[0].is_err(), "only loaded: {out:?}");
    }

    /// A thinking model's first lines carry no `response`: the stream opens
    /// with an empty text at once (the router's first-byte bound counts to
    /// the first chunk), and the text that follows is unchanged.
    #[test]
    fn a_stream_opens_on_its_first_line() {
        let v: Vec<Value> = collect(
            &[
                r#"{"response":"","thinking":"Hmm","done":false}"#,
                r#"{"response":"","thinking":" ok","done":false}"#,
                r#"{"response":"x","done":false}"#,
                r#"{"response":"","done":true,"done_reason":"stop"}"#,
            ],
            false,
        )
        .into_iter()
        .map(Result::unwrap)
        .collect();
        let texts: Vec<&str> = v
            .iter()
            .map(|c| c["choices"][0]["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["", "x", ""], "{v:?}");
        assert!(v[0]["choices"][0]["finish_reason"].is_null());
        assert_eq!(v[2]["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn a_model_without_insert_is_a_refusal_of_suffix() {
        let f = no_insert(Failure::from_status(
            400,
            "\"llama3:latest\" does not support insert",
            None,
        ));
        assert_eq!(f.kind, FailureKind::Unsupported);
        assert_eq!(f.upstream.and_then(|u| u.param).as_deref(), Some("suffix"));
        let other = no_insert(Failure::from_status(400, "invalid options", None));
        assert_ne!(other.kind, FailureKind::Unsupported);
    }
}
