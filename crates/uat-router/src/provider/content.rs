//! OpenAI message content parts as the adapters read them: the URL of an
//! `image_url` part, and the refusal of a part an adapter does not
//! translate (refused, so an alias fails over, never dropped).

use crate::error::Failure;
use serde_json::Value;

/// Where the image of an OpenAI `image_url` part is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImageUrl<'a> {
    /// A `data:<media>;base64,<data>` URL.
    Base64 {
        /// The media type (`image/png`), as given.
        media: &'a str,
        /// The base64 data.
        data: &'a str,
    },
    /// A `data:` URL whose data is not base64.
    DataNotBase64,
    /// Any other URL (http(s), as a rule), as given.
    Url(&'a str),
    /// The part has no URL.
    Missing,
}

/// The image of an `image_url` part: `{"image_url": {"url": ...}}`, or
/// the URL alone (`{"image_url": "..."}`) as some clients send it.
pub(crate) fn image_url(part: &Value) -> ImageUrl<'_> {
    let Some(url) = part
        .pointer("/image_url/url")
        .or_else(|| part.get("image_url"))
        .and_then(Value::as_str)
    else {
        return ImageUrl::Missing;
    };
    match url.strip_prefix("data:") {
        Some(rest) => match rest.split_once(";base64,") {
            Some((media, data)) => ImageUrl::Base64 { media, data },
            None => ImageUrl::DataNotBase64,
        },
        None => ImageUrl::Url(url),
    }
}

/// The `param` of a refused image: part `j` of message `at`.
pub(crate) fn image_url_param(at: usize, j: usize) -> String {
    format!("messages[{at}].content[{j}].image_url.url")
}

/// Part `j` of message `at` (whose role is `role`) is of a type the
/// adapter of `kind` (as the config spells it) does not translate:
/// refused naming the part's `type`, where it used to be left out of the
/// request without a word.
pub(crate) fn unsupported_part(
    part: &Value,
    role: &str,
    at: usize,
    j: usize,
    kind: &str,
) -> Failure {
    let message = match part.get("type").and_then(Value::as_str) {
        Some(t) => {
            format!(
                "content parts of type `{t}` in {role} messages are not supported by {kind} providers"
            )
        }
        None => format!("content parts without a type are not supported by {kind} providers"),
    };
    Failure::unsupported(
        message,
        format!("messages[{at}].content[{j}].type"),
        "unsupported_value",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn image_url_shapes() {
        let part = |url: Value| json!({"type": "image_url", "image_url": {"url": url}});
        assert_eq!(
            image_url(&part(json!("data:image/png;base64,AAA"))),
            ImageUrl::Base64 {
                media: "image/png",
                data: "AAA"
            }
        );
        assert_eq!(
            image_url(&part(json!("data:image/svg+xml,<svg/>"))),
            ImageUrl::DataNotBase64
        );
        assert_eq!(
            image_url(&part(json!("https://example.com/a.png"))),
            ImageUrl::Url("https://example.com/a.png")
        );
        assert_eq!(
            image_url(&json!({"type": "image_url", "image_url": "http://x/b.png"})),
            ImageUrl::Url("http://x/b.png")
        );
        assert_eq!(image_url(&part(json!(null))), ImageUrl::Missing);
        assert_eq!(image_url(&json!({"type": "image_url"})), ImageUrl::Missing);
        assert_eq!(
            image_url_param(2, 1),
            "messages[2].content[1].image_url.url"
        );
    }
}
