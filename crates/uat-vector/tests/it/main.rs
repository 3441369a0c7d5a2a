//! Integration tests of uat-vector: the public API end to end.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod api;
mod auto_snapshot;
mod crash;
mod memory_report;
mod persistence;
mod search;
mod shutdown_snapshot;

use rand::{Rng, SeedableRng, rngs::StdRng};
use std::sync::Arc;
use uat_vector::{
    Collection, CollectionConfig, FsyncPolicy, Metric, PayloadIndexKind, Point, PointId,
    StoreOptions, VectorStore,
};

/// Seeded clustered vectors.
pub fn vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    uat_vector::bench::clustered(n, dim, 20, seed)
}

/// Random vectors in [-1, 1).
pub fn uniform(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect()
}

/// Points with ids 0.. and a payload `{"i": i, "bucket": i % 100, "tag": ...}`.
pub fn points(vs: &[Vec<f32>]) -> Vec<Point> {
    vs.iter()
        .enumerate()
        .map(|(i, v)| (i, v, ["red", "green", "blue"][i % 3]))
        .map(|(i, v, color)| Point {
            id: PointId::Num(i as u64),
            vector: v.clone(),
            payload: Some(serde_json::json!({
                "i": i,
                "bucket": i % 100,
                "tag": if i % 2 == 0 { "even" } else { "odd" },
                "color": color,
            })),
        })
        .collect()
}

/// A store in a fresh temporary folder.
pub fn store() -> (tempfile::TempDir, VectorStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = VectorStore::open(
        dir.path(),
        StoreOptions {
            fsync: FsyncPolicy::Never,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    (dir, s)
}

/// A config with the payload indexes used by the tests.
pub fn config(dim: usize, metric: Metric) -> CollectionConfig {
    let mut c = CollectionConfig::new(dim, metric);
    c.payload_indexes
        .insert("bucket".into(), PayloadIndexKind::Integer);
    c.payload_indexes
        .insert("tag".into(), PayloadIndexKind::Keyword);
    c
}

/// A collection filled with `points(vectors(n, dim, seed))`.
pub fn filled(
    n: usize,
    dim: usize,
    metric: Metric,
) -> (tempfile::TempDir, VectorStore, Arc<Collection>) {
    let (d, s) = store();
    let c = s.create_collection("c", config(dim, metric)).unwrap();
    c.upsert(points(&vectors(n, dim, 1))).unwrap();
    (d, s, c)
}
