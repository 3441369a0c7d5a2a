//! `ApiError`: every error the HTTP API returns, rendered in the OpenAI shape
//! `{"error":{"message","type","param","code"}}` with the right status.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

const UNSUPPORTED_ENCODING: &str = "unsupported_content_encoding";

/// The request body codings the server decodes (RFC 7694: a 415 for a
/// coding says which are accepted).
pub const ACCEPTED_ENCODINGS: &str = "gzip, deflate, identity";

/// An error returned to an API client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI error `type` (`invalid_request_error`, `api_error`, ...).
    pub kind: &'static str,
    /// Machine-readable `code` (`model_not_found`, ...).
    pub code: Option<&'static str>,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// Human-readable message.
    pub message: String,
    /// Seconds for a `Retry-After` header (429 / 503).
    pub retry_after: Option<u64>,
    /// Extra JSON merged into the `error` object (e.g. per-provider reasons).
    pub details: Option<Box<serde_json::Value>>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            kind,
            code,
            param: None,
            message: message.into(),
            retry_after: None,
            details: None,
        }
    }

    /// 400 `invalid_request_error`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("invalid_request"),
            message,
        )
    }

    /// 400 naming the offending field.
    pub fn invalid_field(param: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::bad_request(message);
        e.param = Some(param.into());
        e
    }

    /// 400 `response_too_large`: the request asks for more than one response
    /// may hold (a vector search past the engine's per-request limits); the
    /// message names the limit.
    pub fn response_too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("response_too_large"),
            message,
        )
    }

    /// 404 `not_found_error` for a missing resource.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("not_found"),
            message,
        )
    }

    /// 404 `model_not_found`.
    pub fn model_not_found(model: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            format!("The model `{model}` does not exist or no provider serves it"),
        );
        e.param = Some("model".into());
        e
    }

    /// 409: the resource already exists.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            Some("already_exists"),
            message,
        )
    }

    /// 413: the body is larger than the route allows.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("payload_too_large"),
            format!("request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 415: the body's `Content-Encoding` is not one the server decodes
    /// (the response says which it does in `Accept-Encoding`).
    pub fn unsupported_encoding(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            Some(UNSUPPORTED_ENCODING),
            message,
        )
        .with_param("content-encoding")
    }

    /// 408: the client stopped sending its body.
    pub fn body_timeout(idle: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            Some("request_timeout"),
            format!("the request body stalled: nothing arrived for {idle:?}"),
        )
    }

    /// 408: the request body arrived slower than `server.body_min_rate`.
    pub fn body_too_slow(received: usize, after: std::time::Duration, min_rate: u64) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            Some("request_timeout"),
            format!(
                "the request body arrived too slowly: {received} bytes in {:.1} s, under the minimum of {min_rate} bytes per second",
                after.as_secs_f64()
            ),
        )
    }

    /// 429: every upstream asked us to slow down.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            message,
        )
    }

    /// 401 `invalid_api_key`: no API key, or one the gateway does not know.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            Some("invalid_api_key"),
            message,
        )
    }

    /// 403 `insufficient_permissions`: the key may not call this route.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            Some("insufficient_permissions"),
            message,
        )
    }

    /// 429 with Retry-After: the API key is over its own limit. `kind` is
    /// the error's `type`: OpenAI's `"requests"` or `"tokens"` for the
    /// per-minute budget that ran out (what its own 429s say, and what
    /// clients that tell the two apart read), `"rate_limit_error"` for the
    /// limit of requests in flight, which OpenAI does not have.
    pub fn key_rate_limited(
        kind: &'static str,
        message: impl Into<String>,
        retry_after: u64,
    ) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            kind,
            Some("rate_limit_exceeded"),
            message,
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 429 `insufficient_quota` (its `type` and `code`, what OpenAI answers
    /// for an exhausted quota): the API key has spent its `max_budget`. As
    /// OpenAI's, it carries no `Retry-After` (the message says when the
    /// period resets), and `x-should-retry: false`, which the OpenAI SDKs
    /// read before retrying a 429.
    pub fn insufficient_quota(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            Some("insufficient_quota"),
            message,
        )
    }

    /// 503 with Retry-After: the server is shedding load.
    pub fn overloaded(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("overloaded"),
            message,
        );
        e.retry_after = Some(retry_after);
        e
    }

    /// 503: a dependency is unavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("service_unavailable"),
            message,
        )
    }

    /// 502: an upstream answered with an error.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            Some("upstream_error"),
            message,
        )
    }

    /// 504: an upstream did not answer in time.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_error",
            Some("upstream_timeout"),
            message,
        )
    }

    /// 500: our fault. The message is logged; the client sees a generic text.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        tracing::error!(error = %message, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            Some("internal_error"),
            "internal server error",
        )
    }

    /// 499 (nginx's "client closed request"): the client went away before
    /// its answer was ready. Not logged: it is no fault of the server's.
    pub fn client_closed() -> Self {
        Self::new(
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "invalid_request_error",
            Some("client_closed_request"),
            "the client closed the request before its answer was ready",
        )
    }

    /// 404 for an unknown route.
    pub fn no_route(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("unknown_url"),
            format!("Unknown request URL: {method} {path}"),
        )
    }

    /// 405 for a known route with the wrong method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            Some("method_not_allowed"),
            "method not allowed on this route",
        )
    }

    /// Sets `param`.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Sets extra details merged into the error object.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// The OpenAI error body.
    pub fn body(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: Option<&'a str>,
        }
        let mut v = serde_json::json!({ "error": Inner {
            message: &self.message,
            kind: self.kind,
            param: self.param.as_deref(),
            code: self.code,
        }});
        if let (Some(serde_json::Value::Object(extra)), Some(serde_json::Value::Object(err))) =
            (self.details.as_deref(), v.get_mut("error"))
        {
            for (k, val) in extra {
                err.insert(k.clone(), val.clone());
            }
        }
        v
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.code == Some("insufficient_quota") {
            resp.headers_mut().insert(
                HeaderName::from_static("x-should-retry"),
                HeaderValue::from_static("false"),
            );
        }
        if self.code == Some(UNSUPPORTED_ENCODING) {
            resp.headers_mut().insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static(ACCEPTED_ENCODINGS),
            );
        }
        resp
    }
}
