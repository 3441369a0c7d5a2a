//! L2: Redis. One multiplexed [`ConnectionManager`] (it reconnects on its
//! own), every operation bounded by a timeout. When Redis is down or slow the
//! level is marked unhealthy and skipped at once (no request waits on it),
//! one warning is logged per outage, and a background task probes it with
//! exponential backoff until it answers again.
//!
//! Keys are `{prefix}{ns}|{model}|{hash}`; values are the [`crate::codec`]
//! envelope (LZ4 above a size), stored with `SET .. EX`. Pattern
//! invalidation walks `SCAN MATCH` and `UNLINK`s each batch (never `KEYS`).

use crate::codec;
use crate::error::CacheError;
use crate::key::{CacheKey, KeyPattern};
use crate::level::{CacheLevel, Counters, Hit, Level, LevelStats};
use crate::metrics::{self, METRICS, OpTimer};
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Keys per `SCAN` step and per `UNLINK` batch.
const SCAN_BATCH: usize = 500;
/// `stats()` stops counting after this many keys.
const STATS_SCAN_LIMIT: u64 = 1_000_000;

/// The L2 level. Cheap to clone.
#[derive(Clone)]
pub struct RedisLevel {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    healthy: AtomicBool,
    reconnecting: AtomicBool,
    counters: Counters,
}

impl RedisLevel {
    /// Connects to `url`. Never fails for an unreachable server: the level
    /// starts unhealthy and reconnects in the background. Fails only for a
    /// malformed URL.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, CacheError> {
        // Nagle's algorithm on the Redis socket stalls small pipelined replies
        // by ~40 ms (delayed ACK): redis-rs leaves it on unless told otherwise.
        let info = redis::IntoConnectionInfo::into_connection_info(url)?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), cfg)?;
        let level = RedisLevel {
            inner: Arc::new(Inner {
                client,
                conn,
                prefix: prefix.to_string(),
                timeout,
                healthy: AtomicBool::new(true),
                reconnecting: AtomicBool::new(false),
                counters: Counters::default(),
            }),
        };
        let mut c = level.inner.conn.clone();
        let ping =
            tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut c)).await;
        if !matches!(ping, Ok(Ok(_))) {
            level.mark_down("initial PING failed");
        }
        Ok(level)
    }

    /// The key prefix (also names the invalidation channel).
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The pub/sub channel on which invalidations are announced.
    pub fn channel(&self) -> String {
        format!("{}invalidate", self.inner.prefix)
    }

    /// The client, for a dedicated pub/sub connection.
    pub fn client(&self) -> &redis::Client {
        &self.inner.client
    }

    /// The per-operation timeout.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    fn stored_key(&self, key: &CacheKey) -> String {
        let mut s = String::with_capacity(self.inner.prefix.len() + key.as_str().len());
        s.push_str(&self.inner.prefix);
        s.push_str(key.as_str());
        s
    }

    /// Runs one bounded operation; a connection failure or a timeout marks
    /// the level down.
    async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, CacheError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        if !self.inner.healthy.load(Ordering::Relaxed) {
            return Err(CacheError::Unavailable("l2"));
        }
        let _t = OpTimer::start("l2", op);
        match tokio::time::timeout(self.inner.timeout, f(self.inner.conn.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if is_connection_error(&e) {
                    self.mark_down(&e.to_string());
                }
                Err(CacheError::Redis(e))
            }
            Err(_) => {
                self.mark_down("operation timed out");
                Err(CacheError::Timeout {
                    level: "l2",
                    after_ms: u64::try_from(self.inner.timeout.as_millis()).unwrap_or(u64::MAX),
                })
            }
        }
    }

    /// Marks the level down (warning once per outage) and starts the
    /// background reconnect loop.
    fn mark_down(&self, why: &str) {
        if self.inner.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                level = "l2",
                reason = why,
                "redis unavailable: skipping L2 until it recovers"
            );
        }
        if !self.inner.reconnecting.swap(true, Ordering::AcqRel) {
            let weak = Arc::downgrade(&self.inner);
            tokio::spawn(reconnect_loop(weak));
        }
    }

    /// Publishes a message on the invalidation channel.
    pub async fn publish(&self, message: String) -> Result<(), CacheError> {
        let channel = self.channel();
        self.run("publish", |mut c| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(message)
                .query_async::<i64>(&mut c)
                .await
        })
        .await
        .map(|_| ())
    }

    /// Deletes the raw stored key (used after a corrupt read).
    async fn unlink_raw(&self, stored: String) -> Result<u64, CacheError> {
        self.run("delete", |mut c| async move {
            redis::cmd("UNLINK")
                .arg(stored)
                .query_async::<u64>(&mut c)
                .await
        })
        .await
    }

    /// Writes raw bytes under a key without the envelope (tests of corrupt-entry handling).
    #[doc(hidden)]
    pub async fn put_raw_for_test(
        &self,
        key: &CacheKey,
        raw: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let k = self.stored_key(key);
        let secs = ttl_secs(ttl);
        self.run("put", |mut c| async move {
            redis::cmd("SET")
                .arg(k)
                .arg(raw)
                .arg("EX")
                .arg(secs)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }
}

async fn reconnect_loop(weak: Weak<Inner>) {
    let mut delay = Duration::from_millis(100);
    loop {
        tokio::time::sleep(jitter(delay)).await;
        let Some(inner) = weak.upgrade() else { return };
        let mut c = inner.conn.clone();
        let ok = matches!(
            tokio::time::timeout(
                inner.timeout,
                redis::cmd("PING").query_async::<String>(&mut c)
            )
            .await,
            Ok(Ok(_))
        );
        if ok {
            inner.healthy.store(true, Ordering::Release);
            inner.reconnecting.store(false, Ordering::Release);
            tracing::info!(level = "l2", "redis is back: L2 re-enabled");
            return;
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::random_range(0.8..1.2);
    d.mul_f64(f)
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

fn ttl_secs(ttl: Duration) -> u64 {
    // `SET .. EX` takes whole seconds: round up so an entry never outlives
    // its TTL by less than it should, and never store with EX 0.
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0).max(u64::from(ttl.as_secs() == 0))
}

impl CacheLevel for RedisLevel {
    fn level(&self) -> Level {
        Level::L2
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Hit>, CacheError> {
        let k = self.stored_key(key);
        let k2 = k.clone();
        let res = self
            .run("get", |mut c| async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(&k2)
                    .cmd("PTTL")
                    .arg(&k2)
                    .query_async::<(Option<Vec<u8>>, i64)>(&mut c)
                    .await
            })
            .await;
        let (raw, pttl) = match res {
            Ok(v) => v,
            Err(e) => {
                metrics::request(
                    "l2",
                    if matches!(e, CacheError::Unavailable(_)) {
                        "skipped"
                    } else {
                        "error"
                    },
                );
                return Err(e);
            }
        };
        let Some(raw) = raw else {
            self.inner.counters.miss();
            metrics::request("l2", "miss");
            return Ok(None);
        };
        match codec::decode(&raw) {
            Ok(value) => {
                self.inner.counters.hit();
                metrics::request("l2", "hit");
                let ttl = Duration::from_millis(u64::try_from(pttl).unwrap_or(0));
                Ok(Some(Hit { value, ttl }))
            }
            Err(e) => {
                tracing::warn!(level = "l2", key = %key, error = %e, "corrupt cache entry deleted");
                self.inner.counters.miss();
                metrics::request("l2", "corrupt");
                let _ = self.unlink_raw(k).await;
                Ok(None)
            }
        }
    }

    async fn put(&self, key: &CacheKey, value: Bytes, ttl: Duration) -> Result<(), CacheError> {
        self.put_many(vec![(key.clone(), value, ttl)]).await
    }

    async fn put_many(&self, items: Vec<(CacheKey, Bytes, Duration)>) -> Result<(), CacheError> {
        if items.is_empty() {
            return Ok(());
        }
        let n = items.len() as u64;
        let mut pipe = redis::pipe();
        for (k, v, ttl) in &items {
            pipe.cmd("SET")
                .arg(self.stored_key(k))
                .arg(codec::encode(v))
                .arg("EX")
                .arg(ttl_secs(*ttl))
                .ignore();
        }
        let res = self
            .run("put", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await;
        let result = match &res {
            Ok(()) => "ok",
            Err(CacheError::Unavailable(_)) => "skipped",
            Err(_) => "error",
        };
        METRICS.writes.with_label_values(&["l2", result]).inc_by(n);
        res
    }

    async fn delete(&self, key: &CacheKey) -> Result<u64, CacheError> {
        self.unlink_raw(self.stored_key(key)).await
    }

    async fn invalidate_pattern(&self, pattern: &KeyPattern) -> Result<u64, CacheError> {
        let m = pattern.redis_match(&self.inner.prefix);
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let m2 = m.clone();
            let (next, keys) = self
                .run("scan", |mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(m2)
                        .arg("COUNT")
                        .arg(SCAN_BATCH)
                        .query_async::<(u64, Vec<String>)>(&mut c)
                        .await
                })
                .await?;
            if !keys.is_empty() {
                deleted += self
                    .run("invalidate", |mut c| async move {
                        redis::cmd("UNLINK")
                            .arg(keys)
                            .query_async::<u64>(&mut c)
                            .await
                    })
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(deleted)
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
        let m = format!("{}*", redis_escape(&self.inner.prefix));
        let mut cursor: u64 = 0;
        loop {
            let m2 = m.clone();
            let (next, keys) = self
                .run("scan", |mut c| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(m2)
                        .arg("COUNT")
                        .arg(SCAN_BATCH)
                        .query_async::<(u64, Vec<String>)>(&mut c)
                        .await
                })
                .await?;
            if !keys.is_empty() {
                let n = keys.len() as u64;
                let lens = self
                    .run("stats", |mut c| async move {
                        let mut p = redis::pipe();
                        for k in &keys {
                            p.cmd("STRLEN").arg(k);
                        }
                        p.query_async::<Vec<u64>>(&mut c).await
                    })
                    .await?;
                s.entries += n;
                s.bytes += lens.iter().sum::<u64>();
            }
            if next == 0 || s.entries >= STATS_SCAN_LIMIT {
                break;
            }
            cursor = next;
        }
        // The channel name shares the prefix but is not a key; nothing to subtract.
        METRICS
            .bytes
            .with_label_values(&["l2"])
            .set(i64::try_from(s.bytes).unwrap_or(i64::MAX));
        Ok(s)
    }

    fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }
}

fn redis_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::ttl_secs;
    use std::time::Duration;

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(ttl_secs(Duration::from_secs(0)), 1);
        assert_eq!(ttl_secs(Duration::from_secs(2)), 2);
        assert_eq!(ttl_secs(Duration::from_millis(2001)), 3);
    }
}
