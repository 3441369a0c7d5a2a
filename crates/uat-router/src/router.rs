//! The [`Router`]: resolves a model, orders its providers with the
//! strategy, and runs attempts with retries, backoff, failover and circuit
//! breakers. Retries happen only before anything has been handed to the
//! caller: a stream is returned once its first chunk has arrived.

use crate::breaker::{Breaker, BreakerState, Permit};
use crate::catalog::{Catalog, Target};
use crate::error::{Failure, FailureKind, ProviderFailure, RouterError};
use crate::metrics::ProviderMetrics;
use crate::provider::{self, BoxFuture, ChunkStream, Provider, Reply};
use crate::stats::{InFlightGuard, ProviderStats};
use crate::strategy::{self, Candidate, Strategy};
use crate::stream::RoutedStream;
use futures::StreamExt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};
use uat_config::{Config, ModelAlias, ProviderConfig, ProviderKind, RoutingConfig};
use uat_types::{ChatRequest, CompletionRequest, Model};

/// One configured provider with its live state.
pub(crate) struct Slot {
    pub name: Arc<str>,
    pub kind: ProviderKind,
    pub provider: Box<dyn Provider>,
    pub stats: Arc<ProviderStats>,
    pub breaker: Breaker,
    pub metrics: ProviderMetrics,
    pub priority: i32,
    pub weight: u32,
    pub first_byte: Duration,
    /// Models come from the config (true) or from discovery (false).
    pub fixed: bool,
    pub models: RwLock<Arc<Vec<String>>>,
    /// The last discovery answered.
    pub reachable: AtomicBool,
}

impl Slot {
    fn new(cfg: &ProviderConfig, provider: Box<dyn Provider>, routing: &RoutingConfig) -> Slot {
        let fixed = !cfg.models.is_empty();
        let kind = provider.kind();
        let metrics = ProviderMetrics::new(&cfg.name);
        metrics.set_up(true);
        Slot {
            name: Arc::from(cfg.name.as_str()),
            kind,
            provider,
            stats: Arc::new(ProviderStats::default()),
            breaker: Breaker::new(routing.breaker_failures, routing.breaker_cooldown),
            metrics,
            priority: cfg.priority,
            weight: cfg.weight,
            first_byte: cfg.first_byte_timeout,
            fixed,
            models: RwLock::new(Arc::new(cfg.models.clone())),
            reachable: AtomicBool::new(true),
        }
    }

    fn models(&self) -> Arc<Vec<String>> {
        match self.models.read() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_models(&self, list: Vec<String>) {
        let list = Arc::new(list);
        match self.models.write() {
            Ok(mut m) => *m = list,
            Err(p) => *p.into_inner() = list,
        }
    }

    fn update_up(&self) {
        let up =
            self.reachable.load(Ordering::Relaxed) && self.breaker.state() != BreakerState::Open;
        self.metrics.set_up(up);
    }

    fn success(&self, latency: Duration) {
        self.stats.record_outcome(true);
        self.stats.record_latency(latency);
        if self.breaker.success() {
            tracing::info!(provider = %self.name, "circuit breaker closed");
            self.update_up();
        }
    }

    pub(crate) fn failure(&self, f: &Failure, elapsed: Duration) {
        self.metrics.error(f.kind);
        if !f.kind.counts_against_provider() {
            // The provider answered sensibly; it is healthy.
            if self.breaker.success() {
                self.update_up();
            }
            return;
        }
        self.stats.record_outcome(false);
        if f.kind == FailureKind::Timeout {
            self.stats.record_latency(elapsed);
        }
        if self.breaker.failure() {
            tracing::warn!(provider = %self.name, reason = %f, "circuit breaker opened");
            self.metrics.set_up(false);
        }
    }
}

/// Builds the provider for a configuration entry.
pub fn build_provider(cfg: &ProviderConfig) -> Result<Box<dyn Provider>, RouterError> {
    Ok(match cfg.kind {
        ProviderKind::Openai => Box::new(provider::openai::OpenAi::new(cfg)?),
        ProviderKind::Ollama => Box::new(provider::ollama::Ollama::new(cfg)?),
        ProviderKind::Anthropic => Box::new(provider::anthropic::Anthropic::new(cfg)?),
        ProviderKind::Mock => Box::new(provider::mock::Mock::new(cfg)),
    })
}

/// The result of a routed call: the value, who served it, how many attempts.
#[derive(Debug)]
pub struct Routed<T> {
    /// Name of the provider that served the request.
    pub provider: Arc<str>,
    /// The upstream's name for the model.
    pub model: Arc<str>,
    /// Attempts made, this one included (1 = first try).
    pub attempts: u32,
    /// The answer.
    pub value: T,
}

/// A model name resolved to its candidate targets.
#[derive(Debug, Clone)]
pub struct Resolved {
    targets: Arc<[Target]>,
}

impl Resolved {
    /// How many provider/model targets can serve it.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Never true for a value returned by [`Router::resolve`].
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The model as the cache knows it: the upstream model names the request
    /// resolved to, distinct and sorted, joined by `,` (one name for all but
    /// aliases over several models). An alias, `provider/model` and the plain
    /// name of one model share their entries, their `model_ttl` and their
    /// invalidation pattern; an alias pointed elsewhere gets new entries.
    pub fn cache_name(&self) -> std::borrow::Cow<'_, str> {
        let first = &*self.targets[0].model;
        if self.targets.iter().all(|t| &*t.model == first) {
            return std::borrow::Cow::Borrowed(first);
        }
        let mut names: Vec<&str> = self.targets.iter().map(|t| &*t.model).collect();
        names.sort_unstable();
        names.dedup();
        std::borrow::Cow::Owned(names.join(","))
    }
}

/// Health and load of one provider, for readiness and introspection.
#[derive(Debug, Clone)]
pub struct ProviderStatus {
    /// Configured name.
    pub name: String,
    /// Wire format.
    pub kind: ProviderKind,
    /// The last discovery answered and the breaker is not open.
    pub up: bool,
    /// Breaker state.
    pub breaker: BreakerState,
    /// Models currently known.
    pub models: usize,
    /// Requests in flight.
    pub in_flight: u32,
    /// EWMA time to first byte.
    pub latency: Option<Duration>,
    /// Recent failure rate.
    pub error_rate: f64,
}

struct Inner {
    slots: Vec<Arc<Slot>>,
    names: Vec<Arc<str>>,
    aliases: Vec<ModelAlias>,
    catalog: RwLock<Arc<Catalog>>,
    strategy: Box<dyn Strategy>,
    routing: RoutingConfig,
}

/// The LLM router. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("providers", &self.inner.names)
            .field("strategy", &self.inner.routing.strategy)
            .finish()
    }
}

impl Router {
    /// Builds the router: one client per provider, a first model discovery,
    /// and a background refresh every `routing.discovery_interval`. With no
    /// provider configured and `routing.probe_local`, probes the usual local
    /// servers and keeps whichever answer. Must run inside a Tokio runtime.
    pub async fn new(config: &Config) -> Result<Router, RouterError> {
        let providers = if config.providers.is_empty() && config.routing.probe_local {
            crate::discovery::probe_local(&crate::discovery::local_candidates()).await
        } else {
            config.providers.clone()
        };
        Self::with_providers(&providers, &config.models, &config.routing).await
    }

    /// [`Router::new`] with explicit providers (no local probing).
    pub async fn with_providers(
        providers: &[ProviderConfig],
        aliases: &[ModelAlias],
        routing: &RoutingConfig,
    ) -> Result<Router, RouterError> {
        let built = providers
            .iter()
            .map(|p| build_provider(p).map(|b| (p.clone(), b)))
            .collect::<Result<Vec<_>, _>>()?;
        Self::with_custom(built, aliases, routing).await
    }

    /// A router over ready-made providers, each with the configuration that
    /// names it and sets its priority, weight, timeouts and fixed models
    /// (its `kind` and `base_url` are not used). For tests and embedding.
    pub async fn with_custom(
        providers: Vec<(ProviderConfig, Box<dyn Provider>)>,
        aliases: &[ModelAlias],
        routing: &RoutingConfig,
    ) -> Result<Router, RouterError> {
        let slots: Vec<Arc<Slot>> = providers
            .into_iter()
            .map(|(cfg, p)| Arc::new(Slot::new(&cfg, p, routing)))
            .collect();
        let names = slots.iter().map(|s| s.name.clone()).collect();
        let inner = Arc::new(Inner {
            slots,
            names,
            aliases: aliases.to_vec(),
            catalog: RwLock::new(Arc::new(Catalog::default())),
            strategy: strategy::from_config(routing.strategy),
            routing: routing.clone(),
        });
        // Start fast: a provider slow to list its models is left to the
        // background refresh, which then runs at once.
        let complete = tokio::time::timeout(INITIAL_DISCOVERY_WAIT, refresh(&inner))
            .await
            .is_ok();
        if !complete {
            tracing::warn!("model discovery is slow; continuing in the background");
        }
        spawn_refresh(
            Arc::downgrade(&inner),
            routing.discovery_interval,
            !complete,
        );
        Ok(Router { inner })
    }

    fn catalog(&self) -> Arc<Catalog> {
        match self.inner.catalog.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Refreshes every discovered model list now.
    pub async fn refresh(&self) {
        refresh(&self.inner).await;
    }

    /// The `(provider, upstream model)` pairs that may serve `resolved`.
    pub fn targets<'a>(
        &'a self,
        resolved: &'a Resolved,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        resolved
            .targets
            .iter()
            .map(|t| (&*self.inner.names[t.slot], &*t.model))
    }

    /// Resolves a public model name (alias, model, or `provider/model`).
    pub fn resolve(&self, model: &str) -> Result<Resolved, RouterError> {
        self.catalog()
            .resolve(model, &self.inner.names)
            .filter(|t| !t.is_empty())
            .map(|targets| Resolved { targets })
            .ok_or_else(|| RouterError::UnknownModel {
                model: model.to_owned(),
            })
    }

    /// True when some provider or alias serves `model`.
    pub fn has_model(&self, model: &str) -> bool {
        self.resolve(model).is_ok()
    }

    /// Every served model and alias, deduplicated, in `/v1/models` shape.
    pub fn list_models(&self) -> Vec<Model> {
        self.catalog().listing.clone()
    }

    /// Health and load of every provider.
    pub fn providers(&self) -> Vec<ProviderStatus> {
        self.inner
            .slots
            .iter()
            .map(|s| {
                let breaker = s.breaker.state();
                ProviderStatus {
                    name: s.name.to_string(),
                    kind: s.kind,
                    up: s.reachable.load(Ordering::Relaxed) && breaker != BreakerState::Open,
                    breaker,
                    models: s.models().len(),
                    in_flight: s.stats.in_flight(),
                    latency: s.stats.latency(),
                    error_rate: s.stats.error_rate(),
                }
            })
            .collect()
    }

    /// A non-streamed chat completion for `req` from the best provider.
    pub async fn chat(
        &self,
        resolved: &Resolved,
        req: &ChatRequest,
    ) -> Result<Routed<Reply>, RouterError> {
        self.reply(resolved, Ask::Chat(req)).await
    }

    /// A streamed chat completion. Resolves once a provider produced its
    /// first chunk; failures before that are retried and failed over.
    pub async fn chat_stream(
        &self,
        resolved: &Resolved,
        req: &ChatRequest,
    ) -> Result<Routed<RoutedStream>, RouterError> {
        self.stream(resolved, Ask::Chat(req)).await
    }

    /// A non-streamed text completion (`POST /v1/completions`) for `req`
    /// from the best provider, as [`Router::chat`]: the answer is an OpenAI
    /// `text_completion` object. A target whose kind cannot do what `req`
    /// asks ([`Provider::check_completion`]) is passed over without an
    /// attempt.
    pub async fn completion(
        &self,
        resolved: &Resolved,
        req: &CompletionRequest,
    ) -> Result<Routed<Reply>, RouterError> {
        self.reply(resolved, Ask::Completion(req)).await
    }

    /// A streamed text completion, each chunk a `text_completion` object, as
    /// [`Router::chat_stream`]: resolves once a provider produced its first
    /// chunk; failures before that are retried and failed over.
    pub async fn completion_stream(
        &self,
        resolved: &Resolved,
        req: &CompletionRequest,
    ) -> Result<Routed<RoutedStream>, RouterError> {
        self.stream(resolved, Ask::Completion(req)).await
    }

    /// A non-streamed answer to `ask`, with its duration and tokens metered.
    async fn reply(&self, resolved: &Resolved, ask: Ask<'_>) -> Result<Routed<Reply>, RouterError> {
        let routed = self
            .execute(
                ask.model(),
                &resolved.targets,
                Some(ask),
                |slot, model, guard| async move {
                    let start = Instant::now();
                    let r = ask.reply(&*slot.provider, &model).await;
                    drop(guard);
                    if r.is_ok() {
                        slot.metrics.observe_duration(start.elapsed().as_secs_f64());
                    }
                    r
                },
            )
            .await?;
        if let Some(u) = &routed.value.usage {
            self.slot(&routed.provider).metrics.tokens(u);
        }
        Ok(routed)
    }

    /// A streamed answer to `ask`, returned once its first chunk came within
    /// the provider's `first_byte_timeout` (time to it metered).
    async fn stream(
        &self,
        resolved: &Resolved,
        ask: Ask<'_>,
    ) -> Result<Routed<RoutedStream>, RouterError> {
        self.execute(
            ask.model(),
            &resolved.targets,
            Some(ask),
            |slot, model, guard| async move {
                let start = Instant::now();
                let first_byte = slot.first_byte;
                let opened = tokio::time::timeout(first_byte, async {
                    let mut s = ask.stream(&*slot.provider, &model).await?;
                    match s.next().await {
                        Some(Ok(first)) => Ok((first, s)),
                        Some(Err(f)) => Err(f),
                        None => Err(Failure::new(FailureKind::Interrupted, "empty stream")),
                    }
                })
                .await;
                let (first, rest) = match opened {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(Failure::new(
                            FailureKind::Timeout,
                            format!("no first token within {first_byte:?}"),
                        ));
                    }
                };
                slot.metrics.observe_ttft(start.elapsed().as_secs_f64());
                if let Some(u) = &first.usage {
                    slot.metrics.tokens(u);
                }
                Ok(RoutedStream {
                    first: Some(first),
                    rest,
                    slot: slot.clone(),
                    _guard: guard,
                    start,
                    done: false,
                })
            },
        )
        .await
    }

    /// Embeddings for an OpenAI-shaped `/v1/embeddings` body from a remote
    /// provider serving `model`; the answer is in the OpenAI shape.
    pub async fn embeddings(
        &self,
        model: &str,
        body: &serde_json::Value,
    ) -> Result<Routed<Reply>, RouterError> {
        let resolved = self.resolve(model)?;
        let routed = self
            .execute(
                model,
                &resolved.targets,
                None,
                |slot, m, guard| async move {
                    let start = Instant::now();
                    let r = slot.provider.embeddings(&m, body).await;
                    drop(guard);
                    if r.is_ok() {
                        slot.metrics.observe_duration(start.elapsed().as_secs_f64());
                    }
                    r
                },
            )
            .await?;
        if let Some(u) = &routed.value.usage {
            self.slot(&routed.provider).metrics.tokens(u);
        }
        Ok(routed)
    }

    fn slot(&self, name: &str) -> &Slot {
        // Names come from our own slots, so the lookup always succeeds; fall
        // back to the first slot rather than panic.
        let i = self
            .inner
            .names
            .iter()
            .position(|n| &**n == name)
            .unwrap_or(0);
        &self.inner.slots[i]
    }

    /// Orders the targets with the strategy.
    fn order(&self, targets: &[Target]) -> Vec<usize> {
        let mut cands: Vec<Candidate> = targets
            .iter()
            .enumerate()
            .map(|(index, t)| {
                let s = &self.inner.slots[t.slot];
                Candidate {
                    index,
                    priority: s.priority,
                    weight: s.weight,
                    latency: s.stats.latency(),
                    in_flight: s.stats.in_flight(),
                    error_rate: s.stats.error_rate(),
                }
            })
            .collect();
        self.inner.strategy.order(&mut cands);
        cands.into_iter().map(|c| c.index).collect()
    }

    pub(crate) fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let r = &self.inner.routing;
        let exp = r
            .backoff_base
            .saturating_mul(
                1u32.checked_shl(retry.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(r.backoff_max);
        let jitter = 0.5 + rand::random::<f64>() * 0.5;
        let d = exp.mul_f64(jitter);
        match retry_after {
            Some(ra) => d.max(ra.min(r.backoff_max)),
            None => d,
        }
    }

    /// Runs `op` on the targets in strategy order. A target whose provider
    /// cannot do what is asked ([`Ask::check`]) is passed over before its
    /// breaker is asked: no attempt, no probe, no error metric; its refusal
    /// is kept as its reason (all refusals: the client's 400).
    async fn execute<T, F, Fut>(
        &self,
        requested: &str,
        targets: &[Target],
        ask: Option<Ask<'_>>,
        mut op: F,
    ) -> Result<Routed<T>, RouterError>
    where
        F: FnMut(Arc<Slot>, Arc<str>, InFlightGuard) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let order = self.order(targets);
        let max = self.inner.routing.max_attempts.max(1);
        let mut reasons: Vec<ProviderFailure> = Vec::new();
        // Candidates that cannot serve this request at all (bit per position).
        let mut dead: u128 = 0;
        let mut attempts = 0u32;
        let mut last: Option<(usize, Option<Duration>)> = None;
        let mut pos = 0usize;
        let mut skipped = 0usize;
        while attempts < max && skipped < order.len() {
            let at = pos % order.len();
            pos += 1;
            if at < 128 && dead & (1 << at) != 0 {
                skipped += 1;
                continue;
            }
            let target = &targets[order[at]];
            let slot = &self.inner.slots[target.slot];
            if let Some(Err(f)) = ask.map(|a| a.check(&*slot.provider)) {
                tracing::debug!(provider = %slot.name, reason = %f, "provider cannot serve this request");
                if at < 128 {
                    dead |= 1 << at;
                }
                note(&mut reasons, &slot.name, f);
                skipped += 1;
                continue;
            }
            let Some(permit) = slot.breaker.acquire() else {
                let f = Failure::new(FailureKind::CircuitOpen, "circuit breaker open");
                slot.metrics.error(f.kind);
                note(&mut reasons, &slot.name, f);
                skipped += 1;
                continue;
            };
            skipped = 0;
            let mut pending = PendingAttempt {
                slot,
                permit: Some(permit),
            };
            if let Some((prev, retry_after)) = last
                && prev == target.slot
            {
                tokio::time::sleep(self.backoff(attempts, retry_after)).await;
            }
            attempts += 1;
            let start = Instant::now();
            let guard = slot.stats.enter();
            let result = op(slot.clone(), target.model.clone(), guard).await;
            pending.permit = None;
            match result {
                Ok(value) => {
                    slot.success(start.elapsed());
                    return Ok(Routed {
                        provider: slot.name.clone(),
                        model: target.model.clone(),
                        attempts,
                        value,
                    });
                }
                Err(f) => {
                    slot.failure(&f, start.elapsed());
                    tracing::debug!(provider = %slot.name, attempt = attempts, reason = %f, "upstream attempt failed");
                    if f.kind == FailureKind::Rejected {
                        return Err(RouterError::Rejected {
                            provider: slot.name.clone(),
                            attempts,
                            status: f.status.unwrap_or(400),
                            message: f.message,
                            upstream: f.upstream,
                        });
                    }
                    if !f.kind.retryable() && at < 128 {
                        dead |= 1 << at;
                    }
                    last = Some((target.slot, f.retry_after));
                    note(&mut reasons, &slot.name, f);
                }
            }
        }
        // Every target said it does not serve the model (404), or cannot do
        // what is asked (embeddings from Anthropic): that is the client's
        // 404 or 400, not a failure of ours.
        if let Some(last) = reasons.last() {
            for (kind, status) in [
                (FailureKind::NotFound, 404),
                (FailureKind::Unsupported, 400),
            ] {
                if reasons.iter().all(|r| r.failure.kind == kind) {
                    return Err(RouterError::Rejected {
                        provider: last.provider.clone(),
                        attempts,
                        status,
                        message: last.failure.message.clone(),
                        upstream: last.failure.upstream.clone(),
                    });
                }
            }
        }
        let model = requested.to_owned();
        if reasons.iter().any(|r| r.failure.kind.reached()) {
            Err(RouterError::AllFailed {
                model,
                attempts,
                reasons,
            })
        } else {
            Err(RouterError::NoneReachable {
                model,
                attempts,
                reasons,
            })
        }
    }
}

/// What a request asks a provider to generate: the router's one path for
/// chat and text completions, which differ only in the provider's methods.
#[derive(Clone, Copy)]
enum Ask<'r> {
    /// `POST /v1/chat/completions`.
    Chat(&'r ChatRequest),
    /// `POST /v1/completions`.
    Completion(&'r CompletionRequest),
}

impl<'r> Ask<'r> {
    /// The model the client asked for.
    fn model(self) -> &'r str {
        match self {
            Ask::Chat(r) => &r.model,
            Ask::Completion(r) => &r.model,
        }
    }

    /// Whether `p`'s kind can do what is asked at all.
    fn check(self, p: &dyn Provider) -> Result<(), Failure> {
        match self {
            Ask::Chat(r) => p.check(r),
            Ask::Completion(r) => p.check_completion(r),
        }
    }

    /// The non-streamed answer of `p` serving `model`.
    fn reply<'a>(self, p: &'a dyn Provider, model: &'a str) -> BoxFuture<'a, Result<Reply, Failure>>
    where
        'r: 'a,
    {
        match self {
            Ask::Chat(r) => p.chat(model, r),
            Ask::Completion(r) => p.completion(model, r),
        }
    }

    /// The stream of `p` serving `model`.
    fn stream<'a>(
        self,
        p: &'a dyn Provider,
        model: &'a str,
    ) -> BoxFuture<'a, Result<ChunkStream, Failure>>
    where
        'r: 'a,
    {
        match self {
            Ask::Chat(r) => p.chat_stream(model, r),
            Ask::Completion(r) => p.completion_stream(model, r),
        }
    }
}

/// Releases a half-open probe permit when an attempt is cancelled.
struct PendingAttempt<'a> {
    slot: &'a Slot,
    permit: Option<Permit>,
}

impl Drop for PendingAttempt<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.slot.breaker.abandon(p);
        }
    }
}

/// Keeps the last failure of each provider, in first-tried order.
fn note(reasons: &mut Vec<ProviderFailure>, provider: &Arc<str>, failure: Failure) {
    match reasons.iter_mut().find(|r| r.provider == *provider) {
        Some(r) => {
            // An open breaker after a real failure says less than the failure.
            if failure.kind != FailureKind::CircuitOpen
                || r.failure.kind == FailureKind::CircuitOpen
            {
                r.failure = failure;
            }
        }
        None => reasons.push(ProviderFailure {
            provider: provider.clone(),
            failure,
        }),
    }
}

async fn refresh(inner: &Inner) {
    let lists = futures::future::join_all(inner.slots.iter().map(|s| async move {
        if s.fixed {
            return;
        }
        match s.provider.list_models().await {
            Ok(list) => {
                s.set_models(list);
                s.reachable.store(true, Ordering::Relaxed);
            }
            Err(f) => {
                tracing::warn!(provider = %s.name, reason = %f, "model discovery failed; keeping the last list");
                s.reachable.store(false, Ordering::Relaxed);
            }
        }
        s.update_up();
    }));
    lists.await;
    let models: Vec<Arc<Vec<String>>> = inner.slots.iter().map(|s| s.models()).collect();
    let catalog = Arc::new(Catalog::build(&inner.names, &models, &inner.aliases));
    match inner.catalog.write() {
        Ok(mut c) => *c = catalog,
        Err(p) => *p.into_inner() = catalog,
    }
}

/// How long start-up waits for the first model discovery.
const INITIAL_DISCOVERY_WAIT: Duration = Duration::from_secs(2);

fn spawn_refresh(weak: Weak<Inner>, every: Duration, immediate: bool) {
    if every.is_zero() && !immediate {
        return;
    }
    tokio::spawn(async move {
        let mut first = immediate;
        loop {
            if !first {
                if every.is_zero() {
                    break;
                }
                tokio::time::sleep(every).await;
            }
            first = false;
            let Some(inner) = weak.upgrade() else { break };
            refresh(&inner).await;
        }
    });
}
