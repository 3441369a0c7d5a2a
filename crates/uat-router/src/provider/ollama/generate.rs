//! Text completions on Ollama's native `/api/generate`, made as Ollama's own
//! OpenAI-compatible `/v1/completions` makes them: the prompt as given (the
//! model's template applied, no `raw`), `suffix`, the sampling fields as
//! `options`; the answer and its NDJSON stream become `text_completion`
//! objects. OpenAI's legacy `logprobs: N` is Ollama's `logprobs: true,
//! top_logprobs: N` (Ollama 0.12.11 and later), its per-token list given
//! back in the legacy shape ([`legacy_logprobs`]).

use super::{Ndjson, OllamaLogprob, Queue, Sampling, options, stop_or_length};
use crate::error::{Failure, FailureKind};
use crate::provider::completion::TextCompletion;
use crate::provider::{Reply, StreamChunk, at_most_one};
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

/// Ollama's most `top_logprobs` (OpenAI's legacy `logprobs` goes to 5).
const MAX_LOGPROBS: u64 = 20;

/// The legacy `logprobs` asked for: `None` when off (absent, `null`,
/// `false`), else how many likeliest tokens to give at each place (0: only
/// the generated token's logprob). `true` is taken as 1 and a whole number
/// written as a float (`2.0`) as that integer; another value is refused
/// naming it.
fn logprobs(req: &CompletionRequest) -> Result<Option<u64>, Failure> {
    let n = match req.extra.get("logprobs") {
        None | Some(Value::Null | Value::Bool(false)) => return Ok(None),
        Some(Value::Bool(true)) => Some(1),
        Some(v) => v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=MAX_LOGPROBS as f64).contains(f))
                .map(|f| f as u64)
        }),
    };
    match n.filter(|n| *n <= MAX_LOGPROBS) {
        Some(n) => Ok(Some(n)),
        None => Err(Failure::unsupported(
            format!(
                "logprobs must be null or an integer from 0 to {MAX_LOGPROBS} for ollama providers, not {}",
                req.extra.get("logprobs").unwrap_or(&Value::Null)
            ),
            "logprobs",
            "unsupported_value",
        )),
    }
}

/// What `/api/generate` cannot do: several prompts or token ids, `echo`
/// (Ollama cannot give the prompt back, nor score it), `logprobs` other than
/// null or 0 to 20, `n` or `best_of` above 1.
pub(super) fn refusal(req: &CompletionRequest) -> Result<(), Failure> {
    prompt(req)?;
    if req.extra.get("echo").and_then(Value::as_bool) == Some(true) {
        return Err(Failure::unsupported(
            "echo is not supported by ollama providers",
            "echo",
            "unsupported_parameter",
        ));
    }
    logprobs(req)?;
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
    if let Some(n) = logprobs(req)? {
        body.insert("logprobs".into(), json!(true));
        body.insert("top_logprobs".into(), json!(n));
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
    /// A thinking model's reasoning (thinking is on by default on
    /// `/api/generate`): not the answer, but its tokens are in `logprobs`.
    #[serde(default)]
    thinking: String,
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
    /// The logprobs of this piece's tokens, when asked for.
    #[serde(default)]
    logprobs: Option<Vec<OllamaLogprob>>,
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

/// A token's bytes: Ollama's `bytes` when given (a token that splits a
/// character has its string as U+FFFD, its bytes as they are), else its
/// string's UTF-8.
fn token_bytes(l: &OllamaLogprob) -> Vec<u8> {
    match &l.bytes {
        Some(b) => b.iter().map(|&x| u8::try_from(x).unwrap_or(0xff)).collect(),
        None => l.token.as_bytes().to_vec(),
    }
}

/// Counts the characters (Unicode code points) that tokens' bytes decode
/// to, an incomplete UTF-8 sequence carried to the next token (and the
/// next chunk): a character split over two tokens counts once, on the one
/// that completes it. Invalid bytes count as `String::from_utf8_lossy`
/// replaces them.
#[derive(Default)]
struct Utf8Count {
    partial: Vec<u8>,
}

impl Utf8Count {
    /// The characters `bytes` complete.
    fn feed(&mut self, bytes: &[u8]) -> usize {
        self.partial.extend_from_slice(bytes);
        let mut n = 0;
        let mut at = 0;
        while at < self.partial.len() {
            match std::str::from_utf8(&self.partial[at..]) {
                Ok(s) => {
                    n += s.chars().count();
                    at = self.partial.len();
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    n += std::str::from_utf8(&self.partial[at..at + good])
                        .map_or(0, |s| s.chars().count());
                    match e.error_len() {
                        Some(bad) => {
                            n += 1;
                            at += good + bad;
                        }
                        None => {
                            at += good;
                            break;
                        }
                    }
                }
            }
        }
        self.partial.drain(..at);
        n
    }
}

/// The legacy `logprobs` of no token: empty lists (a chunk without tokens
/// when logprobs were asked, as vLLM sends it).
fn no_logprobs() -> Value {
    json!({"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []})
}

/// OpenAI's legacy `logprobs` of a text completion from Ollama's list for
/// the generated tokens: `tokens`, `token_logprobs`, `top_logprobs` (per
/// place a `{token: logprob}` object: the generated token first, then
/// Ollama's likeliest, the highest logprob kept for a token listed twice;
/// at most `top` of Ollama's; so `logprobs: 0` gives the generated token
/// alone, as vLLM does, and
/// `top_logprobs[i][tokens[i]]` is always there) and `text_offset`.
///
/// Offsets are in Unicode code points (the characters of the decoded text,
/// Python's `len`, as vLLM counts) from the start of the generated text:
/// vLLM's convention without `echo` (OpenAI counts from the start of the
/// prompt instead). The first token starts at `base` (in a stream, the
/// length of the text already sent); each token's offset is `base` plus the
/// characters its chunk's tokens before it decode to, from their raw bytes
/// ([`Utf8Count`], carried across chunks by the caller).
fn legacy_logprobs(list: &[OllamaLogprob], top: u64, base: usize, count: &mut Utf8Count) -> Value {
    let mut tokens = Vec::with_capacity(list.len());
    let mut token_logprobs = Vec::with_capacity(list.len());
    let mut text_offset = Vec::with_capacity(list.len());
    let mut tops = Vec::with_capacity(list.len());
    let mut at = base;
    for l in list {
        tokens.push(json!(l.token));
        token_logprobs.push(json!(l.logprob));
        text_offset.push(json!(at));
        at += count.feed(&token_bytes(l));
        let mut alts = Map::new();
        alts.insert(l.token.clone(), json!(l.logprob));
        let most = usize::try_from(top).unwrap_or(usize::MAX).saturating_add(1);
        for t in &l.top_logprobs {
            let seen = alts.get(&t.token).and_then(Value::as_f64);
            if seen.map_or(alts.len() < most, |s| s < t.logprob) {
                alts.insert(t.token.clone(), json!(t.logprob));
            }
        }
        tops.push(Value::Object(alts));
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": text_offset,
    })
}

/// The trailing tokens of `list` whose bytes spell `text` exactly: a
/// thinking model's `logprobs` list its reasoning's tokens too, before the
/// answer's. `None` when they do not line up (a token across the end of
/// the reasoning and the start of the answer, an answer Ollama changed).
fn answer_tokens<'a>(list: &'a [OllamaLogprob], text: &str) -> Option<&'a [OllamaLogprob]> {
    let mut rest = text.as_bytes();
    let mut start = list.len();
    while !rest.is_empty() {
        start = start.checked_sub(1)?;
        rest = rest.strip_suffix(token_bytes(&list[start]).as_slice())?;
    }
    Some(&list[start..])
}

/// The refusal of logprobs that cannot be told apart from a thinking
/// model's reasoning: never logprobs that do not spell the text. A refusal
/// (`Unsupported`), not a fault of the provider: no breaker counts it, an
/// alias fails over.
fn unaligned() -> Failure {
    Failure::unsupported(
        "ollama's logprobs do not line up with the answer apart from the model's thinking",
        "logprobs",
        "unsupported_value",
    )
}

/// The refusal of an answer with text and no `logprobs` field when they
/// were asked: an Ollama before 0.12.11 ignores the request.
fn no_logprobs_given() -> Failure {
    Failure::unsupported(
        "ollama gave no logprobs (they need Ollama 0.12.11 or later)",
        "logprobs",
        "unsupported_parameter",
    )
}

/// The `text_completion` answer for a non-streamed `/api/generate` one (its
/// `logprobs` when the request asked: of the answer's tokens only, not the
/// thinking's).
pub(super) fn answer(model: &str, req: &CompletionRequest, r: Generated) -> Result<Reply, Failure> {
    if let Some(e) = r.error {
        return Err(Failure::new(FailureKind::ServerError, e));
    }
    if let Some(f) = only_loaded(&r) {
        return Err(f);
    }
    let lp = match (logprobs(req)?, &r.logprobs) {
        (None, _) => None,
        (Some(_), None) if !r.response.is_empty() => return Err(no_logprobs_given()),
        (Some(_), None) => Some(no_logprobs()),
        (Some(n), Some(list)) => {
            let list = if r.thinking.is_empty() {
                list.as_slice()
            } else {
                answer_tokens(list, &r.response).ok_or_else(unaligned)?
            };
            Some(legacy_logprobs(list, n, 0, &mut Utf8Count::default()))
        }
    };
    TextCompletion::new(model).answer_with(&r.response, r.finish_reason(), r.usage(), lp.as_ref())
}

/// A streamed `/api/generate` translated line by line: an empty text
/// chunk for the first line (a thinking model's first lines carry no
/// `response`, and the router's first-byte bound waits for a chunk), a chunk
/// per line with text, a last one with the `finish_reason`, then the usage
/// chunk when the client asked for it.
///
/// When logprobs were asked every chunk of a choice carries them (empty
/// lists on one without tokens, as vLLM sends them): a text chunk its
/// tokens', offsets starting at the length of the text sent before it. A
/// line with thinking gives only the tokens that spell its `response`
/// ([`answer_tokens`]); the tokens of a line with neither text nor thinking
/// (text Ollama holds back) go with the next line's text. An Ollama that
/// ignores the request (before 0.12.11: a first text line and no line yet
/// with a `logprobs` field) is refused before any text goes out.
pub(super) struct GenerateStream {
    completion: TextCompletion,
    include_usage: bool,
    /// The legacy `logprobs` asked for ([`logprobs`]).
    logprobs: Option<u64>,
    /// Whether any line so far had a `logprobs` field.
    seen_logprobs: bool,
    /// The characters of the text sent so far.
    sent: usize,
    /// The bytes of a character not yet complete ([`Utf8Count`]).
    count: Utf8Count,
    /// Tokens of lines without text or thinking, for the next text.
    held: Vec<OllamaLogprob>,
    started: bool,
    queue: Queue,
}

impl GenerateStream {
    /// The stream of `req` (checked by [`body`] already).
    pub(super) fn new(completion: TextCompletion, req: &CompletionRequest) -> Self {
        GenerateStream {
            completion,
            include_usage: req.include_usage(),
            logprobs: logprobs(req).ok().flatten(),
            seen_logprobs: false,
            sent: 0,
            count: Utf8Count::default(),
            held: Vec::new(),
            started: false,
            queue: Queue::default(),
        }
    }

    /// A chunk of `text` (maybe empty) ending for `finish_reason`, with
    /// empty logprobs when asked.
    fn plain_chunk(&self, text: &str, finish_reason: Option<&str>) -> Result<StreamChunk, Failure> {
        let lp = self.logprobs.map(|_| no_logprobs());
        self.completion.chunk_with(text, finish_reason, lp.as_ref())
    }

    /// The chunk of line `r`'s text, with the logprobs of its tokens when
    /// asked.
    fn text_chunk(&mut self, r: &mut Generated) -> Result<StreamChunk, Failure> {
        let lp = match (self.logprobs, r.logprobs.take()) {
            (None, _) => None,
            (Some(_), None) if !self.seen_logprobs && self.sent == 0 => {
                return Err(no_logprobs_given());
            }
            (Some(n), list) => {
                let mut list = list.unwrap_or_default();
                if !r.thinking.is_empty() {
                    let keep = answer_tokens(&list, &r.response)
                        .ok_or_else(unaligned)?
                        .len();
                    list.drain(..list.len() - keep);
                } else if !self.held.is_empty() {
                    list.splice(0..0, std::mem::take(&mut self.held));
                }
                Some(legacy_logprobs(&list, n, self.sent, &mut self.count))
            }
        };
        self.held.clear();
        self.sent += r.response.chars().count();
        self.completion.chunk_with(&r.response, None, lp.as_ref())
    }
}

impl Ndjson for GenerateStream {
    fn line(&mut self, line: &[u8]) {
        let Some(mut r) = self.queue.parse::<Generated>(line) else {
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
        self.seen_logprobs |= r.logprobs.is_some();
        if !std::mem::replace(&mut self.started, true) && r.response.is_empty() && !r.done {
            let first = self.plain_chunk("", None);
            self.queue.pending.push_back(first);
        }
        if !r.response.is_empty() {
            match self.text_chunk(&mut r) {
                Ok(chunk) => self.queue.pending.push_back(Ok(chunk)),
                Err(f) => {
                    self.queue.fail(f);
                    return;
                }
            }
        } else if let Some(list) = r.logprobs.take() {
            if r.thinking.is_empty() {
                self.held.extend(list);
            } else {
                self.held.clear();
            }
        }
        if r.done {
            let last = self.plain_chunk("", Some(r.finish_reason()));
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
        let req = completion_request(json!({"stream_options": {"include_usage": include_usage}}));
        collect_for(lines, &req)
    }

    fn collect_for(lines: &[&'static str], req: &CompletionRequest) -> Vec<Result<Value, Failure>> {
        let completion = TextCompletion {
            id: "cmpl-x".into(),
            created: 1,
            model: "llama".into(),
        };
        let st = GenerateStream::new(completion, req);
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
    /// dropped (one prompt of two answered, no echo, no logprobs beyond 20).
    #[test]
    fn what_generate_cannot_do_is_refused() {
        for (extra, param) in [
            (json!({"prompt": ["a", "b"]}), "prompt"),
            (json!({"prompt": [1, 2, 3]}), "prompt"),
            (json!({"echo": true}), "echo"),
            // Ollama cannot score the prompt: no echo, logprobs or not.
            (json!({"echo": true, "logprobs": 1}), "echo"),
            (json!({"echo": true, "logprobs": 0}), "echo"),
            (json!({"logprobs": 21}), "logprobs"),
            (json!({"logprobs": -1}), "logprobs"),
            (json!({"logprobs": 1.5}), "logprobs"),
            (json!({"logprobs": "2"}), "logprobs"),
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
            json!({"logprobs": 0}),
            json!({"logprobs": 5}),
            json!({"logprobs": 20}),
            json!({"logprobs": true}),
            json!({"logprobs": 2.0}),
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
        let reply = answer("llama", &completion_request(json!({})), r).unwrap();
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
            let v: Value = serde_json::from_slice(
                &answer("llama", &completion_request(json!({})), r)
                    .unwrap()
                    .body,
            )
            .unwrap();
            assert_eq!(v["choices"][0]["finish_reason"], "stop", "{reason}");
        }
        // An empty prompt's answer (refused before, but never stored).
        let r: Generated =
            serde_json::from_value(json!({"response": "", "done": true, "done_reason": "load"}))
                .unwrap();
        assert!(
            answer("llama", &completion_request(json!({})), r).is_err(),
            "only loaded: no completion"
        );
        let r: Generated = serde_json::from_value(json!({"error": "model crashed"})).unwrap();
        let f = answer("llama", &completion_request(json!({})), r).unwrap_err();
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

    /// `logprobs: N` is Ollama's `logprobs: true, top_logprobs: N`; off, neither
    /// is sent.
    #[test]
    fn logprobs_are_asked_of_ollama() {
        for (n, top) in [
            (json!(3), 3),
            (json!(0), 0),
            (json!(20), 20),
            (json!(true), 1),
            (json!(2.0), 2),
        ] {
            let b = body("llama", &completion_request(json!({"logprobs": n})), true).unwrap();
            assert_eq!(
                (&b["logprobs"], &b["top_logprobs"]),
                (&json!(true), &json!(top)),
                "{b}"
            );
        }
        for off in [
            json!({}),
            json!({"logprobs": null}),
            json!({"logprobs": false}),
        ] {
            let b = body("llama", &completion_request(off.clone()), false).unwrap();
            assert!(
                b.get("logprobs").is_none() && b.get("top_logprobs").is_none(),
                "{off}: {b}"
            );
        }
        for bad in [json!(21), json!(21.0), json!(2.5), json!(-1.0)] {
            let f = refusal(&completion_request(json!({"logprobs": bad}))).unwrap_err();
            assert!(f.message.contains("logprobs"), "{}", f.message);
        }
    }

    /// Ollama's logprobs of "Café 👍!" in four tokens: "Caf" (its
    /// alternatives listing "Caf" twice), "é", " 👍", "!".
    const CAFE: &str = r#"[
        {"token": "Caf", "logprob": -0.1, "bytes": [67, 97, 102], "top_logprobs": [
            {"token": "Caf", "logprob": -3.0}, {"token": "Caf", "logprob": -0.1},
            {"token": "Ca", "logprob": -2.5}]},
        {"token": "é", "logprob": -0.25, "top_logprobs": [
            {"token": "é", "logprob": -0.25}, {"token": "e", "logprob": -1.5}, {"token": "e", "logprob": -4.0}]},
        {"token": " 👍", "logprob": -0.5, "top_logprobs": [{"token": " 👍", "logprob": -0.5}]},
        {"token": "!", "logprob": -1.0, "top_logprobs": [{"token": "!", "logprob": -1.0}]}
    ]"#;

    fn cafe_answer(asked: Value) -> Value {
        let lp: Value = serde_json::from_str(CAFE).unwrap();
        let r: Generated = serde_json::from_value(json!({
            "response": "Café 👍!", "done": true, "done_reason": "stop", "logprobs": lp,
            "prompt_eval_count": 3, "eval_count": 4
        }))
        .unwrap();
        let reply = answer("llama", &completion_request(asked), r).unwrap();
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["choices"][0]["text"], "Café 👍!", "{v}");
        v["choices"][0]["logprobs"].clone()
    }

    /// The legacy shape: offsets in code points from the start of the text
    /// ("é" one, "👍" one: not bytes, not UTF-16), a token listed twice among
    /// the alternatives keeps its highest logprob.
    #[test]
    fn an_answer_gives_legacy_logprobs() {
        let lp = cafe_answer(json!({"logprobs": 2}));
        assert_eq!(
            lp,
            json!({
                "tokens": ["Caf", "é", " 👍", "!"],
                "token_logprobs": [-0.1, -0.25, -0.5, -1.0],
                "top_logprobs": [
                    {"Caf": -0.1, "Ca": -2.5},
                    {"é": -0.25, "e": -1.5},
                    {" 👍": -0.5},
                    {"!": -1.0}
                ],
                "text_offset": [0, 3, 4, 6]
            })
        );
        // The generated token first in its place's object, whatever order
        // Ollama lists the alternatives in.
        let keys: Vec<&String> = lp["top_logprobs"][1].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["é", "e"]);
        // `logprobs: 0`: the generated tokens' own alone (vLLM's shape).
        let zero = cafe_answer(json!({"logprobs": 0}));
        assert_eq!(
            zero["top_logprobs"],
            json!([{"Caf": -0.1}, {"é": -0.25}, {" 👍": -0.5}, {"!": -1.0}]),
            "{zero}"
        );
        assert_eq!(zero["tokens"], lp["tokens"]);
        assert_eq!(zero["text_offset"], json!([0, 3, 4, 6]));
        // Not asked: none, whatever Ollama sends.
        assert_eq!(cafe_answer(json!({})), Value::Null);
        // Asked of an Ollama too old to give them (no field at all): a
        // refusal naming logprobs (an alias fails over), never an answer
        // without them.
        let r: Generated = serde_json::from_value(json!({"response": "x", "done": true})).unwrap();
        let f = answer("llama", &completion_request(json!({"logprobs": 1})), r).unwrap_err();
        assert_eq!(f.kind, FailureKind::Unsupported);
        assert_eq!(f.upstream.unwrap().param.as_deref(), Some("logprobs"));
        // An empty answer without tokens: empty lists.
        let r: Generated = serde_json::from_value(json!({"response": "", "done": true})).unwrap();
        let reply = answer("llama", &completion_request(json!({"logprobs": 1})), r).unwrap();
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["choices"][0]["logprobs"], no_logprobs(), "{v}");
    }

    /// Each text chunk carries its tokens' logprobs, offsets going on from
    /// the chunk before; joined list by list (as the cache joins them) they
    /// are the answer's.
    #[test]
    fn a_stream_gives_legacy_logprobs_per_chunk() {
        let lines = [
            r#"{"response":"","thinking":"Hmm","done":false,"logprobs":[{"token":"Hmm","logprob":-0.9}]}"#,
            r#"{"response":"Café","done":false,"logprobs":[
                {"token":"Caf","logprob":-0.1,"top_logprobs":[{"token":"Caf","logprob":-3.0},{"token":"Caf","logprob":-0.1},{"token":"Ca","logprob":-2.5}]},
                {"token":"é","logprob":-0.25,"top_logprobs":[{"token":"é","logprob":-0.25},{"token":"e","logprob":-1.5},{"token":"e","logprob":-4.0}]}]}"#,
            r#"{"response":" 👍","done":false,"logprobs":[{"token":" 👍","logprob":-0.5,"top_logprobs":[{"token":" 👍","logprob":-0.5}]}]}"#,
            r#"{"response":"!","done":false,"logprobs":[{"token":"!","logprob":-1.0,"top_logprobs":[{"token":"!","logprob":-1.0}]}]}"#,
            r#"{"response":"","done":true,"done_reason":"stop","logprobs":[]}"#,
        ];
        let chunks = |asked: Value| -> Vec<Value> {
            collect_for(&lines, &completion_request(asked))
                .into_iter()
                .map(Result::unwrap)
                .collect()
        };
        let v = chunks(json!({"logprobs": 2, "stream": true}));
        let texts: Vec<&str> = v
            .iter()
            .map(|c| c["choices"][0]["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["", "Café", " 👍", "!", ""], "{v:?}");
        // No text, no tokens: empty lists (the thinking line's are not the
        // text's).
        assert_eq!(v[0]["choices"][0]["logprobs"], no_logprobs());
        assert_eq!(
            v[1]["choices"][0]["logprobs"],
            json!({"tokens": ["Caf", "é"], "token_logprobs": [-0.1, -0.25],
                   "top_logprobs": [{"Caf": -0.1, "Ca": -2.5}, {"é": -0.25, "e": -1.5}],
                   "text_offset": [0, 3]})
        );
        assert_eq!(
            v[2]["choices"][0]["logprobs"],
            json!({"tokens": [" 👍"], "token_logprobs": [-0.5],
                   "top_logprobs": [{" 👍": -0.5}], "text_offset": [4]})
        );
        assert_eq!(v[3]["choices"][0]["logprobs"]["text_offset"], json!([6]));
        assert_eq!(v[4]["choices"][0]["logprobs"], no_logprobs());
        assert_eq!(v[4]["choices"][0]["finish_reason"], "stop");
        let mut joined = serde_json::Map::new();
        for c in &v {
            if let Value::Object(lp) = &c["choices"][0]["logprobs"] {
                for (k, items) in lp {
                    let into = joined.entry(k.clone()).or_insert_with(|| json!([]));
                    into.as_array_mut()
                        .unwrap()
                        .extend(items.as_array().unwrap().iter().cloned());
                }
            }
        }
        assert_eq!(Value::Object(joined), cafe_answer(json!({"logprobs": 2})));
        // `logprobs: 0`: the generated token alone in each place.
        let v = chunks(json!({"logprobs": 0}));
        assert_eq!(
            v[1]["choices"][0]["logprobs"]["top_logprobs"],
            json!([{"Caf": -0.1}, {"é": -0.25}])
        );
        assert_eq!(v[2]["choices"][0]["logprobs"]["text_offset"], json!([4]));
        // Not asked: none.
        let v = chunks(json!({}));
        assert!(
            v.iter().all(|c| c["choices"][0]["logprobs"].is_null()),
            "{v:?}"
        );
    }

    fn stream_of(lines: &[&'static str], asked: Value) -> Vec<Result<Value, Failure>> {
        collect_for(lines, &completion_request(asked))
    }

    fn lp_of(c: &Result<Value, Failure>) -> Value {
        c.as_ref().unwrap()["choices"][0]["logprobs"].clone()
    }

    /// A thinking model's `logprobs` list the reasoning's tokens too: only
    /// the trailing ones that spell `response` are the answer's, the same
    /// whole and streamed; when they do not line up, a refusal.
    #[test]
    fn thinking_tokens_are_not_the_answers() {
        let r: Generated = serde_json::from_value(json!({
            "response": "Hi!", "thinking": "Say hi", "done": true, "done_reason": "stop",
            "logprobs": [
                {"token": "Say", "logprob": -0.3}, {"token": " hi", "logprob": -0.4},
                {"token": "</think>", "logprob": -0.01}, {"token": "\n\n", "logprob": -0.02},
                {"token": "Hi", "logprob": -0.5}, {"token": "!", "logprob": -0.6}]
        }))
        .unwrap();
        let reply = answer("llama", &completion_request(json!({"logprobs": 0})), r).unwrap();
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        let whole = v["choices"][0]["logprobs"].clone();
        assert_eq!(
            whole,
            json!({"tokens": ["Hi", "!"], "token_logprobs": [-0.5, -0.6],
                   "top_logprobs": [{"Hi": -0.5}, {"!": -0.6}], "text_offset": [0, 2]})
        );
        let bad: Generated = serde_json::from_value(json!({
            "response": "Hi!", "thinking": "x", "done": true,
            "logprobs": [{"token": "x", "logprob": -0.3}, {"token": "Hi!?", "logprob": -0.5}]
        }))
        .unwrap();
        let f = answer("llama", &completion_request(json!({"logprobs": 0})), bad).unwrap_err();
        assert_eq!(f.kind, FailureKind::Unsupported);
        assert!(!f.kind.counts_against_provider());
        // Streamed: thinking lines' tokens dropped, a line with both gives
        // only the answer's.
        let out = stream_of(
            &[
                r#"{"response":"","thinking":"Say","done":false,"logprobs":[{"token":"Say","logprob":-0.3}]}"#,
                r#"{"response":"Hi","thinking":" hi","done":false,"logprobs":[{"token":" hi","logprob":-0.4},{"token":"</think>","logprob":-0.01},{"token":"Hi","logprob":-0.5}]}"#,
                r#"{"response":"!","done":false,"logprobs":[{"token":"!","logprob":-0.6}]}"#,
                r#"{"response":"","done":true,"done_reason":"stop"}"#,
            ],
            json!({"logprobs": 0}),
        );
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(lp_of(&out[0]), no_logprobs());
        assert_eq!(lp_of(&out[1])["tokens"], json!(["Hi"]));
        assert_eq!(lp_of(&out[2])["tokens"], json!(["!"]));
        assert_eq!(lp_of(&out[2])["text_offset"], json!([2]));
        assert_eq!(lp_of(&out[3]), no_logprobs());
    }

    /// Offsets count characters of the raw bytes: a character split over
    /// two tokens (Ollama's strings U+FFFD each) counts once; in a stream
    /// each chunk starts at the length of the text sent, a text line
    /// without tokens shifting nothing after it.
    #[test]
    fn offsets_follow_bytes_and_the_text_sent() {
        let split = r#"[{"token":"�","logprob":-0.1,"bytes":[240,159]},
            {"token":"�","logprob":-0.2,"bytes":[145,141]},
            {"token":"ok","logprob":-0.3}]"#;
        let lp: Value = serde_json::from_str(split).unwrap();
        let r: Generated =
            serde_json::from_value(json!({"response": "👍ok", "done": true, "logprobs": lp}))
                .unwrap();
        let reply = answer("llama", &completion_request(json!({"logprobs": 1})), r).unwrap();
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["choices"][0]["logprobs"]["text_offset"], json!([0, 0, 1]));
        // Streamed, the split token held on a line without text, and a text
        // line without logprobs before more text.
        let out = stream_of(
            &[
                r#"{"response":"a","done":false,"logprobs":[{"token":"a","logprob":-0.1}]}"#,
                r#"{"response":"","done":false,"logprobs":[{"token":"�","logprob":-0.1,"bytes":[240,159]}]}"#,
                r#"{"response":"👍","done":false,"logprobs":[{"token":"�","logprob":-0.2,"bytes":[145,141]}]}"#,
                r#"{"response":"bc","done":false}"#,
                r#"{"response":"d","done":false,"logprobs":[{"token":"d","logprob":-0.3}]}"#,
                r#"{"response":"","done":true,"done_reason":"stop"}"#,
            ],
            json!({"logprobs": 0}),
        );
        let v: Vec<Value> = out.iter().map(lp_of).collect();
        assert_eq!(v.len(), 5, "{v:?}");
        assert_eq!(v[0]["text_offset"], json!([0]));
        assert_eq!(v[1]["text_offset"], json!([1, 1]));
        assert_eq!(v[1]["tokens"], json!(["\u{fffd}", "\u{fffd}"]));
        assert_eq!(v[2], no_logprobs());
        assert_eq!(v[3]["text_offset"], json!([4]));
        assert_eq!(v[4], no_logprobs());
    }

    /// An Ollama that ignores logprobs (no field on the first text line,
    /// none on any line before) is refused before any text; a text line
    /// without the field after lines with it is not.
    #[test]
    fn an_ollama_without_logprobs_is_refused_in_a_stream() {
        let out = stream_of(
            &[
                r#"{"response":"a","done":false}"#,
                r#"{"response":"","done":true,"done_reason":"stop"}"#,
            ],
            json!({"logprobs": 1}),
        );
        assert_eq!(out.len(), 1, "{out:?}");
        let f = out[0].as_ref().unwrap_err();
        assert_eq!(f.kind, FailureKind::Unsupported);
        // Not asked: the text as it is.
        let out = stream_of(&[r#"{"response":"a","done":true}"#], json!({}));
        assert!(out.iter().all(Result::is_ok), "{out:?}");
        // A held-back token on a line without text, then its text on a line
        // without the field: fine.
        let out = stream_of(
            &[
                r#"{"response":"","done":false,"logprobs":[{"token":"a","logprob":-0.1}]}"#,
                r#"{"response":"a","done":false}"#,
                r#"{"response":"","done":true,"done_reason":"stop"}"#,
            ],
            json!({"logprobs": 1}),
        );
        let v: Vec<Value> = out.iter().map(lp_of).collect();
        assert_eq!(v[1]["tokens"], json!(["a"]), "{v:?}");
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
