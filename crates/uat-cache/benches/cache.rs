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
use uat_cache::{CacheKey, CacheLevel, MemoryLevel, RedisLevel, RequestKind};

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
}

fn l2(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
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

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = key_hashing, l1, l2
}
criterion_main!(benches);
