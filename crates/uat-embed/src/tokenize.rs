//! Tokenization that matches sentence-transformers, not the `tokenizer.json` defaults.
//!
//! A shipped `tokenizer.json` often pads to a fixed length and truncates at another
//! limit (all-MiniLM-L6-v2: both 128). sentence-transformers ignores both: it pads to
//! the longest input of the batch (we do not pad at all) and truncates at the model's
//! `max_seq_length`. We switch the file's padding and truncation off, tokenize without
//! special tokens, truncate to `max_seq_length` minus the special tokens the
//! post-processor adds, then add them: exactly what the Hugging Face tokenizer does.

use crate::error::{EmbedError, Result};
use std::path::Path;
use tokenizers::{PostProcessor, Tokenizer, TruncationDirection};

/// A loaded `tokenizer.json`, set up like sentence-transformers.
pub struct TextTokenizer {
    inner: Tokenizer,
    max_seq_length: usize,
    added: usize,
    lowercase: bool,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; inputs will be cut at `max_seq_length` tokens
    /// (special tokens included). `lowercase` mirrors `do_lower_case`.
    pub fn load(path: &Path, max_seq_length: usize, lowercase: bool) -> Result<TextTokenizer> {
        let mut inner = Tokenizer::from_file(path).map_err(|e| EmbedError::load(path, e))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| EmbedError::load(path, e))?;
        let added = inner
            .get_post_processor()
            .map(|p| p.added_tokens(false))
            .unwrap_or(0);
        if max_seq_length <= added {
            return Err(EmbedError::load(
                path,
                format!("max_seq_length {max_seq_length} leaves no room for text"),
            ));
        }
        Ok(TextTokenizer {
            inner,
            max_seq_length,
            added,
            lowercase,
        })
    }

    /// The longest sequence in tokens, special tokens included.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text` with special tokens. Longer than `max_seq_length`: cut when
    /// `truncate`, else [`EmbedError::InputTooLong`] (with `index` set to 0; callers
    /// that tokenize a list set it).
    pub fn encode(&self, text: &str, truncate: bool) -> Result<Vec<u32>> {
        let lowered;
        let text = if self.lowercase {
            lowered = text.to_lowercase();
            lowered.as_str()
        } else {
            text
        };
        let mut enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let full = enc.len() + self.added;
        if full > self.max_seq_length {
            if !truncate {
                return Err(EmbedError::InputTooLong {
                    index: 0,
                    tokens: full,
                    limit: self.max_seq_length,
                });
            }
            enc.truncate(
                self.max_seq_length - self.added,
                0,
                TruncationDirection::Right,
            );
        }
        let enc = self
            .inner
            .post_process(enc, None, true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }
}
