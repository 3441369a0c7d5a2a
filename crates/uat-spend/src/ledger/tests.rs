//! The ledger against real databases: a SQLite file in a temporary folder,
//! and PostgreSQL (`UAT_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; unreachable is a failure when
//! `CI` is set, a loud skip otherwise). Key names are unique per run, so
//! tests sharing the PostgreSQL table never see each other's rows.

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
    a.add(200); // written by the last flush as the ledger is dropped
    ledger.flush().await.unwrap();
    drop(ledger);
    let again = Ledger::open(&url, &keys, manual()).await.unwrap();
    assert_eq!(again.account("a").unwrap().spent(), 500);
    assert_eq!(again.account("b").unwrap().spent(), 7);
    // Deltas are added, not written over.
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
async fn a_failed_write_keeps_the_deltas_until_the_database_takes_them() {
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
    sqlx::raw_sql("ALTER TABLE uat_key_spend RENAME TO uat_key_spend_away")
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
    sqlx::raw_sql("ALTER TABLE uat_key_spend_away RENAME TO uat_key_spend")
        .execute(&other)
        .await
        .unwrap();
    ledger.flush().await.unwrap();
    assert!(ledger.healthy());
    let total: i64 =
        sqlx::query_scalar("SELECT spend_nanos FROM uat_key_spend WHERE key_name = 'a'")
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
