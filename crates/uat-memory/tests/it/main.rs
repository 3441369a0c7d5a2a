//! uat-memory integration tests: one behaviour suite run against SQLite (a
//! temporary file) and a real PostgreSQL (`UAT_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`, one fresh schema per test).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]
mod common;
mod postgres_only;
mod suite;

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = crate::common::Harness::sqlite().await;
                    crate::suite::$name(&h).await;
                    h.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(h) = crate::common::Harness::postgres().await else { return };
                    crate::suite::$name(&h).await;
                    h.cleanup().await;
                }
            )*
        }
    };
}

on_both_stores!(
    crud_roundtrip,
    times_are_kept_to_the_microsecond,
    patch_content_reembeds_and_keeps_history,
    batch_is_all_or_nothing_and_names_the_item,
    batch_over_the_limit_is_refused,
    dedupe_returns_the_existing_memory,
    dedupe_false_stores_a_duplicate,
    keyset_pagination_has_no_gaps_or_repeats_under_concurrent_inserts,
    tag_any_and_all,
    time_ranges_kind_and_agent_filters,
    expired_memories_never_come_back,
    users_are_isolated_on_every_route,
    delete_user_leaves_others_intact_and_never_returns_in_search,
    paraphrase_found_by_semantic_and_hybrid_missed_by_keyword,
    rare_token_found_by_keyword_and_hybrid_missed_by_semantic,
    metadata_filter_in_search,
    metadata_filter_finds_memories_far_from_the_query,
    bad_input_names_the_field,
    index_rebuilds_from_sql_when_missing_and_catches_up_when_behind,
    local_change_follows_this_handles_writes_only,
    purge_deletes_expired_memories_and_the_index_drops_them,
    a_pruned_change_log_resyncs_or_rebuilds_a_stale_index,
    memories_written_without_a_model_are_embedded_once_it_is_back,
    memories_embedded_by_another_model_are_reembedded_with_the_current_one,
    backfill_stores_embeddings_only_for_unchanged_live_memories_once,
    the_backfill_retries_after_the_embedder_fails,
    dedupe_applies_the_new_attributes_to_the_existing_memory,
    created_at_is_the_commit_time_not_the_arrival_time,
    a_forged_cursor_out_of_range_is_invalid,
    hybrid_min_score_applies_to_the_semantic_similarity,
    history_outlives_delete_and_expiry,
    nearest_exact_ranks_the_filtered_memories_by_cosine,
    metadata_filters_compare_json_values_alike_on_both_stores,
    concurrent_duplicates_each_apply_their_attributes,
    tenants_with_the_same_user_id_are_isolated_on_every_route,
    nul_characters_are_refused_naming_the_field,
    keyword_scores_rank_by_words_matched_alike_on_both_stores,
    accents_are_folded_alike_on_both_stores,
    cjk_words_are_found_inside_sentences_alike_on_both_stores,
    kana_voicing_and_width_alike_on_both_stores,
    write_answers_give_times_in_utc_as_reads_do,
    list_tags_are_trimmed_and_may_repeat,
    a_write_is_stored_without_its_embedding_while_the_embedder_fails,
    a_batch_written_while_the_embedder_fails_stores_every_item,
    an_update_while_the_embedder_fails_drops_the_old_embedding,
    an_update_with_the_same_content_keeps_the_embedding_while_the_embedder_fails,
    an_embedder_error_of_another_kind_still_fails_the_write,
    waking_the_backfill_does_not_cut_its_failure_backoff,
);

/// The SQLite store merges its full-text index after a tenth of the table
/// (at least 1,000 rows) was written since the last merge, and keyword search
/// answers the same before and after. Writes go through a second store on the
/// same file, whose counter no background task touches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_merges_the_keyword_index_after_enough_writes() {
    use serde_json::json;
    use uat_memory::{Memory, NewRow, SqliteStore, Store, now};
    let h = common::Harness::sqlite().await;
    let common::Backend::Sqlite { url } = &h.backend else {
        panic!("an SQLite harness");
    };
    let store = SqliteStore::open(url, 2).await.unwrap();
    assert!(!store.maintain(0).await.unwrap(), "nothing was written");
    for b in 0..3 {
        let at = now();
        let rows = (0..400)
            .map(|i| NewRow {
                content_hash: format!("{b}-{i}"),
                dedupe: true,
                embedding: None,
                memory: Memory {
                    id: uuid::Uuid::now_v7(),
                    user_id: format!("u{}", i % 10),
                    agent_id: None,
                    run_id: None,
                    kind: None,
                    content: format!(
                        "batch {b} item {i} {}",
                        if i % 7 == 0 { "zebra" } else { "horse" }
                    ),
                    tags: Vec::new(),
                    metadata: serde_json::Map::new(),
                    created_at: at,
                    updated_at: at,
                    expires_at: None,
                },
            })
            .collect();
        assert_eq!(store.insert(rows).await.unwrap().len(), 400);
    }
    let search = || async {
        let s: uat_memory::SearchInput = serde_json::from_value(
            json!({"user_id": "u7", "query": "zebra", "mode": "keyword", "top_k": 100}),
        )
        .unwrap();
        let r = h
            .svc
            .search(&s.validate(h.svc.limits()).unwrap())
            .await
            .unwrap();
        let mut ids: Vec<_> = r.results.iter().map(|x| x.memory.id).collect();
        ids.sort();
        ids
    };
    let before = search().await;
    // Users u7 hold items 7, 17, ...: those with i % 7 == 0 say zebra.
    assert_eq!(
        before.len(),
        3 * (0..400).filter(|i| i % 10 == 7 && i % 7 == 0).count()
    );
    // 1,200 rows written: over 1,000 and over a tenth of 1,200.
    assert!(
        !store.maintain(1_000_000).await.unwrap(),
        "under a tenth of a big table"
    );
    assert!(store.maintain(1200).await.unwrap(), "1,200 writes merge");
    assert!(
        !store.maintain(1200).await.unwrap(),
        "counted from the merge"
    );
    assert_eq!(search().await, before);
    // A few writes, then a pause: merged on the second call without writes
    // in between, once the last merge is 20 of its durations ago.
    let at = now();
    let row = NewRow {
        content_hash: "late".into(),
        dedupe: true,
        embedding: None,
        memory: Memory {
            id: uuid::Uuid::now_v7(),
            user_id: "u7".into(),
            agent_id: None,
            run_id: None,
            kind: None,
            content: "a late zebra".into(),
            tags: Vec::new(),
            metadata: serde_json::Map::new(),
            created_at: at,
            updated_at: at,
            expires_at: None,
        },
    };
    store.insert(vec![row]).await.unwrap();
    assert!(!store.maintain(1201).await.unwrap(), "still writing");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(store.maintain(1201).await.unwrap(), "writing paused");
    assert!(!store.maintain(1201).await.unwrap(), "nothing new");
    assert_eq!(search().await.len(), before.len() + 1);
    h.cleanup().await;
}
