//! The semantic index: one `uat-vector` collection per embedding model,
//! kept consistent with SQL by tailing the change log.
//!
//! SQL is the source of truth. The index applies changes after they commit
//! (through [`VectorIndex::catch_up`], run by a background tailer and kicked
//! after local writes), remembers the last change applied in `applied_seq`
//! next to the collection, and at start-up is rebuilt from SQL when it is
//! missing, made by another model, or ahead of the database (a restored or
//! different database). When it is merely behind it catches up from the log,
//! which is also how a replica sees writes made through the others.
//!
//! Searches filter by user, tags, kind, agent and time inside the graph walk
//! (payload indexes + the engine's planner), never after it.

use crate::error::{MemoryError, Result};
use crate::store::{AnyStore, Store};
use crate::types::{ChangeOp, Filter, IndexEntry, TagMode, now, to_micros};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use uat_vector::filter::{Condition, FieldCondition, FieldTest, MatchValue, Range};
use uat_vector::{
    Collection, CollectionConfig, FsyncPolicy, Metric, PayloadIndexKind, Point, PointId,
    SearchRequest,
};
use uuid::Uuid;

/// Changes read from the log in one round.
const CHANGE_PAGE: usize = 2000;
/// Rows read from SQL per page while rebuilding.
const REBUILD_PAGE: usize = 2000;
/// Operations applied between snapshots (which empty the vector WAL).
const SNAPSHOT_EVERY: usize = 50_000;
/// Longest the applied position stays unsaved.
const PERSIST_EVERY: Duration = Duration::from_secs(2);

const WATERMARK: &str = "applied_seq";

/// The threads that apply the change log to the vector index: one fewer than
/// the machine's cores (at least one), so catching up after a burst of writes
/// leaves a core to the writer and the readers. With every core inserting into
/// the graph the SQL writer was starved: a 100,000-memory load on 2 cores ran
/// at 4,400/s instead of 5,900/s. (Rebuilds at start-up use every core.)
fn tail_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(cores.saturating_sub(1).max(1))
            .thread_name(|i| format!("uat-memory-index-{i}"))
            .build()
            .map_err(|e| tracing::warn!(error = %e, "memory: no index thread pool, using the global one"))
            .ok()
    })
    .as_ref()
}

fn ix(e: uat_vector::VectorError) -> MemoryError {
    MemoryError::Index(e.to_string())
}

/// The vector index of one embedding model.
pub struct VectorIndex {
    coll: Arc<Collection>,
    dir: PathBuf,
    model: String,
    dimension: usize,
    applied: AtomicI64,
    applied_tx: watch::Sender<i64>,
    kick: Notify,
    round: tokio::sync::Mutex<()>,
    since_snapshot: AtomicUsize,
    last_persist: parking_lot::Mutex<Instant>,
    /// Searches running on the blocking pool at once: two per core. Without
    /// a bound, 50 concurrent searches were 50 runnable blocking threads on
    /// 2 cores, and the switching between them cost more than the searches;
    /// with one per core they lost the cores to a PostgreSQL on the same
    /// machine (its semantic searches 30% slower). Measured at 2, 4 and 8 on
    /// 2 cores, 4 was best on both stores.
    searching: tokio::sync::Semaphore,
}

fn model_dir(base: &Path, model: &str) -> PathBuf {
    let safe: String = model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    base.join(safe)
}

fn collection_config(dimension: usize) -> CollectionConfig {
    let mut cfg = CollectionConfig::new(dimension, Metric::Cosine);
    let idx: BTreeMap<String, PayloadIndexKind> = [
        ("user_id", PayloadIndexKind::Keyword),
        ("agent_id", PayloadIndexKind::Keyword),
        ("kind", PayloadIndexKind::Keyword),
        ("tags", PayloadIndexKind::Keyword),
        ("created_us", PayloadIndexKind::Integer),
        ("expires_us", PayloadIndexKind::Integer),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    cfg.payload_indexes = idx;
    cfg
}

fn point(e: IndexEntry) -> Point {
    let mut p = serde_json::Map::new();
    p.insert("user_id".into(), e.user_id.into());
    if let Some(a) = e.agent_id {
        p.insert("agent_id".into(), a.into());
    }
    if let Some(k) = e.kind {
        p.insert("kind".into(), k.into());
    }
    p.insert("tags".into(), e.tags.into());
    p.insert("created_us".into(), e.created_us.into());
    p.insert("expires_us".into(), e.expires_us.unwrap_or(i64::MAX).into());
    Point {
        id: PointId::Uuid(e.id.to_string()),
        vector: e.embedding.vector,
        payload: Some(serde_json::Value::Object(p)),
    }
}

fn keyword(key: &str, v: &str) -> Condition {
    Condition::Field(FieldCondition {
        key: key.into(),
        test: FieldTest::Match(MatchValue::Keyword(v.into())),
    })
}

fn range(key: &str, r: Range) -> Condition {
    Condition::Field(FieldCondition {
        key: key.into(),
        test: FieldTest::Range(r),
    })
}

/// The engine filter for a memory filter (metadata is checked in SQL).
pub(crate) fn vector_filter(f: &Filter) -> uat_vector::Filter {
    let mut must = vec![keyword("user_id", &f.user_id)];
    // Not expired, said as "not (expires <= now)": every point carries
    // `expires_us` (i64::MAX when it never expires), so the two agree, and the
    // index resolves this one by walking only the memories already expired
    // (a handful) rather than every memory that is not.
    let must_not = vec![range(
        "expires_us",
        Range {
            lte: Some(to_micros(now()) as f64),
            ..Range::default()
        },
    )];
    if let Some(a) = &f.agent_id {
        must.push(keyword("agent_id", a));
    }
    if let Some(k) = &f.kind {
        must.push(keyword("kind", k));
    }
    if f.since.is_some() || f.until.is_some() {
        must.push(range(
            "created_us",
            Range {
                gte: f.since.map(|t| to_micros(t) as f64),
                lte: f.until.map(|t| to_micros(t) as f64),
                ..Range::default()
            },
        ));
    }
    if !f.tags.is_empty() {
        match f.tag_mode {
            TagMode::Any => must.push(Condition::Field(FieldCondition {
                key: "tags".into(),
                test: FieldTest::Any(
                    f.tags
                        .iter()
                        .map(|t| MatchValue::Keyword(t.clone()))
                        .collect(),
                ),
            })),
            TagMode::All => must.extend(f.tags.iter().map(|t| keyword("tags", t))),
        }
    }
    uat_vector::Filter {
        must,
        must_not,
        ..uat_vector::Filter::default()
    }
}

impl VectorIndex {
    /// Opens the index of `model` under `base`, rebuilding it from SQL when it
    /// is missing or unusable, then catching up with the change log.
    pub async fn open(
        base: &Path,
        model: &str,
        dimension: usize,
        store: &AnyStore,
    ) -> Result<Arc<Self>> {
        let dir = model_dir(base, model);
        let last = store.last_change().await?;
        let horizon = store.change_horizon().await?;
        let (dir2, model2) = (dir.clone(), model.to_string());
        let opened = tokio::task::spawn_blocking(move || {
            open_existing(&dir2, &model2, dimension, last, horizon)
        })
        .await
        .map_err(|e| MemoryError::Index(e.to_string()))??;
        let (coll, applied) = match opened {
            Some(x) => x,
            None => {
                tracing::info!(model, "memory: rebuilding the vector index from SQL");
                let coll = rebuild(&dir, model, dimension, store).await?;
                (coll, last)
            }
        };
        let (applied_tx, _) = watch::channel(applied);
        let idx = Arc::new(VectorIndex {
            coll,
            dir,
            model: model.to_string(),
            dimension,
            applied: AtomicI64::new(applied),
            applied_tx,
            kick: Notify::new(),
            round: tokio::sync::Mutex::new(()),
            since_snapshot: AtomicUsize::new(0),
            last_persist: parking_lot::Mutex::new(Instant::now()),
            searching: tokio::sync::Semaphore::new(
                2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
        });
        idx.persist(true).await?;
        while idx.catch_up(store).await? > 0 {}
        Ok(idx)
    }

    /// The model whose vectors this index holds.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The last change-log position applied.
    pub fn applied(&self) -> i64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Points in the index.
    pub fn len(&self) -> usize {
        self.coll.count()
    }

    /// True when the index holds no point.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks the tailer to run a round now.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Waits until the change `seq` is applied, at most `timeout`. True when it is.
    pub async fn wait_for(&self, seq: i64, timeout: Duration) -> bool {
        let mut rx = self.applied_tx.subscribe();
        if *rx.borrow() >= seq {
            return true;
        }
        self.kick();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The nearest memories of the filter's user: `(id, cosine)`, best first.
    pub async fn search(
        &self,
        vector: Vec<f32>,
        filter: &Filter,
        k: usize,
    ) -> Result<Vec<(Uuid, f32)>> {
        let search = self.searcher(vector, filter, k)?;
        let _permit = self
            .searching
            .acquire()
            .await
            .map_err(|e| MemoryError::Index(e.to_string()))?;
        tokio::task::spawn_blocking(search)
            .await
            .map_err(|e| MemoryError::Index(e.to_string()))?
    }

    /// The search of [`VectorIndex::search`] as a closure, for a caller that
    /// runs it on a blocking thread it already holds (hybrid search on
    /// SQLite runs it beside its SQL, one hand-off instead of three).
    pub fn searcher(
        &self,
        vector: Vec<f32>,
        filter: &Filter,
        k: usize,
    ) -> Result<impl FnOnce() -> Result<Vec<(Uuid, f32)>> + Send + 'static + use<>> {
        if vector.len() != self.dimension {
            return Err(MemoryError::Embedding(format!(
                "the model returned {} dimensions; the index holds {}",
                vector.len(),
                self.dimension
            )));
        }
        let mut req = SearchRequest::new(vector, k.clamp(1, uat_vector::MAX_TOP_K));
        req.filter = Some(vector_filter(filter));
        req.with_payload = false;
        let coll = self.coll.clone();
        Ok(move || {
            let hits = coll.search(&req).map_err(ix)?;
            Ok(hits
                .into_iter()
                .filter_map(|h| match h.id {
                    PointId::Uuid(s) => Uuid::parse_str(&s).ok().map(|u| (u, h.score)),
                    PointId::Num(_) => None,
                })
                .collect())
        })
    }

    /// Applies one page of the change log; returns how many changes it read.
    pub async fn catch_up(&self, store: &AnyStore) -> Result<usize> {
        let _round = self.round.lock().await;
        let from = self.applied();
        let changes = store.changes_after(from, CHANGE_PAGE).await?;
        let Some(last) = changes.last().map(|c| c.seq) else {
            return Ok(0);
        };
        // A gap before the first change read is either positions never
        // committed (a PostgreSQL sequence skips on rollback) or a part of the
        // log pruned before this index applied it (stalled for longer than
        // the retention): only the horizon tells, and only a gap asks it.
        if changes[0].seq > from + 1 && store.change_horizon().await? > from {
            return self.resync(store).await;
        }
        let mut users: Vec<String> = Vec::new();
        let mut ids: Vec<Uuid> = Vec::new();
        let mut seen = HashSet::new();
        for c in &changes {
            match (c.op, c.memory_id) {
                (ChangeOp::DeleteUser, _) => users.push(c.user_id.clone()),
                (_, Some(id)) => {
                    if seen.insert(id) {
                        ids.push(id);
                    }
                }
                (_, None) => {}
            }
        }
        let entries = store.index_entries(&ids).await?;
        let model = self.model.clone();
        let dim = self.dimension;
        let coll = self.coll.clone();
        let n = tokio::task::spawn_blocking(move || -> Result<usize> {
            for u in &users {
                let f = uat_vector::Filter {
                    must: vec![keyword("user_id", u)],
                    ..uat_vector::Filter::default()
                };
                coll.delete_by_filter(&f).map_err(ix)?;
            }
            let present: HashSet<Uuid> = entries
                .iter()
                .filter(|e| e.embedding.model == model && e.embedding.vector.len() == dim)
                .map(|e| e.id)
                .collect();
            let gone: Vec<PointId> = ids
                .iter()
                .filter(|id| !present.contains(id))
                .map(|id| PointId::Uuid(id.to_string()))
                .collect();
            coll.delete(gone).map_err(ix)?;
            let points: Vec<Point> = entries
                .into_iter()
                .filter(|e| present.contains(&e.id))
                .map(point)
                .collect();
            match tail_pool() {
                Some(pool) => pool.install(|| coll.upsert(points)),
                None => coll.upsert(points),
            }
            .map_err(ix)?;
            Ok(ids.len() + users.len())
        })
        .await
        .map_err(|e| MemoryError::Index(e.to_string()))??;
        self.applied.store(last, Ordering::Release);
        self.applied_tx.send_replace(last);
        self.since_snapshot.fetch_add(n, Ordering::Relaxed);
        self.persist(false).await?;
        Ok(changes.len())
    }

    /// Brings the index in line with SQL without the change log, while it
    /// keeps answering searches: upserts every entry SQL holds and deletes the
    /// points SQL no longer has, then takes the log's position read before the
    /// scan as applied (later changes are applied again by the next rounds,
    /// which is harmless: applying a change reads the row's current state).
    /// Called with the round lock held. Returns how many entries it read (at
    /// least 1, so a caller looping while rounds make progress goes on).
    async fn resync(&self, store: &AnyStore) -> Result<usize> {
        let last = store.last_change().await?;
        tracing::warn!(
            model = %self.model,
            applied = self.applied(),
            "memory: the change log was pruned past this index's position; resyncing it from SQL"
        );
        let keep =
            load_from_sql(&self.coll, &self.model, self.dimension, store, tail_pool()).await?;
        let c = self.coll.clone();
        let n = keep.len();
        tokio::task::spawn_blocking(move || {
            let gone: Vec<PointId> = c
                .ids()
                .into_iter()
                .filter(|id| !keep.contains(id))
                .collect();
            c.delete(gone)
        })
        .await
        .map_err(|e| MemoryError::Index(e.to_string()))?
        .map_err(ix)?;
        self.applied.store(last, Ordering::Release);
        self.applied_tx.send_replace(last);
        self.since_snapshot.fetch_add(n, Ordering::Relaxed);
        self.persist(true).await?;
        Ok(n.max(1))
    }

    /// Saves the applied position (after flushing the vector WAL), every
    /// [`PERSIST_EVERY`] or when `force`; snapshots every [`SNAPSHOT_EVERY`] ops.
    async fn persist(&self, force: bool) -> Result<()> {
        {
            let mut last = self.last_persist.lock();
            if !force && last.elapsed() < PERSIST_EVERY {
                return Ok(());
            }
            *last = Instant::now();
        }
        let snapshot = self.since_snapshot.load(Ordering::Relaxed) >= SNAPSHOT_EVERY;
        if snapshot {
            self.since_snapshot.store(0, Ordering::Relaxed);
        }
        let coll = self.coll.clone();
        let dir = self.dir.clone();
        let text = format!("{} {} {}\n", self.applied(), self.dimension, self.model);
        tokio::task::spawn_blocking(move || -> Result<()> {
            if snapshot {
                coll.snapshot().map_err(ix)?;
            } else {
                coll.flush().map_err(ix)?;
            }
            let tmp = dir.join(format!("{WATERMARK}.tmp"));
            std::fs::write(&tmp, text).map_err(|e| MemoryError::Index(e.to_string()))?;
            std::fs::rename(&tmp, dir.join(WATERMARK))
                .map_err(|e| MemoryError::Index(e.to_string()))
        })
        .await
        .map_err(|e| MemoryError::Index(e.to_string()))?
    }

    /// Runs the tailer until the store is dropped: a round every `interval`,
    /// or at once when kicked.
    pub fn spawn_tailer(
        self: &Arc<Self>,
        store: std::sync::Weak<AnyStore>,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let idx = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(me) = idx.upgrade() else { return };
                let Some(store) = store.upgrade() else { return };
                match me.catch_up(&store).await {
                    Ok(n) if n >= CHANGE_PAGE => continue,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "memory: vector index catch-up failed; retrying")
                    }
                }
                drop(store);
                let kicked = async { me.kick.notified().await };
                let _ = tokio::time::timeout(interval, kicked).await;
            }
        })
    }
}

/// Upserts every entry SQL holds for `model` into `coll`, a page at a time
/// (on `pool` when given); returns the ids written.
async fn load_from_sql(
    coll: &Arc<Collection>,
    model: &str,
    dimension: usize,
    store: &AnyStore,
    pool: Option<&'static rayon::ThreadPool>,
) -> Result<HashSet<PointId>> {
    let mut ids = HashSet::new();
    let mut after = None;
    loop {
        let page = store.scan_index_entries(after, REBUILD_PAGE).await?;
        let Some(last) = page.last().map(|e| e.id) else {
            return Ok(ids);
        };
        after = Some(last);
        let points: Vec<Point> = page
            .into_iter()
            .filter(|e| e.embedding.model == model && e.embedding.vector.len() == dimension)
            .map(point)
            .collect();
        ids.extend(points.iter().map(|p| p.id.clone()));
        let c = coll.clone();
        tokio::task::spawn_blocking(move || match pool {
            Some(pool) => pool.install(|| c.upsert(points)),
            None => c.upsert(points),
        })
        .await
        .map_err(|e| MemoryError::Index(e.to_string()))?
        .map_err(ix)?;
    }
}

/// Opens an index whose watermark is usable; `None` when it must be rebuilt:
/// also when it applied less than the pruned part of the log (`horizon`),
/// whose changes it can no longer read.
fn open_existing(
    dir: &Path,
    model: &str,
    dimension: usize,
    last: i64,
    horizon: i64,
) -> Result<Option<(Arc<Collection>, i64)>> {
    let Ok(text) = std::fs::read_to_string(dir.join(WATERMARK)) else {
        return Ok(None);
    };
    let mut parts = text.trim().splitn(3, ' ');
    let seq: Option<i64> = parts.next().and_then(|s| s.parse().ok());
    let dim: Option<usize> = parts.next().and_then(|s| s.parse().ok());
    let m = parts.next();
    let (Some(seq), Some(dim), Some(m)) = (seq, dim, m) else {
        return Ok(None);
    };
    if dim != dimension || m != model || seq > last {
        return Ok(None);
    }
    if seq < horizon {
        tracing::info!(
            applied = seq,
            pruned_through = horizon,
            "memory: the vector index is older than the change log kept; rebuilding"
        );
        return Ok(None);
    }
    match Collection::open(dir, model, FsyncPolicy::Never) {
        Ok(c) if c.config().dimension == dimension => Ok(Some((Arc::new(c), seq))),
        Ok(_) => Ok(None),
        Err(e) => {
            tracing::warn!(error = %e, "memory: vector index unreadable; rebuilding");
            Ok(None)
        }
    }
}

async fn rebuild(
    dir: &Path,
    model: &str,
    dimension: usize,
    store: &AnyStore,
) -> Result<Arc<Collection>> {
    let (d, m) = (dir.to_path_buf(), model.to_string());
    let coll = tokio::task::spawn_blocking(move || -> Result<Arc<Collection>> {
        if d.exists() {
            std::fs::remove_dir_all(&d)
                .map_err(|e| MemoryError::Index(format!("{}: {e}", d.display())))?;
        }
        Collection::create(&d, &m, collection_config(dimension), FsyncPolicy::Never)
            .map(Arc::new)
            .map_err(ix)
    })
    .await
    .map_err(|e| MemoryError::Index(e.to_string()))??;
    load_from_sql(&coll, model, dimension, store, None).await?;
    let c = coll.clone();
    tokio::task::spawn_blocking(move || c.snapshot().map_err(ix))
        .await
        .map_err(|e| MemoryError::Index(e.to_string()))??;
    Ok(coll)
}
