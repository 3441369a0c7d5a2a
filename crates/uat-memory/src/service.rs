//! [`Memories`]: the memory service proper — validation, embedding, the SQL
//! store and the vector index behind one handle. The HTTP layer only parses
//! and maps errors.
//!
//! A write (and an update that changes the content) embeds its texts before
//! it stores them. When the embedder fails or is overloaded
//! ([`MemoryError::Embedding`]) the write does not fail: the memories are
//! stored without an embedding (an update also drops the old content's), so
//! keyword search finds them at once; the answer says so
//! ([`WriteOutcome::embedding_pending`]), one warning is logged per write,
//! `uat_memory_embedding_deferred_total` counts the memories, and the
//! embedding backfill is woken to embed them once the model answers again,
//! after which semantic search finds them too. Any other error of the
//! embedder still fails the write. Searches still need the model for the
//! query: a semantic or hybrid search fails while it is down.

use crate::backfill;
use crate::embed::{Embedder, embed_texts};
use crate::error::{MemoryError, Result};
use crate::index::VectorIndex;
use crate::input::{self, Limits, PatchInput, SearchMode, SearchQuery, WriteRequest};
use crate::keyword;
use crate::metrics::{self, Op};
use crate::store::{self, AnyStore, Store};
use crate::tenant::{self, Scoped};
use crate::types::{
    Embedding, Filter, HistoryEntry, ListQuery, Memory, NewRow, Page, Patch, WriteOutcome, now,
};
use serde::Serialize;
use sha2::Digest;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The constant of reciprocal rank fusion: `score = sum 1 / (RRF_K + rank)`.
pub const RRF_K: f64 = 60.0;
/// Longest a search waits for the index to apply changes already committed.
const INDEX_WAIT: Duration = Duration::from_secs(1);

/// How the service is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Content and batch limits.
    pub limits: Limits,
    /// Folder of the vector index (needed with an embedder).
    pub index_dir: Option<PathBuf>,
    /// How often the index polls the change log (it is also kicked by local writes).
    pub tail_interval: Duration,
    /// How often expired memories are purged and the change log pruned
    /// (see [`Memories::purge`]); `None`: never in the background.
    pub purge_interval: Option<Duration>,
    /// How long change-log records are kept: a replica whose index stops for
    /// longer rebuilds (or resyncs) it from SQL instead of catching up.
    pub change_retention: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            limits: Limits::default(),
            index_dir: None,
            tail_interval: Duration::from_millis(200),
            purge_interval: Some(Duration::from_secs(60)),
            change_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Expired memories deleted per transaction while purging.
const PURGE_BATCH: usize = 1000;
/// Change-log records removed per transaction while pruning.
const PRUNE_BATCH: usize = 10_000;

/// What one [`Memories::purge`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    /// Expired memories deleted.
    pub expired: u64,
    /// Change-log records pruned.
    pub changes: u64,
}

/// Purges expired memories, then prunes the change log: records older than
/// `retention` that the local index (if any) has applied (`applied`).
async fn purge_round(
    store: &AnyStore,
    applied: Option<i64>,
    retention: Duration,
) -> Result<Purged> {
    let op = Op::start("purge");
    let r = async {
        let mut out = Purged::default();
        loop {
            let n = store.purge_expired(PURGE_BATCH).await?;
            out.expired += n;
            metrics::purged("expired", n);
            if n < PURGE_BATCH as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        // A retention too long to subtract from now keeps everything.
        let Some(before) = time::Duration::try_from(retention)
            .ok()
            .and_then(|d| now().checked_sub(d))
        else {
            return Ok(out);
        };
        let through = applied.unwrap_or(i64::MAX);
        loop {
            let n = store.prune_changes(before, through, PRUNE_BATCH).await?;
            out.changes += n;
            metrics::purged("changes", n);
            if n < PRUNE_BATCH as u64 {
                break;
            }
            tokio::task::yield_now().await;
        }
        Ok(out)
    }
    .await;
    op.done(&r);
    r
}

/// One search result.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    /// The memory.
    #[serde(flatten)]
    pub memory: Memory,
    /// Cosine (semantic), keyword score (keyword: in `[0, 1)`, see
    /// [`Store::keyword`]) or fused score (hybrid); higher is better.
    pub score: f64,
    /// 1-based rank among semantic results, when found by semantic search.
    pub semantic_rank: Option<usize>,
    /// 1-based rank among keyword results, when found by keyword search.
    pub keyword_rank: Option<usize>,
}

/// The answer to a search.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResults {
    /// Best first.
    pub results: Vec<SearchHit>,
    /// Set when the search ran in a lesser mode than asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The memory service.
pub struct Memories {
    store: Arc<AnyStore>,
    embedder: Option<Arc<dyn Embedder>>,
    index: Option<Arc<VectorIndex>>,
    limits: Limits,
    change_retention: Duration,
    /// Wakes the embedding backfill after a write stored memories without
    /// their embedding.
    backfill: backfill::Waker,
    /// Dropped with the service: stops the embedding backfill at once
    /// (rather than at its next look at the store).
    _stop: tokio::sync::watch::Sender<()>,
}

fn content_hash(agent: Option<&str>, run: Option<&str>, content: &str) -> String {
    let mut h = sha2::Sha256::new();
    for part in [
        agent.unwrap_or(""),
        "\u{0}",
        run.unwrap_or(""),
        "\u{0}",
        content,
    ] {
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

impl Memories {
    /// Starts the service on an open store: opens (or rebuilds) the vector
    /// index when there is an embedder, and starts the background tasks:
    /// the index's tailer, the purge, and, with an embedder, the embedding
    /// backfill, which embeds (at start-up, then every ten minutes, a
    /// bounded batch at a time) the live memories that have no embedding of
    /// the embedder's model: those written while no model was available, or
    /// embedded by another model, or written while the embedder failed (a
    /// write then wakes it: it does not wait the ten minutes). It stores them
    /// through the change log, so every index picks them up, and skips a
    /// memory whose content changed meanwhile; it logs how many it stored,
    /// warns and retries with a backoff when the embedder fails (a wake does
    /// not shorten that backoff), and stops when the service is dropped.
    pub async fn open(
        store: AnyStore,
        embedder: Option<Arc<dyn Embedder>>,
        options: Options,
    ) -> Result<Self> {
        let store = Arc::new(store);
        let index = match (&embedder, &options.index_dir) {
            (Some(e), Some(dir)) => {
                let idx = VectorIndex::open(dir, e.model(), e.dimension(), &store).await?;
                idx.spawn_tailer(Arc::downgrade(&store), options.tail_interval);
                Some(idx)
            }
            (Some(_), None) => {
                return Err(MemoryError::Index(
                    "an embedder needs an index folder".into(),
                ));
            }
            _ => None,
        };
        let (stop, stopped) = tokio::sync::watch::channel(());
        let waker = backfill::Waker::default();
        if let Some(e) = &embedder {
            backfill::spawn(&store, e.clone(), index.as_ref(), stopped, &waker);
        }
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move {
            while let Some(s) = weak.upgrade() {
                if let Ok(n) = s.count().await {
                    metrics::set_rows(n);
                    if let AnyStore::Sqlite(sq) = &*s
                        && let Err(e) = sq.maintain(n).await
                    {
                        tracing::warn!(error = %e, "memory: full-text index merge failed");
                    }
                }
                drop(s);
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        if let Some(every) = options.purge_interval {
            let weak = Arc::downgrade(&store);
            let idx = index.as_ref().map(Arc::downgrade);
            let retention = options.change_retention;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(s) = weak.upgrade() else { return };
                    let applied = match &idx {
                        Some(w) => match w.upgrade() {
                            Some(i) => Some(i.applied()),
                            None => return,
                        },
                        None => None,
                    };
                    match purge_round(&s, applied, retention).await {
                        Ok(p) if p.expired > 0 || p.changes > 0 => tracing::debug!(
                            expired = p.expired,
                            changes = p.changes,
                            "memory: purged"
                        ),
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "memory: purge failed; retrying later")
                        }
                    }
                }
            });
        }
        Ok(Memories {
            store,
            embedder,
            index,
            limits: options.limits,
            change_retention: options.change_retention,
            backfill: waker,
            _stop: stop,
        })
    }

    /// Deletes every expired memory (each gets an `expire` history entry and
    /// leaves every index through the change log), then prunes change-log
    /// records older than the retention that the local index has applied.
    /// Runs in the background every `purge_interval`; callable at any time.
    pub async fn purge(&self) -> Result<Purged> {
        let applied = self.index.as_ref().map(|i| i.applied());
        let p = purge_round(&self.store, applied, self.change_retention).await?;
        if p.expired > 0
            && let Some(i) = &self.index
        {
            i.kick();
        }
        Ok(p)
    }

    /// The store.
    pub fn store(&self) -> &AnyStore {
        &self.store
    }

    /// The limits in effect.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The embedding model, when semantic search is available.
    pub fn model(&self) -> Option<&str> {
        self.embedder.as_ref().map(|e| e.model())
    }

    /// The vector index, when there is one.
    pub fn index(&self) -> Option<&Arc<VectorIndex>> {
        self.index.as_ref()
    }

    /// Waits until the vector index holds every committed change (at most `timeout`).
    pub async fn sync_index(&self, timeout: Duration) -> Result<bool> {
        match &self.index {
            None => Ok(true),
            Some(idx) => {
                let last = self.store.last_change().await?;
                Ok(idx.wait_for(last, timeout).await)
            }
        }
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Option<Vec<Embedding>>> {
        match &self.embedder {
            None => Ok(None),
            Some(e) => embed_texts(e.as_ref(), &texts).await.map(Some),
        }
    }

    /// [`Memories::embed`] for a write: when the embedder fails or is
    /// overloaded ([`MemoryError::Embedding`]) the write goes on without the
    /// embeddings, and the error comes back beside `None` (the backfill
    /// embeds the memories later). Any other error fails the write.
    async fn embed_or_defer(&self, texts: Vec<String>) -> Result<Embedded> {
        match self.embed(texts).await {
            Ok(embeddings) => Ok(Embedded {
                embeddings,
                deferred: None,
            }),
            Err(MemoryError::Embedding(e)) => Ok(Embedded {
                embeddings: None,
                deferred: Some(e),
            }),
            Err(e) => Err(e),
        }
    }

    /// Sets [`WriteOutcome::embedding_pending`] on the outcomes of a write
    /// (when there is an embedder): a memory this write stored is pending
    /// when its embedding was `deferred`; a deduplicated one when the memory
    /// returned has no embedding of the model, as the store says now. Should
    /// that lookup fail (the write is committed: it is not failed for this),
    /// a deduplicated one is taken to be pending when this write's embedding
    /// was deferred.
    async fn mark_pending(&self, out: &mut [WriteOutcome], deferred: bool) {
        let Some(e) = &self.embedder else { return };
        let mut deduplicated = Vec::new();
        for o in out.iter_mut() {
            o.embedding_pending = deferred;
            if o.deduplicated {
                deduplicated.push(o.memory.id);
            }
        }
        if deduplicated.is_empty() {
            return;
        }
        match self.store.index_entries(&deduplicated).await {
            Ok(entries) => {
                let embedded: HashSet<Uuid> = entries
                    .into_iter()
                    .filter(|x| {
                        x.embedding.model == e.model() && x.embedding.vector.len() == e.dimension()
                    })
                    .map(|x| x.id)
                    .collect();
                for o in out.iter_mut().filter(|o| o.deduplicated) {
                    o.embedding_pending = !embedded.contains(&o.memory.id);
                }
            }
            Err(err) => tracing::debug!(
                error = %err,
                "memory: could not tell whether deduplicated memories have an embedding"
            ),
        }
    }

    /// The service as one tenant sees it: the same operations, on that
    /// tenant's users only (see [`Scoped`]). `None`: no tenant, the ids
    /// clients send as they are (what the methods of `Memories` use).
    pub fn scoped<'a>(&'a self, tenant: Option<&'a str>) -> Scoped<'a> {
        Scoped::new(self, tenant)
    }

    /// Writes one memory or a batch (all or nothing). When the embedder fails
    /// or is overloaded ([`MemoryError::Embedding`]), the memories are stored
    /// without an embedding all the same, with
    /// [`WriteOutcome::embedding_pending`] set: keyword search finds them at
    /// once, semantic search once the backfill (woken by this write) has
    /// embedded them. Other errors of the embedder fail the write.
    pub async fn write(&self, req: WriteRequest) -> Result<Vec<WriteOutcome>> {
        self.write_in(None, req).await
    }

    pub(crate) async fn write_in(
        &self,
        tenant: Option<&str>,
        req: WriteRequest,
    ) -> Result<Vec<WriteOutcome>> {
        let op = Op::start("insert");
        let r = self.write_inner(tenant, req).await;
        op.done(&r);
        r
    }

    async fn write_inner(
        &self,
        tenant: Option<&str>,
        req: WriteRequest,
    ) -> Result<Vec<WriteOutcome>> {
        let batch = matches!(req, WriteRequest::Batch(_));
        let items = match req {
            WriteRequest::One(i) => vec![input::validate(*i, "", self.limits)?],
            WriteRequest::Batch(list) => list
                .into_iter()
                .enumerate()
                .map(|(i, it)| input::validate(it, &format!("memories[{i}]."), self.limits))
                .collect::<Result<Vec<_>>>()?,
        };
        let Embedded {
            embeddings,
            deferred,
        } = self
            .embed_or_defer(items.iter().map(|i| i.content.clone()).collect())
            .await?;
        let mut embeddings = embeddings.map(Vec::into_iter);
        // The store stamps the rows again inside its transaction: a slow
        // embedding must not date a memory before writes committed meanwhile.
        let at = now();
        let rows: Vec<NewRow> = items
            .into_iter()
            .map(|i| NewRow {
                content_hash: content_hash(i.agent_id.as_deref(), i.run_id.as_deref(), &i.content),
                dedupe: i.dedupe,
                embedding: embeddings.as_mut().and_then(Iterator::next),
                memory: Memory {
                    id: Uuid::now_v7(),
                    user_id: tenant::qualify(tenant, i.user_id),
                    agent_id: i.agent_id,
                    run_id: i.run_id,
                    kind: i.kind,
                    content: i.content,
                    tags: i.tags,
                    metadata: i.metadata,
                    created_at: at,
                    updated_at: at,
                    expires_at: i.expires_at,
                },
            })
            .collect();
        let mut out = self.store.insert(rows).await.map_err(|e| match e {
            // The store names a row of the batch; one memory has no index.
            MemoryError::Invalid { field, message } if !batch => MemoryError::Invalid {
                field: field
                    .strip_prefix("memories[0].")
                    .map_or(field.clone(), str::to_string),
                message,
            },
            e => e,
        })?;
        if let Some(idx) = &self.index {
            idx.kick();
        }
        self.mark_pending(&mut out, deferred.is_some()).await;
        if let Some(error) = deferred {
            let stored = out.iter().filter(|o| !o.deduplicated).count();
            metrics::embedding_deferred(stored as u64);
            tracing::warn!(
                %error,
                memories = stored,
                "memory: the embedder failed; stored the memories without an embedding (keyword search finds them now, semantic search once the backfill has embedded them)"
            );
        }
        if out.iter().any(|o| o.embedding_pending) {
            self.backfill.wake();
        }
        Ok(out)
    }

    /// Writes rows already validated and embedded (the benchmark's load path,
    /// which measures the store without the model).
    pub async fn insert_rows(&self, rows: Vec<NewRow>) -> Result<Vec<WriteOutcome>> {
        let op = Op::start("insert");
        let r = self.store.insert(rows).await;
        op.done(&r);
        if let Some(idx) = &self.index {
            idx.kick();
        }
        r
    }

    /// One memory of `user_id`.
    pub async fn get(&self, user_id: &str, id: Uuid) -> Result<Memory> {
        self.get_in(None, user_id, id).await
    }

    pub(crate) async fn get_in(
        &self,
        tenant: Option<&str>,
        user_id: &str,
        id: Uuid,
    ) -> Result<Memory> {
        let op = Op::start("get");
        let r = async {
            let user = tenant::user(tenant, Some(user_id))?;
            self.store
                .get(&user, id)
                .await?
                .ok_or(MemoryError::NotFound)
        }
        .await;
        op.done(&r);
        r
    }

    /// Changes one memory of `user_id` (re-embedding when the content
    /// changes). A `content` equal to the memory's content as it stands
    /// changes nothing (the other fields of the patch are applied): it is not
    /// embedded again, and the memory keeps its embedding, even while the
    /// embedder fails.
    ///
    /// When the embedder fails or is overloaded ([`MemoryError::Embedding`])
    /// a new content is stored all the same, without an embedding: the old
    /// content's is removed (semantic search no longer finds the memory by
    /// it), and the backfill, woken by the update, embeds the new one. Other
    /// errors of the embedder fail the update.
    ///
    /// The answer is the [`Memory`] alone: unlike a write's
    /// [`WriteOutcome`], it does not carry
    /// [`embedding_pending`](WriteOutcome::embedding_pending), so it does not
    /// say whether the new content was stored without its embedding (the
    /// backfill embeds it; until then semantic search does not find the
    /// memory, keyword search does).
    pub async fn update(&self, user_id: &str, id: Uuid, patch: PatchInput) -> Result<Memory> {
        self.update_in(None, user_id, id, patch).await
    }

    pub(crate) async fn update_in(
        &self,
        tenant: Option<&str>,
        user_id: &str,
        id: Uuid,
        patch: PatchInput,
    ) -> Result<Memory> {
        let op = Op::start("update");
        let r = async {
            let user = tenant::user(tenant, Some(user_id))?;
            let mut p = Patch {
                tags: patch.tags,
                metadata: patch.metadata,
                expires_at: patch.expires_at,
                ..Patch::default()
            };
            let mut deferred = None;
            if let Some(c) = patch.content {
                let Some(old) = self.store.get(&user, id).await? else {
                    return Err(MemoryError::NotFound);
                };
                // The content as it stands (so the same hash too: agent and
                // run are the memory's own) stays out of the patch: a store
                // given a content always drops the memory's embedding, so
                // it would be embedded again for nothing, or, while the
                // embedder fails, lose its embedding until the backfill.
                if c != old.content {
                    p.content_hash = Some(content_hash(
                        old.agent_id.as_deref(),
                        old.run_id.as_deref(),
                        &c,
                    ));
                    let embedded = self.embed_or_defer(vec![c.clone()]).await?;
                    // `None` (deferred): the store removes the old content's
                    // embedding and stores none.
                    p.embedding = embedded.embeddings.and_then(|v| v.into_iter().next());
                    deferred = embedded.deferred;
                    p.content = Some(c);
                }
            }
            let m = self
                .store
                .update(&user, id, p)
                .await?
                .ok_or(MemoryError::NotFound)?;
            if let Some(idx) = &self.index {
                idx.kick();
            }
            if let Some(error) = deferred {
                metrics::embedding_deferred(1);
                tracing::warn!(
                    %error,
                    "memory: the embedder failed; stored the new content without an embedding (keyword search finds it now, semantic search once the backfill has embedded it)"
                );
                self.backfill.wake();
            }
            Ok(m)
        }
        .await;
        op.done(&r);
        r
    }

    /// Deletes one memory of `user_id`.
    pub async fn delete(&self, user_id: &str, id: Uuid) -> Result<()> {
        self.delete_in(None, user_id, id).await
    }

    pub(crate) async fn delete_in(
        &self,
        tenant: Option<&str>,
        user_id: &str,
        id: Uuid,
    ) -> Result<()> {
        let op = Op::start("delete");
        let r = async {
            let user = tenant::user(tenant, Some(user_id))?;
            if !self.store.delete(&user, id).await? {
                return Err(MemoryError::NotFound);
            }
            if let Some(idx) = &self.index {
                idx.kick();
            }
            Ok(())
        }
        .await;
        op.done(&r);
        r
    }

    /// Deletes every memory of `user_id`; returns how many.
    pub async fn delete_user(&self, user_id: Option<&str>) -> Result<u64> {
        self.delete_user_in(None, user_id).await
    }

    pub(crate) async fn delete_user_in(
        &self,
        tenant: Option<&str>,
        user_id: Option<&str>,
    ) -> Result<u64> {
        let op = Op::start("delete_user");
        let r = async {
            let user = tenant::user(tenant, user_id)?;
            let n = self.store.delete_user(&user).await?;
            if let Some(idx) = &self.index {
                idx.kick();
            }
            Ok(n)
        }
        .await;
        op.done(&r);
        r
    }

    /// One page of memories.
    pub async fn list(&self, q: &ListQuery) -> Result<Page> {
        let op = Op::start("list");
        let r = self.store.list(q).await;
        op.done(&r);
        r
    }

    /// History of one memory of `user_id`.
    pub async fn history(&self, user_id: &str, id: Uuid) -> Result<Vec<HistoryEntry>> {
        self.history_in(None, user_id, id).await
    }

    pub(crate) async fn history_in(
        &self,
        tenant: Option<&str>,
        user_id: &str,
        id: Uuid,
    ) -> Result<Vec<HistoryEntry>> {
        let op = Op::start("history");
        let r = async {
            let user = tenant::user(tenant, Some(user_id))?;
            self.store
                .history(&user, id)
                .await?
                .ok_or(MemoryError::NotFound)
        }
        .await;
        op.done(&r);
        r
    }

    /// Keyword, semantic or hybrid search.
    pub async fn search(&self, q: &SearchQuery) -> Result<SearchResults> {
        let op = Op::start("search");
        let r = self.search_inner(q).await;
        op.done(&r);
        r
    }

    async fn search_inner(&self, q: &SearchQuery) -> Result<SearchResults> {
        let semantic_ready = self.embedder.is_some() && self.index.is_some();
        let mut warning = None;
        let mode = match (q.mode, semantic_ready) {
            (SearchMode::Semantic, false) => return Err(MemoryError::NoEmbedder),
            (SearchMode::Hybrid, false) => {
                warning = Some(
                    "no embedding model is configured: hybrid search fell back to keyword search"
                        .to_string(),
                );
                SearchMode::Keyword
            }
            (m, _) => m,
        };
        let depth = match mode {
            SearchMode::Hybrid => (q.top_k * 2).max(20),
            _ => q.top_k,
        };
        let terms = keyword::terms(&q.query);
        let mut hits = if mode == SearchMode::Hybrid && q.filter.metadata.is_empty() {
            self.hybrid(q, depth, &terms).await?
        } else {
            self.with_rows(q, mode, depth, &terms).await?
        };
        // Hybrid applies `min_score` to the semantic similarity of its
        // candidates, before it ranks them (a fused score is at most 2/61).
        if let Some(min) = q.min_score
            && mode != SearchMode::Hybrid
        {
            hits.retain(|h| h.score >= min);
        }
        hits.truncate(q.top_k);
        Ok(SearchResults {
            results: hits,
            warning,
        })
    }

    /// Keyword, semantic, or hybrid with a metadata filter (checked in SQL,
    /// so the semantic side is fetched and checked before it is ranked):
    /// each side returns its rows, best first.
    async fn with_rows(
        &self,
        q: &SearchQuery,
        mode: SearchMode,
        depth: usize,
        terms: &[String],
    ) -> Result<Vec<SearchHit>> {
        // Hybrid runs both searches at once.
        let keyword_search = async {
            match mode {
                SearchMode::Semantic => Ok(Vec::new()),
                _ => self.store.keyword(&q.filter, terms, depth).await,
            }
        };
        let semantic_search = async {
            match mode {
                SearchMode::Keyword => Ok((Vec::new(), Vec::new())),
                _ => self.semantic(q, depth).await,
            }
        };
        let (keyword_hits, (semantic_hits, query)) =
            tokio::try_join!(keyword_search, semantic_search)?;
        let hits: Vec<SearchHit> = match mode {
            SearchMode::Keyword => keyword_hits
                .into_iter()
                .enumerate()
                .map(|(i, (m, s))| SearchHit {
                    memory: m,
                    score: f64::from(s),
                    semantic_rank: None,
                    keyword_rank: Some(i + 1),
                })
                .collect(),
            SearchMode::Semantic => semantic_hits
                .into_iter()
                .enumerate()
                .map(|(i, (m, s))| SearchHit {
                    memory: m,
                    score: f64::from(s),
                    semantic_rank: Some(i + 1),
                    keyword_rank: None,
                })
                .collect(),
            SearchMode::Hybrid => {
                let mut rows: HashMap<Uuid, Memory> = HashMap::new();
                let semantic = ids_of(semantic_hits, &mut rows);
                let keyword = ids_of(keyword_hits, &mut rows);
                let mut fused = fuse(&semantic, &keyword);
                if let Some(min) = q.min_score {
                    fused = self.similar(fused, &semantic, &query, min).await?;
                }
                fused.into_iter().filter_map(|f| f.hit(&mut rows)).collect()
            }
        };
        Ok(hits)
    }

    /// Hybrid search without a metadata filter: both searches return ids,
    /// fused by reciprocal rank, and SQL is asked for the rows of the best
    /// `top_k` only (more only when it drops some: a change the index has not
    /// applied yet). Fetching the rows of both depth-`2k` lists instead did
    /// four times the row work of the answer. On SQLite the keyword query,
    /// the index search and the row fetch run in one blocking task (without
    /// `min_score`, which needs the similarity of keyword-only candidates).
    async fn hybrid(
        &self,
        q: &SearchQuery,
        depth: usize,
        terms: &[String],
    ) -> Result<Vec<SearchHit>> {
        if q.min_score.is_none()
            && let AnyStore::Sqlite(store) = &*self.store
        {
            let search = self.semantic_search(q, depth).await?;
            let reads = store
                .readers()
                .hybrid(&q.filter, terms, depth, q.top_k, search, |s, k| {
                    fuse(s, k).into_iter().map(|f| f.id).collect()
                })
                .await?;
            let mut rows: HashMap<Uuid, Memory> =
                reads.rows.into_iter().map(|m| (m.id, m)).collect();
            return Ok(fuse(&reads.semantic, &reads.keyword)
                .into_iter()
                .filter_map(|f| f.hit(&mut rows))
                .collect());
        }
        let semantic = async {
            let (idx, qv) = self.query_vector(q).await?;
            let hits = idx.search(qv.clone(), &q.filter, depth).await?;
            Ok::<_, MemoryError>((hits, qv))
        };
        let (keyword, (semantic, query)) =
            tokio::try_join!(self.store.keyword_ids(&q.filter, terms, depth), semantic)?;
        let mut fused = fuse(&semantic, &keyword);
        if let Some(min) = q.min_score {
            fused = self.similar(fused, &semantic, &query, min).await?;
        }
        let ids: Vec<Uuid> = fused.iter().map(|f| f.id).collect();
        let mut rows = self.rows_for(&q.filter, &ids, q.top_k).await?;
        Ok(fused.into_iter().filter_map(|f| f.hit(&mut rows)).collect())
    }

    /// The fused candidates whose cosine similarity to `query` is at least
    /// `min`: the index's score for those semantic search found, computed
    /// from the stored embedding for the keyword-only ones. A memory without
    /// an embedding of the current model has no similarity and fails.
    async fn similar(
        &self,
        fused: Vec<Fused>,
        semantic: &[(Uuid, f32)],
        query: &[f32],
        min: f64,
    ) -> Result<Vec<Fused>> {
        let mut similarity: HashMap<Uuid, f32> = semantic.iter().copied().collect();
        let keyword_only: Vec<Uuid> = fused
            .iter()
            .map(|f| f.id)
            .filter(|id| !similarity.contains_key(id))
            .collect();
        if !keyword_only.is_empty() {
            let model = self.model().unwrap_or_default();
            let query_norm = crate::store::norm(query);
            for e in self.store.index_entries(&keyword_only).await? {
                if e.embedding.model == model
                    && let Some(s) =
                        crate::store::cosine_with(&e.embedding.vector, query, query_norm)
                {
                    similarity.insert(e.id, s);
                }
            }
        }
        Ok(fused
            .into_iter()
            .filter(|f| similarity.get(&f.id).is_some_and(|&s| f64::from(s) >= min))
            .collect())
    }

    /// Live rows matching `filter` for the first `want` of `ranked`; the
    /// later ids are fetched only when SQL dropped some (a metadata filter, a
    /// change the index has not applied yet).
    async fn rows_for(
        &self,
        filter: &Filter,
        ranked: &[Uuid],
        want: usize,
    ) -> Result<HashMap<Uuid, Memory>> {
        let mut rows: HashMap<Uuid, Memory> = HashMap::with_capacity(want);
        let mut asked = 0;
        while let Some(ids) = store::next_ids(ranked, asked, rows.len(), want) {
            asked += ids.len();
            rows.extend(
                self.store
                    .fetch(filter, ids)
                    .await?
                    .into_iter()
                    .map(|m| (m.id, m)),
            );
        }
        Ok(rows)
    }

    /// The index's best `k` memories for the query, unchecked by SQL, as a
    /// closure for a blocking thread.
    async fn semantic_search(
        &self,
        q: &SearchQuery,
        k: usize,
    ) -> Result<impl FnOnce() -> Result<Vec<(Uuid, f32)>> + Send + 'static + use<>> {
        let (idx, qv) = self.query_vector(q).await?;
        idx.searcher(qv, &q.filter, k)
    }

    /// The index (once it has this service's writes, or after a short wait)
    /// and the query's embedding.
    async fn query_vector(&self, q: &SearchQuery) -> Result<(&Arc<VectorIndex>, Vec<f32>)> {
        let (Some(_), Some(idx)) = (&self.embedder, &self.index) else {
            return Err(MemoryError::NoEmbedder);
        };
        // Read your writes: wait (briefly) for the changes committed through
        // this service before this search (other replicas' are tailed).
        let last = self.store.local_change();
        if !idx.wait_for(last, INDEX_WAIT).await {
            tracing::debug!(
                last,
                applied = idx.applied(),
                "memory: searching an index that is behind"
            );
        }
        let Some(qv) = self
            .embed(vec![q.query.clone()])
            .await?
            .and_then(|v| v.into_iter().next())
        else {
            return Err(MemoryError::NoEmbedder);
        };
        Ok((idx, qv.vector))
    }

    /// Semantic search's rows, best first, with the query's embedding.
    async fn semantic(
        &self,
        q: &SearchQuery,
        depth: usize,
    ) -> Result<(Vec<(Memory, f32)>, Vec<f32>)> {
        let (idx, qv) = self.query_vector(q).await?;
        if q.filter.metadata.is_empty() {
            let hits = idx.search(qv.clone(), &q.filter, depth + 8).await?;
            return Ok((self.checked(q, hits, depth).await?, qv));
        }
        // Metadata is not in the index: SQL checks it after the index ranks.
        // Ask for more while SQL drops too many and the index has more, up
        // to the index's largest answer; past that, rank exactly the
        // memories SQL says match (a rare filter over many memories).
        let mut k = depth * 4 + 32;
        loop {
            let hits = idx.search(qv.clone(), &q.filter, k).await?;
            let more = hits.len() >= k.min(uat_vector::MAX_TOP_K);
            let found = self.checked(q, hits, depth).await?;
            if found.len() >= depth || !more {
                return Ok((found, qv));
            }
            if k >= uat_vector::MAX_TOP_K {
                break;
            }
            k = (k * 4).min(uat_vector::MAX_TOP_K);
        }
        let found = self.semantic_exact(q, &qv, depth).await?;
        Ok((found, qv))
    }

    /// The ranked `hits` that SQL has live and matching, best `depth`.
    async fn checked(
        &self,
        q: &SearchQuery,
        hits: Vec<(Uuid, f32)>,
        depth: usize,
    ) -> Result<Vec<(Memory, f32)>> {
        let ids: Vec<Uuid> = hits.iter().map(|h| h.0).collect();
        let mut rows = self.rows_for(&q.filter, &ids, depth).await?;
        Ok(hits
            .into_iter()
            .filter_map(|(id, s)| rows.remove(&id).map(|m| (m, s)))
            .take(depth)
            .collect())
    }

    /// Semantic search by brute force over the memories SQL finds for the
    /// filter (the newest [`EXACT_MAX`] with an embedding of the model),
    /// scored as the index scores (cosine), for a metadata filter the index's
    /// nearest [`uat_vector::MAX_TOP_K`] did not satisfy. The store streams
    /// ids and embeddings only and scores them off the async workers; rows
    /// are read for the best `depth`.
    async fn semantic_exact(
        &self,
        q: &SearchQuery,
        query: &[f32],
        depth: usize,
    ) -> Result<Vec<(Memory, f32)>> {
        let Some(model) = self.model() else {
            return Err(MemoryError::NoEmbedder);
        };
        let query = Embedding {
            model: model.to_owned(),
            vector: query.to_vec(),
        };
        let exact = self
            .store
            .nearest_exact(&q.filter, &query, depth, EXACT_MAX)
            .await?;
        if exact.more {
            tracing::warn!(
                user = %q.filter.user_id,
                "memory: a metadata filter matched over {EXACT_MAX} memories; semantic search ranked the newest {EXACT_MAX}"
            );
        }
        self.checked(q, exact.hits, depth).await
    }
}

/// The embeddings of a write's texts, or why there are none.
struct Embedded {
    /// One per text; `None` without an embedder or when `deferred`.
    embeddings: Option<Vec<Embedding>>,
    /// The embedder's error, when it failed: the memories are stored without
    /// an embedding, for the backfill.
    deferred: Option<String>,
}

/// Most memories [`Memories::semantic_exact`] ranks.
const EXACT_MAX: usize = 20_000;

/// One memory of a fused ranking.
struct Fused {
    id: Uuid,
    score: f64,
    semantic_rank: Option<usize>,
    keyword_rank: Option<usize>,
}

impl Fused {
    /// The hit, when `rows` holds the memory (SQL had it live).
    fn hit(&self, rows: &mut HashMap<Uuid, Memory>) -> Option<SearchHit> {
        rows.remove(&self.id).map(|memory| SearchHit {
            memory,
            score: self.score,
            semantic_rank: self.semantic_rank,
            keyword_rank: self.keyword_rank,
        })
    }
}

/// The ids of ranked `hits`, their rows kept in `rows`.
fn ids_of(hits: Vec<(Memory, f32)>, rows: &mut HashMap<Uuid, Memory>) -> Vec<(Uuid, f32)> {
    hits.into_iter()
        .map(|(m, s)| {
            let id = m.id;
            rows.insert(id, m);
            (id, s)
        })
        .collect()
}

/// Reciprocal rank fusion of two ranked lists, best first.
fn fuse(semantic: &[(Uuid, f32)], keyword: &[(Uuid, f32)]) -> Vec<Fused> {
    let mut by_id: HashMap<Uuid, Fused> = HashMap::with_capacity(semantic.len() + keyword.len());
    for (i, (id, _)) in semantic.iter().enumerate() {
        by_id.entry(*id).or_insert(Fused {
            id: *id,
            score: 1.0 / (RRF_K + (i + 1) as f64),
            semantic_rank: Some(i + 1),
            keyword_rank: None,
        });
    }
    for (i, (id, _)) in keyword.iter().enumerate() {
        let s = 1.0 / (RRF_K + (i + 1) as f64);
        by_id
            .entry(*id)
            .and_modify(|f| {
                f.score += s;
                f.keyword_rank = Some(i + 1);
            })
            .or_insert(Fused {
                id: *id,
                score: s,
                semantic_rank: None,
                keyword_rank: Some(i + 1),
            });
    }
    let mut fused: Vec<Fused> = by_id.into_values().collect();
    fused.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| b.id.cmp(&a.id)));
    fused
}
