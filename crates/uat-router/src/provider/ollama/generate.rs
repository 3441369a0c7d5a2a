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
    /// Whether the piece has a thinking model's reasoning (thinking is on by
    /// default on `/api/generate`): not the answer, but its tokens are in
    /// `logprobs`. Only whether it is empty is read: the reasoning is never
    /// kept ([`non_empty`]).
    #[serde(default, deserialize_with = "non_empty")]
    thinking: bool,
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

/// Whether a string is non-empty (`null` is empty), read where it lies:
/// nothing is allocated for the string.
fn non_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct NonEmpty;
    impl serde::de::Visitor<'_> for NonEmpty {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E>(self, s: &str) -> Result<bool, E> {
            Ok(!s.is_empty())
        }
        fn visit_unit<E>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_none<E>(self) -> Result<bool, E> {
            Ok(false)
        }
    }
    d.deserialize_any(NonEmpty)
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
/// ([`Utf8Count`], carried across chunks by the caller), the first token's
/// `lead` bytes (whitespace the text lacks, [`Answer`]) left out.
fn legacy_logprobs(
    list: &[OllamaLogprob],
    lead: usize,
    top: u64,
    base: usize,
    count: &mut Utf8Count,
) -> Value {
    let mut tokens = Vec::with_capacity(list.len());
    let mut token_logprobs = Vec::with_capacity(list.len());
    let mut text_offset = Vec::with_capacity(list.len());
    let mut tops = Vec::with_capacity(list.len());
    let mut at = base;
    for (i, l) in list.iter().enumerate() {
        tokens.push(json!(l.token));
        token_logprobs.push(json!(l.logprob));
        text_offset.push(json!(at));
        let bytes = token_bytes(l);
        let skip = if i == 0 { lead.min(bytes.len()) } else { 0 };
        at += count.feed(&bytes[skip..]);
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

/// The tokens of an answer in a `logprobs` list ([`answer_tokens`]).
struct Answer<'a> {
    tokens: &'a [OllamaLogprob],
    /// The bytes the first token has before the text (whitespace), not
    /// counted in the offsets.
    lead: usize,
}

/// Whether `b` is the start of a UTF-8 character cut short.
fn cut_character(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_err_and(|e| e.valid_up_to() == 0 && e.error_len().is_none())
}

/// The trailing tokens of `list` whose bytes spell `text`: a thinking
/// model's `logprobs` list its reasoning's tokens too (and its tags, even
/// an empty think block's, reported as no thinking), before the answer's.
/// As Ollama gives them, the tokens may go past the end of the text: a stop
/// sequence cut off inside the last token (the whole token kept, Ollama's
/// "partial token stop"), or a character cut short at the end (1 to 3
/// bytes, maybe over several tokens); and the first may carry whitespace
/// the text lacks (Ollama trims it after `</think>`). `None` when they do
/// not line up (a token across the end of the reasoning and the start of
/// the answer, an answer Ollama changed otherwise).
fn answer_tokens<'a>(list: &'a [OllamaLogprob], text: &str) -> Option<Answer<'a>> {
    let text = text.as_bytes();
    if text.is_empty() {
        return Some(Answer {
            tokens: &list[list.len()..],
            lead: 0,
        });
    }
    let mut starts = Vec::with_capacity(list.len());
    let mut all = Vec::new();
    for l in list {
        starts.push(all.len());
        all.extend_from_slice(&token_bytes(l));
    }
    let last = *starts.last()?;
    // Where the text may end, likeliest first: at the end of the tokens,
    // inside the last token (a stop cut off), before a character cut short.
    let cut = (1..=3).filter_map(|n| {
        let end = all.len().checked_sub(n)?;
        (end <= last && cut_character(&all[end..])).then_some(end)
    });
    let ends = std::iter::once(all.len())
        .chain((last + 1..all.len()).rev())
        .chain(cut);
    for end in ends {
        let Some(at) = end.checked_sub(text.len()) else {
            continue;
        };
        if all[at..end] != *text {
            continue;
        }
        let first = starts.partition_point(|&s| s <= at) - 1;
        let lead = at - starts[first];
        if lead == 0
            || std::str::from_utf8(&all[starts[first]..at])
                .is_ok_and(|w| w.chars().all(char::is_whitespace))
        {
            return Some(Answer {
                tokens: &list[first..],
                lead,
            });
        }
    }
    None
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
        // Text or reasoning without the field: an Ollama before 0.12.11 (as
        // the stream refuses it).
        (Some(_), None) if !r.response.is_empty() || r.thinking => {
            return Err(no_logprobs_given());
        }
        (Some(_), None) => Some(no_logprobs()),
        (Some(n), Some(list)) => {
            let (list, lead) = match answer_tokens(list, &r.response) {
                Some(a) => (a.tokens, a.lead),
                // No thinking reported: the tokens are the answer's, even
                // where they do not spell it exactly.
                None if !r.thinking => (list.as_slice(), 0),
                None => return Err(unaligned()),
            };
            Some(legacy_logprobs(list, lead, n, 0, &mut Utf8Count::default()))
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
/// tokens', offsets starting at the length of the text sent before it.
/// Ollama sends a token a line; the tokens of a line with neither text nor
/// thinking go with the next line's text (a character cut over two tokens,
/// text Ollama holds back), those of a thinking line are dropped. On the
/// first text line, and on a line with both thinking and text, the tokens
/// held and the line's are lined up with the line's text
/// ([`answer_tokens`]): the lines with neither are also the end of a
/// thinking model's reasoning (`\n`, `</think>`, `\n\n`, its thinking and
/// text empty; an empty think block's tags, with no thinking reported at
/// all), not the answer's.
///
/// A stream is the client's from its first chunk (the empty one of the
/// first line), so nothing is refused once it is out: an Ollama that
/// ignores the request (before 0.12.11: a first line with thinking or text
/// and no line yet with a `logprobs` field) is refused on that line, before
/// the first chunk (an alias fails over); tokens that do not line up are
/// not a refusal (see [`GenerateStream::text_chunk`]).
pub(super) struct GenerateStream {
    completion: TextCompletion,
    include_usage: bool,
    /// The legacy `logprobs` asked for ([`logprobs`]).
    logprobs: Option<u64>,
    /// Whether any line so far had a `logprobs` field.
    seen_logprobs: bool,
    /// Whether any line so far had thinking.
    thought: bool,
    /// The characters of the text sent so far (counted only when logprobs
    /// were asked).
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
            thought: false,
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
        let Some(n) = self.logprobs else {
            return self.completion.chunk_with(&r.response, None, None);
        };
        let own = r.logprobs.take().unwrap_or_default();
        let held = self.held.len();
        let mut list = std::mem::take(&mut self.held);
        list.extend(own);
        let lp = if r.thinking || self.sent == 0 {
            match answer_tokens(&list, &r.response) {
                Some(a) => legacy_logprobs(a.tokens, a.lead, n, self.sent, &mut self.count),
                // Not lined up, the stream already the client's: no
                // refusal, and never tokens that are plainly not the
                // text's. None when the line has thinking; the line's own
                // when thinking came before (those held are the likelier
                // reasoning's end); all of them when no thinking was
                // reported (as a whole answer's).
                None if r.thinking => no_logprobs(),
                None if self.thought => {
                    legacy_logprobs(&list[held..], 0, n, self.sent, &mut self.count)
                }
                None => legacy_logprobs(&list, 0, n, self.sent, &mut self.count),
            }
        } else {
            legacy_logprobs(&list, 0, n, self.sent, &mut self.count)
        };
        self.sent += r.response.chars().count();
        self.completion.chunk_with(&r.response, None, Some(&lp))
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
        if self.logprobs.is_some() {
            self.seen_logprobs |= r.logprobs.is_some();
            let carries = r.thinking || !r.response.is_empty();
            if !self.seen_logprobs && carries {
                self.queue.fail(no_logprobs_given());
                return;
            }
            if !self.seen_logprobs && !self.started && !r.done {
                // Nothing to give and not yet known to be an Ollama that
                // gives logprobs: the first chunk waits for a line that
                // tells.
                return;
            }
            self.thought |= r.thinking;
        }
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
        } else if self.logprobs.is_some()
            && let Some(list) = r.logprobs.take()
        {
            if r.thinking {
                self.held.clear();
            } else {
                self.held.extend(list);
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

    /// [`collect`]'s chunks, every one of them a success.
    fn chunks(lines: &[&'static str], include_usage: bool) -> Vec<Value> {
        collect(lines, include_usage)
            .into_iter()
            .map(Result::unwrap)
            .collect()
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
        let v = chunks(&lines, true);
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
        let v = chunks(
            &[
                r#"{"response":"x","done":false}"#,
                r#"{"response":"","done":true,"done_reason":"stop"}"#,
            ],
            false,
        );
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
        let v = chunks(
            &[
                r#"{"response":"","thinking":"Hmm","done":false}"#,
                r#"{"response":"","thinking":" ok","done":false}"#,
                r#"{"response":"x","done":false}"#,
                r#"{"response":"","done":true,"done_reason":"stop"}"#,
            ],
            false,
        );
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
        // Reasoning only (the limit hit while thinking) and no field: the
        // same refusal, as the stream gives it.
        let r: Generated = serde_json::from_value(
            json!({"response": "", "thinking": "Hmm", "done": true, "done_reason": "length"}),
        )
        .unwrap();
        let f = answer("llama", &completion_request(json!({"logprobs": 1})), r).unwrap_err();
        assert_eq!(f.kind, FailureKind::Unsupported);
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
            "logprobs": [{"token": "x", "logprob": -0.3}, {"token": "Ho!", "logprob": -0.5}]
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

    /// An Ollama that ignores logprobs (no field on the first line with
    /// thinking or text, none on any line before) is refused before the
    /// first chunk; a text line without the field after lines with it is
    /// not.
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
        // A thinking stream: refused on its first thinking line, before
        // the chunk that opens the stream (the client has nothing yet, an
        // alias fails over); a first line with neither thinking nor text
        // does not open it either.
        for first in [
            r#"{"response":"","thinking":"Hmm","done":false}"#,
            r#"{"response":"","done":false}"#,
        ] {
            let out = stream_of(
                &[
                    first,
                    r#"{"response":"","thinking":"Hmm","done":false}"#,
                    r#"{"response":"a","done":false}"#,
                    r#"{"response":"","done":true,"done_reason":"stop"}"#,
                ],
                json!({"logprobs": 1}),
            );
            assert_eq!(out.len(), 1, "{out:?}");
            let f = out[0].as_ref().unwrap_err();
            assert_eq!(f.kind, FailureKind::Unsupported);
        }
        // Refused on the thinking line itself, not held back until text
        // comes (a model may think for long): even when none comes.
        let out = stream_of(
            &[
                r#"{"response":"","thinking":"Hmm","done":false}"#,
                r#"{"response":"","done":true,"done_reason":"length"}"#,
            ],
            json!({"logprobs": 1}),
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].is_err(), "{out:?}");
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

    /// The answer's tokens as kept from a non-streamed answer.
    fn kept(answer_json: Value) -> Result<Value, Failure> {
        let r: Generated = serde_json::from_value(answer_json).unwrap();
        let reply = answer("llama", &completion_request(json!({"logprobs": 0})), r)?;
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        let lp = &v["choices"][0]["logprobs"];
        Ok(json!([lp["tokens"], lp["text_offset"]]))
    }

    fn tokens(list: &[&str]) -> Value {
        list.iter()
            .map(|t| json!({"token": t, "logprob": -0.1}))
            .collect()
    }

    /// Ollama's answer as its runner makes it: a stop cut off inside the
    /// last token keeps the whole token, a character cut short at the end
    /// keeps its tokens, the whitespace after `</think>` is trimmed off the
    /// text, not the token; an empty think block is reported as no thinking
    /// but its tags are tokens. Tokens that line up otherwise are refused
    /// only when thinking was reported.
    #[test]
    fn answer_tokens_line_up_as_ollama_cuts_the_text() {
        let think = tokens(&["Say", "</think>", "\n\n"]);
        let with = |response: &str, thinking: &str, answer: Value| {
            let mut list = think.as_array().unwrap().clone();
            list.extend(answer.as_array().unwrap().iter().cloned());
            kept(
                json!({"response": response, "thinking": thinking, "done": true,
                        "logprobs": list}),
            )
        };
        // A partial token stop: "Hello w", stop "or" cut inside " wor".
        assert_eq!(
            with("Hello w", "Say", tokens(&["Hello", " wor"])).unwrap(),
            json!([["Hello", " wor"], [0, 5]])
        );
        // A character cut short at the end, over one token and over two.
        let cut = json!([{"token": "ok", "logprob": -0.1},
                         {"token": "\u{fffd}", "logprob": -0.1, "bytes": [240, 159]}]);
        assert_eq!(
            with("ok", "Say", cut).unwrap(),
            json!([["ok", "\u{fffd}"], [0, 2]])
        );
        let cut2 = json!([{"token": "ok", "logprob": -0.1},
                          {"token": "\u{fffd}", "logprob": -0.1, "bytes": [240, 159]},
                          {"token": "\u{fffd}", "logprob": -0.1, "bytes": [145]}]);
        assert_eq!(
            with("ok", "Say", cut2).unwrap(),
            json!([["ok", "\u{fffd}", "\u{fffd}"], [0, 2, 2]])
        );
        // Whitespace trimmed after `</think>`: " Hi" for "Hi", the next
        // token at 2, not 3.
        assert_eq!(
            with("Hi!", "Say", tokens(&[" Hi", "!"])).unwrap(),
            json!([[" Hi", "!"], [0, 2]])
        );
        // Only whitespace may lead: "xHi" for "Hi" does not line up.
        let f = with("Hi", "Say", tokens(&["xHi"])).unwrap_err();
        assert_eq!(f.kind, FailureKind::Unsupported);
        // Qwen3's empty think block: `thinking` empty (or absent), its tags
        // still tokens, left out.
        let empty_block = tokens(&["<think>", "\n\n", "</think>", "\n\n", "Hi"]);
        for thinking in [json!(""), Value::Null] {
            assert_eq!(
                kept(json!({"response": "Hi", "thinking": thinking, "done": true,
                            "logprobs": empty_block}))
                .unwrap(),
                json!([["Hi"], [0]])
            );
        }
        // No thinking and not lined up: the tokens as Ollama gave them.
        assert_eq!(
            kept(json!({"response": "Hi", "done": true, "logprobs": tokens(&["H", "o"])})).unwrap(),
            json!([["H", "o"], [0, 1]])
        );
        // Thinking and not lined up: refused.
        let f = with("Hi", "Say", tokens(&["Ho"])).unwrap_err();
        assert_eq!(f.kind, FailureKind::Unsupported);
    }

    /// A thinking model's stream as Ollama sends it, a token a line: the
    /// lines of `\n`, `</think>` and `\n\n` have neither thinking nor text;
    /// their tokens are not the first text's. Tokens that do not line up
    /// are not a refusal in a stream (it is the client's already).
    #[test]
    fn a_thinking_streams_reasoning_end_is_not_the_answers() {
        let lines = |first: &'static str| {
            [
                r#"{"response":"","thinking":"Hmm","done":false,"logprobs":[{"token":"Hmm","logprob":-0.9}]}"#,
                r#"{"response":"","done":false,"logprobs":[{"token":"\n","logprob":-0.1}]}"#,
                r#"{"response":"","done":false,"logprobs":[{"token":"</think>","logprob":-0.1}]}"#,
                r#"{"response":"","done":false,"logprobs":[{"token":"\n\n","logprob":-0.1}]}"#,
                first,
                r#"{"response":"!","done":false,"logprobs":[{"token":"!","logprob":-0.6}]}"#,
                r#"{"response":"","done":true,"done_reason":"stop"}"#,
            ]
        };
        let texts_and_lps = |first: &'static str| -> (Vec<String>, Vec<Value>) {
            let out = stream_of(&lines(first), json!({"logprobs": 0}));
            let texts = out
                .iter()
                .map(|c| {
                    c.as_ref().unwrap()["choices"][0]["text"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect();
            (texts, out.iter().map(lp_of).collect())
        };
        let (texts, v) = texts_and_lps(
            r#"{"response":"Hi","done":false,"logprobs":[{"token":"Hi","logprob":-0.5}]}"#,
        );
        assert_eq!(texts, ["", "Hi", "!", ""], "{v:?}");
        assert_eq!(v[0], no_logprobs());
        assert_eq!(v[1]["tokens"], json!(["Hi"]), "{v:?}");
        assert_eq!(v[1]["text_offset"], json!([0]));
        assert_eq!(v[2]["tokens"], json!(["!"]));
        assert_eq!(v[2]["text_offset"], json!([2]));
        // The whitespace after `</think>` trimmed off the text.
        let (_, v) = texts_and_lps(
            r#"{"response":"Hi","done":false,"logprobs":[{"token":" Hi","logprob":-0.5}]}"#,
        );
        assert_eq!(v[1]["tokens"], json!([" Hi"]), "{v:?}");
        assert_eq!(v[2]["text_offset"], json!([2]));
        // Not lined up: the line's own tokens, none of those held, and no
        // refusal.
        let (texts, v) = texts_and_lps(
            r#"{"response":"Hi","done":false,"logprobs":[{"token":"Ho","logprob":-0.5}]}"#,
        );
        assert_eq!(texts, ["", "Hi", "!", ""], "{v:?}");
        assert_eq!(v[1]["tokens"], json!(["Ho"]), "{v:?}");
        assert_eq!(v[2]["text_offset"], json!([2]));
        // An empty think block (no thinking reported): its tags left out
        // too; tokens that do not line up then are all given, as a whole
        // answer's are.
        let empty_block = |first: &'static str| {
            let lines = [
                r#"{"response":"","done":false,"logprobs":[{"token":"<think>","logprob":-0.1}]}"#,
                r#"{"response":"","done":false,"logprobs":[{"token":"\n\n","logprob":-0.1}]}"#,
                r#"{"response":"","done":false,"logprobs":[{"token":"</think>","logprob":-0.1}]}"#,
                r#"{"response":"","done":false,"logprobs":[{"token":"\n\n","logprob":-0.1}]}"#,
                first,
                r#"{"response":"","done":true,"done_reason":"stop"}"#,
            ];
            let out = stream_of(&lines, json!({"logprobs": 0}));
            out.iter().map(lp_of).collect::<Vec<_>>()
        };
        let v = empty_block(
            r#"{"response":"Hi","done":false,"logprobs":[{"token":"Hi","logprob":-0.5}]}"#,
        );
        assert_eq!(v[1]["tokens"], json!(["Hi"]), "{v:?}");
        let v = empty_block(
            r#"{"response":"Hi","done":false,"logprobs":[{"token":"Ho","logprob":-0.5}]}"#,
        );
        assert_eq!(
            v[1]["tokens"],
            json!(["<think>", "\n\n", "</think>", "\n\n", "Ho"]),
            "{v:?}"
        );
        // A line with thinking and text that do not line up: no tokens, no
        // refusal.
        let (texts, v) = texts_and_lps(
            r#"{"response":"Hi","thinking":"m","done":false,"logprobs":[{"token":"Ho","logprob":-0.5}]}"#,
        );
        assert_eq!(texts, ["", "Hi", "!", ""], "{v:?}");
        assert_eq!(v[1], no_logprobs(), "{v:?}");
        assert_eq!(v[2]["text_offset"], json!([2]));
    }

    /// `thinking` is read for whether it is empty only, however written.
    #[test]
    fn thinking_is_read_as_present_or_not() {
        for (line, thinking) in [
            (r#"{"response":""}"#, false),
            (r#"{"thinking":null}"#, false),
            (r#"{"thinking":""}"#, false),
            (r#"{"thinking":"x"}"#, true),
            (r#"{"thinking":"\n\u00e9"}"#, true),
        ] {
            let r: Generated = serde_json::from_str(line).unwrap();
            assert_eq!(r.thinking, thinking, "{line}");
        }
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
