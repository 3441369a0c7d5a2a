//! L1: the in-process level, a moka cache bounded in bytes (weigher) with
//! TinyLFU admission and a time to live per entry.

use crate::error::CacheError;
use crate::key::{BuildKeyHasher, CacheKey, KeyPattern};
use crate::level::{CacheLevel, Counters, Hit, Level, LevelStats};
use crate::metrics::{L1, METRICS, OpTimer};
use bytes::Bytes;
use moka::notification::RemovalCause;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-entry bookkeeping counted into the weight besides key and value:
/// moka's entry, its queue and timer nodes, the key's allocation and our
/// `Entry`, with the allocator's rounding. Measured: resident memory grew
/// 855 bytes per entry while 58,600 entries of 494 weighted bytes (at 96
/// here) were added, so `max_bytes` bounds what L1 really holds.
const ENTRY_OVERHEAD: usize = 456;

#[derive(Clone)]
struct Entry {
    value: Bytes,
    expires_at: Instant,
    ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<CacheKey, Entry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Entry,
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Entry,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The L1 level.
#[derive(Clone)]
pub struct MemoryLevel {
    cache: moka::sync::Cache<CacheKey, Entry, BuildKeyHasher>,
    counters: Arc<Counters>,
}

impl MemoryLevel {
    /// A cache holding at most `max_bytes` (keys, values and a fixed per-entry overhead).
    pub fn new(max_bytes: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &CacheKey, v: &Entry| -> u32 {
                u32::try_from(k.as_str().len() + v.value.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .eviction_listener(|_k, _v, cause| {
                if cause == RemovalCause::Size {
                    METRICS.evictions.with_label_values(&["l1"]).inc();
                }
            })
            .build_with_hasher(BuildKeyHasher::default());
        MemoryLevel {
            cache,
            counters: Arc::new(Counters::default()),
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
                })
            }
            _ => {
                self.counters.miss();
                m.miss.inc();
                None
            }
        };
        m.get_seconds.observe(now.elapsed().as_secs_f64());
        out
    }

    /// Synchronous insert.
    pub fn put_now(&self, key: &CacheKey, value: Bytes, ttl: Duration) {
        // A copy of exactly its bytes: a body read from the network is often
        // a slice of a larger buffer (a socket read, a gzip decoder's output)
        // that the slice would keep alive, uncounted by the weigher (seen:
        // 4.7 KB resident per 500-byte entry).
        self.put_exact(key, Bytes::copy_from_slice(&value), ttl);
    }

    /// [`MemoryLevel::put_now`] of a value that owns exactly its bytes
    /// (the caller made the copy).
    pub(crate) fn put_exact(&self, key: &CacheKey, value: Bytes, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        // `now + ttl` panics past the clock's range.
        let ttl = ttl.min(uat_config::MAX_TTL);
        let m = &*L1;
        let now = Instant::now();
        self.cache.insert(
            key.clone(),
            Entry {
                value,
                expires_at: now + ttl,
                ttl,
            },
        );
        m.write_ok.inc();
        m.bytes
            .set(i64::try_from(self.cache.weighted_size()).unwrap_or(i64::MAX));
        m.put_seconds.observe(now.elapsed().as_secs_f64());
    }

    /// True when the key is present and live (no counters touched).
    pub fn contains(&self, key: &CacheKey) -> bool {
        self.cache
            .get(key)
            .is_some_and(|e| e.expires_at > Instant::now())
    }

    /// Removes one key.
    pub fn remove(&self, key: &CacheKey) -> u64 {
        u64::from(self.cache.remove(key).is_some())
    }

    /// Removes every key matching the pattern, by iteration.
    pub fn remove_matching(&self, pattern: &KeyPattern) -> u64 {
        let _t = OpTimer::start("l1", "invalidate");
        let mut n = 0;
        let doomed: Vec<Arc<CacheKey>> = self
            .cache
            .iter()
            .filter(|(k, _)| pattern.matches(k))
            .map(|(k, _)| k)
            .collect();
        for k in doomed {
            if self.cache.remove(&*k).is_some() {
                n += 1;
            }
        }
        n
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// Applies pending maintenance (evictions, expirations); used before stats.
    pub fn sync(&self) {
        self.cache.run_pending_tasks();
    }
}

impl CacheLevel for MemoryLevel {
    fn level(&self) -> Level {
        Level::L1
    }

    async fn get(&self, key: &CacheKey) -> Result<Option<Hit>, CacheError> {
        Ok(self.get_now(key))
    }

    async fn put(&self, key: &CacheKey, value: Bytes, ttl: Duration) -> Result<(), CacheError> {
        self.put_now(key, value, ttl);
        Ok(())
    }

    async fn delete(&self, key: &CacheKey) -> Result<u64, CacheError> {
        Ok(self.remove(key))
    }

    async fn invalidate_pattern(&self, pattern: &KeyPattern) -> Result<u64, CacheError> {
        Ok(self.remove_matching(pattern))
    }

    async fn stats(&self) -> Result<LevelStats, CacheError> {
        self.sync();
        let mut s = LevelStats {
            entries: self.cache.entry_count(),
            bytes: self.cache.weighted_size(),
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
    fn the_byte_bound_holds() {
        let l1 = MemoryLevel::new(64 * 1024);
        let v = Bytes::from(vec![b'x'; 1024]);
        for i in 0..500 {
            l1.put_now(&k(i), v.clone(), Duration::from_secs(60));
        }
        l1.sync();
        assert!(
            l1.cache.weighted_size() <= 64 * 1024,
            "{}",
            l1.cache.weighted_size()
        );
        assert!(l1.cache.entry_count() < 500);
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
