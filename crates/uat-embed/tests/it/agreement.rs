//! Agreement with sentence-transformers on the real all-MiniLM-L6-v2.

use crate::common::{cosine, model_dir, reference};
use std::sync::OnceLock;
use uat_embed::{CandleBackend, EmbeddingBackend};

fn backend(test: &str) -> Option<&'static CandleBackend> {
    static B: OnceLock<CandleBackend> = OnceLock::new();
    let dir = model_dir(test)?;
    Some(B.get_or_init(|| CandleBackend::load(&dir).unwrap()))
}

/// Fails with every row below `min` listed.
fn check_rows(what: &str, got: &[Vec<f32>], want: &[Vec<f32>], min: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: row count");
    let mut worst = 1.0f64;
    let mut bad = Vec::new();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let c = cosine(g, w);
        worst = worst.min(c);
        if c < min || c.is_nan() {
            bad.push((i, c));
        }
    }
    assert!(bad.is_empty(), "{what}: rows below cosine {min}: {bad:?}");
    eprintln!("{what}: worst cosine {worst:.9}");
    worst
}

#[test]
fn model_info_comes_from_the_folder() {
    let Some(b) = backend("model_info_comes_from_the_folder") else {
        return;
    };
    let r = reference();
    let info = b.info();
    assert_eq!(info.dim, r.dim);
    assert_eq!(info.max_seq_length, r.max_seq_length);
    assert!(info.normalize);
    assert_eq!(info.pooling, uat_embed::Pooling::MEAN);
}

#[test]
fn token_counts_match_sentence_transformers() {
    let Some(b) = backend("token_counts_match_sentence_transformers") else {
        return;
    };
    let r = reference();
    for (s, n) in r.sentences.iter().zip(&r.token_counts) {
        assert_eq!(b.tokenize(s, true).unwrap().len(), *n, "{s}");
    }
    for ((s, n), ids) in r
        .edge_sentences
        .iter()
        .zip(&r.edge_token_counts)
        .zip(&r.edge_input_ids)
    {
        let got = b.tokenize(s, true).unwrap();
        assert_eq!(got.len(), *n, "{s:?}");
        assert_eq!(&got, ids, "{s:?}");
    }
}

#[test]
fn agreement_batched() {
    let Some(b) = backend("agreement_batched") else {
        return;
    };
    let r = reference();
    let texts: Vec<&str> = r
        .sentences
        .iter()
        .chain(&r.edge_sentences)
        .map(String::as_str)
        .collect();
    let got = b.embed_texts(&texts).unwrap();
    let want: Vec<Vec<f32>> = r
        .embeddings
        .iter()
        .chain(&r.edge_embeddings)
        .cloned()
        .collect();
    let worst = check_rows("batched", &got, &want, 0.999);
    assert!(
        worst > 0.9999,
        "fp32 should be far closer than 0.999: {worst}"
    );
}

#[test]
fn agreement_one_at_a_time() {
    let Some(b) = backend("agreement_one_at_a_time") else {
        return;
    };
    let r = reference();
    let got: Vec<Vec<f32>> = r
        .sentences
        .iter()
        .chain(&r.edge_sentences)
        .map(|s| b.embed_texts(&[s.as_str()]).unwrap().remove(0))
        .collect();
    let want: Vec<Vec<f32>> = r
        .embeddings
        .iter()
        .chain(&r.edge_embeddings)
        .cloned()
        .collect();
    check_rows("single", &got, &want, 0.999);
}

#[test]
fn agreement_from_token_ids() {
    let Some(b) = backend("agreement_from_token_ids") else {
        return;
    };
    let r = reference();
    let ids: Vec<&[u32]> = r.edge_input_ids.iter().map(Vec::as_slice).collect();
    let got = b.embed_ids(&ids).unwrap();
    check_rows("edge ids", &got, &r.edge_embeddings, 0.999);
}

#[test]
fn over_long_input_is_cut_at_max_seq_length_or_refused() {
    let Some(b) = backend("over_long_input_is_cut_at_max_seq_length_or_refused") else {
        return;
    };
    let long = "word ".repeat(400);
    assert_eq!(b.tokenize(&long, true).unwrap().len(), 256);
    match b.tokenize(&long, false) {
        Err(uat_embed::EmbedError::InputTooLong { tokens, limit, .. }) => {
            assert_eq!(limit, 256);
            assert_eq!(tokens, 402);
        }
        other => panic!("expected InputTooLong, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_the_real_model_batch_and_agree() {
    let Some(dir) = model_dir("concurrent_requests_on_the_real_model_batch_and_agree") else {
        return;
    };
    let r = reference();
    let backend: std::sync::Arc<dyn EmbeddingBackend> =
        std::sync::Arc::new(CandleBackend::load(&dir).unwrap());
    let n = 24;
    let ids: Vec<Vec<u32>> = r.sentences[..n]
        .iter()
        .map(|s| backend.tokenize(s, true).unwrap())
        .collect();
    let alone: Vec<Vec<f32>> = ids
        .iter()
        .map(|s| backend.embed_ids(&[s]).unwrap().remove(0))
        .collect();
    let cfg = uat_embed::BatcherConfig {
        max_wait: std::time::Duration::from_millis(20),
        ..uat_embed::BatcherConfig::default()
    };
    let pool = uat_embed::ComputePool::new(1).unwrap();
    let batcher =
        uat_embed::Batcher::new("minilm", std::sync::Arc::clone(&backend), pool, cfg).unwrap();
    let before = backend.forward_passes();
    let tasks: Vec<_> = ids
        .iter()
        .map(|s| tokio::spawn(batcher.embed(vec![s.clone()])))
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap().unwrap().remove(0));
    }
    let passes = backend.forward_passes() - before;
    assert!(passes < n as u64, "{passes} passes for {n} requests");
    let mut worst = 0f32;
    for (g, a) in got.iter().zip(&alone) {
        worst = g
            .iter()
            .zip(a)
            .map(|(x, y)| (x - y).abs())
            .fold(worst, f32::max);
    }
    eprintln!("batched vs unbatched: {passes} passes, max |diff| {worst:e}");
    assert!(
        worst <= 1e-6,
        "batched result differs from unbatched by {worst}"
    );
    check_rows("batcher", &got, &r.embeddings[..n], 0.999);
}
