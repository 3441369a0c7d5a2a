//! The memory benchmark: load memories with precomputed embeddings, then
//! measure batch insert rate, and `search` / `list` latency under many
//! concurrent clients, on SQLite or PostgreSQL.
//!
//! Embeddings are made before the clock starts (the issue asks for the insert
//! rate without embedding time), so the load measures SQL + history + change
//! log; the vector index catches up in the background and its catch-up time
//! is reported separately. Run it with
//! `cargo run --release -p uat-memory --example bench_memory`.
//!
//! With a [`Corpus`] (real passages and the embeddings the model made of them,
//! from `scripts/corpus-passages.py` and the `embed_corpus` example of uat-embed), memory `i` holds passage `i mod n` (of the
//! first `n - 1000` passages) with its real embedding, and every search asks
//! with one of the last 1,000 passages (not stored), whose real embedding the
//! bench's embedder looks up by text. Without one, contents are made-up words
//! and vectors random.

use crate::embed::{BoxFuture, Embedder};
use crate::error::{MemoryError, Result};
use crate::input::{Limits, SearchMode, SearchQuery};
use crate::service::{Memories, Options};
use crate::store::{AnyStore, PgStore, SqliteStore};
use crate::types::{Embedding, Filter, ListQuery, Memory, NewRow, now};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// `None`: a temporary SQLite file; `postgres://...`: a fresh schema there.
    pub database_url: Option<String>,
    /// Memories to load.
    pub memories: usize,
    /// Users they are spread over.
    pub users: usize,
    /// Embedding dimension (384 = all-MiniLM-L6-v2).
    pub dimension: usize,
    /// Memories per insert batch.
    pub batch: usize,
    /// Concurrent clients for the latency phases.
    pub clients: usize,
    /// Operations per client per phase.
    pub ops_per_client: usize,
    /// Keep the vector index tailing during the load (as in production). When
    /// false the load runs on SQL alone and the index is then rebuilt from
    /// SQL at start-up, which is timed instead.
    pub index_during_load: bool,
    /// SQLite read connections.
    pub readers: u32,
    /// PostgreSQL pool size. The default, 2 x cores + 1, is PostgreSQL's own
    /// advice for a server on the same cores: with PostgreSQL beside the
    /// bench on 2 cores, a pool of 20 left 20 backends fighting for them (list
    /// P95 9.0 ms at 20 connections, 5.7-6.3 ms at 5, same throughput).
    pub pg_pool: u32,
    /// Latency phases to run (`list`, `keyword`, `semantic`, `hybrid`); empty: all.
    pub phases: Vec<String>,
    /// Real passages and their embeddings (see the module docs).
    pub corpus: Option<Arc<Corpus>>,
    /// Pause between the load and the latency phases, in which the work a
    /// bulk load leaves behind runs as it would in production: the SQLite
    /// full-text merge (the 5-second upkeep) and the vector index snapshot.
    /// Without it those land inside the first phases, which then measure them.
    pub settle: Duration,
}

/// Passages and the model's embeddings of them, row for row.
#[derive(Debug, Default)]
pub struct Corpus {
    /// The passages.
    pub texts: Vec<String>,
    /// Their embeddings (unit length).
    pub vectors: Vec<Vec<f32>>,
}

/// Passages held back as queries.
const CORPUS_QUERIES: usize = 1000;

impl Corpus {
    /// Reads `{stem}.txt` (one passage per line) and `{stem}.f32` (raw
    /// little-endian f32 rows of `dimension`).
    pub fn load(stem: &str, dimension: usize) -> Result<Self> {
        let io = |e: std::io::Error| MemoryError::Index(format!("corpus {stem}: {e}"));
        let texts: Vec<String> = std::fs::read_to_string(format!("{stem}.txt"))
            .map_err(io)?
            .lines()
            .map(str::to_string)
            .collect();
        let path = std::path::PathBuf::from(format!("{stem}.f32"));
        let rows = std::fs::metadata(&path).map_err(io)?.len() as usize / (dimension * 4);
        if rows != texts.len() || texts.len() <= CORPUS_QUERIES {
            return Err(MemoryError::Index(format!(
                "corpus {stem}: {} passages, {rows} vectors of {dimension}; want equal counts above {CORPUS_QUERIES}",
                texts.len(),
            )));
        }
        let vectors = uat_vector::bench::load_rows(&path, dimension, rows)
            .map_err(|e| MemoryError::Index(format!("corpus {stem}: {e}")))?;
        Ok(Corpus { texts, vectors })
    }

    fn stored(&self) -> usize {
        self.texts.len() - CORPUS_QUERIES
    }

    fn query(&self, i: usize) -> &str {
        &self.texts[self.stored() + i % CORPUS_QUERIES]
    }
}

/// Embeds a corpus passage as the model did (a lookup by text).
struct CorpusEmbedder {
    corpus: Arc<Corpus>,
    by_text: std::collections::HashMap<String, usize>,
}

impl Embedder for CorpusEmbedder {
    fn model(&self) -> &str {
        "bench-precomputed"
    }
    fn dimension(&self) -> usize {
        self.corpus.vectors.first().map_or(0, Vec::len)
    }
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>>> {
        let out = texts
            .iter()
            .map(|t| {
                self.by_text
                    .get(t)
                    .map(|&i| self.corpus.vectors[i].clone())
                    .ok_or_else(|| MemoryError::Index(format!("not a corpus passage: {t}")))
            })
            .collect();
        Box::pin(async move { out })
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            database_url: None,
            memories: 100_000,
            users: 1000,
            dimension: 384,
            batch: 1000,
            clients: 50,
            ops_per_client: 40,
            index_during_load: true,
            phases: Vec::new(),
            readers: 8,
            pg_pool: 2 * std::thread::available_parallelism().map_or(1, |n| n.get() as u32) + 1,
            corpus: None,
            settle: Duration::from_secs(10),
        }
    }
}

/// Latency percentiles of one phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// Operations measured.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Operations per second over the phase.
    pub throughput: f64,
}

/// The results.
#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Memories inserted.
    pub inserted: usize,
    /// Seconds spent inserting (SQL commit of every batch).
    pub insert_seconds: f64,
    /// Memories per second, embedding excluded.
    pub insert_rate: f64,
    /// Seconds until the vector index held every memory (from the start of
    /// the load), or the rebuild from SQL when the index was off during the load.
    pub index_catch_up_seconds: f64,
    /// `list` (first page of 50, newest first).
    pub list: Latency,
    /// Keyword search (top 10).
    pub keyword: Latency,
    /// Semantic search (top 10).
    pub semantic: Latency,
    /// Hybrid search (top 10).
    pub hybrid: Latency,
}

/// Deterministic pseudo-random numbers (xorshift), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn word(i: usize) -> String {
    const SYL: &[&str] = &[
        "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu",
    ];
    format!(
        "{}{}{}",
        SYL[i % 12],
        SYL[(i / 12) % 12],
        SYL[(i / 144) % 12]
    )
}

fn vector(rng: &mut Rng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.unit()).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Query embeddings for the search phases: random unit vectors, computed on
/// call (microseconds), so search latency is the store's and the index's.
struct RandomEmbedder {
    dimension: usize,
    seed: std::sync::atomic::AtomicU64,
}

impl Embedder for RandomEmbedder {
    fn model(&self) -> &str {
        "bench-precomputed"
    }
    fn dimension(&self) -> usize {
        self.dimension
    }
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>>> {
        let s = self
            .seed
            .fetch_add(0x9E37_79B9, std::sync::atomic::Ordering::Relaxed)
            | 1;
        let mut rng = Rng(s);
        let out = texts
            .iter()
            .map(|_| vector(&mut rng, self.dimension))
            .collect();
        Box::pin(async move { Ok(out) })
    }
}

fn latency(mut samples: Vec<Duration>, wall: Duration) -> Latency {
    samples.sort();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
            .copied()
    };
    Latency {
        count: samples.len(),
        p50: at(0.50).unwrap_or_default(),
        p95: at(0.95).unwrap_or_default(),
        p99: at(0.99).unwrap_or_default(),
        throughput: samples.len() as f64 / wall.as_secs_f64().max(1e-9),
    }
}

async fn phase<F, Fut>(clients: usize, ops: usize, f: F) -> Result<Latency>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let f = Arc::new(f);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(ops);
            for i in 0..ops {
                let t = Instant::now();
                f(c, i).await?;
                out.push(t.elapsed());
            }
            Ok::<_, MemoryError>(out)
        }));
    }
    let mut all = Vec::with_capacity(clients * ops);
    for t in tasks {
        all.extend(t.await.map_err(|e| MemoryError::Index(e.to_string()))??);
    }
    Ok(latency(all, start.elapsed()))
}

/// Runs the benchmark; `log` receives progress lines.
pub async fn run(opts: BenchOptions, log: &mut (dyn FnMut(&str) + Send)) -> Result<BenchReport> {
    let dir = std::env::temp_dir().join(format!("uat-memory-bench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).map_err(|e| MemoryError::Index(e.to_string()))?;
    let schema = match &opts.database_url {
        Some(url) if url.starts_with("postgres") => {
            Some((url.clone(), format!("membench_{}", Uuid::new_v4().simple())))
        }
        _ => None,
    };
    let sqlite_url = match &opts.database_url {
        Some(url) if !url.starts_with("postgres") => url.clone(),
        _ => format!("sqlite://{}", dir.join("bench.db").display()),
    };
    let open_store = || async {
        match &schema {
            Some((url, name)) => PgStore::open_in_schema(url, opts.pg_pool.max(1), name)
                .await
                .map(AnyStore::Postgres),
            None => SqliteStore::open(&sqlite_url, opts.readers)
                .await
                .map(AnyStore::Sqlite),
        }
    };
    let embedder: Arc<dyn Embedder> = match &opts.corpus {
        Some(c) => Arc::new(CorpusEmbedder {
            corpus: c.clone(),
            by_text: c
                .texts
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i))
                .collect(),
        }),
        None => Arc::new(RandomEmbedder {
            dimension: opts.dimension,
            seed: 7.into(),
        }),
    };
    let options = Options {
        limits: Limits::default(),
        index_dir: Some(dir.join("index")),
        tail_interval: Duration::from_millis(100),
        ..Options::default()
    };
    let store = open_store().await?;
    let backend = store.backend().to_string();
    let load_embedder = opts.index_during_load.then(|| embedder.clone());
    let mut svc = Arc::new(Memories::open(store, load_embedder, options.clone()).await?);
    log(&format!(
        "{backend}: loading {} memories for {} users, batches of {}",
        opts.memories, opts.users, opts.batch
    ));

    // Precompute every row (content, hash, embedding) before the clock starts.
    let mut rng = Rng(0x5EED);
    let mut batches: Vec<Vec<NewRow>> = Vec::new();
    let mut i = 0;
    while i < opts.memories {
        let n = opts.batch.min(opts.memories - i);
        let at = now();
        let rows = (0..n)
            .map(|k| {
                let id = i + k;
                let (content, vector) = match &opts.corpus {
                    Some(c) => {
                        let j = id % c.stored();
                        (c.texts[j].clone(), c.vectors[j].clone())
                    }
                    None => {
                        let words: Vec<String> = (0..12).map(|_| word(rng.below(1500))).collect();
                        (
                            format!("{} ord{id}", words.join(" ")),
                            vector(&mut rng, opts.dimension),
                        )
                    }
                };
                NewRow {
                    content_hash: format!("{id:064x}"),
                    dedupe: true,
                    embedding: Some(Embedding {
                        model: "bench-precomputed".into(),
                        vector,
                    }),
                    memory: Memory {
                        id: Uuid::now_v7(),
                        user_id: format!("user{}", id % opts.users),
                        agent_id: None,
                        run_id: None,
                        kind: Some(if id % 3 == 0 { "episode" } else { "fact" }.into()),
                        content,
                        tags: vec![format!("t{}", id % 10)],
                        metadata: serde_json::Map::new(),
                        created_at: at,
                        updated_at: at,
                        expires_at: None,
                    },
                }
            })
            .collect();
        batches.push(rows);
        i += n;
    }
    let start = Instant::now();
    let mut inserted = 0;
    for b in batches {
        inserted += svc.insert_rows(b).await?.len();
    }
    let insert_seconds = start.elapsed().as_secs_f64();
    log(&format!(
        "inserted {inserted} in {insert_seconds:.2} s = {:.0}/s",
        inserted as f64 / insert_seconds
    ));
    let index_catch_up_seconds = if opts.index_during_load {
        let caught = svc.sync_index(Duration::from_secs(1800)).await?;
        let t = start.elapsed().as_secs_f64();
        log(&format!(
            "vector index caught up: {caught} after {t:.1} s from the start of the load"
        ));
        t
    } else {
        drop(svc);
        let t = Instant::now();
        svc = Arc::new(
            Memories::open(open_store().await?, Some(embedder.clone()), options.clone()).await?,
        );
        let t = t.elapsed().as_secs_f64();
        log(&format!(
            "vector index rebuilt from SQL at start-up in {t:.1} s"
        ));
        t
    };
    if let AnyStore::Postgres(pg) = svc.store() {
        // What autovacuum does on its own after a bulk load (it vacuums on
        // inserts too): statistics, and the GIN pending list merged.
        sqlx::query("VACUUM ANALYZE memories")
            .execute(pg.pool())
            .await?;
    }
    if !opts.settle.is_zero() {
        log(&format!(
            "settling {:?} (full-text merge, index snapshot)",
            opts.settle
        ));
        tokio::time::sleep(opts.settle).await;
    }
    let users = opts.users;
    let q = |user: usize, mode: SearchMode, text: String| SearchQuery {
        filter: Filter {
            user_id: format!("user{user}"),
            ..Filter::default()
        },
        query: text,
        top_k: 10,
        mode,
        min_score: None,
    };
    let wanted = |name: &str| opts.phases.is_empty() || opts.phases.iter().any(|p| p == name);
    let s = svc.clone();
    let list = if !wanted("list") {
        Latency::default()
    } else {
        phase(opts.clients, opts.ops_per_client, move |c, i| {
            let s = s.clone();
            async move {
                let lq = ListQuery {
                    filter: Filter {
                        user_id: format!("user{}", (c * 7919 + i * 31) % users),
                        ..Filter::default()
                    },
                    limit: 50,
                    cursor: None,
                };
                s.list(&lq).await.map(|_| ())
            }
        })
        .await?
    };
    log(&format!(
        "list     p50 {:?} p95 {:?} p99 {:?} ({:.0}/s)",
        list.p50, list.p95, list.p99, list.throughput
    ));
    let mut out = BenchReport {
        backend,
        inserted,
        insert_seconds,
        insert_rate: inserted as f64 / insert_seconds,
        index_catch_up_seconds,
        list,
        ..BenchReport::default()
    };
    for mode in [
        SearchMode::Keyword,
        SearchMode::Semantic,
        SearchMode::Hybrid,
    ] {
        if !wanted(&format!("{mode:?}").to_lowercase()) {
            continue;
        }
        let s = svc.clone();
        let corpus = opts.corpus.clone();
        let lat = phase(opts.clients, opts.ops_per_client, move |c, i| {
            let s = s.clone();
            let text = match &corpus {
                Some(corpus) => corpus.query(c * 7919 + i * 31).to_string(),
                None => format!(
                    "{} {}",
                    word((c * 13 + i * 7) % 1500),
                    word((c * 29 + i * 11) % 1500)
                ),
            };
            let query = q((c * 7919 + i * 31) % users, mode, text);
            async move { s.search(&query).await.map(|_| ()) }
        })
        .await?;
        log(&format!(
            "{mode:<8?} p50 {:?} p95 {:?} p99 {:?} ({:.0}/s)",
            lat.p50, lat.p95, lat.p99, lat.throughput
        ));
        match mode {
            SearchMode::Keyword => out.keyword = lat,
            SearchMode::Semantic => out.semantic = lat,
            SearchMode::Hybrid => out.hybrid = lat,
        }
    }
    drop(svc);
    if let Some((url, schema)) = &schema
        && let Ok(pool) = sqlx::PgPool::connect(url).await
    {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&pool)
            .await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}
