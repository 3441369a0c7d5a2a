//! `cargo bench -p uat-vector`: prints the full report of
//! [`uat_vector::bench::run`] (recall/QPS per ef, brute force, SQ8 vs f32,
//! filtered, build, snapshot), then times single queries with criterion.
//!
//! `UAT_VECTOR_BENCH_N` overrides the number of points (default 50,000).

use criterion::{Criterion, criterion_group, criterion_main};
use uat_vector::bench::{BenchOptions, clustered, run};
use uat_vector::{
    Collection, CollectionConfig, FsyncPolicy, Metric, Point, PointId, SearchRequest,
};

fn report(_c: &mut Criterion) {
    let mut opts = BenchOptions::default();
    if let Some(n) = std::env::var("UAT_VECTOR_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        opts.n = n;
    }
    match run(opts, &mut |line| eprintln!("{line}")) {
        Ok(r) => println!("{r}"),
        Err(e) => eprintln!("bench failed: {e}"),
    }
}

fn single_query(c: &mut Criterion) {
    let n = 20_000;
    let dim = 384;
    let data = clustered(n + 100, dim, 100, 7);
    let Ok(dir) = tempfile::tempdir() else { return };
    let Ok(coll) = Collection::create(
        dir.path(),
        "b",
        CollectionConfig::new(dim, Metric::Cosine),
        FsyncPolicy::Never,
    ) else {
        return;
    };
    let pts: Vec<Point> = data[..n]
        .iter()
        .enumerate()
        .map(|(i, v)| Point {
            id: PointId::Num(i as u64),
            vector: v.clone(),
            payload: None,
        })
        .collect();
    if coll.upsert(pts).is_err() {
        return;
    }
    let mut g = c.benchmark_group("search_20k_384d");
    for ef in [32usize, 64, 128] {
        let mut i = 0usize;
        g.bench_function(format!("ef{ef}"), |b| {
            b.iter(|| {
                i = (i + 1) % 100;
                let mut r = SearchRequest::new(data[n + i].clone(), 10);
                r.ef = Some(ef);
                coll.search(&r).map(|v| v.len()).unwrap_or(0)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = report, single_query
}
criterion_main!(benches);
