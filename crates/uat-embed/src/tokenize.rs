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
use tokenizers::{Encoding, PostProcessor, Tokenizer, TruncationDirection};

/// A loaded `tokenizer.json`, set up like sentence-transformers.
pub struct TextTokenizer {
    inner: Tokenizer,
    max_seq_length: usize,
    added: usize,
    lowercase: bool,
    /// Bytes of the longest added-token literal (`[SEP]`, `<s>`): a prefix cut
    /// inside one tokenizes its start as ordinary text.
    literal: usize,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; inputs will be cut at `max_seq_length` tokens
    /// (special tokens included). `lowercase` mirrors `do_lower_case`.
    pub fn load(path: &Path, max_seq_length: usize, lowercase: bool) -> Result<TextTokenizer> {
        let inner = Tokenizer::from_file(path).map_err(|e| EmbedError::load(path, e))?;
        TextTokenizer::new(inner, max_seq_length, lowercase).map_err(|e| EmbedError::load(path, e))
    }

    fn new(
        mut inner: Tokenizer,
        max_seq_length: usize,
        lowercase: bool,
    ) -> std::result::Result<TextTokenizer, String> {
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| e.to_string())?;
        let added = inner
            .get_post_processor()
            .map(|p| p.added_tokens(false))
            .unwrap_or(0);
        if max_seq_length <= added {
            return Err(format!(
                "max_seq_length {max_seq_length} leaves no room for text"
            ));
        }
        let literal = inner
            .get_added_tokens_decoder()
            .values()
            .map(|t| t.content.len())
            .max()
            .unwrap_or(0);
        Ok(TextTokenizer {
            inner,
            max_seq_length,
            added,
            lowercase,
            literal,
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
    ///
    /// A text longer than `max_seq_length x 32` bytes is tokenized by prefixes
    /// (doubling) until one holds more tokens than fit, so a 4 MB text costs about
    /// as much as a short one; the ids are exactly those of tokenizing it whole
    /// and then cutting. With `truncate: false` the reported length of such a text
    /// is then a lower bound (what its prefix already holds).
    pub fn encode(&self, text: &str, truncate: bool) -> Result<Vec<u32>> {
        self.encode_seen(text, truncate, &mut |_| {})
    }

    /// [`TextTokenizer::encode`], telling `seen` the bytes of every piece of text
    /// handed to the tokenizer (a seam for tests).
    fn encode_seen(
        &self,
        text: &str,
        truncate: bool,
        seen: &mut dyn FnMut(usize),
    ) -> Result<Vec<u32>> {
        let keep = self.max_seq_length - self.added;
        let window = self.max_seq_length.saturating_mul(PREFIX_BYTES_PER_TOKEN);
        // Lowercasing is per character except for a final sigma, which looks
        // ahead: a text with one is lowercased whole, so a prefix of the result
        // is a prefix of what the whole text gives.
        let lowered;
        let (text, lower_pieces) = if !self.lowercase {
            (text, false)
        } else if text.len() <= window || !text.contains('\u{3a3}') {
            (text, true)
        } else {
            lowered = text.to_lowercase();
            (lowered.as_str(), false)
        };
        let piece = |t: &str, words: bool, seen: &mut dyn FnMut(usize)| {
            seen(t.len());
            let low;
            let t = if lower_pieces {
                low = t.to_lowercase();
                low.as_str()
            } else {
                t
            };
            // Word ids come with offsets (`encode`); `encode_fast` skips both.
            let enc = if words {
                self.inner.encode(t, false)
            } else {
                self.inner.encode_fast(t, false)
            };
            enc.map_err(|e| EmbedError::Tokenizer(e.to_string()))
        };
        let mut enc = match bounded(text, keep, window, self.literal, &mut |t, words| {
            piece(t, words, seen)
        })? {
            Bounded::Whole(enc) => {
                let full = enc.len() + self.added;
                if full > self.max_seq_length && !truncate {
                    return Err(EmbedError::InputTooLong {
                        index: 0,
                        tokens: full,
                        limit: self.max_seq_length,
                    });
                }
                enc
            }
            Bounded::Over { enc, settled } => {
                if !truncate {
                    return Err(EmbedError::InputTooLong {
                        index: 0,
                        tokens: settled + self.added,
                        limit: self.max_seq_length,
                    });
                }
                enc
            }
        };
        if enc.len() > keep {
            enc.truncate(keep, 0, TruncationDirection::Right);
        }
        let enc = self
            .inner
            .post_process(enc, None, true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }
}

/// Bytes of text per token of `max_seq_length` in the first prefix tried: at
/// 256 tokens, 8 KiB, which holds 256 tokens of any ordinary text.
const PREFIX_BYTES_PER_TOKEN: usize = 32;

/// What [`bounded`] tokenized.
enum Bounded {
    /// The whole text.
    Whole(Encoding),
    /// A prefix whose first `settled` tokens (more than were asked for) are
    /// exactly the first tokens of the whole text.
    Over { enc: Encoding, settled: usize },
}

/// Tokenizes `text` (`tok(piece, with_word_ids)`) whole when it is at most
/// `window` bytes, else by prefixes of `window`, `2 x window`, ... bytes until
/// one proves more than `keep` tokens, or the whole text.
///
/// A prefix is cut at ASCII whitespace in its second half when there is any,
/// else at a character boundary. Its last word may be cut or run on past the
/// cut, so only tokens of the words before it are settled: the normalizer and
/// pre-tokenizer of these models work per character and per word, so a word
/// that ends before the cut is tokenized as in the whole text.
fn bounded(
    text: &str,
    keep: usize,
    window: usize,
    literal: usize,
    tok: &mut dyn FnMut(&str, bool) -> Result<Encoding>,
) -> Result<Bounded> {
    let mut window = window.max(64);
    // Prefixes that settled nothing: a text with no word boundary, which
    // only the whole text decides (no more doubling, which would cost
    // twice the whole).
    let mut barren = 0;
    loop {
        if window >= text.len() || barren >= 2 {
            return tok(text, false).map(Bounded::Whole);
        }
        let cut = cut_at(text, window);
        let enc = tok(&text[..cut], true)?;
        let settled = settled(&enc, literal);
        if settled > keep {
            return Ok(Bounded::Over { enc, settled });
        }
        barren = if settled == 0 { barren + 1 } else { 0 };
        window = window.saturating_mul(2);
    }
}

/// Where to cut `text` (longer than `window`) for a prefix of about `window`
/// bytes: before the last ASCII whitespace of its second half, else at the
/// character boundary at or before `window`. Never 0.
fn cut_at(text: &str, window: usize) -> usize {
    let mut end = window.min(text.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = text.as_bytes();
    let half = end / 2;
    let space = bytes[half..end]
        .iter()
        .rposition(u8::is_ascii_whitespace)
        .map(|i| half + i);
    match space {
        Some(i) if i > 0 => i,
        _ if end > 0 => end,
        // A window shorter than the first character: take that character.
        _ => text.chars().next().map_or(text.len(), char::len_utf8),
    }
}

/// Tokens of `enc` (a prefix) before its last word's first token, and
/// ending at least `literal` bytes before its end: an added token's literal
/// cut by the prefix (`x[SE`) is tokenized as words (`[`, `se`), of which
/// only the last is the last word.
fn settled(enc: &Encoding, literal: usize) -> usize {
    let words = enc.get_word_ids();
    let mut n = match words.last() {
        Some(Some(last)) => words
            .iter()
            .position(|w| w.is_none_or(|w| w >= *last))
            .unwrap_or(0),
        _ => 0,
    };
    let offsets = enc.get_offsets();
    let end = offsets.last().map_or(0, |o| o.1);
    let limit = end.saturating_sub(literal);
    while n > 0 && offsets.get(n - 1).is_some_and(|o| o.1 > limit) {
        n -= 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;

    /// A small BERT tokenizer (normalizer, pre-tokenizer, WordPiece, [CLS]/[SEP]).
    fn tokenizer(max_seq_length: usize, lowercase: bool) -> TextTokenizer {
        let words = [
            "[UNK]", "[CLS]", "[SEP]", "the", "quick", "brown", "fox", "##es", "a", "##b", "##c",
            ".", ",", "日", "本", "σ", "ς", "##σ", "##ς", "α", "##α", "e", "##e", "ü",
        ];
        let wp = WordPiece::builder()
            .vocab(
                words
                    .iter()
                    .enumerate()
                    .map(|(i, w)| (w.to_string(), i as u32))
                    .collect::<tokenizers::models::bpe::Vocab>(),
            )
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        let mut t = Tokenizer::new(wp);
        let _ = t.with_normalizer(Some(BertNormalizer::new(true, true, Some(true), false)));
        t.with_pre_tokenizer(Some(BertPreTokenizer));
        t.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), 2),
            ("[CLS]".into(), 1),
        )));
        TextTokenizer::new(t, max_seq_length, lowercase).unwrap()
    }

    /// What `encode` did before: the whole text tokenized, then cut.
    fn whole_then_cut(t: &TextTokenizer, text: &str) -> Vec<u32> {
        let text = if t.lowercase {
            text.to_lowercase()
        } else {
            text.to_string()
        };
        let mut enc = t.inner.encode_fast(text.as_str(), false).unwrap();
        enc.truncate(t.max_seq_length - t.added, 0, TruncationDirection::Right);
        t.inner
            .post_process(enc, None, true)
            .unwrap()
            .get_ids()
            .to_vec()
    }

    /// A 4 MB text was tokenized whole (4.4 s CPU, +290 MB) to keep 256 tokens:
    /// now only a prefix of a few KB reaches the tokenizer.
    #[test]
    fn a_long_text_is_tokenized_by_a_bounded_prefix() {
        let t = tokenizer(16, false);
        let text = "the quick brown fox, a foxes. ".repeat(140_000);
        assert!(text.len() > 4_000_000);
        let mut passed = Vec::new();
        let ids = t.encode_seen(&text, true, &mut |n| passed.push(n)).unwrap();
        assert_eq!(ids, whole_then_cut(&t, &text));
        assert_eq!(ids.len(), 16);
        let window = 16 * PREFIX_BYTES_PER_TOKEN;
        assert!(
            passed.iter().sum::<usize>() <= 2 * window,
            "bytes handed to the tokenizer: {passed:?}"
        );
        // Too long without truncation: proven by the prefix too.
        let mut passed = Vec::new();
        let err = t.encode_seen(&text, false, &mut |n| passed.push(n));
        assert!(
            matches!(err, Err(EmbedError::InputTooLong { limit: 16, tokens, .. }) if tokens > 16),
            "{err:?}"
        );
        assert!(passed.iter().sum::<usize>() <= 2 * window, "{passed:?}");
    }

    /// The ids are those of the whole text cut, whatever the text: multibyte
    /// characters, no whitespace at all, words split by the cut, an over-long
    /// word (one [UNK]) across it, a final sigma with lowercasing.
    #[test]
    fn prefix_tokenization_gives_the_ids_of_the_whole_text() {
        let texts = [
            "the quick brown fox ".repeat(50),
            "thé qüick bröwn föx 日本 ".repeat(60),
            "日本日本日本日本日本".repeat(200),
            "fox,fox.fox,".repeat(300),
            "foxesfoxesfoxes".repeat(400),
            format!("{} {}", "ab".repeat(150), "the fox ".repeat(100)),
            format!("{}{}", "a ".repeat(250), "abc".repeat(40)),
            "ΑΣ' fox ΣΑΣ'Α the ".repeat(100),
            "αΣΑ".repeat(30),
            "the\u{301} fox\u{301}\u{302} ".repeat(100),
        ];
        for lowercase in [false, true] {
            for max in [3, 8, 16, 64] {
                let t = tokenizer(max, lowercase);
                for text in &texts {
                    for end in [text.len(), text.len() / 3, text.len() / 7] {
                        let mut end = end;
                        while !text.is_char_boundary(end) {
                            end -= 1;
                        }
                        let text = &text[..end];
                        assert_eq!(
                            t.encode(text, true).unwrap(),
                            whole_then_cut(&t, text),
                            "max {max}, lowercase {lowercase}: {text:?}"
                        );
                    }
                }
            }
        }
    }

    /// A tokenizer whose added tokens can be cut by a prefix.
    fn with_added(max: usize, lowercase: bool) -> TextTokenizer {
        let mut t = tokenizer(max, lowercase);
        let added = t.inner.add_special_tokens([
            tokenizers::AddedToken::from("[SEP]", true),
            tokenizers::AddedToken::from("<|endoftext|>", true),
        ]);
        assert!(added.unwrap() >= 1, "<|endoftext|> is new");
        t.literal = "<|endoftext|>".len();
        t
    }

    /// A prefix cut inside an added token's literal (`fox<|endo`) tokenizes
    /// its start as words (`<`, `|`), which the whole text does not have:
    /// they are not settled: no token ending within the longest literal's
    /// length of the prefix's end is (without the guard, 6 and 5 were).
    #[test]
    fn the_start_of_a_cut_added_token_is_not_settled() {
        let t = with_added(64, false);
        let enc = t.inner.encode("the quick brown fox<|endo", false).unwrap();
        assert_eq!(enc.len(), 7, "{:?}", enc.get_tokens());
        assert_eq!(settled(&enc, 0), 6, "the last word only");
        assert_eq!(settled(&enc, t.literal), 2, "the, quick");
        let enc = t.inner.encode("the quick brown fox[SE", false).unwrap();
        assert_eq!(settled(&enc, 0), 5);
        assert_eq!(settled(&enc, t.literal), 2);
    }

    /// The same, end to end: whole-text ids however the prefixes fall.
    #[test]
    fn a_prefix_cut_inside_an_added_token_still_gives_the_whole_texts_ids() {
        for lowercase in [false, true] {
            for max in [3, 8, 16, 64] {
                let t = with_added(max, lowercase);
                for text in [
                    "a[SEP]".repeat(400),
                    "fox<|endoftext|>".repeat(300),
                    "a<|endoftext|>b,".repeat(300),
                ] {
                    for end in (text.len() / 2..text.len()).step_by(7).take(40) {
                        let text = &text[..end];
                        assert_eq!(
                            t.encode(text, true).unwrap(),
                            whole_then_cut(&t, text),
                            "max {max}, lowercase {lowercase}: {text:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn cuts_fall_on_whitespace_or_a_character_boundary() {
        assert_eq!(cut_at("aaaa bbbb cccc", 12), 9);
        assert_eq!(cut_at("aaaaaaaaaaaaaaaa", 10), 10);
        // "é" is two bytes: byte 3 is inside it.
        assert_eq!(cut_at("aaéé", 3), 2);
        assert_eq!(cut_at("éé", 1), 2);
    }
}
