//! How the registry loads a model: one shared load per model that outlives the
//! request that started it, and requests checked before a load.

use crate::common;
use crate::tiny::{self, Tiny};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use uat_config::{EmbeddingModelConfig, EmbeddingsConfig};
use uat_embed::{
    CandleBackend, EmbedError, EmbedRequest, EmbeddingBackend, EmbeddingInput, Loader, ModelInfo,
    Registry,
};

fn config(dir: &Path) -> EmbeddingsConfig {
    EmbeddingsConfig {
        models: vec![EmbeddingModelConfig {
            name: "m".to_string(),
            path: dir.to_path_buf(),
            eager: false,
            token_ids: Default::default(),
        }],
        max_wait: Duration::ZERO,
        ..EmbeddingsConfig::default()
    }
}

fn text(t: &str) -> EmbedRequest {
    EmbedRequest::new(EmbeddingInput::Texts(vec![t.to_string()]))
}

/// A model that answers at once.
struct Quick(ModelInfo);

impl EmbeddingBackend for Quick {
    common::byte_tokens!(0);
    fn embed_ids(&self, seqs: &[&[u32]]) -> uat_embed::Result<Vec<Vec<f32>>> {
        common::lengths(seqs)
    }
    fn memory_bytes(&self) -> u64 {
        1
    }
    fn forward_passes(&self) -> u64 {
        0
    }
}

/// Regression: a load ran inside the request that asked for it; when that
/// client went away the load's result was dropped (the blocking load went on,
/// holding memory) and the next request loaded the model a second time. The
/// load now finishes and puts the model in service by itself, and the next
/// request finds it (or joins the load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_whose_client_went_away_is_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let loads = Arc::new(AtomicU64::new(0));
    let loader: Loader = {
        let loads = Arc::clone(&loads);
        Arc::new(move |_: &Path| {
            loads.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            Ok(Arc::new(Quick(common::byte_info(64))) as Arc<dyn EmbeddingBackend>)
        })
    };
    let r = Arc::new(Registry::with_loader(&config(dir.path()), loader).unwrap());
    let first = {
        let r = Arc::clone(&r);
        tokio::spawn(async move { r.embed("m", text("abc")).await })
    };
    // Drop the first request once its load is under way.
    for _ in 0..1000 {
        if loads.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "the load never started");
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let second = r.embed("m", text("abcd")).await.unwrap();
    assert_eq!(second.embeddings, vec![vec![4.0]]);
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "the model was loaded twice"
    );
    assert!(r.status_of("m").unwrap().loaded);
}

/// Regression: a request was checked against the model only once it was
/// loaded, so an unsupported `dimensions` (or a token id outside the
/// vocabulary) loaded an unloaded model, unloading others for it, only to
/// fail. It now fails first, from what the model's folder declares.
#[tokio::test]
async fn a_request_that_cannot_succeed_loads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    tiny::write(dir.path(), Tiny::default());
    let loads = Arc::new(AtomicU64::new(0));
    let loader: Loader = {
        let loads = Arc::clone(&loads);
        Arc::new(move |p: &Path| {
            loads.fetch_add(1, Ordering::SeqCst);
            CandleBackend::load(p).map(|b| Arc::new(b) as Arc<dyn EmbeddingBackend>)
        })
    };
    let r = Registry::with_loader(&config(dir.path()), loader).unwrap();
    for round in 0..2u64 {
        let mut req = text("hello");
        req.dimensions = Some(4);
        assert_eq!(
            r.embed("m", req).await,
            Err(EmbedError::DimensionsUnsupported {
                model: "m".into(),
                requested: 4,
                native: tiny::HIDDEN
            }),
            "round {round}"
        );
        let mut ids = EmbedRequest::new(EmbeddingInput::TokenIds(vec![
            vec![2, 5, 3],
            vec![2, 999, 3],
        ]));
        ids.truncate = false;
        assert_eq!(
            r.embed("m", ids).await,
            Err(EmbedError::InvalidTokenId {
                index: 1,
                id: 999,
                vocab_size: tiny::VOCAB.len()
            })
        );
        let long = EmbedRequest {
            truncate: false,
            ..EmbedRequest::new(EmbeddingInput::TokenIds(vec![vec![5; tiny::MAX_SEQ + 1]]))
        };
        assert_eq!(
            r.embed("m", long).await,
            Err(EmbedError::InputTooLong {
                index: 0,
                tokens: tiny::MAX_SEQ + 1,
                limit: tiny::MAX_SEQ
            })
        );
        assert!(!r.status_of("m").unwrap().loaded, "round {round}");
        assert_eq!(loads.load(Ordering::SeqCst), round, "round {round}");
        if round == 0 {
            // A good request loads it; once unloaded (its instance perhaps
            // still alive for a moment), the checks hold again.
            let mut ok = text("hello");
            ok.dimensions = Some(tiny::HIDDEN);
            r.embed("m", ok).await.unwrap();
            assert_eq!(loads.load(Ordering::SeqCst), 1);
            assert!(r.unload("m").unwrap());
        }
    }
}
