//! Cache keys: a namespace (tenant), a model (after alias resolution) and a
//! SHA-256 of the canonical request, plus glob patterns over namespace and
//! model for invalidation.
//!
//! The stored form of a key is `{namespace}|{model}|{hash}` with the
//! characters `%|*?[]\` and controls percent-escaped in namespace and model,
//! so the separator never appears inside a part and Redis `SCAN MATCH` can
//! address a namespace and a model glob without over-matching.

use crate::error::CacheError;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::sync::Arc;

/// Request fields that do not change the output and are left out of the key
/// (`cache`: LiteLLM's per-request cache controls, which the gateway reads
/// and never sends upstream).
pub const IGNORED_FIELDS: &[&str] = &["user", "stream", "stream_options", "model", "cache"];

/// What kind of response a key addresses (part of the hash, so a chat and an
/// embeddings request can never share an entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// A chat completion.
    Chat,
    /// An embeddings response.
    Embeddings,
    /// A legacy text completion (`/v1/completions`).
    Completion,
}

impl RequestKind {
    fn tag(self) -> &'static str {
        match self {
            RequestKind::Chat => "chat",
            RequestKind::Embeddings => "embeddings",
            RequestKind::Completion => "completion",
        }
    }
}

/// A cache key. Cheap to clone; hashes as the xxh3 of its stored form,
/// computed once (maps keyed by it use [`KeyHasher`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    stored: Arc<str>,
    ns_len: usize,
    model_end: usize,
    hash: u64,
}

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A hasher for keys that are already hashes (a [`CacheKey`], an xxh3 of a
/// stored key): passes the `u64` through instead of hashing it again, which
/// a lookup and an insert otherwise did a dozen times over the whole key.
#[derive(Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `CacheKey` or `u64`; anything else still hashes well.
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// [`KeyHasher`] as a `BuildHasher`.
pub type BuildKeyHasher = std::hash::BuildHasherDefault<KeyHasher>;

/// The xxh3 of a stored key (also the presence sets' entries).
pub(crate) fn stored_hash(stored: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(stored.as_bytes())
}

impl CacheKey {
    /// The key of a request: `body` is the request JSON; `model` is the model
    /// after alias resolution (the body's own `model` field is ignored).
    pub fn for_request(
        namespace: &str,
        model: &str,
        kind: RequestKind,
        body: &serde_json::Value,
    ) -> Self {
        let mut canonical = String::with_capacity(256);
        canonical.push_str(kind.tag());
        canonical.push('\n');
        canonical_top(body, &mut canonical);
        let mut h = Sha256::new();
        // Namespace and model are length-prefixed into the hash as well.
        h.update((namespace.len() as u64).to_le_bytes());
        h.update(namespace.as_bytes());
        h.update((model.len() as u64).to_le_bytes());
        h.update(model.as_bytes());
        h.update(canonical.as_bytes());
        let digest = h.finalize();
        let mut hex = [0u8; 64];
        // 32 bytes into 64 hex digits: the sizes always match.
        let hex = match hex::encode_to_slice(digest, &mut hex) {
            Ok(()) => std::str::from_utf8(&hex).unwrap_or_default(),
            Err(_) => "",
        };
        Self::from_parts(namespace, model, hex)
    }

    /// The xxh3 of the stored form (computed once, when the key was made).
    pub(crate) fn xxh3(&self) -> u64 {
        self.hash
    }

    /// L3's row id: the first 16 hex digits of the SHA-256 (which covers
    /// namespace, model and request) read as a two's-complement `i64`, so
    /// SQL can compute it from a stored key too (the schema migration does).
    /// A hash part that is not hex (only from a misused [`CacheKey::from_parts`])
    /// falls back to the xxh3.
    pub(crate) fn row_id(&self) -> i64 {
        let digits = self.hash().get(..16).unwrap_or("");
        let bits = u64::from_str_radix(digits, 16).unwrap_or(self.hash);
        i64::from_ne_bytes(bits.to_ne_bytes())
    }

    /// Builds a key from its parts; `hash` must be 64 lowercase hex digits.
    pub fn from_parts(namespace: &str, model: &str, hash: &str) -> Self {
        let mut s = String::with_capacity(namespace.len() + model.len() + hash.len() + 2);
        escape_into(namespace, &mut s);
        let ns_len = s.len();
        s.push('|');
        escape_into(model, &mut s);
        let model_end = s.len();
        s.push('|');
        s.push_str(hash);
        CacheKey {
            hash: stored_hash(&s),
            stored: Arc::from(s),
            ns_len,
            model_end,
        }
    }

    /// Parses a stored key (`ns|model|hash`).
    pub fn parse_stored(stored: &str) -> Result<Self, CacheError> {
        let mut it = stored.split('|');
        let (Some(ns), Some(model), Some(hash), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(CacheError::InvalidKey(format!(
                "expected ns|model|hash, got {stored:?}"
            )));
        };
        if hash.len() != 64
            || !hash
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(CacheError::InvalidKey(
                "hash must be 64 lowercase hex digits".into(),
            ));
        }
        Ok(CacheKey {
            hash: stored_hash(stored),
            stored: Arc::from(stored),
            ns_len: ns.len(),
            model_end: ns.len() + 1 + model.len(),
        })
    }

    /// Parses the public form `model|hash` (as sent in `x-uat-cache-key`)
    /// inside `namespace`.
    pub fn parse_public(namespace: &str, public: &str) -> Result<Self, CacheError> {
        let mut s = String::new();
        escape_into(namespace, &mut s);
        s.push('|');
        s.push_str(public);
        Self::parse_stored(&s)
    }

    /// The stored form, `ns|model|hash` (escaped).
    pub fn as_str(&self) -> &str {
        &self.stored
    }

    /// The public form, `model|hash` (escaped), without the namespace.
    pub fn public(&self) -> &str {
        &self.stored[self.ns_len + 1..]
    }

    /// The namespace (unescaped).
    pub fn namespace(&self) -> String {
        unescape(&self.stored[..self.ns_len])
    }

    /// The model (unescaped).
    pub fn model(&self) -> String {
        unescape(&self.stored[self.ns_len + 1..self.model_end])
    }

    /// The escaped namespace as stored.
    pub fn namespace_escaped(&self) -> &str {
        &self.stored[..self.ns_len]
    }

    /// The escaped model as stored.
    pub fn model_escaped(&self) -> &str {
        &self.stored[self.ns_len + 1..self.model_end]
    }

    /// The hex hash.
    pub fn hash(&self) -> &str {
        &self.stored[self.model_end + 1..]
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.stored)
    }
}

/// Longest pattern accepted, in bytes.
pub const MAX_PATTERN: usize = 256;

/// A glob over the models of one namespace: `*` matches any run of
/// characters, `?` one character, everything else is literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern {
    namespace: String,
    /// The namespace as stored keys hold it, escaped once here rather than
    /// for every key a scan visits.
    namespace_escaped: String,
    model_glob: String,
}

impl KeyPattern {
    /// Every model in `namespace` whose name matches `model_glob`.
    pub fn new(namespace: &str, model_glob: &str) -> Result<Self, CacheError> {
        if model_glob.is_empty() {
            return Err(CacheError::InvalidKey("pattern must not be empty".into()));
        }
        // Matching costs up to the pattern's length times the model's, for
        // every entry: a megabyte-long pattern held a worker for minutes.
        if model_glob.len() > MAX_PATTERN {
            return Err(CacheError::InvalidKey(format!(
                "pattern must be at most {MAX_PATTERN} bytes (a glob over model names)"
            )));
        }
        let mut namespace_escaped = String::with_capacity(namespace.len());
        escape_into(namespace, &mut namespace_escaped);
        Ok(KeyPattern {
            namespace: namespace.to_string(),
            namespace_escaped,
            model_glob: model_glob.to_string(),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The glob over model names.
    pub fn model_glob(&self) -> &str {
        &self.model_glob
    }

    /// True when `key` is in the namespace and its model matches. Allocates
    /// only for a model name that holds escaped characters.
    pub fn matches(&self, key: &CacheKey) -> bool {
        if self.namespace_escaped != key.namespace_escaped() {
            return false;
        }
        let model = key.model_escaped();
        if model.contains('%') {
            glob_match(&self.model_glob, &unescape(model))
        } else {
            glob_match(&self.model_glob, model)
        }
    }

    /// True when the Redis pattern of [`KeyPattern::redis_match`] may match
    /// keys this pattern does not, so each key found must be checked with
    /// [`KeyPattern::matches`]: Redis's `?` matches one byte, and a model
    /// name's character may be several (UTF-8, or an escape).
    pub fn redis_overmatches(&self) -> bool {
        self.model_glob.contains('?')
    }

    /// The Redis `SCAN MATCH` pattern for this glob under `prefix`.
    /// Literal characters are escaped as in stored keys. A `?` becomes `*`
    /// (see [`KeyPattern::redis_overmatches`]). The prefix is taken
    /// literally (its `*?[]\` escaped for the match).
    pub fn redis_match(&self, prefix: &str) -> String {
        let mut out = String::with_capacity(prefix.len() + self.model_glob.len() + 16);
        redis_escape_literal(prefix, &mut out);
        redis_escape_literal(&self.namespace_escaped, &mut out);
        out.push('|');
        for c in self.model_glob.chars() {
            match c {
                '*' | '?' => out.push('*'),
                _ => {
                    let mut tmp = String::new();
                    escape_into(c.encode_utf8(&mut [0u8; 4]), &mut tmp);
                    redis_escape_literal(&tmp, &mut out);
                }
            }
        }
        out.push_str("|*");
        out
    }

    /// The glob translated to a SQL `LIKE` pattern with `\` as the escape character.
    pub fn sql_like(&self) -> String {
        let mut out = String::with_capacity(self.model_glob.len() + 4);
        for c in self.model_glob.chars() {
            match c {
                '*' => out.push('%'),
                '?' => out.push('_'),
                '%' | '_' | '\\' => {
                    out.push('\\');
                    out.push(c);
                }
                _ => out.push(c),
            }
        }
        out
    }

    /// The glob translated to a SQLite `GLOB` pattern (case-sensitive, unlike SQLite's `LIKE`).
    pub fn sqlite_glob(&self) -> String {
        let mut out = String::with_capacity(self.model_glob.len() + 4);
        for c in self.model_glob.chars() {
            match c {
                '[' => out.push_str("[[]"),
                ']' => out.push_str("[]]"),
                _ => out.push(c),
            }
        }
        out
    }
}

/// `*` / `?` glob match: `*` matches any run of characters, `?` exactly one
/// character (as SQL's `_` and SQLite's `GLOB` do), everything else itself.
/// Iterative, with linear backtracking; allocates nothing.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    // Both are UTF-8 and `t` only ever moves by whole characters, so a byte
    // comparison of literals compares characters.
    let char_len = |t: usize| utf8_len(text[t]);
    let (mut p, mut t) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'?' {
            p += 1;
            t += char_len(t);
        } else if p < pattern.len() && pattern[p] != b'*' && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += char_len(mark);
            t = mark;
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

/// Length of the UTF-8 character that starts with `lead`.
fn utf8_len(lead: u8) -> usize {
    match lead {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

fn needs_escape(c: char) -> bool {
    matches!(c, '%' | '|' | '*' | '?' | '[' | ']' | '\\') || c.is_control()
}

fn escape_into(s: &str, out: &mut String) {
    // Every character that needs escaping is ASCII or a (C1) control
    // character, which is not ASCII: a plain ASCII name is copied as it is.
    if s.bytes()
        .all(|b| b.is_ascii() && !b.is_ascii_control() && !needs_escape(char::from(b)))
    {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        if needs_escape(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

fn unescape(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Appends `s` to a Redis glob (`SCAN MATCH`) so that it matches only itself.
pub(crate) fn redis_escape_literal(s: &str, out: &mut String) {
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Writes the request object canonically, leaving out [`IGNORED_FIELDS`] at the top level.
fn canonical_top(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => write_object(map.iter(), IGNORED_FIELDS, out),
        other => canonical(other, out),
    }
}

/// Canonical JSON: object keys sorted, no whitespace, integral floats
/// written as integers (so `0` and `0.0` give the same key).
pub fn canonical(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let mut buf = itoa::Buffer::new();
            if let Some(i) = n.as_i64() {
                out.push_str(buf.format(i));
            } else if let Some(u) = n.as_u64() {
                out.push_str(buf.format(u));
            } else if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9.007_199_254_740_992e15
            {
                #[allow(clippy::cast_possible_truncation)] // integral and below 2^53
                out.push_str(buf.format(f as i64));
            } else {
                let _ = write!(out, "{n}");
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(map.iter(), &[], out),
    }
}

/// Writes an object's entries in key order, leaving out the names in `skip`.
/// serde_json's map keeps the client's order (its `preserve_order` feature,
/// so a JSON schema's properties reach the model in the order written), so
/// entries not already in order are sorted here: on the stack for objects of
/// up to [`STACK_ENTRIES`] entries (a message, most request bodies), so the
/// key path allocates nothing for them.
fn write_object<'a, I>(entries: I, skip: &[&str], out: &mut String)
where
    I: Iterator<Item = (&'a String, &'a serde_json::Value)> + Clone,
{
    let write_all = |it: &mut dyn Iterator<Item = (&'a String, &'a serde_json::Value)>,
                     out: &mut String| {
        out.push('{');
        let mut first = true;
        for (k, v) in it.filter(|(k, _)| !skip.contains(&k.as_str())) {
            if !first {
                out.push(',');
            }
            first = false;
            write_string(k, out);
            out.push(':');
            canonical(v, out);
        }
        out.push('}');
    };
    if entries.clone().map(|(k, _)| k).is_sorted() {
        write_all(&mut entries.clone(), out);
    } else if entries.clone().nth(STACK_ENTRIES).is_none() {
        let mut buf = [None; STACK_ENTRIES];
        let mut n = 0;
        for (slot, e) in buf.iter_mut().zip(entries) {
            *slot = Some(e);
            n += 1;
        }
        let sorted = &mut buf[..n];
        sorted.sort_unstable_by(|a, b| a.map(|e| e.0).cmp(&b.map(|e| e.0)));
        write_all(&mut sorted.iter().flatten().copied(), out);
    } else {
        let mut sorted: Vec<_> = entries.collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        write_all(&mut sorted.into_iter(), out);
    }
}

/// Largest object sorted without allocating.
const STACK_ENTRIES: usize = 16;

fn write_string(s: &str, out: &mut String) {
    // serde_json's string escaping is canonical (same input, same output).
    // It escapes only `"`, `\` and control characters: a string without
    // them is written as it is, without the String `to_string` allocates
    // (most keys and contents of a request).
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    match serde_json::to_string(s) {
        Ok(q) => out.push_str(&q),
        Err(_) => out.push_str("\"\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn key(body: &serde_json::Value) -> CacheKey {
        CacheKey::for_request("default", "gpt-4o", RequestKind::Chat, body)
    }

    #[test]
    fn reordered_keys_and_whitespace_give_the_same_key() {
        let a: serde_json::Value = serde_json::from_str(
            r#"{"model":"x","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        let b: serde_json::Value = serde_json::from_str(
            r#"{ "messages" : [ {"content":"hi", "role":"user"} ], "temperature": 0.0, "model":"y", "stream": true, "user": "u1", "stream_options": {"include_usage": true} }"#,
        )
        .unwrap();
        assert_eq!(key(&a), key(&b));
    }

    /// Entries written by an earlier release stay addressable: the canonical
    /// form (and so every stored key) is fixed. A change here orphans every
    /// L2/L3 entry; it needs a new key version, not a new expected hash.
    #[test]
    fn keys_are_stable_across_releases() {
        let body: serde_json::Value = serde_json::from_str(
            r#"{"temperature":0.0,"top_p":1,"seed":-7,"max_tokens":12,"stream":true,"user":"u",
                "messages":[{"role":"system","content":"Be \"terse\".\n"},{"role":"user","content":"sea é ☃"}],
                "stop":null,"logit_bias":{"50256":-100,"13":2.5},"tools":[],"n":1e3,"x":1.25e-7}"#,
        )
        .unwrap();
        assert_eq!(
            key(&body).as_str(),
            "default|gpt-4o|e35b855b50eb51d29f113d08f277ad59cf916370ddcf6d8bf29a712933998059"
        );
    }

    #[test]
    fn objects_whose_entries_come_unsorted_are_sorted() {
        // serde_json's map iterates in key order; an insertion-ordered map
        // (its `preserve_order` feature) would not.
        let (a, b, c) = ("a".to_string(), "b".to_string(), "user".to_string());
        let (one, two) = (json!(1), json!({"y": 2, "x": [true, null]}));
        let entries = [(&c, &one), (&b, &two), (&a, &one)];
        let mut out = String::new();
        write_object(entries.iter().copied(), IGNORED_FIELDS, &mut out);
        assert_eq!(out, r#"{"a":1,"b":{"x":[true,null],"y":2}}"#);
        let mut sorted = String::new();
        write_object([(&a, &one), (&b, &two)].into_iter(), &[], &mut sorted);
        assert_eq!(sorted, out);
    }

    #[test]
    fn changed_temperature_changes_the_key() {
        let a = json!({"messages":[{"role":"user","content":"hi"}],"temperature":0});
        let b = json!({"messages":[{"role":"user","content":"hi"}],"temperature":0.5});
        assert_ne!(key(&a), key(&b));
    }

    #[test]
    fn namespace_model_and_kind_change_the_key() {
        let body = json!({"input":"x"});
        let a = CacheKey::for_request("a", "m", RequestKind::Chat, &body);
        let b = CacheKey::for_request("b", "m", RequestKind::Chat, &body);
        let c = CacheKey::for_request("a", "n", RequestKind::Chat, &body);
        let d = CacheKey::for_request("a", "m", RequestKind::Embeddings, &body);
        let e = CacheKey::for_request("a", "m", RequestKind::Completion, &body);
        assert_ne!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
        assert_ne!(a.hash(), d.hash());
        assert_ne!(a.hash(), e.hash());
        assert_ne!(d.hash(), e.hash());
    }

    #[test]
    fn nested_ignored_names_are_kept() {
        // Only the top-level `user` is ignored; a message field named user is content.
        let a = json!({"messages":[{"role":"user","content":"hi","user":"a"}]});
        let b = json!({"messages":[{"role":"user","content":"hi","user":"b"}]});
        assert_ne!(key(&a), key(&b));
    }

    #[test]
    fn stored_and_public_forms_round_trip() {
        let k = CacheKey::for_request("ten|ant", "llama3.2:3b*", RequestKind::Chat, &json!({}));
        assert_eq!(k.namespace(), "ten|ant");
        assert_eq!(k.model(), "llama3.2:3b*");
        assert_eq!(k.as_str().matches('|').count(), 2);
        let p = CacheKey::parse_stored(k.as_str()).unwrap();
        assert_eq!(p, k);
        let q = CacheKey::parse_public("ten|ant", k.public()).unwrap();
        assert_eq!(q, k);
        assert!(CacheKey::parse_stored("a|b|zz").is_err());
    }

    #[test]
    fn patterns_match_within_their_namespace_only() {
        let body = json!({});
        let k = CacheKey::for_request("t1", "gpt-4o-mini", RequestKind::Chat, &body);
        assert!(KeyPattern::new("t1", "gpt-*").unwrap().matches(&k));
        assert!(KeyPattern::new("t1", "*").unwrap().matches(&k));
        assert!(KeyPattern::new("t1", "gpt-4?-mini").unwrap().matches(&k));
        assert!(!KeyPattern::new("t2", "*").unwrap().matches(&k));
        assert!(!KeyPattern::new("t1", "gpt-3*").unwrap().matches(&k));
        assert!(!KeyPattern::new("t1", "gpt").unwrap().matches(&k));
        assert!(KeyPattern::new("t1", &"*".repeat(MAX_PATTERN)).is_ok());
        assert!(KeyPattern::new("t1", &"*".repeat(MAX_PATTERN + 1)).is_err());
        assert_eq!(
            KeyPattern::new("t1", "a_%*?").unwrap().sql_like(),
            "a\\_\\%%_"
        );
        assert_eq!(
            KeyPattern::new("n*s", "m[1]*").unwrap().redis_match("p:"),
            "p:n%2As|m%5B1%5D*|*"
        );
    }

    /// A `cache.l2.key_prefix` holding glob characters is matched literally.
    /// Before, the prefix went into the `SCAN MATCH` pattern unescaped: with
    /// a `\` in it, pattern invalidation matched none of the stored keys
    /// (Redis reads `\x` as a literal `x`), so every entry stayed.
    #[test]
    fn a_key_prefix_with_glob_characters_is_matched_literally() {
        let body = json!({});
        let k = CacheKey::for_request("t1", "gpt-4o", RequestKind::Chat, &body);
        let p = KeyPattern::new("t1", "gpt-*").unwrap();
        for prefix in ["uat\\prod:", "a*b?[c]:", "plain:"] {
            let pat = p.redis_match(prefix);
            let stored = format!("{prefix}{}", k.as_str());
            assert!(
                redis_glob(pat.as_bytes(), stored.as_bytes()),
                "{pat} must match {stored}"
            );
            let other = format!("{prefix}x{}", k.as_str());
            assert!(
                !redis_glob(pat.as_bytes(), other.as_bytes()),
                "{pat} vs {other}"
            );
        }
        assert_eq!(p.redis_match("a\\b:"), "a\\\\b:t1|gpt-*|*");
    }

    /// Redis's glob (`stringmatchlen`) for `*`, `?` and `\` escapes, enough
    /// to check the patterns built here.
    fn redis_glob(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| redis_glob(rest, &s[i..])),
            Some((b'?', rest)) => !s.is_empty() && redis_glob(rest, &s[1..]),
            Some((b'\\', rest)) if !rest.is_empty() => {
                s.first() == Some(&rest[0]) && redis_glob(&rest[1..], &s[1..])
            }
            Some((c, rest)) => s.first() == Some(c) && redis_glob(rest, &s[1..]),
        }
    }

    #[test]
    fn glob_basics() {
        assert!(glob_match("", ""));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("?b", "ab"));
        assert!(!glob_match("?b", "b"));
        assert!(!glob_match("a?", "abc"));
    }

    /// `?` is one character in every level: L3's SQL (`_`, SQLite `GLOB`'s
    /// `?`) always counted characters, while L1 counted bytes (so `?` never
    /// matched `é`, two bytes) and Redis counted stored bytes (an escaped
    /// `*` is three). The same `DELETE /v1/cache` pattern removed an entry
    /// from L3 and left it in L1 and L2.
    #[test]
    fn question_mark_is_one_character_at_every_level() {
        assert!(glob_match("mod?le", "modèle"));
        assert!(glob_match("??", "日本"));
        assert!(!glob_match("?", "日本"));
        assert!(glob_match("*本", "日本"));
        assert!(glob_match("m*è?e", "modèle"));
        assert!(!glob_match("m*è?e", "modèe"));
        let body = json!({});
        for model in ["modèle", "mod*le", "mod?le", "mod%le"] {
            let k = CacheKey::for_request("t1", model, RequestKind::Chat, &body);
            let p = KeyPattern::new("t1", "mod?le").unwrap();
            assert!(p.matches(&k), "mod?le must match {model}");
            assert!(p.redis_overmatches());
            let stored = format!("p:{}", k.as_str());
            assert!(
                redis_glob(p.redis_match("p:").as_bytes(), stored.as_bytes()),
                "the SCAN pattern must find {stored}"
            );
        }
        // What Redis over-matches is filtered by `matches`.
        let long = CacheKey::for_request("t1", "modXXle", RequestKind::Chat, &body);
        let p = KeyPattern::new("t1", "mod?le").unwrap();
        assert!(redis_glob(
            p.redis_match("p:").as_bytes(),
            format!("p:{}", long.as_str()).as_bytes()
        ));
        assert!(!p.matches(&long));
        assert!(!KeyPattern::new("t1", "mod*").unwrap().redis_overmatches());
    }

    proptest! {
        #[test]
        fn key_ignores_object_key_order(entries in proptest::collection::btree_map("[a-z]{1,6}", 0i64..100, 1..40)) {
            let mut fwd = serde_json::Map::new();
            for (k, v) in entries.iter() { fwd.insert(k.clone(), json!(v)); }
            let mut rev = serde_json::Map::new();
            for (k, v) in entries.iter().rev() { rev.insert(k.clone(), json!(v)); }
            let a = key(&json!({"messages": fwd, "x": 1}));
            let b = key(&json!({"x": 1, "messages": rev}));
            prop_assert_eq!(a, b);
        }

        #[test]
        fn strings_are_written_as_serde_json_escapes_them(s in "\\PC*|[a-z\"\\\\\u{0}-\u{1f}\u{7f}é/]{0,12}") {
            let mut out = String::new();
            write_string(&s, &mut out);
            prop_assert_eq!(out, serde_json::to_string(&s).unwrap());
        }

        #[test]
        fn glob_star_matches_every_suffix(prefix in "[a-zé日]{0,5}", rest in "[a-z:.é日-]{0,8}") {
            let pat = format!("{prefix}*");
            let text = format!("{prefix}{rest}");
            prop_assert!(glob_match(&pat, &text));
        }

        #[test]
        fn question_marks_count_characters(text in "[a-zé日%*|]{0,8}") {
            let n = text.chars().count();
            prop_assert!(glob_match(&"?".repeat(n), &text));
            prop_assert!(!glob_match(&"?".repeat(n + 1), &text));
            let k = CacheKey::for_request("t", &text, RequestKind::Chat, &json!({}));
            prop_assert_eq!(KeyPattern::new("t", &"?".repeat(n.max(1))).unwrap().matches(&k), n >= 1);
        }
    }
}
