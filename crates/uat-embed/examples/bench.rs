//! `cargo run --release -p uat-embed --example bench -- [MODEL_DIR] [SENTENCES_JSON]`
//!
//! MODEL_DIR defaults to `$UAT_TEST_MODEL_DIR`; SENTENCES_JSON to the shared fixture.
//! Set `CANDLE_NUM_THREADS=1` for the 1-thread figures. `UAT_BENCH_THREADS`,
//! `UAT_BENCH_ROUNDS` and `UAT_BENCH_MAX_WAIT_MS` override the defaults.

use std::path::PathBuf;
use uat_embed::bench::{BenchOptions, load_sentences, run};

fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("UAT_TEST_MODEL_DIR").map(PathBuf::from))
        .ok_or("pass MODEL_DIR or set UAT_TEST_MODEL_DIR (scripts/fetch-model.sh)")?;
    let sentences = args.next().map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/embeddings/sentences.json")
    });
    let mut opts = BenchOptions::new(model, load_sentences(&sentences)?);
    if let Some(t) = env_num("UAT_BENCH_THREADS") {
        opts.threads = t as usize;
    }
    if let Some(r) = env_num("UAT_BENCH_ROUNDS") {
        opts.rounds = r as usize;
    }
    if let Some(w) = env_num("UAT_BENCH_MAX_WAIT_MS") {
        opts.batcher.max_wait = std::time::Duration::from_millis(w);
    }
    let report = run(&opts)?;
    print!("{report}");
    Ok(())
}
