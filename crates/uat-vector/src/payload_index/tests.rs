//! The payload indexes must agree with the brute-force filter evaluator.

use super::*;
use crate::filter::FieldCondition;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

const WORDS: [&str; 5] = ["red", "green", "blue", "cyan", "gold"];

fn payload(rng: &mut StdRng) -> Option<Value> {
    if rng.random_bool(0.05) {
        return None;
    }
    let mut p = serde_json::Map::new();
    if rng.random_bool(0.9) {
        p.insert("kw".into(), json!(WORDS[rng.random_range(0..5)]));
    }
    if rng.random_bool(0.9) {
        p.insert("n".into(), json!(rng.random_range(-10i64..10)));
    }
    if rng.random_bool(0.9) {
        p.insert("f".into(), json!(rng.random_range(-1.0f64..1.0)));
    }
    if rng.random_bool(0.9) {
        let day = rng.random_range(1..28);
        p.insert("at".into(), json!(format!("2024-03-{day:02}T12:00:00Z")));
    }
    let tags: Vec<&str> = (0..rng.random_range(0..3))
        .map(|_| WORDS[rng.random_range(0..5)])
        .collect();
    p.insert("meta".into(), json!({"tags": tags}));
    Some(Value::Object(p))
}

fn leaf(rng: &mut StdRng) -> Condition {
    let w: Vec<MatchValue> = (0..2)
        .map(|_| MatchValue::Keyword(WORDS[rng.random_range(0..5)].into()))
        .collect();
    let (key, test) = match rng.random_range(0..6) {
        0 => ("kw", FieldTest::Match(w[0].clone())),
        1 => ("meta.tags", FieldTest::Any(w)),
        2 => (
            "n",
            FieldTest::Match(MatchValue::Integer(rng.random_range(-10..10))),
        ),
        3 => {
            let a = rng.random_range(-10.0..10.0);
            (
                "n",
                FieldTest::Range(Range {
                    gte: Some(a),
                    lt: Some(a + 6.0),
                    ..Range::default()
                }),
            )
        }
        4 => {
            let a = rng.random_range(-1.0..1.0);
            (
                "f",
                FieldTest::Range(Range {
                    gt: Some(a),
                    ..Range::default()
                }),
            )
        }
        _ => {
            let day = rng.random_range(1..28);
            let t = parse_datetime(&format!("2024-03-{day:02}T00:00:00Z"));
            (
                "at",
                FieldTest::Range(Range {
                    lte: t,
                    datetime: true,
                    ..Range::default()
                }),
            )
        }
    };
    Condition::Field(FieldCondition {
        key: key.into(),
        test,
    })
}

fn filter(rng: &mut StdRng, depth: usize) -> Filter {
    let mut f = Filter::default();
    for _ in 0..rng.random_range(0..3) {
        f.must.push(if depth < 2 && rng.random_bool(0.2) {
            Condition::Nested(Box::new(filter(rng, depth + 1)))
        } else {
            leaf(rng)
        });
    }
    for _ in 0..rng.random_range(0..3) {
        f.should.push(leaf(rng));
    }
    for _ in 0..rng.random_range(0..2) {
        f.must_not.push(leaf(rng));
    }
    f
}

fn spec() -> BTreeMap<String, PayloadIndexKind> {
    BTreeMap::from([
        ("kw".into(), PayloadIndexKind::Keyword),
        ("meta.tags".into(), PayloadIndexKind::Keyword),
        ("n".into(), PayloadIndexKind::Integer),
        ("f".into(), PayloadIndexKind::Float),
        ("at".into(), PayloadIndexKind::Datetime),
    ])
}

/// `n` random payloads and an index of them under [`spec`].
fn indexed(rng: &mut StdRng, n: usize) -> (Vec<Option<Value>>, PayloadIndex) {
    let payloads: Vec<Option<Value>> = (0..n).map(|_| payload(rng)).collect();
    let mut idx = PayloadIndex::new(&spec());
    for (i, p) in payloads.iter().enumerate() {
        idx.add(i as u32, p.as_ref());
    }
    (payloads, idx)
}

#[test]
fn index_resolution_agrees_with_brute_force_evaluator() {
    let mut rng = StdRng::seed_from_u64(99);
    let (payloads, idx) = indexed(&mut rng, 2000);
    let mut nonempty = 0;
    for round in 0..300 {
        let f = filter(&mut rng, 0);
        let Some(bits) = idx.resolve(&f, payloads.len()) else {
            panic!("round {round}: every key is indexed, resolve must succeed: {f:?}");
        };
        for (i, p) in payloads.iter().enumerate() {
            assert_eq!(
                bits.contains(i as u32),
                f.matches(p.as_ref()),
                "round {round} id {i}: {f:?} on {p:?}"
            );
        }
        if bits.count() > 0 {
            nonempty += 1;
        }
    }
    assert!(
        nonempty > 50,
        "filters too selective to test anything: {nonempty}"
    );
}

#[test]
fn unindexed_keys_and_kinds_fall_back() {
    let idx = PayloadIndex::new(&spec());
    let on = |key: &str, test: FieldTest| Filter {
        must: vec![Condition::Field(FieldCondition {
            key: key.into(),
            test,
        })],
        ..Filter::default()
    };
    assert!(
        idx.resolve(&on("other", FieldTest::Match(MatchValue::Bool(true))), 10)
            .is_none()
    );
    assert!(
        idx.resolve(&on("kw", FieldTest::Match(MatchValue::Integer(1))), 10)
            .is_none()
    );
    let dt = Range {
        gt: Some(0.0),
        datetime: true,
        ..Range::default()
    };
    assert!(idx.resolve(&on("f", FieldTest::Range(dt)), 10).is_none());
}

#[test]
fn bitset_ops() {
    let mut a = BitSet::full(130);
    assert_eq!(a.count(), 130);
    let mut b = BitSet::empty(130);
    b.insert(3);
    b.insert(129);
    a.and_not(&b);
    assert_eq!(a.count(), 128);
    assert!(!a.contains(129) && a.contains(128) && !a.contains(130));
    let v: Vec<u32> = b.iter().collect();
    assert_eq!(v, vec![3, 129]);
}

#[test]
fn checked_resolution_agrees_with_brute_force_and_checks_few_candidates() {
    let mut rng = StdRng::seed_from_u64(7);
    let (payloads, idx) = indexed(&mut rng, 4000);
    let checks = std::cell::Cell::new(0usize);
    let check = |i: u32, c: &Condition| {
        checks.set(checks.get() + 1);
        Some(c.matches(payloads[i as usize].as_ref()))
    };
    let kw = |k: &str, w: &str| {
        Condition::Field(FieldCondition {
            key: k.into(),
            test: FieldTest::Match(MatchValue::Keyword(w.into())),
        })
    };
    let range = |k: &str, lo: f64| {
        Condition::Field(FieldCondition {
            key: k.into(),
            test: FieldTest::Range(Range {
                gte: Some(lo),
                ..Range::default()
            }),
        })
    };
    let int = |v: i64| {
        Condition::Field(FieldCondition {
            key: "n".into(),
            test: FieldTest::Match(MatchValue::Integer(v)),
        })
    };
    // Narrow (kw AND n = v: ~1% of the points) then a wide range: checked.
    let narrow = Filter {
        must: vec![range("f", -0.9), kw("kw", "red"), int(3)],
        ..Filter::default()
    };
    // Wide (one keyword: ~18%) then a range: walked, never checked.
    let wide = Filter {
        must: vec![range("f", -0.9), kw("kw", "blue")],
        ..Filter::default()
    };
    for (f, expect_checks) in [(&narrow, true), (&wide, false)] {
        checks.set(0);
        let bits = idx
            .resolve_checked(f, payloads.len(), &check)
            .expect("every key is indexed");
        for (i, p) in payloads.iter().enumerate() {
            assert_eq!(
                bits.contains(i as u32),
                f.matches(p.as_ref()),
                "id {i}: {f:?}"
            );
        }
        assert_eq!(
            checks.get() > 0,
            expect_checks,
            "{f:?}: {} checks",
            checks.get()
        );
        assert!(
            checks.get() <= payloads.len() / CHECK_SHARE,
            "{} checks",
            checks.get()
        );
        assert_eq!(Some(bits), idx.resolve(f, payloads.len()));
    }
    // A check that cannot tell falls back to walking the range.
    let bits = idx.resolve_checked(&narrow, payloads.len(), &|_, _| None);
    assert_eq!(bits, idx.resolve(&narrow, payloads.len()));
    // Random filters, the checked way, against the evaluator.
    for round in 0..300 {
        let f = filter(&mut rng, 0);
        let bits = idx
            .resolve_checked(&f, payloads.len(), &check)
            .expect("every key is indexed");
        for (i, p) in payloads.iter().enumerate() {
            assert_eq!(
                bits.contains(i as u32),
                f.matches(p.as_ref()),
                "round {round} id {i}"
            );
        }
    }
}

/// `-0.0` and `0.0` are one value to a range, in the payloads and in the
/// bounds. A range from `0` to `-0.0` used to panic the search (its bounds,
/// ordered by their bits, came out reversed for `BTreeSet::range`), and a
/// payload of `-0.0` was missed by a range starting at `0`.
#[test]
fn signed_zeros_are_one_value_to_a_range() {
    let mut idx = PayloadIndex::new(&spec());
    let payloads: Vec<Option<Value>> = [-0.0, 0.0, 0.5, -0.5]
        .iter()
        .map(|f| Some(json!({ "f": f, "n": 0 })))
        .collect();
    for (i, p) in payloads.iter().enumerate() {
        idx.add(i as u32, p.as_ref());
    }
    for key in ["f", "n"] {
        for (lo, hi) in [(0.0, -0.0), (-0.0, 0.0), (0.0, 0.0), (-0.0, -0.0)] {
            let f = Filter {
                must: vec![Condition::Field(FieldCondition {
                    key: key.into(),
                    test: FieldTest::Range(Range {
                        gte: Some(lo),
                        lte: Some(hi),
                        ..Range::default()
                    }),
                })],
                ..Filter::default()
            };
            let bits = idx.resolve(&f, payloads.len()).expect("indexed");
            for (i, p) in payloads.iter().enumerate() {
                assert_eq!(
                    bits.contains(i as u32),
                    f.matches(p.as_ref()),
                    "{key} in [{lo:?}, {hi:?}], point {i}: {p:?}"
                );
            }
            assert!(
                bits.contains(0) && bits.contains(1),
                "{key} [{lo:?}, {hi:?}]"
            );
        }
    }
}
