//! `uat bench vector|embed`: the engines' benchmarks, each printing its
//! baseline from the same run (brute force for HNSW, one-at-a-time for the
//! embedding batcher), because these machines are noisy.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Which benchmark.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// HNSW recall@k and QPS per ef vs. brute force, SQ8, filtered search, build and load times.
    Vector(VectorArgs),
    /// Embedding throughput batched vs. one at a time, concurrent clients, memory, load time.
    Embed(EmbedArgs),
}

/// A count that must be at least 1 (`--n 0` or `--queries 0` printed a
/// report of NaNs and zeros).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `uat bench vector` options.
#[derive(Debug, Args)]
pub struct VectorArgs {
    /// Points in the collection (clustered, normalized, seeded).
    #[arg(long, default_value_t = 50_000, value_parser = at_least_one)]
    pub n: usize,
    /// Dimension.
    #[arg(long, default_value_t = 384, value_parser = at_least_one)]
    pub dim: usize,
    /// Queries.
    #[arg(long, default_value_t = 1_000, value_parser = at_least_one)]
    pub queries: usize,
    /// ef values to sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [16usize, 24, 32, 48, 64, 128, 256])]
    pub efs: Vec<usize>,
    /// HNSW M.
    #[arg(long, default_value_t = 16)]
    pub m: usize,
    /// HNSW ef_construction (default: the collection default).
    #[arg(long)]
    pub ef_construction: Option<usize>,
    /// Threads for the build.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Skip the SQ8 index.
    #[arg(long)]
    pub no_sq8: bool,
    /// Also sweep a binary-quantized index.
    #[arg(long)]
    pub binary: bool,
    /// Real embeddings instead of clustered synthetic vectors: raw
    /// little-endian f32 rows of `dim` (n + queries rows; the last `queries`
    /// are the queries), as uat-embed's `embed_corpus` example writes them.
    #[arg(long)]
    pub data_file: Option<PathBuf>,
}

/// `uat bench embed` options.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// The sentence-transformers model folder (scripts/fetch-model.sh prints it).
    #[arg(long, env = "UAT_TEST_MODEL_DIR")]
    pub model_dir: PathBuf,
    /// Sentences to embed: a JSON file with a `sentences` array (default: the
    /// 50 fixture sentences built into the binary, crates/uat/fixtures/sentences.json).
    #[arg(long, value_name = "FILE")]
    pub sentences: Option<PathBuf>,
    /// Batch size of the batched run.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Concurrent single-sentence clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Passes over the sentences per measurement.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Compute threads (`embeddings.threads`: lanes for the batcher).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// The benchmark's default sentences, compiled in so that the command works
/// from any directory (a copy of the shared embedding fixture's).
const SENTENCES_JSON: &str = include_str!("../fixtures/sentences.json");

fn builtin_sentences() -> anyhow::Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct File {
        sentences: Vec<String>,
    }
    let f: File = serde_json::from_str(SENTENCES_JSON)
        .context("the built-in sentences (fixtures/sentences.json) are not valid")?;
    Ok(f.sentences)
}

/// Runs one benchmark and prints its report.
pub fn run(which: &BenchCommand) -> anyhow::Result<()> {
    match which {
        BenchCommand::Vector(a) => {
            let mut opts = uat_vector::bench::BenchOptions {
                n: a.n,
                dim: a.dim,
                queries: a.queries,
                efs: a.efs.clone(),
                build_threads: a.threads,
                sq8: !a.no_sq8,
                binary: a.binary,
                data_file: a.data_file.clone(),
                ..Default::default()
            };
            opts.hnsw.m = a.m;
            if let Some(efc) = a.ef_construction {
                opts.hnsw.ef_construction = efc;
            }
            let report = uat_vector::bench::run(opts, &mut |line| eprintln!("{line}"))
                .context("vector benchmark failed")?;
            println!("{report}");
        }
        BenchCommand::Embed(a) => {
            let sentences = match &a.sentences {
                Some(path) => uat_embed::bench::load_sentences(path)
                    .with_context(|| format!("cannot read sentences from {}", path.display()))?,
                None => builtin_sentences()?,
            };
            let mut opts = uat_embed::bench::BenchOptions::new(&a.model_dir, sentences);
            opts.batch_size = a.batch_size;
            opts.clients = a.clients;
            opts.rounds = a.rounds;
            opts.threads = a.threads;
            let report = uat_embed::bench::run(&opts).context("embedding benchmark failed")?;
            println!("{report}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_sentences_are_the_fixture_set() -> anyhow::Result<()> {
        let s = builtin_sentences()?;
        assert_eq!(s.len(), 50);
        assert!(s.iter().all(|t| !t.trim().is_empty()));
        Ok(())
    }
}
