//! The dynamic batcher: concurrent requests queue their inputs, one dedicated
//! thread per model forms batches by a token budget, grouped by length, and runs
//! them on a bounded compute pool.
//!
//! Life of an input: [`Batcher::embed`] checks the queue capacity (a full queue is
//! [`EmbedError::Overloaded`] at once; a request larger than the whole queue is
//! [`EmbedError::TooManyInputs`]), appends the inputs and returns a future.
//! The batch thread wakes, waits at most `max_wait` after the oldest input arrived
//! (less if a full batch is already queued), then takes the oldest input plus the
//! queued inputs closest to it in length while `longest x count <= batch_tokens`
//! and `count <= max_batch_size` (an input over the budget runs alone). The batch
//! runs on a lane of the [`ComputePool`]; each result goes back to its request,
//! which completes when its last input is done.
//!
//! Lanes: a pool of `threads` threads has `threads` lanes, one thread each, and
//! a batcher runs one batch thread per lane. Batches run side by side, one per
//! lane (data parallel), rather than one batch split across every thread: the
//! small matrices of short inputs split badly, whole batches do not. A batch
//! thread that forms a batch while other lanes sit idle takes only its share
//! of the queue, so a burst is spread over every lane.

use crate::backend::EmbeddingBackend;
use crate::error::{EmbedError, Result};
use crate::metrics;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How batches are formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatcherConfig {
    /// Padded tokens (longest x count) in one batch.
    pub batch_tokens: usize,
    /// Inputs in one batch.
    pub max_batch_size: usize,
    /// Longest the oldest queued input waits for its batch to fill.
    pub max_wait: Duration,
    /// Inputs that may wait; past it requests fail with [`EmbedError::Overloaded`].
    pub queue_capacity: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        BatcherConfig::from(&uat_config::EmbeddingsConfig::default())
    }
}

impl From<&uat_config::EmbeddingsConfig> for BatcherConfig {
    fn from(c: &uat_config::EmbeddingsConfig) -> Self {
        BatcherConfig {
            batch_tokens: c.batch_tokens.max(1),
            max_batch_size: c.max_batch_size.max(1),
            max_wait: c.max_wait,
            queue_capacity: c.queue_capacity.max(1),
        }
    }
}

/// The bounded pool of dedicated threads where forward passes run (never tokio's
/// workers). Shared by every model of a registry, so at most `threads` threads
/// compute at once whatever the number of loaded models.
pub struct ComputePool {
    pool: rayon::ThreadPool,
    /// One single-thread pool per lane; a batch holds one while it computes.
    lanes: Mutex<Vec<rayon::ThreadPool>>,
    lane_free: Condvar,
    lane_count: usize,
}

impl ComputePool {
    /// A pool of `threads` threads (at least 1), named `uat-embed-N`.
    pub fn new(threads: usize) -> Result<Arc<ComputePool>> {
        let threads = threads.max(1);
        let start = |e: rayon::ThreadPoolBuildError| {
            EmbedError::Inference(format!("cannot start compute threads: {e}"))
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("uat-embed-{i}"))
            .build()
            .map_err(start)?;
        let lanes = (0..threads)
            .map(|lane| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| format!("uat-embed-lane-{lane}"))
                    .build()
                    .map_err(start)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(ComputePool {
            pool,
            lanes: Mutex::new(lanes),
            lane_free: Condvar::new(),
            lane_count: threads,
        }))
    }

    /// Lanes: batches that may compute at once, one thread each.
    pub fn lanes(&self) -> usize {
        self.lane_count
    }

    /// Runs `f` on a free lane (one thread; waits for one when all are busy)
    /// and blocks the calling thread until it returns.
    pub fn run_lane<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let lane = {
            let mut free = self.lanes.lock();
            loop {
                if let Some(l) = free.pop() {
                    break l;
                }
                self.lane_free.wait(&mut free);
            }
        };
        // Handed back even if `f` panics.
        struct Back<'a>(&'a ComputePool, Option<rayon::ThreadPool>);
        impl Drop for Back<'_> {
            fn drop(&mut self) {
                if let Some(l) = self.1.take() {
                    self.0.lanes.lock().push(l);
                    self.0.lane_free.notify_one();
                }
            }
        }
        let back = Back(self, Some(lane));
        match &back.1 {
            Some(l) => l.install(f),
            None => f(),
        }
    }

    /// Threads in the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `f` on the whole pool and blocks the calling thread until it
    /// returns. Matrix products inside `f` split across the pool's threads only.
    /// (The batcher uses [`ComputePool::run_lane`]; this is for one-off work
    /// such as benchmarks of a single batch.)
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>>>;
type Pending = oneshot::Receiver<Result<Vec<Vec<f32>>>>;

/// One request's inputs in flight.
struct Slot {
    state: Mutex<SlotState>,
}

struct SlotState {
    results: Vec<Vec<f32>>,
    remaining: usize,
    reply: Option<Reply>,
}

impl Slot {
    fn cancelled(&self) -> bool {
        self.state
            .lock()
            .reply
            .as_ref()
            .is_none_or(|r| r.is_closed())
    }

    fn complete(&self, index: usize, v: Vec<f32>) {
        let mut s = self.state.lock();
        if let Some(r) = s.results.get_mut(index) {
            *r = v;
        }
        s.remaining = s.remaining.saturating_sub(1);
        if s.remaining == 0
            && let Some(reply) = s.reply.take()
        {
            let results = std::mem::take(&mut s.results);
            let _ = reply.send(Ok(results));
        }
    }

    fn fail(&self, e: &EmbedError) {
        if let Some(reply) = self.state.lock().reply.take() {
            let _ = reply.send(Err(e.clone()));
        }
    }
}

struct Item {
    ids: Vec<u32>,
    enqueued: Instant,
    slot: Arc<Slot>,
    index: usize,
}

struct Queue {
    items: VecDeque<Item>,
    tokens: usize,
    closed: bool,
    /// Batch threads computing now.
    busy: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    backend: Arc<dyn EmbeddingBackend>,
    pool: Arc<ComputePool>,
    cfg: BatcherConfig,
    batches: AtomicU64,
    /// Batch threads (one per lane).
    workers: usize,
}

/// Batches concurrent requests for one model. Dropping it stops accepting work;
/// its thread finishes the queued inputs, then exits.
pub struct Batcher {
    shared: Arc<Shared>,
}

impl Batcher {
    /// Starts the batch thread for `backend`; `name` labels the thread.
    pub fn new(
        name: &str,
        backend: Arc<dyn EmbeddingBackend>,
        pool: Arc<ComputePool>,
        cfg: BatcherConfig,
    ) -> Result<Batcher> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                tokens: 0,
                closed: false,
                busy: 0,
            }),
            wake: Condvar::new(),
            workers: pool.lanes(),
            backend,
            pool,
            cfg,
            batches: AtomicU64::new(0),
        });
        for i in 0..shared.workers {
            let worker = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("uat-embed-batch-{name}-{i}"))
                .spawn(move || worker.run())
                .map_err(|e| EmbedError::Inference(format!("cannot start batch thread: {e}")))?;
        }
        Ok(Batcher { shared })
    }

    /// Queues `inputs` (token ids, as from [`crate::prepare`]) and resolves to one
    /// vector per input, in order. A full queue fails at once with
    /// [`EmbedError::Overloaded`], before the future is polled; more inputs than
    /// the queue's whole capacity with [`EmbedError::TooManyInputs`].
    pub fn embed(
        &self,
        inputs: Vec<Vec<u32>>,
    ) -> impl Future<Output = Result<Vec<Vec<f32>>>> + Send + 'static {
        let rx = self.enqueue(inputs);
        async move {
            match rx? {
                None => Ok(Vec::new()),
                Some(rx) => rx.await.map_err(|_| EmbedError::ShuttingDown)?,
            }
        }
    }

    fn enqueue(&self, inputs: Vec<Vec<u32>>) -> Result<Option<Pending>> {
        if inputs.is_empty() {
            return Ok(None);
        }
        let n = inputs.len();
        let (tx, rx) = oneshot::channel();
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                results: vec![Vec::new(); n],
                remaining: n,
                reply: Some(tx),
            }),
        });
        let now = Instant::now();
        {
            let mut q = self.shared.queue.lock();
            if q.closed {
                return Err(EmbedError::ShuttingDown);
            }
            // A request the whole queue cannot hold would never fit: the
            // caller's error, not a 503 to retry. (The config requires a
            // capacity of at least `MAX_INPUTS`; a hand-built config may not.)
            if n > self.shared.cfg.queue_capacity {
                return Err(EmbedError::TooManyInputs {
                    got: n,
                    max: self.shared.cfg.queue_capacity,
                });
            }
            if q.items.len() + n > self.shared.cfg.queue_capacity {
                return Err(EmbedError::Overloaded {
                    capacity: self.shared.cfg.queue_capacity,
                });
            }
            for (index, ids) in inputs.into_iter().enumerate() {
                q.tokens += ids.len();
                q.items.push_back(Item {
                    ids,
                    enqueued: now,
                    slot: Arc::clone(&slot),
                    index,
                });
            }
        }
        self.shared.wake.notify_one();
        Ok(Some(rx))
    }

    /// Batches (forward calls) run so far.
    pub fn batches(&self) -> u64 {
        self.shared.batches.load(Ordering::Relaxed)
    }

    /// Inputs waiting now.
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().items.len()
    }

    /// The model behind this batcher.
    pub fn backend(&self) -> &Arc<dyn EmbeddingBackend> {
        &self.shared.backend
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

impl Shared {
    fn run(&self) {
        loop {
            let batch = {
                let mut q = self.queue.lock();
                loop {
                    if q.items.is_empty() {
                        if q.closed {
                            return;
                        }
                        self.wake.wait(&mut q);
                        continue;
                    }
                    // The oldest input is at the front.
                    let deadline = q.items.front().map(|i| i.enqueued + self.cfg.max_wait);
                    let full = q.items.len() >= self.cfg.max_batch_size
                        || q.tokens >= self.cfg.batch_tokens;
                    match deadline {
                        Some(d) if !full && !q.closed && Instant::now() < d => {
                            self.wake.wait_until(&mut q, d);
                        }
                        _ => break,
                    }
                }
                // With other lanes idle, take only this lane's share of the
                // work (tokens, not inputs: a burst of mixed lengths split by
                // count gave one lane the short inputs and the other the long
                // ones, and the lanes overlapped for a third of the time).
                let idle = self.workers.saturating_sub(q.busy).max(1);
                let share = if idle > 1 {
                    q.tokens.div_ceil(idle)
                } else {
                    usize::MAX
                };
                let batch = take_batch(&mut q, &self.cfg, share);
                if !q.items.is_empty() {
                    self.wake.notify_one();
                }
                if !batch.is_empty() {
                    q.busy += 1;
                }
                batch
            };
            if !batch.is_empty() {
                self.execute(batch);
            }
        }
    }

    fn execute(&self, batch: Vec<Item>) {
        let now = Instant::now();
        for item in &batch {
            metrics::queued(now.duration_since(item.enqueued));
        }
        let longest = batch.iter().map(|i| i.ids.len()).max().unwrap_or(0);
        let tokens: usize = batch.iter().map(|i| i.ids.len()).sum();
        let refs: Vec<&[u32]> = batch.iter().map(|i| i.ids.as_slice()).collect();
        self.batches.fetch_add(1, Ordering::Relaxed);
        let backend = &self.backend;
        let started = Instant::now();
        let result = self.pool.run_lane(|| backend.embed_ids(&refs));
        // The lane is free before the replies go out: a client answered here
        // may send its next burst at once, and it must find the lane counted
        // idle (else that burst was taken whole by one lane).
        self.queue.lock().busy -= 1;
        metrics::batch(
            batch.len(),
            longest * batch.len(),
            tokens,
            started.elapsed(),
        );
        match result {
            Ok(vectors) if vectors.len() == batch.len() => {
                for (item, v) in batch.iter().zip(vectors) {
                    item.slot.complete(item.index, v);
                }
            }
            Ok(vectors) => {
                let e = EmbedError::Inference(format!(
                    "backend returned {} vectors for {} inputs",
                    vectors.len(),
                    batch.len()
                ));
                batch.iter().for_each(|i| i.slot.fail(&e));
            }
            Err(e) => {
                tracing::error!(error = %e, batch = batch.len(), "embedding batch failed");
                batch.iter().for_each(|i| i.slot.fail(&e));
            }
        }
    }
}

/// Removes the next batch from the queue: the oldest live input, then its
/// neighbours in length order while the budget (the smaller of
/// `batch_tokens` and `share`, in padded tokens) allows. Inputs whose
/// request was dropped are discarded.
fn take_batch(q: &mut Queue, cfg: &BatcherConfig, share: usize) -> Vec<Item> {
    let max_items = cfg.max_batch_size.max(1);
    let budget = cfg.batch_tokens.min(share);
    let before = q.items.len();
    q.items.retain(|i| !i.slot.cancelled());
    if q.items.len() != before {
        q.tokens = q.items.iter().map(|i| i.ids.len()).sum();
    }
    if q.items.is_empty() {
        return Vec::new();
    }
    let len = |i: usize| q.items[i].ids.len();
    // Queue positions sorted by (length, age); the anchor is the oldest (position 0).
    let mut order: Vec<usize> = (0..q.items.len()).collect();
    order.sort_by_key(|&i| (len(i), i));
    let anchor = order.iter().position(|&i| i == 0).unwrap_or(0);
    let anchor_len = len(0);
    let (mut lo, mut hi) = (anchor, anchor);
    let (mut count, mut longest) = (1usize, anchor_len);
    let fits = |count: usize, longest: usize, l: usize| {
        count < max_items && (count + 1) * longest.max(l) <= budget
    };
    loop {
        let left = lo.checked_sub(1).map(|p| (p, len(order[p])));
        let right = (hi + 1 < order.len()).then(|| (hi + 1, len(order[hi + 1])));
        // Try the side whose length is closer to the anchor's first.
        let mut sides = [left, right];
        if let (Some((_, l)), Some((_, r))) = (left, right)
            && r.abs_diff(anchor_len) < l.abs_diff(anchor_len)
        {
            sides.swap(0, 1);
        }
        let mut grown = false;
        for (p, l) in sides.into_iter().flatten() {
            if fits(count, longest, l) {
                count += 1;
                longest = longest.max(l);
                if p < lo {
                    lo = p;
                } else {
                    hi = p;
                }
                grown = true;
                break;
            }
        }
        if !grown {
            break;
        }
    }
    let mut chosen = vec![false; q.items.len()];
    for &p in &order[lo..=hi] {
        chosen[p] = true;
    }
    let mut batch = Vec::with_capacity(count);
    let mut rest = VecDeque::with_capacity(q.items.len() - count);
    for (i, item) in q.items.drain(..).enumerate() {
        if chosen[i] {
            q.tokens = q.tokens.saturating_sub(item.ids.len());
            batch.push(item);
        } else {
            rest.push_back(item);
        }
    }
    q.items = rest;
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(lens: &[usize]) -> (Queue, Vec<Pending>) {
        let mut items = VecDeque::new();
        let mut rxs = Vec::new();
        let now = Instant::now();
        for &len in lens {
            let (tx, rx) = oneshot::channel();
            rxs.push(rx);
            items.push_back(Item {
                ids: vec![1; len],
                enqueued: now,
                slot: Arc::new(Slot {
                    state: Mutex::new(SlotState {
                        results: vec![Vec::new()],
                        remaining: 1,
                        reply: Some(tx),
                    }),
                }),
                index: 0,
            });
        }
        let tokens = lens.iter().sum();
        (
            Queue {
                items,
                tokens,
                closed: false,
                busy: 0,
            },
            rxs,
        )
    }

    fn cfg(batch_tokens: usize, max_batch_size: usize) -> BatcherConfig {
        BatcherConfig {
            batch_tokens,
            max_batch_size,
            max_wait: Duration::ZERO,
            queue_capacity: 100,
        }
    }

    fn lens(batch: &[Item]) -> Vec<usize> {
        let mut v: Vec<usize> = batch.iter().map(|i| i.ids.len()).collect();
        v.sort();
        v
    }

    #[test]
    fn batches_group_the_oldest_input_with_similar_lengths() {
        let (mut q, _rx) = queue(&[10, 50, 12, 48, 11, 49]);
        // 3 x 12 = 36 <= 40: the oldest (10) with 11 and 12, not the long ones.
        let b = take_batch(&mut q, &cfg(40, 64), usize::MAX);
        assert_eq!(lens(&b), vec![10, 11, 12]);
        assert_eq!(q.tokens, 50 + 48 + 49);
        let b = take_batch(&mut q, &cfg(200, 64), usize::MAX);
        assert_eq!(lens(&b), vec![48, 49, 50]);
        assert!(q.items.is_empty());
        assert_eq!(q.tokens, 0);
    }

    #[test]
    fn batch_size_and_budget_are_respected_and_oversize_runs_alone() {
        let (mut q, _rx) = queue(&[100, 5, 5, 5, 5]);
        let b = take_batch(&mut q, &cfg(64, 64), usize::MAX);
        assert_eq!(lens(&b), vec![100], "over the budget: alone");
        let b = take_batch(&mut q, &cfg(64, 3), usize::MAX);
        assert_eq!(lens(&b), vec![5, 5, 5], "max_batch_size");
        assert_eq!(q.items.len(), 1);
    }

    #[test]
    fn a_share_caps_the_batch() {
        let (mut q, _rx) = queue(&[5, 5, 5, 5, 5]);
        let b = take_batch(&mut q, &cfg(8192, 64), 15);
        assert_eq!(b.len(), 3, "a share of 15 tokens: three inputs of 5");
        assert_eq!(q.items.len(), 2);
        let b = take_batch(&mut q, &cfg(8192, 64), 0);
        assert_eq!(b.len(), 1, "a share of 0 still takes the oldest input");
    }

    #[test]
    fn dropped_requests_are_skipped() {
        let (mut q, mut rx) = queue(&[3, 4, 5]);
        drop(rx.remove(0));
        let b = take_batch(&mut q, &cfg(100, 64), usize::MAX);
        assert_eq!(lens(&b), vec![4, 5]);
    }
}
