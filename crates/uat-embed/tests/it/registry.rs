//! The model registry: lazy load, LRU unload under the budget, keep-alive, admin.

use crate::tiny::{self, Tiny};
use std::path::Path;
use std::time::Duration;
use uat_config::{EmbeddingModelConfig, EmbeddingsConfig};
use uat_embed::{EmbedError, EmbedRequest, EmbeddingInput, Registry};

fn model(name: &str, path: &Path, eager: bool) -> EmbeddingModelConfig {
    EmbeddingModelConfig {
        name: name.to_string(),
        path: path.to_path_buf(),
        eager,
        token_ids: Default::default(),
    }
}

fn texts(t: &[&str]) -> EmbedRequest {
    EmbedRequest::new(EmbeddingInput::Texts(
        t.iter().map(|s| s.to_string()).collect(),
    ))
}

/// Two tiny models; the budget holds one of them, not both.
fn two_models(budget_models: f64) -> (tempfile::TempDir, Registry, u64) {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    tiny::write(&a, Tiny::default());
    tiny::write(
        &b,
        Tiny {
            seed: 99,
            ..Tiny::default()
        },
    );
    let one = uat_embed::CandleBackend::load(&a).unwrap();
    let bytes = uat_embed::EmbeddingBackend::memory_bytes(&one);
    let cfg = EmbeddingsConfig {
        models: vec![model("a", &a, false), model("b", &b, false)],
        memory_budget: (bytes as f64 * budget_models) as u64,
        max_wait: Duration::from_millis(1),
        ..EmbeddingsConfig::default()
    };
    (root, Registry::new(&cfg).unwrap(), bytes)
}

fn loaded(r: &Registry) -> Vec<(String, bool)> {
    r.list().into_iter().map(|s| (s.name, s.loaded)).collect()
}

#[tokio::test]
async fn lru_unload_under_a_small_budget_and_reload_on_next_use() {
    let (_root, r, bytes) = two_models(1.5);
    assert_eq!(loaded(&r), vec![("a".into(), false), ("b".into(), false)]);

    let first = r.embed("a", texts(&["hello world"])).await.unwrap();
    assert_eq!(first.model, "a");
    assert_eq!(first.prompt_tokens, 4);
    assert_eq!(loaded(&r), vec![("a".into(), true), ("b".into(), false)]);
    let status = r.status_of("a").unwrap();
    assert_eq!(status.memory_bytes, bytes);
    assert!(status.last_used.is_some());
    assert_eq!(status.dimensions, Some(tiny::HIDDEN));

    // Loading b would exceed the budget: a (least recently used) goes.
    r.embed("b", texts(&["hello world"])).await.unwrap();
    assert_eq!(loaded(&r), vec![("a".into(), false), ("b".into(), true)]);
    assert!(r.loaded_bytes() <= (bytes as f64 * 1.5) as u64);

    // Next use of a reloads it (and evicts b) with the same result.
    let again = r.embed("a", texts(&["hello world"])).await.unwrap();
    assert_eq!(loaded(&r), vec![("a".into(), true), ("b".into(), false)]);
    assert_eq!(again.embeddings, first.embeddings);
}

/// Regression: the models evicted to make room went before the loader ran, so
/// a folder that failed to load (here a broken `config.json`) also unloaded
/// the model that worked. The folder is now checked before anything goes.
#[tokio::test]
async fn a_failed_load_keeps_the_loaded_models() {
    let (root, r, _) = two_models(1.5);
    r.load("a").await.unwrap();
    let config = root.path().join("b/config.json");
    let good: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    std::fs::write(&config, "{ not json").unwrap();
    let err = r.load("b").await.unwrap_err();
    assert!(
        matches!(&err, EmbedError::ModelLoad { path, .. } if path.ends_with("config.json")),
        "{err:?}"
    );
    assert_eq!(loaded(&r), vec![("a".into(), true), ("b".into(), false)]);
    // An unsupported model_type is refused before anything goes, too.
    let mut t5 = good;
    t5["model_type"] = "t5".into();
    std::fs::write(&config, t5.to_string()).unwrap();
    assert!(matches!(r.load("b").await, Err(EmbedError::Unsupported(_))));
    assert_eq!(loaded(&r), vec![("a".into(), true), ("b".into(), false)]);
    r.embed("a", texts(&["hello"])).await.unwrap();
}

#[tokio::test]
async fn both_models_stay_loaded_when_the_budget_allows() {
    let (_root, r, _) = two_models(3.0);
    r.embed("a", texts(&["cat"])).await.unwrap();
    r.embed("b", texts(&["dog"])).await.unwrap();
    assert_eq!(loaded(&r), vec![("a".into(), true), ("b".into(), true)]);
}

#[tokio::test]
async fn admin_load_and_unload() {
    let (_root, r, bytes) = two_models(3.0);
    let s = r.load("b").await.unwrap();
    assert!(s.loaded);
    assert_eq!(s.memory_bytes, bytes);
    assert!(r.unload("b").unwrap());
    assert!(!r.unload("b").unwrap());
    assert!(!r.status_of("b").unwrap().loaded);
    assert_eq!(r.status_of("b").unwrap().memory_bytes, 0);
    assert!(matches!(r.unload("nope"), Err(EmbedError::UnknownModel(_))));
    assert!(matches!(
        r.embed("nope", texts(&["x"])).await,
        Err(EmbedError::UnknownModel(_))
    ));
}

#[tokio::test]
async fn idle_models_are_unloaded_after_keep_alive() {
    let root = tempfile::tempdir().unwrap();
    tiny::write(root.path(), Tiny::default());
    let cfg = EmbeddingsConfig {
        models: vec![model("m", root.path(), true)],
        keep_alive: Duration::from_millis(150),
        ..EmbeddingsConfig::default()
    };
    let r = std::sync::Arc::new(Registry::new(&cfg).unwrap());
    r.load_eager().await.unwrap();
    assert!(r.status_of("m").unwrap().loaded);
    assert!(r.unload_idle().is_empty(), "just used");
    let reaper = r.spawn_keep_alive();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!r.status_of("m").unwrap().loaded, "idle past keep_alive");
    reaper.abort();
    // Lazy reload.
    r.embed("m", texts(&["hello"])).await.unwrap();
    assert!(r.status_of("m").unwrap().loaded);
}

#[tokio::test]
async fn request_errors_are_distinct() {
    let (_root, r, _) = two_models(3.0);
    let long = "the cat sat on the mat the dog sat on the mat";
    let mut req = texts(&["hello", long]);
    req.truncate = false;
    assert_eq!(
        r.embed("a", req).await,
        Err(EmbedError::InputTooLong {
            index: 1,
            tokens: 14,
            limit: tiny::MAX_SEQ
        })
    );
    let ok = r.embed("a", texts(&[long])).await.unwrap();
    assert_eq!(ok.prompt_tokens, tiny::MAX_SEQ);

    let mut req = texts(&["hello"]);
    req.dimensions = Some(4);
    assert!(matches!(
        r.embed("a", req).await,
        Err(EmbedError::DimensionsUnsupported {
            requested: 4,
            native: 8,
            ..
        })
    ));
    let mut req = texts(&["hello"]);
    req.dimensions = Some(tiny::HIDDEN);
    assert!(r.embed("a", req).await.is_ok());

    let ids = EmbedRequest::new(EmbeddingInput::TokenIds(vec![
        vec![2, 5, 3],
        vec![2, 999, 3],
    ]));
    assert_eq!(
        r.embed("a", ids).await,
        Err(EmbedError::InvalidTokenId {
            index: 1,
            id: 999,
            vocab_size: tiny::VOCAB.len()
        })
    );
    assert_eq!(
        r.embed("a", EmbedRequest::new(EmbeddingInput::Texts(vec![])))
            .await,
        Err(EmbedError::EmptyInput)
    );
    // Token ids give the same vector as the text they spell.
    let from_ids = r
        .embed(
            "a",
            EmbedRequest::new(EmbeddingInput::TokenIds(vec![vec![2, 5, 6, 3]])),
        )
        .await
        .unwrap();
    let from_text = r.embed("a", texts(&["hello world"])).await.unwrap();
    assert_eq!(from_ids.embeddings, from_text.embeddings);
    assert_eq!(from_ids.prompt_tokens, 4);
}

#[tokio::test]
async fn metrics_are_exported() {
    let (_root, r, bytes) = two_models(3.0);
    r.embed("a", texts(&["hello world", "the cat"]))
        .await
        .unwrap();
    let text = uat_telemetry::render();
    for name in [
        "uat_embed_batch_size",
        "uat_embed_batch_tokens",
        "uat_embed_queue_seconds",
        "uat_embed_inference_seconds",
        "uat_embed_inputs_total",
        "uat_embed_tokens_total",
        "uat_embed_models_loaded",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(
        text.contains(&format!("uat_embed_model_bytes{{model=\"a\"}} {bytes}")),
        "{text}"
    );
}

#[test]
fn registry_futures_are_send_for_axum_handlers() {
    fn assert_send<T: Send>(_: &T) {}
    fn assert_sync<T: Send + Sync>() {}
    assert_sync::<Registry>();
    let (_root, r, _) = two_models(3.0);
    let embed = r.embed("a", texts(&["x"]));
    assert_send(&embed);
    let load = r.load("a");
    assert_send(&load);
}
