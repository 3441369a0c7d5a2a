//! The storage trait and its two implementations: SQLite (the default, an
//! embedded file) and PostgreSQL (several replicas on one database).
//!
//! SQL is the source of truth. Every write runs in one transaction that also
//! appends to `memory_history` (what changed) and `memory_changes` (a
//! sequence the vector index tails).

mod postgres;
mod sqlite;
mod sqlite_read;
#[cfg(test)]
mod test_rows;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::error::{MemoryError, Result};
use crate::input::{MAX_METADATA_BYTES, MAX_TAGS};
use crate::types::{
    Change, Embedding, ExactHits, Filter, HistoryEntry, IndexEntry, ListQuery, Memory,
    NewEmbedding, NewRow, Page, Patch, UnembeddedPage, WriteOutcome,
};
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use time::OffsetDateTime;
use uuid::Uuid;

/// What every store does. All reads skip expired memories; every query is
/// scoped by `user_id` except the index-maintenance ones (`changes_after`,
/// `index_entries`, `scan_index_entries`, `count`, and the backfill's
/// `unembedded` and `store_embeddings`), which never reach the API.
pub trait Store: Send + Sync {
    /// Writes `rows` in one transaction (all or nothing), stamping their
    /// `created_at` and `updated_at` inside it. Rows with `dedupe` return a
    /// live memory of the same user with the same content hash instead (one
    /// stored, or an earlier row of the batch), after applying their
    /// attributes to it ([`merge_duplicate`]): when that changes it, it is
    /// updated in the same transaction (new `updated_at`, an `update` history
    /// entry, an upsert in the change log); when not, nothing is written.
    /// Every outcome's `embedding_pending` is false (the service sets it).
    fn insert(&self, rows: Vec<NewRow>) -> impl Future<Output = Result<Vec<WriteOutcome>>> + Send;
    /// One live memory of `user_id`.
    fn get(&self, user_id: &str, id: Uuid) -> impl Future<Output = Result<Option<Memory>>> + Send;
    /// Applies `patch` to one live memory of `user_id`; `None` when there is
    /// none. A new content removes the old content's embedding and stores
    /// `patch.embedding` when there is one (see [`Patch::embedding`]).
    fn update(
        &self,
        user_id: &str,
        id: Uuid,
        patch: Patch,
    ) -> impl Future<Output = Result<Option<Memory>>> + Send;
    /// Deletes one memory of `user_id`; false when there was none.
    fn delete(&self, user_id: &str, id: Uuid) -> impl Future<Output = Result<bool>> + Send;
    /// Deletes every memory (and history) of `user_id` in one transaction; returns the count.
    fn delete_user(&self, user_id: &str) -> impl Future<Output = Result<u64>> + Send;
    /// One page, newest first, by keyset.
    fn list(&self, q: &ListQuery) -> impl Future<Output = Result<Page>> + Send;
    /// Full-text search (any of `terms`), best first, with a score in
    /// `[0, 1)`: `(w + r) / (n + 1)` for a memory holding `w` of the `n`
    /// terms, where `r` in `[0, 1)` ranks the memories holding as many
    /// (SQLite: `b / (1 + b)` of the BM25 score `b`; PostgreSQL: the same
    /// of `ts_rank`). So a memory holding more of the terms ranks higher on
    /// both stores, and `floor(score * (n + 1))` is how many it holds. Equal
    /// scores: the newest (greatest id) first. `terms` are those of
    /// [`keyword::terms`](crate::keyword::terms): a run of Chinese or
    /// Japanese characters gives its bigrams, so `n` counts them, and a
    /// memory holding the whole phrase holds all `n`.
    fn keyword(
        &self,
        filter: &Filter,
        terms: &[String],
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(Memory, f32)>>> + Send;
    /// [`Store::keyword`] without the rows: ids and scores (hybrid search
    /// fuses ids and fetches only the rows it returns).
    fn keyword_ids(
        &self,
        filter: &Filter,
        terms: &[String],
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(Uuid, f32)>>> + Send;
    /// The live memories among `ids` that match `filter`.
    fn fetch(
        &self,
        filter: &Filter,
        ids: &[Uuid],
    ) -> impl Future<Output = Result<Vec<Memory>>> + Send;
    /// History of one memory of `user_id`, oldest first, whether the memory
    /// is live, deleted or expired; `None` when `user_id` has no history for
    /// `id` (never theirs, or gone with every memory of the user).
    fn history(
        &self,
        user_id: &str,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<Vec<HistoryEntry>>>> + Send;
    /// Change-log records after `seq`, in order.
    fn changes_after(
        &self,
        seq: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Change>>> + Send;
    /// The last change-log position (0 when empty).
    fn last_change(&self) -> impl Future<Output = Result<i64>> + Send;
    /// The last change-log position committed through this handle (0 before
    /// its first write), kept in memory: what read-your-writes waits for
    /// without a query. Changes made through other handles are not counted.
    fn local_change(&self) -> i64;
    /// Exact semantic search for filters the vector index cannot answer
    /// (metadata): the `k` memories matching `filter` whose embedding of
    /// `query.model` is nearest to `query.vector` by cosine, best first, among
    /// the newest `scan` such memories. Scored as the rows stream in, off the
    /// async workers, without reading the memories themselves; `more` says
    /// whether more than `scan` matched.
    fn nearest_exact(
        &self,
        filter: &Filter,
        query: &Embedding,
        k: usize,
        scan: usize,
    ) -> impl Future<Output = Result<ExactHits>> + Send;
    /// Index entries for `ids` (rows that exist and carry an embedding).
    fn index_entries(&self, ids: &[Uuid]) -> impl Future<Output = Result<Vec<IndexEntry>>> + Send;
    /// Index entries in id order after `after`, for a rebuild.
    fn scan_index_entries(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<IndexEntry>>> + Send;
    /// Number of stored memories (expired included).
    fn count(&self) -> impl Future<Output = Result<u64>> + Send;
    /// One bounded step of the embedding backfill's scan: examines at most
    /// `scan` memories in id order after `after` (however few of them
    /// match) and returns the live ones without an embedding of `model`
    /// with `dimension` values (none, or another model's), and where the
    /// next step starts.
    fn unembedded(
        &self,
        model: &str,
        dimension: usize,
        after: Option<Uuid>,
        scan: usize,
    ) -> impl Future<Output = Result<UnembeddedPage>> + Send;
    /// Stores embeddings made by the backfill, in one transaction: each
    /// memory that is still live, still has the content hash its embedding
    /// was made for, and still lacks an embedding of that model and length
    /// gets it (replacing another model's), with an `upsert` in the change
    /// log, so every index picks it up as it picks up a write. The memory
    /// itself is unchanged (no history entry, same `updated_at`). Returns how
    /// many were stored: none for a memory changed or deleted meanwhile, and
    /// none the second time (replicas backfilling at once store each
    /// embedding once; on PostgreSQL a memory locked by another writer is
    /// skipped, left to a later pass).
    fn store_embeddings(&self, rows: Vec<NewEmbedding>)
    -> impl Future<Output = Result<u64>> + Send;
    /// Deletes up to `limit` memories whose expiry has passed, oldest expiry
    /// first, in one transaction: each gets an `expire` entry in its history
    /// and a delete in the change log (so every index drops it). Returns how
    /// many went.
    fn purge_expired(&self, limit: usize) -> impl Future<Output = Result<u64>> + Send;
    /// Removes change-log records, oldest first and at most `limit`: the
    /// leading run of records written before `before` with `seq <= through`.
    /// The newest record always stays (the log's position survives). Raises
    /// the horizon to the last position removed. Returns how many went.
    fn prune_changes(
        &self,
        before: OffsetDateTime,
        through: i64,
        limit: usize,
    ) -> impl Future<Output = Result<u64>> + Send;
    /// The highest change-log position ever pruned (0 when none): an index
    /// that has applied less than this missed changes and must resync.
    fn change_horizon(&self) -> impl Future<Output = Result<i64>> + Send;
}

/// Which leading records of the log `rows` (`(seq, at)` in `seq` order, the
/// oldest ones) may go: the last `seq` of the run that is older than
/// `before`, at most `through` and below `newest`.
pub(crate) fn prune_cut<T: PartialOrd>(
    rows: &[(i64, T)],
    before: &T,
    through: i64,
    newest: i64,
) -> Option<i64> {
    rows.iter()
        .take_while(|(seq, at)| at < before && *seq <= through && *seq < newest)
        .last()
        .map(|(seq, _)| *seq)
}

/// Either store, chosen by the database URL.
pub enum AnyStore {
    /// Embedded SQLite.
    Sqlite(SqliteStore),
    /// PostgreSQL.
    Postgres(PgStore),
}

impl AnyStore {
    /// Opens (and migrates) the store for `url` (`sqlite://...` or `postgres://...`).
    pub async fn open(url: &str, max_connections: u32) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(AnyStore::Postgres(
                PgStore::open(url, max_connections).await?,
            ))
        } else {
            Ok(AnyStore::Sqlite(
                SqliteStore::open(url, max_connections).await?,
            ))
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            AnyStore::Sqlite(_) => "sqlite",
            AnyStore::Postgres(_) => "postgres",
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $e.await,
            AnyStore::Postgres($s) => $e.await,
        }
    };
}

impl Store for AnyStore {
    async fn insert(&self, rows: Vec<NewRow>) -> Result<Vec<WriteOutcome>> {
        delegate!(self, s => s.insert(rows))
    }
    async fn get(&self, user_id: &str, id: Uuid) -> Result<Option<Memory>> {
        delegate!(self, s => s.get(user_id, id))
    }
    async fn update(&self, user_id: &str, id: Uuid, patch: Patch) -> Result<Option<Memory>> {
        delegate!(self, s => s.update(user_id, id, patch))
    }
    async fn delete(&self, user_id: &str, id: Uuid) -> Result<bool> {
        delegate!(self, s => s.delete(user_id, id))
    }
    async fn delete_user(&self, user_id: &str) -> Result<u64> {
        delegate!(self, s => s.delete_user(user_id))
    }
    async fn list(&self, q: &ListQuery) -> Result<Page> {
        delegate!(self, s => s.list(q))
    }
    async fn keyword(
        &self,
        filter: &Filter,
        terms: &[String],
        limit: usize,
    ) -> Result<Vec<(Memory, f32)>> {
        delegate!(self, s => s.keyword(filter, terms, limit))
    }
    async fn keyword_ids(
        &self,
        filter: &Filter,
        terms: &[String],
        limit: usize,
    ) -> Result<Vec<(Uuid, f32)>> {
        delegate!(self, s => s.keyword_ids(filter, terms, limit))
    }
    async fn fetch(&self, filter: &Filter, ids: &[Uuid]) -> Result<Vec<Memory>> {
        delegate!(self, s => s.fetch(filter, ids))
    }
    async fn history(&self, user_id: &str, id: Uuid) -> Result<Option<Vec<HistoryEntry>>> {
        delegate!(self, s => s.history(user_id, id))
    }
    async fn changes_after(&self, seq: i64, limit: usize) -> Result<Vec<Change>> {
        delegate!(self, s => s.changes_after(seq, limit))
    }
    async fn last_change(&self) -> Result<i64> {
        delegate!(self, s => s.last_change())
    }
    fn local_change(&self) -> i64 {
        match self {
            AnyStore::Sqlite(s) => s.local_change(),
            AnyStore::Postgres(s) => s.local_change(),
        }
    }
    async fn nearest_exact(
        &self,
        filter: &Filter,
        query: &Embedding,
        k: usize,
        scan: usize,
    ) -> Result<ExactHits> {
        delegate!(self, s => s.nearest_exact(filter, query, k, scan))
    }
    async fn index_entries(&self, ids: &[Uuid]) -> Result<Vec<IndexEntry>> {
        delegate!(self, s => s.index_entries(ids))
    }
    async fn scan_index_entries(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        delegate!(self, s => s.scan_index_entries(after, limit))
    }
    async fn count(&self) -> Result<u64> {
        delegate!(self, s => s.count())
    }
    async fn unembedded(
        &self,
        model: &str,
        dimension: usize,
        after: Option<Uuid>,
        scan: usize,
    ) -> Result<UnembeddedPage> {
        delegate!(self, s => s.unembedded(model, dimension, after, scan))
    }
    async fn store_embeddings(&self, rows: Vec<NewEmbedding>) -> Result<u64> {
        delegate!(self, s => s.store_embeddings(rows))
    }
    async fn purge_expired(&self, limit: usize) -> Result<u64> {
        delegate!(self, s => s.purge_expired(limit))
    }
    async fn prune_changes(
        &self,
        before: OffsetDateTime,
        through: i64,
        limit: usize,
    ) -> Result<u64> {
        delegate!(self, s => s.prune_changes(before, through, limit))
    }
    async fn change_horizon(&self) -> Result<i64> {
        delegate!(self, s => s.change_horizon())
    }
}

/// Applies a patch to a memory (the stores call this inside their transaction).
pub(crate) fn apply_patch(old: &Memory, patch: &Patch, now: time::OffsetDateTime) -> Memory {
    let mut m = old.clone();
    if let Some(c) = &patch.content {
        m.content.clone_from(c);
    }
    if let Some(t) = &patch.tags {
        m.tags.clone_from(t);
    }
    if let Some(md) = &patch.metadata {
        m.metadata.clone_from(md);
    }
    if let Some(e) = patch.expires_at {
        m.expires_at = e;
    }
    m.updated_at = now;
    m
}

/// Applies what a deduplicated write `from` (row `row` of its batch) says to
/// the memory `into` it duplicates: its tags are added, its metadata keys set
/// (its values win), its kind and expiry replace the memory's when it gives
/// them. Returns whether `into` changed. The result must still fit the limits
/// of one write (tags, metadata size), or the write is refused, naming the field.
pub(crate) fn merge_duplicate(into: &mut Memory, from: &Memory, row: usize) -> Result<bool> {
    let mut changed = false;
    for t in &from.tags {
        if !into.tags.contains(t) {
            into.tags.push(t.clone());
            changed = true;
        }
    }
    if changed {
        into.tags.sort();
        if into.tags.len() > MAX_TAGS {
            return Err(MemoryError::invalid(
                format!("memories[{row}].tags"),
                format!(
                    "the memory this write duplicates would hold {} tags; at most {MAX_TAGS}",
                    into.tags.len()
                ),
            ));
        }
    }
    let mut metadata_changed = false;
    for (k, v) in &from.metadata {
        if into.metadata.get(k) != Some(v) {
            into.metadata.insert(k.clone(), v.clone());
            metadata_changed = true;
        }
    }
    if metadata_changed {
        let size = serde_json::to_string(&into.metadata)
            .map(|s| s.len())
            .unwrap_or(usize::MAX);
        if size > MAX_METADATA_BYTES {
            return Err(MemoryError::invalid(
                format!("memories[{row}].metadata"),
                format!(
                    "merged into the memory this write duplicates it would be larger than {MAX_METADATA_BYTES} bytes"
                ),
            ));
        }
        changed = true;
    }
    if from.kind.is_some() && into.kind != from.kind {
        into.kind.clone_from(&from.kind);
        changed = true;
    }
    if from.expires_at.is_some() && into.expires_at != from.expires_at {
        into.expires_at = from.expires_at;
        changed = true;
    }
    Ok(changed)
}

/// Where the outcome of one row of a write comes from (see [`resolve_duplicates`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The row is inserted (with the attributes of later duplicates in the batch).
    New(usize),
    /// A stored memory, `Resolved::stored[j]`.
    Stored(usize),
    /// A duplicate of the earlier row `i` of the batch (a `New` one).
    Batch(usize),
}

/// How the rows of a write resolve against the live memories and each other.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// Per row.
    pub(crate) slots: Vec<Slot>,
    /// Stored memories the batch duplicates: as read, and with the batch's
    /// attributes applied (equal when nothing changes).
    pub(crate) stored: Vec<(Memory, Memory)>,
}

/// Resolves the duplicates of a batch: each row with `dedupe` whose (user,
/// content hash) is in `live` (the oldest live memory of each) or earlier in
/// the batch merges its attributes into that memory ([`merge_duplicate`]);
/// the others are new. Rows merged into an earlier row change `rows` in place.
pub(crate) fn resolve_duplicates(
    rows: &mut [NewRow],
    mut live: HashMap<(String, String), Memory>,
) -> Result<Resolved> {
    let mut slots = Vec::with_capacity(rows.len());
    let mut stored: Vec<(Memory, Memory)> = Vec::new();
    let mut stored_at: HashMap<(String, String), usize> = HashMap::new();
    let mut first: HashMap<(String, String), usize> = HashMap::new();
    for i in 0..rows.len() {
        let key = (rows[i].memory.user_id.clone(), rows[i].content_hash.clone());
        if rows[i].dedupe {
            if let Some(&j) = stored_at.get(&key) {
                merge_duplicate(&mut stored[j].1, &rows[i].memory, i)?;
                slots.push(Slot::Stored(j));
                continue;
            }
            if let Some(old) = live.remove(&key) {
                let mut merged = old.clone();
                merge_duplicate(&mut merged, &rows[i].memory, i)?;
                stored_at.insert(key, stored.len());
                slots.push(Slot::Stored(stored.len()));
                stored.push((old, merged));
                continue;
            }
            if let Some(&j) = first.get(&key) {
                let (before, from) = rows.split_at_mut(i);
                merge_duplicate(&mut before[j].memory, &from[0].memory, i)?;
                slots.push(Slot::Batch(j));
                continue;
            }
        }
        first.entry(key).or_insert(i);
        slots.push(Slot::New(i));
    }
    Ok(Resolved { slots, stored })
}

/// The `k` best of a stream of stored embeddings by cosine to a query
/// (exact search, see [`Store::nearest_exact`]); holds only the best `k`.
pub(crate) struct Nearest {
    query: Vec<f32>,
    norm: f32,
    model: String,
    k: usize,
    best: BinaryHeap<Reverse<Scored>>,
    /// The embedding being scored, decoded (reused for every row).
    scratch: Vec<f32>,
}

/// Euclidean norm (SIMD, through uat-vector's dot product).
pub(crate) fn norm(v: &[f32]) -> f32 {
    uat_vector::distance::dot(v, v).sqrt()
}

/// Cosine similarity of `a` and `b`, given `b`'s norm; `None` for vectors
/// of different lengths, a zero vector or a non-finite result.
pub(crate) fn cosine_with(a: &[f32], b: &[f32], b_norm: f32) -> Option<f32> {
    if a.len() != b.len() {
        return None;
    }
    let n = norm(a) * b_norm;
    (n > 0.0 && n.is_finite()).then(|| uat_vector::distance::dot(a, b) / n)
}

/// A score, ordered by value then id (a total order for the heap).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Scored(f32, Uuid);

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .total_cmp(&other.0)
            .then_with(|| self.1.cmp(&other.1))
    }
}

impl Nearest {
    /// Ranks against `query`, keeping the best `k`.
    pub(crate) fn new(query: &Embedding, k: usize) -> Self {
        Nearest {
            norm: norm(&query.vector),
            query: query.vector.clone(),
            model: query.model.clone(),
            k,
            best: BinaryHeap::with_capacity(k + 1),
            scratch: Vec::with_capacity(query.vector.len()),
        }
    }

    /// Scores one stored embedding (little-endian f32 `bytes` made by
    /// `model`); another model's, another length or a zero vector is
    /// skipped, as the vector index would not hold it either.
    pub(crate) fn offer(&mut self, id: Uuid, model: &str, bytes: &[u8]) {
        if self.k == 0 || model != self.model || bytes.len() != self.query.len() * 4 {
            return;
        }
        self.scratch.clear();
        self.scratch.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        let Some(score) = cosine_with(&self.scratch, &self.query, self.norm) else {
            return;
        };
        let s = Scored(score, id);
        if self.best.len() < self.k {
            self.best.push(Reverse(s));
        } else if self.best.peek().is_some_and(|w| s > w.0) {
            self.best.pop();
            self.best.push(Reverse(s));
        }
    }

    /// The best `k`, best first.
    pub(crate) fn into_hits(self) -> Vec<(Uuid, f32)> {
        let mut v: Vec<Scored> = self.best.into_iter().map(|r| r.0).collect();
        v.sort_by(|a, b| b.cmp(a));
        v.into_iter().map(|s| (s.1, s.0)).collect()
    }
}

/// The JSON kept in the history table.
pub(crate) fn history_json(m: &Memory) -> Result<String> {
    serde_json::to_string(m).map_err(|e| crate::error::MemoryError::Corrupt(e.to_string()))
}

/// Largest number of ids bound in one `IN (...)` list.
pub(crate) const MAX_IN_LIST: usize = 500;

/// The ids to ask SQL for next when the live rows of the first `want` of
/// `ranked` are wanted, `asked` ids have been asked for and `got` rows came
/// back: the first `want`, then, only when SQL dropped some (a metadata
/// filter, a change the index has not applied yet), all the rest.
pub(crate) fn next_ids(ranked: &[Uuid], asked: usize, got: usize, want: usize) -> Option<&[Uuid]> {
    if asked >= ranked.len() || got >= want {
        return None;
    }
    let end = if asked == 0 { want } else { ranked.len() };
    Some(&ranked[asked..end.min(ranked.len())])
}

#[cfg(test)]
mod next_ids_tests {
    use super::next_ids;
    use uuid::Uuid;

    #[test]
    fn asks_for_the_first_want_then_the_rest_only_when_rows_are_missing() {
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        assert_eq!(next_ids(&ids, 0, 0, 2), Some(&ids[..2]));
        assert_eq!(next_ids(&ids, 2, 2, 2), None, "all wanted rows came back");
        assert_eq!(next_ids(&ids, 2, 1, 2), Some(&ids[2..]), "one was dropped");
        assert_eq!(next_ids(&ids, 5, 3, 4), None, "nothing left to ask");
        assert_eq!(
            next_ids(&ids, 0, 0, 9),
            Some(&ids[..]),
            "want beyond the list"
        );
        assert_eq!(next_ids(&[], 0, 0, 3), None);
    }
}

#[cfg(test)]
mod prune_cut_tests {
    use super::prune_cut;

    #[test]
    fn cuts_the_leading_run_that_is_old_enough_below_the_limits() {
        let rows = [(1, 10), (2, 11), (4, 12), (5, 30), (6, 13)];
        // Stops at the first record too new, even if later ones are old.
        assert_eq!(prune_cut(&rows, &20, i64::MAX, 100), Some(4));
        // Never past what the local indexes applied.
        assert_eq!(prune_cut(&rows, &20, 2, 100), Some(2));
        assert_eq!(prune_cut(&rows, &20, 0, 100), None);
        // Never the newest record.
        assert_eq!(prune_cut(&rows[..2], &20, i64::MAX, 2), Some(1));
        assert_eq!(prune_cut(&rows[..1], &20, i64::MAX, 1), None);
        // Nothing old enough.
        assert_eq!(prune_cut(&rows, &5, i64::MAX, 100), None);
        assert_eq!(prune_cut::<i64>(&[], &5, i64::MAX, 100), None);
    }
}

#[cfg(test)]
mod dedupe_tests {
    use super::*;
    use serde_json::json;

    fn memory(user: &str, tags: &[&str], metadata: serde_json::Value) -> Memory {
        let at = crate::types::now();
        Memory {
            id: Uuid::now_v7(),
            user_id: user.into(),
            agent_id: None,
            run_id: None,
            kind: None,
            content: "c".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            metadata: metadata.as_object().cloned().unwrap_or_default(),
            created_at: at,
            updated_at: at,
            expires_at: None,
        }
    }

    #[test]
    fn merging_adds_tags_sets_keys_and_replaces_what_is_given() {
        let mut into = memory("u", &["b", "d"], json!({"a": 1, "b": 2}));
        let before = into.clone();
        let mut from = memory("u", &["a", "d"], json!({"b": 3, "c": 4}));
        from.kind = Some("fact".into());
        from.expires_at = Some(before.created_at);
        assert!(merge_duplicate(&mut into, &from, 0).unwrap());
        assert_eq!(into.tags, vec!["a", "b", "d"]);
        assert_eq!(
            serde_json::Value::Object(into.metadata.clone()),
            json!({"a": 1, "b": 3, "c": 4})
        );
        assert_eq!(into.kind.as_deref(), Some("fact"));
        assert_eq!(into.expires_at, Some(before.created_at));
        assert_eq!((into.id, into.updated_at), (before.id, before.updated_at));
        // Again, or with nothing given: no change.
        let merged = into.clone();
        assert!(!merge_duplicate(&mut into, &from, 0).unwrap());
        assert!(!merge_duplicate(&mut into, &memory("u", &[], json!({})), 0).unwrap());
        assert_eq!(into, merged);
    }

    #[test]
    fn a_merge_past_the_limits_names_the_row_and_field() {
        let many: Vec<String> = (0..MAX_TAGS).map(|i| format!("t{i:03}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut into = memory("u", &refs, json!({}));
        let e = merge_duplicate(&mut into, &memory("u", &["zz"], json!({})), 3).unwrap_err();
        assert!(
            matches!(&e, MemoryError::Invalid { field, .. } if field == "memories[3].tags"),
            "{e:?}"
        );
        let big = "x".repeat(MAX_METADATA_BYTES / 2 + 1);
        let mut into = memory("u", &[], json!({ "a": big }));
        let e = merge_duplicate(&mut into, &memory("u", &[], json!({ "b": big })), 0).unwrap_err();
        assert!(
            matches!(&e, MemoryError::Invalid { field, .. } if field == "memories[0].metadata"),
            "{e:?}"
        );
    }

    #[test]
    fn duplicates_resolve_to_the_stored_memory_then_the_first_of_the_batch() {
        let row = |user: &str, hash: &str, tag: &str, dedupe: bool| NewRow {
            memory: memory(user, &[tag], json!({})),
            content_hash: hash.into(),
            dedupe,
            embedding: None,
        };
        let stored = memory("u", &["s"], json!({}));
        let live: HashMap<(String, String), Memory> =
            [(("u".to_string(), "h1".to_string()), stored.clone())].into();
        let mut rows = vec![
            row("u", "h1", "a", true),
            row("u", "h2", "b", false),
            row("u", "h2", "c", true),
            row("v", "h1", "d", true),
            row("u", "h1", "e", true),
            row("u", "h1", "f", false),
        ];
        let r = resolve_duplicates(&mut rows, live).unwrap();
        assert_eq!(
            r.slots,
            vec![
                Slot::Stored(0),
                Slot::New(1),
                Slot::Batch(1),
                Slot::New(3),
                Slot::Stored(0),
                Slot::New(5),
            ]
        );
        assert_eq!(r.stored.len(), 1);
        assert_eq!(r.stored[0].0, stored);
        assert_eq!(r.stored[0].1.tags, vec!["a", "e", "s"]);
        assert_eq!(
            rows[1].memory.tags,
            vec!["b", "c"],
            "merged into the first row"
        );
        assert_eq!(rows[3].memory.tags, vec!["d"]);
    }

    #[test]
    fn nearest_keeps_the_best_k_by_cosine_and_skips_what_the_index_would() {
        let query = Embedding {
            model: "m".into(),
            vector: vec![1.0, 0.0],
        };
        let bytes = |v: [f32; 2]| crate::types::vector_to_bytes(&v);
        let ids: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
        let mut n = Nearest::new(&query, 2);
        n.offer(ids[0], "m", &bytes([0.0, 1.0])); // 0
        n.offer(ids[1], "m", &bytes([1.0, 1.0])); // 0.71
        n.offer(ids[2], "m", &bytes([2.0, 0.0])); // 1
        n.offer(ids[3], "other", &bytes([1.0, 0.0]));
        n.offer(ids[4], "m", &bytes([0.0, 0.0]));
        n.offer(
            ids[5],
            "m",
            &crate::types::vector_to_bytes(&[1.0, 0.0, 0.0]),
        );
        let hits = n.into_hits();
        assert_eq!(
            hits.iter().map(|h| h.0).collect::<Vec<_>>(),
            vec![ids[2], ids[1]]
        );
        assert!((hits[0].1 - 1.0).abs() < 1e-6);
        assert!((hits[1].1 - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert!(Nearest::new(&query, 0).into_hits().is_empty());
    }
}
