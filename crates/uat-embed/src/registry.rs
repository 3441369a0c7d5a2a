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

use crate::backend::{CandleBackend, EmbeddingBackend, ModelInfo};
use crate::batcher::{Batcher, BatcherConfig, ComputePool};
use crate::error::{EmbedError, Result};
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

struct Entry {
    name: String,
    path: PathBuf,
    eager: bool,
    slot: Mutex<Slot>,
    /// Bytes measured at the last load (0 before): the estimate of the next one
    /// when larger than the file sizes.
    last_bytes: AtomicU64,
    /// Milliseconds since the registry's epoch of the last use, plus one (0 = never).
    last_use: AtomicU64,
}

/// The configured local embedding models.
pub struct Registry {
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
    budget_wait: Duration,
}

/// Total text bytes above which tokenization leaves the async worker.
const INLINE_TOKENIZE_BYTES: usize = 4096;

impl Registry {
    /// A registry of the `[[embeddings.models]]` in `cfg`, nothing loaded yet, with
    /// its compute pool of `cfg.threads` threads.
    pub fn new(cfg: &uat_config::EmbeddingsConfig) -> Result<Registry> {
        let loader: Loader = Arc::new(|p: &Path| {
            CandleBackend::load(p).map(|b| Arc::new(b) as Arc<dyn EmbeddingBackend>)
        });
        let mut r = Registry::with_loader(cfg, loader)?;
        r.check = Some(CandleBackend::check);
        Ok(r)
    }

    /// Like [`Registry::new`] with another model loader (tests, other backends).
    /// The size of a model before its first load is estimated from the sizes of
    /// `model.safetensors` and `tokenizer.json` in its folder.
    pub fn with_loader(cfg: &uat_config::EmbeddingsConfig, loader: Loader) -> Result<Registry> {
        let entries = cfg
            .models
            .iter()
            .map(|m| Entry {
                name: m.name.clone(),
                path: m.path.clone(),
                eager: m.eager,
                slot: Mutex::new(Slot::default()),
                last_bytes: AtomicU64::new(0),
                last_use: AtomicU64::new(0),
            })
            .collect();
        Ok(Registry {
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
            budget_wait: BUDGET_WAIT,
        })
    }

    /// Sets how long a load waits for models that were unloaded but are still
    /// finishing requests to free the memory it needs (30 s by default); past
    /// it the load fails with [`EmbedError::MemoryBudget`].
    pub fn with_budget_wait(mut self, wait: Duration) -> Registry {
        self.budget_wait = wait;
        self
    }

    /// Names of the configured models (for `GET /v1/models`), in config order.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.clone()).collect()
    }

    /// Whether `name` is a configured local model.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e.name == name)
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| EmbedError::UnknownModel(name.to_string()))
    }

    /// Embeds a request with model `model`, loading it first if needed.
    ///
    /// Errors: the caller's ([`EmbedError::is_client_error`]: unknown model, bad
    /// input, too long with `truncate: false`, unsupported `dimensions`),
    /// [`EmbedError::Overloaded`] when the queue is full,
    /// [`EmbedError::MemoryBudget`] when the model cannot be loaded in time
    /// within the budget, or ours (load/inference).
    pub async fn embed(&self, model: &str, req: EmbedRequest) -> Result<EmbedResponse> {
        let entry = self.entry(model)?;
        req.input.validate()?;
        let in_flight = InFlight::new(self.ensure_loaded(entry).await?);
        let loaded = &in_flight.0;
        self.touch(entry);
        let backend = Arc::clone(loaded.batcher.backend());
        check_dimensions(model, backend.info(), req.dimensions)?;
        let text_bytes: usize = match &req.input {
            EmbeddingInput::Texts(t) => t.iter().map(String::len).sum(),
            EmbeddingInput::TokenIds(_) => 0,
        };
        let prepared = if text_bytes <= INLINE_TOKENIZE_BYTES {
            prepare(backend.as_ref(), &req.input, req.truncate)?
        } else {
            let (input, truncate) = (req.input, req.truncate);
            tokio::task::spawn_blocking(move || prepare(backend.as_ref(), &input, truncate))
                .await
                .map_err(|e| EmbedError::Tokenizer(e.to_string()))??
        };
        let embeddings = loaded.batcher.embed(prepared.ids).await?;
        self.touch(entry);
        Ok(EmbedResponse {
            model: entry.name.clone(),
            embeddings,
            prompt_tokens: prepared.prompt_tokens,
        })
    }

    /// Static facts of a loaded model (`None` when not loaded).
    pub fn info(&self, name: &str) -> Result<Option<ModelInfo>> {
        let entry = self.entry(name)?;
        let loaded = entry.slot.lock().loaded.clone();
        Ok(loaded.map(|l| l.batcher.backend().info().clone()))
    }

    /// Batches (forward calls) the loaded model's batcher has run (`None` when not
    /// loaded); counts from zero at each load.
    pub fn batches(&self, name: &str) -> Result<Option<u64>> {
        let entry = self.entry(name)?;
        let loaded = entry.slot.lock().loaded.clone();
        Ok(loaded.map(|l| l.batcher.batches()))
    }

    /// Every configured model with its state.
    pub fn list(&self) -> Vec<ModelStatus> {
        self.entries.iter().map(|e| self.status(e)).collect()
    }

    /// One model's state.
    pub fn status_of(&self, name: &str) -> Result<ModelStatus> {
        Ok(self.status(self.entry(name)?))
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

    /// Loads `name` now (admin `load`); a no-op if loaded. Counts as a use.
    pub async fn load(&self, name: &str) -> Result<ModelStatus> {
        let entry = self.entry(name)?;
        self.ensure_loaded(entry).await?;
        self.touch(entry);
        Ok(self.status(entry))
    }

    /// Loads every model marked `eager`.
    pub async fn load_eager(&self) -> Result<()> {
        for e in self.entries.iter().filter(|e| e.eager) {
            self.ensure_loaded(e).await?;
        }
        Ok(())
    }

    /// Unloads `name` (admin `unload`); returns whether it was loaded. Requests
    /// already queued still finish; the memory is freed after them, and counts
    /// against the budget until then.
    pub fn unload(&self, name: &str) -> Result<bool> {
        let entry = self.entry(name)?;
        Ok(self.unload_entry(entry))
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
    pub fn loaded_bytes(&self) -> u64 {
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

    /// Unloads models idle longer than `keep_alive` (zero disables it); returns
    /// their names.
    pub fn unload_idle(&self) -> Vec<String> {
        if self.keep_alive.is_zero() {
            return Vec::new();
        }
        let now = self.now_ms();
        let keep = self.keep_alive.as_millis() as u64;
        let mut out = Vec::new();
        for e in &self.entries {
            let last = e.last_use.load(Ordering::Relaxed).saturating_sub(1);
            if now.saturating_sub(last) >= keep && self.unload_entry(e) {
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
            (self.keep_alive / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
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

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn touch(&self, e: &Entry) {
        e.last_use.store(self.now_ms() + 1, Ordering::Relaxed);
    }

    /// The instance in service, loading the model if needed.
    async fn ensure_loaded(&self, e: &Entry) -> Result<Arc<Loaded>> {
        if let Some(l) = self.in_service(e)? {
            return Ok(l);
        }
        let _guard = self.load_lock.lock().await;
        if let Some(l) = self.in_service(e)? {
            return Ok(l);
        }
        let started = Instant::now();
        // Check the folder before unloading anything for it.
        let estimate = match self.check {
            Some(check) => {
                let path = e.path.clone();
                tokio::task::spawn_blocking(move || check(&path))
                    .await
                    .map_err(|err| EmbedError::load(&e.path, err))??
            }
            None => estimate_bytes(&e.path),
        };
        let needed = estimate.max(e.last_bytes.load(Ordering::Relaxed));
        self.make_room(e, needed).await?;
        let loader = Arc::clone(&self.loader);
        let path = e.path.clone();
        let backend = tokio::task::spawn_blocking(move || loader(&path))
            .await
            .map_err(|err| EmbedError::load(&e.path, err))??;
        let bytes = backend.memory_bytes();
        e.last_bytes.store(bytes, Ordering::Relaxed);
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
    /// models ([`Registry::evict_for`]), then waits until the unloaded ones
    /// still serving are gone, at most `budget_wait`. A model larger than the
    /// whole budget may load once nothing else holds memory.
    async fn make_room(&self, e: &Entry, needed: u64) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.budget_wait;
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
    /// still serving keep their memory for a while; [`Registry::make_room`]
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

/// Bytes a model folder will take once loaded, from its file sizes.
fn estimate_bytes(dir: &Path) -> u64 {
    ["model.safetensors", "tokenizer.json"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}
