//! The spend of each API key in its current budget period: atomics in
//! memory, a table in the storage database, a background task between them.
//!
//! An [`Account`] holds three words: the start of the period it counts, the
//! spend of that period as this replica knows it (`spent`, what admission
//! reads), and what this replica added that the task has not taken yet
//! (`unflushed`). A request adds to both with two atomic additions.
//!
//! Each replica (each [`Ledger::open`], with a random id) owns its rows of
//! `uat_key_spend_replica (key_name, period_start, replica, spend_nanos)`
//! and writes there *absolute* totals: what this replica spent on the key
//! in that period since it started. Every second the task moves
//! `unflushed` into its totals, by period, and upserts the totals that
//! changed since the last write in one statement (SQLite: one transaction
//! of a few multi-row statements), keeping the larger of the stored and
//! the written value. Writing a total again is harmless, so a write whose
//! commit lands after the timeout has fired (and is therefore retried) is
//! not counted twice; a failed write keeps the totals dirty for the next
//! tick, so nothing is lost while the database is down (the outage is
//! logged once). A key's spend is the sum of every replica's rows for its
//! period, past replicas (restarts) included: this replica reads the
//! others' rows back (on PostgreSQL, shared by replicas, every few
//! seconds; on SQLite at start-up) in one statement and adds its own total
//! from memory, so budgets hold across replicas within a few seconds, not
//! exactly.
//!
//! The table before it, `uat_key_spend (key_name, period_start,
//! spend_nanos)`, held deltas added by every replica. At open its rows are
//! moved (added) into the rows of replica `legacy`, and it is emptied, in
//! one transaction (on PostgreSQL under the lock replicas take to create
//! the tables), so no spend is lost or counted twice; what a replica of an
//! older version still writes there during a rolling upgrade is moved by
//! the next open.
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
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
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
    /// Unix seconds: the start of the period `spent` counts.
    start: AtomicI64,
    /// Nano-USD spent in that period, as this replica knows it.
    spent: AtomicU64,
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
        self.spent.load(Ordering::Acquire)
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
        // `spent` first: a reader in between sees the old start, so 0.
        self.spent.store(0, Ordering::Release);
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
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions {
            flush_interval: Duration::from_secs(1),
            reload_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

enum Cmd {
    Flush(oneshot::Sender<Result<(), SpendError>>),
    Reload(oneshot::Sender<Result<(), SpendError>>),
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
    healthy: Arc<AtomicBool>,
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
    /// there (moving the rows of the older `uat_key_spend` into it), loads
    /// each key's spend of its current period and starts the task. A
    /// database that cannot be reached is an error (the caller's to
    /// report); later outages are not. A name given twice is one account
    /// (the first one's budget and period).
    pub async fn open(
        url: &str,
        keys: &[KeyBudget],
        options: LedgerOptions,
    ) -> Result<Ledger, SpendError> {
        let db = connect(url).await?;
        within(create_table(&db)).await?;
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
        let healthy = Arc::new(AtomicBool::new(true));
        let task = Task::new(db, replica_id(), unique.into(), healthy.clone());
        within(task.read_back()).await?;
        let (cmds, rx) = mpsc::channel(16);
        tokio::spawn(task.run(rx, options));
        Ok(Ledger {
            inner: Arc::new(Inner {
                accounts: accounts.into(),
                by_name,
                cmds,
                healthy,
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

    /// False while the last write to the database failed (the spend is
    /// kept in memory and retried).
    pub fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Acquire)
    }

    /// Writes what was added so far now (at shutdown; tests), through the
    /// task, and waits for it.
    pub async fn flush(&self) -> Result<(), SpendError> {
        self.ask(Cmd::Flush).await
    }

    /// Writes, then reads every key's total back (what the task does every
    /// few seconds on PostgreSQL).
    pub async fn reload(&self) -> Result<(), SpendError> {
        self.ask(Cmd::Reload).await
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

/// The replica id the rows of the older table are moved to.
const LEGACY: &str = "legacy";

/// One row per key, period and replica: the replica's absolute spend on
/// the key in that period (only ever raised).
const CREATE_SQLITE: &str = "CREATE TABLE IF NOT EXISTS uat_key_spend_replica (
    key_name TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    replica TEXT NOT NULL,
    spend_nanos BIGINT NOT NULL,
    PRIMARY KEY (key_name, period_start, replica)
) WITHOUT ROWID";

const CREATE_PG: &str = "CREATE TABLE IF NOT EXISTS uat_key_spend_replica (
    key_name TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    replica TEXT NOT NULL,
    spend_nanos BIGINT NOT NULL,
    PRIMARY KEY (key_name, period_start, replica)
)";

/// Is the older table (deltas, one row per key and period) there?
const OLD_EXISTS_SQLITE: &str =
    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'uat_key_spend'";
const OLD_EXISTS_PG: &str = "SELECT to_regclass('uat_key_spend') IS NOT NULL";

/// Adds the older table's rows (deltas) to replica `legacy`'s, saturating
/// at the largest BIGINT (`+` overflowing gives a REAL, which `MIN` caps).
/// `WHERE true`: SQLite's parser needs it before `ON CONFLICT` after a
/// `SELECT`.
const MOVE_OLD_SQLITE: &str = "INSERT INTO uat_key_spend_replica (key_name, period_start, replica, spend_nanos)
    SELECT key_name, period_start, ?, spend_nanos FROM uat_key_spend WHERE true
    ON CONFLICT (key_name, period_start, replica) DO UPDATE
    SET spend_nanos = MIN(uat_key_spend_replica.spend_nanos + excluded.spend_nanos, 9223372036854775807)";
const EMPTY_OLD_SQLITE: &str = "DELETE FROM uat_key_spend";

/// The same in one statement: the rows deleted are the rows moved.
const MOVE_OLD_PG: &str = "WITH moved AS (
        DELETE FROM uat_key_spend RETURNING key_name, period_start, spend_nanos
    )
    INSERT INTO uat_key_spend_replica AS t (key_name, period_start, replica, spend_nanos)
    SELECT key_name, period_start, $1, spend_nanos FROM moved
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
/// summed by key and capped at the largest BIGINT (`SUM` of BIGINTs is a
/// NUMERIC).
const SELECT_PG: &str = "SELECT s.key_name, s.period_start,
        LEAST(SUM(s.spend_nanos), 9223372036854775807)::bigint
    FROM UNNEST($1::text[], $2::bigint[]) AS k (key_name, period_start)
    JOIN uat_key_spend_replica AS s
        ON s.key_name = k.key_name AND s.period_start = k.period_start
    WHERE s.replica <> $3
    GROUP BY s.key_name, s.period_start";

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
/// to leave out. Rows, not sums: SQLite's `SUM` fails on overflow, so the
/// sums are taken (saturating) in Rust.
fn select_sqlite(n: usize) -> String {
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
    sql
}

/// Creates the table and moves the older table's rows into it, in one
/// transaction.
async fn create_table(db: &Db) -> Result<(), SpendError> {
    match db {
        Db::Sqlite(p) => {
            // IMMEDIATE: the write lock from the start, so the check and
            // the move see the same table.
            let mut tx = p.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::raw_sql(CREATE_SQLITE).execute(&mut *tx).await?;
            let old: i64 = sqlx::query_scalar(OLD_EXISTS_SQLITE)
                .fetch_one(&mut *tx)
                .await?;
            if old > 0 {
                let moved = sqlx::query(MOVE_OLD_SQLITE)
                    .bind(LEGACY)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query(EMPTY_OLD_SQLITE).execute(&mut *tx).await?;
                log_moved(moved);
            }
            tx.commit().await?;
        }
        Db::Postgres(p) => {
            // Replicas starting at once: CREATE TABLE IF NOT EXISTS races
            // on PostgreSQL's catalog, and two moves would race too, so one
            // at a time (the lock older versions take as well).
            let mut tx = p.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(7455320023)")
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(CREATE_PG).execute(&mut *tx).await?;
            let old: bool = sqlx::query_scalar(OLD_EXISTS_PG)
                .fetch_one(&mut *tx)
                .await?;
            if old {
                let moved = sqlx::query(MOVE_OLD_PG)
                    .bind(LEGACY)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                log_moved(moved);
            }
            tx.commit().await?;
        }
    }
    Ok(())
}

fn log_moved(rows: u64) {
    if rows > 0 {
        tracing::info!(
            rows,
            "spend ledger: moved the spend of uat_key_spend to uat_key_spend_replica (replica `legacy`)"
        );
    }
}

fn to_db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A row to write: this replica's total of a key in a period.
#[derive(Debug, Clone, PartialEq)]
struct Row<'a> {
    name: &'a str,
    start: i64,
    total: u64,
}

/// Upserts this replica's totals (absolute; the larger value is kept) in
/// one statement (SQLite: one transaction of chunks).
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
/// (distinct), summed by pair (saturating at the largest BIGINT).
async fn read_others(
    db: &Db,
    replica: &str,
    wanted: &[(&str, i64)],
) -> Result<Vec<(String, i64, u64)>, SpendError> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, i64, i64)> = match db {
        Db::Sqlite(p) => {
            let mut rows = Vec::new();
            for chunk in wanted.chunks(SQLITE_READ_CHUNK) {
                let sql = select_sqlite(chunk.len());
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
            sqlx::query_as(SELECT_PG)
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
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Total {
    /// Everything taken from the account for the period.
    total: u64,
    /// The total the last successful write stored (the row holds at least
    /// that).
    written: u64,
}

/// The background task: the only writer of this replica's rows.
struct Task {
    db: Db,
    /// This replica's id, the `replica` of its rows.
    replica: Box<str>,
    /// One account per name.
    accounts: Arc<[Arc<Account>]>,
    /// This replica's totals by account (index) and period start: the
    /// current periods', and older ones' not written yet.
    totals: HashMap<(usize, i64), Total>,
    healthy: Arc<AtomicBool>,
}

impl Task {
    fn new(
        db: Db,
        replica: Box<str>,
        accounts: Arc<[Arc<Account>]>,
        healthy: Arc<AtomicBool>,
    ) -> Self {
        Task {
            db,
            replica,
            accounts,
            totals: HashMap::new(),
            healthy,
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
                    None => {
                        // The ledger is gone: a last write of what is left.
                        let _ = self.flush().await;
                        return;
                    }
                },
            }
        }
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
    fn dirty(&self) -> Vec<(usize, i64, u64)> {
        self.totals
            .iter()
            .filter(|(_, t)| t.total != t.written)
            .map(|(&(i, start), t)| (i, start, t.total))
            .collect()
    }

    /// Notes `rows` as stored, and forgets the totals of periods that are
    /// over and written: nothing is added to them any more. (A clock set
    /// back across a period boundary would start that period's total here
    /// from 0 again; the row keeps the larger value, so this replica's
    /// spend in it is under-counted by what it had written.)
    fn mark_written(&mut self, rows: &[(usize, i64, u64)]) {
        for &(i, start, total) in rows {
            if let Some(t) = self.totals.get_mut(&(i, start)) {
                t.written = t.written.max(total);
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
        let dirty = self.dirty();
        if dirty.is_empty() {
            return Ok(());
        }
        let rows: Vec<Row<'_>> = dirty
            .iter()
            .filter_map(|&(i, start, total)| {
                Some(Row {
                    name: self.accounts.get(i)?.name(),
                    start,
                    total,
                })
            })
            .collect();
        let r = within(write(&self.db, &self.replica, &rows)).await;
        drop(rows);
        if r.is_ok() {
            self.mark_written(&dirty);
        }
        self.outcome(r)
    }

    /// Writes, then reads the totals back.
    async fn reload(&mut self) -> Result<(), SpendError> {
        self.flush().await?;
        let r = within(self.read_back()).await;
        self.outcome(r)
    }

    /// Sets each account's `spent` to the other replicas' rows of its
    /// current period, plus this replica's total and what it added since
    /// (this replica's rows are not read: its totals in memory are at
    /// least as new).
    async fn read_back(&self) -> Result<(), SpendError> {
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
        for (name, start, n) in read_others(&self.db, &self.replica, &wanted).await? {
            if let Some(&i) = index.get(&(name.as_str(), start)) {
                others[i] = others[i].saturating_add(n);
            }
        }
        for (i, a) in self.accounts.iter().enumerate() {
            let start = starts[i];
            let own = self.totals.get(&(i, start)).map_or(0, |t| t.total);
            let known = others[i]
                .saturating_add(own)
                .saturating_add(a.unflushed.load(Ordering::Acquire));
            // The period rolled meanwhile: the next reading is the new one's.
            if a.start.load(Ordering::Acquire) == start {
                a.spent.store(known, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Logs an outage once, and its end.
    fn outcome(&self, r: Result<(), SpendError>) -> Result<(), SpendError> {
        match &r {
            Ok(()) => {
                if !self.healthy.swap(true, Ordering::AcqRel) {
                    tracing::info!(
                        "spend ledger: the database answers again; the spend kept in memory is written"
                    );
                }
            }
            Err(e) => {
                if self.healthy.swap(false, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "spend ledger: cannot reach the database; keeping the spend in memory and retrying every second");
                }
            }
        }
        r
    }
}

#[cfg(test)]
mod tests;
