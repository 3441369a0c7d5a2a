//! Request bodies and query strings of the HTTP API, and their validation.
//!
//! Everything is checked before anything is written; a bad value is reported
//! with its path (`memories[3].content`).

use crate::error::{MemoryError, Result};
use crate::types::{Cursor, Filter, TagMode};
use serde::Deserialize;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Longest id-like string (`user_id`, `agent_id`, `run_id`, `kind`, a tag).
pub const MAX_ID_BYTES: usize = 256;
/// Most tags on one memory.
pub const MAX_TAGS: usize = 64;
/// Largest metadata object, serialized.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Most JSON values in a search's metadata filter: each key's value, and
/// each value inside an array or object, counts. (SQLite compares each one
/// in an expression of its own; the filter must stay inside its limits.)
pub const MAX_FILTER_VALUES: usize = 100;
/// Deepest nesting of a value in a search's metadata filter (a key's value
/// is at depth 1). SQLite nests a subquery per level, each costing some 70
/// of its expression depth limit (1,000): 10 levels of 12 values still fit.
pub const MAX_FILTER_DEPTH: usize = 8;
/// Largest `top_k` / `limit`.
pub const MAX_LIMIT: usize = 1000;

/// Limits from `[memory]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest content in bytes.
    pub max_content_bytes: usize,
    /// Most items in one batch.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_content_bytes: 32 * 1024,
            max_batch: 1000,
        }
    }
}

/// One memory in a write request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryInput {
    /// Owner (required).
    pub user_id: Option<String>,
    /// Agent.
    pub agent_id: Option<String>,
    /// Run.
    pub run_id: Option<String>,
    /// Kind.
    pub kind: Option<String>,
    /// Text (required).
    pub content: Option<String>,
    /// Tags.
    pub tags: Option<Vec<String>>,
    /// A JSON object.
    pub metadata: Option<Value>,
    /// RFC 3339 expiry.
    pub expires_at: Option<String>,
    /// False: store even when the same content exists (default true).
    pub dedupe: Option<bool>,
}

/// A validated memory to write.
#[derive(Debug, Clone)]
pub struct ValidInput {
    pub(crate) user_id: String,
    pub(crate) agent_id: Option<String>,
    pub(crate) run_id: Option<String>,
    pub(crate) kind: Option<String>,
    pub(crate) content: String,
    pub(crate) tags: Vec<String>,
    pub(crate) metadata: Map<String, Value>,
    pub(crate) expires_at: Option<OffsetDateTime>,
    pub(crate) dedupe: bool,
}

/// A `POST /v1/memories` body: one memory or `{"memories": [...]}`.
#[derive(Debug, Clone)]
pub enum WriteRequest {
    /// One memory.
    One(Box<MemoryInput>),
    /// A batch.
    Batch(Vec<MemoryInput>),
}

impl WriteRequest {
    /// Parses a body, naming the bad field.
    pub fn from_json(v: Value, limits: Limits) -> Result<Self> {
        let Value::Object(mut obj) = v else {
            return Err(MemoryError::invalid("body", "expected a JSON object"));
        };
        match obj.remove("memories") {
            None => parse_item(Value::Object(obj), "").map(|i| WriteRequest::One(Box::new(i))),
            Some(list) => {
                if let Some(k) = obj.keys().next() {
                    return Err(MemoryError::invalid(
                        k.clone(),
                        "unknown field next to `memories`",
                    ));
                }
                let Value::Array(items) = list else {
                    return Err(MemoryError::invalid("memories", "expected an array"));
                };
                if items.is_empty() {
                    return Err(MemoryError::invalid(
                        "memories",
                        "must hold at least one memory",
                    ));
                }
                if items.len() > limits.max_batch {
                    return Err(MemoryError::invalid(
                        "memories",
                        format!(
                            "holds {} memories; at most {} are accepted at once",
                            items.len(),
                            limits.max_batch
                        ),
                    ));
                }
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, it)| parse_item(it, &format!("memories[{i}].")))
                    .collect::<Result<Vec<_>>>()
                    .map(WriteRequest::Batch)
            }
        }
    }
}

fn parse_item(v: Value, prefix: &str) -> Result<MemoryInput> {
    if !v.is_object() {
        let field = prefix.trim_end_matches('.');
        return Err(MemoryError::invalid(
            if field.is_empty() { "body" } else { field },
            "expected a JSON object",
        ));
    }
    serde_json::from_value(v).map_err(|e| {
        let msg = e.to_string();
        let field = msg
            .strip_prefix("unknown field `")
            .or_else(|| msg.strip_prefix("missing field `"))
            .and_then(|r| r.split('`').next())
            .map(str::to_string)
            .or_else(|| {
                [
                    "user_id",
                    "agent_id",
                    "run_id",
                    "kind",
                    "content",
                    "tags",
                    "metadata",
                    "expires_at",
                    "dedupe",
                ]
                .into_iter()
                .find(|f| msg.contains(&format!("`{f}`")))
                .map(str::to_string)
            })
            .unwrap_or_else(|| "body".into());
        MemoryError::invalid(format!("{prefix}{field}"), msg)
    })
}

/// Checks a required id-like string.
pub(crate) fn required_id(v: Option<&str>, field: &str) -> Result<String> {
    match v {
        None => Err(MemoryError::invalid(field, "is required")),
        Some(s) => optional_id(Some(s), field).map(|o| o.unwrap_or_default()),
    }
}

/// Checks an optional id-like string.
pub(crate) fn optional_id(v: Option<&str>, field: &str) -> Result<Option<String>> {
    match v {
        None => Ok(None),
        Some("") => Err(MemoryError::invalid(field, "must not be empty")),
        Some(s) if s.len() > MAX_ID_BYTES => Err(MemoryError::invalid(
            field,
            format!("is longer than {MAX_ID_BYTES} bytes"),
        )),
        Some(s) if s.chars().any(char::is_control) => Err(MemoryError::invalid(
            field,
            "must not hold control characters",
        )),
        Some(s) => Ok(Some(s.to_string())),
    }
}

pub(crate) fn content(v: Option<&str>, field: &str, limits: Limits) -> Result<String> {
    let Some(c) = v else {
        return Err(MemoryError::invalid(field, "is required"));
    };
    if c.trim().is_empty() {
        return Err(MemoryError::invalid(field, "must not be empty"));
    }
    if c.contains('\0') {
        return Err(no_nul(field));
    }
    if c.len() > limits.max_content_bytes {
        return Err(MemoryError::invalid(
            field,
            format!(
                "is {} bytes; the limit is {} bytes",
                c.len(),
                limits.max_content_bytes
            ),
        ));
    }
    Ok(c.to_string())
}

pub(crate) fn tags(v: Option<&[String]>, field: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for (i, t) in v.unwrap_or_default().iter().enumerate() {
        let f = format!("{field}[{i}]");
        out.extend(optional_id(Some(t), &f)?);
    }
    out.sort();
    out.dedup();
    if out.len() > MAX_TAGS {
        return Err(MemoryError::invalid(
            field,
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    Ok(out)
}

/// A NUL character (U+0000) in a text `field`: PostgreSQL stores neither it
/// in `TEXT` nor `\u0000` in `jsonb`, so both stores refuse it alike.
fn no_nul(field: &str) -> MemoryError {
    MemoryError::invalid(field, "must not hold a NUL character (U+0000)")
}

/// Whether any key or string value of `m`, at any depth, holds a NUL.
fn holds_nul(m: &Map<String, Value>) -> bool {
    let mut left: Vec<(&String, &Value)> = m.iter().collect();
    while let Some((k, v)) = left.pop() {
        if k.contains('\0') {
            return true;
        }
        let mut values: Vec<&Value> = vec![v];
        while let Some(v) = values.pop() {
            match v {
                Value::String(s) if s.contains('\0') => return true,
                Value::Array(a) => values.extend(a),
                Value::Object(o) => left.extend(o),
                _ => {}
            }
        }
    }
    false
}

pub(crate) fn metadata(v: Option<Value>, field: &str) -> Result<Map<String, Value>> {
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => {
            if holds_nul(&m) {
                return Err(no_nul(field));
            }
            let size = serde_json::to_string(&m)
                .map(|s| s.len())
                .unwrap_or(usize::MAX);
            if size > MAX_METADATA_BYTES {
                return Err(MemoryError::invalid(
                    field,
                    format!("is larger than {MAX_METADATA_BYTES} bytes"),
                ));
            }
            Ok(m)
        }
        Some(_) => Err(MemoryError::invalid(field, "must be a JSON object")),
    }
}

/// Checks a metadata filter's size (see [`MAX_FILTER_VALUES`] and
/// [`MAX_FILTER_DEPTH`]).
fn filter_metadata(v: Option<Value>, field: &str) -> Result<Map<String, Value>> {
    let m = metadata(v, field)?;
    let mut left: Vec<(&Value, usize)> = m.values().map(|v| (v, 1)).collect();
    let mut count = 0;
    while let Some((v, depth)) = left.pop() {
        count += 1;
        if count > MAX_FILTER_VALUES {
            return Err(MemoryError::invalid(
                field,
                format!("holds more than {MAX_FILTER_VALUES} values"),
            ));
        }
        if depth > MAX_FILTER_DEPTH {
            return Err(MemoryError::invalid(
                field,
                format!("nests values more than {MAX_FILTER_DEPTH} deep"),
            ));
        }
        match v {
            Value::Array(a) => left.extend(a.iter().map(|v| (v, depth + 1))),
            Value::Object(o) => left.extend(o.values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    Ok(m)
}

/// Parses an RFC 3339 time.
/// Converted to UTC and truncated to whole microseconds, as the stores keep
/// it, so what a write answers is what a later read returns, to the letter.
pub fn time(v: Option<&str>, field: &str) -> Result<Option<OffsetDateTime>> {
    v.map(|s| {
        let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
            MemoryError::invalid(field, format!("`{s}` is not an RFC 3339 time: {e}"))
        })?;
        let t = t
            .checked_to_offset(UtcOffset::UTC)
            .ok_or_else(|| MemoryError::invalid(field, format!("`{s}` is out of range in UTC")))?;
        t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
            .map_err(|e| MemoryError::invalid(field, format!("`{s}`: {e}")))
    })
    .transpose()
}

pub(crate) fn validate(item: MemoryInput, prefix: &str, limits: Limits) -> Result<ValidInput> {
    let f = |n: &str| format!("{prefix}{n}");
    Ok(ValidInput {
        user_id: required_id(item.user_id.as_deref(), &f("user_id"))?,
        agent_id: optional_id(item.agent_id.as_deref(), &f("agent_id"))?,
        run_id: optional_id(item.run_id.as_deref(), &f("run_id"))?,
        kind: optional_id(item.kind.as_deref(), &f("kind"))?,
        content: content(item.content.as_deref(), &f("content"), limits)?,
        tags: tags(item.tags.as_deref(), &f("tags"))?,
        metadata: metadata(item.metadata, &f("metadata"))?,
        expires_at: time(item.expires_at.as_deref(), &f("expires_at"))?,
        dedupe: item.dedupe.unwrap_or(true),
    })
}

/// A `PATCH /v1/memories/{id}` body.
#[derive(Debug, Clone, Default)]
pub struct PatchInput {
    pub(crate) content: Option<String>,
    pub(crate) tags: Option<Vec<String>>,
    pub(crate) metadata: Option<Map<String, Value>>,
    pub(crate) expires_at: Option<Option<OffsetDateTime>>,
}

impl PatchInput {
    /// Parses and checks a body (`expires_at: null` clears the expiry).
    pub fn from_json(v: Value, limits: Limits) -> Result<Self> {
        let Value::Object(obj) = v else {
            return Err(MemoryError::invalid("body", "expected a JSON object"));
        };
        let mut p = PatchInput::default();
        for (k, v) in obj {
            match k.as_str() {
                "content" => match v {
                    Value::String(s) => p.content = Some(content(Some(&s), "content", limits)?),
                    _ => return Err(MemoryError::invalid("content", "must be a string")),
                },
                "tags" => {
                    let list: Vec<String> = serde_json::from_value(v)
                        .map_err(|_| MemoryError::invalid("tags", "must be an array of strings"))?;
                    p.tags = Some(tags(Some(&list), "tags")?);
                }
                "metadata" => match v {
                    Value::Object(_) => p.metadata = Some(metadata(Some(v), "metadata")?),
                    _ => return Err(MemoryError::invalid("metadata", "must be a JSON object")),
                },
                "expires_at" => match v {
                    Value::Null => p.expires_at = Some(None),
                    Value::String(s) => p.expires_at = Some(time(Some(&s), "expires_at")?),
                    _ => {
                        return Err(MemoryError::invalid(
                            "expires_at",
                            "must be an RFC 3339 string or null",
                        ));
                    }
                },
                other => {
                    return Err(MemoryError::invalid(
                        other,
                        "unknown field; expected content, tags, metadata or expires_at",
                    ));
                }
            }
        }
        if p.content.is_none() && p.tags.is_none() && p.metadata.is_none() && p.expires_at.is_none()
        {
            return Err(MemoryError::invalid("body", "nothing to change"));
        }
        Ok(p)
    }
}

/// `GET /v1/memories` query string (all text, so a bad value names its field).
/// `tags` may be given more than once (`tags=a&tags=b`); each value is a
/// comma-separated list. Any other parameter may be given once.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    /// Owner (required).
    pub user_id: Option<String>,
    /// Only this agent.
    pub agent_id: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Tags, one entry per `tags` parameter, each comma-separated (the
    /// pieces are trimmed; empty ones are left out).
    pub tags: Vec<String>,
    /// `any` (default) or `all`.
    pub tag_mode: Option<String>,
    /// RFC 3339 lower bound on `created_at`.
    pub since: Option<String>,
    /// RFC 3339 upper bound on `created_at`.
    pub until: Option<String>,
    /// Page size (default 50, at most 1000).
    pub limit: Option<String>,
    /// From a previous page.
    pub cursor: Option<String>,
}

/// The parameters of [`ListParams`], as its errors name them.
const LIST_FIELDS: &[&str] = &[
    "user_id", "agent_id", "kind", "tags", "tag_mode", "since", "until", "limit", "cursor",
];

impl<'de> Deserialize<'de> for ListParams {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_map(ListParamsVisitor)
    }
}

struct ListParamsVisitor;

impl<'de> serde::de::Visitor<'de> for ListParamsVisitor {
    type Value = ListParams;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("list parameters")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<ListParams, A::Error> {
        use serde::de::Error;
        let mut p = ListParams::default();
        let mut seen = [false; LIST_FIELDS.len()];
        while let Some(key) = map.next_key::<String>()? {
            let Some(i) = LIST_FIELDS.iter().position(|f| *f == key) else {
                return Err(A::Error::unknown_field(&key, LIST_FIELDS));
            };
            let name = LIST_FIELDS[i];
            if name == "tags" {
                p.tags.extend(map.next_value::<Texts>()?.0);
                continue;
            }
            if std::mem::replace(&mut seen[i], true) {
                return Err(A::Error::duplicate_field(name));
            }
            let value = map.next_value::<Text>()?.0;
            let slot = match name {
                "user_id" => &mut p.user_id,
                "agent_id" => &mut p.agent_id,
                "kind" => &mut p.kind,
                "tag_mode" => &mut p.tag_mode,
                "since" => &mut p.since,
                "until" => &mut p.until,
                "limit" => &mut p.limit,
                "cursor" => &mut p.cursor,
                _ => continue,
            };
            *slot = value;
        }
        Ok(p)
    }
}

/// A text parameter (`null` in JSON: absent).
struct Text(Option<String>);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Text, E> {
                Ok(Text(Some(v.to_string())))
            }
            fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_none<E: serde::de::Error>(self) -> std::result::Result<Text, E> {
                Ok(Text(None))
            }
            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<Text, D::Error> {
                Text::deserialize(d)
            }
        }
        d.deserialize_any(V)
    }
}

/// The value of one `tags` parameter: a string, or (in JSON) an array of them.
struct Texts(Vec<String>);

impl<'de> Deserialize<'de> for Texts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Texts;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Texts, E> {
                Ok(Texts(vec![v.to_string()]))
            }
            fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Texts, E> {
                Ok(Texts(Vec::new()))
            }
            fn visit_none<E: serde::de::Error>(self) -> std::result::Result<Texts, E> {
                Ok(Texts(Vec::new()))
            }
            fn visit_some<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<Texts, D::Error> {
                Texts::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Texts, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Texts(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl ListParams {
    /// Checks the parameters.
    pub fn validate(self) -> Result<crate::types::ListQuery> {
        let tags: Vec<String> = self
            .tags
            .iter()
            .flat_map(|t| t.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let filter = Filter {
            user_id: required_id(self.user_id.as_deref(), "user_id")?,
            agent_id: optional_id(self.agent_id.as_deref(), "agent_id")?,
            kind: optional_id(self.kind.as_deref(), "kind")?,
            tags: self::tags(Some(&tags), "tags")?,
            tag_mode: self
                .tag_mode
                .as_deref()
                .map(|m| TagMode::parse(m, "tag_mode"))
                .transpose()?
                .unwrap_or_default(),
            since: time(self.since.as_deref(), "since")?,
            until: time(self.until.as_deref(), "until")?,
            metadata: Map::new(),
        };
        let limit = match self.limit.as_deref() {
            None => 50,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(MemoryError::invalid(
                        "limit",
                        format!("must be an integer from 1 to {MAX_LIMIT}"),
                    ));
                }
            },
        };
        let cursor = self.cursor.as_deref().map(Cursor::decode).transpose()?;
        Ok(crate::types::ListQuery {
            filter,
            limit,
            cursor,
        })
    }
}

/// Search mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    /// Reciprocal rank fusion of semantic and keyword.
    Hybrid,
    /// Vector similarity only.
    Semantic,
    /// Full-text only.
    Keyword,
}

/// `POST /v1/memories/search` body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchInput {
    /// Owner (required).
    pub user_id: Option<String>,
    /// What to look for (required).
    pub query: Option<String>,
    /// How many results (default 10).
    pub top_k: Option<usize>,
    /// `hybrid` (default), `semantic` or `keyword`.
    pub mode: Option<String>,
    /// Tags to match.
    pub tags: Option<Vec<String>>,
    /// `any` or `all`.
    pub tag_mode: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this agent.
    pub agent_id: Option<String>,
    /// RFC 3339 lower bound on `created_at`.
    pub since: Option<String>,
    /// RFC 3339 upper bound on `created_at`.
    pub until: Option<String>,
    /// Metadata keys that must equal these values.
    pub metadata: Option<Value>,
    /// Drop results scoring below this: the cosine similarity to the query
    /// in semantic and hybrid mode (in hybrid, a candidate without an
    /// embedding fails), the keyword score (in `[0, 1)`, see
    /// [`Store::keyword`](crate::Store::keyword)) in keyword mode.
    pub min_score: Option<f64>,
}

/// A checked search.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// Filters (user included).
    pub filter: Filter,
    /// The text.
    pub query: String,
    /// How many results.
    pub top_k: usize,
    /// Mode.
    pub mode: SearchMode,
    /// Score threshold.
    pub min_score: Option<f64>,
}

impl SearchInput {
    /// Checks the body.
    pub fn validate(self, limits: Limits) -> Result<SearchQuery> {
        let mode = match self.mode.as_deref() {
            None | Some("hybrid") => SearchMode::Hybrid,
            Some("semantic") => SearchMode::Semantic,
            Some("keyword") => SearchMode::Keyword,
            Some(m) => {
                return Err(MemoryError::invalid(
                    "mode",
                    format!("unknown mode `{m}`; expected hybrid, semantic or keyword"),
                ));
            }
        };
        let top_k = self.top_k.unwrap_or(10);
        if !(1..=MAX_LIMIT).contains(&top_k) {
            return Err(MemoryError::invalid(
                "top_k",
                format!("must be from 1 to {MAX_LIMIT}"),
            ));
        }
        if let Some(s) = self.min_score
            && !s.is_finite()
        {
            return Err(MemoryError::invalid("min_score", "must be a finite number"));
        }
        let filter = Filter {
            user_id: required_id(self.user_id.as_deref(), "user_id")?,
            agent_id: optional_id(self.agent_id.as_deref(), "agent_id")?,
            kind: optional_id(self.kind.as_deref(), "kind")?,
            tags: tags(self.tags.as_deref(), "tags")?,
            tag_mode: self
                .tag_mode
                .as_deref()
                .map(|m| TagMode::parse(m, "tag_mode"))
                .transpose()?
                .unwrap_or_default(),
            since: time(self.since.as_deref(), "since")?,
            until: time(self.until.as_deref(), "until")?,
            metadata: filter_metadata(self.metadata, "metadata")?,
        };
        Ok(SearchQuery {
            query: content(self.query.as_deref(), "query", limits)?,
            filter,
            top_k,
            mode,
            min_score: self.min_score,
        })
    }
}
