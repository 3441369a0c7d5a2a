//! The vector database HTTP API: round trips and every 400 case.

use crate::common::spawn_app;
use serde_json::{Value, json};

async fn put(app: &crate::common::TestApp, path: &str, body: Value) -> (u16, Value) {
    let r = app
        .client
        .put(app.at(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn post(app: &crate::common::TestApp, path: &str, body: Value) -> (u16, Value) {
    let r = app
        .client
        .post(app.at(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn get(app: &crate::common::TestApp, path: &str) -> (u16, Value) {
    let r = app.client.get(app.at(path)).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn assert_openai_error(body: &Value, needle: &str) {
    let msg = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("not an OpenAI error: {body}"));
    assert!(body["error"]["type"].is_string(), "{body}");
    assert!(msg.contains(needle), "`{msg}` should mention `{needle}`");
}

async fn make(app: &crate::common::TestApp, name: &str) {
    let (s, b) = put(
        app,
        &format!("/v1/collections/{name}"),
        json!({"dimension": 3, "metric": "cosine", "payload_indexes": {"color": "keyword"}}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
}

#[tokio::test]
async fn collection_round_trip_with_string_and_numeric_ids() {
    let app = spawn_app("").await;
    make(&app, "docs").await;
    let (s, b) = put(
        &app,
        "/v1/collections/docs/points",
        json!({"points": [
            {"id": 1, "vector": [1.0, 0.0, 0.0], "payload": {"color": "red"}},
            {"id": "6f1c1f0e-8f5b-4d0c-9e0a-2b7d3c4e5f60", "vector": [0.0, 1.0, 0.0], "payload": {"color": "blue"}},
            {"id": 3, "vector": [0.9, 0.1, 0.0], "payload": {"color": "blue"}}
        ]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    let (s, b) = get(&app, "/v1/collections/docs").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["count"], 3);

    let (s, b) = post(
        &app,
        "/v1/collections/docs/points/search",
        json!({"vector": [1.0, 0.0, 0.0], "top_k": 2}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let ids: Vec<&Value> = b["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(ids, vec![&json!(1), &json!(3)]);
    assert_eq!(b["results"][0]["payload"]["color"], "red");

    // Filtered: only blue points; the UUID id comes back as given.
    let (s, b) = post(
        &app,
        "/v1/collections/docs/points/search",
        json!({"vector": [0.0, 1.0, 0.0], "top_k": 1, "filter": {"must": [{"key": "color", "match": {"value": "blue"}}]}}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["results"][0]["id"],
        "6f1c1f0e-8f5b-4d0c-9e0a-2b7d3c4e5f60"
    );

    let (s, b) = post(
        &app,
        "/v1/collections/docs/points/search/batch",
        json!({"searches": [{"vector": [0.0, 1.0, 0.0], "top_k": 1}, {"vector": [1.0, 0.0, 0.0], "top_k": 1}]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["results"][1][0]["id"], 1);
    assert_eq!(
        b["results"][0][0]["id"],
        "6f1c1f0e-8f5b-4d0c-9e0a-2b7d3c4e5f60"
    );
    // A bad batch names what is wrong: no searches, or the search at fault.
    for (body, param) in [
        (json!({"search": []}), "searches"),
        (json!({"searches": {"vector": [1]}}), "searches"),
        (
            json!({"searches": [{"vector": [0.0, 1.0, 0.0], "top_k": 1}, {"vector": "x", "top_k": 1}]}),
            "searches[1]",
        ),
        (
            json!({"searches": [{"vector": [0.0, 1.0, 0.0], "top_k": "x"}]}),
            "searches[0]",
        ),
    ] {
        let (s, b) = post(&app, "/v1/collections/docs/points/search/batch", body).await;
        assert_eq!(s, 400, "{b}");
        assert_eq!(b["error"]["param"], param, "{b}");
    }

    let (s, b) = get(&app, "/v1/collections/docs/points/3").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["payload"]["color"], "blue");

    let (s, b) = post(
        &app,
        "/v1/collections/docs/points/delete",
        json!({"ids": [3]}),
    )
    .await;
    assert_eq!((s, &b["deleted"]), (200, &json!(1)), "{b}");
    let (s, _) = get(&app, "/v1/collections/docs/points/3").await;
    assert_eq!(s, 404);

    let (s, b) = post(
        &app,
        "/v1/collections/docs/points/delete",
        json!({"filter": {"must": [{"key": "color", "match": {"value": "red"}}]}}),
    )
    .await;
    assert_eq!((s, &b["deleted"]), (200, &json!(1)), "{b}");

    let (s, b) = post(&app, "/v1/collections/docs/snapshot", json!({})).await;
    assert_eq!(s, 200, "{b}");

    let (s, b) = get(&app, "/v1/collections").await;
    assert_eq!(s, 200);
    assert_eq!(b["collections"][0]["name"], "docs");
    assert_eq!(b["collections"][0]["count"], 1);

    let r = app
        .client
        .delete(app.at("/v1/collections/docs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, b) = get(&app, "/v1/collections/docs").await;
    assert_eq!(s, 404);
    assert_openai_error(&b, "docs");
}

#[tokio::test]
async fn every_bad_input_is_a_400_naming_the_problem() {
    let app = spawn_app("").await;
    make(&app, "c").await;

    let (s, b) = put(
        &app,
        "/v1/collections/x",
        json!({"dimension": 3, "metric": "manhattan"}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_openai_error(&b, "manhattan");

    let (s, b) = put(
        &app,
        "/v1/collections/c/points",
        json!({"points": [{"id": 1, "vector": [1.0, 0.0]}]}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_openai_error(&b, "dimension");

    // JSON has no NaN; a number too large for f32/f64 is the closest a client can send.
    let r = app
        .client
        .put(app.at("/v1/collections/c/points"))
        .header("content-type", "application/json")
        .body(r#"{"points":[{"id":1,"vector":[1e999,0,0]}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let (s, b) = post(
        &app,
        "/v1/collections/c/points/search",
        json!({"vector": [1.0, 0.0, 0.0], "top_k": 0}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_openai_error(&b, "top_k");

    let (s, b) = post(
        &app,
        "/v1/collections/c/points/search",
        json!({"vector": [1.0, 0.0, 0.0], "top_k": 1001}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_openai_error(&b, "top_k");

    let (s, b) = post(
        &app,
        "/v1/collections/c/points/search",
        json!({"vector": [1.0, 0.0, 0.0], "top_k": 1, "filter": {"must": [{"key": "color", "matches": 1}]}}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_openai_error(&b, "filter");

    let (s, b) = post(
        &app,
        "/v1/collections/c/points/search",
        json!({"vector": [1.0, 0.0], "top_k": 1}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_openai_error(&b, "dimension");

    let (s, b) = post(
        &app,
        "/v1/collections/missing/points/search",
        json!({"vector": [1.0, 0.0, 0.0], "top_k": 1}),
    )
    .await;
    assert_eq!(s, 404, "{b}");

    let (s, b) = put(
        &app,
        "/v1/collections/c",
        json!({"dimension": 3, "metric": "cosine"}),
    )
    .await;
    assert_eq!(s, 409, "{b}");

    let (s, b) = put(&app, "/v1/collections/c/points", json!({"points": []})).await;
    assert_eq!(s, 400, "{b}");
}

#[tokio::test]
async fn vectors_survive_a_restart_of_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::common::test_config("", dir.path());
    {
        let state = uat_server::build(cfg.clone()).await.unwrap();
        let c = state
            .vector
            .store()
            .create_collection(
                "keep",
                uat_vector::CollectionConfig::new(2, uat_vector::Metric::L2),
            )
            .unwrap();
        c.upsert(vec![uat_vector::Point {
            id: 7.into(),
            vector: vec![0.5, 0.5],
            payload: None,
        }])
        .unwrap();
    }
    let state = uat_server::build(cfg).await.unwrap();
    let c = state.vector.store().get("keep").unwrap();
    assert_eq!(c.count(), 1);
    assert_eq!(c.get(&7.into()).unwrap().vector, vec![0.5, 0.5]);
}

/// Only upserts and batch searches take the bulk body limit; a single
/// search, a delete or a collection's settings take the ordinary one (a
/// JSON body parsed whole takes many times its size in memory: a 64 MiB
/// search body was parsed before anything looked at it).
#[tokio::test]
async fn only_upserts_and_batch_searches_take_the_bulk_limit() {
    let app = spawn_app("[server]\nbody_limit = 4096\nbulk_body_limit = 1048576\n").await;
    let (s, _) = put(
        &app,
        "/v1/collections/bulk",
        json!({"dimension": 3, "metric": "cosine"}),
    )
    .await;
    assert_eq!(s, 201);
    let padded = |v: Value| format!("{v}{}", " ".repeat(8000));
    let send = |method: reqwest::Method, path: &str, body: String| {
        app.client
            .request(method, app.at(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let upsert = padded(json!({"points": [{"id": 1, "vector": [1, 0, 0]}]}));
    let r = send(reqwest::Method::PUT, "/v1/collections/bulk/points", upsert)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let batch = padded(json!({"searches": [{"vector": [1, 0, 0], "top_k": 1}]}));
    let r = send(
        reqwest::Method::POST,
        "/v1/collections/bulk/points/search/batch",
        batch,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            "/v1/collections/bulk/points/search",
            json!({"vector": [1, 0, 0], "top_k": 1}),
        ),
        (
            reqwest::Method::POST,
            "/v1/collections/bulk/points/delete",
            json!({"ids": [1]}),
        ),
        (
            reqwest::Method::PUT,
            "/v1/collections/other",
            json!({"dimension": 3, "metric": "cosine"}),
        ),
    ] {
        let r = send(method, path, padded(body)).await.unwrap();
        assert_eq!(r.status(), 413, "{path}");
    }
}
