//! Durations in the configuration: humantime text (`"250ms"`, `"1h"`,
//! `"10y"`), at most [`MAX_DURATION`]. Used as `#[serde(with = ...)]` on
//! every duration field, so no setting can be so long that adding it to the
//! clock overflows (`Instant::now() + d` panics past the clock's range: a
//! `routing.breaker_cooldown` of `"300000000000y"` panicked every request
//! that tripped a breaker).

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

/// The longest duration any setting accepts: 10 years as `"10y"` counts
/// them (365.25 days a year), 315,576,000 s. Also the longest cache time to
/// live ([`crate::MAX_TTL`]).
pub const MAX_DURATION: Duration = Duration::from_secs(315_576_000);

/// Parses humantime text, refusing more than [`MAX_DURATION`].
pub fn parse(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("`{text}`: {e}"))?;
    if d > MAX_DURATION {
        return Err(format!(
            "`{text}` is longer than the longest duration accepted, 10y"
        ));
    }
    Ok(d)
}

/// The humantime text of a duration.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// The same for an optional duration.
pub mod option {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| super::parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_years_is_the_longest() {
        assert_eq!(parse("10y"), Ok(MAX_DURATION));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        let e = parse("10y 1s").unwrap_err();
        assert!(e.contains("longest duration accepted"), "{e}");
        assert!(parse("300000000000y").is_err());
        assert!(parse("soon").unwrap_err().contains("`soon`"));
    }
}
