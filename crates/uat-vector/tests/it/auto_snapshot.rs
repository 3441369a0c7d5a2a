//! Automatic snapshots: the store snapshots a collection by itself once its
//! WAL passes `StoreOptions::snapshot_wal_bytes`.

use super::*;
use std::path::Path;
use std::time::{Duration, Instant};

const THRESHOLD: u64 = 4096;

fn opts(snapshot_wal_bytes: u64) -> StoreOptions {
    StoreOptions {
        fsync: FsyncPolicy::Never,
        snapshot_wal_bytes,
        snapshot_check_interval: Duration::from_millis(20),
        // Every check past the size: these tests count on repeated snapshots.
        snapshot_wal_ratio: 0.0,
    }
}

fn wal_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("wal.log")).unwrap().len()
}

/// Waits up to 10 s for `done`.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

#[test]
fn wal_past_snapshot_wal_bytes_is_snapshotted_without_being_asked() {
    let dir = tempfile::tempdir().unwrap();
    let vs = uniform(300, 8, 11);
    let coll_dir = dir.path().join("auto");
    {
        let s = VectorStore::open(dir.path(), opts(THRESHOLD)).unwrap();
        let c = s.create_collection("auto", config(8, Metric::L2)).unwrap();
        let all = points(&vs);
        for chunk in all[..250].chunks(10) {
            c.upsert(chunk.to_vec()).unwrap();
        }
        c.delete((0..20).map(PointId::Num).collect()).unwrap();
        assert!(
            eventually(|| coll_dir.join("snapshot.bin").is_file() && wal_len(&coll_dir) < THRESHOLD),
            "no automatic snapshot: WAL at {} bytes",
            wal_len(&coll_dir)
        );
        // A tail under the threshold stays in the WAL, replayed at the next open.
        c.upsert(all[250..].to_vec()).unwrap();
        assert!(wal_len(&coll_dir) > 0);
        assert_eq!(c.count(), 280);
    }
    let s = VectorStore::open(dir.path(), opts(0)).unwrap();
    let c = s.get("auto").unwrap();
    assert_eq!(c.count(), 280);
    for i in 0..300u64 {
        let got = c.get(&PointId::Num(i));
        if i < 20 {
            assert!(got.is_err(), "deleted point {i} came back");
        } else {
            let p = got.unwrap();
            assert_eq!(p.vector, vs[i as usize], "point {i}");
            assert_eq!(p.payload.unwrap()["i"], i);
        }
    }
}

#[test]
fn zero_snapshot_wal_bytes_never_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let s = VectorStore::open(dir.path(), opts(0)).unwrap();
    let c = s
        .create_collection("manual", config(8, Metric::L2))
        .unwrap();
    for chunk in points(&uniform(200, 8, 12)).chunks(10) {
        c.upsert(chunk.to_vec()).unwrap();
    }
    let coll_dir = dir.path().join("manual");
    let before = wal_len(&coll_dir);
    assert!(before > THRESHOLD);
    // Fifteen check intervals and more.
    std::thread::sleep(Duration::from_millis(400));
    assert!(!coll_dir.join("snapshot.bin").exists());
    assert_eq!(wal_len(&coll_dir), before);
    c.snapshot().unwrap();
    assert_eq!(wal_len(&coll_dir), 0);
}

/// A collection dropped while the snapshot thread is partway through its
/// round is never snapshotted into the folder of a new collection of the same
/// name. Collections that sort before it (each snapshot costs a few fsyncs)
/// hold the thread long enough for the drop and the re-create to happen
/// between its listing the old collection and reaching it.
#[test]
fn automatic_snapshots_never_write_a_dropped_collection_into_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        snapshot_check_interval: Duration::from_millis(10),
        ..opts(1)
    };
    let others: Vec<String> = (0..8).map(|i| format!("a{i}")).collect();
    let churn = dir.path().join("churn");
    {
        let s = VectorStore::open(dir.path(), o).unwrap();
        let cs: Vec<Arc<Collection>> = others
            .iter()
            .map(|n| s.create_collection(n, config(8, Metric::L2)).unwrap())
            .collect();
        for c in &cs {
            c.upsert(points(&uniform(200, 8, 1))).unwrap();
        }
        for round in 0..10u64 {
            let old = s.create_collection("churn", config(4, Metric::L2)).unwrap();
            for c in &cs {
                c.upsert(points(&uniform(1, 8, round))).unwrap();
            }
            old.upsert(points(&uniform(20, 4, round))).unwrap();
            drop(old);
            // The thread is in its round: a0 done, a1.. and then churn to go.
            assert!(eventually(|| wal_len(&dir.path().join("a0")) == 0));
            s.drop_collection("churn").unwrap();
            s.create_collection("churn", config(6, Metric::L2)).unwrap();
            assert!(eventually(|| others
                .iter()
                .all(|n| wal_len(&dir.path().join(n)) == 0)));
            // One more round, for a thread that was still holding the old one.
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                !churn.join("snapshot.bin").exists(),
                "round {round}: the dropped collection was snapshotted into its successor"
            );
            s.drop_collection("churn").unwrap();
        }
        s.create_collection("churn", config(6, Metric::L2)).unwrap();
    }
    let s = VectorStore::open(dir.path(), opts(0)).unwrap();
    let c = s.get("churn").unwrap();
    assert_eq!((c.config().dimension, c.count()), (6, 0));
    assert_eq!(s.get("a3").unwrap().count(), 200);
}

/// A collection whose last snapshot is large waits until its WAL is the
/// given part of that snapshot before the next automatic one (a snapshot
/// rewrites the whole collection), not every `snapshot_wal_bytes`.
#[test]
fn a_large_collection_waits_for_its_wal_to_grow_by_the_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        snapshot_wal_ratio: 0.5,
        ..opts(1)
    };
    let s = VectorStore::open(dir.path(), o).unwrap();
    let c = s.create_collection("big", config(8, Metric::L2)).unwrap();
    c.upsert(points(&uniform(400, 8, 1))).unwrap();
    let cdir = dir.path().join("big");
    assert!(eventually(|| wal_len(&cdir) == 0), "first snapshot");
    let snap = std::fs::metadata(cdir.join("snapshot.bin")).unwrap().len();
    // A few points: past snapshot_wal_bytes (1), far below half the snapshot.
    c.upsert(points(&uniform(5, 8, 2))).unwrap();
    let small = wal_len(&cdir);
    assert!(small > 0 && (small as f64) < snap as f64 * 0.5);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(wal_len(&cdir), small, "no snapshot for a small WAL");
    // Rewriting every point: now past half the snapshot.
    c.upsert(points(&uniform(400, 8, 3))).unwrap();
    assert!(eventually(|| wal_len(&cdir) == 0), "snapshotted once grown");
}
