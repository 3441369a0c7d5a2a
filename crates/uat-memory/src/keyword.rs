//! Query text to full-text search terms, the same way for both databases,
//! and the text the SQLite full-text index holds for a memory.
//!
//! The SQLite index stores each word of a memory prefixed with its user's
//! [`user_key`], so a user's postings are terms of their own: a search reads
//! the user's short posting lists only, and BM25's document frequencies are
//! the user's own (no other tenant's memories shape a score). Indexing one
//! shared term per word instead made every search walk the posting lists of
//! all users (0.7-1.3 ms per search on 100,000 memories, against 0.25 ms).

use std::borrow::Cow;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Most terms taken from one query.
pub const MAX_TERMS: usize = 32;

/// Words too common to say anything about a memory.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "did", "do", "does", "for", "from",
    "had", "has", "have", "he", "her", "his", "how", "i", "if", "in", "into", "is", "it", "its",
    "me", "my", "no", "not", "of", "on", "or", "our", "she", "so", "that", "the", "their", "them",
    "then", "there", "they", "this", "to", "was", "we", "were", "what", "when", "where", "which",
    "who", "why", "will", "with", "you", "your",
];

/// `text` with its accents and other diacritics taken off, so `café`,
/// `CAFÉ` and `cafe` make the same word on both stores: compatibility
/// decomposition (NFKD: `é` becomes `e` and a combining accent, `ﬁ` becomes
/// `fi`, full-width letters plain ones), then the combining marks that are
/// not letters themselves are dropped (accents, cedillas, Greek tonos,
/// Vietnamese tones; a vowel sign of an Indic script is a letter and
/// stays), then recomposition (NFC, which rebuilds Hangul syllables).
/// ASCII text is returned as it is.
pub fn fold(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .nfkd()
            .filter(|&c| !is_combining_mark(c) || c.is_alphabetic())
            .nfc()
            .collect(),
    )
}

/// Lower-cased, accent-folded ([`fold`]) alphanumeric words of `text`,
/// without stopwords.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    let folded = fold(text);
    let out: Vec<String> = folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect();
    out.into_iter()
}

/// Lower-cased alphanumeric words of `query`, without stopwords or repeats.
/// A memory matches keyword search when it contains any of them.
pub fn terms(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in words(query) {
        if out.contains(&w) {
            continue;
        }
        out.push(w);
        if out.len() == MAX_TERMS {
            break;
        }
    }
    out
}

/// The token standing for a user in the full-text index: `u` and 16 hex
/// digits of a hash of the id, so any user id makes one short token. Two
/// users sharing a key (a 64-bit collision) would only share document
/// frequencies: every search also checks `user_id` itself.
pub fn user_key(user_id: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(user_id.as_bytes());
    format!("u{}", hex::encode(&h[..8]))
}

/// What the full-text index holds for `content` of the user with `key`:
/// every word of it (stopwords left out, repeats kept) as `{key}{word}`.
pub fn index_text(key: &str, content: &str) -> String {
    let mut out = String::with_capacity(content.len() + content.len() / 4 * key.len());
    for w in words(content) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(key);
        out.push_str(&w);
    }
    out
}

/// An FTS5 query matching the documents of the user with `key` that hold
/// any of `terms`: one quoted phrase per term.
pub fn match_expr(key: &str, terms: &[String]) -> String {
    any_of(key, terms, " OR ", '"', |t| t.replace('"', "\"\""))
}

/// A PostgreSQL `tsquery` (for `to_tsquery('simple', ...)`) matching the
/// documents of the user with `key` that hold any of `terms`.
pub fn tsquery(key: &str, terms: &[String]) -> String {
    any_of(key, terms, " | ", '\'', |t| {
        t.replace('\\', "\\\\").replace('\'', "''")
    })
}

/// `terms`, each prefixed with `key`, escaped and quoted, joined by `or`.
fn any_of(
    key: &str,
    terms: &[String],
    or: &str,
    quote: char,
    escape: impl Fn(&str) -> String,
) -> String {
    let mut out = String::with_capacity(terms.len() * (key.len() + 16));
    for (i, t) in terms.iter().enumerate() {
        if i > 0 {
            out.push_str(or);
        }
        out.push(quote);
        out.push_str(key);
        out.push_str(&escape(t));
        out.push(quote);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{fold, index_text, match_expr, terms, tsquery, user_key};

    #[test]
    fn index_text_prefixes_every_word_with_the_user_key() {
        let k = user_key("alice");
        assert_eq!(k.len(), 17);
        assert_ne!(k, user_key("bob"));
        assert_eq!(
            index_text(&k, "The order ZX-48213 shipped; the ORDER"),
            format!("{k}order {k}zx {k}48213 {k}shipped {k}order")
        );
        assert_eq!(index_text(&k, " -- the a "), "");
        assert_eq!(
            tsquery(&k, &terms("order 48213")),
            format!("'{k}order' | '{k}48213'")
        );
        assert_eq!(
            match_expr(&k, &terms("order 48213")),
            format!("\"{k}order\" OR \"{k}48213\"")
        );
    }

    #[test]
    fn accents_and_compatibility_forms_are_folded() {
        assert_eq!(fold("plain ASCII"), "plain ASCII");
        assert_eq!(terms("Café CAFÉ cafe\u{301}"), vec!["cafe"]);
        assert_eq!(terms("ﬁnal ｃａｆｅ ①"), vec!["final", "cafe", "1"]);
        assert_eq!(
            terms("Tiếng Việt, καφές ΚΑΦΈΣ"),
            vec!["tieng", "viet", "καφες"]
        );
        assert_eq!(terms("İstanbul Ångström"), vec!["istanbul", "angstrom"]);
        // Hangul is recomposed; the vowel signs of Indic scripts are letters
        // and stay (a virama, not one, no longer splits the word).
        assert_eq!(terms("한국어"), vec!["한국어"]);
        assert_eq!(terms("कुत्ता"), vec!["कुतता"]);
        let k = user_key("u");
        assert_eq!(
            index_text(&k, "Crème brûlée"),
            format!("{k}creme {k}brulee")
        );
    }

    #[test]
    fn splits_lowercases_and_drops_stopwords() {
        assert_eq!(
            terms("Where is order ZX-48213?"),
            vec!["order", "zx", "48213"]
        );
        assert_eq!(terms("the THE a"), Vec::<String>::new());
        assert_eq!(terms("\"quoted\" 'x' *"), vec!["quoted", "x"]);
    }
}
