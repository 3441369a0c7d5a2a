//! The dynamic batcher: concurrent requests queue their inputs, one dedicated
//! thread per model forms batches by a token budget, grouped by length and fair
//! across requests, and runs them on a bounded compute pool.
//!
//! Life of an input: [`Batcher::embed`] checks the queue capacity (a full queue is
//! [`EmbedError::Overloaded`] at once; a request larger than the whole queue is
//! [`EmbedError::TooManyInputs`]), appends the inputs and returns a future.
//! The batch thread wakes, waits at most `max_wait` after the oldest input arrived
//! (less if a full batch is already queued), then forms a batch around an anchor
//! while `longest x count <= batch_tokens` and `count <= max_batch_size` (an
//! input over the budget runs alone). The batch runs on a lane of the
//! [`ComputePool`]; each result goes back to its request, which completes when
//! its last input is done. A forward pass that fails or panics fails the
//! requests of that batch with [`EmbedError::Inference`]; the batch thread
//! carries on.
//!
//! Queue places: a caller with work to do before it has the inputs
//! (tokenizing) first takes a [`Reservation`] with [`Batcher::reserve`], so a
//! full queue refuses it before that work; reserved places count as queued
//! until the reservation is used ([`Reservation::embed`]) or dropped. The
//! inputs of a dropped request (a client gone) stop counting when a batch
//! thread discards them, or at once when the queue would otherwise refuse a
//! request.
//!
//! Fairness: the anchor is the oldest queued input of the request with the
//! fewest inputs taken so far (the oldest request on a tie), and each queued
//! request may first add up to an equal share of the batch's `max_batch_size`,
//! inputs closest in length to the anchor first; what is left of the batch is
//! then filled by length alone. So a one-input query queued behind a request of
//! 2,048 inputs runs in the next batch, not after the whole big request, and
//! batches still fill up when there is enough work.
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
use std::panic::AssertUnwindSafe;
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
    /// Inputs the request carries (those queued plus those taken into batches).
    inputs: usize,
    state: Mutex<SlotState>,
}

struct SlotState {
    results: Vec<Vec<f32>>,
    remaining: usize,
    reply: Option<Reply>,
}

impl Slot {
    /// The slot of a request of `n` inputs, answered on `reply`.
    fn new(n: usize, reply: Reply) -> Arc<Self> {
        Arc::new(Slot {
            inputs: n,
            state: Mutex::new(SlotState {
                results: vec![Vec::new(); n],
                remaining: n,
                reply: Some(reply),
            }),
        })
    }

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
    /// Places held by [`Reservation`]s not used yet: they count as queued.
    reserved: usize,
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
                reserved: 0,
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
        let rx = self.shared.enqueue(inputs, 0);
        reply(rx)
    }

    /// Holds `n` places in the queue for inputs still being prepared: the
    /// same checks as [`Batcher::embed`] ([`EmbedError::Overloaded`] when the
    /// queue cannot take `n` more inputs, [`EmbedError::TooManyInputs`] when it
    /// never could, [`EmbedError::ShuttingDown`]), done before the work rather
    /// than after it. The places count as queued until the reservation is used
    /// ([`Reservation::embed`]) or dropped.
    pub fn reserve(&self, n: usize) -> Result<Reservation> {
        self.shared.reserve(n)?;
        Ok(Reservation {
            shared: Arc::clone(&self.shared),
            n,
        })
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

/// Places held in a [`Batcher`]'s queue ([`Batcher::reserve`]); given back
/// when dropped unused.
pub struct Reservation {
    shared: Arc<Shared>,
    /// Places still held (0 once used).
    n: usize,
}

impl Reservation {
    /// Places held.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether no place is held.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Queues `inputs` in the places held, as [`Batcher::embed`] does. Up to
    /// the reserved count they always fit; more are checked against the queue
    /// like a new request.
    pub fn embed(
        mut self,
        inputs: Vec<Vec<u32>>,
    ) -> impl Future<Output = Result<Vec<Vec<f32>>>> + Send + 'static {
        let held = std::mem::take(&mut self.n);
        let rx = self.shared.enqueue(inputs, held);
        reply(rx)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.n > 0 {
            let mut q = self.shared.queue.lock();
            q.reserved = q.reserved.saturating_sub(self.n);
        }
    }
}

/// The answer to a queued request.
async fn reply(rx: Result<Option<Pending>>) -> Result<Vec<Vec<f32>>> {
    match rx? {
        None => Ok(Vec::new()),
        Some(rx) => rx.await.map_err(|_| EmbedError::ShuttingDown)?,
    }
}

impl Queue {
    /// Whether `n` more inputs fit under `capacity`. When they do not, the
    /// inputs of requests dropped meanwhile are discarded first (they would
    /// otherwise hold their places until a batch thread wakes) and the check
    /// is made again.
    fn fits(&mut self, n: usize, capacity: usize) -> bool {
        let fits = |q: &Queue| q.items.len() + q.reserved + n <= capacity;
        if fits(self) {
            return true;
        }
        discard_cancelled(self);
        fits(self)
    }

    /// Whether `n` more inputs may be queued (or reserved) under `capacity`:
    /// `ShuttingDown` once closed, `TooManyInputs` past the whole queue,
    /// `Overloaded` when they do not fit now.
    fn admit(&mut self, n: usize, capacity: usize) -> Result<()> {
        if self.closed {
            return Err(EmbedError::ShuttingDown);
        }
        // A request the whole queue cannot hold would never fit: the
        // caller's error, not a 503 to retry. (The config requires a
        // capacity of at least `MAX_INPUTS`; a hand-built config may not.)
        if n > capacity {
            return Err(EmbedError::TooManyInputs {
                got: n,
                max: capacity,
            });
        }
        if !self.fits(n, capacity) {
            return Err(EmbedError::Overloaded { capacity });
        }
        Ok(())
    }
}

impl Shared {
    /// Holds `n` places in the queue (see [`Batcher::reserve`]).
    fn reserve(&self, n: usize) -> Result<()> {
        let capacity = self.cfg.queue_capacity;
        let mut q = self.queue.lock();
        q.admit(n, capacity)?;
        q.reserved += n;
        Ok(())
    }

    /// Appends `inputs` to the queue, first giving back the `held` places
    /// reserved for them.
    fn enqueue(&self, inputs: Vec<Vec<u32>>, held: usize) -> Result<Option<Pending>> {
        let capacity = self.cfg.queue_capacity;
        let mut q = self.queue.lock();
        q.reserved = q.reserved.saturating_sub(held);
        if inputs.is_empty() {
            return Ok(None);
        }
        let n = inputs.len();
        q.admit(n, capacity)?;
        let (tx, rx) = oneshot::channel();
        let slot = Slot::new(n, tx);
        let now = Instant::now();
        for (index, ids) in inputs.into_iter().enumerate() {
            q.tokens += ids.len();
            q.items.push_back(Item {
                ids,
                enqueued: now,
                slot: Arc::clone(&slot),
                index,
            });
        }
        drop(q);
        self.wake.notify_one();
        Ok(Some(rx))
    }

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

    /// Runs one batch on a lane and answers its requests. A backend error, a
    /// wrong number of vectors or a panic in the forward pass fails the
    /// batch's requests with [`EmbedError::Inference`]; the lane and the
    /// `busy` count are given back whatever happens.
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
        // A panic in the model must not take the batch thread with it (its
        // queue would never be served again, and with one lane every later
        // request would hang): it fails this batch only.
        let result = self.pool.run_lane(|| {
            std::panic::catch_unwind(AssertUnwindSafe(|| backend.embed_ids(&refs))).unwrap_or_else(
                |payload| {
                    Err(EmbedError::Inference(format!(
                        "the model panicked: {}",
                        panic_message(payload.as_ref())
                    )))
                },
            )
        });
        let took = started.elapsed();
        // The lane is free before the replies go out: a client answered here
        // may send its next burst at once, and it must find the lane counted
        // idle (else that burst was taken whole by one lane).
        self.queue.lock().busy -= 1;
        match result {
            Ok(vectors) if vectors.len() == batch.len() => {
                // Only batches that produced their vectors count as embedded.
                metrics::batch(batch.len(), longest * batch.len(), tokens, took);
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
                tracing::error!(error = %e, batch = batch.len(), "embedding batch failed");
                batch.iter().for_each(|i| i.slot.fail(&e));
            }
            Err(e) => {
                tracing::error!(error = %e, batch = batch.len(), "embedding batch failed");
                batch.iter().for_each(|i| i.slot.fail(&e));
            }
        }
    }
}

/// The text of a panic's payload, when it has one.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "no message"
    }
}

/// Discards the queued inputs whose request was dropped (or already failed).
fn discard_cancelled(q: &mut Queue) {
    let before = q.items.len();
    // A request's inputs sit together: ask each request once.
    let mut last: Option<(Arc<Slot>, bool)> = None;
    q.items.retain(|i| {
        let cancelled = match &last {
            Some((s, c)) if Arc::ptr_eq(s, &i.slot) => *c,
            _ => {
                let c = i.slot.cancelled();
                last = Some((Arc::clone(&i.slot), c));
                c
            }
        };
        !cancelled
    });
    if q.items.len() != before {
        q.tokens = q.items.iter().map(|i| i.ids.len()).sum();
    }
}

/// Removes the next batch from the queue. Inputs whose request was dropped are
/// discarded first.
///
/// The anchor is the oldest queued input of the request with the fewest inputs
/// taken so far (the oldest request on a tie). The other inputs are then
/// considered closest in length to the anchor first (shorter, then older, on a
/// tie) and taken while the budget (the smaller of `batch_tokens` and `share`,
/// in padded tokens) and `max_batch_size` allow: first at most an equal share
/// of `max_batch_size` per request, then, if the batch is not full, from any
/// request. A request's inputs sit together in the queue (they are appended
/// together and removed in order), which is how requests are told apart here.
fn take_batch(q: &mut Queue, cfg: &BatcherConfig, share: usize) -> Vec<Item> {
    let max_items = cfg.max_batch_size.max(1);
    let budget = cfg.batch_tokens.min(share);
    discard_cancelled(q);
    if q.items.is_empty() {
        return Vec::new();
    }
    let n = q.items.len();
    // The queued requests, oldest first: (first queue position, inputs queued),
    // and the request of each queue position.
    let mut requests: Vec<(usize, usize)> = Vec::new();
    let mut request_of = Vec::with_capacity(n);
    let mut prev: Option<&Arc<Slot>> = None;
    for (p, item) in q.items.iter().enumerate() {
        match (prev, requests.last_mut()) {
            (Some(s), Some(r)) if Arc::ptr_eq(s, &item.slot) => r.1 += 1,
            _ => requests.push((p, 1)),
        }
        prev = Some(&item.slot);
        request_of.push(requests.len() - 1);
    }
    // Fewest inputs taken so far; `min_by_key` keeps the first (oldest) on a tie.
    let (anchor_req, anchor) = requests
        .iter()
        .enumerate()
        .min_by_key(|(_, (first, queued))| q.items[*first].slot.inputs.saturating_sub(*queued))
        .map_or((0, 0), |(r, (first, _))| (r, *first));
    let len = |p: usize| q.items[p].ids.len();
    let anchor_len = len(anchor);
    let mut order: Vec<usize> = (0..n).filter(|&p| p != anchor).collect();
    order.sort_by_key(|&p| (len(p).abs_diff(anchor_len), len(p), p));

    let mut chosen = vec![false; n];
    chosen[anchor] = true;
    let mut per_request = vec![0usize; requests.len()];
    per_request[anchor_req] = 1;
    let (mut count, mut longest) = (1usize, anchor_len);
    let fair = max_items.div_ceil(requests.len()).max(1);
    for cap in [fair, usize::MAX] {
        let mut capped = false;
        for &p in &order {
            if count >= max_items {
                break;
            }
            let r = request_of[p];
            if chosen[p] {
                continue;
            }
            if per_request[r] >= cap {
                capped = true;
                continue;
            }
            let l = len(p);
            if (count + 1) * longest.max(l) > budget {
                continue;
            }
            chosen[p] = true;
            per_request[r] += 1;
            count += 1;
            longest = longest.max(l);
        }
        if count >= max_items || !capped {
            break;
        }
    }

    let mut batch = Vec::with_capacity(count);
    let mut rest = VecDeque::with_capacity(n - count);
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
                slot: Slot::new(1, tx),
                index: 0,
            });
        }
        let tokens = lens.iter().sum();
        (
            Queue {
                items,
                tokens,
                reserved: 0,
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

    /// Queues one request of `n` inputs of `len` tokens.
    fn push_request(q: &mut Queue, n: usize, len: usize) -> Pending {
        let (tx, rx) = oneshot::channel();
        let slot = Slot::new(n, tx);
        for index in 0..n {
            q.tokens += len;
            q.items.push_back(Item {
                ids: vec![1; len],
                enqueued: Instant::now(),
                slot: Arc::clone(&slot),
                index,
            });
        }
        rx
    }

    fn from_request(batch: &[Item], inputs: usize) -> usize {
        batch.iter().filter(|i| i.slot.inputs == inputs).count()
    }

    #[test]
    fn requests_share_batches_and_batches_stay_full() {
        let (mut q, _rx) = queue(&[]);
        let _big = push_request(&mut q, 100, 5);
        let _small = push_request(&mut q, 3, 9);
        // Neither has been served: the oldest request anchors, and each
        // request may first take half of the batch of 8.
        let b = take_batch(&mut q, &cfg(8192, 8), usize::MAX);
        assert_eq!(b.len(), 8);
        assert_eq!(from_request(&b, 3), 3, "the small request fits in");
        // A new one-input request has been served least: it anchors the next
        // batch, whatever its length; the batch is still filled.
        let _query = push_request(&mut q, 1, 30);
        let b = take_batch(&mut q, &cfg(8192, 8), usize::MAX);
        assert_eq!(b.len(), 8);
        assert_eq!(from_request(&b, 1), 1);
        assert_eq!(from_request(&b, 100), 7);
    }

    /// A backend that always fails.
    struct Failing(crate::backend::ModelInfo);

    impl EmbeddingBackend for Failing {
        fn info(&self) -> &crate::backend::ModelInfo {
            &self.0
        }
        fn tokenize(&self, _text: &str, _truncate: bool) -> Result<Vec<u32>> {
            Ok(vec![1])
        }
        fn embed_ids(&self, _seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
            Err(EmbedError::Inference("broken".into()))
        }
        fn memory_bytes(&self) -> u64 {
            0
        }
        fn forward_passes(&self) -> u64 {
            0
        }
    }

    fn inputs_total() -> u64 {
        uat_telemetry::render()
            .lines()
            .find_map(|l| l.strip_prefix("uat_embed_inputs_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Regression: the inputs of a failed batch were counted as embedded.
    /// (The only test of this binary that runs batches, so the process-wide
    /// counter moves for it alone.)
    #[tokio::test]
    async fn failed_batches_are_not_counted_as_embedded() {
        let backend = Arc::new(Failing(crate::backend::ModelInfo {
            dim: 1,
            max_seq_length: 8,
            vocab_size: 8,
            pooling: crate::folder::Pooling::MEAN,
            normalize: false,
        }));
        let pool = ComputePool::new(1).unwrap();
        let batcher = Batcher::new("failing", backend, pool, cfg(8192, 64)).unwrap();
        let before = inputs_total();
        let got = batcher.embed(vec![vec![1, 2]; 5]).await;
        assert!(matches!(got, Err(EmbedError::Inference(_))), "{got:?}");
        assert_eq!(inputs_total(), before);
    }
}
