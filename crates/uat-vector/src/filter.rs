//! The filter language: `must` / `should` / `must_not` over `match`, `any`
//! and `range` conditions, nested filters allowed, and its evaluation on a
//! JSON payload (the brute-force reference the payload indexes must agree with).
//!
//! ```json
//! {"must": [{"key": "lang", "match": {"value": "en"}},
//!           {"key": "year", "range": {"gte": 2020, "lt": 2024}}],
//!  "should": [{"key": "tag", "match": {"any": ["a", "b"]}}],
//!  "must_not": [{"must": [{"key": "draft", "match": {"value": true}}]}]}
//! ```
//! A key is a dotted path into the payload; when the value found is an array,
//! the condition holds if it holds for any element.

use crate::error::VectorError;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A boolean combination of conditions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    /// All must hold.
    pub must: Vec<Condition>,
    /// At least one must hold (when not empty).
    pub should: Vec<Condition>,
    /// None may hold.
    pub must_not: Vec<Condition>,
}

/// One condition: on a payload field, or a nested filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// A condition on one key.
    Field(FieldCondition),
    /// A nested filter.
    Nested(Box<Filter>),
}

/// A condition on one payload key.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldCondition {
    /// Dotted path into the payload.
    pub key: String,
    /// What the value must satisfy.
    pub test: FieldTest,
}

/// The test applied to a payload value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldTest {
    /// Equal to this value.
    Match(MatchValue),
    /// Equal to any of these values.
    Any(Vec<MatchValue>),
    /// Inside this range.
    Range(Range),
}

/// A value compared for equality.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MatchValue {
    /// A string (keyword).
    Keyword(String),
    /// An integer.
    Integer(i64),
    /// A boolean.
    Bool(bool),
}

/// Bounds of a range; numeric, or RFC 3339 datetimes turned into Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Range {
    /// Greater than.
    pub gt: Option<f64>,
    /// Greater than or equal.
    pub gte: Option<f64>,
    /// Less than.
    pub lt: Option<f64>,
    /// Less than or equal.
    pub lte: Option<f64>,
    /// Bounds were datetimes: compares payload strings parsed as RFC 3339.
    pub datetime: bool,
}

impl Range {
    /// True when `x` is inside every bound.
    pub fn contains(&self, x: f64) -> bool {
        self.gt.is_none_or(|b| x > b)
            && self.gte.is_none_or(|b| x >= b)
            && self.lt.is_none_or(|b| x < b)
            && self.lte.is_none_or(|b| x <= b)
    }

    /// The tightest `[lo, hi]` interval (inclusive, before strictness) for index lookups.
    pub(crate) fn interval(&self) -> (f64, f64) {
        let lo = match (self.gt, self.gte) {
            (Some(a), Some(b)) => a.max(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => f64::NEG_INFINITY,
        };
        let hi = match (self.lt, self.lte) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => f64::INFINITY,
        };
        (lo, hi)
    }
}

/// Parses an RFC 3339 datetime into Unix seconds.
pub fn parse_datetime(s: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

impl Filter {
    /// Parses a filter from JSON, naming the problem on failure.
    pub fn from_json(v: &Value) -> Result<Self, VectorError> {
        parse_filter(v, "filter", 0).map_err(VectorError::BadFilter)
    }

    /// True when the filter has no condition (matches everything).
    pub fn is_empty(&self) -> bool {
        self.must.is_empty() && self.should.is_empty() && self.must_not.is_empty()
    }

    /// Evaluates the filter on a payload (`None` = no payload).
    pub fn matches(&self, payload: Option<&Value>) -> bool {
        self.must.iter().all(|c| c.matches(payload))
            && (self.should.is_empty() || self.should.iter().any(|c| c.matches(payload)))
            && !self.must_not.iter().any(|c| c.matches(payload))
    }
}

impl Condition {
    /// Evaluates the condition on a payload.
    pub fn matches(&self, payload: Option<&Value>) -> bool {
        match self {
            Self::Nested(f) => f.matches(payload),
            Self::Field(fc) => {
                let Some(v) = payload.and_then(|p| lookup(p, &fc.key)) else {
                    return false;
                };
                match v {
                    Value::Array(items) => items.iter().any(|x| fc.test.matches_value(x)),
                    x => fc.test.matches_value(x),
                }
            }
        }
    }
}

impl FieldTest {
    fn matches_value(&self, v: &Value) -> bool {
        match self {
            Self::Match(m) => m.matches_value(v),
            Self::Any(ms) => ms.iter().any(|m| m.matches_value(v)),
            Self::Range(r) => {
                let x = if r.datetime {
                    v.as_str().and_then(parse_datetime)
                } else {
                    v.as_f64()
                };
                x.is_some_and(|x| r.contains(x))
            }
        }
    }
}

impl MatchValue {
    fn matches_value(&self, v: &Value) -> bool {
        match (self, v) {
            (Self::Keyword(a), Value::String(b)) => a == b,
            (Self::Integer(a), Value::Number(n)) => n.as_i64() == Some(*a),
            (Self::Bool(a), Value::Bool(b)) => a == b,
            _ => false,
        }
    }
}

/// Finds a dotted path in a payload.
pub(crate) fn lookup<'a>(payload: &'a Value, key: &str) -> Option<&'a Value> {
    if let Some(v) = payload.get(key) {
        return Some(v);
    }
    let mut cur = payload;
    for part in key.split('.') {
        cur = cur.get(part)?;
    }
    Some(cur)
}

const MAX_DEPTH: usize = 16;

fn parse_filter(v: &Value, path: &str, depth: usize) -> Result<Filter, String> {
    if depth > MAX_DEPTH {
        return Err(format!("{path}: nested more than {MAX_DEPTH} levels"));
    }
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{path}: expected an object"))?;
    let mut f = Filter::default();
    for (k, val) in obj {
        let list = match k.as_str() {
            "must" => &mut f.must,
            "should" => &mut f.should,
            "must_not" => &mut f.must_not,
            other => {
                return Err(format!(
                    "{path}: unknown field {other:?} (expected must, should, must_not)"
                ));
            }
        };
        let p = format!("{path}.{k}");
        match val {
            Value::Array(items) => {
                for (i, c) in items.iter().enumerate() {
                    list.push(parse_condition(c, &format!("{p}[{i}]"), depth + 1)?);
                }
            }
            Value::Object(_) => list.push(parse_condition(val, &p, depth + 1)?),
            Value::Null => {}
            _ => return Err(format!("{p}: expected a list of conditions")),
        }
    }
    Ok(f)
}

fn parse_condition(v: &Value, path: &str, depth: usize) -> Result<Condition, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{path}: expected a condition object"))?;
    if !obj.contains_key("key") {
        if obj
            .keys()
            .any(|k| matches!(k.as_str(), "must" | "should" | "must_not"))
        {
            return Ok(Condition::Nested(Box::new(parse_filter(v, path, depth)?)));
        }
        return Err(format!(
            "{path}: a condition needs \"key\" (or must/should/must_not for a nested filter)"
        ));
    }
    let key = obj
        .get("key")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| format!("{path}.key: expected a non-empty string"))?
        .to_owned();
    let mut test = None;
    for (k, val) in obj {
        let p = format!("{path}.{k}");
        let t = match k.as_str() {
            "key" => continue,
            "match" => parse_match(val, &p)?,
            "range" => FieldTest::Range(parse_range(val, &p)?),
            other => {
                return Err(format!(
                    "{path}: unknown field {other:?} (expected key, match, range)"
                ));
            }
        };
        if test.replace(t).is_some() {
            return Err(format!("{path}: give exactly one of match or range"));
        }
    }
    let test = test.ok_or_else(|| format!("{path}: give one of match or range"))?;
    Ok(Condition::Field(FieldCondition { key, test }))
}

fn parse_match(v: &Value, path: &str) -> Result<FieldTest, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{path}: expected {{\"value\": ...}} or {{\"any\": [...]}}"))?;
    match (obj.get("value"), obj.get("any"), obj.len()) {
        (Some(x), None, 1) => Ok(FieldTest::Match(parse_value(x, &format!("{path}.value"))?)),
        (None, Some(Value::Array(xs)), 1) => {
            if xs.is_empty() {
                return Err(format!("{path}.any: must not be empty"));
            }
            let vals = xs
                .iter()
                .enumerate()
                .map(|(i, x)| parse_value(x, &format!("{path}.any[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(FieldTest::Any(vals))
        }
        (None, Some(_), 1) => Err(format!("{path}.any: expected a list")),
        _ => Err(format!(
            "{path}: expected exactly one of \"value\" or \"any\""
        )),
    }
}

fn parse_value(v: &Value, path: &str) -> Result<MatchValue, String> {
    match v {
        Value::String(s) => Ok(MatchValue::Keyword(s.clone())),
        Value::Bool(b) => Ok(MatchValue::Bool(*b)),
        Value::Number(n) => n.as_i64().map(MatchValue::Integer).ok_or_else(|| {
            format!("{path}: match needs a string, integer or boolean (use range for floats)")
        }),
        _ => Err(format!("{path}: match needs a string, integer or boolean")),
    }
}

fn parse_range(v: &Value, path: &str) -> Result<Range, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{path}: expected an object with gt/gte/lt/lte"))?;
    if obj.is_empty() {
        return Err(format!("{path}: give at least one of gt, gte, lt, lte"));
    }
    let mut r = Range::default();
    let (mut nums, mut dates) = (0, 0);
    for (k, val) in obj {
        let p = format!("{path}.{k}");
        let x = match val {
            Value::Number(n) => {
                nums += 1;
                n.as_f64()
                    .ok_or_else(|| format!("{p}: not a finite number"))?
            }
            Value::String(s) => {
                dates += 1;
                parse_datetime(s)
                    .ok_or_else(|| format!("{p}: {s:?} is not an RFC 3339 datetime"))?
            }
            _ => {
                return Err(format!(
                    "{p}: expected a number or an RFC 3339 datetime string"
                ));
            }
        };
        let slot = match k.as_str() {
            "gt" => &mut r.gt,
            "gte" => &mut r.gte,
            "lt" => &mut r.lt,
            "lte" => &mut r.lte,
            other => {
                return Err(format!(
                    "{path}: unknown bound {other:?} (expected gt, gte, lt, lte)"
                ));
            }
        };
        *slot = Some(x);
    }
    if nums > 0 && dates > 0 {
        return Err(format!("{path}: do not mix numbers and datetimes"));
    }
    r.datetime = dates > 0;
    Ok(r)
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        parse_filter(&v, "filter", 0).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(v: Value) -> Filter {
        match Filter::from_json(&v) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn parses_and_evaluates_the_issue_examples() {
        let flt = f(json!({
            "must": [{"key": "lang", "match": {"value": "en"}},
                     {"key": "year", "range": {"gte": 2020, "lt": 2024}}],
            "should": [{"key": "tags", "match": {"any": ["a", "b"]}}],
            "must_not": [{"must": [{"key": "meta.draft", "match": {"value": true}}]}]
        }));
        let yes = json!({"lang": "en", "year": 2021, "tags": ["x", "b"], "meta": {"draft": false}});
        assert!(flt.matches(Some(&yes)));
        let draft = json!({"lang": "en", "year": 2021, "tags": ["b"], "meta": {"draft": true}});
        assert!(!flt.matches(Some(&draft)));
        let old = json!({"lang": "en", "year": 2019, "tags": ["a"]});
        assert!(!flt.matches(Some(&old)));
        let notag = json!({"lang": "en", "year": 2022, "tags": ["c"]});
        assert!(!flt.matches(Some(&notag)));
        assert!(!flt.matches(None));
        assert!(Filter::default().matches(None));
    }

    #[test]
    fn datetime_range_compares_instants() {
        let flt = f(json!({"must": [{"key": "at", "range": {"gte": "2024-01-01T00:00:00Z"}}]}));
        assert!(flt.matches(Some(&json!({"at": "2024-01-01T01:00:00+01:00"}))));
        assert!(!flt.matches(Some(&json!({"at": "2023-12-31T23:59:59Z"}))));
        assert!(!flt.matches(Some(&json!({"at": 1_800_000_000}))));
    }

    #[test]
    fn malformed_filters_name_the_problem() {
        let cases = [
            (json!([1]), "expected an object"),
            (
                json!({"must": [{"key": "a"}]}),
                "give one of match or range",
            ),
            (
                json!({"must": [{"key": "a", "match": {"value": 1.5}}]}),
                "use range for floats",
            ),
            (
                json!({"must": [{"key": "a", "range": {"gt": "yesterday"}}]}),
                "RFC 3339",
            ),
            (
                json!({"must": [{"key": "a", "range": {"gt": 1, "lt": "2024-01-01T00:00:00Z"}}]}),
                "mix",
            ),
            (
                json!({"must": [{"key": "a", "range": {"between": 1}}]}),
                "unknown bound",
            ),
            (json!({"mustnt": []}), "unknown field"),
            (
                json!({"must": [{"key": "a", "match": {"any": []}}]}),
                "must not be empty",
            ),
            (
                json!({"must": [{"key": "", "match": {"value": 1}}]}),
                "non-empty string",
            ),
            (json!({"must": [{"value": 1}]}), "needs \"key\""),
        ];
        for (v, want) in cases {
            match Filter::from_json(&v) {
                Err(VectorError::BadFilter(msg)) => assert!(msg.contains(want), "{msg} !~ {want}"),
                other => panic!("{v}: expected BadFilter, got {other:?}"),
            }
        }
    }
}
