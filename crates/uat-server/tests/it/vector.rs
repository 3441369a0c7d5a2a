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

/// A collection that fails to open at start-up is skipped (its files left
/// for repair, the others served) and `/ready` names it as degraded; before,
/// only a log line said so.
#[tokio::test]
async fn a_collection_that_fails_to_open_shows_in_ready() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::common::test_config("", dir.path());
    let folder = {
        let state = uat_server::build(cfg.clone()).await.unwrap();
        let store = state.vector.store();
        for name in ["ok", "broken"] {
            store
                .create_collection(
                    name,
                    uat_vector::CollectionConfig::new(2, uat_vector::Metric::L2),
                )
                .unwrap();
        }
        store.dir().join("broken")
    };
    std::fs::write(folder.join("config.json"), b"{\"dimension\": ").unwrap();
    let state = uat_server::build(cfg).await.unwrap();
    assert!(state.vector.store().get("ok").is_ok());
    let checks = state.ready_checks().await;
    let check = checks
        .iter()
        .find(|c| c.name == "vector.collection.broken")
        .expect("the damaged collection is named");
    assert_eq!(check.status, uat_server::state::ReadyStatus::Degraded);
    assert!(!check.critical);
    let vector = checks.iter().find(|c| c.name == "vector").unwrap();
    assert_eq!(vector.status, uat_server::state::ReadyStatus::Ok);
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

/// A path segment axum cannot decode (`%C0` is not UTF-8) is a 400 in the
/// OpenAI error shape on every route with a path parameter, not axum's
/// plain-text "Invalid UTF-8".
#[tokio::test]
async fn bad_path_parameters_are_openai_shaped_400s() {
    let app = spawn_app("").await;
    make(&app, "c").await;
    let vector = json!({"vector": [1.0, 0.0, 0.0], "top_k": 1});
    for (method, path, body) in [
        (reqwest::Method::GET, "/v1/collections/%C0", None),
        (
            reqwest::Method::PUT,
            "/v1/collections/%C0",
            Some(json!({"dimension": 3, "metric": "cosine"})),
        ),
        (reqwest::Method::DELETE, "/v1/collections/%C0", None),
        (reqwest::Method::GET, "/v1/collections/%C0/points/1", None),
        (reqwest::Method::GET, "/v1/collections/c/points/%C0", None),
        (
            reqwest::Method::PUT,
            "/v1/collections/%C0/points",
            Some(json!({"points": [{"id": 1, "vector": [1.0, 0.0, 0.0]}]})),
        ),
        (
            reqwest::Method::POST,
            "/v1/collections/%C0/points/search",
            Some(vector.clone()),
        ),
        (
            reqwest::Method::POST,
            "/v1/collections/%C0/points/search/batch",
            Some(json!({"searches": [vector.clone()]})),
        ),
        (
            reqwest::Method::POST,
            "/v1/collections/%C0/points/delete",
            Some(json!({"ids": [1]})),
        ),
        (
            reqwest::Method::POST,
            "/v1/collections/%C0/snapshot",
            Some(json!({})),
        ),
        // The other modules' path parameters.
        (reqwest::Method::GET, "/v1/models/%C0", None),
        (reqwest::Method::GET, "/v1/memories/%C0?user_id=u1", None),
        (
            reqwest::Method::PATCH,
            "/v1/memories/%C0?user_id=u1",
            Some(json!({"content": "x"})),
        ),
        (reqwest::Method::DELETE, "/v1/memories/%C0?user_id=u1", None),
        (
            reqwest::Method::GET,
            "/v1/memories/%C0/history?user_id=u1",
            None,
        ),
        (
            reqwest::Method::POST,
            "/v1/embeddings/models/%C0/load",
            None,
        ),
        (
            reqwest::Method::POST,
            "/v1/embeddings/models/%C0/unload",
            None,
        ),
    ] {
        let mut req = app.client.request(method.clone(), app.at(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let ctype = crate::common::header(&r, "content-type");
        let text = r.text().await.unwrap();
        assert_eq!(status, 400, "{method} {path}: {text}");
        assert!(
            ctype.starts_with("application/json"),
            "{method} {path}: {ctype} {text}"
        );
        let b: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        for field in ["message", "type", "code"] {
            assert!(b["error"][field].is_string(), "{method} {path}: {text}");
        }
        assert_openai_error(&b, "UTF-8");
    }
}

/// One search request can ask for at most 10,000 results (the sum of
/// top_k over a batch), 16,777,216 vector components (with_vector) and
/// 32 MiB of payloads: past any of them it is a 400 naming the limit, never
/// a response built whatever its size (a batch of 1,000 searches of
/// top_k 1,000 with vectors ran the process out of memory).
#[tokio::test]
async fn searches_past_the_response_limits_are_400s_naming_the_limit() {
    let app = spawn_app("").await;
    make(&app, "c").await;
    let big = "x".repeat(1024 * 1024);
    let (s, b) = put(
        &app,
        "/v1/collections/c/points",
        json!({"points": [
            {"id": 1, "vector": [1.0, 0.0, 0.0], "payload": {"color": "red", "text": big}},
            {"id": 2, "vector": [0.0, 1.0, 0.0], "payload": {"color": "blue"}}
        ]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let batch = |n: usize, top_k: usize, with_payload: bool| {
        let one = json!({"vector": [1.0, 0.0, 0.0], "top_k": top_k, "with_payload": with_payload});
        json!({ "searches": vec![one; n] })
    };
    let too_large = |s: u16, b: &Value, limit: &str| {
        assert_eq!(s, 400, "{b}");
        assert_openai_error(b, limit);
        assert_eq!(b["error"]["code"], "response_too_large", "{b}");
    };

    // Hits: 10 x 1,000 is the most; one more search is refused.
    let (s, b) = post(
        &app,
        "/v1/collections/c/points/search/batch",
        batch(10, 1000, false),
    )
    .await;
    assert_eq!(s, 200, "{}", b["error"]);
    assert_eq!(b["results"].as_array().map(Vec::len), Some(10));
    let (s, b) = post(
        &app,
        "/v1/collections/c/points/search/batch",
        batch(11, 1000, false),
    )
    .await;
    too_large(s, &b, "10000");
    assert_eq!(b["error"]["param"], "searches", "{b}");

    // Payloads: the 1 MiB one 33 times is past 32 MiB; without payloads
    // the same batch is fine.
    let (s, b) = post(
        &app,
        "/v1/collections/c/points/search/batch",
        batch(33, 1, true),
    )
    .await;
    too_large(s, &b, "33554432");
    let (s, b) = post(
        &app,
        "/v1/collections/c/points/search/batch",
        batch(33, 1, false),
    )
    .await;
    assert_eq!(s, 200, "{}", b["error"]);
    let (s, b) = post(
        &app,
        "/v1/collections/c/points/search/batch",
        batch(31, 1, true),
    )
    .await;
    assert_eq!(s, 200, "{}", b["error"]);
    assert_eq!(
        b["results"][30][0]["payload"]["text"]
            .as_str()
            .map(str::len),
        Some(1024 * 1024)
    );

    // Vector components: 256 x 65,536 is the most a search may return.
    let (s, b) = put(
        &app,
        "/v1/collections/wide",
        json!({"dimension": 65536, "metric": "l2"}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let wide = vec![0.5f32; 65536];
    let (s, b) = put(
        &app,
        "/v1/collections/wide/points",
        json!({"points": [{"id": 1, "vector": wide}]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let search = |top_k: usize| json!({"vector": wide, "top_k": top_k, "with_vector": true});
    let (s, b) = post(&app, "/v1/collections/wide/points/search", search(257)).await;
    too_large(s, &b, "16777216");
    assert_eq!(b["error"]["param"], "top_k", "{b}");
    let (s, b) = post(&app, "/v1/collections/wide/points/search", search(256)).await;
    assert_eq!(s, 200, "{}", b["error"]);
    assert_eq!(
        b["results"][0]["vector"].as_array().map(Vec::len),
        Some(65536)
    );
    let (s, b) = post(
        &app,
        "/v1/collections/wide/points/search/batch",
        json!({"searches": [search(128), search(129)]}),
    )
    .await;
    too_large(s, &b, "16777216");
}
