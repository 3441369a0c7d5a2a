//! `cargo run --release -p uat-vector --example bench_vector [N] [QUERIES]`:
//! the full vector benchmark report (what `uat bench vector` prints).
//! Env: `UAT_VECTOR_BENCH_DATA=file.f32` (real embeddings), `UAT_VECTOR_BENCH_BINARY=1`,
//! `UAT_VECTOR_BENCH_NO_SQ8=1`, `UAT_VECTOR_BENCH_EF_CONSTRUCTION=N`,
//! `UAT_VECTOR_BENCH_EFS=16,32,64` (the sweep).

use uat_vector::bench::{BenchOptions, run};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut opts = BenchOptions::default();
    if let Some(n) = args.next().and_then(|s| s.parse().ok()) {
        opts.n = n;
    }
    if let Some(q) = args.next().and_then(|s| s.parse().ok()) {
        opts.queries = q;
    }
    opts.binary = std::env::var("UAT_VECTOR_BENCH_BINARY").is_ok();
    opts.sq8 = std::env::var("UAT_VECTOR_BENCH_NO_SQ8").is_err();
    if let Some(efc) = std::env::var("UAT_VECTOR_BENCH_EF_CONSTRUCTION")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        opts.hnsw.ef_construction = efc;
    }
    if let Ok(efs) = std::env::var("UAT_VECTOR_BENCH_EFS") {
        let efs: Vec<usize> = efs
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        if !efs.is_empty() {
            opts.efs = efs;
        }
    }
    // Raw little-endian f32 rows of 384 values (real embeddings), if given.
    opts.data_file = std::env::var_os("UAT_VECTOR_BENCH_DATA").map(Into::into);
    match run(opts, &mut |line| eprintln!("{line}")) {
        Ok(r) => println!("{r}"),
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
    }
}
