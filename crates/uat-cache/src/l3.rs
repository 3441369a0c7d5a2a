//! L3: a table in the configured SQL database (SQLite by default,
//! PostgreSQL for `postgres://` URLs). Rows carry `expires_at` (unix ms,
//! indexed) and are purged periodically; reads ignore expired rows. Pattern
//! invalidation is an indexed match on `(namespace, model)`.
//! Migrations run at start-up and are recorded in `uat_cache_migrations`.
//!
//! A row is found by `h`, a 64-bit integer taken from the key's SHA-256
//! ([`CacheKey::row_id`]), and the full key is compared as well. The keys
//! are random, so every row written lands on a different page of whatever
//! finds it. On PostgreSQL (shared by replicas that each write to it) that
//! is a unique index on `h`: an index of 8-byte integers has a tenth of the
//! pages of one over the ~90-byte text keys, and a batch of writes dirties
//! about half as many pages (schema version 2; on SQLite the write cost per
//! row fell from ~17 µs to ~9 µs of CPU, `scripts/bench-l3-sqlite.py`).
//!
//! On SQLite (the embedded default, a file this process owns) there is no
//! index on `h` at all (schema version 3): the level keeps a [`RowMap`] in
//! memory from `h` to the row's `id`, loaded when it opens and kept by its
//! own statements. A write appends; a miss, the common case of a cache that
//! answers from L1, costs a hash lookup instead of an SQL round trip; a hit
//! reads the row by `id`.

use crate::codec;
use crate::error::CacheError;
use crate::key::{CacheKey, KeyPattern};
use crate::level::{CacheLevel, Counters, Hit, Level, LevelStats, Put};
use crate::metrics::{self, METRICS, OpTimer};
use crate::priority;
use crate::row_map::RowMap;
use futures::TryStreamExt;
use sqlx::postgres::PgArguments;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::query::{Query, QueryAs};
use sqlx::sqlite::SqliteArguments;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, QueryBuilder, Sqlite};
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Versioned schema steps; each runs once per database.
const MIGRATIONS_SQLITE: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE IF NOT EXISTS uat_cache_entries (
        key TEXT PRIMARY KEY NOT NULL,
        namespace TEXT NOT NULL,
        model TEXT NOT NULL,
        value BLOB NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS uat_cache_entries_expires_at ON uat_cache_entries (expires_at);
    CREATE INDEX IF NOT EXISTS uat_cache_entries_ns_model ON uat_cache_entries (namespace, model);",
    ),
    // Rows found by `h` instead of the text key: SQLite cannot drop a primary
    // key, so the table is copied. `{ROW_ID}` is replaced by `sqlite_row_id`.
    (
        2,
        "CREATE TABLE uat_cache_entries_v2 (
        h INTEGER NOT NULL,
        key TEXT NOT NULL,
        namespace TEXT NOT NULL,
        model TEXT NOT NULL,
        value BLOB NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE UNIQUE INDEX uat_cache_entries_v2_h ON uat_cache_entries_v2 (h);
    INSERT OR IGNORE INTO uat_cache_entries_v2 (h, key, namespace, model, value, expires_at)
        SELECT {ROW_ID}, key, namespace, model, value, expires_at FROM uat_cache_entries;
    DROP TABLE uat_cache_entries;
    ALTER TABLE uat_cache_entries_v2 RENAME TO uat_cache_entries;
    CREATE UNIQUE INDEX uat_cache_entries_h ON uat_cache_entries (h);
    DROP INDEX uat_cache_entries_v2_h;
    CREATE INDEX uat_cache_entries_expires_at ON uat_cache_entries (expires_at);
    CREATE INDEX uat_cache_entries_ns_model ON uat_cache_entries (namespace, model);",
    ),
    // Rows found through the level's map from `h` to `id` (see
    // `row_map.rs`), not an index on `h`. AUTOINCREMENT: an `id` is never
    // given to another row, so a write through a stale map entry can only
    // put back the row of its own key.
    (
        3,
        "CREATE TABLE uat_cache_entries_v3 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        h INTEGER NOT NULL,
        key TEXT NOT NULL,
        namespace TEXT NOT NULL,
        model TEXT NOT NULL,
        value BLOB NOT NULL,
        expires_at BIGINT NOT NULL
    );
    INSERT INTO uat_cache_entries_v3 (h, key, namespace, model, value, expires_at)
        SELECT h, key, namespace, model, value, expires_at FROM uat_cache_entries ORDER BY rowid;
    DROP TABLE uat_cache_entries;
    ALTER TABLE uat_cache_entries_v3 RENAME TO uat_cache_entries;
    CREATE INDEX uat_cache_entries_expires_at ON uat_cache_entries (expires_at);
    CREATE INDEX uat_cache_entries_ns_model ON uat_cache_entries (namespace, model);",
    ),
];

const MIGRATIONS_PG: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE IF NOT EXISTS uat_cache_entries (
        key TEXT PRIMARY KEY NOT NULL,
        namespace TEXT NOT NULL,
        model TEXT NOT NULL,
        value BYTEA NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS uat_cache_entries_expires_at ON uat_cache_entries (expires_at);
    CREATE INDEX IF NOT EXISTS uat_cache_entries_ns_model ON uat_cache_entries (namespace, model text_pattern_ops);",
    ),
    // Rows found by `h` (see the module doc); the text key's index goes. A
    // collision of two stored keys' 64 bits (odds ~n²/2⁶⁵) keeps one of them.
    (
        2,
        "ALTER TABLE uat_cache_entries ADD COLUMN h BIGINT;
    UPDATE uat_cache_entries SET h = ('x' || substr(key, length(key) - 63, 16))::bit(64)::bigint;
    DELETE FROM uat_cache_entries a USING uat_cache_entries b WHERE a.h = b.h AND a.ctid < b.ctid;
    ALTER TABLE uat_cache_entries ALTER COLUMN h SET NOT NULL;
    ALTER TABLE uat_cache_entries DROP CONSTRAINT uat_cache_entries_pkey;
    CREATE UNIQUE INDEX uat_cache_entries_h ON uat_cache_entries (h);",
    ),
    // Replicas still at schema 1 share the table during a rolling upgrade:
    // they look rows up by the text key and upsert `ON CONFLICT (key)`
    // without `h`. Schema 2 broke both (no index on the key: a table scan
    // per lookup, and every write refused). Their index comes back, and a
    // trigger fills `h` for a row written without it. The key index costs
    // each write one more index entry on PostgreSQL (SQLite, which pays for
    // every index page it dirties, has no replicas to wait for).
    (
        3,
        "CREATE UNIQUE INDEX IF NOT EXISTS uat_cache_entries_key ON uat_cache_entries (key);
    CREATE OR REPLACE FUNCTION uat_cache_entries_fill_h() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        IF NEW.h IS NULL THEN
            NEW.h := ('x' || substr(NEW.key, length(NEW.key) - 63, 16))::bit(64)::bigint;
        END IF;
        RETURN NEW;
    END
    $fn$;
    DROP TRIGGER IF EXISTS uat_cache_entries_fill_h ON uat_cache_entries;
    CREATE TRIGGER uat_cache_entries_fill_h BEFORE INSERT ON uat_cache_entries
        FOR EACH ROW EXECUTE FUNCTION uat_cache_entries_fill_h();",
    ),
];

/// SQLite's expression for [`CacheKey::row_id`] of the stored key in column
/// `key`: the hash part's first 16 hex digits, summed digit by digit (SQLite
/// has no hex-to-integer function), the first one signed so the sum is the
/// two's-complement value without overflowing.
fn sqlite_row_id() -> String {
    let digit = |i: usize| {
        format!(
            "(instr('0123456789abcdef', substr(key, {}, 1)) - 1)",
            i as i64 - 64
        )
    };
    let mut sql = format!(
        "(({d} - 16 * ({d} >= 8)) * 1152921504606846976",
        d = digit(0)
    );
    for i in 1..16 {
        sql.push_str(&format!(" + {} * {}", digit(i), 1i64 << (4 * (15 - i))));
    }
    sql.push(')');
    sql
}

/// A pool handed to an operation.
#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The database behind the level.
enum Store {
    Sqlite {
        /// Reads, deletes and purges.
        readers: SqlitePool,
        /// The one connection that writes batches, on a worker thread of
        /// lower CPU priority (see [`crate::priority`]).
        writer: SqlitePool,
        /// Where each stored key's row is (shared with a batch's task).
        rows: Arc<RowMap>,
    },
    Postgres(PgPool),
}

impl Store {
    /// The pool of reads, deletes and purges.
    fn pool(&self) -> Pool {
        match self {
            Store::Sqlite { readers, .. } => Pool::Sqlite(readers.clone()),
            Store::Postgres(p) => Pool::Postgres(p.clone()),
        }
    }

    /// SQLite's row map.
    fn rows(&self) -> Option<&RowMap> {
        match self {
            Store::Sqlite { rows, .. } => Some(rows),
            Store::Postgres(_) => None,
        }
    }
}

/// The L3 level. Cheap to clone.
#[derive(Clone)]
pub struct SqlLevel {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    timeout: Duration,
    healthy: AtomicBool,
    reconnecting: AtomicBool,
    counters: Counters,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl SqlLevel {
    /// Connects to `url` (`sqlite://PATH` — the file is created — or
    /// `postgres://...`), runs the migrations and, on SQLite, loads the map
    /// of its rows. Unlike L2, a database that cannot be reached (or read)
    /// at start-up is an error: the caller decides whether to run without L3.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Self, CacheError> {
        let store = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(timeout.max(Duration::from_secs(1)))
                .connect(url)
                .await?;
            migrate(&Pool::Postgres(pool.clone())).await?;
            Store::Postgres(pool)
        } else {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // A cache need not survive a power cut: WAL + NORMAL keeps the
                // file consistent and every commit through a process crash,
                // without an fsync per write batch (FULL, sqlx's default).
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                // Checkpoint every 8,192 WAL pages (32 MiB; the memory
                // store's connections to the same file do too), not every
                // 1,000, after which nearly every commit of a write batch
                // (then dirtying a page of an id index per few rows) was
                // followed by a checkpoint rewriting those pages into the file.
                .pragma("wal_autocheckpoint", "8192");
            let readers = SqlitePoolOptions::new()
                .max_connections(max_connections.clamp(1, 8))
                .acquire_timeout(timeout.max(Duration::from_secs(1)))
                .connect_with(opts.clone())
                .await?;
            // SQLite has one writer at a time anyway: one connection writes
            // the batches, its worker thread reniced whenever it is (re)made.
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(timeout.max(Duration::from_secs(1)))
                .after_connect(|_, _| {
                    Box::pin(async {
                        priority::lower_threads_named(
                            priority::WRITER_THREAD,
                            priority::WRITER_NICE,
                        );
                        Ok(())
                    })
                })
                .connect_with(
                    opts.thread_name(|_| priority::WRITER_THREAD.to_string())
                        // A batch's multi-row upserts, inside one
                        // transaction, keep a statement journal (the
                        // pages each changes, to undo it alone on an
                        // error), a temporary file by default: a pwrite
                        // per page, a fifth of the writer's time in a
                        // perf profile of `l3_sqlite`. In memory it is a
                        // copy. Only this connection writes so.
                        .pragma("temp_store", "memory"),
                )
                .await?;
            migrate(&Pool::Sqlite(readers.clone())).await?;
            Store::Sqlite {
                rows: Arc::new(load_rows(&readers).await?),
                readers,
                writer,
            }
        };
        Ok(SqlLevel {
            inner: Arc::new(Inner {
                store,
                timeout,
                healthy: AtomicBool::new(true),
                reconnecting: AtomicBool::new(false),
                counters: Counters::default(),
            }),
        })
    }

    /// Starts the periodic purge of expired rows (stops when the level is dropped).
    pub fn start_purge(&self, every: Duration) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let level = SqlLevel { inner };
                if let Err(e) = level.purge_expired().await {
                    tracing::debug!(level = "l3", error = %e, "purge failed");
                }
            }
        });
    }

    /// Deletes expired rows now; returns how many went.
    pub async fn purge_expired(&self) -> Result<u64, CacheError> {
        let now = now_ms();
        let n = self
            .delete_rows(
                "purge",
                sqlx::query_as(
                    "DELETE FROM uat_cache_entries WHERE expires_at <= ? RETURNING id, h",
                )
                .bind(now),
                sqlx::query("DELETE FROM uat_cache_entries WHERE expires_at <= $1").bind(now),
            )
            .await?;
        METRICS.evictions.with_label_values(&["l3"]).inc_by(n);
        Ok(n)
    }

    /// Where the row of `h` is, before any SQL: on SQLite at the `id` the
    /// row map gives, or absent when the map has none and L3 is up (while it
    /// is down the operation reports that instead); on PostgreSQL, found by
    /// `h` (`At(None)`).
    fn find_row(&self, h: i64) -> Row {
        match self.inner.store.rows() {
            Some(map) => match map.get(h) {
                None if self.healthy() => Row::Absent,
                id => Row::At(id),
            },
            None => Row::At(None),
        }
    }

    /// Runs a delete: `sqlite` (returning the `(id, h)` of its rows, whose
    /// keys leave the map) or `postgres`; returns how many rows went.
    async fn delete_rows(
        &self,
        op: &'static str,
        sqlite: QueryAs<'static, Sqlite, (i64, i64), SqliteArguments<'static>>,
        postgres: Query<'static, Postgres, PgArguments>,
    ) -> Result<u64, CacheError> {
        // Keys recorded from here on (a batch that puts a row back while
        // this runs) are not forgotten.
        let before = self.inner.store.rows().map(RowMap::epoch);
        self.run(op, |pool| async move {
            Ok(match pool {
                Pool::Sqlite(p) => {
                    let rows = sqlite.fetch_all(&p).await?;
                    if let (Some(map), Some(before)) = (self.inner.store.rows(), before) {
                        map.forget(&rows, before);
                    }
                    rows.len() as u64
                }
                Pool::Postgres(p) => postgres.execute(&p).await?.rows_affected(),
            })
        })
        .await
    }

    /// Counts rows, live or expired, under a namespace (tests of the purge).
    #[doc(hidden)]
    pub async fn count_rows(&self, namespace: &str) -> Result<i64, CacheError> {
        let ns = namespace.to_string();
        self.run("stats", |pool| async move {
            Ok(match pool {
                Pool::Sqlite(p) => {
                    sqlx::query_scalar::<_, i64>(
                        "SELECT COUNT(*) FROM uat_cache_entries WHERE namespace = ?",
                    )
                    .bind(ns)
                    .fetch_one(&p)
                    .await?
                }
                Pool::Postgres(p) => {
                    sqlx::query_scalar::<_, i64>(
                        "SELECT COUNT(*) FROM uat_cache_entries WHERE namespace = $1",
                    )
                    .bind(ns)
                    .fetch_one(&p)
                    .await?
                }
            })
        })
        .await
    }

    /// Writes raw bytes without the envelope (tests of corrupt-entry handling).
    #[doc(hidden)]
    pub async fn put_raw_for_test(
        &self,
        key: &CacheKey,
        raw: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        self.upsert(vec![(key.clone(), raw, now_ms().saturating_add(ms(ttl)))])
            .await
    }

    /// Runs `f` on the pool of reads, deletes and purges, unless L3 is
    /// down, within the level's timeout; a lost connection or a timeout marks
    /// L3 down until a probe succeeds.
    async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, CacheError>
    where
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        self.run_on(false, op, f(self.inner.store.pool())).await
    }

    /// Runs `work` (not started before) as [`SqlLevel::run`] does;
    /// `on_writer`: it uses SQLite's writer connection, where a timeout does
    /// not mark L3 down (see below).
    async fn run_on<T, Fut>(
        &self,
        on_writer: bool,
        op: &'static str,
        work: Fut,
    ) -> Result<T, CacheError>
    where
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        if !self.inner.healthy.load(Ordering::Relaxed) {
            return Err(CacheError::Unavailable("l3"));
        }
        let _t = OpTimer::start("l3", op);
        match tokio::time::timeout(self.inner.timeout, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if is_connection_error(&e) {
                    self.mark_down(&e.to_string());
                }
                Err(CacheError::Sql(e))
            }
            Err(_) => {
                // A batch on SQLite's writer connection that runs long waits
                // for another writer's lock or, on a saturated CPU, for its
                // lowered priority: no sign that the file is gone. Reads go
                // on (WAL readers never wait for a writer). A batch still
                // waiting for the lock is dropped; one that holds it runs on
                // in its own task to the end (see `upsert`). Either way it
                // counts as an error.
                if !on_writer {
                    self.mark_down("operation timed out");
                }
                Err(CacheError::Timeout {
                    level: "l3",
                    after_ms: u64::try_from(self.inner.timeout.as_millis()).unwrap_or(u64::MAX),
                })
            }
        }
    }

    fn mark_down(&self, why: &str) {
        if self.inner.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                level = "l3",
                reason = why,
                "cache database unavailable: skipping L3 until it recovers"
            );
        }
        if !self.inner.reconnecting.swap(true, Ordering::AcqRel) {
            tokio::spawn(probe_loop(Arc::downgrade(&self.inner)));
        }
    }

    async fn upsert(&self, rows: Vec<(CacheKey, Vec<u8>, i64)>) -> Result<(), CacheError> {
        let rows = last_per_key(rows);
        let (writer, map) = match &self.inner.store {
            Store::Sqlite { writer, rows, .. } => (writer.clone(), rows.clone()),
            Store::Postgres(p) => {
                return self
                    .run_on(false, "put", async move {
                        let mut tx = p.begin().await?;
                        for rows in in_chunks(rows) {
                            upsert_rows(rows).build().execute(&mut *tx).await?;
                        }
                        tx.commit().await
                    })
                    .await;
            }
        };
        self.run_on(true, "put", async move {
            // The write lock first (IMMEDIATE), so that no other connection
            // can take the ids chosen next. L3's timeout bounds this wait
            // (another writer may hold the lock). Once the lock is held the
            // batch finishes in a task of its own, which the timeout does
            // not cancel: cancelled after its COMMIT went to SQLite, its rows
            // would be written but never recorded in the map, unseen (and
            // missed by a key delete) until a restart loaded them back. What
            // is left is a few milliseconds of work on a held lock.
            let tx = writer.begin_with("BEGIN IMMEDIATE").await?;
            tokio::spawn(async move { write_locked(tx, rows, &map).await })
                .await
                .map_err(|e| sqlx::Error::Protocol(format!("L3 write batch: {e}")))?
        })
        .await
    }
}

/// Where a key's row is, from [`SqlLevel::find_row`].
enum Row {
    /// No row holds it: no SQL needed.
    Absent,
    /// SQLite: the row's `id` (`None` only while L3 is down); PostgreSQL: `None`.
    At(Option<i64>),
}

/// Writes a SQLite batch in `tx` (holding the write lock), commits, and
/// records the rows' ids in `map`. Each row goes where the map says
/// its key is (put back there if it was deleted meanwhile) or, new,
/// after the largest id ever given (AUTOINCREMENT's record). Ids chosen
/// here, not returned by SQLite: rows coming back one by one from sqlx's
/// worker thread would wake this task for each.
async fn write_locked(
    mut tx: sqlx::Transaction<'static, Sqlite>,
    rows: Vec<(CacheKey, Vec<u8>, i64)>,
    map: &RowMap,
) -> Result<(), sqlx::Error> {
    let last: Option<i64> =
        sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'uat_cache_entries'")
            .fetch_optional(&mut *tx)
            .await?;
    let mut next = last.unwrap_or(0);
    let rows: Vec<_> = rows
        .into_iter()
        .map(|(k, v, exp)| {
            let id = map.get(k.row_id()).unwrap_or_else(|| {
                next += 1;
                next
            });
            (id, k, v, exp)
        })
        .collect();
    let written: Vec<(i64, i64)> = rows.iter().map(|(id, k, _, _)| (*id, k.row_id())).collect();
    for rows in in_chunks(rows) {
        replace_rows(rows).build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    map.record(&written);
    Ok(())
}

/// SQLite: the map of the live rows, read from the table. Of two rows of one
/// key (left by another process, or by a release before the map kept every
/// row), the later is found.
async fn load_rows(p: &SqlitePool) -> Result<RowMap, CacheError> {
    let map = RowMap::default();
    let mut rows = sqlx::query_as::<_, (i64, i64)>(
        "SELECT id, h FROM uat_cache_entries WHERE expires_at > ? ORDER BY id",
    )
    .bind(now_ms())
    .fetch(p);
    while let Some(row) = rows.try_next().await? {
        map.record(&[row]);
    }
    Ok(map)
}

/// Rows per upsert statement. A batch is sent as statements of this many
/// rows (and one of the rest) in one transaction: one commit per batch, and
/// at most this many distinct statements for the connections' caches. One
/// statement per batch had a new text (a new prepare, ~6,000 parameters)
/// whenever the batch size changed, which with a write delay is every batch.
const UPSERT_CHUNK: usize = 64;

/// `rows` cut into [`UPSERT_CHUNK`]s.
fn in_chunks<T>(rows: Vec<T>) -> Vec<Vec<T>> {
    let mut out = Vec::with_capacity(rows.len().div_ceil(UPSERT_CHUNK));
    let mut it = rows.into_iter();
    loop {
        let chunk: Vec<_> = it.by_ref().take(UPSERT_CHUNK).collect();
        if chunk.is_empty() {
            return out;
        }
        out.push(chunk);
    }
}

/// PostgreSQL: one upsert statement for a chunk of rows (6 parameters a row).
fn upsert_rows<'a>(rows: Vec<(CacheKey, Vec<u8>, i64)>) -> QueryBuilder<'a, Postgres> {
    let mut qb = QueryBuilder::new(
        "INSERT INTO uat_cache_entries (h, key, namespace, model, value, expires_at) ",
    );
    qb.push_values(rows, |mut b, (k, v, exp)| {
        b.push_bind(k.row_id())
            .push_bind(k.as_str().to_owned())
            .push_bind(k.namespace())
            .push_bind(k.model())
            .push_bind(v)
            .push_bind(exp);
    });
    qb.push(
        " ON CONFLICT (h) DO UPDATE SET key = excluded.key, namespace = excluded.namespace, \
         model = excluded.model, value = excluded.value, expires_at = excluded.expires_at",
    );
    qb
}

/// SQLite: one statement for a chunk of rows `(id, key, value, expires_at)`
/// (7 parameters a row) that writes each at its `id`, replacing the row there.
fn replace_rows<'a>(rows: Vec<(i64, CacheKey, Vec<u8>, i64)>) -> QueryBuilder<'a, Sqlite> {
    let mut qb = QueryBuilder::new(
        "INSERT OR REPLACE INTO uat_cache_entries (id, h, key, namespace, model, value, expires_at) ",
    );
    qb.push_values(rows, |mut b, (id, k, v, exp)| {
        b.push_bind(id)
            .push_bind(k.row_id())
            .push_bind(k.as_str().to_owned())
            .push_bind(k.namespace())
            .push_bind(k.model())
            .push_bind(v)
            .push_bind(exp);
    });
    qb
}

/// The rows of a batch with one row per row id, the last written (a
/// statement may not upsert one row twice: PostgreSQL refuses, and the order
/// would be SQLite's choice).
fn last_per_key(rows: Vec<(CacheKey, Vec<u8>, i64)>) -> Vec<(CacheKey, Vec<u8>, i64)> {
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    let mut out: Vec<_> = rows
        .into_iter()
        .rev()
        .filter(|(k, _, _)| seen.insert(k.row_id()))
        .collect();
    out.reverse();
    out
}

async fn migrate(pool: &Pool) -> Result<(), CacheError> {
    match pool {
        Pool::Sqlite(p) => {
            sqlx::raw_sql("CREATE TABLE IF NOT EXISTS uat_cache_migrations (version BIGINT PRIMARY KEY NOT NULL)")
                .execute(p)
                .await?;
            for &(v, sql) in MIGRATIONS_SQLITE {
                let done: Option<i64> = sqlx::query_scalar(
                    "SELECT version FROM uat_cache_migrations WHERE version = ?",
                )
                .bind(v)
                .fetch_optional(p)
                .await?;
                if done.is_none() {
                    let sql = sql.replace("{ROW_ID}", &sqlite_row_id());
                    let mut tx = p.begin().await?;
                    sqlx::raw_sql(&sql).execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO uat_cache_migrations (version) VALUES (?) ON CONFLICT DO NOTHING")
                        .bind(v)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                }
            }
        }
        Pool::Postgres(p) => {
            // Serialize concurrent start-ups of several replicas.
            let mut tx = p.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(7455320019)")
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql("CREATE TABLE IF NOT EXISTS uat_cache_migrations (version BIGINT PRIMARY KEY NOT NULL)")
                .execute(&mut *tx)
                .await?;
            for (v, sql) in MIGRATIONS_PG {
                let done: Option<i64> = sqlx::query_scalar(
                    "SELECT version FROM uat_cache_migrations WHERE version = $1",
                )
                .bind(v)
                .fetch_optional(&mut *tx)
                .await?;
                if done.is_none() {
                    sqlx::raw_sql(sql).execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO uat_cache_migrations (version) VALUES ($1) ON CONFLICT DO NOTHING")
                        .bind(v)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        }
    }
    Ok(())
}

async fn probe_loop(weak: Weak<Inner>) {
    let mut delay = Duration::from_millis(200);
    loop {
        tokio::time::sleep(delay).await;
        let Some(inner) = weak.upgrade() else { return };
        let ok = match inner.store.pool() {
            Pool::Sqlite(p) => matches!(
                tokio::time::timeout(inner.timeout, sqlx::query("SELECT 1").execute(&p)).await,
                Ok(Ok(_))
            ),
            Pool::Postgres(p) => matches!(
                tokio::time::timeout(inner.timeout, sqlx::query("SELECT 1").execute(&p)).await,
                Ok(Ok(_))
            ),
        };
        if ok {
            inner.healthy.store(true, Ordering::Release);
            inner.reconnecting.store(false, Ordering::Release);
            tracing::info!(level = "l3", "cache database is back: L3 re-enabled");
            return;
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    )
}

impl CacheLevel for SqlLevel {
    fn level(&self) -> Level {
        Level::L3
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Hit>, CacheError> {
        let h = key.row_id();
        let Row::At(id) = self.find_row(h) else {
            self.inner.counters.miss();
            metrics::L3.miss.inc();
            return Ok(None);
        };
        let now = now_ms();
        let k = key.as_str().to_string();
        let res = self
            .run("get", |pool| async move {
                match pool {
                    Pool::Sqlite(p) => {
                        sqlx::query_as::<_, (Vec<u8>, i64)>(
                            "SELECT value, expires_at FROM uat_cache_entries WHERE id = ? AND key = ? AND expires_at > ?",
                        )
                        .bind(id)
                        .bind(k)
                        .bind(now)
                        .fetch_optional(&p)
                        .await
                    }
                    Pool::Postgres(p) => {
                        sqlx::query_as::<_, (Vec<u8>, i64)>(
                            "SELECT value, expires_at FROM uat_cache_entries WHERE h = $1 AND key = $2 AND expires_at > $3",
                        )
                        .bind(h)
                        .bind(k)
                        .bind(now)
                        .fetch_optional(&p)
                        .await
                    }
                }
            })
            .await;
        let row = match res {
            Ok(r) => r,
            Err(e) => {
                metrics::request(
                    "l3",
                    if matches!(e, CacheError::Unavailable(_)) {
                        "skipped"
                    } else {
                        "error"
                    },
                );
                return Err(e);
            }
        };
        let Some((raw, expires_at)) = row else {
            self.inner.counters.miss();
            metrics::L3.miss.inc();
            return Ok(None);
        };
        match codec::decode(&raw) {
            Ok((value, stored_at)) => {
                self.inner.counters.hit();
                metrics::L3.hit.inc();
                let left = u64::try_from(expires_at.saturating_sub(now)).unwrap_or(0);
                Ok(Some(Hit {
                    value,
                    ttl: Duration::from_millis(left),
                    stored_at,
                }))
            }
            Err(e) => {
                tracing::warn!(level = "l3", key = %key, error = %e, "corrupt cache entry deleted");
                self.inner.counters.miss();
                metrics::request("l3", "corrupt");
                let _ = self.delete(key).await;
                Ok(None)
            }
        }
    }

    async fn put_many(&self, items: Vec<Put>) -> Result<(), CacheError> {
        if items.is_empty() {
            return Ok(());
        }
        let n = items.len() as u64;
        let now = now_ms();
        let rows = items
            .into_iter()
            .map(|p| {
                let expires_at = now.saturating_add(ms(p.ttl));
                (p.key, codec::encode(&p.value, p.stored_at), expires_at)
            })
            .collect();
        let res = self.upsert(rows).await;
        let result = match &res {
            Ok(()) => "ok",
            Err(CacheError::Unavailable(_)) => "skipped",
            Err(_) => "error",
        };
        METRICS.writes.with_label_values(&["l3", result]).inc_by(n);
        res
    }

    async fn delete(&self, key: &CacheKey) -> Result<u64, CacheError> {
        let h = key.row_id();
        let Row::At(id) = self.find_row(h) else {
            return Ok(0);
        };
        let k = key.as_str().to_string();
        self.delete_rows(
            "delete",
            sqlx::query_as(
                "DELETE FROM uat_cache_entries WHERE id = ? AND key = ? RETURNING id, h",
            )
            .bind(id)
            .bind(k.clone()),
            sqlx::query("DELETE FROM uat_cache_entries WHERE h = $1 AND key = $2")
                .bind(h)
                .bind(k),
        )
        .await
    }

    async fn invalidate_pattern(&self, pattern: &KeyPattern) -> Result<u64, CacheError> {
        let ns = pattern.namespace().to_string();
        self.delete_rows(
            "invalidate",
            sqlx::query_as(
                "DELETE FROM uat_cache_entries WHERE namespace = ? AND model GLOB ? RETURNING id, h",
            )
            .bind(ns.clone())
            .bind(pattern.sqlite_glob()),
            sqlx::query(
                "DELETE FROM uat_cache_entries WHERE namespace = $1 AND model LIKE $2 ESCAPE '\\'",
            )
            .bind(ns)
            .bind(pattern.sql_like()),
        )
        .await
    }

    async fn stats(&self) -> Result<LevelStats, CacheError> {
        let mut s = LevelStats {
            healthy: self.healthy(),
            ..LevelStats::default()
        };
        self.inner.counters.fill(&mut s);
        if !s.healthy {
            return Ok(s);
        }
        let now = now_ms();
        let (entries, bytes) = self
            .run("stats", |pool| async move {
                match pool {
                    Pool::Sqlite(p) => {
                        sqlx::query_as::<_, (i64, i64)>(
                            "SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0) FROM uat_cache_entries WHERE expires_at > ?",
                        )
                        .bind(now)
                        .fetch_one(&p)
                        .await
                    }
                    Pool::Postgres(p) => {
                        sqlx::query_as::<_, (i64, i64)>(
                            "SELECT COUNT(*)::BIGINT, COALESCE(SUM(octet_length(value)), 0)::BIGINT FROM uat_cache_entries WHERE expires_at > $1",
                        )
                        .bind(now)
                        .fetch_one(&p)
                        .await
                    }
                }
            })
            .await?;
        s.entries = u64::try_from(entries).unwrap_or(0);
        s.bytes = u64::try_from(bytes).unwrap_or(0);
        METRICS.bytes.with_label_values(&["l3"]).set(bytes);
        Ok(s)
    }

    fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;

    /// A SQLite level in a new folder (kept while the `TempDir` lives), and its URL.
    async fn sqlite_level(timeout: Duration) -> (tempfile::TempDir, String, SqlLevel) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let l3 = SqlLevel::connect(&url, 4, timeout).await.unwrap();
        (dir, url, l3)
    }

    /// SQLite batches go through the writer connection, whose worker thread
    /// runs at a lower priority (made again after a reconnect); the reading
    /// connections keep this process's priority.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn sqlite_batches_are_written_by_a_lower_priority_thread() {
        let (_dir, _url, l3) = sqlite_level(Duration::from_secs(2)).await;
        let key = CacheKey::from_parts("default", "m", &"ab".repeat(32));
        let v = Bytes::from_static(b"{\"choices\":[]}");
        l3.put(&key, v.clone(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            l3.get(&key).await.unwrap().map(|h| h.value),
            Some(v.clone())
        );
        let base = rustix::process::getpriority_process(None).unwrap();
        let expect = base.max(priority::WRITER_NICE);
        let writers = priority::nice_of_threads_named(priority::WRITER_THREAD);
        assert!(!writers.is_empty(), "the writer's thread exists");
        assert!(
            writers.iter().all(|n| *n == expect),
            "{writers:?}, want {expect}"
        );
        // sqlx names its other workers `sqlx-sqlite-worker-N` (15 bytes kept).
        let readers = priority::nice_of_threads_named("sqlx-sqlite-wor");
        assert!(
            !readers.is_empty(),
            "the reading connections' threads exist"
        );
        assert!(
            readers.iter().all(|n| *n == base),
            "{readers:?}, want {base}"
        );
        // A new writer connection (the old one closed) is lowered too.
        let Store::Sqlite { writer: w, .. } = &l3.inner.store else {
            panic!("a SQLite level")
        };
        sqlx::Connection::close(w.acquire().await.unwrap().detach())
            .await
            .unwrap();
        let key2 = CacheKey::from_parts("default", "m", &"cd".repeat(32));
        l3.put(&key2, v.clone(), Duration::from_secs(60))
            .await
            .unwrap();
        assert!(l3.get(&key2).await.unwrap().is_some());
        let writers = priority::nice_of_threads_named(priority::WRITER_THREAD);
        assert!(!writers.is_empty(), "the new writer's thread exists");
        assert!(
            writers.iter().all(|n| *n == expect),
            "{writers:?}, want {expect}"
        );
    }

    /// A write batch that outlasts the timeout because another connection
    /// holds the write lock fails alone: L3 stays up and its reads go on
    /// meanwhile, and the next batch is written once the lock is gone.
    /// (It used to mark L3 down, skipping every read until a probe.)
    #[tokio::test]
    async fn a_sqlite_write_batch_held_up_by_a_lock_does_not_take_l3_down() {
        use sqlx::Connection as _;
        let (_dir, url, l3) = sqlite_level(Duration::from_secs(1)).await;
        let ttl = Duration::from_secs(60);
        let v = Bytes::from_static(b"{\"choices\":[]}");
        let first = CacheKey::from_parts("default", "m", &"ab".repeat(32));
        let second = CacheKey::from_parts("default", "m", &"cd".repeat(32));
        l3.put(&first, v.clone(), ttl).await.unwrap();
        let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        let res = l3.put(&second, v.clone(), ttl).await;
        assert!(
            matches!(res, Err(CacheError::Timeout { .. })),
            "the batch waits for the lock past the timeout: {res:?}"
        );
        assert!(l3.healthy(), "a held-up write does not take L3 down");
        assert_eq!(
            l3.get(&first).await.unwrap().map(|h| h.value),
            Some(v.clone()),
            "reads go on while another connection holds the write lock"
        );
        sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
        // The held-up batch's connection comes back once SQLite's busy
        // handler wakes (it sleeps up to 100 ms between tries): retried
        // while it is still on its way.
        let since = std::time::Instant::now();
        loop {
            match l3.put(&second, v.clone(), ttl).await {
                Ok(()) => break,
                Err(CacheError::Timeout { .. }) if since.elapsed() < Duration::from_secs(10) => {}
                Err(e) => panic!("the batch after the lock: {e:?}"),
            }
        }
        assert_eq!(l3.get(&second).await.unwrap().map(|h| h.value), Some(v));
    }

    /// A batch that outlasts L3's timeout once it holds the write lock is
    /// finished, not cut short: every row it writes is in the map. (Cut
    /// short once its COMMIT had gone to SQLite, its rows were written but
    /// unseen, and a key delete missed them, until a restart loaded them.)
    /// The timeout is short (20 ms) and the batch long; the wait for the lock
    /// can run out too on a loaded machine (nothing is written then), so a
    /// batch is tried until one gets the lock in time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sqlite_batch_past_the_timeout_once_it_holds_the_lock_records_every_row() {
        use sqlx::Connection as _;
        let (_dir, url, l3) = sqlite_level(Duration::from_millis(20)).await;
        let map = l3.inner.store.rows().unwrap();
        let mut check = sqlx::SqliteConnection::connect(&url).await.unwrap();
        // Many small rows: hundreds of statements, each a round trip to
        // SQLite's worker thread, far past 20 ms.
        const ROWS: usize = 50_000;
        let value = Bytes::from_static(b"{\"choices\":[]}");
        for attempt in 0..10 {
            let batch: Vec<_> = (0..ROWS)
                .map(|i| {
                    // Distinct in the first 16 digits (the row id).
                    let hash = format!("{:016x}{:048x}", attempt * ROWS + i + 1, 0);
                    let key = CacheKey::from_parts("default", "m", &hash);
                    Put::new(key, value.clone(), Duration::from_secs(60))
                })
                .collect();
            match l3.put_many(batch).await {
                Err(CacheError::Timeout { .. }) => {}
                Ok(()) => continue, // done within 20 ms after all: try again
                Err(e) => panic!("{e:?}"),
            }
            let since = std::time::Instant::now();
            let rows = loop {
                let rows: Vec<(i64, i64)> = sqlx::query_as("SELECT id, h FROM uat_cache_entries")
                    .fetch_all(&mut check)
                    .await
                    .unwrap();
                if rows.len() == ROWS || since.elapsed() > Duration::from_secs(5) {
                    break rows;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            if rows.is_empty() {
                continue; // the wait for the lock ran out: nothing written
            }
            assert_eq!(rows.len(), ROWS, "a batch is one transaction");
            let since = std::time::Instant::now();
            while map.len() < rows.len() && since.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let unseen = rows
                .iter()
                .filter(|(id, h)| map.get(*h) != Some(*id))
                .count();
            assert_eq!(unseen, 0, "rows written but missing from the map");
            assert!(l3.healthy());
            return;
        }
        panic!("no batch was written in 10 attempts");
    }

    /// The SQLite connections' settings that a write batch's cost depends
    /// on: the writer keeps its statement journals in memory, and no
    /// connection checkpoints the WAL before 8,192 pages (`l3_sqlite` in
    /// `benches/cache.rs`, per 1,024-row batch into a 100k-row table, with
    /// schema 2's index on `h`: 29-30 ms without the checkpoint setting and
    /// a 32 MiB page cache for that index, 17-20 ms with; on another machine
    /// 23-25 ms with the journal in a file, 17-21 ms in memory).
    #[tokio::test]
    async fn sqlite_connections_have_the_settings_write_batches_depend_on() {
        let (_dir, _url, l3) = sqlite_level(Duration::from_secs(2)).await;
        let Store::Sqlite {
            readers, writer, ..
        } = &l3.inner.store
        else {
            panic!("a SQLite level")
        };
        let pragma = |pool: SqlitePool, name: &'static str| async move {
            sqlx::query_scalar::<_, i64>(&format!("PRAGMA {name}"))
                .fetch_one(&pool)
                .await
                .unwrap()
        };
        assert_eq!(pragma(writer.clone(), "wal_autocheckpoint").await, 8192);
        // 2 is MEMORY.
        assert_eq!(pragma(writer.clone(), "temp_store").await, 2);
        assert_eq!(pragma(readers.clone(), "wal_autocheckpoint").await, 8192);
        assert_eq!(
            pragma(readers.clone(), "temp_store").await,
            0,
            "the readers keep SQLite's default"
        );
    }

    /// The SQL the migration computes row ids with agrees with the code,
    /// at the edges of the signed range and on real keys.
    #[tokio::test]
    async fn sqlite_row_id_expression_matches_the_code() {
        let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
        let mut keys: Vec<CacheKey> = [
            "0".repeat(64),
            "f".repeat(64),
            format!("8{}", "0".repeat(63)),
            format!("7{}", "f".repeat(63)),
            format!("0123456789abcdef{}", "9".repeat(48)),
        ]
        .iter()
        .map(|h| CacheKey::from_parts("ns|x%", "model*?", h))
        .collect();
        keys.extend((0..200).map(|i| {
            CacheKey::for_request(
                "tenant",
                "gpt-ü",
                crate::key::RequestKind::Chat,
                &serde_json::json!({ "messages": [{ "role": "user", "content": i }] }),
            )
        }));
        let sql = format!("SELECT {} FROM (SELECT ? AS key)", sqlite_row_id());
        let mut negative = 0;
        for k in &keys {
            let got: i64 = sqlx::query_scalar(&sql)
                .bind(k.as_str())
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(got, k.row_id(), "{}", k.as_str());
            negative += usize::from(got < 0);
        }
        assert!(negative > 50, "both signs covered: {negative} negative");
        assert_eq!(keys[1].row_id(), -1);
        assert_eq!(keys[2].row_id(), i64::MIN);
        assert_eq!(keys[3].row_id(), i64::MAX);
    }
}
