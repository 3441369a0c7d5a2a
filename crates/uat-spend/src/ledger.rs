//! The spend of each API key in its current budget period: atomics in
//! memory, a table in the storage database, a background task between them.
//!
//! An [`Account`] holds four words: the start of the period it counts, this
//! replica's own spend in that period (`spent`), the other replicas' spend
//! in it as last read back (`others`; admission reads the sum), and what
//! this replica added that the task has not taken yet (`unflushed`). A
//! request adds to `spent` and `unflushed` with two atomic additions.
//!
//! Each replica (each [`Ledger::open`], with a random id) owns its rows of
//! `uat_key_spend_replica (key_name, period_start, replica, spend_nanos)`
//! and writes there *absolute* totals: what this replica spent on the key
//! in that period since it started. Every second the task moves
//! `unflushed` into its totals, by period, and upserts the totals that
//! changed since the last write (PostgreSQL: one statement; SQLite: one
//! transaction of statements of 200 rows), keeping the larger of the
//! stored and the written value. Writing a total again is harmless, so a
//! write whose commit lands after the timeout has fired (and is therefore
//! retried) is not counted twice; a failed write keeps the totals dirty for
//! the next tick, so nothing is lost while the database is down (the outage
//! is logged once). A key's spend is the sum of every replica's rows for
//! its period, past replicas (restarts) included: this replica reads the
//! others' rows back (on PostgreSQL, shared by replicas, every few seconds,
//! in one statement; on SQLite at start-up, per 400 keys) into `others`,
//! so budgets hold across replicas within a few seconds, not exactly.
//!
//! Rows need not pile up per restart: a replica that stops cleanly
//! ([`Ledger::close`], or its last handle dropped while the runtime still
//! runs) and none of whose writes failed folds its own rows into the
//! `base` rows, one per key and period, in one transaction (see
//! `Task::finish`), on SQLite and PostgreSQL alike. Only its own: another
//! process still writing its rows is left alone. A replica killed, or one
//! a write of which failed, or whose fold failed, leaves its rows: they are
//! still summed, just not compacted (one row per key and period each).
//! Rows of periods long over are kept (one per key and period once
//! folded): they are never read, and the table does not know which period
//! length wrote them.
//!
//! The table before it, `uat_key_spend (key_name, period_start,
//! spend_nanos)`, held deltas added by every replica. It is left as it is:
//! while it exists, its rows are one more summand of every
//! read-back, so replicas of the older version still running during a
//! rolling upgrade keep adding to it and are counted (at the next read-back
//! on PostgreSQL), and a rollback finds everything written before the
//! upgrade. (Spend written by replicas of this version is not seen by the
//! older version after a rollback.) Whether it exists is checked at open,
//! again at a read-back when it was absent and the last check is a minute
//! old (so a replica of the older version creating it later is counted
//! within a minute), and when a read-back fails because it went away (the
//! read-back is then retried without it). Once no replica of the older
//! version is left it may be dropped, but its spend is then forgotten.
//!
//! A period starts when the clock passes its boundary ([`Period`]): from
//! then on admission reads 0, and the task's next tick starts the new
//! period's count. An answer charged in the second before the task's tick
//! may be counted in the period that just ended.

use crate::{Period, SpendError};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The longest a database statement of the ledger may take.
const DB_TIMEOUT: Duration = Duration::from_secs(5);

/// One API key's spend.
#[derive(Debug)]
pub struct Account {
    name: Box<str>,
    budget: Option<u64>,
    period: Period,
    /// Unix seconds: the start of the period `spent` and `others` count.
    start: AtomicI64,
    /// Nano-USD this replica spent in that period.
    spent: AtomicU64,
    /// Nano-USD the other replicas (past ones included) spent in it, as
    /// last read back. Only the task writes it, so a read-back never
    /// overwrites an addition.
    others: AtomicU64,
    /// Nano-USD added here the task has not taken yet.
    unflushed: AtomicU64,
}

fn saturating_add(word: &AtomicU64, n: u64) {
    let _ = word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        Some(v.saturating_add(n))
    });
}

impl Account {
    fn new(b: &KeyBudget, now: i64) -> Self {
        let period = Period::new(b.period);
        Account {
            name: b.name.as_str().into(),
            budget: b.max_budget.map(crate::nanos),
            period,
            start: AtomicI64::new(period.start_at(now)),
            spent: AtomicU64::new(0),
            others: AtomicU64::new(0),
            unflushed: AtomicU64::new(0),
        }
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its budget in nano-USD, when it has one.
    pub fn budget_nanos(&self) -> Option<u64> {
        self.budget
    }

    /// Its budget period.
    pub fn period(&self) -> Period {
        self.period
    }

    /// Adds an answer's cost (two atomic additions; never waits).
    pub fn add(&self, nanos: u64) {
        if nanos == 0 {
            return;
        }
        saturating_add(&self.spent, nanos);
        saturating_add(&self.unflushed, nanos);
    }

    /// The spend of the period holding `now` (unix seconds), as this
    /// replica knows it: 0 once that period is newer than the one counted.
    pub fn spent_at(&self, now: i64) -> u64 {
        if self.period.start_at(now) != self.start.load(Ordering::Acquire) {
            return 0;
        }
        let own = self.spent.load(Ordering::Acquire);
        own.saturating_add(self.others.load(Ordering::Acquire))
    }

    /// The spend of the current period.
    pub fn spent(&self) -> u64 {
        self.spent_at(crate::unix_now())
    }

    /// True when the key has a budget and the spend of the period holding
    /// `now` has reached it.
    pub fn exhausted_at(&self, now: i64) -> bool {
        self.budget.is_some_and(|b| self.spent_at(now) >= b)
    }

    /// Starts the period holding `now` when it is not the one counted:
    /// what was not taken yet belongs to the old one (returned with its
    /// start).
    fn roll(&self, now: i64) -> Option<(i64, u64)> {
        let start = self.period.start_at(now);
        let old = self.start.load(Ordering::Acquire);
        if start == old {
            return None;
        }
        // The counts first: a reader in between sees the old start, so 0.
        self.spent.store(0, Ordering::Release);
        self.others.store(0, Ordering::Release);
        self.start.store(start, Ordering::Release);
        Some((old, self.unflushed.swap(0, Ordering::AcqRel)))
    }
}
/// A key's budget, as the ledger is opened with it.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyBudget {
    /// The key's name (the ledger's row key).
    pub name: String,
    /// USD it may spend in a period; `None`: tracked, never refused.
    pub max_budget: Option<f64>,
    /// The period's length; `None`: the spend never resets.
    pub period: Option<Duration>,
}

/// How often the task writes and reads.
#[derive(Debug, Clone, Copy)]
pub struct LedgerOptions {
    /// How often the totals that changed are written (1 s).
    pub flush_interval: Duration,
    /// How often PostgreSQL's totals are read back (5 s); SQLite, owned by
    /// this process, is read at start-up only.
    pub reload_interval: Duration,
    /// While the older `uat_key_spend` is absent, how long a read-back
    /// trusts the last check before looking again (1 min).
    pub old_table_recheck: Duration,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions {
            flush_interval: Duration::from_secs(1),
            reload_interval: Duration::from_secs(5),
            old_table_recheck: Duration::from_secs(60),
        }
    }
}

/// What the database fails, when it fails the ledger.
const WRITES_FAIL: u8 = 1;
const READS_FAIL: u8 = 2;

/// Names the statements the state `failing` (bits of [`WRITES_FAIL`] and
/// [`READS_FAIL`]) says fail; `None` when none do.
fn failing_name(failing: u8) -> Option<&'static str> {
    match failing {
        0 => None,
        WRITES_FAIL => Some("writes"),
        READS_FAIL => Some("read-backs"),
        _ => Some("writes and read-backs"),
    }
}

enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

enum Cmd {
    Flush(oneshot::Sender<Result<(), SpendError>>),
    Reload(oneshot::Sender<Result<(), SpendError>>),
    Close(oneshot::Sender<Result<(), SpendError>>),
}

/// The spend of every API key, shared and persisted. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

struct Inner {
    accounts: Arc<[Arc<Account>]>,
    by_name: HashMap<Box<str>, usize>,
    cmds: mpsc::Sender<Cmd>,
    /// What fails ([`WRITES_FAIL`], [`READS_FAIL`]), published by the task.
    failing: Arc<AtomicU8>,
    backend: &'static str,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("backend", &self.inner.backend)
            .field("accounts", &self.inner.accounts.len())
            .finish()
    }
}

impl Ledger {
    /// Connects to `url` (`sqlite://PATH`, the file created when missing,
    /// or `postgres://...`), creates `uat_key_spend_replica` when it is not
    /// there, notes
    /// whether the older `uat_key_spend` is there (its rows are then read
    /// too), loads each key's spend of its current period and starts the
    /// task. A database that cannot be reached is an error (the caller's to
    /// report); later outages are not. A name given twice is one account
    /// (the first one's budget and period).
    pub async fn open(
        url: &str,
        keys: &[KeyBudget],
        options: LedgerOptions,
    ) -> Result<Ledger, SpendError> {
        let db = connect(url).await?;
        let old_table = within(prepare(&db)).await?;
        let now = crate::unix_now();
        // One account per name: a name's rows are one count, and one
        // PostgreSQL upsert may not write a row twice.
        let mut accounts: Vec<Arc<Account>> = Vec::with_capacity(keys.len());
        let mut unique: Vec<Arc<Account>> = Vec::with_capacity(keys.len());
        let mut by_name: HashMap<Box<str>, usize> = HashMap::with_capacity(keys.len());
        for k in keys {
            let account = match by_name.get(k.name.as_str()) {
                Some(&i) => Arc::clone(&accounts[i]),
                None => {
                    let a = Arc::new(Account::new(k, now));
                    by_name.insert(a.name.clone(), accounts.len());
                    unique.push(Arc::clone(&a));
                    a
                }
            };
            accounts.push(account);
        }
        let backend = match db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        };
        let failing = Arc::new(AtomicU8::new(0));
        let mut task = Task::new(db, replica_id(), old_table, unique.into(), failing.clone());
        task.old_recheck = options.old_table_recheck;
        within(task.read_back()).await?;
        let (cmds, rx) = mpsc::channel(16);
        tokio::spawn(task.run(rx, options));
        Ok(Ledger {
            inner: Arc::new(Inner {
                accounts: accounts.into(),
                by_name,
                cmds,
                failing,
                backend,
            }),
        })
    }

    /// The account of the key `name`.
    pub fn account(&self, name: &str) -> Option<&Arc<Account>> {
        self.inner
            .by_name
            .get(name)
            .map(|&i| &self.inner.accounts[i])
    }

    /// Every account, in the order the keys were given.
    pub fn accounts(&self) -> &[Arc<Account>] {
        &self.inner.accounts
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.inner.backend
    }

    /// False while the last write to the database or the last read-back
    /// failed (the spend is kept in memory and the write retried).
    pub fn healthy(&self) -> bool {
        self.failing().is_none()
    }

    /// What the database fails while it does: `writes`, `read-backs`, or
    /// `writes and read-backs` (the last attempt of each).
    pub fn failing(&self) -> Option<&'static str> {
        failing_name(self.inner.failing.load(Ordering::Acquire))
    }

    /// Writes what was added so far now, through the task, and waits for
    /// it (at shutdown [`Ledger::close`] does that, and folds the rows).
    pub async fn flush(&self) -> Result<(), SpendError> {
        self.ask(Cmd::Flush).await
    }

    /// Writes, then reads every key's total back, even when the write
    /// failed (what the task does every few seconds on PostgreSQL); the
    /// first error is returned.
    pub async fn reload(&self) -> Result<(), SpendError> {
        self.ask(Cmd::Reload).await
    }

    /// The last write, at shutdown: writes what was added so far, then
    /// (when that write succeeded and none of this replica's failed
    /// before) folds this replica's rows into the `base` rows, and stops
    /// the task, as dropping every handle of the ledger does, but awaited.
    /// The error is the last write's: a fold that fails is logged here, and
    /// leaves the rows as they are (still summed). Spend added after it is
    /// not written; later calls answer [`SpendError::Stopped`].
    pub async fn close(&self) -> Result<(), SpendError> {
        self.ask(Cmd::Close).await
    }

    async fn ask(
        &self,
        cmd: impl FnOnce(oneshot::Sender<Result<(), SpendError>>) -> Cmd,
    ) -> Result<(), SpendError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .cmds
            .send(cmd(tx))
            .await
            .map_err(|_| SpendError::Stopped)?;
        rx.await.map_err(|_| SpendError::Stopped)?
    }
}

/// A new replica id: 128 random bits in hex. Every open is a new replica,
/// so a restarted process never takes over (and never lowers) the rows of
/// the one before it.
fn replica_id() -> Box<str> {
    uuid::Uuid::new_v4().simple().to_string().into()
}

async fn connect(url: &str) -> Result<Db, SpendError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(DB_TIMEOUT)
            .connect(url)
            .await?;
        return Ok(Db::Postgres(pool));
    }
    let opts = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(DB_TIMEOUT);
    // One connection: the task is the only writer, one statement at a time.
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(DB_TIMEOUT)
        .connect_with(opts)
        .await?;
    Ok(Db::Sqlite(pool))
}

/// Runs `f` under [`DB_TIMEOUT`].
async fn within<T>(f: impl Future<Output = Result<T, SpendError>>) -> Result<T, SpendError> {
    tokio::time::timeout(DB_TIMEOUT, f)
        .await
        .map_err(|_| SpendError::Timeout(DB_TIMEOUT))?
}

/// The replica id of the rows the others are folded into: no replica
/// writes it as its own (theirs are 32 hex digits).
const BASE: &str = "base";

/// One row per key, period and replica: the replica's absolute spend on
/// the key in that period (only ever raised; `base`: the folded spend of
/// replicas gone).
/// The index on `replica`: a fold finds its replica's rows without
/// scanning the table.
const CREATE_SQLITE: &str = "CREATE TABLE IF NOT EXISTS uat_key_spend_replica (
    key_name TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    replica TEXT NOT NULL,
    spend_nanos BIGINT NOT NULL,
    PRIMARY KEY (key_name, period_start, replica)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS uat_key_spend_replica_replica ON uat_key_spend_replica (replica)";

const CREATE_PG: &str = "CREATE TABLE IF NOT EXISTS uat_key_spend_replica (
    key_name TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    replica TEXT NOT NULL,
    spend_nanos BIGINT NOT NULL,
    PRIMARY KEY (key_name, period_start, replica)
);
CREATE INDEX IF NOT EXISTS uat_key_spend_replica_replica ON uat_key_spend_replica (replica)";

/// Is the older table (deltas, one row per key and period) there?
const OLD_EXISTS_SQLITE: &str =
    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'uat_key_spend'";
const OLD_EXISTS_PG: &str = "SELECT to_regclass('uat_key_spend') IS NOT NULL";

/// SQLite, as a replica shuts down: adds its own rows (`?1`) to the `base`
/// rows (`?2`) of their keys and periods, saturating at the largest BIGINT
/// (`+` overflowing gives a REAL, which `MIN` caps). SQLite reads the
/// source rows before writing, as they come from the table written.
/// `WHERE`: SQLite's parser needs one before `ON CONFLICT` after a
/// `SELECT`.
const FOLD_SQLITE: &str = "INSERT INTO uat_key_spend_replica (key_name, period_start, replica, spend_nanos)
    SELECT key_name, period_start, ?2, spend_nanos FROM uat_key_spend_replica WHERE replica = ?1
    ON CONFLICT (key_name, period_start, replica) DO UPDATE
    SET spend_nanos = MIN(uat_key_spend_replica.spend_nanos + excluded.spend_nanos, 9223372036854775807)";
/// ... then deletes them, in the same transaction: a reader sees either
/// the replica's rows or the `base` rows grown by them.
const FOLDED_SQLITE: &str = "DELETE FROM uat_key_spend_replica WHERE replica = ?1";

/// PostgreSQL, as a replica shuts down: its own rows (`$1`) are deleted
/// and added to the `base` rows (`$2`) in one statement, saturating. A
/// reader sees either the replica's rows or the `base` rows grown by them,
/// never both or neither. The rows are inserted in key order, so replicas
/// folding at once lock the `base` rows they share in the same order (no
/// deadlock).
const FOLD_PG: &str = "WITH d AS (
        DELETE FROM uat_key_spend_replica WHERE replica = $1
        RETURNING key_name, period_start, spend_nanos
    )
    INSERT INTO uat_key_spend_replica AS t (key_name, period_start, replica, spend_nanos)
    SELECT key_name, period_start, $2, spend_nanos FROM d ORDER BY key_name, period_start
    ON CONFLICT (key_name, period_start, replica) DO UPDATE
    SET spend_nanos = LEAST(t.spend_nanos::numeric + excluded.spend_nanos, 9223372036854775807)::bigint";

/// Writes this replica's totals, keeping the larger of the stored and the
/// written value: writing a total twice, or late, changes nothing.
/// `$1`: the replica, then the rows as arrays of keys, period starts and
/// totals.
const UPSERT_PG: &str =
    "INSERT INTO uat_key_spend_replica AS t (key_name, period_start, replica, spend_nanos)
    SELECT r.key_name, r.period_start, $1, r.spend_nanos
    FROM UNNEST($2::text[], $3::bigint[], $4::bigint[]) AS r (key_name, period_start, spend_nanos)
    ON CONFLICT (key_name, period_start, replica) DO UPDATE
    SET spend_nanos = GREATEST(t.spend_nanos, excluded.spend_nanos)";

/// The other replicas' spend on the keys in their periods (`$1`, `$2`),
/// with the older table's deltas when `old_table`, summed by key and
/// capped at the largest BIGINT (`SUM` of BIGINTs is a NUMERIC). `$3`: this
/// replica.
fn select_pg(old_table: bool) -> String {
    let mut sql = String::from(
        "WITH k AS (
        SELECT * FROM UNNEST($1::text[], $2::bigint[]) AS k (key_name, period_start)
    ), s AS (
        SELECT r.key_name, r.period_start, r.spend_nanos
        FROM k JOIN uat_key_spend_replica AS r
            ON r.key_name = k.key_name AND r.period_start = k.period_start
        WHERE r.replica <> $3",
    );
    if old_table {
        sql.push_str(
            "
        UNION ALL
        SELECT o.key_name, o.period_start, o.spend_nanos
        FROM k JOIN uat_key_spend AS o
            ON o.key_name = k.key_name AND o.period_start = k.period_start",
        );
    }
    sql.push_str(
        "
    )
    SELECT key_name, period_start, LEAST(SUM(spend_nanos), 9223372036854775807)::bigint
    FROM s GROUP BY key_name, period_start",
    );
    sql
}

/// Rows per SQLite upsert: 4 variables each, under the 999 variables an
/// old SQLite allows a statement.
const SQLITE_WRITE_CHUNK: usize = 200;
/// Keys per SQLite read-back: 2 variables each, and the replica.
const SQLITE_READ_CHUNK: usize = 400;

/// The SQLite upsert of `n` rows (`key_name, period_start, replica,
/// spend_nanos` each).
fn upsert_sqlite(n: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO uat_key_spend_replica (key_name, period_start, replica, spend_nanos) VALUES ",
    );
    for i in 0..n {
        sql.push_str(if i == 0 {
            "(?, ?, ?, ?)"
        } else {
            ", (?, ?, ?, ?)"
        });
    }
    sql.push_str(
        " ON CONFLICT (key_name, period_start, replica) DO UPDATE
        SET spend_nanos = MAX(uat_key_spend_replica.spend_nanos, excluded.spend_nanos)",
    );
    sql
}

/// The SQLite read-back of `n` (key, period start) pairs, then the replica
/// to leave out; with the older table's rows when `old_table`. Rows, not
/// sums: SQLite's `SUM` fails on overflow, so the sums are taken
/// (saturating) in Rust.
fn select_sqlite(n: usize, old_table: bool) -> String {
    let mut sql = String::from("WITH k (key_name, period_start) AS (VALUES ");
    for i in 0..n {
        sql.push_str(if i == 0 { "(?, ?)" } else { ", (?, ?)" });
    }
    sql.push_str(
        ")
    SELECT s.key_name, s.period_start, s.spend_nanos
    FROM k JOIN uat_key_spend_replica AS s
        ON s.key_name = k.key_name AND s.period_start = k.period_start
    WHERE s.replica <> ?",
    );
    if old_table {
        sql.push_str(
            "
    UNION ALL
    SELECT o.key_name, o.period_start, o.spend_nanos
    FROM k JOIN uat_key_spend AS o
        ON o.key_name = k.key_name AND o.period_start = k.period_start",
        );
    }
    sql
}

/// Creates the table when it is missing, and tells whether the older
/// table is there. The older table is neither created nor changed.
async fn prepare(db: &Db) -> Result<bool, SpendError> {
    match db {
        Db::Sqlite(p) => {
            sqlx::raw_sql(CREATE_SQLITE).execute(p).await?;
            old_exists(db).await
        }
        Db::Postgres(p) => {
            // Replicas starting at once: CREATE TABLE IF NOT EXISTS races
            // on PostgreSQL's catalog, so one at a time (the lock older
            // versions take as well).
            let mut tx = p.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(7455320023)")
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(CREATE_PG).execute(&mut *tx).await?;
            let old: bool = sqlx::query_scalar(OLD_EXISTS_PG)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(old)
        }
    }
}

/// Is the older table there?
async fn old_exists(db: &Db) -> Result<bool, SpendError> {
    Ok(match db {
        Db::Sqlite(p) => {
            let n: i64 = sqlx::query_scalar(OLD_EXISTS_SQLITE).fetch_one(p).await?;
            n > 0
        }
        Db::Postgres(p) => sqlx::query_scalar(OLD_EXISTS_PG).fetch_one(p).await?,
    })
}

/// Did a statement fail because a table it names is missing (the older
/// table, say, dropped since it was last looked for)?
fn missing_table(e: &SpendError) -> bool {
    let SpendError::Database(sqlx::Error::Database(e)) = e else {
        return false;
    };
    // PostgreSQL's undefined_table; SQLite has no code of its own for it.
    e.code().as_deref() == Some("42P01") || e.message().contains("no such table: uat_key_spend")
}

/// Folds this replica's rows into the `base` rows (see [`FOLD_PG`] and
/// [`FOLD_SQLITE`]).
async fn fold(db: &Db, replica: &str) -> Result<(), SpendError> {
    match db {
        Db::Sqlite(p) => {
            let mut tx = p.begin().await?;
            sqlx::query(FOLD_SQLITE)
                .bind(replica)
                .bind(BASE)
                .execute(&mut *tx)
                .await?;
            sqlx::query(FOLDED_SQLITE)
                .bind(replica)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Db::Postgres(p) => {
            sqlx::query(FOLD_PG)
                .bind(replica)
                .bind(BASE)
                .execute(p)
                .await?;
        }
    }
    Ok(())
}

fn to_db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A row to write: this replica's total of an account in a period.
struct Row<'a> {
    /// The account's index.
    account: usize,
    name: &'a str,
    start: i64,
    total: u64,
}

/// Upserts this replica's totals (absolute; the larger value is kept) in
/// one statement (SQLite: one transaction of statements of 200 rows).
async fn write(db: &Db, replica: &str, rows: &[Row<'_>]) -> Result<(), SpendError> {
    if rows.is_empty() {
        return Ok(());
    }
    match db {
        Db::Sqlite(p) => {
            let mut tx = p.begin().await?;
            for chunk in rows.chunks(SQLITE_WRITE_CHUNK) {
                let sql = upsert_sqlite(chunk.len());
                let mut q = sqlx::query(&sql);
                for r in chunk {
                    q = q
                        .bind(r.name)
                        .bind(r.start)
                        .bind(replica)
                        .bind(to_db(r.total));
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
        Db::Postgres(p) => {
            let names: Vec<&str> = rows.iter().map(|r| r.name).collect();
            let starts: Vec<i64> = rows.iter().map(|r| r.start).collect();
            let totals: Vec<i64> = rows.iter().map(|r| to_db(r.total)).collect();
            sqlx::query(UPSERT_PG)
                .bind(replica)
                .bind(names)
                .bind(starts)
                .bind(totals)
                .execute(p)
                .await?;
        }
    }
    Ok(())
}

/// The other replicas' rows of the (key, period start) pairs `wanted`
/// (distinct), and the older table's when `old_table`, summed by pair
/// (saturating at the largest BIGINT). `select_pg`: PostgreSQL's statement,
/// [`select_pg`] of `old_table`.
async fn read_others(
    db: &Db,
    replica: &str,
    old_table: bool,
    select_pg: &str,
    wanted: &[(&str, i64)],
) -> Result<Vec<(String, i64, u64)>, SpendError> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, i64, i64)> = match db {
        Db::Sqlite(p) => {
            let mut rows = Vec::new();
            for chunk in wanted.chunks(SQLITE_READ_CHUNK) {
                let sql = select_sqlite(chunk.len(), old_table);
                let mut q = sqlx::query_as(&sql);
                for &(name, start) in chunk {
                    q = q.bind(name).bind(start);
                }
                rows.extend(q.bind(replica).fetch_all(p).await?);
            }
            rows
        }
        Db::Postgres(p) => {
            let names: Vec<&str> = wanted.iter().map(|w| w.0).collect();
            let starts: Vec<i64> = wanted.iter().map(|w| w.1).collect();
            sqlx::query_as(select_pg)
                .bind(names)
                .bind(starts)
                .bind(replica)
                .fetch_all(p)
                .await?
        }
    };
    // PostgreSQL's rows are one per pair already; SQLite's are summed here,
    // capped as PostgreSQL caps them.
    let max = i64::MAX.unsigned_abs();
    let mut sums: HashMap<(String, i64), u64> = HashMap::with_capacity(rows.len());
    for (name, start, n) in rows {
        let s = sums.entry((name, start)).or_insert(0);
        *s = s.saturating_add(u64::try_from(n).unwrap_or(0)).min(max);
    }
    Ok(sums.into_iter().map(|((n, s), v)| (n, s, v)).collect())
}

/// This replica's spend on an account in a period.
#[derive(Debug, Default)]
struct Total {
    /// Everything taken from the account for the period.
    total: u64,
    /// The total the last successful write stored (the row holds at least
    /// that).
    written: u64,
}

/// The rows of the totals that changed since they were last written (the
/// names borrowed from `accounts`).
fn dirty_rows<'a>(
    totals: &HashMap<(usize, i64), Total>,
    accounts: &'a [Arc<Account>],
) -> Vec<Row<'a>> {
    totals
        .iter()
        .filter(|(_, t)| t.total != t.written)
        .filter_map(|(&(account, start), t)| {
            Some(Row {
                account,
                name: accounts.get(account)?.name(),
                start,
                total: t.total,
            })
        })
        .collect()
}

/// The background task: the only writer of this replica's rows.
struct Task {
    db: Db,
    /// This replica's id, the `replica` of its rows.
    replica: Box<str>,
    /// The older table was there when last looked for: its rows are read
    /// too.
    old_table: bool,
    /// When the older table was last looked for.
    old_checked: std::time::Instant,
    /// While it is absent, how long a read-back trusts that.
    old_recheck: Duration,
    /// PostgreSQL's read-back, of `old_table` ([`select_pg`]).
    select_pg: String,
    /// One account per name.
    accounts: Arc<[Arc<Account>]>,
    /// This replica's totals by account (index) and period start: the
    /// current periods', and older ones' not written yet.
    totals: HashMap<(usize, i64), Total>,
    /// The last write succeeded (a flush with nothing to write leaves it).
    write_ok: bool,
    /// The last read-back succeeded.
    read_ok: bool,
    /// What of the two fails ([`WRITES_FAIL`], [`READS_FAIL`]), published
    /// for [`Ledger::failing`].
    failing: Arc<AtomicU8>,
    /// A write of this replica failed once: its outcome on the server is
    /// unknown (see [`Task::finish`]).
    write_failed: bool,
}

impl Task {
    fn new(
        db: Db,
        replica: Box<str>,
        old_table: bool,
        accounts: Arc<[Arc<Account>]>,
        failing: Arc<AtomicU8>,
    ) -> Self {
        Task {
            db,
            replica,
            old_table,
            old_checked: std::time::Instant::now(),
            old_recheck: LedgerOptions::default().old_table_recheck,
            select_pg: select_pg(old_table),
            accounts,
            totals: HashMap::new(),
            write_ok: true,
            read_ok: true,
            failing,
            write_failed: false,
        }
    }

    /// Notes whether the older table is there, as just looked up.
    fn set_old_table(&mut self, there: bool) {
        self.old_checked = std::time::Instant::now();
        if there != self.old_table {
            self.old_table = there;
            self.select_pg = select_pg(there);
            tracing::info!(
                there,
                "spend ledger: the older uat_key_spend table is {}",
                if there {
                    "there: its rows are counted"
                } else {
                    "gone"
                }
            );
        }
    }

    async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>, options: LedgerOptions) {
        let shared = matches!(self.db, Db::Postgres(_));
        let mut flush =
            tokio::time::interval(options.flush_interval.max(Duration::from_millis(10)));
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reload =
            tokio::time::interval(options.reload_interval.max(Duration::from_millis(10)));
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reload.tick().await;
        loop {
            tokio::select! {
                _ = flush.tick() => {
                    let _ = self.flush().await;
                }
                _ = reload.tick(), if shared => {
                    let _ = self.reload().await;
                }
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Flush(tx)) => {
                        let _ = tx.send(self.flush().await);
                    }
                    Some(Cmd::Reload(tx)) => {
                        let _ = tx.send(self.reload().await);
                    }
                    Some(Cmd::Close(tx)) => {
                        let _ = tx.send(self.finish().await);
                        return;
                    }
                    None => {
                        // The ledger is gone: a last write of what is left.
                        let _ = self.finish().await;
                        return;
                    }
                },
            }
        }
    }

    /// The last write, as the ledger is closed or dropped; then, when it
    /// succeeded, this replica's rows are folded into the `base` rows, so
    /// each start does not leave a row per key behind. The replica writes
    /// nothing after (the task ends). The error is the last write's: a fold
    /// that fails is logged and leaves the rows (still summed).
    ///
    /// A write of this replica whose timeout fired may still be running on
    /// the server (on the pool's other connection, in a lock wait, say): if
    /// it committed after the fold, it would insert this replica's row
    /// again, with a total no larger than the one folded, and that would be
    /// counted twice for good. So a replica one of whose writes ever failed
    /// (timed out or not: a connection lost mid-statement is as unsure)
    /// leaves its rows as they are; they cost one row per key and period.
    /// Writes that succeeded are committed, and the last write was
    /// answered before the fold starts (SQLite's pool has one connection:
    /// its statements run in order), so they cannot land after it.
    async fn finish(&mut self) -> Result<(), SpendError> {
        self.flush().await?;
        if self.write_failed {
            return Ok(());
        }
        if let Err(error) = within(fold(&self.db, &self.replica)).await {
            tracing::warn!(
                %error,
                "spend ledger: folding this replica's rows failed; they stay, summed as before"
            );
        }
        Ok(())
    }

    /// Moves what the accounts added into the totals (starting new periods
    /// as of `now`).
    fn take(&mut self, now: i64) {
        let totals = &mut self.totals;
        let mut add = |i: usize, start: i64, n: u64| {
            let t = totals.entry((i, start)).or_default();
            t.total = t.total.saturating_add(n);
        };
        for (i, a) in self.accounts.iter().enumerate() {
            if let Some((old, n)) = a.roll(now)
                && n > 0
            {
                add(i, old, n);
            }
            let n = a.unflushed.swap(0, Ordering::AcqRel);
            if n > 0 {
                add(i, a.start.load(Ordering::Acquire), n);
            }
        }
    }

    /// The totals changed since they were last written.
    #[cfg(test)]
    fn dirty(&self) -> Vec<Row<'_>> {
        dirty_rows(&self.totals, &self.accounts)
    }

    /// Notes `rows` as stored, and forgets the totals of periods that are
    /// over and written: nothing is added to them any more. (A clock set
    /// back across a period boundary would start that period's total here
    /// from 0 again; the row keeps the larger value, so this replica's
    /// spend in it is under-counted by what it had written.)
    fn mark_written(&mut self, rows: &[Row<'_>]) {
        for r in rows {
            if let Some(t) = self.totals.get_mut(&(r.account, r.start)) {
                t.written = t.written.max(r.total);
            }
        }
        let accounts = &self.accounts;
        self.totals.retain(|&(i, start), t| {
            t.total != t.written
                || accounts
                    .get(i)
                    .is_some_and(|a| a.start.load(Ordering::Acquire) == start)
        });
    }

    /// Takes what the accounts added (starting new periods) and writes the
    /// totals that changed.
    async fn flush(&mut self) -> Result<(), SpendError> {
        self.flush_at(crate::unix_now()).await
    }

    async fn flush_at(&mut self, now: i64) -> Result<(), SpendError> {
        self.take(now);
        // The rows borrow their names from this handle, not from `self`.
        let accounts = Arc::clone(&self.accounts);
        let rows = dirty_rows(&self.totals, &accounts);
        if rows.is_empty() {
            return Ok(());
        }
        let r = within(write(&self.db, &self.replica, &rows)).await;
        match r {
            Ok(()) => self.mark_written(&rows),
            Err(_) => self.write_failed = true,
        }
        self.write_ok = r.is_ok();
        self.outcome(r)
    }

    /// Writes, then reads the totals back, even when the write failed
    /// (this replica's own totals are in memory): the first error.
    async fn reload(&mut self) -> Result<(), SpendError> {
        let w = self.flush().await;
        let r = within(self.read_back()).await;
        self.read_ok = r.is_ok();
        let r = self.outcome(r);
        w.and(r)
    }

    /// Sets each account's `others` to the other replicas' rows of its
    /// current period (and the older table's). This replica's rows are not
    /// read: its own spend is in `spent`. The older table is looked for
    /// first when it was absent at the last look, `old_recheck` ago or
    /// more; a read-back failing as it is gone looks again, and is retried
    /// once when it is.
    async fn read_back(&mut self) -> Result<(), SpendError> {
        if !self.old_table && self.old_checked.elapsed() >= self.old_recheck {
            let there = old_exists(&self.db).await?;
            self.set_old_table(there);
        }
        match self.read_back_once().await {
            Err(e) if self.old_table && missing_table(&e) => {
                let there = old_exists(&self.db).await?;
                self.set_old_table(there);
                if there {
                    return Err(e);
                }
                self.read_back_once().await
            }
            r => r,
        }
    }

    async fn read_back_once(&self) -> Result<(), SpendError> {
        let starts: Vec<i64> = self
            .accounts
            .iter()
            .map(|a| a.start.load(Ordering::Acquire))
            .collect();
        let index: HashMap<(&str, i64), usize> = self
            .accounts
            .iter()
            .zip(&starts)
            .enumerate()
            .map(|(i, (a, &start))| ((a.name(), start), i))
            .collect();
        let wanted: Vec<(&str, i64)> = index.keys().copied().collect();
        let mut others = vec![0u64; self.accounts.len()];
        let read = read_others(
            &self.db,
            &self.replica,
            self.old_table,
            &self.select_pg,
            &wanted,
        )
        .await?;
        for (name, start, n) in read {
            if let Some(&i) = index.get(&(name.as_str(), start)) {
                others[i] = others[i].saturating_add(n);
            }
        }
        for (i, a) in self.accounts.iter().enumerate() {
            // Only this task rolls periods, so the start read above is
            // still the account's.
            a.others.store(others[i], Ordering::Release);
        }
        Ok(())
    }

    /// Publishes what fails (of writes and read-backs), and logs when that
    /// changes (an outage once, what fails when that changes, and its end):
    /// each of the two changes only with its own outcome, so writes that
    /// succeed while read-backs fail (or the other way round) do not flip
    /// it every tick.
    fn outcome(&self, r: Result<(), SpendError>) -> Result<(), SpendError> {
        let failing =
            if self.write_ok { 0 } else { WRITES_FAIL } | if self.read_ok { 0 } else { READS_FAIL };
        let was = self.failing.swap(failing, Ordering::AcqRel);
        if failing == was {
            return r;
        }
        match failing_name(failing) {
            None => tracing::info!(
                "spend ledger: the database answers again; the spend kept in memory is written"
            ),
            Some(what) => {
                let error = match &r {
                    Err(e) => e.to_string(),
                    Ok(()) => "an earlier statement failed".into(),
                };
                tracing::warn!(
                    %error,
                    failing = what,
                    "spend ledger: the database fails {what}; the spend is kept in memory, writes retried every second, read-backs at their next turn"
                );
            }
        }
        r
    }
}

#[cfg(test)]
mod tests;
