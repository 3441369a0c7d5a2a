//! Rows, patches and searches shared by the stores' own tests.

use super::Store;
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
