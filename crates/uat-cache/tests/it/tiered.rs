//! The tiered cache: promotion, write-through, canonical keys, namespaces,
//! invalidation across levels and replicas, single flight, faults.

use crate::*;
use bytes::Bytes;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use uat_cache::{CacheLevel, Flight, KeyPattern, Level, RedisLevel, SqlLevel, TieredCache};

fn tiered(l2: Option<RedisLevel>, l3: Option<SqlLevel>) -> TieredCache {
    let mut b = TieredCache::builder().l1(16 << 20);
    if let Some(l2) = l2 {
        b = b.l2(l2);
    }
    if let Some(l3) = l3 {
        b = b.l3(l3);
    }
    b.build()
}

async fn promotion(l3: SqlLevel) {
    let prefix = unique("promo");
    let Some(l2) = redis(&prefix).await else {
        return;
    };
    let ns = unique("promo-ns");
    let k = key(&ns, "m", 1);
    // Only L3 holds the entry.
    l3.put(&k, Bytes::from_static(b"answer"), Duration::from_secs(60))
        .await
        .unwrap();
    let a = tiered(Some(l2.clone()), Some(l3.clone()));
    let f = a.get(&k).await.unwrap();
    assert_eq!((f.level, f.value.as_ref()), (Level::L3, &b"answer"[..]));
    assert!(f.ttl > Duration::from_secs(50));
    // Promoted: L1 at once, L2 through the queue.
    assert!(a.l1().unwrap().contains(&k));
    flush(&a).await;
    assert!(l2.get(&k).await.unwrap().is_some(), "promoted to L2");
    assert_eq!(a.get(&k).await.unwrap().level, Level::L1);
    // A second replica (empty L1) finds it in L2 and promotes it to its L1.
    let b = tiered(Some(redis(&prefix).await.unwrap()), Some(l3.clone()));
    assert!(b.l2().unwrap().sync_presence(Duration::from_secs(5)).await);
    assert_eq!(b.get(&k).await.unwrap().level, Level::L2);
    assert_eq!(b.get(&k).await.unwrap().level, Level::L1);
}

#[tokio::test]
async fn promotion_l3_to_l2_to_l1_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    promotion(sqlite(&dir).await).await;
}

#[tokio::test]
async fn promotion_l3_to_l2_to_l1_postgres() {
    let Some(l3) = postgres().await else { return };
    promotion(l3).await;
}

#[tokio::test]
async fn put_writes_through_every_level() {
    let Some(l2) = redis(&unique("wt")).await else {
        return;
    };
    let Some(l3) = postgres().await else { return };
    let c = tiered(Some(l2.clone()), Some(l3.clone()));
    let k = key(&unique("wt-ns"), "m", 1);
    c.put(&k, Bytes::from_static(b"v"), Duration::from_secs(60));
    assert!(c.l1().unwrap().contains(&k));
    flush(&c).await;
    assert!(l2.get(&k).await.unwrap().is_some());
    assert!(l3.get(&k).await.unwrap().is_some());
}

/// A time to live past the clocks' range (a client's `x-uat-cache-ttl` of
/// 2^64 - 1 before the server refused it) is cut to `MAX_TTL` on every level.
/// It used to panic in L1's `Instant + Duration` and overflow L2's `EX`.
#[tokio::test]
async fn a_ttl_past_the_clocks_range_is_capped_on_every_level() {
    let Some(l2) = redis(&unique("maxttl")).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let l3 = sqlite(&dir).await;
    let c = tiered(Some(l2.clone()), Some(l3.clone()));
    let k = key(&unique("maxttl-ns"), "m", 1);
    c.put(&k, Bytes::from_static(b"v"), Duration::MAX);
    flush(&c).await;
    let max = uat_config::MAX_TTL;
    let near = |ttl: Duration| ttl <= max && ttl > max - Duration::from_secs(60);
    let h1 = c.get(&k).await.expect("in L1");
    assert!(near(h1.ttl), "L1 ttl {:?}", h1.ttl);
    let h2 = l2.get(&k).await.unwrap().expect("in L2");
    assert!(near(h2.ttl), "L2 ttl {:?}", h2.ttl);
    let h3 = l3.get(&k).await.unwrap().expect("in L3");
    assert!(near(h3.ttl), "L3 ttl {:?}", h3.ttl);
}

#[tokio::test]
async fn ttl_expiry_through_all_levels() {
    let Some(l2) = redis(&unique("ttl")).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let c = tiered(Some(l2), Some(sqlite(&dir).await));
    let k = key(&unique("ttl-ns"), "m", 1);
    c.put(&k, Bytes::from_static(b"v"), Duration::from_millis(900));
    flush(&c).await;
    assert!(c.get(&k).await.is_some());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        c.get(&k).await.is_none(),
        "expired in every level (L2 EX rounds up to 1 s)"
    );
}

#[tokio::test]
async fn canonical_keys_hit_on_reordered_json_and_miss_on_changed_temperature() {
    let Some(l2) = redis(&unique("canon")).await else {
        return;
    };
    let c = tiered(Some(l2), None);
    let ns = unique("canon-ns");
    let body: serde_json::Value = serde_json::from_str(
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"top_p":1}"#,
    )
    .unwrap();
    let reordered: serde_json::Value = serde_json::from_str(
        r#"{"top_p":1.0,"temperature":0,"stream":true,"user":"someone","messages":[{"content":"hi","role":"user"}],"model":"m"}"#,
    )
    .unwrap();
    let hotter = json!({"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.7,"top_p":1});
    let kind = uat_cache::RequestKind::Chat;
    c.put(
        &uat_cache::CacheKey::for_request(&ns, "m", kind, &body),
        Bytes::from_static(b"A"),
        Duration::from_secs(60),
    );
    assert_eq!(
        c.get(&uat_cache::CacheKey::for_request(
            &ns, "m", kind, &reordered
        ))
        .await
        .unwrap()
        .value,
        Bytes::from_static(b"A")
    );
    assert!(
        c.get(&uat_cache::CacheKey::for_request(&ns, "m", kind, &hotter))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn tenant_namespaces_never_cross() {
    let prefix = unique("ns");
    let Some(l2) = redis(&prefix).await else {
        return;
    };
    let Some(l3) = postgres().await else { return };
    let a = tiered(Some(l2.clone()), Some(l3.clone()));
    let (t1, t2) = (unique("tenant1"), unique("tenant2"));
    let body = json!({"messages":[{"role":"user","content":"secret"}],"temperature":0});
    let k1 = uat_cache::CacheKey::for_request(&t1, "m", uat_cache::RequestKind::Chat, &body);
    let k2 = uat_cache::CacheKey::for_request(&t2, "m", uat_cache::RequestKind::Chat, &body);
    assert_ne!(k1, k2);
    a.put(
        &k1,
        Bytes::from_static(b"tenant1 answer"),
        Duration::from_secs(60),
    );
    flush(&a).await;
    assert!(a.get(&k2).await.is_none());
    let b = tiered(Some(redis(&prefix).await.unwrap()), Some(l3));
    assert!(
        b.get(&k2).await.is_none(),
        "no level serves tenant1's entry to tenant2"
    );
    // Invalidating everything of tenant2 leaves tenant1 alone.
    assert_eq!(
        b.invalidate(&KeyPattern::new(&t2, "*").unwrap())
            .await
            .deleted,
        0
    );
    assert!(b.get(&k1).await.is_some());
}

async fn invalidation_every_level(l3: SqlLevel) {
    let Some(l2) = redis(&unique("inv")).await else {
        return;
    };
    let c = tiered(Some(l2.clone()), Some(l3.clone()));
    let ns = unique("inv-ns");
    let gone = [key(&ns, "gpt-4o", 1), key(&ns, "gpt-4o-mini", 2)];
    let kept = key(&ns, "claude-3", 3);
    for k in gone.iter().chain([&kept]) {
        c.put(k, Bytes::from_static(b"v"), Duration::from_secs(60));
    }
    // Invalidation flushes queued writes first, so nothing comes back.
    let done = c.invalidate(&KeyPattern::new(&ns, "gpt-*").unwrap()).await;
    assert_eq!(done.deleted, 2);
    assert!(done.is_complete(), "{done:?}");
    assert_eq!(
        done.succeeded().collect::<Vec<_>>(),
        [Level::L1, Level::L2, Level::L3]
    );
    for k in &gone {
        assert!(!c.l1().unwrap().contains(k));
        assert!(l2.get(k).await.unwrap().is_none());
        assert!(l3.get(k).await.unwrap().is_none());
        assert!(c.get(k).await.is_none());
    }
    assert!(c.l1().unwrap().contains(&kept));
    assert!(l2.get(&kept).await.unwrap().is_some());
    assert!(l3.get(&kept).await.unwrap().is_some());
    // By exact key.
    assert_eq!(c.delete(&kept).await.deleted, 1);
    assert!(c.get(&kept).await.is_none());
    let again = c.delete(&kept).await;
    assert_eq!(again.deleted, 0);
    assert!(again.is_complete(), "{again:?}");
}

/// An invalidation that could not reach a level says so. Before, a level
/// skipped while down (or failing) counted as zero deleted and the caller
/// was told the invalidation succeeded, while L2's entries stayed.
#[tokio::test]
async fn an_invalidation_that_skips_a_level_down_is_reported_incomplete() {
    let l2 = RedisLevel::connect(
        "redis://127.0.0.1:1/",
        "uat-test:closed:",
        Duration::from_millis(100),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let c = tiered(Some(l2), Some(sqlite(&dir).await));
    let ns = unique("down-ns");
    let k = key(&ns, "gpt-4o", 1);
    c.put(&k, Bytes::from_static(b"v"), Duration::from_secs(60));
    let done = c.invalidate(&KeyPattern::new(&ns, "*").unwrap()).await;
    assert!(!done.is_complete(), "{done:?}");
    assert_eq!(done.deleted, 1, "L1 and L3 deleted theirs");
    let failed: Vec<&str> = done.failed().map(|(part, _)| part).collect();
    assert_eq!(failed, ["l2", "pubsub"], "{done:?}");
    assert_eq!(done.succeeded().collect::<Vec<_>>(), [Level::L1, Level::L3]);
    let one = c.delete(&k).await;
    assert!(!one.is_complete(), "{one:?}");
    assert_eq!(one.deleted, 0);
    // Without L2 there is no one to tell and nothing to skip.
    let alone = tiered(None, None);
    alone.put(&k, Bytes::from_static(b"v"), Duration::from_secs(60));
    let done = alone.invalidate(&KeyPattern::new(&ns, "*").unwrap()).await;
    assert!(done.is_complete(), "{done:?}");
    assert_eq!(done.deleted, 1);
}

#[tokio::test]
async fn pattern_invalidation_every_level_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    invalidation_every_level(sqlite(&dir).await).await;
}

#[tokio::test]
async fn pattern_invalidation_every_level_postgres() {
    let Some(l3) = postgres().await else { return };
    invalidation_every_level(l3).await;
}

#[tokio::test]
async fn invalidation_reaches_other_replicas_l1_through_pubsub() {
    let prefix = unique("pubsub");
    let Some(l2a) = redis(&prefix).await else {
        return;
    };
    let a = tiered(Some(l2a), None);
    let b = tiered(Some(redis(&prefix).await.unwrap()), None);
    assert!(a.wait_subscribed(Duration::from_secs(5)).await);
    assert!(b.wait_subscribed(Duration::from_secs(5)).await);
    let ns = unique("pubsub-ns");
    let (k1, k2, k3) = (
        key(&ns, "gpt-4o", 1),
        key(&ns, "other", 2),
        key(&ns, "third", 3),
    );
    for k in [&k1, &k2, &k3] {
        a.put(k, Bytes::from_static(b"v"), Duration::from_secs(60));
        flush(&a).await;
        assert!(b.l2().unwrap().sync_presence(Duration::from_secs(5)).await);
        // B reads it (L2 hit) and now holds it in its own L1.
        assert_eq!(b.get(k).await.unwrap().level, Level::L2);
        assert!(b.l1().unwrap().contains(k));
    }
    a.invalidate(&KeyPattern::new(&ns, "gpt-*").unwrap()).await;
    let bl1 = b.l1().unwrap().clone();
    assert!(
        eventually(Duration::from_secs(3), || !bl1.contains(&k1)).await,
        "pattern reached B's L1"
    );
    assert!(bl1.contains(&k2) && bl1.contains(&k3));
    a.delete(&k2).await;
    assert!(
        eventually(Duration::from_secs(3), || !bl1.contains(&k2)).await,
        "key delete reached B's L1"
    );
    assert!(bl1.contains(&k3));
}

#[tokio::test]
async fn single_flight_makes_one_upstream_call() {
    let Some(l2) = redis(&unique("sf")).await else {
        return;
    };
    let c = tiered(Some(l2), None);
    let k = key(&unique("sf-ns"), "m", 1);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (c, k, calls) = (c.clone(), k.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            if let Some(f) = c.get(&k).await {
                return f.value;
            }
            match c.single_flight(&k, Duration::from_secs(10)).await {
                Flight::Leader(guard) => {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let v = Bytes::from_static(b"upstream answer");
                    c.put(&k, v.clone(), Duration::from_secs(60));
                    drop(guard);
                    v
                }
                Flight::Waited(_) => c.get(&k).await.expect("leader stored the answer").value,
            }
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Bytes::from_static(b"upstream answer"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(c.stats().await.singleflight_waiters >= 1);
}

/// With no L1 the leader's answer goes to its waiters with the flight: the
/// L2 write is still queued when they wake, so a lookup would miss and each
/// would go upstream too.
#[tokio::test]
async fn single_flight_without_l1_hands_the_answer_to_the_waiters() {
    let Some(l2) = redis(&unique("sf0")).await else {
        return;
    };
    let c = TieredCache::builder().l1(0).l2(l2).build();
    assert!(c.l1().is_none());
    let k = key(&unique("sf0-ns"), "m", 1);
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (c, k, calls) = (c.clone(), k.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            match c.single_flight(&k, Duration::from_secs(10)).await {
                Flight::Leader(guard) => {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let v = Bytes::from_static(b"upstream answer");
                    c.land(&guard, &k, v.clone(), Duration::from_secs(60));
                    drop(guard);
                    v
                }
                Flight::Waited(found) => {
                    let found = found.expect("the leader's answer came with the flight");
                    assert_eq!(found.level, Level::L2);
                    found.value
                }
            }
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Bytes::from_static(b"upstream answer"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failed_leader_releases_waiters() {
    let c = tiered(None, None);
    let k = key("sf-fail", "m", 1);
    let Flight::Leader(guard) = c.single_flight(&k, Duration::from_secs(10)).await else {
        panic!("first is leader")
    };
    let c2 = c.clone();
    let k2 = k.clone();
    let waiter = tokio::spawn(async move {
        matches!(
            c2.single_flight(&k2, Duration::from_secs(10)).await,
            Flight::Waited(None)
        )
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    drop(guard); // the leader failed and stored nothing
    assert!(waiter.await.unwrap());
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(c.get(&k).await.is_none());
    // The flight is over: the next caller leads again.
    assert!(matches!(
        c.single_flight(&k, Duration::from_secs(1)).await,
        Flight::Leader(_)
    ));
}

#[tokio::test]
async fn redis_down_never_fails_or_slows_requests() {
    let dir = tempfile::tempdir().unwrap();
    let l2 = RedisLevel::connect(
        "redis://127.0.0.1:1/",
        "uat-test:down:",
        Duration::from_millis(200),
    )
    .await
    .unwrap();
    let c = tiered(Some(l2), Some(sqlite(&dir).await));
    assert!(c.health().contains(&(Level::L2, false)));
    assert!(c.health().contains(&(Level::L3, true)));
    let ns = unique("down");
    let t = Instant::now();
    for i in 0..200 {
        let k = key(&ns, "m", i);
        assert!(c.get(&k).await.is_none());
        c.put(&k, Bytes::from_static(b"v"), Duration::from_secs(60));
        assert!(c.get(&k).await.is_some());
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    flush(&c).await;
    // L3 still took the writes; an empty L1 would be refilled from it.
    assert!(
        c.l3()
            .unwrap()
            .get(&key(&ns, "m", 7))
            .await
            .unwrap()
            .is_some()
    );
    let s = c.stats().await;
    assert!(!s.levels["l2"].healthy);
}

/// A queued write's time to live counts from when it was queued: after a
/// wait in the queue, what L3 stores lives only what is left of it, and a
/// write that expired in the queue is not written at all. The time it was
/// stored goes along unchanged, and so does an L3 hit's promoted to L2.
#[tokio::test]
async fn queued_writes_keep_their_deadline_and_stored_time() {
    let prefix = unique("queued");
    let Some(l2) = redis(&prefix).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let l3 = sqlite(&dir).await;
    let ns = unique("queued-ns");
    let c = TieredCache::builder()
        .l1(16 << 20)
        .l3(l3.clone())
        .l3_write_delay(Duration::from_secs(60))
        .build();
    let (long, short) = (key(&ns, "m", 1), key(&ns, "m", 2));
    let before = uat_cache::now_ms();
    c.put(&long, Bytes::from_static(b"v"), Duration::from_secs(3));
    c.put(&short, Bytes::from_static(b"v"), Duration::from_millis(600));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    c.flush(Duration::from_secs(5)).await;
    let hit = l3.get(&long).await.unwrap().expect("written");
    assert!(
        hit.ttl <= Duration::from_millis(2_050),
        "3 s less the second it waited: {:?}",
        hit.ttl
    );
    let stored = hit.stored_at.expect("timed");
    assert!(
        (before..=before + 500).contains(&stored),
        "{stored} vs {before}"
    );
    assert!(
        l3.get(&short).await.unwrap().is_none(),
        "expired in the queue: not written"
    );
    // An L3 hit promoted to L2 keeps the time it was first stored.
    let d = tiered(Some(l2.clone()), Some(l3.clone()));
    assert_eq!(d.get(&long).await.unwrap().stored_at, Some(stored));
    flush(&d).await;
    assert_eq!(
        l2.get(&long).await.unwrap().unwrap().stored_at,
        Some(stored)
    );
}

#[tokio::test]
async fn writes_are_gathered_per_level_and_a_flush_sends_them_at_once() {
    let prefix = unique("gather");
    let Some(l2) = redis(&prefix).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let l3 = sqlite(&dir).await;
    let ns = unique("gather-ns");
    // L2 sends at once, L3 gathers for a minute: each level has its own writer.
    let c = TieredCache::builder()
        .l1(16 << 20)
        .l2(l2.clone())
        .l3(l3.clone())
        .l2_write_delay(Duration::ZERO)
        .l3_write_delay(Duration::from_secs(60))
        .build();
    for i in 0..3 {
        c.put(
            &key(&ns, "m", i),
            Bytes::from_static(b"v"),
            Duration::from_secs(60),
        );
    }
    assert!(c.l1().unwrap().contains(&key(&ns, "m", 0)), "L1 at once");
    let mut in_l2 = false;
    for _ in 0..300 {
        if l2.get(&key(&ns, "m", 2)).await.unwrap().is_some() {
            in_l2 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(in_l2, "L2 written without waiting for L3's delay");
    assert_eq!(l3.count_rows(&ns).await.unwrap(), 0, "L3 still gathering");
    // Within the flush's own bound, far below the delay.
    c.flush(Duration::from_secs(5)).await;
    assert_eq!(
        l3.count_rows(&ns).await.unwrap(),
        3,
        "a flush ends the wait"
    );
    // With the default delays, writes arrive without a flush.
    let d = tiered(None, Some(l3.clone()));
    d.put(
        &key(&ns, "m", 9),
        Bytes::from_static(b"v"),
        Duration::from_secs(60),
    );
    let mut rows = 0;
    for _ in 0..300 {
        rows = l3.count_rows(&ns).await.unwrap();
        if rows == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rows, 4);
}

#[tokio::test]
async fn a_full_write_queue_drops_and_counts_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let c = TieredCache::builder()
        .l1(16 << 20)
        .l3(sqlite(&dir).await)
        .write_queue(2)
        .build();
    let t = Instant::now();
    for i in 0..2000 {
        c.put(
            &key("full", "m", i),
            Bytes::from(vec![b'x'; 100]),
            Duration::from_secs(60),
        );
    }
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "puts blocked: {:?}",
        t.elapsed()
    );
    let s = c.stats().await;
    assert!(s.dropped_writes > 0, "{s:?}");
    assert!(s.levels["l1"].entries == 2000);
}

#[tokio::test]
async fn stats_count_entries_hits_and_misses_per_level() {
    let Some(l2) = redis(&unique("stats")).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let c = tiered(Some(l2), Some(sqlite(&dir).await));
    let ns = unique("stats-ns");
    for i in 0..5 {
        c.put(
            &key(&ns, "m", i),
            Bytes::from(vec![b'y'; 50]),
            Duration::from_secs(60),
        );
    }
    flush(&c).await;
    assert!(c.get(&key(&ns, "m", 0)).await.is_some());
    assert!(c.get(&key(&ns, "m", 99)).await.is_none());
    let s = c.stats().await;
    assert_eq!(s.levels["l1"].entries, 5);
    assert_eq!(s.levels["l2"].entries, 5);
    assert_eq!(s.levels["l3"].entries, 5);
    assert!(s.levels["l3"].bytes >= 5 * 50);
    assert_eq!((s.levels["l1"].hits, s.levels["l1"].misses), (1, 1));
    assert_eq!((s.levels["l2"].hits, s.levels["l2"].misses), (0, 1));
    assert_eq!((s.levels["l3"].hits, s.levels["l3"].misses), (0, 1));
    assert!((s.levels["l1"].hit_rate - 0.5).abs() < 1e-9);
}

/// Sets a flag when the buffer it owns is freed.
struct Owned(Vec<u8>, Arc<AtomicUsize>);

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

/// A stored value is often a slice of a larger network buffer: neither L1
/// nor a write still queued for L3 (gathering for a minute here) may keep
/// that buffer alive, and the write still stores the right bytes.
#[tokio::test]
async fn queued_writes_do_not_keep_the_network_buffer_alive() {
    let dir = tempfile::tempdir().unwrap();
    let l3 = sqlite(&dir).await;
    let ns = unique("buffer-ns");
    let c = TieredCache::builder()
        .l1(16 << 20)
        .l3(l3.clone())
        .l3_write_delay(Duration::from_secs(60))
        .build();
    let freed = Arc::new(AtomicUsize::new(0));
    let mut raw = vec![b'x'; 64 * 1024];
    raw[100..106].copy_from_slice(b"answer");
    let buffer = Bytes::from_owner(Owned(raw, freed.clone()));
    let k = key(&ns, "m", 1);
    c.put(&k, buffer.slice(100..106), Duration::from_secs(60));
    drop(buffer);
    assert_eq!(
        freed.load(Ordering::SeqCst),
        1,
        "the 64 KiB buffer was freed while its write is queued"
    );
    assert_eq!(l3.count_rows(&ns).await.unwrap(), 0, "still queued");
    flush(&c).await;
    assert_eq!(
        l3.get(&k).await.unwrap().unwrap().value,
        Bytes::from_static(b"answer")
    );
}
