//! L2: Redis. One multiplexed [`ConnectionManager`] (it reconnects on its
//! own), every operation bounded by a timeout. When Redis is down or slow the
//! level is marked unhealthy and skipped at once (no request waits on it),
//! one warning is logged per outage, and a background task probes it with
//! exponential backoff until it answers again.
//!
//! Keys are `{prefix}{ns}|{model}|{hash}`; values are the [`crate::codec`]
//! envelope (LZ4 above a size), stored with `SET .. EX`. Pattern
//! invalidation walks `SCAN MATCH` and `UNLINK`s each batch (never `KEYS`).
//!
//! A miss, the common case of a cache that answers from L1, would cost a
//! Redis round trip (a quarter of a fast upstream's latency on loopback). So
//! the level keeps a [`Presence`] set of the keys Redis holds: loaded by
//! `SCAN` once its subscription to `{prefix}stored` is live (and again every
//! ten minutes, which forgets expired keys), and kept current by the hashes
//! every replica publishes there in the same pipeline as its `SET`s. While
//! the set is trusted, a key it lacks is a miss without a round trip; a
//! write by another replica is visible here once its announcement arrives
//! (well under a millisecond on one network; [`RedisLevel::sync_presence`]
//! waits for it). A lost subscription distrusts the set until the next load.

use crate::codec;
use crate::error::CacheError;
use crate::key::{CacheKey, KeyPattern};
use crate::level::{CacheLevel, Counters, Hit, Level, LevelStats, Put};
use crate::metrics::{self, METRICS, OpTimer};
use crate::presence::{KeySet, Presence};
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Keys per `SCAN` step and per `UNLINK` batch.
const SCAN_BATCH: usize = 500;
/// `stats()` stops counting after this many keys.
const STATS_SCAN_LIMIT: u64 = 1_000_000;
/// The presence set is reloaded this often (forgetting expired keys).
const PRESENCE_RELOAD: Duration = Duration::from_secs(600);
/// Above this many keys the level keeps no presence set (about 16 bytes a
/// key) and asks Redis on every lookup.
const PRESENCE_MAX_KEYS: usize = 4_000_000;
/// A presence message that is a barrier (see `sync_presence`), not hashes.
const SYNC_TAG: &[u8] = b"sync:";

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
    presence: Presence,
    /// Identifies this level's barrier messages.
    id: String,
    /// The last barrier sent, and the last one the subscriber saw.
    sync_sent: AtomicU64,
    sync_seen: tokio::sync::watch::Sender<u64>,
    presence_task: parking_lot::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(t) = self.presence_task.lock().take() {
            t.abort();
        }
    }
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
                presence: Presence::default(),
                id: uuid::Uuid::new_v4().simple().to_string(),
                sync_sent: AtomicU64::new(0),
                sync_seen: tokio::sync::watch::channel(0).0,
                presence_task: parking_lot::Mutex::new(None),
            }),
        };
        let task = tokio::spawn(presence_loop(Arc::downgrade(&level.inner)));
        *level.inner.presence_task.lock() = Some(task.abort_handle());
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

    /// The channel on which writes announce the keys they stored.
    fn stored_channel(&self) -> String {
        format!("{}stored", self.inner.prefix)
    }

    /// Waits until the presence set is loaded and every write announced
    /// before this call (by any replica) has reached it; false after `max`.
    /// Replicas need not call it: a key not yet announced is only a miss.
    pub async fn sync_presence(&self, max: Duration) -> bool {
        let token = self.inner.sync_sent.fetch_add(1, Ordering::Relaxed) + 1;
        let mut seen = self.inner.sync_seen.subscribe();
        let wait = async {
            while !self.inner.presence.trusted() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut msg = SYNC_TAG.to_vec();
            msg.extend_from_slice(self.inner.id.as_bytes());
            msg.push(b':');
            msg.extend_from_slice(token.to_string().as_bytes());
            self.publish_to(self.stored_channel(), msg).await.ok()?;
            seen.wait_for(|&s| s >= token).await.ok()
        };
        matches!(tokio::time::timeout(max, wait).await, Ok(Some(_)))
    }

    /// Whether the presence set is loaded and trusted (tests).
    #[doc(hidden)]
    pub fn presence_trusted(&self) -> bool {
        self.inner.presence.trusted()
    }

    /// Reloads the presence set from Redis now (tests; it also runs every ten minutes).
    #[doc(hidden)]
    pub async fn reload_presence(&self) -> Result<(), CacheError> {
        self.load_presence().await
    }

    /// Reads every key under the prefix into a new presence set.
    async fn load_presence(&self) -> Result<(), CacheError> {
        let p = &self.inner.presence;
        p.begin_reload();
        let m = format!("{}*", redis_escape(&self.inner.prefix));
        let plen = self.inner.prefix.len();
        let mut set = KeySet::default();
        let mut cursor: u64 = 0;
        loop {
            let step = self.scan_step(cursor, &m, SCAN_BATCH * 4).await;
            let (next, keys) = match step {
                Ok(v) => v,
                Err(e) => {
                    p.distrust();
                    return Err(e);
                }
            };
            set.extend(
                keys.iter()
                    .filter_map(|k| k.get(plen..))
                    .map(crate::key::stored_hash),
            );
            if set.len() > PRESENCE_MAX_KEYS {
                p.distrust();
                tracing::info!(
                    level = "l2",
                    keys = set.len(),
                    "too many keys for an L2 presence set: every lookup asks Redis"
                );
                return Ok(());
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        p.finish_reload(set);
        Ok(())
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
        self.publish_to(self.channel(), message.into_bytes()).await
    }

    async fn publish_to(&self, channel: String, message: Vec<u8>) -> Result<(), CacheError> {
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

    /// One `SCAN` step: the next cursor and the keys matching `pattern`.
    async fn scan_step(
        &self,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<String>), CacheError> {
        let pattern = pattern.to_string();
        self.run("scan", |mut c| async move {
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count)
                .query_async::<(u64, Vec<String>)>(&mut c)
                .await
        })
        .await
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
        self.inner.presence.add(&[key.xxh3()]);
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

/// Keeps the presence set: subscribes to the `stored` channel, then loads
/// the set by SCAN (so no write falls between the two), applies every
/// announcement, reloads every [`PRESENCE_RELOAD`], and distrusts the set
/// whenever the subscription is lost, until it is back and reloaded.
async fn presence_loop(weak: Weak<Inner>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let Some(level) = weak.upgrade().map(|inner| RedisLevel { inner }) else {
            return;
        };
        let (client, channel, timeout) = (
            level.inner.client.clone(),
            level.stored_channel(),
            level.inner.timeout.max(Duration::from_secs(1)),
        );
        drop(level);
        let sub = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        if let Ok(Ok(pubsub)) = tokio::time::timeout(timeout, sub).await {
            let mut stream = pubsub.into_on_message();
            let mut reload = tokio::time::interval(PRESENCE_RELOAD);
            reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    msg = stream.next() => {
                        let Some(msg) = msg else { break };
                        let Some(inner) = weak.upgrade() else { return };
                        apply_presence(&inner, msg.get_payload_bytes());
                    }
                    _ = reload.tick() => {
                        let Some(inner) = weak.upgrade() else { return };
                        let level = RedisLevel { inner };
                        if let Err(e) = level.load_presence().await {
                            // Distrusted meanwhile; subscribe and load again after a backoff.
                            tracing::debug!(level = "l2", error = %e, "cannot load the L2 key set");
                            break;
                        }
                        delay = Duration::from_millis(100);
                    }
                }
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        inner.presence.distrust();
        drop(inner);
        tokio::time::sleep(jitter(delay)).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// One message of the `stored` channel: 8-byte key hashes, or a barrier.
fn apply_presence(inner: &Inner, payload: &[u8]) {
    if let Some(rest) = payload.strip_prefix(SYNC_TAG) {
        let mine = rest
            .strip_prefix(inner.id.as_bytes())
            .and_then(|r| r.strip_prefix(b":"))
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| t.parse::<u64>().ok());
        if let Some(token) = mine {
            inner.sync_seen.send_if_modified(|s| {
                let newer = token > *s;
                *s = (*s).max(token);
                newer
            });
        }
        return;
    }
    let hashes: Vec<u64> = payload
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    inner.presence.add(&hashes);
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
    // its TTL by less than it should, and never store with EX 0. Capped
    // (Redis refuses an expiry past its clock's range).
    let ttl = ttl.min(uat_config::MAX_TTL);
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0).max(u64::from(ttl.as_secs() == 0))
}

impl CacheLevel for RedisLevel {
    fn level(&self) -> Level {
        Level::L2
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Hit>, CacheError> {
        if self.inner.healthy.load(Ordering::Relaxed)
            && self.inner.presence.surely_absent(key.xxh3())
        {
            self.inner.counters.miss();
            metrics::L2.miss.inc();
            return Ok(None);
        }
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
            metrics::L2.miss.inc();
            return Ok(None);
        };
        match codec::decode(&raw) {
            Ok((value, stored_at)) => {
                self.inner.counters.hit();
                metrics::L2.hit.inc();
                let ttl = Duration::from_millis(u64::try_from(pttl).unwrap_or(0));
                Ok(Some(Hit {
                    value,
                    ttl,
                    stored_at,
                }))
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

    async fn put_many(&self, items: Vec<Put>) -> Result<(), CacheError> {
        if items.is_empty() {
            return Ok(());
        }
        let n = items.len() as u64;
        let hashes: Vec<u64> = items.iter().map(|p| p.key.xxh3()).collect();
        let mut pipe = redis::pipe();
        for p in &items {
            pipe.cmd("SET")
                .arg(self.stored_key(&p.key))
                .arg(codec::encode(&p.value, p.stored_at))
                .arg("EX")
                .arg(ttl_secs(p.ttl))
                .ignore();
        }
        // Every replica's presence set learns the keys from this message.
        pipe.cmd("PUBLISH")
            .arg(self.stored_channel())
            .arg(
                hashes
                    .iter()
                    .flat_map(|h| h.to_le_bytes())
                    .collect::<Vec<u8>>(),
            )
            .ignore();
        // Recorded before the write and again after it, as in `presence.rs`.
        self.inner.presence.add(&hashes);
        let res = self
            .run("put", |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await;
        if res.is_ok() {
            self.inner.presence.add(&hashes);
        }
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
        let check = pattern.redis_overmatches();
        let mut cursor: u64 = 0;
        let mut deleted = 0u64;
        loop {
            let (next, mut keys) = self.scan_step(cursor, &m, SCAN_BATCH).await?;
            if check {
                // `?` was sent as `*`: keep only what the pattern matches.
                keys.retain(|k| {
                    k.strip_prefix(self.inner.prefix.as_str())
                        .and_then(|stored| CacheKey::parse_stored(stored).ok())
                        .is_some_and(|key| pattern.matches(&key))
                });
            }
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
            let (next, keys) = self.scan_step(cursor, &m, SCAN_BATCH).await?;
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
    let mut out = String::with_capacity(s.len() + 2);
    crate::key::redis_escape_literal(s, &mut out);
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
        assert_eq!(ttl_secs(Duration::MAX), uat_config::MAX_TTL.as_secs());
    }
}
