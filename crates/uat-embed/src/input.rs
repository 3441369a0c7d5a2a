//! Input handling for `POST /v1/embeddings`: parsing and validating `input`,
//! tokenizing with sentence-transformers truncation, `dimensions`, and the base64
//! output encoding.

use crate::backend::{EmbeddingBackend, ModelInfo};
use crate::error::{EmbedError, Result};
use base64::Engine as _;
use serde_json::Value;
use uat_config::TokenIds;

/// Most inputs one request may carry (the OpenAI limit). Defined in the config
/// crate, which requires `embeddings.queue_capacity` to hold this many.
pub const MAX_INPUTS: usize = uat_config::EmbeddingsConfig::MAX_REQUEST_INPUTS;

/// The `input` of an embeddings request.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbeddingInput {
    /// One or more texts (`"text"` or `["a", "b"]`).
    Texts(Vec<String>),
    /// One or more token-id sequences (`[1, 2, 3]` or `[[1, 2], [3]]`). Read as
    /// the model's `token_ids` setting says ([`EmbeddingInput::resolve_token_ids`]);
    /// here they are the exact ids the model sees: special tokens are not added.
    TokenIds(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    /// Parses the JSON `input` field: a string, an array of strings, an array of
    /// token ids, or an array of token-id arrays.
    ///
    /// Errors: [`EmbedError::EmptyInput`] for `[]`, [`EmbedError::TooManyInputs`]
    /// past [`MAX_INPUTS`], [`EmbedError::InvalidInputItem`] for an item of the wrong
    /// kind (the first item fixes the kind), [`EmbedError::InvalidInput`] otherwise.
    pub fn from_json(v: &Value) -> Result<EmbeddingInput> {
        let items = match v {
            Value::String(s) if s.is_empty() => return Err(EmbedError::EmptyInput),
            Value::String(s) => return Ok(EmbeddingInput::Texts(vec![s.clone()])),
            Value::Array(items) => items,
            _ => return Err(EmbedError::InvalidInput),
        };
        let first = items.first().ok_or(EmbedError::EmptyInput)?;
        let input = match first {
            Value::String(_) => {
                check_count(items.len())?;
                let texts = items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| match item {
                        Value::String(s) if s.is_empty() => Err(EmbedError::InvalidInputItem {
                            index,
                            expected: "a non-empty string",
                        }),
                        Value::String(s) => Ok(s.clone()),
                        _ => Err(EmbedError::InvalidInputItem {
                            index,
                            expected: "a string",
                        }),
                    })
                    .collect::<Result<Vec<_>>>()?;
                EmbeddingInput::Texts(texts)
            }
            // One sequence of token ids.
            Value::Number(_) => EmbeddingInput::TokenIds(vec![token_ids(items, None)?]),
            Value::Array(_) => {
                check_count(items.len())?;
                let seqs = items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| match item {
                        Value::Array(ids) if !ids.is_empty() => token_ids(ids, Some(index)),
                        _ => Err(EmbedError::InvalidInputItem {
                            index,
                            expected: "a non-empty array of token ids",
                        }),
                    })
                    .collect::<Result<Vec<_>>>()?;
                EmbeddingInput::TokenIds(seqs)
            }
            _ => {
                return Err(EmbedError::InvalidInputItem {
                    index: 0,
                    expected: "a string or an array of token ids",
                });
            }
        };
        Ok(input)
    }

    /// Number of inputs (vectors the response will hold).
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::Texts(t) => t.len(),
            EmbeddingInput::TokenIds(t) => t.len(),
        }
    }

    /// Whether there are no inputs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Token-id inputs read as `mode` says: with [`TokenIds::Cl100kBase`] each
    /// sequence is decoded to text (bytes that are not UTF-8, such as a character
    /// split between two sequences, become U+FFFD) for the model's own tokenizer;
    /// with [`TokenIds::Model`], and for texts, the input is returned as it is.
    ///
    /// An id outside `cl100k_base`: [`EmbedError::InvalidTokenId`] naming the
    /// input. The first call builds the decoding table (parsing the compiled-in
    /// ranks; about 1 MB is then held for the life of the process), so call it
    /// from a blocking context unless [`EmbeddingInput::resolves_inline`].
    pub fn resolve_token_ids(self, mode: TokenIds) -> Result<EmbeddingInput> {
        match (self, mode) {
            (EmbeddingInput::TokenIds(seqs), TokenIds::Cl100kBase) => {
                let table = cl100k()?;
                seqs.iter()
                    .enumerate()
                    .map(|(index, ids)| table.decode(index, ids))
                    .collect::<Result<Vec<_>>>()
                    .map(EmbeddingInput::Texts)
            }
            (input, _) => Ok(input),
        }
    }

    /// Whether [`EmbeddingInput::resolve_token_ids`] with `mode` is cheap enough
    /// for an async worker: nothing to decode, or a few thousand ids once the
    /// decoding table is built (cheaper than a hop to the blocking pool).
    pub fn resolves_inline(&self, mode: TokenIds) -> bool {
        match (self, mode) {
            (EmbeddingInput::TokenIds(seqs), TokenIds::Cl100kBase) => {
                CL100K.get().is_some()
                    && seqs.iter().map(Vec::len).sum::<usize>() <= INLINE_DECODE_IDS
            }
            _ => true,
        }
    }

    /// Checks the count of a programmatically built input (JSON is checked by
    /// [`EmbeddingInput::from_json`]).
    pub fn validate(&self) -> Result<()> {
        if self.is_empty() {
            return Err(EmbedError::EmptyInput);
        }
        check_count(self.len())?;
        if let EmbeddingInput::TokenIds(seqs) = self
            && let Some(index) = seqs.iter().position(Vec::is_empty)
        {
            return Err(EmbedError::InvalidInputItem {
                index,
                expected: "a non-empty array of token ids",
            });
        }
        Ok(())
    }
}

fn check_count(n: usize) -> Result<()> {
    if n > MAX_INPUTS {
        return Err(EmbedError::TooManyInputs {
            got: n,
            max: MAX_INPUTS,
        });
    }
    Ok(())
}

/// Parses token ids; `outer` is the input's index when the ids are nested.
fn token_ids(items: &[Value], outer: Option<usize>) -> Result<Vec<u32>> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(EmbedError::InvalidInputItem {
                    index: outer.unwrap_or(i),
                    expected: "a token id (a non-negative integer)",
                })
        })
        .collect()
}

/// Ids in `cl100k_base`, special tokens included (`<|endofprompt|>` is the last).
const CL100K_IDS: u32 = 100_277;

/// The bytes of every `cl100k_base` token, built once from the ranks that
/// `tiktoken-rs` compiles in: one buffer and an offset per id (an id that is
/// no token has an empty range; every token has at least one byte).
struct Cl100k {
    bytes: Vec<u8>,
    /// `CL100K_IDS + 1` offsets into `bytes`.
    offsets: Vec<u32>,
}

impl Cl100k {
    fn build() -> std::result::Result<Cl100k, String> {
        let bpe = tiktoken_rs::cl100k_base().map_err(|e| e.to_string())?;
        let mut bytes = Vec::with_capacity(1 << 20);
        let mut offsets = Vec::with_capacity(CL100K_IDS as usize + 1);
        offsets.push(0);
        for id in 0..CL100K_IDS {
            // Ids that are no token (100256, 100261..=100275) fail: left empty.
            if let Ok(b) = bpe.decode_bytes(&[id]) {
                bytes.extend_from_slice(&b);
            }
            let end = u32::try_from(bytes.len()).map_err(|e| e.to_string())?;
            offsets.push(end);
        }
        bytes.shrink_to_fit();
        Ok(Cl100k { bytes, offsets })
    }

    /// The bytes of token `id`, `None` for an id that is no token.
    fn token(&self, id: u32) -> Option<&[u8]> {
        let i = usize::try_from(id).ok()?;
        let (start, end) = (*self.offsets.get(i)?, *self.offsets.get(i + 1)?);
        let b = self.bytes.get(start as usize..end as usize)?;
        (!b.is_empty()).then_some(b)
    }

    fn decode(&self, index: usize, ids: &[u32]) -> Result<String> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let b = self.token(id).ok_or(EmbedError::InvalidTokenId {
                index,
                id: i64::from(id),
                vocab_size: CL100K_IDS as usize,
            })?;
            out.extend_from_slice(b);
        }
        Ok(match String::from_utf8(out) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
}

static CL100K: std::sync::OnceLock<std::result::Result<Cl100k, String>> =
    std::sync::OnceLock::new();

fn cl100k() -> Result<&'static Cl100k> {
    CL100K
        .get_or_init(Cl100k::build)
        .as_ref()
        .map_err(|e| EmbedError::Tokenizer(format!("cl100k_base: {e}")))
}

/// Token ids decoded on the caller's thread once the table is built.
const INLINE_DECODE_IDS: usize = 8192;

/// Inputs turned into token ids, ready for the batcher.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedInput {
    /// One token-id sequence per input, special tokens included.
    pub ids: Vec<Vec<u32>>,
    /// Tokens over all inputs after truncation (`usage.prompt_tokens`).
    pub prompt_tokens: usize,
}

/// Tokenizes texts (or checks token ids) for `backend`.
///
/// Over `max_seq_length`: cut like sentence-transformers when `truncate`, else
/// [`EmbedError::InputTooLong`] naming the input and the limit. Token ids outside
/// the vocabulary: [`EmbedError::InvalidTokenId`]. Runs the tokenizer, so for
/// large requests call it from a blocking context.
pub fn prepare(
    backend: &dyn EmbeddingBackend,
    input: &EmbeddingInput,
    truncate: bool,
) -> Result<PreparedInput> {
    input.validate()?;
    let info = backend.info();
    let ids = match input {
        EmbeddingInput::Texts(texts) => texts
            .iter()
            .enumerate()
            .map(|(index, t)| {
                backend.tokenize(t, truncate).map_err(|e| match e {
                    EmbedError::InputTooLong { tokens, limit, .. } => EmbedError::InputTooLong {
                        index,
                        tokens,
                        limit,
                    },
                    other => other,
                })
            })
            .collect::<Result<Vec<_>>>()?,
        EmbeddingInput::TokenIds(seqs) => seqs
            .iter()
            .enumerate()
            .map(|(index, s)| check_ids(info, index, s, truncate))
            .collect::<Result<Vec<_>>>()?,
    };
    let prompt_tokens = ids.iter().map(Vec::len).sum();
    Ok(PreparedInput { ids, prompt_tokens })
}

fn check_ids(info: &ModelInfo, index: usize, ids: &[u32], truncate: bool) -> Result<Vec<u32>> {
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= info.vocab_size) {
        return Err(EmbedError::InvalidTokenId {
            index,
            id: i64::from(id),
            vocab_size: info.vocab_size,
        });
    }
    if ids.len() > info.max_seq_length {
        if !truncate {
            return Err(EmbedError::InputTooLong {
                index,
                tokens: ids.len(),
                limit: info.max_seq_length,
            });
        }
        return Ok(ids[..info.max_seq_length].to_vec());
    }
    Ok(ids.to_vec())
}

/// Checks the request's `dimensions` against the model: only its native width is
/// available (these models are not trained for truncated vectors).
pub fn check_dimensions(model: &str, info: &ModelInfo, dimensions: Option<usize>) -> Result<()> {
    match dimensions {
        Some(d) if d != info.dim => Err(EmbedError::DimensionsUnsupported {
            model: model.to_string(),
            requested: d,
            native: info.dim,
        }),
        _ => Ok(()),
    }
}

/// `encoding_format` of an embeddings request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    /// A JSON array of numbers.
    #[default]
    Float,
    /// Base64 of the little-endian f32 bytes.
    Base64,
}

/// Base64 (standard alphabet, padded) of the little-endian bytes of `v`, as the
/// OpenAI API returns with `encoding_format: "base64"`.
pub fn encode_base64(v: &[f32]) -> String {
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Inverse of [`encode_base64`].
pub fn decode_base64(s: &str) -> Result<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| EmbedError::InvalidInput)?;
    if bytes.len() % 4 != 0 {
        return Err(EmbedError::InvalidInput);
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}
