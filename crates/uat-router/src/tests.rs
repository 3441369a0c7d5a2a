//! Router behaviour with scripted providers: retries, failover, breakers,
//! error classification, backoff, streams.

use crate::provider::{BoxFuture, ChunkStream, Provider, Reply, Shape, StreamChunk};
use crate::{Failure, FailureKind, Router, RouterError};
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use uat_config::{ModelAlias, ProviderConfig, ProviderKind, RoutingConfig, RoutingStrategy};
use uat_types::{ChatRequest, CompletionRequest};

#[derive(Clone, Copy, Debug)]
enum Step {
    Ok,
    Fail(FailureKind, Option<u16>),
    Hang,
    /// Streams only: the first chunk is an error.
    FirstChunkFails,
}

struct Scripted {
    name: &'static str,
    script: Mutex<VecDeque<Step>>,
    default: Step,
    calls: Arc<AtomicUsize>,
    /// Cannot do `n` > 1, like Anthropic and Ollama: [`Provider::check`]
    /// refuses it, and so does `chat` (where the adapters refused before).
    refuses_n: bool,
}

impl Scripted {
    fn refusal(&self, req: &ChatRequest) -> Result<(), Failure> {
        if self.refuses_n {
            crate::provider::one_choice(req, "scripted")
        } else {
            Ok(())
        }
    }

    fn completion_refusal(&self, req: &CompletionRequest) -> Result<(), Failure> {
        if self.refuses_n {
            crate::provider::at_most_one(&req.extra, "n", "scripted")
        } else {
            Ok(())
        }
    }

    /// The answer of a non-streamed call for the next step.
    async fn reply(&self) -> Result<Reply, Failure> {
        match self.next() {
            Step::Ok | Step::FirstChunkFails => Ok(Reply {
                body: Bytes::from(self.name),
                usage: None,
                shape: Shape::default(),
            }),
            Step::Fail(k, s) => Err(fail(k, s)),
            Step::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(fail(FailureKind::Timeout, None))
            }
        }
    }

    /// The stream of a streamed call for the next step.
    async fn stream(&self) -> Result<ChunkStream, Failure> {
        let chunk = |s: &'static str| {
            Ok(StreamChunk {
                json: Bytes::from(s),
                usage: None,
            })
        };
        match self.next() {
            Step::Ok => {
                let s: ChunkStream =
                    Box::pin(futures::stream::iter(vec![chunk(self.name), chunk("end")]));
                Ok(s)
            }
            Step::FirstChunkFails => {
                let s: ChunkStream = Box::pin(futures::stream::iter(vec![Err(fail(
                    FailureKind::Interrupted,
                    None,
                ))]));
                Ok(s)
            }
            Step::Fail(k, s) => Err(fail(k, s)),
            Step::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(fail(FailureKind::Timeout, None))
            }
        }
    }

    fn next(&self) -> Step {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.script.lock().pop_front().unwrap_or(self.default)
    }
}

fn fail(kind: FailureKind, status: Option<u16>) -> Failure {
    Failure {
        kind,
        status,
        message: format!("scripted {}", kind.as_str()),
        retry_after: None,
        upstream: None,
    }
}

impl Provider for Scripted {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Mock
    }

    fn check(&self, req: &ChatRequest) -> Result<(), Failure> {
        self.refusal(req)
    }

    fn chat<'a>(
        &'a self,
        _model: &'a str,
        req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move {
            self.refusal(req)?;
            self.reply().await
        })
    }

    fn chat_stream<'a>(
        &'a self,
        _model: &'a str,
        _req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, Failure>> {
        Box::pin(self.stream())
    }

    fn check_completion(&self, req: &CompletionRequest) -> Result<(), Failure> {
        self.completion_refusal(req)
    }

    fn completion<'a>(
        &'a self,
        _model: &'a str,
        req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move {
            self.completion_refusal(req)?;
            self.reply().await
        })
    }

    fn completion_stream<'a>(
        &'a self,
        _model: &'a str,
        _req: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, Failure>> {
        Box::pin(self.stream())
    }

    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, Failure>> {
        Box::pin(async move { Ok(vec!["m".to_owned()]) })
    }

    fn embeddings<'a>(
        &'a self,
        _model: &'a str,
        _body: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Err(fail(FailureKind::Unsupported, None))
        })
    }
}

struct Spec {
    name: &'static str,
    priority: i32,
    script: Vec<Step>,
    default: Step,
    refuses_n: bool,
}

fn spec(name: &'static str, priority: i32, script: Vec<Step>, default: Step) -> Spec {
    Spec {
        name,
        priority,
        script,
        default,
        refuses_n: false,
    }
}

/// A provider that cannot do `n` > 1.
fn no_n(mut s: Spec) -> Spec {
    s.refuses_n = true;
    s
}

fn routing(max_attempts: u32, breaker_failures: u32, cooldown: Duration) -> RoutingConfig {
    RoutingConfig {
        strategy: RoutingStrategy::Priority,
        max_attempts,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        breaker_failures,
        breaker_cooldown: cooldown,
        discovery_interval: Duration::ZERO,
        probe_local: false,
    }
}

async fn router(specs: Vec<Spec>, routing: RoutingConfig) -> (Router, Vec<Arc<AtomicUsize>>) {
    router_with(specs, &[], routing).await
}

async fn router_with(
    specs: Vec<Spec>,
    aliases: &[ModelAlias],
    routing: RoutingConfig,
) -> (Router, Vec<Arc<AtomicUsize>>) {
    let mut calls = Vec::new();
    let mut providers: Vec<(ProviderConfig, Box<dyn Provider>)> = Vec::new();
    for s in specs {
        let c = Arc::new(AtomicUsize::new(0));
        calls.push(c.clone());
        let mut cfg = ProviderConfig::new(s.name, ProviderKind::Mock, None);
        cfg.priority = s.priority;
        cfg.first_byte_timeout = Duration::from_millis(200);
        let p = Scripted {
            name: s.name,
            script: Mutex::new(s.script.into()),
            default: s.default,
            calls: c,
            refuses_n: s.refuses_n,
        };
        providers.push((cfg, Box::new(p)));
    }
    let r = Router::with_custom(providers, aliases, &routing)
        .await
        .unwrap();
    (r, calls)
}

fn req() -> ChatRequest {
    serde_json::from_value(
        serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    )
    .unwrap()
}

fn n(c: &Arc<AtomicUsize>) -> usize {
    c.load(Ordering::SeqCst)
}

async fn chat(r: &Router) -> Result<crate::Routed<Reply>, RouterError> {
    let resolved = r.resolve("m")?;
    r.chat(&resolved, &req()).await
}

/// A request for two choices of `model`.
async fn chat_n2(r: &Router, model: &str) -> Result<crate::Routed<Reply>, RouterError> {
    let req: ChatRequest = serde_json::from_value(serde_json::json!({
        "model": model, "n": 2, "messages": [{"role": "user", "content": "x"}]
    }))
    .unwrap();
    let resolved = r.resolve(model)?;
    r.chat(&resolved, &req).await
}

const E500: Step = Step::Fail(FailureKind::ServerError, Some(500));
const CONNECT: Step = Step::Fail(FailureKind::Connect, None);

#[tokio::test]
async fn retries_the_same_provider_until_it_answers() {
    let (r, calls) = router(
        vec![spec("a", 0, vec![E500, CONNECT], Step::Ok)],
        routing(3, 10, Duration::from_secs(1)),
    )
    .await;
    let ok = chat(&r).await.unwrap();
    assert_eq!((&*ok.provider, ok.attempts), ("a", 3));
    assert_eq!(n(&calls[0]), 3);
}

#[tokio::test]
async fn fails_over_in_strategy_order() {
    let (r, calls) = router(
        vec![spec("b", 1, vec![], Step::Ok), spec("a", 0, vec![], E500)],
        routing(3, 10, Duration::from_secs(1)),
    )
    .await;
    let ok = chat(&r).await.unwrap();
    assert_eq!((&*ok.provider, ok.attempts), ("b", 2));
    assert_eq!((n(&calls[0]), n(&calls[1])), (1, 1));
}

#[tokio::test]
async fn rejection_is_final() {
    let (r, calls) = router(
        vec![
            spec("a", 0, vec![], Step::Fail(FailureKind::Rejected, Some(422))),
            spec("b", 1, vec![], Step::Ok),
        ],
        routing(3, 10, Duration::from_secs(1)),
    )
    .await;
    match chat(&r).await {
        Err(RouterError::Rejected {
            status, attempts, ..
        }) => assert_eq!((status, attempts), (422, 1)),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(n(&calls[1]), 0);
}

/// A 404 from one target (its model gone since discovery, say) fails over
/// to the next, without a retry of the same target; when every target says
/// 404, the client gets the 404.
#[tokio::test]
async fn not_found_fails_over_and_is_404_when_every_target_says_so() {
    let nf = Step::Fail(FailureKind::NotFound, Some(404));
    let (r, calls) = router(
        vec![spec("a", 0, vec![], nf), spec("b", 1, vec![], Step::Ok)],
        routing(3, 10, Duration::from_secs(1)),
    )
    .await;
    let ok = chat(&r).await.unwrap();
    assert_eq!((&*ok.provider, ok.attempts), ("b", 2));
    assert_eq!((n(&calls[0]), n(&calls[1])), (1, 1));
    let (r, calls) = router(
        vec![spec("a", 0, vec![], nf), spec("b", 1, vec![], nf)],
        routing(3, 10, Duration::from_secs(1)),
    )
    .await;
    match chat(&r).await {
        Err(RouterError::Rejected {
            status, attempts, ..
        }) => assert_eq!((status, attempts), (404, 2)),
        other => panic!("expected a 404, got {other:?}"),
    }
    assert_eq!((n(&calls[0]), n(&calls[1])), (1, 1));
}

#[tokio::test]
async fn unsupported_is_failed_over_but_not_retried() {
    let (r, calls) = router(
        vec![spec("a", 0, vec![], Step::Ok), spec("b", 1, vec![], E500)],
        routing(3, 10, Duration::from_secs(1)),
    )
    .await;
    let err = r.embeddings("m", &serde_json::json!({})).await.unwrap_err();
    // Both are Unsupported (embeddings) so each is tried once only, and the
    // client is told (400) that its model cannot do this, not that we failed.
    assert!(
        matches!(err, RouterError::Rejected { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(err.attempts(), 2);
    assert_eq!((n(&calls[0]), n(&calls[1])), (1, 1));
}

/// A target that cannot do what is asked is passed over before an
/// attempt: an alias whose only capable target is 4th is served by it with
/// `max_attempts` 3 (a refusal was an attempt: the client got a 400), the
/// refusing providers are never called; when none can, the 400 names the
/// field, after no attempt.
#[tokio::test]
async fn a_refusal_is_no_attempt() {
    let alias = ModelAlias {
        name: "two".into(),
        targets: vec!["a/m".into(), "b/m".into(), "c/m".into(), "d/m".into()],
    };
    let (r, calls) = router_with(
        vec![
            no_n(spec("a", 0, vec![], Step::Ok)),
            no_n(spec("b", 1, vec![], Step::Ok)),
            no_n(spec("c", 2, vec![], Step::Ok)),
            spec("d", 3, vec![], Step::Ok),
        ],
        std::slice::from_ref(&alias),
        routing(3, 10, Duration::from_secs(1)),
    )
    .await;
    let ok = chat_n2(&r, "two").await.unwrap();
    assert_eq!((&*ok.provider, ok.attempts), ("d", 1));
    assert_eq!(calls.iter().map(n).collect::<Vec<_>>(), vec![0, 0, 0, 1]);

    let (r, calls) = router_with(
        vec![
            no_n(spec("a", 0, vec![], Step::Ok)),
            no_n(spec("b", 1, vec![], Step::Ok)),
        ],
        &[],
        routing(3, 10, Duration::from_secs(1)),
    )
    .await;
    match chat_n2(&r, "m").await {
        Err(RouterError::Rejected {
            status: 400,
            upstream: Some(u),
            attempts,
            ..
        }) => {
            assert_eq!(u.param.as_deref(), Some("n"));
            assert_eq!(attempts, 0);
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    assert_eq!((n(&calls[0]), n(&calls[1])), (0, 0));
}

/// A refusal leaves the breaker as it was: a half-open provider keeps its
/// probe (a refusal closed it), a failing one keeps its failure count (a
/// refusal reset it).
#[tokio::test]
async fn a_refusal_leaves_the_breaker_alone() {
    // Half-open: opened by one failure, cooldown over at once.
    let (r, _) = router(
        vec![
            no_n(spec("a", 0, vec![E500], Step::Ok)),
            spec("b", 1, vec![], Step::Ok),
        ],
        routing(2, 1, Duration::ZERO),
    )
    .await;
    assert_eq!(&*chat(&r).await.unwrap().provider, "b");
    assert_eq!(r.providers()[0].breaker, crate::BreakerState::HalfOpen);
    let ok = chat_n2(&r, "m").await.unwrap();
    assert_eq!(&*ok.provider, "b");
    assert_eq!(r.providers()[0].breaker, crate::BreakerState::HalfOpen);
    assert_eq!(ok.attempts, 1);

    // Closed with one failure of two: the next failure opens it.
    let (r, calls) = router(
        vec![
            no_n(spec("a", 0, vec![E500, E500], Step::Ok)),
            spec("b", 1, vec![], Step::Ok),
        ],
        routing(2, 2, Duration::from_secs(60)),
    )
    .await;
    assert_eq!(&*chat(&r).await.unwrap().provider, "b");
    assert_eq!(&*chat_n2(&r, "m").await.unwrap().provider, "b");
    assert_eq!(&*chat(&r).await.unwrap().provider, "b");
    assert_eq!(r.providers()[0].breaker, crate::BreakerState::Open);
    assert_eq!(n(&calls[0]), 2);
}

#[tokio::test]
async fn all_failed_is_502_and_unreachable_is_503() {
    let (r, _) = router(
        vec![spec("a", 0, vec![], E500), spec("b", 1, vec![], CONNECT)],
        routing(3, 10, Duration::from_secs(1)),
    )
    .await;
    let err = chat(&r).await.unwrap_err();
    assert_eq!(err.status(), 502);
    assert_eq!(err.attempts(), 3);
    let reasons: Vec<(&str, FailureKind)> = err
        .reasons()
        .iter()
        .map(|r| (&*r.provider, r.failure.kind))
        .collect();
    assert_eq!(
        reasons,
        vec![("a", FailureKind::ServerError), ("b", FailureKind::Connect)]
    );

    let (r, _) = router(
        vec![
            spec("a", 0, vec![], CONNECT),
            spec("b", 1, vec![], Step::Fail(FailureKind::Timeout, None)),
        ],
        routing(2, 10, Duration::from_secs(1)),
    )
    .await;
    let err = chat(&r).await.unwrap_err();
    assert_eq!(err.status(), 503);
    assert!(err.to_string().contains("a: connect"), "{err}");
}

#[tokio::test]
async fn open_breaker_is_skipped_without_a_call() {
    let (r, calls) = router(
        vec![
            spec("a", 0, vec![E500], Step::Ok),
            spec("b", 1, vec![], Step::Ok),
        ],
        routing(2, 1, Duration::from_secs(60)),
    )
    .await;
    let first = chat(&r).await.unwrap();
    assert_eq!((&*first.provider, first.attempts), ("b", 2));
    let second = chat(&r).await.unwrap();
    assert_eq!(
        (&*second.provider, second.attempts),
        ("b", 1),
        "a is open: skipped"
    );
    assert_eq!(n(&calls[0]), 1);
    assert_eq!(r.providers()[0].breaker, crate::BreakerState::Open);
    assert!(!r.providers()[0].up);
}

#[tokio::test]
async fn cancelled_half_open_probe_is_released() {
    let (r, calls) = router(
        vec![spec("a", 0, vec![E500, Step::Hang], Step::Ok)],
        routing(1, 1, Duration::ZERO),
    )
    .await;
    assert_eq!(chat(&r).await.unwrap_err().status(), 502);
    // The probe hangs; the caller gives up.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), chat(&r))
            .await
            .is_err()
    );
    assert_eq!(n(&calls[0]), 2);
    // Another probe is allowed and succeeds.
    let ok = chat(&r).await.unwrap();
    assert_eq!(ok.attempts, 1);
    assert_eq!(n(&calls[0]), 3);
    assert_eq!(r.providers()[0].breaker, crate::BreakerState::Closed);
}

#[tokio::test]
async fn stream_failing_before_its_first_chunk_is_retried() {
    let (r, calls) = router(
        vec![spec(
            "a",
            0,
            vec![Step::FirstChunkFails, Step::Hang],
            Step::Ok,
        )],
        routing(3, 10, Duration::from_secs(1)),
    )
    .await;
    let resolved = r.resolve("m").unwrap();
    let mut routed = r.chat_stream(&resolved, &req()).await.unwrap();
    assert_eq!(
        routed.attempts, 3,
        "error chunk, then no first chunk in time, then ok"
    );
    assert_eq!(n(&calls[0]), 3);
    assert_eq!(
        r.providers()[0].in_flight,
        1,
        "an open stream counts as in flight"
    );
    let items: Vec<_> = (&mut routed.value).collect().await;
    assert_eq!(items.len(), 2);
    assert_eq!(&items[0].as_ref().unwrap().json[..], b"a");
    drop(routed);
    assert_eq!(r.providers()[0].in_flight, 0);
}

fn completion_req(extra: serde_json::Value) -> CompletionRequest {
    let mut v = serde_json::json!({"model": "m", "prompt": "x"});
    for (k, x) in extra.as_object().into_iter().flatten() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

/// Text completions take the chat path: retries, failover, a stream
/// returned at its first chunk.
#[tokio::test]
async fn completions_are_retried_and_failed_over_like_chat() {
    let (r, calls) = router(
        vec![
            spec("a", 0, vec![E500, E500, E500], Step::Ok),
            spec("b", 1, vec![], Step::Ok),
        ],
        routing(3, 10, Duration::from_secs(1)),
    )
    .await;
    let resolved = r.resolve("m").unwrap();
    let ok = r
        .completion(&resolved, &completion_req(serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!((&*ok.provider, ok.attempts), ("b", 2));
    assert_eq!(&ok.value.body[..], b"b");
    assert_eq!((n(&calls[0]), n(&calls[1])), (1, 1));

    let (r, calls) = router(
        vec![spec("a", 0, vec![Step::FirstChunkFails], Step::Ok)],
        routing(3, 10, Duration::from_secs(1)),
    )
    .await;
    let resolved = r.resolve("m").unwrap();
    let mut routed = r
        .completion_stream(
            &resolved,
            &completion_req(serde_json::json!({"stream": true})),
        )
        .await
        .unwrap();
    assert_eq!(routed.attempts, 2);
    assert_eq!(n(&calls[0]), 2);
    let items: Vec<_> = (&mut routed.value).collect().await;
    assert_eq!(&items[0].as_ref().unwrap().json[..], b"a");
}

/// [`Provider::check_completion`] is asked as `check` is for chat: a
/// refusal is no attempt, an alias fails over to a target that can, and
/// when none can the client gets the 400 naming the field.
#[tokio::test]
async fn a_completion_refusal_is_no_attempt() {
    let alias = ModelAlias {
        name: "two".into(),
        targets: vec!["a/m".into(), "b/m".into()],
    };
    let (r, calls) = router_with(
        vec![
            no_n(spec("a", 0, vec![], Step::Ok)),
            spec("b", 1, vec![], Step::Ok),
        ],
        std::slice::from_ref(&alias),
        routing(1, 10, Duration::from_secs(1)),
    )
    .await;
    let n2 = completion_req(serde_json::json!({"model": "two", "n": 2}));
    let resolved = r.resolve("two").unwrap();
    let ok = r.completion(&resolved, &n2).await.unwrap();
    assert_eq!((&*ok.provider, ok.attempts), ("b", 1));
    let ok = r.completion_stream(&resolved, &n2).await.unwrap();
    assert_eq!((&*ok.provider, ok.attempts), ("b", 1));
    assert_eq!((n(&calls[0]), n(&calls[1])), (0, 2));

    let resolved = r.resolve("a/m").unwrap();
    match r.completion(&resolved, &n2).await {
        Err(RouterError::Rejected {
            status: 400,
            upstream: Some(u),
            attempts: 0,
            ..
        }) => assert_eq!(u.param.as_deref(), Some("n")),
        other => panic!("expected a 400, got {other:?}"),
    }
    assert_eq!(n(&calls[0]), 0);
}

#[tokio::test]
async fn backoff_grows_and_is_capped_and_honours_retry_after() {
    let mut cfg = routing(3, 10, Duration::from_secs(1));
    cfg.backoff_base = Duration::from_millis(100);
    cfg.backoff_max = Duration::from_millis(250);
    let (r, _) = router(vec![spec("a", 0, vec![], Step::Ok)], cfg).await;
    for _ in 0..50 {
        let d1 = r.backoff(1, None);
        assert!(
            d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
            "{d1:?}"
        );
        let d2 = r.backoff(2, None);
        assert!(
            d2 >= Duration::from_millis(100) && d2 <= Duration::from_millis(200),
            "{d2:?}"
        );
        assert!(r.backoff(30, None) <= Duration::from_millis(250));
        assert_eq!(
            r.backoff(1, Some(Duration::from_secs(30))),
            Duration::from_millis(250)
        );
    }
}

#[tokio::test]
async fn aliases_resolve_and_unknown_models_do_not() {
    let aliases = vec![
        ModelAlias {
            name: "fast".into(),
            targets: vec!["b/m".into(), "a/m".into()],
        },
        ModelAlias {
            name: "mixed".into(),
            targets: vec!["b/z2".into(), "a/m".into(), "a/z2".into()],
        },
    ];
    let mut providers: Vec<(ProviderConfig, Box<dyn Provider>)> = Vec::new();
    for name in ["a", "b"] {
        let p = Scripted {
            name,
            script: Mutex::new(VecDeque::new()),
            default: Step::Ok,
            calls: Arc::new(AtomicUsize::new(0)),
            refuses_n: false,
        };
        providers.push((
            ProviderConfig::new(name, ProviderKind::Mock, None),
            Box::new(p),
        ));
    }
    let mut cfg = routing(1, 10, Duration::from_secs(1));
    cfg.strategy = RoutingStrategy::Priority;
    let r = Router::with_custom(providers, &aliases, &cfg)
        .await
        .unwrap();
    let resolved = r.resolve("fast").unwrap();
    assert_eq!(resolved.len(), 2);
    let ok = r.chat(&resolved, &req()).await.unwrap();
    assert_eq!(
        &*ok.provider, "b",
        "alias target order under equal priority"
    );
    assert!(matches!(
        r.resolve("slow"),
        Err(RouterError::UnknownModel { .. })
    ));
    let ids: Vec<String> = r.list_models().into_iter().map(|m| m.id).collect();
    assert_eq!(ids, vec!["m", "fast", "mixed"]);
    // The cache knows a request by the upstream models it resolves to.
    for (name, cached) in [("fast", "m"), ("m", "m"), ("a/m", "m"), ("mixed", "m,z2")] {
        assert_eq!(r.resolve(name).unwrap().cache_name(), cached, "{name}");
    }
}

/// Lists its models only after a long delay.
struct SlowLister;

impl Provider for SlowLister {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Mock
    }
    fn chat<'a>(
        &'a self,
        _m: &'a str,
        _r: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move { Err(fail(FailureKind::Unsupported, None)) })
    }
    fn chat_stream<'a>(
        &'a self,
        _m: &'a str,
        _r: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, Failure>> {
        Box::pin(async move { Err(fail(FailureKind::Unsupported, None)) })
    }
    fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, Failure>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(vec!["late".to_owned()])
        })
    }
    fn embeddings<'a>(
        &'a self,
        _m: &'a str,
        _b: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<Reply, Failure>> {
        Box::pin(async move { Err(fail(FailureKind::Unsupported, None)) })
    }
}

#[tokio::test(start_paused = true)]
async fn slow_discovery_does_not_hold_up_start() {
    let start = tokio::time::Instant::now();
    let cfg = ProviderConfig::new("slow", ProviderKind::Mock, None);
    let providers: Vec<(ProviderConfig, Box<dyn Provider>)> = vec![(cfg, Box::new(SlowLister))];
    let mut routing = routing(1, 10, Duration::from_secs(1));
    routing.discovery_interval = Duration::from_secs(3600);
    let r = Router::with_custom(providers, &[], &routing).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(!r.has_model("late"));
    // The background refresh starts at once, not after the hour.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(r.has_model("late"));
}
