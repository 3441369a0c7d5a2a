//! The embedding benchmark behind `uat bench embed`: every figure is printed next
//! to its baseline from the same run (batched vs one at a time, concurrent clients
//! vs the same requests sent one after another), since these machines are noisy.
//!
//! Run it in a release build. For the 1-thread figure set `CANDLE_NUM_THREADS=1`
//! in the environment: candle sizes its element-wise thread pool from it at first
//! use (the compute pool here only bounds the matrix products).

use crate::backend::{CandleBackend, EmbeddingBackend};
use crate::batcher::{Batcher, BatcherConfig, ComputePool};
use crate::error::{EmbedError, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The sentence-transformers folder.
    pub model_dir: PathBuf,
    /// Sentences to embed (the 50 fixture sentences).
    pub sentences: Vec<String>,
    /// Batch size of the batched throughput run.
    pub batch_size: usize,
    /// Passes over the sentences per measurement.
    pub rounds: usize,
    /// Concurrent clients, each sending one sentence.
    pub clients: usize,
    /// Compute threads.
    pub threads: usize,
    /// Batcher settings for the concurrent run.
    pub batcher: BatcherConfig,
}

impl BenchOptions {
    /// Defaults: batch 32, 3 rounds, 64 clients, 1 thread, the default batcher.
    pub fn new(model_dir: impl Into<PathBuf>, sentences: Vec<String>) -> BenchOptions {
        BenchOptions {
            model_dir: model_dir.into(),
            sentences,
            batch_size: 32,
            rounds: 3,
            clients: 64,
            threads: 1,
            batcher: BatcherConfig::default(),
        }
    }
}

/// Reads the `sentences` array of a fixture file such as
/// `shared/fixtures/embeddings/sentences.json`.
pub fn load_sentences(path: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct File {
        sentences: Vec<String>,
    }
    let f: File = crate::folder::read_json(path)?;
    Ok(f.sentences)
}

/// Sentences processed in a measured span.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Throughput {
    /// Sentences embedded.
    pub sentences: usize,
    /// Wall-clock time.
    pub wall: Duration,
    /// Process CPU time (all threads).
    pub cpu: Duration,
}

impl Throughput {
    /// Sentences per CPU-second.
    pub fn per_cpu_second(&self) -> f64 {
        self.sentences as f64 / self.cpu.as_secs_f64().max(1e-9)
    }

    /// Sentences per wall-clock second.
    pub fn per_second(&self) -> f64 {
        self.sentences as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn add(&mut self, o: Throughput) {
        self.sentences += o.sentences;
        self.wall += o.wall;
        self.cpu += o.cpu;
    }
}

/// Request latency percentiles.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

impl Latency {
    fn of(mut v: Vec<Duration>) -> Latency {
        v.sort();
        let at = |q: f64| {
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len().max(1)) - 1;
            v.get(i).copied().unwrap_or_default()
        };
        Latency {
            p50: at(0.50),
            p99: at(0.99),
            max: v.last().copied().unwrap_or_default(),
        }
    }
}

/// Every figure of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Compute threads.
    pub threads: usize,
    /// Time to load the model folder.
    pub load_time: Duration,
    /// Resident memory before loading.
    pub rss_before: u64,
    /// Resident memory with the model loaded.
    pub rss_loaded: u64,
    /// Resident memory after every measurement.
    pub rss_end: u64,
    /// Batches of `batch_size`, mixed lengths.
    pub batched: Throughput,
    /// The same sentences one at a time.
    pub single: Throughput,
    /// Concurrent clients through the batcher.
    pub concurrent: Throughput,
    /// Their latency.
    pub concurrent_latency: Latency,
    /// Forward passes one concurrent round took (average).
    pub concurrent_batches: u64,
    /// The same requests sent one after another through the batcher.
    pub sequential: Throughput,
    /// Their latency (the single-request latency).
    pub sequential_latency: Latency,
    /// Batch size and clients used.
    pub batch_size: usize,
    /// Clients used.
    pub clients: usize,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(f, "uat bench embed ({} compute thread(s))", self.threads)?;
        writeln!(
            f,
            "load time                 {:>9.1} ms",
            ms(self.load_time)
        )?;
        writeln!(
            f,
            "RSS                       {:>9.1} MB before load, {:.1} MB loaded, {:.1} MB at end",
            mb(self.rss_before),
            mb(self.rss_loaded),
            mb(self.rss_end)
        )?;
        writeln!(
            f,
            "batch {:<3} mixed lengths  {:>9.1} sentences/CPU-s ({:.1}/s wall, {} sentences)",
            self.batch_size,
            self.batched.per_cpu_second(),
            self.batched.per_second(),
            self.batched.sentences
        )?;
        writeln!(
            f,
            "one at a time             {:>9.1} sentences/CPU-s ({:.1}/s wall)  -> batched is {:.2}x",
            self.single.per_cpu_second(),
            self.single.per_second(),
            self.batched.per_cpu_second() / self.single.per_cpu_second().max(1e-9)
        )?;
        writeln!(
            f,
            "{} concurrent clients     {:>9.1} sentences/s wall ({:.1}/CPU-s), {} forward passes, \
             p50 {:.1} ms, p99 {:.1} ms",
            self.clients,
            self.concurrent.per_second(),
            self.concurrent.per_cpu_second(),
            self.concurrent_batches,
            ms(self.concurrent_latency.p50),
            ms(self.concurrent_latency.p99)
        )?;
        writeln!(
            f,
            "same, one after another   {:>9.1} sentences/s wall ({:.1}/CPU-s), p50 {:.1} ms, p99 {:.1} ms",
            self.sequential.per_second(),
            self.sequential.per_cpu_second(),
            ms(self.sequential_latency.p50),
            ms(self.sequential_latency.p99)
        )?;
        writeln!(
            f,
            "concurrent vs sequential  throughput {:.2}x, p99 / single-request p50 latency {:.2}x",
            self.concurrent.per_second() / self.sequential.per_second().max(1e-9),
            self.concurrent_latency.p99.as_secs_f64()
                / self.sequential_latency.p50.as_secs_f64().max(1e-9)
        )
    }
}

/// Runs the benchmark (blocking; builds its own small tokio runtime).
pub fn run(opts: &BenchOptions) -> Result<BenchReport> {
    if opts.sentences.is_empty() {
        return Err(EmbedError::EmptyInput);
    }
    let rss_before = rss_bytes();
    let started = Instant::now();
    let backend: Arc<dyn EmbeddingBackend> = Arc::new(CandleBackend::load(&opts.model_dir)?);
    let load_time = started.elapsed();
    let rss_loaded = rss_bytes();
    let pool = ComputePool::new(opts.threads)?;
    let texts: Vec<&str> = opts.sentences.iter().map(String::as_str).collect();
    let batch = opts.batch_size.max(1);

    // Warm-up (allocator, page faults).
    pool.run(|| backend.embed_texts(&texts[..texts.len().min(batch)]))?;

    // Rounds alternate batched and single so drift on a noisy machine hits both.
    let mut batched = Throughput::default();
    let mut single = Throughput::default();
    for _ in 0..opts.rounds.max(1) {
        batched.add(measure(texts.len(), || {
            pool.run(|| {
                for chunk in texts.chunks(batch) {
                    backend.embed_texts(chunk)?;
                }
                Ok(())
            })
        })?);
        single.add(measure(texts.len(), || {
            pool.run(|| {
                for t in &texts {
                    backend.embed_texts(&[t])?;
                }
                Ok(())
            })
        })?);
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| EmbedError::Inference(format!("tokio runtime: {e}")))?;
    let batcher = Batcher::new(
        "bench",
        Arc::clone(&backend),
        Arc::clone(&pool),
        opts.batcher.clone(),
    )?;
    let requests: Vec<Vec<u32>> = (0..opts.clients.max(1))
        .map(|i| backend.tokenize(texts[i % texts.len()], true))
        .collect::<Result<_>>()?;

    let mut concurrent = Throughput::default();
    let mut sequential = Throughput::default();
    let mut conc_lat = Vec::new();
    let mut seq_lat = Vec::new();
    let mut concurrent_batches = 0;
    for _ in 0..opts.rounds.max(1) {
        let before = batcher.batches();
        let (t, lat) = rt.block_on(concurrent_round(&batcher, &requests))?;
        concurrent_batches += batcher.batches() - before;
        concurrent.add(t);
        conc_lat.extend(lat);
        let (t, lat) = rt.block_on(sequential_round(&batcher, &requests))?;
        sequential.add(t);
        seq_lat.extend(lat);
    }
    let concurrent_batches = concurrent_batches / opts.rounds.max(1) as u64;

    Ok(BenchReport {
        threads: pool.threads(),
        load_time,
        rss_before,
        rss_loaded,
        rss_end: rss_bytes(),
        batched,
        single,
        concurrent,
        concurrent_latency: Latency::of(conc_lat),
        concurrent_batches,
        sequential,
        sequential_latency: Latency::of(seq_lat),
        batch_size: batch,
        clients: requests.len(),
    })
}

async fn concurrent_round(
    batcher: &Batcher,
    requests: &[Vec<u32>],
) -> Result<(Throughput, Vec<Duration>)> {
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let futures: Vec<_> = requests
        .iter()
        .map(|ids| {
            let sent = Instant::now();
            let fut = batcher.embed(vec![ids.clone()]);
            async move { fut.await.map(|_| sent.elapsed()) }
        })
        .collect();
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut lat = Vec::with_capacity(handles.len());
    for h in handles {
        let took = h
            .await
            .map_err(|e| EmbedError::Inference(e.to_string()))??;
        lat.push(took);
    }
    let t = Throughput {
        sentences: requests.len(),
        wall: t0.elapsed(),
        cpu: cpu_time().saturating_sub(cpu0),
    };
    Ok((t, lat))
}

async fn sequential_round(
    batcher: &Batcher,
    requests: &[Vec<u32>],
) -> Result<(Throughput, Vec<Duration>)> {
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let mut lat = Vec::with_capacity(requests.len());
    for ids in requests {
        let started = Instant::now();
        batcher.embed(vec![ids.clone()]).await?;
        lat.push(started.elapsed());
    }
    let t = Throughput {
        sentences: requests.len(),
        wall: t0.elapsed(),
        cpu: cpu_time().saturating_sub(cpu0),
    };
    Ok((t, lat))
}

fn measure(sentences: usize, f: impl FnOnce() -> Result<()>) -> Result<Throughput> {
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    f()?;
    Ok(Throughput {
        sentences,
        wall: t0.elapsed(),
        cpu: cpu_time().saturating_sub(cpu0),
    })
}

/// CPU time of the whole process (user + system, all threads), from
/// `/proc/self/stat`; zero where that is not available.
pub fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the parenthesised command name; utime and stime are the 14th
    // and 15th fields overall, in clock ticks (100 per second on Linux).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Resident set size of this process in bytes (`/proc/self/status`), 0 if unknown.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
