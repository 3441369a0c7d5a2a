//! The dynamic batcher: batching, budget, overload.

use crate::common;
use crate::tiny::{self, SENTENCES, Tiny};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use uat_embed::{Batcher, BatcherConfig, ComputePool, EmbedError, EmbeddingBackend, ModelInfo};

fn cfg(max_wait_ms: u64) -> BatcherConfig {
    BatcherConfig {
        batch_tokens: 8192,
        max_batch_size: 64,
        max_wait: Duration::from_millis(max_wait_ms),
        queue_capacity: 1024,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_forward_passes_and_match_unbatched() {
    let (_dir, _w, b) = tiny::load(Tiny::default());
    let backend: Arc<dyn EmbeddingBackend> = Arc::new(b);
    let texts: Vec<String> = (0..40)
        .map(|i| SENTENCES[i % SENTENCES.len()].to_string())
        .collect();
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| backend.tokenize(t, true).unwrap())
        .collect();
    // The unbatched answers, one forward pass each.
    let alone: Vec<Vec<f32>> = ids
        .iter()
        .map(|s| backend.embed_ids(&[s]).unwrap().remove(0))
        .collect();

    let pool = ComputePool::new(1).unwrap();
    let batcher = Arc::new(Batcher::new("tiny", Arc::clone(&backend), pool, cfg(50)).unwrap());
    let passes_before = backend.forward_passes();
    let tasks: Vec<_> = ids
        .iter()
        .map(|s| {
            let fut = batcher.embed(vec![s.clone()]);
            tokio::spawn(fut)
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap().unwrap().remove(0));
    }
    let passes = backend.forward_passes() - passes_before;
    assert!(
        passes < ids.len() as u64,
        "{passes} forward passes for {} requests",
        ids.len()
    );
    assert_eq!(batcher.batches(), passes);
    for (i, (g, a)) in got.iter().zip(&alone).enumerate() {
        let d = g
            .iter()
            .zip(a)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            d <= 1e-6,
            "request {i} differs from its unbatched result by {d}"
        );
    }
}

#[tokio::test]
async fn a_multi_input_request_keeps_its_order() {
    let (_dir, _w, b) = tiny::load(Tiny::default());
    let backend: Arc<dyn EmbeddingBackend> = Arc::new(b);
    let ids: Vec<Vec<u32>> = SENTENCES
        .iter()
        .map(|t| backend.tokenize(t, true).unwrap())
        .collect();
    let want: Vec<Vec<f32>> = ids
        .iter()
        .map(|s| backend.embed_ids(&[s]).unwrap().remove(0))
        .collect();
    let batcher = Batcher::new(
        "tiny",
        Arc::clone(&backend),
        ComputePool::new(1).unwrap(),
        cfg(1),
    )
    .unwrap();
    let got = batcher.embed(ids).await.unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        let d = g
            .iter()
            .zip(w)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(d <= 1e-6);
    }
    assert!(batcher.embed(Vec::new()).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_input_over_the_token_budget_runs_alone() {
    let (_dir, _w, b) = tiny::load(Tiny::default());
    let backend: Arc<dyn EmbeddingBackend> = Arc::new(b);
    let long = backend.tokenize(SENTENCES[5], true).unwrap();
    let short = backend.tokenize(SENTENCES[0], true).unwrap();
    assert_eq!(long.len(), tiny::MAX_SEQ);
    let budget = BatcherConfig {
        batch_tokens: 8,
        ..cfg(20)
    };
    let batcher = Batcher::new(
        "tiny",
        Arc::clone(&backend),
        ComputePool::new(1).unwrap(),
        budget,
    )
    .unwrap();
    let (a, b2) = tokio::join!(
        batcher.embed(vec![long.clone()]),
        batcher.embed(vec![short.clone(), short.clone()])
    );
    let a = a.unwrap();
    let want = backend.embed_ids(&[&long]).unwrap();
    assert_eq!(a, want);
    assert_eq!(b2.unwrap().len(), 2);
    // 12 tokens alone (over the budget of 8); 2 x 4 = 8 fits one batch.
    assert_eq!(batcher.batches(), 2);
}

/// A backend that blocks inside each `embed_ids` until the test lets it go
/// (a send lets one pass through, dropping the sender all of them), counts
/// its passes and notes the pass in which an input holding `MARK` ran.
struct Gated {
    info: ModelInfo,
    gate: Mutex<mpsc::Receiver<()>>,
    passes: AtomicU64,
    /// The 1-based pass that held `MARK` (0: not yet).
    marked_in: AtomicU64,
}

const MARK: u32 = 7;

impl Gated {
    fn new(max_seq_length: usize) -> (Arc<Self>, mpsc::Sender<()>) {
        let (tx, rx) = mpsc::channel();
        let b = Arc::new(Gated {
            info: common::byte_info(max_seq_length),
            gate: Mutex::new(rx),
            passes: AtomicU64::new(0),
            marked_in: AtomicU64::new(0),
        });
        (b, tx)
    }
}

impl EmbeddingBackend for Gated {
    common::byte_tokens!(info);
    fn embed_ids(&self, seqs: &[&[u32]]) -> uat_embed::Result<Vec<Vec<f32>>> {
        let pass = self.passes.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.gate.lock().unwrap().recv();
        if seqs.iter().any(|s| s.contains(&MARK)) {
            self.marked_in.store(pass, Ordering::SeqCst);
        }
        common::lengths(seqs)
    }
    fn memory_bytes(&self) -> u64 {
        0
    }
    fn forward_passes(&self) -> u64 {
        self.passes.load(Ordering::SeqCst)
    }
}

/// A batcher of one lane whose queue holds 3 inputs, over a [`Gated`]
/// backend, with the lane held by a first request.
struct HeldLane {
    backend: Arc<Gated>,
    /// A send lets one forward pass finish.
    gate: mpsc::Sender<()>,
    batcher: Batcher,
    /// The request (of one input) inside the held forward pass.
    first: tokio::task::JoinHandle<uat_embed::Result<Vec<Vec<f32>>>>,
}

async fn held_lane() -> HeldLane {
    let (backend, gate) = Gated::new(16);
    let c = BatcherConfig {
        batch_tokens: 4,
        max_batch_size: 1,
        max_wait: Duration::ZERO,
        queue_capacity: 3,
    };
    let batcher = Batcher::new("gated", backend.clone(), ComputePool::new(1).unwrap(), c).unwrap();
    let first = tokio::spawn(batcher.embed(vec![vec![1]]));
    // Wait until the first input is inside the (blocked) forward pass.
    for _ in 0..200 {
        if backend.forward_passes() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(backend.forward_passes(), 1, "the only lane is held");
    HeldLane {
        backend,
        gate,
        batcher,
        first,
    }
}

#[tokio::test]
async fn a_full_queue_is_overloaded_at_once() {
    let HeldLane {
        gate: tx,
        batcher,
        first,
        ..
    } = held_lane().await;
    let queued = batcher.embed(vec![vec![1], vec![1, 2], vec![1, 2, 3]]);
    // The queue now holds 3 inputs: one more is refused before any await.
    match batcher.embed(vec![vec![9]]).await {
        Err(EmbedError::Overloaded { capacity: 3 }) => {}
        other => panic!("expected Overloaded, got {other:?}"),
    }
    for _ in 0..4 {
        tx.send(()).unwrap();
    }
    assert_eq!(first.await.unwrap().unwrap(), vec![vec![1.0]]);
    assert_eq!(queued.await.unwrap(), vec![vec![1.0], vec![2.0], vec![3.0]]);
}

/// Regression: a request with more inputs than the whole queue holds was
/// `Overloaded` (a 503 with Retry-After) even on an empty queue, and retried in
/// vain; it can never fit, so it is the caller's error, naming the limit.
#[tokio::test]
async fn a_request_larger_than_the_queue_is_a_client_error() {
    let (backend, tx) = Gated::new(16);
    let c = BatcherConfig {
        queue_capacity: 3,
        ..cfg(0)
    };
    let batcher = Batcher::new("gated", backend, ComputePool::new(1).unwrap(), c).unwrap();
    let err = batcher
        .embed(vec![vec![1]; 4])
        .await
        .expect_err("4 inputs never fit a queue of 3");
    assert_eq!(err, EmbedError::TooManyInputs { got: 4, max: 3 });
    assert!(err.is_client_error());
    // As many as the queue holds are fine.
    let ok = batcher.embed(vec![vec![1]; 3]);
    tx.send(()).unwrap();
    assert_eq!(ok.await.unwrap(), vec![vec![1.0]; 3]);
}

/// A backend that records how many forward passes run at the same time.
struct Overlap {
    info: ModelInfo,
    running: AtomicU64,
    most: AtomicU64,
    passes: AtomicU64,
    /// Largest padded size (inputs x longest) of one pass.
    widest: AtomicU64,
}

impl Overlap {
    fn new() -> Arc<Self> {
        Arc::new(Overlap {
            info: common::byte_info(64),
            running: AtomicU64::new(0),
            most: AtomicU64::new(0),
            passes: AtomicU64::new(0),
            widest: AtomicU64::new(0),
        })
    }
}

impl EmbeddingBackend for Overlap {
    common::byte_tokens!(info);
    fn embed_ids(&self, seqs: &[&[u32]]) -> uat_embed::Result<Vec<Vec<f32>>> {
        self.passes.fetch_add(1, Ordering::SeqCst);
        let longest = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        self.widest
            .fetch_max((seqs.len() * longest) as u64, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        self.running.fetch_sub(1, Ordering::SeqCst);
        common::lengths(seqs)
    }
    fn memory_bytes(&self) -> u64 {
        0
    }
    fn forward_passes(&self) -> u64 {
        self.passes.load(Ordering::SeqCst)
    }
}

/// A burst on a pool of two lanes is split into two batches that run side by
/// side; one lane never runs two at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_spread_over_every_lane() {
    for (lanes, want_most) in [(2, 2), (1, 1)] {
        let backend = Overlap::new();
        let pool = ComputePool::new(lanes).unwrap();
        assert_eq!(pool.lanes(), lanes);
        let batcher = Batcher::new("overlap", backend.clone(), pool, cfg(20)).unwrap();
        let futs: Vec<_> = (0..32)
            .map(|i| tokio::spawn(batcher.embed(vec![vec![1; 1 + i % 5]])))
            .collect();
        for (i, f) in futs.into_iter().enumerate() {
            assert_eq!(f.await.unwrap().unwrap(), vec![vec![(1 + i % 5) as f32]]);
        }
        assert_eq!(
            backend.most.load(Ordering::SeqCst),
            want_most,
            "{lanes} lane(s): most forward passes at once"
        );
        assert!(backend.forward_passes() < 32, "the burst was batched");
    }
}

/// A burst sent as soon as an earlier request is answered is split over the
/// lanes by work: the lanes share its tokens, not its count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_right_after_a_reply_is_split_by_work() {
    let backend = Overlap::new();
    let pool = ComputePool::new(2).unwrap();
    let batcher = Batcher::new("split", backend.clone(), pool, cfg(20)).unwrap();
    for round in 0..5 {
        assert_eq!(
            batcher.embed(vec![vec![1; 3]]).await.unwrap(),
            vec![vec![3.0]]
        );
        let before = backend.forward_passes();
        // 24 short inputs and 8 long ones.
        let lens: Vec<usize> = (0..32).map(|i| if i % 4 == 3 { 40 } else { 4 }).collect();
        let futs: Vec<_> = lens
            .iter()
            .map(|&n| tokio::spawn(batcher.embed(vec![vec![1; n]])))
            .collect();
        for (f, &n) in futs.into_iter().zip(&lens) {
            assert_eq!(f.await.unwrap().unwrap(), vec![vec![n as f32]]);
        }
        let passes = backend.forward_passes() - before;
        assert!(
            passes >= 2,
            "round {round}: the burst ran as {passes} forward pass(es)"
        );
    }
    assert_eq!(
        backend.most.load(Ordering::SeqCst),
        2,
        "both lanes ran at once"
    );
    // By work: the 24 short inputs in one pass (96 padded tokens), the 8 long
    // ones in another (320). Split 16/16 by count, the second pass padded 8
    // short inputs to 40 (640).
    let widest = backend.widest.load(Ordering::SeqCst);
    assert!(widest <= 320, "widest pass: {widest} padded tokens");
}

/// Regression: every batch was built around the oldest queued input, so all
/// 2,048 inputs of a big request ran before a one-input query queued after it
/// (a query waited 25.5 s behind two such requests). The query now runs in the
/// next batch, and the big request's batches stay full.
#[tokio::test]
async fn a_small_request_is_not_stuck_behind_a_big_one() {
    let (backend, gate) = Gated::new(64);
    let c = BatcherConfig {
        queue_capacity: 4096,
        ..cfg(0)
    };
    let batcher = Batcher::new("fair", backend.clone(), ComputePool::new(1).unwrap(), c).unwrap();
    let big = batcher.embed(vec![vec![1, 2, 3]; 2048]);
    // The first pass (of the big request alone, or with the query) is held
    // until the query is queued, so the order does not depend on timing.
    let small = batcher.embed(vec![vec![MARK, 2, 3]]);
    drop(gate);
    assert_eq!(small.await.unwrap(), vec![vec![3.0]]);
    assert_eq!(big.await.unwrap(), vec![vec![3.0]; 2048]);
    let marked_in = backend.marked_in.load(Ordering::SeqCst);
    let passes = backend.forward_passes();
    // 2,049 inputs of 3 tokens, 64 a batch: 33 full batches.
    assert_eq!(passes, 2049_u64.div_ceil(64), "batches stay full");
    assert!(
        (1..=2).contains(&marked_in),
        "the query ran in pass {marked_in} of {passes}"
    );
}

/// A backend whose first forward pass panics.
struct PanicsOnce {
    info: ModelInfo,
    passes: AtomicU64,
}

impl EmbeddingBackend for PanicsOnce {
    common::byte_tokens!(info);
    fn embed_ids(&self, seqs: &[&[u32]]) -> uat_embed::Result<Vec<Vec<f32>>> {
        if self.passes.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("a bug in the model");
        }
        common::lengths(seqs)
    }
    fn memory_bytes(&self) -> u64 {
        0
    }
    fn forward_passes(&self) -> u64 {
        self.passes.load(Ordering::SeqCst)
    }
}

/// Regression: a panic in a forward pass unwound through the batch thread,
/// which died: its request got a misleading "shutting down" and, with one
/// thread, every later request hung. Now that batch fails with an inference
/// error (a 500) and the thread serves the next one.
#[tokio::test]
async fn a_panic_in_the_model_fails_its_batch_and_the_batcher_carries_on() {
    let backend = Arc::new(PanicsOnce {
        info: common::byte_info(16),
        passes: AtomicU64::new(0),
    });
    let batcher = Batcher::new("panics", backend, ComputePool::new(1).unwrap(), cfg(0)).unwrap();
    match batcher.embed(vec![vec![1, 2]]).await {
        Err(EmbedError::Inference(m)) => assert!(m.contains("a bug in the model"), "{m}"),
        other => panic!("expected an inference error, got {other:?}"),
    }
    // A hang here is the bug; the bound only keeps the test from hanging.
    let second = tokio::time::timeout(Duration::from_secs(30), batcher.embed(vec![vec![1, 2, 3]]))
        .await
        .expect("the batch thread is gone");
    assert_eq!(second.unwrap(), vec![vec![3.0]]);
}

/// Regression: the inputs of requests dropped while queued (clients gone)
/// kept their places until a batch thread woke and discarded them; with every
/// lane busy, a live request found the queue "full" of them and got a 503. A
/// full queue now discards them first.
#[tokio::test]
async fn dropped_requests_give_their_queue_places_back_at_once() {
    let HeldLane {
        backend,
        gate: tx,
        batcher,
        first,
    } = held_lane().await;
    // Three inputs fill the queue; their requests are dropped.
    drop(batcher.embed(vec![vec![1], vec![1, 2]]));
    drop(batcher.embed(vec![vec![1, 2, 3]]));
    assert_eq!(batcher.queued(), 3, "nothing has looked at the queue yet");
    let live = batcher.embed(vec![vec![4, 4]]);
    assert_eq!(batcher.queued(), 1, "the dropped requests' inputs are gone");
    // A reservation finds the places too.
    let reserved = batcher.reserve(2).expect("two places are free");
    assert!(matches!(
        batcher.reserve(1),
        Err(EmbedError::Overloaded { capacity: 3 })
    ));
    drop(reserved);
    tx.send(()).unwrap();
    tx.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), vec![vec![1.0]]);
    assert_eq!(live.await.unwrap(), vec![vec![2.0]]);
    assert_eq!(backend.forward_passes(), 2, "the dropped inputs never ran");
}

/// A reservation counts as queued until it is used or dropped, and the
/// inputs it was taken for always fit.
#[tokio::test]
async fn a_reservation_holds_its_places_until_used_or_dropped() {
    let (backend, tx) = Gated::new(16);
    drop(tx);
    let c = BatcherConfig {
        queue_capacity: 4,
        ..cfg(0)
    };
    let batcher = Batcher::new("reserve", backend, ComputePool::new(1).unwrap(), c).unwrap();
    assert_eq!(
        batcher.reserve(5).err(),
        Some(EmbedError::TooManyInputs { got: 5, max: 4 })
    );
    let three = batcher.reserve(3).unwrap();
    assert_eq!(three.len(), 3);
    assert!(matches!(
        batcher.embed(vec![vec![1]; 2]).await,
        Err(EmbedError::Overloaded { capacity: 4 })
    ));
    let one = batcher.reserve(1).unwrap();
    assert!(matches!(
        batcher.reserve(1),
        Err(EmbedError::Overloaded { .. })
    ));
    drop(one);
    // Used: its inputs are queued in its places, whatever else is held.
    let other = batcher.reserve(1).unwrap();
    assert_eq!(
        three.embed(vec![vec![1], vec![1, 2], vec![1, 2, 3]]).await,
        Ok(vec![vec![1.0], vec![2.0], vec![3.0]])
    );
    drop(other);
    assert_eq!(batcher.embed(vec![vec![1]; 4]).await.unwrap().len(), 4);
}
