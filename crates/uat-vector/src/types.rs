//! Public data types: point ids, points, collection settings, search requests and results.

use crate::distance::Metric;
use crate::error::{Result, VectorError};
use crate::filter::Filter;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// Largest accepted `top_k`.
pub const MAX_TOP_K: usize = 1000;
/// Largest accepted dimension.
pub const MAX_DIMENSION: usize = 65_536;

/// Most results one search request may ask for: the sum of `top_k` over
/// the searches of a batch (10 searches of [`MAX_TOP_K`]). Past it the
/// request is refused ([`VectorError::ResponseTooLarge`]) before any search
/// runs: a batch of 1,000 searches of 1,000 results built a response of a
/// million points.
pub const MAX_SEARCH_HITS: usize = 10_000;

/// Most vector components one search request may return with
/// `with_vector`: `top_k × dimension`, summed over the searches of a batch
/// that ask for vectors (16,777,216: 64 MiB of `f32`, some 200 MB as JSON).
/// Checked before any search runs.
pub const MAX_SEARCH_VECTOR_FLOATS: usize = 16 * 1024 * 1024;

/// Most payload bytes (counted as compact JSON) one search request may
/// return, over all its hits: 32 MiB. Counted as the hits are gathered; the
/// request fails once past it ([`VectorError::ResponseTooLarge`]).
pub const MAX_SEARCH_PAYLOAD_BYTES: usize = 32 * 1024 * 1024;

/// A point id: an unsigned integer or a UUID.
///
/// (De)serializes from a JSON number or string; a string must be a valid
/// UUID in any form `uuid` parses (upper case, no hyphens, braces, `urn:`)
/// and is kept (and returned) in canonical form, lowercase and hyphenated,
/// so that every spelling of one UUID is one point. Build UUID ids with
/// [`PointId::uuid`] or [`PointId::parse`], which canonicalize.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PointId {
    /// A numeric id.
    Num(u64),
    /// A UUID, lowercase and hyphenated (`550e8400-e29b-41d4-a716-446655440000`).
    Uuid(String),
}

impl PointId {
    /// Parses a path segment: digits are a numeric id, anything else must be a UUID.
    pub fn parse(s: &str) -> Result<Self> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse::<u64>()
                .map(Self::Num)
                .map_err(|_| VectorError::BadRequest(format!("point id {s:?} is out of range")));
        }
        Self::uuid(s.to_owned())
    }

    /// A UUID id, checked and canonicalized (equality is on the text).
    pub fn uuid(s: String) -> Result<Self> {
        match uuid::Uuid::parse_str(&s) {
            Ok(u) => Ok(Self::Uuid(u.hyphenated().to_string())),
            Err(_) => Err(VectorError::BadRequest(format!(
                "point id {s:?} is neither an unsigned integer nor a UUID"
            ))),
        }
    }

    /// A UUID id read back from the WAL or a snapshot: canonicalized, as
    /// data written before ids were kept canonical may hold other
    /// spellings; text that does not parse (an id built directly as
    /// [`PointId::Uuid`]) is kept as it is rather than made unreadable.
    pub(crate) fn stored_uuid(s: &str) -> Self {
        match uuid::Uuid::parse_str(s) {
            Ok(u) => Self::Uuid(u.hyphenated().to_string()),
            Err(_) => Self::Uuid(s.to_owned()),
        }
    }
}

impl fmt::Display for PointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Num(n) => write!(f, "{n}"),
            Self::Uuid(s) => f.write_str(s),
        }
    }
}

impl From<u64> for PointId {
    fn from(n: u64) -> Self {
        Self::Num(n)
    }
}

impl Serialize for PointId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Num(n) => s.serialize_u64(*n),
            Self::Uuid(u) => s.serialize_str(u),
        }
    }
}

impl<'de> Deserialize<'de> for PointId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PointId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an unsigned integer or a UUID string")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PointId, E> {
                Ok(PointId::Num(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PointId, E> {
                u64::try_from(v)
                    .map(PointId::Num)
                    .map_err(|_| E::custom(format!("point id {v} is negative")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PointId, E> {
                PointId::uuid(v.to_owned()).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A point: id, vector and optional JSON-object payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    /// The id.
    pub id: PointId,
    /// The vector (as stored: cosine collections return it normalized).
    pub vector: Vec<f32>,
    /// A JSON object, or `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// HNSW graph settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HnswConfig {
    /// Links per node on the upper levels (level 0 keeps `2 * m`).
    pub m: usize,
    /// Candidate list size while building. The default, 200 (hnswlib's
    /// customary value): on 50k real 384-d sentence embeddings it lifts
    /// recall@10 at search ef 64 from 0.973 (100) to 0.983, for twice the
    /// build time (12.8 s on two threads); 400 gains only 0.001 more.
    pub ef_construction: usize,
    /// Default candidate list size while searching (a request may override it).
    pub ef_search: usize,
}

impl Default for HnswConfig {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 200,
            ef_search: 64,
        }
    }
}

/// Vector compression used for the graph walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// Full f32 vectors.
    #[default]
    None,
    /// Scalar int8 (one range per collection), rescored against f32.
    Sq8,
    /// One bit per dimension, rescored against f32.
    Binary,
}

/// Kind of a payload index on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadIndexKind {
    /// Exact string match.
    Keyword,
    /// Integer match and range.
    Integer,
    /// Numeric range.
    #[serde(alias = "range")]
    Float,
    /// RFC 3339 datetime range.
    Datetime,
}

/// Settings of a collection, fixed at creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    /// Vector length.
    pub dimension: usize,
    /// Similarity.
    pub metric: Metric,
    /// Graph settings.
    #[serde(default)]
    pub hnsw: HnswConfig,
    /// Compression for the graph walk.
    #[serde(default)]
    pub quantization: Quantization,
    /// Payload keys to index (dotted paths allowed) and how.
    #[serde(default)]
    pub payload_indexes: BTreeMap<String, PayloadIndexKind>,
}

impl CollectionConfig {
    /// A config with default HNSW settings, no quantization, no payload index.
    pub fn new(dimension: usize, metric: Metric) -> Self {
        Self {
            dimension,
            metric,
            hnsw: HnswConfig::default(),
            quantization: Quantization::None,
            payload_indexes: BTreeMap::new(),
        }
    }

    /// Parses a create-collection body, giving [`VectorError::UnknownMetric`]
    /// for a bad metric and [`VectorError::BadConfig`] for anything else.
    pub fn from_json(v: serde_json::Value) -> Result<Self> {
        if let Some(m) = v.get("metric") {
            match m.as_str() {
                Some(s) => {
                    s.parse::<Metric>()?;
                }
                None => return Err(VectorError::UnknownMetric(m.to_string())),
            }
        }
        let mut v = v;
        if let Some(m) = v.get_mut("metric")
            && let Some(s) = m.as_str()
        {
            *m = serde_json::Value::String(s.to_ascii_lowercase());
        }
        let c: Self =
            serde_json::from_value(v).map_err(|e| VectorError::BadConfig(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks the ranges of every setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(VectorError::BadConfig(m.to_owned()));
        if self.dimension == 0 || self.dimension > MAX_DIMENSION {
            return bad(&format!("dimension must be between 1 and {MAX_DIMENSION}"));
        }
        if !(2..=128).contains(&self.hnsw.m) {
            return bad("hnsw.m must be between 2 and 128");
        }
        if !(1..=10_000).contains(&self.hnsw.ef_construction) {
            return bad("hnsw.ef_construction must be between 1 and 10000");
        }
        if !(1..=10_000).contains(&self.hnsw.ef_search) {
            return bad("hnsw.ef_search must be between 1 and 10000");
        }
        for k in self.payload_indexes.keys() {
            if k.is_empty() {
                return bad("payload index key must not be empty");
            }
        }
        Ok(())
    }
}

/// One search.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The query vector.
    pub vector: Vec<f32>,
    /// How many results (1..=1000).
    #[serde(alias = "limit")]
    pub top_k: usize,
    /// Only points matching this filter.
    #[serde(default)]
    pub filter: Option<Filter>,
    /// Candidate list size (defaults to the collection's `ef_search`).
    #[serde(default)]
    pub ef: Option<usize>,
    /// Return payloads (default true).
    #[serde(default = "yes")]
    pub with_payload: bool,
    /// Return vectors (default false).
    #[serde(default)]
    pub with_vector: bool,
}

fn yes() -> bool {
    true
}

impl SearchRequest {
    /// A plain top-k search with defaults.
    pub fn new(vector: Vec<f32>, top_k: usize) -> Self {
        Self {
            vector,
            top_k,
            filter: None,
            ef: None,
            with_payload: true,
            with_vector: false,
        }
    }

    /// Parses a request body, mapping a bad `filter` to [`VectorError::BadFilter`]
    /// and anything else to [`VectorError::BadRequest`]. Ranges are checked by search.
    pub fn from_json(mut v: serde_json::Value) -> Result<Self> {
        let filter = match v.as_object_mut().and_then(|o| o.remove("filter")) {
            None | Some(serde_json::Value::Null) => None,
            Some(f) => Some(Filter::from_json(&f)?),
        };
        let mut r: Self =
            serde_json::from_value(v).map_err(|e| VectorError::BadRequest(e.to_string()))?;
        r.filter = filter;
        Ok(r)
    }
}

/// One search hit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoredPoint {
    /// The id (a UUID in canonical form).
    pub id: PointId,
    /// Cosine/dot: similarity (higher is better); L2: distance (lower is better).
    pub score: f32,
    /// The payload, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// The vector, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
}

/// What to delete.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    /// Delete these ids.
    #[serde(default)]
    pub ids: Option<Vec<PointId>>,
    /// Delete every point matching this filter.
    #[serde(default)]
    pub filter: Option<Filter>,
}

/// Bytes held in memory by a collection, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryUsage {
    /// Full-precision vectors (walked when unquantized; used for rescoring otherwise).
    pub vectors_bytes: usize,
    /// Quantized codes: walked by search in a quantized collection; in an
    /// unquantized one with payload indexes, SQ8 codes read only by the exact
    /// scans of filtered search (0 otherwise).
    pub quantized_bytes: usize,
    /// Graph links.
    pub graph_bytes: usize,
    /// Payloads (approximate) and payload indexes.
    pub payload_bytes: usize,
    /// The index proper: what the graph walk touches (graph + walked vectors).
    pub index_bytes: usize,
}

/// A summary of a collection, for `GET /v1/collections/{name}`.
#[derive(Debug, Clone, Serialize)]
pub struct CollectionInfo {
    /// Name.
    pub name: String,
    /// Live points.
    pub count: usize,
    /// Tombstoned points not yet reclaimed by compaction.
    pub deleted: usize,
    /// Memory in use.
    pub memory: MemoryUsage,
    /// Settings.
    pub config: CollectionConfig,
}

/// Checks a vector's length and values.
pub(crate) fn check_vector(v: &[f32], dim: usize) -> Result<()> {
    if v.len() != dim {
        return Err(VectorError::WrongDimension {
            expected: dim,
            got: v.len(),
        });
    }
    if let Some(index) = v.iter().position(|x| !x.is_finite()) {
        return Err(VectorError::NonFinite { index });
    }
    Ok(())
}

/// Checks `top_k`.
pub(crate) fn check_top_k(k: usize) -> Result<()> {
    if k == 0 || k > MAX_TOP_K {
        return Err(VectorError::BadTopK {
            got: k,
            max: MAX_TOP_K,
        });
    }
    Ok(())
}
