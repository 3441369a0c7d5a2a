//! Tests that only make sense on PostgreSQL: the query plans, and two
//! replicas sharing one database.

use crate::common::Harness;
use serde_json::json;
use std::time::{Duration, Instant};
use uat_memory::{AnyStore, ListParams, SearchInput, WriteRequest};

async fn explain(pool: &sqlx::PgPool, sql: &str) -> String {
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let rows: Vec<(String,)> = sqlx::query_as(&format!("EXPLAIN {sql}"))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    sqlx::query("RESET enable_seqscan")
        .execute(&mut *conn)
        .await
        .unwrap();
    rows.into_iter().map(|r| r.0).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_list_and_search_use_the_indexes() {
    let Some(h) = Harness::postgres().await else {
        return;
    };
    // Enough rows per user that an index on the term is worth more than the user index.
    for chunk in 0..3 {
        let items: Vec<_> = (0..1000)
            .map(|i| json!({"user_id": format!("u{}", i % 2), "content": format!("note {chunk} {i} about jazz"), "tags": [format!("t{}", i % 50)]}))
            .collect();
        h.svc
            .write(WriteRequest::from_json(json!({"memories": items}), h.svc.limits()).unwrap())
            .await
            .unwrap();
    }
    h.svc
        .write(
            WriteRequest::from_json(
                json!({"user_id": "u1", "content": "a zebra crossing"}),
                h.svc.limits(),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let AnyStore::Postgres(pg) = h.svc.store() else {
        unreachable!()
    };
    // What autovacuum does after a burst of inserts (PostgreSQL 13+ vacuums
    // on inserts too): statistics, and the GIN's pending list merged and
    // counted, without which the planner cannot cost the GIN.
    sqlx::query("VACUUM ANALYZE memories")
        .execute(pg.pool())
        .await
        .unwrap();
    let cols = "m.id, m.content, m.created_at";
    let list = explain(
        pg.pool(),
        &format!("SELECT {cols} FROM memories m WHERE m.user_id = 'u1' AND (m.expires_at IS NULL OR m.expires_at > now()) ORDER BY m.created_at DESC, m.id DESC LIMIT 51"),
    )
    .await;
    assert!(
        list.contains("memories_user_created_idx"),
        "list plan:\n{list}"
    );
    let tags = explain(
        pg.pool(),
        &format!(
            "SELECT {cols} FROM memories m WHERE m.tags && ARRAY['t1']::text[] AND m.user_id = 'u1'"
        ),
    )
    .await;
    assert!(tags.contains("memories_tags_gin"), "tag plan:\n{tags}");
    let q = uat_memory::keyword::tsquery(
        &uat_memory::keyword::user_key("u1"),
        &["zebra".to_string(), "okapi".to_string()],
    );
    let kw = explain(
        pg.pool(),
        &format!("SELECT {cols}, ts_rank(m.terms, to_tsquery('simple'::regconfig, '{q}')) AS rank FROM memories m WHERE m.user_id = 'u1' AND (m.expires_at IS NULL OR m.expires_at > now()) AND m.terms @@ to_tsquery('simple'::regconfig, '{q}') ORDER BY rank DESC, m.id DESC LIMIT 10", q = q.replace('\'', "''")),
    )
    .await;
    // A selective term: the GIN on the user-scoped terms finds it (a term
    // common in the user's memories is better served by the user index, and is).
    assert!(kw.contains("memories_terms_gin"), "keyword plan:\n{kw}");
    // And the queries the store really runs still answer.
    let page = h
        .svc
        .list(
            &serde_json::from_value::<ListParams>(json!({"user_id": "u1"}))
                .unwrap()
                .validate()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(page.memories.len(), 50);
    assert_eq!(page.memories[0].content, "a zebra crossing");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_replicas_write_through_one_search_through_the_other() {
    let Some(h) = Harness::postgres().await else {
        return;
    };
    let other = h.replica("replica-b").await;
    let mut tail_times = Vec::new();
    for (i, content) in [
        "Alice prefers automobiles over bicycles",
        "Invoice reference QX-77120 for the lamp",
    ]
    .iter()
    .enumerate()
    {
        let out = h
            .svc
            .write(
                WriteRequest::from_json(
                    json!({"user_id": "u1", "content": content}),
                    h.svc.limits(),
                )
                .unwrap(),
            )
            .await
            .unwrap();
        let id = out[0].memory.id;
        let q = SearchInput {
            user_id: Some("u1".into()),
            query: Some(if i == 0 {
                "which vehicle does she enjoy".into()
            } else {
                "QX-77120".into()
            }),
            mode: Some(if i == 0 {
                "semantic".into()
            } else {
                "hybrid".into()
            }),
            top_k: Some(1),
            ..SearchInput::default()
        }
        .validate(other.limits())
        .unwrap();
        let start = Instant::now();
        loop {
            let hits = other.search(&q).await.unwrap();
            if hits.results.first().map(|r| r.memory.id) == Some(id) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "not searchable through the other replica within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tail_times.push(start.elapsed());
    }
    eprintln!("visible through the other replica after {tail_times:?}");
    // Deletes travel too.
    assert_eq!(h.svc.delete_user(Some("u1")).await.unwrap(), 2);
    assert!(other.sync_index(Duration::from_secs(1)).await.unwrap());
    assert_eq!(other.index().unwrap().len(), 0);
    drop(other);
    h.cleanup().await;
}
