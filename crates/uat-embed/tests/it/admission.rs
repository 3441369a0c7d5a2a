//! What the registry does before a request reaches the queue: a full queue
//! refuses it before any tokenizing, large requests tokenize off the async
//! workers, and only as many at once as there are compute threads.

use crate::common;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::ThreadId;
use std::time::Duration;
use uat_config::{EmbeddingModelConfig, EmbeddingsConfig};
use uat_embed::{
    EmbedError, EmbedRequest, EmbeddingBackend, EmbeddingInput, Loader, ModelInfo, Registry,
};

/// A model that counts its tokenizer calls (and where and how many at once
/// they run) and blocks inside `embed_ids` until the test lets it go (a send
/// lets one pass through, dropping the sender all of them).
struct Counting {
    info: ModelInfo,
    /// Texts tokenized.
    tokenized: AtomicU64,
    /// Texts being tokenized now, and the most seen at once.
    tokenizing: AtomicU64,
    most_tokenizing: AtomicU64,
    /// How long each text takes to tokenize.
    delay: Duration,
    /// Threads the tokenizer ran on.
    threads: Mutex<HashSet<ThreadId>>,
    /// Calls of `embed_ids` that have started.
    entered: AtomicU64,
    gate: Mutex<mpsc::Receiver<()>>,
}

impl EmbeddingBackend for Counting {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn tokenize(&self, text: &str, _truncate: bool) -> uat_embed::Result<Vec<u32>> {
        let now = self.tokenizing.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_tokenizing.fetch_max(now, Ordering::SeqCst);
        self.threads
            .lock()
            .unwrap()
            .insert(std::thread::current().id());
        std::thread::sleep(self.delay);
        self.tokenized.fetch_add(1, Ordering::SeqCst);
        self.tokenizing.fetch_sub(1, Ordering::SeqCst);
        Ok(vec![1; text.len().min(8)])
    }
    fn embed_ids(&self, seqs: &[&[u32]]) -> uat_embed::Result<Vec<Vec<f32>>> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let _ = self.gate.lock().unwrap().recv();
        common::lengths(seqs)
    }
    fn memory_bytes(&self) -> u64 {
        1
    }
    fn forward_passes(&self) -> u64 {
        self.entered.load(Ordering::SeqCst)
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    registry: Arc<Registry>,
    model: Arc<Counting>,
    /// Dropped (taken): every forward pass goes through.
    gate: Option<mpsc::Sender<()>>,
}

/// One model "m" served by a [`Counting`] backend.
fn setup(queue_capacity: usize, threads: usize, delay: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EmbeddingsConfig {
        models: vec![EmbeddingModelConfig {
            name: "m".to_string(),
            path: dir.path().to_path_buf(),
            eager: false,
            token_ids: Default::default(),
        }],
        max_wait: Duration::ZERO,
        max_batch_size: 1,
        queue_capacity,
        threads,
        ..EmbeddingsConfig::default()
    };
    let (tx, rx) = mpsc::channel();
    let model = Arc::new(Counting {
        info: common::byte_info(8),
        tokenized: AtomicU64::new(0),
        tokenizing: AtomicU64::new(0),
        most_tokenizing: AtomicU64::new(0),
        delay,
        threads: Mutex::new(HashSet::new()),
        entered: AtomicU64::new(0),
        gate: Mutex::new(rx),
    });
    let loader: Loader = {
        let model = Arc::clone(&model);
        Arc::new(move |_: &Path| Ok(Arc::clone(&model) as Arc<dyn EmbeddingBackend>))
    };
    Setup {
        _dir: dir,
        registry: Arc::new(Registry::with_loader(&cfg, loader).unwrap()),
        model,
        gate: Some(tx),
    }
}

fn texts(t: &[String]) -> EmbedRequest {
    EmbedRequest::new(EmbeddingInput::Texts(t.to_vec()))
}

fn start(
    s: &Setup,
    t: Vec<String>,
) -> tokio::task::JoinHandle<uat_embed::Result<uat_embed::EmbedResponse>> {
    let r = Arc::clone(&s.registry);
    tokio::spawn(async move { r.embed("m", texts(&t)).await })
}

/// Waits until `f` holds.
async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Regression: a request was tokenized in full (on the blocking pool when
/// large) and only then refused by the full queue; under overload every
/// client's retries paid the tokenizing again and starved the forward passes.
/// The queue places are now taken first: a full queue refuses at once, and the
/// tokenizer is never called.
///
/// (A single-threaded runtime: a request's inline tokenizing and its enqueue
/// run in one poll, so "tokenized" means "queued" when the test looks.)
#[tokio::test]
async fn a_full_queue_refuses_a_request_before_tokenizing_it() {
    let mut s = setup(2, 1, Duration::ZERO);
    // One input in the (held) forward pass, two more fill the queue of 2.
    let first = start(&s, vec!["a".into()]);
    until("the first forward pass", || {
        s.model.entered.load(Ordering::SeqCst) == 1
    })
    .await;
    let queued = start(&s, vec!["bb".into(), "ccc".into()]);
    until("the queue to fill", || {
        s.model.tokenized.load(Ordering::SeqCst) == 3
    })
    .await;
    // A large request (tokenized on the blocking pool) and a small one
    // (tokenized inline): both refused, neither tokenized.
    for t in [vec!["x".repeat(5000)], vec!["y".into()]] {
        match s.registry.embed("m", texts(&t)).await {
            Err(EmbedError::Overloaded { capacity: 2 }) => {}
            other => panic!("expected Overloaded, got {other:?}"),
        }
        assert_eq!(
            s.model.tokenized.load(Ordering::SeqCst),
            3,
            "a refused request was tokenized"
        );
    }
    s.gate.take();
    assert_eq!(first.await.unwrap().unwrap().embeddings, vec![vec![1.0]]);
    assert_eq!(
        queued.await.unwrap().unwrap().embeddings,
        vec![vec![2.0], vec![3.0]]
    );
    // The refusals held no places: the queue takes a full request again.
    let again = s
        .registry
        .embed("m", texts(&["dd".into(), "e".into()]))
        .await
        .unwrap();
    assert_eq!(again.embeddings, vec![vec![2.0], vec![1.0]]);
}

/// Regression: each large request tokenized on a blocking thread of its own,
/// as many at once as requests came in (up to 512 threads on a 2-core
/// machine, starving the forward passes). At most one request per compute
/// thread tokenizes now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_tokenize_at_most_one_per_compute_thread() {
    let mut s = setup(4096, 1, Duration::from_millis(40));
    s.gate.take();
    s.registry.load("m").await.unwrap();
    let big = "z".repeat(5000);
    let tasks: Vec<_> = (0..4).map(|_| start(&s, vec![big.clone()])).collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().embeddings, vec![vec![8.0]]);
    }
    assert_eq!(s.model.tokenized.load(Ordering::SeqCst), 4);
    assert_eq!(
        s.model.most_tokenizing.load(Ordering::SeqCst),
        1,
        "requests tokenized at once with one compute thread"
    );
}

/// Regression: only the total text size sent tokenizing off the async
/// worker, so 2,048 one-byte texts were tokenized inline, blocking the
/// worker for the whole request. Many texts now leave it too; a few short
/// ones still run inline.
#[tokio::test]
async fn many_short_texts_are_tokenized_off_the_async_worker() {
    let mut s = setup(4096, 1, Duration::ZERO);
    s.gate.take();
    s.registry.load("m").await.unwrap();
    let here = std::thread::current().id();
    let few = s
        .registry
        .embed("m", texts(&["a".into(), "b".into(), "c".into()]))
        .await
        .unwrap();
    assert_eq!(few.embeddings.len(), 3);
    assert_eq!(
        *s.model.threads.lock().unwrap(),
        HashSet::from([here]),
        "a few short texts are tokenized inline"
    );
    s.model.threads.lock().unwrap().clear();
    let many: Vec<String> = (0..2048).map(|_| "a".to_string()).collect();
    let got = s.registry.embed("m", texts(&many)).await.unwrap();
    assert_eq!(got.embeddings.len(), 2048);
    let threads = s.model.threads.lock().unwrap();
    assert!(
        !threads.contains(&here),
        "2,048 texts were tokenized on the async worker"
    );
}
