//! The behaviour suite, run against both stores (see `main.rs`).

use crate::common::{DIM, FakeEmbedder, FlakyEmbedder, Harness, OlderModel};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use uat_memory::{
    Embedder, ListParams, Memory, MemoryError, PatchInput, SearchInput, Store, WriteOutcome,
    WriteRequest,
};
use uuid::Uuid;

async fn write(h: &Harness, body: Value) -> uat_memory::Result<Vec<WriteOutcome>> {
    let req = WriteRequest::from_json(body, h.svc.limits())?;
    h.svc.write(req).await
}

async fn put(h: &Harness, user: &str, content: &str) -> Memory {
    let mut out = write(h, json!({"user_id": user, "content": content}))
        .await
        .unwrap();
    out.remove(0).memory
}

async fn list(h: &Harness, params: Value) -> uat_memory::Result<uat_memory::Page> {
    let p: ListParams = serde_json::from_value(params).unwrap();
    let q = p.validate()?;
    h.svc.list(&q).await
}

async fn search(h: &Harness, body: Value) -> uat_memory::Result<uat_memory::SearchResults> {
    let s: SearchInput = serde_json::from_value(body).unwrap();
    let q = s.validate(h.svc.limits())?;
    h.svc.search(&q).await
}

async fn search_ids(h: &Harness, body: Value) -> Vec<Uuid> {
    search(h, body)
        .await
        .unwrap()
        .results
        .iter()
        .map(|r| r.memory.id)
        .collect()
}

/// Whether the store holds an embedding (of any model) for memory `id`.
async fn has_embedding(h: &Harness, id: Uuid) -> bool {
    !h.svc.store().index_entries(&[id]).await.unwrap().is_empty()
}

/// A keyword search of `user`'s memories: ids and scores, best first.
async fn keyword_hits(h: &Harness, user: &str, query: &str) -> Vec<(Uuid, f64)> {
    search(
        h,
        json!({"user_id": user, "query": query, "mode": "keyword", "top_k": 50}),
    )
    .await
    .unwrap()
    .results
    .into_iter()
    .map(|r| (r.memory.id, r.score))
    .collect()
}

/// [`keyword_hits`]' ids, best first.
async fn keyword_ids(h: &Harness, user: &str, query: &str) -> Vec<Uuid> {
    keyword_hits(h, user, query)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

fn field(e: MemoryError) -> String {
    match e {
        MemoryError::Invalid { field, .. } => field,
        other => panic!("expected an invalid-field error, got {other:?}"),
    }
}

pub async fn crud_roundtrip(h: &Harness) {
    let out = write(
        h,
        json!({"user_id": "u1", "agent_id": "a1", "run_id": "r1", "kind": "fact", "content": "Alice likes jazz",
               "tags": ["music", "pref", "music"], "metadata": {"source": "chat", "n": 3}}),
    )
    .await
    .unwrap();
    assert_eq!(out.len(), 1);
    assert!(!out[0].deduplicated);
    let m = &out[0].memory;
    assert_eq!(m.id.get_version_num(), 7, "ids are UUIDv7");
    assert_eq!(m.tags, vec!["music", "pref"], "tags are a set");
    let got = h.svc.get("u1", m.id).await.unwrap();
    assert_eq!(&got, m);
    assert_eq!(got.agent_id.as_deref(), Some("a1"));
    assert_eq!(got.metadata["n"], json!(3));

    let patch = PatchInput::from_json(
        json!({"tags": ["x"], "metadata": {"k": true}}),
        h.svc.limits(),
    )
    .unwrap();
    let upd = h.svc.update("u1", m.id, patch).await.unwrap();
    assert_eq!(upd.tags, vec!["x"]);
    assert_eq!(upd.metadata["k"], json!(true));
    assert_eq!(upd.content, m.content);
    assert!(upd.updated_at >= m.updated_at);
    assert_eq!(h.svc.get("u1", m.id).await.unwrap(), upd);

    h.svc.delete("u1", m.id).await.unwrap();
    assert!(matches!(
        h.svc.get("u1", m.id).await,
        Err(MemoryError::NotFound)
    ));
    assert!(matches!(
        h.svc.delete("u1", m.id).await,
        Err(MemoryError::NotFound)
    ));
    let ops: Vec<String> = h
        .svc
        .history("u1", m.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.operation)
        .collect();
    assert_eq!(
        ops,
        vec!["create", "update", "delete"],
        "history outlives the memory"
    );
    let page = list(h, json!({"user_id": "u1"})).await.unwrap();
    assert!(page.memories.is_empty());
}

/// A time with more digits than the stores keep (microseconds) is kept as
/// they keep it: the write's answer, a read and a patch all say the same.
pub async fn times_are_kept_to_the_microsecond(h: &Harness) {
    let out = write(
        h,
        json!({"user_id": "u1", "content": "precise", "expires_at": "2099-01-02T03:04:05.123456789Z"}),
    )
    .await
    .unwrap();
    let m = &out[0].memory;
    let want = time::macros::datetime!(2099-01-02 03:04:05.123456 UTC);
    assert_eq!(m.expires_at, Some(want), "the write's answer");
    let got = h.svc.get("u1", m.id).await.unwrap();
    assert_eq!(&got, m, "a read returns what the write answered");
    let patch = PatchInput::from_json(
        json!({"expires_at": "2099-01-02T03:04:05.999999999+01:00"}),
        h.svc.limits(),
    )
    .unwrap();
    let patched = h.svc.update("u1", m.id, patch).await.unwrap();
    let want = time::macros::datetime!(2099-01-02 03:04:05.999999 +01:00);
    assert_eq!(patched.expires_at, Some(want), "the patch's answer");
    assert_eq!(h.svc.get("u1", m.id).await.unwrap(), patched);
}

pub async fn patch_content_reembeds_and_keeps_history(h: &Harness) {
    let m = put(h, "u1", "The weather forecast says rain").await;
    let calls = h.embedder.calls.load(Ordering::Relaxed);
    let p = PatchInput::from_json(
        json!({"content": "Bob drives a sedan to the office", "expires_at": null}),
        h.svc.limits(),
    )
    .unwrap();
    let upd = h.svc.update("u1", m.id, p).await.unwrap();
    assert_eq!(upd.content, "Bob drives a sedan to the office");
    assert!(
        h.embedder.calls.load(Ordering::Relaxed) > calls,
        "content change re-embeds"
    );
    // The new content is what semantic search finds now.
    let hits = search(
        h,
        json!({"user_id": "u1", "query": "automobile commute", "mode": "semantic", "top_k": 1}),
    )
    .await
    .unwrap();
    assert_eq!(hits.results[0].memory.id, m.id);
    assert!(
        hits.results[0].score > 0.8,
        "scored against the new embedding: {}",
        hits.results[0].score
    );
    // Keyword index follows the content too.
    assert!(keyword_ids(h, "u1", "rain").await.is_empty());
    assert_eq!(keyword_ids(h, "u1", "sedan").await, vec![m.id]);

    let hist = h.svc.history("u1", m.id).await.unwrap();
    let ops: Vec<&str> = hist.iter().map(|e| e.operation.as_str()).collect();
    assert_eq!(ops, vec!["create", "update"]);
    assert!(hist[0].old_value.is_none());
    assert_eq!(
        hist[0].new_value.as_ref().unwrap()["content"],
        json!("The weather forecast says rain")
    );
    assert_eq!(
        hist[1].old_value.as_ref().unwrap()["content"],
        json!("The weather forecast says rain")
    );
    assert_eq!(
        hist[1].new_value.as_ref().unwrap()["content"],
        json!("Bob drives a sedan to the office")
    );
}

pub async fn batch_is_all_or_nothing_and_names_the_item(h: &Harness) {
    let body = json!({"memories": [
        {"user_id": "u1", "content": "first"},
        {"user_id": "u1", "content": "second"},
        {"user_id": "u1", "content": "   "},
        {"user_id": "u1", "content": "fourth"},
    ]});
    let e = write(h, body).await.unwrap_err();
    assert_eq!(field(e), "memories[2].content");
    let e = write(
        h,
        json!({"memories": [{"user_id": "u1", "content": "ok"}, {"content": "no user"}]}),
    )
    .await
    .unwrap_err();
    assert_eq!(field(e), "memories[1].user_id");
    assert!(
        list(h, json!({"user_id": "u1"}))
            .await
            .unwrap()
            .memories
            .is_empty(),
        "nothing partial is written"
    );

    let items: Vec<Value> = (0..1000)
        .map(|i| json!({"user_id": format!("u{}", i % 7), "content": format!("memory number {i}")}))
        .collect();
    let out = write(h, json!({"memories": items})).await.unwrap();
    assert_eq!(out.len(), 1000);
    assert!(out.iter().all(|o| !o.deduplicated));
    let ids: HashSet<Uuid> = out.iter().map(|o| o.memory.id).collect();
    assert_eq!(ids.len(), 1000);
    let page = list(h, json!({"user_id": "u3", "limit": "1000"}))
        .await
        .unwrap();
    assert_eq!(
        page.memories.len(),
        (0..1000).filter(|i| i % 7 == 3).count()
    );
    assert!(
        h.embedder.calls.load(Ordering::Relaxed) <= 1,
        "a batch is embedded in one call"
    );
}

pub async fn batch_over_the_limit_is_refused(h: &Harness) {
    let items: Vec<Value> = (0..1001)
        .map(|i| json!({"user_id": "u1", "content": format!("m {i}")}))
        .collect();
    let e = write(h, json!({"memories": items})).await.unwrap_err();
    assert_eq!(field(e), "memories");
    assert!(
        list(h, json!({"user_id": "u1"}))
            .await
            .unwrap()
            .memories
            .is_empty()
    );
}

pub async fn dedupe_returns_the_existing_memory(h: &Harness) {
    let a = write(
        h,
        json!({"user_id": "u1", "agent_id": "ag", "content": "likes tea"}),
    )
    .await
    .unwrap()
    .remove(0);
    let b = write(
        h,
        json!({"user_id": "u1", "agent_id": "ag", "content": "likes tea"}),
    )
    .await
    .unwrap()
    .remove(0);
    assert!(!a.deduplicated);
    assert!(b.deduplicated);
    assert_eq!(a.memory.id, b.memory.id);
    // Another agent, run or user is another memory.
    let c = write(
        h,
        json!({"user_id": "u1", "agent_id": "other", "content": "likes tea"}),
    )
    .await
    .unwrap()
    .remove(0);
    let d = write(
        h,
        json!({"user_id": "u1", "agent_id": "ag", "run_id": "r", "content": "likes tea"}),
    )
    .await
    .unwrap()
    .remove(0);
    let e = write(
        h,
        json!({"user_id": "u2", "agent_id": "ag", "content": "likes tea"}),
    )
    .await
    .unwrap()
    .remove(0);
    for x in [&c, &d, &e] {
        assert!(!x.deduplicated);
        assert_ne!(x.memory.id, a.memory.id);
    }
    // Within one batch, and against stored memories, in one transaction.
    let out = write(
        h,
        json!({"memories": [
        {"user_id": "u3", "content": "same"}, {"user_id": "u3", "content": "same"},
        {"user_id": "u1", "agent_id": "ag", "content": "likes tea"}]}),
    )
    .await
    .unwrap();
    assert!(!out[0].deduplicated);
    assert!(out[1].deduplicated);
    assert_eq!(out[0].memory.id, out[1].memory.id);
    assert!(out[2].deduplicated);
    assert_eq!(out[2].memory.id, a.memory.id);
    assert_eq!(
        list(h, json!({"user_id": "u3"}))
            .await
            .unwrap()
            .memories
            .len(),
        1
    );
    // A deleted memory is not a duplicate any more.
    h.svc.delete("u3", out[0].memory.id).await.unwrap();
    let again = write(h, json!({"user_id": "u3", "content": "same"}))
        .await
        .unwrap()
        .remove(0);
    assert!(!again.deduplicated);
}

pub async fn dedupe_false_stores_a_duplicate(h: &Harness) {
    let a = put(h, "u1", "likes coffee").await;
    let b = write(
        h,
        json!({"user_id": "u1", "content": "likes coffee", "dedupe": false}),
    )
    .await
    .unwrap()
    .remove(0);
    assert!(!b.deduplicated);
    assert_ne!(a.id, b.memory.id);
    assert_eq!(
        list(h, json!({"user_id": "u1"}))
            .await
            .unwrap()
            .memories
            .len(),
        2
    );
}

pub async fn keyset_pagination_has_no_gaps_or_repeats_under_concurrent_inserts(h: &Harness) {
    let mut before = HashSet::new();
    for chunk in 0..4 {
        let items: Vec<Value> = (0..30)
            .map(|i| json!({"user_id": "u1", "content": format!("seed {chunk} {i}")}))
            .collect();
        for o in write(h, json!({"memories": items})).await.unwrap() {
            before.insert(o.memory.id);
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let items = |n: usize| json!({"memories": (0..5).map(|i| json!({"user_id": "u1", "content": format!("late {n} {i}")})).collect::<Vec<_>>()});
        // Writes through the same service while pages are read.
        async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let req = WriteRequest::from_json(items(n), h.svc.limits()).unwrap();
                h.svc.write(req).await.unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            n
        }
    };
    let reader = async {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut p = json!({"user_id": "u1", "limit": "7"});
            if let Some(c) = &cursor {
                p["cursor"] = json!(c);
            }
            let page = list(h, p).await.unwrap();
            seen.extend(page.memories.iter().map(|m| (m.created_at, m.id)));
            tokio::time::sleep(Duration::from_millis(3)).await;
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        stop.store(true, Ordering::Relaxed);
        seen
    };
    let (n, seen) = tokio::join!(writer, reader);
    assert!(n > 0, "the writer ran during the scan");
    let ids: Vec<Uuid> = seen.iter().map(|s| s.1).collect();
    let unique: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no memory repeated");
    assert!(
        before.is_subset(&unique),
        "no memory that existed before the scan is missed"
    );
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first, strictly"
    );
}

pub async fn tag_any_and_all(h: &Harness) {
    let w = |c: &str, tags: Value| json!({"user_id": "u1", "content": c, "tags": tags});
    let a = write(h, w("alpha", json!(["red", "blue"])))
        .await
        .unwrap()
        .remove(0)
        .memory
        .id;
    let b = write(h, w("beta", json!(["red"])))
        .await
        .unwrap()
        .remove(0)
        .memory
        .id;
    let c = write(h, w("gamma", json!(["green"])))
        .await
        .unwrap()
        .remove(0)
        .memory
        .id;
    let ids = |p: uat_memory::Page| p.memories.iter().map(|m| m.id).collect::<HashSet<_>>();
    let any = ids(list(h, json!({"user_id": "u1", "tags": "blue,green"}))
        .await
        .unwrap());
    assert_eq!(any, HashSet::from([a, c]));
    let all = ids(list(
        h,
        json!({"user_id": "u1", "tags": "red,blue", "tag_mode": "all"}),
    )
    .await
    .unwrap());
    assert_eq!(all, HashSet::from([a]));
    let red = ids(list(
        h,
        json!({"user_id": "u1", "tags": "red", "tag_mode": "all"}),
    )
    .await
    .unwrap());
    assert_eq!(red, HashSet::from([a, b]));
    // Search applies the same filters, in every mode.
    for mode in ["keyword", "semantic", "hybrid"] {
        let got: HashSet<Uuid> = search_ids(
            h,
            json!({"user_id": "u1", "query": "alpha beta gamma", "mode": mode, "tags": ["red", "blue"], "tag_mode": "all"}),
        )
        .await
        .into_iter()
        .collect();
        assert_eq!(got, HashSet::from([a]), "mode {mode}");
    }
}

pub async fn time_ranges_kind_and_agent_filters(h: &Harness) {
    let mut ms = Vec::new();
    for (i, (kind, agent)) in [
        ("fact", "a"),
        ("episode", "a"),
        ("fact", "b"),
        ("fact", "a"),
    ]
    .iter()
    .enumerate()
    {
        let o = write(
            h,
            json!({"user_id": "u1", "kind": kind, "agent_id": agent, "content": format!("event {i} happened")}),
        )
        .await
        .unwrap();
        ms.push(o[0].memory.clone());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let ids = |p: uat_memory::Page| p.memories.iter().map(|m| m.id).collect::<Vec<_>>();
    let mid = ids(list(
        h,
        json!({"user_id": "u1", "since": fmt(ms[1].created_at), "until": fmt(ms[2].created_at)}),
    )
    .await
    .unwrap());
    assert_eq!(mid, vec![ms[2].id, ms[1].id]);
    let since = ids(
        list(h, json!({"user_id": "u1", "since": fmt(ms[3].created_at)}))
            .await
            .unwrap(),
    );
    assert_eq!(since, vec![ms[3].id]);
    let facts_a = ids(
        list(h, json!({"user_id": "u1", "kind": "fact", "agent_id": "a"}))
            .await
            .unwrap(),
    );
    assert_eq!(facts_a, vec![ms[3].id, ms[0].id]);
    for mode in ["keyword", "semantic", "hybrid"] {
        let got = search_ids(
            h,
            json!({"user_id": "u1", "query": "event happened", "mode": mode, "since": fmt(ms[1].created_at),
                   "until": fmt(ms[2].created_at), "kind": "fact"}),
        )
        .await;
        assert_eq!(got, vec![ms[2].id], "mode {mode}");
    }
}

pub async fn expired_memories_never_come_back(h: &Harness) {
    let soon = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(400);
    let fmt = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let m = write(
        h,
        json!({"user_id": "u1", "content": "temporary jazz note", "expires_at": fmt}),
    )
    .await
    .unwrap()
    .remove(0)
    .memory;
    let keep = put(h, "u1", "permanent jazz note").await;
    assert!(h.svc.get("u1", m.id).await.is_ok());
    assert_eq!(keyword_ids(h, "u1", "temporary").await, vec![m.id]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(matches!(
        h.svc.get("u1", m.id).await,
        Err(MemoryError::NotFound)
    ));
    assert!(
        matches!(h.svc.history("bob", m.id).await, Err(MemoryError::NotFound)),
        "its history is still its owner's only"
    );
    let p = PatchInput::from_json(json!({"expires_at": null}), h.svc.limits()).unwrap();
    assert!(
        matches!(
            h.svc.update("u1", m.id, p).await,
            Err(MemoryError::NotFound)
        ),
        "an expired memory cannot be revived"
    );
    let listed: Vec<Uuid> = list(h, json!({"user_id": "u1"}))
        .await
        .unwrap()
        .memories
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed, vec![keep.id]);
    for mode in ["keyword", "semantic", "hybrid"] {
        let got = search_ids(
            h,
            json!({"user_id": "u1", "query": "temporary jazz note", "mode": mode}),
        )
        .await;
        assert_eq!(got, vec![keep.id], "mode {mode}");
    }
    // Its content is free again for dedupe.
    let again = write(
        h,
        json!({"user_id": "u1", "content": "temporary jazz note"}),
    )
    .await
    .unwrap()
    .remove(0);
    assert!(!again.deduplicated);
}

pub async fn users_are_isolated_on_every_route(h: &Harness) {
    let a = put(h, "alice", "My dog is called Rex").await;
    let b = put(h, "bob", "My dog is called Rex").await;
    assert_ne!(a.id, b.id, "same content for two users is two memories");
    // Every id route, across users.
    assert!(matches!(
        h.svc.get("bob", a.id).await,
        Err(MemoryError::NotFound)
    ));
    assert!(matches!(
        h.svc.history("bob", a.id).await,
        Err(MemoryError::NotFound)
    ));
    let p = PatchInput::from_json(json!({"content": "hijacked"}), h.svc.limits()).unwrap();
    assert!(matches!(
        h.svc.update("bob", a.id, p).await,
        Err(MemoryError::NotFound)
    ));
    assert!(matches!(
        h.svc.delete("bob", a.id).await,
        Err(MemoryError::NotFound)
    ));
    assert_eq!(
        h.svc.get("alice", a.id).await.unwrap().content,
        "My dog is called Rex"
    );
    // Lists and searches.
    let listed: Vec<Uuid> = list(h, json!({"user_id": "bob"}))
        .await
        .unwrap()
        .memories
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(listed, vec![b.id]);
    for mode in ["keyword", "semantic", "hybrid"] {
        let got = search_ids(
            h,
            json!({"user_id": "bob", "query": "dog Rex", "mode": mode, "top_k": 50}),
        )
        .await;
        assert_eq!(got, vec![b.id], "mode {mode}");
    }
    // Dedupe never crosses users either.
    let again = write(
        h,
        json!({"user_id": "bob", "content": "My dog is called Rex"}),
    )
    .await
    .unwrap()
    .remove(0);
    assert_eq!(again.memory.id, b.id);
}

pub async fn delete_user_leaves_others_intact_and_never_returns_in_search(h: &Harness) {
    for i in 0..25 {
        put(h, "alice", &format!("alice pet dog fact {i}")).await;
        put(h, "bob", &format!("bob pet dog fact {i}")).await;
    }
    let n = h.svc.delete_user(Some("alice")).await.unwrap();
    assert_eq!(n, 25);
    assert!(
        list(h, json!({"user_id": "alice"}))
            .await
            .unwrap()
            .memories
            .is_empty()
    );
    assert_eq!(
        list(h, json!({"user_id": "bob", "limit": "100"}))
            .await
            .unwrap()
            .memories
            .len(),
        25
    );
    for mode in ["keyword", "semantic", "hybrid"] {
        assert!(
            search_ids(
                h,
                json!({"user_id": "alice", "query": "pet dog", "mode": mode, "top_k": 50})
            )
            .await
            .is_empty()
        );
        assert_eq!(
            search_ids(
                h,
                json!({"user_id": "bob", "query": "pet dog", "mode": mode, "top_k": 50})
            )
            .await
            .len(),
            25
        );
    }
    assert_eq!(h.svc.delete_user(Some("alice")).await.unwrap(), 0);
    assert_eq!(field(h.svc.delete_user(None).await.unwrap_err()), "user_id");
    // The index entries are gone too, not just filtered out.
    assert!(h.svc.sync_index(Duration::from_secs(2)).await.unwrap());
    assert_eq!(h.svc.index().unwrap().len(), 25);
}

pub async fn paraphrase_found_by_semantic_and_hybrid_missed_by_keyword(h: &Harness) {
    let target = put(h, "u1", "Alice prefers automobiles over bicycles").await;
    for c in [
        "Bob's favourite food is pasta",
        "Order ZX-48213 shipped yesterday",
        "The dog sleeps on the sofa",
        "Jazz guitar songs every evening",
        "Snow is in the forecast",
    ] {
        put(h, "u1", c).await;
    }
    let query = "which vehicle does she enjoy";
    // The fake model really places them together.
    let sim: f32 = FakeEmbedder::vector(query)
        .iter()
        .zip(FakeEmbedder::vector(&target.content))
        .map(|(a, b)| a * b)
        .sum();
    assert!(sim > 0.6, "{sim}");
    let kw = search_ids(
        h,
        json!({"user_id": "u1", "query": query, "mode": "keyword", "top_k": 10}),
    )
    .await;
    assert!(
        !kw.contains(&target.id),
        "keyword search shares no word with the paraphrase"
    );
    let sem = search(
        h,
        json!({"user_id": "u1", "query": query, "mode": "semantic", "top_k": 1}),
    )
    .await
    .unwrap();
    assert_eq!(sem.results[0].memory.id, target.id);
    assert_eq!(sem.results[0].semantic_rank, Some(1));
    assert_eq!(sem.results[0].keyword_rank, None);
    let hy = search(
        h,
        json!({"user_id": "u1", "query": query, "mode": "hybrid", "top_k": 3}),
    )
    .await
    .unwrap();
    assert_eq!(hy.results[0].memory.id, target.id);
    assert_eq!(hy.results[0].semantic_rank, Some(1));
    assert!(hy.warning.is_none());
}

pub async fn rare_token_found_by_keyword_and_hybrid_missed_by_semantic(h: &Harness) {
    let target = put(h, "u1", "Invoice reference ZX-48213 for the blue lamp").await;
    for c in [
        "My order was shipped yesterday",
        "Order status: delivery package pending",
        "The purchase was shipped by post",
        "Another order for shipping next week",
        "Alice prefers automobiles over bicycles",
    ] {
        put(h, "u1", c).await;
    }
    let query = "order ZX-48213";
    let sem = search_ids(
        h,
        json!({"user_id": "u1", "query": query, "mode": "semantic", "top_k": 3}),
    )
    .await;
    assert_eq!(sem.len(), 3);
    assert!(
        !sem.contains(&target.id),
        "the model knows nothing of the code"
    );
    let kw = search(
        h,
        json!({"user_id": "u1", "query": query, "mode": "keyword", "top_k": 3}),
    )
    .await
    .unwrap();
    assert_eq!(kw.results[0].memory.id, target.id);
    assert_eq!(kw.results[0].keyword_rank, Some(1));
    let hy = search(
        h,
        json!({"user_id": "u1", "query": query, "mode": "hybrid", "top_k": 3}),
    )
    .await
    .unwrap();
    let hit = hy
        .results
        .iter()
        .find(|r| r.memory.id == target.id)
        .expect("hybrid finds the order number");
    assert_eq!(hit.keyword_rank, Some(1));
    // Fused scores are sums of 1/(60 + rank).
    let expect = 1.0 / 61.0 + hit.semantic_rank.map_or(0.0, |r| 1.0 / (60.0 + r as f64));
    assert!((hit.score - expect).abs() < 1e-9);
}

pub async fn metadata_filter_in_search(h: &Harness) {
    let a = write(
        h,
        json!({"user_id": "u1", "content": "jazz concert notes", "metadata": {"src": "chat", "n": 1}}),
    )
    .await
    .unwrap();
    write(
        h,
        json!({"user_id": "u1", "content": "jazz festival notes", "metadata": {"src": "email", "n": 1}}),
    )
    .await
    .unwrap();
    for mode in ["keyword", "semantic", "hybrid"] {
        let got = search_ids(
            h,
            json!({"user_id": "u1", "query": "jazz notes", "mode": mode, "metadata": {"src": "chat"}}),
        )
        .await;
        assert_eq!(got, vec![a[0].memory.id], "mode {mode}");
        let got = search_ids(
            h,
            json!({"user_id": "u1", "query": "jazz notes", "mode": mode, "metadata": {"n": 1}}),
        )
        .await;
        assert_eq!(got.len(), 2, "mode {mode}");
    }
    let s = search(
        h,
        json!({"user_id": "u1", "query": "jazz", "mode": "keyword", "min_score": 1e9}),
    )
    .await
    .unwrap();
    assert!(s.results.is_empty(), "min_score drops results");
}

/// A metadata filter that only memories far from the query match: the
/// index's nearest (all of them other memories, more than its largest
/// answer) hold none, yet semantic and hybrid search find all three. Before,
/// the index was asked for 44 and SQL kept none of them: an empty answer.
pub async fn metadata_filter_finds_memories_far_from_the_query(h: &Harness) {
    for batch in 0..2 {
        let items: Vec<Value> = (0..600)
            .map(|i| json!({"user_id": "u1", "content": format!("jazz concert {batch} {i}"), "dedupe": false}))
            .collect();
        write(h, json!({"memories": items})).await.unwrap();
    }
    let mut far = Vec::new();
    for i in 0..3 {
        let w = write(
            h,
            json!({"user_id": "u1", "content": format!("rain forecast {i}"), "metadata": {"project": "x"}}),
        )
        .await
        .unwrap();
        far.push(w[0].memory.id);
    }
    far.sort();
    for mode in ["semantic", "hybrid"] {
        let mut got = search_ids(
            h,
            json!({"user_id": "u1", "query": "jazz", "mode": mode, "top_k": 3, "metadata": {"project": "x"}}),
        )
        .await;
        got.sort();
        assert_eq!(got, far, "mode {mode}");
    }
    // Another user's memory with the same metadata never comes in.
    write(
        h,
        json!({"user_id": "u2", "content": "jazz", "metadata": {"project": "x"}}),
    )
    .await
    .unwrap();
    let mut got = search_ids(
        h,
        json!({"user_id": "u1", "query": "jazz", "mode": "semantic", "top_k": 5, "metadata": {"project": "x"}}),
    )
    .await;
    got.sort();
    assert_eq!(got, far);
}

pub async fn bad_input_names_the_field(h: &Harness) {
    let big = "x".repeat(32 * 1024 + 1);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"content": "no user"}), "user_id"),
        (json!({"user_id": "", "content": "empty user"}), "user_id"),
        (json!({"user_id": "u1", "content": ""}), "content"),
        (json!({"user_id": "u1"}), "content"),
        (json!({"user_id": "u1", "content": big}), "content"),
        (
            json!({"user_id": "u1", "content": "x", "metadata": [1, 2]}),
            "metadata",
        ),
        (
            json!({"user_id": "u1", "content": "x", "metadata": "text"}),
            "metadata",
        ),
        (
            json!({"user_id": "u1", "content": "x", "expires_at": "tomorrow"}),
            "expires_at",
        ),
        (
            json!({"user_id": "u1", "content": "x", "bogus": 1}),
            "bogus",
        ),
        (
            json!({"memories": [{"user_id": "u1", "content": "x", "metadata": 5}]}),
            "memories[0].metadata",
        ),
    ];
    for (body, want) in cases {
        let e = write(h, body.clone()).await.unwrap_err();
        assert_eq!(field(e), want, "{body}");
    }
    let bad_search: Vec<(Value, &str)> = vec![
        (json!({"query": "x"}), "user_id"),
        (
            json!({"user_id": "u1", "query": "x", "mode": "fuzzy"}),
            "mode",
        ),
        (
            json!({"user_id": "u1", "query": "x", "since": "yesterday"}),
            "since",
        ),
        (
            json!({"user_id": "u1", "query": "x", "until": "2024-13-01T00:00:00Z"}),
            "until",
        ),
        (
            json!({"user_id": "u1", "query": "x", "metadata": [1]}),
            "metadata",
        ),
        (json!({"user_id": "u1", "query": "x", "top_k": 0}), "top_k"),
        (
            json!({"user_id": "u1", "query": "x", "tag_mode": "some"}),
            "tag_mode",
        ),
        (json!({"user_id": "u1", "query": ""}), "query"),
    ];
    for (body, want) in bad_search {
        let s: SearchInput = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(
            field(s.validate(h.svc.limits()).unwrap_err()),
            want,
            "{body}"
        );
    }
    let bad_list: Vec<(Value, &str)> = vec![
        (json!({}), "user_id"),
        (json!({"user_id": "u1", "since": "nope"}), "since"),
        (json!({"user_id": "u1", "limit": "0"}), "limit"),
        (json!({"user_id": "u1", "limit": "abc"}), "limit"),
        (json!({"user_id": "u1", "cursor": "garbage!"}), "cursor"),
        (json!({"user_id": "u1", "tag_mode": "most"}), "tag_mode"),
    ];
    for (body, want) in bad_list {
        assert_eq!(
            field(list(h, body.clone()).await.unwrap_err()),
            want,
            "{body}"
        );
    }
    for (body, want) in [
        (json!({"content": ""}), "content"),
        (json!({"metadata": 3}), "metadata"),
        (json!({"expires_at": "soon"}), "expires_at"),
        (json!({"user_id": "x"}), "user_id"),
    ] {
        assert_eq!(
            field(PatchInput::from_json(body.clone(), h.svc.limits()).unwrap_err()),
            want,
            "{body}"
        );
    }
    assert!(
        list(h, json!({"user_id": "u1"}))
            .await
            .unwrap()
            .memories
            .is_empty(),
        "nothing was written"
    );
}

pub async fn index_rebuilds_from_sql_when_missing_and_catches_up_when_behind(h: &Harness) {
    let a = put(h, "u1", "Alice prefers automobiles over bicycles").await;
    put(h, "u1", "Bob's favourite food is pasta").await;
    assert!(h.svc.sync_index(Duration::from_secs(2)).await.unwrap());
    // A second replica with an empty index folder: rebuilt from SQL.
    let r = h.replica("replica-index").await;
    assert_eq!(r.index().unwrap().len(), 2);
    let q = SearchInput {
        user_id: Some("u1".into()),
        query: Some("which vehicle does she enjoy".into()),
        mode: Some("semantic".into()),
        top_k: Some(1),
        ..SearchInput::default()
    }
    .validate(r.limits())
    .unwrap();
    assert_eq!(r.search(&q).await.unwrap().results[0].memory.id, a.id);
    // Writes through the first service reach the replica through the change log.
    let b = put(h, "u1", "Carol drives a sedan every day").await;
    h.svc.delete("u1", a.id).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let hits: Vec<Uuid> = r
            .search(&q)
            .await
            .unwrap()
            .results
            .iter()
            .map(|h| h.memory.id)
            .collect();
        if hits == vec![b.id] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replica did not catch up within a second: {hits:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(r);
    // Reopened on its folder: behind, it catches up from the log instead of rebuilding.
    put(h, "u1", "Dave loves his bike").await;
    let r2 = h.replica("replica-index").await;
    assert_eq!(r2.index().unwrap().len(), 3);
    assert_eq!(
        r2.index().unwrap().applied(),
        h.svc.store().last_change().await.unwrap()
    );
}

/// Read-your-writes waits for `local_change` instead of querying the log on
/// every search, so it must follow each kind of write made through the handle.
pub async fn local_change_follows_this_handles_writes_only(h: &Harness) {
    let store = h.svc.store();
    assert_eq!(store.local_change(), 0);
    let mut seen = 0;
    fn moved(what: &str, seen: &mut i64, now: i64, log: i64) {
        assert!(now > *seen, "{what} did not move local_change ({now})");
        assert_eq!(
            now, log,
            "{what}: local_change is not the log's last position"
        );
        *seen = now;
    }
    let a = put(h, "u1", "Alice likes jazz").await;
    moved(
        "insert",
        &mut seen,
        store.local_change(),
        store.last_change().await.unwrap(),
    );
    let patch = PatchInput::from_json(json!({"tags": ["x"]}), h.svc.limits()).unwrap();
    h.svc.update("u1", a.id, patch).await.unwrap();
    moved(
        "update",
        &mut seen,
        store.local_change(),
        store.last_change().await.unwrap(),
    );
    h.svc.delete("u1", a.id).await.unwrap();
    moved(
        "delete",
        &mut seen,
        store.local_change(),
        store.last_change().await.unwrap(),
    );
    put(h, "u2", "Bob likes tea").await;
    h.svc.delete_user(Some("u2")).await.unwrap();
    moved(
        "delete_user",
        &mut seen,
        store.local_change(),
        store.last_change().await.unwrap(),
    );
    // Another handle on the same database counts only its own writes.
    let r = h.replica("replica-local").await;
    assert_eq!(r.store().local_change(), 0);
    let w =
        WriteRequest::from_json(json!({"user_id": "u3", "content": "Carol"}), r.limits()).unwrap();
    r.write(w).await.unwrap();
    assert_eq!(
        r.store().local_change(),
        r.store().last_change().await.unwrap()
    );
    assert!(r.store().local_change() > seen);
    assert_eq!(store.local_change(), seen);
}

/// Retention, part one: `purge` deletes expired memories (and only those),
/// logs each as a delete so the vector index drops it, and a second run finds
/// nothing; the live memory stays searchable.
pub async fn purge_deletes_expired_memories_and_the_index_drops_them(h: &Harness) {
    let soon = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(300);
    let fmt = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let gone = write(
        h,
        json!({"user_id": "u1", "content": "my dog loves the sofa", "expires_at": fmt}),
    )
    .await
    .unwrap()
    .remove(0)
    .memory;
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let later = later
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let stays = write(
        h,
        json!({"user_id": "u1", "content": "my cat loves the sofa", "expires_at": later}),
    )
    .await
    .unwrap()
    .remove(0)
    .memory;
    let forever = put(h, "u2", "the dog eats pasta").await;
    assert!(h.svc.sync_index(Duration::from_secs(2)).await.unwrap());
    let idx = h.svc.index().unwrap();
    assert_eq!(idx.len(), 3);
    let store = h.svc.store();
    let before = store.last_change().await.unwrap();
    assert_eq!(
        h.svc.purge().await.unwrap().expired,
        0,
        "nothing expired yet"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        store.count().await.unwrap(),
        3,
        "expired rows stay until purged"
    );
    let p = h.svc.purge().await.unwrap();
    assert_eq!(p.expired, 1);
    assert_eq!(store.count().await.unwrap(), 2);
    let changes = store.changes_after(before, 100).await.unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].op, uat_memory::ChangeOp::Delete);
    assert_eq!(changes[0].memory_id, Some(gone.id));
    assert_eq!(changes[0].user_id, "u1");
    assert!(h.svc.sync_index(Duration::from_secs(2)).await.unwrap());
    assert_eq!(idx.len(), 2, "the index dropped the purged memory");
    assert_eq!(
        search_ids(
            h,
            json!({"user_id": "u1", "query": "pets on the sofa", "mode": "semantic"})
        )
        .await,
        vec![stays.id]
    );
    assert!(h.svc.get("u2", forever.id).await.is_ok());
    assert_eq!(h.svc.purge().await.unwrap(), uat_memory::Purged::default());
}

/// Retention, part two: pruning the change log keeps its newest record and
/// raises the horizon; an index that applied less than the horizon resyncs
/// from SQL while it runs (no restart) and is rebuilt when opened again, and
/// either way ends up with exactly the live memories.
pub async fn a_pruned_change_log_resyncs_or_rebuilds_a_stale_index(h: &Harness) {
    use uat_memory::index::VectorIndex;
    let store = h.svc.store();
    let a = put(h, "u1", "Alice drives a sedan").await;
    let b = put(h, "u1", "Bob loves jazz").await;
    assert!(h.svc.sync_index(Duration::from_secs(2)).await.unwrap());
    // A second index on its own folder with no tailer: it stays where it is
    // until asked, like a replica stalled for longer than the retention.
    let dir = h.dir.path().join("stale-index");
    let stale = VectorIndex::open(&dir, "fake-concepts", crate::common::DIM, store)
        .await
        .unwrap();
    assert_eq!(stale.len(), 2);
    let c = put(h, "u1", "Carol eats pizza").await;
    h.svc.delete("u1", a.id).await.unwrap();
    let last = store.last_change().await.unwrap();
    assert!(stale.applied() < last);
    assert_eq!(store.change_horizon().await.unwrap(), 0);
    // Nothing is old enough yet: nothing goes.
    let past = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    assert_eq!(store.prune_changes(past, i64::MAX, 100).await.unwrap(), 0);
    // Everything older than a minute from now, up to everything applied by
    // the service's own index: all but the newest record.
    let future = time::OffsetDateTime::now_utc() + time::Duration::minutes(1);
    let pruned = store.prune_changes(future, i64::MAX, 100).await.unwrap();
    assert!(pruned >= 3, "{pruned}");
    assert_eq!(
        store.last_change().await.unwrap(),
        last,
        "the newest record stays"
    );
    let horizon = store.change_horizon().await.unwrap();
    assert!(horizon > stale.applied() && horizon < last, "{horizon}");
    let kept = store.changes_after(0, 100).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].seq, last);
    // The stale index sees the gap and resyncs from SQL.
    while stale.catch_up(store).await.unwrap() > 0 {}
    assert_eq!(stale.applied(), last);
    assert_eq!(stale.len(), 2, "a was deleted while the log was pruned");
    let f = uat_memory::Filter {
        user_id: "u1".into(),
        ..uat_memory::Filter::default()
    };
    let ids = |hits: Vec<(Uuid, f32)>| hits.into_iter().map(|(id, _)| id).collect::<HashSet<_>>();
    let found = ids(stale
        .search(FakeEmbedder::vector("pizza jazz sedan"), &f, 10)
        .await
        .unwrap());
    assert_eq!(found, HashSet::from([b.id, c.id]));
    // Closed, then more writes and a prune past its position: reopening
    // rebuilds it instead of reading a log that no longer holds its changes.
    drop(stale);
    let d = put(h, "u1", "Dave rides a bike").await;
    h.svc.delete("u1", b.id).await.unwrap();
    put(h, "u9", "another user").await;
    assert!(store.prune_changes(future, i64::MAX, 100).await.unwrap() >= 2);
    let reopened = VectorIndex::open(&dir, "fake-concepts", crate::common::DIM, store)
        .await
        .unwrap();
    assert_eq!(reopened.applied(), store.last_change().await.unwrap());
    assert_eq!(reopened.len(), 3);
    let found = ids(reopened
        .search(FakeEmbedder::vector("pizza jazz bike sedan"), &f, 10)
        .await
        .unwrap());
    assert_eq!(found, HashSet::from([c.id, d.id]));
    // The service's own index, kept current by its tailer, never needed either.
    assert!(h.svc.sync_index(Duration::from_secs(2)).await.unwrap());
    assert_eq!(h.svc.index().unwrap().len(), 3);
}

/// The semantic query `query` of `u1`, top 5, on `svc`.
fn semantic_query(svc: &uat_memory::Memories, query: &str) -> uat_memory::SearchQuery {
    SearchInput {
        user_id: Some("u1".into()),
        query: Some(query.into()),
        mode: Some("semantic".into()),
        top_k: Some(5),
        ..SearchInput::default()
    }
    .validate(svc.limits())
    .unwrap()
}

/// Polls (at most 10 s) until a semantic search on `svc` finds `id`.
async fn found_semantically(svc: &uat_memory::Memories, query: &str, id: Uuid) {
    let q = semantic_query(svc, query);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hits: Vec<Uuid> = svc
            .search(&q)
            .await
            .unwrap()
            .results
            .iter()
            .map(|h| h.memory.id)
            .collect();
        if hits.contains(&id) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "semantic search did not find the memory within 10 s: {hits:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Regression: a memory written while no embedding model was available (the
/// service runs keyword-only and stores it without an embedding) was never
/// found by semantic search, even after a restart with the model: the index
/// skipped it and nothing ever embedded it. The backfill does now, without
/// changing the memory, and stops with the service.
pub async fn memories_written_without_a_model_are_embedded_once_it_is_back(h: &Harness) {
    let keyword_only = h.open_service(None, "keyword-only").await;
    let req = WriteRequest::from_json(
        json!({"user_id": "u1", "content": "Alice prefers automobiles over bicycles"}),
        keyword_only.limits(),
    )
    .unwrap();
    let m = keyword_only.write(req).await.unwrap().remove(0).memory;
    drop(keyword_only);
    assert!(
        !has_embedding(h, m.id).await,
        "written without an embedding"
    );

    let e = Arc::new(FakeEmbedder::new());
    let svc = h
        .open_service(Some(e.clone() as Arc<dyn Embedder>), "restarted")
        .await;
    found_semantically(&svc, "which vehicle does she enjoy", m.id).await;
    let entries = svc.store().index_entries(&[m.id]).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].embedding.model, "fake-concepts");
    assert_eq!(
        entries[0].embedding.vector,
        FakeEmbedder::vector(&m.content)
    );
    // The memory itself did not change.
    assert_eq!(svc.get("u1", m.id).await.unwrap(), m);
    let ops: Vec<String> = svc
        .history("u1", m.id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.operation)
        .collect();
    assert_eq!(ops, vec!["create"]);

    // Dropping the service stops the backfill, which lets go of the embedder.
    drop(svc);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while Arc::strong_count(&e) > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the backfill still holds the embedder after the service was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A memory embedded by another model (written before the model was changed)
/// is re-embedded with the current one, and semantic search finds it.
pub async fn memories_embedded_by_another_model_are_reembedded_with_the_current_one(h: &Harness) {
    let older = h
        .open_service(Some(Arc::new(OlderModel) as Arc<dyn Embedder>), "older")
        .await;
    let req = WriteRequest::from_json(
        json!({"user_id": "u1", "content": "Carol drives a sedan to the office"}),
        older.limits(),
    )
    .unwrap();
    let m = older.write(req).await.unwrap().remove(0).memory;
    drop(older);
    let entries = h.svc.store().index_entries(&[m.id]).await.unwrap();
    assert_eq!(entries[0].embedding.model, "older-model");

    let svc = h.replica("current").await;
    found_semantically(&svc, "automobile commute", m.id).await;
    let entries = svc.store().index_entries(&[m.id]).await.unwrap();
    assert_eq!(entries[0].embedding.model, "fake-concepts");
    assert_eq!(
        entries[0].embedding.vector,
        FakeEmbedder::vector(&m.content)
    );
    assert_eq!(svc.get("u1", m.id).await.unwrap(), m);
}

/// The store's side of the backfill: a bounded scan finds exactly the live
/// memories without an embedding of the model (none, another model's, or
/// one of another length); an embedding is stored only while the memory's
/// content is the one embedded, once, with a change-log record each.
pub async fn backfill_stores_embeddings_only_for_unchanged_live_memories_once(h: &Harness) {
    use uat_memory::{Embedding, NewEmbedding, NewRow, Patch, now};
    // A database of its own: no service's backfill races with this test.
    let store = h.bare_store().await;
    let row = |content: &str, embedding: Option<Embedding>, expires: bool| {
        let at = now();
        NewRow {
            content_hash: format!("hash of {content}"),
            dedupe: false,
            embedding,
            memory: Memory {
                id: Uuid::now_v7(),
                user_id: "u1".into(),
                agent_id: None,
                run_id: None,
                kind: None,
                content: content.into(),
                tags: Vec::new(),
                metadata: serde_json::Map::new(),
                created_at: at,
                updated_at: at,
                expires_at: expires.then(|| at - time::Duration::seconds(1)),
            },
        }
    };
    let emb = |model: &str, vector: Vec<f32>| {
        Some(Embedding {
            model: model.into(),
            vector,
        })
    };
    let rows = vec![
        row("none yet", None, false),
        row("patched meanwhile", None, false),
        row(
            "up to date",
            emb("fake-concepts", FakeEmbedder::vector("up to date")),
            false,
        ),
        row("older model", emb("older-model", vec![0.5; DIM]), false),
        row("other length", emb("fake-concepts", vec![0.5; 4]), false),
        row("expired", None, true),
    ];
    let ids: Vec<Uuid> = rows.iter().map(|r| r.memory.id).collect();
    store.insert(rows).await.unwrap();

    // Two memories examined per step, however few of them match.
    let mut found = Vec::new();
    let mut after = None;
    let mut steps = 0;
    loop {
        let page = store
            .unembedded("fake-concepts", DIM, after, 2)
            .await
            .unwrap();
        assert!(page.memories.len() <= 2);
        found.extend(page.memories);
        steps += 1;
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert!((3..=4).contains(&steps), "{steps} steps over 6 memories");
    // In id order: sorted.
    let found_ids: Vec<Uuid> = found.iter().map(|u| u.id).collect();
    let sorted = |mut v: Vec<Uuid>| {
        v.sort();
        v
    };
    assert_eq!(found_ids, sorted(vec![ids[0], ids[1], ids[3], ids[4]]));
    let none_yet = found.iter().find(|u| u.id == ids[0]).unwrap();
    assert_eq!(none_yet.content, "none yet");
    assert_eq!(none_yet.content_hash, "hash of none yet");

    // One memory changes between the scan and the store.
    let patch = Patch {
        content: Some("new content".into()),
        content_hash: Some("hash of new content".into()),
        ..Patch::default()
    };
    store.update("u1", ids[1], patch).await.unwrap().unwrap();
    let last = store.last_change().await.unwrap();
    let made: Vec<NewEmbedding> = found
        .iter()
        .map(|u| NewEmbedding {
            id: u.id,
            content_hash: u.content_hash.clone(),
            embedding: Embedding {
                model: "fake-concepts".into(),
                vector: FakeEmbedder::vector(&u.content),
            },
        })
        .collect();
    assert_eq!(store.store_embeddings(made.clone()).await.unwrap(), 3);
    let changes = store.changes_after(last, 100).await.unwrap();
    let changed: Vec<Option<Uuid>> = changes.iter().map(|c| c.memory_id).collect();
    let stored = sorted(vec![ids[0], ids[3], ids[4]]);
    assert_eq!(
        changed,
        stored.iter().copied().map(Some).collect::<Vec<_>>()
    );
    assert!(
        changes
            .iter()
            .all(|c| c.op == uat_memory::ChangeOp::Upsert && c.user_id == "u1")
    );
    // Again (another replica with the same batch): nothing more.
    assert_eq!(store.store_embeddings(made).await.unwrap(), 0);
    assert_eq!(store.changes_after(last, 100).await.unwrap().len(), 3);

    let mut entries = store.index_entries(&ids).await.unwrap();
    entries.sort_by_key(|e| e.id);
    let got: Vec<(Uuid, &str, usize)> = entries
        .iter()
        .map(|e| (e.id, e.embedding.model.as_str(), e.embedding.vector.len()))
        .collect();
    let want: Vec<(Uuid, &str, usize)> = sorted(vec![ids[0], ids[2], ids[3], ids[4]])
        .into_iter()
        .map(|id| (id, "fake-concepts", DIM))
        .collect();
    assert_eq!(
        got, want,
        "the patched memory keeps no embedding; the expired one gets none"
    );
    // Left: the patched memory, with its new content.
    let left = store
        .unembedded("fake-concepts", DIM, None, 100)
        .await
        .unwrap();
    assert_eq!(left.next, None);
    assert_eq!(left.memories.len(), 1);
    assert_eq!(left.memories[0].id, ids[1]);
    assert_eq!(left.memories[0].content, "new content");
    // Stored beside the memory: no history entry, no new `updated_at`.
    let ops: Vec<String> = store
        .history("u1", ids[0])
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|e| e.operation)
        .collect();
    assert_eq!(ops, vec!["create"]);
}

/// When the embedder fails, the backfill retries later (after a backoff of a
/// second at first) and gets there.
pub async fn the_backfill_retries_after_the_embedder_fails(h: &Harness) {
    let keyword_only = h.open_service(None, "keyword-only").await;
    let req = WriteRequest::from_json(
        json!({"user_id": "u1", "content": "Dave loves his bike"}),
        keyword_only.limits(),
    )
    .unwrap();
    let m = keyword_only.write(req).await.unwrap().remove(0).memory;
    drop(keyword_only);
    let e = Arc::new(FlakyEmbedder {
        failures: AtomicUsize::new(1),
        calls: AtomicUsize::new(0),
    });
    let svc = h
        .open_service(Some(e.clone() as Arc<dyn Embedder>), "flaky")
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while svc
        .store()
        .index_entries(&[m.id])
        .await
        .unwrap()
        .iter()
        .all(|x| x.embedding.model != "fake-concepts")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not backfilled within 10 s of a failure"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(e.calls.load(Ordering::Relaxed) >= 2, "failed, then retried");
    found_semantically(&svc, "cycling", m.id).await;
}

/// An RFC 3339 time `secs` whole seconds from now (whole: what both stores
/// keep exactly).
fn in_secs(secs: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(
        time::OffsetDateTime::now_utc().unix_timestamp() + secs,
    )
    .unwrap();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn ops(history: &[uat_memory::HistoryEntry]) -> Vec<&str> {
    history.iter().map(|e| e.operation.as_str()).collect()
}

/// A deduplicated write that says something new about the memory (an agent
/// re-asserting a fact to re-tag it or refresh its expiry) applies it: tags
/// added, metadata keys set, kind and expiry replaced, with an `update` in
/// its history, and the vector index follows. A write that says nothing new
/// writes nothing. Before, the write returned the old memory and its
/// attributes were lost.
pub async fn dedupe_applies_the_new_attributes_to_the_existing_memory(h: &Harness) {
    let a = write(
        h,
        json!({"user_id": "u1", "kind": "fact", "content": "Alice likes green tea",
               "tags": ["drinks"], "metadata": {"src": "chat", "n": 1}, "expires_at": in_secs(3600)}),
    )
    .await
    .unwrap()
    .remove(0);
    let later = in_secs(7200);
    let b = write(
        h,
        json!({"user_id": "u1", "kind": "preference", "content": "Alice likes green tea",
               "tags": ["prefs"], "metadata": {"n": 2, "lang": "en"}, "expires_at": later}),
    )
    .await
    .unwrap()
    .remove(0);
    assert!(b.deduplicated);
    assert_eq!(b.memory.id, a.memory.id);
    assert_eq!(b.memory.tags, vec!["drinks", "prefs"], "tags: the union");
    assert_eq!(
        Value::Object(b.memory.metadata.clone()),
        json!({"src": "chat", "n": 2, "lang": "en"}),
        "metadata: merged, the new values win"
    );
    assert_eq!(b.memory.kind.as_deref(), Some("preference"));
    assert_eq!(
        b.memory.expires_at,
        uat_memory::input::time(Some(&later), "expires_at").unwrap()
    );
    assert_eq!(b.memory.created_at, a.memory.created_at);
    assert!(b.memory.updated_at > a.memory.updated_at);
    assert_eq!(h.svc.get("u1", a.memory.id).await.unwrap(), b.memory);
    let hist = h.svc.history("u1", a.memory.id).await.unwrap();
    assert_eq!(ops(&hist), vec!["create", "update"]);
    assert_eq!(
        hist[1].old_value.as_ref().unwrap()["tags"],
        json!(["drinks"])
    );
    assert_eq!(
        hist[1].new_value.as_ref().unwrap()["tags"],
        json!(["drinks", "prefs"])
    );
    // Nothing new (no attributes, or the ones it has): nothing written.
    for body in [
        json!({"user_id": "u1", "content": "Alice likes green tea"}),
        json!({"user_id": "u1", "content": "Alice likes green tea", "kind": "preference",
               "tags": ["prefs"], "metadata": {"lang": "en"}, "expires_at": later}),
    ] {
        let c = write(h, body).await.unwrap().remove(0);
        assert!(c.deduplicated);
        assert_eq!(c.memory, b.memory);
    }
    assert_eq!(h.svc.history("u1", a.memory.id).await.unwrap().len(), 2);
    // The vector index holds the new tags and kind.
    let found = search_ids(
        h,
        json!({"user_id": "u1", "query": "green tea", "mode": "semantic",
               "tags": ["prefs"], "kind": "preference"}),
    )
    .await;
    assert_eq!(found, vec![a.memory.id]);

    // A refreshed expiry keeps the memory (and the index keeps it too).
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::milliseconds(400))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let x = write(
        h,
        json!({"user_id": "u1", "content": "Bob drives a sedan", "expires_at": soon}),
    )
    .await
    .unwrap()
    .remove(0);
    let y = write(
        h,
        json!({"user_id": "u1", "content": "Bob drives a sedan", "expires_at": in_secs(3600)}),
    )
    .await
    .unwrap()
    .remove(0);
    assert!(y.deduplicated);
    assert_eq!(y.memory.id, x.memory.id);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(h.svc.get("u1", x.memory.id).await.is_ok());
    for mode in ["semantic", "keyword", "hybrid"] {
        let found = search_ids(
            h,
            json!({"user_id": "u1", "query": "automobile sedan", "mode": mode}),
        )
        .await;
        assert!(found.contains(&x.memory.id), "mode {mode}: {found:?}");
    }

    // Within one batch: the first row is created with what the later ones add.
    let out = write(
        h,
        json!({"memories": [
            {"user_id": "u2", "content": "same note", "tags": ["a"]},
            {"user_id": "u2", "content": "same note", "tags": ["b"], "metadata": {"k": 1}},
        ]}),
    )
    .await
    .unwrap();
    assert!(!out[0].deduplicated);
    assert!(out[1].deduplicated);
    let id = out[0].memory.id;
    for o in &out {
        assert_eq!(o.memory.id, id);
        assert_eq!(o.memory.tags, vec!["a", "b"]);
        assert_eq!(Value::Object(o.memory.metadata.clone()), json!({"k": 1}));
    }
    assert_eq!(h.svc.get("u2", id).await.unwrap(), out[0].memory);
    assert_eq!(ops(&h.svc.history("u2", id).await.unwrap()), vec!["create"]);
    // Two rows of a batch duplicating one stored memory: one update.
    let out = write(
        h,
        json!({"memories": [
            {"user_id": "u2", "content": "same note", "tags": ["c"]},
            {"user_id": "u2", "content": "other note"},
            {"user_id": "u2", "content": "same note", "tags": ["d"]},
        ]}),
    )
    .await
    .unwrap();
    assert!(out[0].deduplicated && !out[1].deduplicated && out[2].deduplicated);
    assert_eq!(out[0].memory, out[2].memory);
    assert_eq!(out[0].memory.tags, vec!["a", "b", "c", "d"]);
    assert_eq!(h.svc.get("u2", id).await.unwrap(), out[0].memory);
    assert_eq!(
        ops(&h.svc.history("u2", id).await.unwrap()),
        vec!["create", "update"]
    );

    // The merged memory must fit the limits: a 400 naming the field, nothing written.
    let sixty: Vec<String> = (0..60).map(|i| format!("t{i:02}")).collect();
    let ten: Vec<String> = (60..70).map(|i| format!("t{i:02}")).collect();
    write(
        h,
        json!({"user_id": "u3", "content": "tagged", "tags": sixty}),
    )
    .await
    .unwrap();
    let e = write(
        h,
        json!({"user_id": "u3", "content": "tagged", "tags": ten}),
    )
    .await
    .unwrap_err();
    assert_eq!(field(e), "tags");
    let e = write(
        h,
        json!({"memories": [{"user_id": "u3", "content": "fresh"},
                            {"user_id": "u3", "content": "tagged", "tags": ten}]}),
    )
    .await
    .unwrap_err();
    assert_eq!(field(e), "memories[1].tags");
    let page = list(h, json!({"user_id": "u3"})).await.unwrap();
    assert_eq!(page.memories.len(), 1);
    assert_eq!(page.memories[0].tags.len(), 60);
}

/// A write whose embedding is slow is dated when it commits, not when it
/// arrived: a client polling `since=` the newest `created_at` it saw misses
/// nothing committed later. Before, the slow write was dated before a
/// faster one that committed first, and such a poll skipped it.
pub async fn created_at_is_the_commit_time_not_the_arrival_time(h: &Harness) {
    let slow: Arc<dyn Embedder> = Arc::new(crate::common::SlowEmbedder {
        delay: Duration::from_millis(400),
    });
    let svc = h.open_service(Some(slow), "slow-index").await;
    let put_via = |content: &'static str| {
        let svc = &svc;
        async move {
            let req =
                WriteRequest::from_json(json!({"user_id": "u1", "content": content}), svc.limits())
                    .unwrap();
            svc.write(req).await.unwrap().remove(0).memory
        }
    };
    let (slow, quick) = tokio::join!(put_via("a slow note"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        put_via("a quick note").await
    });
    assert!(
        slow.created_at > quick.created_at,
        "the slow write committed last: {} vs {}",
        slow.created_at,
        quick.created_at
    );
    let since = quick
        .created_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let polled: Vec<Uuid> = list(h, json!({"user_id": "u1", "since": since}))
        .await
        .unwrap()
        .memories
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(polled, vec![slow.id, quick.id]);
}

/// A cursor holding a time outside what the stores keep is a bad cursor
/// (400), not a database error: PostgreSQL answered 500 for a forged one
/// far in the future, SQLite an empty page.
pub async fn a_forged_cursor_out_of_range_is_invalid(h: &Harness) {
    let m = put(h, "u1", "a note").await;
    let id = Uuid::now_v7();
    for created_us in [
        i64::MAX,
        uat_memory::Cursor::MAX_CREATED_US + 1,
        -1,
        i64::MIN,
    ] {
        let cursor = uat_memory::Cursor { created_us, id }.encode();
        let e = list(h, json!({"user_id": "u1", "cursor": cursor}))
            .await
            .unwrap_err();
        assert_eq!(field(e), "cursor", "{created_us}");
    }
    // The last microsecond of the year 9999 is still a cursor: everything before it.
    let cursor = uat_memory::Cursor {
        created_us: uat_memory::Cursor::MAX_CREATED_US,
        id,
    }
    .encode();
    let page = list(h, json!({"user_id": "u1", "cursor": cursor}))
        .await
        .unwrap();
    assert_eq!(page.memories.len(), 1);
    assert_eq!(page.memories[0].id, m.id);
}

/// In hybrid mode `min_score` is a floor on the cosine similarity to the
/// query, for candidates found by either search: a keyword-only candidate
/// is scored from its stored embedding, and one without an embedding fails.
/// Before, it was compared with the fused score (at most 2/61), so any
/// `min_score` above 0.033 returned nothing.
pub async fn hybrid_min_score_applies_to_the_semantic_similarity(h: &Harness) {
    // 25 memories the model places right on the query, sharing none of its
    // words: the index's nearest, far more than the hybrid depth (20).
    let mut close = HashSet::new();
    for i in 0..25 {
        let w = write(
            h,
            json!({"user_id": "u1", "content": format!("car {i}"), "metadata": {"p": "x"}}),
        )
        .await
        .unwrap();
        close.insert(w[0].memory.id);
    }
    // The rare word, and some of the meaning (cosine 0.58): keyword-only.
    let target = write(
        h,
        json!({"user_id": "u1", "content": "zebra automobile bicycle pasta", "metadata": {"p": "x"}}),
    )
    .await
    .unwrap()
    .remove(0)
    .memory;
    // The rare word, nothing of the meaning (cosine 0.01).
    let unrelated = write(
        h,
        json!({"user_id": "u1", "content": "zebra pasta", "metadata": {"p": "x"}}),
    )
    .await
    .unwrap()
    .remove(0)
    .memory;
    // The rare word and all of the meaning, but written without a model.
    let keyword_only = h.open_service(None, "no-model").await;
    let unembedded = keyword_only
        .write(
            WriteRequest::from_json(
                json!({"user_id": "u1", "content": "zebra car", "metadata": {"p": "x"}}),
                keyword_only.limits(),
            )
            .unwrap(),
        )
        .await
        .unwrap()
        .remove(0)
        .memory;
    let query = "vehicle zebra";
    let cos = |content: &str| -> f32 {
        FakeEmbedder::vector(query)
            .iter()
            .zip(FakeEmbedder::vector(content))
            .map(|(a, b)| a * b)
            .sum()
    };
    assert!(cos("car 1") > 0.99);
    assert!((0.5..0.65).contains(&cos(&target.content)));
    assert!(cos(&unrelated.content) < 0.05);
    for metadata in [json!(null), json!({"p": "x"})] {
        let hits = search(
            h,
            json!({"user_id": "u1", "query": query, "top_k": 10, "min_score": 0.4, "metadata": metadata}),
        )
        .await
        .unwrap()
        .results;
        let ids: HashSet<Uuid> = hits.iter().map(|r| r.memory.id).collect();
        assert_eq!(hits.len(), 10, "{metadata}");
        assert!(ids.contains(&target.id), "{metadata}: the keyword-only hit");
        assert!(!ids.contains(&unrelated.id), "{metadata}");
        assert!(!ids.contains(&unembedded.id), "{metadata}: no embedding");
        assert!(
            ids.iter().all(|id| *id == target.id || close.contains(id)),
            "{metadata}"
        );
        let target_hit = hits.iter().find(|r| r.memory.id == target.id).unwrap();
        assert_eq!(target_hit.semantic_rank, None);
        assert!(target_hit.keyword_rank.is_some());
        // Above the target's similarity: only the close ones.
        let ids = search_ids(
            h,
            json!({"user_id": "u1", "query": query, "top_k": 10, "min_score": 0.7, "metadata": metadata}),
        )
        .await;
        assert_eq!(ids.len(), 10, "{metadata}");
        assert!(ids.iter().all(|id| close.contains(id)), "{metadata}");
    }
    // Without min_score all three keyword hits rank.
    let ids = search_ids(h, json!({"user_id": "u1", "query": query, "top_k": 50})).await;
    assert!(ids.contains(&unrelated.id) && ids.contains(&unembedded.id));
}

/// The history of a deleted or expired memory stays readable by its owner
/// (with the delete or expire entry) until every memory of the user is
/// deleted. Before, it was a 404 once the memory was gone.
pub async fn history_outlives_delete_and_expiry(h: &Harness) {
    let m = put(h, "u1", "Alice keeps bees").await;
    let p = PatchInput::from_json(json!({"tags": ["hobby"]}), h.svc.limits()).unwrap();
    h.svc.update("u1", m.id, p).await.unwrap();
    h.svc.delete("u1", m.id).await.unwrap();
    let hist = h.svc.history("u1", m.id).await.unwrap();
    assert_eq!(ops(&hist), vec!["create", "update", "delete"]);
    assert_eq!(
        hist[2].old_value.as_ref().unwrap()["content"],
        json!("Alice keeps bees")
    );
    assert!(hist[2].new_value.is_none());
    for (user, id) in [("u2", m.id), ("u1", Uuid::now_v7())] {
        assert!(
            matches!(h.svc.history(user, id).await, Err(MemoryError::NotFound)),
            "{user} {id}"
        );
    }
    // Expired: its history until the purge, then with the expire entry.
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::milliseconds(300))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let e = write(
        h,
        json!({"user_id": "u1", "content": "a passing thought", "expires_at": soon}),
    )
    .await
    .unwrap()
    .remove(0)
    .memory;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(
        h.svc.get("u1", e.id).await,
        Err(MemoryError::NotFound)
    ));
    assert_eq!(
        ops(&h.svc.history("u1", e.id).await.unwrap()),
        vec!["create"]
    );
    assert!(h.svc.purge().await.unwrap().expired >= 1);
    assert_eq!(
        ops(&h.svc.history("u1", e.id).await.unwrap()),
        vec!["create", "expire"]
    );
    // Deleting the user deletes the history too.
    h.svc.delete_user(Some("u1")).await.unwrap();
    for id in [m.id, e.id] {
        assert!(matches!(
            h.svc.history("u1", id).await,
            Err(MemoryError::NotFound)
        ));
    }
}

/// The store's exact search ranks by cosine the newest memories matching the
/// filter (user, metadata, live) that have an embedding of the query's model,
/// and says when it stopped short.
pub async fn nearest_exact_ranks_the_filtered_memories_by_cosine(h: &Harness) {
    use uat_memory::{Embedding, Filter, NewRow, now};
    let store = h.bare_store().await;
    let vector = |i: usize| -> Vec<f32> {
        (0..DIM)
            .map(|j| ((i * 7 + j * 3) % 11) as f32 - 5.0)
            .collect()
    };
    let row = |i: usize, user: &str, g: i64, model: Option<&str>, expired: bool| {
        let at = now();
        NewRow {
            content_hash: format!("h{i}"),
            dedupe: false,
            embedding: model.map(|m| Embedding {
                model: m.into(),
                vector: vector(i),
            }),
            memory: Memory {
                id: Uuid::now_v7(),
                user_id: user.into(),
                agent_id: None,
                run_id: None,
                kind: None,
                content: format!("memory {i}"),
                tags: Vec::new(),
                metadata: json!({"g": g}).as_object().unwrap().clone(),
                created_at: at,
                updated_at: at,
                expires_at: expired.then(|| at - time::Duration::seconds(1)),
            },
        }
    };
    let mut rows: Vec<NewRow> = (0..30)
        .map(|i| row(i, "u1", (i % 3) as i64, Some("m"), false))
        .collect();
    rows.push(row(30, "u2", 0, Some("m"), false));
    rows.push(row(31, "u1", 0, Some("m"), true));
    rows.push(row(32, "u1", 0, Some("other"), false));
    rows.push(row(33, "u1", 0, None, false));
    let candidates: Vec<(Uuid, Vec<f32>)> = rows[..30]
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 0)
        .map(|(i, r)| (r.memory.id, vector(i)))
        .collect();
    store.insert(rows).await.unwrap();
    let query = Embedding {
        model: "m".into(),
        vector: (0..DIM).map(|j| (j % 5) as f32 - 1.5).collect(),
    };
    let cos = |v: &[f32]| -> f32 {
        let dot: f32 = v.iter().zip(&query.vector).map(|(a, b)| a * b).sum();
        let n = |x: &[f32]| x.iter().map(|a| a * a).sum::<f32>().sqrt();
        dot / (n(v) * n(&query.vector))
    };
    let mut want: Vec<(Uuid, f32)> = candidates.iter().map(|(id, v)| (*id, cos(v))).collect();
    want.sort_by(|a, b| b.1.total_cmp(&a.1));
    let filter = Filter {
        user_id: "u1".into(),
        metadata: json!({"g": 0}).as_object().unwrap().clone(),
        ..Filter::default()
    };
    let got = store.nearest_exact(&filter, &query, 4, 1000).await.unwrap();
    assert!(!got.more);
    let got_ids: Vec<Uuid> = got.hits.iter().map(|h| h.0).collect();
    let want_ids: Vec<Uuid> = want.iter().take(4).map(|h| h.0).collect();
    assert_eq!(got_ids, want_ids);
    for ((_, g), (_, w)) in got.hits.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{g} vs {w}");
    }
    // Every candidate, and no more.
    let all = store
        .nearest_exact(&filter, &query, 100, 1000)
        .await
        .unwrap();
    assert_eq!(all.hits.len(), candidates.len());
    // A scan of 3: the newest 3 candidates (one batch: one time, then by id).
    let few = store.nearest_exact(&filter, &query, 100, 3).await.unwrap();
    assert!(few.more);
    let mut newest: Vec<Uuid> = candidates.iter().map(|c| c.0).collect();
    newest.sort();
    let newest: HashSet<Uuid> = newest.into_iter().rev().take(3).collect();
    assert_eq!(few.hits.iter().map(|h| h.0).collect::<HashSet<_>>(), newest);
    let exact = store
        .nearest_exact(&filter, &query, 100, candidates.len())
        .await
        .unwrap();
    assert!(!exact.more, "exactly `scan` matched");
}

/// Metadata filters compare JSON values as PostgreSQL's `jsonb` does, on
/// both stores: any key text (one holding `"` was a malformed JSON path and
/// a 500 on SQLite), numbers by value (`1` and `1.0` were unequal text on
/// SQLite), objects in any key order, nested values all the way down.
pub async fn metadata_filters_compare_json_values_alike_on_both_stores(h: &Harness) {
    // Values nested as deep as a filter may go: arrays and objects alternating.
    let mut deep = json!(1);
    for i in 1..uat_memory::input::MAX_FILTER_DEPTH {
        deep = if i % 2 == 0 {
            json!([0, deep])
        } else {
            json!({ "a": deep, "b": i })
        };
    }
    let m1 = write(
        h,
        json!({"user_id": "u1", "content": "first note", "metadata": {
            "n": 1, "a\"b": "quote", "k.e[y]$ \\": "odd", "s": "1", "w": "not json",
            "o": {"b": 1, "a": [1, 2.5]}, "z": null, "t": true,
            "big": 9_007_199_254_740_993_i64, "f": 0.1, "deep": deep.clone()}}),
    )
    .await
    .unwrap()
    .remove(0)
    .memory
    .id;
    let m2 = write(
        h,
        json!({"user_id": "u1", "content": "second note", "metadata": {
            "n": 1.5, "s": 1, "o": {"a": [1, 2.5]}, "t": false}}),
    )
    .await
    .unwrap()
    .remove(0)
    .memory
    .id;
    let wide: serde_json::Map<String, Value> =
        (0..100).map(|i| (format!("w{i}"), json!(i))).collect();
    let m3 = write(
        h,
        json!({"user_id": "u1", "content": "third note", "metadata": wide.clone()}),
    )
    .await
    .unwrap()
    .remove(0)
    .memory
    .id;
    let cases: Vec<(Value, Vec<Uuid>)> = vec![
        (json!({"n": 1}), vec![m1]),
        (json!({"n": 1.0}), vec![m1]),
        (json!({"n": 1.5}), vec![m2]),
        (json!({"n": "1"}), vec![]),
        (json!({"a\"b": "quote"}), vec![m1]),
        (json!({"k.e[y]$ \\": "odd"}), vec![m1]),
        (json!({"s": "1"}), vec![m1]),
        (json!({"s": 1}), vec![m2]),
        (json!({"o": {"a": [1.0, 2.5], "b": 1.0}}), vec![m1]),
        (json!({"o": {"a": [2.5, 1]}}), vec![]),
        (json!({"o": {"a": [1, 2.5]}}), vec![m2]),
        (json!({"o": {}}), vec![]),
        (json!({"o": "x"}), vec![]),
        (json!({"w": ["not json"]}), vec![]),
        (json!({"w": {"k": 1}}), vec![]),
        (json!({"z": null}), vec![m1]),
        (json!({"missing": null}), vec![]),
        (json!({"t": true}), vec![m1]),
        (json!({"t": false}), vec![m2]),
        (json!({"big": 9_007_199_254_740_993_i64}), vec![m1]),
        (json!({"big": 9_007_199_254_740_992_i64}), vec![]),
        (json!({"f": 0.1}), vec![m1]),
        (json!({"deep": deep}), vec![m1]),
        (Value::Object(wide), vec![m3]),
        (json!({"n": 1, "t": true, "s": "1"}), vec![m1]),
        (json!({"n": 1, "t": false}), vec![]),
    ];
    for (filter, want) in cases {
        let mut want = want;
        want.sort();
        for mode in ["keyword", "semantic", "hybrid"] {
            let mut got = search(
                h,
                json!({"user_id": "u1", "query": "note", "mode": mode, "metadata": filter}),
            )
            .await
            .unwrap_or_else(|e| panic!("mode {mode}, filter {filter}: {e}"))
            .results
            .iter()
            .map(|r| r.memory.id)
            .collect::<Vec<_>>();
            got.sort();
            assert_eq!(got, want, "mode {mode}, filter {filter}");
        }
    }
    // One value more, or one level deeper: a 400 naming the field.
    let too_many: serde_json::Map<String, Value> =
        (0..101).map(|i| (format!("w{i}"), json!(i))).collect();
    let too_deep = json!({ "deep": [deep] });
    for filter in [Value::Object(too_many), too_deep] {
        let s: SearchInput =
            serde_json::from_value(json!({"user_id": "u1", "query": "note", "metadata": filter}))
                .unwrap();
        assert_eq!(field(s.validate(h.svc.limits()).unwrap_err()), "metadata");
    }
}

/// Deduplicated writes of one fact arriving at once each add their tag:
/// each merges into what the previous one committed (on PostgreSQL the
/// duplicate is locked by the lookup), none into a stale read.
pub async fn concurrent_duplicates_each_apply_their_attributes(h: &Harness) {
    put(h, "u1", "Alice likes green tea").await;
    let tag = |i: usize| {
        write(
            h,
            json!({"user_id": "u1", "content": "Alice likes green tea", "tags": [format!("t{i}")]}),
        )
    };
    let out = tokio::join!(
        tag(0),
        tag(1),
        tag(2),
        tag(3),
        tag(4),
        tag(5),
        tag(6),
        tag(7)
    );
    let outs = [out.0, out.1, out.2, out.3, out.4, out.5, out.6, out.7];
    assert!(outs.iter().all(|o| o.as_ref().unwrap()[0].deduplicated));
    let page = list(h, json!({"user_id": "u1"})).await.unwrap();
    assert_eq!(page.memories.len(), 1);
    let want: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
    assert_eq!(page.memories[0].tags, want);
    let hist = h.svc.history("u1", page.memories[0].id).await.unwrap();
    assert_eq!(hist.len(), 9, "a create and one update per write");
}

/// Two tenants (API key owners) with a user of the same `user_id` never see
/// each other's memories on any route, dedupe never crosses them, and their
/// answers name the client's `user_id`; requests without a tenant see
/// neither. Before tenants, every key's `alice` was one user.
pub async fn tenants_with_the_same_user_id_are_isolated_on_every_route(h: &Harness) {
    let (ta, tb) = (h.svc.scoped(Some("team-a")), h.svc.scoped(Some("team-b")));
    let body = |c: &str| json!({"user_id": "alice", "content": c, "tags": ["pets"]});
    let req = |v: Value| WriteRequest::from_json(v, h.svc.limits()).unwrap();
    let a = ta
        .write(req(body("My dog is called Rex")))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(a.memory.user_id, "alice");
    // The same content for team-b's alice is a memory of its own.
    let b = tb
        .write(req(body("My dog is called Rex")))
        .await
        .unwrap()
        .remove(0);
    assert!(!b.deduplicated, "dedupe crossed tenants");
    assert_ne!(a.memory.id, b.memory.id);
    assert_eq!(
        ta.write(req(body("My dog is called Rex")))
            .await
            .unwrap()
            .remove(0)
            .memory
            .id,
        a.memory.id,
        "dedupe within a tenant"
    );
    // Every id route, across tenants.
    assert!(matches!(
        tb.get("alice", a.memory.id).await,
        Err(MemoryError::NotFound)
    ));
    assert!(matches!(
        tb.history("alice", a.memory.id).await,
        Err(MemoryError::NotFound)
    ));
    let p = || PatchInput::from_json(json!({"content": "hijacked"}), h.svc.limits()).unwrap();
    assert!(matches!(
        tb.update("alice", a.memory.id, p()).await,
        Err(MemoryError::NotFound)
    ));
    assert!(matches!(
        tb.delete("alice", a.memory.id).await,
        Err(MemoryError::NotFound)
    ));
    // Nor does a request without a tenant reach either.
    assert!(matches!(
        h.svc.get("alice", a.memory.id).await,
        Err(MemoryError::NotFound)
    ));
    assert!(
        list(h, json!({"user_id": "alice"}))
            .await
            .unwrap()
            .memories
            .is_empty()
    );
    // Owners read their own, under the client's user_id.
    let got = ta.get("alice", a.memory.id).await.unwrap();
    assert_eq!(
        (got.user_id.as_str(), got.content.as_str()),
        ("alice", "My dog is called Rex")
    );
    let patched = ta
        .update(
            "alice",
            a.memory.id,
            PatchInput::from_json(json!({"tags": ["dogs"]}), h.svc.limits()).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(patched.user_id, "alice");
    let hist = ta.history("alice", a.memory.id).await.unwrap();
    assert_eq!(ops(&hist), vec!["create", "update"]);
    for e in &hist {
        for v in [&e.old_value, &e.new_value].into_iter().flatten() {
            assert_eq!(v["user_id"], json!("alice"), "{v}");
        }
    }
    // Lists and searches.
    let lq = || {
        serde_json::from_value::<ListParams>(json!({"user_id": "alice"}))
            .unwrap()
            .validate()
            .unwrap()
    };
    let page = tb.list(lq()).await.unwrap();
    assert_eq!(
        page.memories
            .iter()
            .map(|m| (m.id, m.user_id.as_str()))
            .collect::<Vec<_>>(),
        vec![(b.memory.id, "alice")]
    );
    assert!(h.svc.sync_index(Duration::from_secs(10)).await.unwrap());
    for mode in ["keyword", "semantic", "hybrid"] {
        let s: SearchInput = serde_json::from_value(
            json!({"user_id": "alice", "query": "dog Rex", "mode": mode, "top_k": 50}),
        )
        .unwrap();
        let r = tb
            .search(s.validate(h.svc.limits()).unwrap())
            .await
            .unwrap();
        let got: Vec<_> = r
            .results
            .iter()
            .map(|x| (x.memory.id, x.memory.user_id.as_str()))
            .collect();
        assert_eq!(got, vec![(b.memory.id, "alice")], "mode {mode}");
    }
    // Deleting team-b's alice leaves team-a's.
    assert_eq!(tb.delete_user(Some("alice")).await.unwrap(), 1);
    assert_eq!(ta.list(lq()).await.unwrap().memories.len(), 1);
    ta.delete("alice", a.memory.id).await.unwrap();
    assert!(ta.list(lq()).await.unwrap().memories.is_empty());
}

/// Applies a PATCH body to memory `id` of `user`.
async fn patch(h: &Harness, user: &str, id: Uuid, body: Value) -> uat_memory::Result<Memory> {
    let p = PatchInput::from_json(body, h.svc.limits())?;
    h.svc.update(user, id, p).await
}

/// A NUL character (U+0000) anywhere a client's text reaches SQL is invalid
/// input naming its field, on both stores alike: PostgreSQL keeps it neither
/// in TEXT nor (as `\u0000`) in jsonb, so it was a 500 there (in a batch, a
/// 500 naming no item) while SQLite stored it. Nothing is written.
pub async fn nul_characters_are_refused_naming_the_field(h: &Harness) {
    let target = put(h, "u1", "a memory to patch").await;
    let item = |c: &str| json!({"user_id": "u1", "content": c});
    let writes: Vec<(Value, &str)> = vec![
        (item("nul \u{0} inside"), "content"),
        (
            json!({"user_id": "u1", "content": "x", "metadata": {"k": "a\u{0}b"}}),
            "metadata",
        ),
        (
            json!({"user_id": "u1", "content": "x", "metadata": {"k\u{0}": 1}}),
            "metadata",
        ),
        (
            json!({"user_id": "u1", "content": "x", "metadata": {"a": [1, {"b": ["ok", "\u{0}"]}]}}),
            "metadata",
        ),
        (
            json!({"user_id": "u1", "content": "x", "metadata": {"a": {"b\u{0}c": true}}}),
            "metadata",
        ),
        (
            json!({"user_id": "u1", "content": "x", "tags": ["ok", "t\u{0}"]}),
            "tags[1]",
        ),
        (
            json!({"user_id": "u1", "content": "x", "kind": "k\u{0}"}),
            "kind",
        ),
        (
            json!({"memories": [item("one"), item("two"), item("three"),
                {"user_id": "u1", "content": "four", "metadata": {"deep": {"k": "\u{0}"}}}]}),
            "memories[3].metadata",
        ),
        (
            json!({"memories": [item("one"), item("\u{0}")]}),
            "memories[1].content",
        ),
    ];
    for (body, want) in writes {
        let e = write(h, body.clone()).await.unwrap_err();
        assert_eq!(field(e), want, "{body}");
    }
    let searches: Vec<(Value, &str)> = vec![
        (json!({"user_id": "u1", "query": "memory\u{0}"}), "query"),
        (
            json!({"user_id": "u1", "query": "memory", "metadata": {"k": "\u{0}"}}),
            "metadata",
        ),
        (
            json!({"user_id": "u1", "query": "memory", "metadata": {"k\u{0}": "v"}}),
            "metadata",
        ),
        (
            json!({"user_id": "u1", "query": "memory", "metadata": {"k": ["\u{0}"]}}),
            "metadata",
        ),
    ];
    for mode in ["keyword", "semantic", "hybrid"] {
        for (body, want) in &searches {
            let mut body = body.clone();
            body["mode"] = json!(mode);
            let e = search(h, body.clone()).await.unwrap_err();
            assert_eq!(field(e), *want, "{body}");
        }
    }
    for (body, want) in [
        (json!({"content": "new \u{0} text"}), "content"),
        (json!({"metadata": {"k": "\u{0}"}}), "metadata"),
        (json!({"metadata": {"\u{0}": 1}}), "metadata"),
        (json!({"tags": ["\u{0}"]}), "tags[0]"),
    ] {
        let e = patch(h, "u1", target.id, body.clone()).await.unwrap_err();
        assert_eq!(field(e), want, "{body}");
    }
    let page = list(h, json!({"user_id": "u1"})).await.unwrap();
    assert_eq!(
        page.memories,
        vec![h.svc.get("u1", target.id).await.unwrap()]
    );
    assert_eq!(page.memories[0], target, "nothing was written");
}

/// Keyword scores mean the same on both stores: each is in [0, 1); a memory
/// holding more of the query's words ranks higher, `floor(score * (n + 1))`
/// is how many of its `n` words it holds (so `min_score` keeps the same
/// memories on both); equal scores go newest first.
pub async fn keyword_scores_rank_by_words_matched_alike_on_both_stores(h: &Harness) {
    let three = put(h, "u1", "apple banana cherry").await;
    let two = put(h, "u1", "banana cherry smoothie").await;
    let one_repeated = put(h, "u1", "cherry cherry cherry cherry pie").await;
    let one = put(h, "u1", "apple pie").await;
    put(h, "u1", "nothing relevant here").await;
    put(h, "u2", "apple banana cherry").await;
    let q = json!({"user_id": "u1", "query": "Apple, banana and cherry?", "mode": "keyword"});
    let r = search(h, q.clone()).await.unwrap();
    let got: Vec<(Uuid, f64)> = r.results.iter().map(|x| (x.memory.id, x.score)).collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!((got[0].0, got[1].0), (three.id, two.id), "{got:?}");
    assert_eq!(
        HashSet::from([got[2].0, got[3].0]),
        HashSet::from([one.id, one_repeated.id])
    );
    for ((_, score), words) in got.iter().zip([3, 2, 1, 1]) {
        assert!((0.0..1.0).contains(score), "{got:?}");
        assert_eq!((score * 4.0).floor(), f64::from(words), "{got:?}");
    }
    assert!(
        got.windows(2).all(|w| w[0].1 >= w[1].1),
        "best first: {got:?}"
    );
    let mut at_least_two = q.clone();
    at_least_two["min_score"] = json!(0.5);
    assert_eq!(
        search_ids(h, at_least_two).await,
        vec![three.id, two.id],
        "min_score 2/4: two words of the three"
    );
    // One word: every score is in [1/2, 1).
    for x in search(
        h,
        json!({"user_id": "u1", "query": "pie", "mode": "keyword"}),
    )
    .await
    .unwrap()
    .results
    {
        assert!((0.5..1.0).contains(&x.score), "{}", x.score);
    }
    // The same content three times: equal scores, the newest first.
    let mut same = Vec::new();
    for _ in 0..3 {
        let w = write(
            h,
            json!({"user_id": "u1", "content": "durian season", "dedupe": false}),
        )
        .await
        .unwrap();
        same.push(w[0].memory.id);
    }
    let r = search(
        h,
        json!({"user_id": "u1", "query": "durian", "mode": "keyword"}),
    )
    .await
    .unwrap();
    let got: Vec<Uuid> = r.results.iter().map(|x| x.memory.id).collect();
    same.reverse();
    assert_eq!(got, same, "newest first");
    assert!(r.results.windows(2).all(|w| w[0].score == w[1].score));
}

/// Accents and other diacritics (and compatibility forms such as the `ﬁ`
/// ligature) do not matter to keyword search, on both stores alike: "cafe"
/// finds "café" and the other way round, in any case.
pub async fn accents_are_folded_alike_on_both_stores(h: &Harness) {
    let accented = put(h, "u1", "meet at the café").await;
    let plain = put(h, "u1", "the CAFE on the corner").await;
    let greek = put(h, "u1", "ένας καφές").await;
    let ligature = put(h, "u1", "the ﬁnal draft").await;
    let vietnamese = put(h, "u1", "Tiếng Việt").await;
    put(h, "u1", "a cafeteria").await;
    let kw =
        async |q: &str| -> HashSet<Uuid> { keyword_ids(h, "u1", q).await.into_iter().collect() };
    for q in ["cafe", "café", "CAFÉ", "Cafe\u{301}", "ｃａｆｅ"] {
        assert_eq!(kw(q).await, HashSet::from([accented.id, plain.id]), "{q}");
    }
    for q in ["καφες", "ΚΑΦΈΣ", "καφές"] {
        assert_eq!(kw(q).await, HashSet::from([greek.id]), "{q}");
    }
    assert_eq!(kw("final").await, HashSet::from([ligature.id]));
    assert_eq!(kw("ﬁnal").await, HashSet::from([ligature.id]));
    assert_eq!(kw("tieng viet").await, HashSet::from([vietnamese.id]));
    // A patch indexes the new content the same way.
    patch(h, "u1", plain.id, json!({"content": "the Crème brûlée"}))
        .await
        .unwrap();
    assert_eq!(kw("creme brulee").await, HashSet::from([plain.id]));
    assert_eq!(kw("cafe").await, HashSet::from([accented.id]));
}

/// Chinese and Japanese, written without spaces, are searched by words
/// inside a sentence, on both stores alike (runs of CJK characters make
/// bigrams, see `keyword`): "東京" finds "私は東京に住んでいます", "北京"
/// finds "我住在北京市中心", one character finds the memories holding it,
/// a memory holding the whole query phrase ranks above one holding a part,
/// and a memory of other words is not found.
pub async fn cjk_words_are_found_inside_sentences_alike_on_both_stores(h: &Harness) {
    let tokyo = put(h, "u1", "私は東京に住んでいます").await;
    let beijing = put(h, "u1", "我住在北京市中心").await;
    let cold = put(h, "u1", "北京很冷").await;
    let cat = put(h, "u1", "我的猫很可爱").await;
    let kyoto = put(h, "u1", "京都の寺が好きです").await;
    let phone = put(h, "u1", "iPhone15を買った").await;
    let rain = put(h, "u1", "今日は雨が降っています").await;
    let korean = put(h, "u1", "한국어 공부를 했다").await;
    put(h, "u2", "我住在北京市中心").await;
    let kw = async |q: &str| keyword_hits(h, "u1", q).await;
    let ids = |hits: Vec<(Uuid, f64)>| hits.into_iter().map(|(id, _)| id).collect::<HashSet<_>>();
    // A word inside a sentence.
    assert_eq!(ids(kw("東京").await), HashSet::from([tokyo.id]));
    assert_eq!(ids(kw("北京").await), HashSet::from([beijing.id, cold.id]));
    assert_eq!(ids(kw("可爱").await), HashSet::from([cat.id]));
    assert_eq!(ids(kw("好き").await), HashSet::from([kyoto.id]));
    // One character: the memories holding it, wherever it sits in its run.
    assert_eq!(ids(kw("猫").await), HashSet::from([cat.id]));
    assert_eq!(ids(kw("爱").await), HashSet::from([cat.id]));
    assert_eq!(
        ids(kw("京").await),
        HashSet::from([tokyo.id, beijing.id, cold.id, kyoto.id])
    );
    // The whole phrase ranks above a part of it: "北京市中心" is four
    // bigrams, all in one memory, one in the other.
    let got = kw("北京市中心").await;
    assert_eq!(
        got.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![beijing.id, cold.id],
        "{got:?}"
    );
    assert_eq!((got[0].1 * 5.0).floor(), 4.0, "{got:?}");
    assert_eq!((got[1].1 * 5.0).floor(), 1.0, "{got:?}");
    let got = kw("東京に住んでいます").await;
    assert_eq!(got[0].0, tokyo.id, "{got:?}");
    assert!(got[1..].iter().all(|(_, s)| *s < got[0].1), "{got:?}");
    // Letters and digits next to a CJK run are a word of their own.
    assert_eq!(ids(kw("iphone15").await), HashSet::from([phone.id]));
    assert_eq!(ids(kw("買った").await), HashSet::from([phone.id]));
    // A memory of other words is not found; nor is another user's.
    for q in ["東京", "北京", "猫", "京"] {
        assert!(!ids(kw(q).await).contains(&rain.id), "{q}");
    }
    assert!(kw("上海").await.is_empty());
    // Hangul stays whole words, as before.
    assert_eq!(ids(kw("한국어").await), HashSet::from([korean.id]));
    // Hybrid search has its keyword half back.
    let hy = search(
        h,
        json!({"user_id": "u1", "query": "東京", "mode": "hybrid", "top_k": 10}),
    )
    .await
    .unwrap();
    let hit = hy
        .results
        .iter()
        .find(|r| r.memory.id == tokyo.id)
        .expect("hybrid finds the memory about Tokyo");
    assert_eq!(hit.keyword_rank, Some(1));
    // A patch indexes the new content the same way.
    patch(h, "u1", cold.id, json!({"content": "上海很热"}))
        .await
        .unwrap();
    assert_eq!(ids(kw("上海").await), HashSet::from([cold.id]));
    assert_eq!(ids(kw("北京").await), HashSet::from([beijing.id]));
}

/// Kana keep their voiced sound marks in keyword search (`ビール`, beer, is
/// not `ヒール`, heel), and half-width Katakana are the full-width ones, on
/// both stores alike.
pub async fn kana_voicing_and_width_alike_on_both_stores(h: &Harness) {
    let beer = put(h, "u1", "ビールが好き").await;
    let heel = put(h, "u1", "ヒールを履く").await;
    let guide = put(h, "u1", "ｶﾞｲﾄﾞブックを読む").await;
    let kw = async |q: &str| keyword_ids(h, "u1", q).await;
    // Both hold "ール": the one holding the whole word first.
    assert_eq!(kw("ビール").await, vec![beer.id, heel.id]);
    assert_eq!(kw("ヒール").await, vec![heel.id, beer.id]);
    assert_eq!(kw("ビ").await, vec![beer.id]);
    assert_eq!(kw("ヒ").await, vec![heel.id]);
    assert_eq!(kw("ガイド").await, vec![guide.id]);
    assert_eq!(kw("ｶﾞｲﾄﾞ").await, vec![guide.id]);
    assert!(kw("カイト").await.is_empty());
}

/// Times a client sends with an offset are answered in UTC, as reads give
/// them: the JSON of a write's (and a patch's) answer is the JSON of a read.
pub async fn write_answers_give_times_in_utc_as_reads_do(h: &Harness) {
    let out = write(
        h,
        json!({"user_id": "u1", "content": "offset", "expires_at": "2099-01-02T04:04:05+01:00"}),
    )
    .await
    .unwrap();
    let answer = serde_json::to_value(&out[0]).unwrap();
    assert_eq!(answer["expires_at"], json!("2099-01-02T03:04:05Z"));
    let id = out[0].memory.id;
    let text = |m: &Memory| serde_json::to_string(m).unwrap();
    let read = h.svc.get("u1", id).await.unwrap();
    assert_eq!(text(&out[0].memory), text(&read));
    let patched = patch(
        h,
        "u1",
        id,
        json!({"expires_at": "2099-06-01T00:00:00.5-07:30"}),
    )
    .await
    .unwrap();
    assert_eq!(
        serde_json::to_value(&patched).unwrap()["expires_at"],
        json!("2099-06-01T07:30:00.5Z")
    );
    assert_eq!(text(&patched), text(&h.svc.get("u1", id).await.unwrap()));
    // A duplicate's expiry, merged into the stored memory.
    let dup = write(
        h,
        json!({"user_id": "u1", "content": "offset", "expires_at": "2099-03-01T00:00:00+05:00"}),
    )
    .await
    .unwrap();
    assert!(dup[0].deduplicated);
    assert_eq!(
        serde_json::to_value(&dup[0]).unwrap()["expires_at"],
        json!("2099-02-28T19:00:00Z")
    );
    assert_eq!(
        text(&dup[0].memory),
        text(&h.svc.get("u1", id).await.unwrap())
    );
    // Too late once in UTC: refused, not stored unreadable.
    let e = write(
        h,
        json!({"user_id": "u1", "content": "late", "expires_at": "9999-12-31T23:30:00-01:00"}),
    )
    .await
    .unwrap_err();
    assert_eq!(field(e), "expires_at");
}

/// The list's `tags` parameter: each comma-separated piece is trimmed
/// (`tags=a, b` means `a` and `b`), empty pieces are dropped, and the
/// parameter may be repeated (`tags=a&tags=b`).
pub async fn list_tags_are_trimmed_and_may_repeat(h: &Harness) {
    let w = |c: &str, tags: Value| json!({"user_id": "u1", "content": c, "tags": tags});
    let mut ids = Vec::new();
    for (c, tags) in [
        ("alpha", json!(["a"])),
        ("beta", json!(["b"])),
        ("both", json!(["a", "b"])),
    ] {
        ids.push(write(h, w(c, tags)).await.unwrap().remove(0).memory.id);
    }
    let (a, b, ab) = (ids[0], ids[1], ids[2]);
    let set = |p: uat_memory::Page| p.memories.iter().map(|m| m.id).collect::<HashSet<_>>();
    let got = |params: Value| async move { set(list(h, params).await.unwrap()) };
    assert_eq!(
        got(json!({"user_id": "u1", "tags": "a, b"})).await,
        HashSet::from([a, b, ab])
    );
    assert_eq!(
        got(json!({"user_id": "u1", "tags": "a, b", "tag_mode": "all"})).await,
        HashSet::from([ab])
    );
    assert_eq!(
        got(json!({"user_id": "u1", "tags": " b ,, ", "tag_mode": "all"})).await,
        HashSet::from([b, ab])
    );
    // A query string with `tags` twice (as axum hands it over: text pairs).
    let query = |pairs: Vec<(&'static str, &'static str)>| {
        use serde::Deserialize;
        let de =
            serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(pairs.into_iter());
        ListParams::deserialize(de)
    };
    let p = query(vec![
        ("user_id", "u1"),
        ("tags", "a"),
        ("tags", " b"),
        ("tag_mode", "all"),
    ])
    .unwrap();
    assert_eq!(
        set(h.svc.list(&p.validate().unwrap()).await.unwrap()),
        HashSet::from([ab])
    );
    let p = query(vec![("tags", "a,"), ("user_id", "u1"), ("tags", "")]).unwrap();
    assert_eq!(
        set(h.svc.list(&p.validate().unwrap()).await.unwrap()),
        HashSet::from([a, ab])
    );
    // Any other parameter still comes once, and an unknown one is refused.
    let e = query(vec![("user_id", "u1"), ("user_id", "u2")]).unwrap_err();
    assert!(e.to_string().contains("duplicate field `user_id`"), "{e}");
    let e = query(vec![("user_id", "u1"), ("tag", "a")]).unwrap_err();
    assert!(e.to_string().contains("unknown field `tag`"), "{e}");
}

/// The memories of `u1` the vector index returns for `query` (embedded by
/// the fake, so it works while the embedder is failing), once the index
/// holds every committed change: what semantic search would rank.
async fn in_index(h: &Harness, query: &str) -> Vec<Uuid> {
    assert!(h.svc.sync_index(Duration::from_secs(5)).await.unwrap());
    let filter = uat_memory::Filter {
        user_id: "u1".into(),
        ..uat_memory::Filter::default()
    };
    h.svc
        .index()
        .unwrap()
        .search(FakeEmbedder::vector(query), &filter, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// Polls (at most `secs`) until every memory of `ids` has an embedding of
/// the fake's model.
async fn embedded_within(h: &Harness, ids: &[Uuid], secs: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let done = h
            .svc
            .store()
            .index_entries(ids)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.embedding.model == "fake-concepts")
            .count();
        if done == ids.len() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{done} of {} memories embedded within {secs} s",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// When the embedder fails (down or overloaded), a write is not lost any
/// more (it was a 503, the memory dropped): the memory is stored without an
/// embedding and the answer says so; keyword search finds it at once,
/// semantic search does not. Once the model answers again the backfill,
/// woken by the write (not ten minutes later), embeds it and semantic search
/// finds it. A deduplicated write says whether the memory it returns has its
/// embedding yet.
pub async fn a_write_is_stored_without_its_embedding_while_the_embedder_fails(h: &Harness) {
    let ok = write(h, json!({"user_id": "u1", "content": "Alice likes jazz"}))
        .await
        .unwrap()
        .remove(0);
    assert!(!ok.embedding_pending);
    assert!(
        serde_json::to_value(&ok)
            .unwrap()
            .get("embedding_pending")
            .is_none(),
        "serialized only when true"
    );

    h.embedder.set_failing(true);
    let body = json!({"user_id": "u1", "content": "Erin rides her bicycle to the office"});
    let out = write(h, body.clone())
        .await
        .expect("stored although the embedder fails");
    assert_eq!(out.len(), 1);
    assert!(!out[0].deduplicated);
    assert!(out[0].embedding_pending);
    assert_eq!(
        serde_json::to_value(&out[0]).unwrap()["embedding_pending"],
        json!(true)
    );
    let m = out[0].memory.clone();
    assert_eq!(h.svc.get("u1", m.id).await.unwrap(), m);
    assert_eq!(
        keyword_ids(h, "u1", "bicycle").await,
        vec![m.id],
        "keyword search finds it at once"
    );
    assert!(!has_embedding(h, m.id).await, "stored without an embedding");
    assert!(
        !in_index(h, "cycling").await.contains(&m.id),
        "semantic search cannot find it yet"
    );
    // A search needs the model for its query.
    let e = search(
        h,
        json!({"user_id": "u1", "query": "cycling", "mode": "semantic"}),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, MemoryError::Embedding(_)), "{e:?}");
    // The same memory again: deduplicated onto it, which still has no embedding.
    let again = write(h, body.clone()).await.unwrap().remove(0);
    assert!(again.deduplicated);
    assert!(again.embedding_pending);
    assert_eq!(again.memory, m);

    h.embedder.set_failing(false);
    found_semantically(&h.svc, "cycling", m.id).await;
    let entries = h.svc.store().index_entries(&[m.id]).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].embedding.vector,
        FakeEmbedder::vector(&m.content)
    );
    // Embedded now: a duplicate says so.
    let third = write(h, body).await.unwrap().remove(0);
    assert!(third.deduplicated);
    assert!(!third.embedding_pending);
    // The backfill did not change the memory.
    assert_eq!(h.svc.get("u1", m.id).await.unwrap(), m);
    assert_eq!(
        ops(&h.svc.history("u1", m.id).await.unwrap()),
        vec!["create"]
    );
}

/// A batch written while the embedder fails stores every item (none is
/// lost, the batch is not refused), each pending, and the backfill embeds
/// them all once the model is back.
pub async fn a_batch_written_while_the_embedder_fails_stores_every_item(h: &Harness) {
    h.embedder.set_failing(true);
    let out = write(
        h,
        json!({"memories": [
            {"user_id": "u1", "content": "Gina drives a sedan"},
            {"user_id": "u1", "content": "Gina loves pizza for dinner"},
            {"user_id": "u1", "content": "Gina has a package shipped today"},
            {"user_id": "u1", "content": "Gina drives a sedan"}]}),
    )
    .await
    .expect("stored although the embedder fails");
    assert_eq!(out.len(), 4);
    for o in &out[..3] {
        assert!(!o.deduplicated);
        assert!(o.embedding_pending);
    }
    assert!(out[3].deduplicated, "a duplicate within the batch");
    assert!(out[3].embedding_pending);
    assert_eq!(out[3].memory.id, out[0].memory.id);
    let ids: Vec<Uuid> = out[..3].iter().map(|o| o.memory.id).collect();
    let page = list(h, json!({"user_id": "u1"})).await.unwrap();
    let listed: HashSet<Uuid> = page.memories.iter().map(|m| m.id).collect();
    assert_eq!(listed, ids.iter().copied().collect::<HashSet<_>>());
    let found: HashSet<Uuid> = search_ids(
        h,
        json!({"user_id": "u1", "query": "Gina", "mode": "keyword"}),
    )
    .await
    .into_iter()
    .collect();
    assert_eq!(found, listed, "keyword search finds every item");
    assert!(
        h.svc.store().index_entries(&ids).await.unwrap().is_empty(),
        "none has an embedding"
    );

    h.embedder.set_failing(false);
    embedded_within(h, &ids, 10).await;
    found_semantically(&h.svc, "automobile", ids[0]).await;
    found_semantically(&h.svc, "meal", ids[1]).await;
    found_semantically(&h.svc, "delivery", ids[2]).await;
}

/// An update of the content while the embedder fails is stored: the old
/// content's embedding is removed with it (semantic search no longer finds
/// the memory by what it used to say), and the backfill embeds the new
/// content once the model is back.
pub async fn an_update_while_the_embedder_fails_drops_the_old_embedding(h: &Harness) {
    let m = put(h, "u1", "Frank walks his dog every morning").await;
    found_semantically(&h.svc, "pets", m.id).await;

    h.embedder.set_failing(true);
    let new_content = "Frank plays jazz songs on his guitar";
    let upd = patch(h, "u1", m.id, json!({"content": new_content}))
        .await
        .expect("stored although the embedder fails");
    assert_eq!(upd.content, new_content);
    assert_eq!(h.svc.get("u1", m.id).await.unwrap(), upd);
    assert!(
        !has_embedding(h, m.id).await,
        "the old content's embedding is gone"
    );
    assert!(
        !in_index(h, "pets").await.contains(&m.id),
        "the index no longer returns it for its old content"
    );
    assert_eq!(keyword_ids(h, "u1", "jazz").await, vec![m.id]);
    assert!(keyword_ids(h, "u1", "dog").await.is_empty());

    h.embedder.set_failing(false);
    embedded_within(h, &[m.id], 10).await;
    let entries = h.svc.store().index_entries(&[m.id]).await.unwrap();
    assert_eq!(
        entries[0].embedding.vector,
        FakeEmbedder::vector(new_content),
        "the new content is embedded"
    );
    found_semantically(&h.svc, "music", m.id).await;
    let old = search(
        h,
        json!({"user_id": "u1", "query": "dog pets", "mode": "semantic", "min_score": 0.5}),
    )
    .await
    .unwrap();
    assert!(
        old.results.is_empty(),
        "semantic search for the old content: {:?}",
        old.results
            .iter()
            .map(|r| (r.memory.id, r.score))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        ops(&h.svc.history("u1", m.id).await.unwrap()),
        vec!["create", "update"]
    );
}

/// A PATCH whose content is the memory's content as it stands (with other
/// changes) does not touch the content: the embedder is not called and the
/// memory keeps its embedding, even while the embedder fails (the store
/// used to drop the embedding of any content it was given, so semantic
/// search lost the memory until the backfill embedded it again); the other
/// changes are applied.
pub async fn an_update_with_the_same_content_keeps_the_embedding_while_the_embedder_fails(
    h: &Harness,
) {
    let m = put(h, "u1", "Frank walks his dog every morning").await;
    found_semantically(&h.svc, "pets", m.id).await;
    let before = h.svc.store().index_entries(&[m.id]).await.unwrap();
    assert_eq!(before.len(), 1);

    h.embedder.set_failing(true);
    let calls = h.embedder.calls.load(Ordering::SeqCst);
    let upd = patch(
        h,
        "u1",
        m.id,
        json!({"content": m.content.clone(), "tags": ["walks"]}),
    )
    .await
    .expect("stored");
    assert_eq!(upd.content, m.content);
    assert_eq!(upd.tags, vec!["walks".to_string()]);
    assert_eq!(h.svc.get("u1", m.id).await.unwrap(), upd);
    assert_eq!(
        h.embedder.calls.load(Ordering::SeqCst),
        calls,
        "the same content is not embedded again"
    );
    let after = h.svc.store().index_entries(&[m.id]).await.unwrap();
    assert_eq!(after.len(), 1, "the memory keeps its embedding");
    assert_eq!(after[0].embedding, before[0].embedding);
    assert_eq!(after[0].tags, vec!["walks".to_string()], "{after:?}");
    assert!(
        in_index(h, "pets").await.contains(&m.id),
        "the index still returns it for its content"
    );
    assert_eq!(keyword_ids(h, "u1", "dog").await, vec![m.id]);
    // The same content alone changes nothing but the time of the update.
    let again = patch(h, "u1", m.id, json!({"content": m.content.clone()}))
        .await
        .expect("stored");
    assert_eq!(again.content, m.content);
    assert_eq!(again.tags, upd.tags);
    assert_eq!(h.svc.store().index_entries(&[m.id]).await.unwrap().len(), 1);
    assert_eq!(h.embedder.calls.load(Ordering::SeqCst), calls);

    h.embedder.set_failing(false);
    found_semantically(&h.svc, "pets", m.id).await;
    assert_eq!(
        ops(&h.svc.history("u1", m.id).await.unwrap()),
        vec!["create", "update", "update"]
    );
}

/// Only an embedding failure (`MemoryError::Embedding`) lets a write or an
/// update go on without the embedding: an embedder error of another kind
/// still fails it, and nothing is written.
pub async fn an_embedder_error_of_another_kind_still_fails_the_write(h: &Harness) {
    let m = put(h, "u1", "Hana likes cats").await;
    h.embedder.refuse.store(true, Ordering::SeqCst);
    let e = write(
        h,
        json!({"user_id": "u1", "content": "Hana drives to work"}),
    )
    .await
    .unwrap_err();
    assert_eq!(field(e), "content");
    let e = patch(h, "u1", m.id, json!({"content": "Hana likes dogs"}))
        .await
        .unwrap_err();
    assert_eq!(field(e), "content");
    h.embedder.refuse.store(false, Ordering::SeqCst);
    let page = list(h, json!({"user_id": "u1"})).await.unwrap();
    assert_eq!(page.memories, vec![m.clone()], "nothing was written");
    let entries = h.svc.store().index_entries(&[m.id]).await.unwrap();
    assert_eq!(entries.len(), 1, "the memory keeps its embedding");
    assert_eq!(
        entries[0].embedding.vector,
        FakeEmbedder::vector(&m.content)
    );
}

/// Every write stored without its embedding wakes the backfill, but a wake
/// does not cut short the backoff after a failure: while the embedder is
/// down the backfill calls it on its own schedule (after 1 s, then 2 s, ...),
/// not once per write. It embeds them all once the model is back.
pub async fn waking_the_backfill_does_not_cut_its_failure_backoff(h: &Harness) {
    h.embedder.set_failing(true);
    let before = h.embedder.calls.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    let mut ids = Vec::new();
    for i in 0..20 {
        let o = write(
            h,
            json!({"user_id": "u1", "content": format!("note {i}: Ivan rides his bike")}),
        )
        .await
        .unwrap()
        .remove(0);
        assert!(o.embedding_pending);
        ids.push(o.memory.id);
    }
    // Each write called the embedder once; the rest are the backfill's.
    let backfill_calls = || h.embedder.calls.load(Ordering::SeqCst) - before - ids.len();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while backfill_calls() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writes did not wake the backfill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = backfill_calls();
    let secs = started.elapsed().as_secs_f64();
    // Tries at 0, 1, 3, 7, ... s: at most 1 + log2(secs + 1), and one more
    // for the start-up pass.
    let most = 2 + (secs + 1.0).log2().floor() as usize;
    assert!(
        calls <= most,
        "{calls} backfill calls in {secs:.1} s for 20 wakes; at most {most} on the backoff's schedule"
    );

    h.embedder.set_failing(false);
    // The next try comes at the end of the current backoff.
    embedded_within(h, &ids, 20).await;
}
