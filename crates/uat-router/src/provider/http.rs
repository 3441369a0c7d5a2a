//! HTTP plumbing shared by the providers: the pooled client, sending with a
//! first-byte timeout, error classification, and line splitting for SSE and
//! NDJSON bodies.

use crate::error::{Failure, FailureKind, RouterError, UpstreamError};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use std::time::Duration;
use uat_config::ProviderConfig;

/// Builds the provider's pooled client: keep-alive, HTTP/2 when offered
/// (ALPN), TCP_NODELAY, connect and total timeouts.
pub(crate) fn client(cfg: &ProviderConfig) -> Result<reqwest::Client, RouterError> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .tcp_keepalive(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(512)
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.timeout)
        .build()
        .map_err(|e| RouterError::Config {
            provider: cfg.name.clone(),
            message: format!("cannot build HTTP client: {e}"),
        })
}

/// Reads the API key from the environment variable named in the config.
pub(crate) fn api_key(cfg: &ProviderConfig) -> Option<String> {
    api_key_from(cfg, |v| std::env::var(v).ok())
}

/// The API key of `cfg` as `lookup` gives its variable: trimmed (a secret
/// mounted from a file ends in a newline, which no header may hold: every
/// request failed), and a warning at start-up when the variable is unset or
/// empty (requests then go without a key, and the upstream's 401 would be
/// the first sign).
fn api_key_from(cfg: &ProviderConfig, lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    let var = cfg.api_key_env.as_deref()?;
    let key = lookup(var)
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty());
    if key.is_none() {
        tracing::warn!(
            provider = %cfg.name,
            variable = var,
            "the provider's api_key_env variable is unset or empty: requests go without an API key"
        );
    }
    key
}

/// Joins a base URL and a path without doubling the slash, parsed once at
/// start-up (a `&str` handed to reqwest is parsed again on every request),
/// so a base URL that does not parse stops start-up with the provider's name.
pub(crate) fn join(
    cfg: &ProviderConfig,
    base: &str,
    path: &str,
) -> Result<reqwest::Url, RouterError> {
    let mut s = String::with_capacity(base.len() + path.len());
    s.push_str(base.trim_end_matches('/'));
    s.push_str(path);
    reqwest::Url::parse(&s).map_err(|e| RouterError::Config {
        provider: cfg.name.clone(),
        message: format!("invalid base_url {base:?}: {e}"),
    })
}

/// Classifies a transport error.
pub(crate) fn transport(e: &reqwest::Error) -> Failure {
    let kind = if e.is_timeout() {
        FailureKind::Timeout
    } else if e.is_body() || e.is_decode() {
        FailureKind::Interrupted
    } else {
        FailureKind::Connect
    };
    Failure::new(kind, error_chain(e))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Sends a request, waiting at most `first_byte` for the response head.
/// A non-2xx answer becomes a [`Failure`] carrying the upstream's message.
pub(crate) async fn send(
    rb: reqwest::RequestBuilder,
    first_byte: Duration,
) -> Result<reqwest::Response, Failure> {
    send_within(rb, first_byte, first_byte).await
}

/// [`send`] waiting `first_byte` for the head, what is left of `bound` (a
/// second request within the time of a first), which a timeout names.
pub(crate) async fn send_within(
    rb: reqwest::RequestBuilder,
    first_byte: Duration,
    bound: Duration,
) -> Result<reqwest::Response, Failure> {
    let resp = match tokio::time::timeout(first_byte, rb.send()).await {
        Err(_) => {
            return Err(Failure::new(
                FailureKind::Timeout,
                format!("no response within {bound:?}"),
            ));
        }
        Ok(Err(e)) => return Err(transport(&e)),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| *s >= 0.0)
        // Beyond `Duration::MAX` (a huge number, infinity): the longest wait,
        // which the backoff caps at `routing.backoff_max` like any other.
        .map(|s| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX));
    let body =
        match tokio::time::timeout(first_byte, read_capped(resp.bytes_stream(), MAX_ERROR_BODY))
            .await
        {
            Ok(Ok(Some(b))) => b,
            _ => Bytes::new(),
        };
    let mut f = Failure::from_status(status.as_u16(), error_message(&body), retry_after);
    f.upstream = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| UpstreamError::from_body(&v));
    Err(f)
}

/// Extracts a readable message from an upstream error body (OpenAI,
/// Anthropic and Ollama shapes), else the start of the text.
pub(crate) fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let candidates = [
            v.pointer("/error/message"),
            v.get("error").filter(|e| e.is_string()),
            v.get("message"),
            v.get("detail"),
        ];
        for c in candidates.into_iter().flatten() {
            if let Some(s) = c.as_str() {
                return s.to_owned();
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "no error message".into();
    }
    text.chars().take(300).collect()
}

/// Largest upstream body read whole (a non-streamed answer, a model
/// list): an embeddings answer for 2,048 inputs of 3,072 dimensions is
/// about 130 MB of JSON. A larger one is a malformed answer, not held.
pub(crate) const MAX_BODY: usize = 256 << 20;
/// Largest line of a streamed body (one SSE event, one NDJSON object).
pub(crate) const MAX_LINE: usize = 16 << 20;
/// An error body past this is not read for its message.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Reads a whole body of at most `cap` bytes: `None` past it (read no
/// further). A body of one chunk is not copied.
pub(crate) async fn read_capped<S, E>(stream: S, cap: usize) -> Result<Option<Bytes>, E>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut body = uat_types::Gather::default();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > cap {
            return Ok(None);
        }
        body.push(chunk);
    }
    Ok(Some(body.finish()))
}

/// Reads the whole body (at most [`MAX_BODY`]) and parses it as JSON.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
) -> Result<(Bytes, T), Failure> {
    let too_large = || {
        Failure::new(
            FailureKind::Malformed,
            format!("upstream answer larger than {} MiB", MAX_BODY >> 20),
        )
    };
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let body = read_capped(resp.bytes_stream(), MAX_BODY)
        .await
        .map_err(|e| transport(&e))?
        .ok_or_else(too_large)?;
    let v = serde_json::from_slice(&body).map_err(|e| {
        Failure::new(
            FailureKind::Malformed,
            format!("invalid JSON from upstream: {e}"),
        )
    })?;
    Ok((body, v))
}

/// Splits a response body into lines (without the line end). The last
/// partial line is yielded at the end of the body. A line longer than
/// [`MAX_LINE`] ends the stream with a malformed-answer failure.
pub(crate) fn lines(
    resp: reqwest::Response,
) -> impl Stream<Item = Result<Bytes, Failure>> + Send + 'static {
    lines_of(resp.bytes_stream(), MAX_LINE)
}

/// [`lines`] of any byte stream, with the longest line as a parameter.
pub(crate) fn lines_of<S>(
    body: S,
    max_line: usize,
) -> impl Stream<Item = Result<Bytes, Failure>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
{
    // `scanned`: bytes of `buf` already searched for a line end, so a long
    // line arriving in many chunks is searched once, not once per chunk.
    futures::stream::unfold(
        (Box::pin(body), BytesMut::new(), 0usize, false),
        move |(mut body, mut buf, mut scanned, mut ended)| async move {
            loop {
                if let Some(at) = buf[scanned..].iter().position(|&b| b == b'\n') {
                    let pos = scanned + at;
                    scanned = 0;
                    let mut line = buf.split_to(pos + 1);
                    line.truncate(pos);
                    if line.last() == Some(&b'\r') {
                        line.truncate(pos - 1);
                    }
                    return Some((Ok(line.freeze()), (body, buf, scanned, ended)));
                }
                scanned = buf.len();
                if ended {
                    if buf.is_empty() {
                        return None;
                    }
                    let rest = buf.split().freeze();
                    scanned = 0;
                    return Some((Ok(rest), (body, buf, scanned, ended)));
                }
                if buf.len() > max_line {
                    ended = true;
                    buf.clear();
                    scanned = 0;
                    let f = Failure::new(
                        FailureKind::Malformed,
                        format!("upstream stream sent a line longer than {max_line} bytes"),
                    );
                    return Some((Err(f), (body, buf, scanned, ended)));
                }
                match body.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => {
                        ended = true;
                        buf.clear();
                        scanned = 0;
                        let f = transport(&e);
                        let f = Failure::new(FailureKind::Interrupted, f.message);
                        return Some((Err(f), (body, buf, scanned, ended)));
                    }
                    None => ended = true,
                }
            }
        },
    )
}

/// The payload of an SSE `data:` line, or `None` for other lines.
pub(crate) fn sse_data(line: &Bytes) -> Option<Bytes> {
    let rest = line.strip_prefix(b"data:")?;
    let skip = usize::from(rest.first() == Some(&b' '));
    let start = line.len() - rest.len() + skip;
    Some(line.slice(start..))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key read from a mounted secret file ends in a newline: it is sent
    /// trimmed (before, the header was invalid and every request failed).
    #[test]
    fn the_api_key_is_trimmed_and_an_empty_one_is_none() {
        let mut cfg = ProviderConfig::new("p", uat_config::ProviderKind::Openai, None);
        assert_eq!(
            api_key_from(&cfg, |_| Some("sk-x".into())),
            None,
            "no variable named"
        );
        cfg.api_key_env = Some("KEY".into());
        let got = |v: Option<&str>| {
            api_key_from(&cfg, |name| {
                assert_eq!(name, "KEY");
                v.map(str::to_string)
            })
        };
        assert_eq!(got(Some("sk-x\n")).as_deref(), Some("sk-x"));
        assert_eq!(got(Some("  sk-y \r\n")).as_deref(), Some("sk-y"));
        assert_eq!(got(Some(" \n")), None);
        assert_eq!(got(None), None);
    }

    #[test]
    fn endpoints_join_without_a_double_slash_and_a_bad_base_fails_at_start() {
        let cfg = ProviderConfig::new("local", uat_config::ProviderKind::Openai, None);
        let url = join(&cfg, "http://127.0.0.1:8000/v1/", "/chat/completions").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8000/v1/chat/completions");
        let err = join(&cfg, "127.0.0.1:8000/v1", "/models").unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, RouterError::Config { .. })
                && msg.contains("local")
                && msg.contains("base_url"),
            "{msg}"
        );
    }

    fn chunks(
        parts: &[&[u8]],
    ) -> impl Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static {
        let parts: Vec<Result<Bytes, reqwest::Error>> = parts
            .iter()
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        futures::stream::iter(parts)
    }

    async fn collect_lines(parts: &[&[u8]], max: usize) -> Vec<Result<Bytes, FailureKind>> {
        lines_of(chunks(parts), max)
            .map(|r| r.map_err(|f| f.kind))
            .collect()
            .await
    }

    #[tokio::test]
    async fn lines_split_across_chunks_and_crlf_and_the_last_partial_line() {
        let got = collect_lines(&[b"data: a", b"b\r", b"\n\nda", b"ta: c\nrest"], 100).await;
        let want: Vec<Result<Bytes, FailureKind>> = ["data: ab", "", "data: c", "rest"]
            .iter()
            .map(|s| Ok(Bytes::copy_from_slice(s.as_bytes())))
            .collect();
        assert_eq!(got, want);
    }

    /// A line past the bound ends the stream with a malformed-answer
    /// failure instead of growing the buffer until the timeout (an
    /// upstream streaming bytes without a line end).
    #[tokio::test]
    async fn a_line_past_the_bound_ends_the_stream() {
        let long = [b'x'; 40];
        let parts: Vec<&[u8]> = vec![b"ok\n", &long, &long, &long, b"\nnever\n"];
        let got = collect_lines(&parts, 64).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], Ok(Bytes::from_static(b"ok")));
        assert_eq!(got[1], Err(FailureKind::Malformed));
        // At the bound itself a line still passes.
        let got = collect_lines(&[&[b'y'; 64], b"\n"], 64).await;
        assert_eq!(got, vec![Ok(Bytes::copy_from_slice(&[b'y'; 64]))]);
    }

    #[tokio::test]
    async fn a_body_past_the_cap_is_not_read_whole() {
        let one = read_capped(chunks(&[b"0123456789"]), 10).await.unwrap();
        assert_eq!(one, Some(Bytes::from_static(b"0123456789")));
        let many = read_capped(chunks(&[b"01234", b"56789"]), 10)
            .await
            .unwrap();
        assert_eq!(many, Some(Bytes::from_static(b"0123456789")));
        let over = read_capped(chunks(&[b"01234", b"56789", b"x"]), 10)
            .await
            .unwrap();
        assert_eq!(over, None);
        let empty = read_capped(chunks(&[]), 10).await.unwrap();
        assert_eq!(empty, Some(Bytes::new()));
    }

    #[test]
    fn sse_data_strips_prefix() {
        assert_eq!(
            sse_data(&Bytes::from_static(b"data: {\"a\":1}")).unwrap(),
            &b"{\"a\":1}"[..]
        );
        assert_eq!(
            sse_data(&Bytes::from_static(b"data:[DONE]")).unwrap(),
            &b"[DONE]"[..]
        );
        assert!(sse_data(&Bytes::from_static(b"event: ping")).is_none());
    }

    #[test]
    fn error_message_shapes() {
        assert_eq!(
            error_message(br#"{"error":{"message":"bad key"}}"#),
            "bad key"
        );
        assert_eq!(
            error_message(br#"{"error":"model not found"}"#),
            "model not found"
        );
        assert_eq!(
            error_message(
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            "Overloaded"
        );
        assert_eq!(error_message(b"plain text"), "plain text");
        assert_eq!(error_message(b""), "no error message");
    }

    #[test]
    fn status_classification() {
        assert_eq!(
            Failure::from_status(429, "", None).kind,
            FailureKind::RateLimited
        );
        assert_eq!(
            Failure::from_status(503, "", None).kind,
            FailureKind::ServerError
        );
        assert_eq!(
            Failure::from_status(400, "", None).kind,
            FailureKind::Rejected
        );
        assert_eq!(
            Failure::from_status(404, "", None).kind,
            FailureKind::NotFound
        );
        assert_eq!(
            Failure::from_status(401, "", None).kind,
            FailureKind::ClientError
        );
    }
}
