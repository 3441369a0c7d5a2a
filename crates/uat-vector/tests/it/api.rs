//! Every bad-request case maps to its own error variant, naming the problem.

use super::*;
use serde_json::json;
use uat_vector::{Filter, SearchRequest, VectorError};

#[test]
fn wrong_dimension_is_rejected_on_upsert_and_search() {
    let (_d, _s, c) = filled(10, 8, Metric::Cosine);
    let bad = Point {
        id: PointId::Num(99),
        vector: vec![0.0; 7],
        payload: None,
    };
    let e = c.upsert(vec![bad]).unwrap_err();
    assert!(
        matches!(
            e,
            VectorError::WrongDimension {
                expected: 8,
                got: 7
            }
        ),
        "{e}"
    );
    assert!(e.is_bad_request());
    assert!(e.to_string().contains("expected 8, got 7"));
    let e = c.search(&SearchRequest::new(vec![0.0; 9], 3)).unwrap_err();
    assert!(matches!(
        e,
        VectorError::WrongDimension {
            expected: 8,
            got: 9
        }
    ));
    // Nothing of a rejected batch is written.
    let mixed = vec![
        Point {
            id: PointId::Num(100),
            vector: vec![0.5; 8],
            payload: None,
        },
        Point {
            id: PointId::Num(101),
            vector: vec![0.5; 3],
            payload: None,
        },
    ];
    assert!(c.upsert(mixed).is_err());
    assert!(c.get(&PointId::Num(100)).is_err());
}

#[test]
fn nan_and_infinity_are_rejected() {
    let (_d, _s, c) = filled(10, 4, Metric::L2);
    for (bad, idx) in [
        (f32::NAN, 2usize),
        (f32::INFINITY, 0),
        (f32::NEG_INFINITY, 3),
    ] {
        let mut v = vec![0.1f32; 4];
        v[idx] = bad;
        let e = c
            .upsert(vec![Point {
                id: PointId::Num(1),
                vector: v.clone(),
                payload: None,
            }])
            .unwrap_err();
        assert!(
            matches!(e, VectorError::NonFinite { index } if index == idx),
            "{e}"
        );
        assert!(e.to_string().contains("non-finite"));
        let e = c.search(&SearchRequest::new(v, 1)).unwrap_err();
        assert!(matches!(e, VectorError::NonFinite { .. }));
    }
}

#[test]
fn unknown_metric_is_rejected() {
    let e =
        CollectionConfig::from_json(json!({"dimension": 4, "metric": "manhattan"})).unwrap_err();
    assert!(
        matches!(&e, VectorError::UnknownMetric(m) if m == "manhattan"),
        "{e}"
    );
    assert!(e.to_string().contains("cosine, dot or l2"));
    let e = CollectionConfig::from_json(json!({"dimension": 4, "metric": 3})).unwrap_err();
    assert!(matches!(e, VectorError::UnknownMetric(_)));
    let ok = CollectionConfig::from_json(json!({"dimension": 4, "metric": "Cosine",
        "hnsw": {"m": 8}, "quantization": "sq8", "payload_indexes": {"lang": "keyword"}}))
    .unwrap();
    assert_eq!(ok.metric, Metric::Cosine);
    assert_eq!(ok.hnsw.m, 8);
    assert_eq!(ok.hnsw.ef_construction, 200);
    let e = CollectionConfig::from_json(json!({"dimension": 0, "metric": "dot"})).unwrap_err();
    assert!(matches!(e, VectorError::BadConfig(_)), "{e}");
    let e = CollectionConfig::from_json(json!({"dimension": 4, "metric": "dot", "hnsw": {"m": 1}}))
        .unwrap_err();
    assert!(e.to_string().contains("hnsw.m"), "{e}");
}

#[test]
fn top_k_out_of_range_is_rejected() {
    let (_d, _s, c) = filled(10, 4, Metric::Dot);
    for k in [0usize, 1001, 5000] {
        let e = c.search(&SearchRequest::new(vec![0.1; 4], k)).unwrap_err();
        assert!(
            matches!(e, VectorError::BadTopK { got, max: 1000 } if got == k),
            "{e}"
        );
        assert!(e.is_bad_request());
    }
    assert_eq!(
        c.search(&SearchRequest::new(vec![0.1; 4], 1000))
            .unwrap()
            .len(),
        10
    );
    let mut r = SearchRequest::new(vec![0.1; 4], 1);
    r.ef = Some(0);
    assert!(matches!(c.search(&r), Err(VectorError::BadRequest(_))));
}

#[test]
fn malformed_filter_is_rejected_with_its_path() {
    let e = SearchRequest::from_json(json!({
        "vector": [0.1, 0.2], "top_k": 3,
        "filter": {"must": [{"key": "a", "range": {"gt": "not a date"}}]}
    }))
    .unwrap_err();
    assert!(
        matches!(&e, VectorError::BadFilter(m) if m.contains("filter.must[0].range.gt")),
        "{e}"
    );
    let e = SearchRequest::from_json(json!({"vector": [0.1], "top_k": 3, "filter": {"must": 5}}))
        .unwrap_err();
    assert!(matches!(e, VectorError::BadFilter(_)), "{e}");
    let e = SearchRequest::from_json(json!({"vector": [0.1], "top_k": 3, "bogus": 1})).unwrap_err();
    assert!(matches!(e, VectorError::BadRequest(_)), "{e}");
    // A well-formed request parses, defaults included.
    let r = SearchRequest::from_json(json!({"vector": [0.1], "top_k": 3,
        "filter": {"should": [{"key": "t", "match": {"any": ["a", 2]}}]}}))
    .unwrap();
    assert!(r.with_payload && !r.with_vector && r.ef.is_none() && r.filter.is_some());
    // Through plain serde the message survives too.
    let e = serde_json::from_value::<Filter>(json!({"must": [{"key": "a"}]})).unwrap_err();
    assert!(e.to_string().contains("match or range"));
}

#[test]
fn unknown_collection_is_not_found_and_names_are_checked() {
    let (_d, s) = store();
    assert!(matches!(s.get("nope"), Err(VectorError::NotFound(n)) if n == "nope"));
    assert!(matches!(
        s.drop_collection("nope"),
        Err(VectorError::NotFound(_))
    ));
    for bad in ["", "a/b", "..", "x y", &"n".repeat(65)] {
        assert!(matches!(
            s.create_collection(bad, config(4, Metric::Dot)),
            Err(VectorError::BadCollectionName(_))
        ));
    }
    s.create_collection("ok-name_1", config(4, Metric::Dot))
        .unwrap();
    assert!(matches!(
        s.create_collection("ok-name_1", config(4, Metric::Dot)),
        Err(VectorError::AlreadyExists(_))
    ));
}

#[test]
fn point_ids_round_trip_in_canonical_form() {
    let (_d, s) = store();
    let c = s.create_collection("ids", config(2, Metric::L2)).unwrap();
    let upper = "550E8400-E29B-41D4-A716-446655440000";
    let pts: Vec<Point> = serde_json::from_value(json!([
        {"id": 7, "vector": [0.0, 1.0]},
        {"id": upper, "vector": [1.0, 0.0], "payload": {"k": "v"}}
    ]))
    .unwrap();
    c.upsert(pts).unwrap();
    let hits = c.search(&SearchRequest::new(vec![1.0, 0.0], 2)).unwrap();
    let body = serde_json::to_value(&hits).unwrap();
    assert_eq!(body[0]["id"], json!(upper.to_lowercase()));
    assert_eq!(body[0]["payload"], json!({"k": "v"}));
    assert_eq!(body[1]["id"], json!(7));
    assert_eq!(
        c.get(&PointId::parse(upper).unwrap()).unwrap().payload,
        Some(json!({"k": "v"}))
    );
    assert!(serde_json::from_value::<PointId>(json!("not-a-uuid")).is_err());
    assert!(serde_json::from_value::<PointId>(json!(-1)).is_err());
    assert!(matches!(
        c.get(&PointId::Num(8)),
        Err(VectorError::PointNotFound(_))
    ));
    let e = c.upsert(vec![Point {
        id: PointId::Num(1),
        vector: vec![0.0, 0.0],
        payload: Some(json!([1])),
    }]);
    assert!(matches!(e, Err(VectorError::BadRequest(m)) if m.contains("JSON object")));
}

const UPPER: &str = "550E8400-E29B-41D4-A716-446655440000";
const LOWER: &str = "550e8400-e29b-41d4-a716-446655440000";

fn uuid_point(id: &str, x: f32) -> Point {
    serde_json::from_value(json!({"id": id, "vector": [x, 1.0]})).unwrap()
}

#[test]
fn uuid_upserted_in_upper_case_is_deleted_in_lower_case() {
    let (_d, s) = store();
    let c = s.create_collection("u", config(2, Metric::L2)).unwrap();
    c.upsert(vec![uuid_point(UPPER, 0.0)]).unwrap();
    let ids: Vec<PointId> = serde_json::from_value(json!([LOWER])).unwrap();
    assert_eq!(c.delete(ids).unwrap(), 1);
    assert_eq!(c.count(), 0);
}

#[test]
fn every_spelling_of_a_uuid_is_one_point() {
    let (_d, s) = store();
    let c = s.create_collection("u", config(2, Metric::L2)).unwrap();
    let spellings = [
        UPPER.to_owned(),
        LOWER.to_owned(),
        LOWER.replace('-', ""),
        format!("{{{LOWER}}}"),
        format!("urn:uuid:{UPPER}"),
    ];
    for (i, id) in spellings.iter().enumerate() {
        c.upsert(vec![uuid_point(id, i as f32)]).unwrap();
        assert_eq!(c.count(), 1, "{id}");
        assert_eq!(PointId::parse(id).unwrap(), PointId::Uuid(LOWER.into()));
    }
    assert_eq!(
        c.get(&PointId::parse(UPPER).unwrap()).unwrap().vector,
        vec![4.0, 1.0]
    );
    assert_eq!(c.ids(), vec![PointId::Uuid(LOWER.into())]);
}

/// Data written before ids were canonical (built here directly, as the old
/// code stored them) is canonicalized on load, from the WAL and from a snapshot.
#[test]
fn uuid_ids_of_old_data_are_canonical_after_reopen() {
    for snapshot in [false, true] {
        let (d, s) = store();
        let c = s.create_collection("u", config(2, Metric::L2)).unwrap();
        c.upsert(vec![Point {
            id: PointId::Uuid(UPPER.into()),
            vector: vec![0.0, 1.0],
            payload: None,
        }])
        .unwrap();
        c.upsert(vec![Point {
            id: PointId::Uuid(LOWER.into()),
            vector: vec![1.0, 1.0],
            payload: None,
        }])
        .unwrap();
        if snapshot {
            c.snapshot().unwrap();
        }
        drop((c, s));
        let s = VectorStore::open(
            d.path(),
            StoreOptions {
                fsync: FsyncPolicy::Never,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let c = s.get("u").unwrap();
        assert_eq!(c.count(), 1, "snapshot: {snapshot}");
        assert_eq!(c.ids(), vec![PointId::Uuid(LOWER.into())]);
        assert_eq!(c.delete(vec![PointId::parse(UPPER).unwrap()]).unwrap(), 1);
        // No other spelling is left behind in the graph, to come back in a search.
        c.upsert(vec![Point {
            id: PointId::Num(9),
            vector: vec![100.0, 100.0],
            payload: None,
        }])
        .unwrap();
        let hits = c.search(&SearchRequest::new(vec![0.0, 1.0], 10)).unwrap();
        let ids: Vec<PointId> = hits.into_iter().map(|h| h.id).collect();
        assert_eq!(ids, vec![PointId::Num(9)], "snapshot: {snapshot}");
    }
}
