//! The embedding backfill: gives every live memory an embedding of the
//! current model when it has none (written while no model was available:
//! the service then runs keyword-only and stores none) or another model's
//! (written before the model was changed, or through a replica configured
//! with another). The vector index holds the embeddings of its own model
//! only, so without the backfill such memories were never found by semantic
//! search, nor by the semantic half of hybrid search.
//!
//! It also embeds the memories this service stored without an embedding
//! because the embedder failed or was overloaded during their write (or the
//! update of their content): such a write does not fail, it stores the
//! memory without one and wakes the backfill (see `Memories::write`).
//!
//! It runs in the background while the service has an embedder: a pass at
//! start-up, then one every [`EVERY`] (a replica of a shared PostgreSQL
//! without the model may write such memories at any time), or sooner when
//! the service wakes it ([`Waker`]) after such a write. A wake cuts short
//! only the idle wait between passes: one that comes during a pass is kept
//! for the end of it (the next pass starts at once), and one that comes
//! during a failure backoff does not shorten it, so writes made while the
//! embedder is down do not make the backfill call it any more often. A pass walks the
//! memories in id order, at most [`SCAN_PAGE`] per step
//! ([`Store::unembedded`]); embeds the ones it finds [`BATCH`] at a time
//! through the [`Embedder`] that writes use; and stores each batch in one
//! transaction with an `upsert` change-log record per memory
//! ([`Store::store_embeddings`]), so every index picks them up by tailing the
//! log, as it picks up a write. An embedding is stored only while the
//! memory's content hash is still the one embedded and it still lacks an
//! embedding of this model: a memory patched meanwhile keeps the patch's
//! own embedding, and replicas backfilling at once store each embedding
//! once (they may embed the same texts twice, nothing worse).
//!
//! After each step and each batch it rests as long as that took, so it holds
//! at most half of the embedder, of a database connection and of the SQLite
//! writer. A failure (the model unreachable, the database) is logged as a
//! warning and the step retried after a backoff, from [`RETRY_FIRST`]
//! doubling up to [`EVERY`] (the memory written meanwhile without an
//! embedding waits for that retry). It stops when the service is dropped.

use crate::embed::{Embedder, embed_texts};
use crate::error::Result;
use crate::index::VectorIndex;
use crate::metrics::{self, Op};
use crate::store::{AnyStore, Store};
use crate::types::{NewEmbedding, Unembedded};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

/// Memories examined per step of a pass.
const SCAN_PAGE: usize = 1000;
/// Memories embedded per embedder call and stored per transaction.
const BATCH: usize = 32;
/// How long after a pass the next one starts.
const EVERY: Duration = Duration::from_secs(600);
/// The first wait after a failure (doubling after each further one).
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// Wakes the backfill: starts its next pass now if it is waiting between
/// passes (see the module docs). Cheap; wakes do not pile up (several
/// before the backfill looks are one).
#[derive(Clone, Default)]
pub(crate) struct Waker(Arc<Notify>);

impl Waker {
    /// Asks for a pass soon.
    pub(crate) fn wake(&self) {
        // One permit at most is kept when the backfill is not waiting.
        self.0.notify_one();
    }
}

/// Starts the backfill of `embedder`'s model on `store`. It ends when the
/// store is dropped or `stop`'s sender is (the service holds both); `wake`
/// starts its next pass early.
pub(crate) fn spawn(
    store: &Arc<AnyStore>,
    embedder: Arc<dyn Embedder>,
    index: Option<&Arc<VectorIndex>>,
    stop: watch::Receiver<()>,
    wake: &Waker,
) {
    let task = Backfill {
        store: Arc::downgrade(store),
        embedder,
        index: index.map(Arc::downgrade),
        stop,
        wake: wake.0.clone(),
    };
    tokio::spawn(task.run());
}

struct Backfill {
    store: Weak<AnyStore>,
    embedder: Arc<dyn Embedder>,
    index: Option<Weak<VectorIndex>>,
    stop: watch::Receiver<()>,
    wake: Arc<Notify>,
}

/// What a pass does after a step.
enum Next {
    /// Goes on after this id.
    After(Uuid),
    /// The pass is over.
    Done,
    /// The service is gone.
    Stop,
}

/// How far the current pass went.
#[derive(Default)]
struct Pass {
    /// Embeddings stored.
    stored: u64,
    /// Whether it said it found work.
    announced: bool,
}

impl Backfill {
    async fn run(mut self) {
        let mut after = None;
        let mut pass = Pass::default();
        let mut backoff = RETRY_FIRST;
        loop {
            match self.step(after, &mut pass).await {
                Ok(Next::After(id)) => {
                    backoff = RETRY_FIRST;
                    after = Some(id);
                }
                Ok(Next::Done) => {
                    backoff = RETRY_FIRST;
                    if pass.stored > 0 {
                        tracing::info!(
                            model = self.embedder.model(),
                            backfilled = pass.stored,
                            "memory: backfilled embeddings; semantic search finds these memories now"
                        );
                    }
                    after = None;
                    pass = Pass::default();
                    if !self.idle(EVERY).await {
                        return;
                    }
                }
                Ok(Next::Stop) => return,
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        model = self.embedder.model(),
                        retry_in = ?backoff,
                        "memory: embedding backfill failed; retrying later"
                    );
                    // Not cut short by a wake: a write stored without an
                    // embedding wakes the backfill, and a down embedder
                    // must not be retried once per such write.
                    if !self.rest(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(EVERY);
                }
            }
        }
    }

    /// One step of a pass: a page of the scan, whose memories are embedded
    /// and stored a batch at a time. After a failure the step is run again
    /// from the same place: what it stored is no longer found.
    async fn step(&mut self, after: Option<Uuid>, pass: &mut Pass) -> Result<Next> {
        let Some(store) = self.store.upgrade() else {
            return Ok(Next::Stop);
        };
        let started = Instant::now();
        let (model, dimension) = (self.embedder.model(), self.embedder.dimension());
        let page = store.unembedded(model, dimension, after, SCAN_PAGE).await?;
        if !page.memories.is_empty() && !pass.announced {
            pass.announced = true;
            tracing::info!(
                model,
                "memory: found memories without an embedding of this model; embedding them in the background"
            );
        }
        if !self.rest(started.elapsed()).await {
            return Ok(Next::Stop);
        }
        for batch in page.memories.chunks(BATCH) {
            let started = Instant::now();
            let op = Op::start("backfill");
            let r = self.batch(&store, batch).await;
            op.done(&r);
            let Some(n) = r? else {
                return Ok(Next::Stop);
            };
            pass.stored += n;
            metrics::backfilled(n);
            if n > 0
                && let Some(idx) = self.index.as_ref().and_then(Weak::upgrade)
            {
                idx.kick();
            }
            if !self.rest(started.elapsed()).await {
                return Ok(Next::Stop);
            }
        }
        Ok(page.next.map_or(Next::Done, Next::After))
    }

    /// Embeds one batch and stores what is still wanted; `None` when the
    /// service stopped meanwhile.
    async fn batch(&mut self, store: &AnyStore, batch: &[Unembedded]) -> Result<Option<u64>> {
        let texts: Vec<String> = batch.iter().map(|m| m.content.clone()).collect();
        let embeddings = tokio::select! {
            r = embed_texts(self.embedder.as_ref(), &texts) => r?,
            _ = self.stop.changed() => return Ok(None),
        };
        let rows = batch
            .iter()
            .zip(embeddings)
            .map(|(m, embedding)| NewEmbedding {
                id: m.id,
                content_hash: m.content_hash.clone(),
                embedding,
            })
            .collect();
        Ok(Some(store.store_embeddings(rows).await?))
    }

    /// Waits `d`; false when the service stopped meanwhile. A wake does not
    /// shorten it (it is kept for the next [`Backfill::idle`]).
    async fn rest(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.stop.changed() => false,
        }
    }

    /// Waits `d` between passes, or less when the service wakes the backfill
    /// (or woke it during the pass); false when the service stopped meanwhile.
    async fn idle(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.wake.notified() => true,
            _ = self.stop.changed() => false,
        }
    }
}
