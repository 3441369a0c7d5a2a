//! Rows, patches and searches shared by the stores' own tests.

use super::Store;
use crate::keyword::user_key;
use crate::types::{Embedding, Filter, Memory, NewRow, Patch, now};
use uuid::Uuid;

/// A new memory of `user` (deduplicated by `hash`), with an embedding of
/// model `m` when `vector` is given.
pub(super) fn row(user: &str, content: &str, hash: &str, vector: Option<Vec<f32>>) -> NewRow {
    let at = now();
    NewRow {
        memory: Memory {
            id: Uuid::now_v7(),
            user_id: user.into(),
            agent_id: None,
            run_id: None,
            kind: None,
            content: content.into(),
            tags: Vec::new(),
            metadata: serde_json::Map::new(),
            created_at: at,
            updated_at: at,
            expires_at: None,
        },
        content_hash: hash.into(),
        dedupe: true,
        embedding: vector.map(|vector| Embedding {
            model: "m".into(),
            vector,
        }),
    }
}

/// A patch replacing the content (without an embedding).
pub(super) fn content_patch(content: &str) -> Patch {
    Patch {
        content: Some(content.into()),
        content_hash: Some(format!("patched {content}")),
        ..Patch::default()
    }
}

/// Ids of `user`'s memories holding any of `terms`, best first.
pub(super) async fn keyword_ids(store: &impl Store, user: &str, terms: &[&str]) -> Vec<Uuid> {
    let filter = Filter {
        user_id: user.into(),
        ..Filter::default()
    };
    let terms: Vec<String> = terms.iter().map(|t| t.to_string()).collect();
    store
        .keyword(&filter, &terms, 10)
        .await
        .expect("keyword search")
        .into_iter()
        .map(|(m, _)| m.id)
        .collect()
}

/// How many memories [`Store::scan_index_entries`] returns (each has an embedding).
pub(super) async fn embedded(store: &impl Store) -> usize {
    store
        .scan_index_entries(None, 100)
        .await
        .expect("scan")
        .len()
}

/// Memories of alice as `(content, terms)`, with the terms made before
/// `keyword::fold` took accents off (see [`assert_refolded`]).
pub(super) fn unfolded_terms() -> [(&'static str, String); 3] {
    let key = user_key("alice");
    [
        ("the ﬁnal café", format!("{key}ﬁnal {key}café")),
        ("ένας καφές", format!("{key}ένας {key}καφές")),
        ("plain words", format!("{key}plain {key}words")),
    ]
}

/// That the memories `ids` written with [`unfolded_terms`], in that order,
/// are found by their folded words, and no longer by the old terms.
pub(super) async fn assert_refolded(store: &impl Store, ids: &[Uuid]) {
    assert_eq!(keyword_ids(store, "alice", &["final"]).await, vec![ids[0]]);
    assert_eq!(keyword_ids(store, "alice", &["cafe"]).await, vec![ids[0]]);
    assert_eq!(keyword_ids(store, "alice", &["καφες"]).await, vec![ids[1]]);
    assert_eq!(keyword_ids(store, "alice", &["plain"]).await, vec![ids[2]]);
    assert!(
        keyword_ids(store, "alice", &["ﬁnal"]).await.is_empty(),
        "the old terms are gone"
    );
}

/// Memories of alice as `(content, terms)`, with the terms made before
/// runs of CJK characters made bigrams (see [`assert_cjk_split`]): one term
/// per run, and the kana's voiced sound marks folded off. The last two
/// hold no CJK character and were given a term their content does not make,
/// `sentinel`: the migration leaves them as they are. The sixth holds no
/// character of `keyword::CJK_RANGES` itself, but folds into CJK ones (the
/// Kangxi radicals `⼈⼝` into `人口`, population, the circled `㊤` into
/// `上`), as its old term says: it is indexed again too.
pub(super) fn unsplit_cjk_terms() -> [(&'static str, String); 6] {
    let key = user_key("alice");
    [
        (
            "私は東京に住んでいます",
            format!("{key}私は東京に住んています"),
        ),
        ("我住在北京市中心", format!("{key}我住在北京市中心")),
        ("ｶﾞｲﾄﾞブック", format!("{key}カイトフック")),
        ("plain words", format!("{key}sentinel")),
        ("한국어 café", format!("{key}sentinel")),
        ("⼈⼝㊤", format!("{key}人口上")),
    ]
}

/// Ids of alice's memories found by keyword search for `query` (through
/// `keyword::terms`), best first.
pub(super) async fn query_ids(store: &impl Store, query: &str) -> Vec<Uuid> {
    let terms = crate::keyword::terms(query);
    let terms: Vec<&str> = terms.iter().map(String::as_str).collect();
    keyword_ids(store, "alice", &terms).await
}

/// That the memories `ids` written with [`unsplit_cjk_terms`], in that
/// order, are found by words inside their CJK runs and by one character,
/// no longer by their old terms, and that the others were left alone.
pub(super) async fn assert_cjk_split(store: &impl Store, ids: &[Uuid]) {
    assert_eq!(query_ids(store, "東京").await, vec![ids[0]]);
    assert_eq!(query_ids(store, "住んでいます").await, vec![ids[0]]);
    assert_eq!(query_ids(store, "北京").await, vec![ids[1]]);
    assert_eq!(query_ids(store, "ガイド").await, vec![ids[2]]);
    assert_eq!(query_ids(store, "ｶﾞｲﾄﾞ").await, vec![ids[2]]);
    let mut one_char = query_ids(store, "京").await;
    one_char.sort();
    assert_eq!(one_char, vec![ids[0], ids[1]]);
    assert!(
        keyword_ids(store, "alice", &["私は東京に住んています"])
            .await
            .is_empty(),
        "the old terms are gone"
    );
    assert!(query_ids(store, "カイト").await.is_empty());
    assert_eq!(query_ids(store, "人口").await, vec![ids[5]]);
    assert_eq!(query_ids(store, "上").await, vec![ids[5]]);
    assert_eq!(query_ids(store, "⼝").await, vec![ids[5]]);
    assert!(
        keyword_ids(store, "alice", &["人口上"]).await.is_empty(),
        "the folded memory's old term is gone"
    );
    let mut untouched = query_ids(store, "sentinel").await;
    untouched.sort();
    assert_eq!(untouched, vec![ids[3], ids[4]], "no CJK: not indexed again");
    assert!(query_ids(store, "plain").await.is_empty());
}
