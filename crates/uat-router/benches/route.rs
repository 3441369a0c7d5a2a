//! Router overhead: the built-in mock provider called directly versus the
//! same call routed (resolve, strategy, breaker, stats, metrics), in the
//! same run, non-streamed and streamed.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark code")]

use criterion::{Criterion, criterion_group, criterion_main};
use futures::StreamExt;
use std::hint::black_box;
use uat_config::{ProviderConfig, ProviderKind, RoutingConfig};
use uat_router::Router;
use uat_types::ChatRequest;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let req: ChatRequest = serde_json::from_value(serde_json::json!({
        "model": "mock-model",
        "messages": [{"role": "user", "content": "Say hello to the benchmark"}],
        "stream_options": {"include_usage": true}
    }))
    .unwrap();
    let cfg = ProviderConfig::new("mock", ProviderKind::Mock, None);
    let direct = uat_router::build_provider(&cfg).unwrap();
    let routing = RoutingConfig {
        probe_local: false,
        ..RoutingConfig::default()
    };
    let router = rt
        .block_on(Router::with_providers(&[cfg], &[], &routing))
        .unwrap();

    let mut g = c.benchmark_group("chat");
    g.bench_function("direct", |b| {
        b.iter(|| rt.block_on(async { black_box(direct.chat("mock-model", &req).await.unwrap()) }))
    });
    g.bench_function("routed", |b| {
        b.iter(|| {
            rt.block_on(async {
                let resolved = router.resolve(black_box("mock-model")).unwrap();
                black_box(router.chat(&resolved, &req).await.unwrap())
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("chat_stream_5_chunks");
    g.bench_function("direct", |b| {
        b.iter(|| {
            rt.block_on(async {
                let s = direct.chat_stream("mock-model", &req).await.unwrap();
                black_box(s.count().await)
            })
        })
    });
    g.bench_function("routed", |b| {
        b.iter(|| {
            rt.block_on(async {
                let resolved = router.resolve(black_box("mock-model")).unwrap();
                let s = router.chat_stream(&resolved, &req).await.unwrap();
                black_box(s.value.count().await)
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
