//! The model registry: configured local models, loaded lazily (or eagerly),
//! unloaded least-recently-used past the memory budget and after an idle
//! `keep_alive`; the entry point of `POST /v1/embeddings` and the admin routes.

use crate::backend::{CandleBackend, EmbeddingBackend, ModelInfo};
use crate::batcher::{Batcher, BatcherConfig, ComputePool};
use crate::error::{EmbedError, Result};
use crate::input::{EmbeddingInput, check_dimensions, prepare};
use crate::metrics;
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Loads a model folder into a backend (the default is [`CandleBackend::load`]).
pub type Loader = Arc<dyn Fn(&Path) -> Result<Arc<dyn EmbeddingBackend>> + Send + Sync>;

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

struct Loaded {
    batcher: Batcher,
    bytes: u64,
}

struct Entry {
    name: String,
    path: PathBuf,
    eager: bool,
    loaded: Mutex<Option<Arc<Loaded>>>,
    /// Serializes loads of this model.
    loading: tokio::sync::Mutex<()>,
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
        Registry::with_loader(cfg, loader)
    }

    /// Like [`Registry::new`] with another model loader (tests, other backends).
    pub fn with_loader(cfg: &uat_config::EmbeddingsConfig, loader: Loader) -> Result<Registry> {
        let entries = cfg
            .models
            .iter()
            .map(|m| Entry {
                name: m.name.clone(),
                path: m.path.clone(),
                eager: m.eager,
                loaded: Mutex::new(None),
                loading: tokio::sync::Mutex::new(()),
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
        })
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
    /// [`EmbedError::Overloaded`] when the queue is full, or ours (load/inference).
    pub async fn embed(&self, model: &str, req: EmbedRequest) -> Result<EmbedResponse> {
        let entry = self.entry(model)?;
        req.input.validate()?;
        let loaded = self.ensure_loaded(entry).await?;
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
        let loaded = entry.loaded.lock().clone();
        Ok(loaded.map(|l| l.batcher.backend().info().clone()))
    }

    /// Batches (forward calls) the loaded model's batcher has run (`None` when not
    /// loaded); counts from zero at each load.
    pub fn batches(&self, name: &str) -> Result<Option<u64>> {
        let entry = self.entry(name)?;
        let loaded = entry.loaded.lock().clone();
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
        let loaded = e.loaded.lock().clone();
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
    /// already queued still finish; the memory is freed after them.
    pub fn unload(&self, name: &str) -> Result<bool> {
        let entry = self.entry(name)?;
        Ok(self.unload_entry(entry))
    }

    fn unload_entry(&self, e: &Entry) -> bool {
        let was = e.loaded.lock().take();
        let unloaded = was.is_some();
        if unloaded {
            tracing::info!(model = %e.name, "embedding model unloaded");
            metrics::model_memory(&e.name, 0, self.loaded_count());
        }
        unloaded
    }

    /// Memory held by loaded models together.
    pub fn loaded_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter_map(|e| e.loaded.lock().as_ref().map(|l| l.bytes))
            .sum()
    }

    fn loaded_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.loaded.lock().is_some())
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

    async fn ensure_loaded(&self, e: &Entry) -> Result<Arc<Loaded>> {
        if let Some(l) = e.loaded.lock().clone() {
            return Ok(l);
        }
        let _guard = e.loading.lock().await;
        if let Some(l) = e.loaded.lock().clone() {
            return Ok(l);
        }
        // Make room for the estimate (file sizes) before loading, then for the
        // measured size after.
        let estimate = estimate_bytes(&e.path);
        self.evict_for(&e.name, estimate);
        let loader = Arc::clone(&self.loader);
        let path = e.path.clone();
        let started = Instant::now();
        let backend = tokio::task::spawn_blocking(move || loader(&path))
            .await
            .map_err(|err| EmbedError::load(&e.path, err))??;
        let bytes = backend.memory_bytes();
        let batcher = Batcher::new(
            &e.name,
            backend,
            Arc::clone(&self.pool),
            self.batcher.clone(),
        )?;
        let loaded = Arc::new(Loaded { batcher, bytes });
        *e.loaded.lock() = Some(Arc::clone(&loaded));
        self.touch(e);
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

    /// Unloads least-recently-used models other than `keep` until the loaded ones
    /// plus `incoming` fit the budget (or nothing else is loaded).
    fn evict_for(&self, keep: &str, incoming: u64) {
        while self.loaded_bytes().saturating_add(incoming) > self.memory_budget {
            let victim = self
                .entries
                .iter()
                .filter(|e| e.name != keep && e.loaded.lock().is_some())
                .min_by_key(|e| e.last_use.load(Ordering::Relaxed));
            match victim {
                Some(v) => {
                    tracing::info!(model = %v.name, "unloading for the memory budget");
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
