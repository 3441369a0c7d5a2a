//! SQLite store: one file in WAL mode, FTS5 for keyword search.
//!
//! Writes go through a single-connection sqlx pool (SQLite has one writer
//! anyway) and start with `BEGIN IMMEDIATE`, so a transaction never fails
//! half-way on a lock upgrade; reads use their own connections, through
//! `rusqlite` (see `sqlite_read`).

use super::sqlite_read::Readers;
use super::{MAX_IN_LIST, Resolved, Slot, Store, apply_patch, history_json, resolve_duplicates};
use crate::error::{MemoryError, Result};
use crate::keyword::{holds_cjk, index_text, user_key};
use crate::types::{
    Change, ChangeOp, Embedding, ExactHits, Filter, HistoryEntry, IndexEntry, ListQuery, Memory,
    NewEmbedding, NewRow, Page, Patch, UnembeddedPage, WriteOutcome, from_micros, now, to_micros,
    vector_to_bytes,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Rows per multi-row insert into the history and change tables.
const HISTORY_CHUNK: usize = 500;
/// Rows per multi-row insert into `memories` (16 values each).
const INSERT_CHUNK: usize = 100;

/// The index on `(user_id, content_hash)` (migration 4).
const USER_HASH_INDEX: &str = "memories_user_hash_idx";

const COLS: &str = "m.id, m.user_id, m.agent_id, m.run_id, m.kind, m.content, m.tags, m.metadata, m.created_at, m.updated_at, m.expires_at";

const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
        "CREATE TABLE memories (
            id TEXT NOT NULL UNIQUE,
            user_id TEXT NOT NULL,
            user_key TEXT NOT NULL,
            agent_id TEXT,
            run_id TEXT,
            kind TEXT,
            content TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            dedupe_key TEXT,
            tags TEXT NOT NULL,
            metadata TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            expires_at INTEGER,
            embedding BLOB,
            embedding_model TEXT
        )",
        "CREATE INDEX memories_user_created_idx ON memories (user_id, created_at DESC, id DESC)",
        "CREATE INDEX memories_hash_idx ON memories (content_hash)",
        "CREATE UNIQUE INDEX memories_dedupe_idx ON memories (user_id, dedupe_key)",
        "CREATE VIRTUAL TABLE memories_fts USING fts5(content, user_key, content='memories', content_rowid='rowid', tokenize='unicode61')",
        "CREATE TRIGGER memories_fts_ai AFTER INSERT ON memories BEGIN
            INSERT INTO memories_fts(rowid, content, user_key) VALUES (new.rowid, new.content, new.user_key);
         END",
        "CREATE TRIGGER memories_fts_ad AFTER DELETE ON memories BEGIN
            INSERT INTO memories_fts(memories_fts, rowid, content, user_key) VALUES ('delete', old.rowid, old.content, old.user_key);
         END",
        "CREATE TRIGGER memories_fts_au AFTER UPDATE OF content ON memories BEGIN
            INSERT INTO memories_fts(memories_fts, rowid, content, user_key) VALUES ('delete', old.rowid, old.content, old.user_key);
            INSERT INTO memories_fts(rowid, content, user_key) VALUES (new.rowid, new.content, new.user_key);
         END",
        "CREATE TABLE memory_history (
            hid INTEGER PRIMARY KEY AUTOINCREMENT,
            memory_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            op TEXT NOT NULL,
            old_value TEXT,
            new_value TEXT,
            at INTEGER NOT NULL
        )",
        "CREATE INDEX memory_history_memory_idx ON memory_history (memory_id, hid)",
        "CREATE INDEX memory_history_user_idx ON memory_history (user_id)",
        "CREATE TABLE memory_changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            memory_id TEXT,
            user_id TEXT NOT NULL,
            op TEXT NOT NULL,
            at INTEGER NOT NULL
        )",
        ],
    ),
    // The memory table becomes clustered by `(user_id, created_at, id)`, so a
    // page of `list` is one range of the table instead of an index range and
    // a lookup per row; embeddings leave the row for a table of their own
    // (1.5 KiB of vector made every row four times the size); rows get a
    // stable integer key `rid` that the side tables refer to; and the
    // full-text index becomes contentless with user-scoped terms (see
    // `keyword`), filled by `fill_terms` after these statements.
    (
        TERMS_MIGRATION,
        &[
            "CREATE TABLE memories_v2 (
                user_id TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                id TEXT NOT NULL,
                rid INTEGER NOT NULL,
                agent_id TEXT,
                run_id TEXT,
                kind TEXT,
                content TEXT NOT NULL,
                content_hash TEXT NOT NULL,
                dedupe_key TEXT,
                tags TEXT NOT NULL,
                metadata TEXT NOT NULL,
                updated_at INTEGER NOT NULL,
                expires_at INTEGER,
                PRIMARY KEY (user_id, created_at, id)
            ) WITHOUT ROWID",
            "INSERT INTO memories_v2 (rid, id, user_id, agent_id, run_id, kind, content, content_hash,
                dedupe_key, tags, metadata, created_at, updated_at, expires_at)
             SELECT rowid, id, user_id, agent_id, run_id, kind, content, content_hash,
                dedupe_key, tags, metadata, created_at, updated_at, expires_at FROM memories",
            "CREATE TABLE memory_embeddings (
                rid INTEGER PRIMARY KEY,
                embedding BLOB NOT NULL,
                model TEXT NOT NULL
            )",
            "INSERT INTO memory_embeddings (rid, embedding, model)
             SELECT rowid, embedding, embedding_model FROM memories
             WHERE embedding IS NOT NULL AND embedding_model IS NOT NULL",
            "DROP TRIGGER memories_fts_ai",
            "DROP TRIGGER memories_fts_ad",
            "DROP TRIGGER memories_fts_au",
            "DROP TABLE memories_fts",
            "DROP TABLE memories",
            "ALTER TABLE memories_v2 RENAME TO memories",
            "CREATE UNIQUE INDEX memories_id_idx ON memories (id)",
            "CREATE UNIQUE INDEX memories_rid_idx ON memories (rid)",
            "CREATE INDEX memories_hash_idx ON memories (content_hash)",
            "CREATE UNIQUE INDEX memories_dedupe_idx ON memories (user_id, dedupe_key)",
            "CREATE VIRTUAL TABLE memory_terms USING fts5(terms, content='', contentless_delete=1, tokenize='unicode61')",
            "CREATE TRIGGER memories_ad AFTER DELETE ON memories BEGIN
                DELETE FROM memory_embeddings WHERE rid = old.rid;
                DELETE FROM memory_terms WHERE rowid = old.rid;
             END",
        ],
    ),
    // Retention: expired memories are purged (found by their expiry) and the
    // change log is pruned; the horizon remembers how far, so an index that
    // applied less knows it missed changes.
    (
        3,
        &[
            "CREATE INDEX memories_expires_idx ON memories (expires_at) WHERE expires_at IS NOT NULL",
            "CREATE TABLE memory_change_horizon (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                pruned_through INTEGER NOT NULL
            )",
            "INSERT INTO memory_change_horizon (id, pruned_through) VALUES (1, 0)",
        ],
    ),
    // A write looks for duplicates among its user's memories only (the
    // index on the hash alone made it read every user's copy of a common
    // fact, under the write lock).
    (
        4,
        &[
            "CREATE INDEX memories_user_hash_idx ON memories (user_id, content_hash)",
            "DROP INDEX memories_hash_idx",
        ],
    ),
    // Keyword terms lose their accents (`keyword::fold`): `refold_terms`
    // indexes again every memory whose content is not plain ASCII.
    (FOLD_MIGRATION, &[]),
    // Runs of Chinese and Japanese characters make bigrams and unigrams
    // instead of one term per run (`keyword`): `refold_terms` indexes again
    // every memory whose folded content holds one (`keyword::holds_cjk`).
    (CJK_MIGRATION, &[]),
];

/// The migration after whose statements `fill_terms` indexes every memory.
const TERMS_MIGRATION: i64 = 2;
/// The migration after whose statements `refold_terms` indexes again the
/// memories whose terms [`crate::keyword::fold`] changed.
const FOLD_MIGRATION: i64 = 5;
/// The migration after whose statements `refold_terms` indexes again the
/// memories holding CJK characters, whose runs now make bigrams.
const CJK_MIGRATION: i64 = 6;

/// A memory's content hash and embedding as [`Store::store_embeddings`] finds them.
struct StoredEmbedding {
    rid: i64,
    user_id: String,
    content_hash: String,
    model: Option<String>,
    bytes: Option<i64>,
}

/// The SQLite implementation of [`Store`].
pub struct SqliteStore {
    read: Readers,
    write: SqlitePool,
    /// The last change-log position committed through this handle.
    local_seq: AtomicI64,
    /// The last insert stamp (see [`SqliteStore::stamp`]).
    last_stamp: AtomicI64,
    /// Rows written (inserted, changed, deleted) since the full-text index
    /// was last merged; see [`SqliteStore::maintain`].
    fts_writes: AtomicU64,
    /// `fts_writes` at the previous [`SqliteStore::maintain`] call.
    fts_seen: AtomicU64,
    /// When the last merge ended, and how long it took.
    fts_last_merge: parking_lot::Mutex<Option<(Instant, Duration)>>,
}

/// Under sustained writing the full-text index is merged once the rows
/// written since the last merge reach a tenth of the table, and at least this many.
const FTS_MERGE_MIN_WRITES: u64 = 1000;

impl SqliteStore {
    /// The read connections (hybrid search runs its reads on one of them).
    pub(crate) fn readers(&self) -> &Readers {
        &self.read
    }

    /// Opens (creating when missing) and migrates the database at `url`.
    /// Merges the full-text index into one segment (FTS5 `optimize`): after
    /// a bulk load a term's postings are spread over many segments, and each
    /// keyword search seeks in every one of them.
    pub async fn optimize_keyword_index(&self) -> Result<()> {
        sqlx::query("INSERT INTO memory_terms(memory_terms) VALUES('optimize')")
            .execute(&self.write)
            .await?;
        // Then move the WAL into the database file: readers map the file,
        // but read pages still in the WAL with read() into private caches.
        sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&self.write)
            .await?;
        Ok(())
    }

    pub async fn open(url: &str, max_connections: u32) -> Result<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .pragma("cache_size", "-65536")
            // Checkpoint every 8,192 WAL pages (32 MiB), not every 1,000: a
            // batch spread over many users dirties thousands of pages, and at
            // the default each commit was followed by a checkpoint rewriting
            // them (SQL-only load 6,500 -> 9,000 memories/s).
            .pragma("wal_autocheckpoint", "8192");
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await?;
        migrate(&write).await?;
        // The readers open the very file the writer opened, whatever the URL said.
        let file: String =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_one(&write)
                .await?;
        if file.is_empty() {
            return Err(MemoryError::invalid(
                "database_url",
                "the SQLite store needs a database file, not an in-memory database",
            ));
        }
        let read = Readers::new(PathBuf::from(file), max_connections as usize);
        Ok(SqliteStore {
            read,
            write,
            local_seq: AtomicI64::new(0),
            last_stamp: AtomicI64::new(0),
            fts_writes: AtomicU64::new(0),
            fts_seen: AtomicU64::new(0),
            fts_last_merge: parking_lot::Mutex::new(None),
        })
    }

    fn committed(&self, seq: i64) {
        self.local_seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// The time of an insert, in microseconds: the clock, but always after
    /// the previous stamp of this store (a clock stepped back, two inserts in
    /// one microsecond). Taken under the write lock, so stamps follow commit
    /// order.
    fn stamp(&self) -> i64 {
        let clock = to_micros(now());
        let prev = self
            .last_stamp
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(next_stamp(p, clock))
            })
            .unwrap_or_else(|p| p);
        next_stamp(prev, clock)
    }

    fn wrote(&self, rows: u64) {
        self.fts_writes.fetch_add(rows, Ordering::Relaxed);
    }

    /// Periodic upkeep (every few seconds), given the table's row count:
    /// merges the full-text index. Each committed batch adds FTS5 segments;
    /// its automerge keeps a dozen or so, and a keyword search seeks every one
    /// (a merged index answered the benchmark's keyword searches 1.6x faster).
    /// A merge rewrites the index (0.1 s for 100,000 memories), so it runs
    /// when the rows written since the last one reach a tenth of the table
    /// (at least [`FTS_MERGE_MIN_WRITES`]): O(1) per write under sustained
    /// writing; or once writing paused (no write since the previous call),
    /// when the last merge is at least 20 of its own durations ago: merges
    /// then take at most 5% of the writer's time. Returns whether it merged.
    pub async fn maintain(&self, rows: u64) -> Result<bool> {
        let dirty = self.fts_writes.load(Ordering::Relaxed);
        if dirty == 0 {
            return Ok(false);
        }
        let quiet = self.fts_seen.swap(dirty, Ordering::Relaxed) == dirty;
        let due = dirty >= (rows / 10).max(FTS_MERGE_MIN_WRITES);
        let rested = self
            .fts_last_merge
            .lock()
            .is_none_or(|(at, took)| at.elapsed() >= took * 20);
        if !(due || (quiet && rested)) {
            return Ok(false);
        }
        self.fts_writes.fetch_sub(dirty, Ordering::Relaxed);
        self.fts_seen.store(0, Ordering::Relaxed);
        let started = Instant::now();
        if let Err(e) = self.optimize_keyword_index().await {
            self.fts_writes.fetch_add(dirty, Ordering::Relaxed);
            return Err(e);
        }
        *self.fts_last_merge.lock() = Some((Instant::now(), started.elapsed()));
        Ok(true)
    }
}

/// The stamp after `prev` when the clock says `clock`.
fn next_stamp(prev: i64, clock: i64) -> i64 {
    clock.max(prev.saturating_add(1))
}

async fn migrate(pool: &SqlitePool) -> Result<()> {
    migrate_through(pool, i64::MAX).await
}

/// Applies the migrations up to `last` (tests stop at an older schema).
async fn migrate_through(pool: &SqlitePool, last: i64) -> Result<()> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS memory_schema_migrations (version INTEGER PRIMARY KEY, at INTEGER NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    let done: Vec<i64> = sqlx::query_scalar("SELECT version FROM memory_schema_migrations")
        .fetch_all(&mut *tx)
        .await?;
    for (version, stmts) in MIGRATIONS {
        if done.contains(version) || *version > last {
            continue;
        }
        for s in *stmts {
            sqlx::query(s).execute(&mut *tx).await?;
        }
        match *version {
            TERMS_MIGRATION => fill_terms(&mut tx).await?,
            FOLD_MIGRATION => refold_terms(&mut tx, |content| !content.is_ascii()).await?,
            CJK_MIGRATION => refold_terms(&mut tx, holds_cjk).await?,
            _ => {}
        }
        sqlx::query("INSERT INTO memory_schema_migrations (version, at) VALUES (?, ?)")
            .bind(version)
            .bind(to_micros(now()))
            .execute(&mut *tx)
            .await?;
        tracing::info!(version, "memory: applied SQLite migration");
    }
    tx.commit().await?;
    Ok(())
}

/// Hands every memory, as `(rid, user_id, content)` in `rid` order, to
/// `step` 500 at a time, with the connection.
async fn each_page_of_memories(
    tx: &mut sqlx::SqliteConnection,
    mut step: impl AsyncFnMut(&mut sqlx::SqliteConnection, Vec<(i64, String, String)>) -> Result<()>,
) -> Result<()> {
    let mut after = 0i64;
    loop {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT rid, user_id, content FROM memories WHERE rid > ? ORDER BY rid LIMIT 500",
        )
        .bind(after)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = last.0;
        step(&mut *tx, rows).await?;
    }
}

/// Indexes the words of every memory (the full-text index of migration 2
/// holds terms made in Rust, see `keyword::index_text`).
async fn fill_terms(tx: &mut sqlx::SqliteConnection) -> Result<()> {
    each_page_of_memories(tx, async |tx, rows| {
        let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO memory_terms (rowid, terms) ");
        qb.push_values(rows, |mut b, (rid, user_id, content)| {
            b.push_bind(rid)
                .push_bind(index_text(&user_key(&user_id), &content));
        });
        qb.build().execute(&mut *tx).await?;
        Ok(())
    })
    .await
}

/// Indexes again the words of the memories whose terms an older
/// `keyword::index_text` made otherwise, those whose content is `stale`:
/// content that is not plain ASCII, whose terms were made before
/// `keyword::fold` took accents off (ASCII content makes the same terms as
/// before); content holding CJK characters once folded as indexing folds it
/// (`keyword::holds_cjk`), whose runs were one term each before they made
/// bigrams. Indexing a memory again only replaces its terms with the same,
/// so a memory picked needlessly costs time only.
async fn refold_terms(tx: &mut sqlx::SqliteConnection, stale: fn(&str) -> bool) -> Result<()> {
    each_page_of_memories(tx, async |tx, rows| {
        let changed: Vec<(i64, String)> = rows
            .into_iter()
            .filter(|(_, _, content)| stale(content))
            .map(|(rid, user_id, content)| (rid, index_text(&user_key(&user_id), &content)))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let mut qb = QueryBuilder::<Sqlite>::new("DELETE FROM memory_terms WHERE rowid IN (");
        let mut rids = qb.separated(", ");
        for (rid, _) in &changed {
            rids.push_bind(*rid);
        }
        rids.push_unseparated(")");
        qb.build().execute(&mut *tx).await?;
        let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO memory_terms (rowid, terms) ");
        qb.push_values(changed, |mut b, (rid, text)| {
            b.push_bind(rid).push_bind(text);
        });
        qb.build().execute(&mut *tx).await?;
        Ok(())
    })
    .await
}

/// Writes what sits beside each new memory `(rid, row)`: its full-text
/// terms and, when it has one, its embedding.
async fn insert_side_rows(tx: &mut sqlx::SqliteConnection, rows: &[(i64, &NewRow)]) -> Result<()> {
    for chunk in rows.chunks(HISTORY_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new("INSERT INTO memory_terms (rowid, terms) ");
        qb.push_values(chunk, |mut b, (rid, r)| {
            b.push_bind(*rid)
                .push_bind(index_text(&user_key(&r.memory.user_id), &r.memory.content));
        });
        qb.build().execute(&mut *tx).await?;
        let embedded: Vec<(i64, &Embedding)> = chunk
            .iter()
            .filter_map(|(rid, r)| r.embedding.as_ref().map(|e| (*rid, e)))
            .collect();
        if embedded.is_empty() {
            continue;
        }
        let mut qb =
            QueryBuilder::<Sqlite>::new("INSERT INTO memory_embeddings (rid, embedding, model) ");
        qb.push_values(embedded, |mut b, (rid, e)| {
            b.push_bind(rid)
                .push_bind(vector_to_bytes(&e.vector))
                .push_bind(e.model.clone());
        });
        qb.build().execute(&mut *tx).await?;
    }
    Ok(())
}

fn corrupt(e: impl std::fmt::Display) -> MemoryError {
    MemoryError::Corrupt(e.to_string())
}

fn decode(row: &SqliteRow) -> Result<Memory> {
    let id: String = row.try_get("id")?;
    let tags: String = row.try_get("tags")?;
    let metadata: String = row.try_get("metadata")?;
    let expires: Option<i64> = row.try_get("expires_at")?;
    Ok(Memory {
        id: Uuid::parse_str(&id).map_err(corrupt)?,
        user_id: row.try_get("user_id")?,
        agent_id: row.try_get("agent_id")?,
        run_id: row.try_get("run_id")?,
        kind: row.try_get("kind")?,
        content: row.try_get("content")?,
        tags: serde_json::from_str(&tags).map_err(corrupt)?,
        metadata: serde_json::from_str(&metadata).map_err(corrupt)?,
        created_at: from_micros(row.try_get("created_at")?)?,
        updated_at: from_micros(row.try_get("updated_at")?)?,
        expires_at: expires.map(from_micros).transpose()?,
    })
}

fn json_text(v: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(v).map_err(corrupt)
}

async fn record_history(
    tx: &mut sqlx::SqliteConnection,
    m: &Memory,
    op: &str,
    old: Option<&Memory>,
    new: Option<&Memory>,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO memory_history (memory_id, user_id, op, old_value, new_value, at) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(m.id.to_string())
    .bind(&m.user_id)
    .bind(op)
    .bind(old.map(history_json).transpose()?)
    .bind(new.map(history_json).transpose()?)
    .bind(at)
    .execute(tx)
    .await?;
    Ok(())
}

async fn record_change(
    tx: &mut sqlx::SqliteConnection,
    id: Option<Uuid>,
    user_id: &str,
    op: ChangeOp,
    at: i64,
) -> Result<i64> {
    let r =
        sqlx::query("INSERT INTO memory_changes (memory_id, user_id, op, at) VALUES (?, ?, ?, ?)")
            .bind(id.map(|i| i.to_string()))
            .bind(user_id)
            .bind(op.as_str())
            .bind(at)
            .execute(tx)
            .await?;
    Ok(r.last_insert_rowid())
}

/// History and change-log rows for a batch of memories, two multi-row
/// inserts: a `create` records the memory as its new value, any other
/// history op (`expire`) as its old one. Returns the last change position.
async fn record_batch(
    tx: &mut sqlx::SqliteConnection,
    memories: &[&Memory],
    op: &str,
    change: ChangeOp,
    at: i64,
) -> Result<i64> {
    let mut qb = QueryBuilder::<Sqlite>::new(
        "INSERT INTO memory_history (memory_id, user_id, op, old_value, new_value, at) ",
    );
    let values = memories
        .iter()
        .map(|m| history_json(m).map(|j| (m, j)))
        .collect::<Result<Vec<_>>>()?;
    let created = op == "create";
    qb.push_values(values, |mut b, (m, j)| {
        let (old, new) = if created {
            (None, Some(j))
        } else {
            (Some(j), None)
        };
        b.push_bind(m.id.to_string())
            .push_bind(m.user_id.clone())
            .push_bind(op)
            .push_bind(old)
            .push_bind(new)
            .push_bind(at);
    });
    qb.build().execute(&mut *tx).await?;
    let changed: Vec<(Uuid, &str)> = memories
        .iter()
        .map(|m| (m.id, m.user_id.as_str()))
        .collect();
    record_changes(tx, &changed, change, at).await
}

/// Change-log rows `change` for the memories `(id, user)`, one multi-row
/// insert; returns the last change position.
async fn record_changes(
    tx: &mut sqlx::SqliteConnection,
    memories: &[(Uuid, &str)],
    change: ChangeOp,
    at: i64,
) -> Result<i64> {
    let mut qb =
        QueryBuilder::<Sqlite>::new("INSERT INTO memory_changes (memory_id, user_id, op, at) ");
    qb.push_values(memories, |mut b, (id, user)| {
        b.push_bind(id.to_string())
            .push_bind(user.to_string())
            .push_bind(change.as_str())
            .push_bind(at);
    });
    Ok(qb.build().execute(&mut *tx).await?.last_insert_rowid())
}

/// The largest `rid` in use: the writer numbers new rows after it (it holds
/// the write lock, so nobody else takes the next number).
async fn last_rid(tx: &mut sqlx::SqliteConnection) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(MAX(rid), 0) FROM memories")
            .fetch_one(&mut *tx)
            .await?,
    )
}

/// Appends the query for the live memories of the `(user, content hash)`
/// pairs, oldest first: one lookup of the index on both per pair (a test
/// checks the plan; without statistics SQLite would rather read every
/// memory of the user through the table's key).
fn push_live_by_hash(qb: &mut QueryBuilder<'_, Sqlite>, pairs: &[(&str, &str)], now_us: i64) {
    qb.push("WITH k(user_id, content_hash) AS (VALUES ");
    let mut sep = qb.separated(", ");
    for (user, hash) in pairs {
        sep.push("(")
            .push_bind_unseparated(user.to_string())
            .push_unseparated(", ")
            .push_bind_unseparated(hash.to_string())
            .push_unseparated(")");
    }
    qb.push(format!(
        ") SELECT {COLS}, m.content_hash FROM k JOIN memories m INDEXED BY {USER_HASH_INDEX} \
         ON m.user_id = k.user_id AND m.content_hash = k.content_hash \
         WHERE (m.expires_at IS NULL OR m.expires_at > "
    ))
    .push_bind(now_us)
    .push(") ORDER BY m.created_at, m.id");
}

/// Inserts one row as `rid`; false when its dedupe key is taken.
async fn insert_row(tx: &mut sqlx::SqliteConnection, r: &NewRow, rid: i64) -> Result<bool> {
    let m = &r.memory;
    let res = sqlx::query(
        "INSERT INTO memories (rid, id, user_id, agent_id, run_id, kind, content, content_hash, dedupe_key, \
         tags, metadata, created_at, updated_at, expires_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, dedupe_key) DO NOTHING",
    )
    .bind(rid)
    .bind(m.id.to_string())
    .bind(&m.user_id)
    .bind(&m.agent_id)
    .bind(&m.run_id)
    .bind(&m.kind)
    .bind(&m.content)
    .bind(&r.content_hash)
    .bind(r.dedupe.then_some(&r.content_hash))
    .bind(json_text(&m.tags)?)
    .bind(json_text(&m.metadata)?)
    .bind(to_micros(m.created_at))
    .bind(to_micros(m.updated_at))
    .bind(m.expires_at.map(to_micros))
    .execute(&mut *tx)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Inserts many rows in one statement, numbered after `last`; returns
/// `(id, rid)` of the rows actually inserted.
async fn insert_rows(
    tx: &mut sqlx::SqliteConnection,
    rows: &[&NewRow],
    last: &mut i64,
) -> Result<Vec<(String, i64)>> {
    let mut qb = QueryBuilder::<Sqlite>::new(
        "INSERT INTO memories (rid, id, user_id, agent_id, run_id, kind, content, content_hash, \
         dedupe_key, tags, metadata, created_at, updated_at, expires_at) ",
    );
    let mut prepared = Vec::with_capacity(rows.len());
    for r in rows {
        *last += 1;
        prepared.push((
            *last,
            r,
            json_text(&r.memory.tags)?,
            json_text(&r.memory.metadata)?,
        ));
    }
    qb.push_values(prepared, |mut b, (rid, r, tags, meta)| {
        let m = &r.memory;
        b.push_bind(rid)
            .push_bind(m.id.to_string())
            .push_bind(m.user_id.clone())
            .push_bind(m.agent_id.clone())
            .push_bind(m.run_id.clone())
            .push_bind(m.kind.clone())
            .push_bind(m.content.clone())
            .push_bind(r.content_hash.clone())
            .push_bind(r.dedupe.then(|| r.content_hash.clone()))
            .push_bind(tags)
            .push_bind(meta)
            .push_bind(to_micros(m.created_at))
            .push_bind(to_micros(m.updated_at))
            .push_bind(m.expires_at.map(to_micros));
    });
    qb.push(" ON CONFLICT (user_id, dedupe_key) DO NOTHING RETURNING id, rid");
    Ok(qb
        .build_query_as::<(String, i64)>()
        .fetch_all(&mut *tx)
        .await?)
}

/// Writes the attributes a deduplicated write may change (kind, tags,
/// metadata, expiry) and `updated_at` of the stored memory `m`.
async fn update_attributes(tx: &mut sqlx::SqliteConnection, m: &Memory) -> Result<()> {
    sqlx::query(
        "UPDATE memories SET kind = ?, tags = ?, metadata = ?, expires_at = ?, updated_at = ? \
         WHERE id = ? AND user_id = ?",
    )
    .bind(&m.kind)
    .bind(json_text(&m.tags)?)
    .bind(json_text(&m.metadata)?)
    .bind(m.expires_at.map(to_micros))
    .bind(to_micros(m.updated_at))
    .bind(m.id.to_string())
    .bind(&m.user_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

impl Store for SqliteStore {
    async fn insert(&self, mut rows: Vec<NewRow>) -> Result<Vec<WriteOutcome>> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        // Stamped under the write lock: commit order and `created_at` agree,
        // so a client polling `since=` misses nothing committed later.
        let now_us = self.stamp();
        let at = from_micros(now_us)?;
        for r in &mut rows {
            r.memory.created_at = at;
            r.memory.updated_at = at;
        }
        // Live by the clock (the stamp may run ahead of it after a step back).
        let clock_us = to_micros(now());
        // Live duplicates of the batch, in one query per chunk of rows.
        let mut live: HashMap<(String, String), Memory> = HashMap::new();
        let pairs: Vec<(&str, &str)> = rows
            .iter()
            .filter(|r| r.dedupe)
            .map(|r| (r.memory.user_id.as_str(), r.content_hash.as_str()))
            .collect();
        for chunk in pairs.chunks(MAX_IN_LIST / 2) {
            let mut qb = QueryBuilder::<Sqlite>::new("");
            push_live_by_hash(&mut qb, chunk, clock_us);
            for r in qb.build().fetch_all(&mut *tx).await? {
                let m = decode(&r)?;
                let h: String = r.try_get("content_hash")?;
                live.entry((m.user_id.clone(), h)).or_insert(m);
            }
        }
        // Resolve duplicates (stored, then within the batch) before writing.
        let Resolved { slots, mut stored } = resolve_duplicates(&mut rows, live)?;
        let fresh: Vec<&NewRow> = slots
            .iter()
            .filter_map(|s| match s {
                Slot::New(i) => Some(&rows[*i]),
                Slot::Stored(_) | Slot::Batch(_) => None,
            })
            .collect();
        // Multi-row inserts; a row not inserted lost its dedupe key to an
        // expired memory, which releases it.
        let mut rid = last_rid(&mut tx).await?;
        let mut inserted: HashMap<String, i64> = HashMap::with_capacity(fresh.len());
        for chunk in fresh.chunks(INSERT_CHUNK) {
            inserted.extend(insert_rows(&mut tx, chunk, &mut rid).await?);
        }
        let mut side = Vec::with_capacity(fresh.len());
        for r in &fresh {
            if let Some(&rid) = inserted.get(&r.memory.id.to_string()) {
                side.push((rid, *r));
                continue;
            }
            sqlx::query(
                "UPDATE memories SET dedupe_key = NULL WHERE user_id = ? AND dedupe_key = ?",
            )
            .bind(&r.memory.user_id)
            .bind(&r.content_hash)
            .execute(&mut *tx)
            .await?;
            rid += 1;
            if !insert_row(&mut tx, r, rid).await? {
                return Err(MemoryError::Corrupt(
                    "dedupe key still taken after release".into(),
                ));
            }
            side.push((rid, *r));
        }
        insert_side_rows(&mut tx, &side).await?;
        // Stored duplicates the batch changed: updated in place.
        for (old, new) in &mut stored {
            if old == new {
                continue;
            }
            new.updated_at = at;
            update_attributes(&mut tx, new).await?;
            record_history(&mut tx, new, "update", Some(old), Some(new), now_us).await?;
        }
        let updated: Vec<(Uuid, &str)> = stored
            .iter()
            .filter(|(old, new)| old != new)
            .map(|(_, new)| (new.id, new.user_id.as_str()))
            .collect();
        // History and change log: multi-row inserts.
        let created: Vec<&Memory> = fresh.iter().map(|r| &r.memory).collect();
        let mut last_seq = 0;
        for chunk in created.chunks(HISTORY_CHUNK) {
            last_seq = record_batch(&mut tx, chunk, "create", ChangeOp::Upsert, now_us).await?;
        }
        for chunk in updated.chunks(HISTORY_CHUNK) {
            last_seq = record_changes(&mut tx, chunk, ChangeOp::Upsert, now_us).await?;
        }
        tx.commit().await?;
        self.committed(last_seq);
        self.wrote(fresh.len() as u64);
        Ok(slots
            .into_iter()
            .map(|s| match s {
                Slot::New(i) => WriteOutcome {
                    memory: rows[i].memory.clone(),
                    deduplicated: false,
                    embedding_pending: false,
                },
                Slot::Batch(i) => WriteOutcome {
                    memory: rows[i].memory.clone(),
                    deduplicated: true,
                    embedding_pending: false,
                },
                Slot::Stored(j) => WriteOutcome {
                    memory: stored[j].1.clone(),
                    deduplicated: true,
                    embedding_pending: false,
                },
            })
            .collect())
    }

    async fn get(&self, user_id: &str, id: Uuid) -> Result<Option<Memory>> {
        self.read.get(user_id, id).await
    }

    async fn update(&self, user_id: &str, id: Uuid, patch: Patch) -> Result<Option<Memory>> {
        let at = now();
        let now_us = to_micros(at);
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let sql = format!(
            "SELECT {COLS}, m.rid FROM memories m WHERE m.id = ? AND m.user_id = ? AND (m.expires_at IS NULL OR m.expires_at > ?)"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(user_id)
            .bind(now_us)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let old = decode(&row)?;
        let rid: i64 = row.try_get("rid")?;
        let new = apply_patch(&old, &patch, at);
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE memories SET updated_at = ");
        qb.push_bind(now_us);
        if let (Some(c), Some(h)) = (&patch.content, &patch.content_hash) {
            qb.push(", content = ").push_bind(c.clone());
            qb.push(", content_hash = ").push_bind(h.clone());
            qb.push(", dedupe_key = NULL");
            sqlx::query("DELETE FROM memory_terms WHERE rowid = ?")
                .bind(rid)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO memory_terms (rowid, terms) VALUES (?, ?)")
                .bind(rid)
                .bind(index_text(&user_key(user_id), c))
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM memory_embeddings WHERE rid = ?")
                .bind(rid)
                .execute(&mut *tx)
                .await?;
            if let Some(e) = &patch.embedding {
                sqlx::query(
                    "INSERT INTO memory_embeddings (rid, embedding, model) VALUES (?, ?, ?)",
                )
                .bind(rid)
                .bind(vector_to_bytes(&e.vector))
                .bind(&e.model)
                .execute(&mut *tx)
                .await?;
            }
        }
        if patch.tags.is_some() {
            qb.push(", tags = ").push_bind(json_text(&new.tags)?);
        }
        if patch.metadata.is_some() {
            qb.push(", metadata = ")
                .push_bind(json_text(&new.metadata)?);
        }
        if patch.expires_at.is_some() {
            qb.push(", expires_at = ")
                .push_bind(new.expires_at.map(to_micros));
        }
        qb.push(" WHERE id = ").push_bind(id.to_string());
        qb.push(" AND user_id = ").push_bind(user_id.to_string());
        qb.build().execute(&mut *tx).await?;
        record_history(&mut tx, &new, "update", Some(&old), Some(&new), now_us).await?;
        let seq = record_change(&mut tx, Some(id), user_id, ChangeOp::Upsert, now_us).await?;
        tx.commit().await?;
        self.committed(seq);
        self.wrote(1);
        Ok(Some(new))
    }

    async fn delete(&self, user_id: &str, id: Uuid) -> Result<bool> {
        let now_us = to_micros(now());
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let sql = format!(
            "SELECT {COLS} FROM memories m WHERE m.id = ? AND m.user_id = ? AND (m.expires_at IS NULL OR m.expires_at > ?)"
        );
        let Some(row) = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(user_id)
            .bind(now_us)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(false);
        };
        let old = decode(&row)?;
        sqlx::query("DELETE FROM memories WHERE id = ? AND user_id = ?")
            .bind(id.to_string())
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        record_history(&mut tx, &old, "delete", Some(&old), None, now_us).await?;
        let seq = record_change(&mut tx, Some(id), user_id, ChangeOp::Delete, now_us).await?;
        tx.commit().await?;
        self.committed(seq);
        self.wrote(1);
        Ok(true)
    }

    async fn delete_user(&self, user_id: &str) -> Result<u64> {
        let now_us = to_micros(now());
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let n = sqlx::query("DELETE FROM memories WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM memory_history WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let seq = record_change(&mut tx, None, user_id, ChangeOp::DeleteUser, now_us).await?;
        tx.commit().await?;
        self.committed(seq);
        self.wrote(n);
        Ok(n)
    }

    async fn list(&self, q: &ListQuery) -> Result<Page> {
        self.read.list(q).await
    }

    async fn keyword(
        &self,
        filter: &Filter,
        terms: &[String],
        limit: usize,
    ) -> Result<Vec<(Memory, f32)>> {
        self.read.keyword(filter, terms, limit).await
    }

    async fn keyword_ids(
        &self,
        filter: &Filter,
        terms: &[String],
        limit: usize,
    ) -> Result<Vec<(Uuid, f32)>> {
        self.read.keyword_ids(filter, terms, limit).await
    }

    async fn fetch(&self, filter: &Filter, ids: &[Uuid]) -> Result<Vec<Memory>> {
        self.read.fetch(filter, ids).await
    }

    async fn history(&self, user_id: &str, id: Uuid) -> Result<Option<Vec<HistoryEntry>>> {
        self.read.history(user_id, id).await
    }

    async fn changes_after(&self, seq: i64, limit: usize) -> Result<Vec<Change>> {
        self.read.changes_after(seq, limit).await
    }

    async fn last_change(&self) -> Result<i64> {
        self.read.last_change().await
    }

    fn local_change(&self) -> i64 {
        self.local_seq.load(Ordering::Acquire)
    }

    async fn nearest_exact(
        &self,
        filter: &Filter,
        query: &Embedding,
        k: usize,
        scan: usize,
    ) -> Result<ExactHits> {
        self.read.nearest_exact(filter, query, k, scan).await
    }

    async fn index_entries(&self, ids: &[Uuid]) -> Result<Vec<IndexEntry>> {
        self.read.index_entries(ids).await
    }

    async fn scan_index_entries(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        self.read.scan_index_entries(after, limit).await
    }

    async fn count(&self) -> Result<u64> {
        self.read.count().await
    }

    async fn unembedded(
        &self,
        model: &str,
        dimension: usize,
        after: Option<Uuid>,
        scan: usize,
    ) -> Result<UnembeddedPage> {
        self.read.unembedded(model, dimension, after, scan).await
    }

    async fn store_embeddings(&self, rows: Vec<NewEmbedding>) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        let now_us = to_micros(now());
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        // What each memory is now (under the write lock: nothing changes it
        // before this transaction commits).
        let mut current: HashMap<String, StoredEmbedding> = HashMap::with_capacity(rows.len());
        for chunk in rows.chunks(MAX_IN_LIST) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT m.id, m.rid, m.user_id, m.content_hash, e.model, length(e.embedding) AS bytes \
                 FROM memories m LEFT JOIN memory_embeddings e ON e.rid = m.rid \
                 WHERE (m.expires_at IS NULL OR m.expires_at > ",
            );
            qb.push_bind(now_us).push(") AND m.id IN (");
            let mut ids = qb.separated(", ");
            for r in chunk {
                ids.push_bind(r.id.to_string());
            }
            ids.push_unseparated(")");
            for r in qb.build().fetch_all(&mut *tx).await? {
                current.insert(
                    r.try_get("id")?,
                    StoredEmbedding {
                        rid: r.try_get("rid")?,
                        user_id: r.try_get("user_id")?,
                        content_hash: r.try_get("content_hash")?,
                        model: r.try_get("model")?,
                        bytes: r.try_get("bytes")?,
                    },
                );
            }
        }
        let mut fresh: Vec<(i64, Uuid, String, &NewEmbedding)> = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(now) = current.remove(&r.id.to_string()) else {
                continue; // deleted or expired
            };
            let bytes = i64::try_from(r.embedding.vector.len() * 4).unwrap_or(i64::MAX);
            let has_it = now.model.as_deref() == Some(r.embedding.model.as_str())
                && now.bytes == Some(bytes);
            if now.content_hash == r.content_hash && !has_it {
                fresh.push((now.rid, r.id, now.user_id, r));
            }
        }
        if fresh.is_empty() {
            return Ok(0);
        }
        let mut qb =
            QueryBuilder::<Sqlite>::new("INSERT INTO memory_embeddings (rid, embedding, model) ");
        qb.push_values(&fresh, |mut b, (rid, _, _, r)| {
            b.push_bind(*rid)
                .push_bind(vector_to_bytes(&r.embedding.vector))
                .push_bind(r.embedding.model.clone());
        });
        qb.push(
            " ON CONFLICT (rid) DO UPDATE SET embedding = excluded.embedding, model = excluded.model",
        );
        qb.build().execute(&mut *tx).await?;
        let changed: Vec<(Uuid, &str)> = fresh
            .iter()
            .map(|(_, id, user, _)| (*id, user.as_str()))
            .collect();
        let seq = record_changes(&mut tx, &changed, ChangeOp::Upsert, now_us).await?;
        tx.commit().await?;
        self.committed(seq);
        Ok(fresh.len() as u64)
    }

    async fn purge_expired(&self, limit: usize) -> Result<u64> {
        let now_us = to_micros(now());
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let sql = format!(
            "SELECT {COLS} FROM memories m WHERE m.expires_at <= ? ORDER BY m.expires_at LIMIT ?"
        );
        let rows = sqlx::query(&sql)
            .bind(now_us)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let gone = rows.iter().map(decode).collect::<Result<Vec<Memory>>>()?;
        let mut last_seq = 0;
        for chunk in gone.chunks(HISTORY_CHUNK.min(MAX_IN_LIST)) {
            let mut qb = QueryBuilder::<Sqlite>::new("DELETE FROM memories WHERE id IN (");
            let mut ids = qb.separated(", ");
            for m in chunk {
                ids.push_bind(m.id.to_string());
            }
            ids.push_unseparated(")");
            qb.build().execute(&mut *tx).await?;
            let refs: Vec<&Memory> = chunk.iter().collect();
            last_seq = record_batch(&mut tx, &refs, "expire", ChangeOp::Delete, now_us).await?;
        }
        tx.commit().await?;
        self.committed(last_seq);
        self.wrote(gone.len() as u64);
        Ok(gone.len() as u64)
    }

    async fn prune_changes(
        &self,
        before: time::OffsetDateTime,
        through: i64,
        limit: usize,
    ) -> Result<u64> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let newest: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM memory_changes")
            .fetch_one(&mut *tx)
            .await?;
        // Most rounds find nothing old enough: the oldest record says so
        // without reading a page of them.
        let oldest: Option<(i64, i64)> =
            sqlx::query_as("SELECT seq, at FROM memory_changes ORDER BY seq LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
        if oldest
            .is_none_or(|o| super::prune_cut(&[o], &to_micros(before), through, newest).is_none())
        {
            return Ok(0);
        }
        let rows: Vec<(i64, i64)> =
            sqlx::query_as("SELECT seq, at FROM memory_changes ORDER BY seq LIMIT ?")
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&mut *tx)
                .await?;
        let Some(cut) = super::prune_cut(&rows, &to_micros(before), through, newest) else {
            return Ok(0);
        };
        let n = sqlx::query("DELETE FROM memory_changes WHERE seq <= ?")
            .bind(cut)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "UPDATE memory_change_horizon SET pruned_through = MAX(pruned_through, ?) WHERE id = 1",
        )
        .bind(cut)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn change_horizon(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT pruned_through FROM memory_change_horizon WHERE id = 1")
                .fetch_one(&self.write)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_rows::{
        assert_cjk_split, assert_refolded, content_patch, embedded, keyword_ids, row,
        unfolded_terms, unsplit_cjk_terms,
    };
    use super::*;

    /// A new database file in a temporary folder (gone with the folder), its
    /// URL, and a pool on it before any migration.
    async fn unmigrated_db() -> (tempfile::TempDir, String, SqlitePool) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("m.db").display());
        let opts = SqliteConnectOptions::from_str(&url)
            .expect("url")
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(opts).await.expect("pool");
        (dir, url, pool)
    }

    /// A database written by the first schema (embeddings in the row, the
    /// full-text index over the content column) migrates: every memory keeps
    /// its embedding, is found by keyword search for its own user only, and
    /// deleting it removes its terms and embedding too.
    #[tokio::test]
    async fn a_first_schema_database_migrates_with_its_terms_and_embeddings() {
        let (_dir, url, pool) = unmigrated_db().await;
        sqlx::query(
            "CREATE TABLE memory_schema_migrations (version INTEGER PRIMARY KEY, at INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await
        .expect("migrations table");
        for s in MIGRATIONS[0].1 {
            sqlx::query(s).execute(&pool).await.expect("schema 1");
        }
        sqlx::query("INSERT INTO memory_schema_migrations VALUES (1, 0)")
            .execute(&pool)
            .await
            .expect("version 1");
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let rows = [
            ("alice", "the parcel ZX48213 left the depot", Some(1.0f32)),
            ("alice", "lunch with Bob on friday", None),
            ("bob", "my parcel ZX48213 too", Some(2.0)),
        ];
        for (id, (user, content, v)) in ids.iter().zip(rows) {
            sqlx::query(
                "INSERT INTO memories (id, user_id, user_key, content, content_hash, tags, metadata, \
                 created_at, updated_at, embedding, embedding_model) \
                 VALUES (?, ?, ?, ?, ?, '[]', '{}', 1, 1, ?, ?)",
            )
            .bind(id.to_string())
            .bind(user)
            .bind(format!("k-{user}"))
            .bind(content)
            .bind(id.to_string())
            .bind(v.map(|x| vector_to_bytes(&[x, 0.5])))
            .bind(v.map(|_| "m"))
            .execute(&pool)
            .await
            .expect("a first-schema row");
        }
        pool.close().await;

        let store = SqliteStore::open(&url, 2).await.expect("migrated");
        assert_eq!(
            keyword_ids(&store, "alice", &["zx48213"]).await,
            vec![ids[0]]
        );
        let entries = store.index_entries(&ids).await.expect("entries");
        let mut got: Vec<(Uuid, Vec<f32>)> = entries
            .into_iter()
            .map(|e| (e.id, e.embedding.vector))
            .collect();
        got.sort_by_key(|(id, _)| *id);
        assert_eq!(
            got,
            vec![(ids[0], vec![1.0, 0.5]), (ids[2], vec![2.0, 0.5])]
        );
        assert_eq!(embedded(&store).await, 2);

        // A memory written after the migration gets a fresh key.
        let new = row("alice", "another ZX48213 note", "new", Some(vec![3.0, 0.5]));
        let new_id = new.memory.id;
        store.insert(vec![new]).await.expect("insert");
        assert_eq!(keyword_ids(&store, "alice", &["zx48213"]).await.len(), 2);
        assert_eq!(embedded(&store).await, 3);

        // New content: its words replace the old ones in the index.
        let patched = store
            .update("alice", ids[1], content_patch("dinner with Carol"))
            .await
            .expect("update");
        assert!(patched.is_some());
        assert_eq!(keyword_ids(&store, "alice", &["carol"]).await, vec![ids[1]]);
        assert!(keyword_ids(&store, "alice", &["lunch"]).await.is_empty());

        assert!(store.delete("alice", ids[0]).await.expect("delete"));
        assert_eq!(
            keyword_ids(&store, "alice", &["zx48213", "depot"]).await,
            vec![new_id]
        );
        let left = store.index_entries(&ids).await.expect("entries");
        assert_eq!(left.len(), 1, "bob's embedding only");
        let terms: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM memory_terms WHERE memory_terms MATCH ?")
                .bind(match_expr_for("alice", "depot"))
                .fetch_one(&store.write)
                .await
                .expect("terms count");
        assert_eq!(terms, 0, "the deleted memory's terms went with it");
    }

    /// A write looks for its duplicates by user and content hash, through
    /// the index on both: not through every user's copies of the hash, nor
    /// every memory of the user.
    #[tokio::test]
    async fn the_duplicate_lookup_reads_the_index_on_user_and_hash() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("m.db").display());
        let store = SqliteStore::open(&url, 1).await.expect("store");
        for pairs in [
            vec![("u1", "h1")],
            vec![("u1", "h1"), ("u2", "h2"), ("u1", "h3")],
        ] {
            let mut qb = QueryBuilder::<Sqlite>::new("EXPLAIN QUERY PLAN ");
            push_live_by_hash(&mut qb, &pairs, 0);
            let plan: Vec<String> = qb
                .build()
                .fetch_all(&store.write)
                .await
                .expect("plan")
                .iter()
                .map(|r| r.try_get("detail").expect("detail"))
                .collect();
            assert!(
                plan.iter().any(|p| p.contains(&format!(
                    "SEARCH m USING INDEX {USER_HASH_INDEX} (user_id=? AND content_hash=?)"
                ))),
                "{plan:?}"
            );
            assert!(!plan.iter().any(|p| p.starts_with("SCAN m")), "{plan:?}");
        }
    }

    /// A database whose keyword terms were made before accents were folded
    /// (`keyword::fold`) is indexed again when it migrates: its memories are
    /// found without their accents, only once each, and plain ASCII ones as
    /// before.
    #[tokio::test]
    async fn terms_made_before_folding_are_indexed_again() {
        let (_dir, url, ids) = db_before(FOLD_MIGRATION, &unfolded_terms()).await;

        let store = SqliteStore::open(&url, 2).await.expect("migrated");
        assert_refolded(&store, &ids).await;
        let indexed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM memory_terms")
            .fetch_one(&store.write)
            .await
            .expect("count");
        assert_eq!(indexed, 3);
    }

    /// A database migrated up to just before `migration`, holding alice's
    /// memories with the terms an older version indexed them with (`rows`:
    /// content and terms): its folder, its URL and the memories' ids.
    async fn db_before(
        migration: i64,
        rows: &[(&str, String)],
    ) -> (tempfile::TempDir, String, Vec<Uuid>) {
        let (dir, url, pool) = unmigrated_db().await;
        migrate_through(&pool, migration - 1)
            .await
            .expect("the schema before the migration");
        let ids = insert_old_terms(&pool, rows).await;
        pool.close().await;
        (dir, url, ids)
    }

    /// Stores alice's memories with the terms an older version indexed
    /// them with (`rows`: content and terms), as a migration test's start.
    async fn insert_old_terms(pool: &SqlitePool, rows: &[(&str, String)]) -> Vec<Uuid> {
        let mut ids = Vec::new();
        for (rid, (content, terms)) in (1i64..).zip(rows) {
            let id = Uuid::now_v7();
            ids.push(id);
            sqlx::query(
                "INSERT INTO memories (rid, id, user_id, content, content_hash, tags, metadata, \
                 created_at, updated_at) VALUES (?, ?, 'alice', ?, ?, '[]', '{}', ?, ?)",
            )
            .bind(rid)
            .bind(id.to_string())
            .bind(content)
            .bind(id.to_string())
            .bind(rid)
            .bind(rid)
            .execute(pool)
            .await
            .expect("a memory");
            sqlx::query("INSERT INTO memory_terms (rowid, terms) VALUES (?, ?)")
                .bind(rid)
                .bind(terms)
                .execute(pool)
                .await
                .expect("its old terms");
        }
        ids
    }

    /// A database whose keyword terms were made before runs of CJK
    /// characters made bigrams is indexed again when it migrates, the
    /// memories holding CJK characters once folded only (`⼈` is `人`): they
    /// are found by a word inside a sentence and by one character, only once
    /// each. Another start-up changes nothing, and running the migration
    /// again neither.
    #[tokio::test]
    async fn terms_made_before_cjk_bigrams_are_indexed_again() {
        let (_dir, url, ids) = db_before(CJK_MIGRATION, &unsplit_cjk_terms()).await;

        // Migrates; another start-up finds nothing to do; the migration,
        // forgotten, runs again over memories already indexed the new way.
        for pass in ["migrates", "starts again", "migrates again"] {
            let store = SqliteStore::open(&url, 2).await.expect(pass);
            assert_cjk_split(&store, &ids).await;
            let indexed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM memory_terms")
                .fetch_one(&store.write)
                .await
                .expect("count");
            assert_eq!(indexed, 6, "{pass}");
            if pass == "starts again" {
                sqlx::query("DELETE FROM memory_schema_migrations WHERE version = ?")
                    .bind(CJK_MIGRATION)
                    .execute(&store.write)
                    .await
                    .expect("forget the migration");
            }
            store.write.close().await;
        }
    }

    #[test]
    fn stamps_always_move_forward() {
        assert_eq!(next_stamp(0, 100), 100, "the clock");
        assert_eq!(next_stamp(100, 100), 101, "two in one microsecond");
        assert_eq!(next_stamp(500, 100), 501, "a clock stepped back");
        assert_eq!(next_stamp(i64::MAX, 100), i64::MAX);
    }

    fn match_expr_for(user: &str, term: &str) -> String {
        crate::keyword::match_expr(&user_key(user), &[term.to_string()])
    }
}
