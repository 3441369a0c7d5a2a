//! `cargo run --release -p uat-memory --example bench_memory -- [DATABASE_URL]`
//!
//! Environment: `MEMORIES` (100000), `USERS` (1000), `CLIENTS` (50), `OPS` (40 per client),
//! `INDEX_DURING_LOAD` (1; 0 = load on SQL alone, then time the index rebuild),
//! `READERS` (8: SQLite read connections), `PG_POOL` (PostgreSQL pool size; 2 x cores + 1),
//! `PHASES` (`list,keyword,semantic,hybrid`: the latency phases to run),
//! `SETTLE` (10: seconds between the load and the phases, for the work a bulk
//! load leaves behind: full-text merge, index snapshot),
//! `CORPUS` (a stem: real passages `{stem}.txt` and their 384-d embeddings
//! `{stem}.f32`, made by `scripts/corpus-passages.py` and uat-embed's `embed_corpus`; default: made-up words and
//! random vectors).

use std::sync::Arc;
use uat_memory::bench::{BenchOptions, Corpus, run};

/// The allocator of the `uat` binary, so the bench allocates as the server does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let corpus = match std::env::var("CORPUS") {
        Ok(stem) => match Corpus::load(&stem, 384) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                eprintln!("benchmark failed: {e}");
                std::process::exit(1);
            }
        },
        Err(_) => None,
    };
    let opts = BenchOptions {
        corpus,
        database_url: std::env::args().nth(1),
        memories: env("MEMORIES", 100_000),
        users: env("USERS", 1000),
        clients: env("CLIENTS", 50),
        ops_per_client: env("OPS", 40),
        index_during_load: env("INDEX_DURING_LOAD", 1) == 1,
        readers: env("READERS", 8) as u32,
        pg_pool: env("PG_POOL", BenchOptions::default().pg_pool as usize) as u32,
        settle: std::time::Duration::from_secs(env("SETTLE", 10) as u64),
        phases: std::env::var("PHASES")
            .map(|p| p.split(',').map(|s| s.trim().to_lowercase()).collect())
            .unwrap_or_default(),
        ..BenchOptions::default()
    };
    match run(opts, &mut |l| eprintln!("{l}")).await {
        Ok(r) => println!("{r:#?}"),
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
