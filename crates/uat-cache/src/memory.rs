//! L1: the in-process level, a quick_cache cache bounded in bytes (weigher)
//! with scan-resistant eviction (S3-FIFO: one-hit entries leave first, keys
//! seen again come back hot) and a time to live per entry.
//!
//! Not moka (which the cache's first design named, for its TinyLFU and
//! per-entry expiry): on a miss, moka's lookup and insert took 4.3 to 5.2 µs
//! of the 7 to 9 µs a miss may add (5% of a request through the gateway), on
//! cold CPU caches between requests; quick_cache's took 1.4 to 2.5 µs in the
//! same runs (`scripts/bench-ab.sh`). quick_cache has no clock of its own:
//! an entry carries its expiry, a read past it is a miss that removes it,
//! and [`MemoryLevel::purge_expired`] (run every [`SWEEP_INTERVAL`] by the
//! tiered cache) frees the rest.

use crate::error::CacheError;
use crate::key::{BuildKeyHasher, CacheKey, KeyPattern};
use crate::level::{CacheLevel, Counters, Hit, Level, LevelStats, Put};
use crate::metrics::{L1, METRICS, OpTimer};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Per-entry bookkeeping counted into the weight besides key and value:
/// the cache's slot and table entry, the key's allocation and our `Entry`,
/// with the allocator's rounding. Measured (mimalloc, as in the binary):
/// resident memory grew 583 to 613 bytes per entry, the key's allocation
/// included, while 58,600 to 200,000 entries of 639 weighted bytes (an
/// 83-byte key, a 300-byte value) were added, so `max_bytes` bounds what
/// L1 really holds.
const ENTRY_OVERHEAD: usize = 256;

/// How often the tiered cache purges L1's expired entries and samples its
/// size into `uat_cache_bytes{level="l1"}`.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The smallest shard: an entry over [`MAX_ENTRY_SHARE`] of a shard is not
/// kept, so shards are at least this large (or the whole cache is one) for
/// an embeddings batch of several MB to be.
const MIN_SHARD_BYTES: u64 = 32 << 20;

/// The largest entry L1 keeps is a third of a shard (about 10 MiB at the
/// default size; L2 and L3 still store larger ones). An entry near a shard's
/// size (quick_cache takes one up to 97% of it: a 2,048-input batch of
/// 1,536-dimension embeddings is about 30 MB of JSON) evicted nearly every
/// other entry of its shard to make room, once for each such answer.
const MAX_ENTRY_SHARE: u64 = 3;

/// A typical entry (key, a chat answer, the overhead), to size the ghost list.
const TYPICAL_ENTRY_BYTES: u64 = 2048;

/// The part of `max_bytes` left to the ghost list (the hashes of recently
/// evicted keys, which bring a key asked for again back as hot): one per two
/// typical entries, about 110 bytes each, so 1/32 of the budget.
const GHOST_SHARE: u64 = 32;

#[derive(Clone)]
struct Entry {
    value: Bytes,
    expires_at: Instant,
    /// [`Hit::stored_at`].
    stored_at: Option<u64>,
}

#[derive(Clone, Copy)]
struct Weigh;

impl quick_cache::Weighter<CacheKey, Entry> for Weigh {
    fn weight(&self, k: &CacheKey, v: &Entry) -> u64 {
        weight(k, &v.value)
    }
}

/// An entry's weight: key, value and [`ENTRY_OVERHEAD`].
fn weight(k: &CacheKey, value: &[u8]) -> u64 {
    (k.as_str().len() + value.len() + ENTRY_OVERHEAD) as u64
}

/// Counts entries evicted for size (an expired entry is purged, not
/// evicted), process-wide and per cache.
#[derive(Clone)]
struct CountEvictions {
    metric: prometheus::IntCounter,
    own: Arc<AtomicU64>,
}

/// One insert's evictions: the values are dropped when the insert has
/// released the shard's lock (a large body's free can be a `munmap`).
#[derive(Default)]
struct Evicted {
    /// The key being inserted: replacing its own older value is no eviction.
    inserting: u64,
    values: [Option<Entry>; 2],
}

impl quick_cache::Lifecycle<CacheKey, Entry> for CountEvictions {
    type RequestState = Evicted;
    fn on_evict(&self, state: &mut Evicted, key: CacheKey, value: Entry) {
        if key.xxh3() != state.inserting {
            self.metric.inc();
            self.own.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(slot) = state.values.iter_mut().find(|v| v.is_none()) {
            *slot = Some(value);
        }
    }
}

type Store = quick_cache::sync::Cache<CacheKey, Entry, Weigh, BuildKeyHasher, CountEvictions>;

/// The L1 level.
#[derive(Clone)]
pub struct MemoryLevel {
    cache: Arc<Store>,
    counters: Arc<Counters>,
    evictions: Arc<AtomicU64>,
    /// The largest weight kept (a third of a shard).
    max_entry: u64,
}

impl MemoryLevel {
    /// A cache holding at most `max_bytes` (keys, values and a fixed per-entry overhead).
    pub fn new(max_bytes: u64) -> Self {
        let max_bytes = max_bytes.max(1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Shards of at least MIN_SHARD_BYTES (a power of two of them), so
        // that a large answer (an embeddings batch) fits in one.
        let by_size = (max_bytes / MIN_SHARD_BYTES).max(1);
        let shards = (cores as u64 * 4).min(by_size);
        let shards = 1u64 << shards.ilog2();
        let capacity = (max_bytes - max_bytes / GHOST_SHARE).max(1);
        let mut options = quick_cache::OptionsBuilder::new();
        options
            .shards(usize::try_from(shards).unwrap_or(1))
            .weight_capacity(capacity)
            .estimated_items_capacity(
                usize::try_from((max_bytes / TYPICAL_ENTRY_BYTES).max(64)).unwrap_or(usize::MAX),
            );
        let evictions = Arc::new(AtomicU64::new(0));
        let lifecycle = CountEvictions {
            metric: L1.evictions.clone(),
            own: evictions.clone(),
        };
        let cache = match options.build() {
            Ok(o) => Store::with_options(o, Weigh, BuildKeyHasher::default(), lifecycle),
            // The options set above are all valid; keep a working cache anyway.
            Err(_) => Store::with(1024, max_bytes, Weigh, BuildKeyHasher::default(), lifecycle),
        };
        MemoryLevel {
            cache: Arc::new(cache),
            counters: Arc::new(Counters::default()),
            evictions,
            max_entry: capacity / shards / MAX_ENTRY_SHARE,
        }
    }

    /// Synchronous lookup (L1 never waits on I/O).
    pub fn get_now(&self, key: &CacheKey) -> Option<Hit> {
        let m = &*L1;
        let now = Instant::now();
        let out = match self.cache.get(key) {
            Some(e) if e.expires_at > now => {
                self.counters.hit();
                m.hit.inc();
                Some(Hit {
                    value: e.value,
                    ttl: e.expires_at - now,
                    stored_at: e.stored_at,
                })
            }
            found => {
                if found.is_some() {
                    // Expired: free it now (unless a fresh one replaced it meanwhile).
                    self.cache.remove_if(key, |e| e.expires_at <= now);
                }
                self.counters.miss();
                m.miss.inc();
                None
            }
        };
        m.get_seconds.observe(now.elapsed().as_secs_f64());
        out
    }

    /// Synchronous insert of a value stored now.
    pub fn put_now(&self, key: &CacheKey, value: Bytes, ttl: Duration) {
        self.put_stored_at(key, value, ttl, Some(crate::level::now_ms()));
    }

    /// Synchronous insert of a value first stored at `stored_at` (a
    /// promotion: [`Hit::stored_at`] of the level below).
    pub fn put_stored_at(
        &self,
        key: &CacheKey,
        value: Bytes,
        ttl: Duration,
        stored_at: Option<u64>,
    ) {
        // A copy of exactly its bytes: a body read from the network is often
        // a slice of a larger buffer (a socket read, a gzip decoder's output)
        // that the slice would keep alive, uncounted by the weigher (seen:
        // 4.7 KB resident per 500-byte entry).
        self.put_exact(key, Bytes::copy_from_slice(&value), ttl, stored_at);
    }

    /// [`MemoryLevel::put_stored_at`] of a value that owns exactly its
    /// bytes (the caller made the copy).
    pub(crate) fn put_exact(
        &self,
        key: &CacheKey,
        value: Bytes,
        ttl: Duration,
        stored_at: Option<u64>,
    ) {
        if ttl.is_zero() {
            return;
        }
        if weight(key, &value) > self.max_entry {
            // Rare (answers of several MB): a label lookup is fine here.
            crate::metrics::METRICS
                .writes
                .with_label_values(&["l1", "skipped"])
                .inc();
            return;
        }
        // `now + ttl` panics past the clock's range.
        let ttl = ttl.min(uat_config::MAX_TTL);
        let m = &*L1;
        let now = Instant::now();
        let mut evicted = Evicted {
            inserting: key.xxh3(),
            ..Evicted::default()
        };
        self.cache.insert_with_lifecycle(
            key.clone(),
            Entry {
                value,
                expires_at: now + ttl,
                stored_at,
            },
            &mut evicted,
        );
        drop(evicted);
        m.write_ok.inc();
        m.put_seconds.observe(now.elapsed().as_secs_f64());
    }

    /// True when the key is present and live (no counters touched, no
    /// change to the entry's standing in the eviction order).
    pub fn contains(&self, key: &CacheKey) -> bool {
        self.cache
            .peek(key)
            .is_some_and(|e| e.expires_at > Instant::now())
    }

    /// Removes one key.
    pub fn remove(&self, key: &CacheKey) -> u64 {
        u64::from(self.cache.remove(key).is_some())
    }

    /// Removes every key matching the pattern, by iteration (each entry
    /// visited under its shard's read lock alone, not a shard at a time).
    pub fn remove_matching(&self, pattern: &KeyPattern) -> u64 {
        let _t = OpTimer::start("l1", "invalidate");
        let doomed: Vec<CacheKey> = self
            .cache
            .iter()
            .filter_map(|(k, _)| pattern.matches(&k).then_some(k))
            .collect();
        doomed
            .iter()
            .filter(|k| self.cache.remove(*k).is_some())
            .count() as u64
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.cache.clear();
    }

    /// Frees the expired entries and samples the size into
    /// `uat_cache_bytes{level="l1"}`; returns how many went. Visits every
    /// entry, each under its shard's read lock alone: run it off the
    /// request path (the blocking pool).
    pub fn purge_expired(&self) -> u64 {
        let now = Instant::now();
        let expired: Vec<CacheKey> = self
            .cache
            .iter()
            .filter_map(|(k, e)| (e.expires_at <= now).then_some(k))
            .collect();
        let n = expired
            .iter()
            .filter(|k| self.cache.remove_if(*k, |e| e.expires_at <= now).is_some())
            .count() as u64;
        L1.bytes
            .set(i64::try_from(self.cache.weight()).unwrap_or(i64::MAX));
        n
    }

    /// Entries this cache evicted for size since it was made.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Entries held, expired or not (see [`MemoryLevel::purge_expired`]).
    pub fn entry_count(&self) -> u64 {
        self.cache.len() as u64
    }

    /// Weighted bytes held.
    pub fn weighted_size(&self) -> u64 {
        self.cache.weight()
    }
}

impl CacheLevel for MemoryLevel {
    fn level(&self) -> Level {
        Level::L1
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Hit>, CacheError> {
        Ok(self.get_now(key))
    }

    async fn put_many(&self, items: Vec<Put>) -> Result<(), CacheError> {
        for p in items {
            self.put_stored_at(&p.key, p.value, p.ttl, p.stored_at);
        }
        Ok(())
    }

    async fn delete(&self, key: &CacheKey) -> Result<u64, CacheError> {
        Ok(self.remove(key))
    }

    async fn invalidate_pattern(&self, pattern: &KeyPattern) -> Result<u64, CacheError> {
        Ok(self.remove_matching(pattern))
    }

    async fn stats(&self) -> Result<LevelStats, CacheError> {
        let l1 = self.clone();
        // Expired entries are not counted (the sweep may not have run yet).
        let _ = tokio::task::spawn_blocking(move || l1.purge_expired()).await;
        let mut s = LevelStats {
            entries: self.entry_count(),
            bytes: self.weighted_size(),
            healthy: true,
            ..LevelStats::default()
        };
        self.counters.fill(&mut s);
        METRICS
            .bytes
            .with_label_values(&["l1"])
            .set(i64::try_from(s.bytes).unwrap_or(i64::MAX));
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::RequestKind;
    use serde_json::json;

    fn k(i: usize) -> CacheKey {
        CacheKey::for_request("t", "m", RequestKind::Chat, &json!({ "i": i }))
    }

    #[test]
    fn entries_expire_after_their_own_ttl() {
        let l1 = MemoryLevel::new(1 << 20);
        l1.put_now(
            &k(1),
            Bytes::from_static(b"short"),
            Duration::from_millis(50),
        );
        l1.put_now(&k(2), Bytes::from_static(b"long"), Duration::from_secs(60));
        assert!(l1.get_now(&k(1)).is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(l1.get_now(&k(1)).is_none());
        assert_eq!(
            l1.get_now(&k(2)).unwrap().value,
            Bytes::from_static(b"long")
        );
    }

    /// A time to live past the clock's range is cut to `MAX_TTL` (it used
    /// to panic in `Instant + Duration`, from a client's `x-uat-cache-ttl`).
    #[test]
    fn a_huge_ttl_is_capped_not_a_panic() {
        let l1 = MemoryLevel::new(1 << 20);
        l1.put_now(&k(1), Bytes::from_static(b"forever"), Duration::MAX);
        let hit = l1.get_now(&k(1)).expect("stored");
        assert_eq!(hit.value, Bytes::from_static(b"forever"));
        assert!(hit.ttl <= uat_config::MAX_TTL && hit.ttl > uat_config::MAX_TTL / 2);
    }

    #[test]
    fn the_byte_bound_holds_and_evictions_are_counted() {
        let l1 = MemoryLevel::new(64 * 1024);
        let v = Bytes::from(vec![b'x'; 1024]);
        for i in 0..500 {
            l1.put_now(&k(i), v.clone(), Duration::from_secs(60));
        }
        assert!(l1.weighted_size() <= 64 * 1024, "{}", l1.weighted_size());
        let held = l1.entry_count();
        assert!(held < 500 && held > 20, "{held}");
        assert_eq!(l1.evictions(), 500 - held);
        // Replacing a key's value (a `no-cache` request's answer) is no eviction.
        let present = (0..500).find(|i| l1.contains(&k(*i))).expect("some kept");
        l1.put_now(&k(present), v.clone(), Duration::from_secs(60));
        assert_eq!(l1.evictions(), 500 - held);
    }

    /// A large answer (an embeddings batch of several MB) is kept: shards
    /// are never so small that it would not fit in one.
    #[test]
    fn a_large_entry_fits_a_default_sized_cache() {
        let l1 = MemoryLevel::new(256 << 20);
        let big = Bytes::from(vec![b'e'; 8 << 20]);
        l1.put_now(&k(1), big.clone(), Duration::from_secs(60));
        assert_eq!(l1.get_now(&k(1)).expect("kept").value.len(), big.len());
    }

    /// An answer over a third of a shard is not kept in L1, so a one-off
    /// one near the shard's size no longer evicts the shard's other entries
    /// (here every other entry of the cache: it is one shard).
    #[test]
    fn an_answer_over_a_third_of_a_shard_leaves_the_shard_alone() {
        let l1 = MemoryLevel::new(32 << 20);
        let v = Bytes::from(vec![b's'; 1000]);
        let ttl = Duration::from_secs(60);
        for i in 0..100 {
            l1.put_now(&k(i), v.clone(), ttl);
        }
        let huge = Bytes::from(vec![b'e'; 24 << 20]);
        l1.put_now(&k(1000), huge, ttl);
        assert!(l1.get_now(&k(1000)).is_none(), "not kept in L1");
        let kept = (0..100).filter(|i| l1.contains(&k(*i))).count();
        assert_eq!(kept, 100, "the other entries stay");
        assert_eq!(l1.evictions(), 0);
        // A third of the shard still fits.
        let third = Bytes::from(vec![b'e'; 9 << 20]);
        l1.put_now(&k(1001), third, ttl);
        assert!(l1.get_now(&k(1001)).is_some(), "kept");
    }

    /// What TinyLFU gave: a one-off scan larger than the cache does not
    /// flush the entries that are read again and again.
    #[test]
    fn a_scan_does_not_flush_the_hot_entries() {
        const READS: usize = 2;
        let l1 = MemoryLevel::new(256 * 1024);
        let v = Bytes::from(vec![b'h'; 512]);
        let ttl = Duration::from_secs(60);
        // A full cache first (twice what it holds, each key once).
        for i in 10_000..10_600 {
            l1.put_now(&k(i), v.clone(), ttl);
        }
        // Fifty answers asked for again right after they were stored.
        let hot: Vec<CacheKey> = (0..50).map(k).collect();
        for key in &hot {
            l1.put_now(key, v.clone(), ttl);
            for _ in 0..READS {
                assert!(l1.get_now(key).is_some());
            }
        }
        // Ten times what the cache holds, each key once (an LRU or a FIFO
        // would keep none of the hot entries).
        for i in 1000..4000 {
            l1.put_now(&k(i), v.clone(), ttl);
        }
        let kept = hot.iter().filter(|key| l1.contains(key)).count();
        assert!(kept >= 45, "{kept} of 50 hot entries survived the scan");
    }

    #[test]
    fn expired_entries_are_freed_by_a_read_or_the_purge() {
        let l1 = MemoryLevel::new(1 << 20);
        let v = Bytes::from(vec![b'x'; 1000]);
        for i in 0..10 {
            l1.put_now(&k(i), v.clone(), Duration::from_millis(30));
        }
        l1.put_now(&k(99), v.clone(), Duration::from_secs(60));
        let full = l1.weighted_size();
        std::thread::sleep(Duration::from_millis(60));
        assert!(l1.get_now(&k(0)).is_none());
        assert_eq!(l1.entry_count(), 10, "the expired entry read is gone");
        assert_eq!(l1.purge_expired(), 9);
        assert_eq!(l1.entry_count(), 1);
        assert!(
            l1.weighted_size() * 10 < full,
            "{} of {full}",
            l1.weighted_size()
        );
        assert!(l1.get_now(&k(99)).is_some());
    }

    #[test]
    fn an_entry_does_not_keep_the_buffer_it_was_sliced_from_alive() {
        let l1 = MemoryLevel::new(1 << 20);
        let buffer = Bytes::from(vec![b'b'; 64 * 1024]);
        let body = buffer.slice(100..600);
        l1.put_now(&k(1), body.clone(), Duration::from_secs(60));
        let held = l1.get_now(&k(1)).unwrap().value;
        assert_eq!(held, body);
        let range = buffer.as_ptr_range();
        assert!(
            !range.contains(&held.as_ptr()),
            "L1 holds a slice of the 64 KiB buffer (500 bytes counted)"
        );
    }
}
