//! The vector benchmark behind `uat bench vector` and the criterion bench:
//! clustered, normalized vectors (seeded), exact ground truth by brute force,
//! recall@k and single-thread QPS per `ef` for f32 and SQ8, brute-force QPS in
//! the same run, filtered recall/QPS at several selectivities, 2-thread build
//! time, 2-thread search scaling and snapshot load time.

mod report;
mod timer;

use crate::collection::Collection;
use crate::distance::{Metric, normalize};
use crate::error::{Result, VectorError};
use crate::filter::{Condition, FieldCondition, FieldTest, Filter, Range};
use crate::types::{
    CollectionConfig, HnswConfig, PayloadIndexKind, Point, PointId, Quantization, SearchRequest,
};
use crate::wal::FsyncPolicy;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rayon::prelude::*;
use std::collections::HashSet;
use std::time::Instant;
use timer::{Timer, load_average};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Points in the collection.
    pub n: usize,
    /// Dimension.
    pub dim: usize,
    /// Number of clusters the points are drawn around.
    pub clusters: usize,
    /// Queries (not in the collection).
    pub queries: usize,
    /// k of recall@k.
    pub k: usize,
    /// HNSW settings (`ef_search` unused: see `efs`).
    pub hnsw: HnswConfig,
    /// The `ef` values to sweep.
    pub efs: Vec<usize>,
    /// `ef` for the filtered runs.
    pub filtered_ef: usize,
    /// Threads for the build (and the scaling run).
    pub build_threads: usize,
    /// Also build and sweep an SQ8 index.
    pub sq8: bool,
    /// Also sweep a binary-quantized index.
    pub binary: bool,
    /// Seed of the data.
    pub seed: u64,
    /// Real embeddings instead of synthetic ones: a raw little-endian f32
    /// file of rows of `dim` values; the first `n` rows are indexed, the next
    /// `queries` rows are the queries.
    pub data_file: Option<std::path::PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            n: 50_000,
            dim: 384,
            clusters: 200,
            queries: 1000,
            k: 10,
            // The collection defaults (M 16, ef_construction 200).
            hnsw: HnswConfig::default(),
            efs: vec![16, 24, 32, 40, 48, 64, 96, 128, 192, 256],
            filtered_ef: 64,
            build_threads: 2,
            sq8: true,
            binary: false,
            seed: 42,
            data_file: None,
        }
    }
}

/// One row of an `ef` sweep.
#[derive(Debug, Clone)]
pub struct SweepRow {
    /// Index kind: f32, sq8, binary.
    pub kind: &'static str,
    /// The `ef` used.
    pub ef: usize,
    /// Mean recall@k against exact ground truth.
    pub recall: f64,
    /// Single-thread queries per second (wall clock).
    pub qps: f64,
    /// Queries per CPU-second of the searching thread.
    pub qps_cpu: f64,
}

/// One filtered run.
#[derive(Debug, Clone)]
pub struct FilterRow {
    /// Index kind ("f32" or "sq8").
    pub kind: &'static str,
    /// Share of points passing the filter.
    pub selectivity: f64,
    /// Plan the planner chose for the first query.
    pub plan: String,
    /// Mean recall@k against exact filtered ground truth.
    pub recall: f64,
    /// Single-thread queries per second (wall clock).
    pub qps: f64,
    /// Queries per CPU-second of the searching thread.
    pub qps_cpu: f64,
}

/// Everything measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The options used.
    pub options: BenchOptions,
    /// Exact scan, single-thread QPS (wall clock).
    pub brute_force_qps: f64,
    /// Exact scan, queries per CPU-second.
    pub brute_force_qps_cpu: f64,
    /// CPU seconds (all threads) of the f32 build.
    pub build_cpu_seconds: f64,
    /// Load average (1 min) at the start, from `/proc/loadavg`.
    pub load_average: Option<f64>,
    /// Build (upsert of all points) time in seconds, f32 index, on `build_threads` threads.
    pub build_seconds: f64,
    /// Build time of the SQ8 index.
    pub build_seconds_sq8: Option<f64>,
    /// `ef` sweeps.
    pub sweeps: Vec<SweepRow>,
    /// Filtered runs.
    pub filtered: Vec<FilterRow>,
    /// Index bytes (graph + walked vectors), f32.
    pub index_bytes_f32: usize,
    /// Index bytes, SQ8.
    pub index_bytes_sq8: Option<usize>,
    /// QPS on `build_threads` threads at the scaling `ef`, and the single-thread QPS then.
    pub scaling: Option<(usize, f64, f64)>,
    /// Snapshot write and load (open) seconds.
    pub snapshot_write_seconds: f64,
    /// Time to open the collection from its snapshot.
    pub snapshot_load_seconds: f64,
    /// Recall of the reopened collection at the first `ef` (must equal the original).
    pub reopened_recall: f64,
}

/// Clustered unit vectors: unit centers plus Gaussian noise, normalized.
pub fn clustered(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut gauss = move || {
        let u1: f64 = rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = rng.random_range(0.0..1.0);
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    };
    let centers: Vec<Vec<f32>> = (0..clusters.max(1))
        .map(|_| {
            let mut c: Vec<f32> = (0..dim).map(|_| gauss()).collect();
            normalize(&mut c);
            c
        })
        .collect();
    let sigma = 0.9 / (dim as f32).sqrt();
    let mut pick = StdRng::seed_from_u64(seed ^ 0x5EED);
    (0..n)
        .map(|_| {
            let c = &centers[pick.random_range(0..centers.len())];
            let mut v: Vec<f32> = c.iter().map(|x| x + sigma * gauss()).collect();
            normalize(&mut v);
            v
        })
        .collect()
}

/// Reads `rows` normalized vectors of `dim` f32 (little-endian) from a raw
/// file (the format uat-embed's `embed_corpus` example writes).
pub fn load_rows(path: &std::path::Path, dim: usize, rows: usize) -> Result<Vec<Vec<f32>>> {
    if dim == 0 {
        return Err(VectorError::BadConfig(
            "the dimension must be at least 1".into(),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| VectorError::io(path, e))?;
    let have = bytes.len() / (dim * 4);
    if have < rows {
        return Err(VectorError::BadConfig(format!(
            "{} holds {have} rows of {dim} f32, the bench needs {rows}",
            path.display()
        )));
    }
    Ok(bytes
        .chunks_exact(dim * 4)
        .take(rows)
        .map(|row| {
            let mut v: Vec<f32> = row
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            normalize(&mut v);
            v
        })
        .collect())
}

fn exact_topk(data: &[Vec<f32>], q: &[f32], k: usize, pass: impl Fn(usize) -> bool) -> Vec<usize> {
    let mut all: Vec<(f32, usize)> = data
        .iter()
        .enumerate()
        .filter(|(i, _)| pass(*i))
        .map(|(i, v)| (Metric::Cosine.distance(q, v), i))
        .collect();
    let k = k.min(all.len());
    if k == 0 {
        return Vec::new();
    }
    all.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
    all.truncate(k);
    all.into_iter().map(|x| x.1).collect()
}

fn recall_of(got: &[crate::ScoredPoint], truth: &[usize]) -> f64 {
    let t: HashSet<u64> = truth.iter().map(|&i| i as u64).collect();
    let hit = got
        .iter()
        .filter(|p| matches!(p.id, PointId::Num(n) if t.contains(&n)))
        .count();
    hit as f64 / truth.len().max(1) as f64
}

fn bucket_filter(limit: i64) -> Filter {
    Filter {
        must: vec![Condition::Field(FieldCondition {
            key: "bucket".into(),
            test: FieldTest::Range(Range {
                lt: Some(limit as f64),
                ..Range::default()
            }),
        })],
        ..Filter::default()
    }
}

fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| VectorError::BadConfig(format!("thread pool: {e}")))
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Search throughput on one thread, then on `threads` threads each running
/// every request on its own (independent queries over the shared index; no
/// work queue, counter or lock shared between them), measured back to back so
/// both see the same machine. Each is the best of three rounds (wall clock).
fn scaling_qps(c: &Collection, reqs: &[SearchRequest], threads: usize) -> Result<(f64, f64)> {
    let run_all = || -> Result<()> {
        for r in reqs {
            std::hint::black_box(c.search(r)?);
        }
        Ok(())
    };
    let (mut single, mut multi) = (0f64, 0f64);
    for _ in 0..3 {
        let t = Instant::now();
        run_all()?;
        single = single.max(reqs.len() as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(run_all)).collect();
            handles.into_iter().try_for_each(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(VectorError::BadConfig("a search thread panicked".into()))
                })
            })
        })?;
        multi = multi.max((threads * reqs.len()) as f64 / t.elapsed().as_secs_f64());
    }
    Ok((single, multi))
}

/// Runs the benchmark; `log` receives progress lines.
pub fn run(opts: BenchOptions, log: &mut dyn FnMut(&str)) -> Result<BenchReport> {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run_no = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = TempDir(
        std::env::temp_dir().join(format!("uat-vector-bench-{}-{run_no}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&tmp.0);
    log(&match &opts.data_file {
        Some(p) => format!(
            "reading {} + {} {}-d vectors from {}",
            opts.n,
            opts.queries,
            opts.dim,
            p.display()
        ),
        None => format!(
            "generating {} + {} clustered {}-d vectors",
            opts.n, opts.queries, opts.dim
        ),
    });
    // Queries come from the same clusters (or file) but are not in the collection.
    let mut data = match &opts.data_file {
        Some(path) => load_rows(path, opts.dim, opts.n + opts.queries)?,
        None => clustered(opts.n + opts.queries, opts.dim, opts.clusters, opts.seed),
    };
    let queries = data.split_off(opts.n.min(data.len()));
    let buckets: Vec<i64> = (0..opts.n)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) % 100) as i64)
        .collect();

    let load = load_average();
    log("exact ground truth (all cores)");
    let truth: Vec<Vec<usize>> = queries
        .par_iter()
        .map(|q| exact_topk(&data, q, opts.k, |_| true))
        .collect();
    let bf_n = opts.queries.min(200);
    let t = Timer::start();
    for q in &queries[..bf_n] {
        std::hint::black_box(exact_topk(&data, q, opts.k, |_| true));
    }
    let brute_force_qps = bf_n as f64 / t.wall();
    let brute_force_qps_cpu = bf_n as f64 / t.thread();
    log(&format!(
        "brute force: {brute_force_qps:.0} QPS (1 thread), {brute_force_qps_cpu:.0} per CPU-second"
    ));

    let points = |with_payload: bool| -> Vec<Point> {
        data.iter()
            .enumerate()
            .map(|(i, v)| Point {
                id: PointId::Num(i as u64),
                vector: v.clone(),
                payload: with_payload.then(|| serde_json::json!({"bucket": buckets[i]})),
            })
            .collect()
    };
    let build_pool = pool(opts.build_threads)?;
    let mk = |name: &str, quant: Quantization| -> Result<Collection> {
        let mut cfg = CollectionConfig::new(opts.dim, Metric::Cosine);
        cfg.hnsw = opts.hnsw;
        cfg.quantization = quant;
        cfg.payload_indexes
            .insert("bucket".into(), PayloadIndexKind::Integer);
        Collection::create(&tmp.0.join(name), name, cfg, FsyncPolicy::Never)
    };

    let f32c = mk("f32", Quantization::None)?;
    let pts = points(true);
    let t = Timer::start();
    build_pool.install(|| f32c.upsert(pts))?;
    let build_seconds = t.wall();
    let build_cpu_seconds = t.process();
    log(&format!(
        "build f32: {build_seconds:.1} s on {} threads ({build_cpu_seconds:.1} CPU-s)",
        opts.build_threads
    ));

    let mut sweeps = Vec::new();
    let sweep = |c: &Collection,
                 kind: &'static str,
                 log: &mut dyn FnMut(&str)|
     -> Result<Vec<SweepRow>> {
        let mut rows = Vec::new();
        // One unmeasured pass first: the first sweep row would otherwise pay
        // for faulting in the freshly built index.
        for q in &queries {
            let mut r = SearchRequest::new(q.clone(), opts.k);
            r.with_payload = false;
            std::hint::black_box(c.search(&r)?);
        }
        for &ef in &opts.efs {
            let mut results = Vec::with_capacity(queries.len());
            let t = Timer::start();
            for q in &queries {
                let mut r = SearchRequest::new(q.clone(), opts.k);
                r.ef = Some(ef);
                r.with_payload = false;
                results.push(c.search(&r)?);
            }
            let qps = queries.len() as f64 / t.wall();
            let qps_cpu = queries.len() as f64 / t.thread();
            let recall = results
                .iter()
                .zip(&truth)
                .map(|(g, t)| recall_of(g, t))
                .sum::<f64>()
                / queries.len() as f64;
            log(&format!(
                "{kind:>6} ef={ef:<4} recall@{}={recall:.4} QPS={qps:.0} per-CPU-s={qps_cpu:.0}",
                opts.k
            ));
            rows.push(SweepRow {
                kind,
                ef,
                recall,
                qps,
                qps_cpu,
            });
        }
        Ok(rows)
    };
    sweeps.extend(sweep(&f32c, "f32", log)?);
    let index_bytes_f32 = f32c.memory().index_bytes;

    // Two-thread search scaling at the first ef reaching recall 0.97.
    let scale_ef = sweeps
        .iter()
        .find(|r| r.recall >= 0.97)
        .map_or(opts.hnsw.ef_search, |r| r.ef);
    let scaling = if opts.build_threads > 1 {
        let reqs: Vec<SearchRequest> = queries
            .iter()
            .map(|q| {
                let mut r = SearchRequest::new(q.clone(), opts.k);
                r.ef = Some(scale_ef);
                r.with_payload = false;
                r
            })
            .collect();
        let (single, multi) = scaling_qps(&f32c, &reqs, opts.build_threads)?;
        log(&format!(
            "f32 ef={scale_ef}: {multi:.0} QPS on {} threads vs {single:.0} on 1 ({:.2}x)",
            opts.build_threads,
            multi / single.max(1e-9)
        ));
        Some((scale_ef, multi, single))
    } else {
        None
    };

    // Filtered runs at 1%, 10% and 65% selectivity, against exact filtered
    // ground truth; on the f32 index here and on the SQ8 one below.
    let ftruths: Vec<(f64, i64, Vec<Vec<usize>>)> = [(0.01, 1i64), (0.10, 10), (0.65, 65)]
        .into_iter()
        .map(|(sel, limit)| {
            let t = queries
                .par_iter()
                .map(|q| exact_topk(&data, q, opts.k, |i| buckets[i] < limit))
                .collect();
            (sel, limit, t)
        })
        .collect();
    let filtered_runs = |c: &Collection,
                         kind: &'static str,
                         log: &mut dyn FnMut(&str)|
     -> Result<Vec<FilterRow>> {
        let mut rows = Vec::new();
        for (sel, limit, ftruth) in &ftruths {
            let f = bucket_filter(*limit);
            let mut plan = String::new();
            let mut recall = 0.0;
            let t = Timer::start();
            for (qi, q) in queries.iter().enumerate() {
                let mut r = SearchRequest::new(q.clone(), opts.k);
                r.ef = Some(opts.filtered_ef);
                r.with_payload = false;
                r.filter = Some(f.clone());
                let (res, p) = c.search_explain(&r)?;
                if qi == 0 {
                    plan = p.map_or("none".into(), |p| format!("{p:?}").to_lowercase());
                }
                recall += recall_of(&res, &ftruth[qi]);
            }
            let qps = queries.len() as f64 / t.wall();
            let qps_cpu = queries.len() as f64 / t.thread();
            recall /= queries.len() as f64;
            log(&format!(
                "{kind:>6} filtered {:>4.0}%: plan={plan} recall@{}={recall:.4} QPS={qps:.0} per-CPU-s={qps_cpu:.0}",
                sel * 100.0,
                opts.k
            ));
            rows.push(FilterRow {
                kind,
                selectivity: *sel,
                plan,
                recall,
                qps,
                qps_cpu,
            });
        }
        Ok(rows)
    };
    let mut filtered = filtered_runs(&f32c, "f32", log)?;

    let t = Instant::now();
    f32c.snapshot()?;
    let snapshot_write_seconds = t.elapsed().as_secs_f64();
    let dir = f32c.dir().to_owned();
    drop(f32c);
    let t = Instant::now();
    let reopened = Collection::open(&dir, "f32", FsyncPolicy::Never)?;
    let snapshot_load_seconds = t.elapsed().as_secs_f64();
    log(&format!(
        "snapshot: write {snapshot_write_seconds:.2} s, load {snapshot_load_seconds:.3} s"
    ));
    let ef0 = opts.efs.first().copied().unwrap_or(opts.hnsw.ef_search);
    let mut rr = 0.0;
    for (q, t) in queries.iter().zip(&truth) {
        let mut r = SearchRequest::new(q.clone(), opts.k);
        r.ef = Some(ef0);
        rr += recall_of(&reopened.search(&r)?, t);
    }
    let reopened_recall = rr / queries.len() as f64;
    drop(reopened);

    let (mut build_seconds_sq8, mut index_bytes_sq8) = (None, None);
    if opts.sq8 {
        let c = mk("sq8", Quantization::Sq8)?;
        let pts = points(true);
        let t = Instant::now();
        build_pool.install(|| c.upsert(pts))?;
        build_seconds_sq8 = Some(t.elapsed().as_secs_f64());
        log(&format!("build sq8: {:.1} s", t.elapsed().as_secs_f64()));
        sweeps.extend(sweep(&c, "sq8", log)?);
        filtered.extend(filtered_runs(&c, "sq8", log)?);
        let m = c.memory().index_bytes;
        log(&format!(
            "index bytes: f32 {index_bytes_f32}, sq8 {m} ({:.2}x)",
            m as f64 / index_bytes_f32 as f64
        ));
        index_bytes_sq8 = Some(m);
    }
    if opts.binary {
        let c = mk("binary", Quantization::Binary)?;
        build_pool.install(|| c.upsert(points(false)))?;
        sweeps.extend(sweep(&c, "binary", log)?);
    }
    Ok(BenchReport {
        options: opts,
        brute_force_qps,
        brute_force_qps_cpu,
        build_cpu_seconds,
        load_average: load,
        build_seconds,
        build_seconds_sq8,
        sweeps,
        filtered,
        index_bytes_f32,
        index_bytes_sq8,
        scaling,
        snapshot_write_seconds,
        snapshot_load_seconds,
        reopened_recall,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `uat bench vector --dim 0 --data-file F` divided by zero.
    #[test]
    fn a_zero_dimension_is_an_error_not_a_division_by_zero() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), [0u8; 64]).unwrap();
        let e = load_rows(f.path(), 0, 1).unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
        assert_eq!(load_rows(f.path(), 4, 4).unwrap().len(), 4);
    }
}
