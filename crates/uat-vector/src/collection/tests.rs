use super::*;
use crate::types::SearchRequest;

fn pt(i: u64) -> Point {
    Point {
        id: PointId::Num(i),
        vector: vec![i as f32, 1.0],
        payload: None,
    }
}

fn poisoned<T: std::fmt::Debug>(r: Result<T>) -> bool {
    matches!(r, Err(VectorError::WalPoisoned { .. }))
}

/// An upsert whose WAL fsync fails is reported as failed and must stay
/// failed: not applied now, not replayed after a restart (it was, and the
/// next write reused its seq), and no later write, flush or snapshot goes on
/// a WAL whose fsync failed until the collection is reopened. Reads and
/// searches keep working meanwhile.
#[test]
fn upsert_whose_fsync_fails_is_not_applied_nor_replayed_and_writes_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c");
    let config = CollectionConfig::new(2, Metric::L2);
    let c = Collection::create(&path, "c", config, FsyncPolicy::Always).expect("create");
    c.upsert(vec![pt(1)]).expect("upsert 1");

    c.fail_wal_syncs(true);
    let err = c.upsert(vec![pt(2)]).expect_err("its fsync failed");
    assert!(
        err.to_string()
            .contains("the WAL of collection \"c\" failed to sync"),
        "{err}"
    );
    assert!(!err.is_bad_request(), "ours: a 500");
    assert_eq!(c.count(), 1);
    assert!(c.get(&PointId::Num(2)).is_err());

    c.fail_wal_syncs(false);
    assert!(poisoned(c.upsert(vec![pt(3)])));
    assert!(poisoned(c.delete(vec![PointId::Num(1)])));
    assert!(poisoned(c.flush()));
    assert!(poisoned(c.snapshot()));
    assert!(poisoned(c.compact()));
    assert_eq!(c.snapshot_if_wal_over(1, 0.0).expect("skipped"), None);
    assert!(!path.join("snapshot.bin").exists());
    assert_eq!(
        c.get(&PointId::Num(1)).expect("reads work").vector,
        [1.0, 1.0]
    );
    let hits = c
        .search(&SearchRequest::new(vec![1.0, 1.0], 5))
        .expect("searches work");
    assert_eq!(hits.len(), 1);
    drop(c);

    let c = Collection::open(&path, "c", FsyncPolicy::Always).expect("reopen");
    assert_eq!(
        c.ids(),
        [PointId::Num(1)],
        "the failed upsert is not replayed"
    );
    c.upsert(vec![pt(3)]).expect("writes work again");
    c.delete(vec![PointId::Num(1)]).expect("delete");
    drop(c);
    let c = Collection::open(&path, "c", FsyncPolicy::Always).expect("reopen 2");
    assert_eq!(c.ids(), [PointId::Num(3)]);
    c.snapshot().expect("snapshot");
}

/// An upsert links its points into the graph before it indexes their
/// payloads; a search in between resolved a `must_not` from the payload
/// index alone, which holds nothing for those points, and returned them.
/// Driven step by step: a point linked but not indexed, then searches.
#[test]
fn must_not_excludes_points_linked_but_not_yet_indexed() {
    use crate::types::PayloadIndexKind;
    use serde_json::json;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = CollectionConfig::new(2, Metric::L2);
    config
        .payload_indexes
        .insert("k".into(), PayloadIndexKind::Keyword);
    let c =
        Collection::create(&dir.path().join("c"), "c", config, FsyncPolicy::Never).expect("create");
    let ok = (1..=10)
        .map(|i| Point {
            payload: Some(json!({"k": "ok"})),
            ..pt(i)
        })
        .collect();
    c.upsert(ok).expect("upsert");
    // The first half of `apply_upsert`: in the graph, not in the index.
    c.state.read().hnsw.insert(
        PointId::Num(99),
        vec![0.0, 1.0].into_boxed_slice(),
        Some(json!({"k": "bad"})),
    );
    let search = |filter: serde_json::Value| {
        let mut req = SearchRequest::new(vec![0.0, 1.0], 20);
        req.filter = Some(Filter::from_json(&filter).expect("filter"));
        let hits = c.search(&req).expect("search");
        let mut ids: Vec<PointId> = hits.into_iter().map(|h| h.id).collect();
        ids.sort_by_key(|id| format!("{id:?}"));
        ids
    };
    let not_bad = search(json!({"must_not": [{"key": "k", "match": {"value": "bad"}}]}));
    assert_eq!(not_bad.len(), 10, "{not_bad:?}");
    assert!(!not_bad.contains(&PointId::Num(99)), "{not_bad:?}");
    let bad = search(json!({"must": [{"key": "k", "match": {"value": "bad"}}]}));
    assert_eq!(bad, [PointId::Num(99)]);
}

/// The snapshot's rename is durable only once its folder is fsynced; that
/// fsync's error was ignored and the WAL emptied anyway, so a power cut
/// could leave the old snapshot and an empty WAL. The snapshot must fail
/// and the WAL keep its records.
#[test]
fn snapshot_whose_folder_fsync_fails_fails_and_keeps_the_wal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c");
    let config = CollectionConfig::new(2, Metric::L2);
    let c = Collection::create(&path, "c", config, FsyncPolicy::Always).expect("create");
    c.upsert(vec![pt(1), pt(2)]).expect("upsert");
    let before = c.wal.lock().bytes();
    durable::fail_sync_dir(true);
    let snap = c.snapshot();
    durable::fail_sync_dir(false);
    assert!(snap.is_err(), "the folder fsync failed");
    assert_eq!(c.wal.lock().bytes(), before, "the WAL is not emptied");
    c.upsert(vec![pt(3)]).expect("writes go on");
    drop(c);
    let c = Collection::open(&path, "c", FsyncPolicy::Always).expect("reopen");
    let mut ids = c.ids();
    ids.sort_by_key(|id| format!("{id:?}"));
    assert_eq!(ids, [PointId::Num(1), PointId::Num(2), PointId::Num(3)]);
}

/// A delete's WAL record is a few bytes, so the automatic snapshot, which
/// looked at the WAL's size alone, never ran for a collection emptied by
/// deletes: its tombstones were never reclaimed. Once they outnumber the
/// live points (and number at least the floor) it snapshots and compacts.
#[test]
fn automatic_snapshot_compacts_a_mostly_deleted_collection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = CollectionConfig::new(2, Metric::L2);
    let c =
        Collection::create(&dir.path().join("c"), "c", config, FsyncPolicy::Never).expect("create");
    let n = AUTO_COMPACT_MIN_DELETED as u64;
    c.upsert((0..n + 1).map(pt).collect()).expect("upsert");
    c.delete((1..n).map(PointId::Num).collect())
        .expect("delete");
    assert_eq!(
        c.snapshot_if_wal_over(u64::MAX, 0.0).expect("checked"),
        None,
        "fewer tombstones than the floor"
    );
    c.delete(vec![PointId::Num(n)]).expect("delete");
    assert!(
        c.snapshot_if_wal_over(u64::MAX, 0.0)
            .expect("snapshotted")
            .is_some(),
        "tombstones outnumber live points"
    );
    let info = c.info();
    assert_eq!((info.count, info.deleted), (1, 0), "compacted");
    assert_eq!(c.wal.lock().bytes(), 0, "the WAL is emptied");
    assert_eq!(
        c.snapshot_if_wal_over(u64::MAX, 0.0).expect("checked"),
        None
    );
}

/// Snapshots are written and read as a stream (checksummed as they go,
/// never whole in memory): one read back whole opens, a damaged one (a
/// flipped byte, cut short, bytes added) is refused, never half loaded.
#[test]
fn streamed_snapshot_round_trips_and_a_damaged_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c");
    let config = CollectionConfig::new(2, Metric::L2);
    let c = Collection::create(&path, "c", config, FsyncPolicy::Never).expect("create");
    let points = (0..200)
        .map(|i| Point {
            payload: Some(serde_json::json!({"i": i})),
            ..pt(i)
        })
        .collect();
    c.upsert(points).expect("upsert");
    c.delete(vec![PointId::Num(7)]).expect("delete");
    c.snapshot().expect("snapshot");
    drop(c);
    let c = Collection::open(&path, "c", FsyncPolicy::Never).expect("reopen");
    assert_eq!(c.count(), 199);
    assert_eq!(
        c.get(&PointId::Num(42)).expect("get").payload,
        Some(serde_json::json!({"i": 42}))
    );
    drop(c);

    let snap = path.join("snapshot.bin");
    let good = std::fs::read(&snap).expect("read");
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    let cut = good[..good.len() - 10].to_vec();
    let longer = [good.as_slice(), &[1, 2, 3]].concat();
    for (what, data) in [("flipped", flipped), ("cut", cut), ("longer", longer)] {
        std::fs::write(&snap, data).expect("write");
        let opened = Collection::open(&path, "c", FsyncPolicy::Never);
        assert!(
            matches!(opened, Err(VectorError::Corrupt { .. })),
            "{what}: {:?}",
            opened.err()
        );
    }
}
