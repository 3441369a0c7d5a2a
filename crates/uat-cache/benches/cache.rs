//! Cache micro-benchmarks, each with a comparison from the same run:
//! key hashing (small vs. large request), L1 get (hit vs. miss) and put,
//! and an L2 round trip (small value vs. a large, compressed one) against
//! the Redis at `UAT_TEST_REDIS_URL` (skipped when unreachable: a benchmark,
//! not a test).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use std::hint::black_box;
use std::time::Duration;
use uat_cache::{CacheKey, CacheLevel, MemoryLevel, Put, RedisLevel, RequestKind, SqlLevel};

fn request(n_messages: usize) -> serde_json::Value {
    let messages: Vec<_> = (0..n_messages)
        .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": format!("message number {i} with some ordinary text in it")}))
        .collect();
    json!({"model": "gpt-4o-mini", "messages": messages, "temperature": 0, "max_tokens": 256, "stream": true, "user": "u1"})
}

fn key_hashing(c: &mut Criterion) {
    let small = request(2);
    let large = request(50);
    let mut g = c.benchmark_group("key");
    g.bench_function("hash_2_messages", |b| {
        b.iter(|| {
            CacheKey::for_request(
                "default",
                "gpt-4o-mini",
                RequestKind::Chat,
                black_box(&small),
            )
        })
    });
    g.bench_function("hash_50_messages", |b| {
        b.iter(|| {
            CacheKey::for_request(
                "default",
                "gpt-4o-mini",
                RequestKind::Chat,
                black_box(&large),
            )
        })
    });
    g.finish();
}

fn l1(c: &mut Criterion) {
    let l1 = MemoryLevel::new(256 << 20);
    let keys: Vec<CacheKey> = (0..10_000)
        .map(|i| CacheKey::for_request("default", "m", RequestKind::Chat, &json!({ "i": i })))
        .collect();
    let value = Bytes::from(vec![b'x'; 1024]);
    for k in &keys {
        l1.put_now(k, value.clone(), Duration::from_secs(3600));
    }
    let missing = CacheKey::for_request(
        "default",
        "m",
        RequestKind::Chat,
        &json!({ "missing": true }),
    );
    let mut g = c.benchmark_group("l1");
    let mut i = 0usize;
    g.bench_function("get_hit_1KiB", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(l1.get_now(&keys[i]))
        })
    });
    g.bench_function("get_miss", |b| b.iter(|| black_box(l1.get_now(&missing))));
    g.bench_function("put_1KiB", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            l1.put_now(&keys[i], value.clone(), Duration::from_secs(3600))
        })
    });
    g.finish();

    // What a cache miss costs L1: a lookup that misses, then the insert of a
    // new entry into a full cache (8 MiB, ~8k entries of 512 bytes, so
    // every insert evicts; 100k distinct keys, so a key has long left when
    // it comes round again).
    let full = MemoryLevel::new(8 << 20);
    let fresh: Vec<CacheKey> = (0..100_000)
        .map(|i| CacheKey::for_request("default", "m", RequestKind::Chat, &json!({ "n": i })))
        .collect();
    let answer = Bytes::from(vec![b'y'; 512]);
    for k in fresh.iter().take(20_000) {
        full.put_now(k, answer.clone(), Duration::from_secs(3600));
    }
    let mut g = c.benchmark_group("l1_miss");
    let mut j = 20_000usize;
    g.bench_function("get_miss_then_insert_512B_full", |b| {
        b.iter(|| {
            j = (j + 1) % fresh.len();
            let k = &fresh[j];
            black_box(full.get_now(k));
            full.put_now(k, answer.clone(), Duration::from_secs(3600));
        })
    });
    g.finish();
}

/// The runtime the async levels are driven on: one worker, like a quiet server.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn l2(c: &mut Criterion) {
    let rt = runtime();
    let url =
        std::env::var("UAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let l2 = rt
        .block_on(RedisLevel::connect(
            &url,
            "uat-bench:",
            Duration::from_millis(500),
        ))
        .unwrap();
    if !l2.healthy() {
        eprintln!("redis at {url} unreachable: L2 benchmarks not run");
        return;
    }
    let small_key = CacheKey::for_request("bench", "m", RequestKind::Chat, &json!({"k": "small"}));
    let large_key = CacheKey::for_request("bench", "m", RequestKind::Chat, &json!({"k": "large"}));
    let small = Bytes::from(vec![b'a'; 512]);
    let large = Bytes::from("a typical completion sentence, repeated. ".repeat(800));
    rt.block_on(async {
        l2.put(&small_key, small.clone(), Duration::from_secs(600))
            .await
            .unwrap();
        l2.put(&large_key, large.clone(), Duration::from_secs(600))
            .await
            .unwrap();
    });
    let mut g = c.benchmark_group("l2");
    g.bench_function("get_512B", |b| {
        b.iter(|| rt.block_on(l2.get(&small_key)).unwrap())
    });
    g.bench_function("get_32KiB_lz4", |b| {
        b.iter(|| rt.block_on(l2.get(&large_key)).unwrap())
    });
    g.bench_function("put_512B", |b| {
        b.iter(|| {
            rt.block_on(l2.put(&small_key, small.clone(), Duration::from_secs(600)))
                .unwrap()
        })
    });
    g.finish();
}

/// L3 on SQLite, as the writer task drives it: one `put_many` of 1,024 new
/// chat-sized rows (random keys, 600 bytes) into a table that already holds
/// 100,000. Reported per batch; divide by 1,024 for a row.
fn l3_sqlite(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("l3.db").display());
    let l3 = rt
        .block_on(SqlLevel::connect(&url, 4, Duration::from_secs(30)))
        .unwrap();
    let value = Bytes::from(vec![b'v'; 600]);
    let mut n = 0u64;
    let batch = |n: &mut u64| -> Vec<Put> {
        (0..1024)
            .map(|_| {
                *n += 1;
                let k =
                    CacheKey::for_request("default", "m", RequestKind::Chat, &json!({ "n": *n }));
                Put::new(k, value.clone(), Duration::from_secs(3600))
            })
            .collect()
    };
    for _ in 0..100 {
        let b = batch(&mut n);
        rt.block_on(l3.put_many(b)).unwrap();
    }
    let mut g = c.benchmark_group("l3_sqlite");
    g.sample_size(20);
    g.bench_function("put_many_1024_rows_into_100k", |b| {
        b.iter_batched(
            || batch(&mut n),
            |rows| rt.block_on(l3.put_many(rows)).unwrap(),
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = key_hashing, l1, l2, l3_sqlite
}
criterion_main!(benches);
