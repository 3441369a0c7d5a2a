//! Snapshots, WAL replay, torn tails, compaction.

use super::*;
use std::io::Write;
use uat_vector::{Quantization, SearchRequest};

fn ranked(c: &Collection, q: &[f32]) -> Vec<(PointId, f32)> {
    c.search(&SearchRequest::new(q.to_vec(), 10))
        .unwrap()
        .into_iter()
        .map(|p| (p.id, p.score))
        .collect()
}

#[test]
fn snapshot_round_trip_keeps_points_payloads_graph_and_results() {
    for quant in [Quantization::None, Quantization::Sq8, Quantization::Binary] {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            fsync: FsyncPolicy::Always,
            ..StoreOptions::default()
        };
        let vs = vectors(600, 16, 3);
        let queries = vectors(20, 16, 4);
        let before: Vec<Vec<(PointId, f32)>>;
        {
            let s = VectorStore::open(dir.path(), opts).unwrap();
            let mut cfg = config(16, Metric::Cosine);
            cfg.quantization = quant;
            let c = s.create_collection("snap", cfg).unwrap();
            c.upsert(points(&vs)).unwrap();
            c.delete((0..50).map(PointId::Num).collect()).unwrap();
            c.snapshot().unwrap();
            // Written after the snapshot: must come back from the WAL tail.
            c.upsert(vec![Point {
                id: PointId::Num(5000),
                vector: vs[0].clone(),
                payload: None,
            }])
            .unwrap();
            c.delete(vec![PointId::Num(60)]).unwrap();
            before = queries.iter().map(|q| ranked(&c, q)).collect();
            assert_eq!(c.count(), 600 - 50 + 1 - 1);
        }
        let s = VectorStore::open(dir.path(), opts).unwrap();
        let c = s.get("snap").unwrap();
        assert_eq!(c.count(), 550, "{quant:?}");
        assert_eq!(c.config().quantization, quant);
        let after: Vec<Vec<(PointId, f32)>> = queries.iter().map(|q| ranked(&c, q)).collect();
        assert_eq!(before, after, "{quant:?}: results differ after reload");
        assert!(c.get(&PointId::Num(10)).is_err());
        assert!(c.get(&PointId::Num(60)).is_err());
        let p = c.get(&PointId::Num(100)).unwrap();
        assert_eq!(p.payload.as_ref().unwrap()["i"], 100);
        assert!(c.get(&PointId::Num(5000)).is_ok());
    }
}

#[test]
fn torn_wal_tail_is_dropped_and_earlier_writes_survive() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        fsync: FsyncPolicy::Always,
        ..StoreOptions::default()
    };
    let vs = uniform(30, 8, 5);
    {
        let s = VectorStore::open(dir.path(), opts).unwrap();
        let c = s.create_collection("t", config(8, Metric::L2)).unwrap();
        for p in points(&vs) {
            c.upsert(vec![p]).unwrap();
        }
    }
    let wal = dir.path().join("t").join("wal.log");
    let len = std::fs::metadata(&wal).unwrap().len();
    // A half-written record: cut the last one short.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    {
        let s = VectorStore::open(dir.path(), opts).unwrap();
        let c = s.get("t").unwrap();
        assert_eq!(c.count(), 29);
        assert!(c.get(&PointId::Num(29)).is_err());
        for i in 0..29 {
            let p = c.get(&PointId::Num(i)).unwrap();
            assert_eq!(p.vector, vs[i as usize]);
        }
        // The log is usable again after the cut.
        c.upsert(points(&vs)[29..].to_vec()).unwrap();
    }
    // Garbage appended (a crash mid-append of a record with a bad checksum).
    let mut f = std::fs::OpenOptions::new().append(true).open(&wal).unwrap();
    f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9]).unwrap();
    drop(f);
    let s = VectorStore::open(dir.path(), opts).unwrap();
    assert_eq!(s.get("t").unwrap().count(), 30);
}

#[test]
fn compaction_reclaims_tombstones_and_keeps_results() {
    let (_d, _s, c) = filled(2000, 16, Metric::Dot);
    c.delete((0..2000).filter(|i| i % 2 == 1).map(PointId::Num).collect())
        .unwrap();
    assert_eq!(c.info().deleted, 1000);
    let q = vectors(1, 16, 9).remove(0);
    let before = ranked(&c, &q);
    c.compact().unwrap();
    let info = c.info();
    assert_eq!((info.count, info.deleted), (1000, 0));
    let after = ranked(&c, &q);
    assert!(
        after
            .iter()
            .all(|(id, _)| matches!(id, PointId::Num(n) if n % 2 == 0))
    );
    let overlap = after.iter().filter(|a| before.contains(a)).count();
    assert!(
        overlap >= 8,
        "compaction changed results too much: {overlap}/10"
    );
}

#[test]
fn upsert_replaces_and_drop_removes_files() {
    let (d, s, c) = filled(50, 4, Metric::Cosine);
    c.upsert(vec![Point {
        id: PointId::Num(3),
        vector: vec![0.0, 0.0, 0.0, 1.0],
        payload: None,
    }])
    .unwrap();
    assert_eq!(c.count(), 50);
    let p = c.get(&PointId::Num(3)).unwrap();
    assert_eq!(p.vector, vec![0.0, 0.0, 0.0, 1.0]);
    assert_eq!(p.payload, None);
    let hits = c
        .search(&SearchRequest::new(vec![0.0, 0.0, 0.0, 1.0], 50))
        .unwrap();
    assert_eq!(hits.iter().filter(|h| h.id == PointId::Num(3)).count(), 1);
    assert_eq!(hits[0].id, PointId::Num(3));
    assert!((hits[0].score - 1.0).abs() < 1e-5);
    assert_eq!(s.list().len(), 1);
    assert_eq!(s.list()[0].count, 50);
    s.drop_collection("c").unwrap();
    assert!(!d.path().join("c").exists());
    assert!(s.names().is_empty());
}

#[test]
fn every_fsync_policy_recovers_its_writes() {
    for policy in ["always", "batch", "never"] {
        let fsync: FsyncPolicy = policy.parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let vs = uniform(40, 8, 8);
        {
            let s = VectorStore::open(
                dir.path(),
                StoreOptions {
                    fsync,
                    ..StoreOptions::default()
                },
            )
            .unwrap();
            let c = s.create_collection("p", config(8, Metric::Dot)).unwrap();
            for chunk in points(&vs).chunks(7) {
                c.upsert(chunk.to_vec()).unwrap();
            }
            // Give the batch flusher a turn while the store is alive.
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        let s = VectorStore::open(
            dir.path(),
            StoreOptions {
                fsync,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        assert_eq!(s.get("p").unwrap().count(), 40, "{policy}");
    }
    assert!("sometimes".parse::<FsyncPolicy>().is_err());
}

#[test]
fn duplicate_ids_in_one_batch_keep_the_last_and_survive_replay() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        fsync: FsyncPolicy::Always,
        ..StoreOptions::default()
    };
    let batch = vec![
        Point {
            id: PointId::Num(1),
            vector: vec![1.0, 0.0],
            payload: Some(serde_json::json!({"v": 1})),
        },
        Point {
            id: PointId::Num(2),
            vector: vec![0.0, 1.0],
            payload: None,
        },
        Point {
            id: PointId::Num(1),
            vector: vec![0.5, 0.5],
            payload: Some(serde_json::json!({"v": 2})),
        },
    ];
    {
        let s = VectorStore::open(dir.path(), opts).unwrap();
        let c = s.create_collection("d", config(2, Metric::L2)).unwrap();
        c.upsert(batch).unwrap();
        assert_eq!(c.count(), 2);
        assert_eq!(c.get(&PointId::Num(1)).unwrap().vector, vec![0.5, 0.5]);
    }
    let s = VectorStore::open(dir.path(), opts).unwrap();
    let c = s.get("d").unwrap();
    assert_eq!(c.count(), 2);
    let p = c.get(&PointId::Num(1)).unwrap();
    assert_eq!(
        (p.vector, p.payload),
        (vec![0.5, 0.5], Some(serde_json::json!({"v": 2})))
    );
    let hits = c.search(&SearchRequest::new(vec![1.0, 0.0], 10)).unwrap();
    assert_eq!(
        hits.len(),
        2,
        "the replaced version must not come back: {hits:?}"
    );
}

#[test]
fn ids_lists_the_live_points_after_deletes_and_a_reopen() {
    let (d, s, c) = filled(50, 8, Metric::Cosine);
    c.delete((0..10).map(PointId::Num).collect()).unwrap();
    let sorted = |c: &Collection| {
        let mut v: Vec<u64> = c
            .ids()
            .into_iter()
            .map(|id| match id {
                PointId::Num(n) => n,
                PointId::Uuid(u) => panic!("unexpected id {u}"),
            })
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(sorted(&c), (10..50).collect::<Vec<u64>>());
    drop(c);
    drop(s);
    let s = VectorStore::open(
        d.path(),
        StoreOptions {
            fsync: FsyncPolicy::Never,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let c = s.get("c").unwrap();
    assert_eq!(sorted(&c), (10..50).collect::<Vec<u64>>());
}

fn reopen(dir: &std::path::Path) -> VectorStore {
    VectorStore::open(
        dir,
        StoreOptions {
            fsync: FsyncPolicy::Never,
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn a_truncated_config_skips_its_collection_not_the_store() {
    let (d, s) = store();
    for name in ["a", "b"] {
        let c = s.create_collection(name, config(4, Metric::L2)).unwrap();
        c.upsert(points(&uniform(10, 4, 1))).unwrap();
    }
    drop(s);
    let cfg = d.path().join("b").join("config.json");
    std::fs::File::create(&cfg).unwrap(); // truncated to 0 bytes
    let s = reopen(d.path());
    assert_eq!(s.names(), vec!["a".to_owned()]);
    assert_eq!(s.get("a").unwrap().count(), 10);
    // b's files are left for an operator, and its name cannot be reused over them.
    assert!(matches!(
        s.create_collection("b", config(4, Metric::L2)),
        Err(uat_vector::VectorError::FolderNotEmpty(_))
    ));
    assert_eq!(std::fs::metadata(&cfg).unwrap().len(), 0);
    assert!(d.path().join("b").join("wal.log").is_file());
}

/// The remains of a drop interrupted by a crash (old code: remove_dir_all
/// unlinked config.json, not yet wal.log) are not loaded by a create of the
/// same name: they are not a collection (no config.json), and may be what an
/// operator must look at, so the create is refused rather than clearing them.
#[test]
fn create_over_the_remains_of_a_half_dropped_collection_is_refused() {
    let (d, s) = store();
    let c = s.create_collection("x", config(4, Metric::L2)).unwrap();
    c.upsert(points(&uniform(10, 4, 1))).unwrap();
    drop((c, s));
    std::fs::remove_file(d.path().join("x").join("config.json")).unwrap();
    let s = reopen(d.path());
    assert!(s.names().is_empty());
    let e = s.create_collection("x", config(8, Metric::L2)).unwrap_err();
    assert!(
        matches!(e, uat_vector::VectorError::FolderNotEmpty(ref p) if p.ends_with("x")),
        "{e}"
    );
    assert!(s.names().is_empty());
    assert!(
        d.path().join("x").join("wal.log").is_file(),
        "files left alone"
    );
    // Once the operator has removed them, the name is free again.
    std::fs::remove_dir_all(d.path().join("x")).unwrap();
    let c = s.create_collection("x", config(8, Metric::L2)).unwrap();
    assert_eq!(c.count(), 0);
}

/// A create interrupted before config.json was renamed in leaves only the
/// temporary file: that folder is reused.
#[test]
fn create_over_an_interrupted_create_succeeds() {
    let (d, s) = store();
    std::fs::create_dir(d.path().join("y")).unwrap();
    std::fs::write(d.path().join("y").join("config.json.tmp"), b"{\"dimen").unwrap();
    let c = s.create_collection("y", config(4, Metric::L2)).unwrap();
    assert_eq!(c.count(), 0);
    drop((c, s));
    assert_eq!(reopen(d.path()).get("y").unwrap().config().dimension, 4);
}

/// A WAL record whose vector length differs from the collection's dimension
/// is corruption, never padded or cut to fit.
#[test]
fn wal_record_of_another_dimension_is_corruption() {
    let (d, s) = store();
    let c = s.create_collection("m", config(4, Metric::L2)).unwrap();
    c.upsert(points(&uniform(10, 4, 1))).unwrap();
    drop((c, s));
    let dir = d.path().join("m");
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec(&config(8, Metric::L2)).unwrap(),
    )
    .unwrap();
    let e = Collection::open(&dir, "m", FsyncPolicy::Never).unwrap_err();
    assert!(
        matches!(e, uat_vector::VectorError::Corrupt { ref detail, .. } if detail.contains("expected 8, got 4")),
        "{e}"
    );
    let s = reopen(d.path());
    assert!(s.names().is_empty());
    // The store names what it skipped (for `/ready`).
    let failed = s.failed();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "m");
    assert!(failed[0].1.contains("expected 8, got 4"), "{failed:?}");
}

#[test]
fn drop_then_create_of_the_same_name_is_empty() {
    let (d, s) = store();
    let c = s.create_collection("c", config(4, Metric::L2)).unwrap();
    c.upsert(points(&uniform(10, 4, 1))).unwrap();
    c.snapshot().unwrap();
    c.upsert(points(&uniform(20, 4, 2))[10..].to_vec()).unwrap();
    s.drop_collection("c").unwrap();
    let c = s.create_collection("c", config(8, Metric::Dot)).unwrap();
    assert_eq!(c.count(), 0);
    let leftovers: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("c")]);
    drop((c, s));
    let s = reopen(d.path());
    let c = s.get("c").unwrap();
    assert_eq!((c.count(), c.config().dimension), (0, 8));
}

/// A handle on a dropped collection kept by a request in flight must not
/// snapshot into the folder of a new collection of the same name.
#[test]
fn snapshot_of_a_dropped_collection_does_not_land_in_its_successor() {
    let (d, s) = store();
    let old = s.create_collection("c", config(4, Metric::L2)).unwrap();
    old.upsert(points(&uniform(10, 4, 1))).unwrap();
    s.drop_collection("c").unwrap();
    let new = s.create_collection("c", config(4, Metric::L2)).unwrap();
    assert!(matches!(
        old.snapshot(),
        Err(uat_vector::VectorError::NotFound(_))
    ));
    assert!(!d.path().join("c").join("snapshot.bin").exists());
    drop((old, new, s));
    assert_eq!(reopen(d.path()).get("c").unwrap().count(), 0);
}

/// A drop interrupted after its rename leaves a `.dropped-*` folder: the
/// next open deletes it and does not list it.
#[test]
fn open_removes_the_folders_of_interrupted_drops() {
    let (d, s) = store();
    let c = s.create_collection("c", config(4, Metric::L2)).unwrap();
    c.upsert(points(&uniform(10, 4, 1))).unwrap();
    drop((c, s));
    let graveyard = d.path().join(".dropped-c-12345");
    std::fs::rename(d.path().join("c"), &graveyard).unwrap();
    let s = reopen(d.path());
    assert!(s.names().is_empty());
    assert!(!graveyard.exists());
}
