//! Integration tests of the tiered cache against real Redis, PostgreSQL and
//! SQLite. Each test uses its own Redis key prefix and namespace, so the
//! tests run in parallel against shared servers.
//!
//! Redis: `UAT_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/`);
//! PostgreSQL: `UAT_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). An unreachable server fails
//! the test; outside CI, `UAT_TEST_SKIP_SERVICES=1` turns that into a
//! loudly printed skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod levels;
mod tiered;

use std::time::Duration;
use uat_cache::{CacheKey, RedisLevel, RequestKind, SqlLevel, TieredCache};

pub fn redis_url() -> String {
    std::env::var("UAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

pub fn postgres_url() -> String {
    std::env::var("UAT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A unique tag for keys, prefixes and namespaces of one test.
pub fn unique(test: &str) -> String {
    format!("{test}-{}", uuid::Uuid::new_v4().simple())
}

/// True when an unreachable service may be skipped (never in CI).
fn may_skip(what: &str, err: &str) -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let allowed = std::env::var("UAT_TEST_SKIP_SERVICES").is_ok_and(|v| v == "1");
    if allowed && !ci {
        eprintln!("SKIPPED: {what} unreachable ({err}) and UAT_TEST_SKIP_SERVICES=1");
        return true;
    }
    panic!("{what} unreachable: {err} (start it, or outside CI set UAT_TEST_SKIP_SERVICES=1)");
}

/// A Redis level with its own prefix; `None` only when skipping is allowed.
pub async fn redis(prefix: &str) -> Option<RedisLevel> {
    let l2 = RedisLevel::connect(
        &redis_url(),
        &format!("uat-test:{prefix}:"),
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    if uat_cache::CacheLevel::healthy(&l2) {
        Some(l2)
    } else if may_skip("redis", &redis_url()) {
        None
    } else {
        unreachable!()
    }
}

pub async fn postgres() -> Option<SqlLevel> {
    match SqlLevel::connect(&postgres_url(), 4, Duration::from_secs(5)).await {
        Ok(l) => Some(l),
        Err(e) => {
            if may_skip("postgresql", &e.to_string()) {
                None
            } else {
                unreachable!()
            }
        }
    }
}

pub async fn sqlite(dir: &tempfile::TempDir) -> SqlLevel {
    let url = format!("sqlite://{}", dir.path().join("cache.db").display());
    SqlLevel::connect(&url, 4, Duration::from_secs(5))
        .await
        .unwrap()
}

pub fn key(ns: &str, model: &str, i: u64) -> CacheKey {
    CacheKey::for_request(
        ns,
        model,
        RequestKind::Chat,
        &serde_json::json!({"messages":[{"role":"user","content":format!("q{i}")}],"temperature":0}),
    )
}

/// Polls `f` until it is true or `max` has passed.
pub async fn eventually<F: FnMut() -> bool>(max: Duration, mut f: F) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < max {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

pub async fn flush(c: &TieredCache) {
    c.flush(Duration::from_secs(5)).await;
}
