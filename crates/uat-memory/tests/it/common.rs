//! Harness: a fresh store (SQLite file or PostgreSQL schema) and a fake,
//! deterministic embedder with real semantic structure.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use uat_memory::{AnyStore, BoxFuture, Embedder, Limits, Memories, Options, PgStore, SqliteStore};

/// Concepts the fake model knows; synonyms share a dimension, as they would
/// lie close together in a real sentence model. Words it does not know (names,
/// codes, order numbers) contribute nothing, as rare codes carry little
/// meaning in a real model either.
const CONCEPTS: &[&[&str]] = &[
    &[
        "car",
        "cars",
        "automobile",
        "automobiles",
        "vehicle",
        "vehicles",
        "drive",
        "drives",
        "driving",
        "sedan",
    ],
    &[
        "like",
        "likes",
        "prefer",
        "prefers",
        "enjoy",
        "enjoys",
        "love",
        "loves",
        "favourite",
        "favorite",
    ],
    &["bicycle", "bicycles", "bike", "bikes", "cycling"],
    &[
        "food", "pasta", "pizza", "eat", "eats", "meal", "dinner", "lunch",
    ],
    &[
        "order",
        "orders",
        "purchase",
        "purchased",
        "shipped",
        "shipping",
        "delivery",
        "package",
    ],
    &["dog", "dogs", "puppy", "cat", "cats", "pet", "pets", "sofa"],
    &["office", "work", "job", "commute", "employer"],
    &["music", "song", "songs", "guitar", "jazz"],
    &["weather", "rain", "sunny", "snow", "forecast"],
];

/// Dimension of the fake model.
pub const DIM: usize = 16;

/// A bag-of-concepts embedder. Counts its calls (failed ones too), and
/// fails them on demand.
#[derive(Default)]
pub struct FakeEmbedder {
    pub calls: AtomicUsize,
    /// While set, every call fails with `MemoryError::Embedding` (the model
    /// down or overloaded).
    pub fail: AtomicBool,
    /// While set, every call fails with `MemoryError::Invalid` (an error of
    /// another kind: the model refusing the input).
    pub refuse: AtomicBool,
}

impl FakeEmbedder {
    pub fn new() -> FakeEmbedder {
        FakeEmbedder::default()
    }

    /// Makes every call fail (`MemoryError::Embedding`) while `on`.
    pub fn set_failing(&self, on: bool) {
        self.fail.store(on, Ordering::SeqCst);
    }

    pub fn vector(text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; DIM];
        v[0] = 0.1;
        for w in text.split(|c: char| !c.is_alphanumeric()) {
            let w = w.to_lowercase();
            if let Some(i) = CONCEPTS.iter().position(|c| c.contains(&w.as_str())) {
                v[i + 1] += 1.0;
            }
        }
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }
}

impl Embedder for FakeEmbedder {
    fn model(&self) -> &str {
        "fake-concepts"
    }
    fn dimension(&self) -> usize {
        DIM
    }
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, uat_memory::Result<Vec<Vec<f32>>>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let fail = self.fail.load(Ordering::SeqCst);
        let refuse = self.refuse.load(Ordering::SeqCst);
        Box::pin(async move {
            if fail {
                return Err(uat_memory::MemoryError::Embedding(
                    "the model is overloaded".into(),
                ));
            }
            if refuse {
                return Err(uat_memory::MemoryError::invalid(
                    "content",
                    "the model refuses this input",
                ));
            }
            Ok(texts.iter().map(|t| Self::vector(t)).collect())
        })
    }
}

/// Another model of the same dimension, whose vectors differ from the
/// fake's (its concepts in reverse order).
pub struct OlderModel;

impl Embedder for OlderModel {
    fn model(&self) -> &str {
        "older-model"
    }
    fn dimension(&self) -> usize {
        DIM
    }
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, uat_memory::Result<Vec<Vec<f32>>>> {
        Box::pin(async move {
            Ok(texts
                .iter()
                .map(|t| {
                    let mut v = FakeEmbedder::vector(t);
                    v.reverse();
                    v
                })
                .collect())
        })
    }
}

/// The fake model, failing its first `failures` calls (a model still loading
/// or briefly unreachable).
pub struct FlakyEmbedder {
    pub failures: AtomicUsize,
    pub calls: AtomicUsize,
}

impl Embedder for FlakyEmbedder {
    fn model(&self) -> &str {
        "fake-concepts"
    }
    fn dimension(&self) -> usize {
        DIM
    }
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, uat_memory::Result<Vec<Vec<f32>>>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let fail = self
            .failures
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        Box::pin(async move {
            if fail {
                return Err(uat_memory::MemoryError::Embedding(
                    "the model is loading".into(),
                ));
            }
            Ok(texts.iter().map(|t| FakeEmbedder::vector(t)).collect())
        })
    }
}

/// The fake model, taking `delay` over any batch holding a text with the
/// word "slow" (a model under load, a big batch).
pub struct SlowEmbedder {
    pub delay: Duration,
}

impl Embedder for SlowEmbedder {
    fn model(&self) -> &str {
        "fake-concepts"
    }
    fn dimension(&self) -> usize {
        DIM
    }
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, uat_memory::Result<Vec<Vec<f32>>>> {
        Box::pin(async move {
            if texts.iter().any(|t| t.contains("slow")) {
                tokio::time::sleep(self.delay).await;
            }
            Ok(texts.iter().map(|t| FakeEmbedder::vector(t)).collect())
        })
    }
}

pub fn pg_url() -> String {
    std::env::var("UAT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// True in CI, where an unreachable PostgreSQL is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

pub enum Backend {
    Sqlite { url: String },
    Postgres { url: String, schema: String },
}

pub struct Harness {
    pub svc: Memories,
    pub embedder: Arc<FakeEmbedder>,
    pub backend: Backend,
    pub dir: tempfile::TempDir,
}

pub fn options(index_dir: PathBuf) -> Options {
    Options {
        limits: Limits::default(),
        index_dir: Some(index_dir),
        tail_interval: Duration::from_millis(50),
        // Tests purge when they mean to (`Memories::purge`).
        purge_interval: None,
        ..Options::default()
    }
}

impl Harness {
    pub async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("uat.db").display());
        let store = AnyStore::Sqlite(SqliteStore::open(&url, 4).await.unwrap());
        Self::finish(store, dir, Backend::Sqlite { url }).await
    }

    /// `None` (loudly) when PostgreSQL is unreachable outside CI.
    pub async fn postgres() -> Option<Harness> {
        let url = pg_url();
        let schema = format!("memtest_{}", uuid::Uuid::new_v4().simple());
        let store = match PgStore::open_in_schema(&url, 8, &schema).await {
            Ok(s) => s,
            Err(e) if !in_ci() => {
                eprintln!(
                    "SKIPPED: PostgreSQL at {url} is unreachable ({e}); set CI=true to make this a failure"
                );
                return None;
            }
            Err(e) => panic!("PostgreSQL at {url} is unreachable in CI: {e}"),
        };
        let dir = tempfile::tempdir().unwrap();
        Some(
            Self::finish(
                AnyStore::Postgres(store),
                dir,
                Backend::Postgres { url, schema },
            )
            .await,
        )
    }

    async fn finish(store: AnyStore, dir: tempfile::TempDir, backend: Backend) -> Harness {
        let embedder = Arc::new(FakeEmbedder::new());
        let index_dir = dir.path().join("index");
        let svc = Memories::open(
            store,
            Some(embedder.clone() as Arc<dyn Embedder>),
            options(index_dir),
        )
        .await
        .unwrap();
        Harness {
            svc,
            embedder,
            backend,
            dir,
        }
    }

    /// A second service on the same database (another replica), with its own index folder.
    pub async fn replica(&self, name: &str) -> Memories {
        let e = Arc::new(FakeEmbedder::new());
        self.open_service(Some(e as Arc<dyn Embedder>), name).await
    }

    /// Another service on the same database (another replica, or this one
    /// restarted) with `embedder` (none: keyword search only), with its own
    /// index folder `name`.
    pub async fn open_service(&self, embedder: Option<Arc<dyn Embedder>>, name: &str) -> Memories {
        let store = match &self.backend {
            Backend::Sqlite { url } => AnyStore::Sqlite(SqliteStore::open(url, 4).await.unwrap()),
            Backend::Postgres { url, schema } => {
                AnyStore::Postgres(PgStore::open_in_schema(url, 8, schema).await.unwrap())
            }
        };
        Memories::open(store, embedder, options(self.dir.path().join(name)))
            .await
            .unwrap()
    }

    /// A store on an empty database of its own (a new SQLite file, or a new
    /// PostgreSQL schema that `cleanup` drops), with no service on it: no
    /// background task touches it.
    pub async fn bare_store(&self) -> AnyStore {
        match &self.backend {
            Backend::Sqlite { .. } => {
                let url = format!("sqlite://{}", self.dir.path().join("bare.db").display());
                AnyStore::Sqlite(SqliteStore::open(&url, 4).await.unwrap())
            }
            Backend::Postgres { url, schema } => AnyStore::Postgres(
                PgStore::open_in_schema(url, 8, &format!("{schema}_bare"))
                    .await
                    .unwrap(),
            ),
        }
    }

    pub async fn cleanup(self) {
        if let Backend::Postgres { url, schema } = &self.backend {
            drop(self.svc);
            if let Ok(pool) = sqlx::PgPool::connect(url).await {
                for s in [schema.clone(), format!("{schema}_bare")] {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
                        .execute(&pool)
                        .await;
                }
            }
        }
    }
}
