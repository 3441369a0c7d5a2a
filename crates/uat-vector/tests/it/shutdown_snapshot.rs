//! Shutdown snapshots: `VectorStore::snapshot_dirty` snapshots the
//! collections whose WAL holds records, leaves the clean ones alone, stops
//! at its deadline and loses nothing when a snapshot fails.

use super::*;
use std::path::Path;
use std::time::{Duration, Instant};
use uat_vector::{CollectionSnapshot, SnapshotOutcome};

/// No automatic snapshots: only the shutdown ones are taken.
fn opts() -> StoreOptions {
    StoreOptions {
        fsync: FsyncPolicy::Never,
        snapshot_wal_bytes: 0,
        ..StoreOptions::default()
    }
}

fn wal_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("wal.log")).unwrap().len()
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// Every live point of `c`, sorted by id (compared before and after a reopen).
fn contents(c: &Collection) -> Vec<Point> {
    let mut all: Vec<Point> = c.ids().iter().map(|id| c.get(id).unwrap()).collect();
    all.sort_by_key(|p| p.id.to_string());
    all
}

/// The outcomes by name, as labels.
fn labels(report: &[CollectionSnapshot]) -> Vec<(&str, &str)> {
    report
        .iter()
        .map(|r| (r.name.as_str(), r.outcome.label()))
        .collect()
}

/// A collection with upserts and deletes in its WAL (on top of an older
/// snapshot) is snapshotted; the WAL is empty on disk, the reopened
/// collection has nothing to replay and holds the same points.
#[test]
fn a_dirty_collection_is_snapshotted_and_reopens_with_nothing_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let cdir = dir.path().join("dirty");
    let vs = uniform(300, 8, 21);
    let before = {
        let s = VectorStore::open(dir.path(), opts()).unwrap();
        let c = s.create_collection("dirty", config(8, Metric::L2)).unwrap();
        c.upsert(points(&vs[..100])).unwrap();
        c.snapshot().unwrap();
        c.upsert(points(&vs)).unwrap();
        c.delete((0..30).map(PointId::Num).collect()).unwrap();
        let wal = c.wal_bytes();
        assert!(wal > 0 && wal == wal_len(&cdir));
        let report = s.snapshot_dirty(far());
        assert_eq!(labels(&report), [("dirty", "ok")]);
        assert!(
            matches!(report[0].outcome, SnapshotOutcome::Snapshotted { wal_bytes, .. } if wal_bytes == wal),
            "{report:?}"
        );
        assert_eq!(wal_len(&cdir), 0);
        assert_eq!(c.wal_bytes(), 0);
        contents(&c)
    };
    assert_eq!(before.len(), 270);
    let s = VectorStore::open(dir.path(), opts()).unwrap();
    let c = s.get("dirty").unwrap();
    assert_eq!(c.wal_bytes(), 0, "nothing to replay");
    assert_eq!(contents(&c), before);
    // And nothing left to do at the next shutdown.
    assert_eq!(labels(&s.snapshot_dirty(far())), [("dirty", "clean")]);
}

/// A collection with nothing past its snapshot, or never written, is not
/// rewritten: its snapshot file keeps its inode and mtime (a rewrite
/// renames a new file over it), and none is created for the empty one.
#[test]
fn a_clean_collection_is_not_rewritten() {
    let (dir, s) = store();
    let snapped = s
        .create_collection("snapped", config(8, Metric::L2))
        .unwrap();
    snapped.upsert(points(&uniform(50, 8, 22))).unwrap();
    snapped.snapshot().unwrap();
    s.create_collection("empty", config(8, Metric::L2)).unwrap();
    let dirty = s
        .create_collection("written", config(8, Metric::L2))
        .unwrap();
    dirty.upsert(points(&uniform(5, 8, 23))).unwrap();
    let snap = dir.path().join("snapped").join("snapshot.bin");
    let meta = std::fs::metadata(&snap).unwrap();
    // A rewrite within the mtime's granularity would keep it: wait past it.
    std::thread::sleep(Duration::from_millis(20));
    let report = s.snapshot_dirty(far());
    assert_eq!(
        labels(&report),
        [("empty", "clean"), ("snapped", "clean"), ("written", "ok")]
    );
    let after = std::fs::metadata(&snap).unwrap();
    assert_eq!(after.modified().unwrap(), meta.modified().unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(after.ino(), meta.ino(), "snapshot.bin was replaced");
    }
    assert!(!dir.path().join("empty").join("snapshot.bin").exists());
    assert!(dir.path().join("written").join("snapshot.bin").is_file());
}

/// A deadline already passed starts no snapshot: the dirty collections are
/// not reached (the clean one is reported clean), no file is written, the
/// WALs are as they were and the data reopens whole.
#[test]
fn an_expired_deadline_snapshots_nothing_and_keeps_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["a", "b"];
    let (wals, before) = {
        let s = VectorStore::open(dir.path(), opts()).unwrap();
        s.create_collection("clean", config(8, Metric::L2)).unwrap();
        for (i, name) in names.iter().enumerate() {
            let c = s.create_collection(name, config(8, Metric::L2)).unwrap();
            c.upsert(points(&uniform(80, 8, 30 + i as u64))).unwrap();
        }
        let wals: Vec<u64> = names.iter().map(|n| wal_len(&dir.path().join(n))).collect();
        let before: Vec<Vec<Point>> = names.iter().map(|n| contents(&s.get(n).unwrap())).collect();
        let report = s.snapshot_dirty(Instant::now());
        assert_eq!(
            labels(&report),
            [
                ("a", "not_reached"),
                ("b", "not_reached"),
                ("clean", "clean")
            ]
        );
        (wals, before)
    };
    for ((name, wal), points) in names.iter().zip(&wals).zip(&before) {
        let cdir = dir.path().join(name);
        assert!(*wal > 0);
        assert_eq!(wal_len(&cdir), *wal, "{name}: WAL changed");
        assert!(!cdir.join("snapshot.bin").exists(), "{name}: snapshotted");
        assert!(
            !cdir.join("snapshot.tmp").exists(),
            "{name}: snapshot begun"
        );
        let s = VectorStore::open(dir.path(), opts()).unwrap();
        let c = s.get(name).unwrap();
        assert_eq!(c.wal_bytes(), *wal);
        assert_eq!(&contents(&c), points, "{name}");
    }
}

/// A collection whose snapshot cannot be written (a folder sits where its
/// temporary file goes) is reported failed, its last snapshot and its WAL
/// untouched; the collections after it are still snapshotted, and every
/// point of every collection is there after a reopen.
#[test]
fn a_snapshot_that_fails_leaves_the_others_snapshotted_and_its_data_intact() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c"];
    let bdir = dir.path().join("b");
    let (b_snap, b_wal, before) = {
        let s = VectorStore::open(dir.path(), opts()).unwrap();
        for (i, name) in names.iter().enumerate() {
            let c = s.create_collection(name, config(8, Metric::L2)).unwrap();
            let vs = uniform(120, 8, 40 + i as u64);
            c.upsert(points(&vs[..60])).unwrap();
            c.snapshot().unwrap();
            c.upsert(points(&vs)).unwrap();
            c.delete(vec![PointId::Num(7)]).unwrap();
        }
        std::fs::create_dir(bdir.join("snapshot.tmp")).unwrap();
        let b_snap = std::fs::read(bdir.join("snapshot.bin")).unwrap();
        let b_wal = std::fs::read(bdir.join("wal.log")).unwrap();
        let before: Vec<Vec<Point>> = names.iter().map(|n| contents(&s.get(n).unwrap())).collect();
        let report = s.snapshot_dirty(far());
        assert_eq!(labels(&report), [("a", "ok"), ("b", "error"), ("c", "ok")]);
        assert!(
            matches!(&report[1].outcome, SnapshotOutcome::Failed(e) if e.to_string().contains("snapshot.tmp")),
            "{report:?}"
        );
        (b_snap, b_wal, before)
    };
    assert_eq!(std::fs::read(bdir.join("snapshot.bin")).unwrap(), b_snap);
    assert_eq!(std::fs::read(bdir.join("wal.log")).unwrap(), b_wal);
    let s = VectorStore::open(dir.path(), opts()).unwrap();
    for (name, points) in names.iter().zip(&before) {
        let c = s.get(name).unwrap();
        assert_eq!(points.len(), 119);
        assert_eq!(&contents(&c), points, "{name}");
        let replay = if *name == "b" { b_wal.len() as u64 } else { 0 };
        assert_eq!(c.wal_bytes(), replay, "{name}");
    }
}
