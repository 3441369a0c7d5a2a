//! The registry's memory budget while unloaded models still finish requests:
//! fake 1 GiB models that count their live instances and block inside
//! `embed_ids` until the test lets them go.

use crate::common;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use uat_config::{EmbeddingModelConfig, EmbeddingsConfig};
use uat_embed::{
    EmbedError, EmbedRequest, EmbeddingBackend, EmbeddingInput, Loader, ModelInfo, Registry,
};

const GIB: u64 = 1 << 30;
/// A wait for memory no test reaches.
const LONG: Duration = Duration::from_secs(30);

/// Live instances of every fake model together, the most seen at once, and loads.
#[derive(Default)]
struct Counts {
    live: AtomicI64,
    most: AtomicI64,
    loads: AtomicU64,
    /// Calls of `embed_ids` that have started.
    entered: AtomicU64,
}

struct Fake {
    info: ModelInfo,
    counts: Arc<Counts>,
    gate: Arc<Mutex<mpsc::Receiver<()>>>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.counts.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl EmbeddingBackend for Fake {
    common::byte_tokens!(info);
    fn embed_ids(&self, seqs: &[&[u32]]) -> uat_embed::Result<Vec<Vec<f32>>> {
        self.counts.entered.fetch_add(1, Ordering::SeqCst);
        let _ = self.gate.lock().unwrap().recv();
        common::lengths(seqs)
    }
    fn memory_bytes(&self) -> u64 {
        GIB
    }
    fn forward_passes(&self) -> u64 {
        0
    }
}

struct Setup {
    _root: tempfile::TempDir,
    registry: Arc<Registry>,
    counts: Arc<Counts>,
    /// One message lets one `embed_ids` call finish.
    gate: mpsc::Sender<()>,
}

/// Models `names`, each a folder whose (sparse) `model.safetensors` is 1 GiB,
/// so the registry's estimate before loading is right, and a loader of fakes.
/// A load waits at most `budget_wait` for memory.
fn setup(names: &[&str], budget: u64, budget_wait: Duration) -> Setup {
    let root = tempfile::tempdir().unwrap();
    let models = names
        .iter()
        .map(|n| {
            let dir = root.path().join(n);
            std::fs::create_dir_all(&dir).unwrap();
            let f = std::fs::File::create(dir.join("model.safetensors")).unwrap();
            f.set_len(GIB).unwrap();
            EmbeddingModelConfig {
                name: n.to_string(),
                path: dir,
                eager: false,
                token_ids: Default::default(),
            }
        })
        .collect();
    let cfg = EmbeddingsConfig {
        models,
        memory_budget: budget,
        max_wait: Duration::ZERO,
        ..EmbeddingsConfig::default()
    };
    let counts = Arc::new(Counts::default());
    let (tx, rx) = mpsc::channel();
    let gate = Arc::new(Mutex::new(rx));
    let loader: Loader = {
        let counts = Arc::clone(&counts);
        Arc::new(move |_: &Path| {
            counts.loads.fetch_add(1, Ordering::SeqCst);
            let live = counts.live.fetch_add(1, Ordering::SeqCst) + 1;
            counts.most.fetch_max(live, Ordering::SeqCst);
            Ok(Arc::new(Fake {
                info: common::byte_info(64),
                counts: Arc::clone(&counts),
                gate: Arc::clone(&gate),
            }) as Arc<dyn EmbeddingBackend>)
        })
    };
    Setup {
        _root: root,
        registry: Arc::new(
            Registry::with_loader(&cfg, loader)
                .unwrap()
                .with_budget_wait(budget_wait),
        ),
        counts,
        gate: tx,
    }
}

fn text(t: &str) -> EmbedRequest {
    EmbedRequest::new(EmbeddingInput::Texts(vec![t.to_string()]))
}

/// Starts a request on `model` in a task.
fn start(
    s: &Setup,
    model: &'static str,
) -> tokio::task::JoinHandle<uat_embed::Result<uat_embed::EmbedResponse>> {
    let r = Arc::clone(&s.registry);
    tokio::spawn(async move { r.embed(model, text("abc")).await })
}

/// Waits until `n` calls of `embed_ids` have started.
async fn entered(s: &Setup, n: u64) {
    for _ in 0..400 {
        if s.counts.entered.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "only {} of {n} forward passes started",
        s.counts.entered.load(Ordering::SeqCst)
    );
}

fn loaded(r: &Registry) -> Vec<(String, bool)> {
    r.list().into_iter().map(|s| (s.name, s.loaded)).collect()
}

/// Regression: evicting a model with a request in flight only emptied its
/// slot; the request (and the batch thread) kept the model alive while the
/// registry counted its memory as free and loaded the next one on top of it.
/// Now the second load waits until the first model is really gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unloaded_model_still_serving_counts_against_the_budget() {
    let s = setup(&["a", "b"], GIB * 3 / 2, LONG);
    let on_a = start(&s, "a");
    entered(&s, 1).await;
    let on_b = start(&s, "b");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.counts.most.load(Ordering::SeqCst),
        1,
        "b was loaded while a was still serving"
    );
    assert!(!on_b.is_finished(), "b waits for a's memory");
    s.gate.send(()).unwrap();
    assert_eq!(on_a.await.unwrap().unwrap().embeddings, vec![vec![3.0]]);
    entered(&s, 2).await;
    s.gate.send(()).unwrap();
    assert_eq!(on_b.await.unwrap().unwrap().embeddings, vec![vec![3.0]]);
    assert_eq!(s.counts.most.load(Ordering::SeqCst), 1);
    assert_eq!(s.counts.loads.load(Ordering::SeqCst), 2);
    assert_eq!(
        loaded(&s.registry),
        vec![("a".into(), false), ("b".into(), true)]
    );
    assert_eq!(s.registry.loaded_bytes(), GIB);
}

/// A load that cannot fit within the bounded wait fails with a clear error
/// (a 503 for the server) instead of loading past the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_cannot_fit_in_time_is_refused_clearly() {
    let s = setup(&["a", "b"], GIB * 3 / 2, Duration::from_millis(200));
    let on_a = start(&s, "a");
    entered(&s, 1).await;
    let err = tokio::time::timeout(Duration::from_secs(10), s.registry.embed("b", text("x")))
        .await
        .expect("b was neither refused nor loaded in time")
        .unwrap_err();
    match &err {
        EmbedError::MemoryBudget {
            model,
            needed,
            budget,
        } => {
            assert_eq!((model.as_str(), *needed, *budget), ("b", GIB, GIB * 3 / 2));
        }
        other => panic!("expected MemoryBudget, got {other:?}"),
    }
    assert!(!err.is_client_error());
    assert_eq!(s.counts.most.load(Ordering::SeqCst), 1);
    // a keeps serving; its memory is still counted.
    assert_eq!(s.registry.loaded_bytes(), GIB);
    s.gate.send(()).unwrap();
    on_a.await.unwrap().unwrap();
    // Once a is gone, b loads.
    let on_b = start(&s, "b");
    entered(&s, 2).await;
    s.gate.send(()).unwrap();
    on_b.await.unwrap().unwrap();
    assert_eq!(s.counts.most.load(Ordering::SeqCst), 1);
}

/// A model unloaded while a request is in flight is put back, not loaded a
/// second time, when it is asked for again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unloaded_model_still_serving_is_revived_not_loaded_twice() {
    let s = setup(&["a"], 3 * GIB, LONG);
    let first = start(&s, "a");
    entered(&s, 1).await;
    assert!(s.registry.unload("a").unwrap());
    assert!(!s.registry.status_of("a").unwrap().loaded);
    assert_eq!(s.registry.loaded_bytes(), GIB, "still serving");
    let second = start(&s, "a");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(s.registry.status_of("a").unwrap().loaded, "revived");
    s.gate.send(()).unwrap();
    s.gate.send(()).unwrap();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(s.counts.loads.load(Ordering::SeqCst), 1);
    assert_eq!(s.counts.most.load(Ordering::SeqCst), 1);
}

/// A model put back in service while a load waits for it to go is unloaded
/// again, so the load goes ahead once its requests are done (it used to wait
/// for a model that would never go).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_waiting_for_a_revived_model_still_gets_its_turn() {
    let s = setup(&["a", "b"], GIB * 3 / 2, LONG);
    let first_on_a = start(&s, "a");
    entered(&s, 1).await;
    let on_b = start(&s, "b");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // b waits for a, which is unloaded; a new request on a puts it back.
    let second_on_a = start(&s, "a");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.counts.loads.load(Ordering::SeqCst), 1);
    for _ in 0..3 {
        s.gate.send(()).unwrap();
    }
    first_on_a.await.unwrap().unwrap();
    second_on_a.await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(10), on_b)
        .await
        .expect("b still waits for a, idle in service")
        .unwrap()
        .unwrap();
    assert_eq!(s.counts.most.load(Ordering::SeqCst), 1);
    assert_eq!(s.counts.loads.load(Ordering::SeqCst), 2);
}

/// To make room, an idle model goes before a busier one used less recently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_prefers_models_without_requests_in_flight() {
    let s = setup(&["a", "b", "c"], GIB * 5 / 2, LONG);
    let on_a = start(&s, "a");
    entered(&s, 1).await;
    s.registry.load("b").await.unwrap();
    // a is the least recently used but busy; b is idle.
    s.registry.load("c").await.unwrap();
    assert_eq!(
        loaded(&s.registry),
        vec![("a".into(), true), ("b".into(), false), ("c".into(), true)]
    );
    assert_eq!(s.counts.most.load(Ordering::SeqCst), 2);
    s.gate.send(()).unwrap();
    on_a.await.unwrap().unwrap();
}
