//! Each level on its own: TTL expiry, corrupt entries, compression, purge,
//! pattern matching in SQL and Redis, Redis on a closed port.

use crate::*;
use bytes::Bytes;
use std::time::{Duration, Instant};
use uat_cache::{CacheLevel, KeyPattern, MemoryLevel, Put, RedisLevel};

/// Runs one L3 test body as two tests: on a fresh SQLite file and on the
/// test PostgreSQL (which is required in CI; see `may_skip`).
macro_rules! on_sqlite_and_postgres {
    ($body:ident: $sqlite:ident, $postgres:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            let dir = tempfile::tempdir().unwrap();
            $body(&sqlite(&dir).await).await;
        }

        #[tokio::test]
        async fn $postgres() {
            let Some(l3) = postgres().await else { return };
            $body(&l3).await;
        }
    };
}

#[tokio::test]
async fn l1_ttl_expiry() {
    let l1 = MemoryLevel::new(1 << 20);
    let k = key("l1ttl", "m", 1);
    l1.put(&k, Bytes::from_static(b"v"), Duration::from_millis(100))
        .await
        .unwrap();
    assert!(l1.get(&k).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(l1.get(&k).await.unwrap().is_none());
}

#[tokio::test]
async fn l2_ttl_expiry_and_remaining_ttl() {
    let Some(l2) = redis(&unique("l2ttl")).await else {
        return;
    };
    let k = key("ns", "m", 1);
    l2.put(&k, Bytes::from_static(b"v"), Duration::from_secs(1))
        .await
        .unwrap();
    let hit = l2.get(&k).await.unwrap().unwrap();
    assert_eq!(hit.value, Bytes::from_static(b"v"));
    assert!(
        hit.ttl <= Duration::from_secs(1) && hit.ttl > Duration::ZERO,
        "{:?}",
        hit.ttl
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(l2.get(&k).await.unwrap().is_none());
}

async fn l3_ttl_and_purge(l3: &uat_cache::SqlLevel) {
    let ns = unique("l3ttl");
    let short = key(&ns, "m", 1);
    let long = key(&ns, "m", 2);
    l3.put(&short, Bytes::from_static(b"s"), Duration::from_millis(200))
        .await
        .unwrap();
    l3.put(&long, Bytes::from_static(b"l"), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(l3.get(&short).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        l3.get(&short).await.unwrap().is_none(),
        "expired rows are never served"
    );
    assert_eq!(
        l3.count_rows(&ns).await.unwrap(),
        2,
        "expired row still stored before the purge"
    );
    assert!(l3.purge_expired().await.unwrap() >= 1);
    assert_eq!(l3.count_rows(&ns).await.unwrap(), 1);
    assert_eq!(
        l3.get(&long).await.unwrap().unwrap().value,
        Bytes::from_static(b"l")
    );
}

on_sqlite_and_postgres!(l3_ttl_and_purge: l3_sqlite_ttl_expiry_and_purge, l3_postgres_ttl_expiry_and_purge);

/// A batch is one statement: a key twice in it keeps its last value (a
/// PostgreSQL upsert may not touch a row twice), a stored key is replaced.
/// The batch is as large as the L3 writer sends (1,024 rows, 6,144 bound
/// parameters).
async fn l3_batch_upsert(l3: &uat_cache::SqlLevel) {
    let ns = unique("l3batch");
    let ttl = Duration::from_secs(60);
    l3.put(&key(&ns, "m", 0), Bytes::from_static(b"before"), ttl)
        .await
        .unwrap();
    let mut items: Vec<_> = (0..1023)
        .map(|i| Put::new(key(&ns, "m", i), Bytes::from(format!("v{i}")), ttl))
        .collect();
    items.push(Put::new(key(&ns, "m", 7), Bytes::from_static(b"last"), ttl));
    l3.put_many(items).await.unwrap();
    assert_eq!(l3.count_rows(&ns).await.unwrap(), 1023);
    assert_eq!(
        l3.get(&key(&ns, "m", 0)).await.unwrap().unwrap().value,
        Bytes::from_static(b"v0")
    );
    assert_eq!(
        l3.get(&key(&ns, "m", 7)).await.unwrap().unwrap().value,
        Bytes::from_static(b"last")
    );
    assert_eq!(
        l3.get(&key(&ns, "m", 299)).await.unwrap().unwrap().value,
        Bytes::from_static(b"v299")
    );
}

on_sqlite_and_postgres!(l3_batch_upsert: l3_sqlite_batch_upsert_keeps_the_last_value_per_key, l3_postgres_batch_upsert_keeps_the_last_value_per_key);

#[tokio::test]
async fn l3_periodic_purge_runs() {
    let dir = tempfile::tempdir().unwrap();
    let l3 = sqlite(&dir).await;
    l3.start_purge(Duration::from_millis(50));
    let ns = unique("purge");
    l3.put(
        &key(&ns, "m", 1),
        Bytes::from_static(b"x"),
        Duration::from_millis(10),
    )
    .await
    .unwrap();
    let start = Instant::now();
    while l3.count_rows(&ns).await.unwrap() > 0 {
        assert!(start.elapsed() < Duration::from_secs(3), "purge never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn l2_corrupt_entry_is_a_miss_and_deleted() {
    let Some(l2) = redis(&unique("l2corrupt")).await else {
        return;
    };
    let k = key("ns", "m", 1);
    l2.put_raw_for_test(&k, b"not an envelope".to_vec(), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(l2.get(&k).await.unwrap().is_none());
    assert_eq!(
        l2.delete(&k).await.unwrap(),
        0,
        "the corrupt entry was already deleted"
    );
}

async fn l3_corrupt(l3: &uat_cache::SqlLevel) {
    let ns = unique("l3corrupt");
    let k = key(&ns, "m", 1);
    l3.put_raw_for_test(&k, vec![0xCA, 0, 1, 2, 3, 4, b'x'], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(l3.count_rows(&ns).await.unwrap(), 1);
    assert!(l3.get(&k).await.unwrap().is_none());
    assert_eq!(l3.count_rows(&ns).await.unwrap(), 0, "corrupt row deleted");
}

on_sqlite_and_postgres!(l3_corrupt: l3_sqlite_corrupt_entry_is_a_miss_and_deleted, l3_postgres_corrupt_entry_is_a_miss_and_deleted);

#[tokio::test]
async fn l2_large_values_are_compressed_and_round_trip() {
    let Some(l2) = redis(&unique("l2lz4")).await else {
        return;
    };
    let big = Bytes::from("the same words again and again ".repeat(2000));
    let k = key("ns", "m", 1);
    l2.put(&k, big.clone(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(l2.get(&k).await.unwrap().unwrap().value, big);
    let s = l2.stats().await.unwrap();
    assert_eq!(s.entries, 1);
    assert!(
        s.bytes < big.len() as u64 / 4,
        "stored {} bytes for {}",
        s.bytes,
        big.len()
    );
}

/// Stores `v` under each key for a minute.
async fn put_all<L: CacheLevel>(level: &L, keys: &[CacheKey]) {
    for k in keys {
        level
            .put(k, Bytes::from_static(b"v"), Duration::from_secs(60))
            .await
            .unwrap();
    }
}

async fn pattern_in_level<L: CacheLevel>(level: &L, ns: &str) {
    let other_ns = format!("{ns}-other");
    let keys = [
        key(ns, "gpt-4o", 1),
        key(ns, "gpt-4o-mini", 2),
        key(ns, "llama3.2:3b", 3),
        key(ns, "GPT-4o", 4),
        key(&other_ns, "gpt-4o", 5),
    ];
    put_all(level, &keys).await;
    let n = level
        .invalidate_pattern(&KeyPattern::new(ns, "gpt-*").unwrap())
        .await
        .unwrap();
    assert_eq!(n, 2, "{:?}", level.level());
    assert!(level.get(&keys[0]).await.unwrap().is_none());
    assert!(level.get(&keys[1]).await.unwrap().is_none());
    assert!(
        level.get(&keys[2]).await.unwrap().is_some(),
        "other model kept"
    );
    assert!(
        level.get(&keys[3]).await.unwrap().is_some(),
        "match is case-sensitive"
    );
    assert!(
        level.get(&keys[4]).await.unwrap().is_some(),
        "other namespace kept"
    );
    let n = level
        .invalidate_pattern(&KeyPattern::new(ns, "llama3.?:*").unwrap())
        .await
        .unwrap();
    assert_eq!(n, 1);
    // `?` is one character at every level, also one that is several bytes
    // (UTF-8) or escaped in the stored key (`*`, `%`). L1 and L2 used to
    // count bytes and left these three in place while L3 deleted them.
    let odd = [
        key(ns, "modèle", 6),
        key(ns, "mod*le", 7),
        key(ns, "mod%le", 8),
        key(ns, "modXXle", 9),
    ];
    put_all(level, &odd).await;
    let n = level
        .invalidate_pattern(&KeyPattern::new(ns, "mod?le").unwrap())
        .await
        .unwrap();
    assert_eq!(n, 3, "{:?}", level.level());
    for k in &odd[..3] {
        assert!(level.get(k).await.unwrap().is_none(), "{k} stayed");
    }
    assert!(
        level.get(&odd[3]).await.unwrap().is_some(),
        "two characters are not one"
    );
}

#[tokio::test]
async fn pattern_invalidation_l1() {
    pattern_in_level(&MemoryLevel::new(1 << 20), &unique("pl1")).await;
}

#[tokio::test]
async fn pattern_invalidation_l2_scan_unlink() {
    let Some(l2) = redis(&unique("pl2")).await else {
        return;
    };
    // More keys than one SCAN batch, so the cursor loop is exercised.
    let ns = unique("pl2ns");
    for i in 0..1200 {
        l2.put(
            &key(&ns, "bulk-model", i),
            Bytes::from_static(b"v"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    }
    let n = l2
        .invalidate_pattern(&KeyPattern::new(&ns, "bulk-*").unwrap())
        .await
        .unwrap();
    assert_eq!(n, 1200);
    pattern_in_level(&l2, &ns).await;
}

/// A `cache.l2.key_prefix` with a backslash (and glob characters): pattern
/// invalidation still finds its keys. Before, the prefix went into the
/// `SCAN MATCH` pattern unescaped and nothing was deleted.
#[tokio::test]
async fn pattern_invalidation_l2_with_a_backslash_in_the_prefix() {
    let Some(l2) = redis(&unique("pl2\\b*[x]")).await else {
        return;
    };
    pattern_in_level(&l2, &unique("pl2bs")).await;
}

#[tokio::test]
async fn pattern_invalidation_l3_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    pattern_in_level(&sqlite(&dir).await, &unique("pl3s")).await;
}

#[tokio::test]
async fn pattern_invalidation_l3_postgres() {
    let Some(l3) = postgres().await else { return };
    pattern_in_level(&l3, &unique("pl3p")).await;
}

#[tokio::test]
async fn redis_on_a_closed_port_is_skipped_fast() {
    let l2 = RedisLevel::connect(
        "redis://127.0.0.1:1/",
        "uat-test:closed:",
        Duration::from_millis(200),
    )
    .await
    .unwrap();
    assert!(!l2.healthy(), "unreachable redis reports unhealthy");
    let k = key("ns", "m", 1);
    let t = Instant::now();
    for _ in 0..100 {
        assert!(l2.get(&k).await.is_err());
        assert!(
            l2.put(&k, Bytes::from_static(b"v"), Duration::from_secs(1))
                .await
                .is_err()
        );
    }
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "skipping took {:?}",
        t.elapsed()
    );
}

/// SQLite L3 keeps the hashes of its keys: a key it never stored is a miss
/// without a query, a stored one is looked up, and the set is rebuilt from the
/// table when the level reopens.
#[tokio::test]
async fn l3_sqlite_key_set_skips_sql_for_absent_keys_and_reloads_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ns = unique("l3-presence");
    let (stored, absent) = (key(&ns, "m", 1), key(&ns, "m", 2));
    {
        let l3 = sqlite(&dir).await;
        l3.put(&stored, Bytes::from_static(b"v"), Duration::from_secs(60))
            .await
            .unwrap();
    }
    let l3 = sqlite(&dir).await;
    assert_eq!(
        l3.get(&stored).await.unwrap().unwrap().value,
        Bytes::from_static(b"v"),
        "a key stored before the restart is found"
    );
    // Take the table away behind the level's back: a lookup that reaches SQL
    // now fails, one answered by the key set does not.
    let url = format!("sqlite://{}", dir.path().join("cache.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("DROP TABLE uat_cache_entries")
        .execute(&pool)
        .await
        .unwrap();
    assert!(
        l3.get(&absent).await.unwrap().is_none(),
        "an absent key is a miss without a query"
    );
    assert!(
        l3.get(&stored).await.is_err(),
        "a stored key is looked up in the table"
    );
}

/// A raw connection to the SQLite file of `sqlite(dir)`, beside the level.
async fn raw_sqlite(dir: &tempfile::TempDir) -> sqlx::SqlitePool {
    let url = format!("sqlite://{}", dir.path().join("cache.db").display());
    sqlx::SqlitePool::connect(&url).await.unwrap()
}

/// The `id` of the rows holding `k`, in order.
async fn row_ids(pool: &sqlx::SqlitePool, k: &uat_cache::CacheKey) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM uat_cache_entries WHERE key = ? ORDER BY id")
        .bind(k.as_str())
        .fetch_all(pool)
        .await
        .unwrap()
}

/// SQLite L3 finds rows through its map from key to row `id`, not an
/// index on `h` (schema 3): a row deleted behind the level's back reads as a
/// miss and is written back at its own `id`, without touching another key's
/// row; of two rows of one key the later is found after a restart; and
/// every delete (by key, by pattern, of expired rows) takes the key out of
/// the map, so looking it up again asks no SQL.
#[tokio::test]
async fn l3_sqlite_finds_rows_through_its_map_and_every_delete_updates_it() {
    let dir = tempfile::tempdir().unwrap();
    let ns = unique("l3-rowmap");
    let ttl = Duration::from_secs(60);
    let (a, b) = (key(&ns, "m", 1), key(&ns, "m", 2));
    let l3 = sqlite(&dir).await;
    let raw = raw_sqlite(&dir).await;
    let indexes: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_index_list('uat_cache_entries') ORDER BY name")
            .fetch_all(&raw)
            .await
            .unwrap();
    assert_eq!(
        indexes,
        ["uat_cache_entries_expires_at", "uat_cache_entries_ns_model"],
        "no index on h"
    );
    l3.put_many(vec![
        Put::new(a.clone(), Bytes::from_static(b"a1"), ttl),
        Put::new(b.clone(), Bytes::from_static(b"b1"), ttl),
    ])
    .await
    .unwrap();
    let a_id = row_ids(&raw, &a).await;
    assert_eq!(a_id.len(), 1);
    sqlx::query("DELETE FROM uat_cache_entries WHERE key = ?")
        .bind(a.as_str())
        .execute(&raw)
        .await
        .unwrap();
    assert!(l3.get(&a).await.unwrap().is_none(), "its row is gone");
    l3.put(&a, Bytes::from_static(b"a2"), ttl).await.unwrap();
    assert_eq!(row_ids(&raw, &a).await, a_id, "written back at its own id");
    assert_eq!(l3.get(&a).await.unwrap().unwrap().value.as_ref(), b"a2");
    assert_eq!(l3.get(&b).await.unwrap().unwrap().value.as_ref(), b"b1");
    assert_eq!(l3.count_rows(&ns).await.unwrap(), 2);

    // A second row of `b` that the level does not know (as one written
    // while a delete of it ran leaves): unseen now, found after a restart.
    sqlx::query(
        "INSERT INTO uat_cache_entries (h, key, namespace, model, value, expires_at) \
         SELECT h, key, namespace, model, ?, expires_at FROM uat_cache_entries WHERE key = ?",
    )
    .bind(uat_cache::encode_envelope(b"b2", Some(uat_cache::now_ms())))
    .bind(b.as_str())
    .execute(&raw)
    .await
    .unwrap();
    assert_eq!(l3.get(&b).await.unwrap().unwrap().value.as_ref(), b"b1");
    drop(l3);
    let l3 = sqlite(&dir).await;
    assert_eq!(
        l3.get(&b).await.unwrap().unwrap().value.as_ref(),
        b"b2",
        "the later row of a key is found"
    );

    // Every kind of delete updates the map.
    let (c, d, e, kept) = (
        key(&ns, "gone", 3),
        key(&ns, "m", 4),
        key(&ns, "m", 5),
        key(&ns, "m", 6),
    );
    l3.put_many(vec![
        Put::new(c.clone(), Bytes::from_static(b"c"), ttl),
        Put::new(
            d.clone(),
            Bytes::from_static(b"d"),
            Duration::from_millis(50),
        ),
        Put::new(e.clone(), Bytes::from_static(b"e"), ttl),
        Put::new(kept.clone(), Bytes::from_static(b"k"), ttl),
    ])
    .await
    .unwrap();
    assert_eq!(
        l3.count_rows(&ns).await.unwrap(),
        7,
        "new rows go after every id given, none over another key's row"
    );
    assert_eq!(l3.get(&a).await.unwrap().unwrap().value.as_ref(), b"a2");
    assert_eq!(l3.delete(&e).await.unwrap(), 1);
    assert_eq!(
        l3.invalidate_pattern(&KeyPattern::new(&ns, "gone").unwrap())
            .await
            .unwrap(),
        1
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(l3.purge_expired().await.unwrap() >= 1);
    // With the table gone, a lookup that reaches SQL fails.
    sqlx::query("DROP TABLE uat_cache_entries")
        .execute(&raw)
        .await
        .unwrap();
    for (k, how) in [(&c, "pattern"), (&d, "purge"), (&e, "key")] {
        assert!(
            l3.get(k).await.unwrap().is_none(),
            "deleted by {how}: a miss without a query"
        );
    }
    assert!(l3.get(&kept).await.is_err(), "a stored key is looked up");
}

#[tokio::test]
async fn l2_key_set_skips_redis_for_absent_keys_and_learns_every_replicas_writes() {
    let prefix = unique("presence");
    let Some(a) = redis(&prefix).await else {
        return;
    };
    let b = redis(&prefix).await.unwrap();
    assert!(a.sync_presence(Duration::from_secs(5)).await);
    assert!(b.sync_presence(Duration::from_secs(5)).await);
    assert!(a.presence_trusted() && b.presence_trusted());
    let ns = unique("presence-ns");
    let (hidden, k2) = (key(&ns, "m", 1), key(&ns, "m", 2));
    // A value stored behind the levels' back (no announcement): while B's
    // key set is trusted, B answers a miss without asking Redis.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let stored = format!("uat-test:{prefix}:{}", hidden.as_str());
    redis::cmd("SET")
        .arg(&stored)
        .arg(uat_cache::encode_envelope(
            b"behind",
            Some(uat_cache::now_ms()),
        ))
        .arg("EX")
        .arg(60)
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    assert!(b.get(&hidden).await.unwrap().is_none(), "skipped Redis");
    // A write through A is announced: B finds it.
    a.put(&k2, Bytes::from_static(b"v2"), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(b.sync_presence(Duration::from_secs(5)).await);
    assert_eq!(b.get(&k2).await.unwrap().unwrap().value.as_ref(), b"v2");
    // A reload (start-up, every ten minutes) reads every key by SCAN.
    b.reload_presence().await.unwrap();
    assert_eq!(
        b.get(&hidden).await.unwrap().unwrap().value.as_ref(),
        b"behind"
    );
    // A new replica loads the keys already stored.
    let c = redis(&prefix).await.unwrap();
    assert!(c.sync_presence(Duration::from_secs(5)).await);
    assert!(c.get(&hidden).await.unwrap().is_some());
    assert!(c.get(&k2).await.unwrap().is_some());
    assert!(c.get(&key(&ns, "m", 3)).await.unwrap().is_none());
    let _: () = redis::cmd("UNLINK")
        .arg(&stored)
        .query_async(&mut raw)
        .await
        .unwrap();
}

/// Schema version 1 of `uat_cache_entries` (rows found by their text key),
/// as earlier releases left it.
const L3_V1_SCHEMA: &str =
    "CREATE TABLE uat_cache_migrations (version BIGINT PRIMARY KEY NOT NULL);
    INSERT INTO uat_cache_migrations (version) VALUES (1);
    CREATE TABLE uat_cache_entries (
        key TEXT PRIMARY KEY NOT NULL,
        namespace TEXT NOT NULL,
        model TEXT NOT NULL,
        value BLOB NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX uat_cache_entries_expires_at ON uat_cache_entries (expires_at);
    CREATE INDEX uat_cache_entries_ns_model ON uat_cache_entries (namespace, model);";

/// A database at schema version 1 holding `n` live entries `v1-{i}` under
/// `ns`, as one SQL script; `blob` is the dialect's type for the value
/// column and `unhex` its function from hex text to bytes.
fn l3_v1_fixture(ns: &str, n: u64, blob: &str, unhex: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let expires_at = i64::try_from(now.as_millis()).unwrap() + 3_600_000;
    let mut sql = L3_V1_SCHEMA.replace("BLOB", blob);
    for i in 0..n {
        let value =
            uat_cache::encode_envelope(format!("v1-{i}").as_bytes(), Some(uat_cache::now_ms()));
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        sql.push_str(&format!(
            ";\nINSERT INTO uat_cache_entries VALUES ('{}', '{ns}', 'm', {unhex}, {expires_at})",
            key(ns, "m", i).as_str(),
            unhex = unhex.replace("HEX", &hex),
        ));
    }
    sql
}

/// After the migration from version 1, every old entry is found (so the
/// row id SQL computed for it equals the one the code looks up: about half
/// the keys have a negative one), and writes, deletes and patterns work.
async fn l3_v1_entries_after_migration(l3: &uat_cache::SqlLevel, ns: &str, n: u64) {
    for i in 0..n {
        let hit = l3.get(&key(ns, "m", i)).await.unwrap();
        assert_eq!(
            hit.map(|h| h.value),
            Some(Bytes::from(format!("v1-{i}"))),
            "entry {i} written at schema version 1"
        );
    }
    let k0 = key(ns, "m", 0);
    l3.put(&k0, Bytes::from_static(b"new"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        l3.get(&k0).await.unwrap().unwrap().value,
        Bytes::from_static(b"new")
    );
    assert_eq!(l3.delete(&key(ns, "m", 1)).await.unwrap(), 1);
    assert!(l3.get(&key(ns, "m", 1)).await.unwrap().is_none());
    let gone = l3
        .invalidate_pattern(&KeyPattern::new(ns, "m").unwrap())
        .await
        .unwrap();
    assert_eq!(gone, n - 1);
}

#[tokio::test]
async fn l3_sqlite_v1_database_is_migrated_with_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    let ns = unique("l3-migrate-s");
    let n = 40;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("cache.db").display()
    );
    {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::raw_sql(&l3_v1_fixture(&ns, n, "BLOB", "unhex('HEX')"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let l3 = sqlite(&dir).await;
    l3_v1_entries_after_migration(&l3, &ns, n).await;
}

/// A rolling upgrade on PostgreSQL: replicas of the release before schema 2
/// keep reading and writing the migrated table with their own SQL (copied
/// here from that release), and each side finds what the other wrote.
#[tokio::test]
async fn l3_postgres_replicas_at_schema_1_keep_working_after_the_migration() {
    let Some(shared) = postgres().await else {
        return;
    };
    drop(shared);
    let own = OwnSchema::create("l3roll").await;
    let url = own.url.clone();
    let l3 = uat_cache::SqlLevel::connect(&url, 2, Duration::from_secs(5))
        .await
        .unwrap();
    let old = sqlx::PgPool::connect(&url).await.unwrap();
    let ns = unique("l3-roll");
    let far = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
        + 3_600_000;
    // The old replica's upsert and lookup.
    let old_put = |k: uat_cache::CacheKey, v: &'static [u8]| {
        let old = old.clone();
        async move {
            sqlx::query(
                "INSERT INTO uat_cache_entries (key, namespace, model, value, expires_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
            )
            .bind(k.as_str())
            .bind(k.namespace())
            .bind(k.model())
            // The envelope of a release before entries recorded their time.
            .bind(uat_cache::encode_envelope(v, None))
            .bind(far)
            .execute(&old)
            .await
        }
    };
    let old_get = |k: uat_cache::CacheKey| {
        let old = old.clone();
        async move {
            let row: Option<(Vec<u8>,)> = sqlx::query_as(
                "SELECT value, expires_at FROM uat_cache_entries WHERE key = $1 AND expires_at > $2",
            )
            .bind(k.as_str())
            .bind(far - 3_600_000)
            .fetch_optional(&old)
            .await
            .unwrap();
            row.map(|(v,)| uat_cache::decode_envelope(&v).unwrap().0)
        }
    };
    let (a, b) = (key(&ns, "m", 1), key(&ns, "m", 2));
    old_put(a.clone(), b"old")
        .await
        .expect("an old replica's write");
    old_put(a.clone(), b"old again")
        .await
        .expect("and its update");
    assert_eq!(
        l3.get(&a).await.unwrap().map(|h| (h.value, h.stored_at)),
        Some((Bytes::from_static(b"old again"), None)),
        "a new replica reads what an old one wrote, of unknown age"
    );
    // What follows checks the old queries against today's table; the rows
    // are decoded with today's decoder (an old release's refuses the timed
    // envelope: see the README on rolling upgrades).
    l3.put(&b, Bytes::from_static(b"new"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(old_get(b.clone()).await.as_deref(), Some(&b"new"[..]));
    l3.put(&a, Bytes::from_static(b"newer"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(old_get(a.clone()).await.as_deref(), Some(&b"newer"[..]));
    // The old lookup is served by an index, not a scan of the table.
    let mut tx = old.begin().await.unwrap();
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    let plan: Vec<(String,)> =
        sqlx::query_as("EXPLAIN SELECT value FROM uat_cache_entries WHERE key = 'x'")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    let plan = plan
        .into_iter()
        .map(|(l,)| l)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains("uat_cache_entries_key"), "{plan}");
    drop(tx);
    old.close().await;
    drop(l3);
    own.drop().await;
}

#[tokio::test]
async fn l3_postgres_v1_database_is_migrated_with_its_entries() {
    let Some(shared) = postgres().await else {
        return;
    };
    drop(shared);
    let own = OwnSchema::create("l3mig").await;
    let url = own.url.clone();
    let ns = unique("l3-migrate-p");
    let n = 40;
    {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::raw_sql(&l3_v1_fixture(&ns, n, "BYTEA", "decode('HEX', 'hex')"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let l3 = uat_cache::SqlLevel::connect(&url, 2, Duration::from_secs(5))
        .await
        .unwrap();
    l3_v1_entries_after_migration(&l3, &ns, n).await;
    drop(l3);
    own.drop().await;
}

/// A PostgreSQL schema of a test's own (so the shared test table, long
/// migrated, is left alone) and a URL whose connections use it.
struct OwnSchema {
    admin: sqlx::PgPool,
    name: String,
    url: String,
}

impl OwnSchema {
    async fn create(tag: &str) -> Self {
        let name = unique(tag).replace('-', "_");
        let admin = sqlx::PgPool::connect(&postgres_url()).await.unwrap();
        sqlx::raw_sql(&format!("CREATE SCHEMA {name}"))
            .execute(&admin)
            .await
            .unwrap();
        let sep = if postgres_url().contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{sep}options=-c%20search_path%3D{name}", postgres_url());
        OwnSchema { admin, name, url }
    }

    async fn drop(self) {
        sqlx::raw_sql(&format!("DROP SCHEMA {} CASCADE", self.name))
            .execute(&self.admin)
            .await
            .unwrap();
    }
}
