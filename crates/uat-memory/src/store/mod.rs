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

use crate::error::Result;
use crate::types::{
    Change, Filter, HistoryEntry, IndexEntry, ListQuery, Memory, NewEmbedding, NewRow, Page, Patch,
    UnembeddedPage, WriteOutcome,
};
use std::future::Future;
use time::OffsetDateTime;
use uuid::Uuid;

/// What every store does. All reads skip expired memories; every query is
/// scoped by `user_id` except the index-maintenance ones (`changes_after`,
/// `index_entries`, `scan_index_entries`, `count`, and the backfill's
/// `unembedded` and `store_embeddings`), which never reach the API.
pub trait Store: Send + Sync {
    /// Writes `rows` in one transaction (all or nothing). Rows with `dedupe`
    /// return a live memory of the same user with the same content hash instead.
    fn insert(&self, rows: Vec<NewRow>) -> impl Future<Output = Result<Vec<WriteOutcome>>> + Send;
    /// One live memory of `user_id`.
    fn get(&self, user_id: &str, id: Uuid) -> impl Future<Output = Result<Option<Memory>>> + Send;
    /// Applies `patch` to one live memory of `user_id`; `None` when there is none.
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
    /// Full-text search (any of `terms`), best first, with a score (higher is better).
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
    /// History of one live memory of `user_id`, oldest first.
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
