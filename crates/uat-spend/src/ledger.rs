//! The spend of each API key in its current budget period: atomics in
//! memory, a table in the storage database, a background task between them.
//!
//! An [`Account`] holds three words: the start of the period it counts, the
//! spend of that period as this replica knows it (`spent`, what admission
//! reads), and what this replica added that the task has not taken yet
//! (`unflushed`). A request adds to both with two atomic additions. Every
//! second the task moves `unflushed` into its backlog, by period, and adds
//! the backlog to `uat_key_spend` in one transaction (an upsert per key);
//! a failed write keeps the backlog for the next tick, so nothing is lost
//! while the database is down (and the outage is logged once). On
//! PostgreSQL, shared by replicas, it then reads the totals back every few
//! seconds, so each replica's `spent` includes the others' spend: budgets
//! hold across replicas within a few seconds, not exactly.
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
    /// How often deltas are written (1 s).
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
    /// or `postgres://...`), creates `uat_key_spend` when it is not there,
    /// loads each key's spend of its current period and starts the task.
    /// A database that cannot be reached is an error (the caller's to
    /// report); later outages are not.
    pub async fn open(
        url: &str,
        keys: &[KeyBudget],
        options: LedgerOptions,
    ) -> Result<Ledger, SpendError> {
        let db = connect(url).await?;
        within(create_table(&db)).await?;
        let now = crate::unix_now();
        let accounts: Arc<[Arc<Account>]> = keys
            .iter()
            .map(|k| Arc::new(Account::new(k, now)))
            .collect();
        let by_name = accounts
            .iter()
            .enumerate()
            .map(|(i, a)| (a.name.clone(), i))
            .collect();
        within(reload(&db, &accounts, &HashMap::new())).await?;
        let (cmds, rx) = mpsc::channel(16);
        let healthy = Arc::new(AtomicBool::new(true));
        let backend = match db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        };
        let task = Task {
            db,
            accounts: accounts.clone(),
            backlog: HashMap::new(),
            healthy: healthy.clone(),
        };
        tokio::spawn(task.run(rx, options));
        Ok(Ledger {
            inner: Arc::new(Inner {
                accounts,
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

const CREATE_SQLITE: &str = "CREATE TABLE IF NOT EXISTS uat_key_spend (
    key_name TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    spend_nanos BIGINT NOT NULL,
    PRIMARY KEY (key_name, period_start)
) WITHOUT ROWID";

const CREATE_PG: &str = "CREATE TABLE IF NOT EXISTS uat_key_spend (
    key_name TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    spend_nanos BIGINT NOT NULL,
    PRIMARY KEY (key_name, period_start)
)";

/// Adds a delta; the sum stops at the largest BIGINT instead of failing
/// the batch for ever.
const UPSERT_SQLITE: &str = "INSERT INTO uat_key_spend (key_name, period_start, spend_nanos)
    VALUES (?, ?, ?)
    ON CONFLICT (key_name, period_start) DO UPDATE
    SET spend_nanos = MIN(uat_key_spend.spend_nanos + excluded.spend_nanos, 9223372036854775807)";

const UPSERT_PG: &str = "INSERT INTO uat_key_spend (key_name, period_start, spend_nanos)
    VALUES ($1, $2, $3)
    ON CONFLICT (key_name, period_start) DO UPDATE
    SET spend_nanos = LEAST(uat_key_spend.spend_nanos::numeric + excluded.spend_nanos, 9223372036854775807)::bigint";

const SELECT_SQLITE: &str =
    "SELECT spend_nanos FROM uat_key_spend WHERE key_name = ? AND period_start = ?";
const SELECT_PG: &str =
    "SELECT spend_nanos FROM uat_key_spend WHERE key_name = $1 AND period_start = $2";

async fn create_table(db: &Db) -> Result<(), SpendError> {
    match db {
        Db::Sqlite(p) => {
            sqlx::raw_sql(CREATE_SQLITE).execute(p).await?;
        }
        Db::Postgres(p) => {
            // Replicas starting at once: CREATE TABLE IF NOT EXISTS races
            // on PostgreSQL's catalog, so one at a time.
            let mut tx = p.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(7455320023)")
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(CREATE_PG).execute(&mut *tx).await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

fn to_db(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Adds the backlog's deltas in one transaction.
async fn write(
    db: &Db,
    accounts: &[Arc<Account>],
    backlog: &HashMap<(usize, i64), u64>,
) -> Result<(), SpendError> {
    let rows = backlog
        .iter()
        .filter_map(|(&(i, start), &n)| Some((accounts.get(i)?.name(), start, to_db(n))));
    match db {
        Db::Sqlite(p) => {
            let mut tx = p.begin().await?;
            for (name, start, n) in rows {
                sqlx::query(UPSERT_SQLITE)
                    .bind(name)
                    .bind(start)
                    .bind(n)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        Db::Postgres(p) => {
            let mut tx = p.begin().await?;
            for (name, start, n) in rows {
                sqlx::query(UPSERT_PG)
                    .bind(name)
                    .bind(start)
                    .bind(n)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
    }
    Ok(())
}

/// Reads each key's total of its current period and sets its `spent` to it
/// plus what this replica has not written yet.
async fn reload(
    db: &Db,
    accounts: &[Arc<Account>],
    backlog: &HashMap<(usize, i64), u64>,
) -> Result<(), SpendError> {
    for (i, a) in accounts.iter().enumerate() {
        let start = a.start.load(Ordering::Acquire);
        let total: Option<i64> = match db {
            Db::Sqlite(p) => {
                sqlx::query_scalar(SELECT_SQLITE)
                    .bind(a.name())
                    .bind(start)
                    .fetch_optional(p)
                    .await?
            }
            Db::Postgres(p) => {
                sqlx::query_scalar(SELECT_PG)
                    .bind(a.name())
                    .bind(start)
                    .fetch_optional(p)
                    .await?
            }
        };
        let total = total.map_or(0, |t| u64::try_from(t).unwrap_or(0));
        let pending = backlog.get(&(i, start)).copied().unwrap_or(0);
        let known = total
            .saturating_add(pending)
            .saturating_add(a.unflushed.load(Ordering::Acquire));
        // The period rolled meanwhile: the next reading is the new one's.
        if a.start.load(Ordering::Acquire) == start {
            a.spent.store(known, Ordering::Release);
        }
    }
    Ok(())
}

/// The background task: the only writer of the table.
struct Task {
    db: Db,
    accounts: Arc<[Arc<Account>]>,
    /// Deltas taken from the accounts and not written yet, by account and
    /// period start.
    backlog: HashMap<(usize, i64), u64>,
    healthy: Arc<AtomicBool>,
}

impl Task {
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

    /// Takes what the accounts added (starting new periods) and writes it.
    async fn flush(&mut self) -> Result<(), SpendError> {
        let now = crate::unix_now();
        for (i, a) in self.accounts.iter().enumerate() {
            if let Some((old, n)) = a.roll(now)
                && n > 0
            {
                let d = self.backlog.entry((i, old)).or_insert(0);
                *d = d.saturating_add(n);
            }
            let n = a.unflushed.swap(0, Ordering::AcqRel);
            if n > 0 {
                let start = a.start.load(Ordering::Acquire);
                let d = self.backlog.entry((i, start)).or_insert(0);
                *d = d.saturating_add(n);
            }
        }
        if self.backlog.is_empty() {
            return Ok(());
        }
        let r = within(write(&self.db, &self.accounts, &self.backlog)).await;
        if r.is_ok() {
            self.backlog.clear();
        }
        self.outcome(r)
    }

    /// Writes, then reads the totals back.
    async fn reload(&mut self) -> Result<(), SpendError> {
        self.flush().await?;
        let r = within(reload(&self.db, &self.accounts, &self.backlog)).await;
        self.outcome(r)
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
