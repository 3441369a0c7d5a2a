//! `cargo run --release -p uat-embed --example embed_corpus -- PASSAGES.txt OUT.f32 [MODEL_DIR] [MAX]`
//!
//! Embeds a text file of passages (one per line; blank and duplicate lines are
//! skipped) with a local sentence-transformers model and writes the vectors as
//! raw little-endian f32 rows, in input order: the real-embedding dataset of the
//! vector benchmark (`UAT_VECTOR_BENCH_DATA=OUT.f32`). MODEL_DIR defaults to
//! `$UAT_TEST_MODEL_DIR`; MAX caps the passages embedded. Progress goes to stderr.

use std::collections::HashSet;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;
use uat_embed::{CandleBackend, EmbeddingBackend};

/// Passages per `embed_texts` call.
const BATCH: usize = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: embed_corpus PASSAGES.txt OUT.f32 [MODEL_DIR] [MAX]";
    let input = PathBuf::from(args.next().ok_or(usage)?);
    let output = PathBuf::from(args.next().ok_or(usage)?);
    let model = args
        .next()
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("UAT_TEST_MODEL_DIR").map(PathBuf::from))
        .ok_or("pass MODEL_DIR or set UAT_TEST_MODEL_DIR")?;
    let max: usize = match args.next() {
        Some(m) => m.parse()?,
        None => usize::MAX,
    };

    let mut seen = HashSet::new();
    let mut passages = Vec::new();
    for line in std::io::BufReader::new(std::fs::File::open(&input)?).lines() {
        let line = line?;
        let text = line.trim();
        if text.is_empty() || !seen.insert(text.to_lowercase()) {
            continue;
        }
        passages.push(text.to_owned());
        if passages.len() >= max {
            break;
        }
    }
    let backend = CandleBackend::load(&model)?;
    let dim = backend.info().dim;
    eprintln!(
        "{} passages from {}, model {} ({dim}-d)",
        passages.len(),
        input.display(),
        model.display()
    );

    let mut out = BufWriter::new(std::fs::File::create(&output)?);
    let started = Instant::now();
    let mut done = 0usize;
    for chunk in passages.chunks(BATCH) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        for v in backend.embed_texts(&refs)? {
            if v.len() != dim {
                return Err(format!("model returned {} values, expected {dim}", v.len()).into());
            }
            for x in v {
                out.write_all(&x.to_le_bytes())?;
            }
        }
        done += chunk.len();
        if done % (BATCH * 50) < BATCH || done == passages.len() {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "{done}/{} embedded, {:.0}/s",
                passages.len(),
                done as f64 / secs.max(1e-9)
            );
        }
    }
    out.flush()?;
    eprintln!(
        "wrote {done} rows of {dim} f32 to {} in {:.1} s",
        output.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
