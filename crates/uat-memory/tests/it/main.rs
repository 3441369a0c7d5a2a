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
    bad_input_names_the_field,
    index_rebuilds_from_sql_when_missing_and_catches_up_when_behind,
    local_change_follows_this_handles_writes_only,
);
