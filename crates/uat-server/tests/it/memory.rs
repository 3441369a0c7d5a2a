//! The memory API over HTTP: routes, user scoping, 400s naming the field,
//! and the keyword fallback when no embedding model is configured.

use crate::common::spawn_app;
use serde_json::{Value, json};

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("request failed");
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

fn param(body: &Value) -> &str {
    body["error"]["param"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn memory_http_crud_dedupe_and_user_scoping() {
    let app = spawn_app("").await;
    let c = &app.client;
    let (s, a) = send(c.post(app.at("/v1/memories")).json(&json!({
        "user_id": "alice", "kind": "fact", "content": "Alice keeps bees", "tags": ["hobby"], "metadata": {"src": "chat"}
    })))
    .await;
    assert_eq!(s, 201, "{a}");
    assert_eq!(a["deduplicated"], json!(false));
    let id = a["id"].as_str().unwrap().to_string();
    let created = a["created_at"].as_str().unwrap();
    assert!(
        uat_memory::input::time(Some(created), "created_at")
            .unwrap()
            .is_some(),
        "{created}"
    );

    let (s, again) = send(
        c.post(app.at("/v1/memories"))
            .json(&json!({"user_id": "alice", "kind": "fact", "content": "Alice keeps bees"})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(again["deduplicated"], json!(true));
    assert_eq!(again["id"], json!(id));
    let (s, bob) = send(
        c.post(app.at("/v1/memories"))
            .json(&json!({"user_id": "bob", "content": "Alice keeps bees"})),
    )
    .await;
    assert_eq!(s, 201);
    let bob_id = bob["id"].as_str().unwrap().to_string();

    let one = format!("/v1/memories/{id}");
    let (s, got) = send(c.get(app.at(&format!("{one}?user_id=alice")))).await;
    assert_eq!(s, 200);
    assert_eq!(got["content"], json!("Alice keeps bees"));
    // Another user's id is a plain 404, on every id route.
    for req in [
        c.get(app.at(&format!("{one}?user_id=bob"))),
        c.patch(app.at(&format!("{one}?user_id=bob")))
            .json(&json!({"content": "mine now"})),
        c.delete(app.at(&format!("{one}?user_id=bob"))),
        c.get(app.at(&format!("{one}/history?user_id=bob"))),
        c.get(app.at("/v1/memories/not-a-uuid?user_id=alice")),
    ] {
        let (s, body) = send(req).await;
        assert_eq!(s, 404, "{body}");
        assert!(!body.to_string().contains("bees"));
    }
    let (s, body) = send(c.get(app.at(&one))).await;
    assert_eq!((s, param(&body)), (400, "user_id"));

    let (s, upd) = send(
        c.patch(app.at(&format!("{one}?user_id=alice")))
            .json(&json!({"tags": ["bees", "hobby"], "expires_at": null})),
    )
    .await;
    assert_eq!(s, 200, "{upd}");
    assert_eq!(upd["tags"], json!(["bees", "hobby"]));
    let (s, hist) = send(c.get(app.at(&format!("{one}/history?user_id=alice")))).await;
    assert_eq!(s, 200);
    let ops: Vec<&str> = hist["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops, vec!["create", "update"]);

    // List: newest first with a cursor; tags; bob sees only his own.
    for i in 0..5 {
        send(
            c.post(app.at("/v1/memories"))
                .json(&json!({"user_id": "alice", "content": format!("note {i}")})),
        )
        .await;
    }
    let (s, page) = send(c.get(app.at("/v1/memories?user_id=alice&limit=4"))).await;
    assert_eq!(s, 200);
    assert_eq!(page["memories"].as_array().unwrap().len(), 4);
    assert_eq!(page["memories"][0]["content"], json!("note 4"));
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page2) = send(c.get(app.at(&format!(
        "/v1/memories?user_id=alice&limit=4&cursor={cursor}"
    ))))
    .await;
    assert_eq!(page2["memories"].as_array().unwrap().len(), 2);
    assert!(page2["next_cursor"].is_null());
    let (_, tagged) =
        send(c.get(app.at("/v1/memories?user_id=alice&tags=bees,nope&tag_mode=all"))).await;
    assert_eq!(tagged["memories"].as_array().unwrap().len(), 0);
    let (_, tagged) =
        send(c.get(app.at("/v1/memories?user_id=alice&tags=bees,nope&tag_mode=any"))).await;
    assert_eq!(tagged["memories"][0]["id"], json!(id));
    let (_, bobs) = send(c.get(app.at("/v1/memories?user_id=bob"))).await;
    assert_eq!(bobs["memories"].as_array().unwrap().len(), 1);

    // Keyword search is scoped too.
    let (s, found) = send(
        c.post(app.at("/v1/memories/search"))
            .json(&json!({"user_id": "bob", "query": "bees", "mode": "keyword"})),
    )
    .await;
    assert_eq!(s, 200, "{found}");
    let ids: Vec<&str> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![bob_id.as_str()]);
    assert_eq!(found["results"][0]["keyword_rank"], json!(1));
    assert!(found["results"][0]["semantic_rank"].is_null());

    // Delete one, then everything of alice; bob is untouched.
    let (s, _) = send(c.delete(app.at(&format!("{one}?user_id=alice")))).await;
    assert_eq!(s, 200);
    let (s, _) = send(c.get(app.at(&format!("{one}?user_id=alice")))).await;
    assert_eq!(s, 404);
    let (s, body) = send(c.delete(app.at("/v1/memories"))).await;
    assert_eq!((s, param(&body)), (400, "user_id"));
    let (s, body) = send(c.delete(app.at("/v1/memories?user_id=alice"))).await;
    assert_eq!(s, 200);
    assert_eq!(body, json!({"deleted": 5}));
    let (_, bobs) = send(c.get(app.at("/v1/memories?user_id=bob"))).await;
    assert_eq!(bobs["memories"].as_array().unwrap().len(), 1);
    let (_, found) = send(
        c.post(app.at("/v1/memories/search"))
            .json(&json!({"user_id": "alice", "query": "note bees", "mode": "keyword"})),
    )
    .await;
    assert_eq!(found["results"], json!([]));
}

#[tokio::test]
async fn memory_http_bad_input_is_400_naming_the_field_and_writes_nothing() {
    let app = spawn_app("").await;
    let c = &app.client;
    let big = "x".repeat(32 * 1024 + 1);
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"user_id": "u", "content": format!("m{i}")}))
        .collect();
    let posts = [
        (json!({"content": "x"}), "user_id"),
        (json!({"user_id": "u", "content": ""}), "content"),
        (json!({"user_id": "u", "content": big}), "content"),
        (json!({"memories": too_many}), "memories"),
        (
            json!({"user_id": "u", "content": "x", "expires_at": "next week"}),
            "expires_at",
        ),
        (
            json!({"user_id": "u", "content": "x", "metadata": ["not", "an", "object"]}),
            "metadata",
        ),
        (
            json!({"memories": [{"user_id": "u", "content": "fine"}, {"user_id": "u", "content": ""}]}),
            "memories[1].content",
        ),
    ];
    for (body, want) in posts {
        let (s, err) = send(c.post(app.at("/v1/memories")).json(&body)).await;
        assert_eq!((s, param(&err)), (400, want), "{err}");
    }
    let searches = [
        (
            json!({"user_id": "u", "query": "x", "mode": "fuzzy"}),
            "mode",
        ),
        (json!({"query": "x"}), "user_id"),
        (
            json!({"user_id": "u", "query": "x", "since": "last year"}),
            "since",
        ),
        (
            json!({"user_id": "u", "query": "x", "metadata": 7}),
            "metadata",
        ),
    ];
    for (body, want) in searches {
        let (s, err) = send(c.post(app.at("/v1/memories/search")).json(&body)).await;
        assert_eq!((s, param(&err)), (400, want), "{err}");
    }
    for (q, want) in [
        ("", "user_id"),
        ("?user_id=u&until=2024-99-01", "until"),
        ("?user_id=u&limit=0", "limit"),
    ] {
        let (s, err) = send(c.get(app.at(&format!("/v1/memories{q}")))).await;
        assert_eq!((s, param(&err)), (400, want), "{err}");
    }
    let (_, page) = send(c.get(app.at("/v1/memories?user_id=u"))).await;
    assert_eq!(page["memories"], json!([]), "nothing partial was written");
}

#[tokio::test]
async fn memory_http_without_a_model_semantic_says_so_and_hybrid_falls_back() {
    let app = spawn_app("").await;
    let c = &app.client;
    send(
        c.post(app.at("/v1/memories"))
            .json(&json!({"user_id": "u", "content": "order ZX-48213 shipped"})),
    )
    .await;
    let (s, err) = send(
        c.post(app.at("/v1/memories/search"))
            .json(&json!({"user_id": "u", "query": "ZX-48213", "mode": "semantic"})),
    )
    .await;
    assert_eq!((s, param(&err)), (400, "mode"));
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("embedding model"),
        "{err}"
    );
    let (s, r) = send(
        c.post(app.at("/v1/memories/search"))
            .json(&json!({"user_id": "u", "query": "ZX-48213"})),
    )
    .await;
    assert_eq!(s, 200);
    assert!(r["warning"].as_str().unwrap().contains("keyword"), "{r}");
    assert_eq!(r["results"][0]["content"], json!("order ZX-48213 shipped"));
    let (s, ready) = send(c.get(app.at("/ready"))).await;
    assert_eq!(s, 200, "{ready}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("uat_memory_operations_total{op=\"search\",result=\"ok\"}"),
        "metrics:\n{metrics}"
    );
    assert!(metrics.contains("uat_memory_operation_seconds_bucket{op=\"insert\""));
    assert!(metrics.contains("uat_memory_rows"));
}

/// `memory.purge_interval` reaches the service: an expired memory leaves the
/// database by itself (not only the API's answers), the live one stays.
#[tokio::test]
async fn memory_expired_rows_are_purged_on_the_configured_interval() {
    use uat_memory::Store;
    let app = spawn_app("[memory]\npurge_interval = \"100ms\"\n").await;
    let c = &app.client;
    let soon = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(300);
    let soon = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (s, _) = send(c.post(app.at("/v1/memories")).json(&json!({
        "user_id": "u", "content": "a passing thought", "expires_at": soon
    })))
    .await;
    assert_eq!(s, 201);
    let (s, _) = send(
        c.post(app.at("/v1/memories"))
            .json(&json!({"user_id": "u", "content": "a lasting thought"})),
    )
    .await;
    assert_eq!(s, 201);
    let store = app.state.memory.memories().store();
    assert_eq!(store.count().await.unwrap(), 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while store.count().await.unwrap() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the expired memory was not purged within 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (s, page) = send(c.get(app.at("/v1/memories?user_id=u"))).await;
    assert_eq!(s, 200);
    assert_eq!(page["memories"][0]["content"], json!("a lasting thought"));
}

/// Over HTTP: a deduplicated write applies its new tags and metadata (200,
/// `deduplicated: true`, the updated memory); a metadata filter matches a
/// key holding `"` and a number written another way; the history of a
/// deleted memory stays readable by its owner only; a forged list cursor is
/// a 400 naming `cursor` (PostgreSQL answered 500).
#[tokio::test]
async fn memory_http_dedupe_merges_history_outlives_delete_and_a_forged_cursor_is_400() {
    let app = spawn_app("").await;
    let c = &app.client;
    let (s, a) = send(c.post(app.at("/v1/memories")).json(&json!({
        "user_id": "carol", "content": "Carol plays chess", "tags": ["games"], "metadata": {"a\"b": 1}
    })))
    .await;
    assert_eq!(s, 201, "{a}");
    let id = a["id"].as_str().unwrap().to_string();
    let (s, b) = send(c.post(app.at("/v1/memories")).json(&json!({
        "user_id": "carol", "content": "Carol plays chess", "tags": ["hobby"], "metadata": {"since": 2020}
    })))
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["deduplicated"], json!(true));
    assert_eq!(b["id"], json!(id));
    assert_eq!(b["tags"], json!(["games", "hobby"]));
    assert_eq!(b["metadata"], json!({"a\"b": 1, "since": 2020}));

    let (s, found) = send(c.post(app.at("/v1/memories/search")).json(
        &json!({"user_id": "carol", "query": "chess", "mode": "keyword", "metadata": {"a\"b": 1.0}}),
    ))
    .await;
    assert_eq!(s, 200, "{found}");
    assert_eq!(found["results"][0]["id"], json!(id));

    let one = format!("/v1/memories/{id}");
    let (s, _) = send(c.delete(app.at(&format!("{one}?user_id=carol")))).await;
    assert_eq!(s, 200);
    let (s, hist) = send(c.get(app.at(&format!("{one}/history?user_id=carol")))).await;
    assert_eq!(s, 200, "{hist}");
    let ops: Vec<&str> = hist["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops, vec!["create", "update", "delete"]);
    let (s, _) = send(c.get(app.at(&format!("{one}/history?user_id=dave")))).await;
    assert_eq!(s, 404);

    let forged = uat_memory::Cursor {
        created_us: i64::MAX,
        id: uuid::Uuid::now_v7(),
    }
    .encode();
    let (s, err) =
        send(c.get(app.at(&format!("/v1/memories?user_id=carol&cursor={forged}")))).await;
    assert_eq!((s, param(&err)), (400, "cursor"), "{err}");
    assert_eq!(
        err["error"]["type"],
        json!("invalid_request_error"),
        "{err}"
    );
}
