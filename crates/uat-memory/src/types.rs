//! Domain types: a memory, what a write carries, list and search queries.

use crate::error::{MemoryError, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

/// One stored memory, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// UUIDv7.
    pub id: Uuid,
    /// The owner.
    pub user_id: String,
    /// The agent that wrote it.
    pub agent_id: Option<String>,
    /// The run (session) it was written in.
    pub run_id: Option<String>,
    /// Free text such as `fact` or `episode`.
    pub kind: Option<String>,
    /// The text.
    pub content: String,
    /// A set of tags, sorted.
    pub tags: Vec<String>,
    /// A JSON object.
    pub metadata: Map<String, Value>,
    /// When it was written.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When it stops being returned.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
}

/// A memory to write, already validated by the service.
#[derive(Debug, Clone)]
pub struct NewRow {
    /// The memory as it will be stored when it is not a duplicate. The store
    /// replaces `created_at` and `updated_at` with the time of the insert
    /// (taken inside its transaction, after any embedding was made).
    pub memory: Memory,
    /// Hash of (agent, run, content): the dedupe lookup key within a user.
    pub content_hash: String,
    /// Return an existing memory with the same hash instead of inserting,
    /// after applying this write's attributes to it (see
    /// [`Store::insert`](crate::Store::insert)).
    pub dedupe: bool,
    /// Embedding of the content, when a model is configured.
    pub embedding: Option<Embedding>,
}

/// An embedding with the model that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// Model name.
    pub model: String,
    /// The vector.
    pub vector: Vec<f32>,
}

/// The result of writing one memory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WriteOutcome {
    /// The stored memory (the existing one when deduplicated, with this
    /// write's attributes applied).
    #[serde(flatten)]
    pub memory: Memory,
    /// True when an existing memory was returned instead of a new one.
    pub deduplicated: bool,
    /// True when the memory has no embedding of the service's model yet
    /// although one is configured: the embedder failed or was overloaded
    /// during the write, which stored the memory without one. Keyword search
    /// finds it at once; semantic search (and the semantic half of hybrid
    /// search) once the background backfill, woken by the write, has embedded
    /// it. For a deduplicated write it says whether the existing memory
    /// returned has an embedding of the model. Serialized only when true;
    /// always false without an embedder. The stores leave it false; the
    /// service sets it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub embedding_pending: bool,
}

/// The answer of [`Store::nearest_exact`](crate::Store::nearest_exact).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExactHits {
    /// `(id, cosine)`, best first.
    pub hits: Vec<(Uuid, f32)>,
    /// True when more memories matched than were scanned.
    pub more: bool,
}

/// A resolved change to one memory (the service fills `content_hash` and
/// `embedding` when the content changes).
#[derive(Debug, Clone, Default)]
pub struct Patch {
    /// New content.
    pub content: Option<String>,
    /// New content hash (with `content`).
    pub content_hash: Option<String>,
    /// The new content's embedding (with `content`). With `content` the
    /// stores always remove the old content's embedding (so the vector index
    /// drops the memory) and store this one when it is given: `None` (no
    /// model configured, or the embedder failed) leaves the memory without
    /// an embedding, for the backfill to embed. Ignored without `content`.
    pub embedding: Option<Embedding>,
    /// New tag set.
    pub tags: Option<Vec<String>>,
    /// New metadata object.
    pub metadata: Option<Map<String, Value>>,
    /// New expiry (`Some(None)` clears it).
    pub expires_at: Option<Option<OffsetDateTime>>,
}

/// How several tags combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TagMode {
    /// At least one tag.
    #[default]
    Any,
    /// Every tag.
    All,
}

impl TagMode {
    /// Parses `any` / `all`.
    pub fn parse(s: &str, field: &str) -> Result<Self> {
        match s {
            "any" => Ok(TagMode::Any),
            "all" => Ok(TagMode::All),
            _ => Err(MemoryError::invalid(
                field,
                format!("unknown tag_mode `{s}`; expected `any` or `all`"),
            )),
        }
    }
}

/// Filters shared by list, keyword and semantic search. Always scoped to one user.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The owner (required).
    pub user_id: String,
    /// Only this agent.
    pub agent_id: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Tags to match.
    pub tags: Vec<String>,
    /// How `tags` combine.
    pub tag_mode: TagMode,
    /// Created at or after.
    pub since: Option<OffsetDateTime>,
    /// Created at or before.
    pub until: Option<OffsetDateTime>,
    /// Metadata keys that must equal these values.
    pub metadata: Map<String, Value>,
}

/// A page request.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// What to list.
    pub filter: Filter,
    /// Page size.
    pub limit: usize,
    /// Continue after this position.
    pub cursor: Option<Cursor>,
}

/// One page, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// The memories.
    pub memories: Vec<Memory>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A keyset position: the (created_at, id) of the last memory returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` in microseconds since the epoch.
    pub created_us: i64,
    /// The id.
    pub id: Uuid,
}

impl Cursor {
    /// The cursor after `m`.
    pub fn after(m: &Memory) -> Self {
        Cursor {
            created_us: to_micros(m.created_at),
            id: m.id,
        }
    }

    /// Opaque text form.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            "{}.{}",
            self.created_us,
            self.id.simple()
        ))
    }

    /// Parses the opaque text form. The position must be a time both stores
    /// can hold (from the epoch through the year 9999): a forged cursor far
    /// outside it is the caller's mistake, not a database error.
    pub fn decode(s: &str) -> Result<Self> {
        let bad = || MemoryError::invalid("cursor", "not a cursor returned by this API");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (a, b) = text.split_once('.').ok_or_else(bad)?;
        let created_us: i64 = a.parse().map_err(|_| bad())?;
        if !(0..=Self::MAX_CREATED_US).contains(&created_us) {
            return Err(bad());
        }
        Ok(Cursor {
            created_us,
            id: Uuid::parse_str(b).map_err(|_| bad())?,
        })
    }

    /// The last microsecond of the year 9999 (`9999-12-31T23:59:59.999999Z`):
    /// the latest time a cursor may hold (the `time` crate's range, inside
    /// PostgreSQL's).
    pub const MAX_CREATED_US: i64 = 253_402_300_799_999_999;
}

/// One history record.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    /// `create`, `update` or `delete`.
    pub operation: String,
    /// The memory before the change.
    pub old_value: Option<Value>,
    /// The memory after the change.
    pub new_value: Option<Value>,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A change-log record, tailed by the vector index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Position in the log (strictly increasing in commit order).
    pub seq: i64,
    /// What happened.
    pub op: ChangeOp,
    /// The memory (absent for [`ChangeOp::DeleteUser`]).
    pub memory_id: Option<Uuid>,
    /// The owner.
    pub user_id: String,
}

/// Kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// Created or updated: re-read the row.
    Upsert,
    /// One memory deleted.
    Delete,
    /// Every memory of the user deleted.
    DeleteUser,
}

impl ChangeOp {
    /// Stored text form.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Upsert => "upsert",
            ChangeOp::Delete => "delete",
            ChangeOp::DeleteUser => "delete_user",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "upsert" => Ok(ChangeOp::Upsert),
            "delete" => Ok(ChangeOp::Delete),
            "delete_user" => Ok(ChangeOp::DeleteUser),
            other => Err(MemoryError::Corrupt(format!("unknown change op `{other}`"))),
        }
    }
}

/// What the vector index holds for one memory.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// The memory id.
    pub id: Uuid,
    /// The owner.
    pub user_id: String,
    /// Agent.
    pub agent_id: Option<String>,
    /// Kind.
    pub kind: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// `created_at` in microseconds.
    pub created_us: i64,
    /// `expires_at` in microseconds.
    pub expires_us: Option<i64>,
    /// The embedding.
    pub embedding: Embedding,
}

/// A live memory without a usable embedding of the current model (none, or
/// another model's), found by [`Store::unembedded`](crate::Store::unembedded)
/// for the embedding backfill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unembedded {
    /// The memory id.
    pub id: Uuid,
    /// The text to embed.
    pub content: String,
    /// Its content hash when read: the embedding is stored only if the
    /// memory still has it (its content did not change meanwhile).
    pub content_hash: String,
}

/// One bounded step of the backfill's scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnembeddedPage {
    /// The memories examined that need an embedding, in id order.
    pub memories: Vec<Unembedded>,
    /// Where the next step starts; `None` when this one reached the end.
    pub next: Option<Uuid>,
}

/// An embedding the backfill made for the content of one memory.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEmbedding {
    /// The memory id.
    pub id: Uuid,
    /// The content hash of the text embedded (see [`Unembedded::content_hash`]).
    pub content_hash: String,
    /// The embedding.
    pub embedding: Embedding,
}

/// Microseconds since the epoch.
pub fn to_micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// The time `us` microseconds after the epoch.
pub fn from_micros(us: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .map_err(|e| MemoryError::Corrupt(format!("timestamp {us}: {e}")))
}

/// The current time, truncated to microseconds (what both databases keep).
pub fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    from_micros(to_micros(t)).unwrap_or(t)
}

/// Encodes an embedding as little-endian f32 bytes.
pub fn vector_to_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Decodes little-endian f32 bytes.
pub fn bytes_to_vector(b: &[u8]) -> Result<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return Err(MemoryError::Corrupt(format!(
            "embedding of {} bytes",
            b.len()
        )));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}
