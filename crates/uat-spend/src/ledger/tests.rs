//! The ledger against real databases: a SQLite file in a temporary folder,
//! and PostgreSQL (`UAT_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; unreachable is a failure when
//! `CI` is set, a loud skip otherwise). Key names are unique per run, so
//! tests sharing the PostgreSQL tables never see each other's rows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::NANOS_PER_USD;

fn unique(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::new_v4().simple())
}

fn budget(name: &str, usd: Option<f64>, period: Option<Duration>) -> KeyBudget {
    KeyBudget {
        name: name.to_owned(),
        max_budget: usd,
        period,
    }
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/uat.db", dir.path().display())
}

fn postgres_url() -> Option<String> {
    Some(
        std::env::var("UAT_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
    )
}

/// A ledger on PostgreSQL; `None` (loudly) when it is unreachable outside CI.
async fn postgres(keys: &[KeyBudget], options: LedgerOptions) -> Option<Ledger> {
    let url = postgres_url()?;
    match Ledger::open(&url, keys, options).await {
        Ok(l) => Some(l),
        Err(e) if std::env::var("CI").is_err() => {
            eprintln!(
                "SKIPPED: PostgreSQL at {url} is unreachable ({e}); set CI=true to make this a failure"
            );
            None
        }
        Err(e) => panic!("PostgreSQL at {url} is unreachable in CI: {e}"),
    }
}

/// Options that leave writing and reading to the test.
fn manual() -> LedgerOptions {
    LedgerOptions {
        flush_interval: Duration::from_secs(3600),
        reload_interval: Duration::from_secs(3600),
        old_table_recheck: Duration::from_secs(3600),
    }
}

#[test]
fn an_account_counts_its_period_and_starts_the_next_from_zero() {
    let day = Duration::from_secs(86_400);
    let now = 1_710_083_045; // 2024-03-10T15:04:05Z
    let a = Account::new(&budget("k", Some(1.0), Some(day)), now);
    a.add(600_000_000);
    assert!(!a.exhausted_at(now));
    a.add(400_000_000);
    assert_eq!(a.spent_at(now), NANOS_PER_USD);
    assert!(a.exhausted_at(now), "at the budget is exhausted");
    assert!(a.roll(now).is_none(), "same period");
    // The next day: admission reads 0 at once, before the task rolls it.
    let tomorrow = now + 86_400;
    assert_eq!(a.spent_at(tomorrow), 0);
    assert!(!a.exhausted_at(tomorrow));
    // The roll hands what was not taken to the old period.
    assert_eq!(a.roll(tomorrow), Some((1_710_028_800, NANOS_PER_USD)));
    assert_eq!(a.spent_at(tomorrow), 0);
    a.add(5);
    assert_eq!(a.spent_at(tomorrow), 5);
    // No budget: never exhausted; no period: never rolls.
    let open = Account::new(&budget("o", None, None), now);
    open.add(u64::MAX);
    open.add(u64::MAX);
    assert_eq!(open.spent_at(now), u64::MAX, "saturates");
    assert!(!open.exhausted_at(now));
    assert!(open.roll(now + 10 * 365 * 86_400).is_none());
}

#[tokio::test]
async fn sqlite_keeps_the_spend_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let keys = [
        budget("a", Some(1.0), None),
        budget("b", None, Some(Duration::from_secs(30 * 86_400))),
    ];
    let ledger = Ledger::open(&url, &keys, manual()).await.unwrap();
    assert_eq!(ledger.backend(), "sqlite");
    let a = ledger.account("a").unwrap().clone();
    let b = ledger.account("b").unwrap().clone();
    assert!(ledger.account("c").is_none());
    a.add(300);
    b.add(7);
    ledger.flush().await.unwrap();
    a.add(200);
    ledger.flush().await.unwrap();
    drop(ledger);
    let again = Ledger::open(&url, &keys, manual()).await.unwrap();
    assert_eq!(again.account("a").unwrap().spent(), 500);
    assert_eq!(again.account("b").unwrap().spent(), 7);
    // A new replica: its row adds to the old one's.
    again.account("a").unwrap().add(1);
    again.flush().await.unwrap();
    again.reload().await.unwrap();
    assert_eq!(again.account("a").unwrap().spent(), 501);
    assert!(again.healthy());
}

#[tokio::test]
async fn a_dropped_ledger_writes_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let keys = [budget("a", None, None)];
    let ledger = Ledger::open(&url, &keys, manual()).await.unwrap();
    ledger.account("a").unwrap().add(42);
    drop(ledger);
    // The task's last write runs on its own; give it a moment.
    let mut seen = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let l = Ledger::open(&url, &keys, manual()).await.unwrap();
        seen = l.account("a").unwrap().spent();
        if seen == 42 {
            break;
        }
    }
    assert_eq!(seen, 42);
}

#[tokio::test]
async fn a_failed_write_keeps_the_totals_until_the_database_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let keys = [budget("a", Some(10.0), None)];
    let ledger = Ledger::open(&url, &keys, manual()).await.unwrap();
    let a = ledger.account("a").unwrap().clone();
    a.add(1_000);
    ledger.flush().await.unwrap();
    // Another connection takes the table away: writes fail.
    let other = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    sqlx::raw_sql("ALTER TABLE uat_key_spend_replica RENAME TO uat_key_spend_away")
        .execute(&other)
        .await
        .unwrap();
    a.add(20);
    assert!(ledger.flush().await.is_err());
    assert!(!ledger.healthy());
    a.add(3);
    assert!(ledger.flush().await.is_err(), "still failing");
    assert_eq!(a.spent(), 1_023, "admission still counts it");
    // Back: everything kept is written once.
    sqlx::raw_sql("ALTER TABLE uat_key_spend_away RENAME TO uat_key_spend_replica")
        .execute(&other)
        .await
        .unwrap();
    ledger.flush().await.unwrap();
    assert!(ledger.healthy());
    let total: i64 = sqlx::query_scalar(
        "SELECT SUM(spend_nanos) FROM uat_key_spend_replica WHERE key_name = 'a'",
    )
    .fetch_one(&other)
    .await
    .unwrap();
    assert_eq!(total, 1_023);
}

#[tokio::test]
async fn postgres_replicas_see_each_other_s_spend() {
    let k = unique("spend-pg");
    let free = unique("spend-pg-free");
    let keys = [
        budget(&k, Some(0.000_001), Some(Duration::from_secs(86_400))),
        budget(&free, None, None),
    ];
    let Some(one) = postgres(&keys, manual()).await else {
        return;
    };
    let Some(two) = postgres(&keys, manual()).await else {
        return;
    };
    assert_eq!(one.backend(), "postgres");
    let (a1, a2) = (one.account(&k).unwrap(), two.account(&k).unwrap());
    assert_eq!(a1.spent(), 0, "a fresh key");
    a1.add(600);
    one.flush().await.unwrap();
    assert_eq!(a2.spent(), 0, "not read back yet");
    two.reload().await.unwrap();
    assert_eq!(a2.spent(), 600);
    a2.add(400);
    assert!(
        a2.exhausted_at(crate::unix_now()),
        "1,000 nano-USD is the budget"
    );
    two.flush().await.unwrap();
    one.reload().await.unwrap();
    assert_eq!(a1.spent(), 1_000);
    assert!(a1.exhausted_at(crate::unix_now()));
    // A third start loads the total; the other key is untouched.
    let Some(three) = postgres(&keys, manual()).await else {
        return;
    };
    assert_eq!(three.account(&k).unwrap().spent(), 1_000);
    assert_eq!(three.account(&free).unwrap().spent(), 0);
}

#[tokio::test]
async fn postgres_reads_back_on_its_own() {
    let k = unique("spend-pg-auto");
    let keys = [budget(&k, None, None)];
    let fast = LedgerOptions {
        flush_interval: Duration::from_millis(20),
        reload_interval: Duration::from_millis(50),
        ..manual()
    };
    let Some(one) = postgres(&keys, fast).await else {
        return;
    };
    let Some(two) = postgres(&keys, fast).await else {
        return;
    };
    one.account(&k).unwrap().add(77);
    let mut seen = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = two.account(&k).unwrap().spent();
        if seen == 77 {
            break;
        }
    }
    assert_eq!(seen, 77, "the other replica's spend, read back by the task");
}

/// A task on `url`'s database as [`Ledger::open`] makes it (the table
/// created), without its loop: the test drives
/// it, with clocks of its choosing.
async fn bare_task(url: &str, keys: &[KeyBudget], now: i64) -> Result<Task, SpendError> {
    let db = connect(url).await?;
    let old_table = prepare(&db).await?;
    let accounts: Arc<[Arc<Account>]> = keys
        .iter()
        .map(|k| Arc::new(Account::new(k, now)))
        .collect();
    Ok(Task::new(
        db,
        replica_id(),
        old_table,
        accounts,
        Arc::new(AtomicU8::new(0)),
    ))
}

/// A bare task on PostgreSQL; `None` (loudly) when it is unreachable
/// outside CI.
async fn postgres_task(keys: &[KeyBudget], now: i64) -> Option<Task> {
    let url = postgres_url()?;
    match bare_task(&url, keys, now).await {
        Ok(t) => Some(t),
        Err(e) if std::env::var("CI").is_err() => {
            eprintln!(
                "SKIPPED: PostgreSQL at {url} is unreachable ({e}); set CI=true to make this a failure"
            );
            None
        }
        Err(e) => panic!("PostgreSQL at {url} is unreachable in CI: {e}"),
    }
}

/// A plain connection to the test's PostgreSQL (reachable: a ledger or a
/// task was opened on it first).
async fn postgres_pool() -> PgPool {
    let url = postgres_url().unwrap();
    PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap()
}

/// A plain connection to a test's SQLite file, created when missing.
async fn sqlite_pool(url: &str) -> SqlitePool {
    let opts = SqliteConnectOptions::from_str(url)
        .unwrap()
        .create_if_missing(true);
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap()
}

/// A value bound to a test statement.
#[derive(Clone, Copy)]
enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

/// `sql` written with `?` placeholders, as PostgreSQL numbers them.
fn numbered(sql: &str) -> String {
    let mut n = 0;
    let mut out = String::with_capacity(sql.len() + 8);
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// `q` with `args` bound in order.
fn bound<'q, D: sqlx::Database>(
    mut q: sqlx::query::Query<'q, D, D::Arguments<'q>>,
    args: &[Arg<'q>],
) -> sqlx::query::Query<'q, D, D::Arguments<'q>>
where
    &'q str: sqlx::Encode<'q, D> + sqlx::Type<D>,
    i64: sqlx::Encode<'q, D> + sqlx::Type<D>,
{
    for a in args {
        q = match *a {
            Arg::Text(t) => q.bind(t),
            Arg::Int(i) => q.bind(i),
        };
    }
    q
}

/// Runs a test statement (`?` placeholders) on either database; the rows
/// it changed.
async fn exec(db: &Db, sql: &str, args: &[Arg<'_>]) -> u64 {
    match db {
        Db::Sqlite(p) => bound(sqlx::query(sql), args)
            .execute(p)
            .await
            .unwrap()
            .rows_affected(),
        Db::Postgres(p) => bound(sqlx::query(&numbered(sql)), args)
            .execute(p)
            .await
            .unwrap()
            .rows_affected(),
    }
}

/// The one BIGINT a test query (`?` placeholders) gives, on either database.
async fn scalar(db: &Db, sql: &str, args: &[Arg<'_>]) -> i64 {
    use sqlx::Row;
    match db {
        Db::Sqlite(p) => bound(sqlx::query(sql), args)
            .fetch_one(p)
            .await
            .unwrap()
            .get(0),
        Db::Postgres(p) => bound(sqlx::query(&numbered(sql)), args)
            .fetch_one(p)
            .await
            .unwrap()
            .get(0),
    }
}

/// The sum and the count of a key's rows in the table, every replica's.
async fn stored(db: &Db, name: &str) -> (i64, i64) {
    let key = [Arg::Text(name)];
    let sum = scalar(
        db,
        "SELECT CAST(COALESCE(SUM(spend_nanos), 0) AS BIGINT) FROM uat_key_spend_replica WHERE key_name = ?",
        &key,
    )
    .await;
    let count = scalar(
        db,
        "SELECT COUNT(*) FROM uat_key_spend_replica WHERE key_name = ?",
        &key,
    )
    .await;
    (sum, count)
}

/// A write whose commit landed but whose answer was lost (the timeout
/// fired) leaves the totals dirty: they are written again, and so is the
/// same row twice, or an older total late. The row holds the total once.
async fn a_total_written_twice_counts_once(mut task: Task) {
    let a = task.accounts[0].clone();
    let name = a.name().to_owned();
    let now = crate::unix_now();
    a.add(700);
    task.flush_at(now).await.unwrap();
    assert_eq!(stored(&task.db, &name).await, (700, 1));
    // The write of 700 "timed out" after its commit.
    for t in task.totals.values_mut() {
        t.written = 0;
    }
    a.add(5);
    assert_eq!(task.dirty().len(), 1);
    task.flush_at(now).await.unwrap();
    assert_eq!(
        stored(&task.db, &name).await,
        (705, 1),
        "not 1,405: the total, not a delta"
    );
    assert!(task.dirty().is_empty(), "nothing changed since");
    let start = a.start.load(Ordering::Acquire);
    let row = |total| Row {
        account: 0,
        name: &name,
        start,
        total,
    };
    write(&task.db, &task.replica, &[row(705)]).await.unwrap();
    write(&task.db, &task.replica, &[row(705)]).await.unwrap();
    write(&task.db, &task.replica, &[row(700)]).await.unwrap();
    assert_eq!(stored(&task.db, &name).await, (705, 1), "late and repeated");
    // This replica's row is its total in memory, not added to it again.
    task.read_back().await.unwrap();
    assert_eq!(a.spent_at(now), 705);
}

#[tokio::test]
async fn sqlite_counts_a_total_written_twice_once() {
    let dir = tempfile::tempdir().unwrap();
    let keys = [budget("a", None, None)];
    let task = bare_task(&sqlite_url(&dir), &keys, crate::unix_now())
        .await
        .unwrap();
    a_total_written_twice_counts_once(task).await;
    let again = Ledger::open(&sqlite_url(&dir), &keys, manual())
        .await
        .unwrap();
    assert_eq!(again.account("a").unwrap().spent(), 705);
}

#[tokio::test]
async fn postgres_counts_a_total_written_twice_once() {
    let k = unique("spend-pg-twice");
    let keys = [budget(&k, None, Some(Duration::from_secs(86_400)))];
    let Some(task) = postgres_task(&keys, crate::unix_now()).await else {
        return;
    };
    a_total_written_twice_counts_once(task).await;
    let Some(again) = postgres(&keys, manual()).await else {
        return;
    };
    assert_eq!(again.account(&k).unwrap().spent(), 705);
}

#[tokio::test]
async fn postgres_replicas_write_their_own_rows_and_read_the_sum() {
    let k = unique("spend-pg-rows");
    let keys = [budget(&k, Some(1.0), Some(Duration::from_secs(86_400)))];
    let Some(one) = postgres(&keys, manual()).await else {
        return;
    };
    let Some(two) = postgres(&keys, manual()).await else {
        return;
    };
    let (a1, a2) = (one.account(&k).unwrap(), two.account(&k).unwrap());
    a1.add(100);
    a2.add(20);
    one.flush().await.unwrap();
    one.flush().await.unwrap();
    two.flush().await.unwrap();
    a1.add(3);
    one.flush().await.unwrap();
    one.reload().await.unwrap();
    two.reload().await.unwrap();
    assert_eq!(a1.spent(), 123);
    assert_eq!(a2.spent(), 123);
    let pool = postgres_pool().await;
    let replicas: Vec<(String, i64)> = sqlx::query_as(
        "SELECT replica, spend_nanos FROM uat_key_spend_replica WHERE key_name = $1 ORDER BY spend_nanos",
    )
    .bind(&k)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(replicas.len(), 2, "a row per replica: {replicas:?}");
    assert_eq!((replicas[0].1, replicas[1].1), (20, 103));
    assert_ne!(replicas[0].0, replicas[1].0);
    // A third replica (a restart) starts from the sum and adds its own row.
    let Some(three) = postgres(&keys, manual()).await else {
        return;
    };
    let a3 = three.account(&k).unwrap();
    assert_eq!(a3.spent(), 123);
    a3.add(1);
    three.flush().await.unwrap();
    one.reload().await.unwrap();
    assert_eq!(a1.spent(), 124);
    // Reading back twice changes nothing.
    two.reload().await.unwrap();
    two.reload().await.unwrap();
    assert_eq!(a2.spent(), 124);
}

#[tokio::test]
async fn a_period_over_is_written_then_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let minute = Duration::from_secs(60);
    let s0 = 1_710_083_040; // a whole minute
    let now = s0 + 10;
    let keys = [budget("r", None, Some(minute))];
    let mut task = bare_task(&sqlite_url(&dir), &keys, now).await.unwrap();
    let a = task.accounts[0].clone();
    a.add(100);
    task.flush_at(now).await.unwrap();
    // Charged before the tick that starts the next minute: the old one's.
    a.add(50);
    task.flush_at(now + 60).await.unwrap();
    assert_eq!(a.spent_at(now + 60), 0);
    assert!(
        task.totals.is_empty(),
        "written and over: {:?}",
        task.totals
    );
    a.add(7);
    task.flush_at(now + 60).await.unwrap();
    assert_eq!(task.totals.len(), 1);
    let Db::Sqlite(p) = &task.db else {
        unreachable!()
    };
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT period_start, spend_nanos FROM uat_key_spend_replica ORDER BY period_start",
    )
    .fetch_all(p)
    .await
    .unwrap();
    assert_eq!(rows, [(s0, 150), (s0 + 60, 7)]);
    task.read_back().await.unwrap();
    assert_eq!(a.spent_at(now + 60), 7, "the current period's only");
}

/// The older table, as versions before per-replica rows made it.
const CREATE_OLD: &str = "CREATE TABLE IF NOT EXISTS uat_key_spend (
    key_name TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    spend_nanos BIGINT NOT NULL,
    PRIMARY KEY (key_name, period_start)
)";

/// A period of ten years: its start is not 0, and stays the same for years.
const DECADE: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Every row of the older table (SQLite), in order.
async fn old_rows_sqlite(p: &SqlitePool) -> Vec<(String, i64, i64)> {
    sqlx::query_as(
        "SELECT key_name, period_start, spend_nanos FROM uat_key_spend
         ORDER BY key_name, period_start",
    )
    .fetch_all(p)
    .await
    .unwrap()
}

#[tokio::test]
async fn sqlite_counts_the_old_table_and_leaves_it_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let start = Period::new(Some(DECADE)).start_at(crate::unix_now());
    let old = sqlite_pool(&url).await;
    sqlx::raw_sql(CREATE_OLD).execute(&old).await.unwrap();
    for (name, period_start, n) in [
        ("a", 0, 500),
        ("b", start, 70),
        ("b", start - 1, 999), // an earlier period
        ("gone", 0, 5),        // a key no longer configured
    ] {
        sqlx::query("INSERT INTO uat_key_spend VALUES (?, ?, ?)")
            .bind(name)
            .bind(period_start)
            .bind(n)
            .execute(&old)
            .await
            .unwrap();
    }
    let before = old_rows_sqlite(&old).await;
    old.close().await;
    let keys = [budget("a", None, None), budget("b", None, Some(DECADE))];
    for _ in 0..2 {
        let l = Ledger::open(&url, &keys, manual()).await.unwrap();
        assert_eq!(l.account("a").unwrap().spent(), 500);
        assert_eq!(l.account("b").unwrap().spent(), 70, "counted once");
    }
    let pool = sqlite_pool(&url).await;
    assert_eq!(old_rows_sqlite(&pool).await, before, "left as it is");
    let copied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uat_key_spend_replica")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(copied, 0, "nothing copied into the new table");
    // A replica of the older version adds a delta there: counted by the
    // next open, with what this version writes.
    sqlx::query("UPDATE uat_key_spend SET spend_nanos = spend_nanos + 25 WHERE key_name = 'a'")
        .execute(&pool)
        .await
        .unwrap();
    let l = Ledger::open(&url, &keys, manual()).await.unwrap();
    let a = l.account("a").unwrap();
    assert_eq!(a.spent(), 525);
    a.add(1);
    l.flush().await.unwrap();
    drop(l);
    let l = Ledger::open(&url, &keys, manual()).await.unwrap();
    assert_eq!(l.account("a").unwrap().spent(), 526);
    let mut after = before.clone();
    after[0].2 = 525;
    assert_eq!(
        old_rows_sqlite(&pool).await,
        after,
        "only the older version wrote it"
    );
}

#[tokio::test]
async fn sqlite_does_not_create_the_old_table() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let keys = [budget("a", None, None)];
    let l = Ledger::open(&url, &keys, manual()).await.unwrap();
    l.account("a").unwrap().add(3);
    l.reload().await.unwrap();
    let pool = sqlite_pool(&url).await;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(tables, ["uat_key_spend_replica"]);
}

/// A schema of its own on the test's PostgreSQL, and a URL whose
/// connections use it (`search_path`): tests of the older table create
/// and drop it there, never where the other tests (and later runs) look.
struct PgSchema {
    name: String,
    url: String,
    /// A connection to the schema.
    pool: PgPool,
    /// A connection to the database as the tests' URL gives it.
    admin: PgPool,
}

/// A new [`PgSchema`]; `None` (loudly) when PostgreSQL is unreachable
/// outside CI.
async fn pg_schema() -> Option<PgSchema> {
    let base = postgres_url()?;
    let admin = match PgPoolOptions::new().max_connections(1).connect(&base).await {
        Ok(p) => p,
        Err(e) if std::env::var("CI").is_err() => {
            eprintln!(
                "SKIPPED: PostgreSQL at {base} is unreachable ({e}); set CI=true to make this a failure"
            );
            return None;
        }
        Err(e) => panic!("PostgreSQL at {base} is unreachable in CI: {e}"),
    };
    let name = format!("uat_spend_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(&format!("CREATE SCHEMA {name}"))
        .execute(&admin)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-csearch_path%3D{name}");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let path: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(path, name, "the URL's search_path");
    Some(PgSchema {
        name,
        url,
        pool,
        admin,
    })
}

impl PgSchema {
    async fn ledger(&self, keys: &[KeyBudget], options: LedgerOptions) -> Ledger {
        Ledger::open(&self.url, keys, options).await.unwrap()
    }

    /// Creates the older table, under the lock of the opens (as the older
    /// version's CREATE did).
    async fn create_old(&self) {
        let mut tx = self.pool.begin().await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock(7455320023)")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::raw_sql(CREATE_OLD).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn old_there(&self) -> bool {
        sqlx::query_scalar(OLD_EXISTS_PG)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn add_old(&self, name: &str, period_start: i64, n: i64) {
        sqlx::query("INSERT INTO uat_key_spend VALUES ($1, $2, $3)")
            .bind(name)
            .bind(period_start)
            .bind(n)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    /// Drops the schema and what is in it (the ledgers on it closed first).
    async fn drop(self) {
        self.pool.close().await;
        sqlx::raw_sql(&format!("DROP SCHEMA {} CASCADE", self.name))
            .execute(&self.admin)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn postgres_counts_the_old_table_and_leaves_it_as_it_is() {
    let (a, b) = ("a".to_owned(), "b".to_owned());
    let keys = [budget(&a, None, None), budget(&b, None, Some(DECADE))];
    let Some(schema) = pg_schema().await else {
        return;
    };
    let first = schema.ledger(&keys, manual()).await;
    let start = Period::new(Some(DECADE)).start_at(crate::unix_now());
    let pool = schema.pool.clone();
    schema.create_old().await;
    for (name, period_start, n) in [(&a, 0, 500), (&b, start, 70), (&b, start - 1, 999)] {
        schema.add_old(name, period_start, n).await;
    }
    let old_rows = async || -> Vec<(String, i64, i64)> {
        sqlx::query_as(
            "SELECT key_name, period_start, spend_nanos FROM uat_key_spend
             WHERE key_name IN ($1, $2) ORDER BY key_name, period_start",
        )
        .bind(&a)
        .bind(&b)
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let before = old_rows().await;
    let l = schema.ledger(&keys, manual()).await;
    let again = schema.ledger(&keys, manual()).await;
    for l in [&l, &again] {
        assert_eq!(l.account(&a).unwrap().spent(), 500);
        assert_eq!(l.account(&b).unwrap().spent(), 70, "counted once");
    }
    assert_eq!(old_rows().await, before, "left as it is");
    let copied: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM uat_key_spend_replica WHERE key_name IN ($1, $2)")
            .bind(&a)
            .bind(&b)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(copied, 0, "nothing copied into the new table");
    // A replica of the older version adds a delta: the next read-back
    // counts it, with this version's spend.
    sqlx::query("UPDATE uat_key_spend SET spend_nanos = spend_nanos + 25 WHERE key_name = $1")
        .bind(&a)
        .execute(&pool)
        .await
        .unwrap();
    let a1 = l.account(&a).unwrap();
    a1.add(1);
    l.reload().await.unwrap();
    assert_eq!(a1.spent(), 526);
    again.reload().await.unwrap();
    assert_eq!(again.account(&a).unwrap().spent(), 526);
    let mut after = before.clone();
    after[0].2 = 525;
    assert_eq!(old_rows().await, after, "only the older version wrote it");
    for l in [first, l, again] {
        l.close().await.unwrap();
    }
    schema.drop().await;
}

#[tokio::test]
async fn postgres_a_fresh_install_has_no_old_table_and_reads_back() {
    let k = "k".to_owned();
    let keys = [budget(&k, None, Some(DECADE))];
    let Some(schema) = pg_schema().await else {
        return;
    };
    let one = schema.ledger(&keys, manual()).await;
    let two = schema.ledger(&keys, manual()).await;
    assert!(!schema.old_there().await, "not created");
    let index: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_indexes
         WHERE schemaname = current_schema() AND indexname = 'uat_key_spend_replica_replica'",
    )
    .fetch_one(&schema.pool)
    .await
    .unwrap();
    assert_eq!(index, 1, "the index on replica");
    one.account(&k).unwrap().add(40);
    one.flush().await.unwrap();
    two.account(&k).unwrap().add(2);
    two.reload().await.unwrap();
    assert_eq!(two.account(&k).unwrap().spent(), 42);
    assert!(two.healthy());
    one.close().await.unwrap();
    two.close().await.unwrap();
    assert_eq!(rows_pg(&schema.pool, &k).await, [("base".to_owned(), 42)]);
    let three = schema.ledger(&keys, manual()).await;
    assert_eq!(three.account(&k).unwrap().spent(), 42);
    three.close().await.unwrap();
    schema.drop().await;
}

#[tokio::test]
async fn postgres_an_old_table_created_later_is_counted_at_the_next_look() {
    let k = "k".to_owned();
    let keys = [budget(&k, None, None)];
    let Some(schema) = pg_schema().await else {
        return;
    };
    let recheck = Duration::from_millis(300);
    let quick = schema
        .ledger(
            &keys,
            LedgerOptions {
                old_table_recheck: recheck,
                ..manual()
            },
        )
        .await;
    let slow = schema.ledger(&keys, manual()).await;
    // A replica of the older version creates it, and writes.
    schema.create_old().await;
    schema.add_old(&k, 0, 33).await;
    tokio::time::sleep(recheck + Duration::from_millis(50)).await;
    quick.reload().await.unwrap();
    assert_eq!(quick.account(&k).unwrap().spent(), 33, "looked again");
    slow.reload().await.unwrap();
    assert_eq!(
        slow.account(&k).unwrap().spent(),
        0,
        "its last look is not an hour old"
    );
    quick.close().await.unwrap();
    slow.close().await.unwrap();
    schema.drop().await;
}

/// The older table dropped while a ledger counts it: the next read-back
/// looks again and succeeds without it.
async fn the_old_table_dropped_is_no_failure(url: &str, drop_old: impl AsyncFnOnce()) {
    let keys = [budget("k", None, None)];
    let l = Ledger::open(url, &keys, manual()).await.unwrap();
    let a = l.account("k").unwrap();
    assert_eq!(a.spent(), 33, "counted");
    drop_old().await;
    a.add(1);
    l.reload().await.unwrap();
    assert!(l.healthy());
    assert_eq!(a.spent(), 1, "no longer counted");
    l.reload().await.unwrap();
    l.close().await.unwrap();
}

#[tokio::test]
async fn sqlite_the_old_table_dropped_is_no_failure() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let pool = sqlite_pool(&url).await;
    sqlx::raw_sql(CREATE_OLD).execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO uat_key_spend VALUES ('k', 0, 33)")
        .execute(&pool)
        .await
        .unwrap();
    the_old_table_dropped_is_no_failure(&url, async || {
        sqlx::raw_sql("DROP TABLE uat_key_spend")
            .execute(&pool)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn postgres_the_old_table_dropped_is_no_failure() {
    let Some(schema) = pg_schema().await else {
        return;
    };
    schema.create_old().await;
    schema.add_old("k", 0, 33).await;
    the_old_table_dropped_is_no_failure(&schema.url, async || {
        sqlx::raw_sql("DROP TABLE uat_key_spend")
            .execute(&schema.pool)
            .await
            .unwrap();
    })
    .await;
    schema.drop().await;
}

/// Every row of the new table (SQLite), in order.
async fn rows_sqlite(p: &SqlitePool) -> Vec<(String, i64, String, i64)> {
    sqlx::query_as(
        "SELECT key_name, period_start, replica, spend_nanos FROM uat_key_spend_replica
         ORDER BY key_name, period_start, replica",
    )
    .fetch_all(p)
    .await
    .unwrap()
}

#[tokio::test]
async fn sqlite_a_replica_closing_folds_its_own_rows_into_base() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let start = Period::new(Some(DECADE)).start_at(crate::unix_now());
    let keys = [budget("a", None, None), budget("b", None, Some(DECADE))];
    drop(Ledger::open(&url, &keys, manual()).await.unwrap());
    let pool = sqlite_pool(&url).await;
    // Rows of other replicas, one of them (r1) perhaps still running on
    // the file: an open leaves them as they are.
    let others = [
        ("a", 0, "base", 3),
        ("a", 0, "r1", 100),
        ("b", start - 1, "r2", 7),  // an earlier period
        ("c", 0, "base", i64::MAX), // a key no longer configured
    ];
    for (name, period_start, replica, n) in others {
        sqlx::query("INSERT INTO uat_key_spend_replica VALUES (?, ?, ?, ?)")
            .bind(name)
            .bind(period_start)
            .bind(replica)
            .bind(n)
            .execute(&pool)
            .await
            .unwrap();
    }
    let row = |name: &str, start, replica: &str, n| (name.to_owned(), start, replica.to_owned(), n);
    let others: Vec<_> = others
        .iter()
        .map(|&(name, start, replica, n)| row(name, start, replica, n))
        .collect();
    let l = Ledger::open(&url, &keys, manual()).await.unwrap();
    assert_eq!(rows_sqlite(&pool).await, others, "an open folds nothing");
    let (a, b) = (l.account("a").unwrap(), l.account("b").unwrap());
    assert_eq!(a.spent(), 103);
    assert_eq!(b.spent(), 0);
    a.add(20);
    b.add(5);
    l.flush().await.unwrap();
    a.add(1); // written by the last write, then folded
    l.close().await.unwrap();
    // r1 still running writes its total again: counted once.
    sqlx::query("UPDATE uat_key_spend_replica SET spend_nanos = 100 WHERE replica = 'r1'")
        .execute(&pool)
        .await
        .unwrap();
    let want = [
        row("a", 0, "base", 24),
        row("a", 0, "r1", 100),
        row("b", start - 1, "r2", 7),
        row("b", start, "base", 5),
        row("c", 0, "base", i64::MAX),
    ];
    assert_eq!(rows_sqlite(&pool).await, want);
    let l = Ledger::open(&url, &keys, manual()).await.unwrap();
    assert_eq!(l.account("a").unwrap().spent(), 124);
    assert_eq!(l.account("b").unwrap().spent(), 5);
    // A replica a write of which failed leaves its rows.
    let mut task = bare_task(&url, &keys, crate::unix_now()).await.unwrap();
    task.accounts[0].add(9);
    task.flush().await.unwrap();
    task.write_failed = true;
    task.finish().await.unwrap();
    let mine: i64 =
        sqlx::query_scalar("SELECT spend_nanos FROM uat_key_spend_replica WHERE replica = ?")
            .bind(&*task.replica)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(mine, 9, "not folded");
    l.close().await.unwrap();
}

#[tokio::test]
async fn a_fold_that_fails_is_logged_not_the_last_write_failing() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let keys = [budget("a", None, None)];
    let l = Ledger::open(&url, &keys, manual()).await.unwrap();
    let pool = sqlite_pool(&url).await;
    sqlx::raw_sql(
        "CREATE TRIGGER no_delete BEFORE DELETE ON uat_key_spend_replica
         BEGIN SELECT RAISE(ABORT, 'refused'); END;",
    )
    .execute(&pool)
    .await
    .unwrap();
    l.account("a").unwrap().add(5);
    l.close().await.unwrap();
    let rows = rows_sqlite(&pool).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_ne!(rows[0].2, "base", "left as it was, in one transaction");
    assert_eq!(rows[0].3, 5, "the last write");
}

/// The rows of a key (PostgreSQL), by replica (sorted here, whatever the
/// database's collation).
async fn rows_pg(pool: &PgPool, name: &str) -> Vec<(String, i64)> {
    let mut rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT replica, spend_nanos FROM uat_key_spend_replica WHERE key_name = $1",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.sort();
    rows
}

/// Waits for the rows of `name` to be `want` (a dropped ledger's task
/// folds on its own).
async fn await_rows_pg(pool: &PgPool, name: &str, want: impl Fn(&[(String, i64)]) -> bool) {
    let mut rows = Vec::new();
    for _ in 0..250 {
        rows = rows_pg(pool, name).await;
        if want(&rows) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("rows of {name}: {rows:?}");
}

#[tokio::test]
async fn postgres_a_replica_shutting_down_folds_its_rows_into_base() {
    let k = unique("spend-pg-fold");
    let keys = [budget(&k, None, None)];
    let Some(one) = postgres(&keys, manual()).await else {
        return;
    };
    let two = postgres(&keys, manual()).await.unwrap();
    let pool = postgres_pool().await;
    let (a1, a2) = (one.account(&k).unwrap().clone(), two.account(&k).unwrap());
    a1.add(100);
    one.flush().await.unwrap();
    a2.add(20);
    two.flush().await.unwrap();
    a1.add(5); // written by the last write, before the fold
    one.close().await.unwrap();
    assert!(
        matches!(one.flush().await, Err(SpendError::Stopped)),
        "closed"
    );
    let mut rows = rows_pg(&pool, &k).await;
    rows.sort_by_key(|r| r.0 != "base");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0], ("base".to_owned(), 105));
    assert_eq!(rows[1].1, 20, "the live replica's own");
    two.reload().await.unwrap();
    assert_eq!(a2.spent(), 125);
    // Dropping the last handle does the same, on the task's own time.
    drop(two);
    await_rows_pg(&pool, &k, |r| r.len() == 1).await;
    assert_eq!(rows_pg(&pool, &k).await, [("base".to_owned(), 125)]);
    let three = postgres(&keys, manual()).await.unwrap();
    assert_eq!(three.account(&k).unwrap().spent(), 125);
}

#[tokio::test]
async fn postgres_a_replica_whose_write_failed_does_not_fold() {
    let k = unique("spend-pg-nofold");
    let keys = [budget(&k, None, None)];
    let Some(mut task) = postgres_task(&keys, crate::unix_now()).await else {
        return;
    };
    let pool = postgres_pool().await;
    task.accounts[0].add(9);
    task.flush().await.unwrap();
    // A write whose outcome is unknown (it timed out, say).
    task.write_failed = true;
    task.finish().await.unwrap();
    assert_eq!(rows_pg(&pool, &k).await, [(task.replica.to_string(), 9)]);
    // The same without it: folded.
    let mut other = postgres_task(&keys, crate::unix_now()).await.unwrap();
    other.accounts[0].add(4);
    other.finish().await.unwrap();
    let mut want = vec![("base".to_owned(), 4), (task.replica.to_string(), 9)];
    want.sort();
    assert_eq!(rows_pg(&pool, &k).await, want);
}

#[tokio::test]
async fn a_read_back_happens_while_writes_fail() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let keys = [budget("a", Some(1.0), None)];
    let ledger = Ledger::open(&url, &keys, manual()).await.unwrap();
    let a = ledger.account("a").unwrap();
    // Another replica's row appears, and writes are refused from now on.
    let other = sqlite_pool(&url).await;
    sqlx::raw_sql(
        "INSERT INTO uat_key_spend_replica VALUES ('a', 0, 'other', 50);
         CREATE TRIGGER no_insert BEFORE INSERT ON uat_key_spend_replica
         BEGIN SELECT RAISE(ABORT, 'refused'); END;
         CREATE TRIGGER no_update BEFORE UPDATE ON uat_key_spend_replica
         BEGIN SELECT RAISE(ABORT, 'refused'); END;",
    )
    .execute(&other)
    .await
    .unwrap();
    a.add(5);
    assert!(ledger.reload().await.is_err(), "the write's error");
    assert_eq!(a.spent(), 55, "read back all the same");
    assert_eq!(ledger.failing(), Some("writes"));
    sqlx::raw_sql("DROP TRIGGER no_insert; DROP TRIGGER no_update;")
        .execute(&other)
        .await
        .unwrap();
    ledger.reload().await.unwrap();
    assert!(ledger.healthy());
    assert_eq!(a.spent(), 55);
    assert_eq!(stored(&Db::Sqlite(other), "a").await, (55, 2));
}

#[tokio::test]
async fn health_does_not_flap_while_reads_fail_and_writes_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let other = sqlite_pool(&url).await;
    sqlx::raw_sql(CREATE_OLD).execute(&other).await.unwrap();
    let keys = [budget("a", None, None)];
    let ledger = Ledger::open(&url, &keys, manual()).await.unwrap();
    let a = ledger.account("a").unwrap();
    // The older table's place is taken by a view failing as it is read:
    // read-backs fail, writes do not.
    sqlx::raw_sql(
        "ALTER TABLE uat_key_spend RENAME TO uat_key_spend_away;
         CREATE VIEW uat_key_spend AS
         SELECT 'a' AS key_name, 0 AS period_start, abs(-9223372036854775807 - 1) AS spend_nanos",
    )
    .execute(&other)
    .await
    .unwrap();
    a.add(1);
    assert!(ledger.reload().await.is_err());
    assert_eq!(ledger.failing(), Some("read-backs"));
    a.add(1);
    ledger.flush().await.unwrap();
    assert!(!ledger.healthy(), "a write that succeeds does not end it");
    a.add(1);
    assert!(ledger.reload().await.is_err());
    assert_eq!(ledger.failing(), Some("read-backs"));
    sqlx::raw_sql(
        "DROP VIEW uat_key_spend;
         ALTER TABLE uat_key_spend_away RENAME TO uat_key_spend",
    )
    .execute(&other)
    .await
    .unwrap();
    ledger.reload().await.unwrap();
    assert!(ledger.healthy());
    assert_eq!(a.spent(), 3);
    assert_eq!(stored(&Db::Sqlite(other), "a").await, (3, 1));
}

/// Rows summing past the largest BIGINT read as the largest BIGINT.
async fn sums_saturate(db: &Db, url: &str, keys: &[KeyBudget]) {
    let name = keys[0].name.as_str();
    for (replica, n) in [("x1", i64::MAX), ("x2", i64::MAX), ("x3", 5)] {
        let sql = "INSERT INTO uat_key_spend_replica VALUES (?, 0, ?, ?)";
        exec(db, sql, &[Arg::Text(name), Arg::Text(replica), Arg::Int(n)]).await;
    }
    let l = Ledger::open(url, keys, manual()).await.unwrap();
    let a = l.account(name).unwrap();
    assert_eq!(a.spent(), i64::MAX as u64);
    a.add(10);
    l.reload().await.unwrap();
    assert_eq!(a.spent(), i64::MAX as u64 + 10);
    // The fold saturates too: 10 onto a full base row.
    let sql = "INSERT INTO uat_key_spend_replica VALUES (?, 0, 'base', ?)";
    let base = exec(db, sql, &[Arg::Text(name), Arg::Int(i64::MAX - 3)]).await;
    assert_eq!(base, 1);
    l.close().await.unwrap();
    let key = [Arg::Text(name)];
    let rows = scalar(
        db,
        "SELECT COUNT(*) FROM uat_key_spend_replica WHERE key_name = ?",
        &key,
    )
    .await;
    assert_eq!(rows, 4, "x1, x2, x3 and base");
    let base = scalar(
        db,
        "SELECT spend_nanos FROM uat_key_spend_replica WHERE key_name = ? AND replica = 'base'",
        &key,
    )
    .await;
    assert_eq!(base, i64::MAX);
}

#[tokio::test]
async fn sqlite_sums_saturate() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let keys = [budget("a", None, None)];
    let task = bare_task(&url, &keys, 0).await.unwrap();
    sums_saturate(&task.db, &url, &keys).await;
}

#[tokio::test]
async fn postgres_sums_saturate() {
    let keys = [budget(&unique("spend-pg-max"), None, None)];
    let Some(task) = postgres_task(&keys, 0).await else {
        return;
    };
    sums_saturate(&task.db, &postgres_url().unwrap(), &keys).await;
}

/// 500 keys, half with a period: one flush writes them all, and a second
/// replica (or a restart) reads them all back.
fn many_keys(tag: &str) -> Vec<KeyBudget> {
    (0..500)
        .map(|i| {
            let period = (i % 2 == 0).then_some(DECADE);
            budget(&format!("{tag}-{i}"), None, period)
        })
        .collect()
}

/// Adds `i + 1` to the i-th key (round 0), or 1,000 to every third
/// (round 1), and writes it all in one flush (and reads back) in time.
async fn add_many(l: &Ledger, round: usize) {
    for (i, a) in l.accounts().iter().enumerate() {
        match round {
            0 => a.add(i as u64 + 1),
            _ if i % 3 == 0 => a.add(1_000),
            _ => {}
        }
    }
    let t = std::time::Instant::now();
    l.flush().await.unwrap();
    l.reload().await.unwrap();
    assert!(t.elapsed() < DB_TIMEOUT, "{:?}", t.elapsed());
}

/// Every key's spend is what [`add_many`] added up to `round`.
fn check_many(l: &Ledger, round: usize) {
    for (i, a) in l.accounts().iter().enumerate() {
        let more = if round > 0 && i % 3 == 0 { 1_000 } else { 0 };
        assert_eq!(a.spent(), i as u64 + 1 + more, "{}", a.name());
    }
}

#[tokio::test]
async fn sqlite_writes_and_reads_many_keys() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let keys = many_keys("many");
    // Restarts: each close folds the rows of the replica closed.
    let one = Ledger::open(&url, &keys, manual()).await.unwrap();
    add_many(&one, 0).await;
    one.close().await.unwrap();
    let two = Ledger::open(&url, &keys, manual()).await.unwrap();
    check_many(&two, 0);
    add_many(&two, 1).await;
    two.close().await.unwrap();
    let three = Ledger::open(&url, &keys, manual()).await.unwrap();
    check_many(&three, 1);
}

#[tokio::test]
async fn postgres_writes_and_reads_many_keys() {
    let keys = many_keys(&unique("spend-pg-many"));
    let Some(one) = postgres(&keys, manual()).await else {
        return;
    };
    add_many(&one, 0).await;
    let two = postgres(&keys, manual()).await.unwrap();
    check_many(&two, 0);
    // Again: the totals that changed only, read back by the other.
    add_many(&one, 1).await;
    two.reload().await.unwrap();
    check_many(&two, 1);
}

#[tokio::test]
async fn postgres_a_name_given_twice_is_one_account() {
    let k = unique("spend-pg-twice-named");
    let keys = [budget(&k, Some(1.0), None), budget(&k, None, None)];
    let Some(one) = postgres(&keys, manual()).await else {
        return;
    };
    let accounts = one.accounts();
    assert_eq!(accounts.len(), 2);
    assert!(Arc::ptr_eq(&accounts[0], &accounts[1]));
    assert_eq!(accounts[0].budget_nanos(), Some(NANOS_PER_USD), "the first");
    accounts[0].add(2);
    accounts[1].add(3);
    one.flush().await.unwrap();
    one.reload().await.unwrap();
    assert_eq!(one.account(&k).unwrap().spent(), 5);
    let Some(two) = postgres(&keys, manual()).await else {
        return;
    };
    assert_eq!(two.account(&k).unwrap().spent(), 5);
}
