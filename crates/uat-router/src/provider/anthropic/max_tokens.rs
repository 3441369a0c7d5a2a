//! The most output tokens each Claude model may generate in one answer,
//! by family. Anthropic requires `max_tokens` where OpenAI does not: a
//! request that sets none is sent its model's limit, so the answer runs as
//! long as it would on OpenAI instead of being cut at a small default.
//!
//! From Anthropic's models overview (current and legacy models tables);
//! where published figures disagree, the lower one is kept, since a value
//! above a model's limit is refused (400) on every request that sets none.

/// `(family, max output tokens)`. A family matches the model's id itself,
/// its dated snapshots (`-20250929`), `-latest`, a Vertex `@date` and a
/// Bedrock `anthropic.` prefix and `-v1:0` suffix; not a later minor
/// version (`claude-opus-4` is not `claude-opus-4-1`).
const FAMILIES: &[(&str, u32)] = &[
    ("claude-3-haiku", 4096),
    ("claude-3-sonnet", 4096),
    ("claude-3-opus", 4096),
    ("claude-3-5-haiku", 8192),
    ("claude-3-5-sonnet", 8192),
    ("claude-3-7-sonnet", 64_000),
    ("claude-sonnet-4", 64_000),
    ("claude-sonnet-4-0", 64_000),
    ("claude-opus-4", 32_000),
    ("claude-opus-4-0", 32_000),
    ("claude-opus-4-1", 32_000),
    ("claude-sonnet-4-5", 64_000),
    ("claude-haiku-4-5", 64_000),
    ("claude-opus-4-5", 64_000),
    // Sources give Sonnet 4.6 both 64K and 128K: the lower is safe.
    ("claude-sonnet-4-6", 64_000),
    ("claude-opus-4-6", 128_000),
    ("claude-opus-4-7", 128_000),
];

/// The model's output limit, when its family is known.
pub fn max_output_tokens(model: &str) -> Option<u32> {
    let start = model.find("claude-")?;
    let name = &model[start..];
    let name = name.split('@').next().unwrap_or(name);
    FAMILIES
        .iter()
        .find(|(family, _)| is_of(name, family))
        .map(|&(_, max)| max)
}

/// `name` is `family` or one of its snapshots: what follows the family is
/// nothing or a `-` part that is not a short version number (a date,
/// `latest`, `v1:0`).
fn is_of(name: &str, family: &str) -> bool {
    let Some(rest) = name.strip_prefix(family) else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let Some(rest) = rest.strip_prefix('-') else {
        return false;
    };
    let part = rest.split('-').next().unwrap_or(rest);
    !(part.len() <= 2 && !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_snapshots_and_cloud_ids() {
        for (model, max) in [
            ("claude-3-haiku-20240307", 4096),
            ("claude-3-opus-latest", 4096),
            ("claude-3-5-sonnet-20241022", 8192),
            ("claude-3-5-haiku-latest", 8192),
            ("claude-3-7-sonnet-20250219", 64_000),
            ("claude-sonnet-4-20250514", 64_000),
            ("claude-sonnet-4-0", 64_000),
            ("claude-opus-4-20250514", 32_000),
            ("claude-opus-4-0", 32_000),
            ("claude-opus-4-1", 32_000),
            ("claude-opus-4-1-20250805", 32_000),
            ("claude-sonnet-4-5-20250929", 64_000),
            ("claude-sonnet-4-5", 64_000),
            ("claude-haiku-4-5-20251001", 64_000),
            ("claude-opus-4-5-20251101", 64_000),
            ("claude-sonnet-4-6", 64_000),
            ("claude-opus-4-6", 128_000),
            ("claude-opus-4-7", 128_000),
            ("anthropic.claude-3-5-sonnet-20241022-v2:0", 8192),
            ("us.anthropic.claude-opus-4-1-20250805-v1:0", 32_000),
            ("claude-opus-4-5@20251101", 64_000),
        ] {
            assert_eq!(max_output_tokens(model), Some(max), "{model}");
        }
    }

    /// A model the table does not know, a later minor version included,
    /// has no entry (the caller falls back to 4096).
    #[test]
    fn unknown_models_have_none() {
        for model in [
            "claude-x",
            "claude-opus-4-9",
            "claude-sonnet-45",
            "gpt-4o",
            "",
            "claude-",
        ] {
            assert_eq!(max_output_tokens(model), None, "{model}");
        }
    }
}
