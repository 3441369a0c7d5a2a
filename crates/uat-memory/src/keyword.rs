//! Query text to full-text search terms, the same way for both databases,
//! and the text the full-text index holds for a memory.
//!
//! The index stores each word of a memory prefixed with its user's
//! [`user_key`], so a user's postings are terms of their own: a search reads
//! the user's short posting lists only, and BM25's document frequencies are
//! the user's own (no other tenant's memories shape a score). Indexing one
//! shared term per word instead made every search walk the posting lists of
//! all users (0.7-1.3 ms per search on 100,000 memories, against 0.25 ms).
//!
//! # Words
//!
//! Text is accent-folded ([`fold`]), split on every character that is not a
//! letter or a digit, lower-cased, and stripped of English stopwords.
//!
//! Chinese and Japanese are written without spaces between words, so a
//! whole sentence would make one word, and a query of a word inside it
//! would never match. Runs of CJK characters ([`is_cjk`]: Han ideographs,
//! Hiragana, Katakana, half-width Katakana, `々`, `〆`, `〇`) are split
//! into overlapping character bigrams instead, as Lucene's `CJKAnalyzer`
//! and Elasticsearch's `cjk_bigram` filter do: the run `東京都` makes
//! `東京` and `京都`. A word mixing scripts splits where the script changes
//! (`iPhone15を買った` makes `iphone15`, then the bigrams of `を買った`).
//! Hangul is written with spaces between words and stays whole words, as
//! every other script does.
//!
//! What is indexed and what is queried differ, so that a query of one
//! character finds the memories holding it (`猫`, cat, finds `我的猫很可爱`):
//!
//! - the index ([`index_text`]) holds, for a CJK run, every bigram **and**
//!   every single character (unigram) of it: about two terms per
//!   character, against one per word in other scripts;
//! - a query ([`terms`]) takes the bigrams of a run of two characters or
//!   more, and the character itself of a run of one. A memory holding the
//!   whole phrase of the query holds every one of its bigrams, so it holds
//!   the most query terms and ranks first (the keyword score counts the
//!   distinct terms a memory holds, see [`Store::keyword`]); one holding a
//!   part of the phrase holds fewer. Unigrams are never queried with the
//!   bigrams: `東` would find every memory about the east. A long CJK query
//!   gives one term per character, and is cut at [`MAX_TERMS`] terms like
//!   any other.
//!
//! Folding keeps the voiced sound marks of kana (`が` is not `か`, `ビール`,
//! beer, is not `ヒール`, heel), which are letters of their own rather than
//! accents; half-width Katakana become full-width ones. Memories indexed
//! before CJK runs were split are indexed again by migration 6 of each
//! store, which picks the memories whose folded content holds a character
//! of [`CJK_RANGES`] ([`holds_cjk`]; folding makes CJK characters of a few
//! others, such as the Kangxi radical `⼈`, which becomes `人`).
//!
//! [`Store::keyword`]: crate::Store::keyword

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
/// `fi`, full-width letters plain ones, half-width Katakana full-width
/// ones), then the combining marks that are not letters themselves are
/// dropped (accents, cedillas, Greek tonos, Vietnamese tones; a vowel sign
/// of an Indic script is a letter and stays, and so do the voiced sound
/// marks of kana, which make `が` of `か`), then recomposition (NFC, which
/// rebuilds Hangul syllables and voiced kana). ASCII text is returned as it
/// is.
pub fn fold(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .nfkd()
            .filter(|&c| !is_combining_mark(c) || c.is_alphabetic() || is_kana_voicing(c))
            .nfc()
            .collect(),
    )
}

/// The combining voiced and semi-voiced sound marks of kana (dakuten and
/// handakuten, as NFKD splits them off `が`, `ぱ` or half-width `ｶﾞ`).
fn is_kana_voicing(c: char) -> bool {
    matches!(c, '\u{3099}' | '\u{309A}')
}

/// The characters written without spaces between words, whose runs make
/// bigrams ([`is_cjk`]), as inclusive ranges of code points, lowest first.
/// Only the letters and digits among them count: a run is part of a word.
pub const CJK_RANGES: &[(char, char)] = &[
    // Ideographic iteration mark 々, closing mark 〆, number zero 〇.
    ('\u{3005}', '\u{3007}'),
    // Hiragana.
    ('\u{3040}', '\u{309F}'),
    // Katakana (with the prolonged sound mark ー; the middle dot ・ is
    // punctuation, so it separates words).
    ('\u{30A0}', '\u{30FF}'),
    // Katakana phonetic extensions.
    ('\u{31F0}', '\u{31FF}'),
    // CJK Unified Ideographs extension A.
    ('\u{3400}', '\u{4DBF}'),
    // CJK Unified Ideographs.
    ('\u{4E00}', '\u{9FFF}'),
    // CJK Compatibility Ideographs.
    ('\u{F900}', '\u{FAFF}'),
    // Half-width Katakana (folding makes them full-width first).
    ('\u{FF66}', '\u{FF9F}'),
    // Kana extended B, kana supplement, kana extended A, small kana extension.
    ('\u{1AFF0}', '\u{1B16F}'),
    // Planes 2 and 3: CJK Unified Ideographs extensions B to I, and the
    // compatibility ideographs supplement.
    ('\u{20000}', '\u{3FFFF}'),
];

/// Whether `c` is written without spaces between words (Han ideographs,
/// Hiragana, Katakana, `々`; see [`CJK_RANGES`]): its runs make bigrams.
/// Hangul is not: Korean puts spaces between words.
pub fn is_cjk(c: char) -> bool {
    c >= CJK_RANGES[0].0 && CJK_RANGES.iter().any(|&(lo, hi)| lo <= c && c <= hi)
}

/// Whether `text`, once folded ([`fold`]) as indexing folds it, holds a
/// CJK character ([`is_cjk`]): whether its terms hold CJK bigrams. Folding
/// makes CJK characters of some that are not: the Kangxi radicals (`⼈`
/// becomes `人`), two of the CJK radicals supplement (`⺟` becomes `母`),
/// the enclosed and squared ideographs and katakana (`㊤` becomes `上`,
/// `㍿` becomes `株式会社`). ASCII text holds none.
pub fn holds_cjk(text: &str) -> bool {
    !text.is_ascii() && fold(text).chars().any(is_cjk)
}

/// What a run of CJK characters makes (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cjk {
    /// Every bigram and every character: what the index holds.
    Index,
    /// The bigrams, or the character of a run of one: what a query looks for.
    Query,
}

/// Hands `emit` the lower-cased, accent-folded ([`fold`]) alphanumeric words
/// of `text`, without stopwords, in order; a run of CJK characters makes
/// bigrams (and unigrams) as `cjk` says.
fn words(text: &str, cjk: Cjk, mut emit: impl FnMut(&str)) {
    let folded = fold(text);
    for word in folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let mut rest = word;
        while let Some(first) = rest.chars().next() {
            let in_cjk = is_cjk(first);
            let end = rest
                .char_indices()
                .find(|&(_, c)| is_cjk(c) != in_cjk)
                .map_or(rest.len(), |(i, _)| i);
            let (run, tail) = rest.split_at(end);
            rest = tail;
            if in_cjk {
                cjk_terms(run, cjk, &mut emit);
            } else {
                let w = run.to_lowercase();
                if !STOPWORDS.contains(&w.as_str()) {
                    emit(&w);
                }
            }
        }
    }
}

/// The terms of one non-empty run of CJK characters: its overlapping
/// bigrams, with every single character too for the index; a run of one
/// character is that character.
fn cjk_terms(run: &str, cjk: Cjk, emit: &mut impl FnMut(&str)) {
    // The start of each character, then the end of the run: with `a`, `b`
    // and `c` three of them in a row, `run[a..b]` is a character and
    // `run[a..c]` the bigram starting with it.
    let mut bounds = run
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(run.len()));
    let (Some(mut a), Some(mut b)) = (bounds.next(), bounds.next()) else {
        return;
    };
    for c in bounds {
        if cjk == Cjk::Index {
            emit(&run[a..b]);
        }
        emit(&run[a..c]);
        (a, b) = (b, c);
    }
    // The last character: the whole run when it is the only one.
    if cjk == Cjk::Index || a == 0 {
        emit(&run[a..b]);
    }
}

/// Lower-cased alphanumeric words of `query`, without stopwords or repeats,
/// at most [`MAX_TERMS`]; a run of CJK characters gives its bigrams (or the
/// character itself, alone in its run). A memory matches keyword search
/// when it contains any of them.
pub fn terms(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    words(query, Cjk::Query, |w| {
        if out.len() < MAX_TERMS && !out.iter().any(|t| t == w) {
            out.push(w.to_string());
        }
    });
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
/// every word of it (stopwords left out, repeats kept) as `{key}{word}`; a
/// run of CJK characters gives every bigram and every character of it.
pub fn index_text(key: &str, content: &str) -> String {
    let mut out = String::with_capacity(content.len() + content.len() / 4 * key.len());
    words(content, Cjk::Index, |w| {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(key);
        out.push_str(w);
    });
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
    use super::{
        CJK_RANGES, MAX_TERMS, fold, holds_cjk, index_text, is_cjk, match_expr, terms, tsquery,
        user_key,
    };

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

    #[test]
    fn cjk_runs_make_overlapping_bigrams() {
        assert_eq!(terms("東京都"), vec!["東京", "京都"]);
        assert_eq!(
            terms("我住在北京市中心"),
            vec!["我住", "住在", "在北", "北京", "京市", "市中", "中心"]
        );
        assert_eq!(
            terms("私は東京に住んでいます。"),
            vec![
                "私は", "は東", "東京", "京に", "に住", "住ん", "んで", "でい", "いま", "ます"
            ]
        );
        // Katakana with its prolonged sound mark, the iteration mark, and a
        // bigram repeated.
        assert_eq!(terms("コーヒー"), vec!["コー", "ーヒ", "ヒー"]);
        assert_eq!(terms("人々"), vec!["人々"]);
        assert_eq!(terms("東京、東京"), vec!["東京"]);
        // Punctuation (the Katakana middle dot too) ends a run.
        assert_eq!(terms("北京・上海"), vec!["北京", "上海"]);
        let k = user_key("u");
        assert_eq!(
            index_text(&k, "東京都"),
            format!("{k}東 {k}東京 {k}京 {k}京都 {k}都")
        );
        assert_eq!(
            tsquery(&k, &terms("東京都")),
            format!("'{k}東京' | '{k}京都'")
        );
    }

    #[test]
    fn a_single_cjk_character_is_a_term_and_is_indexed() {
        assert_eq!(terms("猫"), vec!["猫"]);
        assert_eq!(terms("猫と犬"), vec!["猫と", "と犬"]);
        assert_eq!(terms("猫 と 犬"), vec!["猫", "と", "犬"]);
        let k = user_key("u");
        assert_eq!(index_text(&k, "猫"), format!("{k}猫"));
        let indexed = index_text(&k, "我的猫很可爱");
        assert_eq!(
            indexed,
            format!("{k}我 {k}我的 {k}的 {k}的猫 {k}猫 {k}猫很 {k}很 {k}很可 {k}可 {k}可爱 {k}爱")
        );
        // Every term of a query of the text, or of a part of it, is indexed.
        for q in ["我的猫很可爱", "猫", "可爱", "爱", "猫很可"] {
            for t in terms(q) {
                assert!(
                    indexed.split(' ').any(|w| w == format!("{k}{t}")),
                    "{q}: {t}"
                );
            }
        }
    }

    #[test]
    fn words_split_where_the_script_changes() {
        assert_eq!(
            terms("iPhone15を買った"),
            vec!["iphone15", "を買", "買っ", "った"]
        );
        assert_eq!(terms("2024年3月"), vec!["2024", "年", "3", "月"]);
        assert_eq!(terms("the東京"), vec!["東京"], "a stopword is still one");
        assert_eq!(terms("ＵＳＢメモリ"), vec!["usb", "メモ", "モリ"]);
        let k = user_key("u");
        assert_eq!(
            index_text(&k, "Café東京"),
            format!("{k}cafe {k}東 {k}東京 {k}京")
        );
    }

    #[test]
    fn hangul_stays_whole_words() {
        assert_eq!(terms("한국어 공부"), vec!["한국어", "공부"]);
        assert_eq!(terms("韓國語한국어"), vec!["韓國", "國語", "한국어"]);
        let k = user_key("u");
        assert_eq!(index_text(&k, "한국어를"), format!("{k}한국어를"));
    }

    #[test]
    fn kana_keep_their_voiced_sound_marks() {
        assert_eq!(fold("がぱ"), "がぱ");
        assert_eq!(terms("ビール"), vec!["ビー", "ール"]);
        assert_eq!(terms("ヒール"), vec!["ヒー", "ール"]);
        // Half-width Katakana, voiced marks included, fold to full-width.
        assert_eq!(terms("ｶﾞｲﾄﾞ"), terms("ガイド"));
        assert_eq!(terms("ﾊﾟﾝ"), vec!["パン"]);
    }

    #[test]
    fn a_long_cjk_query_is_cut_at_max_terms() {
        let q: String = ('\u{4E00}'..).take(3 * MAX_TERMS).collect();
        let got = terms(&q);
        assert_eq!(got.len(), MAX_TERMS);
        assert_eq!(got[0], "\u{4E00}\u{4E01}");
    }

    #[test]
    fn cjk_characters_are_han_kana_and_the_iteration_mark() {
        for c in "東京あアｱ々〆〇ー豈𠀋𪚲".chars() {
            assert!(is_cjk(c), "{c}");
        }
        for c in "a1é한ㄱ。、 ".chars() {
            assert!(!is_cjk(c), "{c}");
        }
        assert!(
            CJK_RANGES
                .windows(2)
                .all(|w| w[0].0 <= w[0].1 && w[0].1 < w[1].0),
            "sorted, apart"
        );
    }

    /// What migration 6 indexes again: text whose folded form holds a CJK
    /// character, as the terms are made of the folded text. Some characters
    /// outside [`CJK_RANGES`] fold into CJK ones.
    #[test]
    fn text_holds_cjk_once_folded() {
        for text in [
            "東京",
            "iPhone15を買った",
            "ｶﾞｲﾄﾞ",
            // Kangxi radicals (U+2F00-2FDF): ⼈ is 人, ⼝ is 口.
            "⼈⼝",
            // CJK radicals supplement (U+2E80-2EFF): ⺟ is 母.
            "a ⺟",
            // Enclosed and squared CJK (U+3200-33FF): ㊤ is 上, ㍿ 株式会社.
            "㊤",
            "㍿",
            // Enclosed ideographic supplement: 🈂 is サ.
            "🈂",
        ] {
            assert!(holds_cjk(text), "{text}");
        }
        for c in ['⼈', '⺟', '㊤', '㍿', '🈂'] {
            assert!(!is_cjk(c), "{c} is not CJK before folding");
        }
        for text in ["", "plain words", "café", "한국어", "①", "ⓐ", "。、"] {
            assert!(!holds_cjk(text), "{text}");
        }
        let k = user_key("u");
        assert_eq!(
            index_text(&k, "⼈⼝㊤"),
            format!("{k}人 {k}人口 {k}口 {k}口上 {k}上")
        );
    }
}
