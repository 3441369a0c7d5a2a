//! Extractors whose rejections are OpenAI-shaped `ApiError`s (never axum's
//! plain-text 422): malformed JSON and missing fields are 400 naming the
//! field, an oversized body is 413, a path or query parameter that does not
//! decode is 400.
//!
//! Every body is read by [`read_body`], which also decodes a body sent with
//! `Content-Encoding: gzip` or `deflate` (a large embeddings or vector batch
//! compresses well). The route's limit holds for what the body decodes to as
//! well as for what was sent, so a small compressed body cannot expand past
//! it (413); a coding the server does not decode is a 415 naming the ones it
//! does, and undecodable data a 400.

use crate::error::{ACCEPTED_ENCODINGS, ApiError};
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use std::io::Read;
use std::time::Duration;
use tokio::time::Instant;

/// The limit when a route sets none (axum's own default).
const DEFAULT_LIMIT: usize = 2 * 1024 * 1024;

/// A compressed body up to this size is decoded on the request's task
/// (gzip expands at most ~1,000:1, so to about 1 MiB, a millisecond); a
/// larger one on the blocking pool (tens of milliseconds of CPU at the bulk
/// limit would stall every other request of that worker).
const INLINE_DECODE_MAX: usize = 1024;

/// The body limit of the route, put in the request extensions by the router
/// so a 413 can say what the limit is.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A JSON body deserialized with the path of any bad field reported, and
/// the body's room in the [`ParseBudget`]: bind it (`ApiJson(body, _room)`)
/// so the room is held while the handler runs, as long as the parsed value
/// lives (a `_` pattern would give it back at once).
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T, pub BodyRoom);

/// A large body's room in the [`ParseBudget`] (its bytes, which hold the
/// room), given back when dropped; nothing for a body under
/// [`BUDGETED_BODY`].
#[derive(Debug, Clone, Default)]
pub struct BodyRoom(#[expect(dead_code, reason = "held for its Drop")] Option<Bytes>);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        let value = parse_json(&bytes)?;
        let room = BodyRoom((bytes.len() >= BUDGETED_BODY).then_some(bytes));
        Ok(ApiJson(value, room))
    }
}

/// Reads the whole body within the route's limit; see [`read_body`].
pub async fn body_bytes<S: Send + Sync>(req: Request, _state: &S) -> Result<Bytes, ApiError> {
    let (parts, body) = req.into_parts();
    read_body(&parts, body).await
}

/// The route's body limit ([`BodyLimit`], set by the router).
pub fn route_limit(extensions: &axum::http::Extensions) -> usize {
    extensions.get::<BodyLimit>().map_or(DEFAULT_LIMIT, |l| l.0)
}

/// How slowly a request body may arrive (`server.body_read_timeout` and
/// `server.body_min_rate`), and the app's [`ParseBudget`], put in the
/// request extensions by the router.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    /// Longest wait for the next piece of the body (and for room in the
    /// parse budget).
    pub idle: Duration,
    /// Slowest average pace (bytes per second) once the body has been
    /// arriving for `idle`; 0 for no such check.
    pub min_rate: u64,
    /// Room for large bodies while they are parsed and served.
    pub budget: Option<&'static ParseBudget>,
}

impl BodyPace {
    /// The pace the server's settings ask for, with a parse budget of
    /// `server.parse_budget`. The budget lives as long as the process (one
    /// per app built: one in `uat serve`), so that the pace stays `Copy`
    /// and a request takes no reference count.
    pub fn of(cfg: &uat_config::ServerConfig) -> Self {
        BodyPace {
            idle: cfg.body_read_timeout,
            min_rate: cfg.body_min_rate,
            budget: Some(Box::leak(Box::new(ParseBudget::new(cfg.parse_budget)))),
        }
    }

    /// When the next piece must have arrived by, given the body began at
    /// `start` and `received` bytes came so far: within `idle` of now, and,
    /// with a minimum rate, by the time `received` bytes are no longer
    /// enough (never before `idle` from the start, a grace for slow starts).
    /// The second part says whether the rate is what bounds it.
    fn deadline(&self, start: Instant, now: Instant, received: usize) -> (Instant, bool) {
        let idle = now + self.idle;
        if self.min_rate == 0 {
            return (idle, false);
        }
        // Whole seconds then the rest, so no float and no overflow.
        let (received, rate) = (received as u64, self.min_rate);
        let nanos = u128::from(received % rate) * 1_000_000_000 / u128::from(rate);
        let earned = Duration::from_secs(received / rate)
            + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        let by_rate = start + earned.max(self.idle);
        if by_rate < idle {
            (by_rate, true)
        } else {
            (idle, false)
        }
    }
}

/// Without a [`BodyPace`] extension (a router built by hand): the defaults,
/// without a parse budget.
const DEFAULT_PACE: BodyPace = BodyPace {
    idle: Duration::from_secs(30),
    min_rate: 1024,
    budget: None,
};

/// Bodies at least this large take room in the [`ParseBudget`]; smaller
/// ones (nearly every request) cost it nothing.
pub const BUDGETED_BODY: usize = 256 * 1024;

/// Memory a parsed JSON value takes beyond its text, as the estimate counts
/// it: serde_json's `Value` with an ordered map is 80 bytes, and a chat
/// request is held parsed twice (the tree the cache keys, the typed request
/// the router sends).
const BYTES_PER_VALUE: u64 = 160;

/// Room for large request bodies while they are parsed and served: a
/// weighted semaphore counted in KiB of estimated memory
/// (`server.parse_budget`). Parsed, a body of small JSON values takes many
/// times its size (a 4 MiB `[0,0,...]` about 320 MiB as the chat route
/// holds it), so a few dozen such requests at once could exhaust the
/// machine's memory within every body limit; past the budget they wait.
#[derive(Debug)]
pub struct ParseBudget {
    room: tokio::sync::Semaphore,
    kib: u32,
}

/// A body read under the budget: its room is given back when the last
/// reference to its bytes is dropped (the chat handler holds them until its
/// answer is complete; [`ApiJson`] hands them to the handler as its
/// [`BodyRoom`]).
struct Held {
    bytes: Bytes,
    _room: tokio::sync::SemaphorePermit<'static>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl ParseBudget {
    /// A budget of `bytes` (at least 1 KiB, at most 4 TiB).
    pub fn new(bytes: usize) -> Self {
        let kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1);
        ParseBudget {
            room: tokio::sync::Semaphore::new(kib as usize),
            kib,
        }
    }

    /// Room in KiB a body takes: its bytes and its values, at most the
    /// whole budget (then it waits until it has it alone).
    fn weight(&self, body: &[u8]) -> u32 {
        let values = json_values(body) as u64;
        let bytes = (body.len() as u64).saturating_add(values.saturating_mul(BYTES_PER_VALUE));
        u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.kib)
    }

    /// `body`, holding its room until its last reference is dropped; a 503
    /// when no room came within `wait`.
    async fn hold(&'static self, body: Bytes, wait: Duration) -> Result<Bytes, ApiError> {
        let (body, kib) = tokio::task::spawn_blocking(move || {
            let kib = self.weight(&body);
            (body, kib)
        })
        .await
        .map_err(|e| ApiError::internal(format!("weighing the request body failed: {e}")))?;
        let room = match tokio::time::timeout(wait, self.room.acquire_many(kib)).await {
            Ok(Ok(room)) => room,
            // Never closed: the semaphore lives as long as the process.
            Ok(Err(_)) | Err(_) => {
                return Err(ApiError::overloaded(
                    format!(
                        "the server is parsing other large request bodies (this one needs about {} MiB of its {} MiB parse budget); retry shortly",
                        kib.div_ceil(1024),
                        self.kib / 1024
                    ),
                    1,
                ));
            }
        };
        Ok(Bytes::from_owner(Held {
            bytes: body,
            _room: room,
        }))
    }
}

/// Roughly how many JSON values `body` holds: its separators and openings
/// outside strings, plus one. Exact for valid JSON up to keys (each key
/// counts as a value, which it costs about as much as).
fn json_values(body: &[u8]) -> usize {
    let mut n = 1;
    let (mut in_str, mut escaped) = (false, false);
    for &c in body {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_str = false;
            }
        } else {
            match c {
                b'"' => in_str = true,
                b',' | b'[' | b'{' | b':' => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// A body's content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
    Deflate,
}

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }
}

/// The coding of a body from its `Content-Encoding` (names are
/// case-insensitive; `identity` is no coding; one coding at most).
fn coding(headers: &HeaderMap) -> Result<Coding, ApiError> {
    let mut out = Coding::Identity;
    for v in headers.get_all(header::CONTENT_ENCODING) {
        let v = v
            .to_str()
            .map_err(|_| ApiError::unsupported_encoding("Content-Encoding is not ASCII text"))?;
        for c in v.split(',').map(str::trim) {
            let this = if c.is_empty() || c.eq_ignore_ascii_case("identity") {
                continue;
            } else if c.eq_ignore_ascii_case("gzip") || c.eq_ignore_ascii_case("x-gzip") {
                Coding::Gzip
            } else if c.eq_ignore_ascii_case("deflate") {
                Coding::Deflate
            } else {
                return Err(ApiError::unsupported_encoding(format!(
                    "Content-Encoding `{c}` is not supported; send one of: {ACCEPTED_ENCODINGS}"
                )));
            };
            if out != Coding::Identity {
                return Err(ApiError::unsupported_encoding(format!(
                    "a body encoded more than once (Content-Encoding `{}, {c}`) is not supported; send one of: {ACCEPTED_ENCODINGS}",
                    out.name()
                )));
            }
            out = this;
        }
    }
    Ok(out)
}

/// Reads a whole body of at most the route's limit (413 beyond it),
/// decoded when the headers name a content coding (the decoded body is held
/// to the same limit). A client that sends nothing for the body read
/// timeout, or sends it slower than the minimum rate, gets a 408.
pub async fn read_body(parts: &axum::http::request::Parts, body: Body) -> Result<Bytes, ApiError> {
    let limit = route_limit(&parts.extensions);
    let pace = parts
        .extensions
        .get::<BodyPace>()
        .copied()
        .unwrap_or(DEFAULT_PACE);
    let coding = coding(&parts.headers)?;
    let bytes = collect(body, limit, pace).await?;
    let bytes = if coding == Coding::Identity {
        bytes
    } else if bytes.len() <= INLINE_DECODE_MAX {
        decode(coding, &bytes, limit)?
    } else {
        tokio::task::spawn_blocking(move || decode(coding, &bytes, limit))
            .await
            .map_err(|e| ApiError::internal(format!("decoding the request body failed: {e}")))??
    };
    match pace.budget {
        Some(budget) if bytes.len() >= BUDGETED_BODY => budget.hold(bytes, pace.idle).await,
        _ => Ok(bytes),
    }
}

/// Collects a body of at most `limit` bytes at the pace `pace` asks for.
async fn collect(body: Body, limit: usize, pace: BodyPace) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    if http_body::Body::size_hint(&body)
        .exact()
        .is_some_and(|n| n > limit as u64)
    {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut body = body;
    let mut gathered = uat_types::Gather::default();
    let start = Instant::now();
    loop {
        let (deadline, by_rate) = pace.deadline(start, Instant::now(), gathered.len());
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) if by_rate => {
                return Err(ApiError::body_too_slow(
                    gathered.len(),
                    start.elapsed(),
                    pace.min_rate,
                ));
            }
            Err(_) => return Err(ApiError::body_timeout(pace.idle)),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(format!(
                    "cannot read request body: {e}"
                )));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if gathered.len() + data.len() > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        gathered.push(data);
    }
    Ok(gathered.finish())
}

/// Decodes a gzip or deflate (zlib) body, stopping one byte past `limit`.
fn decode(coding: Coding, data: &[u8], limit: usize) -> Result<Bytes, ApiError> {
    let mut reader: Box<dyn Read + '_> = match coding {
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
        Coding::Deflate => Box::new(flate2::read::ZlibDecoder::new(data)),
        Coding::Identity => return Ok(Bytes::copy_from_slice(data)),
    };
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    if let Err(e) = reader.by_ref().take(cap).read_to_end(&mut out) {
        return Err(ApiError::bad_request(format!(
            "request body is not valid {} data (Content-Encoding: {}): {e}",
            coding.name(),
            coding.name()
        ))
        .with_param("content-encoding"));
    }
    if out.len() > limit {
        let mut e = ApiError::payload_too_large(limit);
        e.message = format!(
            "request body decodes ({}) to more than the limit of {limit} bytes",
            coding.name()
        );
        return Err(e);
    }
    Ok(Bytes::from(out))
}

/// Deserializes JSON, reporting the path of the bad field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "request body is empty; expected a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(path_error)
}

/// Maps a deserialization error to a 400 naming the bad field: its path when
/// known, the missing field's name as `param`, else "malformed JSON".
pub fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let msg = inner.to_string();
    if path == "." || path.is_empty() {
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("malformed JSON: {msg}"))
        } else {
            // e.g. "missing field `model`": name the field as param.
            let mut err = ApiError::bad_request(msg.clone());
            if let Some(f) = missing_field(&msg) {
                err.param = Some(f.to_string());
            }
            err
        }
    } else {
        ApiError::invalid_field(path.clone(), format!("invalid value at `{path}`: {msg}"))
    }
}

fn missing_field(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// Path parameters, with a 400 in the OpenAI shape naming the parameter
/// (not axum's plain-text rejection) when one does not decode: a segment
/// that is not UTF-8 once percent-decoded (`%C0`), or text where a number
/// is expected.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| ApiPath(v))
            .map_err(path_rejection)
    }
}

/// The client's bad parameter is a 400 naming it; what axum reports as its
/// own fault (a route whose parameters do not fit the handler's type) is
/// ours, a 500.
fn path_rejection(rejection: PathRejection) -> ApiError {
    use axum::extract::path::ErrorKind;
    if !rejection.status().is_client_error() {
        return ApiError::internal(format!("path parameters: {}", rejection.body_text()));
    }
    let PathRejection::FailedToDeserializePathParams(e) = &rejection else {
        return ApiError::bad_request(format!("invalid path parameter: {}", rejection.body_text()));
    };
    let err = ApiError::bad_request(format!("invalid path parameter: {}", e.kind()));
    match e.kind() {
        ErrorKind::InvalidUtf8InPathParam { key }
        | ErrorKind::ParseErrorAtKey { key, .. }
        | ErrorKind::DeserializeError { key, .. } => err.with_param(key.clone()),
        _ => err,
    }
}

/// Query string parsed with 400 (not axum's plain-text rejection) on error.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded_path(q).map(ApiQuery)
    }
}

fn serde_urlencoded_path<T: DeserializeOwned>(q: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{q}")
            .parse()
            .map_err(|_| ApiError::bad_request("malformed query string"))?,
    )
    .map(|axum::extract::Query(v)| v)
    .map_err(|e| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_counts_values_not_string_contents() {
        assert_eq!(json_values(b"[0,0,0]"), 4);
        assert_eq!(json_values(br#"{"a":[1,2],"b":"x,y:[{"}"#), 7);
        assert_eq!(json_values(br#"["a\"b,c"]"#), 2);
        assert_eq!(json_values(b"\"plain\""), 1);
    }

    /// A JSON route's body keeps its room while the handler holds the
    /// extractor's `BodyRoom` (the parsed value lives as long), and gives it
    /// back when that is dropped; a small body takes none.
    #[tokio::test]
    async fn a_json_body_holds_its_room_while_the_handler_runs() {
        let budget: &'static ParseBudget = Box::leak(Box::new(ParseBudget::new(64 << 20)));
        let pace = BodyPace {
            idle: Duration::from_secs(5),
            min_rate: 0,
            budget: Some(budget),
        };
        let request = |body: String| {
            let mut req = Request::new(Body::from(body));
            req.extensions_mut().insert(pace);
            req.extensions_mut().insert(BodyLimit(4 << 20));
            req
        };
        let full = budget.room.available_permits();
        let large = format!("[{}0]", "0,".repeat(BUDGETED_BODY));
        let ApiJson(v, room) = ApiJson::<Vec<u8>>::from_request(request(large), &())
            .await
            .expect("parsed");
        let held = full - budget.room.available_permits();
        // Its bytes and 256 Ki + 1 values at 160 bytes: about 40.5 MiB.
        assert!((40 << 10..42 << 10).contains(&held), "{held} KiB held");
        drop(v);
        assert_eq!(
            full - budget.room.available_permits(),
            held,
            "held by the room"
        );
        drop(room);
        assert_eq!(budget.room.available_permits(), full, "given back");
        let ApiJson(_, room) = ApiJson::<Vec<u8>>::from_request(request("[1]".into()), &())
            .await
            .expect("parsed");
        assert_eq!(
            budget.room.available_permits(),
            full,
            "a small body takes none"
        );
        drop(room);
    }

    #[test]
    fn a_body_weighs_its_bytes_and_values_within_the_budget() {
        let budget = ParseBudget::new(1 << 30);
        let text = format!("\"{}\"", "x".repeat(1 << 20));
        assert_eq!(budget.weight(text.as_bytes()), 1025, "1 MiB of text");
        let zeros = format!("[{}0]", "0,".repeat(1 << 19));
        // 1 MiB of zeros: 512 Ki values of 160 bytes (80 MiB) and the text.
        assert_eq!(budget.weight(zeros.as_bytes()), 80 * 1024 + 1024 + 1);
        let small = ParseBudget::new(1 << 20);
        assert_eq!(
            small.weight(zeros.as_bytes()),
            1024,
            "at most the whole budget"
        );
    }

    #[test]
    fn the_pace_deadline_is_the_idle_wait_or_the_rate_whichever_is_sooner() {
        let pace = BodyPace {
            idle: Duration::from_secs(30),
            min_rate: 1000,
            budget: None,
        };
        let start = Instant::now();
        // Within the grace: only the idle wait counts.
        assert_eq!(pace.deadline(start, start, 0), (start + pace.idle, false));
        // 10 s in with 5,000 bytes: the idle wait (to 40 s) is later than
        // the grace's end (30 s), so the rate bounds it.
        let now = start + Duration::from_secs(10);
        assert_eq!(
            pace.deadline(start, now, 5_000),
            (start + Duration::from_secs(30), true)
        );
        // 60 s in with 65,500 bytes: they buy 65.5 s.
        let now = start + Duration::from_secs(60);
        assert_eq!(
            pace.deadline(start, now, 65_500),
            (start + Duration::from_millis(65_500), true)
        );
        // Far ahead of the rate: the idle wait.
        assert_eq!(
            pace.deadline(start, now, 10_000_000),
            (now + pace.idle, false)
        );
        // No rate: always the idle wait; a huge rate does not overflow.
        let off = BodyPace {
            min_rate: 0,
            ..pace
        };
        assert_eq!(off.deadline(start, now, 5), (now + pace.idle, false));
        let huge = BodyPace {
            min_rate: u64::MAX,
            ..pace
        };
        assert_eq!(
            huge.deadline(start, now, usize::MAX),
            (start + pace.idle, true)
        );
    }
}
