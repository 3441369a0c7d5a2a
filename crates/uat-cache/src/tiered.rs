//! The tiered cache: reads L1 -> L2 -> L3 and promotes a hit to the levels
//! above it; writes L1 at once and L2/L3 through a bounded queue drained by
//! one background writer (a full queue drops the write and counts it, never
//! blocking a request). Invalidations are published on Redis pub/sub so
//! every replica's L1 follows. Identical in-flight misses share one upstream
//! call ([`TieredCache::single_flight`]).

use crate::error::CacheError;
use crate::key::{BuildKeyHasher, CacheKey, KeyPattern};
use crate::l2::RedisLevel;
use crate::l3::SqlLevel;
use crate::level::{CacheLevel, Level, LevelStats, Put};
use crate::memory::{MemoryLevel, SWEEP_INTERVAL};
use crate::metrics::{self, METRICS};
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// Writes taken from the queue in one batch (one Redis pipeline; one SQL
/// transaction of 64-row upserts), per level. L3 takes more: each commit
/// has a fixed cost, and with an index on the rows' random ids (PostgreSQL;
/// SQLite before schema 3) each row dirties a page of it, which a larger
/// batch shares (measured on a 100,000-row SQLite table by
/// `scripts/bench-l3-sqlite.py`: 9.3 µs of CPU per row at 256, 7.5-8.2 at
/// 1,024).
const fn write_batch(level: Level) -> usize {
    match level {
        Level::L3 => 1024,
        Level::L1 | Level::L2 => 256,
    }
}

/// Default of [`TieredBuilder::l2_write_delay`]: short, since other
/// replicas find an entry in Redis only once it is written.
const DEFAULT_L2_WRITE_DELAY: Duration = Duration::from_millis(20);
/// Default of [`TieredBuilder::l3_write_delay`]: each SQL commit has a fixed
/// cost (on a busy SQLite file, a WAL append and now and then a checkpoint),
/// so the last tier commits rarely and in large batches.
const DEFAULT_L3_WRITE_DELAY: Duration = Duration::from_millis(250);

/// A hit: the value and the level that held it.
#[derive(Debug, Clone)]
pub struct Found {
    /// The raw value.
    pub value: Bytes,
    /// The level that answered.
    pub level: Level,
    /// Time it has left to live.
    pub ttl: Duration,
    /// When it was first stored ([`crate::Hit::stored_at`]).
    pub stored_at: Option<u64>,
}

impl Found {
    /// How long ago it was first stored, by this replica's clock; `None`
    /// when unknown (an entry of an earlier release).
    pub fn age(&self) -> Option<Duration> {
        self.stored_at.map(crate::level::age_of)
    }
}

/// What an invalidation ([`TieredCache::delete`], [`TieredCache::invalidate`])
/// did, level by level. Complete only when every enabled level deleted its
/// entries and the other replicas were told: otherwise entries may remain
/// (a level down is skipped) and be served again.
#[derive(Debug, Clone, Default)]
pub struct Invalidated {
    /// Entries deleted: the largest count over the levels that answered.
    pub deleted: u64,
    /// Each enabled level, L1 first: how many entries it deleted, or why it
    /// could not.
    pub levels: Vec<(Level, Result<u64, String>)>,
    /// Levels whose queued writes were not applied before the deletion
    /// (they may bring entries back).
    pub unflushed: Vec<Level>,
    /// Why the other replicas were not told, when they were not (their L1s
    /// keep the entries until they expire).
    pub publish_error: Option<String>,
}

impl Invalidated {
    /// True when nothing failed.
    pub fn is_complete(&self) -> bool {
        self.failed().next().is_none()
    }

    /// What failed, as `l1`, `l2`, `l3` or `pubsub`, with why.
    pub fn failed(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let levels = self.levels.iter().filter_map(|(level, r)| match r {
            Err(e) => Some((level.as_str(), e.as_str())),
            Ok(_) if self.unflushed.contains(level) => {
                Some((level.as_str(), "its queued writes did not flush in time"))
            }
            Ok(_) => None,
        });
        levels.chain(self.publish_error.as_deref().map(|e| ("pubsub", e)))
    }

    /// The levels that deleted their entries.
    pub fn succeeded(&self) -> impl Iterator<Item = Level> {
        self.levels
            .iter()
            .filter(|(level, r)| r.is_ok() && !self.unflushed.contains(level))
            .map(|(level, _)| *level)
    }

    fn level(&mut self, level: Level, r: Result<u64, CacheError>) {
        self.level_result(level, r.map_err(|e| e.to_string()));
    }

    fn level_result(&mut self, level: Level, r: Result<u64, String>) {
        if let Ok(n) = r {
            self.deleted = self.deleted.max(n);
        }
        self.levels.push((level, r));
    }
}

/// Stats of the whole cache, per level.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    /// Per level (`l1`, `l2`, `l3`), only the enabled ones.
    pub levels: BTreeMap<&'static str, LevelStats>,
    /// L2/L3 writes dropped because the queue was full.
    pub dropped_writes: u64,
    /// Requests that waited on an identical in-flight request.
    pub singleflight_waiters: u64,
}

enum Job {
    /// A write, and when it was queued: its time to live counts from then,
    /// not from when its batch is sent (up to the write delay later).
    Put(Put, std::time::Instant),
    Flush(oneshot::Sender<()>),
}

/// The queue of one level's writes and its writer task.
struct Writer {
    level: Level,
    tx: mpsc::Sender<Job>,
    /// Ends the writer's gathering wait (a flush is queued).
    flush_now: Arc<Notify>,
}

impl Writer {
    fn start<L>(level: L, capacity: usize, delay: Duration) -> (Self, tokio::task::AbortHandle)
    where
        L: CacheLevel + Send + Sync + 'static,
    {
        let (tx, rx) = mpsc::channel(capacity);
        let flush_now = Arc::new(Notify::new());
        let name = level.level();
        let batch = write_batch(name);
        let task = tokio::spawn(writer_loop(rx, level, batch, delay, flush_now.clone()));
        let writer = Writer {
            level: name,
            tx,
            flush_now,
        };
        (writer, task.abort_handle())
    }
}

#[derive(Serialize, Deserialize)]
struct Invalidation {
    origin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    glob: Option<String>,
}

/// Outcome of [`TieredCache::single_flight`].
pub enum Flight {
    /// This caller goes upstream; identical callers wait until the guard drops.
    Leader(FlightGuard),
    /// An identical request was in flight and has finished (or the wait timed
    /// out): look the key up again, and go upstream alone on a miss. With no
    /// L1, its answer comes along (the L2/L3 writes are still queued, so a
    /// lookup would miss).
    Waited(Option<Found>),
}

type FlightMap = Arc<Mutex<HashMap<CacheKey, Arc<Landing>, BuildKeyHasher>>>;

/// What the waiters of one flight wait on.
#[derive(Default)]
struct Landing {
    landed: AtomicBool,
    notify: Notify,
    /// The leader's answer, kept only when there is no L1 to find it in.
    value: std::sync::OnceLock<Found>,
}

/// Held by the leader of a flight; dropping it releases the waiters. Drop it
/// after the value has been stored (L1 is written synchronously by
/// [`TieredCache::put`]).
pub struct FlightGuard {
    map: FlightMap,
    key: CacheKey,
    landing: Arc<Landing>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        {
            let mut m = self.map.lock();
            if m.get(&self.key)
                .is_some_and(|l| Arc::ptr_eq(l, &self.landing))
            {
                m.remove(&self.key);
            }
        }
        self.landing.landed.store(true, Ordering::Release);
        self.landing.notify.notify_waiters();
    }
}

/// Builder for [`TieredCache`].
#[derive(Default)]
pub struct TieredBuilder {
    l1: Option<MemoryLevel>,
    l2: Option<RedisLevel>,
    l3: Option<SqlLevel>,
    queue: Option<usize>,
    l2_delay: Option<Duration>,
    l3_delay: Option<Duration>,
}

impl TieredBuilder {
    /// Enables L1 with a bound in bytes (0 leaves L1 off).
    pub fn l1(mut self, max_bytes: u64) -> Self {
        self.l1 = (max_bytes > 0).then(|| MemoryLevel::new(max_bytes));
        self
    }

    /// Enables L2.
    pub fn l2(mut self, level: RedisLevel) -> Self {
        self.l2 = Some(level);
        self
    }

    /// Enables L3.
    pub fn l3(mut self, level: SqlLevel) -> Self {
        self.l3 = Some(level);
        self
    }

    /// Capacity of each of the L2 and L3 write queues (default 4096).
    pub fn write_queue(mut self, capacity: usize) -> Self {
        self.queue = Some(capacity.max(1));
        self
    }

    /// How long L2's writer gathers writes before sending them as one
    /// pipeline (default 20 ms; zero sends what is queued at once). One
    /// wake-up and one round trip per batch instead of per write: on a
    /// miss-heavy load the writes were most of what a miss cost beyond L1.
    /// A flush ends the wait at once.
    pub fn l2_write_delay(mut self, delay: Duration) -> Self {
        self.l2_delay = Some(delay);
        self
    }

    /// How long L3's writer gathers writes before sending them as one SQL
    /// statement (default 250 ms); see [`TieredBuilder::l2_write_delay`].
    pub fn l3_write_delay(mut self, delay: Duration) -> Self {
        self.l3_delay = Some(delay);
        self
    }

    /// Starts the writer (and, with L2, the invalidation subscriber). Must be
    /// called inside a Tokio runtime.
    pub fn build(self) -> TieredCache {
        let capacity = self.queue.unwrap_or(4096);
        let mut tasks = Vec::new();
        let mut writers = Vec::new();
        if let Some(l2) = &self.l2 {
            let delay = self.l2_delay.unwrap_or(DEFAULT_L2_WRITE_DELAY);
            let (w, t) = Writer::start(l2.clone(), capacity, delay);
            writers.push(w);
            tasks.push(t);
        }
        if let Some(l3) = &self.l3 {
            let delay = self.l3_delay.unwrap_or(DEFAULT_L3_WRITE_DELAY);
            let (w, t) = Writer::start(l3.clone(), capacity, delay);
            writers.push(w);
            tasks.push(t);
        }
        let (sub_tx, sub_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            id: uuid::Uuid::new_v4().to_string(),
            l1: self.l1,
            l2: self.l2,
            l3: self.l3,
            writers,
            dropped: AtomicU64::new(0),
            waiters: AtomicU64::new(0),
            flights: Arc::new(Mutex::new(HashMap::default())),
            subscribed: sub_rx,
            tasks: Mutex::new(tasks),
        });
        if let (Some(l2), Some(l1)) = (inner.l2.clone(), inner.l1.clone()) {
            let sub = tokio::spawn(subscriber_loop(l2, l1, inner.id.clone(), sub_tx));
            inner.tasks.lock().push(sub.abort_handle());
        }
        if let Some(l1) = inner.l1.clone() {
            let sweep = tokio::spawn(sweep_loop(l1));
            inner.tasks.lock().push(sweep.abort_handle());
        }
        TieredCache { inner }
    }
}

struct Inner {
    id: String,
    l1: Option<MemoryLevel>,
    l2: Option<RedisLevel>,
    l3: Option<SqlLevel>,
    /// One per enabled level below L1 (L2, then L3).
    writers: Vec<Writer>,
    dropped: AtomicU64,
    waiters: AtomicU64,
    flights: FlightMap,
    subscribed: watch::Receiver<bool>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

/// The tiered cache. Cheap to clone.
#[derive(Clone)]
pub struct TieredCache {
    inner: Arc<Inner>,
}

impl TieredCache {
    /// A builder with every level off.
    pub fn builder() -> TieredBuilder {
        TieredBuilder::default()
    }

    /// This instance's id (the origin of its pub/sub messages).
    pub fn instance_id(&self) -> &str {
        &self.inner.id
    }

    /// L1, when enabled.
    pub fn l1(&self) -> Option<&MemoryLevel> {
        self.inner.l1.as_ref()
    }

    /// L2, when enabled.
    pub fn l2(&self) -> Option<&RedisLevel> {
        self.inner.l2.as_ref()
    }

    /// L3, when enabled.
    pub fn l3(&self) -> Option<&SqlLevel> {
        self.inner.l3.as_ref()
    }

    /// Looks a key up level by level; a hit is promoted to every level above.
    /// Level failures count as misses.
    pub async fn get(&self, key: &CacheKey) -> Option<Found> {
        if let Some(l1) = &self.inner.l1
            && let Some(h) = l1.get_now(key)
        {
            return Some(Found {
                value: h.value,
                level: Level::L1,
                ttl: h.ttl,
                stored_at: h.stored_at,
            });
        }
        if let Some(l2) = &self.inner.l2
            && let Ok(Some(h)) = l2.get(key).await
        {
            if let Some(l1) = &self.inner.l1 {
                l1.put_stored_at(key, h.value.clone(), h.ttl, h.stored_at);
            }
            return Some(Found {
                value: h.value,
                level: Level::L2,
                ttl: h.ttl,
                stored_at: h.stored_at,
            });
        }
        if let Some(l3) = &self.inner.l3
            && let Ok(Some(h)) = l3.get(key).await
        {
            if let Some(l1) = &self.inner.l1 {
                l1.put_stored_at(key, h.value.clone(), h.ttl, h.stored_at);
            }
            if self.inner.l2.is_some() {
                self.enqueue(key, &h.value, h.ttl, h.stored_at, Level::L2);
            }
            return Some(Found {
                value: h.value,
                level: Level::L3,
                ttl: h.ttl,
                stored_at: h.stored_at,
            });
        }
        None
    }

    /// [`TieredCache::put`] by the leader of a flight: with no L1 the value
    /// also goes to the flight's waiters, which would not find it before the
    /// queued L2/L3 writes land.
    pub fn land(&self, guard: &FlightGuard, key: &CacheKey, value: Bytes, ttl: Duration) {
        let stored_at = crate::level::now_ms();
        if self.inner.l1.is_none() && !ttl.is_zero() {
            let level = if self.inner.l2.is_some() {
                Level::L2
            } else {
                Level::L3
            };
            let _ = guard.landing.value.set(Found {
                value: value.clone(),
                level,
                ttl: ttl.min(uat_config::MAX_TTL),
                stored_at: Some(stored_at),
            });
        }
        self.put_at(key, value, ttl, stored_at);
    }

    /// Stores a value in every enabled level: L1 now, L2/L3 through the queue.
    /// A time to live over [`uat_config::MAX_TTL`] is cut to it.
    pub fn put(&self, key: &CacheKey, value: Bytes, ttl: Duration) {
        self.put_at(key, value, ttl, crate::level::now_ms());
    }

    /// [`TieredCache::put`] of a value stored at `stored_at` (ms since the
    /// Unix epoch).
    fn put_at(&self, key: &CacheKey, value: Bytes, ttl: Duration, stored_at: u64) {
        if ttl.is_zero() {
            return;
        }
        let ttl = ttl.min(uat_config::MAX_TTL);
        // One copy of exactly its bytes for every level: `value` is often a
        // slice of a larger network buffer, which L1 would keep alive
        // uncounted and a queued write would hold until its batch is sent
        // (up to the L3 write delay: ~1,000 buffers at 4,000 misses/s, whose
        // churn cost page faults worth ~5 µs of CPU per miss).
        let value = Bytes::copy_from_slice(&value);
        if let Some(l1) = &self.inner.l1 {
            l1.put_exact(key, value.clone(), ttl, Some(stored_at));
        }
        if !self.inner.writers.is_empty() {
            let queued = std::time::Instant::now();
            for w in &self.inner.writers {
                self.send(w, key, &value, ttl, Some(stored_at), queued);
            }
        }
    }

    /// Queues a write to one level below L1 (a promotion).
    fn enqueue(
        &self,
        key: &CacheKey,
        value: &Bytes,
        ttl: Duration,
        stored_at: Option<u64>,
        level: Level,
    ) {
        if let Some(w) = self.inner.writers.iter().find(|w| w.level == level) {
            self.send(w, key, value, ttl, stored_at, std::time::Instant::now());
        }
    }

    fn send(
        &self,
        w: &Writer,
        key: &CacheKey,
        value: &Bytes,
        ttl: Duration,
        stored_at: Option<u64>,
        queued: std::time::Instant,
    ) {
        let job = Job::Put(
            Put {
                key: key.clone(),
                value: value.clone(),
                ttl,
                stored_at,
            },
            queued,
        );
        if w.tx.try_send(job).is_err() {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::write(w.level.as_str(), "dropped");
        }
    }

    /// Waits until every write queued so far has been applied (or `max` passed).
    pub async fn flush(&self, max: Duration) {
        self.flush_levels(max).await;
    }

    /// [`TieredCache::flush`], returning the levels whose queued writes were
    /// not all applied within `max`.
    async fn flush_levels(&self, max: Duration) -> Vec<Level> {
        let waits = self.inner.writers.iter().map(|w| async move {
            let (tx, rx) = oneshot::channel();
            let flushed = tokio::time::timeout(max, w.tx.send(Job::Flush(tx))).await;
            if !matches!(flushed, Ok(Ok(()))) {
                return Some(w.level);
            }
            w.flush_now.notify_one();
            match tokio::time::timeout(max, rx).await {
                Ok(Ok(())) => None,
                _ => Some(w.level),
            }
        });
        futures::future::join_all(waits)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Deletes one key from every level and tells the other replicas.
    /// `deleted` is 1 when some level held it, else 0.
    pub async fn delete(&self, key: &CacheKey) -> Invalidated {
        let mut out = self.begin_invalidation().await;
        if let Some(l1) = &self.inner.l1 {
            out.level(Level::L1, Ok(l1.remove(key)));
        }
        if let Some(l2) = &self.inner.l2 {
            out.level(Level::L2, l2.delete(key).await);
        }
        if let Some(l3) = &self.inner.l3 {
            out.level(Level::L3, l3.delete(key).await);
        }
        out.deleted = out.deleted.min(1);
        out.publish_error = self
            .publish(Invalidation {
                origin: self.inner.id.clone(),
                key: Some(key.as_str().to_string()),
                namespace: None,
                glob: None,
            })
            .await;
        out
    }

    /// Deletes every entry matching `pattern` from every level and tells the
    /// other replicas. `deleted` is the largest count over the levels (an
    /// entry lives in several levels at once).
    pub async fn invalidate(&self, pattern: &KeyPattern) -> Invalidated {
        let mut out = self.begin_invalidation().await;
        if let Some(l1) = &self.inner.l1 {
            // A walk over every entry: off the async workers.
            let (l1, p) = (l1.clone(), pattern.clone());
            let r = tokio::task::spawn_blocking(move || l1.remove_matching(&p))
                .await
                .map_err(|e| format!("task failed: {e}"));
            out.level_result(Level::L1, r);
        }
        if let Some(l2) = &self.inner.l2 {
            out.level(Level::L2, l2.invalidate_pattern(pattern).await);
        }
        if let Some(l3) = &self.inner.l3 {
            out.level(Level::L3, l3.invalidate_pattern(pattern).await);
        }
        out.publish_error = self
            .publish(Invalidation {
                origin: self.inner.id.clone(),
                key: None,
                namespace: Some(pattern.namespace().to_string()),
                glob: Some(pattern.model_glob().to_string()),
            })
            .await;
        out
    }

    /// Flushes queued writes before an invalidation, so none lands after it;
    /// a level whose writes did not flush in time is reported as failed
    /// (what is still queued may bring entries back).
    async fn begin_invalidation(&self) -> Invalidated {
        let unflushed = self.flush_levels(Duration::from_secs(2)).await;
        Invalidated {
            unflushed,
            ..Invalidated::default()
        }
    }

    /// Announces an invalidation to the other replicas; the error when it
    /// could not be (with L2 on only: without it there is no one to tell).
    async fn publish(&self, msg: Invalidation) -> Option<String> {
        let l2 = self.inner.l2.as_ref()?;
        match serde_json::to_string(&msg) {
            Ok(s) => l2.publish(s).await.err().map(|e| e.to_string()),
            Err(e) => Some(format!("not encoded: {e}")),
        }
    }

    /// Joins the flight for `key`: the first caller leads, the others wait
    /// (at most `max_wait`) until the leader's guard is dropped.
    pub async fn single_flight(&self, key: &CacheKey, max_wait: Duration) -> Flight {
        let landing = {
            let mut m = self.inner.flights.lock();
            match m.get(key) {
                Some(l) => l.clone(),
                None => {
                    let landing = Arc::new(Landing::default());
                    m.insert(key.clone(), landing.clone());
                    return Flight::Leader(FlightGuard {
                        map: self.inner.flights.clone(),
                        key: key.clone(),
                        landing,
                    });
                }
            }
        };
        self.inner.waiters.fetch_add(1, Ordering::Relaxed);
        METRICS.singleflight_waiters.inc();
        // Registered before the flag is read: a landing between the two
        // still wakes this waiter.
        let notified = landing.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !landing.landed.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(max_wait, notified).await;
        }
        Flight::Waited(landing.value.get().cloned())
    }

    /// Health of each enabled level below L1 (`false`: being skipped).
    pub fn health(&self) -> Vec<(Level, bool)> {
        let mut out = Vec::new();
        if let Some(l2) = &self.inner.l2 {
            out.push((Level::L2, l2.healthy()));
        }
        if let Some(l3) = &self.inner.l3 {
            out.push((Level::L3, l3.healthy()));
        }
        out
    }

    /// Waits until the invalidation subscriber is listening (tests; replicas
    /// started together). False when it did not within `max`, or without L2.
    pub async fn wait_subscribed(&self, max: Duration) -> bool {
        let mut rx = self.inner.subscribed.clone();
        matches!(
            tokio::time::timeout(max, rx.wait_for(|v| *v)).await,
            Ok(Ok(_))
        )
    }

    /// Entries, bytes, hits, misses and hit rate per level.
    pub async fn stats(&self) -> CacheStats {
        let mut levels = BTreeMap::new();
        if let Some(l1) = &self.inner.l1
            && let Ok(s) = l1.stats().await
        {
            levels.insert("l1", s);
        }
        if let Some(l2) = &self.inner.l2 {
            levels.insert("l2", l2.stats().await.unwrap_or_default());
        }
        if let Some(l3) = &self.inner.l3 {
            levels.insert("l3", l3.stats().await.unwrap_or_default());
        }
        CacheStats {
            levels,
            dropped_writes: self.inner.dropped.load(Ordering::Relaxed),
            singleflight_waiters: self.inner.waiters.load(Ordering::Relaxed),
        }
    }
}

/// Applies one level's queued writes in batches: waits for a first write,
/// gathers for `delay` (or until the batch is full or a flush is queued),
/// then sends the batch in one call (one Redis pipeline, one SQL statement).
async fn writer_loop<L: CacheLevel>(
    mut rx: mpsc::Receiver<Job>,
    level: L,
    max_batch: usize,
    delay: Duration,
    flush_now: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        let flushing = |b: &[Job]| b.iter().any(|j| matches!(j, Job::Flush(_)));
        if !delay.is_zero() && batch.len() < max_batch && !flushing(&batch) {
            // Sleeping, not receiving: writes queued meanwhile wake nobody.
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = flush_now.notified() => {}
            }
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        let mut puts = Vec::with_capacity(batch.len());
        let mut flushes = Vec::new();
        for job in batch.drain(..) {
            match job {
                Job::Put(mut p, queued) => {
                    p.ttl = p.ttl.saturating_sub(queued.elapsed());
                    if p.ttl.is_zero() {
                        // Expired while queued (a TTL shorter than the
                        // write delay, or a writer behind): not written.
                        metrics::write(level.level().as_str(), "expired");
                    } else {
                        puts.push(p);
                    }
                }
                Job::Flush(done) => flushes.push(done),
            }
        }
        if !puts.is_empty()
            && let Err(e) = level.put_many(puts).await
        {
            tracing::debug!(level = level.level().as_str(), error = %e, "cache write skipped");
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

/// Frees L1's expired entries and samples its size, every [`SWEEP_INTERVAL`]
/// (on the blocking pool: a pass visits every entry).
async fn sweep_loop(l1: MemoryLevel) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let l1 = l1.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || l1.purge_expired()).await {
            if e.is_cancelled() {
                return;
            }
            tracing::warn!(error = %e, "L1 expiry sweep failed; retrying at the next interval");
        }
    }
}

async fn subscriber_loop(l2: RedisLevel, l1: MemoryLevel, id: String, ready: watch::Sender<bool>) {
    let channel = l2.channel();
    let mut delay = Duration::from_millis(100);
    loop {
        let conn = tokio::time::timeout(
            l2.timeout().max(Duration::from_secs(1)),
            l2.client().get_async_pubsub(),
        )
        .await;
        if let Ok(Ok(mut pubsub)) = conn
            && pubsub.subscribe(&channel).await.is_ok()
        {
            delay = Duration::from_millis(100);
            let _ = ready.send(true);
            let mut stream = pubsub.on_message();
            while let Some(msg) = stream.next().await {
                let Ok(payload) = msg.get_payload::<String>() else {
                    continue;
                };
                apply_invalidation(&l1, &id, &payload);
            }
            let _ = ready.send(false);
            // Messages published while disconnected are lost: clear L1 so
            // it cannot serve an entry another replica invalidated.
            l1.clear();
            tracing::debug!("invalidation subscriber disconnected; reconnecting");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn apply_invalidation(l1: &MemoryLevel, own_id: &str, payload: &str) {
    let msg: Invalidation = match serde_json::from_str(payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "ignoring malformed invalidation message");
            return;
        }
    };
    if msg.origin == own_id {
        return;
    }
    if let Some(k) = msg.key
        && let Ok(key) = CacheKey::parse_stored(&k)
    {
        l1.remove(&key);
    }
    if let (Some(ns), Some(glob)) = (msg.namespace, msg.glob)
        && let Ok(p) = KeyPattern::new(&ns, &glob)
    {
        l1.remove_matching(&p);
    }
}
