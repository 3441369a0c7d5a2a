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
