//! The model registry: configured local models, loaded lazily (or eagerly),
//! unloaded least-recently-used past the memory budget and after an idle
//! `keep_alive`; the entry point of `POST /v1/embeddings` and the admin routes.
//!
//! The memory budget counts every model instance still alive, not only those
//! in service: an unloaded model keeps its memory until its requests in flight
//! and its batch threads are done with it. To make room for a load the
//! registry unloads other models (those without requests in flight first, then
//! the least recently used), then waits for the unloaded ones to be gone, at
//! most [`Registry::with_budget_wait`] (30 s by default), and otherwise
//! refuses the load with [`EmbedError::MemoryBudget`]; it never loads past the
//! budget, except a model larger than the whole budget when nothing else is
//! held. A model asked for while its unloaded instance is still alive is put
//! back in service rather than loaded a second time. Loads run one at a time;
//! the model folder is checked before anything is unloaded for it.
//!
//! A load runs as a task of its own, one per model: every request for the
//! model waits on the same load, and a load whose requester went away (a
//! client that disconnected) still puts the model in service, so the next
//! request finds it instead of loading it a second time while the first copy
//! still holds memory. A load waits for the other models' loads and for
//! memory together at most the budget wait. A request is checked against what
//! is known of the model (its folder's `config.json` and pooling, or its last
//! load) before the model is loaded for it, so a request that would fail
//! anyway never loads a model or unloads others.

use crate::backend::{CandleBackend, EmbeddingBackend, ModelInfo};
use crate::batcher::{Batcher, BatcherConfig, ComputePool};
use crate::bert::BertConfig;
use crate::error::{EmbedError, Result};
use crate::folder::FolderSpec;
use crate::input::{EmbeddingInput, check_dimensions, prepare};
use crate::metrics;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Loads a model folder into a backend (the default is [`CandleBackend::load`]).
pub type Loader = Arc<dyn Fn(&Path) -> Result<Arc<dyn EmbeddingBackend>> + Send + Sync>;

/// Checks a model folder before anything is unloaded for it, returning the
/// bytes it will take ([`CandleBackend::check`] for the default loader).
type Check = fn(&Path) -> Result<u64>;

/// Longest a load waits by default for unloaded models to finish their
/// requests and free the memory it needs.
const BUDGET_WAIT: Duration = Duration::from_secs(30);

/// One embeddings request, already parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedRequest {
    /// The inputs.
    pub input: EmbeddingInput,
    /// Cut over-long inputs at `max_seq_length` (the default) instead of failing
    /// with [`EmbedError::InputTooLong`].
    pub truncate: bool,
    /// Requested output width; only the model's own is accepted.
    pub dimensions: Option<usize>,
}

impl EmbedRequest {
    /// A request with truncation on and no `dimensions`.
    pub fn new(input: EmbeddingInput) -> EmbedRequest {
        EmbedRequest {
            input,
            truncate: true,
            dimensions: None,
        }
    }
}

/// The answer to an [`EmbedRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedResponse {
    /// The model's public name.
    pub model: String,
    /// One vector per input, in input order.
    pub embeddings: Vec<Vec<f32>>,
    /// Tokens over all inputs after truncation (`usage.prompt_tokens`, also
    /// `usage.total_tokens`).
    pub prompt_tokens: usize,
}

/// What `GET /v1/embeddings/models` shows for one model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelStatus {
    /// Public name.
    pub name: String,
    /// Folder it loads from.
    pub path: PathBuf,
    /// Loaded now.
    pub loaded: bool,
    /// Loaded at start-up instead of on first use.
    pub eager: bool,
    /// Memory held while loaded (weights plus tokenizer), 0 when not loaded.
    pub memory_bytes: u64,
    /// Last request, in seconds since the Unix epoch; `None` if never used.
    pub last_used: Option<u64>,
    /// Output width, when loaded.
    pub dimensions: Option<usize>,
    /// Longest input in tokens, when loaded.
    pub max_seq_length: Option<usize>,
}

/// A model instance in service.
struct Loaded {
    batcher: Batcher,
    bytes: u64,
    /// Requests using it now.
    in_flight: AtomicUsize,
    /// Alive exactly as long as the model's memory is (see [`Tracked`]).
    release: Weak<Release>,
}

/// One model's instances.
#[derive(Default)]
struct Slot {
    /// The instance in service: new requests use it.
    loaded: Option<Arc<Loaded>>,
    /// The instance last unloaded, which may still be serving: requests in
    /// flight hold it, and its batch threads until its queue is done. Its
    /// bytes count against the budget until it is gone.
    retired: Option<Retired>,
}

struct Retired {
    loaded: Weak<Loaded>,
    backend: Weak<dyn EmbeddingBackend>,
    release: Weak<Release>,
    bytes: u64,
}

impl Slot {
    /// Bytes its instances hold now.
    fn held(&self) -> u64 {
        let loaded = self.loaded.as_ref().map_or(0, |l| l.bytes);
        let retired = self
            .retired
            .as_ref()
            .filter(|r| r.release.strong_count() > 0)
            .map_or(0, |r| r.bytes);
        loaded + retired
    }
}

/// The backend as the registry hands it out. When its last reference goes
/// (the batch threads and every request are done with it), `_release` drops
/// after the model and wakes the loads waiting for memory.
struct Tracked {
    inner: Arc<dyn EmbeddingBackend>,
    // Declared after `inner`, so dropped after it.
    _release: Arc<Release>,
}

struct Release(Arc<tokio::sync::Notify>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.notify_waiters();
    }
}

impl EmbeddingBackend for Tracked {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }
    fn tokenize(&self, text: &str, truncate: bool) -> Result<Vec<u32>> {
        self.inner.tokenize(text, truncate)
    }
    fn embed_ids(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        self.inner.embed_ids(seqs)
    }
    fn memory_bytes(&self) -> u64 {
        self.inner.memory_bytes()
    }
    fn forward_passes(&self) -> u64 {
        self.inner.forward_passes()
    }
}

/// Counts a request on an instance while it lives.
struct InFlight(Arc<Loaded>);

impl InFlight {
    fn new(loaded: Arc<Loaded>) -> InFlight {
        loaded.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(loaded)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A load in progress, shared by every request for the model; holds the
/// outcome once the load is done.
type LoadWatch = tokio::sync::watch::Receiver<Option<Result<Arc<Loaded>>>>;

struct Entry {
    name: String,
    path: PathBuf,
    eager: bool,
    slot: Mutex<Slot>,
    /// The load in progress, if any (numbered): new requests wait on it.
    loading: Mutex<Option<(u64, LoadWatch)>>,
    /// Facts of the model at its last load: what a request is checked
    /// against before a load when its folder cannot tell.
    last_info: Mutex<Option<ModelInfo>>,
    /// Bytes measured at the last load (0 before): the estimate of the next one
    /// when larger than the file sizes.
    last_bytes: AtomicU64,
    /// Milliseconds since the registry's epoch of the last use, plus one (0 = never).
    last_use: AtomicU64,
}

/// The configured local embedding models.
pub struct Registry {
    inner: Arc<Inner>,
}

/// The registry's state, shared with the load tasks.
struct Inner {
    entries: Vec<Entry>,
    pool: Arc<ComputePool>,
    batcher: BatcherConfig,
    memory_budget: u64,
    keep_alive: Duration,
    epoch: Instant,
    epoch_wall: SystemTime,
    loader: Loader,
    check: Option<Check>,
    /// Serializes loads (of every model), so that two never count on the same
    /// free memory.
    load_lock: tokio::sync::Mutex<()>,
    /// Woken whenever a model instance is gone or put back in service: a
    /// load waiting for memory looks again.
    freed: Arc<tokio::sync::Notify>,
    /// Longest a load waits, for other loads and for memory, in nanoseconds.
    budget_wait_ns: AtomicU64,
    /// Numbers the loads.
    load_seq: AtomicU64,
    /// Requests tokenizing off the async workers at once (one per compute
    /// thread).
    tokenizing: Arc<tokio::sync::Semaphore>,
}

/// Total text bytes above which tokenization leaves the async worker.
const INLINE_TOKENIZE_BYTES: usize = 4096;

/// Texts above which tokenization leaves the async worker, however short
/// (each text costs the tokenizer a fixed overhead).
const INLINE_TOKENIZE_INPUTS: usize = 32;

/// Whether `input` is cheap enough to tokenize on the async worker: token ids
/// (only checked), or a few short texts.
fn tokenizes_inline(input: &EmbeddingInput) -> bool {
    match input {
        EmbeddingInput::Texts(t) => {
            t.len() <= INLINE_TOKENIZE_INPUTS
                && t.iter().map(String::len).sum::<usize>() <= INLINE_TOKENIZE_BYTES
        }
        EmbeddingInput::TokenIds(_) => true,
    }
}

impl Registry {
    /// A registry of the `[[embeddings.models]]` in `cfg`, nothing loaded yet, with
    /// its compute pool of `cfg.threads` threads.
    pub fn new(cfg: &uat_config::EmbeddingsConfig) -> Result<Registry> {
        let loader: Loader = Arc::new(|p: &Path| {
            CandleBackend::load(p).map(|b| Arc::new(b) as Arc<dyn EmbeddingBackend>)
        });
        let mut inner = Inner::new(cfg, loader)?;
        inner.check = Some(CandleBackend::check);
        Ok(Registry {
            inner: Arc::new(inner),
        })
    }

    /// Like [`Registry::new`] with another model loader (tests, other backends).
    /// The size of a model before its first load is estimated from the sizes of
    /// `model.safetensors` and `tokenizer.json` in its folder, the weights
    /// counted at least as their tensors widened to f32 when the file's
    /// safetensors header can be read.
    pub fn with_loader(cfg: &uat_config::EmbeddingsConfig, loader: Loader) -> Result<Registry> {
        Ok(Registry {
            inner: Arc::new(Inner::new(cfg, loader)?),
        })
    }

    /// Sets how long a load waits for other models' loads and for models that
    /// were unloaded but are still finishing requests to free the memory it
    /// needs (30 s by default, both waits together); past it the load fails
    /// with [`EmbedError::MemoryBudget`].
    pub fn with_budget_wait(self, wait: Duration) -> Registry {
        self.inner
            .budget_wait_ns
            .store(nanos(wait), Ordering::Relaxed);
        self
    }

    /// Names of the configured models (for `GET /v1/models`), in config order.
    pub fn names(&self) -> Vec<String> {
        self.inner.entries.iter().map(|e| e.name.clone()).collect()
    }

    /// Whether `name` is a configured local model.
    pub fn contains(&self, name: &str) -> bool {
        self.inner.entries.iter().any(|e| e.name == name)
    }

    /// Embeds a request with model `model`, loading it first if needed.
    ///
    /// A model not in service is loaded only for a request that passes the
    /// checks its static facts allow (`dimensions`, token ids), read from its
    /// folder or kept from its last load. The load goes on if this request is
    /// dropped meanwhile, and requests for a model being loaded wait for that
    /// load.
    ///
    /// Errors: the caller's ([`EmbedError::is_client_error`]: unknown model, bad
    /// input, too long with `truncate: false`, unsupported `dimensions`),
    /// [`EmbedError::Overloaded`] when the queue is full (checked before the
    /// inputs are tokenized), [`EmbedError::MemoryBudget`] when the model
    /// cannot be loaded in time within the budget, or ours (load/inference).
    ///
    /// Tokenizing: a few short texts on the calling task; more (over 32 texts
    /// or 4 KB) on the blocking pool, at most one request per compute thread
    /// at once.
    pub async fn embed(&self, model: &str, req: EmbedRequest) -> Result<EmbedResponse> {
        let inner = &self.inner;
        let idx = inner.index(model)?;
        let entry = inner.entry_at(idx)?;
        req.input.validate()?;
        // Not in service: check what can be checked before loading it (or
        // putting an unloaded instance back in service) for this request.
        let serving = entry.slot.lock().loaded.clone();
        let loaded = match serving {
            Some(l) => l,
            None => {
                inner.check_unloaded(entry, &req).await?;
                inner.ensure_loaded(idx).await?
            }
        };
        let in_flight = InFlight::new(loaded);
        let loaded = &in_flight.0;
        inner.touch(entry);
        let backend = Arc::clone(loaded.batcher.backend());
        check_dimensions(model, backend.info(), req.dimensions)?;
        // The queue places first: a full queue refuses the request before any
        // tokenizing is spent on it (and its retries cost nothing either).
        let reservation = loaded.batcher.reserve(req.input.len())?;
        let prepared = if tokenizes_inline(&req.input) {
            prepare(backend.as_ref(), &req.input, req.truncate)?
        } else {
            // Off the async workers, and at most as many requests at once as
            // there are compute threads: a burst of large requests queues
            // here instead of starting a blocking thread each.
            let permit = Arc::clone(&inner.tokenizing)
                .acquire_owned()
                .await
                .map_err(|_| EmbedError::ShuttingDown)?;
            let (input, truncate) = (req.input, req.truncate);
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                prepare(backend.as_ref(), &input, truncate)
            })
            .await
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))??
        };
        let embeddings = reservation.embed(prepared.ids).await?;
        inner.touch(entry);
        Ok(EmbedResponse {
            model: entry.name.clone(),
            embeddings,
            prompt_tokens: prepared.prompt_tokens,
        })
    }

    /// Static facts of a loaded model (`None` when not loaded).
    pub fn info(&self, name: &str) -> Result<Option<ModelInfo>> {
        let entry = self.inner.entry(name)?;
        let loaded = entry.slot.lock().loaded.clone();
        Ok(loaded.map(|l| l.batcher.backend().info().clone()))
    }

    /// Batches (forward calls) the loaded model's batcher has run (`None` when not
    /// loaded); counts from zero at each load.
    pub fn batches(&self, name: &str) -> Result<Option<u64>> {
        let entry = self.inner.entry(name)?;
        let loaded = entry.slot.lock().loaded.clone();
        Ok(loaded.map(|l| l.batcher.batches()))
    }

    /// Every configured model with its state.
    pub fn list(&self) -> Vec<ModelStatus> {
        self.inner
            .entries
            .iter()
            .map(|e| self.inner.status(e))
            .collect()
    }

    /// One model's state.
    pub fn status_of(&self, name: &str) -> Result<ModelStatus> {
        Ok(self.inner.status(self.inner.entry(name)?))
    }

    /// Loads `name` now (admin `load`); a no-op if loaded. Counts as a use. The
    /// load goes on if this call is dropped.
    pub async fn load(&self, name: &str) -> Result<ModelStatus> {
        let idx = self.inner.index(name)?;
        self.inner.ensure_loaded(idx).await?;
        let entry = self.inner.entry_at(idx)?;
        self.inner.touch(entry);
        Ok(self.inner.status(entry))
    }

    /// Loads every model marked `eager`.
    pub async fn load_eager(&self) -> Result<()> {
        for (idx, _) in self
            .inner
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.eager)
        {
            self.inner.ensure_loaded(idx).await?;
        }
        Ok(())
    }

    /// Unloads `name` (admin `unload`); returns whether it was loaded. Requests
    /// already queued still finish; the memory is freed after them, and counts
    /// against the budget until then. (A load in progress is not stopped.)
    pub fn unload(&self, name: &str) -> Result<bool> {
        let entry = self.inner.entry(name)?;
        Ok(self.inner.unload_entry(entry))
    }

    /// Memory held by models together: those loaded, plus those unloaded but
    /// still finishing requests (what the budget counts).
    pub fn loaded_bytes(&self) -> u64 {
        self.inner.loaded_bytes()
    }

    /// Unloads models idle longer than `keep_alive` (zero disables it); returns
    /// their names.
    pub fn unload_idle(&self) -> Vec<String> {
        let inner = &self.inner;
        if inner.keep_alive.is_zero() {
            return Vec::new();
        }
        let now = inner.now_ms();
        let keep = inner.keep_alive.as_millis() as u64;
        let mut out = Vec::new();
        for e in &inner.entries {
            let last = e.last_use.load(Ordering::Relaxed).saturating_sub(1);
            if now.saturating_sub(last) >= keep && inner.unload_entry(e) {
                out.push(e.name.clone());
            }
        }
        out
    }

    /// Spawns a task that runs [`Registry::unload_idle`] periodically until the
    /// registry is dropped.
    pub fn spawn_keep_alive(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Registry> = Arc::downgrade(self);
        let every =
            (self.inner.keep_alive / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(r) => {
                        r.unload_idle();
                    }
                    None => return,
                }
            }
        })
    }
}

/// `d` in nanoseconds, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Clears an entry's load in progress (number `id`, not a later one) once the
/// load is done, and at the latest when its task ends, however it ends (done,
/// failed, panicked or dropped with the runtime).
struct LoadDone {
    inner: Arc<Inner>,
    idx: usize,
    id: u64,
}

impl LoadDone {
    fn clear(&self) {
        if let Some(e) = self.inner.entries.get(self.idx) {
            let mut loading = e.loading.lock();
            if loading.as_ref().is_some_and(|(id, _)| *id == self.id) {
                *loading = None;
            }
        }
    }
}

impl Drop for LoadDone {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Inner {
    fn new(cfg: &uat_config::EmbeddingsConfig, loader: Loader) -> Result<Inner> {
        let entries = cfg
            .models
            .iter()
            .map(|m| Entry {
                name: m.name.clone(),
                path: m.path.clone(),
                eager: m.eager,
                slot: Mutex::new(Slot::default()),
                loading: Mutex::new(None),
                last_info: Mutex::new(None),
                last_bytes: AtomicU64::new(0),
                last_use: AtomicU64::new(0),
            })
            .collect();
        Ok(Inner {
            entries,
            pool: ComputePool::new(cfg.threads)?,
            batcher: BatcherConfig::from(cfg),
            memory_budget: cfg.memory_budget,
            keep_alive: cfg.keep_alive,
            epoch: Instant::now(),
            epoch_wall: SystemTime::now(),
            loader,
            check: None,
            load_lock: tokio::sync::Mutex::new(()),
            freed: Arc::new(tokio::sync::Notify::new()),
            budget_wait_ns: AtomicU64::new(nanos(BUDGET_WAIT)),
            load_seq: AtomicU64::new(0),
            tokenizing: Arc::new(tokio::sync::Semaphore::new(
                cfg.threads.clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
        })
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.entries
            .iter()
            .position(|e| e.name == name)
            .ok_or_else(|| EmbedError::UnknownModel(name.to_string()))
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entry_at(self.index(name)?)
    }

    fn entry_at(&self, idx: usize) -> Result<&Entry> {
        self.entries
            .get(idx)
            .ok_or_else(|| EmbedError::UnknownModel(format!("#{idx}")))
    }

    fn budget_wait(&self) -> Duration {
        Duration::from_nanos(self.budget_wait_ns.load(Ordering::Relaxed))
    }

    fn status(&self, e: &Entry) -> ModelStatus {
        let loaded = e.slot.lock().loaded.clone();
        let info = loaded.as_ref().map(|l| l.batcher.backend().info().clone());
        let last = e.last_use.load(Ordering::Relaxed);
        ModelStatus {
            name: e.name.clone(),
            path: e.path.clone(),
            loaded: loaded.is_some(),
            eager: e.eager,
            memory_bytes: loaded.as_ref().map_or(0, |l| l.bytes),
            last_used: (last > 0).then(|| {
                let at = self.epoch_wall + Duration::from_millis(last - 1);
                at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
            }),
            dimensions: info.as_ref().map(|i| i.dim),
            max_seq_length: info.as_ref().map(|i| i.max_seq_length),
        }
    }

    fn unload_entry(&self, e: &Entry) -> bool {
        let was = {
            let mut slot = e.slot.lock();
            let was = slot.loaded.take();
            if let Some(l) = &was {
                slot.retired = Some(Retired {
                    loaded: Arc::downgrade(l),
                    backend: Arc::downgrade(l.batcher.backend()),
                    release: Weak::clone(&l.release),
                    bytes: l.bytes,
                });
            }
            was
        };
        let unloaded = was.is_some();
        // The last reference, if no request holds it: the batcher closes here
        // (outside the slot's lock).
        drop(was);
        if unloaded {
            tracing::info!(model = %e.name, "embedding model unloaded");
            metrics::model_memory(&e.name, 0, self.loaded_count());
        }
        unloaded
    }

    /// Memory held by models together: those loaded, plus those unloaded but
    /// still finishing requests (what the budget counts).
    fn loaded_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.slot.lock().held()).sum()
    }

    /// Memory held by the models in service.
    fn in_service_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter_map(|e| e.slot.lock().loaded.as_ref().map(|l| l.bytes))
            .sum()
    }

    fn loaded_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.slot.lock().loaded.is_some())
            .count()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn touch(&self, e: &Entry) {
        e.last_use.store(self.now_ms() + 1, Ordering::Relaxed);
    }

    /// Checks `req` against what is known of a model not in service, before it
    /// is loaded for it: the facts its folder declares, else those of its last
    /// load; neither known (a folder only its loader understands, never
    /// loaded), nothing is checked here (the request is checked after the
    /// load as always). Reads the folder's small JSON files on the blocking
    /// pool.
    async fn check_unloaded(&self, e: &Entry, req: &EmbedRequest) -> Result<()> {
        let path = e.path.clone();
        let from_folder = tokio::task::spawn_blocking(move || folder_info(&path))
            .await
            .ok()
            .flatten();
        let Some(info) = from_folder.or_else(|| e.last_info.lock().clone()) else {
            return Ok(());
        };
        check_dimensions(&e.name, &info, req.dimensions)?;
        if let EmbeddingInput::TokenIds(seqs) = &req.input {
            check_token_ids(&info, seqs, req.truncate)?;
        }
        Ok(())
    }

    /// The instance in service, loading the model if needed. The load runs in
    /// a task of its own, shared by every caller that asks for the model
    /// meanwhile: it finishes and puts the model in service even if every
    /// caller has gone.
    async fn ensure_loaded(self: &Arc<Self>, idx: usize) -> Result<Arc<Loaded>> {
        let e = self.entry_at(idx)?;
        if let Some(l) = self.in_service(e)? {
            return Ok(l);
        }
        let mut load = self.join_load(idx, e);
        let outcome = match load.wait_for(Option::is_some).await {
            Ok(done) => done.clone(),
            // The task ended without an outcome: it panicked, or the runtime
            // is going away.
            Err(_) => None,
        };
        outcome.unwrap_or_else(|| Err(EmbedError::load(&e.path, "the load was abandoned")))
    }

    /// The load of entry `idx` in progress, or a new one started.
    fn join_load(self: &Arc<Self>, idx: usize, e: &Entry) -> LoadWatch {
        let mut loading = e.loading.lock();
        if let Some((_, load)) = loading.as_ref() {
            return load.clone();
        }
        let id = self.load_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::watch::channel(None);
        *loading = Some((id, rx.clone()));
        drop(loading);
        let done = LoadDone {
            inner: Arc::clone(self),
            idx,
            id,
        };
        tokio::spawn(async move {
            let outcome = match done.inner.entry_at(done.idx) {
                Ok(e) => done.inner.load_entry(e).await,
                Err(err) => Err(err),
            };
            // Cleared before the outcome is out: a request that comes after a
            // failed load starts a new one rather than taking this failure,
            // and the outcome (and the model it holds) is kept only by the
            // callers reading it.
            done.clear();
            tx.send_replace(Some(outcome));
        });
        rx
    }

    /// Loads `e` and puts it in service: checks its folder, waits for the
    /// other loads and makes room under the budget (both within the budget
    /// wait), then runs the loader on the blocking pool.
    async fn load_entry(&self, e: &Entry) -> Result<Arc<Loaded>> {
        let deadline = tokio::time::Instant::now() + self.budget_wait();
        let started = Instant::now();
        // Check the folder before waiting and before unloading anything for it.
        // (Reads the weights file's header: on the blocking pool.)
        let estimate = {
            let (check, path) = (self.check, e.path.clone());
            tokio::task::spawn_blocking(move || match check {
                Some(check) => check(&path),
                None => Ok(estimate_bytes(&path)),
            })
            .await
            .map_err(|err| EmbedError::load(&e.path, err))??
        };
        let needed = estimate.max(e.last_bytes.load(Ordering::Relaxed));
        let Ok(_guard) = tokio::time::timeout_at(deadline, self.load_lock.lock()).await else {
            tracing::warn!(
                model = %e.name,
                needed,
                "embedding model not loaded: other models' loads took the whole wait"
            );
            return Err(EmbedError::MemoryBudget {
                model: e.name.clone(),
                needed,
                budget: self.memory_budget,
            });
        };
        if let Some(l) = self.in_service(e)? {
            return Ok(l);
        }
        self.make_room(e, needed, deadline).await?;
        let loader = Arc::clone(&self.loader);
        let path = e.path.clone();
        let backend = tokio::task::spawn_blocking(move || loader(&path))
            .await
            .map_err(|err| EmbedError::load(&e.path, err))??;
        let bytes = backend.memory_bytes();
        e.last_bytes.store(bytes, Ordering::Relaxed);
        *e.last_info.lock() = Some(backend.info().clone());
        let release = Arc::new(Release(Arc::clone(&self.freed)));
        let weak_release = Arc::downgrade(&release);
        let backend: Arc<dyn EmbeddingBackend> = Arc::new(Tracked {
            inner: backend,
            _release: release,
        });
        let batcher = Batcher::new(
            &e.name,
            backend,
            Arc::clone(&self.pool),
            self.batcher.clone(),
        )?;
        let loaded = Arc::new(Loaded {
            batcher,
            bytes,
            in_flight: AtomicUsize::new(0),
            release: weak_release,
        });
        e.slot.lock().loaded = Some(Arc::clone(&loaded));
        self.touch(e);
        // Measured larger than estimated: make room now. (The memory of
        // models unloaded here but still serving overlaps for a while.)
        self.evict_for(&e.name, 0);
        tracing::info!(
            model = %e.name,
            bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "embedding model loaded"
        );
        metrics::model_memory(&e.name, bytes, self.loaded_count());
        Ok(loaded)
    }

    /// The instance in service, if any, or else the unloaded one put back in
    /// service if it is still alive (serving requests that were in flight).
    fn in_service(&self, e: &Entry) -> Result<Option<Arc<Loaded>>> {
        let mut slot = e.slot.lock();
        if let Some(l) = &slot.loaded {
            return Ok(Some(Arc::clone(l)));
        }
        let Some(r) = slot.retired.take() else {
            return Ok(None);
        };
        let loaded = match (r.loaded.upgrade(), r.backend.upgrade()) {
            (Some(l), _) => l,
            // Its batcher is gone, but a batch thread still finishes with the
            // model: serve it through a new batcher.
            (None, Some(backend)) => {
                match Batcher::new(
                    &e.name,
                    backend,
                    Arc::clone(&self.pool),
                    self.batcher.clone(),
                ) {
                    Ok(batcher) => Arc::new(Loaded {
                        batcher,
                        bytes: r.bytes,
                        in_flight: AtomicUsize::new(0),
                        release: Weak::clone(&r.release),
                    }),
                    Err(err) => {
                        slot.retired = Some(r);
                        return Err(err);
                    }
                }
            }
            (None, None) => {
                // Gone, or all but gone: its memory counts until it is.
                if r.release.strong_count() > 0 {
                    slot.retired = Some(r);
                }
                return Ok(None);
            }
        };
        slot.loaded = Some(Arc::clone(&loaded));
        drop(slot);
        // A load waiting for this instance to go must unload it again.
        self.freed.notify_waiters();
        tracing::info!(model = %e.name, "embedding model back in service (it was still serving)");
        metrics::model_memory(&e.name, loaded.bytes, self.loaded_count());
        Ok(Some(loaded))
    }

    /// Makes room for `needed` bytes of `e` under the budget: unloads other
    /// models ([`Inner::evict_for`]), then waits until the unloaded ones
    /// still serving are gone, until `deadline` at most. A model larger than
    /// the whole budget may load once nothing else holds memory.
    async fn make_room(
        &self,
        e: &Entry,
        needed: u64,
        deadline: tokio::time::Instant,
    ) -> Result<()> {
        loop {
            // Registered before the check, so a model gone in between still wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            self.evict_for(&e.name, needed);
            let held = self.loaded_bytes();
            if held == 0 || held.saturating_add(needed) <= self.memory_budget {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                tracing::warn!(
                    model = %e.name,
                    needed,
                    held,
                    budget = self.memory_budget,
                    "embedding model not loaded: the memory budget is held by models still serving"
                );
                return Err(EmbedError::MemoryBudget {
                    model: e.name.clone(),
                    needed,
                    budget: self.memory_budget,
                });
            }
        }
    }

    /// Unloads models other than `keep` until the models in service plus
    /// `incoming` fit the budget (or nothing else is in service): first those
    /// without requests in flight, least recently used first. (Unloaded models
    /// still serving keep their memory for a while; [`Inner::make_room`]
    /// waits for them.)
    fn evict_for(&self, keep: &str, incoming: u64) {
        while self.in_service_bytes().saturating_add(incoming) > self.memory_budget {
            let victim = self
                .entries
                .iter()
                .filter(|e| e.name != keep)
                .filter_map(|e| {
                    let busy = e
                        .slot
                        .lock()
                        .loaded
                        .as_ref()?
                        .in_flight
                        .load(Ordering::Relaxed)
                        > 0;
                    Some((busy, e.last_use.load(Ordering::Relaxed), e))
                })
                .min_by_key(|(busy, last_use, _)| (*busy, *last_use));
            match victim {
                Some((busy, _, v)) => {
                    tracing::info!(model = %v.name, busy, "unloading for the memory budget");
                    self.unload_entry(v);
                }
                None => break,
            }
        }
    }
}

/// Bytes a model folder will take once loaded (for a loader other than
/// [`CandleBackend::load`]): the sizes of `model.safetensors` and
/// `tokenizer.json`, where the weights count at least as much as their tensors
/// widened to f32 when the file's header says (an f16 file loaded as f32 takes
/// twice its size).
fn estimate_bytes(dir: &Path) -> u64 {
    let file = |f: &str| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len());
    let weights_path = dir.join("model.safetensors");
    let weights = match crate::backend::f32_weight_bytes(&weights_path) {
        Ok(f32_bytes) => f32_bytes.max(file("model.safetensors")),
        Err(_) => file("model.safetensors"),
    };
    weights.saturating_add(file("tokenizer.json"))
}

/// What a model folder declares of the facts a request is checked against,
/// read as [`CandleBackend::load`] reads them (`None` when the folder does not
/// say, e.g. one only a custom loader understands).
fn folder_info(dir: &Path) -> Option<ModelInfo> {
    let spec = FolderSpec::read(dir).ok()?;
    let config = BertConfig::read(&spec.transformer_dir.join("config.json")).ok()?;
    Some(ModelInfo {
        dim: spec.pooling.output_dim(config.hidden_size),
        max_seq_length: spec
            .max_seq_length
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings),
        vocab_size: config.vocab_size,
        pooling: spec.pooling,
        normalize: spec.normalize,
    })
}

/// The errors [`prepare`] gives token-id inputs, found from `info` alone (in
/// the same order: input by input, the vocabulary before the length).
fn check_token_ids(info: &ModelInfo, seqs: &[Vec<u32>], truncate: bool) -> Result<()> {
    for (index, ids) in seqs.iter().enumerate() {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= info.vocab_size) {
            return Err(EmbedError::InvalidTokenId {
                index,
                id: i64::from(id),
                vocab_size: info.vocab_size,
            });
        }
        if !truncate && ids.len() > info.max_seq_length {
            return Err(EmbedError::InputTooLong {
                index,
                tokens: ids.len(),
                limit: info.max_seq_length,
            });
        }
    }
    Ok(())
}
