//! The shared application state: the configuration and one handle per service.

use crate::{auth, cache, embeddings, gateway, memory, spend, vector};
use serde::Serialize;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;
use uat_config::Config;

/// Cheap to clone: one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// What every handler can reach.
pub struct Inner {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// LLM routing (chat completions, model lists).
    pub gateway: gateway::Gateway,
    /// The tiered response cache.
    pub cache: cache::CacheService,
    /// The vector database.
    pub vector: vector::VectorService,
    /// Local embedding models.
    pub embed: embeddings::EmbedService,
    /// The memory service.
    pub memory: memory::MemoryService,
    /// API keys; `None` when none are configured (every route open).
    pub auth: Option<Arc<auth::Auth>>,
    /// Cost tracking and key budgets; `None` when off (no `[pricing]`, no
    /// `max_budget`).
    pub spend: Option<Arc<spend::SpendService>>,
    /// When the state was built.
    pub started: Instant,
    /// Coalesces concurrent readiness probes.
    ready: ReadyProbe,
    /// The dashboard summary's last cache stats reading.
    pub(crate) dashboard: crate::dashboard::Shared,
}

impl AppState {
    /// Assembles the state.
    #[expect(clippy::too_many_arguments, reason = "one handle per subsystem")]
    pub fn new(
        config: Arc<Config>,
        gateway: gateway::Gateway,
        cache: cache::CacheService,
        vector: vector::VectorService,
        embed: embeddings::EmbedService,
        memory: memory::MemoryService,
        auth: Option<Arc<auth::Auth>>,
        spend: Option<Arc<spend::SpendService>>,
    ) -> Self {
        AppState(Arc::new(Inner {
            config,
            gateway,
            cache,
            vector,
            embed,
            memory,
            auth,
            spend,
            started: Instant::now(),
            ready: ReadyProbe::default(),
            dashboard: crate::dashboard::Shared::default(),
        }))
    }

    /// Readiness of every dependency, for `GET /ready`. Probes run one at
    /// a time (each writes a file and queries the database, and probes skip
    /// the in-flight limit): callers that arrive while one runs wait, and
    /// share the next probe to start after they arrived, so every report is
    /// newer than its request and a flood of probes costs one at a time.
    pub async fn ready_checks(&self) -> Arc<Vec<ReadyCheck>> {
        self.ready
            .shared(|| async {
                // The subsystems at once: each probe is bounded by
                // PROBE_TIMEOUT, and so is the report.
                let (gateway, cache, vector, embed, memory) = tokio::join!(
                    self.gateway.ready(),
                    self.cache.ready(),
                    self.vector.ready(),
                    self.embed.ready(),
                    self.memory.ready(),
                );
                let mut out = gateway;
                out.extend(cache);
                out.extend(vector);
                out.extend(embed);
                out.extend(memory);
                out.extend(self.spend.as_ref().map(|s| s.ready()));
                out
            })
            .await
    }
}

/// The last readiness report and the turn to make the next.
struct ReadyProbe {
    turn: tokio::sync::Semaphore,
    last: std::sync::Mutex<Option<(Instant, Arc<Vec<ReadyCheck>>)>>,
}

impl Default for ReadyProbe {
    fn default() -> Self {
        ReadyProbe {
            turn: tokio::sync::Semaphore::new(1),
            last: std::sync::Mutex::new(None),
        }
    }
}

impl ReadyProbe {
    /// Runs `probe` unless a probe that started after this call arrived has
    /// finished meanwhile, whose report it then shares; one probe at a time.
    async fn shared<F, Fut>(&self, probe: F) -> Arc<Vec<ReadyCheck>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Vec<ReadyCheck>>,
    {
        let arrived = Instant::now();
        // Never closed: the semaphore lives as long as the state.
        let _turn = self.turn.acquire().await;
        if let Some(report) = self.newer_than(arrived) {
            return report;
        }
        let started = Instant::now();
        let report = Arc::new(probe().await);
        if let Ok(mut last) = self.last.lock() {
            *last = Some((started, report.clone()));
        }
        report
    }

    /// The last report, when its probe started at or after `t`.
    fn newer_than(&self, t: Instant) -> Option<Arc<Vec<ReadyCheck>>> {
        let last = self.last.lock().ok()?;
        let (at, report) = last.as_ref()?;
        (*at >= t).then(|| report.clone())
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// State of one dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadyStatus {
    /// Working.
    Ok,
    /// Working with reduced function (e.g. a cache level skipped).
    Degraded,
    /// Not working.
    Down,
}

/// One line of the readiness report.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyCheck {
    /// Dependency name (`storage`, `cache.l2`, `provider:openai`, ...).
    pub name: String,
    /// Its state.
    pub status: ReadyStatus,
    /// When true, `Down` makes the replica unready (503).
    pub critical: bool,
    /// Detail for operators.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The longest one dependency's probe may take before it is reported
/// `Down`: under Kubernetes' default probe timeout (1 s), so that `/ready`
/// answers with the reason rather than the kubelet giving up on it (a
/// PostgreSQL connection that hangs, a store folder on a stuck mount).
pub(crate) const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

/// Runs one dependency's probe under [`PROBE_TIMEOUT`]; `Err` says it did
/// not answer in time.
pub(crate) async fn bounded_probe<T>(probe: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .map_err(|_| format!("no answer within {} ms", PROBE_TIMEOUT.as_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_probe_that_hangs_is_cut_off() {
        let r = bounded_probe(std::future::pending::<()>()).await;
        assert_eq!(r, Err("no answer within 800 ms".to_owned()));
        assert_eq!(bounded_probe(async { 7 }).await, Ok(7));
    }

    /// 64 probes at once run the checks at most twice (the first, and one
    /// for every caller that came while it ran), not 64 times; each caller
    /// gets a report; a caller that comes after a report gets a new one.
    #[tokio::test]
    async fn concurrent_probes_share_one_run() {
        let probe = Arc::new(ReadyProbe::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let check = |runs: Arc<AtomicUsize>| async move {
            let n = runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            vec![ReadyCheck {
                name: format!("run {n}"),
                status: ReadyStatus::Ok,
                critical: false,
                detail: None,
            }]
        };
        let callers: Vec<_> = (0..64)
            .map(|_| {
                let (probe, runs) = (probe.clone(), runs.clone());
                tokio::spawn(async move { probe.shared(|| check(runs)).await })
            })
            .collect();
        for c in callers {
            assert_eq!(c.await.unwrap().len(), 1);
        }
        let after_flood = runs.load(Ordering::SeqCst);
        assert!((1..=2).contains(&after_flood), "{after_flood} runs");
        let later = probe.shared(|| check(runs.clone())).await;
        assert_eq!(later[0].name, format!("run {after_flood}"), "a fresh run");
    }
}
