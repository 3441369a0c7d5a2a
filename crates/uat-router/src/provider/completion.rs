//! OpenAI's legacy text completion (`object: "text_completion"`) as the
//! adapters that make answers themselves (Ollama, the mock) build it: the
//! answer, its streamed chunks and the usage chunk that ends a stream.

use super::{Reply, StreamChunk};
use crate::error::{Failure, FailureKind};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use uat_types::Usage;

/// What every object of one completion repeats: its id, its creation time
/// and the model that answers.
#[derive(Debug, Clone)]
pub(crate) struct TextCompletion {
    pub id: String,
    pub created: u64,
    pub model: String,
}

#[derive(Serialize)]
struct Object<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [TextChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    /// OpenAI's legacy `logprobs` object when asked for (an Ollama
    /// answer's, `ollama::generate`), else null.
    logprobs: Option<&'a Value>,
    finish_reason: Option<&'a str>,
}

impl TextCompletion {
    /// A completion of a fresh random id (`cmpl-…`), created now.
    pub fn new(model: &str) -> Self {
        TextCompletion {
            id: format!("cmpl-{:x}", rand::random::<u64>()),
            created: uat_types::unix_now(),
            model: model.to_owned(),
        }
    }

    fn encode(
        &self,
        choice: Option<TextChoice<'_>>,
        usage: Option<Usage>,
    ) -> Result<Vec<u8>, Failure> {
        let choices = choice.as_slice();
        let o = Object {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        serde_json::to_vec(&o)
            .map_err(|e| Failure::new(FailureKind::Malformed, format!("cannot encode: {e}")))
    }

    /// The whole answer: one choice of `text`, ended for `finish_reason`.
    pub fn answer(&self, text: &str, finish_reason: &str, usage: Usage) -> Result<Reply, Failure> {
        self.answer_with(text, finish_reason, usage, None)
    }

    /// [`Self::answer`] with the choice's legacy `logprobs` (null for `None`).
    pub fn answer_with(
        &self,
        text: &str,
        finish_reason: &str,
        usage: Usage,
        logprobs: Option<&Value>,
    ) -> Result<Reply, Failure> {
        let choice = TextChoice {
            text,
            index: 0,
            logprobs,
            finish_reason: Some(finish_reason),
        };
        Ok(Reply::chat(
            self.encode(Some(choice), Some(usage))?,
            Some(usage),
        ))
    }

    /// A streamed chunk of `text`; the last one carries its `finish_reason`.
    pub fn chunk(&self, text: &str, finish_reason: Option<&str>) -> Result<StreamChunk, Failure> {
        self.chunk_with(text, finish_reason, None)
    }

    /// [`Self::chunk`] with the choice's legacy `logprobs` (null for `None`).
    pub fn chunk_with(
        &self,
        text: &str,
        finish_reason: Option<&str>,
        logprobs: Option<&Value>,
    ) -> Result<StreamChunk, Failure> {
        let choice = TextChoice {
            text,
            index: 0,
            logprobs,
            finish_reason,
        };
        Ok(StreamChunk {
            json: Bytes::from(self.encode(Some(choice), None)?),
            usage: None,
        })
    }

    /// The usage chunk that ends a stream for `stream_options.include_usage`
    /// (`choices: []`), as OpenAI sends it.
    pub fn usage_chunk(&self, usage: Usage) -> Result<StreamChunk, Failure> {
        Ok(StreamChunk {
            json: Bytes::from(self.encode(None, Some(usage))?),
            usage: Some(usage),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn openai_shapes() {
        let c = TextCompletion {
            id: "cmpl-1".into(),
            created: 5,
            model: "m".into(),
        };
        let r = c.answer("hi", "length", Usage::new(2, 1)).unwrap();
        assert!(r.shape.choices);
        assert_eq!(r.usage, Some(Usage::new(2, 1)));
        assert_eq!(
            parse(&r.body),
            json!({"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m",
                   "choices": [{"text": "hi", "index": 0, "logprobs": null, "finish_reason": "length"}],
                   "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}})
        );
        let ch = c.chunk("a", None).unwrap();
        assert_eq!(ch.usage, None);
        assert_eq!(
            parse(&ch.json),
            json!({"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m",
                   "choices": [{"text": "a", "index": 0, "logprobs": null, "finish_reason": null}]})
        );
        let u = c.usage_chunk(Usage::new(2, 1)).unwrap();
        assert_eq!(u.usage, Some(Usage::new(2, 1)));
        let v = parse(&u.json);
        assert_eq!(v["choices"], json!([]));
        assert_eq!(v["usage"]["total_tokens"], 3);
        assert!(TextCompletion::new("m").id.starts_with("cmpl-"));
    }
}
